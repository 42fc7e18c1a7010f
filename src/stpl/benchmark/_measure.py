"""Measurements: time, FLOPs, peak memory, and the step's convolutions in isolation."""

from __future__ import annotations

import platform
import statistics
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_map
from torch.utils.benchmark import Timer
from torch.utils.flop_counter import FlopCounterMode

__all__ = [
    "ConvRecorder",
    "ConvReplay",
    "Step",
    "Timing",
    "count_flops",
    "first_call_seconds",
    "machine_info",
    "peak_memory_bytes",
    "record_convolutions",
    "synchronize",
    "time_interleaved",
    "time_step",
]

Step = Callable[[], Any]


@dataclass(frozen=True)
class Timing:
    """Seconds per run of a timed closure.

    Attributes:
        median_s: median over the measurements.
        iqr_s: interquartile range (spread).
        runs: how many runs the median is taken over.
        method: ``"blocked_autorange"``, ``"timeit"``, ``"cuda_events"``, with
            ``", interleaved"`` when several closures took turns.
        times: the seconds of every run (of every block for ``blocked_autorange``).
    """

    median_s: float
    iqr_s: float
    runs: int
    method: str
    times: tuple[float, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return {
            "median_s": self.median_s,
            "iqr_s": self.iqr_s,
            "runs": self.runs,
            "method": self.method,
            "times_s": list(self.times),
        }


def _summary(times: list[float], method: str) -> Timing:
    if len(times) >= 2:
        q = statistics.quantiles(times, n=4, method="inclusive")
        iqr = q[2] - q[0]
    else:
        iqr = 0.0
    return Timing(statistics.median(times), iqr, len(times), method, tuple(times))


def synchronize(device: torch.device) -> None:
    """Wait for queued work on ``device`` (no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _cuda_seconds(fn: Step) -> float:
    """Seconds of one call of ``fn`` between two CUDA events on the current stream."""
    start = torch.cuda.Event(enable_timing=True)  # type: ignore[no-untyped-call]
    end = torch.cuda.Event(enable_timing=True)  # type: ignore[no-untyped-call]
    start.record()
    fn()
    end.record()
    end.synchronize()
    return float(start.elapsed_time(end)) / 1000.0


def time_step(
    fn: Step,
    device: torch.device,
    *,
    repeats: int | None,
    min_run_time: float,
    warmup: int = 1,
) -> Timing:
    """Time ``fn`` after ``warmup`` untimed runs.

    CPU: :class:`torch.utils.benchmark.Timer` (``blocked_autorange(min_run_time)``, or
    ``timeit(1)`` ``repeats`` times). CUDA: one pair of CUDA events around each run.
    """
    for _ in range(warmup):
        fn()
    synchronize(device)
    if device.type == "cuda":
        times: list[float] = []
        n = repeats if repeats is not None else 10
        for _ in range(n):
            times.append(_cuda_seconds(fn))
        return _summary(times, "cuda_events")
    timer = Timer(stmt="fn()", globals={"fn": fn}, num_threads=torch.get_num_threads())
    if repeats is not None:
        return _summary([timer.timeit(number=1).median for _ in range(repeats)], "timeit")
    m = timer.blocked_autorange(min_run_time=min_run_time)
    return _summary(list(m.times), "blocked_autorange")


def time_interleaved(
    fns: list[Step], device: torch.device, *, repeats: int, warmup: int = 1
) -> list[Timing]:
    """Time several closures ``repeats`` times each, taking turns (one run of each per round).

    Taking turns exposes every closure to the same background load, so the ratio of their
    medians is meaningful on a shared machine even when absolute times drift.
    """
    for fn in fns:
        for _ in range(warmup):
            fn()
    synchronize(device)
    times: list[list[float]] = [[] for _ in fns]
    timers = [
        Timer(stmt="fn()", globals={"fn": fn}, num_threads=torch.get_num_threads()) for fn in fns
    ]
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            if device.type == "cuda":
                times[i].append(_cuda_seconds(fn))
            else:
                times[i].append(timers[i].timeit(number=1).median)
    method = "cuda_events, interleaved" if device.type == "cuda" else "timeit, interleaved"
    return [_summary(t, method) for t in times]


def first_call_seconds(fn: Step, device: torch.device) -> float:
    """Wall time of one call (the first call of a compiled step includes compilation)."""
    synchronize(device)
    t0 = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - t0


def count_flops(fn: Step) -> int:
    """FLOPs of one call of ``fn`` (:class:`FlopCounterMode`: convolutions and matmuls)."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


# ---------------------------------------------------------------- peak memory
def peak_memory_bytes(fn: Step, device: torch.device) -> tuple[int, str]:
    """Peak memory of one call of ``fn`` above what was allocated before it.

    CUDA: ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats``, minus the
    memory allocated at the start. CPU: the allocator events of ``torch.profiler`` with
    ``profile_memory=True`` (every tensor allocation and free during the call), summed in
    time order; the maximum of that running sum is the peak of tensor memory the call
    added. Neither counts memory outside PyTorch's allocator (e.g. oneDNN scratch space).
    """
    if device.type == "cuda":
        synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        synchronize(device)
        return int(torch.cuda.max_memory_allocated(device) - base), "cuda.max_memory_allocated"
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = [
        (e.start_ns(), e.nbytes())
        for e in prof.profiler.kineto_results.events()
        if e.name() == "[memory]" and e.device_type().name == "CPU"
    ]
    events.sort(key=lambda item: item[0])
    live = peak = 0
    for _, nbytes in events:
        live += nbytes
        peak = max(peak, live)
    return int(peak), "torch.profiler allocator events (tensor bytes)"


# ---------------------------------------------------------------- convolutions in isolation
_CONV_OPS = (torch.ops.aten.convolution.default, torch.ops.aten.convolution_backward.default)


@dataclass(frozen=True)
class _TensorSpec:
    """Shape, strides, dtype and device of a recorded tensor (a pytree leaf)."""

    shape: tuple[int, ...]
    stride: tuple[int, ...]
    dtype: torch.dtype
    device: torch.device


def _describe(x: Any) -> Any:
    if isinstance(x, torch.Tensor):
        return _TensorSpec(tuple(x.shape), tuple(x.stride()), x.dtype, x.device)
    return x


class ConvRecorder(TorchDispatchMode):  # type: ignore[no-untyped-call]
    """Records every ``aten.convolution`` / ``aten.convolution_backward`` call it sees.

    Runs below autograd and autocast, so it sees the calls as executed: the bf16 casts of
    autocast, the memory layout (strides), and the backward's output mask.
    """

    def __init__(self) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.calls: list[tuple[Any, tuple[Any, ...], dict[str, Any]]] = []

    def __torch_dispatch__(
        self,
        func: Any,
        types: Any,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        kwargs = kwargs or {}
        if func in _CONV_OPS:
            self.calls.append((func, tree_map(_describe, args), tree_map(_describe, kwargs)))
        return func(*args, **kwargs)


@dataclass
class ConvReplay:
    """The recorded convolutions of one step, ready to run back to back.

    Attributes:
        run: runs every recorded call once, in order, on random tensors of the recorded
            shapes, strides and dtypes (no autograd, no elementwise work in between).
        calls: number of convolution calls (forward and backward).
        unique: number of distinct call signatures.
    """

    run: Step
    calls: int
    unique: int


def record_convolutions(fn: Step) -> ConvReplay:
    """Run ``fn`` once, recording its convolutions, and return their replay."""
    with ConvRecorder() as recorder:
        fn()
    cache: dict[_TensorSpec, torch.Tensor] = {}

    def make(x: Any) -> Any:
        if isinstance(x, _TensorSpec):
            if x not in cache:
                t = torch.empty_strided(x.shape, x.stride, dtype=x.dtype, device=x.device)
                cache[x] = t.normal_() if t.is_floating_point() else t.zero_()
            return cache[x]
        return x

    calls = [(f, tree_map(make, a), tree_map(make, k)) for f, a, k in recorder.calls]
    signatures = {repr((f, a, k)) for f, a, k in recorder.calls}

    def run() -> None:
        with torch.no_grad():
            for func, args, kwargs in calls:
                func(*args, **kwargs)

    return ConvReplay(run, len(calls), len(signatures))


# ---------------------------------------------------------------- the machine
def machine_info(device: torch.device) -> dict[str, Any]:
    """CPU model (``lscpu``), torch version, threads, and the GPU name on CUDA."""
    cpu = platform.processor() or platform.machine()
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=5).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                cpu = line.split(":", 1)[1].strip()
                break
    except (OSError, subprocess.SubprocessError):
        pass
    info: dict[str, Any] = {
        "cpu": cpu,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "python": platform.python_version(),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info
