"""`bench_peers.py`'s cold-start section runs the contenders selected; a failed one is a row."""

from __future__ import annotations

import subprocess

from benchmarks import bench_peers
from eplb_rt.config import EplbConfig


def _fake_run(ran: list[str], fail: str = ""):
    def run(cmd, **kwargs):
        code = cmd[-1]
        name = next(n for n, body in bench_peers.COLD.items() if body in code)
        ran.append(name)
        if fail and fail in name:
            return subprocess.CompletedProcess(cmd, 1, "", "Traceback...\nRuntimeError: no wheel\n")
        return subprocess.CompletedProcess(cmd, 0, "1.25\n", "")

    return run


def test_cold_runs_only_the_contenders_selected(monkeypatch, capsys):
    ran: list[str] = []
    monkeypatch.setattr(bench_peers.subprocess, "run", _fake_run(ran))
    bench_peers.section_cold(["flashlb"])
    assert ran == ["eplb_rt flashlb", "vllm-ascend FlashLB"]
    ran.clear()
    default = EplbConfig().policy
    bench_peers.section_cold([default])  # the default policy's row, by the policy's name
    assert len(ran) == 1 and ran[0].startswith(f"eplb_rt {default}")
    ran.clear()
    bench_peers.section_cold(["sglang"])
    assert ran == []
    assert "no cold-start row" in capsys.readouterr().out


def test_cold_reports_a_contender_that_fails(monkeypatch, capsys):
    ran: list[str] = []
    monkeypatch.setattr(bench_peers.subprocess, "run", _fake_run(ran, fail="vllm-ascend"))
    bench_peers.section_cold(None)
    out = capsys.readouterr().out
    assert len(ran) == len(bench_peers.COLD)
    assert "| vllm-ascend FlashLB | failed: RuntimeError: no wheel |" in out
    assert "| eplb_rt flashlb | 1.2 |" in out
