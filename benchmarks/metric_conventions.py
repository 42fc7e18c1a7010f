"""Score the same predictions under each metric convention (the table in docs/metrics.md).

Two stand-in predictors on 128 seeded MovingDigits test sequences (10 context -> 10 future,
64x64x1), no training involved, so the numbers are reproducible in seconds on a CPU:

* ``copy-last``: every future frame is the last context frame (the trivial baseline);
  its values stay in [0, 1], so clipping changes nothing.
* ``blur``: the true future frame blurred with a Gaussian whose width grows with the
  horizon (sigma = 0.3 * step): a forecast that gets blurrier further ahead, in [0, 1].
* ``blur+noise``: ``blur`` plus N(0, 0.02^2) noise, left unclipped: it imitates a network's
  raw output, which strays slightly outside [0, 1] (the background is 0, so about half of
  it goes negative).

Run: ``python benchmarks/metric_conventions.py`` (prints a Markdown table).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from stpl import metrics
from stpl.data import MovingDigits


def gaussian_blur(x: Tensor, sigma: float) -> Tensor:
    """Blur ``(N, 1, H, W)`` frames with a separable Gaussian of std ``sigma`` (pixels)."""
    if sigma <= 0:
        return x
    radius = max(1, int(3 * sigma + 0.5))
    t = torch.arange(-radius, radius + 1, dtype=x.dtype)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = k / k.sum()
    x = F.conv2d(F.pad(x, (radius, radius, 0, 0), mode="replicate"), k.view(1, 1, 1, -1))
    return F.conv2d(F.pad(x, (0, 0, radius, radius), mode="replicate"), k.view(1, 1, -1, 1))


def predictions(frames: Tensor, context: int) -> dict[str, Tensor]:
    future = frames[:, context:]
    b, t, c, h, w = future.shape
    copy_last = frames[:, context - 1 : context].expand_as(future).contiguous()
    gen = torch.Generator().manual_seed(0)
    blurred = torch.stack(
        [
            gaussian_blur(future[:, k].reshape(b * c, 1, h, w), 0.3 * (k + 1)).reshape(b, c, h, w)
            for k in range(t)
        ],
        dim=1,
    )
    noisy = blurred + 0.02 * torch.randn(blurred.shape, generator=gen)
    return {"copy-last": copy_last, "blur": blurred, "blur+noise": noisy}


CONVENTIONS: list[tuple[str, Callable[[Tensor, Tensor], Tensor]]] = [
    (
        "MSE, sum per frame, pred clipped (MoDeRNN, PredRNN; **default**)",
        lambda p, y: metrics.mse(p, y),
    ),
    ("MSE, sum per frame, not clipped (OpenSTL)", lambda p, y: metrics.mse(p, y, clip=False)),
    ("MSE, mean per pixel (`F.mse_loss`)", lambda p, y: metrics.mse(p, y, reduction="mean")),
    ("MAE, sum per frame, pred clipped (MoDeRNN; **default**)", lambda p, y: metrics.mae(p, y)),
    ("MAE, sum per frame, not clipped (OpenSTL)", lambda p, y: metrics.mae(p, y, clip=False)),
    ("MAE, mean per pixel", lambda p, y: metrics.mae(p, y, reduction="mean")),
    ("PSNR, uint8 frames (MoDeRNN, PredRNN; **default**)", lambda p, y: metrics.psnr(p, y)),
    ("PSNR, float frames, pred clipped (OpenSTL)", lambda p, y: metrics.psnr(p, y, quantize=False)),
    ("SSIM, uint8 frames, R=255 (MoDeRNN, PredRNN; **default**)", lambda p, y: metrics.ssim(p, y)),
    ("SSIM, float frames, R=1", lambda p, y: metrics.ssim(p, y, quantize=False)),
    (
        "SSIM, float frames, R=2 (OpenSTL: scikit-image's float default)",
        lambda p, y: metrics.ssim(p, y, quantize=False, data_range=2.0),
    ),
]


def main() -> None:
    context, num = 10, 128
    frames = MovingDigits(num, seq_len=20, seed=2024).as_tensor()
    preds = predictions(frames, context)
    target = frames[:, context:]
    names = list(preds)
    print(f"| convention | {' | '.join(names)} |")
    print(f"|---|{'---:|' * len(names)}")
    for label, fn in CONVENTIONS:
        cells = [f"{fn(preds[n], target).item():.4g}" for n in names]
        print(f"| {label} | {' | '.join(cells)} |")
    outside = ((preds["blur+noise"] < 0) | (preds["blur+noise"] > 1)).float().mean().item()
    print(f"\nblur+noise: {100 * outside:.1f}% of predicted values lie outside [0, 1]")
    for name in ("blur", "blur+noise"):
        curve = metrics.mse(preds[name], target, per_frame=True)
        print(f"{name} per-frame MSE curve:", [round(v, 1) for v in curve.tolist()])


if __name__ == "__main__":
    main()
