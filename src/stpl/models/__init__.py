"""Video predictors: one file per model family, all built on :class:`RecurrentPredictor`."""

from stpl.models._base import (
    Generation,
    PredictorOutput,
    RecurrentPredictor,
    StepOutput,
    StreamState,
)
from stpl.models.encoder_forecaster import EncoderForecaster
from stpl.models.encoder_stack_decoder import CellFactory, EncoderStackDecoder, LayerState

__all__ = [
    "CellFactory",
    "EncoderForecaster",
    "EncoderStackDecoder",
    "Generation",
    "LayerState",
    "PredictorOutput",
    "RecurrentPredictor",
    "StepOutput",
    "StreamState",
]
