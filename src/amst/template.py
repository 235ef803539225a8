"""AMST step 2: the template, a median of the pre-aligned stack along z only.

Canvas pixels that a slice does not cover are NaN and are excluded from the median
(masked), never counted as zeros. Near the stack ends the window must stay centred on the
slice in depth, or structures that move with depth pull the end slices sideways (we
measured that bias on synthetic stacks). A truncated window (0..r for slice 0) is centred
r/2 slices away. Three rules are offered (``ends``):

* ``"mirror"``: slice 0 uses slices r..1, 0, 1..r. Its slices all lie on one side, centred
  about r/2 away: on 80 x 512^2 phantom stacks the event-free end slices came out 0.18 px
  off (median; 0.11 px with ``"shrink"``), slices 1-2 up to 0.5 px.
* ``"shrink"``: the window narrows symmetrically (slice 2 uses 0..4, slice 0 only itself,
  so the end slices keep their pre-alignment). Centred, but an auto-focus event in the
  first or last few slices is never corrected: its template is made of itself and the
  other distorted slices (10x the error of other events, ``benchmarks/stack_ends.py``).
* ``"extend"`` (default): the first pass mirrors, so that events at the ends are measured
  and left out of the next pass's templates like any other. From the second pass on the
  window shrinks symmetrically; in the window of a slice that is left out itself, each slice
  that holds no data (left out: distorted, blank, failed; or the slice itself at the very
  end) is replaced by the nearest slice beyond the window, on the inner side, that holds
  data (within the full radius). A slice that is not left out keeps its shrunk window
  centred (a member without data takes its mirror partner out too; an empty window is the
  slice itself): filling it from further in put the clean slices 3-7 of a 36 x 256^2 stack
  (seed 7, whose pass-1 mirror left out its clean slices 0-2) 0.9-2.5 px off (0.05-0.10 px
  now; slices 0-2 stay 1.5-2 px off, the cost of a false pass-1 detection at an end). On
  80 x 512^2 stacks (seeds 0-2, phantom and texture) an event on the first or last slice
  comes to 1.3-3.4x the error of the interior events (shrink 11-14x), two or three slices
  3.9-8.4x (``benchmarks/stack_ends.py``, before the one-sided refinement below). Measured and worse: a
  left-out end slice templated by all clean slices of the one-sided full window (phantom,
  one slice: 5.1-5.9x, bias from motion with depth), or by that window's near half
  extrapolated linearly from its far half (2.2-7.1x); ``"shrink"`` in pass 1 (an event on
  slice 0 is then never found: 9.2-14x); leaving out, at the ends, also the inner neighbour
  of a left-out slice when its pass-1 distortion exceeds half the limit (takes clean slices
  out, whose pass-1 mirror shows 0.6-0.9 px: two slices 5.0x / 16x on phantom / texture
  seed 0, against 2.7x / 7.5x).

The joint refinement (``amst.pipeline.refine.refine_corrections``) solves the slices at an end
with two undistorted anchors on their inner side, which give the content's change with depth,
so ``"extend"`` is the default. ``python benchmarks/stack_ends.py --content phantom texture
--seeds 0 1 2 --at-ends 0 1 2 3 --ends extend --flags``, 80 x 512^2, events on the first and
the last k slices, end error / median error of the other auto-focus events, mean over seeds
0-2, first / last: phantom k = 1: 1.38 / 1.24, k = 2: 2.29 / 3.36, k = 3: 6.73 / 5.00; texture
1.79 / 1.13, 3.09 / 4.14, 7.67 / 5.21. The other events are now corrected to 0.03-0.07 px, so
the ratios are of small errors: the end slices themselves come to 0.04-0.14 px at k = 1 and
0.08-0.44 px at k = 3. Event-free slices near an end: 0.041-0.045 px median (inner
0.041-0.044). Four anchors on the one side (content farther away, changing differently) put
single end events further off (phantom k = 1: 2.05 / 1.41).
What still fails: two or three distorted slices at an end, extrapolated from the anchors
through the content's change with depth, which is not linear over that many slices.

Stacks shorter than r + 1 slices fall back to truncation.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from functools import lru_cache
from typing import Callable, Iterable, Iterator, Sequence

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


_TILE_PIXELS = 65536


@lru_cache(maxsize=None)
def _median_network(n: int) -> tuple[tuple[int, int], ...]:
    """The comparators of the sort network that the two middle ranks depend on."""
    needed = {(n - 1) // 2, n // 2}
    kept = []
    for a, b in reversed(_batcher_pairs(n)):
        if a in needed or b in needed:
            kept.append((a, b))
            needed |= {a, b}
    return tuple(reversed(kept))


@dataclass(frozen=True)
class _Member:
    """One window slice: values with +inf where uncovered, and the flat indices of those."""

    values: np.ndarray
    uncovered: np.ndarray

    @classmethod
    def from_nan(cls, image: np.ndarray) -> "_Member | None":
        values = np.array(image, dtype=np.float32)  # a copy: the caller's array is left alone
        uncovered = np.flatnonzero(np.isnan(values))
        if uncovered.size == values.size:
            return None  # covers nothing: adds nothing to any median
        values.ravel()[uncovered] = np.inf
        return cls(values, uncovered)


def _median(members: list[_Member], shape: tuple[int, int]) -> np.ndarray:
    m = len(members)
    if m == 0:
        return np.full(shape, np.nan, np.float32)
    # Pixels some member does not cover (usually thin canvas borders) take the median of
    # their valid values, computed apart from the network on just those pixels.
    flags = np.zeros(shape[0] * shape[1], bool)
    for s in members:
        flags[s.uncovered] = True
    partial = np.flatnonzero(flags)
    sub = np.stack([s.values.ravel()[partial] for s in members]) if partial.size else None
    network = _median_network(m)
    med = np.empty(shape, np.float32)
    # Row tiles of about 64k pixels keep the whole window in cache while the network runs
    # (2-2.5x faster than whole slices at 1024^2-2048^2, which are memory-bound).
    rows = max(1, _TILE_PIXELS // shape[1])
    for r0 in range(0, shape[0], rows):
        vals = [s.values[r0:r0 + rows].copy() for s in members]
        spare = np.empty_like(vals[0])
        for a, b in network:
            np.minimum(vals[a], vals[b], out=spare)
            np.maximum(vals[a], vals[b], out=vals[b])
            vals[a], spare = spare, vals[a]
        out = med[r0:r0 + rows]
        np.add(vals[(m - 1) // 2], vals[m // 2], out=out)
        out *= np.float32(0.5)
    if sub is not None:
        sub.sort(axis=0)  # +inf (uncovered) sorts last
        k = np.isfinite(sub).sum(axis=0)
        lo_v = np.take_along_axis(sub, np.maximum((k - 1) // 2, 0)[None], axis=0)[0]
        hi_v = np.take_along_axis(sub, np.maximum(k // 2, 0)[None], axis=0)[0]
        values = (lo_v + hi_v) * np.float32(0.5)
        values[k == 0] = np.nan
        med.ravel()[partial] = values
    return med


def masked_median(window: np.ndarray | Sequence[np.ndarray]) -> np.ndarray:
    """Median along axis 0 ignoring NaN, equal to ``np.nanmedian(window, axis=0)``.

    The values are sorted per pixel by a sorting network (Batcher's odd-even merge sort,
    pruned to the comparators the two middle ranks depend on: a fixed sequence of
    element-wise min/max over whole slices, vectorised, no per-pixel work). Pixels that
    some slice does not cover (NaN) are few (canvas borders) and take the median of their
    valid values separately. For a 15-slice window of 2048^2 this is several times faster
    than ``np.median`` (which partitions along a strided axis), and exact: min/max do not
    round.
    """
    images = [np.asarray(w, dtype=np.float32) for w in window]
    members = [s for s in map(_Member.from_nan, images) if s is not None]
    return _median(members, images[0].shape)


ENDS = ("mirror", "shrink", "extend")


def window_members(z: int, n: int, radius: int, leave_out: bool = False,
                   ends: str = "mirror") -> list[tuple[int, int]]:
    """``(offset, slice)`` pairs of the median window of ``z`` (see the module docstring).

    ``ends="mirror"`` mirrors the window at the stack ends; ``"shrink"`` (and ``"extend"``,
    before :func:`sliding_templates` replaces its slices that hold no data) narrows it
    symmetrically instead (radius ``min(radius, z, n - 1 - z)``), so that its slices stay
    centred on ``z`` in depth. With ``leave_out`` the slice itself is left out of its own
    template, so that a distorted slice (auto-focus) does not pull it.
    """
    if ends not in ENDS:
        raise ValueError(f"template.ends: {ends!r} is not one of {', '.join(ENDS)}")
    if n <= radius:
        pairs = [(i - z, i) for i in range(max(0, z - radius), min(n, z + radius + 1))]
    else:
        r = min(radius, z, n - 1 - z) if ends in ("shrink", "extend") else radius
        pairs = []
        for o in range(-r, r + 1):
            i = z + o
            if i < 0:
                i = -i
            elif i > n - 1:
                i = 2 * (n - 1) - i
            pairs.append((o, i))
    if leave_out and len(pairs) > 1:
        pairs = [(o, i) for o, i in pairs if o != 0]
    return pairs


def ends_in_pass(ends: str, pass_index: int) -> str:
    """The end rule a registration pass uses: ``"extend"`` mirrors in the first pass.

    Parameters
    ----------
    ends : str
        ``template.ends``.
    pass_index : int
        1 for the first pass.

    Returns
    -------
    str
        ``"mirror"`` for ``"extend"`` in the first pass (its templates know no distorted
        slices yet, and a shrunk window at the very end is the slice itself, which would
        hide an event there from the distortion test); ``ends`` otherwise.
    """
    return "mirror" if ends == "extend" and pass_index <= 1 else ends


def extended_members(pairs: list[tuple[int, int]], z: int, n: int, radius: int,
                     has_data: Callable[[int], bool]) -> list[tuple[int, int]]:
    """Replace the slices of a shrunk end window that hold no data (``ends="extend"``).

    Parameters
    ----------
    pairs : list of (offset, slice)
        :func:`window_members` of ``z`` with ``ends="extend"``.
    z, n, radius : int
        The slice, the stack depth, the median radius.
    has_data : callable
        Whether a slice holds data (False: left out of templates).

    Returns
    -------
    list of (offset, slice)
        ``pairs`` without its slices that hold no data, plus as many of the nearest slices
        beyond the window on the inner side (at most ``radius`` from ``z``) that hold data.
        A window the stack ends do not cut is returned as it is.

    Examples
    --------
    Slices 0 and 1 distorted, slice 1's shrunk window is (0, 2); 0 is replaced by 3:

    >>> extended_members([(-1, 0), (1, 2)], 1, 20, 7, lambda j: j > 1)
    [(1, 2), (2, 3)]
    """
    r = min(radius, z, n - 1 - z)
    if r == radius or n <= radius:
        return pairs
    kept = [(o, j) for o, j in pairs if has_data(j)]
    step = 1 if z < n - 1 - z else -1
    beyond = [(step * d, z + step * d) for d in range(r + 1, radius + 1) if 0 <= z + step * d < n]
    extra = [(o, j) for o, j in beyond if has_data(j)][:len(pairs) - len(kept)]
    return kept + extra


def _extend_window(pairs: list[tuple[int, int]], z: int, n: int, radius: int,
                   has_data: Callable[[int], bool]) -> list[tuple[int, int]]:
    """The ``"extend"`` window of ``z`` once the left-out slices are known.

    A window the stack ends do not cut is returned as it is. At the ends, a slice left out
    itself (distorted) takes :func:`extended_members`; any other keeps its shrunk window
    centred: a member that holds no data takes its mirror partner out too, and a window
    left empty is the slice itself (it keeps its start, as ``"shrink"`` does at the very end).
    """
    if n <= radius or min(radius, z, n - 1 - z) == radius:
        return pairs
    if not has_data(z):
        return extended_members(pairs, z, n, radius, has_data)
    missing = {o for o, j in pairs if not has_data(j)}
    return [(o, j) for o, j in pairs if o not in missing and -o not in missing] or [(0, z)]


def window_indices(z: int, n: int, radius: int, leave_out: bool = False, ends: str = "mirror") -> list[int]:
    """Slices in the median window of ``z`` (:func:`window_members` without the offsets)."""
    return [i for _, i in window_members(z, n, radius, leave_out, ends)]


def window_bounds(z: int, n: int, radius: int) -> tuple[int, int]:
    """Slices ``[start, stop)`` that the median window of slice ``z`` reads."""
    idx = window_indices(z, n, radius)
    return min(idx), max(idx) + 1


class TemplateWindow:
    """The median templates of slices ``first..last-1``, from pre-aligned slices added in z order.

    :meth:`add` takes the next slice and returns the templates it completed; only the
    ``2 * radius + 1`` slices the next template needs are held.

    Parameters
    ----------
    n : int
        Stack depth.
    radius : int
        Median radius.
    first, last : int
        Range of templates to produce.
    leave_out : bool
        Leave the slice itself out of its own template.
    balanced : bool
        When a slice in the window covers nothing (left out: blank, failed, distorted),
        also leave out its mirror partner ``2 z - j``, so that the template's slices stay
        centred on ``z`` in depth (structures that move with depth would otherwise pull it
        towards the other side).
    ends : str
        "mirror", "shrink" or "extend", see :func:`window_members` and :func:`extended_members`.
    """

    def __init__(self, n: int, radius: int, first: int, last: int, *, leave_out: bool = False,
                 balanced: bool = False, ends: str = "mirror") -> None:
        self.n, self.radius, self.last = n, radius, last
        self.leave_out, self.balanced, self.ends = leave_out, balanced, ends
        self.next_template = first
        self._window: deque[tuple[int, _Member | None]] = deque()

    @property
    def done(self) -> bool:
        return self.next_template >= self.last

    def reads(self) -> range:
        """The slices to add, in order: ``window_bounds(first)[0] .. window_bounds(last - 1)[1]``."""
        return range(window_bounds(self.next_template, self.n, self.radius)[0],
                     window_bounds(self.last - 1, self.n, self.radius)[1])

    def add(self, index: int, image: np.ndarray) -> list[tuple[int, np.ndarray]]:
        """Add slice ``index`` (float32, NaN = uncovered); returns the ``(z, template)`` it completed."""
        shape = image.shape
        self._window.append((index, _Member.from_nan(image)))  # converted once, used by 2r + 1 templates
        out = []
        while not self.done:
            z = self.next_template
            lo, hi = window_bounds(z, self.n, self.radius)
            if self._window[-1][0] < hi - 1:
                break
            while self._window and self._window[0][0] < lo:
                self._window.popleft()
            held = dict(self._window)
            pairs = window_members(z, self.n, self.radius, self.leave_out, self.ends)
            if self.ends == "extend":
                pairs = _extend_window(pairs, z, self.n, self.radius, lambda j: held[j] is not None)
            if self.balanced:
                missing = {o for o, j in pairs if held[j] is None}
                pairs = [(o, j) for o, j in pairs if -o not in missing]
            members = [held[j] for _, j in pairs]
            out.append((z, _median([s for s in members if s is not None], shape)))
            self.next_template += 1
        return out


def sliding_templates(slices: Iterable[np.ndarray], start: int, n: int, radius: int,
                      first: int, last: int, *, leave_out: bool = False, balanced: bool = False,
                      ends: str = "mirror") -> Iterator[tuple[int, np.ndarray]]:
    """Templates for slices ``first..last-1`` from pre-aligned slices streamed in z order
    (:class:`TemplateWindow` over an iterable).

    Parameters
    ----------
    slices : iterable of float32 arrays (NaN = uncovered)
        Pre-aligned slices ``start, start + 1, ...`` covering
        ``window_bounds(first)[0] .. window_bounds(last - 1)[1]``.
    start : index of the first streamed slice
    n, radius, first, last, leave_out, balanced, ends : see :class:`TemplateWindow`

    Yields
    ------
    (z, template)
        Only ``2 * radius + 1`` slices are held at any time.
    """
    window = TemplateWindow(n, radius, first, last, leave_out=leave_out, balanced=balanced, ends=ends)
    for idx, img in enumerate(slices, start=start):
        yield from window.add(idx, img)
        if window.done:
            return
