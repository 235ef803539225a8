"""Slice depths from measured distances between slice pairs: a robust joint least-squares solve.

Every pair ``(i, j)`` measured gives one equation ``z_j - z_i = d_ij`` with standard
deviation ``sigma_ij``; slice 0 is at depth 0. Each slice takes part in the equations of
all its pairs, so one bad measurement is outvoted by the others, and a Huber weight
(iteratively reweighted least squares) limits what an outlier can pull. A very weak prior,
consecutive slices one nominal step apart, keeps slices without any measurement (blank or
defective slices) in place between their neighbours. The normal equations are banded
(pairs span at most a few slices), so the solve costs O(n); the uncertainties (the
diagonal of the inverse and the entries next to it) are read 512 columns at a time,
O(n^2) in all, which for 20 000 slices is still small next to reading them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.linalg import cho_solve_banded, cholesky_banded

from ..combine import robust_sigma

__all__ = ["PairDistances", "DepthSolution", "solve_depths"]

#: Weight of the nominal-step prior relative to a measurement with sigma equal to the step.
PRIOR_WEIGHT = 1e-4
#: Huber threshold in robust standard deviations.
HUBER = 2.5


@dataclass(frozen=True)
class PairDistances:
    """Measured distances between slices ``first[k]`` and ``second[k]`` (``second > first``)."""

    first: np.ndarray
    second: np.ndarray
    distance: np.ndarray
    sigma: np.ndarray


@dataclass(frozen=True)
class DepthSolution:
    """Depth of each slice (slice 0 at 0), its standard deviation, and how the fit went.

    ``residual_scale`` is the robust standard deviation of the normalised residuals (1 when
    the sigmas were right); ``outliers`` is the share of equations the Huber weights cut down.
    """

    depth: np.ndarray
    sd: np.ndarray
    thickness_sd: np.ndarray  # of depth[z + 1] - depth[z] (the depths' errors are correlated)
    residual_scale: float
    outliers: float
    measured: np.ndarray  # per slice: takes part in at least one measurement


def _normal_equations(n: int, i: np.ndarray, j: np.ndarray, w: np.ndarray, d: np.ndarray,
                      band: int) -> tuple[np.ndarray, np.ndarray]:
    """Band storage (upper form, for unknowns 1..n-1) and right-hand side of sum w (z_j - z_i - d)^2."""
    ab = np.zeros((band + 1, n))
    rhs = np.zeros(n)
    np.add.at(ab[band], i, w)
    np.add.at(ab[band], j, w)
    np.add.at(ab, (band - (j - i), j), -w)  # N[i, j] for i < j sits at row band + i - j, column j
    np.add.at(rhs, j, w * d)
    np.add.at(rhs, i, -w * d)
    return ab[:, 1:], rhs[1:]


def solve_depths(pairs: PairDistances, n: int, *, prior_step: float, iterations: int = 8) -> DepthSolution:
    """Solve for the depth of each of ``n`` slices.

    Parameters
    ----------
    pairs : PairDistances
        The measurements; every distance finite and positive.
    n : int
        Number of slices.
    prior_step : float
        The nominal step, same unit as the distances: only the weak prior uses it.
    iterations : int
        Reweighting rounds.

    Returns
    -------
    DepthSolution
    """
    first = np.asarray(pairs.first, dtype=np.int64)
    second = np.asarray(pairs.second, dtype=np.int64)
    distance = np.asarray(pairs.distance, dtype=np.float64)
    sigma = np.asarray(pairs.sigma, dtype=np.float64)
    if n < 2:
        return DepthSolution(np.zeros(n), np.zeros(n), np.zeros(max(n - 1, 0)), float("nan"), 0.0,
                             np.zeros(n, dtype=bool))
    if np.any(second <= first) or np.any(first < 0) or np.any(second >= n):
        raise ValueError("pairs must satisfy 0 <= first < second < n")
    consecutive = np.arange(n - 1)
    prior_w = np.full(n - 1, PRIOR_WEIGHT / prior_step ** 2)
    band = int(max(1, (second - first).max(initial=1)))
    huber = np.ones(len(distance))
    scale = 1.0
    depth = np.arange(n) * prior_step
    for _ in range(max(1, iterations)):
        w = huber / sigma ** 2
        ab, rhs = _normal_equations(n, np.r_[first, consecutive], np.r_[second, consecutive + 1],
                                    np.r_[w, prior_w], np.r_[distance, np.full(n - 1, prior_step)], band)
        factor = cholesky_banded(ab)
        depth = np.r_[0.0, cho_solve_banded((factor, False), rhs)]
        if not len(distance):
            break
        normalised = (depth[second] - depth[first] - distance) / sigma
        spread = max(float(robust_sigma(normalised)), 1e-6)
        u = np.abs(normalised) / (HUBER * spread)
        huber = np.where(u > 1, 1.0 / np.maximum(u, 1e-12), 1.0)
        # Residuals scatter less than the measurements by the unknowns fitted to them.
        redundancy = len(distance) - (n - 1)
        scale = spread * np.sqrt(len(distance) / redundancy) if redundancy > 0 else float("nan")
    variance = np.empty(n - 1)
    covariance_next = np.zeros(n - 1)  # cov(unknown k, unknown k + 1)
    for start in range(0, n - 1, 512):
        stop = min(start + 512, n - 1)
        cols = np.arange(start, stop)
        eye = np.zeros((n - 1, stop - start))
        eye[cols, cols - start] = 1.0
        inverse = cho_solve_banded((factor, False), eye)
        variance[start:stop] = inverse[cols, cols - start]
        inner = cols[cols + 1 < n - 1]
        covariance_next[inner] = inverse[inner + 1, inner - start]
    depth_var = np.r_[0.0, variance]
    thickness_var = depth_var[1:] + depth_var[:-1] - 2 * np.r_[0.0, covariance_next[:-1]]
    measured = np.zeros(n, dtype=bool)
    measured[first] = measured[second] = True
    return DepthSolution(depth, scale * np.sqrt(depth_var), scale * np.sqrt(np.maximum(thickness_var, 0.0)),
                         float(scale), float(np.mean(huber < 1)) if len(huber) else 0.0, measured)
