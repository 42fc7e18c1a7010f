"""Swin Transformer blocks (Liu et al., ICCV 2021) as SwinLSTM uses them.

Written from the equations of ``spec/baselines-round3.md`` section 3b; timm is not needed.
Everything works on channels-last *grids* ``(B, H, W, C)`` (one token per map position).

The window geometry (how a grid is cut into windows, the shifted-window mask, the relative
position index) is computed from the grid's size when a block runs, so a block is not tied
to one resolution; only the window size is fixed, by the size of its learned relative
position bias table. Shapes are static for a given input size, so the blocks compile with
``torch.compile(fullgraph=True)`` and export with ``torch.export``.

Pieces:

* :func:`window_partition` / :func:`window_reverse`: grid <-> windows;
* :func:`relative_position_index`, :func:`shifted_window_mask`, :func:`window_geometry`;
* :func:`drop_path`: stochastic depth;
* :class:`WindowAttention`, :class:`SwinMLP`, :class:`SwinBlock`;
* :class:`PatchMerging` (2x down, channels x2) and :class:`PatchExpanding` (2x up,
  channels / 2).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from stpl._validation import check_bool, check_positive_int, check_prob, check_real
from stpl.cells._toolkit import Device, factory_kwargs

__all__ = [
    "PatchExpanding",
    "PatchMerging",
    "SwinBlock",
    "SwinMLP",
    "WindowAttention",
    "WindowGeometry",
    "drop_path",
    "effective_shift",
    "relative_position_index",
    "shifted_window_mask",
    "window_geometry",
    "window_partition",
    "window_reverse",
]

MASK_VALUE = -100.0
"""What the shifted-window mask adds to the logits of token pairs from different regions
(the reference's value, not ``-inf``: a fully masked row cannot occur, and ``-100`` keeps
the softmax finite in low precision)."""


# ------------------------------------------------------------------------------ geometry
def window_partition(x: Tensor, window_size: int) -> Tensor:
    """Cut a grid into non-overlapping windows.

    Args:
        x: ``(B, H, W, C)``, H and W divisible by ``window_size``.
        window_size: ws.

    Returns:
        ``(B, nW, ws*ws, C)``: windows in row-major order, tokens row-major inside a window;
        einops: ``"b (nh wh) (nw ww) c -> b (nh nw) (wh ww) c"``.
    """
    # reshape/permute rather than einops.rearrange: half the torch.compile tracing time
    b, h, w, c = x.shape
    ws = window_size
    x = x.reshape(b, h // ws, ws, w // ws, ws, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(b, (h // ws) * (w // ws), ws * ws, c)


def window_reverse(windows: Tensor, window_size: int, height: int, width: int) -> Tensor:
    """Inverse of :func:`window_partition`: ``(B, nW, ws*ws, C)`` -> ``(B, H, W, C)``
    (einops: ``"b (nh nw) (wh ww) c -> b (nh wh) (nw ww) c"``)."""
    b, c = windows.shape[0], windows.shape[-1]
    ws = window_size
    x = windows.reshape(b, height // ws, width // ws, ws, ws, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(b, height, width, c)


def relative_position_index(window_size: int, device: Device = None) -> Tensor:
    """Index into the relative position bias table for every pair of tokens in a window.

    ``index[i, j] = (Δr + ws - 1) * (2 ws - 1) + (Δc + ws - 1)`` with ``(Δr, Δc)`` the
    position of token i minus that of token j (row-major tokens).

    Returns:
        ``(ws*ws, ws*ws)`` int64, values in ``[0, (2 ws - 1)^2)``.
    """
    pos = torch.arange(window_size * window_size, device=device)
    row, col = pos // window_size, pos % window_size
    d_row = row[:, None] - row[None, :] + (window_size - 1)
    d_col = col[:, None] - col[None, :] + (window_size - 1)
    return d_row * (2 * window_size - 1) + d_col


def _region_labels(size: int, window_size: int, shift: int, device: Device) -> Tensor:
    """0 for n < size - ws, 1 for size - ws <= n < size - shift, 2 beyond."""
    pos = torch.arange(size, device=device)
    return (pos >= size - window_size).long() + (pos >= size - shift).long()


def shifted_window_mask(
    height: int,
    width: int,
    window_size: int,
    shift: int,
    *,
    device: Device = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """The additive attention mask of shifted windows.

    Each position of the *rolled* grid (the one windows are cut from) is labelled
    ``3 R(r) + R(c)`` with R as in :func:`_region_labels`: positions that the roll brought
    together from opposite borders get different labels. Token pairs of a window with
    different labels get ``-100``, pairs with equal labels 0.

    Returns:
        ``(nW, ws*ws, ws*ws)`` in ``dtype``, windows in row-major order.
    """
    labels = (
        3 * _region_labels(height, window_size, shift, device)[:, None]
        + _region_labels(width, window_size, shift, device)[None, :]
    )
    windows = window_partition(labels[None, :, :, None], window_size)[0, :, :, 0]
    differ = windows[:, :, None] != windows[:, None, :]
    return torch.zeros(differ.shape, device=device, dtype=dtype).masked_fill(differ, MASK_VALUE)


class WindowGeometry(NamedTuple):
    """How a block cuts a grid of one size into windows.

    Attributes:
        window_size: ws, the side of a window.
        shift: s, the cyclic shift (0: regular windows).
        position_index: ``(ws*ws, ws*ws)`` relative position index
            (:func:`relative_position_index`).
        mask: ``(nW, ws*ws, ws*ws)`` shifted-window mask, ``None`` when ``shift == 0``.
    """

    window_size: int
    shift: int
    position_index: Tensor
    mask: Tensor | None


def effective_shift(height: int, width: int, window_size: int, shifted: bool) -> int:
    """The shift a block uses on an ``H x W`` grid: ``ws // 2`` for a shifted block, except
    0 when one window covers the smaller side (``min(H, W) <= ws``, timm's rule)."""
    if not shifted or min(height, width) <= window_size:
        return 0
    return window_size // 2


def _compiling() -> bool:
    compiler = getattr(torch, "compiler", None)
    if compiler is not None and hasattr(compiler, "is_compiling"):
        return bool(compiler.is_compiling())
    return bool(torch._dynamo.is_compiling())


def _make_geometry(
    height: int,
    width: int,
    window_size: int,
    shifted: bool,
    device: Device,
    dtype: torch.dtype,
) -> WindowGeometry:
    shift = effective_shift(height, width, window_size, shifted)
    mask = (
        shifted_window_mask(height, width, window_size, shift, device=device, dtype=dtype)
        if shift
        else None
    )
    return WindowGeometry(window_size, shift, relative_position_index(window_size, device), mask)


@functools.lru_cache(maxsize=256)
def _cached_geometry(
    height: int,
    width: int,
    window_size: int,
    shifted: bool,
    device: torch.device,
    dtype: torch.dtype,
) -> WindowGeometry:
    # plain tensors even when first asked for under inference_mode (inference tensors
    # cannot be saved for backward by a later training step)
    with torch.inference_mode(False), torch.no_grad():
        return _make_geometry(height, width, window_size, shifted, device, dtype)


def window_geometry(
    height: int,
    width: int,
    window_size: int,
    shifted: bool,
    *,
    device: Device = None,
    dtype: torch.dtype = torch.float32,
) -> WindowGeometry:
    """The :class:`WindowGeometry` of a block with windows of ``window_size`` on ``H x W``.

    In eager mode the (small, constant) tensors are built once per size, device and dtype
    and reused; under ``torch.compile`` / ``torch.export`` they are built in the graph
    (where they fold into constants).

    Raises:
        ValueError: H or W not divisible by ``window_size``.
    """
    if height % window_size or width % window_size:
        raise ValueError(
            f"a {height}x{width} grid cannot be cut into windows of window_size={window_size}: "
            "H and W must be divisible by it"
        )
    if _compiling() or not isinstance(device, torch.device):
        return _make_geometry(height, width, window_size, shifted, device, dtype)
    return _cached_geometry(height, width, window_size, bool(shifted), device, dtype)


def drop_path(x: Tensor, rate: float, training: bool) -> Tensor:
    """Stochastic depth: zero the whole sample ``x[b]`` with probability ``rate``, else
    scale it by ``1 / (1 - rate)``; the identity in eval or at rate 0.

    One Bernoulli draw per sample (``x.new_empty((B, 1, ...)).bernoulli_(1 - rate)``), the
    same draws as timm's ``DropPath``, so a seeded run draws the same masks as the reference.
    """
    if rate == 0.0 or not training:
        return x
    keep = 1.0 - rate
    noise = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
    if keep > 0.0:
        noise = noise.div_(keep)
    return x * noise


# ------------------------------------------------------------------------------ modules
class WindowAttention(nn.Module):
    r"""Multi-head self-attention inside windows, with a learned relative position bias.

    Per window and head, with ``q, k, v = W_qkv y`` (output channels ordered
    ``(q|k|v, head, head dim)``)::

        A = softmax(q kᵀ / sqrt(C / nH) + B_rel + mask)
        out = W_proj (A v)

    ``B_rel[i, j] = table[index[i, j]]`` (:func:`relative_position_index`).

    Args:
        channels: C.
        num_heads: nH, dividing C.
        window_size: ws; the table has ``(2 ws - 1)^2`` rows.
        qkv_bias: bias of ``qkv``.
        device, dtype: factory arguments.

    Parameters (reference names): ``qkv.{weight (3C, C), bias}``, ``proj.{weight, bias}``,
    ``relative_position_bias_table ((2 ws - 1)^2, nH)``.
    """

    def __init__(
        self,
        channels: int,
        num_heads: int,
        window_size: int,
        *,
        qkv_bias: bool = True,
        device: Device = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.channels = check_positive_int("channels", channels)
        self.num_heads = check_positive_int("num_heads", num_heads)
        if channels % num_heads:
            raise ValueError(f"channels={channels} is not divisible by num_heads={num_heads}")
        self.window_size = check_positive_int("window_size", window_size)
        self.scale = (channels // num_heads) ** -0.5
        factory = factory_kwargs(device, dtype)
        self.qkv = nn.Linear(
            channels, 3 * channels, bias=check_bool("qkv_bias", qkv_bias), **factory
        )
        self.proj = nn.Linear(channels, channels, **factory)
        rows = (2 * window_size - 1) ** 2
        self.relative_position_bias_table = nn.Parameter(torch.empty(rows, num_heads, **factory))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Linear layers as ``nn.Linear``; the bias table truncated normal, std 0.02."""
        self.qkv.reset_parameters()
        self.proj.reset_parameters()
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)

    def bias(self, index: Tensor, mask: Tensor | None) -> Tensor:
        """``B_rel (+ mask)``: ``(nH, N, N)``, or ``(nW, nH, N, N)`` with a mask."""
        n = index.shape[0]
        bias = self.relative_position_bias_table[index.reshape(-1)]
        bias = bias.reshape(n, n, self.num_heads).permute(2, 0, 1)
        if mask is not None:
            bias = bias + mask[:, None]
        return bias

    def forward(self, windows: Tensor, index: Tensor, mask: Tensor | None = None) -> Tensor:
        """Attend within each window.

        Args:
            windows: ``(B, nW, N, C)`` with N = ws*ws tokens.
            index: ``(N, N)`` relative position index.
            mask: ``(nW, N, N)`` additive mask or ``None``.

        Returns:
            ``(B, nW, N, C)``.
        """
        b, nw, n, c = windows.shape
        qkv = self.qkv(windows).reshape(b, nw, n, 3, self.num_heads, c // self.num_heads)
        q, k, v = qkv.permute(3, 0, 1, 4, 2, 5).unbind(0)  # each (B, nW, nH, N, hd)
        logits = (q * self.scale) @ k.transpose(-2, -1) + self.bias(index, mask)
        out = logits.softmax(dim=-1) @ v
        projected: Tensor = self.proj(out.transpose(2, 3).reshape(b, nw, n, c))
        return projected

    def extra_repr(self) -> str:
        return f"{self.channels}, num_heads={self.num_heads}, window_size={self.window_size}"


class SwinMLP(nn.Module):
    """``fc2(GELU(fc1(x)))``, exact GELU (no dropout: the reference's rate is 0)."""

    def __init__(
        self,
        channels: int,
        hidden: int,
        *,
        device: Device = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        factory = factory_kwargs(device, dtype)
        self.fc1 = nn.Linear(channels, hidden, **factory)
        self.fc2 = nn.Linear(hidden, channels, **factory)

    def forward(self, x: Tensor) -> Tensor:
        """``x: (..., C)`` -> ``(..., C)``."""
        out: Tensor = self.fc2(F.gelu(self.fc1(x)))
        return out


class SwinBlock(nn.Module):
    r"""One Swin Transformer block of SwinLSTM (``STB``), on a grid ``x: (B, H, W, C)``.

    With ``LN1``, ``LN2`` layer norms over channels::

        y = LN1(x)
        y = W_red [LN1(x), LN1(other)] + b_red       # only if `other` is given (merge_input)
        y = roll(y, (-s, -s))                         # s = shift, 0 for unshifted blocks
        y = W-MSA(y) per window (WindowAttention), windows cut from the rolled grid
        y = roll(y, (s, s))
        x = x + DropPath(y)                           # the shortcut is x alone
        x = x + DropPath(fc2(GELU(fc1(LN2(x)))))

    A shifted block uses s = ws // 2, or 0 when ``min(H, W) <= ws`` (then one window covers
    the smaller side; timm's rule). The shift mask keeps tokens that the roll brought
    together from opposite borders from attending to each other.

    Args:
        channels: C.
        num_heads: attention heads.
        window_size: ws (fixed: it sizes the bias table).
        shifted: shifted-window block (odd blocks of a cell).
        merge_input: owns ``red`` (Linear 2C -> C) and takes a second input ``other``.
        mlp_ratio: MLP hidden width / C.
        qkv_bias: bias of the qkv projection.
        drop_path: stochastic-depth rate of both residual branches.
        eps: layer-norm epsilon.
        device, dtype: factory arguments.

    Parameters (reference names): ``norm1``, ``attn.*``, ``norm2``, ``mlp.fc1``,
    ``mlp.fc2``, and ``red`` with ``merge_input``.
    """

    def __init__(
        self,
        channels: int,
        num_heads: int,
        window_size: int,
        *,
        shifted: bool = False,
        merge_input: bool = False,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop_path: float = 0.0,
        eps: float = 1e-5,
        device: Device = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.channels = check_positive_int("channels", channels)
        self.window_size = check_positive_int("window_size", window_size)
        self.shifted = check_bool("shifted", shifted)
        self.merge_input = check_bool("merge_input", merge_input)
        self.mlp_ratio = check_real("mlp_ratio", mlp_ratio, low=0.0)
        self.drop_path = check_prob("drop_path", drop_path)
        if self.drop_path == 1.0:
            raise ValueError("drop_path must be < 1 (1 drops every residual branch); got 1.0")
        hidden = int(channels * self.mlp_ratio)
        if hidden < 1:
            raise ValueError(
                f"mlp_ratio={mlp_ratio} gives an MLP of {hidden} channels for channels={channels}"
            )
        factory = factory_kwargs(device, dtype)
        self.norm1 = nn.LayerNorm(channels, eps=eps, **factory)
        self.attn = WindowAttention(
            channels, num_heads, window_size, qkv_bias=qkv_bias, device=device, dtype=dtype
        )
        self.norm2 = nn.LayerNorm(channels, eps=eps, **factory)
        self.mlp = SwinMLP(channels, hidden, device=device, dtype=dtype)
        self.red = nn.Linear(2 * channels, channels, **factory) if self.merge_input else None

    def reset_parameters(self) -> None:
        """Every layer with its own initialiser (bias table: truncated normal, std 0.02)."""
        for module in (self.norm1, self.attn, self.norm2, self.mlp.fc1, self.mlp.fc2, self.red):
            if module is not None:
                module.reset_parameters()

    def geometry(self, x: Tensor) -> WindowGeometry:
        """The :class:`WindowGeometry` of this block on the grid ``x: (B, H, W, C)``."""
        return window_geometry(
            x.shape[1], x.shape[2], self.window_size, self.shifted, device=x.device, dtype=x.dtype
        )

    def forward(
        self, x: Tensor, other: Tensor | None = None, geometry: WindowGeometry | None = None
    ) -> Tensor:
        """One block.

        Args:
            x: ``(B, H, W, C)``.
            other: ``(B, H, W, C)`` merged in through ``red`` (blocks with ``merge_input``).
            geometry: precomputed :meth:`geometry` (a cell shares one between its blocks).

        Returns:
            ``(B, H, W, C)``.
        """
        if other is not None and self.red is None:
            raise ValueError("other was given, but this block was built with merge_input=False")
        geo = self.geometry(x) if geometry is None else geometry
        _, height, width, _ = x.shape
        y = self.norm1(x)
        if other is not None and self.red is not None:
            y = self.red(torch.cat([y, self.norm1(other)], dim=-1))
        ws, s = geo.window_size, geo.shift
        if s:
            y = torch.roll(y, shifts=(-s, -s), dims=(1, 2))
        y = self.attn(window_partition(y, ws), geo.position_index, geo.mask)
        y = window_reverse(y, ws, height, width)
        if s:
            y = torch.roll(y, shifts=(s, s), dims=(1, 2))
        x = x + drop_path(y, self.drop_path, self.training)
        return x + drop_path(self.mlp(self.norm2(x)), self.drop_path, self.training)

    def extra_repr(self) -> str:
        return (
            f"{self.channels}, window_size={self.window_size}, shifted={self.shifted}, "
            f"merge_input={self.merge_input}, mlp_ratio={self.mlp_ratio}, "
            f"drop_path={self.drop_path}"
        )


class PatchMerging(nn.Module):
    """2x spatial down-sampling of a grid: ``(B, H, W, C) -> (B, H/2, W/2, 2C)``.

    The four sub-grids are concatenated along channels in the order (even row, even col),
    (odd row, even col), (even row, odd col), (odd row, odd col); then ``norm`` (LayerNorm
    4C) and ``reduction`` (Linear 4C -> 2C, no bias).
    """

    def __init__(
        self,
        channels: int,
        *,
        eps: float = 1e-5,
        device: Device = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.channels = check_positive_int("channels", channels)
        factory = factory_kwargs(device, dtype)
        self.norm = nn.LayerNorm(4 * channels, eps=eps, **factory)
        self.reduction = nn.Linear(4 * channels, 2 * channels, bias=False, **factory)

    def forward(self, x: Tensor) -> Tensor:
        """``x: (B, H, W, C)``, H and W even -> ``(B, H/2, W/2, 2C)``."""
        b, h, w, c = x.shape  # einops: "b (h r) (w s) c -> b h w (s r c)"
        x = x.reshape(b, h // 2, 2, w // 2, 2, c).permute(0, 1, 3, 4, 2, 5)
        out: Tensor = self.reduction(self.norm(x.reshape(b, h // 2, w // 2, 4 * c)))
        return out

    def extra_repr(self) -> str:
        return f"{self.channels} -> {2 * self.channels}"


class PatchExpanding(nn.Module):
    """2x spatial up-sampling of a grid: ``(B, H, W, C) -> (B, 2H, 2W, C/2)``.

    ``expand`` (Linear C -> 2C, no bias), its output channels read as ``(row offset,
    col offset, C/2)`` and moved to the 2x2 positions, then ``norm`` (LayerNorm C/2).
    """

    def __init__(
        self,
        channels: int,
        *,
        eps: float = 1e-5,
        device: Device = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.channels = check_positive_int("channels", channels)
        if channels % 2:
            raise ValueError(f"channels must be even to halve them; got {channels}")
        factory = factory_kwargs(device, dtype)
        self.expand = nn.Linear(channels, 2 * channels, bias=False, **factory)
        self.norm = nn.LayerNorm(channels // 2, eps=eps, **factory)

    def forward(self, x: Tensor) -> Tensor:
        """``x: (B, H, W, C)`` -> ``(B, 2H, 2W, C/2)``."""
        b, h, w, c = x.shape  # einops: "b h w (r s c) -> b (h r) (w s) c"
        x = self.expand(x).reshape(b, h, w, 2, 2, c // 2).permute(0, 1, 3, 2, 4, 5)
        out: Tensor = self.norm(x.reshape(b, 2 * h, 2 * w, c // 2))
        return out

    def extra_repr(self) -> str:
        return f"{self.channels} -> {self.channels // 2}"
