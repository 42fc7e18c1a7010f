"""stpl.data: the moving-digits generator, the file readers and the windowed datasets."""

from __future__ import annotations

import gzip
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from stpl.data import (
    FrameFolder,
    MovingDigits,
    MovingMNISTFile,
    PredRNNNpz,
    VideoWindows,
    load_idx_digits,
    read_idx,
    render_digit,
)

# --------------------------------------------------------------------------------------------
# glyphs


def test_render_digit_all_classes() -> None:
    rng = np.random.default_rng(0)
    canon = [render_digit(d) for d in range(10)]
    for d in range(10):
        img = render_digit(d, rng=rng)
        assert img.shape == (28, 28) and img.dtype == np.float32
        assert img.min() >= 0.0 and img.max() == 1.0
        # ink covers a plausible share of the image and stays off the outer 2 pixels
        assert 30 < (img > 0.5).sum() < 300
        assert img[:2].max() == 0 and img[-2:].max() == 0
    # the ten canonical glyphs are pairwise distinct
    for a in range(10):
        for b in range(a + 1, 10):
            assert np.abs(canon[a] - canon[b]).sum() > 20
    # random variation: the same digit differs between draws
    assert not np.array_equal(render_digit(3, rng=rng), render_digit(3, rng=rng))
    assert render_digit(7, size=56).shape == (56, 56)


def test_render_digit_errors() -> None:
    with pytest.raises(ValueError, match=r"digit must be an int in 0\.\.9; got 10"):
        render_digit(10)
    with pytest.raises(ValueError, match="size"):
        render_digit(1, size=4)


# --------------------------------------------------------------------------------------------
# MovingDigits


def test_moving_digits_shape_range_dtype() -> None:
    ds = MovingDigits(3, seed=0)
    assert len(ds) == 3
    x = ds[0]
    assert x.shape == (20, 1, 64, 64) and x.dtype == torch.float32
    assert x.min() >= 0 and x.max() <= 1 and x.max() > 0.9
    small = MovingDigits(2, seq_len=7, image_size=40, num_digits=3, digit_size=14, seed=5)
    assert small[1].shape == (7, 1, 40, 40)
    assert small.as_tensor().shape == (2, 7, 1, 40, 40)


def test_moving_digits_deterministic_per_index() -> None:
    a = MovingDigits(5, seed=7)
    b = MovingDigits(5, seed=7)
    # access order does not matter: each index has its own generator
    later = [b[i] for i in (4, 2, 0)]
    torch.testing.assert_close(a[0], later[2], rtol=0, atol=0)
    torch.testing.assert_close(a[4], later[0], rtol=0, atol=0)
    torch.testing.assert_close(a[2], a[-3], rtol=0, atol=0)
    assert not torch.equal(a[0], a[1])
    assert not torch.equal(a[0], MovingDigits(5, seed=8)[0])
    with pytest.raises(IndexError, match="out of range"):
        a[5]


def test_moving_digits_move_bounce_and_stay_inside() -> None:
    ds = MovingDigits(16, seed=0)
    free = 64 - 28
    bounced = False
    for i in range(len(ds)):
        info = ds.describe(i)
        assert info.positions.shape == (20, 2, 2) and info.labels.shape == (2,)
        assert info.positions.min() >= 0 and info.positions.max() <= free
        steps = np.abs(np.diff(info.positions, axis=0))
        assert steps.max() <= 4  # 0.1 * 36 = 3.6 px per frame
        assert (steps.sum(axis=(0, 2)) > 10).all()  # every digit travels
        flips = np.sign(info.velocities[1:]) != np.sign(info.velocities[:-1])
        bounced |= bool(flips.any())
    assert bounced
    # the ink is exactly where describe() says the digits are
    x = ds[3][:, 0].numpy()
    info = ds.describe(3)
    for t in range(20):
        inside = np.zeros((64, 64), dtype=bool)
        for r, c in info.positions[t]:
            inside[r : r + 28, c : c + 28] = True
        assert x[t][~inside].max() == 0
        assert x[t][inside].max() > 0.9
    assert np.abs(np.diff(x, axis=0)).sum(axis=(1, 2)).min() > 0  # every frame moves


def test_moving_digits_with_real_digit_images() -> None:
    bank = np.zeros((3, 28, 28), dtype=np.uint8)
    bank[0, 4:24, 4:24] = 255
    bank[1, :, 10:18] = 128
    bank[2, 10:18, :] = 64
    ds = MovingDigits(4, seed=1, digits=torch.from_numpy(bank))
    x, info = ds[2][:, 0].numpy(), ds.describe(2)
    assert set(info.labels.tolist()) <= {0, 1, 2}
    expected = np.zeros((20, 64, 64), dtype=np.float32)
    for t in range(20):
        for label, (r, c) in zip(info.labels, info.positions[t], strict=True):
            region = expected[t, r : r + 28, c : c + 28]
            np.maximum(region, bank[label] / 255.0, out=region)  # max, as Moving MNIST
    np.testing.assert_allclose(x, expected, rtol=0, atol=1e-7)
    floats = MovingDigits(1, digits=bank.astype(np.float32) / 255.0, seed=1)
    assert floats[0].shape == (20, 1, 64, 64)


def test_moving_digits_errors() -> None:
    with pytest.raises(ValueError, match=r"digits must be \(N, 28, 28\).*\(2, 20, 20\)"):
        MovingDigits(1, digits=np.zeros((2, 20, 20), dtype=np.uint8))
    with pytest.raises(ValueError, match=r"digits must be uint8.*int64"):
        MovingDigits(1, digits=np.zeros((2, 28, 28), dtype=np.int64))
    with pytest.raises(ValueError, match="num_sequences must be a positive int; got 0"):
        MovingDigits(0)
    with pytest.raises(ValueError, match="digit_size must be <= image_size=20"):
        MovingDigits(1, image_size=20)
    with pytest.raises(ValueError, match="seed"):
        MovingDigits(1, seed=-1)


# --------------------------------------------------------------------------------------------
# idx


def _write_idx(path: Path, arr: np.ndarray, code: int, *, compress: bool = False) -> None:
    header = bytes([0, 0, code, arr.ndim]) + np.asarray(arr.shape, dtype=">u4").tobytes()
    big = arr.astype(arr.dtype.newbyteorder(">")) if arr.dtype.itemsize > 1 else arr
    raw = header + big.tobytes()
    path.write_bytes(gzip.compress(raw) if compress else raw)


@pytest.mark.parametrize("compress", [False, True])
def test_idx_round_trip(tmp_path: Path, compress: bool) -> None:
    imgs = np.random.default_rng(0).integers(0, 256, (5, 28, 28), dtype=np.uint8)
    path = tmp_path / ("imgs-idx3-ubyte" + (".gz" if compress else ""))
    _write_idx(path, imgs, 0x08, compress=compress)
    got = load_idx_digits(path)
    assert got.dtype == torch.uint8
    np.testing.assert_array_equal(got.numpy(), imgs)
    assert MovingDigits(2, digits=got)[1].shape == (20, 1, 64, 64)
    floats = np.linspace(-1, 1, 12, dtype=np.float32).reshape(3, 4)
    _write_idx(tmp_path / "f.idx", floats, 0x0D)
    np.testing.assert_array_equal(read_idx(tmp_path / "f.idx"), floats)


def test_idx_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nope-idx3-ubyte"):
        load_idx_digits(tmp_path / "nope-idx3-ubyte")
    bad = tmp_path / "bad"
    bad.write_bytes(b"\x12\x34\x08\x03" + b"\x00" * 20)
    with pytest.raises(ValueError, match="is not an idx file"):
        read_idx(bad)
    short = tmp_path / "short"
    _write_idx(short, np.zeros((2, 3, 3), dtype=np.uint8), 0x08)
    short.write_bytes(short.read_bytes()[:-1])
    with pytest.raises(ValueError, match=r"shape \(2, 3, 3\) \(18 data bytes\); got 17"):
        read_idx(short)
    labels = tmp_path / "labels-idx1-ubyte"
    _write_idx(labels, np.arange(4, dtype=np.uint8), 0x08)
    with pytest.raises(ValueError, match=r"expected idx3 uint8 images \(N, H, W\); got 1 dims"):
        load_idx_digits(labels)


# --------------------------------------------------------------------------------------------
# Moving MNIST .npy


def test_moving_mnist_file(tmp_path: Path) -> None:
    arr = np.random.default_rng(1).integers(0, 256, (20, 3, 16, 16), dtype=np.uint8)
    path = tmp_path / "mnist_test_seq.npy"
    np.save(path, arr)
    ds = MovingMNISTFile(path)
    assert len(ds) == 3 and ds.num_frames == 20 and ds.image_size == (16, 16)
    x = ds[1]
    assert x.shape == (20, 1, 16, 16) and x.dtype == torch.float32
    np.testing.assert_allclose(x[:, 0].numpy(), arr[:, 1] / 255.0, rtol=1e-6)
    torch.testing.assert_close(ds[-1], ds[2])
    np.save(tmp_path / "nthw.npy", arr.transpose(1, 0, 2, 3))
    torch.testing.assert_close(MovingMNISTFile(tmp_path / "nthw.npy", layout="NTHW")[1], x)


def test_moving_mnist_file_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"missing\.npy"):
        MovingMNISTFile(tmp_path / "missing.npy")
    np.save(tmp_path / "three.npy", np.zeros((20, 64, 64), dtype=np.uint8))
    with pytest.raises(ValueError, match=r"three\.npy.*4-D.*got shape \(20, 64, 64\)"):
        MovingMNISTFile(tmp_path / "three.npy")
    np.save(tmp_path / "float.npy", np.zeros((20, 2, 8, 8), dtype=np.float32))
    with pytest.raises(ValueError, match=r"float\.npy.*expected dtype uint8.*float32"):
        MovingMNISTFile(tmp_path / "float.npy")
    (tmp_path / "text.npy").write_text("hello")
    with pytest.raises(ValueError, match=r"text\.npy"):
        MovingMNISTFile(tmp_path / "text.npy")
    with pytest.raises(ValueError, match="layout"):
        MovingMNISTFile(tmp_path / "float.npy", layout="THWN")  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------
# PredRNN .npz


def _predrnn_arrays(n: int = 3, t_in: int = 4, t_out: int = 3) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(2)
    raw = rng.random((n * (t_in + t_out), 1, 8, 8), dtype=np.float32)
    clips = np.zeros((2, n, 2), dtype=np.int32)
    for i in range(n):
        start = i * (t_in + t_out)
        clips[0, i] = (start, t_in)
        clips[1, i] = (start + t_in, t_out)
    return {"clips": clips, "dims": np.array([[1, 8, 8]], dtype=np.int32), "input_raw_data": raw}


@pytest.mark.parametrize("compressed", [False, True])
def test_predrnn_npz(tmp_path: Path, compressed: bool) -> None:
    arrays = _predrnn_arrays()
    path = tmp_path / "moving-mnist-test.npz"
    (np.savez_compressed if compressed else np.savez)(path, **arrays)
    ds = PredRNNNpz(path)
    assert len(ds) == 3 and ds.frame_shape == (1, 8, 8)
    assert ("memory_mapped=False" if compressed else "memory_mapped=True") in repr(ds)
    x = ds[2]
    assert x.shape == (7, 1, 8, 8) and x.dtype == torch.float32
    np.testing.assert_array_equal(x.numpy(), arrays["input_raw_data"][14:21])


def test_predrnn_npz_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"gone\.npz"):
        PredRNNNpz(tmp_path / "gone.npz")
    np.save(tmp_path / "plain.npy", np.zeros(3))
    with pytest.raises(ValueError, match=r"plain\.npy.*not an \.npz archive"):
        PredRNNNpz(tmp_path / "plain.npy")
    good = _predrnn_arrays()

    def write(name: str, **changes: np.ndarray | None) -> Path:
        arrays = {**good, **changes}
        path = tmp_path / name
        np.savez(path, **{k: v for k, v in arrays.items() if v is not None})
        return path

    with pytest.raises(ValueError, match=r"missing \['dims'\]"):
        PredRNNNpz(write("a.npz", dims=None))
    with pytest.raises(ValueError, match=r"dims must be \(1, 3\).*\(1, 8, 8\).*\[\[1, 9, 8\]\]"):
        PredRNNNpz(write("b.npz", dims=np.array([[1, 9, 8]])))
    clips = good["clips"].copy()
    clips[1, 2, 1] = 5
    with pytest.raises(ValueError, match=r"clips\[1, 2\] = \[18, 5\] does not fit.*21 frames"):
        PredRNNNpz(write("c.npz", clips=clips))
    with pytest.raises(ValueError, match=r"clips must be \(2, N, 2\)"):
        PredRNNNpz(write("d.npz", clips=good["clips"][0]))
    raw_u8 = (good["input_raw_data"] * 255).astype(np.uint8)
    with pytest.raises(ValueError, match=r"input_raw_data must be floating.*uint8"):
        PredRNNNpz(write("e.npz", input_raw_data=raw_u8))


# --------------------------------------------------------------------------------------------
# VideoWindows


def test_video_windows_count_and_content() -> None:
    videos = [torch.arange(t * 2.0).reshape(t, 1, 1, 2) for t in (9, 3, 12)]
    ds = VideoWindows(videos, context=3, horizon=2, stride=2)
    # (9-5)//2+1 = 3, 0, (12-5)//2+1 = 4
    assert len(ds) == 7
    assert [ds.locate(i) for i in range(7)] == [
        (0, 0),
        (0, 2),
        (0, 4),
        (2, 0),
        (2, 2),
        (2, 4),
        (2, 6),
    ]
    torch.testing.assert_close(ds[4], videos[2][2:7])
    torch.testing.assert_close(ds[-1], videos[2][6:11])
    with pytest.raises(IndexError):
        ds[7]
    stacked = torch.rand(2, 6, 1, 4, 4)
    one = VideoWindows(stacked, context=4, horizon=1)
    assert len(one) == 4 and one[3].shape == (5, 1, 4, 4)
    torch.testing.assert_close(one[3], stacked[1, 1:6])
    assert len(VideoWindows(stacked.numpy(), context=2, horizon=2)) == 6


def test_video_windows_errors() -> None:
    with pytest.raises(ValueError, match=r"\(N, T, C, H, W\).*\(6, 1, 4, 4\)"):
        VideoWindows(torch.rand(6, 1, 4, 4), context=2, horizon=2)
    with pytest.raises(ValueError, match=r"videos\[1\] must be \(T, C, H, W\)"):
        VideoWindows([torch.rand(6, 1, 4, 4), torch.rand(6, 4, 4)], context=2, horizon=2)
    with pytest.raises(ValueError, match="horizon must be a positive int; got 0"):
        VideoWindows(torch.rand(1, 6, 1, 4, 4), context=2, horizon=0)
    with pytest.raises(ValueError, match="context \\+ horizon = 8 frames; longest has 6"):
        VideoWindows(torch.rand(1, 6, 1, 4, 4), context=4, horizon=4)


@settings(max_examples=40, deadline=None)
@given(
    lengths=st.lists(st.integers(1, 30), min_size=1, max_size=4),
    context=st.integers(1, 6),
    horizon=st.integers(1, 6),
    stride=st.integers(1, 5),
)
def test_video_windows_hypothesis(
    lengths: list[int], context: int, horizon: int, stride: int
) -> None:
    window = context + horizon
    videos = [torch.arange(float(n)).reshape(n, 1, 1, 1) for n in lengths]
    expected = [(v, s) for v, n in enumerate(lengths) for s in range(0, n - window + 1, stride)]
    if not expected:
        with pytest.raises(ValueError, match="longest has"):
            VideoWindows(videos, context, horizon, stride)
        return
    ds = VideoWindows(videos, context, horizon, stride)
    assert len(ds) == len(expected)
    for i, (v, s) in enumerate(expected):
        assert ds.locate(i) == (v, s)
        assert ds[i].flatten().tolist() == list(range(s, s + window))


# --------------------------------------------------------------------------------------------
# FrameFolder


def _write_frames(
    folder: Path, n: int, *, size: tuple[int, int] = (6, 5), rgb: bool = False
) -> list[np.ndarray]:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    frames = []
    for k in range(n):
        h, w = size
        arr = ((np.arange(h * w * (3 if rgb else 1)) * 7 + 11 * k) % 256).astype(np.uint8)
        arr = arr.reshape(h, w, 3) if rgb else arr.reshape(h, w)
        Image.fromarray(arr).save(folder / f"frame{k}.png")
        frames.append(arr)
    return frames


def test_frame_folder(tmp_path: Path) -> None:
    frames = _write_frames(tmp_path / "clipA", 12)  # frame0 .. frame11: natural order
    _write_frames(tmp_path / "clipB", 3)
    (tmp_path / "notes.txt").write_text("not a frame")
    ds = FrameFolder(tmp_path, seq_len=4, grayscale=True)
    assert len(ds) == 3 + 0  # clipB is shorter than a window
    x = ds[2]
    assert x.shape == (4, 1, 6, 5) and x.dtype == torch.float32
    np.testing.assert_allclose(x[:, 0].numpy(), np.stack(frames[8:12]) / 255.0, rtol=1e-6)
    assert len(FrameFolder(tmp_path, seq_len=3, stride=1, grayscale=True)) == 10 + 1
    rgb = FrameFolder(tmp_path / "clipA", seq_len=2, image_size=(3, 4))
    assert len(rgb) == 6 and rgb[0].shape == (2, 3, 3, 4)


def test_frame_folder_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(FileNotFoundError, match="nowhere"):
        FrameFolder(tmp_path / "nowhere", seq_len=2)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no frames with extensions"):
        FrameFolder(tmp_path / "empty", seq_len=2)
    _write_frames(tmp_path / "mixed", 2)
    _write_frames(tmp_path / "mixed2", 1, size=(7, 7))
    (tmp_path / "mixed2" / "frame0.png").rename(tmp_path / "mixed" / "frame2.png")
    ds = FrameFolder(tmp_path / "mixed", seq_len=3)
    with pytest.raises(ValueError, match=r"frame2\.png' is 7x7.*6x5; pass image_size"):
        ds[0]
    monkeypatch.setitem(sys.modules, "PIL", None)
    with pytest.raises(ImportError, match="pip install pillow"):
        FrameFolder(tmp_path / "mixed", seq_len=2)


def test_datasets_pickle(tmp_path: Path) -> None:
    # DataLoader workers started with "spawn" (macOS, Windows) pickle the dataset
    import pickle

    _write_frames(tmp_path / "v", 4)
    np.save(tmp_path / "m.npy", np.zeros((20, 2, 8, 8), dtype=np.uint8))
    np.savez(tmp_path / "p.npz", **_predrnn_arrays())
    for ds in (
        PredRNNNpz(tmp_path / "p.npz"),
        MovingDigits(2, seed=3),
        FrameFolder(tmp_path / "v", seq_len=2),
        MovingMNISTFile(tmp_path / "m.npy"),
        VideoWindows(torch.rand(1, 4, 1, 2, 2), context=1, horizon=1),
    ):
        clone = pickle.loads(pickle.dumps(ds))
        torch.testing.assert_close(clone[1], ds[1])
        assert repr(clone) == repr(ds)
