"""stpl's encoder-forecaster against Hzzone/Precipitation-Nowcasting's, same weights, taking turns.

The reference is the real Hzzone/Precipitation-Nowcasting code (``nowcasting/models/{trajGRU,
encoder, forecaster, model}.py``), imported from a local checkout given with
``--reference-root DIR`` (the folder that holds the ``nowcasting`` package; nothing of it is
in this repository). The script builds the port's ``EF(Encoder, Forecaster)`` with TrajGRU
cells in its ``experiments/net_params.py`` wiring (widths, links, kernels and strides from
the command line; HKO-7's by default), loads the same ``state_dict`` into stpl with
``stpl.interop.load_reference("hzzone_encoder_forecaster", ..., align_corners=False)`` (the
port's warp as it runs on current PyTorch), checks that both predict the same frames, then
times, in float32 and under bfloat16 autocast:

- ``forward``: predict ``--out-len`` frames from ``--in-len`` frames under ``no_grad``
  (stpl: ``model.generate``; reference: ``EF(frames)``);
- ``train``: the same forward plus the balanced MSE + MAE loss and its backward.

The two models take turns (``stpl.benchmark``'s ``time_interleaved``), so both see the same
background load; the result is the median seconds of each and their ratio
(reference / stpl: > 1 means stpl is faster). Writes
``benchmarks/results/nowcasting-vs-hzzone-<device>-<size>.json``::

    python benchmarks/nowcasting_vs_reference.py --reference-root /path/to/Precipitation-Nowcasting
    python benchmarks/nowcasting_vs_reference.py --reference-root ... --hidden 16,32,32 \\
        --links 5,5,3 --image-size 120 --batch 2 --repeats 5     # a small CPU run
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import platform
import sys
import warnings
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

import stpl
from stpl.benchmark._measure import time_interleaved
from stpl.interop import load_reference

RESULTS = Path(__file__).resolve().parent / "results"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--reference-root", required=True, help="folder holding Hzzone's nowcasting/")
    p.add_argument("--hidden", default="64,192,192", help="block widths (HKO-7: 64,192,192)")
    p.add_argument("--links", default="13,13,9", help="encoder links; the port reverses them")
    p.add_argument("--first", type=int, default=8, help="stem / head channels (8)")
    p.add_argument("--image-size", type=int, default=480, help="H = W, a multiple of 30")
    p.add_argument("--batch", type=int, default=2, help="batch size (the port's 2)")
    p.add_argument("--in-len", type=int, default=5)
    p.add_argument("--out-len", type=int, default=20)
    p.add_argument("--modes", default="forward,train")
    p.add_argument("--dtypes", default="float32,bfloat16")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="result file (default: benchmarks/results/...)")
    return p.parse_args(argv)


def import_reference(root: str, in_len: int, out_len: int, device: torch.device) -> dict[str, Any]:
    """The port's modules, with its config set to this run's lengths and device.

    The port binds the encoder's unroll length at import (``seq_len=cfg.HKO.BENCHMARK.IN_LEN``
    as a default argument), so the config is set before ``trajGRU`` is imported.
    """
    sys.path.insert(0, str(Path(root).resolve()))
    # the port calls grid_sample without align_corners, which warns at every step
    warnings.filterwarnings("ignore", message="Default grid_sample and affine_grid behavior")
    config = importlib.import_module("nowcasting.config")
    config.cfg.HKO.BENCHMARK.IN_LEN = in_len
    config.cfg.HKO.BENCHMARK.OUT_LEN = out_len
    config.cfg.GLOBAL.DEVICE = device
    with contextlib.redirect_stdout(None):  # its constructors print their map sizes
        modules = {
            "TrajGRU": importlib.import_module("nowcasting.models.trajGRU").TrajGRU,
            "Encoder": importlib.import_module("nowcasting.models.encoder").Encoder,
            "Forecaster": importlib.import_module("nowcasting.models.forecaster").Forecaster,
            "EF": importlib.import_module("nowcasting.models.model").EF,
            "act": config.cfg.MODEL.RNN_ACT_TYPE,
        }
    return modules


def build_reference(ref: dict[str, Any], args: argparse.Namespace) -> nn.Module:
    """The port's EF in ``experiments/net_params.py``'s wiring, at this run's sizes."""
    c1, c2, c3 = (int(v) for v in args.hidden.split(","))
    l1, l2, l3 = (int(v) for v in args.links.split(","))
    f, b, s = args.first, args.batch, args.image_size
    m1, m2, m3 = s // 5, s // 15, s // 30
    traj = ref["TrajGRU"]

    def cell(c_in: int, nh: int, size: int, links: int, h2h: int) -> nn.Module:
        with contextlib.redirect_stdout(None):
            return traj(
                input_channel=c_in, num_filter=nh, b_h_w=(b, size, size), zoneout=0.0, L=links,
                i2h_kernel=(3, 3), i2h_stride=(1, 1), i2h_pad=(1, 1), h2h_kernel=(h2h, h2h),
                h2h_dilate=(1, 1), act_type=ref["act"],
            )  # fmt: skip

    encoder = ref["Encoder"](
        [
            OrderedDict({"conv1_leaky_1": [1, f, 7, 5, 1]}),
            OrderedDict({"conv2_leaky_1": [c1, c2, 5, 3, 1]}),
            OrderedDict({"conv3_leaky_1": [c2, c3, 3, 2, 1]}),
        ],
        [cell(f, c1, m1, l1, 5), cell(c2, c2, m2, l2, 5), cell(c3, c3, m3, l3, 3)],
    )
    forecaster = ref["Forecaster"](
        [
            OrderedDict({"deconv1_leaky_1": [c3, c3, 4, 2, 1]}),
            OrderedDict({"deconv2_leaky_1": [c2, c1, 5, 3, 1]}),
            OrderedDict(
                {
                    "deconv3_leaky_1": [c1, f, 7, 5, 1],
                    "conv3_leaky_2": [f, f, 3, 1, 1],
                    "conv3_3": [f, 1, 1, 1, 0],
                }
            ),
        ],
        [cell(c3, c3, m3, l1, 3), cell(c3, c2, m2, l2, 5), cell(c1, c1, m1, l3, 5)],
    )
    return ref["EF"](encoder, forecaster)  # type: ignore[no-any-return]


def balanced(pred: Tensor, target: Tensor) -> Tensor:
    """The balanced MSE + MAE loss (same function for both models)."""
    return stpl.training.balanced_loss(pred.float(), target, scale=5e-5)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    ref_mods = import_reference(args.reference_root, args.in_len, args.out_len, device)
    torch.manual_seed(args.seed)
    reference = build_reference(ref_mods, args).to(device)
    ours = load_reference(
        "hzzone_encoder_forecaster",
        {k: v.detach().clone() for k, v in reference.state_dict().items()},
        patch_size=1,
        image_channels=1,
        align_corners=False,
    ).to(device)
    gen = torch.Generator().manual_seed(args.seed + 1)
    s, t_in, t_out = args.image_size, args.in_len, args.out_len
    frames = torch.rand(args.batch, t_in + t_out, 1, s, s, generator=gen).to(device)
    ctx, target = frames[:, :t_in], frames[:, t_in:]
    ctx_ref = ctx.transpose(0, 1).contiguous()  # the port is time-first

    with torch.no_grad():
        want = reference(ctx_ref).transpose(0, 1)
        got = ours.generate(ctx, t_out).predictions
    max_diff = (got - want).abs().max().item()
    print(f"same weights, same frames: max |stpl - reference| = {max_diff:.2e}")

    results: dict[str, Any] = {
        "args": vars(args),
        "machine": {
            "device": str(device),
            "name": (
                torch.cuda.get_device_name(device)
                if device.type == "cuda"
                else platform.processor() or platform.machine()
            ),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
        },
        "max_abs_diff_float32": max_diff,
        "parameters": {
            "stpl": sum(p.numel() for p in ours.parameters()),
            "reference": sum(p.numel() for p in reference.parameters()),
        },
        "runs": [],
    }
    for dtype in args.dtypes.split(","):

        def cast(amp: bool = dtype == "bfloat16") -> contextlib.AbstractContextManager[Any]:
            if not amp:
                return contextlib.nullcontext()
            return torch.autocast(device.type, dtype=torch.bfloat16)

        for mode in args.modes.split(","):
            if mode == "forward":

                def run_ours() -> Tensor:
                    with torch.no_grad(), cast():
                        return ours.generate(ctx, t_out).predictions

                def run_ref() -> Tensor:
                    with torch.no_grad(), cast():
                        return reference(ctx_ref)  # type: ignore[no-any-return]

            else:

                def run_ours() -> Tensor:
                    ours.zero_grad(set_to_none=True)
                    with cast():
                        loss = balanced(ours(frames, context=t_in).predictions, target)
                    loss.backward()
                    return loss.detach()

                def run_ref() -> Tensor:
                    reference.zero_grad(set_to_none=True)
                    with cast():
                        loss = balanced(reference(ctx_ref).transpose(0, 1), target)
                    loss.backward()
                    return loss.detach()

            t_ours, t_ref = time_interleaved([run_ours, run_ref], device, repeats=args.repeats)
            row = {
                "dtype": dtype,
                "mode": mode,
                "stpl_median_s": t_ours.median_s,
                "reference_median_s": t_ref.median_s,
                "stpl_iqr_s": t_ours.iqr_s,
                "reference_iqr_s": t_ref.iqr_s,
                "speedup": t_ref.median_s / t_ours.median_s,
                "method": t_ours.method,
            }
            results["runs"].append(row)
            print(
                f"{dtype:>8} {mode:>7}: stpl {t_ours.median_s * 1e3:9.1f} ms   reference "
                f"{t_ref.median_s * 1e3:9.1f} ms   reference / stpl {row['speedup']:.2f}"
            )
    size = f"s{s}-h{args.hidden.replace(',', '-')}-b{args.batch}"
    out = (
        Path(args.out) if args.out else RESULTS / f"nowcasting-vs-hzzone-{device.type}-{size}.json"
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
