"""Metrics with the papers' conventions, batched in torch on the tensors' device.

:mod:`stpl.metrics.frame`: per-frame image metrics (MSE, MAE, PSNR, SSIM) with the
reductions of the papers' tables (``docs/metrics.md``).
"""

from stpl.metrics.frame import Reduction, mae, mse, psnr, quantize_uint8, ssim

__all__ = ["Reduction", "mae", "mse", "psnr", "quantize_uint8", "ssim"]
