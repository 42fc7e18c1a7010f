"""What a benchmark step runs: the module, its inputs and the step closures."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from stpl.benchmark._config import BenchConfig
from stpl.cells import ConvLSTMCell, DetailContextBlock, MoDeRNNCell, STLSTMCell
from stpl.models import (
    HierarchicalOutput,
    HierarchicalPredictor,
    RecurrentPredictor,
)
from stpl.registry import get_model
from stpl.training import hierarchical_loss

__all__ = [
    "CellStack",
    "Step",
    "Workload",
    "autocast_context",
    "build_module",
    "build_workload",
    "compile_kwargs",
    "make_inputs",
]

Step = Callable[[], Any]
"""A zero-argument closure that runs one timed step."""


@dataclass
class Workload:
    """A built benchmark: the eager module, the step to time and its eager twin.

    Attributes:
        module: the eager module (parameters on the device, in the requested layout).
        step: the step that is timed (compiled when the config asks for it).
        eager_step: the same step on the eager module; FLOPs and convolution shapes are
            recorded from it (the math is identical, and compiled graphs hide their ops).
        steps_per_run: recurrent steps per sample in one run (T-1 for a model, T for a cell).
        samples: sequences per run (the batch).
        stream_step: a batch-1, single-step ``generate`` (rollout mode of a model) or
            batch-1 single cell step (rollout mode of a cell); ``None`` otherwise.
        compile_target: what ``torch.compile`` wrapped (``None`` in eager).
    """

    module: nn.Module
    step: Step
    eager_step: Step
    steps_per_run: int
    samples: int
    stream_step: Step | None
    compile_target: str | None


def autocast_context(config: BenchConfig) -> contextlib.AbstractContextManager[Any]:
    """``torch.autocast(device, bfloat16)`` for ``dtype="bfloat16"``, else a no-op."""
    if config.dtype == "bfloat16":
        return torch.autocast(torch.device(config.device).type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def build_module(config: BenchConfig, **preset_overrides: Any) -> nn.Module:
    """Build the preset or the cell stack of ``config`` (float32 parameters, on the device).

    ``preset_overrides`` go to :func:`stpl.get_model` on top of the ones ``config`` sets.
    """
    torch.manual_seed(config.seed)
    if config.model is not None:
        overrides: dict[str, Any] = {"image_size": config.image_size, **preset_overrides}
        for key, value in (
            ("hidden_channels", config.hidden),
            ("num_layers", config.layers),
            ("kernel_size", config.kernel),
            ("patch_size", config.patch_size),
        ):
            if value is not None:
                overrides[key] = value
        if config.channels != 1:
            overrides["in_channels"] = config.channels
        if config.checkpoint_steps:
            overrides["checkpoint_steps"] = True
        module: nn.Module = get_model(config.model, **overrides)
    else:
        module = CellStack(config)
    module = module.to(config.device)
    if config.channels_last:
        module = module.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    return module


class CellStack(nn.Module):
    """``layers`` cells of one type run over T steps, each layer with its own state.

    Layer 0 reads ``(B, p*p*C, H/p, W/p)`` maps, the others the hidden map of the layer
    below (no zigzag memory: this measures cells, not a predictor). ``dcb`` runs MoDeRNN's
    Detail Context Block on ``(x_t, h)`` with ``h`` the block's previous ``h_hat``.
    """

    def __init__(self, config: BenchConfig) -> None:
        super().__init__()
        assert config.cell is not None
        p = config.patch_size or 4
        hidden = config.hidden or 64
        kernel = config.kernel or 5
        layers = config.layers or 1
        self.kind = config.cell
        self.hidden_channels = hidden
        self.in_channels = p * p * config.channels
        cells: list[nn.Module] = []
        for layer in range(layers):
            c_in = self.in_channels if layer == 0 else hidden
            if config.cell == "convlstm":
                cells.append(ConvLSTMCell(c_in, hidden, kernel))
            elif config.cell == "stlstm":
                cells.append(STLSTMCell(c_in, hidden, kernel))
            elif config.cell == "modernn":
                cells.append(MoDeRNNCell(c_in, hidden, kernel))
            else:
                cells.append(DetailContextBlock(c_in, hidden))
        self.cells = nn.ModuleList(cells)

    def forward(self, x: Tensor, state: list[Any] | None = None) -> tuple[Tensor, list[Any]]:
        """Run ``x: (B, T, C_in, h, w)`` through the stack; returns top maps ``(B, T, C, h, w)``."""
        b, t, _, hh, ww = x.shape
        states: list[Any] = list(state) if state is not None else [None] * len(self.cells)
        outputs: list[Tensor] = []
        for step in range(t):
            inp = x[:, step]
            for layer, cell in enumerate(self.cells):
                if self.kind == "dcb":
                    h = states[layer]
                    if h is None:
                        h = inp.new_zeros((b, self.hidden_channels, hh, ww)) + 0.5
                    inp, h = cell(inp, h)
                    states[layer] = h
                else:
                    inp, states[layer] = cell(inp, states[layer])
            outputs.append(inp)
        return torch.stack(outputs, dim=1), states


def make_inputs(config: BenchConfig, batch: int | None = None) -> Tensor:
    """Random frames ``(B, T, C, H, W)`` (models) or maps ``(B, T, p*p*C, H/p, W/p)`` (cells)."""
    g = torch.Generator().manual_seed(config.seed + 1)
    b = config.batch if batch is None else batch
    if config.model is not None:
        shape: tuple[int, ...] = (
            b,
            config.frames,
            config.channels,
            config.image_size,
            config.image_size,
        )
    else:
        p = config.patch_size or 4
        if config.image_size % p:
            raise ValueError(f"image_size={config.image_size} is not divisible by patch_size={p}")
        side = config.image_size // p
        shape = (b, config.frames, p * p * config.channels, side, side)
    return torch.rand(shape, generator=g).to(config.device)


def compile_kwargs(config: BenchConfig) -> dict[str, Any]:
    """Keyword arguments of ``torch.compile`` for ``config`` (backend, inductor options)."""
    kwargs: dict[str, Any] = {"backend": config.compile_backend}
    if config.inductor_options:
        kwargs["options"] = dict(config.inductor_options)
    return kwargs


def build_workload(config: BenchConfig) -> Workload:
    """Build the module, inputs and step closures for ``config``.

    With ``compile``, ``compile_scope="step"`` compiles one recurrent step (a model's
    ``_step``, each cell of a cell stack) and keeps the Python loop over time eager: one
    small graph reused at every step, so compilation takes seconds to minutes instead of
    the tens of minutes an unrolled 19-step graph takes on a small CPU.
    ``compile_scope="module"`` compiles the whole forward (the loop is unrolled). FLOPs and
    convolution shapes are recorded from an identical eager twin (same seed, same weights).
    """
    module = build_module(config)
    inputs = make_inputs(config)
    runner: Callable[..., Any] = module
    twin = module
    compile_target: str | None = None
    if config.compile:
        twin = build_module(config)
        kwargs = compile_kwargs(config)
        if config.compile_scope == "module":
            runner = torch.compile(module, **kwargs)
            compile_target = "module"
        elif isinstance(module, RecurrentPredictor):
            module.compile_step(**kwargs)
            compile_target = "step"
        else:
            assert isinstance(module, CellStack)
            for cell in module.cells:
                cell.compile(**kwargs)
            compile_target = "cells"

    for mod in (module, twin):
        mod.train(config.mode == "train")

    if isinstance(module, RecurrentPredictor):
        assert isinstance(twin, RecurrentPredictor)
        return _model_workload(config, module, twin, runner, inputs, compile_target)
    assert isinstance(module, CellStack) and isinstance(twin, CellStack)
    return _cell_workload(config, module, twin, runner, inputs, compile_target)


def _model_workload(
    config: BenchConfig,
    module: RecurrentPredictor,
    twin: RecurrentPredictor,
    runner: Callable[..., Any],
    frames: Tensor,
    compile_target: str | None,
) -> Workload:
    context = config.resolved_context
    steps = config.frames - 1
    target = frames[:, 1:]
    every_step = getattr(module, "predicts_every_step", True)
    if not every_step:  # an encoder-forecaster reads the context, then forecasts the rest
        context = min(context, config.frames - 1)
        steps = config.frames
        target = frames[:, context:]

    head_targets = _head_targets(module, frames)
    # MSPred's trainer reads 5 outputs per level: compute only those (as its reference does)
    train_kwargs: dict[str, Any] = {"num_preds": 5} if head_targets is not None else {}

    def train_step(fn: Callable[..., Any], mod: nn.Module) -> Step:
        def run() -> Tensor:
            mod.zero_grad(set_to_none=True)
            with autocast_context(config):
                out = fn(frames, context, **train_kwargs)
                if isinstance(out, HierarchicalOutput):  # MSPred: every level and the KL
                    loss = hierarchical_loss(out, frames, head_targets, context=context).total
                else:
                    loss = F.mse_loss(out.predictions.float(), target)
                    if out.decouple_loss is not None:
                        loss = loss + 0.1 * out.decouple_loss.float()
            torch.autograd.backward(loss)
            return loss.detach()

        return run

    def forward_step(fn: Callable[..., Any]) -> Step:
        def run() -> Tensor:
            with torch.no_grad(), autocast_context(config):
                out = fn(frames, context)
            if isinstance(out, HierarchicalOutput):
                return out.frames
            return out.predictions  # type: ignore[no-any-return]

        return run

    if config.mode == "train":
        step, eager = train_step(runner, module), train_step(twin, twin)
        return Workload(module, step, eager, steps, config.batch, None, compile_target)
    if config.mode == "forward":
        step, eager = forward_step(runner), forward_step(twin)
        return Workload(module, step, eager, steps, config.batch, None, compile_target)

    # rollout: generate(horizon) after `context` frames; the stream step is batch 1, 1 frame.
    ctx_frames = frames[:, :context]
    horizon = max(1, config.frames - context)

    def generate(ctx: Tensor, n: int, state: Any = None) -> Tensor:
        return module.generate(ctx, n, state=state).predictions

    def generate_twin(ctx: Tensor, n: int, state: Any = None) -> Tensor:
        return twin.generate(ctx, n, state=state).predictions

    gen: Callable[..., Tensor] = generate
    if config.compile and config.compile_scope == "module":
        gen = torch.compile(generate, **compile_kwargs(config))
        compile_target = "generate"

    def rollout(fn: Callable[..., Tensor]) -> Step:
        def run() -> Tensor:
            with torch.no_grad(), autocast_context(config):
                return fn(ctx_frames, horizon)

        return run

    one = frames[:1]
    with torch.no_grad(), autocast_context(config):
        if every_step:
            warm_state = twin(one[:, : max(2, context)], None).state
        else:
            warm_state = twin.observe(one[:, :context]).state
    frame = one[:, :1]

    def stream() -> Tensor:
        with torch.no_grad(), autocast_context(config):
            return gen(frame, 1, warm_state)

    return Workload(
        module,
        rollout(gen),
        rollout(generate_twin),
        context - 1 + horizon if every_step else context + horizon,
        config.batch,
        stream,
        compile_target,
    )


def _head_targets(module: nn.Module, frames: Tensor) -> list[Tensor | None] | None:
    """Random targets ``(B, T, C_h, H, W)`` for the heads of a hierarchical model."""
    if not isinstance(module, HierarchicalPredictor):
        return None
    heads = module.head_channels
    g = torch.Generator().manual_seed(7)
    b, t, _, h, w = frames.shape
    return [
        None if c is None else torch.rand(b, t, c, h, w, generator=g).to(frames.device)
        for c in heads
    ]


def _cell_workload(
    config: BenchConfig,
    module: CellStack,
    twin: CellStack,
    runner: Callable[..., Any],
    maps: Tensor,
    compile_target: str | None,
) -> Workload:
    steps = config.frames
    target = torch.rand_like(maps[:, :, :1]).expand(-1, -1, module.hidden_channels, -1, -1)
    if module.kind == "dcb":
        target = torch.rand_like(maps)

    def train_step(fn: Callable[..., Any], mod: nn.Module) -> Step:
        def run() -> Tensor:
            mod.zero_grad(set_to_none=True)
            with autocast_context(config):
                out, _ = fn(maps)
                loss = F.mse_loss(out.float(), target)
            torch.autograd.backward(loss)
            return loss.detach()

        return run

    def forward_step(fn: Callable[..., Any]) -> Step:
        def run() -> Tensor:
            with torch.no_grad(), autocast_context(config):
                out, _ = fn(maps)
            return out  # type: ignore[no-any-return]

        return run

    if config.mode == "train":
        step, eager = train_step(runner, module), train_step(twin, twin)
        return Workload(module, step, eager, steps, config.batch, None, compile_target)
    one = maps[:1, :1].contiguous()
    with torch.no_grad(), autocast_context(config):
        _, warm_state = twin(maps[:1, : max(1, config.resolved_context)])

    def stream() -> Tensor:
        with torch.no_grad(), autocast_context(config):
            out, _ = runner(one, warm_state)
        return out  # type: ignore[no-any-return]

    stream_step = stream if config.mode == "rollout" else None
    return Workload(
        module,
        forward_step(runner),
        forward_step(twin),
        steps,
        config.batch,
        stream_step,
        compile_target,
    )
