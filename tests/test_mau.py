"""MAUCell and the MAU model against plain float64 equations, OpenSTL's golden outputs, and
the cell/model battery (carried state, gradcheck, compile, bf16, errors, parameter counts).

The plain functions below are written from ``spec/baselines-round3.md`` section 1 with
``F.conv2d`` / ``F.layer_norm`` and an explicit loop over the window slots: nothing here
calls the code under test.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from einops import rearrange
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.testing import assert_close

import _plain
import stpl
from _plain import randomize_
from stpl.interop import convert_state_dict, load_reference, load_reference_cell
from stpl.models import MAU

B, C, H, W, TAU = 2, 4, 5, 6, 3


# ------------------------------------------------------------------ plain equations
def plain_mau_cell(p, t, s, t_hist, s_hist, *, residual=False):
    """Section 1a; ``t_hist``/``s_hist`` are lists of ``(B, C, H, W)`` slots."""
    q = _plain.gate_conv(p, "conv_s_next", s)
    u = _plain.gate_conv(p, "conv_t_next", t)
    d = q.shape[1] * q.shape[2] * q.shape[3]
    scores = torch.stack([(k * q).sum(dim=(1, 2, 3)) / math.sqrt(d) for k in s_hist])
    alpha = torch.softmax(scores, dim=0)
    trend = sum(alpha[j][:, None, None, None] * v for j, v in enumerate(t_hist))
    gate = torch.sigmoid(u)
    t_fus = gate * t + (1 - gate) * trend
    t_g, t_t, t_s = torch.chunk(_plain.gate_conv(p, "conv_t", t_fus), 3, 1)
    s_g, s_t, s_s = torch.chunk(_plain.gate_conv(p, "conv_s", s), 3, 1)
    t_new = torch.sigmoid(t_g) * t_t + (1 - torch.sigmoid(t_g)) * s_t
    s_new = torch.sigmoid(s_g) * s_s + (1 - torch.sigmoid(s_g)) * t_s
    if residual:
        s_new = s_new + s
    return t_new, s_new


def plain_mau_model(model: MAU, frames, context, mask):
    """Section 1c with growing history lists (the reference's bookkeeping), float64."""
    p = dict(model.named_parameters())
    n = len(model.decoders)
    patches = stpl.patchify(frames, model.patch_size, "predrnn")
    b = frames.shape[0]
    h = frames.shape[3] // (model.patch_size * model.sr_size)
    w = frames.shape[4] // (model.patch_size * model.sr_size)
    zeros = frames.new_zeros(b, model.hidden_channels, h, w)
    t_state = [zeros] * model.num_layers
    t_lists = [[zeros] * model.tau for _ in range(model.num_layers)]
    s_lists = [[zeros] * model.tau for _ in range(model.num_layers)]
    outputs, x_gen = [], None
    for t in range(frames.shape[1] - 1):
        x = patches[:, t]
        if t >= context:
            m = mask[:, t - 1, None, None, None] if mask is not None else 0.0
            x = m * x + (1 - m) * x_gen
        feats = [F.leaky_relu(F.conv2d(x, p["encoders.0.weight"], p["encoders.0.bias"]), 0.2)]
        for i in range(1, n + 1):
            y = F.conv2d(feats[-1], p[f"encoders.{i}.weight"], p[f"encoders.{i}.bias"], 2, 1)
            feats.append(F.leaky_relu(y, 0.2))
        s = feats[-1]
        for layer in range(model.num_layers):
            cp = {
                k[len(f"cells.{layer}.") :]: v
                for k, v in p.items()
                if k.startswith(f"cells.{layer}.")
            }
            t_hist, s_hist = t_lists[layer][-model.tau :], s_lists[layer][-model.tau :]
            s_lists[layer].append(s)
            t_state[layer], s = plain_mau_cell(
                cp, t_state[layer], s, t_hist, s_hist, residual=model.cell_mode == "residual"
            )
            t_lists[layer].append(t_state[layer])
        out = s
        for i in range(n):
            wt, bt = p[f"decoders.{i}.weight"], p[f"decoders.{i}.bias"]
            out = F.conv_transpose2d(out, wt, bt, 2, 1, 1)
            if i < n - 1:
                out = F.leaky_relu(out, 0.2)
            if model.model_mode == "recall":
                out = out + feats[-2 - i]
        x_gen = F.conv2d(out, p["readout.weight"], p["readout.bias"])
        outputs.append(x_gen)
    return stpl.unpatchify(torch.stack(outputs, 1), model.patch_size, "predrnn")


def windows(seed=3, dtype=torch.float64, c=C, h=H, w=W, tau=TAU):
    t, s = _plain.rand_maps(2, (B, c, h, w), dtype=dtype, seed=seed)
    t_hist, s_hist = _plain.rand_maps(2, (B, tau, c, h, w), dtype=dtype, seed=seed + 1)
    return t, s, t_hist, s_hist


# ------------------------------------------------------------------ cell: equations
@pytest.mark.parametrize("spatial_size", [None, (H, W)])
@pytest.mark.parametrize("cell_mode", ["normal", "residual"])
@pytest.mark.parametrize("bias", [True, False])
def test_cell_matches_plain_equations(spatial_size, cell_mode, bias):
    cell = stpl.MAUCell(C, C, 3, tau=TAU, cell_mode=cell_mode, spatial_size=spatial_size, bias=bias)
    randomize_(cell.double())
    t, s, t_hist, s_hist = windows()
    s_new, state = cell(s, stpl.MAUState(t, t_hist, s_hist))
    t_ref, s_ref = plain_mau_cell(
        dict(cell.named_parameters()),
        t,
        s,
        list(t_hist.unbind(1)),
        list(s_hist.unbind(1)),
        residual=cell_mode == "residual",
    )
    assert_close(s_new, s_ref)
    assert_close(state.t_state, t_ref)
    # the windows drop their oldest slot and take T' and the input S
    assert_close(state.t_history, torch.cat([t_hist[:, 1:], t_ref[:, None]], 1))
    assert_close(state.s_history, torch.cat([s_hist[:, 1:], s[:, None]], 1))
    assert_close(cell.step(t, s, t_hist, s_hist), (t_ref, s_ref))


def test_attention_is_invariant_to_the_slot_order():
    cell = randomize_(stpl.MAUCell(C, C, 3, tau=TAU).double())
    t, s, t_hist, s_hist = windows()
    perm = torch.tensor([2, 0, 1])
    assert_close(cell.step(t, s, t_hist, s_hist), cell.step(t, s, t_hist[:, perm], s_hist[:, perm]))


def test_zero_slots_take_softmax_weight():
    """Spec 1b: a tau=3 window with one zero slot is not a tau=2 window of the real slots."""
    three = randomize_(stpl.MAUCell(C, C, 3, tau=3).double())
    two = stpl.MAUCell(C, C, 3, tau=2).double()
    two.load_state_dict(three.state_dict())
    t, s, t_hist, s_hist = windows()
    real_t, real_s = t_hist[:, 1:], s_hist[:, 1:]
    padded = (torch.cat([torch.zeros_like(real_t[:, :1]), real_t], 1),)
    padded_s = torch.cat([torch.zeros_like(real_s[:, :1]), real_s], 1)
    out3 = three.step(t, s, padded[0], padded_s)
    out2 = two.step(t, s, real_t, real_s)
    assert not torch.allclose(out3[0], out2[0])
    ref = plain_mau_cell(
        dict(three.named_parameters()), t, s, list(padded[0].unbind(1)), list(padded_s.unbind(1))
    )
    assert_close(out3, ref)


def test_zero_state_is_the_reference_start():
    cell = randomize_(stpl.MAUCell(C, C, 3, tau=TAU))
    (x,) = _plain.rand_maps(1, (B, C, H, W), dtype=torch.float32)
    zero = cell.initial_state(x)
    assert zero.t_state.shape == (B, C, H, W)
    assert zero.t_history.shape == zero.s_history.shape == (B, TAU, C, H, W)
    assert all(torch.count_nonzero(z) == 0 for z in zero)
    assert_close(cell(x), cell(x, zero), rtol=0, atol=0)


# ------------------------------------------------------------------ cell: golden
@pytest.mark.parametrize("mode", ["normal", "residual"])
def test_golden_cell(golden, mode):
    d = golden("cell_openstl_maucell.pt")
    i, o = d["inputs"], d["outputs"]
    cell = load_reference_cell(
        "openstl_mau", d["state_dict"], tau=d["config"]["tau"], cell_mode=mode
    )
    assert cell.spatial_size == (8, 8)
    state = stpl.MAUState(i["T_t"], i["t_att"].transpose(0, 1), i["s_att"].transpose(0, 1))
    suffix = "" if mode == "normal" else "_residual"
    with torch.no_grad():
        s_new, new_state = cell(i["S_t"], state)
    assert_close(s_new, o[f"S_new{suffix}"], atol=1e-5, rtol=1e-5)
    assert_close(new_state.t_state, o[f"T_new{suffix}"], atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------ cell: battery
def test_cell_carried_state_equals_one_loop():
    cell = randomize_(stpl.MAUCell(C, C, 3, tau=2))
    xs = _plain.rand_maps(6, (B, C, H, W), dtype=torch.float32)
    state, outs = None, []
    for x in xs:
        h, state = cell(x, state)
        outs.append(h)
    mid = None
    for x in xs[:4]:
        _, mid = cell(x, mid)
    fresh = stpl.MAUCell(C, C, 3, tau=2)
    fresh.load_state_dict(cell.state_dict())
    rest = []
    for x in xs[4:]:
        h, mid = fresh(x, mid)
        rest.append(h)
    assert_close(rest, outs[4:])
    assert_close(tuple(mid), tuple(state))


def test_cell_gradcheck():
    cell = randomize_(stpl.MAUCell(2, 2, 3, tau=2, spatial_size=(3, 4)).double())
    t, s, t_hist, s_hist = windows(c=2, h=3, w=4, tau=2)
    inputs = tuple(v.detach().requires_grad_() for v in (s, t, t_hist, s_hist))

    def step(s, t, t_hist, s_hist):
        out, state = cell(s, stpl.MAUState(t, t_hist, s_hist))
        return (out, *state)

    assert torch.autograd.gradcheck(step, inputs, fast_mode=True)


def test_cell_every_parameter_gets_a_gradient():
    cell = randomize_(stpl.MAUCell(C, C, 3, tau=TAU, spatial_size=(H, W)))
    t, s, t_hist, s_hist = windows(dtype=torch.float32)
    out, state = cell(s, stpl.MAUState(t, t_hist, s_hist))
    (out.square().sum() + state.t_state.square().sum()).backward()
    for name, p in cell.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_cell_compile_fullgraph():
    torch._dynamo.reset()
    cell = randomize_(stpl.MAUCell(C, C, 3, tau=TAU, cell_mode="residual"))
    (x,) = _plain.rand_maps(1, (B, C, H, W), dtype=torch.float32)
    compiled = torch.compile(cell, fullgraph=True, backend="aot_eager")
    h, state = compiled(x, None)
    assert_close((h, state), cell(x, None))
    assert_close(compiled(x, state), cell(x, state))


def test_cell_bfloat16_autocast_close_to_float32():
    cell = randomize_(stpl.MAUCell(8, 8, 3, tau=TAU))
    xs = _plain.rand_maps(3, (B, 8, 8, 8), dtype=torch.float32)
    state, ref = None, []
    for x in xs:
        h, state = cell(x, state)
        ref.append(h)
    state, low = None, []
    with torch.autocast("cpu", dtype=torch.bfloat16):
        for x in xs:
            h, state = cell(x, state)
            low.append(h)
    for a, b in zip(low, ref, strict=True):
        assert torch.isfinite(a).all()
        assert (a.float() - b).abs().max() < 0.1 * b.abs().max()


def test_cell_float64_and_channels_last():
    cell = randomize_(stpl.MAUCell(C, C, 3, tau=TAU)).double()
    (x,) = _plain.rand_maps(1, (B, C, H, W))
    h, state = cell(x)
    assert h.dtype == state.t_state.dtype == state.t_history.dtype == torch.float64
    x_cl = x.contiguous(memory_format=torch.channels_last)
    assert_close(cell(x_cl, state), cell(x, state))


def test_cell_errors():
    with pytest.raises(ValueError, match="in_channels == hidden_channels"):
        stpl.MAUCell(3, 4, 3)
    with pytest.raises(ValueError, match="tau"):
        stpl.MAUCell(4, 4, 3, tau=0)
    with pytest.raises(ValueError, match="cell_mode"):
        stpl.MAUCell(4, 4, 3, cell_mode="recall")
    with pytest.raises(ValueError, match="kernel_size"):
        stpl.MAUCell(4, 4, 4)
    with pytest.raises(ValueError, match="bias"):
        stpl.MAUCell(4, 4, 3, bias=1)
    cell = stpl.MAUCell(C, C, 3, tau=TAU, spatial_size=(H, W))
    (x,) = _plain.rand_maps(1, (B, C, H, W), dtype=torch.float32)
    with pytest.raises(ValueError, match="spatial_size"):
        cell(x[..., :4])
    with pytest.raises(ValueError, match="channels"):
        cell(x[:, :3])
    _, state = cell(x)
    with pytest.raises(ValueError, match=r"state.t_history must be \(B, tau, C, H, W\)"):
        cell(x, state._replace(t_history=state.t_history[:, 1:]))
    with pytest.raises(ValueError, match=r"state\.s_history"):
        cell(x, state._replace(s_history=state.s_history[:1]))
    with pytest.raises(ValueError, match=r"state\.t_state must"):
        cell(x, state._replace(t_state=state.t_state[:, :2]))
    with pytest.raises(ValueError, match="another cell type"):
        cell(x, stpl.LSTMState(state.t_state, state.t_state))
    with pytest.raises(TypeError, match=r"state\.t_history"):
        cell(x, state._replace(t_history=None))
    with pytest.raises(ValueError, match="dtype"):
        cell(x, state._replace(s_history=state.s_history.double()))


def test_cell_extra_repr_and_registry():
    cell = stpl.MAUCell(4, 4, 3, tau=2, cell_mode="residual")
    assert "tau=2" in repr(cell) and "residual" in repr(cell)
    assert stpl.CELLS["mau"] is stpl.MAUCell
    assert isinstance(cell, stpl.RecurrentCell) and cell.state_type is stpl.MAUState
    # a named cell in the generic stack (1x1 encoder to the hidden width)
    esd = stpl.EncoderStackDecoder(
        "mau",
        1,
        hidden_channels=4,
        num_layers=2,
        patch_size=2,
        kernel_size=3,
        encoder="conv1x1",
        tau=2,
    )
    frames = torch.rand(1, 4, 1, 8, 8)
    assert esd(frames).predictions.shape == (1, 3, 1, 8, 8)


# ------------------------------------------------------------------ model: golden
GOLDEN_MODES = {
    "predictions": {},
    "predictions_recall": {"model_mode": "recall"},
    "predictions_residual": {"cell_mode": "residual"},
}


@pytest.mark.parametrize("key", sorted(GOLDEN_MODES))
def test_golden_model(golden, key):
    d = golden("model_openstl_mau.pt")
    cfg, i = d["config"], d["inputs"]
    model = load_reference(
        "openstl_mau",
        d["state_dict"],
        patch_size=cfg["patch_size"],
        image_channels=cfg["in_shape"][1],
        tau=cfg["tau"],
        **GOLDEN_MODES[key],
    )
    assert (model.sr_size, model.spatial_size, model.num_layers) == (2, (4, 4), 2)
    with torch.no_grad():
        out = model(i["frames"], context=cfg["context"], mask=i["mask"])
    assert_close(out.predictions, d["outputs"][key], atol=1e-5, rtol=1e-5)


def test_golden_model_free_running_and_reference_layout(golden):
    d = golden("model_openstl_mau.pt")
    cfg, i, o = d["config"], d["inputs"], d["outputs"]
    model = load_reference("openstl_mau", d["state_dict"], patch_size=2, image_channels=1, tau=3)
    with torch.no_grad():
        free = model(i["frames"], context=cfg["context"]).predictions
        out = model(i["frames"], context=cfg["context"], mask=i["mask"]).predictions
    assert_close(free, o["predictions_free"], atol=1e-5, rtol=1e-5)
    # OpenSTL returns channels-first patch tensors (B, T-1, p*p*C, h, w) (spec section 8, #1)
    next_frames = rearrange(out, "b t c (h ph) (w pw) -> b t (ph pw c) h w", ph=2, pw=2)
    assert_close(next_frames, o["next_frames"], atol=1e-5, rtol=1e-5)
    target = rearrange(i["frames"][:, 1:], "b t c (h ph) (w pw) -> b t (ph pw c) h w", ph=2, pw=2)
    assert_close(F.mse_loss(next_frames, target), o["loss"])
    # its mask: one (h, w, p*p*C) slice per sample and forecast step, our (B, T-2) entries
    expected = i["mask"][:, cfg["context"] - 1 :, None, None, None].expand_as(i["mask_ref"])
    assert torch.equal(i["mask_ref"], expected)


# ------------------------------------------------------------------ model: plain and battery
@pytest.mark.parametrize(
    ("patch_size", "sr_size", "model_mode", "cell_mode", "mask"),
    [
        (1, 4, "normal", "normal", True),
        (2, 2, "recall", "residual", False),
        (2, 1, "recall", "normal", True),
    ],
)
def test_model_matches_plain_float64(patch_size, sr_size, model_mode, cell_mode, mask):
    torch.manual_seed(0)
    model = MAU(
        2,
        4,
        2,
        patch_size=patch_size,
        kernel_size=3,
        tau=2,
        sr_size=sr_size,
        model_mode=model_mode,
        cell_mode=cell_mode,
        spatial_size=(8 // (patch_size * sr_size),) * 2,
    )
    randomize_(model.double())
    gen = torch.Generator().manual_seed(2)
    frames = torch.rand(2, 6, 2, 8, 8, generator=gen, dtype=torch.float64)
    m = (torch.rand(2, 4, generator=gen) < 0.5).double() if mask else None
    out = model(frames, context=3, mask=m)
    assert_close(out.predictions, plain_mau_model(model, frames, 3, m))


def test_model_chunks_equal_one_pass_and_state_shapes():
    model = randomize_(MAU(1, 4, 2, patch_size=2, kernel_size=3, tau=3, sr_size=2))
    frames = torch.rand(2, 9, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    full = model(frames)
    first = model(frames[:, :5])
    second = model(frames[:, 4:], state=first.state)
    assert_close(torch.cat([first.predictions, second.predictions], 1), full.predictions)
    layer = full.state[0]
    assert isinstance(layer, stpl.MAUState)
    assert layer.t_history.shape == (2, 3, 4, 2, 2)


def test_model_gradcheck_tiny():
    model = randomize_(MAU(1, 2, 1, patch_size=2, kernel_size=3, tau=2, sr_size=2).double())
    frames = torch.rand(1, 4, 1, 4, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda f: model(f, context=2).predictions, (frames,), fast_mode=True
    )


def test_model_compile_step_fullgraph():
    torch._dynamo.reset()
    model = randomize_(MAU(1, 4, 1, patch_size=2, kernel_size=3, tau=2, sr_size=2))
    frames = torch.rand(2, 3, 1, 8, 8)
    eager = model(frames)
    model.compile_step(backend="aot_eager", fullgraph=True)
    compiled = model(frames)
    assert_close(compiled.predictions, eager.predictions)
    torch._dynamo.reset()


def test_model_bfloat16_autocast_close_to_float32():
    model = stpl.get_model("mau", hidden_channels=8, num_layers=2, image_size=16, tau=2)
    frames = torch.rand(2, 6, 1, 16, 16, generator=torch.Generator().manual_seed(3))
    ref = model(frames, context=3).predictions
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = model(frames, context=3).predictions
    assert torch.isfinite(low).all()
    assert (low.float() - ref).abs().max() < 0.05 * ref.abs().max() + 0.05


def test_model_errors():
    with pytest.raises(ValueError, match="same hidden_channels"):
        MAU(1, [4, 8])
    with pytest.raises(ValueError, match="sr_size"):
        MAU(1, 4, sr_size=3)
    with pytest.raises(ValueError, match="model_mode"):
        MAU(1, 4, model_mode="residual")
    with pytest.raises(ValueError, match="num_layers"):
        MAU(1, [4, 4], num_layers=3)
    model = MAU(1, 4, 2, patch_size=2, kernel_size=3, sr_size=4, spatial_size=(2, 2))
    with pytest.raises(ValueError, match="patch_size \\* sr_size"):
        model(torch.rand(1, 3, 1, 12, 12))
    with pytest.raises(ValueError, match="spatial_size=None"):
        model(torch.rand(1, 3, 1, 32, 32))
    out = model(torch.rand(1, 3, 1, 16, 16))
    with pytest.raises(ValueError, match="one MAUState per layer"):
        model(torch.rand(1, 3, 1, 16, 16), state=out.state[:1])
    with pytest.raises(ValueError, match=r"state\[0\]\.t_state must have shape \(2, 4, 2, 2\)"):
        model(torch.rand(2, 3, 1, 16, 16), state=out.state)
    bad = [s._replace(t_history=s.t_history[:, :1]) for s in out.state]
    with pytest.raises(
        ValueError, match=r"state\[0\]\.t_history must have shape \(1, 5, 4, 2, 2\)"
    ):
        model(torch.rand(1, 3, 1, 16, 16), state=bad)
    with pytest.raises(ValueError, match="image_size"):
        stpl.get_model("mau", image_size=30)


# ------------------------------------------------------------------ presets, loader, counts
def openstl_mmnist_state_dict() -> dict[str, torch.Tensor]:
    """Zero tensors with the shapes of OpenSTL's MAU_Model for configs/mmnist/MAU.py."""
    sd: dict[str, torch.Tensor] = {}
    for layer in range(4):
        for name, out in (
            ("conv_t", 192),
            ("conv_t_next", 64),
            ("conv_s", 192),
            ("conv_s_next", 64),
        ):
            pre = f"cell_list.{layer}.{name}"
            sd[f"{pre}.0.weight"] = torch.zeros(out, 64, 5, 5)
            sd[f"{pre}.0.bias"] = torch.zeros(out)
            sd[f"{pre}.1.weight"] = torch.zeros(out, 16, 16)
            sd[f"{pre}.1.bias"] = torch.zeros(out, 16, 16)
    sd["encoders.0.encoder_t_conv-1.weight"] = torch.zeros(64, 1, 1, 1)
    sd["encoders.0.encoder_t_conv-1.bias"] = torch.zeros(64)
    for i in range(2):
        sd[f"encoders.{i + 1}.encoder_t{i}.weight"] = torch.zeros(64, 64, 3, 3)
        sd[f"encoders.{i + 1}.encoder_t{i}.bias"] = torch.zeros(64)
        sd[f"decoders.{i}.c_decoder{i}.weight"] = torch.zeros(64, 64, 3, 3)
        sd[f"decoders.{i}.c_decoder{i}.bias"] = torch.zeros(64)
    sd["srcnn.0.weight"] = torch.zeros(1, 64, 1, 1)
    sd["srcnn.0.bias"] = torch.zeros(1)
    sd["merge.weight"] = torch.zeros(64, 128, 1, 1)
    sd["merge.bias"] = torch.zeros(64)
    sd["conv_last_sr.weight"] = torch.zeros(1, 2, 1, 1)
    sd["conv_last_sr.bias"] = torch.zeros(1)
    return sd


def test_parameter_counts_match_the_spec():
    """Section 4: 4,483,588 parameters, of which merge (8,256) and conv_last_sr (3) unused."""
    sd = openstl_mmnist_state_dict()
    assert sum(v.numel() for v in sd.values()) == 4_483_588
    with torch.device("meta"):
        model = stpl.get_model("mau")
    assert sum(p.numel() for p in model.parameters()) == 4_475_329
    assert sum(p.numel() for p in model.cells[0].parameters()) == 1_081_856
    converted = convert_state_dict("openstl_mau", sd, patch_size=1, image_channels=1)
    assert sum(v.numel() for v in converted.values()) == 4_475_329
    assert set(converted) == set(model.state_dict())
    loaded = load_reference("openstl_mau", sd, patch_size=1, image_channels=1)
    assert (loaded.sr_size, loaded.spatial_size, loaded.tau, loaded.kernel_size) == (
        4,
        (16, 16),
        5,
        5,
    )


def test_preset_is_the_moving_mnist_configuration():
    defaults = stpl.PRESETS["mau"]
    assert defaults["patch_size"] == 1 and defaults["sr_size"] == 4 and defaults["tau"] == 5
    with torch.device("meta"):
        model = stpl.get_model("mau")
        assert model.spatial_size == (16, 16)
        assert stpl.get_model("mau", spatial_size=None).spatial_size is None
        assert stpl.get_model("mau", image_size=(32, 48)).spatial_size == (8, 12)


@pytest.mark.parametrize("order", ["pixel_shuffle", "modernn"])
def test_loader_patch_order_override(golden, order):
    d = golden("model_openstl_mau.pt")
    i = d["inputs"]
    ref = load_reference("openstl_mau", d["state_dict"], patch_size=2, image_channels=1, tau=3)
    other = load_reference(
        "openstl_mau", d["state_dict"], patch_size=2, image_channels=1, tau=3, patch_order=order
    )
    assert other.patch_order == order
    with torch.no_grad():
        assert_close(
            other(i["frames"], context=3, mask=i["mask"]).predictions,
            ref(i["frames"], context=3, mask=i["mask"]).predictions,
        )


def test_loader_errors(golden):
    sd = golden("model_openstl_mau.pt")["state_dict"]
    with pytest.raises(ValueError, match="image_channels"):
        load_reference("openstl_mau", sd, patch_size=2, image_channels=3)
    with pytest.raises(ValueError, match="surprise"):
        load_reference(
            "openstl_mau", {**sd, "surprise.weight": torch.zeros(1)}, patch_size=2, image_channels=1
        )
    with pytest.raises(ValueError, match="conv_s_next"):
        load_reference(
            "openstl_mau",
            {k: v for k, v in sd.items() if "conv_s_next" not in k},
            patch_size=2,
            image_channels=1,
        )
    with pytest.raises(ValueError, match="cell_mode"):
        load_reference("openstl_mau", sd, patch_size=2, image_channels=1, cell_mode="recall")
    # the net_param checkpoint wrapper is accepted
    model = load_reference("openstl_mau", {"net_param": sd}, patch_size=2, image_channels=1)
    assert isinstance(model, MAU)


def test_benchmark_tool_runs_the_preset():
    from stpl.benchmark import BenchConfig, run_benchmark

    config = BenchConfig(
        model="mau",
        hidden=4,
        layers=1,
        image_size=16,
        batch=1,
        frames=3,
        repeats=1,
        memory=False,
        isolated=False,
    )
    result = run_benchmark(config)
    assert result["step"]["median_s"] > 0 and result["flops"] > 0


@settings(max_examples=8, deadline=None)
@given(
    b=st.integers(1, 2),
    c=st.integers(1, 3),
    h=st.sampled_from([1, 3, 5]),
    w=st.sampled_from([2, 4, 7]),
    tau=st.integers(1, 4),
    k=st.sampled_from([1, 3]),
)
def test_cell_shapes_and_window_rotation(b, c, h, w, tau, k):
    cell = stpl.MAUCell(c, c, k, tau=tau)
    xs = [torch.randn(b, c, h, w) for _ in range(tau + 1)]
    state = None
    for x in xs:
        out, state = cell(x, state)
        assert out.shape == (b, c, h, w) and torch.isfinite(out).all()
    assert state.t_history.shape == state.s_history.shape == (b, tau, c, h, w)
    # after tau + 1 steps the key window holds exactly the last tau inputs, oldest first
    assert torch.equal(state.s_history, torch.stack(xs[1:], 1))
    assert torch.equal(state.t_history[:, -1], state.t_state)
