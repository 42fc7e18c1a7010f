"""OpenSTL (chengtan9907/OpenSTL @ c74deb5): the PredRNN family, MIM and E3D-LSTM models.

==========================  ============================  =============
source                      model                         patch order
==========================  ============================  =============
``"openstl_convlstm"``      ``ConvLSTM_Model``            ``predrnn``
``"openstl_predrnn"``       ``PredRNN_Model``             ``predrnn``
``"openstl_predrnnv2"``     ``PredRNNv2_Model``           ``predrnn``
``"openstl_predrnnpp"``     ``PredRNNpp_Model``           ``predrnn``
``"openstl_mim"``           ``MIM_Model``                 ``predrnn``
``"openstl_e3dlstm"``       ``E3DLSTM_Model``             ``predrnn``
==========================  ============================  =============

OpenSTL's ``ConvLSTMCell`` creates ``conv_o`` and ``conv_last`` and never uses them; they
are dropped on loading, as is ``MIMN.conv_last`` of ``MIM_Model`` and the unused ``conv_o``
of its ``CausalLSTMCell`` (PredRNN++; kept with ``reference_compatible=True``).
``MIM_Model`` loads as :class:`stpl.models.MIM` with ``stationary_state="persistent"`` and
``E3DLSTM_Model`` as :class:`stpl.models.E3DLSTM` with ``update_memory=False,
recall_layout="reference"``: the reference's behaviour (``docs/cells/mim.md``,
``docs/cells/e3d_lstm.md``). MIM's ``ct_weight (2C, H, W)`` and ``oc_weight (C, H, W)``
become ``peephole_weight (3, C, H, W)``.

Cell sources: ``"openstl_convlstm"``, ``"openstl_causallstm"`` (``CausalLSTMCell``) and
``"openstl_ghu"`` (``GHU``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from stpl._validation import check_bool
from stpl.cells import CausalLSTMCell, ConvLSTMCell, GradientHighwayUnit
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
from stpl.interop.predrnn import (
    _stlstm_key,
    convert_stack,
    permute_patch_channels,
    stack_options,
    stack_source,
)
from stpl.models.e3d_lstm import E3DLSTM
from stpl.models.mim import MIM
from stpl.models.predrnn_pp import PredRNNPlusPlus
from stpl.patching import PatchOrder, check_patch_order

__all__ = [
    "StateDict",
    "convert_predrnnpp",
]

StateDict = Mapping[str, Tensor]


def _convlstm_key(key: str, value: Tensor) -> dict[str, Tensor] | None:
    if key.startswith(("conv_o.", "conv_last.")):
        return None  # dead parameters of the reference
    return {key: value}


def _convert_convlstm_cell(state_dict: StateDict) -> dict[str, Tensor]:
    out: dict[str, Tensor] = {}
    for key, value in state_dict.items():
        out.update(_convlstm_key(key, value) or {})
    return out


def _load_convlstm_cell(state_dict: StateDict, **options: Any) -> nn.Module:
    w = need(state_dict, "conv_x.0.weight", "openstl_convlstm")
    built = norm_options(state_dict, "conv_x.1.weight")
    built.update(options)
    cell = ConvLSTMCell(int(w.shape[1]), int(w.shape[0] // 4), int(w.shape[-1]), **built)
    return load_checked(cell, _convert_convlstm_cell(state_dict), "openstl_convlstm")


register_source(
    stack_source("openstl_convlstm", "OpenSTL ConvLSTM_Model", "convlstm", _convlstm_key, False)
)
register_source(
    stack_source("openstl_predrnn", "OpenSTL PredRNN_Model", "stlstm", _stlstm_key, False)
)
register_source(
    stack_source("openstl_predrnnv2", "OpenSTL PredRNNv2_Model", "stlstm", _stlstm_key, True)
)
register_cell_source(
    CellSource(
        "openstl_convlstm",
        "OpenSTL ConvLSTMCell",
        _load_convlstm_cell,
        _convert_convlstm_cell,
    )
)


# --------------------------------------------------------------------------------------------
# MIM_Model and E3DLSTM_Model


def _mim_peepholes(state_dict: StateDict, prefix: str, source: str) -> Tensor:
    """``ct_weight (2C, H, W)`` and ``oc_weight (C, H, W)`` -> ``peephole_weight (3, C, H, W)``."""
    ct = need(state_dict, f"{prefix}ct_weight", source)
    oc = need(state_dict, f"{prefix}oc_weight", source)
    return torch.cat((ct.reshape(2, *oc.shape), oc.unsqueeze(0)), dim=0)


_MIM_BLOCK_KEYS = {
    "conv_x_cc.": "conv_x.",
    "conv_t_cc.": "conv_h.",
    "conv_s_cc.": "conv_m.",
    "conv_last.": "conv_last.",
    "conv_x_concat.": "stationary.conv_x.",
    "conv_h_concat.": "stationary.conv_h.",
}
_MIMN_KEYS = {"conv_x_concat.": "conv_x.", "conv_h_concat.": "conv_h."}


def _rename(key: str, table: Mapping[str, str]) -> str | None:
    for old, new in table.items():
        if key.startswith(old):
            return new + key[len(old) :]
    return None


def _convert_mim(
    state_dict: StateDict,
    *,
    patch_size: int,
    image_channels: int,
    patch_order: PatchOrder | None = None,
    **unused: Any,
) -> dict[str, Tensor]:
    source = "openstl_mim"
    state_dict = unwrap_checkpoint(state_dict)
    out: dict[str, Tensor] = {}
    unexpected: list[str] = []
    for key, value in state_dict.items():
        head, _, rest = key.partition(".")
        layer, _, name = rest.partition(".")
        if head == "stlstm_layer" and layer == "0":
            out[f"cells.0.{name}"] = value
        elif head == "stlstm_layer" and layer.isdigit():
            if name in ("ct_weight", "oc_weight"):
                if name == "ct_weight":
                    out[f"cells.{layer}.stationary.peephole_weight"] = _mim_peepholes(
                        state_dict, f"stlstm_layer.{layer}.", source
                    )
                continue
            new = _rename(name, _MIM_BLOCK_KEYS)
            if new is None:
                unexpected.append(key)
            else:
                out[f"cells.{layer}.{new}"] = value
        elif head == "stlstm_layer_diff" and layer.isdigit():
            if name == "ct_weight":
                out[f"mimn.{layer}.peephole_weight"] = _mim_peepholes(
                    state_dict, f"stlstm_layer_diff.{layer}.", source
                )
            elif name == "oc_weight" or name.startswith("conv_last."):
                continue  # oc_weight joins ct_weight; conv_last is never used (dead)
            else:
                new = _rename(name, _MIMN_KEYS)
                if new is None:
                    unexpected.append(key)
                else:
                    out[f"mimn.{layer}.{new}"] = value
        elif key == "conv_last.weight":
            out["decoder.weight"] = value
        else:
            unexpected.append(key)
    if unexpected:
        raise ValueError(f"state_dict of source {source!r} has unexpected keys: {unexpected}")
    permute_patch_channels(
        out,
        image_channels=image_channels,
        patch_size=patch_size,
        source_order="predrnn",
        target_order="predrnn" if patch_order is None else check_patch_order(patch_order),
        first="cells.0.conv_x.0.weight",
    )
    return out


def _load_mim(
    state_dict: StateDict, *, patch_size: int, image_channels: int, **options: Any
) -> nn.Module:
    source = "openstl_mim"
    state_dict = unwrap_checkpoint(state_dict)
    num_layers = layer_count(state_dict, "stlstm_layer")
    hidden = [
        int(need(state_dict, f"stlstm_layer.{layer}.conv_last.weight", source).shape[0])
        for layer in range(num_layers)
    ]
    kernel = int(need(state_dict, "stlstm_layer.0.conv_x.0.weight", source).shape[-1])
    built: dict[str, Any] = {
        "in_channels": image_channels,
        "hidden_channels": hidden,
        "patch_size": patch_size,
        "kernel_size": kernel,
        "stationary_state": "persistent",
        "patch_order": "predrnn",
    }
    built.update(norm_options(state_dict, "stlstm_layer.0.conv_x.1.weight"))
    if num_layers > 1:
        ct = need(state_dict, "stlstm_layer.1.ct_weight", source)
        built["spatial_size"] = (int(ct.shape[-2]), int(ct.shape[-1]))
    built.update(options)
    converted = _convert_mim(
        state_dict,
        patch_size=patch_size,
        image_channels=image_channels,
        patch_order=built["patch_order"],
    )
    model = MIM(**built)
    hint = f"patch_size={patch_size}, image_channels={image_channels}?"
    return load_checked(model, converted, source, hint)


_E3D_KEYS = {
    "_norm_c_t.": "norm_c.",
    "conv_last.conv3d.": "conv_last.",
}


def _e3d_key(name: str) -> str | None:
    new = _rename(name, _E3D_KEYS)
    if new is not None:
        return new
    conv, _, rest = name.partition(".")
    if conv in ("conv_x", "conv_h", "conv_gm", "conv_new_cell", "conv_new_gm"):
        if rest.startswith("0.conv3d."):
            return f"{conv}.conv.{rest[len('0.conv3d.') :]}"
        if rest.startswith("1."):
            return f"{conv}.norm.{rest[2:]}"
    return None


def _convert_e3dlstm(
    state_dict: StateDict,
    *,
    patch_size: int,
    image_channels: int,
    patch_order: PatchOrder | None = None,
    **unused: Any,
) -> dict[str, Tensor]:
    source = "openstl_e3dlstm"
    state_dict = unwrap_checkpoint(state_dict)
    out: dict[str, Tensor] = {}
    unexpected: list[str] = []
    for key, value in state_dict.items():
        head, _, rest = key.partition(".")
        layer, _, name = rest.partition(".")
        new = _e3d_key(name) if head == "cell_list" and layer.isdigit() else None
        if new is not None:
            out[f"cells.{layer}.{new}"] = value
        elif key == "conv_last.weight":
            out["decoder.weight"] = value
        else:
            unexpected.append(key)
    if unexpected:
        raise ValueError(f"state_dict of source {source!r} has unexpected keys: {unexpected}")
    permute_patch_channels(
        out,
        image_channels=image_channels,
        patch_size=patch_size,
        source_order="predrnn",
        target_order="predrnn" if patch_order is None else check_patch_order(patch_order),
        first="cells.0.conv_x.conv.weight",
    )
    return out


def _load_e3dlstm(
    state_dict: StateDict, *, patch_size: int, image_channels: int, **options: Any
) -> nn.Module:
    source = "openstl_e3dlstm"
    state_dict = unwrap_checkpoint(state_dict)
    num_layers = layer_count(state_dict, "cell_list")
    norm_c = [
        need(state_dict, f"cell_list.{layer}._norm_c_t.weight", source)
        for layer in range(num_layers)
    ]
    kernel = need(state_dict, "cell_list.0.conv_x.0.conv3d.weight", source).shape[-3:]
    built: dict[str, Any] = {
        "in_channels": image_channels,
        "hidden_channels": [int(w.shape[0]) for w in norm_c],
        "patch_size": patch_size,
        "kernel_size": tuple(int(k) for k in kernel),
        "window_length": int(norm_c[0].shape[1]),
        "spatial_size": (int(norm_c[0].shape[-2]), int(norm_c[0].shape[-1])),
        "norm": "layer" if "cell_list.0.conv_x.1.weight" in state_dict else None,
        "update_memory": False,
        "recall_layout": "reference",
        "memory_length": None,
        "patch_order": "predrnn",
    }
    built.update(options)
    converted = _convert_e3dlstm(
        state_dict,
        patch_size=patch_size,
        image_channels=image_channels,
        patch_order=built["patch_order"],
    )
    model = E3DLSTM(**built)
    hint = f"patch_size={patch_size}, image_channels={image_channels}?"
    return load_checked(model, converted, source, hint)


register_source(
    ModelSource(
        "openstl_mim",
        "OpenSTL MIM_Model (stationary_state='persistent', as the reference)",
        _load_mim,
        _convert_mim,
    )
)
register_source(
    ModelSource(
        "openstl_e3dlstm",
        "OpenSTL E3DLSTM_Model (update_memory=False, recall_layout='reference', as the reference)",
        _load_e3dlstm,
        _convert_e3dlstm,
    )
)


# ---------------------------------------------------------------------------------- PredRNN++
_PREDRNNPP = "openstl_predrnnpp"
_HIGHWAY = "gradient_highway."


def _causal_key(keep_dead: bool) -> Callable[[str, Tensor], dict[str, Tensor] | None]:
    def convert(key: str, value: Tensor) -> dict[str, Tensor] | None:
        if key.startswith("conv_o.") and not keep_dead:
            return None  # dead parameters of the reference
        return {key: value}

    return convert


def _check_ghu_norm(state_dict: StateDict, prefix: str, source: str) -> None:
    """OpenSTL's GHU with ``layer_norm=1`` cannot run: say so instead of a shape error."""
    key = f"{prefix}z_concat.1.weight"
    conv = state_dict.get(f"{prefix}z_concat.0.weight")
    if key in state_dict and conv is not None and state_dict[key].shape[0] != conv.shape[0]:
        raise ValueError(
            f"state_dict of source {source!r} has a GHU layer norm {key} of shape "
            f"{tuple(state_dict[key].shape)} on a {conv.shape[0]}-channel convolution: OpenSTL's "
            "GHU with layer_norm=1 raises in forward (LayerNorm([nh, H, W]) on 2nh channels), "
            "so such a checkpoint cannot have been trained; stpl's GradientHighwayUnit "
            "normalises all 2nh channels (norm='layer')"
        )


def convert_predrnnpp(
    state_dict: StateDict,
    *,
    patch_size: int,
    image_channels: int,
    patch_order: PatchOrder | None = None,
    reference_compatible: bool = False,
) -> dict[str, Tensor]:
    """Rename a ``PredRNNpp_Model`` state dict for :class:`stpl.models.PredRNNPlusPlus`.

    The unused ``conv_o`` of each causal LSTM is dropped unless ``reference_compatible``.
    """
    state_dict = unwrap_checkpoint(state_dict)
    _check_ghu_norm(state_dict, _HIGHWAY, _PREDRNNPP)
    highway = {k: v for k, v in state_dict.items() if k.startswith(_HIGHWAY)}
    rest = {k: v for k, v in state_dict.items() if not k.startswith(_HIGHWAY)}
    out = convert_stack(
        _PREDRNNPP,
        rest,
        _causal_key(check_bool("reference_compatible", reference_compatible)),
        patch_size=patch_size,
        image_channels=image_channels,
        patch_order=patch_order,
    )
    out.update(highway)
    return out


def _load_predrnnpp(
    state_dict: StateDict, *, patch_size: int, image_channels: int, **options: Any
) -> nn.Module:
    state_dict = unwrap_checkpoint(state_dict)
    built = stack_options(_PREDRNNPP, state_dict, patch_size, image_channels, "causal_lstm", False)
    del built["decoupling"]
    built.update(options)
    if layer_count(state_dict, "cell_list") < 2:
        raise ValueError(
            f"state_dict of source {_PREDRNNPP!r} has fewer than 2 layers (cell_list.0 only); "
            "PredRNNpp_Model needs 2 or more"
        )
    keep_dead = bool(built.get("reference_compatible", False))
    converted = convert_predrnnpp(
        state_dict,
        patch_size=patch_size,
        image_channels=image_channels,
        patch_order=built["patch_order"],
        reference_compatible=keep_dead,
    )
    model = PredRNNPlusPlus(**built)
    hint = f"patch_size={patch_size}, image_channels={image_channels}?"
    return load_checked(model, converted, _PREDRNNPP, hint)


def _convert_causallstm_cell(
    state_dict: StateDict, reference_compatible: bool = False
) -> dict[str, Tensor]:
    convert = _causal_key(reference_compatible)
    out: dict[str, Tensor] = {}
    for key, value in state_dict.items():
        out.update(convert(key, value) or {})
    return out


def _load_causallstm_cell(state_dict: StateDict, **options: Any) -> nn.Module:
    source = "openstl_causallstm"
    w = need(state_dict, "conv_x.0.weight", source)
    built = norm_options(state_dict, "conv_x.1.weight")
    built.update(options)
    cell = CausalLSTMCell(int(w.shape[1]), int(w.shape[0] // 7), int(w.shape[-1]), **built)
    converted = _convert_causallstm_cell(state_dict, cell.reference_compatible)
    return load_checked(cell, converted, source)


def _load_ghu_cell(state_dict: StateDict, **options: Any) -> nn.Module:
    source = "openstl_ghu"
    _check_ghu_norm(state_dict, "", source)
    w = need(state_dict, "x_concat.0.weight", source)
    built = norm_options(state_dict, "x_concat.1.weight")
    built.update(options)
    cell = GradientHighwayUnit(int(w.shape[1]), int(w.shape[0] // 2), int(w.shape[-1]), **built)
    return load_checked(cell, dict(state_dict), source)


def _convert_ghu_cell(state_dict: StateDict) -> dict[str, Tensor]:
    _check_ghu_norm(state_dict, "", "openstl_ghu")
    return dict(state_dict)


register_source(
    ModelSource(_PREDRNNPP, "OpenSTL PredRNNpp_Model", _load_predrnnpp, convert_predrnnpp)
)
register_cell_source(
    CellSource(
        "openstl_causallstm",
        "OpenSTL CausalLSTMCell (PredRNN++; unused conv_o dropped)",
        _load_causallstm_cell,
        _convert_causallstm_cell,
    )
)
register_cell_source(
    CellSource("openstl_ghu", "OpenSTL GHU (PredRNN++)", _load_ghu_cell, _convert_ghu_cell)
)
