"""stpl.metrics against scikit-image and plain numpy formulas of the reference code."""

from __future__ import annotations

import math
import re
import sys
import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from stpl import metrics
from stpl.metrics import perceptual

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
        pred = (target + rng.normal(0, 0.1, shape)).astype(np.float32)
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
ALL_METRICS = [metrics.mse, metrics.mae, metrics.psnr, metrics.ssim, metrics.lpips]
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
    low_pred, low_target = pred.detach().bfloat16(), target.bfloat16()
    half = metrics.mae(low_pred, low_target)
    assert half.dtype == torch.float32  # bf16 inputs are scored in float32, not in bf16
    torch.testing.assert_close(half, metrics.mae(low_pred.float(), low_target.float()))
    assert half.item() == pytest.approx(metrics.mae(pred.detach(), target).item(), rel=0.02)


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


@pytest.mark.parametrize("fn", ALL_METRICS)
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


@pytest.mark.parametrize("fn", ALL_METRICS)
def test_frames_on_another_scale_are_refused(fn) -> None:  # type: ignore[no-untyped-def]
    gen = torch.Generator().manual_seed(0)
    unit = torch.rand(1, 2, 1, 8, 8, generator=gen)
    bytes_ = torch.floor(unit * 255)  # 0..255 floats: quantised metrics used to clamp them
    with pytest.raises(
        ValueError,
        match=r"target must hold frames on the \[0, 1\] scale.*"
        r"got values in \[\d+, 2\d\d\].*divided by 255",
    ):
        fn(unit, bytes_)
    with pytest.raises(ValueError, match=r"pred must hold frames.*divided by 255"):
        fn(bytes_, unit)
    with pytest.raises(ValueError, match=r"pred must hold.*\[-0\.5, 1\.5\].*\(x \+ 1\) / 2"):
        fn(2 * unit - 1, unit)  # normalised to [-1, 1]
    with pytest.raises(ValueError, match=r"target must hold.*rescale the frames"):
        fn(unit, 1000 * unit - 300)
    with pytest.raises(ValueError, match=r"pred must hold.*inf"):
        fn(unit.clone().fill_(math.inf), unit)


def test_slightly_out_of_range_predictions_follow_the_papers_clip() -> None:
    gen = torch.Generator().manual_seed(1)
    target = torch.rand(2, 3, 1, 9, 9, generator=gen)
    pred = (target + 0.2 * torch.randn(target.shape, generator=gen)).clamp(-0.5, 1.5)
    pred[0, 0, 0, 0, :2] = torch.tensor([-0.5, 1.5])  # the accepted extremes
    assert pred.min() < -0.2 and pred.max() > 1.2
    clipped = pred.clamp(0, 1)
    for fn in (metrics.mse, metrics.mae, metrics.psnr, metrics.ssim):
        torch.testing.assert_close(fn(pred, target), fn(clipped, target), rtol=0, atol=0)
    # the target too may stray a little (interpolated data); MSE scores it as given
    target[0, 0, 0, 0, 0] = 1.2
    assert metrics.mse(pred, target).isfinite()


def test_nan_predictions_give_nan_not_a_scale_error() -> None:
    target = torch.rand(1, 2, 1, 8, 8)
    pred = target.clone()
    pred[0, 1, 0, 3, 3] = math.nan
    assert math.isnan(metrics.mse(pred, target).item())
    assert not math.isnan(metrics.mse(pred, target, per_frame=True)[0].item())
    # a NaN does not hide a wrong scale elsewhere in the tensor
    pred[0, 0] = 200.0
    with pytest.raises(ValueError, match="pred must hold frames"):
        metrics.mse(pred, target)


def test_scale_check_in_low_precision() -> None:
    x = torch.rand(1, 1, 1, 8, 8).bfloat16()
    assert metrics.mae(x, x).item() == 0.0
    with pytest.raises(ValueError, match="target must hold frames"):
        metrics.mae(x, x * 255)


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


# --------------------------------------------------------------------------------------------
# LPIPS: argument checks run everywhere; the network tests need the optional extra
# (pip install "torch-stpl[lpips]") and skip, naming it, only where the package is missing.
# No network is needed: the backbones are random (lpips' pnet_rand=True) or a random
# AlexNet saved where torchvision looks for its cached weights.


@pytest.fixture
def lpips_package():  # type: ignore[no-untyped-def]
    perceptual._network.cache_clear()
    yield pytest.importorskip(
        "lpips", reason='the optional extra torch-stpl[lpips] (package "lpips") is not installed'
    )
    perceptual._network.cache_clear()


def _random_lpips(package, net: str = "alex"):  # type: ignore[no-untyped-def]
    """The package's own LPIPS with a random backbone (its calibrated linear layers)."""
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return package.LPIPS(net=net, pnet_rand=True, verbose=False).eval()


def _predrnn_lpips(net, pred: np.ndarray, target: np.ndarray) -> np.ndarray:  # type: ignore[no-untyped-def]
    """PredRNN-V2's test loop: per frame, (B, H, W, C) numpy frames, the prediction clipped,
    grey repeated into 3 channels, [0, 1] fed unscaled, ``loss_fn_alex(truth, prediction)``."""
    b, t = pred.shape[:2]
    table = np.empty((b, t))
    for i in range(t):
        x = target[:, i].transpose(0, 2, 3, 1)
        gx = np.minimum(np.maximum(pred[:, i].transpose(0, 2, 3, 1), 0), 1)
        img_x = np.zeros([b, 3, *x.shape[1:3]])
        img_gx = np.zeros([b, 3, *x.shape[1:3]])
        for k in range(3):
            img_x[:, k] = x[..., k if x.shape[-1] == 3 else 0]
            img_gx[:, k] = gx[..., k if x.shape[-1] == 3 else 0]
        with torch.no_grad():
            d = net(torch.FloatTensor(img_x), torch.FloatTensor(img_gx))
        table[:, i] = d.reshape(b).numpy()
    return table


@pytest.mark.parametrize("channels", [1, 3])
def test_lpips_matches_the_reference_loop(lpips_package, channels: int) -> None:  # type: ignore[no-untyped-def]
    net = _random_lpips(lpips_package)
    pred, target = _pair("random", (2, 3, channels, 32, 36), seed=6)  # pred overshoots [0, 1]
    table = _predrnn_lpips(net, pred, target)
    assert np.ptp(table) > 0
    got = metrics.lpips(_t(pred), _t(target), net=net, per_frame=True, per_sample=True)
    assert got.dtype == torch.float32 and got.shape == (2, 3)
    np.testing.assert_allclose(got.numpy(), table, rtol=1e-5, atol=1e-7)
    curve = metrics.lpips(_t(pred), _t(target), net=net, per_frame=True, chunk_size=4)
    np.testing.assert_allclose(curve.numpy(), table.mean(0), rtol=1e-5)
    assert metrics.lpips(_t(pred), _t(target), net=net).item() == pytest.approx(table.mean())


def test_lpips_normalize_is_openstl_scaling(lpips_package) -> None:  # type: ignore[no-untyped-def]
    # OpenSTL: lpips.im2tensor(x * 255) per (H, W, C) frame, i.e. [0, 1] -> [-1, 1]
    net = _random_lpips(lpips_package)
    pred, target = _pair("gradient", (1, 2, 3, 32, 32))
    ref = []
    for j in range(2):
        x = lpips_package.im2tensor(pred[0, j].transpose(1, 2, 0) * 255)
        y = lpips_package.im2tensor(target[0, j].transpose(1, 2, 0) * 255)
        with torch.no_grad():
            ref.append(net(y.float(), x.float()).item())
    got = metrics.lpips(_t(pred), _t(target), net=net, normalize=True, per_frame=True)
    np.testing.assert_allclose(got.numpy(), ref, rtol=1e-5)
    unscaled = metrics.lpips(_t(pred), _t(target), net=net, per_frame=True)
    assert not torch.allclose(got, unscaled)  # the two conventions differ


def test_lpips_gradient_and_errors(lpips_package) -> None:  # type: ignore[no-untyped-def]
    net = _random_lpips(lpips_package)
    target = torch.rand(1, 2, 1, 32, 32)
    pred = (target + 0.1 * torch.randn_like(target)).requires_grad_()
    metrics.lpips(pred, target, net=net, clip=False).backward()
    assert pred.grad is not None and pred.grad.abs().sum() > 0
    small = torch.rand(1, 1, 1, 16, 16)
    with pytest.raises(ValueError, match="16x16 are too small for the LPIPS backbone"):
        metrics.lpips(small, small, net=net)


def test_lpips_pretrained_backbone_is_loaded_and_cached(
    lpips_package, monkeypatch: pytest.MonkeyPatch, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    # a random AlexNet where torchvision keeps its downloaded weights: net="alex" must build
    # lpips.LPIPS(net="alex") (pretrained backbone) from it, once per device
    import torchvision

    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path))
    url = torchvision.models.AlexNet_Weights.IMAGENET1K_V1.url
    (tmp_path / "checkpoints").mkdir()
    torch.manual_seed(3)
    torch.save(
        torchvision.models.alexnet().state_dict(), tmp_path / "checkpoints" / url.split("/")[-1]
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref_net = lpips_package.LPIPS(net="alex", verbose=False).eval()
    pred, target = _pair("squares", (2, 2, 1, 32, 32), seed=2)
    table = _predrnn_lpips(ref_net, pred, target)
    got = metrics.lpips(_t(pred), _t(target), per_frame=True, per_sample=True)
    np.testing.assert_allclose(got.numpy(), table, rtol=1e-5, atol=1e-7)
    metrics.lpips(_t(pred), _t(target))
    assert perceptual._network.cache_info().misses == 1


def test_lpips_missing_weights_say_where_to_put_them(
    lpips_package, monkeypatch: pytest.MonkeyPatch, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    from urllib.error import URLError

    def offline(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise URLError("no network in this test")

    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path))
    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    x = torch.rand(1, 1, 1, 32, 32)
    with pytest.raises(RuntimeError, match=r"alexnet-owt-\w+\.pth.*no network in this test"):
        metrics.lpips(x, x)
    with pytest.raises(RuntimeError, match=re.escape(str(tmp_path / "checkpoints"))):
        metrics.lpips(x, x)


def test_lpips_without_the_package_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    perceptual._network.cache_clear()
    monkeypatch.setitem(sys.modules, "lpips", None)  # as if not installed
    x = torch.rand(1, 1, 1, 32, 32)
    with pytest.raises(ImportError, match=r'pip install "torch-stpl\[lpips\]"'):
        metrics.lpips(x, x)
    perceptual._network.cache_clear()


def test_lpips_argument_errors() -> None:
    x = torch.rand(1, 2, 1, 32, 32)
    with pytest.raises(ValueError, match="C=2"):
        metrics.lpips(x.expand(1, 2, 2, 32, 32), x.expand(1, 2, 2, 32, 32))
    with pytest.raises(ValueError, match="net must be one of"):
        metrics.lpips(x, x, net="resnet")
    with pytest.raises(TypeError, match=r"net must be a str or an nn\.Module"):
        metrics.lpips(x, x, net=3)  # type: ignore[arg-type]
    for name, kw in (("normalize", {"normalize": 1}), ("chunk_size", {"chunk_size": 0})):
        with pytest.raises(ValueError, match=name):
            metrics.lpips(x, x, **kw)  # type: ignore[arg-type]
