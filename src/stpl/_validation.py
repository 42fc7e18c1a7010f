"""Argument checks shared by every public entry point of stpl.

One place decides what "an int" is (Python and NumPy integers, never ``bool``), how a
real number, a probability, a choice or an options mapping is checked, and what the error
says: the argument's name, what was expected and what came. Cells, models, training
helpers, metrics and data all call these, so the same mistake gets the same message
everywhere.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Collection, Iterable, Mapping
from typing import Any, TypeVar

import torch
from torch import Tensor

__all__ = [
    "check_bool",
    "check_choice",
    "check_float_dtype",
    "check_int",
    "check_kernel_size",
    "check_options",
    "check_positive_int",
    "check_prob",
    "check_real",
    "check_tensor",
]

_T = TypeVar("_T")


def _is_int(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_int(
    name: str, value: object, *, minimum: int | None = None, maximum: int | None = None
) -> int:
    """Return ``value`` as a Python ``int``; ``ValueError`` unless it is an integer in range.

    Python and NumPy integers are accepted (``np.int64(3)`` is 3); ``bool`` and floats
    (even ``3.0``) are not.
    """
    if not _is_int(value) or (minimum is not None and value < minimum) or (  # type: ignore[operator]
        maximum is not None and value > maximum  # type: ignore[operator]
    ):
        if minimum is not None and maximum is not None:
            want = f"an int in [{minimum}, {maximum}]"
        elif minimum == 1:
            want = "a positive int"
        elif minimum is not None:
            want = f"an int >= {minimum}"
        elif maximum is not None:
            want = f"an int <= {maximum}"
        else:
            want = "an int"
        raise ValueError(f"{name} must be {want}; got {value!r}")
    return int(value)  # type: ignore[call-overload,no-any-return]


def check_positive_int(name: str, value: object) -> int:
    """Return ``value`` as an ``int`` >= 1, else raise ``ValueError`` naming ``name``."""
    return check_int(name, value, minimum=1)


def check_kernel_size(name: str, value: object) -> int:
    """Return ``value`` if it is a positive odd int ("same" padding needs an odd kernel)."""
    if not _is_int(value) or value <= 0 or value % 2 == 0:  # type: ignore[operator]
        raise ValueError(f"{name} must be a positive odd int (same padding k // 2); got {value!r}")
    return int(value)  # type: ignore[call-overload,no-any-return]


def check_real(
    name: str, value: object, *, low: float = -math.inf, high: float = math.inf
) -> float:
    """Return ``value`` as a finite ``float`` in ``[low, high]``, else raise ``ValueError``."""
    if (
        isinstance(value, bool)
        or not isinstance(value, numbers.Real)
        or not math.isfinite(float(value))
        or not low <= float(value) <= high
    ):
        if math.isfinite(low) and math.isfinite(high):
            bounds = f" in [{low}, {high}]"
        elif math.isfinite(low):
            bounds = f" >= {low}"
        elif math.isfinite(high):
            bounds = f" <= {high}"
        else:
            bounds = ""
        raise ValueError(f"{name} must be a finite number{bounds}; got {value!r}")
    return float(value)


def check_prob(name: str, value: object) -> float:
    """Return ``value`` as a ``float`` in ``[0, 1]``, else raise ``ValueError``."""
    return check_real(name, value, low=0.0, high=1.0)


def check_bool(name: str, value: object) -> bool:
    """Return ``value`` if it is a ``bool`` (or NumPy bool), else raise ``ValueError``."""
    if not isinstance(value, bool) and type(value).__name__ != "bool_":
        raise ValueError(f"{name} must be True or False; got {value!r}")
    return bool(value)


def check_choice(name: str, value: _T, choices: Collection[object]) -> _T:
    """Return ``value`` if it is one of ``choices``, else raise ``ValueError`` listing them."""
    try:
        ok = value in choices
    except TypeError:  # unhashable value against a set
        ok = False
    if not ok:
        shown = ", ".join(repr(c) for c in choices)
        raise ValueError(f"{name} must be one of {shown}; got {value!r}")
    return value


def check_options(where: str, options: Mapping[str, Any], accepted: Iterable[str]) -> None:
    """Raise ``TypeError`` naming every key of ``options`` not in ``accepted``.

    Used where ``**options`` are forwarded (cell options of a model, preset overrides), so
    a misspelt argument fails at the public boundary instead of deep inside.
    """
    allowed = set(accepted)
    unknown = sorted(k for k in options if k not in allowed)
    if unknown:
        import difflib

        hints = []
        for key in unknown:
            close = difflib.get_close_matches(key, sorted(allowed), n=1)
            hints.append(f"{key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        raise TypeError(
            f"{where} got unexpected keyword argument(s) {', '.join(hints)}; "
            f"accepted: {sorted(allowed)}"
        )


def check_float_dtype(name: str, dtype: object) -> torch.dtype:
    """Return ``dtype`` if it is a floating ``torch.dtype``, else raise ``ValueError``."""
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ValueError(f"{name} must be a floating torch.dtype; got {dtype!r}")
    return dtype


def check_tensor(
    name: str,
    value: object,
    *,
    ndim: int | None = None,
    shape_hint: str = "",
    floating: bool = True,
) -> Tensor:
    """Return ``value`` if it is a tensor (of ``ndim`` dims, floating), else raise.

    ``TypeError`` for a non-tensor, ``ValueError`` for a wrong rank or dtype; ``shape_hint``
    (e.g. ``"(B, T, C, H, W)"``) is quoted in the message.
    """
    if not isinstance(value, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor; got {type(value).__name__}")
    if ndim is not None and value.dim() != ndim:
        want = shape_hint or f"{ndim}-D"
        raise ValueError(f"{name} must be {want}; got shape {tuple(value.shape)}")
    if floating and not value.is_floating_point():
        raise ValueError(f"{name} must be a floating tensor; got dtype {value.dtype}")
    return value
