"""Shared building blocks of every cell: gate convolutions, layer norm, state helpers, checks.

Every cell in :mod:`stpl.cells` is assembled from these pieces, so a behaviour (how a layer
norm is laid out, how a zero state is made, what an error says) is written once.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from typing import Any, Literal, TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from stpl._validation import check_kernel_size, check_positive_int

__all__ = [
    "Device",
    "GateConv",
    "LayerNorm2d",
    "Norm",
    "autocast_enabled",
    "check_kernel_size",
    "check_map",
    "check_norm",
    "check_positive_int",
    "check_spatial_size",
    "check_state",
    "check_state_map",
    "factory_kwargs",
    "reset_module_parameters",
    "split_gates",
    "with_memory",
    "zeros_like_map",
]

Device = torch.device | str | int | None
"""What ``device=`` accepts, as in ``torch.nn`` layers."""

Norm = Literal["layer"] | None
"""Normalisation of a gate convolution's output: ``None`` or ``"layer"``."""

_NORMS = (None, "layer")

def autocast_enabled(device_type: str) -> bool:
    """Whether autocast is on for ``device_type`` (``"cpu"``, ``"cuda"``, ...).

    ``torch.is_autocast_enabled(device_type)`` exists from torch 2.4, the minimum stpl
    declares (``pyproject.toml``); this is the one place that asks.
    """
    return bool(torch.is_autocast_enabled(device_type))


def check_norm(norm: object) -> Norm:
    """Return ``norm`` if it is a supported normalisation, else raise ``ValueError``."""
    if norm not in _NORMS:
        raise ValueError(f"norm must be None or 'layer'; got {norm!r}")
    return norm  # type: ignore[return-value]


def check_spatial_size(spatial_size: object) -> tuple[int, int] | None:
    """Return ``spatial_size`` as ``(H, W)`` or ``None``; raise ``ValueError`` if malformed."""
    if spatial_size is None:
        return None
    if isinstance(spatial_size, numbers.Integral) and not isinstance(spatial_size, bool):
        spatial_size = (spatial_size, spatial_size)
    if (
        not isinstance(spatial_size, Sequence)
        or len(spatial_size) != 2
        or not all(
            isinstance(s, numbers.Integral) and not isinstance(s, bool) and int(s) > 0
            for s in spatial_size
        )
    ):
        raise ValueError(f"spatial_size must be None or (H, W) positive ints; got {spatial_size!r}")
    return (int(spatial_size[0]), int(spatial_size[1]))


def factory_kwargs(device: Device, dtype: torch.dtype | None) -> dict[str, Any]:
    """``{"device": device, "dtype": dtype}`` for ``torch.nn`` constructors (checked dtype)."""
    if dtype is not None and (not isinstance(dtype, torch.dtype) or not dtype.is_floating_point):
        raise ValueError(f"dtype must be None or a floating torch.dtype; got {dtype!r}")
    return {"device": device, "dtype": dtype}


def reset_module_parameters(module: nn.Module) -> None:
    """Re-initialise every parameter below ``module`` with its layer's own initialiser.

    Calls ``reset_parameters()`` of each child that has one (``nn.Conv2d``, our norms and
    cells) and recurses into children that do not (``nn.ModuleList``, ``nn.Sequential``).
    Together with ``to_empty`` this turns a model built on the ``meta`` device into a
    normally initialised one.
    """
    for child in module.children():
        reset = getattr(child, "reset_parameters", None)
        if callable(reset):
            reset()
        else:
            reset_module_parameters(child)


class LayerNorm2d(nn.Module):
    """Layer norm of a ``(B, C, H, W)`` map over ``(C, H, W)`` jointly, per sample.

    This is what the reference code's ``nn.LayerNorm([C, H, W])`` normalises. The affine
    parameters are per channel, shape ``(C,)``, so the module works at any resolution;
    with ``spatial_size=(H, W)`` they are per element, shape ``(C, H, W)``, exactly like
    the reference (needed to load reference checkpoints; then H and W are fixed).

    Args:
        num_channels: C.
        spatial_size: ``None`` (per-channel affine) or ``(H, W)`` (per-element affine).
        eps: added to the variance, 1e-5 as ``nn.LayerNorm``.
    """

    def __init__(
        self,
        num_channels: int,
        *,
        spatial_size: tuple[int, int] | None = None,
        eps: float = 1e-5,
        device: Device = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.num_channels = check_positive_int("num_channels", num_channels)
        self.spatial_size = check_spatial_size(spatial_size)
        self.eps = eps
        shape: tuple[int, ...] = (self.num_channels,)
        if self.spatial_size is not None:
            shape = (self.num_channels, *self.spatial_size)
        factory = factory_kwargs(device, dtype)
        self.weight = nn.Parameter(torch.empty(shape, **factory))
        self.bias = nn.Parameter(torch.empty(shape, **factory))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Weight 1, bias 0 (``nn.LayerNorm``'s initialisation)."""
        nn.init.ones_(self.weight)
        nn.init.zeros_(self.bias)

    def forward(self, x: Tensor) -> Tensor:
        """Normalise ``x: (B, C, H, W)``; returns the same shape."""
        if self.spatial_size is None:
            # group norm with one group normalises over (C, H, W) with a per-channel affine,
            # in one fused kernel that keeps a channels_last layout.
            return F.group_norm(x, 1, self.weight, self.bias, self.eps)
        if tuple(x.shape[-2:]) != self.spatial_size:
            raise ValueError(
                f"this layer norm has per-element affine parameters for spatial_size="
                f"{self.spatial_size}; got a map of size {tuple(x.shape[-2:])} "
                "(build the cell with spatial_size=None to accept any resolution)"
            )
        return F.layer_norm(x, tuple(x.shape[1:]), self.weight, self.bias, self.eps)

    def extra_repr(self) -> str:
        affine = "per-channel" if self.spatial_size is None else f"per-element {self.spatial_size}"
        return f"{self.num_channels}, affine={affine}, eps={self.eps}"


class GateConv(nn.Sequential):
    """A "same" 2-D convolution optionally followed by :class:`LayerNorm2d`.

    Keys of its parameters are ``0.weight`` (conv), ``0.bias`` (with ``bias=True``),
    ``1.weight`` / ``1.bias`` (layer norm), the layout of the reference code's
    ``nn.Sequential(nn.Conv2d(...), nn.LayerNorm(...))``.

    Shapes: ``(B, in_channels, H, W) -> (B, out_channels, H, W)``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        *,
        bias: bool = False,
        norm: Norm = None,
        spatial_size: tuple[int, int] | None = None,
        device: Device = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        check_kernel_size("kernel_size", kernel_size)
        factory = factory_kwargs(device, dtype)
        layers: list[nn.Module] = [
            nn.Conv2d(
                in_channels,
                out_channels,
                kernel_size,
                padding=kernel_size // 2,
                bias=bias,
                **factory,
            )
        ]
        if check_norm(norm) == "layer":
            layers.append(LayerNorm2d(out_channels, spatial_size=spatial_size, **factory))
        super().__init__(*layers)

    def reset_parameters(self) -> None:
        """Re-initialise the convolution (``nn.Conv2d``'s default) and the norm."""
        reset_module_parameters(self)

    @property
    def conv(self) -> nn.Conv2d:
        """The convolution."""
        conv = self[0]
        assert isinstance(conv, nn.Conv2d)
        return conv


def zeros_like_map(x: Tensor, channels: int) -> Tensor:
    """Zeros of shape ``(B, channels, H, W)`` on ``x``'s device, dtype and memory format."""
    b, _, h, w = x.shape
    z = x.new_zeros((b, channels, h, w))
    if (
        x.dim() == 4
        and x.is_contiguous(memory_format=torch.channels_last)
        and not x.is_contiguous()
    ):
        z = z.contiguous(memory_format=torch.channels_last)
    return z


def check_map(name: str, x: object, channels: int) -> Tensor:
    """Check ``x`` is a floating ``(B, channels, H, W)`` tensor; ``ValueError`` otherwise."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor; got {type(x).__name__}")
    if x.dim() != 4:
        raise ValueError(
            f"{name} must be (B, C, H, W) with C={channels}; got shape {tuple(x.shape)}"
        )
    if x.shape[1] != channels:
        raise ValueError(
            f"{name} must have {channels} channels, (B, {channels}, H, W); "
            f"got shape {tuple(x.shape)}"
        )
    if not x.is_floating_point():
        raise ValueError(f"{name} must be a floating tensor; got dtype {x.dtype}")
    return x


def check_state_map(name: str, t: object, x: Tensor, channels: int) -> Tensor:
    """Check a state tensor ``t`` matches input ``x``: ``(B, channels, H, W)``, dtype, device.

    A dtype mismatch is accepted under autocast, where states come out in the low precision.
    """
    if not isinstance(t, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor; got {type(t).__name__}")
    b, _, h, w = x.shape
    expected = (b, channels, h, w)
    if tuple(t.shape) != expected:
        raise ValueError(
            f"{name} must be (B, C, H, W) = {expected} to match the input; got shape "
            f"{tuple(t.shape)} (a state from another batch size or spatial size?)"
        )
    if t.device != x.device:
        raise ValueError(f"{name} is on device {t.device}, but the input is on {x.device}")
    if t.dtype != x.dtype and not autocast_enabled(x.device.type):
        raise ValueError(f"{name} has dtype {t.dtype}, but the input has dtype {x.dtype}")
    return t


_S = TypeVar("_S", bound=tuple[Any, ...])


def check_state(name: str, state: object, state_type: type[_S]) -> _S:
    """Check a carried state is a ``state_type`` (or a plain tuple/list of its length).

    A NamedTuple of another type (an ``LSTMState`` given to an ST-LSTM, an ``STLSTMState``
    to a ConvLSTM) is a state built by another cell type: it raises ``ValueError`` instead
    of being read by position.
    """
    fields: tuple[str, ...] = getattr(state_type, "_fields", ())
    want = f"{state_type.__name__}({', '.join(fields)})"
    if isinstance(state, state_type):
        return state
    if isinstance(state, tuple) and hasattr(state, "_fields"):
        raise ValueError(
            f"{name} must be a {want}; got a {type(state).__name__} "
            "(a state built by another cell type?)"
        )
    if not isinstance(state, (tuple, list)) or len(state) != len(fields):
        got = f"a {type(state).__name__}"
        if isinstance(state, (tuple, list)):
            got += f" of {len(state)} items"
        raise ValueError(f"{name} must be a {want} or a tuple of {len(fields)} tensors; got {got}")
    return state_type(*state)


def with_memory(state: Any, memory: Tensor) -> Any:
    """``state`` with its zigzag memory (field ``m``, third position) replaced.

    A NamedTuple is rebuilt positionally (older dynamo cannot trace ``_replace``), a plain
    tuple stays a tuple.
    """
    if hasattr(state, "_fields"):
        return type(state)(*state[:2], memory, *state[3:])
    return (*state[:2], memory, *state[3:])


def split_gates(t: Tensor, channels: int) -> tuple[Tensor, ...]:
    """Split ``(B, n*channels, H, W)`` into ``n`` chunks of ``channels`` along dim 1."""
    return torch.split(t, channels, dim=1)
