"""Sub-pixel peak location on correlation surfaces."""

from __future__ import annotations

import numpy as np


def fit_peak_2d(surface: np.ndarray, iy: int, ix: int, method: str = "gaussian") -> tuple[float, float]:
    """Refine an integer maximum ``(iy, ix)`` of ``surface`` to sub-pixel ``(y, x)``.

    ``gaussian`` fits a Gaussian (a parabola through the logarithms) along each axis,
    ``parabola`` a parabola through the values. A peak on the border is not refined.

    Returns
    -------
    tuple of float
        ``(y, x)`` of the peak.
    """
    h, w = surface.shape
    if not (0 < iy < h - 1 and 0 < ix < w - 1):
        return float(iy), float(ix)
    c = float(surface[iy, ix])
    return (iy + _offset(float(surface[iy - 1, ix]), c, float(surface[iy + 1, ix]), method),
            ix + _offset(float(surface[iy, ix - 1]), c, float(surface[iy, ix + 1]), method))


def _offset(left: float, centre: float, right: float, method: str) -> float:
    if method == "gaussian":
        floor = min(left, centre, right)
        if floor <= 0:  # logs need positive values; lift the three samples together
            shift = 1e-6 - floor
            left, centre, right = left + shift, centre + shift, right + shift
        left, centre, right = np.log(left), np.log(centre), np.log(right)
    elif method != "parabola":
        raise ValueError(f"unknown peak fit {method!r}; use 'gaussian' or 'parabola'")
    denom = left - 2.0 * centre + right
    if denom >= 0:
        return 0.0
    return float(np.clip(0.5 * (left - right) / denom, -0.5, 0.5))


def upsampled_correlation(cross_power: np.ndarray, centre_yx: tuple[float, float], upsample: int,
                          half_width: float = 1.0) -> tuple[float, float, float]:
    """Locate a correlation peak to ``1/upsample`` px by a local inverse DFT.

    This is the matrix-multiply DFT of Guizar-Sicairos et al. (Opt. Lett. 2008): only a
    ``2 * half_width`` px neighbourhood of ``centre_yx`` is evaluated, at ``upsample``
    times the resolution, directly from the (cached) cross-power spectrum. We evaluate it
    here rather than through ``skimage.registration.phase_cross_correlation`` because we
    keep the spectra of each slice across several pairs and need the peak height too.

    Returns
    -------
    tuple of float
        ``(y, x, peak)``; the peak is normalised by the number of pixels.
    """
    m, n = cross_power.shape
    k = int(np.ceil(2 * half_width * upsample)) + 1
    offs = (np.arange(k) - (k - 1) / 2.0) / upsample
    ys, xs = centre_yx[0] + offs, centre_yx[1] + offs
    fy, fx = np.fft.fftfreq(m), np.fft.fftfreq(n)
    # Single precision keeps the (k, m) x (m, n) product, the whole cost, in cgemm and avoids
    # a double-precision copy of the spectrum; the peak moves by < 1e-4 px.
    ker_y = np.exp(2j * np.pi * np.outer(ys, fy)).astype(np.complex64)  # (k, m)
    ker_x = np.exp(2j * np.pi * np.outer(fx, xs)).astype(np.complex64)  # (n, k)
    local = (ker_y @ cross_power.astype(np.complex64, copy=False) @ ker_x).real.astype(np.float64) / (m * n)
    iy, ix = np.unravel_index(int(np.argmax(local)), local.shape)
    y, x = fit_peak_2d(local, iy, ix, "parabola")
    return float(ys[0] + y / upsample), float(xs[0] + x / upsample), float(local[iy, ix])
