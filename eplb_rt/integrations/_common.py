"""What the engine adapters share: array conversion, the policy they run, and the replan rule.

Engines route an expert's tokens evenly over its replicas, so every placement handed to an
engine has uniform shares, and its PAR is measured that way. With the placement in force
(``previous``), a layer is replaced only when the new placement lowers its PAR on the load it
was planned on; ranks are relabelled to keep the most in place and kept experts stay in their
slot (the engines copy weights only for the rest). Nothing here imports torch, and the policies
(numba, 0.2 s) are imported when first used: the engines load their plugins in every process,
with or without ``EPLB_RT_POLICY``.
"""

from __future__ import annotations

import logging

import numpy as np

from eplb_rt import envs
from eplb_rt.placement import Placement, Topology
from eplb_rt.scalars import check_count

log = logging.getLogger("eplb_rt.integrations")


def as_numpy(
    value: object, name: str, ndims: tuple[int, ...], where: str, *, load: bool = False
) -> np.ndarray:
    """``value`` (torch tensor, numpy array or nested lists) as a numeric numpy array.

    Raises ``ValueError`` naming ``where`` and ``name`` unless it has one of ``ndims`` dims and
    no empty axis (an engine passes no empty table or load: one would be a bug upstream); with
    ``load``, also unless every value is finite and >= 0 (the error says where the first is not).
    """
    if hasattr(value, "detach"):  # a torch tensor, possibly on a device
        value = value.detach().cpu()
        if value.is_floating_point():  # bfloat16 has no numpy dtype; every float is exact in f64
            value = value.double()
        value = value.numpy()
    try:
        arr = np.asarray(value)
    except ValueError as err:  # ragged nested lists
        raise ValueError(f"{where}: {name} is not a rectangular array ({err})") from None
    if arr.ndim not in ndims:
        dims = " or ".join(str(n) for n in ndims)
        raise ValueError(f"{where}: {name} must have {dims} dimensions, got shape {arr.shape}")
    if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise ValueError(f"{where}: {name} must hold numbers, got dtype {arr.dtype}")
    if arr.size == 0:
        raise ValueError(f"{where}: {name} is empty: shape {arr.shape}")
    if load:
        from eplb_rt.algorithms.load import check_values  # as the plan that follows: lazily

        try:
            check_values(arr.astype(np.float64, copy=False), name)
        except ValueError as err:
            raise ValueError(f"{where}: {err}") from None
    return arr


def policy_name(name: str | None = None, options: dict | None = None) -> str:
    """``name``, else ``EPLB_RT_POLICY``, else ``EplbConfig().policy``; raises if unknown, or if
    ``options`` are not that policy's (when the policy is built, not inside the engine's first
    rebalance)."""
    if not name:
        name = envs.get("EPLB_RT_POLICY")
    if not name:
        from eplb_rt.config import EplbConfig

        name = EplbConfig().policy
    from eplb_rt.algorithms import get_policy

    get_policy(name).make_options(options)
    return name


def plugin_policy() -> tuple[str, dict | None] | None:
    """The engines' plugins' policy: ``(EPLB_RT_POLICY, EPLB_RT_POLICY_OPTIONS)``, both checked
    now (so that an engine with a bad value stops at start-up, saying which), or ``None`` when
    ``EPLB_RT_POLICY`` is unset. ``EPLB_RT_PLAN_THREADS``, which the plans read, is checked now
    too, not at the engine's first rebalance."""
    name = envs.get("EPLB_RT_POLICY")
    options = envs.get("EPLB_RT_POLICY_OPTIONS")
    envs.get("EPLB_RT_PLAN_THREADS")
    if not name:
        if options:
            log.warning(
                "EPLB_RT_POLICY_OPTIONS is set but EPLB_RT_POLICY is not: the engine keeps its "
                "own EPLB policy and the options are not used"
            )
        return None
    try:
        policy_name(name, options)
    except ValueError as err:
        raise ValueError(f"EPLB_RT_POLICY={name} / EPLB_RT_POLICY_OPTIONS: {err}") from None
    return name, options


def check_counts(where: str, **counts: object) -> None:
    """A ``ValueError`` naming the adapter (``where``) and the argument unless each of
    ``counts`` (the engine's arguments by name) is an integer >= 1."""
    for name, value in counts.items():
        check_count(f"{where}: {name}", value)


def check_nodes_and_groups(where: str, num_nodes: object, num_groups: object) -> None:
    """:func:`check_counts` of ``num_nodes`` and ``num_groups``."""
    check_counts(where, num_nodes=num_nodes, num_groups=num_groups)


def engine_topology(
    where: str, num_ranks: int, slots_per_rank: int, num_nodes: int, num_groups: int
) -> Topology:
    """The topology an engine's call describes (:func:`check_nodes_and_groups` first): ranks
    that ``num_nodes`` does not divide are planned flat, as the engines' own policies plan
    them; any other refusal of :class:`Topology` names the adapter."""
    check_nodes_and_groups(where, num_nodes, num_groups)
    nodes = int(num_nodes) if num_ranks % num_nodes == 0 else 1
    try:
        return Topology(num_ranks, slots_per_rank, nodes, int(num_groups))
    except ValueError as err:
        raise ValueError(f"{where}: {err}") from None


def replan(
    where: str,
    load: np.ndarray,
    topology: Topology,
    previous: np.ndarray | None,
    *,
    policy: str,
    options: dict | None = None,
    table_name: str = "the table in force",
    refuse_doubled: str | None = None,
) -> tuple[Placement, np.ndarray]:
    """Plan ``load [T, L, E]`` on ``topology``; returns ``(placement, gain [L])``.

    ``previous`` is the ``[L, P]`` ``phy2log`` in force or ``None`` (the engine's argument
    ``table_name``); ``gain`` is its PAR minus the returned placement's, per layer (0 where a
    layer is kept or has no load). A table with an expert twice on a rank is planned from
    (:func:`_in_force`), unless ``refuse_doubled`` says why the engine cannot take such a
    layer's plan. Every bad input raises ``ValueError`` prefixed with ``where``, before
    anything is planned.
    """
    from eplb_rt import planning
    from eplb_rt.algorithms import get_policy, hierarchy, metrics, plan
    from eplb_rt.algorithms.align import align_placement

    try:
        # An engine that rearranges between steps waits for this plan: its layers go side by
        # side on the cores the process may run on (the same plan as on one thread).
        threads = planning.default_threads()
        table, doubled = (
            (None, None)
            if previous is None
            else _in_force(previous, load, topology, table_name, refuse_doubled)
        )
        prev = table
        options = get_policy(policy).make_options(options)
        if prev is not None and doubled.any():
            # Layers holding an expert twice on a rank are planned afresh (as without a table)
            # and stand in for their slots in force; the others are planned from theirs.
            rows = previous.copy()
            fresh = plan(policy, load[:, doubled], topology, None, options, threads=threads)
            rows[doubled] = fresh.phy2log
            prev = Placement(rows, load.shape[2], topology.num_ranks)
        layers = None if prev is None else ~doubled
        new = plan(policy, load, topology, prev, options, layers=layers, threads=threads)
        new = new.with_shares(None)
    except ValueError as err:
        raise ValueError(f"{where}: {err}") from None
    if prev is None:
        return new, np.zeros(new.num_layers)
    # Ranks relabelled to keep the most in place; kept experts keep their slot. (The fresh
    # layers are the table's stand-ins already.)
    new = align_placement(prev, new, hierarchy.nodes_to_align(load.shape[2], topology, options))
    total = load.sum(axis=0)
    with np.errstate(invalid="ignore"):
        gain = np.nan_to_num(metrics.par(table, total) - metrics.par(new, total), nan=0.0)
    # A layer whose groups the table spreads over nodes takes the plan whatever its PAR, as the
    # planning pipeline decides.
    keep = (gain <= 0) & ~hierarchy.spread_layers(table.phy2log, load.shape[2], topology, options)
    if keep.any():
        new = new.replace_layers(np.flatnonzero(keep), table)
    return new, np.where(keep, 0.0, gain)


def _in_force(
    previous: np.ndarray,
    load: np.ndarray,
    topology: Topology,
    name: str,
    refuse_doubled: str | None,
):
    """The table in force ``[L, P]`` (the engine's argument ``name``) checked, and ``[L]
    bool``: its layers that hold an expert twice on one rank.

    Ids out of range, a missing expert or a wrong width raise. Two replicas of one expert on a
    rank are the engine's own business (vLLM's default policy makes such tables): such a layer
    is accepted and planned as if no table were in force (eplb_rt's placements never do that);
    the other layers keep what they can of theirs. Where the engine cannot take such a layer's
    plan (``refuse_doubled``: why), it raises first, naming the expert, rank and layer.
    """
    if not np.issubdtype(previous.dtype, np.integer):
        raise ValueError(f"{name} must hold integer expert ids, got {previous.dtype}")
    if previous.shape != (load.shape[1], topology.num_slots):
        raise ValueError(
            f"{name} has shape {previous.shape}, expected [{load.shape[1]}, "
            f"{topology.num_slots}] ({topology.num_ranks} ranks x {topology.num_slots_per_rank})"
        )
    table = Placement(previous, load.shape[-1], topology.num_ranks, validate=False)
    grid = np.sort(table.by_rank(), axis=2)
    twice = grid[..., 1:] == grid[..., :-1]
    doubled = twice.any(axis=(1, 2))
    if refuse_doubled and doubled.any():
        layer, rank, i = (int(v) for v in np.argwhere(twice)[0])
        raise ValueError(
            f"{name} holds expert {grid[layer, rank, i]} twice on rank {rank} of layer {layer}; "
            f"{refuse_doubled}"
        )
    valid_ids = previous.min() >= 0 and previous.max() < table.num_experts
    try:
        # Only bad ids or a missing expert can fail here: doubled layers are accepted, and
        # the shares are even.
        if not (valid_ids and (table.logcnt > 0).all()):
            table.validate()  # raises, naming what is wrong
    except ValueError as err:
        raise ValueError(f"{name}: {err}") from None
    return table, doubled
