"""The demo's drifting workload (eplb_rt/models/workload.py)."""

from __future__ import annotations

import numpy as np
import pytest

from eplb_rt.data import ESFT_EXPERTS
from eplb_rt.models.workload import drifting_profile


def test_each_step_is_a_distribution_over_the_experts():
    profile = drifting_profile(np.int64(5), 3)
    assert profile.shape == (5, 3, ESFT_EXPERTS)
    np.testing.assert_allclose(profile.sum(axis=-1), 1.0)


@pytest.mark.parametrize(
    ("steps", "layers", "said"),
    [
        (0, 2, r"^num_steps must be an integer >= 1, got 0$"),
        (2.5, 2, r"^num_steps must be an integer >= 1, got 2.5$"),
        (4, 0, r"^num_layers must be an integer >= 1, got 0$"),
        (4, 27, r"^num_layers must be in \[1, 26\], got 27$"),
    ],
)
def test_bad_sizes_are_named(steps, layers, said):
    with pytest.raises(ValueError, match=said):
        drifting_profile(steps, layers)
