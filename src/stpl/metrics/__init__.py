"""Metrics with the papers' conventions, batched in torch on the tensors' device.

:mod:`stpl.metrics.frame`: per-frame image metrics (MSE, MAE, PSNR, SSIM) with the
reductions of the papers' tables (``docs/metrics.md``).
:mod:`stpl.metrics.perceptual`: LPIPS (:func:`lpips`, optional extra ``torch-stpl[lpips]``).

:mod:`stpl.metrics.skill` and :mod:`stpl.metrics.balanced`: precipitation nowcasting's
HKO-7 evaluation (CSI, HSS, POD, FAR, GSS per rain-rate threshold; B-MSE, B-MAE), with the
radar unit conversions ``rainfall_to_pixel`` / ``pixel_to_rainfall`` (``docs/nowcasting.md``).
"""

from stpl.data.radar_units import pixel_to_rainfall, rainfall_to_pixel
from stpl.metrics.balanced import (
    BALANCING_WEIGHTS,
    THRESHOLDS,
    balanced_mae,
    balanced_mse,
    balancing_weights,
    gdl,
    masked_mae,
    masked_mse,
)
from stpl.metrics.frame import Reduction, mae, mse, psnr, quantize_uint8, ssim
from stpl.metrics.perceptual import lpips
from stpl.metrics.skill import (
    ContingencyCounts,
    NowcastEvaluator,
    contingency_counts,
    csi,
    far,
    gss,
    hss,
    pod,
)

__all__ = ["Reduction", "lpips", "mae", "mse", "psnr", "quantize_uint8", "ssim"]
__all__ += [
    "BALANCING_WEIGHTS",
    "THRESHOLDS",
    "ContingencyCounts",
    "NowcastEvaluator",
    "balanced_mae",
    "balanced_mse",
    "balancing_weights",
    "contingency_counts",
    "csi",
    "far",
    "gdl",
    "gss",
    "hss",
    "masked_mae",
    "masked_mse",
    "pixel_to_rainfall",
    "pod",
    "rainfall_to_pixel",
]
