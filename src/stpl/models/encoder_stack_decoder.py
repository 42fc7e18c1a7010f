"""The Encoder-Stack-Decoder video predictor: patches, a stack of cells, a decoder."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any, Literal

import torch
from torch import Tensor, nn

from stpl._validation import check_choice, check_kernel_size, check_options, check_positive_int
from stpl.cells._registry import CELLS, cell_options
from stpl.cells._toolkit import (
    Device,
    check_state,
    factory_kwargs,
    reset_module_parameters,
    with_memory,
)
from stpl.models._base import RecurrentPredictor, StepOutput
from stpl.patching import PatchOrder, check_divisible, check_patch_order, patchify, unpatchify
from stpl.training.losses import decoupling_term

__all__ = ["CellFactory", "EncoderStackDecoder", "LayerState"]

CellFactory = Callable[..., nn.Module]
"""A callable ``(in_channels, hidden_channels) -> cell``, or ``(in_channels,
hidden_channels, layer) -> cell`` to build each layer differently; the cell follows
:class:`stpl.cells.RecurrentCell` (``(x, state) -> (h, state)``)."""

LayerState = tuple[Tensor, ...]
"""One layer's state: :class:`stpl.LSTMState`, :class:`stpl.STLSTMState`, ..."""


def _takes_layer(factory: Callable[..., Any]) -> bool:
    """Whether a cell factory accepts the layer index (a third argument or ``layer=``)."""
    try:
        params = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):  # builtins without a signature
        return False
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return (
        len(positional) >= 3
        or any(p.kind == p.VAR_POSITIONAL for p in params)
        or any(p.name == "layer" and p.kind == p.KEYWORD_ONLY for p in params)
    )


class EncoderStackDecoder(RecurrentPredictor):
    """Video predictor: patching, optional 1x1 encoder, a stack of cells, a 1x1 decoder.

    Frames ``(B, T, C, H, W)`` are cut into patches ``(B, T, p*p*C, H/p, W/p)``; each step
    encodes one frame, runs it up the stack of cells and decodes the top hidden state into
    the next frame. Cells with a spatiotemporal memory (``STLSTMCell``) pass it zigzag:
    layer l at step t gets it from layer l-1 at step t, layer 0 from the top layer at t-1.

    Step semantics (PredRNN's): for t = 0 .. T-2 the input of step t is ``frames[:, t]``
    when ``t < context``, else ``mask[:, t-1] * frames[:, t] + (1 - mask[:, t-1]) * pred``
    (the previous prediction alone when ``mask`` is None). Streaming (``observe``,
    ``forecast``), ``generate`` and ``compile_step`` come from
    :class:`~stpl.models.RecurrentPredictor`.

    Args:
        cell: a name in :data:`stpl.CELLS` (``"convlstm"``, ``"stlstm"``, ``"modernn"``,
            ...) or a callable ``(in_channels, hidden_channels[, layer]) -> cell``.
        in_channels: image channels C.
        out_channels: predicted channels (default ``in_channels``); when it differs, the
            predictor cannot feed its predictions back, so every step must be in context.
        hidden_channels: one int for every layer, or one per layer.
        num_layers: number of stacked cells; with a list of ``hidden_channels`` it may be
            omitted, and must equal the list's length if given.
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
        device, dtype: where and in which dtype to create the parameters.
        **cell_options: forwarded to every named cell (``norm=``, ``spatial_size=``, ...);
            an option the cell does not take raises ``TypeError`` naming it.
    """

    def __init__(
        self,
        cell: str | CellFactory = "stlstm",
        in_channels: int = 1,
        out_channels: int | None = None,
        hidden_channels: int | Sequence[int] = 64,
        num_layers: int | None = None,
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
            hidden = [check_positive_int("hidden_channels", h) for h in hidden_channels]
            if not hidden:
                raise ValueError("hidden_channels must not be empty")
            if num_layers is not None and check_positive_int("num_layers", num_layers) != len(
                hidden
            ):
                raise ValueError(
                    f"num_layers={num_layers} does not match the {len(hidden)} entries of "
                    f"hidden_channels={list(hidden)} (give one, or both in agreement)"
                )
        else:
            layers = 4 if num_layers is None else check_positive_int("num_layers", num_layers)
            hidden = [check_positive_int("hidden_channels", hidden_channels)] * layers
        self.num_layers = len(hidden)
        self.hidden_channels = tuple(hidden)
        self.patch_size = check_positive_int("patch_size", patch_size)
        self.kernel_size = check_kernel_size("kernel_size", kernel_size)
        self.patch_order = check_patch_order(patch_order)
        check_choice("encoder", encoder, (None, "conv1x1"))
        self.action_channels = (
            None
            if action_channels is None
            else check_positive_int("action_channels", action_channels)
        )
        self.checkpoint_steps = bool(checkpoint_steps)
        self._compiled_step = None
        factory = factory_kwargs(device, dtype)
        p2 = self.patch_size**2
        self.encoder: nn.Conv2d | None = None
        layer_in = p2 * self.in_channels
        if encoder == "conv1x1":
            self.encoder = nn.Conv2d(layer_in, hidden[0], 1, bias=encoder_bias, **factory)
            layer_in = hidden[0]

        build = self._factory(cell, cell_options, factory)
        cells = []
        for layer, nh in enumerate(hidden):
            cells.append(build(layer_in if layer == 0 else hidden[layer - 1], nh, layer))
        self.cells = nn.ModuleList(cells)
        self.cell_name = cell if isinstance(cell, str) else getattr(cell, "__name__", "custom")
        self.zigzag = bool(getattr(self.cells[0], "zigzag_memory", False))
        if self.zigzag and len(set(hidden)) != 1:
            raise ValueError(
                "cells with a zigzag memory need equal hidden_channels in every layer "
                f"(the memory passes from layer to layer); got {hidden}"
            )
        self.decoder = nn.Conv2d(
            hidden[-1], p2 * self.out_channels, 1, bias=decoder_bias, **factory
        )
        self.adapter: nn.Conv2d | None = None
        if decoupling:
            if not all(hasattr(c, "forward_with_increments") for c in self.cells):
                raise ValueError(
                    "decoupling=True needs cells that return memory increments (e.g. 'stlstm')"
                )
            self.adapter = nn.Conv2d(hidden[0], hidden[0], 1, bias=False, **factory)

    def _factory(
        self, cell: str | CellFactory, options: dict[str, Any], factory: dict[str, Any]
    ) -> Callable[[int, int, int], nn.Module]:
        if isinstance(cell, str):
            if cell not in CELLS:
                raise ValueError(f"unknown cell {cell!r}; known cells: {sorted(CELLS)}")
            cls = CELLS[cell]
            accepted = set(cell_options(cls)) - {"device", "dtype"}
            own = set(inspect.signature(EncoderStackDecoder.__init__).parameters) - {
                "self",
                "cell_options",
            }
            check_options(f"EncoderStackDecoder(cell={cell!r})", options, accepted | own)
            kernel = self.kernel_size
            if self.action_channels is not None:
                if "action_channels" not in accepted:
                    raise ValueError(
                        f"action_channels needs a cell that takes actions ('stlstm'); "
                        f"got cell={cell!r}"
                    )
                options = {**options, "action_channels": self.action_channels * self.patch_size**2}
            extra = {k: v for k, v in factory.items() if k in cell_options(cls)}

            def build(c_in: int, c_hidden: int, layer: int) -> nn.Module:
                return cls(c_in, c_hidden, kernel, **options, **extra)

            return build
        if not callable(cell):
            raise ValueError(f"cell must be a registered name or a callable; got {cell!r}")
        if options:
            raise ValueError(
                f"cell options {sorted(options)} apply to named cells only; "
                "bind them in your cell factory instead"
            )
        if self.action_channels is not None:
            raise ValueError("action_channels needs a named cell that takes actions ('stlstm')")
        takes_layer = _takes_layer(cell)

        def build_custom(c_in: int, c_hidden: int, layer: int) -> nn.Module:
            made = cell(c_in, c_hidden, layer) if takes_layer else cell(c_in, c_hidden)
            if not isinstance(made, nn.Module):
                raise TypeError(
                    f"the cell factory must return an nn.Module; got {type(made).__name__}"
                )
            return made

        return build_custom

    def reset_parameters(self) -> None:
        """Re-initialise every parameter (encoder, cells, decoder, adapter)."""
        reset_module_parameters(self)

    def initial_state(self, frames: Tensor) -> list[LayerState]:
        """The per-layer zero states for frames like ``frames`` ((B, C, H, W) or (B, T, ...)).

        Each cell's ``initial_state`` on a zero map of its input width at the patch grid
        (``H/p x W/p``): passing it as ``state=`` computes exactly what ``state=None`` does.
        """
        x = self._frame_to_step(self._example_frame(frames))
        b, _, h, w = x.shape
        widths = [self.hidden_channels[0] if self.encoder is not None else x.shape[1]]
        widths += list(self.hidden_channels[:-1])
        return [
            cell.initial_state(x.new_zeros(b, c_in, h, w))  # type: ignore[operator]
            for cell, c_in in zip(self.cells, widths, strict=True)
        ]

    # ------------------------------------------------------------------ hooks
    def _to_steps(self, frames: Tensor) -> Tensor:
        return patchify(frames, self.patch_size, self.patch_order)

    def _from_steps(self, steps: Tensor) -> Tensor:
        return unpatchify(steps, self.patch_size, self.patch_order)

    def _check_spatial(self, height: int, width: int) -> None:
        check_divisible(height, width, self.patch_size)

    def _reduce_aux(self, total: Tensor, steps: int) -> Tensor:
        return total / (steps * self.num_layers)

    def _check_state(self, state: Any, frames: Tensor) -> list[LayerState]:
        if not isinstance(state, (list, tuple)) or (
            isinstance(state, tuple) and hasattr(state, "_fields")
        ):
            raise ValueError(
                f"state must be a list with one state per layer ({self.num_layers}); "
                f"got {type(state).__name__}"
            )
        if len(state) != self.num_layers:
            raise ValueError(
                f"state must hold one state per layer ({self.num_layers}); got {len(state)}"
            )
        b, _, _, h, w = frames.shape
        p = self.patch_size
        checked: list[LayerState] = []
        for layer, (layer_state, cell) in enumerate(zip(state, self.cells, strict=True)):
            state_type = getattr(cell, "state_type", None)
            name = f"state[{layer}]"
            if state_type is not None:
                layer_state = check_state(name, layer_state, state_type)
            fields = getattr(layer_state, "_fields", None) or range(len(layer_state))
            for field, t in zip(fields, layer_state, strict=True):
                if not isinstance(t, Tensor):
                    continue
                want = (b, self.hidden_channels[layer], h // p, w // p)
                if t.dim() == 4 and tuple(t.shape) != want:
                    raise ValueError(
                        f"{name}.{field} must be (B, C_hidden, H/p, W/p) = {want} to match the "
                        f"frames {tuple(frames.shape)}; got shape {tuple(t.shape)} (a state from "
                        "another batch size, resolution or model?)"
                    )
            checked.append(layer_state)
        return checked

    def _prepare_actions(self, actions: Tensor | None, frames: Tensor, steps: int) -> Tensor | None:
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
        if not isinstance(actions, Tensor):
            raise TypeError(f"actions must be a torch.Tensor; got {type(actions).__name__}")
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

    # ------------------------------------------------------------------ one step
    def _step_impl(
        self,
        x: Tensor,
        state: list[LayerState] | None,
        action: Tensor | None,
    ) -> StepOutput:
        """One time step on a patch tensor ``x: (B, p*p*C, h, w)``.

        Returns the predicted patch tensor ``(B, p*p*C_out, h, w)``, the new per-layer
        states and the summed decoupling terms of this step's layers (or ``None``).
        """
        inp = self.encoder(x) if self.encoder is not None else x
        new_states: list[LayerState] = []
        memory: Tensor | None = None
        if self.zigzag and state is not None:
            memory = state[-1][2]
        decouple: Tensor | None = None
        for layer, cell in enumerate(self.cells):
            layer_state = state[layer] if state is not None else None
            if self.zigzag:
                if layer_state is None:
                    layer_state = cell.initial_state(inp)  # type: ignore[operator]
                if memory is not None:
                    layer_state = with_memory(layer_state, memory)
            kwargs = {} if action is None else {"action": action}
            if self.adapter is not None:
                out = cell.forward_with_increments(inp, layer_state, **kwargs)  # type: ignore[operator]
                h, new_state = out[0], out[1]
                term = decoupling_term(out[2], out[3], self.adapter)
                decouple = term if decouple is None else decouple + term
            else:
                h, new_state = cell(inp, layer_state, **kwargs)
            if self.zigzag:
                memory = new_state[2]
            new_states.append(new_state)
            inp = h
        return StepOutput(self.decoder(inp), new_states, decouple)

    def extra_repr(self) -> str:
        return (
            f"cell={self.cell_name!r}, in_channels={self.in_channels}, "
            f"out_channels={self.out_channels}, hidden_channels={list(self.hidden_channels)}, "
            f"patch_size={self.patch_size}, patch_order={self.patch_order!r}, "
            f"decoupling={self.adapter is not None}, action_channels={self.action_channels}"
        )
