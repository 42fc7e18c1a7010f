"""Would batching convolutions over time pay on this machine? Measures both ideas.

A recurrent step calls each convolution once per time step on a batch of B maps. Two
restructurings turn T small calls into one call on B*T maps:

- *precomputed input convolutions*: in teacher-forced steps the first layer's inputs are
  known frames, so its input-to-gate convolution can run once over ``(B*T_context, ...)``;
- *batched weight gradients over time*: in backward, compute only the input gradient at
  each step and the weight gradient once over all ``(input, output-gradient)`` pairs
  stacked along the batch axis.

Both only pay if one convolution on B*T maps is faster than T convolutions on B maps.
This script times exactly that, for the convolution shapes of the presets (16x16 maps,
64 hidden channels), in float32 and bfloat16, the two variants taking turns::

    python benchmarks/batched_conv.py --threads 1 --batch 8 --repeats 7

It prints a table (ratio > 1: the batched call is faster) and with ``--json`` the rows.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable

import torch

from stpl.benchmark._measure import time_interleaved

# (label, in channels, out channels, kernel): the presets' convolutions at 4 x 64 channels
SHAPES = [
    ("predrnn layer-0 input (conv_x)", 16, 448, 5),
    ("predrnn input (conv_x)", 64, 448, 5),
    ("predrnn hidden (conv_h)", 64, 256, 5),
    ("predrnn memory (conv_m)", 64, 192, 5),
    ("modernn gates", 64, 256, 3),
]


def _median_pair(
    a: Callable[[], object], b: Callable[[], object], repeats: int
) -> tuple[float, float]:
    """Median seconds of ``a`` and ``b``, taking turns (the benchmark tool's timer)."""
    ta, tb = time_interleaved([a, b], torch.device("cpu"), repeats=repeats)
    return ta.median_s, tb.median_s


def measure(
    c_in: int,
    c_out: int,
    k: int,
    dtype: torch.dtype,
    batch: int,
    steps: int,
    mode: str,
    repeats: int,
) -> tuple[float, float]:
    """Seconds for ``steps`` calls on ``batch`` maps and for one call on ``batch*steps`` maps."""
    w = torch.randn(c_out, c_in, k, k, dtype=dtype)
    pad = [k // 2, k // 2]
    x = torch.randn(batch * steps, c_in, 16, 16, dtype=dtype)
    gy = torch.randn(batch * steps, c_out, 16, 16, dtype=dtype)
    xs = list(x.split(batch))
    gys = list(gy.split(batch))

    def forward(inp: torch.Tensor) -> None:
        torch.ops.aten.convolution(inp, w, None, [1, 1], pad, [1, 1], False, [0, 0], 1)

    def wgrad(g: torch.Tensor, inp: torch.Tensor) -> None:
        torch.ops.aten.convolution_backward(
            g, inp, w, None, [1, 1], pad, [1, 1], False, [0, 0], 1, [False, False, True]
        )

    if mode == "forward":
        return _median_pair(lambda: [forward(t) for t in xs], lambda: forward(x), repeats)
    return _median_pair(
        lambda: [wgrad(g, t) for g, t in zip(gys, xs, strict=True)], lambda: wgrad(gy, x), repeats
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--context", type=int, default=10, help="teacher-forced steps")
    parser.add_argument("--steps", type=int, default=19, help="recurrent steps in backward")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    rows = []
    for dtype in (torch.float32, torch.bfloat16):
        for label, c_in, c_out, k in SHAPES:
            for mode, steps in (("forward", args.context), ("weight grad", args.steps)):
                small, big = measure(
                    c_in, c_out, k, dtype, args.batch, steps, mode.split()[0], args.repeats
                )
                rows.append(
                    {
                        "dtype": str(dtype).removeprefix("torch."),
                        "conv": f"{label} {c_in}->{c_out} {k}x{k}",
                        "what": mode,
                        "calls": steps,
                        "per_step_ms": small * 1e3,
                        "batched_ms": big * 1e3,
                        "speedup": small / big,
                    }
                )
                r = rows[-1]
                if not args.json:
                    print(
                        f"{r['dtype']:9} {r['conv']:44} {mode:12} {steps} x B={args.batch}: "
                        f"{r['per_step_ms']:7.1f} ms   1 x B={args.batch * steps}: "
                        f"{r['batched_ms']:7.1f} ms   batched speed-up {r['speedup']:.2f}x",
                        flush=True,
                    )
    if args.json:
        print(json.dumps({"threads": args.threads, "batch": args.batch, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
