"""MoDeRNN (Chai, Xu, Yuan; arXiv 2110.12978): Detail Context Block and cell."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal, NamedTuple

import torch
from torch import Tensor, nn

from stpl._validation import check_real
from stpl.cells._state import LSTMState
from stpl.cells._toolkit import (
    Device,
    GateConv,
    LayerNorm2d,
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
    "DCBOutput",
    "DetailContextBlock",
    "MoDeRNNCell",
    "MoDeRNNOutput",
]


class DCBOutput(NamedTuple):
    """What :meth:`DetailContextBlock.forward_with_attention` returns.

    Attributes:
        x: modulated input ``x_hat``, ``(B, C_x, H, W)``.
        h: modulated hidden state ``h_hat``, ``(B, C_h, H, W)``.
        attention: one sigmoid map per round, in round order, before the scale ``s``:
            ``(B, C_x, H, W)`` for rounds that gate ``x``, ``(B, C_h, H, W)`` for ``h``.
    """

    x: Tensor
    h: Tensor
    attention: tuple[Tensor, ...]


class DetailContextBlock(nn.Module):
    r"""MoDeRNN's Detail Context Block: ``x`` and ``h`` re-weight each other in rounds.

    As the public MoDeRNN code computes it (defaults), for round r = 1 .. rounds, starting
    with ``x`` (``first="x"``)::

        x = s · σ( mean_k N(W^k_h * h) ) ⊙ x      # rounds 1, 3, 5: h's branches gate x
        h = s · σ( mean_k N(W^k_x * x) ) ⊙ h      # rounds 2, 4:    x's branches gate h

    with kernels k in ``kernel_sizes`` (3, 5, 7), ``N`` a layer norm over each branch's
    ``(C, H, W)`` (``norm="layer"``), the mean over branches (``reduction="sum"`` for a
    plain sum), scale ``s = 2`` and the same branch weights in every round
    (``share_weights=False`` gives every round its own, Mogrifier-style).

    The paper writes the average as ``Σ_k / |k|``, which is the mean used here.

    Args:
        x_channels: C_x of ``x``.
        h_channels: C_h of ``h``.
        kernel_sizes: odd kernel sizes of the branches.
        rounds: number of alternating updates.
        scale: the constant ``s``.
        norm: ``"layer"`` (reference) or ``None``.
        spatial_size: ``(H, W)`` for per-element layer-norm parameters (reference layout).
        reduction: ``"mean"`` or ``"sum"`` over the branches.
        first: which state the first round updates, ``"x"`` or ``"h"``.
        share_weights: reuse one set of branches in every round.
        device, dtype: where and in which dtype to create the parameters (``torch.nn`` style).
    """

    def __init__(
        self,
        x_channels: int,
        h_channels: int,
        kernel_sizes: Sequence[int] = (3, 5, 7),
        rounds: int = 5,
        scale: float = 2.0,
        *,
        norm: Norm = "layer",
        spatial_size: tuple[int, int] | None = None,
        reduction: Literal["mean", "sum"] = "mean",
        first: Literal["x", "h"] = "x",
        share_weights: bool = True,
        device: Device = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.x_channels = check_positive_int("x_channels", x_channels)
        self.h_channels = check_positive_int("h_channels", h_channels)
        if isinstance(kernel_sizes, int) or len(kernel_sizes) == 0:
            raise ValueError(
                f"kernel_sizes must be a non-empty sequence of odd ints; got {kernel_sizes!r}"
            )
        self.kernel_sizes = tuple(check_kernel_size("kernel_sizes", k) for k in kernel_sizes)
        self.rounds = check_positive_int("rounds", rounds)
        self.scale = float(scale)
        self.norm = check_norm(norm)
        self.spatial_size = check_spatial_size(spatial_size)
        if reduction not in ("mean", "sum"):
            raise ValueError(f"reduction must be 'mean' or 'sum'; got {reduction!r}")
        if first not in ("x", "h"):
            raise ValueError(f"first must be 'x' or 'h'; got {first!r}")
        self.reduction = reduction
        self.first = first
        self.share_weights = bool(share_weights)
        # which state each round updates
        self._updates = tuple(
            ("x" if (r % 2 == 0) == (first == "x") else "h") for r in range(self.rounds)
        )
        n_x = self._updates.count("x")
        n_h = self._updates.count("h")
        if self.share_weights:
            n_x, n_h = min(n_x, 1), min(n_h, 1)

        factory = factory_kwargs(device, dtype)

        def branches(c_in: int, c_out: int) -> nn.ModuleList:
            return nn.ModuleList(
                GateConv(c_in, c_out, k, norm=self.norm, spatial_size=self.spatial_size, **factory)
                for k in self.kernel_sizes
            )

        # h_branches[j] read h and gate x; x_branches[j] read x and gate h.
        self.h_branches = nn.ModuleList(branches(h_channels, x_channels) for _ in range(n_x))
        self.x_branches = nn.ModuleList(branches(x_channels, h_channels) for _ in range(n_h))

    def reset_parameters(self) -> None:
        """Convolutions as ``nn.Conv2d``, norms weight 1 / bias 0."""
        reset_module_parameters(self)

    def _attention(self, branch_set: nn.Module, source: Tensor) -> Tensor:
        assert isinstance(branch_set, nn.ModuleList)
        total = branch_set[0](source)
        for branch in branch_set[1:]:
            total = total + branch(source)
        if self.reduction == "mean":
            total = total / len(self.kernel_sizes)
        return torch.sigmoid(total)

    def forward_with_attention(self, x: Tensor, h: Tensor) -> DCBOutput:
        """Modulate ``x: (B, C_x, H, W)`` and ``h: (B, C_h, H, W)``; also return the maps."""
        check_map("x", x, self.x_channels)
        check_state_map("h", h, x, self.h_channels)
        maps: list[Tensor] = []
        x_round = h_round = 0
        for target in self._updates:
            if target == "x":
                attn = self._attention(self.h_branches[0 if self.share_weights else x_round], h)
                x = self.scale * attn * x
                x_round += 1
            else:
                attn = self._attention(self.x_branches[0 if self.share_weights else h_round], x)
                h = self.scale * attn * h
                h_round += 1
            maps.append(attn)
        return DCBOutput(x, h, tuple(maps))

    def forward(self, x: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
        """Modulate ``x: (B, C_x, H, W)`` and ``h: (B, C_h, H, W)``; returns ``(x_hat, h_hat)``."""
        out = self.forward_with_attention(x, h)
        return out.x, out.h

    def extra_repr(self) -> str:
        return (
            f"{self.x_channels}, {self.h_channels}, kernel_sizes={self.kernel_sizes}, "
            f"rounds={self.rounds}, scale={self.scale}, norm={self.norm!r}, "
            f"reduction={self.reduction!r}, first={self.first!r}, "
            f"share_weights={self.share_weights}"
        )


class MoDeRNNOutput(NamedTuple):
    """What :meth:`MoDeRNNCell.forward_with_attention` returns.

    Attributes:
        h: new hidden state ``(B, C_hidden, H, W)``.
        state: ``LSTMState(h, c)`` after the step.
        attention: the DCB's per-round attention maps (see :class:`DCBOutput`).
    """

    h: Tensor
    state: LSTMState
    attention: tuple[Tensor, ...]


class MoDeRNNCell(nn.Module):
    r"""One step of MoDeRNN: a Detail Context Block, then a layer-normed ConvLSTM.

    As czh-98/MoDeRNN computes it (``N`` layer norms, present with ``norm="layer"``)::

        x̂, ĥ = DCB(x, h)
        [i, f, g, o] = chunks(N(W_x * x̂) + N(W_h * ĥ))
        c' = N_c(σ(f + forget_bias) ⊙ c + σ(i) ⊙ tanh(g))      # the normed c' is carried
        h' = σ(o) ⊙ tanh(c')

    Differences from the paper: the released Moving MNIST script uses 3x3 gate kernels
    (the paper says 5x5); the code adds forget bias 1.0 and normalises the new cell state.
    Unlike the reference the cell is not stateful: the state is passed in and out.

    Args:
        in_channels: C_in of ``x``.
        hidden_channels: C_hidden.
        kernel_size: odd size of the gate convolutions.
        norm: ``"layer"`` (reference) or ``None`` (also for the DCB).
        spatial_size: ``(H, W)`` for per-element layer-norm parameters (reference layout).
        forget_bias: added to the forget-gate pre-activation (1.0 in the reference).
        dcb_kernel_sizes, dcb_rounds, dcb_scale, dcb_reduction, dcb_first, dcb_share_weights:
            the :class:`DetailContextBlock` options.
        device, dtype: where and in which dtype to create the parameters (``torch.nn`` style).
    """

    def __init__(
        self,
        in_channels: int,
        hidden_channels: int,
        kernel_size: int = 5,
        *,
        norm: Norm = "layer",
        spatial_size: tuple[int, int] | None = None,
        forget_bias: float = 1.0,
        dcb_kernel_sizes: Sequence[int] = (3, 5, 7),
        dcb_rounds: int = 5,
        dcb_scale: float = 2.0,
        dcb_reduction: Literal["mean", "sum"] = "mean",
        dcb_first: Literal["x", "h"] = "x",
        dcb_share_weights: bool = True,
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
        nh = self.hidden_channels
        factory = factory_kwargs(device, dtype)
        self.dcb = DetailContextBlock(
            in_channels,
            nh,
            dcb_kernel_sizes,
            dcb_rounds,
            dcb_scale,
            norm=self.norm,
            spatial_size=self.spatial_size,
            reduction=dcb_reduction,
            first=dcb_first,
            share_weights=dcb_share_weights,
            **factory,
        )
        ln: dict[str, Any] = {"norm": self.norm, "spatial_size": self.spatial_size, **factory}
        self.conv_x = GateConv(in_channels, 4 * nh, kernel_size, **ln)
        self.conv_h = GateConv(nh, 4 * nh, kernel_size, **ln)
        self.norm_cell: LayerNorm2d | None = None
        if self.norm == "layer":
            self.norm_cell = LayerNorm2d(nh, spatial_size=self.spatial_size, **factory)

    state_type = LSTMState
    """The state this cell carries."""

    def reset_parameters(self) -> None:
        """Convolutions as ``nn.Conv2d``, norms weight 1 / bias 0."""
        reset_module_parameters(self)

    def initial_state(self, x: Tensor) -> LSTMState:
        """Zero state for input ``x: (B, C_in, H, W)`` (device, dtype and layout of ``x``)."""
        z = zeros_like_map(x, self.hidden_channels)
        return LSTMState(z, z)

    def forward_with_attention(self, x: Tensor, state: LSTMState | None = None) -> MoDeRNNOutput:
        """One step that also returns the DCB's attention maps (to draw them over time)."""
        check_map("x", x, self.in_channels)
        state = self.initial_state(x) if state is None else check_state("state", state, LSTMState)
        h = check_state_map("state.h", state[0], x, self.hidden_channels)
        c = check_state_map("state.c", state[1], x, self.hidden_channels)
        x_hat, h_hat, maps = self.dcb.forward_with_attention(x, h)
        i, f, g, o = split_gates(self.conv_x(x_hat) + self.conv_h(h_hat), self.hidden_channels)
        c_next = torch.sigmoid(f + self.forget_bias) * c + torch.sigmoid(i) * torch.tanh(g)
        if self.norm_cell is not None:
            c_next = self.norm_cell(c_next)
        h_next = torch.sigmoid(o) * torch.tanh(c_next)
        return MoDeRNNOutput(h_next, LSTMState(h_next, c_next), maps)

    def forward(self, x: Tensor, state: LSTMState | None = None) -> tuple[Tensor, LSTMState]:
        """One step: ``x: (B, C_in, H, W)`` -> ``(h', LSTMState(h', c'))``."""
        out = self.forward_with_attention(x, state)
        return out.h, out.state

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.hidden_channels}, kernel_size={self.kernel_size}, "
            f"norm={self.norm!r}, spatial_size={self.spatial_size}, forget_bias={self.forget_bias}"
        )
