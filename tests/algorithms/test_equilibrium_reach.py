"""``equilibrium``'s push of the episodes, capped by their hold-out reach
(:func:`~eplb_rt.algorithms.episode_rows.holdout_reach`: how far a workload not among them lands
along their span)."""

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
