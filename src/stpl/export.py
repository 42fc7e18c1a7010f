"""Take a trained predictor out of Python: ``torch.export`` and ONNX of its streaming steps.

Three exportable pieces cover online use (``docs/deploying.md``):

* :class:`ObserveStep` -- read one new frame: ``(frame, state) -> (pending, state')``, the
  recurrent step of :meth:`~stpl.models.RecurrentPredictor.observe`;
* :class:`Forecast` -- ``(state, pending) -> predictions (B, horizon, C, H, W)`` for a fixed
  horizon, :meth:`~stpl.models.RecurrentPredictor.forecast`;
* :class:`Rollout` -- ``context_frames -> predictions``: a fixed-length context read from
  the zero state, then a fixed horizon, :meth:`~stpl.models.RecurrentPredictor.generate`.

Shapes are static: an exported program runs at the batch size, frame size, context length
and horizon it was exported with (export again for others). The model state is a pytree of
tensors (for :class:`~stpl.EncoderStackDecoder` one NamedTuple per layer); ONNX flattens it
into one input and one output per tensor, in the order of :func:`state_names`.

Example::

    model = stpl.get_model("predrnn").eval()
    frame = torch.rand(1, 1, 64, 64)
    program = stpl.export.export_observe_step(model, frame)      # torch.export.ExportedProgram
    state = model.initial_state(frame)
    pending, state = program.module()(frame, state)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils._pytree import keystr, tree_flatten, tree_flatten_with_path, tree_map

from stpl._validation import check_positive_int
from stpl.models._base import RecurrentPredictor, StreamState

__all__ = [
    "Forecast",
    "ObserveStep",
    "Rollout",
    "export_forecast",
    "export_observe_step",
    "export_rollout",
    "onnx_available",
    "state_names",
    "to_onnx",
]


def _check_model(model: object) -> RecurrentPredictor:
    if not isinstance(model, RecurrentPredictor):
        raise TypeError(
            f"model must be an stpl predictor (RecurrentPredictor); got {type(model).__name__}"
        )
    if model.training:
        raise ValueError(
            "model is in training mode: call model.eval() before exporting (dropout, batch "
            "statistics and stochastic latents would be frozen in their training behaviour)"
        )
    return model


class ObserveStep(nn.Module):
    """One observed frame: ``forward(frame, state) -> (pending, state')``.

    Args:
        model: a predictor in eval mode.

    ``frame: (B, C, H, W)``; ``state``: the model state (``model.initial_state(frame)`` to
    start); returns the prediction of the next frame ``(B, C_out, H, W)`` and the new state.
    """

    def __init__(self, model: RecurrentPredictor) -> None:
        super().__init__()
        self.model = _check_model(model)
        self.eval()

    def forward(self, frame: Tensor, state: Any) -> tuple[Tensor, Any]:
        out = self.model.observe(frame.unsqueeze(1), state)
        return out.pending, out.state


class Forecast(nn.Module):
    """A fixed-horizon forecast: ``forward(state, pending) -> (B, horizon, C_out, H, W)``."""

    def __init__(self, model: RecurrentPredictor, horizon: int) -> None:
        super().__init__()
        self.model = _check_model(model)
        self.eval()
        self.horizon = check_positive_int("horizon", horizon)

    def forward(self, state: Any, pending: Tensor) -> Tensor:
        return self.model.forecast(StreamState(state, pending), self.horizon)

    def extra_repr(self) -> str:
        return f"horizon={self.horizon}"


class Rollout(nn.Module):
    """Context, then a fixed horizon: ``forward(context_frames) -> (B, horizon, C_out, H, W)``."""

    def __init__(self, model: RecurrentPredictor, horizon: int) -> None:
        super().__init__()
        self.model = _check_model(model)
        self.eval()
        self.horizon = check_positive_int("horizon", horizon)

    def forward(self, context_frames: Tensor) -> Tensor:
        return self.model.generate(context_frames, self.horizon).predictions

    def extra_repr(self) -> str:
        return f"horizon={self.horizon}"


def _unaliased(state: Any) -> Any:
    """``state`` with every tensor cloned: a zero state may hold one tensor twice (``h`` and
    ``c``), and an exported program would then read both from one input."""
    return tree_map(lambda t: t.clone() if isinstance(t, Tensor) else t, state)


def _check_frame(name: str, frame: object, ndim: int) -> Tensor:
    if not isinstance(frame, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor; got {type(frame).__name__}")
    if frame.dim() != ndim:
        want = "(B, C, H, W)" if ndim == 4 else "(B, T, C, H, W)"
        raise ValueError(f"{name} must be {want}; got shape {tuple(frame.shape)}")
    return frame


def export_observe_step(
    model: RecurrentPredictor, frame: Tensor, state: Any = None, *, strict: bool = False
) -> torch.export.ExportedProgram:
    """``torch.export`` one observed frame (:class:`ObserveStep`) at ``frame``'s shape.

    Args:
        model: a predictor in eval mode.
        frame: an example frame ``(B, C, H, W)`` (its shape, dtype and device are fixed).
        state: an example state (default ``model.initial_state(frame)``).
        strict: ``torch.export``'s strict mode.
    """
    frame = _check_frame("frame", frame, 4)
    module = ObserveStep(model)
    if state is None:
        state = model.initial_state(frame)
    _check_state_is_static(model, frame, state)
    return torch.export.export(module, (frame, _unaliased(state)), strict=strict)


def _check_state_is_static(model: RecurrentPredictor, frame: Tensor, state: Any) -> None:
    """Run one step eagerly: the state it hands over must have the structure, shapes and
    dtypes of ``state``, or the exported step could not be fed its own output."""
    if isinstance(state, StreamState):
        state = state.state
    with torch.no_grad():
        out = model._step_impl(model._frame_to_step(frame), state, None)
    leaves, spec = tree_flatten_with_path(state)
    new_leaves, new_spec = tree_flatten_with_path(out.state)
    if spec != new_spec:
        raise ValueError(
            f"{type(model).__name__}'s state after one step has another structure than the "
            "state it came from: an exported step could not be fed its own state"
        )
    for (path, old), (_, new) in zip(leaves, new_leaves, strict=True):
        if isinstance(old, Tensor) and (old.shape, old.dtype) != (new.shape, new.dtype):
            raise ValueError(
                f"state{keystr(path)} changes from {tuple(old.shape)} {old.dtype} to "
                f"{tuple(new.shape)} {new.dtype} after one step: {type(model).__name__}'s "
                "state changes from step to step, so an exported step could not be fed its "
                "own state (a state that grows with time needs a bound, e.g. E3DLSTM's "
                "memory_length)"
            )


def export_forecast(
    model: RecurrentPredictor, state: StreamState, horizon: int, *, strict: bool = False
) -> torch.export.ExportedProgram:
    """``torch.export`` a ``horizon``-frame forecast (:class:`Forecast`) from ``state``'s shapes."""
    if not isinstance(state, StreamState):
        raise TypeError(f"state must be a StreamState; got {type(state).__name__}")
    module = Forecast(model, horizon)
    args = (_unaliased(state.state), state.pending.clone())
    return torch.export.export(module, args, strict=strict)


def export_rollout(
    model: RecurrentPredictor, context_frames: Tensor, horizon: int, *, strict: bool = False
) -> torch.export.ExportedProgram:
    """``torch.export`` context + ``horizon`` frames (:class:`Rollout`), the loop unrolled."""
    context_frames = _check_frame("context_frames", context_frames, 5)
    module = Rollout(model, horizon)
    return torch.export.export(module, (context_frames,), strict=strict)


def state_names(state: Any, prefix: str = "state") -> list[str]:
    """Names of a state's tensors in pytree (and ONNX input) order, e.g. ``state.0.h``."""
    names: list[str] = []

    def walk(node: Any, path: str) -> None:
        if isinstance(node, Tensor):
            names.append(path)
        elif isinstance(node, tuple) and hasattr(node, "_fields"):
            for field in node._fields:
                walk(getattr(node, field), f"{path}.{field}")
        elif isinstance(node, (list, tuple)):
            for i, item in enumerate(node):
                walk(item, f"{path}.{i}")
        elif isinstance(node, dict):
            for key in node:
                walk(node[key], f"{path}.{key}")

    walk(state, prefix)
    return names


def onnx_available() -> bool:
    """Whether the ``[export]`` extra (onnx, onnxscript) is installed."""
    try:
        import onnx  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError:
        return False
    return True


def to_onnx(
    module: nn.Module, args: tuple[Any, ...], path: str | Path | None = None
) -> torch.onnx.ONNXProgram:
    """ONNX of an :class:`ObserveStep`, :class:`Forecast` or :class:`Rollout` (dynamo exporter).

    Needs ``pip install torch-stpl[export]`` (onnx, onnxscript; onnxruntime to run it).

    Args:
        module: one of this module's wrappers (or any exportable module).
        args: example inputs, as for ``module(*args)``; nested states are flattened into
            one ONNX input per tensor (:func:`state_names` gives their order).
        path: where to save the ``.onnx`` file (optional).

    Returns:
        The ``torch.onnx.ONNXProgram``.
    """
    if not onnx_available():
        raise ImportError(
            "ONNX export needs the [export] extra: pip install 'torch-stpl[export]' "
            "(onnx, onnxscript, onnxruntime)"
        )
    program = torch.onnx.export(module, args, dynamo=True, verbose=False)
    if program is None:  # pragma: no cover - dynamo=True always returns a program
        raise RuntimeError("torch.onnx.export returned no program")
    if path is not None:
        program.save(str(path))
    return program


def flatten_inputs(*args: Any) -> list[Tensor]:
    """The tensors of ``args`` in ONNX input order (pytree order)."""
    leaves, _ = tree_flatten(args)
    return [leaf for leaf in leaves if isinstance(leaf, Tensor)]


def zeros_like_state(state: Any) -> Any:
    """A copy of ``state`` with every tensor replaced by zeros of its shape, dtype and device."""
    return tree_map(lambda t: torch.zeros_like(t) if isinstance(t, Tensor) else t, state)
