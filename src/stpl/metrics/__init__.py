"""Metrics with the papers' conventions, batched in torch on the tensors' device.

:mod:`stpl.metrics.frame`: per-frame image metrics (MSE, MAE, PSNR, SSIM) with the
reductions of the papers' tables (``docs/metrics.md``).
:mod:`stpl.metrics.perceptual`: LPIPS (:func:`lpips`, optional extra ``torch-stpl[lpips]``).
"""

from stpl.metrics.frame import Reduction, mae, mse, psnr, quantize_uint8, ssim
from stpl.metrics.perceptual import lpips

__all__ = ["Reduction", "lpips", "mae", "mse", "psnr", "quantize_uint8", "ssim"]
