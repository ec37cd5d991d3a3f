"""The samples and the table of ``benchmarks/coarse_shapes.py``."""

from __future__ import annotations

import numpy as np

from benchmarks import coarse_shapes


def test_the_cells_hold_few_slots_a_rank_for_their_experts():
    for name, (load_fn, tokens, shapes) in coarse_shapes.CELLS.items():
        load = load_fn()
        assert load.ndim == 2 and (load.sum(axis=1) > 0).all(), name
        experts = load.shape[1]
        assert tokens > 0, name
        for ranks, slots in shapes:
            assert experts < ranks * slots <= 2 * experts, name
        assert {2, 3} <= {slots for _, slots in shapes}, name


def test_a_sample_splits_each_layer_s_tokens_over_the_episodes():
    rng = np.random.default_rng(0)
    load = np.array([[5.0, 0.0, 3.0, 2.0], [1.0, 1.0, 1.0, 7.0]])
    drawn = coarse_shapes.sample(load, 1001, 4, rng)
    assert drawn.shape == (4, 2, 4)
    assert (drawn.sum(axis=2) == 250).all()  # 1001 // 4 tokens a layer and episode
    assert (drawn == np.round(drawn)).all()  # counts: the policy knows their noise
    assert (drawn[:, 0, 1] == 0).all()  # an expert without load draws none


def _tiny(monkeypatch):
    rng = np.random.default_rng(3)
    load = rng.pareto(1.5, (2, 10)) + 0.1
    monkeypatch.setattr(coarse_shapes, "CELLS", {"tiny": (lambda: load, 2000, [(6, 2)])})
    return load


def test_a_small_run_prints_each_contender_and_the_paired_gaps(capsys, monkeypatch):
    load = _tiny(monkeypatch)
    coarse_shapes.main(["--draws", "3"])
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| tiny")]
    assert len(rows) == 1
    cells = rows[0].strip("| ").split(" | ")
    assert cells[:3] == ["tiny", "6x2", "2,000"]
    # the same seed gives the same draws: the row's figures are those of cell()
    got = coarse_shapes.cell(load, 2000, (6, 2), draws=3, episodes=1, seed=0)["pars"]
    means = [float(c.split()[0]) for c in cells[3 : 3 + len(coarse_shapes.CONTENDERS)]]
    for name, mean in zip(coarse_shapes.CONTENDERS, means, strict=True):
        assert mean == round(np.mean(got[name]), 4), name
        assert all(par >= 1.0 for par in got[name]), name
    ours = np.array(got["equilibrium"])
    for name, gap in zip(coarse_shapes.CONTENDERS[1:], cells[-3:], strict=True):
        diff = ours - np.array(got[name])
        assert gap == f"{diff.mean():+.4f} ± {diff.std(ddof=1) / np.sqrt(3):.4f}", name
