"""Video predictors: one file per model family, all built on :class:`RecurrentPredictor`."""

from stpl.models._base import (
    Generation,
    PredictorOutput,
    RecurrentPredictor,
    StepOutput,
    StreamState,
)
from stpl.models.encoder_stack_decoder import CellFactory, EncoderStackDecoder, LayerState
from stpl.models.swinlstm import SwinLSTMB, SwinLSTMD

__all__ = [
    "CellFactory",
    "EncoderStackDecoder",
    "Generation",
    "LayerState",
    "PredictorOutput",
    "RecurrentPredictor",
    "StepOutput",
    "StreamState",
    "SwinLSTMB",
    "SwinLSTMD",
]
