"""stpl: spatiotemporal recurrent cells for video prediction, exact to the papers' code."""

from stpl import data, interop, metrics, models, training
from stpl.cells import (
    CELLS,
    ConvLSTMCell,
    DCBOutput,
    DetailContextBlock,
    GateConv,
    LayerNorm2d,
    LSTMState,
    MoDeRNNCell,
    MoDeRNNOutput,
    Norm,
    RecurrentCell,
    STLSTMCell,
    STLSTMOutput,
    STLSTMState,
    register_cell,
)
from stpl.models import (
    EncoderStackDecoder,
    Generation,
    HierarchicalOutput,
    HierarchicalPredictor,
    PredictorOutput,
    RecurrentPredictor,
    StreamState,
)
from stpl.patching import PatchOrder, patchify, unpatchify
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
    "Generation",
    "HierarchicalOutput",
    "HierarchicalPredictor",
    "LSTMState",
    "LayerNorm2d",
    "MoDeRNNCell",
    "MoDeRNNOutput",
    "Norm",
    "PatchOrder",
    "PredictorOutput",
    "RecurrentCell",
    "RecurrentPredictor",
    "STLSTMCell",
    "STLSTMOutput",
    "STLSTMState",
    "StreamState",
    "__version__",
    "data",
    "get_model",
    "interop",
    "list_models",
    "metrics",
    "models",
    "patchify",
    "register_cell",
    "training",
    "unpatchify",
]
