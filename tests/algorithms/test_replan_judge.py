"""``replan_judge``: the candidates of a re-plan for a layer with slots in force; the one taken."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from eplb_rt.algorithms import plan, warm_up
from eplb_rt.algorithms.align import align_order
from eplb_rt.algorithms.episode_rows import noise_reach
from eplb_rt.algorithms.metrics import row_par
from eplb_rt.algorithms.prices import most_received
from eplb_rt.algorithms.replan_judge import (
    cheapest,
    layer_gains,
    noise_margins,
    repaired_row,
    settle,
)
from eplb_rt.algorithms.sums import column_sum
from eplb_rt.algorithms.target_repair import repair_to
from eplb_rt.placement import Topology
from tests.rows import random_row, slots_and_episodes


@pytest.fixture(scope="module", autouse=True)
def _compiled():
    warm_up(["equilibrium"])


def test_the_repair_is_taken_only_where_it_keeps_the_episodes_balanced():
    D, S, E, K = 6, 3, 14, 4
    P = D * S
    taken = refused = 0
    for seed in range(80):
        rng = np.random.default_rng(seed)
        prev, V = slots_and_episodes(rng, D, S, E, K)
        fresh = rng.permutation(prev)  # the same counts on other slots
        if any(len(set(r)) < S for r in fresh.reshape(D, S).tolist()):
            continue
        now = V.sum(axis=0)
        got = settle(fresh, prev, now, V, False, D, P, 0.002, False, 1.0, -1.0, False)
        walk = repaired_row(prev, now, V, D, P, 0.002, False, 1.0)
        repair = repair_to(prev, now, D, row_par(walk, now[None], D), P)
        others = (prev, walk, fresh[align_order(fresh, prev, D, E)])
        if any(np.array_equal(repair, other) for other in others):
            continue
        if row_par(repair, V, D) > row_par(walk, V, D):
            refused += 1
            assert not np.array_equal(got, repair)
        elif np.array_equal(got, repair):
            taken += 1
    assert taken > 0 and refused > 0  # both sides of the rule are seen


def _case(seed, *, D=6, S=3, E=14, K=4):
    """A layer's slots in force (random), episodes (a heavy-tailed load and noise), their sum,
    and the fresh plan on the episodes."""
    prev, V = slots_and_episodes(np.random.default_rng(seed), D, S, E, K)
    fresh = plan("equilibrium", V[:, None, :], Topology(D, S)).phy2log[0].astype(np.int64)
    return prev, fresh, V, V.sum(axis=0), D, D * S


def test_the_noise_repair_is_taken_only_where_it_keeps_the_episodes_balanced():
    """Where the repair would cost least on the sum but leaves the episodes less balanced than
    the walk, the judge refuses it; where it keeps them, the judge takes it when cheapest."""
    margin, price = 0.03, 0.02
    taken = refused = 0
    for seed in range(360):
        prev, fresh, V, now, D, P = _case(seed)
        aligned = fresh[align_order(fresh, prev, D, now.size)]
        walk = repaired_row(prev, now, V, D, P, price, False, 1.0)
        to_walk = repair_to(prev, now, D, row_par(walk, now[None], D), P)
        if row_par(to_walk, V, D) > row_par(walk, V, D):
            to_walk = walk
        repair = repair_to(prev, now, D, row_par(aligned, now[None], D) + margin, P)
        if any(np.array_equal(repair, other) for other in (prev, walk, aligned, to_walk)):
            continue
        got = settle(fresh, prev, now, V, False, D, P, price, False, 1.0, margin, False)
        # Without a margin (no window of sampled counts) the candidate is not there.
        without = settle(fresh, prev, now, V, False, D, P, price, False, 1.0, -1.0, False)
        assert not np.array_equal(without, repair)
        every = np.stack([prev, walk, aligned, to_walk, repair])
        pars = np.array([row_par(row, now[None], D) for row in every])
        repair_cheapest = cheapest(every, pars, prev, price, D, P, False, 1.0) == 4
        if row_par(repair, V, D) > row_par(walk, V, D):
            assert not np.array_equal(got, repair)
            refused += repair_cheapest
        elif repair_cheapest:
            assert np.array_equal(got, repair)
            taken += 1
    assert taken > 0 and refused > 0  # both sides of the rule are seen


def _row(*ranks):
    return np.array([e for rank in ranks for e in rank], dtype=np.int64)


PREV = _row([0, 1, 2], [3, 4, 5], [6, 7, 8], [9, 10, 11])


def test_spread_moves_beat_a_patch_on_one_rank_when_priced_by_time():
    concentrated = _row([0, 1, 2], [3, 4, 5], [6, 7, 8], [9, 0, 3])  # 2 new on rank 3
    spread = _row([0, 1, 9], [3, 4, 0], [6, 7, 3], [9, 10, 6])  # 1 new on every rank
    candidates = np.stack([PREV, concentrated, spread])
    pars = np.array([1.30, 1.10, 1.12])
    # per slot: 1.10 + 0.05 * 2 / 4 = 1.125 against 1.12 + 0.05 * 4 / 4 = 1.17
    assert cheapest(candidates, pars, PREV, 0.05, 4, 12, False, 1.0) == 1
    # by time: 1.10 + 0.05 * 2 = 1.20 against 1.12 + 0.05 * 1 = 1.17
    assert cheapest(candidates, pars, PREV, 0.05, 4, 12, True, 1.0) == 2
    # the budget in moved slots still binds: the spread one moves four
    assert cheapest(candidates, pars, PREV, 0.05, 4, 3, True, 1.0) == 1


def test_the_check_out_of_sample_prices_moves_as_the_judge():
    concentrated = _row([0, 1, 2], [3, 4, 5], [6, 7, 8], [9, 0, 3])
    load = np.ones((1, 12))
    load[0, :3] = 4.0  # rank 0 carries the peak: 12 against a mean of 6.75
    fall = row_par(PREV, load, 4) - row_par(concentrated, load, 4)
    rows, previous = concentrated[None], PREV[None]
    gains = [layer_gains(rows, previous, load, 4, 0.05, slowest)[0] for slowest in (False, True)]
    assert gains == [pytest.approx(fall - 0.05 * 2 / 4), pytest.approx(fall - 0.05 * 2)]


PATCH = _row([0, 1, 2], [3, 4, 5], [6, 7, 8], [9, 0, 11])  # 1 new on rank 3


FRESH = _row([0, 1, 9], [3, 4, 0], [6, 7, 3], [9, 10, 6])  # 1 new on every rank, 2 nowhere


def test_a_longer_life_takes_the_lower_par_among_the_candidates_that_pay():
    candidates = np.stack([PREV, PATCH, FRESH])
    # Priced by time both move one expert to the slowest rank; per slot 1 / 4 against 4 / 4.
    pars = np.array([1.30, 1.10, 1.06])
    # Per slot at 0.2: 1.10 + 0.05 = 1.15 against 1.06 + 0.2 = 1.26 (both below 1.30: both pay).
    assert cheapest(candidates, pars, PREV, 0.2, 4, 12, False, 1.0) == 1
    # Over two plans: 1.10 + 0.025 = 1.125 against 1.06 + 0.1 = 1.16; over five: 1.11 / 1.10.
    assert cheapest(candidates, pars, PREV, 0.2, 4, 12, False, 2.0) == 1
    assert cheapest(candidates, pars, PREV, 0.2, 4, 12, False, 5.0) == 2
    # As long as the load holds: the least PAR that pays.
    assert cheapest(candidates, pars, PREV, 0.2, 4, 12, False, math.inf) == 2
    # The budget in moved slots still binds.
    assert cheapest(candidates, pars, PREV, 0.2, 4, 3, False, 5.0) == 1
    assert cheapest(candidates, pars, PREV, 0.2, 4, 3, False, math.inf) == 1


def test_a_candidate_that_does_not_pay_before_the_next_plan_is_never_taken():
    candidates = np.stack([PREV, PATCH, FRESH])
    pars = np.array([1.30, 1.25, 1.00])
    # FRESH: 1.00 + 0.35 * 4 / 4 = 1.35 >= 1.30 does not pay at the full price, whatever it
    # buys later; PATCH: 1.25 + 0.35 / 4 = 1.3375 does not either.
    for lifetime in (1.0, 10.0, 1e6, math.inf):
        assert cheapest(candidates, pars, PREV, 0.35, 4, 12, False, lifetime) == 0
    # Priced by time FRESH costs one transfer (1.00 + 0.25 < 1.30): it pays, and is taken.
    assert cheapest(candidates, pars, PREV, 0.25, 4, 12, True, 1.0) == 2


@pytest.mark.parametrize("seed", range(20))
def test_a_longer_life_never_takes_a_worse_par_and_what_it_takes_pays(seed):
    rng = np.random.default_rng(seed)
    D, S, E = 4, 3, 12
    prev = rng.permutation(E).astype(np.int64)
    candidates = np.stack([prev] + [
        np.where(rng.random(D * S) < rng.random(), rng.permutation(E), prev) for _ in range(3)
    ])  # fmt: skip
    pars = np.concatenate([[1.5], 1.0 + rng.random(3) * 0.6])
    move_cost, slowest = rng.random() * 0.3, bool(seed % 2)
    taken = {}
    for lifetime in (1.0, 1.5, 3.0, 100.0, math.inf):
        i = cheapest(candidates, pars, prev, move_cost, D, D * S, slowest, lifetime)
        taken[lifetime] = i
        if i:
            moved = (
                most_received(candidates[i], prev, D)
                if slowest
                else (candidates[i] != prev).sum() / D
            )
            assert pars[i] + move_cost * moved < pars[0]
    pars_taken = [pars[taken[x]] for x in sorted(taken)]
    assert all(b <= a + 1e-12 for a, b in itertools.pairwise(pars_taken))


def test_margins_only_on_windows_of_sampled_counts():
    rng = np.random.default_rng(3)
    D, E, L, K = 4, 9, 3, 5
    rows = np.stack(
        [random_row(rng, np.r_[np.full(3, 2), np.ones(E - 3, int)], D) for _ in range(L)]
    )
    rows = rows.astype(np.int64)
    tokens = rng.integers(0, 50, (L, K, E)).astype(np.float64)
    distinct = np.array([False, True, False])
    got = noise_margins(rows, tokens, distinct, True, D)
    assert got[1] == -1.0  # distinct workloads: no sampling noise between them
    for j in (0, 2):
        assert got[j] == noise_reach(rows[j], column_sum(tokens[j]), D) > 0.0
    assert (noise_margins(rows, tokens, distinct, False, D) == -1.0).all()  # not counts
    assert (noise_margins(rows, tokens[:, :1], distinct, True, D) == -1.0).all()  # one episode


# Distinct workloads (settle's ``distinct``): experts a, b, c, d on 2 ranks x 3 slots. The two
# workloads sum to a load that the placement in force (b and d replicated) balances exactly, as
# does the plan replicating a and c; only the latter is balanced on each workload (PAR 1.125
# against 1.375).
A, B, C, D = range(4)
WORKLOADS = np.array([[4.0, 2.0, 1.0, 1.0], [1.0, 1.0, 4.0, 2.0]]) / 8.0
NOW = WORKLOADS.mean(axis=0)
IN_FORCE = np.array([A, B, D, C, B, D], dtype=np.int64)
REPLANNED = np.array([A, C, B, A, C, D], dtype=np.int64)


def test_the_toy_is_what_it_says():
    now = NOW[None]
    assert row_par(IN_FORCE, now, 2) == pytest.approx(1.0)
    assert row_par(REPLANNED, now, 2) == pytest.approx(1.0)
    for w in WORKLOADS:
        assert row_par(IN_FORCE, w[None], 2) == pytest.approx(1.375)
        assert row_par(REPLANNED, w[None], 2) == pytest.approx(1.125)


def test_distinct_workloads_pay_for_the_moves_the_sum_does_not_see():
    got = settle(REPLANNED, IN_FORCE, NOW, WORKLOADS, True, 2, 6, 0.01, False, 1.0, -1.0, False)
    assert sorted(got[:3]) == sorted(REPLANNED[:3]) or sorted(got[:3]) == sorted(REPLANNED[3:])
    for w in WORKLOADS:
        assert row_par(got, w[None], 2) == pytest.approx(1.125)


def test_episodes_that_differ_by_noise_are_judged_on_their_sum():
    # The same rows, but not distinct workloads: on the sum the moves buy nothing.
    got = settle(REPLANNED, IN_FORCE, NOW, WORKLOADS, False, 2, 6, 0.01, False, 1.0, -1.0, False)
    assert np.array_equal(got, IN_FORCE)


def test_a_price_above_the_gain_keeps_the_placement_in_force():
    # Mean PAR over the rows and the sum: 1.25 in force, 1.083 replanned; two slots moved on
    # two ranks cost one move_cost.
    for price, keeps in ((0.2, True), (0.1, False)):
        got = settle(
            REPLANNED, IN_FORCE, NOW, WORKLOADS, True, 2, 6, price, False, 1.0, -1.0, False
        )
        assert np.array_equal(got, IN_FORCE) is keeps
