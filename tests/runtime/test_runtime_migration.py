"""The migration planner: alignment keeps experts in place, sources are local, same-node, spread."""

from __future__ import annotations

import numpy as np
import pytest

from eplb_rt.algorithms.align import align_placement as align_to_previous
from eplb_rt.placement import Placement
from eplb_rt.runtime.migration import plan_migration
from tests.rows import random_slots


def _apply(previous: Placement, plans) -> np.ndarray:
    """Execute the moves on the old contents: what every slot holds afterwards."""
    out = previous.phy2log.copy()
    for m in plans:
        out[m.layer, m.dst] = previous.phy2log[m.layer, m.src]
    return out


def test_kept_experts_keep_their_slot():
    # 2 ranks x 3 slots; the new plan lists rank 0's experts in another order.
    old = Placement(np.array([[0, 1, 2, 3, 4, 5]]), 6, 2)
    new = Placement(np.array([[2, 5, 0, 3, 4, 1]]), 6, 2)
    aligned = align_to_previous(old, new)
    assert aligned.phy2log.tolist() == [[0, 5, 2, 3, 4, 1]]
    plans = plan_migration(old, aligned)
    assert [(m.dst.tolist(), m.src.tolist()) for m in plans] == [([1, 5], [5, 1])]
    assert np.array_equal(_apply(old, plans), aligned.phy2log)


def test_shares_follow_their_slot_when_aligned():
    old = Placement(np.array([[0, 1, 2, 0]]), 3, 2)
    new = Placement(np.array([[1, 0, 0, 2]]), 3, 2, slot_share=np.array([[1.0, 0.25, 0.75, 1.0]]))
    aligned = align_to_previous(old, new)
    assert aligned.phy2log.tolist() == [[0, 1, 2, 0]]
    assert aligned.slot_share.tolist() == [[0.25, 1.0, 1.0, 0.75]]
    assert plan_migration(old, aligned) == []


def test_local_source_is_preferred_then_same_node_then_least_sending():
    # 4 ranks x 2 slots on 2 nodes (ranks 0-1, 2-3). Expert 0 lives on ranks 0 and 2.
    old = Placement(np.array([[0, 1, 2, 3, 0, 4, 5, 1]]), 6, 4)
    new = Placement(np.array([[0, 1, 2, 0, 3, 4, 5, 0]]), 6, 4)
    assert align_to_previous(old, new) == new
    (plan,) = plan_migration(old, new, num_nodes=2)
    moves = dict(zip(plan.dst.tolist(), plan.src.tolist(), strict=True))
    assert moves == {3: 0, 4: 3, 7: 4}  # expert 0 from the same node; expert 3 from slot 3
    assert np.array_equal(_apply(old, [plan]), new.phy2log)


def test_sending_is_spread_over_replicas():
    # Expert 0 has replicas on ranks 0, 1, 2; ranks 3, 4, 5 each need it.
    old = Placement(np.array([[0, 1, 0, 2, 0, 3, 4, 5, 4, 6, 5, 6]]), 7, 6)
    new = Placement(np.array([[0, 1, 0, 2, 0, 3, 4, 0, 0, 6, 5, 0]]), 7, 6)
    (plan,) = plan_migration(old, new)
    assert sorted(plan.src.tolist()) == [0, 2, 4]
    assert plan.num_remote == 3
    for rank in range(6):
        assert plan.sent_by(rank).size == (1 if rank < 3 else 0)
        assert plan.received_by(rank).size == (1 if rank >= 3 else 0)


def test_an_expert_only_one_rank_holds_is_sent_from_there_before_replicas_are_chosen():
    # 4 ranks x 2 slots. Expert 1 lives on rank 0 alone, expert 0 on ranks 0 and 1: slot 4
    # (lower than slot 6, which needs expert 1) takes expert 0 from rank 1, so that no rank
    # sends twice. Taken in slot order, rank 0 would have sent both.
    old = Placement(np.array([[0, 1, 0, 2, 3, 4, 3, 2]]), 5, 4)
    new = Placement(np.array([[0, 1, 3, 2, 0, 4, 1, 2]]), 5, 4)
    (plan,) = plan_migration(old, new)
    assert dict(zip(plan.dst.tolist(), plan.src.tolist(), strict=True)) == {2: 4, 4: 2, 6: 1}
    assert max(plan.sent_by(rank).size for rank in range(4)) == 1
    assert np.array_equal(_apply(old, [plan]), new.phy2log)


def test_where_slot_order_sends_less_it_is_kept():
    # Taking first the moves that fewest ranks can give, one rank would send 3 here.
    old = Placement(np.array([[1, 5, 0, 3, 2, 0, 4, 2, 5]]), 6, 3)
    new = Placement(np.array([[1, 3, 2, 4, 5, 1, 2, 4, 0]]), 6, 3)
    (plan,) = plan_migration(old, new)
    assert max(plan.sent_by(rank).size for rank in range(3)) == 2
    assert np.array_equal(_apply(old, [plan]), new.phy2log)


@pytest.mark.parametrize("seed", range(40))
def test_sources_are_valid_and_send_no_more_than_in_slot_order(seed):
    """Every move's source holds its expert, on the receiver's node where one does; the most one
    rank sends is at most what taking the moves in slot order sends (the regression guards are
    the two tests above: this one holds for slot order itself)."""
    rng = np.random.default_rng(seed)
    D, S = int(rng.integers(2, 9)), int(rng.integers(2, 5))
    E, nodes = int(rng.integers((D * S + 1) // 2, D * S + 1)), 2 if D % 2 == 0 else 1
    rows = [random_slots(rng, D, S, E) for _ in range(2)]
    old, new = (Placement(row[None], E, D) for row in rows)
    (plan,) = plan_migration(old, new, num_nodes=nodes)
    assert np.array_equal(_apply(old, [plan]), new.phy2log)
    holders = {e: np.flatnonzero(rows[0] == e) // S for e in range(E)}
    in_order = np.zeros(D, dtype=np.int64)
    for d, s, e in zip(plan.dst.tolist(), plan.src.tolist(), plan.expert.tolist(), strict=True):
        me, ranks = d // S, holders[e]
        if me in ranks:
            assert s // S == me
            continue
        near = ranks[ranks // (D // nodes) == me // (D // nodes)]
        ranks = near if near.size else ranks
        assert s // S in ranks
        in_order[ranks[np.argmin(in_order[ranks])]] += 1  # slot order, least sending
    assert max(plan.sent_by(rank).size for rank in range(D)) <= in_order.max()


def test_unchanged_layers_have_no_plan_and_odd_sizes():
    one = Placement(np.zeros((3, 1), dtype=np.int32), 1, 1)  # 1 expert, 1 rank, 1 slot
    assert plan_migration(one, align_to_previous(one, one)) == []
    rng = np.random.default_rng(7)
    E, D, L = 7, 3, 5  # prime expert count, 3 slots per rank, 2 redundant slots

    def random_placement() -> Placement:
        rows = []
        while len(rows) < L:
            row = np.r_[rng.permutation(E), rng.choice(E, 2, replace=False)]
            if all(len(set(r)) == len(r) for r in row.reshape(D, -1).tolist()):
                rows.append(row)
        return Placement(np.array(rows), E, D)

    old, new = random_placement(), random_placement()
    aligned = align_to_previous(old, new)
    for layer in range(L):  # the new plan's rank sets, ranks relabelled
        assert sorted(sorted(r) for r in aligned.by_rank()[layer].tolist()) == sorted(
            sorted(r) for r in new.by_rank()[layer].tolist()
        )
    plans = plan_migration(old, aligned)
    assert np.array_equal(_apply(old, plans), aligned.phy2log)
    assert sum(m.num_moves for m in plans) == int(aligned.moves(old).sum())
    assert aligned.moves(old).sum() <= new.moves(old).sum()


def test_mismatched_placements_are_rejected():
    a = Placement(np.array([[0, 1]]), 2, 1)
    b = Placement(np.array([[0, 1, 0, 1]]), 2, 2)
    with pytest.raises(ValueError, match="cannot align"):
        align_to_previous(a, b)
    with pytest.raises(ValueError, match="cannot migrate"):
        plan_migration(a, b)
    for nodes in (3, 0, -1, 2.0):
        with pytest.raises(ValueError, match="num_nodes must be an integer >= 1 dividing"):
            plan_migration(b, b, num_nodes=nodes)
    # Same slots, other experts or ranks: the tables would not describe one model.
    c = Placement(np.array([[0, 1, 2, 3]]), 4, 2)
    d = Placement(np.array([[0, 1, 0, 1]]), 2, 4)
    for other in (c, d):
        with pytest.raises(ValueError, match="cannot migrate"):
            plan_migration(b, other)


def test_local_copies_are_moves_but_not_remote():
    previous = Placement(np.array([[0, 1, 2, 3]]), 4, 2)
    (inside,) = plan_migration(previous, Placement(np.array([[1, 0, 3, 2]]), 4, 2))
    assert (inside.num_moves, inside.num_remote) == (4, 0)
    (across,) = plan_migration(previous, Placement(np.array([[2, 1, 0, 3]]), 4, 2))
    assert (across.num_moves, across.num_remote) == (2, 2)
