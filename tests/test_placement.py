"""Placement and Topology: invariants, every validation error, derived views, files, moves."""

from __future__ import annotations

import numpy as np
import pytest

from eplb_rt.placement import Placement, Topology


def make(rows, num_experts, num_ranks, share=None) -> Placement:
    return Placement(np.array(rows), num_experts, num_ranks, share)


# ------------------------------------------------------------------------------- Topology
@pytest.mark.parametrize(
    ("kwargs", "bad"),
    [
        ({"num_ranks": 0, "num_slots_per_rank": 1}, "num_ranks"),
        ({"num_ranks": 2, "num_slots_per_rank": 0}, "num_slots_per_rank"),
        ({"num_ranks": True, "num_slots_per_rank": 1}, "num_ranks"),
        ({"num_ranks": 2.0, "num_slots_per_rank": 1}, "num_ranks"),
        ({"num_ranks": 2, "num_slots_per_rank": 1, "num_groups": 0}, "num_groups"),
    ],
)
def test_topology_rejects_non_positive_integers(kwargs, bad):
    said = rf"^Topology\.{bad} must be an integer >= 1, got {kwargs[bad]!r}$"
    with pytest.raises(ValueError, match=said):
        Topology(**kwargs)


@pytest.mark.parametrize(("experts", "ranks"), [(6.9, 2), (6, 2.7), (6, "2"), (True, 2)])
def test_placement_sizes_must_be_integers(experts, ranks):
    with pytest.raises(ValueError, match="must be an integer"):
        Placement(np.array([[0, 1, 2, 3, 4, 5]]), experts, ranks)


def test_more_experts_than_slots_is_refused_before_any_table_is_made():
    """An [L, E] table of 2**40 experts asked for 8 TiB before the check that refuses it."""
    with pytest.raises(ValueError, match=r"num_experts \(1099511627776\) exceeds the 4 slots"):
        Placement(np.zeros((1, 4), dtype=np.int64), 2**40, 2)


def test_max_replicas_must_be_an_integer():
    placement = Placement(np.array([[0, 1, 2, 0]]), 3, 2)
    with pytest.raises(ValueError, match=r"max_replicas must be an integer, got 2.5"):
        placement.log2phy(2.5)
    assert placement.log2phy(np.int64(3)).shape == (1, 3, 3)


def test_a_table_wider_than_the_slots_is_refused_before_it_is_made():
    placement = Placement(np.array([[0, 1, 2, 0]]), 3, 2)
    assert placement.log2phy(4).shape == (1, 3, 4)
    with pytest.raises(ValueError, match=r"max_replicas=1099511627776 exceeds the 4 slots"):
        placement.log2phy(2**40)
    with pytest.raises(ValueError, match=r"max_replicas=5 exceeds the 4 slots"):
        placement.replica_share(5)


@pytest.mark.parametrize(
    "call",
    [
        lambda p: p.moves(p.phy2log),
        lambda p: p.moved_fraction(p.phy2log),
        lambda p: p.changed_layers(p.phy2log),
    ],
    ids=["moves", "moved_fraction", "changed_layers"],
)
def test_a_previous_that_is_not_a_placement_is_named(call):
    placement = Placement(np.array([[0, 1, 2, 0]]), 3, 2)
    with pytest.raises(TypeError, match=r"^previous must be a Placement, got ndarray$"):
        call(placement)


def test_building_from_what_is_not_a_placement_or_topology_is_named():
    placement = Placement(np.array([[0, 1, 2, 0]]), 3, 2)
    with pytest.raises(TypeError, match=r"^other must be a Placement, got list$"):
        placement.replace_layers([0], [[0, 1, 2, 0]])
    with pytest.raises(TypeError, match=r"^layers\[1\] must be a Placement, got ndarray$"):
        Placement.stack([placement, placement.phy2log])
    with pytest.raises(TypeError, match=r"^topology must be a Topology, got tuple$"):
        Placement.initial(1, 8, (2, 5))


def test_a_share_that_is_not_a_number_is_named():
    with pytest.raises(TypeError, match=r"^slot_share must hold real numbers, got dtype <U1$"):
        make([[0, 1, 1, 2]], 3, 2, np.array([["a"] * 4]))
    with pytest.raises(TypeError, match=r"got dtype bool"):
        make([[0, 1, 1, 2]], 3, 2, np.ones((1, 4), dtype=bool))


def test_a_placement_without_layers_has_tables_without_layers():
    empty = Placement(np.zeros((0, 6), dtype=np.int64), 6, 2)
    assert empty.max_replicas == 1
    assert empty.log2phy().shape == (0, 6, 1) and empty.replica_share().shape == (0, 6, 1)


def test_topology_ranks_must_divide_into_nodes():
    with pytest.raises(ValueError, match="multiple of num_nodes"):
        Topology(6, 2, num_nodes=4)
    topo = Topology(6, 2, num_nodes=3, num_groups=2)
    assert (topo.num_slots, topo.ranks_per_node) == (12, 2)


def test_check_experts_bounds():
    topo = Topology(3, 2)
    topo.check_experts(6)
    topo.check_experts(2)
    with pytest.raises(ValueError, match="do not fit"):
        topo.check_experts(7)
    with pytest.raises(ValueError, match="exceeds num_experts"):
        topo.check_experts(1)
    with pytest.raises(ValueError, match=">= 1"):
        topo.check_experts(0)
    for bad in ("4", 4.0, True, None):
        with pytest.raises(ValueError, match=f"num_experts must be an integer >= 1, got {bad!r}"):
            topo.check_experts(bad)


@pytest.mark.parametrize(
    ("layers", "experts", "match"),
    [
        (-1, 4, "num_layers must be an integer >= 1, got -1"),
        (0, 4, "num_layers must be an integer >= 1, got 0"),
        (2.0, 4, "num_layers must be an integer >= 1, got 2.0"),
        (2, 3.5, "num_experts must be an integer >= 1, got 3.5"),
    ],
)
def test_initial_names_a_size_that_is_not_a_count(layers, experts, match):
    with pytest.raises(ValueError, match=match):
        Placement.initial(layers, experts, Topology(2, 2))


def test_expert_map_names_a_rank_that_is_not_an_integer():
    placement = Placement.initial(1, 4, Topology(2, 2))
    for bad in (1.0, 0.5, "1", True):
        with pytest.raises(ValueError, match=r"rank must be an integer in \[0, 2\)"):
            placement.expert_map(bad)
    np.testing.assert_array_equal(placement.expert_map(np.int64(1)), [[-1, -1, 0, 1]])


def test_a_placement_without_layers_still_needs_a_slot_per_expert():
    with pytest.raises(ValueError, match=r"num_experts \(100\) exceeds the 4 slots"):
        Placement(np.zeros((0, 4), dtype=np.int64), 100, 2)


# ------------------------------------------------------------------------------- validation
def test_valid_placement_and_read_only_arrays():
    p = make([[0, 1, 2, 0], [2, 1, 1, 0]], 3, 2)
    assert (p.num_layers, p.num_slots, p.num_slots_per_rank, p.num_redundant) == (2, 4, 2, 1)
    with pytest.raises(ValueError):
        p.phy2log[0, 0] = 1
    with pytest.raises(ValueError):
        p.slot_share[0, 0] = 1.0


@pytest.mark.parametrize(
    ("rows", "num_experts", "num_ranks", "error", "match"),
    [
        ([0, 1], 2, 1, ValueError, r"must be \[L, P\]"),
        ([[0.0, 1.0]], 2, 1, TypeError, "integers"),
        ([[0, 1, 2]], 3, 2, ValueError, "not a multiple of 2 ranks"),
        ([[0, 1, 2]], 3, 0, ValueError, "^num_ranks must be an integer >= 1, got 0$"),
        ([[0, 3, 1, 2]], 3, 2, ValueError, r"expert id 3 not in \[0, 3\)"),
        ([[0, -1]], 2, 2, ValueError, r"expert id -1"),
        ([[0, 1, 0, 1]], 3, 2, ValueError, "expert 2 has no slot"),
        ([[0, 0, 1, 2]], 3, 2, ValueError, "rank 0 holds two replicas of expert 0"),
        (
            [[0, 1, 1, 0], [0, 0, 1, 1]],
            2,
            2,
            ValueError,
            "layer 1: rank 0 holds two replicas of expert 0",
        ),
        ([[0]], 0, 1, ValueError, "^num_experts must be an integer >= 1, got 0$"),
    ],
)
def test_validation_errors(rows, num_experts, num_ranks, error, match):
    with pytest.raises(error, match=match):
        make(rows, num_experts, num_ranks)


@pytest.mark.parametrize(
    ("share", "match"),
    [
        ([[0.5, 0.5]], "shape of phy2log"),
        ([[1.0, 0.5, 0.5, np.nan]], r"^layer 0: slot_share\[0, 3\] = nan, expected a finite"),
        ([[1.0, 1.5, -0.5, 1.0]], r"^layer 0: slot_share\[0, 2\] = -0.5, expected .* >= 0$"),
        ([[1.0, 0.7, 0.7, 1.0]], "shares of expert 1 sum to 1.4"),
    ],
)
def test_share_validation_errors(share, match):
    with pytest.raises(ValueError, match=match):
        make([[0, 1, 1, 2]], 3, 2, np.array(share))


def test_shares_that_sum_off_one_by_a_ten_thousandth_are_refused():
    with pytest.raises(ValueError, match="sum to"):
        Placement([[0, 0]], 1, 2, [[0.5, 0.5001]])


# ------------------------------------------------------------------------------- derived views
def test_derived_views_on_odd_shape():
    # 1 layer, 5 experts, 3 ranks x 3 slots: expert 0 has 3 replicas, 2 has 2.
    p = make([[0, 1, 2, 0, 3, 2, 4, 0, 1]], 5, 3)
    np.testing.assert_array_equal(p.logcnt, [[3, 2, 2, 1, 1]])
    assert p.max_replicas == 3
    np.testing.assert_array_equal(
        p.log2phy(),
        [[[0, 3, 7], [1, 8, -1], [2, 5, -1], [4, -1, -1], [6, -1, -1]]],
    )
    np.testing.assert_array_equal(p.log2phy(4)[0, 0], [0, 3, 7, -1])
    share = p.replica_share()
    assert share.dtype == np.float32
    np.testing.assert_allclose(share[0, 0], [1 / 3] * 3)
    np.testing.assert_allclose(share[0, 3], [1, 0, 0])
    np.testing.assert_array_equal(p.expert_map(0), [[0, 1, 2, -1, -1]])
    np.testing.assert_array_equal(p.expert_map(1), [[0, -1, 2, 1, -1]])
    np.testing.assert_array_equal(p.expert_map(2), [[1, 2, -1, -1, 0]])
    np.testing.assert_array_equal(p.by_rank()[0, 2], [4, 0, 1])
    assert p.is_uniform
    with pytest.raises(ValueError, match="below the largest replica count"):
        p.log2phy(2)
    with pytest.raises(ValueError, match=r"rank must be an integer in \[0, 3\)"):
        p.expert_map(3)


def test_one_expert_everywhere():
    p = make([[0, 0, 0]], 1, 3)
    np.testing.assert_array_equal(p.log2phy(), [[[0, 1, 2]]])
    for rank in range(3):
        np.testing.assert_array_equal(p.expert_map(rank), [[0]])


def test_non_uniform_replica_share_follows_log2phy_order():
    share = np.array([[0.25, 1.0, 0.75, 1.0]])
    p = make([[0, 1, 0, 2]], 3, 2, share)
    assert not p.is_uniform
    np.testing.assert_array_equal(p.log2phy()[0, 0], [0, 2])
    np.testing.assert_allclose(p.replica_share()[0], [[0.25, 0.75], [1, 0], [1, 0]])
    assert p.with_shares(None).is_uniform
    assert make([[0, 1, 0, 2]], 3, 2, np.array([[0.5, 1, 0.5, 1]])).is_uniform


# ------------------------------------------------------------------------------- comparisons
def test_moves_and_changed_layers():
    a = make([[0, 1, 2, 0], [0, 1, 2, 1]], 3, 2)
    b = make([[0, 1, 2, 0], [2, 1, 0, 1]], 3, 2)
    np.testing.assert_array_equal(b.moves(a), [0, 2])
    assert b.moved_fraction(a) == 2 / 8
    np.testing.assert_array_equal(b.changed_layers(a), [1])
    assert a.moves(a).sum() == 0
    shares = a.with_shares(np.array([[0.25, 1, 1, 0.75], [1, 0.5, 1, 0.5]]))
    np.testing.assert_array_equal(shares.moves(a), [0, 0])
    np.testing.assert_array_equal(shares.changed_layers(a), [0])
    other = make([[0, 1, 2, 0, 1, 2]], 3, 3)
    with pytest.raises(ValueError, match="placements differ in shape"):
        other.moves(a.select_layers([0]))


def test_placements_of_other_expert_counts_do_not_mix():
    """Same slots, other expert counts: replacing a layer would carry ids out of range."""
    a, b = make([[0, 1, 0, 1]], 2, 2), make([[0, 1, 2, 3]], 4, 2)
    for call in (lambda: a.moves(b), lambda: a.replace_layers([0], b)):
        with pytest.raises(ValueError, match="differ in shape"):
            call()


def test_initial_select_replace_stack():
    topo = Topology(3, 3)
    init = Placement.initial(2, 7, topo)
    np.testing.assert_array_equal(init.phy2log[1], [0, 1, 2, 3, 4, 5, 6, 0, 1])
    with pytest.raises(ValueError, match="do not fit"):
        Placement.initial(1, 10, topo)
    other = make([[6, 5, 4, 3, 2, 1, 0, 1, 2]] * 2, 7, 3)
    mixed = init.replace_layers([1], other)
    np.testing.assert_array_equal(mixed.phy2log, [init.phy2log[0], other.phy2log[1]])
    assert mixed.select_layers([1, 0]) == Placement.stack(
        [other.select_layers([1]), init.select_layers([0])]
    )
    with pytest.raises(ValueError, match="at least one"):
        Placement.stack([])
    with pytest.raises(ValueError, match="cannot stack"):
        Placement.stack([init, make([[0, 1]], 2, 1)])
    weighted = make([[0, 1, 0, 2]], 3, 2, np.array([[0.2, 1, 0.8, 1]]))
    stacked = Placement.stack([weighted, weighted.with_shares(None)])
    np.testing.assert_allclose(stacked.slot_share[:, 0], [0.2, 0.5])


def _random_placement(rng, L, E, D, S, *, weighted):
    rows = []
    base = Placement.initial(1, E, Topology(D, S)).phy2log[0]
    while len(rows) < L:
        row = rng.permutation(base)
        if all(len(set(rank)) == S for rank in row.reshape(D, S)):
            rows.append(row)
    p = Placement(np.array(rows), E, D)
    if not weighted:
        return p
    share = p.slot_share * rng.uniform(0.5, 1.5, p.slot_share.shape)
    for layer in range(L):  # each expert's shares sum to 1 again
        sums = np.bincount(p.phy2log[layer], weights=share[layer], minlength=E)
        share[layer] /= sums[p.phy2log[layer]]
    return p.with_shares(share)


@pytest.mark.parametrize("seed", range(20))
def test_replace_layers_is_the_placement_built_from_the_mixed_rows(seed):
    rng = np.random.default_rng(seed)
    L, D, S = int(rng.integers(1, 6)), int(rng.integers(1, 5)), int(rng.integers(2, 5))
    E = int(rng.integers(max(S, 2), D * S + 1)) if D > 1 else S
    a = _random_placement(rng, L, E, D, S, weighted=bool(rng.integers(2)))
    b = _random_placement(rng, L, E, D, S, weighted=bool(rng.integers(2)))
    layers = np.flatnonzero(rng.random(L) < 0.5)
    got = a.replace_layers(layers, b)
    take = np.isin(np.arange(L), layers)[:, None]
    p2l = np.where(take, b.phy2log, a.phy2log)
    uniform = a.is_uniform and b.is_uniform
    want = Placement(p2l, E, D, None if uniform else np.where(take, b.slot_share, a.slot_share))
    assert got == want
    np.testing.assert_array_equal(got.phy2log, want.phy2log)
    np.testing.assert_allclose(got.slot_share, want.slot_share, rtol=0, atol=1e-12)
    np.testing.assert_array_equal(got.uniform_layers(), want.uniform_layers())
    np.testing.assert_array_equal(got.log2phy(D), want.log2phy(D))
    np.testing.assert_array_equal(got.replica_share(D), want.replica_share(D))
    assert not got.phy2log.flags.writeable and not got.slot_share.flags.writeable
    # The same layers as a mask (as plan's ``layers``) are the same layers.
    assert a.replace_layers(take[:, 0], b) == got
    assert a.select_layers(take[:, 0]) == a.select_layers(layers)


@pytest.mark.parametrize(
    ("layers", "match"),
    [
        (np.array([True, False]), r"layer mask must be \[3\] bool, got bool \(2,\)"),
        ([0, 3], r"layer indices must be in \[0, 3\), got \[0, 3\]"),
        ([-1], r"layer indices must be in \[0, 3\), got \[-1\]"),
        ([0.5], "layers must be a 1-D sequence of layer indices or a \\[3\\] bool mask"),
        ([[0, 1]], "layers must be a 1-D sequence"),
    ],
)
def test_select_and_replace_layers_refuse_bad_layers(layers, match):
    a = Placement.initial(3, 4, Topology(2, 2))
    b = make([[3, 2, 1, 0]] * 3, 4, 2)
    with pytest.raises(ValueError, match=match):
        a.select_layers(layers)
    with pytest.raises(ValueError, match=match):
        a.replace_layers(layers, b)
    assert a.select_layers([]).num_layers == 0 and a.replace_layers([], b) == a


def test_equality_and_repr():
    a = make([[0, 1]], 2, 1)
    assert a == make([[0, 1]], 2, 1)
    assert a != make([[1, 0]], 2, 1)
    assert a != make([[0, 1]], 2, 2)
    assert make([[0, 0]], 1, 2, np.array([[0.25, 0.75]])) != make([[0, 0]], 1, 2)
    assert (a == "x") is False
    assert "uniform" in repr(a)
    assert "1 layers x 2 experts on 1 ranks x 2 slots" in a.describe()
