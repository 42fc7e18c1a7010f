"""``stpl.export``: every preset's streaming pieces leave Python with ``torch.export`` and ONNX.

Each exported program is run and compared with the eager model it came from (1e-4): the
observe step over several frames with the state handed back in, the fixed-horizon forecast
from a stream state, and the context + horizon rollout. ONNX models run under onnxruntime
(skipped only when the ``[export]`` extra is not installed).
"""

from __future__ import annotations

import importlib.util

import pytest
import torch
from torch.testing import assert_close

import stpl
import stpl.export as sx
from stpl.registry import preset

NAMES = stpl.list_models()
TOL = {"atol": 1e-4, "rtol": 1e-4}
HAS_ORT = all(importlib.util.find_spec(m) for m in ("onnx", "onnxscript", "onnxruntime"))


def small(name: str) -> tuple[torch.nn.Module, tuple[int, int, int]]:
    entry = preset(name)
    torch.manual_seed(0)
    return stpl.get_model(name, **entry.small).eval(), entry.frame_shape


def frames_for(shape: tuple[int, int, int], t: int, b: int = 1) -> torch.Tensor:
    return torch.rand(b, t, *shape, generator=torch.Generator().manual_seed(3))


@pytest.mark.parametrize("name", NAMES)
def test_exported_observe_step_forecast_and_rollout_equal_eager(name):
    model, shape = small(name)
    frames = frames_for(shape, 4)
    # the step: three frames, the state handed back in each time
    program = sx.export_observe_step(model, frames[:, 0]).module()
    state = model.initial_state(frames)
    for t in range(3):
        pending, state = program(frames[:, t], state)
    expected = model.observe(frames[:, :3])
    assert_close(pending, expected.pending, **TOL)
    # the forecast from that state
    forecast = sx.export_forecast(model, expected, 3).module()
    assert_close(forecast(state, pending), model.forecast(expected, 3), **TOL)
    # the rollout from the zero state
    rollout = sx.export_rollout(model, frames[:, :2], 3).module()
    assert_close(rollout(frames[:, :2]), model.generate(frames[:, :2], 3).predictions, **TOL)


def test_initial_state_names_and_errors():
    model, shape = small("predrnn")
    frame = frames_for(shape, 1)[:, 0]
    state = model.initial_state(frame)
    assert sx.state_names(state)[:3] == ["state.0.h", "state.0.c", "state.0.m"]
    assert len(sx.state_names(state)) == 3 * model.num_layers
    with pytest.raises(ValueError, match="eval"):
        sx.export_observe_step(model.train(), frame)
    with pytest.raises(TypeError, match="RecurrentPredictor"):
        sx.ObserveStep(torch.nn.Linear(2, 2))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="frame must be"):
        sx.export_observe_step(model.eval(), frame[0])
    with pytest.raises(ValueError, match="horizon"):
        sx.Rollout(model, 0)
    with pytest.raises(TypeError, match="StreamState"):
        sx.export_forecast(model, state, 2)  # type: ignore[arg-type]


@pytest.mark.slow
@pytest.mark.skipif(not HAS_ORT, reason="the [export] extra (onnx, onnxscript, onnxruntime)")
@pytest.mark.parametrize("name", NAMES)
def test_onnx_step_and_rollout_run_under_onnxruntime(name, tmp_path):
    import onnxruntime as ort

    model, shape = small(name)
    frames = frames_for(shape, 3)
    state = model.observe(frames[:, :1]).state
    step = sx.ObserveStep(model)
    path = tmp_path / f"{name}-step.onnx"
    sx.to_onnx(step, (frames[:, 1], state), path)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    inputs = sx.flatten_inputs(frames[:, 1], state)
    feeds = {i.name: t.numpy() for i, t in zip(session.get_inputs(), inputs, strict=True)}
    outputs = session.run(None, feeds)
    pending, new_state = step(frames[:, 1], state)
    expected = sx.flatten_inputs(pending, new_state)
    assert len(outputs) == len(expected)
    for got, want in zip(outputs, expected, strict=True):
        assert_close(torch.from_numpy(got), want, **TOL)

    rollout = sx.Rollout(model, 2)
    path = tmp_path / f"{name}-rollout.onnx"
    sx.to_onnx(rollout, (frames[:, :2],), path)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {session.get_inputs()[0].name: frames[:, :2].numpy()})
    assert_close(torch.from_numpy(got), rollout(frames[:, :2]), **TOL)
