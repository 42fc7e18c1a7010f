"""Recurrent cells: one time step each, state in, state out."""

from stpl.cells._protocol import RecurrentCell
from stpl.cells._registry import CELLS, register_cell
from stpl.cells._state import LSTMState, STLSTMState
from stpl.cells._toolkit import GateConv, LayerNorm2d, Norm
from stpl.cells.convgru import ConvGRUCell, GRUState
from stpl.cells.convlstm import ConvLSTMCell
from stpl.cells.e3d_lstm import E3DLSTMState, Eidetic3DLSTMCell
from stpl.cells.mau import MAUCell, MAUState
from stpl.cells.mim import MIMN, MIMBlock, MIMBlockState
from stpl.cells.modernn import DCBOutput, DetailContextBlock, MoDeRNNCell, MoDeRNNOutput
from stpl.cells.phycell import PhyCell, PhyCellState, moment_matrix
from stpl.cells.predrnn_pp import CausalLSTMCell, GradientHighwayUnit, HighwayState
from stpl.cells.sa_convlstm import SAConvLSTMCell, SAConvLSTMState, SelfAttentionMemory
from stpl.cells.stlstm import STLSTMCell, STLSTMOutput
from stpl.cells.swinlstm import SwinLSTMCell, SwinLSTMState
from stpl.cells.trajgru import TrajGRUCell

__all__ = [
    "CELLS",
    "MIMN",
    "CausalLSTMCell",
    "ConvGRUCell",
    "ConvLSTMCell",
    "DCBOutput",
    "DetailContextBlock",
    "E3DLSTMState",
    "Eidetic3DLSTMCell",
    "GRUState",
    "GateConv",
    "GradientHighwayUnit",
    "HighwayState",
    "LSTMState",
    "LayerNorm2d",
    "MAUCell",
    "MAUState",
    "MIMBlock",
    "MIMBlockState",
    "MoDeRNNCell",
    "MoDeRNNOutput",
    "Norm",
    "PhyCell",
    "PhyCellState",
    "RecurrentCell",
    "SAConvLSTMCell",
    "SAConvLSTMState",
    "STLSTMCell",
    "STLSTMOutput",
    "STLSTMState",
    "SelfAttentionMemory",
    "SwinLSTMCell",
    "SwinLSTMState",
    "TrajGRUCell",
    "moment_matrix",
    "register_cell",
]
