"""What every stpl video predictor shares: the step loop, masks, streaming and compile.

A predictor is a recurrent *step* ``(x_t, state) -> (x̂_{t+1}, state')`` wrapped in the
loops users need. :class:`RecurrentPredictor` writes those loops once, so every model
(:class:`~stpl.EncoderStackDecoder` and the model families built on this class) has the
same contract:

* ``forward(frames, context, mask, state)``: training and evaluation over a clip, with
  PredRNN's teacher-forcing / scheduled-sampling rule (``docs/predictor.md``);
* ``observe(frames, state)`` / ``forecast(state, horizon)``: online use, one chunk of new
  frames at a time, never re-reading a frame (``docs/deploying.md``);
* ``generate(context_frames, horizon, state=...)``: forecast any horizon, with the state
  to go on from;
* ``compile_step()``: ``torch.compile`` of one step, the loop staying in Python.

A subclass implements :meth:`RecurrentPredictor._step_impl` and, if its step works on
another representation than frames (patches, tokens), :meth:`~RecurrentPredictor._to_steps`
/ :meth:`~RecurrentPredictor._from_steps`; everything else is inherited.
"""

from __future__ import annotations

import contextlib
import inspect
import types
import warnings
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn
from torch.utils._pytree import tree_leaves, tree_map
from torch.utils.checkpoint import checkpoint

from stpl._validation import check_int, check_positive_int
from stpl.cells._toolkit import autocast_enabled
from stpl.models._compile import PerDeviceCompiled

__all__ = ["Generation", "PredictorOutput", "RecurrentPredictor", "StepOutput", "StreamState"]


_COMPILE_PARAMS = frozenset(inspect.signature(torch.compile).parameters)
_RECOMPILE_LIMIT = 16
"""Graphs one model's compiled step may hold: per grad mode, the first step (no state yet),
teacher-forced steps and fed-back steps differ in what needs a gradient; batch 1 is its own
graph; autocast and eval mode add theirs."""


_CAST_ONCE = (
    nn.Conv1d,
    nn.Conv2d,
    nn.Conv3d,
    nn.ConvTranspose1d,
    nn.ConvTranspose2d,
    nn.ConvTranspose3d,
    nn.Linear,
)
"""Layers whose weight and bias autocast runs in the low precision: their casts are done
once per call of ``forward`` / ``generate`` / ... for a compiled step (see
:meth:`RecurrentPredictor._weights_cast_once`). Norm and elementwise parameters stay float32,
as autocast keeps them."""


class _StepAdapter(nn.Module):
    """``forward = model._step_impl``, so ``functional_call`` can swap the model's weights."""

    def __init__(self, model: RecurrentPredictor) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor, state: Any, action: Tensor | None) -> StepOutput:
        return self.model._step_impl(x, state, action)


def _compiled_step_body(
    adapter: _StepAdapter,
    params: dict[str, Tensor],
    x: Tensor,
    state: Any,
    action: Tensor | None,
) -> StepOutput:
    """What :meth:`RecurrentPredictor.compile_step` compiles: the model's ``_step_impl``,
    with the weights in ``params`` (low-precision copies under autocast) swapped in.

    Inside a compiled graph the check below is traced away; when dynamo falls back to
    running this function eagerly, it warns.
    """
    if not torch.compiler.is_compiling():
        adapter.model._warn_eager_step()
    if not params:
        plain: StepOutput = adapter(x, state, action)
        return plain
    out: StepOutput = torch.func.functional_call(
        adapter, params, (x, state, action), strict=False
    )
    return out


def _fresh_copy(fn: Callable[..., Any]) -> types.FunctionType:
    """A copy of ``fn`` with its own code object: dynamo keeps one compile cache per code
    object, so every compiled model gets its own (older torch has no ``isolate_recompiles``)."""
    assert isinstance(fn, types.FunctionType)
    code = fn.__code__.replace()
    copy = types.FunctionType(code, fn.__globals__, fn.__name__, fn.__defaults__, fn.__closure__)
    copy.__qualname__ = fn.__qualname__
    copy.__doc__ = fn.__doc__
    return copy


class PredictorOutput(NamedTuple):
    """What ``forward`` returns.

    Attributes:
        predictions: ``(B, T-1, C_out, H, W)``; step t predicts frame t+1.
        state: the model's recurrent state after the last step (for
            :class:`~stpl.EncoderStackDecoder`, one state per layer); pass it back as
            ``state=`` to go on with the frame after the last one this call read.
        decouple_loss: PredRNN-V2's decoupling term (scalar), or ``None`` without an adapter.
    """

    predictions: Tensor
    state: Any
    decouple_loss: Tensor | None


class StreamState(NamedTuple):
    """Where a streaming predictor stands: what it has read and what it expects next.

    The invariant: the model has read every input up to (not including) time τ, and
    ``pending`` is its prediction of frame τ. :meth:`RecurrentPredictor.observe` returns it
    after reading new frames (τ = the frame after the last one observed);
    :meth:`RecurrentPredictor.forecast` starts its forecast with ``pending`` and never
    changes the state.

    Attributes:
        state: the model's recurrent state (per-layer states, windows, counters).
        pending: ``(B, C_out, H, W)``, the prediction of frame τ.
    """

    state: Any
    pending: Tensor


class Generation(NamedTuple):
    """What :meth:`RecurrentPredictor.generate` returns.

    Attributes:
        predictions: ``(B, horizon, C_out, H, W)``, the frames after the context.
        state: a :class:`StreamState` positioned at the last predicted frame: the model has
            read the context and the first ``horizon - 1`` predictions, and ``pending`` is
            the last prediction. Equal to ``observe(cat[context, predictions[:, :-1]])``.
            Pass it as ``state=`` with the true frames from that time on, or to
            :meth:`RecurrentPredictor.forecast` (whose first frame is then ``pending``).
    """

    predictions: Tensor
    state: StreamState


class StepOutput(NamedTuple):
    """One step of a predictor: its prediction (step space), new state and auxiliary term."""

    prediction: Tensor
    state: Any
    aux: Tensor | None


class RecurrentPredictor(nn.Module):
    """Base class of stpl video predictors: the loops around one recurrent step.

    Subclasses set ``in_channels``, ``out_channels`` and ``checkpoint_steps`` and implement
    :meth:`_step_impl`; see the module docstring.
    """

    in_channels: int
    out_channels: int
    checkpoint_steps: bool = False
    _compiled_step: PerDeviceCompiled | None = None

    # ---------------------------------------------------------------- subclass hooks
    def _step_impl(self, x: Tensor, state: Any, action: Tensor | None) -> StepOutput:
        """One step on a step-space input ``x`` (``state=None`` at the start)."""
        raise NotImplementedError

    def _to_steps(self, frames: Tensor) -> Tensor:
        """Frames ``(B, T, C, H, W)`` (or maps broadcastable to them) -> step inputs."""
        return frames

    def _from_steps(self, steps: Tensor) -> Tensor:
        """Stacked step outputs ``(B, T, ...)`` -> frames ``(B, T, C_out, H, W)``."""
        return steps

    def _check_spatial(self, height: int, width: int) -> None:
        """Raise ``ValueError`` if the model cannot run on ``H x W`` frames."""

    def _check_state(self, state: Any, frames: Tensor) -> Any:
        """Validate a carried state against the frames it will read; return it."""
        return state

    def _prepare_actions(self, actions: Tensor | None, frames: Tensor, steps: int) -> Tensor | None:
        """Actions -> per-step action inputs ``(B, T, ...)``; models without actions reject them."""
        if actions is not None:
            raise ValueError(f"actions were given, but {type(self).__name__} takes no actions")
        return None

    def _reduce_aux(self, total: Tensor, steps: int) -> Tensor:
        """The auxiliary term of ``forward`` from the sum of the steps' terms."""
        return total / steps

    def initial_state(self, frames: Tensor) -> Any:
        """The state before any frame (what ``state=None`` means), built like ``frames``.

        Args:
            frames: ``(B, C, H, W)`` or ``(B, T, C, H, W)``; only their batch size, frame
                size, dtype and device are used.

        The default runs one step from ``None`` on a zero frame and zeros every tensor of
        the resulting state; a model whose initial state is not all zeros overrides it.
        """
        frame = self._example_frame(frames)
        with torch.no_grad():
            out = self._step_impl(self._frame_to_step(torch.zeros_like(frame)), None, None)
        return tree_map(lambda t: torch.zeros_like(t) if isinstance(t, Tensor) else t, out.state)

    def _example_frame(self, frames: object) -> Tensor:
        if not isinstance(frames, Tensor) or frames.dim() not in (4, 5):
            got = tuple(frames.shape) if isinstance(frames, Tensor) else type(frames).__name__
            raise ValueError(f"frames must be (B, C, H, W) or (B, T, C, H, W); got {got}")
        frame = frames if frames.dim() == 4 else frames[:, 0]
        self._check_frames("frames", frame.unsqueeze(1), self.in_channels)
        return frame

    # ---------------------------------------------------------------- checks
    def _check_frames(self, name: str, frames: object, channels: int, min_t: int = 1) -> Tensor:
        if not isinstance(frames, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor; got {type(frames).__name__}")
        if frames.dim() != 5:
            raise ValueError(f"{name} must be (B, T, C, H, W); got shape {tuple(frames.shape)}")
        if frames.shape[2] != channels:
            raise ValueError(
                f"{name} must have C={channels} channels, (B, T, {channels}, H, W); "
                f"got shape {tuple(frames.shape)}"
            )
        if not frames.is_floating_point():
            raise ValueError(f"{name} must be a floating tensor; got dtype {frames.dtype}")
        if frames.shape[0] < 1:
            raise ValueError(f"{name} must hold at least one sequence; got B=0")
        if frames.shape[1] < min_t:
            raise ValueError(
                f"{name} must hold T >= {min_t} frame{'s' if min_t > 1 else ''}; "
                f"got T={frames.shape[1]}"
            )
        self._check_dtype(name, frames)
        self._check_spatial(frames.shape[3], frames.shape[4])
        return frames

    def _check_dtype(self, name: str, frames: Tensor) -> None:
        param: Tensor | None = None
        for param in self.parameters():  # noqa: B007  (the first one; older dynamo has no next(it, d))
            break
        if param is None or param.dtype == frames.dtype or not param.is_floating_point():
            return
        if autocast_enabled(frames.device.type):
            return
        raise ValueError(
            f"{name} has dtype {frames.dtype}, but the model's parameters are {param.dtype}: "
            f"convert the frames (frames.to({param.dtype})) or the model "
            f"(model.to({frames.dtype})), or run under torch.autocast"
        )

    def _unwrap_state(self, state: Any, frames: Tensor) -> Any:
        if isinstance(state, StreamState):
            state = state.state
        return None if state is None else self._check_state(state, frames)

    def _check_context(self, context: object, t_total: int) -> int:
        context = check_int("context", t_total if context is None else context, minimum=1)
        if context > t_total:
            raise ValueError(
                f"context must be <= T={t_total}, the number of frames given; got "
                f"context={context} (context counts the leading frames that are read as they "
                "are; context=T means teacher forcing throughout)"
            )
        return context

    def _check_feedback(self, what: str) -> None:
        if self.out_channels != self.in_channels:
            raise ValueError(
                f"out_channels={self.out_channels} != in_channels={self.in_channels}: the "
                f"model cannot feed its predictions back, so {what}"
            )

    def _prepare_mask(self, mask: Tensor | None, frames: Tensor) -> Tensor | None:
        """Mask ``(B, T-2)`` or broadcastable to ``(B, T-2, C, H, W)`` -> step space."""
        if mask is None:
            return None
        b, t, c, h, w = frames.shape
        if not isinstance(mask, Tensor):
            raise TypeError(f"mask must be a torch.Tensor or None; got {type(mask).__name__}")
        expected = (
            f"mask must be (B, T-2) = ({b}, {t - 2}) or broadcastable to (B, T-2, C, H, W) = "
            f"({b}, {t - 2}, {c}, {h}, {w}); got shape {tuple(mask.shape)}"
        )
        if mask.dim() == 2:
            mask = mask[:, :, None, None, None]
        elif 3 <= mask.dim() <= 4:  # broadcasting rules: leading dims of size 1
            mask = mask.reshape((1,) * (5 - mask.dim()) + tuple(mask.shape))
        if mask.dim() != 5 or any(
            m not in (1, n) for m, n in zip(mask.shape, (b, t - 2, c, h, w), strict=True)
        ):
            raise ValueError(expected)
        mask = mask.to(frames.dtype)
        if mask.shape[-3:] != (1, 1, 1):
            mask = self._to_steps(mask.expand(b, t - 2, c, h, w))
        return mask

    # ---------------------------------------------------------------- one step
    def compile_step(
        self, enable: bool = True, *, dynamic_batch: bool = True, **compile_kwargs: Any
    ) -> RecurrentPredictor:
        """Compile one recurrent step with ``torch.compile``; the loop over time stays eager.

        ``torch.compile(model)`` unrolls the loop over T frames into one graph, which can take
        many minutes to compile. This compiles the step instead: one small graph, reused at
        every step of ``forward``, ``observe``, ``forecast``, ``generate`` and activation
        checkpointing. Returns ``self``; the parameters and ``state_dict`` are unchanged.

        The common life of a model stays compiled: training, evaluation with a ragged last
        batch, ``generate`` at other batch sizes, eval mode and ``torch.no_grad()`` (one
        graph per kind of step and grad mode, with the batch dimension dynamic). Each model
        has its own compile cache of up to 16 graphs (``recompile_limit=`` to change; torch
        versions without per-call limits use ``torch._dynamo.config.recompile_limit``). If
        dynamo still gives up and runs a step eagerly, a ``RuntimeWarning`` says so once.

        Args:
            enable: ``False`` drops a compiled step and goes back to eager.
            dynamic_batch: mark the batch dimension of the step's inputs dynamic, so a new
                batch size does not recompile (batch 1 gets its own specialised graph).
            **compile_kwargs: passed to ``torch.compile`` (e.g. ``mode``, ``backend``,
                ``fullgraph``, ``options``). The step is compiled at its first call on a
                device type; on the CPU, inductor's layout optimization is off unless
                ``options={"layout_optimization": True}`` (see ``stpl.models._compile``).

        Example:
            >>> model = get_model("predrnn").compile_step()
        """
        self._compiled_step = None
        self._dynamic_batch = bool(dynamic_batch)
        self._warned_eager = False
        if enable:
            kwargs = dict(compile_kwargs)
            if "isolate_recompiles" in _COMPILE_PARAMS:
                kwargs.setdefault("isolate_recompiles", True)
            if "recompile_limit" in _COMPILE_PARAMS:
                kwargs.setdefault("recompile_limit", _RECOMPILE_LIMIT)
            self._compiled_step = PerDeviceCompiled(
                lambda: _fresh_copy(_compiled_step_body), kwargs
            )
        return self

    def _warn_eager_step(self) -> None:
        if not getattr(self, "_warned_eager", False):
            self._warned_eager = True
            warnings.warn(
                f"{type(self).__name__}.compile_step: dynamo gave up on the compiled step "
                "(recompile limit or an unsupported input) and runs it eagerly from now on; "
                'run with TORCH_LOGS="recompiles" to see why',
                RuntimeWarning,
                stacklevel=4,
            )

    def _step(self, x: Tensor, state: Any, action: Tensor | None) -> StepOutput:
        """One time step (compiled after :meth:`compile_step`); see :meth:`_step_impl`."""
        compiled = self._compiled_step
        if compiled is not None:
            # a slice of a (B, T, ...) video has a batch stride that depends on T: copy it,
            # so that clips of another length do not recompile
            x = x.contiguous()
            if getattr(self, "_dynamic_batch", True):
                for t in (x, action, *tree_leaves(state)):
                    if isinstance(t, Tensor) and t.dim() > 0 and t.shape[0] > 1:
                        torch._dynamo.maybe_mark_dynamic(t, 0)
            params = self.__dict__.get("_cast_params") or {}
            out: StepOutput = compiled(self._adapter(), params, x, state, action)
            return out
        return self._step_impl(x, state, action)

    def _adapter(self) -> _StepAdapter:
        # kept out of the module tree (no cycle in state_dict / named_modules)
        adapter = self.__dict__.get("_step_adapter")
        if adapter is None or adapter.model is not self:
            adapter = _StepAdapter(self)
            self.__dict__["_step_adapter"] = adapter
        return adapter

    @contextlib.contextmanager
    def _weights_cast_once(self, like: Tensor) -> Iterator[None]:
        """Under autocast, cast the convolution / linear weights once for this call.

        A compiled step would otherwise cast every weight again at every recurrent step
        (eager autocast caches its casts for the whole region; a compiled graph does not).
        The copies are made with ``Tensor.to``, so gradients still reach the float32 master
        weights. Only active with :meth:`compile_step` under ``torch.autocast``.
        """
        device_type = like.device.type
        if self._compiled_step is None or not autocast_enabled(device_type):
            yield
            return
        dtype = torch.get_autocast_dtype(device_type)
        params: dict[str, Tensor] = {}
        for name, module in self.named_modules():
            if isinstance(module, _CAST_ONCE):
                for pname, p in module.named_parameters(recurse=False):
                    if p.is_floating_point() and p.dtype != dtype:
                        prefix = f"model.{name}." if name else "model."
                        params[prefix + pname] = p.to(dtype)
        self.__dict__["_cast_params"] = params
        try:
            yield
        finally:
            self.__dict__["_cast_params"] = None

    def _run_step(self, x: Tensor, state: Any, action: Tensor | None) -> StepOutput:
        if self.checkpoint_steps and torch.is_grad_enabled():
            out: StepOutput = checkpoint(self._step, x, state, action, use_reentrant=False)
            return out
        return self._step(x, state, action)

    def _frame_to_step(self, frame: Tensor) -> Tensor:
        return self._to_steps(frame.unsqueeze(1))[:, 0]

    def _step_to_frame(self, step: Tensor) -> Tensor:
        return self._from_steps(step.unsqueeze(1))[:, 0]

    # ---------------------------------------------------------------- training / evaluation
    def forward(
        self,
        frames: Tensor,
        context: int | None = None,
        mask: Tensor | None = None,
        state: Any = None,
        actions: Tensor | None = None,
    ) -> PredictorOutput:
        """Run T-1 steps over ``frames: (B, T, C, H, W)``; step t predicts frame t+1.

        The input of step t is ``frames[:, t]`` when ``t < context``, else
        ``mask[:, t-1] * frames[:, t] + (1 - mask[:, t-1]) * prediction_t`` (the previous
        prediction alone when ``mask`` is None). The last frame is a target only: it is
        never read, so to continue after this call pass ``out.state`` with the frames from
        ``frames[:, -1]`` on.

        Args:
            frames: ``(B, T, C, H, W)``, T >= 2.
            context: steps ``t < context`` read the true frame; ``1 <= context <= T``
                (default T: teacher forcing).
            mask: ``(B, T-2)`` or broadcastable to ``(B, T-2, C, H, W)``; entry t-1 mixes
                the true frame into step t >= context (1 = true frame). ``None``: feed the
                previous prediction.
            state: the state of an earlier call (``out.state``, or a :class:`StreamState`),
                or ``None`` (zeros).
            actions: per-frame actions for action-conditioned models.

        Returns:
            :class:`PredictorOutput` with ``predictions (B, T-1, C_out, H, W)``.
        """
        frames = self._check_frames("frames", frames, self.in_channels, min_t=2)
        t_total = frames.shape[1]
        steps = t_total - 1
        context = self._check_context(context, t_total)
        if context < steps:
            self._check_feedback(f"context must be >= T-1={steps}; got context={context}")
        model_state = self._unwrap_state(state, frames)
        inputs = self._to_steps(frames)
        step_mask = self._prepare_mask(mask, frames)
        step_actions = self._prepare_actions(actions, frames, steps)

        outputs: list[Tensor] = []
        aux: Tensor | None = None
        pred: Tensor | None = None
        with self._weights_cast_once(frames):
            for t in range(steps):
                x = inputs[:, t]
                if t >= context and pred is not None:
                    if step_mask is None:
                        x = pred
                    else:
                        m = step_mask[:, t - 1]
                        x = m * x + (1 - m) * pred
                action = None if step_actions is None else step_actions[:, t]
                pred, model_state, term = self._run_step(x, model_state, action)
                outputs.append(pred)
                if term is not None:
                    aux = term if aux is None else aux + term
        predictions = self._from_steps(torch.stack(outputs, dim=1))
        if aux is not None:
            aux = self._reduce_aux(aux, steps)
        return PredictorOutput(predictions, model_state, aux)

    # ---------------------------------------------------------------- streaming
    def _observe(self, frames: Tensor, state: Any, actions: Tensor | None) -> tuple[Any, Tensor]:
        inputs = self._to_steps(frames)
        step_actions = self._prepare_actions(actions, frames, frames.shape[1])
        pred: Tensor | None = None
        for t in range(frames.shape[1]):
            action = None if step_actions is None else step_actions[:, t]
            pred, state, _ = self._step(inputs[:, t], state, action)
        assert pred is not None  # T >= 1 was checked
        return state, pred

    def _rollout(
        self, state: Any, pred: Tensor, horizon: int, actions: Tensor | None
    ) -> tuple[Tensor, Any]:
        """``horizon`` predictions starting with ``pred`` (step space); the last state."""
        outputs = [pred]
        for k in range(horizon - 1):
            action = None if actions is None else actions[:, k]
            pred, state, _ = self._step(pred, state, action)
            outputs.append(pred)
        return self._from_steps(torch.stack(outputs, dim=1)), state

    def _future_actions(self, actions: Tensor | None, frame: Tensor, steps: int) -> Tensor | None:
        """Actions of the ``steps`` fed-back predictions, in step space."""
        if steps == 0:
            return None
        like = frame.unsqueeze(1).expand(-1, steps, -1, -1, -1)
        return self._prepare_actions(actions, like, steps)

    @torch.no_grad()
    def observe(
        self, frames: Tensor, state: StreamState | None = None, *, actions: Tensor | None = None
    ) -> StreamState:
        """Read ``frames: (B, T, C, H, W)`` (T >= 1 new frames) and return where the model stands.

        Each frame is read once: feeding a stream chunk by chunk (any chunk sizes, one frame
        at a time included) gives the same state as one call on all frames, and
        ``forecast(observe(frames), h)`` equals ``generate(frames, h).predictions``.

        Args:
            frames: the new frames, in order.
            state: the :class:`StreamState` of the previous call (its ``pending`` prediction
                is dropped: the true frame has arrived), or ``None`` to start.
            actions: ``(B, T, ...)``, one action per new frame (action-conditioned models).

        Returns:
            A :class:`StreamState` whose ``pending`` predicts the frame after ``frames``.
        """
        frames = self._check_frames("frames", frames, self.in_channels, min_t=1)
        model_state = self._unwrap_state(state, frames)
        with self._weights_cast_once(frames):
            model_state, pred = self._observe(frames, model_state, actions)
        return StreamState(model_state, self._step_to_frame(pred))

    @torch.no_grad()
    def forecast(
        self, state: StreamState, horizon: int, *, actions: Tensor | None = None
    ) -> Tensor:
        """Predict ``horizon`` frames from a :class:`StreamState`, leaving it unchanged.

        Args:
            state: from :meth:`observe` or :meth:`generate`.
            horizon: frames to predict, >= 1; the first is ``state.pending``.
            actions: ``(B, horizon - 1, ...)``, the actions of the fed-back predictions.

        Returns:
            ``(B, horizon, C_out, H, W)``.
        """
        if not isinstance(state, StreamState):
            raise TypeError(
                "state must be a StreamState from model.observe(...) or model.generate(...)"
                f".state; got {type(state).__name__}"
            )
        horizon = check_positive_int("horizon", horizon)
        if horizon > 1:
            self._check_feedback("only horizon=1 is possible")
        pending = state.pending
        frame = pending.unsqueeze(1)
        self._check_frames("state.pending", frame, self.out_channels, min_t=1)
        try:
            model_state = self._check_state(state.state, frame)
        except ValueError as error:
            raise ValueError(
                f"state.state does not fit state.pending of shape {tuple(pending.shape)}: {error}"
            ) from None
        step_actions = self._future_actions(actions, pending, horizon - 1)
        with self._weights_cast_once(pending):
            preds, _ = self._rollout(
                model_state, self._frame_to_step(pending), horizon, step_actions
            )
        return preds

    @torch.no_grad()
    def generate(
        self,
        context_frames: Tensor,
        horizon: int,
        *,
        state: Any = None,
        actions: Tensor | None = None,
    ) -> Generation:
        """Read ``context_frames: (B, T_c, C, H, W)``, then predict ``horizon`` frames.

        Any horizon works, longer than training included: after the context, every step
        reads the previous prediction. Runs under ``torch.no_grad()``.

        Args:
            context_frames: T_c >= 1 frames to read.
            horizon: frames to predict, >= 1.
            state: where to start: ``None`` (zeros), a :class:`StreamState`, or the
                ``state`` of a ``forward`` output; the context frames follow what it read.
            actions: ``(B, T_c + horizon - 1, ...)`` for action-conditioned models.

        Returns:
            :class:`Generation`: ``predictions (B, horizon, C_out, H, W)`` and the
            :class:`StreamState` positioned at the last predicted frame.
        """
        frames = self._check_frames("context_frames", context_frames, self.in_channels, min_t=1)
        horizon = check_positive_int("horizon", horizon)
        if horizon > 1:
            self._check_feedback("only horizon=1 is possible")
        t_c = frames.shape[1]
        model_state = self._unwrap_state(state, frames)
        step_actions = self._prepare_actions(actions, frames, t_c + horizon - 1)
        ctx_actions = None if step_actions is None else step_actions[:, :t_c]
        inputs = self._to_steps(frames)
        pred: Tensor | None = None
        future = None if step_actions is None else step_actions[:, t_c:]
        with self._weights_cast_once(frames):
            for t in range(t_c):
                action = None if ctx_actions is None else ctx_actions[:, t]
                pred, model_state, _ = self._step(inputs[:, t], model_state, action)
            assert pred is not None
            predictions, model_state = self._rollout(model_state, pred, horizon, future)
        return Generation(predictions, StreamState(model_state, predictions[:, -1]))
