"""AIS-Bonn/MSPred's ``SpatioTempHierarch`` (ConvLSTM levels, DCGAN encoder/decoder).

Source ``"mspred"``: :func:`stpl.interop.load_reference` builds the
:class:`~stpl.models.HierarchicalPredictor` that computes what the reference model computes
(every level, every step, training and evaluation mode). The number of levels, widths,
layers per level, latent size and the priors'/posteriors' sizes, ancestral sampling and the
heads' channels are read from the state dict; the periods are not stored in it and are an
option (``periods=(1, 4, 8)``, the released configurations' for three levels, by default).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from torch import Tensor, nn

from stpl.interop._common import (
    ModelSource,
    layer_count,
    load_checked,
    need,
    register_source,
    unwrap_checkpoint,
)
from stpl.models.hierarchical import HierarchicalPredictor

__all__ = ["convert_mspred", "mspred_options"]

StateDict = Mapping[str, Tensor]
_SOURCE = "mspred"


def _unwrap(state_dict: Mapping[str, Any]) -> StateDict:
    inner = state_dict.get("model_state_dict")
    if isinstance(inner, Mapping):
        return inner
    return unwrap_checkpoint(state_dict)


def _levels(sd: StateDict) -> int:
    return layer_count(sd, "predictor")


def _layers(sd: StateDict, prefix: str) -> int:
    return layer_count(sd, f"{prefix}.cell_list")


def mspred_options(state_dict: Mapping[str, Any], *, image_channels: int) -> dict[str, Any]:
    """The :class:`~stpl.models.HierarchicalPredictor` arguments a reference state dict implies."""
    sd = _unwrap(state_dict)
    levels = _levels(sd)
    first = need(sd, "encoder.c1.main.0.weight", _SOURCE)
    if first.shape[1] != image_channels:
        raise ValueError(
            f"image_channels={image_channels} does not match the checkpoint, whose encoder reads "
            f"{first.shape[1]} channels (encoder.c1.main.0.weight {tuple(first.shape)})"
        )
    top = need(sd, f"encoder.c{levels + 1}.0.weight", _SOURCE)
    hidden = [
        int(need(sd, f"predictor.{h}.input_conv.weight", _SOURCE).shape[0]) for h in range(levels)
    ]
    layers = [_layers(sd, f"predictor.{h}") for h in range(levels)]
    kernel = int(need(sd, "predictor.0.cell_list.0.conv.weight", _SOURCE).shape[-1])
    options: dict[str, Any] = {
        "in_channels": int(image_channels),
        "hidden_channels": hidden if len(set(hidden)) > 1 else hidden[0],
        "num_layers": layers if len(set(layers)) > 1 else layers[0],
        "cell": "convlstm",
        "kernel_size": kernel,
        "num_filters": int(first.shape[0]),
        "dim": int(top.shape[0]),
    }
    if "prior.0.input_conv.weight" in sd:
        stats = need(sd, "prior.0.mu_var_net.weight", _SOURCE)
        z = int(stats.shape[0]) // 2
        prior_in = int(need(sd, "prior.0.input_conv.weight", _SOURCE).shape[1])
        level0 = 2 * int(first.shape[0])
        options.update(
            latent_channels=z,
            prior_hidden=int(sd["prior.0.input_conv.weight"].shape[0]),
            prior_layers=_layers(sd, "prior.0"),
            posterior_hidden=int(need(sd, "posterior.0.input_conv.weight", _SOURCE).shape[0]),
            posterior_layers=_layers(sd, "posterior.0"),
            ancestral=levels > 1 and prior_in != level0,
        )
    else:
        options["latent_channels"] = None
    heads: list[int | None] = []
    for h in range(1, levels):
        key = f"decoder_heads.{h - 1}.upc_layers.{3 * (h + 1)}.weight"
        heads.append(int(sd[key].shape[0]) if key in sd else None)
    options["head_channels"] = heads if any(c is not None for c in heads) else None
    if "encoder.c1.main.1.running_mean" in sd:
        options["batch_norm"] = "running"
    return options


def _split_cell(out: dict[str, Tensor], prefix: str, key: str, value: Tensor) -> None:
    if key == "conv.weight":
        nh = value.shape[0] // 4
        c_in = value.shape[1] - nh
        out[f"{prefix}.conv_x.0.weight"] = value[:, :c_in]
        out[f"{prefix}.conv_h.0.weight"] = value[:, c_in:]
    elif key == "conv.bias":
        out[f"{prefix}.conv_x.0.bias"] = value
    else:
        raise ValueError(f"state_dict of source {_SOURCE!r}: unexpected cell key {prefix}.{key}")


_NORM_FIELDS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def convert_mspred(
    state_dict: Mapping[str, Any], *, patch_size: int = 1, image_channels: int, **options: Any
) -> dict[str, Tensor]:
    """Rename a reference ``SpatioTempHierarch`` state dict to stpl's names.

    ConvLSTM convolutions on ``cat[x, h]`` are split into ``conv_x`` (with the bias) and
    ``conv_h``; ``device_param`` (an empty dummy) is dropped.
    """
    del options
    if patch_size != 1:
        raise ValueError(f"MSPred has no patching: patch_size must be 1; got {patch_size!r}")
    sd = _unwrap(state_dict)
    levels = _levels(sd)
    out: dict[str, Tensor] = {}
    unknown: list[str] = []
    for key, value in sd.items():
        if key == "device_param":
            continue
        m = re.match(r"^encoder\.c(\d+)\.(?:main\.)?([01])\.(\w+)$", key)
        if m:
            block, part, field = int(m.group(1)) - 1, m.group(2), m.group(3)
            out[f"encoder.blocks.{block}.{'conv' if part == '0' else 'norm'}.{field}"] = value
            continue
        m = re.match(r"^decoder\.upc(\d+)\.(?:main\.)?([01])\.(\w+)$", key)
        if m:
            block, part, field = int(m.group(1)) - 1, m.group(2), m.group(3)
            out[f"decoder.blocks.{block}.{'conv' if part == '0' else 'norm'}.{field}"] = value
            continue
        m = re.match(r"^(predictor|prior|posterior)\.(\d+)\.(.+)$", key)
        if m:
            group = {"predictor": "levels", "prior": "priors", "posterior": "posteriors"}[
                m.group(1)
            ]
            h, rest = m.group(2), m.group(3)
            cell = re.match(r"^cell_list\.(\d+)\.(.+)$", rest)
            if cell:
                _split_cell(out, f"{group}.{h}.cells.{cell.group(1)}", cell.group(2), value)
            elif rest.startswith("input_conv."):
                out[f"{group}.{h}.{rest}"] = value
            elif rest.startswith("out_proj.0."):
                out[f"{group}.{h}.output_conv.{rest[len('out_proj.0.') :]}"] = value
            elif rest.startswith("mu_var_net."):
                out[f"{group}.{h}.stats_conv.{rest[len('mu_var_net.') :]}"] = value
            else:
                unknown.append(key)
            continue
        m = re.match(r"^decoder_heads\.(\d+)\.upc_layers\.(\d+)\.(\w+)$", key)
        if m:
            level = int(m.group(1)) + 1
            index, field = int(m.group(2)), m.group(3)
            block, part = divmod(index, 3)
            if block == level + 1 and part == 0:
                out[f"heads.{level}.out_conv.{field}"] = value
            elif part == 0:
                out[f"heads.{level}.blocks.{block}.conv.{field}"] = value
            elif part == 1 and field in _NORM_FIELDS:
                out[f"heads.{level}.blocks.{block}.norm.{field}"] = value
            else:
                unknown.append(key)
            continue
        unknown.append(key)
    if unknown:
        raise ValueError(
            f"state_dict of source {_SOURCE!r} has keys that a {levels}-level SpatioTempHierarch "
            f"(ConvLSTM) does not have: {sorted(unknown)}"
        )
    return out


def load_mspred(
    state_dict: Mapping[str, Any], *, patch_size: int = 1, image_channels: int, **options: Any
) -> nn.Module:
    """Build the :class:`~stpl.models.HierarchicalPredictor` of a reference state dict and load it.

    Args:
        state_dict: the reference model's ``state_dict()`` (or its checkpoint dict, which
            holds it under ``"model_state_dict"``).
        patch_size: must be 1 (kept for the common ``load_reference`` signature).
        image_channels: image channels C (``dataset.num_channels``, 3 for Moving MNIST).
        **options: ``periods=(p_0, ..., p_{L-1})`` (default ``(1, 4, 8)`` for three levels)
            and any other :class:`~stpl.models.HierarchicalPredictor` option (e.g.
            ``head_schedule="aligned"``); options read from the state dict may be
            overridden too.
    """
    sd = _unwrap(state_dict)
    built = mspred_options(sd, image_channels=image_channels)
    levels = _levels(sd)
    if "periods" not in options:
        if levels != 3:
            raise ValueError(
                f"the checkpoint has {levels} levels: give their periods, periods=(p_0, ..., "
                f"p_{levels - 1}) (the default (1, 4, 8) is for three levels)"
            )
        options["periods"] = (1, 4, 8)
    periods = options["periods"]
    if isinstance(periods, (list, tuple)) and len(periods) != levels:
        raise ValueError(
            f"periods must have one entry per level of the checkpoint ({levels} levels); got "
            f"periods={tuple(periods)}"
        )
    built.update(options)
    model = HierarchicalPredictor(**built)
    converted = convert_mspred(sd, patch_size=patch_size, image_channels=image_channels)
    return load_checked(model, converted, _SOURCE, "is periods/levels right?")


register_source(
    ModelSource(
        _SOURCE,
        "AIS-Bonn/MSPred SpatioTempHierarch (SpatioTempHierarchConvLSTM)",
        load_mspred,
        convert_mspred,
    )
)
