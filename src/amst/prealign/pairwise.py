"""Pairwise measurements between slices at several z-gaps, streamed over the stack."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Protocol

import cv2
import numpy as np

from ..imageops import finite_float32, is_blank
from ..stack import Stack

__all__ = ["Pair", "PairMeasurement", "PairEstimator", "is_blank", "measure_pairs", "working_image"]


@dataclass
class PairMeasurement:
    """Displacement ``d`` (x, y) of content from slice i to slice j: ``t_j - t_i = d``."""

    shift_xy: np.ndarray
    confidence: float
    ok: bool
    reason: str = ""


@dataclass
class Pair:
    i: int
    j: int
    measurement: PairMeasurement


class PairEstimator(Protocol):
    def describe(self, image: np.ndarray) -> Any: ...
    def match(self, a: Any, b: Any) -> PairMeasurement: ...


def working_image(image: np.ndarray, max_side: int) -> tuple[np.ndarray, float, bool]:
    """float32 copy downsampled so its longer side is <= ``max_side``, its scale, and blankness.

    Non-finite pixels (NaN/inf in float data) are replaced by the slice median.
    """
    img = finite_float32(image)
    blank = is_blank(img)
    h, w = img.shape
    scale = min(1.0, max_side / max(h, w))
    if scale < 1.0:
        img = cv2.resize(img, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
        scale = img.shape[1] / w
    return img, scale, blank


def measure_pairs(stack: Stack, estimator: PairEstimator, gaps: list[int], workers: int,
                  progress: Callable[[int], None] | None = None) -> tuple[list[Pair], np.ndarray]:
    """Measure all pairs ``(z - g, z)`` for ``g`` in ``gaps``.

    Each slice is read and described once; descriptors are kept only while a later slice
    still needs them (``max(gaps)`` slices), so memory is bounded independent of depth.

    Returns
    -------
    pairs : list of Pair
    blank : (n,) bool array, slices that were blank
    """
    n = len(stack)
    gaps = sorted({int(g) for g in gaps if 0 < int(g) < max(n, 2)})
    if not gaps:
        raise ValueError(f"no usable z-gap among {gaps} for a stack of {n} slices")
    max_gap = max(gaps)
    chunk = max(4, 2 * workers)
    cache: dict[int, Any] = {}
    blank = np.zeros(n, dtype=bool)
    pairs: list[Pair] = []
    with ThreadPoolExecutor(max(1, workers)) as pool:
        for start in range(0, n, chunk):
            idx = list(range(start, min(n, start + chunk)))
            for z, (desc, was_blank) in zip(idx, pool.map(lambda z: _describe(stack, estimator, z), idx)):
                cache[z] = desc
                blank[z] = was_blank
            jobs = [(j - g, j) for j in idx for g in gaps if j - g >= 0]
            results = pool.map(lambda p: estimator.match(cache[p[0]], cache[p[1]]), jobs)
            pairs.extend(Pair(i, j, m) for (i, j), m in zip(jobs, results))
            keep_from = idx[-1] + 1 - max_gap
            for z in [z for z in cache if z < keep_from]:
                del cache[z]
            if progress:
                progress(len(idx))
    return pairs, blank


def _describe(stack: Stack, estimator: PairEstimator, z: int) -> tuple[Any, bool]:
    image = stack.read(z)
    desc = estimator.describe(image)
    return desc, bool(getattr(desc, "blank", False))
