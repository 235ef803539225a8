"""Uneven milling: the true depth of every slice of a synthetic stack (``amst synth --z-variation``).

A FIB mills a nominal step between two images, but the slices it leaves vary in thickness
(the paper's Discussion: up to 50 % of the step). The model: the thickness of slice ``z``
(the depth from slice ``z`` to slice ``z + 1``) is the nominal step times
``1 + amplitude * v(z)``, where ``v`` is smooth random variation along z scaled to a
largest magnitude of 1 and a mean of 0 (Gaussian-filtered white noise, correlation length
``length`` slices), and on ``events`` slices spread over the stack an abrupt change: the
thickness becomes :data:`THICK` or :data:`THIN` times the nominal step (a double-thick or a
very thin slice), alternating. Slice 0 is at depth 0.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy.ndimage import gaussian_filter1d

__all__ = ["MillingParams", "slice_depths", "THICK", "THIN"]

#: Thickness of an abrupt double-thick slice, in nominal steps.
THICK = 2.0
#: Thickness of an abrupt very thin slice, in nominal steps.
THIN = 0.3


@dataclass(frozen=True)
class MillingParams:
    """Uneven slice thickness; see the module docstring for the model."""

    amplitude: float = 0.3
    length: float = 12.0
    events: int = 2

    def __post_init__(self) -> None:
        if not 0.0 <= self.amplitude <= 0.5:
            raise ValueError(f"z_variation: {self.amplitude} must be between 0 and 0.5 (a fraction of the step; "
                             "the paper reports up to 50 %)")
        if self.length < 1.0:
            raise ValueError(f"z_variation length: {self.length} must be at least 1 slice")
        if self.events < 0:
            raise ValueError(f"z_variation events: {self.events} must not be negative")

    def to_dict(self) -> dict:
        return asdict(self)


def event_slices(n_slices: int, events: int, rng: np.random.Generator) -> np.ndarray:
    """Where the abrupt events fall: one per equal part of the stack, away from its ends and each other."""
    if events == 0 or n_slices < 8:
        return np.zeros(0, dtype=int)
    edges = np.linspace(4, n_slices - 5, events + 1)
    picks = []
    for a, b in zip(edges[:-1], edges[1:]):
        lo, hi = int(np.ceil(a)) + 1, int(np.floor(b)) - 1  # a slice between events stays even
        picks.append(int(rng.integers(lo, hi + 1)) if hi >= lo else int(round((a + b) / 2)))
    return np.unique(np.clip(picks, 4, n_slices - 5))


def slice_depths(n_slices: int, step: float, params: MillingParams, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Draw the true depth of each slice.

    Parameters
    ----------
    n_slices : int
    step : float
        The nominal step between slices (any length unit; the depths come in the same).
    params : MillingParams
    seed : int
        The stack's seed; the milling has its own random stream, so the rest of the
        acquisition does not change.

    Returns
    -------
    depths : (n_slices,) float64
        Depth of each slice, slice 0 at 0.
    events : (k,) int
        Slices whose thickness (depth to the next slice) is an abrupt event.
    """
    rng = np.random.default_rng([seed, 7])
    gaps = max(n_slices - 1, 0)
    smooth = gaussian_filter1d(rng.normal(size=gaps + 1), params.length, mode="reflect")[:gaps] if gaps else np.zeros(0)
    if gaps:
        smooth = smooth - smooth.mean()
        smooth = smooth / max(np.abs(smooth).max(), 1e-12)
    thickness = step * (1.0 + params.amplitude * smooth)
    events = event_slices(n_slices, params.events, rng)
    for k, z in enumerate(events):
        thickness[z] = step * (THICK if k % 2 == 0 else THIN)
    return np.concatenate([[0.0], np.cumsum(thickness)]), events
