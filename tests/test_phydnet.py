"""PhyCell, the moment helpers and the PhyDNet model against plain float64 equations,
OpenSTL's golden outputs (reduced sizes) and the cell/model battery; PhyDNet's training
objective (moment loss, per-step loss, teacher forcing) against the recorded reference values.

The plain functions are written from ``spec/baselines-round3.md`` section 2 with
``F.conv2d`` / ``F.group_norm`` and explicit loops: nothing here calls the code under test.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close

import _plain
import stpl
from _plain import randomize_
from stpl.cells.phycell import kernel_from_moments, moment_basis, moment_matrix, moment_targets
from stpl.interop import convert_state_dict, load_reference, load_reference_cell
from stpl.models import PhyDNet
from stpl.training import (
    BatchTeacherForcing,
    moment_loss,
    phycell_moment_loss,
    phydnet_loss,
    teacher_forcing_ratio,
)

B, C, H, W = 2, 14, 5, 6


# ------------------------------------------------------------------ plain equations
def plain_phycell(p, x, h, groups=7):
    """Section 2a."""
    k = p["phi.0.weight"].shape[-1]
    y = F.conv2d(h, p["phi.0.weight"], p["phi.0.bias"], padding=k // 2)
    y = F.group_norm(y, groups, p["phi.1.weight"], p["phi.1.bias"], 1e-5)
    phi = F.conv2d(y, p["phi.2.weight"], p["phi.2.bias"])
    g = p["gate.weight"].shape[-1]
    gain = torch.sigmoid(
        F.conv2d(torch.cat([x, h], 1), p["gate.weight"], p.get("gate.bias"), padding=g // 2)
    )
    h_tilde = h + phi
    return h_tilde + gain * (x - h_tilde)


def plain_moments(kernel):
    """m[p, q] = Σ_{a,b} k[a, b] u_a^p v_b^q / (p! q!), offsets from the centre (section 2e)."""
    n, m = kernel.shape
    out = torch.zeros(n, m, dtype=torch.float64)
    for pp in range(n):
        for qq in range(m):
            total = 0.0
            for a in range(n):
                for b in range(m):
                    u, v = a - (n - 1) // 2, b - (m - 1) // 2
                    total += float(kernel[a, b]) * u**pp * v**qq
            out[pp, qq] = total / (math.factorial(pp) * math.factorial(qq))
    return out


def plain_moment_loss(weight):
    """Σ_b MSE_mean(K2M(W1[:, b]), one-hot targets), the reference's loop."""
    f, c, k, _ = weight.shape
    targets = torch.zeros(f, k, k, dtype=torch.float64)
    for i in range(k):
        for j in range(k):
            targets[k * i + j, i, j] = 1
    total = 0.0
    for b in range(c):
        moments = torch.stack([plain_moments(weight[ff, b]) for ff in range(f)])
        total += float(((moments - targets) ** 2).mean())
    return total


# ------------------------------------------------------------------ PhyCell
@pytest.mark.parametrize(
    ("kernel", "filters", "groups", "gate", "bias"), [(7, 49, 7, 3, True), (3, 6, 2, 1, False)]
)
def test_phycell_matches_plain_equations(kernel, filters, groups, gate, bias):
    cell = stpl.PhyCell(
        C, C, kernel, filters=filters, groups=groups, gate_kernel_size=gate, bias=bias
    )
    randomize_(cell.double())
    x, h = _plain.rand_maps(2, (B, C, H, W))
    out, state = cell(x, stpl.PhyCellState(h))
    ref = plain_phycell(dict(cell.named_parameters()), x, h, groups)
    assert_close(out, ref)
    assert state.h is out
    assert (cell.gate.bias is not None) == bias


def test_phycell_golden(golden):
    d = golden("cell_openstl_phycell.pt")
    cell = load_reference_cell("openstl_phycell", d["state_dict"])
    assert (cell.hidden_channels, cell.filters, cell.kernel_size) == (16, 49, 7)
    with torch.no_grad():
        out, _ = cell(d["inputs"]["x"], stpl.PhyCellState(d["inputs"]["hidden"]))
    assert_close(out, d["outputs"]["next_hidden"], atol=1e-5, rtol=1e-5)
    o = d["outputs"]
    assert_close(moment_basis(7), o["k2m_M"], atol=1e-12, rtol=0)
    assert torch.equal(moment_targets(7), o["constraints"])
    moments = moment_matrix(cell.derivative_filters.detach()).transpose(0, 1)  # (C, F, k, k)
    assert_close(moments, o["moments"], atol=1e-5, rtol=1e-5)
    assert_close(phycell_moment_loss(cell).detach(), o["moment_loss"], atol=1e-4, rtol=1e-6)
    assert_close(moment_loss(cell).detach(), o["moment_loss"], atol=1e-4, rtol=1e-6)


def test_phycell_carried_state_gradcheck_compile():
    cell = randomize_(stpl.PhyCell(7, 7, 3, filters=9, groups=3))
    xs = _plain.rand_maps(4, (B, 7, H, W), dtype=torch.float32)
    state, outs = None, []
    for x in xs:
        h, state = cell(x, state)
        outs.append(h)
    mid = None
    for x in xs[:2]:
        _, mid = cell(x, mid)
    fresh = stpl.PhyCell(7, 7, 3, filters=9, groups=3)
    fresh.load_state_dict(cell.state_dict())
    assert_close([fresh(xs[2], mid)[0]], outs[2:3])
    # gradcheck in float64 (input and state)
    small = randomize_(stpl.PhyCell(2, 2, 3, filters=4, groups=2).double())
    x, h = _plain.rand_maps(2, (1, 2, 3, 4))
    inputs = (x.requires_grad_(), h.requires_grad_())
    assert torch.autograd.gradcheck(lambda x, h: small(x, (h,))[0], inputs, fast_mode=True)
    # compile without graph breaks
    torch._dynamo.reset()
    compiled = torch.compile(cell, fullgraph=True, backend="aot_eager")
    assert_close(compiled(xs[0], None), cell(xs[0], None))
    assert_close(compiled(xs[1], state), cell(xs[1], state))


def test_phycell_every_parameter_gets_a_gradient_and_bf16():
    cell = randomize_(stpl.PhyCell(C, C, 3, filters=14, groups=7))
    x, h = _plain.rand_maps(2, (B, C, H, W), dtype=torch.float32)
    out, _ = cell(x, (h,))
    out.square().sum().backward()
    for name, p in cell.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        low, _ = cell(x, (h,))
    assert (low.float() - out.detach()).abs().max() < 0.05 * out.abs().max()


def test_phycell_errors():
    with pytest.raises(ValueError, match="in_channels == hidden_channels"):
        stpl.PhyCell(3, 4)
    with pytest.raises(ValueError, match="groups must divide filters"):
        stpl.PhyCell(4, 4, filters=10, groups=7)
    with pytest.raises(ValueError, match="gate_kernel_size"):
        stpl.PhyCell(4, 4, gate_kernel_size=2)
    with pytest.raises(ValueError, match="filters"):
        stpl.PhyCell(4, 4, filters=0)
    cell = stpl.PhyCell(4, 4, 3, filters=9, groups=3)
    (x,) = _plain.rand_maps(1, (1, 4, 5, 5), dtype=torch.float32)
    with pytest.raises(ValueError, match="channels"):
        cell(x[:, :3])
    with pytest.raises(ValueError, match="another cell type"):
        cell(x, stpl.LSTMState(x, x))
    with pytest.raises(ValueError, match=r"state\.h"):
        cell(x, stpl.PhyCellState(x[..., :4]))
    with pytest.raises(ValueError, match="filters = kernel_size"):
        phycell_moment_loss(stpl.PhyCell(4, 4, 3, filters=6, groups=3))
    with pytest.raises(ValueError, match="has none"):
        moment_loss(torch.nn.Conv2d(1, 1, 1))
    assert "filters=9" in repr(cell)
    assert stpl.CELLS["phycell"] is stpl.PhyCell
    assert isinstance(cell, stpl.RecurrentCell) and cell.state_type is stpl.PhyCellState


# ------------------------------------------------------------------ moments
def test_moment_matrix_matches_the_definition():
    gen = torch.Generator().manual_seed(0)
    for n, m in ((7, 7), (3, 5), (1, 3)):
        kernel = torch.randn(n, m, generator=gen, dtype=torch.float64)
        assert_close(moment_matrix(kernel), plain_moments(kernel))
        assert_close(kernel_from_moments(moment_matrix(kernel)), kernel)
    batch = torch.randn(4, 2, 5, 5, generator=gen)
    assert moment_matrix(batch).dtype == torch.float32
    assert_close(moment_matrix(batch)[3, 1], plain_moments(batch[3, 1]).float())


def test_moment_one_hot_kernels_are_finite_difference_stencils():
    """The kernel with the single moment m[i, j] = 1 differentiates polynomials of degree < 5
    exactly: on h(y, x) = y^2 x^3 its cross-correlation gives ∂_y^i ∂_x^j h."""
    k = 5
    y, x = torch.meshgrid(
        torch.arange(-6.0, 7.0, dtype=torch.float64),
        torch.arange(-6.0, 7.0, dtype=torch.float64),
        indexing="ij",
    )
    field = (y**2 * x**3)[None, None]
    derivatives = {
        (0, 0): y**2 * x**3,
        (1, 0): 2 * y * x**3,
        (0, 1): 3 * y**2 * x**2,
        (1, 1): 6 * y * x**2,
        (2, 1): 6 * x**2,
    }
    for (i, j), expected in derivatives.items():
        target = torch.zeros(k, k, dtype=torch.float64)
        target[i, j] = 1
        stencil = kernel_from_moments(target)
        out = F.conv2d(field, stencil[None, None])[0, 0]
        assert_close(out, expected[2:-2, 2:-2], atol=1e-8, rtol=1e-8)


def test_moment_loss_matches_the_reference_loop():
    cell = randomize_(stpl.PhyCell(3, 3, 3, filters=9, groups=3)).double()
    assert_close(
        phycell_moment_loss(cell).item(), plain_moment_loss(cell.derivative_filters.detach())
    )
    # it is differentiable and vanishes for filters that are the stencils themselves
    loss = phycell_moment_loss(cell)
    loss.backward()
    assert cell.derivative_filters.grad.abs().sum() > 0
    with torch.no_grad():
        stencils = kernel_from_moments(moment_targets(3, dtype=torch.float64))
        cell.derivative_filters.copy_(stencils[:, None].expand(-1, 3, -1, -1))
    assert phycell_moment_loss(cell).item() < 1e-20


# ------------------------------------------------------------------ model: golden
def build_golden(golden):
    d = golden("model_openstl_phydnet.pt")
    model = load_reference(
        "openstl_phydnet", d["state_dict"], patch_size=d["config"]["patch_size"], image_channels=1
    )
    return model, d


def test_golden_model_predictions(golden):
    model, d = build_golden(golden)
    sizes = d["config"]["sizes"]
    assert model.encoder_channels == sizes["nf"] and model.latent_channels == sizes["latent"]
    assert list(model.convlstm_channels) == sizes["convlstm_hidden"]
    frames, o = d["inputs"]["frames"], d["outputs"]
    t_in = d["config"]["pre_seq_length"]
    with torch.no_grad():
        free = model(frames, context=t_in).predictions
        forced = model(frames, context=frames.shape[1]).predictions
    assert_close(free, o["predictions"], atol=1e-5, rtol=1e-5)
    assert_close(forced, o["predictions_tf"], atol=1e-5, rtol=1e-5)
    assert_close(free[:, t_in - 1 :], o["pred_y"], atol=1e-5, rtol=1e-5)  # `inference` output


def test_golden_model_losses(golden):
    """The model loss L = Σ_t MSE_t + L_m (free running and teacher forced), L_m alone, and
    what OpenSTL's training_step returns instead: MSE(L, target frames)."""
    model, d = build_golden(golden)
    frames, o = d["inputs"]["frames"], d["outputs"]
    t_in = d["config"]["pre_seq_length"]
    with torch.no_grad():
        free = model(frames, context=t_in).predictions
        forced = model(frames, context=frames.shape[1]).predictions
        assert_close(moment_loss(model), o["moment_loss"], atol=1e-4, rtol=1e-6)
        assert_close(model.moment_loss(), o["moment_loss"], atol=1e-4, rtol=1e-6)
        loss = phydnet_loss(free, frames, model)
        assert_close(loss, o["train_loss"], atol=1e-4, rtol=1e-6)
        assert_close(loss, o["loss"], atol=1e-4, rtol=1e-6)
        assert_close(phydnet_loss(forced, frames, model), o["train_loss_tf"], atol=1e-4, rtol=1e-6)
        openstl = F.mse_loss(loss.expand_as(frames[:, t_in:]), frames[:, t_in:])
    assert_close(openstl, o["openstl_step_loss"], atol=1e-3, rtol=1e-6)
    # = (L - mean y)^2 + Var(y): the gradient of what OpenSTL optimises is scaled by L - mean y
    y = frames[:, t_in:]
    assert_close(openstl, (loss - y.mean()) ** 2 + y.var(unbiased=False), atol=1e-3, rtol=1e-6)


def test_loader_duplicates_buffers_and_errors(golden):
    d = golden("model_openstl_phydnet.pt")
    sd = d["state_dict"]
    only_nested = {
        k: v for k, v in sd.items() if not k.startswith(("phycell.", "convcell.", "k2m."))
    }
    model = load_reference("openstl_phydnet", only_nested, patch_size=4, image_channels=1)
    ref, _ = build_golden(golden)
    for (k, a), (_, b) in zip(model.state_dict().items(), ref.state_dict().items(), strict=True):
        assert torch.equal(a, b), k
    bad = dict(sd)
    bad["encoder.phycell.cell_list.0.convgate.bias"] = sd["phycell.cell_list.0.convgate.bias"] + 1
    with pytest.raises(ValueError, match="differ, but the reference shares them"):
        load_reference("openstl_phydnet", bad, patch_size=4, image_channels=1)
    with pytest.raises(ValueError, match="surprise"):
        load_reference(
            "openstl_phydnet", {**sd, "surprise": torch.zeros(1)}, patch_size=4, image_channels=1
        )
    with pytest.raises(ValueError, match="image_channels"):
        load_reference("openstl_phydnet", sd, patch_size=4, image_channels=3)
    with pytest.raises(ValueError, match="patch_size"):
        load_reference("openstl_phydnet", sd, patch_size=3, image_channels=1)
    converted = convert_state_dict("openstl_phydnet", sd, patch_size=4, image_channels=1)
    assert set(converted) == set(ref.state_dict())
    # a different patch factor changes nothing in the weights (only the strides)
    assert load_reference("openstl_phydnet", sd, patch_size=2, image_channels=1).patch_size == 2


# ------------------------------------------------------------------ model: battery
def tiny(**kw):
    opts = {
        "encoder_channels": 16,
        "latent_channels": 16,
        "phycell_filters": 14,
        "phycell_kernel_size": 3,
        "convlstm_channels": (16,),
    }
    opts.update(kw)
    return PhyDNet(1, **opts)


def test_model_patch_sizes_and_chunks():
    gen = torch.Generator().manual_seed(0)
    for p in (2, 4):
        model = randomize_(tiny(patch_size=p))
        frames = torch.rand(2, 7, 1, 8, 8, generator=gen)
        full = model(frames, context=3)
        assert full.predictions.shape == (2, 6, 1, 8, 8)
        assert full.state.physics.h.shape == (2, 16, 8 // p, 8 // p)
        assert full.predictions.min() > 0 and full.predictions.max() < 1  # sigmoid outputs
        first = model(frames[:, :4])
        second = model(frames[:, 3:], state=first.state)
        assert_close(
            torch.cat([first.predictions, second.predictions], 1), model(frames).predictions
        )


def test_model_float64_gradcheck():
    model = randomize_(tiny(convlstm_channels=(16,))).double()
    frames = torch.rand(1, 3, 1, 8, 8, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda f: model(f, context=2).predictions, (frames,), fast_mode=True
    )


def test_model_compile_step_fullgraph():
    torch._dynamo.reset()
    model = randomize_(tiny())
    frames = torch.rand(2, 3, 1, 8, 8)
    eager = model(frames)
    model.compile_step(backend="aot_eager", fullgraph=True)
    assert_close(model(frames).predictions, eager.predictions)
    torch._dynamo.reset()


def test_model_bfloat16_autocast_close_to_float32():
    model = randomize_(tiny())
    frames = torch.rand(2, 5, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    ref = model(frames, context=2).predictions
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = model(frames, context=2).predictions
    assert (low.float() - ref).abs().max() < 0.05


def test_model_errors():
    with pytest.raises(ValueError, match="patch_size"):
        PhyDNet(1, 3)
    with pytest.raises(ValueError, match="multiple of 16"):
        PhyDNet(1, encoder_channels=24)
    with pytest.raises(ValueError, match="end with latent_channels"):
        PhyDNet(1, convlstm_channels=(128, 32))
    with pytest.raises(ValueError, match="convlstm_channels"):
        PhyDNet(1, convlstm_channels=64)
    model = tiny()
    with pytest.raises(ValueError, match="divisible"):
        model(torch.rand(1, 3, 1, 10, 10))
    out = model(torch.rand(1, 3, 1, 8, 8))
    with pytest.raises(ValueError, match=r"state\.physics\.h must have shape"):
        model(torch.rand(1, 3, 1, 16, 16), state=out.state)
    with pytest.raises(ValueError, match="one LSTMState per ConvLSTM layer"):
        model(torch.rand(1, 3, 1, 8, 8), state=out.state._replace(residual=()))
    with pytest.raises(ValueError, match="PhyDNetState"):
        model(torch.rand(1, 3, 1, 8, 8), state=[out.state])


def test_parameter_counts_match_the_spec():
    """Section 4: 3,091,732 (PhyCell 230,803, ConvLSTM 2,508,032); no dead parameters."""
    with torch.device("meta"):
        model = stpl.get_model("phydnet")
    count = sum(p.numel() for p in model.parameters())
    assert count == 3_091_732
    assert sum(p.numel() for p in model.phycell.parameters()) == 230_803
    assert sum(p.numel() for p in model.convlstm.parameters()) == 2_508_032
    assert sum(p.numel() for p in model.encoder.parameters()) == 28_320
    assert sum(p.numel() for p in model.decoder.parameters()) == 28_129


# ------------------------------------------------------------------ training helpers
def test_phydnet_loss_is_a_sum_of_per_step_means():
    gen = torch.Generator().manual_seed(0)
    frames = torch.rand(2, 5, 1, 4, 4, generator=gen)
    pred = torch.rand(2, 4, 1, 4, 4, generator=gen)
    expected = sum(F.mse_loss(pred[:, t], frames[:, t + 1]) for t in range(4))
    assert_close(phydnet_loss(pred, frames), expected)
    with pytest.raises(ValueError, match="predictions must be"):
        phydnet_loss(pred[:, :3], frames)


def test_teacher_forcing_schedule():
    assert teacher_forcing_ratio(0) == 1.0
    assert teacher_forcing_ratio(100) == pytest.approx(0.7)
    assert teacher_forcing_ratio(334) == 0.0
    sched = BatchTeacherForcing()
    gen = torch.Generator().manual_seed(0)
    mask, context = sched.mask(3, 8, 4, generator=gen)
    assert context == 4 and mask.shape == (3, 6)
    assert torch.equal(mask, torch.ones(3, 6))  # ratio 1 at epoch 0
    sched.load_state_dict({"start": 1.0, "rate": 0.003, "iteration": 1000})
    mask, _ = sched.mask(3, 8, 4, generator=gen)
    assert torch.equal(mask, torch.cat([torch.ones(3, 3), torch.zeros(3, 3)], 1))
    # one coin per batch: at ratio 0.5 each mask's forecast part is all ones or all zeros
    half = BatchTeacherForcing(start=0.5, rate=0.0)
    seen = set()
    for _ in range(20):
        m, _ = half.mask(4, 8, 4, generator=gen)
        assert torch.all(m[:, 3:] == m[0, 3])
        seen.add(float(m[0, 3]))
    assert seen == {0.0, 1.0}
    sched.step()
    assert sched.state_dict()["iteration"] == 1001
    with pytest.raises(ValueError, match="input_length"):
        sched.mask(2, 5, 5)


def test_teacher_forced_mask_equals_context_t():
    model = randomize_(tiny())
    frames = torch.rand(2, 6, 1, 8, 8)
    mask, context = BatchTeacherForcing().mask(2, 6, 3)
    assert_close(
        model(frames, context=context, mask=mask).predictions, model(frames, context=6).predictions
    )


def test_benchmark_tool_runs_the_preset():
    from stpl.benchmark import BenchConfig, run_benchmark

    config = BenchConfig(
        model="phydnet",
        image_size=16,
        batch=1,
        frames=3,
        repeats=1,
        memory=False,
        isolated=False,
        mode="rollout",
    )
    result = run_benchmark(config)
    assert result["step"]["median_s"] > 0 and result["stream_latency"]["median_s"] > 0
