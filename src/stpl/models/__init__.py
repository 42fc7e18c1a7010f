"""Video predictors: one file per model family, all built on :class:`RecurrentPredictor`."""

from stpl.models._base import (
    Generation,
    PredictorOutput,
    RecurrentPredictor,
    StepOutput,
    StreamState,
)
from stpl.models.e3d_lstm import E3DLSTM, E3DState
from stpl.models.encoder_stack_decoder import CellFactory, EncoderStackDecoder, LayerState
from stpl.models.mim import MIM, MIMState

__all__ = [
    "E3DLSTM",
    "MIM",
    "CellFactory",
    "E3DState",
    "EncoderStackDecoder",
    "Generation",
    "LayerState",
    "MIMState",
    "PredictorOutput",
    "RecurrentPredictor",
    "StepOutput",
    "StreamState",
]
