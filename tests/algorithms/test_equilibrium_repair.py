"""``equilibrium``'s judge takes the slots in force repaired to the walk's PAR
(:func:`~eplb_rt.algorithms.target_repair.repair_to`) as a candidate, but where the re-plan reads
a window of episodes only if the repair leaves them no less balanced than the walk, which ranks
its moves on them: the repair sees their sum alone and can fit its sampling noise."""

from __future__ import annotations

import numpy as np

from eplb_rt.algorithms.align import align_order
from eplb_rt.algorithms.metrics import row_par
from eplb_rt.algorithms.replan_judge import repaired_row, settle
from eplb_rt.algorithms.target_repair import repair_to
from tests.rows import slots_and_episodes


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
