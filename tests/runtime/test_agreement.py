"""``agreement``: the settings the ranks of a runtime must share, and how their differences are
named. (The agreement among ranks at run time: ``test_runtime_agreement.py``.)"""

from __future__ import annotations

import dataclasses

import numpy as np

from eplb_rt.config import EplbConfig
from eplb_rt.runtime.agreement import (
    RANK_LOCAL_FIELDS,
    STARTING_PLACEMENT,
    min_max,
    setting_digest,
    settings_apart,
    shared_settings,
)


def test_one_rank_is_its_own_least_and_greatest():
    low, high = min_max([3, -1, 7], None)
    assert low.tolist() == high.tolist() == [3, -1, 7]
    low[0] = 0
    assert high[0] == 3  # two arrays, not one


def test_digests_are_equal_for_equal_values_and_fit_a_negated_int64():
    for value in (0, 0.5, "equilibrium", (1, 2), None, {"a": 1}):
        d = setting_digest(value)
        assert 0 <= d < 2**56 and d == setting_digest(value)
    assert setting_digest(0.5) != setting_digest(0.25)
    assert setting_digest(1) != setting_digest("1")


def test_every_field_but_the_rank_local_ones_is_shared():
    config = EplbConfig()
    shared = shared_settings(config, 3, 16, placement=1234)
    fields = {f.name for f in dataclasses.fields(config)}
    assert RANK_LOCAL_FIELDS <= fields  # none is a stale name
    assert not RANK_LOCAL_FIELDS & shared.keys()
    assert fields - RANK_LOCAL_FIELDS <= shared.keys()
    assert shared["num_layers"] == 3 and shared["num_experts"] == 16
    assert shared[STARTING_PLACEMENT] == 1234


def test_options_are_shared_as_the_policy_reads_them():
    """0.5 and ``np.float64(0.5)`` are one setting: the ranks agree although their reprs as
    given differ."""
    a = EplbConfig(policy="equilibrium", policy_options={"move_cost": 0.5})
    b = EplbConfig(policy="equilibrium", policy_options={"move_cost": np.float64(0.5)})
    assert repr(a.policy_options) != repr(b.policy_options)
    one, other = (shared_settings(c, 3, 16, 0)["policy_options"] for c in (a, b))
    assert setting_digest(one) == setting_digest(other)


def test_differences_are_named_the_placement_only_where_the_sizes_agree():
    names = ["num_layers", "interval", STARTING_PLACEMENT, "num_redundant"]

    def digests(*values):
        return dict(zip(names, values, strict=True))

    same, placement_apart = digests(1, 2, 3, 4), digests(1, 2, 9, 4)
    assert settings_apart(same, same, everywhere=True) == []
    assert settings_apart(same, placement_apart, True) == [STARTING_PLACEMENT]
    # Some rank has no placement: its digest differs, but the refusal is the news.
    assert settings_apart(same, placement_apart, False) == []
    # Other sizes make other placements: the sizes are named, not the placement.
    sizes_apart = digests(1, 2, 9, 5)
    assert settings_apart(same, sizes_apart, True) == ["num_redundant"]
    interval_apart = digests(1, 7, 9, 4)
    assert settings_apart(same, interval_apart, True) == ["interval", STARTING_PLACEMENT]
