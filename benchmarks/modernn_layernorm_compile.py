"""modernn eager vs compiled with per-channel layer norm (``spatial_size=None``), fp32, 1 thread.

Run ``python benchmarks/modernn_layernorm_compile.py eager`` and ``... compiled``: the
preset with per-channel layer-norm affines instead of the reference's per-element ones,
timed by :func:`stpl.benchmark.run_benchmark` (see docs/benchmarks.md, compile notes).
"""

import sys

import stpl.benchmark._workload as W
from stpl.benchmark import BenchConfig, format_result, run_benchmark

# build the preset with per-channel affines: spatial_size=None overrides its per-element ones
orig = W.get_model
W.get_model = lambda name, **kw: orig(name, **{**kw, "spatial_size": None})
result = run_benchmark(
    BenchConfig(
        model="modernn",
        mode="train",
        compile=sys.argv[1] == "compiled",
        threads=1,
        repeats=3,
        memory=False,
        isolated=False,
    )
)
print(format_result(result))
