"""MSPred (:class:`stpl.models.HierarchicalPredictor`): the reference's outputs and losses at
every level (``tests/data/golden/model_mspred.pt``, from AIS-Bonn/MSPred itself), the period
counters, carried state, streaming, training, the heatmap targets, and bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.testing import assert_close

import stpl
from stpl.data import MovingDigits, MovingDigitsHeatmaps, digit_centers, gaussian_heatmaps
from stpl.interop import convert_state_dict, load_reference
from stpl.models import HierarchicalPredictor, HierarchicalState, HierarchicalStream
from stpl.models._hierarchy_blocks import FrameBatchNorm2d
from stpl.training import gaussian_kl, hierarchical_loss, latent_kl, mspred_loss


@pytest.fixture
def zero_noise(monkeypatch):
    """Latent noise drawn through ``torch.randn_like`` is zero: ``z = mu``."""
    monkeypatch.setattr(torch, "randn_like", lambda t, *a, **k: torch.zeros_like(t))


def tiny(**options) -> HierarchicalPredictor:
    """A 3-level stochastic model on 32x32x1 frames, random weights that make mistakes show."""
    config = dict(
        in_channels=1,
        periods=(1, 2, 4),
        hidden_channels=6,
        num_layers=2,
        num_filters=4,
        latent_channels=2,
        prior_hidden=5,
        posterior_hidden=4,
        head_channels=(1, 2),
    )
    config.update(options)
    torch.manual_seed(0)
    model = HierarchicalPredictor(**config)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.2 * torch.randn_like(p))
    return model


def clip(b: int = 2, t: int = 11, c: int = 1, size: int = 32, seed: int = 1) -> torch.Tensor:
    return torch.rand(b, t, c, size, size, generator=torch.Generator().manual_seed(seed))


def tensors(tree) -> list[torch.Tensor]:
    leaves, _ = torch.utils._pytree.tree_flatten(tree)
    return [x for x in leaves if isinstance(x, torch.Tensor)]


def same(a, b) -> bool:
    ta, tb = tensors(a), tensors(b)
    return len(ta) == len(tb) and all(torch.equal(x, y) for x, y in zip(ta, tb, strict=True))


# ------------------------------------------------------------------------------ reference


@pytest.mark.parametrize("mode", ["eval", "train"])
def test_golden_every_level_and_the_loss(golden, zero_noise, mode):
    d = golden("model_mspred.pt")
    model = load_reference("mspred", d["state_dict"], patch_size=1, image_channels=1)
    assert sum(p.numel() for p in model.parameters()) == 84_002
    frames, context = d["inputs"]["frames"], d["inputs"]["context"]
    ref = d["outputs"][mode]
    model.train(mode == "train")
    out = model(frames, context=context)
    assert_close(out.predictions[0], ref["frames"], atol=1e-5, rtol=1e-5)
    for h in (1, 2):
        steps = ref[f"level{h}_steps"].tolist()
        assert list(out.steps[h][: len(steps)]) == steps
        assert [s + out.horizons[h] for s in steps] == ref[f"level{h}_targets"].tolist()
        assert_close(out.predictions[h][:, steps], ref[f"level{h}"], atol=1e-5, rtol=1e-5)
    loss = mspred_loss(out, frames, [frames, frames], context=context, num_preds=2)
    assert_close(loss.kl, ref["kl"], atol=1e-3, rtol=1e-5)
    for h in range(3):
        assert_close(loss.levels[h], ref[f"mse{h}"], atol=1e-6, rtol=1e-5)
    assert_close(loss.total, ref["total"], atol=1e-6, rtol=1e-5)


def test_golden_conversion_round_trip(golden):
    d = golden("model_mspred.pt")
    model = load_reference("mspred", d["state_dict"], patch_size=1, image_channels=1)
    converted = convert_state_dict("mspred", d["state_dict"], patch_size=1, image_channels=1)
    assert set(converted) == set(model.state_dict())
    # the checkpoint format of the reference trainer loads too
    wrapped = {"model_state_dict": d["state_dict"], "epoch": 3}
    again = load_reference("mspred", wrapped, patch_size=1, image_channels=1, periods=(1, 4, 8))
    for key, value in model.state_dict().items():
        assert torch.equal(value, again.state_dict()[key]), key


def test_the_architecture_is_read_from_the_state_dict(golden):
    """Reference-layout state dicts of other configurations (derived from the golden one):
    deterministic, without ancestral sampling, without heads, layers per level."""
    sd = golden("model_mspred.pt")["state_dict"]
    level_in = {0: 8, 1: 16, 2: 32}  # nf 2^(h+1), without the latent's 2 channels
    det = {k: v for k, v in sd.items() if not k.startswith(("prior.", "posterior."))}
    for h, c in level_in.items():
        det[f"predictor.{h}.input_conv.weight"] = sd[f"predictor.{h}.input_conv.weight"][:, :c]
    det = {
        k: v
        for k, v in det.items()
        if not k.startswith(("decoder_heads.", "predictor.2.cell_list.1."))
    }
    model = load_reference("mspred", det, patch_size=1, image_channels=1, periods=(1, 2, 4))
    assert model.latent_channels is None and model.head_channels == (None, None)
    assert model.num_layers == (2, 2, 1) and model.periods == (1, 2, 4)
    assert sum(p.numel() for p in model.parameters()) == sum(
        v.numel() for k, v in det.items() if k != "device_param"
    )
    flat = dict(sd)
    for group in ("prior", "posterior"):
        for h, c in level_in.items():
            key = f"{group}.{h}.input_conv.weight"
            flat[key] = sd[key][:, :c]  # no upper latents: not ancestral
    model = load_reference("mspred", flat, patch_size=1, image_channels=1)
    assert not model.ancestral and model.latent_channels == 2
    assert (model.prior_hidden, model.posterior_hidden) == (6, 5)


def test_parameter_counts_of_the_moving_mnist_configuration():
    def count(**overrides) -> int:
        model = stpl.get_model("mspred", device="meta", **overrides)
        return sum(p.numel() for p in model.parameters())

    assert count(in_channels=3) == 25_934_269  # mmnist.json with its 3-channel data
    assert count() == 25_928_123  # 1-channel frames, like the other presets
    assert count(in_channels=3, latent_channels=None) == 22_992_325
    assert count(latent_channels=None) == 22_986_179
    assert count(in_channels=3, ancestral=False) == 25_899_709


def test_the_preset_is_the_reference_configuration():
    model = stpl.get_model("mspred", device="meta")
    assert isinstance(model, HierarchicalPredictor)
    assert model.periods == (1, 4, 8)
    assert model.level_channels == (128, 256, 512)
    assert model.hidden_channels == (128, 128, 128) and model.num_layers == (4, 4, 4)
    cell = model.levels[0].cells[0]
    assert cell.gate_order == "ifog" and cell.conv_x.conv.bias is not None  # ndrplz's ConvLSTM
    assert (model.head_schedule, model.stale_priors, model.feedback, model.batch_norm) == (
        "reference",
        True,
        "features",
        "batch",
    )


# ------------------------------------------------------------------------------ counters


def test_a_level_changes_only_at_its_updates_and_stale_priors_at_p_squared():
    model = tiny(periods=(1, 2, 3)).eval()
    frames = clip(t=14)
    state = None
    with torch.no_grad():
        for t in range(13):
            out = model(frames[:, t : t + 2], state=state)
            new = out.state
            assert int(new.step) == t + 1
            if state is not None:
                for h, p in enumerate(model.periods):
                    before, after = state.levels[h], new.levels[h]
                    updates = t % p == 0
                    for field in ("cells", "output", "latent", "posterior"):
                        changed = not same(getattr(before, field), getattr(after, field))
                        assert changed == updates, (t, h, field)
                    prior_changed = not same(before.prior, after.prior)
                    # the reference's stale prior: it runs at t % p^2 == 0 only
                    assert prior_changed == (t % (p * p) == 0), (t, h)
            state = new


def test_without_stale_priors_a_prior_runs_at_every_update():
    model = tiny(periods=(1, 2, 3), stale_priors=False).eval()
    frames = clip(t=8)
    state = None
    with torch.no_grad():
        for t in range(7):
            new = model(frames[:, t : t + 2], state=state).state
            if state is not None:
                for h, p in enumerate(model.periods):
                    assert (not same(state.levels[h].prior, new.levels[h].prior)) == (t % p == 0)
            state = new


@pytest.mark.parametrize(
    ("schedule", "context", "steps1", "steps2"),
    [
        ("reference", 6, (5, 9, 13), (5, 13)),  # counters start at context - 1
        ("aligned", 6, (8, 12), (8,)),  # the steps where the level updates
        ("reference", 9, (8, 12), (8,)),  # context - 1 a multiple of every period: the same
        ("aligned", 9, (8, 12), (8,)),
    ],
)
def test_output_shapes_steps_and_horizons(zero_noise, schedule, context, steps1, steps2):
    model = tiny(periods=(1, 4, 8), head_schedule=schedule, head_channels=(1, 3)).eval()
    frames = clip(t=16)
    out = model(frames, context=context)
    assert out.predictions[0].shape == (2, 15, 1, 32, 32)
    assert out.frames is out.predictions[0]
    assert out.predictions[1].shape == (2, 15, 1, 32, 32)
    assert out.predictions[2].shape == (2, 15, 3, 32, 32)
    assert out.steps == (tuple(range(15)), steps1, steps2)
    assert out.horizons == (1, 4, 8)
    for h, steps in ((1, steps1), (2, steps2)):
        filled = out.predictions[h].flatten(2).abs().sum(-1).gt(0).any(0)
        assert filled.nonzero().flatten().tolist() == list(steps)
    assert out.decouple_loss is None
    stats = out.latents
    assert stats is not None
    assert stats[0].steps == tuple(range(15))
    assert stats[1].steps == (0, 4, 8, 12) and stats[2].steps == (0, 8)
    assert stats[2].mu_posterior.shape == (2, 2, 2, 2, 2)


def test_heads_can_be_left_out_and_levels_use_any_cell(zero_noise):
    model = tiny(cell=("convlstm", "stlstm", "modernn"), head_channels=(None, 2)).eval()
    out = model(clip(t=6), context=3)
    assert out.predictions[1] is None and out.predictions[2].shape == (2, 5, 2, 32, 32)
    assert type(model.levels[1].cells[0]).__name__ == "STLSTMCell"
    assert model.levels[1].zigzag
    det = tiny(latent_channels=None, head_channels=None).eval()
    out = det(clip(t=6), context=3)
    assert out.latents is None and out.predictions[1:] == (None, None)


# ------------------------------------------------------------------------------ carried state


@pytest.mark.parametrize("feedback", ["features", "frames"])
def test_chunks_equal_one_call_and_streaming_equals_forward(zero_noise, feedback):
    model = tiny(feedback=feedback).eval()
    frames = clip(t=11)
    context = 5
    with torch.no_grad():
        full = model(frames)
        first = model(frames[:, :4])
        second = model(frames[:, 3:], state=first.state)
        assert_close(
            torch.cat([first.predictions[0], second.predictions[0]], 1),
            full.predictions[0],
            atol=1e-5,
            rtol=1e-5,
        )
        # a stream's held step is recomputed with the posterior when the next frame comes
        third = model(frames[:, 3:], state=model.observe(frames[:, :3]))
        assert_close(third.predictions[0], full.predictions[0][:, 3:], atol=1e-5, rtol=1e-5)
        forecast = model(frames, context=context).predictions[0][:, context - 1 :]
    gen = model.generate(frames[:, :context], 11 - context)
    assert_close(gen.predictions, forecast, atol=1e-5, rtol=1e-5)
    state = None
    for a, b in ((0, 1), (1, 3), (3, 5)):
        state = model.observe(frames[:, a:b], state)
    assert isinstance(state.state, HierarchicalStream)
    assert_close(model.forecast(state, 6), gen.predictions, atol=1e-5, rtol=1e-5)
    longer = model.generate(frames[:, :context], 9).predictions
    assert_close(model.forecast(gen.state, 4), longer[:, 5:], atol=1e-5, rtol=1e-5)
    assert model.feeds_back_frames == (feedback == "frames")


def test_evaluation_forecasts_ignore_the_future_frames(zero_noise):
    model = tiny().eval()
    frames = clip(t=10)
    other = frames.clone()
    other[:, 5:] = torch.rand_like(other[:, 5:])
    a = model(frames, context=5)
    b = model(other, context=5)
    assert_close(a.predictions[0], b.predictions[0], atol=0, rtol=0)
    assert_close(a.predictions[1], b.predictions[1], atol=0, rtol=0)
    # the posteriors still read the true frames (their statistics feed the KL)
    assert not torch.equal(a.latents[0].mu_posterior[:, 6], b.latents[0].mu_posterior[:, 6])


def test_the_latent_noise_is_drawn_through_torch(monkeypatch):
    model = tiny().eval()
    frames = clip(t=6)
    torch.manual_seed(3)
    a = model(frames, context=2).predictions[0]
    torch.manual_seed(3)
    b = model(frames, context=2).predictions[0]
    torch.manual_seed(4)
    c = model(frames, context=2).predictions[0]
    assert torch.equal(a, b) and not torch.equal(a, c)
    monkeypatch.setattr(torch, "randn_like", lambda t, *args, **kw: torch.zeros_like(t))
    d = model(frames, context=2).predictions[0]
    e = model(frames, context=2).predictions[0]
    assert torch.equal(d, e) and not torch.equal(a, d)


def test_feature_feedback_with_a_mask_mixes_encoded_features(zero_noise):
    model = tiny(latent_channels=None).eval()
    frames = clip(t=7)
    ones = torch.ones(2, 5)
    assert_close(
        model(frames, context=2, mask=ones).predictions[0],
        model(frames).predictions[0],
        atol=1e-6,
        rtol=1e-6,
    )
    zeros = torch.zeros(2, 5)
    assert_close(
        model(frames, context=2, mask=zeros).predictions[0],
        model(frames, context=2).predictions[0],
        atol=1e-6,
        rtol=1e-6,
    )


# ------------------------------------------------------------------------------ training


def test_one_training_step_reaches_every_parameter():
    # long enough for every level to update twice and for the stale prior of level 2 to
    # run again (at t = 3^2 = 9) inside the KL window
    model = tiny(periods=(1, 2, 3), bias_before_norm=False).train()
    frames = clip(t=14)
    heatmaps = [torch.rand(2, 14, 1, 32, 32), torch.rand(2, 14, 2, 32, 32)]
    out = model(frames, context=5)
    loss = hierarchical_loss(
        out, frames, heatmaps, context=5, num_preds=3, alphas=(0.2, 0.5, 0.5), beta=1.0
    )
    assert torch.isfinite(loss.total)
    loss.total.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


@pytest.mark.parametrize("feedback", ["features", "frames"])
def test_num_preds_computes_the_same_loss_and_gradients_with_less_work(zero_noise, feedback):
    model = tiny(periods=(1, 2, 4), feedback=feedback).train()
    frames = clip(t=14)
    maps = [torch.rand(2, 14, 1, 32, 32), torch.rand(2, 14, 2, 32, 32)]
    params = list(model.parameters())

    def loss_and_grads(**kw):
        out = model(frames, context=5, **kw)
        loss = hierarchical_loss(out, frames, maps, context=5, num_preds=2).total
        return out, loss, torch.autograd.grad(loss, params, allow_unused=True)

    full, loss_full, grads_full = loss_and_grads()
    part, loss_part, grads_part = loss_and_grads(num_preds=2)
    assert part.steps == ((4, 5), (4, 6), (4, 8))
    assert int(part.state.step) == 9  # level 2's second KL step is 8: steps 9.. are not run
    assert_close(loss_part, loss_full)
    for a, b in zip(grads_part, grads_full, strict=True):
        assert (a is None) == (b is None)
        if a is not None:
            assert_close(a, b, atol=1e-6, rtol=1e-5)
    assert_close(part.predictions[0][:, 4:6], full.predictions[0][:, 4:6])
    assert part.predictions[0][:, :4].abs().sum() == 0


def test_the_biases_before_batch_norm_are_dead():
    """The reference's convolution biases before batch norm get no gradient (why the
    ``bias_before_norm=False`` option exists)."""
    model = tiny(latent_channels=None).train()
    frames = clip(t=5)
    model(frames, context=2).predictions[0].square().mean().backward()
    conv = model.encoder.blocks[1].conv
    assert conv.bias.grad.abs().max() < 1e-6 * conv.weight.grad.abs().max() + 1e-9


def test_mspred_loss_picks_the_references_outputs_and_targets(zero_noise):
    model = tiny(periods=(1, 2, 4)).train()
    frames = clip(t=12)
    maps = [torch.rand(2, 12, 1, 32, 32), torch.rand(2, 12, 2, 32, 32)]
    out = model(frames, context=4)
    loss = hierarchical_loss(out, frames, maps, context=4, num_preds=2, alphas=(1, 2, 3), beta=0.5)
    mse0 = F.mse_loss(out.predictions[0][:, 3:5], frames[:, 4:6])
    mse1 = F.mse_loss(out.predictions[1][:, [3, 5]], maps[0][:, [5, 7]])
    mse2 = F.mse_loss(out.predictions[2][:, [3, 7]], maps[1][:, [7, 11]])
    assert_close(loss.levels[0], mse0)
    assert_close(loss.levels[1], mse1)
    assert_close(loss.levels[2], mse2)
    # KL: level 0 ticks 3, 4; level 1 ticks 4, 6 (2 outputs); level 2 tick 4 then 8
    stats = out.latents

    def kl(level: int, ticks: list[int]) -> torch.Tensor:
        s = stats[level]
        k = [s.steps.index(t) for t in ticks]
        q = torch.distributions.Normal(
            s.mu_posterior[:, k].double(), s.logvar_posterior[:, k].double().mul(0.5).exp()
        )
        p = torch.distributions.Normal(
            s.mu_prior[:, k].double(), s.logvar_prior[:, k].double().mul(0.5).exp()
        )
        return torch.distributions.kl_divergence(q, p).sum() / 2

    expected = kl(0, [3, 4]) + kl(1, [4, 6]) + kl(2, [4, 8])
    assert_close(loss.kl.double(), expected, atol=1e-4, rtol=1e-5)
    assert_close(loss.total, mse0 + 2 * mse1 + 3 * mse2 + 0.5 * loss.kl)
    assert_close(
        latent_kl(stats, context=4, counts=[2, 2, 2]).double(), expected, atol=1e-4, rtol=1e-5
    )


def test_gaussian_kl_is_the_closed_form():
    g = torch.Generator().manual_seed(0)
    mq, lq, mp, lp = (torch.randn(3, 4, generator=g, dtype=torch.float64) for _ in range(4))
    expected = torch.distributions.kl_divergence(
        torch.distributions.Normal(mq, lq.mul(0.5).exp()),
        torch.distributions.Normal(mp, lp.mul(0.5).exp()),
    )
    assert_close(gaussian_kl(mq, lq, mp, lp), expected)


# ------------------------------------------------------------------------------ batch norm


def test_frame_batch_norm_normalises_each_frame_on_its_own():
    norm = FrameBatchNorm2d(3, track_running_stats=False)
    with torch.no_grad():
        norm.weight.copy_(torch.tensor([1.0, 2.0, 0.5]))
        norm.bias.copy_(torch.tensor([0.1, -0.2, 0.3]))
    x = torch.randn(2, 4, 3, 5, 5, dtype=torch.float64).to(torch.float32)  # (B, G, C, H, W)
    stacked = norm(x.reshape(8, 3, 5, 5), 4).reshape(2, 4, 3, 5, 5)
    for g in range(4):
        frame = x[:, g].double()
        mean = frame.mean((0, 2, 3), keepdim=True)
        var = frame.var((0, 2, 3), unbiased=False, keepdim=True)
        plain = (frame - mean) / (var + 1e-5).sqrt() * norm.weight.double()[:, None, None] + (
            norm.bias.double()[:, None, None]
        )
        assert_close(stacked[:, g].double(), plain, atol=1e-5, rtol=1e-5)
    norm.eval()  # batch statistics in evaluation mode too (the reference)
    assert_close(norm(x[:, 0]), stacked[:, 0], atol=1e-6, rtol=1e-6)


def test_running_batch_norm_option():
    norm = FrameBatchNorm2d(2, track_running_stats=True, momentum=0.5)
    x = torch.randn(3, 2, 2, 4, 4)
    norm(x.reshape(6, 2, 4, 4), 2)
    means = x.mean((0, 3, 4))  # (G, C)
    assert_close(norm.running_mean, 0.5 * means.mean(0))
    model = tiny(batch_norm="running", latent_channels=None).eval()
    frames = clip(b=3, t=5)
    alone = model(frames[:1], context=2).predictions[0]
    batch = model(frames, context=2).predictions[0]
    assert_close(alone, batch[:1], atol=1e-5, rtol=1e-5)  # no batch dependence in evaluation


def test_batch_statistics_make_samples_depend_on_their_batch(zero_noise):
    model = tiny().eval()
    frames = clip(b=3, t=5)
    alone = model(frames[:1], context=2).predictions[0]
    batch = model(frames, context=2).predictions[0]
    assert not torch.allclose(alone, batch[:1], atol=1e-4)


def test_bfloat16_autocast_stays_close_to_float32(zero_noise):
    model = tiny(latent_channels=None).eval()
    frames = clip(t=6)
    ref = model(frames, context=3).predictions[0]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = model(frames, context=3).predictions[0]
    assert (low.float() - ref).abs().max() < 0.05


@pytest.mark.slow
def test_compile_step_matches_eager_and_never_recompiles_per_step(zero_noise):
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    model = tiny(latent_channels=None, num_layers=1).train()
    frames = clip(t=6)
    expected = model(frames, context=3).predictions[0]
    model.compile_step(backend="eager")
    counters.clear()
    got = model(frames, context=3).predictions[0]
    assert_close(got, expected, atol=1e-6, rtol=1e-6)
    graphs = int(counters["stats"]["unique_graphs"])
    assert 0 < graphs <= 2 * model.num_levels
    model(clip(t=14), context=9)  # more steps, other phases of the period counters
    assert int(counters["stats"]["unique_graphs"]) == graphs
    assert model.compile_step(False)._compiled_parts is None


# ------------------------------------------------------------------------------ heatmaps


def plain_heatmap(points: list[tuple[int, int]], size: int, sigma: float) -> np.ndarray:
    """MSPred's heatmap written out pixel by pixel."""
    out = np.zeros((size, size))
    x0 = 3 * sigma + 1
    length = math.ceil(6 * sigma + 3)
    for x, y in points:
        if x == 0 or y == 0:
            continue
        ulx, uly = math.trunc(x - 3 * sigma - 1), math.trunc(y - 3 * sigma - 1)
        brx, bry = math.trunc(x + 3 * sigma + 2), math.trunc(y + 3 * sigma + 2)
        for i in range(max(0, uly), min(bry, size)):
            for j in range(max(0, ulx), min(brx, size)):
                k, m = j - ulx, i - uly
                if k < length and m < length:
                    out[i, j] += math.exp(-((k - x0) ** 2 + (m - x0) ** 2) / (2 * sigma**2))
    return out


@settings(max_examples=25, deadline=None)
@given(
    points=st.lists(st.tuples(st.integers(0, 31), st.integers(0, 31)), min_size=1, max_size=3),
    sigma=st.sampled_from([1.0, 2.0, 5.0]),
)
def test_gaussian_heatmaps_match_the_plain_formula(points, sigma):
    got = gaussian_heatmaps(np.array(points), 32, 32, sigma).double().numpy()
    np.testing.assert_allclose(got, plain_heatmap(points, 32, sigma), atol=1e-6)


def test_moving_digits_heatmaps_follow_the_digit_centres():
    ds = MovingDigits(2, seq_len=5, image_size=64, seed=3)
    data = MovingDigitsHeatmaps(ds, channels=3)
    sample = data[1]
    assert sample.frames.shape == (5, 3, 64, 64)
    assert torch.equal(sample.frames[:, 0], ds[1][:, 0])
    centre, blob = sample.heatmaps
    assert centre.shape == blob.shape == (5, 1, 64, 64)
    centres = digit_centers(ds.describe(1).positions, 28)
    for t in range(5):
        for x, y in centres[t]:
            assert centre[t, 0, y, x] >= 1.0 - 1e-6  # peak 1 at each centre (2 if both overlap)
        np.testing.assert_allclose(
            blob[t, 0].double().numpy(),
            plain_heatmap([tuple(c) for c in centres[t]], 64, 5.0),
            atol=1e-6,
        )
    batch = torch.utils.data.default_collate([data[0], data[1]])
    assert batch.frames.shape == (2, 5, 3, 64, 64) and batch.heatmaps[1].shape == (2, 5, 1, 64, 64)


# ------------------------------------------------------------------------------ bad input


def test_bad_construction_arguments():
    with pytest.raises(ValueError, match="periods"):
        HierarchicalPredictor(periods=())
    with pytest.raises(ValueError, match=r"periods\[1\]"):
        HierarchicalPredictor(periods=(1, 0, 8))
    with pytest.raises(ValueError, match=r"periods\[2\]"):
        HierarchicalPredictor(periods=(1, 4, 2.5))
    with pytest.raises(ValueError, match=r"periods\[0\]"):
        HierarchicalPredictor(periods=(True, 4, 8))
    with pytest.raises(ValueError, match="periods"):
        HierarchicalPredictor(periods=4)
    with pytest.raises(ValueError, match="hidden_channels"):
        HierarchicalPredictor(hidden_channels=(8, 8), device="meta")
    with pytest.raises(ValueError, match="head_channels"):
        HierarchicalPredictor(head_channels=(1,), device="meta")
    with pytest.raises(ValueError, match="cell"):
        HierarchicalPredictor(cell="gru", device="meta")
    with pytest.raises(ValueError, match="head_schedule"):
        HierarchicalPredictor(head_schedule="level", device="meta")
    with pytest.raises(ValueError, match="feedback"):
        HierarchicalPredictor(feedback="pixels", device="meta")
    with pytest.raises(TypeError, match="norrm"):
        HierarchicalPredictor(norrm="layer", device="meta")
    with pytest.raises(ValueError, match="divisible by 2"):
        stpl.get_model("mspred", image_size=40, device="meta")


def test_bad_inputs_get_clear_errors():
    model = tiny()
    with pytest.raises(ValueError, match="divisible by 2\\^\\(levels\\+1\\) = 16"):
        model(torch.rand(1, 4, 1, 24, 24))
    with pytest.raises(ValueError, match="C=1"):
        model(torch.rand(1, 4, 3, 32, 32))
    with pytest.raises(ValueError, match="T >= 2"):
        model(torch.rand(1, 1, 1, 32, 32))
    with pytest.raises(ValueError, match="context"):
        model(clip(t=4), context=5)
    with pytest.raises(ValueError, match="per sample"):
        model(clip(t=4), context=1, mask=torch.ones(2, 2, 1, 32, 32))
    with pytest.raises(ValueError, match="actions"):
        model(clip(t=4), actions=torch.zeros(2, 4, 3))
    state = model(clip(t=4)).state
    assert isinstance(state, HierarchicalState)
    with pytest.raises(ValueError, match="batch size"):
        model(clip(b=3, t=4), state=state)
    with pytest.raises(ValueError, match="state must be"):
        model(clip(t=4), state=[torch.zeros(1)])
    with pytest.raises(ValueError, match="deterministic"):
        tiny(latent_channels=None)(clip(t=4), state=state)
    with pytest.raises(TypeError, match="StreamState"):
        model.forecast(state, 2)
    with pytest.raises(ValueError, match="horizon"):
        model.generate(clip(t=2), 0)
    with pytest.raises(ValueError, match="frames must be"):
        model.initial_state(torch.rand(32, 32))


def test_bad_reference_checkpoints(golden):
    sd = golden("model_mspred.pt")["state_dict"]
    with pytest.raises(ValueError, match="image_channels=3"):
        load_reference("mspred", sd, patch_size=1, image_channels=3)
    with pytest.raises(ValueError, match="patch_size"):
        load_reference("mspred", sd, patch_size=2, image_channels=1)
    with pytest.raises(ValueError, match="periods"):
        load_reference("mspred", sd, patch_size=1, image_channels=1, periods=(1, 4))
    extra = dict(sd)
    extra["predictor.0.extra.weight"] = torch.zeros(1)
    with pytest.raises(ValueError, match=r"predictor\.0\.extra\.weight"):
        load_reference("mspred", extra, patch_size=1, image_channels=1)
    with pytest.raises(ValueError, match=r"encoder\.c1\.main\.0\.weight"):
        load_reference(
            "mspred",
            {k: v for k, v in sd.items() if not k.startswith("encoder.c1")},
            patch_size=1,
            image_channels=1,
        )


def test_hierarchical_loss_bad_arguments():
    model = tiny(latent_channels=None)
    frames = clip(t=6)
    out = model(frames, context=3)
    with pytest.raises(TypeError, match="HierarchicalOutput"):
        hierarchical_loss(out.predictions, frames, context=3)
    with pytest.raises(ValueError, match="alphas"):
        hierarchical_loss(out, frames, context=3, alphas=(1.0,))
    with pytest.raises(ValueError, match="targets"):
        hierarchical_loss(out, frames, [frames], context=3)
    with pytest.raises(ValueError, match="level 1"):
        hierarchical_loss(out, frames, [frames[:, :3], None], context=3)
    with pytest.raises(ValueError, match="num_preds"):
        hierarchical_loss(out, frames, context=3, num_preds=0)
    with pytest.raises(ValueError, match="centers"):
        gaussian_heatmaps(np.array([[40, 3]]), 32, 32, 2.0)


# ------------------------------------------------------------------------------ the example


def test_the_training_example_runs_mspred_and_draws_every_level(tmp_path, monkeypatch):
    import importlib.util
    import json
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "examples" / "train_moving_mnist.py"
    spec = importlib.util.spec_from_file_location("train_moving_mnist_mspred", script)
    assert spec is not None and spec.loader is not None
    example = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, example)
    spec.loader.exec_module(example)
    out = tmp_path / "run"
    argv = [
        "--model", "mspred", "--image-size", "32", "--digit-size", "14", "--hidden", "4",
        "--layers", "1", "--context", "5", "--horizon", "2", "--num-train", "8",
        "--num-eval", "2", "--batch-size", "2", "--steps", "2", "--eval-every", "2",
        "--quiet", "--out", str(out), "--device", "cpu",
    ]  # fmt: skip
    assert example.main(argv) == 0
    assert {p.name for p in out.iterdir()} == {
        "metrics.json", "checkpoint.pt", "predictions.gif", "levels.png",
    }  # fmt: skip
    last = json.loads((out / "metrics.json").read_text())["history"][-1]
    assert last["step"] == 2
    assert all(np.isfinite([last[k] for k in ("mse", "ssim", "heatmap_mse_level1", "kl")]))
    assert (
        example.main([*argv[:-4], "--resume", str(out / "checkpoint.pt"), "--out", str(out)]) == 2
    )


@pytest.mark.slow
@pytest.mark.parametrize("stochastic", [False, True])
def test_an_exported_observe_step_serves_every_phase_of_the_counters(zero_noise, stochastic):
    """``torch.export`` of one observed frame: the step index is a tensor input, every level
    runs and ``torch.where`` keeps the updated ones, so one program follows the eager model
    through all phases of the periods (1, 2, 3)."""
    model = tiny(periods=(1, 2, 3), latent_channels=2 if stochastic else None).eval()
    frames = clip(b=1, t=8)

    class Step(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, frame, state):
            out = self.model.observe(frame.unsqueeze(1), state)
            return out.pending, out.state

    # a stochastic stream holds its last step from the first frame on: start after it
    begin = 1 if stochastic else 0
    state = model.observe(frames[:, :1]).state if stochastic else model.initial_state(frames)
    program = torch.export.export(Step(), (frames[:, begin], state), strict=False).module()
    for t in range(begin, 7):
        pending, state = program(frames[:, t], state)
    expected = model.observe(frames[:, :7])
    assert_close(pending, expected.pending, atol=1e-4, rtol=1e-4)
    assert int(state.after.step) == 7
    forecast = model.forecast(stpl.StreamState(state, pending), 3)
    assert_close(forecast, model.forecast(expected, 3), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("mode", ["train", "rollout"])
def test_the_benchmark_tool_runs_mspred(mode, capsys):
    import json

    from stpl.benchmark.__main__ import main

    argv = [
        "--model", "mspred", "--mode", mode, "--hidden", "4", "--layers", "1",
        "--image-size", "32", "--batch", "2", "--frames", "6", "--repeats", "1",
        "--no-memory", "--no-isolated", "--json",
    ]  # fmt: skip
    assert main(argv) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["step"]["median_s"] > 0 and result["flops"] > 0


def test_the_step_function_is_pure_and_keeps_its_state_structure(zero_noise):
    """``_step_impl`` (one observed frame) never reads a tensor on the host, creates no CPU
    tensor on the model's device, and maps a state to one of the same structure: traced
    with ``make_fx`` on the meta device, as CUDA graphs need."""
    from torch.fx.experimental.proxy_tensor import make_fx
    from torch.utils._pytree import tree_flatten

    with torch.device("meta"):
        model = tiny(latent_channels=None).eval()
    frame = torch.empty(2, 1, 32, 32, device="meta")
    state = model.initial_state(frame)

    def step(frame, state):
        out = model._step_impl(frame, state, None)
        return out.prediction, out.state

    graph = make_fx(step)(frame, state).graph
    for node in graph.nodes:
        value = node.meta.get("val")
        if isinstance(value, torch.Tensor):
            assert value.device.type == "meta", node
        assert "_local_scalar_dense" not in str(node.target), node
    _, new = step(frame, state)
    assert tree_flatten(new)[1] == tree_flatten(state)[1]
    # and it computes what observe computes, over several phases
    model = tiny(latent_channels=None, periods=(1, 2, 3)).eval()
    frames = clip(b=2, t=5)
    state = model.initial_state(frames)
    for t in range(5):
        pending, state, _ = model._step_impl(frames[:, t], state, None)
    assert_close(pending, model.observe(frames).pending, atol=1e-5, rtol=1e-5)
