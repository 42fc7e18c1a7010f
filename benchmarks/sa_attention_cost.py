"""What SA-ConvLSTM's self-attention costs at 16x16 and 32x32 maps: time and memory.

The self-attention memory attends over all ``N = H*W`` positions, so its time grows with
``N²`` and, computed plainly, so does its memory: the reference builds two ``B x N x N``
softmax matrices per step (``2 B N² `` elements, kept for backward in training). stpl
computes the same ``softmax(Qᵀ K) V`` (no ``1/sqrt(d)``) with one
``F.scaled_dot_product_attention(..., scale=1)`` call on zero-padded heads (see
:func:`stpl.cells.sa_convlstm.self_attention`), whose fused kernels keep no ``N x N``
matrix. This script measures, for each map size and dtype:

- the attention alone (queries ``d = nh/4`` channels, values ``nh``, both attentions of a
  step): stpl's call vs the reference's explicit ``softmax(bmm(Q, K)) @ V``, forward under
  ``no_grad`` and forward + backward, taking turns; peak memory of each; the error of each
  against a float64 computation;
- one training step of an ``SAConvLSTMCell`` (gates + SAM) over 10 time steps with each
  attention kernel (``fused_attention=True`` / ``False``, taking turns), to show how the
  whole cell scales from 16x16 to 32x32 and what the kernel choice changes there.

Peak memory: ``stpl.benchmark``'s ``peak_memory_bytes`` (CUDA: ``max_memory_allocated``;
CPU: the allocator events of ``torch.profiler``), i.e. tensor memory added by one call.

Usage::

    python benchmarks/sa_attention_cost.py --threads 1 --batch 8 --repeats 5 \\
        --out benchmarks/results/sa-attention-cost-cpu.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

import stpl
from stpl.benchmark._measure import machine_info, peak_memory_bytes, time_interleaved
from stpl.cells.sa_convlstm import self_attention


def explicit_attention(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """The reference's computation: ``softmax(bmm(Q, Kᵀ)) @ V`` with the N x N matrix."""
    return torch.softmax(q @ k.transpose(-1, -2), dim=-1) @ v


def attention_rows(
    size: int, dtype: torch.dtype, args: argparse.Namespace, device: torch.device
) -> dict[str, Any]:
    n, d, c, b = size * size, args.hidden // 4, args.hidden, args.batch
    gen = torch.Generator().manual_seed(0)
    # logits of a trained model are O(1..10): queries/keys with unit-variance entries
    q = torch.randn(b, 2, n, d, generator=gen) * 0.5
    k = torch.randn(b, 2, n, d, generator=gen) * 0.5
    v = torch.randn(b, 2, n, c, generator=gen)
    exact = explicit_attention(q.double(), k.double(), v.double())
    q, k, v = (t.to(device=device, dtype=dtype) for t in (q, k, v))
    errors = {
        "ours": float((self_attention(q, k, v).double().cpu() - exact).abs().max()),
        "explicit": float((explicit_attention(q, k, v).double().cpu() - exact).abs().max()),
    }

    def fwd(fn: Any) -> Any:
        def run() -> Tensor:
            with torch.no_grad():
                out: Tensor = fn(q, k, v)
            return out

        return run

    qg, kg, vg = (t.detach().requires_grad_() for t in (q, k, v))

    def train(fn: Any) -> Any:
        def run() -> None:
            for t in (qg, kg, vg):
                t.grad = None
            fn(qg, kg, vg).float().sum().backward()

        return run

    row: dict[str, Any] = {
        "map": f"{size}x{size}",
        "N": n,
        "dtype": str(dtype).removeprefix("torch."),
        "attention_matrices_bytes": 2 * b * n * n * torch.tensor([], dtype=dtype).element_size(),
        "max_abs_error_vs_float64": errors,
    }
    for what, wrap in (("forward", fwd), ("train", train)):
        t_ours, t_ref = time_interleaved(
            [wrap(self_attention), wrap(explicit_attention)], device, repeats=args.repeats
        )
        m_ours, method = peak_memory_bytes(wrap(self_attention), device)
        m_ref, _ = peak_memory_bytes(wrap(explicit_attention), device)
        row[what] = {
            "ours_ms": t_ours.median_s * 1e3,
            "explicit_ms": t_ref.median_s * 1e3,
            "ours_peak_bytes": m_ours,
            "explicit_peak_bytes": m_ref,
            "memory_method": method,
        }
    return row


def cell_row(
    size: int, dtype: str, args: argparse.Namespace, device: torch.device
) -> dict[str, Any]:
    xs = torch.rand(10, args.batch, 16, size, size, device=device)

    def make(fused: bool) -> Any:
        torch.manual_seed(0)
        cell = stpl.SAConvLSTMCell(16, args.hidden, 5, fused_attention=fused).to(device)

        def step() -> None:
            cell.zero_grad(set_to_none=True)
            state = None
            total = xs.new_zeros(())
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=dtype == "bfloat16"):
                for x in xs:
                    h, state = cell(x, state)
                    total = total + h.float().square().mean()
            total.backward()

        return step

    fused, explicit = make(True), make(False)
    t_fused, t_explicit = time_interleaved([fused, explicit], device, repeats=args.repeats)
    return {
        "map": f"{size}x{size}",
        "dtype": dtype,
        "fused_train_10_steps_ms": t_fused.median_s * 1e3,
        "explicit_train_10_steps_ms": t_explicit.median_s * 1e3,
        "fused_peak_bytes": peak_memory_bytes(fused, device)[0],
        "explicit_peak_bytes": peak_memory_bytes(explicit, device)[0],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--sizes", type=int, nargs="+", default=[16, 32])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    attention, cells = [], []
    for size in args.sizes:
        for dtype in (torch.float32, torch.bfloat16):
            row = attention_rows(size, dtype, args, device)
            attention.append(row)
            f, t = row["forward"], row["train"]
            print(
                f"attention {row['map']} {row['dtype']:8}: forward ours {f['ours_ms']:.1f} ms "
                f"/ explicit {f['explicit_ms']:.1f} ms, peak {f['ours_peak_bytes'] / 2**20:.1f} "
                f"/ {f['explicit_peak_bytes'] / 2**20:.1f} MiB; train {t['ours_ms']:.1f} / "
                f"{t['explicit_ms']:.1f} ms, peak {t['ours_peak_bytes'] / 2**20:.1f} / "
                f"{t['explicit_peak_bytes'] / 2**20:.1f} MiB; N x N matrices "
                f"{row['attention_matrices_bytes'] / 2**20:.1f} MiB; error "
                f"{row['max_abs_error_vs_float64']}",
                flush=True,
            )
        for dtype_name in ("float32", "bfloat16"):
            row = cell_row(size, dtype_name, args, device)
            cells.append(row)
            print(
                f"cell {row['map']} {dtype_name:8}: train 10 steps fused "
                f"{row['fused_train_10_steps_ms']:.1f} ms / explicit "
                f"{row['explicit_train_10_steps_ms']:.1f} ms, peak "
                f"{row['fused_peak_bytes'] / 2**20:.1f} / "
                f"{row['explicit_peak_bytes'] / 2**20:.1f} MiB",
                flush=True,
            )
    result = {
        "config": {k: v for k, v in vars(args).items() if k != "out"},
        "machine": machine_info(device),
        "attention": attention,
        "cell": cells,
    }
    text = json.dumps(result, indent=1)
    if args.out:
        Path(args.out).write_text(text + "\n")
    else:
        print(text)


if __name__ == "__main__":
    main()
