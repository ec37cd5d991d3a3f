"""The workload changes of ``benchmarks/eval_policies.py``'s adapting section: a phase change,
one lognormal factor per expert and layer, the same at every step, counts kept whole; and a
reshuffle, a share of the experts' loads dealt among them."""

from __future__ import annotations

import numpy as np

from benchmarks.eval_policies import phase_change, reshuffle


def test_no_phase_change_keeps_the_load():
    load = np.random.default_rng(0).integers(0, 50, (3, 2, 11)).astype(float)
    np.testing.assert_array_equal(phase_change(load, 0.0, np.random.default_rng(1)), load)


def test_a_phase_change_scales_each_expert_by_one_lognormal_factor():
    rng = np.random.default_rng(0)
    base = rng.integers(1_000, 2_000, (1, 40, 256)).astype(float)
    load = np.concatenate([base, 3 * base])  # two steps, the second three times the first
    shifted = phase_change(load, 0.4, np.random.default_rng(5))
    np.testing.assert_array_equal(shifted, np.rint(shifted))
    log_factor = np.log(shifted[0] / base[0])
    # the same factor at both steps (up to the rounding of whole counts)
    np.testing.assert_allclose(shifted[1] / (3 * base[0]), np.exp(log_factor), rtol=2e-3)
    # lognormal with sigma 0.4 over 10,240 experts: mean 0, standard deviation 0.4
    assert abs(log_factor.mean()) < 0.02
    assert abs(log_factor.std() - 0.4) < 0.02
    # seeded: the same draw again
    np.testing.assert_array_equal(phase_change(load, 0.4, np.random.default_rng(5)), shifted)


def test_a_reshuffle_deals_a_share_of_the_experts_loads_among_them():
    rng = np.random.default_rng(0)
    load = rng.integers(0, 1_000, (3, 4, 64)).astype(float)
    shuffled = reshuffle(load, 0.25, np.random.default_rng(5))
    for layer in range(4):
        changed = (shuffled[:, layer] != load[:, layer]).any(axis=0)
        assert 0 < changed.sum() <= 16  # 16 experts drawn; some may draw their own loads back
        # the same loads, every step's with its expert: a layer's columns permuted
        by_column = sorted(map(tuple, load[:, layer].T))
        assert sorted(map(tuple, shuffled[:, layer].T)) == by_column
    np.testing.assert_array_equal(reshuffle(load, 0.25, np.random.default_rng(5)), shuffled)
    np.testing.assert_array_equal(reshuffle(load, 0.0, np.random.default_rng(5)), load)
