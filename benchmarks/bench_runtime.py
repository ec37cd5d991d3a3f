"""Runtime overheads on the serving thread.

1. Step time of a serving loop (the reference MoE model with ``EplbRuntime.route`` + ``step``)
   while the shipped default policy (``EplbConfig().policy``) re-plans DeepSeek-V3 (58 layers
   x 256 experts on 32 ranks x 9 slots, each plan from the placement the last one gave, on a
   history of the next prefill workload: 16 episodes of sampled counts, as the balancer hands
   its ring to the policy; every layer planned, or through the pipeline, which skips the layers
   that cannot pay) in a background thread, against the same loop with the thread idle;
   rounds alternate, and the inflation is the median over rounds of the ratio of the two
   rounds' median step times. Goal: <= 3% inflation.
2. Recording cost: ``EplbRuntime.route`` (one ``route_and_count`` op) against one MoE layer's own
   forward (router, top-k, expert MLPs, combine) at the same batch. Goal: <= 1%.
3. The demo's PAR before vs after rebalancing: ``eplb-rt demo --json FILE`` (see notes).
4. A re-plan's wall time next to a serving thread that holds the GIL (pure Python), in a thread
   and in a child process (``measure_plan_next_to``).
5. The serving thread's own work in a 58-layer x 256-expert runtime: ``EplbRuntime.route`` at
   decode size, and in a migrating step (one-element weights, so the copies themselves are
   negligible) ``EplbRuntime._commit_layer`` for one layer and the executor's ``start`` of one
   layer's transfer.

Run as pytest-benchmark suites: ``PYTHONPATH=. python -m pytest benchmarks/bench_runtime.py``,
or ``PYTHONPATH=. python benchmarks/bench_runtime.py`` for the side-by-side summary.
"""

from __future__ import annotations

import concurrent.futures
import math
import multiprocessing
import statistics
import threading
import time

import numpy as np
import pytest
import torch

from benchmarks import traces
from eplb_rt import planning
from eplb_rt.algorithms import plan, warm_up
from eplb_rt.config import EplbConfig
from eplb_rt.models import ExpertParallelMoE, MoEConfig
from eplb_rt.placement import Placement, Topology
from eplb_rt.runtime import EplbRuntime
from eplb_rt.runtime.migration import plan_migration

SERVING = MoEConfig(num_layers=4, num_experts=64, top_k=6, hidden=256, ffn=256, seed=1)
SERVING_TOKENS = 256
LAYER = MoEConfig(num_layers=1, num_experts=256, top_k=8, hidden=1024, ffn=256, seed=2)
LAYER_TOKENS = 512


HISTORY_EPISODES = 16
"""Episodes of the background's history: ``EplbConfig()``'s ring (256 steps) cut as the default
policy cuts it."""
EPISODE_STEPS = 16
EPISODE_TOKENS = EPISODE_STEPS * 256 * 8
"""Counts an episode holds per layer: 16 steps of 256 tokens routed to 8 experts."""


def _deepseek_v3_histories() -> list[np.ndarray]:
    """``[HISTORY_EPISODES, 58, 256]`` token counts per workload, as the balancer hands them to
    the policy: each shipped SGLang DeepSeek-V3 prefill workload drawn per episode (multinomial,
    seeded), else skewed stand-ins."""
    rng = np.random.default_rng(0)
    try:
        loads = [traces.deepseek_v3(w, moe_only=True)[0] for w in traces.DEEPSEEK_V3_WORKLOADS]
    except (OSError, ValueError):
        loads = [rng.zipf(1.6, size=(58, 256)).astype(np.float64) for _ in range(4)]
    return [traces.sample_tokens(load, HISTORY_EPISODES, EPISODE_TOKENS, rng) for load in loads]


POLICY = EplbConfig().policy


class BackgroundPolicy:
    """Re-plans DeepSeek-V3 with the default policy in a loop until stopped, as the balancer
    does (each plan from the placement the last one gave, on the next workload's history), on
    every trigger and every layer (the worst case: the pipeline skips layers that cannot pay):
    in its thread (``mode="thread"``, the default) or in a child process the thread waits on
    (``mode="process"``, ``EplbConfig.plan_in_subprocess``). With ``horizon`` (steps between
    plans) it decides through the pipeline with the default prices instead, as the balancer
    does: layers that could not pay for a move are not planned."""

    def __init__(self, mode: str = "thread", paced: bool = False, horizon: int | None = None):
        warm_up([POLICY])
        self.paced = paced  # plan only when trigger() is called (the balancer's rhythm)
        self.horizon = horizon
        self._go = threading.Event()
        self.loads = _deepseek_v3_histories()
        self.topology = Topology(32, 9)
        self.placement = plan(POLICY, self.loads[0], self.topology)
        self.plans = 0
        self._pool = None
        if mode == "process":
            self._pool = concurrent.futures.ProcessPoolExecutor(
                max_workers=1, mp_context=multiprocessing.get_context("spawn")
            )
            self._pool.submit(warm_up, [POLICY]).result()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _loop(self) -> None:
        while not self._stop.is_set():
            if self.paced and not self._go.wait(0.01):
                continue
            self._go.clear()
            load = self.loads[(self.plans + 1) % len(self.loads)]
            if self.horizon is None:
                run, args, kwargs = plan, (POLICY, load, self.topology, self.placement), {}
            else:
                # A history row is an episode of EPISODE_STEPS steps: the horizon in rows.
                run = planning.decide
                args = (load, self.placement, self.topology, POLICY, None)
                kwargs = {"cost": planning.CostModel(), "horizon": self.horizon / EPISODE_STEPS}
            if self._pool is not None:
                out = self._pool.submit(run, *args, **kwargs).result()
            else:
                out = run(*args, **kwargs)
            self.placement = out if self.horizon is None else out.placement
            self.plans += 1

    def __enter__(self) -> BackgroundPolicy:
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def trigger(self) -> None:
        """Start one plan (paced mode), as a gather does every interval."""
        self._go.set()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown()


def _serving_loop():
    """A single-rank serving loop: returns ``step() -> None`` running one forward + step."""
    config = EplbConfig(interval=0, history=64, episode=8, num_redundant=0, warm_up=False)
    runtime = EplbRuntime(config, SERVING.num_layers, SERVING.num_experts)
    model = ExpertParallelMoE(SERVING, runtime=runtime)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn((SERVING_TOKENS, SERVING.hidden), generator=gen)

    def step() -> None:
        model(x)
        runtime.step()

    return runtime, step


def _timed(step, n: int) -> list[float]:
    out = []
    for _ in range(n):
        start = time.perf_counter()
        step()
        out.append(time.perf_counter() - start)
    return out


def measure_background_inflation(
    mode: str,
    every: int | None = None,
    rounds: int = 40,
    steps: int = 30,
    *,
    pipeline: bool = False,
) -> dict:
    """Step time idle vs with the policy running, in alternating rounds.

    ``every=None``: plans back to back (worst case); ``every=k``: one plan every ``k`` steps,
    the runtime's rhythm (``interval=k``); ``pipeline``: through ``planning.decide`` with the
    default prices (horizon ``k``, else ``EplbConfig().interval``), which does not plan layers
    that cannot pay. Returns medians and means in ms over all steps, and
    ``inflation``: the median over rounds of busy / idle - 1, each round's median step time
    against the idle round just before it (the machine's drift cancels within a pair), with
    its 95 % interval (:func:`median_interval`).
    """
    torch.set_num_threads(1)
    runtime, step = _serving_loop()
    horizon = (every or EplbConfig().interval) if pipeline else None
    background = BackgroundPolicy(mode, paced=every is not None, horizon=horizon)
    _timed(step, 10)  # warm caches
    idle, busy, ratios = [], [], []
    for _ in range(rounds):
        idle_round = _timed(step, steps)
        busy_round = []
        with background:
            for i in range(steps):
                if every is not None and i % every == 0:
                    background.trigger()
                busy_round += _timed(step, 1)
        idle += idle_round
        busy += busy_round
        ratios.append(statistics.median(busy_round) / statistics.median(idle_round))
    background.close()
    runtime.shutdown()
    out = {"plans": background.plans}
    for name, values in (("idle", idle), ("busy", busy)):
        out[f"{name}_median_ms"] = statistics.median(values) * 1e3
        out[f"{name}_mean_ms"] = statistics.fmean(values) * 1e3
    low, high = median_interval(ratios)
    out["inflation"] = statistics.median(ratios) - 1
    out["inflation_low"], out["inflation_high"] = low - 1, high - 1
    return out


def measure_plan_next_to(repeats: int = 3) -> dict:
    """Wall seconds of one re-plan (min of ``repeats``) while another thread runs: nothing, the
    serving loop (torch ops, which release the GIL), or pure Python that never releases it (a
    Python scheduler in a busy loop); and the last case again with the plan in a child process
    (``plan_in_subprocess``). In a thread, the policy gives the GIL up in each of its kernels
    and in numpy's larger operations; against a thread that holds it, each return waits for the
    interpreter's switch interval."""
    torch.set_num_threads(1)
    background = BackgroundPolicy("thread")
    loads, topology = background.loads, background.topology
    start = background.placement

    def replans(run=plan) -> float:
        placement, times = start, []
        for i in range(repeats):
            t = time.perf_counter()
            placement = run(POLICY, loads[1 + i % (len(loads) - 1)], topology, placement)
            times.append(time.perf_counter() - t)
        return min(times)

    def next_to(work, run=plan) -> float:
        stop = threading.Event()

        def loop() -> None:
            while not stop.is_set():
                work()

        neighbour = threading.Thread(target=loop)
        neighbour.start()
        try:
            return replans(run)
        finally:
            stop.set()
            neighbour.join()

    def python() -> None:
        sum(range(1000))

    runtime, step = _serving_loop()
    out = {"alone_s": replans(), "serving_s": next_to(step)}
    runtime.shutdown()
    out["python_s"] = next_to(python)
    pool = concurrent.futures.ProcessPoolExecutor(
        max_workers=1, mp_context=multiprocessing.get_context("spawn")
    )
    with pool:
        pool.submit(warm_up, [POLICY]).result()
        out["python_process_s"] = next_to(python, lambda *a: pool.submit(plan, *a).result())
    return out


def median_interval(values: list[float], z: float = 1.96) -> tuple[float, float]:
    """A distribution-free 95 % interval of the median of ``values``: the order statistics
    ``n/2 -+ z sqrt(n)/2`` (the binomial count of values below the median, normal
    approximation), clipped to the smallest and largest."""
    ordered = sorted(values)
    n = len(ordered)
    half = z * math.sqrt(n) / 2
    return ordered[max(math.floor(n / 2 - half), 0)], ordered[min(math.ceil(n / 2 + half), n) - 1]


def _layer_setup(tokens: int = LAYER_TOKENS):
    config = EplbConfig(interval=0, history=64, episode=8, warm_up=False)
    runtime = EplbRuntime(config, 1, LAYER.num_experts)
    baseline = ExpertParallelMoE(LAYER)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn((tokens, LAYER.hidden), generator=gen)
    topk_ids = torch.topk(x @ baseline.router[0], LAYER.top_k, dim=-1).indices
    return runtime, baseline, x, topk_ids


def measure_recording_cost(tokens: int = LAYER_TOKENS, repeats: int = 30) -> dict:
    """Median ``route`` time against the median forward of one MoE layer (no EPLB)."""
    torch.set_num_threads(1)
    runtime, baseline, x, topk_ids = _layer_setup(tokens)
    out = torch.empty_like(topk_ids)
    route = _timed(lambda: runtime.route(0, topk_ids, out=out), repeats * 20)
    layer = _timed(lambda: baseline(x), repeats)
    runtime.shutdown()
    route_us, layer_us = statistics.median(route) * 1e6, statistics.median(layer) * 1e6
    return {
        "route_us": route_us,
        "layer_us": layer_us,
        "ratio": route_us / layer_us,
        "pairs": int(topk_ids.numel()),
    }


# ---------------------------------------------------------------------- pytest-benchmark
@pytest.fixture(scope="module")
def serving():
    torch.set_num_threads(1)
    runtime, step = _serving_loop()
    yield step
    runtime.shutdown()


def test_serving_step_idle(benchmark, serving):
    benchmark(serving)


@pytest.mark.parametrize("mode", ["thread", "process"])
def test_serving_step_with_policy_in_background(benchmark, serving, mode):
    background = BackgroundPolicy(mode)
    with background:
        benchmark(serving)
    background.close()
    benchmark.extra_info["plans_during_run"] = background.plans


@pytest.fixture(scope="module")
def layer():
    torch.set_num_threads(1)
    runtime, baseline, x, topk_ids = _layer_setup()
    yield runtime, baseline, x, topk_ids
    runtime.shutdown()


def test_route_and_count(benchmark, layer):
    runtime, _, _, topk_ids = layer
    out = torch.empty_like(topk_ids)
    benchmark(runtime.route, 0, topk_ids, out=out)


def test_moe_layer_forward(benchmark, layer):
    _, baseline, x, _ = layer
    benchmark(baseline, x)


def _migration_setup(
    num_layers: int = 58,
    num_experts: int = 256,
    moved: int | None = None,
    names: tuple[str, ...] = ("w",),
):
    """A runtime with one-element weights ``names`` per slot and a target placement whose
    first ``moved`` slots of every layer (all: ``None``) are rotated by one; returns it and each
    layer's migration."""
    config = EplbConfig(policy="deepseek", interval=0, history=4, episode=1, warm_up=False)
    runtime = EplbRuntime(config, num_layers, num_experts)
    for layer in range(num_layers):
        runtime.register_weights(layer, {name: torch.zeros(num_experts, 1) for name in names})
    phy2log = runtime.placement.phy2log.copy()
    phy2log[:, :moved] = np.roll(phy2log[:, :moved], 1, axis=1)
    target = Placement(phy2log, num_experts, 1)
    runtime._set_target(target)
    return runtime, plan_migration(runtime.placement, target)


def test_commit_layer_host(benchmark):
    """Every slot of a layer rewritten; committing one again rewrites the same slots."""
    runtime, migrations = _migration_setup()
    transfers = [runtime.executor.start(m, 0) for m in migrations]
    turn = iter(range(10**9))
    benchmark(lambda: runtime._commit_layer(transfers[next(turn) % len(transfers)]))
    runtime.shutdown()


def test_route_host(benchmark):
    """``EplbRuntime.route`` at decode size (N=64, K=8) over the layers of a 58-layer runtime."""
    torch.set_num_threads(1)
    config = EplbConfig(policy="deepseek", interval=0, history=16, episode=1, warm_up=False)
    runtime = EplbRuntime(config, 58, 256)
    ids = torch.randint(256, (64, 8), dtype=torch.int32, generator=torch.Generator().manual_seed(0))
    out = torch.empty_like(ids)
    turn = iter(range(10**9))
    benchmark(lambda: runtime.route(next(turn) % 58, ids, out=out))
    runtime.shutdown()


def test_start_transfer_host(benchmark):
    """6 slots of a layer moved, 4 tensors a slot (fp8 weights and their scales): the
    executor's start, as a migrating step pays it before the forward."""
    runtime, migrations = _migration_setup(moved=6, names=("w13", "w2", "w13_scale", "w2_scale"))
    turn = iter(range(10**9))
    benchmark(lambda: runtime.executor.start(migrations[next(turn) % len(migrations)], 0))
    runtime.shutdown()


if __name__ == "__main__":
    import argparse

    # No options: --help says what runs instead of running it.
    argparse.ArgumentParser(description=__doc__.split("\n\n")[0]).parse_args()
    print(
        f"serving loop: 4 MoE layers x 64 experts, {SERVING_TOKENS} tokens, 1 torch thread; "
        f"policy: {POLICY} re-planning DeepSeek-V3 (58 x 256, 32 ranks x 9 slots)"
    )
    cases = [(every, mode, False) for every in (20, None) for mode in ("thread", "process")]
    for every, mode, pipeline in [*cases, (20, "thread", True)]:
        bg = measure_background_inflation(mode, every, pipeline=pipeline)
        rhythm = f"one plan per {every} steps" if every else "plans back to back"
        rhythm += ", pipeline" if pipeline else ""
        print(
            f"  {rhythm:>31} in a {mode:>7}: step median {bg['idle_median_ms']:.2f} -> "
            f"{bg['busy_median_ms']:.2f} ms; inflation {bg['inflation'] * 100:+.2f}% "
            f"(median of rounds; 95% interval {bg['inflation_low'] * 100:+.2f}% to "
            f"{bg['inflation_high'] * 100:+.2f}%), {bg['plans']} plans"
        )
    gil = measure_plan_next_to()
    print(
        f"  a re-plan: alone {gil['alone_s'] * 1e3:.0f} ms, next to the serving loop "
        f"{gil['serving_s'] * 1e3:.0f} ms, next to a pure-Python thread "
        f"{gil['python_s'] * 1e3:.0f} ms (in a child process: "
        f"{gil['python_process_s'] * 1e3:.0f} ms)"
    )
    for tokens in (LAYER_TOKENS, 32):
        rec = measure_recording_cost(tokens)
        print(
            f"recording: route {rec['route_us']:.1f} us for {rec['pairs']} pairs vs MoE layer "
            f"{rec['layer_us']:.0f} us ({tokens} tokens, E={LAYER.num_experts}, "
            f"top-{LAYER.top_k}, hidden {LAYER.hidden}) -> {rec['ratio'] * 100:.3f}%"
        )
