"""``eplb-rt demo`` end to end on a small setting (2 ranks, a few steps)."""

from __future__ import annotations

import json

import pytest

from eplb_rt.cli import main
from eplb_rt.commands.demo import SUMMARY_KEYS


@pytest.mark.multiprocess
def test_demo_writes_summary_and_plot(tmp_path, capsys):
    summary, plot = tmp_path / "demo.json", tmp_path / "demo.png"
    # The demo's own shapes (4 ranks, 6 layers), shorter: 40 steps of 64 tokens per rank. At 32
    # tokens a step's PAR is mostly sampling noise: eplb_rt and the static layout came within
    # 0.003 of each other, on either side depending on details of the move walk.
    argv = ["demo", "--steps", "40", "--tokens", "64", "--interval", "10", "--no-progress"]
    argv += ["--json", str(summary), "--plot", str(plot)]
    assert main(argv) == 0
    result = json.loads(summary.read_text())
    assert set(SUMMARY_KEYS) <= set(result)
    assert result["outputs_match"] and result["rebalances"] and result["moved_experts"] > 0
    assert len(result["per_step"]["par"]) == 40
    # Do no harm: on the same tokens, eplb_rt's mean per-step PAR is below the static layout's.
    assert result["par_mean"] < result["par_static"]
    assert result["par_mean"] == pytest.approx(sum(result["per_step"]["par"]) / 40)
    first, static = result["first_commit_step"], result["per_step"]["par_static"]
    assert result["par_static_before"] == pytest.approx(sum(static[:first]) / first)
    assert result["par_static_after"] == pytest.approx(sum(static[first:]) / (40 - first))
    assert plot.stat().st_size > 0
    out = capsys.readouterr().out
    assert "outputs match the model without EPLB" in out
    assert f"eplb_rt {result['par_mean']:.3f}, static layout {result['par_static']:.3f}" in out


@pytest.mark.multiprocess
def test_demo_without_rebalancing_says_so_and_its_start_does_no_harm(tmp_path, capsys):
    summary = tmp_path / "demo.json"
    argv = ["demo", "--steps", "8", "--tokens", "32"]
    assert main([*argv, "--interval", "0", "--no-progress", "--json", str(summary)]) == 0
    result = json.loads(summary.read_text())
    out = capsys.readouterr().out
    assert "no rebalancing (--interval 0)" in out and "before its first" not in out
    assert result["rebalances"] == [] and result["par_before"] == result["par_mean"]
    # The starting placement alone (16 redundant slots spread evenly) does no harm here.
    assert result["par_mean"] < result["par_static"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--layers", "27"], "--layers must be in [1, 26]"),
        (["--layers", "0"], "--layers must be in [1, 26]"),
        (["--redundant", "-4"], "--redundant -4 (>= 0) must split"),
        (["--plot", "/nonexistent-dir/demo.png"], "--plot /nonexistent-dir/demo.png: folder"),
        (["--plot", "demo.txt"], "--plot demo.txt: expected a .png, .pdf or .svg file name"),
        (["--plot", "demo"], "--plot demo: expected a .png, .pdf or .svg file name"),
        (["--json", "."], "--json .: is a directory"),
        (["--seed", "20000000000000"], "--seed must be in [0, 2**32), got 20000000000000"),
        (["--seed", "-5"], "--seed must be in [0, 2**32), got -5"),
        # One check an option, naming the value (all three once shared one message).
        (["--steps", "0"], "--steps must be >= 1, got 0"),
        (["--tokens", "-1"], "--tokens must be >= 1, got -1"),
        (["--check-every", "0"], "--check-every must be >= 1, got 0"),
        # 2 left the runtime no drift probe before each interval (a warning from every rank).
        (["--interval", "2"], "--interval must be 0 (never rebalance) or >= 3"),
        (["--interval", "1"], "--interval must be 0 (never rebalance) or >= 3"),
        # Sizes no rank can hold: each rank failed deep in its run with a traceback, exit 1.
        (["--steps", str(10**14)], f"--steps {10**14}: the 4 ranks would hold at least "),
        (["--tokens", str(10**11)], f"--tokens {10**11}: the 4 ranks would hold at least "),
    ],
)
def test_demo_checks_arguments_before_spawning_ranks(args, message, capsys, monkeypatch):
    import torch.multiprocessing as mp

    monkeypatch.setattr(mp, "spawn", lambda *a, **k: pytest.fail("ranks spawned"))
    assert main(["demo", *args]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_a_rank_that_fails_ends_the_demo_with_exit_2_and_its_reason(capsys, monkeypatch):
    """A rank's failure: its traceback, then one line naming the rank (before, the parent's
    traceback too, and exit 1, which says the outputs differ)."""
    import torch.multiprocessing as mp

    def failing(*args, **kwargs):
        raise mp.ProcessRaisedException("Traceback ...\nRuntimeError: boom", 1, 4242)

    monkeypatch.setattr(mp, "spawn", failing)
    assert main(["demo", "--steps", "3", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.endswith("eplb-rt demo: error: rank 1 failed: RuntimeError: boom\n"), err
    assert err.startswith("Traceback ...")


def test_demo_rejects_bad_arguments(capsys):
    assert main(["demo", "--ranks", "3"]) == 2
    assert "--ranks must divide" in capsys.readouterr().err
    assert main(["demo", "--redundant", "1"]) == 2
    assert "must split over 4 ranks" in capsys.readouterr().err
    assert main(["demo", "--ranks", "1"]) == 2
    assert "two replicas of an expert on one rank" in capsys.readouterr().err
    assert main(["demo", "--policy", "nope"]) == 2
    assert "unknown policy" in capsys.readouterr().err
    assert main(["demo", "--policy", ""]) == 2  # not the default policy
    assert "unknown policy ''" in capsys.readouterr().err
