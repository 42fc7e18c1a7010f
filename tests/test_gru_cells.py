"""The same battery for both GRU cells (ConvGRU, TrajGRU): state handling, steps without input,
gradients, dtypes, autocast, compile, layout, registry and errors. The equations themselves
(plain re-statements and golden vectors) are in ``test_convgru.py`` / ``test_trajgru.py``."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor, nn
from torch.testing import assert_close

import stpl
from _plain import randomize_

B, C_IN, NH, H, W = 2, 3, 4, 5, 7

CELLS = {
    "convgru": lambda c_in=C_IN, nh=NH, k=3, **kw: stpl.ConvGRUCell(c_in, nh, k, **kw),
    "trajgru": lambda c_in=C_IN, nh=NH, k=3, **kw: stpl.TrajGRUCell(
        c_in, nh, k, **{"links": 3, "flow_channels": 5, **kw}
    ),
}
NAMES = list(CELLS)
cell_names = pytest.mark.parametrize("name", NAMES)


def build(name: str, **kw) -> nn.Module:
    torch.manual_seed(0)
    return randomize_(CELLS[name](**kw))


def maps(*shape: int, seed: int = 0, dtype=torch.float32) -> Tensor:
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype) * 2 - 1


def x_(seed: int = 0, dtype=torch.float32, b: int = B, c: int = C_IN) -> Tensor:
    return maps(b, c, H, W, seed=seed, dtype=dtype)


def h_(seed: int = 7, dtype=torch.float32) -> stpl.GRUState:
    return stpl.GRUState(maps(B, NH, H, W, seed=seed, dtype=dtype))


def run(cell: nn.Module, xs: list[Tensor | None], state) -> tuple[list[Tensor], stpl.GRUState]:
    hs = []
    for x in xs:
        h, state = cell(x, state)
        hs.append(h)
    return hs, state


@cell_names
def test_registered_with_the_cell_protocol(name):
    cls = {"convgru": stpl.ConvGRUCell, "trajgru": stpl.TrajGRUCell}[name]
    assert stpl.CELLS[name] is cls
    cell = cls(C_IN, NH, 5)
    assert isinstance(cell, stpl.cells.RecurrentCell)
    assert cell.state_type is stpl.GRUState
    assert (cell.in_channels, cell.hidden_channels) == (C_IN, NH)
    h, state = cell(x_())
    assert isinstance(state, stpl.GRUState) and h is state.h and h.shape == (B, NH, H, W)


@cell_names
def test_state_none_equals_the_explicit_zero_state(name):
    cell = build(name)
    zero = cell.initial_state(x_())
    assert torch.equal(zero.h, torch.zeros(B, NH, H, W))
    assert_close(cell(x_(), None), cell(x_(), zero), rtol=0, atol=0)


@cell_names
def test_steps_without_input_need_a_state_and_drop_the_input_terms(name):
    cell = build(name)
    with pytest.raises(ValueError, match=r"state must be given for a step without input"):
        cell(None)
    h, _ = cell(None, h_())
    assert h.shape == (B, NH, H, W)
    # the input weights play no part in a step without input
    other = build(name)
    other.load_state_dict(cell.state_dict())
    with torch.no_grad():
        other.i2h.weight.add_(1.0)
    assert_close(other(None, h_())[0], h, rtol=0, atol=0)
    assert not torch.allclose(other(x_(), h_())[0], cell(x_(), h_())[0])


@cell_names
def test_a_cell_without_input_weights(name):
    cell = CELLS[name](0, NH)
    assert cell.i2h is None
    assert all(not n.startswith(("i2h", "i2f")) for n, _ in cell.named_parameters())
    h, _ = cell(None, h_())
    assert h.shape == (B, NH, H, W)
    with pytest.raises(ValueError, match=r"x must be None: this cell was built with in_channels=0"):
        cell(x_(), h_())


@cell_names
def test_carried_state_equals_one_loop(name):
    """T steps (with and without input) in one loop == two chunks run by a fresh copy."""
    cell = build(name)
    xs = [x_(s) for s in range(3)] + [None, None]
    hs, final = run(cell, xs, h_())
    hs_a, mid = run(cell, xs[:2], h_())
    fresh = CELLS[name]()
    fresh.load_state_dict(cell.state_dict())
    hs_b, final_b = run(fresh, xs[2:], mid)
    assert_close(hs_a + hs_b, hs)
    assert_close(final_b.h, final.h)
    assert not torch.allclose(hs[-1], hs[-2])


@cell_names
@pytest.mark.parametrize("with_input", [True, False])
def test_gradcheck_input_and_state(name, with_input):
    cell = build(name, c_in=2, nh=2).double()
    x = maps(1, 2, 4, 5, seed=1, dtype=torch.float64).requires_grad_()
    h = maps(1, 2, 4, 5, seed=2, dtype=torch.float64).requires_grad_()
    if with_input:
        assert torch.autograd.gradcheck(lambda x, h: cell(x, (h,))[0], (x, h), fast_mode=True)
    else:
        assert torch.autograd.gradcheck(lambda h: cell(None, (h,))[0], (h,), fast_mode=True)


@cell_names
def test_every_parameter_gets_a_gradient(name):
    cell = build(name)
    h, _ = cell(x_(), h_())
    (h * maps(*h.shape, seed=11)).sum().backward()
    for pname, p in cell.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, pname


@cell_names
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_dtypes_forward_backward(name, dtype):
    cell = CELLS[name]().to(dtype)
    xs = [x_(s, dtype).requires_grad_() for s in range(2)]
    hs, state = run(cell, [*xs, None], None)
    for t in (*hs, state.h):
        assert t.dtype == dtype and torch.isfinite(t).all()
    sum(h.float().sum() for h in hs).backward()
    assert all(torch.isfinite(p.grad).all() for p in cell.parameters() if p.grad is not None)


@cell_names
def test_autocast_bfloat16_is_close_to_float32(name):
    """Under CPU autocast the steps run in bfloat16 (the warp's grid in float32) and stay
    within bfloat16 round-off of the float32 steps; a bfloat16 state goes back in."""
    cell = build(name)
    xs = [x_(s) for s in range(3)]
    want, _ = run(cell, [*xs, None], h_())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got, state = run(cell, [*xs, None], h_())
        again, _ = cell(xs[0], stpl.GRUState(state.h.bfloat16()))
    assert all(g.dtype in (torch.bfloat16, torch.float32) for g in got)  # promoted with h
    for g, w in zip(got, want, strict=True):
        assert (g.float() - w).abs().max() < 0.05
    assert torch.isfinite(again).all()
    sum(h.float().sum() for h in got).backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in cell.parameters())


@cell_names
def test_compile_fullgraph_matches_eager(name):
    torch._dynamo.reset()
    cell = build(name)
    compiled = torch.compile(cell, fullgraph=True, backend="aot_eager")
    h, state = compiled(x_(), None)
    assert_close((h, state), cell(x_(), None))
    assert_close(compiled(None, state), cell(None, state))
    assert_close(compiled(x_(1), state), cell(x_(1), state))


@cell_names
def test_channels_last_gives_the_same_result(name):
    cell = build(name)
    x_cl = x_().contiguous(memory_format=torch.channels_last)
    assert cell.initial_state(x_cl).h.is_contiguous(memory_format=torch.channels_last)
    h_cl = stpl.GRUState(h_().h.contiguous(memory_format=torch.channels_last))
    assert_close(cell(x_cl, h_cl), cell(x_(), h_()))


@cell_names
@settings(max_examples=6, deadline=None)
@given(
    b=st.integers(1, 2),
    c_in=st.integers(1, 3),
    nh=st.integers(1, 3),
    h=st.sampled_from([1, 2, 5]),
    w=st.sampled_from([1, 3, 6]),
    k=st.sampled_from([1, 3, 5]),
)
def test_shapes_and_finite(name, b, c_in, nh, h, w, k):
    cell = CELLS[name](c_in, nh, k)
    x = torch.rand(b, c_in, h, w)
    out, state = cell(x)
    out, state = cell(None, state)
    assert out.shape == (b, nh, h, w) and torch.isfinite(out).all()


@cell_names
def test_hko7_initialisation(name):
    torch.manual_seed(0)
    cell = CELLS[name](C_IN, 16, 5, init="hko7")
    for pname, p in cell.named_parameters():
        if pname.endswith("bias") or pname.startswith("flows_conv"):
            assert torch.equal(p, torch.zeros_like(p)), pname
        else:  # MSRAPrelu(0.2): N(0, 2 / 1.04 / ((fan_in + fan_out) / 2))
            k2 = p[0, 0].numel()
            std = (2 / 1.04 / ((p.shape[0] + p.shape[1]) * k2 / 2)) ** 0.5
            assert abs(p.std().item() / std - 1) < 0.15, pname
    before = {n: p.clone() for n, p in cell.named_parameters()}
    cell.reset_parameters()  # draws again, with the same rule
    assert not torch.equal(cell.i2h.weight, before["i2h.weight"])
    assert torch.equal(cell.i2h.bias, torch.zeros_like(cell.i2h.bias))


def test_trajgru_random_flows_under_hko7_init_when_asked():
    cell = stpl.TrajGRUCell(C_IN, NH, 5, init="hko7", zero_init_flows=False)
    assert cell.flows_conv.weight.abs().sum() > 0
    assert "zero_init_flows=False" in repr(cell)


@cell_names
def test_meta_device_then_reset(name):
    cell = CELLS[name](device="meta")
    assert all(p.device.type == "meta" for p in cell.parameters())
    cell = cell.to_empty(device="cpu")
    cell.reset_parameters()
    assert all(torch.isfinite(p).all() for p in cell.parameters())
    assert all(p.dtype == torch.float64 for p in CELLS[name](dtype=torch.float64).parameters())


# -- errors --------------------------------------------------------------------------------


@cell_names
def test_error_messages_name_the_argument(name):
    cell = CELLS[name]()
    with pytest.raises(ValueError, match=r"x must be \(B, C, H, W\) with C=3; got shape \(3, 5,"):
        cell(x_()[0])
    with pytest.raises(ValueError, match=r"x must have 3 channels.*got shape \(2, 4, 5, 7\)"):
        cell(x_(c=4))
    with pytest.raises(ValueError, match=r"x must be a floating tensor"):
        cell(x_().long())
    with pytest.raises(ValueError, match=r"state\.h must be \(B, C, H, W\) = \(2, 4, 5, 7\)"):
        cell(x_(), stpl.GRUState(torch.zeros(3, NH, H, W)))
    with pytest.raises(ValueError, match=r"state\.h must be \(B, 4, H, W\); got shape \(2, 5,"):
        cell(None, stpl.GRUState(torch.zeros(B, NH + 1, H, W)))
    with pytest.raises(ValueError, match=r"state must be a GRUState\(h\); got a LSTMState"):
        cell(x_(), stpl.LSTMState(h_().h, h_().h))
    with pytest.raises(TypeError, match=r"state\.h must be a torch\.Tensor; got list"):
        cell(None, ([1.0],))


@cell_names
@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"k": 4}, r"kernel_size must be a positive odd int"),
        ({"c_in": -1}, r"in_channels must be an int >= 0; got -1"),
        ({"nh": 0}, r"hidden_channels must be a positive int; got 0"),
        ({"i2h_kernel_size": 2}, r"i2h_kernel_size must be a positive odd int"),
        ({"activation": "relu"}, r"activation must be one of 'leaky', 'tanh'; got 'relu'"),
        ({"init": "xavier"}, r"init must be one of 'pytorch', 'hko7'"),
        ({"negative_slope": float("nan")}, r"negative_slope must be a finite number"),
    ],
)
def test_bad_options(name, kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        CELLS[name](**kwargs)


def test_trajgru_bad_options():
    with pytest.raises(ValueError, match=r"links must be a positive int; got 0"):
        stpl.TrajGRUCell(1, 2, links=0)
    with pytest.raises(ValueError, match=r"align_corners must be True or False; got 'yes'"):
        stpl.TrajGRUCell(1, 2, align_corners="yes")
    with pytest.raises(ValueError, match=r"flow_kernel_size must be a positive odd int"):
        stpl.TrajGRUCell(1, 2, flow_kernel_size=4)


@cell_names
def test_extra_repr_has_the_hyper_parameters(name):
    text = repr(CELLS[name](k=5))
    for item in [f"{C_IN}, {NH}", "kernel_size=5", "activation='leaky'", "init='pytorch'"]:
        assert item in text
    if name == "trajgru":
        assert "links=3" in text and "align_corners=True" in text and "(unused)" in text
