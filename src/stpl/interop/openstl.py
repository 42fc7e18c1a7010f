"""OpenSTL (chengtan9907/OpenSTL @ c74deb5): the ConvLSTM, PredRNN and PredRNN-V2 models.

==========================  ============================  =============
source                      model                         patch order
==========================  ============================  =============
``"openstl_convlstm"``      ``ConvLSTM_Model``            ``predrnn``
``"openstl_predrnn"``       ``PredRNN_Model``             ``predrnn``
``"openstl_predrnnv2"``     ``PredRNNv2_Model``           ``predrnn``
``"openstl_predrnnpp"``     ``PredRNNpp_Model``           ``predrnn``
==========================  ============================  =============

OpenSTL's ``ConvLSTMCell`` creates ``conv_o`` and ``conv_last`` and never uses them; they
are dropped on loading. So is the unused ``conv_o`` of its ``CausalLSTMCell`` (PredRNN++),
unless ``reference_compatible=True`` asks for a model that keeps it.

Cell sources: ``"openstl_convlstm"``, ``"openstl_causallstm"`` (``CausalLSTMCell``) and
``"openstl_ghu"`` (``GHU``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

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
from stpl.interop.predrnn import _stlstm_key, convert_stack, stack_options, stack_source
from stpl.models import PredRNNPlusPlus
from stpl.patching import PatchOrder

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
