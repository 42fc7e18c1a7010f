"""MAU (Chang et al., NeurIPS 2021): strided encoders, a stack of motion-aware units, decoders."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from stpl._validation import check_choice, check_kernel_size, check_positive_int
from stpl.cells._toolkit import (
    Device,
    check_spatial_size,
    check_state,
    factory_kwargs,
    reset_module_parameters,
)
from stpl.cells.mau import MAUCell, MAUCellMode, MAUState
from stpl.models._base import RecurrentPredictor, StepOutput
from stpl.patching import PatchOrder, check_divisible, check_patch_order, patchify, unpatchify
from stpl.registry import register_preset

__all__ = ["MAU", "MAUModelMode", "build_mau"]

MAUModelMode = Literal["normal", "recall"]
"""``"recall"`` adds each encoder output to the decoder output of the same resolution."""

_SLOPE = 0.2


def _hidden_width(hidden_channels: int | Sequence[int], num_layers: int | None) -> tuple[int, int]:
    """``(width, layers)`` from an int or a list of equal widths (MAU needs equal widths)."""
    if isinstance(hidden_channels, Sequence) and not isinstance(hidden_channels, str):
        widths = [check_positive_int("hidden_channels", h) for h in hidden_channels]
        if not widths:
            raise ValueError("hidden_channels must not be empty")
        if len(set(widths)) != 1:
            raise ValueError(
                "MAU needs the same hidden_channels in every layer (each layer's spatial "
                f"output is the next layer's input and attention key); got {widths}"
            )
        if num_layers is not None and check_positive_int("num_layers", num_layers) != len(widths):
            raise ValueError(
                f"num_layers={num_layers} does not match the {len(widths)} entries of "
                f"hidden_channels={widths} (give one, or both in agreement)"
            )
        return widths[0], len(widths)
    layers = 4 if num_layers is None else check_positive_int("num_layers", num_layers)
    return check_positive_int("hidden_channels", hidden_channels), layers


def _check_sr_size(sr_size: object) -> int:
    sr = check_positive_int("sr_size", sr_size)
    if sr & (sr - 1):
        raise ValueError(f"sr_size must be a power of two (1, 2, 4, ...); got {sr_size!r}")
    return sr


class MAU(RecurrentPredictor):
    r"""MAU video predictor (Chang et al., NeurIPS 2021) in OpenSTL's ``MAU_Model`` layout.

    One step on frame ``x_t`` (patched to ``(B, p*p*C, H/p, W/p)``, PredRNN's patch order)::

        e_0 = lrelu(W_in * x_t)                         # 1x1, p²C -> C_h
        e_i = lrelu(W_i * e_{i-1})    i = 1..n          # 3x3, stride 2: n = log2(sr_size)
        S   = e_n
        S, state_l = MAUCell_l(S, state_l)   l = 0..L-1 # each layer its own T and windows
        d   = S
        d   = lrelu(U_i * d) (+ e_{n-1-i} if recall)    i = 0..n-2   # 3x3 transposed, x2
        d   = U_{n-1} * d    (+ e_0 if recall)          # no activation
        x̂_{t+1} = W_out * d                            # 1x1, C_h -> p²C, no activation

    ``lrelu`` has slope 0.2. The cells run at ``H/(p·sr) x W/(p·sr)``. The predictions are
    the raw outputs (no sigmoid); fed back in step space as the reference does.

    Step semantics are :class:`~stpl.models.RecurrentPredictor`'s (PredRNN's masking rule):
    OpenSTL's ``pre_seq_length`` is ``context`` and its ``mask_true[:, t - context]`` our
    ``mask[:, t - 1]``; ``forward`` returns all ``T - 1`` predictions.

    Differences from the reference (``docs/cells/mau.md``):

    * OpenSTL's never-used ``merge`` and ``conv_last_sr`` convolutions are left out
      (:func:`stpl.interop.load_reference` drops them);
    * predictions are frames ``(B, T-1, C, H, W)``; OpenSTL returns patch tensors in a
      channels-first layout that its other RNN models do not use;
    * OpenSTL's MAU method never patches frames (only ``patch_size=1`` runs through it);
      the model here patches any ``patch_size``, as OpenSTL's model itself expects;
    * zero states follow the frames' dtype; ``spatial_size=None`` allows any resolution.

    Args:
        in_channels: image channels C.
        hidden_channels: width of every layer (an int, or a list of equal ints).
        num_layers: number of MAU cells (default 4; from the list if one is given).
        patch_size: space-to-depth factor p (OpenSTL's Moving MNIST config: 1).
        kernel_size: odd kernel of the cells' convolutions.
        tau: attention window of every cell.
        cell_mode: ``"normal"`` or ``"residual"`` (:class:`~stpl.cells.MAUCell`).
        model_mode: ``"normal"`` or ``"recall"`` (encoder-decoder skips).
        sr_size: total down-sampling of the strided encoders, a power of two.
        spatial_size: ``(h, w)`` of the cells' maps for per-element layer-norm affines (the
            reference's, which fix the frame size to ``(h·p·sr, w·p·sr)``), or ``None``.
        patch_order: channel order inside a patch (:mod:`stpl.patching`).
        checkpoint_steps: recompute each time step in backward.
        device, dtype: where and in which dtype to create the parameters.
    """

    def __init__(
        self,
        in_channels: int = 1,
        hidden_channels: int | Sequence[int] = 64,
        num_layers: int | None = None,
        patch_size: int = 1,
        kernel_size: int = 5,
        *,
        tau: int = 5,
        cell_mode: MAUCellMode = "normal",
        model_mode: MAUModelMode = "normal",
        sr_size: int = 4,
        spatial_size: tuple[int, int] | None = None,
        patch_order: PatchOrder = "predrnn",
        checkpoint_steps: bool = False,
        device: Device = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.in_channels = check_positive_int("in_channels", in_channels)
        self.out_channels = self.in_channels
        width, layers = _hidden_width(hidden_channels, num_layers)
        self.hidden_channels = width
        self.num_layers = layers
        self.patch_size = check_positive_int("patch_size", patch_size)
        self.kernel_size = check_kernel_size("kernel_size", kernel_size)
        self.tau = check_positive_int("tau", tau)
        self.model_mode: MAUModelMode = check_choice("model_mode", model_mode, ("normal", "recall"))
        self.cell_mode: MAUCellMode = check_choice("cell_mode", cell_mode, ("normal", "residual"))
        self.sr_size = _check_sr_size(sr_size)
        self.spatial_size = check_spatial_size(spatial_size)
        self.patch_order = check_patch_order(patch_order)
        self.checkpoint_steps = bool(checkpoint_steps)
        self._compiled_step = None
        factory = factory_kwargs(device, dtype)
        n = self.sr_size.bit_length() - 1
        p2c = self.patch_size**2 * self.in_channels
        encoders: list[nn.Module] = [nn.Conv2d(p2c, width, 1, **factory)]
        encoders += [nn.Conv2d(width, width, 3, stride=2, padding=1, **factory) for _ in range(n)]
        self.encoders = nn.ModuleList(encoders)
        self.cells = nn.ModuleList(
            MAUCell(
                width,
                width,
                self.kernel_size,
                tau=self.tau,
                cell_mode=cell_mode,
                spatial_size=self.spatial_size,
                **factory,
            )
            for _ in range(layers)
        )
        self.decoders = nn.ModuleList(
            nn.ConvTranspose2d(width, width, 3, stride=2, padding=1, output_padding=1, **factory)
            for _ in range(n)
        )
        self.readout = nn.Conv2d(width, p2c, 1, **factory)

    def reset_parameters(self) -> None:
        """Re-initialise every parameter with its layer's own initialiser."""
        reset_module_parameters(self)

    # ------------------------------------------------------------------ hooks
    def _to_steps(self, frames: Tensor) -> Tensor:
        return patchify(frames, self.patch_size, self.patch_order)

    def _from_steps(self, steps: Tensor) -> Tensor:
        return unpatchify(steps, self.patch_size, self.patch_order)

    @property
    def _factor(self) -> int:
        return self.patch_size * self.sr_size

    def _check_spatial(self, height: int, width: int) -> None:
        check_divisible(height, width, self.patch_size)
        f = self._factor
        if height % f or width % f:
            raise ValueError(
                f"MAU needs H and W divisible by patch_size * sr_size = {self.patch_size} * "
                f"{self.sr_size} = {f} (the strided encoders halve the maps log2(sr_size) "
                f"times); got frames of {height}x{width}"
            )
        maps = (height // f, width // f)
        if self.spatial_size is not None and maps != self.spatial_size:
            raise ValueError(
                f"this MAU has per-element layer-norm parameters for {self.spatial_size} maps, "
                f"i.e. frames of {self.spatial_size[0] * f}x{self.spatial_size[1] * f}; got "
                f"frames of {height}x{width} (build it with spatial_size=None to accept any "
                "resolution)"
            )

    def _check_state(self, state: Any, frames: Tensor) -> list[MAUState]:
        if not isinstance(state, (list, tuple)) or hasattr(state, "_fields"):
            raise ValueError(
                f"state must be a list with one MAUState per layer ({self.num_layers}); "
                f"got {type(state).__name__}"
            )
        if len(state) != self.num_layers:
            raise ValueError(
                f"state must hold one MAUState per layer ({self.num_layers}); got {len(state)}"
            )
        b, _, _, height, width = frames.shape
        f = self._factor
        maps = (self.hidden_channels, height // f, width // f)
        checked: list[MAUState] = []
        for layer, layer_state in enumerate(state):
            name = f"state[{layer}]"
            layer_state = check_state(name, layer_state, MAUState)
            for field, t in zip(MAUState._fields, layer_state, strict=True):
                want = (b, *maps) if field == "t_state" else (b, self.tau, *maps)
                if not isinstance(t, Tensor) or tuple(t.shape) != want:
                    got = tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__
                    raise ValueError(
                        f"{name}.{field} must have shape {want} to match the frames "
                        f"{tuple(frames.shape)}; got {got} (a state from another batch size, "
                        "resolution or model?)"
                    )
            checked.append(layer_state)
        return checked

    # ------------------------------------------------------------------ one step
    def _step_impl(
        self, x: Tensor, state: list[MAUState] | None, action: Tensor | None
    ) -> StepOutput:
        """One step on a patch tensor ``x: (B, p*p*C, H/p, W/p)``; returns the next patches."""
        features: list[Tensor] = []
        h = x
        for encoder in self.encoders:
            h = F.leaky_relu(encoder(h), _SLOPE)
            features.append(h)
        new_states: list[MAUState] = []
        for layer, cell in enumerate(self.cells):
            h, layer_state = cell(h, None if state is None else state[layer])
            new_states.append(layer_state)
        last = len(self.decoders) - 1
        for i, decoder in enumerate(self.decoders):
            h = decoder(h)
            if i < last:
                h = F.leaky_relu(h, _SLOPE)
            if self.model_mode == "recall":
                h = h + features[-2 - i]
        return StepOutput(self.readout(h), new_states, None)

    def extra_repr(self) -> str:
        return (
            f"in_channels={self.in_channels}, hidden_channels={self.hidden_channels}, "
            f"num_layers={self.num_layers}, patch_size={self.patch_size}, "
            f"sr_size={self.sr_size}, tau={self.tau}, cell_mode={self.cell_mode!r}, "
            f"model_mode={self.model_mode!r}, spatial_size={self.spatial_size}"
        )


def build_mau(**options: Any) -> MAU:
    """:class:`MAU` from preset options.

    ``image_size=(H, W)`` (default 64x64) sets ``spatial_size = (H/(p·sr), W/(p·sr))``, the
    per-element layer-norm size of the reference, unless ``spatial_size`` is given
    (``spatial_size=None`` for per-channel affines that work at any resolution).
    """
    options = dict(options)
    image_size = options.pop("image_size", (64, 64))
    if isinstance(image_size, int):
        image_size = (image_size, image_size)
    if "spatial_size" not in options:
        p = check_positive_int("patch_size", options.get("patch_size", 1))
        f = p * _check_sr_size(options.get("sr_size", 4))
        h, w = image_size
        if h % f or w % f:
            raise ValueError(
                f"image_size={tuple(image_size)} is not divisible by patch_size * sr_size = {f}"
            )
        options["spatial_size"] = (h // f, w // f)
    return MAU(**options)


register_preset(
    "mau",
    build_mau,
    {
        "in_channels": 1,
        "hidden_channels": 64,
        "num_layers": 4,
        "patch_size": 1,
        "kernel_size": 5,
        "tau": 5,
        "cell_mode": "normal",
        "model_mode": "normal",
        "sr_size": 4,
    },
    small={"hidden_channels": 8, "num_layers": 2, "image_size": 16, "tau": 2},
    description="MAU (NeurIPS 2021) in OpenSTL's MAU_Model layout, configs/mmnist/MAU.py",
)
