"""The long-run benchmark's own code on a short run: one JSON line with both memory marks, and
the runtime's records held to the bound while the totals count every plan."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.multiprocess
def test_soak_reports_memory_and_bounded_records():
    argv = [sys.executable, "benchmarks/soak_runtime.py", "--steps", "120", "--records-kept", "3"]
    run = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
    assert run.returncode == 0, run.stderr[-2000:]
    report = json.loads(run.stdout.strip().splitlines()[-1])
    assert report["records_kept_bound"] == 3
    assert sorted(report["after_steps"]) == ["120", "25"]
    for mark in report["after_steps"].values():
        assert mark["rss_mib"] > 0 and mark["gc_objects"] > 0
    assert report["records_kept"]["rebalances"] == 3
    assert report["totals"]["rebalances"] > 3 and report["moved_experts"] > 0
