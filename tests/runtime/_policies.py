"""Policies for the runtime tests, registered under ``rt_test_*`` names.

``rt_test_shift`` moves every layer's slots one position along the physical ids (trying further
shifts until the placement is valid), so every plan migrates experts within and across ranks,
and alternates uniform and weighted replica shares (replica ``i`` of ``c`` gets
``(i + 1) / (1 + ... + c)``), so the share tables are migrated too; ``rt_test_raise`` always
raises. Both are deterministic, as the registry requires.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from eplb_rt.algorithms import policy_names, register
from eplb_rt.placement import Placement


@dataclasses.dataclass(frozen=True)
class NoOptions:
    pass


def _shift(load, previous, topo, opts):
    base = (
        previous.phy2log
        if previous is not None
        else np.tile(np.arange(topo.num_slots) % load.shape[2], (load.shape[1], 1))
    )
    for shift in range(1, topo.num_slots):
        try:
            placement = Placement(np.roll(base, shift, axis=1), load.shape[2], topo.num_ranks)
        except ValueError:
            continue
        if previous is None or not previous.is_uniform:
            return placement
        return placement.with_shares(_weighted_shares(placement.phy2log))
    raise ValueError("no valid shift")


def _weighted_shares(phy2log: np.ndarray) -> np.ndarray:
    share = np.zeros(phy2log.shape)
    for layer, row in enumerate(phy2log):
        for expert in np.unique(row):
            slots = np.flatnonzero(row == expert)
            weights = np.arange(1, slots.size + 1, dtype=np.float64)
            share[layer, slots] = weights / weights.sum()
    return share


def _raise(load, previous, topo, opts):
    raise RuntimeError("rt_test_raise always fails")


if "rt_test_shift" not in policy_names():
    register("rt_test_shift", NoOptions, "test: roll slots by one")(_shift)
    register("rt_test_raise", NoOptions, "test: always raises")(_raise)
