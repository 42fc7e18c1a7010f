"""ConvLSTMCell against the plain equations (float64), for every option."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch.testing import assert_close

import _plain
import stpl
from _plain import randomize_

B, C_IN, NH, H, W = 2, 3, 4, 5, 6

# (norm, spatial_size): no norm, per-channel affine, per-element affine (reference layout).
NORMS = [(None, None), ("layer", None), ("layer", (H, W))]


@pytest.mark.parametrize(
    ("norm", "spatial_size", "bias", "forget_bias", "gate_order", "peephole"),
    [
        (*n, bias, fb, order, peep)
        for n, bias, fb, order, peep in itertools.product(
            NORMS, [False, True], [0.0, 1.0], ["ifgo", "ifog", "gofi"], [False, True]
        )
    ]
    + [(None, (H, W), True, 1.0, "ifgo", True)],  # per-element peepholes without a norm
)
def test_matches_plain_equations(norm, spatial_size, bias, forget_bias, gate_order, peephole):
    cell = stpl.ConvLSTMCell(
        C_IN,
        NH,
        3,
        norm=norm,
        spatial_size=spatial_size,
        bias=bias,
        forget_bias=forget_bias,
        gate_order=gate_order,
        peephole=peephole,
    )
    randomize_(cell.double())
    (x,) = _plain.rand_maps(1, (B, C_IN, H, W))
    h, c = _plain.rand_maps(2, (B, NH, H, W), seed=2)
    h_new, state = cell(x, stpl.LSTMState(h, c))
    h_ref, c_ref = _plain.convlstm(
        dict(cell.named_parameters()),
        x,
        h,
        c,
        forget_bias=forget_bias,
        gate_order=gate_order,
        peephole=peephole,
    )
    assert_close(h_new, h_ref)
    assert_close(state.h, h_ref)
    assert_close(state.c, c_ref)


def test_parameters_follow_options():
    cell = stpl.ConvLSTMCell(C_IN, NH, 5)
    # OpenSTL's used parameters: two bias-free 5x5 convolutions, nothing else.
    assert {k: tuple(v.shape) for k, v in cell.state_dict().items()} == {
        "conv_x.0.weight": (4 * NH, C_IN, 5, 5),
        "conv_h.0.weight": (4 * NH, NH, 5, 5),
    }
    cell = stpl.ConvLSTMCell(
        C_IN, NH, 3, bias=True, norm="layer", spatial_size=(H, W), peephole=True
    )
    shapes = {k: tuple(v.shape) for k, v in cell.state_dict().items()}
    assert shapes["conv_x.0.bias"] == (4 * NH,)
    assert "conv_h.0.bias" not in shapes  # one bias per gate channel, on the input conv
    assert shapes["conv_x.1.weight"] == shapes["conv_h.1.bias"] == (4 * NH, H, W)
    assert shapes["peephole_weight"] == (3, NH, H, W)
    assert stpl.ConvLSTMCell(C_IN, NH, 3, peephole=True).peephole_weight.shape == (3, NH, 1, 1)


def test_openstl_parameter_count():
    """Section 7: 4x64 k5 on 16 input channels, used parameters only: 2.971M."""
    cells = [stpl.ConvLSTMCell(16 if i == 0 else 64, 64, 5) for i in range(4)]
    decoder = 64 * 16  # the model's 1x1 conv_last, bias-free
    assert sum(p.numel() for c in cells for p in c.parameters()) + decoder == 2_970_624


def test_forget_bias_shifts_forget_gate():
    """forget_bias=b equals adding b to the bias of the forget chunk of the input conv."""
    a = randomize_(stpl.ConvLSTMCell(C_IN, NH, 3, bias=True, forget_bias=1.5).double())
    b = stpl.ConvLSTMCell(C_IN, NH, 3, bias=True).double()
    b.load_state_dict(a.state_dict())
    with torch.no_grad():
        b.conv_x[0].bias[NH : 2 * NH] += 1.5  # "ifgo": f is the second chunk
    (x,) = _plain.rand_maps(1, (B, C_IN, H, W))
    h, c = _plain.rand_maps(2, (B, NH, H, W), seed=3)
    assert_close(a(x, (h, c))[1].c, b(x, (h, c))[1].c)


def test_per_element_peephole_rejects_another_resolution():
    cell = stpl.ConvLSTMCell(C_IN, NH, 3, spatial_size=(H, W), peephole=True)
    cell(torch.randn(B, C_IN, H, W))
    with pytest.raises(
        ValueError, match=r"peephole weights for spatial_size=\(5, 6\); got a map of size \(6, 5\)"
    ):
        cell(torch.randn(B, C_IN, W, H))


@pytest.mark.parametrize("gate_order", ["ifg", "ifgg", "abcd", "IFGO", 0, None])
def test_bad_gate_order(gate_order):
    with pytest.raises(ValueError, match="gate_order must be a permutation of 'ifgo'"):
        stpl.ConvLSTMCell(C_IN, NH, 3, gate_order=gate_order)


def test_extra_repr():
    text = repr(
        stpl.ConvLSTMCell(3, 4, 7, norm="layer", forget_bias=1.0, gate_order="ifog", peephole=True)
    )
    for item in [
        "3, 4",
        "kernel_size=7",
        "norm='layer'",
        "forget_bias=1.0",
        "gate_order='ifog'",
        "peephole=True",
    ]:
        assert item in text


def test_fused_cell_is_one_convolution_of_x_and_h_with_the_same_parameters():
    torch.manual_seed(0)
    split = stpl.ConvLSTMCell(3, 5, 3, bias=True, gate_order="ifog")
    fused = stpl.ConvLSTMCell(3, 5, 3, bias=True, gate_order="ifog", fused=True)
    fused.load_state_dict(split.state_dict())  # same parameter names and shapes
    x, h, c = torch.randn(2, 3, 6, 6), torch.randn(2, 5, 6, 6), torch.randn(2, 5, 6, 6)
    # ndrplz's cell, written plainly: one convolution of cat[x, h], gates (i, f, o, g)
    w = torch.cat([split.conv_x.conv.weight, split.conv_h.conv.weight], 1)
    pre = torch.nn.functional.conv2d(torch.cat([x, h], 1), w, split.conv_x.conv.bias, padding=1)
    i, f, o, g = torch.split(pre, 5, 1)
    c_ref = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    h_ref = torch.sigmoid(o) * torch.tanh(c_ref)
    out, state = fused(x, stpl.LSTMState(h, c))
    assert torch.equal(out, h_ref) and torch.equal(state.c, c_ref)  # bit for bit
    torch.testing.assert_close(split(x, stpl.LSTMState(h, c))[0], h_ref)  # round-off apart
    with pytest.raises(ValueError, match="norm=None"):
        stpl.ConvLSTMCell(3, 5, 3, norm="layer", fused=True)


def test_fused_cell_follows_weight_updates_and_trains():
    torch.manual_seed(0)
    cell = stpl.ConvLSTMCell(2, 3, 3, bias=True, fused=True)
    split = stpl.ConvLSTMCell(2, 3, 3, bias=True)
    split.load_state_dict(cell.state_dict())
    x = torch.randn(2, 2, 5, 5)
    for _ in range(2):  # two training steps: the concatenation must see the update
        for m in (cell, split):
            m.zero_grad()
            h, state = m(x)
            h, _ = m(x, state)
            h.square().sum().backward()
        for (n, a), b in zip(cell.named_parameters(), split.parameters(), strict=True):
            assert_close(a.grad, b.grad, msg=n)
        with torch.no_grad():
            for m in (cell, split):
                for p in m.parameters():
                    p.sub_(0.1 * p.grad)
    assert_close(cell(x)[0], split(x)[0])
