"""Building blocks of :class:`~stpl.models.HierarchicalPredictor` (MSPred's modules).

* :class:`FrameBatchNorm2d`: batch normalisation whose statistics are taken per frame when
  several frames (time steps) are stacked into one batch;
* :class:`DCGANEncoder` / :class:`UNetDecoder`: the shared frame encoder (strided 4x4
  convolutions) and the U-Net-like frame decoder (4x4 transposed convolutions with skips);
* :class:`DeconvHead`: a level's head (transposed convolutions up to the frame size, a 1x1
  convolution and a sigmoid);
* :class:`LevelPredictor`: a level's recurrent predictor (input convolution, a stack of
  registered cells, output convolution and tanh);
* :class:`GaussianLatent`: a recurrent Gaussian (prior or posterior) that samples a latent
  map with the reparameterisation trick.

Every block that contains batch normalisation takes ``groups``: its input ``(B*G, C, H, W)``
holds G frames per sample, **sample-major** (the rows of sample b are ``b*G .. b*G+G-1``),
and the statistics are those each frame would get on its own (per channel over B, H and W).
That is what lets the model run the encoder over all frames, and the decoder and heads over
all time steps, in one call each while computing exactly what the reference computes with
one call per frame.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from stpl.cells._toolkit import with_memory
from stpl.cells.convlstm import ConvLSTMCell

__all__ = [
    "DCGANEncoder",
    "DeconvHead",
    "FrameBatchNorm2d",
    "GaussianLatent",
    "LevelPredictor",
    "UNetDecoder",
    "fused_weights",
    "run_cells",
]

CellBuilder = Callable[[int, int], nn.Module]
"""``(in_channels, hidden_channels) -> cell`` for one layer of a recurrent stack."""


class FrameBatchNorm2d(nn.BatchNorm2d):
    """``BatchNorm2d`` with per-frame statistics over a sample-major stack of frames.

    ``forward(x, groups)`` normalises ``x: (B*G, C, H, W)`` as if each of the G frames had
    been normalised on its own ``(B, C, H, W)`` batch. With ``track_running_stats=False``
    (MSPred's setting) batch statistics are used in training *and* evaluation mode; with
    ``track_running_stats=True`` evaluation mode uses the running estimates, and a training
    call updates them once, with the average of its frames' batch statistics.
    """

    def forward(self, x: Tensor, groups: int = 1) -> Tensor:
        if groups == 1:
            return super().forward(x)
        n, c, h, w = x.shape
        use_batch = self.training or self.running_mean is None
        if not use_batch:
            return super().forward(x)
        stacked = x.reshape(n // groups, groups * c, h, w)
        weight = None if self.weight is None else self.weight.repeat(groups)
        bias = None if self.bias is None else self.bias.repeat(groups)
        running_mean = running_var = None
        momentum = 0.0
        if self.training and self.running_mean is not None and self.running_var is not None:
            running_mean = self.running_mean.repeat(groups)
            running_var = self.running_var.repeat(groups)
            self.num_batches_tracked.add_(1)  # type: ignore[union-attr]
            momentum = (
                self.momentum
                if self.momentum is not None
                else 1.0 / float(self.num_batches_tracked)  # type: ignore[arg-type]
            )
        out = F.batch_norm(
            stacked, running_mean, running_var, weight, bias, True, momentum, self.eps
        )
        if running_mean is not None and running_var is not None:
            with torch.no_grad():
                assert self.running_mean is not None and self.running_var is not None
                self.running_mean.copy_(running_mean.view(groups, c).mean(0))
                self.running_var.copy_(running_var.view(groups, c).mean(0))
        return out.reshape(n, c, h, w)


class _ConvBlock(nn.Module):
    """Convolution (or transposed convolution), optional batch norm, activation."""

    def __init__(
        self,
        conv: nn.Module,
        norm: FrameBatchNorm2d | None,
        activation: Callable[[Tensor], Tensor],
    ) -> None:
        super().__init__()
        self.conv = conv
        self.norm = norm
        self.activation = activation

    def forward(self, x: Tensor, groups: int = 1) -> Tensor:
        y = self.conv(x)
        if self.norm is not None:
            y = self.norm(y, groups)
        return self.activation(y)


def _lrelu(x: Tensor) -> Tensor:
    return F.leaky_relu(x, 0.2)


def _bn(channels: int, running: bool, factory: dict[str, Any]) -> FrameBatchNorm2d:
    return FrameBatchNorm2d(channels, track_running_stats=running, **factory)


class DCGANEncoder(nn.Module):
    """The shared frame encoder: ``num_blocks`` strided 4x4 convolutions, each halving H, W.

    Block i (1-based) maps to ``channels[i-1]`` with batch norm and LeakyReLU(0.2), the last
    block to ``channels[-1]`` with batch norm and tanh (DCGAN's encoder stopped after its
    convolutions, as MSPred uses it). Returns every block's output ``(e_1, ..., e_n)``.
    ``bias`` is the bias of the convolutions, which batch norm makes redundant.
    """

    def __init__(
        self,
        in_channels: int,
        channels: Sequence[int],
        *,
        running_stats: bool,
        bias: bool = True,
        factory: dict[str, Any],
    ) -> None:
        super().__init__()
        blocks = []
        c_in = in_channels
        for i, c in enumerate(channels):
            last = i == len(channels) - 1
            conv = nn.Conv2d(c_in, c, 4, 2, 1, bias=bias, **factory)
            blocks.append(
                _ConvBlock(conv, _bn(c, running_stats, factory), torch.tanh if last else _lrelu)
            )
            c_in = c
        self.blocks = nn.ModuleList(blocks)
        self.channels = tuple(channels)

    def forward(self, x: Tensor, groups: int = 1) -> tuple[Tensor, ...]:
        """``x: (B*G, C, H, W)`` -> ``(e_1, ..., e_n)``, ``e_i: (B*G, c_i, H/2^i, W/2^i)``."""
        maps = []
        for block in self.blocks:
            x = block(x, groups)
            maps.append(x)
        return tuple(maps)


class UNetDecoder(nn.Module):
    """The frame decoder: transposed 4x4 convolutions from the top map, with skips.

    With encoder channels ``(c_1, ..., c_n)`` (``c_n`` = the top): block 1 maps ``c_n`` to
    ``c_{n-1}``; block j (2 <= j < n) reads ``cat[d_{j-1}, s_{n+1-j}]`` (``2 c_{n+1-j}``
    channels) and maps to ``c_{n-j}``; the last block reads ``cat[d_{n-1}, s_1]`` and maps to
    the image channels with a sigmoid (no batch norm). Blocks before the last have batch
    norm and LeakyReLU(0.2).
    """

    def __init__(
        self,
        out_channels: int,
        channels: Sequence[int],
        *,
        running_stats: bool,
        bias: bool = True,
        factory: dict[str, Any],
    ) -> None:
        super().__init__()
        n = len(channels)
        blocks = []
        for j in range(1, n + 1):
            c_in = channels[n - 1] if j == 1 else 2 * channels[n - j]
            if j < n:
                c_out = channels[n - 1 - j]
                conv = nn.ConvTranspose2d(c_in, c_out, 4, 2, 1, bias=bias, **factory)
                blocks.append(_ConvBlock(conv, _bn(c_out, running_stats, factory), _lrelu))
            else:
                conv = nn.ConvTranspose2d(c_in, out_channels, 4, 2, 1, **factory)
                blocks.append(_ConvBlock(conv, None, torch.sigmoid))
        self.blocks = nn.ModuleList(blocks)

    def forward(
        self, top: Tensor, skips: Sequence[Tensor], groups: int = 1
    ) -> tuple[Tensor, tuple[Tensor, ...]]:
        """``top: (B*G, c_n, ...)``, ``skips (s_1..s_{n-1})`` -> frame, ``(d_1..d_{n-1})``."""
        maps = []
        x = self.blocks[0](top, groups)
        maps.append(x)
        n = len(self.blocks)
        for j in range(2, n + 1):
            x = self.blocks[j - 1](torch.cat([x, skips[n - j]], dim=1), groups)
            if j < n:
                maps.append(x)
        return x, tuple(maps)


class DeconvHead(nn.Module):
    """A level's head: ``num_layers`` x (transposed 4x4 conv, BN, ReLU), 1x1 conv, sigmoid."""

    def __init__(
        self,
        in_channels: int,
        num_filters: int,
        out_channels: int,
        num_layers: int,
        *,
        running_stats: bool,
        bias: bool = True,
        factory: dict[str, Any],
    ) -> None:
        super().__init__()
        blocks = []
        c_in = in_channels
        for _ in range(num_layers):
            conv = nn.ConvTranspose2d(c_in, num_filters, 4, 2, 1, bias=bias, **factory)
            blocks.append(_ConvBlock(conv, _bn(num_filters, running_stats, factory), F.relu))
            c_in = num_filters
        self.blocks = nn.ModuleList(blocks)
        self.out_conv = nn.Conv2d(num_filters, out_channels, 1, **factory)
        self.out_channels = out_channels

    def forward(self, x: Tensor, groups: int = 1) -> Tensor:
        """``x: (B*G, C, h, w)`` -> ``(B*G, out_channels, h*2^L, w*2^L)`` in (0, 1)."""
        for block in self.blocks:
            x = block(x, groups)
        return torch.sigmoid(self.out_conv(x))


FusedWeights = tuple[tuple[Tensor, Tensor | None] | None, ...]
"""Per layer of a stack, ``(cat[W_x, W_h], bias)`` of a plain ConvLSTM cell, else ``None``."""


def fused_weights(cells: Iterable[nn.Module]) -> FusedWeights:
    """The one-convolution weights of the plain ConvLSTM cells of a stack.

    A :class:`~stpl.ConvLSTMCell` without layer norm or peepholes computes
    ``W_x * x + b + W_h * h``, which is one convolution of ``cat[x, h]`` with
    ``cat[W_x, W_h]`` (what MSPred's and ndrplz's cells compute). Concatenating the weights
    once per call and running one convolution per step is faster than two convolutions and
    an addition per step; other cells (``None`` entries) run their own ``forward``.
    """
    out: list[tuple[Tensor, Tensor | None] | None] = []
    for cell in cells:
        if isinstance(cell, ConvLSTMCell) and cell.norm is None and not cell.peephole:
            out.append(cell.fused_parameters())
        else:
            out.append(None)
    return tuple(out)


def run_cells(
    cells: Iterable[nn.Module],
    x: Tensor,
    states: Sequence[Any],
    zigzag: bool,
    fused: FusedWeights | None = None,
) -> tuple[Tensor, tuple[Any, ...]]:
    """Run ``x`` up a stack of cells; returns the top hidden map and the new states.

    Cells with a zigzag memory (ST-LSTM) pass it as in PredRNN: layer l reads the memory of
    layer l-1 at this tick, layer 0 the top layer's of the previous tick. ``fused`` (from
    :func:`fused_weights`) runs plain ConvLSTM cells as one convolution each.
    """
    new_states = []
    memory: Tensor | None = states[-1][2] if zigzag else None
    for layer, (cell, state) in enumerate(zip(cells, states, strict=True)):
        if zigzag and memory is not None:
            state = with_memory(state, memory)
        one = None if fused is None else fused[layer]
        if one is not None:
            assert isinstance(cell, ConvLSTMCell)
            x, state = cell.forward_fused(x, state, one[0], one[1])
        else:
            x, state = cell(x, state)
        if zigzag:
            memory = state[2]
        new_states.append(state)
    return x, tuple(new_states)


def _initial_states(cells: Iterable[nn.Module], x: Tensor) -> tuple[Any, ...]:
    """Each cell's zero state, with no tensor shared between fields or layers (a shared
    zero tensor would give compiled graphs an aliasing variant of their inputs)."""
    states = []
    for cell in cells:
        state = cell.initial_state(x)  # type: ignore[operator]
        fields = [t.clone() if isinstance(t, Tensor) else t for t in state]
        states.append(type(state)(*fields) if hasattr(state, "_fields") else tuple(fields))
    return tuple(states)


class LevelPredictor(nn.Module):
    """One level's recurrent predictor (MSPred's ``ConvLSTM`` module).

    ``v = Conv(in -> hidden)(x)``; ``v = cell_l(v)`` for each layer; ``y = tanh(Conv(hidden
    -> out)(v))``. Both convolutions use ``kernel_size`` with "same" padding.
    """

    def __init__(
        self,
        in_channels: int,
        hidden_channels: int,
        out_channels: int,
        num_layers: int,
        kernel_size: int,
        build: CellBuilder,
        *,
        factory: dict[str, Any],
    ) -> None:
        super().__init__()
        pad = kernel_size // 2
        self.input_conv = nn.Conv2d(in_channels, hidden_channels, kernel_size, 1, pad, **factory)
        self.cells = nn.ModuleList(
            [build(hidden_channels, hidden_channels) for _ in range(num_layers)]
        )
        self.output_conv = nn.Conv2d(hidden_channels, out_channels, kernel_size, 1, pad, **factory)
        self.zigzag = bool(getattr(self.cells[0], "zigzag_memory", False))

    def initial_state(self, x: Tensor) -> tuple[Any, ...]:
        """Zero states of every layer for input maps like ``x: (B, hidden, h, w)``."""
        return _initial_states(self.cells, x)

    def forward(
        self, x: Tensor, states: Sequence[Any], fused: FusedWeights | None = None
    ) -> tuple[Tensor, tuple[Any, ...]]:
        """``x: (B, in, h, w)`` -> ``(y: (B, out, h, w), new per-layer states)``.

        ``fused``: :func:`fused_weights` of ``self.cells`` (computed once per sequence).
        """
        top, new_states = run_cells(self.cells, self.input_conv(x), states, self.zigzag, fused)
        return torch.tanh(self.output_conv(top)), new_states


class GaussianLatent(nn.Module):
    """A recurrent Gaussian over a latent map (MSPred's ``GaussianConvLSTM``).

    ``v = Conv(in -> hidden)(x)``; ``v = cell_l(v)``; ``[mu, logvar] = Conv(hidden -> 2 z)(v)``
    (the first z channels are the mean); ``z = mu + exp(logvar / 2) * eps`` with
    ``eps = torch.randn_like(std)``, so patching ``torch.randn_like`` to zeros gives ``z = mu``.
    """

    def __init__(
        self,
        in_channels: int,
        hidden_channels: int,
        latent_channels: int,
        num_layers: int,
        kernel_size: int,
        build: CellBuilder,
        *,
        factory: dict[str, Any],
    ) -> None:
        super().__init__()
        pad = kernel_size // 2
        self.input_conv = nn.Conv2d(in_channels, hidden_channels, kernel_size, 1, pad, **factory)
        self.cells = nn.ModuleList(
            [build(hidden_channels, hidden_channels) for _ in range(num_layers)]
        )
        self.stats_conv = nn.Conv2d(
            hidden_channels, 2 * latent_channels, kernel_size, 1, pad, **factory
        )
        self.latent_channels = latent_channels
        self.zigzag = bool(getattr(self.cells[0], "zigzag_memory", False))

    def initial_state(self, x: Tensor) -> tuple[Any, ...]:
        """Zero states of every layer for maps like ``x: (B, hidden, h, w)``."""
        return _initial_states(self.cells, x)

    def forward(
        self, x: Tensor, states: Sequence[Any], fused: FusedWeights | None = None
    ) -> tuple[Tensor, Tensor, Tensor, tuple[Any, ...]]:
        """``x: (B, in, h, w)`` -> ``(z, mu, logvar, new states)``, each map ``(B, z, h, w)``.

        ``fused``: :func:`fused_weights` of ``self.cells`` (computed once per sequence).
        """
        top, new_states = run_cells(self.cells, self.input_conv(x), states, self.zigzag, fused)
        mu, logvar = torch.chunk(self.stats_conv(top), 2, dim=1)
        std = torch.exp(0.5 * logvar)
        z = mu + std * torch.randn_like(std)
        return z, mu, logvar, new_states
