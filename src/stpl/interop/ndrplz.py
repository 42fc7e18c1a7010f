"""ndrplz/ConvLSTM_pytorch's ``ConvLSTMCell`` (also MSPred's): one conv on ``cat[x, h]``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor, nn

from stpl.cells import ConvLSTMCell
from stpl.interop._common import CellSource, load_checked, need, register_cell_source

__all__ = [
    "StateDict",
    "convert_ndrplz_cell",
]

StateDict = Mapping[str, Tensor]


def convert_ndrplz_cell(state_dict: StateDict) -> dict[str, Tensor]:
    """Split ``conv.weight (4nh, C_in + nh, k, k)`` into stpl's ``conv_x`` and ``conv_h``."""
    out: dict[str, Tensor] = {}
    for key, value in state_dict.items():
        if key == "conv.weight":
            nh = value.shape[0] // 4
            c_in = value.shape[1] - nh
            out["conv_x.0.weight"] = value[:, :c_in]
            out["conv_h.0.weight"] = value[:, c_in:]
        elif key == "conv.bias":
            out["conv_x.0.bias"] = value
        else:
            out[key] = value
    return out


def _load_cell(state_dict: StateDict, **options: Any) -> nn.Module:
    w = need(state_dict, "conv.weight", "ndrplz_convlstm")
    nh = w.shape[0] // 4
    built: dict[str, Any] = {"bias": "conv.bias" in state_dict, "gate_order": "ifog"}
    built.update(options)
    cell = ConvLSTMCell(int(w.shape[1] - nh), int(nh), int(w.shape[-1]), **built)
    return load_checked(cell, convert_ndrplz_cell(state_dict), "ndrplz_convlstm")


register_cell_source(
    CellSource(
        "ndrplz_convlstm",
        "ndrplz/ConvLSTM_pytorch ConvLSTMCell (MSPred's cell)",
        _load_cell,
        convert_ndrplz_cell,
    )
)
