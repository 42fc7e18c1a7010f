"""Eidetic 3D LSTM (E3D-LSTM, Wang et al., ICLR 2019): 3D convolutions and a recall gate."""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from stpl._validation import check_bool, check_choice, check_int, check_real
from stpl.cells._toolkit import (
    Device,
    Norm,
    autocast_enabled,
    check_norm,
    check_positive_int,
    check_spatial_size,
    check_state,
    factory_kwargs,
    reset_module_parameters,
    split_gates,
)

__all__ = ["E3DLSTMState", "Eidetic3DLSTMCell", "RecallLayout"]

RecallLayout = Literal["tokens", "reference"]
"""How the recall gate reads a ``(B, C, T, H, W)`` map as attention tokens: ``"tokens"``
(one token per position ``(t, y, x)``, a C-vector: the paper) or ``"reference"``
(OpenSTL's ``reshape(B, -1, C)`` of the channels-first map, without a permute)."""

_LAYOUTS = ("tokens", "reference")


class E3DLSTMState(NamedTuple):
    """State of an :class:`Eidetic3DLSTMCell` (``τ`` = ``window_length``).

    Attributes:
        h: hidden state, ``(B, C_hidden, τ, H, W)``.
        c: cell state, ``(B, C_hidden, τ, H, W)``.
        m: global (spatiotemporal) memory, ``(B, C_hidden, τ, H, W)``; a stack passes it
            zigzag.
        recall: the earlier cell states the recall gate attends to, as attention tokens
            ``(B, N * τ * H * W, C_hidden)``: N slots of ``τ * H * W`` tokens, oldest
            first. With ``memory_length=None`` N grows by one per step (0 at the start);
            with ``memory_length=L`` there are always ``N = L - 1`` slots.
        filled: ``(B, N)`` bool, which slots of ``recall`` hold a cell state (``None``: all
            of them). With ``memory_length=L`` the initial state has ``L - 1`` empty
            slots, which the recall masks out (they take no attention weight), so the
            first ``L`` steps equal the unbounded cell's. ``None`` with
            ``memory_length=None``, whose slots are always filled.
    """

    h: Tensor
    c: Tensor
    m: Tensor
    recall: Tensor
    filled: Tensor | None = None


def _check_kernel(kernel_size: object, window_length: int) -> tuple[int, int, int]:
    """``(k_t, k_h, k_w)`` from an int ``k`` (``(τ, k, k)``) or a 3-tuple."""
    if isinstance(kernel_size, numbers.Integral) and not isinstance(kernel_size, bool):
        kernel: tuple[object, ...] = (window_length, kernel_size, kernel_size)
    elif isinstance(kernel_size, Sequence) and len(kernel_size) == 3:
        kernel = tuple(kernel_size)
    else:
        kernel = ()
    ok = (
        len(kernel) == 3
        and all(isinstance(k, numbers.Integral) and not isinstance(k, bool) for k in kernel)
        and 1 <= int(kernel[0]) <= window_length  # type: ignore[call-overload]
        and all(int(k) > 0 and int(k) % 2 == 1 for k in kernel[1:])  # type: ignore[call-overload]
    )
    if not ok:
        raise ValueError(
            "kernel_size must be a positive odd int k (for a (window_length, k, k) kernel) or "
            f"(k_t, k_h, k_w) with 1 <= k_t <= window_length={window_length} and odd k_h, k_w; "
            f"got {kernel_size!r}"
        )
    return (int(kernel[0]), int(kernel[1]), int(kernel[2]))  # type: ignore[call-overload]


def _attend(query: Tensor, keys: Tensor, mask: Tensor | None = None) -> Tensor:
    """``softmax(query keysᵀ) keys`` (no scaling): ``(B, L_q, C), (B, L_k, C) -> (B, L_q, C)``.

    ``mask``: ``(B, L_k)`` bool, the keys that take part (``None``: all). Fused attention
    (``F.scaled_dot_product_attention``), except for 16-bit inputs on the CPU, where its
    kernel is slower than two batched matrix products around a softmax.
    """
    if query.device.type == "cpu" and (
        query.dtype in (torch.bfloat16, torch.float16) or autocast_enabled("cpu")
    ):
        scores = torch.bmm(query, keys.transpose(1, 2))
        if mask is not None:
            scores = scores.masked_fill(~mask[:, None, :], float("-inf"))
        return torch.bmm(torch.softmax(scores, dim=-1), keys)
    dtype = torch.promote_types(query.dtype, keys.dtype)
    q, k = query.to(dtype)[:, None], keys.to(dtype)[:, None]
    attn_mask = None if mask is None else mask[:, None, None, :]
    return F.scaled_dot_product_attention(q, k, k, attn_mask=attn_mask, scale=1.0)[:, 0]


class WindowLayerNorm(nn.Module):
    """Layer norm of a ``(B, C, τ, H, W)`` window over ``(C, τ, H, W)``, per sample.

    The reference's ``nn.LayerNorm([C, τ, H, W])``: with ``spatial_size=(H, W)`` the affine
    parameters are per element, ``(C, τ, H, W)``, exactly as the reference; with ``None``
    they are per channel, ``(C,)``, and any resolution works. A map that is constant over
    time may come as ``(B, C, 1, H, W)`` (its statistics are those of the full window).
    """

    def __init__(
        self,
        num_channels: int,
        window_length: int,
        *,
        spatial_size: tuple[int, int] | None = None,
        eps: float = 1e-5,
        device: Device = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.num_channels = check_positive_int("num_channels", num_channels)
        self.window_length = check_positive_int("window_length", window_length)
        self.spatial_size = check_spatial_size(spatial_size)
        self.eps = eps
        shape: tuple[int, ...] = (self.num_channels,)
        if self.spatial_size is not None:
            shape = (self.num_channels, self.window_length, *self.spatial_size)
        factory = factory_kwargs(device, dtype)
        self.weight = nn.Parameter(torch.empty(shape, **factory))
        self.bias = nn.Parameter(torch.empty(shape, **factory))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Weight 1, bias 0."""
        nn.init.ones_(self.weight)
        nn.init.zeros_(self.bias)

    def forward(self, x: Tensor) -> Tensor:
        """Normalise ``x: (B, C, τ or 1, H, W)``; per-element affine gives ``(B, C, τ, H, W)``."""
        if self.spatial_size is None:
            return F.group_norm(x, 1, self.weight, self.bias, self.eps)
        if tuple(x.shape[-2:]) != self.spatial_size:
            raise ValueError(
                f"this layer norm has per-element affine parameters for spatial_size="
                f"{self.spatial_size}; got a map of size {tuple(x.shape[-2:])} "
                "(build the cell with spatial_size=None to accept any resolution)"
            )
        if x.shape[2] == self.window_length:
            return F.layer_norm(x, tuple(x.shape[1:]), self.weight, self.bias, self.eps)
        return F.layer_norm(x, tuple(x.shape[1:]), eps=self.eps) * self.weight + self.bias

    def extra_repr(self) -> str:
        affine = "per-channel" if self.spatial_size is None else f"per-element {self.spatial_size}"
        return f"{self.num_channels}, window_length={self.window_length}, affine={affine}"


class WindowConv(nn.Module):
    """OpenSTL's ``tf_Conv3d``: a 3D convolution over a window, resized back to the window.

    ``(B, C_in, τ, H, W) -> (B, C_out, τ, H, W)``: a bias-free ``Conv3d`` with padding
    ``(0, k_h // 2, k_w // 2)`` gives ``τ - k_t + 1`` time steps, which nearest-neighbour
    interpolation stretches back to ``τ``. With ``k_t = τ`` (the reference's setting) the
    result is constant over time: it is returned as ``(B, C_out, 1, H, W)``, which
    broadcasts, and computed as one 2D convolution over the window's stacked channels.
    An optional :class:`WindowLayerNorm` follows (``norm="layer"``).

    Parameters: ``conv.weight (C_out, C_in, k_t, k_h, k_w)`` (the reference's
    ``conv3d.weight``), ``norm.weight`` / ``norm.bias``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: tuple[int, int, int],
        window_length: int,
        *,
        norm: Norm = None,
        spatial_size: tuple[int, int] | None = None,
        device: Device = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        factory = factory_kwargs(device, dtype)
        self.window_length = window_length
        _, kh, kw = kernel_size
        self.padding = (kh // 2, kw // 2)
        self.conv = nn.Conv3d(
            in_channels,
            out_channels,
            kernel_size,
            padding=(0, *self.padding),
            bias=False,
            **factory,
        )
        self.norm: WindowLayerNorm | None = None
        if check_norm(norm) == "layer":
            self.norm = WindowLayerNorm(
                out_channels, window_length, spatial_size=spatial_size, **factory
            )

    def reset_parameters(self) -> None:
        """``nn.Conv3d``'s initialisation; norm weight 1 / bias 0."""
        reset_module_parameters(self)

    def forward(self, x: Tensor) -> Tensor:
        """``x: (B, C_in, τ or 1, H, W)`` -> ``(B, C_out, τ or 1, H, W)``."""
        tau = self.window_length
        if x.shape[2] != tau:
            x = x.expand(-1, -1, tau, -1, -1)
        weight = self.conv.weight
        kt = weight.shape[2]
        if kt == tau:
            y = F.conv2d(x.flatten(1, 2), weight.flatten(1, 2), padding=self.padding)
            y = y.unsqueeze(2)
        else:
            y = F.conv3d(x, weight, padding=(0, *self.padding))
            if y.shape[2] != tau:
                y = F.interpolate(y, size=(tau, *y.shape[-2:]), mode="nearest")
        return y if self.norm is None else self.norm(y)


class Eidetic3DLSTMCell(nn.Module):
    r"""One step of the eidetic 3D LSTM (E3D-LSTM) over a window of ``τ`` frames.

    Inputs and states are windows ``(B, C, τ, H, W)``; ``W * ·`` is a :class:`WindowConv`
    (a 3D convolution resized back to the window; ``N`` a layer norm with ``norm="layer"``),
    ``LN_c`` the always-on layer norm of the cell, ``b`` = forget_bias. Computes, exactly as
    OpenSTL's ``Eidetic3DLSTMCell``::

        [i_x, g_x, r_x, o_x, i'_x, g'_x, f'_x] = chunks(N(W_x * x))
        [i_h, g_h, r_h, o_h] = chunks(N(W_h * h))
        i = σ(i_x + i_h);  r = σ(r_x + r_h);  g = tanh(g_x + g_h)
        c' = LN_c(c + RECALL(r, [C_past, c])) + i ⊙ g
        [i_m, f_m, g_m, m_m] = chunks(N(W_gm * m))
        m' = σ(f'_x + f_m + b) ⊙ tanh(m_m) + σ(i'_x + i_m) ⊙ tanh(g'_x + g_m)
        o  = tanh(o_x + o_h + N(W_c * c') + N(W_m * m'))
        h' = tanh(W_1x1x1 * [c', m']) ⊙ σ(o)

    ``RECALL(r, K) = softmax(r Kᵀ) K``: attention (no 1/√d scaling) of the queries ``r``
    over the cell states ``K`` of the earlier steps and the current one (the ``recall``
    of the state plus ``c``); ``recall_layout`` says how a map becomes tokens.

    Differences from the reference (OpenSTL ``Eidetic3DLSTMCell``), each with the option
    that restores the reference:

    * The reference returns its *input* global memory instead of ``m'``, so the memory a
      stack hands on is never updated (zeros throughout). Here the state carries ``m'``
      (the paper); ``update_memory=False`` returns the input memory like the reference.
    * The reference turns ``(B, C, T, H, W)`` maps into attention tokens with
      ``reshape(B, -1, C)`` without moving the channels last, so a "token" is C
      consecutive values of one channel's flattened map. Here a token is the C-vector of
      one position ``(t, y, x)`` (the paper's attention over positions);
      ``recall_layout="reference"`` reproduces the reference's reshape.
    * The recall attends over every cell state since the sequence start (the initial
      zero state included), as the reference, so the state grows by one cell state per
      step. ``memory_length=L`` keeps the last ``L`` (the current one included) in
      ``L - 1`` fixed slots; slots not filled yet are masked out of the attention, so
      the first ``L`` steps equal the unbounded recall and later steps forget the
      oldest state. The state then has fixed shapes (one compiled graph, an exportable
      and CUDA-graph capturable step, bounded memory and time per step when
      streaming); the reference has no such option.

    Not registered in :data:`stpl.CELLS`: its inputs and states are windows
    ``(B, C, τ, H, W)``, not the ``(B, C, H, W)`` maps of the generic stack;
    :class:`stpl.models.E3DLSTM` wires it.

    Args:
        in_channels: C_in of ``x``.
        hidden_channels: C_hidden of ``h``, ``c`` and ``m``.
        kernel_size: an odd int ``k`` for a ``(window_length, k, k)`` kernel (the
            reference's ``(2, 5, 5)`` with ``k=5``), or ``(k_t, k_h, k_w)``.
        window_length: τ, the frames per window (2 in the reference model).
        norm: ``None`` or ``"layer"`` after each gate convolution (the reference's
            ``layer_norm``); ``LN_c`` is always there.
        spatial_size: ``(H, W)`` for per-element layer-norm parameters ``(C, τ, H, W)``,
            the reference layout; ``None`` for per-channel ones (any resolution).
        forget_bias: constant added to the memory's forget gate (1.0 in the reference).
        update_memory: hand on ``m'`` (``True``) or the input memory (the reference).
        recall_layout: ``"tokens"`` or ``"reference"`` (see above).
        memory_length: ``None`` (every earlier cell state) or the most cell states the
            recall reads, the current one included.
        device, dtype: where and in which dtype to create the parameters.

    Shapes: ``x: (B, C_in, τ, H, W)``; returns ``h': (B, C_hidden, τ, H, W)`` and
    ``E3DLSTMState(h', c', m', recall', filled')``.
    """

    zigzag_memory = True
    """A stack passes ``m`` zigzag between layers (PredRNN's wiring)."""

    state_type = E3DLSTMState
    """The state this cell carries."""

    def __init__(
        self,
        in_channels: int,
        hidden_channels: int,
        kernel_size: int | tuple[int, int, int] = 5,
        *,
        window_length: int = 2,
        norm: Norm = None,
        spatial_size: tuple[int, int] | None = None,
        forget_bias: float = 1.0,
        update_memory: bool = True,
        recall_layout: RecallLayout = "tokens",
        memory_length: int | None = None,
        device: Device = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.in_channels = check_positive_int("in_channels", in_channels)
        self.hidden_channels = check_positive_int("hidden_channels", hidden_channels)
        self.window_length = check_positive_int("window_length", window_length)
        self.kernel_size = _check_kernel(kernel_size, self.window_length)
        self.norm = check_norm(norm)
        self.spatial_size = check_spatial_size(spatial_size)
        self.forget_bias = check_real("forget_bias", forget_bias)
        self.update_memory = check_bool("update_memory", update_memory)
        self.recall_layout: RecallLayout = check_choice("recall_layout", recall_layout, _LAYOUTS)
        self.memory_length = (
            None if memory_length is None else check_int("memory_length", memory_length, minimum=1)
        )
        nh, tau = self.hidden_channels, self.window_length
        factory = factory_kwargs(device, dtype)

        def window_conv(c_in: int, c_out: int) -> WindowConv:
            return WindowConv(
                c_in,
                c_out,
                self.kernel_size,
                tau,
                norm=self.norm,
                spatial_size=self.spatial_size,
                **factory,
            )

        self.conv_x = window_conv(self.in_channels, 7 * nh)
        self.conv_h = window_conv(nh, 4 * nh)
        self.conv_gm = window_conv(nh, 4 * nh)
        self.conv_new_cell = window_conv(nh, nh)
        self.conv_new_gm = window_conv(nh, nh)
        self.conv_last = nn.Conv3d(2 * nh, nh, 1, bias=False, **factory)
        self.norm_c = WindowLayerNorm(nh, tau, spatial_size=self.spatial_size, **factory)

    def reset_parameters(self) -> None:
        """Convolutions as ``nn.Conv3d``, norms weight 1 / bias 0."""
        reset_module_parameters(self)

    def _check_input(self, x: object) -> Tensor:
        tau = self.window_length
        want = f"(B, C, τ, H, W) with C={self.in_channels}, τ={tau}"
        if not isinstance(x, Tensor):
            raise TypeError(f"x must be a torch.Tensor; got {type(x).__name__}")
        if x.dim() != 5 or x.shape[1] != self.in_channels or x.shape[2] != tau:
            raise ValueError(f"x must be {want}; got shape {tuple(x.shape)}")
        if not x.is_floating_point():
            raise ValueError(f"x must be a floating tensor; got dtype {x.dtype}")
        return x

    def _slot_tokens(self, x: Tensor) -> int:
        """Tokens per cell state (one slot of ``recall``): ``τ * H * W``."""
        return self.window_length * x.shape[-2] * x.shape[-1]

    def initial_state(self, x: Tensor) -> E3DLSTMState:
        """Zero state for input ``x: (B, C_in, τ, H, W)`` (device and dtype of ``x``).

        With ``memory_length=None`` the recall is empty and ``filled`` is ``None``; with
        ``memory_length=L`` it has ``L - 1`` empty slots (zeros, ``filled`` all ``False``).
        """
        if not isinstance(x, Tensor) or x.dim() != 5:
            got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"x must be (B, C, τ, H, W); got {got}")
        b, _, tau, h, w = x.shape
        z = x.new_zeros((b, self.hidden_channels, tau, h, w))
        if self.memory_length is None:
            return E3DLSTMState(z, z, z, x.new_zeros((b, 0, self.hidden_channels)), None)
        slots = self.memory_length - 1
        recall = x.new_zeros((b, slots * tau * h * w, self.hidden_channels))
        return E3DLSTMState(z, z, z, recall, x.new_zeros((b, slots), dtype=torch.bool))

    def _check_window(self, name: str, t: object, x: Tensor) -> Tensor:
        if not isinstance(t, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor; got {type(t).__name__}")
        b, _, tau, h, w = x.shape
        expected = (b, self.hidden_channels, tau, h, w)
        if tuple(t.shape) != expected:
            raise ValueError(
                f"{name} must be (B, C, τ, H, W) = {expected} to match the input; got shape "
                f"{tuple(t.shape)} (a state from another batch size or spatial size?)"
            )
        self._check_like(name, t, x)
        return t

    def _check_like(self, name: str, t: Tensor, x: Tensor) -> None:
        if t.device != x.device:
            raise ValueError(f"{name} is on device {t.device}, but the input is on {x.device}")
        if t.dtype != x.dtype and not autocast_enabled(x.device.type):
            raise ValueError(f"{name} has dtype {t.dtype}, but the input has dtype {x.dtype}")

    def _check_recall(self, t: object, x: Tensor, name: str = "state.recall") -> Tensor:
        if not isinstance(t, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor; got {type(t).__name__}")
        per = self._slot_tokens(x)
        b, nh = x.shape[0], self.hidden_channels
        if self.memory_length is None:
            ok = t.dim() == 3 and t.shape[0] == b and t.shape[2] == nh and t.shape[1] % per == 0
            want = f"(B, N * τ * H * W, C) = ({b}, N * {per}, {nh})"
        else:
            n = (self.memory_length - 1) * per
            ok = tuple(t.shape) == (b, n, nh)
            want = f"(B, (memory_length - 1) * τ * H * W, C) = ({b}, {n}, {nh})"
        if not ok:
            raise ValueError(
                f"{name} must be {want} to match the input; got shape {tuple(t.shape)}"
            )
        self._check_like(name, t, x)
        return t

    def _check_filled(
        self, t: object, recall: Tensor, x: Tensor, name: str = "state.filled"
    ) -> Tensor | None:
        if t is None:
            return None
        if not isinstance(t, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor or None; got {type(t).__name__}")
        want = (x.shape[0], recall.shape[1] // self._slot_tokens(x))
        if tuple(t.shape) != want or t.dtype != torch.bool:
            raise ValueError(
                f"{name} must be a bool tensor (B, N) = {want}, one entry per slot of the "
                f"recall; got shape {tuple(t.shape)} and dtype {t.dtype}"
            )
        if t.device != x.device:
            raise ValueError(f"{name} is on device {t.device}, but the input is on {x.device}")
        return t

    def _tokens(self, t: Tensor) -> Tensor:
        """A ``(B, C, T, H, W)`` map -> attention tokens ``(B, T*H*W, C)``."""
        b, c = t.shape[:2]
        if self.recall_layout == "reference":
            return t.reshape(b, -1, c)
        return t.flatten(2).transpose(1, 2).contiguous()

    def _recall(
        self, r: Tensor, c: Tensor, recall: Tensor, filled: Tensor | None
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        """``RECALL(r, [recall, c])`` as a ``(B, C, T_r, H, W)`` map; the new ``recall`` and
        ``filled`` (their last ``memory_length - 1`` slots with ``memory_length`` set)."""
        b, nh, tau, hh, ww = c.shape
        per = self._slot_tokens(c)
        slots = recall.shape[1] // per
        if self.recall_layout == "reference":
            r = r.expand(-1, -1, tau, -1, -1)
        query = self._tokens(r)
        keys = torch.cat((recall.to(c.dtype), self._tokens(c)), dim=1)
        mask = None
        if filled is not None:
            filled = torch.cat((filled, filled.new_ones((b, 1))), dim=1)
            if slots > 0:  # empty slots take no attention weight
                mask = filled[:, :, None].expand(b, slots + 1, per).reshape(b, -1)
        out = _attend(query, keys, mask)
        if self.recall_layout == "reference":
            out = out.reshape(b, nh, tau, hh, ww)
        else:
            out = out.transpose(1, 2).reshape(b, nh, r.shape[2], hh, ww)
        if self.memory_length is not None:
            keys = keys[:, per:]
            if filled is None:  # a state without ``filled``: every slot counts
                filled = keys.new_ones((b, slots), dtype=torch.bool)
            else:
                filled = filled[:, 1:]
        return out, keys, filled

    def forward(self, x: Tensor, state: E3DLSTMState | None = None) -> tuple[Tensor, E3DLSTMState]:
        """One step: ``x: (B, C_in, τ, H, W)``, ``state`` or ``None`` (zeros).

        A plain tuple ``(h, c, m, recall)`` is read with ``filled=None``.

        Returns ``(h', E3DLSTMState(h', c', m', recall', filled'))``.
        """
        x = self._check_input(x)
        if state is None:
            state = self.initial_state(x)
        elif isinstance(state, (tuple, list)) and not hasattr(state, "_fields") and len(state) == 4:
            state = E3DLSTMState(*state)
        else:
            state = check_state("state", state, E3DLSTMState)
        h = self._check_window("state.h", state[0], x)
        c = self._check_window("state.c", state[1], x)
        m = self._check_window("state.m", state[2], x)
        recall = self._check_recall(state[3], x)
        filled = self._check_filled(state[4], recall, x)
        nh = self.hidden_channels
        shape = c.shape

        i_x, g_x, r_x, o_x, ti_x, tg_x, tf_x = split_gates(self.conv_x(x), nh)
        i_h, g_h, r_h, o_h = split_gates(self.conv_h(h), nh)
        i = torch.sigmoid(i_x + i_h)
        r = torch.sigmoid(r_x + r_h)
        g = torch.tanh(g_x + g_h)
        recalled, recall, filled = self._recall(r, c, recall, filled)
        c_next = self.norm_c(c + recalled) + i * g

        i_m, f_m, g_m, m_m = split_gates(self.conv_gm(m), nh)
        m_next = torch.sigmoid(tf_x + f_m + self.forget_bias) * torch.tanh(m_m) + torch.sigmoid(
            ti_x + i_m
        ) * torch.tanh(tg_x + g_m)
        o = torch.tanh(o_x + o_h + self.conv_new_cell(c_next) + self.conv_new_gm(m_next))
        m_next = m_next.expand(shape)
        mem = torch.cat((c_next, m_next.to(c_next.dtype)), dim=1)
        # the 1x1x1 convolution as a 1x1 2D one over (τ*H, W): the same sums, faster kernels
        b, _, tau, hh, ww = mem.shape
        mixed = F.conv2d(mem.reshape(b, 2 * nh, tau * hh, ww), self.conv_last.weight[:, :, 0])
        h_next = torch.tanh(mixed.reshape(shape)) * torch.sigmoid(o)
        m_out = m_next if self.update_memory else m
        return h_next, E3DLSTMState(h_next, c_next, m_out, recall, filled)

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.hidden_channels}, kernel_size={self.kernel_size}, "
            f"window_length={self.window_length}, norm={self.norm!r}, "
            f"forget_bias={self.forget_bias}, update_memory={self.update_memory}, "
            f"recall_layout={self.recall_layout!r}, memory_length={self.memory_length}, "
            f"spatial_size={self.spatial_size}"
        )
