"""Real content for ``amst synth --from-volume``: an aligned stack sampled as a continuous volume.

The aligned stack (any format :func:`amst.stack.open_stack` reads) is the ground-truth frame:
volume pixel ``(x, y)`` of depth ``z`` is the stack's pixel ``(x + ox, y + oy)`` of source
slice ``z / source_step``, where ``(ox, oy)`` centres the raw field of view in the source
(so drift has real content around it) and ``source_step`` is the source's own z spacing in
xy pixels. In-plane the content is a cubic B-spline of each source slice (exact at the
pixels, no coordinate quantisation), mirrored beyond the source's edges; along z it is the
Catmull-Rom cubic through the four nearest source slices (the source slice itself when the
depth falls on one). The sample's own lateral motion from slice to slice, which real tissue
has and no acquisition model should remove, is therefore the source's.

Optionally the top of the field carries the phantom's platinum cap with FIB-etched marks
fixed in space (:func:`amst.synth.phantom.draw_cap`), so template matching on marks can be
benchmarked on real content.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy.ndimage import map_coordinates, spline_filter

from ..stack import Stack, StackError, open_stack
from .local import LocalDistortion
from .phantom import draw_cap, make_marks

__all__ = ["VolumeContent", "open_source_volume", "source_step_px", "volume_defaults"]

#: Intensity percentiles of the source mapped to 0.05 and 0.95 of the phantom's range.
_PERCENTILES = (0.5, 99.5)


def open_source_volume(path: str | Path) -> Stack:
    """Open an aligned stack as the content of a synthetic stack, with a clear error."""
    try:
        return open_stack(path)
    except StackError as exc:
        raise StackError(f"--from-volume {path}: {exc}") from exc
    except (OSError, ValueError) as exc:
        raise StackError(f"--from-volume {path}: cannot be read as a stack ({exc}); give an aligned stack "
                         "amst can read (TIFF folder or file, OME-Zarr, Zarr, N5, HDF5, MRC)") from exc


def source_step_px(source: Stack) -> float:
    """The source's z spacing in its own xy pixels (1 when its voxel size is unknown)."""
    vs = source.voxel_size
    return float(vs.z / vs.x) if vs is not None and vs.x > 0 else 1.0


class VolumeContent:
    """An aligned real stack as a continuous function of volume position.

    Parameters
    ----------
    path : path
        The aligned stack.
    shape : (n, h, w)
        The synthetic stack's shape; its field of view is centred in the source's.
    z_step : float
        Volume depth between synthetic slices, in xy pixels.
    marks : bool
        Paint a platinum cap with FIB-etched marks over the top ``cap_height`` of the field.
    seed : int
        Draws the cap's marks and surface.
    cap_height : float
        Fraction of the field's height taken by the cap.
    last_depth : float, optional
        Depth of the last slice in xy pixels, when the slices are not evenly spaced
        (:mod:`amst.synth.milling`); by default ``(n - 1) * z_step``.

    Raises
    ------
    StackError
        When the synthetic stack would need more depth or area than the source has.
    """

    def __init__(self, path: str | Path, shape: tuple[int, int, int], z_step: float, *, marks: bool, seed: int,
                 cap_height: float = 0.15, last_depth: float | None = None):
        self.path = str(path)
        self.source = open_source_volume(path)
        n, h, w = shape
        depth, src_h, src_w = self.source.shape
        self.source_step = source_step_px(self.source)
        self.z_step = float(z_step)
        even = last_depth is None
        last = ((n - 1) * self.z_step if even else float(last_depth)) / self.source_step
        if last > depth - 1 + 1e-9:
            most = int(np.floor((depth - 1) * self.source_step / self.z_step + 1e-9)) + 1
            spacing = f"{self.z_step:g} px apart" if even else "milled unevenly (--z-variation)"
            raise StackError(f"--from-volume {path}: {n} slices {spacing} need {last + 1:.1f} source "
                             f"slices, it has {depth}; ask for " + (f"at most {most} slices (--shape)" if even else
                                                                    "fewer slices (--shape)")
                             + " or a smaller z step (--voxel-size)")
        if h > src_h or w > src_w:
            raise StackError(f"--from-volume {path}: slices of {h} x {w} px do not fit in its {src_h} x {src_w} px; "
                             f"ask for at most {src_h} x {src_w} (--shape), less to leave room for drift")
        self.offset_xy = ((src_w - w) / 2.0, (src_h - h) / 2.0)
        self.extent = (n * self.z_step, float(h), float(w))
        lo, hi = self._intensity_range()
        self._scale = 0.9 / max(hi - lo, 1e-12)
        self._lo = lo
        self.cap_y = cap_height * h
        rng = np.random.default_rng([seed, 5])
        self.cap_wave = (rng.uniform(0.5, 1.5), rng.uniform(0, 2 * np.pi), 0.01 * h)
        self.marks = make_marks(rng, self.cap_y, float(w)) if marks else []
        self.has_cap = marks

    def _intensity_range(self) -> tuple[float, float]:
        """Percentiles of a few source slices: the source's contrast, robust to outliers."""
        depth = len(self.source)
        picks = sorted({int(round(v)) for v in np.linspace(0, depth - 1, min(depth, 9))})
        values = np.concatenate([np.asarray(self.source.read(z), np.float32).ravel()[::7] for z in picks])
        values = values[np.isfinite(values)]
        if not values.size:
            raise StackError(f"--from-volume {self.path}: holds no finite pixel values")
        lo, hi = np.percentile(values, _PERCENTILES)
        if hi <= lo:
            raise StackError(f"--from-volume {self.path}: is flat (one intensity); it has no content to align")
        return float(lo), float(hi)

    def _source_weights(self, z: float) -> list[tuple[int, float]]:
        """(source slice, weight) pairs of the Catmull-Rom cubic at volume depth ``z``."""
        zs = z / self.source_step
        last = len(self.source) - 1
        k = int(np.floor(zs + 1e-9))
        t = zs - k
        if t < 1e-9:
            return [(min(max(k, 0), last), 1.0)]
        weights = (-0.5 * t ** 3 + t ** 2 - 0.5 * t, 1.5 * t ** 3 - 2.5 * t ** 2 + 1.0,
                   -1.5 * t ** 3 + 2.0 * t ** 2 + 0.5 * t, 0.5 * t ** 3 - 0.5 * t ** 2)
        out: dict[int, float] = {}
        for j, wgt in zip(range(k - 1, k + 3), weights):
            idx = -j if j < 0 else (2 * last - j if j > last else j)  # mirrored at the source's ends
            out[idx] = out.get(idx, 0.0) + wgt
        return list(out.items())

    def render(self, raw_to_volume: np.ndarray, z: float, shape_yx: tuple[int, int],
               local: LocalDistortion | None = None) -> np.ndarray:
        """Sample the content for one raw slice.

        Parameters
        ----------
        raw_to_volume : (2, 3) array
            Maps a raw pixel (x, y) to volume (x, y): the ground-truth map.
        z : float
            Volume depth of the slice (xy pixels).
        shape_yx : tuple of int
        local : LocalDistortion, optional
            A local displacement added to the affine map (a non-uniform auto-focus event).

        Returns
        -------
        numpy.ndarray
            float32 image, intensities in about [0, 1] (the source's 0.5 and 99.5
            percentiles at 0.05 and 0.95).
        """
        h, w = shape_yx
        m = np.asarray(raw_to_volume, np.float64)
        gy, gx = np.mgrid[0:h, 0:w].astype(np.float64)
        x = m[0, 0] * gx + m[0, 1] * gy + m[0, 2]
        y = m[1, 0] * gx + m[1, 1] * gy + m[1, 2]
        if local is not None:
            dx, dy = local.displacement(gx, gy)
            x, y = x + dx, y + dy
        coords = np.stack([y + self.offset_xy[1], x + self.offset_xy[0]])
        img = np.zeros((h, w), np.float64)
        for idx, weight in self._source_weights(z):
            plane = spline_filter(np.asarray(self.source.read(idx), np.float64), order=3, mode="mirror")
            img += weight * map_coordinates(plane, coords, order=3, mode="mirror", prefilter=False)
        out = ((img - self._lo) * self._scale + 0.05).astype(np.float32)
        if self.has_cap:
            draw_cap(out, x.astype(np.float32), y.astype(np.float32), 0.0, cap_y=self.cap_y, wave=self.cap_wave,
                     marks=self.marks, width=self.extent[2])
        return out


#: Pixels kept between the default field of view and the source's edges, for drift.
DEFAULT_MARGIN_PX = 24


def volume_defaults(path: str | Path, voxel_size_zyx: tuple[float, float, float] | None = None
                    ) -> tuple[tuple[int, int, int], tuple[float, float, float]]:
    """The default shape and voxel size of a stack synthesised from ``path``.

    The voxel size is the source's (1 nm in each axis when it has none), so each synthetic
    slice is one source slice; the shape takes every slice the depth allows and the source's
    slice less a margin on each side (:data:`DEFAULT_MARGIN_PX`, at most 1/8 of the side).
    """
    source = open_source_volume(path)
    depth, h, w = source.shape
    if voxel_size_zyx is None:
        vs = source.voxel_size
        voxel_size_zyx = (vs.z, vs.y, vs.x) if vs is not None else (1.0, 1.0, 1.0)
    z_step = voxel_size_zyx[0] / voxel_size_zyx[2]
    n = int(np.floor((depth - 1) * source_step_px(source) / z_step + 1e-9)) + 1
    margin = min(DEFAULT_MARGIN_PX, min(h, w) // 8)
    return (n, h - 2 * margin, w - 2 * margin), tuple(float(v) for v in voxel_size_zyx)
