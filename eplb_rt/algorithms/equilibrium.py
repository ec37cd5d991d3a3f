"""``equilibrium``: placements near the lower bound that hold out of sample, with few moves.

Per layer (the search kernels are numba, no GIL; what step 1 reads from the episodes is
:mod:`~eplb_rt.algorithms.episode_rows`, step 4's candidates and judge
:mod:`~eplb_rt.algorithms.replan_judge`):

1. **Robust load.** The history is cut into episodes, each normalised to sum 1 so every episode
   (or workload) weighs the same. Replicas are allotted for ``mean + spread * std`` of each
   expert's episode load, and the placement is scored on every episode at once, each pushed
   ``spread`` times further from the mean than seen -- a placement balanced on every episode is
   balanced on any mix of them, and the push covers workloads a little outside that hull.
   Distinct workloads (three or more) show how far that is: each held out in turn lands some
   number of the others' spreads out along their span (:func:`~.episode_rows.holdout_reach`), and
   they are pushed no further than the mean of that -- prompt lengths on a curve land beyond its
   ends, task mixes inside their span, and a push fitted to the one misplans the other. The share of
   the spread that is sampling noise keeps the full push, a hedge for new noise in any
   direction: the push is blended by the two shares.
   Where part of the episodes' spread is sampling noise (:func:`~.episode_rows.signal_fraction`),
   that part of the weight goes to the summed counts: the load the episodes share is then estimated
   from them and scored as one more episode, so planning for noise does not give away the fit to
   what repeats. With ``unseen`` (weight 1 by default), distinct workloads also plan for what none
   of them shows: each held out in turn, the part of its deviation outside the others' span
   (:func:`~.episode_rows.unseen_axes`) gives more scored episodes, the mean moved both ways along
   that part's axes; they refine the plan the seen episodes chose, by the swaps that lower the sum
   of the peaks of both. Where those parts all lie along one axis (the workloads follow a curve),
   its two ends are scored from the start too (:func:`~.episode_rows.trend_rows`).
2. **Construct + local search** on the mean load: min-max allotment, LPT placement, pairwise
   swaps and a neighbour search over replica counts (on token counts, only while what it gains
   exceeds what their sampling noise could show: :func:`~.episode_rows.peak_noise`; where that stops
   short, the same from an allotment that parks surplus replicas of a few hot experts,
   :func:`~eplb_rt.algorithms.replicas.allot_packable`, the better kept; where the episodes differ
   partly by that noise, the swaps too, since the next stage balances the shared load again as one
   of its rows); then swaps that lower the sum over the episodes of the squared rank loads
   (:func:`~eplb_rt.algorithms.local_search.balance_swaps`): every rank pulled to the mean of every
   episode, not only each episode's peak rank. Out of sample that holds better than the sum of the
   episodes' peaks on many ranks (DeepSeek-V3, fresh sampled draws), and it takes less than half the
   time.
3. **Shares** (``shares=True``; off by default: shares fitted to past load lose out of sample):
   the transportation optimum (:mod:`eplb_rt.algorithms.shares`), after rewriting a few slots
   where a rank set still confines too much load.
4. **Moves that pay** (with a previous placement): five candidates per layer -- keep the slots;
   the previous slots improved move by move, best marginal gain per moved slot first (a slot
   rewritten to another expert, or a swap; :func:`~eplb_rt.algorithms.move_walk.greedy_moves`),
   a move ranked on the rows the fresh plan is scored on and the summed load together
   (:func:`~eplb_rt.algorithms.episode_moves.greedy_moves_rows`) where there are episodes, so
   that on a short window it does not fit the summed load's sampling noise; the previous slots
   repaired to the walk's PAR on the summed load by moves ranked on the load above it on every
   rank (:func:`~eplb_rt.algorithms.target_repair.repair_to`: the walk relieves the peak rank
   first, and after a phase change takes more slots to a given PAR, or stops short of it); on a
   window of sampled token counts, the previous slots repaired alike to the fresh plan's PAR
   plus what a plan fitted to the window can seem to gain from its noise alone
   (:func:`~.episode_rows.noise_reach`: where the walk, priced slot by slot against the peak, stops
   short of it); the fresh plan with its ranks relabelled to the previous ones (Hungarian). The two
   repairs see the summed load alone and are kept only where they leave the episodes no less
   balanced than the walk. All are judged on the summed load (and where the episodes are distinct
   workloads, on the scored rows too: :func:`~.replan_judge.settle`): the layer takes the least
   ``PAR + move_cost * moved slots / D`` within the budget ``max_moved_fraction * P``. The price is
   per slot *per rank*: ranks receive in parallel, so moving ``D`` slots spread over the ``D`` ranks
   takes one expert's transfer, and with a fixed batch per rank a unit of PAR buys the same compute
   at any ``D``. In the planning pipeline (``slowest_rank``) the candidates are judged by the time
   their migration takes, as its gate prices it: ``move_cost`` times the most experts one rank
   receives. Where a placement is expected to serve ``lifetime`` plans, a candidate whose moves pay
   before the next plan is judged by ``PAR + price / lifetime`` (where the episodes show the load
   held over the window, for as long as it holds: the least PAR that pays). The move walk keeps, of
   its prefixes, the one this judge would take on the summed load, and stops once the slots it has
   moved leave no later one to take (kept by their price per slot, a prefix could send three experts
   to one rank, dearer by the slowest rank than the PAR it bought, where its first moves paid). The
   candidate taken then has its moves traded for fewer at no higher peak on the summed load
   (:func:`~eplb_rt.algorithms.move_trades.trade_moves`: a moved slot put back, and the overflow
   that leaves repaired by moves that move no more slots), where that costs no more and leaves the
   episodes no less balanced, but not on a layer in force at a layout before any heat
   (:func:`~eplb_rt.algorithms.starting.blank_layers`: no load chose the slots a put-back would
   keep; the slack it takes from the other ranks held the next workload, BENCHMARKS §3
   "Sixty-seventh session"). With two episodes or more, a changed layer must also pay out of sample,
   re-planned on half of them and judged on the other half (:func:`paid_out_of_sample`).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from eplb_rt.algorithms.align import align_row
from eplb_rt.algorithms.episode_rows import (
    episode_volumes,
    holdout_reach,
    peak_noise,
    sampling_noise,
    scored_rows,
    signal_fraction,
    trend_rows,
    unseen_ends,
    unseen_signal,
)
from eplb_rt.algorithms.jit import kernel
from eplb_rt.algorithms.keeping import cheaper
from eplb_rt.algorithms.local_search import balance_swaps, swap_search
from eplb_rt.algorithms.metrics import row_par
from eplb_rt.algorithms.packing import lpt_place
from eplb_rt.algorithms.prices import slot_budget
from eplb_rt.algorithms.registry import Layer, Layers, Options, option, register
from eplb_rt.algorithms.replan_judge import (
    cheapest,
    layer_gains,
    noise_margins,
    noisy_layers,
    settle_layers,
)
from eplb_rt.algorithms.replicas import LPT, allot_packable, allot_replicas, count_search
from eplb_rt.algorithms.shares import balanced_slot_shares, min_max_rank_load, open_bottleneck
from eplb_rt.algorithms.starting import blank_layers
from eplb_rt.algorithms.sums import column_mean, column_std, column_sum
from eplb_rt.placement import Topology, even_shares


@dataclasses.dataclass(frozen=True)
class EquilibriumOptions(Options):
    """Options of the ``equilibrium`` policy.

    Attributes:
        num_episodes: episodes the history is cut into for robust scoring (1: the sum only; at
            most 64: the hold-out reach and the unseen axes decompose the episodes, so a plan's
            time grows as the cube of their number: 58 layers of 256 experts at 64 x 5 ranks
            and slots plan in 45 ms with 16, 0.33 s with 64).
        shares: choose non-uniform replica shares (``route_and_count`` honours them).
        count_rounds, count_width: rounds and candidate experts of the replica-count search
            (recipients and donors of its single moves, each; six, not three, reach the
            neighbours a tight shape needs: gpt-oss at 8x5 out of sample 1.2362 -> 1.2221;
            on the other shipped cells the same or within noise, on the smallest synthetic
            shapes a little worse, BENCHMARKS §3 "Sixty-second session").
        count_tol: the count search stops once the PAR is within this of 1, or (on token
            counts) after a round that gained less and less than their sampling noise; on
            token counts it starts only where the PAR is beyond what that noise could show.
        spread: plan for deviations from the mean ``spread`` times those seen (allotment at
            ``mean + spread * std``; the swaps' episodes pushed that far from the mean); where
            the episodes are three or more distinct workloads, at most as far as a held-out
            one lands (:func:`~.episode_rows.holdout_reach`; blended by the share of their spread
            that is workloads where part of it is sampling noise).
        unseen: weight (one episode's = 1) of more scored episodes: the mean moved both ways
            along :func:`~.episode_rows.unseen_axes`, the part of a workload's deviation that the
            others do not span. Only where the episodes are distinct workloads (no sampling noise
            seen); the swaps then start from the plan scored on the seen episodes. Where those parts
            agree on one axis, also the weight of :func:`~.episode_rows.trend_rows` in the first
            search.
        share_rewrites: slots that may be rewritten to open a bottleneck for the shares.
        move_cost: with a previous placement: PAR that one moved slot on every rank (one
            expert's transfer time) must buy; a single slot pays ``move_cost / D``.
        slowest_rank: price moves (the candidates of step 4, and the check out of sample) by
            the time their migration takes, as the planning pipeline's gate does: ``move_cost``
            times the most experts one rank receives
            (:func:`~eplb_rt.algorithms.prices.most_received`), not a price per moved slot.
            A patch that sends three experts to one rank then costs what sending three to
            every rank costs. The pipeline (runtime, ``plan --previous``,
            ``simulate``) turns it on.
        lifetime: plans a placement chosen now is expected to serve (``move_cost`` prices
            one), ``inf`` for as long as the load holds. Of the candidates of step 4 whose
            moves pay at ``move_cost`` (before the next plan), the layer takes the least ``PAR
            + price / lifetime``: what a move buys counts over the placement's life, not only
            until the next plan, while every move still pays before it. Past one plan, a layer
            whose episodes differ partly by sampling noise (the load held over the window) is
            judged over an endless life (the least PAR that pays), and a layer whose candidate
            so taken does not pay out of sample is planned again over one plan
            (:func:`paid_out_of_sample`). The pipeline sets the steps a plan reads over the
            steps between plans (:func:`eplb_rt.planning.decide`).
        max_moved_fraction: ... and at most this fraction of a layer's slots moves (whole
            slots, rounded down: :func:`~eplb_rt.algorithms.prices.slot_budget`; planned
            hierarchically, a node's slots, rounded down a node).
    """

    num_episodes: int = option(16, low=1, high=64)
    shares: bool = option(False)
    count_rounds: int = option(6, low=0)
    count_width: int = option(6, low=1)
    count_tol: float = option(0.002, low=0)
    spread: float = option(2.0, low=0)
    unseen: float = option(1.0, low=0)
    share_rewrites: int = option(8, low=0)
    move_cost: float = option(0.01, low=0)
    slowest_rank: bool = option(False)
    lifetime: float = option(1.0, low=1.0, infinite=True)
    max_moved_fraction: float = option(1.0, low=0, high=1)


def _shares_par(row: np.ndarray, w: np.ndarray, topo: Topology) -> float:
    """PAR of one layer's slots on ``w [E]`` at their best shares."""
    D, total = topo.num_ranks, w.sum()
    if total <= 0:
        return row_par(row, w[None, :], D)
    return min_max_rank_load(row, w, D, topo.num_slots_per_rank)[0] * D / total


@kernel(inline=True)
def _searched(  # noqa: PLR0917
    row, counts, mean, w, summed, stop, counts_given, num_ranks, count_rounds, count_width,
    count_tol,
):  # fmt: skip
    """Swaps, then the replica-count search, on the shared load ``mean [1, E]`` (``w [E]``)
    from ``row [P]`` and its ``counts [E]`` (updated in place): ``(row, enough)``, the searched
    row and the PAR within which the plan is as balanced as the load's sampling noise can show.

    Counts are searched only where the mean load's PAR is beyond ``enough``: within it, the
    estimate cannot tell the packing's imbalance from noise (the plans of the plan-time case
    start there, and a search from there would take five times as long for nothing). Once
    started, the search goes on while a round gains ``count_tol`` (or the noise, where that is
    less; on a load whose noise is unknown, anything): a round's gain on the estimate is a gain
    on the load in expectation. Stopped at the noise where that is more, a round too small to
    show through it ended the search where a rank holds a few replicas, each a large share of
    its load: planned on a sample of their load, gpt-oss 32x2 and OLMoE 64x2 were 0.019 / 0.010
    PAR worse on the load itself, and 150 random shapes 0.0036 worse where the rule decided
    (BENCHMARKS §3, "Seventieth session").

    The swaps on the shared load alone stop at ``enough`` only where the episodes differ partly
    by noise (``stop``): the variance stage then scores the shared load as a row of its own
    (scored_rows) and balances it again with every episode. Otherwise (one episode; distinct
    workloads, whose variance stage lands in the optimum nearest its start) they go to the end.
    The noise is the peak rank's (``summed [E]``: the token counts) where the searches start:
    the packing's where the swaps stop at it, the swaps' end where they do not."""
    P = row.shape[0]
    noise = peak_noise(row, summed, num_ranks) if stop else 0.0
    swap_enough = 1.0 + max(count_tol, noise) if stop else 0.0
    swap_search(row, mean, counts, num_ranks, 4 * P, 1e-3, 0.0, swap_enough)
    if counts_given and not stop:
        noise = peak_noise(row, summed, num_ranks)
    enough = 1.0 + max(count_tol, noise)
    if row_par(row, mean, num_ranks) > enough:  # as count_search's own first test
        row = count_search(
            LPT, row, mean, w, np.zeros((1, 1)), 0.0, counts, num_ranks, count_rounds,
            count_width, 4 * P, 1.0 + count_tol, min(count_tol, noise), swap_enough,
        )  # fmt: skip
    return row, enough


# The per-layer kernels are inlined into the loops over layers, their only callers: numba
# compiles a called kernel's code once more into every kernel that calls it, and the compile
# without the shipped cache would grow by a copy of each.
@kernel(inline=True)
def _fresh_plan(  # noqa: PLR0917 (numba kernels take plain positional arrays)
    W, tokens, counts_given, now, spread, unseen, num_slots, num_ranks, count_rounds, count_width,
    count_tol,
):  # fmt: skip
    """A layer's plan from scratch: steps 1 and 2 of the module's list in one call (no GIL: the
    balancer plans in a thread).

    ``W [K, E]``: episodes scaled to sum 1; ``tokens [K, E]``: their counts when
    ``counts_given`` (else their noise is unknown); ``now [E]``: the summed load, scaled;
    ``unseen``: the option's weight. Returns ``(row [P] int64, w [E], V [K', E], signal)``: ``w``
    the load the episodes share, ``V`` the rows the first search scored
    (:func:`~.episode_rows.scored_rows`, then any :func:`~.episode_rows.trend_rows`; none for one
    episode), ``signal`` the episodes' :func:`~.episode_rows.signal_fraction`.
    """
    K, E = W.shape
    volume = episode_volumes(tokens) if counts_given else np.empty(0)
    # One noise estimate per layer: it decides the summed counts' weight and the unseen episodes.
    noise = sampling_noise(W, volume)
    signal = signal_fraction(W, noise)
    # Distinct workloads weigh the same (the mean of the episodes); episodes that differ by
    # noise only are one workload, best estimated by the summed counts.
    w = signal * column_mean(W) + (1.0 - signal) * now
    axes, share, seen = np.empty((0, E)), np.empty(0), 0.0
    if K > 2:
        # Distinct workloads show how far a new one lands: the part of the episodes' spread
        # that is workloads is pushed no further than that; the part that is sampling noise
        # keeps the option's push, a hedge for new noise in any direction. (A few thousand
        # tokens a workload leave a few per cent of noise: a push that switched at none
        # planned such workloads as noise, 0.014 PAR worse out of sample, BENCHMARKS §3.) The
        # reach and the unseen axes each factor the episodes' span; formed once and passed to
        # inlined kernels, the public kernels would no longer be compiled as the plan's
        # callees, so the shipped cache would lack them.
        reach = holdout_reach(W)
        if not np.isnan(reach):  # NaN (no spread among the others): the option's push stands
            spread = signal * min(spread, reach) + (1.0 - signal) * spread
    if K > 1:
        V = scored_rows(W, w, spread, signal)
        if signal == 1.0 and unseen > 0.0:
            axes, share, seen = unseen_signal(W, noise)
            trend = trend_rows(w, axes, share, spread, unseen) if K > 2 else np.empty((0, E))
            if trend.shape[0]:
                V = np.vstack((V, trend))
        # Replicas for the load an expert may reach, not only its mean: mean + spread * std.
        robust = w + spread * column_std(W)
    else:
        V = np.empty((0, E))
        robust = w
    # Counts and a first placement on the mean load, searched; then swaps that balance every
    # episode, which is what makes the plan hold out of sample.
    mean = w.reshape((1, E))
    summed = column_sum(tokens)
    stop = K > 1 and signal < 1.0  # signal < 1: counts, whose noise is known
    counts = allot_replicas(robust, num_slots, num_ranks)
    # Min-max's counts may put more large replicas than ranks where a few experts carry the
    # load, and no search from there parks the surplus (a replica moved alone gains nothing
    # while another stays): where its plan stops short of the search's goal (below it, a
    # better PAR on the estimate is not a better plan) and the packable allotment differs
    # (on no layer of the DeepSeek-V3 workloads at 32x9 and 64x5), that is searched too, the
    # better kept.
    min_max = counts.copy()
    row, enough = _searched(
        lpt_place(w, counts, num_ranks), counts, mean, w, summed, stop, counts_given,
        num_ranks, count_rounds, count_width, count_tol,
    )  # fmt: skip
    par = row_par(row, mean, num_ranks)
    if par > enough:
        packed = allot_packable(robust, num_slots, num_ranks, num_ranks)
        if (packed != min_max).any():
            other, _ = _searched(
                lpt_place(w, packed, num_ranks), packed, mean, w, summed, stop, counts_given,
                num_ranks, count_rounds, count_width, count_tol,
            )  # fmt: skip
            if row_par(other, mean, num_ranks) < par:
                row, counts = other, packed
    if K > 1:
        balance_swaps(row, V, counts, num_ranks, 4 * num_slots)
    if axes.shape[0]:
        # The unseen episodes refine the plan the seen ones chose; they do not choose it.
        # Searched from the start with them, the plan lands in another local optimum, and
        # which one holds for a held-out workload's surprises is a lottery (OLMoE 8x12 lost
        # 0.087 PAR, one layer 1.47 -> 2.13); from the seen optimum a layer changes only by
        # the swaps that pay on seen and unseen together. Those are scored on the rows'
        # peaks: balancing the variance over the unseen axes too re-packs the whole layer
        # around directions a held-out workload may not take.
        U = unseen_ends(w, axes, share, seen, unseen)
        swap_search(row, np.vstack((V, U)), counts, num_ranks, 4 * num_slots, 1e-3, 0.0, 0.0)
    return row, w, V, signal


@kernel
def _scaled(tokens, totals):
    """``tokens [K, E]`` with each row divided by its total ``totals [K]`` (a row without load
    stays 0): :func:`~eplb_rt.algorithms.load.normalise` of the row, bit for bit, given the
    totals numpy sums."""
    K, E = tokens.shape
    out = np.zeros((K, E))
    for k in range(K):
        if totals[k] > 0:
            for e in range(E):
                out[k, e] = tokens[k, e] / totals[k]
    return out


@kernel
def _fresh_plans(  # noqa: PLR0917
    tokens, totals, counts_given, now, spread, unseen, num_slots, num_ranks, count_rounds,
    count_width, count_tol, keep_rows,
):  # fmt: skip
    """:func:`_fresh_plan` of every layer of ``tokens [L, K, E]`` (their episodes; ``totals [L,
    K]`` their sums over the experts; ``now [L, E]``) in one call, each layer's episodes scaled
    as it is planned. Returns ``rows [L, P] int64``, ``w [L, E]``, ``V [L, K + 2, E]`` (layer
    ``j``'s scored rows first, ``num_rows[j]`` of them), ``num_rows [L] int64`` and ``distinct
    [L] bool`` (the layer's episodes are distinct workloads: no sampling noise between them,
    :func:`~.episode_rows.signal_fraction` 1); ``V`` is
    ``[L, 0, E]`` and ``num_rows`` 0 unless ``keep_rows`` (only a re-plan reads them: 2 MB of
    fresh pages in the plan-time case, about a millisecond on a virtual machine)."""
    L, K, E = tokens.shape
    rows = np.empty((L, num_slots), dtype=np.int64)
    shared = np.empty((L, E))
    V = np.zeros((L, K + 2 if keep_rows else 0, E))
    num_rows = np.zeros(L, dtype=np.int64)
    distinct = np.zeros(L, dtype=np.bool_)
    for j in range(L):
        rows[j], shared[j], v, signal = _fresh_plan(
            _scaled(tokens[j], totals[j]), tokens[j], counts_given, now[j], spread, unseen,
            num_slots, num_ranks, count_rounds, count_width, count_tol,
        )  # fmt: skip
        distinct[j] = signal == 1.0
        if keep_rows:
            num_rows[j] = v.shape[0]
            V[j, : v.shape[0]] = v
    return rows, shared, V, num_rows, distinct


def _settle_shares(
    row: np.ndarray,
    prev: np.ndarray,
    now: np.ndarray,
    topo: Topology,
    opts: EquilibriumOptions,
    *,
    budget: int,
) -> np.ndarray:
    """:func:`~.replan_judge.settle` with shares: the previous slots improved by rewrites that open
    a bottleneck for the shares, candidates judged at their best shares."""
    D, S = topo.num_ranks, topo.num_slots_per_rank
    candidates = np.stack([prev, prev, align_row(row, prev, D, now.shape[0])[0]])
    total = now.sum()
    if total > 0 and budget > 0:
        # Gain in load units: the slot's price in PAR times the mean rank load.
        open_bottleneck(candidates[1], now, D, S, budget, opts.move_cost / D * total / D, 4)
    pars = np.array([_shares_par(cand, now, topo) for cand in candidates])
    cost, slowest = opts.move_cost, opts.slowest_rank
    return candidates[cheapest(candidates, pars, prev, cost, D, budget, slowest, opts.lifetime)]


def plan_layers(
    layers: Layers, topo: Topology, opts: EquilibriumOptions
) -> tuple[np.ndarray, np.ndarray | None]:
    """Every planned layer at once: ``(rows [L', P] int64, shares [L', P] or None)``; with a
    placement in force, two or more episodes and no shares, a layer whose re-plan may be
    fitting noise moves only where its moves pay out of sample (:func:`paid_out_of_sample`).
    A placement in force with uneven shares (planned with ``shares``) is kept, shares and all,
    where the uniform plan costs no less: the move walk priced keeping it at even shares."""
    rows, shares = _plan_layers(layers, topo, opts)
    if layers.previous is not None and shares is None and layers.episodes.shape[1] > 1:
        rows = paid_out_of_sample(rows, layers, topo, opts)
    if layers.previous_share is not None and shares is None:
        kept = (layers.previous, layers.previous_share)
        every = np.arange(rows.shape[0])
        rows, shares = cheaper(layers, every, (rows, None), kept, topology=topo, options=opts)
    return rows, shares


def paid_out_of_sample(
    rows: np.ndarray, layers: Layers, topo: Topology, opts: EquilibriumOptions
) -> np.ndarray:
    """``rows [L', P]`` with every layer whose re-plan does not pay out of sample set back to
    its previous slots, or where a placement is expected to serve past the next plan
    (``lifetime > 1``), re-planned over one interval (``lifetime`` 1) and checked alike: the
    candidate taken for the placement's life is dearer than the one that pays most by the next
    plan, and where it does not pay out of sample the cheaper one may.

    A re-plan is judged on the load it was fitted to, where moves that fit the window's sampling
    noise look as good as moves that follow the load. So a changed layer is re-planned on half
    of its episodes (every other one) and judged on the other half, both ways round: its moves
    must lower that half's PAR by more than they cost (as :func:`~.replan_judge.cheapest` prices
    them), on average. Checked are the layers whose episodes differ mostly by sampling noise
    (:func:`~.episode_rows.signal_fraction` under :data:`~.replan_judge._MOSTLY_NOISE`; token counts
    only, the one load whose noise is known) and whose gain on the summed load is within what noise
    alone could show (:func:`~.episode_rows.noise_reach`). Where the episodes differ by more, a
    change seen in one of them (a new task's first request) is the load changing, which a hold-out
    would take for noise.

    DeepSeek-V3 re-planned from 16 steps of 2,000 tokens a layer went from PAR 1.026 to 1.059 on
    the whole workload, moving 12 % of its slots; checked, 1.027 with 0.4 %, while a real phase
    change moves as much as before (BENCHMARKS §3).
    """
    if not layers.counts:
        return rows
    previous = layers.previous
    D, price = topo.num_ranks, (opts.move_cost, opts.slowest_rank)
    suspect = np.flatnonzero(
        noisy_layers(rows, previous, layers.episodes, layers.tokens, layers.load, D, *price)
    )
    if suspect.size == 0:
        return rows
    sub = layers.take(suspect)
    K = sub.episodes.shape[1]
    halves = [sub.of_episodes(np.arange(first, K, 2)) for first in (0, 1)]
    held_out = np.zeros(suspect.size)
    for fit, judge in (halves, halves[::-1]):
        fitted, _ = _plan_layers(fit, topo, opts)
        held_out += layer_gains(fitted, sub.previous, judge.load, D, *price)
    out = rows.copy()
    refused = suspect[held_out <= 0.0]
    out[refused] = previous[refused]
    if opts.lifetime > 1.0 and refused.size:
        short = dataclasses.replace(opts, lifetime=1.0)
        again = layers.take(refused)
        fallback, _ = _plan_layers(again, topo, short)
        out[refused] = paid_out_of_sample(fallback, again, topo, short)
    return out


def _plan_layers(
    layers: Layers, topo: Topology, opts: EquilibriumOptions
) -> tuple[np.ndarray, np.ndarray | None]:
    """:func:`plan_layers` before the check out of sample. Without shares the layers cost one
    numba call in all, three with a placement in force (no GIL between them: the balancer plans
    in a thread next to the serving one, and each return to Python is a hand-off)."""
    D, S, P = topo.num_ranks, topo.num_slots_per_rank, topo.num_slots
    now, prev, tokens = layers.load, layers.previous, layers.tokens
    rounds = (opts.count_rounds, opts.count_width, opts.count_tol)
    settle = prev is not None and not opts.shares  # the one reader of the scored rows
    # The episodes' totals as Layers.episodes sums them, so each layer's scaled episodes are
    # those (made a layer at a time, without a second array of the load's size).
    totals = tokens.sum(axis=2)
    rows, shared, V, num_rows, distinct = _fresh_plans(
        tokens, totals, layers.counts, now, opts.spread, opts.unseen, P, D, *rounds, settle
    )
    budget = slot_budget(opts.max_moved_fraction, P)
    if settle:
        mc, slowest = opts.move_cost, opts.slowest_rank
        margins = noise_margins(rows, tokens, distinct, layers.counts, D)
        # No load chose the slots of the layout before any heat: nothing of it to put back.
        trade = ~blank_layers(prev, now.shape[1], topo)
        settled = settle_layers(
            rows, prev, now, V, num_rows, distinct, D, budget, mc, slowest, opts.lifetime, margins,
            trade,
        )  # fmt: skip
        return settled, None
    if not opts.shares:
        return rows, None
    shares = np.empty(rows.shape)
    for j in range(rows.shape[0]):
        w = shared[j]
        total = w.sum()
        # Rewrites cost a flow per candidate: only worth it when shares leave a real gap.
        if opts.share_rewrites and total > 0:
            if min_max_rank_load(rows[j], w, D, S)[0] * D > total * (1 + opts.count_tol):
                open_bottleneck(rows[j], w, D, S, opts.share_rewrites, 0.0, 4)
        if prev is not None:
            rows[j] = _settle_shares(rows[j], prev[j], now[j], topo, opts, budget=budget)
        row = rows[j]
        if total > 0:
            target, _ = min_max_rank_load(row, w, D, S)
            shares[j] = balanced_slot_shares(row, w, D, S, target * (1 + 1e-12))
        else:
            shares[j] = even_shares(row[None], w.shape[0])[0]
    return rows, shares


@register(
    "equilibrium",
    EquilibriumOptions,
    "ours: episode-robust local search near the bound, moves that pay, optional shares",
    warm_up_options=({}, {"shares": True}),
    layers_fn=plan_layers,
)
def equilibrium(layer: Layer, topo: Topology, opts: EquilibriumOptions):
    """One layer (as :func:`plan_layers` plans it); returns ``row [P] int64`` or
    ``(row, share [P])`` with ``shares``."""
    rows, shares = plan_layers(Layers.of(layer), topo, opts)
    return rows[0] if shares is None else (rows[0], shares[0])
