"""Smoke test of the throughput tool: it runs on tiny configurations and its JSON is well formed.

No speed is asserted here (timings on shared machines drift); docs/benchmarks.md holds numbers.
"""

from __future__ import annotations

import argparse
import json

import pytest
import torch

from stpl.benchmark import BenchConfig, run_benchmark
from stpl.benchmark.__main__ import main

TINY = [
    "--hidden",
    "4",
    "--image-size",
    "8",
    "--patch-size",
    "2",
    "--batch",
    "2",
    "--frames",
    "4",
    "--repeats",
    "2",
]


@pytest.fixture(autouse=True)
def _one_thread() -> object:
    """Tiny ops on a loaded 2-core machine: one thread avoids OpenMP oversubscription."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _check_result(result: dict[str, object], mode: str) -> None:
    for key in (
        "config",
        "machine",
        "step",
        "frames_per_s",
        "flops",
        "gflops_per_s",
        "isolated_conv",
        "fraction_of_conv_rate",
        "peak_memory_bytes",
        "compile",
        "stream_latency",
    ):
        assert key in result, key
    step = result["step"]
    assert isinstance(step, dict)
    assert step["median_s"] > 0 and step["iqr_s"] >= 0 and step["runs"] == 2
    assert isinstance(result["flops"], int) and result["flops"] > 0
    iso = result["isolated_conv"]
    assert isinstance(iso, dict) and iso["calls"] > 0 and iso["flops"] > 0
    frac = result["fraction_of_conv_rate"]
    assert isinstance(frac, float) and frac > 0
    assert isinstance(result["peak_memory_bytes"], int) and result["peak_memory_bytes"] > 0
    if mode == "rollout":
        stream = result["stream_latency"]
        assert isinstance(stream, dict) and stream["median_s"] > 0
    else:
        assert result["stream_latency"] is None


@pytest.mark.parametrize("mode", ["forward", "train", "rollout"])
def test_cli_json_model(mode: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--model", "predrnn_v2", "--mode", mode, "--json", *TINY]) == 0
    result = json.loads(capsys.readouterr().out)
    _check_result(result, mode)
    assert result["config"]["mode"] == mode
    assert result["steps_per_run"] == 3


@pytest.mark.parametrize("cell", ["convlstm", "stlstm", "modernn", "dcb"])
def test_cli_json_cell(cell: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--cell", cell, "--mode", "train", "--json", *TINY]) == 0
    result = json.loads(capsys.readouterr().out)
    _check_result(result, "train")
    assert result["name"] == f"cell:{cell}"


def test_bfloat16_channels_last_checkpoint_text(capsys: pytest.CaptureFixture[str]) -> None:
    argv = [
        "--model",
        "modernn",
        "--dtype",
        "bfloat16",
        "--channels-last",
        "--checkpoint-steps",
        *TINY,
    ]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "fraction of isolated-convolution rate" in out


def test_cell_rollout_api() -> None:
    config = BenchConfig(
        model=None,
        cell="convlstm",
        hidden=4,
        image_size=8,
        patch_size=2,
        batch=2,
        frames=3,
        repeats=2,
        mode="rollout",
        memory=False,
    )
    result = run_benchmark(config)
    assert result["peak_memory_bytes"] is None
    assert result["stream_latency"] is not None


def test_invalid_configuration_exit_status(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--cell", "dcb", "--checkpoint-steps"]) == 2
    assert "checkpoint_steps" in capsys.readouterr().err
    with pytest.raises(ValueError, match="dtype"):
        BenchConfig(dtype="float16")


def test_compile_reports_speedup_over_the_eager_twin(capsys: pytest.CaptureFixture[str]) -> None:
    # aot_eager: the compile path of the tool without inductor's C++ build (seconds, not minutes)
    argv = ["--model", "convlstm", "--compile", "--compile-backend", "aot_eager", "--json", *TINY]
    assert main(argv) == 0
    result = json.loads(capsys.readouterr().out)
    _check_result(result, "train")
    comp = result["compile"]
    assert comp["target"] == "step" and comp["graph_breaks"] == 0 and comp["graphs"] >= 1
    eager = comp["eager_step"]
    assert eager["runs"] == 2 and eager["method"] == "timeit, interleaved"
    assert len(eager["times_s"]) == 2 and all(t > 0 for t in eager["times_s"])
    compiled = result["step"]["times_s"]
    expected = [e / c for e, c in zip(eager["times_s"], compiled, strict=True)]
    assert comp["speedup_per_round"] == pytest.approx(expected)
    assert comp["speedup"] == pytest.approx(eager["median_s"] / result["step"]["median_s"])
    assert result["config"]["compile_backend"] == "aot_eager"


def test_inductor_options() -> None:
    from stpl.benchmark._config import build_parser, config_from_args, parse_option
    from stpl.benchmark._workload import compile_kwargs

    assert parse_option("layout_optimization=false") == ("layout_optimization", False)
    assert parse_option("a=3") == ("a", 3)
    assert parse_option("a=0.5") == ("a", 0.5)
    assert parse_option("a=max") == ("a", "max")
    with pytest.raises(argparse.ArgumentTypeError, match="KEY=VALUE"):
        parse_option("layout_optimization")
    args = build_parser().parse_args(
        ["--compile", "--inductor-option", "layout_optimization=False", "--inductor-option", "x=1"]
    )
    config = config_from_args(args)
    assert config.inductor_options == (("layout_optimization", False), ("x", 1))
    assert config.to_dict()["inductor_options"] == {"layout_optimization": False, "x": 1}
    assert compile_kwargs(config) == {
        "backend": "inductor",
        "options": {"layout_optimization": False, "x": 1},
    }
    with pytest.raises(ValueError, match="inductor_options need compile_backend='inductor'"):
        BenchConfig(compile=True, compile_backend="eager", inductor_options=(("x", 1),))


@pytest.mark.slow
def test_stream_mode_times_eager_compiled_and_exported(capsys):
    assert (
        main(["--model", "convlstm", *TINY, "--mode", "stream", "--compile-backend", "aot_eager",
              "--json"])
        == 0
    )
    result = json.loads(capsys.readouterr().out)
    assert result["horizon"] == 2 and result["context"] == 2
    for name in ("eager", "compiled", "exported"):
        v = result["variants"][name]
        assert v["per_observed_frame_s"] > 0 and v["per_forecast_frame_s"] > 0
        assert v["observe"]["runs"] == 2
    assert result["speedup"]["eager"] == {"observe": 1.0, "forecast": 1.0}
    with pytest.raises(ValueError, match="stream"):
        BenchConfig(model=None, cell="convlstm", mode="stream")


@pytest.mark.slow
def test_kernel_mode_counts_eager_and_compiled_kernels(capsys):
    argv = ["--model", "predrnn", *TINY, "--layers", "1", "--mode", "kernels", "--json"]
    assert main([*argv, "--inductor-option", "layout_optimization=false"]) == 0
    result = json.loads(capsys.readouterr().out)
    for mode in ("inference", "training"):
        k = result["kernels_per_step"][mode]
        assert k["compiled"] == k["generated"] + k["extern"]
        assert k["generated"] > 0 and k["extern"] > 0 and k["eager"] > 0
        # one ST-LSTM layer: 5 convolutions and a decoder, each an extern kernel
        assert k["extern"] >= 6
        assert k["compiled"] < k["eager"]
    # the compiled step launches far fewer kernels in inference: the gates fuse
    assert result["kernels_per_step"]["inference"]["ratio"] < 0.5


def test_count_aten_kernels_counts_work_not_views():
    from stpl.benchmark._kernels import count_aten_kernels

    x = torch.rand(4, 4)
    assert count_aten_kernels(lambda: x.view(16).unsqueeze(0).expand(3, 16)) == 0
    assert count_aten_kernels(lambda: torch.sigmoid(x) * 2 + x) == 3
    assert count_aten_kernels(lambda: torch.cat([x, x]).split(2)) == 1


def test_stream_overrides_bound_e3d_recall_without_changing_its_forecast():
    import stpl
    from stpl.benchmark._stream import stream_overrides

    config = BenchConfig(model="e3d_lstm", mode="stream", frames=6, image_size=16)
    assert stream_overrides(config) == {"memory_length": 6}
    assert stream_overrides(BenchConfig(model="predrnn", mode="stream")) == {}
    models = []
    for extra in ({}, stream_overrides(config)):
        torch.manual_seed(0)
        model = stpl.get_model("e3d_lstm", hidden_channels=4, num_layers=2, image_size=16, **extra)
        models.append(model.eval())
    frames = torch.rand(1, 6, 1, 16, 16)
    with torch.no_grad():
        # 3 observed + 3 forecast frames: a bound of T = 6 slots keeps every cell state
        unbounded, bounded = (m.observe(frames[:, :3]) for m in models)
        expected = models[0].forecast(unbounded, 3)
        got = models[1].forecast(bounded, 3)
    assert got.shape == (1, 3, 1, 16, 16)
    torch.testing.assert_close(got, expected)
