"""Memory In Memory (MIM, Wang et al., CVPR 2019): the MIM block and its MIM-N module."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn

from stpl._validation import check_bool, check_real
from stpl.cells._state import LSTMState
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
from stpl.cells.convlstm import ConvLSTMCell

__all__ = ["MIMN", "MIMBlock", "MIMBlockState"]


class MIMBlockState(NamedTuple):
    """State of a :class:`MIMBlock`.

    Attributes:
        h: hidden state, ``(B, C_hidden, H, W)``.
        c: temporal cell state, ``(B, C_hidden, H, W)``.
        m: spatiotemporal memory, ``(B, C_hidden, H, W)``; a stack passes it zigzag.
        s: cell state of the stationary module MIM-S (OpenSTL's ``convlstm_c``),
            ``(B, C_hidden, H, W)``.
    """

    h: Tensor
    c: Tensor
    m: Tensor
    s: Tensor


class MIMN(ConvLSTMCell):
    r"""MIM's convolutional LSTM with Hadamard peepholes (OpenSTL's ``MIMN``).

    The same equations serve two roles in MIM: the non-stationary module MIM-N between
    layers (reads differences of hidden states) and, inside :class:`MIMBlock`, the
    stationary module MIM-S. Computes, exactly as OpenSTL's ``MIMN`` and
    ``MIMBlock.MIMS`` (``N`` = layer norm with ``norm="layer"``, b = forget_bias)::

        [i, g, f, o] = chunks(N(W_x * x) + N(W_h * h))     # gate order i, g, f, o
        c' = σ(f + w_cf ⊙ c + b) ⊙ c + σ(i + w_ci ⊙ c) ⊙ tanh(g)
        h' = σ(o + w_co ⊙ c') ⊙ tanh(c')

    This is :class:`ConvLSTMCell` with ``peephole=True``, ``forget_bias=1.0`` and
    ``gate_order="igfo"`` (the same parameters; the sums run in the reference's order). The
    peephole weights ``w_ci, w_cf, w_co`` (initialised to 0) are ``peephole_weight[0..2]``,
    per channel, or per element with ``spatial_size=(H, W)`` as OpenSTL's
    ``ct_weight (2C, H, W)`` (``[w_ci; w_cf]``) and ``oc_weight (C, H, W)``.

    Differences from the reference: OpenSTL's ``MIMN`` also creates a 1x1 ``conv_last``
    (``2C -> C``) that its ``forward`` never uses; it is not created here (dead weights,
    dropped on loading). Its ``conv_h_concat`` is declared with ``in_channels`` inputs but
    applied to ``h`` (``C_hidden`` channels), so the reference works only with
    ``in_channels == hidden_channels``; here each convolution is sized by what it reads.

    Args:
        in_channels: C_in of ``x``.
        hidden_channels: C_hidden of ``h`` and ``c``.
        kernel_size: odd size of the gate convolutions.
        bias: bias on the input convolution (the reference has none).
        norm: ``None`` or ``"layer"``.
        spatial_size: ``(H, W)`` for per-element layer-norm and peephole parameters.
        forget_bias: constant added to the forget gate (1.0 in the reference).
        device, dtype: where and in which dtype to create the parameters.

    Shapes: ``x: (B, C_in, H, W)``, states ``(B, C_hidden, H, W)``; returns ``h'`` and
    ``LSTMState(h', c')``.
    """

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
        device: Device = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(
            in_channels,
            hidden_channels,
            kernel_size,
            bias=bias,
            norm=norm,
            spatial_size=spatial_size,
            forget_bias=forget_bias,
            gate_order="igfo",
            peephole=True,
            device=device,
            dtype=dtype,
        )

    def forward(self, x: Tensor, state: LSTMState | None = None) -> tuple[Tensor, LSTMState]:
        """One step: ``x: (B, C_in, H, W)``, ``state`` or ``None`` (zeros).

        Returns ``(h', LSTMState(h', c'))``. The sums run in the reference's order (hidden
        term, peephole, then input term), so float32 results round as OpenSTL's do.
        """
        check_map("x", x, self.in_channels)
        if self.spatial_size is not None and tuple(x.shape[-2:]) != self.spatial_size:
            raise ValueError(
                f"this cell has per-element peephole weights for spatial_size="
                f"{self.spatial_size}; got a map of size {tuple(x.shape[-2:])} "
                "(build the cell with spatial_size=None to accept any resolution)"
            )
        state = self.initial_state(x) if state is None else check_state("state", state, LSTMState)
        nh = self.hidden_channels
        h = check_state_map("state.h", state[0], x, nh)
        c = check_state_map("state.c", state[1], x, nh)
        assert self.peephole_weight is not None
        w_ci, w_cf, w_co = self.peephole_weight.unbind(0)
        i_h, g_h, f_h, o_h = split_gates(self.conv_h(h), nh)
        i_x, g_x, f_x, o_x = split_gates(self.conv_x(x), nh)
        i = i_h + c * w_ci + i_x
        f = f_h + c * w_cf + f_x
        c_next = torch.sigmoid(f + self.forget_bias) * c + torch.sigmoid(i) * torch.tanh(g_h + g_x)
        h_next = torch.sigmoid(o_h + o_x + c_next * w_co) * torch.tanh(c_next)
        return h_next, LSTMState(h_next, c_next)

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.hidden_channels}, kernel_size={self.kernel_size}, "
            f"norm={self.norm!r}, forget_bias={self.forget_bias}, "
            f"bias={self.conv_x.conv.bias is not None}, spatial_size={self.spatial_size}"
        )


class MIMBlock(nn.Module):
    r"""One step of a MIM block (layers >= 1 of MIM), with its stationary module MIM-S.

    Computes, exactly as OpenSTL's ``MIMBlock`` (``N`` = layer norm with ``norm="layer"``,
    b = forget_bias, ``d`` the output of the MIM-N module below, ``s`` MIM-S's cell)::

        [i_x, g_x, f_x, o_x] = chunks(N(W_x * x))
        [i_h, g_h, o_h]      = chunks(N(W_h * h))           # OpenSTL conv_t_cc
        [i_m, g_m, f_m, o_m] = chunks(N(W_m * m))           # OpenSTL conv_s_cc
        m'      = σ(f_x + f_m + b) ⊙ m + σ(i_x + i_m) ⊙ tanh(g_x + g_m)
        t, s'   = MIM-S(x=d, h=c, c=s)                      # a MIMN step (see MIMN)
        c'      = t + σ(i_x + i_h) ⊙ tanh(g_x + g_h)
        h'      = σ(o_x + o_h + o_m) ⊙ tanh(W_1x1 * [c', m'])

    MIM-S is the submodule ``stationary`` (a :class:`MIMN` of ``C_hidden -> C_hidden``):
    it reads the differences ``d`` and the block's temporal cell ``c`` as its hidden
    input, and replaces the forget gate of ``c`` by a recurrent module of its own.

    Not registered in :data:`stpl.CELLS`: a MIM block reads a second input ``d`` besides
    ``x``, which the generic stack does not provide; :class:`stpl.models.MIM` wires it.

    Differences from the reference (OpenSTL ``MIMBlock``):

    * OpenSTL keeps MIM-S's cell ``s`` as a module attribute (``convlstm_c``) that is
      never reset between sequences or batches and is detached at every step. Here ``s``
      is part of the carried state (zeros at the start of a sequence, gradients flow
      through it). ``detach_stationary=True`` detaches it at every step like the
      reference; :class:`stpl.models.MIM` with ``stationary_state="persistent"`` also
      carries it from one sequence to the next.
    * The reference declares ``conv_t_cc`` with ``in_channels`` inputs but applies it to
      ``h``, and ``conv_x_cc`` with ``C_hidden`` inputs but applies it to ``x``; it works
      only with ``in_channels == hidden_channels``. Here each convolution is sized by
      what it reads (the same shapes when the two are equal).

    Args:
        in_channels: C_in of ``x`` (the hidden state of the layer below).
        hidden_channels: C_hidden of ``h``, ``c``, ``m``, ``s`` and of ``d``.
        kernel_size: odd size of the gate convolutions.
        norm: ``None`` or ``"layer"``.
        spatial_size: ``(H, W)`` for per-element layer-norm and peephole parameters.
        forget_bias: constant added to both forget gates (1.0 in the reference).
        detach_stationary: detach ``s`` at every step (the reference's gradient).
        device, dtype: where and in which dtype to create the parameters.
    """

    zigzag_memory = True
    """A stack passes ``m`` zigzag between layers (PredRNN's wiring)."""

    state_type = MIMBlockState
    """The state this cell carries."""

    def __init__(
        self,
        in_channels: int,
        hidden_channels: int,
        kernel_size: int = 5,
        *,
        norm: Norm = None,
        spatial_size: tuple[int, int] | None = None,
        forget_bias: float = 1.0,
        detach_stationary: bool = False,
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
        self.detach_stationary = check_bool("detach_stationary", detach_stationary)
        nh, k = self.hidden_channels, self.kernel_size
        factory = factory_kwargs(device, dtype)

        def gate_conv(c_in: int, c_out: int) -> GateConv:
            return GateConv(
                c_in, c_out, k, norm=self.norm, spatial_size=self.spatial_size, **factory
            )

        self.conv_x = gate_conv(self.in_channels, 4 * nh)
        self.conv_h = gate_conv(nh, 3 * nh)
        self.conv_m = gate_conv(nh, 4 * nh)
        self.conv_last = nn.Conv2d(2 * nh, nh, 1, bias=False, **factory)
        self.stationary = MIMN(
            nh,
            nh,
            k,
            norm=self.norm,
            spatial_size=self.spatial_size,
            forget_bias=self.forget_bias,
            **factory,
        )

    def reset_parameters(self) -> None:
        """Convolutions as ``nn.Conv2d``, norms weight 1 / bias 0, peepholes 0."""
        reset_module_parameters(self)

    def initial_state(self, x: Tensor) -> MIMBlockState:
        """Zero state for input ``x: (B, C_in, H, W)`` (device, dtype and layout of ``x``)."""
        z = zeros_like_map(x, self.hidden_channels)
        return MIMBlockState(z, z, z, z)

    def forward(
        self, x: Tensor, state: MIMBlockState | None = None, diff: Tensor | None = None
    ) -> tuple[Tensor, MIMBlockState]:
        """One step.

        Args:
            x: ``(B, C_in, H, W)``.
            state: ``MIMBlockState(h, c, m, s)`` or ``None`` (zeros).
            diff: ``(B, C_hidden, H, W)``, the MIM-N output ``d`` of this step, or ``None``
                for zeros (MIM's first step, when no difference exists yet).

        Returns:
            ``(h', MIMBlockState(h', c', m', s'))``.
        """
        check_map("x", x, self.in_channels)
        if state is None:
            state = self.initial_state(x)
        else:
            state = check_state("state", state, MIMBlockState)
        nh = self.hidden_channels
        h = check_state_map("state.h", state[0], x, nh)
        c = check_state_map("state.c", state[1], x, nh)
        m = check_state_map("state.m", state[2], x, nh)
        s = check_state_map("state.s", state[3], x, nh)
        d = zeros_like_map(x, nh) if diff is None else check_state_map("diff", diff, x, nh)

        i_x, g_x, f_x, o_x = split_gates(self.conv_x(x), nh)
        i_h, g_h, o_h = split_gates(self.conv_h(h), nh)
        i_m, g_m, f_m, o_m = split_gates(self.conv_m(m), nh)
        m_next = torch.sigmoid(f_x + f_m + self.forget_bias) * m + torch.sigmoid(
            i_x + i_m
        ) * torch.tanh(g_x + g_m)
        if self.detach_stationary:
            s = s.detach()
        t, stationary = self.stationary(d, LSTMState(c, s))
        c_next = t + torch.sigmoid(i_x + i_h) * torch.tanh(g_x + g_h)
        o = torch.sigmoid(o_x + o_h + o_m)
        h_next = o * torch.tanh(self.conv_last(torch.cat((c_next, m_next), dim=1)))
        return h_next, MIMBlockState(h_next, c_next, m_next, stationary.c)

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.hidden_channels}, kernel_size={self.kernel_size}, "
            f"norm={self.norm!r}, forget_bias={self.forget_bias}, "
            f"detach_stationary={self.detach_stationary}, spatial_size={self.spatial_size}"
        )
