"""On a window of sampled episodes, ``equilibrium``'s judge also takes the slots in force repaired
to the fresh plan's PAR plus what the window's sampling noise could show
(:func:`~eplb_rt.algorithms.episode_rows.noise_reach`): the fresh plan's balance, as far as the
window can tell it, reached from the slots in force. As the repair to the walk's PAR, it is
kept only where it leaves the episodes no less balanced than the walk."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks import traces
from eplb_rt import planning
from eplb_rt.algorithms import equilibrium, metrics, plan
from eplb_rt.algorithms.align import align_order
from eplb_rt.algorithms.episode_rows import noise_reach
from eplb_rt.algorithms.metrics import row_par
from eplb_rt.algorithms.replan_judge import cheapest, noise_margins, repaired_row, settle
from eplb_rt.algorithms.sums import column_sum
from eplb_rt.algorithms.target_repair import repair_to
from eplb_rt.placement import Topology
from tests.rows import random_row, slots_and_episodes


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


@pytest.mark.parametrize("shape", [(32, 9), (64, 5)], ids=["32x9", "64x5"])
def test_first_plan_on_decode_steps_balances_the_next_window_better(monkeypatch, shape):
    """The runtime's first plan from the starting layout, on 256 decode-size steps of DeepSeek-V3
    (8 tokens a rank, top-8, seeded): with the candidate, the next 256 steps are more balanced
    step by step (the gate pays for the slots it moves: 546 / 3,986 slots against 430 / 3,600
    at 32x9 / 64x5, a mean per-step PAR of 1.633 / 1.375 against 1.646 / 1.415; with the walk's
    smooth peak at a tenth of the excess, before the sixty-first session, 1.752 / 1.539 against
    1.776 / 1.656)."""
    topo = Topology(*shape)
    rng = np.random.default_rng(0)
    workload = traces.deepseek_v3("prefill_in1024", moe_only=True)[0]
    window, following = (
        traces.sample_tokens(workload, 256, topo.num_ranks * 8 * 8, rng) for _ in range(2)
    )
    start = planning.starting_placement(58, 256, topo)
    kwargs = {"cost": planning.CostModel(), "horizon": 100, "lifetime": 255}

    def per_step_par():
        d = planning.decide(window, start, topo, "equilibrium", None, **kwargs)
        steps = following[::8]
        return np.mean([np.nanmean(metrics.par(d.placement, s)) for s in steps])

    with_margin = per_step_par()
    monkeypatch.setattr(equilibrium, "noise_margins", lambda rows, *_: np.full(len(rows), -1.0))
    without = per_step_par()
    assert with_margin < without
