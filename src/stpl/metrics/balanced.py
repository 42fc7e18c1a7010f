"""The HKO-7 benchmark's error metrics: balanced MSE / MAE (B-MSE, B-MAE), masked MSE / MAE, GDL.

Heavy rain is rare, so HKO-7 weights each pixel's error by how strong the *observed* rain is.
With the thresholds 0.5, 2, 5, 10, 30 mm/h converted to pixels (``p(R)``, see
:mod:`stpl.data.radar_units`) and the balancing weights (1, 1, 2, 5, 10, 30)::

    w = 1   if x < p(2)             (x: the ground truth pixel)
        2   if p(2)  <= x < p(5)
        5   if p(5)  <= x < p(10)
        10  if p(10) <= x < p(30)
        30  if x >= p(30)
    w = w * mask                    (mask: 1 = pixel used)

    B-MSE(b, t) = sum_{c,h,w} w (x̂ - x)^2      B-MAE(b, t) = sum_{c,h,w} w |x̂ - x|

in pixel units, **summed** over the frame (not averaged, not normalised by the weights), as
the official evaluator (``HKOEvaluation``) computes them; ``mse`` / ``mae`` are the same with
``w = mask``. The ``(B, T)`` table is then reduced like :mod:`stpl.metrics.frame`'s metrics:
mean over sequences (``per_frame=True``, the ``(T,)`` curve of the evaluator) and over lead
times (default, the number of the papers' tables).

The official evaluator does not clip: its callers clip predictions to [0, 1] first (both
codebases' test loops). ``clip=True`` does that here.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from stpl._validation import check_bool
from stpl.data.radar_units import rainfall_to_pixel
from stpl.metrics.frame import _check_pair, _reduce

__all__ = [
    "BALANCING_WEIGHTS",
    "THRESHOLDS",
    "balanced_mae",
    "balanced_mse",
    "balancing_weights",
    "gdl",
    "masked_mae",
    "masked_mse",
]

THRESHOLDS: tuple[float, ...] = (0.5, 2.0, 5.0, 10.0, 30.0)
"""HKO-7's rain-rate thresholds in mm/h."""

BALANCING_WEIGHTS: tuple[float, ...] = (1.0, 1.0, 2.0, 5.0, 10.0, 30.0)
"""HKO-7's balancing weights: below the first threshold, then from each threshold on."""


# --------------------------------------------------------------------------------------------
# shared checks (also used by stpl.metrics.skill and stpl.training.nowcasting)


def check_thresholds(thresholds: object, *, ascending: bool = False) -> tuple[float, ...]:
    """Rain-rate thresholds: a non-empty sequence of positive finite numbers (mm/h)."""
    if isinstance(thresholds, Tensor):
        thresholds = thresholds.detach().cpu().tolist()
    if (
        not isinstance(thresholds, Sequence)
        or isinstance(thresholds, str)
        or not thresholds
        or not all(
            isinstance(t, (int, float)) and not isinstance(t, bool) and math.isfinite(t) and t > 0
            for t in thresholds
        )
    ):
        raise ValueError(
            "thresholds must be a non-empty sequence of positive rain rates in mm/h, e.g. "
            f"(0.5, 2, 5, 10, 30); got {thresholds!r}"
        )
    values = tuple(float(t) for t in thresholds)
    if ascending and any(b <= a for a, b in itertools.pairwise(values)):
        raise ValueError(f"thresholds must be increasing; got {values}")
    return values


def pixel_thresholds(thresholds: Sequence[float]) -> tuple[float, ...]:
    """``rainfall_to_pixel`` of each threshold, as Python (float64) numbers."""
    return tuple(rainfall_to_pixel(float(t)) for t in thresholds)


def event_input(x: Tensor) -> Tensor:
    """``x`` in a dtype in which ``x >= threshold`` can be decided exactly (>= float32)."""
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


def threshold_for(value: float, dtype: torch.dtype) -> float:
    """``value`` rounded *up* to ``dtype``: ``x >= t`` in ``dtype`` equals it in float64.

    For a float32 ``x`` and a float64 threshold ``t``, ``x >= t`` holds exactly when ``x`` is
    at least the smallest float32 that is ``>= t``; comparing the float32 tensor with that
    number (a Python scalar, so no tensor is copied to the device) counts the same pixels
    as the official evaluator's float64 comparison.
    """
    if dtype == torch.float64:
        return value
    low = np.float32(value)
    if float(low) < value:
        low = np.nextafter(low, np.float32(np.inf))
    return float(low)


def prepare_mask(mask: object, like: Tensor) -> Tensor | None:
    """A mask broadcastable to ``like``'s shape as a bool tensor (nonzero = use), or None."""
    if mask is None:
        return None
    if not isinstance(mask, Tensor):
        raise TypeError(f"mask must be a torch.Tensor or None; got {type(mask).__name__}")
    fits = mask.dim() <= like.dim() and all(
        m in (1, n) for m, n in zip(reversed(mask.shape), reversed(like.shape), strict=False)
    )
    if not fits:
        raise ValueError(
            f"mask must be broadcastable to pred's shape {tuple(like.shape)} (1 = use the "
            f"pixel); got shape {tuple(mask.shape)}"
        )
    if mask.device != like.device:
        raise ValueError(f"mask is on device {mask.device}, but pred is on {like.device}")
    return mask if mask.dtype == torch.bool else mask != 0


def _check_weights(weights: object, n_thresholds: int) -> tuple[float, ...]:
    if (
        not isinstance(weights, Sequence)
        or isinstance(weights, str)
        or len(weights) != n_thresholds + 1
        or not all(
            isinstance(w, (int, float)) and not isinstance(w, bool) and math.isfinite(w)
            for w in weights
        )
    ):
        raise ValueError(
            f"weights must be {n_thresholds + 1} numbers (one below the first threshold, "
            f"then one from each of the {n_thresholds} thresholds on); got {weights!r}"
        )
    return tuple(float(w) for w in weights)


# --------------------------------------------------------------------------------------------
# weights and errors


def balancing_weights(
    target: Tensor,
    *,
    mask: Tensor | None = None,
    thresholds: Sequence[float] = THRESHOLDS,
    weights: Sequence[float] = BALANCING_WEIGHTS,
) -> Tensor:
    """HKO-7's per-pixel weights from the ground truth (see the module docstring).

    Args:
        target: ground-truth pixels in [0, 1], any shape.
        mask: broadcastable to ``target`` (1 / True = use the pixel), or None.
        thresholds: increasing rain rates in mm/h.
        weights: ``len(thresholds) + 1`` weights: below the first threshold, then from each
            threshold on.

    Returns:
        ``target``'s shape, in its dtype (at least float32); no gradient.
    """
    if not isinstance(target, Tensor) or not target.is_floating_point():
        raise ValueError("target must be a floating torch.Tensor of pixels in [0, 1]")
    thr = check_thresholds(thresholds, ascending=True)
    table = _check_weights(weights, len(thr))
    x = event_input(target.detach())
    # w = table[0] + sum_k (table[k + 1] - table[k]) [x >= p_k]: exact (small integers or
    # their sums), with the thresholds as Python scalars so nothing is copied to the device
    w = torch.full_like(x, table[0])
    for k, pixel in enumerate(pixel_thresholds(thr)):
        step = table[k + 1] - table[k]
        if step:
            w = w + step * (x >= threshold_for(pixel, x.dtype))
    m = prepare_mask(mask, target)
    if m is not None:
        w = w * m
    return w


def _errors(
    pred: object,
    target: object,
    weight: Tensor | None,
    mask: Tensor | None,
    clip: bool,
    square: bool,
) -> Tensor:
    """``sum_{c,h,w} weight * err`` per (sequence, frame): ``(B, T)``."""
    p, t = _check_pair(pred, target)
    check_bool("clip", clip)
    if p.dtype not in (torch.float32, torch.float64):
        p = p.float()
    if t.dtype not in (torch.float32, torch.float64):
        t = t.float()
    dtype = torch.promote_types(p.dtype, t.dtype)
    p, t = p.to(dtype), t.to(dtype)
    if clip:
        p = p.clamp(0.0, 1.0)
    diff = p - t
    err = diff.square() if square else diff.abs()
    if weight is not None:
        err = err * weight.to(dtype)
    else:
        m = prepare_mask(mask, p)
        if m is not None:
            err = err * m
    return err.sum(dim=(2, 3, 4))


def balanced_mse(
    pred: Tensor,
    target: Tensor,
    *,
    mask: Tensor | None = None,
    per_frame: bool = False,
    per_sample: bool = False,
    clip: bool = False,
    thresholds: Sequence[float] = THRESHOLDS,
    weights: Sequence[float] = BALANCING_WEIGHTS,
) -> Tensor:
    """HKO-7's balanced MSE (B-MSE): ``sum_{c,h,w} w (x̂ - x)^2`` per frame, in pixel units.

    ``w`` from :func:`balancing_weights` (ground truth, mask). The ``(B, T)`` table is
    reduced to the mean over sequences and frames (default, the table number), the curve
    over lead times (``per_frame=True``: mean over sequences, what the official evaluator
    reports per frame), ``(B,)`` (``per_sample=True``) or kept (both).

    Args:
        pred: ``(B, T, C, H, W)`` predicted pixels (the official evaluator expects them
            clipped to [0, 1]; ``clip=True`` does it).
        target: ``(B, T, C, H, W)`` observed pixels in [0, 1].
        mask: broadcastable to ``(B, T, C, H, W)``, 1 = use the pixel; None uses all.
        per_frame: return ``(T,)``.
        per_sample: return ``(B,)``; with ``per_frame`` the ``(B, T)`` table.
        clip: clip ``pred`` to [0, 1] first.
        thresholds: rain rates (mm/h) of the weight steps.
        weights: the balancing weights.

    Returns:
        A scalar, ``(T,)``, ``(B,)`` or ``(B, T)``, in the inputs' dtype (at least float32);
        differentiable in ``pred``.
    """
    w = balancing_weights(target, mask=mask, thresholds=thresholds, weights=weights)
    return _reduce(_errors(pred, target, w, None, clip, square=True), per_frame, per_sample)


def balanced_mae(
    pred: Tensor,
    target: Tensor,
    *,
    mask: Tensor | None = None,
    per_frame: bool = False,
    per_sample: bool = False,
    clip: bool = False,
    thresholds: Sequence[float] = THRESHOLDS,
    weights: Sequence[float] = BALANCING_WEIGHTS,
) -> Tensor:
    """HKO-7's balanced MAE (B-MAE): ``sum_{c,h,w} w |x̂ - x|`` per frame; see
    :func:`balanced_mse` for the arguments and reductions."""
    w = balancing_weights(target, mask=mask, thresholds=thresholds, weights=weights)
    return _reduce(_errors(pred, target, w, None, clip, square=False), per_frame, per_sample)


def masked_mse(
    pred: Tensor,
    target: Tensor,
    *,
    mask: Tensor | None = None,
    per_frame: bool = False,
    per_sample: bool = False,
    clip: bool = False,
) -> Tensor:
    """The HKO-7 evaluator's MSE: ``sum_{c,h,w} mask (x̂ - x)^2`` per frame (reductions as
    :func:`balanced_mse`). Without a mask it equals ``stpl.metrics.mse(..., clip=clip)``."""
    return _reduce(_errors(pred, target, None, mask, clip, square=True), per_frame, per_sample)


def masked_mae(
    pred: Tensor,
    target: Tensor,
    *,
    mask: Tensor | None = None,
    per_frame: bool = False,
    per_sample: bool = False,
    clip: bool = False,
) -> Tensor:
    """The HKO-7 evaluator's MAE: ``sum_{c,h,w} mask |x̂ - x|`` per frame (reductions as
    :func:`balanced_mse`)."""
    return _reduce(_errors(pred, target, None, mask, clip, square=False), per_frame, per_sample)


def gdl(
    pred: Tensor,
    target: Tensor,
    *,
    mask: Tensor | None = None,
    per_frame: bool = False,
    per_sample: bool = False,
    clip: bool = False,
) -> Tensor:
    """The HKO-7 evaluator's gradient difference loss, per frame::

        sum m_h | |Δ_h x̂| - |Δ_h x| |  +  sum m_w | |Δ_w x̂| - |Δ_w x| |

    with ``Δ_h``, ``Δ_w`` the differences of vertical / horizontal neighbours and ``m_h``,
    ``m_w`` the products of their masks (both used). Reductions as :func:`balanced_mse`.
    """
    p, t = _check_pair(pred, target)
    check_bool("clip", clip)
    dtype = torch.promote_types(torch.promote_types(p.dtype, t.dtype), torch.float32)
    p, t = p.to(dtype), t.to(dtype)
    if clip:
        p = p.clamp(0.0, 1.0)
    gh = (p.diff(dim=3).abs() - t.diff(dim=3).abs()).abs()
    gw = (p.diff(dim=4).abs() - t.diff(dim=4).abs()).abs()
    m = prepare_mask(mask, p)
    if m is not None:
        m = m.expand(p.shape)
        gh = gh * (m[:, :, :, 1:] & m[:, :, :, :-1])
        gw = gw * (m[..., 1:] & m[..., :-1])
    return _reduce(gh.sum(dim=(2, 3, 4)) + gw.sum(dim=(2, 3, 4)), per_frame, per_sample)
