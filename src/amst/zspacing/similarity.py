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

__all__ = ["tile_stack", "falloff_in_plane", "pooled_ncc", "distance_from_similarity"]


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
    img = np.asarray(image, dtype=np.float64)
    ny, nx = img.shape[0] // tile, img.shape[1] // tile
    if ny == 0 or nx == 0:
        raise ValueError(f"a {img.shape[0]} x {img.shape[1]} px image holds no {tile} px tile")
    tiles = img[:ny * tile, :nx * tile].reshape(ny, tile, nx, tile).swapaxes(1, 2).reshape(ny * nx, tile, tile)
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


def distance_from_similarity(falloff: np.ndarray, similarity: float, *, shortest: float = 0.5) -> float:
    """The in-plane distance at which ``falloff`` reaches ``similarity`` (pixels).

    The falloff is made non-increasing (a running minimum) and read by linear
    interpolation of its logarithm between whole-pixel shifts. Above the one-pixel value the
    first segment is extended, down to ``shortest`` px: nearer than that a noisy falloff
    says too little.

    Returns
    -------
    float
        The distance; ``nan`` when ``similarity`` is above what ``shortest`` allows or not
        finite, ``inf`` when it is below the falloff at its largest shift (farther than
        measured).
    """
    if not np.isfinite(similarity) or similarity <= 0:
        return float("inf") if np.isfinite(similarity) else float("nan")
    log_c = np.minimum.accumulate(np.log(np.clip(falloff, 1e-9, None)))
    target = np.log(similarity)
    if target <= log_c[-1]:
        return float("inf")
    if target >= log_c[0]:
        slope = log_c[0] - log_c[1] if len(log_c) > 1 else 0.0
        if slope <= 0:
            return float("nan")
        d = 1.0 - (target - log_c[0]) / slope
        return float(d) if d >= shortest else float("nan")
    k = int(np.searchsorted(-log_c, -target, side="right"))  # log_c[k - 1] >= target > log_c[k]
    return float(k + (log_c[k - 1] - target) / (log_c[k - 1] - log_c[k]))
