"""Hierarchical multi-scale video prediction (MSPred, Villar-Corrales et al., BMVC 2022).

:class:`HierarchicalPredictor` predicts at several spatio-temporal scales with one recurrent
predictor per *level*: level h reads the encoder's features at 1/2^(h+2) of the frame size,
updates every ``periods[h]`` steps, and its output is fed to a U-Net-like frame decoder
that fuses all levels; levels h >= 1 also have a *head* that decodes an abstract target
(e.g. heatmaps of object positions) ``periods[h]`` frames ahead. Optional Gaussian latents
(a recurrent prior and posterior per level, sampled top-down) make the model stochastic.
``docs/mspred.md`` draws the hierarchy and lists every difference from the reference code.

The registered preset ``"mspred"`` is the public code's Moving MNIST configuration
(``src/configs/mmnist.json`` of AIS-Bonn/MSPred); :func:`stpl.interop.load_reference` with
source ``"mspred"`` loads the reference's checkpoints into an equal model.
"""

from __future__ import annotations

import types
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from typing import Any, Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from stpl._validation import (
    check_bool,
    check_choice,
    check_int,
    check_kernel_size,
    check_options,
    check_positive_int,
)
from stpl.cells._registry import CELLS, cell_options
from stpl.cells._toolkit import Device, check_state, factory_kwargs, reset_module_parameters
from stpl.models._base import Generation, RecurrentPredictor, StepOutput, StreamState
from stpl.models._compile import PerDeviceCompiled
from stpl.models._hierarchy_blocks import (
    CellBuilder,
    DCGANEncoder,
    DeconvHead,
    FrameBatchNorm2d,
    FusedWeights,
    GaussianLatent,
    LevelPredictor,
    UNetDecoder,
    fused_weights,
)
from stpl.registry import register_preset

__all__ = [
    "HeadSchedule",
    "HierarchicalOutput",
    "HierarchicalPredictor",
    "HierarchicalState",
    "HierarchicalStream",
    "LatentStats",
    "LevelState",
    "build_mspred",
]

HeadSchedule = Literal["reference", "aligned"]
"""When the heads of levels h >= 1 run (see :class:`HierarchicalPredictor`)."""

Feedback = Literal["features", "frames"]
"""What a step reads after the context: its levels' own outputs, or the predicted frame."""

_NDRPLZ = {"bias": True, "gate_order": "ifog"}
"""ConvLSTM options that reproduce MSPred's cell (ndrplz/ConvLSTM_pytorch)."""


class LevelState(NamedTuple):
    """The recurrent state of one level.

    Attributes:
        cells: the predictor's per-layer cell states.
        output: ``(B, C_h, h, w)``, the level's last output (what the decoder reads and,
            after the context, what the level reads next).
        latent: ``(B, z, h, w)``, the last latent sample (``None`` if deterministic).
        posterior: the posterior's per-layer cell states (``None`` if deterministic).
        prior: the prior's per-layer cell states (``None`` if deterministic).
        prior_sample: ``(z, mu, logvar)`` last computed by the prior (a stale prior returns
            it between its updates); ``None`` if deterministic.
    """

    cells: tuple[Any, ...]
    output: Tensor
    latent: Tensor | None
    posterior: tuple[Any, ...] | None
    prior: tuple[Any, ...] | None
    prior_sample: tuple[Tensor, Tensor, Tensor] | None


class HierarchicalState(NamedTuple):
    """The state of a :class:`HierarchicalPredictor` between two steps.

    Attributes:
        step: the index of the next step since the start of the sequence, a 0-d int64 tensor
            on the state's device. Eager loops know it (a new sequence starts at 0) or read it
            once per call when they go on from a given state, and decide in Python which
            levels update (``step % periods[h] == 0``); a traced step (:meth:`_step_impl`,
            ``torch.export``) selects the updated levels with tensors instead.
        levels: one :class:`LevelState` per level.
        residuals: the encoder maps ``(e_1, ..., e_{L+1})`` of the last frame read, which
            the decoder adds to the levels' outputs (frozen while the model feeds back its
            own features).
    """

    step: Tensor
    levels: tuple[LevelState, ...]
    residuals: tuple[Tensor, ...]


class HierarchicalStream(NamedTuple):
    """What :class:`~stpl.StreamState` holds for a :class:`HierarchicalPredictor`.

    A stochastic level's posterior at step t reads frame t+1, which a stream has not seen
    when it stops at frame t. So the step of the last frame read is *held*: ``after`` is
    the state after it, computed with the prior (``pending`` comes from it, and
    ``forecast`` goes on from it); when the next frame arrives, the step is computed again
    from ``before`` with the posterior, exactly as one pass over all frames computes it.

    Attributes:
        before: the state before the held step (``None`` for a deterministic model, whose
            held step does not depend on the next frame).
        held: the encoder maps the held step read (``None`` when it read the model's own
            outputs, or for a deterministic model).
        after: the state after the held step.
    """

    before: HierarchicalState | None
    held: tuple[Tensor, ...] | None
    after: HierarchicalState


class LatentStats(NamedTuple):
    """The statistics of one level's latents at the steps its posterior ran.

    Attributes:
        steps: the steps (indices into the call's ``T-1`` steps), in order.
        mu_posterior, logvar_posterior, mu_prior, logvar_prior: ``(B, len(steps), z, h, w)``;
            a stale prior repeats its last computed values (``stale_priors=True``).
    """

    steps: tuple[int, ...]
    mu_posterior: Tensor
    logvar_posterior: Tensor
    mu_prior: Tensor
    logvar_prior: Tensor


class HierarchicalOutput(NamedTuple):
    """What :meth:`HierarchicalPredictor.forward` returns.

    Attributes:
        predictions: one entry per level, step-indexed over the call's ``T-1`` steps. Level 0:
            the frames ``(B, T-1, C, H, W)``, step t predicts frame t+1. Level h >= 1:
            ``(B, T-1, C_h, H, W)``, entry t is the head's output at step t, which predicts
            frame ``t + periods[h]``; it is filled at the steps in ``steps[h]`` and zero
            elsewhere. ``None`` for a level without a head.
        state: the :class:`HierarchicalState` after the last step; pass it back as
            ``state=`` with the frames from ``frames[:, -1]`` on.
        decouple_loss: always ``None`` (kept so code written for
            :class:`~stpl.PredictorOutput` runs unchanged).
        steps: per level, the steps at which ``predictions[h]`` holds an output.
        horizons: per level, how many frames ahead an output looks: 1 for level 0,
            ``periods[h]`` for level h.
        latents: per level, the :class:`LatentStats` of its posterior steps (``None`` for a
            deterministic model).
    """

    predictions: tuple[Tensor | None, ...]
    state: HierarchicalState
    decouple_loss: Tensor | None
    steps: tuple[tuple[int, ...], ...]
    horizons: tuple[int, ...]
    latents: tuple[LatentStats, ...] | None

    @property
    def frames(self) -> Tensor:
        """The level-0 predictions ``(B, T-1, C, H, W)``."""
        frames = self.predictions[0]
        assert frames is not None
        return frames


def _per_level(
    name: str, value: object, levels: int, check: Callable[[str, Any], Any]
) -> list[Any]:
    """One value per level from a scalar or a sequence of ``levels`` values."""
    if isinstance(value, Sequence) and not isinstance(value, str):
        items = list(value)
        if len(items) != levels:
            raise ValueError(
                f"{name} must be one value or one per level ({levels} levels, from periods); "
                f"got {len(items)} values {items!r}"
            )
        return [check(f"{name}[{i}]", v) for i, v in enumerate(items)]
    return [check(name, value)] * levels


def _check_cell_name(name: str, value: object) -> str:
    if not isinstance(value, str) or value not in CELLS:
        raise ValueError(
            f"{name} must be a registered cell name, one of {sorted(CELLS)}; got {value!r}"
        )
    return value


def _own_code(module: nn.Module, key: str) -> Callable[..., Any]:
    """``module(x, states)`` as a function with a code object of its own.

    ``torch.compile`` keeps its graphs per code object, with a limit on their number
    (``torch._dynamo.config.recompile_limit``); the levels and latents share their classes'
    ``forward`` but not their shapes, so each gets its own code object, hence its own cache.
    """

    def call(x: Tensor, states: Any, fused: Any) -> Any:
        return module(x, states, fused)

    code = call.__code__.replace(co_name=f"mspred_{key.replace('.', '_')}")
    return types.FunctionType(code, call.__globals__, code.co_name, None, call.__closure__)


def _tracing() -> bool:
    """Whether ``torch.export`` or ``torch.compile`` is tracing (no reading tensor values)."""
    return bool(torch.compiler.is_exporting() or torch.compiler.is_compiling())


def _select(cond: bool | Tensor, new: Any, old: Any) -> Any:
    """``new`` if ``cond`` else ``old``, element-wise over matching pytrees of tensors when
    ``cond`` is a 0-d bool tensor (an exported step: no Python branch on data)."""
    if isinstance(cond, bool):
        return new if cond else old
    if isinstance(new, Tensor):
        return torch.where(cond, new, old)
    if new is None:
        return None
    items = [_select(cond, a, b) for a, b in zip(new, old, strict=True)]
    return type(new)(*items) if hasattr(new, "_fields") else type(new)(items)


_CPU_DECODE_PIXELS = 1 << 14
"""On the CPU, decoder calls stack at most this many (samples x 16 x level-0 pixels)."""


def _pick_rows(x: Tensor, b: int, n: int, index: Sequence[int]) -> Tensor:
    """Rows of sample-major ``(B*n, ...)`` at steps ``index``: ``(B*len(index), ...)``."""
    if list(index) == list(range(n)):
        return x
    if not index:
        return x[:0]
    picked = _pick(x.reshape(b, n, *x.shape[1:]), index)
    return picked.reshape(-1, *x.shape[1:])


def _cat_rows(parts: Sequence[Tensor], b: int) -> Tensor:
    """Concatenate sample-major ``(B*n_i, ...)`` tensors along their steps."""
    if len(parts) == 1:
        return parts[0]
    views = [p.reshape(b, -1, *p.shape[1:]) for p in parts]
    joined = torch.cat(views, dim=1)
    return joined.reshape(-1, *joined.shape[2:])


def _pick(x: Tensor, index: Sequence[int]) -> Tensor:
    """``x[:, index]`` (no copy when ``index`` is all of dim 1 in order)."""
    if list(index) == list(range(x.shape[1])):
        return x
    return x.index_select(1, torch.tensor(list(index), device=x.device))


def _place(values: Tensor, index: Sequence[int], steps: int) -> Tensor:
    """A step-indexed ``(B, steps, ...)`` tensor holding ``values[:, k]`` at ``index[k]``,
    zeros elsewhere."""
    if list(index) == list(range(steps)):
        return values
    full = values.new_zeros(values.shape[0], steps, *values.shape[2:])
    return full.index_copy(1, torch.tensor(list(index), device=values.device), values)


def _state_error(what: str, got: object) -> ValueError:
    return ValueError(
        f"state must be None, a HierarchicalState (out.state of forward), a StreamState or a "
        f"HierarchicalStream (from observe/generate); {what}: got {type(got).__name__}"
    )


class HierarchicalPredictor(RecurrentPredictor):
    r"""Multi-scale hierarchical video predictor (MSPred), with any registered cell per level.

    With L = ``len(periods)`` levels, one step t (``t`` counted from the first frame of the
    sequence, carried in the state) computes::

        e_1..e_{L+1} = Encoder(x_t)                       # x_t read while t < context
        u_h = e_{h+2}  (t < context)   or   u_h = y_h     # feature feedback afterwards
        # stochastic: for h = L-1 .. 0 with t % p_h == 0 (top-down)
        a_h  = cat[up(z_{h+1}, 2), up(z_{h+2}, 4), ...]   # ancestral: upper latents
        z_h ~ Posterior_h(cat[Encoder(x_{t+1})_{h+2}, a_h])   (training, or t < context-1)
        z_h ~ Prior_h(cat[u_h, a_h])                          (otherwise)
        # every level with t % p_h == 0 updates, the others keep y_h and their state
        y_h = tanh(Conv(Cells_h(Conv(cat[u_h, z_h]))))
        x̂_{t+1}, (d_1..d_L) = Decoder(top = y_{L-1} + e_{L+1},
                                      skips = (e_1, y_0 + e_2, ..., y_{L-2} + e_L))
        head_h = Head_h(d_{L-h})        # levels h >= 1, at their head steps; predicts t + p_h

    Encoder block i has ``num_filters * 2^(i-1)`` channels (the last ``dim``), so level h
    works on ``num_filters * 2^(h+1)`` channels (``dim`` at the top) at H/2^(h+2). The
    residual maps ``e`` are those of the last frame read: after the context they stay those
    of frame ``context - 1``. Batch norm uses batch statistics in training *and* evaluation
    (``batch_norm="batch"``, the reference's ``track_running_stats=False``): a sample's
    prediction depends on the other samples of its batch, as in the reference.

    Reference behaviour reproduced (``docs/mspred.md`` lists all sixteen surprises):

    * stale priors (``stale_priors=True``): the prior of level h runs only when its
      posterior does, on its own period counter, so it computes at ``t % p_h^2 == 0`` and
      returns its stored sample in between;
    * head counters (``head_schedule="reference"``): heads run at ``context - 1 +
      k * p_h``, independently of their level's updates (they coincide when ``context - 1``
      is a multiple of every period, as in the released configurations);
    * every posterior reads frame t+1 (not t + p_h); the KL statistics are recorded at
      every posterior step (see :attr:`HierarchicalOutput.latents`).

    Args:
        in_channels: image channels C (the frames are decoded to C channels).
        periods: one positive int per level: level h updates when ``t % periods[h] == 0``.
        hidden_channels: hidden channels of each level's cells (one int, or one per level).
        num_layers: cells per level (one int, or one per level).
        cell: a name in :data:`stpl.CELLS` for every level, or one per level.
            ``"convlstm"`` is built with ``bias=True, gate_order="ifog"`` unless
            ``cell_options`` say otherwise: MSPred's (ndrplz's) ConvLSTM.
        kernel_size: kernel of the cells and of each level's input/output convolutions
            (and of the latents' convolutions).
        num_filters: nf, channels of the first encoder block.
        dim: channels of the top encoder block (default ``num_filters * 2^L``; the
            reference requires exactly that).
        latent_channels: z, latent channels per level; ``None`` for a deterministic model.
        prior_hidden, prior_layers, posterior_hidden, posterior_layers: hidden channels and
            layers of the priors' and posteriors' cells.
        ancestral: condition each level's prior and posterior on the upper levels' latents.
        head_channels: one entry per level h >= 1: the head's output channels, or ``None``
            for no head; ``None`` for no heads at all.
        head_schedule: ``"reference"`` (heads run at ``context - 1 + k p_h``, the reference's
            counters) or ``"aligned"`` (heads run from step ``context - 1`` on at the steps
            where their level updates, ``t % p_h == 0``: the papers' intent, identical for
            the released configurations).
        stale_priors: ``True`` reproduces the reference's stale priors; ``False`` runs
            each prior whenever its level's posterior runs (the papers' intent).
        residuals: add the encoder maps of the last frame read to the levels' outputs before
            decoding (the reference's ``last_context_residuals=True``); ``False`` decodes
            the levels' outputs alone (skip ``e_1`` stays).
        feedback: ``"features"`` (the reference's ``LAST_PRED_FEATS``: after the context each
            level reads its own last output and the decoder keeps the residuals of the last
            frame read) or ``"frames"`` (the predicted frame is encoded and read like an
            observed frame, the closed loop of the other stpl predictors).
        batch_norm: ``"batch"`` (batch statistics always, the reference) or ``"running"``
            (running estimates in evaluation mode, updated once per call in training).
        bias_before_norm: give the convolutions that batch norm follows a bias. The
            reference has them (and counts them), but batch statistics remove any
            per-channel constant, so their gradient is zero: ``False`` drops them.
        init: ``"reference"`` (MSPred's ``init_weights``, see :meth:`reset_parameters`) or
            ``"torch"`` (each layer's own initialisation).
        latent_cell: the registered cell of the priors and posteriors.
        device, dtype: where and in which dtype to create the parameters.
        **cell_options: forwarded to every level's named cell.

    Shapes: frames ``(B, T, C, H, W)`` with H and W divisible by ``2^(L+1)``.
    """

    predicts_every_step = True

    def __init__(
        self,
        in_channels: int = 1,
        periods: Sequence[int] = (1, 4, 8),
        hidden_channels: int | Sequence[int] = 128,
        num_layers: int | Sequence[int] = 4,
        cell: str | Sequence[str] = "convlstm",
        kernel_size: int = 3,
        *,
        num_filters: int = 64,
        dim: int | None = None,
        latent_channels: int | None = 10,
        prior_hidden: int = 64,
        prior_layers: int = 1,
        posterior_hidden: int = 64,
        posterior_layers: int = 1,
        ancestral: bool = True,
        head_channels: Sequence[int | None] | None = (1, 1),
        head_schedule: HeadSchedule = "reference",
        stale_priors: bool = True,
        residuals: bool = True,
        feedback: Feedback = "features",
        batch_norm: Literal["batch", "running"] = "batch",
        bias_before_norm: bool = True,
        init: Literal["reference", "torch"] = "reference",
        latent_cell: str = "convlstm",
        device: Device = None,
        dtype: torch.dtype | None = None,
        **cell_options: Any,
    ) -> None:
        super().__init__()
        self.in_channels = check_positive_int("in_channels", in_channels)
        self.out_channels = self.in_channels
        if isinstance(periods, (str, bytes)) or not isinstance(periods, Sequence) or not periods:
            raise ValueError(
                f"periods must be a non-empty sequence of positive ints, one per level; "
                f"got {periods!r}"
            )
        self.periods = tuple(check_positive_int(f"periods[{i}]", p) for i, p in enumerate(periods))
        levels = self.num_levels = len(self.periods)
        self.hidden_channels = tuple(
            _per_level("hidden_channels", hidden_channels, levels, check_positive_int)
        )
        self.num_layers = tuple(_per_level("num_layers", num_layers, levels, check_positive_int))
        self.cells_per_level = tuple(_per_level("cell", cell, levels, _check_cell_name))
        self.kernel_size = check_kernel_size("kernel_size", kernel_size)
        self.num_filters = check_positive_int("num_filters", num_filters)
        self.dim = check_positive_int("dim", self.num_filters * 2**levels if dim is None else dim)
        self.latent_channels = (
            None
            if latent_channels is None
            else check_positive_int("latent_channels", latent_channels)
        )
        self.ancestral = check_bool("ancestral", ancestral)
        self.head_schedule: HeadSchedule = check_choice(
            "head_schedule", head_schedule, ("reference", "aligned")
        )
        self.stale_priors = check_bool("stale_priors", stale_priors)
        self.residuals = check_bool("residuals", residuals)
        self.feedback: Feedback = check_choice("feedback", feedback, ("features", "frames"))
        self.batch_norm = check_choice("batch_norm", batch_norm, ("batch", "running"))
        self.bias_before_norm = check_bool("bias_before_norm", bias_before_norm)
        self.init = check_choice("init", init, ("reference", "torch"))
        _check_cell_name("latent_cell", latent_cell)
        heads = self._check_heads(head_channels, levels)
        self.head_channels = tuple(heads)
        self._compiled_parts: dict[str, Callable[..., Any]] | None = None

        factory = factory_kwargs(device, dtype)
        running = self.batch_norm == "running"
        nf = self.num_filters
        # encoder block i (0-based) has nf * 2^i channels; the top block has dim
        self.encoder_channels = tuple([nf * 2**i for i in range(levels)] + [self.dim])
        self.level_channels = self.encoder_channels[1:]
        norm_bias = self.bias_before_norm
        self.encoder = DCGANEncoder(
            self.in_channels,
            self.encoder_channels,
            running_stats=running,
            bias=norm_bias,
            factory=factory,
        )
        self.decoder = UNetDecoder(
            self.in_channels,
            self.encoder_channels,
            running_stats=running,
            bias=norm_bias,
            factory=factory,
        )
        z = self.latent_channels or 0
        self.levels = nn.ModuleList()
        for h in range(levels):
            build = self._cell_builder(self.cells_per_level[h], cell_options, factory, h)
            self.levels.append(
                LevelPredictor(
                    self.level_channels[h] + z,
                    self.hidden_channels[h],
                    self.level_channels[h],
                    self.num_layers[h],
                    self.kernel_size,
                    build,
                    factory=factory,
                )
            )
        self.posteriors: nn.ModuleList | None = None
        self.priors: nn.ModuleList | None = None
        if self.latent_channels is not None:
            latent_build = self._cell_builder(latent_cell, {}, factory, None)
            self.latent_cell = latent_cell
            self.prior_hidden = check_positive_int("prior_hidden", prior_hidden)
            self.prior_layers = check_positive_int("prior_layers", prior_layers)
            self.posterior_hidden = check_positive_int("posterior_hidden", posterior_hidden)
            self.posterior_layers = check_positive_int("posterior_layers", posterior_layers)

            def gaussians(hidden: int, layers: int) -> nn.ModuleList:
                return nn.ModuleList(
                    GaussianLatent(
                        self.level_channels[h] + (z * (levels - 1 - h) if self.ancestral else 0),
                        hidden,
                        z,
                        layers,
                        self.kernel_size,
                        latent_build,
                        factory=factory,
                    )
                    for h in range(levels)
                )

            self.posteriors = gaussians(self.posterior_hidden, self.posterior_layers)
            self.priors = gaussians(self.prior_hidden, self.prior_layers)
        self.heads = nn.ModuleDict()
        for h, channels in enumerate(heads, start=1):
            if channels is not None:
                self.heads[str(h)] = DeconvHead(
                    self.encoder_channels[h],
                    nf,
                    channels,
                    h + 1,
                    running_stats=running,
                    bias=norm_bias,
                    factory=factory,
                )
        self.reset_parameters()

    # ------------------------------------------------------------------ construction
    @staticmethod
    def _check_heads(head_channels: object, levels: int) -> list[int | None]:
        if head_channels is None:
            return [None] * (levels - 1)
        if isinstance(head_channels, (str, bytes)) or not isinstance(head_channels, Sequence):
            raise ValueError(
                f"head_channels must be None or one entry per level h >= 1 ({levels - 1}); "
                f"got {head_channels!r}"
            )
        items = list(head_channels)
        if len(items) != levels - 1:
            raise ValueError(
                f"head_channels must have one entry per level h >= 1 ({levels - 1} for "
                f"{levels} levels); got {len(items)} entries {items!r}"
            )
        return [
            None if c is None else check_positive_int(f"head_channels[{i}]", c)
            for i, c in enumerate(items)
        ]

    def _cell_builder(
        self, name: str, options: Mapping[str, Any], factory: dict[str, Any], level: int | None
    ) -> CellBuilder:
        cls = CELLS[name]
        accepted = set(cell_options(cls)) - {"device", "dtype"}
        where = (
            f"HierarchicalPredictor(cell={name!r})"
            if level is not None
            else (f"HierarchicalPredictor(latent_cell={name!r})")
        )
        check_options(where, options, accepted)
        opts = dict(options)
        if name == "convlstm":
            for key, value in _NDRPLZ.items():
                opts.setdefault(key, value)
        extra = {k: v for k, v in factory.items() if k in cell_options(cls)}
        kernel = self.kernel_size

        def build(c_in: int, c_hidden: int) -> nn.Module:
            return cls(c_in, c_hidden, kernel, **opts, **extra)

        return build

    def reset_parameters(self) -> None:
        """Re-initialise every parameter.

        ``init="reference"``: MSPred's ``init_weights``, every ``Conv2d`` weight (the cells'
        included) ~ N(0, 0.02) with zero bias, batch-norm weights ~ N(1, 0.02) with zero
        bias; transposed convolutions and other layers keep PyTorch's initialisation.
        ``init="torch"``: every layer's own ``reset_parameters``.
        """
        reset_module_parameters(self)
        if self.init == "torch":
            return
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.normal_(module.weight, 0.0, 0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, FrameBatchNorm2d):
                nn.init.normal_(module.weight, 1.0, 0.02)
                nn.init.zeros_(module.bias)

    @property
    def stochastic(self) -> bool:
        """Whether the model has latents (``latent_channels`` is not ``None``)."""
        return self.latent_channels is not None

    @property
    def feeds_back_frames(self) -> bool:
        """Whether a step after the context reads the predicted frame (``feedback="frames"``).

        With feature feedback (MSPred's) it reads its levels' own outputs instead, so the
        state after a forecast is not the state after observing the forecast frames.
        """
        return self.feedback == "frames"

    @property
    def horizons(self) -> tuple[int, ...]:
        """Frames ahead of each level's outputs: 1 for the frames, ``periods[h]`` for h >= 1."""
        return (1, *self.periods[1:])

    def extra_repr(self) -> str:
        return (
            f"in_channels={self.in_channels}, periods={self.periods}, "
            f"hidden_channels={self.hidden_channels}, num_layers={self.num_layers}, "
            f"cell={self.cells_per_level}, kernel_size={self.kernel_size}, "
            f"num_filters={self.num_filters}, dim={self.dim}, "
            f"latent_channels={self.latent_channels}, ancestral={self.ancestral}, "
            f"head_channels={self.head_channels}, head_schedule={self.head_schedule!r}, "
            f"stale_priors={self.stale_priors}, residuals={self.residuals}, "
            f"feedback={self.feedback!r}, batch_norm={self.batch_norm!r}"
        )

    # ------------------------------------------------------------------ checks and states
    def _check_spatial(self, height: int, width: int) -> None:
        factor = 2 ** (self.num_levels + 1)
        if height % factor or width % factor:
            raise ValueError(
                f"frames of H={height}, W={width} cannot be encoded: H and W must be divisible "
                f"by 2^(levels+1) = {factor} (the encoder halves the frame {self.num_levels + 1} "
                f"times for {self.num_levels} levels)"
            )

    def _level_size(self, h: int, height: int, width: int) -> tuple[int, int]:
        return height // 2 ** (h + 2), width // 2 ** (h + 2)

    def initial_state(self, frames: Tensor) -> HierarchicalStream:
        """The state before any frame (what ``state=None`` means), built like ``frames``.

        A :class:`HierarchicalStream` with no held step, the form ``observe`` returns, so
        that a streaming step (``observe`` of one frame, or its ``torch.export``) maps a
        state to a state of the same structure.

        Args:
            frames: ``(B, C, H, W)`` or ``(B, T, C, H, W)``; only their batch size, frame
                size, dtype and device are used.
        """
        return HierarchicalStream(None, None, self._zero_state(frames))

    def _zero_state(self, frames: Tensor) -> HierarchicalState:
        if not isinstance(frames, Tensor) or frames.dim() not in (4, 5):
            got = tuple(frames.shape) if isinstance(frames, Tensor) else type(frames).__name__
            raise ValueError(f"frames must be (B, C, H, W) or (B, T, C, H, W); got {got}")
        frame = frames if frames.dim() == 4 else frames[:, 0]
        self._check_frames("frames", frame.unsqueeze(1), self.in_channels)
        b, _, height, width = frame.shape
        zeros = frame.new_zeros
        levels = []
        z = self.latent_channels
        for h, level in enumerate(self.levels):
            hh, ww = self._level_size(h, height, width)
            cells = level.initial_state(zeros(b, self.hidden_channels[h], hh, ww))  # type: ignore[operator]
            output = zeros(b, self.level_channels[h], hh, ww)
            if z is None or self.priors is None or self.posteriors is None:
                levels.append(LevelState(cells, output, None, None, None, None))
                continue
            post = self.posteriors[h].initial_state(zeros(b, self.posterior_hidden, hh, ww))  # type: ignore[operator]
            prior = self.priors[h].initial_state(zeros(b, self.prior_hidden, hh, ww))  # type: ignore[operator]
            sample = (zeros(b, z, hh, ww), zeros(b, z, hh, ww), zeros(b, z, hh, ww))
            levels.append(LevelState(cells, output, zeros(b, z, hh, ww), post, prior, sample))
        residuals = tuple(
            zeros(b, c, height // 2 ** (i + 1), width // 2 ** (i + 1))
            for i, c in enumerate(self.encoder_channels)
        )
        step = torch.zeros((), dtype=torch.int64, device=frame.device)
        return HierarchicalState(step, tuple(levels), residuals)

    def _check_hstate(self, state: HierarchicalState, frames: Tensor, name: str) -> None:
        step = state.step
        if (
            not isinstance(step, Tensor)
            or step.dim() != 0
            or step.is_floating_point()
            or step.dtype == torch.bool
        ):
            raise ValueError(f"{name}.step must be a 0-d integer tensor; got {step!r}")
        if not isinstance(state.levels, tuple) or len(state.levels) != self.num_levels:
            n = len(state.levels) if isinstance(state.levels, (tuple, list)) else state.levels
            raise ValueError(
                f"{name}.levels must hold one LevelState per level ({self.num_levels}); got {n!r}"
            )
        b, _, _, height, width = frames.shape
        for h, level in enumerate(state.levels):
            if not isinstance(level, LevelState):
                raise ValueError(
                    f"{name}.levels[{h}] must be a LevelState; got {type(level).__name__}"
                )
            shape = (b, self.level_channels[h], *self._level_size(h, height, width))
            if not isinstance(level.output, Tensor) or tuple(level.output.shape) != shape:
                got = (
                    tuple(level.output.shape) if isinstance(level.output, Tensor) else level.output
                )
                raise ValueError(
                    f"{name}.levels[{h}].output must be (B, C_h, h, w) = {shape} to match the "
                    f"frames {tuple(frames.shape)}; got {got} (a state from another batch size, "
                    "frame size or model?)"
                )
            if (level.latent is None) != (self.latent_channels is None):
                kind = "deterministic" if level.latent is None else "stochastic"
                model = "stochastic" if self.stochastic else "deterministic"
                raise ValueError(f"{name}.levels[{h}]: a {kind} state given to a {model} model")
            if len(level.cells) != self.num_layers[h]:
                raise ValueError(
                    f"{name}.levels[{h}].cells must hold {self.num_layers[h]} layer states; got "
                    f"{len(level.cells)}"
                )
            predictor = self.levels[h]
            assert isinstance(predictor, LevelPredictor)
            for layer, (cell, cell_state) in enumerate(
                zip(predictor.cells, level.cells, strict=True)
            ):
                state_type = getattr(cell, "state_type", None)
                if state_type is not None:
                    check_state(f"{name}.levels[{h}].cells[{layer}]", cell_state, state_type)
        if len(state.residuals) != len(self.encoder_channels):
            raise ValueError(
                f"{name}.residuals must hold {len(self.encoder_channels)} maps; got "
                f"{len(state.residuals)}"
            )

    def _unwrap_stream(
        self, state: object, frames: Tensor
    ) -> HierarchicalState | HierarchicalStream | None:
        if state is None:
            return None
        if isinstance(state, StreamState):
            state = state.state
        if isinstance(state, HierarchicalStream):
            if not isinstance(state.after, HierarchicalState):
                raise _state_error("its 'after' is not a HierarchicalState", state.after)
            self._check_hstate(state.after, frames, "state.after")
            if state.before is not None:
                self._check_hstate(state.before, frames, "state.before")
            return state
        if isinstance(state, HierarchicalState):
            self._check_hstate(state, frames, "state")
            return state
        raise _state_error("unknown state type", state)

    def _check_state(self, state: Any, frames: Tensor) -> Any:
        return self._unwrap_stream(state, frames)

    # ------------------------------------------------------------------ compiled parts
    def compile_step(
        self, enable: bool = True, *, dynamic_batch: bool = True, **compile_kwargs: Any
    ) -> HierarchicalPredictor:
        """Compile the recurrent parts of a step with ``torch.compile``; the loop stays eager.

        Each level's predictor and each prior/posterior is compiled on its own (one small
        graph per module, reused at every step). Which levels update at a step is decided in
        Python from the step index, outside the graphs, so the period counters never cause
        a recompilation. The encoder, decoder and heads run batched over all frames/steps
        of a call and stay eager. Returns ``self``; ``state_dict`` is unchanged.

        Args:
            enable: ``False`` drops the compiled parts and goes back to eager.
            dynamic_batch: let a part recompile once with dynamic shapes when the batch size
                changes (``torch.compile(dynamic=None)``); ``False`` keeps static shapes.
            **compile_kwargs: passed to ``torch.compile`` (``backend``, ``mode``, ...).
        """
        if not enable:
            self._compiled_parts = None
            return self
        kwargs = {"dynamic": None if dynamic_batch else False, **compile_kwargs}
        parts: dict[str, Callable[..., Any]] = {}
        for group in ("levels", "priors", "posteriors"):
            modules = getattr(self, group)
            for h, module in enumerate(modules or ()):
                key = f"{group}.{h}"
                parts[key] = PerDeviceCompiled(partial(_own_code, module, key), kwargs)
        self._compiled_parts = parts
        return self

    def _fused_weights(self) -> dict[str, FusedWeights]:
        """Per level/prior/posterior, the one-convolution weights of its plain ConvLSTM cells
        (concatenated once per call, see :func:`fused_weights`)."""
        out: dict[str, FusedWeights] = {}
        for group in ("levels", "priors", "posteriors"):
            for h, module in enumerate(getattr(self, group) or ()):
                out[f"{group}.{h}"] = fused_weights(module.cells)
        return out

    def _part(self, group: str, h: int) -> Callable[..., Any]:
        parts = self._compiled_parts
        if parts is not None:
            return parts[f"{group}.{h}"]
        modules = getattr(self, group)
        module: Callable[..., Any] = modules[h]
        return module

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_compiled_parts"] = None  # compiled functions are bound to this instance
        return state

    # ------------------------------------------------------------------ one step
    def _ancestral(self, levels: Sequence[LevelState], h: int) -> list[Tensor]:
        if not self.ancestral:
            return []
        upper = []
        for j in range(h + 1, self.num_levels):
            latent = levels[j].latent
            assert latent is not None
            upper.append(F.interpolate(latent, scale_factor=2 ** (j - h), mode="nearest"))
        return upper

    def _advance(
        self,
        state: HierarchicalState,
        inputs: Sequence[Tensor] | None,
        residuals: Sequence[Tensor] | None,
        posterior_inputs: Sequence[Tensor] | None,
        use_posterior: bool,
        fused: Mapping[str, FusedWeights],
        record: list[list[tuple[int, Tensor, Tensor, Tensor, Tensor]]] | None = None,
        record_step: int = 0,
        index: int | None = None,
        masked: bool = False,
    ) -> HierarchicalState:
        """One step of the levels (latents and predictors); the decoder is not run here.

        Args:
            state: the state before the step.
            inputs: the levels' input maps ``u_h`` (encoder maps ``e_2..e_{L+1}`` of the frame
                read), or ``None`` to read the levels' own outputs.
            residuals: the encoder maps ``e_1..e_{L+1}`` the decoder adds at this step, or
                ``None`` to keep the state's.
            posterior_inputs: encoder maps ``e_2..e_{L+1}`` of the next frame, or ``None``
                when it is unknown (the posterior does not run).
            use_posterior: sample the posterior's latent (else the prior's).
            fused: :meth:`_fused_weights` of this call.
            record: per level, a list to which ``(step, mu_q, logvar_q, mu_p, logvar_p)`` is
                appended at each posterior step.
            record_step: the step index written to ``record``.
            index: ``state.step`` as a Python int when the caller knows it (then it is not
                read from the tensor).
            masked: without ``index``, select the updated levels with tensors instead of
                reading the step index (what a traced step does).
        """
        # Eager: the step index (given, or read on the CPU) decides in Python which levels
        # run. Traced (torch.export, or torch.compile of a loop that continues a given
        # state) without a known index: every level runs and torch.where keeps the updated
        # ones, so one program serves every phase of the period counters.
        step = state.step
        masked = index is None and (masked or _tracing())
        fired: list[bool | Tensor]
        if masked:
            fired = [step % p == 0 for p in self.periods]
        else:
            s = int(step) if index is None else index
            fired = [s % p == 0 for p in self.periods]
        levels = list(state.levels)
        count = self.num_levels
        u = [lv.output for lv in levels] if inputs is None else list(inputs)
        if self.stochastic:
            for h in reversed(range(count)):
                if fired[h] is False:
                    continue
                lv = levels[h]
                upper = self._ancestral(levels, h)
                posterior_state = lv.posterior
                post: tuple[Tensor, Tensor, Tensor] | None = None
                if posterior_inputs is not None:
                    zq, mq, lq, posterior_state = self._part("posteriors", h)(
                        torch.cat([posterior_inputs[h], *upper], dim=1)
                        if upper
                        else posterior_inputs[h],
                        lv.posterior,
                        fused[f"posteriors.{h}"],
                    )
                    post = (zq, mq, lq)
                p = self.periods[h]
                prior_state = lv.prior
                sample = lv.prior_sample
                runs: bool | Tensor = True
                if self.stale_priors:
                    runs = step % (p * p) == 0 if masked else s % (p * p) == 0
                if runs is not False or sample is None:
                    zp, mp, lp, new_prior = self._part("priors", h)(
                        torch.cat([u[h], *upper], dim=1) if upper else u[h],
                        lv.prior,
                        fused[f"priors.{h}"],
                    )
                    prior_state = _select(runs, new_prior, prior_state)
                    sample = _select(runs, (zp, mp, lp), sample)
                assert sample is not None
                if use_posterior:
                    assert post is not None
                    latent = post[0]
                else:
                    latent = sample[0]
                new_level = lv._replace(
                    latent=latent, posterior=posterior_state, prior=prior_state, prior_sample=sample
                )
                levels[h] = _select(fired[h], new_level, lv)
                if record is not None and post is not None:
                    record[h].append((record_step, post[1], post[2], sample[1], sample[2]))
        for h in range(count):
            if fired[h] is False:
                continue
            lv = levels[h]
            x = u[h] if lv.latent is None else torch.cat([u[h], lv.latent], dim=1)
            y, cells = self._part("levels", h)(x, lv.cells, fused[f"levels.{h}"])
            levels[h] = _select(fired[h], lv._replace(output=y, cells=cells), lv)
        kept = state.residuals if residuals is None else tuple(residuals)
        return HierarchicalState(step + 1, tuple(levels), kept)

    # ------------------------------------------------------------------ encoder / decoder
    def _encode(self, frames: Tensor) -> list[tuple[Tensor, ...]]:
        """``frames: (B, n, C, H, W)`` -> per frame, the encoder maps ``(e_1..e_{L+1})``.

        One encoder call over all n frames, with each frame's own batch statistics.
        """
        b, n = frames.shape[:2]
        maps = self.encoder(frames.reshape(b * n, *frames.shape[2:]), n)
        if n == 1:
            return [maps]
        per_map = [
            m.reshape(b, n, *m.shape[1:]).transpose(0, 1).contiguous().unbind(0) for m in maps
        ]
        return [tuple(m[t] for m in per_map) for t in range(n)]

    decode_pixels: int | None = None
    """Decoder calls on the CPU stack at most this many (samples x pixels) of frames per call
    (default :data:`_CPU_DECODE_PIXELS`); on other devices every step goes in one call."""

    def _decode(
        self,
        outputs: Sequence[Sequence[Tensor]],
        residuals: Sequence[Sequence[Tensor]],
        keep: Sequence[int] = (),
    ) -> tuple[Tensor, tuple[Tensor, ...]]:
        """Decode n steps in as few calls as the device favours.

        Args:
            outputs: per step, the levels' outputs ``(y_0..y_{L-1})``.
            residuals: per step, the encoder maps ``(e_1..e_{L+1})``.
            keep: the steps (indices into ``outputs``) whose decoder maps are returned.

        Returns:
            frames ``(B, n, C, H, W)`` and the decoder maps ``(d_1..d_L)`` at the ``keep``
            steps, each ``(B*len(keep), C_j, h_j, w_j)`` sample-major.
        """
        n = len(outputs)
        first = outputs[0][0]
        b = first.shape[0]
        chunk = n
        if first.device.type == "cpu":
            # one call over many large frames loses the CPU caches: a few steps per call
            frame_pixels = b * (first.shape[-2] * first.shape[-1]) * 16
            budget = self.decode_pixels if self.decode_pixels is not None else _CPU_DECODE_PIXELS
            chunk = max(1, budget // frame_pixels)
        if chunk >= n:
            frames, maps = self._decode_once(outputs, residuals)
            return frames, tuple(_pick_rows(m, b, n, keep) for m in maps)
        frame_parts: list[Tensor] = []
        map_parts: list[list[Tensor]] = []
        for lo in range(0, n, chunk):
            hi = min(n, lo + chunk)
            frames, maps = self._decode_once(outputs[lo:hi], residuals[lo:hi])
            frame_parts.append(frames)
            local = [k - lo for k in keep if lo <= k < hi]
            if local:
                map_parts.append([_pick_rows(m, b, hi - lo, local) for m in maps])
        kept = (
            tuple(_cat_rows([part[j] for part in map_parts], b) for j in range(len(map_parts[0])))
            if map_parts
            else ()
        )
        return torch.cat(frame_parts, dim=1), kept

    def _decode_once(
        self, outputs: Sequence[Sequence[Tensor]], residuals: Sequence[Sequence[Tensor]]
    ) -> tuple[Tensor, tuple[Tensor, ...]]:
        """Decode n steps in one call: frames ``(B, n, C, H, W)`` and ``(d_1..d_L)``, each
        ``(B*n, C_j, h_j, w_j)`` sample-major."""
        n = len(outputs)
        count = self.num_levels

        def stacked(items: Sequence[Tensor]) -> Tensor:
            if n == 1:
                return items[0]
            t = torch.stack(list(items), dim=1)
            return t.reshape(-1, *t.shape[2:])

        ys = [stacked([o[h] for o in outputs]) for h in range(count)]
        rs = [stacked([r[i] for r in residuals]) for i in range(count + 1)]
        if self.residuals:
            top = ys[count - 1] + rs[count]
            skips = [rs[0], *(ys[i - 1] + rs[i] for i in range(1, count))]
        else:
            top = ys[count - 1]
            skips = [rs[0], *ys[: count - 1]]
        frame, maps = self.decoder(top, skips, n)
        b = frame.shape[0] // n
        return frame.reshape(b, n, *frame.shape[1:]), maps

    def _decode_state(self, state: HierarchicalState) -> Tensor:
        frames, _ = self._decode([[lv.output for lv in state.levels]], [state.residuals])
        return frames[:, 0]

    def _head_steps(self, h: int, first: int, start: int, steps: int) -> list[int]:
        """Steps (call-local) at which head h runs in a call of ``steps`` steps."""
        p = self.periods[h]
        if self.head_schedule == "reference":
            return list(range(max(first, 0), steps, p)) if first < steps else []
        return [t for t in range(max(first, 0), steps) if (start + t) % p == 0]

    def _run_heads(
        self,
        maps: tuple[Tensor, ...],
        decoded: Sequence[int],
        like: Tensor,
        steps: int,
        head_steps: Sequence[Sequence[int]],
    ) -> list[Tensor | None]:
        """Heads at their steps; per level h >= 1 a step-indexed ``(B, steps, C_h, H, W)``.

        Args:
            maps: the decoder maps ``(d_1..d_L)`` at the steps ``decoded``, ``(B*n, C, h, w)``.
            decoded: the n steps (call-local) those maps belong to, in order.
            like: the predicted frames ``(B, n', C, H, W)`` (batch, size, dtype, device).
            steps: the call's steps (T-1).
            head_steps: per level, the steps its head runs at (entry 0 unused).
        """
        b = like.shape[0]
        out: list[Tensor | None] = []
        count = self.num_levels
        where = {t: i for i, t in enumerate(decoded)}
        for h in range(1, count):
            key = str(h)
            if key not in self.heads:
                out.append(None)
                continue
            head = self.heads[key]
            assert isinstance(head, DeconvHead)
            wanted = list(head_steps[h])
            if not wanted:
                out.append(like.new_zeros(b, steps, head.out_channels, *like.shape[-2:]))
                continue
            d = maps[count - h - 1]
            d = d.reshape(b, len(decoded), *d.shape[1:])
            picked = _pick(d, [where[t] for t in wanted])
            y = head(picked.reshape(-1, *picked.shape[2:]), len(wanted))
            out.append(_place(y.reshape(b, len(wanted), *y.shape[1:]), wanted, steps))
        return out

    # ------------------------------------------------------------------ resuming a stream
    def _resume(
        self,
        stream: HierarchicalState | HierarchicalStream | None,
        next_frame: tuple[Tensor, ...] | None,
        like: Tensor,
        fused: Mapping[str, FusedWeights],
        start: int | None = None,
        masked: bool = False,
    ) -> HierarchicalState:
        """The committed state before the first new frame (the held step recomputed).

        ``start``: the index of that frame's step, when known.
        """
        if stream is None:
            return self._zero_state(like)
        if isinstance(stream, HierarchicalState):
            return stream
        if stream.before is None or next_frame is None:
            return stream.after
        held = stream.held
        return self._advance(
            stream.before,
            None if held is None else held[1:],
            held,
            next_frame[1:],
            True,
            fused,
            index=None if start is None else start - 1,
            masked=masked,
        )

    # ------------------------------------------------------------------ forward
    def forward(  # type: ignore[override]
        self,
        frames: Tensor,
        context: int | None = None,
        mask: Tensor | None = None,
        state: Any = None,
        actions: Tensor | None = None,
        *,
        num_preds: int | Sequence[int] | None = None,
    ) -> HierarchicalOutput:
        """Run T-1 steps over ``frames: (B, T, C, H, W)``; returns every level's outputs.

        Steps ``t < context`` read the true frame ``frames[:, t]``; later steps read the
        levels' own outputs (``feedback="features"``) or the predicted frame
        (``feedback="frames"``), mixed with the true frame by ``mask`` like the other
        predictors. A stochastic model samples its posterior (which reads frame t+1) in
        training mode and at steps ``t < context - 1``, its prior otherwise; heads run from
        step ``context - 1`` on (see ``head_schedule``).

        Args:
            frames: ``(B, T, C, H, W)``, T >= 2.
            context: steps ``t < context`` read the true frame (default T).
            mask: ``(B, T-2)`` (with feature feedback) or broadcastable to ``(B, T-2, C, H,
                W)`` (frame feedback); entry t-1 mixes the true frame into step t >= context.
            state: ``out.state`` of an earlier call, a :class:`~stpl.StreamState`, or
                ``None`` (zeros). The frames follow what the state has read.
            actions: not supported (``ValueError`` if given).
            num_preds: compute only what the reference trainer collects (one int, or one
                per level): level 0's frames at steps ``context-1 .. context-1+N_0-1`` and
                each head's first ``N_h`` outputs; the other entries stay zero, the decoder
                runs only where needed, and the loop stops after the last step an output or
                its KL term needs (``out.state.step`` says where). Training with
                :func:`stpl.training.hierarchical_loss` and the same ``num_preds`` computes
                the same loss as without it, faster. ``None``: every step.

        Returns:
            :class:`HierarchicalOutput`.
        """
        frames = self._check_frames("frames", frames, self.in_channels, min_t=2)
        b, t_total = frames.shape[:2]
        steps = t_total - 1
        context = self._check_context(context, t_total)
        step_mask = self._prepare_mask(mask, frames)
        if (
            step_mask is not None
            and self.feedback == "features"
            and step_mask.shape[-3:] != (1, 1, 1)
        ):
            raise ValueError(
                "with feedback='features' the mask mixes feature maps of several sizes, so it "
                f"must be per sample, (B, T-2); got shape {tuple(mask.shape)}"  # type: ignore[union-attr]
            )
        self._prepare_actions(actions, frames, steps)
        stream = self._unwrap_stream(state, frames)
        counts = None if num_preds is None else self._check_num_preds(num_preds)

        stochastic = self.stochastic
        # frames to encode: the context, the masked steps' true frames (feature feedback)
        # and, for the posteriors, every next frame
        start = self._start_index(stream)
        if start is None:  # tracing a forward that continues a given state: read the index
            assert stream is not None
            step = stream.step if isinstance(stream, HierarchicalState) else stream.after.step
            start = int(step)
        frame_steps, head_steps, last = self._plan(context, start, steps, counts)
        if stochastic:
            n_enc = last + 2
        elif step_mask is not None and self.feedback == "features":
            n_enc = last + 1
        else:
            n_enc = min(context, last + 1)
        feats = self._encode(frames[:, :n_enc])
        fused = self._fused_weights()
        current = self._resume(stream, feats[0], frames[:, 0], fused, start)

        record: list[list[tuple[int, Tensor, Tensor, Tensor, Tensor]]] | None = (
            [[] for _ in range(self.num_levels)] if stochastic else None
        )
        level_outputs: list[list[Tensor]] = []
        level_residuals: list[tuple[Tensor, ...]] = []
        frame_preds: list[Tensor] = []
        frame_maps: list[tuple[Tensor, ...]] = []
        pred: Tensor | None = None
        for t in range(last + 1):
            q = feats[t + 1][1:] if stochastic else None
            use_posterior = self.training or t < context - 1
            inputs: Sequence[Tensor] | None
            res: Sequence[Tensor] | None
            if self.feedback == "features":
                if t < context:
                    res = feats[t]
                    inputs = res[1:]
                elif step_mask is not None:
                    m = step_mask[:, t - 1].reshape(b, 1, 1, 1)
                    res = [
                        m * e + (1 - m) * r
                        for e, r in zip(feats[t], current.residuals, strict=True)
                    ]
                    inputs = [
                        m * e + (1 - m) * lv.output
                        for e, lv in zip(feats[t][1:], current.levels, strict=True)
                    ]
                else:
                    res = inputs = None
            else:
                if t < context:
                    res = feats[t]
                else:
                    assert pred is not None
                    x = pred
                    if step_mask is not None:
                        m = step_mask[:, t - 1]
                        x = m * frames[:, t] + (1 - m) * pred
                    res = self._encode(x.unsqueeze(1))[0]
                inputs = res[1:]
            current = self._advance(
                current, inputs, res, q, use_posterior, fused, record, t, index=start + t
            )
            if self.feedback == "features":
                level_outputs.append([lv.output for lv in current.levels])
                level_residuals.append(current.residuals)
            else:
                decoded, maps = self._decode(
                    [[lv.output for lv in current.levels]], [current.residuals], [0]
                )
                pred = decoded[:, 0]
                frame_preds.append(pred)
                frame_maps.append(maps)

        # decode only the steps whose frame or decoder maps an output needs
        needed = sorted(set(frame_steps).union(*head_steps[1:]))
        at_heads = sorted(set().union(*head_steps[1:]))
        where = {t: i for i, t in enumerate(needed)}
        if self.feedback == "features":
            decoded, maps = self._decode(
                [level_outputs[t] for t in needed],
                [level_residuals[t] for t in needed],
                [where[t] for t in at_heads],
            )
        else:
            decoded = _pick(torch.stack(frame_preds, dim=1), needed)
            maps = (
                tuple(
                    torch.stack([frame_maps[t][j] for t in at_heads], dim=1).reshape(
                        -1, *frame_maps[0][j].shape[1:]
                    )
                    for j in range(len(frame_maps[0]))
                )
                if at_heads
                else ()
            )
        predicted = _place(_pick(decoded, [where[t] for t in frame_steps]), frame_steps, steps)
        heads = self._run_heads(maps, at_heads, decoded, steps, head_steps)
        latents: tuple[LatentStats, ...] | None = None
        if record is not None:
            latents = tuple(self._stats(entries) for entries in record)
        return HierarchicalOutput(
            (predicted, *heads),
            current,
            None,
            (tuple(frame_steps), *(tuple(s) for s in head_steps[1:])),
            self.horizons,
            latents,
        )

    def _check_num_preds(self, num_preds: object) -> list[int]:
        return _per_level("num_preds", num_preds, self.num_levels, check_positive_int)

    def _plan(
        self, context: int, start: int, steps: int, counts: Sequence[int] | None
    ) -> tuple[list[int], list[list[int]], int]:
        """Level 0's output steps, each head's steps, and the last step to run."""
        first = context - 1
        heads: list[list[int]] = [[]]
        for h in range(1, self.num_levels):
            run = self._head_steps(h, first, start, steps) if str(h) in self.heads else []
            heads.append(run if counts is None else run[: counts[h]])
        if counts is None:
            return list(range(steps)), heads, steps - 1
        frame_steps = list(range(first, min(first + counts[0], steps)))
        last = max([*frame_steps, *(t for run in heads for t in run)], default=first)
        if self.stochastic:  # the KL reads as many posterior steps as the level has outputs
            for h, p in enumerate(self.periods):
                n = (
                    len(frame_steps)
                    if h == 0
                    else len(heads[h])
                    if str(h) in self.heads
                    else (counts[h])
                )
                ticks = [t for t in range(first, steps) if (start + t) % p == 0][:n]
                last = max([last, *ticks])
        return frame_steps, heads, min(max(last, 0), steps - 1)

    @staticmethod
    def _stats(entries: list[tuple[int, Tensor, Tensor, Tensor, Tensor]]) -> LatentStats:
        if not entries:
            empty = torch.empty(0)
            return LatentStats((), empty, empty, empty, empty)
        mu_q, logvar_q, mu_p, logvar_p = (
            torch.stack([e[k] for e in entries], dim=1)  # type: ignore[misc]
            for k in range(1, 5)
        )
        return LatentStats(tuple(e[0] for e in entries), mu_q, logvar_q, mu_p, logvar_p)

    # ------------------------------------------------------------------ streaming
    def _step_impl(self, x: Tensor, state: Any, action: Tensor | None) -> StepOutput:
        """One observed frame as a pure tensor function: ``observe`` of ``x: (B, C, H, W)``.

        Every level runs and ``torch.where`` keeps the ones whose period fires at
        ``state.step``, so the function never reads a tensor's value on the host and maps a
        state to a state of the same structure and shapes (what CUDA graphs and
        ``torch.export`` need). ``state`` is a :class:`HierarchicalStream` (see
        :meth:`initial_state`) or ``None``. Returns the prediction of the next frame and the
        new stream state.
        """
        if action is not None:
            raise ValueError("actions were given, but HierarchicalPredictor takes no actions")
        out, _ = self._observe_stream(x.unsqueeze(1), state, masked=True)
        return StepOutput(out.pending, out.state, None)

    def _start_index(self, stream: HierarchicalState | HierarchicalStream | None) -> int | None:
        """The index of the next step: 0 for a new sequence, else read from the state
        (``None`` while tracing: the traced steps then select their levels with tensors)."""
        if stream is None:
            return 0
        if _tracing():
            return None
        step = stream.step if isinstance(stream, HierarchicalState) else stream.after.step
        return int(step)

    def _observe_stream(
        self, frames: Tensor, state: object, masked: bool = False
    ) -> tuple[StreamState, int | None]:
        """Read ``frames``; returns the stream state and the index of its next step.

        ``masked``: never read the step index (every level runs, tensors select).
        """
        stream = self._unwrap_stream(state, frames)
        start = None if masked else self._start_index(stream)
        feats = self._encode(frames)
        fused = self._fused_weights()
        current = self._resume(stream, feats[0], frames[:, 0], fused, start, masked)
        stochastic = self.stochastic
        n = frames.shape[1]

        def at(t: int) -> int | None:
            return None if start is None else start + t

        for t in range(n - 1):
            q = feats[t + 1][1:] if stochastic else None
            current = self._advance(
                current, feats[t][1:], feats[t], q, True, fused, index=at(t), masked=masked
            )
        after = self._advance(
            current, feats[-1][1:], feats[-1], None, False, fused, index=at(n - 1), masked=masked
        )
        held = HierarchicalStream(
            current if stochastic else None, feats[-1] if stochastic else None, after
        )
        return StreamState(held, self._decode_state(after)), at(n)

    def _rollout_stream(
        self, stream: StreamState, horizon: int, start: int | None
    ) -> tuple[Tensor, StreamState]:
        """``horizon`` predictions from a stream state (the first is ``pending``); ``start``
        is the index of the stream's next step, when known."""
        held = stream.state
        after = held.after if isinstance(held, HierarchicalStream) else held
        pending = stream.pending
        if horizon == 1:
            return pending.unsqueeze(1), stream
        stochastic = self.stochastic
        fused = self._fused_weights()
        current = after
        before = after
        held_maps: tuple[Tensor, ...] | None = None
        if self.feedback == "features":
            outputs: list[list[Tensor]] = []
            residuals: list[tuple[Tensor, ...]] = []
            for k in range(horizon - 1):
                before = current
                current = self._advance(
                    current,
                    None,
                    None,
                    None,
                    False,
                    fused,
                    index=None if start is None else start + k,
                )
                outputs.append([lv.output for lv in current.levels])
                residuals.append(current.residuals)
            decoded, _ = self._decode(outputs, residuals)
            preds = torch.cat([pending.unsqueeze(1), decoded], dim=1)
        else:
            frames = [pending]
            for k in range(horizon - 1):
                held_maps = self._encode(frames[-1].unsqueeze(1))[0]
                before = current
                current = self._advance(
                    current,
                    held_maps[1:],
                    held_maps,
                    None,
                    False,
                    fused,
                    index=None if start is None else start + k,
                )
                frames.append(self._decode_state(current))
            preds = torch.stack(frames, dim=1)
        last = HierarchicalStream(
            before if stochastic else None, held_maps if stochastic else None, current
        )
        return preds, StreamState(last, preds[:, -1])

    @torch.no_grad()
    def observe(
        self, frames: Tensor, state: StreamState | None = None, *, actions: Tensor | None = None
    ) -> StreamState:
        """Read ``frames: (B, T, C, H, W)`` (T >= 1 new frames) and return where the model stands.

        Reading a stream chunk by chunk gives the same state as one call on all frames (the
        last frame's step is held until the next frame arrives; see
        :class:`HierarchicalStream`), and ``forecast(observe(frames), h)`` equals
        ``generate(frames, h).predictions``.
        """
        frames = self._check_frames("frames", frames, self.in_channels, min_t=1)
        self._prepare_actions(actions, frames, frames.shape[1])
        return self._observe_stream(frames, state)[0]

    @torch.no_grad()
    def forecast(
        self, state: StreamState, horizon: int, *, actions: Tensor | None = None
    ) -> Tensor:
        """Predict ``horizon`` frames from a :class:`~stpl.StreamState`, leaving it unchanged.

        Returns:
            ``(B, horizon, C, H, W)``; the first frame is ``state.pending``.
        """
        if not isinstance(state, StreamState):
            raise TypeError(
                "state must be a StreamState from model.observe(...) or model.generate(...)"
                f".state; got {type(state).__name__}"
            )
        horizon = check_positive_int("horizon", horizon)
        pending = state.pending
        frame = self._check_frames("state.pending", pending.unsqueeze(1), self.out_channels)
        self._prepare_actions(actions, frame, horizon - 1)
        stream = self._unwrap_stream(state, frame)
        assert stream is not None
        start = self._start_index(stream)
        preds, _ = self._rollout_stream(StreamState(stream, pending), horizon, start)
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

        Steps after the context sample the priors (a stochastic model) and feed back the
        levels' own outputs (``feedback="features"``) or the predicted frames.

        Returns:
            :class:`~stpl.Generation` with ``predictions (B, horizon, C, H, W)`` and the
            :class:`~stpl.StreamState` after the last prediction.
        """
        frames = self._check_frames("context_frames", context_frames, self.in_channels, min_t=1)
        horizon = check_positive_int("horizon", horizon)
        self._prepare_actions(actions, frames, frames.shape[1] + horizon - 1)
        stream, start = self._observe_stream(frames, state)
        preds, last = self._rollout_stream(stream, horizon, start)
        return Generation(preds, last)


# --------------------------------------------------------------------------------------------
# preset


def build_mspred(**options: Any) -> HierarchicalPredictor:
    """:class:`HierarchicalPredictor` from preset options.

    ``image_size`` (an int or ``(H, W)``) is only checked (H and W must be divisible by
    ``2^(levels+1)``): the model itself works at any such size.
    """
    options = dict(options)
    image_size = options.pop("image_size", None)
    model = HierarchicalPredictor(**options)
    if image_size is not None:
        size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
        if len(size) != 2:
            raise ValueError(f"image_size must be an int or (H, W); got {image_size!r}")
        model._check_spatial(
            check_int("image_size", size[0], minimum=1), check_int("image_size", size[1], minimum=1)
        )
    return model


MSPRED_MMNIST: dict[str, Any] = {
    "in_channels": 1,
    "periods": (1, 4, 8),
    "hidden_channels": 128,
    "num_layers": 4,
    "cell": "convlstm",
    "kernel_size": 3,
    "num_filters": 64,
    "dim": 512,
    "latent_channels": 10,
    "prior_hidden": 64,
    "prior_layers": 1,
    "posterior_hidden": 64,
    "posterior_layers": 1,
    "ancestral": True,
    "head_channels": (1, 1),
}
"""AIS-Bonn/MSPred ``src/configs/mmnist.json`` on 1-channel frames, like the other presets
(25,928,123 parameters); ``in_channels=3`` is the file's 3-channel data (25,934,269)."""

register_preset(
    "mspred",
    build_mspred,
    MSPRED_MMNIST,
    small={
        "in_channels": 1,
        "periods": (1, 2, 3),
        "hidden_channels": 8,
        "num_layers": 1,
        "num_filters": 4,
        "dim": None,
        "latent_channels": None,
        "head_channels": None,
        "bias_before_norm": False,
        "init": "torch",
        "image_size": 32,
    },
    frame_shape=(1, 32, 32),
    description=(
        "MSPred (BMVC 2022): 3-level hierarchy (periods 1/4/8), ConvLSTM levels, Gaussian "
        "ConvLSTM latents, heatmap heads; AIS-Bonn/MSPred's Moving MNIST configuration"
    ),
)
