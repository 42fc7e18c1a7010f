"""The main example: trains, writes its files, resumes exactly, fails cleanly, runs under DDP."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch

import stpl

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
    sys.modules[spec.name] = module  # as an import would (dataclasses look their module up)
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


@pytest.mark.parametrize(
    ("model", "loss", "repeat_flags"),
    [("predrnn_v2", "mse", True), ("modernn", "mse_l1", False)],
)
def test_resume_continues_exactly(
    example: ModuleType, tmp_path: Path, model: str, loss: str, repeat_flags: bool
) -> None:
    common = [*TINY, "--model", model, "--loss", loss, "--steps", "4"]
    assert example.main([*common, "--out", str(tmp_path / "a")]) == 0
    b = str(tmp_path / "b")
    assert example.main([*common, "--out", b, "--stop-at", "2"]) == 0
    assert torch.load(Path(b) / "checkpoint.pt", weights_only=True)["step"] == 2
    # --resume alone takes every setting of the run from the checkpoint
    again = common if repeat_flags else ["--quiet"]
    assert example.main([*again, "--out", b, "--resume", f"{b}/checkpoint.pt"]) == 0
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
        (["--threads", "0"], "--threads must be >= 1"),
        (["--num-eval", "0"], "--num-eval must be >= 1"),
        (["--num-train", "0"], "--num-train must be >= 1"),
        (["--log-every", "0"], "--log-every must be >= 1"),
        (["--stop-at", "0"], "--stop-at must be >= 1"),
        (["--workers", "-1"], "--workers must be >= 0"),
        (["--seed", "-1"], "--seed must be >= 0"),
        (["--lr", "0"], "--lr must be a positive number"),
        (["--lr", "nan"], "--lr must be a positive number"),
        (["--image-size", "30", "--model", "predrnn"], "on 1x30x30 frames: H=30 is not divisible"),
        (["--image-size", "30"], "30) is not divisible by patch_size=4"),
        (["--image-size", "0"], "--image-size must be >= 1"),
        (["--digit-size", "80"], "--digit-size 80 does not fit in --image-size 32"),
        (["--kernel", "4"], "kernel_size must be a positive odd int"),
        (["--kernel", "0"], "--kernel must be >= 1"),
        (["--device", "cuda:99"], "--device cuda:99"),
        (["--device", "gpu"], "--device 'gpu' is not a device"),
        (["--resume", "a.pt", "--evaluate", "b.pt"], "--resume and --evaluate exclude each other"),
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
    assert len(err) == 1 and err[0].startswith("train_moving_mnist.py: error: ")
    assert message in err[0]
    assert not out.exists()


def test_device_without_cuda_is_a_usage_error(
    example: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    out = tmp_path / "run"
    assert example.main([*TINY, "--device", "cuda", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "train_moving_mnist.py: error: --device cuda: cuda is not available here (try --device cpu)"
    ]
    assert not out.exists()


def test_stop_at_before_the_checkpoint_is_a_usage_error(
    example: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    assert example.main([*TINY, "--steps", "2", "--out", str(out)]) == 0
    capsys.readouterr()
    ckpt = str(out / "checkpoint.pt")
    assert example.main([*TINY, "--resume", ckpt, "--stop-at", "2", "--out", str(out)]) == 2
    assert "--stop-at 2 is not after the checkpoint's step 2" in capsys.readouterr().err


def test_evaluate_reads_the_checkpoints_settings(
    example: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    assert example.main([*TINY, "--steps", "1", "--out", str(out)]) == 0
    capsys.readouterr()
    ckpt = str(out / "checkpoint.pt")
    assert example.main(["--evaluate", ckpt]) == 0  # no training flag repeated
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("--evaluate: the checkpoint's settings ")
    for item in ("--hidden 4", "--layers 1", "--image-size 32", "--context 3", "--horizon 3"):
        assert item in lines[0]
    assert "--model" not in lines[0]  # the same as this command line's default: not listed
    assert re.search(r"\| modernn \| [\d.]+ \| [\d.]+ \| [\d.]+ \| [\d.]+ \|", lines[-1])
    # the evaluation itself may change (a longer horizon); the architecture may not
    assert example.main(["--evaluate", ckpt, "--horizon", "5", "--quiet"]) == 0
    capsys.readouterr()
    assert example.main(["--evaluate", ckpt, "--hidden", "8"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--hidden 8 contradicts the checkpoint" in err[0]
    # an old checkpoint without its settings: a clear message, not a size-mismatch traceback
    bare = torch.load(ckpt, weights_only=True)
    del bare["args"]
    torch.save(bare, tmp_path / "bare.pt")
    assert example.main(["--evaluate", str(tmp_path / "bare.pt")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "weights do not fit --model modernn" in err[0]
    (tmp_path / "junk.pt").write_text("not a checkpoint")
    assert example.main(["--evaluate", str(tmp_path / "junk.pt")]) == 2
    assert "is not a readable checkpoint" in capsys.readouterr().err


def test_every_loss_keeps_the_models_own_term(example: ModuleType) -> None:
    """--model predrnn_v2 --loss mse_l1 keeps PredRNN-V2's decoupling term (beta = 0.1)."""
    clips = torch.rand(2, 5, 1, 8, 8)
    for model, weight in (("predrnn_v2", 0.1), ("modernn", 1.0)):
        for loss in ("mse", "mse_l1"):
            args = example.parse_args(["--model", model, "--loss", loss])
            perfect = stpl.PredictorOutput(clips[:, 1:], None, torch.tensor(5.0))
            assert example.loss_fn(args, perfect, clips).item() == pytest.approx(5.0 * weight)
            off = stpl.PredictorOutput(clips[:, 1:] + 0.5, None, None)
            expected = 0.25 if loss == "mse" else 0.75
            assert example.loss_fn(args, off, clips).item() == pytest.approx(expected)
    # a forecast-only output (horizon frames) is compared with the last frames
    args = example.parse_args([])
    forecast = stpl.PredictorOutput(clips[:, -2:], None, None)
    assert example.loss_fn(args, forecast, clips).item() == 0.0


def test_the_host_reads_the_loss_once_per_log(
    example: ModuleType, tmp_path: Path, monkeypatch, capsys: pytest.CaptureFixture[str]
) -> None:  # type: ignore[no-untyped-def]
    """No loss.item() per step in the script: more steps between logs add no host reads."""
    calls = []
    item = torch.Tensor.item

    def counting_item(self):  # type: ignore[no-untyped-def]
        if sys._getframe(1).f_code.co_filename == str(SCRIPT):
            calls.append(1)
        return item(self)

    monkeypatch.setattr(torch.Tensor, "item", counting_item)
    counts = []
    for steps in ("2", "6"):
        calls.clear()
        flags = [*TINY, "--steps", steps, "--eval-every", "100", "--log-every", "100"]
        assert example.main([*flags, "--out", str(tmp_path / steps)]) == 0
        counts.append(len(calls))
    assert counts[0] == counts[1] > 0
    # and the progress line shows the mean loss of each --log-every window
    monkeypatch.undo()
    flags = [a for a in TINY if a != "--quiet"]
    p_out = str(tmp_path / "p")
    assert example.main([*flags, "--steps", "4", "--log-every", "1", "--out", p_out]) == 0
    shown = re.findall(r"\] (\d)/4 loss ([\d.]+)", capsys.readouterr().out)
    assert [int(s) for s, _ in shown] == [1, 2, 3, 4]
    history = json.loads((tmp_path / "p" / "metrics.json").read_text())["history"]
    assert history[-1]["loss"] == pytest.approx(float(shown[-1][1]), abs=1e-4)


def test_bad_data_file_names_the_problem(
    example: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.npy"
    np.save(bad, np.zeros((4, 4), dtype=np.uint8))  # not (20, N, 64, 64)
    out = tmp_path / "run"
    assert example.main([*TINY, "--data", str(bad), "--out", str(out)]) == 2
    assert "bad.npy" in capsys.readouterr().err
    assert not out.exists()


def test_longer_clips_are_cut_to_context_plus_horizon(example: ModuleType, tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    path = tmp_path / "mnist_test_seq.npy"
    np.save(path, rng.integers(0, 256, size=(20, 12, 32, 32), dtype=np.uint8))
    out = tmp_path / "run"
    args = [*TINY, "--data", str(path), "--steps", "2", "--out", str(out)]
    assert example.main(args) == 0  # 20-frame clips, 3 + 3 used
    last = json.loads((out / "metrics.json").read_text())["history"][-1]
    assert len(last["per_frame"]["mse"]) == 3


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
    not torch.distributed.is_available(), reason="this torch build has no torch.distributed"
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


@pytest.mark.parametrize("model", stpl.list_models())
def test_every_preset_trains_and_evaluates(
    example: ModuleType, tmp_path: Path, model: str
) -> None:
    # the README: "--model picks any preset"
    flags = [*TINY, "--steps", "2", "--model", model, "--out", str(tmp_path / model)]
    if model == "predrnn_pp":
        flags += ["--layers", "2"]  # the gradient highway sits between layers 0 and 1
    if model == "encoder_forecaster":
        flags += ["--image-size", "60"]  # its strides need sides that are multiples of 30
    assert example.main(flags) == 0
    last = json.loads((tmp_path / model / "metrics.json").read_text())["history"][-1]
    assert last["step"] == 2 and np.isfinite(last["mse"])
