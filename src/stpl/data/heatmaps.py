"""Heatmap targets of object positions: MSPred's Moving MNIST targets of levels 1 and 2.

MSPred (AIS-Bonn/MSPred ``data/heatmaps.py``, ``data/moving_mnist.py``) trains its upper
levels on maps of where the digits are: per digit, a Gaussian bump of peak 1 centred on the
digit's centre pixel, cut to a square support, summed over the digits (overlapping digits
reach 2). Level 1 uses sigma 2 (a 15 x 15 support, the "centre-point heatmap"), level 2
sigma 5 (33 x 33, the "blob"). The generator of :class:`~stpl.data.MovingDigits` knows the
positions, so the targets need no download and no detection.

The support of a centre ``(x, y)`` (pixels, integers) is the pixels ``x + k - 3 sigma - 1``
for ``k = 0 .. ceil(6 sigma + 3) - 1`` (the same in y), clipped to the canvas, with value
``exp(-((k - 3 sigma - 1)^2 + (l - 3 sigma - 1)^2) / (2 sigma^2))``, as the reference's
``SquareHeatmapGenerator`` computes it (a centre on row or column 0 draws nothing there).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import torch
from numpy.typing import NDArray
from torch import Tensor
from torch.utils.data import Dataset

from stpl._validation import check_int, check_positive_int, check_real
from stpl.data.moving_digits import MovingDigits

__all__ = [
    "MSPRED_SIGMAS",
    "HeatmapSample",
    "MovingDigitsHeatmaps",
    "digit_centers",
    "gaussian_heatmaps",
    "moving_digits_heatmaps",
]

MSPRED_SIGMAS = (2.0, 5.0)
"""Sigmas of MSPred's Moving MNIST targets: level 1 (centre points), level 2 (blobs)."""


def _axis_weights(centers: NDArray[np.int64], size: int, sigma: float) -> NDArray[np.float64]:
    """``(N,)`` centre coordinates -> ``(N, size)`` 1-D Gaussian weights on their supports."""
    x0 = 3.0 * sigma + 1.0
    length = math.ceil(6.0 * sigma + 3.0)
    pixels = np.arange(size)[None, :]
    ul = np.trunc(centers[:, None] - x0).astype(np.int64)
    br = np.trunc(centers[:, None] + 3.0 * sigma + 2.0).astype(np.int64)
    k = pixels - ul
    inside = (k >= 0) & (k < length) & (pixels < br)
    return np.where(inside, np.exp(-((k - x0) ** 2) / (2.0 * sigma**2)), 0.0)


def gaussian_heatmaps(
    centers: Tensor | NDArray[np.generic], height: int, width: int, sigma: float
) -> Tensor:
    """Sum over points of truncated Gaussian bumps (MSPred's heatmaps).

    Args:
        centers: ``(..., N, 2)`` integer pixel coordinates ``(x, y)`` (column, row).
        height, width: the canvas.
        sigma: the bumps' standard deviation in pixels.

    Returns:
        ``(..., H, W)`` float32: the sum over the N points.

    Raises:
        ValueError: a centre outside the canvas, or a malformed argument.
    """
    height = check_positive_int("height", height)
    width = check_positive_int("width", width)
    sigma = check_real("sigma", sigma, low=1e-6)
    arr = centers.detach().cpu().numpy() if isinstance(centers, Tensor) else np.asarray(centers)
    if arr.ndim < 2 or arr.shape[-1] != 2 or not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(
            f"centers must be integer (..., N, 2) pixel coordinates (x, y); got shape "
            f"{arr.shape}, dtype {arr.dtype}"
        )
    lead = arr.shape[:-2]
    flat = arr.reshape(-1, 2).astype(np.int64)
    xs, ys = flat[:, 0], flat[:, 1]
    if ((xs < 0) | (xs >= width) | (ys < 0) | (ys >= height)).any():
        raise ValueError(
            f"centers must lie on the {height}x{width} canvas (0 <= x < {width}, 0 <= y < "
            f"{height}); got {flat[(xs < 0) | (xs >= width) | (ys < 0) | (ys >= height)].tolist()}"
        )
    wx = _axis_weights(xs, width, sigma)
    wy = _axis_weights(ys, height, sigma)
    skip = (xs == 0) | (ys == 0)  # the reference draws nothing for a point on row/column 0
    maps = np.einsum("ni,nj->nij", wy, wx)
    maps[skip] = 0.0
    n_points = arr.shape[-2]
    summed = maps.reshape(*lead, n_points, height, width).sum(axis=-3)
    return torch.from_numpy(summed.astype(np.float32))


def digit_centers(positions: NDArray[np.integer], digit_size: int) -> NDArray[np.int64]:
    """Centre pixels ``(x, y)`` of digits from their top-left pixels ``(row, column)``.

    Args:
        positions: ``(..., 2)`` top-left pixels ``(row, col)`` (``SequenceInfo.positions``).
        digit_size: side of a digit image.

    Returns:
        ``(..., 2)`` int64 ``(col + digit_size // 2, row + digit_size // 2)`` (MSPred's
        ``int(col + digit_size / 2)``).
    """
    pos = np.asarray(positions).astype(np.int64)
    half = check_positive_int("digit_size", digit_size) // 2
    return np.stack([pos[..., 1] + half, pos[..., 0] + half], axis=-1)


def moving_digits_heatmaps(
    dataset: MovingDigits, index: int, sigmas: Sequence[float] = MSPRED_SIGMAS
) -> tuple[Tensor, ...]:
    """The heatmap targets of ``dataset[index]``, one ``(T, 1, H, W)`` tensor per sigma."""
    if not isinstance(dataset, MovingDigits):
        raise TypeError(f"dataset must be a MovingDigits; got {type(dataset).__name__}")
    info = dataset.describe(index)
    centers = digit_centers(info.positions, dataset.digit_size)  # (T, D, 2)
    size = dataset.image_size
    return tuple(gaussian_heatmaps(centers, size, size, s).unsqueeze(1) for s in sigmas)


class HeatmapSample(NamedTuple):
    """One sequence and its heatmap targets (``DataLoader`` batches it field by field).

    Attributes:
        frames: ``(T, C, H, W)`` in [0, 1].
        heatmaps: one ``(T, 1, H, W)`` tensor per sigma (level 1, level 2, ...).
    """

    frames: Tensor
    heatmaps: tuple[Tensor, ...]


class MovingDigitsHeatmaps(Dataset[HeatmapSample]):
    """:class:`~stpl.data.MovingDigits` sequences with MSPred's heatmap targets.

    Args:
        dataset: the sequences.
        sigmas: one heatmap per sigma (default MSPred's (2, 5): levels 1 and 2).
        channels: image channels of the frames (MSPred's Moving MNIST repeats the grey image
            over 3 channels).
    """

    def __init__(
        self,
        dataset: MovingDigits,
        *,
        sigmas: Sequence[float] = MSPRED_SIGMAS,
        channels: int = 1,
    ) -> None:
        if not isinstance(dataset, MovingDigits):
            raise TypeError(f"dataset must be a MovingDigits; got {type(dataset).__name__}")
        self.dataset = dataset
        self.sigmas = tuple(check_real(f"sigmas[{i}]", s, low=1e-6) for i, s in enumerate(sigmas))
        self.channels = check_int("channels", channels, minimum=1)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> HeatmapSample:
        frames = self.dataset[index]
        if self.channels != frames.shape[1]:
            frames = frames.expand(-1, self.channels, -1, -1).contiguous()
        return HeatmapSample(frames, moving_digits_heatmaps(self.dataset, index, self.sigmas))

    def __repr__(self) -> str:
        return (
            f"MovingDigitsHeatmaps({self.dataset!r}, sigmas={self.sigmas}, "
            f"channels={self.channels})"
        )
