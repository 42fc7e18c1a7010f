"""Spatiotemporal LSTM of PredRNN (NeurIPS 2017) and PredRNN-V2 (TPAMI 2022)."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn

from stpl._validation import check_real
from stpl.cells._state import STLSTMState
from stpl.cells._toolkit import (
    Device,
    GateConv,
    Norm,
    check_kernel_size,
    check_map,
    check_norm,
    check_positive_int,
    check_spatial_size,
    check_state,
    check_state_map,
    factory_kwargs,
    reset_module_parameters,
    split_gates,
    zeros_like_map,
)

__all__ = [
    "STLSTMCell",
    "STLSTMOutput",
]


class STLSTMOutput(NamedTuple):
    """What :meth:`STLSTMCell.forward_with_increments` returns.

    Attributes:
        h: new hidden state ``(B, C_hidden, H, W)``.
        state: ``STLSTMState(h, c, m)`` after the step.
        delta_c: ``i ⊙ g``, the increment of ``c`` (PredRNN-V2), ``(B, C_hidden, H, W)``.
        delta_m: ``i' ⊙ g'``, the increment of ``m``, ``(B, C_hidden, H, W)``.
    """

    h: Tensor
    state: STLSTMState
    delta_c: Tensor
    delta_m: Tensor


class STLSTMCell(nn.Module):
    r"""One step of PredRNN's spatiotemporal LSTM (ST-LSTM), with PredRNN-V2's outputs.

    Computes, exactly as thuml/predrnn-pytorch and OpenSTL (``N`` = layer norm over each
    convolution's whole output with ``norm="layer"``, identity otherwise; b = forget_bias)::

        [i_x, f_x, g_x, i'_x, f'_x, g'_x, o_x] = chunks(N(W_x * x))
        [i_h, f_h, g_h, o_h] = chunks(N(W_h * h))          # ⊙ N(W_a * a) with an action
        [i_m, f_m, g_m]      = chunks(N(W_m * m))
        i  = σ(i_x + i_h);   f  = σ(f_x + f_h + b);   g  = tanh(g_x + g_h)
        c' = f ⊙ c + i ⊙ g                          # Δc = i ⊙ g
        i' = σ(i'_x + i_m);  f' = σ(f'_x + f_m + b);  g' = tanh(g'_x + g_m)
        m' = f' ⊙ m + i' ⊙ g'                       # Δm = i' ⊙ g'
        o  = σ(o_x + o_h + N(W_o * [c', m']))
        h' = o ⊙ tanh(W_1x1 * [c', m'])

    Action conditioning (PredRNN-V2 on BAIR): with ``action_channels`` set, a convolution
    of the action map ``a: (B, C_a, H, W)`` multiplies the hidden-state pre-activations.
    The reference action cells use biased convolutions: pass ``bias=True`` to match.

    Differences from the papers: the code (and so this cell) adds ``forget_bias`` = 1.0 to
    both forget gates, normalises each convolution's output jointly across its gates, and
    applies a 1x1 convolution to ``[c', m']`` before the final tanh.

    Args:
        in_channels: C_in of ``x``.
        hidden_channels: C_hidden of ``h``, ``c`` and ``m``.
        kernel_size: odd size of the gate convolutions.
        bias: biases on every convolution (the reference action cells have them).
        norm: ``None`` or ``"layer"``.
        spatial_size: ``(H, W)`` for per-element layer-norm parameters (reference layout).
        forget_bias: constant added to both forget gates (1.0 in the reference code).
        action_channels: channels of the action map, or ``None`` for no action input.
        device, dtype: where and in which dtype to create the parameters (``torch.nn`` style).
    """

    zigzag_memory = True
    """A stack passes ``m`` zigzag between layers (see :class:`stpl.EncoderStackDecoder`)."""

    def __init__(
        self,
        in_channels: int,
        hidden_channels: int,
        kernel_size: int = 5,
        *,
        bias: bool = False,
        norm: Norm = None,
        spatial_size: tuple[int, int] | None = None,
        forget_bias: float = 1.0,
        action_channels: int | None = None,
        device: Device = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.in_channels = check_positive_int("in_channels", in_channels)
        self.hidden_channels = check_positive_int("hidden_channels", hidden_channels)
        self.kernel_size = check_kernel_size("kernel_size", kernel_size)
        self.norm = check_norm(norm)
        self.spatial_size = check_spatial_size(spatial_size)
        self.forget_bias = check_real("forget_bias", forget_bias)
        self.action_channels = (
            None
            if action_channels is None
            else check_positive_int("action_channels", action_channels)
        )
        nh, k = self.hidden_channels, self.kernel_size
        factory = factory_kwargs(device, dtype)

        def gate_conv(c_in: int, c_out: int) -> GateConv:
            return GateConv(
                c_in, c_out, k, bias=bias, norm=self.norm, spatial_size=self.spatial_size, **factory
            )

        self.conv_x = gate_conv(in_channels, 7 * nh)
        self.conv_h = gate_conv(nh, 4 * nh)
        self.conv_m = gate_conv(nh, 3 * nh)
        self.conv_o = gate_conv(2 * nh, nh)
        self.conv_last = nn.Conv2d(2 * nh, nh, 1, bias=bias, **factory)
        self.conv_a: GateConv | None = None
        if self.action_channels is not None:
            self.conv_a = gate_conv(self.action_channels, 4 * nh)

    state_type = STLSTMState
    """The state this cell carries."""

    def reset_parameters(self) -> None:
        """Convolutions as ``nn.Conv2d``, norms weight 1 / bias 0."""
        reset_module_parameters(self)

    def initial_state(self, x: Tensor) -> STLSTMState:
        """Zero state for input ``x: (B, C_in, H, W)`` (device, dtype and layout of ``x``)."""
        z = zeros_like_map(x, self.hidden_channels)
        return STLSTMState(z, z, z)

    def forward_with_increments(
        self, x: Tensor, state: STLSTMState | None = None, action: Tensor | None = None
    ) -> STLSTMOutput:
        """One step that also returns PredRNN-V2's memory increments ``Δc``, ``Δm``.

        Args:
            x: ``(B, C_in, H, W)``.
            state: ``STLSTMState(h, c, m)`` or ``None`` (zeros).
            action: ``(B, C_a, H, W)``, required iff the cell has ``action_channels``.
        """
        check_map("x", x, self.in_channels)
        state = self.initial_state(x) if state is None else check_state("state", state, STLSTMState)
        nh = self.hidden_channels
        h = check_state_map("state.h", state[0], x, nh)
        c = check_state_map("state.c", state[1], x, nh)
        m = check_state_map("state.m", state[2], x, nh)

        i_x, f_x, g_x, i_xm, f_xm, g_xm, o_x = split_gates(self.conv_x(x), nh)
        hidden = self.conv_h(h)
        if self.conv_a is not None:
            if action is None:
                raise ValueError(
                    f"this cell was built with action_channels={self.action_channels}: "
                    "pass action=(B, C_a, H, W)"
                )
            check_state_map("action", action, x, self.conv_a.conv.in_channels)
            hidden = hidden * self.conv_a(action)
        elif action is not None:
            raise ValueError("action was given, but this cell was built with action_channels=None")
        i_h, f_h, g_h, o_h = split_gates(hidden, nh)
        i_m, f_m, g_m = split_gates(self.conv_m(m), nh)

        delta_c = torch.sigmoid(i_x + i_h) * torch.tanh(g_x + g_h)
        c_next = torch.sigmoid(f_x + f_h + self.forget_bias) * c + delta_c
        delta_m = torch.sigmoid(i_xm + i_m) * torch.tanh(g_xm + g_m)
        m_next = torch.sigmoid(f_xm + f_m + self.forget_bias) * m + delta_m

        mem = torch.cat((c_next, m_next), dim=1)
        o = torch.sigmoid(o_x + o_h + self.conv_o(mem))
        h_next = o * torch.tanh(self.conv_last(mem))
        return STLSTMOutput(h_next, STLSTMState(h_next, c_next, m_next), delta_c, delta_m)

    def forward(
        self, x: Tensor, state: STLSTMState | None = None, action: Tensor | None = None
    ) -> tuple[Tensor, STLSTMState]:
        """One step: ``x: (B, C_in, H, W)`` -> ``(h', STLSTMState(h', c', m'))``."""
        out = self.forward_with_increments(x, state, action)
        return out.h, out.state

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.hidden_channels}, kernel_size={self.kernel_size}, "
            f"norm={self.norm!r}, forget_bias={self.forget_bias}, "
            f"action_channels={self.action_channels}, bias={self.conv_x.conv.bias is not None}, "
            f"spatial_size={self.spatial_size}"
        )
