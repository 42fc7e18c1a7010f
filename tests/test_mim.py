"""MIM: MIMN, MIMBlock and the MIM model against the plain equations of
``reference-implementations.md`` section 4b (float64, written here with ``F.conv2d``), the
golden file of OpenSTL's ``MIM_Model`` and the reference's never-reset MIM-S state."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.testing import assert_close
from torch.utils._pytree import tree_flatten

import _plain
import stpl
import stpl.export as sx
from _plain import randomize_
from stpl.interop import convert_state_dict, load_reference

GOLDEN = Path(__file__).parent / "data" / "golden" / "model_openstl_mim.pt"
B, C_IN, NH, H, W = 2, 3, 4, 5, 6


# -- the plain equations (section 4b), over our parameter names ------------------------------


def gate(p: dict[str, Tensor], name: str, x: Tensor) -> Tensor:
    return _plain.gate_conv(p, name, x)


def mimn(p: dict[str, Tensor], pre: str, x: Tensor, h: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
    """OpenSTL ``MIMN.forward`` / ``MIMBlock.MIMS``: gate order i, g, f, o; peepholes."""
    i_h, g_h, f_h, o_h = torch.chunk(gate(p, f"{pre}conv_h", h), 4, 1)
    i_x, g_x, f_x, o_x = torch.chunk(gate(p, f"{pre}conv_x", x), 4, 1)
    w_ci, w_cf, w_co = p[f"{pre}peephole_weight"]  # ct_weight = [w_ci; w_cf], oc_weight = w_co
    i = torch.sigmoid(i_h + w_ci * c + i_x)
    f = torch.sigmoid(f_h + w_cf * c + f_x + 1.0)
    c_new = f * c + i * torch.tanh(g_h + g_x)
    h_new = torch.sigmoid(o_h + o_x + w_co * c_new) * torch.tanh(c_new)
    return h_new, c_new


def block(p, pre, x, d, h, c, m, s, *, detach=False):
    """OpenSTL ``MIMBlock.forward``; returns ``(h', c', m', s')``."""
    i_t, g_t, o_t = torch.chunk(gate(p, f"{pre}conv_h", h), 3, 1)
    i_s, g_s, f_s, o_s = torch.chunk(gate(p, f"{pre}conv_m", m), 4, 1)
    i_x, g_x, f_x, o_x = torch.chunk(gate(p, f"{pre}conv_x", x), 4, 1)
    m_new = torch.sigmoid(f_x + f_s + 1.0) * m + torch.sigmoid(i_x + i_s) * torch.tanh(g_x + g_s)
    t, s_new = mimn(p, f"{pre}stationary.", d, c, s.detach() if detach else s)
    c_new = t + torch.sigmoid(i_x + i_t) * torch.tanh(g_x + g_t)
    mem = torch.cat([c_new, m_new], 1)
    h_new = torch.sigmoid(o_x + o_t + o_s) * torch.tanh(F.conv2d(mem, p[f"{pre}conv_last.weight"]))
    return h_new, c_new, m_new, s_new


def plain_mim(model, frames, context, s0=None, *, detach=False):
    """OpenSTL ``MIM_Model.forward`` written out: predictions (B, T-1, C, H, W) and final s."""
    p = dict(model.named_parameters())
    steps = stpl.patchify(frames, model.patch_size)
    b, t, _, hh, ww = steps.shape
    n_layers, nh = model.num_layers, model.hidden_channels[0]
    z = steps.new_zeros(b, nh, hh, ww)
    h, c = [z] * n_layers, [z] * n_layers
    s = list(s0) if s0 is not None else [z] * (n_layers - 1)
    diff_h, diff_c = [None] * (n_layers - 1), [None] * (n_layers - 1)
    memory = z
    preds = []
    x_gen = None
    for step in range(t - 1):
        x = steps[:, step] if step < context else x_gen
        pre_h = h[0]
        h[0], c[0], memory, *_ = _plain.stlstm(
            {k[len("cells.0.") :]: v for k, v in p.items() if k.startswith("cells.0.")},
            x,
            h[0],
            c[0],
            memory,
        )
        for layer in range(1, n_layers):
            if step > 0:
                inp = h[0] - pre_h if layer == 1 else diff_h[layer - 2]
                hd = diff_h[layer - 1] if diff_h[layer - 1] is not None else z
                cd = diff_c[layer - 1] if diff_c[layer - 1] is not None else z
                diff_h[layer - 1], diff_c[layer - 1] = mimn(p, f"mimn.{layer - 1}.", inp, hd, cd)
            d = diff_h[layer - 1] if diff_h[layer - 1] is not None else z
            h[layer], c[layer], memory, s[layer - 1] = block(
                p,
                f"cells.{layer}.",
                h[layer - 1],
                d,
                h[layer],
                c[layer],
                memory,
                s[layer - 1],
                detach=detach,
            )
        x_gen = F.conv2d(h[-1], p["decoder.weight"])
        preds.append(x_gen)
    return stpl.unpatchify(torch.stack(preds, 1), model.patch_size), s


def frames_for(model, b=B, t=6, size=8, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(b, t, model.in_channels, size, size, generator=gen, dtype=torch.float64)


def small_mim(**kw):
    options = {"hidden_channels": 4, "num_layers": 4, "patch_size": 2, "kernel_size": 3}
    options.update(kw)
    return randomize_(stpl.MIM(**options).double())


# -- cells ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("norm", "spatial_size"), [(None, None), ("layer", (H, W))])
def test_mimn_matches_plain(norm, spatial_size):
    cell = randomize_(stpl.MIMN(C_IN, NH, 3, norm=norm, spatial_size=spatial_size).double())
    (x,) = _plain.rand_maps(1, (B, C_IN, H, W))
    h, c = _plain.rand_maps(2, (B, NH, H, W), seed=2)
    out, state = cell(x, stpl.LSTMState(h, c))
    want = mimn(dict(cell.named_parameters()), "", x, h, c)
    assert isinstance(state, stpl.LSTMState)
    assert_close((out, *state), (want[0], *want))


@pytest.mark.parametrize(
    ("norm", "spatial_size"), [(None, None), ("layer", None), ("layer", (H, W))]
)
@pytest.mark.parametrize("detach", [False, True])
def test_block_matches_plain(norm, spatial_size, detach):
    cell = stpl.MIMBlock(
        C_IN, NH, 3, norm=norm, spatial_size=spatial_size, detach_stationary=detach
    )
    randomize_(cell.double())
    (x,) = _plain.rand_maps(1, (B, C_IN, H, W))
    d, h, c, m, s = (t.requires_grad_() for t in _plain.rand_maps(5, (B, NH, H, W), seed=2))
    out, state = cell(x, stpl.MIMBlockState(h, c, m, s), d)
    want = block(dict(cell.named_parameters()), "", x, d, h, c, m, s, detach=detach)
    assert isinstance(state, stpl.MIMBlockState)
    assert out is state.h
    assert_close(tuple(state), want)
    # detach_stationary cuts the gradient into the incoming MIM-S cell, and only that
    (g_s,) = torch.autograd.grad(state.s.sum() + out.sum(), s, allow_unused=True)
    assert (g_s is None) == detach


def test_block_diff_none_is_zero_difference():
    cell = randomize_(stpl.MIMBlock(C_IN, NH, 3).double())
    (x,) = _plain.rand_maps(1, (B, C_IN, H, W))
    state = stpl.MIMBlockState(*_plain.rand_maps(4, (B, NH, H, W), seed=3))
    assert_close(cell(x, state), cell(x, state, torch.zeros(B, NH, H, W, dtype=torch.float64)))
    # and state=None is the zero state
    assert_close(cell(x), cell(x, cell.initial_state(x)))


def test_block_carried_state_equals_one_loop():
    cell = randomize_(stpl.MIMBlock(C_IN, NH, 3).double())
    xs = _plain.rand_maps(5, (B, C_IN, H, W), seed=4)
    ds = _plain.rand_maps(5, (B, NH, H, W), seed=5)

    def run(module, xs, ds, state):
        outs = []
        for x, d in zip(xs, ds, strict=True):
            h, state = module(x, state, d)
            outs.append(h)
        return outs, state

    full, final = run(cell, xs, ds, None)
    first, mid = run(cell, xs[:2], ds[:2], None)
    fresh = stpl.MIMBlock(C_IN, NH, 3).double()
    fresh.load_state_dict(cell.state_dict())
    second, final_b = run(fresh, xs[2:], ds[2:], mid)
    assert_close(first + second, full)
    assert_close(tuple(final_b), tuple(final))


@pytest.mark.parametrize("which", ["block", "mimn"])
def test_gradcheck(which):
    if which == "block":
        cell = randomize_(stpl.MIMBlock(2, 3, 3, norm="layer").double())
        n_state = 4
    else:
        cell = randomize_(stpl.MIMN(2, 3, 3, spatial_size=(4, 5)).double())
        n_state = 2
    (x,) = _plain.rand_maps(1, (1, 2, 4, 5), seed=6)
    rest = _plain.rand_maps(n_state + (which == "block"), (1, 3, 4, 5), seed=7)
    inputs = tuple(t.requires_grad_() for t in (x, *rest))

    def step(x, *rest):
        if which == "block":
            h, state = cell(x, stpl.MIMBlockState(*rest[:4]), rest[4])
        else:
            h, state = cell(x, stpl.LSTMState(*rest))
        return (h, *state)

    assert torch.autograd.gradcheck(step, inputs, fast_mode=True)


def test_every_block_parameter_gets_a_gradient():
    cell = randomize_(stpl.MIMBlock(C_IN, NH, 3, norm="layer", spatial_size=(H, W)))
    (x,) = _plain.rand_maps(1, (B, C_IN, H, W), dtype=torch.float32)
    d, *state = _plain.rand_maps(5, (B, NH, H, W), dtype=torch.float32, seed=8)
    _, new = cell(x, stpl.MIMBlockState(*state), d)
    sum(
        (t * w).sum()
        for t, w in zip(new, _plain.rand_maps(4, new[0].shape, dtype=torch.float32), strict=True)
    ).backward()
    for name, p in cell.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_compile_fullgraph_block():
    torch._dynamo.reset()
    cell = randomize_(stpl.MIMBlock(C_IN, NH, 3, norm="layer"))
    (x,) = _plain.rand_maps(1, (B, C_IN, H, W), dtype=torch.float32)
    (d,) = _plain.rand_maps(1, (B, NH, H, W), dtype=torch.float32, seed=9)
    compiled = torch.compile(cell, fullgraph=True, backend="aot_eager")
    h, state = compiled(x, None, d)
    assert_close((h, state), cell(x, None, d))
    assert_close(compiled(x, state, d), cell(x, state, d))


def test_extra_repr_and_state_type():
    text = repr(stpl.MIMBlock(C_IN, NH, 5, detach_stationary=True))
    for item in [
        f"{C_IN}, {NH}",
        "kernel_size=5",
        "norm=None",
        "forget_bias=1.0",
        "detach_stationary=True",
    ]:
        assert item in text
    assert stpl.MIMBlock.state_type is stpl.MIMBlockState
    assert stpl.MIMBlock.zigzag_memory
    assert "forget_bias=1.0" in repr(stpl.MIMN(C_IN, NH))
    assert stpl.MIMBlock not in stpl.CELLS.values()  # it reads a second input, d


def test_block_errors():
    cell = stpl.MIMBlock(C_IN, NH, 3)
    (x,) = _plain.rand_maps(1, (B, C_IN, H, W), dtype=torch.float32)
    with pytest.raises(ValueError, match=r"diff must be \(B, C, H, W\) = \(2, 4, 5, 6\)"):
        cell(x, None, torch.zeros(B, NH + 1, H, W))
    with pytest.raises(ValueError, match=r"state must be a MIMBlockState\(h, c, m, s\)"):
        cell(x, stpl.STLSTMState(*_plain.rand_maps(3, (B, NH, H, W), dtype=torch.float32)))
    with pytest.raises(ValueError, match=r"state\.s must be"):
        state = cell.initial_state(x)
        cell(x, state._replace(s=torch.zeros(B, NH, H, W + 1)))
    with pytest.raises(ValueError, match="detach_stationary must be True or False"):
        stpl.MIMBlock(C_IN, NH, 3, detach_stationary="yes")
    with pytest.raises(ValueError, match="kernel_size must be a positive odd int"):
        stpl.MIMBlock(C_IN, NH, 4)
    with pytest.raises(ValueError, match="hidden_channels must be a positive int"):
        stpl.MIMN(C_IN, 0)
    peep = stpl.MIMN(C_IN, NH, 3, spatial_size=(H, W))
    with pytest.raises(ValueError, match=r"spatial_size=\(5, 6\); got a map of size \(5, 7\)"):
        peep(torch.zeros(B, C_IN, H, W + 1))


# -- the model -----------------------------------------------------------------------------


@pytest.mark.parametrize("norm", [None, "layer"])
def test_model_matches_plain_rollout(norm):
    """Four layers (three MIM-N modules chained), teacher forcing then free running."""
    model = small_mim(norm=norm, spatial_size=(4, 4) if norm else None)
    frames = frames_for(model)
    out = model(frames, context=3)
    want, s = plain_mim(model, frames, context=3)
    assert_close(out.predictions, want)
    assert isinstance(out.state, stpl.MIMState)
    assert_close([layer.s for layer in out.state.layers[1:]], s)


def test_persistent_stationary_state_like_the_reference():
    """OpenSTL keeps MIM-S's cell on the module: the next call starts from it."""
    model = small_mim(stationary_state="persistent")
    first_frames, second_frames = frames_for(model, seed=1), frames_for(model, seed=2)
    first = model(first_frames, context=3)
    want, s = plain_mim(model, first_frames, context=3)
    assert_close(first.predictions, want)
    second = model(second_frames, context=3)  # no state: starts from the kept MIM-S cells
    want2, _ = plain_mim(model, second_frames, context=3, s0=s)
    assert_close(second.predictions, want2)
    fresh, _ = plain_mim(model, second_frames, context=3)
    assert not torch.allclose(second.predictions, fresh)
    model.reset_stationary()
    assert_close(model(second_frames, context=3).predictions, fresh)
    # the default keeps nothing between calls
    sequence = small_mim()
    sequence(first_frames, context=3)
    assert_close(sequence(second_frames, context=3).predictions, fresh)


def test_persistent_mode_detaches_like_the_reference():
    model = small_mim(stationary_state="persistent")
    frames = frames_for(model, t=5)
    out = model(frames, context=4)
    grads = torch.autograd.grad(out.predictions.square().sum(), list(model.parameters()))
    want, _ = plain_mim(model, frames, context=4, detach=True)
    want_grads = torch.autograd.grad(want.square().sum(), list(model.parameters()))
    assert_close(grads, want_grads)
    attached, _ = plain_mim(model, frames, context=4)
    other = torch.autograd.grad(attached.square().sum(), list(model.parameters()))
    assert any(not torch.allclose(a, b) for a, b in zip(grads, other, strict=True))


def test_persistent_batch_mismatch_names_reset():
    model = small_mim(stationary_state="persistent")
    model(frames_for(model, b=2), context=3)
    with pytest.raises(ValueError, match=r"reset_stationary\(\)"):
        model(frames_for(model, b=3), context=3)
    model.reset_stationary()
    model(frames_for(model, b=3), context=3)


@pytest.mark.parametrize("mode", ["sequence", "persistent"])
def test_model_chunks_equal_one_call(mode):
    model = small_mim(stationary_state=mode)
    frames = frames_for(model, t=7)
    model.reset_stationary()
    full = model(frames)
    model.reset_stationary()
    first = model(frames[:, :4])
    second = model(frames[:, 3:], state=first.state)
    assert_close(torch.cat([first.predictions, second.predictions], 1), full.predictions)


def test_compile_step_fullgraph():
    """One step compiles without graph break: the first step (no state), the second (MIM-N
    states start), the persistent start of a second call (``mimn=None``), and a first
    step from ``initial_state`` (``started`` False)."""
    torch._dynamo.reset()
    model = small_mim(num_layers=3, stationary_state="persistent").float()
    frames = frames_for(model, t=4).float()
    eager = [model(frames, context=2).predictions for _ in range(2)]
    model.reset_stationary()
    model.compile_step(backend="eager", fullgraph=True)
    compiled = [model(frames, context=2).predictions for _ in range(2)]
    assert_close(compiled, eager)
    # from initial_state: the first step blends with torch.where, no graph break either
    model.reset_stationary()
    start = model.initial_state(frames)
    assert_close(model(frames, context=2, state=start).predictions, eager[0])


def _leaves(state):
    leaves, spec = tree_flatten(state)
    return spec, [(t.shape, t.dtype) for t in leaves]


@pytest.mark.parametrize("mode", ["sequence", "persistent"])
def test_initial_state_is_what_none_means_and_keeps_its_structure(mode):
    """``initial_state`` has the structure and shapes of every later state (MIM-N states
    of zeros, ``started`` False) and gives the same numbers as ``state=None``, bit for bit;
    in persistent mode it holds the kept MIM-S cells, as ``state=None`` does."""
    model = small_mim(num_layers=3, stationary_state=mode)
    frames = frames_for(model, t=5)
    model(frames_for(model, seed=4))  # persistent: keeps MIM-S cells
    start = model.initial_state(frames)
    assert isinstance(start, stpl.MIMState)
    assert start.started.dtype == torch.bool and not start.started.any()
    kept = model._stationary
    want = model(frames, context=2).predictions  # persistent: from the kept cells
    model._stationary = kept
    out = model(frames, context=2, state=start)
    assert torch.equal(out.predictions, want)
    assert out.state.started.all()
    assert _leaves(out.state) == _leaves(start)
    if mode == "persistent":
        assert all(torch.equal(a.s, b) for a, b in zip(start.layers[1:], kept, strict=True))
    # the state of a frame (B, C, H, W) is the same
    assert _leaves(model.initial_state(frames[:, 0])) == _leaves(start)


def test_started_is_per_sample():
    """A batch mixing a sequence that goes on and one that starts: each sample computes
    what it computes alone (the first-step rule applies to the new one only)."""
    model = small_mim(num_layers=3)
    frames = frames_for(model, t=6)
    going_on = model(frames[:, :3]).state
    fresh = model.initial_state(frames)

    def pick(state, i):
        return stpl.MIMState(
            [type(s)(*(t[i : i + 1] for t in s)) for s in state.layers],
            [type(s)(*(t[i : i + 1] for t in s)) for s in state.mimn],
            state.started[i : i + 1],
        )

    def cat(x, y):
        return type(x)(*(torch.cat(t) for t in zip(x, y, strict=True)))

    def join(a, b):
        return stpl.MIMState(
            [cat(x, y) for x, y in zip(a.layers, b.layers, strict=True)],
            [cat(x, y) for x, y in zip(a.mimn, b.mimn, strict=True)],
            torch.cat((a.started, b.started)),
        )

    mixed = join(pick(going_on, 0), pick(fresh, 1))
    assert mixed.started.tolist() == [True, False]
    got = model(frames[:, 2:], state=mixed).predictions
    assert torch.equal(got[:1], model(frames[:1, 2:], state=pick(going_on, 0)).predictions)
    assert torch.equal(got[1:], model(frames[1:, 2:]).predictions)


def test_states_without_started_still_work():
    """Older states: ``mimn=None`` starts every sequence, MIM-N states without ``started``
    go on; both give what the new states give."""
    model = small_mim(num_layers=3)
    frames = frames_for(model, t=6)
    start = model.initial_state(frames)
    legacy_start = stpl.MIMState(start.layers, None)
    assert torch.equal(
        model(frames, state=legacy_start).predictions, model(frames, state=start).predictions
    )
    mid = model(frames[:, :3]).state
    legacy_mid = (mid.layers, mid.mimn)  # a plain 2-tuple
    assert torch.equal(
        model(frames[:, 2:], state=legacy_mid).predictions,
        model(frames[:, 2:], state=mid).predictions,
    )


def test_persistent_export_leaves_the_kept_cells_alone():
    model = small_mim(num_layers=2, stationary_state="persistent").float().eval()
    frames = frames_for(model, b=1, t=3).float()
    model(frames)
    kept = [t.clone() for t in model._stationary]
    step = sx.export_observe_step(model, frames[:, 0]).module()
    assert all(torch.equal(a, b) for a, b in zip(model._stationary, kept, strict=True))
    state = model.initial_state(frames)
    pending, state = step(frames[:, 0], state)
    assert_close(pending, model.observe(frames[:, :1]).pending)


def test_no_state_field_is_a_prefix_of_another():
    """torch.export writes guards by replacing state paths in text: a field that is a
    prefix of another would mangle the longer path."""
    for state_type in (stpl.MIMState, stpl.MIMBlockState, stpl.LSTMState, stpl.STLSTMState):
        fields = state_type._fields
        assert not [(a, b) for a in fields for b in fields if a != b and b.startswith(a)]


def test_checkpoint_steps_same_gradients():
    model = small_mim(num_layers=3)
    frames = frames_for(model, t=5)
    loss = model(frames, context=3).predictions.square().sum()
    grads = torch.autograd.grad(loss, list(model.parameters()))
    model.checkpoint_steps = True
    loss2 = model(frames, context=3).predictions.square().sum()
    assert_close(torch.autograd.grad(loss2, list(model.parameters())), grads)


def test_bfloat16_autocast_close_to_float32():
    torch.manual_seed(0)
    model = stpl.get_model("mim", hidden_channels=8, num_layers=3, image_size=16)
    frames = torch.rand(2, 6, 1, 16, 16)
    ref = model(frames, context=3).predictions
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = model(frames, context=3)
    assert low.predictions.dtype in (torch.bfloat16, torch.float32)
    err = (low.predictions.float() - ref).abs().max()
    assert err < 0.05 * ref.abs().max() + 1e-3, err
    low.predictions.float().sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


def test_model_errors():
    with pytest.raises(
        ValueError, match="stationary_state must be one of 'sequence', 'persistent'"
    ):
        stpl.MIM(stationary_state="module")
    with pytest.raises(ValueError, match="equal hidden_channels"):
        stpl.MIM(hidden_channels=[4, 8])
    model = small_mim(num_layers=3)
    frames = frames_for(model)
    out = model(frames)
    with pytest.raises(ValueError, match=r"state must be a MIMState\(layers, mimn, started\)"):
        model(frames, state=list(out.state.layers))
    with pytest.raises(ValueError, match=r"state\.started must be a bool tensor of shape \(B,\)"):
        model(frames, state=out.state._replace(started=torch.ones(B)))
    with pytest.raises(ValueError, match=r"state\.started must be .* got shape \(1,\)"):
        model(frames, state=out.state._replace(started=out.state.started[:1]))
    with pytest.raises(TypeError, match=r"state\.started must be a torch\.Tensor or None"):
        model(frames, state=out.state._replace(started=True))
    with pytest.raises(ValueError, match=r"state\.layers must hold one state per layer \(3\)"):
        model(frames, state=stpl.MIMState(out.state.layers[:2], out.state.mimn))
    with pytest.raises(ValueError, match=r"state\.mimn must be None or hold one LSTMState"):
        model(frames, state=stpl.MIMState(out.state.layers, out.state.mimn[:1]))
    with pytest.raises(ValueError, match=r"state\.layers\[0\]\.h must be \(B, C, H, W\) = \(1,"):
        model(frames[:1], state=out.state)
    with pytest.raises(ValueError, match=r"image_size=\(30, 30\) is not divisible by patch_size=4"):
        stpl.get_model("mim", image_size=30)


def test_parameter_counts_against_openstl():
    """OpenSTL's MIM_Model at 4 x 128, kernel 5, patch 4 on 64x64 frames has 38,043,648
    parameters (``reference-implementations.md`` section 7), 98,304 of them its MIM-N
    modules' unused ``conv_last``; 4 x 64: 9,748,480 with 24,576 unused."""
    for nh, total, dead in ((128, 38_043_648, 98_304), (64, 9_748_480, 24_576)):
        model = stpl.get_model("mim", hidden_channels=nh)
        assert sum(p.numel() for p in model.parameters()) == total - dead
        assert dead == 3 * (2 * nh * nh)  # three MIM-N modules, Conv2d(2nh, nh, 1)


# -- the reference checkpoint ----------------------------------------------------------------


def test_golden_persistent_second_call():
    """The golden file records OpenSTL's first call; a second call of the reference starts
    from the MIM-S cells the first one ended with, and so does the loaded model."""
    d = torch.load(GOLDEN, weights_only=True)
    model = load_reference("openstl_mim", d["state_dict"], patch_size=2, image_channels=1)
    assert model.stationary_state == "persistent"
    inputs, context = d["inputs"], d["config"]["context"]
    with torch.no_grad():
        first = model(inputs["frames"], context=context, mask=inputs["mask"])
        assert_close(first.predictions, d["outputs"]["predictions"])
        second = model(inputs["frames"], context=context, mask=inputs["mask"])
        assert not torch.allclose(second.predictions, first.predictions, atol=1e-3, rtol=0)
        # equal to a sequence-mode model started from those MIM-S cells
        fresh = load_reference(
            "openstl_mim",
            d["state_dict"],
            patch_size=2,
            image_channels=1,
            stationary_state="sequence",
        )
        zero = first.state.layers[0]._replace(
            h=torch.zeros_like(first.state.layers[0].h),
            c=torch.zeros_like(first.state.layers[0].h),
            m=torch.zeros_like(first.state.layers[0].h),
        )
        z = zero.h
        start = stpl.MIMState(
            [zero] + [stpl.MIMBlockState(z, z, z, s.s) for s in first.state.layers[1:]], None
        )
        again = fresh(inputs["frames"], context=context, mask=inputs["mask"], state=start)
        assert_close(again.predictions, second.predictions)
        model.reset_stationary()
        third = model(inputs["frames"], context=context, mask=inputs["mask"])
        assert_close(third.predictions, d["outputs"]["predictions"])


def test_convert_state_dict_names_and_drops_dead_weights():
    d = torch.load(GOLDEN, weights_only=True)
    converted = convert_state_dict("openstl_mim", d["state_dict"], patch_size=2, image_channels=1)
    assert "mimn.0.peephole_weight" in converted
    assert not any(k.endswith("conv_last.weight") and k.startswith("mimn") for k in converted)
    sd = d["state_dict"]
    assert_close(converted["mimn.0.peephole_weight"][2], sd["stlstm_layer_diff.0.oc_weight"])
    assert_close(
        converted["cells.1.stationary.peephole_weight"][:2].reshape(-1, 8, 8),
        sd["stlstm_layer.1.ct_weight"],
    )
    bad = dict(sd, **{"stlstm_layer.1.extra.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match=r"unexpected keys: \['stlstm_layer\.1\.extra\.weight'\]"):
        load_reference("openstl_mim", bad, patch_size=2, image_channels=1)


def test_golden_in_another_patch_order():
    d = torch.load(GOLDEN, weights_only=True)
    inputs, context = d["inputs"], d["config"]["context"]
    model = load_reference(
        "openstl_mim", d["state_dict"], patch_size=2, image_channels=1, patch_order="pixel_shuffle"
    )
    with torch.no_grad():
        out = model(inputs["frames"], context=context, mask=inputs["mask"])
    assert_close(out.predictions, d["outputs"]["predictions"])
