"""The linear correction of the slices near a distortion event, measured again between
neighbouring slices and solved jointly (:func:`refine_corrections`)."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..combine import robust_sigma
from ..config import RunConfig
from ..joint_linear import PairDeviation, RunSolution, solve_run, standard_scores
from ..register import Backend, RegistrationError, geometry_problem
from ..stack import Stack
from ..transform import about_point, at_level, compose, invert
from ..warp import placed_float
from .blocks import map_blocks
from .records import PairRegistration, SliceResult
from .register_pass import registration_image

log = logging.getLogger("amst")

#: Pairs are registered between slices at most this far apart: farther ones differ in content
#: nearly as much as the median template's members do.
MAX_PAIR_GAP = 2
#: A slice is looked at again when the median template found its correction at least this
#: fraction of ``register.significance`` (and so are the slices next to it): auto-focus events
#: last one to three slices and fade, and their later slices often stay below the template's
#: noise, which is up to 3x that of a neighbour (see :func:`refine_corrections`).
SEED_FRACTION = 2.0 / 3.0
#: A run of more flagged slices is more than an auto-focus event (one to three slices): there only
#: the slices the median template corrected and their neighbours are unknowns (see :func:`event_runs`).
MAX_RUN = 7
#: Where even that is too long, the slices the median template corrected are solved alone, up to
#: this many in a row (a large event contaminates its neighbours' templates: 9 slices of a
#: 1024^2 stack, benchmarks/accuracy.py); longer stretches keep the median template's decision.
MAX_CORRECTED_RUN = 12
#: Anchors taken on the one side of a run that has none on the other (a stack end): they measure
#: the content's change with depth, which the run's slices are extrapolated through. Two: four
#: (farther ones, whose content changes differently) put single end events further off
#: (benchmarks/stack_ends.py, phantom k = 1, first / last: 2.05 / 1.41x against 1.38 / 1.24x).
ONE_SIDED_ANCHORS = 2
#: Pairs registered per task: consecutive pairs (sorted) share slices, read once per task.
PAIRS_PER_BLOCK = 8
#: Calm windows registered to measure a pair's noise, and the fewest that make one.
WINDOWS = 16
MIN_WINDOWS = 8


@dataclass(frozen=True)
class EventRun:
    """Slices whose linear distortion is solved together: ``unknowns`` (flagged slices and
    their neighbours) and ``anchors`` (nearby unflagged slices, taken as undistorted)."""

    unknowns: tuple[int, ...]
    anchors: tuple[int, ...]

    @property
    def pairs(self) -> list[tuple[int, int]]:
        """Every pair of the run's slices at most :data:`MAX_PAIR_GAP` apart, (lower, upper)."""
        nodes = sorted(self.unknowns + self.anchors)
        return [(s, t) for i, s in enumerate(nodes) for t in nodes[i + 1:] if t - s <= MAX_PAIR_GAP]


def _grouped(zs: np.ndarray) -> list[list[int]]:
    """Slice indices grouped while at most :data:`MAX_PAIR_GAP` apart."""
    groups: list[list[int]] = []
    for z in zs:
        if groups and z - groups[-1][-1] <= MAX_PAIR_GAP:
            groups[-1].append(int(z))
        else:
            groups.append([int(z)])
    return groups


def _anchored(group: list[int], anchor_ok: np.ndarray) -> EventRun | None:
    """``group`` as unknowns with its anchors: the unflagged slices inside it, and the nearest
    beyond each end (each within :data:`MAX_PAIR_GAP` of the last node; :data:`ONE_SIDED_ANCHORS` on the one side
    when the other has none). None without two anchors beyond its ends."""
    n = len(anchor_ok)

    def side(start: int, step: int, want: int) -> list[int]:
        """Up to ``want`` anchors from ``start`` outwards, each within reach of the last node."""
        found: list[int] = []
        last = z = start
        while len(found) < want and 0 <= z + step < n and abs(z + step - last) <= MAX_PAIR_GAP:
            z += step
            if anchor_ok[z]:
                found.append(z)
                last = z
        return found

    below, above = side(group[0], -1, 1), side(group[-1], 1, 1)
    if not below:
        above = side(group[-1], 1, ONE_SIDED_ANCHORS)
    if not above:
        below = side(group[0], -1, ONE_SIDED_ANCHORS)
    if len(below) + len(above) < 2:
        return None
    interior = [z for z in range(group[0], group[-1]) if anchor_ok[z]]
    return EventRun(tuple(group), tuple(sorted(below + interior + above)))


def _with_neighbours(flags: np.ndarray, usable: np.ndarray) -> np.ndarray:
    return usable & (flags | np.r_[flags[1:], False] | np.r_[False, flags[:-1]])


def event_runs(seeds: np.ndarray, usable: np.ndarray, needs: np.ndarray
               ) -> tuple[list[EventRun], list[tuple[tuple[int, ...], str]]]:
    """The runs to solve: each seed and its usable neighbours as unknowns, grouped while at
    most :data:`MAX_PAIR_GAP` apart, with the nearest usable unflagged slices as anchors.

    A group longer than :data:`MAX_RUN` is more than an auto-focus event: content that the
    median template follows badly. There only the slices it corrected (``needs``) and their
    neighbours are unknowns, and where that is still too long, those slices alone. Returns the
    runs and, for corrected slices that cannot be solved, their groups with the reason.

    Examples
    --------
    >>> seeds = np.zeros(20, bool); seeds[[0, 9]] = True
    >>> runs, unsolved = event_runs(seeds, np.ones(20, bool), seeds)
    >>> [(r.unknowns, r.anchors) for r in runs], unsolved
    ([((0, 1), (2, 3)), ((8, 9, 10), (7, 11))], [])
    """
    n = len(usable)
    runs, unsolved = [], []
    long_levels = [(_with_neighbours(needs, usable), MAX_RUN), (usable & needs, MAX_CORRECTED_RUN)]
    for group in _grouped(np.flatnonzero(_with_neighbours(seeds, usable))):
        inside = np.zeros(n, bool)
        inside[group] = True
        for flags, limit in [(inside, MAX_RUN)] if len(group) <= MAX_RUN else long_levels:
            unknown = inside & flags
            parts = _grouped(np.flatnonzero(unknown))
            if all(len(part) <= limit for part in parts):
                break
        for part in parts:
            run = _anchored(part, usable & ~unknown) if len(part) <= limit else None
            if run is not None:
                runs.append(run)
            elif needs[part].any():
                unsolved.append((tuple(part), f"one of {len(part)} neighbouring slices that the median template "
                                              "corrected: too long a run to solve" if len(part) > limit else
                                 "no undistorted slice near enough on either side"))
    return runs, unsolved


def calm_windows(calm: np.ndarray) -> list[EventRun]:
    """Up to :data:`WINDOWS` runs of five calm slices, spread evenly over the stack, shaped like
    the runs the refinement solves (three unknowns between two anchors)."""
    inner = [z for z in range(len(calm) - 4) if calm[z:z + 5].all()]
    if len(inner) > WINDOWS:
        inner = [inner[int(i)] for i in np.linspace(0, len(inner) - 1, WINDOWS).round()]
    return [EventRun((p + 1, p + 2, p + 3), (p, p + 4)) for p in inner]


@dataclass
class PairJob:
    """What a worker needs to register pairs of slices."""

    stack: Stack
    affines: np.ndarray   # the placement without linear correction
    pairs: list[tuple[int, int]]
    canvas: tuple[int, int]
    backend: Backend
    template_level: int


def register_pairs_block(job: PairJob, first: int, last: int) -> list[PairRegistration]:
    """Register ``job.pairs[first:last]``: each source slice, from its placement, to its target
    slice placed by its own. Each slice is read and reduced once per block (neighbouring pairs
    share slices)."""
    level = job.template_level
    shape = job.backend.level_shape(job.canvas, level)
    images: dict[int, np.ndarray] = {}

    def image(z: int) -> np.ndarray:
        if z not in images:
            images[z] = registration_image(job.stack.read(z), level, job.backend)
        return images[z]

    out = []
    for s, t in job.pairs[first:last]:
        t0 = time.perf_counter()
        entry = PairRegistration(s, t)
        template = placed_float(image(t), at_level(job.affines[t], level), shape)
        mask = np.isfinite(template)
        if mask.mean() < 0.05:
            entry.reason = f"slice {t} covers < 5 % of the canvas"
        else:
            filled = np.where(mask, template, np.float32(template[mask].mean()))
            start = job.affines[s]
            try:
                fit = job.backend.register(image(s), filled, mask, start, level=level).affine
                entry.deviation = (compose(invert(start), fit)[:, :2] - np.eye(2)).ravel()
            except RegistrationError as exc:
                entry.reason = f"registration failed: {exc}"
        entry.seconds = time.perf_counter() - t0
        out.append(entry)
    return out


def pair_noise(measured: dict[tuple[int, int], PairRegistration], windows: list[EventRun],
               template_noise: np.ndarray) -> tuple[dict[int, np.ndarray], dict[str, Any]]:
    """The noise of one pair's deviation by distance, measured on calm windows and calibrated
    on them.

    First the robust spread, per entry, of the windows' pairs at each distance. It holds the
    variation of the content's change with depth along the whole stack, which every run fits
    for itself; so each window is then solved as a run (its middle three slices unknown,
    :func:`amst.joint_linear.standard_scores`), and the noise is scaled per entry so that those
    undistorted slices' scores have unit robust spread. With fewer than :data:`MIN_WINDOWS`
    windows the median template's noise (larger) is taken.
    """
    usable = []
    for w in windows:
        entries = [measured[p] for p in w.pairs]
        if all(e.deviation is not None for e in entries):
            usable.append([PairDeviation(e.source, e.target, e.deviation) for e in entries])
    if len(usable) < MIN_WINDOWS:
        floor = np.asarray(template_noise, np.float64)
        noise = {g: floor for g in range(1, MAX_PAIR_GAP + 1)}
        return noise, {"windows": len(usable), "source": "median template (too few calm windows)",
                       **{f"sigma_gap{g}": v.tolist() for g, v in noise.items()}}
    by_gap = {g: robust_sigma(np.array([p.deviation for ps in usable for p in ps if p.target - p.source == g]), 1e-6)
              for g in range(1, MAX_PAIR_GAP + 1)}
    scores = [standard_scores(ps, sorted({p.source for p in ps} | {p.target for p in ps})[1:-1], by_gap)
              for ps in usable]
    scores = np.concatenate([s for s in scores if s is not None])
    scale = robust_sigma(scores, 0.05)
    noise = {g: v * scale for g, v in by_gap.items()}
    return noise, {"windows": len(usable), "source": "calm windows", "calibration": scale.tolist(),
                   **{f"sigma_gap{g}": v.tolist() for g, v in noise.items()}}


def refine_corrections(executor: Any, results: list[SliceResult], *, prealign_affines: np.ndarray,
                       without_linear: np.ndarray, stack: Stack, canvas: tuple[int, int], cfg: RunConfig,
                       backend: Backend, level: int, combined: dict[str, Any], progress: bool) -> float:
    """Measure the linear correction of the slices near a distortion event again, between
    neighbouring slices, and solve them jointly (in place in ``results``); returns the workers'
    seconds.

    The median template (radius ``template.median_radius``) is robust, and its measured noise
    says where distortions are; but it is made of slices up to that many slices away, whose
    content differs, and that mismatch enters each correction. Neighbouring slices differ
    least. So every slice whose template correction reaches :data:`SEED_FRACTION` of
    ``register.significance`` is looked at again with its two neighbours (an auto-focus event
    lasts one to three slices and fades), between the nearest unflagged slices around them:
    every pair of these slices at most :data:`MAX_PAIR_GAP` apart is registered (both placed
    by their pre-alignment and combined translation, no linear correction), and the
    distortions are solved jointly with the content's change with depth
    (:func:`amst.joint_linear.solve_run`): a slice next to a distorted one is measured with
    that one's distortion taken out, not inherited through the template, and at a stack end
    two anchors on the one side give the content's change. A pair's noise is measured in the
    run, on up to :data:`WINDOWS` windows of calm slices registered the same way
    (:func:`pair_noise`; ``transforms.json`` ``combine.pair_noise``). A slice
    keeps a linear correction exactly when the joint solve finds it significant
    (``register.significance``) and it is within the registration's bounds (scale, shear,
    shift); the translation at the reference point stays the combined one.
    """
    from tqdm import tqdm

    n = len(results)
    usable = np.array([results[z].status == "ok" for z in range(n)])
    needs = np.array([bool(results[z].metrics.get("linear_applied")) for z in range(n)])
    template_sig = np.array([float(results[z].metrics.get("linear_significance", np.nan)) for z in range(n)])
    significance = cfg.register.significance
    seeds = usable & (np.nan_to_num(template_sig) > SEED_FRACTION * significance)
    runs, unsolved = event_runs(seeds, usable, needs)
    for group, reason in unsolved:
        for z in group:
            if needs[z]:
                results[z].metrics["refine_reason"] = f"{reason}: the median template's correction is kept"
    counts = {"refined": 0, "not_confirmed": 0, "added": 0, "failed_pairs": 0}
    if not runs:
        combined.update(counts)
        return 0.0
    flagged = np.zeros(n, bool)
    for run in runs:
        flagged[list(run.unknowns)] = True
    calm = usable & ~flagged & ~needs
    windows = calm_windows(calm)
    wanted = sorted({p for run in runs + windows for p in run.pairs})
    job = PairJob(stack, np.asarray(without_linear, np.float64), wanted, canvas, backend, level)
    measured: dict[tuple[int, int], PairRegistration] = {}
    seconds = 0.0
    with tqdm(total=len(wanted), desc="refine", unit="pair", disable=not progress) as bar:
        spans = [(i, min(i + PAIRS_PER_BLOCK, len(wanted))) for i in range(0, len(wanted), PAIRS_PER_BLOCK)]
        for block in map_blocks(executor, register_pairs_block, job, spans):
            for entry in block:
                measured[(entry.source, entry.target)] = entry
                seconds += entry.seconds
                bar.update(1)
    noise, record = pair_noise(measured, windows, np.asarray(combined["noise_linear"]))
    c = np.asarray(combined["reference_xy"], np.float64)
    r = cfg.register
    for run in runs:
        entries = [measured[p] for p in run.pairs]
        counts["failed_pairs"] += sum(e.deviation is None for e in entries)
        pairs = [PairDeviation(e.source, e.target, e.deviation) for e in entries if e.deviation is not None]
        solution = solve_run(pairs, run.unknowns, noise, significance=significance)
        for z in run.unknowns:
            _take_solution(results[z], z, run, solution, without_linear[z], prealign_affines[z], c, canvas, r, counts,
                           bool(needs[z]))
    applied = sum(bool(res.metrics.get("linear_applied")) for res in results)
    combined.update(pair_noise=record, linear_applied=applied, **counts)
    log.info("refine: %d slice(s) near distortion events solved jointly from %d pair registration(s) (%d calm "
             "windows measured their noise): %d corrected, %d of the median template's corrections not confirmed, "
             "%d found that it missed", sum(len(run.unknowns) for run in runs), len(wanted),
             record["windows"], counts["refined"], counts["not_confirmed"], counts["added"])
    return seconds


def _take_solution(result: SliceResult, z: int, run: EventRun, solution: RunSolution, without_linear: np.ndarray,
                   prealign: np.ndarray, c: np.ndarray, canvas: tuple[int, int], r: Any, counts: dict[str, int],
                   needed: bool) -> None:
    """Apply the joint solve's finding for slice ``z`` to its ``result``, in place."""
    metrics = result.metrics
    metrics["refine_run"] = list(run.unknowns)
    metrics["refine_anchors"] = list(run.anchors)
    if solution.reason:
        metrics["refine_reason"] = f"{solution.reason}: the median template's decision is kept"
        return
    if z in solution.significance:
        metrics["refined_significance"] = round(solution.significance[z], 3)
    if z not in solution.deviation:
        result.affine = np.array(without_linear, np.float64)
        metrics["linear_applied"] = False
        if needed:
            counts["not_confirmed"] += 1
            metrics["refine_reason"] = (f"not confirmed between neighbouring slices (significance "
                                        f"{solution.significance.get(z, 0.0):.1f} <= {r.significance:g})")
        return
    # the translation at c stays the combined one
    refined = compose(without_linear, about_point(np.eye(2) + solution.deviation[z].reshape(2, 2), c))
    problem = geometry_problem(refined, prealign, canvas, max_scale_change=r.max_scale_change,
                               max_shear=r.max_shear, max_shift_px=r.max_shift_px)
    if problem:
        metrics["refine_reason"] = f"refinement not kept: {problem}"
        return
    result.affine = refined
    metrics["linear_applied"] = True
    metrics["refined"] = True
    counts["refined"] += 1
    counts["added"] += not needed
