"""MIM and E3D-LSTM against their reference twins (OpenSTL), same weights, taking turns.

The reference models are imported from a local copy of OpenSTL given with
``--reference-root`` (a clone of chengtan9907/OpenSTL, or any directory holding its
``openstl/modules/{predrnn,mim,e3dlstm}_modules.py`` and
``openstl/models/{mim,e3dlstm}_model.py``); this repository contains none of its code.
The files are loaded by path, so OpenSTL's other dependencies need not be installed.

For each model and dtype the script builds the reference ``MIM_Model`` /
``E3DLSTM_Model`` with random weights, loads the same weights into stpl with
``stpl.interop.load_reference`` (the reference-compatible model), checks that both
predict the same frames, and times, taking turns:

- ``reference``: the OpenSTL model on its channels-last patch tensors and mask;
- ``stpl_compat``: the loaded stpl model on pixel frames and our ``(B, T-2)`` mask;
- ``stpl_default``: the same weights in the preset's default options (the papers' intent:
  MIM's MIM-S state per sequence; E3D's updated memory and recall over positions).

A step is a training step (forward, MSE, backward) with ``--mode train`` or a forward
under ``torch.no_grad()`` with ``--mode forward``; bfloat16 runs under ``torch.autocast``.
The ratio is reference time / stpl time (> 1: stpl is faster), per round of turns; the
median, minimum and maximum over the rounds are reported::

    python benchmarks/reference_mim_e3d.py --reference-root /tmp/ref/OpenSTL \\
        --model mim e3d_lstm --dtype float32 bfloat16 --batch 4 --hidden 16 --repeats 5 \\
        --out benchmarks/results
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import sys
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

import stpl
from stpl.benchmark._measure import machine_info, time_interleaved
from stpl.interop import load_reference

_SOURCES = {
    "mim": ("openstl_mim", "mim_model", "MIM_Model"),
    "e3d_lstm": ("openstl_e3dlstm", "e3dlstm_model", "E3DLSTM_Model"),
}


def _load_file(name: str, path: Path) -> types.ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise FileNotFoundError(path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def import_reference(root: Path) -> dict[str, type[nn.Module]]:
    """The reference model classes, loaded by path from ``root/openstl``."""
    base = root / "openstl"
    for name in ("openstl", "openstl.models"):
        package = types.ModuleType(name)
        package.__path__ = []
        sys.modules.setdefault(name, package)
    modules = types.ModuleType("openstl.modules")
    for stem, names in (
        ("predrnn_modules", ["SpatioTemporalLSTMCell"]),
        ("mim_modules", ["MIMBlock", "MIMN"]),
        ("e3dlstm_modules", ["Eidetic3DLSTMCell"]),
    ):
        loaded = _load_file(f"openstl.modules.{stem}", base / "modules" / f"{stem}.py")
        for cls in names:
            setattr(modules, cls, getattr(loaded, cls))
    sys.modules["openstl.modules"] = modules
    classes = {}
    for model, (_, stem, cls) in _SOURCES.items():
        loaded = _load_file(f"openstl.models.{stem}", base / "models" / f"{stem}.py")
        classes[model] = getattr(loaded, cls)
    return classes


def build_pair(
    ref_cls: type[nn.Module], model: str, args: argparse.Namespace
) -> tuple[nn.Module, nn.Module, nn.Module]:
    """The reference model, its loaded stpl twin, and stpl's default-option twin."""
    h = w = args.image_size
    config = types.SimpleNamespace(
        in_shape=(args.context, 1, h, w),
        patch_size=args.patch_size,
        filter_size=args.kernel,
        stride=1,
        layer_norm=0,
        pre_seq_length=args.context,
        aft_seq_length=args.frames - args.context,
        reverse_scheduled_sampling=0,
    )
    torch.manual_seed(0)
    ref = ref_cls(args.layers, [args.hidden] * args.layers, config)
    source = _SOURCES[model][0]
    compat = load_reference(source, ref.state_dict(), patch_size=args.patch_size, image_channels=1)
    defaults = {"stationary_state": "sequence"} if model == "mim" else {}
    if model == "e3d_lstm":
        defaults = {"update_memory": True, "recall_layout": "tokens"}
    default = load_reference(
        source, ref.state_dict(), patch_size=args.patch_size, image_channels=1, **defaults
    )
    device = torch.device(args.device)
    return ref.to(device), compat.to(device), default.to(device)


def make_steps(
    ref: nn.Module, ours: list[nn.Module], args: argparse.Namespace, dtype: str
) -> tuple[list[Callable[[], Any]], float]:
    """Closures timing one step of each model, and the max difference of the predictions."""
    device = torch.device(args.device)
    g = torch.Generator().manual_seed(1)
    b, t, p, s = args.batch, args.frames, args.patch_size, args.image_size
    frames = torch.rand(b, t, 1, s, s, generator=g).to(device)
    mask = torch.zeros(b, t - 2, device=device)  # free running after the context
    frames_patch = rearrange(frames, "b t c (h ph) (w pw) -> b t h w (ph pw c)", ph=p, pw=p)
    mask_ref = torch.zeros(b, t - args.context - 1, s // p, s // p, p * p, device=device)

    def autocast() -> Any:
        return torch.autocast(device.type, dtype=torch.bfloat16, enabled=dtype == "bfloat16")

    def ref_step() -> Tensor:
        with torch.set_grad_enabled(args.mode == "train"), autocast():
            next_frames, _ = ref(frames_patch, mask_ref, return_loss=False)
            loss = F.mse_loss(next_frames.float(), frames_patch[:, 1:])
        if args.mode == "train":
            ref.zero_grad(set_to_none=True)
            loss.backward()
        return loss.detach()

    def our_step(model: nn.Module) -> Callable[[], Tensor]:
        def run() -> Tensor:
            with torch.set_grad_enabled(args.mode == "train"), autocast():
                out = model(frames, context=args.context, mask=mask)
                loss = F.mse_loss(out.predictions.float(), frames[:, 1:])
            if args.mode == "train":
                model.zero_grad(set_to_none=True)
                loss.backward()
            return loss.detach()

        return run

    with torch.no_grad():
        for m in (ref, *ours):
            if hasattr(m, "reset_stationary"):
                m.reset_stationary()
        for block in getattr(ref, "stlstm_layer", [])[1:]:
            block.convlstm_c = None
        expected, _ = ref(frames_patch, mask_ref, return_loss=False)
        got = ours[0](frames, context=args.context, mask=mask).predictions
        got = rearrange(got, "b t c (h ph) (w pw) -> b t h w (ph pw c)", ph=p, pw=p)
        diff = float((got - expected).abs().max())
    return [ref_step] + [our_step(m) for m in ours], diff


def per_round(reference: list[float], ours: list[float]) -> dict[str, float]:
    """Median, min and max of the per-round ratios reference / stpl (the runs took turns, so
    each round saw the same background load)."""
    ratios = sorted(r / o for r, o in zip(reference, ours, strict=True))
    return {"median": statistics.median(ratios), "min": ratios[0], "max": ratios[-1]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reference-root", type=Path, required=True)
    parser.add_argument("--model", nargs="+", default=list(_SOURCES), choices=list(_SOURCES))
    parser.add_argument("--dtype", nargs="+", default=["float32", "bfloat16"])
    parser.add_argument("--mode", choices=["train", "forward"], default="train")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--kernel", type=int, default=5)
    parser.add_argument("--patch-size", type=int, default=4)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--frames", type=int, default=20)
    parser.add_argument("--context", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", type=Path, default=None, help="directory for the JSON results")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    classes = import_reference(args.reference_root)
    for model in args.model:
        ref, compat, default = build_pair(classes[model], model, args)
        for dtype in args.dtype:
            steps, diff = make_steps(ref, [compat, default], args, dtype)
            timings = time_interleaved(steps, torch.device(args.device), repeats=args.repeats)
            names = ["reference", "stpl_compat", "stpl_default"]
            ref_s = timings[0].median_s
            result: dict[str, Any] = {
                "model": model,
                "dtype": dtype,
                "mode": args.mode,
                "config": {
                    k: getattr(args, k)
                    for k in (
                        "device",
                        "batch",
                        "hidden",
                        "layers",
                        "kernel",
                        "patch_size",
                        "image_size",
                        "frames",
                        "context",
                        "repeats",
                    )
                },
                "threads": torch.get_num_threads(),
                "max_abs_diff_compat_vs_reference": diff,
                "timings": {n: t.to_dict() for n, t in zip(names, timings, strict=True)},
                "speedup_vs_reference": {
                    n: ref_s / t.median_s for n, t in zip(names[1:], timings[1:], strict=True)
                },
                "speedup_per_round": {
                    n: per_round(list(timings[0].times), list(t.times))
                    for n, t in zip(names[1:], timings[1:], strict=True)
                },
                "machine": machine_info(torch.device(args.device)),
                "stpl_version": stpl.__version__,
            }
            line = ", ".join(
                f"{n} {t.median_s * 1e3:.1f} ms" for n, t in zip(names, timings, strict=True)
            )
            ratios = ", ".join(
                f"{n} {r['median']:.2f}x ({r['min']:.2f}-{r['max']:.2f})"
                for n, r in result["speedup_per_round"].items()
            )
            print(f"{model} {dtype} {args.mode}: {line}; vs reference: {ratios}; diff {diff:.1e}")
            if args.out is not None:
                args.out.mkdir(parents=True, exist_ok=True)
                path = args.out / f"reference-{model}-{dtype}-{args.mode}.json"
                path.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
