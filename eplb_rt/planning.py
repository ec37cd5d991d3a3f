"""The one planning pipeline: load -> policy -> alignment -> one gate in seconds -> placement.

``EplbRuntime`` (its balancer), ``eplb-rt plan --previous`` and ``eplb-rt simulate`` all decide
through :func:`decide`, so the same load and placement in force give the same decision in all three,
priced over the same spans (the runtime's: its interval and its heat ring; ``plan``'s ``--horizon``
and ``--lifetime``, the load's rows unless given). Step time is taken as proportional to the largest
rank load of each MoE layer, so a layer is committed only when the compute it saves before the next
plan (fall of the per-step max rank load x :attr:`CostModel.token_seconds` x steps) exceeds the
migration time that is not hidden behind compute (bytes the slowest rank receives /
:attr:`CostModel.bandwidth`), or, where the placement is hierarchical, when it puts a layer's expert
groups back onto nodes (whatever that costs: :func:`decide`); a layer that could not pay for one
expert's transfer even if balanced perfectly is not planned (:func:`could_pay`). Torch-free.
"""

from __future__ import annotations

import dataclasses
import math
import os

import numpy as np

from eplb_rt import algorithms, envs
from eplb_rt.algorithms import hierarchy
from eplb_rt.algorithms.align import align_placement
from eplb_rt.algorithms.load import check_load
from eplb_rt.algorithms.metrics import peak_ratio, rank_load
from eplb_rt.algorithms.prices import most_received_layers
from eplb_rt.algorithms.starting import starting_row
from eplb_rt.placement import Placement, Topology, slot_tables
from eplb_rt.scalars import as_float, check_count, is_real

DEEPSEEK_V3_EXPERT_BYTES = 3 * 7168 * 2048
"""One DeepSeek-V3 routed expert in FP8: gate, up and down projections of 7168 x 2048 bytes."""
LINK_BANDWIDTH = 50e9
"""Bytes per second one rank receives: a 400 Gb/s RDMA NIC per device (H100 or Ascend
910-class scale-out), the link that experts cross between nodes."""
TOKEN_SECONDS = 2.5e-7
"""Seconds one token spends in one DeepSeek-V3 expert: 3 x 2 x 7168 x 2048 = 88 MFLOP at about
350 TFLOP/s, the FP8 rate an H100 or Ascend 910-class device sustains on grouped GEMMs."""


PIPELINE_OPTIONS = {
    "move_cost": "one expert's transfer over what a unit of PAR saves until the next plan",
    "slowest_rank": "on: moves priced by the slowest rank's transfers, as the gate prices them",
    "lifetime": "the steps a plan reads over the steps between plans",
}
"""The policy options :func:`decide` sets from its cost model and clock where a policy has them
and the caller gives none (the runtime, ``plan --previous`` and ``simulate`` plan through it),
and what each is set to."""

NO_MOVE_PAYS = 1e12
"""A ``move_cost`` past any PAR a move can buy (PAR is at most the rank count): where the prices
make a move dearer still, the policies are given this finite one."""


@dataclasses.dataclass(frozen=True)
class CostModel:
    """What a migration costs and a better placement saves, in seconds.

    Attributes:
        expert_bytes: bytes of one expert's weights (one slot).
        bandwidth: bytes per second one rank receives.
        token_seconds: seconds one token spends in one expert (one token-slot).
        hidden_seconds: seconds of each layer's transfer hidden behind compute.
    """

    expert_bytes: float = DEEPSEEK_V3_EXPERT_BYTES
    bandwidth: float = LINK_BANDWIDTH
    token_seconds: float = TOKEN_SECONDS
    hidden_seconds: float = 0.0

    def __post_init__(self) -> None:
        for name, value in dataclasses.asdict(self).items():
            low = ">= 0" if name == "hidden_seconds" else "> 0"
            finite = is_real(value) and math.isfinite(as_float(value))
            if not finite or value < 0 or (value == 0 and low == "> 0"):
                raise ValueError(f"CostModel.{name} must be a finite number {low}, got {value!r}")

    def migration_seconds(self, previous: np.ndarray, new: np.ndarray, num_ranks: int):
        """``[L]`` exposed seconds to move each layer from slots ``previous [L, P]`` to
        ``new [L, P]``: the slowest rank's received experts (those it did not hold, as the
        policies price them: :func:`~eplb_rt.algorithms.prices.most_received`) x bytes /
        bandwidth, less the hidden part."""
        previous, new = slot_tables(previous, new, num_ranks, ndim=2)
        received = most_received_layers(new, previous, num_ranks)
        # In floats: an int expert_bytes times int64 counts would wrap past 2**63.
        exposed = received * np.float64(self.expert_bytes) / self.bandwidth - self.hidden_seconds
        return np.where(received > 0, np.maximum(exposed, 0.0), 0.0)

    def move_cost(self, load: np.ndarray, num_ranks: int, horizon: float) -> float:
        """PAR that one moved slot on every rank must buy (the policies' ``move_cost``): one
        expert's transfer time (ranks receive in parallel, so a slot moved on each rank takes
        one transfer, and a single slot ``1 / num_ranks`` of it when moves are spread) over the
        time one unit of PAR costs over ``horizon`` steps at the mean rank load of
        ``load [T, L, E]`` (``[L, E]``: one step; of the layers that carry load: an idle layer
        buys nothing, and counted in the mean it would make every move look dearer). At most
        :data:`NO_MOVE_PAYS`.

        The whole transfer is priced: :attr:`hidden_seconds` is an allowance per layer, which a
        price per moved slot cannot hold, so with it the policies price moves dearer than the
        gate does (they may forgo a move the gate would commit, never the reverse)."""
        load = check_load(load)
        _check_steps(horizon, "horizon (steps until the next plan)")
        check_count("num_ranks", num_ranks)
        per_layer = load.sum(axis=2).mean(axis=0)
        loaded = per_layer[per_layer > 0]
        mean_rank = max(float(loaded.mean()) / num_ranks if loaded.size else 0.0, 1e-300)
        with np.errstate(over="ignore", divide="ignore"):
            bought = np.float64(mean_rank) * self.token_seconds * horizon
            price = np.float64(self.expert_bytes) / self.bandwidth / bought
        return float(min(price, NO_MOVE_PAYS))


@dataclasses.dataclass(frozen=True)
class Decision:
    """A plan and why: per layer ``[L]`` the seconds saved and spent, PAR before and after.

    ``candidate`` is the policy's placement aligned to the one in force; ``placement`` is the
    one in force with the ``layers`` that pay (and hierarchical layers whose groups go back onto
    nodes, :func:`decide`) taken from it; ``slots`` moved slots in all.
    """

    placement: Placement
    candidate: Placement
    layers: tuple[int, ...]
    saved_s: np.ndarray
    migration_s: np.ndarray
    par_before: np.ndarray
    par_after: np.ndarray
    slots: int


def step_load(placement: Placement, load: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(max rank load [L], mean rank load [L])`` per step, averaged over the steps of
    ``load [T, L, E]`` (``[L, E]``: one step): what a step costs, so noise and drift inside the
    window count as they do when serving."""
    return _step_load(placement, check_load(load, placement.num_layers, placement.num_experts))


def _step_load(placement: Placement, load: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """:func:`step_load` of a checked ``load [T, L, E] float64``."""
    ranks = rank_load(placement, load)
    return ranks.max(axis=-1).mean(axis=0), ranks.mean(axis=-1).mean(axis=0)


def step_par(placement: Placement, load: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(max rank load [L], PAR [L])`` per step, as :func:`step_load`."""
    return _step_par(placement, check_load(load, placement.num_layers, placement.num_experts))


def _step_par(placement: Placement, load: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """:func:`step_par` of a checked ``load [T, L, E] float64``."""
    peak, mean = _step_load(placement, load)
    return peak, peak_ratio(peak, mean)


def decide(
    load: np.ndarray,
    previous: Placement,
    topology: Topology,
    policy: str,
    options: dict | None,
    *,
    cost: CostModel,
    horizon: float,
    lifetime: float | None = None,
    threads: int = 1,
) -> Decision:
    """Plan from ``load [T, L, E]`` (per step) with ``previous`` in force for ``horizon`` steps.

    The policy's ``move_cost`` option (where it has one and it is not given) is derived from
    ``cost``, and its ``slowest_rank`` (likewise) is on, so that it judges its candidates by
    the migration's time as the gate does (the whole transfer: :meth:`CostModel.move_cost`).
    ``lifetime``: the steps a placement chosen now is expected to serve, the span of load a plan
    reads (the runtime's heat ring, ``simulate``'s window; ``None``: the rows of ``load``;
    ``inf``: as long as the load holds); the policy's
    ``lifetime`` option (likewise) is that in plans, at least 1: of its candidates whose moves
    pay before the next plan, it takes the one that buys the most over that span, and where a
    layer's episodes show the load held over it, over as long as it holds (the least PAR that
    pays: from the cheaper candidate no later plan pays for the moves to one of lower PAR on the
    same load). A layer whose plan so taken the gate refuses is planned again over one plan's
    life. The placement is aligned to ``previous`` (kept experts keep their slots); a changed
    layer is committed only when it saves more seconds than its migration takes. ``threads``
    plan the layers side by side (:func:`eplb_rt.algorithms.plan`): the same decision for any
    number of them. Where the placement is hierarchical and ``previous`` spreads a layer's
    groups over nodes, that layer is planned and committed whatever it costs: what groups on
    nodes buy (a token's dispatch crossing fewer nodes) is not in the PAR the gate prices, and
    lowering that PAR is what a grouped layer gives up (:mod:`eplb_rt.algorithms.hierarchy`).
    Two such layers keep their slots: one without load (nothing says where its experts go) and
    one whose groups cannot reach their nodes within the policy's ``max_moved_fraction``
    (:func:`starting_placement` starts with the groups on nodes, so only a placement given flat
    meets either).
    """
    for name, value, kind in (
        ("previous", previous, Placement),
        ("topology", topology, Topology),
        ("cost", cost, CostModel),
    ):
        if not isinstance(value, kind):
            raise TypeError(f"{name} must be a {kind.__name__}, got {type(value).__name__}")
    _check_steps(horizon, "horizon (steps until the next plan)")
    threads = check_count("threads", threads)
    load = check_load(load, previous.num_layers, previous.num_experts)
    lifetime = load.shape[0] if lifetime is None else lifetime
    _check_steps(lifetime, "lifetime (steps a placement is expected to serve)", infinite=True)
    shape = (topology.num_ranks, topology.num_slots_per_rank)
    if (previous.num_ranks, previous.num_slots_per_rank) != shape:
        # Checked here, not only by the policy: where no layer can pay, no policy runs.
        raise ValueError(
            f"previous placement ({previous.describe()}) does not match {shape[0]} ranks x "
            f"{shape[1]} slots"
        )
    if options is not None and not isinstance(options, dict):
        # An options object sets every option: the ones the pipeline derives could not be told
        # from the policy's defaults.
        raise TypeError(
            "options must be a dict of the policy's options to override (move_cost, "
            f"slowest_rank and lifetime are derived where not given), got {type(options).__name__}"
        )
    options = dict(options or {})
    spec = algorithms.get_policy(policy)
    derived = {
        "move_cost": lambda: cost.move_cost(load, topology.num_ranks, horizon),
        "slowest_rank": lambda: True,
        "lifetime": lambda: max(1.0, as_float(lifetime) / as_float(horizon)),
    }
    for name in spec.option_names & PIPELINE_OPTIONS.keys():
        if name not in options:
            options[name] = derived[name]()
    options = spec.make_options(options)
    peak_before, mean = _step_load(previous, load)
    par_before = peak_ratio(peak_before, mean)
    spread = hierarchy.spread_layers(previous.phy2log, previous.num_experts, topology, options)
    planned = could_pay(peak_before, mean, cost, horizon) | spread
    candidate, peak_after, par_after = previous, peak_before, par_before
    if planned.any():
        candidate = _aligned_plan(policy, load, topology, previous, options, planned, threads)
        peak_after, par_after = _step_par(candidate, load)
    saved, spent = _prices(previous, candidate, peak_before - peak_after, cost, horizon)
    changed = candidate.changed_layers(previous)
    refused = changed[~((saved > spent)[changed] | spread[changed])]
    if refused.size and getattr(options, "lifetime", 1.0) > 1.0:
        # The policy judges its candidates on the summed load, the gate on per-step peaks,
        # which noise lifts more where ranks are balanced: a plan taken for the placement's
        # life may fall short of the gate where the cheapest that pays by the next plan (a
        # patch) does not. Those layers are planned again over one interval.
        short = dataclasses.replace(options, lifetime=1.0)
        again = np.zeros_like(planned)
        again[refused] = True
        second = _aligned_plan(policy, load, topology, previous, short, again, threads)
        candidate = candidate.replace_layers(refused, second)
        peak_after, par_after = _step_par(candidate, load)
        saved, spent = _prices(previous, candidate, peak_before - peak_after, cost, horizon)
        changed = candidate.changed_layers(previous)
    layers = tuple(int(x) for x in changed[(saved > spent)[changed] | spread[changed]])
    placement = previous.replace_layers(layers, candidate) if layers else previous
    slots = int(placement.moves(previous).sum())
    return Decision(placement, candidate, layers, saved, spent, par_before, par_after, slots)


def _aligned_plan(  # noqa: PLR0917 (decide's own arguments, passed on)
    policy: str,
    load: np.ndarray,
    topology: Topology,
    previous: Placement,
    options: object,
    layers: np.ndarray,
    threads: int,
) -> Placement:
    """The policy's plan of ``layers [L] bool`` (the others as in ``previous``) aligned to
    ``previous``: kept experts keep their slots."""
    fresh = algorithms.plan(
        policy, load, topology, previous, options, layers=layers, threads=threads
    )
    nodes = hierarchy.nodes_to_align(previous.num_experts, topology, options)
    return align_placement(previous, fresh, nodes)


def _prices(
    previous: Placement, candidate: Placement, fall: np.ndarray, cost: CostModel, horizon: float
) -> tuple[np.ndarray, np.ndarray]:
    """``(saved [L], spent [L])`` seconds of moving from ``previous`` to ``candidate``: what the
    ``fall [L]`` of the per-step peak saves over ``horizon`` steps, and the migration's exposed
    seconds."""
    with np.errstate(over="ignore"):  # a fall priced past a float's range saves inf
        saved = fall * _seconds_per_token_slot(cost, horizon)
    spent = cost.migration_seconds(previous.phy2log, candidate.phy2log, previous.num_ranks)
    return saved, spent


DEFAULT_THREADS_MAX = 4
"""The most threads a plan takes where their number is not given: rank 0's process shares its
node with the other ranks' serving processes (BENCHMARKS.md, "Plans on several threads")."""


def default_threads() -> int:
    """Threads a plan may run on where their number is not given: ``EPLB_RT_PLAN_THREADS``
    where set, else the cores this process may run on (its CPU affinity, where the OS keeps
    one) less one for the serving thread, from 1 to :data:`DEFAULT_THREADS_MAX`. (A container's
    CPU quota is not read: where it is below the affinity, set the variable.)"""
    given = envs.get("EPLB_RT_PLAN_THREADS")
    if given is not None:
        return given
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # no affinity on this OS (macOS)
        cores = os.cpu_count() or 1
    return max(1, min(DEFAULT_THREADS_MAX, cores - 1))


def _check_steps(value: object, what: str, *, infinite: bool = False) -> None:
    """``value`` is a number of steps: a finite real number > 0 (not a bool; or ``inf`` where
    ``infinite``), or a ValueError naming ``what``."""
    number = is_real(value) and not math.isnan(as_float(value))
    if not (number and value > 0 and (infinite or math.isfinite(as_float(value)))):
        kind = "a number > 0 or inf" if infinite else "a finite number > 0"
        raise ValueError(f"{what} must be {kind}, got {value!r}")


def could_pay(peak: np.ndarray, mean: np.ndarray, cost: CostModel, horizon: float) -> np.ndarray:
    """``[L] bool``: the layers where a new placement could save more than moving one expert
    costs; the others are not planned.

    ``peak [L]``, ``mean [L]``: :func:`step_load` of the placement in force. No placement's
    per-step peak falls below the per-step mean rank load, so a layer saves at most
    ``(peak - mean) * token_seconds * horizon``, and a change that moves an expert has some
    rank receive one. Where that transfer costs more than the most a layer can save, the gate
    never commits the layer, and the plan skips it (in steady state most layers). With uniform
    shares and no expert twice on a rank (every shipped policy's default), a change that moves
    no expert changes no rank load, so the decisions are those of planning every layer; with
    shares, a share-only change of such a layer (worth less than one transfer) is forgone.
    """
    _check_steps(horizon, "horizon (steps until the next plan)")
    if not isinstance(cost, CostModel):
        raise TypeError(f"cost must be a CostModel, got {type(cost).__name__}")
    # The margin covers rounding: the gate's peaks are sums of the same loads in another order.
    with np.errstate(over="ignore"):
        most = (peak - mean + 1e-9 * peak) * _seconds_per_token_slot(cost, horizon)
    least = cost.expert_bytes / cost.bandwidth - cost.hidden_seconds
    return (most > least) | (least <= 0.0)


def _seconds_per_token_slot(cost: CostModel, horizon: float) -> float:
    """What a token-slot less on the peak rank saves over ``horizon`` steps, at most the largest
    float (not inf: a layer whose peak does not fall saves 0, not NaN)."""
    return min(cost.token_seconds * as_float(horizon), np.finfo(np.float64).max)


def drifted(load: np.ndarray, placement: Placement, recent: int, cost: CostModel) -> bool:
    """Whether the last ``recent`` steps of ``load [T, L, E]`` are less balanced under
    ``placement`` than the steps before them, beyond both noise and the gate's threshold.

    Noise: four standard errors of a ``recent``-step mean of the earlier steps' PAR. Threshold:
    the rise must pay for one moved slot over the next ``recent`` steps
    (:meth:`CostModel.move_cost` over the ranks).
    """
    check_count("recent (steps)", recent)
    load = check_load(load, placement.num_layers, placement.num_experts)
    ranks = rank_load(placement, load)  # [T, L, D]
    total = ranks.mean(axis=-1).sum(axis=-1)
    keep = total > 0
    par = ranks.max(axis=-1).sum(axis=-1)[keep] / total[keep]  # per step, over all layers
    if par.size < 3 * recent:
        return False
    old, new = par[:-recent], par[-recent:]
    rise = new.mean() - old.mean()
    noise = 4.0 * old.std() / math.sqrt(recent)
    slot = cost.move_cost(load[-recent:], placement.num_ranks, recent) / placement.num_ranks
    return bool(rise > max(noise, slot))


def starting_placement(num_layers: int, num_experts: int, topology: Topology) -> Placement:
    """The placement before any heat: :func:`~eplb_rt.algorithms.starting.starting_row` in
    every layer (checked: ``num_layers`` and ``num_experts`` must fit ``topology``)."""
    check_count("num_layers", num_layers)
    topology.check_experts(num_experts)
    row = starting_row(num_experts, topology)
    return Placement(np.tile(row, (num_layers, 1)), num_experts, topology.num_ranks)
