"""stpl: spatiotemporal recurrent cells for video prediction, exact to the papers' code."""

from stpl import data, interop, metrics, models, training
from stpl.cells import (
    CELLS,
    ConvGRUCell,
    ConvLSTMCell,
    DCBOutput,
    DetailContextBlock,
    GateConv,
    GRUState,
    LayerNorm2d,
    LSTMState,
    MoDeRNNCell,
    MoDeRNNOutput,
    Norm,
    RecurrentCell,
    STLSTMCell,
    STLSTMOutput,
    STLSTMState,
    TrajGRUCell,
    register_cell,
)
from stpl.models import (
    EncoderForecaster,
    EncoderStackDecoder,
    Generation,
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
    "ConvGRUCell",
    "ConvLSTMCell",
    "DCBOutput",
    "DetailContextBlock",
    "EncoderForecaster",
    "EncoderStackDecoder",
    "GRUState",
    "GateConv",
    "Generation",
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
    "TrajGRUCell",
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
