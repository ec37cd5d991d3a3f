"""The task-shift workloads of ``benchmarks/task_shift.py`` and its table."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks import task_shift
from eplb_rt import Topology


def test_tasks_are_counts_of_each_layer_and_share_their_base():
    rng = np.random.default_rng(0)
    loads = task_shift.task_loads(rng, 16, 2, 3, 4, 500, 1.0, 0.3)
    assert loads.shape == (4, 3, 16)
    np.testing.assert_array_equal(loads, np.round(loads))
    np.testing.assert_array_equal(loads.sum(axis=2), 1000)  # tokens x top-k in every layer
    # the base is shared: the tasks' popularities correlate far more within a layer than across
    within = np.corrcoef(np.log1p(loads[0, 0]), np.log1p(loads[1, 0]))[0, 1]
    across = np.corrcoef(np.log1p(loads[0, 0]), np.log1p(loads[1, 1]))[0, 1]
    assert within > across + 0.3


def test_zero_tokens_give_the_shares_the_counts_are_drawn_from():
    """``tokens`` 0: each task's shares without sampling, at a volume like the counts' and not
    whole (the same generator state up to the draws, so the first task's shares are those its
    counts of the same seed follow)."""
    shares = task_shift.task_loads(np.random.default_rng(3), 16, 2, 3, 4, 0, 1.0, 0.3)
    assert shares.shape == (4, 3, 16)
    np.testing.assert_allclose(shares.sum(axis=2), task_shift.SHARE_VOLUME)
    assert (shares > 0).all() and not np.array_equal(shares, np.round(shares))
    counts = task_shift.task_loads(np.random.default_rng(3), 16, 2, 3, 1, 10**7, 1.0, 0.3)
    np.testing.assert_allclose(counts[0] / 2e7, shares[0] / task_shift.SHARE_VOLUME, atol=2e-3)


def test_contender_specs_carry_options():
    assert task_shift.contender("equilibrium") == ("equilibrium", {})
    assert task_shift.contender("equilibrium:spread=0,unseen=0") == (
        "equilibrium",
        {"spread": "0", "unseen": "0"},
    )


def test_a_small_run_prints_a_row_per_shape_and_the_paired_differences(capsys):
    task_shift.main(
        ["--seeds", "1", "--layers", "1", "--regimes", "1,0.3,500",
         "--contenders", "equilibrium", "random"]
    )  # fmt: skip
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| ") and "model" not in line]
    assert len(rows) == sum(len(shapes) for _, _, shapes in task_shift.MODELS.values())
    for row in rows:
        ours, rand = (float(x) for x in row.strip("| ").split(" | ")[2:])
        assert 1.0 <= ours and 1.0 <= rand
    assert "- random: +" in out  # seeded random placements lose to ours


def test_without_counts_a_shape_with_the_same_loads_is_left_out(capsys, monkeypatch):
    """Two models of the same experts at the same shape, top-k apart: counted once without
    counts (their shares are the same), twice with them."""
    monkeypatch.setattr(task_shift, "MODELS", {"a": (8, 2, [(4, 3)]), "b": (8, 4, [(4, 3)])})
    args = ["--seeds", "1", "--layers", "1", "--contenders", "equilibrium", "random"]
    task_shift.main([*args, "--regimes", "1,0.3,0"])
    out = capsys.readouterr().out
    assert sum(line.startswith("| a |") for line in out.splitlines()) == 1
    assert "| b |" not in out and "Left out: b 4x3 (the loads of a 4x3)." in out
    task_shift.main([*args, "--regimes", "1,0.3,500"])
    out = capsys.readouterr().out
    assert "| a |" in out and "| b |" in out and "Left out" not in out


def test_an_engines_failed_plan_scores_nan_while_ours_raise():
    def broken(load, topology, previous):
        raise IndexError("a shape the engine's code does not handle")

    train, test = np.ones((3, 1, 8)), np.ones((1, 8))
    assert np.isnan(task_shift._score(task_shift._tolerant(broken), train, test, Topology(4, 3)))
    with pytest.raises(IndexError):
        task_shift._score(broken, train, test, Topology(4, 3))
