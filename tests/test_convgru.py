"""ConvGRU: the official HKO-7 equations written plainly, the golden vectors (the official cell
rebuilt in PyTorch), the loader, the parameter count, and the TrajGRU equivalence."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch.testing import assert_close

import _plain_nowcasting as plain
import stpl
from _plain import randomize_
from stpl.interop import convert_cell_state_dict, load_reference_cell

GOLDEN = Path(__file__).parent / "data" / "golden" / "cell_hzzone_convgru.pt"


def params(cell: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach() for n, p in cell.named_parameters()}


@pytest.mark.parametrize(("k", "dilation", "i2h_k"), [(5, 1, 3), (3, 2, 1), (1, 1, 5)])
def test_equals_the_plain_equations_in_float64(k, dilation, i2h_k):
    cell = randomize_(stpl.ConvGRUCell(3, 4, k, dilation=dilation, i2h_kernel_size=i2h_k)).double()
    gen = torch.Generator().manual_seed(0)
    h = torch.randn(2, 4, 6, 9, generator=gen, dtype=torch.float64)
    p = params(cell)
    for step in range(4):
        x = None if step >= 2 else torch.randn(2, 3, 6, 9, generator=gen, dtype=torch.float64)
        want = plain.convgru(p, x, h, dilation)
        got, state = cell(x, stpl.GRUState(h))
        assert_close(got, want, rtol=1e-12, atol=1e-12)
        h = state.h


def test_tanh_activation():
    cell = randomize_(stpl.ConvGRUCell(2, 3, 3, activation="tanh")).double()
    x, h = torch.rand(1, 2, 4, 4, dtype=torch.float64), torch.rand(1, 3, 4, 4, dtype=torch.float64)
    p = params(cell)
    r, u, m = torch.chunk(plain.conv(p, "h2h", h), 3, 1)
    xr, xu, xm = torch.chunk(plain.conv(p, "i2h", x), 3, 1)
    r, u = torch.sigmoid(xr + r), torch.sigmoid(xu + u)
    assert_close(cell(x, (h,))[0], u * h + (1 - u) * torch.tanh(xm + r * m))


def test_golden_official_convgru():
    """3 steps with input then 2 without, from a given state, as the official cell computes."""
    d = torch.load(GOLDEN, weights_only=True)
    cell = load_reference_cell("hko7_convgru", d["state_dict"])
    assert (cell.in_channels, cell.hidden_channels, cell.kernel_size) == (4, 6, 5)
    x, state = d["inputs"]["x"], stpl.GRUState(d["inputs"]["h0"])
    outputs = []
    for t in range(d["config"]["steps_with_input"] + d["config"]["steps_without_input"]):
        h, state = cell(x[t] if t < x.shape[0] else None, state)
        outputs.append(h)
    assert_close(torch.stack(outputs), d["outputs"]["h"], rtol=1e-5, atol=1e-5)


def test_loader_accepts_mxnet_names_and_options():
    d = torch.load(GOLDEN, weights_only=True)
    mxnet = {f"ebrnn1_0_{k.replace('.', '_')}": v for k, v in d["state_dict"].items()}
    assert "ebrnn1_0_i2h_weight" in mxnet
    cell = load_reference_cell("hko7_convgru", mxnet, activation="tanh")
    assert cell.activation == "tanh"
    assert_close(cell.state_dict(), d["state_dict"])
    converted = convert_cell_state_dict("hko7_convgru", mxnet)
    assert set(converted) == {"i2h.weight", "i2h.bias", "h2h.weight", "h2h.bias"}
    with pytest.raises(ValueError, match=r"missing the key 'h2h\.weight'"):
        load_reference_cell("hko7_convgru", {"i2h.weight": d["state_dict"]["i2h.weight"]})


def test_top_block_without_input_weights_loads():
    d = torch.load(GOLDEN, weights_only=True)
    sd = {k: v for k, v in d["state_dict"].items() if k.startswith("h2h")}
    cell = load_reference_cell("hko7_convgru", sd)
    assert cell.in_channels == 0 and cell.i2h is None


@pytest.mark.parametrize(
    ("c_in", "nh", "k", "count"), [(192, 192, 3, 1_991_808), (8, 64, 5, 321_408)]
)
def test_parameter_count_matches_the_spec(c_in, nh, k, count):
    cell = stpl.ConvGRUCell(c_in, nh, k)
    assert sum(p.numel() for p in cell.parameters()) == count
    assert count == 3 * nh * c_in * 9 + 3 * nh + 3 * nh * nh * k * k + 3 * nh


def test_equals_a_trajgru_whose_flows_are_the_kernel_offsets():
    """The spec's check (section 2): TrajGRU with L = k^2 links fixed at the integer offsets
    of a k x k kernel and ret = the kernel's taps is the ConvGRU (align_corners=True)."""
    k, nh, c_in = 3, 4, 2
    conv = randomize_(stpl.ConvGRUCell(c_in, nh, k)).double()
    traj = stpl.TrajGRUCell(c_in, nh, k, links=k * k, flow_channels=4).double()
    r = k // 2
    with torch.no_grad():
        traj.i2h.load_state_dict(conv.i2h.state_dict())
        traj.flows_conv.weight.zero_()
        ret = torch.zeros_like(traj.ret.weight)
        for link, (dy, dx) in enumerate(
            (dy, dx) for dy in range(-r, r + 1) for dx in range(-r, r + 1)
        ):
            traj.flows_conv.bias[2 * link] = -dx  # sample at p - flow = p + (dx, dy)
            traj.flows_conv.bias[2 * link + 1] = -dy
            ret[:, link * nh : (link + 1) * nh, 0, 0] = conv.h2h.weight[:, :, dy + r, dx + r]
        traj.ret.weight.copy_(ret)
        traj.ret.bias.copy_(conv.h2h.bias)
    x = torch.randn(2, c_in, 5, 6, dtype=torch.float64)
    h = torch.randn(2, nh, 5, 6, dtype=torch.float64)
    assert_close(traj(x, (h,))[0], conv(x, (h,))[0], rtol=1e-10, atol=1e-10)
    assert_close(traj(None, (h,))[0], conv(None, (h,))[0], rtol=1e-10, atol=1e-10)
