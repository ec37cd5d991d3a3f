"""Moves that pay: ``greedy_moves`` on hand-derived cases, its invariants, the exact optimum with
a move budget, and ``equilibrium``'s budget per layer."""

from __future__ import annotations

import math

import numpy as np
import pytest

from eplb_rt.algorithms import bounds, metrics, move_walk, plan
from eplb_rt.algorithms.move_walk import greedy_moves
from eplb_rt.algorithms.prices import slot_budget
from eplb_rt.placement import Placement, Topology
from tests import walk_judge


def _rank_loads(row: np.ndarray, w: np.ndarray, num_ranks: int) -> np.ndarray:
    counts = np.bincount(row, minlength=w.size)
    return (w[row] / counts[row]).reshape(num_ranks, -1).sum(axis=1)


def _par(row: np.ndarray, w: np.ndarray, num_ranks: int) -> float:
    loads = _rank_loads(row, w, num_ranks)
    return float(loads.max() / loads.mean())


def test_one_rewrite_splits_the_hot_expert():
    # r0 = {0, 1}, r1 = {2, 0}; loads [1, 10, 1]: r0 = 0.5 + 10, r1 = 1 + 0.5. Rewriting r1's
    # replica of expert 0 (it keeps one on r0) to expert 1 gives r0 = 1 + 5, r1 = 1 + 5: PAR 1.
    prev = np.array([0, 1, 2, 0])
    w = np.array([1.0, 10.0, 1.0])
    row, moved = greedy_moves(prev, w, 2, 4, 0.0, 1e-3, 0.5, False, 1.0)
    assert (row.tolist(), moved) == ([0, 1, 2, 1], 1)
    assert _par(row, w, 2) == pytest.approx(1.0)


def test_a_strided_load_walks_as_its_copy():
    # A column of a [T, E] table, say: the walk takes any layout numpy gives.
    prev = np.array([0, 1, 2, 0])
    table = np.array([[1.0, 5.0], [10.0, 5.0], [1.0, 5.0]]).T  # rows [1, 10, 1] and [5, 5, 5]
    got = greedy_moves(prev, table[0], 2, 4, 0.0, 1e-3, 0.5, False, 1.0)
    want = greedy_moves(prev, table[0].copy(), 2, 4, 0.0, 1e-3, 0.5, False, 1.0)
    assert not table[0].flags.c_contiguous
    assert (got[0].tolist(), got[1]) == (want[0].tolist(), want[1]) == ([0, 1, 2, 1], 1)


def test_a_swap_when_no_rewrite_is_possible():
    # P = E: no expert has a second replica, so only swaps move load. [8, 8 | 1, 1] -> 9 | 9.
    prev = np.array([0, 1, 2, 3])
    w = np.array([8.0, 8.0, 1.0, 1.0])
    row, moved = greedy_moves(prev, w, 2, 4, 0.0, 1e-3, 0.5, False, 1.0)
    assert moved == 2
    assert _par(row, w, 2) == pytest.approx(1.0)
    # a swap needs a budget of two
    assert greedy_moves(prev, w, 2, 1, 0.0, 1e-3, 0.5, False, 1.0)[1] == 0


def test_moves_that_do_not_pay_are_not_taken():
    prev = np.array([0, 1, 2, 0])
    w = np.array([1.0, 10.0, 1.0])
    # The rewrite lowers PAR by 10.5 / 6 - 1 = 0.75: a cost above that keeps the slots.
    row, moved = greedy_moves(prev, w, 2, 4, 0.8, 1e-3, 0.5, False, 1.0)
    assert (row.tolist(), moved) == (prev.tolist(), 0)
    assert greedy_moves(prev, w, 2, 4, 0.7, 1e-3, 0.5, False, 1.0)[1] == 1
    assert greedy_moves(prev, np.zeros(3), 2, 4, 0.0, 1e-3, 0.5, False, 1.0)[1] == 0


def test_priced_by_the_slowest_rank_the_walk_spreads_its_moves():
    """Rank 1 holds the two hottest experts (3 and 4; PAR 1.203). Priced per slot, one rewrite
    (rank 1's 4 becomes a second replica of 3) pays most a slot: PAR 1.107 for one slot. By the
    slowest rank's transfers that one costs what a transfer to every rank costs (1.107 + 0.15,
    dearer than keeping): the walk goes on to a prefix sending one expert to each rank, PAR
    1.044 at the same price."""
    prev = np.array([0, 2, 6, 4, 5, 1, 4, 7, 3])  # three ranks of three slots
    w = np.array([40.0, 27, 256, 273, 209, 169, 3, 24])
    tau = 1e-3 * w.sum() / 3
    assert _par(prev, w, 3) == pytest.approx(1.2033, abs=1e-4)
    per_slot, moved = greedy_moves(prev, w, 3, 9, 0.05, tau, 0.5, False, 1.0)
    assert moved == 1 and _par(per_slot, w, 3) == pytest.approx(1.1074, abs=1e-4)
    slowest, moved = greedy_moves(prev, w, 3, 9, 0.05, tau, 0.5, True, 1.0)
    assert moved == 3 and _par(slowest, w, 3) == pytest.approx(1.0445, abs=1e-4)
    for row in (per_slot, slowest):  # one expert to the slowest rank, 0.05 * 3 either way
        assert walk_judge.price(row, prev, 3, 0.05, True) == pytest.approx(0.15)


def _stop_case(seed: int):
    """A random walk's arguments, by the slowest rank over an endless life: ``(prev, w, D,
    budget, slot_cost, tau_min)``."""
    rng = np.random.default_rng(seed)
    D, S = int(rng.integers(6, 12)), int(rng.integers(2, 5))
    E = int(rng.integers(D * S // 2, D * S))
    prev = plan("deepseek", rng.pareto(1.2, size=(1, E)) * 100, Topology(D, S)).phy2log[0]
    w = rng.pareto(1.2, size=E) * 100
    budget = int(rng.integers(1, D * S + 1))
    return prev.astype(np.int64), w, D, budget, 0.1, 1e-3 * w.sum() / D


def test_the_walk_stops_only_where_no_later_prefix_is_taken(monkeypatch):
    """By the slowest rank a prefix's price can fall while its moved slots do not. On 8 ranks x
    4 slots the walk reached 4 moved slots with 2 experts to one rank (price 1.6 at 0.1 a slot:
    1 + 1.6 above the PAR in force, 1.945), and its next move spread them, one to a rank, PAR
    1.082 at 0.8. Stopped on that price, the walk kept the slots in force; stopped on the moved
    slots' price per slot, it takes the prefix that pays. On random cases the stop never changes
    what the walk takes."""
    prev = np.array([25, 15, 11, 17, 16, 23, 9, 24, 16, 26, 20, 8, 10, 4, 19, 6, 10, 12, 1, 22,
                     0, 5, 18, 2, 7, 27, 21, 14, 7, 27, 13, 3])  # fmt: skip
    w = np.array([1.5, 381.55, 84.94, 84.18, 17.87, 178.84, 209.48, 111.97, 166.16, 51.96,
                  321.24, 53.21, 54.14, 83.77, 833.37, 7.34, 227.86, 23.05, 189.67, 175.05,
                  16.45, 24.84, 138.29, 35.65, 165.07, 34.16, 91.98, 2.75])  # fmt: skip
    row, moved = greedy_moves(prev, w, 8, 14, 0.1, 1e-2 * w.sum() / 8, 0.5, True, math.inf)
    price = walk_judge.price(row, prev, 8, 0.1, True)
    assert _par(prev, w, 8) == pytest.approx(1.9447, abs=1e-4)
    assert moved == 4 and price == pytest.approx(0.8)
    assert _par(row, w, 8) == pytest.approx(1.0822, abs=1e-4)
    for seed in range(12):
        args = (*_stop_case(100 + seed), 0.5, seed % 2 == 1, (1.0, 3.0, math.inf)[seed % 3])
        with monkeypatch.context() as patch:
            patch.setattr(move_walk, "_priced_out", lambda *_: False)
            unstopped = greedy_moves.py_func(*args)
        stopped = greedy_moves.py_func(*args)
        assert stopped[0].tolist() == unstopped[0].tolist() and stopped[1] == unstopped[1]


@pytest.mark.parametrize("slowest", [False, True], ids=["per-slot", "slowest-rank"])
@pytest.mark.parametrize("seed", range(20))
def test_valid_within_budget_and_never_costlier(seed, slowest):
    rng = np.random.default_rng(seed)
    D, S = int(rng.integers(2, 6)), int(rng.integers(1, 5))
    E = int(rng.integers(max(S, 1), D * S + 1))
    topo = Topology(D, S)
    prev = plan("deepseek", rng.pareto(1.2, size=(1, E)) * 100, topo).phy2log[0].astype(np.int64)
    w = rng.pareto(1.2, size=E) * 100
    w /= w.sum()
    budget = int(rng.integers(0, D * S + 1))
    cost = float(rng.choice([0.0, 1e-4, 1e-2]))
    row, moved = greedy_moves(prev, w, D, budget, cost, 1e-3 / D, 0.5, slowest, 1.0)
    Placement(row[None], E, D)  # valid: every expert placed, no duplicate on a rank
    assert moved == int((row != prev).sum()) <= budget
    price = walk_judge.price(row, prev, D, cost, slowest)
    assert _par(row, w, D) + price <= _par(prev, w, D) + 1e-12


@pytest.mark.parametrize("seed", range(6))
def test_never_below_the_exact_optimum_with_the_same_budget(seed):
    rng = np.random.default_rng(100 + seed)
    topo = Topology(3, 2)
    w = rng.integers(1, 40, size=5).astype(float)
    prev = plan("deepseek", rng.integers(1, 40, size=(1, 5)).astype(float), topo)
    prev_row = prev.phy2log[0].astype(np.int64)
    for budget in (1, 2, 3):
        best, _ = bounds.exact_min_max(w, topo, previous=prev_row, max_moves=budget)
        row, moved = greedy_moves(prev_row, w, 3, budget, 0.0, 1e-3, 0.5, False, 1.0)
        counts = np.bincount(row, minlength=5)
        peak = (w[row] / counts[row]).reshape(3, 2).sum(axis=1).max()
        assert peak >= best - 1e-6
        assert moved <= budget


def _smooth_peak(z: float, trial: np.ndarray, peak: float, tau: float) -> float:
    """The smooth peak of ``trial`` from its sum of terms ``z`` around ``peak``, as the walk
    computes it (in full where every term underflowed)."""
    if z < 1e-200:
        m = max(trial)
        return m + tau * math.log(sum(math.exp((v - m) / tau) for v in trial))
    return peak + tau * math.log(max(z, 1e-300))


def _reference_walk(prev, w, D, budget, *, move_cost, tau_min, tau_share, slowest_rank, lifetime):
    """``greedy_moves`` with every candidate scored in full, on every rank, in plain Python
    with the kernel's arithmetic (so that ties and rounding fall the same way): each step the
    swap, then the rewrite, of the peak rank with the largest drop of the smooth peak per newly
    moved slot (a free move counts half a slot; ties to the first), until no later prefix would
    be taken; the prefix that costs least as :mod:`tests.walk_judge` prices it is returned."""
    P, E, S = prev.size, w.size, prev.size // D
    prev = prev.tolist()
    total = w.sum()
    mean = total / D
    row = np.array(prev)
    if total <= 0 or budget <= 0:
        return row, 0
    counts = np.bincount(row, minlength=E)
    loads = np.zeros(D)
    for p in range(P):
        loads[p // S] += w[row[p]] / counts[row[p]]
    in_force = loads.max() / mean
    best_row, best_cost, best_moves = row.copy(), in_force, 0
    for _ in range(8 * P):
        moves = int((row != np.array(prev)).sum())
        on = [set(row[r * S : (r + 1) * S].tolist()) for r in range(D)]
        a = int(np.argmax(loads))
        tau = max(tau_min, tau_share * (loads[a] - mean))
        ex = [math.exp((v - loads[a]) / tau) for v in loads]
        Z = 0.0
        for v in ex:
            Z += v
        base = loads[a] + tau * math.log(Z)

        best = (0.0, None)
        for p in range(a * S, (a + 1) * S):  # swaps
            for q in range(P):
                x, y, b = int(row[p]), int(row[q]), q // S
                d = w[x] / counts[x] - w[y] / counts[y]
                if b == a or d <= 0.0 or x in on[b] or y in on[a]:
                    continue
                extra = (y != prev[p]) + (x != prev[q]) - (x != prev[p]) - (y != prev[q])
                if moves + extra > budget or loads[b] + d - loads[a] > 600 * tau:
                    continue
                z = max(Z - ex[a] - ex[b], 0.0) + math.exp(-d / tau)
                z += math.exp((loads[b] + d - loads[a]) / tau)
                trial = loads.copy()
                trial[a] -= d
                trial[b] += d
                gain = (base - _smooth_peak(z, trial, loads[a], tau)) / max(extra, 0.5)
                if gain > best[0]:
                    best = (gain, ("swap", p, q))
        for q in range(P):  # rewrites: a second replica of y from the peak rank, or q on it
            x, b = int(row[q]), q // S
            for y in range(E):
                if counts[x] < 2 or y == x or y in on[b] or counts[y] >= D:
                    continue
                if not (y in on[a] or b == a):
                    continue
                extra = (y != prev[q]) - (x != prev[q])
                if moves + extra > budget:
                    continue
                dx = w[x] / (counts[x] - 1) - w[x] / counts[x]
                dy = w[y] / (counts[y] + 1) - w[y] / counts[y]
                trial = loads.copy()
                for r in range(D):
                    trial[r] = loads[r] + (dx if x in on[r] else 0.0) + (dy if y in on[r] else 0.0)
                trial[b] += w[y] / (counts[y] + 1) - w[x] / (counts[x] - 1)
                z = Z
                for r in range(D):
                    if trial[r] != loads[r]:
                        z += math.exp(min(trial[r] - loads[a], 600 * tau) / tau) - ex[r]
                gain = (base - _smooth_peak(z, trial, loads[a], tau)) / max(extra, 0.5)
                if gain > best[0]:
                    best = (gain, ("rewrite", q, y))
        gain, move = best
        if move is None or gain < 0.25 * move_cost * mean:
            break
        if walk_judge.priced_out(move_cost * moves, in_force, best_cost, lifetime):
            break
        if move[0] == "swap":
            _, p, q = move
            d = w[row[p]] / counts[row[p]] - w[row[q]] / counts[row[q]]
            loads[a] -= d
            loads[q // S] += d
            row[p], row[q] = row[q], row[p]
        else:
            _, q, y = move
            x, b = row[q], q // S
            dx = w[x] / (counts[x] - 1) - w[x] / counts[x]
            dy = w[y] / (counts[y] + 1) - w[y] / counts[y]
            for r in range(D):
                loads[r] = loads[r] + (dx if x in on[r] else 0.0) + (dy if y in on[r] else 0.0)
            loads[b] += w[y] / (counts[y] + 1) - w[x] / (counts[x] - 1)
            row[q] = y
            counts[x] -= 1
            counts[y] += 1
        moves = int((row != np.array(prev)).sum())
        price = walk_judge.price(row, prev, D, move_cost, slowest_rank)
        cost = walk_judge.cost(loads.max() / mean, price, in_force, lifetime)
        if cost < best_cost - 1e-12:
            best_cost, best_row, best_moves = cost, row.copy(), moves
    return best_row, best_moves


@pytest.mark.parametrize("seed", range(40))
def test_walk_takes_the_moves_of_scoring_every_candidate(seed):
    """The walk refutes most candidates on part of their terms and scores a rewrite on the
    ranks it changes only; it must still take the moves of scoring every candidate in full
    (small cases, and larger ones where many candidates come close and free moves occur)."""
    rng = np.random.default_rng(300 + seed)
    if seed % 2:
        D, S = int(rng.integers(2, 6)), int(rng.integers(1, 5))
        E = int(rng.integers(max(S, 1), D * S + 1))
    else:
        D, S = int(rng.integers(6, 10)), int(rng.integers(2, 5))
        E = int(rng.integers(D * S // 2, D * S))
    prev = plan("deepseek", rng.pareto(1.2, size=(1, E)) * 100, Topology(D, S)).phy2log[0]
    prev = prev.astype(np.int64)
    w = rng.pareto(1.2, size=E) * 100
    budget = int(rng.integers(1, D * S + 1))
    cost = float(rng.choice([0.0, 1e-3, 1e-2]))
    tau_min = float(rng.choice([1e-3, 1e-2])) * w.sum() / D
    tau_share = float(rng.choice([0.1, 1.0]))
    # The kernel's own code run as Python (``py_func``): compiled, numba may round an exp or a
    # sum differently from Python, and a tie then falls the other way.
    price = {"slowest_rank": seed % 4 >= 2, "lifetime": (1.0, 3.0, math.inf)[seed % 3]}
    row, moved = greedy_moves.py_func(prev, w, D, budget, cost, tau_min, tau_share, *price.values())
    ref = _reference_walk(
        prev, w, D, budget, move_cost=cost, tau_min=tau_min, tau_share=tau_share, **price
    )
    ref_row, ref_moved = ref
    assert row.tolist() == ref_row.tolist() and moved == ref_moved


def test_equilibrium_keeps_the_budget_of_every_layer():
    rng = np.random.default_rng(0)
    topo = Topology(4, 3)
    old, new = rng.pareto(1.1, size=(2, 3, 9)) * 100
    prev = plan("equilibrium", old, topo)
    options = {"move_cost": 0.0, "max_moved_fraction": 0.25}
    moved = plan("equilibrium", new, topo, previous=prev, options=options).moves(prev)
    assert (moved <= 3).all() and moved.sum() > 0


def test_default_wins_on_deepseek_v3_replans():
    """The issue's goal with default options: PAR <= 1.01 moving <= 20 % of the slots, re-planning
    each prefill workload from a placement fitted on the other three (32 ranks x 9 slots)."""
    from benchmarks import traces
    from eplb_rt.config import EplbConfig

    policy = EplbConfig().policy
    loads = [traces.deepseek_v3(w, moe_only=True) for w in traces.DEEPSEEK_V3_WORKLOADS]
    topo = Topology(32, 9)
    for i, new in enumerate(loads):
        prev = plan(policy, np.concatenate(loads[:i] + loads[i + 1 :]), topo)
        p = plan(policy, new, topo, previous=prev)
        assert np.nanmean(metrics.par(p, new[0])) <= 1.01
        assert p.moved_fraction(prev) <= 0.20


def _esft_task_switches(policy: str, options: dict | None = None):
    """``(previous, placement, new load)`` per ESFT task switch at 8 ranks x 9 slots: the
    previous placement fitted on one task, ``policy`` re-planned on the next with ``options``."""
    from benchmarks import traces

    tasks = [traces.esft(t) for t in traces.ESFT_TASKS]
    topo = Topology(8, 9)
    for i, old in enumerate(tasks):
        new = tasks[(i + 1) % len(tasks)]
        prev = plan(policy, old, topo)
        yield prev, plan(policy, new, topo, previous=prev, options=options), new


def test_esft_task_switch_within_a_fifth_of_the_slots():
    """ESFT task switches (previous fitted on one task, re-plan on the next) with every layer
    held to 20 % of its slots: slots moved early are moved again for free once the budget is
    spent (without that, the walk stopped at a mean PAR of 1.04)."""
    options = {"move_cost": 0.0, "max_moved_fraction": 0.2}
    pars = []
    for prev, p, new in _esft_task_switches("equilibrium", options):
        assert (p.moves(prev) <= slot_budget(0.2, prev.num_slots)).all()
        pars.append(np.nanmean(metrics.par(p, new.sum(0))))
    assert np.mean(pars) <= 1.02


def test_default_wins_on_esft_task_switches():
    """The issue's goal with default options on ESFT task switches (previous fitted on one task,
    re-plan on the next, 8 ranks x 9 slots): mean PAR <= 1.01 moving <= 20 % of the slots. A
    price per slot that held DeepSeek-V3 at 32 ranks bought 26 % here; per rank it does not."""
    from eplb_rt.config import EplbConfig

    pars, moved = [], []
    for prev, p, new in _esft_task_switches(EplbConfig().policy):
        pars.append(np.nanmean(metrics.par(p, new.sum(0))))
        moved.append(p.moved_fraction(prev))
    assert np.mean(pars) <= 1.01
    assert np.mean(moved) <= 0.20
