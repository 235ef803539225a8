"""The affine convention of amst (a contract, see DESIGN.md).

An affine is a 2x3 float64 matrix ``M`` that maps an output (aligned) pixel
``(x, y)`` to the raw input pixel it samples::

    p_raw = M[:, :2] @ p_out + M[:, 2]

This is the "pull" map used by elastix and by ``cv2.warpAffine`` with
``WARP_INVERSE_MAP``. Points are ``(x, y)`` with ``x`` the column; pixel centres
sit at integer coordinates.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


def as_affine(matrix: Sequence[Sequence[float]] | np.ndarray) -> np.ndarray:
    """Return ``matrix`` as a validated 2x3 float64 affine.

    Parameters
    ----------
    matrix : array_like
        A 2x3 matrix, or a 3x3 homogeneous matrix whose last row is ``[0, 0, 1]``.

    Returns
    -------
    numpy.ndarray
        A new 2x3 float64 array.
    """
    m = np.asarray(matrix, dtype=np.float64)
    if m.shape == (3, 3):
        if not np.allclose(m[2], [0.0, 0.0, 1.0]):
            raise ValueError(f"not an affine matrix: last row is {m[2].tolist()}, expected [0, 0, 1]")
        m = m[:2]
    if m.shape != (2, 3):
        raise ValueError(f"an affine must be 2x3 (or 3x3 homogeneous), got shape {m.shape}")
    if not np.all(np.isfinite(m)):
        raise ValueError(f"affine has non-finite entries: {m.tolist()}")
    return m.copy()


def translation(tx: float, ty: float) -> np.ndarray:
    """Affine that samples the raw pixel ``(x + tx, y + ty)`` for output pixel ``(x, y)``."""
    return np.array([[1.0, 0.0, float(tx)], [0.0, 1.0, float(ty)]])


def to_homogeneous(m: np.ndarray) -> np.ndarray:
    """3x3 homogeneous form of a 2x3 affine."""
    h = np.eye(3)
    h[:2] = as_affine(m)
    return h


def compose(*maps: np.ndarray) -> np.ndarray:
    """Compose affines as functions: ``compose(A, B)(p) = A(B(p))``.

    Parameters
    ----------
    *maps : numpy.ndarray
        2x3 affines; the rightmost is applied first.

    Returns
    -------
    numpy.ndarray
        The 2x3 composite.

    Examples
    --------
    >>> compose(translation(1, 0), translation(0, 2))[:, 2].tolist()
    [1.0, 2.0]
    """
    h = np.eye(3)
    for m in maps:
        h = h @ to_homogeneous(m)
    return h[:2].copy()


def invert(m: np.ndarray) -> np.ndarray:
    """Inverse affine; raises ``ValueError`` for a singular matrix."""
    a = as_affine(m)
    det = np.linalg.det(a[:, :2])
    if abs(det) < 1e-12:
        raise ValueError(f"affine is singular (det={det:g}) and cannot be inverted")
    return np.linalg.inv(to_homogeneous(a))[:2].copy()


def apply_to_points(m: np.ndarray, points_xy: np.ndarray) -> np.ndarray:
    """Map ``(N, 2)`` points ``(x, y)`` through affine ``m``."""
    p = np.asarray(points_xy, dtype=np.float64)
    a = as_affine(m)
    return p @ a[:, :2].T + a[:, 2]


def at_level(m: np.ndarray, level: int) -> np.ndarray:
    """The map ``m`` (pixels -> pixels) between pyramid ``level`` images of both frames.

    Pyramid pixel ``i`` sits at full-resolution pixel ``2**level * i`` (``cv2.pyrDown``),
    so the linear part is unchanged and the translation shrinks. ``at_level(m, -level)``
    maps back to full resolution.
    """
    out = as_affine(m).copy()
    out[:, 2] /= 2.0 ** level
    return out


def about_point(linear: np.ndarray, point_xy: np.ndarray, shift_xy: np.ndarray | float = 0.0) -> np.ndarray:
    """The affine ``p -> linear (p - c) + c + shift``: the linear part acting about the point
    ``c`` (which it moves by ``shift`` only).

    Examples
    --------
    >>> about_point(np.diag([2.0, 1.0]), np.array([10.0, 0.0])).tolist()
    [[2.0, 0.0, -10.0], [0.0, 1.0, 0.0]]
    """
    c = np.asarray(point_xy, np.float64)
    out = np.zeros((2, 3))
    out[:, :2] = linear
    out[:, 2] = c - np.asarray(linear) @ c + shift_xy
    return out


def decompose(m: np.ndarray) -> dict[str, float]:
    """Describe the linear part of an affine as scales, shear, rotation and translation.

    Uses ``A = R(theta) @ [[sx, sx*shear], [0, sy]]`` (QR-like), which is unique for
    ``det(A) > 0``.

    Returns
    -------
    dict
        Keys ``scale_x``, ``scale_y``, ``shear``, ``rotation_deg``, ``tx``, ``ty``.
    """
    a = as_affine(m)
    lin = a[:, :2]
    sx = float(np.hypot(lin[0, 0], lin[1, 0]))
    theta = float(np.arctan2(lin[1, 0], lin[0, 0]))
    c, s = np.cos(theta), np.sin(theta)
    r_t = np.array([[c, s], [-s, c]])
    upper = r_t @ lin
    sy = float(upper[1, 1])
    shear = float(upper[0, 1] / sx) if sx else 0.0
    return {
        "scale_x": sx,
        "scale_y": sy,
        "shear": shear,
        "rotation_deg": float(np.degrees(theta)),
        "tx": float(a[0, 2]),
        "ty": float(a[1, 2]),
    }


def to_list(m: np.ndarray) -> list[list[float]]:
    """JSON-ready nested list of a 2x3 affine."""
    return [[float(v) for v in row] for row in as_affine(m)]
