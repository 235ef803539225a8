"""Sub-pixel translation between two images by Gauss-Newton (Lucas-Kanade) refinement.

Phase correlation finds the shift robustly but reads its sub-pixel part off an
interpolated correlation peak, whose error changes with the shift's fractional part and
with the content. A least-squares fit of the intensities themselves, started from that
shift, has a much smaller one. On perfectly aligned synthetic crops (486 px, the
``fibsem-marks`` noise, four stacks) the jitter residual's floor drops from 0.036-0.054 px
to 0.025-0.036 px (``benchmarks/residual_floor.py``).

OpenCV's ``findTransformECC`` fits a translation by a similar iteration, but prepares both
images on every call; here each slice is smoothed and differentiated once
(:meth:`GradientShift.describe`) and serves both pairs it takes part in. The fast
back-end (:mod:`amst.register.fast`) is the same kind of fit for an affine, but the
residual must not measure with the method that aligned the stack, and a translation with
a gain needs none of its pyramid, masks or robust weights.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np


@dataclass(frozen=True)
class ShiftDescriptor:
    """One image prepared for :meth:`GradientShift.refine`: smoothed, with its gradients."""

    image: np.ndarray
    grad_x: np.ndarray
    grad_y: np.ndarray


@dataclass(frozen=True)
class GradientShift:
    """Refine a translation by Gauss-Newton on intensities, with a gain and offset per pair.

    Parameters
    ----------
    sigma : float
        Gaussian smoothing (px) before the fit. 0.5-0.7 gave the lowest floor on noisy
        synthetic crops (0.5: 0.024-0.036 px, 0.7: 0.025-0.036, 1.0: 0.027-0.039,
        2.0: 0.041-0.060; ``benchmarks/residual_floor.py``); 0.7 for noisier real data.
    iterations : int
        Gauss-Newton steps at most (each warps the second image once).
    tolerance : float
        Stop when a step moves less than this (px).
    max_step : float
        A fit that ends further than this (px) from the starting shift is discarded: the
        start was wrong, or the images do not share enough structure.
    """

    sigma: float = 0.7
    iterations: int = 5
    tolerance: float = 1e-3
    max_step: float = 1.0

    def describe(self, image: np.ndarray) -> ShiftDescriptor:
        img = np.asarray(image, dtype=np.float32)
        if self.sigma > 0:
            img = cv2.GaussianBlur(img, (0, 0), self.sigma)
        # Sobel's 3x3 kernel sums 8 times the central difference.
        gx = cv2.Sobel(img, cv2.CV_32F, 1, 0, ksize=3, scale=0.125)
        gy = cv2.Sobel(img, cv2.CV_32F, 0, 1, ksize=3, scale=0.125)
        return ShiftDescriptor(img, gx, gy)

    def refine(self, a: ShiftDescriptor, b: ShiftDescriptor, start_xy: np.ndarray) -> np.ndarray | None:
        """Displacement (x, y) of content from ``a`` to ``b`` in px, refined from ``start_xy``.

        Returns None where the fit is not trustworthy (too little overlap, a singular
        system, NaN/inf in the images or the start, or the fit left the start by more than
        ``max_step``).
        """
        h, w = a.image.shape
        start = np.asarray(start_xy, dtype=float)
        if not np.isfinite(start).all():
            return None
        margin = int(np.ceil(np.abs(start).max() + self.max_step)) + 3
        if min(h, w) - 2 * margin < 16:
            return None
        inner = (slice(margin, h - margin), slice(margin, w - margin))
        # Unknowns: the shift (x, y), a gain and an offset, by the normal equations. The
        # sums run on views (einsum, no copies): large temporaries cost more than the sums.
        planes = (a.grad_x[inner], a.grad_y[inner], a.image[inner])
        normal = np.empty((4, 4))
        for i in range(3):
            for j in range(i + 1):
                normal[i, j] = normal[j, i] = np.einsum("ij,ij->", planes[i], planes[j])
            normal[i, 3] = normal[3, i] = planes[i].sum()
        normal[3, 3] = planes[2].size
        if not np.isfinite(normal).all() or np.linalg.cond(normal) > 1e12:
            return None
        shift = start.copy()
        # Neighbouring slices differ (NCC ~0.75), so Gauss-Newton converges linearly, each
        # step leaving ~40 % of the error (with b's gradients at the current shift too):
        # five steps leave ~0.001 px, far below the residual's floor (~0.02 px).
        for _ in range(self.iterations):
            diff = _sample_shifted(b.image, shift, inner)
            np.subtract(diff, planes[2], out=diff)
            rhs = [np.einsum("ij,ij->", p, diff) for p in planes] + [diff.sum()]
            step = np.linalg.solve(normal, rhs)[:2]
            shift -= step
            if not np.isfinite(step).all() or np.abs(shift - start).max() > self.max_step:
                return None
            if np.abs(step).max() < self.tolerance:
                break
        return shift


def _sample_shifted(image: np.ndarray, shift_xy: np.ndarray, inner: tuple[slice, slice]) -> np.ndarray:
    """``image(x + shift)`` on the ``inner`` region, by cubic convolution (Keys, a = -0.5).

    Not ``cv2.warpAffine``: its cubic kernel (a = -0.75) moves the content by up to 0.047 px
    with the fractional shift (see :mod:`amst.warp`), as much as this module measures; and
    not scikit-image's warp (exact, as :mod:`amst.warp` uses it), which costs ten times
    more than this separable filter on a pure translation.
    """
    whole = np.floor(shift_xy).astype(int)
    frac = shift_xy - whole
    kx, ky = _keys_weights(frac[0]), _keys_weights(frac[1])
    # sepFilter2D correlates: out(x) = sum_i k[i] * in(x + i - anchor), taps at -1, 0, 1, 2.
    rows, cols = inner
    y0, y1 = rows.start + whole[1] - 1, rows.stop + whole[1] + 2
    x0, x1 = cols.start + whole[0] - 1, cols.stop + whole[0] + 2
    window = image[y0:y1, x0:x1]
    out = cv2.sepFilter2D(window, cv2.CV_32F, kx, ky, anchor=(1, 1), borderType=cv2.BORDER_REPLICATE)
    return out[1:-2, 1:-2]


def _keys_weights(t: float) -> np.ndarray:
    """Cubic-convolution weights of the samples at -1, 0, 1, 2 for a position t in [0, 1)."""
    a = -0.5
    d = np.array([1 + t, t, 1 - t, 2 - t])
    near = ((a + 2) * d - (a + 3)) * d * d + 1
    far = ((a * d - 5 * a) * d + 8 * a) * d - 4 * a
    return np.where(d <= 1, near, far).astype(np.float32).reshape(-1, 1)
