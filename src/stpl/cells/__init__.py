"""Recurrent cells: one time step each, state in, state out."""

from stpl.cells._protocol import RecurrentCell
from stpl.cells._registry import CELLS, register_cell
from stpl.cells._state import LSTMState, STLSTMState
from stpl.cells._toolkit import GateConv, LayerNorm2d, Norm
from stpl.cells.convlstm import ConvLSTMCell
from stpl.cells.modernn import DCBOutput, DetailContextBlock, MoDeRNNCell, MoDeRNNOutput
from stpl.cells.stlstm import STLSTMCell, STLSTMOutput
from stpl.cells.swinlstm import SwinLSTMCell, SwinLSTMState

__all__ = [
    "CELLS",
    "ConvLSTMCell",
    "DCBOutput",
    "DetailContextBlock",
    "GateConv",
    "LSTMState",
    "LayerNorm2d",
    "MoDeRNNCell",
    "MoDeRNNOutput",
    "Norm",
    "RecurrentCell",
    "STLSTMCell",
    "STLSTMOutput",
    "STLSTMState",
    "SwinLSTMCell",
    "SwinLSTMState",
    "register_cell",
]
