"""The worker of a registration pass: a block of slices registered to their median templates.

A worker reads its own slices, plus the ``radius`` neighbours on each side its templates
need, so no pixel array goes through the scheduler, and holds only ``2 * radius + 1``
slices at a time. Each slice's result is journalled the moment it is done.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..config import RunConfig
from ..fallbacks import RunError
from ..imageops import finite_float32, is_blank, nonfinite_count
from ..local_residual import local_residual
from ..register import Backend, RegistrationError, check_result, sampled_ncc
from ..stack import Stack
from ..template import TemplateWindow
from ..transform import at_level
from ..warp import placed_float
from .journal import write_entry
from .plan import PassPlan
from .records import SliceResult, no_time


@dataclass(frozen=True, eq=False)
class RegisterJob:
    """Everything a worker needs for one pass; small and picklable (no pixel data)."""

    stack: Stack
    prealigned_stack: Stack | None
    prealign_affines: np.ndarray   # the fallback, and the bounds of the sanity checks
    plan: PassPlan
    canvas: tuple[int, int]
    cfg: RunConfig
    backend: Backend
    journal: Path
    template_level: int = 0        # pyramid level the back-end reads the template at (backend.template_level)


def mostly_nonfinite(raw: np.ndarray, count: int | None = None) -> bool:
    """More than half of the slice is NaN/inf (float input): too little data to register.
    ``count``: :func:`nonfinite_count` of ``raw`` when already known."""
    return (nonfinite_count(raw) if count is None else count) > raw.size / 2


def registration_image(raw: np.ndarray, level: int, backend: Backend) -> np.ndarray:
    """The raw slice as the back-end reads it: float32, at the template's pyramid ``level``."""
    return backend.level_image(finite_float32(raw), level)


def _template_member(job: RegisterJob, z: int, raw: np.ndarray, image: np.ndarray | None) -> np.ndarray:
    """Slice ``z`` as it enters the median: on the canvas (at the template level), NaN where
    it has no data, all NaN for a slice kept out of templates. ``image`` is
    :func:`registration_image` of ``raw`` (None when the template reads the pre-aligned stack)."""
    level, plan = job.template_level, job.plan
    shape = job.backend.level_shape(job.canvas, level)
    if plan.excluded[z] or is_blank(raw) or mostly_nonfinite(raw):
        return np.full(shape, np.nan, np.float32)  # a bad slice must not pull the median
    if plan.placed_by_start[z]:
        return placed_float(image, at_level(plan.start[z], level), shape)
    if plan.reads_prealigned_stack:
        return job.backend.level_image(finite_float32(job.prealigned_stack.read(z)), level)
    return placed_float(image, at_level(plan.template_affines[z], level), shape)


def register_block(job: RegisterJob, first: int, last: int) -> list[SliceResult]:
    """Register slices ``first..last-1`` to their templates; one result per slice (each also
    journalled).

    Run on one library thread (:func:`amst.pipeline.blocks.map_blocks`). Reading the
    window's neighbours is charged to the block's slices in equal parts.
    """
    cfg, plan = job.cfg, job.plan
    window = TemplateWindow(len(job.stack), cfg.template.median_radius, first, last,
                            leave_out=cfg.template.leave_one_out, balanced=cfg.template.balanced, ends=plan.ends)
    timings = {z: no_time() for z in range(first, last)}
    shared = {"read": 0.0, "template": 0.0}          # the neighbours': charged to every slice
    held: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # registered slices waiting for their template
    results = []
    for z in window.reads():
        registered = first <= z < last
        where = timings[z] if registered else shared
        t0 = time.perf_counter()
        raw = job.stack.read(z)
        t1 = time.perf_counter()
        needed = registered or not plan.reads_prealigned_stack or bool(plan.placed_by_start[z])
        image = registration_image(raw, job.template_level, job.backend) if needed else None
        if registered:
            held[z] = (raw, image)
        member = _template_member(job, z, raw, image)
        t2 = time.perf_counter()
        done = window.add(z, member)
        t3 = time.perf_counter()
        where["read"] += t1 - t0
        where["template"] += t2 - t1
        for zt, _ in done:  # the median completed by this slice
            timings[zt]["template"] += (t3 - t2) / len(done)
        for zt, template in done:
            raw_t, image_t = held.pop(zt)
            result = register_slice(job, zt, raw_t, image_t, template, timings[zt])
            result.timings = timings[zt]
            t0 = time.perf_counter()
            write_entry(job.journal, zt, result.to_json())
            timings[zt]["write"] += time.perf_counter() - t0
            results.append(result)
    for result in results:
        for stage, seconds in shared.items():
            result.timings[stage] += seconds / len(results)
    return results


def register_slice(job: RegisterJob, z: int, raw: np.ndarray, image: np.ndarray, template: np.ndarray,
                   timing: dict[str, float]) -> SliceResult:
    """Register slice ``z`` (``image``: :func:`registration_image`) to its template and check it;
    the seconds go to ``timing["register"]``."""
    t0 = time.perf_counter()
    try:
        result = _register_slice(job, z, raw, image, template)
    finally:
        timing["register"] += time.perf_counter() - t0
    elastic = job.cfg.register.elastic
    if elastic.enabled and job.plan.index == job.cfg.register.passes and result.status == "ok":
        t0 = time.perf_counter()
        level = job.template_level
        mask = np.isfinite(template)
        registered = placed_float(image, at_level(result.affine, level), template.shape)
        result.local = local_residual(registered, np.where(mask, template, 0), mask, level=level,
                                      grid=elastic.grid(job.canvas),
                                      affine=result.affine, iterations=elastic.iterations)
        timing["elastic"] = timing.get("elastic", 0.0) + time.perf_counter() - t0
    return result


def _register_slice(job: RegisterJob, z: int, raw: np.ndarray, image: np.ndarray,
                    template: np.ndarray) -> SliceResult:
    cfg = job.cfg
    prealigned = job.prealign_affines[z].copy()
    initial = job.plan.start[z]
    metrics: dict = {}
    if is_blank(raw):
        return SliceResult(z, prealigned, "blank", {"reason": "blank slice"})
    bad_pixels = nonfinite_count(raw)
    if bad_pixels:
        metrics["nonfinite_pixels"] = bad_pixels
        metrics["check"] = (f"{bad_pixels} NaN/inf pixel(s) ({100 * bad_pixels / raw.size:.2g} %) in the raw slice, "
                            "treated as no data")
    if mostly_nonfinite(raw, bad_pixels):
        return SliceResult(z, prealigned, "fallback",
                           {**metrics, "reason": "more than half of the raw slice is NaN/inf: too little data to "
                                                 "register; kept at its pre-alignment and out of every template"})
    mask = np.isfinite(template)
    if mask.mean() < 0.05:
        return SliceResult(z, prealigned, "fallback", {"reason": "template covers < 5 % of the canvas"})
    filled = np.where(mask, template, np.float32(template[mask].mean()))
    level = job.template_level
    status, reason = "ok", ""
    try:
        result = job.backend.register(image, filled, mask, initial, level=level)
        affine = result.affine
        metrics.update(result.metrics)
    except RegistrationError as exc:  # a registration that legitimately failed on this slice's data
        affine, status, reason = prealigned, "fallback", f"registration failed: {exc}"
    except ValueError:  # the back-end refused its parameters (e.g. an elastix component that does not exist)
        raise
    except Exception as exc:
        raise RunError(f"slice {z} ({job.stack.slice_name(z)}): the {job.backend.name} back-end raised "
                       f"{type(exc).__name__}: {exc}. This is not a property of the data but a bug or a broken "
                       "installation, so the run stopped (re-run the same command to resume; -v shows the "
                       "traceback)") from exc
    ncc_before = sampled_ncc(image, filled, mask, at_level(prealigned, level))
    metrics["ncc_prealign"] = ncc_before
    if status == "ok":
        ncc_after = sampled_ncc(image, filled, mask, at_level(affine, level))
        metrics["ncc_final"] = ncc_after
        reason = check_result(affine, prealigned, job.canvas, ncc_before=ncc_before, ncc_after=ncc_after,
                              max_scale_change=cfg.register.max_scale_change, max_shear=cfg.register.max_shear,
                              max_shift_px=cfg.register.max_shift_px, min_ncc_gain=cfg.register.min_ncc_gain,
                              min_ncc=cfg.register.min_ncc)
        if reason:
            status, affine = "fallback", prealigned
    if reason:
        metrics["reason"] = reason
    return SliceResult(z, np.array(affine, np.float64), status, metrics)
