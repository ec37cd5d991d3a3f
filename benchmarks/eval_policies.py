"""Evaluation harness of the balancing policies on the traces the repository ships.

    PYTHONPATH=. python benchmarks/eval_policies.py [--policies a,b,...] [--sections ...]
        [--option equilibrium.unseen=1 ...]  # an option of a policy (repeatable)

Prints markdown tables:

0. the toy case of the issue, with the exact optima (MILP);
1. in sample: plan and score on the same load (DeepSeek-V3 at 32x9 and 64x5, ESFT at 8x9,
   gpt-oss-20b at 8x5, OLMoE (layers 0, 7, 15) at 8x9); mean PAR over layers and workloads;
2. out of sample, static: DeepSeek-V3, plan on three prefill workloads (as episodes), score on
   the fourth (leave-one-out, mean over the four); ESFT, plan on the first half of each task's
   requests (as episodes), score request by request on the second half (mean over requests);
   sampled: DeepSeek-V3 leave-one-out on episodes drawn from the workloads (multinomial, four
   draws of 200,000 tokens a layer each): plan on the other three's draws, score on fresh draws
   of the fourth and on its load, so planning on noisy counts is judged out of sample;
3. adapting: DeepSeek-V3 32x9, previous = plan on the other three workloads, re-plan on the
   fourth with ``previous``, by the policy alone and through the planning pipeline at its
   default prices; PAR on it and moved fraction (mean over the four); ``shift`` (not in the
   default list): the same after a phase change, each expert's load on the new workload times
   a lognormal factor (a proxy for decode after prefill, which the repository does not ship),
   and after a share of each layer's experts' loads reshuffled among them (new hot experts);
   ``window`` (not in the default list): the same re-plans from a short window of sampled
   steps of the new workload (mostly sampling noise), PAR on its whole load;
4. the frontier, PAR against moved slots for each ``move_cost``: DeepSeek-V3 32x9 (previous
   fitted on three workloads, re-plan on the fourth, mean of the four), ESFT 8x9 task
   switches (previous fitted on one task, re-plan on the next) and the DeepSeek-V3 re-plans
   after the ``shift`` section's phase change of sigma 1.5; only the stable API is used, so
   the same command on another checkout (``PYTHONPATH=<checkout>``) prints that code's frontier;
5. re-plan cycles: ESFT requests in windows of 8; plan on window t with the placement of t-1,
   score on window t+1; mean PAR and mean moved fraction per cycle;
6. wall time of all 58 DeepSeek-V3 layers at 64x5 on one core after warm-up, and warm-up time;
7. the move selection against the exact optimum with a move budget (MILP) on small layers;
   ``exact-esft`` (not in the default list: minutes of MILP): the same on ESFT 8x9 layers
   (64 experts), previous fitted on one task, re-planned on the next;
8. shapes: static out of sample on every trace of distinct workloads, leave-one-out with one
   episode per workload (as ``bench_peers.py --sections static``), OLMoE, gpt-oss and ESFT at
   8x9, 16x5, 4x18, 16x6 and 8x12, DeepSeek-V3 at 32x9 and 64x5; mean PAR over layers and folds,
   and each policy's standard error over them (folds' layers differ by far more than cells);
   with ``--draws N`` the mean over N draws of the training loads jittered by ``--jitter`` of
   their sampling noise, and its standard error over the draws;
9. hierarchy: DeepSeek-V3 (8 groups) on 1, 2, 4 and 8 nodes, each policy flat (1 node) and
   with its ``hierarchical`` option on: in sample, static out of sample and adapting.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from benchmarks import selection, traces
from eplb_rt import planning
from eplb_rt.algorithms import bounds, get_policy, metrics, policy_names, warm_up
from eplb_rt.algorithms import plan as plan_policy
from eplb_rt.placement import Placement, Topology

DS = traces.DEEPSEEK_V3_WORKLOADS

OPTIONS: dict[str, dict] = {}
"""``{policy: {key: value}}`` from ``--option``: under every plan of that policy."""


def plan(name: str, load, topology: Topology, previous=None, options=None):
    """:func:`eplb_rt.algorithms.plan` with :data:`OPTIONS` of ``name`` under ``options``."""
    merged = {**OPTIONS.get(name, {}), **(options or {})}
    return plan_policy(name, load, topology, previous=previous, options=merged or None)


def _par(p, load) -> float:
    """Mean over layers (and steps, if ``load`` is [T, L, E]) of PAR, zero-load left out."""
    return float(np.nanmean(metrics.par(p, load)))


def deepseek(workload: str) -> np.ndarray:
    return traces.deepseek_v3(workload, moe_only=True)


def toy(names):
    load = np.array([[600.0, 560, 120, 120, 20, 10, 10, 10]])
    topo = Topology(8, 2)
    print("\n### Toy case [600, 560, 120, 120, 20, 10, 10, 10], 8 ranks x 2 slots\n")
    print("| placement | max rank load |")
    print("|---|---|")
    for n in names:
        print(f"| {n} | {metrics.max_rank_load(plan(n, load, topo), load)[0]:.2f} |")
    if "equilibrium" in names:
        p = plan("equilibrium", load, topo, options={"shares": True})
        print(f"| equilibrium, shares=true | {metrics.max_rank_load(p, load)[0]:.2f} |")
    exact, _ = bounds.exact_min_max(load[0], topo, uniform=True, time_limit=600)
    exact_shares, _ = bounds.exact_min_max(load[0], topo, uniform=False, time_limit=600)
    print(f"| exact optimum, uniform shares (MILP) | {exact:.2f} |")
    print(f"| exact optimum, free shares (MILP) | {exact_shares:.2f} |")


def in_sample(names):
    cases = [(f"DeepSeek-V3 {w}", deepseek(w), Topology(32, 9), Topology(64, 5)) for w in DS]
    rows = {n: [] for n in names}
    for n in names:
        ds32 = np.mean([_par(plan(n, c[1], c[2]), c[1][0]) for c in cases])
        ds64 = np.mean([_par(plan(n, c[1], c[3]), c[1][0]) for c in cases])
        esft = np.mean(
            [
                _par(plan(n, traces.esft(t).sum(0), Topology(8, 9)), traces.esft(t).sum(0))
                for t in traces.ESFT_TASKS
            ]
        )
        subsets = traces.gptoss_subsets()
        gpt = np.mean(
            [_par(plan(n, traces.gptoss(s), Topology(8, 5)), traces.gptoss(s)[0]) for s in subsets]
        )
        olmoe = np.mean(
            [
                _par(plan(n, traces.olmoe(domain=d), Topology(8, 9)), traces.olmoe(domain=d)[0])
                for d in traces.OLMOE_DOMAINS
            ]
        )
        rows[n] = [ds32, ds64, esft, gpt, olmoe]
    print("\n### In sample (mean PAR)\n")
    print("| policy | DeepSeek-V3 32x9 | DeepSeek-V3 64x5 | ESFT 8x9 | gpt-oss 8x5 | OLMoE 8x9 |")
    print("|---|---|---|---|---|---|")
    for n, r in rows.items():
        print(f"| {n} | " + " | ".join(f"{x:.4f}" for x in r) + " |")


def out_of_sample(names):
    loads = [deepseek(w) for w in DS]
    print("\n### Out of sample, static (mean PAR)\n")
    print(
        "| policy | DeepSeek-V3 32x9 leave-one-out | DeepSeek-V3 64x5 leave-one-out "
        "| ESFT 8x9 first half -> second half, per request |"
    )
    print("|---|---|---|---|")
    for n in names:
        res = []
        for topo in (Topology(32, 9), Topology(64, 5)):
            vals = []
            for i in range(len(loads)):
                train = np.concatenate([x for j, x in enumerate(loads) if j != i])
                vals.append(_par(plan(n, train, topo), loads[i][0]))
            res.append(np.mean(vals))
        esft_vals = []
        for t in traces.ESFT_TASKS:
            reqs = traces.esft(t)
            half = reqs.shape[0] // 2
            p = plan(n, reqs[:half], Topology(8, 9))
            esft_vals.append(_par(p, reqs[half:]))
        res.append(np.mean(esft_vals))
        print(f"| {n} | " + " | ".join(f"{x:.4f}" for x in res) + " |")


def sampled(names, draws=4, tokens=200_000):
    """DeepSeek-V3 leave-one-out on sampled episodes: what planning on noisy counts holds."""
    rng = np.random.default_rng(1)
    loads = [deepseek(w)[0] for w in DS]
    train = [traces.sample_tokens(x, draws, tokens, rng) for x in loads]
    fresh = [traces.sample_tokens(x, draws, tokens, rng) for x in loads]
    print(
        f"\n### Out of sample on sampled episodes (DeepSeek-V3; {draws} draws of {tokens:,} "
        "tokens a layer per workload; plan on the other three's draws, score on fresh draws "
        "of the fourth and on its load; mean PAR)\n"
    )
    print("| policy | 32x9 fresh draws | 32x9 load | 64x5 fresh draws | 64x5 load |")
    print("|---|---|---|---|---|")
    for n in names:
        res = []
        for topo in (Topology(32, 9), Topology(64, 5)):
            on_draws, on_load = [], []
            for i in range(len(loads)):
                p = plan(n, np.concatenate([x for j, x in enumerate(train) if j != i]), topo)
                on_draws.append(_par(p, fresh[i]))
                on_load.append(_par(p, loads[i]))
            res += [np.mean(on_draws), np.mean(on_load)]
        print(f"| {n} | " + " | ".join(f"{x:.4f}" for x in res) + " |")


def adapting(names, sigmas=(0.0,), reshuffled=()):
    """Re-plans with a placement in force, after a phase change of ``sigma`` (0: none), and,
    separately, after each share in ``reshuffled`` (of ``[0, 1]``) of each layer's experts
    reshuffled.

    DeepSeek-V3 32x9: each workload's previous placement is fitted on the other three; with
    ``sigma``, the new workload's load of each expert in each layer is multiplied by
    ``exp(sigma * N(0, 1))`` (seeded), a proxy for another phase (decode after prefill) that
    the repository does not ship: the prompt lengths move an expert's share by a few per cent,
    a phase change by tens. A reshuffle (:func:`reshuffle`) keeps each layer's loads but gives
    them to other experts: new hot experts, with the imbalance the placement was fitted for.
    """
    loads = [deepseek(w) for w in DS]
    topo = Topology(32, 9)
    print(
        "\n### Adapting with --previous (DeepSeek-V3 32x9; previous fit on the other three "
        "workloads; the new one's expert loads times exp(sigma * N(0, 1)), or a share of its "
        "experts' loads reshuffled among them, seeded; PAR on it): the placement in force, the "
        "policy alone at its default options, and through the pipeline (`planning.decide` at "
        "the default `CostModel`, horizon = the load's rows, as `plan --previous`)\n"
    )
    print("| policy | change | in force PAR | PAR | moved | pipeline PAR | pipeline moved |")
    print("|---|---|---|---|---|---|---|")
    # Each change drawn once (the same seeded draw for every policy).
    changed = [(f"sigma {sigma:g}", _changed(loads, phase_change, sigma)) for sigma in sigmas]
    changed += [
        (f"{share:.0%} reshuffled", _changed(loads, reshuffle, share)) for share in reshuffled
    ]
    for n in names:
        prevs = _leave_one_out_plans(n, loads, topo)
        for label, news in changed:
            before = np.mean([_par(p, x.sum(0)) for p, x in zip(prevs, news, strict=True)])
            par, moved, piped, piped_moved = _replans(n, news, prevs, topo)
            print(
                f"| {n} | {label} | {before:.4f} | {par:.4f} | {moved:.1%} "
                f"| {piped:.4f} | {piped_moved:.1%} |"
            )


def phase_change(load: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """``load [T, L, E]`` (token counts) with each expert's load in each layer multiplied by
    ``exp(sigma * N(0, 1))``, the same factor at every step, rounded to whole counts."""
    return np.rint(load * np.exp(sigma * rng.standard_normal(load.shape[1:])))


def _changed(loads, change, size):
    """Each of ``loads`` after ``change(load, size, rng)``, one seeded draw for all of them (the
    shift section's and the frontier's, the same)."""
    rng = np.random.default_rng(7)
    return [change(x, size, rng) for x in loads]


def reshuffle(load: np.ndarray, share: float, rng: np.random.Generator) -> np.ndarray:
    """``load [T, L, E]`` with, in each layer, ``round(share * E)`` experts drawn at random and
    their loads (every step's) dealt among them in a random order: the same loads, other hot
    experts."""
    out = load.copy()
    E = load.shape[2]
    for layer in range(load.shape[1]):
        chosen = rng.choice(E, round(share * E), replace=False)
        out[:, layer, chosen] = load[:, layer, rng.permutation(chosen)]
    return out


def _leave_one_out_plans(name, loads, topo):
    """Each workload's previous placement: planned on the other workloads."""
    return [
        plan(name, np.concatenate([x for j, x in enumerate(loads) if j != i]), topo)
        for i in range(len(loads))
    ]


def _replans(name, news, prevs, topo, truths=None):
    """Mean over the re-plans of ``news[i]`` from ``prevs[i]``: ``(PAR, moved fraction)`` of the
    policy alone, then through the pipeline (`planning.decide` at the default `CostModel`,
    horizon = the load's rows); PAR on ``truths[i] [L, E]`` (default: ``news[i]`` summed)."""
    truths = [x.sum(0) for x in news] if truths is None else truths
    pars, moved, piped, piped_moved = [], [], [], []
    for new, prev, truth in zip(news, prevs, truths, strict=True):
        p = plan(name, new, topo, previous=prev)
        pars.append(_par(p, truth))
        moved.append(p.moved_fraction(prev))
        d = planning.decide(
            new, prev, topo, name, OPTIONS.get(name), cost=planning.CostModel(), horizon=len(new)
        )
        piped.append(_par(d.placement, truth))
        piped_moved.append(d.placement.moved_fraction(prev))
    return np.mean(pars), np.mean(moved), np.mean(piped), np.mean(piped_moved)


def short_window(names, sigmas=(0.0, 0.4), volumes=(2_000, 20_000, 200_000), steps=16):
    """Re-plans from a short window: ``adapting``'s cases, but the policy sees only ``steps``
    steps of ``volume`` counts a layer drawn from the new workload (multinomial, seeded), and
    PAR is scored on the new workload's whole load. A window this short is mostly sampling
    noise: what a re-plan buys there, and what fitting the noise costs."""
    loads = [deepseek(w) for w in DS]
    topo = Topology(32, 9)
    print(
        f"\n### Adapting from a short window (DeepSeek-V3 32x9; previous fit on the other three "
        f"workloads; the re-plan sees {steps} steps of `volume` counts a layer drawn from the "
        "new one, after a phase change of sigma; PAR on the new one's whole load)\n"
    )
    columns = (
        "policy",
        "sigma",
        "volume",
        "in force PAR",
        "PAR",
        "moved",
        "pipeline PAR",
        "pipeline moved",
    )
    print("| " + " | ".join(columns) + " |\n" + "|---" * len(columns) + "|")
    for n in names:
        prevs = _leave_one_out_plans(n, loads, topo)
        for sigma in sigmas:
            rng = np.random.default_rng(7)  # as ``adapting``: the same phase changes
            truths = [phase_change(x, sigma, rng).sum(0) for x in loads]
            before = np.mean([_par(p, x) for p, x in zip(prevs, truths, strict=True)])
            for volume in volumes:
                rng = np.random.default_rng(3)
                windows = [traces.sample_tokens(x, steps, volume, rng) for x in truths]
                par, moved, piped, piped_moved = _replans(n, windows, prevs, topo, truths)
                print(
                    f"| {n} | {sigma:g} | {volume:,} | {before:.4f} | {par:.4f} | {moved:.1%} "
                    f"| {piped:.4f} | {piped_moved:.1%} |"
                )


def frontier(policy="equilibrium", costs=(1.6e-3, 3.2e-3, 6.4e-3, 0.01, 0.015, 0.02, 0.032, 0.064)):
    loads = [deepseek(w) for w in DS]
    esft = [traces.esft(t) for t in traces.ESFT_TASKS]
    shifted = _changed(loads, phase_change, 1.5)  # as the shift section draws it
    cases = {"ds": [], "esft": [], "shift": []}
    for i in range(len(loads)):
        train = np.concatenate([x for j, x in enumerate(loads) if j != i])
        prev = plan(policy, train, Topology(32, 9))
        cases["ds"].append((Topology(32, 9), prev, loads[i]))
        cases["shift"].append((Topology(32, 9), prev, shifted[i]))
    for i in range(len(esft)):
        prev = plan(policy, esft[i], Topology(8, 9))
        cases["esft"].append((Topology(8, 9), prev, esft[(i + 1) % len(esft)]))
    print(
        f"\n### {policy}: PAR against moved slots (move_cost; DeepSeek-V3 32x9 leave-one-out "
        "re-plans, ESFT 8x9 task switches, and the DeepSeek-V3 re-plans after a phase change of "
        "sigma 1.5 as the shift section draws it)\n"
    )
    print("| move_cost | DeepSeek-V3 PAR | moved | ESFT PAR | moved | sigma 1.5 PAR | moved |")
    print("|---|---|---|---|---|---|---|")
    for cost in costs:
        out = []
        for kind in ("ds", "esft", "shift"):
            pars, moved = [], []
            for topo, prev, new in cases[kind]:
                p = plan(policy, new, topo, previous=prev, options={"move_cost": cost})
                pars.append(_par(p, new.sum(0)))
                moved.append(p.moved_fraction(prev))
            out += [f"{np.mean(pars):.4f}", f"{np.mean(moved):.1%}"]
        print(f"| {cost:g} | " + " | ".join(out) + " |")


def _walk_against_exact(prev, new, topo, budget, time_limit=30.0):
    """``(walk, exact)``: the largest rank load of ``new [E]`` after the one-row move walk
    (``move_cost`` 0) and at the MILP optimum, both within ``budget`` slots moved from
    ``prev [P]``."""
    from eplb_rt.algorithms.move_walk import greedy_moves
    from eplb_rt.algorithms.replan_judge import _TAU_SHARE

    D = topo.num_ranks
    exact, _ = bounds.exact_min_max(
        new, topo, previous=prev, max_moves=budget, time_limit=time_limit
    )
    row, _ = greedy_moves(prev, new / new.sum(), D, budget, 0.0, 1e-3 / D, _TAU_SHARE, False, 1.0)
    walk = metrics.max_rank_load(Placement(row[None], new.size, D), new[None])[0]
    return walk, exact


def exact_gap(seeds=12, budgets=(1, 2, 4, 6)):
    """Greedy move selection against the MILP optimum with the same move budget."""
    topo = Topology(3, 3)
    gaps = {b: [] for b in budgets}
    for seed in range(seeds):
        rng = np.random.default_rng(seed)
        old, new = rng.pareto(1.2, size=(2, 7)) * 100
        prev = plan("deepseek", old[None], topo).phy2log[0].astype(np.int64)
        for b in budgets:
            got, best = _walk_against_exact(prev, new, topo, b)
            gaps[b].append(got / best - 1)
    print(
        f"\n### Move selection against the exact optimum (MILP), 7 experts on 3x3, {seeds} "
        "random load pairs\n"
    )
    print("| move budget (slots) | mean gap | max gap | optimal in |")
    print("|---|---|---|---|")
    for b, values in gaps.items():
        g = np.array(values)
        print(f"| {b} | {g.mean():.2%} | {g.max():.2%} | {(g < 1e-9).mean():.0%} |")


def exact_gap_esft(layers=(5, 10, 20), budgets=(2, 4), time_limit=300.0):
    """:func:`exact_gap` on real layers: ESFT 8x9 (64 experts), the previous placement the
    default policy's plan of the first task, the new load the second task's; the MILP's model
    has ``E * D^2`` binaries, so only small budgets are proven optimal in minutes."""
    topo = Topology(8, 9)
    first, second = (traces.esft(t).sum(axis=0) for t in traces.ESFT_TASKS[:2])
    prev = plan("equilibrium", first[None], topo).phy2log.astype(np.int64)
    print(
        f"\n### Move selection against the exact optimum (MILP), ESFT 8x9 layers, task "
        f"{traces.ESFT_TASKS[0]} -> {traces.ESFT_TASKS[1]}\n"
    )
    print("| layer | PAR before | move budget (slots) | walk | exact | gap |")
    print("|---|---|---|---|---|---|")
    for j in layers:
        new = second[j].astype(np.float64)
        mean = new.sum() / topo.num_ranks
        before = metrics.max_rank_load(
            Placement(prev[j][None], new.size, topo.num_ranks), new[None]
        )[0]
        for b in budgets:
            got, best = _walk_against_exact(prev[j], new, topo, b, time_limit)
            print(
                f"| {j} | {before / mean:.4f} | {b} | {got / mean:.4f} | {best / mean:.4f} "
                f"| {got / best - 1:.2%} |"
            )


def cycles(names, window=8):
    print(
        f"\n### Re-plan cycles (ESFT 8x9, windows of {window} requests, plan on t with the "
        "placement of t-1, score on t+1)\n"
    )
    print("| policy | mean PAR (next window) | mean moved fraction per cycle |")
    print("|---|---|---|")
    topo = Topology(8, 9)
    for n in names:
        pars, moved = [], []
        for t in traces.ESFT_TASKS:
            reqs = traces.esft(t)
            prev = None
            for start in range(0, reqs.shape[0] - 2 * window + 1, window):
                cur = reqs[start : start + window]
                nxt = reqs[start + window : start + 2 * window]
                p = plan(n, cur, topo, previous=prev)
                pars.append(_par(p, nxt.sum(0)))
                if prev is not None:
                    moved.append(p.moved_fraction(prev))
                prev = p
        print(f"| {n} | {np.mean(pars):.4f} | {np.mean(moved):.1%} |")


SHAPES = ((8, 9), (16, 5), (4, 18), (16, 6), (8, 12))


def shapes(names, draws=0, share=0.1):
    """Leave-one-out static PAR on each trace of distinct workloads at several shapes; with
    ``draws``, the mean over that many draws of the training loads jittered by ``share`` of their
    sampling noise (``traces.jitter``; the same draws for every policy), +- its standard error."""
    cases = {
        "OLMoE": ([traces.olmoe(domain=d) for d in traces.OLMOE_DOMAINS], SHAPES),
        "gpt-oss": ([traces.gptoss(s) for s in traces.gptoss_subsets()], SHAPES),
        "ESFT": ([traces.esft(t) for t in traces.ESFT_TASKS], SHAPES),
        "DeepSeek-V3": ([deepseek(w) for w in DS], ((32, 9), (64, 5))),
    }
    over = f", {draws} draws jittered by {share:g} of the sampling noise" if draws else ""
    title = f"Out of sample, static, by shape (leave-one-out, one episode per workload{over})"
    print(f"\n### {title}\n")
    print("| trace | shape | " + " | ".join(names) + " |")
    print("|---|---|" + "---|" * len(names))
    for trace, (loads, topos) in cases.items():
        for d, s in topos:
            cells = []
            for n in names:
                if draws:
                    rng = np.random.default_rng(0)
                    means = [_static(n, traces.leave_one_out(loads, rng, share), d, s).mean()
                             for _ in range(draws)]  # fmt: skip
                    spread = np.std(means, ddof=1) / np.sqrt(draws) if draws > 1 else 0.0
                    cells.append(f"{np.mean(means):.4f} ± {spread:.4f}")
                    continue
                par = _static(n, traces.leave_one_out(loads), d, s)
                cells.append(f"{par.mean():.4f} ± {par.std(ddof=1) / np.sqrt(par.size):.4f}")
            print(f"| {trace} | {d}x{s} | " + " | ".join(cells) + " |")


def _static(name, folds, d, s) -> np.ndarray:
    """PAR of every loaded layer of every fold, the plan on the fold's training loads."""
    topo = Topology(d, s)
    par = np.concatenate([metrics.par(plan(name, tr, topo), te.sum(0)) for tr, te in folds])
    return par[~np.isnan(par)]


def hierarchical(names, nodes=(1, 2, 4, 8)):
    """DeepSeek-V3 (8 groups) on 1-8 nodes: each policy flat and with ``hierarchical`` on."""
    loads = [deepseek(w) for w in DS]
    print(
        "\n### Hierarchical placement (DeepSeek-V3, 8 groups of 32 experts; in sample on the four "
        "workloads as episodes / static leave-one-out / adapting: previous fitted on three, "
        "re-plan on the fourth, PAR and moved fraction)\n"
    )
    print("| policy | shape | nodes | in sample | out of sample | adapting PAR | moved |")
    print("|---|---|---|---|---|---|---|")
    for n in names:
        for d, s in ((32, 9), (64, 5)):
            for nodes_ in nodes:
                topo = Topology(d, s, nodes_, 8)
                opts = {"hierarchical": nodes_ > 1}
                total = np.concatenate(loads)
                ins = np.nanmean(metrics.par(plan(n, total, topo, options=opts), total.sum(0)))
                oos, pars, moved = [], [], []
                for i, (train, test) in enumerate(traces.leave_one_out(loads)):
                    prev = plan(n, train, topo, options=opts)
                    oos.append(np.nanmean(metrics.par(prev, test.sum(0))))
                    p = plan(n, loads[i], topo, previous=prev, options=opts)
                    pars.append(np.nanmean(metrics.par(p, loads[i].sum(0))))
                    moved.append(p.moved_fraction(prev))
                print(
                    f"| {n} | {d}x{s} | {nodes_}{'' if nodes_ > 1 else ' (flat)'} | {ins:.4f} "
                    f"| {np.mean(oos):.4f} | {np.mean(pars):.4f} | {np.mean(moved):.1%} |",
                    flush=True,
                )


def timing(names, repeats=5):
    print(
        "\n### Time (all 58 DeepSeek-V3 layers at 64x5, one process; median of "
        f"{repeats} after warm-up)\n"
    )
    print(
        "| policy | warm-up (s) | plan, aggregate load (ms) | plan, 4 workloads as episodes (ms) |"
    )
    print("|---|---|---|---|")
    one = deepseek("prefill_in1024")
    four = np.concatenate([deepseek(w) for w in DS])
    topo = Topology(64, 5)
    for n in names:
        t0 = time.perf_counter()
        warm_up([n])
        warm = time.perf_counter() - t0
        out = []
        for load in (one, four):
            ts = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                plan(n, load, topo)
                ts.append(time.perf_counter() - t0)
            out.append(1e3 * float(np.median(ts)))
        print(f"| {n} | {warm:.2f} | {out[0]:.1f} | {out[1]:.1f} |")


SECTIONS = (
    "time", "toy", "in", "out", "sampled", "adapt", "shift", "window", "frontier", "cycles",
    "exact", "exact-esft", "shapes", "hierarchy",
)  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--policies", default=",".join(policy_names()))
    parser.add_argument(
        "--sections",
        default="time,toy,in,out,sampled,adapt,frontier,cycles,exact",
        help=f"comma-separated, of {', '.join(SECTIONS)} (default: %(default)s)",
    )
    parser.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="POLICY.KEY=VALUE",
        help="an option of a policy (repeatable, as `eplb-rt simulate --option`)",
    )
    parser.add_argument(
        "--draws", type=int, default=0, help="shapes: draws of jittered training loads (0: none)"
    )
    parser.add_argument(
        "--jitter", type=float, default=0.1, help="the draws' share of the loads' sampling noise"
    )
    args = parser.parse_args()
    names = [name for name in args.policies.split(",") if name]
    for name in names:
        get_policy(name)  # an unknown name raises, naming the known ones
    OPTIONS.update(selection.options(args.option, names))
    sections = selection.sections(args.sections, SECTIONS)
    if "time" in sections:
        timing(names)  # first, so that warm-up is measured before other sections compile
    if "toy" in sections:
        toy(names)
    if "in" in sections:
        in_sample(names)
    if "out" in sections:
        out_of_sample(names)
    if "sampled" in sections:
        sampled(names)
    if "adapt" in sections:
        adapting(names)
    if "shift" in sections:
        adapting(names, sigmas=(0.2, 0.4, 0.7, 1.0, 1.5), reshuffled=(0.25, 1.0))
    if "window" in sections:
        short_window(names)
    if "frontier" in sections:
        frontier()
    if "cycles" in sections:
        cycles(names)
    if "exact" in sections:
        exact_gap()
    if "exact-esft" in sections:
        exact_gap_esft()
    if "shapes" in sections:
        shapes(names, args.draws, args.jitter)
    if "hierarchy" in sections:
        hierarchical(names)


if __name__ == "__main__":
    main()
