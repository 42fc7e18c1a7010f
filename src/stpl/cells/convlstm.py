"""ConvLSTM (Shi et al., NeurIPS 2015) with the options of every circulating variant."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from stpl._validation import check_real
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

__all__ = [
    "ConvLSTMCell",
]

_GATES = "ifgo"


def _check_gate_order(gate_order: object) -> str:
    if not isinstance(gate_order, str) or sorted(gate_order) != sorted(_GATES):
        raise ValueError(
            f"gate_order must be a permutation of 'ifgo' (e.g. 'ifgo', 'ifog'); got {gate_order!r}"
        )
    return gate_order


class ConvLSTMCell(nn.Module):
    r"""One step of a convolutional LSTM.

    Computes, with :math:`*` a "same" convolution and :math:`\odot` the Hadamard product::

        [i, f, g, o] = chunks(N_x(W_x * x) + N_h(W_h * h), in gate_order)
        i  = σ(i + w_ci ⊙ c)                 # peephole terms only with peephole=True
        f  = σ(f + forget_bias + w_cf ⊙ c)
        c' = f ⊙ c + i ⊙ tanh(g)
        o  = σ(o + w_co ⊙ c')
        h' = o ⊙ tanh(c')

    ``N_x``/``N_h`` are layer norms over ``(4 C_hidden, H, W)`` with ``norm="layer"``,
    identities otherwise. ``bias=True`` gives ``W_x`` a bias (one bias per gate channel).

    Settings that reproduce each reference:

    * OpenSTL ``ConvLSTMCell``: defaults (``gate_order="ifgo"``, ``bias=False``,
      ``forget_bias=0.0``), ``norm="layer"`` with ``spatial_size=(H, W)`` for ``layer_norm=1``.
    * ndrplz/ConvLSTM_pytorch and MSPred: ``gate_order="ifog"``, ``bias=True``; their one
      convolution on ``cat[x, h]`` is split into ``W_x`` and ``W_h`` along input channels.
    * Shi et al. 2015: ``peephole=True`` (Hadamard peepholes, per channel, or per element
      with ``spatial_size``), ``bias=True``.

    Differences from the paper: the paper has peepholes and biases; the common reference
    code has neither and no forget bias, which is why they are options here.

    Args:
        in_channels: C_in of ``x``.
        hidden_channels: C_hidden of ``h`` and ``c``.
        kernel_size: odd size of the gate convolutions.
        bias: bias on the input convolution.
        norm: ``None`` or ``"layer"``.
        spatial_size: ``(H, W)`` for per-element layer-norm/peephole parameters.
        forget_bias: constant added to the forget-gate pre-activation.
        gate_order: order of the four chunks of the convolution output.
        peephole: Shi et al.'s Hadamard peephole connections (initialised to 0).
        fused: compute ``W_x * x + W_h * h`` as one convolution of ``cat[x, h]`` with
            ``cat[W_x, W_h]`` (norm must be None): the summation order of ndrplz's,
            MSPred's and PhyDNet's cells, which it then reproduces bit for bit. The
            parameters (and the state dict) are the same either way.
        device, dtype: where and in which dtype to create the parameters (``torch.nn`` style).

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
        forget_bias: float = 0.0,
        gate_order: str = "ifgo",
        peephole: bool = False,
        fused: bool = False,
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
        self.gate_order = _check_gate_order(gate_order)
        self.peephole = bool(peephole)
        self.fused = bool(fused)
        if self.fused and self.norm is not None:
            raise ValueError("fused=True computes one convolution of cat[x, h]: it needs norm=None")
        self._index = tuple(self.gate_order.index(g) for g in _GATES)
        nh = hidden_channels
        factory = factory_kwargs(device, dtype)
        ln: dict[str, Any] = {"norm": self.norm, "spatial_size": self.spatial_size, **factory}
        self.conv_x = GateConv(in_channels, 4 * nh, kernel_size, bias=bias, **ln)
        self.conv_h = GateConv(nh, 4 * nh, kernel_size, **ln)
        self.peephole_weight: nn.Parameter | None = None
        if self.peephole:
            shape = (3, nh, *self.spatial_size) if self.spatial_size else (3, nh, 1, 1)
            self.peephole_weight = nn.Parameter(torch.zeros(shape, **factory))

    state_type = LSTMState
    """The state this cell carries."""

    def reset_parameters(self) -> None:
        """Convolutions as ``nn.Conv2d``, norms weight 1 / bias 0, peepholes 0."""
        reset_module_parameters(self)
        if self.peephole_weight is not None:
            nn.init.zeros_(self.peephole_weight)

    def initial_state(self, x: Tensor) -> LSTMState:
        """Zero state for input ``x: (B, C_in, H, W)`` (device, dtype and layout of ``x``)."""
        z = zeros_like_map(x, self.hidden_channels)
        return LSTMState(z, z)

    def forward(self, x: Tensor, state: LSTMState | None = None) -> tuple[Tensor, LSTMState]:
        """One step: ``x: (B, C_in, H, W)``, ``state`` or ``None`` (zeros).

        Returns ``(h', LSTMState(h', c'))``, each ``(B, C_hidden, H, W)``.
        """
        check_map("x", x, self.in_channels)
        if (
            self.peephole
            and self.spatial_size is not None
            and tuple(x.shape[-2:]) != self.spatial_size
        ):
            raise ValueError(
                f"this cell has per-element peephole weights for spatial_size="
                f"{self.spatial_size}; got a map of size {tuple(x.shape[-2:])} "
                "(build the cell with spatial_size=None to accept any resolution)"
            )
        state = self.initial_state(x) if state is None else check_state("state", state, LSTMState)
        h = check_state_map("state.h", state[0], x, self.hidden_channels)
        c = check_state_map("state.c", state[1], x, self.hidden_channels)
        if self.fused:
            weight, bias = self._fused_cached()
            return self.forward_fused(x, LSTMState(h, c), weight, bias)
        return self._update(self.conv_x(x) + self.conv_h(h), c)

    def fused_parameters(self) -> tuple[Tensor, Tensor | None]:
        """``(cat[W_x, W_h], b)``: the gate convolutions as one convolution of ``cat[x, h]``.

        Only for cells without layer norm (the norms act on each convolution's output).
        A stack can concatenate once per call and pass the result to :meth:`forward_fused`
        at every step.
        """
        if self.norm is not None:
            raise ValueError("fused_parameters needs a cell without layer norm (norm=None)")
        wx, wh = self.conv_x.conv, self.conv_h.conv
        return torch.cat([wx.weight, wh.weight], dim=1), wx.bias

    def _fused_cached(self) -> tuple[Tensor, Tensor | None]:
        """:meth:`fused_parameters`, concatenated again only when a weight changed.

        Eager loops call the cell at every step with the same weights: the concatenation
        is kept until a weight is updated in place (its version counter moves), replaced, or
        the grad mode changes. Inside a compiled graph it is just part of the graph.
        """
        if torch.compiler.is_compiling():
            return self.fused_parameters()
        wx, wh = self.conv_x.conv.weight, self.conv_h.conv.weight
        key = (wx._version, wh._version, wx.data_ptr(), wh.data_ptr(), torch.is_grad_enabled())
        cached = self.__dict__.get("_fused_cache")
        if cached is None or cached[0] != key:
            cached = (key, self.fused_parameters())
            self.__dict__["_fused_cache"] = cached
        return cached[1]

    def forward_fused(
        self, x: Tensor, state: LSTMState, weight: Tensor, bias: Tensor | None
    ) -> tuple[Tensor, LSTMState]:
        """One step with the gate pre-activations as one convolution of ``cat[x, h]``.

        ``weight, bias`` from :meth:`fused_parameters`. This is the summation order of
        ndrplz's, MSPred's and PhyDNet's cells (one convolution over ``C_in + C_hidden``
        input channels), so their outputs are reproduced bit for bit; the split form of
        :meth:`forward` differs from it by float round-off. No input checks (hot path).
        """
        h, c = state[0], state[1]
        pre = F.conv2d(torch.cat([x, h], dim=1), weight, bias, padding=self.kernel_size // 2)
        return self._update(pre, c)

    def _update(self, pre: Tensor, c: Tensor) -> tuple[Tensor, LSTMState]:
        """The gates from the pre-activations ``pre: (B, 4 C_hidden, H, W)`` and ``c``."""
        chunks = split_gates(pre, self.hidden_channels)
        i, f, g, o = (chunks[k] for k in self._index)
        if self.peephole_weight is not None:
            w_ci, w_cf = self.peephole_weight[0], self.peephole_weight[1]
            i = i + w_ci * c
            f = f + w_cf * c
        if self.forget_bias != 0.0:
            f = f + self.forget_bias
        c_next = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        if self.peephole_weight is not None:
            o = o + self.peephole_weight[2] * c_next
        h_next = torch.sigmoid(o) * torch.tanh(c_next)
        return h_next, LSTMState(h_next, c_next)

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.hidden_channels}, kernel_size={self.kernel_size}, "
            f"norm={self.norm!r}, forget_bias={self.forget_bias}, gate_order={self.gate_order!r}, "
            f"peephole={self.peephole}, bias={self.conv_x.conv.bias is not None}, "
            f"spatial_size={self.spatial_size}, fused={self.fused}"
        )
