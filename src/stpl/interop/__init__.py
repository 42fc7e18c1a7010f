"""Load checkpoints trained with the reference code into stpl models and cells.

One module per reference repository registers what it can load:
:mod:`~stpl.interop.predrnn` (thuml/predrnn-pytorch), :mod:`~stpl.interop.openstl`
(OpenSTL), :mod:`~stpl.interop.modernn` (czh-98/MoDeRNN), :mod:`~stpl.interop.ndrplz`
(ndrplz/ConvLSTM_pytorch, MSPred's cell), :mod:`~stpl.interop.saconvlstm` (hyona-yu/
SA-convlstm's cell), :mod:`~stpl.interop.hzzone` (Hzzone/Precipitation-Nowcasting's
TrajGRU and encoder-forecaster, HKO-7's ConvGRU) and :mod:`~stpl.interop.mspred`
(AIS-Bonn/MSPred). ``docs/interop.md`` lists the sources and the
parameter names.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor, nn

from stpl.interop import (  # noqa: F401  (register sources)
    hzzone,
    modernn,
    mspred,
    ndrplz,
    openstl,
    openstl_mau_phydnet,
    openstl_swinlstm,
    predrnn,
    saconvlstm,
)
from stpl.interop._common import (
    cell_source,
    cell_sources,
    model_source,
    model_sources,
    unwrap_checkpoint,
)

__all__ = [
    "CELL_SOURCES",
    "SOURCES",
    "convert_cell_state_dict",
    "convert_state_dict",
    "load_reference",
    "load_reference_cell",
]

SOURCES: tuple[str, ...] = model_sources()
"""Reference models :func:`load_reference` understands."""

CELL_SOURCES: tuple[str, ...] = cell_sources()
"""Reference cells :func:`load_reference_cell` understands."""


def load_reference(
    source: str,
    state_dict: Mapping[str, Tensor],
    *,
    patch_size: int,
    image_channels: int,
    **options: Any,
) -> nn.Module:
    """Build the stpl model that computes what a reference model computes, with its weights.

    The architecture (layers, hidden channels, kernel size, layer norm and its spatial
    size, adapter, ...) is read from the state dict; the model's predictions equal the
    reference model's on the same frames and mask (``model(frames, context, mask)``, the
    step semantics of :class:`stpl.models.RecurrentPredictor`).

    Args:
        source: one of :data:`SOURCES`.
        state_dict: the reference model's ``state_dict()`` (e.g. ``torch.load(...)``; a
            checkpoint dict holding it under ``"net_param"`` or ``"state_dict"`` works too).
        patch_size: the reference's ``patch_size``.
        image_channels: image channels C (the reference's ``img_channel`` / ``in_shape[1]``).
        **options: overrides of the built model's options, e.g. ``patch_order=`` (weights
            of the first and last layer are permuted to match) or ``checkpoint_steps=True``.

    Raises:
        ValueError: unknown source, or unexpected / missing keys (listed by name).
    """
    return model_source(source).load(
        state_dict, patch_size=patch_size, image_channels=image_channels, **options
    )


def convert_state_dict(
    source: str,
    state_dict: Mapping[str, Tensor],
    *,
    patch_size: int,
    image_channels: int,
    **options: Any,
) -> dict[str, Tensor]:
    """Rename (and, for another ``patch_order``, permute) a reference model's parameters.

    Returns a state dict for the model :func:`load_reference` builds; dead parameters of
    the reference are dropped.

    Raises:
        ValueError: unknown source, or keys that the source does not have (listed).
    """
    src = model_source(source)
    if src.convert is None:
        raise ValueError(f"source {source!r} has no standalone conversion; use load_reference")
    return src.convert(
        unwrap_checkpoint(state_dict),
        patch_size=patch_size,
        image_channels=image_channels,
        **options,
    )


def load_reference_cell(source: str, state_dict: Mapping[str, Tensor], **options: Any) -> nn.Module:
    """Build the stpl cell that computes what a reference cell computes, with its weights.

    Sizes, kernel, layer norm (per element, as the reference's) and biases are read from
    the state dict; the result equals the reference cell's output for the same input and
    state (``h, state = cell(x, state)``).

    Args:
        source: one of :data:`CELL_SOURCES`.
        state_dict: the reference cell's ``state_dict()``.
        **options: overrides of the inferred constructor arguments.

    Raises:
        ValueError: unknown source, or keys the cell does not have (listed by the cell).
    """
    return cell_source(source).load(state_dict, **options)


def convert_cell_state_dict(source: str, state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Rename one reference cell's parameters to the matching stpl cell's.

    Args:
        source: one of :data:`CELL_SOURCES`.
        state_dict: the reference cell's ``state_dict()``.

    Returns:
        A state dict for ``cell.load_state_dict``; dead parameters are dropped.
    """
    src = cell_source(source)
    if src.convert is None:
        raise ValueError(f"cell source {source!r} has no standalone conversion")
    return src.convert(state_dict)
