"""Frame-prediction metrics with the reductions of the papers' tables, batched in torch.

Every metric takes ``pred`` and ``target`` of shape ``(B, T, C, H, W)`` with values in
[0, 1] and computes one number per (sequence, frame) first. That ``(B, T)`` table is then
reduced:

* default: mean over sequences and frames -> scalar ``()``;
* ``per_frame=True``: mean over sequences -> the curve ``(T,)``;
* ``per_sample=True``: mean over frames -> ``(B,)`` (accumulate these over a test set when
  batches have unequal sizes);
* both: the ``(B, T)`` table itself.

The defaults reproduce the numbers of MoDeRNN's and PredRNN's evaluation code:

* :func:`mse` / :func:`mae`: per frame, the **sum** over the frame's ``C*H*W`` pixels of the
  squared / absolute error, with the prediction clipped to [0, 1] first. That is why Moving
  MNIST tables read MSE ~ 20-60 and MAE ~ 50-150: a 64x64 frame has 4096 pixels.
  ``reduction="mean"`` gives the per-pixel mean instead (``sum_per_frame / (C*H*W)``, what
  ``torch.nn.functional.mse_loss`` computes); ``clip=False`` scores the raw network output
  as OpenSTL does.
* :func:`psnr` and :func:`ssim`: on frames quantised to 8 bits by truncation,
  ``floor(clip(x, 0, 1) * 255)`` (numpy's ``uint8(x * 255)``), with data range 255; SSIM
  as ``skimage.metrics.structural_similarity`` computes it (7x7 uniform window, K1 = 0.01,
  K2 = 0.03, sample covariance, mean over the valid interior, mean over channels).
  ``quantize=False`` scores the float frames instead (OpenSTL's convention); OpenSTL's SSIM
  additionally used scikit-image's float default ``data_range=2``.

**Scale.** Frames are on the [0, 1] scale. A prediction may stray a little outside it (a raw
network output) and is clipped to [0, 1] first, as the papers' code does (``clip=True``; the
quantised PSNR/SSIM always clamp both frames). But an input with any value outside
[-0.5, 1.5] raises ``ValueError`` naming the argument, the range seen and the fix: it is on
another scale (0..255, or normalised to [-1, 1]), and clipping or quantising it would report
plausible numbers for garbage. ``data_range`` of :func:`psnr` / :func:`ssim` is only the
``R`` of the formula, never the scale of the inputs. The check costs one host
synchronisation per call.

Nothing here uses numpy or scikit-image: the metrics run on the tensors' device. PSNR and
SSIM compute in float64 (float32 on devices without float64, such as MPS) and return that
dtype; MSE and MAE compute and return in the inputs' dtype promoted to at least float32 and
stay differentiable. See ``docs/metrics.md`` for the conventions side by side.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from stpl._validation import check_bool

__all__ = ["Reduction", "mae", "mse", "psnr", "quantize_uint8", "ssim"]

Reduction = Literal["sum_per_frame", "mean"]
"""How :func:`mse` and :func:`mae` reduce a frame's pixels: ``"sum_per_frame"`` (papers'
tables) or ``"mean"`` (per-pixel mean)."""

_REDUCTIONS = ("sum_per_frame", "mean")

_K1 = 0.01
_K2 = 0.03


# --------------------------------------------------------------------------------------------
# checks and shared helpers


def _check_frames(name: str, value: object) -> Tensor:
    """Validate one metric input: a non-empty floating tensor ``(B, T, C, H, W)``."""
    if not isinstance(value, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor; got {type(value).__name__}")
    if value.ndim != 5:
        raise ValueError(f"{name} must be (B, T, C, H, W) (5 dims); got shape {tuple(value.shape)}")
    if not value.is_floating_point():
        raise ValueError(
            f"{name} must be a floating-point tensor with values in [0, 1]; got dtype {value.dtype}"
        )
    if value.numel() == 0:
        raise ValueError(f"{name} must not be empty; got shape {tuple(value.shape)}")
    return value


def _check_pair(pred: object, target: object) -> tuple[Tensor, Tensor]:
    """Validate ``pred``/``target``: tensors, ``(B, T, C, H, W)``, same shape, floating."""
    p = _check_frames("pred", pred)
    t = _check_frames("target", target)
    if p.shape != t.shape:
        raise ValueError(
            "pred and target must have the same shape (B, T, C, H, W); "
            f"got pred {tuple(p.shape)} and target {tuple(t.shape)}"
        )
    if p.device != t.device:
        raise ValueError(
            f"pred and target must be on the same device; got pred on {p.device} "
            f"and target on {t.device}"
        )
    _check_scale(p, t)
    return p, t


_SCALE_SLACK = 0.5
"""How far outside [0, 1] a metric input may go before it is refused as being on another
scale: values in [-0.5, 1.5] are accepted (see the module docstring)."""


def _scale_hint(lo: float, hi: float) -> str:
    if lo >= -_SCALE_SLACK and hi <= 255.0 + _SCALE_SLACK:
        return "frames on the 0..255 scale must be divided by 255 first"
    if lo >= -1.0 - _SCALE_SLACK and hi <= 1.0 + _SCALE_SLACK:
        return "frames normalised to [-1, 1] must be mapped back with (x + 1) / 2 first"
    return "rescale the frames to [0, 1] first (e.g. (x - lo) / (hi - lo) with the data's range)"


def _check_scale(pred: Tensor, target: Tensor) -> None:
    """Refuse frames that are clearly not on the [0, 1] scale (one host synchronisation).

    A prediction slightly outside [0, 1] is legitimate (a raw network output; the metrics
    clip it as the papers do); values beyond ``_SCALE_SLACK`` outside [0, 1] mean another
    scale (0..255, [-1, 1]), which clipping or quantising would silently turn into garbage.
    NaN is ignored here (the metric is then NaN, as in the reference code).
    """
    inf = math.inf
    bounds = [
        torch.aminmax(torch.nan_to_num(x.detach(), nan=0.5, posinf=inf, neginf=-inf))
        for x in (pred, target)
    ]
    values = torch.stack([v for pair in bounds for v in pair]).float().tolist()
    for name, lo, hi in (("pred", values[0], values[1]), ("target", values[2], values[3])):
        if lo >= -_SCALE_SLACK and hi <= 1.0 + _SCALE_SLACK:
            continue
        raise ValueError(
            f"{name} must hold frames on the [0, 1] scale (values within "
            f"[{-_SCALE_SLACK:g}, {1 + _SCALE_SLACK:g}] are accepted, predictions are clipped to "
            f"[0, 1]); got values in [{lo:.4g}, {hi:.4g}]: {_scale_hint(lo, hi)}"
        )


def _reduce(values: Tensor, per_frame: bool, per_sample: bool) -> Tensor:
    """Reduce a ``(B, T)`` table of per-(sequence, frame) scores."""
    check_bool("per_frame", per_frame)
    check_bool("per_sample", per_sample)
    if per_frame and per_sample:
        return values
    if per_frame:
        return values.mean(dim=0)
    if per_sample:
        return values.mean(dim=1)
    return values.mean()


def _work_dtype(device: torch.device) -> torch.dtype:
    """float64 for PSNR/SSIM, except on devices that have no float64 (MPS)."""
    return torch.float32 if device.type == "mps" else torch.float64


def _at_least_float32(x: Tensor) -> Tensor:
    if x.dtype in (torch.float32, torch.float64):
        return x
    return x.float()


def quantize_uint8(x: Tensor) -> Tensor:
    """8-bit levels of frames in [0, 1] as the reference code makes them: ``uint8(x * 255)``.

    ``x`` is clamped to [0, 1], multiplied by 255 in its own precision (float32 or float64,
    like numpy on the same array) and truncated towards zero. The levels are returned as
    floats (0.0 .. 255.0) in the working dtype of :func:`psnr` / :func:`ssim`.

    Args:
        x: any shape, floating.

    Returns:
        Same shape, integer-valued floats in [0, 255].
    """
    x = _at_least_float32(x)
    return torch.floor(x.clamp(0.0, 1.0) * 255.0).to(_work_dtype(x.device))


def _per_frame_error(
    pred: Tensor, target: Tensor, reduction: str, clip: bool, square: bool
) -> Tensor:
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be one of {_REDUCTIONS}; got {reduction!r}")
    check_bool("clip", clip)
    pred, target = _at_least_float32(pred), _at_least_float32(target)
    dtype = torch.promote_types(pred.dtype, target.dtype)
    pred, target = pred.to(dtype), target.to(dtype)
    if clip:
        pred = pred.clamp(0.0, 1.0)
    diff = pred - target
    err = diff.square() if square else diff.abs()
    if reduction == "sum_per_frame":
        return err.sum(dim=(2, 3, 4))
    return err.mean(dim=(2, 3, 4))


# --------------------------------------------------------------------------------------------
# public metrics


def mse(
    pred: Tensor,
    target: Tensor,
    *,
    per_frame: bool = False,
    per_sample: bool = False,
    reduction: Reduction = "sum_per_frame",
    clip: bool = True,
) -> Tensor:
    """Mean squared error, by default summed over each frame's pixels as the papers report it.

    Per (sequence b, frame t): ``sum_{c,h,w} (clip(pred) - target)^2`` with
    ``reduction="sum_per_frame"`` (MoDeRNN, PredRNN and OpenSTL tables), or the mean over
    ``(c, h, w)`` with ``reduction="mean"`` (per-pixel MSE, ``F.mse_loss``). Then the mean
    over sequences and frames (see ``per_frame``/``per_sample``).

    Args:
        pred: ``(B, T, C, H, W)`` predicted frames, values in [0, 1].
        target: ``(B, T, C, H, W)`` true frames, values in [0, 1].
        per_frame: return the curve ``(T,)`` (mean over sequences) instead of a scalar.
        per_sample: return ``(B,)`` (mean over frames); with ``per_frame`` the ``(B, T)``
            table.
        reduction: ``"sum_per_frame"`` (default) or ``"mean"`` over a frame's ``C*H*W``
            pixels.
        clip: clip ``pred`` to [0, 1] first (MoDeRNN, PredRNN); ``False`` scores the raw
            output (OpenSTL).

    Returns:
        ``()``, ``(T,)``, ``(B,)`` or ``(B, T)``; dtype of the inputs promoted to at least
        float32; differentiable.

    Raises:
        ValueError: wrong rank, mismatched shapes or devices, non-floating dtype, frames
            not on the [0, 1] scale (see the module docstring), unknown ``reduction``.
    """
    pred, target = _check_pair(pred, target)
    values = _per_frame_error(pred, target, reduction, clip, square=True)
    return _reduce(values, per_frame, per_sample)


def mae(
    pred: Tensor,
    target: Tensor,
    *,
    per_frame: bool = False,
    per_sample: bool = False,
    reduction: Reduction = "sum_per_frame",
    clip: bool = True,
) -> Tensor:
    """Mean absolute error, by default summed over each frame's pixels as the papers report it.

    Per (sequence b, frame t): ``sum_{c,h,w} |clip(pred) - target|`` with
    ``reduction="sum_per_frame"`` (MoDeRNN, OpenSTL tables), or the mean over ``(c, h, w)``
    with ``reduction="mean"``. Then the mean over sequences and frames.

    Args:
        pred: ``(B, T, C, H, W)`` predicted frames, values in [0, 1].
        target: ``(B, T, C, H, W)`` true frames, values in [0, 1].
        per_frame: return the curve ``(T,)`` (mean over sequences) instead of a scalar.
        per_sample: return ``(B,)`` (mean over frames); with ``per_frame`` the ``(B, T)``
            table.
        reduction: ``"sum_per_frame"`` (default) or ``"mean"`` over a frame's ``C*H*W``
            pixels.
        clip: clip ``pred`` to [0, 1] first (MoDeRNN); ``False`` scores the raw output
            (OpenSTL).

    Returns:
        ``()``, ``(T,)``, ``(B,)`` or ``(B, T)``; dtype of the inputs promoted to at least
        float32; differentiable.

    Raises:
        ValueError: wrong rank, mismatched shapes or devices, non-floating dtype, frames
            not on the [0, 1] scale (see the module docstring), unknown ``reduction``.
    """
    pred, target = _check_pair(pred, target)
    values = _per_frame_error(pred, target, reduction, clip, square=False)
    return _reduce(values, per_frame, per_sample)


def _prepare(
    pred: Tensor, target: Tensor, quantize: bool, clip: bool, data_range: float | None
) -> tuple[Tensor, Tensor, float]:
    """Frames in the working dtype (8-bit levels or floats) and the data range to use."""
    check_bool("quantize", quantize)
    check_bool("clip", clip)
    if data_range is not None and (
        isinstance(data_range, bool)
        or not isinstance(data_range, (int, float))
        or not data_range > 0
    ):
        raise ValueError(f"data_range must be None or a positive number; got {data_range!r}")
    if quantize:
        # uint8 cannot hold anything outside [0, 1]: both frames are clamped whatever `clip`.
        return quantize_uint8(pred), quantize_uint8(target), float(data_range or 255.0)
    dtype = _work_dtype(pred.device)
    p, t = pred.to(dtype), target.to(dtype)
    if clip:
        p = p.clamp(0.0, 1.0)
    return p, t, float(data_range or 1.0)


def psnr(
    pred: Tensor,
    target: Tensor,
    *,
    per_frame: bool = False,
    per_sample: bool = False,
    quantize: bool = True,
    clip: bool = True,
    data_range: float | None = None,
    eps: float = 1e-12,
) -> Tensor:
    """Peak signal-to-noise ratio per frame, averaged, as MoDeRNN's and PredRNN's code does.

    Per (sequence, frame): ``10 * log10(R^2 / max(m, eps * R^2))`` with
    ``m = mean_{c,h,w} (pred - target)^2``. With ``quantize=True`` (default) both frames are
    first turned into 8-bit levels ``floor(clip(x, 0, 1) * 255)`` and ``R = 255``, i.e.
    ``20 log10(255) - 10 log10(m)`` on the ``uint8`` frames; with ``quantize=False`` the
    float frames are used (``pred`` clipped if ``clip``) and ``R = 1`` (OpenSTL's PSNR).

    Identical frames (``m = 0``) would give ``+inf`` (as scikit-image and the reference
    code, where it then makes the whole average ``inf``). Here ``m`` is floored at
    ``eps * R^2``, so identical frames score ``-10 log10(eps)`` = 120 dB with the default
    ``eps=1e-12``, above any frame that differs (a single 8-bit level in one pixel of a
    frame with fewer than ~1.5e7 values scores less). ``eps=0`` returns ``inf`` exactly
    like scikit-image.

    Args:
        pred: ``(B, T, C, H, W)`` predicted frames, values in [0, 1].
        target: ``(B, T, C, H, W)`` true frames, values in [0, 1].
        per_frame: return the curve ``(T,)`` (mean over sequences) instead of a scalar.
        per_sample: return ``(B,)`` (mean over frames); with ``per_frame`` the ``(B, T)``
            table.
        quantize: score 8-bit frames (``True``, papers) or floats (``False``, OpenSTL).
        clip: with ``quantize=False``, clip ``pred`` to [0, 1] first. (Quantised frames are
            always clamped to [0, 1].)
        data_range: ``R``; ``None`` means 255 for quantised frames and 1.0 for floats.
        eps: floor of the per-frame MSE relative to ``R^2`` (``>= 0``).

    Returns:
        ``()``, ``(T,)``, ``(B,)`` or ``(B, T)`` in dB, float64 (float32 on MPS).

    Raises:
        ValueError: wrong rank, mismatched shapes or devices, non-floating dtype, frames
            not on the [0, 1] scale, bad ``data_range`` or ``eps``.
    """
    pred, target = _check_pair(pred, target)
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not eps >= 0:
        raise ValueError(f"eps must be a number >= 0; got {eps!r}")
    p, t, r = _prepare(pred, target, quantize, clip, data_range)
    m = (p - t).square().mean(dim=(2, 3, 4))
    if eps > 0:
        m = m.clamp_min(eps * r * r)
    values = 20.0 * math.log10(r) - 10.0 * torch.log10(m)
    return _reduce(values, per_frame, per_sample)


def ssim(
    pred: Tensor,
    target: Tensor,
    *,
    per_frame: bool = False,
    per_sample: bool = False,
    quantize: bool = True,
    clip: bool = True,
    data_range: float | None = None,
    win_size: int = 7,
) -> Tensor:
    """Structural similarity per frame, as ``skimage.metrics.structural_similarity`` computes it.

    With ``quantize=True`` (default, MoDeRNN and PredRNN) both frames are turned into 8-bit
    levels ``floor(clip(x, 0, 1) * 255)`` and ``R = 255``, which is what scikit-image infers
    for ``uint8`` images. Per channel, with ``mu`` the mean over a ``win_size`` x
    ``win_size`` uniform window, ``N = win_size^2`` and the sample covariance
    (``N / (N - 1)`` correction)::

        S = (2 mu_x mu_y + C1)(2 s_xy + C2) / ((mu_x^2 + mu_y^2 + C1)(s_x^2 + s_y^2 + C2))
        C1 = (0.01 R)^2,  C2 = (0.03 R)^2

    averaged over the valid interior (windows entirely inside the frame, which is exactly
    the map scikit-image averages after cropping ``(win_size - 1) // 2`` pixels per border),
    then over channels (scikit-image's ``channel_axis``). Computed with ``avg_pool2d`` in
    float64.

    With ``quantize=False`` the float frames are scored (``pred`` clipped if ``clip``) with
    ``R = data_range or 1.0``. OpenSTL called scikit-image on floats without ``data_range``,
    which meant ``R = 2`` (the float dtype range -1..1): pass ``quantize=False,
    data_range=2.0`` to reproduce those numbers.

    Args:
        pred: ``(B, T, C, H, W)`` predicted frames, values in [0, 1]; ``H, W >= win_size``.
        target: ``(B, T, C, H, W)`` true frames, values in [0, 1].
        per_frame: return the curve ``(T,)`` (mean over sequences) instead of a scalar.
        per_sample: return ``(B,)`` (mean over frames); with ``per_frame`` the ``(B, T)``
            table.
        quantize: score 8-bit frames (``True``, papers) or floats (``False``).
        clip: with ``quantize=False``, clip ``pred`` to [0, 1] first.
        data_range: ``R``; ``None`` means 255 for quantised frames and 1.0 for floats.
        win_size: odd window side >= 3, 7 as scikit-image.

    Returns:
        ``()``, ``(T,)``, ``(B,)`` or ``(B, T)``, float64 (float32 on MPS).

    Raises:
        ValueError: wrong rank, mismatched shapes or devices, non-floating dtype, frames
            not on the [0, 1] scale, even ``win_size`` or frames smaller than the window, bad
            ``data_range``.
    """
    pred, target = _check_pair(pred, target)
    if (
        isinstance(win_size, bool)
        or not isinstance(win_size, int)
        or win_size < 3
        or win_size % 2 == 0
    ):
        raise ValueError(f"win_size must be an odd int >= 3; got {win_size!r}")
    b, t, c, h, w = pred.shape
    if h < win_size or w < win_size:
        raise ValueError(
            f"frames must be at least win_size x win_size = {win_size}x{win_size} for SSIM; "
            f"got H={h}, W={w} (pass a smaller odd win_size)"
        )
    x, y, r = _prepare(pred, target, quantize, clip, data_range)
    x = x.reshape(b * t * c, 1, h, w)
    y = y.reshape(b * t * c, 1, h, w)
    moments = F.avg_pool2d(torch.cat([x, y, x * x, y * y, x * y], dim=1), win_size, stride=1)
    ux, uy, uxx, uyy, uxy = moments.unbind(dim=1)
    n = win_size * win_size
    cov_norm = n / (n - 1)
    vx = cov_norm * (uxx - ux * ux)
    vy = cov_norm * (uyy - uy * uy)
    vxy = cov_norm * (uxy - ux * uy)
    c1 = (_K1 * r) ** 2
    c2 = (_K2 * r) ** 2
    s_map = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
    values = s_map.mean(dim=(1, 2)).reshape(b, t, c).mean(dim=2)
    return _reduce(values, per_frame, per_sample)
