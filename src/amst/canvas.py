"""The output canvas: where translated slices land, and the offset that puts it at (0, 0)."""

from __future__ import annotations

import numpy as np


def canvas_for_translations(translations_xy: np.ndarray, slice_shape_yx: tuple[int, int],
                            mode: str = "union") -> tuple[tuple[int, int], np.ndarray]:
    """Canvas shape and origin for slices placed by translations.

    A slice with translation ``t`` (output pixel ``p`` samples raw ``p + t``) covers output
    pixels ``[-t, -t + (W, H))``.

    Parameters
    ----------
    translations_xy : (n, 2) array
    slice_shape_yx : (H, W)
    mode : {"union", "input"}
        ``union``: every pixel of every slice is on the canvas. ``input``: the input's
        shape, placed at the median slice position.

    Returns
    -------
    shape_yx : tuple of int
    origin_xy : (2,) array
        Add to an output pixel before applying the translations: ``p_raw = p + origin + t``.
    """
    t = np.asarray(translations_xy, dtype=np.float64)
    h, w = slice_shape_yx
    if mode == "input":
        return (h, w), np.round(np.median(t, axis=0))
    if mode != "union":
        raise ValueError(f"unknown canvas mode {mode!r}; use 'union' or 'input'")
    lo = np.floor((-t).min(axis=0))
    hi = np.ceil((-t).max(axis=0))
    shape = (int(h + hi[1] - lo[1]), int(w + hi[0] - lo[0]))
    return shape, lo
