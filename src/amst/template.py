"""AMST step 2: the template, a median of the pre-aligned stack along z only.

Canvas pixels that a slice does not cover are NaN and are excluded from the median
(masked), never counted as zeros. At the stack ends the window is truncated to the
slices that exist (slice 0 uses slices 0..r): no mirrored or repeated slices, so the end
slices do not get extra weight.
"""

from __future__ import annotations

from collections import deque
from typing import Iterable, Iterator

import numpy as np


def masked_median(window: np.ndarray) -> np.ndarray:
    """Median along axis 0 ignoring NaN, equal to ``np.nanmedian(window, axis=0)``.

    Pixels with no valid value are NaN. Sorting puts NaN last, so the median of the ``k``
    valid values per pixel is read at ranks ``(k - 1) // 2`` and ``k // 2``; this avoids
    ``nanmedian``'s slow masked path while giving identical results.
    """
    stack = np.asarray(window, dtype=np.float32)
    if not np.isnan(stack).any():
        return np.median(stack, axis=0).astype(np.float32)
    ordered = np.sort(stack, axis=0)
    k = np.sum(~np.isnan(stack), axis=0)
    lo = np.take_along_axis(ordered, np.maximum((k - 1) // 2, 0)[None], axis=0)[0]
    hi = np.take_along_axis(ordered, np.maximum(k // 2, 0)[None], axis=0)[0]
    med = (lo + hi) * np.float32(0.5)
    med[k == 0] = np.nan
    return med


def window_bounds(z: int, n: int, radius: int) -> tuple[int, int]:
    """Slices ``[start, stop)`` of the (truncated) median window of slice ``z``."""
    return max(0, z - radius), min(n, z + radius + 1)


def sliding_templates(slices: Iterable[np.ndarray], start: int, n: int, radius: int,
                      first: int, last: int) -> Iterator[tuple[int, np.ndarray]]:
    """Templates for slices ``first..last-1`` from pre-aligned slices streamed in z order.

    Parameters
    ----------
    slices : iterable of float32 arrays (NaN = uncovered)
        Pre-aligned slices ``start, start + 1, ...`` covering
        ``window_bounds(first)[0] .. window_bounds(last - 1)[1]``.
    start : index of the first streamed slice
    n : stack depth; radius : median radius
    first, last : range of templates to produce

    Yields
    ------
    (z, template)
        Only ``2 * radius + 1`` slices are held at any time.
    """
    window: deque[tuple[int, np.ndarray]] = deque()
    z_next = first
    for idx, img in enumerate(slices, start=start):
        window.append((idx, img))
        while z_next < last:
            lo, hi = window_bounds(z_next, n, radius)
            if window[-1][0] < hi - 1:
                break
            while window and window[0][0] < lo:
                window.popleft()
            yield z_next, masked_median(np.stack([im for j, im in window if lo <= j < hi]))
            z_next += 1
        if z_next >= last:
            return
