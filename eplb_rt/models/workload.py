"""The demo's default workload: routing skew from the shipped ESFT trace, drifting over time.

The trace holds per-request expert counts ``[requests, 26, 64]`` of four tasks. Played one task
after another, a step's routing preference for layer ``l`` is the expert distribution of a
sliding window of requests of the current task; at a task change the hot experts move, so a
placement planned on the past goes stale and the runtime must rebalance.
"""

from __future__ import annotations

import numpy as np

from eplb_rt.data import ESFT_DIR, ESFT_EXPERTS, ESFT_LAYERS, ESFT_TASKS
from eplb_rt.scalars import check_count


def load_esft_counts() -> dict[str, np.ndarray]:
    """``{task: [requests, 26, 64] int32}`` token counts per request, layer and expert."""
    out = {}
    for task in ESFT_TASKS:
        with np.load(ESFT_DIR / f"counts_{task}.npz") as z:
            out[task] = np.asarray(z["counts"])
    return out


def drifting_profile(num_steps: int, num_layers: int, window: int = 8) -> np.ndarray:
    """``[num_steps, num_layers, 64] float64`` expert distributions (rows sum to 1).

    The four tasks take ``num_steps / 4`` steps each, in order; within a task each step advances
    one request and averages a window of ``window`` requests (cyclic). ``num_layers`` layers are
    taken evenly from the trace's 26.
    """
    if check_count("num_layers", num_layers) > ESFT_LAYERS:
        raise ValueError(f"num_layers must be in [1, {ESFT_LAYERS}], got {num_layers}")
    check_count("num_steps", num_steps)
    layers = np.linspace(0, ESFT_LAYERS - 1, num_layers).round().astype(np.int64)
    counts = load_esft_counts()
    out = np.empty((num_steps, num_layers, ESFT_EXPERTS))
    for step in range(num_steps):
        task = ESFT_TASKS[min(step * len(ESFT_TASKS) // num_steps, len(ESFT_TASKS) - 1)]
        c = counts[task]
        start = step * len(ESFT_TASKS) * 7 % c.shape[0]  # 7: hop between requests per step
        rows = (start + np.arange(window)) % c.shape[0]
        agg = c[rows][:, layers].sum(axis=0).astype(np.float64) + 0.5  # never exactly 0
        out[step] = agg / agg.sum(axis=-1, keepdims=True)
    return out


def routing_bias(profile: np.ndarray) -> np.ndarray:
    """Router logit bias ``log(p)`` ``[..., E] float32``: added to the router's own logits
    (roughly Gumbel-like noise across tokens), top-k picks follow the profile's skew."""
    return np.log(profile).astype(np.float32)
