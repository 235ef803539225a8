"""Alignment quality without ground truth: the paper's residual and neighbour NCC.

The paper (Methods, "Evaluation of alignments") crops well-textured regions far apart,
re-registers each slice to the previous one inside each crop and reports the shift in nm:
where the alignment is right, a local re-registration finds nothing to correct. We use
phase correlation (on crops reduced to 256 px) to find the shift and a least-squares fit of the
intensities (:mod:`.subpixel`) to refine it. Neither is what aligned the stack: template
matching maximises NCC at the marks, and the back-ends fit an affine to a median template,
not a translation to the neighbouring slice.

The shift between neighbouring slices also holds the sample's own motion with depth
(membranes oblique to the slices slide sideways a little at every slice, for many slices
in a row), which is not a misalignment. :func:`jitter_residual` removes that slowly varying
part (a running median of the shift vectors along z) and keeps what changes from slice
to slice. On translation-only runs of four synthetic 200 x 1024^2 stacks it ranks slices
by their true misalignment far better than the plain residual (Spearman 0.49-0.73 against
0.24-0.36, ``benchmarks/residual_vs_truth.py``); the plain residual stays reported, as in
the paper. What it cannot rank is misalignment below its own floor, the content's change
from one slice to the next plus noise: 0.025-0.036 px on those stacks
(``benchmarks/residual_floor.py``).
"""

from __future__ import annotations

from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import cached_property

import cv2
import numpy as np

from ..imageops import finite_float32, nonfinite_count
from ..imageops import ncc as image_ncc
from ..parallel import default_workers, ordered_map
from ..prealign.xcorr import PhaseCorrelation
from ..stack import Stack
from .subpixel import GradientShift


@dataclass
class Crop:
    """A square region ``(x, y, size)`` in output pixels."""

    x: int
    y: int
    size: int

    def take(self, image: np.ndarray) -> np.ndarray:
        return image[self.y:self.y + self.size, self.x:self.x + self.size]


@dataclass
class SliceSweep:
    """Everything one pass over an aligned stack measures."""

    crops: list[Crop]
    shift_xy: np.ndarray             # (n_crops, n, 2) shift to the previous slice; NaN for z = 0 / failures
    neighbour_ncc: np.ndarray        # (n,) NCC with the previous slice over the covered centre
    reslice_xz: np.ndarray           # (n, W) the row through the middle of the canvas
    reslice_yz: np.ndarray           # (n, H) the column through the middle
    extra: dict = field(default_factory=dict)
    nonfinite_px: np.ndarray | None = None  # (n,) NaN/inf pixels per slice (no data); None: not counted
    usable_crops: np.ndarray | None = None  # (n_crops, n) False where a crop had too little finite data

    @cached_property
    def residual_px(self) -> np.ndarray:
        """(n_crops, n) the paper's residual: |shift| to the previous slice."""
        return np.linalg.norm(self.shift_xy, axis=2)

    @cached_property
    def jitter_residual_px(self) -> np.ndarray:
        """(n_crops, n) the residual without the sample's slow motion (:func:`jitter_residual`)."""
        return np.array([jitter_residual(s) for s in self.shift_xy]).reshape(self.shift_xy.shape[:2])


JITTER_WINDOW = 15
# A crop (or the centre the NCC is taken on) with fewer finite pixels than this share is
# not measured: its residual / NCC is NaN. Above it, the few NaN/inf pixels are filled with
# the median of the others, which moves no structure.
MIN_FINITE_FRACTION = 0.9


def usable_pixels(image: np.ndarray, min_finite_fraction: float = MIN_FINITE_FRACTION) -> np.ndarray | None:
    """``image`` ready to measure on, or None when too little of it is finite.

    Parameters
    ----------
    image : numpy.ndarray
        A crop of an aligned slice.
    min_finite_fraction : float
        The share of finite pixels below which the crop holds too little data.

    Returns
    -------
    numpy.ndarray or None
        ``image`` itself when every pixel is finite (integer dtypes always are); a float32
        copy with the non-finite pixels set to the median of the finite ones when enough
        are finite; None otherwise.
    """
    bad = nonfinite_count(image)
    if bad == 0:
        return image
    if bad > (1.0 - min_finite_fraction) * image.size:
        return None
    return finite_float32(image)


def _finite_mask(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pixels where both ``a`` and ``b`` have data: non-zero (zero is the canvas outside a
    slice) and finite."""
    mask = (a != 0) & (b != 0)
    if a.dtype.kind == "f" or b.dtype.kind == "f":
        mask &= np.isfinite(a) & np.isfinite(b)
    return mask


class NeighbourShift:
    """The residual's estimator: the shift of a crop's content from one slice to the next.

    Phase correlation on the crop reduced to 256 px finds it (half whitening: full phase
    correlation gives the noisy high frequencies as much say as the structure); a
    least-squares fit of the intensities at full resolution refines it (:mod:`.subpixel`).

    Parameters
    ----------
    coarse : PhaseCorrelation, optional
        The search (default: the sweep's).
    fine : GradientShift or None, optional
        The refinement (default: the sweep's); None keeps the phase correlation's shift.
    """

    def __init__(self, coarse: PhaseCorrelation | None = None, fine: GradientShift | None = GradientShift()) -> None:
        self.coarse = coarse or PhaseCorrelation(max_side=256, upsample=10, whitening=0.5)
        self.fine = fine

    def describe(self, crop: np.ndarray) -> tuple:
        return self.coarse.describe(crop), self.fine.describe(crop) if self.fine else None

    def measure(self, previous: tuple, current: tuple) -> np.ndarray:
        """(x, y) shift in px from ``previous`` to ``current`` (descriptors); NaN where the
        phase correlation peak is too weak to trust."""
        found = self.coarse.match(previous[0], current[0])
        if not found.ok or not np.isfinite(found.shift_xy).all():
            return np.full(2, np.nan)
        refined = self.fine.refine(previous[1], current[1], found.shift_xy) if self.fine else None
        return found.shift_xy if refined is None else refined


def jitter_residual(shift_xy: np.ndarray, window: int = JITTER_WINDOW) -> np.ndarray:
    """|shift - running median of the shifts| along z, per slice (NaN-aware).

    Parameters
    ----------
    shift_xy : (n, 2) shift of each slice to the previous one; NaN where not measured
    window : slices in the running median (odd)

    Returns
    -------
    numpy.ndarray
        (n,) px; NaN where the shift is NaN.
    """
    return np.linalg.norm(jitter_shift(shift_xy, window), axis=1)


def jitter_shift(shift_xy: np.ndarray, window: int = JITTER_WINDOW) -> np.ndarray:
    """The shift to the previous slice minus its running median along z: the part that
    changes from slice to slice (:func:`jitter_residual` is its length).

    Parameters
    ----------
    shift_xy : numpy.ndarray
        (n, 2) shift of each slice to the previous one in px; NaN where not measured.
    window : int
        Slices in the running median (odd).

    Returns
    -------
    numpy.ndarray
        (n, 2) px; NaN where the shift is NaN.
    """
    shifts = np.asarray(shift_xy, dtype=float).reshape(-1, 2)
    n = len(shifts)
    if n == 0:
        return np.zeros((0, 2))
    half = window // 2
    padded = np.pad(shifts, ((half, half), (0, 0)), mode="constant", constant_values=np.nan)
    windows = np.lib.stride_tricks.sliding_window_view(padded, window, axis=0)  # (n, 2, window)
    valid = np.isfinite(windows).any(axis=2)
    slow = np.full((n, 2), np.nan)
    if valid.any():
        with np.errstate(all="ignore"):
            slow[valid] = np.nanmedian(windows[valid], axis=1)
    return shifts - slow


def choose_crops(image: np.ndarray, size: int = 512, count: int = 2, covered: np.ndarray | None = None) -> list[Crop]:
    """Well-textured crops as far apart as possible (paper's criteria), shrunk for small images.

    The image is divided into ``count`` horizontal bands (top to bottom); in each band the
    crop with the most texture (gradient magnitude) wins, among crops that lie wholly in
    ``covered``: the canvas pixels that every slice covers (:func:`common_coverage`; default:
    where ``image`` itself has data). The edge of the covered area is not texture: it would win every time, and
    in the other slices it moves with their own translation, not with the alignment error.
    """
    img = np.asarray(image, dtype=np.float32)
    h, w = img.shape
    inside = _covered(img) if covered is None else np.asarray(covered, dtype=bool)
    if nonfinite_count(img):
        finite = np.isfinite(img)
        inside = inside & finite
        img = np.where(finite, img, 0.0).astype(np.float32)  # the erosion below keeps crops off the filled pixels
    gx = cv2.Sobel(img, cv2.CV_32F, 1, 0)
    gy = cv2.Sobel(img, cv2.CV_32F, 0, 1)
    inside = cv2.erode(inside.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(np.float32)
    integral_e = cv2.integral(cv2.magnitude(gx, gy) * inside)
    integral_c = cv2.integral(inside)
    rows, cols = np.flatnonzero(inside.any(axis=1)), np.flatnonzero(inside.any(axis=0))
    if not rows.size:
        side = max(16, int(min(size, h // 2, w // 2)))
        return [Crop((w - side) // 2, (h - side) // 2, side)]
    y0, y1, x0, x1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
    size = _fft_friendly(max(16, int(min(size, (y1 - y0) // max(2, count), (x1 - x0) // 2))))
    crops: list[Crop] = []
    # A slanted or ragged covered area may not hold full-size crops in every band: shrink.
    for _ in range(6):
        crops = _best_crops(integral_e, integral_c, (y0, y1, x0, x1), size, count)
        if len(crops) == count or size <= 64:
            break
        size = _fft_friendly(max(16, int(size * 0.85)))
    return crops or [Crop((x0 + x1 - size) // 2, (y0 + y1 - size) // 2, size)]


def _fft_friendly(n: int) -> int:
    """The largest size <= n with no prime factor above 5: a 487 px crop (prime) takes its
    FFTs four times longer than a 480 px one."""
    for m in range(n, 0, -1):
        k = m
        for p in (2, 3, 5):
            while k % p == 0:
                k //= p
        if k == 1:
            return m
    return n


def _best_crops(integral_e: np.ndarray, integral_c: np.ndarray, box: tuple[int, int, int, int], size: int,
                count: int) -> list[Crop]:
    """The most textured wholly covered crop in each of ``count`` bands of ``box`` (y0, y1, x0, x1)."""
    y0, y1, x0, x1 = box
    step = max(4, size // 16)
    band_h = (y1 - y0) / count
    crops = []
    for b in range(count):
        best, best_score = None, -1.0
        y_lo = int(y0 + b * band_h)
        y_hi = int(min(y1 - size, y0 + (b + 1) * band_h - size // 2))
        for y in range(y_lo, max(y_lo, y_hi) + 1, step):
            for x in range(x0, max(x0, x1 - size) + 1, step):
                if _box(integral_c, x, y, size) < 0.999 * size ** 2:
                    continue
                score = _box(integral_e, x, y, size)
                if score > best_score:
                    best, best_score = Crop(x, y, size), score
        if best is not None:
            crops.append(best)
    return crops


def common_coverage(stack: Stack, samples: int = 9, margin_fraction: float = 0.015) -> np.ndarray:
    """Canvas pixels covered in every one of ``samples`` evenly spaced slices, shrunk by
    ``margin_fraction`` of the shorter side for the slices in between.

    Worked out on every ``step``-th pixel (about 512 px across): crops are placed to a few
    pixels, and the margin is wider than that.
    """
    n, h, w = stack.shape
    step = max(1, min(h, w) // 512)
    zs = sorted({int(round(v)) for v in np.linspace(0, n - 1, min(samples, n))} | {n // 2})
    covered = None
    for z in zs:
        c = _covered(stack.read(z)[::step, ::step])
        covered = c if covered is None else covered & c
    margin = max(1, int(round(margin_fraction * min(h, w) / step)))
    kernel = np.ones((2 * margin + 1, 2 * margin + 1), np.uint8)
    # The canvas edge counts as uncovered too: a slice not sampled may stop short of it.
    small = cv2.erode(covered.astype(np.uint8), kernel, borderType=cv2.BORDER_CONSTANT, borderValue=0)
    return np.repeat(np.repeat(small, step, axis=0), step, axis=1)[:h, :w].astype(bool)


def _covered(image: np.ndarray) -> np.ndarray:
    """Where a slice's footprint is. The canvas a slice does not cover is zero and touches the
    canvas edge (a slice's footprint is convex); zero pixels inside the data (dark pixels
    clipped to 0) are data. NaN/inf pixels are inside the footprint: a hole in the data of
    a few slices must not move the crops of all the others (its crops read NaN instead)."""
    zeros = (np.asarray(image) == 0).astype(np.uint8)
    if not zeros.any():
        return np.ones(zeros.shape, dtype=bool)
    count, labels = cv2.connectedComponents(zeros, connectivity=4)
    outside = np.zeros(count, dtype=bool)
    outside[np.r_[labels[0], labels[-1], labels[:, 0], labels[:, -1]]] = True
    outside[0] = False  # label 0: the non-zero pixels
    return ~outside[labels]


def reference_slice(stack: Stack, candidates: int = 64) -> np.ndarray:
    """The slice the crops are placed on: the middle one, or when it holds NaN/inf pixels the
    nearest to it without any (of the ``candidates`` nearest; else the one with the fewest),
    so that a hole in the middle slice's data does not decide where every slice is measured."""
    n = stack.shape[0]
    middle = stack.read(n // 2)
    best, fewest = middle, nonfinite_count(middle)
    order = sorted(range(n), key=lambda z: (abs(z - n // 2), z))[1:candidates]
    for z in order:
        if fewest == 0:
            break
        img = stack.read(z)
        bad = nonfinite_count(img)
        if bad < fewest:
            best, fewest = img, bad
    return best


def _box(integral: np.ndarray, x: int, y: int, s: int) -> float:
    return float(integral[y + s, x + s] - integral[y, x + s] - integral[y + s, x] + integral[y, x])


def sweep(stack: Stack, crops: list[Crop] | None = None, crop_size: int = 512, workers: int | None = None) -> SliceSweep:
    """One read of every slice: residual per crop, neighbour NCC and the two reslices.

    Slices are read and transformed to the frequency domain on ``workers`` threads (all
    cores by default); BLAS runs one thread each, which the small matrix products of the
    sub-pixel refinement need (more threads only burn CPU on them).

    NaN/inf pixels are no data: the crops are placed on the finite texture of the middle
    slice; a crop (or the NCC's centre region) with less than ``MIN_FINITE_FRACTION`` finite
    pixels is not measured, and every figure that compares it with a neighbour is NaN;
    ``nonfinite_px`` counts them per slice and ``usable_crops`` says which were measured.
    """
    from threadpoolctl import threadpool_limits

    n, h, w = stack.shape
    if crops is None:
        crops = choose_crops(reference_slice(stack), crop_size, covered=common_coverage(stack))
    estimator = NeighbourShift()
    shifts = np.full((len(crops), n, 2), np.nan)
    ncc = np.full(n, np.nan)
    nonfinite = np.zeros(n, dtype=np.int64)
    usable = np.ones((len(crops), n), dtype=bool)
    xz = np.zeros((n, w), dtype=np.float32)
    yz = np.zeros((n, h), dtype=np.float32)
    cy0, cy1, cx0, cx1 = h // 4, 3 * h // 4, w // 4, 3 * w // 4

    def describe(crop: np.ndarray) -> tuple | None:
        ready = usable_pixels(crop)
        return None if ready is None else estimator.describe(ready)

    def read(z: int) -> tuple[np.ndarray, np.ndarray, list, np.ndarray | None, int]:
        img = stack.read(z)
        descs = [describe(c.take(img)) for c in crops]
        centre = img[cy0:cy1:2, cx0:cx1:2]
        centre = None if usable_pixels(centre) is None else centre.copy()  # NaN stays: _finite_mask drops it
        return img[h // 2].copy(), img[:, w // 2].copy(), descs, centre, nonfinite_count(img)

    def compare(z: int, prev: tuple[list, np.ndarray | None], cur: tuple[list, np.ndarray | None]) -> None:
        for k, (a, b) in enumerate(zip(prev[0], cur[0])):
            if a is not None and b is not None:
                shifts[k, z] = estimator.measure(a, b)
        if prev[1] is not None and cur[1] is not None:
            ncc[z] = image_ncc(prev[1], cur[1], _finite_mask(prev[1], cur[1]))

    n_workers = default_workers(workers)
    previous = None
    pending: deque = deque()
    with threadpool_limits(1), ThreadPoolExecutor(n_workers) as pool:
        for z, (row, col, descs, centre, bad) in enumerate(ordered_map(read, range(n), n_workers)):
            xz[z], yz[z], nonfinite[z] = row, col, bad
            usable[:, z] = [d is not None for d in descs]
            if previous is not None:
                pending.append(pool.submit(compare, z, previous, (descs, centre)))
                while len(pending) > 2 * n_workers:  # bounded: each holds two slices' spectra
                    pending.popleft().result()
            previous = (descs, centre)
        for fut in pending:
            fut.result()
    return SliceSweep(crops, shifts, ncc, xz, yz, nonfinite_px=nonfinite, usable_crops=usable)


def summarise_residual(residual_px: np.ndarray, pixel_nm: float | None) -> list[dict]:
    """Mean, median, max per crop, in nm when the pixel size is known (else px)."""
    factor = pixel_nm or 1.0
    out = []
    for k, r in enumerate(residual_px):
        v = r[np.isfinite(r)] * factor
        out.append({"crop": k, "unit": "nm" if pixel_nm else "px",
                    "mean": float(v.mean()) if v.size else float("nan"),
                    "median": float(np.median(v)) if v.size else float("nan"),
                    "max": float(v.max()) if v.size else float("nan")})
    return out
