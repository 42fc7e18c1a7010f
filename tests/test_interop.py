"""``stpl.interop``: reference state dicts, built with the exact names and shapes of
``reference-implementations.md`` (sections 1a, 2, 3), load so that every value acts where
the reference equations say it acts.

The reference models are re-stated here as plain loops over ``F.conv2d`` that read the
*reference* parameter names and the reference's channels-last patch layout, so a parameter
that lands under the wrong name, a transposed patch order or a mis-indexed mask all fail.
The golden files (``test_golden_models.py``) check the same against the real reference code
at one configuration; these tests use C=2 image channels (so the patch order inside a
patch matters) and layer norms with random affine parameters.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.testing import assert_close

import _plain
import stpl
from stpl.interop import (
    CELL_SOURCES,
    SOURCES,
    convert_cell_state_dict,
    convert_state_dict,
    load_reference,
    load_reference_cell,
)
from stpl.patching import patch_permutation

B, T, C, HW, P, NH, K, LAYERS, CONTEXT = 2, 6, 2, 16, 2, 8, 3, 2, 3
S = HW // P  # map size of the patch tensors
PC = P * P * C  # channels of a patch tensor

SD = dict[str, Tensor]


# ------------------------------------------------------------------ random reference weights
class _Rand:
    def __init__(self, seed: int) -> None:
        self.gen = torch.Generator().manual_seed(seed)

    def conv(self, c_out: int, c_in: int, k: int) -> Tensor:
        w = torch.rand(c_out, c_in, k, k, generator=self.gen) * 2 - 1
        return w * (3.0 / (c_in * k * k)) ** 0.5

    def vec(self, *shape: int, centre: float = 0.0) -> Tensor:
        return centre + torch.rand(*shape, generator=self.gen) - 0.5


def _gate(sd: SD, r: _Rand, name: str, c_out: int, c_in: int, k: int, ln: bool) -> None:
    sd[f"{name}.0.weight"] = r.conv(c_out, c_in, k)
    if ln:
        sd[f"{name}.1.weight"] = r.vec(c_out, S, S, centre=1.0)
        sd[f"{name}.1.bias"] = r.vec(c_out, S, S)


def predrnn_state_dict(*, ln: bool, v2: bool, seed: int = 0) -> SD:
    """thuml/predrnn-pytorch ``predrnn`` / ``predrnn_v2`` (= OpenSTL PredRNN / PredRNNv2)."""
    r, sd = _Rand(seed), {}
    for layer in range(LAYERS):
        c_in = PC if layer == 0 else NH
        pre = f"cell_list.{layer}."
        _gate(sd, r, pre + "conv_x", 7 * NH, c_in, K, ln)
        _gate(sd, r, pre + "conv_h", 4 * NH, NH, K, ln)
        _gate(sd, r, pre + "conv_m", 3 * NH, NH, K, ln)
        _gate(sd, r, pre + "conv_o", NH, 2 * NH, K, ln)
        sd[pre + "conv_last.weight"] = r.conv(NH, 2 * NH, 1)
    sd["conv_last.weight"] = r.conv(PC, NH, 1)
    if v2:
        sd["adapter.weight"] = r.conv(NH, NH, 1)
    return sd


def convlstm_state_dict(*, ln: bool, seed: int = 0) -> SD:
    """OpenSTL ``ConvLSTM_Model``, dead ``conv_o`` / ``conv_last`` of every cell included."""
    r, sd = _Rand(seed), {}
    for layer in range(LAYERS):
        c_in = PC if layer == 0 else NH
        pre = f"cell_list.{layer}."
        _gate(sd, r, pre + "conv_x", 4 * NH, c_in, K, ln)
        _gate(sd, r, pre + "conv_h", 4 * NH, NH, K, ln)
        _gate(sd, r, pre + "conv_o", NH, 2 * NH, K, ln)
        sd[pre + "conv_last.weight"] = r.conv(NH, 2 * NH, 1)
    sd["conv_last.weight"] = r.conv(PC, NH, 1)
    return sd


def modernn_state_dict(seed: int = 0) -> SD:
    """czh-98/MoDeRNN ``MoDeRNN`` (embed, ``lstm.{l}`` cells, output)."""
    r, sd = _Rand(seed), {}
    sd["embed.weight"] = r.conv(NH, PC, 1)
    sd["embed.bias"] = r.vec(NH)
    for layer in range(LAYERS):
        pre = f"lstm.{layer}."
        sd[pre + "norm_cell.weight"] = r.vec(NH, S, S, centre=1.0)
        sd[pre + "norm_cell.bias"] = r.vec(NH, S, S)
        _gate(sd, r, pre + "conv_i2h", 4 * NH, NH, K, True)
        _gate(sd, r, pre + "conv_h2h", 4 * NH, NH, K, True)
        for k in (3, 5, 7):
            _gate(sd, r, f"{pre}conv{k}{k}_X", NH, NH, k, True)
            _gate(sd, r, f"{pre}conv{k}{k}_H", NH, NH, k, True)
    sd["output.weight"] = r.conv(PC, NH, 1)
    sd["output.bias"] = r.vec(PC)
    return sd


def state_dict_for(source: str, ln: bool = False) -> SD:
    if source in ("predrnn", "openstl_predrnn"):
        return predrnn_state_dict(ln=ln, v2=False)
    if source in ("predrnn_v2", "openstl_predrnnv2"):
        return predrnn_state_dict(ln=ln, v2=True)
    if source == "openstl_convlstm":
        return convlstm_state_dict(ln=ln)
    return modernn_state_dict()


# ------------------------------------------------------------------ plain reference models
def layer_params(sd: SD, prefix: str) -> SD:
    return {k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix)}


def reference_patch(frames: Tensor) -> Tensor:
    """predrnn ``reshape_patch``: channels-last ``(B, T, H/p, W/p, p*p*C)``, order (ph, pw, c)."""
    b, t, c, h, w = frames.shape
    x = frames.permute(0, 1, 3, 4, 2).reshape(b, t, h // P, P, w // P, P, c)
    return x.permute(0, 1, 2, 4, 3, 5, 6).reshape(b, t, h // P, w // P, P * P * c)


def reference_unpatch(x: Tensor) -> Tensor:
    b, t, h, w, _ = x.shape
    x = x.reshape(b, t, h, w, P, P, C).permute(0, 1, 2, 4, 3, 5, 6)
    return x.reshape(b, t, h * P, w * P, C).permute(0, 1, 4, 2, 3)


def modernn_patch(frames: Tensor) -> Tensor:
    """czh-98/MoDeRNN ``reshape_patch`` (channels-first, order (c, pw, ph))."""
    b, t, c, h, w = frames.shape
    x = frames.reshape(b * t, c, h // P, P, w // P, P).transpose(2, 5).transpose(4, 5)
    return x.reshape(b, t, c * P * P, h // P, w // P)


def modernn_unpatch(x: Tensor) -> Tensor:
    b, t, _, h, w = x.shape
    x = x.reshape(b * t, C, P, P, h, w).transpose(4, 5).transpose(2, 5)
    return x.reshape(b, t, C, h * P, w * P)


def predrnn_reference_model(
    sd: SD,
    frames_patch: Tensor,
    mask_ref: Tensor | None,
    *,
    input_length: int,
    reverse: bool,
    cell: str,
) -> tuple[Tensor, Tensor | None]:
    """The loop of predrnn / predrnn_v2 / OpenSTL ConvLSTM in the reference's own layout.

    ``mask_ref`` is channels-last: ``(B, T - input_length - 1, ...)`` for scheduled sampling
    (index ``t - input_length``), ``(B, T - 2, ...)`` with ``reverse`` (index ``t - 1``).
    """
    frames = frames_patch.permute(0, 1, 4, 2, 3)
    mask = None if mask_ref is None else mask_ref.permute(0, 1, 4, 2, 3)
    b, t_total = frames.shape[:2]
    zeros = frames.new_zeros(b, NH, S, S)
    h = [zeros] * LAYERS
    c = [zeros] * LAYERS
    memory = zeros
    x_gen = zeros
    outputs, decouple = [], []
    for t in range(t_total - 1):
        if reverse:
            net = (
                frames[:, 0]
                if t == 0
                else mask[:, t - 1] * frames[:, t] + (1 - mask[:, t - 1]) * x_gen
            )
        elif t < input_length:
            net = frames[:, t]
        else:
            m = mask[:, t - input_length]
            net = m * frames[:, t] + (1 - m) * x_gen
        for layer in range(LAYERS):
            p = layer_params(sd, f"cell_list.{layer}.")
            inp = net if layer == 0 else h[layer - 1]
            if cell == "convlstm":
                h[layer], c[layer] = _plain.convlstm(p, inp, h[layer], c[layer], forget_bias=0.0)
                continue
            h[layer], c[layer], memory, delta_c, delta_m = _plain.stlstm(
                p, inp, h[layer], c[layer], memory
            )
            if "adapter.weight" in sd:
                dc = F.normalize(F.conv2d(delta_c, sd["adapter.weight"]).flatten(2), dim=2)
                dm = F.normalize(F.conv2d(delta_m, sd["adapter.weight"]).flatten(2), dim=2)
                decouple.append(torch.abs(F.cosine_similarity(dc, dm, dim=2)).mean())
        x_gen = F.conv2d(h[-1], sd["conv_last.weight"])
        outputs.append(x_gen)
    next_frames = torch.stack(outputs, 1).permute(0, 1, 3, 4, 2)
    return next_frames, (torch.stack(decouple).mean() if decouple else None)


def modernn_reference_cell(p: SD, x: Tensor, h: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
    """``MoDeRNN_cell`` with its reference names: DCB (5 rounds, shared branches), ConvLSTM."""

    def attention(reads: str, source: Tensor) -> Tensor:
        branches = [_plain.gate_conv(p, f"conv{k}{k}_{reads}", source) for k in (3, 5, 7)]
        return torch.sigmoid((branches[0] + branches[1] + branches[2]) / 3)

    for i in range(1, 6):
        if i % 2:
            x = 2 * attention("H", h) * x
        else:
            h = 2 * attention("X", x) * h
    gates = _plain.gate_conv(p, "conv_i2h", x) + _plain.gate_conv(p, "conv_h2h", h)
    i_, f_, g_, o_ = torch.chunk(gates, 4, 1)
    c_new = torch.sigmoid(f_ + 1.0) * c + torch.sigmoid(i_) * torch.tanh(g_)
    c_new = F.layer_norm(c_new, c_new.shape[1:], p["norm_cell.weight"], p["norm_cell.bias"])
    return torch.sigmoid(o_) * torch.tanh(c_new), c_new


def modernn_reference_model(sd: SD, frames: Tensor, context: int) -> Tensor:
    """MoDeRNN model: embed -> cells -> output; reads predictions after ``context``."""
    x_all = modernn_patch(frames)
    zeros = frames.new_zeros(frames.shape[0], NH, S, S)
    h, c = [zeros] * LAYERS, [zeros] * LAYERS
    outputs: list[Tensor] = []
    for t in range(frames.shape[1] - 1):
        x = x_all[:, t] if t < context else outputs[-1]
        net = F.conv2d(x, sd["embed.weight"], sd["embed.bias"])
        for layer in range(LAYERS):
            h[layer], c[layer] = modernn_reference_cell(
                layer_params(sd, f"lstm.{layer}."), net, h[layer], c[layer]
            )
            net = h[layer]
        outputs.append(F.conv2d(net, sd["output.weight"], sd["output.bias"]))
    return modernn_unpatch(torch.stack(outputs, 1))


def data(seed: int = 3) -> tuple[Tensor, Tensor]:
    gen = torch.Generator().manual_seed(seed)
    frames = torch.rand(B, T, C, HW, HW, generator=gen)
    mask = (torch.rand(B, T - 2, generator=gen) < 0.5).float()
    return frames, mask


def load(source: str, sd: SD, **options) -> stpl.EncoderStackDecoder:
    return load_reference(source, sd, patch_size=P, image_channels=C, **options)


# ------------------------------------------------------------------ the model equals the reference
PREDRNN_CASES = [
    (source, ln)
    for source in (
        "predrnn",
        "predrnn_v2",
        "openstl_predrnn",
        "openstl_predrnnv2",
        "openstl_convlstm",
    )
    for ln in (False, True)
]


@pytest.mark.parametrize(("source", "ln"), PREDRNN_CASES)
def test_scheduled_sampling_equals_plain_reference(source, ln):
    sd = state_dict_for(source, ln)
    model = load(source, sd)
    frames, mask = data()
    # the reference mask covers steps t >= input_length; ours is (B, T-2), entry t-1 for step t
    mask_ref = mask[:, CONTEXT - 1 :, None, None, None].expand(-1, -1, S, S, PC)
    cell = "convlstm" if source == "openstl_convlstm" else "stlstm"
    expected, decouple = predrnn_reference_model(
        sd, reference_patch(frames), mask_ref, input_length=CONTEXT, reverse=False, cell=cell
    )
    with torch.no_grad():
        out = model(frames, context=CONTEXT, mask=mask)
    assert_close(reference_patch(out.predictions), expected)
    assert_close(out.predictions, reference_unpatch(expected))
    if decouple is None:
        assert out.decouple_loss is None
    else:
        assert_close(out.decouple_loss, decouple)


@pytest.mark.parametrize("source", ["predrnn_v2", "openstl_predrnnv2"])
def test_reverse_scheduled_sampling_equals_plain_reference(source):
    sd = state_dict_for(source, ln=True)
    model = load(source, sd)
    frames, _ = data()
    # a pixel-varying mask, as the reference allows one per patch element
    gen = torch.Generator().manual_seed(5)
    mask_ref = (torch.rand(B, T - 2, S, S, PC, generator=gen) < 0.5).float()
    expected, decouple = predrnn_reference_model(
        sd, reference_patch(frames), mask_ref, input_length=CONTEXT, reverse=True, cell="stlstm"
    )
    mask = reference_unpatch(mask_ref)  # (B, T-2, C, H, W) in pixel space
    with torch.no_grad():
        out = model(frames, context=1, mask=mask)
    assert_close(reference_patch(out.predictions), expected)
    assert_close(out.decouple_loss, decouple)


def test_modernn_equals_plain_reference():
    sd = modernn_state_dict()
    model = load("modernn", sd)
    frames, _ = data()
    with torch.no_grad():
        out = model(frames, context=CONTEXT)
    assert_close(out.predictions, modernn_reference_model(sd, frames, CONTEXT))
    assert out.decouple_loss is None


# ------------------------------------------------------------------ where each parameter lands
def expected_mapping(source: str, sd: SD) -> dict[str, str]:
    """Reference name -> our name, written out from the spec's parameter lists."""
    mapping: dict[str, str] = {}
    for key in sd:
        if source == "modernn":
            if key.startswith("embed."):
                mapping[key] = "encoder." + key.split(".", 1)[1]
                continue
            if key.startswith("output."):
                mapping[key] = "decoder." + key.split(".", 1)[1]
                continue
            _, layer, rest = key.split(".", 2)
            m = re.fullmatch(r"conv(\d)\d_([XH])\.(.*)", rest)
            if m:
                branch = {"3": 0, "5": 1, "7": 2}[m.group(1)]
                group = "x_branches" if m.group(2) == "X" else "h_branches"
                rest = f"dcb.{group}.0.{branch}.{m.group(3)}"
            else:
                rest = rest.replace("conv_i2h.", "conv_x.").replace("conv_h2h.", "conv_h.")
            mapping[key] = f"cells.{layer}.{rest}"
        elif key == "conv_last.weight":
            mapping[key] = "decoder.weight"
        elif key == "adapter.weight":
            mapping[key] = "adapter.weight"
        else:
            _, layer, rest = key.split(".", 2)
            if source == "openstl_convlstm" and rest.startswith(("conv_o.", "conv_last.")):
                continue  # dead parameters of the reference: not copied
            mapping[key] = f"cells.{layer}.{rest}"
    return mapping


@pytest.mark.parametrize(
    ("source", "ln"),
    [*PREDRNN_CASES, ("modernn", True)],
)
def test_every_parameter_lands_under_its_mapped_name(source, ln):
    sd = state_dict_for(source, ln)
    model = load(source, sd)
    ours = model.state_dict()
    mapping = expected_mapping(source, sd)
    assert sorted(mapping.values()) == sorted(ours), "the mapping must cover every parameter"
    for ref_key, our_key in mapping.items():
        assert torch.equal(ours[our_key], sd[ref_key]), (ref_key, our_key)
    # and convert_state_dict gives exactly this mapping
    converted = convert_state_dict(source, sd, patch_size=P, image_channels=C)
    assert {k: v.data_ptr() for k, v in converted.items()} == {
        our: sd[ref].data_ptr() for ref, our in mapping.items()
    }


def test_inferred_architecture():
    model = load("predrnn", predrnn_state_dict(ln=True, v2=False))
    assert model.hidden_channels == (NH,) * LAYERS
    assert model.kernel_size == K
    assert model.patch_size == P
    assert model.in_channels == model.out_channels == C
    assert model.patch_order == "predrnn"
    assert model.encoder is None and model.adapter is None
    assert model.cells[0].norm == "layer" and model.cells[0].spatial_size == (S, S)
    v2 = load("predrnn_v2", predrnn_state_dict(ln=False, v2=True))
    assert v2.adapter is not None and v2.cells[0].norm is None
    mod = load("modernn", modernn_state_dict())
    assert mod.patch_order == "modernn" and mod.encoder is not None
    assert mod.encoder.bias is not None and mod.decoder.bias is not None


# ------------------------------------------------------------------ patch order override
@pytest.mark.parametrize("source", ["predrnn_v2", "modernn", "openstl_convlstm"])
@pytest.mark.parametrize("order", ["predrnn", "modernn", "pixel_shuffle"])
def test_patch_order_override(source, order):
    sd = state_dict_for(source, ln=True)
    default = load(source, sd)
    model = load(source, sd, patch_order=order)
    assert model.patch_order == order
    ref_order = default.patch_order
    perm = patch_permutation(C, P, ref_order, order)
    if source == "modernn":
        assert torch.equal(model.encoder.weight, default.encoder.weight[:, perm])
        assert torch.equal(model.decoder.bias, default.decoder.bias[perm])
    else:
        first = model.cells[0].conv_x[0].weight
        assert torch.equal(first, default.cells[0].conv_x[0].weight[:, perm])
    assert torch.equal(model.decoder.weight, default.decoder.weight[perm])
    if order != ref_order:
        assert not torch.equal(model.decoder.weight, default.decoder.weight)
    frames, mask = data()
    with torch.no_grad():
        a = default(frames, context=CONTEXT, mask=mask)
        b = model(frames, context=CONTEXT, mask=mask)
    assert_close(b.predictions, a.predictions)


# ------------------------------------------------------------------ keys and errors
def test_openstl_convlstm_dead_keys_are_ignored():
    sd = convlstm_state_dict(ln=True)
    dead = [k for k in sd if re.fullmatch(r"cell_list\.\d\.conv_(o|last)\..*", k)]
    assert "cell_list.0.conv_o.0.weight" in dead and "cell_list.1.conv_last.weight" in dead
    model = load("openstl_convlstm", sd)
    assert not any(
        "conv_o" in k or re.match(r"cells\.\d\.conv_last", k) for k in model.state_dict()
    )
    n_dead = sum(sd[k].numel() for k in dead)
    n_ref = sum(v.numel() for v in sd.values())
    assert sum(p.numel() for p in model.parameters()) == n_ref - n_dead
    # changing the dead values changes nothing
    frames, mask = data()
    other = dict(sd)
    for k in dead:
        other[k] = torch.randn_like(sd[k])
    with torch.no_grad():
        assert_close(
            load("openstl_convlstm", other)(frames, context=CONTEXT, mask=mask).predictions,
            model(frames, context=CONTEXT, mask=mask).predictions,
        )


@pytest.mark.parametrize("extra", ["foo.weight", "cell_list.0.conv_z.0.weight", "lstm.0.x"])
def test_unexpected_keys_raise_listing_them(extra):
    sd = predrnn_state_dict(ln=False, v2=False)
    sd[extra] = torch.zeros(1)
    name = extra.split(".", 2)[-1] if extra.startswith("cell_list") else extra
    with pytest.raises(ValueError, match=re.escape(name)):
        load("predrnn", sd)


def test_adapter_is_unexpected_for_v1_and_missing_for_v2():
    with pytest.raises(ValueError, match=r"unexpected.*adapter\.weight"):
        load("predrnn", predrnn_state_dict(ln=False, v2=True))
    with pytest.raises(ValueError, match=r"missing.*adapter\.weight"):
        load("predrnn_v2", predrnn_state_dict(ln=False, v2=False))


@pytest.mark.parametrize(
    ("source", "key", "listed"),
    [
        ("predrnn", "cell_list.1.conv_m.0.weight", "conv_m.0.weight"),
        ("predrnn", "cell_list.0.conv_o.1.bias", "conv_o.1.bias"),
        ("predrnn", "conv_last.weight", "decoder.weight"),
        ("predrnn", "cell_list.0.conv_h.0.weight", "cell_list.0.conv_h.0.weight"),
        ("modernn", "lstm.1.conv55_X.1.weight", "x_branches.0.1.1.weight"),
        ("modernn", "output.bias", "decoder.bias"),
    ],
)
def test_missing_keys_raise_listing_them(source, key, listed):
    sd = state_dict_for(source, ln=True)
    del sd[key]
    with pytest.raises(ValueError, match=re.escape(listed)):
        load(source, sd)


def test_wrong_image_channels_raise():
    with pytest.raises(ValueError, match="image_channels"):
        load_reference(
            "predrnn", predrnn_state_dict(ln=False, v2=False), patch_size=P, image_channels=1
        )


def test_unknown_source_lists_sources():
    with pytest.raises(ValueError, match="unknown source") as info:
        load("e3dlstm", predrnn_state_dict(ln=False, v2=False))
    for source in SOURCES:
        assert repr(source) in str(info.value)
    with pytest.raises(ValueError, match="unknown source"):
        convert_state_dict("e3dlstm", {}, patch_size=P, image_channels=C)


def test_state_dict_of_another_source_raises():
    with pytest.raises(ValueError, match="lstm"):
        load("modernn", predrnn_state_dict(ln=False, v2=False))


def test_net_param_wrapper_is_accepted():
    sd = predrnn_state_dict(ln=False, v2=True)
    wrapped = load("predrnn_v2", {"net_param": sd})
    plain = load("predrnn_v2", sd)
    for key, value in plain.state_dict().items():
        assert torch.equal(wrapped.state_dict()[key], value)


def test_options_are_forwarded():
    model = load("predrnn", predrnn_state_dict(ln=False, v2=False), checkpoint_steps=True)
    assert model.checkpoint_steps


# ------------------------------------------------------------------ single cells
def _golden_cell(name: str) -> dict:
    path = Path(__file__).parent / "data" / "golden" / f"cell_{name}.pt"
    return torch.load(path, weights_only=True)


def _assert_matches_golden_cell(cell: torch.nn.Module, d: dict) -> None:
    """One step from the recorded state reproduces the reference's recorded outputs."""
    inp, out = d["inputs"], d["outputs"]
    if isinstance(cell, stpl.STLSTMCell):
        state = stpl.STLSTMState(inp["h"], inp["c"], inp["m"])
        res = cell.forward_with_increments(inp["x"], state, inp.get("a"))
        for key in ("h", "c", "m"):
            assert_close(getattr(res.state, key), out[key])
        if "delta_c" in out:
            assert_close(res.delta_c, out["delta_c"])
            assert_close(res.delta_m, out["delta_m"])
    else:
        h, state = cell(inp["x"], stpl.LSTMState(inp["h"], inp["c"]))
        assert_close(h, out["h"])
        assert_close(state.c, out["c"])


CellCase = tuple[str, str, Callable[[dict], torch.nn.Module]]
CELL_CASES: list[CellCase] = [
    (
        "openstl_convlstm_ln0",
        "openstl_convlstm",
        lambda cfg: stpl.ConvLSTMCell(cfg["in_channel"], cfg["num_hidden"], cfg["filter_size"]),
    ),
    (
        "openstl_convlstm_ln1",
        "openstl_convlstm",
        lambda cfg: stpl.ConvLSTMCell(
            cfg["in_channel"],
            cfg["num_hidden"],
            cfg["filter_size"],
            norm="layer",
            spatial_size=(cfg["height"], cfg["width"]),
        ),
    ),
    (
        "ndrplz_convlstm",
        "ndrplz_convlstm",
        lambda cfg: stpl.ConvLSTMCell(
            cfg["input_dim"], cfg["hidden_dim"], cfg["kernel_size"], bias=True, gate_order="ifog"
        ),
    ),
    *[
        (
            f"predrnn_stlstm_{v}_ln{ln}",
            "predrnn_stlstm",
            (
                lambda cfg, ln=ln: stpl.STLSTMCell(
                    cfg["in_channel"],
                    cfg["num_hidden"],
                    cfg["filter_size"],
                    norm="layer" if ln else None,
                    spatial_size=(cfg["width"], cfg["width"]) if ln else None,
                )
            ),
        )
        for v in ("v1", "v2")
        for ln in (0, 1)
    ],
    (
        "predrnn_stlstm_v2_action",
        "predrnn_stlstm",
        lambda cfg: stpl.STLSTMCell(
            cfg["in_channel"],
            cfg["num_hidden"],
            cfg["filter_size"],
            bias=True,
            action_channels=cfg["num_hidden"],
        ),
    ),
]


@pytest.mark.parametrize(("name", "source", "make"), CELL_CASES, ids=[c[0] for c in CELL_CASES])
def test_convert_cell_state_dict_reproduces_golden_cells(name, source, make):
    d = _golden_cell(name)
    cell = make(d["config"])
    cell.load_state_dict(convert_cell_state_dict(source, d["state_dict"]))  # strict
    _assert_matches_golden_cell(cell, d)


@pytest.mark.parametrize(("name", "source", "make"), CELL_CASES, ids=[c[0] for c in CELL_CASES])
def test_load_reference_cell_builds_the_matching_cell(name, source, make):
    d = _golden_cell(name)
    cell = load_reference_cell(source, d["state_dict"])
    expected = make(d["config"])
    assert type(cell) is type(expected)
    assert cell.extra_repr() == expected.extra_repr()  # same sizes, norm, bias, gate order
    _assert_matches_golden_cell(cell, d)


def test_convert_cell_state_dict_modernn_reproduces_golden_cell():
    d = _golden_cell("modernn")
    cfg, inp, out = d["config"], d["inputs"], d["outputs"]
    cell = stpl.MoDeRNNCell(
        cfg["input_chans"],
        cfg["hidden_size"],
        cfg["filter_size"],
        spatial_size=(cfg["img_size"],) * 2,
    )
    cell.load_state_dict(convert_cell_state_dict("modernn", d["state_dict"]))  # strict
    h1, state = cell(inp["x1"])
    h2, state = cell(inp["x2"], state)
    assert_close(h1, out["h1"])
    assert_close(h2, out["h2"])
    assert_close(state.c, out["c_final"])


def test_convert_cell_state_dict_modernn_equals_plain_cell():
    sd = layer_params(modernn_state_dict(), "lstm.0.")
    cell = stpl.MoDeRNNCell(NH, NH, K, spatial_size=(S, S))
    cell.load_state_dict(convert_cell_state_dict("modernn", sd))
    x, h, c = _plain.rand_maps(3, (B, NH, S, S), dtype=torch.float32)
    h_new, state = cell(x, stpl.LSTMState(h, c))
    h_ref, c_ref = modernn_reference_cell(sd, x, h, c)
    assert_close(h_new, h_ref)
    assert_close(state.c, c_ref)


def test_convert_cell_state_dict_ndrplz_splits_the_concatenated_conv():
    r = _Rand(7)
    w, bias = r.conv(4 * NH, 3 + NH, K), r.vec(4 * NH)
    converted = convert_cell_state_dict("ndrplz_convlstm", {"conv.weight": w, "conv.bias": bias})
    assert set(converted) == {"conv_x.0.weight", "conv_x.0.bias", "conv_h.0.weight"}
    assert torch.equal(converted["conv_x.0.weight"], w[:, :3])
    assert torch.equal(converted["conv_h.0.weight"], w[:, 3:])
    cell = stpl.ConvLSTMCell(3, NH, K, bias=True, gate_order="ifog")
    cell.load_state_dict(converted)
    x = torch.randn(B, 3, S, S)
    h, c = _plain.rand_maps(2, (B, NH, S, S), dtype=torch.float32)
    # ndrplz: one conv on cat[x, h], split (i, f, o, g), no forget bias
    i, f, o, g = torch.chunk(F.conv2d(torch.cat([x, h], 1), w, bias, padding=K // 2), 4, 1)
    c_ref = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    h_ref = torch.sigmoid(o) * torch.tanh(c_ref)
    h_new, state = cell(x, stpl.LSTMState(h, c))
    assert_close(h_new, h_ref)
    assert_close(state.c, c_ref)


def test_convert_cell_state_dict_unknown_source():
    with pytest.raises(ValueError, match="unknown cell source") as info:
        convert_cell_state_dict("mim", {"a": torch.zeros(1)})
    for source in CELL_SOURCES:
        assert repr(source) in str(info.value)
    with pytest.raises(ValueError, match="unknown cell source"):
        convert_cell_state_dict("mim", {})  # even with nothing to convert


def test_load_reference_cell_modernn_reproduces_two_reference_steps():
    d = _golden_cell("modernn")
    cell = load_reference_cell("modernn", d["state_dict"])
    assert isinstance(cell, stpl.MoDeRNNCell) and cell.spatial_size == (8, 8)
    assert cell.kernel_size == d["config"]["filter_size"]
    inp, out = d["inputs"], d["outputs"]
    h1, state = cell(inp["x1"])
    h2, state = cell(inp["x2"], state)
    assert_close(h1, out["h1"])
    assert_close(h2, out["h2"])
    assert_close(state.c, out["c_final"])


def test_load_reference_cell_options_override_and_errors():
    d = _golden_cell("openstl_convlstm_ln0")
    assert (
        load_reference_cell("openstl_convlstm", d["state_dict"], forget_bias=1.0).forget_bias == 1.0
    )
    sd = _golden_cell("predrnn_stlstm_v1_ln0")["state_dict"]
    with pytest.raises(ValueError, match="unknown cell source"):
        load_reference_cell("nope", sd)
    with pytest.raises(ValueError, match="surprise"):
        load_reference_cell("predrnn_stlstm", {**sd, "surprise.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match="conv_m"):
        load_reference_cell("predrnn_stlstm", {k: v for k, v in sd.items() if "conv_m" not in k})
    assert set(CELL_SOURCES) >= {
        "openstl_convlstm",
        "ndrplz_convlstm",
        "predrnn_stlstm",
        "modernn",
        "hzzone_trajgru",
        "hko7_convgru",
        "openstl_causallstm",
        "openstl_ghu",
        "saconvlstm",
    }
