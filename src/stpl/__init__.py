"""stpl: spatiotemporal recurrent cells for video prediction, exact to the papers' code."""

from stpl import data, interop, metrics, training
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
from stpl.patching import PatchOrder, patchify, unpatchify
from stpl.predictor import CELLS, EncoderStackDecoder, PredictorOutput
from stpl.registry import PRESETS, get_model, list_models

__version__ = "0.1.0"

__all__ = [
    "CELLS",
    "PRESETS",
    "ConvLSTMCell",
    "DCBOutput",
    "DetailContextBlock",
    "EncoderStackDecoder",
    "GateConv",
    "LSTMState",
    "LayerNorm2d",
    "MoDeRNNCell",
    "MoDeRNNOutput",
    "Norm",
    "PatchOrder",
    "PredictorOutput",
    "STLSTMCell",
    "STLSTMOutput",
    "STLSTMState",
    "__version__",
    "data",
    "get_model",
    "interop",
    "list_models",
    "metrics",
    "patchify",
    "training",
    "unpatchify",
]
