"""The benchmark's configuration and its command line."""

from __future__ import annotations

import argparse
from dataclasses import asdict, dataclass
from typing import Any, Literal

from stpl.registry import PRESETS, list_models

__all__ = [
    "CELL_NAMES",
    "DTYPES",
    "MODES",
    "BenchConfig",
    "Mode",
    "build_parser",
    "config_from_args",
    "parse_option",
]

Mode = Literal["forward", "train", "rollout", "stream", "kernels"]
"""What one timed step runs: inference forward, forward + backward, ``generate``, or the
batch-1 streaming calls (``observe`` one frame, ``forecast``) eager / compiled / exported,
or the kernels one recurrent step launches, eager vs compiled."""

CELL_NAMES = ("convlstm", "stlstm", "modernn", "dcb")
"""Cells that ``--cell`` accepts (``dcb`` is MoDeRNN's Detail Context Block alone)."""

DTYPES = ("float32", "bfloat16")
MODES = ("forward", "train", "rollout", "stream", "kernels")


@dataclass(frozen=True)
class BenchConfig:
    """One benchmark configuration.

    Exactly one of ``model`` (a preset of :func:`stpl.get_model`) and ``cell`` (one of
    :data:`CELL_NAMES`) is set. ``None`` for ``hidden``, ``layers``, ``kernel`` and
    ``patch_size`` keeps the preset's value (cells: 64 hidden, 1 layer, kernel 5, patch 4).

    Attributes:
        model: preset name, e.g. ``"predrnn"``.
        cell: cell name, e.g. ``"stlstm"``.
        hidden: hidden channels per layer.
        layers: number of stacked layers.
        kernel: gate kernel size.
        image_size: H = W of the frames.
        patch_size: space-to-depth factor p (cells see ``(B, p*p*C, H/p, W/p)`` inputs).
        channels: image channels C.
        batch: B.
        frames: T, frames per sequence (a model runs T-1 steps, a cell T steps).
        context: steps that read the true frame (models; default T // 2). In ``rollout``
            mode the number of context frames given to ``generate``.
        dtype: ``"float32"`` or ``"bfloat16"`` (autocast around the forward pass).
        compile: ``torch.compile``; the eager twin of the step is timed in the same rounds
            and the result reports the compiled step's speed-up over it.
        compile_backend: ``torch.compile`` backend (``"inductor"``; ``"aot_eager"`` to
            check the tool quickly).
        inductor_options: ``(key, value)`` pairs of inductor settings passed as
            ``torch.compile(options=...)``, e.g. ``(("layout_optimization", False),)``.
        compile_scope: ``"step"`` (one recurrent step is compiled, the loop over time stays
            Python) or ``"module"`` (the whole forward, the loop unrolled).
        channels_last: convert the parameters to ``torch.channels_last``.
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ...
        mode: ``"forward"`` (no grad), ``"train"`` (forward + loss + backward) or
            ``"rollout"`` (``generate`` after ``context`` frames, plus a batch-1 single-step
            latency) or ``"stream"`` (batch 1: ``observe`` one frame and ``forecast``
            ``T - context`` frames, eager vs ``compile_step`` vs ``torch.export``) or
            ``"kernels"`` (kernel launches of one recurrent step, eager vs ``compile_step``).
        checkpoint_steps: activation checkpointing over time (models only).
        repeats: fixed number of timed runs; ``None`` lets ``blocked_autorange`` decide.
        min_run_time: seconds ``blocked_autorange`` spends measuring (``repeats=None``).
        memory: measure the step's peak memory (one extra profiled run).
        isolated: time the step's convolutions in isolation (the headline fraction).
        seed: seed of parameters and inputs.
        threads: ``torch.set_num_threads`` for the run (``None``: torch's default).
    """

    model: str | None = "predrnn"
    cell: str | None = None
    hidden: int | None = None
    layers: int | None = None
    kernel: int | None = None
    image_size: int = 64
    patch_size: int | None = None
    channels: int = 1
    batch: int = 8
    frames: int = 20
    context: int | None = None
    dtype: str = "float32"
    compile: bool = False
    compile_backend: str = "inductor"
    inductor_options: tuple[tuple[str, Any], ...] = ()
    compile_scope: str = "step"
    channels_last: bool = False
    device: str = "cpu"
    mode: str = "train"
    checkpoint_steps: bool = False
    repeats: int | None = None
    min_run_time: float = 2.0
    memory: bool = True
    isolated: bool = True
    seed: int = 0
    threads: int | None = None

    def __post_init__(self) -> None:
        if (self.model is None) == (self.cell is None):
            raise ValueError(
                f"give exactly one of model and cell; got model={self.model!r}, cell={self.cell!r}"
            )
        if self.model is not None and self.model not in list_models():
            raise ValueError(f"unknown model {self.model!r}; known models: {list_models()}")
        if self.cell is not None and self.cell not in CELL_NAMES:
            raise ValueError(f"unknown cell {self.cell!r}; known cells: {list(CELL_NAMES)}")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {list(DTYPES)}; got {self.dtype!r}")
        if self.compile_scope not in ("step", "module"):
            raise ValueError(
                f"compile_scope must be 'step' or 'module'; got {self.compile_scope!r}"
            )
        if self.inductor_options and self.compile_backend != "inductor":
            raise ValueError(
                "inductor_options need compile_backend='inductor'; "
                f"got compile_backend={self.compile_backend!r}"
            )
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {list(MODES)}; got {self.mode!r}")
        for name in ("hidden", "layers", "kernel", "patch_size", "repeats", "threads"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"{name} must be positive; got {value!r}")
        for name in ("image_size", "channels", "batch", "frames"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive; got {getattr(self, name)!r}")
        if self.model is not None and self.frames < 2:
            raise ValueError(f"a model needs frames >= 2; got {self.frames}")
        if self.context is not None and not 1 <= self.context <= self.frames:
            raise ValueError(f"context must be in [1, frames={self.frames}]; got {self.context}")
        if self.min_run_time <= 0:
            raise ValueError(f"min_run_time must be positive; got {self.min_run_time!r}")
        if self.mode in ("stream", "kernels") and self.model is None:
            raise ValueError(f"mode {self.mode!r} measures a model (--model), not a cell")
        if self.checkpoint_steps and self.cell is not None:
            raise ValueError("checkpoint_steps applies to models (--model), not to --cell")

    @property
    def name(self) -> str:
        """``"model:predrnn"`` or ``"cell:stlstm"``."""
        return f"model:{self.model}" if self.model is not None else f"cell:{self.cell}"

    @property
    def resolved_context(self) -> int:
        """``context``, or T // 2 when unset (at least 1)."""
        return self.context if self.context is not None else max(1, self.frames // 2)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict of the fields (JSON-ready)."""
        out = asdict(self)
        out["inductor_options"] = dict(self.inductor_options)
        return out


def parse_option(text: str) -> tuple[str, Any]:
    """``"KEY=VALUE"`` -> ``(KEY, value)``; true/false, ints and floats are converted.

    Raises:
        argparse.ArgumentTypeError: no ``=`` in ``text``.
    """
    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE; got {text!r}")
    value: Any = raw
    if raw.lower() in ("true", "false"):
        value = raw.lower() == "true"
    else:
        for kind in (int, float):
            try:
                value = kind(raw)
                break
            except ValueError:
                pass
    return key.strip(), value


def build_parser() -> argparse.ArgumentParser:
    """The ``stpl-bench`` / ``python -m stpl.benchmark`` argument parser."""
    p = argparse.ArgumentParser(
        prog="stpl-bench",
        description=(
            "Throughput of stpl cells and presets: time, FLOPs, memory, and the step's FLOP "
            "rate as a fraction of the rate its own convolutions reach in isolation."
        ),
    )
    what = p.add_mutually_exclusive_group()
    what.add_argument("--model", choices=list_models(), help="a preset (default: predrnn)")
    what.add_argument("--cell", choices=CELL_NAMES, help="a single cell type")
    p.add_argument("--hidden", type=int, help="hidden channels per layer (preset: 64)")
    p.add_argument("--layers", type=int, help="stacked layers (preset: 4, cell: 1)")
    p.add_argument("--kernel", type=int, help="gate kernel size (preset's, cell: 5)")
    p.add_argument(
        "--image-size",
        type=int,
        help="H = W of the frames (the preset's image_size if it has one, else 64)",
    )
    p.add_argument("--patch-size", type=int, help="space-to-depth factor (4)")
    p.add_argument("--channels", type=int, default=1, help="image channels C (1)")
    p.add_argument("--batch", type=int, default=8, help="batch size B (8)")
    p.add_argument("--frames", type=int, default=20, help="frames per sequence T (20)")
    p.add_argument("--context", type=int, help="true-frame steps / generate context (T // 2)")
    p.add_argument("--dtype", choices=DTYPES, default="float32", help="bfloat16 = autocast")
    p.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile; the eager step is timed alongside and the speed-up reported",
    )
    p.add_argument("--compile-backend", default="inductor", help="torch.compile backend (inductor)")
    p.add_argument(
        "--inductor-option",
        type=parse_option,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an inductor setting for torch.compile(options=...), repeatable, "
        "e.g. layout_optimization=true (compile_step turns it off on the CPU)",
    )
    p.add_argument(
        "--compile-scope",
        choices=("step", "module"),
        default="step",
        help="compile one recurrent step (default) or the whole unrolled forward",
    )
    p.add_argument("--channels-last", action="store_true", help="channels_last parameters")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:N")
    p.add_argument("--mode", choices=MODES, default="train", help="what a step runs (train)")
    p.add_argument(
        "--checkpoint-steps", action="store_true", help="activation checkpointing over time"
    )
    p.add_argument("--repeats", type=int, help="fixed number of timed runs")
    p.add_argument(
        "--min-run-time",
        type=float,
        default=2.0,
        help="seconds of adaptive measurement when --repeats is not given (2.0)",
    )
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory run")
    p.add_argument(
        "--no-isolated", action="store_true", help="skip timing the convolutions in isolation"
    )
    p.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's)")
    p.add_argument("--seed", type=int, default=0, help="seed of parameters and inputs (0)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    return p


def config_from_args(args: argparse.Namespace) -> BenchConfig:
    """Turn parsed arguments into a validated :class:`BenchConfig`."""
    model = args.model if args.model is not None or args.cell is not None else "predrnn"
    image_size = args.image_size
    if image_size is None:  # e.g. 480 for the HKO-7 encoder-forecaster
        image_size = int(PRESETS[model].get("image_size", 64)) if model is not None else 64
    return BenchConfig(
        model=model,
        cell=args.cell,
        hidden=args.hidden,
        layers=args.layers,
        kernel=args.kernel,
        image_size=image_size,
        patch_size=args.patch_size,
        channels=args.channels,
        batch=args.batch,
        frames=args.frames,
        context=args.context,
        dtype=args.dtype,
        compile=args.compile,
        compile_backend=args.compile_backend,
        inductor_options=tuple(args.inductor_option),
        compile_scope=args.compile_scope,
        channels_last=args.channels_last,
        device=args.device,
        mode=args.mode,
        checkpoint_steps=args.checkpoint_steps,
        repeats=args.repeats,
        min_run_time=args.min_run_time,
        memory=not args.no_memory,
        isolated=not args.no_isolated,
        seed=args.seed,
        threads=args.threads,
    )
