"""The same battery for every cell: state handling, gradients, dtypes, compile, shapes, errors."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor, nn
from torch.testing import assert_close

import _plain
import stpl
from _plain import randomize_

B, C_IN, NH, C_A, H, W = 2, 3, 4, 2, 5, 7


@dataclass(frozen=True)
class Case:
    """A cell class with the options that this configuration exercises."""

    cls: type[nn.Module]
    options: dict[str, Any] = field(default_factory=dict)

    def build(self, c_in: int = C_IN, nh: int = NH, k: int = 3, **kw: Any) -> nn.Module:
        return self.cls(c_in, nh, k, **{**self.options, **kw})

    def inputs(
        self, b: int = B, c_in: int = C_IN, h: int = H, w: int = W, dtype=torch.float32, seed=0
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """``(x, the extra keyword arguments of forward)``."""
        (x,) = _plain.rand_maps(1, (b, c_in, h, w), dtype=dtype, seed=seed)
        c_a = self.options.get("action_channels")
        if c_a is None:
            return x, {}
        (a,) = _plain.rand_maps(1, (b, c_a, h, w), dtype=dtype, seed=seed + 100)
        return x, {"action": a}


CASES = {
    "convlstm": Case(stpl.ConvLSTMCell),
    "convlstm-ln-peephole": Case(
        stpl.ConvLSTMCell, {"norm": "layer", "peephole": True, "bias": True, "forget_bias": 1.0}
    ),
    "stlstm": Case(stpl.STLSTMCell, {"norm": "layer"}),
    "stlstm-action": Case(stpl.STLSTMCell, {"bias": True, "action_channels": C_A}),
    "modernn": Case(stpl.MoDeRNNCell),
    "modernn-unshared": Case(
        stpl.MoDeRNNCell, {"dcb_share_weights": False, "dcb_rounds": 4, "dcb_first": "h"}
    ),
}
NAMES = list(CASES)
cell_names = pytest.mark.parametrize("name", NAMES)


def random_state(cell: nn.Module, x: Tensor, seed: int = 7):
    zero = cell.initial_state(x)
    maps = _plain.rand_maps(len(zero), zero[0].shape, dtype=x.dtype, seed=seed)
    return type(zero)(*maps)


def run(cell: nn.Module, xs: list[Tensor], state, extra: dict[str, Tensor]):
    hs = []
    for x in xs:
        h, state = cell(x, state, **extra)
        hs.append(h)
    return hs, state


@cell_names
def test_attributes_and_state_type(name):
    case = CASES[name]
    cell = case.build()
    assert (cell.in_channels, cell.hidden_channels) == (C_IN, NH)
    x, extra = case.inputs()
    h, state = cell(x, **extra)
    expected_type = stpl.STLSTMState if name.startswith("stlstm") else stpl.LSTMState
    assert isinstance(state, expected_type)
    assert h is state.h
    for t in state:
        assert t.shape == (B, NH, H, W)


@cell_names
def test_state_none_equals_explicit_zero_state(name):
    case = CASES[name]
    cell = randomize_(case.build())
    x, extra = case.inputs()
    zero = cell.initial_state(x)
    assert all(torch.equal(t, torch.zeros(B, NH, H, W)) for t in zero)
    h_none, s_none = cell(x, None, **extra)
    h_zero, s_zero = cell(x, zero, **extra)
    assert_close(h_none, h_zero, rtol=0, atol=0)
    assert_close(tuple(s_none), tuple(s_zero), rtol=0, atol=0)


@cell_names
def test_carried_state_equals_one_loop(name):
    """T steps in one loop == two chunks, the second run by a fresh copy of the cell that only
    receives the handed-over state (so nothing may hide on the module between steps)."""
    case = CASES[name]
    cell = randomize_(case.build())
    xs = [case.inputs(seed=s)[0] for s in range(5)]
    _, extra = case.inputs()
    hs, final = run(cell, xs, None, extra)
    hs_a, mid = run(cell, xs[:2], None, extra)
    fresh = case.build()
    fresh.load_state_dict(cell.state_dict())
    hs_b, final_b = run(fresh, xs[2:], mid, extra)
    assert_close(hs_a + hs_b, hs)
    assert_close(tuple(final_b), tuple(final))
    assert not torch.allclose(hs[-1], hs[1])  # the inputs differ, so the steps do


@cell_names
def test_gradcheck_input_and_state(name):
    case = CASES[name]
    cell = randomize_(case.build(2, 3, 3).double())
    x, extra = case.inputs(1, 2, 4, 5, dtype=torch.float64)
    state = random_state(cell, x)
    inputs = (x, *state, *extra.values())
    inputs = tuple(t.detach().requires_grad_() for t in inputs)
    n_state = len(state)

    def step(x, *rest):
        state = type(cell.initial_state(x))(*rest[:n_state])
        kw = {"action": rest[n_state]} if extra else {}
        h, new = cell(x, state, **kw)
        return (h, *new)

    assert torch.autograd.gradcheck(step, inputs, fast_mode=True)


@cell_names
def test_every_parameter_gets_a_gradient(name):
    case = CASES[name]
    cell = randomize_(case.build())
    x, extra = case.inputs()
    state = random_state(cell, x)  # zero h would give conv_h no gradient
    _, new = cell(x, state, **extra)
    weights = _plain.rand_maps(len(new), new[0].shape, seed=11)
    sum((t * w).sum() for t, w in zip(new, weights, strict=True)).backward()
    for pname, p in cell.named_parameters():
        assert p.grad is not None, pname
        assert p.grad.abs().sum() > 0, pname


def two_steps_with_grads(cell: nn.Module, case: Case, dtype: torch.dtype, autocast: bool = False):
    """Two steps from ``state=None`` on inputs in ``dtype`` (under CPU bf16 autocast if
    asked), then backward of the sum of the outputs: ``(outputs, param grads, input grads)``."""
    xs = [case.inputs(dtype=dtype, seed=s)[0].requires_grad_() for s in range(2)]
    _, extra = case.inputs(dtype=dtype)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        hs, state = run(cell, xs, None, extra)
    sum(h.float().sum() for h in hs).backward()
    return [*hs, *state], [p.grad for p in cell.parameters()], [x.grad for x in xs]


@cell_names
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_dtypes_forward_backward(name, dtype):
    """The cell converted to dtype, inputs in dtype: outputs in dtype, and outputs and
    gradients bounded against the same weights and inputs in float32."""
    case = CASES[name]
    torch.manual_seed(0)
    base = case.build()
    ref = two_steps_with_grads(copy.deepcopy(base), case, torch.float32)
    cell = copy.deepcopy(base).to(dtype)
    outs, pgrads, xgrads = two_steps_with_grads(cell, case, dtype)
    for t in outs:
        assert t.dtype == dtype
    for (pname, _), low, f32 in zip(cell.named_parameters(), pgrads, ref[1], strict=True):
        assert (low is None) == (f32 is None), pname
        assert low is None or torch.isfinite(low).all(), pname
    if dtype == torch.bfloat16:
        for low, f32 in zip(outs, ref[0], strict=True):
            _plain.assert_bf16_close(low, f32, _plain.BF16_OUTPUT_RTOL, "output")
        grads, f32_grads = _plain.flat(pgrads), _plain.flat(ref[1])
        _plain.assert_bf16_close(grads, f32_grads, _plain.BF16_GRAD_RTOL, "parameter grads")
        for low, f32 in zip(xgrads, ref[2], strict=True):
            _plain.assert_bf16_close(low, f32, _plain.BF16_GRAD_RTOL, "input grad")
    else:  # float32 is the reference itself; float64 agrees to float32 rounding
        tol = {"rtol": 1e-4, "atol": 1e-5}
        assert_close([t.float() for t in outs], ref[0], **tol)
        assert_close([g.float() for g in xgrads], ref[2], **tol)
        assert_close(
            [g.float() for g in pgrads if g is not None],
            [g for g in ref[1] if g is not None],
            **tol,
        )


@cell_names
def test_autocast_bfloat16_two_steps(name):
    """A float32 cell under CPU autocast, bounded against the same cell in float32; the state
    (low precision or not) is carried."""
    case = CASES[name]
    torch.manual_seed(0)
    base = case.build()
    ref = two_steps_with_grads(copy.deepcopy(base), case, torch.float32)
    cell = copy.deepcopy(base)
    outs, pgrads, xgrads = two_steps_with_grads(cell, case, torch.float32, autocast=True)
    for t, f32 in zip(outs, ref[0], strict=True):
        assert t.dtype in (torch.bfloat16, torch.float32)
        _plain.assert_bf16_close(t, f32, _plain.BF16_OUTPUT_RTOL, "output")
    for (pname, _), g in zip(cell.named_parameters(), pgrads, strict=True):
        assert g is not None and g.dtype == torch.float32 and torch.isfinite(g).all(), pname
    grads, f32_grads = _plain.flat(pgrads), _plain.flat(ref[1])
    _plain.assert_bf16_close(grads, f32_grads, _plain.BF16_GRAD_RTOL, "parameter grads")
    for g, f32 in zip(xgrads, ref[2], strict=True):
        _plain.assert_bf16_close(g, f32, _plain.BF16_GRAD_RTOL, "input grad")
    # a state that came out entirely in bfloat16 goes back in with a float32 input
    x, extra = case.inputs()
    state = ref[0][2:]
    low_state = type(cell.initial_state(x))(*(t.detach().bfloat16() for t in state))
    with torch.no_grad():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            h_low, _ = cell(x, low_state, **extra)
        h_ref, _ = base(x, type(low_state)(*(t.float() for t in low_state)), **extra)
    _plain.assert_bf16_close(h_low, h_ref, _plain.BF16_OUTPUT_RTOL, "h from a bf16 state")


# one configuration per cell class, the one that exercises the most options (compile is slow)
@pytest.mark.parametrize("name", ["convlstm-ln-peephole", "stlstm-action", "modernn-unshared"])
def test_compile_fullgraph_matches_eager(name):
    """No graph break: a step from state=None and one from a given state equal eager."""
    torch._dynamo.reset()
    case = CASES[name]
    cell = randomize_(case.build())
    x, extra = case.inputs()
    compiled = torch.compile(cell, fullgraph=True, backend="eager")
    h, state = compiled(x, None, **extra)
    assert_close((h, state), cell(x, None, **extra))
    assert_close(compiled(x, state, **extra), cell(x, state, **extra))


@pytest.mark.slow
def test_compile_inductor_convlstm():
    torch._dynamo.reset()
    cell = randomize_(stpl.ConvLSTMCell(C_IN, NH, 3, norm="layer"))
    x, _ = CASES["convlstm"].inputs()
    state = random_state(cell, x)
    compiled = torch.compile(cell, fullgraph=True)
    assert_close(compiled(x, state), cell(x, state))


@cell_names
@settings(max_examples=6, deadline=None)
@given(
    b=st.integers(1, 2),
    c_in=st.integers(1, 3),
    nh=st.integers(1, 3),
    h=st.sampled_from([1, 3, 5, 9]),
    w=st.sampled_from([3, 7, 11]),
    k=st.sampled_from([1, 3, 5]),
)
def test_shapes_and_finite(name, b, c_in, nh, h, w, k):
    case = CASES[name]
    cell = case.build(c_in, nh, k)
    x, extra = case.inputs(b, c_in, h, w)
    out, state = cell(x, **extra)
    out, state = cell(x, state, **extra)
    assert out.shape == (b, nh, h, w)
    for t in state:
        assert t.shape == (b, nh, h, w)
        assert torch.isfinite(t).all()


@cell_names
def test_channels_last(name):
    case = CASES[name]
    cell = randomize_(case.build())
    x, extra = case.inputs()
    x_cl = x.contiguous(memory_format=torch.channels_last)
    assert not x_cl.is_contiguous()
    zero = cell.initial_state(x_cl)
    assert all(t.is_contiguous(memory_format=torch.channels_last) for t in zero)
    assert all(t.is_contiguous() for t in cell.initial_state(x))
    assert_close(cell(x_cl, **extra), cell(x, **extra))
    state = random_state(cell, x)
    state_cl = type(state)(*(t.contiguous(memory_format=torch.channels_last) for t in state))
    assert_close(cell(x_cl, state_cl, **extra), cell(x, state, **extra))


# -- errors --------------------------------------------------------------------------------


@cell_names
def test_error_wrong_rank(name):
    case = CASES[name]
    cell = case.build()
    x, extra = case.inputs()
    with pytest.raises(
        ValueError, match=r"x must be \(B, C, H, W\) with C=3; got shape \(3, 5, 7\)"
    ):
        cell(x[0], **extra)
    with pytest.raises(ValueError, match=r"x must be \(B, C, H, W\).*got shape \(1, 2, 3, 5, 7\)"):
        cell(x[None], **extra)


@cell_names
def test_error_wrong_channels(name):
    case = CASES[name]
    cell = case.build()
    x, extra = case.inputs(c_in=C_IN + 1)
    with pytest.raises(
        ValueError, match=r"x must have 3 channels, \(B, 3, H, W\); got shape \(2, 4, 5, 7\)"
    ):
        cell(x, **extra)


@cell_names
@pytest.mark.parametrize(
    ("change", "pattern"),
    [
        (
            "batch",
            r"state\.h must be \(B, C, H, W\) = \(2, 4, 5, 7\) to match the input; "
            r"got shape \(3, 4, 5, 7\)",
        ),
        ("spatial", r"state\.h must be .*\(2, 4, 5, 7\).*got shape \(2, 4, 6, 7\)"),
        ("channels", r"state\.h must be .*got shape \(2, 5, 5, 7\)"),
        ("dtype", r"state\.h has dtype torch\.float64, but the input has dtype torch\.float32"),
        ("last", r"state\.(c|m) must be .*got shape \(3, 4, 5, 7\)"),
    ],
)
def test_error_bad_state(name, change, pattern):
    case = CASES[name]
    cell = case.build()
    x, extra = case.inputs()
    good = list(random_state(cell, x))
    bad = {
        "batch": torch.zeros(B + 1, NH, H, W),
        "spatial": torch.zeros(B, NH, H + 1, W),
        "channels": torch.zeros(B, NH + 1, H, W),
        "dtype": torch.zeros(B, NH, H, W, dtype=torch.float64),
        "last": torch.zeros(B + 1, NH, H, W),
    }[change]
    if change == "last":
        good[-1] = bad
    else:
        good[0] = bad
    with pytest.raises(ValueError, match=pattern):
        cell(x, type(cell.initial_state(x))(*good), **extra)


@cell_names
def test_error_state_not_a_tensor(name):
    case = CASES[name]
    cell = case.build()
    x, extra = case.inputs()
    state = list(cell.initial_state(x))
    state[0] = state[0].tolist()
    with pytest.raises(TypeError, match=r"state\.h must be a torch\.Tensor; got list"):
        cell(x, state, **extra)


@cell_names
def test_error_integer_input(name):
    case = CASES[name]
    cell = case.build()
    x, extra = case.inputs()
    with pytest.raises(ValueError, match=r"x must be a floating tensor; got dtype torch\.int64"):
        cell(x.long(), **extra)


@cell_names
@pytest.mark.parametrize("k", [0, 2, 4, -1])
def test_error_bad_kernel_size(name, k):
    with pytest.raises(ValueError, match=rf"kernel_size must be a positive odd int .*got {k}"):
        CASES[name].build(k=k)


@cell_names
@pytest.mark.parametrize(("arg", "value"), [("in_channels", 0), ("hidden_channels", -2)])
def test_error_bad_channels(name, arg, value):
    sizes = {"in_channels": C_IN, "hidden_channels": NH, arg: value}
    with pytest.raises(ValueError, match=rf"{arg} must be a positive int; got {value}"):
        CASES[name].build(sizes["in_channels"], sizes["hidden_channels"])


@cell_names
@pytest.mark.parametrize("norm", ["batch", "group", True])
def test_error_bad_norm(name, norm):
    with pytest.raises(ValueError, match=r"norm must be None or 'layer'; got"):
        CASES[name].build(norm=norm)


@cell_names
def test_error_per_element_layer_norm_at_another_resolution(name):
    case = CASES[name]
    cell = case.build(norm="layer", spatial_size=(H, W))
    x, extra = case.inputs()
    cell(x, **extra)  # the resolution it was built for works
    x, extra = case.inputs(h=H + 2)
    with pytest.raises(ValueError, match=r"spatial_size=\(5, 7\); got a map of size \(7, 7\)"):
        cell(x, **extra)


@cell_names
def test_extra_repr_has_hyper_parameters(name):
    text = repr(CASES[name].build(k=5))
    for item in [f"{C_IN}, {NH}", "kernel_size=5", "norm=", "forget_bias="]:
        assert item in text
