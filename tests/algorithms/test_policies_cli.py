"""``eplb-rt policies`` and the gap that ``eplb-rt score`` reports."""

from __future__ import annotations

import json

import numpy as np
import pytest

from eplb_rt import cli
from eplb_rt.algorithms import kernel_cache, policy_names
from eplb_rt.planning import PIPELINE_OPTIONS


def run(capsys, *argv) -> tuple[int, str]:
    code = cli.main([str(a) for a in argv])
    out, _ = capsys.readouterr()
    return code, out


def test_policies_lists_every_name_with_its_summary(capsys):
    code, out = run(capsys, "policies")
    assert code == 0
    lines = out.strip().splitlines()
    assert [line.split()[0] for line in lines] == policy_names()
    assert all(len(line.split(maxsplit=1)) == 2 for line in lines)


def test_policies_options(capsys):
    code, out = run(capsys, "policies", "--options")
    assert code == 0
    assert "move_cost = 0.01" in out
    assert "z = 0.6744897501960817  (a finite number >= 0)" in out
    assert "max_moved_fraction = 1.0  (a finite number in [0, 1])" in out
    assert "width = 8  (an integer >= 0)" in out
    # Under each option the planning pipeline sets, what it sets it to (equilibrium has all).
    lines = out.splitlines()
    for name, what in PIPELINE_OPTIONS.items():
        at = next(i for i, line in enumerate(lines) if line.strip().startswith(f"{name} = "))
        assert lines[at + 1].strip() == f"planning pipeline: {what}"
    assert sum("planning pipeline:" in line for line in lines) == len(PIPELINE_OPTIONS)


@pytest.mark.parametrize("shares", [False, True])
def test_score_reports_gap_to_the_bound(capsys, tmp_path, shares):
    toy = tmp_path / "toy.npy"
    np.save(toy, np.array([[600.0, 560, 120, 120, 20, 10, 10, 10]]))
    out = tmp_path / "p.json"
    code, _ = run(
        capsys,
        "plan",
        "--load",
        toy,
        "--ranks",
        8,
        "--slots-per-rank",
        2,
        "--policy",
        "equilibrium",
        "--option",
        f"shares={str(shares).lower()}",
        "--out",
        out,
    )
    assert code == 0
    code, text = run(capsys, "score", "--placement", out, "--load", toy, "--json")
    summary = json.loads(text)
    assert code == 0
    # Uniform: 590/3 against the replica/mean bound 181.25 (the bound is not tight here);
    # with shares the mean is reached, gap 0.
    expected = 0.0 if shares else (590 / 3) / 181.25 - 1
    assert summary["gap_mean"] == pytest.approx(expected, abs=1e-9)
    assert summary["gap_max"] == pytest.approx(expected, abs=1e-9)
    assert len(summary["gap_per_layer"]) == 1
    code, text = run(capsys, "score", "--placement", out, "--load", toy)
    assert "gap to the lower bound" in text


def test_policies_warm_up_reports_every_policy_and_prunes_the_cache(capsys, monkeypatch):
    pruned = []
    monkeypatch.setattr(kernel_cache, "prune", lambda: pruned.append(1) or (3, 2**20))
    monkeypatch.setattr(kernel_cache, "installed", lambda: True)  # EPLB_RT_KERNEL_CACHE=0 too
    code, out = run(capsys, "policies", "--warm-up")
    assert code == 0
    *timed, last = out.split(" (numba compile or cache load):\n", 1)[1].splitlines()
    assert [line.split()[0] for line in timed] == policy_names()
    assert pruned == [1] and last == "removed 3 cache files of sources since edited (1.0 MiB)"
    assert all(line.endswith(" s") and float(line.split()[1]) >= 0 for line in timed)


def test_policies_portable_needs_warm_up(capsys):
    assert cli.main(["policies", "--portable"]) == 2
    assert "--portable needs --warm-up" in capsys.readouterr().err
