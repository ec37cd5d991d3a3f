"""Named readers of the public traces kept in the repository (``data/traces/``, see its README),
and the leave-one-out folds the benchmarks score them in.

For benchmarks and tests only: the traces are not installed with the package, except ESFT's,
which ships as the demo's workload (``eplb_rt/data/esft_vanilla_lite``). Any load file the
``eplb-rt`` command accepts is read with :func:`eplb_rt.formats.read_load`.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import numpy as np

from eplb_rt.algorithms.load import check_load
from eplb_rt.data import ESFT_DIR, ESFT_TASKS
from eplb_rt.formats import read_load

TRACES_DIR = Path(__file__).resolve().parents[1] / "data" / "traces"
DEEPSEEK_V3_WORKLOADS = ("prefill_in512", "prefill_in1024", "prefill_in2048", "prefill_in4096")
DEEPSEEK_V3_DENSE_LAYERS = 3
"""DeepSeek-V3's first three layers are dense: their rows in SGLang's dump are all zero."""
OLMOE_DOMAINS = ("arxiv", "book", "c4", "github", "tulu", "wikipedia")
"""The text domains of the OLMoE routing analysis, one workload each."""
__all__ = [
    "ESFT_DIR",
    "ESFT_TASKS",
    "OLMOE_DOMAINS",
    "deepseek_v3",
    "esft",
    "gptoss",
    "gptoss_catalogue",
    "gptoss_phase_load",
    "gptoss_raw_subsets",
    "gptoss_subsets",
    "gptoss_tasks",
    "jitter",
    "leave_one_out",
    "olmoe",
    "sample_tokens",
]


def deepseek_v3(workload: str = "prefill_in4096", moe_only: bool = False) -> np.ndarray:
    """SGLang's DeepSeek-V3 prefill statistics: ``[1, 61, 256]`` (``[1, 58, 256]`` if moe_only).

    ``workload`` is one of :data:`DEEPSEEK_V3_WORKLOADS`. Rows 0-2 (dense layers) are zero.
    """
    if workload not in DEEPSEEK_V3_WORKLOADS:
        raise ValueError(f"unknown workload {workload!r}; choose one of {DEEPSEEK_V3_WORKLOADS}")
    load = read_load(TRACES_DIR / "sglang_deepseek_v3" / f"{workload}.json")
    return load[:, DEEPSEEK_V3_DENSE_LAYERS:] if moe_only else load


def sample_tokens(
    load: np.ndarray, draws: int, tokens: int, rng: np.random.Generator
) -> np.ndarray:
    """``[draws, L, E] float64``: ``tokens`` counts per layer drawn from each layer's shares in
    ``load [L, E]`` (multinomial, one draw after another; all-zero layers stay zero): episodes
    that differ from the load, and from each other, by sampling noise only."""
    total = load.sum(axis=1, keepdims=True)
    share = np.divide(load, total, out=np.zeros_like(load, dtype=np.float64), where=total > 0)
    out = [
        np.stack([rng.multinomial(tokens, p) if p.sum() else p for p in share])
        for _ in range(draws)
    ]
    return np.stack(out).astype(np.float64)


def esft(task: str = "intent") -> np.ndarray:
    """ESFT-vanilla-lite counts per request: ``[requests, 26, 64]``, task in ``ESFT_TASKS``."""
    if task not in ESFT_TASKS:
        raise ValueError(f"unknown task {task!r}; choose one of {ESFT_TASKS}")
    return read_load(ESFT_DIR / f"counts_{task}.npz")


GPTOSS_DIR = TRACES_DIR / "gptoss_20b_fingerprinting"


def gptoss_subsets() -> list[str]:
    """Names of the six MMLU / MMLU-Pro subsets of gpt-oss-20b, one file each (for
    :func:`gptoss`): the subsets every benchmark and goal on gpt-oss uses."""
    names = sorted(p.stem[len("data_") :] for p in GPTOSS_DIR.glob("data_*.json"))
    return [n for n in names if n != "map"]


def gptoss_tasks() -> list[str]:
    """:func:`gptoss_subsets` then :func:`gptoss_raw_subsets`: the six MMLU subsets the goals use
    and four of other tasks (instruction following, fact checking) no option of ours was tuned
    on."""
    return gptoss_subsets() + gptoss_raw_subsets()


GPTOSS_RAW_FILES = ("raw_tulu3_persona_if.json", "raw_Polyglot-or-Not_Fact-Completion.json")
"""The source's files of whole benchmarks, several subsets each: instruction following (Tulu-3
personas) and fact completion (Polyglot-or-Not)."""

GPTOSS_RAW_MIN_SAMPLES = 100
"""A raw subset with fewer prompts than this is left out of :func:`gptoss_raw_subsets` (the
files hold subsets of 2-40 prompts next to ones of 346-4,345)."""


def gptoss_raw_subsets() -> list[str]:
    """Names of the subsets of :data:`GPTOSS_RAW_FILES` with at least
    :data:`GPTOSS_RAW_MIN_SAMPLES` prompts, in file order (for :func:`gptoss`): other tasks than
    :func:`gptoss_subsets`' (instruction following, fact checking), shipped in the sixty-fourth
    session and first used to check the policies as they were then, held out of their tuning."""
    return [
        name
        for file in GPTOSS_RAW_FILES
        for name, doc in _raw_file(GPTOSS_DIR / file).items()
        if doc["sample_count"] >= GPTOSS_RAW_MIN_SAMPLES
    ]


@functools.cache
def _raw_file(path: Path) -> dict[str, dict]:
    """A raw file's subsets and their statistics, parsed once (each file is about 0.7 MB of JSON,
    and a benchmark reads every subset of it; callers only read the documents)."""
    return json.loads(path.read_text())


GPTOSS_CATALOGUE = GPTOSS_DIR / "catalogue.npz"
"""Every category of the source's GPQA, MMLU, MMLU-Pro and SORRY-Bench test sets, its prompt
buckets summed (``scripts/gptoss_catalogue.py``)."""


GPTOSS_BENCHMARKS = ("gpqa_main", "mmlu_pro_test", "mmlu_test", "sorry_bench_base")
"""The source's benchmarks in the catalogue (the ``<benchmark>`` of its names)."""


@functools.cache
def _catalogue() -> dict[str, np.ndarray]:
    """The catalogue's arrays, read once and read-only (callers get copies of rows)."""
    with np.load(GPTOSS_CATALOGUE) as found:
        arrays = {key: found[key] for key in found.files}
    for array in arrays.values():
        array.flags.writeable = False
    return arrays


@functools.cache
def _catalogue_rows() -> dict[str, int]:
    return {str(name): i for i, name in enumerate(_catalogue()["names"])}


def gptoss_catalogue(min_prompts: int = 100, benchmark: str | None = None) -> list[str]:
    """Names (``<benchmark>/<category>``, sorted) of the catalogue's categories with at least
    ``min_prompts`` prompts in their think phase, of one ``benchmark`` (of
    :data:`GPTOSS_BENCHMARKS`) or of all: for :func:`gptoss`. 132 categories in all: 57 MMLU
    subjects and 14 MMLU-Pro categories of 100 prompts or more, SORRY-Bench's 45 of 10 each,
    GPQA's 16 of 1 to 127. Six of them hold the buckets of :func:`gptoss_subsets` (MMLU-Pro's
    math, physics, engineering and law; MMLU's moral scenarios and professional law)."""
    if benchmark is not None and benchmark not in GPTOSS_BENCHMARKS:
        raise ValueError(f"benchmark must be one of {GPTOSS_BENCHMARKS} or None, got {benchmark!r}")
    cat = _catalogue()
    return [
        str(name)
        for name, prompts in zip(cat["names"], cat["think_prompts"], strict=True)
        if prompts >= min_prompts and (benchmark is None or name.startswith(f"{benchmark}/"))
    ]


GPTOSS_PHASES = ("think", "answer")


def gptoss_phases(subset: str) -> list[str]:
    """The phases of :data:`GPTOSS_PHASES` whose expert load subset ``subset`` publishes."""
    if "/" in subset:
        row = _catalogue_row(subset)
        return [p for p in GPTOSS_PHASES if _catalogue()[f"{p}_prompts"][row] > 0]
    _, doc = _gptoss_doc(subset)
    return [phase for phase in GPTOSS_PHASES if doc.get(f"{phase}_expert_analytics")]


def _catalogue_row(name: str) -> int:
    row = _catalogue_rows().get(name)
    if row is None:
        raise ValueError(
            f"unknown gpt-oss-20b category {name!r}; choose one of gptoss_catalogue(min_prompts=0)"
        )
    return row


def _gptoss_doc(subset: str) -> tuple[Path, dict]:
    """``(file, statistics)`` of ``subset``: its own ``data_`` file, or its entry in a raw file."""
    path = GPTOSS_DIR / f"data_{subset}.json"
    if path.is_file():
        return path, json.loads(path.read_text())
    for file in GPTOSS_RAW_FILES:
        found = _raw_file(GPTOSS_DIR / file).get(subset)
        if found is not None:
            return GPTOSS_DIR / file, found
    known = gptoss_subsets() + gptoss_raw_subsets()
    raise ValueError(
        f"unknown gpt-oss-20b subset {subset!r}; choose one of {known} (or a smaller subset of "
        f"{', '.join(GPTOSS_RAW_FILES)})"
    )


def gptoss(subset: str = "mmlu_pro_test_math_True_False", phase: str = "think") -> np.ndarray:
    """gpt-oss-20b expert load of one benchmark subset and phase: ``[1, 24, 32]``; ``subset``
    one of :func:`gptoss_subsets`, any subset of the raw files by its name
    (:func:`gptoss_raw_subsets` lists those of :data:`GPTOSS_RAW_MIN_SAMPLES` prompts or more),
    or a category of the catalogue (:func:`gptoss_catalogue`: ``<benchmark>/<category>``, its
    buckets summed).

    The published ``count_frequency`` (share of tokens routed to each expert) is scaled by the
    subset's samples x mean tokens of the phase, an approximate token count.
    """
    if phase not in GPTOSS_PHASES:
        raise ValueError(f"phase must be 'think' or 'answer', got {phase!r}")
    if "/" in subset:  # a category of the catalogue
        row = _catalogue_row(subset)
        if _catalogue()[f"{phase}_prompts"][row] == 0:
            raise ValueError(f"{GPTOSS_CATALOGUE.name}: {subset!r} has no {phase} phase")
        return check_load(_catalogue()[phase][row][None].copy())
    path, doc = _gptoss_doc(subset)
    load = gptoss_phase_load(doc, phase)
    if load is None:
        raise ValueError(f"{path.name}: subset {subset!r} has no {phase} phase")
    return check_load(load[None])


def gptoss_phase_load(doc: dict, phase: str) -> np.ndarray | None:
    """``[24, 32]`` routed tokens of one subset's statistics ``doc`` (as the source writes them)
    in ``phase``, None where it has none: ``count_frequency`` (the share of the phase's tokens
    routed to each expert; an expert without hits may be absent) x prompts x mean tokens of the
    phase. :func:`gptoss` reads a subset so; ``scripts/gptoss_catalogue.py`` sums a category's."""
    table = doc.get(f"{phase}_expert_analytics")
    if not table:
        return None
    load = np.zeros((24, 32))
    for layer in range(load.shape[0]):
        for expert, stats in table[f"layer_{layer}"].items():
            load[layer, int(expert)] = stats["count_frequency"]
    return load * doc["sample_count"] * doc[f"num_{phase}_tokens"]


def olmoe(model: str = "olmoe", domain: str = "github", top1: bool = False) -> np.ndarray:
    """OLMoE / Mixtral routing counts of layers 0, 7 and 15 on one text domain: ``[1, 3, E]``.

    ``model``: ``olmoe``, ``olmoe-sft``, ``olmoe-dpo`` (64 experts) or ``mistral`` (8 experts).
    """
    path = TRACES_DIR / "olmoe_routing_analysis" / "olmoe_mixtral_expert_counts_layers_0_7_15.json"
    models = json.loads(path.read_text())["models"]
    if model not in models:
        raise ValueError(f"unknown model {model!r}; choose one of {sorted(models)}")
    counts = models[model]["expert_counts_top1" if top1 else "expert_counts"]
    if domain not in counts:
        raise ValueError(
            f"model {model!r} has no domain {domain!r}; choose one of {sorted(counts)}"
        )
    return check_load(np.array(counts[domain], dtype=np.float64))


def leave_one_out(
    loads: list[np.ndarray], rng: np.random.Generator | None = None, share: float = 0.1
):
    """``(train [k-1, L, E] one episode per workload, test [T, L, E])`` per fold of the workloads
    ``loads`` (each ``[T, L, E]``): the test workload held out, each other one summed. With
    ``rng``, the training episodes are :func:`jitter` ed by ``share`` (the test workload stays
    exact)."""
    for i, test in enumerate(loads):
        train = np.stack([w.sum(0) for j, w in enumerate(loads) if j != i])
        yield (train if rng is None else jitter(train, rng, share)), test


def jitter(load: np.ndarray, rng: np.random.Generator, share: float = 0.1) -> np.ndarray:
    """``load`` drawn again with ``share`` of its sampling noise. Token counts get
    ``share * sqrt(count)`` of Gaussian noise, rounded so they stay counts; a load that is not
    counts (its noise unknown) gets ``share`` % of multiplicative noise. A tenth (the default)
    is a workload no planner can tell from the trace; 1 is another sample of the same workloads
    (the trace's own noise, once more).

    Why: a local search turns such a difference into another of its many near-equal plans, and
    out of sample those plans differ by more than the policies do (on ESFT, OLMoE and gpt-oss
    the spread over draws is 0.01-0.02 PAR). Kept only when they win on the exact traces, a
    policy's changes select its lucky plans; the mean over jittered draws does not reward luck.
    """
    if np.array_equal(load, np.round(load)):
        noise = rng.standard_normal(load.shape) * share * np.sqrt(np.maximum(load, 0.0))
        return np.maximum(load + np.rint(noise), 0.0)
    return load * (1.0 + rng.standard_normal(load.shape) * share * 1e-2)
