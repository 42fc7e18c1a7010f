"""Compatibility path: the predictor now lives in :mod:`stpl.models`.

``from stpl.predictor import EncoderStackDecoder`` keeps working; new code imports from
``stpl`` or ``stpl.models``.
"""

from stpl.cells._registry import CELLS
from stpl.models import CellFactory, EncoderStackDecoder, LayerState, PredictorOutput

__all__ = ["CELLS", "CellFactory", "EncoderStackDecoder", "LayerState", "PredictorOutput"]
