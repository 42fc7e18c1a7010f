"""Shared fixtures. Helpers for the cell tests (plain reference equations) are in ``_plain.py``."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

GOLDEN_DIR = Path(__file__).parent / "data" / "golden"


@pytest.fixture(autouse=True)
def _single_thread() -> Iterator[None]:
    """Tests use tiny tensors: one intra-op thread is faster there, and immune to a busy
    machine (CI has 2 cores). Tests that start processes set their own threads."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def golden() -> Callable[[str], dict[str, Any]]:
    """Load ``tests/data/golden/<name>`` (see the README there for where the files come from)."""

    def load(name: str) -> dict[str, Any]:
        return torch.load(GOLDEN_DIR / name, weights_only=True)

    return load
