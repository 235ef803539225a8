"""``amst evaluate``: measure a finished run (residual, NCC, transforms, ground truth)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy.ndimage import uniform_filter1d

from ..outdir import atomic_write_text
from ..stack import open_stack
from ..transform import compose, decompose, invert
from ..transforms_io import STATUSES, Transforms, jsonable, load_transforms
from .flags import FlagRule, ResidualFlag, residual_flags
from .ground_truth import depth_errors, slice_errors
from .residual import Crop, SliceSweep, summarise_residual, sweep

DRIFT_WINDOW = 51  # slices: errors varying slower than this along z count as drift


@dataclass
class Evaluation:
    """Per-slice figures of one run and their summary."""

    run: Path
    transforms: Transforms
    sweep: SliceSweep
    summary: dict[str, Any]
    per_slice: dict[str, list]
    truth: dict[str, Any] | None = field(default=None, repr=False)
    flags: list[ResidualFlag] = field(default_factory=list)  # slices the residual flags (amst.quality.flags)


def transform_parameters(tf: Transforms) -> dict[str, np.ndarray]:
    """Scale, shear, rotation of the AMST correction and the full translation, per slice."""
    rows = [decompose(compose(invert(s.prealign), s.affine)) for s in tf.slices]
    out = {k: np.array([r[k] for r in rows]) for k in ("scale_x", "scale_y", "shear", "rotation_deg")}
    out["tx"] = np.array([s.affine[0, 2] for s in tf.slices])
    out["ty"] = np.array([s.affine[1, 2] for s in tf.slices])
    return out


def split_drift_jitter(displacement: np.ndarray, window: int = DRIFT_WINDOW) -> tuple[np.ndarray, np.ndarray]:
    """Low-pass (drift) and high-pass (jitter) parts along z of an (n, 2) displacement."""
    low = uniform_filter1d(displacement, size=min(window, len(displacement)), axis=0, mode="nearest")
    return low, displacement - low


def field_magnitudes(tf: Transforms) -> tuple[np.ndarray, np.ndarray]:
    """Per slice the RMS and largest magnitude (raw px) of its displacement field over the
    canvas; 0 for slices without one."""
    from ..field import field_rms_max

    rms, mx = np.zeros(len(tf.slices)), np.zeros(len(tf.slices))
    for z, s in enumerate(tf.slices):
        if s.field is not None:
            rms[z], mx[z] = field_rms_max(s.field, tf.field_grid, tf.canvas_shape_yx)
    return rms, mx


def field_summary(tf: Transforms, rms: np.ndarray, mx: np.ndarray) -> dict[str, Any]:
    """The ``fields`` entry of the evaluation summary: which slices carry a local correction
    and how large it is (px), largest first."""
    with_field = [z for z, s in enumerate(tf.slices) if s.field is not None]
    order = sorted(with_field, key=lambda z: -mx[z])
    return {"slices_with_field": len(with_field),
            "rms_px_median_all": float(np.median(rms)), "rms_px_max": float(rms.max()), "max_px": float(mx.max()),
            "grid": tf.field_grid.to_json(),
            "slices": [{"index": z, "name": tf.slices[z].name, "rms_px": float(rms[z]), "max_px": float(mx[z])}
                       for z in order]}


def full_maps(tf: Transforms, truth: dict[str, Any]) -> dict[str, Any]:
    """The ``output_to_raw`` / ``raw_to_volume`` point maps of :func:`slice_errors` for a run
    with displacement fields and a truth with local distortions (neither when absent)."""
    from ..point_map import map_points
    from ..synth import ground_truth_points

    out: dict[str, Any] = {}
    if tf.has_fields:
        out["output_to_raw"] = lambda z, pts: map_points(tf, z, pts)
    if any(v is not None for v in truth.get("local", ())):
        out["raw_to_volume"] = lambda z, raw: ground_truth_points(truth, z, raw)
    return out


def check_truth_matches(tf: Transforms, truth: dict[str, Any], transforms_path: str | Path,
                        truth_path: str | Path) -> None:
    """Refuse ground truth that belongs to another stack than the one the run aligned.

    Parameters
    ----------
    tf : Transforms
        The run's transforms.
    truth : dict
        The ground truth, as :func:`amst.synth.load_ground_truth` returns it.
    transforms_path, truth_path : str or path
        The two files, for the message.

    Raises
    ------
    ValueError
        When the slice counts differ, when both files name their slices and the names
        differ, or when the run records its input's slice shape (``input.shape_yx``) and
        it is not the truth's.
    """
    where = f"ground truth {truth_path} does not belong to the run {transforms_path}"
    what = "give the ground_truth.json of the stack this run aligned"
    n_run, n_truth = len(tf.slices), len(truth["slices"])
    if n_run != n_truth:
        raise ValueError(f"{where}: the truth has {n_truth} slices, the run {n_run}; {what}")
    truth_yx = [int(v) for v in truth["shape_zyx"][1:]]
    run_yx = tf.input_shape_yx
    if run_yx is not None and list(run_yx) != truth_yx:
        raise ValueError(f"{where}: the truth's slices are {truth_yx[0]}x{truth_yx[1]} px (y x), the run's input "
                         f"slices {run_yx[0]}x{run_yx[1]} px; {what}")
    # A run whose input had no file names calls its slices "slice {z}" (Stack.slice_name).
    run_names = [s.name for s in tf.slices]
    truth_names = [s.get("name") for s in truth["slices"]]
    if all(truth_names) and run_names != [f"slice {s.index}" for s in tf.slices]:
        for z, (a, b) in enumerate(zip(run_names, truth_names)):
            if a != b:
                raise ValueError(f"{where}: slice {z} is {a!r} in the run but {b!r} in the truth; {what}")


def evaluate_run(run: str | Path, truth: str | Path | None = None, crops: list[Crop] | None = None,
                 crop_size: int = 512) -> Evaluation:
    """Measure an ``amst run`` output folder (or any folder with transforms.json + aligned stack).

    Parameters
    ----------
    run : str or path
        The folder with ``transforms.json`` and the aligned stack.
    truth : str or path, optional
        ``ground_truth.json`` of the synthetic stack the run aligned; refused (ValueError)
        when it belongs to another stack (:func:`check_truth_matches`).
    crops : list of Crop, optional
        Where to measure the residual (default: chosen on the middle slice, or the
        nearest one without NaN/inf pixels, :func:`~amst.quality.residual.reference_slice`).
    crop_size : int
        Side of the crops chosen when ``crops`` is None.

    Returns
    -------
    Evaluation
        Slices with NaN/inf pixels are listed in ``summary["nonfinite_slices"]``; the
        figures of those with too little finite data are NaN, never averaged in. Slices
        with status ``ok`` whose jitter residual stands out (:func:`~amst.quality.flags.residual_flags`)
        are in ``flags`` and ``summary["residual_flags"]``.
    """
    run = Path(run)
    tf = load_transforms(run / "transforms.json")
    truth_doc = None
    if truth is not None:
        from ..synth import load_ground_truth

        truth_doc = load_ground_truth(truth)
        check_truth_matches(tf, truth_doc, run / "transforms.json", truth)
    name = tf.extra.get("output") or ("aligned.zarr" if (run / "aligned.zarr").exists() else "aligned")
    stack = open_stack(run / name)
    sw = sweep(stack, crops, crop_size)
    pixel_nm = tf.voxel_size.x if tf.voxel_size else None
    statuses = [s.status for s in tf.slices]
    flags = residual_flags(sw.shift_xy, FlagRule(), frozenset(z for z, st in enumerate(statuses) if st != "ok"))
    summary: dict[str, Any] = {
        "run": str(run), "slices": len(tf.slices),
        "status_counts": {k: statuses.count(k) for k in STATUSES},
        "residual": summarise_residual(sw.residual_px, pixel_nm),
        "jitter_residual": summarise_residual(sw.jitter_residual_px, pixel_nm),
        "crops": [vars(c) for c in sw.crops],
        "neighbour_ncc_median": float(np.nanmedian(sw.neighbour_ncc)) if np.isfinite(sw.neighbour_ncc).any() else None,
        "pixel_nm": pixel_nm,
        "timings_per_slice_s": tf.extra.get("timings_per_slice_s", {}),
        "nonfinite_slices": nonfinite_slices(sw, tf, stack.shape[1] * stack.shape[2]),
        "residual_flags": [{**f.to_dict(), "name": tf.slices[f.index].name, "message": f.message(pixel_nm)}
                           for f in flags],
    }
    per_slice: dict[str, list] = {
        "status": statuses,
        "neighbour_ncc": sw.neighbour_ncc.tolist(),
        **{f"residual_crop{k}_px": r.tolist() for k, r in enumerate(sw.residual_px)},
        **{f"jitter_residual_crop{k}_px": r.tolist() for k, r in enumerate(sw.jitter_residual_px)},
        **{f"shift_crop{k}_xy_px": r.tolist() for k, r in enumerate(sw.shift_xy)},
        **{k: v.tolist() for k, v in transform_parameters(tf).items()},
    }
    if tf.has_fields:
        field_rms, field_max = field_magnitudes(tf)
        per_slice.update({"field_rms_px": field_rms.tolist(), "field_max_px": field_max.tolist()})
        summary["fields"] = field_summary(tf, field_rms, field_max)
    if truth_doc is not None:
        raw_shape = tuple(truth_doc["shape_zyx"][1:])
        exclude = np.array([s in ("blank",) for s in statuses])
        err = slice_errors(tf.affines, truth_doc["maps"], tf.canvas_shape_yx, raw_shape, exclude=exclude,
                           **full_maps(tf, truth_doc))
        drift, jitter = split_drift_jitter(err["displacement_centre"])
        nm = pixel_nm or float("nan")
        per_slice.update({"gt_rms_px": err["rms"].tolist(), "gt_max_px": err["max"].tolist(),
                          "gt_rms_nm": (err["rms"] * nm).tolist(),
                          "gt_drift_px": np.linalg.norm(drift, axis=1).tolist(),
                          "gt_jitter_px": np.linalg.norm(jitter, axis=1).tolist()})
        af = np.array(["autofocus" in s["events"] for s in truth_doc["slices"]])
        summary["ground_truth"] = {
            "rms_px_median": float(np.nanmedian(err["rms"])), "rms_px_p95": float(np.nanpercentile(err["rms"], 95)),
            "rms_px_max": float(np.nanmax(err["rms"])), "rms_nm_median": float(np.nanmedian(err["rms"]) * nm),
            "autofocus_rms_px_mean": float(np.nanmean(err["rms"][af])) if af.any() else None,
            "drift_px_max": float(np.linalg.norm(drift - drift[0], axis=1).max()),
            "jitter_px_rms": float(np.sqrt(np.mean(np.sum(jitter ** 2, axis=1)))),
        }
        if tf.z_nm is not None and all("z_nm" in s for s in truth_doc["slices"]):
            step = (tf.extra.get("z_spacing") or {}).get("nominal_nm") or truth_doc["voxel_size"]["z"]
            summary["ground_truth"]["z_spacing"] = depth_errors(
                tf.z_nm, np.array([s["z_nm"] for s in truth_doc["slices"]]), float(step), truth_doc.get("z_events", []))
    return Evaluation(run, tf, sw, summary, per_slice, truth_doc, flags)


def nonfinite_slices(sw: SliceSweep, tf: Transforms, slice_px: int) -> list[dict[str, Any]]:
    """The slices of the aligned stack that hold NaN/inf pixels, and what could be measured on them.

    Parameters
    ----------
    sw : SliceSweep
        The sweep over the aligned stack.
    tf : Transforms
        The run's transforms (for the slice names).
    slice_px : int
        Pixels per aligned slice.

    Returns
    -------
    list of dict
        ``index``, ``name``, ``nonfinite_px``, ``fraction`` and ``crops_measured``: the crops
        with enough finite data to measure; in the others the residual to and from the
        neighbouring slices is NaN.
    """
    if sw.nonfinite_px is None:
        return []
    usable = sw.usable_crops if sw.usable_crops is not None else np.ones(sw.residual_px.shape, dtype=bool)
    return [{"index": int(z), "name": tf.slices[z].name, "nonfinite_px": int(sw.nonfinite_px[z]),
             "fraction": float(sw.nonfinite_px[z] / slice_px), "crops_measured": int(usable[:, z].sum())}
            for z in np.flatnonzero(sw.nonfinite_px)]


def write_json(evals: list[Evaluation], path: str | Path) -> None:
    """Every per-slice figure of every run, for other tools."""
    doc = {"format": "amst-evaluation", "version": 1,
           "runs": [{"summary": e.summary, "per_slice": e.per_slice} for e in evals]}
    atomic_write_text(path, json.dumps(jsonable(doc), indent=1))


def comparison_table(evals: list[Evaluation]) -> str:
    """One plain-text table comparing runs (``amst evaluate RUN1 RUN2 ...``)."""
    head = f"{'run':<30}{'ok':>5}{'fallback':>9}{'residual mean':>15}{'residual max':>14}{'jitter res.':>13}{'NCC':>7}"
    has_gt = any("ground_truth" in e.summary for e in evals)
    if has_gt:
        head += f"{'GT median px':>14}{'GT p95 px':>11}{'AF px':>8}{'drift px':>10}"
    lines = [head]
    for e in evals:
        s = e.summary
        res = s["residual"]
        unit = res[0]["unit"] if res else ""
        mean = np.nanmean([r["mean"] for r in res]) if res else float("nan")
        mx = np.nanmax([r["max"] for r in res]) if res else float("nan")
        jit = np.nanmean([r["mean"] for r in s["jitter_residual"]]) if res else float("nan")
        line = (f"{Path(s['run']).name[:29]:<30}{s['status_counts']['ok']:>5}{s['status_counts']['fallback']:>9}"
                f"{mean:>11.2f} {unit:<3}{mx:>10.2f} {unit:<3}{jit:>9.2f} {unit:<3}"
                f"{(s['neighbour_ncc_median'] or float('nan')):>7.3f}")
        if has_gt:
            g = s.get("ground_truth") or {}
            af = g.get("autofocus_rms_px_mean")
            line += (f"{g.get('rms_px_median', float('nan')):>14.3f}{g.get('rms_px_p95', float('nan')):>11.3f}"
                     f"{(af if af is not None else float('nan')):>8.3f}{g.get('drift_px_max', float('nan')):>10.2f}")
        lines.append(line)
    return "\n".join(lines)
