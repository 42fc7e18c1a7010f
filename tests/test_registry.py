"""Presets: names, overrides, and parameter counts equal to the reference code's.

Reference counts are those of ``reference-implementations.md`` section 7 (Moving MNIST:
64x64x1 frames, patch 4 -> 16 channels on 16x16 maps, 4 layers), and are re-derived here
from the per-tensor shapes of sections 1a, 2a and 3e. Large models are built on the
``meta`` device: counting needs no memory and no forward.
"""

from __future__ import annotations

import pytest
import torch

import stpl

PATCH_CHANNELS = 16  # 4 * 4 * 1
MAP = 16  # 64 / 4


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count(name: str, **overrides) -> int:
    with torch.device("meta"):
        return n_params(stpl.get_model(name, **overrides))


# ------------------------------------------------------------------ formulas from the spec
def stlstm_cell(c_in: int, nh: int, k: int, ln: bool) -> int:
    """Section 2a: conv_x 7nh, conv_h 4nh, conv_m 3nh, conv_o nh (k x k), conv_last 1x1."""
    convs = 7 * nh * c_in * k * k + 4 * nh * nh * k * k + 3 * nh * nh * k * k + nh * 2 * nh * k * k
    norms = 2 * (7 + 4 + 3 + 1) * nh * MAP * MAP if ln else 0
    return convs + norms + nh * 2 * nh


def convlstm_cell_used(c_in: int, nh: int, k: int) -> int:
    """Section 1a, LN0, without the dead conv_o / conv_last."""
    return 4 * nh * c_in * k * k + 4 * nh * nh * k * k


def modernn_cell(nh: int, k: int) -> int:
    """Section 3e: conv_i2h, conv_h2h (k, LN), 6 DCB branches (3/5/7, LN), norm_cell."""
    gates = 2 * (4 * nh * nh * k * k + 2 * 4 * nh * MAP * MAP)
    dcb = 2 * sum(nh * nh * kk * kk + 2 * nh * MAP * MAP for kk in (3, 5, 7))
    return gates + dcb + 2 * nh * MAP * MAP


def predrnn_model(nh: int, k: int, ln: bool, v2: bool) -> int:
    cells = stlstm_cell(PATCH_CHANNELS, nh, k, ln) + 3 * stlstm_cell(nh, nh, k, ln)
    return cells + nh * PATCH_CHANNELS + (nh * nh if v2 else 0)


def test_formulas_reproduce_the_spec_per_cell_numbers():
    assert stlstm_cell(16, 64, 5, ln=True) == 1_600_512
    assert stlstm_cell(16, 64, 5, ln=False) == 1_108_992
    assert modernn_cell(64, 3) == 1_466_368


# ------------------------------------------------------------------ names and overrides
def test_list_models():
    names = stpl.list_models()
    assert {"convlstm", "predrnn", "predrnn_v2", "modernn"} <= set(names)
    assert names == sorted(names)
    assert set(names) == set(stpl.PRESETS)


def test_unknown_name_lists_known_ones():
    with pytest.raises(ValueError, match="unknown model 'predrnn_v3'") as info:
        stpl.get_model("predrnn_v3")
    for name in stpl.list_models():
        assert repr(name) in str(info.value)


@pytest.mark.parametrize("name", ["convlstm", "predrnn", "predrnn_v2", "modernn"])
def test_defaults_are_the_moving_mnist_configuration(name):
    with torch.device("meta"):
        model = stpl.get_model(name)
    assert isinstance(model, stpl.EncoderStackDecoder)
    assert model.in_channels == model.out_channels == 1
    assert model.patch_size == 4
    assert model.num_layers == 4
    assert model.hidden_channels == (64,) * 4
    assert model.kernel_size == (3 if name == "modernn" else 5)
    assert (model.adapter is not None) == (name == "predrnn_v2")


def test_preset_layouts():
    with torch.device("meta"):
        predrnn, modernn, convlstm = (stpl.get_model(n) for n in ("predrnn", "modernn", "convlstm"))
    assert predrnn.cell_name == "stlstm" and predrnn.encoder is None
    assert predrnn.decoder.bias is None and predrnn.patch_order == "predrnn"
    assert convlstm.cell_name == "convlstm" and convlstm.cells[0].forget_bias == 0.0
    assert modernn.cell_name == "modernn" and modernn.patch_order == "modernn"
    assert modernn.encoder is not None and modernn.encoder.bias is not None
    assert modernn.decoder.bias is not None
    # MoDeRNN layer-normalises with per-element affine parameters on the 16x16 maps
    assert modernn.cells[0].spatial_size == (MAP, MAP)


def test_overrides():
    model = stpl.get_model(
        "predrnn", hidden_channels=[8, 8], kernel_size=3, patch_size=2, in_channels=3
    )
    assert model.hidden_channels == (8, 8) and model.num_layers == 2
    assert model.kernel_size == 3 and model.patch_size == 2 and model.in_channels == 3
    out = model(torch.rand(1, 3, 3, 8, 8))
    assert out.predictions.shape == (1, 2, 3, 8, 8)


def test_layer_norm_override_and_image_size():
    model = stpl.get_model("predrnn", hidden_channels=8, num_layers=2, norm="layer", image_size=32)
    assert model.cells[0].norm == "layer" and model.cells[0].spatial_size == (8, 8)
    assert model(torch.rand(1, 3, 1, 32, 32)).predictions.shape == (1, 2, 1, 32, 32)
    # spatial_size=None: per-channel affine parameters, any resolution
    free = stpl.get_model("modernn", hidden_channels=8, num_layers=2, spatial_size=None)
    assert free.cells[0].spatial_size is None
    assert free(torch.rand(1, 3, 1, 24, 40)).predictions.shape == (1, 2, 1, 24, 40)
    with pytest.raises(ValueError, match="image_size"):
        stpl.get_model("modernn", image_size=30)


def test_presets_are_read_only():
    with pytest.raises(TypeError):
        stpl.PRESETS["predrnn"]["num_layers"] = 2  # type: ignore[index]


# ------------------------------------------------------------------ parameter counts (spec §7)
@pytest.mark.parametrize(
    ("name", "overrides", "expected"),
    [
        ("predrnn", {"hidden_channels": 128}, 23_838_720),
        ("predrnn_v2", {"hidden_channels": 128}, 23_855_104),
        ("predrnn", {"norm": "layer"}, 8_015_872),
        ("predrnn_v2", {"norm": "layer"}, 8_019_968),  # 8,015,872 + the 64x64 adapter
        ("modernn", {}, 5_867_600),  # the released script: kernel 3
        ("modernn", {"kernel_size": 5}, 7_964_752),
        ("convlstm", {"hidden_channels": 128}, 11_675_648),  # used parameters only
        ("convlstm", {}, 2_970_624),
    ],
)
def test_parameter_counts_match_the_references(name, overrides, expected):
    assert count(name, **overrides) == expected


@pytest.mark.parametrize("nh", [64, 128])
@pytest.mark.parametrize("k", [3, 5])
@pytest.mark.parametrize("ln", [False, True])
def test_predrnn_counts_follow_the_formula(nh, k, ln):
    norm = "layer" if ln else None
    assert count("predrnn", hidden_channels=nh, kernel_size=k, norm=norm) == predrnn_model(
        nh, k, ln, v2=False
    )
    assert count("predrnn_v2", hidden_channels=nh, kernel_size=k, norm=norm) == predrnn_model(
        nh, k, ln, v2=True
    )


@pytest.mark.parametrize("k", [3, 5])
def test_modernn_and_convlstm_counts_follow_the_formula(k):
    embed_output = (PATCH_CHANNELS * 64 + 64) + (64 * PATCH_CHANNELS + PATCH_CHANNELS)
    assert count("modernn", kernel_size=k) == 4 * modernn_cell(64, k) + embed_output
    used = convlstm_cell_used(PATCH_CHANNELS, 64, k) + 3 * convlstm_cell_used(64, 64, k)
    assert count("convlstm", kernel_size=k) == used + 64 * PATCH_CHANNELS


def test_spec_table_rounded_values():
    """The rounded numbers of the spec's table (millions, 3 decimals)."""
    table = {
        ("predrnn", 64, 3, None): 2.200,
        ("predrnn", 128, 3, None): 8.667,
        ("predrnn", 64, 3, "layer"): 4.166,
        ("predrnn", 128, 5, "layer"): 27.771,
        ("predrnn_v2", 64, 5, None): 6.054,
        ("predrnn_v2", 128, 5, "layer"): 27.787,
        ("convlstm", 64, 3, None): 1.070,
        ("convlstm", 128, 3, None): 4.205,
        ("modernn", 128, 3, "layer"): 19.534,
        ("modernn", 128, 5, "layer"): 27.923,
    }
    for (name, nh, k, norm), millions in table.items():
        n = count(name, hidden_channels=nh, kernel_size=k, norm=norm)
        assert round(n / 1e6, 3) == millions, (name, nh, k, norm, n)


def test_convlstm_count_differs_from_openstl_by_the_dead_parameters():
    """OpenSTL counts conv_o (2nh -> nh, k x k) and conv_last (2nh -> nh, 1x1) of every
    cell, which its forward never uses: 15.084M at 4x128 k5, against our 11.676M."""
    for nh, openstl_millions in ((128, 15.084), (64, 3.823)):
        k = 5
        dead = 4 * (nh * 2 * nh * k * k + nh * 2 * nh)
        assert round((count("convlstm", hidden_channels=nh) + dead) / 1e6, 3) == openstl_millions
    assert count("convlstm", hidden_channels=128) + 4 * (128 * 256 * 25 + 128 * 256) == 15_083_520
