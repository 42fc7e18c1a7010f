"""HKO-7 evaluation: skill scores, balanced errors, the accumulating evaluator (batches and DDP
ranks), the balanced training loss and the radar unit conversions, against the official
evaluator's numbers (golden) and plain numpy re-statements."""

from __future__ import annotations

import math
import os
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from torch.testing import assert_close

from stpl import metrics, training
from stpl.data import radar_units

GOLDEN = Path(__file__).parent / "data" / "golden" / "metrics_hko7.pt"
SCORES = ("pod", "far", "csi", "gss", "hss")


@pytest.fixture(scope="module")
def golden():
    return torch.load(GOLDEN, weights_only=True)


def radar(b: int, t: int, h: int = 16, w: int = 16, seed: int = 0):
    """8-bit radar-like pixels (mostly dry, some rain), a noisy prediction and a mask."""
    g = torch.Generator().manual_seed(seed)
    target = (torch.rand(b, t, 1, h, w, generator=g) ** 3 * 255).floor() / 255
    pred = (target + 0.15 * torch.randn(b, t, 1, h, w, generator=g)).clamp(0, 1)
    mask = torch.rand(b, t, 1, h, w, generator=g) > 0.2
    return pred, target, mask


def numpy_counts(pred, target, mask, thresholds):
    """The official numpy ``get_hit_miss_counts`` written plainly, float64 thresholds."""
    p, t, m = pred.double().numpy(), target.double().numpy(), mask.numpy().astype(bool)
    out = np.zeros((4, p.shape[1], len(thresholds)), dtype=np.int64)
    for k, r in enumerate(thresholds):
        thr = (10 * np.log10(r) * 1.56 + 10 * np.log10(58.53) + 10) / 70
        bp, bt = p >= thr, t >= thr
        for i, ev in enumerate((bp & bt, ~bp & bt, bp & ~bt, ~bp & ~bt)):
            out[i, :, k] = (ev & m).sum(axis=(0, 2, 3, 4))
    return out


# --------------------------------------------------------------------------------------------
# golden: the official evaluator


def test_counts_equal_the_official_evaluator(golden):
    i, o = golden["inputs"], golden["outputs"]
    counts = metrics.contingency_counts(i["pred"], i["target"], mask=i["mask"])
    for name in ("hits", "misses", "false_alarms", "correct_negatives"):
        assert torch.equal(getattr(counts, name), o[name]), name
        assert getattr(counts, name).dtype == torch.int64


@pytest.mark.parametrize("name", SCORES)
def test_scores_equal_the_official_evaluator(golden, name):
    i, o = golden["inputs"], golden["outputs"]
    per_frame = getattr(metrics, name)(i["pred"], i["target"], mask=i["mask"], per_frame=True)
    assert per_frame.shape == (4, 5) and per_frame.dtype == torch.float64
    assert_close(per_frame, o[name], rtol=1e-6, atol=1e-6, equal_nan=True)
    table = getattr(metrics, name)(i["pred"], i["target"], mask=i["mask"])
    assert table.shape == (5,)
    assert_close(table, o[name].mean(0), rtol=1e-6, atol=1e-6, equal_nan=True)
    if f"table_{name}" in o:
        assert_close(table, o[f"table_{name}"], rtol=1e-6, atol=1e-6, equal_nan=True)


def test_zero_over_zero_is_nan_without_epsilon(golden):
    i = golden["inputs"]
    csi = metrics.csi(i["pred"], i["target"], mask=i["mask"], per_frame=True)
    assert torch.isnan(csi[1, 4]) and torch.isfinite(csi[:, :4]).all()  # frame 2, 30 mm/h
    assert torch.isnan(metrics.csi(i["pred"], i["target"], mask=i["mask"])[4])
    dry = torch.zeros(1, 2, 1, 4, 4)
    assert torch.isnan(metrics.hss(dry, dry)).all() and torch.isnan(metrics.pod(dry, dry)).all()


@pytest.mark.parametrize(
    ("fn", "key"),
    [
        (metrics.balanced_mse, "balanced_mse"),
        (metrics.balanced_mae, "balanced_mae"),
        (metrics.masked_mse, "mse"),
        (metrics.masked_mae, "mae"),
        (metrics.gdl, "gdl"),
    ],
)
def test_errors_equal_the_official_evaluator(golden, fn, key):
    i, o = golden["inputs"], golden["outputs"]
    curve = fn(i["pred"], i["target"], mask=i["mask"], per_frame=True)
    assert curve.shape == (4,)
    assert_close(curve.double(), o[key], rtol=1e-5, atol=0)
    assert_close(
        fn(i["pred"], i["target"], mask=i["mask"]).double(), o[key].mean(), rtol=1e-5, atol=0
    )
    if f"{key}_per_sample" in o:
        table = fn(i["pred"], i["target"], mask=i["mask"], per_frame=True, per_sample=True)
        assert_close(table.double(), o[f"{key}_per_sample"], rtol=1e-5, atol=0)


def test_balancing_weights_and_table_numbers(golden):
    i, o = golden["inputs"], golden["outputs"]
    assert torch.equal(
        metrics.balancing_weights(i["target"], mask=i["mask"]), o["balancing_weights"]
    )
    b_mse = metrics.balanced_mse(i["pred"], i["target"], mask=i["mask"]).item()
    assert math.isclose(b_mse, o["table_balanced_mse"], rel_tol=1e-5)
    b_mae = metrics.balanced_mae(i["pred"], i["target"], mask=i["mask"]).item()
    assert math.isclose(b_mae, o["table_balanced_mae"], rel_tol=1e-5)


def test_training_loss_equals_both_references(golden):
    i, o = golden["inputs"], golden["outputs"]
    pred = i["pred"].clone().requires_grad_()
    official = training.balanced_loss(pred, i["target"], i["mask"])
    assert math.isclose(official.item(), o["loss_hko7_official"], rel_tol=1e-5)
    hzzone = training.balanced_loss(i["pred"], i["target"], i["mask"], scale=5e-5)
    assert math.isclose(hzzone.item(), o["loss_hzzone"], rel_tol=1e-5)
    official.backward()
    assert pred.grad is not None and pred.grad.abs().sum() > 0


def test_temporal_weights():
    assert_close(training.temporal_weights(5, "linear", 5.0), torch.tensor([1.0, 2, 3, 4, 5]))
    assert_close(training.temporal_weights(3, "exponential", 4.0), torch.tensor([1.0, 2, 4]))
    assert_close(
        training.temporal_weights(4, frame_lambda=0.01), torch.tensor([1.0, 1.01, 1.02, 1.03])
    )
    pred, target, mask = radar(2, 4)
    w = training.temporal_weights(4, "linear")
    per_frame = metrics.balanced_mse(
        pred, target, mask=mask, per_frame=True
    ) + metrics.balanced_mae(pred, target, mask=mask, per_frame=True)
    want = 1e-5 * (w * per_frame).mean()
    assert_close(training.balanced_loss(pred, target, mask, weighting="linear"), want)


def test_conversions_equal_the_official_tables(golden):
    i, o = golden["inputs"], golden["outputs"]
    assert_close(
        metrics.rainfall_to_pixel(i["rain_rates"]), o["rain_to_pixel"], rtol=1e-12, atol=1e-12
    )
    assert_close(
        radar_units.rainfall_to_dbz(i["rain_rates"]), o["rain_to_dbz"], rtol=1e-12, atol=1e-12
    )
    assert_close(
        metrics.pixel_to_rainfall(i["pixel_levels"]), o["pixel_to_rain"], rtol=1e-12, atol=0
    )
    assert_close(
        radar_units.pixel_to_dbz(i["pixel_levels"]), o["pixel_to_dbz"], rtol=1e-12, atol=1e-12
    )
    assert_close(
        metrics.rainfall_to_pixel(torch.tensor(metrics.THRESHOLDS, dtype=torch.float64)),
        o["thresholds_pixel"],
    )


def test_conversions_on_numbers_and_the_spec_table():
    # spec section 6: pixel, x255 and dBZ of each threshold
    for r, pixel, dbz in [
        (0.5, 0.328253, 12.9777),
        (2, 0.462426, 22.3699),
        (30, 0.724527, 40.7169),
    ]:
        assert round(metrics.rainfall_to_pixel(r), 6) == pixel
        assert round(radar_units.rainfall_to_dbz(r), 4) == dbz
        assert math.isclose(
            metrics.pixel_to_rainfall(metrics.rainfall_to_pixel(r)), r, rel_tol=1e-12
        )
    assert (
        round(metrics.pixel_to_rainfall(0.0), 4) == 0.0168
        and round(metrics.pixel_to_rainfall(1.0), 1) == 516.7
    )
    assert radar_units.dbz_to_pixel(80.0) == 1.0 and radar_units.dbz_to_pixel(80.0, clip=False) > 1
    assert radar_units.ZR_A == 58.53 and radar_units.ZR_B == 1.56
    with pytest.raises(ValueError, match="rainfall must be > 0"):
        metrics.rainfall_to_pixel(0.0)


# --------------------------------------------------------------------------------------------
# conventions


def test_counts_equal_a_plain_numpy_count_and_keep_the_threshold_order():
    pred, target, mask = radar(3, 4)
    thresholds = (2.0, 0.5, 30.0)
    counts = metrics.contingency_counts(pred, target, mask=mask, thresholds=thresholds)
    want = numpy_counts(pred, target, mask, thresholds)
    assert np.array_equal(torch.stack(list(counts)).numpy(), want)
    per_sample = metrics.contingency_counts(pred, target, mask=mask, per_sample=True)
    assert per_sample.hits.shape == (3, 4, 5)
    assert torch.equal(
        per_sample.hits.sum(0), metrics.contingency_counts(pred, target, mask=mask).hits
    )
    total = sum(counts)
    assert torch.equal(total, mask.sum(dim=(0, 2, 3, 4))[:, None].expand(4, 3))


def test_event_thresholds_are_exact_in_float32():
    """A float32 pixel just below the float64 threshold is not an event, the next float32 is."""
    thr = metrics.rainfall_to_pixel(torch.tensor([2.0], dtype=torch.float64))
    up = thr.float()
    if up.double() < thr:
        up = torch.nextafter(up, torch.tensor([1.0]))
    below = torch.nextafter(up, torch.tensor([0.0]))
    frames = torch.stack([below, up]).view(1, 1, 1, 1, 2)
    counts = metrics.contingency_counts(frames, frames, thresholds=(2.0,))
    assert counts.hits.item() == 1 and counts.correct_negatives.item() == 1
    assert_close(
        counts.hits,
        metrics.contingency_counts(frames.double(), frames.double(), thresholds=(2.0,)).hits,
    )


def test_masks_bool_float_and_broadcast():
    pred, target, mask = radar(2, 3)
    a = metrics.csi(pred, target, mask=mask, per_frame=True)
    assert_close(metrics.csi(pred, target, mask=mask.float(), per_frame=True), a)
    static = mask[0, 0, 0]  # (H, W), e.g. HKO-7's exclude mask
    full = static.expand_as(mask)
    assert_close(metrics.hss(pred, target, mask=static), metrics.hss(pred, target, mask=full))
    assert_close(
        metrics.balanced_mse(pred, target, mask=static),
        metrics.balanced_mse(pred, target, mask=full),
    )
    assert not torch.allclose(metrics.csi(pred, target, per_frame=True), a)
    with pytest.raises(ValueError, match=r"mask must be broadcastable to pred's shape"):
        metrics.csi(pred, target, mask=mask[:, :2])
    with pytest.raises(TypeError, match=r"mask must be a torch\.Tensor"):
        metrics.csi(pred, target, mask=[1])


def test_errors_name_the_argument():
    pred, target, _ = radar(1, 2)
    with pytest.raises(ValueError, match=r"pred must be \(B, T, C, H, W\)"):
        metrics.csi(pred[0], target[0])
    with pytest.raises(ValueError, match="thresholds must be a non-empty sequence of positive"):
        metrics.hss(pred, target, thresholds=(0.0,))
    with pytest.raises(ValueError, match="thresholds must be increasing"):
        metrics.balanced_mse(pred, target, thresholds=(2.0, 1.0))
    with pytest.raises(ValueError, match=r"weights must be 3 numbers"):
        metrics.balanced_mae(pred, target, thresholds=(1.0, 2.0), weights=(1, 2))
    with pytest.raises(ValueError, match="per_frame must be True or False"):
        metrics.csi(pred, target, per_frame=1)


def test_balanced_errors_are_differentiable_and_clip_on_request():
    pred, target, mask = radar(2, 2)
    over = (pred * 1.5).requires_grad_()
    metrics.balanced_mse(over, target, mask=mask).backward()
    assert over.grad is not None and over.grad.abs().sum() > 0
    clipped = metrics.balanced_mae(over.detach().clamp(0, 1), target, mask=mask)
    assert_close(metrics.balanced_mae(over.detach(), target, mask=mask, clip=True), clipped)


# --------------------------------------------------------------------------------------------
# the accumulator


def test_evaluator_over_batches_equals_one_pass(golden):
    i, o = golden["inputs"], golden["outputs"]
    ev = metrics.NowcastEvaluator(clip=False)
    ev.update(i["pred"][:1], i["target"][:1], i["mask"][:1])
    ev.update(i["pred"][1:], i["target"][1:], i["mask"][1:])
    assert ev.num_sequences.item() == 2
    result = ev.compute(per_frame=True)
    for name in (*SCORES, "mse", "mae", "balanced_mse", "balanced_mae", "gdl"):
        assert_close(result[name].double(), o[name], rtol=1e-5, atol=1e-6, equal_nan=True, msg=name)
    assert torch.equal(ev.counts.hits, o["hits"])
    assert "| mean |" in ev.table() and ev.table().count("\n") == 4 + 2


def test_evaluator_clips_state_dict_and_reset():
    pred, target, mask = radar(4, 3, seed=2)
    ev = metrics.NowcastEvaluator()
    for k in range(0, 4, 3):  # ragged batches
        ev.update(pred[k : k + 3] * 1.3, target[k : k + 3], mask[k : k + 3])
    clipped = (pred * 1.3).clamp(0, 1)
    assert_close(ev.balanced_mse(), metrics.balanced_mse(clipped, target, mask=mask).double())
    assert_close(ev.csi(per_frame=True), metrics.csi(clipped, target, mask=mask, per_frame=True))
    other = metrics.NowcastEvaluator()
    other.load_state_dict(ev.state_dict())
    assert_close(other.compute(), ev.compute(), equal_nan=True)
    ev.reset()
    assert ev.num_sequences.item() == 0
    with pytest.raises(ValueError, match="horizon=3"):
        ev.update(pred[:, :2], target[:, :2])
    with pytest.raises(ValueError, match="nothing accumulated"):
        metrics.NowcastEvaluator().csi()


def _ddp_worker(rank: int, port: int, path: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=2)
    try:
        pred, target, mask = radar(4, 3, seed=5)
        ev = metrics.NowcastEvaluator(horizon=3, device="cpu")
        if rank == 0:  # rank 1 sees no batch at all
            ev.update(pred, target, mask)
        ev.all_reduce()
        if rank == 1:
            torch.save(ev.state_dict(), path)
    finally:
        torch.distributed.destroy_process_group()


@pytest.mark.slow
def test_all_reduce_over_two_ranks_sums_the_counts(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    path = str(tmp_path / "rank1.pt")
    mp.spawn(_ddp_worker, args=(port, path), nprocs=2, join=True)
    pred, target, mask = radar(4, 3, seed=5)
    single = metrics.NowcastEvaluator()
    single.update(pred, target, mask)
    reduced = metrics.NowcastEvaluator()
    reduced.load_state_dict(torch.load(path, weights_only=True))
    assert reduced.num_sequences.item() == 4
    assert torch.equal(reduced.counts.hits, single.counts.hits)
    assert_close(reduced.compute(), single.compute(), equal_nan=True)


class _Recorder(torch.utils._python_dispatch.TorchDispatchMode):
    """Records every aten op that runs (to catch reads of numbers back to the host)."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: set[str] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.add(str(func.overloadpacket))
        return func(*args, **(kwargs or {}))


def test_no_number_is_read_back_to_the_host():
    """Nothing calls ``.item()`` / ``.tolist()`` (``aten._local_scalar_dense``) or needs a
    data-dependent shape (``nonzero``) until the caller asks for numbers."""
    pred, target, mask = radar(2, 3)
    ev = metrics.NowcastEvaluator()
    with _Recorder() as rec:
        metrics.csi(pred, target, mask=mask)
        metrics.hss(pred, target, mask=mask[0, 0, 0], per_frame=True)
        metrics.balanced_mse(pred, target, mask=mask)
        training.balanced_loss(pred, target, mask, weighting="linear")
        ev.update(pred, target, mask)
        ev.update(pred, target)
        ev.compute(per_frame=True)
    assert rec.ops and not {"aten._local_scalar_dense", "aten.nonzero"} & rec.ops


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_no_host_synchronisation_on_cuda():
    pred, target, mask = (t.cuda() for t in radar(2, 3))
    ev = metrics.NowcastEvaluator(horizon=3, device="cuda")
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        ev.update(pred, target, mask)
        metrics.csi(pred, target, mask=mask)
        metrics.balanced_mae(pred, target, mask=mask)
        training.balanced_loss(pred, target, mask)
        ev.compute()
    finally:
        torch.cuda.set_sync_debug_mode("default")
