"""Command line of the benchmark: ``stpl-bench --model predrnn --mode train --json``."""

from __future__ import annotations

import json
import sys

from stpl.benchmark._config import build_parser, config_from_args
from stpl.benchmark._kernels import format_kernel_result, run_kernel_benchmark
from stpl.benchmark._run import format_result, run_benchmark
from stpl.benchmark._stream import format_stream_result, run_stream_benchmark

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` (default ``sys.argv[1:]``), run the benchmark, print the result.

    Returns the exit status: 0 on success, 2 for an invalid configuration.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        config = config_from_args(args)
    except ValueError as err:
        parser.print_usage(sys.stderr)
        print(f"stpl-bench: error: {err}", file=sys.stderr)
        return 2
    if config.mode == "stream":
        result = run_stream_benchmark(config)
        text = format_stream_result(result)
    elif config.mode == "kernels":
        result = run_kernel_benchmark(config)
        text = format_kernel_result(result)
    else:
        result = run_benchmark(config)
        text = format_result(result)
    print(json.dumps(result, indent=2) if args.json else text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
