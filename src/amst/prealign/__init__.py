"""AMST step 1: per-slice translations that keep the sample's large-scale shape.

Methods: template matching on fiducial marks (``tm``), SIFT features (``features``),
phase correlation (``xcorr``), or none. For features and xcorr, pairs are measured at
several z-gaps and all positions are solved jointly (see :mod:`.solve`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from ..canvas import canvas_for_translations
from ..parallel import default_workers
from ..stack import Stack
from ..transform import translation
from ..transforms_io import SliceTransform, Transforms
from .features import SiftTranslation
from .pairwise import measure_pairs
from .solve import solve_positions
from .template_matching import propose_roi, track_template
from .xcorr import PhaseCorrelation

log = logging.getLogger(__name__)

METHODS = ("tm", "features", "xcorr", "none")


@dataclass
class PrealignConfig:
    """Options of the pre-alignment (every one is a CLI/config option of the same name)."""

    method: str = "tm"
    roi: tuple[float, float, float, float] | str | None = "auto"
    roi_units: str = "px"
    roi_slice: int | None = None
    search_margin: int = 64
    min_score: float = 0.5
    tm_sigma: float = 1.5
    peak_fit: str = "gaussian"
    tm_refine: str = "affine"  # affine: read each TM position at the ROI centre of an affine fit (auto-focus)
    gaps: tuple[int, ...] = (1, 2, 4, 8, 16)
    xcorr_prefilter: str = "gaussian"
    xcorr_whitening: float = 0.5  # 1: phase correlation; 0.5: half-whitened (less noise-driven)
    xcorr_max_side: int = 1024
    feature_max_side: int = 768
    max_features: int = 1500
    min_inliers: int = 12
    canvas: str = "union"

    def validate(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"prealign method: {self.method!r} is not one of {', '.join(METHODS)}")
        if self.roi_units not in ("px", "nm"):
            raise ValueError(f"roi_units: {self.roi_units!r} must be 'px' or 'nm'")
        if self.tm_refine not in ("none", "affine"):
            raise ValueError(f"tm_refine: {self.tm_refine!r} must be 'none' or 'affine'")
        if self.canvas not in ("union", "input"):
            raise ValueError(f"canvas: {self.canvas!r} must be 'union' or 'input'")
        if not self.gaps or any(int(g) < 1 for g in self.gaps):
            raise ValueError(f"gaps: {list(self.gaps)} must be positive integers")
        if not 0.0 <= self.xcorr_whitening <= 1.0:
            raise ValueError(f"xcorr_whitening: {self.xcorr_whitening} must be between 0 (plain correlation) "
                             "and 1 (phase correlation)")
        if self.search_margin < 1:
            raise ValueError(f"search_margin: {self.search_margin} must be >= 1 px")


@dataclass
class PrealignResult:
    """Translations ``t_z`` (output pixel p samples raw p + t_z) and what was measured."""

    translations: np.ndarray
    status: list[str]
    metrics: list[dict[str, Any]]
    info: dict[str, Any] = field(default_factory=dict)


def prealign(stack: Stack, cfg: PrealignConfig, workers: int | None = None,
             progress: Callable[[int], None] | None = None) -> PrealignResult:
    """Compute per-slice translations of ``stack``.

    Slices whose measurement failed (low NCC, no inliers, blank) get status ``failed`` or
    ``blank`` and a translation interpolated from their neighbours, never (0, 0).
    """
    cfg.validate()
    workers = default_workers(workers)
    n = len(stack)
    if cfg.method == "none":
        return PrealignResult(np.zeros((n, 2)), ["ok"] * n, [{} for _ in range(n)], {"method": "none"})
    if cfg.method == "tm":
        return _prealign_tm(stack, cfg, workers, progress)
    estimator = (PhaseCorrelation(max_side=cfg.xcorr_max_side, prefilter=cfg.xcorr_prefilter,
                                  whitening=cfg.xcorr_whitening)
                 if cfg.method == "xcorr" else
                 SiftTranslation(max_side=cfg.feature_max_side, max_features=cfg.max_features,
                                 min_inliers=cfg.min_inliers))
    if n == 1:
        return PrealignResult(np.zeros((1, 2)), ["ok"], [{}], {"method": cfg.method})
    pairs, blank = measure_pairs(stack, estimator, list(cfg.gaps), workers, progress)
    per_slice_ok = np.zeros(n, dtype=int)
    conf_sum = np.zeros(n)
    for p in pairs:
        if p.measurement.ok:
            per_slice_ok[[p.i, p.j]] += 1
        conf_sum[[p.i, p.j]] += p.measurement.confidence
    reference = int(np.flatnonzero(~blank)[0]) if (~blank).any() else 0
    solved = solve_positions(n, pairs, reference=reference, excluded=blank)
    pair_count = np.zeros(n, dtype=int)
    resid_max = np.zeros(n)
    down = np.zeros(n, dtype=int)
    for p, r, rejected in zip([p for p in pairs if p.measurement.ok and not blank[p.i] and not blank[p.j]],
                              np.linalg.norm(solved.residuals, axis=1), solved.rejected):
        for z in (p.i, p.j):
            pair_count[z] += 1
            resid_max[z] = max(resid_max[z], r)
            down[z] += int(rejected)
    status, metrics = [], []
    for z in range(n):
        if blank[z]:
            st = "blank"
        elif solved.unconstrained[z] or (pair_count[z] and down[z] == pair_count[z]):
            st = "failed"
        else:
            st = "ok"
        status.append(st)
        metrics.append({"prealign_pairs": int(pair_count[z]), "prealign_pairs_downweighted": int(down[z]),
                        "prealign_confidence": float(conf_sum[z] / max(1, 2 * len(cfg.gaps))),
                        "prealign_max_residual_px": float(resid_max[z])})
    translations = solved.positions
    if any(s != "ok" for s in status):
        translations = _interpolate(translations, np.array([s == "ok" for s in status]))
    info = {"method": cfg.method, "gaps": list(cfg.gaps), "pairs": len(pairs),
            "failed_pairs": sum(not p.measurement.ok for p in pairs),
            "noise_by_gap_px": {str(g): s for g, s in solved.noise_by_gap.items()},
            "outlier_pairs": [{"i": i, "j": j, "residual_px": r} for i, j, r in solved.outliers[:200]]}
    if solved.noise_by_gap:
        log.info("pair noise per z-gap (from loop closures; far gaps count less): %s",
                 ", ".join(f"{g}: {v:.2f} px" for g, v in sorted(solved.noise_by_gap.items())))
    if solved.outliers:
        log.warning("%d pair measurement(s) disagree with the global solution (rejected, > 1 px); e.g. %s",
                    len(solved.outliers), ", ".join(f"{i}->{j}: {r:.1f} px" for i, j, r in solved.outliers[:5]))
    return PrealignResult(translations, status, metrics, info)


def _prealign_tm(stack: Stack, cfg: PrealignConfig, workers: int, progress) -> PrealignResult:
    n = len(stack)
    roi_slice = n // 2 if cfg.roi_slice is None else int(cfg.roi_slice)
    if not 0 <= roi_slice < n:
        raise ValueError(f"roi_slice {roi_slice} is outside the stack (0..{n - 1})")
    if cfg.roi in (None, "auto"):
        others = [stack.read(z) for z in sorted({max(0, roi_slice - 10), min(n - 1, roi_slice + 10)} - {roi_slice})]
        roi = propose_roi(stack.read(roi_slice), others)
        log.info("template ROI (auto, slice %d): x=%d y=%d w=%d h=%d px; pass --roi to choose another",
                 roi_slice, *roi)
    else:
        roi = tuple(float(v) for v in cfg.roi)  # type: ignore[union-attr]
        if len(roi) != 4:
            raise ValueError(f"roi: expected X Y W H, got {cfg.roi}")
        if cfg.roi_units == "nm":
            if stack.voxel_size is None:
                raise ValueError("roi is given in nm but the stack has no voxel size; pass --voxel-size or use px")
            vs = stack.voxel_size
            roi = (roi[0] / vs.x, roi[1] / vs.y, roi[2] / vs.x, roi[3] / vs.y)
    tracked = track_template(stack, roi, roi_slice, cfg.search_margin, cfg.min_score, cfg.peak_fit,
                             workers, progress, cfg.tm_sigma, cfg.tm_refine == "affine")
    ok = ~np.isnan(tracked.positions[:, 0])
    translations = tracked.positions - tracked.positions[roi_slice]
    translations = _interpolate(translations, ok)
    status = ["blank" if b else ("ok" if g else "failed") for b, g in zip(tracked.blank, ok)]
    metrics = [{"tm_score": float(s), **({"prealign_flag": r} if r else {})}
               for s, r in zip(tracked.scores, tracked.reasons)]
    failed = [z for z in range(n) if not ok[z]]
    if failed:
        log.warning("template matching failed on %d slice(s) (interpolated): %s", len(failed),
                    ", ".join(f"{z} ({tracked.reasons[z]})" for z in failed[:10]))
    if ok.sum() < max(1, 0.5 * n):
        raise ValueError(
            f"template matching failed on {n - ok.sum()} of {n} slices (NCC below {cfg.min_score}); "
            "the ROI is probably not on the alignment marks: choose another --roi or use --prealign features"
        )
    return PrealignResult(translations, status, metrics,
                          {"method": "tm", "roi_xywh_px": [float(v) for v in roi], "roi_slice": roi_slice})


def _interpolate(values: np.ndarray, good: np.ndarray) -> np.ndarray:
    """Fill rows where ``good`` is False by linear interpolation along z (constant at the ends)."""
    out = values.copy()
    idx = np.flatnonzero(good)
    if idx.size == 0:
        return np.zeros_like(values)
    for axis in range(values.shape[1]):
        out[:, axis] = np.interp(np.arange(len(values)), idx, values[idx, axis])
    return out


def to_transforms(stack: Stack, result: PrealignResult, canvas: str = "union") -> Transforms:
    """``transforms.json`` content for a pre-alignment: ``affine`` equals ``prealign``."""
    shape, origin = canvas_for_translations(result.translations, stack.shape[1:], canvas)
    slices = []
    for z, t in enumerate(result.translations):
        m = translation(*(origin + t))
        slices.append(SliceTransform(z, stack.slice_name(z), m, m.copy(), result.status[z], dict(result.metrics[z])))
    return Transforms(shape, slices, stack.voxel_size, {"prealign_info": result.info})
