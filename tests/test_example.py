"""The main example: trains, writes its files, resumes exactly, fails cleanly, runs under DDP."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "examples" / "train_moving_mnist.py"
TINY = [
    "--image-size", "32", "--digit-size", "14", "--hidden", "4", "--layers", "1",
    "--context", "3", "--horizon", "3", "--num-train", "16", "--num-eval", "4",
    "--batch-size", "4", "--eval-every", "2", "--quiet",
]  # fmt: skip


@pytest.fixture(scope="module")
def example() -> ModuleType:
    spec = importlib.util.spec_from_file_location("train_moving_mnist", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_writes_every_file(example: ModuleType, tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert example.main([*TINY, "--steps", "2", "--out", str(out)]) == 0
    names = {p.name for p in out.iterdir()}
    assert names == {"metrics.json", "checkpoint.pt", "predictions.gif", "frame_metrics.png"}
    summary = json.loads((out / "metrics.json").read_text())
    last = summary["history"][-1]
    assert last["step"] == 2
    assert len(last["per_frame"]["mse"]) == 3 and len(last["per_frame"]["ssim"]) == 3
    assert all(np.isfinite([last["mse"], last["mae"], last["psnr"], last["ssim"]]))
    from PIL import Image

    with Image.open(out / "predictions.gif") as gif:
        assert gif.n_frames == 3
        assert gif.size == (32 * 2, 64 * 2)  # truth over prediction, enlarged 2x


@pytest.mark.parametrize(("model", "loss"), [("predrnn_v2", "mse"), ("modernn", "mse_l1")])
def test_resume_continues_exactly(
    example: ModuleType, tmp_path: Path, model: str, loss: str
) -> None:
    common = [*TINY, "--model", model, "--loss", loss, "--steps", "4"]
    assert example.main([*common, "--out", str(tmp_path / "a")]) == 0
    b = str(tmp_path / "b")
    assert example.main([*common, "--out", b, "--stop-at", "2"]) == 0
    assert torch.load(Path(b) / "checkpoint.pt", weights_only=True)["step"] == 2
    assert example.main([*common, "--out", b, "--resume", f"{b}/checkpoint.pt"]) == 0
    straight = torch.load(tmp_path / "a" / "checkpoint.pt", weights_only=True)
    resumed = torch.load(Path(b) / "checkpoint.pt", weights_only=True)
    assert resumed["step"] == straight["step"] == 4
    for key, value in straight["model"].items():
        torch.testing.assert_close(resumed["model"][key], value, rtol=0, atol=0)


def test_evaluate_prints_the_paper_table(
    example: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    assert example.main([*TINY, "--steps", "1", "--out", str(out)]) == 0
    capsys.readouterr()
    assert example.main([*TINY, "--evaluate", str(out / "checkpoint.pt")]) == 0
    table = capsys.readouterr().out
    assert re.search(r"\| modernn \| [\d.]+ \| [\d.]+ \| [\d.]+ \| [\d.]+ \|", table)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model", "nope"], "known models"),
        (["--data", "missing.npy"], "no such file"),
        (["--steps", "0"], "--steps must be >= 1"),
    ],
)
def test_bad_input_one_message_nothing_written(
    example: ModuleType,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    args: list[str],
    message: str,
) -> None:
    out = tmp_path / "run"
    assert example.main([*TINY, *args, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]
    assert not out.exists()


def test_bad_data_file_names_the_problem(
    example: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.npy"
    np.save(bad, np.zeros((4, 4), dtype=np.uint8))  # not (20, N, 64, 64)
    out = tmp_path / "run"
    assert example.main([*TINY, "--data", str(bad), "--out", str(out)]) == 2
    assert "bad.npy" in capsys.readouterr().err
    assert not out.exists()


def test_trains_on_a_moving_mnist_file(example: ModuleType, tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    path = tmp_path / "mnist_test_seq.npy"
    np.save(path, rng.integers(0, 256, size=(20, 12, 64, 64), dtype=np.uint8))
    out = tmp_path / "run"
    args = ["--data", str(path), "--steps", "1", "--out", str(out), "--hidden", "4"]
    args += ["--layers", "1", "--batch-size", "2", "--quiet", "--num-eval", "2"]
    assert example.main(args) == 0
    assert (out / "checkpoint.pt").is_file()


@pytest.mark.slow
@pytest.mark.skipif(
    shutil.which("torchrun") is None and sys.platform == "win32", reason="no torchrun"
)
def test_ddp_two_processes_stay_in_sync(tmp_path: Path) -> None:
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    cmd += [str(SCRIPT), *TINY, "--steps", "3", "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((out / "metrics.json").read_text())
    assert summary["ranks_in_sync"] is True
    assert summary["history"][-1]["step"] == 3


@pytest.mark.slow
def test_ddp_batch_that_does_not_divide_fails_cleanly(tmp_path: Path) -> None:
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    cmd += [str(SCRIPT), *TINY, "--batch-size", "3", "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode != 0
    assert proc.stderr.count("--batch-size 3 does not divide over 2 processes") == 1
    assert not out.exists()
