"""Where each expert replica lives: ``Placement`` and ``Topology``.

A placement of ``L`` layers on ``D`` ranks with ``S`` slots each (``P = D * S`` physical slots) is
stored as two arrays, everything else is derived from them:

* ``phy2log [L, P] int32``: the logical expert held by each slot (physical id ``p = rank * S + s``);
* ``slot_share [L, P] float64``: the fraction of its expert's tokens each slot receives. The slots
  of one expert sum to 1; uniform splitting gives ``1 / logcnt``.

Derived views (the README's terms): ``logcnt [L, E]``, ``log2phy [L, E, R]`` (slots of an
expert in ascending physical id, padded with -1), ``replica_share [L, E, R]`` (aligned with
``log2phy``) and the per-rank ``expert_map [L, E]`` (local slot or -1, vllm-ascend's convention).

This module is numpy-only: policies and the CLI use it without torch. Files: :mod:`eplb_rt.formats`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from eplb_rt.scalars import check_count, check_divisor, is_integer

_INT32_MAX = 2**31 - 1

SHARE_TOLERANCE = 1e-6
"""Largest accepted deviation of an expert's summed slot shares from 1."""


@dataclasses.dataclass(frozen=True)
class Topology:
    """The expert-parallel layout a placement is made for.

    Attributes:
        num_ranks: expert-parallel ranks (devices), ``D``.
        num_slots_per_rank: expert weight slots on each rank, ``S``.
        num_nodes: nodes the ranks are spread over (rank ``r`` is on node
            ``r // (D // num_nodes)``);
            used by hierarchical policies and to prefer same-node migration sources.
        num_groups: expert groups for hierarchical placement (DeepSeek-V3 has 8 groups of 32
            experts); 1 means no grouping.
    """

    num_ranks: int
    num_slots_per_rank: int
    num_nodes: int = 1
    num_groups: int = 1

    def __post_init__(self) -> None:
        for name in ("num_ranks", "num_slots_per_rank", "num_nodes", "num_groups"):
            object.__setattr__(self, name, check_count(f"Topology.{name}", getattr(self, name)))
        if self.num_slots > _INT32_MAX:  # the routing tables hold slot ids as int32
            raise ValueError(
                f"Topology has {self.num_ranks} ranks x {self.num_slots_per_rank} slots = "
                f"{self.num_slots} slots; slot ids are int32 (at most {_INT32_MAX} slots)"
            )
        if self.num_ranks % self.num_nodes:
            raise ValueError(
                f"Topology.num_ranks ({self.num_ranks}) must be a multiple of num_nodes "
                f"({self.num_nodes})"
            )

    @property
    def num_slots(self) -> int:
        """Physical slots in all, ``P = D * S``."""
        return self.num_ranks * self.num_slots_per_rank

    @property
    def ranks_per_node(self) -> int:
        return self.num_ranks // self.num_nodes

    def check_experts(self, num_experts: int) -> None:
        """Raise unless ``num_experts`` experts fit: ``E <= P`` and ``S <= E``."""
        check_count("num_experts", num_experts)
        if num_experts > self.num_slots:
            raise ValueError(
                f"{num_experts} experts do not fit in {self.num_ranks} ranks x "
                f"{self.num_slots_per_rank} slots = {self.num_slots} slots; add ranks or slots"
            )
        if self.num_slots_per_rank > num_experts:
            raise ValueError(
                f"num_slots_per_rank ({self.num_slots_per_rank}) exceeds num_experts "
                f"({num_experts}): "
                "a rank would have to hold two replicas of one expert"
            )


class Placement:
    """Replicas of ``E`` logical experts on ``P = D * S`` slots, for ``L`` layers.

    Args:
        phy2log: ``[L, P]`` integer array, logical expert of each slot.
        num_experts: ``E``; every expert in ``[0, E)`` must have at least one slot.
        num_ranks: ``D``; ``P`` must be a multiple of it.
        slot_share: optional ``[L, P]`` array, fraction of its expert's tokens each slot takes;
            ``None`` means uniform (``1 / logcnt``).
        validate: check the invariants (see :meth:`validate`); only internal code that has just
            built a valid placement turns this off.

    Placements are immutable: the arrays are read-only and every transformation returns a new one.
    """

    __slots__ = ("_phy2log", "_slot_share", "_uniform", "num_experts", "num_ranks")

    def __init__(
        self,
        phy2log: np.ndarray,
        num_experts: int,
        num_ranks: int,
        slot_share: np.ndarray | None = None,
        *,
        validate: bool = True,
    ) -> None:
        phy2log = np.asarray(phy2log)
        if phy2log.ndim != 2:
            raise ValueError(f"phy2log must be [L, P], got shape {phy2log.shape}")
        if not np.issubdtype(phy2log.dtype, np.integer):
            raise TypeError(f"phy2log must hold integers, got dtype {phy2log.dtype}")
        info = np.iinfo(np.int32)
        if phy2log.size and (phy2log.min() < info.min or phy2log.max() > info.max):
            # Checked before the int32 cast below, which would wrap such an id into range.
            raise ValueError(f"expert ids must fit in int32, got {phy2log.min()}..{phy2log.max()}")
        P = phy2log.shape[1]
        self.num_experts = check_count("num_experts", num_experts)
        self.num_ranks = check_count("num_ranks", num_ranks)
        if P % self.num_ranks:
            raise ValueError(
                f"phy2log has {P} slots per layer, not a multiple of {num_ranks} ranks"
            )
        if self.num_experts > P:
            # Before the [L, E] tables below are made: an expert count past the slots is wrong
            # whatever the ids, and could ask for any amount of memory.
            raise ValueError(
                f"num_experts ({self.num_experts}) exceeds the {P} slots of a layer: every "
                "expert needs a slot"
            )
        self._phy2log = np.array(phy2log, dtype=np.int32)
        self._phy2log.setflags(write=False)
        self._uniform = slot_share is None
        if slot_share is None:
            share = even_shares(self._phy2log, self.num_experts)
        else:
            given = np.asarray(slot_share)
            if given.dtype.kind not in "iuf":  # a cast would read "0.5" or True as a share
                raise TypeError(f"slot_share must hold real numbers, got dtype {given.dtype}")
            share = np.array(given, dtype=np.float64)
            if share.shape != self._phy2log.shape:
                raise ValueError(
                    f"slot_share must have the shape of phy2log {self._phy2log.shape}, "
                    f"got {share.shape}"
                )
        share.setflags(write=False)
        self._slot_share = share
        if validate:
            self.validate()

    # ----------------------------------------------------------------------------- shapes
    @property
    def num_layers(self) -> int:
        return self._phy2log.shape[0]

    @property
    def num_slots(self) -> int:
        return self._phy2log.shape[1]

    @property
    def num_slots_per_rank(self) -> int:
        return self.num_slots // self.num_ranks

    @property
    def num_redundant(self) -> int:
        """Slots beyond one per expert, ``P - E``."""
        return self.num_slots - self.num_experts

    def topology(self, num_nodes: int = 1, num_groups: int = 1) -> Topology:
        return Topology(self.num_ranks, self.num_slots_per_rank, num_nodes, num_groups)

    # ----------------------------------------------------------------------------- views
    @property
    def phy2log(self) -> np.ndarray:
        """``[L, P] int32`` (read-only)."""
        return self._phy2log

    @property
    def slot_share(self) -> np.ndarray:
        """``[L, P] float64`` (read-only): share of its expert's tokens each slot takes."""
        return self._slot_share

    @property
    def is_uniform(self) -> bool:
        """True when every expert's tokens are split evenly over its replicas."""
        return bool(self.uniform_layers().all())

    def uniform_layers(self) -> np.ndarray:
        """``[L] bool``: the layers whose experts' tokens are split evenly over their replicas."""
        if self._uniform:
            return np.ones(self.num_layers, dtype=bool)
        uniform = even_shares(self._phy2log, self.num_experts)
        close = np.isclose(self._slot_share, uniform, rtol=0, atol=SHARE_TOLERANCE)
        return close.all(axis=1)

    @property
    def logcnt(self) -> np.ndarray:
        """``[L, E] int32``: replicas per expert."""
        return _logcnt(self._phy2log, self.num_experts)

    @property
    def max_replicas(self) -> int:
        """Largest replica count of any expert in any layer."""
        return int(self.logcnt.max(initial=1))  # 1 with no layers: a table's width

    def log2phy(self, max_replicas: int | None = None) -> np.ndarray:
        """``[L, E, R] int32``: slots of each expert in ascending physical id, padded with -1.

        ``max_replicas`` (``R``) defaults to :attr:`max_replicas`; a runtime passes its fixed
        table width so the shape never changes.
        """
        return self._replica_table(max_replicas)[0]

    def replica_share(self, max_replicas: int | None = None) -> np.ndarray:
        """``[L, E, R] float32``: share of each replica in :meth:`log2phy`'s order, 0 padded."""
        return self._replica_table(max_replicas)[1]

    def expert_map(self, rank: int) -> np.ndarray:
        """``[L, E] int32``: local slot of each expert on ``rank``, -1 where absent."""
        if not (is_integer(rank) and 0 <= rank < self.num_ranks):
            raise ValueError(f"rank must be an integer in [0, {self.num_ranks}), got {rank!r}")
        S, rank = self.num_slots_per_rank, int(rank)
        local = self._phy2log[:, rank * S : (rank + 1) * S]
        out = np.full((self.num_layers, self.num_experts), -1, dtype=np.int32)
        layers = np.repeat(np.arange(self.num_layers), S)
        out[layers, local.reshape(-1)] = np.tile(np.arange(S, dtype=np.int32), self.num_layers)
        return out

    def by_rank(self) -> np.ndarray:
        """``[L, D, S] int32``: ``phy2log`` with the rank axis made explicit."""
        return self._phy2log.reshape(self.num_layers, self.num_ranks, self.num_slots_per_rank)

    def _replica_table(self, max_replicas: int | None) -> tuple[np.ndarray, np.ndarray]:
        L, P, E = self.num_layers, self.num_slots, self.num_experts
        counts = self.logcnt
        if max_replicas is not None and not is_integer(max_replicas):  # int() would truncate
            raise ValueError(f"max_replicas must be an integer, got {max_replicas!r}")
        R = self.max_replicas if max_replicas is None else int(max_replicas)
        if R < counts.max(initial=0):
            raise ValueError(
                f"max_replicas={R} is below the largest replica count {int(counts.max())}"
            )
        if R > P:
            # No expert can have more replicas than slots; a wider table is only memory.
            raise ValueError(f"max_replicas={R} exceeds the {P} slots of a layer")
        log2phy = np.full((L, E, R), -1, dtype=np.int32)
        share = np.zeros((L, E, R), dtype=np.float32)
        # A stable sort by expert keeps each expert's slots in ascending physical id.
        order = np.argsort(self._phy2log, axis=1, kind="stable")
        experts = np.take_along_axis(self._phy2log, order, axis=1)
        first = np.zeros((L, E + 1), dtype=np.int64)
        np.cumsum(counts, axis=1, out=first[:, 1:])
        rank_in_expert = np.arange(P)[None, :] - np.take_along_axis(first, experts, axis=1)
        layers = np.repeat(np.arange(L), P)
        log2phy[layers, experts.reshape(-1), rank_in_expert.reshape(-1)] = order.reshape(-1)
        share[layers, experts.reshape(-1), rank_in_expert.reshape(-1)] = np.take_along_axis(
            self._slot_share, order, axis=1
        ).reshape(-1)
        return log2phy, share

    # ----------------------------------------------------------------------------- checks
    def validate(self) -> None:
        """Raise ``ValueError`` naming the first broken invariant.

        Invariants: ids in ``[0, E)``; every expert has at least one slot; no rank holds two
        replicas of one expert (so none has more replicas than ranks); shares are finite,
        ``>= 0`` and sum to 1 per expert.
        """
        E = self.num_experts
        p2l = self._phy2log
        if p2l.size and (p2l.min() < 0 or p2l.max() >= E):
            bad = np.argwhere((p2l < 0) | (p2l >= E))[0]
            raise ValueError(
                f"layer {bad[0]} slot {bad[1]}: expert id {p2l[tuple(bad)]} not in [0, {E})"
            )
        counts = self.logcnt
        if (counts == 0).any():
            layer, expert = np.argwhere(counts == 0)[0]
            raise ValueError(f"layer {layer}: expert {expert} has no slot")
        ranked = np.sort(self.by_rank(), axis=2)
        dup = ranked[:, :, 1:] == ranked[:, :, :-1]
        if dup.any():
            layer, rank, _ = np.argwhere(dup)[0]
            raise ValueError(
                f"layer {layer}: rank {rank} holds two replicas of expert "
                f"{ranked[layer, rank][1:][dup[layer, rank]][0]}"
            )
        share = self._slot_share
        bad = ~np.isfinite(share) | (share < 0)
        if bad.any():
            layer, slot = np.argwhere(bad)[0]
            value = float(share[layer, slot])
            raise ValueError(
                f"layer {layer}: slot_share[{layer}, {slot}] = {value!r}, expected a finite "
                "share >= 0"
            )
        if not self._uniform:
            sums = np.zeros((self.num_layers, E))
            np.add.at(sums, (np.arange(self.num_layers)[:, None], p2l), share)
            off = np.abs(sums - 1.0) > SHARE_TOLERANCE
            if off.any():
                layer, expert = np.argwhere(off)[0]
                raise ValueError(
                    f"layer {layer}: shares of expert {expert} sum to {sums[layer, expert]:.9g}, "
                    "expected 1"
                )

    # ----------------------------------------------------------------------------- comparisons
    def moves(self, previous: Placement) -> np.ndarray:
        """``[L] int64``: slots whose expert differs from ``previous`` (weights that must move)."""
        self._check_same_shape(previous, "previous")
        return (self._phy2log != previous._phy2log).sum(axis=1)

    def moved_fraction(self, previous: Placement) -> float:
        """Moved slots over all slots of all layers, in ``[0, 1]``."""
        return float(self.moves(previous).sum()) / max(1, self._phy2log.size)

    def changed_layers(self, previous: Placement) -> np.ndarray:
        """Indices of layers whose slots or shares differ from ``previous``."""
        self._check_same_shape(previous, "previous")
        slots = (self._phy2log != previous._phy2log).any(axis=1)
        shares = ~np.isclose(self._slot_share, previous._slot_share, rtol=0, atol=1e-12).all(axis=1)
        return np.flatnonzero(slots | shares)

    def _check_same_shape(self, other: Placement, name: str) -> None:
        if not isinstance(other, Placement):
            raise TypeError(f"{name} must be a Placement, got {type(other).__name__}")
        if (
            self._phy2log.shape != other._phy2log.shape
            or self.num_ranks != other.num_ranks
            or self.num_experts != other.num_experts
        ):
            raise ValueError(f"placements differ in shape: {self.describe()} vs {other.describe()}")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Placement):
            return NotImplemented
        return (
            self._phy2log.shape == other._phy2log.shape
            and self.num_ranks == other.num_ranks
            and self.num_experts == other.num_experts
            and bool(np.array_equal(self._phy2log, other._phy2log))
            and bool(np.allclose(self._slot_share, other._slot_share, rtol=0, atol=1e-12))
        )

    __hash__ = None  # type: ignore[assignment]

    def describe(self) -> str:
        return (
            f"{self.num_layers} layers x {self.num_experts} experts on {self.num_ranks} ranks x "
            f"{self.num_slots_per_rank} slots"
        )

    def __repr__(self) -> str:
        kind = "uniform" if self.is_uniform else "weighted"
        return f"Placement({self.describe()}, {kind} shares)"

    # ----------------------------------------------------------------------------- building
    @classmethod
    def initial(cls, num_layers: int, num_experts: int, topology: Topology) -> Placement:
        """The placement a model starts from: slot ``p`` holds expert ``p mod E``.

        The first ``E`` slots hold experts in order (the usual contiguous expert-parallel
        layout); redundant slots repeat them from expert 0. Raises if ``E`` does not fit.
        """
        check_count("num_layers", num_layers)
        if not isinstance(topology, Topology):
            raise TypeError(f"topology must be a Topology, got {type(topology).__name__}")
        topology.check_experts(num_experts)
        P = topology.num_slots
        row = np.arange(P, dtype=np.int32) % int(num_experts)
        return cls(np.tile(row, (int(num_layers), 1)), num_experts, topology.num_ranks)

    def with_shares(self, slot_share: np.ndarray | None) -> Placement:
        """The same slots with other shares (``None``: uniform)."""
        return Placement(self._phy2log, self.num_experts, self.num_ranks, slot_share)

    def _layer_indices(self, layers: Sequence[int] | np.ndarray) -> np.ndarray:
        """``layers`` (indices, or a ``[L] bool`` mask) as ``int64`` indices, checked."""
        arr = np.asarray(layers)
        L = self.num_layers
        if arr.dtype == np.bool_:
            if arr.shape != (L,):
                raise ValueError(f"a layer mask must be [{L}] bool, got bool {arr.shape}")
            return np.flatnonzero(arr)
        if arr.ndim != 1 or (arr.size and not np.issubdtype(arr.dtype, np.integer)):
            raise ValueError(
                f"layers must be a 1-D sequence of layer indices or a [{L}] bool mask, got "
                f"{arr.dtype} {arr.shape}"
            )
        idx = arr.astype(np.int64)
        if idx.size and (idx.min() < 0 or idx.max() >= L):
            raise ValueError(f"layer indices must be in [0, {L}), got {idx.tolist()}")
        return idx

    def select_layers(self, layers: Sequence[int] | np.ndarray) -> Placement:
        """A placement of only the given layers (indices, in their order, or a ``[L] bool``
        mask)."""
        idx = self._layer_indices(layers)
        share = None if self._uniform else self._slot_share[idx]
        return Placement(
            self._phy2log[idx], self.num_experts, self.num_ranks, share, validate=False
        )

    def replace_layers(self, layers: Sequence[int] | np.ndarray, other: Placement) -> Placement:
        """This placement with ``layers`` (indices or a ``[L] bool`` mask) taken from ``other``
        (same shape)."""
        self._check_same_shape(other, "other")
        idx = self._layer_indices(layers)
        p2l = self._phy2log.copy()
        share = self._slot_share.copy()
        p2l[idx] = other._phy2log[idx]
        share[idx] = other._slot_share[idx]
        # Every row comes from a checked placement with its shares derived: nothing to redo
        # (a runtime commits layer by layer, and recounting all layers cost more than the copy).
        out = object.__new__(Placement)
        p2l.setflags(write=False)
        share.setflags(write=False)
        out._phy2log, out._slot_share = p2l, share
        out._uniform = self._uniform and other._uniform
        out.num_experts, out.num_ranks = self.num_experts, self.num_ranks
        return out

    @classmethod
    def stack(cls, layers: Sequence[Placement]) -> Placement:
        """Concatenate single- or multi-layer placements of one shape along the layer axis."""
        if not layers:
            raise ValueError("stack needs at least one placement")
        for i, item in enumerate(layers):
            if not isinstance(item, Placement):
                raise TypeError(f"layers[{i}] must be a Placement, got {type(item).__name__}")
        first = layers[0]
        for other in layers[1:]:
            if (other.num_slots, other.num_ranks, other.num_experts) != (
                first.num_slots,
                first.num_ranks,
                first.num_experts,
            ):
                raise ValueError(f"cannot stack {other.describe()} onto {first.describe()}")
        uniform = all(p._uniform for p in layers)
        p2l = np.concatenate([p._phy2log for p in layers])
        share = None if uniform else np.concatenate([p._slot_share for p in layers])
        return cls(p2l, first.num_experts, first.num_ranks, share, validate=False)


def slot_tables(
    previous: np.ndarray, new: np.ndarray, num_ranks: int, ndim: int
) -> tuple[np.ndarray, np.ndarray]:
    """``(previous, new)``: two slot tables of expert ids (``[P]`` with ``ndim`` 1, ``[L, P]``
    with 2) as C-contiguous int64 arrays, checked to be of one shape whose ``P`` slots split
    evenly over ``num_ranks`` ranks; else a ``ValueError`` (``TypeError`` for ids that are not
    integers) naming what is wrong."""
    shape = "[P]" if ndim == 1 else "[L, P]"
    out = []
    for name, table in (("previous", previous), ("new", new)):
        arr = np.asarray(table)
        if arr.ndim != ndim:
            raise ValueError(f"{name} must be a {shape} slot table, got shape {arr.shape}")
        if arr.dtype.kind not in "iu":
            raise TypeError(f"{name} must hold integer expert ids, got dtype {arr.dtype}")
        out.append(np.ascontiguousarray(arr, dtype=np.int64))
    if out[0].shape != out[1].shape:
        raise ValueError(
            f"previous and new slot tables differ in shape: {out[0].shape} against {out[1].shape}"
        )
    P = out[0].shape[-1]
    check_divisor("num_ranks", num_ranks, P, f"{P} slots")
    return out[0], out[1]


def even_shares(phy2log: np.ndarray, num_experts: int) -> np.ndarray:
    """``[L, P] float64``: each slot's share of its expert's tokens when every expert's tokens
    split evenly over its replicas (``phy2log [L, P]``; ids outside ``[0, E)`` get share 1,
    left to :meth:`Placement.validate`)."""
    counts = _logcnt(phy2log, num_experts).astype(np.int64)
    ids = np.clip(phy2log, 0, max(num_experts - 1, 0)).astype(np.int64)
    return 1.0 / np.maximum(np.take_along_axis(counts, ids, axis=1), 1)


def _logcnt(phy2log: np.ndarray, num_experts: int) -> np.ndarray:
    """``[L, E] int32`` replica counts; ids outside ``[0, E)`` are left to :meth:`validate`."""
    L = phy2log.shape[0]
    ok = (phy2log >= 0) & (phy2log < num_experts)
    flat = (phy2log + (np.arange(L) * num_experts)[:, None])[ok]
    return np.bincount(flat, minlength=L * num_experts).reshape(L, num_experts).astype(np.int32)
