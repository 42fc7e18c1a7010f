"""``EncoderStackDecoder``: the step semantics of api.md, state in/out, generate, actions,
decoupling, checkpointing, compile and mixed precision.

``manual_rollout`` below restates api.md's rule as a hand-written loop over the model's own
cells (patching in pixel space, mixing with the mask, zigzag memory, decoder), so every test
that compares against it fails if the predictor feeds the wrong frame, indexes the mask
wrongly or passes the memory along the wrong path.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.testing import assert_close

import _plain
import stpl
from stpl.patching import patchify, unpatchify

B, T, H, W, P = 2, 6, 8, 8, 2


def make(cell: str = "stlstm", **kwargs) -> stpl.EncoderStackDecoder:
    options = {
        "in_channels": 1,
        "hidden_channels": 4,
        "num_layers": 2,
        "patch_size": P,
        "kernel_size": 3,
        **kwargs,
    }
    torch.manual_seed(0)
    return stpl.EncoderStackDecoder(cell, **options).eval()


def frames_like(model: stpl.EncoderStackDecoder, t: int = T, seed: int = 1) -> Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(B, t, model.in_channels, H, W, generator=gen)


def binary_mask(seed: int = 2, t: int = T) -> Tensor:
    gen = torch.Generator().manual_seed(seed)
    return (torch.rand(B, t - 2, generator=gen) < 0.5).float()


def plain_decouple_term(adapter: nn.Conv2d, delta_c: Tensor, delta_m: Tensor) -> Tensor:
    """mean over (b, c) of |cosine over H*W| of the adapted increments."""
    a = F.conv2d(delta_c, adapter.weight).flatten(2)
    b = F.conv2d(delta_m, adapter.weight).flatten(2)
    cos = (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1))
    return cos.abs().mean()


def manual_rollout(
    model: stpl.EncoderStackDecoder,
    frames: Tensor,
    *,
    context: int | None = None,
    mask: Tensor | None = None,
    state: list | None = None,
    actions: Tensor | None = None,
) -> tuple[Tensor, list, Tensor | None]:
    """api.md's step rule, by hand, over ``model.cells``; returns (predictions, state, decouple)."""
    b, t_total, c, h, w = frames.shape
    p, order = model.patch_size, model.patch_order
    context = t_total if context is None else context
    if mask is not None:
        if mask.dim() == 2:
            mask = mask[:, :, None, None, None]
        mask = mask.expand(b, t_total - 2, c, h, w)
    if actions is not None and actions.dim() == 3:
        actions = actions[..., None, None].expand(-1, -1, -1, h, w)
    zigzag = isinstance(model.cells[0], stpl.STLSTMCell)
    states = list(state) if state is not None else [None] * model.num_layers
    memory = states[-1].m if (zigzag and state is not None) else None
    preds: list[Tensor] = []
    terms: list[Tensor] = []
    for t in range(t_total - 1):
        if t < context:
            x = frames[:, t]
        elif mask is None:
            x = preds[-1]
        else:
            x = mask[:, t - 1] * frames[:, t] + (1 - mask[:, t - 1]) * preds[-1]
        inp = patchify(x, p, order)
        if model.encoder is not None:
            inp = F.conv2d(inp, model.encoder.weight, model.encoder.bias)
        kwargs = {} if actions is None else {"action": patchify(actions[:, t], p, order)}
        for layer, cell in enumerate(model.cells):
            st = states[layer]
            if zigzag:
                if st is None:
                    z = inp.new_zeros(b, cell.hidden_channels, h // p, w // p)
                    st = stpl.STLSTMState(z, z, z)
                if memory is not None:  # from layer l-1 at step t, or from the top at t-1
                    st = stpl.STLSTMState(st.h, st.c, memory)
            if model.adapter is not None:
                res = cell.forward_with_increments(inp, st, **kwargs)
                hidden, st = res.h, res.state
                terms.append(plain_decouple_term(model.adapter, res.delta_c, res.delta_m))
            else:
                hidden, st = cell(inp, st, **kwargs)
            if zigzag:
                memory = st.m
            states[layer] = st
            inp = hidden
        out = F.conv2d(inp, model.decoder.weight, model.decoder.bias)
        preds.append(unpatchify(out, p, order))
    decouple = torch.stack(terms).mean() if terms else None
    return torch.stack(preds, 1), states, decouple


CELL_NAMES = ["stlstm", "convlstm", "modernn"]


# ------------------------------------------------------------------ step semantics
@pytest.mark.parametrize("cell", CELL_NAMES)
def test_teacher_forcing_equals_manual(cell):
    model = make(cell)
    frames = frames_like(model)
    out = model(frames)
    preds, states, _ = manual_rollout(model, frames)
    assert out.predictions.shape == (B, T - 1, 1, H, W)
    assert_close(out.predictions, preds)
    assert len(out.state) == model.num_layers
    for ours, theirs in zip(out.state, states, strict=True):
        assert type(ours) is type(theirs)
        for a, b in zip(ours, theirs, strict=True):
            assert_close(a, b)


def test_state_types():
    frames = frames_like(make())
    assert all(isinstance(s, stpl.STLSTMState) for s in make("stlstm")(frames).state)
    assert all(isinstance(s, stpl.LSTMState) for s in make("convlstm")(frames).state)
    assert all(isinstance(s, stpl.LSTMState) for s in make("modernn")(frames).state)


def test_step_t_predicts_frame_t_plus_1():
    """Teacher forced, prediction t depends on frames 0..t only."""
    model = make()
    frames = frames_like(model)
    changed = frames.clone()
    changed[:, 3] = torch.rand_like(changed[:, 3])
    a, b = model(frames).predictions, model(changed).predictions
    assert_close(a[:, :3], b[:, :3])
    assert not torch.allclose(a[:, 3], b[:, 3])


def test_mask_of_ones_is_teacher_forcing():
    model = make()
    frames = frames_like(model)
    teacher = model(frames).predictions
    assert_close(model(frames, context=T).predictions, teacher)
    for context in (1, 3):
        assert_close(model(frames, context=context, mask=torch.ones(B, T - 2)).predictions, teacher)
    # and differs from free running, so the comparison above can fail
    assert not torch.allclose(model(frames, context=3).predictions, teacher)


@pytest.mark.parametrize("cell", CELL_NAMES)
def test_zeros_mask_and_none_are_free_running(cell):
    model = make(cell)
    frames = frames_like(model)
    free = model(frames, context=3).predictions
    assert_close(model(frames, context=3, mask=torch.zeros(B, T - 2)).predictions, free)
    assert_close(free, manual_rollout(model, frames, context=3)[0])
    # frames after the context are never read
    noisy = frames.clone()
    noisy[:, 3:] = float("nan")
    assert_close(model(noisy, context=3).predictions, free)


def test_scheduled_sampling_equals_manual():
    model = make(decoupling=True)
    frames, mask = frames_like(model), binary_mask()
    out = model(frames, context=3, mask=mask)
    preds, _, decouple = manual_rollout(model, frames, context=3, mask=mask)
    assert_close(out.predictions, preds)
    assert_close(out.decouple_loss, decouple)


def test_mask_entries_before_context_are_ignored():
    model = make()
    frames, mask = frames_like(model), binary_mask()
    other = mask.clone()
    other[:, :2] = 1 - other[:, :2]  # entries t-1 for steps t = 1, 2 < context = 3
    assert_close(
        model(frames, context=3, mask=mask).predictions,
        model(frames, context=3, mask=other).predictions,
    )


def test_reverse_scheduled_sampling_equals_manual():
    """context=1 with a (B, T-2) mask: step 0 reads frame 0, step t >= 1 mixes with mask[:, t-1]."""
    model = make(decoupling=True)
    frames = frames_like(model)
    mask = torch.tensor([[1.0, 0.0, 1.0, 0.0], [0.0, 1.0, 1.0, 0.0]])
    out = model(frames, context=1, mask=mask)
    preds, _, decouple = manual_rollout(model, frames, context=1, mask=mask)
    assert_close(out.predictions, preds)
    assert_close(out.decouple_loss, decouple)


def test_reverse_scheduled_sampling_by_hand():
    """The same rule spelled out step by step with the model's cells and a one-layer model."""
    model = make(num_layers=1, decoupling=False)
    frames = frames_like(model)
    mask = torch.tensor([[1.0, 0.0, 0.0, 1.0], [0.0, 0.0, 1.0, 1.0]])
    cell, state, pred, preds = model.cells[0], None, None, []
    for t in range(T - 1):
        if t == 0:
            x = frames[:, 0]
        else:
            m = mask[:, t - 1, None, None, None]
            x = m * frames[:, t] + (1 - m) * pred
        h, state = cell(patchify(x, P), state)
        # a single layer: its memory comes from itself at the previous step
        pred = unpatchify(model.decoder(h), P)
        preds.append(pred)
    assert_close(model(frames, context=1, mask=mask).predictions, torch.stack(preds, 1))


def test_mask_shapes_agree():
    model = make(in_channels=2)
    frames = frames_like(model)
    mask = binary_mask()
    expected = model(frames, context=2, mask=mask).predictions
    shapes = [
        mask[:, :, None, None, None],  # (B, T-2, 1, 1, 1)
        mask[:, :, None, None, None].expand(B, T - 2, 2, H, W),  # (B, T-2, C, H, W)
        mask[:, :, None, None, None].expand(B, T - 2, 1, H, W),  # (B, T-2, 1, H, W)
        mask[:, :, None, None, None].expand(B, T - 2, 2, 1, 1),  # (B, T-2, C, 1, 1)
    ]
    for m in shapes:
        assert_close(model(frames, context=2, mask=m).predictions, expected)
    # a mask shared by the batch broadcasts over it
    shared = torch.tensor([1.0, 0.0, 1.0, 0.0])
    assert_close(
        model(frames, context=2, mask=shared[None, :, None, None, None]).predictions,
        model(frames, context=2, mask=shared.expand(B, -1)).predictions,
    )
    # a mask differing between samples and channels changes the result
    assert not torch.allclose(model(frames, context=2, mask=1 - mask).predictions, expected)


def test_pixel_varying_mask_equals_manual():
    model = make(in_channels=2, patch_order="modernn")
    frames = frames_like(model)
    gen = torch.Generator().manual_seed(4)
    mask = torch.rand(B, T - 2, 2, H, W, generator=gen)  # soft, per pixel
    out = model(frames, context=1, mask=mask)
    assert_close(out.predictions, manual_rollout(model, frames, context=1, mask=mask)[0])


# ------------------------------------------------------------------ state in / out
@pytest.mark.parametrize("cell", CELL_NAMES)
@pytest.mark.parametrize("k", [1, 3])
def test_chunked_rollout_equals_one_rollout(cell, k):
    model = make(cell)
    frames = frames_like(model)
    full = model(frames)
    first = model(frames[:, : k + 1])
    second = model(frames[:, k:], state=first.state)
    assert_close(torch.cat([first.predictions, second.predictions], 1), full.predictions)
    for a, b in zip(second.state, full.state, strict=True):
        for x, y in zip(a, b, strict=True):
            assert_close(x, y)


def test_chunked_rollout_with_state_equals_manual():
    model = make(decoupling=True)
    frames = frames_like(model)
    first = model(frames[:, :3])
    out = model(frames[:, 2:], context=2, mask=binary_mask(t=T - 2), state=first.state)
    preds, _, decouple = manual_rollout(
        model, frames[:, 2:], context=2, mask=binary_mask(t=T - 2), state=first.state
    )
    assert_close(out.predictions, preds)
    assert_close(out.decouple_loss, decouple)


def test_state_changes_the_output():
    model = make()
    frames = frames_like(model)
    warm = model(frames[:, :3]).state
    assert not torch.allclose(
        model(frames[:, 2:], state=warm).predictions, model(frames[:, 2:]).predictions
    )


# ------------------------------------------------------------------ generate
@pytest.mark.parametrize("cell", CELL_NAMES)
def test_generate_equals_free_running_forward(cell):
    model = make(cell)
    t_c, horizon = 2, 9  # longer than any rollout the tests train on
    frames = frames_like(model, t=t_c + horizon)
    frames[:, t_c:] = float("nan")  # arbitrary: never read
    video = model.generate(frames[:, :t_c], horizon=horizon).predictions
    assert video.shape == (B, horizon, 1, H, W)
    assert torch.isfinite(video).all()
    expected = model(frames, context=t_c).predictions[:, t_c - 1 :]
    assert_close(video, expected)
    assert not video.requires_grad


def test_generate_continues_from_state():
    model = make()
    frames = frames_like(model, t=8)
    warm = model(frames[:, :4])  # state after reading frames 0..2
    continued = model.generate(frames[:, 3:5], horizon=4, state=warm.state).predictions
    assert_close(continued, model.generate(frames[:, :5], horizon=4).predictions)


def test_generate_horizon_one_is_the_last_teacher_forced_prediction():
    model = make()
    frames = frames_like(model)
    assert_close(
        model.generate(frames[:, :4], horizon=1).predictions,
        model(frames[:, :5]).predictions[:, 3:4],
    )


# ------------------------------------------------------------------ channels and layers
def test_out_channels_differ_from_in_channels():
    model = make(in_channels=3, out_channels=1)
    frames = frames_like(model)
    out = model(frames)
    assert out.predictions.shape == (B, T - 1, 1, H, W)
    assert_close(out.predictions, manual_rollout(model, frames)[0])
    # context T-1: the last step reads a true frame too, no prediction is fed back
    assert model(frames, context=T - 1).predictions.shape == (B, T - 1, 1, H, W)
    with pytest.raises(ValueError, match="out_channels=1 != in_channels=3"):
        model(frames, context=2)
    with pytest.raises(ValueError, match="out_channels"):
        model(frames, context=2, mask=torch.ones(B, T - 2))
    assert model.generate(frames[:, :3], horizon=1).predictions.shape == (B, 1, 1, H, W)
    with pytest.raises(ValueError, match="out_channels"):
        model.generate(frames[:, :3], horizon=2)


@pytest.mark.parametrize(("cell", "hidden"), [("convlstm", [4, 6, 8]), ("modernn", [6, 4])])
def test_hidden_channels_per_layer(cell, hidden):
    model = make(cell, hidden_channels=hidden, num_layers=len(hidden))
    assert model.num_layers == len(hidden)
    assert model.hidden_channels == tuple(hidden)
    assert [c.hidden_channels for c in model.cells] == hidden
    frames = frames_like(model)
    out = model(frames, context=3)
    assert [s.h.shape[1] for s in out.state] == hidden
    assert_close(out.predictions, manual_rollout(model, frames, context=3)[0])


def test_zigzag_with_unequal_hidden_channels_raises():
    with pytest.raises(ValueError, match="equal hidden_channels"):
        make("stlstm", hidden_channels=[4, 6])
    with pytest.raises(ValueError, match="hidden_channels"):
        make("convlstm", hidden_channels=[])


class TinyConvGRU(nn.Module):
    """A user-defined cell: ``(x, state) -> (h, state)`` with a 1-tuple state."""

    def __init__(self, in_channels: int, hidden_channels: int) -> None:
        super().__init__()
        self.hidden_channels = hidden_channels
        self.gates = nn.Conv2d(in_channels + hidden_channels, 2 * hidden_channels, 3, padding=1)
        self.cand = nn.Conv2d(in_channels + hidden_channels, hidden_channels, 3, padding=1)

    def forward(
        self, x: Tensor, state: tuple[Tensor] | None = None
    ) -> tuple[Tensor, tuple[Tensor]]:
        h = (
            x.new_zeros(x.shape[0], self.hidden_channels, *x.shape[2:])
            if state is None
            else state[0]
        )
        z, r = torch.sigmoid(self.gates(torch.cat([x, h], 1))).chunk(2, 1)
        n = torch.tanh(self.cand(torch.cat([x, r * h], 1)))
        h = (1 - z) * h + z * n
        return h, (h,)


def test_user_cell_factory():
    def factory(c_in: int, c_hidden: int) -> nn.Module:
        return stpl.ConvLSTMCell(c_in, c_hidden, 3, forget_bias=1.0)

    model = make(factory)
    assert all(c.forget_bias == 1.0 for c in model.cells)
    frames = frames_like(model)
    assert_close(model(frames, context=3).predictions, manual_rollout(model, frames, context=3)[0])

    gru = make(TinyConvGRU, hidden_channels=[4, 5])
    out = gru(frames, context=3)
    assert out.predictions.shape == (B, T - 1, 1, H, W)
    assert [s[0].shape[1] for s in out.state] == [4, 5]
    assert_close(out.predictions, manual_rollout(gru, frames, context=3)[0])
    first = gru(frames[:, :3])
    second = gru(frames[:, 2:], state=first.state)
    assert_close(torch.cat([first.predictions, second.predictions], 1), gru(frames).predictions)


def test_cell_options_with_a_factory_raise():
    with pytest.raises(ValueError, match="cell options"):
        make(TinyConvGRU, norm="layer")


def test_unknown_cell_name_lists_cells():
    with pytest.raises(ValueError, match="unknown cell") as info:
        make("gru")
    for name in stpl.CELLS:
        assert repr(name) in str(info.value)


# ------------------------------------------------------------------ actions
def test_action_conditioning():
    model = make(action_channels=3)
    frames = frames_like(model)
    gen = torch.Generator().manual_seed(9)
    vec = torch.randn(B, T, 3, generator=gen)
    maps = vec[..., None, None].expand(B, T, 3, H, W)
    out = model(frames, context=3, actions=vec)
    assert_close(model(frames, context=3, actions=maps.contiguous()).predictions, out.predictions)
    assert_close(out.predictions, manual_rollout(model, frames, context=3, actions=vec)[0])
    # the actions matter
    assert not torch.allclose(model(frames, context=3, actions=-vec).predictions, out.predictions)
    # pixel-varying action maps
    varying = torch.randn(B, T, 3, H, W, generator=gen)
    assert_close(
        model(frames, context=3, actions=varying).predictions,
        manual_rollout(model, frames, context=3, actions=varying)[0],
    )
    # generate reads one action per step that runs
    video = model.generate(frames[:, :2], horizon=4, actions=vec[:, :5]).predictions
    assert_close(video, model(frames, context=2, actions=vec).predictions[:, 1:5])


def test_action_errors():
    model = make(action_channels=3)
    frames = frames_like(model)
    with pytest.raises(ValueError, match="actions"):
        model(frames)
    with pytest.raises(ValueError, match="actions"):
        model(frames, actions=torch.zeros(B, T, 2))
    with pytest.raises(ValueError, match="actions"):
        model(frames, actions=torch.zeros(B, 2, 3))  # does not cover the steps
    with pytest.raises(ValueError, match="actions"):
        model.generate(frames[:, :2], horizon=4, actions=torch.zeros(B, 3, 3))
    with pytest.raises(ValueError, match="action_channels"):
        make()(frames, actions=torch.zeros(B, T, 3))


# ------------------------------------------------------------------ decoupling
def test_decoupling_term_equals_plain_computation():
    model = make(decoupling=True, num_layers=3)
    frames = frames_like(model)
    out = model(frames, context=2)
    # by hand: every (step, layer) term, then the mean over steps and layers
    _, _, expected = manual_rollout(model, frames, context=2)
    assert out.decouple_loss.dim() == 0
    assert_close(out.decouple_loss, expected)
    assert 0 < out.decouple_loss.item() < 1
    assert make()(frames).decouple_loss is None


def test_decoupling_needs_increments():
    with pytest.raises(ValueError, match="decoupling"):
        make("convlstm", decoupling=True)


def test_decoupling_adapter_gets_gradient():
    model = make(decoupling=True)
    out = model(frames_like(model))
    out.decouple_loss.backward()
    assert model.adapter.weight.grad is not None
    assert model.adapter.weight.grad.abs().sum() > 0


# ------------------------------------------------------------------ checkpointing, training
def test_checkpoint_steps_gives_identical_outputs_and_gradients():
    plain = make(decoupling=True).train()
    ckpt = make(decoupling=True, checkpoint_steps=True).train()
    ckpt.load_state_dict(plain.state_dict())
    frames, mask = frames_like(plain), binary_mask()
    results = []
    for model in (plain, ckpt):
        out = model(frames, context=2, mask=mask)
        loss = F.mse_loss(out.predictions, frames[:, 1:]) + 0.1 * out.decouple_loss
        loss.backward()
        results.append((out, {n: p.grad for n, p in model.named_parameters()}))
    (a, ga), (b, gb) = results
    assert_close(a.predictions, b.predictions)
    assert_close(a.decouple_loss, b.decouple_loss)
    assert ga.keys() == gb.keys()
    for name in ga:
        assert_close(ga[name], gb[name], msg=name)


# bf16 against float32 over the T - 1 = 5 steps of a 2-layer model: measured worst cases
# (8 input draws) are 2 % (predictions), 3 % (state), 5 % (all gradients together) for MoDeRNN,
# under 1 % for the others, norm-wise; the bounds leave about 3x room.
MODEL_BF16_RTOL = {"predictions": 0.08, "state": 0.1, "decouple": 0.03, "loss": 0.01, "grads": 0.15}


def _train_step(model, frames, mask, autocast: bool):
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        out = model(frames, context=2, mask=None if mask is None else mask.to(frames.dtype))
        loss = F.mse_loss(out.predictions.float(), frames[:, 1:].float())
        if out.decouple_loss is not None:
            loss = loss + 0.1 * out.decouple_loss.float()
    loss.backward()
    return out, loss


@pytest.mark.parametrize("cell", ["stlstm", "modernn", "convlstm"])
def test_bf16_autocast_forward_backward(cell):
    """Autocast bf16 against the same step in float32: outputs, loss and gradients bounded."""
    model = make(cell, decoupling=cell == "stlstm").train()
    frames, mask = frames_like(model), binary_mask()
    ref_model = copy.deepcopy(model)
    out, loss = _train_step(model, frames, mask, autocast=True)
    ref, ref_loss = _train_step(ref_model, frames, mask, autocast=False)
    rtol = MODEL_BF16_RTOL
    _plain.assert_bf16_close(out.predictions, ref.predictions, rtol["predictions"], "predictions")
    for low, f32 in zip(flat_state(out.state), flat_state(ref.state), strict=True):
        _plain.assert_bf16_close(low, f32, rtol["state"], "state")
    if cell == "stlstm":
        _plain.assert_bf16_close(out.decouple_loss, ref.decouple_loss, rtol["decouple"], "decouple")
    _plain.assert_bf16_close(loss, ref_loss, rtol["loss"], "loss")
    for n, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), n
    grads = _plain.flat([p.grad for p in model.parameters()])
    ref_grads = _plain.flat([p.grad for p in ref_model.parameters()])
    _plain.assert_bf16_close(grads, ref_grads, rtol["grads"], "grads")


def flat_state(state) -> list[Tensor]:
    return [t for layer in state for t in layer]


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_dtypes(dtype):
    """The model converted to dtype: outputs in dtype, bounded against float32."""
    model = make()
    ref = model(frames_like(model), context=2)
    model = model.to(dtype)
    out = model(frames_like(model).to(dtype), context=2)
    assert out.predictions.dtype == dtype
    assert all(t.dtype == dtype for t in flat_state(out.state))
    if dtype == torch.bfloat16:
        rtol = MODEL_BF16_RTOL
        _plain.assert_bf16_close(out.predictions, ref.predictions, rtol["predictions"], "pred")
        for low, f32 in zip(flat_state(out.state), flat_state(ref.state), strict=True):
            _plain.assert_bf16_close(low, f32, rtol["state"], "state")
    else:
        assert_close(out.predictions.float(), ref.predictions, rtol=1e-4, atol=1e-5)
        assert_close([t.float() for t in flat_state(out.state)], flat_state(ref.state))


def test_gradcheck_float64():
    model = make(num_layers=1, hidden_channels=2).double()
    frames = torch.rand(1, 3, 1, 4, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda f: model(f, context=1).predictions, (frames,))


# ------------------------------------------------------------------ compile
def test_compile_fullgraph():
    model = make(decoupling=True)
    frames, mask = frames_like(model, t=4), binary_mask(t=4)
    explanation = torch._dynamo.explain(model)(frames, context=2, mask=mask)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    compiled = torch.compile(model, backend="eager", fullgraph=True)
    out = compiled(frames, context=2, mask=mask)
    ref = model(frames, context=2, mask=mask)
    assert_close(out.predictions, ref.predictions)
    assert_close(out.decouple_loss, ref.decouple_loss)


@pytest.mark.slow
@pytest.mark.parametrize("cell", ["convlstm", "modernn"])
def test_compile_fullgraph_other_cells(cell):
    model = make(cell)
    frames = frames_like(model, t=4)
    compiled = torch.compile(model, backend="eager", fullgraph=True)
    assert_close(compiled(frames, context=2).predictions, model(frames, context=2).predictions)


@pytest.fixture
def fresh_dynamo():
    """Compiled steps of every model share dynamo's cache (and its recompile limit)."""
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _grads(model: nn.Module) -> dict[str, Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("checkpoint_steps", [False, True])
def test_compile_step_matches_eager(checkpoint_steps, fresh_dynamo):
    # aot_eager traces forward and backward like inductor but runs them eagerly (fast)
    from torch._dynamo.backends.debugging import aot_eager
    from torch._dynamo.utils import counters

    model = make(decoupling=True, checkpoint_steps=checkpoint_steps)
    frames, mask = frames_like(model, t=5), binary_mask(t=5)
    ref = model(frames, context=2, mask=mask)
    (ref.predictions.square().mean() + ref.decouple_loss).backward()
    ref_grads = _grads(model)
    model.zero_grad(set_to_none=True)

    graphs: list[torch.fx.GraphModule] = []

    def backend(gm: torch.fx.GraphModule, example_inputs: list[Tensor]) -> object:
        graphs.append(gm)
        return aot_eager(gm, example_inputs)

    counters.clear()
    keys = set(model.state_dict())
    assert model.compile_step(backend=backend, fullgraph=True) is model
    out = model(frames, context=2, mask=mask)
    (out.predictions.square().mean() + out.decouple_loss).backward()
    assert sum(counters["graph_break"].values()) == 0
    # a few graphs (zero state at t=0, carried state after), then reused: no recompiles
    assert 2 <= len(graphs) <= 3
    compiled_graphs = len(graphs)
    model(frames, context=2, mask=mask).predictions.sum().backward()
    assert len(graphs) == compiled_graphs
    model.zero_grad(set_to_none=True)
    out = model(frames, context=2, mask=mask)
    (out.predictions.square().mean() + out.decouple_loss).backward()
    assert_close(out.predictions, ref.predictions)
    assert_close(out.decouple_loss, ref.decouple_loss)
    grads = _grads(model)
    assert grads.keys() == ref_grads.keys()
    for name in grads:
        assert_close(grads[name], ref_grads[name], msg=name)
    assert set(model.state_dict()) == keys
    with torch.no_grad():
        assert_close(
            model.generate(frames[:, :3], 2).predictions,
            model.compile_step(False).generate(frames[:, :3], 2).predictions,
        )
    assert model._compiled_step is None


def test_compile_step_deepcopy_steps_its_own_weights(fresh_dynamo):
    import copy

    model = make().compile_step(backend="eager")
    frames = frames_like(model)
    ref = model(frames, context=3).predictions
    twin = copy.deepcopy(model)
    with torch.no_grad():
        for p in twin.parameters():
            p.mul_(0.5)
    assert_close(model(frames, context=3).predictions, ref)
    assert not torch.allclose(twin(frames, context=3).predictions, ref)
    assert_close(
        twin(frames, context=3).predictions, twin.compile_step(False)(frames, 3).predictions
    )


# ------------------------------------------------------------------ errors
def test_error_messages():
    model = make()
    frames = frames_like(model)
    with pytest.raises(
        ValueError, match=r"frames must be \(B, T, C, H, W\); got shape \(2, 1, 8, 8\)"
    ):
        model(frames[:, 0])
    with pytest.raises(ValueError, match=r"C=1 channels"):
        model(torch.rand(B, T, 3, H, W))
    with pytest.raises(ValueError, match=r"H=7 is not divisible by patch_size=2"):
        model(torch.rand(B, T, 1, 7, 8))
    with pytest.raises(ValueError, match="floating"):
        model(torch.zeros(B, T, 1, H, W, dtype=torch.long))
    with pytest.raises(ValueError, match="T >= 2"):
        model(frames[:, :1])
    state = model(frames).state
    with pytest.raises(ValueError, match=r"state must hold one state per layer \(2\); got 1"):
        model(frames, state=state[:1])
    with pytest.raises(ValueError, match="state"):
        model(frames[:1], state=state)  # another batch size
    for bad in (torch.ones(B, T - 1), torch.ones(B, T - 2, 1, 1), torch.ones(B, T - 2, 2, 1, 1)):
        with pytest.raises(ValueError, match=r"mask must be \(B, T-2\)"):
            model(frames, context=2, mask=bad)
    for context in (0, -1, 2.5, True, "3"):
        with pytest.raises(ValueError, match="context must be a positive int"):
            model(frames, context=context)
    with pytest.raises(ValueError, match="horizon"):
        model.generate(frames, horizon=0)
    with pytest.raises(ValueError, match="context_frames"):
        model.generate(frames[:, 0], horizon=2)


def test_constructor_errors():
    with pytest.raises(ValueError, match="patch_size"):
        make(patch_size=0)
    with pytest.raises(ValueError, match="kernel_size"):
        make(kernel_size=4)
    with pytest.raises(ValueError, match="patch_order"):
        make(patch_order="nope")
    with pytest.raises(ValueError, match="encoder"):
        make(encoder="mlp")
    with pytest.raises(ValueError, match="in_channels"):
        make(in_channels=0)


def test_repr_shows_hyper_parameters():
    text = repr(make(decoupling=True))
    for part in ("cell='stlstm'", "hidden_channels=[4, 4]", "patch_size=2", "decoupling=True"):
        assert part in text


def test_mask_without_batch_dims_broadcasts_like_numpy() -> None:
    torch.manual_seed(0)
    model = stpl.EncoderStackDecoder("convlstm", 1, hidden_channels=4, num_layers=1, patch_size=2)
    frames = torch.rand(2, 5, 1, 4, 4)
    per_pixel = (torch.rand(3, 1, 4, 4) > 0.5).float()  # (T-2, C, H, W), shared by the batch
    full = per_pixel.expand(2, 3, 1, 4, 4)
    a = model(frames, context=1, mask=per_pixel).predictions
    b = model(frames, context=1, mask=full).predictions
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_actions_with_a_cell_that_takes_none_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="action_channels needs a cell that takes actions"):
        stpl.EncoderStackDecoder("convlstm", 1, hidden_channels=4, action_channels=2)
