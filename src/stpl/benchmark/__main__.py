"""Command line of the benchmark: ``stpl-bench --model predrnn --mode train --json``."""

from __future__ import annotations

import json
import sys

from stpl.benchmark._config import build_parser, config_from_args
from stpl.benchmark._run import format_result, run_benchmark


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
    result = run_benchmark(config)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(format_result(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
