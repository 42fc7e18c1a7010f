"""PhyDNet (Le Guen & Thome, CVPR 2020): a PhyCell branch and a ConvLSTM branch in one latent."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from stpl._validation import check_choice, check_kernel_size, check_positive_int
from stpl.cells._state import LSTMState
from stpl.cells._toolkit import Device, check_state, factory_kwargs, reset_module_parameters
from stpl.cells.convlstm import ConvLSTMCell
from stpl.cells.phycell import PhyCell, PhyCellState
from stpl.models._base import RecurrentPredictor, StepOutput
from stpl.patching import check_divisible
from stpl.registry import register_preset
from stpl.training.physics import moment_loss

__all__ = ["PhyDNet", "PhyDNetState", "build_phydnet"]

_GROUPS = 16  # group norm of every encoder/decoder block (the reference's GroupNorm(16, .))
_SLOPE = 0.2


class PhyDNetState(NamedTuple):
    """State of :class:`PhyDNet`: the PhyCell state and one ConvLSTM state per layer.

    Attributes:
        physics: ``PhyCellState(h)``, ``(B, C_latent, H/p, W/p)``.
        residual: one :class:`~stpl.LSTMState` per ConvLSTM layer,
            ``(B, C_l, H/p, W/p)`` each.
    """

    physics: PhyCellState
    residual: tuple[LSTMState, ...]


def _block(nin: int, nout: int, stride: int, factory: dict[str, Any], up: bool) -> nn.Sequential:
    """Conv (or transposed conv) 3x3 -> GroupNorm(16) -> LeakyReLU(0.2)."""
    conv: nn.Module
    if up:
        conv = nn.ConvTranspose2d(
            nin, nout, 3, stride=stride, padding=1, output_padding=stride - 1, **factory
        )
    else:
        conv = nn.Conv2d(nin, nout, 3, stride=stride, padding=1, **factory)
    return nn.Sequential(conv, nn.GroupNorm(_GROUPS, nout, **factory), nn.LeakyReLU(_SLOPE))


def _check_group_width(name: str, value: int) -> int:
    if value % _GROUPS:
        raise ValueError(
            f"{name} must be a multiple of 16 (the encoder/decoder blocks group-normalise in "
            f"16 groups); got {value}"
        )
    return value


class PhyDNet(RecurrentPredictor):
    r"""PhyDNet video predictor (Le Guen & Thome, CVPR 2020) in OpenSTL's layout.

    One step on frame ``x_t (B, C, H, W)``; blocks are 3x3 (transposed) convolutions
    followed by a 16-group norm and LeakyReLU(0.2); ``s = patch_size / 2``::

        e      = E(x_t)                 # C -> nf (stride 2) -> nf -> 2nf (stride s)
        h_p    = PhyCell(E_p(e))        # E_p: 2nf -> L -> L        (physical branch)
        h_r    = ConvLSTM(E_r(e))       # E_r: 2nf -> L -> L; stacked ConvLSTM, top width L
        x̂_{t+1} = σ(D(D_p(h_p) + D_r(h_r)))
                                        # D_p, D_r: L -> L -> 2nf; D: 2nf -> nf (x2) -> nf
                                        #   -> C (transposed 3x3, stride s, no norm)

    The latent maps are ``H/p x W/p`` with ``p = patch_size`` (2 or 4). The PhyCell's
    first convolution is constrained by the moment loss (:meth:`moment_loss`).

    Step semantics are :class:`~stpl.models.RecurrentPredictor`'s: the reference's
    ``input_tensor`` (T_in frames) and ``target_tensor`` are one clip with
    ``context = T_in``; its teacher forcing (all decoding steps read the true frames) is
    ``context = T``. All ``T - 1`` predictions are returned; the reference's ``inference``
    returns the last ``T_out``.

    Differences from the reference (``docs/cells/phycell.md``):

    * the reference computes the decoder twice more per step for visualisation outputs that
      no caller uses; skipped here;
    * OpenSTL registers the PhyCell and the ConvLSTM twice (on the model and inside its
      encoder) and stores float64 ``K2M`` buffers; here each tensor exists once and the
      moment basis is computed when needed (the loader accepts and checks the duplicates);
    * sizes are constructor options (OpenSTL hard-codes them; the defaults are its values);
      ``patch_size`` other than 2 or 4 raises instead of silently becoming 4;
    * state is passed in and out instead of living on the modules (``first_timestep``);
      zero states follow the frames' dtype.

    Args:
        in_channels: image channels C.
        patch_size: the encoder's down-sampling, 2 or 4.
        encoder_channels: nf, width of the shared encoder (its output has 2nf channels).
        latent_channels: L, width of the branch encoders/decoders, the PhyCell and the
            last ConvLSTM layer.
        phycell_filters: F, filters of the PhyCell's derivative convolution (49 = 7·7).
        phycell_kernel_size: their size (7).
        convlstm_channels: hidden widths of the ConvLSTM layers; the last must equal
            ``latent_channels``.
        convlstm_kernel_size: ConvLSTM kernel (3).
        checkpoint_steps: recompute each time step in backward.
        device, dtype: where and in which dtype to create the parameters.
    """

    def __init__(
        self,
        in_channels: int = 1,
        patch_size: int = 4,
        *,
        encoder_channels: int = 32,
        latent_channels: int = 64,
        phycell_filters: int = 49,
        phycell_kernel_size: int = 7,
        convlstm_channels: Sequence[int] = (128, 128, 64),
        convlstm_kernel_size: int = 3,
        checkpoint_steps: bool = False,
        device: Device = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.in_channels = check_positive_int("in_channels", in_channels)
        self.out_channels = self.in_channels
        self.patch_size = check_choice("patch_size", patch_size, (2, 4))
        nf = _check_group_width(
            "encoder_channels", check_positive_int("encoder_channels", encoder_channels)
        )
        latent = _check_group_width(
            "latent_channels", check_positive_int("latent_channels", latent_channels)
        )
        if isinstance(convlstm_channels, (str, bytes)) or not isinstance(
            convlstm_channels, Sequence
        ):
            raise ValueError(f"convlstm_channels must be a list of ints; got {convlstm_channels!r}")
        widths = tuple(check_positive_int("convlstm_channels", c) for c in convlstm_channels)
        if not widths or widths[-1] != latent:
            raise ValueError(
                "convlstm_channels must be non-empty and end with latent_channels="
                f"{latent} (the top ConvLSTM layer is the branch output); got {list(widths)}"
            )
        self.encoder_channels = nf
        self.latent_channels = latent
        self.convlstm_channels = widths
        self.convlstm_kernel_size = check_kernel_size("convlstm_kernel_size", convlstm_kernel_size)
        self.checkpoint_steps = bool(checkpoint_steps)
        self._compiled_step = None
        factory = factory_kwargs(device, dtype)
        c, s = self.in_channels, self.patch_size // 2
        self.encoder = nn.Sequential(
            _block(c, nf, 2, factory, up=False),
            _block(nf, nf, 1, factory, up=False),
            _block(nf, 2 * nf, s, factory, up=False),
        )
        self.physics_encoder = nn.Sequential(
            _block(2 * nf, latent, 1, factory, up=False),
            _block(latent, latent, 1, factory, up=False),
        )
        self.residual_encoder = nn.Sequential(
            _block(2 * nf, latent, 1, factory, up=False),
            _block(latent, latent, 1, factory, up=False),
        )
        self.phycell = PhyCell(
            latent,
            latent,
            phycell_kernel_size,
            filters=phycell_filters,
            **factory,
        )
        self.convlstm = nn.ModuleList(
            ConvLSTMCell(
                latent if i == 0 else widths[i - 1],
                width,
                self.convlstm_kernel_size,
                bias=True,
                gate_order="ifog",
                fused=True,  # one convolution of cat[x, h]: the reference's summation
                **factory,
            )
            for i, width in enumerate(widths)
        )
        self.physics_decoder = nn.Sequential(
            _block(latent, latent, 1, factory, up=True),
            _block(latent, 2 * nf, 1, factory, up=True),
        )
        self.residual_decoder = nn.Sequential(
            _block(latent, latent, 1, factory, up=True),
            _block(latent, 2 * nf, 1, factory, up=True),
        )
        self.decoder = nn.Sequential(
            _block(2 * nf, nf, 2, factory, up=True),
            _block(nf, nf, 1, factory, up=True),
            nn.ConvTranspose2d(nf, c, 3, stride=s, padding=1, output_padding=s - 1, **factory),
        )

    def reset_parameters(self) -> None:
        """Re-initialise every parameter with its layer's own initialiser."""
        reset_module_parameters(self)

    def moment_loss(self) -> Tensor:
        """The moment constraint on the PhyCell filters (:func:`stpl.training.moment_loss`)."""
        return moment_loss(self)

    # ------------------------------------------------------------------ hooks
    def _check_spatial(self, height: int, width: int) -> None:
        check_divisible(height, width, self.patch_size)

    def _check_state(self, state: Any, frames: Tensor) -> PhyDNetState:
        state = check_state("state", state, PhyDNetState)
        b, _, _, height, width = frames.shape
        h, w = height // self.patch_size, width // self.patch_size
        physics = check_state("state.physics", state.physics, PhyCellState)
        residual = state.residual
        if not isinstance(residual, (list, tuple)) or len(residual) != len(self.convlstm):
            raise ValueError(
                f"state.residual must hold one LSTMState per ConvLSTM layer "
                f"({len(self.convlstm)}); got {type(residual).__name__}"
            )
        layers = tuple(
            check_state(f"state.residual[{i}]", s, LSTMState) for i, s in enumerate(residual)
        )
        expected = [("state.physics.h", physics.h, self.latent_channels)]
        for i, (layer, width_i) in enumerate(zip(layers, self.convlstm_channels, strict=True)):
            expected += [
                (f"state.residual[{i}].{f}", t, width_i) for f, t in zip("hc", layer, strict=True)
            ]
        for name, t, channels in expected:
            want = (b, channels, h, w)
            if not isinstance(t, Tensor) or tuple(t.shape) != want:
                got = tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__
                raise ValueError(
                    f"{name} must have shape {want} to match the frames {tuple(frames.shape)}; "
                    f"got {got} (a state from another batch size, resolution or model?)"
                )
        return PhyDNetState(physics, layers)

    # ------------------------------------------------------------------ one step
    def _step_impl(
        self, x: Tensor, state: PhyDNetState | None, action: Tensor | None
    ) -> StepOutput:
        """One step on a frame ``x: (B, C, H, W)``; returns the next frame (after σ)."""
        e = self.encoder(x)
        h_p, physics = self.phycell(
            self.physics_encoder(e), None if state is None else state.physics
        )
        h = self.residual_encoder(e)
        layers: list[LSTMState] = []
        for i, cell in enumerate(self.convlstm):
            h, layer_state = cell(h, None if state is None else state.residual[i])
            layers.append(layer_state)
        out = self.decoder(self.physics_decoder(h_p) + self.residual_decoder(h))
        return StepOutput(torch.sigmoid(out), PhyDNetState(physics, tuple(layers)), None)

    def extra_repr(self) -> str:
        return (
            f"in_channels={self.in_channels}, patch_size={self.patch_size}, "
            f"encoder_channels={self.encoder_channels}, latent_channels={self.latent_channels}, "
            f"convlstm_channels={list(self.convlstm_channels)}"
        )


def build_phydnet(**options: Any) -> PhyDNet:
    """:class:`PhyDNet` from preset options (``image_size`` is accepted and only checked:
    PhyDNet has no resolution-bound parameters)."""
    options = dict(options)
    image_size = options.pop("image_size", (64, 64))
    if isinstance(image_size, int):
        image_size = (image_size, image_size)
    check_divisible(int(image_size[0]), int(image_size[1]), options.get("patch_size", 4))
    return PhyDNet(**options)


register_preset(
    "phydnet",
    build_phydnet,
    {"in_channels": 1, "patch_size": 4},
    # widths of 32: with 16 channels a group norm of 16 groups normalises each channel
    # alone and the bias of the convolution before it receives no gradient.
    small={"latent_channels": 32, "convlstm_channels": (32,), "image_size": 16},
    description="PhyDNet (CVPR 2020) in OpenSTL's PhyDNet_Model layout, configs/mmnist/PhyDNet.py",
)
