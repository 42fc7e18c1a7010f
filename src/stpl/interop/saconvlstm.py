"""hyona-yu/SA-convlstm (@ ddf9709): the ``SA_Convlstm_cell`` of ``convlstm_att_hnver2.py``.

Cell source ``"saconvlstm"`` -> :class:`stpl.SAConvLSTMCell`. The repository's model class
hard-codes a ``LayerNorm((nh, 56, 38))`` after every layer and a 1-channel last layer (its
typhoon setup), so only the cell is loadable.

=====================================  =====================================
reference                              stpl
=====================================  =====================================
``conv2d.0.weight``                    ``conv.weight``
``conv2d.0.bias``                      ``conv.bias`` (dead: dropped by default)
``conv2d.1.{weight,bias}``             ``gate_norm.{weight,bias}``
``attention_layer.layer_*.*``          ``attention.layer_*.*``
``attention_layer.layer_{k,k2}.bias``  dead: dropped by default
=====================================  =====================================

The dead parameters (cancelled by the group norm and by the softmax) are kept when the
cell is loaded with ``reference_compatible=True``. The reference's ``padding`` is not in
its state dict: the cell uses ``kernel_size // 2``, as every released configuration.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor, nn

from stpl.cells import SAConvLSTMCell
from stpl.interop._common import CellSource, load_checked, need, register_cell_source

__all__ = ["StateDict"]

StateDict = Mapping[str, Tensor]

_SOURCE = "saconvlstm"
_DEAD = ("conv.bias", "attention.layer_k.bias", "attention.layer_k2.bias")


def _rename(key: str) -> str:
    for old, new in (
        ("attention_layer.", "attention."),
        ("conv2d.0.", "conv."),
        ("conv2d.1.", "gate_norm."),
    ):
        if key.startswith(old):
            return new + key[len(old) :]
    return key


def convert_cell(state_dict: StateDict, reference_compatible: bool = False) -> dict[str, Tensor]:
    """Rename one ``SA_Convlstm_cell``'s parameters to :class:`stpl.SAConvLSTMCell`'s.

    Its dead parameters are dropped unless ``reference_compatible``.
    """
    out = {_rename(k): v for k, v in state_dict.items()}
    if not reference_compatible:
        for key in _DEAD:
            out.pop(key, None)
    return out


def _load_cell(state_dict: StateDict, **options: Any) -> nn.Module:
    w = need(state_dict, "conv2d.0.weight", _SOURCE)
    q = need(state_dict, "attention_layer.layer_q.weight", _SOURCE)
    nh = int(w.shape[0] // 4)
    built: dict[str, Any] = {
        "attention_channels": int(q.shape[0]),
        "norm": "group" if "conv2d.1.weight" in state_dict else None,
    }
    built.update(options)
    cell = SAConvLSTMCell(int(w.shape[1]) - nh, nh, int(w.shape[-1]), **built)
    converted = convert_cell(state_dict, cell.reference_compatible)
    return load_checked(cell, converted, _SOURCE)


register_cell_source(
    CellSource(
        _SOURCE,
        "hyona-yu/SA-convlstm SA_Convlstm_cell (convlstm_att_hnver2.py)",
        _load_cell,
        convert_cell,
    )
)
