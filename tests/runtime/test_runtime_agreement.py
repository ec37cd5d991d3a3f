"""The ranks stay in step when one of them meets something the others do not: a batch of another
phase, a transfer that times out, a file it cannot write, weights of another shape; and what a
serving loop does to the runtime between plans (probes, late plans, registrations) keeps every
interval's plan and every rank's weights right."""

from __future__ import annotations

import collections
import dataclasses
import datetime
import os
import signal
import tempfile
import threading
import time

import numpy as np
import pytest
import torch
import torch.distributed as dist
from _dist import spawn
from _faults import open_gate
from _serving import let_plan_finish, small_config

from eplb_rt import formats, planning
from eplb_rt.config import EplbConfig
from eplb_rt.placement import Placement, Topology
from eplb_rt.runtime import EplbRuntime
from eplb_rt.runtime import balancer as balancer_module
from eplb_rt.runtime import runtime as runtime_module
from eplb_rt.runtime.groups import group_timeout


def _config(**overrides) -> EplbConfig:
    """:func:`small_config` migrating one layer a step."""
    return small_config(**{"layers_per_step": 1, **overrides})


def _route(runtime: EplbRuntime, step: int, tokens: int = 16) -> None:
    """A skewed batch on every layer: expert ``step // 10`` is hot."""
    gen = torch.Generator().manual_seed(step * 31 + runtime.rank)
    weights = torch.ones(runtime.num_experts)
    weights[step // 10 % runtime.num_experts] = 8.0
    for layer in range(runtime.num_layers):
        ids = torch.multinomial(weights.expand(tokens, -1), 2, generator=gen)
        runtime.route(layer, ids)


def _serve(runtime: EplbRuntime, steps: int) -> dict:
    """``steps`` steps of skewed batches, each plan finished before its deadline; the stats,
    after shutdown."""
    for step in range(1, steps + 1):
        _route(runtime, step)
        runtime.step()
        let_plan_finish(runtime)
    stats = runtime.stats()
    runtime.shutdown()
    return stats


def _gathers(runtime: EplbRuntime) -> list:
    """``(gather step, trigger)`` of every job the runtime hands to its balancer from now on."""
    seen, submit = [], runtime.balancer.submit

    def spy(job):
        seen.append((job.gather_step, job.trigger))
        submit(job)

    runtime.balancer.submit = spy
    return seen


def _weights(runtime: EplbRuntime, width: int = 4) -> list[torch.Tensor]:
    """One tensor per layer whose slot rows hold ``100 * layer + expert``, registered."""
    grid = runtime.placement.by_rank()[:, runtime.rank]
    out = []
    for layer in range(runtime.num_layers):
        w = torch.tensor(100.0 * layer + grid[layer], dtype=torch.float32)[:, None]
        out.append(w.repeat(1, width).contiguous())
        runtime.register_weights(layer, {"w": out[-1]})
    return out


def _weights_follow(runtime: EplbRuntime, weights: list[torch.Tensor]) -> bool:
    grid = runtime.placement.by_rank()[:, runtime.rank]
    return all(
        torch.equal(w[:, 0], torch.tensor(100.0 * layer + grid[layer], dtype=torch.float32))
        for layer, w in enumerate(weights)
    )


# ------------------------------------------------------------------ several ranks
def _phases(rank: int, world: int) -> None:
    """Data-parallel attention: at steps 3 and 9 rank 0 prefills while rank 1 decodes."""
    open_gate()
    runtime = EplbRuntime(_config(count_steps="decode"), 2, 9)
    for step in range(1, 25):
        _route(runtime, step)
        runtime.step(is_prefill=rank == 0 and step in (3, 9))
        let_plan_finish(runtime)
    stats = runtime.stats()
    runtime.shutdown()
    assert stats["num_errors"] == 0, stats["errors"]
    assert stats["num_rebalances"] >= 2

    # Nothing recorded (warm-up forwards): every plan comes back unchanged, "no heat" on the
    # planning rank only; the ranks must still agree whether the placement fits, or they
    # would probe at different steps (interval < 3 episodes: a fitted rank probes sooner).
    runtime = EplbRuntime(_config(interval=12, episode=8, history=8), 2, 9)
    gathers = _gathers(runtime)
    for step in range(1, 40):
        _route(runtime, step)
        runtime.step(record=False)
        let_plan_finish(runtime)
    stats = runtime.stats()
    runtime.shutdown()
    everyone = [None] * world
    dist.all_gather_object(everyone, gathers)
    assert everyone[0] == everyone[1] and stats["num_errors"] == 0, (everyone, stats["errors"])


@pytest.mark.multiprocess
def test_ranks_in_different_phases_plan_together():
    spawn(_phases, 2)


def _receiver_side_flags(rank: int, world: int) -> None:
    """Receiver-side heat: each rank counts what its slots received, every rank's tokens. At
    steps 2 and 3 rank 1's batch is padding (``record=False``) and then a prefill under
    ``count_steps="decode"``: its row cannot leave out its own tokens, so those steps must
    count nothing on every rank (the padding it sent stayed counted, rank 0's real tokens it
    received were zeroed); they reach the plan as steps without load, as in a load file."""
    seen = []
    to_load = balancer_module.heat_to_load
    balancer_module.heat_to_load = lambda *args: seen.append(to_load(*args)) or seen[-1]
    config = EplbConfig(
        policy="rt_test_shift", interval=5, history=6, episode=1, num_redundant=0, deadline=1,
        warm_up=False, heat_source="group_list", count_steps="decode",
    )  # fmt: skip
    runtime = EplbRuntime(config, 1, 4)
    S = runtime.num_slots_per_rank
    batches = [torch.full((3, 1), 3), torch.full((5, 1), 0)]  # rank 0's, rank 1's
    for step in range(1, 6):
        # Every rank routes every batch (the tables agree) to see what lands on its slots.
        landed = torch.cat([runtime.route(0, batch).reshape(-1) for batch in batches]) - rank * S
        runtime.record(0, torch.bincount(landed[(landed >= 0) & (landed < S)], minlength=S))
        padding, prefill = rank == 1 and step == 2, rank == 1 and step == 3
        runtime.step(is_prefill=prefill, record=not padding)
        let_plan_finish(runtime)
    runtime.shutdown()
    balancer_module.heat_to_load = to_load
    if rank == 0:  # the planning rank: the first probe sees step 1; at step 5, steps 1 to 5
        busy, dropped = [5, 0, 0, 3], [0, 0, 0, 0]
        assert seen[-1][:, 0].tolist() == [busy, dropped, dropped, busy, busy], seen
        assert all(row.tolist() in (busy, dropped) for load in seen for row in load[:, 0]), seen


@pytest.mark.multiprocess
def test_receiver_side_heat_keeps_only_the_steps_every_rank_counts():
    spawn(_receiver_side_flags, 2)


def _balancer_collectives_fail(rank: int, world: int) -> None:
    """The first job's reduce raises on every rank (as gloo does once a peer timed out: the
    pair stays closed). Before, the thread logged it and kept no result: every later plan was
    skipped as not ready, on the closed group, and no error was reported."""
    runtime = EplbRuntime(_config(num_redundant=2), 2, 8)
    first_group, reduce, failed = runtime._groups.balancer, runtime.balancer._reduce, []

    def closed_once(heat, group, counts):
        if not failed:
            failed.append(group)
            raise RuntimeError("Connection closed by peer")
        return reduce(heat, group, counts)

    runtime.balancer._reduce = closed_once
    stats = _serve(runtime, 60)
    assert failed == [first_group] and runtime._groups.balancer is not first_group
    assert "balancer: RuntimeError('Connection closed by peer')" in stats["errors"][0], stats
    assert stats["num_rebalances"] >= 1 and all(r["epoch"] > 1 for r in stats["rebalances"]), stats


@pytest.mark.multiprocess
def test_balancer_collectives_that_fail_are_reported_and_plans_go_on_in_a_new_group():
    spawn(_balancer_collectives_fail, 2)


def _timeout(rank: int, world: int) -> None:
    """Rank 1's first sends leave 2.5 s late: rank 0's receive passes its 1 s timeout, the
    layer is cancelled everywhere, and the migrations after it still commit."""
    open_gate()
    runtime = EplbRuntime(_config(num_redundant=0, transfer_timeout_s=1.0), 3, 8)
    weights = _weights(runtime)
    if rank == 1:
        post, delayed = dist.batch_isend_irecv, []

        def late(ops):
            if delayed:
                return post(ops)
            delayed.append(True)
            sends = [op for op in ops if op.op is dist.isend]

            def send():  # into the pair the timed-out receive closed: it may fail, or land
                try:
                    for work in post(sends):
                        work.wait()
                except RuntimeError:
                    pass

            threading.Timer(2.5, send).start()
            return post([op for op in ops if op.op is not dist.isend])

        dist.batch_isend_irecv = late
    for step in range(1, 40):
        _route(runtime, step)
        runtime.step()
        let_plan_finish(runtime)
        if runtime.stats()["num_errors"] and step < 30 and not hasattr(runtime, "slept"):
            runtime.slept = True
            time.sleep(3.0)  # the late sends arrive now, in the retired group
        assert _weights_follow(runtime, weights), f"weights do not follow the tables at {step}"
    stats = runtime.stats()
    runtime.shutdown()
    assert any("timed out" in e.lower() for e in stats["errors"]) or rank == 1
    failed_at = min(r["epoch"] for r in stats["rebalances"] if r["layers_failed"])
    later = [r for r in stats["rebalances"] if r["epoch"] > failed_at]
    assert any(r["layers_committed"] for r in later), "migration did not recover"


@pytest.mark.multiprocess
def test_a_timed_out_transfer_does_not_end_migration():
    spawn(_timeout, 2)


def _one_rank_surprised(rank: int, world: int, folder: str) -> None:
    open_gate()
    # Rank 0 (the only one that exports) finds its export folder gone after the first plan.
    export = os.path.join(folder, "placements")
    runtime = EplbRuntime(_config(export_dir=export), 2, 9)
    for step in range(1, 25):
        _route(runtime, step)
        runtime.step()
        let_plan_finish(runtime)
        if rank == 0 and step == 8:
            os.rename(export, export + ".gone")
            with open(export, "w") as file:  # a file where the folder was
                file.write("not a folder")
    stats = runtime.stats()
    runtime.shutdown()
    assert stats["num_rebalances"] >= 3  # the ranks kept planning together
    if rank == 0:
        assert any("exporting the placement failed" in e for e in stats["errors"])

    # The ranks registered weights of different widths: plans are skipped, never migrated.
    runtime = EplbRuntime(_config(), 2, 9)
    _weights(runtime, width=4 + rank)
    initial = runtime.placement
    stats = _serve(runtime, 13)
    assert runtime.placement == initial and stats["num_rebalances"] == 0
    said = "ranks registered different weights (layer 0: rank 0 w (4,) float32 strides (1,) "
    said += "16 bytes; rank 1 w (5,) float32 strides (1,) 20 bytes)"
    assert any(said in e for e in stats["errors"]), stats["errors"]

    # The same slot shape, one rank's slots padded (a slice of a wider buffer): rows of 16 and
    # 24 bytes, which passed as one layout, and gloo aborted the process at the transfer.
    runtime = EplbRuntime(_config(), 2, 9)
    grid = runtime.placement.by_rank()[:, rank]
    for layer in range(runtime.num_layers):
        held = torch.tensor(100.0 * layer + grid[layer], dtype=torch.float32)[:, None]
        wide = held.repeat(1, 4 + 2 * rank).contiguous()
        runtime.register_weights(layer, {"w": wide[:, :4]})
    initial = runtime.placement
    stats = _serve(runtime, 13)
    assert runtime.placement == initial and stats["num_rebalances"] == 0
    said = "layer 0: rank 0 w (4,) float32 strides (1,) 16 bytes; rank 1 w (4,) float32 "
    said += "strides (1,) 24 bytes"
    assert any(said in e for e in stats["errors"]), stats["errors"]


@pytest.mark.multiprocess
def test_what_one_rank_meets_alone_is_agreed(tmp_path):
    spawn(_one_rank_surprised, 2, str(tmp_path))


# ------------------------------------------------------------------ one rank
def _between_plans(rank: int, world: int) -> None:
    open_gate()
    # 1. The first-fit probe at step 6 migrates 12 layers, one a step, past step 12: the
    #    interval's gather waits for the first idle step instead of being dropped.
    runtime = EplbRuntime(_config(interval=12, history=12, num_redundant=0), 12, 8)
    gathers = _gathers(runtime)
    for step in range(1, 40):
        _route(runtime, step)
        runtime.step()
        let_plan_finish(runtime)
    runtime.shutdown()
    assert gathers[0] == (6, "first")
    intervals = [s for s, trigger in gathers if trigger == "interval"]
    # (each plan migrates 12 layers over 12 steps or more: every interval's gather is late)
    assert intervals[0] in range(13, 24) and intervals[1] in range(24, 36), gathers

    # 2. The weights of a layer being migrated cannot be replaced under the transfer.
    runtime = EplbRuntime(_config(num_redundant=0), 3, 8)
    weights = _weights(runtime)
    for step in range(1, 20):
        _route(runtime, step)
        runtime.step()
        let_plan_finish(runtime)
        if runtime._queue:
            layer = runtime._queue[0].layer
            with pytest.raises(ValueError, match=f"layer {layer} is being migrated"):
                runtime.register_weights(layer, {"w": torch.zeros(4, 4)})
            assert runtime.executor.weights[layer]["w"] is weights[layer]
            break
    else:
        pytest.fail("no migration started")
    while runtime.busy:
        runtime.step()
    assert _weights_follow(runtime, weights)
    runtime.shutdown()

    # 3. Only layer 0 has weights: layer 1 would move in the tables alone, so it stays.
    runtime = EplbRuntime(_config(num_redundant=0), 2, 8)
    initial = runtime.placement
    runtime.register_weights(0, {"w": torch.zeros(4, 4)})
    stats = _serve(runtime, 13)
    assert not np.array_equal(runtime.placement.phy2log[0], initial.phy2log[0])
    assert np.array_equal(runtime.placement.phy2log[1], initial.phy2log[1])
    assert any("layers [1] move experts but have no registered" in e for e in stats["errors"])
    done = [r for r in stats["rebalances"] if r["layers_committed"]]
    assert done and all(r["layers_failed"] == [1] for r in done)

    # 4. ... and where only such layers move, the plan is skipped: no rebalance that moved none.
    runtime = EplbRuntime(_config(num_redundant=0), 2, 8)
    initial = runtime.placement
    runtime.register_weights(0, {"w": torch.zeros(4, 4)})
    hot = torch.ones(runtime.num_experts)
    hot[3] = 8.0
    for step in range(1, 14):  # load on layer 1 only: layer 0 (idle) is not planned
        gen = torch.Generator().manual_seed(step * 31 + runtime.rank)
        runtime.route(1, torch.multinomial(hot.expand(16, -1), 2, generator=gen))
        runtime.step()
        let_plan_finish(runtime)
    stats = runtime.stats()
    runtime.shutdown()
    assert runtime.placement == initial
    assert stats["num_rebalances"] == 0 and stats["moved_experts"] == 0
    reasons = [skip["reason"] for skip in stats["skipped"]]
    assert reasons and all("layers [1] move experts" in reason for reason in reasons)

    # 5. shutdown() during a migration ends it: not busy (a drain loop `while rt.busy:
    #    rt.step()` would raise), the layers left uncommitted listed as failed, no more weights.
    runtime = EplbRuntime(_config(num_redundant=0), 3, 8)
    _weights(runtime)
    for step in range(1, 20):
        _route(runtime, step)
        runtime.step()
        let_plan_finish(runtime)
        if runtime._queue:
            break
    else:
        pytest.fail("no migration started")
    committed = list(runtime._current.layers_committed)
    left = [t.migration.layer for t in runtime._in_flight] + [m.layer for m in runtime._queue]
    runtime.shutdown()
    stats = runtime.stats()
    assert not runtime.busy and stats["in_progress"] is None
    last = stats["rebalances"][-1]
    assert last["layers_committed"] == committed and last["layers_failed"] == left
    assert any(f"shutdown() before layers {left}" in e for e in stats["errors"]), stats["errors"]
    with pytest.raises(RuntimeError, match=r"register_weights\(\) after shutdown"):
        runtime.register_weights(0, {"w": torch.zeros(4, 4)})


@pytest.mark.multiprocess
def test_what_the_serving_loop_does_between_plans():
    spawn(_between_plans, 2)


def _plan_takes(runtime: EplbRuntime, steps: int) -> list:
    """Each plan of ``runtime`` finishes ``steps`` serving steps after its gather, on any host:
    the balancer waits for the serving loop's step, which then waits for the balancer
    (:func:`_serve_slow_plans`). Returns the jobs as they are submitted."""
    plan, submit, jobs = runtime.balancer._plan, runtime.balancer.submit, []

    def slow(job, heat):
        while runtime.recorder.host_step < job.gather_step + steps and not runtime._closed:
            time.sleep(0.001)
        return plan(job, heat)

    def record(job):
        jobs.append(job)
        submit(job)

    runtime.balancer._plan, runtime.balancer.submit = slow, record
    return jobs


def _serve_slow_plans(steps: int, plan_steps: int, **config) -> tuple:
    """``(runtime, stats, jobs)`` after ``steps`` steps of a runtime whose plans take
    ``plan_steps`` steps (:func:`_plan_takes`), built from ``config`` (the deadline adapting
    unless given; with ``warm_up``, served once the warm-up is done). After each step the loop
    waits until the balancer has finished every job whose steps are up (late ones too: what the
    next gather sees of the balancer must not depend on the machine's scheduling)."""
    runtime = EplbRuntime(_config(**{"num_redundant": 0, "deadline": None, **config}), 2, 8)
    assert runtime.balancer.ready.wait(60)
    jobs = _plan_takes(runtime, plan_steps)
    for step in range(1, steps + 1):
        _route(runtime, step)
        runtime.step()
        due = sum(runtime.recorder.host_step >= j.gather_step + plan_steps for j in jobs)
        end = time.monotonic() + 60
        while len(jobs) - runtime.balancer._jobs.unfinished_tasks < due:
            assert time.monotonic() < end, "the balancer never finished a job that was due"
            time.sleep(0.001)
    stats = runtime.stats()
    runtime.shutdown()
    return runtime, stats, jobs


def _adapting_deadline(rank: int, world: int) -> None:
    open_gate()
    # Plans take 15 steps. The first deadline, interval // 5 = 10 steps, is missed: skipped,
    # and every rank doubles the deadline; the next plan is in time and migrates.
    slow = {"interval": 50, "history": 50, "episode": 5}
    runtime, stats, jobs = _serve_slow_plans(60, 15, warm_up=True, **slow)
    assert [(j.gather_step, j.trigger, j.deadline_step) for j in jobs[:2]] == [
        (15, "first", 25),
        (25, "first", 45),
    ], jobs
    first = stats["skipped"][0]
    assert first["step"] == 25 and "the next plans get 20 steps" in first["reason"], stats
    assert runtime.deadline == stats["deadline"] == 20
    assert stats["rebalances"][0]["epoch"] == 2, stats

    # Without a warm-up the first plan pays its one-off costs: late for them, it leaves the
    # deadline as it was (so do the plans gathered while it ran), later ones do not.
    runtime, stats, _ = _serve_slow_plans(60, 15, **slow)
    reasons = [s["reason"] for s in stats["skipped"]]
    assert "while the policy warmed up; the deadline stays 10" in reasons[0], reasons
    assert "the next plans get 20 steps" in reasons[-1] and runtime.deadline == 20, reasons
    # Only the plans late once warm are errors: a one-off wait is logged, not reported.
    assert not any("warmed up" in e for e in stats["errors"]), stats["errors"]
    assert any("the next plans get 20 steps" in e for e in stats["errors"]), stats["errors"]

    # A deadline given is kept, and the skip says how to have it adapt.
    runtime, stats, _ = _serve_slow_plans(40, 15, deadline=10, **slow)
    assert runtime.deadline == 10 and stats["rebalances"] == [], stats
    assert all("EplbConfig.deadline=None adapts it" in s["reason"] for s in stats["skipped"])

    # Plans slower than the interval: the deadline stops at interval - 1, and says why.
    runtime, stats, _ = _serve_slow_plans(80, 14, warm_up=True, interval=12, history=12, episode=3)
    assert runtime.deadline == 11 and stats["rebalances"] == [], stats
    reasons = [s["reason"] for s in stats["skipped"]]
    grown = [r.split("; the next plans get ")[-1].split(",")[0] for r in reasons[:3]]
    assert grown == ["4 steps", "8 steps", "11 steps"], reasons
    # Episode 3 + deadline 11 is past interval 12: no probe fits any more, and the skip says so.
    assert "too many for a drift probe" in reasons[2] and "drift probe" not in reasons[1]
    assert "need a longer EplbConfig.interval" in reasons[-1], reasons


@pytest.mark.multiprocess
def test_a_deadline_missed_grows_alike_on_every_rank():
    spawn(_adapting_deadline, 2)


def test_a_plan_its_balancer_found_late_grows_the_deadline_too(monkeypatch):
    """A plan the balancer ends as late (it started after its deadline step, or finished after
    it and was stored before the serving thread looked) is as late as a missing one."""
    config = _config(interval=50, history=50, episode=5, deadline=None, num_redundant=0)
    with EplbRuntime(config, 2, 8) as runtime:
        runtime.balancer.warm = True

        def late(epoch):
            return balancer_module.PlanResult(epoch, balancer_module.PLAN_LATE, None, 0.0, 0, "x")

        monkeypatch.setattr(runtime.balancer, "result", late)
        for step in range(1, 26):  # the first probe gathers at step 15, its deadline is 25
            _route(runtime, step)
            runtime.step()
        stats = runtime.stats()
    assert stats["skipped"][0]["step"] == 25, stats
    assert "plan late: x; the next plans get 20 steps" in stats["skipped"][0]["reason"], stats
    assert runtime.deadline == 20


@pytest.mark.parametrize(("given", "grown"), [(None, [1, 2, 4, 4]), (3, [3, 3, 3, 3])])
def test_late_plans_get_more_threads_where_they_adapt(monkeypatch, given, grown):
    """Plans start on one thread (none beside the balancer's, while they are in time) and
    each late one doubles them, up to the cores rank 0 may use (4 here), as the deadline; a
    number given is kept. The jobs carry them to the planning rank's balancer."""
    monkeypatch.setattr(planning, "default_threads", lambda: 4)
    config = _config(interval=12, history=12, episode=3, deadline=None, num_redundant=0)
    config = dataclasses.replace(config, plan_threads=given)
    with EplbRuntime(config, 2, 8) as runtime:
        runtime.balancer.warm = True
        jobs = []
        monkeypatch.setattr(runtime.balancer, "submit", jobs.append)

        def late(epoch):
            return balancer_module.PlanResult(epoch, balancer_module.PLAN_LATE, None, 0.0, 0, "x")

        monkeypatch.setattr(runtime.balancer, "result", late)
        step = 0
        while len(runtime.skipped) < 4:
            step += 1
            _route(runtime, step)
            runtime.step()
            assert step < 200, runtime.skipped
        stats = runtime.stats()
    assert [job.threads for job in jobs[:4]] == grown
    assert stats["plan_threads"] == grown[-1] == runtime.plan_threads
    reasons = [s["reason"] for s in stats["skipped"]]
    said = [r.split("; they run on ")[-1] if "; they run on" in r else None for r in reasons]
    assert said[:3] == (["2 threads", "4 threads", None] if given is None else [None] * 3)


def test_probes_check_for_drift_once_a_plan_finds_the_placement_fitting():
    config = EplbConfig(policy="deepseek", interval=50, episode=4, deadline=3, warm_up=False)
    with EplbRuntime(config, 2, 8) as runtime:
        gathers = _gathers(runtime)
        gen = torch.Generator().manual_seed(0)
        for _ in range(200):
            for layer in range(2):  # a balanced load: no plan changes anything
                runtime.route(layer, torch.randint(0, 8, (64, 2), generator=gen))
            runtime.step()
            let_plan_finish(runtime)
        stats = runtime.stats()
    triggers = collections.Counter(trigger for _, trigger in gathers)
    assert stats["num_rebalances"] == 0 and triggers["first"] == 1, triggers


def test_staging_that_does_not_fit_is_an_error_at_registration(monkeypatch):
    with EplbRuntime(_config(layers_per_step=2, num_redundant=0), 2, 8) as runtime:

        def no_memory(tensor):
            raise RuntimeError("out of memory (injected)")

        monkeypatch.setattr(torch, "empty_like", no_memory)
        with pytest.raises(RuntimeError, match=r"staging buffers for layer 1 \(2 lane\(s\), "):
            runtime.register_weights(1, {"w": torch.zeros(8, 4)})
        assert runtime.executor.weights == {} and runtime.executor.signature == 0


def _shutdown_from_another_thread(rank: int, world: int) -> None:
    """Every rank's serving thread commits a layer while another thread calls shutdown()."""
    open_gate()
    runtime = EplbRuntime(_config(num_redundant=0), 3, 8)
    weights = _weights(runtime)
    finish, entered, go = runtime.executor.finish, threading.Event(), threading.Event()

    def held(transfer):
        entered.set()
        assert go.wait(30)
        return finish(transfer)

    errors: list = []
    stop = threading.Event()  # every rank's serving loop stops after the same step

    def serve():
        try:
            for step in range(1, 40):
                if stop.is_set():
                    return
                _route(runtime, step)
                runtime.step()
                let_plan_finish(runtime)
        except Exception as err:
            errors.append(err)
        entered.set()

    runtime.executor.finish = held
    serving = threading.Thread(target=serve)
    serving.start()
    assert entered.wait(60) and not errors, errors
    stop.set()
    stopping = threading.Thread(target=runtime.shutdown)
    stopping.start()
    stopping.join(0.3)
    assert stopping.is_alive()  # waiting for the step that commits
    go.set()
    stopping.join(30)
    serving.join(30)
    assert not stopping.is_alive() and not serving.is_alive()
    assert errors == [], errors
    with pytest.raises(RuntimeError, match=r"step\(\) after shutdown\(\)"):
        runtime.step()
    stats = runtime.stats()
    assert stats["failure"] is None and not runtime.busy
    assert _weights_follow(runtime, weights)
    last = stats["rebalances"][-1]
    assert sorted(last["layers_committed"] + last["layers_failed"]) == list(range(3)), last


@pytest.mark.multiprocess
def test_shutdown_from_another_thread_waits_for_the_step_under_way():
    """An engine stopping the runtime from a watchdog or signal thread while its serving thread
    commits a layer: shutdown() waits for the step, which ends normally, and every layer's
    weights stay those its placement says (before, the commit met a migration half taken down:
    an IndexError, one layer's weights rewritten and its tables not)."""
    spawn(_shutdown_from_another_thread, 2)


def _stuck_plans(monkeypatch) -> tuple[threading.Event, threading.Event]:
    """Plans that do not return until the first event returned is set (60 s at most); each sets
    the second once it is in."""
    release, entered = threading.Event(), threading.Event()
    decide = balancer_module.planning.decide

    def stuck(*args, **kwargs):
        entered.set()
        release.wait(60)
        return decide(*args, **kwargs)

    monkeypatch.setattr(balancer_module.planning, "decide", stuck)
    return release, entered


def _serve_stuck(runtime: EplbRuntime, entered: threading.Event, steps: int = 60) -> list[int]:
    """Serve ``steps`` steps, the first plan held until it is in the policy (``entered``; not
    late: it sticks there); the balancer's jobs outstanding after each step."""
    outstanding = []
    for step in range(1, steps + 1):
        _route(runtime, step)
        runtime.step()
        if runtime._pending is not None and runtime.rank == 0:  # rank 0 plans
            assert entered.wait(60)
        outstanding.append(runtime.balancer.outstanding)
    return outstanding


def test_a_plan_that_never_ends_holds_back_the_gathers(monkeypatch):
    """Behind a plan that never returns, each gather's copy of the heat ring queued for good
    (memory without bound): the balancer holds at most MOST_JOBS jobs, and the gathers after
    that are skipped as errors naming the plan that holds it."""
    release, entered = _stuck_plans(monkeypatch)
    runtime = EplbRuntime(_config(interval=6, episode=6, deadline=2, num_redundant=0), 2, 8)
    runtime.balancer.warm = True
    outstanding = _serve_stuck(runtime, entered)
    stats = runtime.stats()
    release.set()
    runtime.shutdown()
    assert max(outstanding) == runtime_module.MOST_JOBS, outstanding
    held = [
        s for s in stats["skipped"] if "not gathered: the balancer is still planning" in s["reason"]
    ]
    errors = " ".join(stats["errors"])
    assert len(held) >= 5 and all(f"plan {s['epoch']}: " in errors for s in held)


def _stuck_on_two_ranks(rank: int, world: int) -> None:
    """Rank 0's plan sticks; rank 1's balancer waits for its broadcast. Both skip the same
    gathers (agreed), hold at most MOST_JOBS jobs, and plan again once it returns."""
    release, entered = _stuck_plans(pytest.MonkeyPatch())
    runtime = EplbRuntime(_config(interval=6, episode=6, deadline=2, num_redundant=0), 2, 8)
    runtime.balancer.warm = True
    outstanding = _serve_stuck(runtime, entered, 40)
    held = runtime.stats()["skipped"]
    release.set()
    end = time.monotonic() + 60
    while runtime.balancer.outstanding:  # the stuck plan ends, the late one behind it too
        assert time.monotonic() < end
        time.sleep(0.01)
    for step in range(41, 80):
        _route(runtime, step)
        runtime.step()
        let_plan_finish(runtime)
    stats = runtime.stats()
    runtime.shutdown()
    assert max(outstanding) == runtime_module.MOST_JOBS, outstanding
    every = [None] * world
    dist.all_gather_object(every, [(s["epoch"], s["step"]) for s in held])
    assert every[0] == every[1] and sum("not gathered" in s["reason"] for s in held) >= 3, held
    assert stats["failure"] is None
    later = [s for s in stats["skipped"][len(held) :] if "not gathered" in s["reason"]]
    assert later == [] and stats["num_rebalances"] + len(stats["skipped"]) > len(held), stats


@pytest.mark.multiprocess
def test_ranks_agree_on_the_gathers_a_stuck_plan_holds_back():
    spawn(_stuck_on_two_ranks, 2, timeout_s=120)


def _wait_idle(runtime: EplbRuntime, timeout: float = 60.0) -> None:
    """Until this rank's balancer holds no job."""
    end = time.monotonic() + timeout
    while runtime.balancer.outstanding:
        assert time.monotonic() < end, "the balancer never emptied"
        time.sleep(0.002)


def _full_on_one_rank(rank: int, world: int) -> None:
    """Rank 1's balancer holds its first job once that job's collectives are done (its result
    not yet stored), so rank 0's finishes it and rank 1's does not: after the gather at step 12
    rank 1 holds MOST_JOBS jobs, rank 0 one (the second, waiting in a collective for rank 1)."""
    runtime = EplbRuntime(_config(interval=6, episode=6, deadline=2, num_redundant=0), 2, 8)
    gathers = _gathers(runtime)
    release = threading.Event()
    if rank == 1:
        run = runtime.balancer._run

        def holding(job):
            result = run(job)
            if job.epoch == 1:
                assert release.wait(60)
            return result

        runtime.balancer._run = holding
    held = []
    for step in range(1, 34):
        _route(runtime, step)
        runtime.step()
        if step == 6 and rank == 0:
            _wait_idle(runtime)  # its first job done: from the next gather on it holds one
        # The deadline (gather 12 + 2) that finds rank 1's balancer full: the first plan, late
        # at step 8, left the deadline at 2 steps, for no balancer had warmed up by its gather.
        if step == 14:
            held.append(runtime.balancer.outstanding)
        if step == 24:  # two gathers held back; rank 1's balancer is let go
            release.set()
            _wait_idle(runtime)
        if step > 24:
            let_plan_finish(runtime)
    stats = runtime.stats()
    runtime.shutdown()
    assert held == [runtime_module.MOST_JOBS if rank == 1 else 1], held
    assert [step for step, _ in gathers] == [6, 12, 30], gathers
    not_gathered = [s["step"] for s in stats["skipped"] if "not gathered" in s["reason"]]
    every = [None] * world
    dist.all_gather_object(every, (gathers, not_gathered))
    assert not_gathered == [18, 24] and every[0] == every[1], every


@pytest.mark.multiprocess
def test_gathers_wait_until_no_ranks_balancer_is_full():
    """One rank's balancer full, the other's not: every rank skips the gathers until neither is
    full, then gathers again. Reading the ranks' least flag instead of their most (at the
    deadline or at the gather) would let them gather behind a full balancer, whose jobs would
    then pile up."""
    spawn(_full_on_one_rank, 2, timeout_s=60)


def _shutdown_from_a_signal_handler(rank: int, world: int) -> None:
    """Every rank's serving thread gets a signal while it commits a layer; the handler calls
    shutdown(), which runs once the step ends."""
    open_gate()
    runtime = EplbRuntime(_config(num_redundant=0), 3, 8)
    weights = _weights(runtime)
    finish, sent = runtime.executor.finish, []

    def signalled(transfer):
        if not sent:
            sent.append(1)
            os.kill(os.getpid(), signal.SIGUSR1)
            time.sleep(0.05)  # the handler runs here, inside the step
        return finish(transfer)

    previous = signal.signal(signal.SIGUSR1, lambda *_: runtime.shutdown())
    runtime.executor.finish = signalled
    try:
        for step in range(1, 40):
            _route(runtime, step)
            runtime.step()
            let_plan_finish(runtime)
            if sent:
                break
    finally:
        signal.signal(signal.SIGUSR1, previous)
    assert sent, "no transfer started"
    with pytest.raises(RuntimeError, match=r"step\(\) after shutdown\(\)"):
        runtime.step()
    stats = runtime.stats()
    assert stats["failure"] is None and not runtime.busy
    assert _weights_follow(runtime, weights)


@pytest.mark.multiprocess
def test_shutdown_from_a_signal_handler_waits_for_the_step_it_interrupts():
    """A signal handler runs on the serving thread, inside the step: the lock was its own, so
    shutdown() took the migration down under the commit (an IndexError, as from a thread)."""
    spawn(_shutdown_from_a_signal_handler, 2)


def test_a_first_plan_that_never_ends_is_an_error_from_the_second_gather_held(monkeypatch):
    """Before any plan has finished (no warm-up) a plan late for its deadline is a one-off
    wait, not an error; one that holds the gathers back twice is."""
    release, entered = _stuck_plans(monkeypatch)
    config = _config(interval=6, episode=6, deadline=2, num_redundant=0, warm_up=False)
    runtime = EplbRuntime(config, 2, 8)
    _serve_stuck(runtime, entered)
    stats, warm = runtime.stats(), runtime.balancer.warm
    release.set()
    runtime.shutdown()
    assert not warm
    held = [s["epoch"] for s in stats["skipped"] if "not gathered" in s["reason"]]
    errors = [e for e in stats["errors"] if "not gathered" in e]
    assert len(held) >= 5 and len(errors) == len(held) - 1, (held, errors)
    assert all(e.startswith(f"plan {epoch}: ") for epoch, e in zip(held[1:], errors, strict=True))


def _steps_apart(rank: int, world: int) -> None:
    """Rank 0 stops stepping before the first agreement; rank 1 goes on into it."""
    runtime = EplbRuntime(_config(num_redundant=0), 2, 8)
    steps = 5 if rank == 0 else 30
    try:
        for step in range(1, steps + 1):
            _route(runtime, step)
            runtime.step()
    except RuntimeError as err:
        assert rank == 1, err
        assert "did not all reach the runtime's agreement (rank 1 at step 8: " in str(err), err
        assert "calls step() more or fewer times than the others" in str(err), err
    else:
        assert rank == 0, "rank 1 met nobody in the agreement and raised nothing"
        time.sleep(6)  # past rank 1's timeout
    runtime.shutdown()


@pytest.mark.multiprocess
def test_ranks_that_step_apart_get_an_error_that_says_so():
    """A rank that calls step() fewer times than the others leaves them waiting in an
    agreement: the engine's timeout then ends it, with torch's error alone ("Timed out
    waiting ... for recv") before; now it says what the ranks must do."""
    spawn(_steps_apart, 2, timeout_s=3)


def test_late_plans_are_not_planned(monkeypatch):
    """A policy slower than the interval: the jobs queued behind it are past their deadline
    when their turn comes, and are dropped unplanned (not planned for nobody)."""
    planned = []
    decide = balancer_module.planning.decide

    def slow(*args, **kwargs):
        planned.append(1)
        time.sleep(0.3)
        return decide(*args, **kwargs)

    monkeypatch.setattr(balancer_module.planning, "decide", slow)
    with EplbRuntime(
        _config(interval=3, history=3, episode=3, deadline=2, num_redundant=0), 2, 8
    ) as runtime:
        for step in range(1, 61):
            _route(runtime, step)
            runtime.step()
            time.sleep(0.01)
        started = time.monotonic()
    assert time.monotonic() - started < 5.0  # shutdown does not plan what is still queued
    assert 1 <= len(planned) <= 10  # 20 gathers, planned at most every 0.3 s of 0.6 s of steps + 2


def test_a_planning_process_that_dies_is_replaced():
    config = _config(
        policy="deepseek",
        interval=6,
        episode=6,
        deadline=5,
        num_redundant=0,
        plan_in_subprocess=True,
    )
    with EplbRuntime(config, 2, 8) as runtime:
        assert runtime.balancer.ready.wait(60)
        os.kill(runtime.balancer._child.pid, signal.SIGKILL)
        for step in range(1, 40):
            _route(runtime, step)
            runtime.step()
            let_plan_finish(runtime)
        stats = runtime.stats()
    # One plan fails with the child; the next ones are planned in a new child (one rank: a
    # plan changes nothing there).
    reasons = [s["reason"] for s in stats["skipped"]]
    assert "PlanningChildDied" in reasons[0] and len(reasons) >= 3, reasons
    assert set(reasons[1:]) == {"plan unchanged"}, reasons


def _different_settings(rank: int, world: int) -> None:
    """Each case gives rank 1 one setting of its own; every rank must raise, naming it, rather
    than hang or abort in a collective later. Settings a rank may have alone are accepted."""
    base = _config(policy="equilibrium", num_redundant=2)  # 10 slots on 2 ranks
    cases = [
        ({"layers_per_step": 2}, 4, "layers_per_step"),
        ({"history": 4}, 4, "history"),
        ({"policy_options": {"move_cost": 0.5}}, 4, "policy_options"),
        ({}, 5, "num_layers"),
        ({"num_redundant": 4}, 4, "num_redundant"),  # not the starting placement it implies
        ({"num_nodes": 3}, 4, "num_nodes"),  # refused by rank 1 alone: the others waited for it
    ]
    for overrides, layers, field in cases:
        config = EplbConfig(**{**base.to_dict(), **overrides}) if rank == 1 else base
        with pytest.raises(ValueError, match=f"the ranks were given different {field}: every"):
            EplbRuntime(config, layers if rank == 1 else 4, 8)
    # Each rank reads its own placement file: its path is the rank's, its contents are not.
    start = planning.starting_placement(4, 8, Topology(2, 5))
    folder = tempfile.mkdtemp()
    for name, placement in (("same", start), ("own", Placement(start.phy2log[:, ::-1], 8, 2))):
        path = os.path.join(folder, f"{name}_{rank}.json")
        formats.write_placement(start if rank == 0 else placement, path)
        config = EplbConfig(**{**base.to_dict(), "initial_placement": path})
        if name == "same":
            EplbRuntime(config, 4, 8).shutdown()
        else:
            match = r"different initial_placement \(its contents\): every"
            with pytest.raises(ValueError, match=match):
                EplbRuntime(config, 4, 8)
    # A placement file only rank 1 refuses (another size): it says why, the other that it did.
    path = os.path.join(folder, f"wrong_{rank}.json")
    wrong = planning.starting_placement(4, 8, Topology(2, 6)) if rank else start
    formats.write_placement(wrong, path)
    config = EplbConfig(**{**base.to_dict(), "initial_placement": path})
    match = "initial placement .* expected" if rank else "another rank of the runtime refused"
    with pytest.raises(ValueError, match=match):
        EplbRuntime(config, 4, 8)
    # A dict's keys in another order, and the rank's own files and waits, are the same config.
    options = {"move_cost": 0.5, "num_episodes": 4}
    if rank:  # keys in another order, numpy numbers: the same options as the policy reads them
        options = {"num_episodes": np.int64(4), "move_cost": np.float64(0.5)}
    local = {"transfer_timeout_s": 5.0 + rank, "warm_up": False}
    same = EplbConfig(**{**base.to_dict(), "policy_options": options, **local})
    runtime = EplbRuntime(same, 4, 8)
    # A group this process is not in: said so, naming the group, not "1 is not in list".
    alone = dist.new_group([0])
    if rank == 1:
        with pytest.raises(ValueError, match=r"global rank 1\) is not in the expert-parallel"):
            EplbRuntime(same, 4, 8, group=alone)
    # Its groups wait for a stuck peer as long as the engine's (17 s here), not 30 minutes.
    for made in (runtime._groups.balancer, runtime._groups.control, runtime._groups.migration):
        assert group_timeout(made) == datetime.timedelta(seconds=17)
    runtime.shutdown()


def test_ranks_given_different_settings_fail_alike_at_start():
    spawn(_different_settings, 2, timeout_s=17)
