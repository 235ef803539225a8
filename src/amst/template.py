"""AMST step 2: the template, a median of the pre-aligned stack along z only.

Canvas pixels that a slice does not cover are NaN and are excluded from the median
(masked), never counted as zeros. At the stack ends the window is mirrored (slice 0 uses
slices r..1, 0, 1..r): the window stays centred on the slice, so the template shows that
slice's own morphology. A truncated window (0..r for slice 0) would be centred r/2 slices
away, and structures that move with depth would pull the end slices sideways; we measured
that bias on synthetic stacks. Stacks shorter than r + 1 slices fall back to truncation.
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


def window_indices(z: int, n: int, radius: int, leave_out: bool = False) -> list[int]:
    """Slices in the median window of ``z``: mirrored at the ends (see the module docstring).

    With ``leave_out`` the slice itself is left out of its own template, so that a
    distorted slice (auto-focus) does not pull the template towards its own distortion.
    """
    if n <= radius:
        out = list(range(max(0, z - radius), min(n, z + radius + 1)))
    else:
        out = []
        for i in range(z - radius, z + radius + 1):
            if i < 0:
                i = -i
            elif i > n - 1:
                i = 2 * (n - 1) - i
            out.append(i)
    if leave_out and len(out) > 1:
        out = [i for i in out if i != z]
    return out


def window_bounds(z: int, n: int, radius: int) -> tuple[int, int]:
    """Slices ``[start, stop)`` that the median window of slice ``z`` reads."""
    idx = window_indices(z, n, radius)
    return min(idx), max(idx) + 1


def sliding_templates(slices: Iterable[np.ndarray], start: int, n: int, radius: int,
                      first: int, last: int, leave_out: bool = False) -> Iterator[tuple[int, np.ndarray]]:
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
            images = {j: im for j, im in window}
            members = window_indices(z_next, n, radius, leave_out)
            yield z_next, masked_median(np.stack([images[j] for j in members]))
            z_next += 1
        if z_next >= last:
            return
