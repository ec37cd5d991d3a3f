"""The phase change of ``benchmarks/eval_policies.py``'s adapting section: one lognormal factor
per expert and layer, the same at every step, counts kept whole."""

from __future__ import annotations

import numpy as np

from benchmarks.eval_policies import phase_change


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
