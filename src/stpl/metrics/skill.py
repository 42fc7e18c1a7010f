"""Skill scores of precipitation nowcasting (CSI, HSS, POD, FAR, GSS) as HKO-7 computes them.

An *event* at a rain-rate threshold R is ``pixel >= rainfall_to_pixel(R)``, for the
prediction and the observation separately; only pixels with mask 1 count. Per lead time t
and threshold k, summed over every sequence and pixel of the test set::

    a = hits               (predicted and observed)
    b = false alarms       (predicted, not observed)
    c = misses             (observed, not predicted)
    d = correct negatives

    POD = a / (a + c)      FAR = b / (a + b)      CSI = a / (a + b + c)
    a_r = (a + b)(a + c) / n,  n = a + b + c + d
    GSS = (a - a_r) / (a + b + c - a_r)           HSS = 2 GSS / (GSS + 1)

in float64 without any epsilon: 0/0 is NaN (no rain observed nor predicted at a lead time).
Scores are **ratios of totals** per lead time (not means of per-sequence scores); the table
number is the plain mean over lead times, NaN if any lead time is NaN (the official printout).

Everything is torch on the tensors' device with no host synchronisation: counts are int64
tensors, scores float64 (float32 on MPS). Over a test set, accumulate *counts*, not scores:
:class:`NowcastEvaluator` sums them over batches and, with :meth:`NowcastEvaluator.all_reduce`,
over DDP ranks, and only computes ratios when asked.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import torch
import torch.distributed as dist
from torch import Tensor

from stpl._validation import check_bool, check_positive_int
from stpl.metrics.balanced import (
    BALANCING_WEIGHTS,
    THRESHOLDS,
    balancing_weights,
    check_thresholds,
    event_input,
    gdl,
    pixel_thresholds,
    prepare_mask,
    threshold_for,
)
from stpl.metrics.frame import _check_pair

__all__ = [
    "ContingencyCounts",
    "NowcastEvaluator",
    "contingency_counts",
    "csi",
    "far",
    "gss",
    "hss",
    "pod",
]


def _ratio_dtype(device: torch.device) -> torch.dtype:
    return torch.float32 if device.type == "mps" else torch.float64


class ContingencyCounts(NamedTuple):
    """The 2x2 contingency table of each (lead time, threshold), as int64 tensors.

    Attributes:
        hits: ``a``, predicted and observed.
        misses: ``c``, observed but not predicted.
        false_alarms: ``b``, predicted but not observed.
        correct_negatives: ``d``, neither.

    The methods compute the scores from the counts, elementwise, in float64 (float32 on
    MPS); 0/0 gives NaN.
    """

    hits: Tensor
    misses: Tensor
    false_alarms: Tensor
    correct_negatives: Tensor

    def _abcd(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        dtype = _ratio_dtype(self.hits.device)
        return (
            self.hits.to(dtype),
            self.false_alarms.to(dtype),
            self.misses.to(dtype),
            self.correct_negatives.to(dtype),
        )

    def pod(self) -> Tensor:
        """Probability of detection ``a / (a + c)``."""
        a, _, c, _ = self._abcd()
        return a / (a + c)

    def far(self) -> Tensor:
        """False alarm ratio ``b / (a + b)``."""
        a, b, _, _ = self._abcd()
        return b / (a + b)

    def csi(self) -> Tensor:
        """Critical success index (threat score) ``a / (a + b + c)``."""
        a, b, c, _ = self._abcd()
        return a / (a + b + c)

    def gss(self) -> Tensor:
        """Gilbert skill score (equitable threat score) ``(a - a_r) / (a + b + c - a_r)``."""
        a, b, c, d = self._abcd()
        a_r = (a + b) / (a + b + c + d) * (a + c)
        return (a - a_r) / (a + b + c - a_r)

    def hss(self) -> Tensor:
        """Heidke skill score ``2 GSS / (GSS + 1)``.

        Equal to ``2(ad - bc) / ((a + c)(c + d) + (a + b)(b + d))``."""
        g = self.gss()
        return 2.0 * g / (g + 1.0)


def _count_table(
    pred: Tensor, target: Tensor, mask: Tensor | None, thresholds: Sequence[float]
) -> Tensor:
    """``(4, B, T, K)`` int64: hits, misses, false alarms, correct negatives per (b, t, k)."""
    p, t = event_input(pred.detach()), event_input(target.detach())
    pixels = pixel_thresholds(thresholds)
    tp = [threshold_for(v, p.dtype) for v in pixels]
    tt = [threshold_for(v, t.dtype) for v in pixels]
    dims = (2, 3, 4)
    if mask is None:
        total = torch.full(p.shape[:2], p[0, 0].numel(), dtype=torch.int64, device=p.device)
    else:
        mask = mask.expand(p.shape)
        total = mask.sum(dim=dims)
    hits, predicted, observed = [], [], []
    for k in range(len(thresholds)):
        bp = p >= tp[k]
        bt = t >= tt[k]
        if mask is not None:
            bp = bp & mask
            bt = bt & mask
        hits.append((bp & bt).sum(dim=dims))
        predicted.append(bp.sum(dim=dims))
        observed.append(bt.sum(dim=dims))
    a = torch.stack(hits, dim=-1)
    n_pred = torch.stack(predicted, dim=-1)
    n_obs = torch.stack(observed, dim=-1)
    misses = n_obs - a
    false_alarms = n_pred - a
    negatives = total[..., None] - n_obs - false_alarms
    return torch.stack([a, misses, false_alarms, negatives])


def contingency_counts(
    pred: Tensor,
    target: Tensor,
    *,
    mask: Tensor | None = None,
    thresholds: Sequence[float] = THRESHOLDS,
    per_sample: bool = False,
) -> ContingencyCounts:
    """Hits, misses, false alarms and correct negatives per (lead time, threshold).

    Args:
        pred: ``(B, T, C, H, W)`` predicted pixels (``pixel = (dBZ + 10) / 70``).
        target: ``(B, T, C, H, W)`` observed pixels.
        mask: broadcastable to ``(B, T, C, H, W)``; nonzero / True = count the pixel.
        thresholds: rain rates in mm/h (HKO-7's by default); the event is
            ``pixel >= rainfall_to_pixel(R)``.
        per_sample: keep the sequences apart: ``(B, T, K)`` counts instead of ``(T, K)``.

    Returns:
        :class:`ContingencyCounts` of int64 tensors ``(T, K)`` (summed over sequences and
        pixels) or ``(B, T, K)``.
    """
    p, t = _check_pair(pred, target)
    thr = check_thresholds(thresholds)
    check_bool("per_sample", per_sample)
    table = _count_table(p, t, prepare_mask(mask, p), thr)
    if not per_sample:
        table = table.sum(dim=1)
    return ContingencyCounts(*table.unbind(0))


def _score(
    name: str,
    pred: Tensor,
    target: Tensor,
    mask: Tensor | None,
    thresholds: Sequence[float],
    per_frame: bool,
) -> Tensor:
    check_bool("per_frame", per_frame)
    counts = contingency_counts(pred, target, mask=mask, thresholds=thresholds)
    scores: Tensor = getattr(counts, name)()
    return scores if per_frame else scores.mean(dim=0)


_SCORE_DOC = """

    Counts are summed over the sequences and (masked) pixels of each lead time, then the
    ratio is taken (see :mod:`stpl.metrics.skill`).

    Args:
        pred: ``(B, T, C, H, W)`` predicted pixels in [0, 1] (``(dBZ + 10) / 70``).
        target: ``(B, T, C, H, W)`` observed pixels.
        mask: broadcastable to ``(B, T, C, H, W)``; nonzero / True = use the pixel.
        thresholds: K rain rates in mm/h (HKO-7: 0.5, 2, 5, 10, 30).
        per_frame: return ``(T, K)``, one score per lead time and threshold.

    Returns:
        ``(K,)``: the mean over lead times (NaN if a lead time is 0/0), or ``(T, K)``;
        float64 (float32 on MPS), computed on the inputs' device without a host sync.
    """


def csi(
    pred: Tensor,
    target: Tensor,
    *,
    mask: Tensor | None = None,
    thresholds: Sequence[float] = THRESHOLDS,
    per_frame: bool = False,
) -> Tensor:
    return _score("csi", pred, target, mask, thresholds, per_frame)


def hss(
    pred: Tensor,
    target: Tensor,
    *,
    mask: Tensor | None = None,
    thresholds: Sequence[float] = THRESHOLDS,
    per_frame: bool = False,
) -> Tensor:
    return _score("hss", pred, target, mask, thresholds, per_frame)


def pod(
    pred: Tensor,
    target: Tensor,
    *,
    mask: Tensor | None = None,
    thresholds: Sequence[float] = THRESHOLDS,
    per_frame: bool = False,
) -> Tensor:
    return _score("pod", pred, target, mask, thresholds, per_frame)


def far(
    pred: Tensor,
    target: Tensor,
    *,
    mask: Tensor | None = None,
    thresholds: Sequence[float] = THRESHOLDS,
    per_frame: bool = False,
) -> Tensor:
    return _score("far", pred, target, mask, thresholds, per_frame)


def gss(
    pred: Tensor,
    target: Tensor,
    *,
    mask: Tensor | None = None,
    thresholds: Sequence[float] = THRESHOLDS,
    per_frame: bool = False,
) -> Tensor:
    return _score("gss", pred, target, mask, thresholds, per_frame)


csi.__doc__ = "Critical success index ``a / (a + b + c)`` per threshold." + _SCORE_DOC
hss.__doc__ = "Heidke skill score ``2 GSS / (GSS + 1)`` per threshold." + _SCORE_DOC
pod.__doc__ = "Probability of detection ``a / (a + c)`` per threshold." + _SCORE_DOC
far.__doc__ = "False alarm ratio ``b / (a + b)`` per threshold." + _SCORE_DOC
gss.__doc__ = "Gilbert skill score (equitable threat score) per threshold." + _SCORE_DOC


# --------------------------------------------------------------------------------------------
# the accumulator

_SUMS = ("mse", "mae", "balanced_mse", "balanced_mae", "gdl")


class NowcastEvaluator:
    """Accumulates the HKO-7 evaluation over a test set: counts and error sums, not ratios.

    Each :meth:`update` adds, per lead time, the contingency counts of every threshold and
    the sums over sequences of the per-frame MSE, MAE, B-MSE, B-MAE and GDL (all masked),
    plus the number of sequences. Scores and means are computed from these totals only when
    asked, exactly as the official ``HKOEvaluation.calculate_stat`` does; the numbers stay
    on the device (no host sync) until you read them. :meth:`all_reduce` sums the totals
    over the processes of a ``torch.distributed`` group (call it on every rank), so a
    distributed evaluation gives the numbers of one pass over the whole test set.

    Differences from the official evaluator: ``clip=True`` (default) clips predictions to
    [0, 1] first, which both codebases' test loops do before calling theirs (``clip=False``
    takes them as they are); :meth:`reset` resets everything (the official ``clear_all``
    forgets the balanced sums, section 9 of the spec). The central crop (``use_central``)
    is not built in: slice the frames yourself.

    Args:
        thresholds: increasing rain rates in mm/h.
        balancing_weights: weights of B-MSE / B-MAE (``len(thresholds) + 1``).
        clip: clip predictions to [0, 1] before scoring.
        horizon: number of lead times T; ``None`` takes it from the first update (give it
            when a rank may see no batch before :meth:`all_reduce`).
        device: where the totals live; ``None`` takes the first update's device.

    Example:
        >>> ev = NowcastEvaluator()
        >>> for frames in loader:                        # doctest: +SKIP
        ...     pred = model.generate(frames[:, :5], 20).predictions
        ...     ev.update(pred, frames[:, 5:], mask)
        >>> ev.all_reduce()                              # doctest: +SKIP  (DDP only)
        >>> ev.csi(per_frame=True)                       # doctest: +SKIP  (T, K)
    """

    def __init__(
        self,
        thresholds: Sequence[float] = THRESHOLDS,
        balancing_weights: Sequence[float] = BALANCING_WEIGHTS,
        *,
        clip: bool = True,
        horizon: int | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        self.thresholds = check_thresholds(thresholds, ascending=True)
        self.balancing_weights = tuple(float(w) for w in balancing_weights)
        if len(self.balancing_weights) != len(self.thresholds) + 1:
            raise ValueError(
                f"balancing_weights must have len(thresholds) + 1 = {len(self.thresholds) + 1} "
                f"entries; got {len(self.balancing_weights)}"
            )
        self.clip = check_bool("clip", clip)
        self.horizon = None if horizon is None else check_positive_int("horizon", horizon)
        self.device = None if device is None else torch.device(device)
        self._counts: Tensor | None = None
        self._sums: Tensor | None = None
        self._sequences: Tensor | None = None
        if self.horizon is not None and self.device is not None:
            self._allocate(self.horizon, self.device)

    def _allocate(self, horizon: int, device: torch.device) -> None:
        k = len(self.thresholds)
        self.horizon, self.device = horizon, device
        self._counts = torch.zeros(4, horizon, k, dtype=torch.int64, device=device)
        self._sums = torch.zeros(len(_SUMS), horizon, dtype=_ratio_dtype(device), device=device)
        self._sequences = torch.zeros((), dtype=torch.int64, device=device)

    def reset(self) -> None:
        """Forget everything accumulated (keeps thresholds, horizon and device)."""
        if self._counts is not None:
            assert self.horizon is not None and self.device is not None
            self._allocate(self.horizon, self.device)

    @torch.no_grad()
    def update(self, pred: Tensor, target: Tensor, mask: Tensor | None = None) -> None:
        """Add a batch: ``pred``, ``target`` ``(B, T, C, H, W)`` pixels, ``mask`` broadcastable.

        Raises:
            ValueError: shapes, devices or a horizon that differs from earlier updates.
        """
        p, t = _check_pair(pred, target)
        if self._counts is None:
            self._allocate(
                self.horizon or p.shape[1], self.device if self.device is not None else p.device
            )
        assert self._counts is not None and self._sums is not None
        assert self._sequences is not None and self.device is not None
        if p.shape[1] != self.horizon:
            raise ValueError(
                f"pred has T={p.shape[1]} lead times, but this evaluator accumulates "
                f"horizon={self.horizon}"
            )
        m = prepare_mask(mask, p)
        if self.clip:
            p = p.clamp(0.0, 1.0)
        table = _count_table(p, t, m, self.thresholds).sum(dim=1)
        self._counts += table.to(self.device)
        w = balancing_weights(t, mask=m, thresholds=self.thresholds, weights=self.balancing_weights)
        dtype = torch.promote_types(torch.promote_types(p.dtype, t.dtype), torch.float32)
        diff = p.to(dtype) - t.to(dtype)
        sq, ab = diff.square(), diff.abs()
        use = None if m is None else m.to(dtype)
        dims = (2, 3, 4)
        mse = (sq if use is None else sq * use).sum(dim=dims)
        mae = (ab if use is None else ab * use).sum(dim=dims)
        bmse = (sq * w.to(dtype)).sum(dim=dims)
        bmae = (ab * w.to(dtype)).sum(dim=dims)
        g = gdl(p, t, mask=m, per_frame=True, per_sample=True)
        sums = torch.stack([mse, mae, bmse, bmae, g]).sum(dim=1)  # (5, T)
        self._sums += sums.to(self._sums.dtype).to(self.device)
        self._sequences += p.shape[0]

    def all_reduce(self, group: Any = None) -> NowcastEvaluator:
        """Sum the totals over the processes of ``group`` (every rank must call it); returns
        ``self``. A no-op when ``torch.distributed`` is not initialised."""
        if not (dist.is_available() and dist.is_initialized()):
            return self
        if self._counts is None:
            if self.horizon is None:
                raise ValueError(
                    "this evaluator saw no batch and has no horizon: give NowcastEvaluator("
                    "horizon=T, device=...) so every rank can take part in all_reduce"
                )
            self._allocate(self.horizon, self.device or torch.device("cpu"))
        assert self._counts is not None and self._sums is not None
        assert self._sequences is not None
        for tensor in (self._counts, self._sums, self._sequences):
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM, group=group)
        return self

    # ---------------------------------------------------------------- results
    def _require(self) -> tuple[Tensor, Tensor, Tensor]:
        if self._counts is None or self._sums is None or self._sequences is None:
            raise ValueError("nothing accumulated yet: call update(pred, target, mask) first")
        return self._counts, self._sums, self._sequences

    @property
    def counts(self) -> ContingencyCounts:
        """The accumulated :class:`ContingencyCounts`, ``(T, K)`` int64 each."""
        counts, _, _ = self._require()
        return ContingencyCounts(*counts.unbind(0))

    @property
    def num_sequences(self) -> Tensor:
        """Number of sequences accumulated (int64 scalar tensor)."""
        return self._require()[2]

    def _score(self, name: str, per_frame: bool) -> Tensor:
        check_bool("per_frame", per_frame)
        scores: Tensor = getattr(self.counts, name)()
        return scores if per_frame else scores.mean(dim=0)

    def pod(self, per_frame: bool = False) -> Tensor:
        """POD, ``(K,)`` (mean over lead times) or ``(T, K)``."""
        return self._score("pod", per_frame)

    def far(self, per_frame: bool = False) -> Tensor:
        """FAR, ``(K,)`` or ``(T, K)``."""
        return self._score("far", per_frame)

    def csi(self, per_frame: bool = False) -> Tensor:
        """CSI, ``(K,)`` or ``(T, K)``."""
        return self._score("csi", per_frame)

    def gss(self, per_frame: bool = False) -> Tensor:
        """GSS, ``(K,)`` or ``(T, K)``."""
        return self._score("gss", per_frame)

    def hss(self, per_frame: bool = False) -> Tensor:
        """HSS, ``(K,)`` or ``(T, K)``."""
        return self._score("hss", per_frame)

    def _mean(self, name: str, per_frame: bool) -> Tensor:
        check_bool("per_frame", per_frame)
        _, sums, sequences = self._require()
        curve = sums[_SUMS.index(name)] / sequences
        return curve if per_frame else curve.mean()

    def mse(self, per_frame: bool = False) -> Tensor:
        """Masked MSE summed over a frame's pixels: scalar or ``(T,)``."""
        return self._mean("mse", per_frame)

    def mae(self, per_frame: bool = False) -> Tensor:
        """Masked MAE summed over a frame's pixels: scalar or ``(T,)``."""
        return self._mean("mae", per_frame)

    def balanced_mse(self, per_frame: bool = False) -> Tensor:
        """B-MSE: scalar or ``(T,)``."""
        return self._mean("balanced_mse", per_frame)

    def balanced_mae(self, per_frame: bool = False) -> Tensor:
        """B-MAE: scalar or ``(T,)``."""
        return self._mean("balanced_mae", per_frame)

    def gdl(self, per_frame: bool = False) -> Tensor:
        """Gradient difference loss: scalar or ``(T,)``."""
        return self._mean("gdl", per_frame)

    def compute(self, per_frame: bool = False) -> dict[str, Tensor]:
        """Every score and error: ``{"pod", "far", "csi", "gss", "hss", "mse", "mae",
        "balanced_mse", "balanced_mae", "gdl"}``, as tensors on the device."""
        out = {name: self._score(name, per_frame) for name in ("pod", "far", "csi", "gss", "hss")}
        out.update({name: self._mean(name, per_frame) for name in _SUMS})
        return out

    def table(self, *, digits: int = 4) -> str:
        """A Markdown table: CSI and HSS per lead time and threshold, plus the mean row.

        Reads the numbers (host sync)."""
        csi_t = self.csi(per_frame=True).cpu().tolist()
        hss_t = self.hss(per_frame=True).cpu().tolist()
        head = " | ".join(f"CSI ≥{t:g}" for t in self.thresholds)
        head += " | " + " | ".join(f"HSS ≥{t:g}" for t in self.thresholds)
        lines = [f"| lead | {head} |", "|---" * (1 + 2 * len(self.thresholds)) + "|"]
        fmt = f"{{:.{digits}f}}"
        for t, (c_row, h_row) in enumerate(zip(csi_t, hss_t, strict=True)):
            cells = " | ".join(fmt.format(v) for v in [*c_row, *h_row])
            lines.append(f"| {t + 1} | {cells} |")
        mean = [*self.csi().cpu().tolist(), *self.hss().cpu().tolist()]
        lines.append("| mean | " + " | ".join(fmt.format(v) for v in mean) + " |")
        return "\n".join(lines)

    def state_dict(self) -> dict[str, Any]:
        """The totals and settings (to save a partial evaluation and resume it)."""
        counts, sums, sequences = self._require()
        return {
            "thresholds": self.thresholds,
            "balancing_weights": self.balancing_weights,
            "clip": self.clip,
            "counts": counts,
            "sums": sums,
            "sequences": sequences,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` (thresholds and weights must match)."""
        if (
            tuple(state["thresholds"]) != self.thresholds
            or tuple(state["balancing_weights"]) != self.balancing_weights
        ):
            raise ValueError("state_dict was saved with other thresholds or balancing weights")
        counts = state["counts"]
        device = self.device or counts.device
        self._allocate(int(counts.shape[1]), device)
        assert self._counts is not None and self._sums is not None and self._sequences is not None
        self._counts.copy_(counts)
        self._sums.copy_(state["sums"])
        self._sequences.copy_(state["sequences"])

    def __repr__(self) -> str:
        return (
            f"NowcastEvaluator(thresholds={self.thresholds}, horizon={self.horizon}, "
            f"clip={self.clip}, device={self.device})"
        )
