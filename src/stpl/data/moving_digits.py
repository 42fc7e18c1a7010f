"""Moving digits: a seeded, download-free Moving MNIST in the standard convention.

Each sequence is a ``image_size x image_size`` canvas (64 x 64) on which ``num_digits`` (2)
digit images of ``digit_size x digit_size`` (28 x 28) move at constant speed and bounce off
the borders; overlapping digits combine by the pixel-wise maximum, as in Moving MNIST
(Srivastava et al., 2015) and the generators of the MoDeRNN / PredRNN / MSPred code.

Trajectory of one digit, in the Moving MNIST generator's convention: a position
``(x, y)`` uniform in [0, 1)^2 and a direction ``theta`` uniform in [0, 2 pi); at every
frame the position moves by ``step_length * (cos theta, sin theta)`` *before* the frame is
drawn; a coordinate that leaves [0, 1] is clamped to the border and its velocity reversed.
The digit's top-left pixel is ``int((image_size - digit_size) * (y, x))`` (truncation):
with the defaults the digits move by 3.6 pixels a frame and always stay entirely inside
the canvas.

The glyphs are drawn procedurally (:func:`stpl.data.render_digit`) with a random pen,
slant and rotation per sample, or taken from real MNIST digits the user passes in
(:func:`stpl.data.load_idx_digits`).
"""

from __future__ import annotations

import operator
from typing import NamedTuple

import numpy as np
import torch
from numpy.typing import NDArray
from torch import Tensor
from torch.utils.data import Dataset

from stpl._validation import check_positive_int
from stpl.data.glyphs import render_digit

__all__ = ["MovingDigits", "SequenceInfo"]


class SequenceInfo(NamedTuple):
    """What a :class:`MovingDigits` sequence is made of.

    Attributes:
        labels: ``(num_digits,)`` int64: the digit class 0-9 of each procedural glyph, or
            the index into ``digits`` when real digit images were given.
        positions: ``(T, num_digits, 2)`` int64: the top-left pixel ``(row, column)`` of
            each digit in each frame.
        velocities: ``(T, num_digits, 2)`` float64: the velocity ``(v_y, v_x)`` (unit
            vector, reversed at each bounce) after each frame's move.
    """

    labels: NDArray[np.int64]
    positions: NDArray[np.int64]
    velocities: NDArray[np.float64]




def _as_digit_bank(digits: object, digit_size: int) -> NDArray[np.float32]:
    """``(N, S, S)`` uint8 (0..255) or floating (0..1) images -> float32 in [0, 1]."""
    arr = digits.detach().cpu().numpy() if isinstance(digits, Tensor) else np.asarray(digits)
    if arr.ndim != 3 or arr.shape[0] == 0:
        raise ValueError(
            f"digits must be (N, digit_size, digit_size) images with N >= 1; got shape {arr.shape}"
        )
    if arr.shape[1:] != (digit_size, digit_size):
        raise ValueError(
            f"digits must be (N, {digit_size}, {digit_size}) to match digit_size={digit_size}; "
            f"got shape {arr.shape} (pass digit_size={arr.shape[1]} for square digits)"
        )
    if arr.dtype == np.uint8:
        return arr.astype(np.float32) / 255.0
    if np.issubdtype(arr.dtype, np.floating):
        return np.clip(arr.astype(np.float32), 0.0, 1.0)
    raise ValueError(f"digits must be uint8 (0..255) or floating (0..1); got dtype {arr.dtype}")


class MovingDigits(Dataset[Tensor]):
    """Deterministic Moving-MNIST-style sequences generated on the fly, no download.

    ``dataset[i]`` depends only on ``(seed, i)`` (its random generator is seeded with
    ``numpy.random.SeedSequence([seed, i])``), so it is the same in every worker process and
    in any order of access, for a given numpy version.

    Args:
        num_sequences: length of the dataset.
        seq_len: frames per sequence T (10 context + 10 future by default).
        image_size: canvas side H = W.
        num_digits: digits per sequence.
        digit_size: side of a digit image.
        seed: base seed (int >= 0); different seeds give independent datasets.
        digits: optional real digit images, ``(N, digit_size, digit_size)`` uint8 (0..255) or
            float (0..1), numpy or torch (e.g. from :func:`stpl.data.load_idx_digits`); each
            sequence picks its digits uniformly from them. ``None`` draws procedural glyphs.
        step_length: distance moved per frame in units of the free range
            ``image_size - digit_size`` (0.1 as Moving MNIST).

    Yields:
        ``(T, 1, H, W)`` float32 in [0, 1].

    Example:
        >>> ds = MovingDigits(100, seed=0)
        >>> ds[0].shape
        torch.Size([20, 1, 64, 64])
    """

    def __init__(
        self,
        num_sequences: int,
        *,
        seq_len: int = 20,
        image_size: int = 64,
        num_digits: int = 2,
        digit_size: int = 28,
        seed: int = 0,
        digits: Tensor | NDArray[np.generic] | None = None,
        step_length: float = 0.1,
    ) -> None:
        self.num_sequences = check_positive_int("num_sequences", num_sequences)
        self.seq_len = check_positive_int("seq_len", seq_len)
        self.image_size = check_positive_int("image_size", image_size)
        self.num_digits = check_positive_int("num_digits", num_digits)
        self.digit_size = check_positive_int("digit_size", digit_size)
        if self.digit_size > self.image_size:
            raise ValueError(
                f"digit_size must be <= image_size={self.image_size}; got {self.digit_size}"
            )
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ValueError(f"seed must be an int >= 0; got {seed!r}")
        self.seed = int(seed)
        if (
            isinstance(step_length, bool)
            or not isinstance(step_length, (int, float))
            or not step_length >= 0
        ):
            raise ValueError(f"step_length must be a number >= 0; got {step_length!r}")
        self.step_length = float(step_length)
        self.digits = None if digits is None else _as_digit_bank(digits, self.digit_size)

    def __len__(self) -> int:
        return self.num_sequences

    def _index(self, index: int) -> int:
        i = operator.index(index)
        if i < 0:
            i += self.num_sequences
        if not 0 <= i < self.num_sequences:
            raise IndexError(
                f"index {index} is out of range for MovingDigits of length {self.num_sequences}"
            )
        return i

    def _generators(self, index: int) -> tuple[np.random.Generator, np.random.Generator]:
        motion, glyphs = np.random.SeedSequence([self.seed, self._index(index)]).spawn(2)
        return np.random.default_rng(motion), np.random.default_rng(glyphs)

    def _trajectories(
        self, rng: np.random.Generator
    ) -> tuple[NDArray[np.int64], NDArray[np.float64]]:
        """Top-left pixels ``(T, D, 2)`` and velocities ``(T, D, 2)``, both ``(row, col)``."""
        t_len, d = self.seq_len, self.num_digits
        pos = rng.random((d, 2))  # (y, x) in [0, 1)
        theta = rng.random(d) * 2.0 * np.pi
        vel = np.stack([np.sin(theta), np.cos(theta)], axis=1)
        positions = np.empty((t_len, d, 2))
        velocities = np.empty((t_len, d, 2))
        for t in range(t_len):
            pos = pos + self.step_length * vel
            low, high = pos <= 0.0, pos >= 1.0
            pos = np.clip(pos, 0.0, 1.0)
            vel = np.where(low | high, -vel, vel)
            positions[t], velocities[t] = pos, vel
        free = self.image_size - self.digit_size
        return (free * positions).astype(np.int64), velocities

    def describe(self, index: int) -> SequenceInfo:
        """The labels and trajectories behind ``self[index]`` (see :class:`SequenceInfo`)."""
        motion, _ = self._generators(index)
        labels = self._labels(motion)
        positions, velocities = self._trajectories(motion)
        return SequenceInfo(labels, positions, velocities)

    def _labels(self, rng: np.random.Generator) -> NDArray[np.int64]:
        high = 10 if self.digits is None else self.digits.shape[0]
        return rng.integers(0, high, size=self.num_digits).astype(np.int64)

    def __getitem__(self, index: int) -> Tensor:
        """Sequence ``index``: ``(T, 1, H, W)`` float32 in [0, 1]."""
        motion, glyph_rng = self._generators(index)
        labels = self._labels(motion)
        positions, _ = self._trajectories(motion)
        s = self.digit_size
        canvas = np.zeros((self.seq_len, self.image_size, self.image_size), dtype=np.float32)
        for k, label in enumerate(labels):
            if self.digits is None:
                img = render_digit(int(label), size=s, rng=glyph_rng)
            else:
                img = self.digits[label]
            for t in range(self.seq_len):
                r, c = positions[t, k]
                region = canvas[t, r : r + s, c : c + s]
                np.maximum(region, img, out=region)
        return torch.from_numpy(canvas).unsqueeze(1)

    def as_tensor(self) -> Tensor:
        """All sequences stacked: ``(num_sequences, T, 1, H, W)`` float32."""
        return torch.stack([self[i] for i in range(self.num_sequences)])

    def __repr__(self) -> str:
        source = "procedural glyphs" if self.digits is None else f"{len(self.digits)} digit images"
        return (
            f"MovingDigits(num_sequences={self.num_sequences}, seq_len={self.seq_len}, "
            f"image_size={self.image_size}, num_digits={self.num_digits}, "
            f"digit_size={self.digit_size}, seed={self.seed}, step_length={self.step_length}, "
            f"digits={source})"
        )
