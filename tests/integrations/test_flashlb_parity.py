"""Our ``flashlb`` against the ``FlashLB`` of vllm-ascend's newest tested release on the same
inputs: the same search, so the same placements' PAR, on small shipped-trace cases of odd sizes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from benchmarks import traces
from eplb_rt.algorithms import metrics, plan
from eplb_rt.placement import Placement, Topology
from tests.integrations.conftest import slot_workload


def _original(ascend, load: np.ndarray, topology: Topology) -> np.ndarray:
    """vllm-ascend's FlashLB (a fresh policy, its own start layout), ``phy2log [L, P]``."""
    L, E = load.shape[1:]
    D = topology.num_ranks
    start = ascend.eplb_utils.generate_global_placement(E, D, topology.num_slots - E, 0)
    table = np.tile(start.numpy(), (L, 1, 1))
    work = torch.tensor(slot_workload(table, load))
    new = ascend.policy_flashlb.FlashLB().rebalance_experts(torch.tensor(table), work)[2]
    return np.asarray(new).reshape(L, -1)


def _par(phy2log: np.ndarray, load: np.ndarray, topology: Topology) -> np.ndarray:
    table = Placement(phy2log, load.shape[-1], topology.num_ranks)
    return metrics.par(table, load.sum(0))


def _cases():
    """``(id, train [T, L, E], held-out [1, L, E], Topology)``: a few layers, odd topologies."""
    esft = traces.esft("law")[:7, 3:6]  # seven requests as steps, three layers
    gpt = np.concatenate([traces.gptoss(s)[:, 5:9] for s in traces.gptoss_subsets()[:3]])
    olmoe = [traces.olmoe(domain=d) for d in ("arxiv", "book", "c4")]
    deepseek = [
        traces.deepseek_v3(w, moe_only=True)[:, 10:12] for w in traces.DEEPSEEK_V3_WORKLOADS
    ]
    return [
        ("esft-7x11", esft[:6], esft[6:], Topology(7, 11)),
        ("gpt-oss-6x7", gpt[:2], gpt[2:], Topology(6, 7)),
        ("olmoe-9x8", np.concatenate(olmoe[:2]), olmoe[2], Topology(9, 8)),
        ("deepseek-v3-24x13", np.concatenate(deepseek[:3]), deepseek[3], Topology(24, 13)),
    ]  # fmt: skip


CASES = _cases()


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # the original's np.array(tensor)
@pytest.mark.parametrize(("name", "train", "test", "topology"), CASES, ids=[c[0] for c in CASES])
def test_flashlb_gives_the_originals_par(ascend_newest, name, train, test, topology):
    theirs = _original(ascend_newest, train, topology)
    ours = plan("flashlb", train, topology).phy2log
    # The same placements up to rank and slot order: equal PAR on every load, layer by layer.
    np.testing.assert_allclose(_par(ours, train, topology), _par(theirs, train, topology), 1e-9)
    np.testing.assert_allclose(_par(ours, test, topology), _par(theirs, test, topology), 1e-9)
