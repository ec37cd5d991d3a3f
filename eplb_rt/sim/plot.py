"""The PNG of ``eplb-rt simulate --plot``: PAR over time per policy and moves per policy."""

from __future__ import annotations

import os

import numpy as np

from eplb_rt.sim.report import GIB
from eplb_rt.sim.simulate import NO_REBALANCE


def plot(doc: dict, path: str | os.PathLike) -> None:
    """Write a two-panel PNG from a :func:`eplb_rt.sim.report.to_document` document.

    Top: mean PAR over layers of each scored window against its first step, one line per policy,
    the lower bound dashed, workload boundaries as vertical lines. Bottom: moves per cycle (mean
    bar, max whisker) per policy, annotated with the bytes they cost.
    """
    import matplotlib

    matplotlib.use("Agg")  # files only, never a display
    import matplotlib.pyplot as plt

    setup, policies = doc["setup"], doc["policies"]
    fig, (top, bottom) = plt.subplots(
        2, 1, figsize=(11, 8), gridspec_kw={"height_ratios": [3, 2]}, constrained_layout=True
    )
    for name, entry in policies.items():
        steps = [c["start"] for c in entry["cycles"]]
        par = [_value(c["par_mean"]) for c in entry["cycles"]]
        label = f"{name} (no EPLB)" if name == NO_REBALANCE else name
        top.plot(steps, par, marker="o", markersize=3, linewidth=1.5, label=label)
    # Every policy is scored on the same windows, so one bound line serves all.
    cycles = next(iter(policies.values()))["cycles"]
    top.plot(
        [c["start"] for c in cycles],
        [_value(c["bound_par_mean"]) for c in cycles],
        linestyle="--",
        color="black",
        linewidth=1,
        label="lower bound",
    )
    edge = 0
    for workload in setup["workloads"][:-1]:
        edge += workload["steps"]
        top.axvline(edge, color="grey", linewidth=0.8, linestyle=":")
    if len(setup["workloads"]) > 1:
        edge = 0
        for i, workload in enumerate(setup["workloads"]):
            # Alternate heights so the names of short workloads do not overprint each other.
            name = top.annotate(
                workload["label"],
                (edge, 1.0),
                xycoords=("data", "axes fraction"),
                xytext=(3, -12 - 11 * (i % 2)),
                textcoords="offset points",
                fontsize=8,
                color="grey",
            )
            name.set_in_layout(False)  # inside the axes: the layout need not make room for it
            edge += workload["steps"]
    top.set_xlim(0, setup["steps"])  # the whole trace, even where no window has a PAR
    top.set_xlabel(f"step (first step of each scored window of {setup['interval']} steps)")
    top.set_ylabel("PAR, mean over layers (max / mean rank load)")
    top.set_title(
        f"{setup['layers']} layers x {setup['experts']} experts on {setup['ranks']} ranks x "
        f"{setup['slots_per_rank']} slots: re-plan every {setup['interval']} steps, "
        "scored out of sample"
    )
    top.grid(True, alpha=0.3)
    top.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)

    names = list(policies)
    means = [policies[n]["summary"]["moves_per_cycle"] for n in names]
    peaks = [policies[n]["summary"]["moves_max"] for n in names]
    x = np.arange(len(names))
    bars = bottom.bar(x, means, color=[f"C{i}" for i in range(len(names))])
    bottom.errorbar(
        x,
        means,
        # One [2, n] array: a list of arrays makes matplotlib < 3.11 convert a size-1 array to a
        # scalar (a NumPy deprecation) when there is one policy.
        yerr=np.vstack([np.zeros(len(names)), np.subtract(peaks, means)]),
        fmt="none",
        ecolor="black",
        capsize=4,
        linewidth=1,
    )
    for bar, mean, peak, name in zip(bars, means, peaks, names, strict=True):
        gib = mean * setup["expert_bytes"] / GIB
        s = policies[name]["summary"]
        gain = s["throughput_vs_none"]
        # Short lines: side by side, wider labels of neighbouring bars ran into each other.
        bottom.annotate(
            f"{mean:.1f}\n{gib:.2f} GiB\n{_value(s['migration_s_per_cycle']) * 1e3:.1f} ms"
            + ("" if gain is None else f"\nx{gain:.3f}"),
            (bar.get_x() + bar.get_width() / 2, peak),
            xytext=(0, 3),
            textcoords="offset points",
            ha="center",
            fontsize=7,
        )
    bottom.set_xticks(x, [f"{n} (no EPLB)" if n == NO_REBALANCE else n for n in names])
    bottom.set_ylim(0, 1.6 * max(*peaks, 1))  # room for the labels above the whiskers
    bottom.set_ylabel("experts moved per cycle (slots)")
    # Two lines: in one, the title is wider than the figure and clipped at both sides.
    bottom.set_title(
        "moves per re-plan, all layers: bar = mean, whisker = max; x: MoE throughput vs no EPLB\n"
        f"GiB at {setup['expert_bytes'] / 2**20:.1f} MiB per expert, migration ms at "
        f"{setup['bandwidth'] / 1e9:g} GB/s"
    )
    bottom.grid(True, axis="y", alpha=0.3)
    fig.savefig(os.fspath(path), dpi=120)
    plt.close(fig)


def _value(x: float | None) -> float:
    return np.nan if x is None else x
