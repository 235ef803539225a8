"""The linear correction of each slice that needed one, measured again against its nearest
undistorted neighbours (:func:`refine_corrections`)."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..combine import robust_sigma
from ..config import RunConfig
from ..register import Backend, RegistrationError, check_result, sampled_ncc
from ..stack import Stack
from ..transform import at_level, compose, invert
from .blocks import map_blocks
from .records import Refinement, SliceResult
from ..warp import placed_float
from .register_pass import registration_image

log = logging.getLogger("amst")


@dataclass(frozen=True)
class RefinePlan:
    """How one slice's linear correction is measured again.

    ``neighbours``: the slices whose mean is the template. ``motion_pair``: with a neighbour on
    one side only (at a stack end, or inside a long run of distorted slices), ``(p, q)``, two
    slices on that side that carry no linear correction of their own, ``p`` registered to
    ``q`` measures the content's own change with depth, which the one-sided measurement holds
    and which is then taken out of it (:func:`extrapolated_linear`). None with a neighbour on
    each side (their mean cancels that change to first order) or when no such pair is near.
    """

    neighbours: tuple[int, ...]
    motion_pair: tuple[int, int] | None = None


@dataclass
class RefineJob:
    """What a worker needs to re-measure the linear correction of distorted slices."""

    stack: Stack
    affines: np.ndarray                    # the combined affines
    prealign_affines: np.ndarray           # the bounds of the sanity checks
    plans: dict[int, RefinePlan]
    canvas: tuple[int, int]
    cfg: RunConfig
    backend: Backend
    template_level: int
    reference_xy: tuple[float, float]
    # Plans keyed below 0 measure a calm slice's refinement only for its noise: key -> slice.
    probe_of: dict[int, int] = field(default_factory=dict)


#: Auto-focus events last one to three slices: a refinement template is made only of slices
#: that close (farther ones differ in content as much as the median template's).
_MAX_EVENT_SLICES = 3


def _nearest_undistorted(z: int, needs: np.ndarray, usable: np.ndarray, step: int) -> int | None:
    """The nearest usable slice from ``z`` in direction ``step``, at most
    :data:`_MAX_EVENT_SLICES` away, whose correction was not needed."""
    for d in range(1, _MAX_EVENT_SLICES + 1):
        j = z + step * d
        if not 0 <= j < len(needs):
            return None
        if usable[j] and not needs[j]:
            return j
    return None


def refine_plan(z: int, unsettled: np.ndarray, usable: np.ndarray,
                 corrected: np.ndarray | None = None) -> RefinePlan:
    """The nearest settled slice on each side of ``z`` (usable, not ``unsettled``).

    With only one side (``a``, ``gap`` slices from ``z``), also the motion pair: the first
    slice ``p`` from ``a`` outwards that is settled and not ``corrected``, and the one such
    ``q`` beyond it nearest to ``gap`` slices from ``p`` (the content's change over the same
    distance, so that the extrapolation does not amplify its noise). A corrected slice's
    placement holds its own correction, whose error a motion pair through it would pass into
    the extrapolation twice (once through the template, once through the pair).
    """
    settled = usable & ~unsettled
    clean = settled if corrected is None else settled & ~corrected
    n = len(settled)
    sides = {step: _nearest_undistorted(z, unsettled, usable, step) for step in (-1, 1)}
    neighbours = tuple(j for j in (sides[-1], sides[1]) if j is not None)
    if len(neighbours) != 1:
        return RefinePlan(neighbours)
    a = neighbours[0]
    step = 1 if a > z else -1
    gap = abs(a - z)
    for p in (a + step * d for d in range(_MAX_EVENT_SLICES + 1) if 0 <= a + step * d < n):
        if not clean[p]:
            continue
        beyond = [p + step * d for d in range(1, gap + _MAX_EVENT_SLICES + 1)
                  if 0 <= p + step * d < n and clean[p + step * d]]
        if beyond:
            return RefinePlan(neighbours, (p, min(beyond, key=lambda j: (abs(abs(j - p) - gap), -abs(j - p)))))
    return RefinePlan(neighbours)


def extrapolated_linear(linear_za: np.ndarray, linear_pq: np.ndarray, z: int, a: int, p: int, q: int
                         ) -> np.ndarray:
    """Slice ``z``'s linear correction from one-sided measurements.

    To first order, registering slice ``s`` to slice ``t`` measures ``L_s - I + (t - s) G``:
    its own distortion plus the content's change with depth over ``t - s`` slices (``G`` per
    slice; real tissue and the phantom move sideways and change shape with depth). An
    undistorted ``p`` registered to ``q`` measures ``(q - p) G`` alone, so

        L_z = L_za - (a - z) / (q - p) (L_pq - I).

    Examples
    --------
    A 0.5 % pixel-size change at ``z = 0`` seen through content that grows 0.1 % per slice:

    >>> g = np.diag([0.001, 0.001])
    >>> extrapolated_linear(np.diag([1.005, 1.0]) + g, np.eye(2) + g, 0, 1, 2, 3).round(6).tolist()
    [[1.005, 0.0], [0.0, 1.0]]
    """
    return linear_za - (a - z) / (q - p) * (linear_pq - np.eye(2))


def _mean_template(job: RefineJob, members: tuple[int, ...], shape: tuple[int, int]) -> np.ndarray:
    """The mean of slices ``members`` placed by their affines (NaN where none covers)."""
    level = job.template_level
    placed = np.stack([placed_float(registration_image(job.stack.read(j), level, job.backend),
                                         at_level(job.affines[j], level), shape) for j in members])
    count = np.isfinite(placed).sum(axis=0)
    total = np.where(np.isfinite(placed), placed, 0).sum(axis=0)
    return np.where(count > 0, total / np.maximum(count, 1), np.nan).astype(np.float32)


def _measure_linear(job: RefineJob, z: int, members: tuple[int, ...]
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | str:
    """Register slice ``z`` (from its affine) to the mean of ``members``: its linear correction
    (2, 2), and the registration image, filled template and mask for the checks; or why not."""
    shape = job.backend.level_shape(job.canvas, job.template_level)
    template = _mean_template(job, members, shape)
    mask = np.isfinite(template)
    if mask.mean() < 0.05:
        return f"refinement template from slice(s) {list(members)} covers < 5 % of the canvas"
    filled = np.where(mask, template, np.float32(template[mask].mean()))
    image = registration_image(job.stack.read(z), job.template_level, job.backend)
    start = job.affines[z]
    try:
        fit = job.backend.register(image, filled, mask, start, level=job.template_level).affine
    except RegistrationError as exc:
        return f"refinement failed: {exc}"
    return compose(invert(start), fit)[:, :2], image, filled, mask


def refine_block(job: RefineJob, first: int, last: int) -> list[Refinement]:
    """Re-measure the linear part of slices ``first..last-1`` against their nearest
    undistorted neighbours (see :func:`refine_corrections`)."""
    cfg = job.cfg
    level = job.template_level
    c = np.asarray(job.reference_xy)
    out = []
    for key in range(first, last):
        t0 = time.perf_counter()
        plan = job.plans[key]
        z = job.probe_of.get(key, key)
        entry = Refinement(z, probe=key if key in job.probe_of else 0)
        measured = _measure_linear(job, z, plan.neighbours)
        if plan.motion_pair is not None and not isinstance(measured, str):
            p, q = plan.motion_pair
            motion = _measure_linear(job, p, (q,))
            if isinstance(motion, str):
                measured = f"{motion} (slice {p} to {q}, the content's change with depth)"
            else:
                measured = (extrapolated_linear(measured[0], motion[0], z, plan.neighbours[0], p, q), *measured[1:])
        if isinstance(measured, str):
            entry.reason = measured
        else:
            lin, image, filled, mask = measured
            start = job.affines[z]
            kept = np.zeros((2, 3))
            kept[:, :2] = lin
            kept[:, 2] = c - lin @ c  # the translation at c stays the combined one
            refined = compose(start, kept)
            ncc_start = sampled_ncc(image, filled, mask, at_level(start, level))
            ncc_refined = sampled_ncc(image, filled, mask, at_level(refined, level))
            r = cfg.register
            problem = check_result(refined, job.prealign_affines[z], job.canvas, ncc_before=ncc_start,
                                   ncc_after=ncc_refined, max_scale_change=r.max_scale_change, max_shear=r.max_shear,
                                   max_shift_px=r.max_shift_px, min_ncc_gain=r.min_ncc_gain, min_ncc=r.min_ncc)
            pre_linear = compose(invert(job.prealign_affines[z]), refined)[:, :2]
            entry.linear_deviation = (pre_linear - np.eye(2)).ravel()
            if problem:
                entry.reason = f"refinement not kept: {problem}"
            else:
                entry.affine = refined
        entry.seconds = time.perf_counter() - t0
        out.append(entry)
    return out


def refine_corrections(executor: Any, results: list[SliceResult], *, prealign_affines: np.ndarray,
                       without_linear: np.ndarray, stack: Stack, canvas: tuple[int, int], cfg: RunConfig,
                       backend: Backend, level: int, combined: dict[str, Any], progress: bool) -> float:
    """Re-measure the linear correction of each slice that needed one, against its nearest
    undistorted neighbours (in place in ``results``); returns the workers' seconds.

    The median template (radius ``template.median_radius``) is robust, and its measured noise
    decides which slices need a correction; but it is made of slices up to that many slices
    away, whose content differs. The correction itself is therefore measured again against the
    mean of the nearest usable slice on each side whose own correction was not needed (placed
    by their final affines): the least content mismatch there is. The translation at the
    reference point stays the combined one. On ``amst synth`` stacks this brought the median
    error at auto-focus slices from 0.236 to 0.148 px (phantom, 300 x 384^2, seed 0) and from
    0.213 to 0.142 px (real FIB-SEM content, 415 x 202^2, seed 0; benchmarks/real_content.py
    measures the whole method). A refinement that fails the registration checks
    (``check_result``: bounds on scale, shear, shift and NCC) is not kept. The refined
    correction must itself be significant (the same threshold): a correction that only the
    median template sees is that template's content mismatch, and the slice is then kept
    without a linear correction (two measurements against different templates must agree; on
    a 30-slice phantom stack, seed 35, this kept slices 11-13 at their pre-alignment's 0.08 px
    instead of 0.29 px). Its noise is the refinement's own, measured in the run: up to
    :data:`_PROBES` calm slices are registered the same way to the mean of the slices as far
    from them as a corrected slice's neighbours are (for each pair of distances a batch needs),
    and the robust spread of their linear parts is the noise. Neighbours one slice away differ
    less than the median template's members do, so that noise is up to 3x lower than the
    median template's (real FIB-SEM content, 202 px field, volume seed 1 of
    ``benchmarks/real_content.py``, as its run's ``transforms.json`` records them in
    ``combine.neighbour_noise``: 3.1-5.4e-4 per entry against 5.3-18e-4); farther ones differ
    more, and their noise grows to the median template's (5.5-15.6e-4 at distances 1 and 3). Against the median template's noise, corrections that
    the neighbours saw clearly were refused: ``benchmarks/real_content.py``, volume seed 1, 7 of
    20 auto-focus slices corrected (median error there 0.289 px), against 11 (0.210 px).

    Slices with an undistorted neighbour on each side are measured first, all at once. The
    others (at the stack ends, or inside a run of distorted slices longer than
    :data:`_MAX_EVENT_SLICES`) have a neighbour on one side only, and that measurement also
    holds the content's change with depth, which one more registration, between two
    uncorrected slices beyond it, measures and takes out (:func:`extrapolated_linear`).
    They are measured from the inside out, nearest to a settled slice first; each one settled
    (refined, or found undistorted) becomes a neighbour of the next, so that the slices of a
    run at an end are each measured against the slice next to them. Every registration in a
    measurement adds its noise, and a corrected neighbour its correction's error: the
    measured noise is scaled by the square root of their number before the significance
    test (without it, a run of corrections chained from one slice to the next made clean
    slices next to it look distorted and put them 0.5-0.9 px off). An event on the first or
    last slices is found by pass 1 of ``template.ends: extend`` (mirrored windows); the
    figures are in :mod:`amst.template` (``benchmarks/stack_ends.py``).
    """
    from tqdm import tqdm

    n = len(results)
    usable = np.array([results[z].status == "ok" for z in range(n)])
    needs = np.array([bool(results[z].metrics.get("linear_applied")) for z in range(n)])
    targets = [int(z) for z in np.flatnonzero(needs)]
    if not targets:
        return 0.0
    seconds = 0.0
    unsettled = needs.copy()
    template_noise = np.asarray(combined["noise_linear"])
    reference_xy = tuple(combined["reference_xy"])
    significance = cfg.register.significance
    pending = set(targets)
    # The noise of a two-sided refinement grows with how far its neighbours are (their content
    # differs more): measured on calm slices for each pair of distances that a batch needs.
    noises: dict[tuple[int, int], NeighbourNoise] = {}
    with tqdm(total=len(targets), desc="refine", unit="slice", disable=not progress) as bar:
        while pending:
            corrected = np.array([bool(results[z].metrics.get("linear_applied")) for z in range(n)])
            plans = {z: refine_plan(z, unsettled, usable, corrected) for z in sorted(pending)}
            batch = [z for z, plan in plans.items() if len(plan.neighbours) == 2]
            if not batch:
                one_sided = [z for z, plan in plans.items() if plan.neighbours]
                if not one_sided:
                    break
                nearest = min(abs(plans[z].neighbours[0] - z) for z in one_sided)
                batch = [z for z in one_sided if abs(plans[z].neighbours[0] - z) == nearest]
            new_keys = {_gaps(z, plans[z]) for z in batch if len(plans[z].neighbours) == 2} - set(noises)
            probes = {key: _probe_slices(key, needs, usable) for key in sorted(new_keys)}
            probe_of: dict[int, int] = {}
            for key, zs in probes.items():
                for z in zs:
                    probe_of[-1 - len(probe_of)] = z
                    plans[-len(probe_of)] = RefinePlan((z - key[0], z + key[1]))
            job = RefineJob(stack, np.array([results[z].affine for z in range(n)]), prealign_affines, plans,
                            canvas, cfg, backend, level, reference_xy, probe_of)
            spans = [(z, z + 1) for z in batch] + [(k, k + 1) for k in probe_of]
            entries = [e for block in map_blocks(executor, refine_block, job, spans)
                       for e in block]
            seconds += sum(e.seconds for e in entries)
            for key, zs in probes.items():
                noises[key] = NeighbourNoise.measure([e for e in entries
                                                      if e.probe and _gaps(e.index, plans[e.probe]) == key])
            for e in (e for e in entries if not e.probe):
                z = e.index
                # Each registration in the measurement adds its noise, and so does the
                # correction of a corrected neighbour (its error is in the template).
                parts = 1 + (plans[z].motion_pair is not None) + sum(bool(corrected[j]) for j in plans[z].neighbours)
                measured = noises.get(_gaps(z, plans[z])) if len(plans[z].neighbours) == 2 else None
                if measured is not None and measured.usable:
                    noise, centre = measured.sigma * np.sqrt(parts), measured.centre
                else:
                    noise, centre = template_noise * np.sqrt(parts), np.zeros(4)
                _take_refinement(results[z], e, plans[z], noise, centre, without_linear[z], significance)
                unsettled[z] = False
                pending.discard(z)
                bar.update(1)
    combined["neighbour_noise"] = [{"gaps": list(key), **v.summary()} for key, v in sorted(noises.items())]
    for z in sorted(pending):  # keeps the median template's measurement
        results[z].metrics["refine_reason"] = (f"no undistorted slice within {_MAX_EVENT_SLICES} slices on either "
                                                  "side: the median template's correction is kept")
    refined = sum(bool(results[z].metrics.get("refined")) for z in targets)
    unconfirmed = sum(not results[z].metrics.get("linear_applied") for z in targets)
    combined["refined"] = refined
    combined["not_confirmed"] = unconfirmed
    combined["linear_applied"] -= unconfirmed
    log.info("refine: %d of %d corrected slice(s) re-measured against their nearest undistorted neighbours (their "
             "noise measured on %d calm slice(s)); %d not confirmed there (kept without a linear correction)",
             refined, len(targets), sum(v.count for v in noises.values()), unconfirmed)
    return seconds


#: Calm slices refined only to measure the noise of a refinement (at most this many, spread
#: over the stack), and the fewest that make a measured noise.
_PROBES = 24
_MIN_PROBES = 12


def _gaps(z: int, plan: RefinePlan) -> tuple[int, int]:
    """The distances of a two-sided plan's neighbours from ``z``: (below, above). Kept in that
    order: the content's change with depth enters a lopsided pair's mean with the sign of the
    lopsidedness, so probes are laid out the same way."""
    below, above = sorted(plan.neighbours)
    return z - below, above - z


def _probe_slices(gaps: tuple[int, int], needs: np.ndarray, usable: np.ndarray) -> list[int]:
    """Up to :data:`_PROBES` calm slices ``z``, spread evenly over the stack, whose slices
    ``z - gaps[0]`` and ``z + gaps[1]`` are usable and calm: registered to their mean, they
    measure the noise of a refinement with neighbours that far."""
    n = len(usable)
    calm = usable & ~needs  # slices corrected in an earlier batch are not calm
    a, b = gaps
    inner = [z for z in range(a, n - b) if calm[z] and calm[z - a] and calm[z + b]]
    if len(inner) <= _PROBES:
        return inner
    return [inner[int(i)] for i in np.linspace(0, len(inner) - 1, _PROBES).round()]


@dataclass(frozen=True)
class NeighbourNoise:
    """The noise of a two-sided refinement (the linear deviation of a slice registered to the mean
    of its nearest neighbours), measured on calm slices: per entry, the robust spread
    (:func:`amst.combine.robust_sigma`) and the median (a bias of the measurement)."""

    sigma: np.ndarray
    centre: np.ndarray
    count: int

    @property
    def usable(self) -> bool:
        """Whether enough calm slices were measured (:data:`_MIN_PROBES`) to trust the noise."""
        return self.count >= _MIN_PROBES

    @classmethod
    def measure(cls, entries: list[Refinement]) -> NeighbourNoise:
        devs = np.array([e.linear_deviation for e in entries if e.linear_deviation is not None]).reshape(-1, 4)
        if len(devs) < _MIN_PROBES:
            return cls(np.full(4, np.nan), np.zeros(4), len(devs))
        return cls(robust_sigma(devs, 1e-6), np.median(devs, axis=0), len(devs))

    def summary(self) -> dict[str, Any]:
        return {"slices": self.count, "sigma": [float(v) for v in self.sigma],
                "centre": [float(v) for v in self.centre]}


def _take_refinement(result: SliceResult, entry: Refinement, plan: RefinePlan, noise: np.ndarray,
                     centre: np.ndarray, without_linear: np.ndarray, significance: float) -> None:
    """Apply one refinement (``entry``, from :func:`refine_block`) to a slice's ``result``, in place:
    kept when it stands out of ``noise`` (about ``centre``) by more than ``significance``."""
    metrics = result.metrics
    metrics["refine_neighbours"] = list(plan.neighbours)
    if plan.motion_pair is not None:
        metrics["refine_motion_pair"] = list(plan.motion_pair)
    if entry.refined:
        # The refined measurement as it is applied (the median template's trend is not in it).
        s = float(np.sqrt(np.sum(((entry.linear_deviation - centre) / noise) ** 2)))
        metrics["refined_significance"] = round(s, 3)
        if s > significance:
            result.affine = entry.affine
            metrics["refined"] = True
        else:  # the neighbours do not confirm it: the median template's content mismatch
            result.affine = np.array(without_linear, np.float64)
            metrics["linear_applied"] = False
            metrics["refine_reason"] = (f"not confirmed by the nearest neighbours (significance {s:.1f} <= "
                                        f"{significance:g})")
    elif entry.reason:
        metrics["refine_reason"] = entry.reason
