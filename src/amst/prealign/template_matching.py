"""Template matching on fiducial marks: normalised cross-correlation, sub-pixel peak."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable

import cv2
import numpy as np

from ..combine import robust_sigma
from ..gauss_newton import refine_affine
from ..parallel import ordered_map
from ..transform import apply_to_points, translation
from ..stack import Stack
from ..imageops import finite_float32, is_blank
from .subpixel import fit_peak_2d

log = logging.getLogger(__name__)


@dataclass
class TrackResult:
    positions: np.ndarray   # (n, 2) top-left (x, y) of the ROI in each raw slice; NaN where failed
    scores: np.ndarray      # (n,) NCC peak
    blank: np.ndarray       # (n,) bool
    reasons: list[str]
    # (n, 3, 2) position (x, y) of each third of the ROI, as the ROI's top-left, less the same
    # in the ROI's own slice; NaN where failed. Three measurements of one position: their
    # disagreement is the measurement noise (:func:`tm_noise_px`).
    thirds: np.ndarray | None = None


def part_noises_px(thirds: np.ndarray) -> np.ndarray | None:
    """Each ROI third's own translation noise (3, 2) (px per axis), by the three-cornered hat.

    Each third of the ROI measures the slice's position on its own. With ``v_ij`` the
    variance of the difference of thirds i and j (robust: 1.4826 MAD, so the few auto-focus
    slices, whose thirds really move apart, do not count), ``s_1^2 = (v_12 + v_13 - v_23) / 2``
    and so on. None with fewer than 8 measured slices.

    References
    ----------
    Gray and Allan, "A method for estimating the frequency stability of an individual
    oscillator", 28th Annual Symposium on Frequency Control (1974): the three-cornered hat.
    """
    good = np.all(np.isfinite(thirds), axis=(1, 2))
    if good.sum() < 8:
        return None
    t = thirds[good]

    def var(i: int, j: int) -> np.ndarray:
        return robust_sigma(t[:, i] - t[:, j]) ** 2

    v12, v13, v23 = var(0, 1), var(0, 2), var(1, 2)
    floor = 1e-6 + 0.01 * (v12 + v13 + v23) / 3  # a negative estimate (sampling noise) is not a zero noise
    own = [np.maximum(x, floor) for x in ((v12 + v13 - v23) / 2, (v12 + v23 - v13) / 2, (v13 + v23 - v12) / 2)]
    return np.sqrt(np.stack(own))


def tm_noise_px(thirds: np.ndarray) -> float | None:
    """Template matching's translation noise (px per axis) as its three ROI thirds give it.

    The whole ROI combines the thirds (:func:`part_noises_px`), ``1 / s^2 = sum 1 / s_i^2``,
    per axis; the RMS of the two axes. An estimate, not a measurement of the whole ROI's fit:
    :func:`amst.combine.prealign_noise_from_parts` measures that against the registration.
    None with fewer than 8 measured slices.
    """
    own = part_noises_px(thirds)
    if own is None:
        return None
    whole = 1.0 / np.sum(1.0 / own ** 2, axis=0)
    return float(np.sqrt(np.mean(whole)))


def match_template(search: np.ndarray, template: np.ndarray, peak_fit: str = "gaussian") -> tuple[float, float, float]:
    """Sub-pixel position (x, y) of ``template`` in ``search`` and the NCC peak value.

    Uses OpenCV ``matchTemplate`` with ``TM_CCOEFF_NORMED`` (zero-mean normalised
    cross-correlation), then a per-axis fit through the maximum and its neighbours.
    """
    ncc = cv2.matchTemplate(search.astype(np.float32), template.astype(np.float32), cv2.TM_CCOEFF_NORMED)
    _, peak, _, (ix, iy) = cv2.minMaxLoc(ncc)
    y, x = fit_peak_2d(ncc, iy, ix, peak_fit)
    return x, y, float(peak)


def affine_refined_position(image: np.ndarray, template: np.ndarray, x: float, y: float,
                            max_move_px: float = 2.0) -> tuple[float, float]:
    """Top-left ``(x, y)`` of the translation that puts the template's centre where it really is.

    Normalised cross-correlation of a translated template finds where the marks match best
    on average. When the pixel size changed (auto-focus), the marks spread or shrink about
    the focus point, and that average sits at the marks' centroid rather than at the ROI
    centre. An affine fit of the template at the NCC position (:func:`amst.gauss_newton.refine_affine`:
    the fast back-end's iterations, one level, no smoothing, from there), read at the
    template's centre, removes that bias. A fit that moves the centre by more than
    ``max_move_px`` is not trusted: the NCC position is kept.
    """
    th, tw = template.shape
    centre = np.array([[(tw - 1) / 2.0, (th - 1) / 2.0]])
    try:
        fit = refine_affine(image, template, translation(x, y))
    except np.linalg.LinAlgError:
        fit = None
    if fit is None:  # no refinement possible: keep the NCC position
        return x, y
    shift = apply_to_points(fit, centre)[0] - centre[0]
    if not np.all(np.isfinite(shift)) or np.hypot(shift[0] - x, shift[1] - y) > max_move_px:
        return x, y
    return float(shift[0]), float(shift[1])


def track_template(stack: Stack, roi_xywh: tuple[int, int, int, int], roi_slice: int, *, search_margin: int = 64,
                   min_score: float = 0.5, peak_fit: str = "gaussian", workers: int = 1,
                   progress: Callable[[int], None] | None = None, sigma: float = 1.5,
                   refine: bool = False) -> TrackResult:
    """Find the ROI of ``roi_slice`` in every slice, searching around its last position.

    Tracking runs outward from ``roi_slice`` in both directions. A slice whose peak is
    below ``min_score`` (or that is blank) is a failed measurement: its position is NaN
    and the search for the next slice stays where the last good one was. A peak on the
    edge of the search window triggers one wider search. Both the template and the slices
    are smoothed with a Gaussian of ``sigma`` px first: FIB-SEM shot noise otherwise caps
    the NCC of thin marks near 0.4 (measured on ``amst synth``); smoothing both alike
    does not move the peak. With ``refine`` each position is corrected by
    :func:`affine_refined_position`.
    """
    smooth = (lambda im: cv2.GaussianBlur(finite_float32(im), (0, 0), sigma)) if sigma > 0 else finite_float32
    n, h, w = stack.shape
    x0, y0, rw, rh = (int(round(v)) for v in roi_xywh)
    if rw < 8 or rh < 8 or x0 < 0 or y0 < 0 or x0 + rw > w or y0 + rh > h:
        raise ValueError(
            f"template ROI x={x0} y={y0} w={rw} h={rh} is not inside slice {roi_slice} ({w}x{h} px) "
            "or is smaller than 8 px; choose a region on the alignment marks"
        )
    reference = smooth(stack.read(roi_slice))
    template = reference[y0:y0 + rh, x0:x0 + rw]
    if is_blank(template) or float(template.std()) < 1e-6:
        raise ValueError(f"template ROI x={x0} y={y0} w={rw} h={rh} in slice {roi_slice} is featureless; "
                         "choose a region with alignment marks (or --roi auto)")
    positions = np.full((n, 2), np.nan)
    thirds = np.full((n, 3, 2), np.nan)
    cuts = [0, rw // 3, 2 * rw // 3, rw]
    parts = [(template[:, cuts[k]:cuts[k + 1]], cuts[k]) for k in range(3)]
    scores = np.zeros(n)
    blank = np.zeros(n, dtype=bool)
    reasons = [""] * n
    for order in (range(roi_slice, n), range(roi_slice - 1, -1, -1)):
        last = np.array([x0, y0], dtype=np.float64) if order.start == roi_slice else positions[roi_slice].copy()
        for z, image in zip(order, ordered_map(stack.read, order, workers)):
            if is_blank(image):
                blank[z], reasons[z] = True, "blank slice"
            else:
                smoothed = smooth(image)
                found = _search(smoothed, template, last, search_margin, peak_fit)
                scores[z] = found[2]
                if found[2] >= min_score:
                    positions[z] = affine_refined_position(smoothed, template, *found[:2]) if refine else found[:2]
                    last = positions[z].copy()
                    thirds[z] = _part_positions(smoothed, parts, found[:2], peak_fit)
                else:
                    reasons[z] = f"NCC peak {found[2]:.2f} < {min_score}"
            if progress:
                progress(1)
    if np.isnan(positions[roi_slice]).any():
        raise ValueError(f"the template does not match its own slice {roi_slice}; is that slice blank?")
    return TrackResult(positions, scores, blank, reasons, thirds - thirds[roi_slice])


def _part_positions(image: np.ndarray, parts: list[tuple[np.ndarray, int]], xy: tuple[float, float],
                    peak_fit: str, margin: int = 3) -> np.ndarray:
    """(k, 2) position of the ROI's top-left as each part (template columns from ``dx``) finds
    it, searched within ``margin`` px of where the whole ROI matched; NaN off the image."""
    out = np.full((len(parts), 2), np.nan)
    for k, (part, dx) in enumerate(parts):
        th, tw = part.shape
        x0, y0 = int(round(xy[0])) + dx - margin, int(round(xy[1])) - margin
        if x0 < 0 or y0 < 0 or x0 + tw + 2 * margin > image.shape[1] or y0 + th + 2 * margin > image.shape[0]:
            continue
        if float(part.std()) < 1e-6:
            return np.full((len(parts), 2), np.nan)  # a flat third measures nothing
        x, y, _ = match_template(image[y0:y0 + th + 2 * margin, x0:x0 + tw + 2 * margin], part, peak_fit)
        out[k] = (x0 + x - dx, y0 + y)
    return out


def _search(image: np.ndarray, template: np.ndarray, last_xy: np.ndarray, margin: int,
            peak_fit: str) -> tuple[float, float, float]:
    h, w = image.shape
    th, tw = template.shape
    for m in (margin, 4 * margin):
        lx, ly = int(round(last_xy[0])), int(round(last_xy[1]))
        sx0, sy0 = max(0, lx - m), max(0, ly - m)
        sx1, sy1 = min(w, lx + tw + m), min(h, ly + th + m)
        if sx1 - sx0 < tw or sy1 - sy0 < th:
            return np.nan, np.nan, 0.0
        x, y, peak = match_template(image[sy0:sy1, sx0:sx1], template, peak_fit)
        on_edge = (x < 1 and sx0 > 0) or (y < 1 and sy0 > 0) or \
                  (x > sx1 - sx0 - tw - 1 and sx1 < w) or (y > sy1 - sy0 - th - 1 and sy1 < h)
        if not on_edge:
            break
    return sx0 + x, sy0 + y, peak
