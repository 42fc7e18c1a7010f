"""Streaming latency: batch 1, per observed frame and per forecast frame.

A nowcasting service calls ``observe`` on each new frame and ``forecast`` after it. This
times both at batch 1 for three builds of the same weights, taking turns so all see the
same background load: eager, ``compile_step`` (``torch.compile`` of one recurrent step)
and the ``torch.export`` programs of :mod:`stpl.export`. ``bfloat16`` runs the model in
bfloat16 (weights and frames), as a deployment would, not under autocast.
"""

from __future__ import annotations

import copy
from typing import Any

import torch

from stpl.benchmark._config import BenchConfig
from stpl.benchmark._measure import first_call_seconds, machine_info, time_interleaved
from stpl.benchmark._workload import build_module, compile_kwargs, make_inputs
from stpl.models import RecurrentPredictor

__all__ = ["format_stream_result", "run_stream_benchmark", "stream_overrides"]


def stream_overrides(config: BenchConfig) -> dict[str, Any]:
    """Preset options the stream benchmark sets so that every variant can run.

    An exported step is fed its own state, so the state must keep one shape. E3D-LSTM's
    unbounded recall grows by one cell state per step; a bound of ``T`` slots keeps every
    cell state of the run, so the model computes exactly what the unbounded one computes
    over these frames (its masked empty slots take no attention weight).
    """
    if config.model == "e3d_lstm":
        return {"memory_length": config.frames}
    return {}


def run_stream_benchmark(config: BenchConfig) -> dict[str, Any]:
    """Measure batch-1 streaming latency of ``config.model``; a JSON-ready result.

    ``config.context`` frames are observed first (default T // 2); then one new frame is
    observed (the timed *observe*) and ``T - context`` frames are forecast (the timed
    *forecast*, reported per frame). Keys: ``config``, ``machine``, ``horizon``,
    ``variants`` (``eager``, ``compiled``, ``exported``: observe / forecast timings,
    ``per_observed_frame_s``, ``per_forecast_frame_s``, ``first_call_s``) and ``speedup``
    (eager median / variant median).
    """
    if config.model is None:
        raise ValueError("the stream mode measures a model (--model), not a cell")
    from stpl import export

    device = torch.device(config.device)
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    dtype = torch.bfloat16 if config.dtype == "bfloat16" else torch.float32
    overrides = stream_overrides(config)
    model = build_module(config, **overrides).eval().to(dtype)
    assert isinstance(model, RecurrentPredictor)
    frames = make_inputs(config, batch=1).to(device=device, dtype=dtype)
    context = min(config.resolved_context, config.frames - 1)
    horizon = max(1, config.frames - context)
    state = model.observe(frames[:, :context])
    frame = frames[:, context]

    compiled = copy.deepcopy(model).compile_step(**compile_kwargs(config))
    observe_program = export.export_observe_step(model, frame, state.state).module()
    forecast_program = export.export_forecast(model, state, horizon).module()
    pending = state.pending

    with torch.no_grad():
        fns = {
            "eager": (
                lambda: model.observe(frame[:, None], state),
                lambda: model.forecast(state, horizon),
            ),
            "compiled": (
                lambda: compiled.observe(frame[:, None], state),
                lambda: compiled.forecast(state, horizon),
            ),
            "exported": (
                lambda: observe_program(frame, state.state),
                lambda: forecast_program(state.state, pending),
            ),
        }
        first = {
            name: first_call_seconds(pair[0], device) + first_call_seconds(pair[1], device)
            for name, pair in fns.items()
        }
        order = [fn for pair in fns.values() for fn in pair]
        timings = time_interleaved(order, device, repeats=config.repeats or 20)
    variants: dict[str, Any] = {}
    for i, name in enumerate(fns):
        observe_t, forecast_t = timings[2 * i], timings[2 * i + 1]
        variants[name] = {
            "observe": observe_t.to_dict(),
            "forecast": forecast_t.to_dict(),
            "per_observed_frame_s": observe_t.median_s,
            "per_forecast_frame_s": forecast_t.median_s / horizon,
            "first_call_s": first[name],
        }
    eager = variants["eager"]
    speedup = {
        name: {
            "observe": eager["per_observed_frame_s"] / v["per_observed_frame_s"],
            "forecast": eager["per_forecast_frame_s"] / v["per_forecast_frame_s"],
        }
        for name, v in variants.items()
    }
    return {
        "config": config.to_dict(),
        "name": config.name,
        "machine": machine_info(device),
        "horizon": horizon,
        "context": context,
        "preset_overrides": overrides,
        "variants": variants,
        "speedup": speedup,
    }


def format_stream_result(result: dict[str, Any]) -> str:
    """A human-readable summary of :func:`run_stream_benchmark`'s result."""
    c = result["config"]
    lines = [
        f"{result['name']}  streaming at batch 1  dtype={c['dtype']}  device={c['device']}  "
        f"image={c['image_size']}  context={result['context']}  horizon={result['horizon']}",
    ]
    for name, v in result["variants"].items():
        s = result["speedup"][name]
        lines.append(
            f"  {name:9s} observe {v['per_observed_frame_s'] * 1e3:8.2f} ms/frame "
            f"({s['observe']:.2f}x)   forecast {v['per_forecast_frame_s'] * 1e3:8.2f} ms/frame "
            f"({s['forecast']:.2f}x)   first call {v['first_call_s']:.1f} s"
        )
    m = result["machine"]
    lines.append(f"  machine: {m['cpu']}, torch {m['torch']}, {m['threads']} threads")
    return "\n".join(lines)
