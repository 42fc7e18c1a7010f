"""Recurrent cells: one time step each, state in, state out."""

from stpl.cells._protocol import RecurrentCell
from stpl.cells._registry import CELLS, register_cell
from stpl.cells._state import LSTMState, STLSTMState
from stpl.cells._toolkit import GateConv, LayerNorm2d, Norm
from stpl.cells.convlstm import ConvLSTMCell
from stpl.cells.e3d_lstm import E3DLSTMState, Eidetic3DLSTMCell
from stpl.cells.mim import MIMN, MIMBlock, MIMBlockState
from stpl.cells.modernn import DCBOutput, DetailContextBlock, MoDeRNNCell, MoDeRNNOutput
from stpl.cells.stlstm import STLSTMCell, STLSTMOutput

__all__ = [
    "CELLS",
    "MIMN",
    "ConvLSTMCell",
    "DCBOutput",
    "DetailContextBlock",
    "E3DLSTMState",
    "Eidetic3DLSTMCell",
    "GateConv",
    "LSTMState",
    "LayerNorm2d",
    "MIMBlock",
    "MIMBlockState",
    "MoDeRNNCell",
    "MoDeRNNOutput",
    "Norm",
    "RecurrentCell",
    "STLSTMCell",
    "STLSTMOutput",
    "STLSTMState",
    "register_cell",
]
