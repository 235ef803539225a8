"""How deep each slice of an aligned stack lies, from the images alone.

The model (:mod:`amst.zspacing.similarity`): in a statistically isotropic sample, two
aligned slices ``d`` apart along z are as similar as one slice and itself shifted ``d``
pixels in-plane. So every pair of slices up to ``max_gap`` apart is read as a distance:
their pooled tile correlation, looked up on the mean in-plane falloff of the two slices
(each slice calibrates itself: a blurred or noisy slice is as blurred in-plane as along z).
The distances are solved jointly and robustly for the depths (:mod:`amst.zspacing.solve`).

What the nominal step is needed for: the one global scale. With ``calibration="nominal"``
(the default) the depths are scaled so that the mean slice thickness is the nominal step;
the images decide only how the thickness varies from slice to slice. With
``calibration="in-plane"`` the images decide the scale too (in-plane pixel size times the
measured distances): right only when the sample and the imaging are isotropic, so amst
reports it as the *isotropy ratio* (image-based mean step / nominal step) in both modes.

Static structure is not sample: the platinum cap's marks, the canvas edge and dirt on the
detector look the same in every slice. Tiles still correlated over a long z gap are left
out before any distance is measured.

Accuracy (``benchmarks/z_spacing.py``, +-30 % smooth variation plus a double-thick and a
0.3-step slice, 3 seeds each of the phantom at 120 x 512^2 and real FIB-SEM content at
180 x 202^2): thickness RMS error about 0.10 step, double-thick slices within 21 %, but
0.3-step slices read 0.44-0.71 steps and the depths drift by about 1.2 steps RMS over the
stack. The content's own anisotropy, which changes with depth, is indistinguishable from a
change of thickness and dominates the error; it shrinks with the measured field.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable, Literal

import numpy as np

from ..imageops import finite_float32
from ..parallel import ordered_map
from .similarity import cut_tiles, distance_and_slope, falloff_in_plane, pooled_ncc, tile_stack
from .solve import PairDistances, solve_depths

__all__ = ["ZSpacingParams", "ZSpacing", "estimate_depths", "static_tiles"]

log = logging.getLogger(__name__)

#: Uncertainty of a pair's log similarity and the relative uncertainty of its distance
#: (:func:`pair_sigma`); the solve's robust residual scale rescales both to what the run measured.
SIGMA_LOG, SIGMA_RELATIVE = 0.01, 0.05
#: A falloff below this at one pixel measures no distance (the content is noise at this pixel size).
MIN_RULER = 0.2
#: Above this share of slice pairs that cannot be read as a distance the run warns.
MAX_UNREADABLE = 0.2
#: Below this correlation over the long gap a tile is not static, whatever its in-plane falloff (noise-only tiles).
STATIC_NCC = 0.3


@dataclass(frozen=True)
class ZSpacingParams:
    """How the depths are measured.

    ``max_gap``: slice pairs up to this many slices apart are measured (larger gaps lean
    more on the falloff's shape matching along z and in-plane). ``tile``: side of the
    tiles (px). ``region``: at most this side (px) of the covered area is measured, centred.
    ``calibration``: what sets the global scale (module docstring).
    """

    max_gap: int = 2
    tile: int = 16
    region: int = 1024
    calibration: Literal["nominal", "in-plane"] = "nominal"

    def __post_init__(self) -> None:
        if self.max_gap < 1:
            raise ValueError(f"z_spacing.max_gap: {self.max_gap} must be at least 1")
        if not 8 <= self.tile <= 256:
            raise ValueError(f"z_spacing.tile: {self.tile} px must be between 8 and 256")
        if self.region < 4 * self.tile:
            raise ValueError(f"z_spacing.region: {self.region} px must hold at least 4 tiles of {self.tile} px")
        if self.calibration not in ("nominal", "in-plane"):
            raise ValueError(f"z_spacing.calibration: {self.calibration!r}; use nominal or in-plane")


@dataclass(frozen=True)
class ZSpacing:
    """The estimated depth of every slice (slice 0 at 0) and what the estimate rests on."""

    z_nm: np.ndarray
    sd_nm: np.ndarray
    thickness_sd_nm: np.ndarray
    nominal_nm: float
    isotropy_ratio: float  # image-based mean step / nominal step
    params: ZSpacingParams
    measured: np.ndarray
    residual_scale: float
    outliers: float
    falloff_z: np.ndarray  # median pooled correlation at gap 1 .. max_gap
    falloff_z_nm: np.ndarray  # the median depth between those pairs
    falloff_xy: np.ndarray  # median in-plane correlation at shift 1 .. max_shift px
    pixel_nm: float
    tiles_used: int
    tiles_static: int
    unreadable_pairs: float  # share of the slice pairs that could not be read as a distance

    @property
    def calibration(self) -> str:
        """What set the global scale (``nominal`` or ``in-plane``)."""
        return self.params.calibration

    @property
    def thickness_nm(self) -> np.ndarray:
        """Depth from each slice to the next (n - 1 values)."""
        return np.diff(self.z_nm)

    def summary(self) -> dict[str, Any]:
        """The stack-level record of ``transforms.json`` (``z_spacing``)."""
        t = self.thickness_nm
        return {"nominal_nm": self.nominal_nm, "calibration": self.calibration, "max_gap": self.params.max_gap,
                "tile": self.params.tile, "region": self.params.region,
                "isotropy_ratio": self.isotropy_ratio, "mean_thickness_nm": float(t.mean()) if t.size else None,
                "thickness_range_nm": [float(t.min()), float(t.max())] if t.size else None,
                "thickness_sd_nm": self.thickness_sd_nm.tolist(),
                "residual_scale": self.residual_scale, "outliers": self.outliers,
                "unmeasured_slices": [int(z) for z in np.flatnonzero(~self.measured)],
                "tiles_used": self.tiles_used, "tiles_static": self.tiles_static,
                "unreadable_pairs": self.unreadable_pairs,
                "falloff": {"z_nm": self.falloff_z_nm.tolist(), "z_ncc": self.falloff_z.tolist(),
                            "xy_nm": (np.arange(1, len(self.falloff_xy) + 1) * self.pixel_nm).tolist(),
                            "xy_ncc": self.falloff_xy.tolist()}}


def additive_gap_scales(first: np.ndarray, second: np.ndarray, distance: np.ndarray, max_gap: int) -> np.ndarray:
    """Per gap g, the factor that makes gap-g distances add up like g consecutive gap-1 distances.

    Along z the similarity need not fall with exactly the in-plane shape, so a distance read
    over two slices can be systematically shorter or longer than the two one-slice distances
    it spans. Depths are additive; the median ratio over the stack (gap 1 is the reference)
    restores that before the solve.
    """
    scales = np.ones(max_gap + 1)
    one = {int(a): d for a, b, d in zip(first, second, distance) if b - a == 1}
    for g in range(2, max_gap + 1):
        ratios = []
        for a, b, d in zip(first, second, distance):
            if b - a != g or d <= 0:
                continue
            parts = [one.get(int(a) + k) for k in range(g)]
            if all(p is not None for p in parts):
                ratios.append(sum(parts) / d)
        if len(ratios) >= 5:
            scales[g] = float(np.median(ratios))
    return scales


def pair_sigma(distance_px: np.ndarray, slope: np.ndarray) -> np.ndarray:
    """Standard deviation of each pair distance (px), up to the scale the solve measures.

    A log-similarity uncertainty of :data:`SIGMA_LOG` read through the falloff's slope at
    the distance (where the falloff is flat, near 0 px and far out, a distance is poorly
    determined), plus :data:`SIGMA_RELATIVE` of the distance (content that is not quite
    isotropic errs in proportion).
    """
    return SIGMA_LOG / np.maximum(slope, 1e-3) + SIGMA_RELATIVE * distance_px


def _region(covered: np.ndarray, side: int) -> tuple[slice, slice]:
    """The largest square-ish window of at most ``side`` px centred in the covered box."""
    rows, cols = np.flatnonzero(covered.any(axis=1)), np.flatnonzero(covered.any(axis=0))
    if not rows.size:
        raise ValueError("no canvas pixel is covered by every slice; there is nothing to measure depths on")
    y0, y1, x0, x1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    cy, cx = (y0 + y1) // 2, (x0 + x1) // 2
    hy, hx = min(side, y1 - y0) // 2, min(side, x1 - x0) // 2
    return slice(cy - hy, cy + hy), slice(cx - hx, cx + hx)


def static_tiles(tiles_a: np.ndarray, tiles_b: np.ndarray) -> np.ndarray:
    """Tiles of two slices far apart in z that are more alike than either is to itself shifted by one
    pixel (and correlated at least :data:`STATIC_NCC`).

    Sample structure, even structure running along z, changes over a long gap more than
    over one in-plane pixel; the marks, the canvas edge and detector dirt do not change.
    """
    def ncc(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        num = np.einsum("kij,kij->k", a, b)
        den = np.sqrt(np.einsum("kij,kij->k", a, a) * np.einsum("kij,kij->k", b, b))
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), 0.0)

    def one_pixel(a: np.ndarray) -> np.ndarray:
        return 0.5 * (ncc(a[:, :, :-1], a[:, :, 1:]) + ncc(a[:, :-1, :], a[:, 1:, :]))

    far = ncc(tiles_a, tiles_b)
    return (far >= STATIC_NCC) & (far >= np.minimum(one_pixel(tiles_a), one_pixel(tiles_b)))


def estimate_depths(read: Callable[[int], np.ndarray], n: int, covered: np.ndarray, *, nominal_nm: float,
                    pixel_nm: float, params: ZSpacingParams = ZSpacingParams(), workers: int = 1,
                    progress: Callable[[int], None] | None = None) -> ZSpacing:
    """Estimate each slice's depth in an aligned stack.

    Parameters
    ----------
    read : callable
        ``read(z)`` returns aligned slice ``z`` (2-D, the canvas).
    n : int
        Number of slices.
    covered : (h, w) bool array
        Canvas pixels that every slice covers (:func:`amst.quality.residual.common_coverage`).
    nominal_nm, pixel_nm : float
        The nominal slice step and the in-plane pixel size.
    params : ZSpacingParams
    workers : int
        Threads reading and measuring slices.
    progress : callable, optional
        Called with 1 after each slice.

    Returns
    -------
    ZSpacing
    """
    if nominal_nm <= 0 or pixel_nm <= 0:
        raise ValueError(f"z spacing needs a positive nominal step and pixel size (got {nominal_nm} and "
                         f"{pixel_nm} nm); give the voxel size (--voxel-size Z Y X)")
    ys, xs = _region(covered, params.region)
    t = params.tile
    whole = cut_tiles(covered[ys, xs], t).reshape(-1, t * t).all(axis=1)  # tiles wholly covered
    step_px = nominal_nm / pixel_nm
    max_shift = int(min(t // 2, np.ceil(1.8 * params.max_gap * step_px) + 2))

    def tiled(z: int) -> np.ndarray | None:
        img = finite_float32(np.asarray(read(z))[ys, xs])
        tiles = tile_stack(img, t)[whole]
        return tiles if np.any(tiles) else None

    far = min(max(10, 8 * params.max_gap), n - 1)
    static = np.zeros(int(whole.sum()), dtype=bool)
    if far >= 4:
        for z in sorted({int(v) for v in np.linspace(0, n - 1 - far, min(5, n - far))}):
            a, b = tiled(z), tiled(z + far)
            if a is not None and b is not None:
                static |= static_tiles(a, b)
    if whole.sum() < 4:
        raise ValueError(f"the area every slice covers holds {int(whole.sum())} whole {t} px tiles; slice depths need "
                         "at least 4 (the slices overlap too little after alignment)")
    keep = ~static
    if keep.sum() < 4:
        raise ValueError(f"only {int(keep.sum())} of {len(keep)} measured tiles change with depth; the measured "
                         "area shows no sample structure to estimate slice depths from")

    def one(z: int) -> tuple[np.ndarray | None, np.ndarray | None]:
        tiles = tiled(z)
        if tiles is None:
            return None, None
        tiles = tiles[keep]
        return tiles, falloff_in_plane(tiles, max_shift)

    first, second, distance, slopes = [], [], [], []
    gap_ncc: dict[int, list[tuple[float, int, int]]] = {g: [] for g in range(1, params.max_gap + 1)}
    window: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    falloffs = []
    unreadable = 0
    for z, (tiles, falloff) in enumerate(ordered_map(one, range(n), max(1, workers))):
        if tiles is not None and np.all(np.isfinite(falloff)):
            falloffs.append(falloff)
            for g in range(1, params.max_gap + 1):
                if z - g in window:
                    other_tiles, other_falloff = window[z - g]
                    ncc = pooled_ncc(other_tiles, tiles)
                    ruler = 0.5 * (falloff + other_falloff)
                    d, slope = distance_and_slope(ruler, ncc) if ruler[0] >= MIN_RULER else (float("nan"), 0.0)
                    gap_ncc[g].append((ncc, z - g, z))
                    unreadable += not np.isfinite(d)
                    if np.isfinite(d):
                        first.append(z - g)
                        second.append(z)
                        distance.append(d)
                        slopes.append(slope)
            window[z] = (tiles, falloff)
        window.pop(z - params.max_gap, None)
        if progress:
            progress(1)
    first_a, second_a = np.asarray(first, dtype=np.int64), np.asarray(second, dtype=np.int64)
    distance_px = np.asarray(distance, dtype=np.float64)
    gap_scale = additive_gap_scales(first_a, second_a, distance_px, params.max_gap)
    distance_px = distance_px * gap_scale[second_a - first_a]
    if not len(distance_px):
        raise ValueError(f"none of the {sum(len(v) for v in gap_ncc.values())} slice pairs could be read as a "
                         "distance: the content changes faster along z than the in-plane falloff measures, or the "
                         "slices are blank")
    slope = np.asarray(slopes, dtype=np.float64) / gap_scale[second_a - first_a]  # per rescaled px
    pairs = PairDistances(first_a, second_a, distance_px, pair_sigma(distance_px, slope))
    solution = solve_depths(pairs, n, prior_step=step_px)
    depth_px = solution.depth
    if not depth_px[-1] > 0:
        raise ValueError(f"the measured depth of the last slice is {depth_px[-1]:.3g} px: the slices read as "
                         "identical; there is no thickness to scale")
    image_step_nm = depth_px[-1] / max(n - 1, 1) * pixel_nm
    isotropy = float(image_step_nm / nominal_nm)
    scale_nm = pixel_nm if params.calibration == "in-plane" else nominal_nm / (image_step_nm / pixel_nm)
    z_nm = depth_px * scale_nm
    falloff_z = np.array([np.median([v[0] for v in gap_ncc[g]]) if gap_ncc[g] else np.nan for g in gap_ncc])
    falloff_z_nm = np.array([np.median([z_nm[b] - z_nm[a] for _, a, b in gap_ncc[g]]) if gap_ncc[g] else np.nan
                             for g in gap_ncc])
    pair_count = sum(len(v) for v in gap_ncc.values())
    unreadable_share = unreadable / pair_count if pair_count else 1.0
    if unreadable_share > MAX_UNREADABLE:
        log.warning("z spacing: %.0f %% of the slice pairs could not be read as a distance (their similarity is "
                    "beyond what the in-plane falloff measures, up to %d px): the depths lean on the nominal-step "
                    "prior there; the content changes too fast along z for this step", 100 * unreadable_share,
                    max_shift)
    thin = np.flatnonzero(np.diff(z_nm) <= 0)
    if thin.size:
        log.warning("z spacing: slice(s) %s measured at or above the depth of the next slice (duplicated images?)",
                    ", ".join(str(int(z)) for z in thin[:10]))
    return ZSpacing(z_nm, solution.sd * scale_nm, solution.thickness_sd * scale_nm, float(nominal_nm), isotropy,
                    params, solution.measured, solution.residual_scale, solution.outliers, falloff_z, falloff_z_nm,
                    np.median(falloffs, axis=0) if falloffs else np.full(max_shift, np.nan), float(pixel_nm),
                    int(keep.sum()), int(static.sum()), float(unreadable_share))

