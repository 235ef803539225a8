"""Each slice's final affine from its two measurements: the pre-alignment and the template
registration (:mod:`amst.combine`, the maths), with the noise of each measured in this run."""

from __future__ import annotations

import logging

import numpy as np

from ..combine import combine_measurements, prealign_noise_from_parts
from ..config import RunConfig
from ..transform import apply_to_points, invert
from ..transforms_io import Transforms
from .records import SliceResult

log = logging.getLogger("amst")


def _reference_point(pre_tf: Transforms, prealign_affines: np.ndarray, canvas: tuple[int, int]) -> tuple[float, float]:
    """Output point the corrections are decomposed about: the template-matching ROI's centre
    (where the marks pin the translation), else the canvas centre."""
    info = pre_tf.extra.get("prealign_info", {})
    if info.get("method") == "tm" and info.get("roi_xywh_px") and info.get("roi_slice") is not None:
        x, y, w, h = (float(v) for v in info["roi_xywh_px"])
        centre = np.array([[x + (w - 1) / 2.0, y + (h - 1) / 2.0]])
        point = apply_to_points(invert(prealign_affines[int(info["roi_slice"])]), centre)[0]
        return float(point[0]), float(point[1])
    return (canvas[1] - 1) / 2.0, (canvas[0] - 1) / 2.0


def _prealign_noise(pre_tf: Transforms, prealign_affines: np.ndarray, registered: np.ndarray, usable: np.ndarray,
                    reference_xy: tuple[float, float]) -> float:
    """The pre-alignment's translation noise (px per axis), measured in this run; inf when it cannot be.

    Template matching: against the registration, with the ROI's three thirds as independent
    references (:func:`amst.combine.prealign_noise_from_parts`). The joint solve of feature /
    cross-correlation pairs reports its pair noise from loop closures (``noise_by_gap_px``): a
    slice sits between two pairs of the smallest gap, so its position noise is that / sqrt 2.
    """
    info = pre_tf.extra.get("prealign_info", {})
    if info.get("method") == "tm" and info.get("tm_thirds_noise_px"):
        parts = np.array([s.metrics.get("tm_thirds_px", np.full((3, 2), np.nan)) for s in pre_tf.slices], float)
        noise = prealign_noise_from_parts(prealign_affines, registered, usable, reference_xy=reference_xy,
                                          part_shifts_px=parts, part_noise_px=np.array(info["tm_thirds_noise_px"]))
        if noise is not None:
            return noise
    if info.get("method") == "tm":
        # Too few slices to measure it: the thirds' estimate, else the marks are taken as exact.
        return float(info.get("tm_noise_px") or 0.0)
    gaps = info.get("noise_by_gap_px") or {}
    finite = {int(g): float(v) for g, v in gaps.items() if v is not None and np.isfinite(v)}
    if finite:
        return finite[min(finite)] / np.sqrt(2.0)
    return float("inf")


def combine_results(results: list[SliceResult], prealign_affines: np.ndarray, pre_tf: Transforms,
                    canvas: tuple[int, int], cfg: RunConfig) -> tuple[dict, np.ndarray | None]:
    """Replace each registered affine in ``results`` (one per slice) by the combined one (in place); returns
    the stack-level summary recorded in ``transforms.json`` and the affines without linear
    correction (None when the registrations were kept as they are)."""
    n = len(prealign_affines)
    if cfg.register.combine == "registration":
        return {"method": "registration"}, None
    usable = np.array([results[z].status == "ok" for z in range(n)])
    if usable.sum() < 8:
        log.info("combine: %d slice(s) registered, too few to measure the noise; registrations kept as they are",
                 int(usable.sum()))
        return {"method": "registration", "reason": "fewer than 8 slices registered"}, None
    registered = np.array([results[z].affine for z in range(n)], np.float64)
    reference = _reference_point(pre_tf, prealign_affines, canvas)
    combined = combine_measurements(prealign_affines, registered, usable, reference_xy=reference,
                                    prealign_noise_px=_prealign_noise(pre_tf, prealign_affines, registered, usable,
                                                                     reference),
                                    significance=cfg.register.significance,
                                    trend_radius=cfg.template.median_radius,
                                    prealign_measured=np.array([s.status == "ok" for s in pre_tf.slices]))
    for z in np.flatnonzero(usable):
        e = results[z]
        e.metrics["registered_affine"] = e.affine.tolist()
        e.metrics["linear_significance"] = round(float(combined.linear_significance[z]), 3)
        e.metrics["linear_applied"] = bool(combined.linear_applied[z])
        e.affine = np.array(combined.affines[z], np.float64)
        if combined.translation_significance[z] > cfg.register.significance and "check" not in e.metrics:
            e.metrics["check"] = (f"template registration and pre-alignment disagree on the translation by "
                                     f"{combined.translation_significance[z]:.1f} x their noise: one of them "
                                     "failed on this slice")
    summary = {"method": "significance", "significance": cfg.register.significance, **combined.summary()}
    log.info("combine: %d of %d registered slice(s) needed their linear correction (significance > %g; "
             "registration noise per entry %s); translation weight of the registration %.2f (pre-alignment "
             "noise %.3f px, registration %.3f / %.3f px)", summary["linear_applied"], int(usable.sum()),
             cfg.register.significance, " ".join(f"{v:.1e}" for v in combined.noise_linear),
             combined.translation_weight, combined.prealign_noise_px, *combined.noise_translation_px)
    return summary, combined.without_linear
