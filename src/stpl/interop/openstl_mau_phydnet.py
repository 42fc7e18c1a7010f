"""OpenSTL (chengtan9907/OpenSTL @ c74deb5): the MAU and PhyDNet models and their cells.

===========================  ==========================  ========================================
source                       reference                   built from the state dict
===========================  ==========================  ========================================
``"openstl_mau"`` (model)    ``MAU_Model``               layers, width, kernel, ``sr_size``, the
                                                         cells' map size; options ``tau=`` (5),
                                                         ``cell_mode=``, ``model_mode=``
``"openstl_phydnet"``        ``PhyDNet_Model``           every width and kernel; ``patch_size``
(model)                                                  is the encoder factor (2 or 4)
``"openstl_mau"`` (cell)     ``MAUCell``                 width, kernel, map size; ``tau=``,
                                                         ``cell_mode=``
``"openstl_phycell"`` (cell) ``PhyCell_Cell``            width, filters, kernels, gate bias
===========================  ==========================  ========================================

MAU's never-used ``merge`` and ``conv_last_sr`` are dropped. PhyDNet's state dict holds the
PhyCell and the ConvLSTM twice (``phycell.*`` and ``encoder.phycell.*``, the same tensors)
and four float64 ``k2m`` buffers: the duplicates must be equal and are loaded once, the
buffers are ignored. The authors' MAU (ZhengChang467/MAU) uses the same parameter names.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from stpl.cells import MAUCell, PhyCell
from stpl.interop._common import (
    CellSource,
    ModelSource,
    layer_count,
    load_checked,
    need,
    register_cell_source,
    register_source,
    unwrap_checkpoint,
)
from stpl.interop.ndrplz import convert_ndrplz_cell
from stpl.interop.predrnn import permute_patch_channels
from stpl.models import MAU, PhyDNet
from stpl.patching import check_patch_order

__all__ = [
    "convert_mau",
    "convert_phydnet",
    "load_mau",
    "load_phydnet",
]

StateDict = Mapping[str, Tensor]

# ------------------------------------------------------------------------------------ MAU
_MAU = "openstl_mau"
_MAU_DEAD = ("merge.", "conv_last_sr.")
_MAU_CELL_KEY = re.compile(
    r"^cell_list\.(\d+)\.(conv_(?:t|t_next|s|s_next)\.[01]\.(?:weight|bias))$"
)
_MAU_ENCODER_KEY = re.compile(r"^encoders\.(\d+)\.encoder_t(?:_conv-1|\d+)\.(weight|bias)$")
_MAU_DECODER_KEY = re.compile(r"^decoders\.(\d+)\.c_decoder\d+\.(weight|bias)$")


def _mau_options(state_dict: StateDict, patch_size: int, image_channels: int) -> dict[str, Any]:
    layers = layer_count(state_dict, "cell_list")
    query = need(state_dict, "cell_list.0.conv_s_next.0.weight", _MAU)
    norm = need(state_dict, "cell_list.0.conv_t.1.weight", _MAU)
    embed = need(state_dict, "encoders.0.encoder_t_conv-1.weight", _MAU)
    p2c = int(embed.shape[1])
    if p2c != patch_size**2 * image_channels:
        raise ValueError(
            f"state_dict of source {_MAU!r}: the first encoder reads {p2c} channels, but "
            f"patch_size={patch_size} and image_channels={image_channels} give "
            f"{patch_size**2 * image_channels} (patch_size**2 * image_channels)"
        )
    n = layer_count(state_dict, "encoders") - 1
    return {
        "in_channels": image_channels,
        "hidden_channels": int(query.shape[0]),
        "num_layers": layers,
        "patch_size": patch_size,
        "kernel_size": int(query.shape[-1]),
        "sr_size": 2**n,
        "spatial_size": (int(norm.shape[-2]), int(norm.shape[-1])),
        "patch_order": "predrnn",
    }


def convert_mau(
    state_dict: StateDict,
    *,
    patch_size: int,
    image_channels: int,
    patch_order: str | None = None,
    **_: Any,
) -> dict[str, Tensor]:
    """Rename an OpenSTL ``MAU_Model`` state dict to :class:`stpl.models.MAU`'s names.

    ``cell_list.{l}.*`` -> ``cells.{l}.*``; ``encoders.0.encoder_t_conv-1.*`` and
    ``encoders.{i+1}.encoder_t{i}.*`` -> ``encoders.{i}.*``; ``decoders.{i}.c_decoder{i}.*``
    -> ``decoders.{i}.*``; ``srcnn.0.*`` -> ``readout.*``; ``merge`` / ``conv_last_sr``
    (never used by the reference) are dropped. With another ``patch_order`` the first and
    last layers' patch channels are permuted.
    """
    out: dict[str, Tensor] = {}
    unexpected: list[str] = []
    for key, value in unwrap_checkpoint(state_dict).items():
        if key.startswith(_MAU_DEAD):
            continue
        if m := _MAU_CELL_KEY.match(key):
            out[f"cells.{m.group(1)}.{m.group(2)}"] = value
        elif m := _MAU_ENCODER_KEY.match(key):
            out[f"encoders.{m.group(1)}.{m.group(2)}"] = value
        elif m := _MAU_DECODER_KEY.match(key):
            out[f"decoders.{m.group(1)}.{m.group(2)}"] = value
        elif key in ("srcnn.0.weight", "srcnn.0.bias"):
            out[f"readout.{key.rsplit('.', 1)[1]}"] = value
        else:
            unexpected.append(key)
    if unexpected:
        raise ValueError(f"state_dict of source {_MAU!r} has unexpected keys: {unexpected}")
    target = "predrnn" if patch_order is None else check_patch_order(patch_order)
    if "encoders.0.weight" in out:
        permute_patch_channels(
            out,
            image_channels=image_channels,
            patch_size=patch_size,
            source_order="predrnn",
            target_order=target,
            first="encoders.0.weight",
            last=("readout.weight", "readout.bias"),
        )
    return out


def load_mau(state_dict: StateDict, *, patch_size: int, image_channels: int, **options: Any) -> MAU:
    """Build and load :class:`stpl.models.MAU` from an OpenSTL ``MAU_Model`` state dict.

    Layers, width, kernel, ``sr_size`` (the number of strided encoders is log2 of it) and
    the cells' per-element layer-norm size come from the weights. ``tau`` (default 5, the
    Moving MNIST config), ``cell_mode`` and ``model_mode`` are not in the weights: pass the
    reference's values as options.
    """
    state_dict = unwrap_checkpoint(state_dict)
    built = _mau_options(state_dict, patch_size, image_channels)
    built.update(options)
    converted = convert_mau(
        state_dict,
        patch_size=patch_size,
        image_channels=image_channels,
        patch_order=built["patch_order"],
    )
    model = MAU(**built)
    load_checked(
        model, converted, _MAU, f"patch_size={patch_size}, image_channels={image_channels}?"
    )
    return model


def _convert_mau_cell(state_dict: StateDict) -> dict[str, Tensor]:
    return dict(state_dict)


def _load_mau_cell(state_dict: StateDict, **options: Any) -> nn.Module:
    w = need(state_dict, "conv_s_next.0.weight", _MAU)
    norm = need(state_dict, "conv_t.1.weight", _MAU)
    built: dict[str, Any] = {"spatial_size": (int(norm.shape[-2]), int(norm.shape[-1]))}
    built["bias"] = "conv_s_next.0.bias" in state_dict
    built.update(options)
    cell = MAUCell(int(w.shape[1]), int(w.shape[0]), int(w.shape[-1]), **built)
    return load_checked(cell, _convert_mau_cell(state_dict), _MAU)


# ------------------------------------------------------------------------------------ PhyDNet
_PHYDNET = "openstl_phydnet"
_PHYDNET_BLOCKS = {
    "encoder_E": "encoder",
    "encoder_Ep": "physics_encoder",
    "encoder_Er": "residual_encoder",
    "decoder_Dp": "physics_decoder",
    "decoder_Dr": "residual_decoder",
    "decoder_D": "decoder",
}
_PHYDNET_LAYERS = {"c1": 0, "c2": 1, "c3": 2, "upc1": 0, "upc2": 1, "upc3": 2}
_PHYDNET_BLOCK_KEY = re.compile(
    r"^encoder\.(encoder_E|encoder_Ep|encoder_Er|decoder_Dp|decoder_Dr|decoder_D)\."
    r"(c1|c2|c3|upc1|upc2|upc3)\.(?:main\.([01])\.)?(weight|bias)$"
)
_PHYCELL_NAMES = {"F.conv1": "phi.0", "F.bn1": "phi.1", "F.conv2": "phi.2", "convgate": "gate"}


def _convert_phycell(state_dict: StateDict, source: str = "openstl_phycell") -> dict[str, Tensor]:
    out: dict[str, Tensor] = {}
    unexpected: list[str] = []
    for key, value in state_dict.items():
        module, _, leaf = key.rpartition(".")
        if module in _PHYCELL_NAMES:
            out[f"{_PHYCELL_NAMES[module]}.{leaf}"] = value
        else:
            unexpected.append(key)
    if unexpected:
        raise ValueError(f"state_dict of source {source!r} has unexpected keys: {unexpected}")
    return out


def _branch_tensors(state_dict: StateDict, prefix: str) -> dict[str, Tensor]:
    """``{rest: tensor}`` of ``prefix.rest`` and ``encoder.prefix.rest`` (checked equal)."""
    plain = {k[len(prefix) + 1 :]: v for k, v in state_dict.items() if k.startswith(prefix + ".")}
    nested_prefix = f"encoder.{prefix}."
    nested = {
        k[len(nested_prefix) :]: v for k, v in state_dict.items() if k.startswith(nested_prefix)
    }
    if plain and nested:
        if plain.keys() != nested.keys():
            raise ValueError(
                f"state_dict of source {_PHYDNET!r}: {prefix}.* and encoder.{prefix}.* should "
                f"hold the same tensors (the reference registers them twice); keys differ: "
                f"{sorted(plain.keys() ^ nested.keys())}"
            )
        for rest, value in plain.items():
            if value.shape != nested[rest].shape or not torch.equal(value, nested[rest]):
                raise ValueError(
                    f"state_dict of source {_PHYDNET!r}: {prefix}.{rest} and "
                    f"encoder.{prefix}.{rest} differ, but the reference shares them"
                )
    return plain or nested


def convert_phydnet(
    state_dict: StateDict, *, patch_size: int = 4, image_channels: int = 1, **_: Any
) -> dict[str, Tensor]:
    """Rename an OpenSTL ``PhyDNet_Model`` state dict to :class:`stpl.models.PhyDNet`'s names.

    ``encoder.encoder_E.c{1,2,3}.main.{0,1}.*`` -> ``encoder.{0,1,2}.{0,1}.*`` (likewise
    ``encoder_Ep/Er`` -> ``physics_encoder``/``residual_encoder``, ``decoder_Dp/Dr/D`` ->
    ``physics_decoder``/``residual_decoder``/``decoder``); the PhyCell (``F.conv1``,
    ``F.bn1``, ``F.conv2``, ``convgate`` -> ``phi.0``, ``phi.1``, ``phi.2``, ``gate``);
    each ConvLSTM layer's ``conv`` on ``[x, h]`` split into ``conv_x`` (with the bias) and
    ``conv_h``. Duplicates under ``encoder.phycell`` / ``encoder.convcell`` are checked and
    dropped, the ``k2m`` buffers ignored.
    """
    state_dict = unwrap_checkpoint(state_dict)
    out: dict[str, Tensor] = {}
    unexpected: list[str] = []
    for key, value in state_dict.items():
        if key.startswith(("phycell.", "convcell.", "encoder.phycell.", "encoder.convcell.")):
            continue
        if key.startswith("k2m.") and key[4:] in ("_M0", "_invM0", "_M1", "_invM1"):
            continue
        m = _PHYDNET_BLOCK_KEY.match(key)
        if m is None:
            unexpected.append(key)
            continue
        block, layer, sub, leaf = m.groups()
        name = f"{_PHYDNET_BLOCKS[block]}.{_PHYDNET_LAYERS[layer]}"
        out[f"{name}.{sub}.{leaf}" if sub is not None else f"{name}.{leaf}"] = value
    phycell = _branch_tensors(state_dict, "phycell")
    for rest, value in phycell.items():
        if not rest.startswith("cell_list.0."):
            unexpected.append(f"phycell.{rest}")
            continue
        module, _sep, leaf = rest[len("cell_list.0.") :].rpartition(".")
        if module not in _PHYCELL_NAMES:
            unexpected.append(f"phycell.{rest}")
            continue
        out[f"phycell.{_PHYCELL_NAMES[module]}.{leaf}"] = value
    convcell = _branch_tensors(state_dict, "convcell")
    layers: dict[str, dict[str, Tensor]] = {}
    for rest, value in convcell.items():
        m = re.match(r"^cell_list\.(\d+)\.(conv\.(?:weight|bias))$", rest)
        if m is None:
            unexpected.append(f"convcell.{rest}")
            continue
        layers.setdefault(m.group(1), {})[m.group(2)] = value
    for layer, tensors in layers.items():
        for k, v in convert_ndrplz_cell(tensors).items():
            out[f"convlstm.{layer}.{k}"] = v
    if unexpected:
        raise ValueError(f"state_dict of source {_PHYDNET!r} has unexpected keys: {unexpected}")
    return out


def _phydnet_options(state_dict: StateDict, patch_size: int, image_channels: int) -> dict[str, Any]:
    first = need(state_dict, "encoder.encoder_E.c1.main.0.weight", _PHYDNET)
    if int(first.shape[1]) != image_channels:
        raise ValueError(
            f"state_dict of source {_PHYDNET!r}: the encoder reads {int(first.shape[1])} "
            f"channels, but image_channels={image_channels}"
        )
    latent = need(state_dict, "encoder.encoder_Ep.c1.main.0.weight", _PHYDNET)
    phycell = _branch_tensors(state_dict, "phycell")
    convcell = _branch_tensors(state_dict, "convcell")
    if "cell_list.0.F.conv1.weight" not in phycell:
        raise ValueError(
            f"state_dict of source {_PHYDNET!r} is missing the key "
            "'phycell.cell_list.0.F.conv1.weight'"
        )
    filters = phycell["cell_list.0.F.conv1.weight"]
    n_lstm = layer_count({f"convcell.{k}": v for k, v in convcell.items()}, "convcell.cell_list")
    widths = []
    for layer in range(n_lstm):
        key = f"cell_list.{layer}.conv.weight"
        if key not in convcell:
            raise ValueError(
                f"state_dict of source {_PHYDNET!r} is missing the key 'convcell.{key}'"
            )
        widths.append(int(convcell[key].shape[0]) // 4)
    return {
        "in_channels": image_channels,
        "patch_size": patch_size,
        "encoder_channels": int(first.shape[0]),
        "latent_channels": int(latent.shape[0]),
        "phycell_filters": int(filters.shape[0]),
        "phycell_kernel_size": int(filters.shape[-1]),
        "convlstm_channels": tuple(widths),
        "convlstm_kernel_size": int(convcell["cell_list.0.conv.weight"].shape[-1]),
    }


def load_phydnet(
    state_dict: StateDict, *, patch_size: int, image_channels: int, **options: Any
) -> PhyDNet:
    """Build and load :class:`stpl.models.PhyDNet` from an OpenSTL ``PhyDNet_Model`` state dict.

    Every width and kernel comes from the weights; ``patch_size`` is the reference's (2 or
    4: the encoder's down-sampling, not recoverable from the weights).
    """
    state_dict = unwrap_checkpoint(state_dict)
    built = _phydnet_options(state_dict, patch_size, image_channels)
    built.update(options)
    model = PhyDNet(**built)
    converted = convert_phydnet(state_dict, patch_size=patch_size, image_channels=image_channels)
    load_checked(model, converted, _PHYDNET, f"patch_size={patch_size}?")
    return model


def _load_phycell(state_dict: StateDict, **options: Any) -> nn.Module:
    source = "openstl_phycell"
    w = need(state_dict, "F.conv1.weight", source)
    gate = need(state_dict, "convgate.weight", source)
    built: dict[str, Any] = {
        "filters": int(w.shape[0]),
        "gate_kernel_size": int(gate.shape[-1]),
        "bias": "convgate.bias" in state_dict,
    }
    built.update(options)
    cell = PhyCell(int(w.shape[1]), int(w.shape[1]), int(w.shape[-1]), **built)
    return load_checked(cell, _convert_phycell(state_dict), source)


register_source(
    ModelSource(_MAU, "OpenSTL MAU_Model (and the authors' MAU)", load_mau, convert_mau)
)
register_source(ModelSource(_PHYDNET, "OpenSTL PhyDNet_Model", load_phydnet, convert_phydnet))
register_cell_source(
    CellSource(_MAU, "OpenSTL MAUCell (and the authors')", _load_mau_cell, _convert_mau_cell)
)
register_cell_source(
    CellSource("openstl_phycell", "OpenSTL PhyCell_Cell", _load_phycell, _convert_phycell)
)
