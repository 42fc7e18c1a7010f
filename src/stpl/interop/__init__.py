"""Load checkpoints trained with the reference code into stpl models."""

from stpl.interop._reference import (
    SOURCES,
    convert_cell_state_dict,
    convert_state_dict,
    load_reference,
)

__all__ = ["SOURCES", "convert_cell_state_dict", "convert_state_dict", "load_reference"]
