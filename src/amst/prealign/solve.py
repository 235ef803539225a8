"""Global solve: slice positions from many pairwise displacements, robustly.

Chaining slice-to-previous shifts makes position errors a random walk (straight surfaces
bend). Measuring pairs at several z-gaps and solving all positions jointly by iteratively
reweighted least squares ties every slice to far neighbours, so errors stop accumulating,
and a wrong pair (noise slice, debris) is down-weighted instead of shifting everything
after it. Each gap is weighted by its own measurement noise, measured from loop closures:
far pairs help only as much as the content lets them be measured.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as spla

from .pairwise import Pair

_MIN_SIGMA = 0.02  # px; no pair is trusted more than this (sub-pixel peak fits are not exact)
# Robust weights on residuals in units of their pair's noise (|r| / sigma of a 2-D residual).
_HUBER_K = 2.0
_TUKEY_C = 5.0
_WINSOR = 10.0  # closures beyond this many robust sigmas count as this many


@dataclass
class SolveResult:
    positions: np.ndarray        # (n, 2) translations t_z (x, y), t at the reference slice = 0
    residuals: np.ndarray        # (m, 2) per-pair residual of the accepted solution
    weights: np.ndarray          # (m,) final weight per pair (inverse noise variance x robust weight)
    rejected: np.ndarray         # (m,) bool: pairs the robust fit rejected (residual >> their gap's noise)
    outliers: list[tuple[int, int, float]]  # (i, j, |residual|) of down-weighted pairs
    unconstrained: np.ndarray    # (n,) bool: slices with no usable pair (interpolated)
    noise_by_gap: dict[int, float]  # measurement noise per z-gap (px per axis), from loop closures


def solve_positions(n: int, pairs: list[Pair], reference: int = 0, iterations: int = 20,
                    outlier_threshold: float = 1.0, excluded: np.ndarray | None = None) -> SolveResult:
    """Find translations ``t`` with ``t_j - t_i ~= d_ij`` for every usable pair.

    Parameters
    ----------
    n : int
        Number of slices.
    pairs : list of Pair
        Failed measurements (``ok`` False) and pairs touching ``excluded`` slices are ignored.
    reference : int
        Slice whose translation is 0 (the first usable slice if that one is excluded).
    iterations : int
        IRLS iterations: the first half with Huber weights, the rest with Tukey's biweight.
        Each pair is weighted by the inverse noise variance of its gap (:func:`gap_noise`),
        so gaps whose content changed too much to be measured well barely count.
    outlier_threshold : float
        Rejected pairs whose residual also exceeds this many px are reported as outliers.
    excluded : (n,) bool array, optional
        Slices not to use (blank, failed); they are interpolated from their neighbours.

    Returns
    -------
    SolveResult
    """
    excluded = np.zeros(n, dtype=bool) if excluded is None else excluded.copy()
    usable = [p for p in pairs if p.measurement.ok and not excluded[p.i] and not excluded[p.j]]
    i = np.array([p.i for p in usable], dtype=np.int64)
    j = np.array([p.j for p in usable], dtype=np.int64)
    d = np.array([p.measurement.shift_xy for p in usable], dtype=np.float64).reshape(-1, 2)
    gap = j - i
    sigma_by_gap = gap_noise(i, j, d)
    sigma = np.array([sigma_by_gap.get(int(g), np.nan) for g in gap]) if gap.size else np.zeros(0)
    measured = bool(gap.size) and bool(np.all(np.isfinite(sigma)))
    if not measured:
        # No loop closures (e.g. gaps 2 and 3): start equal, then scale by the first fit's residuals.
        sigma = np.sqrt(np.maximum(gap, 1.0))
    prior = 1.0 / sigma ** 2

    touched = np.zeros(n, dtype=bool)
    touched[i] = True
    touched[j] = True
    free = np.flatnonzero(touched)
    if free.size == 0:
        positions = np.zeros((n, 2))
        return SolveResult(positions, np.zeros((0, 2)), np.zeros(0), np.zeros(0, dtype=bool), [],
                           np.ones(n, dtype=bool), {})
    positions = np.full((n, 2), np.nan)
    components = _components(n, i, j, touched)
    weights = prior.copy()
    for it in range(max(1, iterations)):
        positions[:] = np.nan
        for comp in components:
            ref = reference if reference in comp else comp[0]
            positions[comp] = _weighted_lsq(comp, ref, i, j, d, weights)
        resid = positions[j] - positions[i] - d
        if it == 0 and not measured:
            # Noise grows like a random walk with the gap; its scale is what the least-squares fit leaves.
            scale = max(1.4826 * float(np.median(np.linalg.norm(resid, axis=1) / sigma)), 0.05)
            sigma = scale * sigma
            prior = 1.0 / sigma ** 2
        u = np.linalg.norm(resid, axis=1) / sigma  # residual in units of its pair's noise
        if it < iterations // 2:
            # Huber first (convex: cannot lock onto a solution pulled by gross outliers) ...
            weights = prior * np.minimum(1.0, _HUBER_K / np.maximum(u, 1e-12))
        else:
            # ... then Tukey's biweight, which rejects them entirely.
            weights = prior * np.where(u < _TUKEY_C, (1 - (u / _TUKEY_C) ** 2) ** 2, 0.0)
        weights = np.maximum(weights, 1e-6 * prior)  # keep the system connected
    # Components other than the reference's are placed by interpolation across the gap.
    positions = _fill_gaps(positions, components, reference)
    resid = positions[j] - positions[i] - d
    r = np.linalg.norm(resid, axis=1)
    rejected = (r / sigma >= _TUKEY_C) if r.size else np.zeros(0, dtype=bool)
    outliers = [(int(a), int(b), float(v)) for a, b, v, out in zip(i, j, r, rejected) if out and v > outlier_threshold]
    unconstrained = ~touched
    return SolveResult(positions, resid, weights, rejected, outliers, unconstrained, sigma_by_gap)


def gap_noise(i: np.ndarray, j: np.ndarray, d: np.ndarray, min_closures: int = 8) -> dict[int, float]:
    """Measurement noise of the pairs at each z-gap, from loop closures.

    A gap-``G`` measurement and the chain of ``G / g`` gap-``g`` measurements spanning the
    same slices should agree; their difference (a closure) has variance
    ``sigma_G**2 + (G / g) * sigma_g**2`` and no content motion, which both sides see.
    Winsorised closure variances for every such pairing of gaps give a small non-negative
    least-squares problem for the ``sigma_g``, constrained to grow with the gap. Residuals
    of the joint fit cannot be used instead: the best-weighted gap fits its own noise and
    would look ever better.

    Parameters
    ----------
    i, j : (m,) int arrays
        Slice indices of each measured pair (``j > i``).
    d : (m, 2) array
        Measured displacement of each pair (x, y).
    min_closures : int
        Pairings of gaps with fewer complete closures are not used.

    Returns
    -------
    dict
        ``{gap: sigma}`` in px per axis; empty when no closure exists (e.g. chaining only).
    """
    from scipy.optimize import nnls

    gaps = sorted({int(g) for g in (j - i)})
    if len(gaps) < 2:
        return {}
    n = int(j.max()) + 1
    by_gap = {g: np.full((n, 2), np.nan) for g in gaps}
    for a, b, v in zip(i, j, d):
        by_gap[int(b - a)][a] = v
    rows, variances = [], []
    for big in gaps:
        for small in gaps:
            if small >= big or big % small:
                continue
            k = big // small
            chain = sum(by_gap[small][m * small: n - big + m * small] for m in range(k))
            closure = by_gap[big][: n - big] - chain
            closure = closure[np.isfinite(closure).all(axis=1)]
            if len(closure) < min_closures:
                continue
            row = np.zeros(len(gaps))
            row[gaps.index(big)] = 1.0
            row[gaps.index(small)] = k
            rows.append(row)
            # Winsorised, not robust: a gap that now and then locks onto moving content (a
            # heavy tail) must count as noisier than one that never does. Gross failures (a
            # noise slice) are capped so that they do not swamp the estimate.
            magnitude = np.abs(closure)
            cap = _WINSOR * 1.4826 * np.median(magnitude)
            variances.append(max(float(np.mean(np.minimum(magnitude, cap) ** 2)), _MIN_SIGMA ** 2))
    if not rows:
        return {}
    a, v = np.array(rows), np.array(variances)
    if np.linalg.matrix_rank(a) < len(gaps):
        # Too few pairings to separate the gaps: noise variance proportional to the gap.
        g = np.array(gaps, dtype=np.float64)
        scale = float(np.median(v / (a @ g)))
        return {gap: max(float(np.sqrt(scale * gap)), _MIN_SIGMA) for gap in gaps}
    # Noise grows with the gap (the content changes more): fit non-negative increments of
    # the variance from one gap to the next, relative to each closure's variance (all are
    # known to a similar relative precision).
    cumulative = np.tril(np.ones((len(gaps), len(gaps))))
    increments, _ = nnls((a @ cumulative) / v[:, None], np.ones(len(v)))
    var = cumulative @ increments
    return {gap: max(float(np.sqrt(x)), _MIN_SIGMA) for gap, x in zip(gaps, var)}


def _components(n: int, i: np.ndarray, j: np.ndarray, touched: np.ndarray) -> list[np.ndarray]:
    """Connected groups of slices (a run of failed slices can split the stack)."""
    graph = sp.coo_matrix((np.ones(len(i)), (i, j)), shape=(n, n))
    count, labels = sp.csgraph.connected_components(graph, directed=False)
    comps = [np.flatnonzero((labels == k) & touched) for k in range(count)]
    return sorted((c for c in comps if c.size), key=lambda c: c[0])


def _weighted_lsq(comp: np.ndarray, ref: int, i: np.ndarray, j: np.ndarray, d: np.ndarray,
                  w: np.ndarray) -> np.ndarray:
    index = -np.ones(int(comp.max()) + 1, dtype=np.int64)
    unknowns = comp[comp != ref]
    index[unknowns] = np.arange(unknowns.size)
    sel = np.isin(i, comp)
    ii, jj, dd, ww = i[sel], j[sel], d[sel], np.sqrt(w[sel])
    rows = np.arange(ii.size)
    data, r_idx, c_idx = [], [], []
    for col, sign in ((jj, 1.0), (ii, -1.0)):
        keep = col != ref
        data.append(sign * ww[keep])
        r_idx.append(rows[keep])
        c_idx.append(index[col[keep]])
    a = sp.csr_matrix((np.concatenate(data), (np.concatenate(r_idx), np.concatenate(c_idx))),
                      shape=(ii.size, unknowns.size))
    out = np.zeros((comp.size, 2))
    pos = {int(z): k for k, z in enumerate(comp)}
    normal = (a.T @ a).tocsc() + sp.identity(unknowns.size, format="csc") * 1e-9
    for axis in range(2):
        sol = spla.spsolve(normal, a.T @ (ww * dd[:, axis])) if unknowns.size else np.zeros(0)
        col = np.zeros(comp.size)
        col[[pos[int(z)] for z in unknowns]] = sol
        out[:, axis] = col
    return out


def _fill_gaps(positions: np.ndarray, components: list[np.ndarray], reference: int) -> np.ndarray:
    """Join separately solved components, then interpolate slices without a position.

    Separate components cannot be related by measurements. Taken in order of their first
    slice, each component after the first, except the reference's, is shifted by one
    constant offset so that its first slice sits exactly where the previous component's
    last slice is (already shifted): no step across the gap, and no continuation of the
    previous component's drift (the best guess, flagged by the caller). The first component
    keeps its own solution (its first slice, or the reference, at 0) even when the
    reference lies in a later one. Slices still without a position (NaN) are then
    interpolated linearly between the nearest known slices on each axis, and held constant
    beyond the first and last known ones.
    """
    out = positions.copy()
    n = len(out)
    if len(components) > 1:
        ordered = sorted(components, key=lambda c: c[0])
        for prev, comp in zip(ordered, ordered[1:]):
            if reference in comp:
                continue
            out[comp] += out[prev[-1]] - out[comp[0]]
    known = np.flatnonzero(np.isfinite(out[:, 0]))
    for axis in range(2):
        out[:, axis] = np.interp(np.arange(n), known, out[known, axis])
    return out
