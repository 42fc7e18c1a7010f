"""E3D-LSTM (Eidetic 3D LSTM, Wang et al., ICLR 2019): a stack of eidetic 3D LSTMs."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from stpl.cells._toolkit import Device, Norm, check_positive_int, check_state, factory_kwargs
from stpl.cells.e3d_lstm import E3DLSTMState, Eidetic3DLSTMCell, RecallLayout, _check_kernel
from stpl.models._base import StepOutput
from stpl.models.encoder_stack_decoder import EncoderStackDecoder
from stpl.patching import PatchOrder
from stpl.registry import register_preset

__all__ = ["E3DLSTM", "E3DState", "build_e3d_lstm"]


class E3DState(NamedTuple):
    """The recurrent state of :class:`E3DLSTM` after a step (``τ`` = ``window_length``).

    Attributes:
        frames: the last ``τ - 1`` step inputs (patch tensors), oldest first,
            ``(B, p*p*C, τ - 1, H/p, W/p)``; zeros before the first frame, as the reference.
        layers: one :class:`~stpl.cells.E3DLSTMState` per layer; the top layer's ``m`` is
            the memory layer 0 reads next.
    """

    frames: Tensor
    layers: list[E3DLSTMState]


class E3DLSTM(EncoderStackDecoder):
    r"""E3D-LSTM: a window of frames through a stack of eidetic 3D LSTMs, a 3D decoder.

    Each step reads one patch tensor ``x_t`` (PredRNN/OpenSTL layout, no encoder), stacks
    it after the previous ``τ - 1`` inputs into a window ``(B, p*p*C, τ, H/p, W/p)``
    (zeros before the first frame), runs the window up the stack of
    :class:`~stpl.cells.Eidetic3DLSTMCell` (layer ``l`` reads the hidden window of layer
    ``l - 1``), and decodes the top hidden window with a bias-free
    ``Conv3d(C_hidden, p*p*C_out, (τ, 1, 1), stride (τ, 1, 1))`` into the next frame's
    patches; this is OpenSTL's ``E3DLSTM_Model`` (``τ = 2``, kernel ``(2, 5, 5)``). The
    global memory ``m`` passes zigzag through the layers (PredRNN's wiring); all layers
    have the same width.

    The state (:class:`E3DState`) holds the input window, every layer's windows and the
    cell states the recall gate reads, so ``observe``/``forecast``/``generate``, chunked
    ``forward`` calls, activation checkpointing and ``compile_step`` work as for every
    :class:`RecurrentPredictor`. With ``memory_length=None`` (the reference, the preset's
    default) the recall reads every earlier cell state of the sequence, so the state grows
    by one cell state per step and each step costs more than the last. ``memory_length=L``
    keeps the last ``L`` cell states in fixed slots, empty ones masked out of the recall:
    the first ``L`` steps of a sequence equal the unbounded model's, and the state keeps
    its shapes from :meth:`initial_state` on (one compiled graph for every step). A step
    that is exported (``stpl.export.export_observe_step``) or captured in a CUDA graph
    must hand over a state of fixed shape, so it needs ``memory_length`` (the preset's
    ``small`` configuration sets 4); ``export_observe_step`` of an unbounded model raises
    ``ValueError``. Forecasts and rollouts of a fixed length export either way.

    Differences from the reference, with the options that restore it (the cell's
    docstring and ``docs/cells/e3d_lstm.md`` explain them): ``update_memory=False`` (the
    reference never updates the global memory) and ``recall_layout="reference"`` (the
    reference's attention reshape). ``stpl.interop.load_reference("openstl_e3dlstm", ...)``
    sets both.

    Args:
        in_channels: image channels C.
        out_channels: predicted channels (default ``in_channels``).
        hidden_channels: one int, or one per layer (all equal).
        num_layers: number of stacked cells.
        patch_size: space-to-depth factor p.
        kernel_size: an odd int ``k`` for ``(window_length, k, k)`` kernels (5: the
            reference's ``(2, 5, 5)``), or ``(k_t, k_h, k_w)``.
        window_length: τ, frames per window (2 in the reference).
        norm: ``None`` or ``"layer"`` after the gate convolutions.
        spatial_size: ``(H/p, W/p)`` for per-element layer-norm parameters (the reference
            layout, fixed resolution); ``None`` for per-channel ones.
        forget_bias: added to the memory's forget gate (1.0 in the reference).
        update_memory: ``True`` (the paper) or ``False`` (the reference).
        recall_layout: ``"tokens"`` (the paper) or ``"reference"``.
        memory_length: ``None`` (every earlier cell state, the reference) or the most cell
            states the recall reads (the current one included); needed for a fixed-size
            state (export, CUDA graphs, long streams).
        patch_order: channel order inside a patch (``"predrnn"``: OpenSTL's).
        checkpoint_steps: recompute each time step in backward.
        device, dtype: where and in which dtype to create the parameters.
    """

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int | None = None,
        hidden_channels: int | Sequence[int] = 64,
        num_layers: int | None = None,
        patch_size: int = 4,
        kernel_size: int | tuple[int, int, int] = 5,
        *,
        window_length: int = 2,
        norm: Norm = None,
        spatial_size: tuple[int, int] | None = None,
        forget_bias: float = 1.0,
        update_memory: bool = True,
        recall_layout: RecallLayout = "tokens",
        memory_length: int | None = None,
        patch_order: PatchOrder = "predrnn",
        checkpoint_steps: bool = False,
        device: Device = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        tau = check_positive_int("window_length", window_length)
        kernel = _check_kernel(kernel_size, tau)
        options: dict[str, Any] = {
            "window_length": tau,
            "norm": norm,
            "spatial_size": spatial_size,
            "forget_bias": forget_bias,
            "update_memory": update_memory,
            "recall_layout": recall_layout,
            "memory_length": memory_length,
            "device": device,
            "dtype": dtype,
        }

        def build(c_in: int, c_hidden: int, layer: int) -> nn.Module:
            return Eidetic3DLSTMCell(c_in, c_hidden, kernel, **options)

        build.__name__ = "e3d_lstm"
        super().__init__(
            build,
            in_channels,
            out_channels,
            hidden_channels,
            num_layers,
            patch_size,
            kernel[1] if kernel[1] == kernel[2] else 1,
            patch_order=patch_order,
            encoder=None,
            decoder_bias=False,
            checkpoint_steps=checkpoint_steps,
            device=device,
            dtype=dtype,
        )
        self.kernel = kernel
        self.window_length = tau
        p2 = self.patch_size**2
        self.decoder = nn.Conv3d(  # type: ignore[assignment]
            self.hidden_channels[-1],
            p2 * self.out_channels,
            (tau, 1, 1),
            stride=(tau, 1, 1),
            bias=False,
            **factory_kwargs(device, dtype),
        )

    # ------------------------------------------------------------------ state
    def initial_state(self, frames: Tensor) -> E3DState:  # type: ignore[override]
        """The state before any frame (what ``state=None`` means), built like ``frames``.

        Args:
            frames: ``(B, C, H, W)`` or ``(B, T, C, H, W)``; only their batch size, frame
                size, dtype and device are used.

        Returns:
            An :class:`E3DState`: zero input window and each cell's
            :meth:`~stpl.cells.Eidetic3DLSTMCell.initial_state` (with ``memory_length=L``,
            ``L - 1`` empty recall slots: every later state has the same shapes).
        """
        x = self._frame_to_step(self._example_frame(frames))
        b, cp, hh, ww = x.shape
        past = x.new_zeros((b, cp, self.window_length - 1, hh, ww))
        window = x.new_zeros((b, cp, self.window_length, hh, ww))
        layers = [cell.initial_state(window) for cell in self.cells]  # type: ignore[operator]
        return E3DState(past, layers)

    def _check_state(self, state: Any, frames: Tensor) -> Any:
        if not isinstance(state, E3DState):
            if isinstance(state, tuple) and not hasattr(state, "_fields") and len(state) == 2:
                state = E3DState(*state)
            else:
                raise ValueError(
                    f"state must be an E3DState(frames, layers) (the state of an E3DLSTM "
                    f"call); got {type(state).__name__}"
                )
        past, layers = state
        b, _, _, h, w = frames.shape
        p, tau = self.patch_size, self.window_length
        cp = p * p * self.in_channels
        want = (b, cp, tau - 1, h // p, w // p)
        if not isinstance(past, Tensor):
            raise TypeError(f"state.frames must be a torch.Tensor; got {type(past).__name__}")
        if tuple(past.shape) != want:
            raise ValueError(
                f"state.frames must be (B, p*p*C, τ-1, H/p, W/p) = {want} to match the frames "
                f"{tuple(frames.shape)}; got shape {tuple(past.shape)}"
            )
        if not isinstance(layers, (list, tuple)) or len(layers) != self.num_layers:
            got = len(layers) if isinstance(layers, (list, tuple)) else type(layers).__name__
            raise ValueError(
                f"state.layers must hold one state per layer ({self.num_layers}); got {got}"
            )
        checked: list[E3DLSTMState] = []
        for layer, (layer_state, cell) in enumerate(zip(layers, self.cells, strict=True)):
            name = f"state.layers[{layer}]"
            plain = isinstance(layer_state, (tuple, list)) and not hasattr(layer_state, "_fields")
            if plain and len(layer_state) == 4:  # a state without ``filled``
                layer_state = E3DLSTMState(*layer_state)
            layer_state = check_state(name, layer_state, E3DLSTMState)
            assert isinstance(cell, Eidetic3DLSTMCell)
            like = frames.new_empty((b, cell.in_channels, tau, h // p, w // p))
            for field, t in zip(E3DLSTMState._fields[:3], layer_state[:3], strict=True):
                cell._check_window(f"{name}.{field}", t, like)
            recall = cell._check_recall(layer_state.recall, like, f"{name}.recall")
            cell._check_filled(layer_state.filled, recall, like, f"{name}.filled")
            checked.append(layer_state)
        return E3DState(past, checked)

    # ------------------------------------------------------------------ one step
    def _step_impl(self, x: Tensor, state: Any, action: Tensor | None) -> StepOutput:
        """One step on a patch tensor ``x: (B, p*p*C, h, w)``; ``state``: an :class:`E3DState`."""
        b, cp, hh, ww = x.shape
        layers: Sequence[E3DLSTMState | None]
        memory: Tensor | None = None
        if state is None:
            past = x.new_zeros((b, cp, self.window_length - 1, hh, ww))
            layers = [None] * self.num_layers
        else:
            past, layers = state.frames, state.layers
            memory = state.layers[-1].m
        window = torch.cat((past.to(x.dtype), x.unsqueeze(2)), dim=2)
        inp = window
        new_layers: list[E3DLSTMState] = []
        for cell, layer_state in zip(self.cells, layers, strict=True):
            if layer_state is None:
                layer_state = cell.initial_state(inp)  # type: ignore[operator]
            if memory is not None:
                layer_state = layer_state._replace(m=memory)
            inp, new_state = cell(inp, layer_state)
            memory = new_state.m
            new_layers.append(new_state)
        weight = self.decoder.weight
        pred = F.conv2d(inp.flatten(1, 2), weight.flatten(1, 2))
        return StepOutput(pred, E3DState(window[:, :, 1:], new_layers), None)

    def extra_repr(self) -> str:
        cell = self.cells[0]
        return (
            f"in_channels={self.in_channels}, out_channels={self.out_channels}, "
            f"hidden_channels={list(self.hidden_channels)}, patch_size={self.patch_size}, "
            f"kernel_size={self.kernel}, window_length={self.window_length}, "
            f"update_memory={cell.update_memory}, recall_layout={cell.recall_layout!r}, "
            f"memory_length={cell.memory_length}, patch_order={self.patch_order!r}"
        )


def build_e3d_lstm(**options: Any) -> E3DLSTM:
    """:class:`E3DLSTM` from preset options.

    ``image_size=(H, W)`` (default 64x64) sets ``spatial_size=(H/p, W/p)``, the per-element
    layer-norm parameters of the reference, unless ``spatial_size`` is given
    (``spatial_size=None`` for per-channel parameters that work at any resolution).
    """
    options = dict(options)
    image_size = options.pop("image_size", (64, 64))
    if isinstance(image_size, int):
        image_size = (image_size, image_size)
    if "spatial_size" not in options:
        p = options.get("patch_size", 4)
        h, w = image_size
        if h % p or w % p:
            raise ValueError(f"image_size={tuple(image_size)} is not divisible by patch_size={p}")
        options["spatial_size"] = (h // p, w // p)
    return E3DLSTM(**options)


register_preset(
    "e3d_lstm",
    build_e3d_lstm,
    {"in_channels": 1, "hidden_channels": 64, "num_layers": 4, "patch_size": 4, "kernel_size": 5},
    small={"hidden_channels": 8, "num_layers": 2, "image_size": 16, "memory_length": 4},
    description=(
        "E3D-LSTM (ICLR 2019) in OpenSTL's E3DLSTM_Model layout: window 2, (2, 5, 5) kernels, "
        "3D decoder; global memory updated and recall over positions (the paper)"
    ),
)
