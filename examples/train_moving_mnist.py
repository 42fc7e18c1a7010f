"""Train, evaluate and look at a video predictor on Moving digits, with no download.

Run ``python examples/train_moving_mnist.py --out runs/demo``: a small MoDeRNN (2 layers of
16 channels) learns to predict two bouncing digits (generated in the package, Moving MNIST
convention: 64x64x1, 10 -> 10 frames) on a 2-core CPU in about ten minutes (1000 steps). The
paper-size model is ``--hidden 64 --layers 4 --kernel 3 --batch-size 32 --loss mse_l1``; the
curriculum (scheduled sampling, or reverse scheduled sampling for ``predrnn_v2``) is the
paper's, compressed to ``--steps``. The default loss is MSE: in a short run, MoDeRNN's
MSE+L1 first learns to predict an empty background (L1 pulls sparse frames to zero).
On a busy machine, ``--threads 1`` avoids CPU oversubscription. It prints a progress bar with
the loss and throughput, evaluates on held-out sequences, and writes to ``--out``:

- ``metrics.json``: per-evaluation metrics (MSE/MAE per frame summed over pixels, PSNR, SSIM
  on 8-bit frames, as the papers report them) and the per-frame curves;
- ``checkpoint.pt``: model, optimizer, LR schedule, sampling schedule and step
  (``--resume DIR/checkpoint.pt`` continues exactly);
- ``predictions.gif``: truth (top) and prediction (bottom), side by side over time;
- ``frame_metrics.png``: per-frame MSE and SSIM curves, as in the papers' plots.

The same script trains on the files users have (``--data mnist_test_seq.npy`` or a PredRNN
``.npz``), on real MNIST digits (``--digits train-images-idx3-ubyte.gz``), and on several
processes or GPUs with ``torchrun --nproc_per_node=N examples/train_moving_mnist.py ...``
(DistributedDataParallel; gloo on CPU, nccl on GPU; only rank 0 writes files).
``--evaluate DIR/checkpoint.pt`` loads a checkpoint and prints the paper-style table.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Iterator
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


class UsageError(Exception):
    """A bad command line: printed as one message, exit code 2, nothing written."""


# --------------------------------------------------------------------------------------------
# command line


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("--model", default="modernn", help=f"one of {stpl.list_models()}")
    p.add_argument("--hidden", type=int, default=16, help="hidden channels per layer")
    p.add_argument("--layers", type=int, default=2, help="number of stacked cells")
    p.add_argument("--kernel", type=int, default=None, help="gate kernel (preset's if omitted)")
    p.add_argument("--steps", type=int, default=1000, help="optimizer steps")
    p.add_argument("--batch-size", type=int, default=8, help="global batch size")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument(
        "--loss",
        choices=["mse", "mse_l1"],
        default="mse",
        help="training loss (MoDeRNN's paper uses mse_l1, PredRNN mse)",
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
        action="store_true",
        help="torch.compile one recurrent step (model.compile_step())",
    )
    p.add_argument("--resume", default=None, help="checkpoint.pt to continue from")
    p.add_argument("--evaluate", default=None, help="checkpoint.pt to evaluate, then exit")
    p.add_argument(
        "--stop-at",
        type=int,
        default=None,
        help="stop at this step (checkpointed; --resume goes on)",
    )
    p.add_argument("--eval-every", type=int, default=100, help="steps between evaluations")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=0, help="DataLoader workers")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p.parse_args(argv)


def check_args(args: argparse.Namespace, world_size: int) -> None:
    """Validate everything before anything is written."""
    if args.model not in stpl.list_models():
        raise UsageError(f"--model {args.model!r} is unknown; known models: {stpl.list_models()}")
    for name in ("steps", "batch_size", "hidden", "layers", "context", "horizon", "eval_every"):
        if getattr(args, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be >= 1; got {getattr(args, name)}")
    if args.batch_size % world_size:
        raise UsageError(
            f"--batch-size {args.batch_size} does not divide over {world_size} processes"
        )
    for name in ("data", "digits", "resume", "evaluate"):
        path = getattr(args, name)
        if path is not None and not Path(path).is_file():
            raise UsageError(f"--{name} {path!r}: no such file")
    if args.data is not None and Path(args.data).suffix not in (".npy", ".npz"):
        raise UsageError(f"--data {args.data!r}: expected a .npy (mnist_test_seq) or .npz file")


# --------------------------------------------------------------------------------------------
# data, model, curriculum


def build_datasets(args: argparse.Namespace) -> tuple[Dataset[Tensor], Dataset[Tensor]]:
    """(train, held-out) datasets of ``(T, C, H, W)`` clips in [0, 1]."""
    seq_len = args.context + args.horizon
    if args.data is None:
        digits = load_idx_digits(args.digits) if args.digits else None
        common: dict[str, Any] = {
            "seq_len": seq_len,
            "image_size": args.image_size,
            "digit_size": args.digit_size,
        }
        train = MovingDigits(args.num_train, seed=args.seed, digits=digits, **common)
        held_out = MovingDigits(args.num_eval, seed=args.seed + 1_000_003, digits=digits, **common)
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
    n_eval = min(args.num_eval, max(1, n // 10))
    return Subset(full, range(n_eval, n)), Subset(full, range(n_eval))


def build_model(args: argparse.Namespace, channels: int) -> stpl.EncoderStackDecoder:
    overrides: dict[str, Any] = {
        "in_channels": channels,
        "hidden_channels": args.hidden,
        "num_layers": args.layers,
        "image_size": args.image_size,
    }
    if args.kernel is not None:
        overrides["kernel_size"] = args.kernel
    return stpl.get_model(args.model, **overrides)


def build_schedule(args: argparse.Namespace) -> training.SamplingSchedule:
    """The paper's curriculum, compressed to the run's length (same shape, fewer steps)."""
    half = max(args.steps // 2, 1)
    if args.model == "predrnn_v2":
        return training.ReverseScheduledSampling(
            s1=max(args.steps // 4, 1), s2=half + 1, alpha=max(args.steps / 40, 1.0)
        )
    if args.model == "modernn":
        return training.LinearScheduledSampling(total_iters=args.steps)
    return training.ScheduledSampling(rate=1.0 / half, stop_iter=half)


def loss_fn(args: argparse.Namespace, out: stpl.PredictorOutput, clips: Tensor) -> Tensor:
    target = clips[:, 1:].to(out.predictions.dtype)
    if args.loss == "mse_l1":  # MoDeRNN's criterion "MSE&L1" (as a mean, to keep lr sane)
        return training.mse_l1_loss(out.predictions, target, reduction="mean")
    loss = nn.functional.mse_loss(out.predictions, target)
    if out.decouple_loss is not None:
        loss = loss + 0.1 * out.decouple_loss  # PredRNN-V2's beta on Moving MNIST
    return loss


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
        clips = clips.to(device)
        context = clips[:, : args.context]
        with autocast(args, device):
            pred = model.generate(context, args.horizon).predictions
        preds.append(pred.float().clamp(0, 1).cpu())
        truths.append(clips[:, args.context :].float().cpu())
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


def mspred_example() -> Any:
    """``examples/mspred_example.py``: MSPred's loss, heatmap targets and pictures."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "mspred_example", Path(__file__).with_name("mspred_example.py")
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


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


def setup_distributed(device_arg: str) -> tuple[int, int, torch.device]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    device = torch.device(device_arg)
    if world > 1:
        if device.type == "cuda":
            local = int(os.environ.get("LOCAL_RANK", "0"))
            device = torch.device("cuda", local)
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return rank, world, device


def run(args: argparse.Namespace) -> int:
    rank, world, device = setup_distributed(args.device)
    try:
        check_args(args, world)
        if args.threads is not None:
            torch.set_num_threads(args.threads)
        if args.model == "mspred":  # every level and its heatmaps: examples/mspred_example.py
            if world > 1 or args.data or args.resume or args.evaluate or args.stop_at:
                raise UsageError(
                    "--model mspred trains on generated digits in one process (no --data, "
                    "--resume, --evaluate, --stop-at or torchrun)"
                )
            return mspred_example().run(args, device)
        torch.manual_seed(args.seed)
        train_set, eval_set = build_datasets(args)
        channels = train_set[0].shape[1]
        model = build_model(args, channels).to(device)
        if args.evaluate is not None:
            ckpt = torch.load(args.evaluate, map_location=device, weights_only=True)
            model.load_state_dict(ckpt["model"])
            loader = DataLoader(eval_set, batch_size=args.batch_size)
            result, _, _ = evaluate(model, loader, args, device)
            if rank == 0:
                print(paper_table(result, args.model))
            return 0

        out = Path(args.out)
        opt = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.999))
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=args.steps, eta_min=1e-6)
        sampling = build_schedule(args)
        step = 0
        history: list[dict[str, Any]] = []
        if args.resume is not None:
            ckpt = torch.load(args.resume, map_location=device, weights_only=True)
            model.load_state_dict(ckpt["model"])
            opt.load_state_dict(ckpt["optimizer"])
            sched.load_state_dict(ckpt["lr_schedule"])
            sampling.load_state_dict(ckpt["sampling"])
            step = int(ckpt["step"])
            history = list(ckpt.get("history", []))
        if rank == 0:
            out.mkdir(parents=True, exist_ok=True)

        if args.compile:
            # one recurrent step is compiled and reused at every step (seconds to a few
            # minutes); torch.compile(model) would unroll the loop over all frames
            model.compile_step()
        net: nn.Module = model
        if world > 1:
            net = DistributedDataParallel(model)

        per_rank = args.batch_size // world
        batch_sampler = StepBatches(len(train_set), per_rank, rank, world, args.seed, step)  # type: ignore[arg-type]
        loader = DataLoader(train_set, batch_sampler=batch_sampler, num_workers=args.workers)
        eval_loader = DataLoader(eval_set, batch_size=max(per_rank, 8))
        data = iter(loader)
        gen = torch.Generator(device=device)
        frames_per_step = args.batch_size * (args.context + args.horizon - 1)
        t0, fps = time.perf_counter(), 0.0
        last = args.steps if args.stop_at is None else min(args.stop_at, args.steps)
        while step < last:
            clips = next(data).to(device, non_blocking=True)
            b, t_total = clips.shape[:2]
            gen.manual_seed((args.seed * 1_000_003 + step) * world + rank)  # resumable masks
            mask, context = sampling.mask(b, t_total, args.context, device=device, generator=gen)
            with autocast(args, device):
                out_ = net(clips, context=context, mask=mask)
                loss = loss_fn(args, out_, clips)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            sampling.step()
            step += 1
            now = time.perf_counter()
            rate = frames_per_step / max(now - t0, 1e-9)
            fps = rate if fps == 0.0 else 0.9 * fps + 0.1 * rate  # smoothed
            t0 = now
            if rank == 0:
                progress(step, args.steps, loss.item(), fps, args.quiet)
            if step % args.eval_every == 0 or step == last:
                result, truth, pred = evaluate(model, eval_loader, args, device)
                if rank == 0:
                    result["step"] = step
                    result["loss"] = loss.item()
                    history.append(result)
                    if not args.quiet:
                        print(
                            f"\n  eval @ {step}: MSE {result['mse']:.1f}  MAE {result['mae']:.1f}"
                            f"  PSNR {result['psnr']:.2f}  SSIM {result['ssim']:.3f}"
                        )
                    ckpt = {
                        "model": model.state_dict(),
                        "optimizer": opt.state_dict(),
                        "lr_schedule": sched.state_dict(),
                        "sampling": sampling.state_dict(),
                        "step": step,
                        "history": history,
                        "args": vars(args),
                    }
                    save_outputs(out, ckpt, {"model": args.model, "history": history})
                    save_pictures(out, truth, pred, result, args.context)
                t0 = time.perf_counter()  # evaluation does not count in the throughput
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
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return run(args)
    except UsageError as e:
        if os.environ.get("RANK", "0") == "0":  # one message, also under torchrun
            print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
