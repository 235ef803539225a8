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


def _batcher_pairs(n: int) -> list[tuple[int, int]]:
    """Comparators of Batcher's odd-even merge sort for ``n`` inputs (padded to a power of 2)."""
    size = 1
    while size < n:
        size *= 2
    pairs = []
    p = 1
    while p < size:
        k = p
        while k >= 1:
            for j in range(k % p, size - k, 2 * k):
                for i in range(min(k, size - j - k)):
                    if (i + j) // (2 * p) == (i + j + k) // (2 * p):
                        pairs.append((i + j, i + j + k))
            k //= 2
        p *= 2
    # Inputs >= n are +inf padding: a comparator whose larger side is padding never moves
    # anything, so it is dropped.
    return [(a, b) for a, b in pairs if b < n]


def masked_median(window: np.ndarray) -> np.ndarray:
    """Median along axis 0 ignoring NaN, equal to ``np.nanmedian(window, axis=0)``.

    Pixels with no valid value are NaN. The values are sorted per pixel by a sorting
    network (Batcher's odd-even merge sort: a fixed sequence of element-wise min/max over
    whole slices, vectorised, no per-pixel work), with NaN replaced by +inf so that it sorts
    last; the median of the ``k`` valid values is then read at ranks ``(k - 1) // 2`` and
    ``k // 2``. For a 15-slice window of 2048^2 this is several times faster than
    ``np.median`` (which partitions along a strided axis), and exact: min/max do not round.
    """
    stack = np.asarray(window, dtype=np.float32)
    m = stack.shape[0]
    nan = np.isnan(stack)
    has_nan = bool(nan.any())
    vals = [np.where(nan[i], np.float32(np.inf), stack[i]) if has_nan else stack[i].copy() for i in range(m)]
    for a, b in _batcher_pairs(m):
        lo = np.minimum(vals[a], vals[b])
        np.maximum(vals[a], vals[b], out=vals[b])
        vals[a] = lo
    med = (vals[(m - 1) // 2] + vals[m // 2]) * np.float32(0.5)
    if not has_nan:
        return med
    # Pixels with uncovered members (usually thin canvas borders) read other ranks.
    partial = nan.any(axis=0)
    k = m - nan[:, partial].sum(axis=0)
    ordered = np.stack([v[partial] for v in vals])
    lo_v = np.take_along_axis(ordered, np.maximum((k - 1) // 2, 0)[None], axis=0)[0]
    hi_v = np.take_along_axis(ordered, np.maximum(k // 2, 0)[None], axis=0)[0]
    sub = (lo_v + hi_v) * np.float32(0.5)
    sub[k == 0] = np.nan
    med[partial] = sub
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
