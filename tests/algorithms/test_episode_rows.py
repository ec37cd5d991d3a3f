"""``episode_rows``: what a plan reads from its episodes, and how far sampling noise moves a PAR."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks import traces
from eplb_rt.algorithms import warm_up
from eplb_rt.algorithms.episode_rows import (
    holdout_reach,
    noise_reach,
    sampling_noise,
    scored_rows,
    signal_fraction,
    trend_rows,
    unseen_axes,
    unseen_episodes,
    unseen_signal,
)
from eplb_rt.algorithms.load import normalise


@pytest.fixture(scope="module", autouse=True)
def _compiled():
    warm_up(["equilibrium"])


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


def test_golden_three_workloads_each_on_its_own_expert():
    """Workload i adds ``delta`` to expert i's share. Held out, workload i deviates from the
    others' mean by ``delta (e_i - (e_j + e_k) / 2)``, orthogonal to the others' one deviation
    ``e_j - e_k``: all of it is unseen. These residuals, ``delta (1.5 I - 0.5)``, span the plane
    orthogonal to ``(1, 1, 1)`` with singular values ``1.5 delta`` twice."""
    delta = 0.1
    W = np.full((3, 3), (1 - delta) / 3) + delta * np.eye(3)
    axes, share = unseen_axes(W)
    np.testing.assert_allclose(share, [0.5, 0.5])
    np.testing.assert_allclose((axes**2).sum(axis=1), [0.75 * delta**2] * 2)
    np.testing.assert_allclose(axes @ np.ones(3), [0.0, 0.0], atol=1e-15)
    np.testing.assert_allclose(axes[0] @ axes[1], 0.0, atol=1e-15)


def test_workloads_on_one_line_show_nothing_unseen():
    rng = np.random.default_rng(0)
    w = normalise(rng.random(16) + 0.5)
    v = rng.normal(size=16)
    v -= v.mean()
    W = w + 0.01 * np.array([-1.0, 0.3, 0.5, 1.2])[:, None] * v
    axes, share = unseen_axes(W)
    assert axes.shape == (0, 16)
    assert share.shape == (0,)


def test_two_workloads_show_all_of_their_difference():
    rng = np.random.default_rng(1)
    W = normalise(rng.random((2, 9)))
    axes, share = unseen_axes(W)
    np.testing.assert_allclose(share, [1.0])
    # Each held out, its whole deviation from the other is unseen: root mean square |W1 - W0|.
    d = W[1] - W[0]
    np.testing.assert_allclose(np.abs(axes[0] @ d), d @ d)


@pytest.mark.parametrize("K", [2, 3, 5, 16])
def test_axes_keep_the_total_and_are_orthogonal(K):
    rng = np.random.default_rng(K)
    W = normalise(rng.pareto(1.2, (K, 40)) + 0.01)
    axes, share = unseen_axes(W)
    assert 1 <= axes.shape[0] <= K
    np.testing.assert_allclose(axes.sum(axis=1), 0.0, atol=1e-15)
    gram = axes @ axes.T
    np.testing.assert_allclose(gram - np.diag(np.diag(gram)), 0.0, atol=1e-15)
    np.testing.assert_allclose(share.sum(), 1.0)
    assert (np.diff(share) <= 1e-15).all()


def _reference_axes(W: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each episode held out in turn, as the definition reads: its deviation from the others'
    mean less its projection on the span of their deviations; then the residuals' SVD."""
    K = W.shape[0]
    tol = 1e-9 * np.linalg.norm(W, 2)
    residuals = []
    for i in range(K):
        others = np.delete(W, i, axis=0)
        centre = others.mean(axis=0)
        _, sv, vt = np.linalg.svd(others - centre, full_matrices=False)
        span = vt[sv > tol]
        d = W[i] - centre
        residuals.append(d - span.T @ (span @ d))
    _, sv, vt = np.linalg.svd(np.array(residuals), full_matrices=False)
    keep = sv > tol
    energy = sv[keep] ** 2
    return sv[keep, None] / np.sqrt(K) * vt[keep], energy / energy.sum()


@pytest.mark.parametrize(
    ("K", "E", "rank"), [(2, 5, 2), (3, 3, 3), (4, 7, 4), (5, 3, 3), (6, 40, 4), (9, 256, 9)]
)
def test_axes_match_the_hold_out_definition(K, E, rank):
    """Odd sizes, episodes in general position or not (``rank < K``: some lie in the others'
    span; ``E < K``): the same residual energy along the same axes (up to their signs, and to
    the choice of axes where two carry the same energy: compared as ``sum a a^T``)."""
    rng = np.random.default_rng(K * E)
    W = normalise(rng.random((K, rank)) @ rng.pareto(1.2, (rank, E)) + 1e-3)
    axes, share = unseen_axes(W)
    expected_axes, expected_share = _reference_axes(W)
    assert axes.shape == expected_axes.shape
    np.testing.assert_allclose(share, expected_share, atol=1e-9)
    outer = expected_axes.T @ expected_axes
    np.testing.assert_allclose(axes.T @ axes, outer, atol=1e-9 * np.abs(outer).max())


def test_axes_match_the_hold_out_definition_on_many_degenerate_cases():
    """300 small cases of dependent episodes, half with one episode alone reaching a direction
    (the others share a coordinate): the one decomposition of all hold-outs decides as the
    decomposition of each does. (A Gram matrix's eigenvalues, LAPACK's ``eigh`` as the former
    code took them, squared the small singular values away and decided otherwise in 52 of 3000
    such cases.)"""
    rng = np.random.default_rng(5)
    for _ in range(300):
        K, E = int(rng.integers(2, 12)), int(rng.integers(2, 20))
        rank = int(rng.integers(1, min(K, E) + 1))
        coef = rng.random((K, rank))
        if rng.random() < 0.5:
            coef[1:, -1] = coef[1, -1]
        W = normalise(coef @ rng.random((rank, E)) + 1e-3)
        axes, share = unseen_axes(W)
        expected_axes, expected_share = _reference_axes(W)
        assert axes.shape == expected_axes.shape, (K, E, rank)
        np.testing.assert_allclose(share, expected_share, atol=1e-6)
        outer = expected_axes.T @ expected_axes
        np.testing.assert_allclose(axes.T @ axes, outer, atol=1e-6 * np.abs(outer).max())


def _unseen_episodes_in_full(W, w, noise, weight):
    """:func:`unseen_episodes` as its docstring defines it, from the axes (which the kernel
    forms only where the residuals' energy does not already say noise)."""
    K, E = W.shape
    axes, share = unseen_axes(W)
    energy = float((axes * axes).sum())
    seen = 1.0 - noise * K / (K - 1) / energy if energy > 0.0 else 0.0
    if seen < 0.5:
        return np.empty((0, E))
    ends = []
    for sign in (1.0, -1.0):
        for k in range(axes.shape[0]):
            end = np.maximum(w + sign * axes[k], 0.0)
            ends.append(weight * seen * share[k] * end / end.sum())
    return np.array(ends)


@pytest.mark.parametrize("seed", range(4))
def test_unseen_episodes_decide_as_the_axes_do(seed):
    """Noise swept across the threshold, from far below to far above: the kernel keeps the
    unseen episodes exactly where the definition from the axes keeps them, with the same
    weights (dependent episodes on odd seeds: fewer axes, some episodes without residual)."""
    rng = np.random.default_rng(seed)
    K, E = int(rng.integers(3, 9)), int(rng.integers(10, 40))
    W = rng.pareto(1.2, (K, E)) + 0.05
    if seed % 2:
        W[-1] = 0.5 * (W[0] + W[1])
    W = normalise(W)
    w = W.mean(axis=0)
    axes, _ = unseen_axes(W)
    energy = float((axes * axes).sum())
    # seen = 1 - noise * K / (K - 1) / energy crosses 0.5 at this noise.
    threshold = 0.5 * energy * (K - 1) / K
    kept = 0
    for factor in (0.0, 0.1, 0.9, 0.999999, 1.000001, 1.1, 3.0):
        noise = factor * threshold
        got = unseen_episodes(W, w, noise, 1.0)
        expected = _unseen_episodes_in_full(W, w, noise, 1.0)
        assert got.shape == expected.shape, factor
        np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-15)
        kept += got.shape[0] > 0
    assert 0 < kept < 7  # both sides of the threshold were met


def _curve(t: np.ndarray, bend: float, seed: int = 3) -> np.ndarray:
    """``[len(t), 40]`` workloads along a curve: the mean plus ``t a + bend t^2 b``."""
    rng = np.random.default_rng(seed)
    w = normalise(rng.random(40) + 1.0)
    a, b = rng.normal(size=(2, 40))
    a -= a.mean()
    b -= b.mean()
    return w + 0.004 * (t[:, None] * a + bend * t[:, None] ** 2 * b)


def test_workloads_along_a_curve_give_trend_rows():
    """Three workloads on a bent curve: every hold-out leaves the others' line the same way, so
    the residuals lie along one axis, and the two rows are the mean moved both ways along it,
    ``spread`` times as far as the hold-outs reach, each summing to the weight."""
    W = _curve(np.array([0.0, 1.0, 2.0]), 0.1)
    w = W.mean(axis=0)
    axes, share = unseen_axes(W)
    assert share[0] > 0.95
    rows = trend_rows(w, axes, share, 2.0, 0.5)
    assert rows.shape == (2, 40)
    np.testing.assert_allclose(rows.sum(axis=1), [0.5, 0.5])
    np.testing.assert_allclose(rows[0], 0.5 * (w + 2.0 * axes[0]), rtol=1e-12)
    np.testing.assert_allclose(rows[1], 0.5 * (w - 2.0 * axes[0]), rtol=1e-12)


@pytest.mark.parametrize("seed", range(4))
def test_workloads_each_their_own_give_no_trend_rows(seed):
    """Five workloads in general position: each hold-out leaves the others' span its own way,
    no axis carries most of the residuals, and the first search gets no more rows."""
    rng = np.random.default_rng(seed)
    W = normalise(rng.random((5, 40)) + 0.5)
    axes, share = unseen_axes(W)
    assert axes.shape[0] == 4
    assert trend_rows(W.mean(axis=0), axes, share, 2.0, 1.0).shape == (0, 40)


def test_trend_rows_need_the_hold_outs_to_agree():
    """The rule's threshold, on made-up shares of two and of four axes: agreement is the top
    share beyond that of equal axes, over the most it can be (0.8 here: 0.9 of two, 0.85 of
    four; 0.91 and 0.86 pass, 0.89 and 0.84 do not)."""
    w = np.full(4, 0.25)
    axes = np.zeros((4, 4))
    axes[:, 0], axes[:, 1] = 0.01, -0.01
    for share, rows in [([0.91, 0.09], 2), ([0.89, 0.11], 0), ([0.86, 0.05, 0.05, 0.04], 2),
                        ([0.84, 0.06, 0.05, 0.05], 0), ([1.0], 2)]:  # fmt: skip
        r = len(share)
        got = trend_rows(w, axes[:r], np.array(share), 2.0, 1.0)
        assert got.shape == (rows, 4), share


def _agreeing(loads: list[np.ndarray]) -> float:
    """The share of layer-folds (each workload held out, every layer) whose training workloads
    give trend rows."""
    given = []
    for i in range(len(loads)):
        train = np.stack([x.sum(axis=0) for j, x in enumerate(loads) if j != i])
        for layer in range(train.shape[1]):
            W = normalise(train[:, layer])
            w = W.mean(axis=0)
            axes, share, _ = unseen_signal(W, 0.0)
            given.append(trend_rows(w, axes, share, 2.0, 1.0).shape[0] > 0)
    return float(np.mean(given))


def test_prompt_lengths_follow_a_curve_and_task_mixes_do_not():
    """On the shipped traces the rule tells the kinds of workloads apart: DeepSeek-V3's prefill
    workloads (one prompt length each) agree in nearly every layer-fold, ESFT's tasks and
    OLMoE's domains in none (BENCHMARKS.md, section 3)."""
    ds = [traces.deepseek_v3(w, moe_only=True) for w in traces.DEEPSEEK_V3_WORKLOADS]
    assert _agreeing(ds) > 0.9
    assert _agreeing([traces.esft(t) for t in traces.ESFT_TASKS]) == 0.0
    assert _agreeing([traces.olmoe(domain=d) for d in traces.OLMOE_DOMAINS]) == 0.0


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


def test_noise_reach_is_the_peak_ranks_poisson_spread():
    row = np.arange(8)  # one replica each, two a rank on 4 ranks
    counts = np.array([400.0, 100, 100, 100, 50, 50, 100, 100])
    spread = np.sqrt(500.0) * 4 / counts.sum()  # rank 0: variance 400 + 100
    assert noise_reach(row, counts, 4) == pytest.approx(2 * np.sqrt(2 * np.log(4)) * spread)
    # four times the tokens: half the reach; a second replica halves its expert's share
    assert noise_reach(row, 4 * counts, 4) == pytest.approx(noise_reach(row, counts, 4) / 2)
    doubled = np.array([0, 1, 2, 3, 4, 5, 6, 0])
    counts[7] = 0.0
    expected = np.sqrt(400 / 4 + 100) * 4 / counts.sum()
    assert noise_reach(doubled, counts, 4) == pytest.approx(2 * np.sqrt(2 * np.log(4)) * expected)
