"""The workload orders of ``benchmarks/trace_switches.py`` and its table."""

from __future__ import annotations

import math

import numpy as np
import pytest

from benchmarks import trace_switches


def test_the_listed_order_comes_first_then_distinct_seeded_ones():
    first = list(trace_switches.orders(6, 10))
    assert first[0] == tuple(range(6))
    assert len(set(first)) == 10
    assert all(sorted(order) == list(range(6)) for order in first)
    assert list(trace_switches.orders(6, 10)) == first  # seeded
    assert list(trace_switches.orders(6, 10, seed=1))[1:] != first[1:]


@pytest.mark.parametrize(("count", "wanted"), [(3, 6), (3, 40), (4, 24), (1, 5)])
def test_every_order_is_played_where_there_are_no_more_than_asked(count, wanted):
    played = list(trace_switches.orders(count, wanted))
    assert played[0] == tuple(range(count))
    assert len(played) == len(set(played)) == math.factorial(count)


def test_the_cells_hold_one_model_each_and_distinct_workloads():
    for name, (load_fn, shapes) in trace_switches.CELLS.items():
        workloads = load_fn()
        assert len(workloads) >= 3, name
        shapes_of = {load.shape[-2:] for _, load in workloads}
        assert len(shapes_of) == 1, name
        ((_, experts),) = shapes_of
        for ranks, slots in shapes:
            assert ranks * slots >= experts, name
        labels = [label for label, _ in workloads]
        assert len(set(labels)) == len(labels), name


def _tiny_cells(monkeypatch):
    rng = np.random.default_rng(0)
    base = rng.pareto(1.2, size=(2, 12)) * 100 + 1

    def workloads():
        # the same popular experts in every task, each task's own on top: moves that pay
        return [(f"task {k}", (base * rng.lognormal(0, 0.3, base.shape))[None]) for k in range(3)]

    monkeypatch.setattr(trace_switches, "CELLS", {"tiny": (workloads, [(3, 5)])})


def test_a_small_run_prints_a_row_per_shape_and_the_ratios(capsys, monkeypatch):
    _tiny_cells(monkeypatch)
    rows = trace_switches.main(["--orders", "3", "--policies", "equilibrium", "random"])
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if line.startswith("| tiny")]
    assert len(lines) == 1 and len(rows) == 1
    assert rows[0]["orders"] == 3 and rows[0]["equilibrium"].shape == (3, 3)
    ratio = next(line for line in out.splitlines() if line.startswith("- random:"))
    assert float(ratio.split()[2]) > 1.0  # ours serves faster than random placements
    thr, par, moved = rows[0]["equilibrium"].T
    assert (thr > 0).all() and (par >= 1).all() and ((moved >= 0) & (moved <= 1)).all()


@pytest.mark.parametrize(
    ("argv", "expected"),
    [(["--orders", "1"], ">= 2"), (["--cells", "Mixtral"], "invalid choice")],
)
def test_bad_arguments_name_what_was_expected(capsys, argv, expected):
    with pytest.raises(SystemExit):
        trace_switches.main(argv)
    assert expected in capsys.readouterr().err


def test_an_unknown_policy_is_refused_with_the_known_ones(monkeypatch):
    _tiny_cells(monkeypatch)
    with pytest.raises(ValueError, match="equilibrium"):
        trace_switches.main(["--orders", "2", "--policies", "equilibrium", "nope"])
