"""MSPred: stpl's HierarchicalPredictor against the real reference model, side by side.

The reference is AIS-Bonn/MSPred's ``SpatioTempHierarch`` (ConvLSTM levels), imported from
a local checkout given with ``--reference-root`` (the folder that holds its ``models/``
package, i.e. ``MSPred/src``); this repository does not contain it. Both models get the
same weights (the reference's ``init_weights`` with a seed, then converted with
``stpl.interop.load_reference``), the same frames and the same heatmap targets, and run the
reference trainer's step: forward (context K, N predictions per level), the loss
``sum_h alpha_h MSE_h + beta KL`` and backward (``--mode train``), or the evaluation
forward under ``torch.no_grad()`` (``--mode forward``). stpl runs it twice: with
``num_preds=N`` (it then computes only the outputs the loss reads, like the reference's
collection) and with every step's outputs (``num_preds=None``, its default). The three take
turns (the benchmark tool's ``time_interleaved``), in float32 and under bfloat16 autocast;
each (dtype, mode) writes ``twin-mspred-<dtype>-<mode>.json`` (the format of the other
``twin-*`` results) with the medians, ``ratio`` = reference / stpl(num_preds) and
``ratio_every_step`` = reference / stpl(every step) (> 1: stpl is faster). It checks first
that both models compute the same predictions and loss (same seed, hence the same latent
noise)::

    python benchmarks/twin_mspred.py --reference-root /path/to/MSPred/src \\
        --num-filters 16 --hidden 32 --image-size 32 --batch 4 --frames 25 --context 9 \\
        --num-preds 2 --threads 1 --repeats 5 --out benchmarks/results

Without size options it runs the paper's Moving MNIST configuration (64x64x3, B=16,
T=57, K=17, N=5): minutes per step on a CPU, seconds on a GPU.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import stpl
from stpl.benchmark._measure import machine_info, time_interleaved
from stpl.training import mspred_loss

_MODEL_PARAMS: dict[str, Any] = {
    "model_type": "SpatioTempHierarchConvLSTM",
    "HierarchLSTM": {
        "ancestral_sampling": True,
        "aux_outputs": True,
        "hidden_dim": 128,
        "num_hierarch": 3,
        "num_layers": 4,
        "periods": [1, 4, 8],
        "stochastic": True,
        "n_hmap_channels": [1, 1],
    },
    "LSTM": {"hidden_dim": 64, "num_layers": 2},
    "LSTM_Posterior": {"hidden_dim": 64, "latent_dim": 10, "num_layers": 1},
    "LSTM_Prior": {"hidden_dim": 64, "latent_dim": 10, "num_layers": 1},
    "enc_dec": {"dim": 512, "num_filters": 64, "extra_deep": False},
    "enc_dec_type": "DCGAN",
    "autoreg_mode": "LAST_PRED_FEATS",
    "last_context_residuals": True,
}
"""``src/configs/mmnist.json``'s model section (the reference builds from this dict)."""


def build_reference(root: str, args: argparse.Namespace) -> nn.Module:
    """The reference ``SpatioTempHierarch`` with ``init_weights`` under ``--seed``."""
    sys.path.insert(0, root)
    import models  # the reference's package (MSPred/src/models)

    params = copy.deepcopy(_MODEL_PARAMS)
    params["num_channels"] = args.channels
    params["img_size"] = [args.image_size, args.image_size]
    params["enc_dec"].update(num_filters=args.num_filters, dim=8 * args.num_filters)
    params["HierarchLSTM"].update(hidden_dim=args.hidden, num_layers=args.layers)
    params["LSTM_Prior"].update(latent_dim=args.latent, hidden_dim=args.latent_hidden)
    params["LSTM_Posterior"].update(latent_dim=args.latent, hidden_dim=args.latent_hidden)
    torch.manual_seed(args.seed)
    model = models.SpatioTempHierarch(model_params=params, linear=False, stochastic=True)
    model.apply(models.init_weights)
    return model.to(args.device)  # type: ignore[no-any-return]


def reference_loss(
    out: dict[str, Any], frames: Tensor, heatmaps: list[Tensor], context: int, num_preds: int
) -> Tensor:
    """The reference trainer's loss (``02_train.py``, ``lib/losses.py``) from its outputs."""
    alphas = (0.2, 0.5, 0.5)
    loss = alphas[0] * F.mse_loss(out["preds"][0], frames[:, context : context + num_preds])
    for h in (1, 2):
        target = heatmaps[h - 1][:, out["target_masks"][h]]
        loss = loss + alphas[h] * F.mse_loss(out["preds"][h], target)
    kl = frames.new_zeros(())
    for h in range(3):
        mu_q, lv_q = torch.stack(out["mu_post"][h], 1), torch.stack(out["logvar_post"][h], 1)
        mu_p, lv_p = torch.stack(out["mu_prior"][h], 1), torch.stack(out["logvar_prior"][h], 1)
        s_q, s_p = lv_q.mul(0.5).exp(), lv_p.mul(0.5).exp()
        kld = torch.log(s_p / s_q) + (lv_q.exp() + (mu_q - mu_p) ** 2) / (2 * lv_p.exp()) - 0.5
        kl = kl + kld.sum() / kld.shape[0]
    return loss + 1e-4 * kl


def make_step(
    model: nn.Module,
    mode: str,
    dtype: str,
    frames: Tensor,
    heatmaps: list[Tensor],
    context: int,
    num_preds: int,
    *,
    reference: bool = False,
    collect: int | None = None,
) -> Callable[[], None]:
    """One timed step: the trainer's forward + loss + backward, or the evaluation forward."""
    device_type = frames.device.type

    def forward() -> Any:
        if reference:
            return model(frames, context=context, num_preds=num_preds)
        return model(frames, context=context, num_preds=collect)

    def loss_of(out: Any) -> Tensor:
        if reference:
            return reference_loss(out, frames, heatmaps, context, num_preds)
        return mspred_loss(out, frames, heatmaps, context=context, num_preds=num_preds).total

    def run() -> None:
        low = torch.autocast(device_type, dtype=torch.bfloat16, enabled=dtype == "bfloat16")
        if mode == "train":
            model.zero_grad(set_to_none=True)
            with low:
                loss = loss_of(forward())
            loss.float().backward()
        else:
            with torch.no_grad(), low:
                forward()

    return run


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--reference-root", required=True, help="MSPred/src of a local checkout")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--channels", type=int, default=3)
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--num-filters", type=int, default=64)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--latent", type=int, default=10)
    p.add_argument("--latent-hidden", type=int, default=64)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--frames", type=int, default=57, help="T (context + 8 x num_preds)")
    p.add_argument("--context", type=int, default=17)
    p.add_argument("--num-preds", type=int, default=5)
    p.add_argument("--mode", choices=["train", "forward"], nargs="+", default=["train", "forward"])
    p.add_argument(
        "--dtype", choices=["float32", "bfloat16"], nargs="+", default=["float32", "bfloat16"]
    )
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="folder for twin-mspred-<dtype>-<mode>.json")
    p.add_argument("--suffix", default="", help="appended to the result file names")
    args = p.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    ref = build_reference(args.reference_root, args)
    ours = stpl.interop.load_reference(
        "mspred", ref.state_dict(), patch_size=1, image_channels=args.channels
    ).to(device)
    g = torch.Generator().manual_seed(args.seed + 1)
    shape = (args.batch, args.frames, args.channels, args.image_size, args.image_size)
    frames = torch.rand(shape, generator=g).to(device)
    heatmaps = [torch.rand(*shape[:2], 1, *shape[3:], generator=g).to(device) for _ in (1, 2)]
    k, n = args.context, args.num_preds

    # same seed -> same latent noise -> the same predictions
    for model in (ref, ours):
        model.train()
    torch.manual_seed(5)
    r = ref(frames, context=k, num_preds=n)
    torch.manual_seed(5)
    o = ours(frames, context=k)
    with torch.no_grad():
        diff = (o.predictions[0][:, k - 1 : k - 1 + n] - r["preds"][0]).abs().max()
        check = {
            "max_abs_diff_frames": float(diff),
            "loss_reference": float(reference_loss(r, frames, heatmaps, k, n)),
            "loss_stpl": float(mspred_loss(o, frames, heatmaps, context=k, num_preds=n).total),
        }
    print(json.dumps(check))

    machine = machine_info(device)
    config = {k_: v for k_, v in vars(args).items() if k_ not in ("out", "reference_root")}
    for dtype in args.dtype:
        for mode in args.mode:
            for model in (ref, ours):
                model.train(mode == "train")
            steps = [
                make_step(ours, mode, dtype, frames, heatmaps, k, n, collect=n),
                make_step(ours, mode, dtype, frames, heatmaps, k, n, collect=None),
                make_step(ref, mode, dtype, frames, heatmaps, k, n, reference=True),
            ]
            t_ours, t_all, t_ref = time_interleaved(steps, device, repeats=args.repeats)
            result = {
                "benchmark": "twin",
                "model": "mspred",
                "reference": "AIS-Bonn/MSPred SpatioTempHierarch",
                "mode": mode,
                "dtype": dtype,
                "batch": args.batch,
                "frames": args.frames,
                "context": k,
                "image_size": args.image_size,
                "config": config,
                "max_abs_diff_predictions": check["max_abs_diff_frames"],
                "loss_reference": check["loss_reference"],
                "loss_ours": check["loss_stpl"],
                "ours_median_s": t_ours.median_s,
                "reference_median_s": t_ref.median_s,
                "ratio": t_ref.median_s / t_ours.median_s,
                "ratio_per_round": [a / b for a, b in zip(t_ref.times, t_ours.times, strict=True)],
                "every_step_median_s": t_all.median_s,
                "ratio_every_step": t_ref.median_s / t_all.median_s,
                "repeats": args.repeats,
                "timing": t_ours.method,
                "ours": t_ours.to_dict(),
                "every_step": t_all.to_dict(),
                "reference_timing": t_ref.to_dict(),
                "parameters": sum(q.numel() for q in ours.parameters()),
                "machine": machine,
            }
            print(
                f"{dtype:9s} {mode:7s} stpl {t_ours.median_s * 1e3:8.1f} ms (every step "
                f"{t_all.median_s * 1e3:8.1f} ms)   reference {t_ref.median_s * 1e3:8.1f} ms   "
                f"reference/stpl {result['ratio']:.2f}x ({result['ratio_every_step']:.2f}x)"
            )
            if args.out is not None:
                folder = Path(args.out)
                folder.mkdir(parents=True, exist_ok=True)
                path = folder / f"twin-mspred-{dtype}-{mode}{args.suffix}.json"
                path.write_text(json.dumps(result, indent=2) + "\n")
                print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
