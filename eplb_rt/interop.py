"""Import and export of placements and loads in the formats serving engines read.

Placements (``Placement``):

* ``vllm-ascend``: vllm-ascend's expert_map JSON (``{"moe_layer_count", "layer_list": [...]}``),
  see :meth:`Placement.to_vllm_ascend`;
* ``sglang``: SGLang's ``--init-expert-location`` mapping, a JSON object whose only key is
  ``"physical_to_logical_map"``: ``[L][P]`` ints (SGLang passes the object's keys as keyword
  arguments, so nothing else may be in it);
* ``npy``: a ``[L, P]`` integer ``.npy`` array, ``phy2log``.

Loads (``[T, L, E] float64`` arrays):

* ``sglang-count``: SGLang's ``--init-expert-location`` statistics, ``{"logical_count": [L][E]}``
  or ``[T][L][E]`` (what its expert-distribution recorder dumps in ``stat`` mode);
* ``load``: a ``.npy`` array ``[T, L, E]`` or ``[L, E]`` on output; on input any load file
  ``eplb-rt`` reads (see :func:`eplb_rt.sim.traces.load_file`).

Formats without the rank count (``sglang``, ``npy``) need ``num_ranks`` when read. Every reader
raises ``ValueError`` naming the file, what was expected and what was found.
"""

from __future__ import annotations

import json
import os

import numpy as np

from eplb_rt.algorithms.load import check_load
from eplb_rt.placement import Placement

PLACEMENT_FORMATS = ("vllm-ascend", "sglang", "npy")
LOAD_FORMATS = ("sglang-count", "load")
FORMATS = PLACEMENT_FORMATS + LOAD_FORMATS

SGLANG_MAP_KEY = "physical_to_logical_map"
SGLANG_COUNT_KEY = "logical_count"


def format_kind(fmt: str) -> str:
    """``"placement"`` or ``"load"``; raises for an unknown format name."""
    if fmt in PLACEMENT_FORMATS:
        return "placement"
    if fmt in LOAD_FORMATS:
        return "load"
    raise ValueError(f"unknown format {fmt!r}; choose one of {list(FORMATS)}")


# --------------------------------------------------------------------------------- SGLang
def to_sglang(placement: Placement) -> dict:
    """SGLang's mapping document ``{"physical_to_logical_map": [L][P]}`` (uniform shares only).

    SGLang splits an expert's tokens evenly over its replicas, so a placement with other shares
    cannot be expressed; that is an error rather than a silent change of balance.
    """
    if not placement.is_uniform:
        raise ValueError(
            "SGLang's physical_to_logical_map has no replica shares; this placement splits "
            "tokens unevenly (use the vllm-ascend format, which keeps them)"
        )
    return {SGLANG_MAP_KEY: placement.phy2log.tolist()}


def from_sglang(doc: object, num_ranks: int, num_experts: int | None = None) -> Placement:
    """Read SGLang's mapping document (see :func:`to_sglang`).

    ``num_ranks`` is SGLang's ``ep_size``; ``num_experts`` defaults to the largest id + 1.
    """
    if not isinstance(doc, dict) or SGLANG_MAP_KEY not in doc:
        keys = sorted(doc) if isinstance(doc, dict) else type(doc).__name__
        raise ValueError(f"expected a JSON object with key {SGLANG_MAP_KEY!r}, got {keys}")
    return _placement_from_array(
        _rectangular(doc[SGLANG_MAP_KEY], SGLANG_MAP_KEY, 2), num_ranks, num_experts
    )


def to_logical_count(load: np.ndarray) -> dict:
    """SGLang's statistics document ``{"logical_count": [L][E]}`` (``T > 1``: ``[T][L][E]``)."""
    arr = check_load(load)
    rows = arr[0] if arr.shape[0] == 1 else arr
    return {SGLANG_COUNT_KEY: rows.tolist()}


def from_logical_count(doc: object) -> np.ndarray:
    """Read SGLang's statistics document; returns ``[T, L, E] float64``."""
    if not isinstance(doc, dict) or SGLANG_COUNT_KEY not in doc:
        keys = sorted(doc) if isinstance(doc, dict) else type(doc).__name__
        raise ValueError(f"expected a JSON object with key {SGLANG_COUNT_KEY!r}, got {keys}")
    value = doc[SGLANG_COUNT_KEY]
    depth = _depth(value)
    if depth not in (2, 3):
        raise ValueError(
            f"{SGLANG_COUNT_KEY} must be [L][E] or [T][L][E] numbers, got {depth} nesting levels"
        )
    return check_load(_rectangular(value, SGLANG_COUNT_KEY, depth), name=SGLANG_COUNT_KEY)


# --------------------------------------------------------------------------------- dense layers
def add_dense_layers(item: Placement | np.ndarray, count: int) -> Placement | np.ndarray:
    """Prepend ``count`` dense layers, as SGLang indexes layers (all of the model's layers).

    A placement gets trivial rows (slot ``p`` holds expert ``p mod E``, what SGLang builds for a
    layer it does not balance); a load ``[T, L, E]`` gets rows of zeros.
    """
    if count < 0:
        raise ValueError(f"dense layer count must be >= 0, got {count}")
    if isinstance(item, Placement):
        trivial = Placement.initial(count, item.num_experts, item.topology()) if count else None
        return item if trivial is None else Placement.stack([trivial, item])
    load = check_load(item)
    zeros = np.zeros((load.shape[0], count, load.shape[2]))
    return np.concatenate([zeros, load], axis=1)


def drop_dense_layers(item: Placement | np.ndarray, count: int) -> Placement | np.ndarray:
    """Remove the first ``count`` layers (see :func:`add_dense_layers`).

    A load's dropped rows must be all zero: a row with tokens is a MoE layer, and dropping it
    would shift every layer after it.
    """
    if count < 0:
        raise ValueError(f"dense layer count must be >= 0, got {count}")
    if count == 0:
        return item
    layers = item.num_layers if isinstance(item, Placement) else check_load(item).shape[1]
    if count >= layers:
        raise ValueError(f"cannot drop {count} dense layers from {layers} layers")
    if isinstance(item, Placement):
        return item.select_layers(np.arange(count, layers))
    loaded = np.flatnonzero(item[:, :count].sum(axis=(0, 2)))
    if loaded.size:
        raise ValueError(
            f"layer {loaded[0]} has load, so it is not dense; check --dense-layers ({count})"
        )
    return item[:, count:]


# --------------------------------------------------------------------------------- files
def read_placement(
    path: str | os.PathLike, fmt: str, num_ranks: int | None = None, num_experts: int | None = None
) -> Placement:
    """Read a placement file in ``fmt`` (one of :data:`PLACEMENT_FORMATS`).

    ``num_ranks`` is required for ``sglang`` and ``npy``; for ``vllm-ascend`` it is checked
    against the file when given. ``num_experts`` overrides the default (largest id + 1).
    """
    path = os.fspath(path)
    _expect_kind(fmt, "placement")
    try:
        if fmt == "npy":
            placement = _placement_from_array(
                _read_npy(path), _need_ranks(num_ranks, fmt), num_experts
            )
        elif fmt == "sglang":
            placement = from_sglang(_read_json(path), _need_ranks(num_ranks, fmt), num_experts)
        else:
            placement = Placement.from_vllm_ascend(_read_json(path), num_experts)
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from err
    if num_ranks is not None and placement.num_ranks != num_ranks:
        raise ValueError(
            f"{path}: the file places experts on {placement.num_ranks} ranks, --ranks says "
            f"{num_ranks}"
        )
    return placement


def write_placement(placement: Placement, path: str | os.PathLike, fmt: str) -> None:
    """Write ``placement`` to ``path`` in ``fmt`` (one of :data:`PLACEMENT_FORMATS`)."""
    path = os.fspath(path)
    _expect_kind(fmt, "placement")
    if fmt == "npy":
        if not placement.is_uniform:
            raise ValueError(f"{path}: a phy2log .npy keeps no replica shares; use vllm-ascend")
        _write_npy(path, placement.phy2log)
        return
    doc = to_sglang(placement) if fmt == "sglang" else placement.to_vllm_ascend()
    with open(path, "w") as f:
        json.dump(doc, f)


def read_load(path: str | os.PathLike, fmt: str) -> np.ndarray:
    """Read a load file in ``fmt`` (one of :data:`LOAD_FORMATS`); returns ``[T, L, E] float64``."""
    path = os.fspath(path)
    _expect_kind(fmt, "load")
    if fmt == "load":
        from eplb_rt.sim.traces import load_file  # the one reader of every trace format

        return check_load(load_file(path), name=path)
    try:
        return from_logical_count(_read_json(path))
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from err


def write_load(load: np.ndarray, path: str | os.PathLike, fmt: str) -> None:
    """Write ``load`` (``[L, E]`` or ``[T, L, E]``) to ``path`` in ``fmt``."""
    path = os.fspath(path)
    _expect_kind(fmt, "load")
    if fmt == "load":
        _write_npy(path, check_load(load))
        return
    with open(path, "w") as f:
        json.dump(to_logical_count(load), f)


# --------------------------------------------------------------------------------- helpers
def _expect_kind(fmt: str, kind: str) -> None:
    if format_kind(fmt) != kind:
        other = PLACEMENT_FORMATS if kind == "placement" else LOAD_FORMATS
        raise ValueError(
            f"{fmt!r} is a {format_kind(fmt)} format; expected a {kind} format ({', '.join(other)})"
        )


def _need_ranks(num_ranks: int | None, fmt: str) -> int:
    if num_ranks is None:
        raise ValueError(f"the {fmt} format does not record the rank count; pass --ranks D")
    return num_ranks


def _placement_from_array(p2l: np.ndarray, num_ranks: int, num_experts: int | None) -> Placement:
    if p2l.ndim != 2:
        raise ValueError(f"phy2log must be [L, P], got shape {p2l.shape}")
    if p2l.size == 0:
        raise ValueError(f"phy2log is empty: shape {p2l.shape}")
    if not np.issubdtype(p2l.dtype, np.integer):
        if not np.issubdtype(p2l.dtype, np.floating) or not np.array_equal(p2l, np.round(p2l)):
            raise ValueError(f"phy2log must hold integer expert ids, got dtype {p2l.dtype}")
        p2l = p2l.astype(np.int64)
    if p2l.shape[1] % num_ranks:
        raise ValueError(
            f"phy2log has {p2l.shape[1]} slots per layer, not a multiple of {num_ranks} ranks"
        )
    experts = int(p2l.max()) + 1 if num_experts is None else num_experts
    return Placement(p2l, experts, num_ranks)


def _depth(value: object) -> int:
    depth = 0
    while isinstance(value, list) and value:
        depth += 1
        value = value[0]
    return depth


def _rectangular(value: object, key: str, depth: int) -> np.ndarray:
    """``value`` as a numeric array of ``depth`` dimensions, or a ``ValueError`` naming ``key``."""
    try:
        arr = np.array(value)
    except ValueError as err:  # numpy refuses ragged nesting
        raise ValueError(f"{key} is not rectangular: rows differ in length ({err})") from None
    if arr.dtype == object or arr.ndim != depth:
        raise ValueError(f"{key} is not rectangular: rows differ in length")
    if arr.size == 0 or not (np.issubdtype(arr.dtype, np.number) and arr.dtype != np.bool_):
        raise ValueError(f"{key} must hold numbers, got {arr.dtype} with shape {arr.shape}")
    return arr


def _read_json(path: str) -> object:
    try:
        with open(path) as f:
            return json.load(f)
    except json.JSONDecodeError as err:
        raise ValueError(f"not valid JSON ({err})") from err
    except UnicodeDecodeError as err:
        raise ValueError(f"not a text JSON file ({err.reason})") from err


def _read_npy(path: str) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except (ValueError, EOFError) as err:
        raise ValueError(f"not a .npy array file ({err})") from err


def _write_npy(path: str, arr: np.ndarray) -> None:
    # np.save appends ".npy" to other names; write through a handle so OUT is the path given.
    with open(path, "wb") as f:
        np.save(f, arr)
