"""Train a TrajGRU encoder-forecaster on synthetic radar echoes and score it like HKO-7.

Run ``python examples/train_nowcasting.py --out runs/nowcast``: the encoder-forecaster of Shi
et al. (NeurIPS 2017, official layout, small widths) learns to nowcast radar echoes generated
in the package (``stpl.data.RadarEchoes``: rain cells advected by a steering wind, growing
and decaying, in HKO-7 pixel units, 60 x 60 frames, 5 observed -> 10 predicted) with the
balanced MSE + MAE loss and the HKO-7 optimiser (Adam, beta1 0.5, gradient clipping at
global norm 50). It prints a progress bar, then the HKO-7 evaluation of held-out sequences:
CSI and HSS per lead time at 0.5 / 2 / 5 / 10 / 30 mm/h (next to the persistence baseline)
and B-MSE / B-MAE, and writes to ``--out``:

- ``metrics.json``: the scores per lead time and threshold, the table means, B-MSE, B-MAE,
  the persistence baseline's scores, the loss history;
- ``checkpoint.pt``: the model and optimizer;
- ``echoes.png``: observed (top) and predicted (bottom) echoes of one held-out sequence in
  dBZ, with the reflectivity colour map of weather-radar displays.

With the HKO-7 data (``--hko-root .../radarPNG`` and optionally ``--hko-mask-root
.../radarPNG_mask``) it trains and evaluates on the real frames (sides must be multiples of
30: 480 x 480 as released); ``--cell convgru`` trains the ConvGRU baseline, ``--paper``
builds the HKO-7 configuration (64-192-192 channels, 20 predicted frames; a GPU job).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Subset

import stpl
from stpl import metrics, training
from stpl.data import HKO7Frames, RadarEchoes

# The reflectivity palette of US NWS radar displays (dBZ lower edges), used by most
# nowcasting papers' figures.
DBZ_LEVELS = (5, 10, 15, 20, 25, 30, 35, 40, 45, 50, 55, 60, 65, 70, 75)
DBZ_COLORS = (
    "#04e9e7", "#019ff4", "#0300f4", "#02fd02", "#01c501", "#008e00", "#fdf802",
    "#e5bc00", "#fd9500", "#fd0000", "#d40000", "#bc0000", "#f800fd", "#9854c6",
)  # fmt: skip


class UsageError(Exception):
    """A bad command line: printed as one message, exit code 2, nothing written."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("--cell", choices=["trajgru", "convgru"], default="trajgru")
    p.add_argument("--hidden", default="16,32,32", help="channels of the three blocks")
    p.add_argument("--links", default="5,5,3", help="TrajGRU links of the three blocks")
    p.add_argument("--layout", choices=["official", "hzzone"], default="official")
    p.add_argument("--paper", action="store_true", help="HKO-7 widths, links and 20 frames out")
    p.add_argument("--steps", type=int, default=400, help="optimizer steps")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument(
        "--lr", type=float, default=1e-3, help="Adam learning rate (HKO-7: 1e-4 for 100k steps)"
    )
    p.add_argument("--clip-norm", type=float, default=50.0, help="gradient clipping (global)")
    p.add_argument("--loss-scale", type=float, default=1e-5, help="balanced loss scale")
    p.add_argument("--context", type=int, default=5, help="observed frames (HKO-7: 5)")
    p.add_argument("--horizon", type=int, default=10, help="predicted frames (HKO-7: 20)")
    p.add_argument("--image-size", type=int, default=60, help="synthetic frames (x30)")
    p.add_argument("--num-train", type=int, default=4000, help="synthetic training sequences")
    p.add_argument("--num-eval", type=int, default=32, help="held-out sequences")
    p.add_argument("--hko-root", default=None, help="HKO-7 radarPNG folder (real data)")
    p.add_argument("--hko-mask-root", default=None, help="HKO-7 radarPNG_mask folder")
    p.add_argument("--out", default="runs/nowcast", help="output directory")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--amp", choices=["none", "bf16"], default="none", help="autocast dtype")
    p.add_argument("--compile", action="store_true", help="model.compile_step()")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p.parse_args(argv)


def ints(name: str, text: str, count: int) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise UsageError(f"--{name} must be {count} comma-separated ints; got {text!r}") from None
    if len(values) != count or min(values) < 1:
        raise UsageError(f"--{name} must be {count} comma-separated ints >= 1; got {text!r}")
    return values


def check_args(args: argparse.Namespace) -> None:
    for name in ("steps", "batch_size", "context", "horizon", "num_train", "num_eval"):
        if getattr(args, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be >= 1; got {getattr(args, name)}")
    if args.hko_root is None and args.image_size % 30:
        raise UsageError(
            f"--image-size must be a multiple of 30 (the HKO-7 strides); got {args.image_size}"
        )
    for name in ("hko_root", "hko_mask_root"):
        path = getattr(args, name)
        if path is not None and not Path(path).is_dir():
            raise UsageError(f"--{name.replace('_', '-')} {path!r}: no such folder")
    if args.paper:
        args.hidden, args.links, args.horizon = "64,192,192", "13,13,9", 20


# --------------------------------------------------------------------------------------------
# data and model


def build_datasets(args: argparse.Namespace) -> tuple[Dataset[Any], Dataset[Any]]:
    """(train, held-out) datasets of clips ``(T, 1, H, W)`` (synthetic) or :class:`RadarClip`."""
    seq_len = args.context + args.horizon
    if args.hko_root is None:
        common: dict[str, Any] = {"seq_len": seq_len, "image_size": args.image_size}
        train = RadarEchoes(args.num_train, seed=args.seed, **common)
        held_out = RadarEchoes(args.num_eval, seed=args.seed + 1_000_003, **common)
        return train, held_out
    try:
        full = HKO7Frames(args.hko_root, seq_len, stride=5, mask_root=args.hko_mask_root)
    except (ValueError, OSError) as e:
        raise UsageError(f"--hko-root {args.hko_root!r}: {e}") from None
    n_eval = min(args.num_eval, max(1, len(full) // 10))
    return Subset(full, range(n_eval, len(full))), Subset(full, range(n_eval))


def build_model(args: argparse.Namespace) -> stpl.EncoderForecaster:
    options: dict[str, Any] = {
        "cell": args.cell,
        "hidden_channels": ints("hidden", args.hidden, 3),
        "layout": args.layout,
        "init": "hko7",  # the official initialisation: flows start at zero (identity warps)
    }
    if args.cell == "trajgru":
        options["links"] = ints("links", args.links, 3)
    model = stpl.get_model("encoder_forecaster", **options)
    assert isinstance(model, stpl.EncoderForecaster)
    return model


def split(batch: Any, device: torch.device) -> tuple[Tensor, Tensor | None]:
    """Frames and mask (None for synthetic data) of a batch, on the device."""
    if isinstance(batch, (list, tuple)) and len(batch) == 3:  # RadarClip
        return batch[0].to(device), batch[1].to(device)
    return batch.to(device), None


def autocast(args: argparse.Namespace, device: torch.device) -> torch.autocast:
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.amp == "bf16")


# --------------------------------------------------------------------------------------------
# evaluation and picture


@torch.no_grad()
def evaluate(
    model: stpl.EncoderForecaster,
    loader: DataLoader[Any],
    args: argparse.Namespace,
    device: torch.device,
) -> tuple[metrics.NowcastEvaluator, metrics.NowcastEvaluator, Tensor, Tensor]:
    """The HKO-7 evaluation of the model and of persistence (the last observed frame)."""
    model.eval()
    ours = metrics.NowcastEvaluator(horizon=args.horizon, device=device)
    persistence = metrics.NowcastEvaluator(horizon=args.horizon, device=device)
    example: tuple[Tensor, Tensor] | None = None
    for batch in loader:
        frames, mask = split(batch, device)
        context, future = frames[:, : args.context], frames[:, args.context :]
        future_mask = None if mask is None else mask[:, args.context :]
        with autocast(args, device):
            pred = model.generate(context, args.horizon).predictions.float()
        ours.update(pred, future, future_mask)  # clips to [0, 1] like the HKO-7 test loop
        last = context[:, -1:].expand_as(future)
        persistence.update(last, future, future_mask)
        if example is None:
            example = (frames[0].cpu(), pred[0].clamp(0, 1).cpu())
    model.train()
    assert example is not None
    return ours, persistence, example[0], example[1]


def summary_of(ev: metrics.NowcastEvaluator) -> dict[str, Any]:
    res = ev.compute(per_frame=True)
    return {
        "csi": res["csi"].tolist(),
        "hss": res["hss"].tolist(),
        "csi_mean": ev.csi().tolist(),
        "hss_mean": ev.hss().tolist(),
        "balanced_mse": ev.balanced_mse().item(),
        "balanced_mae": ev.balanced_mae().item(),
    }


def save_echoes(path: Path, frames: Tensor, pred: Tensor, context: int) -> None:
    """Observed sequence (top) and prediction (bottom, under the future frames), in dBZ."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import BoundaryNorm, ListedColormap

    cmap = ListedColormap(DBZ_COLORS).with_extremes(under="white")
    norm = BoundaryNorm(DBZ_LEVELS, cmap.N)
    t_total = frames.shape[0]
    fig, axes = plt.subplots(2, t_total, figsize=(1.3 * t_total, 3.0), squeeze=False)

    def show(ax: Any, pixels: Tensor | None) -> Any:
        ax.set_xticks([])
        ax.set_yticks([])
        if pixels is None:
            ax.axis("off")
            return None
        dbz = (pixels[0] * 70.0 - 10.0).masked_fill(pixels[0] <= 0, -99.0)
        return ax.imshow(dbz.numpy(), cmap=cmap, norm=norm, interpolation="nearest")

    image = None
    for t in range(t_total):
        image = show(axes[0, t], frames[t])
        minutes = 6 * (t - context + 1)  # HKO-7 frames are 6 minutes apart
        axes[0, t].set_title(f"{minutes:+d} min" if minutes else "now", fontsize=7)
        show(axes[1, t], pred[t - context] if t >= context else None)
    axes[0, 0].set_ylabel("observed", fontsize=8)
    axes[1, context].set_ylabel("predicted", fontsize=8)
    bar = fig.colorbar(image, ax=axes, fraction=0.02, pad=0.01)
    bar.set_label("dBZ", fontsize=8)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)


def table(ours: metrics.NowcastEvaluator, persistence: metrics.NowcastEvaluator) -> str:
    lines = ["CSI / HSS per lead time, then the persistence baseline's means", ours.table(digits=3)]
    lines.append(
        "| persistence mean | "
        + " | ".join(f"{v:.3f}" for v in [*persistence.csi().tolist(), *persistence.hss().tolist()])
        + " |"
    )
    lines.append(
        f"B-MSE {ours.balanced_mse().item():.1f} (persistence "
        f"{persistence.balanced_mse().item():.1f}), B-MAE {ours.balanced_mae().item():.1f} "
        f"(persistence {persistence.balanced_mae().item():.1f})"
    )
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# training


def progress(step: int, total: int, loss: float, fps: float, quiet: bool) -> None:
    if quiet:
        return
    width = 30
    done = int(width * step / total)
    bar = "#" * done + "-" * (width - done)
    end = "\n" if step == total else ""
    print(f"\r[{bar}] {step}/{total} loss {loss:.5f} {fps:6.1f} frames/s", end=end, flush=True)


def run(args: argparse.Namespace) -> int:
    check_args(args)
    device = torch.device(args.device)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    train_set, eval_set = build_datasets(args)
    model = build_model(args).to(device)
    if args.compile:
        model.compile_step()
    # HKO-7: Adam(beta1 = 0.5), lr x 0.7 every fifth of the run, global-norm clipping at 50
    opt = torch.optim.Adam(model.parameters(), lr=args.lr, betas=(0.5, 0.999), eps=1e-8)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=max(args.steps // 5, 1), gamma=0.7)
    loader = DataLoader(train_set, batch_size=args.batch_size, shuffle=True, drop_last=True)
    eval_loader = DataLoader(eval_set, batch_size=max(args.batch_size, 8))
    if len(loader) == 0:
        raise UsageError(f"--num-train {len(train_set)} is smaller than one batch")  # type: ignore[arg-type]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    history: list[dict[str, float]] = []
    step, t0, fps = 0, time.perf_counter(), 0.0
    frames_per_step = args.batch_size * (args.context + args.horizon)
    while step < args.steps:
        for batch in loader:
            frames, mask = split(batch, device)
            with autocast(args, device):
                out_ = model(frames, context=args.context)
                target = frames[:, args.context :]
                future_mask = None if mask is None else mask[:, args.context :]
                loss = training.balanced_loss(
                    out_.predictions.float(), target, future_mask, scale=args.loss_scale
                )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), args.clip_norm)
            opt.step()
            sched.step()
            step += 1
            now = time.perf_counter()
            rate = frames_per_step / max(now - t0, 1e-9)
            fps, t0 = (rate if fps == 0.0 else 0.9 * fps + 0.1 * rate), now
            value = loss.item()
            history.append({"step": step, "loss": value})
            progress(step, args.steps, value, fps, args.quiet)
            if step == args.steps:
                break

    ours, persistence, frames, pred = evaluate(model, eval_loader, args, device)
    report = table(ours, persistence)
    summary = {
        "cell": args.cell,
        "thresholds_mm_per_h": list(ours.thresholds),
        "model": summary_of(ours),
        "persistence": summary_of(persistence),
        "history": history,
        "args": vars(args),
    }
    (out / "metrics.json").write_text(json.dumps(summary, indent=2))
    torch.save(
        {"model": model.state_dict(), "optimizer": opt.state_dict(), "step": step},
        out / "checkpoint.pt",
    )
    save_echoes(out / "echoes.png", frames, pred, args.context)
    if not args.quiet:
        print(report)
        print(f"done: {step} steps; files in {out}/")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return run(args)
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
