"""Patch reshaping (space-to-depth) in the channel orders of the reference code.

Frames ``(..., C, H, W)`` become patch tensors ``(..., p*p*C, H/p, W/p)``. The references
order the ``p*p*C`` channels of a patch differently; the three orders differ by a fixed
channel permutation, which matters only when loading weights of the first or last layer:

==================  ===========================  ====================================
order               channel inside a patch       used by
==================  ===========================  ====================================
``"predrnn"``       ``(ph, pw, c)``, c fastest   thuml/predrnn-pytorch, OpenSTL
``"modernn"``       ``(c, pw, ph)``, ph fastest  czh-98/MoDeRNN
``"pixel_shuffle"`` ``(c, ph, pw)``, pw fastest  ``torch.nn.PixelUnshuffle``
==================  ===========================  ====================================
"""

from __future__ import annotations

from typing import Literal, get_args

from einops import rearrange
from torch import Tensor

from stpl._validation import check_positive_int

__all__ = [
    "PATCH_ORDERS",
    "PatchOrder",
    "check_divisible",
    "check_patch_order",
    "check_patch_size",
    "patch_permutation",
    "patchify",
    "unpatchify",
]

PatchOrder = Literal["predrnn", "modernn", "pixel_shuffle"]
"""Channel order inside a patch: ``"predrnn"``, ``"modernn"`` or ``"pixel_shuffle"``."""

PATCH_ORDERS: tuple[str, ...] = get_args(PatchOrder)

_PATTERN = {
    "predrnn": "(ph pw c)",
    "modernn": "(c pw ph)",
    "pixel_shuffle": "(c ph pw)",
}


def check_patch_order(order: object) -> PatchOrder:
    """Return ``order`` if it is a known patch order, else raise ``ValueError``."""
    if order not in _PATTERN:
        raise ValueError(f"patch_order must be one of {PATCH_ORDERS}; got {order!r}")
    return order  # type: ignore[return-value]


def check_patch_size(patch_size: object) -> int:
    """Return ``patch_size`` if it is an ``int`` >= 1, else raise ``ValueError``."""
    return check_positive_int("patch_size", patch_size)


def check_divisible(height: int, width: int, patch_size: int) -> None:
    """Raise ``ValueError`` unless ``H`` and ``W`` are divisible by ``patch_size``."""
    check_patch_size(patch_size)
    if height % patch_size or width % patch_size:
        bad = "H" if height % patch_size else "W"
        value = height if bad == "H" else width
        raise ValueError(
            f"{bad}={value} is not divisible by patch_size={patch_size} "
            f"(frames are {height}x{width})"
        )


def patchify(x: Tensor, patch_size: int, order: PatchOrder = "predrnn") -> Tensor:
    """Space-to-depth: ``(..., C, H, W) -> (..., p*p*C, H/p, W/p)`` in the given order.

    Raises:
        ValueError: ``x`` has fewer than 3 dims, or H or W is not divisible by ``patch_size``.
    """
    check_patch_order(order)
    if x.dim() < 3:
        raise ValueError(f"x must be (..., C, H, W); got shape {tuple(x.shape)}")
    check_divisible(x.shape[-2], x.shape[-1], patch_size)
    p = patch_size
    if p == 1:
        return x
    return rearrange(x, f"... c (h ph) (w pw) -> ... {_PATTERN[order]} h w", ph=p, pw=p)


def unpatchify(x: Tensor, patch_size: int, order: PatchOrder = "predrnn") -> Tensor:
    """Depth-to-space, the exact inverse of :func:`patchify`.

    ``(..., p*p*C, H/p, W/p) -> (..., C, H, W)``.
    """
    check_patch_order(order)
    p = check_patch_size(patch_size)
    if x.dim() < 3:
        raise ValueError(f"x must be (..., p*p*C, h, w); got shape {tuple(x.shape)}")
    if x.shape[-3] % (p * p):
        raise ValueError(
            f"the channel dim ({x.shape[-3]}) of x is not divisible by patch_size**2={p * p}"
        )
    if p == 1:
        return x
    return rearrange(x, f"... {_PATTERN[order]} h w -> ... c (h ph) (w pw)", ph=p, pw=p)


def patch_permutation(
    channels: int, patch_size: int, source: PatchOrder, target: PatchOrder
) -> list[int]:
    """Indices ``perm`` such that ``patches_target = patches_source[..., perm, :, :]``.

    Use it to re-order the input channels of a first-layer weight, or the output channels
    of a decoder, trained with another patch order.
    """
    import torch

    probe = torch.arange(channels * patch_size * patch_size, dtype=torch.float64)
    grid = unpatchify(probe.view(-1, 1, 1), patch_size, source)  # (C, p, p) of source indices
    return [int(i) for i in patchify(grid, patch_size, target).flatten().tolist()]
