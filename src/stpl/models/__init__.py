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
from stpl.models.mau import MAU
from stpl.models.phydnet import PhyDNet, PhyDNetState

__all__ = [
    "MAU",
    "CellFactory",
    "EncoderForecaster",
    "EncoderStackDecoder",
    "Generation",
    "LayerState",
    "PhyDNet",
    "PhyDNetState",
    "PredictorOutput",
    "RecurrentPredictor",
    "StepOutput",
    "StreamState",
]
