"""Each slice's final affine from its two measurements: the pre-alignment and the template registration.

The two measure different things with different noise:

- The **pre-alignment** measures a translation. Template matching on FIB-etched marks reads
  it at the marks, which are fixed in space, so it is precise there; it cannot see a change
  of pixel size (auto-focus). Feature or cross-correlation pre-alignment measures it from the
  content, with a noise its joint solve reports.
- The **template registration** (raw slice -> median of its pre-aligned neighbours) measures a
  full affine, so it sees the pixel-size change; but the template is made of other slices,
  whose content differs from this one's (real tissue moves sideways with depth), and that
  mismatch enters every parameter as noise.

Write the registration's correction relative to the pre-alignment, about the reference point
``c`` (the marks' centre, or the canvas centre), as ``D(p) = L (p - c) + c + t``: a linear
part ``L`` and a translation ``t`` at ``c``. Over a stack, most slices have no distortion, so
the spread of ``L - I`` and of ``t`` across slices *is* the measurement noise of the template
registration (robust scale: 1.4826 x the median absolute deviation, per component). Then:

- **Linear part** (only the registration measures it): applied when it is significant, i.e.
  when its size in units of that noise, ``s = ||(L - I - trend) / sigma_L||`` over the four
  entries, exceeds ``significance``. ``trend`` is the running median of the neighbours'
  corrections (``trend_radius`` slices on each side): the median template's content mismatch
  drifts slowly with depth, while a distortion event is a spike of one to three slices. A
  Gaussian noise would exceed 5 with probability 5e-5 (a chi with 4 degrees of freedom); the
  registration's noise has heavier tails, and the default 6 is the smallest value that made
  no undistorted slice worse than template matching by more than 0.1 px on the benchmark
  stacks of ``benchmarks/real_content.py`` (real content and phantom). Otherwise the slice
  keeps the pre-alignment's shape: a correction that noise alone explains is not applied, so
  no undistorted slice inherits its template's content mismatch. A significant one is
  applied in full (a shrunk correction would leave auto-focus slices part-distorted).
- **Translation** at ``c``: the inverse-variance weighted mean of the two measurements, the
  registration's with weight ``w = sigma_P^2 / (sigma_P^2 + sigma_T^2)``. ``sigma_P`` is the
  pre-alignment's own noise as it measured it; ``sigma_T^2`` is the registration's, the
  spread of ``t`` less ``sigma_P^2`` (the spread holds both). On marks, ``sigma_P`` is small
  and the translation stays the marks'; with content pre-alignment the registration's
  translation (a median of many neighbours) takes most of the weight. A slice whose
  ``t`` differs from the pre-alignment by more than ``significance`` of their joint noise
  is listed for inspection: one of the two measurements failed there.

References
----------
Hennies et al., "AMST: Alignment to Median Smoothed Template for Focused Ion Beam Scanning
Electron Microscopy Image Stacks", Sci. Rep. 10, 2004 (2020): the template registration.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .transform import about_point, compose, invert

__all__ = ["Combined", "combine_measurements", "prealign_noise_from_parts", "robust_sigma", "DEFAULT_SIGNIFICANCE"]

#: Significance (in noise units) a correction must exceed to be applied; see the module docstring.
DEFAULT_SIGNIFICANCE = 6.0
_MAD_TO_SIGMA = 1.4826  # the MAD of a normal distribution times this is its standard deviation
#: No measured noise is taken below this (px, or 1e-6 of a linear entry): a stack of identical
#: slices has zero spread, and a zero noise would make every correction significant.
_FLOOR_PX = 1e-3
_FLOOR_LINEAR = 1e-6
#: 99 % quantiles of the chi-square distribution by degrees of freedom.
_CHI2_99 = {2: 9.21, 4: 13.28}


@dataclass(frozen=True)
class Combined:
    """What :func:`combine_measurements` decided, per slice and for the stack.

    ``affines`` are the final output -> raw maps; ``without_linear`` what each slice's would be
    without its linear correction (the combined translation only); ``linear_significance`` the
    size of each slice's linear correction in noise units (NaN where the registration was not usable);
    ``linear_applied`` whether it was applied; ``translation_significance`` the size of the
    translation disagreement in units of the joint noise; ``translation_weight`` the weight of
    the registration's translation; ``noise_linear`` (4,) and ``noise_translation_px`` (2,)
    the registration's measured noise; ``prealign_noise_px`` the pre-alignment's.
    """

    affines: np.ndarray
    without_linear: np.ndarray
    linear_significance: np.ndarray
    linear_applied: np.ndarray
    translation_significance: np.ndarray
    translation_weight: float
    noise_linear: np.ndarray
    noise_translation_px: np.ndarray
    prealign_noise_px: float
    reference_xy: tuple[float, float]

    def summary(self) -> dict:
        """The stack-level figures, JSON-ready (for ``transforms.json`` and the log)."""
        return {"reference_xy": [float(v) for v in self.reference_xy],
                "noise_linear": [float(v) for v in self.noise_linear],
                "noise_translation_px": [float(v) for v in self.noise_translation_px],
                "prealign_noise_px": float(self.prealign_noise_px),
                "translation_weight": float(self.translation_weight),
                "linear_applied": int(self.linear_applied.sum())}


def robust_sigma(values: np.ndarray, floor: float = 0.0) -> np.ndarray:
    """Per-column robust standard deviation (1.4826 MAD about the median), at least ``floor``."""
    med = np.median(values, axis=0)
    return np.maximum(_MAD_TO_SIGMA * np.median(np.abs(values - med), axis=0), floor)


def translation_disagreement(prealign: np.ndarray, registered: np.ndarray, reference_xy: tuple[float, float]
                             ) -> np.ndarray:
    """(n, 2) ``e``: where the registration puts the reference point minus where the
    pre-alignment puts it (raw px)."""
    c = np.asarray(reference_xy, np.float64)
    return np.array([r[:, :2] @ c + r[:, 2] - (p[:, :2] @ c + p[:, 2]) for p, r in zip(prealign, registered)])


def prealign_noise_from_parts(prealign: np.ndarray, registered: np.ndarray, usable: np.ndarray, *,
                              reference_xy: tuple[float, float], part_shifts_px: np.ndarray,
                              part_noise_px: np.ndarray) -> float | None:
    """The pre-alignment's translation noise (px per axis), measured against the registration.

    The pre-alignment ``P`` (template matching on the whole ROI) and the registration ``R`` are
    independent; so are ``R`` and each part ``i`` of the ROI measured alone, whose own noise
    ``s_i`` the three-cornered hat gives (:func:`amst.prealign.template_matching.part_noises_px`).
    Then ``var(R - T_i) = s_R^2 + s_i^2`` gives the registration's noise ``s_R`` (averaged over
    the parts), and ``var(R - P) = s_R^2 + s_P^2`` the pre-alignment's. Robust variances
    (1.4826 MAD), per axis; the RMS of the two axes.

    Parameters
    ----------
    prealign, registered : (n, 2, 3) arrays
    usable : (n,) bool array
        Slices with a registration and all parts measured.
    reference_xy : (x, y)
    part_shifts_px : (n, k, 2) array
        Each part's translation, in the frame of the pre-alignment's translations.
    part_noise_px : (k, 2) array

    Returns
    -------
    float or None
        None with fewer than 8 usable slices.
    """
    usable = np.asarray(usable, bool) & np.all(np.isfinite(part_shifts_px), axis=(1, 2))
    if usable.sum() < 8:
        return None
    e = translation_disagreement(prealign, registered, reference_xy)[usable]
    t_pre = np.asarray(prealign, np.float64)[usable][:, :, 2]
    parts = np.asarray(part_shifts_px, np.float64)[usable]
    var = lambda d: robust_sigma(d, _FLOOR_PX) ** 2  # noqa: E731
    # R(c) - (c + origin + t_i) = e + t_P - t_i; the constant (origin, the parts' reference)
    # does not change a variance.
    s_r2 = np.mean([np.maximum(var(e + t_pre - parts[:, i]) - np.asarray(part_noise_px)[i] ** 2, _FLOOR_PX ** 2)
                    for i in range(parts.shape[1])], axis=0)
    s_p2 = np.maximum(var(e) - s_r2, _FLOOR_PX ** 2)
    return float(np.sqrt(np.mean(s_p2)))


def _spikes(values: np.ndarray, usable: np.ndarray) -> np.ndarray:
    """Slices whose entries stand far out (robust z > 5 in some entry, from the whole stack's
    spread): left out of the local trend, so an event does not pull its neighbours' trend."""
    scale = robust_sigma(values[usable], _FLOOR_LINEAR)
    med = np.median(values[usable], axis=0)
    return np.any(np.abs(values - med) / scale > 5.0, axis=1)


def _local_trend(values: np.ndarray, usable: np.ndarray, radius: int) -> np.ndarray:
    """Per slice, the entry-wise median of the usable slices within ``radius`` (itself excluded);
    0 where there are fewer than 3 of them."""
    n = len(values)
    out = np.zeros_like(values)
    for z in range(n):
        lo, hi = max(0, z - radius), min(n, z + radius + 1)
        pick = [j for j in range(lo, hi) if j != z and usable[j]]
        if len(pick) >= 3:
            out[z] = np.median(values[pick], axis=0)
    return out


def combine_measurements(prealign: np.ndarray, registered: np.ndarray, usable: np.ndarray, *,
                         reference_xy: tuple[float, float], prealign_noise_px: float,
                         significance: float = DEFAULT_SIGNIFICANCE, trend_radius: int = 7,
                         prealign_measured: np.ndarray | None = None) -> Combined:
    """Final per-slice affines from the pre-alignment and the template registration.

    Parameters
    ----------
    prealign : (n, 2, 3) array
        Pre-alignment, output -> raw (translations).
    registered : (n, 2, 3) array
        Template registration results, output -> raw.
    usable : (n,) bool array
        Slices whose registration succeeded; the others keep their pre-alignment and do not
        enter the noise estimates.
    reference_xy : (x, y)
        Output point the decomposition is taken about: the marks' centre for template
        matching, the canvas centre otherwise.
    prealign_noise_px : float
        The pre-alignment's translation noise (px per axis) as it measured it itself; ``inf``
        when it did not (the registration's translation is then taken).
    significance : float
        See the module docstring.
    trend_radius : int
        Half-window (slices) of the running median that gives the local trend of the
        corrections (the template's own slow bias): the template's median radius.
    prealign_measured : (n,) bool array, optional
        Slices whose pre-alignment was measured (not interpolated from its neighbours because
        its own measurement failed). An unmeasured one takes the registration's translation
        (weight 1) and does not enter the noise estimates. Default: all measured.

    Returns
    -------
    Combined

    Raises
    ------
    ValueError
        When fewer than 8 slices are usable (no noise can be measured).
    """
    prealign = np.asarray(prealign, np.float64)
    registered = np.asarray(registered, np.float64)
    usable = np.asarray(usable, bool)
    n = len(prealign)
    measured = np.ones(n, bool) if prealign_measured is None else np.asarray(prealign_measured, bool)
    if usable.sum() < 8:
        raise ValueError(f"only {int(usable.sum())} slice(s) registered: at least 8 are needed to measure "
                         "the registration's noise")
    c = np.asarray(reference_xy, np.float64)
    corrections = np.array([compose(invert(p), r) for p, r in zip(prealign, registered)])
    linear = corrections[:, :, :2]
    offset = np.einsum("nij,j->ni", linear, c) + corrections[:, :, 2] - c  # e = D(c) - c
    deviation = (linear - np.eye(2)).reshape(n, 4)

    # Slices whose corrections are all within noise (robust first look) measure the noise model.
    scale_l = robust_sigma(deviation[usable], _FLOOR_LINEAR)
    scale_e = robust_sigma(offset[usable], _FLOOR_PX)
    calm = usable & measured & (np.sum((deviation / scale_l) ** 2, axis=1) < _CHI2_99[4]) \
        & (np.sum((offset / scale_e) ** 2, axis=1) < _CHI2_99[2])
    if calm.sum() < 8:
        calm = usable
    # The registration's linear error is correlated with its translation error at c (a fit that
    # slid sideways also tilts): regress one on the other across the calm slices.
    design = np.column_stack([offset[calm], np.ones(int(calm.sum()))])
    coef = np.linalg.lstsq(design, deviation[calm], rcond=None)[0]
    slope = coef[:2]  # (2, 4)
    sigma_p2 = float(prealign_noise_px) ** 2
    noise_e2 = robust_sigma(offset[calm], _FLOOR_PX) ** 2
    # The spread of e holds both noises; the registration's is what the pre-alignment's leaves.
    sigma_t2 = np.maximum(noise_e2 - sigma_p2, (0.1 * np.sqrt(noise_e2)) ** 2)
    # An unmeasured pre-alignment noise (inf) gives the registration all the weight.
    weight = float(np.mean(sigma_p2 / (sigma_p2 + sigma_t2))) if np.isfinite(sigma_p2) else 1.0
    # What the translation disagreement says about the linear error: the part of e that the
    # registration got wrong, (1 - w) e, through the measured regression.
    own_weight = np.where(measured, weight, 1.0)  # an interpolated pre-alignment: the registration's translation
    expected = ((1.0 - own_weight)[:, None] * offset) @ slope
    residual = deviation - expected
    # The median template's content mismatch drifts slowly with depth (its window moves one
    # slice at a time), a distortion event is a spike of one to three slices: each slice is
    # tested against the running median of its neighbours' corrections, and that local trend,
    # the template's, is not applied.
    trend = _local_trend(residual, usable & ~_spikes(residual, usable), trend_radius)
    spike = residual - trend
    noise_linear = robust_sigma(spike[calm], _FLOOR_LINEAR)
    centre = np.median(spike[calm], axis=0)
    residual = spike

    lin_sig = np.sqrt(np.sum(((residual - centre) / noise_linear) ** 2, axis=1))
    t_sig = np.sqrt(np.sum(offset ** 2 / noise_e2, axis=1))
    lin_sig[~usable] = np.nan
    t_sig[~usable] = np.nan
    applied = usable & (lin_sig > significance)
    linear = np.eye(2) + residual.reshape(n, 2, 2)
    noise_t = np.sqrt(noise_e2)

    out = prealign.copy()
    plain = prealign.copy()
    for z in np.flatnonzero(usable):
        w = own_weight[z]
        for target, m in ((out, linear[z] if applied[z] else np.eye(2)), (plain, np.eye(2))):
            target[z] = compose(prealign[z], about_point(m, c, w * offset[z]))
    return Combined(out, plain, lin_sig, applied, t_sig, weight, noise_linear, noise_t, float(prealign_noise_px),
                    (float(c[0]), float(c[1])))
