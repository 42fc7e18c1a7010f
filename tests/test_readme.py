"""The README is the front door: its example must run as written."""

from __future__ import annotations

import re
from pathlib import Path

import torch

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_example_runs_as_written() -> None:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks, "the README has no python example"
    namespace: dict[str, object] = {}
    exec(compile(blocks[0], str(README), "exec"), namespace)
    h, out = namespace["h"], namespace["out"]
    assert isinstance(h, torch.Tensor) and h.shape == (8, 32, 64, 64)
    assert out.predictions.shape == (8, 9, 3, 64, 64)  # type: ignore[attr-defined]


def test_readme_names_the_two_commands_that_ci_runs() -> None:
    text = README.read_text()
    ci = (README.parent / ".ci" / "run").read_text()
    assert "python examples/train_moving_mnist.py" in text
    assert "python -m pytest -q" in text and "python -m pytest -q" in ci
    assert 'pip install -e ".[dev,examples]"' in text and '-e ".[dev,examples]"' in ci
