"""Video predictors: one file per model family, all built on :class:`RecurrentPredictor`."""

from stpl.models._base import (
    Generation,
    PredictorOutput,
    RecurrentPredictor,
    StepOutput,
    StreamState,
)
from stpl.models.e3d_lstm import E3DLSTM, E3DState
from stpl.models.encoder_forecaster import EncoderForecaster
from stpl.models.encoder_stack_decoder import CellFactory, EncoderStackDecoder, LayerState
from stpl.models.hierarchical import (
    HierarchicalOutput,
    HierarchicalPredictor,
    HierarchicalState,
    HierarchicalStream,
    LatentStats,
    LevelState,
)
from stpl.models.mau import MAU
from stpl.models.mim import MIM, MIMState
from stpl.models.phydnet import PhyDNet, PhyDNetState
from stpl.models.predrnn_pp import PredRNNPlusPlus, PredRNNPlusPlusState
from stpl.models.sa_convlstm import build_sa_convlstm
from stpl.models.swinlstm import SwinLSTMB, SwinLSTMD

__all__ = [
    "E3DLSTM",
    "MAU",
    "MIM",
    "CellFactory",
    "E3DState",
    "EncoderForecaster",
    "EncoderStackDecoder",
    "Generation",
    "HierarchicalOutput",
    "HierarchicalPredictor",
    "HierarchicalState",
    "HierarchicalStream",
    "LatentStats",
    "LayerState",
    "LevelState",
    "MIMState",
    "PhyDNet",
    "PhyDNetState",
    "PredRNNPlusPlus",
    "PredRNNPlusPlusState",
    "PredictorOutput",
    "RecurrentPredictor",
    "StepOutput",
    "StreamState",
    "SwinLSTMB",
    "SwinLSTMD",
    "build_sa_convlstm",
]
