"""Our ``swinlstm`` / ``swinlstm_b`` presets against OpenSTL's own SwinLSTM, same weights.

The reference is imported from local checkouts (the repository never contains reference
code):

* ``--reference-root``: an OpenSTL checkout; ``openstl/modules/swinlstm_modules.py`` and
  ``openstl/models/swinlstm_model.py`` are loaded as files under stand-in ``openstl``
  packages (the checkout's package ``__init__`` imports every OpenSTL model);
* ``--swinlstm-root``: a SongTang-x/SwinLSTM checkout. OpenSTL imports its Swin blocks from
  ``timm.models.swin_transformer``, and no timm release runs that import at OpenSTL
  c74deb5 (``spec/baselines-round3.md`` section 3a), so the script serves it with the
  authors' own blocks from ``SwinLSTM_D.py`` (bit-identical to timm 0.6's); their
  ``PatchEmbed`` gets the timm 0.6 constructor (``norm_layer``) and ``grid_size`` that
  OpenSTL uses.

The authors' file imports ``DropPath``, ``to_2tuple`` and ``trunc_normal_`` from
``timm.models.layers``: any timm release provides them (or put a module of your own that
does on ``PYTHONPATH``).

For each variant the script builds OpenSTL's model (SwinLSTM-D: ``configs/mmnist/
SwinLSTM-D.py``; SwinLSTM-B: ``configs/human/SwinLSTM-B.py``'s model; ``--embed-dim`` for a
smaller width), loads its weights into ours with :func:`stpl.interop.load_reference`, checks
that the predictions agree, then times one training step (forward, MSE over the ``T - 1``
outputs as OpenSTL's model computes it, backward; both in training mode, stochastic depth
on) or one inference pass, taking turns (``stpl.benchmark``'s timer), in float32 and under
bfloat16 autocast.

Usage::

    python benchmarks/twin_openstl_swinlstm.py --reference-root /path/to/OpenSTL \\
        --swinlstm-root /path/to/SwinLSTM --device cuda --repeats 20 --out benchmarks/results
    python benchmarks/twin_openstl_swinlstm.py --reference-root DIR --swinlstm-root DIR2 \\
        --image-size 32 --batch 2 --frames 6 --context 3 --embed-dim 32 --repeats 3  # CPU

Each (variant, dtype, mode) writes ``twin-<preset>-<dtype>-<mode>[-<tag>].json`` with both
medians, ``ratio = reference / ours`` (> 1: ours is faster) and the per-round ratios (on a
machine whose load drifts, their median is the steadier number).
"""

from __future__ import annotations

import argparse
import contextlib
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
from torch import nn

from stpl.benchmark._measure import machine_info, synchronize, time_interleaved
from stpl.interop import load_reference

# the two OpenSTL configurations (model arguments only)
CONFIGS: dict[str, dict[str, Any]] = {
    "D": {"depths_downsample": [2, 6], "depths_upsample": [6, 2], "num_heads": [4, 8]},
    "B": {"depths": 12, "num_heads": 4},
}
PRESET = {"D": "swinlstm", "B": "swinlstm_b"}


def _load_file(name: str, path: Path) -> types.ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise FileNotFoundError(path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def load_openstl(openstl_root: Path, swinlstm_root: Path) -> types.ModuleType:
    """OpenSTL's ``swinlstm_model`` module, its timm import served by the authors' blocks."""
    authors = _load_file("_swinlstm_authors_d", swinlstm_root / "SwinLSTM_D.py")

    class PatchEmbed(authors.PatchEmbed):  # type: ignore[misc,name-defined]
        """The authors' PatchEmbed (always layer-normed) with timm 0.6's signature."""

        def __init__(
            self,
            img_size: int,
            patch_size: int,
            in_chans: int,
            embed_dim: int,
            norm_layer: Any = None,
        ) -> None:
            super().__init__(img_size, patch_size, in_chans, embed_dim)
            self.grid_size = tuple(self.patches_resolution)

    swin = types.ModuleType("timm.models.swin_transformer")
    for name in ("SwinTransformerBlock", "window_partition", "window_reverse", "PatchMerging"):
        setattr(swin, name, getattr(authors, name))
    swin.PatchEmbed = PatchEmbed  # type: ignore[attr-defined]
    import timm.models.layers

    sys.modules["timm.models.swin_transformer"] = swin
    if "timm.layers" not in sys.modules:
        try:
            import timm.layers  # noqa: F401
        except ImportError:  # timm <= 0.6: the helpers live in timm.models.layers only
            sys.modules["timm.layers"] = sys.modules["timm.models.layers"]

    package = types.ModuleType("openstl")
    package.__path__ = []
    modules = types.ModuleType("openstl.modules")
    modules.__path__ = []
    sys.modules.update({"openstl": package, "openstl.modules": modules})
    found = _load_file(
        "openstl.modules.swinlstm_modules",
        openstl_root / "openstl" / "modules" / "swinlstm_modules.py",
    )
    for name in ("DownSample", "UpSample", "STconvert"):
        setattr(modules, name, getattr(found, name))
    return _load_file(
        "openstl.models.swinlstm_model", openstl_root / "openstl" / "models" / "swinlstm_model.py"
    )


def build_reference(ref: types.ModuleType, variant: str, args: argparse.Namespace) -> nn.Module:
    configs = types.SimpleNamespace(
        in_shape=(args.context, args.channels, args.image_size, args.image_size),
        patch_size=2,
        window_size=args.window_size,
        embed_dim=args.embed_dim,
        **(
            {"depths": CONFIGS["B"]["depths"], "num_heads": CONFIGS["B"]["num_heads"]}
            if variant == "B"
            else {}
        ),
    )
    if variant == "B":
        model: nn.Module = ref.SwinLSTM_B_Model(configs)
    else:
        model = ref.SwinLSTM_D_Model(
            CONFIGS["D"]["depths_downsample"],
            CONFIGS["D"]["depths_upsample"],
            CONFIGS["D"]["num_heads"],
            configs,
        )
    return model


def run_pair(
    reference: nn.Module,
    ours: nn.Module,
    frames: torch.Tensor,
    args: argparse.Namespace,
    dtype: str,
    mode: str,
) -> tuple[Callable[[], Any], Callable[[], Any]]:
    """The timed closures: reference, ours."""
    frames_cl = frames.permute(0, 1, 3, 4, 2).contiguous()
    device = frames.device

    def autocast() -> contextlib.AbstractContextManager[Any]:
        if dtype == "bfloat16":
            return torch.autocast(device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    for m in (reference, ours):
        m.train(mode == "train")
    if mode == "train":

        def ref_step() -> Any:
            reference.zero_grad(set_to_none=True)
            with autocast():
                _, loss = reference(frames_cl)
            loss.backward()
            return loss.detach()

        def our_step() -> Any:
            ours.zero_grad(set_to_none=True)
            with autocast():
                out = ours(frames, context=args.context)
                loss = F.mse_loss(out.predictions, frames[:, 1:])
            loss.backward()
            return loss.detach()

        return ref_step, our_step

    def ref_forward() -> Any:
        with torch.no_grad(), autocast():
            return reference(frames_cl, return_loss=False)[0]

    def our_forward() -> Any:
        with torch.no_grad(), autocast():
            return ours(frames, context=args.context).predictions

    return ref_forward, our_forward


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--reference-root", type=Path, required=True, help="OpenSTL checkout")
    p.add_argument("--swinlstm-root", type=Path, required=True, help="SongTang-x/SwinLSTM checkout")
    p.add_argument("--variants", nargs="+", choices=["D", "B"], default=["D", "B"])
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--channels", type=int, default=1)
    p.add_argument("--embed-dim", type=int, default=128)
    p.add_argument("--window-size", type=int, default=4)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--frames", type=int, default=20)
    p.add_argument("--context", type=int, default=10)
    p.add_argument(
        "--dtypes", nargs="+", choices=["float32", "bfloat16"], default=["float32", "bfloat16"]
    )
    p.add_argument("--modes", nargs="+", choices=["train", "forward"], default=["train", "forward"])
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=None, help="directory for the JSON results")
    p.add_argument("--tag", default="", help="suffix of the result file names")
    args = p.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    ref = load_openstl(args.reference_root, args.swinlstm_root)
    for variant in args.variants:
        torch.manual_seed(args.seed)
        reference = build_reference(ref, variant, args).to(device)
        ours = load_reference(
            "openstl_swinlstm",
            reference.state_dict(),
            patch_size=2,
            image_channels=args.channels,
        ).to(device)
        gen = torch.Generator().manual_seed(args.seed + 1)
        frames = torch.rand(
            args.batch, args.frames, args.channels, args.image_size, args.image_size, generator=gen
        ).to(device)
        reference.eval()
        ours.eval()
        with torch.no_grad():
            want = reference(frames.permute(0, 1, 3, 4, 2).contiguous(), return_loss=False)[0]
            got = ours(frames, context=args.context).predictions
        max_abs_diff = float((want.permute(0, 1, 4, 2, 3) - got).abs().max())
        n_ref = sum(q.numel() for q in reference.parameters())
        n_ours = sum(q.numel() for q in ours.parameters())
        for dtype in args.dtypes:
            for mode in args.modes:
                fns = run_pair(reference, ours, frames, args, dtype, mode)
                synchronize(device)
                t_ref, t_ours = time_interleaved(list(fns), device, repeats=args.repeats)
                per_round = [r / o for r, o in zip(t_ref.times, t_ours.times, strict=True)]
                result = {
                    "preset": PRESET[variant],
                    "reference": f"OpenSTL SwinLSTM_{variant}_Model (c74deb5), SongTang-x blocks",
                    "dtype": dtype,
                    "mode": mode,
                    "config": {
                        k: v
                        for k, v in vars(args).items()
                        if k not in ("reference_root", "swinlstm_root", "out")
                    },
                    "model_config": CONFIGS[variant],
                    "parameters": {"reference": n_ref, "ours": n_ours},
                    "max_abs_diff_fp32_eval": max_abs_diff,
                    "reference_step": t_ref.to_dict(),
                    "ours_step": t_ours.to_dict(),
                    "ratio": t_ref.median_s / t_ours.median_s,
                    "ratio_per_round": per_round,
                    "ratio_median_per_round": statistics.median(per_round),
                    "machine": machine_info(device),
                }
                print(
                    f"{PRESET[variant]:>11} {dtype:>8} {mode:>7}: reference "
                    f"{t_ref.median_s * 1e3:9.1f} ms, ours {t_ours.median_s * 1e3:9.1f} ms, "
                    f"ratio {result['ratio']:.3f} (per round: median "
                    f"{result['ratio_median_per_round']:.3f}, {min(per_round):.2f}-"
                    f"{max(per_round):.2f})  max |diff| {max_abs_diff:.1e}"
                )
                if args.out is not None:
                    args.out.mkdir(parents=True, exist_ok=True)
                    tag = f"-{args.tag}" if args.tag else ""
                    path = args.out / f"twin-{PRESET[variant]}-{dtype}-{mode}{tag}.json"
                    path.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
