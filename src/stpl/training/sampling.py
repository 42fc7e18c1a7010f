"""Sampling curricula and their masks: which steps read the true frame during training.

The predictor runs ``T - 1`` steps on ``frames: (B, T, C, H, W)``; step ``t`` predicts
frame ``t + 1``. For ``t >= context`` its input is
``mask[:, t-1] * frames[:, t] + (1 - mask[:, t-1]) * previous_prediction`` with
``mask: (B, T-2)``. This module builds that mask and the matching ``context`` for the
curricula of the reference code, on the device, with torch ops only (``docs/training.md``).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import Any, NamedTuple

import torch
from torch import Tensor

from stpl._validation import check_int, check_prob, check_real

__all__ = [
    "LinearScheduledSampling",
    "ReverseScheduledSampling",
    "SamplingMask",
    "SamplingSchedule",
    "ScheduledSampling",
    "inference_mask",
    "linear_sampling_eta",
    "reverse_scheduled_sampling_mask",
    "reverse_scheduled_sampling_probs",
    "scheduled_sampling_eta",
    "scheduled_sampling_mask",
]


def _int(name: str, value: object, minimum: int) -> int:
    return check_int(name, value, minimum=minimum)


def _check_lengths(batch_size: object, total_length: object, input_length: object) -> None:
    _int("batch_size", batch_size, 1)
    total = _int("total_length", total_length, 2)
    if _int("input_length", input_length, 1) >= total:
        raise ValueError(
            "input_length must satisfy 1 <= input_length < total_length; "
            f"got input_length={input_length}, total_length={total_length}"
        )


def _check_dtype(dtype: object) -> torch.dtype:
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ValueError(
            "dtype must be a floating torch.dtype (the model mixes mask * frame + "
            f"(1 - mask) * prediction); got {dtype!r}"
        )
    return dtype


def _resolve_device(
    device: torch.device | str | None, generator: torch.Generator | None
) -> torch.device | str | None:
    # A generator lives on one device and can only fill tensors there.
    if device is None and generator is not None:
        return generator.device
    return device


# --------------------------------------------------------------------------------------------
# probabilities at an iteration


def scheduled_sampling_eta(
    iteration: int,
    *,
    start: float = 1.0,
    rate: float = 2e-5,
    stop_iter: int | None = 50000,
) -> float:
    """PredRNN's scheduled-sampling probability of feeding the true frame.

    ``iteration`` is ``run.py``'s ``itr``: the first training iteration is 1. The reference
    starts from ``eta = start`` and, at every iteration *before* drawing the mask, does
    ``eta -= rate`` if ``itr < stop_iter`` else ``eta = 0``. So the mask of iteration
    ``itr`` is drawn with::

        eta(itr) = 0                              if itr >= stop_iter
                 = max(start - rate * itr, 0)     otherwise

    i.e. ``eta`` after ``itr`` decrements (``eta(0) = start``, before training). With the
    defaults (``run.py`` and OpenSTL's Moving MNIST configs) eta falls linearly from 1 and
    is exactly 0 from iteration 50,000 on. The closed form replaces the reference's
    repeated float subtraction (they differ by ~1e-10). OpenSTL calls the same update with
    a 0-based counter, so its ``k``-th mask uses ``eta(k)`` too, except that it reaches
    the forced 0 one call later.

    Args:
        iteration: the 1-based training iteration (number of decrements applied), ``>= 0``.
        start: ``sampling_start_value`` in ``[0, 1]``.
        rate: ``sampling_changing_rate`` per iteration, ``>= 0``.
        stop_iter: ``sampling_stop_iter``; ``None`` for no forced stop.

    Returns:
        The probability in ``[0, 1]`` that a forecast step reads the true frame.

    Raises:
        ValueError: if an argument is out of range.
    """
    iteration = _int("iteration", iteration, 0)
    start = check_prob("start", start)
    rate = check_real("rate", rate, low=0.0)
    if stop_iter is not None:
        stop_iter = _int("stop_iter", stop_iter, 0)
        if iteration >= stop_iter:
            return 0.0
    return max(start - rate * iteration, 0.0)


def linear_sampling_eta(iteration: int, *, total_iters: int, start: float = 1.0) -> float:
    """MoDeRNN's scheduled-sampling probability of feeding the true frame.

    The MoDeRNN trainer draws the mask with the current ``eta`` and *afterwards* does
    ``eta = max(eta - 1 / (total_iters / 2), 0)`` (``total_iters = epochs * epoch_size``).
    So with ``iteration`` = the number of iterations already completed (0 for the first)::

        eta(iteration) = max(start - iteration / (total_iters / 2), 0)

    a linear fall from ``start`` to 0 at half of training (iteration 40,000 of the
    released script's 80,000).

    Args:
        iteration: completed training iterations (0-based index of the current one), ``>= 0``.
        total_iters: the run's total number of iterations, ``>= 1``.
        start: the initial probability in ``[0, 1]`` (1.0 in the reference).

    Returns:
        The probability in ``[0, 1]``.

    Raises:
        ValueError: if an argument is out of range.
    """
    iteration = _int("iteration", iteration, 0)
    total_iters = _int("total_iters", total_iters, 1)
    start = check_prob("start", start)
    return max(start - iteration / (total_iters / 2), 0.0)


def reverse_scheduled_sampling_probs(
    iteration: int,
    *,
    s1: int = 25000,
    s2: int = 50000,
    alpha: float = 5000.0,
) -> tuple[float, float]:
    """PredRNN-V2's reverse-scheduled-sampling probabilities at ``run.py``'s ``itr``.

    ``r_eta`` is the probability that a *context* step reads the true frame, ``eta`` that a
    *forecast* step does::

        itr < s1:        r_eta = 0.5
                         eta   = 0.5
        s1 <= itr < s2:  r_eta = 1 - 0.5 * exp(-(itr - s1) / alpha)
                         eta   = 0.5 - 0.5 / (s2 - s1) * (itr - s1)
        itr >= s2:       r_eta = 1.0
                         eta   = 0.0

    ``run.py`` passes the 1-based iteration; OpenSTL passes a 0-based counter (one
    iteration earlier). Defaults are ``run.py``'s and OpenSTL's; the MNIST/BAIR V2 scripts
    use ``alpha=2500``, KTH ``s1=5000, s2=50000, alpha=2000``.

    Args:
        iteration: the training iteration, ``>= 0``.
        s1: ``r_sampling_step_1``, ``>= 0``.
        s2: ``r_sampling_step_2``, ``>= s1``.
        alpha: ``r_exp_alpha``, ``> 0``.

    Returns:
        ``(r_eta, eta)``, both in ``[0, 1]``.

    Raises:
        ValueError: if an argument is out of range.
    """
    iteration = _int("iteration", iteration, 0)
    s1, s2, alpha = _check_rss_hparams(s1, s2, alpha)
    if iteration < s1:
        return 0.5, 0.5
    if iteration < s2:
        r_eta = 1.0 - 0.5 * math.exp(-float(iteration - s1) / alpha)
        eta = 0.5 - (0.5 / (s2 - s1)) * (iteration - s1)
        return r_eta, eta
    return 1.0, 0.0


def _check_rss_hparams(s1: object, s2: object, alpha: object) -> tuple[int, int, float]:
    s1 = _int("s1", s1, 0)
    s2 = _int("s2", s2, 0)
    if s2 < s1:
        raise ValueError(f"s2 must be >= s1; got s1={s1}, s2={s2}")
    alpha = check_real("alpha", alpha, low=0.0)
    if alpha == 0.0:
        raise ValueError(f"alpha must be > 0; got {alpha!r}")
    return s1, s2, alpha


# --------------------------------------------------------------------------------------------
# masks


class SamplingMask(NamedTuple):
    """What to pass to the model: ``model(frames, context=context, mask=mask)``.

    Attributes:
        mask: ``(B, T-2)`` with entries 0 or 1 (1 feeds the true frame at step ``j + 1``),
            or ``None`` to feed the model's own predictions from ``context`` on.
        context: the number of leading steps that always read the true frame.
    """

    mask: Tensor | None
    context: int


def scheduled_sampling_mask(
    batch_size: int,
    total_length: int,
    input_length: int,
    eta: float,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Scheduled-sampling mask (PredRNN, MoDeRNN) in the predictor's ``(B, T-2)`` layout.

    Use with ``context=input_length``. Entry ``j`` belongs to step ``j + 1``; the entries
    ``j >= input_length - 1`` (steps ``t >= T_in``, the reference's ``T - T_in - 1``
    mask frames) are independent Bernoulli(``eta``) draws, one per (sample, frame) like the
    reference's all-ones/all-zeros frame slices. The first ``input_length - 1`` entries
    are 1 (those steps are teacher forced by ``context`` anyway), so the same mask also
    works with ``context=1``.

    Drawn on ``device`` as ``torch.rand(B, T - T_in - 1) < eta`` (float32 uniforms), so
    ``eta = 1`` gives exact ones and ``eta = 0`` exact zeros.

    Args:
        batch_size: B.
        total_length: T, frames per sequence (context plus forecast), ``>= 2``.
        input_length: T_in, context frames, ``1 <= T_in < T``.
        eta: probability in ``[0, 1]`` of feeding the true frame.
        device: where to build the mask; defaults to ``generator.device`` if a generator
            is given, else torch's default device.
        dtype: floating dtype of the mask.
        generator: random source, for reproducible masks (must live on ``device``).

    Returns:
        ``(B, T-2)`` tensor of 0s and 1s.

    Raises:
        ValueError: if a length, ``eta`` or ``dtype`` is invalid.
    """
    _check_lengths(batch_size, total_length, input_length)
    eta = check_prob("eta", eta)
    dtype = _check_dtype(dtype)
    device = _resolve_device(device, generator)
    free = total_length - input_length - 1
    draws = torch.rand((batch_size, free), generator=generator, device=device, dtype=torch.float32)
    teacher = torch.ones((batch_size, input_length - 1), device=draws.device, dtype=dtype)
    return torch.cat([teacher, (draws < eta).to(dtype)], dim=1)


def reverse_scheduled_sampling_mask(
    batch_size: int,
    total_length: int,
    input_length: int,
    r_eta: float,
    eta: float,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Reverse-scheduled-sampling mask (PredRNN-V2), ``(B, T-2)``; use with ``context=1``.

    Entry ``j`` belongs to step ``j + 1``: entries ``j < input_length - 1`` (context
    steps 1 .. T_in-1) are Bernoulli(``r_eta``), entries ``j >= input_length - 1``
    (forecast steps T_in .. T-2) Bernoulli(``eta``); one draw per (sample, frame). Drawn
    as ``torch.rand(B, T-2) < p_j`` (float32 uniforms).

    Args:
        batch_size: B.
        total_length: T, ``>= 2``.
        input_length: T_in, ``1 <= T_in < T``.
        r_eta: probability in ``[0, 1]`` of the true frame at context steps.
        eta: probability in ``[0, 1]`` of the true frame at forecast steps.
        device: where to build the mask; defaults to ``generator.device`` if a generator
            is given, else torch's default device.
        dtype: floating dtype of the mask.
        generator: random source, for reproducible masks (must live on ``device``).

    Returns:
        ``(B, T-2)`` tensor of 0s and 1s.

    Raises:
        ValueError: if a length, a probability or ``dtype`` is invalid.
    """
    _check_lengths(batch_size, total_length, input_length)
    r_eta = check_prob("r_eta", r_eta)
    eta = check_prob("eta", eta)
    dtype = _check_dtype(dtype)
    device = _resolve_device(device, generator)
    draws = torch.rand(
        (batch_size, total_length - 2), generator=generator, device=device, dtype=torch.float32
    )
    n_context = input_length - 1
    probs = torch.cat(
        [
            draws.new_full((n_context,), r_eta),
            draws.new_full((total_length - 2 - n_context,), eta),
        ]
    )
    return (draws < probs).to(dtype)


def inference_mask(input_length: int) -> SamplingMask:
    """Free-running evaluation: ``SamplingMask(mask=None, context=input_length)``.

    Equivalent to the references' test masks: PredRNN's all-zeros scheduled-sampling mask
    and PredRNN-V2's reverse mask whose first ``T_in - 1`` entries are 1 and the rest 0.

    Args:
        input_length: T_in, context frames, ``>= 1``.

    Returns:
        The mask and context to pass to the model.

    Raises:
        ValueError: if ``input_length < 1``.
    """
    return SamplingMask(None, _int("input_length", input_length, 1))


# --------------------------------------------------------------------------------------------
# schedule objects


class SamplingSchedule(ABC):
    """A sampling curriculum with an iteration counter that can be saved and resumed.

    ``iteration`` counts the completed :meth:`step` calls (0 at the start of training).
    Call :meth:`mask` once per training iteration, then :meth:`step`.
    :meth:`state_dict` holds the hyper-parameters and the counter, so loading it resumes
    the exact sequence of probabilities; masks also repeat if the ``torch.Generator``
    passed to :meth:`mask` is restored (``generator.get_state()`` / ``set_state``).
    """

    iteration: int

    def step(self) -> None:
        """Advance to the next training iteration."""
        self.iteration += 1

    @abstractmethod
    def mask(
        self,
        batch_size: int,
        total_length: int,
        input_length: int,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
        generator: torch.Generator | None = None,
    ) -> SamplingMask:
        """Draw this iteration's mask and the matching context.

        Args:
            batch_size: B.
            total_length: T, ``>= 2``.
            input_length: T_in, ``1 <= T_in < T``.
            device: where to build the mask (default: the generator's device, else torch's
                default device).
            dtype: floating dtype of the mask.
            generator: random source for reproducible masks.

        Returns:
            ``SamplingMask(mask (B, T-2), context)`` for ``model(frames, context=..., mask=...)``.
        """

    def inference_mask(self, input_length: int) -> SamplingMask:
        """Evaluation setting: ``SamplingMask(None, input_length)`` (see :func:`inference_mask`)."""
        return inference_mask(input_length)

    @abstractmethod
    def _hparams(self) -> dict[str, Any]: ...

    @abstractmethod
    def _set_hparams(self, hparams: Mapping[str, Any]) -> None: ...

    def state_dict(self) -> dict[str, Any]:
        """Hyper-parameters and ``iteration`` as plain Python numbers."""
        return {**self._hparams(), "iteration": self.iteration}

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned.

        Raises:
            ValueError: if keys are missing or unexpected, or a value is invalid.
        """
        expected = set(self.state_dict())
        got = set(state_dict)
        if got != expected:
            raise ValueError(
                f"state_dict of {type(self).__name__} must have keys {sorted(expected)}; "
                f"missing {sorted(expected - got)}, unexpected {sorted(got - expected)}"
            )
        iteration = _int("iteration", state_dict["iteration"], 0)
        self._set_hparams({k: v for k, v in state_dict.items() if k != "iteration"})
        self.iteration = iteration

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.state_dict().items())
        return f"{type(self).__name__}({args})"


class _ForecastSampling(SamplingSchedule):
    """Scheduled sampling on the forecast steps only (``context = T_in``), given ``eta``."""

    @property
    @abstractmethod
    def eta(self) -> float:
        """Probability of the true frame at forecast steps for the current iteration."""

    def mask(
        self,
        batch_size: int,
        total_length: int,
        input_length: int,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
        generator: torch.Generator | None = None,
    ) -> SamplingMask:
        """Draw this iteration's ``(B, T-2)`` mask; ``context = input_length``."""
        m = scheduled_sampling_mask(
            batch_size,
            total_length,
            input_length,
            self.eta,
            device=device,
            dtype=dtype,
            generator=generator,
        )
        return SamplingMask(m, input_length)


class ScheduledSampling(_ForecastSampling):
    """PredRNN's scheduled sampling (``run.py::schedule_sampling``), ``context = T_in``.

    At the iteration with counter ``iteration`` (0-based, completed :meth:`step` calls) the
    probability of the true frame at a forecast step is
    ``scheduled_sampling_eta(iteration + 1, ...)``: the reference decrements ``eta``
    before drawing the mask of its 1-based iteration ``itr = iteration + 1``. With the
    defaults eta is ``1 - 2e-5 * itr`` and exactly 0 from ``itr = 50000``.

    Args:
        start: ``sampling_start_value`` in ``[0, 1]``.
        rate: ``sampling_changing_rate``, ``>= 0``.
        stop_iter: ``sampling_stop_iter`` (``None``: no forced stop).
        iteration: initial counter (to start mid-schedule), ``>= 0``.

    Example:
        >>> sched = ScheduledSampling()
        >>> mask, context = sched.mask(8, 20, 10)   # mask (8, 18), context 10
        >>> sched.step()
    """

    def __init__(
        self,
        start: float = 1.0,
        rate: float = 2e-5,
        stop_iter: int | None = 50000,
        *,
        iteration: int = 0,
    ) -> None:
        self._set_hparams({"start": start, "rate": rate, "stop_iter": stop_iter})
        self.iteration = _int("iteration", iteration, 0)

    def _hparams(self) -> dict[str, Any]:
        return {"start": self.start, "rate": self.rate, "stop_iter": self.stop_iter}

    def _set_hparams(self, hparams: Mapping[str, Any]) -> None:
        self.start = check_prob("start", hparams["start"])
        self.rate = check_real("rate", hparams["rate"], low=0.0)
        stop_iter = hparams["stop_iter"]
        self.stop_iter = None if stop_iter is None else _int("stop_iter", stop_iter, 0)

    @property
    def eta(self) -> float:
        """Probability of the true frame at forecast steps for the current iteration."""
        return scheduled_sampling_eta(
            self.iteration + 1, start=self.start, rate=self.rate, stop_iter=self.stop_iter
        )


class LinearScheduledSampling(_ForecastSampling):
    """MoDeRNN's scheduled sampling: eta falls linearly to 0 at half of training.

    ``eta = linear_sampling_eta(iteration, total_iters=total_iters, start=start)`` with
    ``iteration`` the completed :meth:`step` calls: the MoDeRNN trainer draws the mask
    first and then decrements ``eta`` by ``1 / (total_iters / 2)``. Masks are the same
    layout as PredRNN's (``context = T_in``).

    Args:
        total_iters: total training iterations (``epochs * epoch_size``; 80,000 in the
            released Moving MNIST script), ``>= 1``.
        start: initial probability in ``[0, 1]``.
        iteration: initial counter, ``>= 0``.
    """

    def __init__(self, total_iters: int, *, start: float = 1.0, iteration: int = 0) -> None:
        self._set_hparams({"total_iters": total_iters, "start": start})
        self.iteration = _int("iteration", iteration, 0)

    def _hparams(self) -> dict[str, Any]:
        return {"total_iters": self.total_iters, "start": self.start}

    def _set_hparams(self, hparams: Mapping[str, Any]) -> None:
        self.total_iters = _int("total_iters", hparams["total_iters"], 1)
        self.start = check_prob("start", hparams["start"])

    @property
    def eta(self) -> float:
        """Probability of the true frame at forecast steps for the current iteration."""
        return linear_sampling_eta(self.iteration, total_iters=self.total_iters, start=self.start)


class ReverseScheduledSampling(SamplingSchedule):
    """PredRNN-V2's reverse scheduled sampling (``reserve_schedule_sampling_exp``), ``context = 1``.

    At counter ``iteration`` (completed :meth:`step` calls) the probabilities are
    ``reverse_scheduled_sampling_probs(iteration + 1, ...)``, matching ``run.py``'s
    1-based ``itr``.

    Args:
        s1: ``r_sampling_step_1``, ``>= 0``.
        s2: ``r_sampling_step_2``, ``>= s1``.
        alpha: ``r_exp_alpha``, ``> 0`` (2500 in the MNIST/BAIR V2 scripts).
        iteration: initial counter, ``>= 0``.
    """

    def __init__(
        self,
        s1: int = 25000,
        s2: int = 50000,
        alpha: float = 5000.0,
        *,
        iteration: int = 0,
    ) -> None:
        self._set_hparams({"s1": s1, "s2": s2, "alpha": alpha})
        self.iteration = _int("iteration", iteration, 0)

    def _hparams(self) -> dict[str, Any]:
        return {"s1": self.s1, "s2": self.s2, "alpha": self.alpha}

    def _set_hparams(self, hparams: Mapping[str, Any]) -> None:
        self.s1, self.s2, self.alpha = _check_rss_hparams(
            hparams["s1"], hparams["s2"], hparams["alpha"]
        )

    @property
    def probs(self) -> tuple[float, float]:
        """``(r_eta, eta)`` for the current iteration."""
        return reverse_scheduled_sampling_probs(
            self.iteration + 1, s1=self.s1, s2=self.s2, alpha=self.alpha
        )

    def mask(
        self,
        batch_size: int,
        total_length: int,
        input_length: int,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
        generator: torch.Generator | None = None,
    ) -> SamplingMask:
        """Draw this iteration's ``(B, T-2)`` mask; ``context = 1``."""
        r_eta, eta = self.probs
        m = reverse_scheduled_sampling_mask(
            batch_size,
            total_length,
            input_length,
            r_eta,
            eta,
            device=device,
            dtype=dtype,
            generator=generator,
        )
        return SamplingMask(m, 1)
