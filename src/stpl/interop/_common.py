"""What every reference loader shares: the source registries and the key checks.

Each reference repository has one module in :mod:`stpl.interop` that registers its model
sources (:func:`register_source`) and cell sources (:func:`register_cell_source`);
:func:`stpl.interop.load_reference` and :func:`stpl.interop.load_reference_cell` dispatch
on the name.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from torch import Tensor, nn

__all__ = [
    "CellSource",
    "ModelSource",
    "cell_source",
    "layer_count",
    "load_checked",
    "model_source",
    "need",
    "norm_options",
    "register_cell_source",
    "register_source",
]

StateDict = Mapping[str, Tensor]


@dataclass(frozen=True)
class ModelSource:
    """A reference model stpl can load.

    Attributes:
        name: the ``source`` string.
        description: repository and class, for error messages and docs.
        load: ``(state_dict, patch_size=..., image_channels=..., **options) -> model``.
        convert: ``(state_dict, patch_size=..., image_channels=..., **options) -> dict``,
            the renamed state dict of the model ``load`` builds, or ``None``.
    """

    name: str
    description: str
    load: Callable[..., nn.Module]
    convert: Callable[..., dict[str, Tensor]] | None = None


@dataclass(frozen=True)
class CellSource:
    """A reference cell stpl can load: ``load(state_dict, **options) -> cell``."""

    name: str
    description: str
    load: Callable[..., nn.Module]
    convert: Callable[[StateDict], dict[str, Tensor]] | None = None


_MODELS: dict[str, ModelSource] = {}
_CELLS: dict[str, CellSource] = {}


def register_source(source: ModelSource) -> ModelSource:
    """Make ``source`` loadable by :func:`stpl.interop.load_reference`."""
    _MODELS[source.name] = source
    return source


def register_cell_source(source: CellSource) -> CellSource:
    """Make ``source`` loadable by :func:`stpl.interop.load_reference_cell`."""
    _CELLS[source.name] = source
    return source


def model_source(name: object) -> ModelSource:
    """The registered model source ``name``; ``ValueError`` listing the known ones."""
    if not isinstance(name, str) or name not in _MODELS:
        raise ValueError(f"unknown source {name!r}; known sources: {tuple(_MODELS)}")
    return _MODELS[name]


def cell_source(name: object) -> CellSource:
    """The registered cell source ``name``; ``ValueError`` listing the known ones."""
    if not isinstance(name, str) or name not in _CELLS:
        raise ValueError(f"unknown cell source {name!r}; known: {tuple(_CELLS)}")
    return _CELLS[name]


def model_sources() -> tuple[str, ...]:
    """Names of the registered model sources, in registration order."""
    return tuple(_MODELS)


def cell_sources() -> tuple[str, ...]:
    """Names of the registered cell sources, in registration order."""
    return tuple(_CELLS)


def need(state_dict: StateDict, key: str, source: str) -> Tensor:
    """``state_dict[key]``, or ``ValueError`` naming the missing key and the source."""
    if key not in state_dict:
        raise ValueError(f"state_dict of source {source!r} is missing the key {key!r}")
    return state_dict[key]


def layer_count(state_dict: StateDict, prefix: str) -> int:
    """Number of ``prefix.<i>.*`` groups (layers) in a state dict."""
    layers = {int(m.group(1)) for k in state_dict if (m := re.match(rf"^{prefix}\.(\d+)\.", k))}
    if not layers:
        raise ValueError(f"state_dict has no '{prefix}.<layer>.*' keys: is it the right source?")
    return max(layers) + 1


def norm_options(state_dict: StateDict, ln_key: str) -> dict[str, Any]:
    """``norm``/``spatial_size`` from the per-element layer norm weight ``ln_key``, if any."""
    if ln_key not in state_dict:
        return {"norm": None}
    return {"norm": "layer", "spatial_size": tuple(int(s) for s in state_dict[ln_key].shape[-2:])}


def unwrap_checkpoint(state_dict: Mapping[str, Any]) -> StateDict:
    """The state dict inside a checkpoint dict (``net_param``, ``state_dict``, ``model``)."""
    for key in ("net_param", "state_dict", "model"):
        inner = state_dict.get(key)
        if isinstance(inner, Mapping) and not isinstance(state_dict.get(key), Tensor):
            return inner
    return state_dict


def load_checked(
    model: nn.Module, converted: Mapping[str, Tensor], source: str, hint: str = ""
) -> nn.Module:
    """Load ``converted`` into ``model`` after checking keys and shapes, naming any mismatch."""
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
                f"expected {tuple(want)}" + (f" ({hint})" if hint else "")
            )
    model.load_state_dict(converted)
    return model
