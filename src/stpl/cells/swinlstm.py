"""SwinLSTM cell (Tang et al., ICCV 2023): an LSTM cell whose gate is a stack of Swin blocks."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor, nn

from stpl._validation import check_positive_int, check_prob
from stpl.cells._toolkit import (
    Device,
    check_map,
    check_state,
    check_state_map,
    reset_module_parameters,
    zeros_like_map,
)
from stpl.cells.swin import SwinBlock, WindowGeometry, window_geometry

__all__ = ["SwinLSTMCell", "SwinLSTMState"]


class SwinLSTMState(NamedTuple):
    """State of a :class:`SwinLSTMCell`.

    Attributes:
        h: hidden state, ``(B, C, H, W)``.
        c: cell state, ``(B, C, H, W)``.
    """

    h: Tensor
    c: Tensor


def _check_rates(drop_path: float | Sequence[float], depth: int) -> tuple[float, ...]:
    if isinstance(drop_path, Sequence) and not isinstance(drop_path, str):
        rates = tuple(check_prob("drop_path", r) for r in drop_path)
        if len(rates) != depth:
            raise ValueError(
                f"drop_path must be one rate or one rate per block (depth={depth}); "
                f"got {len(rates)} rates"
            )
    else:
        rates = (check_prob("drop_path", drop_path),) * depth
    if any(r == 1.0 for r in rates):
        raise ValueError(f"drop_path rates must be < 1; got {rates}")
    return rates


class SwinLSTMCell(nn.Module):
    r"""One step of the SwinLSTM cell.

    A stack of ``depth`` Swin blocks (:class:`~stpl.cells.swin.SwinBlock`) computes one
    gate map ``o`` from the input ``x`` and the hidden state ``h``; the LSTM update uses
    it as input, forget and output gate at once::

        y_0 = STB_0(x, h)          # the hidden state enters the first block: red[LN1 x, LN1 h]
        y_i = STB_i(y_{i-1}, x)    # even i >= 2: the input is merged in again
        y_i = STB_i(y_{i-1})       # odd i: shifted windows, no second input
        o   = y_{depth-1}
        F   = σ(o)
        c'  = F ⊙ (c + tanh(o))
        h'  = F ⊙ tanh(c')

    Even blocks use regular windows, odd blocks windows shifted by ``window_size // 2``
    (none when ``min(H, W) <= window_size``: one window then covers the smaller side).
    ``x``, ``h`` and ``c`` all have ``channels`` channels (the input is the residual stream
    of the first block, so its width cannot differ from the hidden width).

    Paper: S. Tang, C. Li, P. Zhang, R. Tang, *SwinLSTM: Improving Spatiotemporal
    Prediction Accuracy using Swin Transformer and LSTM*, ICCV 2023 (arXiv:2308.09891).

    Differences from the reference code (OpenSTL ``SwinLSTMCell``, SongTang-x/SwinLSTM):

    * the reference gives every block a ``red`` Linear(2C -> C); odd blocks never use it.
      Here only even blocks have one (``2C^2 + C`` fewer parameters per odd block); the
      loader drops the dead weights.
    * the reference works on token tensors ``(B, H*W, C)`` of a resolution fixed at
      construction (masks and window clamp computed then); this cell takes maps
      ``(B, C, H, W)`` of any size divisible by ``window_size`` and computes the window
      geometry from the input. Pass ``channels_last`` maps to avoid layout copies.
    * the reference makes float32 zero states; here they follow the input's dtype.

    Differences from the paper: not checked against the paper's text (only its abstract
    was available); this is the published code's computation.

    Args:
        channels: C of ``x``, ``h`` and ``c`` (OpenSTL's ``dim``).
        num_heads: attention heads of every block (dividing ``channels``).
        window_size: side of the attention windows; H and W must be divisible by it.
        depth: number of Swin blocks.
        mlp_ratio: MLP width / C.
        qkv_bias: bias of the qkv projections.
        drop_path: stochastic-depth rate, one for all blocks or one per block.
        eps: layer-norm epsilon.
        device, dtype: where and in which dtype to create the parameters.

    Shapes: ``x``, ``h``, ``c``: ``(B, C, H, W)``; returns ``h'`` and
    ``SwinLSTMState(h', c')`` (``channels_last`` memory format).
    """

    state_type = SwinLSTMState
    """The state this cell carries."""

    def __init__(
        self,
        channels: int,
        num_heads: int,
        window_size: int = 4,
        depth: int = 2,
        *,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop_path: float | Sequence[float] = 0.0,
        eps: float = 1e-5,
        device: Device = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.channels = check_positive_int("channels", channels)
        self.in_channels = self.channels
        self.hidden_channels = self.channels
        self.num_heads = check_positive_int("num_heads", num_heads)
        if channels % num_heads:
            raise ValueError(f"channels={channels} is not divisible by num_heads={num_heads}")
        self.window_size = check_positive_int("window_size", window_size)
        self.depth = check_positive_int("depth", depth)
        rates = _check_rates(drop_path, self.depth)
        self.drop_path = rates
        self.blocks = nn.ModuleList(
            SwinBlock(
                channels,
                num_heads,
                window_size,
                shifted=i % 2 == 1,
                merge_input=i % 2 == 0,
                mlp_ratio=mlp_ratio,
                qkv_bias=qkv_bias,
                drop_path=rates[i],
                eps=eps,
                device=device,
                dtype=dtype,
            )
            for i in range(self.depth)
        )

    def reset_parameters(self) -> None:
        """Every block with its layers' own initialisers."""
        reset_module_parameters(self)

    def initial_state(self, x: Tensor) -> SwinLSTMState:
        """Zero state for input ``x: (B, C, H, W)`` (device, dtype and layout of ``x``)."""
        z = zeros_like_map(x, self.channels)
        return SwinLSTMState(z, z)

    def check_size(self, height: int, width: int) -> None:
        """Raise ``ValueError`` unless ``window_size`` divides H and W."""
        if height % self.window_size or width % self.window_size:
            raise ValueError(
                f"SwinLSTMCell with window_size={self.window_size} needs H and W divisible by "
                f"{self.window_size}; got a {height}x{width} map"
            )

    def forward(
        self, x: Tensor, state: SwinLSTMState | None = None
    ) -> tuple[Tensor, SwinLSTMState]:
        """One step: ``x: (B, C, H, W)``, ``state`` or ``None`` (zeros).

        Returns ``(h', SwinLSTMState(h', c'))``, each ``(B, C, H, W)``.
        """
        check_map("x", x, self.channels)
        self.check_size(x.shape[2], x.shape[3])
        state = (
            self.initial_state(x) if state is None else check_state("state", state, SwinLSTMState)
        )
        h = check_state_map("state.h", state[0], x, self.channels)
        c = check_state_map("state.c", state[1], x, self.channels)
        h_grid, c_grid = self.forward_grid(
            x.permute(0, 2, 3, 1), h.permute(0, 2, 3, 1), c.permute(0, 2, 3, 1)
        )
        h_next = h_grid.permute(0, 3, 1, 2)
        return h_next, SwinLSTMState(h_next, c_grid.permute(0, 3, 1, 2))

    def forward_grid(self, x: Tensor, h: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
        """The step on channels-last grids ``(B, H, W, C)`` (no checks); returns ``(h', c')``."""
        height, width = x.shape[1], x.shape[2]
        geometry: list[WindowGeometry] = [
            window_geometry(
                height, width, self.window_size, shifted, device=x.device, dtype=x.dtype
            )
            for shifted in (False, True)[: min(self.depth, 2)]
        ]
        y = x
        for i, block in enumerate(self.blocks):
            other = h if i == 0 else (x if i % 2 == 0 else None)
            y = block(y, other, geometry[i % 2])
        gate = torch.sigmoid(y)
        c_next = gate * (c + torch.tanh(y))
        h_next = gate * torch.tanh(c_next)
        return h_next, c_next

    def extra_repr(self) -> str:
        return (
            f"{self.channels}, num_heads={self.num_heads}, window_size={self.window_size}, "
            f"depth={self.depth}"
        )
