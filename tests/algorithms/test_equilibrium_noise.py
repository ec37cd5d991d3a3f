"""``equilibrium`` tells sampling noise from workload change, and keeps the fit to what repeats."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks import traces
from eplb_rt.algorithms import metrics, plan, warm_up
from eplb_rt.algorithms.equilibrium import sampling_noise, scored_rows, signal_fraction
from eplb_rt.algorithms.load import normalise
from eplb_rt.placement import Topology


@pytest.fixture(scope="module", autouse=True)
def _compiled():
    warm_up(["equilibrium", "deepseek"])


def _signal(counts: np.ndarray) -> float:
    """:func:`signal_fraction` of episodes of counts ``[K, E]``, as the policy computes it."""
    W = normalise(counts)
    return signal_fraction(W, sampling_noise(W, counts.sum(axis=1)))


def _draws(p: np.ndarray, n: int, k: int, seed: int) -> np.ndarray:
    """``k`` episodes of ``n`` counts each drawn from the shares ``p [E]``: ``[k, E]``."""
    return np.random.default_rng(seed).multinomial(n, p, size=k).astype(float)


def test_noise_only_episodes_have_no_signal():
    p = normalise(np.random.default_rng(0).pareto(1.2, size=64) + 0.1)
    counts = _draws(p, 2000, 16, seed=1)
    assert _signal(counts) < 0.2


def test_distinct_workloads_are_all_signal():
    rng = np.random.default_rng(2)
    counts = np.stack([_draws(normalise(rng.pareto(1.2, 64) + 0.1), 10**6, 1, s)[0]
                       for s in range(4)])  # fmt: skip
    assert _signal(counts) == 1.0


def test_unknown_noise_or_one_episode_is_all_signal():
    W = normalise(np.random.default_rng(3).random((5, 16)))
    assert signal_fraction(W, sampling_noise(W, np.empty(0))) == 1.0
    assert _signal(np.array([[4.0, 3.0, 2.0, 1.0]])) == 1.0
    assert _signal(np.full((4, 16), 10.0)) == 1.0  # no spread at all


def test_half_signal_half_noise_is_seen_as_such():
    rng = np.random.default_rng(4)
    n, k = 2000, 64
    base = normalise(rng.pareto(1.2, 64) + 0.5)
    # Workloads that differ from the base by as much (in variance) as n counts' noise.
    noise = (base * (1 - base)).sum() / n
    z = rng.normal(0.0, 1.0, (k, 64)) * base
    z -= z.sum(axis=1, keepdims=True) * base
    z *= np.sqrt(noise / (z**2).sum(axis=1).mean())
    shifts = np.clip(base + z, 1e-9, None)
    counts = np.stack([rng.multinomial(n, s / s.sum()) for s in shifts]).astype(float)
    f = _signal(counts)
    assert 0.3 < f < 0.7


def test_noisy_episodes_keep_the_fit_to_their_sum():
    """Requests of one ESFT task as episodes: the plan's PAR on their summed load is below
    DeepSeek EPLB's, which plans on that sum (issue 13, in sample)."""
    topo = Topology(8, 9)
    ours, theirs = [], []
    for task in traces.ESFT_TASKS:
        load = traces.esft(task)
        total = load.sum(axis=0)
        ours.append(np.mean(metrics.par(plan("equilibrium", load, topo), total)))
        theirs.append(np.mean(metrics.par(plan("deepseek", load, topo), total)))
    assert np.mean(ours) < np.mean(theirs)


def test_scaled_load_is_not_taken_for_counts():
    """A load that is not whole counts has unknown noise: every episode counts as a workload,
    as for counts so many that their noise is nil (scales by powers of two keep the shapes
    bit for bit)."""
    rng = np.random.default_rng(5)
    p = normalise(rng.pareto(1.2, 32) + 0.1)
    counts = rng.multinomial(501, p, size=(8, 2)).astype(float)
    assert (counts % 2 == 1).any()
    topo = Topology(4, 10)
    assert plan("equilibrium", counts * 0.5, topo) == plan("equilibrium", counts * 2.0**20, topo)


@pytest.mark.parametrize("shape", [(2, 3), (5, 17), (16, 129), (9, 256), (17, 301)])
def test_kernels_round_as_the_numpy_formulas(shape):
    """The numba kernels give the numpy expressions' values bit for bit: rounding decides ties
    in the searches, so the placements stay those the numpy version chose."""
    rng = np.random.default_rng(shape[0] * 1000 + shape[1])
    counts = rng.multinomial(40 * shape[1], rng.dirichlet(np.ones(shape[1])), size=shape[0])
    tokens = counts.astype(float) + rng.integers(0, 3, shape)  # beyond multinomial noise
    W = normalise(tokens)
    volume = tokens.sum(axis=1)
    w = W.mean(axis=0)
    noise = float((w * (1.0 - w)).sum() * np.mean(1.0 / np.maximum(volume, 1.0)))
    assert sampling_noise(W, volume) == noise
    spread = ((W - w) ** 2).sum(axis=1).mean()
    signal = 1.0 if noise < 0.01 * spread else max(1.0 - noise / spread, 0.0)
    assert signal_fraction(W, noise) == signal
    for s in (0.37, 1.0):  # with and without the shared-load row
        shared = s * w + (1.0 - s) * normalise(tokens.sum(axis=0))
        V = normalise(np.maximum(shared + 2.0 * (W - shared), 0.0))
        if s < 1.0:
            V = np.vstack([V, 2.0 * (1.0 - s) * shape[0] * shared[None, :]])
        assert np.array_equal(scored_rows(W, shared, 2.0, s), V)


def test_counts_are_searched_no_further_than_their_noise():
    """The replica-count search stops where a better PAR on the load is within what its
    sampling noise could show: 40 tokens keep the min-max allotment (PAR 1.1; a pair of moves
    would balance them exactly, ``test_replicas``), 40,000 tokens and a load that is not counts
    search on to 1.0."""
    topo = Topology(2, 3)
    load = np.array([[17.0, 1.0, 17.0, 5.0]])
    for scale, expected in ((1.0, 1.1), (1000.0, 1.0), (1 / 40, 1.0)):
        found = plan("equilibrium", load * scale, topo)
        assert metrics.par(found, load)[0] == pytest.approx(expected), scale
    no_search = plan("equilibrium", load, topo, options={"count_rounds": 0})
    assert plan("equilibrium", load, topo) == no_search
