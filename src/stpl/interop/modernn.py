"""czh-98/MoDeRNN: the ``MoDeRNN`` model and ``MoDeRNN_cell``.

The model's patch order is ``"modernn"`` (``(c, pw, ph)`` inside a patch); its ``embed``
and ``output`` 1x1 convolutions always have a bias.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from torch import Tensor, nn

from stpl.cells import MoDeRNNCell
from stpl.interop._common import (
    CellSource,
    ModelSource,
    layer_count,
    load_checked,
    need,
    norm_options,
    register_cell_source,
    register_source,
    unwrap_checkpoint,
)
from stpl.interop.predrnn import permute_patch_channels
from stpl.models import EncoderStackDecoder
from stpl.patching import PatchOrder, check_patch_order

__all__ = [
    "StateDict",
    "convert_cell",
    "convert_model",
]

StateDict = Mapping[str, Tensor]

_BRANCH = re.compile(r"^conv(33|55|77)_([XH])\.(.*)$")
_KERNEL_INDEX = {"33": 0, "55": 1, "77": 2}


def _cell_key(key: str, value: Tensor) -> dict[str, Tensor]:
    if key.startswith("conv_i2h."):
        return {"conv_x." + key[len("conv_i2h.") :]: value}
    if key.startswith("conv_h2h."):
        return {"conv_h." + key[len("conv_h2h.") :]: value}
    match = _BRANCH.match(key)
    if match:
        kernel, reads, rest = match.groups()
        group = "x_branches" if reads == "X" else "h_branches"
        return {f"dcb.{group}.0.{_KERNEL_INDEX[kernel]}.{rest}": value}
    return {key: value}


def convert_cell(state_dict: StateDict) -> dict[str, Tensor]:
    """Rename one ``MoDeRNN_cell``'s parameters to :class:`stpl.MoDeRNNCell`'s."""
    out: dict[str, Tensor] = {}
    for key, value in state_dict.items():
        out.update(_cell_key(key, value))
    return out


def _load_cell(state_dict: StateDict, **options: Any) -> nn.Module:
    w = need(state_dict, "conv_i2h.0.weight", "modernn")
    built = norm_options(state_dict, "norm_cell.weight")
    built.update(options)
    cell = MoDeRNNCell(int(w.shape[1]), int(w.shape[0] // 4), int(w.shape[-1]), **built)
    return load_checked(cell, convert_cell(state_dict), "modernn")


def _options(state_dict: StateDict, patch_size: int, image_channels: int) -> dict[str, Any]:
    num_layers = layer_count(state_dict, "lstm")
    hidden = [
        int(need(state_dict, f"lstm.{layer}.conv_h2h.0.weight", "modernn").shape[1])
        for layer in range(num_layers)
    ]
    kernel = int(need(state_dict, "lstm.0.conv_i2h.0.weight", "modernn").shape[-1])
    options: dict[str, Any] = {
        "cell": "modernn",
        "hidden_channels": hidden,
        "patch_size": patch_size,
        "kernel_size": kernel,
        "in_channels": image_channels,
        "encoder": "conv1x1",
        # the reference's embed and output convolutions always have a bias: a missing one
        # is a missing key, not a different architecture
        "encoder_bias": True,
        "decoder_bias": True,
        "patch_order": "modernn",
    }
    options.update(norm_options(state_dict, "lstm.0.conv_i2h.1.weight"))
    return options


def convert_model(
    state_dict: StateDict,
    *,
    patch_size: int,
    image_channels: int,
    patch_order: PatchOrder | None = None,
) -> dict[str, Tensor]:
    """Rename a ``MoDeRNN`` model's parameters (and permute for another ``patch_order``)."""
    state_dict = unwrap_checkpoint(state_dict)
    out: dict[str, Tensor] = {}
    unexpected: list[str] = []
    for key, value in state_dict.items():
        if key.startswith("lstm."):
            layer, rest = key[len("lstm.") :].split(".", 1)
            for k, v in _cell_key(rest, value).items():
                out[f"cells.{layer}.{k}"] = v
        elif key.startswith(("embed.", "output.")):
            out[key.replace("embed.", "encoder.").replace("output.", "decoder.")] = value
        else:
            unexpected.append(key)
    if unexpected:
        raise ValueError(f"state_dict of source 'modernn' has unexpected keys: {unexpected}")
    target = "modernn" if patch_order is None else check_patch_order(patch_order)
    permute_patch_channels(
        out,
        image_channels=image_channels,
        patch_size=patch_size,
        source_order="modernn",
        target_order=target,
        first="encoder.weight",
    )
    return out


def _load_model(
    state_dict: StateDict, *, patch_size: int, image_channels: int, **options: Any
) -> nn.Module:
    state_dict = unwrap_checkpoint(state_dict)
    built = _options(state_dict, patch_size, image_channels)
    built.update(options)
    converted = convert_model(
        state_dict,
        patch_size=patch_size,
        image_channels=image_channels,
        patch_order=built["patch_order"],
    )
    model = EncoderStackDecoder(**built)
    hint = f"patch_size={patch_size}, image_channels={image_channels}?"
    return load_checked(model, converted, "modernn", hint)


register_source(ModelSource("modernn", "czh-98/MoDeRNN MoDeRNN", _load_model, convert_model))
register_cell_source(CellSource("modernn", "czh-98/MoDeRNN MoDeRNN_cell", _load_cell, convert_cell))
