"""The README is the front door: its example must run as written."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
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


@pytest.mark.slow
def test_deploying_example_runs_as_written(tmp_path, monkeypatch) -> None:
    doc = README.parent / "docs" / "deploying.md"
    blocks = re.findall(r"```python\n(.*?)```", doc.read_text(), flags=re.S)
    assert len(blocks) == 2
    monkeypatch.chdir(tmp_path)  # the example writes step.onnx
    namespace: dict[str, object] = {}
    exec(compile(blocks[0], str(doc), "exec"), namespace)
    forecast, state, pending = namespace["forecast"], namespace["state"], namespace["pending"]
    assert forecast.shape == (1, 10, 1, 64, 64)  # type: ignore[attr-defined]
    # the exported step from the previous state computes what observe computed
    torch.testing.assert_close(pending, state.pending)  # type: ignore[attr-defined]
    torch.testing.assert_close(namespace["s"], state.state)  # type: ignore[attr-defined]
    assert (tmp_path / "step.onnx").exists()
    exec(compile(blocks[1], str(doc), "exec"), namespace)
    torch.testing.assert_close(
        torch.from_numpy(namespace["pending"]), state.pending, atol=1e-4, rtol=1e-4  # type: ignore[attr-defined]
    )
