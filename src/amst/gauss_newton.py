"""Affine fit of one image to another at one resolution: inverse-compositional Gauss-Newton.

Following Baker & Matthews (IJCV 2004), the template's gradients and the 6x6 Gauss-Newton
matrix are computed once; each iteration only samples the image at the warped positions of
a fixed set of well-textured template pixels (the strongest-gradient pixel of each cell),
fits gain and offset (so brightness/contrast changes between image and template do not
matter), and solves a 6x6 system, with Huber weights on the residuals so that places where
the template does not look like the image pull less. It is deterministic: no random
sampling.

The shared core of the fast registration back-end (:mod:`amst.register.fast`, which runs
:func:`align_level` on each level of an image pyramid) and of template matching's affine
read-out of a mark position (:func:`amst.prealign.template_matching.affine_refined_position`,
through :func:`refine_affine`), so that pre-alignment needs no registration back-end.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import cv2
import numpy as np

from .transform import as_affine, at_level


class IterationParams(Protocol):
    """The settings :func:`align_level` reads (:class:`GaussNewtonParams`, or the fast
    back-end's :class:`amst.register.fast.FastParams`)."""

    max_iterations: int
    tolerance_px: float
    cell: int
    keep_fraction: float
    min_samples: int
    robust: bool


@dataclass
class GaussNewtonParams:
    """Settings of one level's Gauss-Newton iterations (the fast back-end's
    :class:`~amst.register.fast.FastParams` extends them)."""

    max_iterations: int = 40      # at most this many iterations
    tolerance_px: float = 0.002   # stop when the update moves no pixel by more than this
    cell: int = 2                 # one sample candidate per cell x cell block
    keep_fraction: float = 1.0    # keep the strongest-gradient fraction of candidates
    min_samples: int = 200
    robust: bool = True           # Huber weights on the residuals (down-weights template mismatch)


def _samples(template: np.ndarray, mask: np.ndarray, p: IterationParams) -> tuple[np.ndarray, ...]:
    """Well-textured template pixels: the strongest gradient per cell, then the top fraction."""
    gx = cv2.Scharr(template, cv2.CV_32F, 1, 0, scale=1 / 32)
    gy = cv2.Scharr(template, cv2.CV_32F, 0, 1, scale=1 / 32)
    mag = cv2.magnitude(gx, gy)
    mag[~mask] = -1.0
    mag[:1], mag[-1:], mag[:, :1], mag[:, -1:] = -1.0, -1.0, -1.0, -1.0
    h, w = mag.shape
    c = p.cell if min(h, w) >= p.cell else 1
    hc, wc = h // c, w // c
    # The strongest pixel of each c x c cell: a running maximum over the c*c strided
    # views of the image (no per-cell reshaping copies).
    best = mag[0:hc * c:c, 0:wc * c:c].copy()
    arg = np.zeros((hc, wc), np.int32)
    for k in range(1, c * c):
        dy, dx = divmod(k, c)
        view = mag[dy:hc * c:c, dx:wc * c:c]
        arg = np.where(view > best, np.int32(k), arg)
        np.maximum(best, view, out=best)
    by, bx = np.divmod(arg, c)
    ys = (np.arange(hc, dtype=np.int32)[:, None] * c + by).ravel()
    xs = (np.arange(wc, dtype=np.int32)[None, :] * c + bx).ravel()
    strength = best.ravel()
    ok = np.flatnonzero(strength > 0)
    ys, xs, strength = ys[ok], xs[ok], strength[ok]
    keep = max(p.min_samples, int(strength.size * p.keep_fraction))
    if strength.size > keep:
        top = np.sort(np.argpartition(-strength, keep - 1)[:keep])
        ys, xs = ys[top], xs[top]
    return xs.astype(np.float32), ys.astype(np.float32), gx[ys, xs], gy[ys, xs], template[ys, xs]


def _sample(image: np.ndarray, x: np.ndarray, y: np.ndarray, width: int = 1024) -> np.ndarray:
    """Bilinear samples of ``image`` at points (x, y) via ``cv2.remap``.

    remap's maps must be < 32767 on a side, so the points are laid out as rows of ``width``.
    """
    n = x.size
    rows = -(-n // width)
    mx = np.zeros(rows * width, np.float32)
    my = np.zeros(rows * width, np.float32)
    mx[:n], my[:n] = x, y
    out = cv2.remap(image, mx.reshape(rows, width), my.reshape(rows, width), cv2.INTER_LINEAR,
                    borderMode=cv2.BORDER_REPLICATE)
    return out.ravel()[:n].astype(np.float64)


def _to3(m: np.ndarray) -> np.ndarray:
    h = np.eye(3)
    h[:2] = m
    return h


def align_level(raw: np.ndarray, template: np.ndarray, mask: np.ndarray, warp: np.ndarray,
                p: IterationParams) -> tuple[np.ndarray, int, float, str]:
    """Inverse-compositional Gauss-Newton at one level; ``warp`` maps template px -> raw px.

    Parameters
    ----------
    raw : 2-D C-contiguous float32 array
        The image sampled at the warped template positions.
    template : 2-D C-contiguous float32 array
    mask : 2-D bool array of the template's shape
        Template pixels that may be sampled.
    warp : (2, 3) float64 array
        Start, template pixel -> raw pixel.
    p : IterationParams

    Returns
    -------
    tuple
        The warp (2, 3), the iterations run, the correlation, and why the level stopped
        short ('' if it did not): the caller decides whether that fails the fit.

    Raises
    ------
    numpy.linalg.LinAlgError
        When an update cannot be inverted.
    """
    xs, ys, gx, gy, tv = _samples(template, mask, p)
    n = xs.size
    if n < 12:
        return warp, 0, float("nan"), f"only {n} usable template pixels (at least 12 needed)"
    h, w = template.shape
    cx, cy = (w - 1) / 2.0, (h - 1) / 2.0
    s = max(w, h) / 2.0
    u, v = (xs - cx) / s, (ys - cy) / s  # centred, scaled coordinates condition the system
    # Steepest-descent images as rows (6, n): the products below then run as BLAS calls.
    sd = np.stack([gx * u, gy * u, gx * v, gy * v, gx, gy]) * np.float32(s)
    tv64 = tv.astype(np.float64)
    centre = np.array([[1, 0, cx], [0, 1, cy], [0, 0, 1.0]])
    scale = np.diag([s, s, 1.0])
    frame = centre @ scale              # normalised -> pixel
    frame_inv = np.linalg.inv(frame)
    raw_h, raw_w = raw.shape
    w3 = _to3(warp)
    iterations, corr, problem = 0, float("nan"), ""
    # The samples' bounding box: if its corners land inside the raw slice, all samples do.
    box = np.array([[xs.min(), ys.min(), 1], [xs.max(), ys.min(), 1], [xs.min(), ys.max(), 1],
                    [xs.max(), ys.max(), 1]], float).T
    corners = np.array([[0, 0, 1], [w - 1, 0, 1], [0, h - 1, 1], [w - 1, h - 1, 1]], float).T
    for iterations in range(1, p.max_iterations + 1):
        qb = (w3 @ box)[:2]
        all_inside = qb.min() >= 0 and qb[0].max() <= raw_w - 1 and qb[1].max() <= raw_h - 1
        qx = (w3[0, 0] * xs + w3[0, 1] * ys + np.float32(w3[0, 2])).astype(np.float32)
        qy = (w3[1, 0] * xs + w3[1, 1] * ys + np.float32(w3[1, 2])).astype(np.float32)
        iv = _sample(raw, qx, qy)
        if all_inside:
            t_in, sd_in = tv64, sd
        else:
            inside = (qx >= 0) & (qx <= raw_w - 1) & (qy >= 0) & (qy <= raw_h - 1)
            if inside.sum() < 12:
                problem = f"only {int(inside.sum())} samples fall inside the raw slice (no overlap)"
                break
            iv, t_in, sd_in = iv[inside], tv64[inside], sd[:, inside]
        # Gain and offset of the raw slice relative to the template (least squares).
        i_c, t_c = iv - iv.mean(), t_in - t_in.mean()
        var_i = float(i_c @ i_c)
        if not var_i > 0:
            problem = "the raw slice is flat (or not finite) where the template has texture"
            break
        gain = float(i_c @ t_c) / var_i
        corr = float(i_c @ t_c) / np.sqrt(var_i * float(t_c @ t_c) + 1e-30)
        err = gain * i_c - t_c
        if p.robust:
            # Huber weights; the residual scale is estimated on every 8th sample.
            abs_err = np.abs(err)
            k = 1.345 * 1.4826 * float(np.median(abs_err[::8])) + 1e-12
            wts = np.minimum(1.0, k / np.maximum(abs_err, 1e-12)).astype(np.float32)
            sdw = sd_in * wts
            hess = (sdw @ sd_in.T).astype(np.float64)
            rhs = sdw.astype(np.float64) @ err
        else:
            hess = (sd_in @ sd_in.T).astype(np.float64)
            rhs = sd_in.astype(np.float64) @ err
        try:
            dp = np.linalg.solve(hess, rhs)
        except np.linalg.LinAlgError:
            problem = "singular Gauss-Newton system (the samples do not constrain an affine)"
            break
        if not np.isfinite(dp).all():
            problem = "non-finite Gauss-Newton update"
            break
        delta = np.array([[1 + dp[0], dp[2], dp[4]], [dp[1], 1 + dp[3], dp[5]], [0, 0, 1.0]])
        delta_px = frame @ delta @ frame_inv
        w3 = w3 @ np.linalg.inv(delta_px)
        moved = np.abs(delta_px @ corners - corners)[:2].max()
        if moved < p.tolerance_px:
            break
    return w3[:2], iterations, corr, problem


def refine_affine(image: np.ndarray, template: np.ndarray, start: np.ndarray,
                  params: IterationParams | None = None) -> np.ndarray | None:
    """Affine (template pixel -> image pixel) that best puts ``template`` onto ``image``,
    from ``start``, at full resolution only (no pyramid, no smoothing, every template pixel
    usable).

    The same numbers as the fast back-end registering ``image`` to ``template`` from
    ``start`` with ``smooth_sigma: 0``, ``finest_level: 0`` and a ``coarsest_side`` above the
    template's size (a single pyramid level).

    Parameters
    ----------
    image : 2-D array
        Where the template is looked for.
    template : 2-D array
    start : (2, 3) array
        Start, template pixel -> image pixel (e.g. the translation to a matched position).
    params : IterationParams, optional
        :class:`GaussNewtonParams` defaults when None.

    Returns
    -------
    numpy.ndarray or None
        The (2, 3) affine; None when the images allow no fit (too few usable template
        pixels, no overlap, a flat image, a singular or non-finite system).

    Raises
    ------
    numpy.linalg.LinAlgError
        When an update cannot be inverted.
    ValueError
        When the fit ends non-finite (``as_affine`` refuses it).
    """
    p = GaussNewtonParams() if params is None else params
    raw = np.ascontiguousarray(image, dtype=np.float32)
    template = np.ascontiguousarray(template, dtype=np.float32)
    mask = np.ones(template.shape, bool)
    warp, _, _, problem = align_level(raw, template, mask, at_level(as_affine(start).copy(), 0), p)
    if problem:
        return None
    warp = at_level(warp, 0)
    if not np.isfinite(warp).all():
        return None
    return warp
