"""The serving replays of ``benchmarks/serving_replay.py`` and their table."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks import serving_replay


def _series(regime, steps=400, seed=0):
    return serving_replay.series(np.random.default_rng(seed), regime, 32, 4, 2, steps, 1000)


@pytest.mark.parametrize("regime", serving_replay.REGIMES)
def test_every_step_routes_its_tokens_to_top_k_experts_in_every_layer(regime):
    workload = _series(regime)
    assert workload.load.shape == (400, 2, 32)
    np.testing.assert_array_equal(workload.load, np.round(workload.load))
    np.testing.assert_array_equal(workload.load.sum(axis=2), 4000)
    np.testing.assert_array_equal(_series(regime).load, workload.load)  # seeded


def _shares(load):
    return load.sum(axis=0) / load.sum(axis=(0, 2))[:, None]


def test_the_regimes_move_the_load_as_they_say():
    def shift(regime):
        # how far the last quarter's shares lie from the first quarter's, over the noise
        load = _series(regime, steps=2000).load
        return np.abs(_shares(load[-500:]) - _shares(load[:500])).sum()

    still = shift("stationary")
    assert shift("drift") > 1.5 * still
    assert shift("switch") > 1.5 * still
    # mix: the weights swing back (a period of 700 steps), so steps 700 apart look alike
    load = _series("mix", steps=1400).load
    peak, next_peak = _shares(load[300:400]), _shares(load[1000:1100])
    assert np.abs(peak - next_peak).sum() < 0.5 * np.abs(_shares(load[:100]) - peak).sum()


def test_switch_plays_four_tasks_a_quarter_each():
    labels = _series("switch").labels
    blocks = [set(labels[i : i + 100]) for i in range(0, 400, 100)]
    assert all(len(block) == 1 for block in blocks)
    assert len(set.union(*blocks)) == 4


def test_an_unknown_regime_is_refused():
    with pytest.raises(ValueError, match="regime must be one of"):
        _series("bursty")


@pytest.mark.parametrize(
    ("flag", "value", "expected"),
    [("--seeds", "0", ">= 1"), ("--steps", "100", ">= 101"), ("--layers", "two", "an integer")],
)
def test_bad_arguments_name_what_was_expected(capsys, flag, value, expected):
    with pytest.raises(SystemExit):
        serving_replay.main([flag, value])
    assert expected in capsys.readouterr().err


def test_a_small_run_prints_a_row_per_shape_and_the_ratios(capsys, monkeypatch):
    monkeypatch.setattr(serving_replay.task_shift, "MODELS", {"tiny": (16, 2, [(4, 5), (8, 3)])})
    serving_replay.main(
        ["--seeds", "1", "--layers", "1", "--steps", "300", "--regimes", "stationary",
         "--policies", "equilibrium", "random"]
    )  # fmt: skip
    rows, ratio = _rows_and_ratio(capsys.readouterr().out)
    assert len(rows) == 2
    for row in rows:
        ours, rand = (float(cell.split(" / ")[0]) for cell in row.strip("| ").split(" | ")[2:])
        assert ours > 0 and rand > 0
    assert ratio < 1.0  # random placements serve slower than ours


def _rows_and_ratio(out: str) -> tuple[list[str], float]:
    """The table's rows and random's throughput against ours."""
    lines = out.splitlines()
    rows = [line for line in lines if line.startswith("| tiny")]
    return rows, float(next(line for line in lines if line.startswith("- random:")).split()[2])
