"""``eplb-rt demo`` end to end on a small setting (2 ranks, a few steps)."""

from __future__ import annotations

import json

import pytest

from eplb_rt.cli import main
from eplb_rt.commands.demo import SUMMARY_KEYS


@pytest.mark.multiprocess
def test_demo_writes_summary_and_plot(tmp_path, capsys):
    summary, plot = tmp_path / "demo.json", tmp_path / "demo.png"
    argv = [
        "demo",
        "--ranks",
        "2",
        "--steps",
        "40",
        "--layers",
        "2",
        "--tokens",
        "32",
        "--interval",
        "10",
        "--no-progress",
        "--json",
        str(summary),
        "--plot",
        str(plot),
    ]
    assert main(argv) == 0
    result = json.loads(summary.read_text())
    assert set(SUMMARY_KEYS) <= set(result)
    assert result["outputs_match"] and result["rebalances"] and result["moved_experts"] > 0
    assert len(result["per_step"]["par"]) == 40
    assert plot.stat().st_size > 0
    assert "outputs match the model without EPLB" in capsys.readouterr().out


def test_demo_rejects_bad_arguments(capsys):
    assert main(["demo", "--ranks", "3"]) == 2
    assert "--ranks must divide" in capsys.readouterr().err
    assert main(["demo", "--redundant", "1"]) == 2
    assert "must split over 4 ranks" in capsys.readouterr().err
    assert main(["demo", "--ranks", "1"]) == 2
    assert "two replicas of an expert on one rank" in capsys.readouterr().err
    assert main(["demo", "--policy", "nope"]) == 2
    assert "unknown policy" in capsys.readouterr().err
