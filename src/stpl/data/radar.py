"""Radar echoes: a seeded synthetic generator (no download) and a reader for HKO-7 folders.

:class:`RadarEchoes` draws sequences of radar reflectivity in HKO-7's pixel units
(``pixel = (dBZ + 10) / 70``): convective rain cells that are advected by a common steering
wind (plus their own drift), grow, peak and decay over a life cycle, over an optional weak
stratiform background with a textured field; reflectivities add in linear Z
(``Z = 10^(dBZ / 10)``), as echoes of separate cells do.

:class:`HKO7Frames` reads the HKO-7 benchmark's own files when you have them:
``root/YYYY/MM/DD/RADyymmddHHMM00.png`` radar frames every 6 minutes, and optionally the
``.mask`` files (zlib-compressed 480 x 480 bools) of the same tree.
"""

from __future__ import annotations

import datetime as dt
import operator
import os
import re
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from numpy.typing import NDArray
from torch import Tensor
from torch.utils.data import Dataset

from stpl._validation import check_bool, check_int, check_positive_int, check_real

__all__ = ["HKO7Frames", "RadarClip", "RadarEchoes", "RadarSequenceInfo"]

PathLike = str | os.PathLike[str]


class RadarSequenceInfo(NamedTuple):
    """What a :class:`RadarEchoes` sequence is made of.

    Attributes:
        centers: ``(T, N, 2)`` float64, ``(row, column)`` of each cell's centre per frame.
        peak_dbz: ``(T, N)`` float64, each cell's peak reflectivity per frame (dBZ; -inf
            while the cell does not exist).
        wind: ``(2,)`` float64, the steering wind ``(v_row, v_col)`` in pixels per frame.
    """

    centers: NDArray[np.float64]
    peak_dbz: NDArray[np.float64]
    wind: NDArray[np.float64]


def _range(name: str, value: object, low: float = 0.0) -> tuple[float, float]:
    if (
        not isinstance(value, Sequence)
        or len(value) != 2
        or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
        or not low <= value[0] <= value[1]
    ):
        raise ValueError(
            f"{name} must be a (low, high) pair with {low} <= low <= high; got {value!r}"
        )
    return float(value[0]), float(value[1])


def _size(name: str, value: object) -> tuple[int, int]:
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        side = check_positive_int(name, value)
        return side, side
    if isinstance(value, Sequence) and len(value) == 2:
        return check_positive_int(name, value[0]), check_positive_int(name, value[1])
    raise ValueError(f"{name} must be an int or (H, W); got {value!r}")


class RadarEchoes(Dataset[Tensor]):
    """Seeded synthetic radar-echo sequences in HKO-7 pixel units, generated on the fly.

    ``dataset[i]`` depends only on ``(seed, i)`` (``numpy.random.SeedSequence([seed, i])``),
    so it is identical in every worker process and order of access.

    Each sequence: a steering wind of ``speed`` pixels per frame in a random direction;
    ``num_cells`` convective cells, each an elliptic Gaussian echo (random size, aspect and
    orientation) whose centre moves with the wind plus its own drift (``drift`` times the
    wind speed), and whose peak reflectivity follows a life cycle ``peak_dbz * sin(pi a)``
    in dBZ over its age ``a`` in [0, 1] (born before, during or after the window; it grows,
    peaks and decays; its size grows with it); an optional stratiform background
    (``stratiform_dbz``) textured by a smooth random field advected with the wind.
    Reflectivity is summed in linear Z; echoes weaker than ``min_dbz`` are no echo
    (pixel 0); the rest is ``(dBZ + 10) / 70`` clipped to [0, 1] and, with ``quantize``,
    rounded to 8-bit levels like the HKO-7 PNG frames.

    Args:
        num_sequences: length of the dataset.
        seq_len: frames per sequence T (HKO-7: 5 in + 20 out).
        image_size: ``H = W`` or ``(H, W)`` (sides that are multiples of 30 fit the HKO-7
            strides of :class:`stpl.EncoderForecaster`).
        num_cells: ``(low, high)`` number of convective cells per sequence.
        peak_dbz: ``(low, high)`` of a cell's peak reflectivity (dBZ).
        cell_size: ``(low, high)`` of a cell's standard deviation along its major axis, as a
            fraction of the image side.
        lifetime: ``(low, high)`` of a cell's lifetime in frames.
        speed: ``(low, high)`` of the steering wind in pixels per frame.
        drift: a cell's own velocity, as a fraction of the wind speed (random direction).
        stratiform_dbz: ``(low, high)`` of the background's reflectivity; ``None`` for none.
        min_dbz: echoes below this are no echo (pixel 0).
        quantize: round pixels to 8-bit levels.
        seed: base seed (int >= 0).

    Yields:
        ``(T, 1, H, W)`` float32 pixels in [0, 1].

    Example:
        >>> ds = RadarEchoes(100, seq_len=25, image_size=60)
        >>> ds[0].shape
        torch.Size([25, 1, 60, 60])
    """

    def __init__(
        self,
        num_sequences: int,
        *,
        seq_len: int = 25,
        image_size: int | tuple[int, int] = 120,
        num_cells: tuple[int, int] = (3, 8),
        peak_dbz: tuple[float, float] = (30.0, 58.0),
        cell_size: tuple[float, float] = (0.04, 0.12),
        lifetime: tuple[float, float] = (10.0, 40.0),
        speed: tuple[float, float] = (0.5, 2.5),
        drift: float = 0.3,
        stratiform_dbz: tuple[float, float] | None = (10.0, 25.0),
        min_dbz: float = 0.0,
        quantize: bool = True,
        seed: int = 0,
    ) -> None:
        self.num_sequences = check_positive_int("num_sequences", num_sequences)
        self.seq_len = check_positive_int("seq_len", seq_len)
        self.image_size = _size("image_size", image_size)
        lo, hi = _range("num_cells", num_cells)
        self.num_cells = (check_int("num_cells", int(lo), minimum=0), int(hi))
        self.peak_dbz = _range("peak_dbz", peak_dbz, low=-10.0)
        self.cell_size = _range("cell_size", cell_size)
        if self.cell_size[0] <= 0:
            raise ValueError(f"cell_size must be > 0; got {cell_size!r}")
        self.lifetime = _range("lifetime", lifetime, low=1.0)
        self.speed = _range("speed", speed)
        self.drift = check_real("drift", drift, low=0.0)
        self.stratiform_dbz = (
            None if stratiform_dbz is None else _range("stratiform_dbz", stratiform_dbz, -10.0)
        )
        self.min_dbz = check_real("min_dbz", min_dbz)
        self.quantize = check_bool("quantize", quantize)
        self.seed = check_int("seed", seed, minimum=0)

    def __len__(self) -> int:
        return self.num_sequences

    def _rng(self, index: int) -> np.random.Generator:
        i = operator.index(index)
        if i < 0:
            i += self.num_sequences
        if not 0 <= i < self.num_sequences:
            raise IndexError(
                f"index {index} is out of range for RadarEchoes of length {self.num_sequences}"
            )
        return np.random.default_rng(np.random.SeedSequence([self.seed, i]))

    def _draw(self, rng: np.random.Generator) -> dict[str, Any]:
        h, w = self.image_size
        t = np.arange(self.seq_len, dtype=np.float64)
        side = float(min(h, w))
        angle = rng.uniform(0, 2 * np.pi)
        speed = rng.uniform(*self.speed)
        wind = speed * np.array([np.sin(angle), np.cos(angle)])
        n = int(rng.integers(self.num_cells[0], self.num_cells[1] + 1))
        # cells start anywhere upwind of the window's far side, so they cross it
        start = np.stack(
            [rng.uniform(-0.1 * h, 1.1 * h, n), rng.uniform(-0.1 * w, 1.1 * w, n)], axis=1
        ) - wind * self.seq_len * rng.uniform(0.0, 0.6, (n, 1))
        own = self.drift * speed * rng.normal(size=(n, 2)) / np.sqrt(2)
        centers = start[None] + t[:, None, None] * (wind + own)[None]  # (T, N, 2)
        life = rng.uniform(*self.lifetime, n)
        birth = rng.uniform(-0.8 * life, self.seq_len - 0.2 * life)
        age = (t[:, None] - birth[None]) / life[None]  # (T, N), in [0, 1] while alive
        alive = (age >= 0) & (age <= 1)
        phase = np.sin(np.pi * np.clip(age, 0.0, 1.0))
        peak = rng.uniform(*self.peak_dbz, n)
        dbz = np.where(alive, peak[None] * np.maximum(phase, 1e-6) ** 0.5, -np.inf)
        sigma = rng.uniform(*self.cell_size, n) * side
        aspect = rng.uniform(0.4, 1.0, n)
        theta = rng.uniform(0, np.pi, n)
        growth = 0.5 + 0.5 * phase  # the cell spreads as it matures
        return {
            "centers": centers,
            "dbz": dbz,
            "sigma": sigma,
            "aspect": aspect,
            "theta": theta,
            "growth": growth,
            "wind": wind,
            "texture": (rng.normal(size=(8, 8)), rng.normal(size=(16, 16))),
            "stratiform": (
                None
                if self.stratiform_dbz is None
                else (
                    rng.uniform(*self.stratiform_dbz),
                    rng.uniform(0.2, 0.6),
                    rng.uniform(0, 1, 2),
                )
            ),
        }

    def describe(self, index: int) -> RadarSequenceInfo:
        """The cells and wind behind ``self[index]`` (see :class:`RadarSequenceInfo`)."""
        d = self._draw(self._rng(index))
        return RadarSequenceInfo(d["centers"], d["dbz"], d["wind"])

    def _texture(self, d: dict[str, Any], t: int) -> NDArray[np.float64]:
        """A smooth random field in (-1, 1) advected with the wind: two octaves of value
        noise on periodic 8 x 8 and 16 x 16 lattices, smoothstep-interpolated."""
        h, w = self.image_size
        field = np.zeros((h, w))
        for octave, amplitude in ((0, 1.0), (1, 0.5)):
            coarse = d["texture"][octave]
            n = coarse.shape[0]
            rows = (np.arange(h) - d["wind"][0] * t) / max(h, w) * (n - 1)
            cols = (np.arange(w) - d["wind"][1] * t) / max(h, w) * (n - 1)
            r0, c0 = np.floor(rows).astype(int), np.floor(cols).astype(int)
            fr, fc = rows - r0, cols - c0
            fr = (fr * fr * (3 - 2 * fr))[:, None]
            fc = (fc * fc * (3 - 2 * fc))[None, :]
            r0, c0 = r0 % n, c0 % n
            r1, c1 = (r0 + 1) % n, (c0 + 1) % n
            field += amplitude * (
                coarse[r0][:, c0] * (1 - fr) * (1 - fc)
                + coarse[r1][:, c0] * fr * (1 - fc)
                + coarse[r0][:, c1] * (1 - fr) * fc
                + coarse[r1][:, c1] * fr * fc
            )
        out: NDArray[np.float64] = np.tanh(field)
        return out

    def __getitem__(self, index: int) -> Tensor:
        """Sequence ``index``: ``(T, 1, H, W)`` float32 pixels in [0, 1]."""
        d = self._draw(self._rng(index))
        h, w = self.image_size
        yy, xx = np.meshgrid(
            np.arange(h, dtype=np.float64), np.arange(w, dtype=np.float64), indexing="ij"
        )
        cos, sin = np.cos(d["theta"]), np.sin(d["theta"])
        frames = np.empty((self.seq_len, h, w), dtype=np.float32)
        for t in range(self.seq_len):
            z = np.zeros((h, w))
            texture = self._texture(d, t)
            for k in np.flatnonzero(np.isfinite(d["dbz"][t])):
                dy = yy - d["centers"][t, k, 0]
                dx = xx - d["centers"][t, k, 1]
                major = cos[k] * dx + sin[k] * dy
                minor = -sin[k] * dx + cos[k] * dy
                s = d["sigma"][k] * d["growth"][t, k]
                q = (major / s) ** 2 + (minor / (s * d["aspect"][k])) ** 2
                z += 10.0 ** (d["dbz"][t, k] / 10.0) * np.exp(-0.5 * q)
            if d["stratiform"] is not None:
                level, cover, _ = d["stratiform"]
                weight = 1.0 / (1.0 + np.exp(-6.0 * (texture - (1.0 - 2.0 * cover))))
                z += 10.0 ** (level / 10.0) * weight
            with np.errstate(divide="ignore"):
                dbz = 10.0 * np.log10(z) + 2.0 * texture * (z > 0)
            pixel = np.where(dbz >= self.min_dbz, np.clip((dbz + 10.0) / 70.0, 0.0, 1.0), 0.0)
            if self.quantize:
                pixel = np.round(pixel * 255.0) / 255.0
            frames[t] = pixel
        return torch.from_numpy(frames).unsqueeze(1)

    def __repr__(self) -> str:
        return (
            f"RadarEchoes(num_sequences={self.num_sequences}, seq_len={self.seq_len}, "
            f"image_size={self.image_size}, num_cells={self.num_cells}, seed={self.seed})"
        )


# --------------------------------------------------------------------------------------------
# HKO-7 folders

_NAME = re.compile(r"^RAD(\d{2})(\d{2})(\d{2})(\d{2})(\d{2})(\d{2})\.png$", re.IGNORECASE)


class RadarClip(NamedTuple):
    """One window of :class:`HKO7Frames`.

    Attributes:
        frames: ``(T, 1, H, W)`` float32 pixels ``value / 255`` (zeros for a missing frame).
        mask: ``(T, 1, H, W)`` bool, True = use the pixel (False for a missing frame).
        start: the first frame's time, ISO format (``"2015-06-01T10:30:00"``).
    """

    frames: Tensor
    mask: Tensor
    start: str


def read_mask_file(path: PathLike, shape: tuple[int, int]) -> NDArray[np.bool_]:
    """An HKO-7 ``.mask`` file: zlib-compressed bytes of an ``(H, W)`` bool array."""
    data = zlib.decompress(Path(path).read_bytes())
    if len(data) != shape[0] * shape[1]:
        raise ValueError(
            f"mask file {str(path)!r} holds {len(data)} values; expected {shape[0]}x{shape[1]}"
        )
    return np.frombuffer(data, dtype=bool).reshape(shape)


class HKO7Frames(Dataset[RadarClip]):
    """Windows of consecutive radar frames from an HKO-7-style folder tree.

    Frames are the files named ``RADyymmddHHMMSS.png`` anywhere below ``root`` (HKO-7:
    ``radarPNG/YYYY/MM/DD/RADyymmddHHMM00.png``, 480 x 480 8-bit grayscale), ordered by the
    time in their name. A window is ``seq_len`` frames ``interval`` apart (6 minutes); like
    the official iterator, up to ``max_missing`` consecutive missing frames are tolerated
    (read as zeros with mask 0). Windows start at every ``stride``-th frame time.

    Masks (True = use the pixel), in order of precedence: the ``.mask`` file of the same
    name under ``mask_root`` (HKO-7's ``radarPNG_mask`` tree); else, with ``exclude_mask``
    (``(H, W)`` bools, True = excluded, HKO-7's ``mask_dat.npz['exclude_mask']``), the
    official recomputation: excluded pixels and "noise" (``0 < value < round(0.28 * 255)``)
    are not used; else all pixels are used. Needs Pillow.

    Args:
        root: the folder of PNG frames.
        seq_len: frames per window (HKO-7: 25 = 5 in + 20 out).
        stride: window starts, in frames (HKO-7 test: 5).
        interval: minutes between frames.
        max_missing: tolerated consecutive missing frames.
        mask_root: the folder of ``.mask`` files, or None.
        exclude_mask: ``(H, W)`` bool array of excluded pixels, or None.
        noise_threshold: with ``exclude_mask``, values in ``(0, round(threshold * 255))`` are
            noise (0.28 in HKO-7).

    Yields:
        :class:`RadarClip` ``(frames, mask, start)``.
    """

    def __init__(
        self,
        root: PathLike,
        seq_len: int = 25,
        *,
        stride: int = 1,
        interval: int = 6,
        max_missing: int = 0,
        mask_root: PathLike | None = None,
        exclude_mask: NDArray[np.bool_] | Tensor | None = None,
        noise_threshold: float = 0.28,
    ) -> None:
        try:
            from PIL import Image  # noqa: F401
        except ImportError as e:  # pragma: no cover - Pillow is in the examples extra
            raise ImportError("HKO7Frames reads PNG files with Pillow: pip install pillow") from e
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(
                f"root must be a folder of HKO-7 radar frames; got {str(root)!r}"
            )
        self.seq_len = check_positive_int("seq_len", seq_len)
        self.stride = check_positive_int("stride", stride)
        self.interval = dt.timedelta(minutes=check_positive_int("interval", interval))
        self.max_missing = check_int("max_missing", max_missing, minimum=0)
        self.mask_root = None if mask_root is None else Path(mask_root)
        self.exclude_mask = (
            None
            if exclude_mask is None
            else np.asarray(
                exclude_mask.cpu().numpy() if isinstance(exclude_mask, Tensor) else exclude_mask,
                dtype=bool,
            )
        )
        self.noise_level = round(check_real("noise_threshold", noise_threshold, low=0.0) * 255)
        files: dict[dt.datetime, Path] = {}
        for path in self.root.rglob("*"):
            m = _NAME.match(path.name)
            if m and path.is_file():
                yy, mo, dd, hh, mi, ss = (int(g) for g in m.groups())
                files[dt.datetime(2000 + yy, mo, dd, hh, mi, ss)] = path
        if not files:
            raise ValueError(f"no RADyymmddHHMMSS.png frames below {str(root)!r}")
        self.files = files
        times = sorted(files)
        self.starts = [t for t in times[:: self.stride] if self._valid(t)]
        if not self.starts:
            raise ValueError(
                f"no window of seq_len={self.seq_len} frames {interval} minutes apart (with at "
                f"most {self.max_missing} consecutive missing) in {str(root)!r}"
            )

    def _window(self, start: dt.datetime) -> list[dt.datetime]:
        return [start + k * self.interval for k in range(self.seq_len)]

    def _valid(self, start: dt.datetime) -> bool:
        missing = 0
        for t in self._window(start):
            if t in self.files:
                missing = 0
            else:
                missing += 1
                if missing > self.max_missing:
                    return False
        return True

    def __len__(self) -> int:
        return len(self.starts)

    def _read(self, path: Path) -> NDArray[np.uint8]:
        from PIL import Image

        with Image.open(path) as img:
            return np.asarray(img.convert("L"), dtype=np.uint8)

    def __getitem__(self, index: int) -> RadarClip:
        start = self.starts[operator.index(index)]
        images: list[NDArray[np.uint8] | None] = [
            self._read(self.files[t]) if t in self.files else None for t in self._window(start)
        ]
        shape = next(im.shape for im in images if im is not None)
        frames = np.zeros((self.seq_len, 1, *shape), dtype=np.float32)
        mask = np.zeros((self.seq_len, 1, *shape), dtype=bool)
        for k, (t, im) in enumerate(zip(self._window(start), images, strict=True)):
            if im is None:
                continue
            if im.shape != shape:
                raise ValueError(f"frame {self.files[t]} is {im.shape}, others are {shape}")
            frames[k, 0] = im.astype(np.float32) / 255.0
            mask[k, 0] = self._mask(t, im)
        return RadarClip(torch.from_numpy(frames), torch.from_numpy(mask), start.isoformat())

    def _mask(self, t: dt.datetime, image: NDArray[np.uint8]) -> NDArray[np.bool_]:
        if self.mask_root is not None:
            rel = self.files[t].relative_to(self.root).with_suffix(".mask")
            return read_mask_file(self.mask_root / rel, (image.shape[0], image.shape[1]))
        if self.exclude_mask is not None:
            noise = (image > 0) & (image < self.noise_level)
            return ~self.exclude_mask & ~noise
        return np.ones(image.shape, dtype=bool)

    def __repr__(self) -> str:
        return f"HKO7Frames(root={str(self.root)!r}, seq_len={self.seq_len}, windows={len(self)})"
