"""Small checks and conversions on single slices shared by every stage."""

from __future__ import annotations

import numpy as np


def saturate(values: np.ndarray, dtype: np.dtype | str) -> np.ndarray:
    """``values`` rounded to the nearest integer and clipped to the range of the integer ``dtype``."""
    info = np.iinfo(dtype)
    return np.clip(np.rint(values), info.min, info.max).astype(dtype)


def finite_float32(image: np.ndarray) -> np.ndarray:
    """float32 copy with NaN/inf (float inputs) replaced by the median of the finite pixels."""
    img = np.asarray(image, dtype=np.float32)
    if img.dtype.kind == "f" and not np.isfinite(img).all():
        finite = img[np.isfinite(img)]
        img = np.where(np.isfinite(img), img, np.median(finite) if finite.size else 0.0).astype(np.float32)
    return img


def nonfinite_count(image: np.ndarray) -> int:
    """Number of NaN and infinite pixels in ``image``.

    Parameters
    ----------
    image : numpy.ndarray
        A slice (any shape, any dtype).

    Returns
    -------
    int
        0 for integer and boolean dtypes (they hold no NaN) without reading the pixels;
        for float and complex dtypes the count of non-finite pixels.

    Examples
    --------
    >>> nonfinite_count(np.array([[1.0, np.nan], [np.inf, 2.0]], dtype=np.float32))
    2
    >>> nonfinite_count(np.zeros((4, 4), np.uint16))
    0
    """
    img = np.asarray(image)
    if img.dtype.kind not in "fc":
        return 0
    # A sum is finite only when every term is (NaN and inf propagate, inf - inf is NaN):
    # one pass without a boolean temporary answers the common case of clean slices.
    with np.errstate(over="ignore", invalid="ignore"):
        if np.isfinite(np.add.reduce(img, axis=None)):
            return 0
    return int(img.size - np.count_nonzero(np.isfinite(img)))


def ncc(a: np.ndarray, b: np.ndarray, mask: np.ndarray, min_pixels: int = 16) -> float:
    """Normalised cross-correlation of ``a`` and ``b`` over ``mask`` (NaN if too few pixels or flat)."""
    if int(mask.sum()) < min_pixels:
        return float("nan")
    x = a[mask].astype(np.float64)
    y = b[mask].astype(np.float64)
    x -= x.mean()
    y -= y.mean()
    denom = float(np.sqrt((x * x).sum() * (y * y).sum()))
    return float((x * y).sum() / denom) if denom > 0 else float("nan")


def is_blank(image: np.ndarray) -> bool:
    """True for constant or nearly constant slices (beam blanked, saturated).

    Judged on every 4th pixel of every 4th row of large slices: a blank slice is flat
    everywhere, and this stays cheap when it is asked for every slice of every window.
    """
    img = np.asarray(image)
    if img.ndim == 2 and min(img.shape) >= 256:
        img = img[::4, ::4]
    img = img.astype(np.float32)
    finite = img[np.isfinite(img)]
    if finite.size == 0:
        return True
    return float(finite.std()) < 1e-3 * max(1.0, float(np.abs(finite).mean()))
