"""Radar units of the HKO-7 benchmark: 8-bit pixels, reflectivity (dBZ) and rain rate (mm/h).

HKO-7 frames are 8-bit PNGs read as ``pixel = value / 255`` in [0, 1], with::

    dBZ   = 70 pixel - 10                      pixel = clip((dBZ + 10) / 70, 0, 1)
    dBZ   = 10 log10(a) + 10 b log10(R)        R = 10 ** ((dBZ - 10 log10(a)) / (10 b))

the Marshall-Palmer form of the Z-R relation with ``a = 58.53``, ``b = 1.56`` (both HKO-7
codebases, ``nowcasting/utils.py`` / ``hko_evaluation.py``). ``rainfall_to_pixel`` is not
clipped: pixel 0 is 0.0168 mm/h (-10 dBZ), pixel 1 is 516.7 mm/h (60 dBZ). The benchmark's
thresholds 0.5, 2, 5, 10 and 30 mm/h are the pixels 0.328253, 0.462426, 0.551110, 0.618197
and 0.724527 (8-bit levels 84, 118, 141, 158 and 185 are the first counted as rain).

Every function takes a tensor (any shape, computed in its dtype, at least float32) or a
Python number (computed in float64, returned as ``float``).
"""

from __future__ import annotations

import math
from typing import overload

import torch
from torch import Tensor

from stpl._validation import check_real

__all__ = [
    "ZR_A",
    "ZR_B",
    "dbz_to_pixel",
    "dbz_to_rainfall",
    "pixel_to_dbz",
    "pixel_to_rainfall",
    "rainfall_to_dbz",
    "rainfall_to_pixel",
]

ZR_A = 58.53
"""``a`` of the Z-R relation ``Z = a R^b`` used by HKO-7."""

ZR_B = 1.56
"""``b`` of the Z-R relation ``Z = a R^b`` used by HKO-7."""


def _float_tensor(x: Tensor) -> Tensor:
    return x if x.is_floating_point() and x.dtype != torch.float16 else x.float()


def _check_value(name: str, value: object) -> Tensor | float:
    if isinstance(value, Tensor):
        return _float_tensor(value)
    return check_real(name, value)


@overload
def pixel_to_dbz(pixel: Tensor) -> Tensor: ...
@overload
def pixel_to_dbz(pixel: float) -> float: ...
def pixel_to_dbz(pixel: Tensor | float) -> Tensor | float:
    """Reflectivity of a pixel value: ``70 pixel - 10`` dBZ."""
    p = _check_value("pixel", pixel)
    return p * 70.0 - 10.0


@overload
def dbz_to_pixel(dbz: Tensor, *, clip: bool = True) -> Tensor: ...
@overload
def dbz_to_pixel(dbz: float, *, clip: bool = True) -> float: ...
def dbz_to_pixel(dbz: Tensor | float, *, clip: bool = True) -> Tensor | float:
    """Pixel value of a reflectivity: ``(dBZ + 10) / 70``, clipped to [0, 1] by default."""
    z = _check_value("dbz", dbz)
    p = (z + 10.0) / 70.0
    if not clip:
        return p
    if isinstance(p, Tensor):
        return p.clamp(0.0, 1.0)
    return min(max(p, 0.0), 1.0)


@overload
def rainfall_to_dbz(rainfall: Tensor, a: float = ZR_A, b: float = ZR_B) -> Tensor: ...
@overload
def rainfall_to_dbz(rainfall: float, a: float = ZR_A, b: float = ZR_B) -> float: ...
def rainfall_to_dbz(rainfall: Tensor | float, a: float = ZR_A, b: float = ZR_B) -> Tensor | float:
    """Reflectivity of a rain rate ``R`` (mm/h): ``10 log10(a) + 10 b log10(R)``."""
    r = _check_value("rainfall", rainfall)
    a = check_real("a", a, low=0.0)
    b = check_real("b", b)
    if isinstance(r, Tensor):
        return torch.log10(r) * (10.0 * b) + 10.0 * math.log10(a)
    if r <= 0:
        raise ValueError(f"rainfall must be > 0 mm/h to have a reflectivity; got {rainfall!r}")
    return math.log10(r) * 10.0 * b + 10.0 * math.log10(a)


@overload
def dbz_to_rainfall(dbz: Tensor, a: float = ZR_A, b: float = ZR_B) -> Tensor: ...
@overload
def dbz_to_rainfall(dbz: float, a: float = ZR_A, b: float = ZR_B) -> float: ...
def dbz_to_rainfall(dbz: Tensor | float, a: float = ZR_A, b: float = ZR_B) -> Tensor | float:
    """Rain rate (mm/h) of a reflectivity: ``10 ** ((dBZ - 10 log10(a)) / (10 b))``."""
    z = _check_value("dbz", dbz)
    a = check_real("a", a, low=0.0)
    b = check_real("b", b)
    exponent = (z - 10.0 * math.log10(a)) / (10.0 * b)
    if isinstance(exponent, Tensor):
        return torch.pow(10.0, exponent)
    return float(10.0**exponent)


@overload
def pixel_to_rainfall(pixel: Tensor, a: float = ZR_A, b: float = ZR_B) -> Tensor: ...
@overload
def pixel_to_rainfall(pixel: float, a: float = ZR_A, b: float = ZR_B) -> float: ...
def pixel_to_rainfall(pixel: Tensor | float, a: float = ZR_A, b: float = ZR_B) -> Tensor | float:
    """Rain rate (mm/h) of a pixel value in [0, 1] (HKO-7 ``pixel_to_rainfall``).

    Example:
        >>> round(pixel_to_rainfall(1.0), 1)
        516.7
    """
    return dbz_to_rainfall(pixel_to_dbz(pixel), a, b)


@overload
def rainfall_to_pixel(rainfall: Tensor, a: float = ZR_A, b: float = ZR_B) -> Tensor: ...
@overload
def rainfall_to_pixel(rainfall: float, a: float = ZR_A, b: float = ZR_B) -> float: ...
def rainfall_to_pixel(rainfall: Tensor | float, a: float = ZR_A, b: float = ZR_B) -> Tensor | float:
    """Pixel value of a rain rate in mm/h, **not** clipped (HKO-7 ``rainfall_to_pixel``).

    Example:
        >>> round(rainfall_to_pixel(0.5), 6)
        0.328253
    """
    return dbz_to_pixel(rainfall_to_dbz(rainfall, a, b), clip=False)
