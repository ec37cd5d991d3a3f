"""``equilibrium``: placements near the lower bound that hold out of sample, with few moves.

Per layer (the search kernels are numba, no GIL):

1. **Robust load.** The history is cut into episodes, each normalised to sum 1 so every episode
   (or workload) weighs the same. Replicas are allotted for ``mean + spread * std`` of each
   expert's episode load, and the placement is scored on every episode at once, each pushed
   ``spread`` times further from the mean than seen -- a placement balanced on every episode is
   balanced on any mix of them, and the push covers workloads a little outside that hull.
   Distinct workloads (three or more) show how far that is: each held out in turn lands some
   number of the others' spreads out along their span (:func:`holdout_reach`), and they are
   pushed no further than the mean of that -- prompt lengths on a curve land beyond its ends,
   task mixes inside their span, and a push fitted to the one misplans the other. The share
   of the spread that is sampling noise keeps the full push, a hedge for new noise in any
   direction: the push is blended by the two shares.
   Where part of the episodes' spread is sampling noise (:func:`signal_fraction`), that part
   of the weight goes to the summed counts: the load the episodes share is then estimated from
   them and scored as one more episode, so planning for noise does not give away the fit to
   what repeats. With ``unseen`` (weight 1 by default), distinct workloads also plan for what
   none of them shows: each held out in turn, the part of its deviation outside the others'
   span (:func:`unseen_axes`) gives more scored episodes, the mean moved both ways along that
   part's axes; they refine the plan the seen episodes chose, by the swaps that lower the sum
   of the peaks of both. Where those parts all lie along one axis (the workloads follow a
   curve), its two ends are scored from the start too (:func:`trend_rows`).
2. **Construct + local search** on the mean load: min-max allotment, LPT placement, pairwise
   swaps and a neighbour search over replica counts (on token counts, only while what it gains
   exceeds what their sampling noise could show: :func:`peak_noise`; where that stops short,
   the same from an allotment that parks surplus replicas of a few hot experts,
   :func:`~eplb_rt.algorithms.replicas.allot_packable`, the better kept; where the episodes differ
   partly by that noise, the swaps too, since the next stage balances the shared load again as
   one of its rows); then swaps that lower the sum over the episodes of the squared rank loads
   (:func:`~eplb_rt.algorithms.local_search.balance_swaps`): every rank pulled to the mean of
   every episode, not only each episode's peak rank. Out of sample that holds better than the
   sum of the episodes' peaks on many ranks (DeepSeek-V3, fresh sampled draws), and it takes
   less than half the time.
3. **Shares** (``shares=True``; off by default: shares fitted to past load lose out of sample):
   the transportation optimum (:mod:`eplb_rt.algorithms.shares`), after rewriting a few slots
   where a rank set still confines too much load.
4. **Moves that pay** (with a previous placement): five candidates per layer -- keep the slots;
   the previous slots improved move by move, best marginal gain per moved slot first (a slot
   rewritten to another expert, or a swap; :func:`~eplb_rt.algorithms.local_search.greedy_moves`),
   a move ranked on the rows the fresh plan is scored on and the summed load together
   (:func:`~eplb_rt.algorithms.episode_moves.greedy_moves_rows`) where there are episodes, so
   that on a short window it does not fit the summed load's sampling noise; the previous slots
   repaired to the walk's PAR on the summed load by moves ranked on the load above it on every
   rank (:func:`~eplb_rt.algorithms.target_repair.repair_to`: the walk relieves the peak rank
   first, and after a phase change takes more slots to a given PAR, or stops short of it); on a
   window of sampled token counts, the previous slots repaired alike to the fresh plan's PAR
   plus what a plan fitted to the window can seem to gain from its noise alone
   (:func:`noise_reach`: where the walk, priced slot by slot against the peak, stops short of
   it); the fresh plan with its ranks relabelled to the previous ones (Hungarian). The two
   repairs see the summed load alone and are kept only where they leave the episodes no less
   balanced than the walk. All are judged on the summed load (and where the episodes are
   distinct workloads, on the scored rows too: :func:`_settle`): the layer takes the least
   ``PAR + move_cost * moved slots / D`` within the budget ``max_moved_fraction * P``. The
   price is per slot *per rank*: ranks receive in parallel, so moving ``D`` slots spread over
   the ``D`` ranks takes one expert's transfer, and with a fixed batch per rank a unit of PAR
   buys the same compute at any ``D``. In the planning pipeline (``slowest_rank``) the
   candidates are judged by the time their migration takes, as its gate prices it:
   ``move_cost`` times the most experts one rank receives. Where a placement is expected to
   serve ``lifetime`` plans, a candidate whose moves pay before the next plan is judged by
   ``PAR + price / lifetime`` (where the episodes show the load held over the window, for as
   long as it holds: the least PAR that pays). The move walk keeps, of its prefixes, the one
   this judge would take on the summed load, and stops once the slots it has moved leave no
   later one to take (kept by their price per slot, a prefix could send three experts to one
   rank, dearer by the slowest rank than the PAR it bought, where its first moves paid). The
   candidate taken then has its moves traded for fewer at no higher peak on the summed load
   (:func:`~eplb_rt.algorithms.move_trades.trade_moves`: a moved slot put back, and the
   overflow that leaves repaired by moves that move no more slots), where that costs no more
   and leaves the episodes no less balanced, but not on a layer in force at a layout before
   any heat (:func:`~eplb_rt.algorithms.starting.blank_layers`: no load chose the slots a
   put-back would keep; the slack it takes from the other ranks held the next workload,
   BENCHMARKS §3 "Sixty-seventh session"). With two episodes or more, a changed layer must also
   pay out of sample, re-planned on half of them and judged on the other half
   (:func:`paid_out_of_sample`).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from eplb_rt.algorithms.align import align_order, align_row
from eplb_rt.algorithms.episode_moves import greedy_moves_rows
from eplb_rt.algorithms.jacobi import reflected_basis, row_reflectors, row_svd
from eplb_rt.algorithms.jit import kernel
from eplb_rt.algorithms.keeping import cheaper
from eplb_rt.algorithms.local_search import _moved_slots, balance_swaps, greedy_moves, swap_search
from eplb_rt.algorithms.metrics import row_par, row_rank_loads
from eplb_rt.algorithms.move_trades import DEPTH as TRADE_DEPTH
from eplb_rt.algorithms.move_trades import trade_moves
from eplb_rt.algorithms.packing import counts_from_row, lpt_place
from eplb_rt.algorithms.prices import judged_cost, move_price, slot_budget
from eplb_rt.algorithms.registry import Layer, Layers, Options, option, register
from eplb_rt.algorithms.replicas import LPT, allot_packable, allot_replicas, count_search
from eplb_rt.algorithms.shares import balanced_slot_shares, min_max_rank_load, open_bottleneck
from eplb_rt.algorithms.starting import blank_layers
from eplb_rt.algorithms.sums import column_mean, column_std, column_sum, pairwise_sum
from eplb_rt.algorithms.target_repair import repair_to
from eplb_rt.placement import Topology, even_shares

_TAU_MIN = 1e-3
"""Least temperature of the smooth peak that ranks moves, as a fraction of the mean rank load
(it takes over below PAR ``1 + _TAU_MIN / _TAU_SHARE``): there the smooth peak exceeds the true
one by at most ``_TAU_MIN * log(D)`` in PAR."""

_TAU_SHARE = 1.0
"""... and its temperature is at least this share of the peak's excess over the mean: a rank
weighs ``exp(-(peak - load) / temperature)``, so at the whole excess a rank at the mean still
weighs ``1/e`` of the peak, and a move that lowers the second rank is progress while the first
stays. Against a tenth of the excess (until the sixty-first session): ESFT's task switches at
the default price 1.0058 moving 15.2 % of the slots (1.0083 / 18.0 %), after a phase change of
sigma 1.5 PAR 1.01 for about 21 % (23 %), DeepSeek-V3's prefill re-plans a few ten-thousandths
of PAR higher at equal slots; and the runtime's first plan at decode sizes no longer stalls far
from balance (BENCHMARKS §3, "Sixtieth session" and "Sixty-first session")."""

_RANK_TOL = 1e-9
"""Singular values under this fraction of the episodes' norm (their root sum of squares) are
rounding, not a direction."""

_TINY = 1e-300

_UNSEEN_SIGNAL = 0.5
"""Plan for what no episode shows only where most of it is not sampling noise."""

_MOSTLY_NOISE = 0.5
"""A re-plan is checked out of sample where less than this share of its episodes' spread is
signal (:func:`paid_out_of_sample`): where most of it is sampling noise."""

_NOISE_FLOOR = 0.01
"""Sampling noise under this share of the episodes' spread is taken as none."""

_TREND_AGREEMENT = 0.8
"""How far the hold-outs' residuals must agree on one axis for :func:`trend_rows` (0: no more
than ``r`` equal axes, 1: all along one). DeepSeek-V3's prefill workloads (one prompt length
each) agree at 0.9 in the median layer, the task and domain mixes of ESFT, gpt-oss and OLMoE at
0.1-0.6 (BENCHMARKS §3)."""


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
        count_tol: the count search stops once the PAR is within this of 1 (on token counts,
            also once the PAR or a round's gain is within their sampling noise).
        spread: plan for deviations from the mean ``spread`` times those seen (allotment at
            ``mean + spread * std``; the swaps' episodes pushed that far from the mean); where
            the episodes are three or more distinct workloads, at most as far as a held-out
            one lands (:func:`holdout_reach`; blended by the share of their spread that is
            workloads where part of it is sampling noise).
        unseen: weight (one episode's = 1) of more scored episodes: the mean moved both ways
            along :func:`unseen_axes`, the part of a workload's deviation that the others do
            not span. Only where the episodes are distinct workloads (no sampling noise seen);
            the swaps then start from the plan scored on the seen episodes. Where those parts
            agree on one axis, also the weight of :func:`trend_rows` in the first search.
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


@kernel
def sampling_noise(W, volume):
    """The squared distance sampling alone puts between an episode and its workload's shares.

    ``W [K, E] float64``: episodes scaled to sum 1; ``volume [K] float64``: the counts each was
    summed from, or empty when the load is not counts (its noise is unknown: 0). ``N`` counts
    drawn one by one put a variance of ``w (1 - w) / N`` on an expert's share ``w`` (top-k
    routing never draws an expert twice for a token, so this bounds the noise from above).
    """
    K = volume.shape[0]
    if K == 0:
        return 0.0
    w = column_mean(W)
    inverse = np.empty(K)
    for k in range(K):
        inverse[k] = 1.0 / max(volume[k], 1.0)
    return pairwise_sum(w * (1.0 - w)) * (pairwise_sum(inverse) / K)


@kernel(inline=True)
def _volumes(tokens):
    """``[K]``: the counts each episode of ``tokens [K, E]`` was summed from."""
    volume = np.empty(tokens.shape[0])
    for k in range(tokens.shape[0]):
        volume[k] = pairwise_sum(tokens[k])
    return volume


@kernel
def signal_fraction(W, noise):
    """The share of the episodes' spread around their mean that is not sampling noise, in [0, 1].

    ``W [K, E] float64``: episodes scaled to sum 1; ``noise``: their :func:`sampling_noise`
    (0 where it is unknown). No noise, or one episode: 1.
    """
    K = W.shape[0]
    if K < 2 or noise <= 0.0:
        return 1.0
    w = column_mean(W)
    distances = np.empty(K)
    for k in range(K):
        d = W[k] - w
        distances[k] = pairwise_sum(d * d)
    spread = pairwise_sum(distances) / K
    if spread <= 0.0 or noise < _NOISE_FLOOR * spread:
        return 1.0
    return max(1.0 - noise / spread, 0.0)


@kernel
def unseen_axes(W):
    """What each episode of ``W [K, E] float64`` (``K >= 2``) shows that the others do not.

    Each episode is held out in turn: its deviation from the others' mean, less its projection
    on the span of their deviations, is what a workload not among them would have added. A plan
    fitted to the episodes (even pushed from their mean) is blind to that part. Returns the
    principal axes of these residuals, ``[r, E] float64`` (each scaled to the root mean square
    of the residuals along it; signs arbitrary), and ``[r] float64``, each axis's share of the
    residuals' energy (summing to 1; ``r = 0`` when every episode lies in the others' span).
    Plain loops (:mod:`~eplb_rt.algorithms.jacobi`), not LAPACK: every rank of an engine that
    plans on each rank gets the same bits on any CPU.
    """
    residuals, reflectors, tol = _unseen_residuals(W)
    return _principal_axes(residuals, reflected_basis(reflectors), tol)


@kernel(inline=True)
def _episode_span(W):
    """The episodes ``W [K, E]`` in their span: ``(C [K, m], V [m, E], tol)``, their coordinates
    in an orthonormal basis of it and its reflectors (:func:`~eplb_rt.algorithms.jacobi.
    row_reflectors`), so decompositions are K x K, not K x E; and the length under which a
    direction is rounding against the episodes themselves. (Their norm bounds the largest
    singular value within a factor sqrt(K), and costs no decomposition.)"""
    C, reflectors = row_reflectors(W)
    return C, reflectors, _RANK_TOL * max(np.sqrt(pairwise_sum(C * C)), _TINY)


@kernel(inline=True)
def _centred_svd(W):
    """The centred episodes ``W [K, E]`` decomposed in their span: ``(U, s, Vt, live, ones,
    reflectors, tol)``, ``C - mean(C) = U diag(s) Vt`` (:func:`_episode_span`'s ``C``), ``live``
    singular values above ``tol``, and ``ones [K - live]`` the direction (1, ..., 1) that
    centring leaves among U's dead columns, in their coordinates (unit; zero where there is no
    dead column)."""
    K = W.shape[0]
    C, reflectors, tol = _episode_span(W)
    U, s, Vt = row_svd(C - column_mean(C))
    live = 0
    while live < K and s[live] > tol:
        live += 1
    dead = K - live
    ones = np.zeros(dead)
    for k in range(dead):
        for i in range(K):
            ones[k] += U[i, live + k]
    size = np.sqrt(pairwise_sum(ones * ones))
    if size > 0.0:  # no dead column: every episode reaches a direction of its own
        for k in range(dead):
            ones[k] /= size
    return U, s, Vt, live, ones, reflectors, tol


@kernel(inline=True)
def _own_direction(U, s, live, ones, i, tol):  # noqa: PLR0917
    """``(own, |Y_i|^2)``: whether held-out episode ``i`` leaves the others' span one dimension
    short (it reaches a direction of its own, along the dual vector ``Y_i = U_i / s`` of the live
    directions), as :func:`_unseen_residuals` explains; ``|Y_i|^2`` is ``G^+_ii``."""
    diagonal = 0.0
    for k in range(live):
        diagonal += (U[i, k] / s[k]) ** 2
    dead = ones.shape[0]
    along = 0.0
    for k in range(dead):
        along += U[i, live + k] * ones[k]
    rest = 0.0
    for k in range(dead):
        t = U[i, live + k] - along * ones[k]
        rest += t * t
    return rest <= tol * tol * diagonal, diagonal


@kernel
def _unseen_residuals(W):
    """The residuals of :func:`unseen_axes` before their axes: ``(R [K, m], V [m, E], tol)``,
    row ``i`` of ``R`` episode ``i``'s residual in the basis of the episodes' span that the
    reflectors ``V`` give (:func:`~eplb_rt.algorithms.jacobi.row_reflectors`), and the
    tolerance under which a singular value is rounding."""
    K = W.shape[0]
    U, s, Vt, live, ones, reflectors, tol = _centred_svd(W)
    m = Vt.shape[1]
    residuals = np.zeros((K, m))
    if live == 0:
        return residuals, reflectors, tol
    # Held out, episode i leaves the others' span one dimension short of all episodes' span,
    # or not at all. If short, its residual lies along the dual vector Y_i of the centred
    # episodes X (Gram matrix G = U s^2 U^T, so Y = G^+ X = U s^-1 Vt on the live directions):
    # Y_i . (X_j - X_k) = 0 for j, k != i, and d_i = X_i K / (K - 1) meets it with
    # d_i . Y_i = 1, so the residual is Y_i / G^+_ii. To first order, the others' smallest
    # singular value is e_i / sqrt(G^+_ii), with e_i the norm of row i of U's dead columns
    # less the direction (1, ..., 1) / sqrt(K) that centring leaves among them: exactly zero
    # for episodes in general position (the usual case: that direction is the one dead
    # column), and taken as zero under ``tol``, as a decomposition of each hold-out would.
    # So one decomposition serves all K hold-outs, and e_i is a sum of squares, with no
    # cancellation (a Gram matrix's eigenvalues lose the small singular values).
    for i in range(K):
        own, diagonal = _own_direction(U, s, live, ones, i, tol)
        if not own:
            continue  # the others span all that episode i shows: no residual
        for k in range(live):
            coef = U[i, k] / s[k] / diagonal
            for x in range(m):
                residuals[i, x] += coef * Vt[k, x]
    return residuals, reflectors, tol


@kernel
def _principal_axes(residuals, basis, tol):
    """Axes ``[r, E]`` and energy shares ``[r]`` of ``residuals [K, m]`` (coordinates in
    ``basis [m, E]``), as :func:`unseen_axes` returns them."""
    K, m = residuals.shape
    _, sv, vt = row_svd(residuals)
    r = 0
    while r < K and sv[r] > tol:
        r += 1
    axes = np.zeros((r, basis.shape[1]))
    share = np.empty(r)
    total = 0.0
    for k in range(r):
        share[k] = sv[k] * sv[k]
        total += share[k]
        size = sv[k] / np.sqrt(K)
        for j in range(m):
            coef = size * vt[k, j]
            for e in range(basis.shape[1]):
                axes[k, e] += coef * basis[j, e]
    for k in range(r):
        share[k] /= max(total, _TINY)
    return axes, share


@kernel
def unseen_signal(W, noise):
    """:func:`unseen_axes` of ``W [K, E]`` where they are not mostly sampling noise (``noise``:
    the episodes' :func:`sampling_noise`): ``(axes [r, E], share [r], seen)``, ``seen`` the
    part of their energy that is not noise; ``r = 0`` where that part is under half."""
    K, E = W.shape
    residuals, reflectors, tol = _unseen_residuals(W)
    # A held-out episode's residual carries its own noise and that of the others' mean. Its
    # energy is the residuals' (an orthonormal basis keeps lengths; the axes drop only rounding):
    # where that says noise by a margin far above rounding, the axes are not formed at all (most
    # layers of sampled draws of the same workloads).
    most = pairwise_sum(residuals * residuals) / K * (1.0 + 1e-9)
    if most <= 0.0 or 1.0 - noise * K / (K - 1) / most < _UNSEEN_SIGNAL:
        return np.empty((0, E)), np.empty(0), 0.0
    axes, share = _principal_axes(residuals, reflected_basis(reflectors), tol)
    r = axes.shape[0]
    energy = pairwise_sum(axes * axes) if r else 0.0
    seen = 1.0 - noise * K / (K - 1) / energy if energy > 0.0 else 0.0
    if seen < _UNSEEN_SIGNAL:
        return np.empty((0, E)), np.empty(0), 0.0
    return axes, share, seen


@kernel
def _unseen_ends(w, axes, share, seen, weight):
    """``[2r, E]``: the mean ``w [E]`` moved both ways along each of ``axes [r, E]``, scaled to
    sum 1 and weighed ``weight * seen * share``."""
    r, E = axes.shape
    ends = np.empty((2 * r, E))
    for k in range(2 * r):
        sign = 1.0 if k < r else -1.0
        end = np.maximum(w + sign * axes[k % r], 0.0)
        total = pairwise_sum(end)
        ends[k] = 0.0
        if total > 0.0:
            ends[k] = (weight * seen * share[k % r]) * (end / total)
    return ends


@kernel
def unseen_episodes(W, w, noise, weight):
    """``[2r, E]``: the mean ``w`` moved both ways along each of :func:`unseen_axes`, scaled to
    sum 1 and weighed ``weight`` times the axis's share and the part of the unseen deviation
    that is not sampling noise; none (``r = 0``) when that part is mostly noise: the episodes
    are draws of workloads that they all show, and more noise to plan for adds nothing."""
    axes, share, seen = unseen_signal(W, noise)
    return _unseen_ends(w, axes, share, seen, weight)


@kernel
def trend_rows(w, axes, share, spread, weight):
    """``[2, E]`` or ``[0, E]``: more rows for the first search where the hold-outs agree.

    ``axes [r, E]``, ``share [r]``: :func:`unseen_axes` of ``K >= 3`` distinct workloads. Where
    their residuals lie along one axis (its share beyond that of ``r`` equal axes, as a
    fraction of the most it can be, at least :data:`_TREND_AGREEMENT`), every workload held out
    left the others' span the same way: the workloads follow a curve (prompt lengths, batch
    sizes), and one beyond them goes on along it. The pushed episodes cover that axis only as
    far as the seen ones bend, which is short of what each hold-out shows; these rows are the
    mean moved both ways along it to the hold-outs' reach, ``spread`` times like the episodes,
    each summing to ``weight``. Residuals in several directions (each workload its own) give
    none: hedging all of them would spread the search thin.
    """
    r, E = axes.shape
    if r == 0 or (r > 1 and (share[0] * r - 1.0) / (r - 1.0) < _TREND_AGREEMENT):
        return np.empty((0, E))
    return _unseen_ends(w, spread * axes[:1], np.ones(1), 1.0, weight)


@kernel
def holdout_reach(W):
    """How far a workload not among ``W [K, E] float64`` lands, along the others' span, in
    units of their spread (NaN where no hold-out leaves the others a spread, e.g. ``K < 3``).

    Each episode is held out in turn: the part of its deviation from the others' mean that the
    others' deviations span, over the root mean square of those deviations along that part
    (``2`` where it lands twice as far out as they lie); the mean over the hold-outs. Workloads
    on a curve land beyond the ends (DeepSeek-V3's prompt lengths about 2), task and domain mixes
    near their span (gpt-oss, OLMoE 1.2-1.4) or near the others' mean (ESFT's tasks about 0.4).
    One decomposition of the centred episodes serves every hold-out (as in
    :func:`_unseen_residuals`), in plain loops in the episodes' span (:func:`_episode_span`):
    the same bits on any CPU, and 16 episodes cost about half what a basis per hold-out did.
    """
    K = W.shape[0]
    if K < 3:
        return np.nan
    U, s, _, live, ones, _, tol = _centred_svd(W)
    if live == 0:
        return np.nan  # every episode the same: no spread to measure in
    # The centred episodes are X = U diag(s) Vt; in the basis of Vt's live rows, episode i is
    # X_i = U_i * s, and its deviation from the others' mean d = X_i K / (K - 1). The others'
    # deviations X_j + X_i / (K - 1) span all live directions but one where episode i reaches a
    # direction of its own (the dual vector Y_i = U_i / s, found as _unseen_residuals finds it):
    # their span is then Y_i's complement, and d's part in it is d less its projection on Y_i.
    c = K / (K - 1.0)
    p = np.empty(live)
    total, n = 0.0, 0
    for i in range(K):
        own, diagonal = _own_direction(U, s, live, ones, i, tol)
        if own and live == 1:
            continue  # the others coincide: no spread to measure in
        dy = 0.0  # d . Y_i
        for k in range(live):
            p[k] = c * U[i, k] * s[k]
            dy += p[k] * (U[i, k] / s[k])
        if own:
            for k in range(live):
                p[k] -= dy / diagonal * (U[i, k] / s[k])
        inside = 0.0
        for k in range(live):
            inside += p[k] * p[k]
        scatter = 0.0  # the sum over the others of (deviation . p)^2
        for j in range(K):
            if j != i:
                x = 0.0
                for k in range(live):
                    x += (U[j, k] + U[i, k] / (K - 1.0)) * s[k] * p[k]
                scatter += x * x
        n += 1
        if inside > tol * tol and scatter > 0.0:
            # |p| over the others' root mean square along p / |p|.
            total += inside / np.sqrt(scatter / (K - 1))
    return total / n if n else np.nan


@kernel
def scored_rows(W, w, spread, signal):
    """``[K', E] float64``: the rows a plan is scored on, from episodes ``W [K, E]`` (each
    summing 1, ``K >= 2``) and their estimated shared load ``w [E]``.

    Every episode pushed away from the mean by the factor ``spread``, so the plan holds for
    deviations larger than those seen; where part of their spread is sampling noise
    (``signal < 1``), the shared load as one more row, weighed as the pushed noise is: the fit
    to what repeats counts as much as the noise planned for (``K' = K + 1``).
    """
    K, E = W.shape
    V = np.zeros((K + (signal < 1.0), E))
    for k in range(K):
        pushed = np.maximum(w + spread * (W[k] - w), 0.0)
        total = pairwise_sum(pushed)
        if total > 0.0:
            V[k] = pushed / total
    if signal < 1.0:
        V[K] = (spread * (1.0 - signal) * K) * w
    return V


@kernel(inline=True)
def _searched(  # noqa: PLR0917
    row, counts, mean, w, summed, stop, counts_given, num_ranks, count_rounds, count_width,
    count_tol,
):  # fmt: skip
    """Swaps, then the replica-count search, on the shared load ``mean [1, E]`` (``w [E]``)
    from ``row [P]`` and its ``counts [E]`` (updated in place): ``(row, enough)``, the searched
    row and the PAR the count search stopped at (or below).

    Counts (and swaps) are searched while the mean load's PAR, and each round's gain, are
    larger than what sampling noise in that load could show: past that, a better PAR on the
    estimate is not a better plan. The swaps on the shared load alone stop there only where the
    episodes differ partly by noise (``stop``): the variance stage then scores the shared load
    as a row of its own (scored_rows) and balances it again with every episode. Otherwise (one
    episode; distinct workloads, whose variance stage lands in the optimum nearest its start)
    they go to the end. The noise is the peak rank's (``summed [E]``: the token counts) where
    the searches start: the packing's where the swaps stop at it (so the count search stops
    where they did), the swaps' end where they do not."""
    P = row.shape[0]
    noise = peak_noise(row, summed, num_ranks) if stop else 0.0
    swap_enough = 1.0 + max(count_tol, noise) if stop else 0.0
    swap_search(row, mean, counts, num_ranks, 4 * P, 1e-3, 0.0, swap_enough)
    if counts_given and not stop:
        noise = peak_noise(row, summed, num_ranks)
    enough = 1.0 + max(count_tol, noise)
    row = count_search(
        LPT, row, mean, w, np.zeros((1, 1)), 0.0, counts, num_ranks, count_rounds, count_width,
        4 * P, enough, noise, swap_enough,
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
    the load the episodes share, ``V`` the rows the first search scored (:func:`scored_rows`,
    then any :func:`trend_rows`; none for one episode), ``signal`` the episodes'
    :func:`signal_fraction`.
    """
    K, E = W.shape
    volume = _volumes(tokens) if counts_given else np.empty(0)
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
        U = _unseen_ends(w, axes, share, seen, unseen)
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
    :func:`signal_fraction` 1); ``V`` is
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


@kernel(inline=True)
def _repaired_row(prev, now, V, num_ranks, budget, move_cost, slowest_rank, lifetime):  # noqa: PLR0917
    """The previous slots improved move by move, moves ranked by their gain per slot at
    ``move_cost / D`` a slot; of the walk's prefixes, the one :func:`_cheapest` would take on
    ``now`` alone (``move_cost``, ``slowest_rank``, ``lifetime``; where the episodes are
    distinct workloads, :func:`_settle` judges the candidates on them too).

    ``now [E]``: the load the candidates are judged on; ``V [K, E]``: the rows the fresh plan
    is scored on (none for one episode: the walk ranks its moves on ``now`` alone)."""
    D = num_ranks
    total = pairwise_sum(now)
    if total <= 0 or budget <= 0:
        return prev
    slot_cost = move_cost / D
    if V.shape[0] == 0:
        tau_one = _TAU_MIN * total / D
        return greedy_moves(
            prev, now, D, budget, slot_cost, tau_one, _TAU_SHARE, slowest_rank, lifetime
        )[0]
    # On a short window the summed load is mostly sampling noise: a walk on it alone fits the
    # noise. Its moves are ranked on the scored rows too, the load it is judged on weighing as
    # much as all of them together, so a move must pay on the episodes as well as on the sum.
    # (Rows without load have no peak to lower.)
    K, E = V.shape
    live = np.zeros(K, dtype=np.bool_)
    for k in range(K):
        live[k] = pairwise_sum(V[k]) > 0
    rows = np.empty((live.sum() + 1, E))
    rows[:-1] = V[live]
    rows[-1] = pairwise_sum(V) * now
    tau_min = np.empty(rows.shape[0])
    for k in range(rows.shape[0]):
        tau_min[k] = _TAU_MIN * pairwise_sum(rows[k]) / D
    judge = rows.shape[0] - 1
    return greedy_moves_rows(
        prev, rows, judge, D, budget, slot_cost, tau_min, _TAU_SHARE, slowest_rank, lifetime
    )[0]


@kernel(inline=True)
def _settle(  # noqa: PLR0917
    row, prev, now, V, distinct, num_ranks, budget, move_cost, slowest_rank, lifetime, margin, trade
):  # fmt: skip
    """Step 4 of the module's list without shares, in one call: of the previous slots, those
    improved by :func:`_repaired_row`, those repaired to its PAR on ``now``
    (:func:`~eplb_rt.algorithms.target_repair.repair_to`), where ``margin >= 0`` those repaired
    to the fresh ``row``'s PAR on ``now`` plus ``margin`` (:func:`_noise_margins`), and the
    fresh ``row`` aligned to them, the one that costs least (:func:`_cheapest`) within
    ``budget`` moved slots, PAR on ``now [E]``, or where the episodes are ``distinct``
    workloads, the mean PAR on ``now`` and the scored rows ``V [K, E]``; where ``trade``, its
    moves then traded for fewer (:func:`_traded`). Where a placement outlives the next plan
    (``lifetime > 1``) and the episodes differ partly by sampling noise, it is judged over an
    endless life (``lifetime`` ``inf``).

    Distinct workloads (prompt lengths, tasks; no sampling noise between them) say that the next
    one will differ again. A patch that fits their sum leaves replicas where the placement in
    force had them, which the sum does not miss and another workload does: on the DeepSeek-V3
    aggregates, planned on two or three and scored on the next, it gave PAR 1.121 / 1.132
    against 1.104 / 1.101 judged on the rows too (BENCHMARKS §5). Where episodes differ partly
    by noise (per-step counts, requests), the rows hold that noise, and judged on them every
    re-plan would look worth its moves."""
    D = num_ranks
    if lifetime > 1.0 and V.shape[0] > 0 and not distinct:
        # Episodes that differ partly by sampling noise show a load that held over the
        # window: a placement lasts as long as it holds (see _cheapest).
        lifetime = np.inf
    count = 5 if margin >= 0.0 else 4
    candidates = np.empty((count, prev.shape[0]), dtype=np.int64)
    candidates[0] = prev
    candidates[1] = _repaired_row(prev, now, V, D, budget, move_cost, slowest_rank, lifetime)
    candidates[2] = row[align_order(row, prev, D, now.shape[0])]
    judged = now.reshape((1, now.shape[0]))
    candidates[3] = repair_to(prev, now, D, row_par(candidates[1], judged, D), budget)
    if margin >= 0.0:
        # On a window of sampled draws, the fresh plan's balance as far as the window can tell
        # it (its PAR plus what a fitted plan can seem to gain from noise), reached from the
        # slots in force: where the walk, priced slot by slot against the peak, stops above it
        # (a first plan from the starting layout at decode sizes), it moves fewer slots than
        # the fresh plan (BENCHMARKS §3, "Fifty-fourth session"; still ahead of the walk at
        # the whole excess, "Sixty-first session").
        target = row_par(candidates[2], judged, D) + margin
        candidates[4] = repair_to(prev, now, D, target, budget)
    if V.shape[0] > 0:
        # The repairs see now alone: on a window of episodes they must not leave them less
        # balanced than the walk, which ranks its moves on them so as not to fit now's noise.
        walk_v = row_par(candidates[1], V, D)
        for c in range(3, count):
            if row_par(candidates[c], V, D) > walk_v:
                candidates[c] = candidates[1]
    if distinct and V.shape[0] > 0:
        judged = np.vstack((V, judged))
    pars = np.empty(count)
    for i in range(count):
        pars[i] = row_par(candidates[i], judged, D)
    best = _cheapest(candidates, pars, prev, move_cost, D, budget, slowest_rank, lifetime)
    if best == 0 or not trade:
        return candidates[best]
    return _traded(
        candidates[best], pars, prev, now, V, judged, D, move_cost, slowest_rank, lifetime
    )


@kernel(inline=True)
def _traded(row, pars, prev, now, V, judged, num_ranks, move_cost, slowest_rank, lifetime):  # noqa: PLR0917
    """``row``, the candidate :func:`_settle` took, with its moves traded for fewer at no higher
    peak on ``now`` (:func:`~eplb_rt.algorithms.move_trades.trade_moves`), where that leaves
    the episodes ``V`` no less balanced and costs no more as :func:`_cheapest` prices it (so
    by the slowest rank's transfers, fewer slots that leave that rank's unchanged are taken
    too: fewer bytes in flight). ``pars[0]``: the PAR in force on ``judged``."""
    D = num_ranks
    traded, trades = trade_moves(row, prev, now, D, TRADE_DEPTH)
    if trades == 0:
        return row
    if V.shape[0] > 0:
        # Each episode's peak held, not only their mean: a trade fills ranks up to the peak,
        # and an episode whose peak rose says the next workload's may too.
        peaks = row_rank_loads(row, V, D)
        peaks_traded = row_rank_loads(traded, V, D)
        for k in range(V.shape[0]):
            if peaks_traded[k].max() > peaks[k].max() * (1.0 + 1e-12):
                return row
    cost = _row_cost(row, prev, judged, D, move_cost, slowest_rank, pars[0], lifetime)
    cost_traded = _row_cost(traded, prev, judged, D, move_cost, slowest_rank, pars[0], lifetime)
    return traded if cost_traded <= cost else row


@kernel(inline=True)
def _row_cost(row, prev, judged, num_ranks, move_cost, slowest_rank, in_force, lifetime):  # noqa: PLR0917
    """``row``'s cost as :func:`_cheapest` prices a candidate (PAR on ``judged``, its moves from
    ``prev``; ``in_force``: the PAR of ``prev``)."""
    moves = _moved_slots(row, prev)
    price = move_price(row, prev, moves, num_ranks, move_cost, slowest_rank)
    return judged_cost(row_par(row, judged, num_ranks), price, in_force, lifetime)


@kernel
def _cheapest(candidates, pars, prev, move_cost, num_ranks, budget, slowest_rank, lifetime):  # noqa: PLR0917
    """Which of ``candidates [C, P] int64`` (their PARs ``pars [C]``) costs least, ``PAR +``
    :func:`~eplb_rt.algorithms.prices.move_price` ``/ lifetime``, of those within ``budget``
    moved slots whose moves pay at the full price (``PAR + price`` below ``candidates[0]``'s
    PAR): the first of costs equal within 1e-12. ``candidates[0]`` must be ``prev`` (always
    within budget).

    With ``lifetime`` 1 that is the least ``PAR + price``. Longer, a candidate that pays before
    the next plan is judged by what it buys over the placement's life: from a layout chosen
    without load, a patch that pays a little more before the next plan than the fresh plan
    would otherwise stay in force, since no later plan can pay for the fresh plan's moves from
    it within one interval (moves from the patch cost at least the fresh plan's price less the
    patch's), while the fresh plan's lower PAR would have paid them back. With ``lifetime``
    ``inf`` it is the least PAR that pays: the gate moves a layer again only where a move pays
    before the next plan, so on a load that holds the patch's higher PAR would stay as long as
    the load does (:func:`_settle` takes that life where the episodes show the load held over
    the window)."""
    best, best_cost = 0, pars[0]
    for i in range(1, candidates.shape[0]):
        moves = _moved_slots(candidates[i], prev)
        price = move_price(candidates[i], prev, moves, num_ranks, move_cost, slowest_rank)
        cost = judged_cost(pars[i], price, pars[0], lifetime)
        if moves <= budget and cost < best_cost - 1e-12:
            best, best_cost = i, cost
    return best


@kernel
def _settle_layers(  # noqa: PLR0917
    rows, prev, now, V, num_rows, distinct, num_ranks, budget, move_cost, slowest, lifetime,
    margins, trade,
):  # fmt: skip
    """:func:`_settle` of every layer (``rows``, ``prev [L, P]``, ``now [L, E]``; ``V``,
    ``num_rows`` and ``distinct`` as :func:`_fresh_plans` gives them, ``margins [L]`` as
    :func:`_noise_margins` does, ``trade [L] bool`` whether a layer's moves are traded) in one
    call: ``[L, P] int64``."""
    out = np.empty_like(prev)
    for j in range(rows.shape[0]):
        scored = np.ascontiguousarray(V[j, : num_rows[j]])
        out[j] = _settle(
            rows[j], prev[j], now[j], scored, distinct[j], num_ranks, budget, move_cost, slowest,
            lifetime, margins[j], trade[j],
        )  # fmt: skip
    return out


def _settle_shares(
    row: np.ndarray,
    prev: np.ndarray,
    now: np.ndarray,
    topo: Topology,
    opts: EquilibriumOptions,
    *,
    budget: int,
) -> np.ndarray:
    """:func:`_settle` with shares: the previous slots improved by rewrites that open a
    bottleneck for the shares, candidates judged at their best shares."""
    D, S = topo.num_ranks, topo.num_slots_per_rank
    candidates = np.stack([prev, prev, align_row(row, prev, D, now.shape[0])[0]])
    total = now.sum()
    if total > 0 and budget > 0:
        # Gain in load units: the slot's price in PAR times the mean rank load.
        open_bottleneck(candidates[1], now, D, S, budget, opts.move_cost / D * total / D, 4)
    pars = np.array([_shares_par(cand, now, topo) for cand in candidates])
    cost, slowest = opts.move_cost, opts.slowest_rank
    return candidates[_cheapest(candidates, pars, prev, cost, D, budget, slowest, opts.lifetime)]


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
    must lower that half's PAR by more than they cost (as :func:`_cheapest` prices them), on
    average. Checked are
    the layers whose episodes differ mostly by sampling noise (:func:`signal_fraction` under
    :data:`_MOSTLY_NOISE`; token counts only, the one load whose noise is known) and whose gain
    on the summed load is within what noise alone could show (:func:`noise_reach`). Where the
    episodes differ by more, a change seen in one of them (a new task's first request) is the
    load changing, which a hold-out would take for noise.

    DeepSeek-V3 re-planned from 16 steps of 2,000 tokens a layer went from PAR 1.026 to 1.059 on
    the whole workload, moving 12 % of its slots; checked, 1.027 with 0.4 %, while a real phase
    change moves as much as before (BENCHMARKS §3).
    """
    if not layers.counts:
        return rows
    previous = layers.previous
    D, price = topo.num_ranks, (opts.move_cost, opts.slowest_rank)
    suspect = np.flatnonzero(
        _noisy_layers(rows, previous, layers.episodes, layers.tokens, layers.load, D, *price)
    )
    if suspect.size == 0:
        return rows
    sub = layers.take(suspect)
    K = sub.episodes.shape[1]
    halves = [sub.of_episodes(np.arange(first, K, 2)) for first in (0, 1)]
    held_out = np.zeros(suspect.size)
    for fit, judge in (halves, halves[::-1]):
        fitted, _ = _plan_layers(fit, topo, opts)
        held_out += _gains(fitted, sub.previous, judge.load, D, *price)
    out = rows.copy()
    refused = suspect[held_out <= 0.0]
    out[refused] = previous[refused]
    if opts.lifetime > 1.0 and refused.size:
        short = dataclasses.replace(opts, lifetime=1.0)
        again = layers.take(refused)
        fallback, _ = _plan_layers(again, topo, short)
        out[refused] = paid_out_of_sample(fallback, again, topo, short)
    return out


@kernel(inline=True)
def _gain(row, previous, load, num_ranks, move_cost, slowest_rank):  # noqa: PLR0917
    """What ``row [P]`` gains over ``previous [P]`` on ``load [1, E]``: the fall of PAR less
    what its moves cost (:func:`~eplb_rt.algorithms.prices.move_price`)."""
    fall = row_par(previous, load, num_ranks) - row_par(row, load, num_ranks)
    moves = _moved_slots(row, previous)
    return fall - move_price(row, previous, moves, num_ranks, move_cost, slowest_rank)


@kernel
def _gains(rows, previous, load, num_ranks, move_cost, slowest_rank):  # noqa: PLR0917
    """``[L]``: :func:`_gain` of each layer of ``rows``, ``previous [L, P]`` on ``load [L, E]``."""
    out = np.empty(rows.shape[0])
    for j in range(rows.shape[0]):
        out[j] = _gain(rows[j], previous[j], load[j : j + 1], num_ranks, move_cost, slowest_rank)
    return out


@kernel
def _noisy_layers(rows, previous, episodes, tokens, load, num_ranks, move_cost, slowest_rank):  # noqa: PLR0917
    """``[L] bool``: the changed layers of ``rows [L, P]`` whose episodes (``episodes``,
    ``tokens [L, K, E]``) differ mostly by sampling noise and whose gain over ``previous`` on
    ``load [L, E]`` (:func:`_gain`) is within what that noise could show (:func:`noise_reach`)."""
    out = np.zeros(rows.shape[0], dtype=np.bool_)
    for j in range(rows.shape[0]):
        if _moved_slots(rows[j], previous[j]) == 0:
            continue
        W, counts = episodes[j], tokens[j]
        if signal_fraction(W, sampling_noise(W, _volumes(counts))) >= _MOSTLY_NOISE:
            continue
        gain = _gain(rows[j], previous[j], load[j : j + 1], num_ranks, move_cost, slowest_rank)
        out[j] = gain <= noise_reach(previous[j], column_sum(counts), num_ranks)
    return out


@kernel
def _noise_margins(rows, tokens, distinct, counts, num_ranks):
    """``[L]``: :func:`noise_reach` of each fresh row of ``rows [L, P]`` on the window's counts
    ``tokens [L, K, E]`` summed (what a plan fitted to them can seem to gain from sampling noise
    alone: twice the row's peak noise; 0 on a layer without load) where the load is token
    ``counts`` and the layer's two or more episodes are sampled draws (not ``distinct [L]``
    workloads); -1 elsewhere (:func:`_settle` takes no repair to the fresh plan's PAR there)."""
    out = np.full(rows.shape[0], -1.0)
    if not counts or tokens.shape[1] < 2:
        return out
    for j in range(rows.shape[0]):
        if not distinct[j]:
            out[j] = noise_reach(rows[j], column_sum(tokens[j]), num_ranks)
    return out


@kernel
def noise_reach(row, counts, num_ranks):
    """The PAR a plan fitted to ``counts [E] float64`` (token counts summed over the window) can
    seem to gain over ``row [P] int64`` from sampling noise alone: noise lifts the placement in
    force's peak by about :func:`peak_noise`, and the fitted plan is lowered by as much."""
    return 2.0 * peak_noise(row, counts, num_ranks)


@kernel
def peak_noise(row, counts, num_ranks):
    """How far sampling noise moves the PAR of ``row [P] int64`` measured on ``counts [E]
    float64`` (token counts): ``sqrt(2 ln D)`` times the standard deviation of its largest rank
    load (an expert's count is Poisson: a replica's share of it varies by ``count /
    replicas^2``), over the mean rank load."""
    total = pairwise_sum(counts)
    if total <= 0.0:
        return 0.0
    replicas = counts_from_row(row, counts.shape[0])
    # row_rank_loads divides by the replicas once more: each rank sums count / replicas^2.
    per_replica = np.empty((1, counts.shape[0]))
    for e in range(counts.shape[0]):
        per_replica[0, e] = counts[e] / max(replicas[e], 1)
    variance = row_rank_loads(row, per_replica, num_ranks)[0]
    return np.sqrt(2.0 * np.log(num_ranks)) * np.sqrt(variance.max()) * num_ranks / total


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
        margins = _noise_margins(rows, tokens, distinct, layers.counts, D)
        # No load chose the slots of the layout before any heat: nothing of it to put back.
        trade = ~blank_layers(prev, now.shape[1], topo)
        settled = _settle_layers(
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
