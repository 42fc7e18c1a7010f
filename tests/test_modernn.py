"""DetailContextBlock and MoDeRNNCell against the plain MoDeRNN equations (float64)."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch.testing import assert_close

import _plain
import stpl
from _plain import randomize_

B, C_X, NH, H, W = 2, 3, 4, 5, 6

# DCB options: (kernel_sizes, rounds, scale, reduction, first, share_weights)
DCB_OPTIONS = [
    ((3, 5, 7), 5, 2.0, "mean", "x", True),  # the reference
    ((3, 5, 7), 5, 2.0, "mean", "x", False),
    ((1, 3), 4, 1.5, "sum", "h", False),
    ((1, 3), 4, 1.5, "mean", "h", True),
    ((5,), 3, 1.0, "sum", "x", False),
    ((3, 5), 2, 2.0, "mean", "h", False),
    ((3,), 1, 2.0, "mean", "x", True),
    ((3,), 1, 2.0, "mean", "h", True),
]
NORMS = [(None, None), ("layer", None), ("layer", (H, W))]


def _dcb_kwargs(options):
    kernel_sizes, rounds, scale, reduction, first, share = options
    return {
        "kernel_sizes": kernel_sizes,
        "rounds": rounds,
        "scale": scale,
        "reduction": reduction,
        "first": first,
        "share_weights": share,
    }


def _plain_kwargs(options):
    kw = _dcb_kwargs(options)
    kw["n_kernels"] = len(kw.pop("kernel_sizes"))
    return kw


def _xh(c_x=C_X):
    (x,) = _plain.rand_maps(1, (B, c_x, H, W))
    h, c = _plain.rand_maps(2, (B, NH, H, W), seed=2)
    return x, h, c


# -- Detail Context Block ------------------------------------------------------------------


@pytest.mark.parametrize("options", DCB_OPTIONS)
@pytest.mark.parametrize(("norm", "spatial_size"), NORMS)
def test_dcb_matches_plain_equations(options, norm, spatial_size):
    dcb = stpl.DetailContextBlock(
        C_X, NH, **_dcb_kwargs(options), norm=norm, spatial_size=spatial_size
    )
    randomize_(dcb.double())
    x, h, _ = _xh()
    out = dcb.forward_with_attention(x, h)
    x_ref, h_ref, maps_ref = _plain.dcb(
        dict(dcb.named_parameters()), x, h, **_plain_kwargs(options)
    )
    assert_close(out.x, x_ref)
    assert_close(out.h, h_ref)
    assert len(out.attention) == len(maps_ref) == options[1]
    for got, want in zip(out.attention, maps_ref, strict=True):
        assert_close(got, want)
    assert_close(dcb(x, h), (x_ref, h_ref))


def test_dcb_attention_maps_compose_the_outputs():
    """x_hat = s^n_x · Π(x maps) ⊙ x and likewise for h; maps alternate, x first."""
    dcb = randomize_(stpl.DetailContextBlock(C_X, NH).double())
    x, h, _ = _xh()
    out = dcb.forward_with_attention(x, h)
    shapes = [tuple(a.shape) for a in out.attention]
    assert shapes == [(B, C_X, H, W), (B, NH, H, W)] * 2 + [(B, C_X, H, W)]
    for a in out.attention:
        assert ((a > 0) & (a < 1)).all()
    x_maps, h_maps = out.attention[0::2], out.attention[1::2]
    assert_close(out.x, 2.0**3 * torch.stack(x_maps).prod(0) * x)
    assert_close(out.h, 2.0**2 * torch.stack(h_maps).prod(0) * h)


@pytest.mark.parametrize(
    ("rounds", "first", "n_h", "n_x"), [(5, "x", 3, 2), (4, "h", 2, 2), (1, "h", 0, 1)]
)
def test_dcb_branch_sets(rounds, first, n_h, n_x):
    """h_branches read h and gate x; one set per round without sharing, one in all with it."""
    dcb = stpl.DetailContextBlock(C_X, NH, (3, 5), rounds, first=first, share_weights=False)
    assert (len(dcb.h_branches), len(dcb.x_branches)) == (n_h, n_x)
    for branch_set in dcb.h_branches:
        assert [b.conv.kernel_size for b in branch_set] == [(3, 3), (5, 5)]
        assert (branch_set[0].conv.in_channels, branch_set[0].conv.out_channels) == (NH, C_X)
    for branch_set in dcb.x_branches:
        assert (branch_set[0].conv.in_channels, branch_set[0].conv.out_channels) == (C_X, NH)
    shared = stpl.DetailContextBlock(C_X, NH, (3, 5), rounds, first=first)
    assert (len(shared.h_branches), len(shared.x_branches)) == (min(n_h, 1), min(n_x, 1))


def test_dcb_shared_parameter_count_does_not_depend_on_rounds():
    def count(rounds):
        return sum(p.numel() for p in stpl.DetailContextBlock(C_X, NH, rounds=rounds).parameters())

    assert count(2) == count(5) == count(9)


def test_dcb_unshared_every_round_gets_gradient():
    dcb = randomize_(stpl.DetailContextBlock(C_X, NH, rounds=5, share_weights=False).double())
    x, h, _ = _xh()
    x_hat, h_hat = dcb(x, h)
    r1, r2 = _plain.rand_maps(2, (B, max(C_X, NH), H, W), seed=5)
    ((x_hat * r1[:, :C_X]).sum() + (h_hat * r2[:, :NH]).sum()).backward()
    assert len(list(dcb.parameters())) == 5 * 3 * 3  # 5 rounds x 3 kernels x (conv, LN w, LN b)
    for name, p in dcb.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"kernel_sizes": ()}, "kernel_sizes must be a non-empty sequence"),
        ({"kernel_sizes": 3}, "kernel_sizes must be a non-empty sequence"),
        ({"kernel_sizes": (3, 4)}, "kernel_sizes must be a positive odd int"),
        ({"kernel_sizes": (0,)}, "kernel_sizes must be a positive odd int"),
        ({"rounds": 0}, "rounds must be a positive int"),
        ({"reduction": "max"}, "reduction must be 'mean' or 'sum'"),
        ({"first": "c"}, "first must be 'x' or 'h'"),
        ({"norm": "group"}, "norm must be None or 'layer'"),
    ],
)
def test_dcb_bad_options(kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        stpl.DetailContextBlock(C_X, NH, **kwargs)


def test_dcb_bad_inputs():
    dcb = stpl.DetailContextBlock(C_X, NH)
    x, h = torch.randn(B, C_X, H, W), torch.randn(B, NH, H, W)
    with pytest.raises(ValueError, match=r"x must have 3 channels"):
        dcb(h, h)
    with pytest.raises(ValueError, match=r"h must be \(B, C, H, W\) = \(2, 4, 5, 6\)"):
        dcb(x, x)
    with pytest.raises(ValueError, match=r"h must be .*got shape \(1, 4, 5, 6\)"):
        dcb(x, h[:1])
    with pytest.raises(ValueError, match=r"x must be \(B, C, H, W\)"):
        dcb(x[0], h)


def test_dcb_extra_repr():
    text = repr(
        stpl.DetailContextBlock(
            3, 4, (1, 3), 4, 1.5, reduction="sum", first="h", share_weights=False
        )
    )
    for item in [
        "3, 4",
        "kernel_sizes=(1, 3)",
        "rounds=4",
        "scale=1.5",
        "norm='layer'",
        "reduction='sum'",
        "first='h'",
        "share_weights=False",
    ]:
        assert item in text


# -- MoDeRNN cell --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("norm", "spatial_size", "forget_bias", "options"),
    [
        (*n, *rest)
        for n, *rest in itertools.product(NORMS, [1.0, 0.0], [DCB_OPTIONS[0], DCB_OPTIONS[2]])
    ],
)
def test_cell_matches_plain_equations(norm, spatial_size, forget_bias, options):
    dcb_kwargs = {f"dcb_{k}": v for k, v in _dcb_kwargs(options).items()}
    cell = stpl.MoDeRNNCell(
        C_X, NH, 3, norm=norm, spatial_size=spatial_size, forget_bias=forget_bias, **dcb_kwargs
    )
    randomize_(cell.double())
    x, h, c = _xh()
    out = cell.forward_with_attention(x, stpl.LSTMState(h, c))
    h_ref, c_ref, maps_ref = _plain.modernn(
        dict(cell.named_parameters()), x, h, c, forget_bias=forget_bias, **_plain_kwargs(options)
    )
    assert_close(out.h, h_ref)
    assert_close(out.state.h, h_ref)
    assert_close(out.state.c, c_ref)
    assert_close(out.attention, tuple(maps_ref))
    assert_close(cell(x, stpl.LSTMState(h, c)), (h_ref, stpl.LSTMState(h_ref, c_ref)))


def test_cell_norm_none_has_no_layer_norms():
    cell = stpl.MoDeRNNCell(C_X, NH, 3, norm=None)
    assert cell.norm_cell is None
    assert not any(isinstance(m, stpl.LayerNorm2d) for m in cell.modules())
    assert cell.dcb.norm is None


def test_cell_parameter_count_matches_reference():
    """Section 3e: one reference cell, nh 64, img 16, k3 -> 1,466,368 (491,520 LN affine)."""
    cell = stpl.MoDeRNNCell(64, 64, 3, spatial_size=(16, 16))
    assert sum(p.numel() for p in cell.parameters()) == 1_466_368
    ln = sum(
        p.numel() for m in cell.modules() if isinstance(m, stpl.LayerNorm2d) for p in m.parameters()
    )
    assert ln == 491_520


def test_cell_extra_repr():
    text = repr(stpl.MoDeRNNCell(3, 4, 3, forget_bias=0.5, dcb_rounds=4, dcb_scale=1.5))
    for item in [
        "3, 4",
        "kernel_size=3",
        "norm='layer'",
        "forget_bias=0.5",
        "rounds=4",
        "scale=1.5",
    ]:
        assert item in text
