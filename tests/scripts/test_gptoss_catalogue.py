"""`scripts/gptoss_catalogue.py`: a category's buckets summed, as `traces.gptoss` reads one."""

from __future__ import annotations

import json

import numpy as np
import pytest

from scripts import gptoss_catalogue as catalogue


def _bucket(rng, prompts, think_tokens, answer_tokens=None):
    def table():
        return {
            f"layer_{layer}": {
                str(e): {"count_frequency": float(rng.random()), "prob_density": 0.1}
                for e in range(32)
                if rng.random() > 0.1  # an expert without hits may be absent
            }
            for layer in range(24)
        }

    doc = {
        "sample_count": prompts,
        "num_think_tokens": think_tokens,
        "think_expert_analytics": table(),
    }
    if answer_tokens is not None:
        doc["num_answer_tokens"] = answer_tokens
        doc["answer_expert_analytics"] = table()
    return doc


def _tree(tmp_path, rng):
    """Every benchmark with one category; ``mmlu_test/anatomy`` of two buckets, one answered."""
    docs = {}
    for benchmark in catalogue.BENCHMARKS:
        folder = tmp_path / "data" / benchmark / "anatomy"
        folder.mkdir(parents=True)
        buckets = {"True_False": _bucket(rng, 7, 100.0, 20.0)}
        if benchmark == "mmlu_test":
            buckets["False_False"] = _bucket(rng, 5, 512.0)
        for flags, doc in buckets.items():
            (folder / f"{flags}.json").write_text(json.dumps(doc))
            (folder / f"{flags}_examples.json").write_text(json.dumps({"not": "statistics"}))
        docs[benchmark] = buckets
    return docs


def _expected(doc, phase):
    load = np.zeros((24, 32))
    for layer in range(24):
        for e, stats in doc[f"{phase}_expert_analytics"][f"layer_{layer}"].items():
            load[layer, int(e)] = stats["count_frequency"]
    return load * doc["sample_count"] * doc[f"num_{phase}_tokens"]


def test_a_category_sums_its_buckets_phase_by_phase(tmp_path):
    docs = _tree(tmp_path, np.random.default_rng(0))
    out = catalogue.build(tmp_path)
    names = list(out["names"])
    assert names == sorted(f"{b}/anatomy" for b in catalogue.BENCHMARKS)
    row = names.index("mmlu_test/anatomy")
    buckets = docs["mmlu_test"]
    think = _expected(buckets["True_False"], "think") + _expected(buckets["False_False"], "think")
    np.testing.assert_allclose(out["think"][row], think)
    # only one bucket reached the answer: the other adds nothing to it
    np.testing.assert_allclose(out["answer"][row], _expected(buckets["True_False"], "answer"))
    assert (out["think_prompts"][row], out["answer_prompts"][row]) == (12, 7)
    other = names.index("gpqa_main/anatomy")
    np.testing.assert_allclose(
        out["think"][other], _expected(docs["gpqa_main"]["True_False"], "think")
    )
    assert out["think"].shape == out["answer"].shape == (4, 24, 32)


def test_a_category_without_answers_has_a_zero_answer_row(tmp_path):
    rng = np.random.default_rng(1)
    _tree(tmp_path, rng)
    folder = tmp_path / "data" / "sorry_bench_base" / "Unanswered"
    folder.mkdir()
    (folder / "False_False.json").write_text(json.dumps(_bucket(rng, 10, 514.0)))
    out = catalogue.build(tmp_path)
    row = list(out["names"]).index("sorry_bench_base/Unanswered")
    assert out["answer_prompts"][row] == 0 and not out["answer"][row].any()
    assert out["think_prompts"][row] == 10 and out["think"][row].any()


def test_a_missing_benchmark_is_named(tmp_path):
    _tree(tmp_path, np.random.default_rng(2))
    for path in (tmp_path / "data" / "mmlu_pro_test").rglob("*.json"):
        path.unlink()
    with pytest.raises(ValueError, match="mmlu_pro_test: no statistics files"):
        catalogue.build(tmp_path)


def test_main_writes_the_arrays(tmp_path, capsys):
    _tree(tmp_path, np.random.default_rng(3))
    out = tmp_path / "catalogue.npz"
    catalogue.main([str(tmp_path), "--out", str(out)])
    assert "catalogue.npz: 4 categories" in capsys.readouterr().out
    built = catalogue.build(tmp_path)
    assert sorted(built) == sorted(["names", "think", "answer", "think_prompts", "answer_prompts"])
    with np.load(out) as found:
        assert sorted(found.files) == sorted(built)
        for key, array in built.items():
            np.testing.assert_array_equal(found[key], array)
