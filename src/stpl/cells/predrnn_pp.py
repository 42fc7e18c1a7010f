"""PredRNN++ (ICML 2018): the causal LSTM and the gradient highway unit."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn

from stpl._validation import check_bool, check_real
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

__all__ = ["CausalLSTMCell", "GradientHighwayUnit", "HighwayState"]


class CausalLSTMCell(nn.Module):
    r"""One step of PredRNN++'s causal LSTM: the memories ``c`` and ``m`` in cascade.

    Computes, as OpenSTL's ``CausalLSTMCell`` (``N`` = layer norm over a convolution's whole
    output with ``norm="layer"``, identity otherwise; ``b`` = ``forget_bias``)::

        [i_x, f_x, g_x, i'_x, f'_x, g'_x, o_x] = chunks(N(W_x * x))      # conv_x:  C_in -> 7 nh
        [i_h, f_h, g_h, o_h] = chunks(N(W_h * h))                         # conv_h:  nh -> 4 nh
        [i_c, f_c, g_c]      = chunks(N(W_c * c))                         # conv_c:  nh -> 3 nh
        [i_m, f_m, m_m]      = chunks(N(W_m * m))                         # conv_m:  nh -> 3 nh
        c' = σ(f_x + f_h + f_c + b) ⊙ c + σ(i_x + i_h + i_c) ⊙ tanh(g_x + g_h + g_c)
        [i_c', g_c', f_c', o_c'] = chunks(N(W_c2m * c'))                  # conv_c2m: nh -> 4 nh
        m' = σ(f'_x + f_m + f_c' + b) ⊙ tanh(m_m) + σ(i'_x + i_m + i_c') ⊙ tanh(g'_x + g_c')
        o  = tanh(o_x + o_h + o_c' + N(W_om * m'))                        # conv_om: nh -> nh
        h' = o ⊙ tanh(W_1x1 * [c', m'])                                   # conv_last: 1 x 1

    Note the gate order ``(i, g, f, o)`` of ``conv_c2m``, the ``tanh`` (not ``σ``) output
    gate and ``tanh(m_m)`` in place of ``m`` in the memory update: all as in the reference
    code. ``m`` is the spatiotemporal memory that a stack passes zigzag
    (``zigzag_memory = True``), as PredRNN's.

    Paper: Y. Wang, Z. Gao, M. Long, J. Wang, P. S. Yu, *PredRNN++: Towards A Resolution of
    the Deep-in-Time Dilemma in Spatiotemporal Predictive Learning*, ICML 2018.

    Differences from the paper: the paper's convolutions have biases and its forget gates
    no constant; the code (and this cell) has ``forget_bias`` = 1.0 and bias-free
    convolutions. Differences from OpenSTL: OpenSTL creates a convolution ``conv_o``
    (``2 nh -> nh``, k x k) that its forward never uses; it is left out unless
    ``reference_compatible=True`` (then it exists, unused, so that OpenSTL state dicts load
    as they are and parameter counts equal OpenSTL's). Outputs are the same either way.

    Args:
        in_channels: C_in of ``x``.
        hidden_channels: nh, channels of ``h``, ``c`` and ``m``.
        kernel_size: odd size of the gate convolutions.
        bias: biases on every convolution (the reference has none).
        norm: ``None`` or ``"layer"``.
        spatial_size: ``(H, W)`` for per-element layer-norm parameters (reference layout).
        forget_bias: constant added to both forget gates (1.0 in the reference code).
        reference_compatible: also create OpenSTL's unused ``conv_o``.
        device, dtype: where and in which dtype to create the parameters (``torch.nn`` style).

    Shapes: ``x: (B, C_in, H, W)``, states ``(B, nh, H, W)``; returns ``h'`` and
    ``STLSTMState(h', c', m')``.
    """

    zigzag_memory = True
    """A stack passes ``m`` zigzag between layers (see :class:`stpl.EncoderStackDecoder`)."""

    state_type = STLSTMState
    """The state this cell carries: ``(h, c, m)``, as the ST-LSTM's."""

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
        reference_compatible: bool = False,
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
        self.reference_compatible = check_bool("reference_compatible", reference_compatible)
        bias = check_bool("bias", bias)
        nh, k = self.hidden_channels, self.kernel_size
        factory = factory_kwargs(device, dtype)

        def gate_conv(c_in: int, c_out: int) -> GateConv:
            return GateConv(
                c_in, c_out, k, bias=bias, norm=self.norm, spatial_size=self.spatial_size, **factory
            )

        self.conv_x = gate_conv(self.in_channels, 7 * nh)
        self.conv_h = gate_conv(nh, 4 * nh)
        self.conv_c = gate_conv(nh, 3 * nh)
        self.conv_m = gate_conv(nh, 3 * nh)
        self.conv_o: GateConv | None = gate_conv(2 * nh, nh) if self.reference_compatible else None
        self.conv_c2m = gate_conv(nh, 4 * nh)
        self.conv_om = gate_conv(nh, nh)
        self.conv_last = nn.Conv2d(2 * nh, nh, 1, bias=bias, **factory)

    def reset_parameters(self) -> None:
        """Convolutions as ``nn.Conv2d``, norms weight 1 / bias 0."""
        reset_module_parameters(self)

    def initial_state(self, x: Tensor) -> STLSTMState:
        """Zero state for input ``x: (B, C_in, H, W)`` (device, dtype and layout of ``x``)."""
        z = zeros_like_map(x, self.hidden_channels)
        return STLSTMState(z, z, z)

    def forward(self, x: Tensor, state: STLSTMState | None = None) -> tuple[Tensor, STLSTMState]:
        """One step: ``x: (B, C_in, H, W)``, ``state`` or ``None`` (zeros).

        Returns ``(h', STLSTMState(h', c', m'))``, each ``(B, nh, H, W)``.
        """
        check_map("x", x, self.in_channels)
        state = self.initial_state(x) if state is None else check_state("state", state, STLSTMState)
        nh = self.hidden_channels
        h = check_state_map("state.h", state[0], x, nh)
        c = check_state_map("state.c", state[1], x, nh)
        m = check_state_map("state.m", state[2], x, nh)

        i_x, f_x, g_x, i_xm, f_xm, g_xm, o_x = split_gates(self.conv_x(x), nh)
        i_h, f_h, g_h, o_h = split_gates(self.conv_h(h), nh)
        i_c, f_c, g_c = split_gates(self.conv_c(c), nh)
        i_m, f_m, m_m = split_gates(self.conv_m(m), nh)

        c_next = torch.sigmoid(f_x + f_h + f_c + self.forget_bias) * c + torch.sigmoid(
            i_x + i_h + i_c
        ) * torch.tanh(g_x + g_h + g_c)
        i_cm, g_cm, f_cm, o_cm = split_gates(self.conv_c2m(c_next), nh)
        m_next = torch.sigmoid(f_xm + f_m + f_cm + self.forget_bias) * torch.tanh(
            m_m
        ) + torch.sigmoid(i_xm + i_m + i_cm) * torch.tanh(g_xm + g_cm)
        o = torch.tanh(o_x + o_h + o_cm + self.conv_om(m_next))
        h_next = o * torch.tanh(self.conv_last(torch.cat((c_next, m_next), dim=1)))
        return h_next, STLSTMState(h_next, c_next, m_next)

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.hidden_channels}, kernel_size={self.kernel_size}, "
            f"norm={self.norm!r}, forget_bias={self.forget_bias}, "
            f"bias={self.conv_x.conv.bias is not None}, spatial_size={self.spatial_size}, "
            f"reference_compatible={self.reference_compatible}"
        )


class HighwayState(NamedTuple):
    """State of a :class:`GradientHighwayUnit`.

    Attributes:
        z: the highway state, ``(B, C_hidden, H, W)``.
    """

    z: Tensor


class GradientHighwayUnit(nn.Module):
    r"""PredRNN++'s gradient highway unit (GHU): a gated shortcut across time.

    Computes, as OpenSTL's ``GHU`` (``N`` = layer norm with ``norm="layer"``)::

        [p, u] = chunks(N(W_x * x) + N(W_z * z))   # x_concat: C_in -> 2 nh, z_concat: nh -> 2 nh
        z' = σ(u) ⊙ tanh(p) + (1 - σ(u)) ⊙ z

    The convolution weights start uniform in ``[-init_range, init_range]`` (0.001, as the
    reference and the paper's code).

    Paper: Wang et al., *PredRNN++*, ICML 2018 (section 3.2). In the PredRNN++ model the
    unit sits between the first two causal LSTM layers: ``z_t = GHU(h^0_t, z_{t-1})`` is
    the input of layer 1 (:class:`stpl.models.PredRNNPlusPlus`).

    Differences from OpenSTL: with ``layer_norm=1`` OpenSTL's GHU cannot run (its
    ``LayerNorm([nh, H, W])`` receives the ``2 nh`` channels of the convolution and raises);
    here ``norm="layer"`` normalises the whole ``2 nh`` output of each convolution, as every
    other gate convolution of the library and as the paper's TensorFlow code does. Without
    layer norm the outputs are the reference's. The reference's ``z_concat`` takes
    ``in_channel`` inputs (so it only works when ``in_channel == num_hidden``); here it takes
    ``hidden_channels``, which is the same thing where the reference works.

    Args:
        in_channels: C_in of ``x``.
        hidden_channels: nh, channels of ``z``.
        kernel_size: odd size of the two convolutions.
        bias: biases on the convolutions (the reference has none; initialised to 0).
        norm: ``None`` or ``"layer"``.
        spatial_size: ``(H, W)`` for per-element layer-norm parameters.
        init_range: half-width of the uniform initialisation of the convolution weights, or
            ``None`` for ``nn.Conv2d``'s default.
        device, dtype: where and in which dtype to create the parameters.

    Shapes: ``x: (B, C_in, H, W)``, ``z: (B, nh, H, W)``; returns ``z'`` and
    ``HighwayState(z')``.
    """

    state_type = HighwayState
    """The state this unit carries."""

    def __init__(
        self,
        in_channels: int,
        hidden_channels: int,
        kernel_size: int = 5,
        *,
        bias: bool = False,
        norm: Norm = None,
        spatial_size: tuple[int, int] | None = None,
        init_range: float | None = 0.001,
        device: Device = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.in_channels = check_positive_int("in_channels", in_channels)
        self.hidden_channels = check_positive_int("hidden_channels", hidden_channels)
        self.kernel_size = check_kernel_size("kernel_size", kernel_size)
        self.norm = check_norm(norm)
        self.spatial_size = check_spatial_size(spatial_size)
        self.init_range = (
            None if init_range is None else check_real("init_range", init_range, low=0.0)
        )
        bias = check_bool("bias", bias)
        nh = self.hidden_channels
        factory = factory_kwargs(device, dtype)
        options = {"bias": bias, "norm": self.norm, "spatial_size": self.spatial_size, **factory}
        self.z_concat = GateConv(nh, 2 * nh, self.kernel_size, **options)
        self.x_concat = GateConv(self.in_channels, 2 * nh, self.kernel_size, **options)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Convolution weights uniform in ``±init_range`` (biases 0), norms weight 1 / bias 0."""
        reset_module_parameters(self)
        if self.init_range is None:
            return
        with torch.no_grad():
            for gate in (self.z_concat, self.x_concat):
                nn.init.uniform_(gate.conv.weight, -self.init_range, self.init_range)
                if gate.conv.bias is not None:
                    nn.init.zeros_(gate.conv.bias)

    def initial_state(self, x: Tensor) -> HighwayState:
        """Zero state for input ``x: (B, C_in, H, W)`` (device, dtype and layout of ``x``)."""
        return HighwayState(zeros_like_map(x, self.hidden_channels))

    def forward(self, x: Tensor, state: HighwayState | None = None) -> tuple[Tensor, HighwayState]:
        """One step: ``x: (B, C_in, H, W)``, ``state`` or ``None`` (zeros).

        Returns ``(z', HighwayState(z'))``, ``z': (B, nh, H, W)``.
        """
        check_map("x", x, self.in_channels)
        if state is None:
            state = self.initial_state(x)
        state = check_state("state", state, HighwayState)
        z = check_state_map("state.z", state[0], x, self.hidden_channels)
        p, u = split_gates(self.x_concat(x) + self.z_concat(z), self.hidden_channels)
        u = torch.sigmoid(u)
        z_next = u * torch.tanh(p) + (1 - u) * z
        return z_next, HighwayState(z_next)

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.hidden_channels}, kernel_size={self.kernel_size}, "
            f"norm={self.norm!r}, init_range={self.init_range}, "
            f"bias={self.x_concat.conv.bias is not None}, spatial_size={self.spatial_size}"
        )
