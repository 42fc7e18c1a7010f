"""Cells that models build by name (``cell="stlstm"``)."""

from __future__ import annotations

import inspect

from torch import nn

from stpl.cells.convgru import ConvGRUCell
from stpl.cells.convlstm import ConvLSTMCell
from stpl.cells.mau import MAUCell
from stpl.cells.modernn import MoDeRNNCell
from stpl.cells.phycell import PhyCell
from stpl.cells.predrnn_pp import CausalLSTMCell
from stpl.cells.sa_convlstm import SAConvLSTMCell
from stpl.cells.stlstm import STLSTMCell
from stpl.cells.trajgru import TrajGRUCell

__all__ = ["CELLS", "cell_options", "register_cell"]

CELLS: dict[str, type[nn.Module]] = {
    "convlstm": ConvLSTMCell,
    "stlstm": STLSTMCell,
    "modernn": MoDeRNNCell,
    "mau": MAUCell,
    "phycell": PhyCell,
    "convgru": ConvGRUCell,
    "trajgru": TrajGRUCell,
    "causal_lstm": CausalLSTMCell,
    "sa_convlstm": SAConvLSTMCell,
}
"""Cells the models can build by name. Each is constructed as
``cls(in_channels, hidden_channels, kernel_size, **options)`` and follows
:class:`stpl.cells.RecurrentCell`."""

_POSITIONAL = ("self", "in_channels", "hidden_channels", "kernel_size")


def register_cell(name: str, cls: type[nn.Module]) -> type[nn.Module]:
    """Add ``cls`` to :data:`CELLS` under ``name`` (its constructor must take
    ``(in_channels, hidden_channels, kernel_size, **options)``); returns ``cls``."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"name must be a non-empty str; got {name!r}")
    params = list(inspect.signature(cls.__init__).parameters)
    if params[: len(_POSITIONAL)] != list(_POSITIONAL):
        raise ValueError(
            f"a registered cell's constructor must start (in_channels, hidden_channels, "
            f"kernel_size); {cls.__name__} has {params[1:4]}"
        )
    CELLS[name] = cls
    return cls


def cell_options(cls: type[nn.Module]) -> tuple[str, ...]:
    """The keyword options a registered cell accepts (beyond the three sizes)."""
    return tuple(
        name
        for name, p in inspect.signature(cls.__init__).parameters.items()
        if name not in _POSITIONAL and p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)
    )
