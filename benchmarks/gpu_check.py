"""First run on a GPU: every preset's training step, checked, timed and sync-free.

For each preset, in float32 and bfloat16 (autocast), three builds of the same weights run
one training step (forward over T frames with a scheduled-sampling mask, MSE loss,
backward): eager, ``compile_step()`` (inductor) and ``compile_step(mode="reduce-overhead")``
(inductor with CUDA graphs). Each is

* checked against the same step on the CPU in float64 (loss, predictions and every
  gradient; relative error bounded per dtype: TF32 is switched off for the float32 check);
* timed (median of ``--repeats`` steps after warm-up, CUDA events);
* measured for peak memory (``torch.cuda.max_memory_allocated``);
* run once under ``torch.cuda.set_sync_debug_mode("error")``: any host-device
  synchronisation inside the step raises, and the table says which variant synced.

The result is a markdown table (and JSON) under ``--out``. On a machine without CUDA it
says so and exits 0; ``--device cpu`` runs the same logic on the CPU (eager and compiled,
no CUDA graphs, no sync check), which is what the test suite does at a tiny size.

Usage::

    python benchmarks/gpu_check.py --out benchmarks/results          # all presets, on CUDA
    python benchmarks/gpu_check.py --models predrnn mau --size small  # a quick look
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

import stpl
from stpl.registry import preset

TOLERANCE = {"float32": 2e-3, "bfloat16": 6e-2}
"""Largest relative error (||x - ref|| / ||ref||) against the float64 CPU step."""

VARIANTS = ("eager", "compiled", "cudagraphs")


@dataclass
class Check:
    """One (preset, dtype, variant) row of the table."""

    model: str
    dtype: str
    variant: str
    ok: bool = False
    loss_error: float = math.nan
    prediction_error: float = math.nan
    gradient_error: float = math.nan
    worst_gradient: str = ""
    step_ms: float = math.nan
    peak_memory_mib: float = math.nan
    sync_free: bool | None = None
    error: str = ""
    notes: list[str] = field(default_factory=list)


def build(name: str, size: str, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    options = dict(preset(name).small) if size == "small" else {}
    torch.manual_seed(0)
    return stpl.get_model(name, **options).to(device=device, dtype=dtype)


def batch_for(name: str, size: str, batch: int, frames: int) -> tuple[torch.Tensor, torch.Tensor]:
    entry = preset(name)
    shape = entry.frame_shape if size == "small" else entry.default_frame_shape
    gen = torch.Generator().manual_seed(1)
    video = torch.rand(batch, frames, *shape, generator=gen, dtype=torch.float64)
    mask = (torch.rand(batch, frames - 2, generator=gen) < 0.5).double()
    return video, mask


def training_step(
    model: torch.nn.Module, video: torch.Tensor, mask: torch.Tensor, context: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward + MSE + backward; returns (loss, predictions) detached."""
    every_step = getattr(model, "predicts_every_step", True)
    out = model(video, context=context, mask=mask) if every_step else model(video, context=context)
    predictions = out.predictions
    if isinstance(predictions, (list, tuple, dict)):
        predictions = predictions[0]
    target = video[:, -predictions.shape[1] :]
    loss = F.mse_loss(predictions.float(), target.float())
    aux = getattr(out, "decouple_loss", None)
    if aux is not None:
        loss = loss + 0.1 * aux.float()
    loss.backward()
    return loss.detach(), predictions.detach()


def relative_error(x: torch.Tensor, ref: torch.Tensor) -> float:
    ref = ref.double().cpu()
    diff = (x.double().cpu() - ref).norm()
    return float(diff / ref.norm().clamp_min(1e-12))


def reference(name: str, size: str, batch: int, frames: int, context: int) -> dict[str, Any]:
    """The float64 CPU step: loss, predictions and gradients."""
    model = build(name, size, torch.device("cpu"), torch.float64).train()
    video, mask = batch_for(name, size, batch, frames)
    loss, predictions = training_step(model, video, mask, context)
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return {"loss": loss, "predictions": predictions, "grads": grads}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time_ms(fn: Any, device: torch.device, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize(device)
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def check_variant(
    name: str,
    dtype: str,
    variant: str,
    ref: dict[str, Any],
    *,
    device: torch.device,
    size: str,
    batch: int,
    frames: int,
    context: int,
    repeats: int,
    backend: str,
) -> Check:
    row = Check(name, dtype, variant)
    try:
        model = build(name, size, device, torch.float32).train()
        if variant == "compiled":
            model.compile_step(backend=backend)
        elif variant == "cudagraphs":
            model.compile_step(mode="reduce-overhead")
        video, mask = batch_for(name, size, batch, frames)
        video, mask = video.float().to(device), mask.float().to(device)
        autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=dtype == "bfloat16")

        def step() -> tuple[torch.Tensor, torch.Tensor]:
            model.zero_grad(set_to_none=True)
            if variant == "cudagraphs":
                torch.compiler.cudagraph_mark_step_begin()
            with autocast:
                return training_step(model, video, mask, context)

        loss, predictions = step()  # warm-up (compiles)
        loss, predictions = step()
        _sync(device)
        row.loss_error = relative_error(loss, ref["loss"])
        row.prediction_error = relative_error(predictions, ref["predictions"])
        worst, worst_name = 0.0, ""
        for pname, p in model.named_parameters():
            if pname not in ref["grads"]:
                continue
            if p.grad is None:
                raise RuntimeError(f"{pname} received no gradient")
            err = relative_error(p.grad, ref["grads"][pname])
            if err > worst:
                worst, worst_name = err, pname
        row.gradient_error, row.worst_gradient = worst, worst_name
        row.ok = max(row.loss_error, row.prediction_error, row.gradient_error) <= TOLERANCE[dtype]
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
            base = torch.cuda.memory_allocated(device)
            step()
            _sync(device)
            row.peak_memory_mib = (torch.cuda.max_memory_allocated(device) - base) / 2**20
            torch.cuda.set_sync_debug_mode("error")
            try:
                step()
                row.sync_free = True
            except RuntimeError as error:
                row.sync_free = False
                row.notes.append(f"sync: {str(error).splitlines()[0][:120]}")
            finally:
                torch.cuda.set_sync_debug_mode("default")
            _sync(device)
        row.step_ms = _time_ms(step, device, repeats)
    except Exception as error:
        row.error = f"{type(error).__name__}: {str(error).splitlines()[0][:160]}"
    return row


def render(rows: list[Check], device: str) -> str:
    lines = [
        f"GPU check on {device}: one training step per preset, against the float64 CPU step "
        f"(tolerance: float32 {TOLERANCE['float32']}, bfloat16 {TOLERANCE['bfloat16']}).",
        "",
        "| model | dtype | variant | ok | loss err | pred err | worst grad err | ms/step | "
        "peak MiB | sync-free | notes |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        sync = "n/a" if r.sync_free is None else ("yes" if r.sync_free else "**no**")
        notes = "; ".join([*r.notes, r.error] if r.error else r.notes)
        lines.append(
            f"| {r.model} | {r.dtype} | {r.variant} | {'yes' if r.ok else '**no**'} | "
            f"{r.loss_error:.1e} | {r.prediction_error:.1e} | {r.gradient_error:.1e} "
            f"({r.worst_gradient}) | {r.step_ms:.2f} | {r.peak_memory_mib:.0f} | {sync} | "
            f"{notes} |"
        )
    return "\n".join(lines) + "\n"


def run(args: argparse.Namespace) -> list[Check]:
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    variants = [v for v in args.variants if device.type == "cuda" or v != "cudagraphs"]
    rows: list[Check] = []
    for name in args.models:
        context = max(1, args.frames // 2)
        ref = reference(name, args.size, args.batch, args.frames, context)
        for dtype in args.dtypes:
            for variant in variants:
                row = check_variant(
                    name,
                    dtype,
                    variant,
                    ref,
                    device=device,
                    size=args.size,
                    batch=args.batch,
                    frames=args.frames,
                    context=context,
                    repeats=args.repeats,
                    backend=args.backend,
                )
                rows.append(row)
                print(render([row], str(device)).splitlines()[-1], flush=True)
    return rows


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=stpl.list_models())
    p.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    p.add_argument("--size", choices=("paper", "small"), default="paper")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--frames", type=int, default=20)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--device", default="cuda")
    p.add_argument("--backend", default="inductor", help="compile_step's backend")
    p.add_argument("--out", type=Path, default=None, help="folder for gpu-check.md/.json")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("gpu_check: no CUDA device on this machine: nothing to check (exit 0)")
        return 0
    rows = run(args)
    device_name = (
        torch.cuda.get_device_name(torch.device(args.device))
        if args.device.startswith("cuda")
        else "cpu"
    )
    text = render(rows, device_name)
    print(text)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "gpu-check.md").write_text(text)
        payload = {
            "device": device_name,
            "torch": torch.__version__,
            "rows": [asdict(r) for r in rows],
        }
        (args.out / "gpu-check.json").write_text(json.dumps(payload, indent=2))
    return 0 if all(r.ok and not r.error and r.sync_free is not False for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
