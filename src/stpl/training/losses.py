"""Training losses of the reference code: MSE/L1 mixes and PredRNN-V2's decoupling loss."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal, TypeAlias

import torch
import torch.nn.functional as F
from torch import Tensor

from stpl._validation import check_real

__all__ = [
    "Adapter",
    "LossReduction",
    "decoupling_loss",
    "decoupling_term",
    "modernn_loss",
    "mse_l1_loss",
    "predrnn_loss",
]

Adapter: TypeAlias = Tensor | Callable[[Tensor], Tensor] | None
"""PredRNN-V2's shared adapter: a 1x1 conv weight ``(C', C, 1, 1)`` or ``(C', C)``, any
callable ``(M, C, H, W) -> (M, C', H, W)`` (e.g. the model's ``nn.Conv2d``), or ``None`` for
the identity."""

LossReduction = Literal["mean", "sum", "modernn"]
"""How :func:`mse_l1_loss` reduces: ``"mean"``, ``"sum"`` or MoDeRNN's ``"modernn"``."""



def _apply_adapter(x: Tensor, adapter: Adapter) -> Tensor:
    """``x: (M, C, H, W)`` -> ``(M, C', H, W)``."""
    if adapter is None:
        return x
    if isinstance(adapter, Tensor):
        w = adapter[:, :, None, None] if adapter.dim() == 2 else adapter
        if w.dim() != 4 or w.shape[2:] != (1, 1) or w.shape[1] != x.shape[1]:
            raise ValueError(
                f"adapter weight must be (C', {x.shape[1]}, 1, 1) or (C', {x.shape[1]}); "
                f"got shape {tuple(adapter.shape)}"
            )
        return F.conv2d(x, w.to(x.dtype))
    if not callable(adapter):
        raise ValueError(f"adapter must be a weight tensor, a callable or None; got {adapter!r}")
    return adapter(x)


def _check_increment(name: str, x: object, ndim: int) -> Tensor:
    if not isinstance(x, Tensor) or x.dim() != ndim or not x.is_floating_point():
        shape = "(N, B, C, H, W)" if ndim == 5 else "(B, C, H, W)"
        got = f"shape {tuple(x.shape)}, dtype {x.dtype}" if isinstance(x, Tensor) else repr(x)
        raise ValueError(f"{name} must be a floating tensor {shape}; got {got}")
    return x


def _abs_cosine(delta_c: Tensor, delta_m: Tensor, adapter: Adapter) -> Tensor:
    """``(M, C, H, W)`` pairs -> ``|cos|`` per (pair, channel), ``(M, C')``."""
    a = F.normalize(_apply_adapter(delta_c, adapter).flatten(2), dim=2)
    b = F.normalize(_apply_adapter(delta_m, adapter).flatten(2), dim=2)
    return F.cosine_similarity(a, b, dim=2).abs()


def decoupling_term(delta_c: Tensor, delta_m: Tensor, adapter: Adapter) -> Tensor:
    r"""PredRNN-V2's decoupling term for one (step, layer) pair.

    ::

        term = mean_{b, c} | <W Δc_{b,c}, W Δm_{b,c}>_{HW} | / (‖W Δc_{b,c}‖ ‖W Δm_{b,c}‖)

    the absolute cosine similarity over the spatial axis ``H*W`` of the adapted increments
    (``W`` = the shared 1x1 adapter), averaged over samples and channels. Computed like
    the reference: ``F.normalize`` over ``H*W`` then ``F.cosine_similarity``
    (``eps=1e-8``), so an all-zero map gives 0.

    Args:
        delta_c: ``Δc = i ⊙ g``, ``(B, C, H, W)``.
        delta_m: ``Δm = i' ⊙ g'``, ``(B, C, H, W)``.
        adapter: see :data:`Adapter` (weight, callable, or ``None`` for the identity).

    Returns:
        Scalar tensor in ``[0, 1]``.

    Raises:
        ValueError: if the shapes differ or are not 4-D, or the adapter weight is malformed.
    """
    _check_increment("delta_c", delta_c, 4)
    _check_increment("delta_m", delta_m, 4)
    if delta_c.shape != delta_m.shape:
        raise ValueError(
            "delta_c and delta_m must have the same shape; "
            f"got {tuple(delta_c.shape)} and {tuple(delta_m.shape)}"
        )
    return _abs_cosine(delta_c, delta_m, adapter).mean()


def decoupling_loss(
    delta_c: Tensor | Sequence[Tensor],
    delta_m: Tensor | Sequence[Tensor],
    adapter: Adapter,
) -> Tensor:
    r"""PredRNN-V2's decoupling loss: :func:`decoupling_term` averaged over all pairs.

    ::

        L_decouple = mean_{t, l} mean_{b, c} |cos_{HW}(W Δc^l_t, W Δm^l_t)|

    over the ``N = (T-1) * L`` (step, layer) pairs, as ``predrnn_v2.py`` computes it (a
    mean, not the paper's sums; so ``decouple_beta = 0.1`` is tied to the mean). The
    total loss is ``MSE + decouple_beta * L_decouple`` (:func:`predrnn_loss`).

    Args:
        delta_c: stacked ``(N, B, C, H, W)`` or a sequence of ``N`` tensors ``(B, C, H, W)``.
        delta_m: same layout and shapes as ``delta_c``.
        adapter: the shared adapter: a weight ``(C', C, 1, 1)`` / ``(C', C)``, a callable
            such as the model's ``nn.Conv2d(C, C, 1, bias=False)``, or ``None`` (identity).

    Returns:
        Scalar tensor in ``[0, 1]``; gradients reach the increments and the adapter.

    Raises:
        ValueError: if the inputs are empty, differ in shape or are malformed.
    """
    if isinstance(delta_c, Tensor) or isinstance(delta_m, Tensor):
        dc = _check_increment("delta_c", delta_c, 5)
        dm = _check_increment("delta_m", delta_m, 5)
        if dc.shape != dm.shape:
            raise ValueError(
                "delta_c and delta_m must have the same shape; "
                f"got {tuple(dc.shape)} and {tuple(dm.shape)}"
            )
        if dc.shape[0] == 0:
            raise ValueError("delta_c must hold at least one (step, layer) pair; got N=0")
        # One batch of N*B maps: every pair has B*C terms, so the flat mean equals the mean
        # over pairs of the per-pair means.
        return _abs_cosine(dc.flatten(0, 1), dm.flatten(0, 1), adapter).mean()
    dcs, dms = list(delta_c), list(delta_m)
    if len(dcs) != len(dms) or not dcs:
        raise ValueError(
            "delta_c and delta_m must be non-empty sequences of equal length; "
            f"got {len(dcs)} and {len(dms)}"
        )
    return torch.stack(
        [decoupling_term(c, m, adapter) for c, m in zip(dcs, dms, strict=True)]
    ).mean()


def _check_same_shape(pred_name: str, pred: object, target_name: str, target: object) -> None:
    if not isinstance(pred, Tensor) or not isinstance(target, Tensor):
        raise ValueError(
            f"{pred_name} and {target_name} must be tensors; "
            f"got {type(pred).__name__} and {type(target).__name__}"
        )
    if pred.shape != target.shape:
        raise ValueError(
            f"{pred_name} and {target_name} must have the same shape; "
            f"got {tuple(pred.shape)} and {tuple(target.shape)}"
        )


def mse_l1_loss(pred: Tensor, target: Tensor, *, reduction: LossReduction = "mean") -> Tensor:
    """MSE plus L1 between two tensors of the same shape.

    * ``"mean"``: ``mean((pred - target)²) + mean(|pred - target|)``.
    * ``"sum"``: ``Σ (pred - target)² + Σ |pred - target|``.
    * ``"modernn"``: ``(Σ (pred - target)² + Σ |pred - target|) / 4``, summed over every
      element (batch, frames, pixels): MoDeRNN's ``MSEL1Loss(size_average=False)``
      halves the sum and its trainer halves it again.

    Args:
        pred: any shape, e.g. ``(B, T, C, H, W)``.
        target: same shape as ``pred``.
        reduction: ``"mean"``, ``"sum"`` or ``"modernn"``.

    Returns:
        Scalar tensor.

    Raises:
        ValueError: if the shapes differ or ``reduction`` is unknown.
    """
    _check_same_shape("pred", pred, "target", target)
    if reduction == "mean":
        return F.mse_loss(pred, target) + F.l1_loss(pred, target)
    if reduction in ("sum", "modernn"):
        total = F.mse_loss(pred, target, reduction="sum") + F.l1_loss(pred, target, reduction="sum")
        return total if reduction == "sum" else total / 4
    raise ValueError(f"reduction must be 'mean', 'sum' or 'modernn'; got {reduction!r}")


def predrnn_loss(
    predictions: Tensor,
    frames: Tensor,
    decouple_loss: Tensor | None = None,
    *,
    decouple_beta: float = 0.1,
) -> Tensor:
    """PredRNN / PredRNN-V2 training loss: ``MSE(predictions, frames[:, 1:]) + β·L_decouple``.

    The MSE is a mean over all ``T-1`` predictions (context steps included) and every
    element, like ``nn.MSELoss()`` in the reference (which is computed in patch space; a
    patch reshape only permutes elements, so the mean is the same).

    Args:
        predictions: ``out.predictions``, ``(B, T-1, C, H, W)``.
        frames: the target sequence ``(B, T, C, H, W)`` (step ``t`` predicts ``frames[:, t+1]``).
        decouple_loss: ``out.decouple_loss`` (scalar) or ``None`` (PredRNN v1, no term).
        decouple_beta: β, ``>= 0`` (0.1 in the MNIST/BAIR scripts, 0.01 for KTH).

    Returns:
        Scalar tensor.

    Raises:
        ValueError: if the shapes do not line up or ``decouple_beta < 0``.
    """
    decouple_beta = check_real("decouple_beta", decouple_beta, low=0.0)
    if not isinstance(frames, Tensor) or frames.dim() != 5:
        got = tuple(frames.shape) if isinstance(frames, Tensor) else repr(frames)
        raise ValueError(f"frames must be (B, T, C, H, W); got {got}")
    _check_same_shape("predictions", predictions, "frames[:, 1:]", frames[:, 1:])
    loss = F.mse_loss(predictions, frames[:, 1:])
    if decouple_loss is not None:
        loss = loss + decouple_beta * decouple_loss
    return loss


def modernn_loss(predictions: Tensor, frames: Tensor) -> Tensor:
    """MoDeRNN's training loss: ``(SSE + SAE) / 4`` on ``predictions[:, 1:]`` vs ``frames[:, 2:]``.

    The MoDeRNN trainer discards the output of step 0 (the prediction of frame 1), so the
    loss covers the ``T-2`` predictions of frames 2 .. T-1, summed over batch, frames and
    pixels (:func:`mse_l1_loss` with ``reduction="modernn"``).

    Args:
        predictions: ``out.predictions``, ``(B, T-1, C, H, W)``.
        frames: the target sequence ``(B, T, C, H, W)``, ``T >= 3``.

    Returns:
        Scalar tensor.

    Raises:
        ValueError: if the shapes do not line up.
    """
    if not isinstance(frames, Tensor) or frames.dim() != 5 or frames.shape[1] < 3:
        got = tuple(frames.shape) if isinstance(frames, Tensor) else repr(frames)
        raise ValueError(f"frames must be (B, T, C, H, W) with T >= 3; got {got}")
    _check_same_shape("predictions", predictions, "frames[:, 1:]", frames[:, 1:])
    return mse_l1_loss(predictions[:, 1:], frames[:, 2:], reduction="modernn")
