"""stpl: spatiotemporal recurrent cells for video prediction, exact to the papers' code."""

from stpl.cells import (
    ConvLSTMCell,
    DCBOutput,
    DetailContextBlock,
    GateConv,
    LayerNorm2d,
    LSTMState,
    MoDeRNNCell,
    MoDeRNNOutput,
    Norm,
    STLSTMCell,
    STLSTMOutput,
    STLSTMState,
)

__version__ = "0.1.0"

__all__ = [
    "ConvLSTMCell",
    "DCBOutput",
    "DetailContextBlock",
    "GateConv",
    "LSTMState",
    "LayerNorm2d",
    "MoDeRNNCell",
    "MoDeRNNOutput",
    "Norm",
    "STLSTMCell",
    "STLSTMOutput",
    "STLSTMState",
    "__version__",
]
