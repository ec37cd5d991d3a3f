"""Every file format of eplb_rt.formats: round trips, documents, and the errors bad files get."""

from __future__ import annotations

import json
import os
import pickle
import warnings

import numpy as np
import pytest
import torch

from eplb_rt import formats
from eplb_rt.placement import Placement, Topology


def _placement(num_layers: int, num_experts: int, ranks: int, slots: int, seed: int = 0):
    """A valid placement with a different random arrangement of slots in each layer."""
    rng = np.random.default_rng(seed)
    topo = Topology(ranks, slots)
    rows = []
    for _ in range(num_layers):
        while True:
            extra = rng.choice(num_experts, topo.num_slots - num_experts)
            row = rng.permutation(np.concatenate([np.arange(num_experts), extra]))
            if all(len(set(r)) == slots for r in row.reshape(ranks, slots)):
                rows.append(row)
                break
    return Placement(np.array(rows), num_experts, ranks)


SHAPES = [(1, 1, 1, 1), (3, 5, 3, 2), (2, 7, 4, 2), (4, 13, 5, 3)]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("fmt", formats.PLACEMENT_FORMATS)
def test_placement_round_trip(tmp_path, fmt, shape):
    layers, experts, ranks, slots = shape
    placement = _placement(layers, experts, ranks, slots)
    path = tmp_path / f"p.{'npy' if fmt == 'npy' else 'json'}"
    formats.write_placement(placement, path, fmt)
    back = formats.read_placement(path, fmt, num_ranks=ranks, num_experts=experts)
    assert back == placement
    np.testing.assert_array_equal(back.phy2log, placement.phy2log)


def test_sglang_document_has_only_the_mapping_key(tmp_path):
    # SGLang passes the document's keys as keyword arguments: anything else breaks it.
    placement = _placement(2, 5, 3, 2)
    path = tmp_path / "map.json"
    formats.write_placement(placement, path, "sglang")
    doc = json.loads(path.read_text())
    assert list(doc) == ["physical_to_logical_map"]
    assert doc["physical_to_logical_map"] == placement.phy2log.tolist()


def test_a_json_placement_is_read_in_the_format_its_keys_show(tmp_path):
    """``score`` and ``plan --previous`` take whatever ``convert`` wrote."""
    placement = _placement(3, 7, 4, 2)
    for fmt in ("sglang", "vllm-ascend"):
        path = tmp_path / f"{fmt}.json"
        formats.write_placement(placement, path, fmt)
        assert formats.read_placement(path, num_ranks=4) == placement
    with pytest.raises(ValueError, match=r"sglang\.json: the sglang format does not record"):
        formats.read_placement(tmp_path / "sglang.json")
    assert formats.read_placement(tmp_path / "vllm-ascend.json") == placement


def test_sglang_refuses_non_uniform_shares():
    placement = Placement(np.array([[0, 1, 0, 2]]), 3, 2)
    share = placement.slot_share.copy()
    share[0, 0], share[0, 2] = 0.25, 0.75
    with pytest.raises(ValueError, match="no replica shares"):
        formats.to_sglang(placement.with_shares(share))


def test_npy_placement_needs_ranks(tmp_path):
    path = tmp_path / "p.npy"
    np.save(path, np.array([[0, 1, 2, 0]], dtype=np.int32))
    with pytest.raises(ValueError, match=r"pass num_ranks \(--ranks D on the command line\)"):
        formats.read_placement(path, "npy")


@pytest.mark.parametrize(
    ("array", "ranks", "message"),
    [
        (np.zeros((2, 3, 4), dtype=np.int32), 2, r"must be \[L, P\], got shape \(2, 3, 4\)"),
        (np.array([[0, 1, 2]]), 2, "3 slots per layer, not a multiple of 2 ranks"),
        (np.array([[0.5, 1.0]]), 1, "integer expert ids"),
        (np.array([[0, 1, 1, 3]]), 2, "expert 2 has no slot"),
        (np.array([[0, 0, 1, 2]]), 2, "rank 0 holds two replicas of expert 0"),
    ],
)
def test_bad_npy_placements(tmp_path, array, ranks, message):
    path = tmp_path / "p.npy"
    np.save(path, array)
    with pytest.raises(ValueError, match=message):
        formats.read_placement(path, "npy", num_ranks=ranks)


def test_experts_option_is_checked(tmp_path):
    path = tmp_path / "p.npy"
    np.save(path, np.array([[0, 1, 2, 3]]))
    with pytest.raises(ValueError, match=r"expert id 3 not in \[0, 3\)"):
        formats.read_placement(path, "npy", num_ranks=2, num_experts=3)


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ({"logical_count": [[1, 2]]}, "key 'physical_to_logical_map', got \\['logical_count'\\]"),
        ([[0, 1]], "object \\(a dict\\) with key 'physical_to_logical_map', got list"),
        ({"physical_to_logical_map": [[0, 1], [0]]}, "not rectangular"),
        ({"physical_to_logical_map": [["a", "b"]]}, "must hold numbers"),
        # Found by the fuzz test: a cast to int64 or int32 would have wrapped these ids.
        ({"physical_to_logical_map": [[-9.223372036854778e18, 0]]}, "integer expert ids"),
        ({"physical_to_logical_map": [[-(2**32), 0]]}, r"fit in int32, got -4294967296\.\.0"),
    ],
)
def test_bad_sglang_documents(tmp_path, doc, message):
    path = tmp_path / "map.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(ValueError, match=message):
        formats.read_placement(path, "sglang", num_ranks=1)


def test_vllm_ascend_rank_count_is_checked(tmp_path):
    path = tmp_path / "map.json"
    formats.write_placement(_placement(2, 5, 3, 2), path, "vllm-ascend")
    with pytest.raises(ValueError, match="3 ranks, expected 2"):
        formats.read_placement(path, "vllm-ascend", num_ranks=2)


def test_not_json(tmp_path):
    path = tmp_path / "map.json"
    path.write_bytes(b"\x93NUMPY garbage")
    with pytest.raises(ValueError, match=r"map\.json: not"):
        formats.read_placement(path, "sglang", num_ranks=1)


@pytest.mark.parametrize("shape", [(1, 1), (3, 7), (4, 2, 5)])
def test_logical_count_round_trip(tmp_path, shape):
    load = np.arange(np.prod(shape), dtype=np.float64).reshape(shape)
    path = tmp_path / "count.json"
    formats.write_load(load, path, "sglang-count")
    doc = json.loads(path.read_text())
    assert list(doc) == ["logical_count"]
    assert np.array(doc["logical_count"]).shape == shape
    back = formats.read_load(path, "sglang-count")
    np.testing.assert_array_equal(back, load.reshape((-1, *shape[-2:])))


def test_sglang_recorder_dump_is_read(tmp_path):
    """SGLang's ``stat`` recorder dumps ``torch.save(dict(rank, logical_count [T, L, E] int32
    tensor, average_utilization_rate_over_window))`` to ``expert_distribution_recorder_*.pt``."""
    counts = torch.randint(0, 50, (4, 3, 8), dtype=torch.int32)
    path = tmp_path / "expert_distribution_recorder_1764000000.0.pt"
    doc = {"rank": 0, "logical_count": counts, "average_utilization_rate_over_window": None}
    torch.save(doc, path)
    for fmt in ("load", "sglang-count"):
        np.testing.assert_array_equal(formats.read_load(path, fmt), counts.numpy())
    torch.save({"logical_count": counts[0]}, path)  # one step, [L, E]
    np.testing.assert_array_equal(formats.read_load(path), counts[:1].numpy())


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_recorder_dump_of_any_float_dtype_and_with_grad_is_read(tmp_path, dtype):
    """A recorder that counts in the model's dtype, or keeps a tensor that requires grad."""
    counts = torch.randint(0, 50, (2, 3, 8)).to(dtype).requires_grad_(True)
    path = tmp_path / "dump.pt"
    torch.save({"logical_count": counts}, path)
    np.testing.assert_array_equal(formats.read_load(path), counts.detach().double().numpy())


class _Code:
    """A pickled object: a load file must never run code to be read."""


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"not a zip", "not a torch.save file of tensors"),
        (b"hello world", "not a torch.save file of tensors"),  # the unpickler's KeyError
        (b"abc", "not a torch.save file of tensors"),  # ... and its IndexError
        ("object", "not a torch.save file of tensors"),
        ("no key", "logical_count"),
        ("protocol 4", r"a weights-only load refuses it: Unsupported operand \d+\)$"),
    ],
)
def test_bad_torch_dumps(tmp_path, content, message):
    path = tmp_path / "dump.pt"
    if content == "object":
        torch.save({"logical_count": _Code()}, path)
    elif content == "no key":
        torch.save({"counts": torch.ones(2, 3)}, path)
    elif content == "protocol 4":  # torch warned (three lines), then advised an unsafe load
        path.write_bytes(pickle.dumps({"logical_count": [[1, 2]]}, protocol=4))
    else:
        path.write_bytes(content)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # none reaches the user
        with pytest.raises(ValueError, match=rf"dump\.pt: .*{message}") as err:
            formats.read_load(path)
    assert "weights_only" not in str(err.value)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ([1, 2, 3], "must have 2 or 3 dimensions, got 1"),
        ([[1, -2]], "negative"),
        ([[1, 2], [3]], "not rectangular"),
    ],
)
def test_bad_logical_count(tmp_path, value, message):
    path = tmp_path / "count.json"
    path.write_text(json.dumps({"logical_count": value}))
    with pytest.raises(ValueError, match=message):
        formats.read_load(path, "sglang-count")


def test_kind_mismatch_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="'sglang-count' is a load format"):
        formats.read_placement(tmp_path / "x.json", "sglang-count")
    with pytest.raises(ValueError, match="unknown format 'pt'"):
        formats.format_kind("pt")


def make(rows, num_experts, num_ranks, share=None) -> Placement:
    return Placement(np.array(rows), num_experts, num_ranks, share)


# ------------------------------------------------------------------------------- files
def test_vllm_ascend_round_trip_uniform(tmp_path):
    p = make([[0, 1, 2, 0, 3, 1], [3, 2, 1, 0, 2, 3]], 4, 3)
    doc = formats.to_vllm_ascend(p)
    assert doc["moe_layer_count"] == 2
    assert doc["layer_list"][1]["device_list"][2] == {"device_id": 2, "device_expert": [2, 3]}
    assert "slot_share" not in doc["eplb_rt"]
    assert formats.from_vllm_ascend(json.loads(json.dumps(doc))) == p
    formats.write_placement(p, tmp_path / "p.json")
    assert formats.read_placement(tmp_path / "p.json") == p
    formats.write_placement(p, tmp_path / "p.npy")
    assert formats.read_placement(tmp_path / "p.npy", num_ranks=3, num_experts=4) == p


def test_vllm_ascend_round_trip_non_uniform(tmp_path):
    share = np.array([[0.3, 0.6, 1.0, 0.7, 1.0, 0.4]])
    p = make([[0, 1, 2, 0, 3, 1]], 4, 3, share)
    formats.write_placement(p, tmp_path / "w.json")
    back = formats.read_placement(tmp_path / "w.json")
    assert back == p
    assert not back.is_uniform
    np.testing.assert_allclose(back.slot_share, share)
    with pytest.raises(ValueError, match="keeps no replica shares"):
        formats.write_placement(p, tmp_path / "w.npy")


def test_from_vllm_ascend_without_extra_field_uses_largest_id():
    doc = formats.to_vllm_ascend(make([[0, 1, 2, 1]], 3, 2))
    del doc["eplb_rt"]
    assert formats.from_vllm_ascend(doc).num_experts == 3
    assert formats.from_vllm_ascend(doc, num_experts=3).num_experts == 3


@pytest.mark.parametrize(
    ("doc", "match"),
    [
        ({}, "not a vllm-ascend expert_map"),
        ([], "not a vllm-ascend expert_map"),
        ({"layer_list": [{"layer_id": 0}]}, "not a vllm-ascend expert_map"),
        ({"moe_layer_count": 0, "layer_list": []}, "no layers"),
        (
            {
                "moe_layer_count": 2,
                "layer_list": [
                    {"layer_id": 0, "device_list": [{"device_id": 0, "device_expert": [0]}]}
                ],
            },
            "moe_layer_count is 2",
        ),
        (
            {
                "layer_list": [
                    {
                        "layer_id": 0,
                        "device_list": [
                            {"device_id": 0, "device_expert": [0, 1]},
                            {"device_id": 1, "device_expert": [1]},
                        ],
                    }
                ]
            },
            "device_expert is not rectangular",
        ),
    ],
)
def test_from_vllm_ascend_errors(doc, match):
    with pytest.raises(ValueError, match=match):
        formats.from_vllm_ascend(doc)


def _layer_0(doc):
    return doc["layer_list"][0]


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (
            lambda doc: _layer_0(doc)["device_list"][0].update(device_expert=[0.9, 1.7]),
            "must hold integer expert ids",
        ),
        (lambda doc: doc["layer_list"][1].update(layer_id=0), "layer_id 0 more than once"),
        (
            lambda doc: _layer_0(doc)["device_list"][1].update(device_id=0),
            r"layer_list\[0\]'s device_list has device_id 0 more than once",
        ),
        (
            lambda doc: _layer_0(doc).update(device_count=3),
            r"layer_list\[0\]'s device_count is 3 but it lists 2 devices",
        ),
        (lambda doc: doc["eplb_rt"].update(num_experts=4.5), "num_experts must be an integer"),
        (lambda doc: _layer_0(doc).update(layer_id="0"), "layer_id must be an integer, got '0'"),
        (lambda doc: _layer_0(doc).update(layer_id=True), "layer_id must be an integer"),
        (lambda doc: doc.update(moe_layer_count=2.0), "moe_layer_count must be an integer"),
        (lambda doc: doc.update(layer_list={}), "layer_list must be a list, got dict"),
    ],
)
def test_from_vllm_ascend_refuses_a_hand_written_mistake(change, match):
    doc = formats.to_vllm_ascend(make([[0, 1, 2, 3], [3, 2, 1, 0]], 4, 2))
    change(doc)
    with pytest.raises(ValueError, match=match):
        formats.from_vllm_ascend(doc)


def test_from_vllm_ascend_takes_layers_and_devices_in_list_order_as_the_engine_does():
    """vllm-ascend's loader serves ``layer_list[i]`` as MoE layer ``i`` and the devices in list
    order; the ids are not read (tests/integrations checks it against that loader)."""
    placement = make([[0, 1, 2, 3], [3, 2, 1, 0]], 4, 2)
    doc = formats.to_vllm_ascend(placement)
    doc["layer_list"].reverse()
    doc["layer_list"][0]["device_list"].reverse()
    assert formats.from_vllm_ascend(doc) == make([[1, 0, 3, 2], [0, 1, 2, 3]], 4, 2)
    whole = formats.to_vllm_ascend(placement)
    whole["layer_list"][0]["device_list"][0]["device_expert"] = [0.0, 1.0]  # whole numbers
    for item, layer_id in zip(whole["layer_list"], (3, 4), strict=True):
        item["layer_id"] = layer_id  # ids counted over all layers, dense ones too
    assert formats.from_vllm_ascend(whole) == placement


def test_a_structure_mistake_says_what_the_document_should_hold():
    for doc in ({"layer_list": [["not a layer"]]}, {"layer_list": [{"layer_id": 0}]}):
        with pytest.raises(ValueError, match="not a vllm-ascend expert_map document") as err:
            formats.from_vllm_ascend(doc)
        assert "Error(" not in str(err.value)  # no Python repr


@pytest.mark.parametrize(
    "doc",
    [
        {"physical_to_logical_map": [[True, False, 2, 3]]},
        {"logical_count": [[True, 5], [3, 4]]},
        {"physical_to_logical_map": [[True, 0.0, 2, 3]]},
        {"logical_count": [[True, 2.5], [3, 4]]},
    ],
    ids=["sglang-map", "logical-count", "sglang-map-floats", "logical-count-floats"],
)
def test_true_and_false_among_numbers_are_refused(tmp_path, doc):
    """numpy reads ``[true, 5]`` as ``[1, 5]``: a JSON bool is no expert id or count."""
    path = tmp_path / "doc.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(ValueError, match="got true or false among them"):
        if "logical_count" in doc:
            formats.read_load(path)
        else:
            formats.read_placement(path, num_ranks=2)


def test_an_upper_case_npy_placement_reads_back(tmp_path):
    placement = make([[0, 1, 2, 3], [3, 2, 1, 0]], 4, 2)
    path = tmp_path / "MAP.NPY"
    formats.write_placement(placement, path)
    assert np.load(path).shape == (2, 4)
    assert formats.read_placement(path, num_ranks=2) == placement


def test_a_dump_is_read_by_its_logical_count_alone(tmp_path):
    """The recorder's other entries may hold tensors numpy cannot (sparse, on no device); a
    list of bfloat16 steps is read as one tensor is, a sparse count as its dense values."""
    counts = torch.randint(0, 50, (2, 3, 8)).float()
    path = tmp_path / "dump.pt"
    nowhere = torch.empty(3, device="meta")
    torch.save({"logical_count": list(counts.bfloat16()), "s": torch.ones(3).to_sparse(),
                "m": nowhere}, path)  # fmt: skip
    np.testing.assert_array_equal(formats.read_load(path), counts.numpy())
    torch.save({"logical_count": counts.to_sparse()}, path)
    np.testing.assert_array_equal(formats.read_load(path), counts.numpy())
    torch.save({"logical_count": nowhere}, path)
    with pytest.raises(ValueError, match=r"dump\.pt: logical_count holds a torch.float32 tensor"):
        formats.read_load(path)


def test_a_dump_cut_short_names_the_file(tmp_path):
    path = tmp_path / "dump.pt"
    torch.save({"logical_count": torch.ones(64, 4, 64)}, path)
    data = path.read_bytes()
    for size in (100, 1000, len(data) // 2, len(data) - 100):
        path.write_bytes(data[:size])
        with pytest.raises(ValueError, match=r"dump\.pt: not a torch.save file of tensors"):
            formats.read_load(path)


@pytest.mark.parametrize(("fmt", "suffix"), [("load", ".npy"), ("sglang-count", ".json")])
def test_a_load_is_written_only_where_it_reads_back(tmp_path, fmt, suffix):
    load = np.arange(24.0).reshape(2, 3, 4)
    for wrong in ("x.json" if suffix == ".npy" else "x.npy", "x"):
        with pytest.raises(ValueError, match=rf"a load in '{fmt}' is written to a \{suffix} file"):
            formats.write_load(load, tmp_path / wrong, fmt)
        assert not (tmp_path / wrong).exists()
    formats.write_load(load, tmp_path / f"x{suffix}", fmt)
    np.testing.assert_array_equal(formats.read_load(tmp_path / f"x{suffix}"), load)


@pytest.mark.parametrize(("fmt", "name"), [("npy", "p.json"), ("sglang", "p.npy"), (None, "p.NPY")])
def test_a_placement_is_written_only_where_it_reads_back(tmp_path, fmt, name):
    placement = make([[0, 1, 2, 3]], 4, 2)
    if fmt is None:  # the suffix picks the format: .npy in any case is read back as npy
        formats.write_placement(placement, tmp_path / name)
        assert formats.read_placement(tmp_path / name, num_ranks=2) == placement
        return
    with pytest.raises(ValueError, match=f"a placement in '{fmt}' is written to"):
        formats.write_placement(placement, tmp_path / name, fmt)
    assert not (tmp_path / name).exists()


def test_read_loads_refuses_one_path_given_as_the_list(tmp_path):
    path = tmp_path / "load.npy"
    np.save(path, np.ones((2, 4)))
    with pytest.raises(TypeError, match="paths must be a list of load files, got the one path"):
        formats.read_loads(str(path))
    assert formats.read_loads([path]).shape == (1, 2, 4)


def test_npy_ids_past_int64_are_named_as_they_are(tmp_path):
    path = tmp_path / "u.npy"
    np.save(path, np.array([[2**64 - 1, 0, 1, 2]], np.uint64))
    with pytest.raises(ValueError, match=r"must fit in int32, got 0\.\.18446744073709551615"):
        formats.read_placement(path, num_ranks=2, num_experts=3)


def test_dense_layers_of_a_two_dimensional_load():
    load = np.array([[0.0, 0, 0], [1, 2, 3]])  # [L, E], as check_load takes it
    np.testing.assert_array_equal(formats.drop_dense_layers(load, 1), [[[1.0, 2, 3]]])
    with pytest.raises(ValueError, match="layer 1 has load"):
        formats.drop_dense_layers(np.vstack([load, load]), 2)


def test_dense_layers_go_first_and_not_every_layer_drops():
    load = np.ones((1, 2, 3))
    out = formats.add_dense_layers(load, 1)  # a checkpoint's dense layers come first
    np.testing.assert_array_equal(out[:, 0], 0)
    np.testing.assert_array_equal(out[:, 1:], load)
    placement = Placement([[0, 1], [0, 1]], 2, 2)
    for item in (np.zeros((1, 2, 3)), placement):
        with pytest.raises(ValueError, match="cannot drop 2"):
            formats.drop_dense_layers(item, 2)


def test_a_recorded_expert_count_below_the_ids_is_refused():
    doc = formats.to_vllm_ascend(Placement([[0, 1, 2, 3]], 4, 2))
    doc["eplb_rt"]["num_experts"] = 2
    with pytest.raises(ValueError, match=r"not in \[0, 2\)"):
        formats.from_vllm_ascend(doc)


def test_a_document_with_both_formats_keys_reads_as_vllm_ascend(tmp_path):
    placement = Placement([[0, 1, 2, 3]], 4, 2)
    doc = formats.to_vllm_ascend(placement)
    doc["physical_to_logical_map"] = [[3, 2, 1, 0]]
    path = tmp_path / "both.json"
    path.write_text(json.dumps(doc))
    assert formats.read_placement(path) == placement


@pytest.mark.parametrize("count", [-1, 1.5, "1", True])
def test_a_dense_layer_count_that_is_not_a_count_is_named(count):
    load = np.array([[[0.0, 0, 0], [1, 2, 3]]])
    placement = Placement.initial(1, 4, Topology(2, 2))
    for item in (load, placement):
        for call in (formats.add_dense_layers, formats.drop_dense_layers):
            with pytest.raises(ValueError, match=rf"an integer >= 0, got {count!r}"):
                call(item, count)


@pytest.mark.parametrize("fmt", ["vllm-ascend", "sglang", "npy"])
def test_sizes_that_are_not_counts_are_named_before_the_file_is_read(tmp_path, fmt):
    path = tmp_path / ("p.npy" if fmt == "npy" else "p.json")
    formats.write_placement(Placement.initial(2, 6, Topology(2, 4)), path, fmt)
    with pytest.raises(ValueError, match=r"^num_experts must be an integer >= 1 or None, got '6'"):
        formats.read_placement(path, fmt, num_ranks=2, num_experts="6")
    with pytest.raises(ValueError, match=r"^num_ranks must be an integer >= 1 or None, got 0"):
        formats.read_placement(path, fmt, num_ranks=0)
    assert formats.read_placement(path, fmt, num_ranks=2, num_experts=6).num_experts == 6


def test_what_cannot_be_read_back_is_not_written(tmp_path):
    with pytest.raises(TypeError, match=r"^placement must be a Placement, got ndarray"):
        formats.write_placement(np.zeros((1, 4), dtype=np.int32), tmp_path / "p.json")
    empty = Placement(np.zeros((0, 4), dtype=np.int64), 4, 2)
    for name in ("p.json", "p.npy"):
        with pytest.raises(ValueError, match=r"a placement of 0 layers cannot be written"):
            formats.write_placement(empty, tmp_path / name)
        assert not (tmp_path / name).exists()


def test_load_errors(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        formats.read_placement(bad)
    np.save(tmp_path / "p.npy", np.zeros((1, 2), dtype=np.int32))
    with pytest.raises(ValueError, match="does not record the rank count"):
        formats.read_placement(tmp_path / "p.npy")
    with pytest.raises(OSError):
        formats.read_placement(tmp_path / "missing.json")


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.uint64, np.int8])
def test_npy_placement_of_any_real_dtype_with_whole_ids(tmp_path, dtype):
    # float16 found by the fuzz test: its range check must not overflow (warnings are errors).
    np.save(tmp_path / "p.npy", np.array([[0, 1, 2, 0]], dtype=dtype))
    placement = formats.read_placement(tmp_path / "p.npy", num_ranks=2)
    assert placement.phy2log.tolist() == [[0, 1, 2, 0]]


def test_vllm_ascend_maps_without_ids_read_as_the_engine_reads_them():
    """vllm-ascend's loader reads no layer or device id, and maps written without them load
    there: they were refused here ("no key 'layer_id'")."""
    placement = make([[0, 1, 2, 3], [3, 2, 1, 0]], 4, 2)
    doc = formats.to_vllm_ascend(placement)
    for layer in doc["layer_list"]:
        del layer["layer_id"]
        for device in layer["device_list"]:
            del device["device_id"]
    assert formats.from_vllm_ascend(doc) == placement
    doc["layer_list"][0]["device_list"][0]["device_id"] = 1
    doc["layer_list"][0]["device_list"][1]["device_id"] = 1  # those given must still differ
    with pytest.raises(ValueError, match="device_id 1 more than once"):
        formats.from_vllm_ascend(doc)


def _full_disk(*args, **kwargs):
    raise OSError(28, "No space left on device")


def _write(name: str, path) -> None:
    if name.startswith("p."):
        formats.write_placement(make([[0, 1, 2, 3]], 4, 2), path)
    else:
        formats.write_load(
            np.ones((2, 3)), path, "load" if name.endswith(".npy") else "sglang-count"
        )


@pytest.mark.parametrize("where", ["as it is flushed", "at the move"])
@pytest.mark.parametrize("name", ["p.json", "p.npy", "load.npy", "load.json"])
def test_a_write_that_fails_leaves_the_file_as_it_was(tmp_path, monkeypatch, name, where):
    """A full disk cut the file short where it was written in place, the old content gone."""
    path = tmp_path / name
    path.write_bytes(b"before")
    # The disk fills as the bytes are flushed, or as the file is moved onto the path.
    failing = "replace" if where == "at the move" else "fsync"
    monkeypatch.setattr(formats.os, failing, _full_disk)
    with pytest.raises(OSError, match=rf"No space left on device: '.*{name}'"):
        _write(name, path)
    assert path.read_bytes() == b"before"
    assert [p.name for p in tmp_path.iterdir()] == [name]  # no temporary file left


def test_a_write_goes_through_a_link_with_the_mode_open_gives(tmp_path):
    target = tmp_path / "real.json"
    target.write_text("{}")
    link = tmp_path / "link.json"
    link.symlink_to(target)
    placement = make([[0, 1, 2, 3]], 4, 2)
    formats.write_placement(placement, link)
    assert link.is_symlink() and formats.read_placement(target) == placement
    umask = os.umask(0)
    os.umask(umask)
    formats.write_placement(placement, tmp_path / "new.json")
    assert (tmp_path / "new.json").stat().st_mode & 0o777 == 0o666 & ~umask
    target.chmod(0o600)  # a file replaced keeps its mode: a private placement stays private
    formats.write_placement(placement, link)
    assert target.stat().st_mode & 0o777 == 0o600


def test_a_write_refuses_what_open_refused(tmp_path, monkeypatch):
    """A read-only file and a loop of links raised in ``open``; a new file moved onto them
    would replace them."""
    placement = make([[0, 1, 2, 3]], 4, 2)
    locked = tmp_path / "locked.json"
    locked.write_text("{}")
    locked.chmod(0o444)
    if os.geteuid() == 0:  # root may write any file: the file says it may not
        access = os.access
        monkeypatch.setattr(os, "access", lambda p, m: os.fspath(p) != str(locked) and access(p, m))
    with pytest.raises(PermissionError, match=r"locked\.json"):
        formats.write_placement(placement, locked)
    assert locked.read_text() == "{}"
    (tmp_path / "a.json").symlink_to(tmp_path / "b.json")
    (tmp_path / "b.json").symlink_to(tmp_path / "a.json")
    with pytest.raises(OSError, match=r"a\.json"):
        formats.write_placement(placement, tmp_path / "a.json")
    assert (tmp_path / "a.json").is_symlink()
    longest = tmp_path / ("p" * 250 + ".json")  # the longest name a folder takes
    formats.write_placement(placement, longest)
    assert formats.read_placement(longest) == placement


def test_a_load_archive_whose_member_is_no_array_or_a_bool_one_is_refused(tmp_path):
    import zipfile

    path = tmp_path / "bad.npz"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("counts.npy", b"no npy header here")
    with pytest.raises(ValueError, match=r"bad.npz: .*counts is not an .npy array"):
        formats.read_load(path)
    np.save(tmp_path / "bool.npy", np.ones((2, 3), dtype=bool))
    with pytest.raises(ValueError, match="expected an array of real numbers, got dtype bool"):
        formats.read_load(tmp_path / "bool.npy")


@pytest.mark.parametrize("key", ["logical_count", "physical_to_logical_map"])
def test_an_integer_past_64_bits_is_named_not_read_as_ragged_rows(tmp_path, key):
    path = tmp_path / "doc.json"
    path.write_text(json.dumps({key: [[10**30, 1, 2, 3], [0, 1, 2, 3]]}))
    with pytest.raises(ValueError, match=f"{key} holds {10**30}, past the 64-bit integers"):
        if key == "logical_count":
            formats.read_load(path)
        else:
            formats.read_placement(path, num_ranks=2)
