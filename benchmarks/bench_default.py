"""Benchmark of the ``default`` policy on SGLang's DeepSeek-V3 trace (58 MoE layers x 256).

Run: ``PYTHONPATH=. python -m pytest benchmarks/bench_default.py``

Times are for all 58 layers in one ``plan`` call (load check, numba kernels, placement
validation), after ``warm_up()``. The warm-up is measured in a fresh interpreter twice: with an
empty numba cache (compilation) and with the on-disk cache filled (a normal start).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile

import pytest

from benchmarks import traces
from eplb_rt.algorithms import metrics, plan, warm_up
from eplb_rt.placement import Topology

SHAPES = [(32, 9), (64, 5)]

WARM_UP_SCRIPT = """
import time
start = time.perf_counter()
from eplb_rt.algorithms import warm_up
warm_up(["default"])
print(time.perf_counter() - start)
"""


@pytest.fixture(scope="module")
def deepseek_v3():
    warm_up(["default"])
    return traces.deepseek_v3("prefill_in4096", moe_only=True)


@pytest.mark.parametrize(("ranks", "slots"), SHAPES, ids=[f"{d}x{s}" for d, s in SHAPES])
def test_default_deepseek_v3(benchmark, deepseek_v3, ranks, slots):
    topo = Topology(ranks, slots)
    placement = benchmark(plan, "default", deepseek_v3, topo)
    summary = metrics.score(placement, deepseek_v3)
    benchmark.extra_info.update(
        layers=placement.num_layers,
        par_mean=round(summary["par_mean"], 5),
        par_max=round(summary["par_max"], 5),
    )
    assert summary["loaded_layers"] == 58


def _warm_up_seconds(cache_dir: str) -> float:
    env = dict(os.environ, NUMBA_CACHE_DIR=cache_dir)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
    out = subprocess.run(
        [sys.executable, "-c", WARM_UP_SCRIPT], env=env, check=True, capture_output=True, text=True
    )
    return float(out.stdout.strip().splitlines()[-1])


def test_default_warm_up(benchmark):
    """Import + ``warm_up`` in a fresh interpreter: cold numba cache, then filled cache."""
    with tempfile.TemporaryDirectory() as cache_dir:
        cold = _warm_up_seconds(cache_dir)
        cached = benchmark.pedantic(_warm_up_seconds, args=(cache_dir,), rounds=3, iterations=1)
    benchmark.extra_info.update(cold_s=round(cold, 3), cached_s=round(cached, 3))
