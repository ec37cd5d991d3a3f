"""``EplbRuntime``: the object a MoE model holds.

Per MoE layer the model calls :meth:`EplbRuntime.route` (logical top-k ids -> physical ids, heat
recorded in the same op) or :meth:`EplbRuntime.record` (receiver-side counts), reads
:meth:`log2phy` / :meth:`logcnt` / :meth:`replica_share` / :meth:`expert_map` (the same storage for
the life of the runtime, so captured graphs stay valid), and calls :meth:`step` once per forward
step. Everything else happens at step boundaries inside :meth:`step`:

* every ``interval`` steps the heat ring is snapshotted and handed to the balancer thread, and
  every ``episode`` steps in between as a drift probe (planned only when the last episode is
  less balanced than the history before it, see :func:`eplb_rt.planning.drifted`; until a plan
  has fitted the placement, once three episodes of heat are in, without that check);
* ``deadline`` steps later the ranks agree (one small all-reduce on a control group) that they
  all hold the same plan (epoch and checksum); otherwise the plan is skipped and logged (a plan
  not ready in time doubles an adapting deadline for the next ones, on every rank alike);
* an agreed plan is migrated ``layers_per_step`` layers per step: transfers start at one
  boundary and are committed at the next one, after a second agreement that every rank's
  transfer of that layer succeeded; a failed layer keeps its old placement on every rank.

Building the runtime creates three gloo/device groups over the expert-parallel ranks (balancer,
control, migration: :mod:`eplb_rt.runtime.groups`), which :meth:`EplbRuntime.shutdown` destroys
where those ranks are the whole world (over some of its ranks they are kept to the end of the
process); with ``torch.distributed`` not initialised it runs as a single rank.

Use in a MoE model (see ``eplb_rt.models.moe`` for a complete one)::

    runtime = EplbRuntime(EplbConfig(num_redundant=16), num_layers, num_experts, device=dev)
    for layer in range(num_layers):                     # each [S, ...], this rank's slots
        runtime.register_weights(layer, {"w13": w13[layer], "w2": w2[layer]})
    ...
    phy_ids = runtime.route(layer, topk_ids)            # in the MoE layer, before dispatch
    ...
    runtime.step()                                       # after every forward step
"""

from __future__ import annotations

import bisect
import collections
import contextlib
import dataclasses
import functools
import logging
import os
import threading
import time
import weakref

import numpy as np
import torch
import torch.distributed as dist

from eplb_rt import envs, formats, ops, planning
from eplb_rt.algorithms import hierarchy
from eplb_rt.config import EplbConfig
from eplb_rt.placement import Placement, Topology
from eplb_rt.runtime.agreement import min_max, setting_digest, settings_apart, shared_settings
from eplb_rt.runtime.balancer import (
    PLAN_LATE,
    PLAN_OK,
    PLAN_UNCHANGED,
    STATUS_NAMES,
    Balancer,
    Job,
    PlanResult,
    placement_digest,
)
from eplb_rt.runtime.device import Device, HostStaging
from eplb_rt.runtime.executor import MigrationExecutor, Transfer
from eplb_rt.runtime.groups import RuntimeGroups
from eplb_rt.runtime.migration import LayerMigration, plan_migration
from eplb_rt.runtime.recorder import HeatRecorder
from eplb_rt.scalars import check_count, is_bool, is_integer

log = logging.getLogger("eplb_rt.runtime")

MOST_JOBS = 2
"""Jobs a rank's balancer may hold (running or queued) before gathers wait for it: a plan late
for its deadline may still finish while the next one queues, but behind one that never ends
each gather's copy of the heat ring would pile up for ever."""

_BUILT = "placement set up"
"""What :meth:`EplbRuntime._check_same_config` agrees on beside the settings (not a setting's
name): whether this rank set up its placement."""

RECORDS_KEPT = 1024
"""Rebalances, skipped plans and errors that :meth:`EplbRuntime.stats` lists: the most recent
ones. A server runs for weeks at a plan per interval, and a record per plan kept for good would
grow its memory (and each ``stats()`` call) without bound; the totals count every one."""


class Recent(collections.deque):
    """The last :data:`RECORDS_KEPT` records appended, and ``total``: how many were, in all."""

    def __init__(self) -> None:
        super().__init__(maxlen=RECORDS_KEPT)
        self.total = 0

    def append(self, record) -> None:
        super().append(record)
        self.total += 1


@dataclasses.dataclass
class Rebalance:
    """What one agreed plan did (``stats()["rebalances"]``): ``layers_planned`` the layers it
    migrates, ``layers_committed`` those done, ``layers_failed`` those that keep their placement
    (a transfer failed, or the layer moves experts but has no registered weights). A plan that
    can migrate no layer is a skipped plan, not a rebalance. ``saved_s`` and ``migration_s``: the
    gate's prices summed over the layers its decision commits, as agreed (a layer that fails
    later still counts; known on the planning rank alone, 0 elsewhere)."""

    epoch: int
    gather_step: int
    plan_time_s: float
    layers_planned: int
    layers_committed: list[int] = dataclasses.field(default_factory=list)
    layers_failed: list[int] = dataclasses.field(default_factory=list)
    moved_experts: int = 0
    bytes_moved: int = 0
    done_step: int | None = None
    trigger: str = "interval"
    saved_s: float = 0.0
    migration_s: float = 0.0

    @property
    def steps(self) -> int | None:
        """Steps from the gather to the last commit."""
        return None if self.done_step is None else self.done_step - self.gather_step


def _normal_tensors(method):
    """``method`` run outside inference mode: the tensors it makes (the tables, the heat ring,
    staging buffers) are then ordinary ones, which the runtime's writes may update whether or
    not the engine serves under ``torch.inference_mode`` (an inference tensor refuses an
    in-place write outside it)."""

    @functools.wraps(method)
    def run(*args, **kwargs):
        with torch.inference_mode(False):
            return method(*args, **kwargs)

    return run


class EplbRuntime:
    """Expert-parallel load balancing for one MoE model on this rank.

    Args:
        config: the settings.
        num_layers: ``L`` balanced MoE layers.
        num_experts: ``E`` logical experts per layer.
        group: expert-parallel process group (``None``: the default group when
            ``torch.distributed`` is initialised, else a single process).
        device: the model's device (tables, heat and weights live there).
    """

    @_normal_tensors
    def __init__(
        self,
        config: EplbConfig,
        num_layers: int,
        num_experts: int,
        *,
        group=None,
        device: torch.device | str = "cpu",
    ) -> None:
        if not isinstance(config, EplbConfig):
            raise TypeError(f"config must be an EplbConfig, got {type(config).__name__}")
        num_layers = check_count("num_layers", num_layers)
        num_experts = check_count("num_experts", num_experts)
        # Held by step(), register_weights() and shutdown(): an engine may stop the runtime from
        # another thread (a watchdog) while its serving thread is in a step, whose commit must
        # not meet a migration that shutdown() has half taken down. A signal handler runs on
        # the serving thread itself, inside the step: its shutdown() is done when the step ends.
        self._lock = threading.RLock()
        self._serving_thread: int | None = None  # the thread in step() or register_weights()
        self._shutdown_asked = False
        self._building = True  # an agreement that fails names the constructor, not a step
        # Every variable read first: one unparsable on one rank fails before any collective.
        if envs.given("EPLB_RT_LOG_LEVEL"):  # else the application's level stands
            logging.getLogger("eplb_rt").setLevel(envs.get("EPLB_RT_LOG_LEVEL"))
        disabled = envs.get("EPLB_RT_DISABLE_REBALANCE")
        # The most threads adapting plans may take (EPLB_RT_PLAN_THREADS, or the cores).
        self._most_threads = planning.default_threads()
        self.config = config
        self.num_layers = num_layers
        self.num_experts = num_experts
        self.dev = Device(device)
        self.device = self.dev.device
        if self.dev.has_streams:
            # The kernels' first-use check synchronises once: here, not in a serving step (nor
            # in a graph capture).
            ops.check_device(self.device)
        distributed = dist.is_available() and dist.is_initialized()
        if group is not None and not distributed:
            raise ValueError("a process group was given but torch.distributed is not initialised")
        if distributed:
            ranks = dist.get_process_group_ranks(group or dist.group.WORLD)
            if dist.get_rank() not in ranks:
                raise ValueError(
                    f"this process (global rank {dist.get_rank()}) is not in the expert-parallel "
                    f"group given, of global ranks {ranks}: build the runtime on its members only"
                )
            self.rank = ranks.index(dist.get_rank())
        else:
            ranks, self.rank = [0], 0
        self.ranks = ranks
        self.num_ranks = len(ranks)
        # The control group now, before anything a rank may refuse alone (see groups.py).
        self._groups = RuntimeGroups(ranks, self.dev, group)
        self.balancer = None
        try:
            try:
                self._set_up_placement(num_experts)
            except Exception:
                self._check_same_config(built=False)
                raise
            self._check_same_config(built=True)  # before any thread: a mismatch fails every rank
            self._start(config, num_layers, num_experts, disabled)
            self._building = False
        except BaseException:
            # Whatever failed (a peer lost in a collective, no memory for the ring): the thread
            # and the groups go, so that an engine that builds the runtime again gets them back.
            if self.balancer is not None:
                self.balancer.shutdown()
            self._release_groups()
            raise

    def _start(self, config: EplbConfig, num_layers: int, num_experts: int, disabled: bool) -> None:
        """``__init__`` once the ranks agree on the settings: tables, heat ring, groups,
        executor, balancer thread."""
        self._allocate_tables(num_layers, num_experts)
        self.recorder = self._allocate_ring(config, num_layers)
        self._note_owned_storage()
        self._start_workers(config, num_layers, num_experts, disabled)
        self._initial_state(config, num_layers)
        if self._rebalance_enabled:
            self._warn_if_no_probes()

    def _allocate_tables(self, num_layers: int, num_experts: int) -> None:
        """The routing tables the model reads, their per-layer views, and the pinned staging
        a commit uploads through."""
        # Tables the model reads: allocated once, rewritten in place by update_expert_map_.
        p = self._placement
        self._tables = [torch.from_numpy(t).to(self.device) for t in self._table_rows(p)]
        self._log2phy, self._logcnt, self._replica_share, self._expert_map = self._tables
        # Per layer, the views route() passes (the tables are rewritten in place, never
        # reallocated): made once, since slicing a tensor costs more than the rest of a route.
        self._route_tables = [
            (self._log2phy[layer], self._logcnt[layer], self._replica_share[layer])
            for layer in range(num_layers)
        ]
        self._uniform = p.uniform_layers().tolist()
        # A commit uploads its local slots and the four new table rows in one pinned copy.
        E, R = num_experts, self.max_replicas
        S = self.topology.num_slots_per_rank
        self._staging = HostStaging(self.dev, [S, E * R, E, E * R, E])

    def _allocate_ring(self, config: EplbConfig, num_layers: int) -> HeatRecorder:
        """The heat ring; an allocation that fails says what the memory was for."""
        ring = config.history * num_layers * self.topology.num_slots * 4  # bytes, int32
        where = (
            f"{ring / 2**30:.3g} GiB on {self.device} and as much on the host"
            if self.dev.has_streams
            else f"twice {ring / 2**30:.3g} GiB of host memory"
        )
        what = (
            f"the heat ring of EplbConfig.history={config.history} steps x {num_layers} layers x "
            f"{self.topology.num_slots} slots (int32 counts and the placements they were routed "
            f"under: {where})"
        )
        if ring >= 2**63:
            raise ValueError(
                f"{what} is past any memory; expected a history of a few hundred steps"
            )
        try:
            return HeatRecorder(
                config.history,
                num_layers,
                self.topology.num_slots,
                self.dev,
                route_counts=config.heat_source == "topk",
                # Each rank's tokens count from 0: where each rank routes its own, shifted by
                # the rank's share of the rule's period, the ranks' first tokens spread over an
                # expert's replicas as one batch's would (else all picked the same replica).
                code_offset=(self.rank << 16) // self.num_ranks if config.rank_local_tokens else 0,
            )
        except (MemoryError, RuntimeError) as err:
            # The allocator names bytes, not the setting that asked for them: the same kind of
            # error, saying what the memory was for. Other errors pass as they are.
            if isinstance(err, torch.OutOfMemoryError):
                kind = torch.OutOfMemoryError
            elif isinstance(err, MemoryError):  # numpy's takes a shape, not a message
                kind = MemoryError
            elif "alloc" in str(err):
                kind = RuntimeError
            else:
                raise
            raise kind(f"{what} cannot be allocated: {err}") from err

    def _note_owned_storage(self) -> None:
        """Where the runtime's tables and ring live, for :meth:`_check_out`."""
        # What route(out=...) may not write (the op sees one layer's tables and heat rows only):
        # the byte spans of the runtime's own storages, sorted by start (they do not overlap).
        owned = [*self._tables, self.recorder.heat, self.recorder.step_counter]
        owned += [] if self.recorder._scratch is None else [self.recorder._scratch]
        spans = sorted(
            (t.untyped_storage().data_ptr(), t.untyped_storage().nbytes()) for t in owned
        )
        self._owned_starts = [start for start, _ in spans]
        self._owned_ends = [start + size for start, size in spans]

    def _start_workers(
        self, config: EplbConfig, num_layers: int, num_experts: int, disabled: bool
    ) -> None:
        """The migration and balancer groups, the executor and the balancer thread (its plans
        only where every rank rebalances)."""
        self._groups.start()
        self.executor = MigrationExecutor(
            self.dev,
            rank=self.rank,
            ranks=self.ranks,
            group=self._groups.migration,
            lanes=min(config.layers_per_step, num_layers),  # one layer a lane at most
            timeout_s=config.transfer_timeout_s,
        )
        enabled = config.interval > 0 and not disabled
        # Set on some ranks only, the variable would have them skip gathers the others make.
        self._rebalance_enabled = bool(self._agree({"enabled": int(enabled)})[0]["enabled"])
        self.balancer = Balancer(
            config,
            self.topology,
            num_layers,
            num_experts,
            rank=self.rank,
            current_step=functools.partial(getattr, self.recorder, "host_step"),
            device=self.dev,
            plans=self._rebalance_enabled,
        )
        # A runtime dropped without shutdown() still stops its balancer (and planning child):
        # nothing the balancer's thread holds refers back to the runtime.
        self._stop_balancer = weakref.finalize(self, self.balancer.shutdown)

    def _initial_state(self, config: EplbConfig, num_layers: int) -> None:
        """Gathers, plans, migrations, their records and the failure, before the first step."""
        self._epoch = 0
        self._pending: Job | None = None  # gathered, waiting for its deadline
        # Agreed at a deadline: some rank's balancer held MOST_JOBS jobs. Until the ranks agree
        # it holds fewer, no heat is gathered: each job holds a copy of the ring, and behind a
        # plan that never ends they would pile up for ever.
        self._backlog = False
        self._held_gathers = 0  # gathers skipped in a row while it holds
        self._queue: list[LayerMigration] = []  # agreed, not yet started
        self._target: Placement | None = None
        # _table_rows(_target) and its uniform layers, made once per plan
        self._target_rows: list[np.ndarray] = []
        self._target_uniform = np.ones(num_layers, dtype=bool)
        self._in_flight: list[Transfer] = []
        self._current: Rebalance | None = None
        self.rebalances = Recent()  # of Rebalance
        self.skipped = Recent()  # of {"epoch", "step", "reason"}
        self.errors = Recent()  # of str
        # Over the runtime's life (the records above keep only the recent ones).
        self._moved_experts = self._bytes_moved = 0
        self._first_commit_step: int | None = None
        self._closed = False
        # Why a step failed part-way on this rank (None while none did): from then on the runtime
        # refuses to serve (:meth:`_check_usable`).
        self._failure: str | None = None
        self._told_no_weights = False
        self._step_clock: list[float] = []  # host time of recent step() calls
        self._row_seconds = np.zeros(config.history)  # each ring row's step, in host seconds
        self._fitted = config.initial_placement is not None  # a plan has fitted the placement
        # The next interval gather: at the first idle step from there (a probe's migration
        # may still run at the interval step itself).
        self._next_interval = config.interval
        # Steps from a gather to its plan's deadline; where it adapts, every rank doubles it on
        # the same agreed outcome, so the ranks' deadline steps stay equal.
        self.deadline = config.first_deadline
        # Threads rank 0's plans run on: where they adapt (plan_threads None), one, doubled on
        # every rank after the same late plans as the deadline, up to the cores rank 0 may use.
        self.plan_threads = config.plan_threads or 1
        # Drift compares the latest episode with two or more before it, in the history - 1
        # closed steps a plan reads: a shorter ring can never show it, and probing it would
        # copy the ring every episode for nothing.
        self._drift_probes = config.history >= 3 * config.episode + 1

    def _warn_if_no_probes(self) -> None:
        """Say what to change where the ring is too short to show drift, or where no probe nor
        first plan can finish before an interval."""
        config = self.config
        if not self._drift_probes:
            log.warning(
                "EplbConfig.history (%d) < 3 * episode + 1 (%d): drift is never checked (it "
                "compares the latest episode with two or more before it, in the history - 1 "
                "closed steps a plan reads); after the first plan, plans start on the interval "
                "only",
                config.history,
                3 * config.episode + 1,
            )
        if self._probes_fit():
            return
        # Name what the user can change: the episode where it alone leaves no room, or
        # where the deadline adapts (it was not given); else the deadline given.
        if config.episode >= config.interval or config.deadline is None:
            cause = f"EplbConfig.episode ({config.episode}) with a deadline of {self.deadline}"
            fix = "lower the episode (episode + deadline must be below the interval)"
        else:
            cause = f"EplbConfig.deadline ({self.deadline})"
            fix = "lower the deadline (or None, adapting)"
        log.warning(
            "%s leaves no episode step (every %d) before the next interval (%d) for a plan "
            "to finish: no drift probe, and no first plan before the interval, ever starts; "
            "%s",
            cause,
            config.episode,
            config.interval,
            fix,
        )

    def _probes_fit(self) -> bool:
        """Whether a probe can start: an episode step whose plan's deadline falls before the
        next interval (the first interval's, as :meth:`step` tests it)."""
        return self.config.episode + self.deadline < self.config.interval

    def _warn_if_flat(self, num_experts: int) -> None:
        """Say so where groups are asked for (``num_groups > 1``) and every plan is flat."""
        groups = self.topology.num_groups
        why = hierarchy.why_flat(num_experts, self.topology)
        if why:
            log.warning(
                "EplbConfig.num_groups %d: hierarchical placement is not possible (%s); "
                "planning flat, as with num_groups 1",
                groups,
                why,
            )
        elif groups > 1 and not getattr(self.config.options, "hierarchical", False):
            log.warning(
                "EplbConfig.num_groups %d: policy %r plans flat (its option hierarchical is "
                "off); policy_options={'hierarchical': True} places whole groups on nodes",
                groups,
                self.config.policy,
            )

    def _initial_placement(self) -> Placement:
        path = self.config.initial_placement
        if path is None:
            return planning.starting_placement(self.num_layers, self.num_experts, self.topology)
        placement = formats.read_placement(
            path, num_ranks=self.num_ranks, num_experts=self.num_experts
        )
        want = (self.num_layers, self.num_experts, self.num_ranks, self.topology.num_slots_per_rank)
        got = (
            placement.num_layers,
            placement.num_experts,
            placement.num_ranks,
            placement.num_slots_per_rank,
        )
        if got != want:
            raise ValueError(
                f"initial placement {path!r} is {placement.describe()}, expected "
                f"{want[0]} layers x {want[1]} experts on {want[2]} ranks x "
                f"{want[3]} slots"
            )
        return placement

    def _set_up_placement(self, num_experts: int) -> None:
        """The topology, the placement to start from and its export: what a rank may refuse
        alone (raises ``ValueError`` naming the config's field)."""
        config = self.config
        S = config.num_slots_per_rank(num_experts, self.num_ranks)
        try:
            self.topology = Topology(self.num_ranks, S, config.num_nodes, config.num_groups)
        except ValueError as err:  # the nodes come from the config: say which field
            raise ValueError(
                f"EplbConfig.num_nodes={config.num_nodes} on {self.num_ranks} rank(s): {err}"
            ) from None
        try:
            self.topology.check_experts(num_experts)
        except ValueError as err:  # the slots come from the config: say which of its fields
            given = (
                f"slots_per_rank={config.slots_per_rank}"
                if config.slots_per_rank is not None
                else f"num_redundant={config.num_redundant}"
            )
            raise ValueError(f"EplbConfig.{given} on {self.num_ranks} rank(s): {err}") from None
        self._warn_if_flat(num_experts)
        self.max_replicas = min(self.num_ranks, self.topology.num_slots - num_experts + 1)
        self._placement = self._initial_placement()
        if config.export_dir is not None:  # before any thread: a failure leaves none
            formats.make_folder(config.export_dir, "EplbConfig.export_dir")
            if self.rank == 0:
                formats.write_placement(self._placement, self._export_path(0))

    def _release_groups(self) -> None:
        """Destroy the groups (:meth:`RuntimeGroups.release`); the executor has none from then."""
        self._groups.release()
        if getattr(self, "executor", None) is not None:
            self.executor.group = None

    def _renew_migration_group(self) -> None:
        """After an agreed failed transfer, on every rank at the same boundary: the executor's
        next transfers go in a new group (:meth:`RuntimeGroups.renew_migration`)."""
        self.executor.group = self._groups.renew_migration()

    def _table_rows(self, p: Placement) -> list[np.ndarray]:
        """``p``'s log2phy, logcnt, replica_share and this rank's expert_map (all layers)."""
        R = self.max_replicas
        return [p.log2phy(R), p.logcnt, p.replica_share(R), p.expert_map(self.rank)]

    # ------------------------------------------------------------------ what the model reads
    def _check_layer(self, layer: int) -> int:
        if not is_integer(layer):
            raise TypeError(f"layer must be an int, got {type(layer).__name__}")
        if not 0 <= layer < self.num_layers:
            raise ValueError(f"layer must be in [0, {self.num_layers}), got {layer}")
        return int(layer)

    def log2phy(self, layer: int) -> torch.Tensor:
        """``[E, R] int32`` slots of each expert (padded with -1)."""
        return self._log2phy[self._check_layer(layer)]

    def logcnt(self, layer: int) -> torch.Tensor:
        """``[E] int32`` replicas per expert."""
        return self._logcnt[self._check_layer(layer)]

    def replica_share(self, layer: int) -> torch.Tensor:
        """``[E, R] float32`` share of each replica."""
        return self._replica_share[self._check_layer(layer)]

    def expert_map(self, layer: int) -> torch.Tensor:
        """``[E] int32`` local slot of each expert on this rank, -1 where absent."""
        return self._expert_map[self._check_layer(layer)]

    @property
    def placement(self) -> Placement:
        """The committed placement (what the tables hold now)."""
        return self._placement

    @property
    def num_slots_per_rank(self) -> int:
        return self.topology.num_slots_per_rank

    @property
    def heat(self) -> torch.Tensor:
        """The ``[H, L, P]`` int32 heat ring."""
        return self.recorder.heat

    @property
    def step_counter(self) -> torch.Tensor:
        """The one-element int64 device step counter."""
        return self.recorder.step_counter

    # ------------------------------------------------------------------ hot path
    def route(
        self, layer: int, topk_ids: torch.Tensor, out: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Physical ids ``[N, K]`` for logical ``topk_ids [N, K]`` (int32/int64, -1 padding),
        counting each routed token into this step's heat when ``heat_source="topk"`` (with
        ``"group_list"`` the heat comes from :meth:`record` only)."""
        self._check_usable("route")
        layer = self._check_layer(layer)
        if not isinstance(topk_ids, torch.Tensor):
            raise TypeError(f"topk_ids must be a tensor, got {type(topk_ids).__name__}")
        if topk_ids.device != self.device:
            raise ValueError(f"topk_ids is on {topk_ids.device}, expected {self.device}")
        # A graph keeps the kernel path it captured: capture the weighted one, which also serves
        # uniform shares (1 / logcnt), so a commit that makes the shares non-uniform is seen. (It
        # sends a few of the 65,536 codes, at most one a replica boundary, to a neighbouring
        # replica of the same expert where the eager uniform path would not; see
        # csrc/common/replica_rule.h.)
        # Compiled code is such a graph (engines run it without its guards), and the test comes
        # first: the compiler must not trace, or guard on, the uniform flag or the stream query.
        compiling = torch.compiler.is_compiling()
        weighted = compiling or not self._uniform[layer] or self.dev.is_capturing()
        if out is not None and not compiling:
            self._check_out(out)
        log2phy, logcnt, share = self._route_tables[layer]
        return self.recorder.route(
            layer, topk_ids, log2phy, logcnt, replica_share=share if weighted else None, out=out
        )

    def _check_out(self, out: object) -> None:
        """``route(out=...)`` must be the caller's buffer, not memory this runtime owns (any
        layer's tables, the heat ring, the step counter): written there, the routes of another
        layer or the next plan's heat would change silently."""
        if not isinstance(out, torch.Tensor):
            raise TypeError(f"route(out=...) must be a tensor, got {type(out).__name__}")
        # Memory of another allocation cannot overlap the runtime's: an out that overlaps it is
        # a view of it, and starts inside one of its spans (sorted by start, apart).
        start = out.data_ptr()
        last = bisect.bisect_right(self._owned_starts, start) - 1
        if last >= 0 and start < self._owned_ends[last]:
            raise ValueError(
                "route(out=...) shares memory with this runtime's routing tables, heat ring or "
                "step counter; expected a buffer of the caller's"
            )

    def record(self, layer: int, group_list: torch.Tensor, cumulative: bool = False) -> None:
        """Count a dispatch kernel's per-local-slot tokens ``group_list [S]`` (receiver side;
        ``EplbConfig.heat_source="group_list"``)."""
        self._check_usable("record")
        layer = self._check_layer(layer)
        if self.config.heat_source != "group_list":
            # With "topk", route() counts every token already: a record would count it twice.
            raise ValueError(
                "record() counts for EplbConfig.heat_source='group_list'; this runtime has "
                f"heat_source={self.config.heat_source!r}, where route() counts the tokens"
            )
        if not is_bool(cumulative):
            raise TypeError(f"record(cumulative=...) must be a bool, got {cumulative!r}")
        if not isinstance(group_list, torch.Tensor):
            raise TypeError(f"group_list must be a tensor, got {type(group_list).__name__}")
        if group_list.device != self.device:
            raise ValueError(f"group_list is on {group_list.device}, expected {self.device}")
        S = self.topology.num_slots_per_rank
        if group_list.shape != (S,):
            raise ValueError(
                f"group_list must be [{S}] (one count per local slot), got "
                f"{tuple(group_list.shape)}"
            )
        self.recorder.record(layer, group_list, self.rank * S, bool(cumulative))

    @_normal_tensors
    def register_weights(self, layer: int, tensors: dict[str, torch.Tensor]) -> None:
        """Hand over ``layer``'s expert tensors (each ``[S, ...]``, this rank's slots) that
        migration rewrites in place."""
        with self._serving():
            self._check_usable("register_weights")
            layer = self._check_layer(layer)
            migrating = {m.layer for m in self._queue} | {
                t.migration.layer for t in self._in_flight
            }
            if layer in migrating:
                raise ValueError(
                    f"layer {layer} is being migrated (plan {self._current.epoch}); register its "
                    "weights again once runtime.busy is False"
                )
            self.executor.register(layer, tensors, self.topology.num_slots_per_rank)

    # ------------------------------------------------------------------ step boundary
    def step(self, is_prefill: bool | None = None, *, record: bool = True) -> None:
        """Close the forward step that just ran (call once per step, on every rank).

        ``is_prefill``: whether this rank's batch was a prefill (needed with ``count_steps``
        ``"prefill"`` / ``"decode"``; ranks may differ, as with data-parallel attention).
        ``record=False``: the step's routed tokens do not feed the policy (a profile or graph
        warm-up forward, a padding batch of an idle data-parallel rank); still call ``step``
        for it, on every rank, so that the ranks stay in step. With ``heat_source=
        "group_list"`` a rank counts the tokens it received, every rank's: a step feeds the
        policy only where every rank counts it.
        """
        with self._serving():  # shutdown() from another thread waits for the step to end
            self._step(is_prefill, record)

    @contextlib.contextmanager
    def _serving(self):
        """The lock, held for a step or a registration; a shutdown() asked meanwhile from this
        thread (a signal handler) runs once it is done."""
        with self._lock:
            self._serving_thread = threading.get_ident()
            try:
                yield
            finally:
                self._serving_thread = None
                if self._shutdown_asked:
                    self._shutdown()

    def _step(self, is_prefill: bool | None, record: bool) -> None:
        self._check_usable("step")
        for name, value in (("is_prefill", is_prefill), ("record", record)):
            if not (is_bool(value) or (name == "is_prefill" and value is None)):
                allowed = "a bool or None" if name == "is_prefill" else "a bool"
                raise TypeError(f"step({name}=...) must be {allowed}, got {value!r}")
        mode = self.config.count_steps
        if mode != "all" and is_prefill is None and record:
            raise ValueError(f"count_steps={mode!r} needs step(is_prefill=True/False)")
        phase = mode == "all" or (is_prefill if mode == "prefill" else not is_prefill)
        try:
            self._close_step(bool(record and phase))
        except BaseException as err:
            self._failure = (
                f"step {self.recorder.host_step} failed on rank {self.rank} "
                f"({type(err).__name__}: {err})"
            )
            raise

    def _check_usable(self, method: str) -> None:
        """Raise after :meth:`shutdown` (the ranks have stopped agreeing: a commit elsewhere
        would not reach this rank's tables), or once a step has failed part-way: the other ranks
        may have committed a layer this rank did not (a commit that raised after the ranks
        agreed, a collective past its timeout), so its tables may route tokens to slots that
        hold other experts."""
        if self._closed:
            raise RuntimeError(f"EplbRuntime.{method}() after shutdown()")
        if self._failure is not None:
            raise RuntimeError(
                f"EplbRuntime stopped serving: {self._failure}; its tables may differ from the "
                "other ranks', so it routes no more tokens. Build a new runtime on every rank"
            )

    def _close_step(self, counts: bool) -> None:
        """:meth:`step` once its arguments are checked: the first change of state is here, so
        an exception from here on leaves the runtime unusable."""
        # The closed step's host time, kept beside its ring row (what the gate's time per token
        # is measured from): from the previous step() call, unknown for the first.
        now = time.perf_counter()
        last = self._step_clock[-1] if self._step_clock else now
        self._row_seconds[self.recorder.host_step % self.config.history] = now - last
        self.recorder.advance(self._placement.phy2log, counts)
        step = self.recorder.host_step
        if self._in_flight:
            self._commit_in_flight(step)
        if self._pending is not None and step >= self._pending.deadline_step:
            self._decide(self._pending, step)
        if self._queue:
            self._start_next()
        elif self._current is not None and not self._in_flight:
            self._finish_rebalance(step)
        self._step_clock = [*self._step_clock[-32:], now]
        interval, episode = self.config.interval, self.config.episode
        if self._rebalance_enabled and self._pending is None and self._current is None:
            if step >= self._next_interval:
                self._next_interval = (step // interval + 1) * interval
                self._gather(step)
            # A probe's deadline falls before the next interval; its migration may run past it,
            # and that interval's gather then waits for the first idle step.
            elif step % episode == 0 and step + self.deadline < self._next_interval:
                if self._fitted:
                    if self._drift_probes:
                        self._gather(step, "drift")
                elif step >= 3 * episode:
                    self._gather(step, "first")

    def _gather(self, step: int, trigger: str = "interval") -> None:
        self._epoch += 1
        if self._backlog and self._still_busy(step):
            return
        host, event, row_p2l, rows, counts = self.recorder.snapshot()
        # One slot of the registered weights (1 byte without any: only the tables move).
        slot_bytes = max(self.executor.slot_bytes(layer) for layer in range(self.num_layers)) or 1
        config = self.config
        cost = planning.CostModel(slot_bytes, config.link_bandwidth, config.token_seconds)
        seconds = self._row_seconds[rows].copy()
        args = (host, event, rows, row_p2l, self._placement, cost, trigger, seconds)
        self._pending = Job(
            self._epoch, step, step + self.deadline, *args, warm=self.balancer.warm,
            row_counts=counts, group=self._groups.balancer, threads=self.plan_threads,
        )  # fmt: skip
        self.balancer.submit(self._pending)

    @property
    def _balancer_full(self) -> bool:
        """Whether this rank's balancer holds :data:`MOST_JOBS` jobs (running or queued)."""
        return self.balancer.outstanding >= MOST_JOBS

    def _still_busy(self, step: int) -> bool:
        """Whether some rank's balancer still holds :data:`MOST_JOBS` jobs (one small
        all-reduce, only after a deadline found it so): then this gather is skipped, an error
        once every balancer had warmed up, or from the second gather so held on (a first plan
        that never ends, warm-up or not, is news)."""
        running = self.balancer.running
        full = self._balancer_full
        low, high = self._agree({"full": int(full), "warm": int(self.balancer.warm)})
        if not high["full"]:
            self._backlog = False
            self._held_gathers = 0
            return False
        self._held_gathers += 1
        where = "on another rank"
        if running is not None:
            where = f"plan {running[0]} for {time.perf_counter() - running[1]:.0f} s on this rank"
        elif full:
            where = "this rank's jobs not yet started"
        reason = (
            f"not gathered: the balancer is still planning ({where}); no heat is gathered until "
            "it is done"
        )
        self._skip(self._epoch, step, reason, error=bool(low["warm"]) or self._held_gathers > 1)
        return True

    def _step_seconds(self) -> float:
        """Median host time between recent ``step()`` calls (0 before two steps)."""
        gaps = np.diff(self._step_clock)
        return float(np.median(gaps)) if gaps.size else 0.0

    def _check_same_config(self, built: bool) -> None:
        """Raise on every rank where the ranks were given different settings: the ring sizes,
        gathers, deadlines and commits they make together follow them, and ranks that differ
        would wait for each other for ever, or fail deep in a collective; or where some rank
        could not set up its placement (``built``: this one could; one that could not raises
        its own error after this). (One small all-reduce, at start.)"""
        digest = placement_digest(self._placement) if built else 0
        shared = shared_settings(self.config, self.num_layers, self.num_experts, digest)
        digests = {name: setting_digest(value) for name, value in shared.items()}
        low, high = self._agree({**digests, _BUILT: int(built)})
        everywhere = bool(low.pop(_BUILT))
        high.pop(_BUILT)
        differ = settings_apart(low, high, everywhere)
        if differ:
            raise ValueError(
                f"the ranks were given different {', '.join(differ)}: every rank of the runtime "
                "must be built with the same EplbConfig, num_layers and num_experts"
            )
        if built and not everywhere:
            raise ValueError(
                "another rank of the runtime refused its settings (its error names the field): "
                "EplbConfig.num_nodes, slots or initial_placement"
            )

    def _weights_apart(self) -> str:
        """Where the ranks' registered weights differ (every rank calls it at once, having
        agreed that they do): the first layer, and what rank 0 and the first rank unlike it
        registered."""
        mine = [self.executor.describe(layer) for layer in range(self.num_layers)]
        every: list = [None] * self.num_ranks
        dist.all_gather_object(every, mine, group=self._groups.control)
        for layer in range(self.num_layers):
            other = next((r for r, d in enumerate(every) if d[layer] != every[0][layer]), None)
            if other is not None:
                return (
                    f"layer {layer}: rank 0 {every[0][layer]}; rank {other} {every[other][layer]}"
                )
        return "their signatures differ"

    def _agree(self, values: dict) -> tuple[dict, dict]:
        """Per name, the least and the greatest of ``values`` (integers by name) over the ranks,
        in one small all-reduce (every rank names the same values in the same order). The
        ranks meet here by call order: one that stopped, or that steps more or fewer times
        than the others, leaves them waiting for the engine's timeout, whose error is said in
        those terms."""
        try:
            low, high = min_max(list(values.values()), self._groups.control)
        except RuntimeError as err:  # torch.distributed's errors (a timeout, a closed pair)
            first = str(err).strip().splitlines()[0] if str(err).strip() else ""
            if self._building:
                where = "while the runtime was built: a rank stopped, failed or was not built"
            else:
                where = (
                    f"at step {self.recorder.host_step}: a rank stopped or failed, or calls "
                    "step() more or fewer times than the others (every rank calls it once per "
                    "forward)"
                )
            raise RuntimeError(
                f"the ranks did not all reach the runtime's agreement (rank {self.rank} {where}). "
                f"{type(err).__name__}: {first}"
            ) from err
        low, high = (dict(zip(values, bound.tolist(), strict=True)) for bound in (low, high))
        return low, high

    def _decide(self, job: Job, step: int) -> None:
        """At the deadline: go ahead only if every rank holds the same finished plan."""
        self._pending = None
        result: PlanResult | None = self.balancer.result(job.epoch)
        self.balancer.discard_through(job.epoch)
        plan = ("epoch", "status", "digest")  # the plan each rank holds: the same, or none
        mine = {name: getattr(result, name) if result else -1 for name in plan}
        # Whether the plan found the placement fitting: only the planning rank knows why a plan
        # came back unchanged (no heat, no drift), so the ranks take the least of their views.
        fits = int(result is not None and result.status == PLAN_UNCHANGED and not result.error)
        broken = int(
            self._groups.balancer is not None
            and self.balancer.failed_group is self._groups.balancer
        )
        busy = int(self._balancer_full)
        low, high = self._agree(
            {**mine, "signature": self.executor.signature, "fits": fits, "warm": int(job.warm),
             "broken": broken, "busy": busy}
        )  # fmt: skip
        self._backlog = bool(high["busy"])
        if high["broken"]:  # some rank's balancer collectives failed: the group is closed there
            self._groups.renew_balancer()
        warm = bool(low["warm"])  # every rank's balancer had warmed up by the gather
        fitting = bool(low["fits"])
        reason = None
        error = True  # a skip that needs a look (not a plan late while a balancer warmed up)
        if low["signature"] != high["signature"]:
            reason = (
                f"ranks registered different weights ({self._weights_apart()}); a migration "
                "would exchange mismatched buffers"
            )
        elif low["epoch"] == -1:
            reason = (
                f"plan not ready by its deadline step {job.deadline_step} on at least one rank"
                f"{self._extend_deadline(warm)}"
            )
            error = warm
        elif any(low[name] != high[name] for name in plan):
            reason = (
                f"ranks disagree on the plan (epoch {low['epoch']}..{high['epoch']}, "
                f"status {low['status']}..{high['status']}, checksum differs: "
                f"{low['digest'] != high['digest']})"
            )
        elif low["epoch"] != job.epoch:
            reason = f"plan epoch {low['epoch']} does not match the gather's epoch {job.epoch}"
        elif result.status != PLAN_OK:
            # Nothing worth moving: the placement fits the load (probes then check for drift).
            self._fitted = self._fitted or fitting
            # A probe that found nothing worth moving is routine: not even logged as skipped.
            if job.trigger == "interval" or result.status != PLAN_UNCHANGED:
                detail = f": {result.error}" if result.error else ""
                if result.status == PLAN_LATE:  # finished, but after its deadline had passed
                    detail += self._extend_deadline(warm)
                # late while a balancer warmed up: a one-off wait, not an error
                failed = result.status != PLAN_UNCHANGED and (warm or result.status != PLAN_LATE)
                self._skip(job.epoch, step, f"plan {STATUS_NAMES[result.status]}{detail}", failed)
            return
        if reason is not None:
            self._skip(job.epoch, step, reason, error)
            return
        target = result.placement  # already aligned to the placement in force by the pipeline
        self._queue = plan_migration(self._placement, target, self.config.num_nodes)
        # Layers whose shares changed but whose slots did not still need their tables rewritten.
        moved = {m.layer for m in self._queue}
        for layer in target.changed_layers(self._placement):
            if int(layer) not in moved:
                self._queue.append(
                    LayerMigration(
                        int(layer), *(np.zeros(0, np.int64),) * 3, self.topology.num_slots_per_rank
                    )
                )
        self._queue.sort(key=lambda m: m.layer)
        registered = self.executor.weights
        bare = []
        if registered:  # the same layers on every rank (the signature agreed)
            bare = [m.layer for m in self._queue if m.num_moves and m.layer not in registered]
            self._queue = [m for m in self._queue if m.layer not in bare]
        elif not self._told_no_weights and any(m.num_moves for m in self._queue):
            # Tables alone are a valid use (weights moved by other means), rarely the intent.
            self._told_no_weights = True
            log.warning(
                "plan %d moves experts but no layer has registered weights: only the routing "
                "tables change, so each moved slot serves the old expert's weights under the "
                "new expert's id; call register_weights(layer, ...) for every MoE layer",
                job.epoch,
            )
        if bare:
            reason = (
                f"layers {bare} move experts but have no registered weights while other "
                "layers do; they keep their placement"
            )
            if not self._queue:  # nothing left to migrate: a skipped plan, not a rebalance
                self._skip(job.epoch, step, reason, error=True)
                return
            self.errors.append(f"plan {job.epoch}: {reason}")
            log.warning("plan %d: %s", job.epoch, reason)
        self._set_target(target)
        self._current = Rebalance(job.epoch, job.gather_step, result.plan_time_s, len(self._queue))
        self._current.trigger = job.trigger
        self._current.layers_failed.extend(bare)
        if result.decision is not None:  # the planning rank knows what the plan is worth
            committed = list(result.decision.layers)
            self._current.saved_s = float(result.decision.saved_s[committed].sum())
            self._current.migration_s = float(result.decision.migration_s[committed].sum())
        log.info(
            "plan %d agreed at step %d: %d layers to migrate", job.epoch, step, len(self._queue)
        )

    def _extend_deadline(self, warm: bool) -> str:
        """After a plan not ready in time: double an adapting deadline (up to ``interval -
        1``) and the threads of adapting plans (:meth:`_more_threads`), unless the plan was
        gathered while a balancer still warmed up (``warm`` False: a one-off wait); what the
        skip's reason adds."""
        if self.config.deadline is not None:
            more = self._more_threads() if warm else ""
            adapt = "EplbConfig.deadline=None adapts it to the plans"
            return f" ({self.deadline} steps; {adapt}){more}"
        if not warm:
            return f" (gathered while the policy warmed up; the deadline stays {self.deadline})"
        return self._longer_deadline() + self._more_threads()

    def _longer_deadline(self) -> str:
        interval = self.config.interval
        if self.deadline >= interval - 1:
            return (
                f" ({self.deadline} steps, the most below interval {interval}: plans this slow "
                "need a longer EplbConfig.interval)"
            )
        fitted = self._probes_fit()
        self.deadline = min(2 * self.deadline, interval - 1)
        if fitted and not self._probes_fit():
            return (
                f"; the next plans get {self.deadline} steps, too many for a drift probe to "
                f"finish before the next interval: plans start on the interval only"
            )
        return f"; the next plans get {self.deadline} steps"

    def _more_threads(self) -> str:
        """Where the threads adapt (``plan_threads`` None): twice as many for the next plans,
        up to :func:`eplb_rt.planning.default_threads`, read when the runtime was built (rank
        0's is the one that counts). Until a plan is late, plans run on one thread and take no
        core and no GIL hand-off from the serving thread beyond one thread's."""
        most = self._most_threads
        if self.config.plan_threads is not None or self.plan_threads >= most:
            return ""
        self.plan_threads = min(2 * self.plan_threads, most)
        return f"; they run on {self.plan_threads} threads"

    def _skip(self, epoch: int, step: int, reason: str, error: bool = False) -> None:
        self.skipped.append({"epoch": epoch, "step": step, "reason": reason})
        if error:
            self.errors.append(f"plan {epoch}: {reason}")
            log.warning("plan %d skipped at step %d: %s", epoch, step, reason)
        else:
            log.info("plan %d skipped at step %d: %s", epoch, step, reason)

    def _start_next(self) -> None:
        previous = None
        for lane in range(min(self.config.layers_per_step, len(self._queue))):
            migration = self._queue.pop(0)
            transfer = self.executor.start(migration, lane, previous)
            previous = transfer.event
            self._in_flight.append(transfer)

    def _commit_in_flight(self, step: int) -> None:
        transfers, self._in_flight = self._in_flight, []
        errors = {t.migration.layer: self.executor.finish(t) for t in transfers}
        # A layer is committed only where its transfer succeeded on every rank.
        done, _ = self._agree({layer: int(e is None) for layer, e in errors.items()})
        rebalance = self._current
        for transfer in transfers:
            layer = transfer.migration.layer
            if not done[layer]:
                reason = errors[layer] or "a transfer failed on another rank"
                self.errors.append(
                    f"plan {rebalance.epoch}: {reason}; layer {layer} keeps its old placement"
                )
                log.warning("plan %d: layer %d not committed: %s", rebalance.epoch, layer, reason)
                rebalance.layers_failed.append(layer)
                continue
            self._commit_layer(transfer)
            rebalance.layers_committed.append(layer)
            rebalance.moved_experts += transfer.migration.num_moves
            rebalance.bytes_moved += transfer.migration.num_remote * self.executor.slot_bytes(layer)
        if not all(done.values()) and self._groups.migration is not None:
            self._renew_migration_group()

    def _set_target(self, target: Placement) -> None:
        """The placement the queued migrations lead to; its tables are computed here, once,
        so that a commit only copies its layer's rows."""
        self._target = target
        self._target_rows = self._table_rows(target)
        self._target_uniform = target.uniform_layers()

    def _commit_layer(self, transfer: Transfer) -> None:
        """Weights first, then the tables: the same layer at the same step on every rank.

        Under inference mode: the weights are the served model's, rewritten outside autograd,
        whether the engine made them in inference mode or as parameters that require grad."""
        layer = transfer.migration.layer
        rows = [t[layer] for t in self._target_rows]
        upload = self._staging.upload([transfer.slots, *rows])
        with torch.inference_mode(), upload as (slots, *up):
            self.executor.commit(transfer, slots)
            old = [t[layer] for t in self._tables]
            ops.update_expert_map_(
                *old[:2],
                *up[:2],
                num_slots=self.topology.num_slots,
                replica_share=old[2],
                new_replica_share=up[2],
                expert_map=old[3],
                new_expert_map=up[3],
            )
        self._placement = self._placement.replace_layers([layer], self._target)
        self._uniform[layer] = bool(self._target_uniform[layer])

    def _finish_rebalance(self, step: int) -> None:
        rebalance, self._current, self._target = self._current, None, None
        self._target_rows = []
        rebalance.done_step = step
        self.rebalances.append(rebalance)
        self._moved_experts += rebalance.moved_experts
        self._bytes_moved += rebalance.bytes_moved
        if rebalance.layers_committed and self._first_commit_step is None:
            self._first_commit_step = step
        self._fitted = self._fitted or bool(rebalance.layers_committed)
        if self.config.export_dir is not None and rebalance.layers_committed:
            self._export(self._placement, rebalance.epoch)
        log.info(
            "plan %d done at step %d: %d layers committed, %d failed, %d experts moved",
            rebalance.epoch,
            step,
            len(rebalance.layers_committed),
            len(rebalance.layers_failed),
            rebalance.moved_experts,
        )

    def _export_path(self, epoch: int) -> str:
        return os.path.join(self.config.export_dir, f"placement_{epoch:05d}.json")

    def _export(self, placement: Placement, epoch: int) -> None:
        """Rank 0 writes the committed placement; a failure (disk full, directory gone) is
        logged and counted, never raised: only rank 0 writes, and an exception on one rank
        would leave the ranks' collectives out of step."""
        if self.rank != 0:
            return
        try:
            formats.write_placement(placement, self._export_path(epoch))
        except OSError as err:
            self.errors.append(f"plan {epoch}: exporting the placement failed: {err!r}")
            log.warning("plan %d: exporting the placement failed: %r", epoch, err)

    # ------------------------------------------------------------------ reporting, shutdown
    @property
    def busy(self) -> bool:
        """True while a plan is pending or a migration is under way."""
        return self._pending is not None or self._current is not None

    def memory(self) -> dict[str, int]:
        """Bytes this runtime holds on its device, by use, for an engine that sizes its KV cache
        from the memory left: ``heat`` (the ring ``[history, L, P]`` int32 and its step counter; a
        second ring with ``heat_source="group_list"``), ``tables`` (log2phy and replica_share
        ``[L, E, R]``, logcnt and expert_map ``[L, E]``), ``uploads`` (a commit's table rows),
        ``staging`` (the migration's receive buffers: ``layers_per_step`` lanes of ``S`` slots of
        the registered weights, allocated by :meth:`register_weights`) and ``total``. On the CPU
        the device is the host."""
        out = {
            "heat": self.recorder.device_bytes,
            "tables": sum(t.nbytes for t in self._tables),
            "uploads": self._staging.device_bytes,
            "staging": self.executor.staging_bytes,
        }
        out["total"] = sum(out.values())
        return out

    def stats(self) -> dict:
        """Counters for reports: steps; the recent rebalances (finished, and the one under way),
        skipped plans and errors (the last :data:`RECORDS_KEPT` of each) and their totals
        (``num_rebalances``, ``num_skipped``, ``num_errors``); the moves committed so far; the
        step at which the first plan committed a layer (``None`` before); the deadline in steps
        the next plan gets and the threads it runs on (``plan_threads``); ``transfers``: the
        slots this rank received from another rank, copied from its own and sent, and the bytes
        it sent, over the transfers that finished here (a layer without registered weights
        moves none); ``failure``: why a step failed part-way on this rank (the runtime then
        serves no more), ``None`` while none did."""
        current = self._current
        # A copy first: the serving thread may append while another thread reads the stats.
        rebalances = list(self.rebalances)
        return {
            "steps": self.recorder.host_step,
            "epochs": self._epoch,
            "rebalances": [dict(dataclasses.asdict(r), steps=r.steps) for r in rebalances],
            "in_progress": None if current is None else dataclasses.asdict(current),
            "skipped": list(self.skipped),
            "errors": list(self.errors),
            "num_rebalances": self.rebalances.total,
            "num_skipped": self.skipped.total,
            "num_errors": self.errors.total,
            "first_commit_step": self._first_commit_step,
            "deadline": self.deadline,
            "plan_threads": self.plan_threads,
            "moved_experts": self._moved_experts + (current.moved_experts if current else 0),
            "bytes_moved": self._bytes_moved + (current.bytes_moved if current else 0),
            "plan_time_s": [r.plan_time_s for r in rebalances],
            "balancer_busy_s": self.balancer.busy_s,
            "step_s": self._step_seconds(),
            "transfers": dict(self.executor.counters),
            "failure": self._failure,
        }

    def shutdown(self) -> None:
        """Stop the balancer thread and wait for transfers in flight; idempotent, and safe from
        another thread than the serving one (it waits for a step under way to end). A migration
        under way ends there: its layers not yet committed (in flight or queued) are listed as
        failed, keeping their old placement, and :attr:`busy` is False.

        From a signal handler (on the serving thread, inside a step) it returns at once and the
        runtime shuts down when that step ends. From another thread it waits for the step under
        way: one stuck in a collective (a peer gone) ends at the engine's timeout (its
        ``init_process_group(timeout=...)``)."""
        if self._serving_thread == threading.get_ident():
            self._shutdown_asked = True
            return
        with self._lock:
            self._shutdown()

    def _shutdown(self) -> None:
        if self._closed:
            return
        self._closed = True
        for transfer in self._in_flight:
            self.executor.finish(transfer)
        cancelled = [t.migration.layer for t in self._in_flight] + [m.layer for m in self._queue]
        self._in_flight, self._queue, self._pending = [], [], None
        if self._current is not None:
            epoch = self._current.epoch
            if cancelled:
                self._current.layers_failed.extend(cancelled)
                self.errors.append(
                    f"plan {epoch}: shutdown() before layers {cancelled} were committed; they "
                    "keep their old placement"
                )
            self._finish_rebalance(self.recorder.host_step)
        self._stop_balancer()
        if self.dev.has_streams:  # transfers still queued on the stream, before their group goes
            self.executor.stream.synchronize()
        self._release_groups()

    def __enter__(self) -> EplbRuntime:
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown()
