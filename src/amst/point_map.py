"""Points between a run's output (aligned) space and the raw slices, fields included.

The one public way to carry annotations, detections or ground truth between raw and
aligned pixels: a slice's map is its affine plus, where the run stored one, its smooth
displacement field (:mod:`amst.field`, ``transforms.json`` version 2).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .field import field_at
from .transform import apply_to_points, invert
from .transforms_io import Transforms, load_transforms

#: The inverse is solved to this precision (raw px), within this many fixed-point steps.
_INVERSE_TOL_PX = 1e-6
_INVERSE_STEPS = 50


def _slice(transforms: Transforms | str | Path, z: int):
    tf = transforms if isinstance(transforms, Transforms) else load_transforms(transforms)
    if not 0 <= int(z) < len(tf.slices):
        raise IndexError(f"slice {z} is outside the transforms' {len(tf.slices)} slices (0..{len(tf.slices) - 1})")
    return tf, tf.slices[int(z)]


def map_points(transforms: Transforms | str | Path, z: int, points_xy: np.ndarray) -> np.ndarray:
    """Output (aligned) pixels -> the raw pixels of slice ``z`` they sample.

    Parameters
    ----------
    transforms : Transforms or path to ``transforms.json``
    z : int
        Slice index.
    points_xy : (N, 2) array
        Output positions (x = column, y = row; pixel centres at integers).

    Returns
    -------
    numpy.ndarray
        (N, 2) raw positions: ``affine @ (x, y, 1) + field(x, y)``.

    Examples
    --------
    >>> raw_xy = amst.map_points("run1/transforms.json", 12, [[100.0, 200.0]])  # doctest: +SKIP
    """
    tf, s = _slice(transforms, z)
    pts = np.asarray(points_xy, np.float64).reshape(-1, 2)
    out = apply_to_points(s.affine, pts)
    if s.field is not None:
        out = out + field_at(s.field, tf.field_grid, pts)
    return out


def map_points_inverse(transforms: Transforms | str | Path, z: int, raw_points_xy: np.ndarray) -> np.ndarray:
    """Raw pixels of slice ``z`` -> the output (aligned) pixels that sample them.

    The inverse of :func:`map_points`. With a field it is solved by fixed-point iteration
    ``p = A^-1 (q - field(p))``, which converges because a field is smooth and small (its
    gradient far below 1); the result maps back to ``raw_points_xy`` within 1e-6 px.

    Parameters
    ----------
    transforms : Transforms or path to ``transforms.json``
    z : int
    raw_points_xy : (N, 2) array

    Returns
    -------
    numpy.ndarray
        (N, 2) output positions.

    Raises
    ------
    ValueError
        When the iteration does not converge (a field too strong to invert).
    """
    tf, s = _slice(transforms, z)
    q = np.asarray(raw_points_xy, np.float64).reshape(-1, 2)
    inverse = invert(s.affine)
    p = apply_to_points(inverse, q)
    if s.field is None:
        return p
    for _ in range(_INVERSE_STEPS):
        step = apply_to_points(inverse, q - field_at(s.field, tf.field_grid, p)) - p
        p = p + step
        if np.abs(step).max(initial=0.0) < _INVERSE_TOL_PX:
            return p
    raise ValueError(f"slice {z}: the field could not be inverted (no convergence in {_INVERSE_STEPS} steps); "
                     "it folds the slice")
