"""TrajGRU: the equations written plainly (an explicit bilinear warp in both corner
conventions), the golden vectors of Hzzone's executed TrajGRU (official and port warps), the
loader, the warp itself and the parameter count."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close

import _plain_nowcasting as plain
import stpl
from _plain import randomize_
from stpl.cells.trajgru import warp
from stpl.interop import CELL_SOURCES, load_reference_cell

GOLDEN = Path(__file__).parent / "data" / "golden" / "cell_hzzone_trajgru.pt"


def params(cell: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach() for n, p in cell.named_parameters()}


def random_cell(align_corners: bool, **kw) -> stpl.TrajGRUCell:
    cell = randomize_(
        stpl.TrajGRUCell(3, 4, links=3, flow_channels=6, align_corners=align_corners, **kw)
    )
    with torch.no_grad():  # flows of a few pixels: samples between pixels and outside the map
        cell.flows_conv.weight.mul_(6.0)
        cell.flows_conv.bias.mul_(4.0)
    return cell.double()


@pytest.mark.parametrize("align_corners", [True, False])
@pytest.mark.parametrize(("height", "width"), [(6, 9), (1, 5), (4, 1)])
def test_equals_the_plain_equations_in_float64(align_corners, height, width):
    cell = random_cell(align_corners)
    p = params(cell)
    gen = torch.Generator().manual_seed(0)
    h = torch.randn(2, 4, height, width, generator=gen, dtype=torch.float64)
    flows = plain.trajgru_flows(p, torch.randn(2, 3, height, width, dtype=torch.float64), h)
    assert flows.abs().max() > 1.5  # the test reaches beyond neighbouring pixels
    for step in range(4):
        x = (
            None
            if step >= 2
            else torch.randn(2, 3, height, width, generator=gen, dtype=torch.float64)
        )
        want = plain.trajgru(p, x, h, align_corners)
        got, state = cell(x, stpl.GRUState(h))
        assert_close(got, want, rtol=1e-10, atol=1e-10)
        assert_close(cell.flows(x, h), plain.trajgru_flows(p, x, h), rtol=1e-12, atol=1e-12)
        h = state.h


@pytest.mark.parametrize("align_corners", [True, False])
def test_warp_equals_grid_sample_per_link(align_corners):
    gen = torch.Generator().manual_seed(3)
    h = torch.randn(2, 3, 5, 7, generator=gen, dtype=torch.float64)
    flows = 3 * torch.randn(2, 4, 5, 7, generator=gen, dtype=torch.float64)  # L = 2
    out = warp(h, flows, align_corners=align_corners).view(2, 3, 2, 5, 7)
    ys, xs = torch.meshgrid(torch.arange(5.0), torch.arange(7.0), indexing="ij")
    for link in range(2):
        u, v = flows[:, 2 * link], flows[:, 2 * link + 1]
        grid = torch.stack([2 * (xs - u) / 6 - 1, 2 * (ys - v) / 4 - 1], dim=-1)
        want = F.grid_sample(h, grid, align_corners=align_corners)
        assert_close(out[:, :, link], want, rtol=1e-12, atol=1e-12)
        assert_close(out[:, :, link], plain.warp_link(h, u, v, align_corners))


def test_zero_flows_are_the_identity_only_with_the_official_corners():
    h = torch.randn(1, 2, 6, 9, dtype=torch.float64)
    zero = torch.zeros(1, 2, 6, 9, dtype=torch.float64)
    assert_close(warp(h, zero, align_corners=True).view(1, 2, 6, 9), h, rtol=0, atol=1e-12)
    assert (warp(h, zero, align_corners=False).view(1, 2, 6, 9) - h).abs().max() > 0.1


def test_golden_hzzone_trajgru_both_corner_conventions():
    """Hzzone's executed TrajGRU: 3 steps with input, 2 without; ``h`` with the official warp
    (align_corners=True), ``h_port`` as the port runs on PyTorch >= 1.3 (False)."""
    d = torch.load(GOLDEN, weights_only=True)
    x, h0 = d["inputs"]["x"], d["inputs"]["h0"]
    steps = d["config"]["steps_with_input"] + d["config"]["steps_without_input"]
    for options, key in (({}, "h"), ({"align_corners": False}, "h_port")):
        cell = load_reference_cell("hzzone_trajgru", d["state_dict"], **options)
        assert (cell.in_channels, cell.hidden_channels, cell.links) == (4, 6, 5)
        state, outputs = stpl.GRUState(h0), []
        for t in range(steps):
            h, state = cell(x[t] if t < x.shape[0] else None, state)
            outputs.append(h)
        assert_close(torch.stack(outputs), d["outputs"][key], rtol=1e-5, atol=1e-5)
    assert_close(cell.flows(x[0], h0), d["outputs"]["flows_step0"], rtol=1e-5, atol=1e-5)


def test_loader_errors_and_sources():
    assert {"hzzone_trajgru", "hko7_convgru"} <= set(CELL_SOURCES)
    d = torch.load(GOLDEN, weights_only=True)
    sd = dict(d["state_dict"])
    del sd["ret.weight"]
    with pytest.raises(ValueError, match=r"missing the key 'ret\.weight'"):
        load_reference_cell("hzzone_trajgru", sd)
    sd = dict(d["state_dict"], **{"extra.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match=r"unexpected keys \['extra.weight'\]"):
        load_reference_cell("hzzone_trajgru", sd)


@pytest.mark.parametrize(
    ("c_in", "nh", "links", "count"), [(8, 64, 13, 252_442), (192, 192, 9, 2_313_490)]
)
def test_parameter_count_matches_the_spec(c_in, nh, links, count):
    cell = stpl.TrajGRUCell(c_in, nh, links=links)
    assert sum(p.numel() for p in cell.parameters()) == count
    no_input = stpl.TrajGRUCell(0, 192, links=9)
    assert sum(p.numel() for p in no_input.parameters()) == 1_163_954  # the official top block


def test_kernel_size_is_recorded_but_unused():
    a = randomize_(stpl.TrajGRUCell(2, 3, 3))
    b = stpl.TrajGRUCell(2, 3, 5)
    b.load_state_dict(a.state_dict())
    x = torch.rand(1, 2, 4, 4)
    assert_close(a(x), b(x))
    assert b.kernel_size == 5
