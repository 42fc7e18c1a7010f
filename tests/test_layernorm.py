"""LayerNorm2d and GateConv: the layer-norm layout of the reference code, and its key names."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.testing import assert_close

from _plain import randomize_
from stpl import GateConv, LayerNorm2d


def _x(shape=(2, 4, 5, 6)):
    return (
        torch.randn(*shape, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 3 + 1
    )


def test_per_element_equals_reference_layernorm():
    ln = randomize_(LayerNorm2d(4, spatial_size=(5, 6)).double())
    ref = nn.LayerNorm([4, 5, 6]).double()
    ref.load_state_dict(ln.state_dict())
    x = _x()
    assert_close(ln(x), ref(x))


def test_per_channel_normalises_over_chw_per_sample():
    ln = randomize_(LayerNorm2d(4).double())
    x = _x()
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    var = x.var(dim=(1, 2, 3), unbiased=False, keepdim=True)
    expected = (x - mean) / torch.sqrt(var + 1e-5) * ln.weight.view(4, 1, 1) + ln.bias.view(4, 1, 1)
    assert_close(ln(x), expected)


def test_per_channel_equals_per_element_with_broadcast_affine():
    per_channel = randomize_(LayerNorm2d(4).double())
    per_element = LayerNorm2d(4, spatial_size=(5, 6)).double()
    with torch.no_grad():
        per_element.weight.copy_(per_channel.weight.view(4, 1, 1).expand(4, 5, 6))
        per_element.bias.copy_(per_channel.bias.view(4, 1, 1).expand(4, 5, 6))
    x = _x()
    assert_close(per_channel(x), per_element(x))


def test_init_and_parameter_shapes():
    ln = LayerNorm2d(3)
    assert ln.weight.shape == ln.bias.shape == (3,)
    assert torch.equal(ln.weight, torch.ones(3))
    assert torch.equal(ln.bias, torch.zeros(3))
    ln = LayerNorm2d(3, spatial_size=4)  # an int means a square map
    assert ln.spatial_size == (4, 4)
    assert ln.weight.shape == ln.bias.shape == (3, 4, 4)


def test_channels_last_input():
    ln = randomize_(LayerNorm2d(4).double())
    x = _x()
    x_cl = x.contiguous(memory_format=torch.channels_last)
    y = ln(x_cl)
    assert_close(y, ln(x))
    assert y.is_contiguous(memory_format=torch.channels_last)
    per_element = randomize_(LayerNorm2d(4, spatial_size=(5, 6)).double())
    assert_close(per_element(x_cl), per_element(x))


def test_per_element_rejects_another_resolution():
    ln = LayerNorm2d(4, spatial_size=(5, 6))
    with pytest.raises(ValueError, match=r"spatial_size=\(5, 6\).*\(6, 5\)"):
        ln(torch.randn(1, 4, 6, 5))


@pytest.mark.parametrize("spatial_size", [(4,), (4, 0), (4, 4, 4), "44", (4.0, 4), (True, 4)])
def test_bad_spatial_size(spatial_size):
    with pytest.raises(ValueError, match="spatial_size"):
        LayerNorm2d(3, spatial_size=spatial_size)


@pytest.mark.parametrize("num_channels", [0, -1, 2.0])
def test_bad_num_channels(num_channels):
    with pytest.raises(ValueError, match="num_channels"):
        LayerNorm2d(num_channels)


def test_layernorm_extra_repr():
    assert "per-channel" in repr(LayerNorm2d(3))
    text = repr(LayerNorm2d(3, spatial_size=(4, 5), eps=1e-6))
    assert "3" in text
    assert "(4, 5)" in text
    assert "1e-06" in text


# -- GateConv ------------------------------------------------------------------------------


@pytest.mark.parametrize("bias", [False, True])
def test_gateconv_loads_reference_sequential(bias):
    """Keys 0.weight, 0.bias, 1.weight, 1.bias as nn.Sequential(Conv2d, LayerNorm([C, H, W]))."""
    ours = randomize_(GateConv(3, 8, 5, bias=bias, norm="layer", spatial_size=(5, 6)).double())
    ref = nn.Sequential(nn.Conv2d(3, 8, 5, padding=2, bias=bias), nn.LayerNorm([8, 5, 6])).double()
    expected_keys = {"0.weight", "1.weight", "1.bias"} | ({"0.bias"} if bias else set())
    assert set(ours.state_dict()) == expected_keys
    ref.load_state_dict(ours.state_dict())
    x = _x((2, 3, 5, 6))
    assert_close(ours(x), ref(x))


@pytest.mark.parametrize("k", [1, 3, 5, 7])
def test_gateconv_same_padding(k):
    conv = GateConv(2, 6, k)
    assert conv.conv is conv[0]
    assert conv.conv.bias is None
    assert len(conv) == 1  # no norm by default
    assert conv(torch.randn(1, 2, 5, 7)).shape == (1, 6, 5, 7)


@pytest.mark.parametrize("k", [0, 2, 4, -3])
def test_gateconv_rejects_even_or_nonpositive_kernel(k):
    with pytest.raises(ValueError, match="kernel_size must be a positive odd int"):
        GateConv(2, 6, k)


@pytest.mark.parametrize("norm", ["batch", "Layer", 1, True])
def test_gateconv_rejects_bad_norm(norm):
    with pytest.raises(ValueError, match="norm must be None or 'layer'"):
        GateConv(2, 6, 3, norm=norm)
