"""Our ``mau`` and ``phydnet`` presets against OpenSTL's own models, same weights, side by side.

The OpenSTL models are imported from a local checkout given with ``--reference-root`` (the
repository never contains reference code): ``openstl/modules/{mau,phydnet}_modules.py`` and
``openstl/models/{mau,phydnet}_model.py`` are loaded as files, under stand-in ``openstl``
packages, so the checkout's package ``__init__`` (which imports every OpenSTL model and
their dependencies) is not needed; if SciPy is missing, a stand-in serves the one function
PhyDNet's module imports from it (``scipy.special.factorial``).

For each model the script builds OpenSTL's model at the Moving MNIST configuration
(``configs/mmnist/{MAU,PhyDNet}.py``, or smaller with ``--hidden``/``--image-size``), loads
its weights into ours with :func:`stpl.interop.load_reference`, checks that the predictions
agree, then times one training step (forward, the method's loss, backward) or one
inference pass of each, taking turns (``stpl.benchmark``'s timer), in float32 and under
bfloat16 autocast. The losses are each side's own:

* MAU: MSE over all ``T - 1`` outputs (OpenSTL's ``MAU_Model`` loss; scheduled-sampling mask
  of ones after the context for both);
* PhyDNet: ``Σ_t MSE_t + L_m`` (OpenSTL's ``PhyDNet_Model.forward``, teacher forcing 0, and
  :func:`stpl.training.phydnet_loss`); OpenSTL's model also runs its decoder twice more per
  step for outputs nobody uses, which is part of what it costs.

Usage::

    python benchmarks/twin_openstl_mau_phydnet.py --reference-root /path/to/OpenSTL \\
        --device cuda --repeats 20 --out benchmarks/results
    python benchmarks/twin_openstl_mau_phydnet.py --reference-root DIR --image-size 32 \\
        --batch 2 --frames 6 --hidden 16 --repeats 3        # a small CPU check

Each (model, dtype, mode) writes ``twin-<model>-<dtype>-<mode>.json`` with both medians and
``ratio = reference / ours`` (> 1: ours is faster).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import json
import math
import sys
import types
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from einops import rearrange

from stpl.benchmark._measure import machine_info, synchronize, time_interleaved
from stpl.interop import load_reference
from stpl.training import phydnet_loss


def _load_file(name: str, path: Path) -> types.ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise FileNotFoundError(path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def load_openstl(root: Path) -> types.SimpleNamespace:
    """OpenSTL's ``MAU_Model`` and ``PhyDNet_Model`` from a checkout at ``root``."""
    try:
        import scipy.special
    except ImportError:
        scipy = types.ModuleType("scipy")
        special = types.ModuleType("scipy.special")
        special.factorial = lambda n: float(math.factorial(int(n)))  # type: ignore[attr-defined]
        scipy.special = special  # type: ignore[attr-defined]
        sys.modules.update({"scipy": scipy, "scipy.special": special})
    package = types.ModuleType("openstl")
    package.__path__ = []
    modules = types.ModuleType("openstl.modules")
    modules.__path__ = []
    sys.modules.update({"openstl": package, "openstl.modules": modules})
    for stem in ("mau_modules", "phydnet_modules"):
        loaded = _load_file(f"openstl.modules.{stem}", root / "openstl" / "modules" / f"{stem}.py")
        for key, value in vars(loaded).items():
            if not key.startswith("__"):
                setattr(modules, key, value)
    mau = _load_file("openstl.models.mau_model", root / "openstl/models/mau_model.py")
    phydnet = _load_file("openstl.models.phydnet_model", root / "openstl/models/phydnet_model.py")
    return types.SimpleNamespace(MAU=mau.MAU_Model, PhyDNet=phydnet.PhyDNet_Model)


def _constraints(device: torch.device) -> torch.Tensor:
    c = torch.zeros(49, 7, 7, device=device)
    for i in range(7):
        for j in range(7):
            c[7 * i + j, i, j] = 1
    return c


def build_pair(
    name: str, ref_lib: types.SimpleNamespace, args: argparse.Namespace, device: torch.device
) -> tuple[Any, Any, dict[str, Any]]:
    """``(OpenSTL model, our model with its weights, config)``."""
    t, ctx, size = args.frames, args.context, args.image_size
    torch.manual_seed(args.seed)
    if name == "mau":
        hidden = args.hidden or 64
        cfg = types.SimpleNamespace(
            in_shape=(ctx, 1, size, size),
            patch_size=1,
            sr_size=4,
            tau=5,
            cell_mode="normal",
            model_mode="normal",
            filter_size=5,
            stride=1,
            pre_seq_length=ctx,
            total_length=t,
            layer_norm=0,
        )
        ref = ref_lib.MAU(4, [hidden] * 4, cfg)
        ours = load_reference("openstl_mau", ref.state_dict(), patch_size=1, image_channels=1)
        config = {"hidden": hidden, "layers": 4, "patch_size": 1, "sr_size": 4, "tau": 5}
    else:
        cfg = types.SimpleNamespace(
            in_shape=(ctx, 1, size, size),
            patch_size=4,
            pre_seq_length=ctx,
            aft_seq_length=t - ctx,
            device=str(device),
        )
        with contextlib.redirect_stdout(io.StringIO()):  # the reference prints per layer
            ref = ref_lib.PhyDNet(cfg)
        ours = load_reference("openstl_phydnet", ref.state_dict(), patch_size=4, image_channels=1)
        config = {"patch_size": 4, "sizes": "OpenSTL's hard-coded (64 latent, [128, 128, 64])"}
    return ref.to(device), ours.to(device), config


def steps(
    name: str, ref: Any, ours: Any, frames: torch.Tensor, args: argparse.Namespace
) -> tuple[Any, Any, Any, Any]:
    """``(ours_step, ref_step, ours_predict, ref_predict)`` closures."""
    b, t = frames.shape[:2]
    ctx = args.context
    dtype = torch.bfloat16 if args.current_dtype == "bfloat16" else None
    device_type = frames.device.type

    def autocast() -> contextlib.AbstractContextManager[Any]:
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type, dtype=dtype)

    if name == "mau":
        frames_cl = rearrange(frames, "b t c h w -> b t h w c").contiguous()
        mask = torch.ones(b, t - 2, device=frames.device)
        mask_ref = torch.ones(b, t - ctx - 1, *frames_cl.shape[2:], device=frames.device)

        def ours_predict() -> torch.Tensor:
            return ours(frames, context=ctx, mask=mask).predictions  # type: ignore[no-any-return]

        def ref_predict() -> torch.Tensor:
            out, _ = ref(frames_cl, mask_ref, return_loss=False)
            return out  # type: ignore[no-any-return]  # patch 1: (B, T-1, C, H, W) already

        def ours_loss() -> torch.Tensor:
            return F.mse_loss(ours_predict().float(), frames[:, 1:])

        def ref_loss() -> torch.Tensor:
            _, loss = ref(frames_cl, mask_ref)
            return loss  # type: ignore[no-any-return]

    else:
        constraints = _constraints(frames.device)

        def ours_predict() -> torch.Tensor:
            return ours(frames, context=ctx).predictions[:, ctx - 1 :]  # type: ignore[no-any-return]

        def ref_predict() -> torch.Tensor:
            pred, _ = ref.inference(
                frames[:, :ctx], frames[:, ctx:], constraints, return_loss=False
            )
            return pred  # type: ignore[no-any-return]

        def ours_loss() -> torch.Tensor:
            return phydnet_loss(ours(frames, context=ctx).predictions, frames, ours)

        def ref_loss() -> torch.Tensor:
            return ref(frames[:, :ctx], frames[:, ctx:], constraints, 0.0)  # type: ignore[no-any-return]

    def train(model: Any, loss_fn: Any) -> Any:
        def run() -> torch.Tensor:
            model.zero_grad(set_to_none=True)
            with autocast():
                loss = loss_fn()
            loss.float().backward()
            return loss.detach()

        return run

    def infer(fn: Any) -> Any:
        def run() -> torch.Tensor:
            with torch.no_grad(), autocast():
                return fn()  # type: ignore[no-any-return]

        return run

    if args.current_mode == "train":
        return train(ours, ours_loss), train(ref, ref_loss), infer(ours_predict), infer(ref_predict)
    return infer(ours_predict), infer(ref_predict), infer(ours_predict), infer(ref_predict)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reference-root", type=Path, required=True, help="an OpenSTL checkout")
    parser.add_argument(
        "--models", nargs="+", default=["mau", "phydnet"], choices=["mau", "phydnet"]
    )
    parser.add_argument(
        "--dtypes", nargs="+", default=["float32", "bfloat16"], choices=["float32", "bfloat16"]
    )
    parser.add_argument("--modes", nargs="+", default=["train"], choices=["train", "forward"])
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--hidden", type=int, default=None, help="MAU width (64)")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--frames", type=int, default=20)
    parser.add_argument("--context", type=int, default=None, help="T_in (T // 2)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="directory for the JSON files")
    args = parser.parse_args()
    if args.context is None:
        args.context = args.frames // 2
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    ref_lib = load_openstl(args.reference_root)
    gen = torch.Generator().manual_seed(args.seed + 1)
    frames = torch.rand(args.batch, args.frames, 1, args.image_size, args.image_size, generator=gen)
    frames = frames.to(device)
    for name in args.models:
        ref, ours, config = build_pair(name, ref_lib, args, device)
        for mode in args.modes:
            for dtype in args.dtypes:
                args.current_dtype, args.current_mode = dtype, mode
                ours_step, ref_step, ours_pred, ref_pred = steps(name, ref, ours, frames, args)
                ref.train(mode == "train")
                ours.train(mode == "train")
                diff = (ours_pred().float() - ref_pred().float()).abs().max().item()
                synchronize(device)
                t_ours, t_ref = time_interleaved(
                    [ours_step, ref_step], device, repeats=args.repeats
                )
                result = {
                    "benchmark": "twin",
                    "model": name,
                    "reference": f"OpenSTL {'MAU_Model' if name == 'mau' else 'PhyDNet_Model'}",
                    "mode": mode,
                    "dtype": dtype,
                    "batch": args.batch,
                    "frames": args.frames,
                    "context": args.context,
                    "image_size": args.image_size,
                    "config": config,
                    "max_abs_diff_predictions": diff,
                    "ours_median_s": t_ours.median_s,
                    "reference_median_s": t_ref.median_s,
                    "ratio": t_ref.median_s / t_ours.median_s,
                    "repeats": args.repeats,
                    "timing": t_ours.method,
                    "ours": t_ours.to_dict(),
                    "reference_timing": t_ref.to_dict(),
                    "machine": machine_info(device),
                }
                print(
                    f"{name:8s} {mode:7s} {dtype:8s} ours {t_ours.median_s * 1e3:9.2f} ms  "
                    f"OpenSTL {t_ref.median_s * 1e3:9.2f} ms  ratio {result['ratio']:.3f}  "
                    f"max |diff| {diff:.1e}"
                )
                if args.out is not None:
                    args.out.mkdir(parents=True, exist_ok=True)
                    path = args.out / f"twin-{name}-{dtype}-{mode}.json"
                    path.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
