"""What several benchmark scripts share: a replay through the simulator as ``eplb-rt simulate``
runs it, a mean with its standard error, an argparse type for counts, and a shape's name."""

from __future__ import annotations

import argparse
import math

from eplb_rt import Topology
from eplb_rt.sim import report
from eplb_rt.sim import simulate as sim


def replay(
    workload: sim.Workload,
    topo: Topology,
    policies: list[str],
    interval: int,
    episodes: int | None = None,
) -> dict[str, tuple[float, float, float]]:
    """Per policy ``(throughput vs no EPLB, mean PAR, slots moved per cycle / slots)`` of
    ``workload`` replayed every ``interval`` steps (plans see the runtime's window, or the last
    ``episodes`` intervals), at the default cost model, from the placement before any heat.

    Raises ValueError where a policy's throughput is not a number (no scored window had load):
    a mean over replays would hide it."""
    spec = sim.SimulationSpec(
        topo, (*policies, sim.NO_REBALANCE), interval=interval, episodes=episodes
    )
    result = sim.simulate(workload, spec)
    slots = topo.num_slots * workload.load.shape[1]
    out = {}
    for name in policies:
        summary = sim.summarize(result.cycles[name], expert_bytes=1)
        throughput = summary["throughput_vs_none"]
        if throughput is None or not math.isfinite(throughput):
            raise ValueError(f"{name}'s replay has no throughput: no scored window had load")
        out[name] = (throughput, summary["par_mean"], summary["moves_per_cycle"] / slots)
    return out


def shape_name(topo: Topology) -> str:
    """``ranks x slots per rank``, as the tables write a shape (``8x9``)."""
    return f"{topo.num_ranks}x{topo.num_slots_per_rank}"


def mean_se(values) -> tuple[float, float]:
    """The mean of ``values`` and its standard error, as the simulator's reports take them (NaN
    for fewer than two values)."""
    mean, se = report.mean_se([float(v) for v in values])
    return mean, math.nan if se is None else se


def at_least(low: int):
    """An argparse type: an integer ``>= low``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {value}")
        return value

    return parse
