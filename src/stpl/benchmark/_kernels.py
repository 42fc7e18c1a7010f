"""Kernel launches per recurrent step, eager vs ``compile_step``, counted on the CPU.

On a GPU a recurrent step of small convolutions and many elementwise gates is bound by
kernel launches, not by arithmetic. The set of kernels a step launches is (nearly) the
same on CPU and GPU, so it is counted here:

* **eager**: the ATen operators that do work in one step (leaf operators of the profiler
  trace, without the view and metadata operators that launch nothing);
* **compiled**: the kernels inductor generates for the step's graph
  (``torch._inductor.metrics.generated_kernel_count``, counted while that one graph is
  compiled) plus the operators the compiled step still calls through ATen (the
  convolutions and other "extern" kernels, from the profiler trace of a compiled call).

Both are counted for the steady-state step (a carried state), in inference (no grad) and
training (forward and backward).
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import Tensor

from stpl.models import RecurrentPredictor

__all__ = [
    "NO_KERNEL_OPS",
    "count_aten_kernels",
    "count_step_kernels",
    "format_kernel_result",
    "run_kernel_benchmark",
]

NO_KERNEL_OPS = frozenset(
    {
        "aten::view",
        "aten::_unsafe_view",
        "aten::reshape",
        "aten::as_strided",
        "aten::select",
        "aten::slice",
        "aten::split",
        "aten::split_with_sizes",
        "aten::chunk",
        "aten::unbind",
        "aten::narrow",
        "aten::unsqueeze",
        "aten::squeeze",
        "aten::expand",
        "aten::expand_as",
        "aten::permute",
        "aten::transpose",
        "aten::t",
        "aten::detach",
        "aten::detach_",
        "aten::alias",
        "aten::empty",
        "aten::empty_like",
        "aten::empty_strided",
        "aten::resize_",
        "aten::lift_fresh",
        "aten::flatten",
        "aten::unflatten",
        "aten::view_as",
        "aten::contiguous",
        "aten::result_type",
        "aten::is_nonzero",
        "aten::size",
        "aten::stride",
        "aten::set_",
        "aten::_reshape_alias",
        "aten::_nnpack_available",
        "aten::_has_compatible_shallow_copy_type",
        "aten::is_same_size",
        "aten::can_cast",
    }
)
"""Operators that launch no kernel (views, metadata, allocation)."""


def count_aten_kernels(fn: Any, *args: Any) -> int:
    """ATen operators that do work in one call of ``fn(*args)`` (profiler leaf events).

    A composite operator (``aten::conv2d`` -> ``aten::convolution`` -> ``aten::mkldnn_...``)
    is counted once, at its innermost operator that does work; views and allocations are not
    counted (an operator whose only children are allocations counts as one kernel).
    """
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        fn(*args)

    def kernels(event: Any) -> int:
        below = sum(kernels(child) for child in event.cpu_children)
        if below:
            return below
        is_op = "::" in event.name and not event.name.startswith("autograd::")
        return int(is_op and event.name not in NO_KERNEL_OPS)

    roots = [e for e in prof.events() if e.cpu_parent is None]
    return sum(kernels(e) for e in roots)


def _generated_kernels(run: Any) -> int:
    from torch._inductor import metrics

    metrics.reset()
    run()
    return int(metrics.generated_kernel_count)


def count_step_kernels(
    model: RecurrentPredictor, frame: Tensor, *, options: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Kernels of one steady-state recurrent step of ``model`` at ``frame``'s shape.

    Args:
        model: a predictor (float32).
        frame: ``(B, C, H, W)``, the frame size and batch to count at.
        options: inductor options for ``torch.compile``.

    Returns:
        ``{"inference": {...}, "training": {...}}``, each with ``eager``, ``compiled``
        (``generated`` + ``extern``) and ``ratio`` (compiled / eager).
    """
    model = copy.deepcopy(model)
    with torch.no_grad():
        state = model.observe(frame.unsqueeze(1)).state
    x = model._frame_to_step(frame)
    result: dict[str, Any] = {}
    for mode in ("inference", "training"):
        grad = mode == "training"
        model.train(grad)
        model.compile_step(False)

        def eager_step(grad: bool = grad) -> None:
            with torch.set_grad_enabled(grad):
                out = model._step(x, state, None)
                if grad:
                    torch.autograd.backward(out.prediction.float().square().mean())

        eager = count_aten_kernels(eager_step)
        torch._dynamo.reset()
        model.compile_step(backend="inductor", options=options or {}, dynamic_batch=False)
        generated = _generated_kernels(eager_step)  # the first call compiles the graphs
        extern = count_aten_kernels(eager_step)  # later calls run them
        compiled = generated + extern
        result[mode] = {
            "eager": eager,
            "compiled": compiled,
            "generated": generated,
            "extern": extern,
            "ratio": compiled / eager if eager else None,
        }
        model.compile_step(False)
        model.zero_grad(set_to_none=True)
    torch._dynamo.reset()
    return result


def run_kernel_benchmark(config: Any) -> dict[str, Any]:
    """``stpl-bench --mode kernels``: :func:`count_step_kernels` for ``config.model``."""
    from stpl.benchmark._measure import machine_info
    from stpl.benchmark._workload import build_module, make_inputs

    if config.model is None:
        raise ValueError("the kernels mode counts a model's step (--model), not a cell")
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    model = build_module(config)
    assert isinstance(model, RecurrentPredictor)
    frame = make_inputs(config)[:, 0].to(config.device)
    options = dict(config.inductor_options)
    return {
        "config": config.to_dict(),
        "name": config.name,
        "machine": machine_info(torch.device(config.device)),
        "kernels_per_step": count_step_kernels(model, frame, options=options),
    }


def format_kernel_result(result: dict[str, Any]) -> str:
    """A human-readable summary of :func:`run_kernel_benchmark`'s result."""
    c = result["config"]
    lines = [
        f"{result['name']}  kernels per recurrent step  B={c['batch']} image={c['image_size']}  "
        f"inductor options={c['inductor_options']}"
    ]
    for mode, k in result["kernels_per_step"].items():
        lines.append(
            f"  {mode:9s} eager {k['eager']:4d}   compile_step {k['compiled']:4d} "
            f"({k['generated']} generated + {k['extern']} extern)   ratio {k['ratio']:.2f}"
        )
    return "\n".join(lines)
