"""Peers side by side: the engines' own EPLB code next to every eplb_rt policy, in one process.

    PYTHONPATH=. python benchmarks/bench_peers.py [--sections time,insample,static,adapt,cold]
        [--sections phase,tasks,catalogue]  # a real change of phase; gpt-oss's other tasks
        [--draws 10] [--jitter 0.1]         # jittered draws of the static section (0: none), and
                                            # their share of the loads' sampling noise
        [--contenders flashlb,deepseek]     # only contenders whose name contains one of these
        [--option equilibrium.spread=1 ...]  # an option of an eplb_rt policy (repeatable)
    PYTHONPATH=. python -m pytest benchmarks/bench_peers.py      # plan time, pytest-benchmark

Contenders: vllm-ascend 0.30's DefaultEplb, SwiftBalanceEplb and FlashLB (``warm_up`` first),
vLLM 0.34's DefaultEplbPolicy, SGLang 0.5.23's ``deepseek`` and ``deepseek_vec`` (imported
from their wheels, see ``scripts/fetch_peers.py``), and every eplb_rt policy through the engine
adapters (uniform shares, a layer changes only when it gains). Everything runs on one thread.
Tables (markdown):

* time: plan time per call (CPU time of the process), DeepSeek-V3 (58 layers x 256 experts,
  the four prefill workloads as four episodes) at 32x9 and 64x5, median of ``--repeat`` calls
  after one, and the ratio to vllm-ascend's FlashLB;
* insample: mean PAR over layers, planned and scored on the same workload (mean over the four
  DeepSeek-V3 workloads, the four ESFT tasks, the six gpt-oss subsets, the six OLMoE domains);
* static: leave-one-out, planned on the other workloads (one episode each), scored on the one
  left out; mean over folds; then the same over ``--draws`` draws of the training loads
  jittered by ``--jitter`` (a tenth) of their sampling noise (``traces.jitter``), mean +-
  standard error:
  out of sample a plan is one of many near-equal ones, the exact traces pick one of them, and
  a policy tuned on those traces wins that draw more often than the next one;
* adapt: each contender's own leave-one-out placement is in force; it re-plans on the left-out
  workload with that table; PAR on it and the fraction of slots moved (mean over folds);
* phase (not in the default list): a real change of phase, gpt-oss-20b's reasoning then its
  answers (:func:`phase_change`): each contender's own table fitted on the think phases is in
  force, it re-plans on each answer phase; PAR before and after, the fraction of slots moved
  (mean over the subsets) at four shapes; then the default policy's frontier over
  ``move_cost``, to read its moves at a peer's PAR;
* tasks (not in the default list): static leave-one-out over gpt-oss-20b's ten subsets, the six
  MMLU ones and four of other tasks no option of ours was tuned on (:func:`section_tasks`);
* catalogue (not in the default list): gpt-oss-20b's 72 categories of 100 prompts or more, in
  20 seeded groups of six, leave-one-out inside each, paired with the default policy; then the
  phase section across the fourteen MMLU-Pro categories (:func:`section_catalogue`);
* cold: a fresh interpreter with an empty numba cache: seconds from start to the first plan
  (vllm-ascend's FlashLB includes its ``warm_up``, as its EPLB process does at start).

A peer's table that loses an expert is reported as invalid; a peer may put two replicas of an
expert on a rank (DeepSeek's algorithm does), which is scored as the engine would serve it.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable

import numpy as np
import pytest
import torch

from benchmarks import selection, traces
from benchmarks.common import shape_name
from eplb_rt.algorithms import metrics, policy_names, warm_up
from eplb_rt.config import EplbConfig
from eplb_rt.integrations._common import replan
from eplb_rt.placement import Placement, Topology
from tests.integrations.peers import open_peer

Planner = Callable[[np.ndarray, Topology, "np.ndarray | None"], np.ndarray]
"""``(load [T, L, E], topology, phy2log in force [L, P] or None) -> phy2log [L, P]``."""

SHAPES = ((32, 9), (64, 5))


def workloads() -> dict[str, tuple[list[np.ndarray], Topology]]:
    """Trace -> (one ``[T, L, E]`` array per workload, the topology it is planned on)."""
    return {
        "DeepSeek-V3 32x9": (_ds(), Topology(32, 9)),
        "DeepSeek-V3 64x5": (_ds(), Topology(64, 5)),
        "ESFT 8x9": ([traces.esft(t) for t in traces.ESFT_TASKS], Topology(8, 9)),
        "gpt-oss 8x5": ([traces.gptoss(s) for s in traces.gptoss_subsets()], Topology(8, 5)),
        "OLMoE 8x9": ([traces.olmoe(domain=d) for d in traces.OLMOE_DOMAINS], Topology(8, 9)),
    }


def _ds() -> list[np.ndarray]:
    return [traces.deepseek_v3(w, moe_only=True) for w in traces.DEEPSEEK_V3_WORKLOADS]


# ------------------------------------------------------------------------------ contenders
def ours(name: str, options: dict | None = None) -> Planner:
    def run(load, topology, previous):
        return replan("bench", load, topology, previous, policy=name, options=options)[0].phy2log

    return run


def slot_load(table: np.ndarray, load: np.ndarray) -> np.ndarray:
    """Tokens per slot ``[T, L, D, S]`` an engine records for ``table [L, D, S]``."""
    L, D, S = table.shape
    placement = Placement(table.reshape(L, -1), load.shape[-1], D, validate=False)
    return metrics.slot_load(placement, load).reshape(-1, L, D, S)


def ascend_planner(va, cls_name: str) -> Planner:
    def run(load, topology, previous):
        L, E = load.shape[1:]
        D, S = topology.num_ranks, topology.num_slots_per_rank
        if previous is None:  # vllm-ascend's own start layout
            one = va.eplb_utils.generate_global_placement(E, D, topology.num_slots - E, 0)
            table = np.tile(one.numpy(), (L, 1, 1))
        else:
            table = previous.reshape(L, D, S)
        work = slot_load(table, load)
        policy = getattr(va.policy_factory, cls_name)()
        if cls_name != "FlashLB":  # the single-stage policies read the summed load
            work = work.sum(0)
        new = policy.rebalance_experts(torch.tensor(table), torch.tensor(work))[2]
        return np.asarray(new).reshape(L, -1)

    return run


def vllm_planner(vl) -> Planner:
    def run(load, topology, previous):
        old = None if previous is None else torch.tensor(previous)
        out = vl.policy.DefaultEplbPolicy.rebalance_experts(
            torch.tensor(load.sum(0)), topology.num_slots, 1, 1, topology.num_ranks, old
        )
        return out.numpy()

    return run


def sglang_planner(sg, algorithm: str) -> Planner:
    def run(load, topology, previous):  # SGLang's algorithms take no table in force
        A = sg.eplb_algorithms
        out = A.rebalance_experts(
            torch.tensor(load), topology.num_slots, topology.num_slots_per_rank, None, 1,
            A.EplbAlgorithm[algorithm],
        )  # fmt: skip
        return out[0].numpy()

    return run


def _selected(name: str, only: list[str] | None) -> bool:
    """Whether contender ``name`` contains one of ``only`` (case-insensitive; all when empty)."""
    return not only or any(part.lower() in name.lower() for part in only)


def our_policies(only: list[str] | None = None) -> list[str]:
    """eplb_rt's policies among the contenders ``only`` selects."""
    return [n for n in policy_names() if _selected(f"eplb_rt {n}", only)]


def contenders(
    stack, only: list[str] | None = None, options: dict | None = None
) -> dict[str, Planner]:
    """Every contender, or those whose name contains one of ``only`` (case-insensitive);
    ``options`` (``{policy: {key: value}}``) go to eplb_rt's policies."""
    options = options or {}

    def wanted(name: str) -> bool:
        return _selected(name, only)

    names = our_policies(only)
    found = {f"eplb_rt {n}": ours(n, options.get(n)) for n in names}
    warm_up(names)
    for peer, make in (
        ("vllm-ascend", lambda m: {f"vllm-ascend {c}": ascend_planner(m, c)
                                   for c in ("DefaultEplb", "SwiftBalanceEplb", "FlashLB")}),
        ("vllm", lambda m: {"vLLM DefaultEplbPolicy": vllm_planner(m)}),
        ("sglang", lambda m: {f"SGLang {a}": sglang_planner(m, a)
                              for a in ("deepseek", "deepseek_vec")}),
    ):  # fmt: skip
        if only and not any(wanted(name) for name in make(None)):
            continue
        try:
            modules = stack.enter_context(open_peer(peer))
        except RuntimeError as err:
            print(f"<!-- {peer} skipped: {err} -->")
            continue
        if peer == "vllm-ascend" and wanted("vllm-ascend FlashLB"):
            modules.policy_flashlb.warm_up()
        found.update({k: v for k, v in make(modules).items() if wanted(k)})
    return found


# ------------------------------------------------------------------------------ scoring
def score(phy2log: np.ndarray, load: np.ndarray, topology: Topology) -> float:
    """Mean PAR over loaded layers of ``phy2log`` on ``load`` summed over steps; NaN if a
    table loses an expert or holds an id out of range."""
    table = Placement(phy2log, load.shape[-1], topology.num_ranks, validate=False)
    if phy2log.min() < 0 or phy2log.max() >= load.shape[-1] or (table.logcnt == 0).any():
        return float("nan")
    return float(np.nanmean(metrics.par(table, load.sum(0))))


def section_time(found, repeat: int) -> None:
    load = np.concatenate(_ds())
    print("\n### Plan time per call, DeepSeek-V3 58 layers, 4 episodes, 1 thread (ms CPU)\n")
    print("| contender | 32x9 | 64x5 | 32x9 vs FlashLB | 64x5 vs FlashLB |")
    print("|---|---|---|---|---|")
    ms = {}
    for name, run in found.items():
        for d, s in SHAPES:
            topo = Topology(d, s)
            run(load, topo, None)
            times = []
            for _ in range(repeat):
                start = time.process_time()  # CPU time: the machine is shared
                run(load, topo, None)
                times.append(time.process_time() - start)
            ms[name, d] = 1e3 * float(np.median(times))
    ref = "vllm-ascend FlashLB"
    for name in found:
        ratios = [ms[ref, d] / ms[name, d] if (ref, d) in ms else float("nan") for d, _ in SHAPES]
        print(f"| {name} | {ms[name, 32]:.0f} | {ms[name, 64]:.0f} | "
              f"{ratios[0]:.2f}x | {ratios[1]:.2f}x |")  # fmt: skip


def section_par(found, static: bool, draws: int = 0, share: float = 0.1) -> dict:
    """Mean PAR per contender and trace. Leave-one-out (``static``) with ``draws``: also the mean
    over that many draws of training loads jittered by ``share`` of their sampling noise
    (:func:`traces.jitter`), +- its standard error, the figure the goals use (the same draws for
    every contender)."""
    cases = workloads()
    title = "leave-one-out, static" if static else "in sample"
    table, jittered = {}, {}
    for name, run in found.items():
        for case, (loads, topo) in cases.items():
            if static:
                folds = traces.leave_one_out(loads)
                pars = [score(run(tr, topo, None), te, topo) for tr, te in folds]
            else:
                pars = [score(run(w, topo, None), w, topo) for w in loads]
            table[name, case] = float(np.mean(pars))
            if static and draws:
                rng = np.random.default_rng(0)
                means = [np.mean([score(run(tr, topo, None), te, topo)
                                  for tr, te in traces.leave_one_out(loads, rng, share)])
                         for _ in range(draws)]  # fmt: skip
                jittered[name, case] = (float(np.mean(means)), float(np.std(means, ddof=1)))
    _print_table(f"Mean PAR, {title}", found, cases, lambda n, c: f"{table[n, c]:.4f}")
    if jittered:
        _print_table(
            f"Mean PAR, leave-one-out, static, {draws} draws of the training loads jittered by "
            f"{share:g} of their sampling noise (mean +- standard error)",
            found,
            cases,
            lambda n, c: f"{jittered[n, c][0]:.4f} ± {jittered[n, c][1] / np.sqrt(draws):.4f}",
        )
    return table


def _print_table(title: str, found, cases, cell: Callable[[str, str], str]) -> None:
    print(f"\n### {title}\n")
    print("| contender | " + " | ".join(cases) + " |")
    print("|---|" + "---|" * len(cases))
    for name in found:
        print(f"| {name} | " + " | ".join(cell(name, case) for case in cases) + " |")


def section_adapt(found) -> None:
    cases = {k: v for k, v in workloads().items() if k.startswith(("DeepSeek", "ESFT"))}
    print("\n### Adapting: own leave-one-out table in force, re-plan on the left-out workload\n")
    print("| contender | " + " | ".join(f"{c} PAR | {c} moved" for c in cases) + " |")
    print("|---|" + "---|---|" * len(cases))
    for name, run in found.items():
        row = []
        for loads, topo in cases.values():
            pars, moved = [], []
            for train, test in traces.leave_one_out(loads):
                before = run(train, topo, None)
                after = run(test, topo, before)
                pars.append(score(after, test, topo))
                moved.append(float((after != before).mean()))
            row += [f"{np.mean(pars):.4f}", f"{np.mean(moved):.1%}"]
        print(f"| {name} | " + " | ".join(row) + " |")


PHASE_SHAPES = ((4, 9), (8, 5), (8, 6), (16, 3))
"""gpt-oss-20b's 32 experts on 36 to 48 slots of 4, 8 or 16 ranks (four experts a rank at 8
ranks), the tightest 16 ranks of 3 slots, where a hot expert needs replicas on several ranks."""

PHASE_COSTS = (0.001, 0.002, 0.004, 0.0064, 0.01, 0.015, 0.02, 0.032, 0.05, 0.064, 0.1)
"""``move_cost`` values of the default policy's frontier in :func:`section_phase`."""


def phase_change(subsets: list[str] | None = None) -> tuple[np.ndarray, list[np.ndarray]]:
    """``(think [K, 24, 32], answers)``: gpt-oss-20b's think phase of each of ``subsets`` (any
    name :func:`traces.gptoss` reads; by default the ten of :func:`traces.gptoss_tasks`), and
    the answer phase (``[1, 24, 32]``) of each that publishes one (five of the ten).

    The one change of phase the shipped traces hold: the same model, the same prompts, its
    reasoning tokens and then its answers route to other experts: on average over the layers,
    24-57 % of a subset's answer load lands elsewhere than its reasoning's (half the total
    variation of the experts' shares; they correlate at 0.19-0.73), against 5-7 % between
    DeepSeek-V3's neighbouring prompt lengths."""
    subsets = traces.gptoss_tasks() if subsets is None else subsets
    think = np.concatenate([traces.gptoss(s, "think") for s in subsets])
    answers = [traces.gptoss(s, "answer") for s in subsets if "answer" in traces.gptoss_phases(s)]
    return think, answers


def section_tasks(found) -> None:
    """Static leave-one-out over the ten subsets of :func:`traces.gptoss_tasks` at
    :data:`PHASE_SHAPES`: the mean PAR over the ten folds, and over the four folds that hold out
    a raw subset (tasks no option of ours was tuned on). A refused shape is named."""
    names = traces.gptoss_tasks()
    loads = [traces.gptoss(s) for s in names]
    raw = len(traces.gptoss_subsets())
    print(
        f"\n### gpt-oss-20b, {len(names)} subsets, leave-one-out, static: mean PAR over all folds "
        f"/ over the {len(names) - raw} folds that hold out instruction following or fact "
        "checking\n"
    )

    def cell(run: Planner, topo: Topology) -> str:
        pars = [score(run(tr, topo, None), te, topo) for tr, te in traces.leave_one_out(loads)]
        return f"{np.mean(pars):.4f} / {np.mean(pars[raw:]):.4f}"

    _shape_table(found, cell)


class _Refused(Exception):
    """A contender's ``ValueError`` on a shape it does not plan for."""


def _refusing(run: Planner) -> Planner:
    """``run`` with its own ``ValueError`` turned into :class:`_Refused`, so that only the
    planner's refusal, not an error of the scoring around it, makes a cell "refused"."""

    def call(load, topology, previous):
        try:
            return run(load, topology, previous)
        except ValueError as err:
            raise _Refused(str(err)) from err

    return call


def _shape_table(found, cell: Callable[[Planner, Topology], str]) -> None:
    """A markdown row per contender of ``cell(run, topology)`` at each of :data:`PHASE_SHAPES`;
    a contender that refuses a shape (its planner raises ``ValueError``: vllm-ascend's
    DefaultEplb takes no more redundant experts than ranks) gets a cell that says so, and its
    reason below the table."""
    shapes = [Topology(d, s) for d, s in PHASE_SHAPES]
    print("| contender | " + " | ".join(f"{d}x{s}" for d, s in PHASE_SHAPES) + " |")
    print("|---|" + "---|" * len(shapes))
    refused = []
    for name, run in found.items():
        cells = []
        for topo in shapes:
            try:
                cells.append(cell(_refusing(run), topo))
            except _Refused as err:
                cells.append("refused")
                refused.append(f"- {name} refuses {shape_name(topo)}: {err}")
        print(f"| {name} | " + " | ".join(cells) + " |", flush=True)
    if refused:
        print("\n" + "\n".join(refused))


def catalogue_groups(groups: int = 20, size: int = 6, seed: int = 0) -> list[list[str]]:
    """``groups`` draws (seeded) of ``size`` categories of gpt-oss-20b's catalogue with 100
    prompts or more (``traces.gptoss_catalogue()``: MMLU subjects, MMLU-Pro categories, one GPQA
    category), each sorted: sets of distinct tasks like the six MMLU subsets the goals use."""
    names = traces.gptoss_catalogue()
    rng = np.random.default_rng(seed)
    return [sorted(str(n) for n in rng.choice(names, size, replace=False)) for _ in range(groups)]


def section_catalogue(found, groups: int = 20, costs=PHASE_COSTS) -> None:
    """gpt-oss-20b's catalogue: static leave-one-out inside each of :func:`catalogue_groups`,
    the mean PAR over the groups and its paired difference to the default policy's (as shipped)
    +- the standard error over the groups; then :func:`section_phase` across the fourteen
    MMLU-Pro categories (their think phases in force, each answer phase re-planned on)."""
    picks = catalogue_groups(groups)
    loads = {name: traces.gptoss(name) for pick in picks for name in pick}

    def means(run: Planner, topo: Topology) -> np.ndarray:
        folds = [traces.leave_one_out([loads[name] for name in pick]) for pick in picks]
        return np.array(
            [np.mean([score(run(tr, topo, None), te, topo) for tr, te in f]) for f in folds]
        )

    default, base = ours(EplbConfig().policy), {}

    def cell(run: Planner, topo: Topology) -> str:
        key = (topo.num_ranks, topo.num_slots_per_rank)
        if key not in base:
            base[key] = means(default, topo)
        diff = means(run, topo) - base[key]
        mean = base[key].mean() + diff.mean()
        return f"{mean:.4f} ({diff.mean():+.4f} ± {diff.std(ddof=1) / np.sqrt(groups):.4f})"

    print(
        f"\n### gpt-oss-20b's catalogue: {groups} groups of six categories, leave-one-out inside "
        f"each, static: mean PAR (less the default policy's, paired over the groups)\n"
    )
    _shape_table(found, cell)
    section_phase(found, costs, phase_change(traces.gptoss_catalogue(100, "mmlu_pro_test")))


def section_phase(found, costs=PHASE_COSTS, cases=None) -> None:
    """Adapting across a change of phase (``cases``: ``(think [K, L, E], answers)``, by default
    :func:`phase_change`) at :data:`PHASE_SHAPES`: each contender's own table fitted on the
    think phases, re-planned on each answer phase; then the default policy's frontier over
    ``costs`` (``move_cost``; none where it is not among ``found``)."""
    think, answers = phase_change() if cases is None else cases
    shapes = [Topology(d, s) for d, s in PHASE_SHAPES]
    names = [shape_name(t) for t in shapes]
    print(
        "\n### Adapting across a change of phase: gpt-oss-20b, own table fitted on the think "
        f"phases ({len(think)} subsets), re-planned on each answer phase ({len(answers)}); PAR "
        "in force -> after / slots moved, mean over the subsets\n"
    )
    _shape_table(found, lambda run, topo: _phase_cell(run, topo, think, answers))
    default = f"eplb_rt {EplbConfig().policy}"
    if not costs or default not in found:
        return
    print(f"\n{default} along `move_cost` (PAR after / slots moved, the same re-plans):\n")
    print("| move_cost | " + " | ".join(names) + " |")
    print("|---|" + "---|" * len(shapes))
    for cost in costs:
        run = ours(EplbConfig().policy, {"move_cost": cost})
        cells = [_phase_cell(run, topo, think, answers, in_force=False) for topo in shapes]
        print(f"| {cost:g} | " + " | ".join(cells) + " |", flush=True)


def _phase_cell(run: Planner, topo: Topology, think, answers, in_force=True) -> str:
    before = run(think, topo, None)
    pars, moved, then = [], [], []
    for answer in answers:
        after = run(answer, topo, before)
        then.append(score(before, answer, topo))
        pars.append(score(after, answer, topo))
        moved.append(float((after != before).mean()))
    cell = f"{np.mean(pars):.4f} / {np.mean(moved):.1%}"
    return f"{np.mean(then):.3f} -> {cell}" if in_force else cell


COLD = {
    f"eplb_rt {EplbConfig().policy} (the default policy)": (
        "from eplb_rt.algorithms import plan; from eplb_rt.config import EplbConfig; "
        "plan(EplbConfig().policy, load, Topology(32, 9))"
    ),
    "eplb_rt flashlb": (
        "from eplb_rt.algorithms import plan; plan('flashlb', load, Topology(32, 9))"
    ),
    "vllm-ascend FlashLB": (
        "from tests.integrations.peers import open_peer\n"
        "with open_peer('vllm-ascend') as va:\n"
        "    va.policy_flashlb.warm_up()\n"
        "    from benchmarks.bench_peers import ascend_planner\n"
        "    ascend_planner(va, 'FlashLB')(load, Topology(32, 9), None)"
    ),
}
COLD_PRELUDE = (
    "import time; start = time.perf_counter()\n"
    "import numpy as np, torch; torch.set_num_threads(1)\n"
    "from eplb_rt.placement import Topology\n"
    "from benchmarks import traces\n"
    "load = np.concatenate([traces.deepseek_v3(w, moe_only=True) "
    "for w in traces.DEEPSEEK_V3_WORKLOADS])\n"
)


def section_cold(only: list[str] | None = None) -> None:
    """The cold-start rows of the contenders ``only`` selects (all when empty); a contender
    whose interpreter fails (a peer's wheel that cannot be had) gets its error as its row."""
    rows = {name: body for name, body in COLD.items() if _selected(name, only)}
    print("\n### Cold start: fresh interpreter, empty numba cache, to the first plan (s)\n")
    if not rows:
        print(f"<!-- no cold-start row for the contenders selected; rows: {', '.join(COLD)} -->")
        return
    print("| contender | seconds |")
    print("|---|---|")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for name, body in rows.items():
        with tempfile.TemporaryDirectory() as cache:
            env = dict(os.environ, NUMBA_CACHE_DIR=cache, PYTHONPATH=root)
            code = COLD_PRELUDE + body + "\nprint(time.perf_counter() - start)"
            out = subprocess.run([sys.executable, "-c", code], env=env, cwd=root,
                                 capture_output=True, text=True, check=False)  # fmt: skip
        if out.returncode:
            lines = out.stderr.strip().splitlines() or [f"exit code {out.returncode}"]
            print(f"| {name} | failed: {lines[-1]} |")
        else:
            print(f"| {name} | {float(out.stdout.split()[-1]):.1f} |")


def flashlb_check(insample: dict, static: dict) -> None:
    """Our ``flashlb`` against vllm-ascend's FlashLB on the same inputs."""
    print("\n### eplb_rt flashlb vs vllm-ascend FlashLB, same inputs (PAR difference)\n")
    print("| trace | in sample: ours / original / diff | leave-one-out: ours / original / diff |")
    print("|---|---|---|")
    for case in workloads():
        cells = []
        for table in (insample, static):
            a, b = table["eplb_rt flashlb", case], table["vllm-ascend FlashLB", case]
            cells.append(f"{a:.4f} / {b:.4f} / {100 * (a - b) / b:+.2f}%")
        print(f"| {case} | " + " | ".join(cells) + " |")


SECTIONS = ("time", "insample", "static", "adapt", "phase", "tasks", "catalogue", "cold")


def main(argv: list[str] | None = None) -> None:
    import contextlib

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--sections",
        default="time,insample,static,adapt,cold",
        help=f"comma-separated, of {', '.join(SECTIONS)} (default: %(default)s)",
    )
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument(
        "--draws",
        type=int,
        default=10,
        help="draws of jittered training loads for the static section's second table (0: none)",
    )
    parser.add_argument(
        "--jitter",
        type=float,
        default=0.1,
        help="the draws' share of the training loads' sampling noise (1: another sample)",
    )
    parser.add_argument(
        "--contenders",
        default="",
        help="comma-separated parts of contender names to run, e.g. 'flashlb' (default: all)",
    )
    parser.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="POLICY.KEY=VALUE",
        help="an option of an eplb_rt policy (repeatable, as `eplb-rt simulate --option`), "
        "e.g. equilibrium.spread=1",
    )
    args = parser.parse_args(argv)
    only = [part for part in args.contenders.split(",") if part.strip()]
    sections = selection.sections(args.sections, SECTIONS)
    options = selection.options(args.option, our_policies(only))
    if args.repeat < 1:
        raise SystemExit(f"--repeat must be >= 1, got {args.repeat}")
    torch.set_num_threads(1)
    print(f"<!-- eplb_rt default policy: {EplbConfig().policy}; torch threads 1 -->")
    with contextlib.ExitStack() as stack:
        found = contenders(stack, only, options)
        if not found:
            raise SystemExit(f"--contenders {args.contenders!r}: no contender's name has it")
        if "time" in sections:
            section_time(found, args.repeat)
        tables = {s: section_par(found, s == "static", args.draws, args.jitter)
                  for s in ("insample", "static") if s in sections}  # fmt: skip
        if len(tables) == 2 and {"eplb_rt flashlb", "vllm-ascend FlashLB"} <= set(found):
            flashlb_check(tables["insample"], tables["static"])
        later = {"adapt": section_adapt, "phase": section_phase, "tasks": section_tasks,
                 "catalogue": section_catalogue}  # fmt: skip
        for section, run in later.items():
            if section in sections:
                run(found)
    if "cold" in sections:
        section_cold(only)


# ------------------------------------------------------------------------------ pytest-benchmark
@pytest.fixture(scope="module")
def flashlb_original():
    try:
        with open_peer("vllm-ascend") as va:
            va.policy_flashlb.warm_up()
            yield ascend_planner(va, "FlashLB")
    except RuntimeError as err:
        pytest.skip(f"vllm-ascend cannot be fetched: {err}")


# vllm-ascend's FlashLB converts torch tensors with np.array (numpy 2 deprecates how torch does it)
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize(("ranks", "slots"), SHAPES, ids=[f"{d}x{s}" for d, s in SHAPES])
@pytest.mark.parametrize("who", ["eplb_rt-default", "eplb_rt-flashlb", "vllm-ascend-FlashLB"])
def test_plan_time(benchmark, flashlb_original, who, ranks, slots):
    torch.set_num_threads(1)
    name = EplbConfig().policy if who == "eplb_rt-default" else "flashlb"
    run = flashlb_original if who.startswith("vllm-ascend") else ours(name)
    warm_up([name])
    load, topo = np.concatenate(_ds()), Topology(ranks, slots)
    phy2log = benchmark.pedantic(run, (load, topo, None), rounds=3, warmup_rounds=1)
    benchmark.extra_info["par"] = round(score(phy2log, load, topo), 5)


if __name__ == "__main__":
    main()
