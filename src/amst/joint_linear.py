"""The linear distortions of a run of neighbouring slices, solved jointly from registrations
between pairs of them (:func:`solve_run`).

Registering slice ``s`` (placed without a linear correction) to slice ``t`` measures, to first
order, ``e_s - e_t + (t - s) g``: the linear distortion of ``s`` (the entries of ``L - I``, what
a registration to an undistorted template would find), less that of ``t`` (its distorted image
is the template), plus the content's own change over ``t - s`` slices (``g`` per slice; real
tissue and the phantom change shape with depth), plus noise that grows with the distance
(content mismatch). Around a run of possibly distorted slices, a few slices that are taken as
undistorted (``e = 0``, the *anchors*) fix what the pairs leave free: the level of the ``e``
(every pair measures a difference) and, with ``g``, their ramp along z; two anchors on one side
do that alone (a run at a stack end). The pairs are solved by weighted least squares (each
entry of the 2 x 2 on its own, weights 1 / noise^2 of the pair's distance), pairs that stand out
of the fit are left out one at a time, and then the unknown whose distortion is least
significant (its size in units of its own standard deviation, from the fit's covariance, over
the four entries) is taken as undistorted too, until every one left is significant. A
distortion that only the pairs' noise explains is thus not applied, and the distortion of a
slice next to another one is measured with that one's own distortion taken out, not inherited.

References
----------
Hennies et al., "AMST: Alignment to Median Smoothed Template for Focused Ion Beam Scanning
Electron Microscopy Image Stacks", Sci. Rep. 10, 2004 (2020): the template registration whose
content mismatch this replaces near distortion events.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

__all__ = ["PairDeviation", "RunSolution", "solve_run", "standard_scores"]

#: A pair whose residual exceeds this many of its noise in some entry is left out of the fit
#: (a failed registration, or content that changed abruptly between the two slices).
OUTLIER = 5.0


@dataclass(frozen=True)
class PairDeviation:
    """Slice ``source`` registered to slice ``target``: the linear part of the correction less
    the identity, as its four entries (row-major)."""

    source: int
    target: int
    deviation: np.ndarray


@dataclass(frozen=True)
class RunSolution:
    """What :func:`solve_run` found.

    ``deviation``: per slice kept as distorted, its four entries of ``L - I``; ``significance``:
    per unknown slice, the size of its distortion in noise units at the last fit it took part in
    (dropped ones included); ``motion``: the content's change per slice ``g``; ``outliers``: the
    pairs left out; ``reason``: why nothing could be solved (empty when solved).
    """

    deviation: dict[int, np.ndarray] = field(default_factory=dict)
    significance: dict[int, float] = field(default_factory=dict)
    motion: np.ndarray = field(default_factory=lambda: np.zeros(4))
    outliers: tuple[tuple[int, int], ...] = ()
    reason: str = ""


def _fit(pairs: Sequence[PairDeviation], unknowns: list[int], noise_by_gap: Mapping[int, np.ndarray]
         ) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """Weighted least squares per entry: (k + 1, 4) parameters (the unknowns' ``e``, then ``g``),
    their (k + 1, 4) variances, and the (m, 4) standardised residuals; None when not determined."""
    col = {z: i for i, z in enumerate(unknowns)}
    k = len(unknowns)
    design = np.zeros((len(pairs), k + 1))
    for row, p in enumerate(pairs):
        if p.source in col:
            design[row, col[p.source]] += 1.0
        if p.target in col:
            design[row, col[p.target]] -= 1.0
        design[row, k] = p.target - p.source
    if np.linalg.matrix_rank(design) < k + 1:
        return None
    y = np.array([p.deviation for p in pairs], np.float64)
    sigma = np.array([noise_by_gap[abs(p.target - p.source)] for p in pairs], np.float64)
    params = np.zeros((k + 1, 4))
    variances = np.zeros((k + 1, 4))
    residuals = np.zeros_like(y)
    for j in range(4):
        w = 1.0 / sigma[:, j]
        a = design * w[:, None]
        normal_inv = np.linalg.inv(a.T @ a)
        params[:, j] = normal_inv @ (a.T @ (y[:, j] * w))
        variances[:, j] = np.diag(normal_inv)
        residuals[:, j] = (y[:, j] - design @ params[:, j]) * w
    return params, variances, residuals


def solve_run(pairs: Sequence[PairDeviation], unknowns: Sequence[int], noise_by_gap: Mapping[int, np.ndarray], *,
              significance: float) -> RunSolution:
    """The linear distortion of each of ``unknowns`` from registrations between pairs of slices.

    Parameters
    ----------
    pairs : sequence of PairDeviation
        Registrations among the unknowns and the anchors (every other slice they name, taken
        as undistorted).
    unknowns : sequence of int
        The slices whose distortion is sought.
    noise_by_gap : mapping of int to (4,) arrays
        The noise of one pair's deviation, per entry, by the pair's distance along z (measured
        on calm slices in the run).
    significance : float
        What an unknown's distortion must exceed, in units of its standard deviation (the root
        of the sum over the four entries of squared ratios), to be kept.

    Returns
    -------
    RunSolution

    Examples
    --------
    Slice 5 distorted, slices 4 and 6 not, content growing by 1e-4 per slice:

    >>> g, e5 = np.full(4, 1e-4), np.array([5e-3, 0.0, 0.0, -3e-3])
    >>> truth = {4: np.zeros(4), 5: e5, 6: np.zeros(4)}
    >>> pairs = [PairDeviation(s, t, truth[s] - truth[t] + (t - s) * g) for s, t in ((4, 5), (5, 6), (4, 6))]
    >>> sol = solve_run(pairs, [5], {1: np.full(4, 4e-4), 2: np.full(4, 6e-4)}, significance=6)
    >>> sol.deviation[5].round(6).tolist(), sol.motion.round(6).tolist()
    ([0.005, 0.0, 0.0, -0.003], [0.0001, 0.0001, 0.0001, 0.0001])
    """
    pairs = [p for p in pairs if abs(p.target - p.source) in noise_by_gap and np.all(np.isfinite(p.deviation))]
    unknowns = sorted({int(z) for z in unknowns})
    sig: dict[int, float] = {}
    outliers: list[tuple[int, int]] = []
    while True:
        fit = _fit(pairs, unknowns, noise_by_gap)
        if fit is None:
            return RunSolution(significance=sig, outliers=tuple(outliers),
                               reason=f"the pairs among slices {sorted({p.source for p in pairs} | {p.target for p in pairs})} "
                                      f"do not determine the distortion of slices {unknowns}")
        params, variances, residuals = fit
        worst = int(np.argmax(np.abs(residuals).max(axis=1))) if len(pairs) else -1
        if worst >= 0 and np.abs(residuals[worst]).max() > OUTLIER:
            rest = pairs[:worst] + pairs[worst + 1:]
            if _fit(rest, unknowns, noise_by_gap) is not None:
                outliers.append((pairs[worst].source, pairs[worst].target))
                pairs = rest
                continue
        # Content that does not change linearly over the run shows in the residuals: the
        # variances are scaled by their reduced chi-square where it exceeds 1.
        dof = residuals.size - params.size
        misfit = max(1.0, float(np.sum(residuals ** 2)) / dof) if dof > 0 else 1.0
        s = np.sqrt(np.sum(params[:-1] ** 2 / (variances[:-1] * misfit), axis=1))
        sig.update({z: float(v) for z, v in zip(unknowns, s)})
        if len(unknowns) and s.min() <= significance:
            unknowns = unknowns[:int(np.argmin(s))] + unknowns[int(np.argmin(s)) + 1:]
            continue
        return RunSolution({z: params[i] for i, z in enumerate(unknowns)}, sig, params[-1], tuple(outliers))


def standard_scores(pairs: Sequence[PairDeviation], unknowns: Sequence[int], noise_by_gap: Mapping[int, np.ndarray]
                    ) -> np.ndarray | None:
    """(k, 4): each unknown's fitted distortion in units of its standard deviation, all of them
    fitted at once (no pair or unknown left out); None when the pairs do not determine them.
    On undistorted slices these measure how well ``noise_by_gap`` describes the pairs' noise."""
    unknowns = sorted({int(z) for z in unknowns})
    fit = _fit([p for p in pairs if np.all(np.isfinite(p.deviation))], unknowns, noise_by_gap)
    if fit is None:
        return None
    params, variances, _ = fit
    return params[:-1] / np.sqrt(variances[:-1])
