"""AMST step 1: per-slice translations that keep the sample's large-scale shape.

Methods: template matching on fiducial marks (``tm``), SIFT features (``features``),
phase correlation (``xcorr``), or none. For features and xcorr, pairs are measured at
several z-gaps and all positions are solved jointly (see :mod:`.solve`).
"""

from __future__ import annotations

import dataclasses
import logging
import numbers
import typing
from dataclasses import dataclass, field
from typing import Any, Callable, Literal

import numpy as np

from ..canvas import canvas_for_translations
from ..choices import check_choices
from ..parallel import default_workers
from ..stack import Stack, VoxelSize
from ..transform import translation
from ..transforms_io import SliceTransform, Transforms
from .features import SiftTranslation
from .pairwise import measure_pairs
from .solve import solve_positions
from .auto_roi import propose_roi_scored
from .template_matching import part_noises_px, tm_noise_px, track_template
from .xcorr import PhaseCorrelation

log = logging.getLogger(__name__)

Method = Literal["tm", "features", "xcorr", "none"]
METHODS: tuple[str, ...] = typing.get_args(Method)
DEFAULT_GAPS: tuple[int, ...] = (1, 2, 4, 8, 16)

# Lowest stability (NCC of the auto ROI 10 slices away, after a 2 px blur) that counts as
# alignment marks. Measured with propose_roi_scored on the slice amst uses (the middle one)
# of `amst synth DIR --shape 60 512 512 --seed S` (preset fibsem-marks) and
# `--preset fibsem-nomarks`, seeds 0-6, plus `--texture real_2d/neuropil_sstem_1000.h5`
# (seeds 0-1), `--shape 40 1024 1024 --seed 5` and `--shape 24 256 320 --seed 3`:
#   with marks    stability 0.941-0.970 (score 0.098-0.154)
#   without marks stability 0.308-0.670 (score 0.040-0.096)
# (Those figures are of the window the old rule chose, distinctiveness x stability, whose
# product overlapped between the two: 0.098 with marks, 0.096 without.) The window is now
# chosen by distinctiveness / (1 - stability), and both that score and the stability decide. Short stacks
# compare closer slices: 8-12 slices gave 0.90-0.94 with marks, 0.64-0.67 without; at 5
# slices content still reaches 0.84 (marks 0.88), where the test cannot tell them apart.
# Narrow slices (<= 192 px) with marks can stay below 0.8 (0.54-0.79: the window is not on
# the marks); there template matching was worse than features on ground truth (median
# 0.45-0.65 px against 0.08-0.39), so using features is right for them too.
AUTO_ROI_MIN_STABILITY = 0.8

# Lowest score (distinctiveness / (1 - stability), the position's signal-to-noise ratio that the
# choice maximises: amst.prealign.auto_roi) that counts as alignment marks. Stability alone
# passes content that barely changes over 10 slices (real isotropic FIB-SEM at 6 nm slices:
# 0.85-0.90 without marks) and flat, stable regions that cannot localise anything (distinct-
# iveness 0.01); the score keeps both out. It needs comparison slices: without them every
# window has stability 1 and the score follows the distinctiveness alone. Measured by benchmarks/auto_roi.py (the window the
# choice takes, slices 10 away; phantom 512^2 seeds 0-2, 384^2 seeds 0-1, 1024^2 seed 5,
# 256x320 seed 3, neuropil texture seeds 0-1, real content 202^2 seeds 0-3):
#   with marks    score 1.97-15.3 (stability 0.941-0.988)
#   without marks score 0.28-0.55 (stability 0.31-0.96)
AUTO_ROI_MIN_SCORE = 1.0

# Options that have a command-line flag of the same name (``--min-score``); the method's is ``--prealign``.
_WITH_FLAG = frozenset({"roi", "roi_units", "roi_slice", "search_margin", "min_score", "gaps", "canvas",
                        "xcorr_prefilter", "max_features"})


def _opt(key: str) -> str:
    """``key (--flag)``: the config key and the flag, for error messages."""
    if key == "method":
        return "method (--prealign)"
    return f"{key} (--{key.replace('_', '-')})" if key in _WITH_FLAG else key


@dataclass
class PrealignConfig:
    """Options of the pre-alignment (every one is a CLI/config option of the same name).

    ``roi_units`` has no default: four ``roi`` numbers need it ("px" or "nm"); with
    ``roi: auto`` it is not used. With ``method: tm`` and ``roi: auto``, a proposed region
    whose stability is below ``auto_roi_min_stability``, or whose score is below
    ``auto_roi_min_score``, is not taken for alignment marks: the pre-alignment uses
    ``features`` instead and says so (0 for both always trusts the region).
    """

    method: Method = "tm"
    roi: tuple[float, float, float, float] | str | None = "auto"
    roi_units: Literal["px", "nm"] | None = None
    roi_slice: int | None = None
    search_margin: int = 64
    min_score: float = 0.5
    tm_sigma: float = 1.5
    peak_fit: Literal["gaussian", "parabola"] = "gaussian"
    # affine: read each TM position at the ROI centre of an affine fit (auto-focus)
    tm_refine: Literal["none", "affine"] = "affine"
    gaps: tuple[int, ...] = DEFAULT_GAPS
    xcorr_prefilter: Literal["gaussian", "edges", "none"] = "gaussian"
    xcorr_whitening: float = 0.5  # 1: phase correlation; 0.5: half-whitened (less noise-driven)
    xcorr_max_side: int = 1024
    feature_max_side: int = 768
    max_features: int = 1500
    min_inliers: int = 12
    canvas: Literal["union", "input"] = "union"
    auto_roi_min_stability: float = AUTO_ROI_MIN_STABILITY
    auto_roi_min_score: float = AUTO_ROI_MIN_SCORE

    def validate(self) -> None:
        """Check every option that does not depend on the stack.

        Raises
        ------
        ValueError
            Naming the option (config key and flag) and what is allowed.
        """
        check_choices(self, message=_choice_message)  # from the Literal type hints
        self._validate_roi()
        if not _is_number(self.min_score) or not -1.0 < self.min_score <= 1.0:
            raise ValueError(f"{_opt('min_score')}: {self.min_score!r} must be in (-1, 1] (an NCC peak; "
                             "the default is 0.5)")
        if (not isinstance(self.gaps, (list, tuple)) or not self.gaps
                or any(not _is_integer(g) or g < 1 for g in self.gaps)):
            raise ValueError(f"{_opt('gaps')}: {self.gaps!r} must be one or more positive integers, e.g. 1 2 4 8 16")
        if not _is_number(self.xcorr_whitening) or not 0.0 <= self.xcorr_whitening <= 1.0:
            raise ValueError(f"xcorr_whitening: {self.xcorr_whitening} must be between 0 (plain correlation) "
                             "and 1 (phase correlation)")
        if not _is_integer(self.search_margin) or self.search_margin < 1:
            raise ValueError(f"{_opt('search_margin')}: {self.search_margin!r} must be an integer >= 1 px")
        if not _is_number(self.tm_sigma) or self.tm_sigma < 0:
            raise ValueError(f"tm_sigma: {self.tm_sigma} must be >= 0 px (0: no smoothing)")
        for key in ("xcorr_max_side", "feature_max_side", "max_features", "min_inliers"):
            value = getattr(self, key)
            if not _is_integer(value) or value < 1:
                raise ValueError(f"{key}: {value!r} must be a positive integer")
        if not _is_number(self.auto_roi_min_stability) or not 0.0 <= self.auto_roi_min_stability <= 1.0:
            raise ValueError(f"{_opt('auto_roi_min_stability')}: {self.auto_roi_min_stability!r} must be between 0 "
                             f"(always trust the auto ROI) and 1; the default is {AUTO_ROI_MIN_STABILITY}")
        if not _is_number(self.auto_roi_min_score) or not 0.0 <= self.auto_roi_min_score < float("inf"):
            raise ValueError(f"auto_roi_min_score: {self.auto_roi_min_score!r} must be a number >= 0 (0: always "
                             f"trust the auto ROI); the default is {AUTO_ROI_MIN_SCORE}")

    def _validate_roi(self) -> None:
        if self.roi is None or (isinstance(self.roi, str) and self.roi == "auto"):
            pass
        elif isinstance(self.roi, str) or not isinstance(self.roi, (list, tuple)) or len(self.roi) != 4 \
                or not all(_is_number(v) for v in self.roi):
            raise ValueError(f"{_opt('roi')}: {self.roi!r} must be 'auto' or four numbers X Y W H")
        else:
            x, y, w, h = (float(v) for v in self.roi)
            if not (w > 0 and h > 0 and x >= 0 and y >= 0 and np.isfinite([x, y, w, h]).all()):
                raise ValueError(f"{_opt('roi')}: X Y W H = {x:g} {y:g} {w:g} {h:g} needs W, H > 0 and X, Y >= 0 "
                                 "(X, Y: top-left corner; W, H: size)")
            if self.roi_units is None:
                raise ValueError(f"{_opt('roi_units')}: say whether the roi numbers {x:g} {y:g} {w:g} {h:g} are "
                                 "in 'px' or 'nm' (no default: a wrong guess would match the wrong region)")
        if self.roi_slice is not None and (not _is_integer(self.roi_slice) or self.roi_slice < 0):
            raise ValueError(f"{_opt('roi_slice')}: {self.roi_slice!r} must be a slice index >= 0 "
                             "(or left out: the middle slice)")

    def roi_is_auto(self) -> bool:
        """True when the template region is proposed by amst (``roi`` is ``auto`` or None)."""
        return self.roi is None or (isinstance(self.roi, str) and self.roi == "auto")


def _choice_message(key: str, value: Any, allowed: tuple[str, ...], optional: bool) -> str:
    """The message of :func:`amst.choices.check_choices` for a choice that is not allowed,
    naming the config key and its flag: ``"roi_units (--roi-units): 'mm' must be 'px' or 'nm'"``,
    ``"method (--prealign): 'sift' is not one of tm, features, xcorr, none"``."""
    if len(allowed) == 2:
        return f"{_opt(key)}: {value!r} must be {allowed[0]!r} or {allowed[1]!r}"
    return f"{_opt(key)}: {value!r} is not one of {', '.join(allowed)}"


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and bool(np.isfinite(value))


def _is_integer(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def validate_for_stack(cfg: PrealignConfig, n_slices: int, slice_shape_yx: tuple[int, int],
                       voxel_size: VoxelSize | None) -> None:
    """Check the options that depend on the stack, before anything is computed or written.

    Parameters
    ----------
    cfg : PrealignConfig
        Options already checked by :meth:`PrealignConfig.validate`.
    n_slices : int
        Number of slices of the stack.
    slice_shape_yx : (int, int)
        Height and width of a slice in pixels.
    voxel_size : VoxelSize or None
        Needed to convert an ``roi`` in nm.

    Raises
    ------
    ValueError
        ``roi_slice`` outside the stack; the ROI outside the slice, under 8 px, or in nm
        without a voxel size; a z-gap not smaller than the number of slices (the default
        gaps are cut to the stack instead).
    """
    if cfg.method == "none":
        return
    if cfg.method == "tm":
        if cfg.roi_slice is not None and not 0 <= cfg.roi_slice < n_slices:
            raise ValueError(f"{_opt('roi_slice')}: {cfg.roi_slice} is outside the stack of {n_slices} slices "
                             f"(0..{n_slices - 1})")
        if not cfg.roi_is_auto():
            roi_slice = n_slices // 2 if cfg.roi_slice is None else cfg.roi_slice
            _check_roi_inside(roi_in_px(cfg, voxel_size), roi_slice, slice_shape_yx)
    uses_gaps = cfg.method in ("features", "xcorr") or cfg.roi_is_auto()
    if uses_gaps and n_slices > 1 and tuple(int(g) for g in cfg.gaps) != DEFAULT_GAPS:
        too_far = [int(g) for g in cfg.gaps if int(g) >= n_slices]
        if too_far:
            usable = [g for g in DEFAULT_GAPS if g < n_slices]
            what = f"gap {too_far[0]} is" if len(too_far) == 1 else f"gaps {' '.join(map(str, too_far))} are"
            raise ValueError(f"{_opt('gaps')}: {what} not smaller than the number of slices ({n_slices}); "
                             f"usable gaps are 1..{n_slices - 1}, e.g. {' '.join(map(str, usable))}")


def roi_in_px(cfg: PrealignConfig, voxel_size: VoxelSize | None) -> tuple[float, float, float, float]:
    """The numeric ``roi`` of ``cfg`` as ``(x, y, w, h)`` in pixels.

    Raises
    ------
    ValueError
        When the ROI is in nm and the stack has no voxel size.
    """
    x, y, w, h = (float(v) for v in cfg.roi)  # type: ignore[union-attr]
    if cfg.roi_units != "nm":
        return x, y, w, h
    if voxel_size is None:
        raise ValueError(f"{_opt('roi_units')}: the roi is in nm but the stack has no voxel size; "
                         "pass --voxel-size Z Y X (nm) or give the roi in px")
    return x / voxel_size.x, y / voxel_size.y, w / voxel_size.x, h / voxel_size.y


def _check_roi_inside(roi: tuple[float, float, float, float], roi_slice: int, slice_shape_yx: tuple[int, int]) -> None:
    h, w = (int(v) for v in slice_shape_yx)
    x0, y0, rw, rh = (int(round(v)) for v in roi)
    if rw < 8 or rh < 8 or x0 < 0 or y0 < 0 or x0 + rw > w or y0 + rh > h:
        raise ValueError(f"{_opt('roi')}: x={x0} y={y0} w={rw} h={rh} px is not inside slice {roi_slice} "
                         f"({w}x{h} px) or is smaller than 8 px; choose a region on the alignment marks")


@dataclass
class PrealignResult:
    """Translations ``t_z`` (output pixel p samples raw p + t_z) and what was measured.

    ``info`` goes into ``transforms.json`` as ``prealign_info``. With ``method: tm`` and an
    auto ROI it records the decision: ``method_requested``, ``method`` (the one used),
    ``auto_roi_xywh_px``, ``auto_roi_slice``, ``auto_roi_score``, ``auto_roi_stability``,
    ``auto_roi_min_stability``, ``auto_roi_min_score`` and, when another method was used,
    ``fallback_reason``.
    """

    translations: np.ndarray
    status: list[str]
    metrics: list[dict[str, Any]]
    info: dict[str, Any] = field(default_factory=dict)


def prealign(stack: Stack, cfg: PrealignConfig, workers: int | None = None,
             progress: Callable[[int], None] | None = None) -> PrealignResult:
    """Compute per-slice translations of ``stack``.

    Slices whose measurement failed (low NCC, no inliers, blank) get status ``failed`` or
    ``blank`` and a translation interpolated from their neighbours, never (0, 0). With
    ``method: tm`` and ``roi: auto``, a stack without convincing marks is pre-aligned by
    ``features`` instead, with a warning (see :class:`PrealignResult` for what is recorded).

    Raises
    ------
    ValueError
        Invalid options (see :meth:`PrealignConfig.validate` and :func:`validate_for_stack`),
        or a pre-alignment that failed on most slices.
    """
    cfg.validate()
    validate_for_stack(cfg, len(stack), stack.shape[1:], stack.voxel_size)
    workers = default_workers(workers)
    n = len(stack)
    if cfg.method == "none":
        return PrealignResult(np.zeros((n, 2)), ["ok"] * n, [{} for _ in range(n)], {"method": "none"})
    if cfg.method == "tm":
        return _prealign_tm(stack, cfg, workers, progress)
    return _prealign_pairwise(stack, cfg, workers, progress)


def _prealign_pairwise(stack: Stack, cfg: PrealignConfig, workers: int, progress) -> PrealignResult:
    n = len(stack)
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
    if not cfg.roi_is_auto():
        return _track(stack, cfg, roi_in_px(cfg, stack.voxel_size), roi_slice, workers, progress)
    others = [stack.read(z) for z in sorted({max(0, roi_slice - 10), min(n - 1, roi_slice + 10)} - {roi_slice})]
    proposal = propose_roi_scored(stack.read(roi_slice), others)
    decision = {"method_requested": "tm", "auto_roi_xywh_px": [int(v) for v in proposal.xywh],
                "auto_roi_slice": roi_slice, "auto_roi_score": round(proposal.score, 4),
                "auto_roi_stability": round(proposal.stability, 4),
                "auto_roi_min_stability": float(cfg.auto_roi_min_stability),
                "auto_roi_min_score": float(cfg.auto_roi_min_score)}
    if proposal.stability < cfg.auto_roi_min_stability or proposal.score < cfg.auto_roi_min_score:
        decision["failed_gate"] = "stability" if proposal.stability < cfg.auto_roi_min_stability else "score"
        return _content_fallback(stack, cfg, workers, progress, decision)
    log.info("template ROI (auto, slice %d): x=%d y=%d w=%d h=%d px (score %.2f >= %.2f, stability %.2f >= %.2f); "
             "pass --roi to choose another", roi_slice, *proposal.xywh, proposal.score, cfg.auto_roi_min_score,
             proposal.stability, cfg.auto_roi_min_stability)
    result = _track(stack, cfg, proposal.xywh, roi_slice, workers, progress)
    result.info.update(decision)
    return result


def _content_fallback(stack: Stack, cfg: PrealignConfig, workers: int, progress,
                      decision: dict[str, Any]) -> PrealignResult:
    """Pre-align by ``features`` because the auto ROI is not on alignment marks."""
    x, y, w, h = decision["auto_roi_xywh_px"]
    where = (f"the best auto ROI (x={x} y={y} w={w} h={h} px, slice {decision['auto_roi_slice']}, score "
             f"{decision['auto_roi_score']:.2f}, stability {decision['auto_roi_stability']:.2f})")
    if decision.pop("failed_gate") == "stability":
        why = (f"its stability is below the threshold {decision['auto_roi_min_stability']:.2f} "
               "(auto_roi_min_stability): it changes with depth as cell content does")
    else:
        why = (f"its score is below the threshold {decision['auto_roi_min_score']:.2f} (auto_roi_min_score): "
               "what changes with depth in it moves its match as much as its own texture pins it")
    reason = f"no convincing alignment marks: {where}; {why}"
    log.warning("%s. Pre-aligning by image content (features) instead of template matching. To insist on "
                "marks, give them with --roi X Y W H --roi-units px", reason)
    result = _prealign_pairwise(stack, dataclasses.replace(cfg, method="features"), workers, progress)
    usable = sum(s != "blank" for s in result.status)
    failed = sum(s == "failed" for s in result.status)
    if usable == 0 or failed > 0.5 * usable:
        raise ValueError(f"pre-alignment: {reason}; and the content-based fallback (features) failed on {failed} of "
                         f"{usable} non-blank slices. Give the marks with --roi X Y W H --roi-units px, try "
                         "--prealign xcorr, or --prealign none")
    result.info = {**result.info, **decision, "fallback_reason": reason}
    return result


def _track(stack: Stack, cfg: PrealignConfig, roi: tuple[float, ...], roi_slice: int, workers: int,
           progress) -> PrealignResult:
    n = len(stack)
    tracked = track_template(stack, roi, roi_slice, search_margin=cfg.search_margin, min_score=cfg.min_score,
                             peak_fit=cfg.peak_fit, workers=workers, progress=progress, sigma=cfg.tm_sigma,
                             refine=cfg.tm_refine == "affine")
    ok = ~np.isnan(tracked.positions[:, 0])
    translations = tracked.positions - tracked.positions[roi_slice]
    translations = _interpolate(translations, ok)
    status = ["blank" if b else ("ok" if g else "failed") for b, g in zip(tracked.blank, ok)]
    metrics = [{"tm_score": float(s), **({"prealign_flag": r} if r else {}),
                **({"tm_thirds_px": np.round(t, 4).tolist()} if np.all(np.isfinite(t)) else {})}
               for s, r, t in zip(tracked.scores, tracked.reasons, tracked.thirds)]
    failed = [z for z in range(n) if not ok[z]]
    if failed:
        log.warning("template matching failed on %d slice(s) (interpolated): %s", len(failed),
                    ", ".join(f"{z} ({tracked.reasons[z]})" for z in failed[:10]))
    if ok.sum() < max(1, 0.5 * n):
        raise ValueError(
            f"template matching failed on {n - ok.sum()} of {n} slices (NCC below {cfg.min_score}); "
            "the ROI is probably not on the alignment marks: choose another --roi or use --prealign features"
        )
    info = {"method": "tm", "roi_xywh_px": [float(v) for v in roi], "roi_slice": roi_slice}
    parts = part_noises_px(tracked.thirds)
    if parts is not None:
        info["tm_thirds_noise_px"] = np.round(parts, 5).tolist()
        info["tm_noise_px"] = tm_noise_px(tracked.thirds)
        log.info("template matching noise %.3f px per axis (from the three thirds of the ROI)", info["tm_noise_px"])
    return PrealignResult(translations, status, metrics, info)


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
    return Transforms(shape, slices, stack.voxel_size, {"prealign_info": result.info},
                      input_shape_yx=tuple(int(v) for v in stack.shape[1:]))
