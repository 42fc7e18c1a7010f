"""Load checkpoints trained with the reference code into stpl models."""

from stpl.interop._reference import (
    CELL_SOURCES,
    SOURCES,
    convert_cell_state_dict,
    convert_state_dict,
    load_reference,
    load_reference_cell,
)

__all__ = [
    "CELL_SOURCES",
    "SOURCES",
    "convert_cell_state_dict",
    "convert_state_dict",
    "load_reference",
    "load_reference_cell",
]
