"""STLSTMCell against the plain ST-LSTM equations (float64), increments and action included."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch.testing import assert_close

import _plain
import stpl
from _plain import randomize_

B, C_IN, NH, C_A, H, W = 2, 3, 4, 2, 5, 6
NORMS = [(None, None), ("layer", None), ("layer", (H, W))]


def _inputs(action: bool):
    (x,) = _plain.rand_maps(1, (B, C_IN, H, W))
    h, c, m = _plain.rand_maps(3, (B, NH, H, W), seed=2)
    (a,) = _plain.rand_maps(1, (B, C_A, H, W), seed=3)
    return x, stpl.STLSTMState(h, c, m), (a if action else None)


@pytest.mark.parametrize(
    ("norm", "spatial_size", "bias", "forget_bias", "action"),
    [
        (*n, *rest)
        for n, *rest in itertools.product(NORMS, [False, True], [1.0, 0.0], [False, True])
    ],
)
def test_matches_plain_equations(norm, spatial_size, bias, forget_bias, action):
    cell = stpl.STLSTMCell(
        C_IN,
        NH,
        3,
        norm=norm,
        spatial_size=spatial_size,
        bias=bias,
        forget_bias=forget_bias,
        action_channels=C_A if action else None,
    )
    randomize_(cell.double())
    x, state, a = _inputs(action)
    out = cell.forward_with_increments(x, state, a)
    ref = _plain.stlstm(dict(cell.named_parameters()), x, *state, a, forget_bias=forget_bias)
    for got, want, name in zip(
        (out.h, out.state.h, out.state.c, out.state.m, out.delta_c, out.delta_m),
        (ref[0], *ref),
        ("h", "state.h", "state.c", "state.m", "delta_c", "delta_m"),
        strict=True,
    ):
        assert_close(got, want, msg=name)
    h, new_state = cell(x, state, a) if action else cell(x, state)
    assert_close(h, ref[0])
    assert isinstance(new_state, stpl.STLSTMState)
    assert_close(tuple(new_state), ref[:3])


def test_parameter_counts_match_reference():
    """Section 2a: in 16, nh 64, 16x16, k5 -> 1,600,512 (layer_norm=1) and 1,108,992 (0)."""
    ln1 = stpl.STLSTMCell(16, 64, 5, norm="layer", spatial_size=(16, 16))
    ln0 = stpl.STLSTMCell(16, 64, 5)
    assert sum(p.numel() for p in ln1.parameters()) == 1_600_512
    assert sum(p.numel() for p in ln0.parameters()) == 1_108_992
    assert set(ln0.state_dict()) == {
        "conv_x.0.weight",
        "conv_h.0.weight",
        "conv_m.0.weight",
        "conv_o.0.weight",
        "conv_last.weight",
    }


def test_action_conv_parameters():
    cell = stpl.STLSTMCell(C_IN, NH, 3, bias=True, action_channels=C_A)
    assert cell.conv_a is not None
    assert tuple(cell.conv_a.conv.weight.shape) == (4 * NH, C_A, 3, 3)
    assert cell.conv_a.conv.bias is not None
    assert cell.conv_last.bias is not None
    assert stpl.STLSTMCell(C_IN, NH, 3).conv_a is None


def test_increments_are_the_memory_updates():
    """With forget gates closed (c = m = 0), c' = Δc and m' = Δm."""
    cell = randomize_(stpl.STLSTMCell(C_IN, NH, 3).double())
    x, state, _ = _inputs(False)
    zero = torch.zeros_like(state.c)
    out = cell.forward_with_increments(x, stpl.STLSTMState(state.h, zero, zero))
    assert_close(out.state.c, out.delta_c)
    assert_close(out.state.m, out.delta_m)
    assert not torch.allclose(out.delta_c, out.delta_m)


def test_action_missing():
    cell = stpl.STLSTMCell(C_IN, NH, 3, action_channels=C_A)
    with pytest.raises(ValueError, match=r"action_channels=2.*pass action"):
        cell(torch.randn(B, C_IN, H, W))


def test_action_unexpected():
    cell = stpl.STLSTMCell(C_IN, NH, 3)
    with pytest.raises(
        ValueError, match="action was given, but this cell was built with action_channels=None"
    ):
        cell(torch.randn(B, C_IN, H, W), None, torch.randn(B, C_A, H, W))


@pytest.mark.parametrize(
    ("shape", "pattern"),
    [
        ((B, C_A + 1, H, W), r"action must be \(B, C, H, W\) = \(2, 2, 5, 6\)"),
        ((B + 1, C_A, H, W), r"action must be .*\(3, 2, 5, 6\)"),
        ((B, C_A, H + 1, W), r"action must be .*\(2, 2, 6, 6\)"),
    ],
)
def test_action_wrong_shape(shape, pattern):
    cell = stpl.STLSTMCell(C_IN, NH, 3, action_channels=C_A)
    with pytest.raises(ValueError, match=pattern):
        cell(torch.randn(B, C_IN, H, W), None, torch.randn(*shape))


def test_bad_action_channels():
    with pytest.raises(ValueError, match="action_channels must be a positive int"):
        stpl.STLSTMCell(C_IN, NH, 3, action_channels=0)


def test_extra_repr():
    text = repr(stpl.STLSTMCell(3, 4, 5, norm="layer", forget_bias=0.5, action_channels=2))
    for item in ["3, 4", "kernel_size=5", "norm='layer'", "forget_bias=0.5", "action_channels=2"]:
        assert item in text
