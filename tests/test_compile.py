"""``torch.compile`` readiness of every preset, proven on CPU.

* The whole training forward (the loop over time unrolled, a mask as a tensor input) and
  ``generate`` compile with ``fullgraph=True``: any host synchronisation (``.item()``,
  Python branching on tensor values, data-dependent shapes) would be a graph break and fail
  here. ``aot_eager`` proves the graph (forward and backward); the benchmarks use inductor.
* ``compile_step`` keeps a model compiled through the life users give it (training,
  evaluation with a ragged last batch, ``generate`` at other batch sizes, eval mode,
  no-grad), and warns when dynamo gives up.
"""

from __future__ import annotations

import contextlib
import warnings

import pytest
import torch
from torch.testing import assert_close

import stpl
from stpl.registry import preset

NAMES = stpl.list_models()


@pytest.fixture
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def small(name: str) -> tuple[torch.nn.Module, tuple[int, int, int]]:
    entry = preset(name)
    torch.manual_seed(0)
    return stpl.get_model(name, **entry.small), entry.frame_shape


def grads(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_training_forward_and_generate_compile_as_one_graph(name, fresh_dynamo):
    model, shape = small(name)
    gen = torch.Generator().manual_seed(2)
    frames = torch.rand(2, 4, *shape, generator=gen)
    every_step = getattr(model, "predicts_every_step", True)
    kwargs = {"context": 1, "mask": torch.rand(2, 2, generator=gen)} if every_step else {}
    if not every_step:
        kwargs = {"context": 2}

    def loss_of(fn):
        model.zero_grad()
        torch.manual_seed(3)  # stochastic depth (SwinLSTM) draws the same numbers in both
        out = fn(frames, **kwargs)
        predictions = out.predictions
        if isinstance(predictions, (list, tuple, dict)):
            predictions = predictions[0]
        loss = predictions.square().mean()
        aux = getattr(out, "decouple_loss", None)
        if aux is not None:
            loss = loss + aux
        loss.backward()
        return predictions.detach(), grads(model)

    model.train()
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    got, got_grads = loss_of(compiled)
    want, want_grads = loss_of(model)
    assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert got_grads.keys() == want_grads.keys()
    for key in want_grads:
        assert_close(got_grads[key], want_grads[key], atol=1e-5, rtol=1e-5, msg=key)

    model.eval()
    generate = torch.compile(model.generate, backend="aot_eager", fullgraph=True)
    assert_close(
        generate(frames[:, :2], 3).predictions,
        model.generate(frames[:, :2], 3).predictions,
        atol=1e-5,
        rtol=1e-5,
    )


def _cache_entries(model: stpl.RecurrentPredictor) -> int:
    step = model._compiled_step
    assert step is not None
    fn = step.compiled("cpu")
    code = fn._torchdynamo_orig_callable.__code__  # type: ignore[attr-defined]
    return len(torch._dynamo.eval_frame._debug_get_cache_entry_list(code))


@pytest.mark.slow
def test_compile_step_stays_compiled_through_a_models_life(fresh_dynamo):
    model = stpl.get_model("predrnn", **preset("predrnn").small)
    model.compile_step(backend="aot_eager")
    frames = torch.rand(4, 5, 1, 16, 16)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*compile_step")
        out = model(frames, context=2, mask=torch.ones(4, 3))  # train
        out.predictions.mean().backward()
        model.eval()
        with torch.no_grad():
            model(frames[:3], context=2)  # a ragged last evaluation batch
            model(frames, context=2)
        for b in (1, 2, 5, 7):  # generate at other batch sizes
            model.generate(torch.rand(b, 2, 1, 16, 16), 3)
        model.train()
        model(frames[:2], context=2).predictions.mean().backward()
    # the whole life fits in the model's own cache, far from the limit of 16
    assert _cache_entries(model) <= 10
    # a second model has its own cache
    other = stpl.get_model("predrnn", **preset("predrnn").small).compile_step(backend="aot_eager")
    other.eval()
    other.generate(torch.rand(2, 2, 1, 16, 16), 2)
    assert _cache_entries(other) <= 2


@pytest.mark.slow
def test_compile_step_warns_when_dynamo_runs_the_step_eagerly(fresh_dynamo):
    model = stpl.get_model("convlstm", **preset("convlstm").small)
    model.compile_step(backend="aot_eager", recompile_limit=1)
    frames = torch.rand(2, 4, 1, 16, 16)
    with pytest.warns(RuntimeWarning, match="runs it eagerly"):
        model(frames)  # the first step has no state, the next ones do: a second graph
    expected = model.compile_step(False)(frames).predictions
    model.compile_step(backend="aot_eager", recompile_limit=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert_close(model(frames).predictions, expected)  # eager fallback: same numbers


def _weight_casts(graph: torch.fx.Graph) -> int:
    """Casts of float32 4-D graph inputs of static shape (convolution weights; activations
    have a dynamic batch dimension) to another dtype."""
    casts = 0
    for node in graph.nodes:
        if node.op != "call_function" or "to_copy" not in str(node.target) or not node.args:
            continue
        src = node.args[0]
        val = getattr(src, "meta", {}).get("val")
        if (
            getattr(src, "op", None) == "placeholder"
            and isinstance(val, torch.Tensor)
            and val.dim() == 4
            and val.dtype == torch.float32
            and all(isinstance(d, int) for d in val.shape)
        ):
            casts += 1
    return casts


@pytest.mark.slow
def test_compiled_bf16_step_casts_weights_once_per_call(fresh_dynamo):
    from torch._dynamo.backends.common import aot_autograd
    from torch._functorch.aot_autograd import make_boxed_func

    graphs: list[torch.fx.GraphModule] = []

    def capture(gm: torch.fx.GraphModule, _inputs: object) -> object:
        graphs.append(gm)
        return make_boxed_func(gm.forward)

    model = stpl.get_model("predrnn", **preset("predrnn").small)
    frames = torch.rand(2, 5, 1, 16, 16)

    def run(m: torch.nn.Module) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        m.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = m(frames, context=2)
        out.predictions.float().square().mean().backward()
        return out.predictions.float(), grads(m)

    want, want_grads = run(model)
    # the test's own check: without the cast-once path, the graph casts every weight
    model.compile_step(backend=aot_autograd(fw_compiler=capture))
    model._weights_cast_once = lambda like: contextlib.nullcontext()  # type: ignore[method-assign]
    run(model)
    assert any(_weight_casts(g.graph) > 0 for g in graphs)
    del model._weights_cast_once
    torch._dynamo.reset()
    graphs.clear()
    model.compile_step(backend=aot_autograd(fw_compiler=capture))
    got, got_grads = run(model)
    # inside every compiled step graph, no convolution weight is cast: the casts happened
    # once, before the loop, and the bf16 copies came in as inputs
    assert graphs and all(_weight_casts(g.graph) == 0 for g in graphs)
    assert_close(got, want, atol=2e-2, rtol=2e-2)
    assert got_grads.keys() == want_grads.keys()  # gradients reach the float32 masters
    for key, g in got_grads.items():
        assert g.dtype == torch.float32
        assert_close(g, want_grads[key], atol=2e-2, rtol=5e-2, msg=key)
    # without autocast nothing is cast
    assert model.__dict__.get("_cast_params") is None


# ------------------------------------------------------------------ CUDA-graph readiness
_HOST_SYNC = {"_local_scalar_dense", "item", "nonzero", "masked_select", "_unique2", "unique_dim"}


def _capture_problems(model: torch.nn.Module, frame: torch.Tensor) -> list[str]:
    """What would stop CUDA graphs from capturing one step of ``model`` (traced on meta)."""
    from torch.fx.experimental.proxy_tensor import make_fx
    from torch.utils._pytree import tree_flatten

    state = model.initial_state(frame)

    def step(frame: torch.Tensor, state: object) -> tuple[object, ...]:
        out = model._step_impl(model._frame_to_step(frame), state, None)
        return out.prediction, out.state

    problems = []
    for node in make_fx(step)(frame, state).graph.nodes:
        val = node.meta.get("val")
        if isinstance(val, torch.Tensor) and val.device.type != "meta":
            problems.append(f"{node.target} makes a tensor on {val.device}")
        op = str(getattr(node.target, "__name__", node.target)).split(".")[0]
        if op in _HOST_SYNC:
            problems.append(f"{node.target} synchronises with the host")
    _, out_state = step(frame, state)
    leaves_in, spec_in = tree_flatten(state)
    leaves_out, spec_out = tree_flatten(out_state)
    if spec_in != spec_out:
        problems.append("the new state has another structure than the old one")
    for a, b in zip(leaves_in, leaves_out, strict=False):
        if isinstance(a, torch.Tensor) and (a.shape, a.dtype) != (b.shape, b.dtype):
            problems.append(f"a state tensor changes from {a.shape} to {b.shape}")
    return problems


@pytest.mark.parametrize("name", NAMES)
def test_a_step_is_capturable_static_on_device_and_hands_its_state_over(name):
    """Proof on CPU of what CUDA graphs need from one recurrent step.

    The step is traced with ``make_fx`` on the ``meta`` device: a tensor created on the
    host inside the step (``torch.tensor(...)`` without a device, a CPU scalar) shows up as a
    CPU tensor in the graph, a host synchronisation (``.item()``, data-dependent shapes) as
    ``_local_scalar_dense``/``nonzero``; and the new state must have the structure, shapes
    and dtypes of the state it came from, so the next replay reads it in place (static
    shapes, no reallocation).
    """
    entry = preset(name)
    with torch.device("meta"):
        model = stpl.get_model(name, **entry.small).eval()
    frame = torch.empty(2, *entry.frame_shape, device="meta")
    assert _capture_problems(model, frame) == []


class _HostScalarCell(torch.nn.Module):
    """A cell with the mistakes the check above must catch."""

    def __init__(self, c_in: int, c_hidden: int) -> None:
        super().__init__()
        self.in_channels, self.hidden_channels = c_in, c_hidden
        self.conv = torch.nn.Conv2d(c_in, c_hidden, 1)

    def initial_state(self, x: torch.Tensor) -> tuple[torch.Tensor]:
        return (x.new_zeros(x.shape[0], self.hidden_channels, *x.shape[2:]),)

    def forward(self, x: torch.Tensor, state: object = None) -> tuple[torch.Tensor, tuple]:
        h = self.conv(x) * torch.tensor(0.5)  # a CPU scalar made inside the step
        return h, (h[:, :, :1],)  # and a state that shrinks


def test_the_capture_check_catches_host_tensors_and_changing_states():
    with torch.device("meta"):
        model = stpl.EncoderStackDecoder(_HostScalarCell, hidden_channels=4, num_layers=1)
    problems = _capture_problems(model, torch.empty(2, 1, 16, 16, device="meta"))
    assert any("on cpu" in p for p in problems)
    assert any("changes from" in p for p in problems)


@pytest.mark.slow
def test_reduce_overhead_mode_runs_and_equals_eager_on_cpu(fresh_dynamo):
    """CUDA graphs apply to CUDA tensors only: on the CPU the mode compiles with inductor
    and must compute what eager computes (the GPU side is benchmarks/gpu_check.py's)."""
    model = stpl.EncoderStackDecoder("convlstm", hidden_channels=4, num_layers=1, patch_size=2)
    model.eval()
    frames = torch.rand(2, 4, 1, 8, 8)
    with torch.no_grad():
        want = model.generate(frames, 3).predictions
        model.compile_step(mode="reduce-overhead", dynamic_batch=False)
        got = model.generate(frames, 3).predictions
    assert_close(got, want, atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------- per-device compile options
def test_compile_kwargs_turn_layout_optimization_off_on_cpu_only():
    from stpl.models._compile import compile_kwargs_for

    cpu = compile_kwargs_for("cpu", {"recompile_limit": 16})
    assert cpu == {"recompile_limit": 16, "options": {"layout_optimization": False}}
    assert compile_kwargs_for("cpu", {"backend": "inductor", "options": {"max_autotune": 1}})[
        "options"
    ] == {"layout_optimization": False, "max_autotune": 1}
    # the user's own choice wins
    assert compile_kwargs_for("cpu", {"options": {"layout_optimization": True}})["options"] == {
        "layout_optimization": True
    }
    # torch.compile takes a mode or options, not both; other backends have no such option;
    # CUDA keeps inductor's defaults
    for device, kwargs in (
        ("cpu", {"mode": "reduce-overhead"}),
        ("cpu", {"backend": "aot_eager"}),
        ("cuda", {}),
        ("cuda", {"options": {"max_autotune": 1}}),
    ):
        assert compile_kwargs_for(device, kwargs) == kwargs


def test_compile_step_compiles_per_device_with_that_devices_options(monkeypatch, fresh_dynamo):
    import stpl.models._compile as compile_module

    seen: list[dict[str, object]] = []
    real = torch.compile

    def recording_compile(fn, **kwargs):
        seen.append(kwargs)
        return real(fn, backend="eager")

    monkeypatch.setattr(compile_module.torch, "compile", recording_compile)
    model = stpl.get_model("convlstm", **preset("convlstm").small).compile_step()
    assert seen == []  # compiled at the first call, when the device is known
    frames = torch.rand(2, 3, 1, 16, 16)
    expected = model.compile_step(False)(frames).predictions
    model.compile_step()
    assert_close(model(frames).predictions, expected)
    model(frames)
    assert len(seen) == 1 and seen[0]["options"] == {"layout_optimization": False}
    step = model._compiled_step
    assert step is not None and list(step._compiled) == ["cpu"]
    # a mode cannot go with options: left to inductor
    model.compile_step(mode="max-autotune-no-cudagraphs")
    model(frames)
    assert "options" not in seen[-1] and seen[-1]["mode"] == "max-autotune-no-cudagraphs"
