"""The streaming API of every predictor (``observe``, ``forecast``, ``generate``) on the
Encoder-Stack-Decoder: semantics written out by hand, actions, and the errors of bad input.

The preset-wide identities (chunks == one call, batch 1, generate's state) are in
``test_presets_contract.py``; this file checks what those identities cannot: that the
pending prediction is the model's one-step prediction, that forecasting is free running,
that actions line up, and the error messages.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.testing import assert_close

import stpl

B, H, W, P = 2, 8, 8, 2


def make(cell: str = "stlstm", **kwargs) -> stpl.EncoderStackDecoder:
    options = {"hidden_channels": 4, "num_layers": 2, "patch_size": P, "kernel_size": 3}
    torch.manual_seed(0)
    return stpl.EncoderStackDecoder(cell, **{**options, **kwargs}).eval()


def frames(t: int, c: int = 1, b: int = B, seed: int = 1) -> torch.Tensor:
    return torch.rand(b, t, c, H, W, generator=torch.Generator().manual_seed(seed))


def test_observe_pending_is_the_one_step_prediction_and_forecast_runs_free():
    model = make()
    x = frames(6)
    state = model.observe(x[:, :4])
    teacher = model(x[:, :5]).predictions  # step 3 reads frame 3 and predicts frame 4
    assert_close(state.pending, teacher[:, 3])
    # forecast: the pending frame, then the model's own predictions fed back
    forecast = model.forecast(state, 3)
    free = model(torch.cat([x[:, :4], torch.zeros_like(x[:, :3])], 1), context=4).predictions
    assert_close(forecast, free[:, 3:])
    # the state still holds the steps over frames 0..3: observing frame 4 goes on from there
    nxt = model.observe(x[:, 4:5], state)
    assert_close(nxt.pending, model(x[:, :6]).predictions[:, 4])


def test_forward_accepts_a_stream_state_and_generate_accepts_forward_states():
    model = make()
    x = frames(7)
    state = model.observe(x[:, :3])
    assert_close(model(x[:, 3:], state=state).predictions, model(x).predictions[:, 3:])
    out = model(x[:, :4])
    assert_close(
        model.generate(x[:, 3:5], 2, state=out.state).predictions,
        model.generate(x[:, :5], 2).predictions,
    )


def test_horizon_and_context_accept_numpy_integers():
    model = make()
    x = frames(5)
    a = model.generate(x[:, :2], np.int64(3)).predictions
    assert a.shape == (B, 3, 1, H, W)
    assert_close(model(x, context=np.int32(2)).predictions, model(x, context=2).predictions)
    assert_close(model.forecast(model.observe(x[:, :2]), np.int16(3)), a)


def test_action_conditioned_streaming_lines_up_with_generate():
    model = make(action_channels=3)
    x = frames(4)
    actions = torch.rand(B, 7, 3, generator=torch.Generator().manual_seed(5))
    gen = model.generate(x, 4, actions=actions).predictions
    state = model.observe(x[:, :1], actions=actions[:, :1])
    state = model.observe(x[:, 1:], state, actions=actions[:, 1:4])
    assert_close(model.forecast(state, 4, actions=actions[:, 4:]), gen)
    with pytest.raises(ValueError, match="action"):
        model.forecast(state, 4)
    with pytest.raises(ValueError, match="cover"):
        model.forecast(state, 4, actions=actions[:, 4:6])
    # horizon 1 needs no future action
    assert_close(model.forecast(state, 1), gen[:, :1])


def test_bad_input_names_the_argument():
    model = make()
    x = frames(5)
    with pytest.raises(ValueError, match=r"context must be <= T=5"):
        model(x, context=6)
    with pytest.raises(ValueError, match=r"context_frames must hold T >= 1 frame; got T=0"):
        model.generate(x[:, :0], 2)
    with pytest.raises(ValueError, match=r"frames must hold T >= 1 frame"):
        model.observe(x[:, :0])
    with pytest.raises(TypeError, match="StreamState"):
        model.forecast(model(x).state, 2)
    with pytest.raises(ValueError, match="horizon must be a positive int"):
        model.forecast(model.observe(x), 0)
    state = model.observe(x)
    with pytest.raises(ValueError, match=r"state\[0\]\.h must be \(B, C_hidden, H/p, W/p\)"):
        model.observe(frames(2, b=3), state)  # another batch size
    with pytest.raises(ValueError, match=r"state\[0\]\.h must be .* got shape \(2, 4, 4, 4\)"):
        model.observe(torch.rand(B, 1, 1, 16, 16), state)  # another frame size
    with pytest.raises(ValueError, match=r"state.state does not fit state.pending of shape"):
        model.forecast(stpl.StreamState(state.state, state.pending[:, :, :4]), 2)


def test_a_state_of_another_cell_type_is_rejected():
    stl, conv = make("stlstm"), make("convlstm")
    x = frames(4)
    with pytest.raises(ValueError, match=r"state\[0\] must be a STLSTMState\(h, c, m\); got a L"):
        stl(x, state=conv(x).state)
    with pytest.raises(ValueError, match=r"state\[0\] must be a LSTMState\(h, c\); got a STLSTM"):
        conv(x, state=stl(x).state)
    # the cells themselves check too
    cell = stpl.STLSTMCell(1, 4, 3)
    h = torch.zeros(B, 4, H, W)
    with pytest.raises(ValueError, match="state must be a STLSTMState"):
        cell(torch.rand(B, 1, H, W), stpl.LSTMState(h, h))
    with pytest.raises(ValueError, match=r"tuple of 2 tensors; got a tuple of 3"):
        stpl.ConvLSTMCell(1, 4, 3)(torch.rand(B, 1, H, W), (h, h, h))
    # plain tuples of the right length are fine
    out, _ = stpl.ConvLSTMCell(1, 4, 3)(torch.rand(B, 1, H, W), (h, h))
    assert out.shape == (B, 4, H, W)


def test_frames_of_another_dtype_name_both_dtypes():
    model = make()
    for dtype in (torch.float64, torch.float16):
        with pytest.raises(ValueError, match=rf"frames has dtype {dtype}.*torch.float32"):
            model(frames(4).to(dtype))
    # under autocast a bf16 video into a float32 model is the documented mixed precision path
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(frames(4).to(torch.bfloat16))
    assert out.predictions.dtype == torch.bfloat16
    # a float64 model takes float64 frames
    assert model.double()(frames(4).double()).predictions.dtype == torch.float64
