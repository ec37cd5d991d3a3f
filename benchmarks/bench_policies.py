"""Plan time and cold start of the policies on SGLang's DeepSeek-V3 traces (58 MoE layers x 256).

Run: ``PYTHONPATH=. taskset -c 0 python -m pytest benchmarks/bench_policies.py
--benchmark-json=bench_policies.json`` (PAR, moves and the cold-start seconds are in
``extra_info``).

* ``test_plan``: one ``plan`` call for all 58 layers after ``warm_up()`` (load check, episodes,
  numba kernels, building the ``Placement``), on the summed prefill load and on 16 episodes
  (each of the four prefill workloads sampled four times, 200,000 tokens a layer, seeded);
  ``deepseek`` and ``flashlb`` alongside the default policy, in the same process.
* ``test_plan_unseen``: the default policy with and without ``unseen=1`` on the four prefill
  workloads as episodes (where it acts) and on the 16 episodes (where it is mostly noise).
* ``test_replan``: the default policy with a previous placement (fitted on 16 episodes, re-plan
  on ``prefill_in512``); ``test_replan_episodes``: the same re-plan on 16 sampled draws of
  ``prefill_in512`` (as a runtime's history gives it).
* ``test_plan_groups``: hierarchical plans (``hierarchical=True``) at 64x5 on 8 nodes with 8,
  64 or 256 expert groups, on the 16 episodes: the groups' packing onto nodes swaps groups
  while that balances every episode, a search over pairs of groups.
* ``test_runtime_plan``: the runtime's own plan, ``planning.decide`` as its balancer calls it
  (``EplbConfig``'s history and interval: 256 steps read and a life of 255, the next plan 100
  steps on, the default prices), on 256 decode-size steps drawn from ``prefill_in1024`` (8 or
  64 tokens a rank, top-8, seeded): ``first`` from the starting layout, ``next`` with the first
  plan's placement in force, on the next 256 steps. ``extra_info``: layers committed, slots
  moved.
* ``test_runtime_plan_threads`` and ``test_plan_threads``: the runtime's first plan at 64x5
  (8 tokens a rank) and the plan-time goal's plan, their layers split over 1, 2 or 4 threads
  (``EplbConfig.plan_threads``, ``plan(threads=...)``): the same placements, sooner where the
  machine has the cores (run them without ``taskset -c 0``).
* ``test_cold_start``: a fresh interpreter with ``NUMBA_CACHE_DIR`` pointed at an empty
  directory: import, then the first plan of a small load, then a re-plan with a previous
  placement (the kernels of moves that pay); wall and CPU seconds (the compile is
  single-threaded: on a busy machine the CPU seconds are the ones to compare) and the number of
  kernels numba compiled. ``shipped``: the kernels load from the cache the build filled in the
  package (``eplb_rt/_kernels``; ``setup.py`` or ``eplb-rt policies --warm-up``); ``shipped,
  another CPU``: the same, planned as on a CPU the build did not compile for (``NUMBA_CPU_NAME``
  set to another CPU: the build's portable entries load); ``jit``:
  ``EPLB_RT_KERNEL_CACHE=0``, so numba compiles everything the plans run (no cache at all).

On a shared machine add ``--benchmark-timer time.process_time`` (CPU time of this process).
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile

import numpy as np
import pytest

from benchmarks import traces
from eplb_rt import planning
from eplb_rt.algorithms import metrics, plan, warm_up
from eplb_rt.config import EplbConfig
from eplb_rt.placement import Topology

DEFAULT = EplbConfig.__dataclass_fields__["policy"].default
TOPO = Topology(64, 5)

COLD_SCRIPT = """
import json, sys, time
clocks = [(time.perf_counter(), time.process_time())]
import numpy as np
from eplb_rt.algorithms import plan
from eplb_rt.placement import Topology
clocks.append((time.perf_counter(), time.process_time()))
load = np.random.default_rng(0).pareto(1.5, size=(4, 2, 16)) * 100
first = plan(sys.argv[1], load, Topology(4, 5))
clocks.append((time.perf_counter(), time.process_time()))
plan(sys.argv[1], load[::-1], Topology(4, 5), previous=first)
clocks.append((time.perf_counter(), time.process_time()))
out = {}
for i, name in enumerate(("import", "first_plan", "first_replan")):
    out[name + "_s"] = clocks[i + 1][0] - clocks[i][0]
    out[name + "_cpu_s"] = clocks[i + 1][1] - clocks[i][1]
from numba.core.registry import CPUDispatcher
kernels = {id(v): v for n, m in list(sys.modules.items()) if n.startswith("eplb_rt.")
           for v in vars(m).values() if isinstance(v, CPUDispatcher)}.values()
out["compiled"] = sum(sum(k.stats.cache_misses.values()) for k in kernels)
print(json.dumps(out))
"""


def episodes16() -> np.ndarray:
    """``[16, 58, 256]``: each prefill workload sampled four times (seeded multinomial)."""
    rng = np.random.default_rng(0)
    return np.concatenate(
        [
            traces.sample_tokens(traces.deepseek_v3(name, moe_only=True)[0], 4, 200_000, rng)
            for name in traces.DEEPSEEK_V3_WORKLOADS
        ]
    )


@pytest.fixture(scope="module")
def loads() -> dict[str, np.ndarray]:
    warm_up([DEFAULT, "deepseek", "flashlb"])
    workloads = np.concatenate(
        [traces.deepseek_v3(w, moe_only=True) for w in traces.DEEPSEEK_V3_WORKLOADS]
    )
    summed = workloads.sum(axis=0, keepdims=True)
    return {"summed": summed, "16 episodes": episodes16(), "4 workloads": workloads}


@pytest.mark.parametrize("kind", ["summed", "16 episodes"])
@pytest.mark.parametrize("policy", [DEFAULT, "deepseek", "flashlb"])
def test_plan(benchmark, loads, policy, kind):
    load = loads[kind]
    placement = benchmark.pedantic(plan, args=(policy, load, TOPO), rounds=3, iterations=1)
    benchmark.extra_info.update(
        par_mean=round(float(np.nanmean(metrics.par(placement, load.sum(0)))), 5)
    )
    assert placement.num_layers == 58


@pytest.mark.parametrize("groups", [8, 64, 256])
@pytest.mark.parametrize("policy", [DEFAULT, "flashlb"])
def test_plan_groups(benchmark, loads, policy, groups):
    topology = Topology(64, 5, num_nodes=8, num_groups=groups)
    options = {"hierarchical": True}
    placement = benchmark.pedantic(
        plan, args=(policy, loads["16 episodes"], topology), kwargs={"options": options},
        rounds=2, iterations=1,
    )  # fmt: skip
    assert placement.num_layers == 58


@pytest.mark.parametrize("kind", ["4 workloads", "16 episodes"])
@pytest.mark.parametrize("unseen", [0.0, 1.0])
def test_plan_unseen(benchmark, loads, kind, unseen):
    load = loads[kind]
    options = {"unseen": unseen}
    placement = benchmark.pedantic(
        plan, args=(DEFAULT, load, TOPO), kwargs={"options": options}, rounds=3, iterations=1
    )
    assert placement.num_layers == 58


def test_replan(benchmark, loads):
    new = traces.deepseek_v3("prefill_in512", moe_only=True)
    previous = plan(DEFAULT, loads["16 episodes"], TOPO)
    placement = benchmark.pedantic(
        plan, args=(DEFAULT, new, TOPO), kwargs={"previous": previous}, rounds=3, iterations=1
    )
    benchmark.extra_info.update(
        par_before=round(float(np.nanmean(metrics.par(previous, new[0]))), 5),
        par_after=round(float(np.nanmean(metrics.par(placement, new[0]))), 5),
        moved_fraction=round(placement.moved_fraction(previous), 4),
    )


def test_replan_episodes(benchmark, loads):
    """The runtime's case: a re-plan from its history's episodes (16 draws of ``prefill_in512``)."""
    rng = np.random.default_rng(1)
    new = traces.deepseek_v3("prefill_in512", moe_only=True)[0]
    episodes = traces.sample_tokens(new, 16, 200_000, rng)
    previous = plan(DEFAULT, loads["16 episodes"], TOPO)
    placement = benchmark.pedantic(
        plan, args=(DEFAULT, episodes, TOPO), kwargs={"previous": previous}, rounds=3, iterations=1
    )
    benchmark.extra_info.update(
        par_before=round(float(np.nanmean(metrics.par(previous, new))), 5),
        par_after=round(float(np.nanmean(metrics.par(placement, new))), 5),
        moved_fraction=round(placement.moved_fraction(previous), 4),
    )


def _runtime_case(topo: Topology, tokens_per_rank: int, windows: int):
    """What the balancer's ``decide`` gets: ``windows`` rings of decode-size steps drawn from
    ``prefill_in1024`` (seeded), the starting placement, and ``decide``'s prices and spans as
    ``EplbConfig()`` sets them."""
    warm_up([DEFAULT])
    config = EplbConfig()
    rng = np.random.default_rng(0)
    workload = traces.deepseek_v3("prefill_in1024", moe_only=True)[0]
    steps = [
        traces.sample_tokens(workload, config.history, topo.num_ranks * tokens_per_rank * 8, rng)
        for _ in range(windows)
    ]
    kwargs = {
        "cost": planning.CostModel(), "horizon": config.interval, "lifetime": config.history - 1
    }  # fmt: skip
    return steps, planning.starting_placement(58, 256, topo), kwargs


@pytest.mark.parametrize("which", ["first", "next"])
@pytest.mark.parametrize("tokens_per_rank", [8, 64])
@pytest.mark.parametrize("shape", [(64, 5), (32, 9)], ids=["64x5", "32x9"])
def test_runtime_plan(benchmark, shape, tokens_per_rank, which):
    """The balancer's ``decide`` call: the plan a serving engine waits on in the background."""
    topo = Topology(*shape)
    steps, in_force, kwargs = _runtime_case(topo, tokens_per_rank, 2)
    if which == "next":
        in_force = planning.decide(steps[0], in_force, topo, DEFAULT, None, **kwargs).placement
    load = steps[which == "next"]
    decision = benchmark.pedantic(
        planning.decide, args=(load, in_force, topo, DEFAULT, None), kwargs=kwargs, rounds=2,
        iterations=1,
    )  # fmt: skip
    benchmark.extra_info.update(layers=len(decision.layers), slots=decision.slots)


@pytest.mark.parametrize("threads", [1, 2, 4])
def test_runtime_plan_threads(benchmark, threads):
    """The runtime's first plan at 64x5 (8 tokens a rank), its layers split over ``threads``
    (``EplbConfig.plan_threads``): the same decision on any number, each a core where the
    machine has them (not under ``taskset -c 0``)."""
    (load,), in_force, kwargs = _runtime_case(TOPO, 8, 1)
    decision = benchmark.pedantic(
        planning.decide, args=(load, in_force, TOPO, DEFAULT, None),
        kwargs={**kwargs, "threads": threads}, rounds=3, iterations=1,
    )  # fmt: skip
    benchmark.extra_info.update(layers=len(decision.layers), slots=decision.slots)


@pytest.mark.parametrize("threads", [1, 2, 4])
def test_plan_threads(benchmark, loads, threads):
    """The plan-time goal's plan (the default policy, 16 episodes, 64x5) on ``threads``."""
    load = loads["16 episodes"]
    benchmark.pedantic(
        plan, args=(DEFAULT, load, TOPO), kwargs={"threads": threads}, rounds=5, iterations=1
    )


def another_cpu() -> str:
    """An LLVM CPU name of this architecture that is not this machine's: a process told to
    compile for it finds none of the build's entries for this CPU (a package built elsewhere)."""
    from llvmlite import binding

    host = binding.get_host_cpu_name()
    arm = platform.machine() in ("aarch64", "arm64")
    names = ("neoverse-n1", "cortex-a72") if arm else ("skylake", "haswell")
    return next(name for name in names if name != host)


def _cold(policy: str, shipped: bool, cpu: str | None = None) -> dict:
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with tempfile.TemporaryDirectory() as cache_dir:
        env = dict(os.environ, NUMBA_CACHE_DIR=cache_dir, EPLB_RT_KERNEL_CACHE=str(int(shipped)))
        if cpu is not None:
            env["NUMBA_CPU_NAME"] = cpu
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
        out = subprocess.run(
            [sys.executable, "-c", COLD_SCRIPT, policy],
            env=env,
            check=True,
            capture_output=True,
            text=True,
        )
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("cache", ["shipped", "shipped, another CPU", "jit"])
@pytest.mark.parametrize("policy", [DEFAULT, "deepseek"])
def test_cold_start(benchmark, policy, cache):
    """First plan in a fresh process with an empty NUMBA_CACHE_DIR; "another CPU": the package
    was built on a CPU other than the one that plans (its portable entries load)."""
    shipped, cpu = cache.startswith("shipped"), another_cpu() if "another" in cache else None
    seconds = benchmark.pedantic(_cold, args=(policy, shipped, cpu), rounds=1, iterations=1)
    benchmark.extra_info.update({k: round(v, 3) for k, v in seconds.items()})
