"""Tests of stpl.training: schedules against the reference formulas, masks, losses."""

from __future__ import annotations

import io
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import stpl
from stpl import training as tr

ITERS = [0, 1, 24999, 25000, 30000, 49999, 50000, 80000]


# ------------------------------------------------------------------------------------------
# probabilities, written plainly from reference-implementations.md 5c, 5d, 3g


def plain_ss(itr: int) -> float:
    # run.py: eta -= 2e-5 if itr < 50000 else eta = 0, once per iteration before sampling
    return 0.0 if itr >= 50000 else max(1.0 - 2e-5 * itr, 0.0)


def plain_rss(itr: int, s1: int = 25000, s2: int = 50000, alpha: float = 5000.0):
    if itr < s1:
        return 0.5, 0.5
    if itr < s2:
        return 1.0 - 0.5 * math.exp(-(itr - s1) / alpha), 0.5 - 0.5 / (s2 - s1) * (itr - s1)
    return 1.0, 0.0


@pytest.mark.parametrize("itr", ITERS)
def test_scheduled_sampling_eta_formula(itr: int) -> None:
    assert tr.scheduled_sampling_eta(itr) == pytest.approx(plain_ss(itr), abs=1e-15)


def test_scheduled_sampling_mnist_defaults_reach_exactly_zero() -> None:
    assert tr.scheduled_sampling_eta(0) == 1.0
    assert tr.scheduled_sampling_eta(1) == pytest.approx(1 - 2e-5)
    assert tr.scheduled_sampling_eta(49999) == pytest.approx(2e-5)
    assert tr.scheduled_sampling_eta(50000) == 0.0
    assert tr.scheduled_sampling_eta(50001) == 0.0
    # the object's counter is 0-based: its iteration k draws with run.py's itr = k + 1
    assert tr.ScheduledSampling(iteration=49998).eta == pytest.approx(2e-5)
    assert tr.ScheduledSampling(iteration=49999).eta == 0.0


def test_scheduled_sampling_matches_reference_loop() -> None:
    # run.py's loop, with a fast schedule: eta -= rate if itr < stop else 0, then sample.
    rate, stop = 0.15, 5
    sched = tr.ScheduledSampling(start=0.9, rate=rate, stop_iter=stop)
    eta = 0.9
    for itr in range(1, 12):
        eta = eta - rate if itr < stop else 0.0
        assert sched.eta == pytest.approx(max(eta, 0.0))
        assert tr.scheduled_sampling_eta(itr, start=0.9, rate=rate, stop_iter=stop) == (
            pytest.approx(max(eta, 0.0))
        )
        sched.step()
    assert tr.scheduled_sampling_eta(10**6, rate=1e-9, stop_iter=None) == pytest.approx(0.999)


@pytest.mark.parametrize("itr", ITERS)
def test_reverse_scheduled_sampling_formula(itr: int) -> None:
    r_eta, eta = tr.reverse_scheduled_sampling_probs(itr)
    assert (r_eta, eta) == pytest.approx(plain_rss(itr), abs=1e-15)
    assert tr.reverse_scheduled_sampling_probs(itr, alpha=2500) == pytest.approx(
        plain_rss(itr, alpha=2500), abs=1e-15
    )


def test_reverse_scheduled_sampling_endpoints() -> None:
    assert tr.reverse_scheduled_sampling_probs(25000) == (0.5, 0.5)
    assert tr.reverse_scheduled_sampling_probs(50000) == (1.0, 0.0)
    r_eta, eta = tr.reverse_scheduled_sampling_probs(49999)
    assert eta == pytest.approx(0.5 / 25000) and 0.99 < r_eta < 1.0
    sched = tr.ReverseScheduledSampling(iteration=29999)  # run.py itr 30000
    assert sched.probs == pytest.approx(plain_rss(30000))


def test_modernn_schedule_matches_reference_loop() -> None:
    # trainer: sample with eta, then eta = max(eta - 1 / (total / 2), 0)
    total = 20
    sched = tr.LinearScheduledSampling(total)
    eta = 1.0
    for _ in range(total):
        assert sched.eta == pytest.approx(eta, abs=1e-12)
        eta = max(eta - 1 / (total / 2), 0.0)
        sched.step()
    assert sched.eta == 0.0
    # the released script: 400 epochs x 200 iterations, 0 at iteration 40,000
    assert tr.linear_sampling_eta(0, total_iters=80000) == 1.0
    assert tr.linear_sampling_eta(1, total_iters=80000) == pytest.approx(1 - 2.5e-5)
    assert tr.linear_sampling_eta(39999, total_iters=80000) == pytest.approx(2.5e-5)
    assert tr.linear_sampling_eta(40000, total_iters=80000) == 0.0
    assert tr.linear_sampling_eta(79999, total_iters=80000) == 0.0


# ------------------------------------------------------------------------------------------
# masks


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_mask_shapes_dtypes_values(dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(0)
    ss = tr.scheduled_sampling_mask(5, 20, 10, 0.5, dtype=dtype, generator=g)
    rss = tr.reverse_scheduled_sampling_mask(5, 20, 10, 0.5, 0.5, dtype=dtype, generator=g)
    for m in (ss, rss):
        assert m.shape == (5, 18) and m.dtype == dtype and m.device.type == "cpu"
        assert bool(((m == 0) | (m == 1)).all())
    assert bool((ss[:, :9] == 1).all())


def test_scheduled_sampling_mask_extremes() -> None:
    ones = tr.scheduled_sampling_mask(3, 20, 10, 1.0)
    assert torch.equal(ones, torch.ones(3, 18))
    zeros = tr.scheduled_sampling_mask(3, 20, 10, 0.0)
    expected = torch.cat([torch.ones(3, 9), torch.zeros(3, 9)], dim=1)
    assert torch.equal(zeros, expected)
    # the reference's (B, T - T_in - 1) mask is our mask[:, T_in - 1:]
    assert zeros[:, 9:].shape == (3, 20 - 10 - 1)
    # input_length = T - 1: no forecast entry is random
    assert torch.equal(tr.scheduled_sampling_mask(2, 5, 4, 0.0), torch.ones(2, 3))
    # T = 2: an empty mask
    assert tr.scheduled_sampling_mask(2, 2, 1, 0.3).shape == (2, 0)


def test_reverse_mask_exact_known_masks() -> None:
    m = tr.reverse_scheduled_sampling_mask(4, 20, 10, 1.0, 0.0)
    assert torch.equal(m, torch.cat([torch.ones(4, 9), torch.zeros(4, 9)], dim=1))
    m = tr.reverse_scheduled_sampling_mask(4, 20, 10, 0.0, 1.0)
    assert torch.equal(m, torch.cat([torch.zeros(4, 9), torch.ones(4, 9)], dim=1))
    m = tr.reverse_scheduled_sampling_mask(2, 6, 1, 1.0, 0.0)  # T_in = 1: all forecast
    assert torch.equal(m, torch.zeros(2, 4))


def test_empirical_frequencies() -> None:
    g = torch.Generator().manual_seed(1234)
    ss = tr.scheduled_sampling_mask(20000, 12, 4, 0.3, generator=g)
    assert ss[:, 3:].mean().item() == pytest.approx(0.3, abs=0.01)
    per_col = ss[:, 3:].mean(0)
    assert bool(((per_col - 0.3).abs() < 0.03).all())
    rss = tr.reverse_scheduled_sampling_mask(20000, 12, 4, 0.8, 0.2, generator=g)
    assert rss[:, :3].mean().item() == pytest.approx(0.8, abs=0.01)
    assert rss[:, 3:].mean().item() == pytest.approx(0.2, abs=0.01)


def test_masks_reproducible_with_generator() -> None:
    a = tr.scheduled_sampling_mask(8, 20, 10, 0.5, generator=torch.Generator().manual_seed(7))
    b = tr.scheduled_sampling_mask(8, 20, 10, 0.5, generator=torch.Generator().manual_seed(7))
    assert torch.equal(a, b)
    g = torch.Generator().manual_seed(7)
    c = tr.reverse_scheduled_sampling_mask(8, 20, 10, 0.5, 0.5, generator=g)
    d = tr.reverse_scheduled_sampling_mask(8, 20, 10, 0.5, 0.5, generator=g)
    assert not torch.equal(c, d)  # the generator advanced


def test_mask_device_follows_generator() -> None:
    g = torch.Generator(device="cpu").manual_seed(0)
    assert tr.scheduled_sampling_mask(2, 6, 3, 0.5, generator=g).device.type == "cpu"
    m = tr.reverse_scheduled_sampling_mask(2, 6, 3, 0.5, 0.5, device=torch.device("cpu"))
    assert m.device.type == "cpu" and m.shape == (2, 4)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_masks_built_on_cuda() -> None:
    g = torch.Generator(device="cuda").manual_seed(0)
    ss = tr.scheduled_sampling_mask(4, 20, 10, 0.5, generator=g)  # device from the generator
    rss = tr.ReverseScheduledSampling().mask(4, 20, 10, device="cuda").mask
    assert ss.is_cuda and rss is not None and rss.is_cuda


@settings(max_examples=30, deadline=None)
@given(
    b=st.integers(1, 4),
    t=st.integers(2, 12),
    data=st.data(),
    eta=st.floats(0, 1),
    r_eta=st.floats(0, 1),
)
def test_mask_shapes_hypothesis(b: int, t: int, data: st.DataObject, eta: float, r_eta: float):
    t_in = data.draw(st.integers(1, t - 1))
    ss = tr.scheduled_sampling_mask(b, t, t_in, eta)
    rss = tr.reverse_scheduled_sampling_mask(b, t, t_in, r_eta, eta)
    assert ss.shape == rss.shape == (b, t - 2)
    assert bool((ss[:, : t_in - 1] == 1).all())
    for m in (ss, rss):
        assert bool(((m == 0) | (m == 1)).all())


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: tr.scheduled_sampling_mask(2, 10, 10, 0.5), "input_length"),
        (lambda: tr.scheduled_sampling_mask(2, 10, 0, 0.5), "input_length"),
        (lambda: tr.scheduled_sampling_mask(0, 10, 5, 0.5), "batch_size"),
        (lambda: tr.scheduled_sampling_mask(2, 1, 1, 0.5), "total_length"),
        (lambda: tr.scheduled_sampling_mask(2, 10, 5, 1.5), "eta"),
        (lambda: tr.scheduled_sampling_mask(2, 10, 5, math.nan), "eta"),
        (lambda: tr.scheduled_sampling_mask(2, 10, 5, 0.5, dtype=torch.bool), "dtype"),
        (lambda: tr.reverse_scheduled_sampling_mask(2, 10, 5, -0.1, 0.5), "r_eta"),
        (lambda: tr.reverse_scheduled_sampling_mask(2, 10, 12, 0.5, 0.5), "input_length"),
        (lambda: tr.scheduled_sampling_eta(-1), "iteration"),
        (lambda: tr.scheduled_sampling_eta(1, start=2.0), "start"),
        (lambda: tr.scheduled_sampling_eta(1, rate=-1.0), "rate"),
        (lambda: tr.reverse_scheduled_sampling_probs(1, s1=10, s2=5), "s2"),
        (lambda: tr.reverse_scheduled_sampling_probs(1, alpha=0), "alpha"),
        (lambda: tr.linear_sampling_eta(1, total_iters=0), "total_iters"),
        (lambda: tr.ScheduledSampling(iteration=-3), "iteration"),
        (lambda: tr.inference_mask(0), "input_length"),
    ],
)
def test_errors_name_the_argument(call, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        call()


# ------------------------------------------------------------------------------------------
# schedule objects


def make_schedules() -> list[tr.SamplingSchedule]:
    return [
        tr.ScheduledSampling(start=1.0, rate=0.07, stop_iter=9),
        tr.LinearScheduledSampling(16),
        tr.ReverseScheduledSampling(s1=3, s2=10, alpha=2.0),
    ]


@pytest.mark.parametrize("index", range(3))
def test_state_dict_round_trip_resumes_exactly(index: int) -> None:
    sched, g = make_schedules()[index], torch.Generator().manual_seed(3)
    for _ in range(4):
        sched.mask(6, 12, 5, generator=g)
        sched.step()
    buf = io.BytesIO()
    torch.save({"sched": sched.state_dict(), "rng": g.get_state()}, buf)

    def run(s: tr.SamplingSchedule, gen: torch.Generator):
        out = []
        for _ in range(10):
            probs = s.probs if isinstance(s, tr.ReverseScheduledSampling) else s.eta
            out.append((probs, s.mask(6, 12, 5, generator=gen)))
            s.step()
        return out

    expected = run(sched, g)
    buf.seek(0)
    ckpt = torch.load(buf, weights_only=True)
    resumed = make_schedules()[index]
    resumed.load_state_dict(ckpt["sched"])
    g2 = torch.Generator()
    g2.set_state(ckpt["rng"])
    got = run(resumed, g2)
    assert resumed.state_dict() == sched.state_dict()
    for (p1, (m1, c1)), (p2, (m2, c2)) in zip(expected, got, strict=True):
        assert p1 == p2 and c1 == c2 and torch.equal(m1, m2)


def test_load_state_dict_restores_hparams_and_rejects_bad_keys() -> None:
    a = tr.ScheduledSampling(start=0.5, rate=0.1, stop_iter=None, iteration=3)
    b = tr.ScheduledSampling()
    b.load_state_dict(a.state_dict())
    assert b.state_dict() == {"start": 0.5, "rate": 0.1, "stop_iter": None, "iteration": 3}
    assert repr(b) == "ScheduledSampling(start=0.5, rate=0.1, stop_iter=None, iteration=3)"
    with pytest.raises(ValueError, match="missing"):
        b.load_state_dict({"iteration": 1})
    with pytest.raises(ValueError, match="iteration"):
        b.load_state_dict({**a.state_dict(), "iteration": -1})
    with pytest.raises(ValueError, match="unexpected"):
        tr.ReverseScheduledSampling().load_state_dict(a.state_dict())


def test_schedule_masks_and_contexts() -> None:
    mask, context = tr.ScheduledSampling().mask(3, 20, 10)
    assert context == 10 and mask is not None and torch.equal(mask, torch.ones(3, 18))
    mask, context = tr.LinearScheduledSampling(100, iteration=50).mask(3, 20, 10)
    assert context == 10 and mask is not None
    assert torch.equal(mask, torch.cat([torch.ones(3, 9), torch.zeros(3, 9)], 1))
    out = tr.ReverseScheduledSampling(iteration=10**6).mask(3, 20, 10, dtype=torch.float64)
    assert isinstance(out, tr.SamplingMask) and out.context == 1 and out.mask is not None
    assert torch.equal(out.mask, torch.cat([torch.ones(3, 9), torch.zeros(3, 9)], 1).double())
    assert tr.ReverseScheduledSampling().inference_mask(10) == tr.SamplingMask(None, 10)


def plain_predictor_inputs(frames, context, mask, preds):
    """api.md's step semantics with a fixed stand-in for the previous predictions."""
    inputs = []
    for t in range(frames.shape[1] - 1):
        if t < context:
            inputs.append(frames[:, t])
        elif mask is None:
            inputs.append(preds[:, t])
        else:
            m = mask[:, t - 1].view(-1, 1, 1, 1)
            inputs.append(m * frames[:, t] + (1 - m) * preds[:, t])
    return torch.stack(inputs, 1)


def test_mask_convention_matches_reference_indexing() -> None:
    b, t_total, t_in = 3, 12, 5
    frames, preds = torch.randn(b, t_total, 1, 2, 2), torch.randn(b, t_total, 1, 2, 2)
    g = torch.Generator().manual_seed(0)
    # scheduled sampling: PredRNN's loop reads ref[:, t - T_in] for t >= T_in
    ours = tr.scheduled_sampling_mask(b, t_total, t_in, 0.5, generator=g)
    ref = ours[:, t_in - 1 :]
    got = plain_predictor_inputs(frames, t_in, ours, preds)
    for t in range(t_in, t_total - 1):
        m = ref[:, t - t_in].view(-1, 1, 1, 1)
        torch.testing.assert_close(got[:, t], m * frames[:, t] + (1 - m) * preds[:, t])
    # the same SS mask with context=1 gives the same inputs (its prefix is ones)
    torch.testing.assert_close(plain_predictor_inputs(frames, 1, ours, preds), got)
    # the RSS test mask (r_eta=1, eta=0) with context=1 == free running from T_in
    test = tr.reverse_scheduled_sampling_mask(b, t_total, t_in, 1.0, 0.0)
    mask, context = tr.inference_mask(t_in)
    torch.testing.assert_close(
        plain_predictor_inputs(frames, 1, test, preds),
        plain_predictor_inputs(frames, context, mask, preds),
    )


def test_rss_test_mask_equals_free_running_on_the_model() -> None:
    torch.manual_seed(0)
    model = stpl.EncoderStackDecoder(
        cell="convlstm",
        in_channels=1,
        hidden_channels=4,
        num_layers=1,
        patch_size=2,
        kernel_size=3,
    )
    frames = torch.rand(2, 6, 1, 4, 4)
    mask = tr.reverse_scheduled_sampling_mask(2, 6, 3, 1.0, 0.0)
    a = model(frames, context=1, mask=mask).predictions
    b = model(frames, context=3, mask=None).predictions
    assert a.shape == (2, 5, 1, 4, 4)
    torch.testing.assert_close(a, b)


@pytest.mark.parametrize(
    ("name", "sched"),
    [("predrnn_v2", tr.ReverseScheduledSampling(s1=1, s2=3, alpha=1.0)), ("modernn", None)],
)
def test_training_loop_as_documented(name: str, sched: tr.SamplingSchedule | None) -> None:
    torch.manual_seed(0)
    model = stpl.get_model(
        name, hidden_channels=4, num_layers=2, patch_size=2, kernel_size=3, image_size=8
    )
    sched = sched or tr.LinearScheduledSampling(total_iters=4)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(0)
    frames = torch.rand(2, 6, 1, 8, 8)
    for _ in range(2):
        mask, context = sched.mask(2, 6, 3, generator=g)
        out = model(frames, context=context, mask=mask)
        assert out.predictions.shape == (2, 5, 1, 8, 8)
        if name == "predrnn_v2":
            assert out.decouple_loss is not None and out.decouple_loss.shape == ()
            loss = tr.predrnn_loss(out.predictions, frames, out.decouple_loss)
        else:
            loss = tr.modernn_loss(out.predictions, frames)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        assert torch.isfinite(loss)
    mask, context = sched.inference_mask(3)
    assert model(frames, context=context, mask=mask).predictions.shape == (2, 5, 1, 8, 8)


# ------------------------------------------------------------------------------------------
# decoupling loss


def plain_decoupling(dcs, dms, weight) -> float:
    """Explicit loops: adapter, then |cosine over HW| per (pair, sample, channel), mean."""
    terms = []
    for dc, dm in zip(dcs, dms, strict=True):
        b, c_in, h, w = len(dc), len(dc[0]), len(dc[0][0]), len(dc[0][0][0])
        c_out = len(weight)
        per_pair = []
        for bi in range(b):
            for co in range(c_out):
                u = [
                    sum(weight[co][ci] * dc[bi][ci][y][x] for ci in range(c_in))
                    for y in range(h)
                    for x in range(w)
                ]
                v = [
                    sum(weight[co][ci] * dm[bi][ci][y][x] for ci in range(c_in))
                    for y in range(h)
                    for x in range(w)
                ]
                dot = sum(p * q for p, q in zip(u, v, strict=True))
                nu = math.sqrt(sum(p * p for p in u))
                nv = math.sqrt(sum(q * q for q in v))
                per_pair.append(abs(dot) / (nu * nv))
        terms.append(sum(per_pair) / len(per_pair))
    return sum(terms) / len(terms)


def test_decoupling_loss_against_plain_loops() -> None:
    torch.manual_seed(0)
    n, b, c, h, w = 3, 2, 3, 2, 3
    dc = torch.randn(n, b, c, h, w, dtype=torch.float64)
    dm = torch.randn(n, b, c, h, w, dtype=torch.float64)
    weight = torch.randn(c, c, 1, 1, dtype=torch.float64)
    expected = plain_decoupling(dc.tolist(), dm.tolist(), weight[:, :, 0, 0].tolist())
    conv = nn.Conv2d(c, c, 1, bias=False).double()
    with torch.no_grad():
        conv.weight.copy_(weight)
    for got in (
        tr.decoupling_loss(dc, dm, weight),
        tr.decoupling_loss(dc, dm, weight[:, :, 0, 0]),
        tr.decoupling_loss(list(dc), list(dm), weight),
        tr.decoupling_loss(tuple(dc), tuple(dm), conv),
    ):
        assert got.shape == () and got.item() == pytest.approx(expected, rel=1e-10)
    single = tr.decoupling_term(dc[1], dm[1], weight)
    assert single.item() == pytest.approx(
        plain_decoupling([dc[1].tolist()], [dm[1].tolist()], weight[:, :, 0, 0].tolist()),
        rel=1e-10,
    )


def test_decoupling_loss_orthogonal_identical_opposite() -> None:
    dc = torch.zeros(2, 3, 4, 4, 4)
    dm = torch.zeros(2, 3, 4, 4, 4)
    dc[..., :2, :] = torch.rand(2, 3, 4, 2, 4) + 0.1  # disjoint spatial support
    dm[..., 2:, :] = torch.rand(2, 3, 4, 2, 4) + 0.1
    assert tr.decoupling_loss(dc, dm, None).item() == 0.0
    assert tr.decoupling_loss(dc, dc, None).item() == pytest.approx(1.0)
    assert tr.decoupling_loss(dc, -dc, None).item() == pytest.approx(1.0)
    assert tr.decoupling_loss(dc, dc, torch.randn(4, 4)).item() == pytest.approx(1.0)
    eye = torch.eye(4)[:, :, None, None]
    assert tr.decoupling_loss(dc, dm, eye).item() == 0.0
    # an all-zero increment (e.g. a closed input gate) contributes 0, not NaN
    assert tr.decoupling_term(torch.zeros(1, 2, 3, 3), torch.ones(1, 2, 3, 3), None).item() == 0


def test_decoupling_loss_gradients() -> None:
    torch.manual_seed(0)
    dc = torch.randn(2, 1, 2, 2, 3, dtype=torch.float64, requires_grad=True)
    dm = torch.randn(2, 1, 2, 2, 3, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(2, 2, 1, 1, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(tr.decoupling_loss, (dc, dm, weight))
    conv = nn.Conv2d(2, 2, 1, bias=False)
    tr.decoupling_loss(list(dc.float().detach()), list(dm.float().detach()), conv).backward()
    assert conv.weight.grad is not None and bool(conv.weight.grad.abs().sum() > 0)


@settings(max_examples=20, deadline=None)
@given(
    n=st.integers(1, 4),
    b=st.integers(1, 3),
    c=st.integers(1, 4),
    h=st.integers(1, 4),
    w=st.integers(1, 4),
    seed=st.integers(0, 2**16),
)
def test_decoupling_stacked_equals_mean_of_terms(n, b, c, h, w, seed) -> None:
    g = torch.Generator().manual_seed(seed)
    dc = torch.randn(n, b, c, h, w, generator=g, dtype=torch.float64)
    dm = torch.randn(n, b, c, h, w, generator=g, dtype=torch.float64)
    weight = torch.randn(c, c, generator=g, dtype=torch.float64)
    stacked = tr.decoupling_loss(dc, dm, weight)
    terms = torch.stack([tr.decoupling_term(dc[i], dm[i], weight) for i in range(n)])
    torch.testing.assert_close(stacked, terms.mean())
    assert 0.0 <= stacked.item() <= 1.0 + 1e-12


def test_decoupling_errors() -> None:
    x = torch.randn(2, 1, 3, 4, 4)
    with pytest.raises(ValueError, match="delta_m"):
        tr.decoupling_loss(x, torch.randn(2, 1, 3, 4), None)
    with pytest.raises(ValueError, match="same shape"):
        tr.decoupling_loss(x, torch.randn(3, 1, 3, 4, 4), None)
    with pytest.raises(ValueError, match="adapter"):
        tr.decoupling_loss(x, x, torch.randn(3, 5, 1, 1))
    with pytest.raises(ValueError, match="non-empty"):
        tr.decoupling_loss([], [], None)
    with pytest.raises(ValueError, match="equal length"):
        tr.decoupling_loss(list(x), list(x)[:1], None)


# ------------------------------------------------------------------------------------------
# MSE + L1 losses


@settings(max_examples=20, deadline=None)
@given(shape=st.lists(st.integers(1, 4), min_size=1, max_size=5), seed=st.integers(0, 2**16))
def test_mse_l1_reductions(shape: list[int], seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    pred = torch.randn(*shape, generator=g, dtype=torch.float64)
    target = torch.randn(*shape, generator=g, dtype=torch.float64)
    d = pred - target
    sse, sae = (d * d).sum(), d.abs().sum()
    torch.testing.assert_close(tr.mse_l1_loss(pred, target), sse / d.numel() + sae / d.numel())
    torch.testing.assert_close(tr.mse_l1_loss(pred, target, reduction="sum"), sse + sae)
    torch.testing.assert_close(
        tr.mse_l1_loss(pred, target, reduction="modernn"), ((sse + sae) / 2) / 2
    )


def test_mse_l1_errors() -> None:
    with pytest.raises(ValueError, match="same shape"):
        tr.mse_l1_loss(torch.zeros(2, 3), torch.zeros(3, 2))
    with pytest.raises(ValueError, match="reduction"):
        tr.mse_l1_loss(torch.zeros(2), torch.zeros(2), reduction="max")  # type: ignore[arg-type]


def test_predrnn_and_modernn_losses() -> None:
    torch.manual_seed(0)
    frames = torch.rand(2, 6, 1, 4, 4)
    preds = torch.rand(2, 5, 1, 4, 4, requires_grad=True)
    dec = torch.tensor(0.3)
    mse = ((preds - frames[:, 1:]) ** 2).mean()
    torch.testing.assert_close(tr.predrnn_loss(preds, frames), mse)
    torch.testing.assert_close(tr.predrnn_loss(preds, frames, dec), mse + 0.1 * dec)
    torch.testing.assert_close(
        tr.predrnn_loss(preds, frames, dec, decouple_beta=0.01), mse + 0.01 * dec
    )
    d = preds[:, 1:] - frames[:, 2:]  # MoDeRNN drops the prediction of frame 1
    torch.testing.assert_close(tr.modernn_loss(preds, frames), ((d**2).sum() + d.abs().sum()) / 4)
    tr.modernn_loss(preds, frames).backward()
    assert preds.grad is not None and bool((preds.grad[:, 0] == 0).all())
    with pytest.raises(ValueError, match="predictions"):
        tr.predrnn_loss(preds[:, :4], frames)
    with pytest.raises(ValueError, match="frames"):
        tr.modernn_loss(preds, frames[0])
    with pytest.raises(ValueError, match="decouple_beta"):
        tr.predrnn_loss(preds, frames, dec, decouple_beta=-1.0)


def test_public_names() -> None:
    for name in tr.__all__:
        assert hasattr(tr, name), name
