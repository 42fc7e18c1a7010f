"""Train, evaluate and look at a video predictor on Moving digits, with no download.

Run ``python examples/train_moving_mnist.py --out runs/demo``: a small MoDeRNN (2 layers of
16 channels) learns to predict two bouncing digits (generated in the package, Moving MNIST
convention: 64x64x1, 10 -> 10 frames) on a 2-core CPU in under eight minutes (1000 steps: 7
min 39 s measured on this project's machine). The paper-size model is ``--hidden 64 --layers
4 --kernel 3 --batch-size 32 --loss mse_l1``; the curriculum (scheduled sampling, or reverse
scheduled sampling for ``predrnn_v2``) is the paper's, compressed to ``--steps``. The
default loss is MSE: in a short run, MoDeRNN's MSE+L1 first learns to predict an empty
background (L1 pulls sparse frames to zero). On a busy machine, ``--threads 1`` avoids CPU
oversubscription. It prints a progress bar with
the loss and throughput, evaluates on held-out sequences, and writes to ``--out``:

- ``metrics.json``: per-evaluation metrics (MSE/MAE per frame summed over pixels, PSNR, SSIM
  on 8-bit frames, as the papers report them) and the per-frame curves;
- ``checkpoint.pt``: model, optimizer, LR schedule, sampling schedule, random state, step
  and the run's settings
  (``--resume DIR/checkpoint.pt`` continues exactly);
- ``predictions.gif``: truth (top) and prediction (bottom), side by side over time;
- ``frame_metrics.png``: per-frame MSE and SSIM curves, as in the papers' plots.

The same script trains on the files users have (``--data mnist_test_seq.npy`` or a PredRNN
``.npz``; clips longer than ``--context + --horizon`` are cut to their first frames), on
real MNIST digits (``--digits train-images-idx3-ubyte.gz``), and on several processes or
GPUs with ``torchrun --nproc_per_node=N examples/train_moving_mnist.py ...``
(DistributedDataParallel; gloo on CPU, nccl on GPU; only rank 0 writes files).
``--evaluate DIR/checkpoint.pt`` loads a checkpoint and prints the paper-style table.
``--resume`` and ``--evaluate`` use the settings saved in the checkpoint for every option not
given on the command line (and print the ones they take); an architecture option that
contradicts the checkpoint is refused.

The loss is accumulated on the device and read every ``--log-every`` steps (reading it at
every step would make the host wait for the GPU at every step); on CUDA the batches are
pinned so that their copies overlap the computation. Every bad option is one
``train_moving_mnist.py: error: ...`` line with exit code 2, before anything is written.
What differs between models (the curriculum, the loss terms, the pictures) is one entry of
``RECIPES``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset

import stpl
from stpl import metrics, training
from stpl.data import MovingDigits, MovingMNISTFile, PredRNNNpz, load_idx_digits

PROG = Path(__file__).name


class UsageError(Exception):
    """A bad command line: printed as one ``prog: error: ...`` line, exit code 2, nothing
    written (argparse's convention; under torchrun only rank 0 prints it)."""


# --------------------------------------------------------------------------------------------
# command line


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--model", default="modernn", help=f"one of {stpl.list_models()}")
    p.add_argument(
        "--hidden",
        type=int,
        default=16,
        help="hidden channels per layer (" + ", ".join(OWN_WIDTHS) + ": their own widths)",
    )
    p.add_argument("--layers", type=int, default=2, help="number of stacked cells")
    p.add_argument("--kernel", type=int, default=None, help="gate kernel (preset's if omitted)")
    p.add_argument("--steps", type=int, default=1000, help="optimizer steps")
    p.add_argument("--batch-size", type=int, default=8, help="global batch size")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument(
        "--loss",
        choices=sorted(RECONSTRUCTION),
        default="mse",
        help="reconstruction loss (MoDeRNN's paper uses mse_l1, PredRNN mse); a model's own "
        "term (PredRNN-V2's decoupling) is added to either",
    )
    p.add_argument("--data", default=None, help=".npy (mnist_test_seq) or PredRNN .npz file")
    p.add_argument("--digits", default=None, help="MNIST idx file of digits for the generator")
    p.add_argument("--num-train", type=int, default=10_000, help="generated training sequences")
    p.add_argument("--num-eval", type=int, default=64, help="held-out sequences to evaluate")
    p.add_argument("--context", type=int, default=10, help="observed frames")
    p.add_argument("--horizon", type=int, default=10, help="predicted frames")
    p.add_argument("--image-size", type=int, default=64, help="generated frame size")
    p.add_argument("--digit-size", type=int, default=28, help="generated digit size")
    p.add_argument("--out", default="runs/demo", help="output directory")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--amp", choices=["none", "bf16"], default="none", help="autocast dtype")
    p.add_argument(
        "--compile",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="torch.compile one recurrent step (model.compile_step())",
    )
    p.add_argument(
        "--resume",
        default=None,
        help="checkpoint.pt to continue from (its settings are used unless given here)",
    )
    p.add_argument(
        "--evaluate",
        default=None,
        help="checkpoint.pt to evaluate with its own settings, then exit",
    )
    p.add_argument(
        "--stop-at",
        type=int,
        default=None,
        help="stop at this step (checkpointed; --resume goes on)",
    )
    p.add_argument("--eval-every", type=int, default=100, help="steps between evaluations")
    p.add_argument(
        "--log-every",
        type=int,
        default=10,
        help="steps between progress updates (each one waits for the device once)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=0, help="DataLoader workers")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def explicit_flags(argv: list[str] | None) -> set[str]:
    """The options given on the command line (as argparse ``dest`` names)."""
    p = build_parser()
    for action in p._actions:
        action.default = argparse.SUPPRESS
    return set(vars(p.parse_args(sys.argv[1:] if argv is None else argv)))


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


# The weights fit only the architecture they were trained with.
ARCHITECTURE = ("model", "hidden", "layers", "kernel", "image_size")
# What --resume and --evaluate take from the checkpoint unless given on the command line.
RUN_SETTINGS = (
    *ARCHITECTURE,
    *("steps", "batch_size", "lr", "loss", "data", "digits", "num_train", "num_eval"),
    *("context", "horizon", "digit_size", "amp", "compile", "eval_every", "log_every", "seed"),
)


def check_args(args: argparse.Namespace, world_size: int) -> None:
    """Validate every option before anything is built or written (``UsageError``)."""
    if args.model not in stpl.list_models():
        raise UsageError(f"--model {args.model!r} is unknown; known models: {stpl.list_models()}")
    positive = (
        *("steps", "batch_size", "hidden", "layers", "context", "horizon", "eval_every"),
        *("log_every", "num_train", "num_eval", "image_size", "digit_size"),
    )
    for name in positive:
        if getattr(args, name) < 1:
            raise UsageError(f"{flag(name)} must be >= 1; got {getattr(args, name)}")
    for name in ("threads", "stop_at", "kernel"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise UsageError(f"{flag(name)} must be >= 1 (or left out); got {value}")
    if args.workers < 0:
        raise UsageError(
            f"--workers must be >= 0 (0: load in the main process); got {args.workers}"
        )
    if args.seed < 0:
        raise UsageError(f"--seed must be >= 0; got {args.seed}")
    if not (args.lr > 0 and math.isfinite(args.lr)):
        raise UsageError(f"--lr must be a positive number; got {args.lr}")
    if args.data is None and args.digit_size > args.image_size:
        raise UsageError(
            f"--digit-size {args.digit_size} does not fit in --image-size {args.image_size}"
        )
    if args.batch_size % world_size:
        raise UsageError(
            f"--batch-size {args.batch_size} does not divide over {world_size} processes"
        )
    if args.resume is not None and args.evaluate is not None:
        raise UsageError("--resume and --evaluate exclude each other")
    for name in ("data", "digits", "resume", "evaluate"):
        path = getattr(args, name)
        if path is not None and not Path(path).is_file():
            raise UsageError(f"{flag(name)} {path!r}: no such file")
    if args.data is not None and Path(args.data).suffix not in (".npy", ".npz"):
        raise UsageError(f"--data {args.data!r}: expected a .npy (mnist_test_seq) or .npz file")
    check_device(args.device)


def check_device(name: str) -> torch.device:
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError) as e:
        raise UsageError(f"--device {name!r} is not a device: {e}") from None
    backend = {"cuda": torch.cuda, "mps": getattr(torch.backends, "mps", None)}.get(device.type)
    if device.type != "cpu" and backend is not None and not backend.is_available():
        raise UsageError(f"--device {name}: {device.type} is not available here (try --device cpu)")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise UsageError(f"--device {name}: only {torch.cuda.device_count()} CUDA devices")
    return device


def apply_checkpoint_settings(
    args: argparse.Namespace, saved: dict[str, Any], given: set[str], option: str
) -> list[str]:
    """Take the checkpoint's run settings for every option not given on the command line.

    Returns the ``--flag value`` items that differ from this command line's values. An
    architecture option given here that contradicts the checkpoint is a ``UsageError``.
    """
    changed = []
    for name in RUN_SETTINGS:
        if name not in saved:
            continue
        value = saved[name]
        if name in given:
            if name in ARCHITECTURE and getattr(args, name) != value:
                raise UsageError(
                    f"{flag(name)} {getattr(args, name)} contradicts the checkpoint of {option} "
                    f"({flag(name)} {value}): its weights fit only that architecture; leave "
                    f"{flag(name)} out"
                )
            continue
        if getattr(args, name) != value:
            changed.append(f"{flag(name)} {value}")
            setattr(args, name, value)
    return changed


def saved_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The options as the checkpoint keeps them (file paths made absolute)."""
    settings = dict(vars(args))
    for name in ("data", "digits"):
        if settings[name] is not None:
            settings[name] = str(Path(settings[name]).resolve())
    return settings


# --------------------------------------------------------------------------------------------
# data, model, curriculum


class FirstFrames(Dataset[Tensor]):
    """The first ``length`` frames of each clip of a dataset of longer clips."""

    def __init__(self, clips: Dataset[Tensor], length: int) -> None:
        self.clips, self.length = clips, length

    def __len__(self) -> int:
        return len(self.clips)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> Tensor:
        return self.clips[index][: self.length]


def build_datasets(args: argparse.Namespace) -> tuple[Dataset[Tensor], Dataset[Tensor]]:
    """(train, held-out) datasets of ``(context + horizon, C, H, W)`` clips in [0, 1]."""
    seq_len = args.context + args.horizon
    if args.data is None:
        try:
            digits = load_idx_digits(args.digits) if args.digits else None
            common: dict[str, Any] = {
                "seq_len": seq_len,
                "image_size": args.image_size,
                "digit_size": args.digit_size,
            }
            train = MovingDigits(args.num_train, seed=args.seed, digits=digits, **common)
            held_out = MovingDigits(
                args.num_eval, seed=args.seed + 1_000_003, digits=digits, **common
            )
        except (ValueError, OSError) as e:
            raise UsageError(f"cannot generate the digits: {e}") from None
        return train, held_out
    try:
        full: Dataset[Tensor] = (
            MovingMNISTFile(args.data) if args.data.endswith(".npy") else PredRNNNpz(args.data)
        )
    except (ValueError, OSError) as e:
        raise UsageError(f"--data {args.data!r}: {e}") from None
    n = len(full)  # type: ignore[arg-type]
    t = full[0].shape[0]
    if t < seq_len:
        raise UsageError(f"--data clips have {t} frames; --context + --horizon needs {seq_len}")
    if t > seq_len:  # train and evaluate on the first context + horizon frames of each clip
        full = FirstFrames(full, seq_len)
    if n < 2:
        raise UsageError(f"--data {args.data!r} holds {n} clip; it needs training and held-out")
    n_eval = min(args.num_eval, max(1, n // 10))
    return Subset(full, range(n_eval, n)), Subset(full, range(n_eval))


def build_stack(args: argparse.Namespace, frame_shape: tuple[int, int, int]) -> nn.Module:
    """A preset of the encoder-stack-decoder family with the flags' width and depth."""
    overrides: dict[str, Any] = {
        "in_channels": frame_shape[0],
        "hidden_channels": args.hidden,
        "num_layers": args.layers,
        "image_size": frame_shape[1:],
    }
    if args.kernel is not None:
        overrides["kernel_size"] = args.kernel
    return stpl.get_model(args.model, **overrides)


def scheduled_sampling(args: argparse.Namespace) -> training.SamplingSchedule | None:
    """PredRNN's scheduled sampling, compressed to the run's length (same shape)."""
    half = max(args.steps // 2, 1)
    return training.ScheduledSampling(rate=1.0 / half, stop_iter=half)


def reverse_scheduled_sampling(args: argparse.Namespace) -> training.SamplingSchedule | None:
    """PredRNN-V2's reverse scheduled sampling, compressed to the run's length."""
    half = max(args.steps // 2, 1)
    return training.ReverseScheduledSampling(
        s1=max(args.steps // 4, 1), s2=half + 1, alpha=max(args.steps / 40, 1.0)
    )


def linear_scheduled_sampling(args: argparse.Namespace) -> training.SamplingSchedule | None:
    """MoDeRNN's linear schedule over the whole run."""
    return training.LinearScheduledSampling(total_iters=args.steps)


RECONSTRUCTION: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "mse": nn.functional.mse_loss,
    # MoDeRNN's criterion "MSE&L1", as a mean to keep the learning rate sane
    "mse_l1": lambda pred, target: training.mse_l1_loss(pred, target, reduction="mean"),
}


def reconstruction_loss(
    args: argparse.Namespace, out: Any, clips: Tensor, model: nn.Module | None = None
) -> Tensor:
    """``--loss`` between the predictions and the frames they predict (the last ones)."""
    pred = out.predictions
    target = clips[:, clips.shape[1] - pred.shape[1] :].to(pred.dtype)
    return RECONSTRUCTION[args.loss](pred, target)


@dataclass(frozen=True)
class Recipe:
    """What differs between models in this script: adding a model is one ``RECIPES`` entry.

    Attributes:
        build: ``(args, (C, H, W)) -> model``.
        schedule: ``args -> SamplingSchedule`` (the paper's curriculum), or ``None`` for a
            model trained without one (then ``forward(clips, context=--context)``).
        aux_weight: weight of the model's own loss term (``out.decouple_loss``; PredRNN-V2's
            decoupling), added to the reconstruction loss whatever ``--loss`` is.
        loss: ``(args, output, clips, model) -> reconstruction loss`` (before the auxiliary
            term; the model for losses on its parameters, e.g. PhyDNet's moment loss).
        pictures: ``(out_dir, truth, prediction, result, args)`` writes the pictures.
    """

    build: Callable[[argparse.Namespace, tuple[int, int, int]], nn.Module] = build_stack
    schedule: Callable[[argparse.Namespace], training.SamplingSchedule | None] = scheduled_sampling
    aux_weight: float = 1.0
    loss: Callable[[argparse.Namespace, Any, Tensor, nn.Module | None], Tensor] = (
        reconstruction_loss
    )
    pictures: Callable[[Path, Tensor, Tensor, dict[str, Any], argparse.Namespace], None] = (
        lambda out, truth, pred, result, args: save_pictures(out, truth, pred, result, args.context)
    )


OWN_WIDTHS = ("phydnet", "swinlstm", "swinlstm_b", "encoder_forecaster")
"""Presets built with their own widths, not from ``--hidden``/``--layers``/``--kernel``: PhyDNet
(latent 64, ConvLSTM 128-128-64), SwinLSTM (embedding 128, Swin depths) and the
encoder-forecaster (64-192-192 over three scales)."""


def build_own_widths(args: argparse.Namespace, frame_shape: tuple[int, int, int]) -> nn.Module:
    """A preset of :data:`OWN_WIDTHS` at its paper's widths, on the run's frames."""
    return stpl.get_model(args.model, in_channels=frame_shape[0], image_size=frame_shape[1:])


def batch_teacher_forcing(args: argparse.Namespace) -> training.SamplingSchedule | None:
    """PhyDNet's curriculum: one coin per batch, ratio 1 - 0.003 * epoch (0 at half here)."""
    return training.BatchTeacherForcing(rate=1.0 / max(args.steps // 2, 1))


def phydnet_objective(
    args: argparse.Namespace, out: Any, clips: Tensor, model: nn.Module | None = None
) -> Tensor:
    """The paper's objective: the sum over steps of the per-step MSE, plus the moment loss."""
    return training.phydnet_loss(out.predictions, clips, model)


RECIPES: dict[str, Recipe] = {
    # beta of the decoupling loss on Moving MNIST (PredRNN-V2's scripts)
    "predrnn_v2": Recipe(schedule=reverse_scheduled_sampling, aux_weight=0.1),
    "modernn": Recipe(schedule=linear_scheduled_sampling),
    "phydnet": Recipe(
        build=build_own_widths, schedule=batch_teacher_forcing, loss=phydnet_objective
    ),
    "swinlstm": Recipe(build=build_own_widths),
    "swinlstm_b": Recipe(build=build_own_widths),
    "encoder_forecaster": Recipe(build=build_own_widths, schedule=lambda args: None),
}


def recipe(name: str) -> Recipe:
    return RECIPES.get(name, Recipe())


def loss_fn(
    args: argparse.Namespace, out: Any, clips: Tensor, model: nn.Module | None = None
) -> Tensor:
    """The model's reconstruction loss plus its weighted auxiliary term, if it has one."""
    r = recipe(args.model)
    loss = r.loss(args, out, clips, model)
    aux = getattr(out, "decouple_loss", None)
    if aux is not None:
        loss = loss + r.aux_weight * aux
    return loss


def build_model(args: argparse.Namespace, frame_shape: tuple[int, int, int]) -> nn.Module:
    """The model, checked on one zero clip: flags it cannot take are a ``UsageError``."""
    try:
        model = recipe(args.model).build(args, frame_shape)
        zeros = torch.zeros(1, args.context, *frame_shape)
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            model.generate(zeros, args.horizon)  # type: ignore[operator]
    except (ValueError, TypeError) as e:
        c, h, w = frame_shape
        raise UsageError(f"--model {args.model} cannot run on {c}x{h}x{w} frames: {e}") from None
    return model


# --------------------------------------------------------------------------------------------
# evaluation and pictures


@torch.no_grad()
def evaluate(
    model: nn.Module, loader: DataLoader[Tensor], args: argparse.Namespace, device: torch.device
) -> tuple[dict[str, Any], Tensor, Tensor]:
    """Paper-style metrics on the predicted frames; also one (truth, prediction) pair."""
    model.eval()
    preds, truths = [], []
    for clips in loader:
        clips = clips.to(device, non_blocking=True)
        context = clips[:, : args.context]
        with autocast(args, device):
            pred = model.generate(context, args.horizon).predictions
        preds.append(pred.float().clamp(0, 1).cpu())
        truths.append(clips[:, args.context : args.context + args.horizon].float().cpu())
    model.train()
    pred, truth = torch.cat(preds), torch.cat(truths)
    result = {
        "mse": metrics.mse(pred, truth).item(),
        "mae": metrics.mae(pred, truth).item(),
        "psnr": metrics.psnr(pred, truth).item(),
        "ssim": metrics.ssim(pred, truth).item(),
        "per_frame": {
            "mse": metrics.mse(pred, truth, per_frame=True).tolist(),
            "ssim": metrics.ssim(pred, truth, per_frame=True).tolist(),
        },
    }
    return result, truth[0], pred[0]


def paper_table(result: dict[str, Any], name: str) -> str:
    head = "| model | MSE | MAE | PSNR | SSIM |\n|---|---|---|---|---|\n"
    return head + (
        f"| {name} | {result['mse']:.1f} | {result['mae']:.1f} | "
        f"{result['psnr']:.3f} | {result['ssim']:.3f} |"
    )


def save_gif(path: Path, truth: Tensor, pred: Tensor) -> None:
    """Truth (top) over prediction (bottom), one GIF frame per time step, 2x enlarged."""
    from PIL import Image

    frames = []
    for t in range(truth.shape[0]):
        pair = torch.cat([truth[t], pred[t]], dim=-2)  # (C, 2H, W)
        pair = (pair.clamp(0, 1) * 255).to(torch.uint8)
        img = pair[0] if pair.shape[0] == 1 else pair[:3].permute(1, 2, 0)
        im = Image.fromarray(img.numpy())
        frames.append(im.resize((im.width * 2, im.height * 2), Image.NEAREST))
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=200, loop=0)


def save_plot(path: Path, result: dict[str, Any], context: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(8, 3))
    frames = list(range(context + 1, context + 1 + len(result["per_frame"]["mse"])))
    for ax, key, label in zip(axes, ("mse", "ssim"), ("MSE per frame", "SSIM"), strict=True):
        ax.plot(frames, result["per_frame"][key], marker="o")
        ax.set_xlabel("frame")
        ax.set_title(label)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_atomic(path: Path, write: Any) -> None:
    """Write through a temporary file in the same folder, then rename: never half-written."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=path.suffix)
    os.close(fd)
    try:
        write(Path(tmp))
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600 files
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def save_outputs(out: Path, checkpoint: dict[str, Any] | None, summary: dict[str, Any]) -> None:
    """``checkpoint.pt`` (if given) and ``metrics.json``, each written atomically."""
    if checkpoint is not None:
        write_atomic(out / "checkpoint.pt", lambda p: torch.save(checkpoint, p))
    write_atomic(out / "metrics.json", lambda p: p.write_text(json.dumps(summary, indent=2)))


def save_pictures(
    out: Path, truth: Tensor, pred: Tensor, result: dict[str, Any], context: int
) -> None:
    """``predictions.gif`` and ``frame_metrics.png``, each written atomically."""
    write_atomic(out / "predictions.gif", lambda p: save_gif(p, truth, pred))
    write_atomic(out / "frame_metrics.png", lambda p: save_plot(p, result, context))


# --------------------------------------------------------------------------------------------
# training


def autocast(args: argparse.Namespace, device: torch.device) -> torch.autocast:
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.amp == "bf16")


class StepBatches:
    """Per-rank batch indices for steps ``start, start+1, ...`` from a DistributedSampler.

    The indices of step s depend only on (seed, s, rank), so a resumed run reads exactly the
    batches the uninterrupted run would have read, without loading the skipped ones.
    """

    def __init__(self, n: int, per_rank: int, rank: int, world: int, seed: int, start: int):
        self.sampler = DistributedSampler(
            range(n), num_replicas=world, rank=rank, shuffle=True, seed=seed, drop_last=True
        )
        self.per_rank, self.start = per_rank, start
        self.steps_per_epoch = len(self.sampler) // per_rank
        if self.steps_per_epoch == 0:
            raise UsageError(f"the training set ({n} clips) is smaller than one batch per rank")

    def __iter__(self) -> Iterator[list[int]]:
        epoch, offset = divmod(self.start, self.steps_per_epoch)
        while True:
            self.sampler.set_epoch(epoch)
            idx = list(self.sampler)
            for k in range(offset, self.steps_per_epoch):
                yield idx[k * self.per_rank : (k + 1) * self.per_rank]
            offset, epoch = 0, epoch + 1


def progress(step: int, total: int, loss: float, fps: float, quiet: bool) -> None:
    """One progress line, redrawn in place: ``loss`` is the mean since the last update."""
    if quiet:
        return
    width = 30
    done = int(width * step / total)
    bar = "#" * done + "-" * (width - done)
    end = "\n" if step == total else ""
    print(f"\r[{bar}] {step}/{total} loss {loss:.4f} {fps:6.1f} frames/s", end=end, flush=True)


def ranks_in_sync(model: nn.Module) -> bool:
    """Whether every parameter is bitwise identical on all ranks (a DDP sanity check)."""
    flat = torch.cat([p.detach().flatten().float() for p in model.parameters()])
    low, high = flat.clone(), flat.clone()
    dist.all_reduce(low, op=dist.ReduceOp.MIN)
    dist.all_reduce(high, op=dist.ReduceOp.MAX)
    return bool(torch.equal(low, high))


def setup_distributed(device: torch.device) -> tuple[int, int, torch.device]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if world > 1:
        if device.type == "cuda":
            local = int(os.environ.get("LOCAL_RANK", "0"))
            device = torch.device("cuda", local)
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return rank, world, device


def load_checkpoint(path: str, option: str) -> dict[str, Any]:
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # any unreadable file: one message, not a traceback
        raise UsageError(f"{option} {path!r} is not a readable checkpoint: {e}") from None
    if not isinstance(ckpt, dict) or "model" not in ckpt:
        raise UsageError(f"{option} {path!r} is not a checkpoint written by this script")
    return ckpt


def mspred_example() -> Any:
    """``examples/mspred_example.py``: MSPred's loss, heatmap targets and pictures."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "mspred_example", Path(__file__).with_name("mspred_example.py")
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("mspred_example", module)
    spec.loader.exec_module(module)
    return module


def run(args: argparse.Namespace, given: set[str]) -> int:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    check_args(args, world)
    if args.model == "mspred":  # every level and its heatmaps: examples/mspred_example.py
        if world > 1 or args.data or args.resume or args.evaluate or args.stop_at:
            raise UsageError(
                "--model mspred trains on generated digits in one process (no --data, "
                "--resume, --evaluate, --stop-at or torchrun)"
            )
        if args.threads is not None:
            torch.set_num_threads(args.threads)
        return int(mspred_example().run(args, check_device(args.device)))
    option = "--evaluate" if args.evaluate is not None else "--resume"
    ckpt = None
    if args.evaluate is not None or args.resume is not None:
        ckpt = load_checkpoint(args.evaluate or args.resume, option)
        saved = ckpt.get("args")
        if isinstance(saved, dict):
            changed = apply_checkpoint_settings(args, saved, given, option)
            check_args(args, world)
            if changed and rank == 0 and not args.quiet:
                print(f"{option}: the checkpoint's settings {' '.join(changed)}")
        stop_at, done = args.stop_at, int(ckpt.get("step", 0))
        if args.resume is not None and stop_at is not None and stop_at <= done:
            raise UsageError(f"--stop-at {stop_at} is not after the checkpoint's step {done}")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    train_set, eval_set = build_datasets(args)
    frame_shape = tuple(train_set[0].shape[1:])
    model = build_model(args, frame_shape)  # type: ignore[arg-type]
    if ckpt is not None:
        try:
            model.load_state_dict(ckpt["model"])
        except RuntimeError as e:
            first = str(e).strip().splitlines()[-1].strip()
            raise UsageError(
                f"{option}: the checkpoint's weights do not fit --model {args.model} with "
                f"these flags (a checkpoint without saved settings needs every training "
                f"flag repeated): {first}"
            ) from None

    rank, world, device = setup_distributed(check_device(args.device))
    try:
        model.to(device)
        pin = device.type == "cuda"  # page-locked batches: the non_blocking copies overlap
        if args.evaluate is not None:
            loader = DataLoader(eval_set, batch_size=args.batch_size, pin_memory=pin)
            result, _, _ = evaluate(model, loader, args, device)
            if rank == 0:
                print(paper_table(result, args.model))
            return 0
        return train(args, model, train_set, eval_set, ckpt, rank, world, device)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def train(
    args: argparse.Namespace,
    model: nn.Module,
    train_set: Dataset[Tensor],
    eval_set: Dataset[Tensor],
    ckpt: dict[str, Any] | None,
    rank: int,
    world: int,
    device: torch.device,
) -> int:
    out = Path(args.out)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.999))
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=args.steps, eta_min=1e-6)
    sampling = recipe(args.model).schedule(args)
    step = 0
    history: list[dict[str, Any]] = []
    if ckpt is not None:
        opt.load_state_dict(ckpt["optimizer"])
        sched.load_state_dict(ckpt["lr_schedule"])
        if sampling is not None:
            sampling.load_state_dict(ckpt["sampling"])
        if "rng" in ckpt:
            torch.set_rng_state(ckpt["rng"])
        step = int(ckpt["step"])
        history = list(ckpt.get("history", []))
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)

    if args.compile:
        # one recurrent step is compiled and reused at every step (seconds to a few
        # minutes); torch.compile(model) would unroll the loop over all frames
        model.compile_step()  # type: ignore[operator]
    net: nn.Module = model
    if world > 1:
        net = DistributedDataParallel(model)

    per_rank = args.batch_size // world
    batch_sampler = StepBatches(len(train_set), per_rank, rank, world, args.seed, step)  # type: ignore[arg-type]
    pin = device.type == "cuda"  # page-locked batches: the non_blocking copies overlap
    loader = DataLoader(
        train_set, batch_sampler=batch_sampler, num_workers=args.workers, pin_memory=pin
    )
    eval_loader = DataLoader(eval_set, batch_size=max(per_rank, 8), pin_memory=pin)
    data = iter(loader)
    gen = torch.Generator(device=device)
    frames_per_step = args.batch_size * (args.context + args.horizon - 1)
    last = args.steps if args.stop_at is None else min(args.stop_at, args.steps)
    # the loss is summed on the device and read every --log-every steps: reading it at
    # every step (loss.item()) would make the host wait for the device at every step
    loss_sum = torch.zeros((), device=device)
    pending, mean_loss = 0, math.nan
    t_log = time.perf_counter()
    while step < last:
        clips = next(data).to(device, non_blocking=True)
        b, t_total = clips.shape[:2]
        gen.manual_seed((args.seed * 1_000_003 + step) * world + rank)  # resumable masks
        if sampling is None:
            mask, context = None, args.context
        else:
            mask, context = sampling.mask(b, t_total, args.context, device=device, generator=gen)
        with autocast(args, device):
            out_ = net(clips, context=context, mask=mask)
            loss = loss_fn(args, out_, clips, model)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if sampling is not None:
            sampling.step()
        step += 1
        loss_sum += loss.detach().float()
        pending += 1
        evaluating = step % args.eval_every == 0 or step == last
        if step % args.log_every == 0 or evaluating:
            mean_loss = (loss_sum / pending).item()  # the host waits for the device here
            now = time.perf_counter()
            fps = frames_per_step * pending / max(now - t_log, 1e-9)
            loss_sum.zero_()
            pending, t_log = 0, now
            if rank == 0:
                progress(step, args.steps, mean_loss, fps, args.quiet)
        if evaluating:
            result, truth, pred = evaluate(model, eval_loader, args, device)
            if rank == 0:
                result["step"] = step
                result["loss"] = mean_loss
                history.append(result)
                if not args.quiet:
                    print(
                        f"\n  eval @ {step}: MSE {result['mse']:.1f}  MAE {result['mae']:.1f}"
                        f"  PSNR {result['psnr']:.2f}  SSIM {result['ssim']:.3f}"
                    )
                checkpoint = {
                    "model": model.state_dict(),
                    "optimizer": opt.state_dict(),
                    "lr_schedule": sched.state_dict(),
                    "sampling": None if sampling is None else sampling.state_dict(),
                    "rng": torch.get_rng_state(),
                    "step": step,
                    "history": history,
                    "args": saved_settings(args),
                }
                save_outputs(out, checkpoint, {"model": args.model, "history": history})
                recipe(args.model).pictures(out, truth, pred, result, args)
            t_log = time.perf_counter()  # evaluation does not count in the throughput
    if world > 1:
        in_sync = ranks_in_sync(model)
        if rank == 0:
            print(f"parameters identical on all {world} ranks: {in_sync}")
            summary = {"model": args.model, "history": history, "ranks_in_sync": in_sync}
            save_outputs(out, None, summary)
    if rank == 0 and not args.quiet:
        print(f"done: {step} steps; files in {out}/")
        print(paper_table(history[-1], args.model))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return run(args, explicit_flags(argv))
    except UsageError as e:
        if os.environ.get("RANK", "0") == "0":  # one message, also under torchrun
            print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
