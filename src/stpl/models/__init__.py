"""Video predictors: one file per model family, all built on :class:`RecurrentPredictor`."""

from stpl.models._base import (
    Generation,
    PredictorOutput,
    RecurrentPredictor,
    StepOutput,
    StreamState,
)
from stpl.models.encoder_stack_decoder import CellFactory, EncoderStackDecoder, LayerState
from stpl.models.predrnn_pp import PredRNNPlusPlus, PredRNNPlusPlusState
from stpl.models.sa_convlstm import build_sa_convlstm

__all__ = [
    "CellFactory",
    "EncoderStackDecoder",
    "Generation",
    "LayerState",
    "PredRNNPlusPlus",
    "PredRNNPlusPlusState",
    "PredictorOutput",
    "RecurrentPredictor",
    "StepOutput",
    "StreamState",
    "build_sa_convlstm",
]
