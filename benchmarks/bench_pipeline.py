"""The planning pipeline (policy -> alignment -> gate in seconds) on DeepSeek-V3 at 32 x 9.

The placement in force is the one ``deepseek`` fits on three prefill workloads; the pipeline
re-plans on the fourth (an aggregate row: the next period is taken to carry that workload's
tokens once) at ``EplbConfig``'s prices. Prints, per policy, the time of the bare policy call
next to the whole pipeline (same process, alternating), and what the gate let through::

    PYTHONPATH=. python benchmarks/bench_pipeline.py            # the table of BENCHMARKS.md
    PYTHONPATH=. python -m pytest benchmarks/bench_pipeline.py  # pytest-benchmark suites
"""

from __future__ import annotations

import statistics
import time

import numpy as np
import pytest

from benchmarks import traces
from eplb_rt import planning
from eplb_rt.algorithms import plan, warm_up
from eplb_rt.placement import Topology

TOPO = Topology(32, 9)
COST = planning.CostModel()  # EplbConfig's defaults: DeepSeek-V3 expert, 50 GB/s, 0.25 us
FIT = ("prefill_in512", "prefill_in1024", "prefill_in2048")
POLICIES = ("equilibrium", "flashlb", "deepseek")


def setup():
    fit = np.concatenate([traces.deepseek_v3(w, moe_only=True).reshape(-1, 58, 256) for w in FIT])
    previous = plan("deepseek", fit, TOPO)
    return traces.deepseek_v3("prefill_in4096", moe_only=True).reshape(1, 58, 256), previous


def _median_ms(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append((time.perf_counter() - started) * 1e3)
    return statistics.median(times)


def main(repeats: int = 5) -> None:
    load, previous = setup()
    warm_up(list(POLICIES))
    print(
        "| policy | plan ms | pipeline ms | layers committed | slots moved | GiB | migration ms "
        "| PAR before -> after (committed) |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---|")
    for name in POLICIES:
        bare = _median_ms(lambda n=name: plan(n, load, TOPO, previous), repeats)
        d = planning.decide(load, previous, TOPO, name, None, cost=COST, horizon=1)
        whole = _median_ms(
            lambda n=name: planning.decide(load, previous, TOPO, n, None, cost=COST, horizon=1),
            repeats,
        )
        layers = list(d.layers)
        after = np.where(np.isin(np.arange(d.par_before.size), layers), d.par_after, d.par_before)
        loaded = int(np.isfinite(d.par_before).sum())
        gib, ms = d.slots * COST.expert_bytes / 2**30, d.migration_s[layers].sum() * 1e3
        print(
            f"| {name} | {bare:.1f} | {whole:.1f} | {len(layers)} / {loaded} | {d.slots} "
            f"({d.slots / previous.phy2log.size:.1%}) | {gib:.2f} | {ms:.1f} | "
            f"{np.nanmean(d.par_before):.4f} -> {np.nanmean(after):.4f} |"
        )


@pytest.fixture(scope="module")
def case():
    warm_up(["equilibrium"])
    return setup()


def test_policy_alone(benchmark, case):
    load, previous = case
    benchmark(plan, "equilibrium", load, TOPO, previous)


def test_pipeline(benchmark, case):
    load, previous = case
    decision = benchmark(
        planning.decide, load, previous, TOPO, "equilibrium", None, cost=COST, horizon=1
    )
    assert all(decision.saved_s[i] > decision.migration_s[i] for i in decision.layers)


if __name__ == "__main__":
    import argparse

    # No options: --help says what runs instead of running it.
    argparse.ArgumentParser(description=__doc__.split("\n\n")[0]).parse_args()
    main()
