"""Our presets against their reference twins: same weights, same inputs, taking turns.

For each preset the real reference code is built, given random weights, and our model is
loaded from its state dict with :mod:`stpl.interop` (so both compute the same function; the
script checks this before timing and records the largest difference). Then one training
step (forward, MSE, backward) or one forward pass of each is timed, the two taking turns
(``stpl.benchmark``'s ``time_interleaved``), in float32 and under bfloat16 autocast, and the
medians, the ratio and the peak memory of each are written to JSON.

======================  =====================================================================
preset                  reference twin
======================  =====================================================================
``predrnn_pp``          OpenSTL ``PredRNNpp_Model`` (``openstl/models/predrnnpp_model.py``
                        with ``openstl/modules/predrnnpp_modules.py``), OpenSTL's own loop
``sa_convlstm``         hyona-yu/SA-convlstm ``SA_Convlstm_cell`` (``convlstm_att_hnver2.py``)
                        in a loop written like OpenSTL's model loops (patches in, zero states,
                        scheduled-sampling mask, bias-free 1x1 ``conv_last``): the
                        repository's own model class is tied to its 56x38 typhoon data
                        (``LayerNorm((nh, 56, 38))``, a 1-channel last layer, no feedback)
======================  =====================================================================

The reference code is NOT part of this repository. ``--reference-root DIR`` names a
directory with local checkouts: ``DIR/OpenSTL`` (chengtan9907/OpenSTL) and
``DIR/SA-convlstm`` (hyona-yu/SA-convlstm). The files above are loaded by path, without
importing their packages (OpenSTL's package ``__init__`` pulls in every model and its
dependencies): ``openstl.modules`` is stubbed with the two classes the model file imports,
and the SA-ConvLSTM file's data-loading imports (``dataset_preprocessing``,
``feature_loss``, ``pandas``, ``tqdm``) are stubbed where they are not installed.

Example (small, CPU)::

    python benchmarks/reference_twins.py --reference-root /tmp/ref --threads 1 \\
        --batch 2 --hidden 16 --image-size 32 --frames 6 --repeats 5 \\
        --out benchmarks/results/twins-small-cpu.json

The papers' Moving MNIST setting is ``--batch 8 --hidden 64 --image-size 64 --frames 20``
(the defaults, with ``--device cuda`` on a GPU).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.machinery
import importlib.util
import json
import statistics
import sys
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

import stpl
from stpl.benchmark._measure import machine_info, peak_memory_bytes, time_interleaved
from stpl.interop import convert_cell_state_dict, load_reference

MODELS = ("predrnn_pp", "sa_convlstm")


# ---------------------------------------------------------------- loading the references
def _load_file(name: str, path: Path) -> ModuleType:
    if not path.exists():
        raise SystemExit(f"reference file not found: {path} (check --reference-root)")
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@contextlib.contextmanager
def _stubs(stubs: dict[str, dict[str, Any]]) -> Iterator[None]:
    """Stand-in modules for the imports in ``stubs`` that are not installed, only while a
    reference file executes (they leave ``sys.modules`` afterwards)."""
    added = []
    for name, attrs in stubs.items():
        try:
            importlib.import_module(name)
        except ImportError:
            module = types.ModuleType(name)
            module.__spec__ = importlib.machinery.ModuleSpec(name, None)
            for key, value in attrs.items():
                setattr(module, key, value)
            sys.modules[name] = module
            added.append(name)
    try:
        yield
    finally:
        for name in added:
            sys.modules.pop(name, None)


def load_openstl_predrnnpp(root: Path) -> type[nn.Module]:
    """OpenSTL's ``PredRNNpp_Model`` class, loaded from ``root/OpenSTL``."""
    base = root / "OpenSTL" / "openstl"
    modules = _load_file("_ref_predrnnpp_modules", base / "modules" / "predrnnpp_modules.py")
    package, sub = types.ModuleType("openstl"), types.ModuleType("openstl.modules")
    sub.CausalLSTMCell = modules.CausalLSTMCell  # type: ignore[attr-defined]
    sub.GHU = modules.GHU  # type: ignore[attr-defined]
    package.modules = sub  # type: ignore[attr-defined]
    saved = {k: sys.modules.get(k) for k in ("openstl", "openstl.modules")}
    sys.modules["openstl"], sys.modules["openstl.modules"] = package, sub
    try:
        model = _load_file("_ref_predrnnpp_model", base / "models" / "predrnnpp_model.py")
    finally:
        for key, value in saved.items():
            if value is None:
                sys.modules.pop(key, None)
            else:
                sys.modules[key] = value
    cls: type[nn.Module] = model.PredRNNpp_Model
    return cls


def load_sa_cell(root: Path) -> type[nn.Module]:
    """hyona-yu's ``SA_Convlstm_cell`` class, loaded from ``root/SA-convlstm``."""
    stubs: dict[str, dict[str, Any]] = {
        "dataset_preprocessing": {"data_loading_for_years": object, "torch_data": object},
        "feature_loss": {"SSIM": object},
        "pandas": {},
        "tqdm": {"tqdm": lambda x, *a, **k: x},
    }
    with _stubs(stubs):
        module = _load_file("_ref_sa_convlstm", root / "SA-convlstm" / "convlstm_att_hnver2.py")
    cls: type[nn.Module] = module.SA_Convlstm_cell
    return cls


class SATwin(nn.Module):
    """hyona-yu cells in the loop OpenSTL's models use (channels-last patches in and out)."""

    def __init__(
        self,
        cell_cls: type[nn.Module],
        *,
        frame_channel: int,
        hidden: int,
        layers: int,
        kernel: int,
        device: torch.device,
    ) -> None:
        super().__init__()
        self.hidden = hidden
        self.cells = nn.ModuleList(
            cell_cls(
                {
                    "input_dim": frame_channel if i == 0 else hidden,
                    "hidden_dim": hidden,
                    "kernel_size": kernel,
                    "padding": kernel // 2,
                    "device": device,
                    "att_hidden_dim": max(1, hidden // 4),
                }
            )
            for i in range(layers)
        )
        self.conv_last = nn.Conv2d(hidden, frame_channel, 1, bias=False)

    def forward(self, frames_tensor: Tensor, mask_true: Tensor, context: int) -> tuple[Any, Any]:
        frames = frames_tensor.permute(0, 1, 4, 2, 3).contiguous()
        mask = mask_true.permute(0, 1, 4, 2, 3).contiguous()
        b, t_total, _, h, w = frames.shape
        states = [cell.init_hidden(b, (h, w)) for cell in self.cells]  # type: ignore[operator]
        outputs, x_gen = [], None
        for t in range(t_total - 1):
            if t < context:
                net = frames[:, t]
            else:
                net = mask[:, t - context] * frames[:, t] + (1 - mask[:, t - context]) * x_gen
            for i, cell in enumerate(self.cells):
                net, states[i] = cell(net, states[i])
            x_gen = self.conv_last(net)
            outputs.append(x_gen)
        next_frames = torch.stack(outputs, 1).permute(0, 1, 3, 4, 2).contiguous()
        return next_frames, F.mse_loss(next_frames, frames_tensor[:, 1:])


# ---------------------------------------------------------------- building the pairs
def randomize(module: nn.Module, seed: int) -> None:
    """Random weights everywhere (norm affines around 1), so a wrong mapping would show."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            u = torch.rand(p.shape, generator=gen) * 2 - 1
            if p.dim() >= 2:
                fan_in = p[0].numel()
                p.copy_(u * (1.0 / fan_in) ** 0.5)
            elif p.dim() == 1 and p.shape[0] > 1:
                p.copy_(0.1 * u)
            else:
                p.copy_(1 + 0.1 * u)


def build_pair(name: str, args: argparse.Namespace, device: torch.device) -> tuple[Any, Any]:
    """``(ours, reference)`` with the same weights, on ``device``."""
    root = Path(args.reference_root)
    p, c = args.patch_size, args.channels
    if name == "predrnn_pp":
        cls = load_openstl_predrnnpp(root)
        configs = SimpleNamespace(
            in_shape=(args.frames, c, args.image_size, args.image_size),
            patch_size=p,
            filter_size=args.kernel,
            stride=1,
            layer_norm=0,
            pre_seq_length=args.context,
            aft_seq_length=args.frames - args.context,
            reverse_scheduled_sampling=0,
        )
        ref = cls(args.layers, [args.hidden] * args.layers, configs)
        randomize(ref, args.seed)
        ours = load_reference("openstl_predrnnpp", ref.state_dict(), patch_size=p, image_channels=c)
    else:
        cell_cls = load_sa_cell(root)
        ref = SATwin(
            cell_cls,
            frame_channel=p * p * c,
            hidden=args.hidden,
            layers=args.layers,
            kernel=args.kernel,
            device=device,
        )
        randomize(ref, args.seed)
        ours = stpl.get_model(
            "sa_convlstm",
            in_channels=c,
            hidden_channels=args.hidden,
            num_layers=args.layers,
            kernel_size=args.kernel,
            patch_size=p,
            fused_attention={"auto": None, "on": True, "off": False}[args.fused_attention],
        )
        for layer, cell in enumerate(ref.cells):
            ours.cells[layer].load_state_dict(
                convert_cell_state_dict("saconvlstm", cell.state_dict())
            )
        ours.decoder.load_state_dict(ref.conv_last.state_dict())
    return ours.to(device), ref.to(device)


def inputs(args: argparse.Namespace, device: torch.device) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Frames, our ``(B, T-2)`` mask, and the reference's channels-last patches and mask."""
    gen = torch.Generator().manual_seed(args.seed + 1)
    size = args.image_size
    frames = torch.rand(args.batch, args.frames, args.channels, size, size, generator=gen)
    mask = (torch.rand(args.batch, args.frames - 2, generator=gen) < 0.5).float()
    p = args.patch_size
    frames_patch = rearrange(frames, "b t c (h ph) (w pw) -> b t h w (ph pw c)", ph=p, pw=p)
    ctx = args.context
    mask_ref = mask[:, ctx - 1 :, None, None, None].expand(
        -1, -1, size // p, size // p, p * p * args.channels
    )
    return (
        frames.to(device),
        mask.to(device),
        frames_patch.contiguous().to(device),
        mask_ref.contiguous().to(device),
    )


def steps(
    name: str,
    ours: nn.Module,
    ref: nn.Module,
    data: tuple[Tensor, Tensor, Tensor, Tensor],
    args: argparse.Namespace,
    dtype: str,
    device: torch.device,
) -> tuple[Callable[[], Any], Callable[[], Any]]:
    """The two timed closures (ours, reference)."""
    frames, mask, frames_patch, mask_ref = data
    ctx = args.context

    def autocast() -> contextlib.AbstractContextManager[Any]:
        if dtype == "bfloat16":
            return torch.autocast(device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def run_ref() -> tuple[Tensor, Tensor]:
        if name == "predrnn_pp":
            out: tuple[Tensor, Tensor] = ref(frames_patch, mask_ref)
        else:
            out = ref(frames_patch, mask_ref, ctx)
        return out

    if args.mode == "forward":

        def ours_step() -> Any:
            with torch.no_grad(), autocast():
                return ours(frames, context=ctx, mask=mask).predictions

        def ref_step() -> Any:
            with torch.no_grad(), autocast():
                return run_ref()[0]

        return ours_step, ref_step

    target = frames[:, 1:]

    def ours_train() -> Any:
        ours.zero_grad(set_to_none=True)
        with autocast():
            loss = F.mse_loss(ours(frames, context=ctx, mask=mask).predictions.float(), target)
        loss.backward()
        return loss.detach()

    def ref_train() -> Any:
        ref.zero_grad(set_to_none=True)
        with autocast():
            loss = run_ref()[1]
        loss.backward()
        return loss.detach()

    return ours_train, ref_train


def check_same_function(
    name: str,
    ours: nn.Module,
    ref: nn.Module,
    data: tuple[Tensor, Tensor, Tensor, Tensor],
    args: argparse.Namespace,
) -> float:
    """Largest |difference| of the float32 predictions (channels-last patch layout)."""
    frames, mask, frames_patch, mask_ref = data
    p = args.patch_size
    with torch.no_grad():
        mine = ours(frames, context=args.context, mask=mask).predictions
        if name == "predrnn_pp":
            theirs = ref(frames_patch, mask_ref)[0]
        else:
            theirs = ref(frames_patch, mask_ref, args.context)[0]
    mine = rearrange(mine, "b t c (h ph) (w pw) -> b t h w (ph pw c)", ph=p, pw=p)
    return float((mine - theirs).abs().max())


def measure(name: str, args: argparse.Namespace, device: torch.device) -> list[dict[str, Any]]:
    ours, ref = build_pair(name, args, device)
    for module in (ours, ref):
        module.train(args.mode == "train")
    data = inputs(args, device)
    diff = check_same_function(name, ours, ref, data, args)
    rows = []
    for dtype in args.dtypes:
        ours_step, ref_step = steps(name, ours, ref, data, args, dtype, device)
        t_ours, t_ref = time_interleaved(
            [ours_step, ref_step], device, repeats=args.repeats, warmup=args.warmup
        )
        per_round = [r / o for o, r in zip(t_ours.times, t_ref.times, strict=True)]
        mem_ours, method = peak_memory_bytes(ours_step, device)
        mem_ref, _ = peak_memory_bytes(ref_step, device)
        rows.append(
            {
                "model": name,
                "dtype": dtype,
                "mode": args.mode,
                "ours": t_ours.to_dict(),
                "reference": t_ref.to_dict(),
                "speedup_of_medians": t_ref.median_s / t_ours.median_s,
                "speedup_per_round_median": statistics.median(per_round),
                "peak_memory_bytes": {"ours": mem_ours, "reference": mem_ref, "method": method},
                "parameters": {
                    "ours": sum(p.numel() for p in ours.parameters()),
                    "reference": sum(p.numel() for p in ref.parameters()),
                },
                "max_abs_diff_float32": diff,
            }
        )
        r = rows[-1]
        print(
            f"{name:12} {dtype:9} {args.mode}: ours {t_ours.median_s * 1e3:9.1f} ms, reference "
            f"{t_ref.median_s * 1e3:9.1f} ms, speed-up {r['speedup_of_medians']:.2f}x "
            f"(per round {r['speedup_per_round_median']:.2f}x); peak memory ours "
            f"{mem_ours / 2**20:.1f} MiB, reference {mem_ref / 2**20:.1f} MiB; "
            f"max |diff| fp32 {diff:.1e}",
            flush=True,
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--reference-root", required=True, help="local reference checkouts")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    parser.add_argument("--mode", choices=("train", "forward"), default="train")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--frames", type=int, default=20, help="T (T-1 recurrent steps)")
    parser.add_argument("--context", type=int, help="teacher-forced steps (default T/2)")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--patch-size", type=int, default=4)
    parser.add_argument("--channels", type=int, default=1)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--kernel", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=7, help="timed runs of each, in turns")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, help="torch.set_num_threads")
    parser.add_argument(
        "--fused-attention",
        choices=("auto", "on", "off"),
        default="auto",
        help="SA-ConvLSTM's attention kernel (auto: fused except on CPU)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", help="write the JSON here (else print it)")
    args = parser.parse_args()
    if args.context is None:
        args.context = args.frames // 2
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    rows = []
    for name in args.models:
        rows += measure(name, args, device)
    config = {k: v for k, v in vars(args).items() if k not in ("out", "reference_root")}
    result = {"config": config, "machine": machine_info(device), "rows": rows}
    text = json.dumps(result, indent=1)
    if args.out:
        Path(args.out).write_text(text + "\n")
    else:
        print(text)


if __name__ == "__main__":
    main()
