"""The migration planner: which slot receives which expert from which source slot, per layer.

Pure numpy and deterministic, so every rank computes the same plan from the same two placements
without talking to the others. The new placement comes aligned to the old one
(:func:`eplb_rt.algorithms.align.align_placement`); :func:`plan_migration` gives every slot whose
expert changed a source slot holding that expert in the old placement: the receiving rank itself
when it already holds the expert (a local copy), else a rank on the same node, else any rank.
A rank sends and receives at once, so a layer's transfer takes as long as the most experts one
rank receives or sends. Each remote move takes the rank that sends least so far (then the
lowest slot), the moves taken in two orders: those that fewest ranks can give first (an expert
only one rank holds is sent from there whatever the order, so a replica is then not sent from
the rank that must also fan that one out), and in slot order. Of the two, the one whose busiest
sender sends least is kept, the first on a tie: on random layers the first sends less about one
time in ten, the second one time in three hundred.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from eplb_rt.placement import Placement
from eplb_rt.scalars import check_divisor


@dataclasses.dataclass(frozen=True)
class LayerMigration:
    """The weight moves of one layer; entry ``i`` copies the old contents of global slot
    ``src[i]`` (expert ``expert[i]``) into global slot ``dst[i]``.

    Attributes:
        layer: layer index.
        dst: ``[M] int64`` receiving slots, ascending.
        src: ``[M] int64`` source slots in the old placement.
        expert: ``[M] int64`` logical expert moved.
        slots_per_rank: ``S``, to turn global slots into ``(rank, local slot)``.
    """

    layer: int
    dst: np.ndarray
    src: np.ndarray
    expert: np.ndarray
    slots_per_rank: int

    @property
    def num_moves(self) -> int:
        return int(self.dst.size)

    @property
    def num_remote(self) -> int:
        """Moves whose source is on another rank (these cross the network)."""
        S = self.slots_per_rank
        return int((self.dst // S != self.src // S).sum())

    def received_by(self, rank: int) -> np.ndarray:
        """Indices of the entries ``rank`` receives (ascending destination slot)."""
        return np.flatnonzero(self.dst // self.slots_per_rank == rank)

    def sent_by(self, rank: int) -> np.ndarray:
        """Indices of the entries ``rank`` sends to another rank."""
        S = self.slots_per_rank
        return np.flatnonzero((self.src // S == rank) & (self.dst // S != rank))


def plan_migration(previous: Placement, new: Placement, num_nodes: int = 1) -> list[LayerMigration]:
    """Moves per layer from ``previous`` to ``new`` (aligned first, see
    :func:`eplb_rt.algorithms.align.align_placement`). Layers whose slots all keep their expert
    have no entry."""
    shape = ("num_layers", "num_experts", "num_ranks", "num_slots_per_rank")
    if any(getattr(new, name) != getattr(previous, name) for name in shape):
        raise ValueError(f"cannot migrate {previous.describe()} to {new.describe()}")
    D, S = new.num_ranks, new.num_slots_per_rank
    check_divisor("num_nodes", num_nodes, D, f"num_ranks ({D})")
    ranks_per_node = D // num_nodes
    plans = []
    for layer in np.flatnonzero((previous.phy2log != new.phy2log).any(axis=1)):
        old_row, new_row = previous.phy2log[layer], new.phy2log[layer]
        dst = np.flatnonzero(old_row != new_row)
        src = np.empty_like(dst)
        remote = []  # (ranks to choose from, move index, candidate slots)
        for i, slot in enumerate(dst):
            candidates = np.flatnonzero(old_row == new_row[slot])
            cand_rank = candidates // S
            me = slot // S
            local = candidates[cand_rank == me]
            if local.size:
                src[i] = local[0]
                continue
            same_node = cand_rank // ranks_per_node == me // ranks_per_node
            if same_node.any():
                candidates = candidates[same_node]
            remote.append((np.unique(candidates // S).size, i, candidates))
        orders = (sorted(remote, key=lambda move: move[:2]), remote)
        chosen = min((_least_sending(order, D, S) for order in orders), key=lambda c: c[0].max())
        for (_, i, _), source in zip(remote, chosen[1], strict=True):
            src[i] = source
        plans.append(
            LayerMigration(
                int(layer),
                dst.astype(np.int64),
                src.astype(np.int64),
                new_row[dst].astype(np.int64),
                S,
            )
        )
    return plans


def _least_sending(moves: list, num_ranks: int, slots_per_rank: int) -> tuple[np.ndarray, list]:
    """``(sent [D], sources)``: each of ``moves`` (``(choices, index, candidate slots)``, taken
    in this order) sourced from the candidate whose rank sends least so far, then the lowest
    slot; ``sources`` in the moves' index order."""
    sent = np.zeros(num_ranks, dtype=np.int64)
    source = {}
    for _, i, candidates in moves:
        ranks = candidates // slots_per_rank
        best = np.lexsort((candidates, sent[ranks]))[0]
        source[i] = int(candidates[best])
        sent[ranks[best]] += 1
    return sent, [source[i] for i in sorted(source)]
