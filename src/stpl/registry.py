"""Named presets: the papers' configurations in the references' layouts.

A preset is a builder (a model class or a function) with default keyword arguments, plus a
*small* set of overrides that builds a tiny instance of the same architecture (used by the
test suite and smoke benchmarks to run every preset through the same contract checks).
Model families register their presets with :func:`register_preset`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from torch import nn

from stpl.models.encoder_stack_decoder import EncoderStackDecoder

__all__ = ["PRESETS", "Preset", "get_model", "list_models", "preset", "register_preset"]


@dataclass(frozen=True)
class Preset:
    """One named configuration.

    Attributes:
        name: what :func:`get_model` takes.
        build: ``(**options) -> model``.
        defaults: the configuration's keyword arguments (read-only).
        small: overrides that build a tiny instance (a few channels, 16x16 frames or the
            smallest size the architecture allows) for tests and smoke runs.
        frame_shape: ``(C, H, W)`` of the frames the *small* instance reads.
        description: one line: paper and reference layout.
    """

    name: str
    build: Callable[..., nn.Module]
    defaults: Mapping[str, Any]
    small: Mapping[str, Any] = field(default_factory=dict)
    frame_shape: tuple[int, int, int] = (1, 16, 16)
    description: str = ""


_REGISTRY: dict[str, Preset] = {}


class _PresetDefaults(Mapping[str, Mapping[str, Any]]):
    """Read-only view ``name -> default options`` of every registered preset."""

    def __getitem__(self, name: str) -> Mapping[str, Any]:
        return _REGISTRY[name].defaults

    def __iter__(self) -> Iterator[str]:
        return iter(_REGISTRY)

    def __len__(self) -> int:
        return len(_REGISTRY)

    def __repr__(self) -> str:
        return f"PRESETS({sorted(_REGISTRY)})"


PRESETS: Mapping[str, Mapping[str, Any]] = _PresetDefaults()
"""Default keyword arguments of each preset (``stpl.get_model(name)``), read-only."""


def register_preset(
    name: str,
    build: Callable[..., nn.Module],
    defaults: Mapping[str, Any],
    *,
    small: Mapping[str, Any] | None = None,
    frame_shape: tuple[int, int, int] = (1, 16, 16),
    description: str = "",
) -> Preset:
    """Register a preset under ``name`` (replacing one of the same name); returns it."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"name must be a non-empty str; got {name!r}")
    entry = Preset(
        name,
        build,
        MappingProxyType(dict(defaults)),
        MappingProxyType(dict(small or {})),
        frame_shape,
        description,
    )
    _REGISTRY[name] = entry
    return entry


def preset(name: str) -> Preset:
    """The registered :class:`Preset` ``name``; ``ValueError`` listing the known ones."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; known models: {list_models()}")
    return _REGISTRY[name]


def list_models() -> list[str]:
    """Names accepted by :func:`get_model`, sorted."""
    return sorted(_REGISTRY)


def get_model(name: str, **overrides: Any) -> nn.Module:
    """Build a preset with any argument overridden.

    Presets default to the papers' Moving MNIST configurations in the reference code's
    layout (``docs/predictor.md`` lists them with their parameter counts).

    Example:
        >>> model = get_model("predrnn", hidden_channels=128, norm="layer")

    Raises:
        ValueError: unknown ``name`` (the message lists the known ones).
        TypeError: an override the model does not take (named).
    """
    entry = preset(name)
    options = {**entry.defaults, **overrides}
    hidden = overrides.get("hidden_channels")
    if "num_layers" not in overrides and isinstance(hidden, (list, tuple)):
        options.pop("num_layers", None)  # a list of widths sets the depth
    return entry.build(**options)


# --------------------------------------------------------------------------------------------
# Encoder-Stack-Decoder presets


def build_encoder_stack_decoder(**options: Any) -> EncoderStackDecoder:
    """:class:`EncoderStackDecoder` from preset options.

    ``image_size=(H, W)`` (default 64x64) is used for one thing: where the preset
    layer-normalises (``norm="layer"``), the affine parameters are per element of the
    ``(H/p, W/p)`` maps, as in the references, unless ``spatial_size`` is given
    (``spatial_size=None`` for per-channel parameters that work at any resolution).
    """
    options = dict(options)
    image_size = options.pop("image_size", (64, 64))
    if isinstance(image_size, int):
        image_size = (image_size, image_size)
    if options.get("norm") == "layer" and "spatial_size" not in options:
        p = options["patch_size"]
        h, w = image_size
        if h % p or w % p:
            raise ValueError(f"image_size={tuple(image_size)} is not divisible by patch_size={p}")
        options["spatial_size"] = (h // p, w // p)
    return EncoderStackDecoder(**options)


def _esd_preset(name: str, description: str, **options: Any) -> None:
    register_preset(
        name,
        build_encoder_stack_decoder,
        options,
        small={"hidden_channels": 8, "num_layers": 2, "image_size": 16},
        description=description,
    )


_MMNIST = {"in_channels": 1, "hidden_channels": 64, "num_layers": 4, "patch_size": 4}

_esd_preset(
    "convlstm",
    "Shi et al. 2015 cell in OpenSTL's ConvLSTM_Model layout (no encoder, bias-free decoder)",
    **_MMNIST,
    cell="convlstm",
    kernel_size=5,
    decoder_bias=False,
)
_esd_preset(
    "predrnn",
    "PredRNN (NeurIPS 2017), thuml/predrnn-pytorch layout",
    **_MMNIST,
    cell="stlstm",
    kernel_size=5,
    decoder_bias=False,
)
_esd_preset(
    "predrnn_v2",
    "PredRNN-V2 (TPAMI 2022): PredRNN plus the shared adapter of the decoupling loss",
    **_MMNIST,
    cell="stlstm",
    kernel_size=5,
    decoder_bias=False,
    decoupling=True,
)
_esd_preset(
    "modernn",
    "MoDeRNN (ICASSP 2022), czh-98/MoDeRNN's released Moving MNIST script (kernel 3)",
    **_MMNIST,
    cell="modernn",
    kernel_size=3,
    encoder="conv1x1",
    encoder_bias=True,
    decoder_bias=True,
    patch_order="modernn",
    norm="layer",
)
