"""Named presets: the papers' Moving MNIST configurations in the references' layouts."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from stpl.models import EncoderStackDecoder

_MMNIST = {"in_channels": 1, "hidden_channels": 64, "num_layers": 4, "patch_size": 4}

_PRESETS: dict[str, dict[str, Any]] = {
    # Shi et al. 2015 cell in OpenSTL's ConvLSTM_Model layout (no encoder, bias-free decoder).
    "convlstm": {**_MMNIST, "cell": "convlstm", "kernel_size": 5, "decoder_bias": False},
    # PredRNN (NeurIPS 2017), thuml/predrnn-pytorch layout.
    "predrnn": {**_MMNIST, "cell": "stlstm", "kernel_size": 5, "decoder_bias": False},
    # PredRNN-V2 (TPAMI 2022): PredRNN plus the shared adapter of the decoupling loss.
    "predrnn_v2": {
        **_MMNIST,
        "cell": "stlstm",
        "kernel_size": 5,
        "decoder_bias": False,
        "decoupling": True,
    },
    # MoDeRNN (ICASSP 2022), czh-98/MoDeRNN's released Moving MNIST script (kernel 3).
    "modernn": {
        **_MMNIST,
        "cell": "modernn",
        "kernel_size": 3,
        "encoder": "conv1x1",
        "encoder_bias": True,
        "decoder_bias": True,
        "patch_order": "modernn",
        "norm": "layer",
    },
}
# read-only at both levels: editing a preset in place would change every later get_model
PRESETS: Mapping[str, Mapping[str, Any]] = MappingProxyType(
    {name: MappingProxyType(options) for name, options in _PRESETS.items()}
)
"""Default keyword arguments of each preset (``stpl.get_model(name)``)."""


def list_models() -> list[str]:
    """Names accepted by :func:`get_model`, sorted."""
    return sorted(PRESETS)


def get_model(name: str, **overrides: Any) -> EncoderStackDecoder:
    """Build a preset :class:`EncoderStackDecoder`, with any argument overridden.

    Presets default to the papers' Moving MNIST configuration (64x64x1 frames, patch 4,
    4 layers of 64 channels) in the reference code's layout. ``image_size=(H, W)``
    (default 64x64) is used for one thing: where the preset layer-normalises
    (``norm="layer"``), the affine parameters are per element of the ``(H/p, W/p)`` maps,
    as in the references, unless ``spatial_size`` is given (``spatial_size=None`` for
    per-channel parameters that work at any resolution).

    Example:
        >>> model = get_model("predrnn", hidden_channels=128, norm="layer")

    Raises:
        ValueError: unknown ``name`` (the message lists the known ones).
    """
    if name not in PRESETS:
        raise ValueError(f"unknown model {name!r}; known models: {list_models()}")
    options: dict[str, Any] = {**PRESETS[name], **overrides}
    hidden = overrides.get("hidden_channels")
    if "num_layers" not in overrides and not isinstance(hidden, (int, type(None))):
        options.pop("num_layers", None)  # a list of widths sets the depth
    image_size = options.pop("image_size", (64, 64))
    if isinstance(image_size, int):
        image_size = (image_size, image_size)
    if options.get("norm") == "layer" and "spatial_size" not in overrides:
        p = options["patch_size"]
        h, w = image_size
        if h % p or w % p:
            raise ValueError(f"image_size={tuple(image_size)} is not divisible by patch_size={p}")
        options["spatial_size"] = (h // p, w // p)
    return EncoderStackDecoder(**options)
