"""An even z grid through unevenly spaced aligned slices (``--z-spacing resample``).

Output slice ``k`` lies at depth ``k * step``; it is the linear blend of the two aligned
slices whose depths bracket it, ``(1 - w) * slice_i + w * slice_{i+1}``, each resampled from
its raw slice once (no image is interpolated twice in-plane). Labels take the nearer slice.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["GridSlice", "even_grid"]


@dataclass(frozen=True)
class GridSlice:
    """Output slice ``index`` at ``depth_nm``: ``(1 - weight) * below + weight * (below + 1)``."""

    index: int
    depth_nm: float
    below: int
    weight: float

    def members(self, order: str) -> list[tuple[int, float]]:
        """(aligned slice, weight) pairs this output slice is made of; one slice for ``nearest``."""
        if order == "nearest":
            return [(self.below + (1 if self.weight > 0.5 else 0), 1.0)]
        if self.weight == 0.0:
            return [(self.below, 1.0)]
        if self.weight == 1.0:
            return [(self.below + 1, 1.0)]
        return [(self.below, 1.0 - self.weight), (self.below + 1, self.weight)]


def even_grid(z_nm: np.ndarray, step_nm: float) -> list[GridSlice]:
    """The output slices of an even grid of ``step_nm`` from slice 0's depth to the last slice's.

    Parameters
    ----------
    z_nm : (n,) array
        Depth of each aligned slice, non-decreasing, slice 0 at 0.
    step_nm : float

    Returns
    -------
    list of GridSlice
    """
    z = np.asarray(z_nm, dtype=np.float64)
    if z.ndim != 1 or len(z) < 2:
        raise ValueError("an even z grid needs the depths of at least two slices")
    if np.any(np.diff(z) < 0) or not np.all(np.isfinite(z)):
        raise ValueError("slice depths must be finite and non-decreasing to resample along z")
    if step_nm <= 0:
        raise ValueError(f"z step: {step_nm} nm must be positive")
    count = int(np.floor((z[-1] - z[0]) / step_nm + 1e-9)) + 1
    out = []
    for k in range(count):
        depth = z[0] + k * step_nm
        below = int(min(np.searchsorted(z, depth, side="right") - 1, len(z) - 2))
        span = z[below + 1] - z[below]
        weight = float(np.clip((depth - z[below]) / span, 0.0, 1.0)) if span > 0 else 0.0
        out.append(GridSlice(k, float(depth), below, weight))
    return out
