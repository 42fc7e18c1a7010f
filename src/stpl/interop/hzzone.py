"""Precipitation nowcasting: Hzzone/Precipitation-Nowcasting's TrajGRU and encoder-forecaster,
and the official HKO-7 (sxjscience/HKO-7) ConvGRU.

Sources:

* ``hzzone_trajgru`` (cell): the port's ``TrajGRU`` module, keys ``i2h``, ``i2f_conv1``,
  ``h2f_conv1``, ``flows_conv``, ``ret`` (``.weight``/``.bias``); L, widths and kernels
  come from the shapes. The port's warp runs with ``align_corners=False`` on PyTorch >= 1.3;
  stpl defaults to the official ``True``: pass ``align_corners=False`` to reproduce the port
  as it runs today.
* ``hko7_convgru`` (cell): the official ConvGRU, keys ``i2h.weight``/``.bias``,
  ``h2h.weight``/``.bias`` (PyTorch layout), or MXNet names ``<prefix>_i2h_weight``, ...
* ``hzzone_encoder_forecaster`` (model): the port's ``EF(Encoder, Forecaster)`` state dict
  (``encoder.stage{i}.*``, ``encoder.rnn{i}.*``, ``forecaster.rnn{i}.*``,
  ``forecaster.stage{i}.*``), in the port's wiring or in the official one (deconvolutions
  without biases, upsampling that keeps the upper block's width): the layout is read from
  the shapes. Cells (TrajGRU or ConvGRU), widths, links and kernels come from the keys;
  strides and paddings (not in a state dict) default to HKO-7's. The port's dead weights
  (``forecaster.rnn{N}.i2h.*`` and ``.i2f_conv1.*``, never used) are dropped.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from torch import Tensor, nn

from stpl.cells import ConvGRUCell, TrajGRUCell
from stpl.interop._common import (
    CellSource,
    ModelSource,
    load_checked,
    need,
    register_cell_source,
    register_source,
    unwrap_checkpoint,
)
from stpl.models.encoder_forecaster import (
    HKO7_DOWNSAMPLE,
    HKO7_UPSAMPLE,
    EncoderForecaster,
)

__all__ = ["StateDict", "convert_encoder_forecaster"]

StateDict = Mapping[str, Tensor]

_TRAJ_KEYS = ("i2h", "i2f_conv1", "h2f_conv1", "flows_conv", "ret")
_GRU_KEYS = ("i2h", "h2h")
_MODEL = "hzzone_encoder_forecaster"


# --------------------------------------------------------------------------------------------
# cells


def _trajgru_args(sd: StateDict, source: str) -> tuple[int, int, dict[str, Any]]:
    """``(in_channels, hidden_channels, options)`` of a TrajGRU state dict (prefix removed)."""
    ret = need(sd, "ret.weight", source)
    flows = need(sd, "flows_conv.weight", source)
    h2f = need(sd, "h2f_conv1.weight", source)
    nh = int(ret.shape[0]) // 3
    links = int(flows.shape[0]) // 2
    options: dict[str, Any] = {
        "links": links,
        "flow_channels": int(h2f.shape[0]),
        "flow_kernel_size": int(h2f.shape[-1]),
    }
    c_in = 0
    if "i2h.weight" in sd:
        c_in = int(sd["i2h.weight"].shape[1])
        options["i2h_kernel_size"] = int(sd["i2h.weight"].shape[-1])
    if tuple(ret.shape) != (3 * nh, links * nh, 1, 1):
        raise ValueError(
            f"state_dict of source {source!r}: ret.weight has shape {tuple(ret.shape)}, "
            f"expected (3nh, L*nh, 1, 1) = {(3 * nh, links * nh, 1, 1)}"
        )
    return c_in, nh, options


def _convgru_args(sd: StateDict, source: str) -> tuple[int, int, dict[str, Any]]:
    h2h = need(sd, "h2h.weight", source)
    nh = int(h2h.shape[0]) // 3
    options: dict[str, Any] = {"bias": "h2h.bias" in sd}
    c_in = 0
    if "i2h.weight" in sd:
        c_in = int(sd["i2h.weight"].shape[1])
        options["i2h_kernel_size"] = int(sd["i2h.weight"].shape[-1])
    options["kernel_size"] = int(h2h.shape[-1])
    return c_in, nh, options


def _mxnet_to_torch(sd: StateDict) -> dict[str, Tensor]:
    """``<prefix>_i2h_weight`` -> ``i2h.weight`` (official MXNet names); others unchanged."""
    out: dict[str, Tensor] = {}
    for key, value in sd.items():
        m = re.match(r"^(?:.*_)?(i2h|h2h|i2f_conv1|h2f_conv1|f_out)_(weight|bias)$", key)
        if m and "." not in key:
            name = "flows_conv" if m.group(1) == "f_out" else m.group(1)
            out[f"{name}.{m.group(2)}"] = value
        else:
            out[key] = value
    return out


def _load_trajgru(state_dict: StateDict, **options: Any) -> nn.Module:
    sd = dict(state_dict)
    c_in, nh, built = _trajgru_args(sd, "hzzone_trajgru")
    built.update(options)
    cell = TrajGRUCell(c_in, nh, **built)
    return load_checked(cell, sd, "hzzone_trajgru")


def _load_convgru(state_dict: StateDict, **options: Any) -> nn.Module:
    sd = _mxnet_to_torch(state_dict)
    c_in, nh, built = _convgru_args(sd, "hko7_convgru")
    built.update(options)
    kernel = built.pop("kernel_size")
    cell = ConvGRUCell(c_in, nh, kernel, **built)
    return load_checked(cell, sd, "hko7_convgru")


register_cell_source(
    CellSource(
        "hzzone_trajgru",
        "Hzzone/Precipitation-Nowcasting nowcasting/models/trajGRU.py TrajGRU",
        _load_trajgru,
        dict,
    )
)
register_cell_source(
    CellSource(
        "hko7_convgru",
        "sxjscience/HKO-7 nowcasting/operators/conv_rnn.py ConvGRU "
        "(i2h/h2h, PyTorch or MXNet names)",
        _load_convgru,
        _mxnet_to_torch,
    )
)


# --------------------------------------------------------------------------------------------
# the encoder-forecaster


def _groups(sd: StateDict, prefix: str) -> dict[int, dict[str, Tensor]]:
    """``{i: {rest: tensor}}`` of the keys ``prefix{i}.rest``."""
    out: dict[int, dict[str, Tensor]] = {}
    for key, value in sd.items():
        m = re.match(rf"^{re.escape(prefix)}(\d+)\.(.+)$", key)
        if m:
            out.setdefault(int(m.group(1)), {})[m.group(2)] = value
    return out


def _layers(stage: Mapping[str, Tensor]) -> list[tuple[str, Tensor, Tensor | None]]:
    """``[(layer name, weight, bias)]`` of one ``make_layers`` Sequential, in key order."""
    names: list[str] = []
    for key in stage:
        name = key.rsplit(".", 1)[0]
        if name not in names:
            names.append(name)
    return [(n, stage[f"{n}.weight"], stage.get(f"{n}.bias")) for n in names]


def _check_activation(name: str, leaky: bool, where: str) -> None:
    """Layer names carry the activation (``make_layers``); only LeakyReLU is supported."""
    has = "leaky" in name
    if has != leaky or "relu" in name.replace("leaky", ""):
        want = "a LeakyReLU ('leaky' in its name)" if leaky else "no activation"
        raise ValueError(
            f"state_dict of source {_MODEL!r}: layer {name!r} of {where} must have {want}, "
            "as in the HKO-7 configuration; other activations are not supported"
        )


def _parse_model(sd: StateDict) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """Constructor options of :class:`EncoderForecaster` and the renamed state dict."""
    enc_stages = _groups(sd, "encoder.stage")
    enc_rnns = _groups(sd, "encoder.rnn")
    fc_stages = _groups(sd, "forecaster.stage")
    fc_rnns = _groups(sd, "forecaster.rnn")
    n = len(enc_rnns)
    if n == 0:
        raise ValueError(
            f"state_dict of source {_MODEL!r} has no 'encoder.rnn<i>.*' keys: is it the state "
            "dict of Hzzone's EF(Encoder, Forecaster)?"
        )
    for name, group in (
        ("encoder.stage", enc_stages),
        ("encoder.rnn", enc_rnns),
        ("forecaster.stage", fc_stages),
        ("forecaster.rnn", fc_rnns),
    ):
        if sorted(group) != list(range(1, n + 1)):
            raise ValueError(
                f"state_dict of source {_MODEL!r}: expected {name}1 .. {name}{n}; got "
                f"{sorted(group)}"
            )
    trajgru = "ret.weight" in enc_rnns[1]
    cell = "trajgru" if trajgru else "convgru"
    out: dict[str, Tensor] = {}
    hidden: list[int] = []
    links: list[int] = []
    fc_links: list[int] = []
    kernels: list[int] = []
    cell_opts: dict[str, Any] = {}

    def take_cell(group: dict[str, Tensor], target: str, top_forecaster: bool) -> tuple[int, int]:
        rnn = dict(group)
        if top_forecaster:  # Hzzone's forecaster.rnn{N} has input weights it never uses
            for dead in ("i2h.weight", "i2h.bias", "i2f_conv1.weight", "i2f_conv1.bias"):
                rnn.pop(dead, None)
        if trajgru:
            _, nh, opts = _trajgru_args(rnn, _MODEL)
            links_i = opts.pop("links")
        else:
            if "h2h.weight" not in rnn:
                raise ValueError(
                    f"state_dict of source {_MODEL!r}: {target} has neither 'ret.weight' "
                    "(TrajGRU) nor 'h2h.weight' (ConvGRU)"
                )
            _, nh, opts = _convgru_args(rnn, _MODEL)
            links_i = 0
        kernel = opts.pop("kernel_size", None)
        if kernel is not None and target.startswith("encoder"):
            kernels.append(int(kernel))
        cell_opts.update(opts)
        for key, value in rnn.items():
            out[f"{target}.{key}"] = value
        return nh, links_i

    for i in range(1, n + 1):
        nh, li = take_cell(enc_rnns[i], f"encoder.{i - 1}", False)
        hidden.append(nh)
        links.append(li)
    for i in range(1, n + 1):
        _, li = take_cell(fc_rnns[i], f"forecaster.{i - 1}", i == n)
        fc_links.append(li)

    # encoder stages: one convolution each (stem, then downsampling)
    stem_channels = 0
    for i in range(1, n + 1):
        layers = _layers(enc_stages[i])
        if len(layers) != 1:
            raise ValueError(
                f"state_dict of source {_MODEL!r}: encoder.stage{i} must hold one "
                f"convolution; got layers {[name for name, _, _ in layers]}"
            )
        name, w, b = layers[0]
        _check_activation(name, True, f"encoder.stage{i}")
        target = "stem" if i == 1 else f"down.{i - 2}"
        out[f"{target}.weight"] = w
        if b is not None:
            out[f"{target}.bias"] = b
        if i == 1:
            stem_channels = int(w.shape[0])
    # forecaster stages: one deconvolution each above block 1, the head in stage 1
    ups: list[int] = []
    deconv_bias: bool | None = None
    for i in range(2, n + 1):
        layers = _layers(fc_stages[i])
        if len(layers) != 1:
            raise ValueError(
                f"state_dict of source {_MODEL!r}: forecaster.stage{i} must hold one "
                f"deconvolution; got layers {[name for name, _, _ in layers]}"
            )
        name, w, b = layers[0]
        _check_activation(name, True, f"forecaster.stage{i}")
        out[f"up.{i - 2}.weight"] = w
        if b is not None:
            out[f"up.{i - 2}.bias"] = b
        deconv_bias = b is not None if deconv_bias is None else deconv_bias
        ups.append(int(w.shape[1]))
    head = _layers(fc_stages[1])
    if len(head) != 3:
        raise ValueError(
            f"state_dict of source {_MODEL!r}: forecaster.stage1 must hold a deconvolution and "
            f"two convolutions; got layers {[name for name, _, _ in head]}"
        )
    for (name, w, b), target, leaky in zip(
        head, ("head_deconv", "head_conv", "head_out"), (True, True, False), strict=True
    ):
        _check_activation(name, leaky, "forecaster.stage1")
        out[f"{target}.weight"] = w
        if b is not None:
            out[f"{target}.bias"] = b
    head_bias = head[0][2] is not None
    deconv_bias = head_bias if deconv_bias is None else deconv_bias
    if head_bias != deconv_bias:
        raise ValueError(
            f"state_dict of source {_MODEL!r}: some deconvolutions have biases and others not"
        )
    head_channels = int(head[0][1].shape[1])
    c_in = int(head[2][1].shape[0])
    image_channels = int(out["stem.weight"].shape[1])
    options: dict[str, Any] = {
        "cell": cell,
        "in_channels": image_channels,
        "out_channels": c_in,
        "hidden_channels": tuple(hidden),
        "stem_channels": stem_channels,
        "head_channels": head_channels,
        "upsample_channels": tuple(ups),
        "deconv_bias": deconv_bias,
        "layout": "hzzone" if deconv_bias else "official",
        **cell_opts,
    }
    if n == len(HKO7_DOWNSAMPLE):  # HKO-7's strides and paddings; kernels from the weights
        down = ["stem.weight", *(f"down.{i}.weight" for i in range(n - 1))]
        up = ["head_deconv.weight", *(f"up.{i}.weight" for i in range(n - 1))]
        options["downsample"] = tuple(
            (int(out[key].shape[-1]), s, p)
            for key, (_, s, p) in zip(down, HKO7_DOWNSAMPLE, strict=True)
        )
        options["upsample"] = tuple(
            (int(out[key].shape[-1]), s, p)
            for key, (_, s, p) in zip(up, HKO7_UPSAMPLE, strict=True)
        )
    if trajgru:
        options["links"] = tuple(links)
        options["forecaster_links"] = tuple(fc_links)
        options["kernel_size"] = 5
    else:
        options["kernel_size"] = tuple(kernels)
    return options, out


def convert_encoder_forecaster(
    state_dict: StateDict, *, patch_size: int = 1, image_channels: int = 1, **options: Any
) -> dict[str, Tensor]:
    """Rename Hzzone's ``EF`` parameters to :class:`stpl.models.EncoderForecaster`'s (dead
    weights dropped)."""
    return _parse_model(unwrap_checkpoint(state_dict))[1]


def _load_model(
    state_dict: StateDict, *, patch_size: int = 1, image_channels: int = 1, **options: Any
) -> nn.Module:
    if patch_size != 1:
        raise ValueError(
            f"patch_size must be 1 for source {_MODEL!r} (the encoder-forecaster reads whole "
            f"frames); got {patch_size}"
        )
    sd = unwrap_checkpoint(state_dict)
    built, converted = _parse_model(sd)
    if built["in_channels"] != image_channels:
        raise ValueError(
            f"image_channels={image_channels}, but the state dict's first convolution reads "
            f"{built['in_channels']} channels"
        )
    built.update(options)
    n = len(built["hidden_channels"])
    if "downsample" not in built or "upsample" not in built:
        raise ValueError(
            f"state_dict of source {_MODEL!r} has {n} blocks; HKO-7's strides and paddings are "
            "for 3: give downsample= and upsample= ((kernel, stride, padding) per block)"
        )
    model = EncoderForecaster(**built)
    return load_checked(model, converted, _MODEL)


register_source(
    ModelSource(
        _MODEL,
        "Hzzone/Precipitation-Nowcasting EF(Encoder, Forecaster) (port or official wiring)",
        _load_model,
        convert_encoder_forecaster,
    )
)
