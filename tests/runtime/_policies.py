"""Policies for the runtime tests, registered under ``rt_test_*`` names.

``rt_test_shift`` moves every layer's slots one position along the physical ids (trying further
shifts until the placement is valid; when that only relabels the ranks, which alignment would
undo, two experts also swap between two ranks), so every plan migrates experts,
and alternates uniform and weighted replica shares (replica ``i`` of ``c`` gets
``(i + 1) / (1 + ... + c)``), so the share tables are migrated too; ``rt_test_raise`` always
raises. Both are deterministic, as the registry requires.
"""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np

from eplb_rt.algorithms import policy_names, register
from eplb_rt.placement import Placement


@dataclasses.dataclass(frozen=True)
class NoOptions:
    pass


def _shift(layer, topo, opts):
    num_experts = layer.load.shape[0]
    base = layer.previous
    if base is None:
        base = np.arange(topo.num_slots) % num_experts
    ranks = sorted(sorted(r) for r in base.reshape(topo.num_ranks, -1).tolist())
    for shift in range(1, topo.num_slots):
        row = np.roll(base, shift)
        try:
            Placement(row[None], num_experts, topo.num_ranks)
        except ValueError:
            continue
        if sorted(sorted(r) for r in row.reshape(topo.num_ranks, -1).tolist()) == ranks:
            row = _swap_across(row, topo.num_slots_per_rank, ranks)  # else alignment undoes it
        if layer.previous is None or layer.previous_share is not None:
            return row
        return row, _weighted_shares(row[None])[0]
    raise ValueError("no valid shift")


def _swap_across(row: np.ndarray, slots: int, ranks: list) -> np.ndarray:
    """``row`` with the first swap of two experts between two ranks whose rank sets are not
    ``ranks`` relabelled (``row`` itself when there is none)."""
    grid = row.reshape(-1, slots)
    for a, b in itertools.combinations(range(grid.shape[0]), 2):
        for x, y in itertools.product(set(grid[a]) - set(grid[b]), set(grid[b]) - set(grid[a])):
            out = grid.copy()
            out[a][out[a] == x], out[b][out[b] == y] = y, x
            if sorted(sorted(r) for r in out.tolist()) != ranks:
                return out.reshape(-1)
    return row


def _weighted_shares(phy2log: np.ndarray) -> np.ndarray:
    share = np.zeros(phy2log.shape)
    for layer, row in enumerate(phy2log):
        for expert in np.unique(row):
            slots = np.flatnonzero(row == expert)
            weights = np.arange(1, slots.size + 1, dtype=np.float64)
            share[layer, slots] = weights / weights.sum()
    return share


def _raise(layer, topo, opts):
    raise RuntimeError("rt_test_raise always fails")


def _exit(layer, topo, opts):
    raise SystemExit(3)  # a policy that calls sys.exit, or a library that does


if "rt_test_shift" not in policy_names():
    register("rt_test_shift", NoOptions, "test: roll slots by one", warm_up_options=())(_shift)
    register("rt_test_raise", NoOptions, "test: always raises", warm_up_options=())(_raise)
    register("rt_test_exit", NoOptions, "test: raises SystemExit", warm_up_options=())(_exit)
