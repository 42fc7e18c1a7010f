"""Recurrent cells: one time step each, state in, state out."""

from stpl.cells._protocol import RecurrentCell
from stpl.cells._registry import CELLS, register_cell
from stpl.cells._state import LSTMState, STLSTMState
from stpl.cells._toolkit import GateConv, LayerNorm2d, Norm
from stpl.cells.convlstm import ConvLSTMCell
from stpl.cells.modernn import DCBOutput, DetailContextBlock, MoDeRNNCell, MoDeRNNOutput
from stpl.cells.predrnn_pp import CausalLSTMCell, GradientHighwayUnit, HighwayState
from stpl.cells.sa_convlstm import SAConvLSTMCell, SAConvLSTMState, SelfAttentionMemory
from stpl.cells.stlstm import STLSTMCell, STLSTMOutput

__all__ = [
    "CELLS",
    "CausalLSTMCell",
    "ConvLSTMCell",
    "DCBOutput",
    "DetailContextBlock",
    "GateConv",
    "GradientHighwayUnit",
    "HighwayState",
    "LSTMState",
    "LayerNorm2d",
    "MoDeRNNCell",
    "MoDeRNNOutput",
    "Norm",
    "RecurrentCell",
    "SAConvLSTMCell",
    "SAConvLSTMState",
    "STLSTMCell",
    "STLSTMOutput",
    "STLSTMState",
    "SelfAttentionMemory",
    "register_cell",
]
