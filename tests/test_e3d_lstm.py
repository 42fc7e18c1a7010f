"""E3D-LSTM: Eidetic3DLSTMCell and the E3DLSTM model against the plain equations of
``reference-implementations.md`` sections 4c and 5b (float64, written here with
``F.conv3d``, ``F.interpolate`` and ``einsum``), in both recall layouts, with and without the
reference's never-updated memory, and against OpenSTL's golden file."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.testing import assert_close
from torch.utils._pytree import tree_flatten

import stpl
import stpl.export as sx
from stpl.cells.e3d_lstm import _attend
from stpl.interop import convert_state_dict, load_reference

GOLDEN = Path(__file__).parent / "data" / "golden" / "model_openstl_e3dlstm.pt"
B, C_IN, NH, TAU, H, W = 2, 3, 4, 2, 4, 5
EPS = 1e-5


@torch.no_grad()
def randomize(module: nn.Module, seed: int = 0) -> nn.Module:
    """Conv weights U(-1, 1)/sqrt(fan_in); norm weights U(0.5, 1.5), biases U(-0.5, 0.5)."""
    gen = torch.Generator().manual_seed(seed)
    for name, p in module.named_parameters():
        u = torch.rand(p.shape, generator=gen, dtype=torch.float64)
        if ".norm" in name or name.startswith("norm"):
            p.copy_(0.5 + u if name.endswith("weight") else u - 0.5)
        else:
            p.copy_((2 * u - 1) / (p[0].numel() ** 0.5))
    return module


def rand(*shape: int, seed: int = 1) -> Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=gen, dtype=torch.float64)


# -- the plain equations (section 4c), over our parameter names ------------------------------


def layer_norm(y: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    y = F.layer_norm(y, y.shape[1:], eps=EPS)
    if weight.dim() == 1:
        return y * weight[:, None, None, None] + bias[:, None, None, None]
    return y * weight + bias


def window_conv(p: dict[str, Tensor], name: str, x: Tensor) -> Tensor:
    """OpenSTL ``tf_Conv3d`` (+ LayerNorm): conv3d, nearest-resize to the input's (T, H, W)."""
    w = p[f"{name}.conv.weight"]
    y = F.conv3d(x, w, padding=(0, w.shape[3] // 2, w.shape[4] // 2))
    y = F.interpolate(y, size=x.shape[-3:], mode="nearest")
    if f"{name}.norm.weight" in p:
        y = layer_norm(y, p[f"{name}.norm.weight"], p[f"{name}.norm.bias"])
    return y


def recall(r: Tensor, states: list[Tensor], layout: str) -> Tensor:
    b, c, t, h, w = r.shape
    if layout == "reference":  # OpenSTL: concatenate along channels, reshape without permute
        keys = torch.cat(states, 1).reshape(b, -1, c)
        query = r.reshape(b, -1, c)
        attn = torch.softmax(torch.einsum("bxc,byc->bxy", query, keys), dim=2)
        return torch.einsum("bxy,byc->bxc", attn, keys).reshape(b, c, -1, h, w)
    keys = torch.cat([s.permute(0, 2, 3, 4, 1).reshape(b, -1, c) for s in states], 1)
    query = r.permute(0, 2, 3, 4, 1).reshape(b, -1, c)
    attn = torch.softmax(query @ keys.transpose(1, 2), dim=2)
    return (attn @ keys).reshape(b, t, h, w, c).permute(0, 4, 1, 2, 3)


def cell_step(p, x, h, c, m, past, *, layout="tokens", update=True, forget_bias=1.0):
    """OpenSTL ``Eidetic3DLSTMCell.forward``; ``past``: earlier cell states (oldest first)."""
    i_x, g_x, r_x, o_x, ti_x, tg_x, tf_x = torch.chunk(window_conv(p, "conv_x", x), 7, 1)
    i_h, g_h, r_h, o_h = torch.chunk(window_conv(p, "conv_h", h), 4, 1)
    i, r, g = torch.sigmoid(i_x + i_h), torch.sigmoid(r_x + r_h), torch.tanh(g_x + g_h)
    c_new = layer_norm(c + recall(r, [*past, c], layout), p["norm_c.weight"], p["norm_c.bias"])
    c_new = c_new + i * g
    i_m, f_m, g_m, m_m = torch.chunk(window_conv(p, "conv_gm", m), 4, 1)
    m_new = torch.sigmoid(tf_x + f_m + forget_bias) * torch.tanh(m_m) + torch.sigmoid(
        ti_x + i_m
    ) * torch.tanh(tg_x + g_m)
    o = torch.tanh(
        o_x + o_h + window_conv(p, "conv_new_cell", c_new) + window_conv(p, "conv_new_gm", m_new)
    )
    mem = F.conv3d(torch.cat([c_new, m_new], 1), p["conv_last.weight"])
    h_new = torch.tanh(mem) * torch.sigmoid(o)
    return h_new, c_new, (m_new if update else m)


def plain_model(model, frames, context, *, layout, update, memory_length=None):
    """OpenSTL ``E3DLSTM_Model.forward`` (window of inputs, zigzag memory, 3D decoder)."""
    p = dict(model.named_parameters())
    steps = stpl.patchify(frames, model.patch_size)
    b, t, cp, hh, ww = steps.shape
    tau, nh, n = model.window_length, model.hidden_channels[0], model.num_layers
    z = steps.new_zeros(b, nh, tau, hh, ww)
    h, c = [z] * n, [z] * n
    keep = None if memory_length is None else memory_length - 1
    hist: list[list[Tensor]] = [[] for _ in range(n)]  # the earlier cell states
    inputs = [steps.new_zeros(b, cp, hh, ww)] * (tau - 1)
    memory = z
    preds, x_gen = [], None
    for step in range(t - 1):
        inputs.append(steps[:, step] if step < context else x_gen)
        inp = torch.stack(inputs[-tau:], 2)
        for layer in range(n):
            lp = {
                k[len(f"cells.{layer}.") :]: v
                for k, v in p.items()
                if k.startswith(f"cells.{layer}.")
            }
            past = hist[layer]
            h[layer], c_new, memory = cell_step(
                lp, inp, h[layer], c[layer], memory, past, layout=layout, update=update
            )
            hist[layer] = [*past, c[layer]]
            if keep is not None:
                hist[layer] = hist[layer][len(hist[layer]) - keep :] if keep else []
            c[layer] = c_new
            inp = h[layer]
        x_gen = F.conv3d(h[-1], p["decoder.weight"], stride=(tau, 1, 1)).squeeze(2)
        preds.append(x_gen)
    return stpl.unpatchify(torch.stack(preds, 1), model.patch_size)


# -- cells ---------------------------------------------------------------------------------

CELL_CASES = {
    "reference": {"recall_layout": "reference", "update_memory": False},
    "paper": {},
    "paper-ln-per-element": {"norm": "layer", "spatial_size": (H, W)},
    "reference-ln-per-channel": {"recall_layout": "reference", "norm": "layer"},
    "kt1": {"kernel_size": (1, 3, 3)},
    "window3-kt2": {"kernel_size": (2, 3, 5), "window_length": 3},
    "memory2": {"memory_length": 2},
    "memory1-reference": {"memory_length": 1, "recall_layout": "reference"},
}


def build_cell(options: dict, c_in: int = C_IN, nh: int = NH) -> stpl.Eidetic3DLSTMCell:
    options = dict(options)
    kernel = options.pop("kernel_size", 3)
    return randomize(stpl.Eidetic3DLSTMCell(c_in, nh, kernel, **options).double())


@pytest.mark.parametrize("case", list(CELL_CASES))
def test_cell_matches_plain_over_three_steps(case):
    options = CELL_CASES[case]
    cell = build_cell(options)
    tau = cell.window_length
    p = dict(cell.named_parameters())
    layout = options.get("recall_layout", "tokens")
    update = options.get("update_memory", True)
    keep = None if cell.memory_length is None else cell.memory_length - 1
    h, c, m = (rand(B, NH, tau, H, W, seed=s) for s in (2, 3, 4))
    state = cell.initial_state(rand(B, C_IN, tau, H, W))._replace(h=h, c=c, m=m)
    past: list[Tensor] = []  # with memory_length, the empty slots take no attention weight
    for step in range(3):
        x = rand(B, C_IN, tau, H, W, seed=10 + step)
        out, state = cell(x, state)
        want = cell_step(p, x, h, c, m, past, layout=layout, update=update)
        assert isinstance(state, stpl.E3DLSTMState)
        assert_close((out, *state[:3]), (want[0], *want), msg=f"step {step}")
        past = [*past, c]
        if keep is not None:
            past = past[len(past) - keep :] if keep else []
        h, c, m = want
    n_past = 3 if keep is None else keep
    assert state.recall.shape == (B, n_past * tau * H * W, NH)
    if keep is None:
        assert state.filled is None
    else:
        assert state.filled.shape == (B, keep) and bool(state.filled.all())


def test_empty_recall_slots_take_no_weight():
    """An empty slot (``filled`` False) is masked out, whatever it holds; a state without
    ``filled`` counts every slot; the masked 16-bit CPU path agrees with the fused one."""
    cell = build_cell({"memory_length": 3})
    x = rand(B, C_IN, TAU, H, W)
    start = cell.initial_state(x)._replace(c=rand(B, NH, TAU, H, W, seed=3))
    garbage = start._replace(recall=rand(*start.recall.shape, seed=7))
    one_filled = start.filled.clone()
    one_filled[0, 1] = True  # sample 0: the newer slot holds a state
    got, want = cell(x, garbage._replace(filled=start.filled)), cell(x, start)
    assert_close((got[0], *got[1][:3]), (want[0], *want[1][:3]))
    assert got[1].filled.tolist() == want[1].filled.tolist() == [[False, True]] * B
    out, state = cell(x, garbage._replace(filled=one_filled))
    assert_close(out[1], cell(x, start)[0][1])  # sample 1: both slots still empty
    assert not torch.allclose(out[0], cell(x, start)[0][0])
    assert state.filled.tolist() == [[True, True], [False, True]]
    every = cell(x, garbage._replace(filled=torch.ones_like(start.filled)))
    assert_close(cell(x, tuple(garbage[:4])), every)  # a 4-tuple: every slot filled
    # the masked attention, written plainly, in the fused path and the bf16 CPU path
    gen = torch.Generator().manual_seed(0)
    q, k = torch.randn(2, 5, 3, generator=gen), torch.randn(2, 8, 3, generator=gen)
    mask = torch.tensor([[False] * 4 + [True] * 4, [True] * 8])
    scores = (q @ k.transpose(1, 2)).masked_fill(~mask[:, None], float("-inf"))
    want = torch.softmax(scores, -1) @ k
    assert_close(_attend(q, k, mask), want)
    assert_close(_attend(q.bfloat16(), k.bfloat16(), mask).float(), want, atol=0.05, rtol=0.05)


@pytest.mark.parametrize("layout", ["tokens", "reference"])
def test_bounded_cell_equals_unbounded_while_the_steps_fit(layout):
    """memory_length=L: the first L steps equal the unbounded recall, the next differ."""
    options = {"recall_layout": layout}
    unbounded = build_cell(options)
    bounded = build_cell({**options, "memory_length": 3})
    state_u = state_b = None
    for step in range(4):
        x = rand(B, C_IN, TAU, H, W, seed=20 + step)
        out_u, state_u = unbounded(x, state_u)
        out_b, state_b = bounded(x, state_b)
        if step < 3:
            assert_close(out_b, out_u, rtol=0, atol=1e-12, msg=f"step {step}")
        else:
            assert not torch.allclose(out_b, out_u)
    assert state_u.recall.shape[1] == 4 * TAU * H * W  # grows: c_0 .. c_3
    assert state_b.recall.shape[1] == 2 * TAU * H * W  # fixed: the last two


def test_reference_memory_is_handed_on_unchanged():
    cell = build_cell(CELL_CASES["reference"])
    x = rand(B, C_IN, TAU, H, W)
    m = rand(B, NH, TAU, H, W, seed=5)
    _, state = cell(x, cell.initial_state(x)._replace(m=m))
    assert state.m is m
    _, updated = build_cell({})(x)
    assert updated.m.abs().sum() > 0


@pytest.mark.parametrize("case", ["reference", "paper-ln-per-element"])
def test_cell_gradcheck(case):
    cell = build_cell(CELL_CASES[case] if case == "reference" else {"norm": "layer"}, 2, 2)
    tau, hh, ww = 2, 3, 3
    x = rand(1, 2, tau, hh, ww)
    h, c, m = (rand(1, 2, tau, hh, ww, seed=s) for s in (2, 3, 4))
    recall = rand(1, tau * hh * ww, 2, seed=5)  # one earlier cell state
    inputs = tuple(t.requires_grad_() for t in (x, h, c, m, recall))

    def step(x, h, c, m, recall):
        out, state = cell(x, stpl.E3DLSTMState(h, c, m, recall))
        assert state.filled is None
        return (out, *state[:4])

    assert torch.autograd.gradcheck(step, inputs, fast_mode=True)


def test_cell_carried_state_equals_one_loop():
    cell = build_cell({"memory_length": 3})
    xs = [rand(B, C_IN, TAU, H, W, seed=s) for s in range(5)]

    def run(module, xs, state):
        outs = []
        for x in xs:
            h, state = module(x, state)
            outs.append(h)
        return outs, state

    full, final = run(cell, xs, None)
    first, mid = run(cell, xs[:2], None)
    fresh = stpl.Eidetic3DLSTMCell(C_IN, NH, 3, memory_length=3).double()
    fresh.load_state_dict(cell.state_dict())
    second, final_b = run(fresh, xs[2:], mid)
    assert_close(first + second, full)
    assert_close(tuple(final_b), tuple(final))


def test_every_cell_parameter_gets_a_gradient():
    cell = build_cell({"norm": "layer"}).float()
    x = rand(B, C_IN, TAU, H, W).float()
    state = stpl.E3DLSTMState(
        *(rand(B, NH, TAU, H, W, seed=s).float() for s in (2, 3, 4)),
        rand(B, TAU * H * W, NH, seed=5).float(),
    )
    out, new = cell(x, state)
    (out.sum() + new.m.square().sum()).backward()
    for name, p in cell.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_cell_compile_fullgraph():
    torch._dynamo.reset()
    cell = build_cell({"norm": "layer", "memory_length": 2}).float()
    x = rand(B, C_IN, TAU, H, W).float()
    compiled = torch.compile(cell, fullgraph=True, backend="aot_eager")
    out, state = compiled(x, None)
    assert_close((out, state), cell(x, None))
    assert_close(compiled(x, state), cell(x, state))


def test_cell_extra_repr_and_protocol():
    cell = stpl.Eidetic3DLSTMCell(C_IN, NH)
    text = repr(cell)
    for item in [
        f"{C_IN}, {NH}",
        "kernel_size=(2, 5, 5)",
        "window_length=2",
        "norm=None",
        "forget_bias=1.0",
        "update_memory=True",
        "recall_layout='tokens'",
        "memory_length=None",
    ]:
        assert item in text
    assert cell.state_type is stpl.E3DLSTMState and cell.zigzag_memory
    assert stpl.Eidetic3DLSTMCell not in stpl.CELLS.values()  # window inputs, not maps


def test_cell_errors():
    cell = stpl.Eidetic3DLSTMCell(C_IN, NH, 3)
    x = torch.zeros(B, C_IN, TAU, H, W)
    with pytest.raises(
        ValueError, match=r"x must be \(B, C, τ, H, W\) with C=3, τ=2; got shape \(2, 3, 4, 5\)"
    ):
        cell(x[:, :, 0])
    with pytest.raises(ValueError, match=r"x must be .*τ=2; got shape \(2, 3, 3, 4, 5\)"):
        cell(torch.zeros(B, C_IN, 3, H, W))
    with pytest.raises(ValueError, match="x must be a floating tensor"):
        cell(x.long())
    state = cell.initial_state(x)
    with pytest.raises(ValueError, match=r"state\.c must be \(B, C, τ, H, W\) = \(2, 4, 2, 4, 5\)"):
        cell(x, state._replace(c=torch.zeros(B, NH, TAU, H + 1, W)))
    with pytest.raises(ValueError, match=r"state\.recall must be \(B, N \* τ \* H \* W, C\)"):
        cell(x, state._replace(recall=torch.zeros(B, 7, NH)))
    with pytest.raises(TypeError, match=r"state\.recall must be a torch\.Tensor"):
        cell(x, state._replace(recall=None))
    bounded = stpl.Eidetic3DLSTMCell(C_IN, NH, 3, memory_length=3)
    with pytest.raises(
        ValueError, match=r"\(B, \(memory_length - 1\) \* τ \* H \* W, C\) = \(2, 80, 4\)"
    ):
        bounded(x, state)
    with pytest.raises(ValueError, match=r"state\.filled must be a bool tensor \(B, N\) = \(2, 2"):
        bounded(x, bounded.initial_state(x)._replace(filled=torch.zeros(B, 3, dtype=torch.bool)))
    with pytest.raises(ValueError, match=r"state\.filled must be a bool .* dtype torch\.float32"):
        bounded(x, bounded.initial_state(x)._replace(filled=torch.zeros(B, 2)))
    with pytest.raises(TypeError, match=r"state\.filled must be a torch\.Tensor or None"):
        bounded(x, bounded.initial_state(x)._replace(filled=[True, False]))
    with pytest.raises(ValueError, match=r"x must be \(B, C, τ, H, W\); got \(2, 3, 4, 5\)"):
        bounded.initial_state(x[:, :, 0])
    with pytest.raises(ValueError, match=r"kernel_size must be .* 1 <= k_t <= window_length=2"):
        stpl.Eidetic3DLSTMCell(C_IN, NH, (3, 5, 5))
    with pytest.raises(ValueError, match="kernel_size must be a positive odd int"):
        stpl.Eidetic3DLSTMCell(C_IN, NH, 4)
    with pytest.raises(ValueError, match="recall_layout must be one of 'tokens', 'reference'"):
        stpl.Eidetic3DLSTMCell(C_IN, NH, recall_layout="channels")
    with pytest.raises(ValueError, match="memory_length must be a positive int; got 0"):
        stpl.Eidetic3DLSTMCell(C_IN, NH, memory_length=0)
    with pytest.raises(ValueError, match="update_memory must be True or False"):
        stpl.Eidetic3DLSTMCell(C_IN, NH, update_memory=1)
    per_element = stpl.Eidetic3DLSTMCell(C_IN, NH, 3, spatial_size=(H, W))
    with pytest.raises(ValueError, match=r"spatial_size=\(4, 5\); got a map of size \(4, 6\)"):
        per_element(torch.zeros(B, C_IN, TAU, H, W + 1))


# -- the model -----------------------------------------------------------------------------


def small_model(**kw) -> stpl.E3DLSTM:
    options = {"hidden_channels": 4, "num_layers": 3, "patch_size": 2, "kernel_size": 3}
    options.update(kw)
    return randomize(stpl.E3DLSTM(**options).double())


def video(b=B, t=6, size=8, seed=0) -> Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(b, t, 1, size, size, generator=gen, dtype=torch.float64)


@pytest.mark.parametrize(
    "options",
    [
        {"recall_layout": "reference", "update_memory": False},
        {},
        {"memory_length": 2, "norm": "layer"},
    ],
)
def test_model_matches_plain_rollout(options):
    model = small_model(**options)
    frames = video()
    out = model(frames, context=3)
    want = plain_model(
        model,
        frames,
        3,
        layout=options.get("recall_layout", "tokens"),
        update=options.get("update_memory", True),
        memory_length=options.get("memory_length"),
    )
    assert_close(out.predictions, want)
    assert isinstance(out.state, stpl.E3DState)


@pytest.mark.parametrize("layout", ["tokens", "reference"])
def test_bounded_model_equals_unbounded_while_the_steps_fit(layout):
    """The model with memory_length=L predicts exactly what the reference-like unbounded
    model predicts for the first L steps (float64 round-off), then forgets."""
    unbounded = small_model(recall_layout=layout, num_layers=2)
    bounded = small_model(recall_layout=layout, num_layers=2, memory_length=3)
    frames = video(t=6)
    want = unbounded(frames, context=2).predictions
    got = bounded(frames, context=2).predictions
    assert_close(got[:, :3], want[:, :3], rtol=0, atol=1e-12)
    assert not torch.allclose(got[:, 3:], want[:, 3:])
    # float32 too
    got32 = bounded.float()(frames.float(), context=2).predictions
    assert_close(got32[:, :3], unbounded.float()(frames.float(), context=2).predictions[:, :3])


@pytest.mark.parametrize("memory_length", [None, 1, 3])
def test_initial_state_is_what_none_means_and_keeps_its_shapes(memory_length):
    model = small_model(num_layers=2, memory_length=memory_length)
    frames = video(t=5)
    start = model.initial_state(frames)
    assert isinstance(start, stpl.E3DState)
    out = model(frames, context=2, state=start)
    assert torch.equal(out.predictions, model(frames, context=2).predictions)
    leaves, spec = tree_flatten(start)
    new_leaves, new_spec = tree_flatten(out.state)
    if memory_length is None:  # the recall grows by one cell state per step
        assert start.layers[0].recall.shape[1] == 0
        assert out.state.layers[0].recall.shape[1] == 4 * (2 * 4 * 4)  # 4 steps of τ*h*w
        return
    assert new_spec == spec
    assert [(t.shape, t.dtype) for t in new_leaves] == [(t.shape, t.dtype) for t in leaves]
    assert not start.layers[0].filled.any() and out.state.layers[0].filled.all()


def test_export_of_the_step_needs_a_bounded_memory():
    """An unbounded recall grows: the exported step could not be fed its own state."""
    frame = video(b=1, t=1)[:, 0].float()
    model = small_model(num_layers=1).float().eval()
    with pytest.raises(ValueError, match=r"state\.layers\[0\]\.recall changes .*memory_length"):
        sx.export_observe_step(model, frame)
    bounded = small_model(num_layers=1, memory_length=2).float().eval()
    step = sx.export_observe_step(bounded, frame).module()
    state = bounded.initial_state(frame)
    frames = video(b=1, t=3).float()
    for t in range(3):
        pending, state = step(frames[:, t], state)
    assert_close(pending, bounded.observe(frames).pending)


def test_no_state_field_is_a_prefix_of_another():
    """torch.export writes guards by replacing state paths in text: a field that is a
    prefix of another (``h`` of ``history``) mangles the longer path."""
    for state_type in (stpl.E3DLSTMState, stpl.E3DState):
        fields = state_type._fields
        assert not [(a, b) for a in fields for b in fields if a != b and b.startswith(a)]


def test_reference_mode_memory_stays_zero():
    model = small_model(recall_layout="reference", update_memory=False)
    out = model(video(), context=3)
    assert all(layer.m.abs().sum() == 0 for layer in out.state.layers)
    paper = small_model()
    assert paper(video(), context=3).state.layers[-1].m.abs().sum() > 0


def test_model_chunks_with_bounded_memory():
    model = small_model(memory_length=2)
    frames = video(t=7)
    full = model(frames)
    first = model(frames[:, :4])
    second = model(frames[:, 3:], state=first.state)
    assert_close(torch.cat([first.predictions, second.predictions], 1), full.predictions)
    # the state has a fixed size once memory_length is set
    assert first.state.layers[0].recall.shape == full.state.layers[0].recall.shape


def test_compile_step_fullgraph():
    torch._dynamo.reset()
    model = small_model(num_layers=2, memory_length=2).float()
    frames = video(t=4).float()
    eager = model(frames, context=2).predictions
    model.compile_step(backend="eager", fullgraph=True)
    assert_close(model(frames, context=2).predictions, eager)


@pytest.mark.parametrize("memory_length", [None, 3])
def test_bfloat16_autocast_close_to_float32(memory_length):
    torch.manual_seed(0)
    model = stpl.get_model(
        "e3d_lstm", hidden_channels=8, num_layers=2, image_size=16, memory_length=memory_length
    )
    frames = torch.rand(2, 6, 1, 16, 16)
    ref = model(frames, context=3).predictions
    for layout in ("tokens", "reference"):
        for cell in model.cells:
            cell.recall_layout = layout
        ref = model(frames, context=3).predictions
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = model(frames, context=3)
        err = (low.predictions.float() - ref).abs().max()
        assert err < 0.05 * ref.abs().max() + 1e-3, (layout, err)
        low.predictions.float().sum().backward()
        assert all(torch.isfinite(p.grad).all() for p in model.parameters())


def test_model_errors():
    with pytest.raises(ValueError, match="equal hidden_channels"):
        stpl.E3DLSTM(hidden_channels=[4, 8])
    with pytest.raises(ValueError, match="window_length must be a positive int"):
        stpl.E3DLSTM(window_length=0)
    model = small_model(num_layers=2)
    frames = video()
    out = model(frames)
    with pytest.raises(ValueError, match=r"state must be an E3DState\(frames, layers\)"):
        model(frames, state=out.state.layers)
    with pytest.raises(ValueError, match=r"state\.frames must be \(B, p\*p\*C, τ-1, H/p, W/p\)"):
        model(frames[:1], state=out.state)
    with pytest.raises(ValueError, match=r"state\.layers must hold one state per layer \(2\)"):
        model(frames, state=stpl.E3DState(out.state.frames, out.state.layers[:1]))
    bad = list(out.state.layers)
    bad[1] = bad[1]._replace(h=bad[1].h[:, :, :1])
    with pytest.raises(ValueError, match=r"state\.layers\[1\]\.h must be"):
        model(frames, state=stpl.E3DState(out.state.frames, bad))


def test_parameter_counts_against_openstl():
    """OpenSTL's E3DLSTM_Model (kernel fixed to (2, 5, 5)) on 64x64 frames, patch 4:
    51,347,456 parameters at 4 x 128 and 13,148,160 at 4 x 64 (section 7); no dead weights."""
    for nh, total in ((128, 51_347_456), (64, 13_148_160)):
        model = stpl.get_model("e3d_lstm", hidden_channels=nh)
        assert sum(p.numel() for p in model.parameters()) == total


# -- the reference checkpoint ----------------------------------------------------------------


def test_golden_options_and_names():
    d = torch.load(GOLDEN, weights_only=True)
    model = load_reference("openstl_e3dlstm", d["state_dict"], patch_size=2, image_channels=1)
    cell = model.cells[0]
    assert (cell.update_memory, cell.recall_layout, cell.memory_length) == (
        False,
        "reference",
        None,
    )
    assert model.kernel == (2, 5, 5) and model.window_length == 2
    converted = convert_state_dict(
        "openstl_e3dlstm", d["state_dict"], patch_size=2, image_channels=1
    )
    assert_close(
        converted["cells.1.norm_c.weight"], d["state_dict"]["cell_list.1._norm_c_t.weight"]
    )
    assert_close(converted["decoder.weight"], d["state_dict"]["conv_last.weight"])
    bad = dict(d["state_dict"], **{"cell_list.0.conv_q.0.conv3d.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match=r"unexpected keys: \['cell_list\.0\.conv_q"):
        load_reference("openstl_e3dlstm", bad, patch_size=2, image_channels=1)
    # the paper's options on the same weights give other predictions
    paper = load_reference(
        "openstl_e3dlstm",
        d["state_dict"],
        patch_size=2,
        image_channels=1,
        update_memory=True,
        recall_layout="tokens",
    )
    inputs = d["inputs"]
    with torch.no_grad():
        got = paper(inputs["frames"], context=3, mask=inputs["mask"]).predictions
    assert not torch.allclose(got, d["outputs"]["predictions"], atol=1e-4)


def test_golden_in_another_patch_order():
    d = torch.load(GOLDEN, weights_only=True)
    inputs = d["inputs"]
    model = load_reference(
        "openstl_e3dlstm", d["state_dict"], patch_size=2, image_channels=1, patch_order="modernn"
    )
    with torch.no_grad():
        out = model(inputs["frames"], context=3, mask=inputs["mask"])
    assert_close(out.predictions, d["outputs"]["predictions"])
