"""``equilibrium``'s hold-out reach: how far a workload not among the episodes lands along their
span, and the push it caps."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks import traces
from eplb_rt.algorithms import warm_up
from eplb_rt.algorithms.episode_rows import holdout_reach, sampling_noise, signal_fraction
from eplb_rt.algorithms.equilibrium import _fresh_plan
from eplb_rt.algorithms.load import normalise


@pytest.fixture(scope="module", autouse=True)
def _compiled():
    warm_up(["equilibrium"])


def _reference(W: np.ndarray) -> float:
    """The definition, by least squares: each episode held out, the part of its deviation from
    the others' mean in the span of their deviations, over their root mean square along it."""
    ratios = []
    for i in range(W.shape[0]):
        others = np.delete(W, i, axis=0)
        mean = others.mean(axis=0)
        B = others - mean
        d = W[i] - mean
        coef = np.linalg.lstsq(B.T, d, rcond=None)[0]
        p = B.T @ coef
        if np.linalg.norm(B) <= 1e-12 * np.linalg.norm(W):
            continue  # the others coincide (up to rounding): no spread to measure in
        size = np.linalg.norm(p)
        if size <= 1e-12 * np.linalg.norm(W):
            ratios.append(0.0)
            continue
        ratios.append(size / np.sqrt(np.mean((B @ (p / size)) ** 2)))
    return float(np.mean(ratios)) if ratios else float("nan")


def _line(positions, E: int = 11, seed: int = 0) -> np.ndarray:
    u = np.random.default_rng(seed).normal(size=E)
    return np.stack([np.full(E, 1.0 / E) + t * 1e-3 * u for t in positions])


def test_golden_three_workloads_on_a_line():
    """At -1, 0, 1: an end held out lies 1.5 from the others' mean, whose deviations are 0.5
    long (3 spreads out); the middle one lands on the others' mean (0). Mean: 2."""
    assert holdout_reach(_line([-1.0, 0.0, 1.0])) == pytest.approx(2.0, rel=1e-9)


def test_golden_four_workloads_on_a_line():
    """At -3, -1, 1, 3: the ends land 4 from the others' mean, whose deviations (-2, 0, 2) have
    the root mean square sqrt(8/3); the inner ones 4/3 from it, against sqrt(168/27)."""
    expected = (4 / np.sqrt(8 / 3) + (4 / 3) / np.sqrt(168 / 27)) / 2
    assert holdout_reach(_line([-3.0, -1.0, 1.0, 3.0])) == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize(
    ("K", "E"), [(3, 7), (4, 9), (5, 13), (7, 33), (3, 65), (6, 257), (16, 257), (16, 9), (21, 5)]
)
def test_reach_matches_the_definition(K, E):
    """Also with more episodes than experts (the others then span every direction one shows)."""
    rng = np.random.default_rng(K * 1000 + E)
    W = normalise(rng.gamma(0.7, size=(K, E)))
    assert holdout_reach(W) == pytest.approx(_reference(W), rel=1e-9)


@pytest.mark.parametrize("K", [3, 4, 8])
def test_reach_matches_the_definition_with_episodes_that_coincide(K):
    """Two episodes alike, or all but one alike: held out, that one leaves the others no spread
    (not counted); one of the alike lands 1 / (K - 1) of the distance out, along the others'
    one direction (1 / sqrt(K - 2) of their spread)."""
    rng = np.random.default_rng(K)
    W = normalise(rng.gamma(0.7, size=(K, 11)))
    twins = W.copy()
    twins[1] = twins[0]
    assert holdout_reach(twins) == pytest.approx(_reference(twins), rel=1e-9)
    alike = np.repeat(W[:1], K, axis=0)
    alike[-1] = W[-1]
    assert holdout_reach(alike) == pytest.approx(_reference(alike), rel=1e-9)
    assert holdout_reach(alike) == pytest.approx(1.0 / np.sqrt(K - 2), rel=1e-9)


def test_reach_ignores_scale_order_and_expert_labels():
    rng = np.random.default_rng(5)
    W = normalise(rng.gamma(2.0, size=(5, 19)))
    w = W.mean(axis=0)
    reach = holdout_reach(W)
    assert holdout_reach(w + 0.25 * (W - w)) == pytest.approx(reach, rel=1e-9)
    assert holdout_reach(W[[3, 0, 4, 1, 2]]) == pytest.approx(reach, rel=1e-9)
    assert holdout_reach(W[:, rng.permutation(19)]) == pytest.approx(reach, rel=1e-9)


def test_no_reach_without_a_spread_to_measure_it_in():
    W = normalise(np.random.default_rng(6).gamma(2.0, size=(3, 9)))
    assert np.isnan(holdout_reach(W[:2]))  # one other workload: no span
    assert np.isnan(holdout_reach(np.repeat(W[:1], 4, axis=0)))  # all the same


def test_prompt_lengths_land_beyond_the_ends_and_task_mixes_near_the_middle():
    """The shipped traces, as the docstring says: DeepSeek-V3's prefill prompt lengths about 2,
    ESFT's tasks well under 1 (median over layers, all four workloads)."""
    ds = np.stack([traces.deepseek_v3(w, moe_only=True)[0] for w in traces.DEEPSEEK_V3_WORKLOADS])
    esft = np.stack([traces.esft(t).sum(0) for t in traces.ESFT_TASKS])
    reach = {n: np.median([holdout_reach(normalise(x[:, j])) for j in range(x.shape[1])])
             for n, x in (("ds", ds), ("esft", esft))}  # fmt: skip
    assert 1.5 < reach["ds"] < 3.0
    assert reach["esft"] < 0.8


def _pushed(W, w, spread):
    return normalise(np.maximum(w + spread * (W - w), 0.0))


def _first_rows(W, tokens, counts_given, spread, unseen=1.0):
    K = W.shape[0]
    now = normalise(tokens.sum(axis=0))
    _, w, V, _ = _fresh_plan(W, tokens, counts_given, now, spread, unseen, 72, 8, 6, 3, 0.002)
    return w, V[:K]


def test_distinct_workloads_are_pushed_no_further_than_they_land():
    """OLMoE's domains (distinct workloads): every episode pushed ``min(spread, reach)``."""
    loads = np.stack([traces.olmoe(domain=d)[0, 1] for d in traces.OLMOE_DOMAINS])
    W = normalise(loads)
    assert signal_fraction(W, sampling_noise(W, loads.sum(axis=1))) == 1.0
    reach = holdout_reach(W)
    assert 0.5 < reach < 2.0
    for spread in (2.0, 0.5 * reach):
        w, rows = _first_rows(W, loads, True, spread)
        np.testing.assert_allclose(rows, _pushed(W, w, min(spread, reach)), rtol=1e-12)


def test_draws_of_one_workload_keep_the_options_push():
    """Episodes that differ by sampling noise are one workload: nothing new lands, the reach
    is not asked, and the episodes are pushed ``spread`` as the option says."""
    rng = np.random.default_rng(7)
    shares = normalise(rng.gamma(1.0, size=64))
    tokens = rng.multinomial(6000, shares, size=8).astype(np.float64)
    W = normalise(tokens)
    assert signal_fraction(W, sampling_noise(W, tokens.sum(axis=1))) < 1.0
    assert holdout_reach(W) < 2.0
    w, rows = _first_rows(W, tokens, True, 2.0)
    np.testing.assert_allclose(rows, _pushed(W, w, 2.0), rtol=1e-12)


def test_workloads_over_few_tokens_are_pushed_about_as_far_as_they_land():
    """OLMoE's domains drawn over a few hundred or thousand tokens each: part of their spread is
    sampling noise. That part keeps the option's push; the part that is workloads goes no
    further than they land, so a little noise moves the push a little (at 2,000 tokens 4 % of
    the spread is noise), not from the reach to the option's 2."""
    rng = np.random.default_rng(8)
    shares = normalise(np.stack([traces.olmoe(domain=d)[0, 1] for d in traces.OLMOE_DOMAINS]))
    exact = min(2.0, holdout_reach(shares))
    for tokens in (500, 2_000, 20_000):
        loads = np.stack([rng.multinomial(tokens, p) for p in shares]).astype(np.float64)
        W = normalise(loads)
        signal = signal_fraction(W, sampling_noise(W, loads.sum(axis=1)))
        assert (0.5 < signal < 1.0) if tokens < 20_000 else signal == 1.0
        push = signal * min(2.0, holdout_reach(W)) + (1.0 - signal) * 2.0
        w, rows = _first_rows(W, loads, True, 2.0)
        np.testing.assert_allclose(rows, _pushed(W, w, push), rtol=1e-12)
        assert push == pytest.approx(exact, rel=0.1 if tokens == 500 else 0.05)
