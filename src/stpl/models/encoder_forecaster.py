"""The encoder-forecaster of Shi et al. (NeurIPS 2017), the HKO-7 nowcasting baseline.

Frames go down through an encoder of recurrent blocks at decreasing resolutions; the
forecaster runs the blocks in reverse order, from the encoder's final states, with
upsampling in between, and outputs the predicted frames. Nothing predicted is fed back:
it is a sequence-to-sequence model (``predicts_every_step = False``).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from stpl._validation import (
    check_bool,
    check_choice,
    check_int,
    check_options,
    check_positive_int,
    check_real,
)
from stpl.cells._registry import CELLS
from stpl.cells._registry import cell_options as _options_of
from stpl.cells._toolkit import Device, check_state, factory_kwargs, reset_module_parameters
from stpl.cells.convgru import hko7_init_
from stpl.models._base import (
    Generation,
    PredictorOutput,
    RecurrentPredictor,
    StepOutput,
    StreamState,
)
from stpl.models._compile import PerDeviceCompiled

__all__ = ["EncoderForecaster", "Sampling", "build_encoder_forecaster"]

Sampling = tuple[int, int, int]
"""``(kernel, stride, padding)`` of one down- or upsampling convolution."""

Layout = Literal["official", "hzzone"]

HKO7_DOWNSAMPLE: tuple[Sampling, ...] = ((7, 5, 1), (5, 3, 1), (3, 2, 1))
"""HKO-7: the stem (480 -> 96), then 96 -> 32 and 32 -> 16."""

HKO7_UPSAMPLE: tuple[Sampling, ...] = ((7, 5, 1), (5, 3, 1), (4, 2, 1))
"""HKO-7: out of block 0 (96 -> 480, the head), of block 1 (32 -> 96), of block 2 (16 -> 32)."""

HKO7_LINKS: tuple[int, ...] = (13, 13, 9)
"""TrajGRU links of the HKO-7 configuration, per block (bottom to top)."""


def _cell_step_fn(cls: type[nn.Module]) -> Callable[[], Callable[..., Any]]:
    """What ``compile_step`` compiles for a cell class: its unbound ``step`` (GRU cells,
    which read a projected input) or ``forward``, called with the cell, so that a copy of
    the model (deepcopy) steps its own weights through the same compiled function."""
    fn = getattr(cls, "step", None) or cls.forward
    return lambda: fn


def _sampling(name: str, value: object, count: int) -> tuple[Sampling, ...]:
    if (
        not isinstance(value, Sequence)
        or len(value) != count
        or not all(
            isinstance(v, Sequence)
            and len(v) == 3
            and all(isinstance(n, int) and not isinstance(n, bool) for n in v)
            and v[0] >= 1
            and v[1] >= 1
            and v[2] >= 0
            for v in value
        )
    ):
        raise ValueError(
            f"{name} must be {count} (kernel, stride, padding) triples, one per block; "
            f"got {value!r}"
        )
    return tuple((int(k), int(s), int(p)) for k, s, p in value)


def _per_block(name: str, value: object, count: int, minimum: int = 1) -> tuple[int, ...]:
    if isinstance(value, Sequence) and not isinstance(value, str):
        if len(value) != count:
            raise ValueError(f"{name} must have one entry per block ({count}); got {list(value)}")
        return tuple(check_int(name, v, minimum=minimum) for v in value)
    return (check_int(name, value, minimum=minimum),) * count


class EncoderForecaster(RecurrentPredictor):
    r"""Shi et al.'s encoder-forecaster (ConvGRU / TrajGRU blocks), official layout by default.

    With N blocks (HKO-7: 3), ``lrelu`` = LeakyReLU(0.2) and all convolutions applied to
    every frame (time folded into the batch)::

        encoder:     x = lrelu(stem(frame))                       # C -> stem_channels
                     block 0 (cells over the frames, zero state)  # hidden[0]
                     x = lrelu(down_1(h_0));  block 1 ...         # hidden[0] -> hidden[1]
                     ... up to block N-1
        forecaster:  block N-1 runs `horizon` steps with no input from the encoder's
                     final state of block N-1
                     x = lrelu(up_{N-1}(h)); block N-2 runs from the encoder's state
                     of block N-2 with these inputs ... down to block 0
                     y = lrelu(head_deconv(h_0)); y = lrelu(head_conv(y)); out = head_out(y)

    Predictions are unbounded (the HKO-7 evaluation clips them to [0, 1]).

    Layouts (spec ``nowcasting.md`` sections 3 and 8):

    * ``"official"`` (default, sxjscience/HKO-7): the upsampling out of block i keeps block
      i's width (``hidden[i]``), deconvolutions have no bias, the forecaster's block i has
      the encoder's link count ``links[i]``.
    * ``"hzzone"`` (Hzzone/Precipitation-Nowcasting): the upsampling maps to the lower
      block's width (``hidden[i-1]``), deconvolutions have biases, and the forecaster's link
      counts are the encoder's reversed. The port's top forecaster block owns input
      weights it never uses; they are not built here.

    The TrajGRU warp follows the official corner convention unless ``align_corners=False``
    is given as a cell option (the port as it runs on PyTorch >= 1.3).

    Contract (:class:`~stpl.models.RecurrentPredictor`, adapted to a model that reads a
    context and then forecasts):

    * ``forward(frames, context)`` reads ``frames[:, :context]`` and predicts frames
      ``context .. T-1``: ``predictions (B, T - context, C_out, H, W)``; ``state`` is the
      encoder's state after the context.
    * ``observe(frames, state)`` runs the encoder over new frames (any chunking gives the
      same state); ``pending`` is the forecaster's first frame from that state.
    * ``forecast(state, horizon)`` runs the forecaster from the encoder's state without
      changing it; ``generate(ctx, horizon)`` is ``observe`` then ``forecast``, and its
      state is the one after the context (the forecaster never reads its predictions, so
      there is nothing more to read); ``pending`` is the first prediction.

    Args:
        cell: ``"trajgru"``, ``"convgru"`` or any name in :data:`stpl.CELLS`, or a callable
            ``(in_channels, hidden_channels, kernel_size, **options) -> cell``. Cells with
            ``accepts_no_input`` (the GRU cells) are built without input weights for the
            top forecaster block; others read zeros there.
        in_channels: image channels C.
        out_channels: predicted channels (default C).
        hidden_channels: width of each block, bottom to top; an int repeats it 3 times.
        kernel_size: state-to-state kernel per block (HKO-7 ``H2H_KERNEL`` 5, 5, 3; unused
            by TrajGRU, which has none).
        layout: ``"official"`` or ``"hzzone"``.
        links: TrajGRU links per block (encoder and, in the official layout, forecaster);
            only for cells that take ``links``.
        forecaster_links: the forecaster's links per block (default: ``links``, reversed in
            the ``"hzzone"`` layout).
        stem_channels: channels of the first convolution (``FIRST_CONV``, 8).
        head_channels: channels of the head (``LAST_DECONV``, 8).
        downsample: ``(k, s, p)`` into block i: the stem for i = 0, else from block i-1.
        upsample: ``(k, s, p)`` out of block i: the head deconvolution for i = 0, else into
            block i-1.
        upsample_channels: output channels of the upsampling out of blocks 1..N-1 (default
            from the layout).
        deconv_bias: biases on the deconvolutions (default from the layout).
        negative_slope: slope of the LeakyReLUs between layers.
        init: ``"pytorch"`` (the port) or ``"hko7"`` (official: MSRAPrelu(0.2) weights, zero
            biases, zero TrajGRU flows), also passed to cells that take ``init``.
        checkpoint_steps: recompute each cell step in backward (activation checkpointing).
        device, dtype: where and in which dtype to create the parameters.
        **cell_options: forwarded to every cell (``align_corners=False``, ``flow_channels``,
            ``activation``, ...); an option the cell does not take raises ``TypeError``.
    """

    predicts_every_step = False
    """``forward`` returns the ``T - context`` frames after the context, not one per step."""

    def __init__(
        self,
        cell: str | Callable[..., nn.Module] = "trajgru",
        in_channels: int = 1,
        out_channels: int | None = None,
        hidden_channels: int | Sequence[int] = (64, 192, 192),
        kernel_size: int | Sequence[int] = (5, 5, 3),
        *,
        layout: Layout = "official",
        links: int | Sequence[int] | None = None,
        forecaster_links: int | Sequence[int] | None = None,
        stem_channels: int = 8,
        head_channels: int = 8,
        downsample: Sequence[Sampling] = HKO7_DOWNSAMPLE,
        upsample: Sequence[Sampling] = HKO7_UPSAMPLE,
        upsample_channels: Sequence[int] | None = None,
        deconv_bias: bool | None = None,
        negative_slope: float = 0.2,
        init: Literal["pytorch", "hko7"] = "pytorch",
        checkpoint_steps: bool = False,
        device: Device = None,
        dtype: torch.dtype | None = None,
        **cell_options: Any,
    ) -> None:
        super().__init__()
        self.in_channels = check_positive_int("in_channels", in_channels)
        self.out_channels = check_positive_int(
            "out_channels", in_channels if out_channels is None else out_channels
        )
        if isinstance(hidden_channels, Sequence) and not isinstance(hidden_channels, str):
            hidden = tuple(check_positive_int("hidden_channels", h) for h in hidden_channels)
            if not hidden:
                raise ValueError("hidden_channels must not be empty")
        else:
            hidden = (check_positive_int("hidden_channels", hidden_channels),) * 3
        n = len(hidden)
        self.num_blocks = n
        self.hidden_channels = hidden
        self.kernel_size = _per_block("kernel_size", kernel_size, n)
        self.layout: Layout = check_choice("layout", layout, ("official", "hzzone"))
        self.stem_channels = check_positive_int("stem_channels", stem_channels)
        self.head_channels = check_positive_int("head_channels", head_channels)
        self.downsample = _sampling("downsample", downsample, n)
        self.upsample = _sampling("upsample", upsample, n)
        official = self.layout == "official"
        if upsample_channels is None:
            ups = tuple(hidden[i] if official else hidden[i - 1] for i in range(1, n))
        else:
            ups = tuple(check_positive_int("upsample_channels", c) for c in upsample_channels)
            if len(ups) != n - 1:
                raise ValueError(
                    f"upsample_channels must have one entry per upsampling between blocks "
                    f"({n - 1}); got {list(upsample_channels)}"
                )
        self.upsample_channels = ups
        self.deconv_bias = (
            (not official) if deconv_bias is None else check_bool("deconv_bias", deconv_bias)
        )
        self.negative_slope = check_real("negative_slope", negative_slope)
        self.init = check_choice("init", init, ("pytorch", "hko7"))
        self.checkpoint_steps = check_bool("checkpoint_steps", checkpoint_steps)
        self._compiled_step = None
        self._compiled_cells: list[Callable[..., Any]] | None = None
        self._dynamic_batch = True

        # ------------------------------------------------------------ cells
        if isinstance(cell, str):
            check_choice("cell", cell, tuple(CELLS))
            factory: Callable[..., nn.Module] = CELLS[cell]
            accepted: set[str] | None = set(_options_of(CELLS[cell]))
        elif callable(cell):
            factory, accepted = cell, None
        else:
            raise ValueError(f"cell must be a name in stpl.CELLS or a callable; got {cell!r}")
        self.cell_name = cell if isinstance(cell, str) else getattr(cell, "__name__", "custom")
        opts = dict(cell_options)
        enc_links = fc_links = None
        if links is not None:
            enc_links = _per_block("links", links, n)
            fc_links = enc_links if official else enc_links[::-1]
        if forecaster_links is not None:
            if links is None:
                raise ValueError("forecaster_links needs links (the encoder's) too")
            fc_links = _per_block("forecaster_links", forecaster_links, n)
        if accepted is not None:
            extra = {"links"} if links is not None else set()
            extra |= {"init"} if init != "pytorch" else set()
            check_options(f"EncoderForecaster(cell={cell!r})", opts, accepted)
            unknown = sorted(extra - accepted)
            if unknown:
                raise TypeError(
                    f"EncoderForecaster(cell={cell!r}) got {unknown[0]}=..., which cell "
                    f"{cell!r} does not take"
                )
            pass_init = "init" in accepted
        else:
            pass_init = False
        if pass_init:
            opts["init"] = init
        cell_cls = CELLS[cell] if isinstance(cell, str) else cell
        no_input = bool(getattr(cell_cls, "accepts_no_input", False))
        self._top_takes_zeros = not no_input

        def make(part: str, i: int, c_in: int) -> nn.Module:
            kw = dict(opts)
            block_links = enc_links if part == "encoder" else fc_links
            if block_links is not None:
                kw["links"] = block_links[i]
            if accepted is not None:  # a registered cell: torch.nn-style factory arguments
                kw.update(device=device, dtype=dtype)
            return factory(c_in, hidden[i], self.kernel_size[i], **kw)

        enc_in = [self.stem_channels, *hidden[1:]]
        fc_in = [*ups, 0 if no_input else hidden[-1]]
        self.encoder = nn.ModuleList(make("encoder", i, enc_in[i]) for i in range(n))
        self.forecaster = nn.ModuleList(make("forecaster", i, fc_in[i]) for i in range(n))

        # ------------------------------------------------------------ convolutions
        fk = factory_kwargs(device, dtype)
        k, s, p = self.downsample[0]
        self.stem = nn.Conv2d(self.in_channels, self.stem_channels, k, s, p, **fk)
        self.down = nn.ModuleList(
            nn.Conv2d(hidden[i - 1], hidden[i], *self.downsample[i], **fk) for i in range(1, n)
        )
        self.up = nn.ModuleList(
            nn.ConvTranspose2d(
                hidden[i], ups[i - 1], *self.upsample[i], bias=self.deconv_bias, **fk
            )
            for i in range(1, n)
        )
        k, s, p = self.upsample[0]
        self.head_deconv = nn.ConvTranspose2d(
            hidden[0], self.head_channels, k, s, p, bias=self.deconv_bias, **fk
        )
        self.head_conv = nn.Conv2d(self.head_channels, self.head_channels, 3, 1, 1, **fk)
        self.head_out = nn.Conv2d(self.head_channels, self.out_channels, 1, **fk)
        if self.init == "hko7":
            self._hko7_init_layers()

    # ---------------------------------------------------------------- parameters
    def _layers(self) -> list[nn.Module]:
        return [self.stem, *self.down, *self.up, self.head_deconv, self.head_conv, self.head_out]

    def _hko7_init_layers(self) -> None:
        for layer in self._layers():
            hko7_init_(layer, 0.2)

    def reset_parameters(self) -> None:
        """Re-initialise every parameter (``init`` decides how)."""
        reset_module_parameters(self)
        if self.init == "hko7":
            self._hko7_init_layers()

    # ---------------------------------------------------------------- sizes and states
    def map_sizes(self, height: int, width: int) -> list[tuple[int, int]]:
        """``(h, w)`` of each block's maps for ``height x width`` frames.

        Raises:
            ValueError: the frames are too small, or the upsampling does not come back to
                the same sizes (with HKO-7's strides a side must be a multiple of 30).
        """
        sizes: list[tuple[int, int]] = []
        h, w = height, width
        for i, (k, s, p) in enumerate(self.downsample):
            h, w = (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
            if h < 1 or w < 1:
                raise ValueError(
                    f"frames of {height}x{width} are too small for the encoder: block {i} "
                    f"would be {h}x{w}"
                )
            sizes.append((h, w))
        chain = [(height, width), *sizes]
        for i, (k, s, p) in enumerate(self.upsample):
            back = ((chain[i + 1][0] - 1) * s - 2 * p + k, (chain[i + 1][1] - 1) * s - 2 * p + k)
            if back != chain[i]:
                path = " -> ".join(f"{a}x{b}" for a, b in chain)
                raise ValueError(
                    f"frames of {height}x{width} do not come back to their size through the "
                    f"strides: the encoder maps {path}, but the upsampling out of block {i} "
                    f"gives {back[0]}x{back[1]} instead of {chain[i][0]}x{chain[i][1]} (with "
                    "the HKO-7 strides a side must be a multiple of 30, e.g. 480 or 60)"
                )
        return sizes

    def _check_spatial(self, height: int, width: int) -> None:
        self.map_sizes(height, width)

    def _check_state(self, state: Any, frames: Tensor) -> list[Any]:
        n = self.num_blocks
        if not isinstance(state, (list, tuple)) or len(state) != n:
            raise ValueError(
                f"state must be the encoder's state, one entry per block ({n}); got "
                f"{type(state).__name__}"
                + (f" of {len(state)} items" if isinstance(state, (list, tuple)) else "")
            )
        b = frames.shape[0]
        sizes = self.map_sizes(frames.shape[-2], frames.shape[-1])
        out = []
        for i, (cell, s) in enumerate(zip(self.encoder, state, strict=True)):
            st_type = getattr(cell, "state_type", None)
            if st_type is not None:
                s = check_state(f"state[{i}]", s, st_type)
            for j, t in enumerate(s):
                want = (b, self.hidden_channels[i], *sizes[i])
                if not isinstance(t, Tensor) or tuple(t.shape) != want:
                    got = tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__
                    raise ValueError(
                        f"state[{i}][{j}] must be {want} for {b} sequences of "
                        f"{frames.shape[-2]}x{frames.shape[-1]} frames; got {got}"
                    )
            out.append(s)
        return out

    def initial_state(self, frames: Tensor) -> list[Any]:
        """The encoder's zero state for frames like ``frames`` (``(B, C, H, W)`` or
        ``(B, T, C, H, W)``): one state per block; ``state=`` it equals ``state=None``."""
        if not isinstance(frames, Tensor) or frames.dim() not in (4, 5):
            got = tuple(frames.shape) if isinstance(frames, Tensor) else type(frames).__name__
            raise ValueError(f"frames must be (B, C, H, W) or (B, T, C, H, W); got {got}")
        frame = frames if frames.dim() == 4 else frames[:, 0]
        self._check_frames("frames", frame.unsqueeze(1), self.in_channels)
        b = frame.shape[0]
        states: list[Any] = []
        for cell, nh, size in zip(
            self.encoder, self.hidden_channels, self.map_sizes(*frame.shape[-2:]), strict=True
        ):
            zero = frame.new_zeros(b, nh, *size)
            states.append(cell.initial_state(zero))  # type: ignore[operator]
        return states

    # ---------------------------------------------------------------- compile
    def compile_step(
        self, enable: bool = True, *, dynamic_batch: bool = True, **compile_kwargs: Any
    ) -> EncoderForecaster:
        """Compile the recurrent step of every cell with ``torch.compile``.

        The loops over time and the per-frame convolutions (stem, down/upsampling, head,
        the cells' input convolutions, run for all frames in one call) stay eager. Each cell
        gets its own compiled step (one graph per cell and kind of step, with its own cache
        where torch supports ``isolate_recompiles``). Returns ``self``.

        Args:
            enable: ``False`` drops the compiled steps and goes back to eager.
            dynamic_batch: mark the batch dimension dynamic, so a new batch size does not
                recompile.
            **compile_kwargs: passed to ``torch.compile`` (``backend``, ``mode``, ...).
        """
        self._compiled_cells = None
        self._dynamic_batch = check_bool("dynamic_batch", dynamic_batch)
        if enable:
            kwargs = dict(compile_kwargs)
            params = inspect.signature(torch.compile).parameters
            if "isolate_recompiles" in params:
                kwargs.setdefault("isolate_recompiles", True)
            if "recompile_limit" in params:
                kwargs.setdefault("recompile_limit", 16)
            self._compiled_cells = [
                PerDeviceCompiled(_cell_step_fn(type(c)), kwargs)
                for c in (*self.encoder, *self.forecaster)
            ]
        return self

    # ---------------------------------------------------------------- the blocks
    def _act(self, x: Tensor) -> Tensor:
        return F.leaky_relu(x, self.negative_slope)

    def _cell_step(
        self, cell: nn.Module, pos: int, x: Tensor | None, state: Any
    ) -> tuple[Tensor, Any]:
        """One step of ``cell`` (number ``pos`` in encoder + forecaster order); ``x`` is its
        projected input (GRU cells) or raw input."""
        fn: Callable[..., Any]
        compiled = self._compiled_cells
        if compiled is not None:
            # a slice of a (B, T, ...) sequence has a batch stride that depends on T: copy
            x = None if x is None else x.contiguous()
            if self._dynamic_batch:
                for t in (x, *state):
                    if isinstance(t, Tensor) and t.shape[0] > 1:
                        torch._dynamo.maybe_mark_dynamic(t, 0)
        if hasattr(cell, "step"):
            step = getattr(cell, "step")  # noqa: B009
            fn = step if compiled is None else partial(compiled[pos], cell)
            h0 = state[0]
            if self.checkpoint_steps and torch.is_grad_enabled():
                out: tuple[Tensor, Any] = checkpoint(fn, x, h0, use_reentrant=False)
                return out
            return fn(x, h0)  # type: ignore[no-any-return]
        fn = cell if compiled is None else partial(compiled[pos], cell)
        if self.checkpoint_steps and torch.is_grad_enabled():
            out = checkpoint(fn, x, state, use_reentrant=False)
            return out
        return fn(x, state)  # type: ignore[no-any-return]

    def _run_block(
        self,
        cell: nn.Module,
        pos: int,
        inputs: Tensor | None,
        state: Any,
        steps: int,
        batch: int,
        size: tuple[int, int],
        like: Tensor,
        collect: bool = True,
    ) -> tuple[Tensor | None, Any]:
        """Run ``cell`` (number ``pos``) for ``steps`` steps.

        ``inputs: (B*steps, C, h, w)`` (``(B, steps)`` flattened) or None. Returns the stacked
        hidden maps ``(B*steps, C_hidden, h, w)`` (None without ``collect``) and the final
        state."""
        gru = hasattr(cell, "step")
        nh = int(getattr(cell, "hidden_channels"))  # noqa: B009
        seq: Tensor | None = None
        if inputs is not None:
            seq = cell.input_projection(inputs) if gru else inputs  # type: ignore[operator]
            seq = seq.view(batch, steps, *seq.shape[1:])
        elif self._top_takes_zeros:
            c_in = int(getattr(cell, "in_channels"))  # noqa: B009
            seq = like.new_zeros(batch, 1, c_in, *size).expand(batch, steps, c_in, *size)
        if state is None:
            zero = like.new_zeros(batch, nh, *size)
            state = (zero,) if gru else None
            if not gru:
                state = cell.initial_state(zero if seq is None else seq[:, 0])  # type: ignore[operator]
        outputs: list[Tensor] = []
        for t in range(steps):
            x = None if seq is None else seq[:, t]
            h, state = self._cell_step(cell, pos, x, state)
            if collect:
                outputs.append(h)
        if not collect:
            return None, state
        return torch.stack(outputs, dim=1).flatten(0, 1), state

    def _encode(self, frames: Tensor, states: list[Any] | None) -> list[Any]:
        """Run the encoder over ``frames: (B, T, C, H, W)`` from ``states`` (None: zeros)."""
        b, t = frames.shape[:2]
        sizes = self.map_sizes(frames.shape[-2], frames.shape[-1])
        x = self._act(self.stem(frames.flatten(0, 1)))
        new: list[Any] = []
        for i, cell in enumerate(self.encoder):
            if i > 0:
                x = self._act(self.down[i - 1](x))
            last = i == self.num_blocks - 1
            start = None if states is None else states[i]
            out, state = self._run_block(cell, i, x, start, t, b, sizes[i], x, collect=not last)
            new.append(state)
            if out is not None:
                x = out
        return new

    def _forecast(self, states: list[Any], horizon: int, like: Tensor) -> Tensor:
        """Run the forecaster for ``horizon`` steps from the encoder's ``states``."""
        b = like.shape[0]
        sizes = self.map_sizes(like.shape[-2], like.shape[-1])
        ref = states[-1][0]
        x: Tensor | None = None
        for i in reversed(range(self.num_blocks)):
            out, _ = self._run_block(
                self.forecaster[i], self.num_blocks + i, x, states[i], horizon, b, sizes[i], ref
            )
            assert out is not None
            x = self._act(self.up[i - 1](out)) if i > 0 else out
        assert x is not None
        y = self._act(self.head_deconv(x))
        y = self.head_out(self._act(self.head_conv(y)))
        predictions: Tensor = y.view(b, horizon, *y.shape[1:])
        return predictions

    def _step_impl(self, x: Tensor, state: Any, action: Tensor | None) -> StepOutput:
        """One frame ``x: (B, C, H, W)`` through the encoder; the prediction is the
        forecaster's first frame from the new state."""
        frames = x.unsqueeze(1)
        states = self._encode(frames, state)
        return StepOutput(self._forecast(states, 1, x)[:, 0], states, None)

    # ---------------------------------------------------------------- public API
    def _context(self, context: object, t_total: int) -> int:
        if context is None:
            raise ValueError(
                "context is required: an encoder-forecaster reads frames[:, :context] and "
                f"predicts the other T - context frames (T={t_total}); e.g. context=5 for HKO-7"
            )
        value = check_int("context", context, minimum=1)
        if value >= t_total:
            raise ValueError(
                f"context must be < T={t_total} (the frames after the context are the ones "
                f"predicted); got context={value}"
            )
        return value

    def forward(
        self,
        frames: Tensor,
        context: int | None = None,
        mask: Tensor | None = None,
        state: Any = None,
        actions: Tensor | None = None,
    ) -> PredictorOutput:
        """Read ``frames[:, :context]`` and predict the rest: ``(B, T - context, C_out, H, W)``.

        Args:
            frames: ``(B, T, C, H, W)``; frames after the context are targets only (their
                number sets the horizon; their values are not read).
            context: number of frames the encoder reads, ``1 <= context < T`` (required).
            mask: not supported (``None``): the forecaster never reads a frame, so there is
                nothing to mix; scheduled sampling does not apply.
            state: the encoder's state to start from (``out.state`` of an earlier call, or a
                :class:`StreamState`), or ``None`` (zeros).
            actions: not supported.

        Returns:
            :class:`PredictorOutput` with the predictions and the encoder's state after the
            context (``decouple_loss`` None).
        """
        frames = self._check_frames("frames", frames, self.in_channels, min_t=2)
        context = self._context(context, frames.shape[1])
        if mask is not None:
            raise ValueError(
                "mask must be None: an encoder-forecaster never feeds frames or predictions "
                "to its forecaster, so there is nothing for a sampling mask to mix"
            )
        if actions is not None:
            raise ValueError("actions were given, but EncoderForecaster takes no actions")
        states = self._unwrap_state(state, frames)
        states = self._encode(frames[:, :context], states)
        predictions = self._forecast(states, frames.shape[1] - context, frames[:, 0])
        return PredictorOutput(predictions, states, None)

    @torch.no_grad()
    def observe(
        self, frames: Tensor, state: StreamState | None = None, *, actions: Tensor | None = None
    ) -> StreamState:
        """Run the encoder over ``frames: (B, T, C, H, W)`` (T >= 1 new frames).

        Any chunking of a stream gives the same state as one call on all frames.

        Returns:
            A :class:`StreamState` with the encoder's state and ``pending``, the forecaster's
            first frame from it ``(B, C_out, H, W)``.
        """
        frames = self._check_frames("frames", frames, self.in_channels, min_t=1)
        if actions is not None:
            raise ValueError("actions were given, but EncoderForecaster takes no actions")
        states = self._encode(frames, self._unwrap_state(state, frames))
        return StreamState(states, self._forecast(states, 1, frames[:, 0])[:, 0])

    @torch.no_grad()
    def forecast(
        self, state: StreamState, horizon: int, *, actions: Tensor | None = None
    ) -> Tensor:
        """Predict ``horizon`` frames from a :class:`StreamState` (the state is unchanged).

        Returns:
            ``(B, horizon, C_out, H, W)``; the first frame is ``state.pending``.
        """
        if not isinstance(state, StreamState):
            raise TypeError(
                "state must be a StreamState from model.observe(...) or model.generate(...)"
                f".state; got {type(state).__name__}"
            )
        horizon = check_positive_int("horizon", horizon)
        if actions is not None:
            raise ValueError("actions were given, but EncoderForecaster takes no actions")
        like = state.pending
        if not isinstance(like, Tensor) or like.dim() != 4:
            raise ValueError("state.pending must be a (B, C, H, W) tensor")
        states = self._check_state(state.state, like.unsqueeze(1))
        return self._forecast(states, horizon, like)

    @torch.no_grad()
    def generate(
        self,
        context_frames: Tensor,
        horizon: int,
        *,
        state: Any = None,
        actions: Tensor | None = None,
    ) -> Generation:
        """Read ``context_frames: (B, T_c, C, H, W)``, then forecast ``horizon`` frames.

        Returns:
            :class:`Generation`: ``predictions (B, horizon, C_out, H, W)`` and the
            :class:`StreamState` after the context (``pending`` = the first prediction):
            ``forecast(gen.state, horizon)`` gives the same predictions, and true frames
            observed from that state continue the stream after the context.
        """
        frames = self._check_frames("context_frames", context_frames, self.in_channels, min_t=1)
        horizon = check_positive_int("horizon", horizon)
        if actions is not None:
            raise ValueError("actions were given, but EncoderForecaster takes no actions")
        states = self._encode(frames, self._unwrap_state(state, frames))
        predictions = self._forecast(states, horizon, frames[:, 0])
        return Generation(predictions, StreamState(states, predictions[:, 0]))

    def extra_repr(self) -> str:
        return (
            f"cell={self.cell_name!r}, layout={self.layout!r}, in_channels={self.in_channels}, "
            f"out_channels={self.out_channels}, hidden_channels={self.hidden_channels}, "
            f"kernel_size={self.kernel_size}, downsample={self.downsample}, "
            f"upsample={self.upsample}, upsample_channels={self.upsample_channels}, "
            f"deconv_bias={self.deconv_bias}, init={self.init!r}"
        )


# --------------------------------------------------------------------------------------------
# preset


def build_encoder_forecaster(**options: Any) -> EncoderForecaster:
    """:class:`EncoderForecaster` from preset options.

    ``links`` defaults to HKO-7's (13, 13, 9) when the cell is ``"trajgru"``;
    ``image_size`` (the configuration's frame size, 480 for HKO-7, which the benchmark tool
    uses) does not change the model: it runs at any frame size its strides bring back
    (:meth:`EncoderForecaster.map_sizes`).
    """
    options = dict(options)
    options.pop("image_size", None)
    if options.get("cell", "trajgru") == "trajgru" and "links" not in options:
        hidden = options.get("hidden_channels", (64, 192, 192))
        n = len(hidden) if isinstance(hidden, Sequence) else 3
        options["links"] = HKO7_LINKS if n == 3 else HKO7_LINKS[-1]
    return EncoderForecaster(**options)


def _register() -> None:
    from stpl.registry import register_preset

    register_preset(
        "encoder_forecaster",
        build_encoder_forecaster,
        {
            "cell": "trajgru",
            "in_channels": 1,
            "hidden_channels": (64, 192, 192),
            "kernel_size": (5, 5, 3),
            "layout": "official",
            "image_size": 480,
        },
        # a tiny instance at 32x32 (strides 2; the HKO-7 strides need sides that are multiples
        # of 30), initialised like the official code but with random flows (INIT_GRID off):
        # zero flows would give the flow generator no gradient in a one-step smoke test
        small={
            "hidden_channels": (4, 6, 8),
            "stem_channels": 3,
            "head_channels": 3,
            "links": (3, 2, 2),
            "flow_channels": 8,
            "flow_kernel_size": 3,
            "downsample": ((3, 2, 1), (3, 2, 1), (3, 2, 1)),
            "upsample": ((4, 2, 1), (4, 2, 1), (4, 2, 1)),
            "init": "hko7",
            "zero_init_flows": False,
        },
        frame_shape=(1, 32, 32),
        description=(
            "Shi et al. 2017 encoder-forecaster, HKO-7 configuration (TrajGRU 64-192-192, "
            "L 13-13-9, 480x480 frames; cell='convgru' for ConvGRU), official layout"
        ),
    )


_register()
