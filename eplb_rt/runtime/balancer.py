"""The balancer: a background thread that turns gathered heat into an agreed plan.

Every job (one per interval) runs the same collectives on every rank, in submission order, on
the balancer's own small gloo group, so the ranks' threads never cross:

1. wait for the heat snapshot's copy event, then reduce the heat over the group: all-reduce of
   sender-side counts (``heat_source="topk"``) or all-gather of each rank's own slots
   (``"group_list"``);
2. rank 0 turns heat into logical load ``[T, L, E]`` and decides through the planning
   pipeline (:func:`eplb_rt.planning.decide`: policy with numba, GIL released; alignment; the
   gate in seconds); a drift probe first checks :func:`eplb_rt.planning.drifted` and plans only
   when it holds. Rank 0 broadcasts the plan with its epoch (a plan that raises or comes too
   late is broadcast as a failure, so every rank's thread finishes the job);
3. every rank stores the :class:`PlanResult`.

The serving thread never waits for a job: at the deadline step it asks :meth:`Balancer.result`
and the ranks agree (``EplbRuntime``) whether everyone holds the same plan.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import queue
import threading
import time
import zlib
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from eplb_rt import planning
from eplb_rt.algorithms import kernel_cache, registry
from eplb_rt.algorithms.load import heat_to_load
from eplb_rt.config import EplbConfig
from eplb_rt.placement import Placement, Topology
from eplb_rt.runtime.agreement import min_max
from eplb_rt.runtime.device import Device, Event
from eplb_rt.runtime.planning_child import PlanningChild, PlanningChildDied

log = logging.getLogger("eplb_rt.runtime")

WARM_UP_COMPILED_S = 10.0
"""A warm-up this long compiled kernels: a load from the package's cache takes about a second
(BENCHMARKS.md, "Cold start"), compiling the default policy about a minute."""

# Status codes broadcast in a plan header.
PLAN_OK, PLAN_UNCHANGED, PLAN_FAILED, PLAN_LATE = 0, 1, 2, 3
STATUS_NAMES = {
    PLAN_OK: "ok",
    PLAN_UNCHANGED: "unchanged",
    PLAN_FAILED: "failed",
    PLAN_LATE: "late",
}


WAIT_RATIO = 3.0
"""A plan in the balancer thread that took this many times its own CPU time, ..."""
WAIT_SECONDS = 0.1
"""... waited at least this long, ..."""
WAIT_OTHERS = 0.5
"""... and meanwhile let the process's other threads run for this share of its wait, waited for
the GIL: a serving thread that runs Python between its ops keeps it."""


def waited_for_the_gil(wall_seconds: float, cpu_seconds: float, others_cpu_seconds: float) -> bool:
    """Whether a plan that took ``wall_seconds`` for ``cpu_seconds`` of its own thread's CPU,
    while the process's other threads used ``others_cpu_seconds``, mostly waited for the GIL
    (:data:`WAIT_RATIO`, :data:`WAIT_SECONDS`, :data:`WAIT_OTHERS`). A plan that waited while
    the rest of the process was idle as well waited for a core (other processes), which a child
    process would not fix."""
    waited = wall_seconds - cpu_seconds
    return (
        waited >= WAIT_SECONDS
        and wall_seconds > WAIT_RATIO * cpu_seconds
        and others_cpu_seconds >= WAIT_OTHERS * waited
    )


@dataclasses.dataclass
class Job:
    """One gather: the heat snapshot and what it was counted under.

    Attributes:
        epoch: plan number (counts gathers from 1, identical on every rank).
        gather_step: host step of the gather; ``deadline_step`` the step by which it must be ready.
        heat: host ``[H, L, P]`` int32 copy of the ring (valid once ``event`` completes).
        rows: closed ring rows, oldest first; ``row_phy2log [T, L, P]`` their placements.
        previous: the committed placement at the gather (the policy's ``previous``).
        cost: the cost model the gate prices the plan with.
        trigger: ``"interval"``; ``"drift"``: a probe, planned only when the last ``episode``
            steps drifted; ``"first"``: a probe of a placement no plan has fitted yet (the
            starting one), planned without waiting for the interval.
        row_seconds: ``[T]`` the host time of each of ``rows``' steps, as the planning rank
            measured it (0: not measured), or ``None``; the planning rank refines
            ``cost.token_seconds`` from it as the steps' time / their busiest-rank tokens, over
            the same steps.
        warm: whether this rank's balancer had paid its one-off costs at the gather (the
            warm-up, or without one a first plan): a plan late for those does not make an
            adapting deadline longer.
        row_counts: ``[T]`` whether this rank counts each of ``rows`` (``EplbConfig.
            count_steps``, ``step(record=...)``), or ``None``: all. With receiver-side heat a
            row counts only where every rank counts it (a row holds every rank's tokens).
        group: the process group of the job's collectives (``None``: one process), fixed at
            the gather, so that a group renewed after a failure (:attr:`Balancer.failed_group`)
            is taken up by the same job on every rank.
        threads: the threads the planning rank plans the layers on (``EplbRuntime.
            plan_threads``).
    """

    epoch: int
    gather_step: int
    deadline_step: int
    heat: torch.Tensor
    event: Event
    rows: np.ndarray
    row_phy2log: np.ndarray
    previous: Placement
    cost: planning.CostModel
    trigger: str = "interval"
    row_seconds: np.ndarray | None = None
    warm: bool = True
    row_counts: np.ndarray | None = None
    group: Any = None
    threads: int = 1


@dataclasses.dataclass
class PlanResult:
    """A job's outcome, identical on every rank; ``decision`` only on the planning rank."""

    epoch: int
    status: int
    placement: Placement | None
    plan_time_s: float
    digest: int
    error: str = ""
    layers: tuple[int, ...] = ()
    decision: planning.Decision | None = None


def placement_digest(placement: Placement | None) -> int:
    """A 31-bit checksum of a plan, compared across ranks before anything moves."""
    if placement is None:
        return 0
    data = placement.phy2log.tobytes() + placement.slot_share.astype(np.float32).tobytes()
    return zlib.crc32(data) & 0x7FFFFFFF


def timed_warm_up(policy: str) -> float:
    """Seconds to compile or load ``policy``'s kernels (in the process that plans)."""
    started = time.perf_counter()
    registry.warm_up([policy])
    return time.perf_counter() - started


class Balancer:
    """Background planning for one ``EplbRuntime``.

    Args:
        config: the runtime's config.
        topology: ranks, slots, nodes.
        num_layers: ``L``; num_experts: ``E``.
        rank: this rank's index in the group (rank 0 plans); each job brings its group.
        current_step: callable giving the serving thread's host step (to detect late plans).
        device: the runtime's device, made the thread's current one (``None``: the CPU).
        plans: whether jobs will come (the runtime's rebalancing on): without, rank 0 neither
            warms up nor starts a planning child.
    """

    def __init__(
        self,
        config: EplbConfig,
        topology: Topology,
        num_layers: int,
        num_experts: int,
        *,
        rank: int,
        current_step,
        device: Device | None = None,
        plans: bool = True,
    ) -> None:
        self.config = config
        self._plans = plans
        self._device = device
        self.topology = topology
        self._num_layers = num_layers
        self.num_experts = num_experts
        self.rank = rank
        self.current_step = current_step
        self._jobs: queue.Queue[Job | None] = queue.Queue()
        # The job the thread runs now, and since when (host seconds): read by the serving
        # thread to say which plan holds the balancer up.
        self.running: tuple[int, float] | None = None
        self._results: dict[int, PlanResult] = {}
        self._lock = threading.Lock()
        self._child: PlanningChild | None = None
        self._child_error: Exception | None = None  # why the last start of one failed
        self._child_lock = threading.Lock()
        self._owner = os.getpid()
        # The group of a job whose collectives raised (a peer timed out, a pair closed): gloo
        # keeps such a group unusable, so the runtime agrees on a new one (EplbRuntime._decide).
        self.failed_group: Any = None
        self.ready = threading.Event()  # set once the warm-up is done
        # Once the one-off costs are paid: the planning rank's warm-up (it plans once), or
        # without one its first plan; the other ranks pay none.
        self.warm = rank != 0
        self.busy_s = 0.0
        self._told_waiting = False  # the advice to plan in a child process is given once
        self._told_phases = False  # ... and that on receiver-side heat phases count nothing
        self._told_local = False  # ... and that ranks route their own tokens without the flag
        self._stopping = False
        self._thread = threading.Thread(target=self._loop, name="eplb-balancer", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ serving-thread side
    def submit(self, job: Job) -> None:
        self._jobs.put(job)

    @property
    def outstanding(self) -> int:
        """Jobs submitted that the thread has not finished (queued or running)."""
        return self._jobs.unfinished_tasks

    def result(self, epoch: int) -> PlanResult | None:
        """The result of ``epoch`` if the thread has finished it (never blocks)."""
        with self._lock:
            return self._results.get(epoch)

    def discard_through(self, epoch: int) -> None:
        """Forget the results of ``epoch`` and every earlier one (late plans included)."""
        with self._lock:
            for old in [e for e in self._results if e <= epoch]:
                del self._results[old]

    def shutdown(self, timeout: float = 30.0) -> None:
        """Stop the thread: a warm-up in this thread is waited for to its end, a plan in flight
        ``timeout`` seconds. A compile cannot be interrupted, and a process that exits while
        LLVM compiles in a daemon thread aborts (``terminate called without an active
        exception``): without the shipped kernel cache the warm-up compiles for tens of
        seconds. A planning child is killed at once, warming up or planning: what it would
        return is not used any more, and the interpreter's exit would wait for it. In a process
        forked from this one, nothing: the thread and the child are the parent's."""
        if os.getpid() != self._owner:
            return
        with self._child_lock:  # no child is started after this
            self._stopping = True  # what is still queued runs its collectives, unplanned
        self._jobs.put(None)
        if self.config.plan_in_subprocess:
            self._kill_child()
        else:
            self.ready.wait()
        self._thread.join(timeout)
        self._kill_child()  # one the thread made meanwhile

    def _kill_child(self) -> None:
        if self._child is not None:
            self._child.kill()

    # ------------------------------------------------------------------ thread side
    def _loop(self) -> None:
        if self._device is not None:  # before the first wait on a job's event
            self._device.make_current()
        # Only rank 0 plans, so only it needs the child process and the compiled kernels (and
        # with rebalancing off, no rank: a static placement plans nothing).
        planner = self.rank == 0 and self._plans
        if planner and self.config.plan_in_subprocess:
            self._start_child()
        # Without the child it asked for, a plan fails (and tries to start one again): the
        # thread warms up no policy for it, only the drift probe's check, which runs here.
        policy = self._child is not None or not self.config.plan_in_subprocess
        try:
            if planner and self.config.warm_up and not self._stopping:
                self._warm_up(policy)
        finally:  # a warm-up that ended the thread (SystemExit) must not leave shutdown waiting
            self.ready.set()
        while True:
            job = self._jobs.get()
            try:
                if job is None:
                    return
                started = time.perf_counter()
                self.running = (job.epoch, started)
                result = self._run(job)
                self.busy_s += time.perf_counter() - started
                with self._lock:
                    self._results[job.epoch] = result
                self.warm = True
            except BaseException as err:  # the thread serves every later job, whatever ended one
                # Only the collectives raise here (the plan's own errors are a failed result).
                log.exception("balancer job %d failed", job.epoch)
                failed = PlanResult(job.epoch, PLAN_FAILED, None, 0.0, 0, f"balancer: {err!r}")
                with self._lock:
                    self._results[job.epoch] = failed
                self.failed_group = job.group
            finally:
                self.running = None
                self._jobs.task_done()

    def _start_child(self) -> None:
        """A planning child, unless shutdown() has begun: then it would not be killed. A start
        that fails (no memory, no processes left) leaves none, its error in ``_child_error``:
        each plan until one starts fails with it, instead of the thread ending unseen."""
        with self._child_lock:
            if self._stopping:
                return
            try:
                self._child = PlanningChild()
            except Exception as err:
                self._child = None
                self._child_error = err
                log.warning("the planning process could not be started: %r", err)
            else:
                self._child_error = None

    def _warm_up(self, policy: bool = True) -> None:
        """The policy's kernels (``policy``) and the drift probe's check, loaded or compiled."""
        try:
            # Compile, then plan once on a flat load of the real shape: the first call also
            # pays imports and caches that the numba warm-up does not touch.
            flat = np.ones((1, self._num_layers, self.num_experts))
            start = Placement.initial(self._num_layers, self.num_experts, self.topology)
            args = (self.config.policy, flat, self.topology, start, self.config.policy_options)
            if policy and self._child is not None:
                seconds = self._child.call(timed_warm_up, self.config.policy)
                self._child.call(registry.plan, *args)
            elif policy:
                seconds = timed_warm_up(self.config.policy)
                registry.plan(*args)
            # A drift probe's check runs here, with a planning child too: its kernels loaded
            # now (a first probe took 0.4-0.7 s, late, and the deadline it pushed up left no
            # room for probes after it).
            planning.drifted(flat, start, 1, planning.CostModel())
        except BaseException:  # a policy's SystemExit must not end the thread
            if not self._stopping:  # else the child was killed by shutdown()
                log.exception("policy %s warm-up failed", self.config.policy)
        else:
            if policy:
                self._report_warm_up(seconds)
                self.warm = True

    def _report_warm_up(self, seconds: float) -> None:
        """A warm-up that took long compiled the kernels: the package's cache had no entry for
        this numba and Python (its CPU is covered by the build's portable entries). Say how to
        avoid it, once, at start."""
        if seconds < WARM_UP_COMPILED_S:
            log.info("policy %s warmed up in %.2f s", self.config.policy, seconds)
            return
        if kernel_cache.installed():
            why = (
                "built with another numba or Python, or its folder is not writable); run "
                "'eplb-rt policies --warm-up' once where the package is installed (e.g. in the "
                "serving image)"
            )
        else:
            why = (
                "which is off: EPLB_RT_KERNEL_CACHE=0, or numba's caching is not as eplb_rt "
                "expects, as a warning said at import); unset EPLB_RT_KERNEL_CACHE"
            )
        log.warning(
            "policy %s warmed up in %.1f s: its numba kernels were compiled, not loaded from "
            "the package's kernel cache (%s so that every process loads them",
            self.config.policy,
            seconds,
            why,
        )

    def _run(self, job: Job) -> PlanResult:
        job.event.synchronize()
        rows = torch.as_tensor(job.rows, dtype=torch.int64)
        heat = self._reduce(job.heat[rows], job.group, job.row_counts)
        if self.config.heat_source == "group_list" and job.row_counts is not None:
            everywhere, somewhere = self._counted_everywhere(job.row_counts, job.group)
            heat[~everywhere] = 0
            self._tell_phases(int((somewhere & ~everywhere).sum()), len(everywhere))
        # Steps without heat (idle, or not counted) stay, as in a load file given to `plan` or
        # `simulate`: a step saves by a placement what its load shows, and the gate prices the
        # mean step over the interval; the policies leave such steps out of their episodes.
        status, decision, plan_time, error = PLAN_FAILED, None, 0.0, ""
        if self.rank == 0:
            status, decision, plan_time, error = self._plan(job, heat)
        status, placement, plan_time, layers = self._broadcast(job, status, decision, plan_time)
        if status == PLAN_FAILED and self.rank != 0:
            error = "the planning rank reported a failed plan"
        digest = placement_digest(placement)
        result = PlanResult(
            job.epoch, status, placement, plan_time, digest, error, layers, decision
        )
        log.info(
            "plan %d: %s in %.3f s (%d layers)%s",
            job.epoch,
            STATUS_NAMES[status],
            plan_time,
            len(layers),
            f": {error}" if error else "",
        )
        return result

    def _sender_heat(self, heat: torch.Tensor, group, counts: np.ndarray | None) -> np.ndarray:
        """Global ``[T, L, P]`` sender-side heat: each rank counted every pair it routed.

        Where each rank routes its own tokens (``rank_local_tokens``) the ranks' counts add up.
        Where they route the same tokens (tensor-parallel attention, each computing its own
        slots' pairs) each rank holds the whole, and their sum held it ``num_ranks`` times
        (token counts whose sampling noise then looks that much smaller to the policies).
        Without the flag each step is judged on its own: one counting rank's row where the
        ranks that counted it (``counts``) hold the same counts, their sum where they differ,
        with a warning that the flag is off."""
        total = heat.clone()
        dist.all_reduce(total, group=group)
        if self.config.rank_local_tokens:
            return total.numpy()
        counting = torch.ones(heat.shape[0], dtype=torch.int32)
        if counts is not None:
            counting = torch.as_tensor(counts, dtype=torch.int32)
        dist.all_reduce(counting, group=group)
        dist.all_reduce(heat, op=dist.ReduceOp.MAX, group=group)  # a rank not counting has 0s
        same = (total == heat * counting[:, None, None]).flatten(1).all(dim=1)
        if not same.all() and not self._told_local and self.rank == 0:
            self._told_local = True
            log.warning(
                "the ranks routed different tokens in %d of %d steps, while "
                "EplbConfig.rank_local_tokens is False (every rank routes the same tokens, "
                "tensor-parallel attention): their heat is summed there; set "
                "rank_local_tokens=True where each rank routes its own tokens (data-parallel "
                "attention), so that they also spread their first tokens over an expert's "
                "replicas",
                int((~same).sum()),
                len(same),
            )
        return torch.where(same[:, None, None], heat, total).numpy()

    def _counted_everywhere(self, counts: np.ndarray, group) -> tuple[np.ndarray, np.ndarray]:
        """``([T] bool, [T] bool)``: the rows every rank counts, and those some rank counts
        (``counts``: this rank's flags), in one all-reduce."""
        low, high = min_max(np.asarray(counts, dtype=bool), group)
        return low.astype(bool), high.astype(bool)

    def _tell_phases(self, apart: int, steps: int) -> None:
        """Say once, on the planning rank, when most steps were counted by some ranks only: with
        receiver-side heat such steps count nothing (each rank's counts hold every rank's
        tokens), so ranks in different phases (data-parallel attention with ``count_steps``)
        leave the policy little or no heat."""
        if self._told_phases or self.rank != 0 or 2 * apart < max(steps, 1):
            return
        self._told_phases = True
        log.warning(
            "%d of %d steps of this plan's history were counted by some ranks only "
            "(EplbConfig.count_steps=%r and ranks in different phases, or step(record=False) "
            "on some ranks); with heat_source='group_list' such a step counts nothing, so the "
            "plans see little heat; with data-parallel attention use heat_source='topk' (each "
            "rank counts its own tokens) or count_steps='all'",
            apart,
            steps,
            self.config.count_steps,
        )

    def _reduce(self, heat: torch.Tensor, group, counts: np.ndarray | None) -> np.ndarray:
        """Global ``[T, L, P]`` heat from this rank's rows (``counts [T]``: whether this rank
        counts each; ``None``: every one)."""
        if group is None:
            return heat.numpy()
        if self.config.heat_source == "topk":
            return self._sender_heat(heat, group, counts)
        S = self.topology.num_slots_per_rank
        own = heat[:, :, self.rank * S : (self.rank + 1) * S].contiguous()
        parts = [torch.empty_like(own) for _ in range(self.topology.num_ranks)]
        dist.all_gather(parts, own, group=group)
        return torch.cat(parts, dim=2).numpy()

    def _plan(self, job: Job, heat: np.ndarray):
        """Rank 0: decide; ``(status, decision, seconds, error)``."""
        started = time.perf_counter()
        cpu_started = (time.thread_time(), time.process_time(), *registry.helpers_cpu())
        # A job at or past its deadline step (a policy slower than the interval lets them queue
        # up; at shutdown every queued one) is not planned: the serving thread has decided
        # without it.
        if self._stopping or self.current_step() >= job.deadline_step:
            return PLAN_LATE, None, 0.0, "not planned: its deadline had passed"
        try:
            if heat.shape[0] == 0 or not heat.any():
                return PLAN_UNCHANGED, None, 0.0, "no heat recorded"
            load = heat_to_load(heat, job.row_phy2log, self.num_experts)
            cost = job.cost
            if job.row_seconds is not None:
                # Time and tokens of the same steps (ratio of sums): steps of different sizes,
                # and steps not counted, do not skew it as a median time per mean step would.
                T, L, _ = heat.shape
                busiest = heat.reshape(T, L, self.topology.num_ranks, -1).sum(-1).max(-1).sum(-1)
                timed = (job.row_seconds != 0) & (busiest > 0)
                if timed.any():
                    # A step's time is the gap between step() calls: an idle pause before it
                    # (no requests for a while) would price every token as if computing then.
                    per_token = job.row_seconds[timed] / busiest[timed]
                    idle = per_token > IDLE_FACTOR * np.median(per_token)
                    timed[np.flatnonzero(timed)[idle]] = False
                    seconds = float(np.sum(job.row_seconds[timed]))
                    token_seconds = seconds / float(busiest[timed].sum(dtype=np.float64))
                    cost = dataclasses.replace(cost, token_seconds=token_seconds)
            if job.trigger == "drift" and not planning.drifted(
                load, job.previous, self.config.episode, cost
            ):
                return PLAN_UNCHANGED, None, time.perf_counter() - started, "no drift"
            args = (load, job.previous, self.topology, self.config.policy)
            args += (self.config.policy_options,)
            # A placement is expected to serve as long as the load a plan reads: the ring.
            lifetime = self.config.history - 1
            # Every plan is priced over one interval, a probe's between two gathers too: what it
            # commits serves on past the next gather unless moving it pays, as an interval's
            # plan does. (Priced over the steps left until that gather, the demo's first probes
            # committed later: mean PAR 0.902 of static against 0.871 at 100 steps, interval 10.)
            kwargs = {"cost": cost, "horizon": self.config.interval, "lifetime": lifetime}
            kwargs["threads"] = job.threads
            if self.config.plan_in_subprocess and self._child is None:
                self._start_child()  # its last start failed, or shutdown() has begun
                if self._child is None:
                    why = "shutdown" if self._stopping else repr(self._child_error)
                    error = f"no planning process ({why})"
                    return PLAN_FAILED, None, time.perf_counter() - started, error
            if self._child is None:
                decision = planning.decide(*args, **kwargs)
            else:
                decision = self._child.call(planning.decide, *args, **kwargs)
        except PlanningChildDied as err:
            # Killed for memory, a crash in a policy, or by shutdown(): a new one for the next
            # plan, which then loads the kernels again.
            if not self._stopping:
                log.warning(
                    "plan %d: the planning process died (%r); starting a new one", job.epoch, err
                )
                self._start_child()
            return PLAN_FAILED, None, time.perf_counter() - started, repr(err)
        except BaseException as err:  # a policy's SystemExit must not end the thread
            log.warning(
                "plan %d: policy %s raised %r; keeping the current placement",
                job.epoch,
                self.config.policy,
                err,
            )
            return PLAN_FAILED, None, time.perf_counter() - started, repr(err)
        seconds = time.perf_counter() - started
        if self._child is None:
            # Threads that planned beside this one (plan_threads): their CPU is the plan's, not
            # the other threads', and the busiest one's run past this thread's share is the
            # plan's own time, not a wait.
            helpers, beyond = (
                now - then
                for now, then in zip(registry.helpers_cpu(), cpu_started[2:], strict=True)
            )
            mine = time.thread_time() - cpu_started[0]
            others = time.process_time() - cpu_started[1] - mine - helpers
            self._advise_if_waiting(job.epoch, seconds, mine + beyond, others)
        if self.current_step() > job.deadline_step:
            return PLAN_LATE, None, seconds, "plan finished after its deadline"
        return (PLAN_OK if decision.layers else PLAN_UNCHANGED), decision, seconds, ""

    def _advise_if_waiting(self, epoch: int, seconds: float, own: float, others: float) -> None:
        """Once per balancer: say so when a plan in this thread mostly waited for the GIL."""
        if self._told_waiting or not waited_for_the_gil(seconds, own, others):
            return
        self._told_waiting = True
        log.warning(
            "plan %d took %.2f s for %.2f s of CPU while the process's "
            "other threads ran: it waited for the GIL (a serving thread that runs Python between "
            "its ops holds it); EplbConfig(plan_in_subprocess=True) plans in a child process",
            epoch,
            seconds,
            own,
        )

    def _broadcast(self, job: Job, status, decision, plan_time):
        """Send rank 0's plan to every rank (fixed-size tensors: header, phy2log, shares)."""
        ok = status == PLAN_OK
        if job.group is None:
            placement, layers = (decision.placement, decision.layers) if ok else (None, ())
            return status, placement, plan_time, layers
        L, P = job.previous.num_layers, job.previous.num_slots
        header = torch.zeros(4, dtype=torch.float64)
        p2l = torch.zeros((L, P), dtype=torch.int32)
        share = torch.zeros((L, P), dtype=torch.float64)
        mask = torch.zeros(L, dtype=torch.int32)
        if self.rank == 0:
            placement = decision.placement if ok else None
            uniform = placement is None or placement.is_uniform
            header[:] = torch.tensor([job.epoch, status, plan_time, float(uniform)])
            if placement is not None:
                p2l[:] = torch.tensor(placement.phy2log)
                share[:] = torch.tensor(placement.slot_share)
                mask[list(decision.layers)] = 1
        for tensor in (header, p2l, share, mask):
            dist.broadcast(tensor, group_src=0, group=job.group)
        status = int(header[1])
        if status != PLAN_OK:
            return status, None, float(header[2]), ()
        shares = None if header[3] else share.numpy()
        placement = Placement(p2l.numpy(), self.num_experts, self.topology.num_ranks, shares)
        return status, placement, float(header[2]), tuple(np.flatnonzero(mask.numpy()).tolist())


IDLE_FACTOR = 10.0
"""A step whose time per busiest-rank token exceeds the window's median this many times waited
(an idle pause between requests, a stall) rather than computed: its time is not a token's."""
