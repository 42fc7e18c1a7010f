"""SA-ConvLSTM: SelfAttentionMemory and SAConvLSTMCell against plain equations.

The equations of ``reference-implementations.md`` section 4e are written out below in
float64 with ``F.conv2d``, ``F.group_norm``, ``bmm`` and an explicit softmax (no fused
attention), once against our parameter names and once against hyona-yu/SA-convlstm's own
names (``attention_layer.layer_q``, ``conv2d.0``, ...), so ``load_reference_cell`` is
checked over several steps with the state carried, at sizes other than the golden file's.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor
from torch.testing import assert_close

import stpl
from _plain import rand_maps, randomize_
from stpl.cells.sa_convlstm import self_attention
from stpl.interop import convert_cell_state_dict, load_reference_cell

B, C_IN, NH, ATT, H, W = 2, 3, 4, 2, 5, 6
SD = dict[str, Tensor]


# ------------------------------------------------------------------ plain equations
def conv1x1(p: SD, name: str, t: Tensor) -> Tensor:
    return F.conv2d(t, p[f"{name}.weight"], p.get(f"{name}.bias"))


def sam(p: SD, h: Tensor, m: Tensor, prefix: str = "attention.") -> tuple[Tensor, Tensor]:
    """Section 4e's SAM: Q = W_q h; A = softmax_j(QᵀK) without scaling; Z = A Vᵀ."""
    b, c, hh, ww = h.shape

    def flat(name: str, t: Tensor) -> Tensor:
        return conv1x1(p, prefix + name, t).reshape(b, -1, hh * ww)  # (B, ch, N)

    q = flat("layer_q", h).transpose(1, 2)  # (B, N, d)
    z = []
    for k_name, v_name, src in (("layer_k", "layer_v", h), ("layer_k2", "layer_v2", m)):
        a = torch.softmax(torch.bmm(q, flat(k_name, src)), dim=-1)  # (B, N, N)
        z.append(torch.bmm(a, flat(v_name, src).transpose(1, 2)).transpose(1, 2))  # (B, C, N)
    zz = conv1x1(p, prefix + "layer_z", torch.cat(z, 1).reshape(b, 2 * c, hh, ww))
    mo, mg, mi = torch.chunk(conv1x1(p, prefix + "layer_m", torch.cat([zz, h], 1)), 3, 1)
    mi = torch.sigmoid(mi)
    m_new = (1 - mi) * m + mi * torch.tanh(mg)
    return torch.sigmoid(mo) * m_new, m_new


def sa_cell(
    p: SD, x: Tensor, h: Tensor, c: Tensor, m: Tensor, *, forget_bias: float = 0.0
) -> tuple[Tensor, Tensor, Tensor]:
    """Our names: ``conv`` on cat[x, h], ``gate_norm`` (GroupNorm(4nh, 4nh)), ``attention``."""
    w = p["conv.weight"]
    gates = F.conv2d(torch.cat([x, h], 1), w, p.get("conv.bias"), padding=w.shape[-1] // 2)
    if "gate_norm.weight" in p:
        gates = F.group_norm(gates, gates.shape[1], p["gate_norm.weight"], p["gate_norm.bias"])
    i, f, o, g = torch.chunk(gates, 4, 1)
    c_new = torch.sigmoid(f + forget_bias) * c + torch.sigmoid(i) * torch.tanh(g)
    h_tilde = torch.sigmoid(o) * torch.tanh(c_new)
    h_new, m_new = sam(p, h_tilde, m)
    return h_new, c_new, m_new


def hyona_cell(p: SD, x: Tensor, h: Tensor, c: Tensor, m: Tensor):
    """``SA_Convlstm_cell`` read with the reference's own parameter names."""
    w = p["conv2d.0.weight"]
    gates = F.conv2d(torch.cat([x, h], 1), w, p["conv2d.0.bias"], padding=w.shape[-1] // 2)
    gates = F.group_norm(gates, gates.shape[1], p["conv2d.1.weight"], p["conv2d.1.bias"])
    i, f, o, g = torch.chunk(gates, 4, 1)
    c_new = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    h_new, m_new = sam(p, torch.sigmoid(o) * torch.tanh(c_new), m, prefix="attention_layer.")
    return h_new, c_new, m_new


def hyona_state_dict(c_in: int, nh: int, att: int, k: int, seed: int = 0) -> SD:
    """hyona-yu's ``SA_Convlstm_cell`` names and shapes (section 4e), random values."""
    gen = torch.Generator().manual_seed(seed)

    def u(*shape: int, centre: float = 0.0) -> Tensor:
        return centre + (torch.rand(*shape, generator=gen) - 0.5)

    sd: SD = {}
    for name, c_out, ci in [
        ("layer_q", att, nh),
        ("layer_k", att, nh),
        ("layer_k2", att, nh),
        ("layer_v", nh, nh),
        ("layer_v2", nh, nh),
        ("layer_z", 2 * nh, 2 * nh),
        ("layer_m", 3 * nh, 3 * nh),
    ]:
        sd[f"attention_layer.{name}.weight"] = u(c_out, ci, 1, 1) * 2 / ci**0.5
        sd[f"attention_layer.{name}.bias"] = u(c_out)
    sd["conv2d.0.weight"] = u(4 * nh, c_in + nh, k, k) * 2 / ((c_in + nh) * k * k) ** 0.5
    sd["conv2d.0.bias"] = u(4 * nh)
    sd["conv2d.1.weight"] = u(4 * nh, centre=1.0)
    sd["conv2d.1.bias"] = u(4 * nh)
    return sd


def params(module: torch.nn.Module) -> SD:
    return dict(module.named_parameters())


def state(seed: int = 2, dtype: torch.dtype = torch.float64) -> stpl.SAConvLSTMState:
    return stpl.SAConvLSTMState(*rand_maps(3, (B, NH, H, W), seed=seed, dtype=dtype))


FUSED = [None, True, False]


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"norm": None},
        {"reference_compatible": True, "fused_attention": True},
        {"forget_bias": 1.0, "attention_channels": 3, "fused_attention": True},
        {"attention_channels": 6, "fused_attention": True},  # keys wider than the values
        {"attention_channels": 6, "fused_attention": False},
    ],
)
def test_cell_matches_plain_equations(options):
    cell = randomize_(stpl.SAConvLSTMCell(C_IN, NH, 3, **{"attention_channels": ATT, **options}))
    cell.double()
    (x,) = rand_maps(1, (B, C_IN, H, W))
    s = state()
    h, new = cell(x, s)
    ref = sa_cell(params(cell), x, *s, forget_bias=options.get("forget_bias", 0.0))
    assert isinstance(new, stpl.SAConvLSTMState) and h is new.h
    for got, want, name in zip(new, ref, "hcm", strict=True):
        assert_close(got, want, msg=name)


@pytest.mark.parametrize("fused", FUSED)
def test_sam_matches_plain_equations_and_validates(fused):
    module = randomize_(stpl.SelfAttentionMemory(NH, ATT, fused_attention=fused)).double()
    h, m = rand_maps(2, (B, NH, H, W))
    assert_close(module(h, m), sam(params(module), h, m, prefix=""))
    with pytest.raises(ValueError, match=r"h must have 4 channels"):
        module(h[:, :3], m)
    with pytest.raises(ValueError, match=r"m must be \(B, C, H, W\) = \(2, 4, 5, 6\)"):
        module(h, m[:, :, :4])
    assert "attention_channels=2" in repr(module)


def test_golden_cell(golden):
    d = golden("cell_saconvlstm.pt")
    cfg, sd, inp, out = d["config"], d["state_dict"], d["inputs"], d["outputs"]
    s = stpl.SAConvLSTMState(inp["h"], inp["c"], inp["m"])
    for rc in (False, True):
        cell = stpl.SAConvLSTMCell(
            cfg["input_dim"],
            cfg["hidden_dim"],
            cfg["kernel_size"],
            attention_channels=cfg["att_hidden_dim"],
            reference_compatible=rc,
        )
        # the reference's names, renamed as docs/interop.md lists them (all keys, strict)
        renamed = {
            k.replace("attention_layer.", "attention.")
            .replace("conv2d.0.", "conv.")
            .replace("conv2d.1.", "gate_norm."): v
            for k, v in sd.items()
        }
        dead = {"conv.bias", "attention.layer_k.bias", "attention.layer_k2.bias"}
        if not rc:
            renamed = {k: v for k, v in renamed.items() if k not in dead}
            assert convert_cell_state_dict("saconvlstm", sd).keys() == renamed.keys()
        cell.load_state_dict(renamed)
        _, new = cell(inp["x"], s)
        for key in "hcm":
            assert_close(getattr(new, key), out[key], msg=key)
        loaded = load_reference_cell("saconvlstm", sd, reference_compatible=rc)
        assert loaded.extra_repr() == cell.extra_repr()
        assert_close(tuple(loaded(inp["x"], s)[1]), (out["h"], out["c"], out["m"]))


@pytest.mark.parametrize(
    ("c_in", "nh", "att", "k", "hw"), [(3, 6, 2, 3, (5, 7)), (2, 4, 4, 5, (6, 6))]
)
@pytest.mark.parametrize("reference_compatible", [False, True])
def test_load_reference_cell_carries_state_like_the_reference(
    c_in, nh, att, k, hw, reference_compatible
):
    sd = hyona_state_dict(c_in, nh, att, k)
    cell = load_reference_cell("saconvlstm", sd, reference_compatible=reference_compatible)
    assert (cell.in_channels, cell.hidden_channels, cell.kernel_size) == (c_in, nh, k)
    assert cell.attention_channels == att
    xs = rand_maps(4, (B, c_in, *hw), dtype=torch.float32, seed=5)
    ref = tuple(torch.zeros(B, nh, *hw) for _ in range(3))
    ours = None
    for x in xs:
        ref = hyona_cell(sd, x, *ref)
        _, ours = cell(x, ours)
    assert_close(tuple(ours), ref)


def test_dead_reference_parameters_change_nothing():
    """The gate bias before the per-channel group norm and the key biases before the softmax
    are dead in the reference: other values give the same outputs, and they are dropped."""
    sd = hyona_state_dict(C_IN, NH, ATT, 3)
    other = dict(sd)
    for key in ("conv2d.0.bias", "attention_layer.layer_k.bias", "attention_layer.layer_k2.bias"):
        other[key] = sd[key] + 5.0
    xs = rand_maps(2, (B, C_IN, H, W), dtype=torch.float64, seed=6)
    sd64 = {k: v.double() for k, v in sd.items()}
    other64 = {k: v.double() for k, v in other.items()}
    a = b = tuple(torch.zeros(B, NH, H, W, dtype=torch.float64) for _ in range(3))
    for x in xs:
        a, b = hyona_cell(sd64, x, *a), hyona_cell(other64, x, *b)
    assert_close(a, b)
    lean = load_reference_cell("saconvlstm", sd)
    assert lean.conv.bias is None
    assert lean.attention.layer_k.bias is None and lean.attention.layer_k2.bias is None
    n_dead = 4 * NH + 2 * ATT
    assert sum(p.numel() for p in lean.parameters()) == sum(v.numel() for v in sd.values()) - n_dead


@pytest.mark.parametrize(
    ("nh", "att", "k", "expected"),
    [(64, 16, 3, 360_688)],
)
def test_cell_parameter_count_matches_reference(nh, att, k, expected):
    """Section 4e: SA_Convlstm_cell(in 64, nh 64, att 16, k3) has 360,688 parameters."""
    cell = stpl.SAConvLSTMCell(64, nh, k, attention_channels=att, reference_compatible=True)
    assert sum(p.numel() for p in cell.parameters()) == expected
    lean = stpl.SAConvLSTMCell(64, nh, k, attention_channels=att)
    assert sum(p.numel() for p in lean.parameters()) == expected - 4 * nh - 2 * att


@pytest.mark.parametrize(
    ("hidden", "kernel", "expected"),
    [(64, 3, 1_332_160 + 1_024), (64, 5, 3_232_704 + 1_024), (128, 5, 12_715_904 + 2_048)],
)
def test_preset_parameter_counts(hidden, kernel, expected):
    """Section 7: 4 hyona-yu cells (att = nh/4) + a 1x1 output conv: 1.333M (4x64, k3),
    3.234M (4x64, k5), 12.718M (4x128, k5); without the dead biases 4 (4 nh + 2 att) fewer."""
    options = {"hidden_channels": hidden, "kernel_size": kernel, "device": "meta"}
    ref = stpl.get_model("sa_convlstm", reference_compatible=True, **options)
    lean = stpl.get_model("sa_convlstm", **options)
    assert sum(p.numel() for p in ref.parameters()) == expected
    dead = 4 * (4 * hidden + 2 * (hidden // 4))
    assert sum(p.numel() for p in lean.parameters()) == expected - dead
    assert ref.cells[0].attention_channels == hidden // 4


# ------------------------------------------------------------------ attention
@pytest.mark.parametrize("n", [16, 256])
@pytest.mark.parametrize(("d", "c"), [(4, 8), (8, 4), (8, 8)])
def test_sdpa_equals_explicit_softmax_in_float32(n, d, c):
    gen = torch.Generator().manual_seed(0)
    q, k = (torch.randn(2, 2, n, d, generator=gen) * 2 for _ in range(2))
    v = torch.randn(2, 2, n, c, generator=gen)
    explicit = torch.softmax(q @ k.transpose(-1, -2), dim=-1) @ v
    assert_close(self_attention(q, k, v), explicit, rtol=1e-5, atol=1e-6)
    exact = torch.softmax(q.double() @ k.double().transpose(-1, -2), dim=-1) @ v.double()
    assert_close(self_attention(q.double(), k.double(), v.double()), exact)


def test_sdpa_in_bfloat16_is_no_worse_than_the_explicit_softmax():
    gen = torch.Generator().manual_seed(1)
    q, k = (torch.randn(2, 2, 256, 4, generator=gen) * 2 for _ in range(2))
    v = torch.randn(2, 2, 256, 8, generator=gen)
    exact = torch.softmax(q.double() @ k.double().transpose(-1, -2), dim=-1) @ v.double()
    qb, kb, vb = q.bfloat16(), k.bfloat16(), v.bfloat16()
    fused = self_attention(qb, kb, vb).double()
    explicit = (torch.softmax(qb @ kb.transpose(-1, -2), dim=-1) @ vb).double()
    assert (fused - exact).abs().max() <= (explicit - exact).abs().max() + 1e-3
    assert (fused - exact).abs().max() < 0.1


# ------------------------------------------------------------------ battery
def cell32(**kw) -> stpl.SAConvLSTMCell:
    return randomize_(stpl.SAConvLSTMCell(C_IN, NH, 3, **{"attention_channels": ATT, **kw}))


def test_carried_state_equals_one_loop():
    cell = cell32()
    xs = rand_maps(5, (B, C_IN, H, W), dtype=torch.float32)
    s, hs = None, []
    for x in xs:
        h, s = cell(x, s)
        hs.append(h)
    fresh = stpl.SAConvLSTMCell(C_IN, NH, 3, attention_channels=ATT)
    fresh.load_state_dict(cell.state_dict())
    mid = None
    for x in xs[:2]:
        _, mid = cell(x, mid)
    tail = []
    for x in xs[2:]:
        h, mid = fresh(x, mid)
        tail.append(h)
    assert_close(tail, hs[2:])
    assert_close(tuple(mid), tuple(s))
    assert not torch.allclose(hs[-1], hs[1])


def test_state_none_is_zero_state():
    cell = cell32()
    (x,) = rand_maps(1, (B, C_IN, H, W), dtype=torch.float32)
    zero = cell.initial_state(x)
    assert all(torch.equal(t, torch.zeros(B, NH, H, W)) for t in zero)
    assert_close(cell(x), cell(x, zero), rtol=0, atol=0)


@pytest.mark.parametrize(("norm", "fused"), [("group", False), (None, True)])
def test_gradcheck(norm, fused):
    cell = stpl.SAConvLSTMCell(2, 3, 3, attention_channels=2, norm=norm, fused_attention=fused)
    cell = randomize_(cell).double()
    (x,) = rand_maps(1, (1, 2, 3, 4))
    s = stpl.SAConvLSTMState(*rand_maps(3, (1, 3, 3, 4), seed=4))

    def step(x, *rest):
        return tuple(cell(x, stpl.SAConvLSTMState(*rest))[1])

    inputs = tuple(t.requires_grad_() for t in (x, *s))
    assert torch.autograd.gradcheck(step, inputs, fast_mode=True)


@pytest.mark.parametrize("fused", [True, False])
def test_every_parameter_gets_a_gradient(fused):
    cell = cell32(fused_attention=fused)
    (x,) = rand_maps(1, (B, C_IN, H, W), dtype=torch.float32)
    _, new = cell(x, state(dtype=torch.float32))
    weights = rand_maps(3, new[0].shape, seed=9)
    sum((t * w).sum() for t, w in zip(new, weights, strict=True)).backward()
    for name, p in cell.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 1e-6, name


@pytest.mark.parametrize("fused", [True, False])
def test_autocast_bfloat16_is_close_to_float32(fused):
    cell = cell32(fused_attention=fused)
    xs = rand_maps(3, (B, C_IN, H, W), dtype=torch.float32)
    ref_state, s = None, None
    for x in xs:
        ref, ref_state = cell(x, ref_state)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out, s = cell(x, s)
    assert (out.float() - ref).abs().max() < 0.05
    assert (s.m.float() - ref_state.m).abs().max() < 0.05
    out.float().sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in cell.parameters())


@pytest.mark.parametrize("fused", [True, False])
def test_compile_fullgraph_matches_eager(fused):
    torch._dynamo.reset()
    cell = cell32(reference_compatible=True, fused_attention=fused)
    (x,) = rand_maps(1, (B, C_IN, H, W), dtype=torch.float32)
    compiled = torch.compile(cell, fullgraph=True, backend="aot_eager")
    h, s = compiled(x)
    assert_close((h, s), cell(x))
    assert_close(compiled(x, s), cell(x, s))
    torch._dynamo.reset()


def test_channels_last():
    cell = cell32()
    (x,) = rand_maps(1, (B, C_IN, H, W), dtype=torch.float32)
    x_cl = x.contiguous(memory_format=torch.channels_last)
    assert all(t.is_contiguous(memory_format=torch.channels_last) for t in cell.initial_state(x_cl))
    s = state(dtype=torch.float32)
    assert_close(cell(x_cl, s), cell(x, s))


def test_extra_repr_and_defaults():
    cell = stpl.SAConvLSTMCell(3, 8, 5)
    assert cell.attention_channels == 2  # nh // 4
    assert stpl.SAConvLSTMCell(3, 2, 5).attention_channels == 1
    text = repr(cell)
    for item in ["3, 8", "kernel_size=5", "attention_channels=2", "norm='group'", "bias=False"]:
        assert item in text
    assert "bias=True" in repr(stpl.SAConvLSTMCell(3, 8, 5, norm=None))
    assert "fused_attention=None" in text
    assert stpl.CELLS["sa_convlstm"] is stpl.SAConvLSTMCell


def test_default_attention_kernel_is_explicit_on_cpu(monkeypatch):
    import stpl.cells.sa_convlstm as module

    calls = []

    def spy(q, k, v):
        calls.append(q.shape)
        return self_attention(q, k, v)

    monkeypatch.setattr(module, "self_attention", spy)
    x = torch.randn(B, C_IN, H, W)
    stpl.SAConvLSTMCell(C_IN, NH, 3)(x)
    assert calls == []
    stpl.SAConvLSTMCell(C_IN, NH, 3, fused_attention=True)(x)
    assert calls == [(B, 2, H * W, NH // 4)]


def test_errors_name_the_argument():
    cell = stpl.SAConvLSTMCell(C_IN, NH, 3)
    x = torch.randn(B, C_IN, H, W)
    with pytest.raises(ValueError, match=r"x must have 3 channels, \(B, 3, H, W\)"):
        cell(torch.randn(B, 4, H, W))
    with pytest.raises(ValueError, match=r"state\.m must be \(B, C, H, W\) = \(2, 4, 5, 6\)"):
        z = torch.zeros(B, NH, H, W)
        cell(x, stpl.SAConvLSTMState(z, z, torch.zeros(B, NH, H + 1, W)))
    with pytest.raises(ValueError, match=r"state must be a SAConvLSTMState\(h, c, m\)"):
        cell(x, stpl.STLSTMState(*(torch.zeros(B, NH, H, W),) * 3))
    with pytest.raises(ValueError, match="attention_channels must be a positive int; got 0"):
        stpl.SAConvLSTMCell(C_IN, NH, 3, attention_channels=0)
    with pytest.raises(ValueError, match=r"norm must be one of 'group', None; got 'layer'"):
        stpl.SAConvLSTMCell(C_IN, NH, 3, norm="layer")
    with pytest.raises(ValueError, match="kernel_size must be a positive odd int"):
        stpl.SAConvLSTMCell(C_IN, NH, 2)
    with pytest.raises(ValueError, match="reference_compatible must be True or False"):
        stpl.SAConvLSTMCell(C_IN, NH, 3, reference_compatible=1)
    with pytest.raises(ValueError, match="fused_attention must be True or False"):
        stpl.SAConvLSTMCell(C_IN, NH, 3, fused_attention="auto")
    sd = hyona_state_dict(C_IN, NH, ATT, 3)
    with pytest.raises(ValueError, match=r"conv2d\.0\.weight"):
        load_reference_cell("saconvlstm", {k: v for k, v in sd.items() if k != "conv2d.0.weight"})
    with pytest.raises(ValueError, match="surprise"):
        load_reference_cell("saconvlstm", {**sd, "surprise.weight": torch.zeros(1)})


# ------------------------------------------------------------------ the preset
def test_preset_wiring():
    model = stpl.get_model("sa_convlstm", hidden_channels=8, num_layers=2, image_size=16)
    assert isinstance(model, stpl.EncoderStackDecoder) and not model.zigzag
    assert model.encoder is None and model.decoder.bias is None
    frames = torch.rand(2, 5, 1, 16, 16)
    out = model(frames, context=3)
    assert all(isinstance(s, stpl.SAConvLSTMState) for s in out.state)
    # each layer keeps its own memory: the model equals a plain loop over its cells
    x = stpl.patchify(frames, 4)
    states = [None, None]
    preds = []
    for t in range(4):
        inp = x[:, t] if t < 3 else preds[-1]
        for layer, cell in enumerate(model.cells):
            inp, states[layer] = cell(inp, states[layer])
        preds.append(model.decoder(inp))
    assert_close(out.predictions, stpl.unpatchify(torch.stack(preds, 1), 4))


def test_stpl_bench_runs_the_preset():
    from stpl.benchmark import BenchConfig, run_benchmark

    config = BenchConfig(
        model="sa_convlstm", hidden=4, layers=2, image_size=8, patch_size=2, batch=2, frames=4
    )
    result = run_benchmark(replace(config, repeats=2, memory=False, isolated=False))
    assert result["step"]["median_s"] > 0 and result["flops"] > 0


@settings(max_examples=6, deadline=None)
@given(
    b=st.integers(1, 2),
    c_in=st.integers(1, 3),
    nh=st.integers(1, 5),
    h=st.sampled_from([1, 3, 5]),
    w=st.sampled_from([2, 7]),
    k=st.sampled_from([1, 3, 5]),
    fused=st.booleans(),
)
def test_shapes_and_finite(b, c_in, nh, h, w, k, fused):
    cell = stpl.SAConvLSTMCell(c_in, nh, k, fused_attention=fused)
    x = torch.randn(b, c_in, h, w)
    out, s = cell(x)
    out, s = cell(x, s)
    assert out.shape == (b, nh, h, w)
    assert all(t.shape == (b, nh, h, w) and torch.isfinite(t).all() for t in s)


@pytest.mark.parametrize("att", [NH, ATT])
def test_fused_attention_reaches_the_flash_kernel_on_cpu(att):
    """The fused path feeds inputs the CPU flash kernel accepts (one head size, unit last
    stride); with every other backend disabled a fallback would raise."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    cell = cell32(attention_channels=att, fused_attention=True)
    x = torch.randn(B, C_IN, H, W)
    with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
        h, s = cell(x)
        h, s = cell(x, s)
        h.sum().backward()
    assert_close(tuple(cell(x, None)[1]), tuple(cell32(attention_channels=att)(x)[1]))
