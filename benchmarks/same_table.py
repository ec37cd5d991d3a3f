"""The default policy's tables on the shipped traces, as digests: run it once per BLAS, NumPy
SIMD level or CPU and compare the lines; every rank of an engine must plan the same table.

    PYTHONPATH=. python benchmarks/same_table.py
    OPENBLAS_CORETYPE=Prescott PYTHONPATH=. python benchmarks/same_table.py   # SSE3 kernels
    NPY_DISABLE_CPU_FEATURES="X86_V3 X86_V4" PYTHONPATH=. python benchmarks/same_table.py  # no AVX2

(NumPy 2.4's names for its SIMD targets; ``numpy._core._multiarray_umath.__cpu_dispatch__``
lists those of the NumPy installed.)

Cases: DeepSeek-V3 at 64x5, 32x9 and 8x36, each prefill workload held out in turn (a plan on the
other three, whose distinct workloads take the ``unseen`` decompositions, then the vLLM
adapter's re-plan on the held-out one from that plan) and ESFT at 8x9 (a plan on each task's
first 40 requests). Prints one line per case, ``case: plan digest [re-plan digest]``, then a
digest of all of them and of the ``unseen`` axes of DeepSeek-V3's layer 10 (plain numba loops,
no LAPACK: this digest too must be the same everywhere).
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch

from benchmarks import traces
from eplb_rt.algorithms import plan
from eplb_rt.algorithms.episode_rows import unseen_axes
from eplb_rt.integrations.vllm import policy_class
from eplb_rt.placement import Topology

POLICY = "equilibrium"


def _digest(*arrays: np.ndarray) -> str:
    h = hashlib.sha256()
    for a in arrays:
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()[:12]


def main() -> None:
    load = np.concatenate(
        [traces.deepseek_v3(w, moe_only=True) for w in traces.DEEPSEEK_V3_WORKLOADS]
    )  # [4, L, E]: one workload a row
    tables = []
    for D, S in ((64, 5), (32, 9), (8, 36)):
        for held in range(len(load)):
            first = plan(POLICY, np.delete(load, held, axis=0), Topology(D, S))
            previous = torch.tensor(first.phy2log.astype(np.int64))
            replan = policy_class(POLICY).rebalance_experts(
                torch.tensor(load[held]), D * S, 1, 1, D, previous
            )
            tables += [first.phy2log, replan.numpy()]
            print(
                f"DeepSeek-V3 {D}x{S}, {held} held out: {_digest(tables[-2])} {_digest(tables[-1])}"
            )
    for task in traces.ESFT_TASKS:
        tables.append(plan(POLICY, traces.esft(task)[:40], Topology(8, 9)).phy2log)
        print(f"ESFT 8x9 {task}: {_digest(tables[-1])}")
    episodes = load[:3, 10] / load[:3, 10].sum(axis=1, keepdims=True)
    print(
        f"all tables: {_digest(*tables)}; unseen axes (layer 10): {_digest(*unseen_axes(episodes))}"
    )


if __name__ == "__main__":
    import argparse

    # No options: --help says what runs instead of running it.
    argparse.ArgumentParser(description=__doc__.split("\n\n")[0]).parse_args()
    main()
