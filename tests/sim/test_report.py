"""The report, JSON document and plot of a simulation, including windows with no load at all."""

from __future__ import annotations

import json

import matplotlib.pyplot as plt
import numpy as np

from eplb_rt.placement import Topology
from eplb_rt.planning import CostModel
from eplb_rt.sim import report
from eplb_rt.sim import simulate as sim
from eplb_rt.sim.plot import plot


def _result(load: np.ndarray, interval: int, episodes: int | None = None):
    spec = sim.SimulationSpec(
        Topology(2, 2),
        (sim.NO_REBALANCE,),
        interval=interval,
        episodes=episodes,
        cost=CostModel(expert_bytes=7),
    )
    return sim.simulate(sim.Workload.concat([("a", load[:2]), ("b", load[2:])]), spec)


def test_idle_windows_have_no_par_but_the_report_still_renders(tmp_path):
    load = np.ones((6, 2, 3))
    load[2:4] = 0.0  # two idle steps: the window starting at step 2 has no PAR
    load[:, 1] = 0.0  # layer 1 never has load
    doc = report.to_document(_result(load, interval=2))
    cycles = doc["policies"]["none"]["cycles"]
    assert [c["start"] for c in cycles] == [2, 4]
    assert cycles[0]["par_mean"] is None and cycles[0]["par_per_layer"] == [None, None]
    assert cycles[1]["par_mean"] is not None and cycles[1]["par_per_layer"][1] is None
    assert [c["label"] for c in cycles] == ["b", "b"]
    json.dumps(doc, allow_nan=False)  # strict JSON: no NaN anywhere
    text = report.markdown(doc)
    assert "| none (no EPLB) |" in text and "[a (2 steps), b (4 steps)]" in text
    path = tmp_path / "idle.png"
    plot(doc, path)
    assert path.read_bytes()[:4] == b"\x89PNG"


def test_all_idle_gives_dashes_not_numbers(tmp_path):
    doc = report.to_document(_result(np.zeros((4, 1, 3)), interval=1))
    summary = doc["policies"]["none"]["summary"]
    assert summary["par_mean"] is None and summary["worst_layer"] is None
    assert summary["moves_total"] == 0
    # The same keys as a summary with load, as each cycle has them (None there).
    loaded = report.to_document(_result(np.ones((4, 1, 3)), interval=1))
    assert summary.keys() == loaded["policies"]["none"]["summary"].keys()
    row = next(line for line in report.markdown(doc).splitlines() if line.startswith("| none"))
    assert row.split("|")[2].strip() == "-"
    json.dumps(doc, allow_nan=False)
    plot(doc, tmp_path / "idle.png")


def test_a_workload_played_twice_is_two_parts_of_the_setup():
    spec = sim.SimulationSpec(Topology(2, 2), (sim.NO_REBALANCE,), interval=2)
    x = np.ones((3, 1, 4))
    played = sim.Workload.concat([("a", x), ("b", x), ("a", x)])
    doc = report.to_document(sim.simulate(played, spec))
    assert doc["setup"]["workloads"] == [
        {"label": "a", "steps": 3},
        {"label": "b", "steps": 3},
        {"label": "a", "steps": 3},
    ]
    assert "[a (3 steps), b (3 steps), a (3 steps)]" in report.markdown(doc)


def test_the_setup_says_the_nodes_and_groups_the_plans_used():
    """They change every number: the JSON and the sentence say them (flat: the sentence as
    before)."""
    x = np.ones((4, 1, 8))
    cases = [
        (Topology(4, 3, 2, 4), "slots (2 nodes, 4 expert groups); "),
        (Topology(4, 3), "slots; "),
    ]
    for topology, said in cases:
        spec = sim.SimulationSpec(topology, (sim.NO_REBALANCE,), interval=2)
        doc = report.to_document(sim.simulate(sim.Workload.concat([("a", x)]), spec))
        setup = doc["setup"]
        assert (setup["nodes"], setup["groups"]) == (topology.num_nodes, topology.num_groups)
        assert f"on 4 ranks x 3 {said}re-planned" in report.markdown(doc)


def test_in_sample_par_reported_when_no_scored_window_has_load():
    """Load only in the first steps: no scored window has a PAR, but the plan made from those
    steps has one in sample (the next plan, from the idle steps after them alone, has none),
    and the summary and table keep it."""
    load = np.zeros((6, 2, 4))
    load[:2] = np.random.default_rng(0).integers(1, 100, size=(2, 2, 4))
    doc = report.to_document(_result(load, interval=2, episodes=1))
    summary, cycles = doc["policies"]["none"]["summary"], doc["policies"]["none"]["cycles"]
    assert [c["par_mean"] for c in cycles] == [None, None] and summary["par_mean"] is None
    assert cycles[0]["par_in_sample_mean"] > 1.0 and cycles[1]["par_in_sample_mean"] is None
    assert summary["par_in_sample_mean"] == cycles[0]["par_in_sample_mean"]
    row = next(line for line in report.markdown(doc).splitlines() if line.startswith("| none"))
    assert row.split("|")[11].strip() == f"{summary['par_in_sample_mean']:.3f}"


def test_plot_titles_fit_in_the_figure(tmp_path, monkeypatch):
    """The bottom panel's title (prices, units) is two lines: in one it was wider than the
    figure and clipped at both sides."""
    doc = report.to_document(_result(np.ones((6, 2, 3)), interval=2))
    doc["setup"]["expert_bytes"] = 17301504  # the width of a real run's numbers
    spans = []  # per panel: (left, right) edge of its title, in pixels, and the figure's width
    close = plt.close

    def measure_then_close(fig):
        renderer = fig.canvas.get_renderer()  # as saved: the layout is done
        for axes in fig.axes:
            box = axes.title.get_window_extent(renderer)
            spans.append((box.x0, box.x1, fig.bbox.width))
        close(fig)

    monkeypatch.setattr(plt, "close", measure_then_close)
    plot(doc, tmp_path / "sim.png")
    assert len(spans) == 2
    for left, right, width in spans:
        assert 0 <= left and right <= width
