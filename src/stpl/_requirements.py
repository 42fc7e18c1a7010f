"""The torch version stpl needs, checked when ``stpl`` is imported."""

from __future__ import annotations

import torch

__all__ = ["MIN_TORCH", "torch_version"]

MIN_TORCH = (2, 4)
"""The oldest torch release stpl supports: ``torch.is_autocast_enabled(device_type)`` and
``torch.compiler.is_compiling`` appeared in 2.4 (``docs/requirements.md`` lists what else
was checked on 2.4.1 and what needs a newer torch)."""


def torch_version() -> tuple[int, int]:
    """``(major, minor)`` of the installed torch."""
    major, minor = torch.__version__.split("+")[0].split(".")[:2]
    return int(major), int(minor)


if torch_version() < MIN_TORCH:
    raise ImportError(
        f"stpl needs torch >= {MIN_TORCH[0]}.{MIN_TORCH[1]}; this is torch {torch.__version__} "
        f"(pip install 'torch>={MIN_TORCH[0]}.{MIN_TORCH[1]}')"
    )
