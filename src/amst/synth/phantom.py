"""An isotropic 3-D phantom that looks like resin-embedded tissue in FIB-SEM.

The phantom is a continuous function of volume position ``(x, y, z)`` (pixel units,
isotropic), so any slice can be sampled exactly under any affine map: that is what makes
the ground truth of :mod:`amst.synth` exact. Content, in inverted back-scatter contrast as
FIB-SEM data is usually shown: resin (light), cells packed as a 3-D Voronoi tessellation
with thin dark membranes and granular cytoplasm, nuclei with a double envelope and
heterochromatin, mitochondria (capsules with cristae), vesicle clusters, and a platinum cap
at the top with FIB-etched alignment marks that are fixed in space.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np
from scipy.ndimage import gaussian_filter
from scipy.spatial import cKDTree

from ..transform import apply_to_points, invert
from .local import LocalDistortion


@dataclass
class PhantomParams:
    """Geometry of the phantom, in volume pixels (isotropic)."""

    cell_size: float = 120.0
    resin_fraction: float = 0.08
    nucleus_fraction: float = 0.3
    mitos_per_cell: float = 2.5
    vesicle_clusters_per_cell: float = 1.5
    membrane_sigma: float = 1.3
    warp_z_scale: float = 45.0    # z length over which the membranes' bending changes
    cap_height: float = 0.15  # fraction of the image height taken by the platinum cap
    marks: bool = True
    texture_image: np.ndarray | None = field(default=None, repr=False)


def _smoothstep(signed_distance: np.ndarray, width: float = 0.8) -> np.ndarray:
    """Soft inside indicator (1 inside, 0 outside) of a signed distance (negative inside)."""
    return 1.0 / (1.0 + np.exp(np.clip(signed_distance / width, -30, 30)))


def _line(distance: np.ndarray, sigma: float) -> np.ndarray:
    return np.exp(-0.5 * (distance / sigma) ** 2)


class Phantom:
    """A reproducible EM-like volume of extent ``(depth, height, width)`` pixels.

    Parameters
    ----------
    extent_zyx : tuple of float
        Volume extent in isotropic pixels; content also exists around it (a margin), so
        slices shifted by drift are filled.
    seed : int
    params : PhantomParams
    """

    def __init__(self, extent_zyx: tuple[float, float, float], seed: int, params: PhantomParams | None = None):
        self.params = p = params or PhantomParams()
        self.extent = tuple(float(v) for v in extent_zyx)
        rng = np.random.default_rng([seed, 0])
        depth, height, width = self.extent
        margin = 2.0 * p.cell_size
        lo = np.array([-margin, -margin, -margin])
        hi = np.array([width + margin, height + margin, depth + margin])
        n_cells = max(8, int(np.prod(hi - lo) / p.cell_size ** 3 * 1.4))
        # Jittered-grid seeds give cells of similar size, as in tissue.
        self.seeds = rng.uniform(lo, hi, size=(n_cells, 3))
        self.seeds = self._relax(self.seeds, lo, hi, rng)
        self.tree = cKDTree(self.seeds)
        n = len(self.seeds)
        self.is_resin = rng.random(n) < p.resin_fraction
        self.cyto_level = rng.uniform(0.52, 0.68, n)
        self.cyto_texture = rng.uniform(0.02, 0.05, n)
        self.has_nucleus = (rng.random(n) < p.nucleus_fraction) & ~self.is_resin
        self.nucleus_radius = rng.uniform(0.28, 0.36, n) * p.cell_size
        self.nucleus_centre = self.seeds + rng.normal(0, 0.05 * p.cell_size, (n, 3))
        self.mitos = self._make_mitos(rng)
        self.vesicles = self._make_vesicles(rng)
        self.noise_planes = self._noise_volume(rng, 64, 24)
        self.cap_y = p.cap_height * height
        self.cap_wave = (rng.uniform(0.5, 1.5), rng.uniform(0, 2 * np.pi), 0.01 * height)
        self.marks = make_marks(rng, self.cap_y, width) if p.marks else []

    # -- construction -------------------------------------------------------------------
    @staticmethod
    def _relax(seeds: np.ndarray, lo: np.ndarray, hi: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Two Lloyd-like steps on random samples so cells are roughly equal in size."""
        for _ in range(2):
            samples = rng.uniform(lo, hi, size=(len(seeds) * 30, 3))
            _, idx = cKDTree(seeds).query(samples)
            sums = np.zeros_like(seeds)
            np.add.at(sums, idx, samples)
            counts = np.bincount(idx, minlength=len(seeds))[:, None]
            seeds = np.where(counts > 0, sums / np.maximum(counts, 1), seeds)
        return seeds

    def _make_mitos(self, rng: np.random.Generator) -> np.ndarray:
        """Capsules: rows of (x0, y0, z0, x1, y1, z1, radius, cristae phase)."""
        p = self.params
        rows = []
        for i, s in enumerate(self.seeds):
            if self.is_resin[i]:
                continue
            for _ in range(rng.poisson(p.mitos_per_cell)):
                direction = rng.normal(size=3)
                direction /= np.linalg.norm(direction)
                half = rng.uniform(0.12, 0.35) * p.cell_size
                offset = rng.normal(0, 0.22 * p.cell_size, 3)
                centre = s + offset
                if self.has_nucleus[i] and np.linalg.norm(centre - self.nucleus_centre[i]) < self.nucleus_radius[i] + 30:
                    centre = self.nucleus_centre[i] + (centre - self.nucleus_centre[i]) * 1.8
                r = rng.uniform(0.06, 0.1) * p.cell_size
                rows.append([*(centre - half * direction), *(centre + half * direction), r, rng.uniform(0, 6.3)])
        return np.array(rows, dtype=np.float64).reshape(-1, 8)

    def _make_vesicles(self, rng: np.random.Generator) -> np.ndarray:
        """Spheres: rows of (x, y, z, radius)."""
        p = self.params
        rows = []
        for i, s in enumerate(self.seeds):
            if self.is_resin[i]:
                continue
            for _ in range(rng.poisson(p.vesicle_clusters_per_cell)):
                centre = s + rng.normal(0, 0.25 * p.cell_size, 3)
                for _ in range(rng.integers(4, 14)):
                    rows.append([*(centre + rng.normal(0, 0.06 * p.cell_size, 3)), rng.uniform(0.018, 0.035) * p.cell_size])
        return np.array(rows, dtype=np.float64).reshape(-1, 4)

    @staticmethod
    def _noise_volume(rng: np.random.Generator, size: int, depth: int) -> np.ndarray:
        """A periodic, band-limited 3-D noise volume (depth, size, size), unit variance."""
        vol = gaussian_filter(rng.normal(size=(depth, size, size)), sigma=(1.2, 1.5, 1.5), mode="wrap")
        vol /= vol.std()
        return vol.astype(np.float32)

    # -- sampling -----------------------------------------------------------------------
    def _noise(self, x: np.ndarray, y: np.ndarray, z: float, scale: float, layer: int = 0,
               z_scale: float | None = None) -> np.ndarray:
        """Smooth 3-D noise at feature size ``scale`` px (``z_scale`` along z), sampled at (x, y, z)."""
        planes = self.noise_planes
        d, n, _ = planes.shape
        zf = z / (z_scale or scale) + 7.3 * layer
        z0 = int(np.floor(zf))
        w = np.float32(zf - z0)
        # cv2.remap's BORDER_WRAP only folds coordinates near the border, so wrap here.
        mx = np.mod(x / scale + 13.7 * layer, n).astype(np.float32)
        my = np.mod(y / scale + 5.1 * layer, n).astype(np.float32)
        a = cv2.remap(planes[z0 % d], mx, my, cv2.INTER_CUBIC, borderMode=cv2.BORDER_WRAP)
        b = cv2.remap(planes[(z0 + 1) % d], mx, my, cv2.INTER_CUBIC, borderMode=cv2.BORDER_WRAP)
        return (1 - w) * a + w * b

    def _texture_image(self, x: np.ndarray, y: np.ndarray, z: float) -> np.ndarray:
        """Real EM texture, moved along a slow smooth path in z so it evolves with depth."""
        img = self.params.texture_image
        shift_x = 40.0 * np.sin(z / 97.0) + 0.9 * z
        shift_y = 40.0 * np.cos(z / 131.0) + 0.4 * z
        tex = cv2.remap(img, (x + shift_x).astype(np.float32), (y + shift_y).astype(np.float32),
                        cv2.INTER_CUBIC, borderMode=cv2.BORDER_REFLECT_101)
        return (tex - img.mean()) / (img.std() + 1e-6)

    def _cells(self, x: np.ndarray, y: np.ndarray, z: float) -> tuple[np.ndarray, np.ndarray]:
        """Nearest-seed label and distance to the nearest cell boundary (bisector plane)."""
        step = 4
        xc, yc = x[::step, ::step], y[::step, ::step]
        pts = np.stack([xc.ravel(), yc.ravel(), np.full(xc.size, z)], axis=1)
        _, cand = self.tree.query(pts, k=4)
        cand = cand.reshape(*xc.shape, 4)
        cand = np.repeat(np.repeat(cand, step, axis=0), step, axis=1)[: x.shape[0], : x.shape[1]]
        s = self.seeds[cand]  # (h, w, 4, 3)
        d2 = (s[..., 0] - x[..., None]) ** 2 + (s[..., 1] - y[..., None]) ** 2 + (s[..., 2] - z) ** 2
        order = np.argsort(d2, axis=-1)[..., :2]
        first = np.take_along_axis(d2, order[..., :1], -1)[..., 0]
        second = np.take_along_axis(d2, order[..., 1:2], -1)[..., 0]
        l1 = np.take_along_axis(cand, order[..., :1], -1)[..., 0]
        l2 = np.take_along_axis(cand, order[..., 1:2], -1)[..., 0]
        sep = np.linalg.norm(self.seeds[l1] - self.seeds[l2], axis=-1)
        boundary = (second - first) / (2.0 * np.maximum(sep, 1e-6))
        return l1, boundary

    def render(self, raw_to_volume: np.ndarray, z: float, shape_yx: tuple[int, int],
               local: LocalDistortion | None = None) -> np.ndarray:
        """Sample the clean phantom for one raw slice.

        Parameters
        ----------
        raw_to_volume : (2, 3) array
            Affine mapping a raw pixel (x, y) to volume (x, y), the ground-truth map.
        z : float
            Volume depth of the slice (isotropic pixels).
        shape_yx : tuple of int
        local : LocalDistortion, optional
            A local displacement added to the affine map (a non-uniform auto-focus event).

        Returns
        -------
        numpy.ndarray
            float32 image, intensities in about [0, 1] (0 dark, 1 bright).
        """
        p = self.params
        h, w = shape_yx
        m = raw_to_volume
        gy, gx = np.mgrid[0:h, 0:w].astype(np.float32)
        x = (m[0, 0] * gx + m[0, 1] * gy + m[0, 2]).astype(np.float32)
        y = (m[1, 0] * gx + m[1, 1] * gy + m[1, 2]).astype(np.float32)
        reach = 0.0
        if local is not None:
            dx, dy = local.displacement(gx, gy)
            x, y, reach = x + dx, y + dy, local.amplitude_px

        # A smooth domain warp bends the Voronoi facets into curved membranes.
        bend = 0.25 * p.cell_size
        zs = p.warp_z_scale
        label, boundary = self._cells(x + bend * self._noise(x, y, z, 45.0, 2, zs),
                                      y + bend * self._noise(x, y, z, 45.0, 3, zs), z)
        resin = self.is_resin[label]
        fine = self._noise(x, y, z, 2.5, 0)
        blotch = self._noise(x, y, z, 14.0, 1)
        img = self.cyto_level[label].astype(np.float32)
        tex_amp = self.cyto_texture[label].astype(np.float32)
        if p.texture_image is not None:
            img += tex_amp * 1.2 * self._texture_image(x, y, z)
        else:
            img += tex_amp * fine + 0.05 * blotch
        img = np.where(resin, 0.86 + 0.015 * fine, img)
        img -= 0.42 * _line(boundary, p.membrane_sigma) * (1 - 0.5 * resin)

        self._draw_nuclei(img, x, y, z, label, fine, blotch)
        self._draw_mitos(img, x, y, z, m, (h, w), reach)
        self._draw_vesicles(img, x, y, z, m, (h, w), reach)
        self._draw_cap(img, x, y, fine)
        return img

    def _bbox(self, m: np.ndarray, shape: tuple[int, int], lo_xy: np.ndarray, hi_xy: np.ndarray) -> tuple[slice, slice] | None:
        """Raw-pixel window covering the volume box [lo, hi] (x, y), or None if outside."""
        corners = np.array([[lo_xy[0], lo_xy[1]], [hi_xy[0], lo_xy[1]], [lo_xy[0], hi_xy[1]], [hi_xy[0], hi_xy[1]]])
        raw = apply_to_points(invert(m), corners)
        x0, y0 = np.floor(raw.min(0)).astype(int) - 2
        x1, y1 = np.ceil(raw.max(0)).astype(int) + 3
        h, w = shape
        x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
        if x0 >= x1 or y0 >= y1:
            return None
        return slice(y0, y1), slice(x0, x1)

    def _draw_nuclei(self, img, x, y, z, label, fine, blotch) -> None:
        cells = np.unique(label)
        for c in cells[self.has_nucleus[cells]]:
            cx, cy, cz = self.nucleus_centre[c]
            r = self.nucleus_radius[c]
            if abs(z - cz) >= r:
                continue
            r2d = np.sqrt(r * r - (z - cz) ** 2)
            region = np.hypot(x - cx, y - cy) - r2d  # signed distance in-plane (approximate)
            mask = (label == c) & (region < 6)
            if not mask.any():
                continue
            d = region[mask]
            inside = _smoothstep(d, 0.9)
            chromatin = np.clip(0.6 * blotch[mask] + 0.4 * fine[mask] - 0.3, 0, None)
            hetero = 0.1 * inside * (chromatin + np.exp(-np.maximum(-d, 0) / 8.0))
            envelope = 0.3 * (_line(d - 1.5, 1.0) + _line(d + 2.5, 1.0))
            img[mask] = img[mask] * (1 - 0.12 * inside) - hetero - envelope

    def _draw_mitos(self, img, x, y, z, m, shape, reach) -> None:
        if not len(self.mitos):
            return
        a, b, r = self.mitos[:, 0:3], self.mitos[:, 3:6], self.mitos[:, 6]
        zlo, zhi = np.minimum(a[:, 2], b[:, 2]) - r, np.maximum(a[:, 2], b[:, 2]) + r
        for i in np.flatnonzero((zlo < z) & (zhi > z)):
            lo = np.minimum(a[i, :2], b[i, :2]) - r[i] - 3 - reach
            hi = np.maximum(a[i, :2], b[i, :2]) + r[i] + 3 + reach
            win = self._bbox(m, shape, lo, hi)
            if win is None:
                continue
            px, py = x[win], y[win]
            ab = b[i] - a[i]
            t = ((px - a[i, 0]) * ab[0] + (py - a[i, 1]) * ab[1] + (z - a[i, 2]) * ab[2]) / (ab @ ab)
            tc = np.clip(t, 0, 1)
            dist = np.sqrt((px - a[i, 0] - tc * ab[0]) ** 2 + (py - a[i, 1] - tc * ab[1]) ** 2
                           + (z - a[i, 2] - tc * ab[2]) ** 2) - r[i]
            inside = _smoothstep(dist, 0.8)
            along = t * np.linalg.norm(ab)
            cristae = 0.5 + 0.5 * np.cos(2 * np.pi * along / 11.0 + self.mitos[i, 7])
            cristae *= _smoothstep(dist + 3.5, 1.0)
            sub = img[win]
            sub[...] = sub * (1 - 0.45 * inside) - 0.18 * cristae * inside - 0.3 * _line(dist, 1.1)

    def _draw_vesicles(self, img, x, y, z, m, shape, reach) -> None:
        if not len(self.vesicles):
            return
        c, r = self.vesicles[:, :3], self.vesicles[:, 3]
        for i in np.flatnonzero(np.abs(c[:, 2] - z) < r):
            r2d = np.sqrt(r[i] ** 2 - (z - c[i, 2]) ** 2)
            win = self._bbox(m, shape, c[i, :2] - r2d - 3 - reach, c[i, :2] + r2d + 3 + reach)
            if win is None:
                continue
            dist = np.hypot(x[win] - c[i, 0], y[win] - c[i, 1]) - r2d
            sub = img[win]
            sub[...] = sub + 0.08 * _smoothstep(dist, 0.7) - 0.28 * _line(dist, 0.9)

    def _draw_cap(self, img, x, y, fine) -> None:
        draw_cap(img, x, y, fine, cap_y=self.cap_y, wave=self.cap_wave, marks=self.marks, width=self.extent[2])


def make_marks(rng: np.random.Generator, cap_y: float, width: float) -> list[tuple[float, float, float, float, float]]:
    """FIB-etched marks in a cap of height ``cap_y``: line segments (x0, y0, x1, y1, half_width), fixed in z."""
    top, bottom = 0.3 * cap_y, 0.85 * cap_y
    marks = []
    x = 0.08 * width
    while x < 0.92 * width:
        kind = rng.integers(0, 3)
        hw = rng.uniform(1.2, 2.5)
        if kind == 0:  # chevron
            dx = rng.uniform(0.2, 0.5) * (bottom - top)
            marks.append((x, bottom, x + dx, top, hw))
            marks.append((x + 2 * dx, bottom, x + dx, top, hw))
            x += 2 * dx
        elif kind == 1:  # slanted line
            dx = rng.uniform(-0.6, 0.6) * (bottom - top)
            marks.append((x, bottom, x + dx, top, hw))
            x += abs(dx)
        else:  # cross
            d = rng.uniform(0.25, 0.45) * (bottom - top)
            cy = 0.5 * (top + bottom)
            marks.append((x, cy - d, x + 2 * d, cy + d, hw))
            marks.append((x, cy + d, x + 2 * d, cy - d, hw))
            x += 2 * d
        x += rng.uniform(0.03, 0.1) * width
    return marks


def draw_cap(img: np.ndarray, x: np.ndarray, y: np.ndarray, fine: np.ndarray | float, *, cap_y: float,
             wave: tuple[float, float, float], marks: list, width: float) -> None:
    """Paint, in place, a platinum cap above a wavy sample surface at volume height ``cap_y``.

    ``x``, ``y``: the volume position of every pixel of ``img``; ``fine``: fine noise of the
    same shape (or 0); ``wave``: (frequency, phase, amplitude) of the surface; ``marks``: from
    :func:`make_marks`, filled with insulator (darker).
    """
    freq, phase, amp = wave
    rows = np.flatnonzero(y.min(axis=1) < cap_y + amp + 12.0)
    if not len(rows):
        return
    band = slice(0, rows[-1] + 1)
    x, y, sub = x[band], y[band], img[band]
    fine = fine[band] if isinstance(fine, np.ndarray) else fine
    surface = cap_y + amp * np.sin(2 * np.pi * freq * x / width + phase)
    above = _smoothstep(y - surface, 1.0)  # 1 in the cap
    protect = _line(y - surface + 4.0, 2.5)  # thin carbon layer under the platinum
    cap = 0.97 + 0.02 * fine
    for x0, y0, x1, y1, hw in marks:
        vx, vy = x1 - x0, y1 - y0
        length2 = vx * vx + vy * vy
        t = np.clip(((x - x0) * vx + (y - y0) * vy) / length2, 0, 1)
        d = np.hypot(x - x0 - t * vx, y - y0 - t * vy) - hw
        cap = cap - 0.62 * _smoothstep(d, 0.6)
    sub[...] = sub * (1 - above) + cap * above - 0.35 * protect
