"""`bench_peers.py`'s phase section: gpt-oss-20b's think phases in force, its answer phases
re-planned on, every contender's table scored, and a contender that refuses a shape named."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks import bench_peers, traces
from eplb_rt.placement import Topology


def test_the_phase_change_is_the_think_phases_then_each_published_answer():
    think, answers = bench_peers.phase_change()
    subsets = traces.gptoss_tasks()
    assert think.shape == (len(subsets), 24, 32)
    np.testing.assert_array_equal(think[0], traces.gptoss(subsets[0], "think")[0])
    published = [s for s in subsets if "answer" in traces.gptoss_phases(s)]
    assert 0 < len(answers) == len(published) < len(subsets)
    for subset, answer in zip(published, answers, strict=True):
        np.testing.assert_array_equal(answer, traces.gptoss(subset, "answer"))
        # a change of phase: on average over the layers, a fifth or more of the answers' load
        # lands on other experts than the same subset's reasoning (half the total variation of
        # the shares)
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


def _hottest(load, topology: Topology, previous):
    """Every layer: the experts by their load, hottest first, dealt round-robin over the slots
    (so hot experts get the spare slots); the table in force ignored, so it moves."""
    order = np.argsort(-load.sum(axis=0), axis=-1, kind="stable")  # [L, E]
    slots = np.arange(topology.num_slots) % load.shape[-1]
    return order[:, slots]


def _par(table, load, num_ranks):
    """Mean over the layers of ``load [L, E]`` of the busiest rank over the mean rank, each
    expert's load split evenly over its slots in ``table [L, P]`` (written out, not the
    benchmark's scorer)."""
    pars = []
    for row, w in zip(table, load, strict=True):
        counts = np.bincount(row, minlength=w.size)
        ranks = (w[row] / counts[row]).reshape(num_ranks, -1).sum(axis=1)
        pars.append(ranks.max() / ranks.mean())
    return float(np.mean(pars))


def test_a_contender_that_moves_is_scored_on_each_answer_and_its_moves_counted(capsys):
    bench_peers.section_phase({"hottest": _hottest}, costs=())
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if line.startswith("| hottest |"))
    cells = row.strip("| ").split(" | ")[1:]
    think, answers = bench_peers.phase_change()
    for (d, s), cell in zip(bench_peers.PHASE_SHAPES, cells, strict=True):
        topo = Topology(d, s)
        before = _hottest(think, topo, None)
        afters = [_hottest(a, topo, before) for a in answers]
        then = np.mean([_par(before, a[0], d) for a in answers])
        after = np.mean([_par(t, a[0], d) for t, a in zip(afters, answers, strict=True)])
        moved = np.mean([(t != before).mean() for t in afters])
        assert cell == f"{then:.3f} -> {after:.4f} / {moved:.1%}"
        assert moved > 0


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
    bench_peers.section_tasks({"hottest": _hottest, "refuser": _refuser})
    out = capsys.readouterr().out
    rows = {line.split(" | ")[0][2:]: line for line in out.splitlines() if line.startswith("| ")}
    cells = rows["hottest"].strip("| ").split(" | ")[1:]
    names = [*traces.gptoss_subsets(), *traces.gptoss_raw_subsets()]
    loads = [traces.gptoss(name)[0] for name in names]  # [L, E] each
    for (d, s), cell in zip(bench_peers.PHASE_SHAPES, cells, strict=True):
        topo = Topology(d, s)
        # fold i: planned on every other subset (one episode each), scored on subset i
        pars = []
        for i, held_out in enumerate(loads):
            others = np.stack([load for j, load in enumerate(loads) if j != i])
            pars.append(_par(_hottest(others, topo, None), held_out, d))
        assert cell == f"{np.mean(pars):.4f} / {np.mean(pars[6:]):.4f}"
    assert rows["refuser"].endswith("| refused |")
    assert "- refuser refuses 16x3: three slots a rank is too few" in out


def test_an_error_in_the_scoring_is_not_a_refusal():
    def broken(load, topology: Topology, previous):
        return _keeper(load, topology, previous)[:, :-1]  # a slot short: no valid table

    with pytest.raises(ValueError):
        bench_peers.section_tasks({"broken": broken})


def test_catalogue_groups_are_seeded_draws_of_six_distinct_categories():
    groups = bench_peers.catalogue_groups(5)
    assert groups == bench_peers.catalogue_groups(5)
    assert groups != bench_peers.catalogue_groups(5, seed=1)
    known = set(traces.gptoss_catalogue())
    for group in groups:
        assert len(set(group)) == 6 and group == sorted(group) and set(group) <= known


def test_the_catalogue_is_scored_in_groups_against_the_default(capsys):
    bench_peers.section_catalogue({"hottest": _hottest, "refuser": _refuser}, groups=2, costs=())
    out = capsys.readouterr().out
    first_table = out.split("### Adapting across a change of phase")[0]
    lines = [line for line in first_table.splitlines() if line.startswith("| ")]
    rows = {line.split(" | ")[0][2:]: line for line in lines}
    cells = rows["hottest"].strip("| ").split(" | ")[1:]
    default = bench_peers.ours(bench_peers.EplbConfig().policy)
    groups = bench_peers.catalogue_groups(2)
    for (d, s), cell in zip(bench_peers.PHASE_SHAPES, cells, strict=True):
        topo = Topology(d, s)
        ours_means, diffs = [], []
        for group in groups:
            loads = [traces.gptoss(name)[0] for name in group]
            mine, theirs = [], []
            for i, held_out in enumerate(loads):
                others = np.stack([load for j, load in enumerate(loads) if j != i])
                mine.append(_par(_hottest(others, topo, None), held_out, d))
                theirs.append(_par(default(others, topo, None), held_out, d))
            ours_means.append(np.mean(mine))
            diffs.append(np.mean(mine) - np.mean(theirs))
        se = np.std(diffs, ddof=1) / np.sqrt(2)
        assert cell == f"{np.mean(ours_means):.4f} ({np.mean(diffs):+.4f} ± {se:.4f})"
    assert rows["refuser"].endswith("| refused |")
    # then the change of phase across the fourteen MMLU-Pro categories
    assert "think phases (14 subsets), re-planned on each answer phase (14)" in out
