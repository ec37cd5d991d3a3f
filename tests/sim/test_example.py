"""The integration example runs end to end: several ranks, rebalancing, outputs unchanged."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "fused_moe_eplb.py"

pytestmark = pytest.mark.multiprocess


@pytest.mark.parametrize("heat_source", ["topk", "group_list"])
def test_example_rebalances_without_changing_outputs(tmp_path, heat_source):
    # Run as a user would (a script, fresh processes): spawned ranks re-import it by path.
    out = tmp_path / "summary.json"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    proc = subprocess.run(
        [
            sys.executable,
            str(EXAMPLE),
            *"--ranks 2 --steps 60 --interval 10".split(),
            "--heat-source",
            heat_source,
            "--json",
            str(out),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=540,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "EplbConfig" not in proc.stderr, proc.stderr[-4000:]  # no setting warned about
    summary = json.loads(out.read_text())
    assert summary["all_ranks_ok"], summary
    assert summary["heat_source"] == heat_source
    assert summary["outputs_match"], summary["max_abs_err"]
    assert summary["same_storage"], "routing tables or weights were reallocated"
    assert summary["weights_match_placement"]
    assert summary["rebalances"] >= 1 and summary["placement_changed"], summary
