"""Resampling: one slice through one affine onto the output canvas.

Cubic interpolation is scikit-image's (Keys' cubic convolution, a = -0.5), not OpenCV's
``INTER_CUBIC``: OpenCV uses a = -0.75, whose weights do not reproduce a linear ramp, so
it moves the content by up to 0.047 px depending on the fractional part of the position:
a misalignment written into every slice (``benchmarks/warp_position.py``). Linear and
nearest stay with OpenCV, which places them exactly and is faster.
"""

from __future__ import annotations

import cv2
import numpy as np

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
    if out.dtype == image.dtype:
        return out  # OpenCV rounds and saturates uint8 and uint16 itself
    return saturate(out, image.dtype) if np.issubdtype(image.dtype, np.integer) else out.astype(image.dtype)


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


def _nearest_take(image: np.ndarray, m: np.ndarray, shape: tuple[int, int], fill: float) -> np.ndarray:
    h, w = shape
    gy, gx = np.mgrid[0:h, 0:w]
    sx = np.rint(m[0, 0] * gx + m[0, 1] * gy + m[0, 2]).astype(np.int64)
    sy = np.rint(m[1, 0] * gx + m[1, 1] * gy + m[1, 2]).astype(np.int64)
    inside = (sx >= 0) & (sx < image.shape[1]) & (sy >= 0) & (sy < image.shape[0])
    out = np.full(shape, fill, dtype=image.dtype)
    out[inside] = image[sy[inside], sx[inside]]
    return out
