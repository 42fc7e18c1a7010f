"""Run one benchmark configuration and format its result."""

from __future__ import annotations

from typing import Any

import torch

from stpl.benchmark._config import BenchConfig
from stpl.benchmark._measure import (
    Timing,
    count_flops,
    first_call_seconds,
    machine_info,
    peak_memory_bytes,
    record_convolutions,
    time_interleaved,
    time_step,
)
from stpl.benchmark._workload import build_workload

__all__ = [
    "format_result",
    "run_benchmark",
]


def _dynamo_counters() -> tuple[int, int]:
    """(graph breaks, unique graphs) counted by dynamo so far."""
    from torch._dynamo.utils import counters

    breaks = sum(counters["graph_break"].values())
    graphs = int(counters["stats"]["unique_graphs"])
    return breaks, graphs


def _speedup(compiled: Timing, eager: Timing) -> dict[str, Any]:
    """The compiled step's speed-up over its eager twin: ratio of medians, and per round.

    Per-round ratios exist when the two took turns (same number of runs, interleaved); their
    minimum and maximum show whether the speed-up holds in every round or only on average.
    """
    out: dict[str, Any] = {
        "eager_step": eager.to_dict(),
        "speedup": eager.median_s / compiled.median_s,
        "speedup_per_round": None,
    }
    if "interleaved" in compiled.method:
        out["speedup_per_round"] = [e / c for e, c in zip(eager.times, compiled.times, strict=True)]
    return out


def run_benchmark(config: BenchConfig) -> dict[str, Any]:
    """Measure ``config`` and return a JSON-ready result.

    Keys: ``config``, ``machine``, ``steps_per_run``, ``samples``, ``step`` (timing),
    ``frames_per_s`` (samples x recurrent steps per second), ``flops`` (per run, counted by
    ``FlopCounterMode`` on the eager twin of the step), ``gflops_per_s``,
    ``isolated_conv`` (the step's convolutions run back to back: timing, flops, rate),
    ``fraction_of_conv_rate`` (the headline: step FLOP rate / isolated-convolution rate),
    ``peak_memory_bytes`` and ``memory_method``, ``compile`` (first-call seconds, compile
    seconds, graph breaks, graphs, the eager twin's timing, ``speedup`` = eager median /
    compiled median and, when they took turns, ``speedup_per_round``; ``None`` in eager)
    and ``stream_latency`` (rollout mode: a batch-1 single step).
    """
    device = torch.device(config.device)
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    work = build_workload(config)

    compile_info: dict[str, Any] | None = None
    if config.compile:
        from torch._dynamo.utils import counters

        counters.clear()
        first = first_call_seconds(work.step, device)
        breaks, graphs = _dynamo_counters()
        compile_info = {
            "target": work.compile_target,
            "first_call_s": first,
            "graph_breaks": breaks,
            "graphs": graphs,
        }

    flops = count_flops(work.eager_step)

    # what is timed: the step, the eager twin (compiled runs), the isolated convolutions;
    # with `repeats` they take turns, so all see the same background load
    fns = [work.step]
    if config.compile:
        fns.append(work.eager_step)
    iso: dict[str, Any] | None = None
    replay = None
    if config.isolated:
        replay = record_convolutions(work.eager_step)
        fns.append(replay.run)
    if config.repeats is not None:
        timings = time_interleaved(fns, device, repeats=config.repeats)
    else:
        timings = [
            time_step(fn, device, repeats=None, min_run_time=config.min_run_time) for fn in fns
        ]
    timing = timings[0]
    if replay is not None:
        iso_timing = timings[-1]
        iso_flops = count_flops(replay.run)
        iso = {
            "timing": iso_timing.to_dict(),
            "flops": iso_flops,
            "gflops_per_s": iso_flops / iso_timing.median_s / 1e9,
            "calls": replay.calls,
            "unique_calls": replay.unique,
        }

    rate = flops / timing.median_s
    fraction = None
    if iso is not None and iso["flops"] > 0:
        fraction = rate / (iso["flops"] / iso["timing"]["median_s"])

    if compile_info is not None:
        compile_info["compile_s"] = max(0.0, compile_info["first_call_s"] - timing.median_s)
        compile_info.update(_speedup(timing, timings[1]))

    memory: int | None = None
    memory_method: str | None = None
    if config.memory:
        # gradients from earlier runs are freed first, so the step allocates its own
        work.module.zero_grad(set_to_none=True)
        memory, memory_method = peak_memory_bytes(work.step, device)

    stream: dict[str, Any] | None = None
    if work.stream_step is not None:
        first = first_call_seconds(work.stream_step, device)
        st = time_step(
            work.stream_step,
            device,
            repeats=None if config.repeats is None else max(config.repeats, 20),
            min_run_time=min(config.min_run_time, 1.0),
        )
        stream = {**st.to_dict(), "first_call_s": first, "batch": 1, "steps": 1}

    return {
        "config": config.to_dict(),
        "name": config.name,
        "machine": machine_info(device),
        "steps_per_run": work.steps_per_run,
        "samples": work.samples,
        "step": timing.to_dict(),
        "frames_per_s": work.samples * work.steps_per_run / timing.median_s,
        "flops": flops,
        "gflops_per_s": rate / 1e9,
        "isolated_conv": iso,
        "fraction_of_conv_rate": fraction,
        "peak_memory_bytes": memory,
        "memory_method": memory_method,
        "compile": compile_info,
        "stream_latency": stream,
    }


def format_result(result: dict[str, Any]) -> str:
    """A human-readable summary of :func:`run_benchmark`'s result."""
    c = result["config"]
    step = result["step"]
    lines = [
        f"{result['name']}  mode={c['mode']}  dtype={c['dtype']}  compile={c['compile']}  "
        f"channels_last={c['channels_last']}  checkpoint_steps={c['checkpoint_steps']}  "
        f"device={c['device']}",
        f"  B={c['batch']} T={c['frames']} image={c['image_size']} "
        f"({result['steps_per_run']} recurrent steps per sample)",
        f"  step: {step['median_s'] * 1e3:.2f} ms median, IQR {step['iqr_s'] * 1e3:.2f} ms "
        f"over {step['runs']} runs ({step['method']})",
        f"  {result['frames_per_s']:.1f} frames/s, {result['flops'] / 1e9:.2f} GFLOP per step, "
        f"{result['gflops_per_s']:.1f} GFLOP/s",
    ]
    iso = result["isolated_conv"]
    if iso is not None:
        lines.append(
            f"  isolated convolutions: {iso['timing']['median_s'] * 1e3:.2f} ms for "
            f"{iso['calls']} calls ({iso['unique_calls']} distinct), "
            f"{iso['gflops_per_s']:.1f} GFLOP/s"
        )
        frac = result["fraction_of_conv_rate"]
        if frac is not None:
            lines.append(f"  => fraction of isolated-convolution rate: {frac:.1%}")
    if result["peak_memory_bytes"] is not None:
        lines.append(
            f"  peak memory: {result['peak_memory_bytes'] / 2**20:.1f} MiB "
            f"({result['memory_method']})"
        )
    comp = result["compile"]
    if comp is not None:
        lines.append(
            f"  compile: {comp['compile_s']:.1f} s (first call {comp['first_call_s']:.1f} s), "
            f"graph breaks {comp['graph_breaks']}, graphs {comp['graphs']}"
        )
        rounds = comp["speedup_per_round"]
        spread = (
            f" (per round {min(rounds):.3f}x to {max(rounds):.3f}x over {len(rounds)} rounds)"
            if rounds
            else ""
        )
        lines.append(
            f"  eager twin: {comp['eager_step']['median_s'] * 1e3:.2f} ms median => "
            f"compiled speed-up {comp['speedup']:.3f}x{spread}"
        )
    stream = result["stream_latency"]
    if stream is not None:
        lines.append(
            f"  streaming (batch 1, one step): {stream['median_s'] * 1e3:.2f} ms median, "
            f"IQR {stream['iqr_s'] * 1e3:.2f} ms"
        )
    m = result["machine"]
    lines.append(f"  machine: {m['cpu']}, torch {m['torch']}, {m['threads']} threads")
    return "\n".join(lines)
