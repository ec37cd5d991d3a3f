"""``trade_moves``: the placement's invariants, no higher peak and fewer moved slots on random
layers of odd sizes; its repair step against a plain search of every move it may take; a
rewrite scored to the bit as it is applied; golden cases; and the re-plan of ``equilibrium``,
whose moves it leaves with nothing more to trade but on the layers in force at a layout no
load chose (not traded)."""

from __future__ import annotations

import numpy as np
import pytest

from eplb_rt.algorithms import plan
from eplb_rt.algorithms.move_trades import (
    DEPTH,
    _best_fix,
    _rewrite,
    _rewrite_max,
    _rewrite_peak,
    trade_moves,
)
from eplb_rt.algorithms.packing import holds_from_row
from eplb_rt.algorithms.starting import starting_row
from eplb_rt.placement import Placement, Topology
from tests.rows import random_row, random_slots, rank_loads


def _loads(row: np.ndarray, w: np.ndarray, D: int) -> np.ndarray:
    return rank_loads(row, w[None], np.bincount(row, minlength=w.size), D)[0]


def _moved(row: np.ndarray, prev: np.ndarray, D: int) -> int:
    """Slots whose expert their rank did not hold before (slot order aside)."""
    S = row.size // D
    return sum(
        len(set(row[r * S : (r + 1) * S]) - set(prev[r * S : (r + 1) * S])) for r in range(D)
    )


def _changed(rng: np.random.Generator, P: int, D: int, E: int) -> np.ndarray:
    """A random row of ``P`` slots: every expert once, the spare slots on random experts."""
    counts = np.ones(E, dtype=np.int64)
    for _ in range(P - E):
        counts[rng.choice(np.flatnonzero(counts < D))] += 1
    return random_row(rng, counts, D).astype(np.int64)


def _case(seed: int):
    rng = np.random.default_rng(seed)
    D = int(rng.integers(2, 8))
    S = int(rng.integers(2, 6))
    E = int(rng.integers(max(S, (D * S + 1) // 2), D * S + 1))
    prev = random_slots(rng, D, S, E)
    row = _changed(rng, D * S, D, E)
    w = np.floor(rng.pareto(1.0, E) * 50 + rng.integers(0, 3, E)).astype(np.float64)
    return D, S, E, prev, row, w


@pytest.mark.parametrize("seed", range(60))
def test_fewer_moved_slots_at_no_higher_peak_and_a_valid_placement(seed):
    D, _, E, prev, row, w = _case(seed)
    out, trades = trade_moves(row, prev, w, D, DEPTH)
    Placement(out[None], E, D)  # every expert placed, none twice on a rank
    assert _loads(out, w, D).max() <= _loads(row, w, D).max() * (1 + 1e-12)
    assert _moved(out, prev, D) <= _moved(row, prev, D) - trades  # a trade saves one or two
    # Slot order: what a rank kept stays in its previous slot, so moved slots count as above.
    assert int((out != prev).sum()) == _moved(out, prev, D)
    assert np.array_equal(row, _case(seed)[4])  # the input is not written


def test_trades_on_most_random_layers():
    """Not a property (a layer may have nothing to trade), but the kernel must find trades on
    most random re-plans, whose moves are far from the fewest."""
    traded = sum(trade_moves(c[4], c[3], c[5], c[0], DEPTH)[1] > 0 for c in map(_case, range(60)))
    assert traded >= 30


def _plain_best_fix(row, prev, w, D, best):
    """Every swap and rewrite that moves no more slots (set-wise), scored on every rank by
    numpy; the lowest peak below ``best``, or ``best``."""
    S = row.size // D
    moved = _moved(row, prev, D)
    counts = np.bincount(row, minlength=w.size)
    for p in range(row.size):
        for q in range(row.size):
            if p // S != q // S and row[p] != row[q]:
                t = row.copy()
                t[p], t[q] = row[q], row[p]
                if (
                    len(set(t[(p // S) * S : (p // S + 1) * S])) == S
                    and len(set(t[(q // S) * S : (q // S + 1) * S])) == S
                    and _moved(t, prev, D) <= moved
                ):
                    best = min(best, _loads(t, w, D).max())
        if counts[row[p]] < 2:
            continue
        for v in range(w.size):
            t = row.copy()
            t[p] = v
            if v not in row[(p // S) * S : (p // S + 1) * S] and _moved(t, prev, D) <= moved:
                best = min(best, _loads(t, w, D).max())
    return best


@pytest.mark.parametrize("seed", range(40))
def test_the_repair_step_finds_the_lowest_peak_of_a_plain_search(seed):
    D, _, E, prev, row, w = _case(seed)
    holds, prev_holds = holds_from_row(row, D, E), holds_from_row(prev, D, E)
    counts = np.bincount(row, minlength=E).astype(np.int64)
    loads = _loads(row, w, D)
    peak = loads.max()
    kind, i, j, found = _best_fix(row.copy(), holds, counts, loads, prev_holds, w, peak)
    expected = _plain_best_fix(row, prev, w, D, peak)
    assert found == pytest.approx(expected, rel=1e-12, abs=1e-12)
    if kind >= 0:  # the move it names leaves that peak
        t = row.copy()
        if kind == 0:
            t[i] = j
        else:
            t[i], t[j] = row[j], row[i]
        assert _loads(t, w, D).max() == pytest.approx(found, rel=1e-12)
        assert _moved(t, prev, D) <= _moved(row, prev, D)


def test_a_rewrite_is_scored_to_the_bit_as_it_is_applied():
    """``_rewrite_max`` is the largest load ``_rewrite`` leaves, and ``_rewrite_peak`` (no
    limit) the largest of the rank rewritten and the other ranks of its expert, to the last bit,
    for every rewrite of 40 random layers: a search that scored a rewrite in another rounding
    took a peak the move did not leave. Loads that are not whole numbers, so that roundings
    differ."""
    checked = 0
    for seed in range(40):
        rng = np.random.default_rng(seed)
        D, S, E, _, row, _ = _case(seed)
        w = rng.pareto(1.0, E) * 7.3 + rng.random(E)
        counts = np.bincount(row, minlength=E).astype(np.int64)
        holds = holds_from_row(row, D, E)
        loads = rank_loads(row, w[None], counts, D)[0]
        for q in range(row.size):
            r, u = q // S, row[q]
            if counts[u] < 2:
                continue
            for v in np.flatnonzero(~holds[r]):
                after = loads.copy()
                _rewrite(row.copy(), holds.copy(), counts.copy(), after, w, q, v)
                assert _rewrite_max(loads, holds, counts, w, r, u, v) == after.max()
                near = [r, *np.flatnonzero(holds[:, u])]
                peak = _rewrite_peak(loads, holds, counts, w, r, u, v, np.inf)
                assert peak == after[near].max()
                checked += 1
    assert checked > 1000


def test_a_slot_put_back_that_keeps_the_peak_is_traded():
    # 2 ranks x 2 slots, experts 0..2; rank 1 was (2, 1), the re-plan gave it (2, 0): expert 0
    # on both ranks. Putting 1 back there leaves the peak where it is.
    prev = np.array([0, 1, 2, 1])
    row = np.array([0, 1, 2, 0])
    w = np.array([2.0, 2.0, 4.0])
    out, trades = trade_moves(row, prev, w, 2, DEPTH)
    assert trades == 1
    assert out.tolist() == prev.tolist()


def test_trades_that_need_a_repair_move():
    # 3 ranks x 2 slots, experts 0..3 of loads 5, 7, 9, 1. In force: (3, 2) (1, 0) (1, 3);
    # the re-plan (1, 3) (2, 0) (0, 2) moved 5 slots to a peak of 8 (rank 0: 7 + 1). Putting
    # back alone reaches 4; with a free move after a put-back, 2: (0, 2) (2, 0) (1, 3), the
    # peak 8 on rank 2, whose slots are those in force.
    prev = np.array([3, 2, 1, 0, 1, 3])
    row = np.array([1, 3, 2, 0, 0, 2])
    w = np.array([5.0, 7.0, 9.0, 1.0])
    alone, _ = trade_moves(row, prev, w, 3, 0)
    out, _ = trade_moves(row, prev, w, 3, DEPTH)
    assert [int((r != prev).sum()) for r in (row, alone, out)] == [5, 4, 2]
    assert out.tolist() == [0, 2, 2, 0, 1, 3]
    assert _loads(out, w, 3).max() == _loads(row, w, 3).max() == 8.0


@pytest.mark.parametrize("w", [np.zeros(4), np.array([1.0, 1.0, 1.0, 1.0])])
def test_nothing_to_trade_returns_the_row(w):
    prev = np.array([0, 1, 2, 3])
    out, trades = trade_moves(prev, prev, w, 2, DEPTH)
    assert trades == 0 and out.tolist() == prev.tolist()
    out, trades = trade_moves(prev, prev, np.ones(4), 1, DEPTH)  # one rank: nothing to move
    assert trades == 0


def test_the_replan_leaves_no_move_to_trade():
    """A re-plan of ``equilibrium`` after a large change of load (one episode, priced per slot):
    each layer's slots are traded already, so the kernel finds nothing more at their peak.
    Without the trade the walk's rows are not (the kernel trades on some of them)."""
    rng = np.random.default_rng(3)
    L, D, S, E = 6, 8, 5, 32
    topo = Topology(D, S)
    base = np.floor(rng.pareto(1.0, (1, L, E)) * 200 + 20)
    prev = plan("equilibrium", base, topo).phy2log.astype(np.int64)
    new = np.floor(base * np.exp(1.5 * rng.standard_normal((1, L, E))))
    out = plan("equilibrium", new, topo, previous=Placement(prev, E, D)).phy2log.astype(np.int64)
    assert (out != prev).any()
    for j in range(L):
        assert trade_moves(out[j], prev[j], new[0, j], D, DEPTH)[1] == 0


def test_the_layout_before_any_heat_is_not_traded():
    """From the starting layout no load chose the slots a put-back would keep: its layers keep
    the moves the judge took, which the kernel would trade on some of them; the same layer in
    force where a plan put it is traded (per layer, in one plan)."""
    rng = np.random.default_rng(3)
    L, D, S, E = 6, 8, 5, 32
    topo = Topology(D, S)
    new = np.floor(rng.pareto(1.0, (1, L, E)) * 200 + 20)
    start = starting_row(E, topo)
    fitted = plan("equilibrium", new[:, ::-1], topo).phy2log.astype(np.int64)
    prev = np.where(np.arange(L)[:, None] % 2 == 0, start, fitted)  # even layers blank
    prev[4] = np.arange(D * S) % E  # the trivial layout engines start from
    out = plan("equilibrium", new, topo, previous=Placement(prev, E, D)).phy2log.astype(np.int64)
    left = [trade_moves(out[j], prev[j], new[0, j], D, DEPTH)[1] for j in range(L)]
    assert any(left[0::2]), left
    assert not any(left[1::2]), left
