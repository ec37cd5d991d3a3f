"""Metrics: slot/rank load, PAR, max rank load and the ``score`` summary, exact on small cases."""

from __future__ import annotations

import numpy as np
import pytest

from eplb_rt.algorithms import metrics
from eplb_rt.placement import Placement

# 3 experts on 2 ranks x 2 slots: rank 0 = [0, 1], rank 1 = [0, 2]; expert 0 has two replicas.
P2L = np.array([[0, 1, 0, 2]])
LOAD = np.array([[8.0, 3.0, 1.0]])


def test_slot_and_rank_load_uniform():
    p = Placement(P2L, 3, 2)
    np.testing.assert_array_equal(metrics.slot_load(p, LOAD), [[4, 3, 4, 1]])
    np.testing.assert_array_equal(metrics.rank_load(p, LOAD), [[7, 5]])
    np.testing.assert_array_equal(metrics.max_rank_load(p, LOAD), [7])
    np.testing.assert_allclose(metrics.par(p, LOAD), [7 / 6])


def test_shares_move_load_between_replicas():
    p = Placement(P2L, 3, 2, np.array([[0.25, 1.0, 0.75, 1.0]]))
    np.testing.assert_array_equal(metrics.slot_load(p, LOAD), [[2, 3, 6, 1]])
    np.testing.assert_array_equal(metrics.rank_load(p, LOAD), [[5, 7]])
    p = p.with_shares(np.array([[0.375, 1.0, 0.625, 1.0]]))
    np.testing.assert_allclose(metrics.par(p, LOAD), [1.0])


@pytest.mark.parametrize("lead", [(), (5,), (2, 3)])
def test_slot_load_matches_a_plain_loop_over_layers(lead):
    """Many layers of odd sizes, any leading axes, shares: each slot gets its expert's load in
    its own layer times its share, bit for bit."""
    rng = np.random.default_rng(len(lead))
    L, E, D, S = 7, 11, 3, 5
    rows = []
    for _ in range(L):
        # Every expert once, the last rank's extra slots from the first two ranks' experts.
        order = rng.permutation(E)
        rows.append(np.concatenate([order, rng.choice(order[:10], D * S - E, replace=False)]))
    phy2log = np.stack(rows)
    p = Placement(phy2log, E, D)
    weight = rng.uniform(0.5, 1.5, phy2log.shape)
    summed = np.stack([np.bincount(row, w, E) for row, w in zip(phy2log, weight, strict=True)])
    p = p.with_shares(weight / np.take_along_axis(summed, phy2log, axis=1))
    load = rng.random((*lead, L, E)) * 100
    expected = np.empty((*lead, L, D * S))
    for index in np.ndindex(*lead):
        for layer in range(L):
            for slot in range(D * S):
                expert = phy2log[layer, slot]
                share = p.slot_share[layer, slot]
                expected[(*index, layer, slot)] = load[(*index, layer, expert)] * share
    np.testing.assert_array_equal(metrics.slot_load(p, load), expected)


@pytest.mark.parametrize(
    ("lead", "D", "S"), [((), 3, 5), ((4,), 2, 9), ((2, 3), 4, 17), ((3,), 2, 130)]
)
def test_rank_load_is_the_slots_summed_as_numpy_sums_them(lead, D, S):
    """Each rank's slot loads summed over the rank as numpy sums them (pairwise past 8 slots),
    bit for bit, with shares and any leading axes."""
    rng = np.random.default_rng(S)
    L, E = 3, D * S - 1
    # Every expert once, the first slot's expert again in the last slot (another rank).
    rows = [rng.permutation(E) for _ in range(L)]
    phy2log = np.stack([np.r_[row, row[0]] for row in rows])
    weight = rng.uniform(0.5, 1.5, phy2log.shape)
    summed = np.stack([np.bincount(row, w, E) for row, w in zip(phy2log, weight, strict=True)])
    placement = Placement(phy2log, E, D, weight / np.take_along_axis(summed, phy2log, axis=1))
    load = rng.random((*lead, L, E)) ** 4 * 1e3
    expected = metrics.slot_load(placement, load).reshape(*lead, L, D, S).sum(axis=-1)
    np.testing.assert_array_equal(metrics.rank_load(placement, load), expected)
    with pytest.raises(ValueError, match="expected"):
        metrics.rank_load(placement, load[..., :-1])


def test_time_axis_is_kept():
    p = Placement(P2L, 3, 2)
    steps = np.array([[[8.0, 3, 1]], [[0, 0, 0]], [[2, 0, 2]]])
    ranks = metrics.rank_load(p, steps)
    assert ranks.shape == (3, 1, 2)
    np.testing.assert_array_equal(ranks[:, 0], [[7, 5], [0, 0], [1, 3]])
    par = metrics.par(p, steps)
    assert par.shape == (3, 1)
    assert np.isnan(par[1, 0])
    np.testing.assert_allclose(par[2, 0], 1.5)


def test_wrong_shapes_are_rejected():
    p = Placement(P2L, 3, 2)
    with pytest.raises(ValueError, match=r"expected \[..., 1, 3\]"):
        metrics.slot_load(p, np.ones((1, 4)))
    with pytest.raises(ValueError, match="has 2 layers, expected 1"):
        metrics.score(p, np.ones((2, 3)))
    with pytest.raises(ValueError, match="negative"):
        metrics.score(p, -LOAD)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (-1.0, r"negative values \(min -1; first at \(0, 1\)\)"),
        (np.nan, r"NaN or infinite values \(first at \(0, 1\): nan\)"),
        (np.inf, r"NaN or infinite values \(first at \(0, 1\): inf\)"),
        (1j, "numeric"),
    ],
)
@pytest.mark.parametrize(
    "measure", [metrics.par, metrics.rank_load, metrics.slot_load, metrics.max_rank_load]
)
def test_a_load_no_count_can_be_is_refused_not_measured(measure, value, message):
    """A negative load gave a PAR of 2, and NaN one of NaN, which means a layer without load."""
    load = np.array([[3.0, value, 1.0]], dtype=complex if isinstance(value, complex) else float)
    with pytest.raises(ValueError, match=message):
        measure(Placement(P2L, 3, 2), load)


def test_score_summary_with_zero_layers_and_moves():
    p = Placement(np.array([[0, 1, 0, 2], [0, 1, 2, 0], [2, 0, 1, 0]]), 3, 2)
    load = np.array([[8.0, 3, 1], [0, 0, 0], [1, 1, 2]])
    previous = Placement(np.array([[0, 1, 0, 2], [0, 1, 2, 0], [0, 1, 2, 0]]), 3, 2)
    summary = metrics.score(p, np.stack([load / 2, load / 2]), previous)
    assert summary["layers"] == 3
    assert summary["loaded_layers"] == 2
    assert summary["zero_load_layers"] == [1]
    assert summary["par_per_layer"][1] is None
    np.testing.assert_allclose(summary["par_per_layer"][0], 7 / 6)
    # layer 2: rank 0 = [2, 0] -> 2 + 0.5, rank 1 = [1, 0] -> 1 + 0.5: PAR 2.5 / 2.
    np.testing.assert_allclose(summary["par_per_layer"][2], 1.25)
    np.testing.assert_allclose(summary["par_mean"], (7 / 6 + 1.25) / 2)
    np.testing.assert_allclose(summary["par_max"], 1.25)
    assert summary["max_rank_load_per_layer"] == [7.0, 0.0, 2.5]
    assert summary["moves"] == 3
    assert summary["moves_per_layer"] == [0, 0, 3]
    assert summary["moved_fraction"] == 3 / 12


def test_score_all_zero_is_nan_not_error():
    p = Placement(P2L, 3, 2)
    summary = metrics.score(p, np.zeros((1, 3)))
    assert summary["loaded_layers"] == 0
    assert np.isnan(summary["par_mean"])
    assert np.isnan(summary["par_max"])
    assert "moves" not in summary


def test_a_placement_of_no_layers_measures_no_layers():
    """``select_layers`` of an empty mask makes one; a reshape by -1 failed on it."""
    empty = Placement(np.zeros((0, 8), dtype=np.int64), 4, 2)
    assert metrics.par(empty, np.zeros((0, 4))).shape == (0,)
    assert metrics.par(empty, np.zeros((3, 0, 4))).shape == (3, 0)
    assert metrics.slot_load(empty, np.zeros((0, 4))).shape == (0, 8)
    assert metrics.rank_load(empty, np.zeros((2, 0, 4))).shape == (2, 0, 2)


@pytest.mark.parametrize("value", [5e-324, 1.5e-323, 1e-310])
def test_par_of_a_subnormal_load_is_its_par_not_nan(value):
    """The mean of such loads underflows (to 0, or rounded up): PAR 2 read NaN or 1.5, and the
    layer was listed among those with no load."""
    placement = Placement(np.array([[0, 1, 2, 3]]), 4, 2)
    load = np.array([[value, 0.0, 0.0, 0.0]])
    assert metrics.par(placement, load).tolist() == [2.0]
    assert metrics.score(placement, load)["zero_load_layers"] == []
    # Split over replicas, each replica's share of it rounds to 0: PAR read NaN.
    replicated = Placement(np.array([[0, 1, 0, 2, 0, 3, 0, 1]]), 4, 4)
    assert metrics.par(replicated, load).tolist() == [1.0]
    assert metrics.par(replicated, load * 2.0**1000).tolist() == [1.0]
