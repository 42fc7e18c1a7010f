"""PhyDNet's training objective: the per-step frame loss and the PhyCell moment constraint.

``docs/training.md`` compares it with what OpenSTL's PhyDNet method optimises.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from stpl.cells.phycell import PhyCell, moment_matrix, moment_targets

__all__ = ["moment_loss", "phycell_moment_loss", "phydnet_loss"]


def phycell_moment_loss(cell: PhyCell) -> Tensor:
    r"""The moment constraint of one :class:`~stpl.cells.PhyCell`.

    With ``W_1 (F, C, k, k)`` the cell's derivative filters and ``m = moment_matrix(W_1)``::

        L_m = Σ_{b<C} mean_{f,p,q} (m[f, b, p, q] − target[f, p, q])²

    ``target = moment_targets(k)`` (filter ``k*i + j`` should have the single moment
    ``m[i, j] = 1``): a sum over the **input channels** b of per-channel means over
    ``F·k·k`` entries, exactly the reference's loop over ``conv1.weight[:, b]``. The moment
    matrices are computed in float64 (as the reference) and the loss in float32 (or the
    filters' dtype if wider).

    Raises:
        ValueError: if the cell does not have ``F = k*k`` filters (the constraint gives one
            target per filter).
    """
    weight = cell.derivative_filters
    f, _, k, _ = weight.shape
    if f != k * k:
        raise ValueError(
            f"the moment constraint needs filters = kernel_size**2 = {k * k} (one target "
            f"moment per filter); this PhyCell has filters={f}"
        )
    moments = moment_matrix(weight)
    targets = moment_targets(k, dtype=moments.dtype, device=moments.device)
    per_channel = (moments - targets[:, None]).square().mean(dim=(0, 2, 3))
    return per_channel.sum()


def moment_loss(model: nn.Module) -> Tensor:
    """PhyDNet's moment loss L_m of every :class:`~stpl.cells.PhyCell` in ``model``, summed.

    Depends on the weights only (not the data): add it once per training step with weight 1
    (PhyDNet's objective, :func:`phydnet_loss`). For OpenSTL's PhyDNet (one PhyCell) this
    equals the constraint term of its ``forward``/``inference`` loss.

    Raises:
        ValueError: if ``model`` holds no PhyCell.
    """
    cells = [m for m in model.modules() if isinstance(m, PhyCell)]
    if not cells:
        raise ValueError(
            f"moment_loss needs a model with a PhyCell; {type(model).__name__} has none"
        )
    total = phycell_moment_loss(cells[0])
    for cell in cells[1:]:
        total = total + phycell_moment_loss(cell)
    return total


def phydnet_loss(predictions: Tensor, frames: Tensor, model: nn.Module | None = None) -> Tensor:
    r"""PhyDNet's training loss: ``Σ_t MSE_mean(x̂_{t+1}, x_{t+1}) + L_m``.

    The sum over the ``T - 1`` steps of per-step mean squared errors (context steps
    included), plus :func:`moment_loss` of ``model`` if given. This is the objective of the
    authors' training and of OpenSTL's model loss; OpenSTL's ``training_step`` instead
    minimises ``MSE(L, frames)`` (``docs/training.md``).

    Args:
        predictions: ``(B, T-1, C, H, W)`` from ``model(frames, context=...)``.
        frames: ``(B, T, C, H, W)``, the clip the predictions were made from.
        model: the PhyDNet whose moment loss is added, or ``None`` for the frame term only.

    Returns:
        A scalar tensor (float32, or wider if the predictions are).
    """
    if not isinstance(predictions, Tensor) or not isinstance(frames, Tensor):
        raise TypeError("predictions and frames must be torch.Tensors")
    if frames.dim() != 5 or tuple(predictions.shape) != (
        frames.shape[0],
        frames.shape[1] - 1,
        *frames.shape[2:],
    ):
        raise ValueError(
            "predictions must be (B, T-1, C, H, W) for frames (B, T, C, H, W); got "
            f"predictions {tuple(predictions.shape)} and frames {tuple(frames.shape)}"
        )
    dtype = torch.promote_types(predictions.dtype, torch.float32)
    diff = predictions.to(dtype) - frames[:, 1:].to(dtype)
    loss = diff.square().mean(dim=(0, 2, 3, 4)).sum()
    if model is not None:
        loss = loss + moment_loss(model).to(loss.dtype)
    return loss
