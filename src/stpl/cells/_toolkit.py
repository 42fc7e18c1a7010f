"""Shared building blocks of every cell: gate convolutions, layer norm, state helpers, checks.

Every cell in :mod:`stpl.cells` is assembled from these pieces, so a behaviour (how a layer
norm is laid out, how a zero state is made, what an error says) is written once.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

Norm = Literal["layer"] | None
"""Normalisation of a gate convolution's output: ``None`` or ``"layer"``."""

_NORMS = (None, "layer")


def check_norm(norm: object) -> Norm:
    """Return ``norm`` if it is a supported normalisation, else raise ``ValueError``."""
    if norm not in _NORMS:
        raise ValueError(f"norm must be None or 'layer'; got {norm!r}")
    return norm  # type: ignore[return-value]


def check_positive_int(name: str, value: object) -> int:
    """Return ``value`` if it is an ``int`` > 0, else raise ``ValueError`` naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name} must be a positive int; got {value!r}")
    return value


def check_kernel_size(name: str, value: object) -> int:
    """Return ``value`` if it is a positive odd ``int`` ("same" padding needs an odd kernel)."""
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0 or value % 2 == 0:
        raise ValueError(f"{name} must be a positive odd int (same padding k // 2); got {value!r}")
    return value


def check_spatial_size(spatial_size: object) -> tuple[int, int] | None:
    """Return ``spatial_size`` as ``(H, W)`` or ``None``; raise ``ValueError`` if malformed."""
    if spatial_size is None:
        return None
    if isinstance(spatial_size, int) and not isinstance(spatial_size, bool):
        spatial_size = (spatial_size, spatial_size)
    if (
        not isinstance(spatial_size, Sequence)
        or len(spatial_size) != 2
        or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in spatial_size)
    ):
        raise ValueError(f"spatial_size must be None or (H, W) positive ints; got {spatial_size!r}")
    return (int(spatial_size[0]), int(spatial_size[1]))


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
        self, num_channels: int, *, spatial_size: tuple[int, int] | None = None, eps: float = 1e-5
    ) -> None:
        super().__init__()
        self.num_channels = check_positive_int("num_channels", num_channels)
        self.spatial_size = check_spatial_size(spatial_size)
        self.eps = eps
        shape: tuple[int, ...] = (num_channels,)
        if self.spatial_size is not None:
            shape = (num_channels, *self.spatial_size)
        self.weight = nn.Parameter(torch.ones(shape))
        self.bias = nn.Parameter(torch.zeros(shape))

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
    ) -> None:
        check_kernel_size("kernel_size", kernel_size)
        layers: list[nn.Module] = [
            nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=bias)
        ]
        if check_norm(norm) == "layer":
            layers.append(LayerNorm2d(out_channels, spatial_size=spatial_size))
        super().__init__(*layers)

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
    if t.dtype != x.dtype and not torch.is_autocast_enabled(x.device.type):
        raise ValueError(f"{name} has dtype {t.dtype}, but the input has dtype {x.dtype}")
    return t


def split_gates(t: Tensor, channels: int) -> tuple[Tensor, ...]:
    """Split ``(B, n*channels, H, W)`` into ``n`` chunks of ``channels`` along dim 1."""
    return torch.split(t, channels, dim=1)
