"""The benchmarks' trace helpers: leave-one-out folds and their jittered draws, and gpt-oss-20b's
subsets (the six MMLU files and the raw files' larger subsets)."""

import json

import numpy as np
import pytest

from benchmarks import traces


def _workloads():
    rng = np.random.default_rng(3)
    return [rng.poisson(lam, size=(2, 3, 7)).astype(np.float64) for lam in (40.0, 900.0, 25e3)]


def test_leave_one_out_holds_out_each_workload_and_sums_the_others():
    loads = _workloads()
    folds = list(traces.leave_one_out(loads))
    assert len(folds) == 3
    for i, (train, test) in enumerate(folds):
        others = [w.sum(0) for j, w in enumerate(loads) if j != i]
        np.testing.assert_array_equal(train, np.stack(others))
        assert test is loads[i]


def test_jittered_folds_jitter_the_training_loads_only():
    loads = _workloads()
    exact = list(traces.leave_one_out(loads))
    drawn = list(traces.leave_one_out(loads, np.random.default_rng(0)))
    for (train, test), (jtrain, jtest) in zip(exact, drawn, strict=True):
        assert jtest is test
        assert jtrain.shape == train.shape
        assert not np.array_equal(jtrain, train)


@pytest.mark.parametrize("share", [0.1, 1.0])
def test_jitter_keeps_counts_counts_with_a_share_of_their_sampling_noise(share):
    counts = np.full((4, 5, 301), 10_000.0)
    out = traces.jitter(counts, np.random.default_rng(1), share)
    assert np.array_equal(out, np.round(out))
    z = (out - counts) / np.sqrt(counts)
    assert z.std() == pytest.approx(share, rel=0.05)
    assert abs(z.mean()) < 0.01 * max(share, 1.0)
    # Small counts stay non-negative, and zero stays zero.
    small = np.array([[0.0, 1.0, 2.0, 3.0]])
    assert (traces.jitter(small, np.random.default_rng(2)) >= 0).all()
    assert traces.jitter(small, np.random.default_rng(2))[0, 0] == 0


def test_jitter_of_a_load_that_is_not_counts_is_multiplicative():
    load = np.random.default_rng(4).uniform(0.5, 2.0, size=(3, 4, 500))
    out = traces.jitter(load, np.random.default_rng(5))
    ratio = out / load - 1
    assert ratio.std() == pytest.approx(1e-3, rel=0.05)  # a tenth, by default: 0.1 %


def test_jitter_is_a_function_of_the_generator():
    load = _workloads()[1]
    a = traces.jitter(load, np.random.default_rng(7))
    b = traces.jitter(load, np.random.default_rng(7))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, traces.jitter(load, np.random.default_rng(8)))


def test_gptoss_phases_are_those_a_subset_publishes():
    subsets = traces.gptoss_subsets()
    phases = {subset: traces.gptoss_phases(subset) for subset in subsets}
    assert all(found[0] == "think" for found in phases.values())
    answered = [subset for subset, found in phases.items() if "answer" in found]
    assert 0 < len(answered) < len(subsets)  # the shipped subsets have both kinds
    for subset, found in phases.items():
        for phase in traces.GPTOSS_PHASES:
            if phase in found:
                assert traces.gptoss(subset, phase).shape == (1, 24, 32)
            else:
                with pytest.raises(ValueError, match=f"has no {phase} phase"):
                    traces.gptoss(subset, phase)


def test_gptoss_raw_subsets_are_the_raw_files_large_subsets_read_as_the_others():
    raw = traces.gptoss_raw_subsets()
    assert raw == [
        "instruction-following_False_False",
        "instruction-following_True_False",
        "instruction-following_False_True",
        "fact_checking_True_False",
    ]  # the files' subsets of 100 prompts or more, none of the six MMLU ones
    assert not set(raw) & set(traces.gptoss_subsets())
    doc = json.loads((traces.GPTOSS_DIR / traces.GPTOSS_RAW_FILES[0]).read_text())[raw[1]]
    assert traces.gptoss_phases(raw[1]) == ["think", "answer"]
    assert traces.gptoss_phases(raw[0]) == ["think"]
    for phase in traces.GPTOSS_PHASES:
        table = doc[f"{phase}_expert_analytics"]
        scale = doc["sample_count"] * doc[f"num_{phase}_tokens"]
        load = traces.gptoss(raw[1], phase)
        assert load.shape == (1, 24, 32)
        for layer, expert in ((0, 0), (11, 17), (23, 31)):
            share = table[f"layer_{layer}"].get(str(expert), {}).get("count_frequency", 0.0)
            assert load[0, layer, expert] == pytest.approx(share * scale)
    with pytest.raises(ValueError, match="has no answer phase"):
        traces.gptoss(raw[0], "answer")
    with pytest.raises(ValueError, match="unknown gpt-oss-20b subset 'nope'; choose one of"):
        traces.gptoss("nope")


def test_gptoss_raw_subsets_leave_out_the_small_ones(monkeypatch):
    everything = [
        name
        for file in traces.GPTOSS_RAW_FILES
        for name in json.loads((traces.GPTOSS_DIR / file).read_text())
    ]
    assert len(everything) == 8
    monkeypatch.setattr(traces, "GPTOSS_RAW_MIN_SAMPLES", 1)
    assert traces.gptoss_raw_subsets() == everything


def test_the_catalogue_lists_categories_by_their_prompts():
    every = traces.gptoss_catalogue(min_prompts=0)
    assert len(every) == 132 and every == sorted(every)
    assert len(traces.gptoss_catalogue()) == 72  # 57 MMLU, 14 MMLU-Pro, 1 GPQA category
    assert len(traces.gptoss_catalogue(100, "mmlu_pro_test")) == 14
    assert len(traces.gptoss_catalogue(10, "sorry_bench_base")) == 45
    assert traces.gptoss_catalogue(11, "sorry_bench_base") == []  # ten prompts each


def test_a_catalogue_category_holds_its_shipped_bucket():
    # mmlu_pro_test/math sums four prompt buckets, one of them the shipped True_False file
    category = traces.gptoss("mmlu_pro_test/math")
    bucket = traces.gptoss("mmlu_pro_test_math_True_False")
    assert category.shape == bucket.shape == (1, 24, 32)
    assert (category >= bucket - 1e-9).all() and category.sum() > 1.5 * bucket.sum()
    answer = traces.gptoss("mmlu_pro_test/math", "answer")
    assert (answer >= traces.gptoss("mmlu_pro_test_math_True_False", "answer") - 1e-9).all()
    assert traces.gptoss_phases("mmlu_pro_test/math") == ["think", "answer"]


def test_a_catalogue_category_without_answers_or_unknown_is_refused():
    unanswered = [
        name
        for name in traces.gptoss_catalogue(min_prompts=0)
        if traces.gptoss_phases(name) == ["think"]
    ]
    assert unanswered  # some categories never reach an answer within the source's 512 tokens
    with pytest.raises(ValueError, match="has no answer phase"):
        traces.gptoss(unanswered[0], "answer")
    with pytest.raises(ValueError, match="unknown gpt-oss-20b category 'mmlu_test/nope'"):
        traces.gptoss("mmlu_test/nope")
    with pytest.raises(ValueError, match=r"benchmark must be one of .* got 'mmlu'"):
        traces.gptoss_catalogue(100, "mmlu")


def test_a_catalogue_row_is_a_copy():
    load = traces.gptoss("mmlu_test/anatomy")
    total = load.sum()
    load *= 0
    assert traces.gptoss("mmlu_test/anatomy").sum() == total


def test_the_tasks_are_the_six_mmlu_subsets_then_the_raw_ones():
    tasks = traces.gptoss_tasks()
    assert tasks[:6] == traces.gptoss_subsets()
    assert tasks[6:] == traces.gptoss_raw_subsets() != []
