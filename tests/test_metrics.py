"""stpl.metrics against scikit-image and plain numpy formulas of the reference code."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from stpl import metrics

# --------------------------------------------------------------------------------------------
# slow, obvious references (numpy / scikit-image, frame by frame, as the reference code loops)


def _u8(x: np.ndarray) -> np.ndarray:
    """MoDeRNN / PredRNN: ``np.uint8(clip(x, 0, 1) * 255)`` (truncation)."""
    return (np.clip(x, 0, 1) * 255).astype(np.uint8)


def _ref_error(pred: np.ndarray, target: np.ndarray, *, square: bool, clip: bool) -> np.ndarray:
    """(B, T) per-frame sum of squared/absolute error."""
    p = np.clip(pred, 0, 1) if clip else pred
    d = p.astype(np.float64) - target.astype(np.float64)
    e = d**2 if square else np.abs(d)
    return e.sum(axis=(2, 3, 4))


def _ref_frames(fn, pred: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Apply ``fn(pred_hwc, target_hwc)`` to every (b, t) frame -> (B, T)."""
    b, t = pred.shape[:2]
    out = np.empty((b, t))
    for i in range(b):
        for j in range(t):
            out[i, j] = fn(pred[i, j].transpose(1, 2, 0), target[i, j].transpose(1, 2, 0))
    return out


def _sk_ssim_u8(p: np.ndarray, t: np.ndarray) -> float:
    # (H, W, C) uint8, as PredRNN calls it (multichannel -> channel_axis)
    return float(structural_similarity(_u8(p), _u8(t), data_range=255, channel_axis=-1))


def _sk_psnr_u8(p: np.ndarray, t: np.ndarray) -> float:
    return float(peak_signal_noise_ratio(_u8(t), _u8(p), data_range=255))


def _moving_squares(b: int, t: int, c: int, h: int, w: int, *, shift: int) -> np.ndarray:
    out = np.zeros((b, t, c, h, w), dtype=np.float32)
    for i in range(b):
        for j in range(t):
            y = (3 * i + 2 * j + shift) % (h - 8)
            x = (5 * i + 3 * j + shift) % (w - 8)
            out[i, j, :, y : y + 8, x : x + 8] = 0.9 - 0.1 * i
    return out


def _gradient(b: int, t: int, c: int, h: int, w: int, *, phase: float) -> np.ndarray:
    yy, xx = np.meshgrid(np.linspace(0, 1, h), np.linspace(0, 1, w), indexing="ij")
    frames = [
        (0.5 + 0.5 * np.sin(3 * xx + 2 * yy + phase + 0.3 * j + 0.2 * k + 0.7 * i))[None]
        for i in range(b)
        for j in range(t)
        for k in range(c)
    ]
    return np.concatenate(frames).reshape(b, t, c, h, w).astype(np.float32)


def _pair(kind: str, shape: tuple[int, ...], seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    if kind == "random":
        target = rng.random(shape, dtype=np.float32)
        # predictions overshoot [0, 1] like a raw network output, so clipping matters
        pred = (target + rng.normal(0, 0.2, shape)).astype(np.float32)
    elif kind == "squares":
        target = _moving_squares(*shape, shift=0)
        pred = _moving_squares(*shape, shift=1) + rng.normal(0, 0.05, shape).astype(np.float32)
    elif kind == "gradient":
        target = _gradient(*shape, phase=0.0)
        pred = _gradient(*shape, phase=0.4)
    elif kind == "constant":
        target = np.full(shape, 0.25, dtype=np.float32)
        pred = np.full(shape, 0.75, dtype=np.float32)
    else:
        raise AssertionError(kind)
    return pred, target


KINDS = ["random", "squares", "gradient", "constant"]
SHAPES = [(2, 3, 1, 16, 16), (1, 2, 3, 13, 11)]


def _t(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(x))


# --------------------------------------------------------------------------------------------
# MSE / MAE


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("clip", [True, False])
def test_mse_mae_match_numpy(kind: str, clip: bool) -> None:
    pred, target = _pair(kind, (3, 4, 2, 10, 11))
    for fn, square in ((metrics.mse, True), (metrics.mae, False)):
        table = _ref_error(pred, target, square=square, clip=clip)
        p, t = _t(pred), _t(target)
        kw = {"clip": clip}
        np.testing.assert_allclose(fn(p, t, **kw).item(), table.mean(), rtol=1e-5)
        np.testing.assert_allclose(fn(p, t, per_frame=True, **kw), table.mean(0), rtol=1e-5)
        np.testing.assert_allclose(fn(p, t, per_sample=True, **kw), table.mean(1), rtol=1e-5)
        np.testing.assert_allclose(
            fn(p, t, per_frame=True, per_sample=True, **kw), table, rtol=1e-5
        )
        np.testing.assert_allclose(
            fn(p, t, reduction="mean", **kw).item(), table.mean() / (2 * 10 * 11), rtol=1e-5
        )


def test_mse_openstl_formula() -> None:
    # OpenSTL: np.mean((pred - true)**2, axis=(0, 1)).sum(), no clipping
    pred, target = _pair("random", (4, 5, 1, 8, 8), seed=3)
    ref = np.mean((pred.astype(np.float64) - target) ** 2, axis=(0, 1)).sum()
    np.testing.assert_allclose(metrics.mse(_t(pred), _t(target), clip=False).item(), ref, rtol=1e-6)


def test_clip_only_touches_pred() -> None:
    target = torch.full((1, 1, 1, 4, 4), 1.0)
    pred = torch.full((1, 1, 1, 4, 4), 1.5)
    assert metrics.mse(pred, target).item() == 0.0
    assert metrics.mse(pred, target, clip=False).item() == pytest.approx(16 * 0.25)
    assert metrics.mae(pred, target, clip=False).item() == pytest.approx(16 * 0.5)


def test_mse_is_differentiable_and_keeps_dtype() -> None:
    pred = torch.rand(2, 3, 1, 8, 8, dtype=torch.float64, requires_grad=True)
    target = torch.rand(2, 3, 1, 8, 8, dtype=torch.float64)
    out = metrics.mse(pred, target, clip=False)
    assert out.dtype == torch.float64
    out.backward()
    assert pred.grad is not None
    torch.testing.assert_close(pred.grad, 2 * (pred - target).detach() / 6)
    half = metrics.mae(pred.detach().bfloat16(), target.bfloat16())
    assert half.dtype == torch.float32


# --------------------------------------------------------------------------------------------
# PSNR


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("shape", SHAPES)
def test_psnr_matches_skimage_uint8(kind: str, shape: tuple[int, ...]) -> None:
    pred, target = _pair(kind, shape)
    table = _ref_frames(_sk_psnr_u8, pred, target)
    got = metrics.psnr(_t(pred), _t(target), per_frame=True, per_sample=True)
    assert got.dtype == torch.float64
    np.testing.assert_allclose(got.numpy(), table, rtol=1e-10)
    np.testing.assert_allclose(metrics.psnr(_t(pred), _t(target)).item(), table.mean(), rtol=1e-10)


def test_psnr_moderrn_formula() -> None:
    # MoDeRNN utils: 20 log10(255) - 10 log10(mean((uint8(x) - uint8(gx))^2)) per frame
    pred, target = _pair("squares", (2, 4, 1, 16, 16), seed=1)
    d = _u8(pred).astype(np.int64) - _u8(target).astype(np.int64)
    table = 20 * np.log10(255) - 10 * np.log10((d**2).mean(axis=(2, 3, 4)))
    got = metrics.psnr(_t(pred), _t(target), per_frame=True)
    np.testing.assert_allclose(got.numpy(), table.mean(0), rtol=1e-12)


def test_psnr_float_matches_skimage() -> None:
    pred, target = _pair("random", (2, 2, 1, 10, 10), seed=2)

    def ref(p: np.ndarray, t: np.ndarray) -> float:
        p = np.clip(p, 0, 1).astype(np.float64)
        return float(peak_signal_noise_ratio(t.astype(np.float64), p, data_range=1.0))

    table = _ref_frames(ref, pred, target)
    got = metrics.psnr(_t(pred), _t(target), quantize=False, per_frame=True, per_sample=True)
    np.testing.assert_allclose(got.numpy(), table, rtol=1e-6)


def test_quantisation_truncates_like_numpy_uint8() -> None:
    # values exactly on and around the 8-bit levels, in float32 like the reference arrays
    levels = np.arange(256, dtype=np.float32) / np.float32(255)
    x = np.concatenate([levels, np.nextafter(levels, np.float32(2)), [-0.3, 1.7]]).astype(
        np.float32
    )
    got = metrics.quantize_uint8(torch.from_numpy(x))
    np.testing.assert_array_equal(got.numpy(), _u8(x).astype(np.float64))


def test_psnr_identical_frames() -> None:
    x = torch.rand(2, 3, 1, 8, 8)
    assert metrics.psnr(x, x).item() == pytest.approx(120.0)
    assert metrics.psnr(x, x, quantize=False).item() == pytest.approx(120.0)
    assert math.isinf(metrics.psnr(x, x, eps=0).item())
    # a perfect frame still scores above the closest imperfect one (1 level, 1 pixel)
    y = x.clone()
    y[0, 0, 0, 0, 0] = 1.0 if x[0, 0, 0, 0, 0] < 0.5 else 0.0
    curve = metrics.psnr(y, x, per_frame=True, per_sample=True)
    assert torch.isfinite(curve).all()
    assert curve[0, 0] < curve[0, 1] == pytest.approx(120.0)
    skimage_value = peak_signal_noise_ratio(_u8(x[0, 0, 0].numpy()), _u8(y[0, 0, 0].numpy()))
    assert curve[0, 0].item() == pytest.approx(skimage_value)


def test_psnr_bad_eps_and_data_range() -> None:
    x = torch.rand(1, 1, 1, 8, 8)
    with pytest.raises(ValueError, match="eps"):
        metrics.psnr(x, x, eps=-1.0)
    with pytest.raises(ValueError, match="data_range"):
        metrics.psnr(x, x, data_range=0.0)


# --------------------------------------------------------------------------------------------
# SSIM


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("shape", SHAPES)
def test_ssim_matches_skimage_uint8(kind: str, shape: tuple[int, ...]) -> None:
    pred, target = _pair(kind, shape)
    table = _ref_frames(_sk_ssim_u8, pred, target)
    got = metrics.ssim(_t(pred), _t(target), per_frame=True, per_sample=True)
    assert got.dtype == torch.float64
    np.testing.assert_allclose(got.numpy(), table, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(metrics.ssim(_t(pred), _t(target)).item(), table.mean(), rtol=1e-9)


def test_ssim_moving_mnist_size() -> None:
    pred, target = _pair("squares", (1, 2, 1, 64, 64), seed=5)
    table = _ref_frames(_sk_ssim_u8, pred, target)
    np.testing.assert_allclose(
        metrics.ssim(_t(pred), _t(target), per_frame=True).numpy(), table[0], rtol=1e-9
    )


@pytest.mark.parametrize("data_range", [1.0, 2.0])
def test_ssim_float_matches_skimage(data_range: float) -> None:
    # data_range=2.0 is OpenSTL's (scikit-image's float default at the time)
    pred, target = _pair("gradient", (1, 2, 2, 12, 12))
    pred = pred + np.float32(0.05)

    def ref(p: np.ndarray, t: np.ndarray) -> float:
        p = np.clip(p, 0, 1).astype(np.float64)
        return float(
            structural_similarity(p, t.astype(np.float64), data_range=data_range, channel_axis=-1)
        )

    table = _ref_frames(ref, pred, target)
    got = metrics.ssim(
        _t(pred),
        _t(target),
        quantize=False,
        data_range=data_range,
        per_frame=True,
        per_sample=True,
    )
    np.testing.assert_allclose(got.numpy(), table, rtol=1e-9)


def test_ssim_win_size_matches_skimage() -> None:
    pred, target = _pair("random", (1, 1, 1, 9, 9), seed=4)
    ref = structural_similarity(
        _u8(pred[0, 0, 0]), _u8(target[0, 0, 0]), win_size=5, data_range=255
    )
    got = metrics.ssim(_t(pred), _t(target), win_size=5)
    assert got.item() == pytest.approx(ref, rel=1e-9)


def test_ssim_identical_is_one() -> None:
    x = torch.rand(2, 2, 3, 9, 9)
    torch.testing.assert_close(metrics.ssim(x, x), torch.tensor(1.0, dtype=torch.float64))
    const = torch.zeros(1, 1, 1, 8, 8)
    assert metrics.ssim(const, const).item() == 1.0


def test_ssim_errors() -> None:
    x = torch.rand(1, 1, 1, 6, 8)
    with pytest.raises(ValueError, match="win_size"):
        metrics.ssim(x, x)
    y = torch.rand(1, 1, 1, 8, 8)
    for bad in (4, 1, 2.0, True):
        with pytest.raises(ValueError, match="win_size"):
            metrics.ssim(y, y, win_size=bad)  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------
# argument checks


@pytest.mark.parametrize("fn", [metrics.mse, metrics.mae, metrics.psnr, metrics.ssim])
def test_shape_and_dtype_errors(fn) -> None:  # type: ignore[no-untyped-def]
    good = torch.rand(1, 2, 1, 8, 8)
    with pytest.raises(ValueError, match=r"pred must be \(B, T, C, H, W\).*\(2, 1, 8, 8\)"):
        fn(good[0], good)
    with pytest.raises(ValueError, match=r"target must be \(B, T, C, H, W\)"):
        fn(good, good[0])
    with pytest.raises(ValueError, match=r"same shape.*pred \(1, 2, 1, 8, 8\).*\(1, 3, 1, 8, 8\)"):
        fn(good, torch.rand(1, 3, 1, 8, 8))
    with pytest.raises(ValueError, match=r"pred must be a floating-point.*uint8"):
        fn(good.to(torch.uint8), good)
    with pytest.raises(ValueError, match="target must not be empty"):
        fn(good, good[:, :0])
    with pytest.raises(TypeError, match=r"pred must be a torch\.Tensor"):
        fn(good.numpy(), good)
    with pytest.raises(ValueError, match="per_frame"):
        fn(good, good, per_frame=1)


def test_reduction_error() -> None:
    x = torch.rand(1, 1, 1, 4, 4)
    with pytest.raises(ValueError, match=r"reduction must be one of.*'sum'"):
        metrics.mse(x, x, reduction="sum")  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------
# shapes, hypothesis


@settings(max_examples=25, deadline=None)
@given(
    b=st.integers(1, 3),
    t=st.integers(1, 4),
    c=st.integers(1, 3),
    h=st.integers(7, 12),
    w=st.integers(7, 12),
    seed=st.integers(0, 2**16),
)
def test_output_shapes_and_consistency(b: int, t: int, c: int, h: int, w: int, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    target = torch.rand(b, t, c, h, w, generator=gen)
    pred = target + 0.1 * torch.randn(b, t, c, h, w, generator=gen)
    for fn in (metrics.mse, metrics.mae, metrics.psnr, metrics.ssim):
        table = fn(pred, target, per_frame=True, per_sample=True)
        assert table.shape == (b, t)
        assert fn(pred, target).shape == ()
        assert fn(pred, target, per_frame=True).shape == (t,)
        assert fn(pred, target, per_sample=True).shape == (b,)
        torch.testing.assert_close(fn(pred, target), table.mean())
        torch.testing.assert_close(fn(pred, target, per_frame=True), table.mean(0))
    # one frame against scikit-image
    p, q = pred[0, 0].permute(1, 2, 0).numpy(), target[0, 0].permute(1, 2, 0).numpy()
    ssim_table = metrics.ssim(pred, target, per_frame=True, per_sample=True)
    assert ssim_table[0, 0].item() == pytest.approx(
        structural_similarity(_u8(p), _u8(q), data_range=255, channel_axis=-1), rel=1e-9
    )
    np.testing.assert_allclose(
        metrics.mse(pred, target, per_frame=True, per_sample=True).numpy(),
        _ref_error(pred.numpy(), target.numpy(), square=True, clip=True),
        rtol=1e-5,
    )
