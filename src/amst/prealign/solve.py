"""Global solve: slice positions from many pairwise displacements, robustly.

Chaining slice-to-previous shifts makes position errors a random walk (straight surfaces
bend). Measuring pairs at several z-gaps and solving all positions jointly by iteratively
reweighted least squares ties every slice to far neighbours, so errors stop accumulating,
and a wrong pair (noise slice, debris) is down-weighted instead of shifting everything
after it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as spla

from .pairwise import Pair


@dataclass
class SolveResult:
    positions: np.ndarray        # (n, 2) translations t_z (x, y), t at the reference slice = 0
    residuals: np.ndarray        # (m, 2) per-pair residual of the accepted solution
    weights: np.ndarray          # (m,) final robust weight per pair
    outliers: list[tuple[int, int, float]]  # (i, j, |residual|) of down-weighted pairs
    unconstrained: np.ndarray    # (n,) bool: slices with no usable pair (interpolated)


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
    outlier_threshold : float
        Pairs whose residual exceeds this many px (after the robust fit) are reported.
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
    gap = (j - i).astype(np.float64)
    # Longer gaps see more change in content: trust them a little less.
    prior = 1.0 / np.sqrt(np.maximum(gap, 1.0))

    touched = np.zeros(n, dtype=bool)
    touched[i] = True
    touched[j] = True
    free = np.flatnonzero(touched)
    if free.size == 0:
        positions = np.zeros((n, 2))
        return SolveResult(positions, np.zeros((0, 2)), np.zeros(0), [], np.ones(n, dtype=bool))
    positions = np.full((n, 2), np.nan)
    components = _components(n, i, j, touched)
    weights = prior.copy()
    for it in range(max(1, iterations)):
        positions[:] = np.nan
        for comp in components:
            ref = reference if reference in comp else comp[0]
            positions[comp] = _weighted_lsq(comp, ref, i, j, d, weights)
        resid = positions[j] - positions[i] - d
        r = np.linalg.norm(resid, axis=1)
        scale = max(1.4826 * np.median(r) if r.size else 0.0, 0.05)
        if it < iterations // 2:
            # Huber first (convex: cannot lock onto a solution pulled by gross outliers) ...
            k = 1.345 * scale
            weights = prior * np.minimum(1.0, k / np.maximum(r, 1e-12))
        else:
            # ... then Tukey's biweight, which rejects them entirely.
            c = 4.685 * scale
            weights = prior * np.where(r < c, (1 - (r / c) ** 2) ** 2, 0.0)
        weights = np.maximum(weights, 1e-6 * prior)  # keep the system connected
    # Components other than the reference's are placed by interpolation across the gap.
    positions = _fill_gaps(positions, components, reference)
    resid = positions[j] - positions[i] - d
    r = np.linalg.norm(resid, axis=1)
    outliers = [(int(a), int(b), float(v)) for a, b, v in zip(i, j, r) if v > outlier_threshold]
    unconstrained = ~touched
    return SolveResult(positions, resid, weights, outliers, unconstrained)


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
    """Linear interpolation (and constant extrapolation) for slices without a position.

    Separate components cannot be related by measurements; each is shifted so it
    continues its predecessor linearly (the best guess, flagged by the caller).
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
