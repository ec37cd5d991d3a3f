"""SGLang: ``eplb_algorithms.rebalance_experts`` over an eplb_rt policy, and the plugin.

SGLang (0.5.11 to 0.5.23) plans in ``ExpertLocationMetadata.init_by_eplb`` (at start from an
``--init-expert-location`` ``{"logical_count": ...}`` file, and on every ``--enable-eplb``
rebalance) by calling ``sglang.srt.eplb.eplb_algorithms.rebalance_experts``. The
``sglang.srt.plugins`` entry point ``eplb_rt`` (:func:`register`) replaces that function with
:func:`rebalance_experts` when ``EPLB_RT_POLICY`` names an eplb_rt policy. A placement planned
offline goes in as ``--init-expert-location`` ``{"physical_to_logical_map": ...}`` (written by
``eplb-rt convert --to sglang``).
"""

from __future__ import annotations

import inspect
import logging

import numpy as np

from eplb_rt.integrations._common import as_numpy, plugin_policy, policy_name, replan
from eplb_rt.placement import Topology

WHERE = "eplb_rt SGLang algorithm"
log = logging.getLogger("eplb_rt.integrations")


def rebalance_experts(  # noqa: PLR0917 (SGLang's signature)
    tokens_per_expert,
    num_physical_experts: int,
    num_local_physical_experts: int,
    num_groups: int | None,
    num_nodes: int,
    algorithm: object = None,
    *,
    policy: str | None = None,
    options: dict | None = None,
):
    """SGLang's signature: ``tokens_per_expert [T, L, E]`` (or ``[L, E]``) -> placement.

    ``algorithm`` (SGLang's ``EplbAlgorithm``) is ignored: ``policy`` (default
    ``EPLB_RT_POLICY`` or ``EplbConfig().policy``) plans, on ``T`` episodes.

    Returns SGLang's triple of int64 tensors: ``physical_to_logical_map [L, P]``,
    ``logical_to_physical_map [L, E, R]`` (-1 padded) and ``logical_count [L, E]``.
    """
    import torch

    load = as_numpy(tokens_per_expert, "tokens_per_expert [(T,) L, E]", (2, 3), WHERE)
    load = load[None] if load.ndim == 2 else load
    if num_local_physical_experts < 1 or num_physical_experts % num_local_physical_experts:
        raise ValueError(
            f"{WHERE}: num_physical_experts ({num_physical_experts}) must be a positive "
            f"multiple of num_local_physical_experts ({num_local_physical_experts})"
        )
    try:
        topology = Topology(
            num_physical_experts // num_local_physical_experts,
            num_local_physical_experts,
            num_nodes,
            num_groups or 1,
        )
    except ValueError as err:
        raise ValueError(f"{WHERE}: {err}") from None
    placement, _ = replan(
        WHERE, load.astype(np.float64), topology, None, policy=policy_name(policy), options=options
    )
    return tuple(
        torch.from_numpy(np.ascontiguousarray(a, dtype=np.int64))
        for a in (placement.phy2log, placement.log2phy(), placement.logcnt)
    )


def register() -> None:
    """The ``sglang.srt.plugins`` entry point: with ``EPLB_RT_POLICY`` set, SGLang's EPLB
    plans with that eplb_rt policy and the options in ``EPLB_RT_POLICY_OPTIONS``."""
    chosen = plugin_policy()
    if chosen is None:
        return
    name, options = chosen
    from sglang.srt.eplb import eplb_algorithms

    def rebalance(*args, **kwargs):
        unknown = sorted(set(kwargs) - _ACCEPTED)
        if unknown:  # a newer SGLang's inputs: planning without them beats failing its EPLB
            if not _ignored.issuperset(unknown):
                log.warning("%s: ignoring SGLang's arguments %s", WHERE, ", ".join(unknown))
                _ignored.update(unknown)
            kwargs = {k: v for k, v in kwargs.items() if k in _ACCEPTED}
        return rebalance_experts(*args, **kwargs, policy=name, options=options)

    eplb_algorithms.rebalance_experts = rebalance


_ACCEPTED = frozenset(list(inspect.signature(rebalance_experts).parameters)[:6])
"""SGLang's parameters that :func:`rebalance_experts` takes (not ``policy`` / ``options``)."""
_ignored: set[str] = set()
