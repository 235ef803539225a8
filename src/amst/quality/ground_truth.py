"""Error of an alignment against synthetic ground truth.

For slice z the alignment maps an output pixel to raw (``A_z``) and the ground truth maps
raw to the undistorted volume (``G_z``), so ``C_z = G_z o A_z`` maps output to volume. A
perfect alignment has the same ``C_z`` for every slice, up to one global transform. The
error of slice z at output pixel p is ``C_z(p) - C(p)``, with ``C`` the single affine that
best fits all slices (robustly: the element-wise median of the slices' maps).
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from ..transform import apply_to_points, compose, invert

#: ``(z, points_xy) -> points_xy``: one slice's map of (n, 2) points.
PointMap = Callable[[int, np.ndarray], np.ndarray]


def output_to_volume(affines: np.ndarray, gt_maps: np.ndarray) -> np.ndarray:
    """(n, 2, 3) composites ``G_z o A_z``.

    Raises
    ------
    ValueError
        When there are not as many ground-truth maps as affines (another stack's truth).
    """
    if len(affines) != len(gt_maps):
        raise ValueError(f"{len(affines)} alignment affines but {len(gt_maps)} ground-truth maps: "
                         "the ground truth belongs to another stack")
    return np.array([compose(g, a) for g, a in zip(gt_maps, affines)])


def sample_points(canvas_shape_yx: tuple[int, int], affine: np.ndarray | None = None,
                  raw_shape_yx: tuple[int, int] | None = None, step: int = 16) -> np.ndarray:
    """Grid points (x, y) on the canvas, restricted to where the raw slice is (if given)."""
    h, w = canvas_shape_yx
    ys, xs = np.mgrid[0:h:step, 0:w:step]
    pts = np.stack([xs.ravel(), ys.ravel()], axis=1).astype(np.float64)
    if affine is not None and raw_shape_yx is not None:
        raw = apply_to_points(affine, pts)
        rh, rw = raw_shape_yx
        inside = (raw[:, 0] >= 0) & (raw[:, 0] <= rw - 1) & (raw[:, 1] >= 0) & (raw[:, 1] <= rh - 1)
        pts = pts[inside]
    return pts


def slice_errors(affines: np.ndarray, gt_maps: np.ndarray, canvas_shape_yx: tuple[int, int],
                 raw_shape_yx: tuple[int, int], step: int = 16, exclude: np.ndarray | None = None, *,
                 output_to_raw: PointMap | None = None, raw_to_volume: PointMap | None = None) -> dict[str, np.ndarray]:
    """Per-slice ground-truth error after removing the best global affine.

    Parameters
    ----------
    affines : (n, 2, 3) output -> raw maps of the alignment
    gt_maps : (n, 2, 3) raw -> volume ground truth
    canvas_shape_yx, raw_shape_yx : shapes of the output canvas and the raw slices
    exclude : (n,) bool, slices left out of the global fit (e.g. blank)
    output_to_raw : callable, optional
        ``(z, points_xy) -> raw_xy``, the alignment's full map when it has more than the
        affines (displacement fields: :func:`amst.map_points`).
    raw_to_volume : callable, optional
        ``(z, raw_xy) -> volume_xy``, the truth's full map when it has more than the affines
        (local distortions: :func:`amst.synth.ground_truth_points`).

    The global transform stays the median of the affine composites; the error at a point
    is taken through the full maps.

    Returns
    -------
    dict
        ``rms`` and ``max`` (n,) in px over the covered canvas, ``displacement_centre``
        (n, 2) at the centre of the raw field of view, ``global`` the removed affine.
    """
    comp = output_to_volume(affines, gt_maps)
    n = len(comp)
    use = np.ones(n, dtype=bool) if exclude is None else ~exclude
    # The global transform is the element-wise median of the slices' maps: a least-squares
    # fit (the mean) would let a few auto-focus slices shift every other slice's error.
    global_map = np.median(comp[use], axis=0)
    rms, mx = np.zeros(n), np.zeros(n)
    centre = np.zeros((n, 2))
    rh, rw = raw_shape_yx
    for z in range(n):
        pts = sample_points(canvas_shape_yx, affines[z], raw_shape_yx, step)
        if len(pts) == 0:
            rms[z] = mx[z] = np.nan
            continue
        if output_to_raw is None and raw_to_volume is None:
            at_volume = apply_to_points(comp[z], pts)
        else:
            raw = output_to_raw(z, pts) if output_to_raw else apply_to_points(affines[z], pts)
            at_volume = raw_to_volume(z, raw) if raw_to_volume else apply_to_points(gt_maps[z], raw)
        d = at_volume - apply_to_points(global_map, pts)
        r = np.linalg.norm(d, axis=1)
        rms[z], mx[z] = float(np.sqrt(np.mean(r ** 2))), float(r.max())
        c = apply_to_points(invert(affines[z]), np.array([[(rw - 1) / 2, (rh - 1) / 2]]))
        centre[z] = (apply_to_points(comp[z], c) - apply_to_points(global_map, c))[0]
    return {"rms": rms, "max": mx, "displacement_centre": centre, "global": global_map}


def error_at_point(affines: np.ndarray, gt_maps: np.ndarray, point_xy: np.ndarray,
                   reference: int | None = None) -> np.ndarray:
    """(n, 2) position error at one output point, relative to slice ``reference`` (default: median)."""
    comp = output_to_volume(affines, gt_maps)
    vals = np.array([apply_to_points(c, np.asarray(point_xy, dtype=np.float64)[None])[0] for c in comp])
    base = vals[reference] if reference is not None else np.median(vals, axis=0)
    return vals - base


def jitter_errors(affines: np.ndarray, gt_maps: np.ndarray, canvas_shape_yx: tuple[int, int],
                  raw_shape_yx: tuple[int, int], window: int = 51, step: int = 16) -> np.ndarray:
    """Per-slice RMS (px) of the high-pass part of the error along z (jitter), drift removed.

    The output-to-volume maps are low-passed along z with a ``window``-slice running mean;
    what remains is how much each slice deviates from its neighbourhood.
    """
    from scipy.ndimage import uniform_filter1d

    comp = output_to_volume(affines, gt_maps)
    low = uniform_filter1d(comp, size=min(window, len(comp)), axis=0, mode="nearest")
    out = np.zeros(len(comp))
    for z in range(len(comp)):
        pts = sample_points(canvas_shape_yx, affines[z], raw_shape_yx, step)
        d = apply_to_points(comp[z], pts) - apply_to_points(low[z], pts)
        out[z] = float(np.sqrt(np.mean(np.sum(d ** 2, axis=1)))) if len(pts) else np.nan
    return out


def neighbour_errors(affines: np.ndarray, gt_maps: np.ndarray, canvas_shape_yx: tuple[int, int],
                     raw_shape_yx: tuple[int, int], step: int = 16, detrend_window: int | None = None) -> np.ndarray:
    """Per-slice RMS (px) of the misalignment of slice z to slice z - 1 (NaN for slice 0).

    The ground-truth counterpart of the paper's residual (Methods, "Evaluation of
    alignments"): the error of z minus the error of its predecessor at every output point
    covered by both, so any global transform cancels. A steady drift of the error does not
    cancel: it adds its rate per slice. ``detrend_window`` (slices) first removes the running
    mean of the output-to-volume maps along z, i.e. a slowly varying error such as a
    content-based alignment following structures that run obliquely through the volume.
    """
    from scipy.ndimage import uniform_filter1d

    comp = output_to_volume(affines, gt_maps)
    if detrend_window:
        comp = comp - uniform_filter1d(comp, size=min(detrend_window, len(comp)), axis=0, mode="nearest")
    out = np.full(len(comp), np.nan)
    for z in range(1, len(comp)):
        pts = sample_points(canvas_shape_yx, affines[z], raw_shape_yx, step)
        if len(pts):
            d = apply_to_points(comp[z], pts) - apply_to_points(comp[z - 1], pts)
            out[z] = float(np.sqrt(np.mean(np.sum(d ** 2, axis=1))))
    return out


def depth_errors(estimated_nm: np.ndarray, true_nm: np.ndarray, step_nm: float,
                 events: list[int] | tuple[int, ...] = ()) -> dict:
    """Error of estimated slice depths against the truth, after removing one global scale.

    Parameters
    ----------
    estimated_nm, true_nm : (n,) arrays
        Depth of each slice, slice 0 at 0.
    step_nm : float
        The nominal step: the errors are given as fractions of it.
    events : sequence of int
        Slices whose thickness (depth to the next slice) is an abrupt event.

    Returns
    -------
    dict
        ``scale`` (the least-squares factor applied to the estimate), ``depth_rms_steps``,
        ``depth_max_steps``, ``thickness_rms_steps``, ``thickness_max_steps`` and per event
        ``{"slice", "true_steps", "estimated_steps", "relative_error"}``.
    """
    est = np.asarray(estimated_nm, dtype=np.float64)
    true = np.asarray(true_nm, dtype=np.float64)
    scale = float(est @ true / (est @ est)) if est @ est > 0 else float("nan")
    depth = (scale * est - true) / step_nm
    thick_est = np.diff(scale * est) / step_nm
    thick_true = np.diff(true) / step_nm
    thickness = thick_est - thick_true
    return {"scale": scale, "depth_rms_steps": float(np.sqrt(np.mean(depth ** 2))),
            "depth_max_steps": float(np.abs(depth).max()),
            "thickness_rms_steps": float(np.sqrt(np.mean(thickness ** 2))),
            "thickness_max_steps": float(np.abs(thickness).max()),
            "events": [{"slice": int(z), "true_steps": float(thick_true[z]), "estimated_steps": float(thick_est[z]),
                        "relative_error": float(thick_est[z] / thick_true[z] - 1.0)} for z in events]}
