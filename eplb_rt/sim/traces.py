"""Reading expert-load files into ``[T, L, E] float64`` arrays.

:func:`load_file` reads every format the ``eplb-rt`` command accepts:

* ``.npy``: an ``[L, E]`` or ``[T, L, E]`` numeric array;
* ``.npz``: the same under the key ``counts`` or ``load``;
* ``.json``: SGLang's expert-distribution dump ``{"logical_count": [[...], ...]}`` (``[L, E]``,
  or ``[T, L, E]``).

The named loaders (:func:`deepseek_v3`, :func:`esft`, :func:`gptoss`, :func:`olmoe`) read the
public traces kept in the repository under ``data/traces/`` (see ``data/README.md``); they are
for tests, benchmarks and examples, and are not installed with the package.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from eplb_rt.algorithms.load import check_load

NPZ_KEYS = ("counts", "load")
"""Keys a ``.npz`` load file may use, in order of preference."""

JSON_KEY = "logical_count"
"""Key of SGLang's expert-distribution JSON."""

TRACES_DIR = Path(__file__).resolve().parents[2] / "data" / "traces"
"""``data/traces`` of a source checkout (absent in an installed package)."""

DEEPSEEK_V3_WORKLOADS = ("prefill_in512", "prefill_in1024", "prefill_in2048", "prefill_in4096")
DEEPSEEK_V3_DENSE_LAYERS = 3
"""DeepSeek-V3's first three layers are dense: their rows in SGLang's dump are all zero."""
ESFT_TASKS = ("intent", "law", "summary", "translation")


def load_file(path: str | os.PathLike) -> np.ndarray:
    """Read one load file (``.npy``, ``.npz`` or SGLang ``.json``).

    Returns:
        ``[T, L, E] float64`` (``T = 1`` for an ``[L, E]`` file).

    Raises:
        ValueError: unknown suffix, missing key, ragged or non-numeric values, wrong number of
            dimensions, NaN/inf or negative values; the message starts with the path.
        OSError: the file cannot be read.
    """
    path = os.fspath(path)
    suffix = os.path.splitext(path)[1].lower()
    if suffix == ".npy":
        raw = _read_npy(path)
    elif suffix == ".npz":
        raw = _read_npz(path)
    elif suffix == ".json":
        raw = _read_json(path)
    else:
        raise ValueError(f"{path}: unknown load file type {suffix!r}; expected .npy, .npz or .json")
    try:
        return check_load(raw)
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from None


def load_files(paths: Sequence[str | os.PathLike]) -> np.ndarray:
    """Read several load files and stack them as episodes along ``T``.

    Every file must have the same ``[L, E]``. Returns ``[sum of T, L, E] float64``.
    """
    if not paths:
        raise ValueError("no load file given")
    arrays = [load_file(p) for p in paths]
    first = arrays[0].shape[1:]
    for path, arr in zip(paths, arrays, strict=True):
        if arr.shape[1:] != first:
            raise ValueError(
                f"{os.fspath(path)}: load has [L, E] = {list(arr.shape[1:])}, but "
                f"{os.fspath(paths[0])} has {list(first)}"
            )
    return np.concatenate(arrays, axis=0)


def _read_npy(path: str) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except ValueError as err:
        raise ValueError(f"{path}: not a numeric .npy array ({err})") from None


def _read_npz(path: str) -> np.ndarray:
    try:
        with np.load(path, allow_pickle=False) as archive:
            for key in NPZ_KEYS:
                if key in archive.files:
                    return archive[key]
            found = archive.files
    except ValueError as err:
        raise ValueError(f"{path}: not a readable .npz archive ({err})") from None
    raise ValueError(f"{path}: .npz has no key {' or '.join(NPZ_KEYS)}; it has {found}")


def _read_json(path: str) -> np.ndarray:
    with open(path) as f:
        try:
            doc = json.load(f)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(doc, dict) or JSON_KEY not in doc:
        keys = sorted(doc) if isinstance(doc, dict) else type(doc).__name__
        raise ValueError(f"{path}: expected a JSON object with key {JSON_KEY!r}, got {keys}")
    try:
        return np.array(doc[JSON_KEY], dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise ValueError(
            f"{path}: {JSON_KEY} must be a rectangular array of numbers ({err})"
        ) from None


# --------------------------------------------------------------------------- repository traces
def trace_path(folder: str, name: str, root: str | os.PathLike | None = None) -> Path:
    """Path of ``name`` in ``data/traces/<folder>``; raises ``FileNotFoundError`` if absent."""
    path = Path(root if root is not None else TRACES_DIR) / folder / name
    if not path.is_file():
        raise FileNotFoundError(
            f"trace {path} not found; the traces live in a source checkout under data/traces/"
        )
    return path


def deepseek_v3(
    workload: str = "prefill_in4096", moe_only: bool = False, root: str | None = None
) -> np.ndarray:
    """SGLang's DeepSeek-V3 prefill statistics: ``[1, 61, 256]`` (``[1, 58, 256]`` if moe_only).

    ``workload`` is one of :data:`DEEPSEEK_V3_WORKLOADS`. Rows 0-2 (dense layers) are zero.
    """
    if workload not in DEEPSEEK_V3_WORKLOADS:
        raise ValueError(f"unknown workload {workload!r}; choose one of {DEEPSEEK_V3_WORKLOADS}")
    load = load_file(trace_path("sglang_deepseek_v3", f"{workload}.json", root))
    return load[:, DEEPSEEK_V3_DENSE_LAYERS:] if moe_only else load


def esft(task: str = "intent", root: str | None = None) -> np.ndarray:
    """ESFT-vanilla-lite counts per request: ``[requests, 26, 64]``, task in :data:`ESFT_TASKS`."""
    if task not in ESFT_TASKS:
        raise ValueError(f"unknown task {task!r}; choose one of {ESFT_TASKS}")
    return load_file(trace_path("esft_vanilla_lite", f"counts_{task}.npz", root))


def gptoss_subsets(root: str | None = None) -> list[str]:
    """Names of the gpt-oss-20b subsets kept in the repository (for :func:`gptoss`)."""
    folder = Path(root if root is not None else TRACES_DIR) / "gptoss_20b_fingerprinting"
    names = sorted(p.stem[len("data_") :] for p in folder.glob("data_*.json"))
    return [n for n in names if n != "map"]


def gptoss(
    subset: str = "mmlu_pro_test_math_True_False", phase: str = "think", root: str | None = None
) -> np.ndarray:
    """gpt-oss-20b expert load of one benchmark subset and phase: ``[1, 24, 32]``.

    The published ``count_frequency`` (share of tokens routed to each expert) is scaled by the
    subset's samples x mean tokens of the phase, an approximate token count.
    """
    if phase not in ("think", "answer"):
        raise ValueError(f"phase must be 'think' or 'answer', got {phase!r}")
    path = trace_path("gptoss_20b_fingerprinting", f"data_{subset}.json", root)
    with open(path) as f:
        doc = json.load(f)
    table = doc.get(f"{phase}_expert_analytics")
    if not table:
        raise ValueError(f"{path}: subset {subset!r} has no {phase} phase")
    num_layers, num_experts = 24, 32
    load = np.zeros((1, num_layers, num_experts))
    for layer in range(num_layers):
        for expert, stats in table[f"layer_{layer}"].items():
            load[0, layer, int(expert)] = stats["count_frequency"]
    tokens = doc["sample_count"] * doc[f"num_{phase}_tokens"]
    return check_load(load * tokens)


def olmoe(
    model: str = "olmoe", domain: str = "github", top1: bool = False, root: str | None = None
) -> np.ndarray:
    """OLMoE / Mixtral routing counts of layers 0, 7 and 15 on one text domain: ``[1, 3, E]``.

    ``model``: ``olmoe``, ``olmoe-sft``, ``olmoe-dpo`` (64 experts) or ``mistral`` (8 experts).
    """
    path = trace_path(
        "olmoe_routing_analysis", "olmoe_mixtral_expert_counts_layers_0_7_15.json", root
    )
    with open(path) as f:
        models = json.load(f)["models"]
    if model not in models:
        raise ValueError(f"unknown model {model!r}; choose one of {sorted(models)}")
    counts = models[model]["expert_counts_top1" if top1 else "expert_counts"]
    if domain not in counts:
        raise ValueError(
            f"model {model!r} has no domain {domain!r}; choose one of {sorted(counts)}"
        )
    return check_load(np.array(counts[domain], dtype=np.float64))
