"""`bench_peers.py`'s phase section: gpt-oss-20b's think phases in force, its answer phases
re-planned on, every contender's table scored, and a contender that refuses a shape named."""

from __future__ import annotations

import numpy as np

from benchmarks import bench_peers, traces
from eplb_rt.placement import Topology


def test_the_tasks_are_the_six_mmlu_subsets_then_the_raw_ones():
    tasks = bench_peers.gptoss_tasks()
    assert tasks[:6] == traces.gptoss_subsets()
    assert tasks[6:] == traces.gptoss_raw_subsets() != []


def test_the_phase_change_is_the_think_phases_then_each_published_answer():
    think, answers = bench_peers.phase_change()
    subsets = bench_peers.gptoss_tasks()
    assert think.shape == (len(subsets), 24, 32)
    np.testing.assert_array_equal(think[0], traces.gptoss(subsets[0], "think")[0])
    published = [s for s in subsets if "answer" in traces.gptoss_phases(s)]
    assert 0 < len(answers) == len(published) < len(subsets)
    for subset, answer in zip(published, answers, strict=True):
        np.testing.assert_array_equal(answer, traces.gptoss(subset, "answer"))
        # a change of phase: in each layer, a fifth or more of the answers' load lands on other
        # experts than the same subset's reasoning (half the total variation of the shares)
        own = traces.gptoss(subset, "think")[0]
        shares = [x / x.sum(axis=-1, keepdims=True) for x in (own, answer[0])]
        assert 0.5 * np.abs(shares[0] - shares[1]).sum(axis=-1).mean() > 0.2


def _keeper(load, topology: Topology, previous):
    """Experts dealt round-robin, and the table in force kept: moves nothing."""
    if previous is not None:
        return previous
    table = np.arange(topology.num_slots) % load.shape[-1]
    return np.tile(table, (load.shape[1], 1))


def _refuser(load, topology: Topology, previous):
    if topology.num_slots_per_rank == 3:
        raise ValueError("three slots a rank is too few for this policy")
    return _keeper(load, topology, previous)


def test_each_contender_gets_a_row_and_a_refusal_is_named(capsys):
    bench_peers.section_phase({"keeper": _keeper, "refuser": _refuser}, costs=())
    out = capsys.readouterr().out
    rows = {line.split(" | ")[0][2:]: line for line in out.splitlines() if line.startswith("| ")}
    assert rows["contender"].count("|") == len(bench_peers.PHASE_SHAPES) + 2
    keeper = rows["keeper"].strip("| ").split(" | ")[1:]
    assert len(keeper) == len(bench_peers.PHASE_SHAPES)
    for cell in keeper:  # kept, so the PAR in force is the PAR after, and nothing moved
        before, after = cell.split(" -> ")
        assert after.endswith(" / 0.0%")
        assert abs(float(before) - float(after.split(" / ")[0])) < 1e-3
    assert rows["refuser"].endswith("| refused |")
    assert "- refuser refuses 16x3: three slots a rank is too few" in out
    assert "along `move_cost`" not in out  # no frontier without the default policy


def test_the_frontier_of_the_default_policy_lowers_moves_as_the_price_rises(capsys):
    default = bench_peers.EplbConfig().policy
    found = {f"eplb_rt {default}": bench_peers.ours(default)}
    bench_peers.section_phase(found, costs=(0.001, 0.1))
    out = capsys.readouterr().out
    frontier = out.split("along `move_cost`")[1]
    cheap, dear = (
        [float(cell.split(" / ")[1].rstrip("%")) for cell in line.strip("| ").split(" | ")[1:]]
        for line in frontier.splitlines()
        if line.startswith(("| 0.001 |", "| 0.1 |"))
    )
    assert all(d < c for c, d in zip(cheap, dear, strict=True))


def test_tasks_give_the_mean_over_every_fold_and_over_the_raw_ones(capsys):
    bench_peers.section_tasks({"keeper": _keeper, "refuser": _refuser})
    out = capsys.readouterr().out
    rows = {line.split(" | ")[0][2:]: line for line in out.splitlines() if line.startswith("| ")}
    cells = rows["keeper"].strip("| ").split(" | ")[1:]
    loads = [traces.gptoss(s) for s in bench_peers.gptoss_tasks()]
    raw = len(traces.gptoss_subsets())
    for (d, s), cell in zip(bench_peers.PHASE_SHAPES, cells, strict=True):
        topo = Topology(d, s)
        pars = [
            bench_peers.score(_keeper(tr, topo, None), te, topo)
            for tr, te in traces.leave_one_out(loads)
        ]
        assert cell == f"{np.mean(pars):.4f} / {np.mean(pars[raw:]):.4f}"
        assert len(pars) - raw == 4
    assert rows["refuser"].endswith("| refused |")
    assert "- refuser refuses 16x3: three slots a rank is too few" in out
