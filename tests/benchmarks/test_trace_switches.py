"""The workload orders of ``benchmarks/trace_switches.py`` and its table."""

from __future__ import annotations

import json

import numpy as np
import pytest

from benchmarks import common, trace_switches
from eplb_rt import Topology, cli
from eplb_rt.sim import simulate as sim
from tests.workloads import task_aggregates


def test_the_cells_hold_one_model_each_and_distinct_aggregates():
    for name, (load_fn, shapes) in trace_switches.CELLS.items():
        workloads = load_fn()
        assert len(workloads) >= 3, name
        # one step each: an interval of one step replays them as simulate replays aggregates
        assert {load.shape[0] for _, load in workloads} == {1}, name
        shapes_of = {load.shape[-2:] for _, load in workloads}
        assert len(shapes_of) == 1, name
        ((_, experts),) = shapes_of
        for ranks, slots in shapes:
            assert ranks * slots >= experts, name
        labels = [label for label, _ in workloads]
        assert len(set(labels)) == len(labels), name


def _tiny_cells(monkeypatch):
    def workloads():
        return [(f"task {k}", load[None]) for k, load in enumerate(task_aggregates(4, seed=0))]

    monkeypatch.setattr(trace_switches, "CELLS", {"tiny": (workloads, [(3, 5)])})


def test_a_small_run_prints_each_order_paired_and_the_geometric_mean(capsys, monkeypatch):
    _tiny_cells(monkeypatch)
    rows = trace_switches.main(["--orders", "3", "--policies", "equilibrium", "random"])
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if line.startswith("| tiny")]
    assert len(lines) == 1 and len(rows) == 1
    scores = rows[0]["scores"]
    assert rows[0]["orders"] == 3 and scores["equilibrium"].shape == (3, 3)
    ours, rand = scores["equilibrium"][:, 0], scores["random"][:, 0]
    # the row's paired difference is over the same orders, the summary's ratio geometric
    diff = lines[0].strip("| ").split(" | ")[-1]
    assert diff == f"{np.mean(ours - rand):+.4f} ± {np.std(ours - rand, ddof=1) / np.sqrt(3):.4f}"
    summary = next(line for line in out.splitlines() if line.startswith("- random:"))
    assert summary.split()[2] == f"{np.exp(np.mean(np.log(ours / rand))):.4f}"
    assert summary.endswith("ahead in 1 of 1")  # ours serves faster than random placements
    thr, par, moved = scores["equilibrium"].T
    assert (thr > 0).all() and (par >= 1).all() and ((moved >= 0) & (moved <= 1)).all()
    trace_switches.main(["--orders", "3", "--policies", "random", "equilibrium"])
    assert capsys.readouterr().out.rstrip().endswith("ahead in 0 of 1")


def test_a_replay_gives_the_figures_of_eplb_rt_simulate(tmp_path, monkeypatch):
    _tiny_cells(monkeypatch)
    workloads = trace_switches.CELLS["tiny"][0]()
    paths = []
    for label, load in workloads:
        paths.append(str(tmp_path / f"{label.replace(' ', '_')}.npy"))
        np.save(paths[-1], load[0])  # an aggregate [L, E], as a user saves one
    for episodes in (None, 1):
        out = tmp_path / "sim.json"
        flags = [] if episodes is None else ["--episodes", str(episodes)]
        argv = ["simulate", "--load", *paths, "--ranks", "3", "--slots-per-rank", "5"]
        assert cli.main([*argv, "--policies", "equilibrium", *flags, "--json", str(out)]) == 0
        summary = json.loads(out.read_text())["policies"]["equilibrium"]["summary"]
        workload = sim.Workload.concat(workloads)
        ours = common.replay(workload, Topology(3, 5), ["equilibrium"], 1, episodes)
        assert ours["equilibrium"][0] == pytest.approx(summary["throughput_vs_none"], rel=1e-12)
        assert ours["equilibrium"][1] == pytest.approx(summary["par_mean"], rel=1e-12)


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--orders", "1"], ">= 2"),
        (["--episodes", "0"], ">= 1"),
        (["--cells", "Mixtral"], "invalid choice"),
        (["--policies", "equilibrium", "random", "equilibrium"], "listed twice"),
    ],
)
def test_bad_arguments_name_what_was_expected(capsys, argv, expected):
    with pytest.raises(SystemExit):
        trace_switches.main(argv)
    assert expected in capsys.readouterr().err


def test_an_unknown_policy_is_refused_with_the_known_ones_before_any_replay(capsys, monkeypatch):
    _tiny_cells(monkeypatch)
    with pytest.raises(ValueError, match="equilibrium"):
        trace_switches.main(["--orders", "2", "--policies", "equilibrium", "nope"])
    assert capsys.readouterr().out == ""
