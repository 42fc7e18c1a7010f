"""The Encoder-Stack-Decoder video predictor: patches, a stack of cells, a decoder."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal, NamedTuple

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from stpl.cells import ConvLSTMCell, MoDeRNNCell, STLSTMCell, STLSTMState
from stpl.cells._toolkit import check_kernel_size, check_positive_int
from stpl.patching import PatchOrder, check_divisible, check_patch_order, patchify, unpatchify
from stpl.training import decoupling_term

CellFactory = Callable[[int, int], nn.Module]
"""A callable ``(in_channels, hidden_channels) -> cell``; the cell maps
``(x, state) -> (h, state)`` like the cells of :mod:`stpl.cells`."""

LayerState = tuple[Tensor, ...]
"""One layer's state: :class:`stpl.LSTMState` or :class:`stpl.STLSTMState`."""

CELLS: dict[str, type[nn.Module]] = {
    "convlstm": ConvLSTMCell,
    "stlstm": STLSTMCell,
    "modernn": MoDeRNNCell,
}
"""Cells the predictor can build by name (``cell="stlstm"``)."""


class PredictorOutput(NamedTuple):
    """What :meth:`EncoderStackDecoder.forward` returns.

    Attributes:
        predictions: ``(B, T-1, C_out, H, W)``; step t predicts frame t+1.
        state: one state per layer after the last step; pass it back as ``state=`` to go on.
        decouple_loss: PredRNN-V2's decoupling term (scalar), or ``None`` without an adapter.
    """

    predictions: Tensor
    state: list[LayerState]
    decouple_loss: Tensor | None


class EncoderStackDecoder(nn.Module):
    """Video predictor: patching, optional 1x1 encoder, a stack of cells, a 1x1 decoder.

    Frames ``(B, T, C, H, W)`` are cut into patches ``(B, T, p*p*C, H/p, W/p)``; each step
    encodes one frame, runs it up the stack of cells and decodes the top hidden state into
    the next frame. Cells with a spatiotemporal memory (``STLSTMCell``) pass it zigzag:
    layer l at step t gets it from layer l-1 at step t, layer 0 from the top layer at t-1.

    Step semantics (PredRNN's): for t = 0 .. T-2 the input of step t is ``frames[:, t]``
    when ``t < context``, else ``mask[:, t-1] * frames[:, t] + (1 - mask[:, t-1]) * pred``
    (the previous prediction alone when ``mask`` is None).

    Args:
        cell: a name in :data:`CELLS` (``"convlstm"``, ``"stlstm"``, ``"modernn"``) or a
            callable ``(in_channels, hidden_channels) -> cell``.
        in_channels: image channels C.
        out_channels: predicted channels (default ``in_channels``); when it differs, the
            predictor cannot feed its predictions back, so every step must be in context.
        hidden_channels: one int for every layer, or one per layer.
        num_layers: number of stacked cells (inferred from a list of ``hidden_channels``).
        patch_size: space-to-depth factor p.
        kernel_size: gate kernel size of the named cells.
        patch_order: channel order inside a patch (see :mod:`stpl.patching`).
        encoder: ``None`` (patches go straight into layer 0, as PredRNN) or ``"conv1x1"``
            (a 1x1 convolution to ``hidden_channels[0]``, as MoDeRNN's embed).
        encoder_bias: bias of the 1x1 encoder.
        decoder_bias: bias of the 1x1 decoder (PredRNN: no, MoDeRNN: yes).
        decoupling: add PredRNN-V2's shared 1x1 adapter and return the decoupling term
            (cells with increments only).
        action_channels: A, to condition on actions (PredRNN-V2 style, cells that accept
            ``action=``): actions ``(B, T, A)`` are tiled over space, maps ``(B, T, A, H, W)``
            taken as they are; both are patched like the frames and given to every layer.
        checkpoint_steps: recompute each time step in backward (activation checkpointing).
        **cell_options: forwarded to every named cell (``norm=``, ``spatial_size=``, ...).
    """

    def __init__(
        self,
        cell: str | CellFactory = "stlstm",
        in_channels: int = 1,
        out_channels: int | None = None,
        hidden_channels: int | Sequence[int] = 64,
        num_layers: int = 4,
        patch_size: int = 4,
        kernel_size: int = 5,
        *,
        patch_order: PatchOrder = "predrnn",
        encoder: Literal["conv1x1"] | None = None,
        encoder_bias: bool = True,
        decoder_bias: bool = False,
        decoupling: bool = False,
        action_channels: int | None = None,
        checkpoint_steps: bool = False,
        **cell_options: Any,
    ) -> None:
        super().__init__()
        self.in_channels = check_positive_int("in_channels", in_channels)
        self.out_channels = check_positive_int(
            "out_channels", in_channels if out_channels is None else out_channels
        )
        if isinstance(hidden_channels, int):
            self.num_layers = check_positive_int("num_layers", num_layers)
            hidden = [check_positive_int("hidden_channels", hidden_channels)] * self.num_layers
        else:
            hidden = [check_positive_int("hidden_channels", h) for h in hidden_channels]
            if not hidden:
                raise ValueError("hidden_channels must not be empty")
            self.num_layers = len(hidden)
        self.hidden_channels = tuple(hidden)
        self.patch_size = check_positive_int("patch_size", patch_size)
        self.kernel_size = check_kernel_size("kernel_size", kernel_size)
        self.patch_order = check_patch_order(patch_order)
        if encoder not in (None, "conv1x1"):
            raise ValueError(f"encoder must be None or 'conv1x1'; got {encoder!r}")
        self.action_channels = (
            None
            if action_channels is None
            else check_positive_int("action_channels", action_channels)
        )
        self.checkpoint_steps = bool(checkpoint_steps)
        self._compiled_step: Callable[..., Any] | None = None
        p2 = self.patch_size**2
        self.encoder: nn.Conv2d | None = None
        layer_in = p2 * self.in_channels
        if encoder == "conv1x1":
            self.encoder = nn.Conv2d(layer_in, hidden[0], 1, bias=encoder_bias)
            layer_in = hidden[0]

        factory = self._factory(cell, cell_options)
        cells = []
        for layer, nh in enumerate(hidden):
            cells.append(factory(layer_in if layer == 0 else hidden[layer - 1], nh))
        self.cells = nn.ModuleList(cells)
        self.cell_name = cell if isinstance(cell, str) else getattr(cell, "__name__", "custom")
        self.zigzag = bool(getattr(self.cells[0], "zigzag_memory", False))
        if self.zigzag and len(set(hidden)) != 1:
            raise ValueError(
                "cells with a zigzag memory need equal hidden_channels in every layer "
                f"(the memory passes from layer to layer); got {hidden}"
            )
        self.decoder = nn.Conv2d(hidden[-1], p2 * self.out_channels, 1, bias=decoder_bias)
        self.adapter: nn.Conv2d | None = None
        if decoupling:
            if not all(hasattr(c, "forward_with_increments") for c in self.cells):
                raise ValueError(
                    "decoupling=True needs cells that return memory increments (e.g. 'stlstm')"
                )
            self.adapter = nn.Conv2d(hidden[0], hidden[0], 1, bias=False)

    def _factory(self, cell: str | CellFactory, options: dict[str, Any]) -> CellFactory:
        if isinstance(cell, str):
            if cell not in CELLS:
                raise ValueError(f"unknown cell {cell!r}; known cells: {sorted(CELLS)}")
            cls = CELLS[cell]
            kernel = self.kernel_size
            if self.action_channels is not None:
                if cell != "stlstm":
                    raise ValueError(
                        f"action_channels needs a cell that takes actions ('stlstm'); "
                        f"got cell={cell!r}"
                    )
                options = {**options, "action_channels": self.action_channels * self.patch_size**2}

            def build(c_in: int, c_hidden: int) -> nn.Module:
                return cls(c_in, c_hidden, kernel, **options)

            return build
        if not callable(cell):
            raise ValueError(f"cell must be a registered name or a callable; got {cell!r}")
        if options:
            raise ValueError(
                f"cell options {sorted(options)} apply to named cells only; "
                "bind them in your cell factory instead"
            )
        return cell

    # ------------------------------------------------------------------ checks
    def _check_frames(self, name: str, frames: object, channels: int) -> Tensor:
        if not isinstance(frames, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor; got {type(frames).__name__}")
        if frames.dim() != 5:
            raise ValueError(f"{name} must be (B, T, C, H, W); got shape {tuple(frames.shape)}")
        if frames.shape[2] != channels:
            raise ValueError(
                f"{name} must have C={channels} channels, (B, T, {channels}, H, W); "
                f"got shape {tuple(frames.shape)}"
            )
        if not frames.is_floating_point():
            raise ValueError(f"{name} must be a floating tensor; got dtype {frames.dtype}")
        check_divisible(frames.shape[3], frames.shape[4], self.patch_size)
        return frames

    def _check_state(self, state: Sequence[LayerState] | None) -> list[LayerState] | None:
        if state is None:
            return None
        if len(state) != self.num_layers:
            raise ValueError(
                f"state must hold one state per layer ({self.num_layers}); got {len(state)}"
            )
        return list(state)

    def _patch_actions(self, actions: Tensor | None, frames: Tensor, steps: int) -> Tensor | None:
        """Actions ``(B, T, A)`` or ``(B, T, A, H, W)`` -> patched ``(B, T, A p^2, h, w)``."""
        if self.action_channels is None:
            if actions is not None:
                raise ValueError("actions were given, but the model has action_channels=None")
            return None
        if actions is None:
            raise ValueError(
                f"this model is action conditioned (action_channels={self.action_channels}): "
                "pass actions=(B, T, A) or (B, T, A, H, W)"
            )
        b, _, _, h, w = frames.shape
        a = self.action_channels
        if actions.dim() == 3 and actions.shape[0] == b and actions.shape[2] == a:
            actions = actions[:, :, :, None, None].expand(-1, -1, -1, h, w)
        elif not (
            actions.dim() == 5 and tuple(actions.shape[2:]) == (a, h, w) and actions.shape[0] == b
        ):
            raise ValueError(
                f"actions must be (B, T, A) = ({b}, T, {a}) or (B, T, A, H, W) = "
                f"({b}, T, {a}, {h}, {w}); got shape {tuple(actions.shape)}"
            )
        if actions.shape[1] < steps:
            raise ValueError(
                f"actions must cover the {steps} steps that run; got T={actions.shape[1]}"
            )
        return patchify(actions.to(frames.dtype), self.patch_size, self.patch_order)

    def _patch_mask(self, mask: Tensor | None, frames: Tensor) -> Tensor | None:
        """Mask ``(B, T-2)`` or broadcastable to ``(B, T-2, C, H, W)`` -> patch space."""
        if mask is None:
            return None
        b, t, c, h, w = frames.shape
        if not isinstance(mask, Tensor):
            raise TypeError(f"mask must be a torch.Tensor or None; got {type(mask).__name__}")
        if mask.dim() == 2:
            mask = mask[:, :, None, None, None]
        elif 3 <= mask.dim() <= 4:  # broadcasting rules: leading dims of size 1
            mask = mask.reshape((1,) * (5 - mask.dim()) + tuple(mask.shape))
        if mask.dim() != 5:
            raise ValueError(
                f"mask must be (B, T-2) = ({b}, {t - 2}) or broadcastable to (B, T-2, C, H, W) = "
                f"({b}, {t - 2}, {c}, {h}, {w}); got shape {tuple(mask.shape)}"
            )
        if any(m not in (1, n) for m, n in zip(mask.shape, (b, t - 2, c, h, w), strict=True)):
            raise ValueError(
                f"mask must be (B, T-2) = ({b}, {t - 2}) or broadcastable to (B, T-2, C, H, W) = "
                f"({b}, {t - 2}, {c}, {h}, {w}); got shape {tuple(mask.shape)}"
            )
        mask = mask.to(frames.dtype)
        if mask.shape[-3:] != (1, 1, 1):
            mask = patchify(mask.expand(b, t - 2, c, h, w), self.patch_size, self.patch_order)
        return mask

    # ------------------------------------------------------------------ one step
    def compile_step(self, enable: bool = True, **compile_kwargs: Any) -> EncoderStackDecoder:
        """Compile one recurrent step with ``torch.compile``; the loop over time stays eager.

        ``torch.compile(model)`` unrolls the loop over T frames into one graph, which can take
        many minutes to compile. This compiles the step instead (encoder, every layer, the
        zigzag memory, decoder): one small graph per step signature (zero state at t=0,
        carried state after), reused at every step of ``forward``, ``generate`` and
        activation checkpointing. Returns ``self``; the parameters and ``state_dict`` are
        unchanged. The compiled graphs of all models in a process live in one dynamo cache
        (limit ``torch._dynamo.config.recompile_limit`` graphs, 8 by default); call
        ``torch._dynamo.reset()`` between many unrelated models.

        Args:
            enable: ``False`` drops a compiled step and goes back to eager.
            **compile_kwargs: passed to ``torch.compile`` (e.g. ``mode``, ``backend``,
                ``fullgraph``, ``options={"layout_optimization": False}``).

        Example:
            >>> model = get_model("predrnn").compile_step()
        """
        self._compiled_step = (
            torch.compile(type(self)._step_impl, **compile_kwargs) if enable else None
        )
        return self

    def _step(
        self,
        x: Tensor,
        states: list[LayerState] | None,
        action: Tensor | None,
    ) -> tuple[Tensor, list[LayerState], Tensor | None]:
        """One time step (compiled after :meth:`compile_step`); see :meth:`_step_impl`."""
        compiled = self._compiled_step
        if compiled is not None:
            out: tuple[Tensor, list[LayerState], Tensor | None] = compiled(self, x, states, action)
            return out
        return self._step_impl(x, states, action)

    def _step_impl(
        self,
        x: Tensor,
        states: list[LayerState] | None,
        action: Tensor | None,
    ) -> tuple[Tensor, list[LayerState], Tensor | None]:
        """One time step on a patch tensor ``x: (B, p*p*C, h, w)``.

        Returns the predicted patch tensor ``(B, p*p*C_out, h, w)``, the new per-layer
        states and the summed decoupling terms of this step's layers (or ``None``).
        """
        inp = self.encoder(x) if self.encoder is not None else x
        new_states: list[LayerState] = []
        memory: Tensor | None = None
        if self.zigzag and states is not None:
            memory = states[-1][2]
        decouple: Tensor | None = None
        for layer, cell in enumerate(self.cells):
            state = states[layer] if states is not None else None
            if self.zigzag:
                if state is None:
                    state = cell.initial_state(inp)  # type: ignore[operator]
                if memory is not None:
                    state = STLSTMState(state[0], state[1], memory)
            kwargs = {} if action is None else {"action": action}
            if self.adapter is not None:
                out = cell.forward_with_increments(inp, state, **kwargs)  # type: ignore[operator]
                h, new_state = out[0], out[1]
                term = decoupling_term(out[2], out[3], self.adapter)
                decouple = term if decouple is None else decouple + term
            else:
                h, new_state = cell(inp, state, **kwargs)
            if self.zigzag:
                memory = new_state[2]
            new_states.append(new_state)
            inp = h
        return self.decoder(inp), new_states, decouple

    def _run_step(
        self, x: Tensor, states: list[LayerState] | None, action: Tensor | None
    ) -> tuple[Tensor, list[LayerState], Tensor | None]:
        if self.checkpoint_steps and torch.is_grad_enabled():
            out: tuple[Tensor, list[LayerState], Tensor | None] = checkpoint(
                self._step, x, states, action, use_reentrant=False
            )
            return out
        return self._step(x, states, action)

    # ------------------------------------------------------------------ public
    def forward(
        self,
        frames: Tensor,
        context: int | None = None,
        mask: Tensor | None = None,
        state: Sequence[LayerState] | None = None,
        actions: Tensor | None = None,
    ) -> PredictorOutput:
        """Run T-1 steps over ``frames: (B, T, C, H, W)``; step t predicts frame t+1.

        Args:
            frames: ``(B, T, C, H, W)``, T >= 2.
            context: steps ``t < context`` read the true frame (default T: teacher forcing).
            mask: ``(B, T-2)`` or broadcastable to ``(B, T-2, C, H, W)``; entry t-1 mixes
                the true frame into step t >= context (1 = true frame). ``None``: feed the
                previous prediction.
            state: per-layer states from an earlier call, or ``None`` (zeros).
            actions: ``(B, T, A)`` or ``(B, T, A, H, W)`` for action-conditioned models.

        Returns:
            :class:`PredictorOutput` with ``predictions (B, T-1, C_out, H, W)``.
        """
        frames = self._check_frames("frames", frames, self.in_channels)
        t_total = frames.shape[1]
        if t_total < 2:
            raise ValueError(f"frames must hold T >= 2 frames; got T={t_total}")
        steps = t_total - 1
        context = t_total if context is None else context
        if isinstance(context, bool) or not isinstance(context, int) or context < 1:
            raise ValueError(f"context must be an int >= 1; got {context!r}")
        if context < steps and self.out_channels != self.in_channels:
            raise ValueError(
                f"out_channels={self.out_channels} != in_channels={self.in_channels}: the "
                f"model cannot feed its predictions back, so context must be >= T-1={steps}; "
                f"got context={context}"
            )
        patches = patchify(frames, self.patch_size, self.patch_order)
        pmask = self._patch_mask(mask, frames)
        pactions = self._patch_actions(actions, frames, steps)
        states = self._check_state(state)

        outputs: list[Tensor] = []
        decouple: Tensor | None = None
        pred: Tensor | None = None
        for t in range(steps):
            x = patches[:, t]
            if t >= context:
                assert pred is not None
                if pmask is None:
                    x = pred
                else:
                    m = pmask[:, t - 1]
                    x = m * x + (1 - m) * pred
            action = None if pactions is None else pactions[:, t]
            pred, states, term = self._run_step(x, states, action)
            outputs.append(pred)
            if term is not None:
                decouple = term if decouple is None else decouple + term
        predictions = unpatchify(torch.stack(outputs, dim=1), self.patch_size, self.patch_order)
        if decouple is not None:
            decouple = decouple / (steps * self.num_layers)
        assert states is not None
        return PredictorOutput(predictions, states, decouple)

    @torch.no_grad()
    def generate(
        self,
        context_frames: Tensor,
        horizon: int,
        state: Sequence[LayerState] | None = None,
        actions: Tensor | None = None,
    ) -> Tensor:
        """Read ``context_frames: (B, T_c, C, H, W)``, then predict ``horizon`` frames.

        Any horizon works, longer than training included: after the context, every step
        reads the previous prediction. ``actions`` (action-conditioned models) must cover
        ``T_c + horizon - 1`` steps.

        Returns:
            ``(B, horizon, C_out, H, W)``: the frames after the context.
        """
        frames = self._check_frames("context_frames", context_frames, self.in_channels)
        check_positive_int("horizon", horizon)
        t_c = frames.shape[1]
        if horizon > 1 and self.out_channels != self.in_channels:
            raise ValueError(
                f"out_channels={self.out_channels} != in_channels={self.in_channels}: the "
                "model cannot feed its predictions back, so only horizon=1 is possible"
            )
        patches = patchify(frames, self.patch_size, self.patch_order)
        pactions = self._patch_actions(actions, frames, t_c + horizon - 1)
        states = self._check_state(state)
        pred: Tensor | None = None
        outputs: list[Tensor] = []
        for t in range(t_c + horizon - 1):
            x = patches[:, t] if t < t_c else pred
            assert x is not None
            action = None if pactions is None else pactions[:, t]
            pred, states, _ = self._step(x, states, action)
            if t >= t_c - 1:
                outputs.append(pred)
        return unpatchify(torch.stack(outputs, dim=1), self.patch_size, self.patch_order)

    def extra_repr(self) -> str:
        return (
            f"cell={self.cell_name!r}, in_channels={self.in_channels}, "
            f"out_channels={self.out_channels}, hidden_channels={list(self.hidden_channels)}, "
            f"patch_size={self.patch_size}, patch_order={self.patch_order!r}, "
            f"decoupling={self.adapter is not None}, action_channels={self.action_channels}"
        )
