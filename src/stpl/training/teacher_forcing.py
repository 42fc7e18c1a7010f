"""PhyDNet's teacher forcing: all forecast steps of a batch read the true frames, or none do.

The authors' PhyDNet training (and OpenSTL's) flips one coin per batch: with probability
``ratio = max(0, 1 - 0.003 * epoch)`` every forecast step reads the true frame, otherwise
every one reads the model's previous prediction. In the predictor's terms that is
``context = T_in`` with a ``(B, T-2)`` mask of all ones or all zeros (the same numbers as
``context = T`` or no mask), so it is a :class:`~stpl.training.SamplingSchedule` like the
others and its masks go straight into ``model(frames, context=..., mask=...)``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from stpl._validation import check_int, check_prob, check_real
from stpl.training.sampling import SamplingMask, SamplingSchedule

__all__ = ["BatchTeacherForcing", "teacher_forcing_ratio"]


def teacher_forcing_ratio(epoch: int, *, start: float = 1.0, rate: float = 0.003) -> float:
    """PhyDNet's teacher-forcing probability of an epoch: ``max(0, start - rate * epoch)``.

    Args:
        epoch: the 0-based epoch (the reference's ``epoch``), ``>= 0``.
        start: probability at epoch 0, in ``[0, 1]``.
        rate: decrease per epoch, ``>= 0`` (0.003: teacher forcing ends after 334 epochs).

    Returns:
        The probability in ``[0, 1]`` that a batch is teacher forced.
    """
    epoch = check_int("epoch", epoch, minimum=0)
    start = check_prob("start", start)
    rate = check_real("rate", rate, low=0.0)
    return max(0.0, start - rate * epoch)


class BatchTeacherForcing(SamplingSchedule):
    """PhyDNet's per-batch teacher forcing with a ratio that decays per **epoch**.

    ``iteration`` counts epochs here: call :meth:`step` once per epoch (the reference
    computes the ratio once per epoch), :meth:`mask` once per batch. The mask has
    ``context = input_length`` and is all ones (teacher forcing) with probability
    :attr:`ratio`, else ones for the context steps and zeros after (free running); the
    coin is drawn on ``device`` with ``torch.rand``, so nothing waits for the host.

    Args:
        start: ratio at epoch 0, in ``[0, 1]``.
        rate: decrease per epoch, ``>= 0``.
        iteration: initial epoch counter, ``>= 0``.

    Example:
        >>> sched = BatchTeacherForcing()
        >>> for epoch in range(epochs):
        ...     for frames in loader:
        ...         mask, context = sched.mask(frames.shape[0], frames.shape[1], 10)
        ...         out = model(frames, context=context, mask=mask)
        ...     sched.step()
    """

    def __init__(self, start: float = 1.0, rate: float = 0.003, *, iteration: int = 0) -> None:
        self._set_hparams({"start": start, "rate": rate})
        self.iteration = check_int("iteration", iteration, minimum=0)

    def _hparams(self) -> dict[str, Any]:
        return {"start": self.start, "rate": self.rate}

    def _set_hparams(self, hparams: Mapping[str, Any]) -> None:
        self.start = check_prob("start", hparams["start"])
        self.rate = check_real("rate", hparams["rate"], low=0.0)

    @property
    def ratio(self) -> float:
        """Probability that a batch of the current epoch is teacher forced."""
        return teacher_forcing_ratio(self.iteration, start=self.start, rate=self.rate)

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
        """Draw this batch's ``(B, T-2)`` mask (one coin for all samples); ``context = T_in``."""
        batch_size = check_int("batch_size", batch_size, minimum=1)
        total_length = check_int("total_length", total_length, minimum=2)
        input_length = check_int("input_length", input_length, minimum=1)
        if input_length >= total_length:
            raise ValueError(
                "input_length must satisfy 1 <= input_length < total_length; "
                f"got input_length={input_length}, total_length={total_length}"
            )
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            raise ValueError(f"dtype must be a floating torch.dtype; got {dtype!r}")
        if device is None and generator is not None:
            device = generator.device
        coin = torch.rand((1, 1), generator=generator, device=device) < self.ratio
        teacher = torch.ones((batch_size, input_length - 1), device=coin.device, dtype=dtype)
        forecast = coin.to(dtype).expand(batch_size, total_length - input_length - 1)
        return SamplingMask(torch.cat([teacher, forecast], dim=1), input_length)
