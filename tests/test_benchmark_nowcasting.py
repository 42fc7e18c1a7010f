"""The throughput tool on the encoder-forecaster preset (tiny sizes; no speed asserted)."""

from __future__ import annotations

import json

import pytest
import torch

from stpl.benchmark.__main__ import main
from stpl.benchmark._config import build_parser, config_from_args

TINY = ["--model", "encoder_forecaster", "--hidden", "4", "--image-size", "60", "--batch", "1"]
TINY += ["--frames", "4", "--repeats", "2", "--no-isolated", "--json"]


@pytest.fixture(autouse=True)
def _one_thread() -> object:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize(("mode", "steps"), [("train", 4), ("forward", 4), ("rollout", 4)])
def test_encoder_forecaster_runs_in_every_mode(mode, steps, capsys):
    assert main([*TINY, "--mode", mode]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["steps_per_run"] == steps  # context 2 + 2 forecast frames
    assert result["step"]["median_s"] > 0 and result["flops"] > 0
    assert (result["stream_latency"] is not None) == (mode == "rollout")


def test_default_frame_size_is_the_presets():
    args = build_parser().parse_args(["--model", "encoder_forecaster"])
    assert config_from_args(args).image_size == 480  # HKO-7
    assert config_from_args(build_parser().parse_args(["--model", "predrnn"])).image_size == 64
