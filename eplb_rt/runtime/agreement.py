"""What the ranks of a group agree on: the least and the greatest of each of a few integers, and
the settings every rank of a runtime must share."""

from __future__ import annotations

import dataclasses
import hashlib

import numpy as np
import torch
import torch.distributed as dist

RANK_LOCAL_FIELDS = frozenset(
    {
        "initial_placement",
        "export_dir",
        "transfer_timeout_s",
        "warm_up",
        "plan_in_subprocess",
        "plan_threads",
    }
)
"""EplbConfig fields a rank may set alone: where it reads and writes files, how long it waits
for a transfer, how and where it plans. The ranks must agree on every other field, and on the
placement they start from (its contents, not the path of its file)."""

STARTING_PLACEMENT = "initial_placement (its contents)"
"""The name :func:`shared_settings` gives the starting placement's digest."""

_SIZES = frozenset({"num_layers", "num_experts", "num_redundant", "slots_per_rank"})
"""Settings that size the placement: where they differ, the placements differ too."""


def min_max(values, group) -> tuple[np.ndarray, np.ndarray]:
    """``(low [N], high [N]) int64``: the element-wise least and greatest of ``values [N]``
    (integers) over the ranks of ``group`` (``None``: this rank alone), in one all-reduce."""
    mine = np.array(values, dtype=np.int64).reshape(-1)
    if group is None:
        return mine, mine.copy()
    both = torch.from_numpy(np.concatenate([-mine, mine]))
    dist.all_reduce(both, op=dist.ReduceOp.MAX, group=group)
    n = mine.size
    return -both[:n].numpy(), both[n:].numpy()


def setting_digest(value: object) -> int:
    """A 56-bit digest of a setting (``>= 0``, so that :func:`min_max` may negate it in int64),
    equal on every rank for equal values."""
    return int.from_bytes(hashlib.blake2b(repr(value).encode(), digest_size=7).digest(), "little")


def shared_settings(config, num_layers: int, num_experts: int, placement: int) -> dict:
    """The settings every rank of a runtime must share, by name: its sizes, the digest of its
    starting ``placement`` (0 where this rank has none) and every field of ``config`` (an
    ``EplbConfig``) but :data:`RANK_LOCAL_FIELDS`, the policy's options as the policy reads them
    (0.5 and ``np.float64(0.5)`` are one setting)."""
    shared = {"num_layers": num_layers, "num_experts": num_experts}
    shared[STARTING_PLACEMENT] = placement
    for field in dataclasses.fields(config):
        if field.name not in RANK_LOCAL_FIELDS:
            shared[field.name] = getattr(config, field.name)
    shared["policy_options"] = config.options
    return shared


def settings_apart(low: dict, high: dict, everywhere: bool) -> list[str]:
    """The names of the settings whose digests differ between the ranks (``low`` / ``high``:
    their least and greatest, by name). Where some rank has no placement
    (``everywhere`` false) or the sizes differ, the placements differ too: the sizes are the
    news, not the placement."""
    differ = [name for name in low if low[name] != high[name]]
    if not everywhere or _SIZES & set(differ):
        differ = [name for name in differ if name != STARTING_PLACEMENT]
    return differ
