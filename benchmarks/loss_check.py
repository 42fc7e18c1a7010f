"""bfloat16 autocast vs float32: training loss after N steps from the same seed.

Trains the same preset twice from the same initial weights on the same Moving-Digits
batches (``stpl.data.MovingDigits``, procedural glyphs, no download), once in float32 and
once under bfloat16 autocast (float32 master weights, Adam), teacher forcing on the first
``--context`` frames, and reports both losses over the last 10 steps and their relative
difference. The issue's target: within 2% after 200 steps.

Usage::

    python benchmarks/loss_check.py --model predrnn --steps 200 --batch 8 --jobs 2
    python benchmarks/loss_check.py --model predrnn --steps 200 --batch 4 --hidden 16  # quicker

``--jobs 2`` trains the two dtypes at the same time in two processes (each with
``--threads`` threads). Writes ``benchmarks/results/loss-check-<model>.json`` (with
``-h<hidden>-b<batch>`` appended when ``--hidden`` or ``--batch`` differ from the preset's
64 channels and batch 8).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

import stpl
from stpl.data import MovingDigits

RESULTS = Path(__file__).resolve().parent / "results"


def train(args: argparse.Namespace, dtype: str) -> tuple[list[float], float]:
    """Train ``args.steps`` steps in ``dtype``; returns the per-step losses and the seconds."""
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    torch.manual_seed(args.seed)
    overrides: dict[str, Any] = {}
    if args.hidden is not None:
        overrides["hidden_channels"] = args.hidden
    model = stpl.get_model(args.model, **overrides)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    data = MovingDigits(args.steps * args.batch, seq_len=args.frames, seed=args.seed)
    losses: list[float] = []
    for step in range(args.steps):
        batch = torch.stack([data[step * args.batch + i] for i in range(args.batch)])
        ctx: contextlib.AbstractContextManager[Any] = contextlib.nullcontext()
        if dtype == "bfloat16":
            ctx = torch.autocast("cpu", dtype=torch.bfloat16)
        opt.zero_grad(set_to_none=True)
        with ctx:
            out = model(batch, args.context)
            loss = F.mse_loss(out.predictions.float(), batch[:, 1:])
            if out.decouple_loss is not None:
                loss = loss + 0.1 * out.decouple_loss.float()
        loss.backward()  # type: ignore[no-untyped-call]
        opt.step()
        losses.append(float(loss.detach()))
    return losses, time.perf_counter() - t0


def main() -> int:
    """Run both trainings and print/save the comparison."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", default="predrnn", choices=stpl.list_models())
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--frames", type=int, default=20)
    p.add_argument("--context", type=int, default=10)
    p.add_argument("--hidden", type=int, default=None, help="override the preset's 64")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--jobs", type=int, default=1, choices=(1, 2), help="dtypes in parallel")
    args = p.parse_args()
    dtypes = ("float32", "bfloat16")
    if args.jobs == 2:
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(2, mp_context=ctx) as pool:
            runs = list(pool.map(train, [args, args], dtypes))
    else:
        runs = [train(args, dtype) for dtype in dtypes]
    result: dict[str, Any] = {"args": vars(args)}
    for dtype, (losses, seconds) in zip(dtypes, runs, strict=True):
        result[dtype] = {
            "losses": losses,
            "final_mean10": statistics.fmean(losses[-10:]),
            "seconds": seconds,
        }
        print(
            f"{dtype}: mean loss of last 10 steps {result[dtype]['final_mean10']:.6f} "
            f"({result[dtype]['seconds']:.0f} s)",
            flush=True,
        )
    f32, b16 = result["float32"]["final_mean10"], result["bfloat16"]["final_mean10"]
    result["relative_difference"] = abs(b16 - f32) / f32
    result["first_loss"] = result["float32"]["losses"][0]
    print(
        f"relative difference: {result['relative_difference']:.2%} "
        f"(first-step loss {result['first_loss']:.6f})"
    )
    RESULTS.mkdir(parents=True, exist_ok=True)
    name = f"loss-check-{args.model}"
    if args.hidden not in (None, 64) or args.batch != 8:
        name += f"-h{args.hidden or 64}-b{args.batch}"
    (RESULTS / f"{name}.json").write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
