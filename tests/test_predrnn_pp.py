"""PredRNN++: CausalLSTMCell, GradientHighwayUnit and PredRNNPlusPlus against plain equations.

The equations of ``reference-implementations.md`` section 4a are written out below with
``F.conv2d`` / ``F.layer_norm`` in float64, reading the cells' parameters by name. The
model is re-stated as OpenSTL's ``PredRNNpp_Model`` loop over a state dict with OpenSTL's
own parameter names and channels-last patch layout, so ``load_reference`` is checked at
sizes other than the golden file's (C=2 image channels, 3 layers, kernel 5).
"""

from __future__ import annotations

import re
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from einops import rearrange
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor
from torch.testing import assert_close

import stpl
from _plain import gate_conv, rand_maps, randomize_
from stpl.interop import (
    convert_cell_state_dict,
    convert_state_dict,
    load_reference,
    load_reference_cell,
)

B, C_IN, NH, H, W = 2, 3, 4, 5, 6
SD = dict[str, Tensor]


# ------------------------------------------------------------------ plain equations
def causal_lstm(p: SD, x: Tensor, h: Tensor, c: Tensor, m: Tensor, forget_bias: float = 1.0):
    """Section 4a, written out; ``p`` holds the cell's parameters by name."""
    i_x, f_x, g_x, i_xp, f_xp, g_xp, o_x = torch.chunk(gate_conv(p, "conv_x", x), 7, 1)
    i_h, f_h, g_h, o_h = torch.chunk(gate_conv(p, "conv_h", h), 4, 1)
    i_c, f_c, g_c = torch.chunk(gate_conv(p, "conv_c", c), 3, 1)
    i_m, f_m, m_m = torch.chunk(gate_conv(p, "conv_m", m), 3, 1)
    i = torch.sigmoid(i_x + i_h + i_c)
    f = torch.sigmoid(f_x + f_h + f_c + forget_bias)
    g = torch.tanh(g_x + g_h + g_c)
    c_new = f * c + i * g
    i_c2, g_c2, f_c2, o_c2 = torch.chunk(gate_conv(p, "conv_c2m", c_new), 4, 1)  # i, g, f, o
    i_p = torch.sigmoid(i_xp + i_m + i_c2)
    f_p = torch.sigmoid(f_xp + f_m + f_c2 + forget_bias)
    g_p = torch.tanh(g_xp + g_c2)
    m_new = f_p * torch.tanh(m_m) + i_p * g_p
    o = torch.tanh(o_x + o_h + o_c2 + gate_conv(p, "conv_om", m_new))
    last = F.conv2d(torch.cat([c_new, m_new], 1), p["conv_last.weight"], p.get("conv_last.bias"))
    return o * torch.tanh(last), c_new, m_new


def ghu(p: SD, x: Tensor, z: Tensor) -> Tensor:
    gates = gate_conv(p, "x_concat", x) + gate_conv(p, "z_concat", z)
    pp, u = torch.chunk(gates, 2, 1)
    u = torch.sigmoid(u)
    return u * torch.tanh(pp) + (1 - u) * z


def params(module: torch.nn.Module) -> SD:
    return dict(module.named_parameters())


NORMS = [(None, None), ("layer", None), ("layer", (H, W))]


@pytest.mark.parametrize(("norm", "spatial_size"), NORMS)
@pytest.mark.parametrize(("bias", "forget_bias"), [(False, 1.0), (True, 0.0)])
def test_causal_lstm_matches_plain_equations(norm, spatial_size, bias, forget_bias):
    cell = stpl.CausalLSTMCell(
        C_IN, NH, 3, norm=norm, spatial_size=spatial_size, bias=bias, forget_bias=forget_bias
    )
    randomize_(cell.double())
    (x,) = rand_maps(1, (B, C_IN, H, W))
    state = stpl.STLSTMState(*rand_maps(3, (B, NH, H, W), seed=2))
    h, new = cell(x, state)
    ref = causal_lstm(params(cell), x, *state, forget_bias=forget_bias)
    assert isinstance(new, stpl.STLSTMState)
    assert h is new.h
    for got, want, name in zip(new, ref, "hcm", strict=True):
        assert_close(got, want, msg=name)


@pytest.mark.parametrize(("norm", "spatial_size"), NORMS)
@pytest.mark.parametrize("c_in", [NH, C_IN])
def test_ghu_matches_plain_equations(norm, spatial_size, c_in):
    unit = randomize_(stpl.GradientHighwayUnit(c_in, NH, 3, norm=norm, spatial_size=spatial_size))
    unit.double()
    (x,) = rand_maps(1, (B, c_in, H, W))
    (z,) = rand_maps(1, (B, NH, H, W), seed=3)
    z_new, state = unit(x, stpl.HighwayState(z))
    assert isinstance(state, stpl.HighwayState) and state.z is z_new
    assert_close(z_new, ghu(params(unit), x, z))


def test_ghu_layer_norm_normalises_both_gates_jointly():
    """The reference's GHU crashes with layer norm; ours normalises the 2 nh channels."""
    unit = stpl.GradientHighwayUnit(NH, NH, 3, norm="layer", spatial_size=(H, W))
    with torch.no_grad():
        unit.x_concat.conv.weight.normal_()  # (the 0.001 initialisation is below the norm's eps)
    assert tuple(unit.x_concat[1].weight.shape) == (2 * NH, H, W)
    assert tuple(unit.z_concat[1].weight.shape) == (2 * NH, H, W)
    x = torch.randn(B, NH, H, W)
    y = unit.x_concat(x)
    assert_close(y.mean(dim=(1, 2, 3)), torch.zeros(B), atol=1e-5, rtol=0)
    assert_close(y.var(dim=(1, 2, 3), unbiased=False), torch.ones(B), atol=1e-3, rtol=0)


def test_ghu_initialisation():
    unit = stpl.GradientHighwayUnit(NH, NH, 3)
    for gate in (unit.x_concat, unit.z_concat):
        w = gate.conv.weight
        assert w.abs().max() <= 0.001 and w.abs().max() > 0.0005
    wide = stpl.GradientHighwayUnit(NH, NH, 3, init_range=None)
    assert wide.x_concat.conv.weight.abs().max() > 0.01  # nn.Conv2d's default
    with torch.no_grad():
        unit.x_concat.conv.weight.fill_(1.0)
    unit.reset_parameters()
    assert unit.x_concat.conv.weight.abs().max() <= 0.001


# ------------------------------------------------------------------ golden and counts
def test_golden_causal_lstm_and_ghu(golden):
    d = golden("cell_openstl_causallstm.pt")
    cfg, inp, out = d["config"], d["inputs"], d["outputs"]
    cell = stpl.CausalLSTMCell(
        cfg["in_channel"], cfg["num_hidden"], cfg["filter_size"], reference_compatible=True
    )
    cell.load_state_dict(d["state_dict"])  # OpenSTL's names, dead conv_o included
    _, state = cell(inp["x"], stpl.STLSTMState(inp["h"], inp["c"], inp["m"]))
    for key in "hcm":
        assert_close(getattr(state, key), out[key], msg=key)
    lean = load_reference_cell("openstl_causallstm", d["state_dict"])
    assert lean.conv_o is None and not lean.reference_compatible
    _, state = lean(inp["x"], stpl.STLSTMState(inp["h"], inp["c"], inp["m"]))
    assert_close(tuple(state), (out["h"], out["c"], out["m"]))
    converted = convert_cell_state_dict("openstl_causallstm", d["state_dict"])
    assert set(converted) == set(d["state_dict"]) - {"conv_o.0.weight"}

    d = golden("cell_openstl_ghu.pt")
    unit = load_reference_cell("openstl_ghu", d["state_dict"])
    assert isinstance(unit, stpl.GradientHighwayUnit)
    z, _ = unit(d["inputs"]["x"], stpl.HighwayState(d["inputs"]["z"]))
    assert_close(z, d["outputs"]["z"])


def test_reference_compatible_keeps_openstl_state_dict_layout():
    """Section 4d: CausalLSTMCell(16, 64, k5) has 1,928,192 parameters in OpenSTL, conv_o
    (64 x 128 x 5 x 5 = 204,800) dead; GHU(64, 64, k5) has 409,600."""
    ref = stpl.CausalLSTMCell(16, 64, 5, reference_compatible=True)
    lean = stpl.CausalLSTMCell(16, 64, 5)
    shapes = {k: tuple(v.shape) for k, v in ref.state_dict().items()}
    assert shapes == {
        "conv_x.0.weight": (448, 16, 5, 5),
        "conv_h.0.weight": (256, 64, 5, 5),
        "conv_c.0.weight": (192, 64, 5, 5),
        "conv_m.0.weight": (192, 64, 5, 5),
        "conv_o.0.weight": (64, 128, 5, 5),
        "conv_c2m.0.weight": (256, 64, 5, 5),
        "conv_om.0.weight": (64, 64, 5, 5),
        "conv_last.weight": (64, 128, 1, 1),
    }
    assert sum(p.numel() for p in ref.parameters()) == 1_928_192
    assert sum(p.numel() for p in lean.parameters()) == 1_928_192 - 204_800
    assert sum(p.numel() for p in stpl.GradientHighwayUnit(64, 64, 5).parameters()) == 409_600
    # the dead convolution changes nothing
    lean.load_state_dict({k: v for k, v in ref.state_dict().items() if not k.startswith("conv_o.")})
    x = torch.randn(1, 16, 6, 6)
    assert_close(ref(x), lean(x))


@pytest.mark.parametrize(
    ("hidden", "kernel", "expected", "expected_ref"),
    [
        (64, 3, 3_231_744, 3_526_656),
        (64, 5, 8_916_992, 9_736_192),
        (128, 5, 35_307_520, 38_584_320),
    ],
)
def test_preset_parameter_counts(hidden, kernel, expected, expected_ref):
    """Section 7: OpenSTL PredRNN++ at Moving MNIST (patch 4, 4 layers): 3.527M (4x64, k3),
    9.736M (4x64, k5), 38.584M (4x128, k5); without the dead conv_o: 3.232M, 8.917M,
    35.308M."""
    options = {"hidden_channels": hidden, "kernel_size": kernel, "device": "meta"}
    model = stpl.get_model("predrnn_pp", **options)
    ref = stpl.get_model("predrnn_pp", reference_compatible=True, **options)
    assert sum(p.numel() for p in model.parameters()) == expected
    assert sum(p.numel() for p in ref.parameters()) == expected_ref


# ------------------------------------------------------------------ cell battery
def build(kind: str, **kw):
    if kind == "causal":
        return stpl.CausalLSTMCell(C_IN, NH, 3, **kw)
    return stpl.GradientHighwayUnit(C_IN, NH, 3, **kw)


KINDS = ["causal", "ghu"]


def random_state(cell, x: Tensor, seed: int = 7):
    zero = cell.initial_state(x)
    return type(zero)(*rand_maps(len(zero), zero[0].shape, dtype=x.dtype, seed=seed))


@pytest.mark.parametrize("kind", KINDS)
def test_carried_state_equals_one_loop(kind):
    cell = randomize_(build(kind, norm="layer"))
    xs = rand_maps(5, (B, C_IN, H, W), dtype=torch.float32)
    state, hs = None, []
    for x in xs:
        h, state = cell(x, state)
        hs.append(h)
    fresh = build(kind, norm="layer")
    fresh.load_state_dict(cell.state_dict())
    mid = None
    for x in xs[:2]:
        _, mid = cell(x, mid)
    tail = []
    for x in xs[2:]:
        h, mid = fresh(x, mid)
        tail.append(h)
    assert_close(tail, hs[2:])
    assert_close(tuple(mid), tuple(state))
    assert not torch.allclose(hs[-1], hs[1])


@pytest.mark.parametrize("kind", KINDS)
def test_state_none_is_zero_state(kind):
    cell = randomize_(build(kind))
    (x,) = rand_maps(1, (B, C_IN, H, W), dtype=torch.float32)
    zero = cell.initial_state(x)
    assert all(torch.equal(t, torch.zeros(B, NH, H, W)) for t in zero)
    assert_close(cell(x), cell(x, zero), rtol=0, atol=0)


@pytest.mark.parametrize("kind", KINDS)
def test_gradcheck(kind):
    cell = randomize_(stpl.CausalLSTMCell(2, 3, 3) if kind == "causal" else build(kind)).double()
    c_in = cell.in_channels
    (x,) = rand_maps(1, (1, c_in, 3, 4))
    state = random_state(cell, x)
    n = len(state)

    def step(x, *rest):
        _, new = cell(x, type(state)(*rest[:n]))
        return tuple(new)

    inputs = tuple(t.requires_grad_() for t in (x, *state))
    assert torch.autograd.gradcheck(step, inputs, fast_mode=True)


@pytest.mark.parametrize("kind", KINDS)
def test_every_parameter_gets_a_gradient(kind):
    cell = randomize_(build(kind, norm="layer"))
    (x,) = rand_maps(1, (B, C_IN, H, W), dtype=torch.float32)
    _, new = cell(x, random_state(cell, x))
    weights = rand_maps(len(new), new[0].shape, seed=9)
    sum((t * w).sum() for t, w in zip(new, weights, strict=True)).backward()
    for name, p in cell.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_reference_compatible_conv_o_is_dead():
    cell = randomize_(build("causal", reference_compatible=True))
    (x,) = rand_maps(1, (B, C_IN, H, W), dtype=torch.float32)
    h, _ = cell(x, random_state(cell, x))
    h.sum().backward()
    assert cell.conv_o is not None and cell.conv_o.conv.weight.grad is None


@pytest.mark.parametrize("kind", KINDS)
def test_autocast_bfloat16_is_close_to_float32(kind):
    cell = randomize_(build(kind, norm="layer"))
    xs = rand_maps(3, (B, C_IN, H, W), dtype=torch.float32)
    ref_state, state = None, None
    for x in xs:
        ref, ref_state = cell(x, ref_state)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out, state = cell(x, state)
    assert out.dtype in (torch.bfloat16, torch.float32)
    assert (out.float() - ref).abs().max() < 0.05
    out.float().sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in cell.parameters())


@pytest.mark.parametrize("kind", KINDS)
def test_compile_fullgraph_matches_eager(kind):
    torch._dynamo.reset()
    cell = randomize_(build(kind, norm="layer", bias=True))
    (x,) = rand_maps(1, (B, C_IN, H, W), dtype=torch.float32)
    compiled = torch.compile(cell, fullgraph=True, backend="aot_eager")
    h, state = compiled(x)
    assert_close((h, state), cell(x))
    assert_close(compiled(x, state), cell(x, state))
    torch._dynamo.reset()


@pytest.mark.parametrize("kind", KINDS)
def test_channels_last(kind):
    cell = randomize_(build(kind))
    (x,) = rand_maps(1, (B, C_IN, H, W), dtype=torch.float32)
    x_cl = x.contiguous(memory_format=torch.channels_last)
    assert all(t.is_contiguous(memory_format=torch.channels_last) for t in cell.initial_state(x_cl))
    assert_close(cell(x_cl), cell(x))


def test_extra_repr():
    text = repr(stpl.CausalLSTMCell(3, 4, 5, norm="layer", reference_compatible=True))
    for item in [
        "3, 4",
        "kernel_size=5",
        "norm='layer'",
        "forget_bias=1.0",
        "reference_compatible=True",
    ]:
        assert item in text
    text = repr(stpl.GradientHighwayUnit(3, 4, 5))
    for item in ["3, 4", "kernel_size=5", "norm=None", "init_range=0.001"]:
        assert item in text


# ------------------------------------------------------------------ errors
@pytest.mark.parametrize("kind", KINDS)
def test_errors_name_the_argument(kind):
    cell = build(kind)
    x = torch.randn(B, C_IN, H, W)
    with pytest.raises(ValueError, match=r"x must have 3 channels, \(B, 3, H, W\)"):
        cell(torch.randn(B, C_IN + 1, H, W))
    with pytest.raises(ValueError, match=r"x must be \(B, C, H, W\) with C=3"):
        cell(x[0])
    field = "z" if kind == "ghu" else "h"
    bad = list(cell.initial_state(x))
    bad[0] = torch.zeros(B + 1, NH, H, W)
    with pytest.raises(
        ValueError, match=rf"state\.{field} must be \(B, C, H, W\) = \(2, 4, 5, 6\)"
    ):
        cell(x, bad)
    with pytest.raises(ValueError, match=r"state must be a .*got a LSTMState"):
        cell(x, stpl.LSTMState(torch.zeros(B, NH, H, W), torch.zeros(B, NH, H, W)))
    with pytest.raises(ValueError, match="kernel_size must be a positive odd int"):
        build(kind, norm=None).__class__(C_IN, NH, 4)
    with pytest.raises(ValueError, match="hidden_channels must be a positive int; got 0"):
        cell.__class__(C_IN, 0, 3)
    with pytest.raises(ValueError, match="norm must be None or 'layer'"):
        cell.__class__(C_IN, NH, 3, norm="batch")


def test_error_options():
    with pytest.raises(ValueError, match="reference_compatible must be True or False"):
        stpl.CausalLSTMCell(C_IN, NH, 3, reference_compatible="yes")
    with pytest.raises(ValueError, match="init_range must be a finite number >= 0"):
        stpl.GradientHighwayUnit(C_IN, NH, 3, init_range=-1.0)
    with pytest.raises(ValueError, match=r"state must be a STLSTMState\(h, c, m\)"):
        stpl.CausalLSTMCell(C_IN, NH, 3)(torch.randn(B, C_IN, H, W), stpl.HighwayState(None))


# ------------------------------------------------------------------ the model
LAYERS, P, C, HW, K, T, CONTEXT = 3, 2, 2, 8, 5, 6, 3
S, PC = HW // P, P * P * C


def openstl_state_dict(seed: int = 0, nh: int = NH) -> SD:
    """OpenSTL ``PredRNNpp_Model`` names and shapes (section 4a/4d), random values."""
    gen = torch.Generator().manual_seed(seed)

    def conv(c_out: int, c_in: int, k: int = K) -> Tensor:
        return (torch.rand(c_out, c_in, k, k, generator=gen) * 2 - 1) * (3 / (c_in * k * k)) ** 0.5

    sd: SD = {
        "gradient_highway.z_concat.0.weight": conv(2 * nh, nh),
        "gradient_highway.x_concat.0.weight": conv(2 * nh, nh),
    }
    for layer in range(LAYERS):
        pre = f"cell_list.{layer}."
        c_in = PC if layer == 0 else nh
        for name, c_out, ci in [
            ("conv_x", 7 * nh, c_in),
            ("conv_h", 4 * nh, nh),
            ("conv_c", 3 * nh, nh),
            ("conv_m", 3 * nh, nh),
            ("conv_o", nh, 2 * nh),
            ("conv_c2m", 4 * nh, nh),
            ("conv_om", nh, nh),
        ]:
            sd[f"{pre}{name}.0.weight"] = conv(c_out, ci)
        sd[pre + "conv_last.weight"] = conv(nh, 2 * nh, 1)
    sd["conv_last.weight"] = conv(PC, nh, 1)
    return sd


def openstl_predrnnpp(sd: SD, frames_patch: Tensor, mask_ref: Tensor, context: int) -> Tensor:
    """``PredRNNpp_Model.forward`` (scheduled sampling) in the reference's own layout."""
    frames = frames_patch.permute(0, 1, 4, 2, 3)
    mask = mask_ref.permute(0, 1, 4, 2, 3)
    b, t_total = frames.shape[:2]
    zeros = frames.new_zeros(b, NH, S, S)
    h, c = [zeros] * LAYERS, [zeros] * LAYERS
    memory, z = zeros, zeros
    x_gen = zeros
    outputs = []

    def layer_params(prefix: str) -> SD:
        return {k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix)}

    for t in range(t_total - 1):
        if t < context:
            net = frames[:, t]
        else:
            net = mask[:, t - context] * frames[:, t] + (1 - mask[:, t - context]) * x_gen
        for layer in range(LAYERS):
            inp = net if layer == 0 else (z if layer == 1 else h[layer - 1])
            h[layer], c[layer], memory = causal_lstm(
                layer_params(f"cell_list.{layer}."), inp, h[layer], c[layer], memory
            )
            if layer == 0:
                z = ghu(layer_params("gradient_highway."), h[0], z)
        x_gen = F.conv2d(h[-1], sd["conv_last.weight"])
        outputs.append(x_gen)
    return torch.stack(outputs, 1).permute(0, 1, 3, 4, 2)


def to_patches(frames: Tensor) -> Tensor:
    return rearrange(frames, "b t c (h ph) (w pw) -> b t h w (ph pw c)", ph=P, pw=P)


def data(seed: int = 3) -> tuple[Tensor, Tensor]:
    gen = torch.Generator().manual_seed(seed)
    frames = torch.rand(B, T, C, HW, HW, generator=gen)
    mask = (torch.rand(B, T - 2, generator=gen) < 0.5).float()
    return frames, mask


@pytest.mark.parametrize("reference_compatible", [False, True])
def test_load_reference_equals_plain_openstl_model(reference_compatible):
    sd = openstl_state_dict()
    model = load_reference(
        "openstl_predrnnpp",
        sd,
        patch_size=P,
        image_channels=C,
        reference_compatible=reference_compatible,
    )
    assert isinstance(model, stpl.PredRNNPlusPlus)
    assert model.hidden_channels == (NH,) * LAYERS and model.kernel_size == K
    frames, mask = data()
    mask_ref = mask[:, CONTEXT - 1 :, None, None, None].expand(-1, -1, S, S, PC)
    expected = openstl_predrnnpp(sd, to_patches(frames), mask_ref, CONTEXT)
    with torch.no_grad():
        out = model(frames, context=CONTEXT, mask=mask)
    assert_close(to_patches(out.predictions), expected)
    assert out.decouple_loss is None
    n_ref = sum(v.numel() for v in sd.values())
    n_dead = sum(v.numel() for k, v in sd.items() if ".conv_o." in k)
    n_ours = sum(p.numel() for p in model.parameters())
    assert n_ours == (n_ref if reference_compatible else n_ref - n_dead)


def test_convert_state_dict_mapping():
    sd = openstl_state_dict()
    converted = convert_state_dict("openstl_predrnnpp", sd, patch_size=P, image_channels=C)
    expected = {}
    for key in sd:
        if ".conv_o." in key:
            continue
        if key == "conv_last.weight":
            expected["decoder.weight"] = key
        elif key.startswith("cell_list."):
            expected["cells." + key[len("cell_list.") :]] = key
        else:
            expected[key] = key
    assert {k: v.data_ptr() for k, v in converted.items()} == {
        ours: sd[ref].data_ptr() for ours, ref in expected.items()
    }
    kept = convert_state_dict(
        "openstl_predrnnpp", sd, patch_size=P, image_channels=C, reference_compatible=True
    )
    assert len(kept) == len(sd)


def test_load_reference_patch_order_override():
    sd = openstl_state_dict()
    default = load_reference("openstl_predrnnpp", sd, patch_size=P, image_channels=C)
    other = load_reference(
        "openstl_predrnnpp", sd, patch_size=P, image_channels=C, patch_order="pixel_shuffle"
    )
    frames, mask = data()
    with torch.no_grad():
        assert_close(
            other(frames, context=CONTEXT, mask=mask).predictions,
            default(frames, context=CONTEXT, mask=mask).predictions,
        )


def test_load_reference_errors():
    sd = openstl_state_dict()
    with pytest.raises(ValueError, match=re.escape("gradient_highway.x_concat.0.weight")):
        load_reference(
            "openstl_predrnnpp",
            {k: v for k, v in sd.items() if "x_concat" not in k},
            patch_size=P,
            image_channels=C,
        )
    with pytest.raises(ValueError, match="foo"):
        load_reference(
            "openstl_predrnnpp", {**sd, "foo": torch.zeros(1)}, patch_size=P, image_channels=C
        )
    one = {k: v for k, v in sd.items() if not re.match(r"cell_list\.[12]\.", k)}
    with pytest.raises(ValueError, match="fewer than 2 layers"):
        load_reference("openstl_predrnnpp", one, patch_size=P, image_channels=C)
    # OpenSTL's GHU with layer_norm=1: LayerNorm([nh, H, W]) on 2nh channels
    ln = dict(sd)
    for layer in range(LAYERS):
        for name in ("conv_x", "conv_h", "conv_c", "conv_m", "conv_o", "conv_c2m", "conv_om"):
            c_out = sd[f"cell_list.{layer}.{name}.0.weight"].shape[0]
            ln[f"cell_list.{layer}.{name}.1.weight"] = torch.ones(c_out, S, S)
            ln[f"cell_list.{layer}.{name}.1.bias"] = torch.zeros(c_out, S, S)
    for name in ("x_concat", "z_concat"):
        ln[f"gradient_highway.{name}.1.weight"] = torch.ones(NH, S, S)
        ln[f"gradient_highway.{name}.1.bias"] = torch.zeros(NH, S, S)
    with pytest.raises(ValueError, match="GHU with layer_norm=1 raises in forward"):
        load_reference("openstl_predrnnpp", ln, patch_size=P, image_channels=C)
    with pytest.raises(ValueError, match="GHU with layer_norm=1"):
        load_reference_cell("openstl_ghu", {k[17:]: v for k, v in ln.items() if "highway" in k})


def small_model(**kw) -> stpl.PredRNNPlusPlus:
    torch.manual_seed(0)
    options = {"hidden_channels": NH, "num_layers": LAYERS, "patch_size": P, "kernel_size": 3}
    return stpl.PredRNNPlusPlus(in_channels=C, **{**options, **kw})


def test_model_state_and_errors():
    model = small_model()
    frames, _ = data()
    out = model(frames[:, :4])
    assert isinstance(out.state, stpl.PredRNNPlusPlusState)
    assert len(out.state.layers) == LAYERS
    assert isinstance(out.state.highway, stpl.HighwayState)
    assert out.state.highway.z.shape == (B, NH, S, S)
    # continuing from the state equals one pass
    second = model(frames[:, 3:], state=out.state)
    full = model(frames)
    assert_close(torch.cat([out.predictions, second.predictions], 1), full.predictions)
    # a plain tuple (layers, highway) is accepted, as after a pytree round trip
    again = model(frames[:, 3:], state=(list(out.state.layers), tuple(out.state.highway)))
    assert_close(again.predictions, second.predictions)
    with pytest.raises(
        ValueError, match=r"state must be a PredRNNPlusPlusState\(layers, highway\)"
    ):
        model(frames, state=list(out.state.layers))
    with pytest.raises(ValueError, match=r"must be a PredRNNPlusPlusState\(layers, highway\)"):
        model(frames, state=list(out.state.layers[:2]))  # the layout of EncoderStackDecoder
    with pytest.raises(ValueError, match=r"state\.highway\.z must be .*\(2, 4, 4, 4\)"):
        model(frames, state=(out.state.layers, stpl.HighwayState(torch.zeros(B, NH, 3, 3))))
    with pytest.raises(ValueError, match=r"state must hold one state per layer \(3\)"):
        model(frames, state=(out.state.layers[:2], out.state.highway))
    with pytest.raises(ValueError, match="num_layers >= 2"):
        small_model(num_layers=1)
    with pytest.raises(ValueError, match="decoupling"):
        small_model(decoupling=True)
    with pytest.raises(TypeError, match="unexpected keyword argument"):
        small_model(peephole=True)


def test_model_layer_norm_and_any_cell():
    model = small_model(norm="layer")
    assert model.gradient_highway.norm == "layer"
    frames, _ = data()
    out = model(frames, context=CONTEXT)
    assert torch.isfinite(out.predictions).all()
    stl = small_model(cell="stlstm")
    assert stl.zigzag and isinstance(stl.cells[0], stpl.STLSTMCell)
    assert stl(frames).predictions.shape == (B, T - 1, C, HW, HW)


@pytest.mark.slow
def test_model_checkpoint_steps_and_compile_step():
    from torch._dynamo.backends.debugging import aot_eager

    torch._dynamo.reset()
    frames, mask = data()
    model = small_model()
    ref = model(frames, context=CONTEXT, mask=mask).predictions
    ref.square().mean().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    ckpt = small_model(checkpoint_steps=True)
    out = ckpt(frames, context=CONTEXT, mask=mask).predictions
    out.square().mean().backward()
    assert_close(out, ref)
    for n, p in ckpt.named_parameters():
        assert_close(p.grad, grads[n], msg=n)
    compiled = small_model().compile_step(backend=aot_eager, fullgraph=True)
    out = compiled(frames, context=CONTEXT, mask=mask).predictions
    out.square().mean().backward()
    assert_close(out, ref)
    for n, p in compiled.named_parameters():
        assert_close(p.grad, grads[n], msg=n)
    with torch.no_grad():
        assert_close(
            compiled.generate(frames[:, :3], 3).predictions,
            model.generate(frames[:, :3], 3).predictions,
        )
    torch._dynamo.reset()


def test_model_repr_and_registry():
    model = small_model()
    assert "cell='causal_lstm'" in repr(model) and "(gradient_highway)" in repr(model)
    assert stpl.CELLS["causal_lstm"] is stpl.CausalLSTMCell
    assert "predrnn_pp" in stpl.list_models()
    preset = stpl.get_model("predrnn_pp", device="meta")
    assert isinstance(preset, stpl.PredRNNPlusPlus)
    assert preset.cells[0].conv_o is None
    ln = stpl.get_model("predrnn_pp", norm="layer", device="meta")
    assert ln.cells[0].spatial_size == (16, 16) and ln.gradient_highway.spatial_size == (16, 16)


def test_stpl_bench_runs_the_preset():
    from stpl.benchmark import BenchConfig, run_benchmark

    config = BenchConfig(
        model="predrnn_pp", hidden=4, layers=2, image_size=8, patch_size=2, batch=2, frames=4
    )
    result = run_benchmark(replace(config, repeats=2, memory=False, isolated=False))
    assert result["step"]["median_s"] > 0 and result["flops"] > 0


@settings(max_examples=6, deadline=None)
@given(
    b=st.integers(1, 2),
    c_in=st.integers(1, 3),
    nh=st.integers(1, 3),
    h=st.sampled_from([1, 3, 5]),
    w=st.sampled_from([2, 7]),
    k=st.sampled_from([1, 3, 5]),
)
def test_shapes_and_finite(b, c_in, nh, h, w, k):
    for cell in (stpl.CausalLSTMCell(c_in, nh, k), stpl.GradientHighwayUnit(c_in, nh, k)):
        x = torch.randn(b, c_in, h, w)
        out, state = cell(x)
        out, state = cell(x, state)
        assert out.shape == (b, nh, h, w)
        assert all(t.shape == (b, nh, h, w) and torch.isfinite(t).all() for t in state)
