"""What an affine leaves: the local displacement between a registered slice and its template.

At each node of a coarse grid (:class:`amst.field.FieldGrid`) the displacement ``v`` that
brings the registered raw slice onto its template is measured by Lucas-Kanade on the
window around the node (a square of two node spacings): the least-squares solution of
``grad T . v = T - R`` over the window, iterated with ``R`` resampled through the current
field. Each node also gets its standard error from the residual and the window's
structure tensor. The part of the field an affine can express is then removed (weighted
least squares), so the result is only what the affine registration cannot fit.

This is a measurement, not a correction: whether any of it is a distortion rather than the
template's content mismatch is decided across the stack
(:func:`amst.elastic.elastic_fields`).

References
----------
.. [1] B. D. Lucas and T. Kanade, "An iterative image registration technique with an
   application to stereo vision", IJCAI 1981.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from .field import FieldGrid, dense_field
from .transform import as_affine


@dataclass
class NodeShifts:
    """Local displacements at the nodes of a grid, in raw px of the full-resolution slice.

    Attributes
    ----------
    values : (gh, gw, 2) array
        Displacement (dx, dy) to add to the slice's affine map at each node, affine part removed.
    sd : (gh, gw) array
        Standard error of each node's displacement (px, per axis); inf where not measured.
    """

    values: np.ndarray
    sd: np.ndarray

    @property
    def valid(self) -> np.ndarray:
        return np.isfinite(self.sd)

    def to_json(self) -> dict:
        # Exact floats: a resumed run decides its fields from these and must decide as the
        # uninterrupted run did (rounded values gave other fields, so every slice with one was rewritten).
        return {"values": self.values.tolist(),
                "sd": [[None if not np.isfinite(v) else float(v) for v in row] for row in self.sd]}

    @classmethod
    def from_json(cls, doc: dict) -> NodeShifts:
        sd = np.array([[np.inf if v is None else v for v in row] for row in doc["sd"]], np.float64)
        return cls(np.array(doc["values"], np.float64), sd)


def local_residual(registered: np.ndarray, template: np.ndarray, mask: np.ndarray, *, grid: FieldGrid,
                   level: int, affine: np.ndarray, iterations: int = 4,
                   min_coverage: float = 0.9) -> NodeShifts:
    """Local displacements of a registered slice against its template, affine part removed.

    Parameters
    ----------
    registered : 2-D float32 array
        The raw slice resampled through its affine onto the canvas at pyramid ``level``
        (NaN where it has no data).
    template : 2-D float32 array
        Its template on the same level canvas.
    mask : 2-D bool array
        Where the template has data.
    grid : FieldGrid
        Node grid on the full-resolution canvas.
    level : int
        Pyramid level of the images (each level halves the resolution).
    affine : (2, 3) array
        The slice's full-resolution affine (output -> raw): displacements measured on the
        canvas are carried to raw pixels through its linear part.
    iterations : int
        Lucas-Kanade iterations.
    min_coverage : float
        Share of a node's window that must hold data on both images for it to be measured.

    Returns
    -------
    NodeShifts
    """
    scale = float(2 ** level)
    h, w = template.shape
    data = mask & np.isfinite(registered)
    valid_r = np.where(np.isfinite(registered), registered, 0).astype(np.float32)
    tmpl = np.where(mask, template, 0).astype(np.float32)
    gx = cv2.Sobel(tmpl, cv2.CV_32F, 1, 0, ksize=3, scale=1 / 8)
    gy = cv2.Sobel(tmpl, cv2.CV_32F, 0, 1, ksize=3, scale=1 / 8)
    # A node's gradient must come from pixels whose whole 3x3 neighbourhood has data.
    inner = cv2.erode(data.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(np.float32)
    gx *= inner
    gy *= inner
    nodes = grid.nodes_xy() / scale
    half = grid.spacing_px / scale
    windows = _node_windows(nodes, half, (h, w))
    sxx, sxy, syy, count = (_window_sums(img, windows) for img in (gx * gx, gx * gy, gy * gy, inner))
    level_grid = FieldGrid(grid.spacing_px / scale, grid.shape_yx)
    area = np.array([(y1 - y0) * (x1 - x0) for y0, y1, x0, x1 in windows.reshape(-1, 4)], np.float64)
    det = sxx * syy - sxy * sxy
    trace = sxx + syy
    measured = (count >= min_coverage * area.reshape(count.shape)) & (det > 1e-3 * trace ** 2) & (trace > 0)
    v = np.zeros((*grid.shape_yx, 2))
    gy_, gx_ = np.mgrid[0:h, 0:w].astype(np.float32)
    for _ in range(max(1, iterations)):
        if np.any(v):
            u = dense_field(v, level_grid, (h, w)).astype(np.float32)
            moved = cv2.remap(valid_r, gx_ + u[..., 0], gy_ + u[..., 1], cv2.INTER_LINEAR,
                              borderMode=cv2.BORDER_CONSTANT, borderValue=0.0)
        else:
            moved = valid_r
        diff = (tmpl - moved) * inner
        bx, by = _window_sums(gx * diff, windows), _window_sums(gy * diff, windows)
        with np.errstate(divide="ignore", invalid="ignore"):
            dx = np.where(measured, (syy * bx - sxy * by) / det, 0.0)
            dy = np.where(measured, (sxx * by - sxy * bx) / det, 0.0)
        v[..., 0] += dx
        v[..., 1] += dy
    residual = _window_sums(diff * diff, windows)
    with np.errstate(divide="ignore", invalid="ignore"):
        variance = residual / np.maximum(count - 2, 1)
        sd = np.sqrt(variance * 0.5 * trace / det)  # sqrt of the mean of the two variances of S^-1 sigma^2
    sd = np.where(measured & np.isfinite(sd), sd, np.inf)
    v[~measured] = 0.0
    v = _without_affine(v, sd, nodes)
    linear = as_affine(affine)[:, :2]
    values = (v * scale) @ linear.T  # canvas displacement -> raw px: raw(A(p + v)) = raw(A p + A_lin v)
    return NodeShifts(values, sd * scale * float(np.sqrt(np.abs(np.linalg.det(linear)))))


def _node_windows(nodes: np.ndarray, half: float, shape: tuple[int, int]) -> np.ndarray:
    """(gh, gw, 4) window bounds ``y0, y1, x0, x1`` (integer, clipped) around each node."""
    h, w = shape
    x0 = np.clip(np.floor(nodes[..., 0] - half), 0, w).astype(np.int64)
    x1 = np.clip(np.ceil(nodes[..., 0] + half) + 1, 0, w).astype(np.int64)
    y0 = np.clip(np.floor(nodes[..., 1] - half), 0, h).astype(np.int64)
    y1 = np.clip(np.ceil(nodes[..., 1] + half) + 1, 0, h).astype(np.int64)
    return np.stack([y0, y1, x0, x1], axis=-1)


def _window_sums(image: np.ndarray, windows: np.ndarray) -> np.ndarray:
    """Sum of ``image`` over each window, from its integral image."""
    ii = cv2.integral(np.ascontiguousarray(image, np.float32), sdepth=cv2.CV_64F)
    y0, y1, x0, x1 = (windows[..., k] for k in range(4))
    return ii[y1, x1] - ii[y0, x1] - ii[y1, x0] + ii[y0, x0]


def _without_affine(v: np.ndarray, sd: np.ndarray, nodes: np.ndarray) -> np.ndarray:
    """``v`` less its weighted least-squares affine part (nodes weighted by 1 / sd^2)."""
    ok = np.isfinite(sd)
    if ok.sum() < 6:
        return np.zeros_like(v)
    weight = 1.0 / np.maximum(sd[ok], 1e-6) ** 2
    pts = nodes[ok]
    design = np.column_stack([pts[:, 0], pts[:, 1], np.ones(len(pts))])
    root = np.sqrt(weight)[:, None]
    coef, *_ = np.linalg.lstsq(design * root, v[ok] * root, rcond=None)
    out = v.copy()
    flat = np.column_stack([nodes[..., 0].ravel(), nodes[..., 1].ravel(), np.ones(nodes[..., 0].size)])
    out -= (flat @ coef).reshape(v.shape)
    out[~ok] = 0.0
    return out
