"""The contract every preset keeps, checked on a small instance of each registered preset.

A model family that registers a preset (``stpl.registry.register_preset``) with a ``small``
configuration is run through these checks automatically: one training step reaches every
parameter, and the streaming API (``observe`` in chunks, ``forecast``, ``generate`` and
its state) computes exactly what one pass over all frames computes.

Two kinds of ``forward`` exist: most models predict the next frame at every step
(``predictions (B, T-1, ...)``, PredRNN's rule); an encoder-forecaster reads the context and
then forecasts the rest (``predictions (B, T-context, ...)``, class attribute
``predicts_every_step = False``). Hierarchical models return one tensor per level
(level 0, the frames, first).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close

import stpl
from stpl.registry import preset

NAMES = stpl.list_models()


def small(name: str) -> tuple[torch.nn.Module, tuple[int, int, int]]:
    entry = preset(name)
    torch.manual_seed(0)
    return stpl.get_model(name, **entry.small), entry.frame_shape


def level0(predictions: object) -> torch.Tensor:
    """The frame predictions of an output (level 0 of a hierarchical model)."""
    if isinstance(predictions, (dict, list, tuple)):
        predictions = predictions[0]
    assert isinstance(predictions, torch.Tensor)
    return predictions


def every_step(model: torch.nn.Module) -> bool:
    return bool(getattr(model, "predicts_every_step", True))


def feeds_back_frames(model: torch.nn.Module) -> bool:
    """Whether steps after the context read the predicted frame (most models), or the
    model's own features (MSPred's feature feedback, ``feeds_back_frames = False``)."""
    return bool(getattr(model, "feeds_back_frames", True))


def video(shape: tuple[int, int, int], b: int, t: int, seed: int = 1) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(b, t, *shape, generator=gen)


@pytest.mark.parametrize("name", NAMES)
def test_every_preset_trains_one_step(name):
    model, shape = small(name)
    model.train()
    frames = video(shape, 2, 5)
    if every_step(model):
        out = model(frames, context=2, mask=torch.ones(2, 3))
    else:
        out = model(frames, context=2)
    predictions = level0(out.predictions)
    assert predictions.shape == ((2, 4, *shape) if every_step(model) else (2, 3, *shape))
    loss = F.mse_loss(predictions, frames[:, -predictions.shape[1] :])
    if out.decouple_loss is not None:
        loss = loss + 0.1 * out.decouple_loss
    assert torch.isfinite(loss)
    loss.backward()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    for n, p in model.named_parameters():
        assert p.grad is not None, f"{n} is unused"
        assert torch.isfinite(p.grad).all(), n
        assert p.grad.abs().sum() > 0, f"{n} has a zero gradient"
    torch.optim.SGD(model.parameters(), lr=0.1).step()
    for n, p in model.named_parameters():
        assert not torch.equal(p, before[n]), n


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize(("batch", "chunks"), [(1, (1, 1, 1, 1, 1)), (2, (2, 3)), (3, (4, 1))])
def test_observe_in_chunks_then_forecast_equals_generate(name, batch, chunks):
    model, shape = small(name)
    model.eval()
    frames = video(shape, batch, sum(chunks))
    horizon = 4
    expected = model.generate(frames, horizon)
    state = None
    start = 0
    for size in chunks:
        state = model.observe(frames[:, start : start + size], state)
        start += size
    assert isinstance(state, stpl.StreamState)
    forecast = model.forecast(state, horizon)
    assert forecast.shape == (batch, horizon, *shape)
    assert_close(forecast, expected.predictions, atol=1e-5, rtol=1e-5)
    # forecasting leaves the state as it was: a second forecast is the same
    assert_close(model.forecast(state, horizon), forecast, atol=0, rtol=0)
    # generate agrees with forward over the context
    if every_step(model):
        out = model(torch.cat([frames, expected.predictions[:, :1]], 1))
        first = level0(out.predictions)[:, -1]
    else:
        out = model(torch.cat([frames, expected.predictions], 1), context=frames.shape[1])
        first = level0(out.predictions)[:, 0]
        assert_close(level0(out.predictions), expected.predictions, atol=1e-5, rtol=1e-5)
    assert_close(first, expected.predictions[:, 0], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", NAMES)
def test_generate_state_is_the_state_after_reading_its_own_predictions(name):
    model, shape = small(name)
    model.eval()
    frames = video(shape, 2, 3)
    gen = model.generate(frames, 3)
    if not every_step(model):
        # an encoder-forecaster never reads its own predictions: generate's state is the
        # state after the context, whose pending frame is the first prediction
        more = video(shape, 2, 2, seed=7)
        observed = model.observe(frames)
        assert_close(gen.state.pending, gen.predictions[:, 0])
        assert_close(observed.pending, gen.state.pending, atol=1e-5, rtol=1e-5)
        assert_close(model.forecast(gen.state, 3), gen.predictions, atol=1e-5, rtol=1e-5)
        assert_close(
            model.generate(more, 2, state=gen.state).predictions,
            model.generate(torch.cat([frames, more], 1), 2).predictions,
            atol=1e-5,
            rtol=1e-5,
        )
        return
    assert_close(gen.state.pending, gen.predictions[:, -1])
    if not feeds_back_frames(model):
        # it never "read" its predictions (it fed back features): its state continues the
        # rollout instead
        longer = model.generate(frames, 5).predictions
        assert_close(model.forecast(gen.state, 3), longer[:, 2:], atol=1e-5, rtol=1e-5)
        return
    reread = model.observe(torch.cat([frames, gen.predictions[:, :-1]], 1))
    assert_close(reread.pending, gen.state.pending, atol=1e-5, rtol=1e-5)
    assert_close(model.forecast(gen.state, 3), model.forecast(reread, 3), atol=1e-5, rtol=1e-5)
    # a later generate from that state continues with the frames from the last predicted one
    more = video(shape, 2, 2, seed=7)
    assert_close(
        model.generate(more, 2, state=gen.state).predictions,
        model.generate(torch.cat([frames, gen.predictions[:, :-1], more], 1), 2).predictions,
        atol=1e-5,
        rtol=1e-5,
    )


@pytest.mark.parametrize("name", NAMES)
def test_forward_state_continues_with_the_frame_after_the_last_one_read(name):
    model, shape = small(name)
    model.eval()
    if not every_step(model):
        pytest.skip("an encoder-forecaster's forward reads the context, then forecasts")
    frames = video(shape, 2, 7)
    full = model(frames)
    first = model(frames[:, :4])  # reads frames 0..2, frame 3 is a target only
    second = model(frames[:, 3:], state=first.state)
    assert_close(
        torch.cat([level0(first.predictions), level0(second.predictions)], 1),
        level0(full.predictions),
        atol=1e-5,
        rtol=1e-5,
    )


@pytest.mark.parametrize("name", NAMES)
def test_bf16_autocast_stays_close_to_float32(name):
    """Mixed precision changes the numbers by bf16 rounding, not more: predictions and the
    loss within 5 % (relative L2) of the float32 run, all gradients together
    within 30 % (the small random models here have tiny gradients; PhyDNet's, the worst,
    are 21 % off: a wrong dtype path or a float32-only op gone wrong gives ~100 %)."""
    model, shape = small(name)
    model.train()
    frames = video(shape, 2, 5)

    def run(autocast: bool) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        model.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            out = model(frames, context=2)
        predictions = level0(out.predictions).float()
        loss = F.mse_loss(predictions, frames[:, -predictions.shape[1] :])
        loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        return predictions.detach(), loss.detach(), grads

    def rel(a: torch.Tensor, b: torch.Tensor) -> float:
        return float((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-12))

    p32, l32, g32 = run(False)
    p16, l16, g16 = run(True)
    assert rel(p16, p32) < 0.05, name
    assert rel(l16, l32) < 0.05, name
    assert g16.keys() == g32.keys()
    total16 = torch.cat([g.flatten() for g in g16.values()])
    total32 = torch.cat([g.flatten() for g in g32.values()])
    assert rel(total16, total32) < 0.3, name
    # and bf16 is really used: the predictions differ from float32
    assert not torch.equal(p16, p32), name
