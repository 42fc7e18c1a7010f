"""Video predictors: one file per model family, all built on :class:`RecurrentPredictor`."""

from stpl.models._base import (
    Generation,
    PredictorOutput,
    RecurrentPredictor,
    StepOutput,
    StreamState,
)
from stpl.models.encoder_stack_decoder import CellFactory, EncoderStackDecoder, LayerState
from stpl.models.hierarchical import (
    HierarchicalOutput,
    HierarchicalPredictor,
    HierarchicalState,
    HierarchicalStream,
    LatentStats,
    LevelState,
)

__all__ = [
    "CellFactory",
    "EncoderStackDecoder",
    "Generation",
    "HierarchicalOutput",
    "HierarchicalPredictor",
    "HierarchicalState",
    "HierarchicalStream",
    "LatentStats",
    "LayerState",
    "LevelState",
    "PredictorOutput",
    "RecurrentPredictor",
    "StepOutput",
    "StreamState",
]
