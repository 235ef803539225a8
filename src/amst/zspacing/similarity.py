"""Image similarity as a function of distance: in-plane falloff and between-slice similarity.

For content that is statistically isotropic, the correlation of two aligned slices a
distance ``d`` apart along z equals the correlation of one slice with itself shifted by
``d`` pixels in-plane. Both are measured the same way: the slice is cut into square tiles,
each tile's mean is removed (shading, flicker and content larger than a tile do not count),
and the products are pooled over all tiles into one normalised cross-correlation. Pooling
weights each tile by its contrast, so blank tiles and the edges of the covered area add
nothing. Noise that is independent from pixel to pixel lowers both correlations by the
same factor (a tile's neighbours in-plane and along z carry independent noise), which is
why only whole-pixel in-plane shifts are used: an interpolated shift would correlate the
noise with itself.

References
----------
Hanslovsky, P., Bogovic, J. A. & Saalfeld, S. Image-based correction of continuous and
discontinuous non-planar axial distortion in serial section microscopy.
*Bioinformatics* 33, 1379-1386 (2017).
"""

from __future__ import annotations

import numpy as np

__all__ = ["cut_tiles", "tile_stack", "falloff_in_plane", "pooled_ncc", "distance_and_slope"]


def cut_tiles(array: np.ndarray, tile: int) -> np.ndarray:
    """The whole ``tile`` x ``tile`` tiles of a 2-D array, row by row: (k, tile, tile), k = 0 when none fits."""
    a = np.asarray(array)
    ny, nx = a.shape[0] // tile, a.shape[1] // tile
    return a[:ny * tile, :nx * tile].reshape(ny, tile, nx, tile).swapaxes(1, 2).reshape(ny * nx, tile, tile)


def tile_stack(image: np.ndarray, tile: int) -> np.ndarray:
    """Cut ``image`` into whole ``tile`` x ``tile`` tiles, each with its mean removed.

    Parameters
    ----------
    image : (h, w) array
    tile : int
        Tile side in pixels; a remainder at the right and bottom edges is left out.

    Returns
    -------
    (k, tile, tile) float64 array
    """
    tiles = cut_tiles(np.asarray(image, dtype=np.float64), tile)
    if not len(tiles):
        raise ValueError(f"a {image.shape[0]} x {image.shape[1]} px image holds no {tile} px tile")
    return tiles - tiles.mean(axis=(1, 2), keepdims=True)


def _pooled(a: np.ndarray, b: np.ndarray) -> float:
    denominator = np.sqrt(np.einsum("kij,kij->", a, a) * np.einsum("kij,kij->", b, b))
    return float(np.einsum("kij,kij->", a, b) / denominator) if denominator > 0 else float("nan")


def pooled_ncc(tiles_a: np.ndarray, tiles_b: np.ndarray) -> float:
    """Normalised cross-correlation of two tiled slices, pooled over their tiles (NaN when flat)."""
    return _pooled(tiles_a, tiles_b)


def falloff_in_plane(tiles: np.ndarray, max_shift: int) -> np.ndarray:
    """Correlation of a tiled slice with itself shifted by 1 .. ``max_shift`` whole pixels.

    Parameters
    ----------
    tiles : (k, t, t) array from :func:`tile_stack`
    max_shift : int

    Returns
    -------
    (max_shift,) float64 array
        Entry ``s - 1`` is the mean of the pooled correlations at shift ``s`` along x and
        along y (within each tile).
    """
    out = np.empty(max_shift)
    for s in range(1, max_shift + 1):
        along_x = _pooled(tiles[:, :, :-s], tiles[:, :, s:])
        along_y = _pooled(tiles[:, :-s, :], tiles[:, s:, :])
        out[s - 1] = 0.5 * (along_x + along_y)
    return out


def distance_and_slope(falloff: np.ndarray, similarity: float) -> tuple[float, float]:
    """The in-plane distance at which ``falloff`` reaches ``similarity`` (pixels).

    The falloff is made non-increasing (a running minimum) and read by linear
    interpolation of its logarithm between whole-pixel shifts. Nearer than one pixel, where
    no whole-pixel shift measures it, the parabola through the logarithm at 1, 2 and 3 px
    is followed back to 0 px (a linear extension of the first segment instead where that
    parabola does not fall all the way from 0 to 1 px); a similarity at or above the
    parabola's value at 0 px (the noise's ceiling) is a distance of 0.

    Returns
    -------
    distance : float
        ``inf`` when ``similarity`` is at or below the falloff at its largest shift (as far
        or farther than measured), ``nan`` when it or the falloff cannot be read.
    slope : float
        How fast the log falloff drops per pixel there (0 beyond the measured range): a
        distance read where it is flat is poorly determined.
    """
    if not np.isfinite(similarity):
        return float("nan"), float("nan")
    if similarity <= 0:
        return float("inf"), 0.0
    log_c = np.minimum.accumulate(np.log(np.clip(falloff, 1e-9, None)))
    target = np.log(similarity)
    if target <= log_c[-1]:
        return float("inf"), 0.0
    if target < log_c[0]:
        k = int(np.searchsorted(-log_c, -target, side="right"))  # log_c[k - 1] >= target > log_c[k]
        drop = log_c[k - 1] - log_c[k]
        return float(k + (log_c[k - 1] - target) / drop), float(drop)
    return _below_one_pixel(log_c, target)


def _below_one_pixel(log_c: np.ndarray, target: float) -> tuple[float, float]:
    """Distance in [0, 1] px, and the falloff's slope there, for a log similarity at or above the one-pixel value."""
    if len(log_c) >= 3:
        a, b, c = np.polyfit([1.0, 2.0, 3.0], log_c[:3], 2)  # a d^2 + b d + c
        # Falling on [0, 1]: the derivative 2 a d + b is negative at both ends.
        if b < 0 and 2 * a + b < 0:
            if target >= c:
                return 0.0, float(-b)
            roots = np.roots([a, b, c - target])
            real = roots[np.isreal(roots)].real
            inside = real[(real >= 0) & (real <= 1 + 1e-9)]
            if inside.size:
                d = float(min(inside.min(), 1.0))
                return d, float(-(2 * a * d + b))
    slope = log_c[0] - log_c[1] if len(log_c) > 1 else 0.0
    if slope <= 0:
        return float("nan"), float("nan")
    return float(max(0.0, 1.0 - (target - log_c[0]) / slope)), float(slope)
