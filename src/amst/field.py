"""A smooth displacement field on a coarse grid of output pixels (the elastic part of a slice's map).

A slice with a field maps an output pixel ``p = (x, y)`` to the raw pixel

    ``raw = A @ (x, y, 1) + u(p)``

where ``A`` is its affine (DESIGN.md's convention) and ``u`` is a displacement in raw
pixels, given at the nodes of a regular grid on the output canvas — node ``(i, j)`` sits at
output pixel ``(x, y) = (j * spacing, i * spacing)`` — and interpolated between them with
Keys' cubic convolution (a = -0.5), separably in x and y. Node indices beyond the grid are
clamped to its edge. The interpolation is the one scikit-image uses for images, so it
passes through the node values, reproduces a linear ramp, and is C1 smooth.

Why not a B-spline: B-spline coefficients are not displacements one can read, and they
need a prefilter to pass through the nodes; the values stored here are the displacements
at the nodes themselves.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

#: ``transforms.json`` names the interpolation with this string (a contract).
INTERPOLATION = "keys-cubic-clamped"


@dataclass(frozen=True)
class FieldGrid:
    """Where the nodes of a displacement field lie on the output canvas.

    Attributes
    ----------
    spacing_px : float
        Distance between nodes, in output pixels.
    shape_yx : (int, int)
        Nodes along y and x.
    """

    spacing_px: float
    shape_yx: tuple[int, int]

    def __post_init__(self) -> None:
        if not (self.spacing_px > 0 and math.isfinite(self.spacing_px)):
            raise ValueError(f"field grid spacing {self.spacing_px} must be a positive number of pixels")
        if len(self.shape_yx) != 2 or min(self.shape_yx) < 2:
            raise ValueError(f"field grid shape {self.shape_yx} must have at least 2 x 2 nodes")

    @classmethod
    def covering(cls, canvas_shape_yx: tuple[int, int], spacing_px: float) -> FieldGrid:
        """The grid of ``spacing_px`` whose nodes reach (or pass) every edge of the canvas.

        Parameters
        ----------
        canvas_shape_yx : (int, int)
            (H, W) of the output canvas.
        spacing_px : float
            Node spacing in output pixels.

        Returns
        -------
        FieldGrid
        """
        h, w = (int(v) for v in canvas_shape_yx)
        return cls(float(spacing_px), (max(2, math.ceil((h - 1) / spacing_px) + 1),
                                       max(2, math.ceil((w - 1) / spacing_px) + 1)))

    def nodes_xy(self) -> np.ndarray:
        """(gh, gw, 2) output positions (x, y) of the nodes."""
        gh, gw = self.shape_yx
        ys, xs = np.mgrid[0:gh, 0:gw].astype(np.float64) * self.spacing_px
        return np.stack([xs, ys], axis=-1)

    def to_json(self) -> dict:
        return {"spacing_px": float(self.spacing_px), "shape_yx": [int(v) for v in self.shape_yx]}

    @classmethod
    def from_json(cls, doc: dict) -> FieldGrid:
        return cls(float(doc["spacing_px"]), tuple(int(v) for v in doc["shape_yx"]))


def keys_weights(t: np.ndarray) -> np.ndarray:
    """Keys' cubic convolution weights (a = -0.5) of the 4 nodes around fractional offset ``t``.

    Parameters
    ----------
    t : array of float in [0, 1)
        Offset from the node at or before the position.

    Returns
    -------
    numpy.ndarray
        Shape ``t.shape + (4,)``: weights of nodes -1, 0, +1, +2 (they sum to 1).
    """
    t = np.asarray(t, np.float64)
    t2, t3 = t * t, t * t * t
    return np.stack([-0.5 * t3 + t2 - 0.5 * t, 1.5 * t3 - 2.5 * t2 + 1.0,
                     -1.5 * t3 + 2.0 * t2 + 0.5 * t, 0.5 * t3 - 0.5 * t2], axis=-1)


def _axis_taps(coords: np.ndarray, spacing: float, n_nodes: int) -> tuple[np.ndarray, np.ndarray]:
    """Node indices (clamped) and weights of the 4 taps at each coordinate along one axis."""
    u = np.asarray(coords, np.float64) / spacing
    base = np.floor(u)
    weights = keys_weights(u - base)
    index = np.clip(base.astype(np.int64)[..., None] + np.arange(-1, 3), 0, n_nodes - 1)
    return index, weights


def axis_matrix(n_pixels: int, spacing: float, n_nodes: int) -> np.ndarray:
    """(n_pixels, n_nodes) interpolation matrix of pixels ``0 .. n_pixels - 1`` along one axis."""
    index, weights = _axis_taps(np.arange(n_pixels), spacing, n_nodes)
    out = np.zeros((n_pixels, n_nodes))
    np.add.at(out, (np.arange(n_pixels)[:, None], index), weights)
    return out


def dense_field(values: np.ndarray, grid: FieldGrid, canvas_shape_yx: tuple[int, int]) -> np.ndarray:
    """The field at every output pixel.

    Parameters
    ----------
    values : (gh, gw, 2) array
        Displacement (dx, dy) in raw pixels at the nodes.
    grid : FieldGrid
    canvas_shape_yx : (int, int)

    Returns
    -------
    numpy.ndarray
        (H, W, 2) float64 displacements.
    """
    values = _checked(values, grid)
    h, w = (int(v) for v in canvas_shape_yx)
    wy = axis_matrix(h, grid.spacing_px, grid.shape_yx[0])
    wx = axis_matrix(w, grid.spacing_px, grid.shape_yx[1])
    return np.stack([wy @ values[..., k] @ wx.T for k in range(2)], axis=-1)


def field_at(values: np.ndarray, grid: FieldGrid, points_xy: np.ndarray) -> np.ndarray:
    """The field at output points (x, y), vectorised.

    Parameters
    ----------
    values : (gh, gw, 2) array
    grid : FieldGrid
    points_xy : (N, 2) array

    Returns
    -------
    numpy.ndarray
        (N, 2) displacements (dx, dy) in raw pixels.
    """
    values = _checked(values, grid)
    pts = np.asarray(points_xy, np.float64).reshape(-1, 2)
    ix, wx = _axis_taps(pts[:, 0], grid.spacing_px, grid.shape_yx[1])
    iy, wy = _axis_taps(pts[:, 1], grid.spacing_px, grid.shape_yx[0])
    out = np.zeros((len(pts), 2))
    for a in range(4):
        for b in range(4):
            out += (wy[:, a] * wx[:, b])[:, None] * values[iy[:, a], ix[:, b]]
    return out


def field_rms_max(values: np.ndarray, grid: FieldGrid, canvas_shape_yx: tuple[int, int],
                  step: int = 8) -> tuple[float, float]:
    """RMS and largest magnitude (raw px) of the field over the canvas, sampled every ``step`` px."""
    h, w = (int(v) for v in canvas_shape_yx)
    ys, xs = np.mgrid[0:h:step, 0:w:step]
    d = field_at(values, grid, np.stack([xs.ravel(), ys.ravel()], axis=1))
    r = np.linalg.norm(d, axis=1)
    return float(np.sqrt(np.mean(r ** 2))), float(r.max())


def _checked(values: np.ndarray, grid: FieldGrid) -> np.ndarray:
    values = np.asarray(values, np.float64)
    if values.shape != (*grid.shape_yx, 2):
        raise ValueError(f"field of shape {values.shape} does not fit its grid of {grid.shape_yx[0]} x "
                         f"{grid.shape_yx[1]} nodes (expected {(*grid.shape_yx, 2)})")
    if not np.all(np.isfinite(values)):
        raise ValueError("field holds NaN/inf displacements")
    return values
