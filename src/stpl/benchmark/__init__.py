"""Throughput benchmarks of stpl cells and presets (``stpl-bench`` / ``python -m stpl.benchmark``).

One run reports, for a preset (``--model``) or a cell (``--cell``) in a given configuration,
dtype, layout and device: seconds per step (median and IQR, :mod:`torch.utils.benchmark`),
frames per second, FLOPs (:class:`torch.utils.flop_counter.FlopCounterMode`), peak memory,
and the headline: the step's FLOP rate as a fraction of the rate that the step's own
convolutions reach when run back to back in isolation (same shapes, dtype and layout).

Example:
    >>> from stpl.benchmark import BenchConfig, run_benchmark
    >>> result = run_benchmark(BenchConfig(model="predrnn", batch=2, frames=4, repeats=3))
    >>> result["fraction_of_conv_rate"]  # doctest: +SKIP
"""

from stpl.benchmark._config import CELL_NAMES, BenchConfig, build_parser, config_from_args
from stpl.benchmark._run import format_result, run_benchmark
from stpl.benchmark._stream import format_stream_result, run_stream_benchmark

__all__ = [
    "CELL_NAMES",
    "BenchConfig",
    "build_parser",
    "config_from_args",
    "format_result",
    "format_stream_result",
    "run_benchmark",
    "run_stream_benchmark",
]
