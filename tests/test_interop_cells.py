"""stpl.interop.load_reference_cell: reference cell state dicts -> configured stpl cells."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch.testing import assert_close

import stpl
from stpl.interop import CELL_SOURCES, load_reference_cell

GOLDEN_DIR = Path(__file__).parent / "data" / "golden"


CASES = [
    ("cell_openstl_convlstm_ln0.pt", "openstl_convlstm", stpl.ConvLSTMCell, None),
    ("cell_openstl_convlstm_ln1.pt", "openstl_convlstm", stpl.ConvLSTMCell, "layer"),
    ("cell_ndrplz_convlstm.pt", "ndrplz_convlstm", stpl.ConvLSTMCell, None),
    ("cell_predrnn_stlstm_v1_ln0.pt", "predrnn_stlstm", stpl.STLSTMCell, None),
    ("cell_predrnn_stlstm_v1_ln1.pt", "predrnn_stlstm", stpl.STLSTMCell, "layer"),
    ("cell_predrnn_stlstm_v2_ln0.pt", "predrnn_stlstm", stpl.STLSTMCell, None),
    ("cell_predrnn_stlstm_v2_ln1.pt", "predrnn_stlstm", stpl.STLSTMCell, "layer"),
    ("cell_predrnn_stlstm_v2_action.pt", "predrnn_stlstm", stpl.STLSTMCell, None),
]


@pytest.mark.parametrize(("name", "source", "cls", "norm"), CASES)
def test_built_cell_reproduces_the_reference(
    name: str, source: str, cls: type, norm: object
) -> None:
    d = torch.load(GOLDEN_DIR / name, weights_only=True)
    cell = load_reference_cell(source, d["state_dict"])
    assert type(cell) is cls and cell.norm == norm
    i, o = d["inputs"], d["outputs"]
    if cls is stpl.STLSTMCell:
        out = cell.forward_with_increments(
            i["x"], stpl.STLSTMState(i["h"], i["c"], i["m"]), i.get("a")
        )
        for key in ("h", "c", "m"):
            assert_close(getattr(out.state, key), o[key])
        if "delta_c" in o:
            assert_close(out.delta_c, o["delta_c"])
            assert_close(out.delta_m, o["delta_m"])
    else:
        h, state = cell(i["x"], stpl.LSTMState(i["h"], i["c"]))
        assert_close(h, o["h"])
        assert_close(state.c, o["c"])


def test_built_modernn_cell_reproduces_two_reference_steps() -> None:
    d = torch.load(GOLDEN_DIR / "cell_modernn.pt", weights_only=True)
    cell = load_reference_cell("modernn", d["state_dict"])
    assert isinstance(cell, stpl.MoDeRNNCell) and cell.spatial_size == (8, 8)
    assert cell.kernel_size == d["config"]["filter_size"]
    i, o = d["inputs"], d["outputs"]
    h1, state = cell(i["x1"])
    h2, state = cell(i["x2"], state)
    assert_close(h1, o["h1"])
    assert_close(h2, o["h2"])
    assert_close(state.c, o["c_final"])


def test_inferred_options_can_be_overridden() -> None:
    d = torch.load(GOLDEN_DIR / "cell_openstl_convlstm_ln0.pt", weights_only=True)
    cell = load_reference_cell("openstl_convlstm", d["state_dict"], forget_bias=1.0)
    assert cell.forget_bias == 1.0


def test_bad_source_and_bad_keys_are_value_errors() -> None:
    d = torch.load(GOLDEN_DIR / "cell_predrnn_stlstm_v1_ln0.pt", weights_only=True)
    with pytest.raises(ValueError, match="unknown cell source"):
        load_reference_cell("nope", d["state_dict"])
    extra = {**d["state_dict"], "surprise.weight": torch.zeros(1)}
    with pytest.raises(ValueError, match="surprise"):
        load_reference_cell("predrnn_stlstm", extra)
    missing = {k: v for k, v in d["state_dict"].items() if not k.startswith("conv_m")}
    with pytest.raises(ValueError, match="conv_m"):
        load_reference_cell("predrnn_stlstm", missing)
    assert set(CELL_SOURCES) == {"openstl_convlstm", "ndrplz_convlstm", "predrnn_stlstm", "modernn"}
