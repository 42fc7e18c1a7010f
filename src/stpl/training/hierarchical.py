"""Losses of hierarchical predictors (MSPred): per-level reconstruction terms and the KL.

:class:`~stpl.models.HierarchicalPredictor` returns every level's outputs step-indexed
(:class:`~stpl.models.HierarchicalOutput`); these helpers pick what the reference trainer
(AIS-Bonn/MSPred ``02_train.py``, ``lib/losses.py``) compares::

    L = sum_h alpha_h * MSE_h + beta * KL

* level 0: the frames predicted at steps ``context-1 .. context-1+N_0-1`` (frames
  ``context .. context+N_0-1``) against the true frames;
* level h >= 1: the first ``N_h`` head outputs from step ``context - 1`` on, each against the
  level's target map at frame ``step + periods[h]`` (e.g. heatmaps of the digit centres,
  :func:`stpl.data.moving_digits_heatmaps`);
* KL: per level, the posterior/prior statistics of its posterior steps from ``context - 1``
  on, the first ``n_h`` of them (``n_h`` = the number of level-h outputs compared), summed
  over every element and divided by the batch size, then summed over levels.

``MSE_h`` is ``nn.MSELoss()`` (the mean over every element), as in the reference.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from stpl._validation import check_int, check_real

if TYPE_CHECKING:  # stpl.models imports stpl.training: no import cycle at run time
    from stpl.models.hierarchical import HierarchicalOutput, LatentStats

__all__ = [
    "HierarchicalLoss",
    "gaussian_kl",
    "hierarchical_loss",
    "latent_kl",
    "level_outputs",
    "mspred_loss",
]

Criterion = Callable[[Tensor, Tensor], Tensor]
"""``(prediction, target) -> scalar``, e.g. ``torch.nn.functional.mse_loss``."""


class HierarchicalLoss(NamedTuple):
    """The terms of :func:`hierarchical_loss`.

    Attributes:
        total: ``sum_h alphas[h] * levels[h] + beta * kl`` (a scalar to backpropagate).
        levels: per level, its reconstruction term, or ``None`` when the level has no
            outputs or no target.
        kl: the KL term (0 for a deterministic model).
    """

    total: Tensor
    levels: tuple[Tensor | None, ...]
    kl: Tensor


def gaussian_kl(mu_q: Tensor, logvar_q: Tensor, mu_p: Tensor, logvar_p: Tensor) -> Tensor:
    """Element-wise ``KL(N(mu_q, exp(logvar_q)) || N(mu_p, exp(logvar_p)))``.

    Computed as the reference does::

        log(sigma_p / sigma_q) + (exp(logvar_q) + (mu_q - mu_p)^2) / (2 exp(logvar_p)) - 1/2

    with ``sigma = exp(logvar / 2)``.
    """
    sigma_q = logvar_q.mul(0.5).exp()
    sigma_p = logvar_p.mul(0.5).exp()
    return (
        torch.log(sigma_p / sigma_q)
        + (torch.exp(logvar_q) + (mu_q - mu_p) ** 2) / (2 * torch.exp(logvar_p))
        - 0.5
    )


def _num_preds(num_preds: int | Sequence[int], levels: int) -> list[int]:
    if isinstance(num_preds, Sequence):
        values = [check_int(f"num_preds[{i}]", n, minimum=1) for i, n in enumerate(num_preds)]
        if len(values) != levels:
            raise ValueError(
                f"num_preds must be one int or one per level ({levels}); got {list(num_preds)}"
            )
        return values
    return [check_int("num_preds", num_preds, minimum=1)] * levels


def _check_output(out: object) -> HierarchicalOutput:
    from stpl.models.hierarchical import HierarchicalOutput

    if not isinstance(out, HierarchicalOutput):
        raise TypeError(
            "out must be the HierarchicalOutput of a HierarchicalPredictor's forward; got "
            f"{type(out).__name__}"
        )
    return out


def level_outputs(
    out: HierarchicalOutput,
    level: int,
    *,
    context: int,
    num_preds: int,
    num_frames: int,
) -> tuple[Tensor, list[int], list[int]] | None:
    """The outputs of ``level`` that the reference trainer compares, with their frames.

    Args:
        out: a forward's output.
        level: h.
        context: the ``context`` of that forward.
        num_preds: N_h, the most outputs to take.
        num_frames: T, the frames of that forward (targets must exist: frame < T).

    Returns:
        ``(outputs (B, n, C_h, H, W), steps, target_frames)`` with ``n <= num_preds``, or
        ``None`` when the level has no outputs.
    """
    out = _check_output(out)
    predictions = out.predictions[level]
    if predictions is None:
        return None
    ahead = out.horizons[level]
    steps = [t for t in out.steps[level] if t >= context - 1 and t + ahead < num_frames][:num_preds]
    if not steps:
        return None
    index = torch.tensor(steps, device=predictions.device)
    return predictions.index_select(1, index), steps, [t + ahead for t in steps]


def latent_kl(latents: Sequence[LatentStats], *, context: int, counts: Sequence[int]) -> Tensor:
    """The KL term: per level the first ``counts[h]`` posterior steps from ``context - 1`` on.

    Args:
        latents: ``out.latents`` of a stochastic model's forward.
        context: the ``context`` of that forward.
        counts: per level, how many of its steps to include (the reference: as many as the
            level's compared outputs).

    Returns:
        ``sum_h sum(gaussian_kl over (B, n_h, z, h, w)) / B``, a scalar.
    """
    if len(counts) != len(latents):
        raise ValueError(
            f"counts must have one entry per level ({len(latents)}); got {len(counts)}"
        )
    total: Tensor | None = None
    for stats, count in zip(latents, counts, strict=True):
        keep = [k for k, t in enumerate(stats.steps) if t >= context - 1][:count]
        if not keep:
            continue
        index = torch.tensor(keep, device=stats.mu_posterior.device)
        kld = gaussian_kl(
            *(
                t.index_select(1, index)
                for t in (
                    stats.mu_posterior,
                    stats.logvar_posterior,
                    stats.mu_prior,
                    stats.logvar_prior,
                )
            )
        )
        term = kld.sum() / kld.shape[0]
        total = term if total is None else total + term
    if total is None:
        device = latents[0].mu_posterior.device if latents else None
        return torch.zeros((), device=device)
    return total


def hierarchical_loss(
    out: HierarchicalOutput,
    frames: Tensor,
    targets: Sequence[Tensor | None] | Mapping[int, Tensor] | None = None,
    *,
    context: int,
    num_preds: int | Sequence[int] = 5,
    alphas: Sequence[float] = (1.0, 0.5, 0.5),
    beta: float = 1e-4,
    criterion: Criterion | Sequence[Criterion] = F.mse_loss,
) -> HierarchicalLoss:
    """MSPred's training loss: weighted per-level reconstruction terms plus ``beta`` x KL.

    Args:
        out: the :class:`~stpl.models.HierarchicalOutput` of ``model(frames, context)``.
        frames: ``(B, T, C, H, W)``, the frames of that call (level 0's targets).
        targets: the target maps of levels 1.. (one ``(B, T, C_h, H, W)`` tensor or ``None``
            per level h >= 1, or a mapping ``{h: tensor}``); a level without a target adds no
            reconstruction term (its KL is still counted).
        context: the ``context`` of that call.
        num_preds: N, outputs compared per level (one int, or one per level); the reference
            trains with 5.
        alphas: per-level weights (the reference's defaults (1, 0.5, 0.5); Moving MNIST
            uses (0.2, 0.5, 0.5), see :func:`mspred_loss`).
        beta: weight of the KL term.
        criterion: ``(prediction, target) -> scalar`` for every level, or one per level
            (default ``F.mse_loss``, the reference's ``nn.MSELoss()``).

    Returns:
        :class:`HierarchicalLoss`.
    """
    out = _check_output(out)
    levels = len(out.predictions)
    if not isinstance(frames, Tensor) or frames.dim() != 5:
        got = tuple(frames.shape) if isinstance(frames, Tensor) else type(frames).__name__
        raise ValueError(f"frames must be (B, T, C, H, W); got {got}")
    t_total = frames.shape[1]
    context = check_int("context", context, minimum=1, maximum=t_total)
    counts = _num_preds(num_preds, levels)
    if len(alphas) != levels:
        raise ValueError(f"alphas must have one weight per level ({levels}); got {list(alphas)}")
    weights = [check_real(f"alphas[{i}]", a) for i, a in enumerate(alphas)]
    beta = check_real("beta", beta, low=0.0)
    criteria = list(criterion) if isinstance(criterion, Sequence) else [criterion] * levels
    if len(criteria) != levels:
        raise ValueError(f"criterion must be one callable or one per level ({levels})")
    maps: list[Tensor | None] = [frames]
    if isinstance(targets, Mapping):
        maps += [targets.get(h) for h in range(1, levels)]
    elif targets is None:
        maps += [None] * (levels - 1)
    else:
        given = list(targets)
        if len(given) != levels - 1:
            raise ValueError(
                f"targets must have one entry per level h >= 1 ({levels - 1}); got {len(given)}"
            )
        maps += given
    terms: list[Tensor | None] = []
    used: list[int] = []
    total: Tensor | None = None
    for h in range(levels):
        picked = level_outputs(out, h, context=context, num_preds=counts[h], num_frames=t_total)
        target = maps[h]
        if picked is None:
            used.append(0 if out.predictions[h] is not None else counts[h])
            terms.append(None)
            continue
        pred, _, frame_index = picked
        used.append(pred.shape[1])
        if target is None:
            terms.append(None)
            continue
        if target.dim() != 5 or target.shape[:2] != frames.shape[:2]:
            raise ValueError(
                f"targets of level {h} must be (B, T, C_h, H, W) with B, T = "
                f"{tuple(frames.shape[:2])}; got shape {tuple(target.shape)}"
            )
        index = torch.tensor(frame_index, device=target.device)
        term = criteria[h](pred, target.index_select(1, index).to(pred.dtype))
        terms.append(term)
        total = weights[h] * term if total is None else total + weights[h] * term
    kl = (
        latent_kl(out.latents, context=context, counts=used)
        if out.latents is not None
        else frames.new_zeros(())
    )
    total = beta * kl if total is None else total + beta * kl
    return HierarchicalLoss(total, tuple(terms), kl)


def mspred_loss(
    out: HierarchicalOutput,
    frames: Tensor,
    targets: Sequence[Tensor | None] | Mapping[int, Tensor] | None = None,
    *,
    context: int = 17,
    num_preds: int | Sequence[int] = 5,
) -> HierarchicalLoss:
    """:func:`hierarchical_loss` with MSPred's Moving MNIST weights: alphas (0.2, 0.5, 0.5),
    beta 1e-4, MSE at every level (``src/configs/mmnist.json``)."""
    return hierarchical_loss(
        out,
        frames,
        targets,
        context=context,
        num_preds=num_preds,
        alphas=(0.2, 0.5, 0.5),
        beta=1e-4,
    )
