"""Kernel launches per recurrent step, eager vs ``compile_step``, counted on the CPU.

On a GPU a recurrent step of small convolutions and many elementwise gates is bound by
kernel launches, not by arithmetic. The set of kernels a step launches is (nearly) the
same on CPU and GPU, so it is counted here:

* **eager**: the ATen operators that do work in one step (leaf operators of the profiler
  trace, without the view and metadata operators that launch nothing);
* **compiled**: the calls of the kernels inductor generated for the step's graphs (each
  traced by the profiler with ``torch._inductor.config.cpp.enable_kernel_profile``) plus
  the operators the compiled step still calls through ATen (the convolutions and other
  "extern" kernels).

Both are counted at run time, for the steady-state step (a carried state), in inference
(no grad) and training (forward and backward, as in the middle of backpropagation
through time). ``torch._inductor.metrics.generated_kernel_count`` is not used: it counts
the kernel objects inductor builds while generating code (several per fused C++ kernel,
once per distinct kernel), not the kernels a step launches.
"""

from __future__ import annotations

import copy
import re
from collections import Counter
from functools import partial
from typing import Any

import torch
from torch import Tensor
from torch.utils._pytree import tree_leaves, tree_map

from stpl.models import RecurrentPredictor

__all__ = [
    "NO_KERNEL_OPS",
    "count_aten_kernels",
    "count_launches",
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
        "aten::as_strided_",
        "aten::resize_as_",
        "aten::resolve_conj",
        "aten::resolve_neg",
        "aten::_conj",
        "aten::_neg_view",
        "torch::autograd::AccumulateGrad",
        "torch::autograd::GraphRoot",
    }
)
"""Operators that launch no kernel (views, metadata, allocation; autograd's graph root, and
``AccumulateGrad`` when it hands a gradient over without adding: when it adds, its
``aten::add_`` is counted)."""


_INDUCTOR_KERNEL = re.compile(r"cpp_fused|cpp_kernel|triton_")


def _is_kernel(name: str) -> bool:
    if "::" in name:
        return not name.startswith("autograd::") and name not in NO_KERNEL_OPS
    return _INDUCTOR_KERNEL.search(name) is not None


def count_launches(fn: Any, *args: Any) -> Counter[str]:
    """The kernels one call of ``fn(*args)`` launches, by name, from a profiler trace.

    Counted: the ATen operators that do work, each once at its innermost operator that
    does work (``aten::conv2d`` -> ``aten::convolution`` -> ``aten::mkldnn_convolution`` is
    one kernel; an operator whose children only allocate or reshape counts as one), and
    the calls of inductor's generated kernels (their profiler events, with
    ``torch._inductor.config.cpp.enable_kernel_profile``). Views, metadata, allocations and
    a gradient handed to a parameter without arithmetic launch nothing.
    """
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        fn(*args)
    counts: Counter[str] = Counter()

    def visit(event: Any) -> bool:
        below = [visit(child) for child in event.cpu_children]
        if any(below):
            return True
        if _is_kernel(event.name):
            counts[event.name] += 1
            return True
        return False

    for event in prof.events():
        if event.cpu_parent is None:
            visit(event)
    return counts


def count_aten_kernels(fn: Any, *args: Any) -> int:
    """The number of kernels one call of ``fn(*args)`` launches (see :func:`count_launches`)."""
    return sum(count_launches(fn, *args).values())


def _float_leaves(tree: Any) -> list[Tensor]:
    return [t for t in tree_leaves(tree) if isinstance(t, Tensor) and t.is_floating_point()]


def count_step_kernels(
    model: RecurrentPredictor, frame: Tensor, *, options: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Kernels one steady-state recurrent step of ``model`` launches at ``frame``'s shape.

    The step is counted in the middle of a sequence: it reads a carried state. In
    training, as in backpropagation through time, the backward receives a gradient for the
    prediction and for every tensor of the new state, computes the gradients of every
    tensor of the state it read (which flow on into the previous step), and adds each
    parameter's gradient to those of the other steps (one ``add_`` per parameter, as
    autograd does). The gradients handed in are made before the step, so no loss
    arithmetic is counted.

    Args:
        model: a predictor (float32).
        frame: ``(B, C, H, W)``, the frame size and batch to count at.
        options: inductor options for ``torch.compile``.

    Returns:
        ``{"inference": {...}, "training": {...}}``, each with ``eager``, ``compiled``
        (``generated``: calls of inductor's kernels, + ``extern``: ATen operators the
        compiled step still calls, such as convolutions), ``ratio`` (compiled / eager)
        and ``by_name`` (compiled launches per kernel or operator name).
    """
    model = copy.deepcopy(model)
    with torch.no_grad():
        carried = model.observe(frame.unsqueeze(1)).state
    x = model._frame_to_step(frame)
    options = {**(options or {}), "cpp.enable_kernel_profile": True}
    result: dict[str, Any] = {}
    for mode in ("inference", "training"):
        grad = mode == "training"
        model.train(grad)
        model.compile_step(False)
        state = tree_map(partial(_carried, grad=grad), carried)
        state_leaves = [t for t in _float_leaves(state) if t.requires_grad]
        params: list[Tensor] = [p for p in model.parameters() if p.requires_grad]
        grads: list[Tensor] = []
        if grad:
            for p in params:
                p.grad = torch.zeros_like(p)
            with torch.no_grad():
                out = model._step(x, state, None)
            grads = [torch.ones_like(t) for t in (out.prediction, *_float_leaves(out.state))]

        step = partial(_one_step, model, x, state, params, state_leaves, grads, grad)

        eager_launches = count_launches(step)
        eager = sum(eager_launches.values())
        torch._dynamo.reset()
        model.compile_step(backend="inductor", options=options, dynamic_batch=False)
        step()  # compiles
        launches = count_launches(step)
        generated = sum(n for name, n in launches.items() if not _is_aten(name))
        extern = sum(launches.values()) - generated
        compiled = generated + extern
        result[mode] = {
            "eager": eager,
            "compiled": compiled,
            "generated": generated,
            "extern": extern,
            "ratio": compiled / eager if eager else None,
            "by_name": dict(sorted(launches.items())),
            "eager_by_name": dict(sorted(eager_launches.items())),
        }
        model.compile_step(False)
        model.zero_grad(set_to_none=True)
    torch._dynamo.reset()
    return result


def _one_step(
    model: RecurrentPredictor,
    x: Tensor,
    state: Any,
    params: list[Tensor],
    state_leaves: list[Tensor],
    grads: list[Tensor],
    grad: bool,
) -> None:
    with torch.set_grad_enabled(grad):
        out = model._step(x, state, None)
        if not grad:
            return
        outs = [out.prediction, *_float_leaves(out.state)]
        pairs = [(o, g) for o, g in zip(outs, grads, strict=True) if o.requires_grad]
        got = torch.autograd.grad(
            [o for o, _ in pairs],
            [*params, *state_leaves],
            [g for _, g in pairs],
            allow_unused=True,
        )
        # the state's gradients flow on into the previous step; the parameters' are added
        # to those of the other steps, one add per parameter, as autograd does
        for p, g in zip(params, got, strict=False):
            if g is not None and p.grad is not None:
                p.grad.add_(g)


def _carried(t: Any, *, grad: bool) -> Any:
    if not isinstance(t, Tensor):
        return t
    return t.detach().requires_grad_(grad and t.is_floating_point())


def _is_aten(name: str) -> bool:
    return "::" in name


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
