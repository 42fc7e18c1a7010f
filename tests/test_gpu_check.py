"""``benchmarks/gpu_check.py``'s CPU-side logic: the float64 reference, the per-variant
checks and the table, run on the CPU at a tiny size (the GPU run itself needs CUDA)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"


@pytest.fixture(scope="module")
def gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module
    spec.loader.exec_module(module)
    return module


def test_without_cuda_it_says_so_and_exits_zero(gpu_check, capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert gpu_check.main([]) == 0
    assert "no CUDA device" in capsys.readouterr().out


@pytest.mark.slow
def test_cpu_run_checks_every_variant_against_float64(gpu_check, tmp_path):
    argv = [
        "--device", "cpu", "--size", "small", "--models", "predrnn_v2", "convlstm",
        "--frames", "4", "--batch", "2", "--repeats", "1", "--backend", "aot_eager",
        "--out", str(tmp_path),
    ]
    assert gpu_check.main(argv) == 0
    payload = json.loads((tmp_path / "gpu-check.json").read_text())
    rows = payload["rows"]
    # 2 models x 2 dtypes x (eager, compiled); CUDA graphs need CUDA
    assert len(rows) == 8
    assert {r["variant"] for r in rows} == {"eager", "compiled"}
    for r in rows:
        assert r["ok"] and not r["error"], r
        assert r["gradient_error"] <= gpu_check.TOLERANCE[r["dtype"]]
        assert r["step_ms"] > 0
    # bfloat16 is checked, not just run: its error is larger than float32's
    err = {(r["model"], r["dtype"], r["variant"]): r["prediction_error"] for r in rows}
    assert err[("convlstm", "bfloat16", "eager")] > err[("convlstm", "float32", "eager")]
    table = (tmp_path / "gpu-check.md").read_text()
    assert "| predrnn_v2 | bfloat16 | compiled | yes |" in table


def test_a_wrong_result_fails_the_check(gpu_check):
    ref = gpu_check.reference("convlstm", "small", 2, 4, 2)
    ref["grads"] = {k: -v for k, v in ref["grads"].items()}  # what a broken build would give
    row = gpu_check.check_variant(
        "convlstm", "float32", "eager", ref, device=torch.device("cpu"), size="small",
        batch=2, frames=4, context=2, repeats=1, backend="aot_eager",
    )
    assert not row.ok and row.gradient_error > 1.0
