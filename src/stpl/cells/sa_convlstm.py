"""SA-ConvLSTM (Lin et al., AAAI 2020): a ConvLSTM with a self-attention memory (SAM)."""

from __future__ import annotations

from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from stpl._validation import check_bool, check_choice, check_real
from stpl.cells._toolkit import (
    Device,
    check_kernel_size,
    check_map,
    check_positive_int,
    check_state,
    check_state_map,
    factory_kwargs,
    reset_module_parameters,
    split_gates,
    zeros_like_map,
)

__all__ = ["SAConvLSTMCell", "SAConvLSTMState", "SelfAttentionMemory", "self_attention"]

GateNorm = Literal["group"] | None
"""Normalisation of SA-ConvLSTM's gate convolution: ``"group"`` (per channel) or ``None``."""


class SAConvLSTMState(NamedTuple):
    """State of an :class:`SAConvLSTMCell`.

    Attributes:
        h: hidden state, ``(B, C_hidden, H, W)``.
        c: cell state, ``(B, C_hidden, H, W)``.
        m: self-attention memory of this layer, ``(B, C_hidden, H, W)`` (each layer keeps
            its own; it is not passed between layers).
    """

    h: Tensor
    c: Tensor
    m: Tensor


def self_attention(query: Tensor, keys: Tensor, values: Tensor) -> Tensor:
    """``softmax(Q Kᵀ) V`` over the positions, without the ``1/sqrt(d)`` scaling, fused.

    One call of :func:`torch.nn.functional.scaled_dot_product_attention` with ``scale=1``.
    Its fused kernels keep no ``N x N`` matrix in memory. On CUDA the memory-efficient
    kernel takes values wider than the keys as they are; on CPU the only fused kernel
    (flash attention) needs one head size for queries, keys and values, so there the
    smaller side is zero-padded to the larger (zeros add nothing to a dot product; padded
    value channels are cut off again). ``docs/cells/sa_convlstm.md`` compares the result
    with the reference's explicit ``softmax(bmm(Q, K)) @ V`` in float32 and bfloat16, and
    measures time and memory.

    Args:
        query: ``(B, G, N, d)``.
        keys: ``(B, G, N, d)``.
        values: ``(B, G, N, C)``.

    Returns:
        ``(B, G, N, C)``; row ``i`` is ``Σ_j softmax_j(q_i · k_j) v_j``.
    """
    d, c = query.shape[-1], values.shape[-1]
    if query.device.type == "cpu" and d < c:
        query, keys = F.pad(query, (0, c - d)), F.pad(keys, (0, c - d))
    elif query.device.type == "cpu" and d > c:
        return F.scaled_dot_product_attention(query, keys, F.pad(values, (0, d - c)), scale=1.0)[
            ..., :c
        ]
    return F.scaled_dot_product_attention(query, keys, values, scale=1.0)


def _explicit_attention(query: Tensor, keys: Tensor, values: Tensor) -> Tensor:
    """The reference's ``softmax(bmm(Qᵀ, K)) Vᵀ`` on channels-first ``(B, ch, N)`` maps.

    ``query, keys: (B, d, N)``, ``values: (B, C, N)``; returns ``(B, C, N)``. The matrix
    products read the transposed operands in place (no copies), as the reference's do.
    """
    weights = torch.softmax(query.mT @ keys, dim=-1)  # (B, N, N)
    return (weights @ values.mT).mT


class SelfAttentionMemory(nn.Module):
    r"""SA-ConvLSTM's self-attention memory module (SAM).

    Computes, with ``N = H W`` positions, all projections 1x1 convolutions with biases::

        Q = W_q * h,  K_h = W_k * h,  V_h = W_v * h,  K_m = W_k2 * m,  V_m = W_v2 * m
        Z_h = softmax_j(Qᵀ K_h) V_hᵀ          # (N x N) attention over positions, no 1/sqrt(d)
        Z_m = softmax_j(Qᵀ K_m) V_mᵀ          # the same queries against the memory
        Z   = W_z * [Z_h, Z_m]                # layer_z: 2 nh -> 2 nh
        [o, g, i] = chunks(W_m * [Z, h])      # layer_m: 3 nh -> 3 nh
        m' = (1 - σ(i)) ⊙ m + σ(i) ⊙ tanh(g)
        h' = σ(o) ⊙ m'

    ``Q``, ``K`` have ``attention_channels`` channels, ``V`` has ``channels``. Parameter
    names are hyona-yu/SA-convlstm's (``layer_q``, ``layer_k``, ``layer_k2``, ``layer_v``,
    ``layer_v2``, ``layer_z``, ``layer_m``). The projections of ``h`` and of ``m`` run as
    one convolution each; the reference computes ``layer_v2(m)`` twice, this module once.

    Attention kernel (``fused_attention``): ``True`` runs both attentions in one
    :func:`self_attention` call (:func:`torch.nn.functional.scaled_dot_product_attention`,
    no ``N x N`` matrix in memory); ``False`` computes ``softmax(bmm(Qᵀ, K))`` explicitly as
    the reference does; ``None`` (default) chooses the fused call except on CPU, where the
    explicit one measured faster at the papers' 16x16 maps (``docs/cells/sa_convlstm.md``:
    time and memory of both at 16x16 and 32x32). The results agree to float round-off in
    float32; in bfloat16 the fused call is the more accurate.

    Dead parameters of the reference: a bias of a key projection adds ``q_i · b_k`` to every
    logit of row ``i``, which the softmax over ``j`` cancels, so ``layer_k.bias`` and
    ``layer_k2.bias`` never change an output (their gradient is zero). They exist only with
    ``reference_compatible=True`` (then they are used as the reference uses them).

    Cost: time ``O(B N² (d + C))``; the plain computation keeps two ``B x N x N`` matrices,
    a fused attention kernel does not (``docs/cells/sa_convlstm.md`` has measurements at
    16x16 and 32x32 maps).

    Args:
        channels: C of ``h`` and ``m``.
        attention_channels: d, channels of the queries and keys.
        reference_compatible: also create the key biases (dead parameters), so that the
            reference's state dicts load as they are and parameter counts match.
        fused_attention: ``True`` (fused kernel), ``False`` (explicit softmax) or ``None``
            (fused except on CPU).
        device, dtype: where and in which dtype to create the parameters.

    Shapes: ``h, m: (B, C, H, W)``; returns ``(h', m')`` of the same shape.
    """

    def __init__(
        self,
        channels: int,
        attention_channels: int,
        *,
        reference_compatible: bool = False,
        fused_attention: bool | None = None,
        device: Device = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.channels = check_positive_int("channels", channels)
        self.attention_channels = check_positive_int("attention_channels", attention_channels)
        self.reference_compatible = check_bool("reference_compatible", reference_compatible)
        self.fused_attention = (
            None if fused_attention is None else check_bool("fused_attention", fused_attention)
        )
        c, d = self.channels, self.attention_channels
        factory = factory_kwargs(device, dtype)
        key_bias = self.reference_compatible
        self.layer_q = nn.Conv2d(c, d, 1, **factory)
        self.layer_k = nn.Conv2d(c, d, 1, bias=key_bias, **factory)
        self.layer_k2 = nn.Conv2d(c, d, 1, bias=key_bias, **factory)
        self.layer_v = nn.Conv2d(c, c, 1, **factory)
        self.layer_v2 = nn.Conv2d(c, c, 1, **factory)
        self.layer_z = nn.Conv2d(2 * c, 2 * c, 1, **factory)
        self.layer_m = nn.Conv2d(3 * c, 3 * c, 1, **factory)

    def reset_parameters(self) -> None:
        """Every 1x1 convolution as ``nn.Conv2d``."""
        reset_module_parameters(self)

    def _project(self, t: Tensor, layers: tuple[nn.Conv2d, ...]) -> Tensor:
        """The 1x1 convolutions ``layers`` of ``t`` as one convolution (stacked outputs)."""
        weight = torch.cat([layer.weight for layer in layers])
        bias = torch.cat(
            [
                layer.weight.new_zeros(layer.out_channels) if layer.bias is None else layer.bias
                for layer in layers
            ]
        )
        return F.conv2d(t, weight, bias)

    def forward(self, h: Tensor, m: Tensor) -> tuple[Tensor, Tensor]:
        """``h, m: (B, C, H, W)`` -> ``(h', m')``, each ``(B, C, H, W)``."""
        check_map("h", h, self.channels)
        check_state_map("m", m, h, self.channels)
        b, c, height, width = h.shape
        d, n = self.attention_channels, height * width
        qkv = self._project(h, (self.layer_q, self.layer_k, self.layer_v)).flatten(2)
        kv_m = self._project(m, (self.layer_k2, self.layer_v2)).flatten(2)
        # split (not slices): its backward is one concatenation of the gradients
        q, k_h, v_h = torch.split(qkv, [d, d, c], dim=1)  # (B, ch, N)
        k_m, v_m = torch.split(kv_m, [d, c], dim=1)
        fused = self.fused_attention
        if fused is None:
            fused = h.device.type != "cpu"
        if fused:
            # positions first, (B, 2, N, ch), unit last stride: what the fused kernels read
            query = q.mT.contiguous().unsqueeze(1).expand(b, 2, n, d)
            keys = torch.stack((k_h.mT, k_m.mT), dim=1)
            values = torch.stack((v_h.mT, v_m.mT), dim=1)
            z = self_attention(query, keys, values).mT  # (B, 2, C, N): [Z_h, Z_m]
        else:
            z = torch.cat(
                (_explicit_attention(q, k_h, v_h), _explicit_attention(q, k_m, v_m)), dim=1
            )
        z = z.reshape(b, 2 * c, height, width)
        o, g, i = split_gates(self.layer_m(torch.cat((self.layer_z(z), h), dim=1)), c)
        i = torch.sigmoid(i)
        m_next = (1 - i) * m + i * torch.tanh(g)
        return torch.sigmoid(o) * m_next, m_next

    def extra_repr(self) -> str:
        return (
            f"{self.channels}, attention_channels={self.attention_channels}, "
            f"reference_compatible={self.reference_compatible}, "
            f"fused_attention={self.fused_attention}"
        )


class SAConvLSTMCell(nn.Module):
    r"""One step of SA-ConvLSTM: a ConvLSTM whose hidden state goes through a SAM.

    Computes, as hyona-yu/SA-convlstm's ``SA_Convlstm_cell`` (``convlstm_att_hnver2.py``)::

        [i, f, o, g] = chunks(GN(W * [x, h] + b))        # conv: C_in + nh -> 4 nh, k x k
        c' = σ(f + forget_bias) ⊙ c + σ(i) ⊙ tanh(g)
        h̃  = σ(o) ⊙ tanh(c')
        h', m' = SAM(h̃, m)                               # :class:`SelfAttentionMemory`

    ``GN`` is the reference's ``GroupNorm(4 nh, 4 nh)``: every channel normalised over
    ``(H, W)`` per sample, with a per-channel affine (``norm="group"``; ``norm=None`` drops
    it). Note the gate order ``(i, f, o, g)`` and no forget bias (``forget_bias=0.0``).
    The bias ``b`` is there with ``norm=None`` only: before the per-channel norm it is
    subtracted again with the channel's mean, a dead parameter of the reference.

    Paper: Z. Lin, M. Li, Z. Zheng, Y. Cheng, C. Yuan, *Self-Attention ConvLSTM for
    Spatiotemporal Prediction*, AAAI 2020. There is no official code; hyona-yu/SA-convlstm
    is the most used implementation, and this cell computes what it computes.

    Differences from the paper: the paper's ConvLSTM has no normalisation (the
    reference's group norm is kept by default so that its checkpoints load; ``norm=None``
    gives the paper's gates, with a bias). Differences from the reference: its dead
    parameters (the gate convolution's bias under the group norm, the key projections'
    biases under the softmax) are left out unless ``reference_compatible=True`` (then they
    exist and are used as in the reference, so its state dicts load as they are; outputs
    are the same either way); "same" padding ``k // 2`` always (the reference takes a
    separate ``padding``); ``layer_v2(m)`` is computed once (the reference computes it
    twice); with ``fused_attention`` (default: everywhere but on CPU) the two attentions run
    as one :func:`torch.nn.functional.scaled_dot_product_attention` call with ``scale=1``
    (equal to the reference's ``softmax(bmm(Q, K))`` to float round-off, see the docs page);
    the state is validated and zero states follow ``x``.

    Args:
        in_channels: C_in of ``x``.
        hidden_channels: nh, channels of ``h``, ``c`` and ``m``.
        kernel_size: odd size of the gate convolution.
        attention_channels: d, channels of the SAM's queries and keys (default
            ``max(1, nh // 4)``).
        norm: ``"group"`` (the reference's per-channel group norm) or ``None``.
        forget_bias: constant added to the forget gate (0 in the reference).
        reference_compatible: also create the reference's dead parameters (see above).
        fused_attention: the SAM's attention kernel (:class:`SelfAttentionMemory`).
        device, dtype: where and in which dtype to create the parameters.

    Shapes: ``x: (B, C_in, H, W)``, states ``(B, nh, H, W)``; returns ``h'`` and
    ``SAConvLSTMState(h', c', m')``.
    """

    state_type = SAConvLSTMState
    """The state this cell carries."""

    def __init__(
        self,
        in_channels: int,
        hidden_channels: int,
        kernel_size: int = 5,
        *,
        attention_channels: int | None = None,
        norm: GateNorm = "group",
        forget_bias: float = 0.0,
        reference_compatible: bool = False,
        fused_attention: bool | None = None,
        device: Device = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.in_channels = check_positive_int("in_channels", in_channels)
        self.hidden_channels = check_positive_int("hidden_channels", hidden_channels)
        self.kernel_size = check_kernel_size("kernel_size", kernel_size)
        nh = self.hidden_channels
        self.attention_channels = (
            max(1, nh // 4)
            if attention_channels is None
            else check_positive_int("attention_channels", attention_channels)
        )
        self.norm: GateNorm = check_choice("norm", norm, ("group", None))
        self.forget_bias = check_real("forget_bias", forget_bias)
        self.reference_compatible = check_bool("reference_compatible", reference_compatible)
        factory = factory_kwargs(device, dtype)
        self.conv = nn.Conv2d(
            self.in_channels + nh,
            4 * nh,
            self.kernel_size,
            padding=self.kernel_size // 2,
            bias=self.norm is None or self.reference_compatible,
            **factory,
        )
        self.gate_norm: nn.GroupNorm | None = (
            nn.GroupNorm(4 * nh, 4 * nh, **factory) if self.norm == "group" else None
        )
        self.attention = SelfAttentionMemory(
            nh,
            self.attention_channels,
            reference_compatible=self.reference_compatible,
            fused_attention=fused_attention,
            **factory,
        )

    def reset_parameters(self) -> None:
        """Convolutions as ``nn.Conv2d``, the group norm weight 1 / bias 0."""
        reset_module_parameters(self)

    def initial_state(self, x: Tensor) -> SAConvLSTMState:
        """Zero state for input ``x: (B, C_in, H, W)`` (device, dtype and layout of ``x``)."""
        z = zeros_like_map(x, self.hidden_channels)
        return SAConvLSTMState(z, z, z)

    def forward(
        self, x: Tensor, state: SAConvLSTMState | None = None
    ) -> tuple[Tensor, SAConvLSTMState]:
        """One step: ``x: (B, C_in, H, W)``, ``state`` or ``None`` (zeros).

        Returns ``(h', SAConvLSTMState(h', c', m'))``, each ``(B, nh, H, W)``.
        """
        check_map("x", x, self.in_channels)
        state = (
            self.initial_state(x) if state is None else check_state("state", state, SAConvLSTMState)
        )
        nh = self.hidden_channels
        h = check_state_map("state.h", state[0], x, nh)
        c = check_state_map("state.c", state[1], x, nh)
        m = check_state_map("state.m", state[2], x, nh)
        gates = self.conv(torch.cat((x, h.to(x.dtype)), dim=1))
        if self.gate_norm is not None:
            gates = self.gate_norm(gates)
        i, f, o, g = split_gates(gates, nh)
        if self.forget_bias != 0.0:
            f = f + self.forget_bias
        c_next = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h_tilde = torch.sigmoid(o) * torch.tanh(c_next)
        h_next, m_next = self.attention(h_tilde, m.to(h_tilde.dtype))
        return h_next, SAConvLSTMState(h_next, c_next, m_next)

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.hidden_channels}, kernel_size={self.kernel_size}, "
            f"attention_channels={self.attention_channels}, norm={self.norm!r}, "
            f"forget_bias={self.forget_bias}, bias={self.conv.bias is not None}, "
            f"reference_compatible={self.reference_compatible}, "
            f"fused_attention={self.attention.fused_attention}"
        )
