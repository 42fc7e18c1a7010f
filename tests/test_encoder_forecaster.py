"""The encoder-forecaster: Hzzone's executed model (golden, both warp corners), the wiring of
both layouts against a plain per-frame re-statement, loading the official layout, the
HKO-7 parameter counts, the streaming semantics and the errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close

import _plain_nowcasting as plain
import stpl
from _plain import randomize_
from stpl.interop import SOURCES, convert_state_dict, load_reference

GOLDEN = Path(__file__).parent / "data" / "golden" / "model_hzzone_encoder_forecaster.pt"


def tiny(layout: str = "official", cell: str = "trajgru", **kw) -> stpl.EncoderForecaster:
    torch.manual_seed(0)
    options = {"hidden_channels": (4, 5, 6), "stem_channels": 3, "head_channels": 3}
    if cell == "trajgru":
        options.update(links=(3, 2, 4), flow_channels=6)
    options.update(kw)
    return stpl.EncoderForecaster(cell, layout=layout, **options)


def video(b: int, t: int, h: int = 60, w: int = 90, seed: int = 1) -> torch.Tensor:
    return torch.rand(b, t, 1, h, w, generator=torch.Generator().manual_seed(seed))


# --------------------------------------------------------------------------------------------
# a plain re-statement of the wiring (spec section 3), frame by frame


def plain_predict(model: stpl.EncoderForecaster, frames: torch.Tensor, horizon: int):
    p = {n: t.detach() for n, t in model.named_parameters()}
    align = getattr(model.encoder[0], "align_corners", True)

    def cell(prefix: str, x, h):
        sub = {k[len(prefix) :]: v for k, v in p.items() if k.startswith(prefix)}
        if "ret.weight" in sub:
            return plain.trajgru(sub, x, h, align)
        return plain.convgru(sub, x, h)

    def conv(name, x, sampling, transposed=False):
        _, s, pad = sampling
        op = F.conv_transpose2d if transposed else F.conv2d
        return op(x, p[f"{name}.weight"], p.get(f"{name}.bias"), stride=s, padding=pad)

    n = model.num_blocks
    xs = [plain.lrelu(conv("stem", f, model.downsample[0])) for f in frames.unbind(1)]
    states: list[torch.Tensor] = []
    outs: list[torch.Tensor] = []
    for i in range(n):
        if i > 0:
            xs = [plain.lrelu(conv(f"down.{i - 1}", x, model.downsample[i])) for x in outs]
        h = xs[0].new_zeros(xs[0].shape[0], model.hidden_channels[i], *xs[0].shape[-2:])
        outs = []
        for x in xs:
            h = cell(f"encoder.{i}.", x, h)
            outs.append(h)
        states.append(h)
    inputs = [None] * horizon
    for i in reversed(range(n)):
        h, outs = states[i], []
        for x in inputs:
            h = cell(f"forecaster.{i}.", x, h)
            outs.append(h)
        if i > 0:
            inputs = [plain.lrelu(conv(f"up.{i - 1}", o, model.upsample[i], True)) for o in outs]
    frames_out = []
    for o in outs:
        y = plain.lrelu(conv("head_deconv", o, model.upsample[0], True))
        y = plain.lrelu(F.conv2d(y, p["head_conv.weight"], p["head_conv.bias"], padding=1))
        frames_out.append(F.conv2d(y, p["head_out.weight"], p["head_out.bias"]))
    return torch.stack(frames_out, dim=1)


@pytest.mark.parametrize(
    ("layout", "cell"), [("official", "trajgru"), ("hzzone", "trajgru"), ("official", "convgru")]
)
def test_equals_the_plain_wiring_in_float64(layout, cell):
    model = randomize_(tiny(layout, cell)).double().eval()
    frames = video(2, 3).double()
    want = plain_predict(model, frames, 4)
    assert_close(model.generate(frames, 4).predictions, want, rtol=1e-9, atol=1e-9)
    targets = torch.zeros(2, 4, 1, 60, 90, dtype=torch.float64)  # not read
    assert_close(model(torch.cat([frames, targets], 1), context=3).predictions, want)


def test_layouts_differ_where_the_spec_says():
    official, port = tiny("official"), tiny("hzzone")
    assert official.up[0].weight.shape == (5, 5, 5, 5)  # block 1 -> 0 keeps block 1's width
    assert port.up[0].weight.shape == (5, 4, 5, 5)  # ... or maps to block 0's
    assert official.up[0].bias is None and port.up[0].bias is not None
    assert official.head_deconv.bias is None and port.head_deconv.bias is not None
    assert [c.links for c in official.forecaster] == [3, 2, 4]
    assert [c.links for c in port.forecaster] == [4, 2, 3]  # the encoder's, reversed
    assert official.forecaster[2].in_channels == port.forecaster[2].in_channels == 0


# --------------------------------------------------------------------------------------------
# the reference


def test_golden_hzzone_model_official_and_port_warps():
    d = torch.load(GOLDEN, weights_only=True)
    frames = d["inputs"]["frames"]
    assert "hzzone_encoder_forecaster" in SOURCES
    for options, key in (({}, "predictions"), ({"align_corners": False}, "predictions_port")):
        model = load_reference(
            "hzzone_encoder_forecaster", d["state_dict"], patch_size=1, image_channels=1, **options
        )
        got = model.generate(frames, d["config"]["out_len"]).predictions
        assert got.shape == d["outputs"][key].shape == (2, 4, 1, 60, 90)
        assert_close(got, d["outputs"][key], rtol=1e-5, atol=1e-5)
    assert model.layout == "hzzone"
    assert [c.links for c in model.encoder] == list(d["config"]["L"])
    assert [c.links for c in model.forecaster] == list(d["config"]["forecaster_L"])
    converted = convert_state_dict(
        "hzzone_encoder_forecaster", d["state_dict"], patch_size=1, image_channels=1
    )
    assert not set(d["config"]["dead_keys"]) & {
        k.replace("forecaster.2.", "forecaster.rnn3.") for k in converted
    }
    assert len(converted) == len(d["state_dict"]) - len(d["config"]["dead_keys"])


def to_hzzone_keys(model: stpl.EncoderForecaster) -> dict[str, torch.Tensor]:
    """Our parameters under the port's key names (``make_layers`` names carry activations)."""
    out = {}
    n = model.num_blocks
    for key, value in model.state_dict().items():
        head, _, rest = key.partition(".")
        if head in ("encoder", "forecaster"):
            i, _, name = rest.partition(".")
            out[f"{head}.rnn{int(i) + 1}.{name}"] = value
        elif head == "stem":
            out[f"encoder.stage1.conv1_leaky_1.{rest}"] = value
        elif head == "down":
            i, _, name = rest.partition(".")
            out[f"encoder.stage{int(i) + 2}.conv{int(i) + 2}_leaky_1.{name}"] = value
        elif head == "up":
            i, _, name = rest.partition(".")
            out[f"forecaster.stage{int(i) + 2}.deconv{n - int(i) - 1}_leaky_1.{name}"] = value
        else:
            name = {
                "head_deconv": "deconv3_leaky_1",
                "head_conv": "conv3_leaky_2",
                "head_out": "conv3_3",
            }
            out[f"forecaster.stage1.{name[head]}.{rest}"] = value
    # key order: make_layers' order inside each stage (head: deconv, conv, conv)
    return dict(
        sorted(out.items(), key=lambda kv: ("stage1" in kv[0], kv[0].split(".")[2][:2] != "de"))
    )


@pytest.mark.parametrize("cell", ["trajgru", "convgru"])
def test_loads_the_official_layout_under_the_ports_names(cell):
    model = randomize_(tiny("official", cell)).eval()
    sd = to_hzzone_keys(model)
    assert not any(k.endswith("deconv1_leaky_1.bias") for k in sd)
    loaded = load_reference("hzzone_encoder_forecaster", sd, patch_size=1, image_channels=1)
    assert loaded.layout == "official" and loaded.deconv_bias is False
    assert loaded.upsample_channels == model.upsample_channels
    frames = video(2, 3)
    assert_close(loaded.generate(frames, 3).predictions, model.generate(frames, 3).predictions)


def test_loader_errors():
    d = torch.load(GOLDEN, weights_only=True)
    sd = d["state_dict"]
    with pytest.raises(ValueError, match="patch_size must be 1"):
        load_reference("hzzone_encoder_forecaster", sd, patch_size=2, image_channels=1)
    with pytest.raises(ValueError, match="image_channels=3, but the state dict's first"):
        load_reference("hzzone_encoder_forecaster", sd, patch_size=1, image_channels=3)
    renamed = {k.replace("conv3_3", "conv3_relu_3"): v for k, v in sd.items()}
    with pytest.raises(
        ValueError, match=r"layer 'conv3_relu_3' of forecaster\.stage1 must have no"
    ):
        load_reference("hzzone_encoder_forecaster", renamed, patch_size=1, image_channels=1)
    missing = {k: v for k, v in sd.items() if not k.startswith("forecaster.stage2")}
    with pytest.raises(ValueError, match=r"expected forecaster.stage1 .. forecaster.stage3"):
        load_reference("hzzone_encoder_forecaster", missing, patch_size=1, image_channels=1)
    with pytest.raises(ValueError, match=r"no 'encoder\.rnn<i>"):
        load_reference(
            "hzzone_encoder_forecaster", {"x": torch.zeros(1)}, patch_size=1, image_channels=1
        )


# --------------------------------------------------------------------------------------------
# the HKO-7 configuration


@pytest.mark.parametrize(
    ("cell", "layout", "count"),
    [
        ("trajgru", "official", 12_148_877),
        ("trajgru", "hzzone", 11_604_373),  # Hzzone's 12,753,909 without its dead weights
        ("convgru", "official", 13_647_905),
        ("convgru", "hzzone", 12_812_585),
    ],
)
def test_hko7_parameter_counts(cell, layout, count):
    model = stpl.get_model("encoder_forecaster", cell=cell, layout=layout, device="meta")
    assert sum(p.numel() for p in model.parameters()) == count
    assert model.map_sizes(480, 480) == [(96, 96), (32, 32), (16, 16)]


def test_preset_is_the_hko7_configuration():
    model = stpl.get_model("encoder_forecaster", device="meta")
    assert isinstance(model, stpl.EncoderForecaster) and not model.predicts_every_step
    assert model.hidden_channels == (64, 192, 192) and model.kernel_size == (5, 5, 3)
    assert [c.links for c in model.encoder] == [13, 13, 9] == [c.links for c in model.forecaster]
    assert model.stem.weight.shape == (8, 1, 7, 7) and model.stem.stride == (5, 5)
    assert model.up[0].weight.shape == (192, 192, 5, 5) and model.up[1].weight.shape == (
        192,
        192,
        4,
        4,
    )
    convgru = stpl.get_model("encoder_forecaster", cell="convgru", device="meta")
    assert [c.kernel_size for c in convgru.encoder] == [5, 5, 3]


def test_hko7_initialisation_zeroes_the_flows():
    model = tiny(init="hko7")
    for cell in (*model.encoder, *model.forecaster):
        assert cell.flows_conv.weight.abs().sum() == 0 and cell.init == "hko7"
    assert model.up[0].weight.std() > 0 and model.head_out.bias.abs().sum() == 0


# --------------------------------------------------------------------------------------------
# contract and options


def test_streaming_semantics():
    model = randomize_(tiny()).eval()
    frames = video(2, 5)
    observed = model.observe(frames[:, :3])
    out = model(torch.cat([frames[:, :3], frames[:, :4]], 1), context=3)
    assert_close(observed.pending, out.predictions[:, 0])
    assert_close(model.forecast(observed, 4), out.predictions)
    # forward goes on from a state: the encoder reads frames 3 and 4 after frames 0..2
    more = model(torch.cat([frames[:, 3:], frames[:, :1]], 1), context=2, state=observed)
    assert_close(
        more.predictions, model(torch.cat([frames, frames[:, :1]], 1), context=5).predictions
    )
    # initial_state is what state=None means
    zero = model.initial_state(frames)
    assert [s.h.shape for s in zero] == [(2, 4, 12, 18), (2, 5, 4, 6), (2, 6, 2, 3)]
    assert_close(model.observe(frames, zero).pending, model.observe(frames).pending)


def test_other_cells_in_the_stages():
    convgru = tiny(cell="convgru").eval()
    assert convgru.generate(video(1, 2), 2).predictions.shape == (1, 2, 1, 60, 90)
    lstm = stpl.EncoderForecaster(
        "convlstm", hidden_channels=(4, 4, 4), kernel_size=3, bias=True, stem_channels=3
    )
    frames = video(2, 4)
    out = lstm(frames, context=2)
    out.predictions.mean().backward()
    assert lstm.forecaster[2].in_channels == 4  # no "step without input": it reads zeros
    assert lstm.encoder[0].conv_x.conv.weight.grad is not None
    with pytest.raises(TypeError, match="links"):
        stpl.EncoderForecaster("convlstm", links=3)
    with pytest.raises(TypeError, match=r"unexpected keyword argument\(s\) 'flow_channel'"):
        stpl.EncoderForecaster("trajgru", flow_channel=3)


def test_checkpoint_steps_gives_the_same_gradients():
    frames = video(2, 4)
    grads = []
    for flag in (False, True):
        model = randomize_(tiny(checkpoint_steps=flag))
        model(frames, context=2).predictions.square().mean().backward()
        grads.append({n: p.grad for n, p in model.named_parameters()})
    for name, grad in grads[0].items():
        assert_close(grads[1][name], grad, msg=name)


@pytest.mark.slow
def test_compile_step_matches_eager():
    """Each cell's step compiles without a graph break (``eager`` backend: dynamo only; the
    cells' own tests run ``aot_eager``), for a training forward and a batch-1 generate."""
    torch._dynamo.reset()
    model = randomize_(tiny())
    frames = video(2, 4)
    want = model(frames, context=2).predictions
    model.compile_step(backend="eager", fullgraph=True)
    assert_close(model(frames, context=2).predictions, want)
    model.eval()
    assert_close(model.generate(frames[:1, :2], 2).predictions, want[:1].detach())
    model.compile_step(False)
    assert model._compiled_cells is None


@pytest.mark.slow
def test_whole_forward_and_generate_compile_as_one_graph():
    torch._dynamo.reset()
    model = randomize_(tiny())
    frames = video(2, 4)
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    assert_close(compiled(frames, context=2).predictions, model(frames, context=2).predictions)
    model.eval()
    generate = torch.compile(model.generate, backend="aot_eager", fullgraph=True)
    assert_close(
        generate(frames[:, :2], 2).predictions, model.generate(frames[:, :2], 2).predictions
    )


def test_autocast_bfloat16_is_close_to_float32():
    model = randomize_(tiny()).eval()
    frames = video(2, 3)
    want = model.generate(frames, 3).predictions
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = model.generate(frames, 3).predictions
    assert got.dtype == torch.bfloat16
    assert (got.float() - want).abs().max() < 0.02 * want.abs().max() + 0.02


def test_errors_name_the_argument():
    model = tiny()
    frames = video(2, 4)
    with pytest.raises(ValueError, match="context is required"):
        model(frames)
    with pytest.raises(ValueError, match=r"context must be < T=4"):
        model(frames, context=4)
    with pytest.raises(ValueError, match="mask must be None"):
        model(frames, context=2, mask=torch.ones(2, 2))
    with pytest.raises(ValueError, match=r"a side must be a multiple of 30"):
        model(video(2, 4, 64, 64), context=2)
    with pytest.raises(ValueError, match=r"state\[0\]\[0\] must be \(3, 4, 12, 18\)"):
        model.observe(video(3, 1), model.observe(frames).state)
    with pytest.raises(TypeError, match="StreamState"):
        model.forecast(model(frames, context=2).state, 2)
    with pytest.raises(ValueError, match="horizon must be a positive int"):
        model.generate(frames, 0)
    with pytest.raises(ValueError, match="layout must be one of"):
        tiny(layout="mxnet")
    with pytest.raises(ValueError, match=r"downsample must be 3 \(kernel, stride, padding\)"):
        tiny(downsample=((7, 5, 1),))
    with pytest.raises(ValueError, match=r"links must have one entry per block \(3\)"):
        tiny(links=(1, 2))


@pytest.mark.slow
def test_compiled_copy_steps_its_own_weights():
    import copy

    torch._dynamo.reset()
    model = randomize_(tiny()).eval().compile_step(backend="eager")
    frames = video(1, 2)
    first = model.generate(frames, 2).predictions
    other = copy.deepcopy(model)
    with torch.no_grad():
        other.forecaster[0].ret.bias.add_(0.5)  # a weight inside a compiled step
    eager = copy.deepcopy(other).compile_step(False)
    got = other.generate(frames, 2).predictions
    assert_close(got, eager.generate(frames, 2).predictions)
    assert not torch.allclose(got, first)
    assert_close(model.generate(frames, 2).predictions, first)
