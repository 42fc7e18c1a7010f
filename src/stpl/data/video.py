"""Your own videos as datasets: sliding windows over tensors, and folders of image frames."""

from __future__ import annotations

import bisect
import operator
import os
import re
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from stpl._validation import check_positive_int

__all__ = ["FrameFolder", "VideoWindows"]

PathLike = str | os.PathLike[str]




def _window_counts(lengths: Sequence[int], window: int, stride: int) -> list[int]:
    return [(n - window) // stride + 1 if n >= window else 0 for n in lengths]


class _Windows:
    """Index arithmetic shared by the windowed datasets: flat index -> (video, start)."""

    def __init__(self, lengths: Sequence[int], window: int, stride: int) -> None:
        self.window, self.stride = window, stride
        counts = _window_counts(lengths, window, stride)
        self.offsets = np.cumsum([0, *counts]).tolist()

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def locate(self, index: int, owner: str) -> tuple[int, int]:
        i = operator.index(index)
        n = len(self)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"index {index} is out of range for {owner} of length {n}")
        video = bisect.bisect_right(self.offsets, i) - 1
        return video, (i - self.offsets[video]) * self.stride


class VideoWindows(Dataset[Tensor]):
    """Sliding windows of ``context + horizon`` frames over your own videos.

    Window ``k`` of a video of ``T`` frames starts at frame ``k * stride``; a video yields
    ``(T - window) // stride + 1`` windows (none if it is shorter than the window). Windows
    are numbered video after video.

    Args:
        videos: one ``(N, T, C, H, W)`` tensor, or a sequence of ``(T_i, C, H, W)`` tensors
            (lengths may differ; C, H, W may differ too, but then batches need equal
            shapes). numpy arrays are accepted and wrapped with ``torch.as_tensor``.
        context: frames given to the model (its ``context=`` argument).
        horizon: frames to predict after the context.
        stride: step between the starts of consecutive windows.

    Yields:
        ``(context + horizon, C, H, W)``: a view of the stored tensor, dtype and device
        unchanged (convert to float in [0, 1] beforehand if needed).

    Raises:
        ValueError: a video of the wrong rank, non-positive ``context``/``horizon``/``stride``,
            or no video long enough for one window.

    Example:
        >>> frames = torch.rand(8, 30, 1, 64, 64)
        >>> ds = VideoWindows(frames, context=10, horizon=10, stride=5)
        >>> len(ds), ds[0].shape
        (24, torch.Size([20, 1, 64, 64]))
    """

    def __init__(
        self,
        videos: Tensor | np.ndarray[Any, Any] | Sequence[Tensor | np.ndarray[Any, Any]],
        context: int,
        horizon: int,
        stride: int = 1,
    ) -> None:
        self.context = check_positive_int("context", context)
        self.horizon = check_positive_int("horizon", horizon)
        self.stride = check_positive_int("stride", stride)
        self.window = self.context + self.horizon
        if isinstance(videos, (Tensor, np.ndarray)):
            stacked = torch.as_tensor(videos)
            if stacked.ndim != 5:
                raise ValueError(
                    "videos must be (N, T, C, H, W) or a sequence of (T, C, H, W); "
                    f"got a tensor of shape {tuple(stacked.shape)}"
                )
            items: list[Tensor] = list(stacked.unbind(0))
        else:
            items = []
            for k, v in enumerate(videos):
                t = torch.as_tensor(v)
                if t.ndim != 4:
                    raise ValueError(
                        f"videos[{k}] must be (T, C, H, W); got shape {tuple(t.shape)}"
                    )
                items.append(t)
        if not items:
            raise ValueError("videos must contain at least one video; got none")
        self.videos = items
        self._windows = _Windows([v.shape[0] for v in items], self.window, self.stride)
        if len(self._windows) == 0:
            longest = max(v.shape[0] for v in items)
            raise ValueError(
                f"no video has context + horizon = {self.window} frames; longest has {longest}"
            )

    def __len__(self) -> int:
        return len(self._windows)

    def locate(self, index: int) -> tuple[int, int]:
        """``(video, first_frame)`` of window ``index``."""
        return self._windows.locate(index, "VideoWindows")

    def __getitem__(self, index: int) -> Tensor:
        """Window ``index``: ``(context + horizon, C, H, W)``."""
        video, start = self.locate(index)
        return self.videos[video][start : start + self.window]

    def __repr__(self) -> str:
        return (
            f"VideoWindows(videos={len(self.videos)}, context={self.context}, "
            f"horizon={self.horizon}, stride={self.stride}, windows={len(self)})"
        )


# --------------------------------------------------------------------------------------------
# folders of image frames

_DIGITS = re.compile(r"(\d+)")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


def _natural_key(path: Path) -> list[Any]:
    """Sort ``frame2.png`` before ``frame10.png``."""
    return [int(s) if s.isdigit() else s.lower() for s in _DIGITS.split(path.name)]


def _import_pil() -> ModuleType:
    try:
        from PIL import Image
    except ImportError as e:
        raise ImportError(
            "FrameFolder reads image files with Pillow, which is not installed: "
            "pip install pillow (or pip install 'torch-stpl[examples]')"
        ) from e
    return Image


class FrameFolder(Dataset[Tensor]):
    """Windows of consecutive image frames (PNG, JPEG, ...) read from a folder.

    A video is a folder of frame images, in natural name order (``frame2.png`` before
    ``frame10.png``). ``path`` itself is one video if it holds images; each sub-folder of
    ``path`` that holds images is another (e.g. one folder per clip). Each video is cut
    into windows of ``seq_len`` frames starting every ``stride`` frames. Images are read
    with Pillow (imported when the dataset is created) at ``__getitem__`` time.

    Args:
        path: folder of frames, or of folders of frames.
        seq_len: frames per window T.
        stride: step between window starts; ``None`` means ``seq_len`` (no overlap).
        grayscale: read as one channel (``"L"``) instead of RGB.
        image_size: resize every frame to ``(H, W)`` (an int means square) with bilinear
            filtering; ``None`` keeps the files' size (which must then be equal).
        extensions: file suffixes treated as frames (case-insensitive).

    Yields:
        ``(T, C, H, W)`` float32 in [0, 1], ``C`` = 1 (grayscale) or 3.

    Raises:
        ImportError: Pillow is not installed.
        FileNotFoundError: ``path`` does not exist.
        NotADirectoryError: ``path`` is a file.
        ValueError: no frames found, or no video has ``seq_len`` frames; at read time, a
            frame whose size differs from the first one (without ``image_size``).
    """

    def __init__(
        self,
        path: PathLike,
        seq_len: int,
        *,
        stride: int | None = None,
        grayscale: bool = False,
        image_size: int | tuple[int, int] | None = None,
        extensions: Sequence[str] = IMAGE_EXTENSIONS,
    ) -> None:
        _import_pil()  # fail early, with a clear message, if Pillow is missing
        root = Path(path)
        if not root.exists():
            raise FileNotFoundError(f"frame folder not found: {str(root)!r}")
        if not root.is_dir():
            raise NotADirectoryError(
                f"path must be a folder of image frames; got file {str(root)!r}"
            )
        self.root = root
        self.seq_len = check_positive_int("seq_len", seq_len)
        self.stride = self.seq_len if stride is None else check_positive_int("stride", stride)
        self.grayscale = bool(grayscale)
        if image_size is None:
            self.image_size: tuple[int, int] | None = None
        elif isinstance(image_size, (int, np.integer)) and not isinstance(image_size, bool):
            side = check_positive_int("image_size", image_size)
            self.image_size = (side, side)
        elif (
            isinstance(image_size, Sequence)
            and len(image_size) == 2
            and all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in image_size)
        ):
            self.image_size = (int(image_size[0]), int(image_size[1]))
        else:
            raise ValueError(f"image_size must be None, an int or (H, W); got {image_size!r}")
        suffixes = tuple(e.lower() if e.startswith(".") else "." + e.lower() for e in extensions)

        def frames_in(folder: Path) -> list[Path]:
            files = [f for f in folder.iterdir() if f.is_file() and f.suffix.lower() in suffixes]
            return sorted(files, key=_natural_key)

        videos = [frames_in(root)]
        videos += [frames_in(d) for d in sorted(root.iterdir(), key=_natural_key) if d.is_dir()]
        self.videos = [v for v in videos if v]
        if not self.videos:
            raise ValueError(
                f"no frames with extensions {list(suffixes)} in {str(root)!r} or its sub-folders"
            )
        self._windows = _Windows([len(v) for v in self.videos], self.seq_len, self.stride)
        if len(self._windows) == 0:
            longest = max(len(v) for v in self.videos)
            raise ValueError(
                f"no video in {str(root)!r} has seq_len={self.seq_len} frames; "
                f"longest has {longest}"
            )

    def __len__(self) -> int:
        return len(self._windows)

    def locate(self, index: int) -> tuple[int, int]:
        """``(video, first_frame)`` of window ``index``; ``self.videos[video]`` lists its files."""
        return self._windows.locate(index, "FrameFolder")

    def _read(self, file: Path) -> np.ndarray[Any, np.dtype[np.float32]]:
        image = _import_pil()  # not stored on self: the dataset must stay picklable
        with image.open(file) as img:
            img = img.convert("L" if self.grayscale else "RGB")
            if self.image_size is not None:
                h, w = self.image_size
                img = img.resize((w, h), image.Resampling.BILINEAR)
            arr = np.asarray(img, dtype=np.float32) / 255.0
        return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)

    def __getitem__(self, index: int) -> Tensor:
        """Window ``index``: ``(T, C, H, W)`` float32 in [0, 1]."""
        video, start = self.locate(index)
        files = self.videos[video][start : start + self.seq_len]
        frames = [self._read(f) for f in files]
        for f, a in zip(files, frames, strict=True):
            if a.shape != frames[0].shape:
                raise ValueError(
                    f"frame {str(f)!r} is {a.shape[1]}x{a.shape[2]} but {str(files[0])!r} is "
                    f"{frames[0].shape[1]}x{frames[0].shape[2]}; pass image_size=(H, W) to resize"
                )
        return torch.from_numpy(np.stack(frames))

    def __repr__(self) -> str:
        return (
            f"FrameFolder({str(self.root)!r}, seq_len={self.seq_len}, stride={self.stride}, "
            f"videos={len(self.videos)}, windows={len(self)})"
        )
