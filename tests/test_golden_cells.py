"""Our cells reproduce the reference code's outputs (golden vectors, float32 round-off).

The files in ``tests/data/golden/`` were computed by running the public reference modules
(see the README there). Each test maps the reference ``state_dict`` onto our parameter
names, loads it with ``strict=True`` (so every parameter is accounted for) and compares.
"""

from __future__ import annotations

import re

import pytest
from torch import Tensor
from torch.testing import assert_close

import stpl


@pytest.mark.parametrize("ln", [0, 1])
def test_openstl_convlstm(golden, ln):
    d = golden(f"cell_openstl_convlstm_ln{ln}.pt")
    cfg, sd, inp, out = d["config"], d["state_dict"], d["inputs"], d["outputs"]
    hw = (cfg["height"], cfg["width"])
    cell = stpl.ConvLSTMCell(
        cfg["in_channel"],
        cfg["num_hidden"],
        cfg["filter_size"],
        norm="layer" if ln else None,
        spatial_size=hw if ln else None,
    )
    # OpenSTL's conv_o and conv_last are created but never used in its forward.
    cell.load_state_dict(
        {k: v for k, v in sd.items() if not k.startswith(("conv_o.", "conv_last."))}
    )
    h, state = cell(inp["x"], stpl.LSTMState(inp["h"], inp["c"]))
    assert_close(h, out["h"])
    assert_close(state.h, out["h"])
    assert_close(state.c, out["c"])


def test_ndrplz_convlstm(golden):
    d = golden("cell_ndrplz_convlstm.pt")
    cfg, sd, inp, out = d["config"], d["state_dict"], d["inputs"], d["outputs"]
    c_in = cfg["input_dim"]
    cell = stpl.ConvLSTMCell(
        c_in, cfg["hidden_dim"], cfg["kernel_size"], bias=cfg["bias"], gate_order="ifog"
    )
    # one conv on cat[x, h]: its input channels split into our x and h convolutions.
    w = sd["conv.weight"]
    cell.load_state_dict(
        {
            "conv_x.0.weight": w[:, :c_in],
            "conv_x.0.bias": sd["conv.bias"],
            "conv_h.0.weight": w[:, c_in:],
        }
    )
    h, state = cell(inp["x"], stpl.LSTMState(inp["h"], inp["c"]))
    assert_close(h, out["h"])
    assert_close(state.c, out["c"])


@pytest.mark.parametrize("name", ["v1_ln0", "v1_ln1", "v2_ln0", "v2_ln1", "v2_action"])
def test_predrnn_stlstm(golden, name):
    d = golden(f"cell_predrnn_stlstm_{name}.pt")
    cfg, sd, inp, out = d["config"], d["state_dict"], d["inputs"], d["outputs"]
    ln = bool(cfg["layer_norm"])
    action = "a" in inp
    cell = stpl.STLSTMCell(
        cfg["in_channel"],
        cfg["num_hidden"],
        cfg["filter_size"],
        norm="layer" if ln else None,
        spatial_size=(cfg["width"], cfg["width"]) if ln else None,
        bias=action,  # the reference action cells use biased convolutions
        action_channels=inp["a"].shape[1] if action else None,
    )
    cell.load_state_dict(sd)  # same names as the reference
    state = stpl.STLSTMState(inp["h"], inp["c"], inp["m"])
    res = cell.forward_with_increments(inp["x"], state, inp.get("a"))
    for key in "hcm":
        assert_close(getattr(res.state, key), out[key], msg=key)
    assert_close(res.h, out["h"])
    if name.startswith("v2"):
        assert_close(res.delta_c, out["delta_c"])
        assert_close(res.delta_m, out["delta_m"])
    # forward returns the same as forward_with_increments
    h, _ = cell(inp["x"], state, inp.get("a"))
    assert_close(h, out["h"])


_MODERNN_BRANCH = re.compile(r"conv(33|55|77)_([XH])\.(.*)")


def modernn_state_dict(sd: dict[str, Tensor]) -> dict[str, Tensor]:
    """czh-98/MoDeRNN ``MoDeRNN_cell`` names -> ``MoDeRNNCell`` names."""
    new = {}
    for key, value in sd.items():
        if key.startswith("conv_i2h."):
            new["conv_x." + key.removeprefix("conv_i2h.")] = value
        elif key.startswith("conv_h2h."):
            new["conv_h." + key.removeprefix("conv_h2h.")] = value
        elif match := _MODERNN_BRANCH.fullmatch(key):
            k, reads, rest = match.groups()
            branch = {"33": 0, "55": 1, "77": 2}[k]
            new[f"dcb.{reads.lower()}_branches.0.{branch}.{rest}"] = value
        else:
            new[key] = value  # norm_cell.weight / .bias
    return new


def test_modernn(golden):
    d = golden("cell_modernn.pt")
    cfg, sd, inp, out = d["config"], d["state_dict"], d["inputs"], d["outputs"]
    img = cfg["img_size"]
    cell = stpl.MoDeRNNCell(
        cfg["input_chans"],
        cfg["hidden_size"],
        cfg["filter_size"],
        spatial_size=(img, img),
        dcb_rounds=cfg["iterations"],
    )
    cell.load_state_dict(modernn_state_dict(sd))
    # two steps from a zero state, the state carried in between.
    h1, state = cell(inp["x1"])
    assert_close(h1, out["h1"])
    h2, state = cell(inp["x2"], state)
    assert_close(h2, out["h2"])
    assert_close(state.h, out["h_final"])
    assert_close(state.c, out["c_final"])
    # one call of the detail context block.
    x_hat, h_hat = cell.dcb(inp["dcb_x"], inp["dcb_h"])
    assert_close(x_hat, out["dcb_x"])
    assert_close(h_hat, out["dcb_h"])
