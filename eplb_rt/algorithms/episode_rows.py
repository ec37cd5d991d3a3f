"""What a plan reads from its episodes: how much of their spread is sampling noise, how far a
workload not among them lands, what none of them shows, and so the rows a plan is scored on
(step 1 of :mod:`eplb_rt.algorithms.equilibrium`); and how far sampling noise moves a
placement's PAR measured on token counts (:func:`peak_noise`), which bounds what a plan fitted
to them can gain.

Arrays: ``W [K, E] float64``, the episodes each scaled to sum 1 (``K`` episodes of ``E``
experts); ``w [E]``, the load they share; ``row [P] int64``, a layer's slots (ranks in blocks of
``S = P // D``). Decompositions are plain loops (:mod:`~eplb_rt.algorithms.jacobi`), not
LAPACK: every rank of an engine that plans on each rank gets the same bits on any CPU.
"""

from __future__ import annotations

import numpy as np

from eplb_rt.algorithms.jacobi import reflected_basis, row_reflectors, row_svd
from eplb_rt.algorithms.jit import kernel
from eplb_rt.algorithms.metrics import row_rank_loads
from eplb_rt.algorithms.packing import counts_from_row
from eplb_rt.algorithms.sums import column_mean, pairwise_sum

_RANK_TOL = 1e-9
"""Singular values under this fraction of the episodes' norm (their root sum of squares) are
rounding, not a direction."""

_TINY = 1e-300

_UNSEEN_SIGNAL = 0.5
"""Plan for what no episode shows only where most of it is not sampling noise."""

_NOISE_FLOOR = 0.01
"""Sampling noise under this share of the episodes' spread is taken as none."""

_TREND_AGREEMENT = 0.8
"""How far the hold-outs' residuals must agree on one axis for :func:`trend_rows` (0: no more
than ``r`` equal axes, 1: all along one). DeepSeek-V3's prefill workloads (one prompt length
each) agree at 0.9 in the median layer, the task and domain mixes of ESFT, gpt-oss and OLMoE at
0.1-0.6 (BENCHMARKS §3)."""


@kernel
def sampling_noise(W, volume):
    """The squared distance sampling alone puts between an episode and its workload's shares.

    ``W [K, E] float64``: episodes scaled to sum 1; ``volume [K] float64``: the counts each was
    summed from, or empty when the load is not counts (its noise is unknown: 0). ``N`` counts
    drawn one by one put a variance of ``w (1 - w) / N`` on an expert's share ``w`` (top-k
    routing never draws an expert twice for a token, so this bounds the noise from above).
    """
    K = volume.shape[0]
    if K == 0:
        return 0.0
    w = column_mean(W)
    inverse = np.empty(K)
    for k in range(K):
        inverse[k] = 1.0 / max(volume[k], 1.0)
    return pairwise_sum(w * (1.0 - w)) * (pairwise_sum(inverse) / K)


@kernel(inline=True)
def episode_volumes(tokens):
    """``[K]``: the counts each episode of ``tokens [K, E]`` was summed from."""
    volume = np.empty(tokens.shape[0])
    for k in range(tokens.shape[0]):
        volume[k] = pairwise_sum(tokens[k])
    return volume


@kernel
def signal_fraction(W, noise):
    """The share of the episodes' spread around their mean that is not sampling noise, in [0, 1].

    ``W [K, E] float64``: episodes scaled to sum 1; ``noise``: their :func:`sampling_noise`
    (0 where it is unknown). No noise, or one episode: 1.
    """
    K = W.shape[0]
    if K < 2 or noise <= 0.0:
        return 1.0
    w = column_mean(W)
    distances = np.empty(K)
    for k in range(K):
        d = W[k] - w
        distances[k] = pairwise_sum(d * d)
    spread = pairwise_sum(distances) / K
    if spread <= 0.0 or noise < _NOISE_FLOOR * spread:
        return 1.0
    return max(1.0 - noise / spread, 0.0)


@kernel
def unseen_axes(W):
    """What each episode of ``W [K, E] float64`` (``K >= 2``) shows that the others do not.

    Each episode is held out in turn: its deviation from the others' mean, less its projection
    on the span of their deviations, is what a workload not among them would have added. A plan
    fitted to the episodes (even pushed from their mean) is blind to that part. Returns the
    principal axes of these residuals, ``[r, E] float64`` (each scaled to the root mean square
    of the residuals along it; signs arbitrary), and ``[r] float64``, each axis's share of the
    residuals' energy (summing to 1; ``r = 0`` when every episode lies in the others' span).
    Plain loops (:mod:`~eplb_rt.algorithms.jacobi`), not LAPACK: every rank of an engine that
    plans on each rank gets the same bits on any CPU.
    """
    residuals, reflectors, tol = _unseen_residuals(W)
    return _principal_axes(residuals, reflected_basis(reflectors), tol)


@kernel(inline=True)
def _episode_span(W):
    """The episodes ``W [K, E]`` in their span: ``(C [K, m], V [m, E], tol)``, their coordinates
    in an orthonormal basis of it and its reflectors (:func:`~eplb_rt.algorithms.jacobi.
    row_reflectors`), so decompositions are K x K, not K x E; and the length under which a
    direction is rounding against the episodes themselves. (Their norm bounds the largest
    singular value within a factor sqrt(K), and costs no decomposition.)"""
    C, reflectors = row_reflectors(W)
    return C, reflectors, _RANK_TOL * max(np.sqrt(pairwise_sum(C * C)), _TINY)


@kernel(inline=True)
def _centred_svd(W):
    """The centred episodes ``W [K, E]`` decomposed in their span: ``(U, s, Vt, live, ones,
    reflectors, tol)``, ``C - mean(C) = U diag(s) Vt`` (:func:`_episode_span`'s ``C``), ``live``
    singular values above ``tol``, and ``ones [K - live]`` the direction (1, ..., 1) that
    centring leaves among U's dead columns, in their coordinates (unit; zero where there is no
    dead column)."""
    K = W.shape[0]
    C, reflectors, tol = _episode_span(W)
    U, s, Vt = row_svd(C - column_mean(C))
    live = 0
    while live < K and s[live] > tol:
        live += 1
    dead = K - live
    ones = np.zeros(dead)
    for k in range(dead):
        for i in range(K):
            ones[k] += U[i, live + k]
    size = np.sqrt(pairwise_sum(ones * ones))
    if size > 0.0:  # no dead column: every episode reaches a direction of its own
        for k in range(dead):
            ones[k] /= size
    return U, s, Vt, live, ones, reflectors, tol


@kernel(inline=True)
def _own_direction(U, s, live, ones, i, tol):  # noqa: PLR0917
    """``(own, |Y_i|^2)``: whether held-out episode ``i`` leaves the others' span one dimension
    short (it reaches a direction of its own, along the dual vector ``Y_i = U_i / s`` of the live
    directions), as :func:`_unseen_residuals` explains; ``|Y_i|^2`` is ``G^+_ii``."""
    diagonal = 0.0
    for k in range(live):
        diagonal += (U[i, k] / s[k]) ** 2
    dead = ones.shape[0]
    along = 0.0
    for k in range(dead):
        along += U[i, live + k] * ones[k]
    rest = 0.0
    for k in range(dead):
        t = U[i, live + k] - along * ones[k]
        rest += t * t
    return rest <= tol * tol * diagonal, diagonal


@kernel
def _unseen_residuals(W):
    """The residuals of :func:`unseen_axes` before their axes: ``(R [K, m], V [m, E], tol)``,
    row ``i`` of ``R`` episode ``i``'s residual in the basis of the episodes' span that the
    reflectors ``V`` give (:func:`~eplb_rt.algorithms.jacobi.row_reflectors`), and the
    tolerance under which a singular value is rounding."""
    K = W.shape[0]
    U, s, Vt, live, ones, reflectors, tol = _centred_svd(W)
    m = Vt.shape[1]
    residuals = np.zeros((K, m))
    if live == 0:
        return residuals, reflectors, tol
    # Held out, episode i leaves the others' span one dimension short of all episodes' span,
    # or not at all. If short, its residual lies along the dual vector Y_i of the centred
    # episodes X (Gram matrix G = U s^2 U^T, so Y = G^+ X = U s^-1 Vt on the live directions):
    # Y_i . (X_j - X_k) = 0 for j, k != i, and d_i = X_i K / (K - 1) meets it with
    # d_i . Y_i = 1, so the residual is Y_i / G^+_ii. To first order, the others' smallest
    # singular value is e_i / sqrt(G^+_ii), with e_i the norm of row i of U's dead columns
    # less the direction (1, ..., 1) / sqrt(K) that centring leaves among them: exactly zero
    # for episodes in general position (the usual case: that direction is the one dead
    # column), and taken as zero under ``tol``, as a decomposition of each hold-out would.
    # So one decomposition serves all K hold-outs, and e_i is a sum of squares, with no
    # cancellation (a Gram matrix's eigenvalues lose the small singular values).
    for i in range(K):
        own, diagonal = _own_direction(U, s, live, ones, i, tol)
        if not own:
            continue  # the others span all that episode i shows: no residual
        for k in range(live):
            coef = U[i, k] / s[k] / diagonal
            for x in range(m):
                residuals[i, x] += coef * Vt[k, x]
    return residuals, reflectors, tol


@kernel
def _principal_axes(residuals, basis, tol):
    """Axes ``[r, E]`` and energy shares ``[r]`` of ``residuals [K, m]`` (coordinates in
    ``basis [m, E]``), as :func:`unseen_axes` returns them."""
    K, m = residuals.shape
    _, sv, vt = row_svd(residuals)
    r = 0
    while r < K and sv[r] > tol:
        r += 1
    axes = np.zeros((r, basis.shape[1]))
    share = np.empty(r)
    total = 0.0
    for k in range(r):
        share[k] = sv[k] * sv[k]
        total += share[k]
        size = sv[k] / np.sqrt(K)
        for j in range(m):
            coef = size * vt[k, j]
            for e in range(basis.shape[1]):
                axes[k, e] += coef * basis[j, e]
    for k in range(r):
        share[k] /= max(total, _TINY)
    return axes, share


@kernel
def unseen_signal(W, noise):
    """:func:`unseen_axes` of ``W [K, E]`` where they are not mostly sampling noise (``noise``:
    the episodes' :func:`sampling_noise`): ``(axes [r, E], share [r], seen)``, ``seen`` the
    part of their energy that is not noise; ``r = 0`` where that part is under half."""
    K, E = W.shape
    residuals, reflectors, tol = _unseen_residuals(W)
    # A held-out episode's residual carries its own noise and that of the others' mean. Its
    # energy is the residuals' (an orthonormal basis keeps lengths; the axes drop only rounding):
    # where that says noise by a margin far above rounding, the axes are not formed at all (most
    # layers of sampled draws of the same workloads).
    most = pairwise_sum(residuals * residuals) / K * (1.0 + 1e-9)
    if most <= 0.0 or 1.0 - noise * K / (K - 1) / most < _UNSEEN_SIGNAL:
        return np.empty((0, E)), np.empty(0), 0.0
    axes, share = _principal_axes(residuals, reflected_basis(reflectors), tol)
    r = axes.shape[0]
    energy = pairwise_sum(axes * axes) if r else 0.0
    seen = 1.0 - noise * K / (K - 1) / energy if energy > 0.0 else 0.0
    if seen < _UNSEEN_SIGNAL:
        return np.empty((0, E)), np.empty(0), 0.0
    return axes, share, seen


@kernel
def unseen_ends(w, axes, share, seen, weight):
    """``[2r, E]``: the mean ``w [E]`` moved both ways along each of ``axes [r, E]``, scaled to
    sum 1 and weighed ``weight * seen * share``."""
    r, E = axes.shape
    ends = np.empty((2 * r, E))
    for k in range(2 * r):
        sign = 1.0 if k < r else -1.0
        end = np.maximum(w + sign * axes[k % r], 0.0)
        total = pairwise_sum(end)
        ends[k] = 0.0
        if total > 0.0:
            ends[k] = (weight * seen * share[k % r]) * (end / total)
    return ends


@kernel
def unseen_episodes(W, w, noise, weight):
    """``[2r, E]``: the mean ``w`` moved both ways along each of :func:`unseen_axes`, scaled to
    sum 1 and weighed ``weight`` times the axis's share and the part of the unseen deviation
    that is not sampling noise; none (``r = 0``) when that part is mostly noise: the episodes
    are draws of workloads that they all show, and more noise to plan for adds nothing."""
    axes, share, seen = unseen_signal(W, noise)
    return unseen_ends(w, axes, share, seen, weight)


@kernel
def trend_rows(w, axes, share, spread, weight):
    """``[2, E]`` or ``[0, E]``: more rows for the first search where the hold-outs agree.

    ``axes [r, E]``, ``share [r]``: :func:`unseen_axes` of ``K >= 3`` distinct workloads. Where
    their residuals lie along one axis (its share beyond that of ``r`` equal axes, as a
    fraction of the most it can be, at least :data:`_TREND_AGREEMENT`), every workload held out
    left the others' span the same way: the workloads follow a curve (prompt lengths, batch
    sizes), and one beyond them goes on along it. The pushed episodes cover that axis only as
    far as the seen ones bend, which is short of what each hold-out shows; these rows are the
    mean moved both ways along it to the hold-outs' reach, ``spread`` times like the episodes,
    each summing to ``weight``. Residuals in several directions (each workload its own) give
    none: hedging all of them would spread the search thin.
    """
    r, E = axes.shape
    if r == 0 or (r > 1 and (share[0] * r - 1.0) / (r - 1.0) < _TREND_AGREEMENT):
        return np.empty((0, E))
    return unseen_ends(w, spread * axes[:1], np.ones(1), 1.0, weight)


@kernel
def holdout_reach(W):
    """How far a workload not among ``W [K, E] float64`` lands, along the others' span, in
    units of their spread (NaN where no hold-out leaves the others a spread, e.g. ``K < 3``).

    Each episode is held out in turn: the part of its deviation from the others' mean that the
    others' deviations span, over the root mean square of those deviations along that part
    (``2`` where it lands twice as far out as they lie); the mean over the hold-outs. Workloads
    on a curve land beyond the ends (DeepSeek-V3's prompt lengths about 2), task and domain mixes
    near their span (gpt-oss, OLMoE 1.2-1.4) or near the others' mean (ESFT's tasks about 0.4).
    One decomposition of the centred episodes serves every hold-out (as in
    :func:`_unseen_residuals`), in plain loops in the episodes' span (:func:`_episode_span`):
    the same bits on any CPU, and 16 episodes cost about half what a basis per hold-out did.
    """
    K = W.shape[0]
    if K < 3:
        return np.nan
    U, s, _, live, ones, _, tol = _centred_svd(W)
    if live == 0:
        return np.nan  # every episode the same: no spread to measure in
    # The centred episodes are X = U diag(s) Vt; in the basis of Vt's live rows, episode i is
    # X_i = U_i * s, and its deviation from the others' mean d = X_i K / (K - 1). The others'
    # deviations X_j + X_i / (K - 1) span all live directions but one where episode i reaches a
    # direction of its own (the dual vector Y_i = U_i / s, found as _unseen_residuals finds it):
    # their span is then Y_i's complement, and d's part in it is d less its projection on Y_i.
    c = K / (K - 1.0)
    p = np.empty(live)
    total, n = 0.0, 0
    for i in range(K):
        own, diagonal = _own_direction(U, s, live, ones, i, tol)
        if own and live == 1:
            continue  # the others coincide: no spread to measure in
        dy = 0.0  # d . Y_i
        for k in range(live):
            p[k] = c * U[i, k] * s[k]
            dy += p[k] * (U[i, k] / s[k])
        if own:
            for k in range(live):
                p[k] -= dy / diagonal * (U[i, k] / s[k])
        inside = 0.0
        for k in range(live):
            inside += p[k] * p[k]
        scatter = 0.0  # the sum over the others of (deviation . p)^2
        for j in range(K):
            if j != i:
                x = 0.0
                for k in range(live):
                    x += (U[j, k] + U[i, k] / (K - 1.0)) * s[k] * p[k]
                scatter += x * x
        n += 1
        if inside > tol * tol and scatter > 0.0:
            # |p| over the others' root mean square along p / |p|.
            total += inside / np.sqrt(scatter / (K - 1))
    return total / n if n else np.nan


@kernel
def scored_rows(W, w, spread, signal):
    """``[K', E] float64``: the rows a plan is scored on, from episodes ``W [K, E]`` (each
    summing 1, ``K >= 2``) and their estimated shared load ``w [E]``.

    Every episode pushed away from the mean by the factor ``spread``, so the plan holds for
    deviations larger than those seen; where part of their spread is sampling noise
    (``signal < 1``), the shared load as one more row, weighed as the pushed noise is: the fit
    to what repeats counts as much as the noise planned for (``K' = K + 1``).
    """
    K, E = W.shape
    V = np.zeros((K + (signal < 1.0), E))
    for k in range(K):
        pushed = np.maximum(w + spread * (W[k] - w), 0.0)
        total = pairwise_sum(pushed)
        if total > 0.0:
            V[k] = pushed / total
    if signal < 1.0:
        V[K] = (spread * (1.0 - signal) * K) * w
    return V


@kernel
def peak_noise(row, counts, num_ranks):
    """How far sampling noise moves the PAR of ``row [P] int64`` measured on ``counts [E]
    float64`` (token counts): ``sqrt(2 ln D)`` times the standard deviation of its largest rank
    load (an expert's count is Poisson: a replica's share of it varies by ``count /
    replicas^2``), over the mean rank load."""
    total = pairwise_sum(counts)
    if total <= 0.0:
        return 0.0
    replicas = counts_from_row(row, counts.shape[0])
    # row_rank_loads divides by the replicas once more: each rank sums count / replicas^2.
    per_replica = np.empty((1, counts.shape[0]))
    for e in range(counts.shape[0]):
        per_replica[0, e] = counts[e] / max(replicas[e], 1)
    variance = row_rank_loads(row, per_replica, num_ranks)[0]
    return np.sqrt(2.0 * np.log(num_ranks)) * np.sqrt(variance.max()) * num_ranks / total


@kernel
def noise_reach(row, counts, num_ranks):
    """The PAR a plan fitted to ``counts [E] float64`` (token counts summed over the window) can
    seem to gain over ``row [P] int64`` from sampling noise alone: noise lifts the placement in
    force's peak by about :func:`peak_noise`, and the fitted plan is lowered by as much."""
    return 2.0 * peak_noise(row, counts, num_ranks)
