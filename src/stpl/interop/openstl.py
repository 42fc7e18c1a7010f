"""OpenSTL (chengtan9907/OpenSTL @ c74deb5): the ConvLSTM, PredRNN and PredRNN-V2 models.

==========================  ============================  =============
source                      model                         patch order
==========================  ============================  =============
``"openstl_convlstm"``      ``ConvLSTM_Model``            ``predrnn``
``"openstl_predrnn"``       ``PredRNN_Model``             ``predrnn``
``"openstl_predrnnv2"``     ``PredRNNv2_Model``           ``predrnn``
==========================  ============================  =============

OpenSTL's ``ConvLSTMCell`` creates ``conv_o`` and ``conv_last`` and never uses them; they
are dropped on loading.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor, nn

from stpl.cells import ConvLSTMCell
from stpl.interop._common import (
    CellSource,
    load_checked,
    need,
    norm_options,
    register_cell_source,
    register_source,
)
from stpl.interop.predrnn import _stlstm_key, stack_source

__all__ = [
    "StateDict",
]

StateDict = Mapping[str, Tensor]


def _convlstm_key(key: str, value: Tensor) -> dict[str, Tensor] | None:
    if key.startswith(("conv_o.", "conv_last.")):
        return None  # dead parameters of the reference
    return {key: value}


def _convert_convlstm_cell(state_dict: StateDict) -> dict[str, Tensor]:
    out: dict[str, Tensor] = {}
    for key, value in state_dict.items():
        out.update(_convlstm_key(key, value) or {})
    return out


def _load_convlstm_cell(state_dict: StateDict, **options: Any) -> nn.Module:
    w = need(state_dict, "conv_x.0.weight", "openstl_convlstm")
    built = norm_options(state_dict, "conv_x.1.weight")
    built.update(options)
    cell = ConvLSTMCell(int(w.shape[1]), int(w.shape[0] // 4), int(w.shape[-1]), **built)
    return load_checked(cell, _convert_convlstm_cell(state_dict), "openstl_convlstm")


register_source(
    stack_source("openstl_convlstm", "OpenSTL ConvLSTM_Model", "convlstm", _convlstm_key, False)
)
register_source(
    stack_source("openstl_predrnn", "OpenSTL PredRNN_Model", "stlstm", _stlstm_key, False)
)
register_source(
    stack_source("openstl_predrnnv2", "OpenSTL PredRNNv2_Model", "stlstm", _stlstm_key, True)
)
register_cell_source(
    CellSource(
        "openstl_convlstm",
        "OpenSTL ConvLSTMCell",
        _load_convlstm_cell,
        _convert_convlstm_cell,
    )
)
