"""Motion-aware unit (MAU; Chang et al., NeurIPS 2021): attention over the last tau states."""

from __future__ import annotations

import math
from typing import Any, Literal, NamedTuple

import torch
from torch import Tensor, nn

from stpl._validation import check_bool, check_choice
from stpl.cells._toolkit import (
    Device,
    GateConv,
    autocast_enabled,
    check_kernel_size,
    check_map,
    check_positive_int,
    check_spatial_size,
    check_state,
    check_state_map,
    factory_kwargs,
    reset_module_parameters,
    split_gates,
    zeros_like_map,
)

__all__ = ["MAUCell", "MAUCellMode", "MAUState"]

MAUCellMode = Literal["normal", "residual"]
"""``"normal"``, or ``"residual"`` (the spatial output also gets the spatial input added)."""


class MAUState(NamedTuple):
    """State of a :class:`MAUCell`: the temporal state and the two windows of the last tau steps.

    Attributes:
        t_state: the temporal state T (the cell's T output of the previous step),
            ``(B, C_hidden, H, W)``.
        t_history: the cell's T outputs of the last tau steps, oldest first,
            ``(B, tau, C_hidden, H, W)`` (the attention's values).
        s_history: the spatial inputs S of the last tau steps, oldest first,
            ``(B, tau, C_hidden, H, W)`` (the attention's keys).

    A zero state stands for "no step yet": the zero slots of a window take part in the
    attention (each scores 0), exactly as in the reference code's first tau steps.
    """

    t_state: Tensor
    t_history: Tensor
    s_history: Tensor


def _check_window(name: str, window: object, x: Tensor, tau: int, channels: int) -> Tensor:
    if not isinstance(window, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor; got {type(window).__name__}")
    b, _, h, w = x.shape
    expected = (b, tau, channels, h, w)
    if tuple(window.shape) != expected:
        raise ValueError(
            f"{name} must be (B, tau, C, H, W) = {expected} to match the input; got shape "
            f"{tuple(window.shape)} (a state from another batch size, spatial size or tau?)"
        )
    if window.device != x.device:
        raise ValueError(f"{name} is on device {window.device}, but the input is on {x.device}")
    if window.dtype != x.dtype and not autocast_enabled(x.device.type):
        raise ValueError(f"{name} has dtype {window.dtype}, but the input has dtype {x.dtype}")
    return window


def _push(window: Tensor, new: Tensor) -> Tensor:
    """Drop the oldest slot of ``window (B, tau, ...)`` and append ``new (B, ...)``."""
    return torch.cat([window[:, 1:], new.unsqueeze(1).to(window.dtype)], dim=1)


class MAUCell(nn.Module):
    r"""One step of the motion-aware unit (MAU) of Chang et al., NeurIPS 2021.

    The cell reads the spatial input ``S = x`` (the encoded frame, or the spatial output of
    the layer below) and carries a temporal state ``T`` plus windows of the last ``tau``
    steps: ``T_j`` (its own past T outputs, the values) and ``S_j`` (its past S inputs, the
    keys). With ``LN(W * .)`` a "same" convolution with bias followed by a layer norm over
    ``(C, H, W)``::

        q       = LN(W_sn * S)                      # the query, from the current input
        u       = LN(W_tn * T)
        α_j     = softmax_j( <S_j, q> / sqrt(C·H·W) )   # one weight per sample and slot
        T_trend = Σ_j α_j T_j                       # the "augmented motion information"
        U       = σ(u)
        T_fus   = U ⊙ T + (1 − U) ⊙ T_trend
        [t_g, t_t, t_s] = chunks(LN(W_t * T_fus))
        [s_g, s_t, s_s] = chunks(LN(W_s * S))
        T'      = σ(t_g) ⊙ t_t + (1 − σ(t_g)) ⊙ s_t
        S'      = σ(s_g) ⊙ s_s + (1 − σ(s_g)) ⊙ t_s     (+ S with cell_mode="residual")

    ``<., .>`` sums over channels and space. The cell returns ``S'`` (what the next layer
    reads) and ``MAUState(T', window_T + [T'], window_S + [S])`` (oldest slot dropped).

    Reference: chengtan9907/OpenSTL ``MAUCell`` (identical to the authors'
    ZhengChang467/MAU ``core/layers/MAUCell.py``); parameter names ``conv_t``,
    ``conv_t_next``, ``conv_s``, ``conv_s_next`` (``.0`` conv, ``.1`` norm) are theirs, so
    reference cell weights load 1:1 with ``spatial_size=(H, W)``.

    Differences from the reference code:

    * the windows are part of the state (``(B, tau, C, H, W)``, batch first) instead of
      Python lists on the caller's side; a zero state reproduces the reference's zero
      padding of the first tau steps, zero slots included in the softmax;
    * ``spatial_size=None`` gives per-channel layer-norm affines (any resolution); the
      reference's ``nn.LayerNorm([C, H, W])`` is ``spatial_size=(H, W)``;
    * ``sqrt(C·H·W)`` uses the size of the input (the reference uses its construction
      size, the same number whenever the reference runs);
    * the reference accepts a ``stride`` that breaks its own shapes for any value but 1 and
      separate input/hidden widths that only work when equal: here stride is 1 and
      ``in_channels == hidden_channels`` is checked;
    * zero states follow the input's dtype (the reference makes float32 zeros).

    The paper text was not available when this was written; the equations above are the
    code's (``docs/cells/mau.md``).

    Args:
        in_channels: C of the spatial input ``x``; must equal ``hidden_channels``.
        hidden_channels: C of ``T`` and ``S'``.
        kernel_size: odd size of the four convolutions.
        tau: length of the attention window.
        cell_mode: ``"normal"`` or ``"residual"``.
        spatial_size: ``(H, W)`` for per-element layer-norm affines (the reference's), or
            ``None`` for per-channel ones.
        bias: bias of the four convolutions (the reference has them).
        device, dtype: where and in which dtype to create the parameters.

    Shapes: ``x: (B, C, H, W)``; returns ``S' (B, C, H, W)`` and a :class:`MAUState`.
    """

    state_type = MAUState
    """The state this cell carries."""

    def __init__(
        self,
        in_channels: int,
        hidden_channels: int,
        kernel_size: int = 5,
        *,
        tau: int = 5,
        cell_mode: MAUCellMode = "normal",
        spatial_size: tuple[int, int] | None = None,
        bias: bool = True,
        device: Device = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.in_channels = check_positive_int("in_channels", in_channels)
        self.hidden_channels = check_positive_int("hidden_channels", hidden_channels)
        if self.in_channels != self.hidden_channels:
            raise ValueError(
                "MAUCell needs in_channels == hidden_channels (its attention compares past "
                "inputs with a query of hidden width, and S' mixes both); got "
                f"in_channels={in_channels}, hidden_channels={hidden_channels}"
            )
        self.kernel_size = check_kernel_size("kernel_size", kernel_size)
        self.tau = check_positive_int("tau", tau)
        self.cell_mode: MAUCellMode = check_choice("cell_mode", cell_mode, ("normal", "residual"))
        self.spatial_size = check_spatial_size(spatial_size)
        bias = check_bool("bias", bias)
        nh = self.hidden_channels
        k = self.kernel_size
        opts: dict[str, Any] = {
            "bias": bias,
            "norm": "layer",
            "spatial_size": self.spatial_size,
            **factory_kwargs(device, dtype),
        }
        self.conv_t = GateConv(nh, 3 * nh, k, **opts)
        self.conv_t_next = GateConv(nh, nh, k, **opts)
        self.conv_s = GateConv(nh, 3 * nh, k, **opts)
        self.conv_s_next = GateConv(nh, nh, k, **opts)

    def reset_parameters(self) -> None:
        """Convolutions as ``nn.Conv2d``, norms weight 1 / bias 0."""
        reset_module_parameters(self)

    def initial_state(self, x: Tensor) -> MAUState:
        """Zero state for ``x: (B, C, H, W)``: T and both windows zero (device/dtype of ``x``)."""
        t = zeros_like_map(x, self.hidden_channels)
        b, _, h, w = x.shape
        window = x.new_zeros((b, self.tau, self.hidden_channels, h, w))
        return MAUState(t, window, window)

    def _check_size(self, x: Tensor) -> None:
        if self.spatial_size is not None and tuple(x.shape[-2:]) != self.spatial_size:
            raise ValueError(
                f"this cell has per-element layer-norm parameters for spatial_size="
                f"{self.spatial_size}; got a map of size {tuple(x.shape[-2:])} "
                "(build the cell with spatial_size=None to accept any resolution)"
            )

    def attend(self, s: Tensor, t_history: Tensor, s_history: Tensor) -> Tensor:
        """The attention of one step: ``T_trend = Σ_j softmax_j(<S_j, q> / sqrt(CHW)) T_j``.

        Args:
            s: the current spatial input ``(B, C, H, W)``.
            t_history: past T outputs ``(B, tau, C, H, W)``.
            s_history: past S inputs ``(B, tau, C, H, W)``.

        Returns:
            ``T_trend (B, C, H, W)``.
        """
        q = self.conv_s_next(s)
        b, tau = s_history.shape[:2]
        n = q.shape[1] * q.shape[2] * q.shape[3]
        keys = s_history.reshape(b, tau, n)
        scores = torch.bmm(keys, q.reshape(b, n, 1).to(keys.dtype)).squeeze(2) / math.sqrt(n)
        alpha = torch.softmax(scores, dim=1)
        values = t_history.reshape(b, tau, n)
        trend = torch.bmm(alpha.unsqueeze(1).to(values.dtype), values)
        return trend.reshape(q.shape)

    def step(
        self, t: Tensor, s: Tensor, t_history: Tensor, s_history: Tensor
    ) -> tuple[Tensor, Tensor]:
        """The reference cell's call ``(T, S, windows) -> (T', S')``, without state bookkeeping.

        Args:
            t: temporal state ``(B, C, H, W)``.
            s: spatial input ``(B, C, H, W)``.
            t_history: past T outputs ``(B, tau, C, H, W)`` (any order: the attention is
                invariant to the order of the slots).
            s_history: past S inputs ``(B, tau, C, H, W)``, in the same order.

        Returns:
            ``(T', S')``, each ``(B, C, H, W)``.
        """
        nh = self.hidden_channels
        trend = self.attend(s, t_history, s_history)
        u = torch.sigmoid(self.conv_t_next(t))
        t_fus = t * u + (1 - u) * trend
        t_g, t_t, t_s = split_gates(self.conv_t(t_fus), nh)
        s_g, s_t, s_s = split_gates(self.conv_s(s), nh)
        gate_t = torch.sigmoid(t_g)
        gate_s = torch.sigmoid(s_g)
        t_new = gate_t * t_t + (1 - gate_t) * s_t
        s_new = gate_s * s_s + (1 - gate_s) * t_s
        if self.cell_mode == "residual":
            s_new = s_new + s
        return t_new, s_new

    def forward(self, x: Tensor, state: MAUState | None = None) -> tuple[Tensor, MAUState]:
        """One step: ``x: (B, C, H, W)`` the spatial input, ``state`` or ``None`` (zeros).

        Returns ``(S', MAUState(T', windows with T' and x appended))``.
        """
        check_map("x", x, self.in_channels)
        self._check_size(x)
        if state is None:
            state = self.initial_state(x)
        else:
            state = check_state("state", state, MAUState)
            check_state_map("state.t_state", state.t_state, x, self.hidden_channels)
            _check_window("state.t_history", state.t_history, x, self.tau, self.hidden_channels)
            _check_window("state.s_history", state.s_history, x, self.tau, self.hidden_channels)
        t_new, s_new = self.step(state.t_state, x, state.t_history, state.s_history)
        new_state = MAUState(t_new, _push(state.t_history, t_new), _push(state.s_history, x))
        return s_new, new_state

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.hidden_channels}, kernel_size={self.kernel_size}, "
            f"tau={self.tau}, cell_mode={self.cell_mode!r}, spatial_size={self.spatial_size}, "
            f"bias={self.conv_t.conv.bias is not None}"
        )
