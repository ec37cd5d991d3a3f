"""Reports of a simulation: the JSON document and the markdown table ``eplb-rt simulate`` prints."""

from __future__ import annotations

import itertools
import math

from eplb_rt.sim.simulate import NO_REBALANCE, SimulationResult, cycle_record, summarize

GIB = 1024**3


def to_document(result: SimulationResult) -> dict:
    """Everything the run measured as plain JSON values: setup, per-policy summary, per cycle.

    A number that is not finite (a throughput of inf / inf where MoE seconds overflow at an
    extreme ``--token-us``) is ``None``, so the document is strict JSON."""
    spec, workload = result.spec, result.workload
    T, L, E = workload.load.shape
    # The parts as played: runs of one label (a label played twice is two parts, unless twice in
    # a row: the CLI numbers a file given more than once, NAME#N, so that each is its own part).
    parts = [(label, len(list(run))) for label, run in itertools.groupby(workload.labels)]
    doc = {
        "setup": {
            "steps": T,
            "layers": L,
            "experts": E,
            "workloads": [{"label": label, "steps": steps} for label, steps in parts],
            "ranks": spec.topology.num_ranks,
            "slots_per_rank": spec.topology.num_slots_per_rank,
            "nodes": spec.topology.num_nodes,
            "groups": spec.topology.num_groups,
            "interval": spec.interval,
            "episodes": spec.episodes,
            "window": spec.window,
            "expert_bytes": spec.cost.expert_bytes,
            "bandwidth": spec.cost.bandwidth,
            "token_seconds": spec.cost.token_seconds,
            "options": spec.options,
            "threads": spec.threads,
        },
        "policies": {
            name: {
                "summary": summarize(cycles, spec.cost.expert_bytes),
                "cycles": [cycle_record(c, spec.cost.expert_bytes) for c in cycles],
            }
            for name, cycles in result.cycles.items()
        },
    }
    return finite_json(doc)


def over_orders(docs: list[dict], played: list[list[str]], first: str | None) -> dict:
    """One replay played in several orders of its workloads, summed up: ``docs`` are the orders'
    :func:`to_document`, the given order first; ``played`` their workloads' labels in order;
    ``first`` the policy the others are paired with (``None``: no pairs).

    Per policy, over the orders: the mean and standard error of its throughput against no EPLB,
    its PAR and its moves per cycle; for the others than ``first``, ``first``'s throughput less
    theirs, paired over the same orders; and those figures of every order (``per_order``).
    ``None`` where a figure is missing (a policy with no scored window)."""

    def figures(name: str, key: str) -> list:
        return [doc["policies"][name]["summary"][key] for doc in docs]

    policies = {}
    for name in docs[0]["policies"]:
        entry, each = {}, {}
        for key in ("throughput_vs_none", "par_mean", "moves_per_cycle"):
            each[key] = figures(name, key)
            entry[key], entry[f"{key}_se"] = mean_se(each[key])
        if first is not None and name != first:
            ahead = figures(first, "throughput_vs_none")
            gaps = [
                None if a is None or b is None else a - b
                for a, b in zip(ahead, each["throughput_vs_none"], strict=True)
            ]
            gap, gap_se = mean_se(gaps)
            entry["first_throughput_less_this"] = gap
            entry["first_throughput_less_this_se"] = gap_se
        entry["per_order"] = each
        policies[name] = entry
    return finite_json({"played": played, "first": first, "policies": policies})


def mean_se(values: list) -> tuple[float | None, float | None]:
    """The mean of ``values`` and its standard error, ``None`` where any value is missing (and
    the error where there are fewer than two)."""
    if not values or any(v is None for v in values):
        return None, None
    mean = math.fsum(values) / len(values)
    if len(values) < 2:
        return mean, None
    variance = math.fsum((v - mean) ** 2 for v in values) / (len(values) - 1)
    return mean, math.sqrt(variance / len(values))


def finite_json(value):
    """``value`` (nested dicts, lists and tuples of plain values) with every float that is NaN or
    infinite replaced by ``None``: JSON has no such numbers, and ``json.dump`` would write
    ``NaN`` / ``Infinity`` tokens that strict readers reject."""
    if isinstance(value, float):  # numpy's float64 too
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: finite_json(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_json(item) for item in value]
    return value


def counted(n: int, noun: str) -> str:
    """``1 step``, ``2 steps``."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def markdown(doc: dict) -> str:
    """The setup in one sentence and one table row per policy (from :func:`to_document`)."""
    setup = doc["setup"]
    parts = ", ".join(f"{w['label']} ({counted(w['steps'], 'step')})" for w in setup["workloads"])
    first = next(iter(doc["policies"].values()))["summary"]
    scored = setup["steps"] - setup["interval"]
    nodes, groups = setup.get("nodes", 1), setup.get("groups", 1)
    grouping = f" ({counted(nodes, 'node')}, {counted(groups, 'expert group')})"
    lines = [
        f"Replayed {counted(setup['steps'], 'step')} of {setup['layers']} layers x "
        f"{setup['experts']} experts [{parts}] on {setup['ranks']} ranks x "
        f"{setup['slots_per_rank']} slots{grouping if nodes > 1 or groups > 1 else ''}; "
        f"re-planned every {counted(setup['interval'], 'step')} "
        f"from the last {counted(setup['window'], 'step')} (all those before, where fewer), "
        f"scored on the next {setup['interval']} (out of sample; the last cycle on what "
        f"remains): {counted(first['cycles'], 'cycle')} scoring {counted(scored, 'step')}. "
        f"PAR = max / mean rank "
        f"load per layer (1.0 is perfect); lower bound on PAR, mean: "
        f"{_num(first.get('bound_par_mean'), 3)}. Move cost {setup['expert_bytes']:,} bytes per "
        f"expert at {setup['bandwidth'] / 1e9:g} GB/s; a token-slot takes "
        f"{setup['token_seconds'] * 1e6:g} us, plans on "
        f"{counted(setup.get('threads', 1), 'thread')}. PAR in sample: the plan on the steps it "
        "was planned from. Throughput: MoE time without EPLB / (MoE time + migration not "
        "hidden), step time "
        "taken as proportional to the largest rank load.",
        "",
        "| policy | PAR mean | PAR p50 | PAR p99 | worst layer: PAR | gap to bound | "
        "moves / cycle | GiB / cycle | migration ms / cycle | plan ms mean / max | "
        "PAR in sample | throughput vs no EPLB |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, entry in doc["policies"].items():
        s = entry["summary"]
        label = f"{name} (no EPLB)" if name == NO_REBALANCE else name
        worst = "-"
        if s.get("worst_layer") is not None:
            worst = f"{s['worst_layer']}: {_num(s['worst_layer_par'], 3)}"
        gap = "-" if s.get("bound_gap") is None else f"{100 * s['bound_gap']:.1f} %"
        lines.append(
            f"| {label} | {_num(s.get('par_mean'), 3)} | {_num(s.get('par_p50'), 3)} | "
            f"{_num(s.get('par_p99'), 3)} | {worst} | {gap} | {_num(s['moves_per_cycle'], 1)} | "
            f"{_num(s['bytes_per_cycle'], 2, 1 / GIB)} | "
            f"{_num(s['migration_s_per_cycle'], 1, 1e3)} | "
            f"{_num(s['plan_ms_mean'], 1)} / {_num(s['plan_ms_max'], 1)} | "
            f"{_num(s.get('par_in_sample_mean'), 3)} | {_num(s['throughput_vs_none'], 3)} |"
        )
    if "orders" in doc:
        lines += ["", *_orders_table(doc["orders"])]
    return "\n".join(lines)


def _orders_table(orders: dict) -> list[str]:
    """The lines of :func:`markdown`'s table over the orders (from :func:`over_orders`)."""
    first = orders["first"]
    paired = f"; the last column: {first}'s throughput less each policy's, order by order"
    lines = [
        f"Over {counted(len(orders['played']), 'order')} of the workloads (the table above: the "
        "order given; then seeded random orders, or every distinct order where there are no more "
        "than asked): the mean over the orders ± its standard error"
        + (paired if first else "")
        + ".",
        "",
        "| policy | PAR mean | moves / cycle | throughput vs no EPLB |"
        + (f" {first}'s throughput less this |" if first else ""),
        "|---|---:|---:|---:|" + ("---:|" if first else ""),
    ]
    for name, entry in orders["policies"].items():
        label = f"{name} (no EPLB)" if name == NO_REBALANCE else name
        row = (
            f"| {label} | {_with_se(entry['par_mean'], entry['par_mean_se'], 3)} | "
            f"{_with_se(entry['moves_per_cycle'], entry['moves_per_cycle_se'], 1)} | "
            f"{_with_se(entry['throughput_vs_none'], entry['throughput_vs_none_se'], 3)} |"
        )
        if first:
            gap = "-"
            if "first_throughput_less_this" in entry:
                gap = _with_se(
                    entry["first_throughput_less_this"],
                    entry["first_throughput_less_this_se"],
                    4,
                    sign=True,
                )
            row += f" {gap} |"
        lines.append(row)
    return lines


def _with_se(value: float | None, se: float | None, digits: int, sign: bool = False) -> str:
    """``value ± se``; ``-`` where there is no value."""
    if value is None or math.isnan(value):
        return "-"
    text = f"{value:+.{digits}f}" if sign else f"{value:.{digits}f}"
    return text if se is None else f"{text} ± {se:.{digits}f}"


def _num(value: float | None, digits: int, scale: float = 1.0) -> str:
    """``value x scale`` with ``digits`` decimals; ``-`` where there is none (``None``, NaN)."""
    return "-" if value is None or math.isnan(value) else f"{value * scale:.{digits}f}"
