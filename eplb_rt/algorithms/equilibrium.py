"""``equilibrium``: placements near the lower bound that hold out of sample, with few moves.

Per layer (the search kernels are numba, no GIL):

1. **Robust load.** The history is cut into episodes, each normalised to sum 1 so every episode
   (or workload) weighs the same. Replicas are allotted for ``mean + allot_z * std`` of each
   expert's episode load, and the placement is scored by the sum over episodes of the peak rank
   load (the mean PAR over episodes), not by the PAR of the summed load.
2. **Construct + local search.** Min-max-replica allotment, longest-processing-time placement,
   best-improvement pairwise swaps of replicas between a bottleneck rank and any other rank, and
   a neighbour search over replica counts (one- and two-replica moves, each re-constructed) for
   allotments whose large replicas cannot all get a rank of their own -- all on the mean load;
   then swaps scored on every episode's peak.
3. **Shares** (``shares=True``; off by default because shares fitted to past load lose out of
   sample, see notes). Each expert's tokens are split over its replicas by the transportation
   optimum (:mod:`eplb_rt.algorithms.shares`); where a rank set still confines too much load, a
   few slots are rewritten to open it, so PAR 1.0 is reached wherever the slots allow it.
4. **Migration knob** (with ``previous``): three candidates per layer -- keep the slots (0
   moves); repair the previous placement move by move (a slot rewritten to re-allot a replica,
   or a swap), each move accepted only when it lowers the layer's PAR by more than
   ``move_cost``; the fresh plan with its ranks relabelled to the previous ones (Hungarian). The
   layer takes the candidate with the least ``PAR + move_cost * moves`` within the per-layer
   budget ``max_moved_fraction * P``.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from eplb_rt.algorithms import _kernels as K
from eplb_rt.algorithms._packing import allot_replicas
from eplb_rt.algorithms.align import align_row
from eplb_rt.algorithms.episodes import cut_episodes, normalise_episodes
from eplb_rt.algorithms.registry import register
from eplb_rt.algorithms.shares import balanced_slot_shares, min_max_rank_load, open_bottleneck
from eplb_rt.placement import Placement, Topology

_TAU = 1e-3
"""Temperature of the smooth peak that ranks moves, as a fraction of the mean rank load."""


@dataclasses.dataclass(frozen=True)
class EquilibriumOptions:
    """Options of the ``equilibrium`` policy.

    Attributes:
        num_episodes: episodes the load history is cut into for robust scoring (1 = plan on the
            summed load only).
        shares: choose non-uniform replica shares (the ``route_and_count`` kernel honours them);
            False plans for uniform shares.
        count_rounds: rounds of the neighbour search over replica counts.
        count_width: candidate donor/recipient experts per round of that search.
        count_tol: the count search is skipped once the mean episode PAR is within this of 1.
        allot_z: replicas are allotted for ``mean + allot_z * std`` of each expert's episode load.
        share_rewrites: slots that may be rewritten to open a bottleneck for the shares.
        move_cost: with ``previous``: PAR a moved slot must buy (0 = only balance counts).
        max_moved_fraction: with ``previous``: at most this fraction of a layer's slots move.
    """

    num_episodes: int = 16
    shares: bool = False
    count_rounds: int = 6
    count_width: int = 3
    count_tol: float = 0.002
    allot_z: float = 1.5
    share_rewrites: int = 8
    move_cost: float = 0.002
    max_moved_fraction: float = 1.0

    def __post_init__(self) -> None:
        if self.num_episodes < 1:
            raise ValueError(f"num_episodes must be >= 1, got {self.num_episodes}")
        if self.count_rounds < 0 or self.count_width < 1 or self.share_rewrites < 0:
            raise ValueError("count_rounds and share_rewrites must be >= 0, count_width >= 1")
        if self.move_cost < 0:
            raise ValueError(f"move_cost must be >= 0, got {self.move_cost}")
        if not 0.0 <= self.max_moved_fraction <= 1.0:
            raise ValueError(f"max_moved_fraction must be in [0, 1], got {self.max_moved_fraction}")


def _layer_par(
    row: np.ndarray, W: np.ndarray, w: np.ndarray, topo: Topology, shares: bool
) -> float:
    """Score of one layer's slots: PAR with optimal shares on ``w``, or mean episode PAR."""
    D, S = topo.num_ranks, topo.num_slots_per_rank
    if shares:
        total = w.sum()
        if total <= 0:
            return 1.0
        return min_max_rank_load(row, w, D, S)[0] * D / total
    counts = K.counts_from_row(row, W.shape[1])
    loads = K.rank_loads(row, W, counts, D, S)
    mean = loads.mean(axis=1)
    ok = mean > 0
    return float((loads.max(axis=1)[ok] / mean[ok]).mean()) if ok.any() else 1.0


def _fresh_row(
    W: np.ndarray, w: np.ndarray, topo: Topology, opts: EquilibriumOptions
) -> np.ndarray:
    D, S = topo.num_ranks, topo.num_slots_per_rank
    # Replicas for the load an expert may reach, not only its mean: mean + z * std over episodes.
    robust = w + opts.allot_z * W.std(axis=0) if W.shape[0] > 1 else w
    counts = allot_replicas(robust, topo.num_slots, D)
    # Counts and a first placement on the mean load (one episode: the fast swap kernel), then
    # swaps scored on every episode's peak, which is what makes the plan hold out of sample.
    good_enough = (1.0 + opts.count_tol) / D
    row, _, _ = K.search_counts(
        w[None, :],
        counts,
        D,
        S,
        opts.count_rounds,
        opts.count_width,
        4 * topo.num_slots,
        good_enough,
    )
    if W.shape[0] > 1:
        K.swap_search(row, W, counts, D, S, 4 * topo.num_slots, 1e-3, 0.0)
    if opts.shares and opts.share_rewrites:
        total = w.sum()
        # Rewrites cost a flow per candidate: only worth it when shares leave a real gap.
        if total > 0 and min_max_rank_load(row, w, D, S)[0] * D > total * (1 + opts.count_tol):
            open_bottleneck(row, w, D, S, opts.share_rewrites, 0.0, 4)
    return row


def _repaired_row(
    prev_row: np.ndarray,
    W: np.ndarray,
    w: np.ndarray,
    topo: Topology,
    opts: EquilibriumOptions,
    *,
    budget: int,
) -> np.ndarray:
    """The previous slots improved move by move, each move worth more than ``move_cost``."""
    D, S = topo.num_ranks, topo.num_slots_per_rank
    row = prev_row.copy()
    total = w.sum()
    if total <= 0 or budget <= 0:
        return row
    if opts.shares:
        # Gain in load units: move_cost in PAR times the mean rank load.
        open_bottleneck(row, w, D, S, budget, opts.move_cost * total / D, 4)
    else:
        row, _ = K.greedy_moves(row, w, D, S, budget, opts.move_cost, _TAU * total / D)
    return row


def plan_layer(
    W: np.ndarray,
    now: np.ndarray,
    prev_row: np.ndarray | None,
    topo: Topology,
    opts: EquilibriumOptions,
) -> tuple[np.ndarray, np.ndarray | None]:
    """One layer. ``W [K, E]``: normalised episodes; ``now [E]``: the summed load, which moves
    away from ``prev_row`` must pay for themselves on.

    Returns ``(row [P] int64, share [P] float64 or None)``.
    """
    D, S = topo.num_ranks, topo.num_slots_per_rank
    w = np.ascontiguousarray(W.mean(axis=0))
    fresh = _fresh_row(W, w, topo, opts)
    if prev_row is not None:
        budget = int(opts.max_moved_fraction * topo.num_slots)
        fresh, _ = align_row(fresh, prev_row, D, W.shape[1])
        candidates = [prev_row, _repaired_row(prev_row, W, now, topo, opts, budget=budget), fresh]
        best_cost = np.inf
        for cand in candidates:
            moves = int((cand != prev_row).sum())
            if moves > budget:
                continue
            cost = _layer_par(cand, now[None, :], now, topo, opts.shares) + opts.move_cost * moves
            if cost < best_cost - 1e-12:
                best_cost = cost
                row = cand
    else:
        row = fresh
    if not opts.shares:
        return row, None
    total = w.sum()
    if total <= 0:
        return row, None
    target, _ = min_max_rank_load(row, w, D, S)
    return row, balanced_slot_shares(row, w, D, S, target * (1 + 1e-12))


def _warm_up() -> None:
    topo = Topology(4, 3)
    load = np.arange(1.0, 1 + 2 * 2 * 9).reshape(2, 2, 9)
    for shares in (True, False):
        opts = EquilibriumOptions(shares=shares)
        first = equilibrium(load, None, topo, opts)
        equilibrium(load[::-1].copy(), first, topo, opts)


@register(
    "equilibrium",
    EquilibriumOptions,
    "ours: episode-robust local search near the bound, optional shares, move-cost knob",
    warm_up=_warm_up,
)
def equilibrium(
    load: np.ndarray, previous: Placement | None, topo: Topology, opts: EquilibriumOptions
) -> Placement:
    """load: ``[T, L, E]`` float64. Returns the placement of all ``L`` layers (shares if asked)."""
    episodes = normalise_episodes(cut_episodes(load, opts.num_episodes))  # [K, L, E]
    _, L, E = episodes.shape
    now = normalise_episodes(load.sum(axis=0, keepdims=True))[0]  # [L, E]
    rows = np.empty((L, topo.num_slots), dtype=np.int64)
    shares = np.empty((L, topo.num_slots))
    any_share = False
    for layer in range(L):
        W = np.ascontiguousarray(episodes[:, layer, :])
        prev_row = None if previous is None else previous.phy2log[layer].astype(np.int64)
        rows[layer], share = plan_layer(W, now[layer], prev_row, topo, opts)
        if share is None:
            counts = np.bincount(rows[layer], minlength=E)
            shares[layer] = 1.0 / counts[rows[layer]]
        else:
            shares[layer] = share
            any_share = True
    return Placement(rows, E, topo.num_ranks, shares if any_share else None)
