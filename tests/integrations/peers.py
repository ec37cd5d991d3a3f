"""The engines' released EPLB modules, imported from the releases ``scripts/fetch_peers.py``
unpacks, with the smallest stubs of the runtime imports they make (written here, not theirs).

Used by the integration tests' fixtures and by ``benchmarks/bench_peers.py``.
"""

from __future__ import annotations

import ast
import contextlib
import contextvars
import logging
import re
import sys
import types
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Literal

import torch

from scripts.fetch_peers import VERSIONS, fetch

STUB_LOGGER = logging.getLogger("engine_stub")


def _no_group():
    raise RuntimeError("no distributed group outside the engine")


class _AbstractEplbPolicy:
    """vLLM's policy interface as vllm-ascend 0.30's model runner v2 imports it (vLLM >= 0.19:
    ``phy2log`` alone comes back)."""

    @classmethod
    def rebalance_experts(  # noqa: PLR0917 (vLLM's signature)
        cls, weight, num_replicas, num_groups, num_nodes, num_ranks, old_global_expert_indices=None
    ) -> torch.Tensor:
        raise NotImplementedError


class _DefaultEplbPolicy(_AbstractEplbPolicy):
    """Stands for vLLM's own policy, which vllm-ascend's factory imports directly."""


class _StairConfig:
    """vllm-ascend's STAIR policy settings (passed through its factory; not read here)."""


def _stubs(name: str, runtime: SimpleNamespace, root: Path) -> tuple[dict[str, dict], list[str]]:
    """``(stub modules and their attributes, modules to import)`` for peer ``name`` unpacked
    in ``root``."""
    if name == "vllm-ascend":
        base = "vllm_ascend.eplb.core."
        stubs = {
            "vllm.logger": {"logger": STUB_LOGGER},
            "vllm.distributed": {
                "get_ep_group": lambda: SimpleNamespace(rank_in_group=0),
                "get_eplb_group": _no_group,
            },
            "vllm.distributed.eplb.policy": {
                "AbstractEplbPolicy": _AbstractEplbPolicy,
                "DefaultEplbPolicy": _DefaultEplbPolicy,
            },
            "vllm_ascend.ascend_config": {"StairConfig": _StairConfig},
            "vllm.model_executor.layers.fused_moe.expert_map_manager": {
                "determine_expert_map": None
            },
            "vllm_ascend.distributed.parallel_state": {"get_dynamic_eplb_group": _no_group},
            "vllm_ascend.envs": {},  # <= 0.13
            "networkx": {},  # <= 0.13's worker, for a transfer plan the tests do not make
            "torch_npu": {},
        }
        mods = ["policy.policy_factory", "policy.policy_flashlb", "eplb_worker", "eplb_utils"]
        mods = [base + m for m in mods]
        if (root / "vllm_ascend/distributed/eplb/policy/factory.py").is_file():  # from 0.30
            mods.append("vllm_ascend.distributed.eplb.policy.factory")
        return stubs, mods
    if name == "vllm":
        stubs = {
            "vllm.config.parallel": {"EPLBPolicyOption": Literal["default"]},
            "vllm.envs": {"VLLM_PLUGINS": None},
        }
        return stubs, ["vllm.distributed.eplb.policy", "vllm.plugins"]
    getters = ("device", "exec", "parallel", "resources")
    unset = SimpleNamespace(get=lambda: None)
    stubs = {
        "sglang.srt.runtime_context": {
            f"get_{g}": (lambda g=g: getattr(runtime, g)) for g in getters
        },
        "sglang.srt.environ": {
            "envs": SimpleNamespace(SGLANG_PLUGINS=unset, SGLANG_PLATFORM=unset)
        },
        "sglang.srt.plugins.hook_registry": {
            "HookRegistry": SimpleNamespace(apply_hooks=lambda: None),
            "HookSource": lambda **kwargs: kwargs,
            "_current_plugin_source": contextvars.ContextVar("plugin_source"),
        },
    }
    mods = ["eplb.eplb_algorithms", "eplb.expert_location", "plugins"]
    return stubs, ["sglang.srt." + m for m in mods]


def source_function(path: Path, name: str):
    """The function ``name`` defined in the release's file ``path`` (a method's too, as a plain
    function), compiled alone from its source: for a function of the engine's that needs
    nothing around it, in a module whose imports are the whole engine. Its annotations are not
    evaluated. ``None`` where the file or the function is not there."""
    if not path.is_file():
        return None
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.FunctionDef) and node.name == name:
            node.decorator_list, node.returns = [], None
            for arg in ast.walk(node.args):
                if isinstance(arg, ast.arg):
                    arg.annotation = None
            code = compile(ast.Module([node], []), str(path), "exec")
            namespace: dict = {}
            exec(code, namespace)
            return namespace[name]
    return None


@contextlib.contextmanager
def open_peer(name: str, version: str | None = None) -> Iterator[SimpleNamespace]:
    """Import peer ``name``'s EPLB modules at ``version`` (default: the newest tested); yields
    them by last name, with ``version`` (a tuple of ints), ``root`` (the folder the release is
    unpacked in) and, for SGLang, ``runtime``: the namespace its stubbed ``runtime_context``
    getters read attributes of.

    Raises ``RuntimeError`` when the wheel cannot be had. The engine's modules are removed after
    (the libraries they loaded stay).
    """
    version = version or VERSIONS[name][0]
    root = fetch(name, version)
    runtime = SimpleNamespace()
    stubs, modules = _stubs(name, runtime, root)
    before = dict(sys.modules)
    # SwiftBalanceEplb asks torch.npu (which torch_npu adds) for the NPUs per host: 8 on A2.
    npu = None if hasattr(torch, "npu") else SimpleNamespace(device_count=lambda: 8)
    if npu is not None:
        torch.npu = npu
    sys.path.insert(0, str(root))
    for mod, attrs in stubs.items():
        stub = types.ModuleType(mod)
        stub.__dict__.update(attrs)
        sys.modules[mod] = stub
    try:
        found = {m.rsplit(".", 1)[-1]: __import__(m, fromlist=["_"]) for m in modules}
        # The engines import the stubs' names at import time; dropping the stubs now keeps them
        # from hiding another peer's real package (vllm-ascend's vllm.distributed and vLLM's).
        for mod in stubs:
            if mod in before:
                sys.modules[mod] = before[mod]
            else:
                del sys.modules[mod]
        numbers = tuple(int(part) for part in re.findall(r"\d+", version)[:3])
        yield SimpleNamespace(runtime=runtime, version=numbers, root=root, **found)
    finally:
        # Only the engine's packages go: libraries they loaded (scipy, numpy.fft) stay, since a
        # C extension cannot be loaded twice in one process and the next release needs them.
        sys.path.remove(str(root))
        engine = {m.split(".")[0] for m in [*modules, *stubs]}
        for mod in set(sys.modules) - set(before):
            if mod.split(".")[0] in engine:
                del sys.modules[mod]
        if npu is not None:
            del torch.npu
