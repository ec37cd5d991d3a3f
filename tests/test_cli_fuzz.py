"""Fuzzing the command line's file readers: any input gets a result or one error line, never a
traceback.

Every example goes through ``eplb_rt.cli.main`` in this process (``convert``, which reads loads
and placements with the same :mod:`eplb_rt.formats` readers as ``plan``, ``score`` and
``simulate``). Accepted: exit 0 with an output file that reads back, or exit 2 with exactly one
``eplb-rt convert: error: ...`` line. Anything else, an exception escaping ``main`` included,
fails the test.
"""

from __future__ import annotations

import io
import json
import tempfile
import zipfile
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from eplb_rt import formats
from eplb_rt.cli import main
from eplb_rt.placement import Placement, Topology

FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# (reader, format of IN, extra flags, format of OUT, suffix of OUT)
PLACEMENT_READERS = [
    ("vllm-ascend", [], "vllm-ascend", ".json"),
    ("sglang", ["--ranks", "2"], "vllm-ascend", ".json"),
    ("npy", ["--ranks", "2"], "vllm-ascend", ".json"),
]
LOAD_READERS = [("load", [], "sglang-count", ".json"), ("sglang-count", [], "load", ".npy")]
KEYS = [
    "moe_layer_count",
    "layer_list",
    "layer_id",
    "device_count",
    "device_list",
    "device_id",
    "device_expert",
    "eplb_rt",
    "num_experts",
    "slot_share",
    formats.SGLANG_MAP_KEY,
    formats.SGLANG_COUNT_KEY,
]
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=4),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=3), inner, max_size=4)
    ),
    max_leaves=24,
)


def convert(src: Path, fmt: str, extra: list[str], dst_fmt: str, suffix: str) -> None:
    """Run ``eplb-rt convert`` on ``src`` and check the outcome (see the module docstring)."""
    out, err = io.StringIO(), io.StringIO()
    dst = src.with_name(f"out{suffix}")
    dst.unlink(missing_ok=True)
    with redirect_stdout(out), redirect_stderr(err):
        code = main(["convert", "--from", fmt, "--to", dst_fmt, str(src), str(dst), *extra])
    if code == 0:
        assert err.getvalue() == ""
        if formats.format_kind(dst_fmt) == "placement":
            formats.read_placement(dst, dst_fmt)
        else:
            formats.read_load(dst, dst_fmt)
        return
    assert code == 2, (code, err.getvalue())
    lines = err.getvalue().splitlines()
    assert len(lines) == 1 and lines[0].startswith("eplb-rt convert: error: "), lines
    assert out.getvalue() == ""
    assert not dst.exists()


def check_all(content: bytes, suffix: str, readers) -> None:
    with tempfile.TemporaryDirectory() as folder:
        src = Path(folder) / f"in{suffix}"
        src.write_bytes(content)
        for fmt, extra, dst_fmt, out_suffix in readers:
            convert(src, fmt, extra, dst_fmt, out_suffix)


def npy_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    return buf.getvalue()


def npz_bytes(arrays: dict) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def placement_doc(draw, fmt: str) -> object:
    """A valid document of ``fmt`` for a small placement (2 ranks) or load."""
    experts = draw(st.integers(1, 6))
    slots = draw(st.integers((experts + 1) // 2, experts))
    layers = draw(st.integers(1, 3))
    placement = Placement.initial(layers, experts, Topology(2, slots))
    if fmt == "vllm-ascend":
        return formats.to_vllm_ascend(placement)
    if fmt == "sglang":
        return formats.to_sglang(placement)
    return formats.to_logical_count(np.arange(layers * experts, dtype=float).reshape(layers, -1))


@st.composite
def mutated_documents(draw) -> object:
    """A valid document of a random format with one value somewhere replaced."""
    doc = placement_doc(draw, draw(st.sampled_from(["vllm-ascend", "sglang", "sglang-count"])))
    paths = []

    def walk(node, path):
        paths.append(path)
        if isinstance(node, (dict, list)):
            for key, child in node.items() if isinstance(node, dict) else enumerate(node):
                walk(child, (*path, key))

    walk(doc, ())
    path = draw(st.sampled_from(paths))
    value = draw(json_values)
    if not path:
        return value
    node = doc
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return doc


@FUZZ
@given(content=st.binary(max_size=300), suffix=st.sampled_from([".npy", ".npz", ".json", ".bin"]))
def test_random_bytes(content, suffix):
    check_all(content, suffix, PLACEMENT_READERS + LOAD_READERS)


@FUZZ
@given(doc=json_values | mutated_documents())
def test_json_documents(doc):
    check_all(json.dumps(doc).encode(), ".json", PLACEMENT_READERS + LOAD_READERS)


arrays = hnp.arrays(
    dtype=hnp.integer_dtypes()
    | hnp.unsigned_integer_dtypes()
    | hnp.floating_dtypes()
    | hnp.complex_number_dtypes()
    | hnp.boolean_dtypes()
    | hnp.byte_string_dtypes(max_len=3)
    | hnp.datetime64_dtypes()
    | hnp.timedelta64_dtypes(),
    shape=hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=3),
)


def array_files(arr: np.ndarray, key: str) -> list[tuple[str, bytes]]:
    return [(".npy", npy_bytes(arr)), (".npz", npz_bytes({key: arr}))]


@FUZZ
@given(arr=arrays, key=st.sampled_from(["counts", "load", "x"]))
def test_arrays_of_any_shape_and_dtype(arr, key):
    for suffix, content in array_files(arr, key):
        check_all(content, suffix, [*PLACEMENT_READERS[2:], *LOAD_READERS[:1]])


@FUZZ
@given(arr=arrays, cut=st.integers(0, 400))
def test_truncated_array_files(arr, cut):
    for suffix, content in array_files(arr, "counts"):
        check_all(content[:cut], suffix, [*PLACEMENT_READERS[2:], *LOAD_READERS[:1]])


def test_npz_with_a_corrupt_member():
    # A valid zip directory whose member is not an array: numpy fails while reading the member.
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as archive:
        archive.writestr("counts.npy", b"\x93NUMPY\x01\x00garbage")
    check_all(buf.getvalue(), ".npz", LOAD_READERS[:1])
