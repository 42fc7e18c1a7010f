"""OpenSTL (chengtan9907/OpenSTL @ c74deb5): ``SwinLSTM_B_Model`` and ``SwinLSTM_D_Model``.

Source ``"openstl_swinlstm"`` loads either: keys ``ST.*`` are SwinLSTM-B
(:class:`stpl.SwinLSTMB`), keys ``Downsample.*`` / ``Upsample.*`` SwinLSTM-D
(:class:`stpl.SwinLSTMD`). Read from the state dict: the embedding width and image channels
(``patch_embed.proj.weight``), the number of levels and blocks per cell, the heads (columns
of each ``relative_position_bias_table``), each cell's window (its rows, ``(2 ws - 1)^2``;
a window that the reference clamped to a small map is read as it is), the MLP ratio and the
qkv bias. ``patch_size`` must be 2, the only value the reference's output head supports.

Dropped on loading: the buffers ``attn_mask`` and ``relative_position_index`` (recomputed
from the input size), the never-used ``red`` of odd blocks and SwinLSTM-D's never-used
``Upsample.patch_embed``. Not recoverable from the weights: ``drop_path_rate`` (training
only; default 0.1, as the reference).

=============  =========================================  ==================================
reference      OpenSTL key                                stpl key
=============  =========================================  ==================================
B              ``ST.patch_embed.{proj,norm}.*``            ``patch_embed.{proj,norm}.*``
B              ``ST.layer.STBs.{k}.*``                     ``cell.blocks.{k}.*``
B              ``ST.patch_inflated.Conv.*``                ``head.*``
D              ``Downsample.patch_embed.*``                ``patch_embed.*``
D              ``Downsample.layers.{i}.STBs.{k}.*``        ``down.{i}.blocks.{k}.*``
D              ``Downsample.downsample.{i}.*``             ``merge.{i}.*``
D              ``Upsample.layers.{j}.STBs.{k}.*``          ``up.{j}.blocks.{k}.*``
D              ``Upsample.upsample.{j}.*``                 ``expand.{j}.*``
D              ``Upsample.Unembed.Conv.*``                 ``head.*``
=============  =========================================  ==================================
"""

from __future__ import annotations

import math
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
from stpl.models.swinlstm import SwinLSTMB, SwinLSTMD

__all__ = ["StateDict"]

StateDict = Mapping[str, Tensor]
SOURCE = "openstl_swinlstm"

_BLOCK = re.compile(r"^(.*?)\.STBs\.(\d+)\.(.*)$")
_BUFFERS = ("attn_mask", "attn.relative_position_index")


def _is_d(state_dict: StateDict) -> bool:
    if any(k.startswith("Downsample.") for k in state_dict):
        return True
    if any(k.startswith("ST.") for k in state_dict):
        return False
    raise ValueError(
        f"state_dict of source {SOURCE!r} has neither 'ST.*' (SwinLSTM_B_Model) nor "
        "'Downsample.*' (SwinLSTM_D_Model) keys: is it an OpenSTL SwinLSTM state dict?"
    )


def _block_key(prefix: str, index: int, rest: str, value: Tensor) -> dict[str, Tensor]:
    if rest in _BUFFERS:
        return {}
    if index % 2 == 1 and rest.startswith("red."):
        return {}  # never used by the reference
    return {f"{prefix}.blocks.{index}.{rest}": value}


_RENAMES_B = (("ST.patch_embed.", "patch_embed."), ("ST.patch_inflated.Conv.", "head."))
_RENAMES_D = (
    ("Downsample.patch_embed.", "patch_embed."),
    ("Downsample.downsample.", "merge."),
    ("Upsample.upsample.", "expand."),
    ("Upsample.Unembed.Conv.", "head."),
)
_CELLS = (("ST.layer", "cell"), ("Downsample.layers.", "down."), ("Upsample.layers.", "up."))


def _rename(key: str, value: Tensor, d: bool) -> dict[str, Tensor]:
    match = _BLOCK.match(key)
    if match:
        cell, index, rest = match.group(1), int(match.group(2)), match.group(3)
        for old, new in _CELLS:
            if cell.startswith(old):
                return _block_key(new + cell[len(old) :], index, rest, value)
    if d and key.startswith("Upsample.patch_embed."):
        return {}  # built by the reference, never used
    for old, new in _RENAMES_D if d else _RENAMES_B:
        if key.startswith(old):
            return {new + key[len(old) :]: value}
    return {key: value}  # unexpected keys are reported by load_checked


def _convert(
    state_dict: StateDict, *, patch_size: int = 2, image_channels: int | None = None, **_: Any
) -> dict[str, Tensor]:
    sd = unwrap_checkpoint(state_dict)
    d = _is_d(sd)
    out: dict[str, Tensor] = {}
    for key, value in sd.items():
        out.update(_rename(key, value, d))
    return out


def _blocks(sd: StateDict, prefix: str) -> int:
    return layer_count(sd, re.escape(prefix) + r"\.STBs")


def _cell_info(sd: StateDict, prefix: str) -> tuple[int, int, int]:
    """(depth, heads, window) of the cell whose keys start with ``prefix``."""
    table = need(sd, f"{prefix}.STBs.0.attn.relative_position_bias_table", SOURCE)
    side = math.isqrt(int(table.shape[0]))
    if side * side != table.shape[0] or side % 2 == 0:
        raise ValueError(
            f"{prefix}.STBs.0.attn.relative_position_bias_table has {table.shape[0]} rows, not "
            "(2 ws - 1)^2 for a window size ws"
        )
    return _blocks(sd, prefix), int(table.shape[1]), (side + 1) // 2


def _mlp_ratio(sd: StateDict, prefix: str) -> float:
    fc1 = need(sd, f"{prefix}.STBs.0.mlp.fc1.weight", SOURCE)
    return float(fc1.shape[0]) / float(fc1.shape[1])


def _options(sd: StateDict, patch_size: int, image_channels: int) -> dict[str, Any]:
    d = _is_d(sd)
    root = "Downsample" if d else "ST"
    proj = need(sd, f"{root}.patch_embed.proj.weight", SOURCE)
    if int(proj.shape[1]) != image_channels:
        raise ValueError(
            f"image_channels={image_channels}, but {root}.patch_embed.proj.weight has "
            f"{proj.shape[1]} input channels"
        )
    if int(proj.shape[-1]) != patch_size:
        raise ValueError(
            f"patch_size={patch_size}, but {root}.patch_embed.proj.weight is a "
            f"{proj.shape[-1]}x{proj.shape[-1]} patch convolution"
        )
    first = "Downsample.layers.0" if d else "ST.layer"
    options: dict[str, Any] = {
        "in_channels": image_channels,
        "patch_size": patch_size,
        "embed_dim": int(proj.shape[0]),
        "mlp_ratio": _mlp_ratio(sd, first),
        "qkv_bias": f"{first}.STBs.0.attn.qkv.bias" in sd,
    }
    if not d:
        depth, heads, window = _cell_info(sd, "ST.layer")
        options.update(depths=depth, num_heads=heads, window_size=window)
        return options
    n = layer_count(sd, r"Downsample\.layers")
    down = [_cell_info(sd, f"Downsample.layers.{i}") for i in range(n)]
    up = [_cell_info(sd, f"Upsample.layers.{j}") for j in range(n)]
    for j, (_, heads, _) in enumerate(up):
        if heads != down[n - 1 - j][1]:
            raise ValueError(
                f"Upsample.layers.{j} has {heads} heads, but the reference gives it "
                f"num_heads[{n - 1 - j}] = {down[n - 1 - j][1]} (Downsample.layers.{n - 1 - j})"
            )
    options.update(
        depths_downsample=[depth for depth, _, _ in down],
        depths_upsample=[up[n - 1 - i][0] for i in range(n)],
        num_heads=[heads for _, heads, _ in down],
        window_size=[w for _, _, w in down] + [w for _, _, w in up],
    )
    return options


def _load(
    state_dict: StateDict, *, patch_size: int, image_channels: int, **options: Any
) -> nn.Module:
    sd = unwrap_checkpoint(state_dict)
    built = _options(sd, patch_size, image_channels)
    built.update(options)
    model: nn.Module = SwinLSTMD(**built) if _is_d(sd) else SwinLSTMB(**built)
    return load_checked(model, _convert(sd), SOURCE)


register_source(
    ModelSource(
        SOURCE,
        "OpenSTL SwinLSTM_B_Model (keys ST.*) or SwinLSTM_D_Model (keys Downsample.*/Upsample.*)",
        _load,
        _convert,
    )
)
