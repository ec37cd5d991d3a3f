"""``equilibrium``'s ``unseen`` episodes: what each workload shows that the others do not."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks import traces
from eplb_rt.algorithms import metrics, plan, warm_up
from eplb_rt.algorithms.episode_rows import (
    holdout_reach,
    sampling_noise,
    signal_fraction,
    trend_rows,
    unseen_axes,
    unseen_episodes,
    unseen_signal,
)
from eplb_rt.algorithms.load import normalise
from eplb_rt.placement import Topology


@pytest.fixture(scope="module", autouse=True)
def _compiled():
    warm_up(["equilibrium"])


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


def test_draws_of_seen_workloads_plan_as_without():
    """Episodes that are draws of workloads they all show: the unseen part is sampling noise,
    and the option leaves the plan as it was."""
    rng = np.random.default_rng(2)
    shares = normalise(rng.pareto(1.2, (2, 2, 48)) + 0.05)
    load = np.concatenate([traces.sample_tokens(s, 4, 20_000, rng) for s in shares])
    topo = Topology(8, 7)
    assert plan("equilibrium", load, topo, options={"unseen": 1.0}) == plan(
        "equilibrium", load, topo, options={"unseen": 0.0}
    )


def test_held_out_prefill_workload_gains():
    """DeepSeek-V3 prefill at 64x5, planned on three workloads, scored on the fourth (issue 10):
    the unseen episodes lower the mean PAR (BENCHMARKS.md, section 3; at 32x9 the seen stage
    alone holds as well since it balances every episode's variance)."""
    loads = [traces.deepseek_v3(w, moe_only=True) for w in traces.DEEPSEEK_V3_WORKLOADS]
    topo = Topology(64, 5)
    par = {0.0: [], 1.0: []}
    for i, test in enumerate(loads):
        train = np.concatenate([x for j, x in enumerate(loads) if j != i])
        for u, pars in par.items():
            p = plan("equilibrium", train, topo, options={"unseen": u})
            pars.append(np.mean(metrics.par(p, test[0])))
    assert np.mean(par[1.0]) < np.mean(par[0.0])


def _sum_of_peaks(row: np.ndarray, V: np.ndarray, D: int) -> float:
    """The swap stage's objective without its tie term: the sum over ``V [K, E]`` of the peak."""
    counts = np.bincount(row, minlength=V.shape[1])
    return float((V[:, row] / counts[row]).reshape(V.shape[0], D, -1).sum(axis=2).max(axis=1).sum())


@pytest.mark.parametrize("held_out", range(6))
def test_unseen_episodes_refine_the_seen_plan(held_out):
    """The unseen episodes only refine the plan the seen ones chose: scored on seen and unseen
    together, the plan with them is never worse than the plan without. OLMoE at 8x12, one domain
    held out: searched from the start with them, the plan landed in other local optima, some
    worse on this objective and far worse on the held-out domain (one layer 1.47 -> 2.13)."""
    domains = traces.OLMOE_DOMAINS
    train = np.stack([traces.olmoe(domain=d)[0] for i, d in enumerate(domains) if i != held_out])
    topo = Topology(8, 12)
    off = plan("equilibrium", train, topo, options={"unseen": 0.0}).phy2log
    on = plan("equilibrium", train, topo, options={"unseen": 1.0}).phy2log
    for layer in range(train.shape[1]):
        W = normalise(train[:, layer])
        volume = train[:, layer].sum(axis=1)
        noise = sampling_noise(W, volume)
        assert signal_fraction(W, noise) == 1.0
        w = W.mean(axis=0)
        spread = min(2.0, holdout_reach(W))  # distinct workloads: pushed as far as they land
        seen = normalise(np.maximum(w + spread * (W - w), 0.0))
        V = np.vstack([seen, unseen_episodes(W, w, noise, 1.0)])
        assert _sum_of_peaks(on[layer], V, 8) <= _sum_of_peaks(off[layer], V, 8) * (1 + 1e-9)


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


def test_held_out_prompt_length_gains_from_trend_rows():
    """DeepSeek-V3 prefill at 64x5, planned on three prompt lengths and scored on the fourth:
    the trend rows (on with ``unseen``) lower the PAR of the two held-out ends, 512 and 4096
    tokens, which lie beyond the others along the curve, and the mean of the four is at most
    half of ``flashlb``'s excess over 1 (issue 10's goal; BENCHMARKS.md, section 3)."""
    loads = [traces.deepseek_v3(w, moe_only=True) for w in traces.DEEPSEEK_V3_WORKLOADS]
    topo = Topology(64, 5)
    ours, flash = [], []
    for i, test in enumerate(loads):
        train = np.concatenate([x for j, x in enumerate(loads) if j != i])
        ours.append(np.mean(metrics.par(plan("equilibrium", train, topo), test[0])))
        flash.append(np.mean(metrics.par(plan("flashlb", train, topo), test[0])))
    assert ours[0] < 1.064 and ours[3] < 1.064  # 1.0667 and 1.0662 without the rows
    assert np.mean(ours) - 1 <= 0.5 * (np.mean(flash) - 1)
