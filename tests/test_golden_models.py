"""Whole reference models, loaded with ``stpl.interop.load_reference``, reproduce the
outputs recorded from the real reference code (``tests/data/golden/model_*.pt``).

The files were computed by running thuml/predrnn-pytorch @ 49d3b0f, OpenSTL @ c74deb5 and
czh-98/MoDeRNN @ 4db34f4 on CPU with random weights (see ``tests/data/golden/README.md``).
Besides the predictions, the reference's own training loss is recomputed from our
predictions in the reference's channels-last patch layout: this shows that our patch layout
is theirs, and (PredRNN-V2) that our decoupling term is theirs.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from einops import rearrange
from torch.testing import assert_close

import stpl
from stpl.interop import load_reference

GOLDEN_DIR = Path(__file__).parent / "data" / "golden"

# file stem -> load_reference source
SUPPORTED = {
    "model_predrnn_v1_ln0": "predrnn",
    "model_predrnn_v1_ln1": "predrnn",
    "model_predrnn_v2_ln0": "predrnn_v2",
    "model_predrnn_v2_ln1": "predrnn_v2",
    "model_predrnn_v2_rss": "predrnn_v2",
    "model_openstl_convlstm": "openstl_convlstm",
    "model_openstl_predrnn": "openstl_predrnn",
    "model_openstl_predrnnv2": "openstl_predrnnv2",
    "model_openstl_predrnnpp": "openstl_predrnnpp",
    "model_modernn": "modernn",
    "model_openstl_mim": "openstl_mim",
    "model_openstl_e3dlstm": "openstl_e3dlstm",
}
# Baselines that the library does not implement yet: their files are not tested.
# Files with their own layout and options, tested in their model's test file.
TESTED_ELSEWHERE = {
    "model_openstl_mau": "test_mau.py",
    "model_openstl_phydnet": "test_phydnet.py",
    "model_hzzone_encoder_forecaster": "test_encoder_forecaster.py",
    "model_openstl_swinlstm": "test_swinlstm.py",
    "model_openstl_swinlstm_b": "test_swinlstm.py",
    "model_mspred": "test_mspred.py",
}
NOT_SUPPORTED: set[str] = set()
# references whose training loss is MSE + L1 (OpenSTL E3DLSTM_Model) instead of MSE
L1_LOSS = {"model_openstl_e3dlstm"}

DECOUPLE_BETA = 0.1  # the reference default (run.py, OpenSTL mmnist config)


def load(stem: str) -> dict:
    return torch.load(GOLDEN_DIR / f"{stem}.pt", weights_only=True)


def test_every_model_file_is_accounted_for():
    stems = {p.stem for p in GOLDEN_DIR.glob("model_*.pt")}
    assert stems == set(SUPPORTED) | NOT_SUPPORTED | set(TESTED_ELSEWHERE)


def build(stem: str) -> tuple[stpl.EncoderStackDecoder, dict]:  # MIM, E3DLSTM: subclasses
    d = load(stem)
    cfg = d["config"]
    channels = d["inputs"]["frames"].shape[2]
    model = load_reference(
        SUPPORTED[stem], d["state_dict"], patch_size=cfg["patch_size"], image_channels=channels
    )
    return model, d


@pytest.mark.parametrize("stem", sorted(SUPPORTED))
def test_predictions_match_reference(stem):
    model, d = build(stem)
    inputs, outputs = d["inputs"], d["outputs"]
    with torch.no_grad():
        out = model(inputs["frames"], context=d["config"]["context"], mask=inputs["mask"])
    assert out.predictions.shape == outputs["predictions"].shape
    assert_close(out.predictions, outputs["predictions"])
    if "decouple_loss" in outputs:
        assert out.decouple_loss is not None
        assert_close(out.decouple_loss, outputs["decouple_loss"])
    else:
        assert out.decouple_loss is None


@pytest.mark.parametrize("stem", sorted(s for s in SUPPORTED if s != "model_modernn"))
def test_reference_loss_from_our_predictions(stem):
    """The reference's loss = MSE(next_frames, frames_patch[:, 1:]) (+ beta * decoupling),
    with our predictions re-patched channels-last in the (ph, pw, c) order."""
    model, d = build(stem)
    inputs, outputs = d["inputs"], d["outputs"]
    p = d["config"]["patch_size"]
    with torch.no_grad():
        out = model(inputs["frames"], context=d["config"]["context"], mask=inputs["mask"])
    next_frames = rearrange(out.predictions, "b t c (h ph) (w pw) -> b t h w (ph pw c)", ph=p, pw=p)
    assert_close(next_frames, outputs["next_frames"])
    # the input frames in the same layout are the reference's inputs
    frames_patch = rearrange(
        inputs["frames"], "b t c (h ph) (w pw) -> b t h w (ph pw c)", ph=p, pw=p
    )
    assert_close(frames_patch, inputs["frames_patch"])
    loss = F.mse_loss(next_frames, inputs["frames_patch"][:, 1:])
    if stem in L1_LOSS:
        loss = loss + F.l1_loss(next_frames, inputs["frames_patch"][:, 1:])
    if out.decouple_loss is not None:
        loss = loss + DECOUPLE_BETA * out.decouple_loss
    assert_close(loss, outputs["loss"])


def test_reference_mask_layout():
    """Our (B, T-2) mask is the reference mask with each (b, t) slice constant."""
    for stem in sorted(s for s in SUPPORTED if s != "model_modernn"):
        d = load(stem)
        mask, mask_ref, cfg = d["inputs"]["mask"], d["inputs"]["mask_ref"], d["config"]
        # scheduled sampling: the reference mask covers steps t >= context (index t - context);
        # reverse scheduled sampling: steps t >= 1 (index t - 1), which is our layout.
        offset = cfg["context"] - 1
        expected = mask[:, offset:, None, None, None].expand_as(mask_ref)
        assert torch.equal(mask_ref, expected), stem


def test_modernn_patch_order_matches_reference():
    """MoDeRNN's own patch outputs equal our predictions patched in the (c, pw, ph) order."""
    model, d = build("model_modernn")
    p = d["config"]["patch_size"]
    assert model.patch_order == "modernn"
    with torch.no_grad():
        out = model(d["inputs"]["frames"], context=d["config"]["context"])
    ours = stpl.patchify(out.predictions, p, "modernn")
    assert_close(ours, d["outputs"]["patch_outputs"])
    # and written out: channel index c * p * p + pw * p + ph
    explicit = rearrange(out.predictions, "b t c (h ph) (w pw) -> b t (c pw ph) h w", ph=p, pw=p)
    assert_close(explicit, d["outputs"]["patch_outputs"])


def test_modernn_is_free_running_after_context():
    """MoDeRNN's golden file has no mask: after the context it feeds its predictions back,
    so frames after the context must not influence the predictions."""
    model, d = build("model_modernn")
    frames = d["inputs"]["frames"].clone()
    context = d["config"]["context"]
    frames[:, context:] = torch.rand_like(frames[:, context:])
    with torch.no_grad():
        out = model(frames, context=context)
    assert_close(out.predictions, d["outputs"]["predictions"])
