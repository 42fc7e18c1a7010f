"""Parameter-name mapping from the reference implementations to stpl.

Sources and the layouts they use (``reference-implementations.md``):

==========================  ============================================  =============
source                      model                                          patch order
==========================  ============================================  =============
``"predrnn"``               thuml/predrnn-pytorch ``predrnn``              ``predrnn``
``"predrnn_v2"``            thuml/predrnn-pytorch ``predrnn_v2``           ``predrnn``
``"openstl_convlstm"``      OpenSTL ``ConvLSTM_Model``                     ``predrnn``
``"openstl_predrnn"``       OpenSTL ``PredRNN_Model``                      ``predrnn``
``"openstl_predrnnv2"``     OpenSTL ``PredRNNv2_Model``                    ``predrnn``
``"modernn"``               czh-98/MoDeRNN ``MoDeRNN``                     ``modernn``
==========================  ============================================  =============
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from stpl.cells import ConvLSTMCell, MoDeRNNCell, STLSTMCell
from stpl.patching import PatchOrder, check_patch_order, patch_permutation
from stpl.predictor import EncoderStackDecoder

SOURCES: tuple[str, ...] = (
    "predrnn",
    "predrnn_v2",
    "openstl_convlstm",
    "openstl_predrnn",
    "openstl_predrnnv2",
    "modernn",
)
"""Reference models :func:`load_reference` understands."""

CELL_SOURCES: tuple[str, ...] = ("openstl_convlstm", "ndrplz_convlstm", "predrnn_stlstm", "modernn")

_MODERNN_BRANCH = re.compile(r"^conv(33|55|77)_([XH])\.(.*)$")
_KERNEL_INDEX = {"33": 0, "55": 1, "77": 2}


def convert_cell_state_dict(source: str, state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Rename one reference cell's parameters to the matching stpl cell's.

    Args:
        source: ``"openstl_convlstm"`` (-> :class:`stpl.ConvLSTMCell`, defaults),
            ``"ndrplz_convlstm"`` (-> ``ConvLSTMCell(bias=True, gate_order="ifog")``),
            ``"predrnn_stlstm"`` (thuml/predrnn-pytorch and OpenSTL ST-LSTM cells, v1, v2
            and action -> :class:`stpl.STLSTMCell`), ``"modernn"`` (-> :class:`stpl.MoDeRNNCell`).
        state_dict: the reference cell's ``state_dict()``.

    Returns:
        A state dict for ``cell.load_state_dict``. OpenSTL ConvLSTM's dead ``conv_o`` and
        ``conv_last`` are dropped.
    """
    if source not in CELL_SOURCES:
        raise ValueError(f"unknown cell source {source!r}; known: {CELL_SOURCES}")
    out: dict[str, Tensor] = {}
    for key, value in state_dict.items():
        out.update(_convert_cell_key(source, key, value) or {})
    return out


def _convert_cell_key(source: str, key: str, value: Tensor) -> dict[str, Tensor] | None:
    if source == "predrnn_stlstm":
        return {key: value}
    if source == "openstl_convlstm":
        if key.startswith(("conv_o.", "conv_last.")):
            return None  # dead parameters of the reference
        return {key: value}
    if source == "ndrplz_convlstm":
        if key == "conv.weight":
            nh = value.shape[0] // 4
            c_in = value.shape[1] - nh
            return {"conv_x.0.weight": value[:, :c_in], "conv_h.0.weight": value[:, c_in:]}
        if key == "conv.bias":
            return {"conv_x.0.bias": value}
        return {key: value}
    if source == "modernn":
        if key.startswith("conv_i2h."):
            return {"conv_x." + key[len("conv_i2h.") :]: value}
        if key.startswith("conv_h2h."):
            return {"conv_h." + key[len("conv_h2h.") :]: value}
        match = _MODERNN_BRANCH.match(key)
        if match:
            kernel, reads, rest = match.groups()
            group = "x_branches" if reads == "X" else "h_branches"
            return {f"dcb.{group}.0.{_KERNEL_INDEX[kernel]}.{rest}": value}
        return {key: value}
    raise ValueError(f"unknown cell source {source!r}; known: {CELL_SOURCES}")


def _norm_options(state_dict: Mapping[str, Tensor], ln_key: str) -> dict[str, Any]:
    """``norm``/``spatial_size`` from the per-element layer norm weight ``ln_key``, if any."""
    if ln_key not in state_dict:
        return {"norm": None}
    return {"norm": "layer", "spatial_size": tuple(int(s) for s in state_dict[ln_key].shape[-2:])}


def load_reference_cell(source: str, state_dict: Mapping[str, Tensor], **options: Any) -> nn.Module:
    """Build the stpl cell that computes what a reference cell computes, with its weights.

    Sizes, kernel, layer norm (per element, as the reference's) and biases are read from
    the state dict; the result equals the reference cell's output for the same input and
    state (``h, state = cell(x, state)``; PredRNN-V2's ``Δc, Δm`` via
    ``forward_with_increments``).

    Args:
        source: one of :data:`CELL_SOURCES` (see :func:`convert_cell_state_dict`).
        state_dict: the reference cell's ``state_dict()``.
        **options: overrides of the inferred constructor arguments.

    Returns:
        A :class:`~stpl.ConvLSTMCell`, :class:`~stpl.STLSTMCell` or :class:`~stpl.MoDeRNNCell`.

    Raises:
        ValueError: unknown source, or keys the cell does not have (listed by the cell).
    """
    if source not in CELL_SOURCES:
        raise ValueError(f"unknown cell source {source!r}; known: {CELL_SOURCES}")
    sd = state_dict
    built: dict[str, Any]
    cls: type[nn.Module]
    if source == "ndrplz_convlstm":
        w = _need(sd, "conv.weight", source)
        nh = w.shape[0] // 4
        built = {"bias": "conv.bias" in sd, "gate_order": "ifog"}
        cls, c_in, kernel = ConvLSTMCell, w.shape[1] - nh, w.shape[-1]
    elif source == "modernn":
        w = _need(sd, "conv_i2h.0.weight", source)
        nh = w.shape[0] // 4
        built = _norm_options(sd, "norm_cell.weight")
        cls, c_in, kernel = MoDeRNNCell, w.shape[1], w.shape[-1]
    else:
        w = _need(sd, "conv_x.0.weight", source)
        built = _norm_options(sd, "conv_x.1.weight")
        c_in, kernel = w.shape[1], w.shape[-1]
        if source == "openstl_convlstm":
            cls, nh = ConvLSTMCell, w.shape[0] // 4
        else:
            cls, nh = STLSTMCell, w.shape[0] // 7
            built["bias"] = "conv_x.0.bias" in sd
            if "conv_a.0.weight" in sd:
                built["action_channels"] = int(sd["conv_a.0.weight"].shape[1])
    built.update(options)
    cell = cls(int(c_in), int(nh), int(kernel), **built)
    try:
        cell.load_state_dict(convert_cell_state_dict(source, sd))
    except RuntimeError as e:
        raise ValueError(f"state_dict of cell source {source!r} does not fit: {e}") from None
    return cell


def _check_source(source: str) -> None:
    if source not in SOURCES:
        raise ValueError(f"unknown source {source!r}; known sources: {SOURCES}")


def _layer_keys(state_dict: Mapping[str, Tensor], prefix: str) -> int:
    layers = {int(m.group(1)) for k in state_dict if (m := re.match(rf"^{prefix}\.(\d+)\.", k))}
    if not layers:
        raise ValueError(f"state_dict has no '{prefix}.<layer>.*' keys: is it the right source?")
    return max(layers) + 1


def _need(state_dict: Mapping[str, Tensor], key: str, source: str) -> Tensor:
    if key not in state_dict:
        raise ValueError(f"state_dict of source {source!r} is missing the key {key!r}")
    return state_dict[key]


def _infer_options(
    source: str, state_dict: Mapping[str, Tensor], patch_size: int, image_channels: int
) -> dict[str, Any]:
    """Model options (cell, sizes, norm, encoder/decoder layout) from a reference state dict."""
    modernn = source == "modernn"
    prefix = "lstm" if modernn else "cell_list"
    num_layers = _layer_keys(state_dict, prefix)
    hidden = []
    for layer in range(num_layers):
        key = f"{prefix}.{layer}.{'conv_h2h' if modernn else 'conv_h'}.0.weight"
        hidden.append(int(_need(state_dict, key, source).shape[1]))
    x_key = f"{prefix}.0.{'conv_i2h' if modernn else 'conv_x'}"
    kernel = int(_need(state_dict, x_key + ".0.weight", source).shape[-1])
    ln_key = x_key + ".1.weight"
    options: dict[str, Any] = {
        "hidden_channels": hidden,
        "patch_size": patch_size,
        "kernel_size": kernel,
        "in_channels": image_channels,
    }
    if ln_key in state_dict:
        options["norm"] = "layer"
        options["spatial_size"] = tuple(int(s) for s in state_dict[ln_key].shape[-2:])
    elif modernn:
        options["norm"] = None
    if modernn:
        options.update(
            cell="modernn",
            encoder="conv1x1",
            # the reference's embed and output convolutions always have a bias: a missing
            # one is a missing key, not a different architecture
            encoder_bias=True,
            decoder_bias=True,
            patch_order="modernn",
        )
    else:
        options.update(
            cell="convlstm" if source == "openstl_convlstm" else "stlstm",
            encoder=None,
            decoder_bias=False,
            patch_order="predrnn",
            decoupling=source in ("predrnn_v2", "openstl_predrnnv2"),
        )
    return options


def convert_state_dict(
    source: str,
    state_dict: Mapping[str, Tensor],
    *,
    patch_size: int,
    image_channels: int,
    patch_order: PatchOrder | None = None,
) -> dict[str, Tensor]:
    """Rename (and, for another ``patch_order``, permute) a reference model's parameters.

    Returns a state dict for the model :func:`load_reference` builds; dead parameters of
    the reference (OpenSTL ConvLSTM's ``conv_o``/``conv_last``) are dropped.

    Raises:
        ValueError: unknown source, or keys that the source does not have (listed).
    """
    _check_source(source)
    modernn = source == "modernn"
    prefix = "lstm." if modernn else "cell_list."
    cell_source = {"modernn": "modernn", "openstl_convlstm": "openstl_convlstm"}.get(
        source, "predrnn_stlstm"
    )
    out: dict[str, Tensor] = {}
    unexpected: list[str] = []
    for key, value in state_dict.items():
        if key.startswith(prefix):
            layer, rest = key[len(prefix) :].split(".", 1)
            converted = _convert_cell_key(cell_source, rest, value)
            for k, v in (converted or {}).items():
                out[f"cells.{layer}.{k}"] = v
        elif modernn and key.startswith(("embed.", "output.")):
            out[key.replace("embed.", "encoder.").replace("output.", "decoder.")] = value
        elif not modernn and key == "conv_last.weight":
            out["decoder.weight"] = value
        elif source in ("predrnn_v2", "openstl_predrnnv2") and key == "adapter.weight":
            out[key] = value
        else:
            unexpected.append(key)
    if unexpected:
        raise ValueError(f"state_dict of source {source!r} has unexpected keys: {unexpected}")

    ref_order: PatchOrder = "modernn" if modernn else "predrnn"
    target = ref_order if patch_order is None else check_patch_order(patch_order)
    if target != ref_order:
        perm = torch.tensor(patch_permutation(image_channels, patch_size, ref_order, target))
        first = "encoder.weight" if modernn else "cells.0.conv_x.0.weight"
        out[first] = out[first][:, perm]
        for key in ("decoder.weight", "decoder.bias"):
            if key in out:
                out[key] = out[key][perm]
    return out


def load_reference(
    source: str,
    state_dict: Mapping[str, Tensor],
    *,
    patch_size: int,
    image_channels: int,
    **options: Any,
) -> EncoderStackDecoder:
    """Build an :class:`~stpl.EncoderStackDecoder` holding a reference checkpoint's weights.

    The architecture (layers, hidden channels, kernel size, layer norm and its spatial
    size, adapter) is read from the state dict; its predictions equal the reference
    model's on the same frames and mask (see :meth:`EncoderStackDecoder.forward` for the
    step semantics, which are PredRNN's).

    Args:
        source: one of :data:`SOURCES`.
        state_dict: the reference model's ``state_dict()`` (e.g. ``torch.load(...)``; the
            predrnn-pytorch checkpoints keep it under ``"net_param"``).
        patch_size: the reference's ``patch_size``.
        image_channels: image channels C (the reference's ``img_channel`` / ``in_shape[1]``).
        **options: overrides of the built model's options, e.g. ``patch_order=`` (weights
            of the first and last layer are permuted to match) or ``checkpoint_steps=True``.

    Raises:
        ValueError: unknown source, or unexpected / missing keys (listed by name).
    """
    _check_source(source)
    if "net_param" in state_dict and isinstance(state_dict["net_param"], Mapping):
        state_dict = state_dict["net_param"]
    built = _infer_options(source, state_dict, patch_size, image_channels)
    built.update(options)
    converted = convert_state_dict(
        source,
        state_dict,
        patch_size=patch_size,
        image_channels=image_channels,
        patch_order=built["patch_order"],
    )
    model = EncoderStackDecoder(**built)
    own = model.state_dict()
    expected = set(own)
    missing = sorted(expected - set(converted))
    extra = sorted(set(converted) - expected)
    if missing or extra:
        raise ValueError(
            f"state_dict of source {source!r} does not fit the model it describes: "
            f"missing keys {missing}, unexpected keys {extra}"
        )
    for key, value in converted.items():
        want = own[key].shape
        if value.shape != want:
            raise ValueError(
                f"state_dict of source {source!r}: {key} has shape {tuple(value.shape)}, "
                f"expected {tuple(want)} "
                f"(patch_size={patch_size}, image_channels={image_channels}?)"
            )
    model.load_state_dict(converted)
    return model
