"""SwinLSTM: the Swin blocks, the cell, SwinLSTM-B/-D and the ``openstl_swinlstm`` loader.

The independent computation is ``plain_block`` / ``plain_cell`` below: the equations of
``spec/baselines-round3.md`` section 3b-3c written with an explicit loop over windows, heads
and token pairs (bias index and shift mask from their definitions), in float64. Whole
models are checked against the golden files recorded from OpenSTL
(``tests/data/golden/model_openstl_swinlstm*.pt``).
"""

from __future__ import annotations

import json
import math
import re

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor, nn
from torch.testing import assert_close

import stpl
from stpl.cells.swin import (
    PatchExpanding,
    PatchMerging,
    SwinBlock,
    drop_path,
    relative_position_index,
    shifted_window_mask,
    window_partition,
    window_reverse,
)
from stpl.interop import convert_state_dict, load_reference

EPS = 1e-5
Params = dict[str, Tensor]


# ----------------------------------------------------------------------- plain equations
def randomize(module: nn.Module, seed: int = 0) -> nn.Module:
    """Linear/conv weights U(-1, 1)/sqrt(fan_in), norm weights U(0.5, 1.5), others U(-.5, .5)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            u = torch.rand(p.shape, generator=gen, dtype=torch.float64).to(p.dtype)
            if p.dim() >= 2 and "relative_position_bias_table" not in name:
                fan_in = p[0].numel() if "head" not in name else p.shape[0] * p[0, 0].numel()
                p.copy_((2 * u - 1) / math.sqrt(fan_in))
            elif "norm" in name and name.endswith("weight"):
                p.copy_(0.5 + u)
            else:
                p.copy_(u - 0.5)
    return module


def layer_norm(x: Tensor, p: Params, name: str) -> Tensor:
    return F.layer_norm(x, x.shape[-1:], p[f"{name}.weight"], p[f"{name}.bias"], EPS)


def linear(x: Tensor, p: Params, name: str) -> Tensor:
    return F.linear(x, p[f"{name}.weight"], p.get(f"{name}.bias"))


def region(n: int, size: int, ws: int, s: int) -> int:
    return 0 if n < size - ws else (1 if n < size - s else 2)


def plain_block(p: Params, pre: str, x: Tensor, other: Tensor | None, ws: int, shifted: bool):
    """Section 3b on a grid ``x: (B, H, W, C)``, one window, head and token pair at a time."""
    _, hh, ww, c = x.shape
    table = p[f"{pre}attn.relative_position_bias_table"]
    heads = table.shape[1]
    hd = c // heads
    s = ws // 2 if shifted and min(hh, ww) > ws else 0
    y = layer_norm(x, p, f"{pre}norm1")
    if other is not None:
        y = linear(torch.cat([y, layer_norm(other, p, f"{pre}norm1")], -1), p, f"{pre}red")
    y = torch.roll(y, (-s, -s), (1, 2))
    out = torch.zeros_like(y)
    for wr in range(hh // ws):
        for wc in range(ww // ws):
            cells = [(wr * ws + i, wc * ws + j) for i in range(ws) for j in range(ws)]
            tokens = torch.stack([y[:, r, col] for r, col in cells], 1)  # (B, N, C)
            qkv = linear(tokens, p, f"{pre}attn.qkv")
            per_head = []
            for h in range(heads):
                q = qkv[..., h * hd : (h + 1) * hd]
                k = qkv[..., c + h * hd : c + (h + 1) * hd]
                v = qkv[..., 2 * c + h * hd : 2 * c + (h + 1) * hd]
                logits = (q @ k.transpose(-1, -2)) * hd**-0.5
                extra = torch.zeros(len(cells), len(cells), dtype=x.dtype)
                for i, (ri, ci) in enumerate(cells):
                    for j, (rj, cj) in enumerate(cells):
                        dr, dc = (ri - rj) + ws - 1, (ci - cj) + ws - 1
                        extra[i, j] = table[dr * (2 * ws - 1) + dc, h]
                        if s:
                            li = 3 * region(ri, hh, ws, s) + region(ci, ww, ws, s)
                            lj = 3 * region(rj, hh, ws, s) + region(cj, ww, ws, s)
                            extra[i, j] += 0.0 if li == lj else -100.0
                per_head.append(torch.softmax(logits + extra, -1) @ v)
            o = linear(torch.cat(per_head, -1), p, f"{pre}attn.proj")
            for n, (r, col) in enumerate(cells):
                out[:, r, col] = o[:, n]
    x = x + torch.roll(out, (s, s), (1, 2))
    hidden = F.gelu(linear(layer_norm(x, p, f"{pre}norm2"), p, f"{pre}mlp.fc1"))
    return x + linear(hidden, p, f"{pre}mlp.fc2")


def plain_cell(p: Params, depth: int, ws: int, x: Tensor, h: Tensor, c: Tensor):
    """Section 3c on maps ``(B, C, H, W)``; returns ``(h', c')`` maps."""
    xg, hg, cg = (t.permute(0, 2, 3, 1) for t in (x, h, c))
    y = xg
    for i in range(depth):
        other = hg if i == 0 else (xg if i % 2 == 0 else None)
        y = plain_block(p, f"blocks.{i}.", y, other, ws, shifted=i % 2 == 1)
    gate = torch.sigmoid(y)
    c_next = gate * (cg + torch.tanh(y))
    h_next = gate * torch.tanh(c_next)
    return h_next.permute(0, 3, 1, 2), c_next.permute(0, 3, 1, 2)


def maps(*shape: int, seed: int = 1, n: int = 1, dtype=torch.float64) -> list[Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype) for _ in range(n)]


# ----------------------------------------------------------------------- the cell
CELL_CASES = [
    # (H, W, window, depth, heads): shifted windows; one window (no shift); rectangular;
    # window 3 (shift 1); one block
    (8, 8, 2, 3, 2),
    (4, 4, 4, 2, 1),
    (4, 8, 2, 4, 2),
    (6, 6, 3, 2, 2),
    (4, 4, 2, 1, 4),
]


@pytest.mark.parametrize(("hh", "ww", "ws", "depth", "heads"), CELL_CASES)
def test_cell_matches_plain_equations_with_carried_state(hh, ww, ws, depth, heads):
    cell = randomize(stpl.SwinLSTMCell(4, heads, ws, depth).double())
    p = dict(cell.named_parameters())
    x1, x2, h, c = maps(2, 4, hh, ww, n=4)
    h1, s1 = cell(x1, stpl.SwinLSTMState(h, c))
    ref_h1, ref_c1 = plain_cell(p, depth, ws, x1, h, c)
    assert_close(h1, ref_h1)
    assert_close(s1.h, ref_h1)
    assert_close(s1.c, ref_c1)
    h2, s2 = cell(x2, s1)
    ref_h2, ref_c2 = plain_cell(p, depth, ws, x2, ref_h1, ref_c1)
    assert_close(h2, ref_h2)
    assert_close(s2.c, ref_c2)
    # the zero state
    h0, _ = cell(x1)
    zero = torch.zeros_like(h)
    assert_close(h0, plain_cell(p, depth, ws, x1, zero, zero)[0])


def test_cell_protocol_attributes_and_state_type():
    cell = stpl.SwinLSTMCell(8, 2, 2, 2)
    assert isinstance(cell, stpl.cells.RecurrentCell)
    assert (cell.in_channels, cell.hidden_channels) == (8, 8)
    assert cell.state_type is stpl.SwinLSTMState
    x = torch.randn(2, 8, 4, 6)
    h, state = cell(x)
    assert isinstance(state, stpl.SwinLSTMState)
    assert h.shape == state.c.shape == x.shape
    assert torch.equal(cell.initial_state(x).h, torch.zeros_like(x))
    # a plain tuple is accepted, another cell's NamedTuple is not
    cell(x, tuple(state))
    with pytest.raises(ValueError, match="SwinLSTMState"):
        cell(x, stpl.LSTMState(*state))
    for item in ("8", "num_heads=2", "window_size=2", "depth=2"):
        assert item in repr(cell)


def test_odd_blocks_have_no_red_and_parameter_formula():
    """Per block 14 d^2 + 14 d + (2 ws - 1)^2 nH (spec section 3c) minus red (2 d^2 + d) in
    odd blocks: 231,364 at d 128, ws 4, nH 4 for a block with red."""
    d, ws, nh = 128, 4, 4
    with torch.device("meta"):
        cell = stpl.SwinLSTMCell(d, nh, ws, 3)
    per_block = [sum(p.numel() for p in b.parameters()) for b in cell.blocks]
    assert per_block[0] == per_block[2] == 14 * d * d + 14 * d + (2 * ws - 1) ** 2 * nh == 231_364
    assert per_block[1] == per_block[0] - (2 * d * d + d)
    assert [b.red is not None for b in cell.blocks] == [True, False, True]
    assert [b.shifted for b in cell.blocks] == [False, True, False]


def test_cell_gradcheck():
    cell = randomize(stpl.SwinLSTMCell(4, 2, 2, 3).double())
    x, h, c = maps(1, 4, 4, 4, n=3)
    for t in (x, h, c):
        t.requires_grad_(True)

    def run(x: Tensor, h: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
        _, state = cell(x, stpl.SwinLSTMState(h, c))
        return state.h, state.c

    assert torch.autograd.gradcheck(run, (x, h, c), fast_mode=True)


def test_block_gradcheck_through_the_bias_table():
    block = randomize(SwinBlock(4, 2, 2, shifted=True).double())
    (x,) = maps(1, 4, 4, 4)
    table = block.attn.relative_position_bias_table

    def run(x: Tensor, t: Tensor) -> Tensor:
        return torch.func.functional_call(block, {"attn.relative_position_bias_table": t}, (x,))

    x.requires_grad_(True)
    t = table.detach().clone().requires_grad_(True)
    assert torch.autograd.gradcheck(run, (x, t), fast_mode=True)


def test_cell_compiles_fullgraph():
    cell = randomize(stpl.SwinLSTMCell(4, 2, 2, 2))
    x, h, c = maps(2, 4, 4, 8, n=3, dtype=torch.float32)
    compiled = torch.compile(cell, backend="aot_eager", fullgraph=True)
    got = compiled(x, stpl.SwinLSTMState(h, c))
    want = cell(x, stpl.SwinLSTMState(h, c))
    assert_close(got[0], want[0])
    assert_close(got[1].c, want[1].c)


def test_cell_errors():
    with pytest.raises(ValueError, match="num_heads"):
        stpl.SwinLSTMCell(6, 4, 2, 2)
    with pytest.raises(ValueError, match="window_size must be a positive int"):
        stpl.SwinLSTMCell(4, 2, 0, 2)
    with pytest.raises(ValueError, match="depth must be a positive int"):
        stpl.SwinLSTMCell(4, 2, 2, 0)
    with pytest.raises(ValueError, match="one rate per block"):
        stpl.SwinLSTMCell(4, 2, 2, 2, drop_path=[0.1])
    with pytest.raises(ValueError, match="drop_path"):
        stpl.SwinLSTMCell(4, 2, 2, 2, drop_path=1.5)
    cell = stpl.SwinLSTMCell(4, 2, 2, 2)
    with pytest.raises(ValueError, match=r"window_size=2 needs H and W divisible by 2; got a 4x5"):
        cell(torch.randn(1, 4, 4, 5))
    with pytest.raises(ValueError, match=r"x must have 4 channels"):
        cell(torch.randn(1, 3, 4, 4))
    with pytest.raises(ValueError, match=r"state.h must be \(B, C, H, W\) = \(1, 4, 4, 4\)"):
        cell(torch.randn(1, 4, 4, 4), (torch.zeros(1, 4, 2, 2), torch.zeros(1, 4, 4, 4)))


# ----------------------------------------------------------------------- block pieces
@settings(max_examples=25, deadline=None)
@given(ws=st.integers(1, 4), nh=st.integers(1, 3), nw=st.integers(1, 3), c=st.integers(1, 3))
def test_window_partition_round_trip_and_order(ws, nh, nw, c):
    x = torch.arange(2 * nh * ws * nw * ws * c, dtype=torch.float32).reshape(2, nh * ws, nw * ws, c)
    windows = window_partition(x, ws)
    assert windows.shape == (2, nh * nw, ws * ws, c)
    # window k = (k // nw, k % nw), token n = (n // ws, n % ws), both row-major
    for k in range(nh * nw):
        for n in range(ws * ws):
            r = (k // nw) * ws + n // ws
            col = (k % nw) * ws + n % ws
            assert torch.equal(windows[:, k, n], x[:, r, col])
    assert torch.equal(window_reverse(windows, ws, nh * ws, nw * ws), x)


@pytest.mark.parametrize("ws", [1, 2, 3, 4])
def test_relative_position_index_definition(ws):
    index = relative_position_index(ws)
    for i in range(ws * ws):
        for j in range(ws * ws):
            dr, dc = i // ws - j // ws, i % ws - j % ws
            assert index[i, j] == (dr + ws - 1) * (2 * ws - 1) + dc + ws - 1
    assert int(index.max()) == (2 * ws - 1) ** 2 - 1


@pytest.mark.parametrize(("hh", "ww", "ws", "s"), [(8, 8, 4, 2), (4, 8, 2, 1), (6, 9, 3, 1)])
def test_shifted_window_mask_definition(hh, ww, ws, s):
    mask = shifted_window_mask(hh, ww, ws, s, dtype=torch.float64)
    nw = ww // ws
    assert mask.shape == (hh // ws * nw, ws * ws, ws * ws)
    for k in range(mask.shape[0]):
        cells = [((k // nw) * ws + n // ws, (k % nw) * ws + n % ws) for n in range(ws * ws)]
        labels = [3 * region(r, hh, ws, s) + region(col, ww, ws, s) for r, col in cells]
        for i in range(ws * ws):
            for j in range(ws * ws):
                assert mask[k, i, j] == (0.0 if labels[i] == labels[j] else -100.0)


def test_patch_merging_and_expanding_plain():
    merge = randomize(PatchMerging(3).double())
    (x,) = maps(2, 4, 6, 3)
    cat = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], -1)
    p = dict(merge.named_parameters())
    assert_close(merge(x), F.linear(layer_norm(cat, p, "norm"), p["reduction.weight"]))
    assert merge.reduction.bias is None

    expand = randomize(PatchExpanding(4).double())
    p = dict(expand.named_parameters())
    (x,) = maps(2, 3, 5, 4)
    y = F.linear(x, p["expand.weight"])  # (B, h, w, 8): (row offset, col offset, 2)
    want = torch.zeros(2, 6, 10, 2, dtype=torch.float64)
    for r in range(2):
        for col in range(2):
            want[:, r::2, col::2] = y[..., (2 * r + col) * 2 : (2 * r + col + 1) * 2]
    assert_close(expand(x), layer_norm(want, p, "norm"))


def test_drop_path_per_sample_and_identity_in_eval():
    x = torch.ones(2000, 3, 2, 2)
    torch.manual_seed(0)
    y = drop_path(x, 0.25, training=True)
    per_sample = y.flatten(1)
    assert_close(per_sample.unique(), torch.tensor([0.0, 1 / 0.75]))
    assert torch.all(per_sample.min(1).values == per_sample.max(1).values)  # whole samples
    assert abs(float((per_sample[:, 0] == 0).double().mean()) - 0.25) < 0.04
    assert drop_path(x, 0.25, training=False) is x
    assert drop_path(x, 0.0, training=True) is x


# ----------------------------------------------------------------------- the models
def small(variant: str, **kw) -> nn.Module:
    torch.manual_seed(0)
    options = {"image_size": 16, "embed_dim": 8, "window_size": 2}
    if variant == "D":
        options.update(depths_downsample=(2, 3), depths_upsample=(3, 2), num_heads=(2, 4))
    else:
        options.update(depths=3, num_heads=2)
    return randomize(stpl.get_model("swinlstm", variant=variant, **{**options, **kw}))


def test_parameter_counts_of_the_presets():
    """Spec section 4: D 20,191,969 - red 1,345,664 - Upsample.patch_embed 896 = 18,845,409;
    B 2,778,417 - red 197,376 = 2,581,041 (the dead weights are left out)."""
    with torch.device("meta"):
        d = stpl.get_model("swinlstm")
        b = stpl.get_model("swinlstm_b")
        b2 = stpl.get_model("swinlstm", variant="B")
    assert isinstance(d, stpl.SwinLSTMD) and isinstance(b, stpl.SwinLSTMB)
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(d) == 20_191_969 - 1_345_664 - 896 == 18_845_409
    assert count(b) == count(b2) == 2_778_417 - 197_376 == 2_581_041
    # the breakdown of section 4 (without the dead red weights of odd blocks)
    assert sum(p.numel() for p in d.patch_embed.parameters()) == 896
    assert sum(p.numel() for p in d.head.parameters()) == 1_153
    assert sum(p.numel() for p in d.merge.parameters()) == 658_432
    assert sum(p.numel() for p in d.expand.parameters()) == 656_128
    red = lambda cell, d: sum(1 for b in cell.blocks if b.red is None) * (2 * d * d + d)  # noqa: E731
    cells = [(d.down[0], 128, 462_728), (d.down[1], 256, 5_528_880)]
    cells += [(d.up[0], 512, 7_355_152), (d.up[1], 256, 5_527_704)]
    for cell, dim, reference in cells:
        assert sum(p.numel() for p in cell.parameters()) == reference - red(cell, dim)


def test_d_configuration_and_drop_path_rates():
    with torch.device("meta"):
        d = stpl.get_model("swinlstm")
    assert [c.channels for c in d.down] == [128, 256]
    assert [c.channels for c in d.up] == [512, 256]
    assert [c.depth for c in d.down] == [2, 6] and [c.depth for c in d.up] == [2, 6]
    assert [c.num_heads for c in d.down] == [4, 8] and [c.num_heads for c in d.up] == [8, 4]
    assert [c.window_size for c in [*d.down, *d.up]] == [4, 4, 4, 4]
    down = torch.linspace(0, 0.1, 8).tolist()
    assert list(d.down[0].drop_path) == down[:2]
    assert list(d.down[1].drop_path) == down[2:]
    up = torch.linspace(0, 0.1, 8).tolist()  # up cell j: reversed slice of its entries
    assert list(d.up[0].drop_path) == up[6:][::-1]
    assert list(d.up[1].drop_path) == up[:6][::-1]
    with torch.device("meta"):
        b = stpl.get_model("swinlstm_b")
    assert set(b.cell.drop_path) == {0.1}  # OpenSTL's B: the scalar rate on every block


def test_window_is_clamped_to_small_maps_at_construction():
    with torch.device("meta"):
        d = stpl.SwinLSTMD(image_size=16, window_size=4, embed_dim=8, num_heads=(2, 2))
        b = stpl.SwinLSTMB(image_size=8, window_size=8, embed_dim=8, num_heads=2)
    # maps 8, 4 (down), 2, 4 (up): the bottleneck cell's window becomes 2
    assert [c.window_size for c in [*d.down, *d.up]] == [4, 4, 2, 4]
    assert b.cell.window_size == 4


@pytest.mark.parametrize("stem", ["model_openstl_swinlstm", "model_openstl_swinlstm_b"])
def test_golden_openstl_models(golden, stem):
    d = golden(f"{stem}.pt")
    model = load_reference("openstl_swinlstm", d["state_dict"], patch_size=2, image_channels=1)
    assert isinstance(model, stpl.SwinLSTMD if d["config"]["variant"] == "D" else stpl.SwinLSTMB)
    model.eval()
    inputs, outputs = d["inputs"], d["outputs"]
    with torch.no_grad():
        out = model(inputs["frames"], context=d["config"]["context"])
    assert_close(out.predictions, outputs["predictions"])
    next_frames = out.predictions.permute(0, 1, 3, 4, 2)
    assert_close(next_frames, outputs["next_frames"])
    assert_close(F.mse_loss(next_frames, inputs["frames_cl"][:, 1:]), outputs["loss"])
    # free running after the context: later frames are not read
    frames = inputs["frames"].clone()
    frames[:, d["config"]["context"] :] = torch.rand_like(frames[:, d["config"]["context"] :])
    with torch.no_grad():
        assert_close(model(frames, context=d["config"]["context"]).predictions, out.predictions)


def test_golden_d_file_exercises_clamped_and_shifted_windows(golden):
    d = golden("model_openstl_swinlstm.pt")
    model = load_reference("openstl_swinlstm", d["state_dict"], patch_size=2, image_channels=1)
    assert isinstance(model, stpl.SwinLSTMD)
    assert model.depths_downsample == (2, 3) and model.depths_upsample == (3, 2)
    assert model.num_heads == (2, 4)
    # 16x16 frames: maps 8, 4 (down), 2 (bottleneck, one window: no shift), 4 (up)
    shifts = []
    for cell, lvl in model._cell_levels():
        side = 8 // 2**lvl
        geo = cell.blocks[1].geometry(torch.zeros(1, side, side, cell.channels))
        shifts.append(geo.shift)
    assert shifts == [1, 1, 0, 1]


def _to_openstl(model: nn.Module) -> dict[str, Tensor]:
    """Our state dict under OpenSTL's names, with the reference's dead weights and buffers."""
    d = isinstance(model, stpl.SwinLSTMD)
    root = "Downsample" if d else "ST"
    renames = [
        (r"^patch_embed\.", f"{root}.patch_embed."),
        (r"^head\.", "Upsample.Unembed.Conv." if d else "ST.patch_inflated.Conv."),
        (r"^cell\.blocks\.", "ST.layer.STBs."),
        (r"^down\.(\d+)\.blocks\.", r"Downsample.layers.\1.STBs."),
        (r"^up\.(\d+)\.blocks\.", r"Upsample.layers.\1.STBs."),
        (r"^merge\.", "Downsample.downsample."),
        (r"^expand\.", "Upsample.upsample."),
    ]
    sd: dict[str, Tensor] = {}
    for key, value in model.state_dict().items():
        for pattern, repl in renames:
            key = re.sub(pattern, repl, key)
        sd[key] = value
    gen = torch.Generator().manual_seed(9)
    for key in [k for k in sd if k.endswith("attn.relative_position_bias_table")]:
        block = key[: -len("attn.relative_position_bias_table")]
        ws = (math.isqrt(sd[key].shape[0]) + 1) // 2
        sd[block + "attn.relative_position_index"] = relative_position_index(ws)
        if block + "red.weight" not in sd:  # odd blocks: the dead red and the mask buffer
            dim = sd[block + "norm1.weight"].shape[0]
            sd[block + "red.weight"] = torch.randn(dim, 2 * dim, generator=gen)
            sd[block + "red.bias"] = torch.randn(dim, generator=gen)
            sd[block + "attn_mask"] = torch.zeros(1, ws * ws, ws * ws)
    if d:  # the never-used second patch embedding
        for name, value in model.patch_embed.state_dict().items():
            sd[f"Upsample.patch_embed.{name}"] = torch.randn(value.shape, generator=gen)
    return sd


@pytest.mark.parametrize("variant", ["B", "D"])
def test_loader_reads_the_architecture_and_drops_dead_weights(variant):
    model = small(variant, image_size=8, window_size=8, in_channels=2).eval()
    sd = _to_openstl(model)
    converted = convert_state_dict("openstl_swinlstm", sd, patch_size=2, image_channels=2)
    assert set(converted) == set(model.state_dict())
    loaded = load_reference("openstl_swinlstm", sd, patch_size=2, image_channels=2).eval()
    assert type(loaded) is type(model)
    windows = [c.window_size for c, _ in model._cell_levels()]
    assert [c.window_size for c, _ in loaded._cell_levels()] == windows
    assert min(windows) < 8  # a window the construction clamped is read back as it is
    frames = torch.rand(2, 5, 2, 8, 8)
    with torch.no_grad():
        assert_close(loaded(frames, context=3).predictions, model(frames, context=3).predictions)


def test_loader_errors():
    model = small("B")
    sd = _to_openstl(model)
    with pytest.raises(ValueError, match="image_channels=3"):
        load_reference("openstl_swinlstm", sd, patch_size=2, image_channels=3)
    with pytest.raises(ValueError, match="patch_size"):
        load_reference("openstl_swinlstm", sd, patch_size=4, image_channels=1)
    with pytest.raises(ValueError, match=r"unexpected keys.*'ST\.extra'"):
        load_reference(
            "openstl_swinlstm", {**sd, "ST.extra": torch.zeros(1)}, patch_size=2, image_channels=1
        )
    with pytest.raises(ValueError, match="neither 'ST"):
        load_reference(
            "openstl_swinlstm", {"lstm.0.w": torch.zeros(1)}, patch_size=2, image_channels=1
        )
    assert "openstl_swinlstm" in stpl.interop.SOURCES


@pytest.mark.parametrize("variant", ["B", "D"])
def test_forward_in_chunks_equals_one_call(variant):
    model = small(variant).eval()
    frames = torch.rand(2, 7, 1, 16, 16)
    with torch.no_grad():
        full = model(frames, context=4)
        first = model(frames[:, :4])
        second = model(frames[:, 3:], context=1, state=first.state)
    assert_close(torch.cat([first.predictions, second.predictions], 1), full.predictions)
    assert len(full.state) == (1 if variant == "B" else 4)
    assert all(isinstance(s, stpl.SwinLSTMState) for s in full.state)


def test_float64_and_rectangular_frames():
    """The reference makes float32 zero states (float64 fails) and asserts H == W."""
    model = small("D").double().eval()
    frames = torch.rand(1, 4, 1, 16, 32, dtype=torch.float64)
    with torch.no_grad():
        out = model(frames, context=2)
    assert out.predictions.dtype == torch.float64
    assert out.predictions.shape == (1, 3, 1, 16, 32)
    assert out.state[0].h.dtype == torch.float64


@pytest.mark.parametrize("variant", ["B", "D"])
def test_bf16_autocast_is_close_to_float32(variant):
    model = small(variant).eval()
    frames = torch.rand(2, 5, 1, 16, 16)
    with torch.no_grad():
        want = model(frames, context=3).predictions
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got = model(frames, context=3).predictions
    assert torch.isfinite(got).all()
    assert (got.float() - want).abs().max() < 0.05


@pytest.mark.slow
def test_compiled_step_fullgraph_equals_eager():
    """One level of SwinLSTM-D (cells, merge, expand, head); both step graphs (zero state at
    t=0, carried state after)."""
    model = small("D", depths_downsample=(2,), depths_upsample=(2,), num_heads=(2,)).eval()
    frames = torch.rand(2, 4, 1, 16, 16)
    with torch.no_grad():
        want = model(frames, context=2).predictions
        model.compile_step(backend="aot_eager", fullgraph=True)
        got = model(frames, context=2).predictions
    assert_close(got, want)


def test_training_mode_drop_path_is_stochastic_and_trains():
    model = small("D", drop_path_rate=0.5).train()
    frames = torch.rand(2, 4, 1, 16, 16)
    torch.manual_seed(1)
    a = model(frames).predictions
    torch.manual_seed(2)
    b = model(frames).predictions
    assert not torch.allclose(a, b)
    torch.manual_seed(1)
    assert_close(model(frames).predictions, a)
    model.eval()
    with torch.no_grad():
        assert_close(model(frames).predictions, model(frames).predictions)


def test_geometry_made_under_inference_mode_serves_a_later_training_step():
    """Window geometry is cached per size in eager mode: tensors first built under
    ``torch.inference_mode`` must still be usable by autograd afterwards."""
    model = small("D", image_size=32).eval()
    frames = torch.rand(1, 3, 1, 32, 32)  # a size no other test uses
    with torch.inference_mode():
        want = model(frames).predictions
    model.train()
    model(frames).predictions.sum().backward()
    model.eval()
    assert_close(model(frames).predictions, want.clone())


@pytest.mark.slow
@pytest.mark.parametrize(("name", "mode"), [("swinlstm", "train"), ("swinlstm_b", "rollout")])
def test_benchmark_tool_runs_the_presets(name, mode, capsys):
    from stpl.benchmark.__main__ import main

    tiny = ["--image-size", "16", "--batch", "1", "--frames", "3", "--repeats", "1"]
    argv = ["--model", name, "--mode", mode, "--json", "--no-memory", "--no-isolated", *tiny]
    assert main(argv) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["config"]["model"] == name
    assert result["step"]["median_s"] > 0
    assert result["flops"] > 0


def test_checkpointed_steps_give_the_same_gradients_with_stochastic_depth():
    """Recomputing a step in backward redraws the same drop-path masks (RNG state kept)."""
    plain = small("D", drop_path_rate=0.5).train()
    ckpt = small("D", drop_path_rate=0.5, checkpoint_steps=True).train()
    ckpt.load_state_dict(plain.state_dict())
    frames = torch.rand(2, 4, 1, 16, 16)
    grads = []
    for model in (plain, ckpt):
        torch.manual_seed(3)
        F.mse_loss(model(frames, context=2).predictions, frames[:, 1:]).backward()
        grads.append({n: p.grad for n, p in model.named_parameters()})
    for name, grad in grads[0].items():
        assert_close(grads[1][name], grad, msg=name)


def test_built_on_meta_then_materialised():
    with torch.device("meta"):
        model = stpl.get_model("swinlstm", image_size=16, embed_dim=8, window_size=2)
    model.to_empty(device="cpu")
    model.reset_parameters()
    table = model.down[0].blocks[0].attn.relative_position_bias_table
    assert 0 < float(table.detach().std()) < 0.05  # truncated normal, std 0.02
    assert torch.equal(model.down[0].blocks[0].norm1.weight, torch.ones(8))
    out = model.eval()(torch.rand(1, 3, 1, 16, 16))
    assert torch.isfinite(out.predictions).all()


def test_model_errors():
    with pytest.raises(ValueError, match="patch_size must be 2; got 4"):
        stpl.get_model("swinlstm", patch_size=4)
    with pytest.raises(ValueError, match="variant must be one of 'B', 'D'"):
        stpl.get_model("swinlstm", variant="C")
    with pytest.raises(TypeError, match="'depths_downsample'"):
        stpl.get_model("swinlstm", variant="B", depths_downsample=(2, 2))
    with pytest.raises(TypeError, match="hidden_channels"):
        stpl.get_model("swinlstm", hidden_channels=64)
    with pytest.raises(ValueError, match="num_heads must have one entry per level"):
        stpl.SwinLSTMD(num_heads=(4,))
    with pytest.raises(ValueError, match="window_size must be one int or one per cell"):
        stpl.SwinLSTMD(window_size=(4, 4))
    with pytest.raises(ValueError, match="drop_path_rate"):
        stpl.SwinLSTMB(drop_path_rate=-0.1)
    model = small("D")
    with pytest.raises(ValueError, match=r"needs H and W divisible by 16 .*got H=16, W=24"):
        model(torch.rand(1, 3, 1, 16, 24))
    with pytest.raises(ValueError, match="image_size"):
        model(torch.rand(1, 3, 1, 8, 8))  # bottleneck 1x1 < window 2
    with pytest.raises(ValueError, match=r"state must hold one SwinLSTMState per cell \(4\)"):
        model(torch.rand(1, 3, 1, 16, 16), state=[])
    state = model(torch.rand(1, 3, 1, 16, 16)).state
    with pytest.raises(ValueError, match=r"state\[0\].h must be \(B, C, h, w\) = \(2, 8, 8, 8\)"):
        model(torch.rand(2, 3, 1, 16, 16), state=state)
    with pytest.raises(ValueError, match=r"state\[1\].c has dtype torch.float64"):
        bad = [state[0], stpl.SwinLSTMState(state[1].h, state[1].c.double())]
        model(torch.rand(1, 3, 1, 16, 16), state=[*bad, *state[2:]])
