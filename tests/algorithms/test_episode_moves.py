"""The move walk on several rows (``greedy_moves_rows``): against a plain scan of every move on
every row, against ``greedy_moves`` with one row, its invariants, and a move that pays on the
summed load but not on the episodes."""

from __future__ import annotations

import math

import numpy as np
import pytest

from eplb_rt.algorithms import plan
from eplb_rt.algorithms.episode_moves import (
    _rewrite_bound,
    _rewrite_drop,
    _rewrite_gain,
    _rewrite_spread,
    _row_terms,
    _swap_gain,
    greedy_moves_rows,
)
from eplb_rt.algorithms.move_walk import _ranks_of, greedy_moves
from eplb_rt.algorithms.packing import holds_from_row
from eplb_rt.placement import Placement, Topology
from tests import walk_judge


def _par(row: np.ndarray, w: np.ndarray, num_ranks: int) -> float:
    counts = np.bincount(row, minlength=w.size)
    loads = (w[row] / counts[row]).reshape(num_ranks, -1).sum(axis=1)
    return float(loads.max() / loads.mean())


def _case(seed: int, rows: int):
    """A random layer: ``(prev [P], V [rows, E], D, budget, move_cost)``."""
    rng = np.random.default_rng(seed)
    if seed % 2:
        D, S = int(rng.integers(2, 6)), int(rng.integers(1, 5))
        E = int(rng.integers(max(S, 1), D * S + 1))
    else:
        D, S = int(rng.integers(6, 9)), int(rng.integers(2, 4))
        E = int(rng.integers(D * S // 2, D * S))
    prev = plan("deepseek", rng.pareto(1.2, size=(1, E)) * 100, Topology(D, S))
    V = rng.pareto(1.2, size=(rows, E)) * 100
    budget = int(rng.integers(1, D * S + 1))
    cost = float(rng.choice([0.0, 1e-3, 1e-2]))
    return prev.phy2log[0].astype(np.int64), V, D, budget, cost


def _smooth_peak(z: float, trial: np.ndarray, peak: float, tau: float) -> float:
    """The smooth peak from the sum of terms ``z`` around ``peak``, as the walk computes it (in
    full, on ``trial``, where every term underflowed)."""
    if z < 1e-200:
        m = max(trial)
        return m + tau * math.log(sum(math.exp((v - m) / tau) for v in trial))
    return peak + tau * math.log(max(z, 1e-300))


def _row_state(loads: np.ndarray, mean: float, tau_min: float, tau_share: float):
    """One row's ``(peak, tau, terms, their sum, smooth peak)``, as the walk makes them."""
    peak = loads.max()
    tau = max(tau_min, tau_share * (peak - mean))
    ex = [math.exp((v - peak) / tau) for v in loads]
    Z = 0.0
    for v in ex:
        Z += v
    return peak, tau, ex, Z, peak + tau * math.log(Z)


def _swap_drop(state, loads: np.ndarray, a: int, b: int, d: float) -> float:
    """A row's drop when load ``d`` moves from rank ``a`` to ``b`` (the kernel's arithmetic)."""
    peak, tau, ex, Z, base = state
    z = max(Z - ex[a] - ex[b], 0.0)
    z += math.exp(min((loads[a] - peak) - d, 600 * tau) / tau)
    z += math.exp(min(loads[b] + d - peak, 600 * tau) / tau)
    trial = loads.copy()
    trial[a] -= d
    trial[b] += d
    return base - _smooth_peak(z, trial, peak, tau)


def _changed_drop(state, loads: np.ndarray, trial: np.ndarray) -> float:
    """A row's drop once its rank loads are ``trial``, the changed terms added in rank order."""
    peak, tau, ex, Z, base = state
    z = Z
    for r in range(loads.size):
        if trial[r] != loads[r]:
            z += math.exp(min(trial[r] - peak, 600 * tau) / tau) - ex[r]
    return base - _smooth_peak(z, trial, peak, tau)


def _rewritten(loads, V, counts, on, *, b, x, y):
    """``[K, D]``: every row's rank loads once rank ``b``'s slot of ``x`` holds ``y``."""
    out = loads.copy()
    for k in range(V.shape[0]):
        dx = V[k, x] / (counts[x] - 1) - V[k, x] / counts[x]
        dy = V[k, y] / (counts[y] + 1) - V[k, y] / counts[y]
        for r in range(loads.shape[1]):
            out[k, r] = loads[k, r] + (dx if x in on[r] else 0.0) + (dy if y in on[r] else 0.0)
        out[k, b] += V[k, y] / (counts[y] + 1) - V[k, x] / (counts[x] - 1)
    return out


def _reference_rows_walk(
    prev, V, judge, D, budget, *, move_cost, tau_min, tau_share, slowest_rank, lifetime
):
    """``greedy_moves_rows`` with every move scored in full on every row, in plain Python with
    the kernel's arithmetic (so that ties and rounding fall the same way): each step, over the
    judged row's peak rank and the rank with the most weight (ranks ascending), the swap, then
    the rewrite, with the largest drop of the summed smooth peaks per newly moved slot (judged
    row first, then the others in order; a free move counts half a slot; ties to the first).
    The prefix taken: the least ``PAR + price / lifetime`` of those whose ``PAR + price`` is
    below the PAR in force (:mod:`tests.walk_judge`); the walk stops where no later
    prefix can be."""
    K, E = V.shape
    P, S = prev.size, prev.size // D
    prev = prev.tolist()
    row = np.array(prev)
    total = V.sum()
    if total <= 0 or budget <= 0 or V[judge].sum() <= 0:
        return row, 0
    mean = total / D
    means = [V[k].sum() / D for k in range(K)]
    summed = np.zeros(E)
    for k in range(K):
        summed += V[k]
    counts = np.bincount(row, minlength=E)
    loads = np.zeros((K, D))
    for p in range(P):
        for k in range(K):
            loads[k, p // S] += V[k, row[p]] / counts[row[p]]
    in_force = loads[judge].max() / means[judge]
    best_row, best_cost, best_moves = row.copy(), in_force, 0
    order = [judge] + [k for k in range(K) if k != judge]
    for _ in range(8 * P):
        moves = int((row != np.array(prev)).sum())
        on = [set(row[r * S : (r + 1) * S].tolist()) for r in range(D)]
        states = [_row_state(loads[k], means[k], tau_min[k], tau_share) for k in range(K)]
        ranks = {int(np.argmax(loads[judge]))}
        if K > 1:
            mass = np.zeros(D)
            for _, _, ex, Z, _ in states:
                mass += np.array(ex) / Z
            ranks.add(int(np.argmax(mass)))
        best = (0.0, None)
        for a in sorted(ranks):
            for p in range(a * S, (a + 1) * S):  # swaps
                for q in range(P):
                    x, y, b = int(row[p]), int(row[q]), q // S
                    if b == a or x in on[b] or y in on[a]:
                        continue
                    if summed[x] / counts[x] - summed[y] / counts[y] <= 0.0:
                        continue
                    extra = (y != prev[p]) + (x != prev[q]) - (x != prev[p]) - (y != prev[q])
                    if moves + extra > budget:
                        continue
                    drop = 0.0
                    for k in order:
                        d = V[k, x] / counts[x] - V[k, y] / counts[y]
                        drop += _swap_drop(states[k], loads[k], a, b, d)
                    if drop / max(extra, 0.5) > best[0]:
                        best = (drop / max(extra, 0.5), ("swap", p, q))
            for q in range(P):  # rewrites: a second replica of y from rank a, or q on a
                x, b = int(row[q]), q // S
                for y in range(E) if b == a else sorted(on[a]):
                    if counts[x] < 2 or y == x or y in on[b] or counts[y] >= D:
                        continue
                    extra = (y != prev[q]) - (x != prev[q])
                    if moves + extra > budget:
                        continue
                    trial = _rewritten(loads, V, counts, on, b=b, x=x, y=y)
                    drop = 0.0
                    for k in order:
                        drop += _changed_drop(states[k], loads[k], trial[k])
                    if drop / max(extra, 0.5) > best[0]:
                        best = (drop / max(extra, 0.5), ("rewrite", q, y))
        gain, move = best
        if move is None or gain < 0.25 * move_cost * mean:
            break
        if walk_judge.priced_out(move_cost * moves, in_force, best_cost, lifetime):
            break
        if move[0] == "swap":
            _, p, q = move
            x, y = row[p], row[q]
            for k in range(K):
                d = V[k, x] / counts[x] - V[k, y] / counts[y]
                loads[k, p // S] -= d
                loads[k, q // S] += d
            row[p], row[q] = y, x
        else:
            _, q, y = move
            x = row[q]
            loads = _rewritten(loads, V, counts, on, b=q // S, x=x, y=y)
            row[q] = y
            counts[x] -= 1
            counts[y] += 1
        moves = int((row != np.array(prev)).sum())
        price = walk_judge.price(row, prev, D, move_cost, slowest_rank)
        cost = walk_judge.cost(loads[judge].max() / means[judge], price, in_force, lifetime)
        if cost < best_cost - 1e-12:
            best_cost, best_row, best_moves = cost, row.copy(), moves
    return best_row, best_moves


@pytest.mark.parametrize("seed", range(40))
def test_walk_takes_the_moves_of_scoring_every_move_on_every_row(seed):
    """The walk refutes most moves on bounds (first order over the other rows, what a rank's
    weight can lose, the judged row's terms in part) and scores a rewrite on the ranks it
    changes only; it must still take the moves of scoring every move on every row."""
    prev, V, D, budget, cost = _case(300 + seed, 1 + seed % 5)
    judge = seed % V.shape[0]
    tau_min = float(np.random.default_rng(seed).choice([1e-3, 1e-2])) * V.sum(axis=1) / D
    tau_share = 0.1 if seed % 3 else 1.0
    price = {"slowest_rank": seed % 2 == 1, "lifetime": (1.0, 3.0, math.inf)[seed % 3]}
    # The kernel's own code run as Python (``py_func``): compiled, numba may round an exp or a
    # sum differently from Python, and a tie then falls the other way.
    row, moved = greedy_moves_rows.py_func(
        prev, V, judge, D, budget, cost, tau_min, tau_share, *price.values()
    )
    ref_row, ref_moved = _reference_rows_walk(
        prev, V, judge, D, budget, move_cost=cost, tau_min=tau_min, tau_share=tau_share, **price
    )
    assert row.tolist() == ref_row.tolist() and moved == ref_moved


@pytest.mark.parametrize("seed", range(40))
def test_one_row_walks_as_greedy_moves(seed):
    prev, V, D, budget, cost = _case(seed, 1)
    share = (0.1, 0.5, 1.0)[seed // 4 % 3]
    price = (seed % 4 >= 2, (1.0, 3.0, math.inf)[seed % 3])  # slowest_rank, lifetime
    want = greedy_moves(prev, V[0], D, budget, cost, 1e-3 * V.sum() / D, share, *price)
    got = greedy_moves_rows(prev, V, 0, D, budget, cost, 1e-3 * V.sum(axis=1) / D, share, *price)
    assert got[1] == want[1]
    assert got[0].tolist() == want[0].tolist()


@pytest.mark.parametrize("seed", range(20))
def test_valid_within_budget_and_never_costlier_on_the_judged_row(seed):
    prev, V, D, budget, cost = _case(1000 + seed, 1 + seed % 5)
    judge = seed % V.shape[0]
    tau_min = 1e-3 * V.sum(axis=1) / D
    share = (0.1, 1.0)[seed % 2]
    row, moved = greedy_moves_rows(prev, V, judge, D, budget, cost, tau_min, share, False, 1.0)
    Placement(row[None], V.shape[1], D)
    assert moved == int((row != prev).sum()) <= budget
    assert _par(row, V[judge], D) + cost * moved <= _par(prev, V[judge], D) + 1e-12


def test_a_move_that_pays_only_on_the_sum_is_not_taken():
    # r0 = {0, 1}, r1 = {2, 3}. Episode 1 loads r0 (6.5 against 1), episode 2 loads r1 (2
    # against 5.5), their sum r0 (8.5 against 6.5). Either swap that balances the sum (7.5, 7.5)
    # lifts both episodes' peaks to 7: the sum's peak falls by 1, the episodes' rise by 2.
    prev = np.array([0, 1, 2, 3])
    episodes = np.array([[6.0, 0.5, 0.0, 1.0], [0.0, 2.0, 5.0, 0.5]])
    summed = episodes.sum(axis=0)
    tau = 1e-3 * np.ones(3)
    row, moved = greedy_moves_rows(prev, summed[None], 0, 2, 4, 0.0, tau[:1], 0.1, False, 1.0)
    assert moved == 2 and _par(row, summed, 2) == 1.0
    rows = np.vstack([episodes, summed])
    row, moved = greedy_moves_rows(prev, rows, 2, 2, 4, 0.0, tau, 0.1, False, 1.0)
    assert moved == 0 and row.tolist() == prev.tolist()


def _terms_at(loads: np.ndarray, tau_min: np.ndarray, tau_share: float):
    """``_row_terms`` of rows of loads ``[K, D]`` (their means, their peaks)."""
    K, D = loads.shape
    terms = (
        np.empty(K), np.empty(K), np.empty((K, D)), np.empty(K), np.empty(K), np.empty((K, D)),
        np.empty((K, 3), dtype=np.int64),
    )  # fmt: skip
    _row_terms(loads, loads.sum(axis=1) / D, tau_min, tau_share, terms)
    return terms


def _terms_at_tenth(loads: np.ndarray):
    """``_row_terms`` of rows of loads ``[K, D]`` at temperature 0.1."""
    return _terms_at(loads, np.full(loads.shape[0], 0.1), 0.0)


def test_a_swap_whose_terms_all_underflow_is_scored_on_every_rank():
    # Rank 0 holds 600 + 400, ranks 1 and 2 nothing; at temperature 0.1 every term but the
    # peak's is exp(-10000) = 0. Moving the 400 to rank 1 leaves terms exp(-4000) and
    # exp(-6000): all zero, so the kernel scores the row on its new loads (600, 400, 0). Row 1
    # is the judged one, whose drop the gain is given (the scan computes it).
    V = np.array([[600.0, 400.0, 0.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0, 1.0, 1.0]])
    counts = np.ones(6, dtype=np.int64)
    loads = np.array([[1000.0, 0.0, 0.0], [2.0, 2.0, 2.0]])
    terms = _terms_at_tenth(loads)
    drop = _swap_gain(V, 1, loads, terms, counts, 0, 1, 1, 2, np.empty(3), 0.0)
    state = _row_state(loads[0], 1000.0 / 3, 0.1, 0.0)
    assert drop == _swap_drop(state, loads[0], 0, 1, 400.0)
    assert drop == pytest.approx(400.0)
    given = _swap_gain(V, 1, loads, terms, counts, 0, 1, 1, 2, np.empty(3), 7.0)
    assert given == pytest.approx(407.0)


def test_a_rewrite_whose_terms_all_underflow_is_scored_on_every_rank():
    # Ranks {0, 1}, {2, 3}, {2, 4}: expert 0 (1000 tokens) alone makes rank 0 the peak. Rank 1's
    # slot of expert 2 (no load, a replica on rank 2 too) takes expert 0: ranks 0 and 1 carry
    # 500 each, every term at temperature 0.1 is exp(-5000) = 0, so the kernel says so and the
    # gain scores the row on its new loads (500, 500, 0). Row 1 is the judged one (as above).
    V = np.array([[1000.0, 0.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0, 1.0]])
    row = np.array([0, 1, 2, 3, 2, 4])
    counts = np.array([1, 1, 2, 1, 1])
    loads = np.array([[1000.0, 0.0, 0.0], [2.0, 1.5, 1.5]])
    terms = _terms_at_tenth(loads)
    where = _ranks_of(row, counts, 3)
    assert _rewrite_drop(loads, terms, 0, V, where, counts, 1, 2, 0) == (0.0, False)
    holds = holds_from_row(row, 3, 5)
    drop = _rewrite_gain(V, 1, loads, terms, where, holds, counts, 1, 2, 0, np.empty(3), 0.0)
    assert drop == pytest.approx(1000.0 - (500.0 + 0.1 * math.log(2.0)))


def test_a_walk_through_a_rewrite_whose_terms_all_underflow_takes_the_scans_moves():
    # The case above as a walk: the judged row's drop of that rewrite is scored in full in the
    # scan too, and the walk splits expert 0 over ranks 0 and 1 as scoring every move does.
    prev = np.array([0, 1, 2, 3, 2, 4])
    V = np.array([[1000.0, 0.0, 0.0, 0.0, 0.0]])
    args = (prev, V, 0, 3, 6, 0.0, np.array([0.1]), 0.0, False, 1.0)
    row, moved = greedy_moves_rows.py_func(*args)
    ref_row, ref_moved = _reference_rows_walk(
        prev, V, 0, 3, 6, move_cost=0.0, tau_min=np.array([0.1]), tau_share=0.0,
        slowest_rank=False, lifetime=1.0,
    )  # fmt: skip
    assert row.tolist() == ref_row.tolist() and moved == ref_moved
    assert sorted(np.flatnonzero(row == 0) // 2) == [0, 1]


@pytest.mark.parametrize("seed", range(40))
def test_rewrites_of_an_expert_of_many_replicas_take_the_moves_of_scoring_every_move(seed):
    """Where a rewrite's experts hold many replicas, its rows are first bounded from the sums of
    their terms (``_rewrite_bound``); the walk must still take the moves of scoring every move.
    A hot expert planned onto most ranks, then its load moved elsewhere in some rows."""
    rng = np.random.default_rng(900 + seed)
    D, S = int(rng.integers(10, 15)), int(rng.integers(2, 4))
    E = int(rng.integers(D * S // 3, D * S // 2))
    hot = rng.pareto(1.2, size=(1, E)) * 10
    hot[0, 0] = 50.0 * hot.sum()  # expert 0 on nearly every rank
    prev = plan("deepseek", hot, Topology(D, S)).phy2log[0].astype(np.int64)
    rows = 1 + seed % 4
    V = np.repeat(hot, rows, axis=0) * rng.uniform(0.5, 1.5, size=(rows, E))
    V[rows // 2 :, 0] *= 0.05  # the hot expert cools in some rows: its replicas are rewritten
    judge = seed % rows
    tau_min = float(rng.choice([1e-3, 1e-2])) * V.sum(axis=1) / D
    price = {"slowest_rank": seed % 2 == 1, "lifetime": (1.0, 3.0, math.inf)[seed % 3]}
    cost, budget = float(rng.choice([0.0, 1e-3])), D * S
    assert np.bincount(prev, minlength=E)[0] > 8  # the bound's case
    row, moved = greedy_moves_rows.py_func(
        prev, V, judge, D, budget, cost, tau_min, 0.1, *price.values()
    )
    ref_row, ref_moved = _reference_rows_walk(
        prev, V, judge, D, budget, move_cost=cost, tau_min=tau_min, tau_share=0.1, **price
    )
    assert row.tolist() == ref_row.tolist() and moved == ref_moved


@pytest.mark.parametrize("seed", range(12))
def test_the_rewrite_bound_is_never_below_the_rows_drop(seed):
    """``_rewrite_bound`` against each row's exact drop (``_rewrite_drop``, or
    ``_rewrite_spread`` where the terms underflow) for every rewrite of a random state at the
    walk's temperatures, with a hot expert whose ranks hold nearly all of a row's weight (the
    sum ``Z - sx - sy`` then cancels: its margin is what keeps it a bound)."""
    rng = np.random.default_rng(1300 + seed)
    D, S, K = int(rng.integers(6, 13)), int(rng.integers(2, 4)), 3
    E = int(rng.integers(D * S // 3, D * S // 2 + 1))
    hot = rng.pareto(1.2, size=(1, E)) * 10
    hot[0, 0] = 10.0 ** rng.uniform(1, 6) * hot.sum()
    row = plan("deepseek", hot, Topology(D, S)).phy2log[0].astype(np.int64)
    V = np.repeat(hot, K, axis=0) * rng.uniform(0.5, 1.5, size=(K, E))
    V[1:, int(rng.integers(1, E))] *= 10.0 ** rng.uniform(0, 4)  # another expert heats
    counts = np.bincount(row, minlength=E)
    holds = holds_from_row(row, D, E)
    loads = np.zeros((K, D))
    for p, e in enumerate(row):
        loads[:, p // S] += V[:, e] / counts[e]
    means = V.sum(axis=1) / D
    terms = _terms_at(loads, 1e-3 * means, 0.1)
    where = _ranks_of(row, counts, D)
    pi = np.zeros((E, K))
    for p, e in enumerate(row):
        pi[e] += terms[5][:, p // S]
    trial = np.empty(D)
    checked = 0
    for q, x in enumerate(row):
        b, cx = q // S, counts[x]
        if cx < 2:
            continue
        fx = 1.0 / (cx - 1) - 1.0 / cx
        for y in range(E):
            if y == x or holds[b, y] or counts[y] >= D:
                continue
            for k in range(K):
                args = (terms, k, pi, where, holds, loads, counts, b, x, y, V[k, x], V[k, y], fx)
                bound = _rewrite_bound(*args)
                drop, ok = _rewrite_drop(loads, terms, k, V, where, counts, b, x, y)
                if not ok:
                    drop = _rewrite_spread(loads, terms, k, V, holds, counts, b, x, y, trial)
                assert bound >= drop - 1e-12 * means[k], (q, y, k, bound, drop)
                checked += np.isfinite(bound)
    assert checked > 0
