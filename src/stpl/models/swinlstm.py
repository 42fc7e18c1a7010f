"""SwinLSTM video predictors (Tang et al., ICCV 2023): SwinLSTM-B and SwinLSTM-D.

Both embed each frame into patch tokens, run SwinLSTM cells (:class:`stpl.SwinLSTMCell`) on
them and turn the last tokens back into a frame with a stride-2 transposed convolution:

* :class:`SwinLSTMB`: one cell at the patch resolution (OpenSTL ``SwinLSTM_B_Model``);
* :class:`SwinLSTMD`: a down path of cells and patch mergings, then an up path of cells and
  patch expansions (OpenSTL ``SwinLSTM_D_Model``, the Moving MNIST configuration).

Presets: ``"swinlstm"`` (SwinLSTM-D at OpenSTL's Moving MNIST configuration;
``variant="B"`` for SwinLSTM-B) and ``"swinlstm_b"``. ``docs/cells/swinlstm.md`` has the
equations, parameter counts and the differences from the reference code.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Sequence
from typing import Any, Literal

import torch
from torch import Tensor, nn

from stpl._validation import (
    check_bool,
    check_choice,
    check_int,
    check_options,
    check_positive_int,
    check_prob,
)
from stpl.cells._toolkit import (
    Device,
    autocast_enabled,
    check_state,
    factory_kwargs,
    reset_module_parameters,
)
from stpl.cells.swin import PatchExpanding, PatchMerging
from stpl.cells.swinlstm import SwinLSTMCell, SwinLSTMState
from stpl.models._base import RecurrentPredictor, StepOutput

__all__ = ["SwinLSTMB", "SwinLSTMD", "SwinPatchEmbed", "build_swinlstm"]

SwinLSTMModelState = list[SwinLSTMState]
"""A SwinLSTM model's state: one :class:`SwinLSTMState` per cell (SwinLSTM-D: the down
cells, then the up cells), each map ``(B, C_l, h_l, w_l)``."""


def _image_size(image_size: object) -> tuple[int, int] | None:
    if image_size is None:
        return None
    if isinstance(image_size, Sequence) and not isinstance(image_size, str):
        if len(image_size) != 2:
            raise ValueError(f"image_size must be an int, (H, W) or None; got {image_size!r}")
        return (
            check_positive_int("image_size", image_size[0]),
            check_positive_int("image_size", image_size[1]),
        )
    size = check_positive_int("image_size", image_size)
    return (size, size)


def _clamped_window(window_size: int, grid: tuple[int, int] | None) -> int:
    """The window of a cell on ``grid``: ``min(grid)`` when that is <= the window (timm)."""
    if grid is not None and min(grid) <= window_size:
        return min(grid)
    return window_size


def _linspace(rate: float, n: int) -> list[float]:
    """``torch.linspace(0, rate, n)`` as floats (float32 values, as the reference's ``dpr``)."""
    return [float(v) for v in torch.linspace(0.0, rate, n, device="cpu").tolist()]


def _lcm(values: Sequence[int]) -> int:
    out = 1
    for v in values:
        out = out * v // math.gcd(out, v)
    return out


class SwinPatchEmbed(nn.Module):
    """Frame -> patch tokens: ``proj`` (Conv2d, kernel = stride = p) then ``norm``
    (LayerNorm over channels). ``(B, C, H, W) -> (B, H/p, W/p, E)`` channels-last grid."""

    def __init__(
        self,
        in_channels: int,
        embed_dim: int,
        patch_size: int,
        *,
        eps: float = 1e-5,
        device: Device = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        factory = factory_kwargs(device, dtype)
        self.proj = nn.Conv2d(in_channels, embed_dim, patch_size, stride=patch_size, **factory)
        self.norm = nn.LayerNorm(embed_dim, eps=eps, **factory)

    def forward(self, frame: Tensor) -> Tensor:
        """``frame: (B, C, H, W)`` -> ``(B, H/p, W/p, E)``."""
        out: Tensor = self.norm(self.proj(frame).permute(0, 2, 3, 1))
        return out


class _SwinLSTMBase(RecurrentPredictor):
    """What SwinLSTM-B and -D share: patch embedding, the output head, state and size checks."""

    patch_size: int
    embed_dim: int
    image_size: tuple[int, int] | None

    def _setup(
        self,
        in_channels: int,
        out_channels: int | None,
        image_size: object,
        patch_size: int,
        embed_dim: int,
        mlp_ratio: float,
        drop_path_rate: float,
        checkpoint_steps: bool,
    ) -> None:
        self.in_channels = check_positive_int("in_channels", in_channels)
        self.out_channels = check_positive_int(
            "out_channels", in_channels if out_channels is None else out_channels
        )
        self.patch_size = check_int("patch_size", patch_size, minimum=1)
        if self.patch_size != 2:
            raise ValueError(
                f"patch_size must be 2; got {patch_size} (the output head is a stride-2 "
                "transposed convolution, so only patch_size=2 gives back H x W frames, as in "
                "the reference code)"
            )
        self.embed_dim = check_positive_int("embed_dim", embed_dim)
        self.image_size = _image_size(image_size)
        self.mlp_ratio = float(mlp_ratio)
        self.drop_path_rate = check_prob("drop_path_rate", drop_path_rate)
        if self.drop_path_rate == 1.0:
            raise ValueError("drop_path_rate must be < 1; got 1.0")
        self.checkpoint_steps = check_bool("checkpoint_steps", checkpoint_steps)

    def _grid(self, level: int) -> tuple[int, int] | None:
        """The grid of ``image_size`` frames at ``level`` (level 0: the patch grid)."""
        if self.image_size is None:
            return None
        f = self.patch_size * 2**level
        return (self.image_size[0] // f, self.image_size[1] // f)

    def _build_head(self, device: Device, dtype: torch.dtype | None) -> None:
        self.patch_embed = SwinPatchEmbed(
            self.in_channels, self.embed_dim, self.patch_size, device=device, dtype=dtype
        )
        self.head = nn.ConvTranspose2d(
            self.embed_dim,
            self.out_channels,
            3,
            stride=2,
            padding=1,
            output_padding=1,
            **factory_kwargs(device, dtype),
        )

    def _decode(self, grid: Tensor) -> Tensor:
        """Tokens ``(B, h, w, E)`` -> ``σ(ConvTranspose(...))`` frame ``(B, C_out, 2h, 2w)``."""
        return torch.sigmoid(self.head(grid.permute(0, 3, 1, 2)))

    # ---------------------------------------------------------------- cells and sizes
    def _cell_levels(self) -> list[tuple[SwinLSTMCell, int]]:
        """Every cell with its level (grid = patch grid / 2**level), in state order."""
        raise NotImplementedError

    def _size_multiple(self) -> int:
        """H and W must be multiples of this."""
        return _lcm([self.patch_size * 2**lvl * c.window_size for c, lvl in self._cell_levels()])

    def _check_spatial(self, height: int, width: int) -> None:
        m = self._size_multiple()
        if height % m or width % m:
            windows = sorted({c.window_size for c, _ in self._cell_levels()})
            raise ValueError(
                f"{type(self).__name__} needs H and W divisible by {m} (patch_size="
                f"{self.patch_size}, the window sizes {windows} of its cells at their "
                f"resolutions); got H={height}, W={width}. A cell whose maps are smaller than "
                "its window needs a model built for that size (image_size=...), which clamps "
                "the window as the reference does"
            )

    def _check_state(self, state: Any, frames: Tensor) -> Any:
        cells = self._cell_levels()
        if not isinstance(state, (list, tuple)) or isinstance(state, SwinLSTMState):
            raise ValueError(
                f"state must be a list of {len(cells)} SwinLSTMState (one per cell); got "
                f"{type(state).__name__}"
            )
        if len(state) != len(cells):
            raise ValueError(
                f"state must hold one SwinLSTMState per cell ({len(cells)}); got {len(state)}"
            )
        b, h, w = frames.shape[0], frames.shape[-2], frames.shape[-1]
        out: list[SwinLSTMState] = []
        for i, (s, (cell, lvl)) in enumerate(zip(state, cells, strict=True)):
            s = check_state(f"state[{i}]", s, SwinLSTMState)
            f = self.patch_size * 2**lvl
            want = (b, cell.channels, h // f, w // f)
            for name, t in zip(("h", "c"), s, strict=True):
                if not isinstance(t, Tensor):
                    raise TypeError(f"state[{i}].{name} must be a torch.Tensor")
                if tuple(t.shape) != want:
                    raise ValueError(
                        f"state[{i}].{name} must be (B, C, h, w) = {want} for these frames; got "
                        f"{tuple(t.shape)} (a state from another batch or frame size?)"
                    )
                if t.device != frames.device:
                    raise ValueError(
                        f"state[{i}].{name} is on {t.device}, but the frames are on {frames.device}"
                    )
                if t.dtype != frames.dtype and not autocast_enabled(frames.device.type):
                    raise ValueError(
                        f"state[{i}].{name} has dtype {t.dtype}, but the frames have {frames.dtype}"
                    )
            out.append(s)
        return out

    # ---------------------------------------------------------------- the step
    @staticmethod
    def _run_cell(
        cell: SwinLSTMCell, grid: Tensor, state: SwinLSTMState | None
    ) -> tuple[Tensor, SwinLSTMState]:
        """One cell on a grid ``(B, h, w, C)``; the state holds ``(B, C, h, w)`` maps."""
        if state is None:
            h = c = torch.zeros_like(grid)
        else:
            h, c = state[0].permute(0, 2, 3, 1), state[1].permute(0, 2, 3, 1)
        h_next, c_next = cell.forward_grid(grid, h, c)
        return h_next, SwinLSTMState(h_next.permute(0, 3, 1, 2), c_next.permute(0, 3, 1, 2))

    def reset_parameters(self) -> None:
        """Re-initialise every parameter with its layer's own initialiser."""
        reset_module_parameters(self)

    def extra_repr(self) -> str:
        return (
            f"in_channels={self.in_channels}, out_channels={self.out_channels}, "
            f"patch_size={self.patch_size}, embed_dim={self.embed_dim}, "
            f"image_size={self.image_size}, drop_path_rate={self.drop_path_rate}"
        )


class SwinLSTMB(_SwinLSTMBase):
    r"""SwinLSTM-B: patch embedding, one SwinLSTM cell, a transposed-convolution head.

    One step (frame ``x_t: (B, C, H, W)``, patch size p = 2)::

        z      = LN(Conv_{p x p, stride p}(x_t))              # tokens (H/2, W/2, E)
        h, c   = SwinLSTMCell(z, (h, c))                     # `depths` Swin blocks
        x̂_{t+1} = σ(ConvTranspose_{3x3, stride 2}(h))        # (B, C_out, H, W)

    This is OpenSTL's ``SwinLSTM_B_Model`` (one ``STconvert``); the authors' SwinLSTM-B
    stacks a list of such cells. Step semantics are those of
    :class:`~stpl.models.RecurrentPredictor`: OpenSTL's test and training loop is
    ``model(frames, context=T_in)`` (no mask; masks are an extension here).

    Differences from the reference: the dead ``red`` weights of odd blocks are left out
    (2,581,041 parameters instead of 2,778,417 at the B configuration); H and W need not
    be equal and are not fixed at construction (only divisible by 2 x window size); states
    follow the input's dtype. Stochastic depth: ``drop_path_rate`` on every block, as
    OpenSTL's B (``flag=2``).

    Args:
        in_channels: image channels C.
        out_channels: predicted channels (default C; when different, predictions cannot be
            fed back).
        image_size: ``H`` or ``(H, W)`` the model is built for: only used to clamp the
            window to a map smaller than it (timm's rule, as the reference). ``None``: no
            clamp.
        patch_size: must be 2 (the head up-samples by 2).
        embed_dim: E, the token width (OpenSTL ``embed_dim``).
        depths: Swin blocks in the cell (OpenSTL ``depths``).
        num_heads: attention heads (OpenSTL ``num_heads``).
        window_size: attention window side.
        mlp_ratio: MLP width / E.
        qkv_bias: bias of the qkv projections.
        drop_path_rate: stochastic-depth rate of every block.
        checkpoint_steps: recompute each time step in backward.
        device, dtype: factory arguments.
    """

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int | None = None,
        *,
        image_size: int | tuple[int, int] | None = None,
        patch_size: int = 2,
        embed_dim: int = 128,
        depths: int = 12,
        num_heads: int = 4,
        window_size: int = 4,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop_path_rate: float = 0.1,
        checkpoint_steps: bool = False,
        device: Device = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self._setup(
            in_channels,
            out_channels,
            image_size,
            patch_size,
            embed_dim,
            mlp_ratio,
            drop_path_rate,
            checkpoint_steps,
        )
        ws = _clamped_window(check_positive_int("window_size", window_size), self._grid(0))
        self.cell = SwinLSTMCell(
            self.embed_dim,
            num_heads,
            ws,
            check_positive_int("depths", depths),
            mlp_ratio=mlp_ratio,
            qkv_bias=qkv_bias,
            drop_path=self.drop_path_rate,
            device=device,
            dtype=dtype,
        )
        self._build_head(device, dtype)

    def _cell_levels(self) -> list[tuple[SwinLSTMCell, int]]:
        return [(self.cell, 0)]

    def _step_impl(self, x: Tensor, state: Any, action: Tensor | None) -> StepOutput:
        grid = self.patch_embed(x)
        h, s = self._run_cell(self.cell, grid, None if state is None else state[0])
        return StepOutput(self._decode(h), [s], None)


class SwinLSTMD(_SwinLSTMBase):
    r"""SwinLSTM-D: a down path and an up path of SwinLSTM cells (OpenSTL ``SwinLSTM_D_Model``).

    With n = ``len(depths_downsample)``, E = ``embed_dim`` and R = H/2, one step::

        z = LN(Conv_{2x2, stride 2}(x_t))                           # (R, R, E)
        for i in 0..n-1:
            z, s↓_i = Cell↓_i(z, s↓_i)      # (R/2^i, E 2^i): depths_downsample[i], num_heads[i]
            z = PatchMerging_i(z)           # -> (R/2^{i+1}, E 2^{i+1})
        for j in 0..n-1:
            z, s↑_j = Cell↑_j(z, s↑_j)      # (R/2^{n-j}, E 2^{n-j}): depths_upsample[n-1-j],
            z = PatchExpanding_j(z)         #   num_heads[n-1-j]  -> (R/2^{n-j-1}, E 2^{n-j-1})
        x̂_{t+1} = σ(ConvTranspose_{3x3, stride 2}(z))               # (B, C_out, H, W)

    Every cell keeps its own ``(h, c)``; the first up cell runs at the bottleneck. The
    defaults are OpenSTL's Moving MNIST configuration (``configs/mmnist/SwinLSTM-D.py``):
    E 128, depths (2, 6) / (6, 2), heads (4, 8), window 4, patch 2.

    Stochastic depth as the reference: ``linspace(0, drop_path_rate, Σ depths)`` over each
    path; down cell i's block k gets its entry, up cells take theirs in reverse block
    order.

    Differences from the reference: the dead ``red`` weights of odd blocks and the unused
    ``Upsample.patch_embed`` are left out (18,845,409 parameters instead of 20,191,969 at
    the MMNIST configuration); H and W need not be equal and are not fixed at construction
    (divisible by the model's size multiple, 32 at the MMNIST configuration); states follow
    the input's dtype.

    Args:
        in_channels: image channels C.
        out_channels: predicted channels (default C).
        image_size: ``H`` or ``(H, W)`` the model is built for: only used to clamp each
            cell's window to maps smaller than it (timm's rule). ``None``: no clamp.
        patch_size: must be 2.
        embed_dim: E.
        depths_downsample: blocks of each down cell.
        depths_upsample: blocks of the up cells in OpenSTL's order: entry i belongs to the
            up cell at the resolution after PatchMerging i (up cell j, counted from the
            bottleneck, has ``depths_upsample[n-1-j]`` blocks).
        num_heads: heads per level (down cell i: ``num_heads[i]``, up cell j:
            ``num_heads[n-1-j]``).
        window_size: one window for every cell, or one per cell (down cells, then up cells;
            the loader passes the reference's per-cell windows).
        mlp_ratio: MLP width / channels.
        qkv_bias: bias of the qkv projections.
        drop_path_rate: the largest stochastic-depth rate.
        checkpoint_steps: recompute each time step in backward.
        device, dtype: factory arguments.
    """

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int | None = None,
        *,
        image_size: int | tuple[int, int] | None = None,
        patch_size: int = 2,
        embed_dim: int = 128,
        depths_downsample: Sequence[int] = (2, 6),
        depths_upsample: Sequence[int] = (6, 2),
        num_heads: Sequence[int] = (4, 8),
        window_size: int | Sequence[int] = 4,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop_path_rate: float = 0.1,
        checkpoint_steps: bool = False,
        device: Device = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self._setup(
            in_channels,
            out_channels,
            image_size,
            patch_size,
            embed_dim,
            mlp_ratio,
            drop_path_rate,
            checkpoint_steps,
        )
        down = self._int_list("depths_downsample", depths_downsample)
        n = len(down)
        up = self._int_list("depths_upsample", depths_upsample)
        heads = self._int_list("num_heads", num_heads)
        for name, values in (("depths_upsample", up), ("num_heads", heads)):
            if len(values) != n:
                raise ValueError(
                    f"{name} must have one entry per level, len(depths_downsample)={n}; got "
                    f"{values}"
                )
        self.depths_downsample = tuple(down)
        self.depths_upsample = tuple(up)
        self.num_heads = tuple(heads)
        windows = self._windows(window_size, n)
        kwargs: dict[str, Any] = {
            "mlp_ratio": mlp_ratio,
            "qkv_bias": qkv_bias,
            "device": device,
            "dtype": dtype,
        }
        e = self.embed_dim
        dpr = _linspace(self.drop_path_rate, sum(down))
        self.down = nn.ModuleList(
            SwinLSTMCell(
                e * 2**i,
                heads[i],
                windows[i],
                down[i],
                drop_path=dpr[sum(down[:i]) : sum(down[: i + 1])],
                **kwargs,
            )
            for i in range(n)
        )
        self.merge = nn.ModuleList(
            PatchMerging(e * 2**i, device=device, dtype=dtype) for i in range(n)
        )
        dpr = _linspace(self.drop_path_rate, sum(up))
        self.up = nn.ModuleList(
            SwinLSTMCell(
                e * 2 ** (n - j),
                heads[n - 1 - j],
                windows[n + j],
                up[n - 1 - j],
                drop_path=dpr[sum(up[: n - 1 - j]) : sum(up[: n - j])][::-1],
                **kwargs,
            )
            for j in range(n)
        )
        self.expand = nn.ModuleList(
            PatchExpanding(e * 2 ** (n - j), device=device, dtype=dtype) for j in range(n)
        )
        self._build_head(device, dtype)

    @staticmethod
    def _int_list(name: str, values: object) -> list[int]:
        if not isinstance(values, Sequence) or isinstance(values, str) or not values:
            raise ValueError(
                f"{name} must be a non-empty sequence of positive ints; got {values!r}"
            )
        return [check_positive_int(name, v) for v in values]

    def _windows(self, window_size: int | Sequence[int], n: int) -> list[int]:
        levels = list(range(n)) + [n - j for j in range(n)]
        if isinstance(window_size, Sequence) and not isinstance(window_size, str):
            windows = [check_positive_int("window_size", w) for w in window_size]
            if len(windows) != 2 * n:
                raise ValueError(
                    f"window_size must be one int or one per cell ({2 * n}: the down cells, "
                    f"then the up cells); got {list(window_size)}"
                )
        else:
            windows = [check_positive_int("window_size", window_size)] * (2 * n)
        return [_clamped_window(w, self._grid(lvl)) for w, lvl in zip(windows, levels, strict=True)]

    def _cell_levels(self) -> list[tuple[SwinLSTMCell, int]]:
        n = len(self.down)
        cells: list[tuple[SwinLSTMCell, int]] = []
        for i, cell in enumerate(self.down):
            assert isinstance(cell, SwinLSTMCell)
            cells.append((cell, i))
        for j, cell in enumerate(self.up):
            assert isinstance(cell, SwinLSTMCell)
            cells.append((cell, n - j))
        return cells

    def _size_multiple(self) -> int:
        return _lcm([super()._size_multiple(), self.patch_size * 2 ** len(self.down)])

    def _step_impl(self, x: Tensor, state: Any, action: Tensor | None) -> StepOutput:
        n = len(self.down)
        states: list[SwinLSTMState | None] = [None] * (2 * n) if state is None else list(state)
        new: list[SwinLSTMState] = []
        grid = self.patch_embed(x)
        resample = [*self.merge, *self.expand]
        for k, (cell, _) in enumerate(self._cell_levels()):
            h, s = self._run_cell(cell, grid, states[k])
            new.append(s)
            grid = resample[k](h)
        return StepOutput(self._decode(grid), new, None)

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, depths_downsample={self.depths_downsample}, "
            f"depths_upsample={self.depths_upsample}, num_heads={self.num_heads}"
        )


_VARIANTS: dict[str, type[_SwinLSTMBase]] = {"B": SwinLSTMB, "D": SwinLSTMD}


def build_swinlstm(variant: Literal["B", "D"] = "D", **options: Any) -> SwinLSTMB | SwinLSTMD:
    """The preset builder: :class:`SwinLSTMD` (``variant="D"``) or :class:`SwinLSTMB`.

    Options the chosen variant does not take raise ``TypeError`` naming them.
    """
    check_choice("variant", variant, tuple(_VARIANTS))
    cls = _VARIANTS[variant]
    accepted = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
    check_options(f"SwinLSTM-{variant}", options, accepted)
    model = cls(**options)
    assert isinstance(model, (SwinLSTMB, SwinLSTMD))
    return model


# --------------------------------------------------------------------------------- presets
def _register_presets() -> None:
    from stpl.registry import register_preset

    common = {
        "in_channels": 1,
        "image_size": 64,
        "patch_size": 2,
        "embed_dim": 128,
        "window_size": 4,
    }
    register_preset(
        "swinlstm",
        build_swinlstm,
        {"variant": "D", **common},
        small={
            "image_size": 16,
            "embed_dim": 8,
            "window_size": 2,
            "depths_downsample": (2,),
            "depths_upsample": (1,),
            "num_heads": (2,),
        },
        description=(
            "SwinLSTM-D (ICCV 2023), OpenSTL's Moving MNIST configuration "
            "(depths 2,6 / 6,2, heads 4,8); variant='B' for SwinLSTM-B"
        ),
    )
    register_preset(
        "swinlstm_b",
        build_swinlstm,
        {"variant": "B", **common},
        small={"image_size": 16, "embed_dim": 8, "window_size": 2, "depths": 2, "num_heads": 2},
        description="SwinLSTM-B (ICCV 2023), OpenSTL's SwinLSTM-B model (depth 12, 4 heads)",
    )


_register_presets()
