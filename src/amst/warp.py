"""Resampling: one slice through one affine onto the output canvas.

Cubic interpolation is scikit-image's (Keys' cubic convolution, a = -0.5), not OpenCV's
``INTER_CUBIC``: OpenCV uses a = -0.75, whose weights do not reproduce a linear ramp, so
it moves the content by up to 0.047 px depending on the fractional part of the position:
a misalignment written into every slice (``benchmarks/warp_position.py``). Linear and
nearest stay with OpenCV, which places them exactly and is faster.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

import cv2
import numpy as np

from .field import FieldGrid, dense_field, keys_weights
from .imageops import saturate
from .transform import as_affine

ORDERS = ("nearest", "linear", "cubic")
_OPENCV_FLAGS = {"nearest": cv2.INTER_NEAREST, "linear": cv2.INTER_LINEAR}


def warp_slice(image: np.ndarray, affine: np.ndarray, canvas_shape_yx: tuple[int, int],
               order: str = "cubic", fill: float = 0) -> np.ndarray:
    """Resample ``image`` so that output pixel ``p`` holds ``image(affine(p))``.

    Parameters
    ----------
    image : 2-D array (uint8, uint16 or float32; other dtypes are computed in float32)
    affine : (2, 3) array, output (x, y) -> raw (x, y)
    canvas_shape_yx : (H, W) of the output
    order : {"nearest", "linear", "cubic"}
    fill : value outside the raw slice

    Returns
    -------
    numpy.ndarray
        Same dtype as ``image`` (integer results are rounded and saturated).
    """
    if order not in ORDERS:
        raise ValueError(f"unknown interpolation order {order!r}; use one of {', '.join(ORDERS)}")
    m = as_affine(affine)
    h, w = canvas_shape_yx
    native = image.dtype in (np.uint8, np.uint16, np.float32)
    if order == "nearest" and (not native or image.dtype.itemsize > 2):
        # Labels: index map then take, so any integer dtype keeps its exact values.
        return _nearest_take(image, m, (h, w), fill)
    src = image if native else image.astype(np.float32)
    if order == "cubic":
        out = _warp_cubic(src, m, (h, w), fill)
    else:
        out = cv2.warpAffine(src, m, (w, h), flags=_OPENCV_FLAGS[order] | cv2.WARP_INVERSE_MAP,
                             borderMode=cv2.BORDER_CONSTANT, borderValue=float(fill))
    return _in_dtype(out, image.dtype)


@dataclass(frozen=True, eq=False)
class SliceMaps:
    """Every slice's output -> raw map: its affine and, for some slices, a displacement field.

    Attributes
    ----------
    affines : (n, 2, 3) array
    fields : mapping of slice index to (gh, gw, 2) array
        Displacements in raw px at the nodes of ``grid`` (:mod:`amst.field`); slices not in
        it have none.
    grid : FieldGrid, optional
        Required when ``fields`` is not empty.
    """

    affines: np.ndarray
    fields: Mapping[int, np.ndarray] = field(default_factory=dict)
    grid: FieldGrid | None = None

    def __post_init__(self) -> None:
        if self.fields and self.grid is None:
            raise ValueError("slice maps with displacement fields need the fields' grid")

    def warp(self, z: int, image: np.ndarray, canvas_shape_yx: tuple[int, int], order: str = "cubic",
             fill: float = 0) -> np.ndarray:
        """Slice ``z``'s raw ``image`` resampled once through its map (:func:`warp_slice` or
        :func:`warp_slice_with_field`)."""
        values = self.fields.get(int(z))
        if values is None:
            return warp_slice(image, self.affines[z], canvas_shape_yx, order, fill)
        return warp_slice_with_field(image, self.affines[z], values, self.grid, canvas_shape_yx, order, fill)


def warp_slice_with_field(image: np.ndarray, affine: np.ndarray, field: np.ndarray, grid: FieldGrid,
                          canvas_shape_yx: tuple[int, int], order: str = "cubic", fill: float = 0) -> np.ndarray:
    """Resample ``image`` once through its affine and displacement field (:mod:`amst.field`).

    Output pixel ``p`` holds ``image(affine(p) + field(p))``, interpolated as
    :func:`warp_slice` does: Keys' cubic for ``cubic`` (the kernel scikit-image uses for the
    affine-only slices, so slices with and without a field are interpolated alike), OpenCV
    for ``linear``, and an index map for ``nearest`` (labels keep their exact values).

    Parameters
    ----------
    image : 2-D array
    affine : (2, 3) array, output (x, y) -> raw (x, y)
    field : (gh, gw, 2) array, displacement in raw px at the nodes of ``grid``
    grid : FieldGrid
    canvas_shape_yx : (H, W) of the output
    order : {"nearest", "linear", "cubic"}
    fill : value outside the raw slice

    Returns
    -------
    numpy.ndarray
        Same dtype as ``image``.
    """
    if order not in ORDERS:
        raise ValueError(f"unknown interpolation order {order!r}; use one of {', '.join(ORDERS)}")
    m = as_affine(affine)
    h, w = canvas_shape_yx
    u = dense_field(field, grid, (h, w))
    sx, sy = _affine_coords(m, (h, w))
    sx, sy = sx + u[..., 0], sy + u[..., 1]
    if order == "nearest":
        return _take(image, np.rint(sx).astype(np.int64), np.rint(sy).astype(np.int64), fill)
    native = image.dtype in (np.uint8, np.uint16, np.float32)
    src = image if native else image.astype(np.float32)
    if order == "linear":
        out = cv2.remap(src, sx.astype(np.float32), sy.astype(np.float32), cv2.INTER_LINEAR,
                        borderMode=cv2.BORDER_CONSTANT, borderValue=float(fill))
    else:
        out = keys_cubic_at(src.astype(np.float32, copy=False), sx, sy, fill)
    return _in_dtype(out, image.dtype)


def _in_dtype(out: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """An interpolated slice in the input's dtype (integers rounded and saturated)."""
    if out.dtype == dtype:
        return out  # OpenCV rounds and saturates uint8 and uint16 itself
    return saturate(out, dtype) if np.issubdtype(dtype, np.integer) else out.astype(dtype)


def keys_cubic_at(image: np.ndarray, x: np.ndarray, y: np.ndarray, fill: float = 0) -> np.ndarray:
    """Keys' cubic convolution (a = -0.5) of ``image`` at arbitrary positions, float32.

    scikit-image applies this kernel only through a matrix (its ``warp`` sends a coordinate
    map to SciPy's B-spline instead), so it is written here for the slices with a field: 16
    gathers, with neighbours outside the image taking ``fill`` as scikit-image's
    ``mode="constant"`` does.

    Parameters
    ----------
    image : 2-D float32 array
    x, y : arrays of the same shape
        Positions (column, row) to sample.
    fill : float

    Returns
    -------
    numpy.ndarray
        float32 array of the shape of ``x``.
    """
    h, w = image.shape
    pad = 3
    padded = np.pad(image.astype(np.float32, copy=False), pad, constant_values=np.float32(fill)).ravel()
    stride = w + 2 * pad
    out = np.empty(x.size, np.float32)
    fx, fy = np.asarray(x, np.float64).ravel(), np.asarray(y, np.float64).ravel()
    chunk = 1 << 20  # bounded temporaries: about a million positions at a time
    for c0 in range(0, fx.size, chunk):
        bx, by = fx[c0:c0 + chunk], fy[c0:c0 + chunk]
        far = (bx < -2.0) | (bx > w + 1.0) | (by < -2.0) | (by > h + 1.0) | ~np.isfinite(bx) | ~np.isfinite(by)
        # Inside the padding, which holds ``fill``, every tap stays in the padded array.
        bx = np.clip(np.nan_to_num(bx), -2.0, w + 0.999)
        by = np.clip(np.nan_to_num(by), -2.0, h + 0.999)
        x0, y0 = np.floor(bx), np.floor(by)
        wx, wy = keys_weights(bx - x0).astype(np.float32), keys_weights(by - y0).astype(np.float32)
        base = (y0.astype(np.int64) + pad - 1) * stride + (x0.astype(np.int64) + pad - 1)
        acc = np.zeros(bx.shape, np.float32)
        for a in range(4):
            line = np.zeros(bx.shape, np.float32)
            for b in range(4):
                line += wx[:, b] * padded[base + a * stride + b]
            acc += wy[:, a] * line
        acc[far] = fill
        out[c0:c0 + chunk] = acc
    return out.reshape(np.shape(x))


def placed_float(image: np.ndarray, affine: np.ndarray, canvas_shape_yx: tuple[int, int]) -> np.ndarray:
    """A raw slice placed on the canvas by ``affine`` (linear), as float32, NaN where it has no data.

    How the pipeline places slices for a template (``amst.pipeline``'s pre-aligned members).

    Parameters
    ----------
    image : 2-D array
        The raw slice (float32 is used as it is; other dtypes are converted).
    affine : (2, 3) array
        Output (x, y) -> raw (x, y).
    canvas_shape_yx : (int, int)
        (H, W) of the output.

    Returns
    -------
    numpy.ndarray
        float32 of shape ``canvas_shape_yx``.
    """
    return warp_slice(image.astype(np.float32, copy=False), affine, canvas_shape_yx, "linear", fill=np.nan)


def _warp_cubic(image: np.ndarray, m: np.ndarray, shape: tuple[int, int], fill: float) -> np.ndarray:
    """Keys cubic convolution (float32); scikit-image releases the GIL, so slices warp in parallel threads."""
    from skimage.transform import warp

    matrix = np.vstack([m, [0.0, 0.0, 1.0]])
    return warp(image.astype(np.float32, copy=False), matrix, output_shape=shape, order=3, mode="constant",
                cval=float(fill), clip=False, preserve_range=True)


def _affine_coords(m: np.ndarray, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Raw (x, y) sampled by every output pixel of ``shape`` through affine ``m`` (float64)."""
    gy, gx = np.mgrid[0:shape[0], 0:shape[1]].astype(np.float64)
    return m[0, 0] * gx + m[0, 1] * gy + m[0, 2], m[1, 0] * gx + m[1, 1] * gy + m[1, 2]


def _nearest_take(image: np.ndarray, m: np.ndarray, shape: tuple[int, int], fill: float) -> np.ndarray:
    sx, sy = _affine_coords(m, shape)
    return _take(image, np.rint(sx).astype(np.int64), np.rint(sy).astype(np.int64), fill)


def _take(image: np.ndarray, sx: np.ndarray, sy: np.ndarray, fill: float) -> np.ndarray:
    """``image[sy, sx]`` where inside, ``fill`` elsewhere, in ``image``'s dtype."""
    inside = (sx >= 0) & (sx < image.shape[1]) & (sy >= 0) & (sy < image.shape[0])
    out = np.full(sx.shape, fill, dtype=image.dtype)
    out[inside] = image[sy[inside], sx[inside]]
    return out
