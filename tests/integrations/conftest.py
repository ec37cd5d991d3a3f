"""The engines' released EPLB modules, imported from the wheels ``scripts/fetch_peers.py``
unpacks, with the smallest stubs of the runtime imports they make (written here, not theirs).

Each fixture is session-scoped: it fetches the wheel on first use (``pytest.skip`` with the
reason when it cannot be had), puts stubs in ``sys.modules``, imports what the tests need and
removes every module it added when the session ends.
"""

from __future__ import annotations

import logging
import sys
import types
from types import SimpleNamespace

import numpy as np
import pytest

from eplb_rt.algorithms import metrics
from eplb_rt.placement import Placement, Topology
from eplb_rt.sim import traces
from scripts.fetch_peers import fetch

STUB_LOGGER = logging.getLogger("engine_stub")


def _no_group():
    raise RuntimeError("no distributed group in tests")


def _import_peer(name: str, stubs: dict[str, dict], modules: list[str]):
    try:
        root = fetch(name)
    except RuntimeError as err:
        pytest.skip(f"{name} cannot be fetched: {err}")
    before = set(sys.modules)
    sys.path.insert(0, str(root))
    for mod, attrs in stubs.items():
        stub = types.ModuleType(mod)
        stub.__dict__.update(attrs)
        sys.modules[mod] = stub
    try:
        yield SimpleNamespace(
            **{m.rsplit(".", 1)[-1]: __import__(m, fromlist=["_"]) for m in modules}
        )
    finally:
        sys.path.remove(str(root))
        for mod in set(sys.modules) - before:
            del sys.modules[mod]


@pytest.fixture(scope="session")
def ascend():
    """vllm-ascend 0.26's policies, EPLB worker and expert-map utilities."""
    stubs = {
        "vllm.logger": {"logger": STUB_LOGGER},
        "vllm.distributed": {"get_ep_group": lambda: SimpleNamespace(rank_in_group=0)},
        "vllm.model_executor.layers.fused_moe.expert_map_manager": {"determine_expert_map": None},
        "vllm_ascend.distributed.parallel_state": {"get_dynamic_eplb_group": _no_group},
        "torch_npu": {},
    }
    base = "vllm_ascend.eplb.core."
    yield from _import_peer(
        "vllm-ascend",
        stubs,
        [
            base + m
            for m in ("policy.policy_factory", "policy.policy_flashlb", "eplb_worker", "eplb_utils")
        ],
    )


@pytest.fixture(scope="session")
def vllm():
    """vLLM 0.33's EPLB policy package."""
    from typing import Literal

    stubs = {"vllm.config.parallel": {"EPLBPolicyOption": Literal["default"]}}
    yield from _import_peer("vllm", stubs, ["vllm.distributed.eplb.policy"])


@pytest.fixture(scope="session")
def sglang():
    """SGLang 0.5.23's EPLB algorithms and expert-location loader (``runtime_context`` stubbed:
    tests set ``sglang.runtime`` to the namespace its getters return)."""
    runtime = SimpleNamespace()
    stubs = {
        "sglang.srt.runtime_context": {
            "get_device": lambda: runtime.device,
            "get_exec": lambda: runtime.exec,
            "get_parallel": lambda: runtime.parallel,
            "get_resources": lambda: runtime.resources,
        }
    }
    for ns in _import_peer(
        "sglang", stubs, ["sglang.srt.eplb.eplb_algorithms", "sglang.srt.eplb.expert_location"]
    ):
        ns.runtime = runtime
        yield ns


# ------------------------------------------------------------------- shipped traces, shapes
def _cases():
    """``(id, load [T, L, E], Topology)`` over the shipped traces at 8, 32 and 64 ranks."""
    ds = traces.deepseek_v3("prefill_in1024", moe_only=True)
    esft = traces.esft("law")
    gpt = traces.gptoss(traces.gptoss_subsets()[0])
    return [
        ("deepseek-v3-32x9", ds, Topology(32, 9)),
        ("deepseek-v3-64x5", ds, Topology(64, 5)),
        ("esft-8x9", esft, Topology(8, 9)),
        ("gpt-oss-8x5", gpt, Topology(8, 5)),
        ("olmoe-8x9", traces.olmoe(domain="c4"), Topology(8, 9)),
    ]


CASES = _cases()
CASE_IDS = [c[0] for c in CASES]


def slot_workload(table: np.ndarray, load: np.ndarray) -> np.ndarray:
    """Tokens per slot ``[T, L, D, S]`` that an engine records for ``table [L, D, S]`` when
    each expert's tokens ``load [T, L, E]`` are split evenly over its replicas."""
    L, D, S = table.shape
    placement = Placement(table.reshape(L, -1), load.shape[-1], D)
    return metrics.slot_load(placement, load).reshape(-1, L, D, S)
