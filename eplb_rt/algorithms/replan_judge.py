"""Moves that pay: a re-plan's candidates for a layer with a placement in force, and the one
taken (step 4 of :mod:`eplb_rt.algorithms.equilibrium`, where the candidates are explained).

:func:`settle` makes a layer's candidates (the slots in force; those slots improved move by
move, :func:`repaired_row`; repaired to a PAR; the fresh plan aligned to them), takes the one
that costs least (:func:`cheapest`: ``PAR + price``, the price of its moves from
:mod:`eplb_rt.algorithms.prices`) and trades its moves for fewer at the same peak
(:mod:`eplb_rt.algorithms.move_trades`); :func:`settle_layers` does it for every layer in one
call. :func:`noisy_layers` and :func:`layer_gains` serve the check out of sample
(:func:`eplb_rt.algorithms.equilibrium.paid_out_of_sample`).

Arrays as in :mod:`eplb_rt.algorithms.packing`: ``row``, ``prev [P] int64`` (the expert of each
slot, ranks in blocks of ``S = P // D``); ``now [E] float64``, the load the candidates are
judged on; ``V [K, E]``, the rows the fresh plan was scored on
(:func:`~.episode_rows.scored_rows`).
"""

from __future__ import annotations

import numpy as np

from eplb_rt.algorithms.align import align_order
from eplb_rt.algorithms.episode_moves import greedy_moves_rows
from eplb_rt.algorithms.episode_rows import (
    episode_volumes,
    noise_reach,
    sampling_noise,
    signal_fraction,
)
from eplb_rt.algorithms.jit import kernel
from eplb_rt.algorithms.metrics import row_par, row_rank_loads
from eplb_rt.algorithms.move_trades import DEPTH as TRADE_DEPTH
from eplb_rt.algorithms.move_trades import trade_moves
from eplb_rt.algorithms.move_walk import _moved_slots, greedy_moves
from eplb_rt.algorithms.prices import judged_cost, move_price
from eplb_rt.algorithms.sums import column_sum, pairwise_sum
from eplb_rt.algorithms.target_repair import repair_to

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

_MOSTLY_NOISE = 0.5
"""A re-plan is checked out of sample where less than this share of its episodes' spread is
signal (:func:`~.equilibrium.paid_out_of_sample`): where most of it is sampling noise."""


@kernel(inline=True)
def repaired_row(prev, now, V, num_ranks, budget, move_cost, slowest_rank, lifetime):  # noqa: PLR0917
    """The previous slots improved move by move, moves ranked by their gain per slot at
    ``move_cost / D`` a slot; of the walk's prefixes, the one :func:`cheapest` would take on
    ``now`` alone (``move_cost``, ``slowest_rank``, ``lifetime``; where the episodes are
    distinct workloads, :func:`settle` judges the candidates on them too).

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
def settle(  # noqa: PLR0917
    row, prev, now, V, distinct, num_ranks, budget, move_cost, slowest_rank, lifetime, margin, trade
):  # fmt: skip
    """Step 4 of :mod:`~eplb_rt.algorithms.equilibrium`'s list without shares, in one call: of the
    previous slots, those improved by :func:`repaired_row`, those repaired to its PAR on ``now``
    (:func:`~eplb_rt.algorithms.target_repair.repair_to`), where ``margin >= 0`` those repaired to
    the fresh ``row``'s PAR on ``now`` plus ``margin`` (:func:`noise_margins`), and the fresh
    ``row`` aligned to them, the one that costs least (:func:`cheapest`) within ``budget`` moved
    slots, PAR on ``now [E]``, or where the episodes are ``distinct`` workloads, the mean PAR on
    ``now`` and the scored rows ``V [K, E]``; where ``trade``, its moves then traded for fewer
    (:func:`_traded`). Where a placement outlives the next plan (``lifetime > 1``) and the episodes
    differ partly by sampling noise, it is judged over an endless life (``lifetime`` ``inf``).

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
        # window: a placement lasts as long as it holds (see cheapest).
        lifetime = np.inf
    count = 5 if margin >= 0.0 else 4
    candidates = np.empty((count, prev.shape[0]), dtype=np.int64)
    candidates[0] = prev
    candidates[1] = repaired_row(prev, now, V, D, budget, move_cost, slowest_rank, lifetime)
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
    best = cheapest(candidates, pars, prev, move_cost, D, budget, slowest_rank, lifetime)
    if best == 0 or not trade:
        return candidates[best]
    return _traded(
        candidates[best], pars[best], pars[0], prev, now, V, judged, D, move_cost, slowest_rank,
        lifetime,
    )  # fmt: skip


@kernel(inline=True)
def _traded(  # noqa: PLR0917
    row, par, in_force, prev, now, V, judged, num_ranks, move_cost, slowest_rank, lifetime
):  # fmt: skip
    """``row``, the candidate :func:`settle` took (its PAR ``par`` on ``judged``; the PAR in
    force there ``in_force``), with its moves traded for fewer at no higher peak on ``now``
    (:func:`~eplb_rt.algorithms.move_trades.trade_moves`), where that leaves the episodes ``V``
    no less balanced and costs no more as :func:`cheapest` prices it (so by the slowest rank's
    transfers, fewer slots that leave that rank's unchanged are taken too: fewer bytes in
    flight)."""
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
    cost, _ = _cost(row, par, prev, D, move_cost, slowest_rank, in_force, lifetime)
    par_traded = row_par(traded, judged, D)
    cost_traded, _ = _cost(traded, par_traded, prev, D, move_cost, slowest_rank, in_force, lifetime)
    return traded if cost_traded <= cost else row


@kernel(inline=True)
def _cost(row, par, prev, num_ranks, move_cost, slowest_rank, in_force, lifetime):  # noqa: PLR0917
    """``(cost, moved slots)`` of candidate ``row`` (its PAR ``par``) as :func:`cheapest` judges
    it: :func:`~eplb_rt.algorithms.prices.judged_cost` of its PAR and the price of its moves from
    ``prev`` (``in_force``: the PAR of ``prev``)."""
    moves = _moved_slots(row, prev)
    price = move_price(row, prev, moves, num_ranks, move_cost, slowest_rank)
    return judged_cost(par, price, in_force, lifetime), moves


@kernel
def cheapest(candidates, pars, prev, move_cost, num_ranks, budget, slowest_rank, lifetime):  # noqa: PLR0917
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
    the load does (:func:`settle` takes that life where the episodes show the load held over
    the window)."""
    best, best_cost = 0, pars[0]
    for i in range(1, candidates.shape[0]):
        cost, moves = _cost(
            candidates[i], pars[i], prev, num_ranks, move_cost, slowest_rank, pars[0], lifetime
        )
        if moves <= budget and cost < best_cost - 1e-12:
            best, best_cost = i, cost
    return best


@kernel
def settle_layers(  # noqa: PLR0917
    rows, prev, now, V, num_rows, distinct, num_ranks, budget, move_cost, slowest, lifetime,
    margins, trade,
):  # fmt: skip
    """:func:`settle` of every layer (``rows``, ``prev [L, P]``, ``now [L, E]``; ``V``,
    ``num_rows`` and ``distinct`` as :func:`~.equilibrium._fresh_plans` gives them, ``margins [L]``
    as :func:`noise_margins` does, ``trade [L] bool`` whether a layer's moves are traded) in one
    call: ``[L, P] int64``."""
    out = np.empty_like(prev)
    for j in range(rows.shape[0]):
        scored = np.ascontiguousarray(V[j, : num_rows[j]])
        out[j] = settle(
            rows[j], prev[j], now[j], scored, distinct[j], num_ranks, budget, move_cost, slowest,
            lifetime, margins[j], trade[j],
        )  # fmt: skip
    return out


@kernel(inline=True)
def _gain(row, previous, load, num_ranks, move_cost, slowest_rank):  # noqa: PLR0917
    """What ``row [P]`` gains over ``previous [P]`` on ``load [1, E]``: the fall of PAR less
    what its moves cost (:func:`~eplb_rt.algorithms.prices.move_price`)."""
    fall = row_par(previous, load, num_ranks) - row_par(row, load, num_ranks)
    moves = _moved_slots(row, previous)
    return fall - move_price(row, previous, moves, num_ranks, move_cost, slowest_rank)


@kernel
def layer_gains(rows, previous, load, num_ranks, move_cost, slowest_rank):  # noqa: PLR0917
    """``[L]``: :func:`_gain` of each layer of ``rows``, ``previous [L, P]`` on ``load [L, E]``."""
    out = np.empty(rows.shape[0])
    for j in range(rows.shape[0]):
        out[j] = _gain(rows[j], previous[j], load[j : j + 1], num_ranks, move_cost, slowest_rank)
    return out


@kernel
def noisy_layers(rows, previous, episodes, tokens, load, num_ranks, move_cost, slowest_rank):  # noqa: PLR0917
    """``[L] bool``: the changed layers of ``rows [L, P]`` whose episodes (``episodes``,
    ``tokens [L, K, E]``) differ mostly by sampling noise and whose gain over ``previous`` on
    ``load [L, E]`` (:func:`_gain`) is within what that noise could show
    (:func:`~.episode_rows.noise_reach`)."""
    out = np.zeros(rows.shape[0], dtype=np.bool_)
    for j in range(rows.shape[0]):
        if _moved_slots(rows[j], previous[j]) == 0:
            continue
        W, counts = episodes[j], tokens[j]
        if signal_fraction(W, sampling_noise(W, episode_volumes(counts))) >= _MOSTLY_NOISE:
            continue
        gain = _gain(rows[j], previous[j], load[j : j + 1], num_ranks, move_cost, slowest_rank)
        out[j] = gain <= noise_reach(previous[j], column_sum(counts), num_ranks)
    return out


@kernel
def noise_margins(rows, tokens, distinct, counts, num_ranks):
    """``[L]``: :func:`~.episode_rows.noise_reach` of each fresh row of ``rows [L, P]`` on the
    window's counts ``tokens [L, K, E]`` summed (what a plan fitted to them can seem to gain from
    sampling noise
    alone: twice the row's peak noise; 0 on a layer without load) where the load is token
    ``counts`` and the layer's two or more episodes are sampled draws (not ``distinct [L]``
    workloads); -1 elsewhere (:func:`settle` takes no repair to the fresh plan's PAR there)."""
    out = np.full(rows.shape[0], -1.0)
    if not counts or tokens.shape[1] < 2:
        return out
    for j in range(rows.shape[0]):
        if not distinct[j]:
            out[j] = noise_reach(rows[j], column_sum(tokens[j]), num_ranks)
    return out
