"""The balancer thread on one process; the same decision from runtime, plan and simulate."""

from __future__ import annotations

import logging
import multiprocessing
import os
import threading
import time

import numpy as np
import pytest
import torch

from eplb_rt import formats, planning
from eplb_rt.cli import main
from eplb_rt.config import EplbConfig
from eplb_rt.placement import Placement, Topology
from eplb_rt.runtime.balancer import (
    PLAN_FAILED,
    PLAN_LATE,
    PLAN_OK,
    PLAN_UNCHANGED,
    Balancer,
    Job,
    placement_digest,
    waited_for_the_gil,
)
from eplb_rt.runtime.device import Event
from eplb_rt.runtime.planning_child import PlanningChildDied
from eplb_rt.sim import simulate as sim

L, E, TOPO = 3, 8, Topology(4, 3)
COST = planning.CostModel(expert_bytes=2e6, bandwidth=1e9, token_seconds=1e-4)


def _load(seed: int = 0, steps: int = 12) -> np.ndarray:
    """``[T, L, E]`` integer tokens: layer 0 near uniform, layers 1 and 2 ever more skewed."""
    rng = np.random.default_rng(seed)
    skew = np.stack([np.ones(E), np.linspace(1, 4, E), np.geomspace(1, 40, E)])
    return rng.poisson(30 * skew / skew.mean(axis=1, keepdims=True), (steps, L, E)).astype(float)


def _job(load: np.ndarray, previous: Placement, epoch: int = 1, **fields) -> Job:
    """A gather whose ring holds ``load``: each expert's tokens counted on its first slot."""
    T = load.shape[0]
    heat = torch.zeros((T, L, TOPO.num_slots), dtype=torch.int32)
    first = np.array([[np.flatnonzero(row == e)[0] for e in range(E)] for row in previous.phy2log])
    for layer in range(L):
        heat[:, layer, first[layer]] = torch.from_numpy(load[:, layer].astype(np.int32))
    row_p2l = np.broadcast_to(previous.phy2log, (T, L, TOPO.num_slots)).copy()
    values = dict(cost=COST, trigger="interval", row_seconds=None)
    values.update(fields)
    return Job(epoch, 0, 5, heat, Event(), np.arange(T), row_p2l, previous, **values)


def _balancer(policy: str = "deepseek", step: int = 0, clock=None, **config) -> Balancer:
    """A planning rank's balancer whose serving thread is at ``step`` (or at ``clock()``)."""
    values = dict(policy=policy, interval=12, history=12, episode=4, deadline=5, warm_up=False)
    values.update(config)
    current_step = clock or (lambda: step)
    return Balancer(EplbConfig(**values), TOPO, L, E, rank=0, current_step=current_step)


def test_the_thread_makes_the_runtimes_device_its_own_first():
    """A new thread's current device is device 0: its first wait on a job's event would set up
    a context there, from every rank's process that serves on another device."""
    calls = []
    device = type(
        "Stub", (), {"make_current": lambda self: calls.append(threading.current_thread())}
    )
    values = dict(policy="deepseek", interval=12, history=12, episode=4, warm_up=False)
    balancer = Balancer(EplbConfig(**values), TOPO, L, E, rank=0, current_step=lambda: 0,
                        device=device())  # fmt: skip
    try:
        assert balancer.ready.wait(30)
        assert [t.name for t in calls] == ["eplb-balancer"]
    finally:
        balancer.shutdown()


def _result(balancer: Balancer, job: Job):
    balancer.submit(job)
    deadline = time.monotonic() + 60
    while (result := balancer.result(job.epoch)) is None:
        assert time.monotonic() < deadline, "the balancer thread never finished the job"
        time.sleep(0.005)
    return result


@pytest.mark.parametrize("policy", ["deepseek", "equilibrium"])
@pytest.mark.parametrize("idle", [(), (1, 4, 5, 8, 9, 10)], ids=["busy", "idle steps"])
def test_same_load_same_decision_in_runtime_plan_and_simulate(tmp_path, capsys, idle, policy):
    """With steps that counted nothing (a quiet server, steps not counted) too: the runtime
    dropped them and priced every step of the interval as busy, saving 2x what plan and
    simulate saw from the same steps. The span a placement is expected to serve is the load a
    plan reads: the runtime's ring (history - 1 = 36 steps), simulate's window (3 intervals of
    12), plan's ``--lifetime``."""
    load = _load()
    load[list(idle)] = 0
    start = planning.starting_placement(L, E, TOPO)
    # 1. The runtime's balancer (EplbRuntime._gather builds exactly such a job).
    prices = {"token_seconds": COST.token_seconds, "link_bandwidth": COST.bandwidth}
    balancer = _balancer(policy, history=37, **prices)
    result = _result(balancer, _job(load, start))
    balancer.shutdown()
    assert result.status == PLAN_OK and result.placement == result.decision.placement
    # 2. eplb-rt plan --previous, the same load as a [T, L, E] file and the same prices.
    np.save(tmp_path / "load.npy", load)
    formats.write_placement(start, tmp_path / "start.json")
    argv = ["plan", "--load", str(tmp_path / "load.npy"), "--ranks", "4", "--slots-per-rank"]
    argv += ["3", "--policy", policy, "--previous", str(tmp_path / "start.json")]
    argv += ["--horizon", "12", "--lifetime", "36", "--expert-bytes", "2000000"]
    argv += ["--bandwidth", "1", "--token-us", "100", "--out", str(tmp_path / "plan.json")]
    assert main(argv) == 0
    planned = formats.read_placement(tmp_path / "plan.json")
    # 3. eplb-rt simulate's replay: the first cycle plans from the same 12 steps.
    replay = sim.Workload.concat([("w", np.concatenate([load, load[:1]]))])
    spec = sim.SimulationSpec(TOPO, (policy,), interval=12, episodes=3, cost=COST)
    simulated = sim.simulate(replay, spec).cycles[policy][0].placement
    assert result.placement == planned == simulated
    expected = planning.decide(load, start, TOPO, policy, None, cost=COST, horizon=12, lifetime=36)
    np.testing.assert_array_equal(result.decision.saved_s, expected.saved_s)
    # The gate split the layers: the near-uniform one does not pay, the skewed ones do.
    assert result.layers == (1, 2)
    assert result.placement.changed_layers(start).tolist() == [1, 2]
    out = capsys.readouterr().out
    assert f"moves {result.decision.slots} slots" in out and "at 1 GB/s; PAR" in out


def test_the_runtime_and_simulate_expect_a_placement_to_serve_the_load_a_plan_reads(
    monkeypatch,
):
    """The span passed as ``lifetime``: the runtime's ring (``history - 1`` closed rows),
    simulate's window (``episodes * interval``, or the ring of ``EplbConfig()``)."""
    seen = []
    decide = planning.decide
    monkeypatch.setattr(
        planning,
        "decide",
        lambda *a, **k: seen.append((k["horizon"], k["lifetime"])) or decide(*a, **k),
    )
    load = _load()
    start = planning.starting_placement(L, E, TOPO)
    balancer = _balancer(history=37)
    assert _result(balancer, _job(load, start)).status in (PLAN_OK, PLAN_UNCHANGED)
    balancer.shutdown()
    assert seen == [(12, 36)]
    replay = sim.Workload.concat([("w", np.concatenate([load, load[:1]]))])
    for episodes, lifetime in ((3, 36), (None, EplbConfig().history - 1)):
        seen.clear()
        spec = sim.SimulationSpec(TOPO, ("deepseek",), interval=12, episodes=episodes, cost=COST)
        sim.simulate(replay, spec)
        assert seen == [(12, lifetime)]


def test_time_per_token_is_measured_over_the_steps_it_divides(monkeypatch):
    # Steps of two sizes, each taking 1e-5 s per token of its busiest rank (the cost model's own
    # assumption): the gate prices with exactly that. A median step time over a mean step's
    # tokens would be 8x off here; a step with no time (the first) and one no rank counted
    # (zeroed) are left out.
    load = _load()
    load[::4] *= 40  # one step in four a prefill-size one
    load[5] = 0
    seconds = _seconds_per_token(load, 1e-5)
    seconds[0] = 0.0
    seconds[5] = 3.0  # a long step that counted nothing
    status, priced = _priced(monkeypatch, load, seconds)
    assert status in (PLAN_OK, PLAN_UNCHANGED)
    assert priced == [pytest.approx(1e-5, rel=1e-12)]


def _seconds_per_token(load: np.ndarray, token_seconds: float) -> np.ndarray:
    """``[T]`` step times of ``token_seconds`` per token of the busiest rank (the cost model's
    own assumption), the ring counted on the starting placement."""
    heat = _job(load, planning.starting_placement(L, E, TOPO)).heat.numpy()
    busiest = heat.reshape(len(load), L, TOPO.num_ranks, -1).sum(-1).max(-1).sum(-1)
    return token_seconds * busiest


def _priced(monkeypatch, load: np.ndarray, seconds: np.ndarray) -> tuple[int, list]:
    """The plan's status and the time per token the gate priced it with."""
    priced = []
    decide = planning.decide
    monkeypatch.setattr(
        planning,
        "decide",
        lambda *a, **k: priced.append(k["cost"].token_seconds) or decide(*a, **k),
    )
    balancer = _balancer()
    start = planning.starting_placement(L, E, TOPO)
    result = _result(balancer, _job(load, start, row_seconds=seconds))
    balancer.shutdown()
    return result.status, priced


def test_an_idle_pause_before_a_step_is_not_priced_as_compute(monkeypatch):
    """A step's time is the gap between step() calls: 10 s without requests before one step
    priced every token 100x dearer, and the gate committed moves that did not pay."""
    load = _load()
    seconds = _seconds_per_token(load, 1e-5)
    seconds[7] += 10.0  # the engine waited for requests before this step
    assert _priced(monkeypatch, load, seconds)[1] == [pytest.approx(1e-5, rel=1e-12)]


def test_the_balancer_lives_on_after_a_policy_exits():
    start = planning.starting_placement(L, E, TOPO)
    balancer = _balancer("rt_test_exit")
    assert _result(balancer, _job(_load(), start)).status == PLAN_FAILED
    assert balancer._thread.is_alive()
    assert _result(balancer, _job(_load(), start, epoch=2)).status == PLAN_FAILED
    balancer.shutdown()


def test_shutdown_kills_a_planning_child_that_does_not_return():
    """A running task is not cancelled by a process pool: the child planned on, orphaned, and
    the interpreter's exit waited for it."""
    balancer = _balancer(plan_in_subprocess=True)
    deadline = time.monotonic() + 60
    while balancer._child is None:
        assert time.monotonic() < deadline, "the balancer never made its planning child"
        time.sleep(0.01)
    child = balancer._child
    answers = []

    def plan_for_ever():  # a plan that never returns
        try:
            child.call(time.sleep, 3600)
        except PlanningChildDied as err:
            answers.append(err)

    caller = threading.Thread(target=plan_for_ever)
    caller.start()
    while not child._lock.locked():  # the call is in the child's hands
        assert time.monotonic() < deadline, "the call never reached the planning child"
        time.sleep(0.01)
    started = time.perf_counter()
    balancer.shutdown(timeout=5.0)
    assert time.perf_counter() - started < 5.0
    while not _ended(child.pid):
        assert time.monotonic() < deadline, f"the planning child {child.pid} still runs"
        time.sleep(0.01)
    caller.join(10.0)
    assert len(answers) == 1 and not balancer._thread.is_alive()


def test_a_policy_that_exits_in_the_warm_up_leaves_the_balancer_serving():
    """A SystemExit in the warm-up ended the thread before it was ready: no plan ran, nothing
    was reported, and shutdown() (and the interpreter's exit) waited for ever."""
    balancer = _balancer("rt_test_exit", warm_up=True)
    assert balancer.ready.wait(60)
    start = planning.starting_placement(L, E, TOPO)
    assert _result(balancer, _job(_load(), start)).status == PLAN_FAILED
    balancer.shutdown(timeout=5.0)
    assert not balancer._thread.is_alive()


def test_a_planning_child_that_cannot_start_fails_each_plan_until_one_does(monkeypatch):
    """A spawn that failed (no memory, no processes left) ended the thread unseen: every later
    plan was 'not ready', none was reported failed, and the jobs piled up, heat and all."""
    import eplb_rt.runtime.balancer as balancer_module

    starts = []

    def no_child():
        starts.append(threading.current_thread().name)
        raise OSError(11, "Resource temporarily unavailable")

    monkeypatch.setattr(balancer_module, "PlanningChild", no_child)
    balancer = _balancer(plan_in_subprocess=True, warm_up=True)
    try:
        assert balancer.ready.wait(60)
        start = planning.starting_placement(L, E, TOPO)
        for epoch in (1, 2):
            result = _result(balancer, _job(_load(), start, epoch=epoch))
            assert result.status == PLAN_FAILED
            assert result.error.startswith("no planning process (BlockingIOError(11, ")
        assert balancer._thread.is_alive() and balancer.warm  # its failures count as errors
        assert starts == ["eplb-balancer"] * 3  # at the start, then again for each plan
        monkeypatch.undo()  # the next start works: the plan runs in the child
        assert _result(balancer, _job(_load(), start, epoch=3)).status in (PLAN_OK, PLAN_UNCHANGED)
        assert balancer._child is not None and balancer._child_error is None
    finally:
        balancer.shutdown(timeout=10.0)
    assert not balancer._thread.is_alive()


def test_shutdown_right_after_start_plans_no_warm_up_in_a_new_child():
    """shutdown() came before the thread made its planning child: the thread made it anyway
    and warmed up in it (seconds) while shutdown() waited."""
    balancer = _balancer(plan_in_subprocess=True, warm_up=True)
    started = time.perf_counter()
    balancer.shutdown(timeout=30.0)
    assert time.perf_counter() - started < 3.0
    assert not balancer._thread.is_alive()
    assert balancer._child is None or _ended(balancer._child.pid)


def _rank_that_forgets_shutdown() -> None:
    balancer = _balancer(plan_in_subprocess=True)
    while balancer._child is None:
        time.sleep(0.01)
    balancer._child.call(int)  # started and idle


def test_a_rank_process_that_forgets_shutdown_still_exits():
    """An engine's worker process (a multiprocessing child) never runs atexit hooks but joins
    its non-daemon children: an idle planning child kept it from exiting for ever."""
    rank = multiprocessing.get_context("spawn").Process(target=_rank_that_forgets_shutdown)
    rank.start()
    rank.join(120)
    alive = rank.is_alive()
    if alive:
        rank.kill()
    assert not alive and rank.exitcode == 0


def test_a_forked_process_leaves_the_parents_planning_child_alone():
    balancer = _balancer(plan_in_subprocess=True)
    deadline = time.monotonic() + 60
    while balancer._child is None:
        assert time.monotonic() < deadline, "the balancer never made its planning child"
        time.sleep(0.01)
    balancer._child.call(int)
    pid = os.fork()
    if pid == 0:  # the child: its exit must not stop the parent's balancer
        try:
            balancer.shutdown(timeout=1.0)
        finally:
            os._exit(0)
    _, status = os.waitpid(pid, 0)
    assert status == 0
    assert balancer._child.call(int) == 0 and not _ended(balancer._child.pid)
    balancer.shutdown()


def _ended(pid: int) -> bool:
    """Whether process ``pid`` has ended (gone, or a zombie not yet reaped)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except (FileNotFoundError, ProcessLookupError):  # reaped before or while it was read
        return True


def test_a_plan_that_pays_nothing_is_unchanged_and_the_old_placement_stays():
    start = planning.starting_placement(L, E, TOPO)
    dear = planning.CostModel(expert_bytes=1e12, bandwidth=1.0, token_seconds=1e-9)
    balancer = _balancer()
    result = _result(balancer, _job(_load(), start, cost=dear))
    balancer.shutdown()
    assert (result.status, result.placement, result.layers) == (PLAN_UNCHANGED, None, ())
    assert result.decision.layers == () and result.decision.placement == start


@pytest.mark.parametrize(
    ("make", "status", "error"),
    [
        (lambda b, j: (b, j._replace_heat_zero()), PLAN_UNCHANGED, "no heat recorded"),
        (lambda b, j: (_balancer("rt_test_raise"), j), PLAN_FAILED, "rt_test_raise always fails"),
        (lambda b, j: (_balancer("rt_test_exit"), j), PLAN_FAILED, "SystemExit(3)"),
        (lambda b, j: (_balancer(step=5), j), PLAN_LATE, "its deadline had passed"),
        (lambda b, j: (_balancer(step=6), j), PLAN_LATE, "its deadline had passed"),
        (lambda b, j: (b, j._with(row_seconds=np.full(12, np.nan))), PLAN_FAILED, "token_seconds"),
        (lambda b, j: (b, j._with(trigger="drift")), PLAN_UNCHANGED, "no drift"),
    ],
)
def test_outcomes_other_than_a_plan(make, status, error):
    start = planning.starting_placement(L, E, TOPO)
    given = _balancer()
    balancer, job = make(given, _Job(_job(_load(steps=12), start)))
    try:
        result = _result(balancer, job.job)
    finally:
        for b in {given, balancer}:
            b.shutdown()
    assert (result.status, result.placement, result.layers) == (status, None, ())
    assert error in result.error and result.digest == placement_digest(None) == 0


@pytest.mark.parametrize("threads", [1, 3])
def test_rank_0_plans_on_the_jobs_threads(monkeypatch, threads):
    asked = []
    decide = planning.decide

    def spy(*args, **kwargs):
        asked.append(kwargs["threads"])
        return decide(*args, **kwargs)

    monkeypatch.setattr(planning, "decide", spy)
    balancer = _balancer()
    start = planning.starting_placement(L, E, TOPO)
    try:
        result = _result(balancer, _job(_load(), start, threads=threads))
    finally:
        balancer.shutdown()
    assert result.status == PLAN_OK and asked == [threads]


@pytest.mark.parametrize(("done_at", "status"), [(5, PLAN_OK), (6, PLAN_LATE)])
def test_a_plan_done_at_its_deadline_step_is_in_time(monkeypatch, done_at, status):
    """A job starting at its deadline step (5) is not planned (the case above): the serving
    thread decides at that step's boundary. One started before and done at that step may still
    be taken there; only one done past it is late for sure."""
    step = [4]
    decide = planning.decide

    def advancing(*args, **kwargs):
        step[0] = done_at  # the serving thread moves on while the policy runs
        return decide(*args, **kwargs)

    monkeypatch.setattr(planning, "decide", advancing)
    balancer = _balancer(clock=lambda: step[0])
    try:
        result = _result(balancer, _job(_load(), planning.starting_placement(L, E, TOPO)))
    finally:
        balancer.shutdown()
    assert result.status == status, result.error
    assert (result.placement is not None) == (status == PLAN_OK)


def test_shutdown_waits_for_the_warm_up(monkeypatch):
    """A process must not exit while the thread compiles kernels (LLVM aborts it), so shutdown
    waits for the warm-up however short its timeout; a plan in flight only ``timeout``."""
    from eplb_rt.algorithms import registry

    done = []

    def slow_warm_up(names):
        time.sleep(0.3)
        done.append(names)

    monkeypatch.setattr(registry, "warm_up", slow_warm_up)
    balancer = _balancer(warm_up=True)
    started = time.perf_counter()
    balancer.shutdown(timeout=0.01)
    assert done == [["deepseek"]] and balancer.ready.is_set()
    assert time.perf_counter() - started >= 0.25


@pytest.mark.parametrize(("seconds", "level"), [(0.0, logging.INFO), (60.0, logging.WARNING)])
def test_a_warm_up_that_compiled_says_how_to_avoid_it(monkeypatch, caplog, seconds, level):
    """Loaded from the package's cache, the warm-up is one info line; a long one (kernels
    compiled: another numba or Python than the build's) is a warning with the fix."""
    from eplb_rt.runtime import balancer as balancer_module

    monkeypatch.setattr(balancer_module, "timed_warm_up", lambda policy: seconds)
    with caplog.at_level(logging.INFO, logger="eplb_rt.runtime"):
        balancer = _balancer(warm_up=True)
        assert balancer.ready.wait(30)
        balancer.shutdown()
    records = [r for r in caplog.records if "warmed up" in r.getMessage()]
    assert [r.levelno for r in records] == [level]
    assert ("eplb-rt policies --warm-up" in records[0].getMessage()) == (level == logging.WARNING)


def test_results_are_kept_until_discarded():
    start = planning.starting_placement(L, E, TOPO)
    balancer = _balancer()
    first = _result(balancer, _job(_load(), start, epoch=1))
    second = _result(balancer, _job(_load(seed=1), start, epoch=2))
    assert first.digest == placement_digest(first.placement) != 0
    balancer.discard_through(1)
    assert balancer.result(1) is None and balancer.result(2) is second
    balancer.shutdown()


def test_waited_for_the_gil_needs_a_ratio_a_wait_and_busy_neighbours():
    assert waited_for_the_gil(0.5, 0.1, 0.4)
    assert not waited_for_the_gil(0.5, 0.2, 0.3)  # 2.5x its CPU: busy, not waiting
    assert not waited_for_the_gil(0.05, 0.001, 0.05)  # 50x, but 49 ms: not worth a word
    assert not waited_for_the_gil(0.5, 0.1, 0.1)  # the process idle too: a core, not the GIL
    assert not waited_for_the_gil(0.0, 0.0, 0.0)


class _Clocks:
    """Stand-in for the balancer module's ``time``: each call of a clock advances it by its
    step (wall, the balancer thread's CPU, the whole process's CPU)."""

    def __init__(self, wall: float, own: float, process: float) -> None:
        self.steps = {"perf_counter": wall, "thread_time": own, "process_time": process}
        self.now = dict.fromkeys(self.steps, 0.0)

    def __getattr__(self, name):
        def clock() -> float:
            self.now[name] += self.steps[name]
            return self.now[name]

        return clock


@pytest.mark.parametrize(
    ("process", "helped", "advised"),
    [
        (0.5, (0.0, 0.0), 1),  # the other threads ran 0.4 s of the 0.4 s waited
        (0.1, (0.0, 0.0), 0),  # or none of it
        (0.5, (0.4, 0.0), 0),  # the threads planning beside it ran them
        (0.9, (0.4, 0.4), 0),  # and the busiest of those ran 0.4 s past the balancer's share
        (0.9, (0.4, 0.0), 1),  # the serving thread ran 0.4 s too while the plan waited
    ],
)
def test_a_plan_that_waited_for_the_gil_advises_a_child_process_once(
    monkeypatch, caplog, process, helped, advised
):
    """Each plan takes 0.5 s for 0.1 s of the balancer thread's CPU (the GIL held by a serving
    thread that runs Python would do that); the advice is logged once, not per plan, and not
    when the process's other threads were idle too (then a core was missing, not the GIL). The
    threads planning beside the balancer's (``plan_threads``) are the plan's: their CPU is not
    the other threads', and the busiest one's run past the balancer thread's share is the
    plan's own time, not a wait."""
    import eplb_rt.runtime.balancer as balancer_module

    start = planning.starting_placement(L, E, TOPO)
    balancer = _balancer()
    monkeypatch.setattr(balancer_module, "time", _Clocks(0.5, 0.1, process))
    spent = [0.0]

    def helpers_cpu():  # each read moves on: a plan's two reads differ by ``helped``
        spent[0] += 1
        return spent[0] * helped[0], spent[0] * helped[1]

    monkeypatch.setattr(balancer_module.registry, "helpers_cpu", helpers_cpu)
    with caplog.at_level(logging.WARNING, logger="eplb_rt.runtime"):
        for epoch in (1, 2):
            _result(balancer, _job(_load(seed=epoch), start, epoch=epoch))
    balancer.shutdown()
    advice = [r for r in caplog.records if "plan_in_subprocess=True" in r.getMessage()]
    assert len(advice) == advised
    if advised:
        assert "plan 1 took 0.50 s for 0.10 s of CPU" in advice[0].getMessage()


class _Job:
    """Variants of a job for the parametrised cases."""

    def __init__(self, job: Job) -> None:
        self.job = job

    def _with(self, **fields) -> _Job:
        import dataclasses

        return _Job(dataclasses.replace(self.job, **fields))

    def _replace_heat_zero(self) -> _Job:
        return self._with(heat=torch.zeros_like(self.job.heat))


_WARM_HERE = """
from eplb_rt.algorithms import metrics
from eplb_rt.config import EplbConfig
from eplb_rt.runtime import EplbRuntime

if __name__ == "__main__":
    runtime = EplbRuntime(EplbConfig(plan_in_subprocess=True, interval=100), 2, 8)
    assert runtime.balancer.ready.wait(120)
    print(len(metrics._rank_loads.signatures))
    runtime.shutdown()
"""


def test_a_planning_child_leaves_the_drift_check_warm_in_this_process(tmp_path):
    """A drift probe's check runs in the serving process: with the warm-up in the child alone,
    the first probe loaded its kernels (0.4-0.7 s, late), and the deadline it pushed up left no
    room for later probes. A fresh interpreter: this one has loaded them long ago."""
    import subprocess
    import sys

    script = tmp_path / "warm_here.py"
    script.write_text(_WARM_HERE)
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=300, check=True
    )
    assert done.stdout.split()[-1] != "0", done.stdout + done.stderr


def test_a_warm_up_that_compiled_with_the_cache_off_says_to_turn_it_on(monkeypatch, caplog):
    """With ``EPLB_RT_KERNEL_CACHE=0`` the package's cache is not in place: running the warm-up
    command would not help, unsetting the variable would."""
    from eplb_rt.algorithms import kernel_cache
    from eplb_rt.runtime import balancer as balancer_module

    monkeypatch.setattr(balancer_module, "timed_warm_up", lambda policy: 60.0)
    monkeypatch.setattr(kernel_cache, "installed", lambda: False)
    with caplog.at_level(logging.INFO, logger="eplb_rt.runtime"):
        balancer = _balancer(warm_up=True)
        assert balancer.ready.wait(30)
        balancer.shutdown()
    [record] = [r for r in caplog.records if "warmed up" in r.getMessage()]
    message = record.getMessage()
    assert "unset EPLB_RT_KERNEL_CACHE" in message and "policies --warm-up" not in message


def test_the_plan_digest_covers_the_replica_shares():
    """Ranks that agree on the slots but not on the shares would route the same tokens to
    different replicas."""
    shared = Placement(np.array([[0, 1, 2, 3, 0, 1]]), 4, 2, np.array([[0.9, 0.5, 1, 1, 0.1, 0.5]]))
    assert placement_digest(shared) != placement_digest(shared.with_shares(None))
