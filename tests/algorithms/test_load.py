"""Slot heat read back as expert load (:func:`eplb_rt.algorithms.load.heat_to_load`)."""

import numpy as np
import pytest

from eplb_rt.algorithms.load import heat_to_load


def _reference(heat, phy2log, num_experts):
    T, L, P = heat.shape
    rows = np.broadcast_to(phy2log, heat.shape)
    out = np.zeros((T, L, num_experts))
    for t in range(T):
        for layer in range(L):
            for p in range(P):
                out[t, layer, rows[t, layer, p]] += heat[t, layer, p]
    return out


def test_heat_to_load_uses_each_rows_placement():
    heat = np.array([[[1, 2, 3, 4]], [[5, 6, 7, 8]]], dtype=np.int32)  # [T=2, L=1, P=4]
    row_p2l = np.array([[[0, 1, 2, 0]], [[2, 2, 1, 0]]], dtype=np.int32)
    assert heat_to_load(heat, row_p2l, 3).tolist() == [[[5, 2, 3]], [[8, 7, 11]]]


def test_heat_to_load_takes_one_placement_for_every_row_on_odd_sizes():
    rng = np.random.default_rng(7)
    T, L, E, P = 5, 3, 7, 11
    heat = rng.integers(0, 50, (T, L, P))
    phy2log = np.stack([np.concatenate([rng.permutation(E), rng.integers(0, E, P - E)])
                        for _ in range(L)])  # fmt: skip
    got = heat_to_load(heat, phy2log, E)
    assert got.dtype == np.float64 and got.shape == (T, L, E)
    np.testing.assert_array_equal(got, _reference(heat, phy2log, E))
    per_row = np.broadcast_to(phy2log, heat.shape).copy()
    np.testing.assert_array_equal(heat_to_load(heat, per_row, E), got)


@pytest.mark.parametrize("bad", [-1, 3])
def test_heat_to_load_refuses_an_id_it_would_count_as_another_layers(bad):
    heat = np.ones((2, 2, 4), dtype=np.int32)
    phy2log = np.array([[0, 1, 2, 0], [2, 1, bad, 0]], dtype=np.uint8 if bad >= 0 else np.int64)
    with pytest.raises(ValueError, match=r"phy2log holds expert ids .*, expected \[0, 3\)"):
        heat_to_load(heat, phy2log, 3)
    assert heat_to_load(heat, np.array([[0, 1, 2, 0]] * 2, dtype=np.uint64), 3).sum() == 16
