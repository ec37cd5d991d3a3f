"""Replay a load series and compare balancing policies over time, out of sample.

The replay: a workload is a ``[T, L, E]`` load series (steps in order, each step labelled with the
workload it came from). Every ``interval`` steps each policy re-plans from the last
``episodes * interval`` steps, starting from its own previous placement, through the planning
pipeline the runtime uses (:func:`eplb_rt.planning.decide`: the same gate, in seconds, and a
placement expected to serve as many steps as the window, even where fewer exist yet, or as long
as the load holds where the steps read show it holding), and the
new placement is scored on the *next* ``interval`` steps, which the policy has not seen. By
default a plan sees what a runtime's plan reads from its heat ring: the last
``EplbConfig().history - 1`` steps (its closed rows), every step before where fewer. Every
policy starts from :func:`eplb_rt.planning.starting_placement`; the pseudo-policy
:data:`NO_REBALANCE` keeps that placement throughout, the reference without EPLB.

Each scored window gives, per layer, PAR (max rank load / mean rank load of the window's summed
load, exactly what ``eplb-rt score`` reports for the same placement and window), a lower bound on
PAR that no placement can beat on that window, the slots that changed against the previous
placement (moves), the policy's wall time, the migration seconds the gate priced, and the MoE
seconds of the window under the cost model (step time proportional to the largest rank load):
against the no-EPLB placement they give the throughput relative to serving without EPLB.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Hashable, Iterator, Sequence

import numpy as np

from eplb_rt import algorithms, planning
from eplb_rt.algorithms import metrics
from eplb_rt.algorithms.bounds import par_lower_bound
from eplb_rt.algorithms.load import check_load
from eplb_rt.config import EplbConfig
from eplb_rt.placement import Placement, Topology
from eplb_rt.scalars import check_count

NO_REBALANCE = "none"
"""Pseudo-policy name: the initial placement, never re-planned (serving without EPLB)."""


@dataclasses.dataclass(frozen=True)
class Workload:
    """A load series to replay.

    Attributes:
        load: ``[T, L, E] float64`` tokens per expert per step.
        labels: ``T`` strings, the workload each step belongs to (a file name when several
            aggregate workloads are played one after another).
    """

    load: np.ndarray
    labels: tuple[str, ...]

    def __post_init__(self) -> None:
        # Checked and summed in float64: a float16 window's sum would overflow, round or hold
        # NaN unseen.
        object.__setattr__(self, "load", check_load(self.load))
        if isinstance(self.labels, str):
            raise TypeError(f"labels must be a sequence of strings, got one: {self.labels!r}")
        object.__setattr__(self, "labels", tuple(self.labels))
        if len(self.labels) != self.load.shape[0]:
            raise ValueError(f"{len(self.labels)} labels for {self.load.shape[0]} steps")

    @classmethod
    def concat(cls, parts: Sequence[tuple[str, np.ndarray]]) -> Workload:
        """Play ``(label, load [T_i, L, E] or [L, E])`` parts one after another."""
        if not parts:
            raise ValueError("no workload to replay")
        loads = [check_load(load, name=label) for label, load in parts]
        first_label, first = parts[0][0], loads[0]
        for (label, _), load in zip(parts[1:], loads[1:], strict=True):
            if load.shape[1:] != first.shape[1:]:
                raise ValueError(
                    f"{label} has {load.shape[1]} layers x {load.shape[2]} experts but "
                    f"{first_label} has {first.shape[1]} x {first.shape[2]}; workloads played in "
                    "sequence must come from one model"
                )
        labels = tuple(
            label
            for (label, _), load in zip(parts, loads, strict=True)
            for _ in range(load.shape[0])
        )
        return cls(np.concatenate(loads), labels)

    @property
    def num_steps(self) -> int:
        return self.load.shape[0]

    def window_label(self, start: int, stop: int) -> str:
        """The workloads that steps ``[start, stop)`` belong to, joined by ``+``."""
        names = dict.fromkeys(self.labels[start:stop])
        return "+".join(names)


@dataclasses.dataclass(frozen=True)
class SimulationSpec:
    """How to replay.

    Attributes:
        topology: ranks and slots per rank.
        policies: registered policy names (or :data:`NO_REBALANCE`), compared side by side.
        interval: steps between re-plans, and the length of each scored window.
        episodes: the policy sees the last ``episodes * interval`` steps (per step, so policies
            with per-episode statistics can cut them into episodes); ``None`` (the default):
            the last ``EplbConfig().history - 1`` steps, the closed rows of the runtime's heat
            ring, so a plan sees what the runtime's would.
        cost: expert bytes, link bandwidth and time per token-slot (the gate's prices).
        options: per policy name, option overrides passed to the policy.
        threads: threads each plan splits the layers over (the same decisions for any number;
            only the plan times change).
    """

    topology: Topology
    policies: tuple[str, ...]
    interval: int = 1
    episodes: int | None = None
    cost: planning.CostModel = dataclasses.field(default_factory=planning.CostModel)
    options: dict = dataclasses.field(default_factory=dict)
    threads: int = 1

    def __post_init__(self) -> None:
        if not isinstance(self.topology, Topology):
            raise TypeError(f"topology must be a Topology, got {type(self.topology).__name__}")
        if isinstance(self.policies, str):
            raise TypeError(f"policies must be a sequence of names, got one: {self.policies!r}")
        object.__setattr__(self, "policies", tuple(self.policies))
        if not self.policies:
            raise ValueError("give at least one policy")
        twice = sorted({name for name in self.policies if self.policies.count(name) > 1})
        if twice:
            raise ValueError(f"policy listed twice: {', '.join(twice)}")
        for name in self.policies:
            if name != NO_REBALANCE:
                algorithms.get_policy(name)  # raises with the known names
        object.__setattr__(self, "threads", check_count("threads", self.threads))
        for field in ("interval", "episodes"):
            # episodes None: the runtime's window (see window)
            optional = field == "episodes"
            value = check_count(field, getattr(self, field), optional=optional)
            object.__setattr__(self, field, value)
        unknown = sorted(set(self.options) - set(self.policies))
        if unknown:
            raise ValueError(f"options given for policies not compared: {unknown}")
        for name, overrides in self.options.items():
            if name == NO_REBALANCE:
                raise ValueError(f"{NO_REBALANCE!r} is not a policy and takes no options")
            algorithms.get_policy(name).make_options(overrides)  # unknown keys raise here

    @property
    def window(self) -> int:
        """Steps of history each plan sees: ``episodes * interval``, or without ``episodes``
        the ``history - 1`` closed rows a runtime's plan reads from its heat ring."""
        if self.episodes is None:
            return EplbConfig().history - 1
        return self.episodes * self.interval

    def cycle_starts(self, num_steps: int) -> list[int]:
        """First step of every scored window: ``interval, 2 * interval, ...`` below ``T``."""
        starts = list(range(self.interval, num_steps, self.interval))
        if not starts:
            raise ValueError(
                f"{num_steps} step(s) leave nothing to score out of sample with interval "
                f"{self.interval}: need at least interval + 1 steps (play several aggregate "
                "workloads one after another"
                + (", or lower --interval)" if self.interval > 1 else ")")
            )
        return starts


@dataclasses.dataclass
class Cycle:
    """One re-plan of one policy and its score on the following window.

    Attributes:
        start, stop: the scored window is steps ``[start, stop)``; the plan saw the steps before.
        label: the workload(s) of the scored window.
        par: ``[L] float64`` PAR per layer on the window (NaN where the layer has no load).
        par_bound: ``[L] float64`` lower bound on PAR per layer on the window.
        par_in_sample: ``[L] float64`` PAR per layer on the steps the plan saw (against ``par``,
            how much of the imbalance comes from the load changing rather than the policy).
        moves: slots whose expert changed against the previous placement, all layers.
        plan_seconds: wall time of the policy call.
        placement: the placement scored.
        migration_s: exposed seconds of the committed layers' transfers.
        moe_s: MoE seconds of the window, ``sum over steps and layers of max rank load x
            token_seconds``; ``none_s`` the same for the no-EPLB placement.
    """

    start: int
    stop: int
    label: str
    par: np.ndarray
    par_bound: np.ndarray
    par_in_sample: np.ndarray
    moves: int
    plan_seconds: float
    placement: Placement
    migration_s: float = 0.0
    moe_s: float = 0.0
    none_s: float = 0.0


@dataclasses.dataclass
class SimulationResult:
    spec: SimulationSpec
    workload: Workload
    cycles: dict[str, list[Cycle]]


def simulate(
    workload: Workload,
    spec: SimulationSpec,
    on_cycle: Callable[[str, Cycle], None] | None = None,
) -> SimulationResult:
    """Replay ``workload`` with every policy of ``spec``; see the module docstring.

    ``on_cycle(policy, cycle)`` is called after each plan (a progress bar, a writer).
    """
    topo, cost = spec.topology, spec.cost
    _, L, E = workload.load.shape
    topo.check_experts(E)
    starts = spec.cycle_starts(workload.num_steps)
    algorithms.warm_up([name for name in spec.policies if name != NO_REBALANCE])
    windows = [(s, min(s + spec.interval, workload.num_steps)) for s in starts]
    scored = [workload.load[a:b].sum(axis=0) for a, b in windows]
    bounds = [par_lower_bound(agg, topo) for agg in scored]
    start = planning.starting_placement(L, E, topo)
    result = SimulationResult(spec, workload, {})
    for name in spec.policies:
        placement = start
        cycles = result.cycles[name] = []
        for (begin, stop), agg, bound in zip(windows, scored, bounds, strict=True):
            history = workload.load[max(0, begin - spec.window) : begin]
            previous, migration_s = placement, 0.0
            began = time.perf_counter()
            if name != NO_REBALANCE:
                try:
                    args = (history, previous, topo, name, spec.options.get(name))
                    spans = {"horizon": spec.interval, "lifetime": spec.window}
                    decision = planning.decide(*args, cost=cost, threads=spec.threads, **spans)
                except Exception as err:
                    # A ValueError is the policy refusing this input (the user can act on it);
                    # anything else is a fault in the policy.
                    kind = ValueError if isinstance(err, ValueError) else RuntimeError
                    raise kind(
                        f"policy {name!r} failed planning from steps [{begin - len(history)}, "
                        f"{begin}): {err}"
                    ) from err
                placement = decision.placement
                migration_s = float(decision.migration_s[list(decision.layers)].sum())
            elapsed = time.perf_counter() - began
            window = workload.load[begin:stop]
            cycle = Cycle(
                start=begin,
                stop=stop,
                label=workload.window_label(begin, stop),
                par=metrics.par(placement, agg),
                par_bound=bound,
                par_in_sample=metrics.par(placement, history.sum(axis=0)),
                moves=int(placement.moves(previous).sum()),
                plan_seconds=elapsed,
                placement=placement,
                migration_s=migration_s,
                moe_s=float(metrics.max_rank_load(placement, window).sum()) * cost.token_seconds,
                none_s=float(metrics.max_rank_load(start, window).sum()) * cost.token_seconds,
            )
            cycles.append(cycle)
            if on_cycle is not None:
                on_cycle(name, cycle)
    return result


def orders(keys: Sequence[Hashable], wanted: int, seed: int = 0) -> Iterator[tuple[int, ...]]:
    """``wanted`` distinct orders in which to play workloads one after another, as tuples of
    positions in ``keys`` (each workload's key: workloads with equal keys are the same, so two
    orders that differ only by swapping them are one): the given order first, then seeded random
    ones; every distinct order, the given one first, where there are no more than ``wanted``.
    Equal workloads are taken in the order of their positions.

    One order of a few distinct workloads is one draw of an out-of-sample test (an expert hot in
    the second workload and the fifth weighs differently in another order), so policies are
    compared over several."""
    count = len(keys)
    if count < 1 or wanted < 1:
        raise ValueError(f"need at least one workload and one order, got {count} and {wanted}")
    positions: dict[Hashable, list[int]] = {}
    for i, key in enumerate(keys):
        positions.setdefault(key, []).append(i)
    arrangements = math.factorial(count)
    for same in positions.values():
        arrangements //= math.factorial(len(same))

    def placed(played: Sequence[Hashable]) -> tuple[int, ...]:
        # Equal workloads by position: the n-th one played is the n-th one given.
        taken = {key: iter(where) for key, where in positions.items()}
        return tuple(next(taken[key]) for key in played)

    given = tuple(range(count))
    seen = {given}
    yield given
    if arrangements <= wanted:
        for played in _arrangements({key: len(where) for key, where in positions.items()}, ()):
            order = placed(played)
            if order not in seen:
                seen.add(order)
                yield order
        return
    rng = np.random.default_rng(seed)
    while len(seen) < wanted:
        order = placed([keys[i] for i in rng.permutation(count)])
        if order not in seen:
            seen.add(order)
            yield order


def _arrangements(left: dict, played: tuple) -> Iterator[tuple]:
    """Every distinct sequence of the keys ``left`` (key: how many times it is still to be
    played) after ``played``: one per arrangement of a multiset, however many keys repeat."""
    if not any(left.values()):
        yield played
        return
    for key, times in left.items():
        if times:
            left[key] -= 1
            yield from _arrangements(left, (*played, key))
            left[key] += 1


_PAR_SUMMARY = (
    "par_mean", "par_p50", "par_p99", "par_max", "worst_layer", "worst_layer_par",
    "bound_par_mean", "bound_gap",
)  # fmt: skip
"""The summary's PAR figures: ``None`` where no scored window had load."""


def summarize(cycles: Sequence[Cycle], expert_bytes: float) -> dict:
    """One policy's numbers over all cycles (plain floats/ints, JSON-ready).

    PAR statistics run over every (cycle, loaded layer) pair; ``worst_layer`` is the layer with
    the highest PAR averaged over cycles; ``bound_gap`` is the mean of ``par / par_bound - 1``.
    """
    par = np.stack([c.par for c in cycles])  # [C, L]
    bound = np.stack([c.par_bound for c in cycles])
    loaded = ~np.isnan(par)
    values = par[loaded]
    moves = np.array([c.moves for c in cycles], dtype=np.int64)
    plan_ms = np.array([c.plan_seconds for c in cycles]) * 1e3
    # Every key in every summary (None where no scored window had load), as in each cycle.
    out: dict = {"cycles": len(cycles)}
    out.update(dict.fromkeys(_PAR_SUMMARY))
    if values.size:
        counts = loaded.sum(axis=0)
        per_layer = np.where(loaded, par, 0.0).sum(axis=0) / np.maximum(counts, 1)
        worst = int(np.argmax(np.where(counts > 0, per_layer, -np.inf)))
        out.update(
            par_mean=float(values.mean()),
            par_p50=float(np.percentile(values, 50)),
            par_p99=float(np.percentile(values, 99)),
            par_max=float(values.max()),
            worst_layer=worst,
            worst_layer_par=float(per_layer[worst]),
            bound_par_mean=float(bound[loaded].mean()),
            bound_gap=float((par[loaded] / bound[loaded] - 1.0).mean()),
        )
    out.update(
        # From the steps each plan saw, which can hold load where no scored window does.
        par_in_sample_mean=_nanmean(np.stack([c.par_in_sample for c in cycles])),
        moves_per_cycle=float(moves.mean()),
        moves_max=int(moves.max()),
        moves_total=int(moves.sum()),
        bytes_per_cycle=float(moves.mean()) * expert_bytes,
        bytes_total=int(moves.sum()) * expert_bytes,
        plan_ms_mean=float(plan_ms.mean()),
        plan_ms_max=float(plan_ms.max()),
        migration_s_per_cycle=float(np.mean([c.migration_s for c in cycles])),
        throughput_vs_none=_throughput(cycles),
    )
    return out


def cycle_record(cycle: Cycle, expert_bytes: float) -> dict:
    """One cycle as plain numbers (the per-cycle rows of ``--json``)."""
    loaded = ~np.isnan(cycle.par)
    return {
        "start": cycle.start,
        "stop": cycle.stop,
        "label": cycle.label,
        "par_mean": float(cycle.par[loaded].mean()) if loaded.any() else None,
        "par_max": float(cycle.par[loaded].max()) if loaded.any() else None,
        "bound_par_mean": float(cycle.par_bound[loaded].mean()) if loaded.any() else None,
        "par_in_sample_mean": _nanmean(cycle.par_in_sample),
        "par_per_layer": [None if np.isnan(x) else float(x) for x in cycle.par],
        "moves": cycle.moves,
        "bytes": cycle.moves * expert_bytes,
        "plan_ms": cycle.plan_seconds * 1e3,
        "migration_s": cycle.migration_s,
        "throughput_vs_none": _throughput([cycle]),
    }


def _throughput(cycles: Sequence[Cycle]) -> float | None:
    """MoE throughput relative to no EPLB: no-EPLB seconds / (seconds + migration), over the
    windows with load; ``None`` where none has any. A window without load serves nothing, and
    its migration, in the idle time, delays nothing (counted, its 0 / migration read as a
    throughput of 0 for the cycle, and lowered the run's)."""
    busy = [c for c in cycles if c.none_s > 0]
    spent = sum(c.moe_s + c.migration_s for c in busy)
    return sum(c.none_s for c in busy) / spent if spent > 0 else None


def _nanmean(values: np.ndarray) -> float | None:
    """Mean over the non-NaN entries (loaded layers), ``None`` when there are none."""
    finite = values[~np.isnan(values)]
    return float(finite.mean()) if finite.size else None
