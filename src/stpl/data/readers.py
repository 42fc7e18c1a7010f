"""Readers for the files the papers evaluate on: Moving MNIST ``.npy``, PredRNN ``.npz``, idx.

* :class:`MovingMNISTFile`: ``mnist_test_seq.npy`` (Srivastava et al.), uint8
  ``(20, N, 64, 64)``, the 10,000 fixed test sequences of Moving MNIST; memory-mapped.
* :class:`PredRNNNpz`: the ``.npz`` clip files of thuml/predrnn-pytorch; the frame array is
  memory-mapped when the archive stores it uncompressed (``np.savez``), loaded otherwise.
* :func:`read_idx` / :func:`load_idx_digits`: the MNIST idx format (``train-images-idx3-ubyte``,
  gzipped or not), to feed real digits to :class:`stpl.data.MovingDigits`.

Every dataset yields ``(T, C, H, W)`` float32 in [0, 1].
"""

from __future__ import annotations

import gzip
import operator
import os
import zipfile
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from numpy.typing import NDArray
from torch import Tensor
from torch.utils.data import Dataset

__all__ = ["MovingMNISTFile", "PredRNNNpz", "load_idx_digits", "read_idx"]

PathLike = str | os.PathLike[str]

_MOVING_MNIST_URL = "http://www.cs.toronto.edu/~nitish/unsupervised_video/mnist_test_seq.npy"


def _existing_file(path: PathLike, what: str) -> Path:
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{what} not found: {str(p)!r}")
    if not p.is_file():
        raise ValueError(f"{what} must be a file; {str(p)!r} is a directory or special file")
    return p


def _check_index(index: int, length: int, name: str) -> int:
    i = operator.index(index)
    if i < 0:
        i += length
    if not 0 <= i < length:
        raise IndexError(f"index {index} is out of range for {name} of length {length}")
    return i


# --------------------------------------------------------------------------------------------
# idx (MNIST's own format)

_IDX_DTYPES: dict[int, np.dtype[np.generic]] = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def read_idx(path: PathLike) -> NDArray[np.generic]:
    """Read an idx file (MNIST's format), gzip-compressed or not (detected from the bytes).

    Layout: two zero bytes, a type code (0x08 uint8, 0x09 int8, 0x0B int16, 0x0C int32,
    0x0D float32, 0x0E float64), the number of dimensions, one big-endian uint32 per
    dimension, then the data in C order, big-endian.

    Args:
        path: e.g. ``train-images-idx3-ubyte`` or ``t10k-images-idx3-ubyte.gz``.

    Returns:
        The array, native byte order.

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: not an idx file, or the data is shorter/longer than the header says.
    """
    p = _existing_file(path, "idx file")
    with p.open("rb") as f:
        raw = f.read()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    if len(raw) < 4 or raw[:2] != b"\x00\x00" or raw[2] not in _IDX_DTYPES:
        raise ValueError(
            f"{str(p)!r} is not an idx file: expected magic bytes 00 00 <type> <ndim> with type "
            f"in {sorted(_IDX_DTYPES)}; got {raw[:4].hex(' ')}"
        )
    dtype, ndim = _IDX_DTYPES[raw[2]], raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"{str(p)!r}: idx header truncated ({len(raw)} bytes, need {header})")
    shape = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(raw) - header != expected:
        raise ValueError(
            f"{str(p)!r}: idx header says shape {shape} ({expected} data bytes); "
            f"got {len(raw) - header} data bytes"
        )
    data = np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape)
    return data.astype(dtype.newbyteorder("="))


def load_idx_digits(path: PathLike) -> Tensor:
    """Digit images from an idx3 file such as MNIST's ``train-images-idx3-ubyte(.gz)``.

    Args:
        path: an idx file of 3 dimensions ``(N, H, W)`` and type uint8.

    Returns:
        ``(N, H, W)`` uint8 tensor (0..255), ready for ``MovingDigits(..., digits=...)``.

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: not an idx file, or not ``(N, H, W)`` uint8.
    """
    arr = read_idx(path)
    if arr.ndim != 3 or arr.dtype != np.uint8:
        raise ValueError(
            f"{str(path)!r}: expected idx3 uint8 images (N, H, W); "
            f"got {arr.ndim} dims, shape {arr.shape}, dtype {arr.dtype}"
        )
    return torch.from_numpy(np.ascontiguousarray(arr))


# --------------------------------------------------------------------------------------------
# Moving MNIST test file


class MovingMNISTFile(Dataset[Tensor]):
    """The standard Moving MNIST test set, ``mnist_test_seq.npy``, memory-mapped.

    The file (from ``http://www.cs.toronto.edu/~nitish/unsupervised_video/``) holds uint8
    frames of shape ``(20, 10000, 64, 64)``: time first, then sequence. MoDeRNN and PredRNN
    report their Moving MNIST numbers on these 10,000 sequences (first 10 frames in, last 10
    predicted).

    Args:
        path: path of the ``.npy`` file.
        layout: ``"TNHW"`` (the published file) or ``"NTHW"`` (a file saved sequence first).

    Yields:
        ``(T, 1, H, W)`` float32 in [0, 1] (``uint8 / 255``).

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: not a ``.npy`` array, not 4-D, or not uint8.
    """

    def __init__(self, path: PathLike, *, layout: Literal["TNHW", "NTHW"] = "TNHW") -> None:
        if layout not in ("TNHW", "NTHW"):
            raise ValueError(f"layout must be 'TNHW' or 'NTHW'; got {layout!r}")
        p = _existing_file(path, f"Moving MNIST file (download it from {_MOVING_MNIST_URL})")
        try:
            arr = np.load(p, mmap_mode="r", allow_pickle=False)
        except ValueError as e:
            raise ValueError(f"{str(p)!r} is not a readable .npy array: {e}") from e
        if not isinstance(arr, np.ndarray):
            raise ValueError(
                f"{str(p)!r}: expected a .npy array (uint8, (20, N, 64, 64)); got an .npz archive"
            )
        if arr.ndim != 4:
            raise ValueError(
                f"{str(p)!r}: expected a 4-D uint8 array {layout} such as (20, 10000, 64, 64); "
                f"got shape {arr.shape}"
            )
        if arr.dtype != np.uint8:
            raise ValueError(f"{str(p)!r}: expected dtype uint8 (0..255); got {arr.dtype}")
        self.path = p
        self.layout = layout
        self._data = arr
        t_axis = 0 if layout == "TNHW" else 1
        self.num_frames = int(arr.shape[t_axis])
        self.image_size = (int(arr.shape[2]), int(arr.shape[3]))

    def __len__(self) -> int:
        return int(self._data.shape[1 if self.layout == "TNHW" else 0])

    def __getstate__(self) -> dict[str, Any]:
        # DataLoader workers that pickle the dataset re-open the memory map, not copy it
        state = self.__dict__.copy()
        state["_data"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._data = np.load(self.path, mmap_mode="r", allow_pickle=False)

    def __getitem__(self, index: int) -> Tensor:
        """Sequence ``index``: ``(T, 1, H, W)`` float32 in [0, 1]."""
        i = _check_index(index, len(self), "MovingMNISTFile")
        frames = self._data[:, i] if self.layout == "TNHW" else self._data[i]
        out = torch.from_numpy(np.array(frames, dtype=np.float32))
        return out.div_(255.0).unsqueeze(1)

    def __repr__(self) -> str:
        return (
            f"MovingMNISTFile({str(self.path)!r}, sequences={len(self)}, frames={self.num_frames})"
        )


# --------------------------------------------------------------------------------------------
# PredRNN npz


def _npz_member_memmap(path: Path, name: str) -> NDArray[np.generic] | None:
    """Memory-map member ``name`` of an npz archive if it is stored uncompressed, else None."""
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo(name)
        if info.compress_type != zipfile.ZIP_STORED:
            return None
    with path.open("rb") as f:
        f.seek(info.header_offset)
        local = f.read(30)
        if local[:4] != b"PK\x03\x04":
            return None
        name_len = int.from_bytes(local[26:28], "little")
        extra_len = int.from_bytes(local[28:30], "little")
        f.seek(info.header_offset + 30 + name_len + extra_len)
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
        else:
            return None
        if dtype.hasobject:
            return None
        offset = f.tell()
    order: Literal["C", "F"] = "F" if fortran else "C"
    return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape, order=order)


class PredRNNNpz(Dataset[Tensor]):
    """A clip file in the format of thuml/predrnn-pytorch (``moving-mnist-*.npz`` and others).

    The archive holds three arrays:

    * ``clips``: int ``(2, N, 2)``; ``clips[0, i] = [start, length]`` of sequence i's input
      clip and ``clips[1, i]`` of its output clip, as indices into ``input_raw_data``;
    * ``dims``: ``(1, 3)`` = ``(C, H, W)`` of a frame;
    * ``input_raw_data``: ``(total_frames, C, H, W)`` float in [0, 1].

    Sequence i is the input clip followed by the output clip. ``input_raw_data`` is
    memory-mapped when the archive stores it uncompressed (``np.savez``, as PredRNN's files
    are), otherwise read into memory once (``np.savez_compressed``).

    Args:
        path: path of the ``.npz`` file.

    Yields:
        ``(T_in + T_out, C, H, W)`` float32.

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: not an npz archive, a key missing, or a shape/dtype not as above.
    """

    def __init__(self, path: PathLike) -> None:
        p = _existing_file(path, "PredRNN .npz file")
        if not zipfile.is_zipfile(p):
            raise ValueError(
                f"{str(p)!r} is not an .npz archive (expected keys clips, dims, input_raw_data)"
            )
        with np.load(p, allow_pickle=False) as npz:
            missing = {"clips", "dims", "input_raw_data"} - set(npz.files)
            if missing:
                raise ValueError(
                    f"{str(p)!r}: expected keys clips, dims, input_raw_data; missing "
                    f"{sorted(missing)} (found {sorted(npz.files)})"
                )
            clips = np.asarray(npz["clips"])
            dims = np.asarray(npz["dims"])
            raw = _npz_member_memmap(p, "input_raw_data.npy")
            if raw is None:
                raw = np.asarray(npz["input_raw_data"])
        if clips.ndim != 3 or clips.shape[0] != 2 or clips.shape[2] != 2:
            raise ValueError(
                f"{str(p)!r}: clips must be (2, N, 2) [start, length]; got shape {clips.shape}"
            )
        if not np.issubdtype(clips.dtype, np.integer):
            raise ValueError(f"{str(p)!r}: clips must be integers; got dtype {clips.dtype}")
        if raw.ndim != 4:
            raise ValueError(
                f"{str(p)!r}: input_raw_data must be (total_frames, C, H, W); got shape {raw.shape}"
            )
        if not np.issubdtype(raw.dtype, np.floating):
            raise ValueError(
                f"{str(p)!r}: input_raw_data must be floating in [0, 1]; got dtype {raw.dtype}"
            )
        if dims.size != 3 or tuple(int(d) for d in dims.reshape(-1)) != tuple(raw.shape[1:]):
            raise ValueError(
                f"{str(p)!r}: dims must be (1, 3) = (C, H, W) of input_raw_data's frames "
                f"{tuple(raw.shape[1:])}; got {dims.tolist()}"
            )
        starts, lengths = clips[..., 0].astype(np.int64), clips[..., 1].astype(np.int64)
        bad = (starts < 0) | (lengths < 0) | (starts + lengths > raw.shape[0])
        if bad.any():
            k, i = (int(v) for v in np.argwhere(bad)[0])
            raise ValueError(
                f"{str(p)!r}: clips[{k}, {i}] = {clips[k, i].tolist()} does not fit in "
                f"input_raw_data of {raw.shape[0]} frames"
            )
        self.path = p
        self.clips = clips.astype(np.int64)
        self.frame_shape = (int(raw.shape[1]), int(raw.shape[2]), int(raw.shape[3]))
        self._raw = raw

    def __len__(self) -> int:
        return int(self.clips.shape[1])

    def __getstate__(self) -> dict[str, Any]:
        # a memory-mapped frame array is re-opened after unpickling, not copied
        state = self.__dict__.copy()
        if isinstance(self._raw, np.memmap):
            state["_raw"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        if state["_raw"] is None:
            raw = _npz_member_memmap(self.path, "input_raw_data.npy")
            if raw is None:  # the file was replaced by a compressed one meanwhile
                with np.load(self.path, allow_pickle=False) as npz:
                    raw = np.asarray(npz["input_raw_data"])
            self._raw = raw

    def __getitem__(self, index: int) -> Tensor:
        """Sequence ``index``: input then output clip, ``(T_in + T_out, C, H, W)`` float32."""
        i = _check_index(index, len(self), "PredRNNNpz")
        (s0, l0), (s1, l1) = self.clips[0, i], self.clips[1, i]
        frames = np.concatenate(
            [self._raw[s0 : s0 + l0], self._raw[s1 : s1 + l1]], dtype=np.float32
        )
        return torch.from_numpy(frames)

    def __repr__(self) -> str:
        return (
            f"PredRNNNpz({str(self.path)!r}, sequences={len(self)}, "
            f"frame_shape={self.frame_shape}, memory_mapped={isinstance(self._raw, np.memmap)})"
        )
