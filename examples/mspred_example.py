"""MSPred in the Moving digits example: ``train_moving_mnist.py --model mspred`` runs this.

MSPred trains every level at once: the frames (level 0) and, for levels 1 and 2, heatmaps
of the digit centres 4 and 8 frames ahead (sigma 2 and 5). ``stpl.data.MovingDigitsHeatmaps``
builds the heatmaps from the generator's positions, so nothing is downloaded. The loss is
the reference trainer's (``stpl.training.mspred_loss``): 0.2 x frame MSE + 0.5 x each
heatmap MSE + 1e-4 x KL, over ``--horizon`` outputs per level after ``--context`` frames.
The model is the ``mspred`` preset scaled by ``--hidden`` (cells, encoder filters, latent
cells) and ``--layers``; the paper's size is ``--hidden 128 --layers 4`` with the preset's
64 encoder filters (``stpl.get_model("mspred")``).

Files written to ``--out``:

- ``metrics.json``: per evaluation, frame MSE/MAE per frame (summed over pixels), PSNR and
  SSIM of ``generate`` after the context, and each head's MSE against its targets;
- ``checkpoint.pt``: model, optimizer and step;
- ``predictions.gif``: per step, the true and predicted frame, then level 1's target and
  prediction, then level 2's (a head's latest output is held until its next one);
- ``levels.png``: every level's outputs at their steps next to their targets.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

import stpl
from stpl import metrics
from stpl.data import HeatmapSample, MovingDigits, MovingDigitsHeatmaps, load_idx_digits
from stpl.training import mspred_loss


def build_model(args: argparse.Namespace) -> stpl.models.HierarchicalPredictor:
    """The ``mspred`` preset at the example's size (1-channel frames)."""
    overrides: dict[str, Any] = {
        "in_channels": 1,
        "hidden_channels": args.hidden,
        "num_layers": args.layers,
        "num_filters": max(4, args.hidden),
        "dim": None,
        "prior_hidden": args.hidden,
        "posterior_hidden": args.hidden,
        "image_size": args.image_size,
    }
    if args.kernel is not None:
        overrides["kernel_size"] = args.kernel
    model = stpl.get_model("mspred", **overrides)
    assert isinstance(model, stpl.models.HierarchicalPredictor)
    return model


def build_datasets(args: argparse.Namespace) -> tuple[MovingDigitsHeatmaps, MovingDigitsHeatmaps]:
    """Training and held-out sequences long enough for every level's ``--horizon`` outputs."""
    seq_len = args.context + 8 * args.horizon  # level 2 looks 8 frames ahead
    digits = load_idx_digits(args.digits) if args.digits else None
    common: dict[str, Any] = {
        "seq_len": seq_len,
        "image_size": args.image_size,
        "digit_size": args.digit_size,
        "digits": digits,
    }
    train = MovingDigits(args.num_train, seed=args.seed, **common)
    held_out = MovingDigits(args.num_eval, seed=args.seed + 1_000_003, **common)
    return MovingDigitsHeatmaps(train), MovingDigitsHeatmaps(held_out)


def batch(data: MovingDigitsHeatmaps, indices: list[int], device: torch.device) -> HeatmapSample:
    samples = [data[i] for i in indices]
    frames = torch.stack([s.frames for s in samples]).to(device)
    maps = tuple(torch.stack([s.heatmaps[k] for s in samples]).to(device) for k in range(2))
    return HeatmapSample(frames, maps)


@torch.no_grad()
def evaluate(
    model: stpl.models.HierarchicalPredictor,
    data: MovingDigitsHeatmaps,
    args: argparse.Namespace,
    device: torch.device,
) -> tuple[dict[str, Any], HeatmapSample, stpl.models.HierarchicalOutput]:
    """Frame metrics of ``generate`` and every head's MSE; one sequence's outputs to draw."""
    model.eval()
    sample = batch(data, list(range(len(data))), device)
    context = args.context
    pred = model.generate(sample.frames[:, :context], args.horizon).predictions.clamp(0, 1)
    truth = sample.frames[:, context : context + args.horizon]
    out = model(sample.frames, context=context, num_preds=args.horizon)
    result: dict[str, Any] = {
        "mse": metrics.mse(pred, truth).item(),
        "mae": metrics.mae(pred, truth).item(),
        "psnr": metrics.psnr(pred, truth).item(),
        "ssim": metrics.ssim(pred, truth).item(),
    }
    for h in (1, 2):
        steps = list(out.steps[h])
        target = sample.heatmaps[h - 1][:, [t + out.horizons[h] for t in steps]]
        predicted = out.predictions[h]
        assert predicted is not None
        result[f"heatmap_mse_level{h}"] = (predicted[:, steps] - target).square().mean().item()
    model.train()
    return result, sample, out


def _gray(x: Tensor) -> Tensor:
    """``(C, H, W)`` in [0, 1] (heatmaps up to 2) -> ``(H, W)`` uint8."""
    return (x[0].clamp(0, 1) * 255).to(torch.uint8)


def save_pictures(
    out_dir: Path, sample: HeatmapSample, out: stpl.models.HierarchicalOutput
) -> None:
    """``predictions.gif`` (frames and both heads over time) and ``levels.png``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    frames = out.predictions[0]
    assert frames is not None
    truth = sample.frames[0].cpu()
    steps = out.steps
    images = []
    held = [torch.zeros_like(truth[0]), torch.zeros_like(truth[0])]
    held_target = [torch.zeros_like(truth[0]), torch.zeros_like(truth[0])]
    for t in range(frames.shape[1]):
        if t not in steps[0] and not any(t in steps[h] for h in (1, 2)):
            continue
        for h in (1, 2):
            level = out.predictions[h]
            if t in steps[h] and level is not None:
                held[h - 1] = level[0, t].cpu()
                held_target[h - 1] = sample.heatmaps[h - 1][0, t + out.horizons[h]].cpu()
        row = [truth[t + 1], frames[0, t].cpu(), held_target[0], held[0], held_target[1], held[1]]
        strip = torch.cat([_gray(x) for x in row], dim=1)
        im = Image.fromarray(strip.numpy())
        images.append(im.resize((im.width * 2, im.height * 2), Image.NEAREST))
    images[0].save(
        out_dir / "predictions.gif", save_all=True, append_images=images[1:], duration=300, loop=0
    )

    rows = [
        ("frame (truth)", 0, True),
        ("frame", 0, False),
        ("level 1 target", 1, True),
        ("level 1", 1, False),
        ("level 2 target", 2, True),
        ("level 2", 2, False),
    ]
    columns = max(len(s) for s in steps)
    fig, axes = plt.subplots(len(rows), columns, figsize=(1.2 * columns, 1.3 * len(rows)))
    for r, (label, h, is_target) in enumerate(rows):
        for c in range(columns):
            ax = axes[r, c]
            ax.axis("off")
            if c >= len(steps[h]):
                continue
            t = steps[h][c]
            ahead = out.horizons[h]
            if h == 0:
                img = truth[t + 1] if is_target else frames[0, t].cpu()
            else:
                level = out.predictions[h]
                assert level is not None
                img = sample.heatmaps[h - 1][0, t + ahead].cpu() if is_target else level[0, t].cpu()
            ax.imshow(img[0].clamp(0, 1).numpy(), cmap="gray", vmin=0, vmax=1)
            ax.set_title(f"t={t + ahead}", fontsize=7)
            if c == 0:
                ax.text(
                    -0.1, 0.5, label, transform=ax.transAxes, ha="right", va="center", fontsize=7
                )
    fig.tight_layout()
    fig.savefig(out_dir / "levels.png", dpi=100)
    plt.close(fig)


def run(args: argparse.Namespace, device: torch.device) -> int:
    """Train, evaluate and draw MSPred (single process)."""
    torch.manual_seed(args.seed)
    train, held_out = build_datasets(args)
    model = build_model(args).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(args.seed)
    history: list[dict[str, Any]] = []
    for step in range(1, args.steps + 1):
        indices = torch.randint(len(train), (args.batch_size,), generator=gen).tolist()
        sample = batch(train, indices, device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.amp == "bf16"):
            out = model(sample.frames, context=args.context, num_preds=args.horizon)
            loss = mspred_loss(
                out,
                sample.frames,
                list(sample.heatmaps),
                context=args.context,
                num_preds=args.horizon,
            )
        opt.zero_grad(set_to_none=True)
        loss.total.backward()
        opt.step()
        if not args.quiet:
            print(f"\rstep {step}/{args.steps} loss {loss.total.item():.4f}", end="", flush=True)
        if step % args.eval_every == 0 or step == args.steps:
            result, shown, outputs = evaluate(model, held_out, args, device)
            result.update(step=step, loss=loss.total.item(), kl=loss.kl.item())
            history.append(result)
            (out_dir / "metrics.json").write_text(
                json.dumps({"model": "mspred", "history": history}, indent=2)
            )
            torch.save(
                {
                    "model": model.state_dict(),
                    "optimizer": opt.state_dict(),
                    "step": step,
                    "args": vars(args),
                },
                out_dir / "checkpoint.pt",
            )
            save_pictures(out_dir, shown, outputs)
            if not args.quiet:
                print(
                    f"\n  eval @ {step}: MSE {result['mse']:.1f}  SSIM {result['ssim']:.3f}  "
                    f"heatmap MSE level 1 {result['heatmap_mse_level1']:.4f}, "
                    f"level 2 {result['heatmap_mse_level2']:.4f}"
                )
    if not args.quiet:
        print(f"done: {args.steps} steps; files in {out_dir}/")
    return 0
