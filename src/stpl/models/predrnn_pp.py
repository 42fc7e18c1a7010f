"""PredRNN++ (ICML 2018): a causal LSTM stack with a gradient highway between layers 0 and 1.

:class:`PredRNNPlusPlus` is :class:`~stpl.EncoderStackDecoder` with one extra module, the
gradient highway unit, whose output replaces the input of layer 1; everything else (patches,
zigzag memory, masks, streaming, ``generate``, ``compile_step``, checkpointing) is the
base class's. The preset ``"predrnn_pp"`` is OpenSTL's ``PredRNNpp_Model`` layout.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from torch import Tensor

from stpl.cells._toolkit import check_state, with_memory
from stpl.cells.predrnn_pp import GradientHighwayUnit, HighwayState
from stpl.models._base import StepOutput
from stpl.models.encoder_stack_decoder import CellFactory, EncoderStackDecoder, LayerState
from stpl.patching import check_divisible
from stpl.registry import register_preset

__all__ = ["PredRNNPlusPlus", "PredRNNPlusPlusState", "build_predrnn_pp"]


class PredRNNPlusPlusState(NamedTuple):
    """The recurrent state of a :class:`PredRNNPlusPlus`.

    Attributes:
        layers: one state per layer (``STLSTMState(h, c, m)`` for causal LSTM layers), as
            :class:`~stpl.EncoderStackDecoder`'s state.
        highway: the gradient highway's ``HighwayState(z)``, ``z: (B, C_hidden_0, H/p, W/p)``.
    """

    layers: list[LayerState]
    highway: HighwayState


class PredRNNPlusPlus(EncoderStackDecoder):
    """PredRNN++: causal LSTM layers, zigzag memory and a gradient highway unit (GHU).

    At each step, as OpenSTL's ``PredRNNpp_Model``::

        h^0, state^0 = cell_0(x_t, state^0)               # m arrives from the top layer at t-1
        z_t          = GHU(h^0, z_{t-1})                  # the gradient highway
        h^1, state^1 = cell_1(z_t, state^1)               # layer 1 reads z_t, not h^0
        h^l, state^l = cell_l(h^{l-1}, state^l), l >= 2   # m passes zigzag as in PredRNN
        x̂_{t+1}      = decoder(h^{L-1})

    The state is a :class:`PredRNNPlusPlusState` ``(layers, highway)``; pass it back as
    ``state=`` like any model state. All other arguments are
    :class:`~stpl.EncoderStackDecoder`'s (``cell`` defaults to ``"causal_lstm"``; any zigzag
    or plain cell works); the GHU takes the cell options ``norm``, ``spatial_size`` and
    ``bias``. ``decoupling`` is not supported.

    Paper: Wang et al., *PredRNN++: Towards A Resolution of the Deep-in-Time Dilemma in
    Spatiotemporal Predictive Learning*, ICML 2018.

    Differences from OpenSTL: with ``norm="layer"`` OpenSTL's GHU raises (its layer norm has
    the shape of ``nh`` channels, the convolutions give ``2 nh``); here it normalises the
    ``2 nh`` channels. OpenSTL's unused ``conv_o`` of every causal LSTM is only created with
    ``reference_compatible=True`` (``docs/cells/predrnn_pp.md``).

    Args:
        cell: a registered cell name or a cell factory (see :class:`~stpl.EncoderStackDecoder`).
        in_channels, out_channels, hidden_channels, num_layers, patch_size, kernel_size:
            as :class:`~stpl.EncoderStackDecoder`; ``num_layers >= 2``.
        highway_init_range: the GHU's uniform weight initialisation half-width (0.001 as the
            reference), or ``None`` for ``nn.Conv2d``'s default.
        **options: the other keyword arguments of :class:`~stpl.EncoderStackDecoder` and
            the cell options.
    """

    def __init__(
        self,
        cell: str | CellFactory = "causal_lstm",
        in_channels: int = 1,
        out_channels: int | None = None,
        hidden_channels: int | list[int] | tuple[int, ...] = 64,
        num_layers: int | None = None,
        patch_size: int = 4,
        kernel_size: int = 5,
        *,
        highway_init_range: float | None = 0.001,
        **options: Any,
    ) -> None:
        if options.get("decoupling"):
            raise ValueError("decoupling=True is not supported by PredRNNPlusPlus")
        super().__init__(
            cell,
            in_channels,
            out_channels,
            hidden_channels,
            num_layers,
            patch_size,
            kernel_size,
            **options,
        )
        if self.num_layers < 2:
            raise ValueError(
                "PredRNN++ needs num_layers >= 2 (the gradient highway sits between layers 0 "
                f"and 1); got {self.num_layers}"
            )
        nh = self.hidden_channels[0]
        factory = {k: options[k] for k in ("device", "dtype") if k in options}
        ghu_options = {k: options[k] for k in ("norm", "spatial_size", "bias") if k in options}
        self.gradient_highway = GradientHighwayUnit(
            nh,
            nh,
            self.kernel_size,
            init_range=highway_init_range,
            **ghu_options,
            **factory,
        )

    def _check_state(self, state: Any, frames: Tensor) -> Any:
        if (
            not isinstance(state, tuple)
            or len(state) != 2
            or (hasattr(state, "_fields") and not isinstance(state, PredRNNPlusPlusState))
        ):
            raise ValueError(
                "state must be a PredRNNPlusPlusState(layers, highway) from an earlier call; "
                f"got {type(state).__name__}"
            )
        layers = super()._check_state(state[0], frames)
        highway = check_state("state.highway", state[1], HighwayState)
        b, _, _, h, w = frames.shape
        p = self.patch_size
        want = (b, self.hidden_channels[0], h // p, w // p)
        z = highway.z
        if not isinstance(z, Tensor):
            raise TypeError(f"state.highway.z must be a torch.Tensor; got {type(z).__name__}")
        if tuple(z.shape) != want:
            raise ValueError(
                f"state.highway.z must be (B, C_hidden, H/p, W/p) = {want} to match the frames "
                f"{tuple(frames.shape)}; got shape {tuple(z.shape)}"
            )
        return PredRNNPlusPlusState(layers, highway)

    def initial_state(self, frames: Tensor) -> PredRNNPlusPlusState:  # type: ignore[override]
        """The zero state: every layer's, and the gradient highway's ``z`` (what ``None`` means)."""
        layers = super().initial_state(frames)
        x = self._frame_to_step(self._example_frame(frames))
        b, _, h, w = x.shape
        z = x.new_zeros(b, self.hidden_channels[0], h, w)
        return PredRNNPlusPlusState(layers, HighwayState(z))

    def _step_impl(
        self,
        x: Tensor,
        state: Any,
        action: Tensor | None,
    ) -> StepOutput:
        """One time step on a patch tensor ``x: (B, p*p*C, h, w)``.

        Returns the predicted patch tensor ``(B, p*p*C_out, h, w)`` and the new
        :class:`PredRNNPlusPlusState`.
        """
        inp = self.encoder(x) if self.encoder is not None else x
        layers = None if state is None else state[0]
        highway = None if state is None else state[1]
        memory: Tensor | None = None
        if self.zigzag and layers is not None:
            memory = layers[-1][2]
        kwargs = {} if action is None else {"action": action}
        new_states: list[LayerState] = []
        for layer, cell in enumerate(self.cells):
            layer_state = layers[layer] if layers is not None else None
            if self.zigzag:
                if layer_state is None:
                    layer_state = cell.initial_state(inp)  # type: ignore[operator]
                if memory is not None:
                    layer_state = with_memory(layer_state, memory)
            h, new_state = cell(inp, layer_state, **kwargs)
            if self.zigzag:
                memory = new_state[2]
            new_states.append(new_state)
            if layer == 0:
                h, highway = self.gradient_highway(h, highway)
            inp = h
        assert highway is not None  # num_layers >= 2
        return StepOutput(self.decoder(inp), PredRNNPlusPlusState(new_states, highway), None)


def build_predrnn_pp(**options: Any) -> PredRNNPlusPlus:
    """:class:`PredRNNPlusPlus` from preset options.

    ``image_size=(H, W)`` (default 64x64) only sets the per-element layer-norm size where
    ``norm="layer"`` (as :func:`stpl.registry.build_encoder_stack_decoder`).
    """
    options = dict(options)
    image_size = options.pop("image_size", (64, 64))
    if isinstance(image_size, int):
        image_size = (image_size, image_size)
    if options.get("norm") == "layer" and "spatial_size" not in options:
        p = options["patch_size"]
        check_divisible(image_size[0], image_size[1], p)
        options["spatial_size"] = (image_size[0] // p, image_size[1] // p)
    return PredRNNPlusPlus(**options)


register_preset(
    "predrnn_pp",
    build_predrnn_pp,
    {
        "cell": "causal_lstm",
        "in_channels": 1,
        "hidden_channels": 64,
        "num_layers": 4,
        "patch_size": 4,
        "kernel_size": 5,
        "decoder_bias": False,
    },
    small={"hidden_channels": 8, "num_layers": 2, "image_size": 16},
    description=(
        "PredRNN++ (ICML 2018): causal LSTMs with a gradient highway, OpenSTL PredRNNpp_Model "
        "layout (its unused conv_o left out unless reference_compatible=True)"
    ),
)
