"""The curve families of ``benchmarks/curve_families.py``: their ends are the two workloads, and
every expert's log-share moves in a straight line between them."""

from __future__ import annotations

import numpy as np

from benchmarks.curve_families import STEPS, family
from eplb_rt.algorithms.load import normalise


def test_a_family_runs_from_one_workload_to_the_other_along_a_curve():
    rng = np.random.default_rng(0)
    a, b = normalise(rng.random((3, 2, 7)) + 0.01)[:2]
    loads = family(a, b)
    assert len(loads) == len(STEPS)
    for x in loads:
        np.testing.assert_allclose(x.sum(axis=-1), 1e6)
    np.testing.assert_allclose(loads[0] / 1e6, a)
    np.testing.assert_allclose(loads[-1] / 1e6, b)
    # log-shares less their per-layer mean (the scaling) are linear in t
    centred = [np.log(x) - np.log(x).mean(axis=-1, keepdims=True) for x in loads]
    for t, c in zip(STEPS, centred, strict=True):
        np.testing.assert_allclose(c, (1 - t) * centred[0] + t * centred[-1], atol=1e-12)
    # ... so the shares themselves bend: the middle is not the mean of the ends
    assert np.abs(loads[1] - (2 * loads[0] + loads[-1]) / 3).max() > 1.0
