"""The benchmark scripts refuse a selection that would run nothing, or the defaults, as asked."""

from __future__ import annotations

import pytest

from benchmarks import selection


def test_sections_must_be_known_and_some():
    assert selection.sections("toy,in,", ("toy", "in", "out")) == ["toy", "in"]
    for given in ("tyo", ""):
        with pytest.raises(SystemExit, match=r"--sections .*choose from"):
            selection.sections(given, ("toy", "in"))


def test_options_must_be_of_a_policy_that_runs_and_its_own():
    given = selection.options(["equilibrium.spread=1.0"], ["equilibrium"])
    assert given == {"equilibrium": {"spread": 1.0}}
    with pytest.raises(SystemExit, match=r"\['equilbrium'\] are not among the policies run"):
        selection.options(["equilbrium.spread=1.0"], ["equilibrium"])
    with pytest.raises(SystemExit, match=r"has no option\(s\) \['unsen'\]"):
        selection.options(["equilibrium.unsen=0"], ["equilibrium"])
    # Without its policy, one line (the policy's name is what the scripts take options by).
    with pytest.raises(SystemExit, match=r"--option 'max_moved_fraction=0.2': expected POLICY"):
        selection.options(["max_moved_fraction=0.2"], ["equilibrium"])
