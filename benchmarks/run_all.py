"""Run the benchmark suite and write its tables into docs/benchmarks.md.

Every configuration runs ``python -m stpl.benchmark ... --json`` in its own subprocess
(fresh allocator, fresh dynamo caches, an empty inductor cache directory so that compile
times are cold, a timeout per run); results are saved as JSON under
``benchmarks/results/`` and rendered between the ``<!-- BEGIN GENERATED -->`` and
``<!-- END GENERATED -->`` markers of ``docs/benchmarks.md`` (the text around them is
hand-written and kept).

Usage::

    python benchmarks/run_all.py                    # everything (long on a 2-core CPU)
    python benchmarks/run_all.py --groups presets   # one group: presets, compiled, cells,
                                                    # checkpoint, rollout, layout
    python benchmarks/run_all.py --render-only      # re-render from saved JSON

The papers' Moving MNIST configuration: B=8, T=20 (10 context frames, free running
after), 64x64x1 frames, patch 4, 4 layers of 64 channels.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
DOC = ROOT / "docs" / "benchmarks.md"
BEGIN, END = "<!-- BEGIN GENERATED -->", "<!-- END GENERATED -->"

PRESETS = (
    "convlstm",
    "predrnn",
    "predrnn_v2",
    "modernn",
    "mau",
    "phydnet",
    "mim",
    "e3d_lstm",
    "swinlstm",
    "swinlstm_b",
    "encoder_forecaster",
    "mspred",
    "predrnn_pp",
    "sa_convlstm",
)
CELLS = ("convlstm", "stlstm", "modernn", "dcb")
DTYPES = ("float32", "bfloat16")
TWINS = ("mau", "phydnet", "swinlstm", "swinlstm_b", "mspred")
"""Presets timed against their reference model by ``benchmarks/twin_*.py`` (same weights,
taking turns; the reference code comes from a local checkout, never from this repository)."""


def _runs() -> dict[str, list[tuple[str, list[str]]]]:
    """Group -> list of (run id, CLI arguments)."""
    groups: dict[str, list[tuple[str, list[str]]]] = {
        "presets": [],
        "compiled": [],
        "cells": [],
        "checkpoint": [],
        "rollout": [],
        "layout": [],
        "stream": [],
        "kernels": [],
    }
    for name in PRESETS:
        for dtype in DTYPES:
            args = ["--model", name, "--mode", "train", "--dtype", dtype]
            groups["presets"].append((f"preset-{name}-{dtype}-eager", args))
            groups["compiled"].append((f"preset-{name}-{dtype}-compiled", [*args, "--compile"]))
            groups["compiled"].append(
                (
                    f"preset-{name}-{dtype}-compiled-layout",
                    [*args, "--compile", "--inductor-option", "layout_optimization=true"],
                )
            )
            roll = ["--model", name, "--mode", "rollout", "--dtype", dtype]
            groups["rollout"].append((f"rollout-{name}-{dtype}", roll))
            stream = ["--model", name, "--mode", "stream", "--dtype", dtype]
            groups["stream"].append((f"stream-{name}-{dtype}", stream))
        kernels = ["--model", name, "--mode", "kernels", "--batch", "2"]
        groups["kernels"].append((f"kernels-{name}", kernels))
        groups["kernels"].append(
            (
                f"kernels-{name}-layout",
                [*kernels, "--inductor-option", "layout_optimization=true"],
            )
        )
    for cell in CELLS:
        for dtype in DTYPES:
            args = ["--cell", cell, "--mode", "train", "--dtype", dtype]
            groups["cells"].append((f"cell-{cell}-{dtype}-eager", args))
    for dtype in DTYPES:
        # the plain side of the comparison is the preset run "preset-predrnn-<dtype>-eager"
        ck_args = ["--model", "predrnn", "--mode", "train", "--dtype", dtype, "--checkpoint-steps"]
        groups["checkpoint"].append((f"checkpoint-predrnn-{dtype}-ckpt", ck_args))
        groups["layout"].append(
            (
                f"layout-predrnn-{dtype}-channels_last",
                ["--model", "predrnn", "--mode", "train", "--dtype", dtype, "--channels-last"],
            )
        )
    return groups


def run_one(run_id: str, args: list[str], *, repeats: int, threads: int, timeout: float) -> None:
    """Run one configuration in a subprocess and save its JSON (or the failure)."""
    cmd = [sys.executable, "-m", "stpl.benchmark", *args, "--json"]
    cmd += ["--repeats", str(repeats), "--threads", str(threads)]
    # a fresh, empty inductor cache per run: compile times are cold, as a new user sees them
    cache = tempfile.mkdtemp(prefix="stpl-bench-inductor-")
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "TORCHINDUCTOR_CACHE_DIR": cache}
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
        if proc.returncode == 0:
            result: dict[str, Any] = json.loads(proc.stdout)
        else:
            result = {"error": proc.stderr[-2000:]}
    except subprocess.TimeoutExpired:
        result = {"error": f"timed out after {timeout:.0f} s"}
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    result["run_id"] = run_id
    result["argv"] = args
    result["wall_s"] = time.perf_counter() - t0
    result["loadavg_after"] = os.getloadavg()
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{run_id}.json").write_text(json.dumps(result, indent=1))
    if "error" in result:
        status = "error"
    elif "step" in result:
        status = f"{result['step']['median_s']:.3f} s/step"
    else:
        status = "done"
    print(f"[{result['wall_s']:7.1f} s] {run_id}: {status}", flush=True)


# ---------------------------------------------------------------- rendering
def _load(run_id: str) -> dict[str, Any] | None:
    path = RESULTS / f"{run_id}.json"
    if not path.exists():
        return None
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def _twin_row(name: str, mode: str, dtype: str, r: dict[str, Any]) -> str:
    """One row of the twin table from either schema of the twin scripts' JSON."""
    if "ours_step" in r:  # twin_openstl_swinlstm.py
        cfg = r["config"]
        size = f"B={cfg['batch']}, T={cfg['frames']}, {cfg['image_size']}px, e{cfg['embed_dim']}"
        ours, ref = r["ours_step"]["median_s"], r["reference_step"]["median_s"]
        diff = r["max_abs_diff_fp32_eval"]
    else:  # twin_openstl_mau_phydnet.py, twin_mspred.py
        size = f"B={r['batch']}, T={r['frames']}, {r['image_size']}px"
        ours, ref = r["ours_median_s"], r["reference_median_s"]
        diff = r["max_abs_diff_predictions"]
    return (
        f"| {name} | {r['reference']} | {mode} | {dtype} | {size} | {_ms(ours)} | {_ms(ref)} "
        f"| {ref / ours:.2f}x | {diff:.1e} |"
    )


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.0f}" if seconds >= 0.1 else f"{seconds * 1e3:.1f}"


def _row_cells(r: dict[str, Any] | None) -> list[str]:
    """Step median (IQR), frames/s, GFLOP, GFLOP/s, isolated GFLOP/s, fraction, memory."""
    if r is None:
        return ["not run"] + [""] * 6
    if "error" in r:
        lines = r["error"].strip().splitlines()
        return [f"failed: {lines[-1][:60]}" if lines else "failed (no output)"] + [""] * 6
    step = r["step"]
    iso = r["isolated_conv"]
    frac = r["fraction_of_conv_rate"]
    mem = r["peak_memory_bytes"]
    return [
        f"{_ms(step['median_s'])} ({_ms(step['iqr_s'])})",
        f"{r['frames_per_s']:.1f}",
        f"{r['flops'] / 1e9:.1f}",
        f"{r['gflops_per_s']:.0f}",
        f"{iso['gflops_per_s']:.0f}" if iso else "",
        f"**{frac:.0%}**" if frac is not None else "",
        f"{mem / 2**20:.0f}" if mem is not None else "",
    ]


def _compile_cells(r: dict[str, Any] | None) -> str:
    """Compile s, graph breaks, graphs, eager ms, compiled ms, speed-up (per-round range)."""
    if r is None or "error" in r or r.get("compile") is None:
        return ("not run" if r is None else "failed") + " |" * 6
    c = r["compile"]
    if "speedup" not in c:  # a result saved before the tool timed the eager twin
        return f"{c['compile_s']:.0f} | {c['graph_breaks']} | {c['graphs']} | | | |"
    rounds = c["speedup_per_round"] or []
    spread = f" ({min(rounds):.2f}-{max(rounds):.2f})" if rounds else ""
    return (
        f"{c['compile_s']:.0f} | {c['graph_breaks']} | {c['graphs']} | "
        f"{_ms(c['eager_step']['median_s'])} | {_ms(r['step']['median_s'])} | "
        f"**{c['speedup']:.3f}x**{spread} |"
    )


HEAD = (
    "| step ms, median (IQR) | frames/s | GFLOP/step | GFLOP/s | isolated conv GFLOP/s "
    "| fraction | peak MiB |"
)


def _table(title: str, rows: list[tuple[str, str, str, dict[str, Any] | None]]) -> list[str]:
    lines = [f"### {title}", "", f"| what | dtype | variant {HEAD}", "|---" * 10 + "|"]
    for what, dtype, variant, r in rows:
        lines.append(f"| {what} | {dtype} | {variant} | " + " | ".join(_row_cells(r)) + " |")
    return [*lines, ""]


def render() -> str:
    """The generated part of docs/benchmarks.md, from the saved JSON."""
    out: list[str] = []
    machine = None
    for path in sorted(RESULTS.glob("*.json")):
        data = json.loads(path.read_text())
        if "machine" in data:
            machine = data["machine"]
            break
    if machine is not None:
        out += [
            f"Machine: **{machine['cpu']}**, torch {machine['torch']}, "
            f"{machine['threads']} thread(s) (`torch.set_num_threads`), "
            f"Python {machine['python']}.",
            "",
        ]
    rows = []
    for name in PRESETS:
        for dtype in DTYPES:
            rows.append((name, dtype, "eager", _load(f"preset-{name}-{dtype}-eager")))
            rows.append((name, dtype, "compiled", _load(f"preset-{name}-{dtype}-compiled")))
            layout = _load(f"preset-{name}-{dtype}-compiled-layout")
            rows.append((name, dtype, "compiled, layout opt.", layout))
    out += _table("Presets, training step (forward + backward over 19 steps), B=8", rows)

    comp = []
    for name in PRESETS:
        for dtype in DTYPES:
            runs = [
                ("CPU default (no layout opt.)", f"preset-{name}-{dtype}-compiled"),
                ("layout_optimization=True", f"preset-{name}-{dtype}-compiled-layout"),
            ]
            done = [(options, _load(run_id)) for options, run_id in runs]
            if all(r is None for _, r in done):
                comp.append(f"| {name} | {dtype} | | " + _compile_cells(None))
            for options, r in done:
                if r is not None:
                    comp.append(f"| {name} | {dtype} | {options} | " + _compile_cells(r))
    out += [
        "### torch.compile (inductor) of the training step vs its eager twin, taking turns",
        "",
        "| preset | dtype | inductor options | compile s | graph breaks | graphs "
        "| eager ms | compiled ms | speed-up (per round) |",
        "|---|---|---|---|---|---|---|---|---|",
        *comp,
        "",
    ]

    rows = []
    for cell in CELLS:
        for dtype in DTYPES:
            rows.append((cell, dtype, "eager", _load(f"cell-{cell}-{dtype}-eager")))
    out += _table(
        "Single cells, training step over 20 steps, B=8, 16x16 maps, 16 -> 64 channels", rows
    )

    rows = []
    for dtype in DTYPES:
        rows.append(("predrnn", dtype, "plain", _load(f"preset-predrnn-{dtype}-eager")))
        rows.append(
            ("predrnn", dtype, "checkpoint_steps", _load(f"checkpoint-predrnn-{dtype}-ckpt"))
        )
    out += _table("Activation checkpointing over time (predrnn, training step, B=8)", rows)
    ck = []
    for dtype in DTYPES:
        a = _load(f"preset-predrnn-{dtype}-eager")
        b = _load(f"checkpoint-predrnn-{dtype}-ckpt")
        if a and b and "error" not in a and "error" not in b:
            ck.append(
                f"| {dtype} | {a['peak_memory_bytes'] / b['peak_memory_bytes']:.2f}x less | "
                f"{b['step']['median_s'] / a['step']['median_s']:.2f}x |"
            )
    if ck:
        out += [
            "| dtype | peak memory, checkpointed vs plain | step time, checkpointed / plain |",
            "|---|---|---|",
            *ck,
            "",
        ]

    rows = []
    for dtype in DTYPES:
        r = _load(f"layout-predrnn-{dtype}-channels_last")
        rows.append(("predrnn", dtype, "channels_last", r))
    out += _table("Layout: channels_last parameters (predrnn, training step, B=8)", rows)

    ro = []
    for name in PRESETS:
        for dtype in DTYPES:
            r = _load(f"rollout-{name}-{dtype}")
            if r is None or "error" in r:
                ro.append(f"| {name} | {dtype} | {'not run' if r is None else 'failed'} | | |")
                continue
            s = r["stream_latency"]
            ro.append(
                f"| {name} | {dtype} | {_ms(r['step']['median_s'])} ({r['frames_per_s']:.0f} "
                f"frames/s) | {_ms(s['median_s'])} ({_ms(s['iqr_s'])}) | "
                f"{r['fraction_of_conv_rate']:.0%} |"
            )
    out += [
        "### Rollout: `generate` (10 context frames, 10 predicted, B=8) and streaming latency",
        "",
        "| preset | dtype | generate ms (frames/s) | one step, batch 1, ms median (IQR) "
        "| generate fraction |",
        "|---|---|---|---|---|",
        *ro,
        "",
    ]
    twins = []
    for name in TWINS:
        for mode in ("train", "forward"):
            for dtype in DTYPES:
                for path in sorted(RESULTS.glob(f"twin-{name}-{dtype}-{mode}*.json")):
                    r = json.loads(path.read_text())
                    if "error" not in r:
                        twins.append(_twin_row(name, mode, dtype, r))
    if twins:
        out += [
            "### Against the reference models, same weights, taking turns "
            "(`benchmarks/twin_openstl_mau_phydnet.py`, `twin_openstl_swinlstm.py`, "
            "`twin_mspred.py`)",
            "",
            "| preset | reference | step | dtype | size | ours ms | reference ms "
            "| reference / ours | max abs diff |",
            "|---|---|---|---|---|---|---|---|---|",
            *twins,
            "",
        ]
    stream_rows = []
    for name in PRESETS:
        for dtype in DTYPES:
            r = _load(f"stream-{name}-{dtype}")
            if r is None or "error" in r:
                state = "not run" if r is None else "failed"
                stream_rows.append(f"| {name} | {dtype} | {state} | | | | | | |")
                continue
            v = r["variants"]
            cells = []
            for what in ("per_observed_frame_s", "per_forecast_frame_s"):
                cells += [_ms(v[k][what]) for k in ("eager", "compiled", "exported")]
            label = name + "".join(
                f" ({k}={val})" for k, val in r.get("preset_overrides", {}).items()
            )
            stream_rows.append(
                f"| {label} | {dtype} | " + " | ".join(cells) + f" | {r['horizon']} |"
            )
    out += [
        "### Streaming latency: batch 1, per observed frame and per forecast frame "
        "(`stpl-bench --mode stream`)",
        "",
        "| preset | dtype | observe eager ms | observe compile_step ms | observe exported ms "
        "| forecast eager ms/frame | forecast compile_step ms/frame "
        "| forecast exported ms/frame | horizon |",
        "|---|---|---|---|---|---|---|---|---|",
        *stream_rows,
        "",
    ]
    kernel_rows = []
    for name in PRESETS:
        cells = []
        for suffix in ("", "-layout"):
            r = _load(f"kernels-{name}{suffix}")
            for mode in ("inference", "training"):
                if r is None or "error" in r:
                    cells.append("not run" if r is None else "failed")
                    continue
                k = r["kernels_per_step"][mode]
                cell = f"{k['eager']} / {k['compiled']} (**{k['ratio']:.2f}**)"
                if not suffix:
                    cell += f" | {k['generated']} + {k['extern']} ({k['extern'] / k['eager']:.2f})"
                cells.append(cell)
        kernel_rows.append(f"| {name} | " + " | ".join(cells) + " |")
    out += [
        "### Kernel launches per recurrent step (`stpl-bench --mode kernels`, B=2)",
        "",
        "eager / compile_step launches (**compiled / eager**), counted at run time; then the "
        "compiled launches split into inductor's generated kernels + the ATen operators it "
        "still calls (extern: convolutions, their backward, the parameters' gradient adds), "
        "with the extern share of eager's count in brackets (no compiler that calls the same "
        "operators goes below it). compile_step's CPU default has inductor's layout "
        "optimization off; the last two columns turn it on "
        "(`--inductor-option layout_optimization=true`).",
        "",
        "| preset | inference | inference: generated + extern | training "
        "| training: generated + extern | inference, layout opt. | training, layout opt. |",
        "|---|---|---|---|---|---|---|",
        *kernel_rows,
        "",
    ]
    for path in sorted(RESULTS.glob("twins-*.json")):
        twin_file = json.loads(path.read_text())
        cfg = twin_file["config"]
        out += [
            f"### Reference twins (`benchmarks/reference_twins.py`, `{path.name}`): "
            f"B={cfg['batch']}, T={cfg['frames']}, {cfg['image_size']}x{cfg['image_size']}, "
            f"{cfg['layers']}x{cfg['hidden']}, k{cfg['kernel']}, {cfg['mode']}, "
            f"{twin_file['machine']['threads']} thread(s)",
            "",
            "| preset | dtype | ours ms | reference ms | speed-up (medians) | speed-up (per round) "
            "| peak MiB ours / reference | max abs diff fp32 |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for t in twin_file["rows"]:
            mem = t["peak_memory_bytes"]
            out.append(
                f"| {t['model']} | {t['dtype']} | {_ms(t['ours']['median_s'])} | "
                f"{_ms(t['reference']['median_s'])} | {t['speedup_of_medians']:.2f}x | "
                f"{t['speedup_per_round_median']:.2f}x | {mem['ours'] / 2**20:.1f} / "
                f"{mem['reference'] / 2**20:.1f} | {t['max_abs_diff_float32']:.1e} |"
            )
        out.append("")
    batched = _load("batched-conv")
    if batched is not None:
        out += [
            "### Batching convolutions over time (`benchmarks/batched_conv.py`, "
            f"B={batched['batch']}, {batched['threads']} thread(s))",
            "",
            "| dtype | convolution | what | T calls on B maps, ms | one call on B*T maps, ms "
            "| batched speed-up |",
            "|---|---|---|---|---|---|",
        ]
        for b in batched["rows"]:
            out.append(
                f"| {b['dtype']} | {b['conv']} | {b['what']} ({b['calls']} steps) | "
                f"{b['per_step_ms']:.1f} | {b['batched_ms']:.1f} | {b['speedup']:.2f}x |"
            )
        out.append("")
    return "\n".join(out)


def write_doc() -> None:
    """Replace the generated block of docs/benchmarks.md (create the file if needed)."""
    block = f"{BEGIN}\n{render()}\n{END}"
    if DOC.exists() and BEGIN in DOC.read_text():
        text = DOC.read_text()
        head, rest = text.split(BEGIN, 1)
        tail = rest.split(END, 1)[1] if END in rest else ""
        DOC.write_text(head + block + tail)
    else:
        DOC.parent.mkdir(parents=True, exist_ok=True)
        DOC.write_text(f"# Benchmarks\n\n{block}\n")


def main() -> int:
    """Run the selected groups, then render the doc."""
    groups = _runs()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--groups", nargs="*", default=list(groups), choices=list(groups))
    p.add_argument("--only", nargs="*", help="run ids to run (default: all in the groups)")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per configuration (3)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per run (1)")
    p.add_argument("--timeout", type=float, default=900, help="seconds per configuration")
    p.add_argument("--skip-existing", action="store_true", help="keep saved results")
    p.add_argument("--render-only", action="store_true")
    p.add_argument(
        "--jobs", type=int, default=1, help="configurations run at once (each its own process)"
    )
    args = p.parse_args()
    if not args.render_only:
        todo = [
            (run_id, argv)
            for group in args.groups
            for run_id, argv in groups[group]
            if not (args.only and run_id not in args.only)
            and not (args.skip_existing and (RESULTS / f"{run_id}.json").exists())
        ]
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
            for run_id, argv in todo:
                pool.submit(
                    run_one,
                    run_id,
                    argv,
                    repeats=args.repeats,
                    threads=args.threads,
                    timeout=args.timeout,
                )
    write_doc()
    return 0


if __name__ == "__main__":
    sys.exit(main())
