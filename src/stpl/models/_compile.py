"""``torch.compile`` for the recurrent steps, one compiled function per device type.

Every model's ``compile_step`` compiles its step(s) through :class:`PerDeviceCompiled`: the
function is compiled at its first call on a device type, with that device's defaults.

On the CPU, inductor runs without its layout optimization unless asked otherwise
(``options={"layout_optimization": True}``). Inductor's layout optimization turns the
activations around each convolution to channels_last and back; on the CPU that adds layout
conversion kernels to every step (1.3-1.5x the kernels per step for the ConvLSTM and
PredRNN family, docs/benchmarks.md) and made the layer-norm-heavy MoDeRNN training step
slower than eager (0.89x in float32, against 1.01x without it). On CUDA, inductor's own
defaults apply.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor

__all__ = ["CPU_INDUCTOR_OPTIONS", "PerDeviceCompiled", "compile_kwargs_for"]

CPU_INDUCTOR_OPTIONS: Mapping[str, Any] = {"layout_optimization": False}
"""Inductor options ``compile_step`` adds on the CPU (the user's ``options`` win)."""


def compile_kwargs_for(device_type: str, kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """``torch.compile`` keyword arguments for a step on ``device_type``.

    On the CPU with the inductor backend, :data:`CPU_INDUCTOR_OPTIONS` are added under the
    user's own ``options``; not with a ``mode`` (``torch.compile`` takes one or the other)
    or another backend.
    """
    out = dict(kwargs)
    backend = out.get("backend", "inductor")
    if device_type != "cpu" or backend != "inductor" or out.get("mode") is not None:
        return out
    out["options"] = {**CPU_INDUCTOR_OPTIONS, **(out.get("options") or {})}
    return out


def _first_tensor(args: Any) -> Tensor | None:
    for a in args:
        if isinstance(a, Tensor):
            return a
        if isinstance(a, (tuple, list)):
            found = _first_tensor(a)
            if found is not None:
                return found
    return None


class PerDeviceCompiled:
    """``torch.compile(make(), **kwargs)``, made at the first call on each device type.

    The device is that of the first tensor among the positional arguments (searched into
    tuples and lists); calls without a tensor use the CPU's function.

    Args:
        make: returns the function to compile (a fresh one per device type, so that each
            has its own dynamo cache).
        kwargs: ``torch.compile`` keyword arguments, completed by :func:`compile_kwargs_for`.
    """

    def __init__(self, make: Callable[[], Callable[..., Any]], kwargs: Mapping[str, Any]) -> None:
        self._make = make
        self.kwargs = dict(kwargs)
        self._compiled: dict[str, Callable[..., Any]] = {}

    def compiled(self, device_type: str) -> Callable[..., Any]:
        """The compiled function for ``device_type`` (compiled lazily, at its first call)."""
        fn = self._compiled.get(device_type)
        if fn is None:
            fn = torch.compile(self._make(), **compile_kwargs_for(device_type, self.kwargs))
            self._compiled[device_type] = fn
        return fn

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        like = _first_tensor(args)
        return self.compiled("cpu" if like is None else like.device.type)(*args, **kwargs)
