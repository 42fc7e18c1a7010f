"""thuml/predrnn-pytorch: PredRNN and PredRNN-V2 checkpoints and ST-LSTM cells.

OpenSTL's ConvLSTM / PredRNN / PredRNNv2 models keep the same layout (``cell_list.<l>.``,
a bias-free 1x1 ``conv_last`` decoder, ``adapter``), so :mod:`stpl.interop.openstl` builds
on the helpers here.

==================  ==========================================  =============
source              model                                       patch order
==================  ==========================================  =============
``"predrnn"``       thuml/predrnn-pytorch ``predrnn``           ``predrnn``
``"predrnn_v2"``    thuml/predrnn-pytorch ``predrnn_v2``        ``predrnn``
==================  ==========================================  =============
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from stpl.cells import STLSTMCell
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
from stpl.models import EncoderStackDecoder
from stpl.patching import PatchOrder, check_patch_order, patch_permutation

__all__ = ["convert_stack", "load_stack", "permute_patch_channels", "stack_options", "stack_source"]

StateDict = Mapping[str, Tensor]
KeyConverter = Callable[[str, Tensor], dict[str, Tensor] | None]


def stack_options(
    source: str,
    state_dict: StateDict,
    patch_size: int,
    image_channels: int,
    cell: str,
    decoupling: bool,
) -> dict[str, Any]:
    """Model options of a ``cell_list.<l>.`` stack (PredRNN / OpenSTL layout)."""
    num_layers = layer_count(state_dict, "cell_list")
    hidden = [
        int(need(state_dict, f"cell_list.{layer}.conv_h.0.weight", source).shape[1])
        for layer in range(num_layers)
    ]
    kernel = int(need(state_dict, "cell_list.0.conv_x.0.weight", source).shape[-1])
    options: dict[str, Any] = {
        "cell": cell,
        "hidden_channels": hidden,
        "patch_size": patch_size,
        "kernel_size": kernel,
        "in_channels": image_channels,
        "encoder": None,
        "decoder_bias": False,
        "patch_order": "predrnn",
        "decoupling": decoupling,
    }
    if "cell_list.0.conv_x.1.weight" in state_dict:
        options.update(norm_options(state_dict, "cell_list.0.conv_x.1.weight"))
    return options


def permute_patch_channels(
    out: dict[str, Tensor],
    *,
    image_channels: int,
    patch_size: int,
    source_order: PatchOrder,
    target_order: PatchOrder,
    first: str,
    last: tuple[str, ...] = ("decoder.weight", "decoder.bias"),
) -> None:
    """Re-order the input channels of ``first`` and the output channels of ``last`` in place."""
    if target_order == source_order:
        return
    perm = torch.tensor(patch_permutation(image_channels, patch_size, source_order, target_order))
    out[first] = out[first][:, perm]
    for key in last:
        if key in out:
            out[key] = out[key][perm]


def convert_stack(
    source: str,
    state_dict: StateDict,
    convert_key: KeyConverter,
    *,
    patch_size: int,
    image_channels: int,
    patch_order: PatchOrder | None = None,
    decoupling: bool = False,
) -> dict[str, Tensor]:
    """Rename a ``cell_list`` model (``conv_last`` decoder, ``adapter`` if ``decoupling``)."""
    out: dict[str, Tensor] = {}
    unexpected: list[str] = []
    for key, value in state_dict.items():
        if key.startswith("cell_list."):
            layer, rest = key[len("cell_list.") :].split(".", 1)
            for k, v in (convert_key(rest, value) or {}).items():
                out[f"cells.{layer}.{k}"] = v
        elif key == "conv_last.weight":
            out["decoder.weight"] = value
        elif decoupling and key == "adapter.weight":
            out[key] = value
        else:
            unexpected.append(key)
    if unexpected:
        raise ValueError(f"state_dict of source {source!r} has unexpected keys: {unexpected}")
    target = "predrnn" if patch_order is None else check_patch_order(patch_order)
    permute_patch_channels(
        out,
        image_channels=image_channels,
        patch_size=patch_size,
        source_order="predrnn",
        target_order=target,
        first="cells.0.conv_x.0.weight",
    )
    return out


def load_stack(
    source: str,
    cell: str,
    convert_key: KeyConverter,
    state_dict: StateDict,
    *,
    patch_size: int,
    image_channels: int,
    decoupling: bool = False,
    **options: Any,
) -> EncoderStackDecoder:
    """Build and load an :class:`~stpl.EncoderStackDecoder` from a ``cell_list`` checkpoint."""
    state_dict = unwrap_checkpoint(state_dict)
    built = stack_options(source, state_dict, patch_size, image_channels, cell, decoupling)
    built.update(options)
    converted = convert_stack(
        source,
        state_dict,
        convert_key,
        patch_size=patch_size,
        image_channels=image_channels,
        patch_order=built["patch_order"],
        decoupling=decoupling,
    )
    model = EncoderStackDecoder(**built)
    hint = f"patch_size={patch_size}, image_channels={image_channels}?"
    load_checked(model, converted, source, hint)
    return model


def _stlstm_key(key: str, value: Tensor) -> dict[str, Tensor] | None:
    return {key: value}


def _load_stlstm_cell(state_dict: StateDict, **options: Any) -> nn.Module:
    source = "predrnn_stlstm"
    w = need(state_dict, "conv_x.0.weight", source)
    built = norm_options(state_dict, "conv_x.1.weight")
    built["bias"] = "conv_x.0.bias" in state_dict
    if "conv_a.0.weight" in state_dict:
        built["action_channels"] = int(state_dict["conv_a.0.weight"].shape[1])
    built.update(options)
    cell = STLSTMCell(int(w.shape[1]), int(w.shape[0] // 7), int(w.shape[-1]), **built)
    return load_checked(cell, dict(state_dict), source)


def stack_source(
    name: str, description: str, cell: str, convert_key: KeyConverter, decoupling: bool
) -> ModelSource:
    """A :class:`ModelSource` for a ``cell_list`` model; ``convert_key`` renames a layer key."""

    def load(state_dict: StateDict, **kwargs: Any) -> nn.Module:
        return load_stack(name, cell, convert_key, state_dict, decoupling=decoupling, **kwargs)

    def convert(state_dict: StateDict, **kwargs: Any) -> dict[str, Tensor]:
        sd = unwrap_checkpoint(state_dict)
        return convert_stack(name, sd, convert_key, decoupling=decoupling, **kwargs)

    return ModelSource(name, description, load, convert)


register_source(
    stack_source("predrnn", "thuml/predrnn-pytorch predrnn", "stlstm", _stlstm_key, False)
)
register_source(
    stack_source("predrnn_v2", "thuml/predrnn-pytorch predrnn_v2", "stlstm", _stlstm_key, True)
)
register_cell_source(
    CellSource(
        "predrnn_stlstm",
        "thuml/predrnn-pytorch and OpenSTL SpatioTemporalLSTMCell (v1, v2, action)",
        _load_stlstm_cell,
        lambda sd: dict(sd),
    )
)
