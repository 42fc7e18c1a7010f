"""PhyCell (Le Guen & Thome, CVPR 2020): a PDE-constrained predictor with a learned correction.

Also the moment-matrix helpers of PhyDNet's filter constraint: :func:`moment_matrix` (the
reference's ``K2M``), :func:`kernel_from_moments` (``M2K``) and :func:`moment_targets`.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor, nn

from stpl._validation import check_bool, check_positive_int
from stpl.cells._toolkit import (
    Device,
    check_kernel_size,
    check_map,
    check_state,
    check_state_map,
    factory_kwargs,
    reset_module_parameters,
    zeros_like_map,
)

__all__ = [
    "PhyCell",
    "PhyCellState",
    "kernel_from_moments",
    "moment_basis",
    "moment_matrix",
    "moment_targets",
]


class PhyCellState(NamedTuple):
    """State of a :class:`PhyCell`.

    Attributes:
        h: the physical latent state, ``(B, C, H, W)``.
    """

    h: Tensor


def moment_basis(size: int, *, dtype: torch.dtype = torch.float64, device: Device = None) -> Tensor:
    """The ``(n, n)`` matrix ``M[q, i] = (i - (n-1)//2)^q / q!`` of PhyDNet's ``K2M``.

    Row q holds the q-th power of each tap's offset from the centre, divided by q!. For a
    kernel ``k (n, m)``, ``M_n k M_mᵀ`` is its moment matrix (:func:`moment_matrix`).

    Args:
        size: n, the kernel size along one axis, ``>= 1``.
        dtype: float64 by default (the reference builds it in NumPy float64).
        device: where to build it.
    """
    size = check_positive_int("size", size)
    offsets = torch.arange(size, dtype=torch.float64) - (size - 1) // 2
    powers = torch.arange(size, dtype=torch.float64)
    factorials = torch.tensor([math.factorial(q) for q in range(size)], dtype=torch.float64)
    basis = offsets[None, :] ** powers[:, None] / factorials[:, None]
    return basis.to(device=device, dtype=dtype)


def _check_kernels(name: str, kernels: object) -> Tensor:
    if not isinstance(kernels, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor; got {type(kernels).__name__}")
    if kernels.dim() < 2 or not kernels.is_floating_point():
        raise ValueError(
            f"{name} must be a floating tensor (..., n, m) of 2-D kernels; got shape "
            f"{tuple(kernels.shape)} and dtype {kernels.dtype}"
        )
    return kernels


def moment_matrix(kernels: Tensor) -> Tensor:
    r"""Moment matrices of 2-D convolution kernels (PhyDNet's ``K2M``).

    For a kernel ``k (n, m)``: ``m = M_n k M_mᵀ``, i.e.
    ``m[p, q] = Σ_{a,b} k[a, b] · u_a^p · v_b^q / (p! q!)`` with ``u_a``/``v_b`` the row /
    column offsets of tap (a, b) from the centre. Since a convolution layer computes a
    cross-correlation, ``(k ⋆ h)(y, x) ≈ Σ_{p,q} m[p, q] ∂_y^p ∂_x^q h``: ``m[p, q]`` is the
    coefficient of the derivative ∂^{p+q} h / ∂y^p ∂x^q the kernel approximates.

    Computed in float64 (as the reference) and returned in ``kernels.dtype`` promoted to at
    least float32. Differentiable.

    Args:
        kernels: ``(..., n, m)``.

    Returns:
        ``(..., n, m)`` moment matrices.
    """
    kernels = _check_kernels("kernels", kernels)
    n, m = kernels.shape[-2:]
    rows = moment_basis(n, device=kernels.device)
    cols = moment_basis(m, device=kernels.device)
    moments = rows @ kernels.to(torch.float64) @ cols.T
    return moments.to(torch.promote_types(kernels.dtype, torch.float32))


def kernel_from_moments(moments: Tensor) -> Tensor:
    """The inverse of :func:`moment_matrix` (PhyDNet's ``M2K``): ``k = M_n⁻¹ m M_m⁻ᵀ``.

    Args:
        moments: ``(..., n, m)`` moment matrices.

    Returns:
        ``(..., n, m)`` kernels, in ``moments.dtype`` promoted to at least float32.
    """
    moments = _check_kernels("moments", moments)
    n, m = moments.shape[-2:]
    rows: Tensor = torch.linalg.inv(moment_basis(n, device=moments.device))
    cols: Tensor = torch.linalg.inv(moment_basis(m, device=moments.device))
    kernels = rows @ moments.to(torch.float64) @ cols.T
    return kernels.to(torch.promote_types(moments.dtype, torch.float32))


def moment_targets(
    kernel_size: int, *, dtype: torch.dtype = torch.float32, device: Device = None
) -> Tensor:
    """PhyDNet's moment constraints: ``(k*k, k, k)``, slice ``k*i + j`` one-hot at ``(i, j)``.

    Filter ``k*i + j`` of PhyCell's first convolution is asked to have exactly one non-zero
    moment, ``m[i, j] = 1``: to be the finite-difference stencil of ∂^{i+j}/∂y^i ∂x^j.
    """
    kernel_size = check_kernel_size("kernel_size", kernel_size)
    n = kernel_size * kernel_size
    return torch.eye(n, dtype=dtype, device=device).reshape(n, kernel_size, kernel_size)


class PhyCell(nn.Module):
    r"""One step of PhyDNet's PhyCell (Le Guen & Thome, CVPR 2020).

    A latent physical model ``∂h/∂t = Φ(h)`` discretised as one Euler step, then corrected
    towards the encoded observation ``x`` like a Kalman filter::

        Φ(h) = W_2 * GN(W_1 * h + b_1) + b_2      # W_1: k×k, C → F filters; GN: `groups`
                                                  # groups; W_2: 1×1, F → C; no activation
        h̃    = h + Φ(h)                            # prediction
        K    = σ(W_K * [x, h] + b_K)               # gain, 3×3 on the concatenation
        h'   = h̃ + K ⊙ (x − h̃)                     # correction

    With ``F = k*k`` filters and PhyDNet's moment loss (:func:`stpl.training.moment_loss`),
    filter ``k*i + j`` of ``W_1`` is pushed towards the finite-difference stencil of
    ∂^{i+j}/∂y^i ∂x^j, so Φ is a learned linear combination of spatial derivatives.

    Reference: chengtan9907/OpenSTL ``PhyCell_Cell`` (= vincent-leguen/PhyDNet's).
    Parameter names: ours ``phi.0`` (``F.conv1``), ``phi.1`` (``F.bn1``, a GroupNorm),
    ``phi.2`` (``F.conv2``), ``gate`` (``convgate``).

    Differences from the reference code:

    * the state is passed in and out (``PhyCellState``) instead of living on the module and
      being reset by a ``first_timestep`` flag; zero states follow the input's dtype (the
      reference makes float32 zeros on a fixed device);
    * ``x`` must be given (the reference's never-used ``decoding=True`` path, which passes
      ``None``, crashes);
    * the reference stacks several cells in ``PhyCell``; PhyDNet uses one, as here.

    The gain K reads the previous state ``h``, not the prediction ``h̃`` (this is what the
    code computes; the paper's text was not checked here).

    Args:
        in_channels: C of ``x``; must equal ``hidden_channels`` (``x − h̃``).
        hidden_channels: C of ``h``.
        kernel_size: odd size k of ``W_1`` (7 in PhyDNet).
        filters: F, the output channels of ``W_1`` (49 = 7·7 in PhyDNet).
        groups: groups of the group norm (7 in the reference); must divide ``filters``.
        gate_kernel_size: odd size of the gain convolution ``W_K`` (3).
        bias: bias of ``W_K`` (the reference's ``bias=1``); ``W_1``/``W_2`` always have one.
        device, dtype: where and in which dtype to create the parameters.

    Shapes: ``x: (B, C, H, W)``; returns ``h' (B, C, H, W)`` and ``PhyCellState(h')``.
    """

    state_type = PhyCellState
    """The state this cell carries."""

    def __init__(
        self,
        in_channels: int,
        hidden_channels: int,
        kernel_size: int = 7,
        *,
        filters: int = 49,
        groups: int = 7,
        gate_kernel_size: int = 3,
        bias: bool = True,
        device: Device = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.in_channels = check_positive_int("in_channels", in_channels)
        self.hidden_channels = check_positive_int("hidden_channels", hidden_channels)
        if self.in_channels != self.hidden_channels:
            raise ValueError(
                "PhyCell needs in_channels == hidden_channels (the correction mixes x and "
                f"h); got in_channels={in_channels}, hidden_channels={hidden_channels}"
            )
        self.kernel_size = check_kernel_size("kernel_size", kernel_size)
        self.filters = check_positive_int("filters", filters)
        self.groups = check_positive_int("groups", groups)
        if self.filters % self.groups:
            raise ValueError(
                f"groups must divide filters (group norm); got filters={filters}, groups={groups}"
            )
        self.gate_kernel_size = check_kernel_size("gate_kernel_size", gate_kernel_size)
        bias = check_bool("bias", bias)
        c, k = self.hidden_channels, self.kernel_size
        factory = factory_kwargs(device, dtype)
        self.phi = nn.Sequential(
            nn.Conv2d(c, self.filters, k, padding=k // 2, **factory),
            nn.GroupNorm(self.groups, self.filters, **factory),
            nn.Conv2d(self.filters, c, 1, **factory),
        )
        g = self.gate_kernel_size
        self.gate = nn.Conv2d(2 * c, c, g, padding=g // 2, bias=bias, **factory)

    def reset_parameters(self) -> None:
        """Every layer with its ``torch.nn`` initialisation."""
        reset_module_parameters(self)

    def initial_state(self, x: Tensor) -> PhyCellState:
        """Zero state for ``x: (B, C, H, W)`` (device, dtype and layout of ``x``)."""
        return PhyCellState(zeros_like_map(x, self.hidden_channels))

    @property
    def derivative_filters(self) -> Tensor:
        """``W_1``, the filters the moment constraint acts on: ``(F, C, k, k)``."""
        conv = self.phi[0]
        assert isinstance(conv, nn.Conv2d)
        return conv.weight

    def forward(self, x: Tensor, state: PhyCellState | None = None) -> tuple[Tensor, PhyCellState]:
        """One step: ``x: (B, C, H, W)``, ``state`` or ``None`` (zeros).

        Returns ``(h', PhyCellState(h'))``.
        """
        check_map("x", x, self.in_channels)
        if state is None:
            h = zeros_like_map(x, self.hidden_channels)
        else:
            h = check_state_map(
                "state.h", check_state("state", state, PhyCellState).h, x, self.hidden_channels
            )
        gain = torch.sigmoid(self.gate(torch.cat([x, h], dim=1)))
        h_tilde = h + self.phi(h)
        h_new = h_tilde + gain * (x - h_tilde)
        return h_new, PhyCellState(h_new)

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.hidden_channels}, kernel_size={self.kernel_size}, "
            f"filters={self.filters}, groups={self.groups}, "
            f"gate_kernel_size={self.gate_kernel_size}, bias={self.gate.bias is not None}"
        )
