"""Every file format eplb_rt reads or writes, in one place.

Placements (:class:`~eplb_rt.placement.Placement`):

* ``vllm-ascend``: vllm-ascend's expert_map JSON ``{"moe_layer_count", "layer_list": [{"layer_id",
  "device_count", "device_list": [{"device_id", "device_expert": [...]}]}]}``; ``device_expert``
  lists a rank's experts in local slot order. Non-uniform shares go in the extra top-level field
  ``"eplb_rt": {"num_experts", "slot_share": [L][P]}``, which other readers ignore;
* ``sglang``: SGLang's ``--init-expert-location`` mapping ``{"physical_to_logical_map": [L][P]}``
  (SGLang passes the object's keys as keyword arguments, so nothing else may be in it);
* ``npy``: a ``[L, P]`` integer ``.npy`` array, ``phy2log``.

Loads (``[T, L, E] float64``):

* ``sglang-count``: SGLang's expert-distribution statistics ``{"logical_count": [L][E]}`` or
  ``[T][L][E]``, as JSON or as the ``.pt`` file its recorder dumps (``torch.save`` of a dict
  whose ``logical_count`` is a ``[T, L, E]`` tensor, read without running code in it);
* ``load``: by suffix, a ``.npy`` ``[L, E]`` / ``[T, L, E]`` array, a ``.npz`` holding one under
  the key ``counts`` or ``load``, or a ``.json`` in the ``sglang-count`` format (written as
  ``.npy``).

A placement read without a format is told by its suffix (``.npy``) and, for JSON, by its keys.
Formats without the rank count (``sglang``, ``npy``) need ``num_ranks`` when read. Every reader
raises ``ValueError`` whose message starts with the path and says what was expected and found.
Every writer writes a new file beside the path and moves it there at once (:func:`write_file`):
a write that fails leaves the file as it was, and a reader never sees half of one.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import warnings
import zipfile
import zlib
from collections.abc import Callable, Sequence
from typing import Any, BinaryIO

import numpy as np

from eplb_rt.algorithms.load import check_load
from eplb_rt.placement import Placement
from eplb_rt.scalars import check_count, is_bool

PLACEMENT_FORMATS = ("vllm-ascend", "sglang", "npy")
LOAD_FORMATS = ("sglang-count", "load")
FORMATS = PLACEMENT_FORMATS + LOAD_FORMATS

SGLANG_MAP_KEY = "physical_to_logical_map"
SGLANG_COUNT_KEY = "logical_count"
NPZ_KEYS = ("counts", "load")
"""Keys a ``.npz`` load file may use, in order of preference."""


def format_kind(fmt: str, expected: str | None = None) -> str:
    """``"placement"`` or ``"load"``; raises for an unknown name or one not of ``expected``."""
    kind = "placement" if fmt in PLACEMENT_FORMATS else "load" if fmt in LOAD_FORMATS else None
    if kind is None:
        raise ValueError(f"unknown format {fmt!r}; choose one of {list(FORMATS)}")
    if expected not in (None, kind):
        names = PLACEMENT_FORMATS if expected == "placement" else LOAD_FORMATS
        raise ValueError(f"{fmt!r} is a {kind} format; expected a {expected} format {names}")
    return kind


# --------------------------------------------------------------------------------- documents
def to_vllm_ascend(placement: Placement) -> dict:
    """vllm-ascend's expert_map JSON object (see the module docstring)."""
    grid = placement.by_rank()
    extra: dict = {"num_experts": placement.num_experts}
    if not placement.is_uniform:
        extra["slot_share"] = placement.slot_share.tolist()
    layers = [
        {
            "layer_id": layer,
            "device_count": placement.num_ranks,
            "device_list": [
                {"device_id": rank, "device_expert": experts.tolist()}
                for rank, experts in enumerate(grid[layer])
            ],
        }
        for layer in range(placement.num_layers)
    ]
    return {"moe_layer_count": placement.num_layers, "layer_list": layers, "eplb_rt": extra}


def from_vllm_ascend(doc: object, num_experts: int | None = None) -> Placement:
    """Read vllm-ascend's expert_map object; ``num_experts`` defaults to the ``eplb_rt`` field
    when present (a ``num_experts`` given must then equal it), else the largest id + 1. Layers
    and devices are taken in list order, as vllm-ascend's loader serves them (``layer_list[i]``
    is MoE layer ``i``); their ids, where given, must be distinct integers, and are not read
    otherwise. A layer's ``device_count``, where given, must be the number of devices it
    lists."""
    check_count("num_experts", num_experts, optional=True)
    try:
        layers = _listed(doc["layer_list"], "layer_id", "layer_list")
        count = _integer(doc.get("moe_layer_count", len(layers)), "moe_layer_count")
        rows = []
        for i, item in enumerate(layers):
            where = f"layer_list[{i}]"
            devices = _listed(item["device_list"], "device_id", f"{where}'s device_list")
            if "device_count" in item:
                listed = _integer(item["device_count"], f"{where}'s device_count")
                if listed != len(devices):
                    raise ValueError(
                        f"{where}'s device_count is {listed} but it lists {len(devices)} devices"
                    )
            rows.append([dev["device_expert"] for dev in devices])
        extra = doc.get("eplb_rt") or {}
        share = extra.get("slot_share")
        if "num_experts" in extra:
            recorded = _integer(extra["num_experts"], "eplb_rt.num_experts")
            if num_experts is not None and recorded != num_experts:
                raise ValueError(
                    f"the file records {recorded} experts (eplb_rt.num_experts), expected "
                    f"{num_experts}"
                )
            num_experts = recorded
    except KeyError as err:
        raise ValueError(f"not a vllm-ascend expert_map document: no key {err}") from None
    except (TypeError, AttributeError):
        raise ValueError(
            "not a vllm-ascend expert_map document: expected {'moe_layer_count', 'layer_list': "
            "[{'layer_id', 'device_list': [{'device_id', 'device_expert': [ids]}]}]} (the ids "
            "optional)"
        ) from None
    if count != len(rows):
        raise ValueError(f"moe_layer_count is {count} but layer_list has {len(rows)} layers")
    if not rows:
        raise ValueError("expert_map document has no layers")
    # [L, D, S]: every layer lists the same devices, every device the same number of experts
    # (whole numbers: _placement refuses the rest).
    grid = _rectangular(rows, "layer_list[].device_list[].device_expert", (3,))
    if share is not None:
        share = _rectangular(share, "eplb_rt.slot_share", (2,))
    return _placement(grid.reshape(len(rows), -1), grid.shape[1], num_experts, share)


def _integer(value: object, what: str) -> int:
    """``value`` if it is a JSON integer (not a bool, a float or a string), else a
    ``ValueError`` naming ``what``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{what} must be an integer, got {value!r}")
    return value


def _listed(items: object, key: str, what: str) -> list:
    """The list ``items``, in its order, once each object's ``key``, where it has one, is
    checked: integers that differ (a file whose ids repeat is not one vllm-ascend wrote).
    vllm-ascend's loader reads no id, and maps written without them load there."""
    if not isinstance(items, list):
        raise ValueError(f"{what} must be a list, got {type(items).__name__}")
    ids = [_integer(item[key], f"{what}[{i}].{key}") for i, item in enumerate(items) if key in item]
    if len(set(ids)) != len(ids):
        twice = sorted({i for i in ids if ids.count(i) > 1})
        raise ValueError(f"{what} has {key} {twice[0]} more than once")
    return items


def to_sglang(placement: Placement) -> dict:
    """SGLang's mapping document ``{"physical_to_logical_map": [L][P]}`` (uniform shares only).

    SGLang splits an expert's tokens evenly over its replicas, so a placement with other shares
    cannot be expressed; that is an error rather than a silent change of balance.
    """
    if not placement.is_uniform:
        raise ValueError(
            "SGLang's physical_to_logical_map has no replica shares; this placement splits "
            "tokens unevenly (no engine applies replica shares: plan without shares for an "
            "engine; the vllm-ascend format keeps them for eplb_rt's own runtime)"
        )
    return {SGLANG_MAP_KEY: placement.phy2log.tolist()}


def from_sglang(doc: object, num_ranks: int, num_experts: int | None = None) -> Placement:
    """Read SGLang's mapping document; ``num_ranks`` is SGLang's ``ep_size``."""
    check_count("num_ranks", num_ranks)
    check_count("num_experts", num_experts, optional=True)
    return _placement(
        _rectangular(_key(doc, SGLANG_MAP_KEY), SGLANG_MAP_KEY, (2,)), num_ranks, num_experts
    )


def to_logical_count(load: np.ndarray) -> dict:
    """SGLang's statistics document ``{"logical_count": [L][E]}`` (``T > 1``: ``[T][L][E]``)."""
    arr = check_load(load)
    return {SGLANG_COUNT_KEY: (arr[0] if arr.shape[0] == 1 else arr).tolist()}


def from_logical_count(doc: object) -> np.ndarray:
    """Read SGLang's statistics document; returns ``[T, L, E] float64``."""
    value = _rectangular(_key(doc, SGLANG_COUNT_KEY), SGLANG_COUNT_KEY, (2, 3))
    return check_load(value, name=SGLANG_COUNT_KEY)


# --------------------------------------------------------------------------------- files
def read_placement(
    path: str | os.PathLike,
    fmt: str | None = None,
    num_ranks: int | None = None,
    num_experts: int | None = None,
) -> Placement:
    """Read a placement file in ``fmt`` (default: ``npy`` for ``.npy``; for JSON, ``sglang``
    when the document is SGLang's mapping, else ``vllm-ascend``).

    ``num_ranks`` is required for ``sglang`` and ``npy`` and checked against ``vllm-ascend``
    files; ``num_experts`` overrides the default (largest id + 1), except in a vllm-ascend map
    eplb_rt wrote, which records its count: there it must match.
    """
    path = os.fspath(path)
    check_count("num_ranks", num_ranks, optional=True)
    check_count("num_experts", num_experts, optional=True)
    if fmt is None and is_npy(path):
        fmt = "npy"
    format_kind(fmt or "vllm-ascend", "placement")
    try:
        doc = None
        if fmt is None:  # JSON: told by its keys
            doc = _read_json(path)
            sglang = isinstance(doc, dict) and SGLANG_MAP_KEY in doc and "layer_list" not in doc
            fmt = "sglang" if sglang else "vllm-ascend"
        if fmt != "vllm-ascend" and num_ranks is None:
            raise ValueError(
                f"the {fmt} format does not record the rank count; pass num_ranks "
                "(--ranks D on the command line)"
            )
        if fmt == "npy":
            placement = _placement(_read_array(path), num_ranks, num_experts)
        else:
            doc = _read_json(path) if doc is None else doc
            if fmt == "sglang":
                placement = from_sglang(doc, num_ranks, num_experts)
            else:
                placement = from_vllm_ascend(doc, num_experts)
        if num_ranks is not None and placement.num_ranks != num_ranks:
            raise ValueError(
                f"the file places experts on {placement.num_ranks} ranks, expected {num_ranks}"
            )
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from None
    return placement


def write_placement(placement: Placement, path: str | os.PathLike, fmt: str | None = None) -> None:
    """Write ``placement`` in ``fmt`` (default: ``npy`` for ``.npy``, else ``vllm-ascend``)."""
    path = os.fspath(path)
    if not isinstance(placement, Placement):
        raise TypeError(f"placement must be a Placement, got {type(placement).__name__}")
    if placement.num_layers == 0:
        # Every reader refuses a placement of no layers: what is written must read back.
        raise ValueError(f"{path}: a placement of 0 layers cannot be written (nothing to serve)")
    fmt = fmt or ("npy" if is_npy(path) else "vllm-ascend")
    format_kind(fmt, "placement")
    if is_npy(path) != (fmt == "npy"):
        # read_placement reads a .npy path as phy2log and any other as JSON.
        where = "a .npy file" if fmt == "npy" else "a file not named .npy (e.g. .json)"
        raise ValueError(f"{path}: a placement in {fmt!r} is written to {where}, to read back")
    if fmt == "npy":
        if not placement.is_uniform:
            raise ValueError(f"{path}: a phy2log .npy keeps no replica shares; use vllm-ascend")
        _write_npy(path, placement.phy2log)
        return
    try:
        doc = to_sglang(placement) if fmt == "sglang" else to_vllm_ascend(placement)
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from None
    write_json(path, doc)


def is_npy(path: str | os.PathLike) -> bool:
    """Whether ``path`` names a ``.npy`` file (any case: ``.NPY`` too, as the loads' readers)."""
    return os.fspath(path).lower().endswith(".npy")


def read_load(path: str | os.PathLike, fmt: str = "load") -> np.ndarray:
    """Read a load file in ``fmt`` (one of :data:`LOAD_FORMATS`); returns ``[T, L, E] float64``."""
    path = os.fspath(path)
    format_kind(fmt, "load")
    suffix = os.path.splitext(path)[1].lower()
    try:
        if suffix == ".pt":
            return from_logical_count(_read_torch(path, SGLANG_COUNT_KEY))
        if fmt == "sglang-count" or suffix == ".json":
            return from_logical_count(_read_json(path))
        if suffix in (".npy", ".npz"):
            return check_load(_read_array(path))
        raise ValueError(f"unknown load file type {suffix!r}; expected .npy, .npz, .json or .pt")
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from None


def read_loads(paths: Sequence[str | os.PathLike]) -> np.ndarray:
    """Read several load files (same ``[L, E]``) stacked along ``T``: ``[sum T, L, E]``."""
    if isinstance(paths, (str, bytes, os.PathLike)):
        raise TypeError(f"paths must be a list of load files, got the one path {paths!r}")
    if not paths:
        raise ValueError("no load file given")
    arrays = [read_load(p) for p in paths]
    for path, arr in zip(paths, arrays, strict=True):
        if arr.shape[1:] != arrays[0].shape[1:]:
            raise ValueError(
                f"{os.fspath(path)}: load has [L, E] = {list(arr.shape[1:])}, but "
                f"{os.fspath(paths[0])} has {list(arrays[0].shape[1:])}"
            )
    return np.concatenate(arrays, axis=0)


def output_suffix(fmt: str) -> str:
    """The suffix a file written in ``fmt`` must have for the readers to tell its format:
    ``.npy`` for ``npy`` and ``load``, else ``.json``."""
    format_kind(fmt)
    return ".npy" if fmt in ("npy", "load") else ".json"


def write_load(load: np.ndarray, path: str | os.PathLike, fmt: str = "load") -> None:
    """Write ``load`` (``[L, E]`` or ``[T, L, E]``) to ``path`` in ``fmt``; ``path`` must end in
    :func:`output_suffix` (:func:`read_load` tells a load's format by it)."""
    path = os.fspath(path)
    format_kind(fmt, "load")
    suffix = output_suffix(fmt)
    if not path.lower().endswith(suffix):
        raise ValueError(f"{path}: a load in {fmt!r} is written to a {suffix} file")
    if fmt == "load":
        _write_npy(path, check_load(load))
        return
    write_json(path, to_logical_count(load))


def check_folder(path: str | os.PathLike, what: str) -> None:
    """A ``ValueError`` naming ``what`` where :func:`make_folder` could not make (or write into)
    the folder ``path``; nothing is made: the nearest part of the path that exists must be a
    folder this process may write into."""
    probe = os.path.abspath(os.fspath(path))
    while not os.path.exists(probe) and os.path.dirname(probe) != probe:
        probe = os.path.dirname(probe)
    why = None
    if not os.path.isdir(probe):
        why = f"{probe} is not a directory"
    elif not os.access(probe, os.W_OK | os.X_OK):
        why = f"{probe} is not writable"
    if why:
        raise ValueError(f"{what} {os.fspath(path)!r}: cannot make the folder ({why})")


def make_folder(path: str | os.PathLike, what: str) -> None:
    """Make the folder ``path`` (and its parents) unless it exists; a ``ValueError`` naming
    ``what`` (the setting that gave it) where it cannot be made."""
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as err:
        raise ValueError(
            f"{what} {os.fspath(path)!r}: cannot make the folder ({err.strerror or err})"
        ) from None


# --------------------------------------------------------------------------------- dense layers
def add_dense_layers(item: Placement | np.ndarray, count: int) -> Placement | np.ndarray:
    """Prepend ``count`` dense layers, as SGLang indexes layers (all of the model's layers).

    A placement gets trivial rows (slot ``p`` holds expert ``p mod E``, what SGLang builds for a
    layer it does not balance); a load ``[T, L, E]`` gets rows of zeros.
    """
    count = check_count("dense layer count", count, 0)
    if isinstance(item, Placement):
        trivial = Placement.initial(count, item.num_experts, item.topology()) if count else None
        return item if trivial is None else Placement.stack([trivial, item])
    load = check_load(item)
    return np.concatenate([np.zeros((load.shape[0], count, load.shape[2])), load], axis=1)


def drop_dense_layers(item: Placement | np.ndarray, count: int) -> Placement | np.ndarray:
    """Remove the first ``count`` layers; a load's dropped rows must be all zero (a row with
    tokens is a MoE layer, and dropping it would shift every layer after it)."""
    count = check_count("dense layer count", count, 0)
    if count == 0:
        return item
    if not isinstance(item, Placement):
        item = check_load(item)
    layers = item.num_layers if isinstance(item, Placement) else item.shape[1]
    if count >= layers:
        raise ValueError(f"cannot drop {count} dense layers from {layers} layers")
    if isinstance(item, Placement):
        # Not checked: SGLang re-balances its dense layers too (on no load), so their rows in a
        # real file need not be the trivial ones add_dense_layers writes.
        return item.select_layers(np.arange(count, layers))
    loaded = np.flatnonzero(item[:, :count].sum(axis=(0, 2)))
    if loaded.size:
        raise ValueError(
            f"layer {loaded[0]} has load, so it is not dense; check --dense-layers ({count})"
        )
    return item[:, count:]


# --------------------------------------------------------------------------------- helpers
def _key(doc: object, key: str) -> object:
    if not isinstance(doc, dict) or key not in doc:
        keys = sorted(doc) if isinstance(doc, dict) else type(doc).__name__
        raise ValueError(f"expected an object (a dict) with key {key!r}, got {keys}")
    return doc[key]


def _placement(
    p2l: np.ndarray, num_ranks: int, num_experts: int | None, share: np.ndarray | None = None
) -> Placement:
    """A validated placement from a ``phy2log`` array read from a file."""
    if p2l.ndim != 2:
        raise ValueError(f"phy2log must be [L, P], got shape {p2l.shape}")
    if p2l.size == 0:
        raise ValueError(f"phy2log is empty: shape {p2l.shape}")
    if not np.issubdtype(p2l.dtype, np.integer):
        real = p2l.astype(np.float64) if np.issubdtype(p2l.dtype, np.floating) else None
        # Whole numbers below 2^31 only: a cast of anything else would wrap or round.
        if real is None or not np.array_equal(real, np.round(real)) or abs(real).max() >= 2**31:
            raise ValueError(f"phy2log must hold integer expert ids, got dtype {p2l.dtype}")
    experts = int(p2l.max()) + 1 if num_experts is None else num_experts
    if not 1 <= experts <= p2l.shape[1]:
        # Checked before Placement builds [L, E] tables, so a huge id cannot exhaust memory.
        raise ValueError(f"{experts} experts cannot fill {p2l.shape[1]} slots per layer")
    # Integer ids as read: Placement refuses those past int32 by their values (a cast here
    # would wrap 2**64 - 1 to -1).
    ids = p2l if np.issubdtype(p2l.dtype, np.integer) else p2l.astype(np.int64)
    return Placement(ids, experts, num_ranks, share)


def _rectangular(value: object, key: str, ndims: tuple[int, ...]) -> np.ndarray:
    """``value`` as a real array with one of ``ndims`` dimensions, or a ``ValueError``."""
    try:
        arr = np.array(value)
    except (ValueError, OverflowError):  # numpy refuses ragged nesting
        arr = np.array(None)
    if arr.dtype == object:
        huge = _huge_integer(value)
        if huge is not None:  # numpy keeps such an integer a Python object: not raggedness
            raise ValueError(f"{key} holds {huge}, past the 64-bit integers")
        raise ValueError(f"{key} is not rectangular: rows differ in length or hold non-numbers")
    if arr.ndim not in ndims:
        raise ValueError(
            f"{key} must have {' or '.join(map(str, ndims))} dimensions, got {arr.ndim}"
        )
    if arr.size == 0 or arr.dtype.kind not in "iuf":
        raise ValueError(f"{key} must hold numbers, got {arr.dtype} with shape {arr.shape}")
    if _holds_bool(value):  # numpy reads [true, 5] as [1, 5] and [true, 2.5] as [1.0, 2.5]
        raise ValueError(f"{key} must hold numbers, got true or false among them")
    return arr


def _huge_integer(value: object) -> int | None:
    """The first integer of the nested lists ``value`` that no 64-bit integer holds, if any."""
    if isinstance(value, int) and not is_bool(value):
        return value if not -(2**63) <= value < 2**64 else None
    if isinstance(value, (list, tuple)):
        for item in value:
            huge = _huge_integer(item)
            if huge is not None:
                return huge
    return None


def _holds_bool(value: object) -> bool:
    """Whether the nested lists ``value`` hold a bool (JSON ``true`` / ``false``)."""
    if is_bool(value):
        return True
    if isinstance(value, (list, tuple)):
        return any(_holds_bool(item) for item in value)
    return False


def _read_json(path: str) -> object:
    try:
        with open(path, "rb") as f:
            return json.loads(f.read().decode("utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"not valid JSON ({err})") from None
    except UnicodeDecodeError as err:
        raise ValueError(f"not a text JSON file ({err.reason})") from None
    except RecursionError:
        raise ValueError("not valid JSON (nested too deeply)") from None


def _read_torch(path: str, key: str) -> object:
    """A ``torch.save`` file loaded with ``weights_only`` (tensors and plain values, no code
    run): what SGLang's expert-distribution recorder dumps (``{"rank", "logical_count", ...}``,
    saved from the device). Returns ``{key: value}`` with the value's tensors (also in lists)
    as numpy arrays on the host; the other entries are not read (the recorder may add tensors
    numpy cannot hold), and a file that is not a dict is returned as it is."""
    import torch  # this format only: the rest of the module reads files without torch

    with open(path, "rb") as f:  # a missing file is the caller's OSError, as for the others
        try:
            with warnings.catch_warnings():  # the error says it: one line, not torch's three
                warnings.simplefilter("ignore")
                data = torch.load(f, map_location="cpu", weights_only=True)
        except Exception as err:
            # Any: junk bytes reach the unpickler's KeyError, IndexError...; a file cut short
            # can fail in the zip reader's seek (OSError). Not torch's advice to load it with
            # weights_only=False: that runs the file's code, and no eplb-rt flag does it.
            first = _first_line(err)
            refused = str(err).partition("WeightsUnpickler error:")[2].strip()
            if refused:  # what the weights-only unpickler refused, not its advice
                first = f"a weights-only load refuses it: {refused.splitlines()[0]}"
            raise ValueError(f"not a torch.save file of tensors ({first})") from None
    if not isinstance(data, dict) or key not in data:
        return data

    def host(value):
        if isinstance(value, (list, tuple)):
            return [host(item) for item in value]
        if not isinstance(value, torch.Tensor):
            return value
        try:
            value = value.detach().to_dense() if value.layout != torch.strided else value.detach()
            # numpy has no bfloat16 (a recorder may count in the model's dtype)
            return (value.double() if value.is_floating_point() else value).numpy()
        except (TypeError, RuntimeError, NotImplementedError) as err:
            first = str(err).strip().splitlines()[0]
            raise ValueError(
                f"{key} holds a {value.dtype} tensor numpy cannot read ({first})"
            ) from None

    return {key: host(data[key])}


def _read_array(path: str) -> np.ndarray:
    """A ``.npy`` array, or the :data:`NPZ_KEYS` array of a ``.npz`` archive."""
    # Our own handle: numpy leaks the one it opens when a corrupt archive fails to parse.
    with open(path, "rb") as f:
        magic = f.read(6)
        if magic != b"\x93NUMPY" and not magic.startswith(b"PK\x03\x04"):
            raise ValueError(f"not a .npy array or .npz archive (starts with {magic!r})")
        f.seek(0)
        try:
            data = np.load(f, allow_pickle=False)
            if isinstance(data, np.ndarray):
                return _real(data)
            with data:
                key = next((k for k in NPZ_KEYS if k in data.files), None)
                if key is not None:
                    member = data[key]
                    if not isinstance(member, np.ndarray):  # numpy gives such a member's bytes
                        raise ValueError(f"{key} is not an .npy array")
                    return _real(member)
                found = data.files
        except _REFUSED_ARRAY as err:
            raise ValueError(f"not a numeric .npy array or .npz archive ({err})") from None
        except MemoryError:  # a header that asks for more than there is: said as it is
            raise
        except Exception as err:
            # Any other: a member compressed or encrypted as zipfile cannot read
            # (NotImplementedError, RuntimeError), a header numpy's parser chokes on.
            raise ValueError(
                f"not a numeric .npy array or .npz archive ({_first_line(err)})"
            ) from None
    raise ValueError(f".npz has no key {' or '.join(NPZ_KEYS)}; it has {found}")


_REFUSED_ARRAY = (ValueError, EOFError, zipfile.BadZipFile, zlib.error)


def _first_line(err: BaseException) -> str:
    """An error's message in one line (its first), or its type's name where it has none."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _real(arr: np.ndarray) -> np.ndarray:
    # Not bools: a count file of true / false is no file of counts (JSON's are refused too).
    if arr.dtype.kind not in "iuf":
        raise ValueError(f"expected an array of real numbers, got dtype {arr.dtype}")
    return arr


def _write_npy(path: str, arr: np.ndarray) -> None:
    # np.save appends ".npy" to other names; write through a handle so the file is the path given.
    write_file(path, lambda f: np.save(f, arr))


def write_json(path: str | os.PathLike, doc: object, **options: Any) -> None:
    """``doc`` as JSON (``json.dumps``' ``options``) at ``path``, by :func:`write_file`."""
    text = json.dumps(doc, **options)  # an error here writes nothing
    write_file(path, lambda f: f.write(text.encode()))


def write_file(path: str | os.PathLike, write: Callable[[BinaryIO], object]) -> None:
    """``write(f)`` into a new file beside ``path`` (through a link: beside its target), synced
    and then moved onto it at once: a write that fails (a full disk, a quota) leaves ``path``
    as it was, not cut short, and a reader (an engine loading the runtime's export) never sees
    half a file. A new file gets the mode ``open`` gives it (``0o666`` less the umask), a file
    replaced keeps its mode. Raises ``OSError`` naming ``path``, as ``open`` would: where it
    may not be written (read-only, a link loop), and where the write fails."""
    path = os.fspath(path)
    target = os.path.realpath(path)
    if os.path.islink(target):  # realpath stops at a loop of links
        raise OSError(errno.ELOOP, os.strerror(errno.ELOOP), path)
    exists = os.path.exists(target)
    if exists and not os.access(target, os.W_OK):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), path)
    folder, name = os.path.split(target)
    # Short enough for any name the folder takes (255 bytes), unique among writers.
    temporary = os.path.join(folder, f".{name[:200]}.{os.getpid()}.{os.urandom(4).hex()}.tmp")
    try:
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        try:
            with os.fdopen(fd, "wb") as f:
                write(f)
                f.flush()
                os.fsync(f.fileno())
            if exists:
                shutil.copymode(target, temporary)
            os.replace(temporary, target)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
            raise
    except OSError as err:
        if err.filename == path:
            raise
        if err.errno is None:
            raise OSError(f"{path}: cannot write ({err})") from None
        raise type(err)(err.errno, err.strerror, path) from None
