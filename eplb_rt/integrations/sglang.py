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

from eplb_rt.integrations._common import (
    as_numpy,
    check_counts,
    check_nodes_and_groups,
    engine_topology,
    plugin_policy,
    policy_name,
    replan,
)

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

    ``policy`` (default ``EPLB_RT_POLICY`` or ``EplbConfig().policy``) plans, on ``T`` episodes,
    whatever ``algorithm`` (SGLang's ``EplbAlgorithm``) names, with one exception: under
    elastic EP (SGLang then asks for ``elasticity_aware``) only the ranks that serve are planned
    on, and a failed rank's slots hold expert 0 and are in no expert's list, as SGLang's own
    algorithm leaves them. Ranks that ``num_nodes`` does not divide are planned flat, as SGLang
    plans them.

    Returns SGLang's triple of int64 tensors: ``physical_to_logical_map [L, P]``,
    ``logical_to_physical_map [L, E, R]`` (-1 padded) and ``logical_count [L, E]``.
    """
    import torch

    load = as_numpy(tokens_per_expert, "tokens_per_expert [(T,) L, E]", (2, 3), WHERE, load=True)
    load = load[None] if load.ndim == 2 else load
    check_counts(
        WHERE,
        num_physical_experts=num_physical_experts,
        num_local_physical_experts=num_local_physical_experts,
    )
    if num_physical_experts % num_local_physical_experts:
        raise ValueError(
            f"{WHERE}: num_physical_experts ({num_physical_experts}) must be a positive "
            f"multiple of num_local_physical_experts ({num_local_physical_experts})"
        )
    S = num_local_physical_experts
    D = num_physical_experts // S
    groups = 1 if num_groups is None else num_groups  # None: no groups
    check_nodes_and_groups(WHERE, num_nodes, groups)
    live = _live_ranks(algorithm, D)
    if live is not None:
        D, num_nodes, groups = live.size, 1, 1  # SGLang too plans those flat
    topology = engine_topology(WHERE, D, S, num_nodes, groups)
    placement, _ = replan(
        WHERE, load.astype(np.float64), topology, None, policy=policy_name(policy), options=options
    )
    maps = (placement.phy2log, placement.log2phy(), placement.logcnt)
    if live is not None:
        maps = _on_live_ranks(*maps, live, num_physical_experts // S)
    return tuple(torch.from_numpy(np.ascontiguousarray(a, dtype=np.int64)) for a in maps)


def _live_ranks(algorithm: object, num_ranks: int) -> np.ndarray | None:
    """The ranks that serve (``[k]`` indices) under SGLang's elastic EP, or ``None`` when
    every rank does or ``algorithm`` is not ``elasticity_aware``: SGLang selects that algorithm
    whenever elastic EP is on, and keeps the ranks' health in ``ElasticEPStateManager``."""
    if not str(getattr(algorithm, "name", algorithm)).startswith("elasticity_aware"):
        return None
    from sglang.srt.elastic_ep.elastic_ep import ElasticEPStateManager

    manager = ElasticEPStateManager.instance()
    active = manager.active_ranks if manager is not None else None
    if active is None:
        active = ElasticEPStateManager.healthy_rank_state()
    active = as_numpy(active, "active_ranks [ranks]", (1,), WHERE)
    if active.size > num_ranks and not active[num_ranks:].any():
        # SGLang sizes the list to --max-ep-size: the ranks past those serving are its reserve
        # for a scale-up, never active.
        active = active[:num_ranks]
    if active.shape != (num_ranks,):
        raise ValueError(f"{WHERE}: active_ranks has shape {active.shape}, expected [{num_ranks}]")
    if not active.any():
        raise ValueError(f"{WHERE}: no rank is active")
    return None if active.all() else np.flatnonzero(active)


def _on_live_ranks(phy2log, log2phy, logcnt, live: np.ndarray, num_ranks: int):
    """SGLang's triple of a plan on the ``live`` ranks alone, laid out on all ``num_ranks``:
    a failed rank's slots hold expert 0 and no expert's list names them."""
    L, P = phy2log.shape
    S = P // live.size
    slots = (live[:, None] * S + np.arange(S)).reshape(-1)  # the live plan's slot -> global
    full = np.zeros((L, num_ranks * S), dtype=np.int64)
    full[:, slots] = phy2log
    lists = np.where(log2phy >= 0, slots[np.maximum(log2phy, 0)], -1)
    return full, lists, logcnt


def register() -> None:
    """The ``sglang.srt.plugins`` entry point: with ``EPLB_RT_POLICY`` set, SGLang's EPLB
    plans with that eplb_rt policy and the options in ``EPLB_RT_POLICY_OPTIONS``.

    Raises:
        SystemExit: a bad policy or option. SGLang's loader logs a plugin's exceptions and
            starts with its own algorithm; a typo must stop it instead, as it stops vLLM.
    """
    try:
        chosen = plugin_policy()
    except ValueError as err:
        raise SystemExit(f"eplb_rt's SGLang plugin: {err}") from None
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
