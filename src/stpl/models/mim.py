"""MIM (Memory In Memory, Wang et al., CVPR 2019): an ST-LSTM, MIM blocks and MIM-N modules."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal, NamedTuple, cast

import torch
from torch import Tensor, nn

from stpl._validation import check_choice
from stpl.cells._state import LSTMState, STLSTMState
from stpl.cells._toolkit import Device, Norm, check_state, check_state_map
from stpl.cells.mim import MIMN, MIMBlock, MIMBlockState
from stpl.cells.stlstm import STLSTMCell
from stpl.models._base import Generation, PredictorOutput, StepOutput, StreamState
from stpl.models.encoder_stack_decoder import EncoderStackDecoder
from stpl.patching import PatchOrder
from stpl.registry import register_preset

__all__ = ["MIM", "MIMState", "StationaryState", "build_mim"]

StationaryState = Literal["sequence", "persistent"]
"""Where MIM-S's cell lives: in the carried state, zeros per sequence (``"sequence"``), or
also carried from one call to the next and detached at every step like OpenSTL
(``"persistent"``)."""


class MIMState(NamedTuple):
    """The recurrent state of :class:`MIM` (``h, w`` = the patch grid ``H/p, W/p``).

    Attributes:
        layers: one state per layer: ``STLSTMState(h, c, m)`` for layer 0, then
            ``MIMBlockState(h, c, m, s)``; ``m`` is the zigzag memory (the top layer's is
            what layer 0 reads next). Every tensor ``(B, C_hidden, h, w)``.
        mimn: the MIM-N modules' ``LSTMState(h, c)``, one per block (module ``l-1`` feeds
            layer ``l``), zeros before the second frame of a sequence.
        started: ``(B,)`` bool, whether each sequence has read a frame. Where it is
            ``False`` the next step is the first of that sequence: no hidden-state
            difference exists yet, so the blocks read zero differences and the MIM-N
            states stay zero (the reference's first step). Every step returns ``True``;
            :meth:`MIM.initial_state` gives ``False``. The state keeps one structure and
            shape at every step, so a step exports and captures as one program.

    For states made before ``started`` existed: ``started=None`` with ``mimn=None`` means
    "no frame read yet" for the whole batch, and ``started=None`` with MIM-N states means
    every sequence has started.
    """

    layers: list[Any]
    mimn: list[LSTMState] | None
    started: Tensor | None = None


class MIM(EncoderStackDecoder):
    r"""MIM: a PredRNN stack whose layers >= 1 are MIM blocks fed by MIM-N modules.

    Each step reads one patch tensor ``x_t`` (as :class:`~stpl.EncoderStackDecoder` with
    ``encoder=None``, the PredRNN/OpenSTL layout) and runs::

        h^0_t, c^0, m  = ST-LSTM(x_t, h^0_{t-1}, c^0, m)              # layer 0
        d^1_t          = MIM-N_1(h^0_t - h^0_{t-1})                   # t > 0
        d^l_t          = MIM-N_l(d^{l-1}_t)                           # l > 1, t > 0
        h^l_t, ..., m  = MIMBlock_l(h^{l-1}_t, d^l_t, state^l)        # l >= 1
        x̂_{t+1}        = W_1x1 * h^{L-1}_t                            # bias-free decoder

    ``m`` passes zigzag through all layers (PredRNN); at the first step of a sequence no
    difference exists: the MIM-N modules do not run and the blocks read zero differences
    (``d = 0``), exactly as OpenSTL's ``MIM_Model`` (and the authors' TensorFlow code).
    Every layer has the same width.

    The state (:class:`MIMState`) holds every layer's state, every MIM-N state and a
    per-sample ``started`` flag, so ``observe``/``forecast``/``generate``, chunked
    ``forward`` calls, activation checkpointing and ``compile_step`` work as for every
    :class:`RecurrentPredictor`. :meth:`initial_state` has the structure and shapes of
    every later state (``started`` False: the step blends the reference's first step in
    with ``torch.where``), so one step exports and CUDA-graph captures as one program.

    Difference from the reference, and the option that restores it: OpenSTL keeps each
    block's MIM-S cell on the module (``convlstm_c``), detached at every step and never
    reset, so a call starts from where the previous call (any batch, training or test)
    stopped. By default (``stationary_state="sequence"``) it is part of the state: zeros
    for a new sequence, with gradients through time. ``stationary_state="persistent"``
    reproduces the reference: MIM-S's cell is detached at every step, and a call without
    a state (``state=None``) starts from the MIM-S cells that the previous ``forward``,
    ``observe`` or ``generate`` call of this model ended with (zeros after construction
    or :meth:`reset_stationary`; kept on the module, not in the ``state_dict``).
    ``forecast`` never changes it. The reference fails on a batch of another size (unless
    one is 1); here that raises ``ValueError`` naming :meth:`reset_stationary`.

    OpenSTL's ``MIMN.conv_last`` is never used; it is not created (``docs/cells/mim.md``
    lists the parameter counts).

    Args:
        in_channels: image channels C.
        out_channels: predicted channels (default ``in_channels``).
        hidden_channels: one int, or one per layer (all equal).
        num_layers: number of layers (layer 0 is an ST-LSTM, the others MIM blocks).
        patch_size: space-to-depth factor p.
        kernel_size: odd gate kernel size.
        norm: ``None`` or ``"layer"`` (the reference's ``layer_norm``).
        spatial_size: ``(H/p, W/p)`` for per-element layer-norm and peephole parameters
            (the reference layout, fixed resolution); ``None`` for per-channel ones.
        forget_bias: added to every forget gate (1.0 in the reference).
        stationary_state: ``"sequence"`` (default) or ``"persistent"`` (the reference).
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
        kernel_size: int = 5,
        *,
        norm: Norm = None,
        spatial_size: tuple[int, int] | None = None,
        forget_bias: float = 1.0,
        stationary_state: StationaryState = "sequence",
        patch_order: PatchOrder = "predrnn",
        checkpoint_steps: bool = False,
        device: Device = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        self.stationary_state: StationaryState = check_choice(
            "stationary_state", stationary_state, ("sequence", "persistent")
        )
        persistent = self.stationary_state == "persistent"
        options: dict[str, Any] = {
            "norm": norm,
            "spatial_size": spatial_size,
            "forget_bias": forget_bias,
            "device": device,
            "dtype": dtype,
        }

        def build(c_in: int, c_hidden: int, layer: int) -> nn.Module:
            if layer == 0:
                return STLSTMCell(c_in, c_hidden, kernel_size, **options)
            return MIMBlock(c_in, c_hidden, kernel_size, detach_stationary=persistent, **options)

        build.__name__ = "mim"
        super().__init__(
            build,
            in_channels,
            out_channels,
            hidden_channels,
            num_layers,
            patch_size,
            kernel_size,
            patch_order=patch_order,
            encoder=None,
            decoder_bias=False,
            checkpoint_steps=checkpoint_steps,
            device=device,
            dtype=dtype,
        )
        nh = self.hidden_channels[0]
        self.mimn = nn.ModuleList(
            MIMN(nh, nh, self.kernel_size, **options) for _ in range(self.num_layers - 1)
        )
        self._stationary: list[Tensor] | None = None

    # ------------------------------------------------------------------ persistent MIM-S
    def reset_stationary(self) -> None:
        """Forget the MIM-S cells kept by ``stationary_state="persistent"`` (start from zeros)."""
        self._stationary = None

    def _remember(self, state: Any) -> None:
        if torch.compiler.is_exporting():  # an exported program keeps no module state
            return
        if self.stationary_state == "persistent" and isinstance(state, MIMState):
            self._stationary = [layer.s.detach() for layer in state.layers[1:]]

    def _fresh_state(self, frames: Tensor) -> MIMState | None:
        """The state a call without a state starts from (persistent MIM-S cells, if any)."""
        kept = self._stationary
        if self.stationary_state != "persistent" or kept is None or not kept:
            return None
        b, _, _, h, w = frames.shape
        p = self.patch_size
        want = (b, self.hidden_channels[0], h // p, w // p)
        if tuple(kept[0].shape) != want:
            raise ValueError(
                f"stationary_state='persistent': the MIM-S cells kept from the previous call "
                f"have shape {tuple(kept[0].shape)}, but these frames need {want} (another "
                "batch size or resolution); call model.reset_stationary() first"
            )
        layer0 = cast(STLSTMCell, self.cells[0])
        x = frames.new_zeros((b, layer0.in_channels, h // p, w // p))
        zero = layer0.initial_state(x)
        layers: list[Any] = [zero]
        for s in kept:
            z = zero.h
            layers.append(MIMBlockState(z, z, z, s.to(device=z.device, dtype=z.dtype)))
        return MIMState(layers, None)

    def _unwrap_state(self, state: Any, frames: Tensor) -> Any:
        unwrapped = super()._unwrap_state(state, frames)
        return self._fresh_state(frames) if unwrapped is None else unwrapped

    def forward(
        self,
        frames: Tensor,
        context: int | None = None,
        mask: Tensor | None = None,
        state: Any = None,
        actions: Tensor | None = None,
    ) -> PredictorOutput:
        """As :meth:`stpl.models.RecurrentPredictor.forward`; ``out.state``: :class:`MIMState`."""
        out = super().forward(frames, context, mask, state, actions)
        self._remember(out.state)
        return out

    def observe(
        self, frames: Tensor, state: StreamState | None = None, *, actions: Tensor | None = None
    ) -> StreamState:
        """As :meth:`stpl.models.RecurrentPredictor.observe`."""
        stream = super().observe(frames, state, actions=actions)
        self._remember(stream.state)
        return stream

    def generate(
        self,
        context_frames: Tensor,
        horizon: int,
        *,
        state: Any = None,
        actions: Tensor | None = None,
    ) -> Generation:
        """As :meth:`stpl.models.RecurrentPredictor.generate`."""
        gen = super().generate(context_frames, horizon, state=state, actions=actions)
        self._remember(gen.state.state)
        return gen

    # ------------------------------------------------------------------ state
    def initial_state(self, frames: Tensor) -> MIMState:  # type: ignore[override]
        """The state before any frame (what ``state=None`` means), built like ``frames``.

        Args:
            frames: ``(B, C, H, W)`` or ``(B, T, C, H, W)``; only their batch size, frame
                size, dtype and device are used.

        Returns:
            A :class:`MIMState` of zeros with ``started`` all ``False``: passed as
            ``state=``, the first step is the reference's first step (the same numbers as
            ``state=None``), and every later state has the same structure and shapes.
            With ``stationary_state="persistent"`` the blocks' ``s`` are the MIM-S cells
            the model keeps (what ``state=None`` starts from).
        """
        frame = self._example_frame(frames)
        kept = self._fresh_state(frame.unsqueeze(1))
        layers = list(kept.layers) if kept is not None else list(super().initial_state(frame))
        zero = layers[0][0]  # layer 0's zero h
        mimn = [LSTMState(zero, zero) for _ in range(self.num_layers - 1)]
        started = frame.new_zeros((frame.shape[0],), dtype=torch.bool)
        return MIMState(layers, mimn, started)

    def _check_state(self, state: Any, frames: Tensor) -> Any:
        if not isinstance(state, MIMState):
            if isinstance(state, tuple) and not hasattr(state, "_fields") and len(state) in (2, 3):
                state = MIMState(*state)
            else:
                raise ValueError(
                    f"state must be a MIMState(layers, mimn, started) (the state of a MIM call "
                    f"or model.initial_state(frames)); got {type(state).__name__}"
                )
        layers, mimn, started = state
        if not isinstance(layers, (list, tuple)) or len(layers) != self.num_layers:
            got = len(layers) if isinstance(layers, (list, tuple)) else type(layers).__name__
            raise ValueError(
                f"state.layers must hold one state per layer ({self.num_layers}); got {got}"
            )
        b, _, _, h, w = frames.shape
        p = self.patch_size
        like = frames.new_empty((b, self.hidden_channels[0], h // p, w // p))
        nh = self.hidden_channels[0]
        checked: list[Any] = []
        for layer, layer_state in enumerate(layers):
            state_type = STLSTMState if layer == 0 else MIMBlockState
            name = f"state.layers[{layer}]"
            layer_state = check_state(name, layer_state, state_type)
            for field, t in zip(state_type._fields, layer_state, strict=True):
                check_state_map(f"{name}.{field}", t, like, nh)
            checked.append(layer_state)
        checked_mimn: list[LSTMState] | None = None
        if mimn is not None:
            if not isinstance(mimn, (list, tuple)) or len(mimn) != self.num_layers - 1:
                got = len(mimn) if isinstance(mimn, (list, tuple)) else type(mimn).__name__
                raise ValueError(
                    f"state.mimn must be None or hold one LSTMState per MIM block "
                    f"({self.num_layers - 1}); got {got}"
                )
            checked_mimn = []
            for j, n_state in enumerate(mimn):
                n_state = check_state(f"state.mimn[{j}]", n_state, LSTMState)
                for field, t in zip(LSTMState._fields, n_state, strict=True):
                    check_state_map(f"state.mimn[{j}].{field}", t, like, nh)
                checked_mimn.append(n_state)
        if started is not None:
            if not isinstance(started, Tensor):
                raise TypeError(
                    f"state.started must be a torch.Tensor or None; got {type(started).__name__}"
                )
            if tuple(started.shape) != (b,) or started.dtype != torch.bool:
                raise ValueError(
                    f"state.started must be a bool tensor of shape (B,) = ({b},); got shape "
                    f"{tuple(started.shape)} and dtype {started.dtype}"
                )
            if started.device != frames.device:
                raise ValueError(
                    f"state.started is on device {started.device}, but the frames are on "
                    f"{frames.device}"
                )
        return MIMState(checked, checked_mimn, started)

    # ------------------------------------------------------------------ one step
    def _step_impl(self, x: Tensor, state: Any, action: Tensor | None) -> StepOutput:
        """One step on a patch tensor ``x: (B, p*p*C, h, w)``; ``state``: a :class:`MIMState`.

        ``state=None`` (or ``mimn=None``) is a first step for the whole batch: MIM-N does
        not run. Otherwise MIM-N runs, and where ``started`` is ``False`` its output and
        state are replaced by zeros (``torch.where``: the same numbers as the first step).
        """
        layer0 = cast(STLSTMCell, self.cells[0])
        blocks: list[Any] = [None] * (self.num_layers - 1)
        mimn: list[LSTMState] | None = None  # None: the first step of every sequence
        started: Tensor | None = None
        if state is None:
            s0 = layer0.initial_state(x)
        else:
            s0 = state.layers[0]._replace(m=state.layers[-1].m)  # zigzag from the top
            blocks, mimn = list(state.layers[1:]), state.mimn
            started = state.started
        h, new0 = layer0(x, s0)
        new_layers: list[Any] = [new0]
        new_mimn: list[LSTMState] = []
        memory = new0.m
        # where a sequence has not started, MIM-N's output and state are zeros
        keep = None if mimn is None or started is None else started[:, None, None, None]
        zero = x.new_zeros(())

        def first_step_zeros(t: Tensor) -> Tensor:
            return t if keep is None else torch.where(keep, t, zero.to(t.dtype))

        # MIM-N's input: the difference of layer 0's hidden states, then each MIM-N's output
        diff = None if mimn is None else h - s0.h
        inp = h
        for layer in range(1, self.num_layers):
            block = cast(MIMBlock, self.cells[layer])
            if mimn is None or diff is None:  # no difference yet: MIM-N waits, d = 0
                zeros = torch.zeros_like(memory)
                new_mimn.append(LSTMState(zeros, zeros))
            else:
                diff, n_state = self.mimn[layer - 1](diff, mimn[layer - 1])
                diff = first_step_zeros(diff)
                n_state = LSTMState(first_step_zeros(n_state.h), first_step_zeros(n_state.c))
                new_mimn.append(n_state)
            block_state = blocks[layer - 1]
            if block_state is None:
                block_state = block.initial_state(inp)
            inp, new_block = block(inp, block_state._replace(m=memory), diff)
            memory = new_block.m
            new_layers.append(new_block)
        now_started = x.new_ones((x.shape[0],), dtype=torch.bool)
        new_state = MIMState(new_layers, new_mimn, now_started)
        return StepOutput(self.decoder(inp), new_state, None)

    def extra_repr(self) -> str:
        return (
            f"in_channels={self.in_channels}, out_channels={self.out_channels}, "
            f"hidden_channels={list(self.hidden_channels)}, patch_size={self.patch_size}, "
            f"kernel_size={self.kernel_size}, stationary_state={self.stationary_state!r}, "
            f"patch_order={self.patch_order!r}"
        )


def build_mim(**options: Any) -> MIM:
    """:class:`MIM` from preset options.

    ``image_size=(H, W)`` (default 64x64) sets ``spatial_size=(H/p, W/p)``, the per-element
    peephole (and layer-norm) parameters of the reference, unless ``spatial_size`` is given
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
    return MIM(**options)


register_preset(
    "mim",
    build_mim,
    {"in_channels": 1, "hidden_channels": 64, "num_layers": 4, "patch_size": 4, "kernel_size": 5},
    small={"hidden_channels": 8, "num_layers": 3, "image_size": 16},
    description=(
        "MIM (CVPR 2019) in OpenSTL's MIM_Model layout: ST-LSTM, MIM blocks, MIM-N modules; "
        "per-element peepholes"
    ),
)
