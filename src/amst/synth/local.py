"""Non-uniform auto-focus distortions: a smooth local displacement of an irradiated region.

During auto-focus and auto-stigmation the beam dwells on part of the field; "differently
irradiated regions introduce relative displacements during image formation" (Hennies et
al. 2020). An affine captures the linear part of such a distortion; the rest is a local
jump. It is modelled as a Gaussian bump: the raw pixel ``r`` of an affected slice shows
the volume at ``G(r) + s * exp(-|r - c|^2 / (2 sigma^2))``, with ``G`` the slice's affine
ground-truth map, ``c`` the centre of the irradiated region (raw px), ``sigma`` its size
and ``s`` the displacement at its centre (volume px).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

#: The ``model`` name recorded in ``ground_truth.json``.
MODEL = "gaussian-bump"


@dataclass(frozen=True)
class LocalDistortion:
    """A Gaussian displacement bump in raw coordinates (see the module docstring)."""

    centre_xy: tuple[float, float]
    sigma_px: float
    shift_xy: tuple[float, float]

    def displacement(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Volume displacement (dx, dy) at raw positions ``x``, ``y`` (same dtype as ``x``)."""
        cx, cy = self.centre_xy
        bump = np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2.0 * self.sigma_px ** 2))
        return (self.shift_xy[0] * bump).astype(x.dtype, copy=False), (self.shift_xy[1] * bump).astype(x.dtype, copy=False)

    @property
    def amplitude_px(self) -> float:
        """Largest displacement (at the centre), volume px."""
        return float(np.hypot(*self.shift_xy))

    def to_json(self) -> dict[str, Any]:
        return {"model": MODEL, "centre_xy": [float(v) for v in self.centre_xy], "sigma_px": float(self.sigma_px),
                "shift_xy": [float(v) for v in self.shift_xy]}

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> LocalDistortion:
        if doc.get("model") != MODEL:
            raise ValueError(f"local distortion model {doc.get('model')!r} is not {MODEL!r}")
        return cls(tuple(doc["centre_xy"]), float(doc["sigma_px"]), tuple(doc["shift_xy"]))


def draw_local_distortions(events: list[list[int]], n_slices: int, shape_yx: tuple[int, int], *,
                           probability: float, shift_px: tuple[float, float], size: tuple[float, float],
                           region: float, seed: int) -> list[LocalDistortion | None]:
    """Which auto-focus events also distort locally, and how.

    Parameters
    ----------
    events : list of list of int
        The auto-focus events, each the run of slices it spans.
    n_slices : int
    shape_yx : tuple of int
        Raw slice shape.
    probability : float
        Chance that an event carries a local distortion.
    shift_px : (float, float)
        Range of the displacement at the bump's centre (volume px); its direction is uniform.
    size : (float, float)
        Range of ``sigma`` as a fraction of the smaller slice side.
    region : float
        The centre lies in the middle ``region`` fraction of the field (each axis).
    seed : int
        The stack's seed; the draw has its own stream so every other part of the
        acquisition is the same with and without local distortions.

    Returns
    -------
    list
        Per slice, its :class:`LocalDistortion` or None. The slices of one event share the
        bump; its amplitude decays along the event as the affine part does.
    """
    out: list[LocalDistortion | None] = [None] * n_slices
    if probability <= 0:
        return out
    rng = np.random.default_rng([seed, 6])
    h, w = shape_yx
    for run in events:
        hit, amp, angle = rng.random(), rng.uniform(*shift_px), rng.uniform(0, 2 * np.pi)
        sigma = rng.uniform(*size) * min(h, w)
        cx = w * (0.5 + region * (rng.random() - 0.5))
        cy = h * (0.5 + region * (rng.random() - 0.5))
        if hit >= probability:
            continue
        for k, z in enumerate(run):
            decay = 1.0 - 0.3 * min(k, 2)
            shift = (amp * decay * np.cos(angle), amp * decay * np.sin(angle))
            out[z] = LocalDistortion((float(cx), float(cy)), float(sigma), (float(shift[0]), float(shift[1])))
    return out


def raw_to_volume_points(affine: np.ndarray, local: LocalDistortion | None, raw_xy: np.ndarray) -> np.ndarray:
    """Volume positions (n, 2) shown by raw pixels ``raw_xy`` (n, 2): affine map plus local bump."""
    pts = np.asarray(raw_xy, np.float64)
    out = pts @ np.asarray(affine, np.float64)[:, :2].T + np.asarray(affine, np.float64)[:, 2]
    if local is not None:
        dx, dy = local.displacement(pts[:, 0], pts[:, 1])
        out = out + np.stack([dx, dy], axis=1)
    return out
