"""``eplb_rt.algorithms.jit``: the kernels a move walk calls once per candidate move and row take
no reference on their arrays. numba's reference counts are atomic operations; where a kernel
could leave early (a division under Python's error model, a call that may raise, a view of a
row) it keeps them, and they were nearly half the walk's time. Checked on the compiled code: a
fresh interpreter compiles the walk without any cache (inspection is off for cached code)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.algorithms.test_kernel_cache import ROOT

HOT = ("_rewrite_drop", "_swap_gain", "_rewrite_gain")

WALK = """
import json
import numpy as np
from eplb_rt.algorithms import episode_moves as em
from eplb_rt.algorithms.episode_moves import greedy_moves_rows

rng = np.random.default_rng(0)
D, S, E = 6, 3, 14
prev = np.concatenate([rng.permutation(E), rng.choice(E, D * S - E, replace=False)])
V = rng.pareto(1.2, size=(3, E)) * 100
greedy_moves_rows(prev, V, 1, D, D * S, 1e-3, 1e-3 * V.sum(axis=1) / D, 0.1, True, 3.0)
calls = {}
for name in %r:
    calls[name] = 0
    for ir in getattr(em, name).inspect_llvm().values():
        lines = ir.splitlines()
        start = next(i for i, line in enumerate(lines) if line.startswith("define")
                     and name in line and "cpython" not in line)
        end = next(i for i in range(start, len(lines)) if lines[i].startswith("}"))
        calls[name] += sum("@NRT_incref" in line or "@NRT_decref" in line
                           for line in lines[start:end])
print(json.dumps(calls))
"""


@pytest.mark.slow
def test_the_walks_per_candidate_kernels_take_no_reference(tmp_path):
    env = dict(
        os.environ,
        EPLB_RT_KERNEL_CACHE="0",
        NUMBA_CACHE_DIR=str(tmp_path),
        PYTHONPATH=str(ROOT),
    )
    done = subprocess.run(
        [sys.executable, "-c", WALK % (HOT,)], env=env, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    calls = json.loads(done.stdout.strip().splitlines()[-1])
    assert calls == dict.fromkeys(HOT, 0)
