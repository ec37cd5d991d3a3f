"""The offline commands (plan, score, convert, simulate, policies) start without importing torch,
which takes seconds and which they do not use; only ``demo`` runs a model."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from eplb_rt import formats
from eplb_rt.placement import Placement, Topology

RUN = """
import json, sys
from eplb_rt.cli import main
code = main(sys.argv[1:])
print(json.dumps({"code": code, "torch": "torch" in sys.modules}))
"""


def run_command(argv: list[str], cwd) -> dict:
    done = subprocess.run(
        [sys.executable, "-c", RUN, *argv], cwd=cwd, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize(
    "argv",
    [
        ["policies", "--options"],
        ["plan", "--load", "load.npy", "--ranks", "2", "--slots-per-rank", "5", "--out", "p.json"],
        ["plan", "--load", "load.npy", "--ranks", "2", "--slots-per-rank", "4", "--previous",
         "start.json", "--out", "q.json"],
        ["score", "--placement", "start.json", "--load", "load.npy"],
        ["convert", "--from", "vllm-ascend", "--to", "sglang", "start.json", "s.json"],
        ["simulate", "--load", "load.npy", "--ranks", "2", "--slots-per-rank", "4",
         "--policies", "deepseek", "--interval", "2"],
    ],
)  # fmt: skip
def test_offline_commands_do_not_import_torch(tmp_path, argv):
    np.save(tmp_path / "load.npy", np.random.default_rng(0).integers(0, 40, size=(6, 2, 8)))
    formats.write_placement(Placement.initial(2, 8, Topology(2, 4)), tmp_path / "start.json")
    assert run_command(argv, tmp_path) == {"code": 0, "torch": False}
