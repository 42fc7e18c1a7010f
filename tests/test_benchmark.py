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
    assert main(argv) == 0
    result = json.loads(capsys.readouterr().out)
    convs = 6  # one ST-LSTM layer: 5 convolutions, and the decoder
    for mode in ("inference", "training"):
        k = result["kernels_per_step"][mode]
        by_name = k["by_name"]
        assert k["compiled"] == k["generated"] + k["extern"] == sum(by_name.values())
        assert k["generated"] == sum(n for name, n in by_name.items() if "cpp_fused" in name)
        assert sum(n for name, n in by_name.items() if "conv2d_forward" in name
                   or "mkldnn_convolution" in name) == convs
        assert k["compiled"] < k["eager"]
    inference = result["kernels_per_step"]["inference"]
    # in inference the compiled step calls the convolutions and its fused gate kernels only
    assert inference["extern"] == convs and inference["generated"] >= 1
    assert inference["ratio"] < 1 / 3
    training = result["kernels_per_step"]["training"]
    # every parameter's gradient is added to the one of the other steps
    assert training["by_name"]["aten::add_"] == len(list(_bench_model(argv).parameters()))
    assert training["by_name"]["aten::convolution_backward"] >= 4


def _bench_model(argv: list[str]) -> torch.nn.Module:
    from stpl.benchmark._config import build_parser, config_from_args
    from stpl.benchmark._workload import build_module

    return build_module(config_from_args(build_parser().parse_args(argv)))


def test_count_launches_counts_work_not_views():
    from stpl.benchmark._kernels import count_aten_kernels, count_launches

    x = torch.rand(4, 4)
    assert count_aten_kernels(lambda: x.view(16).unsqueeze(0).expand(3, 16)) == 0
    assert count_aten_kernels(lambda: torch.sigmoid(x) * 2 + x) == 3
    assert count_aten_kernels(lambda: torch.cat([x, x]).split(2)) == 1
    w = torch.rand(4, requires_grad=True)
    y = w * torch.rand(4)
    # backward: MulBackward's mul, then AccumulateGrad adds it to the gradient already there
    w.grad, g = torch.zeros(4), torch.ones(4)
    assert count_launches(lambda: y.backward(g)) == {"aten::mul": 1, "aten::add_": 1}


@pytest.mark.slow
def test_count_launches_counts_calls_of_inductor_kernels():
    from stpl.benchmark._kernels import count_launches

    torch._dynamo.reset()
    fn = torch.compile(
        lambda t: torch.sigmoid(t) * 2 + t, options={"cpp.enable_kernel_profile": True}
    )
    x = torch.rand(4, 4)
    fn(x)
    launches = count_launches(lambda: (fn(x), fn(x)))
    # two calls of one fused kernel (sigmoid, mul, add): not the 3 eager operators
    assert sum(launches.values()) == 2 and all("cpp_fused" in name for name in launches)
    torch._dynamo.reset()


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
