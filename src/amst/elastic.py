"""Which local residuals are distortions: the elastic fields of a stack, decided across z.

Each registered slice comes with the local displacements its affine left against its
median template (:func:`amst.local_residual.local_residual`). Two things make them: a
distortion of the slice itself (an auto-focus event displacing an irradiated region), and
the template's content mismatch — structures that move laterally with depth, which are
the sample and must not be "aligned away" (the paper's Supplementary Fig. S1). They differ
along z. The sample changes smoothly from slice to slice, so the content mismatch of a
slice is shared by its neighbours; a distortion belongs to one slice (or to the 2-3
slices of one event). Hence, per node:

1. *Spike*: the slice's displacement minus the median of its ``radius`` neighbours' on
   each side (a median: an event's other slices do not pull it). The sample's own motion
   and a smooth content mismatch cancel here.
2. *Significance*: the stack's own spread of spikes at that node (robust: from the median
   squared spike, which a few events do not move; floored at half the stack's median and
   at the node's own measurement error) gives ``sigma``. A spike is kept only above
   ``significance * sigma`` and above ``min_shift_px``, shrunk by the non-negative garrote
   ``s * max(0, 1 - t^2 / |s|^2)``: no jump at the threshold, and large distortions are
   kept nearly whole.
3. A slice gets a field only when at least ``min_nodes`` nodes are kept and it was
   registered (status ``ok``).

A stack without distortions thus gets no fields (only the rare false alarm above the
threshold, shrunk to almost nothing), whatever its content does along z.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np

from .field import FieldGrid
from .local_residual import NodeShifts

#: Median of a chi-square with 2 degrees of freedom: |s|^2 / sigma^2 of a 2-D Gaussian spike.
_CHI2_2_MEDIAN = 2.0 * math.log(2.0)


@dataclass
class ElasticParams:
    """The elastic stage (``register.elastic``): off by default.

    Attributes
    ----------
    enabled : bool
    grid_spacing_px : float
        Node spacing on the output canvas in px; 0 chooses 1/16 of the canvas's shorter
        side, at least 24 px.
    radius : int
        Neighbours on each side the spike is measured against; 0: the template's radius.
    significance : float
        A spike is kept above this many of its node's robust sigma.
    min_shift_px : float
        ... and above this many px.
    min_nodes : int
        Kept nodes a slice needs for a field.
    iterations : int
        Lucas-Kanade iterations per slice.
    """

    enabled: bool = False
    grid_spacing_px: float = 0.0
    radius: int = 0
    significance: float = 6.0
    min_shift_px: float = 0.15
    min_nodes: int = 4
    iterations: int = 2

    def spacing(self, canvas_shape_yx: tuple[int, int]) -> float:
        """The node spacing for this canvas (px)."""
        if self.grid_spacing_px:
            return float(self.grid_spacing_px)
        return float(max(24, min(int(v) for v in canvas_shape_yx) // 16))

    def grid(self, canvas_shape_yx: tuple[int, int]) -> FieldGrid:
        """The node grid of this canvas's fields (where they are measured and stored)."""
        return FieldGrid.covering(canvas_shape_yx, self.spacing(canvas_shape_yx))


@dataclass
class ElasticDecision:
    """The fields of a stack and what decided them.

    Attributes
    ----------
    fields : dict of int to (gh, gw, 2) array
        Slices that get a field: displacement in raw px at the nodes.
    spikes : (n, gh, gw, 2) array
        Each slice's displacement less its neighbours' median (NaN where not measured).
    sigma : (gh, gw) array
        Each node's robust spread of spikes across the stack (px).
    kept_nodes : (n,) int array
        Nodes above the threshold per slice.
    """

    fields: dict[int, np.ndarray]
    spikes: np.ndarray
    sigma: np.ndarray
    kept_nodes: np.ndarray


def elastic_fields(shifts: list[NodeShifts | None], registered: np.ndarray, *, radius: int, significance: float,
                   min_shift_px: float, min_nodes: int) -> ElasticDecision:
    """The displacement field of each slice that has a significant local distortion.

    Parameters
    ----------
    shifts : list of NodeShifts or None
        Each slice's local residual (None where it was not measured).
    registered : (n,) bool array
        Slices whose registration was kept (only they may get a field).
    radius : int
        Neighbours on each side.
    significance, min_shift_px, min_nodes : see :class:`ElasticParams`.

    Returns
    -------
    ElasticDecision
    """
    n = len(shifts)
    shape = next((s.values.shape for s in shifts if s is not None), None)
    if shape is None:
        return ElasticDecision({}, np.zeros((n, 0, 0, 2)), np.zeros((0, 0)), np.zeros(n, int))
    values = np.full((n, *shape), np.nan)
    sd = np.full((n, *shape[:2]), np.inf)
    for z, s in enumerate(shifts):
        if s is not None and registered[z]:
            values[z] = np.where(s.valid[..., None], s.values, np.nan)
            sd[z] = s.sd
    spikes = np.full_like(values, np.nan)
    for z in range(n):
        if np.isnan(values[z]).all():
            continue
        near = [k for k in range(max(0, z - radius), min(n, z + radius + 1)) if k != z]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # a node no neighbour measured: NaN, dropped below
            reference = np.nanmedian(values[near], axis=0) if near else np.full(shape, np.nan)
            count = np.sum(~np.isnan(values[near, ..., 0]), axis=0) if near else 0
        spikes[z] = np.where((np.asarray(count) >= min(3, len(near)))[..., None], values[z] - reference, np.nan)
    spikes = _node_smoothed(spikes)
    magnitude2 = np.sum(spikes ** 2, axis=-1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        sigma = np.sqrt(np.nanmedian(magnitude2, axis=0) / _CHI2_2_MEDIAN)
    floor = 0.5 * np.nanmedian(sigma) if np.isfinite(sigma).any() else 0.0
    sigma = np.where(np.isfinite(sigma), np.maximum(sigma, floor), np.inf)
    fields: dict[int, np.ndarray] = {}
    kept_nodes = np.zeros(n, int)
    for z in range(n):
        if not registered[z] or np.isnan(spikes[z]).all():
            continue
        threshold = np.maximum(significance * np.maximum(sigma, sd[z]), min_shift_px)
        m2 = magnitude2[z]
        keep = np.isfinite(m2) & (m2 > threshold ** 2)
        kept_nodes[z] = int(keep.sum())
        if kept_nodes[z] < min_nodes:
            continue
        with np.errstate(all="ignore"):
            gain = np.where(keep, 1.0 - threshold ** 2 / m2, 0.0)
        fields[z] = np.where(keep[..., None], spikes[z] * gain[..., None], 0.0)
    return ElasticDecision(fields, spikes, sigma, kept_nodes)


def _node_smoothed(spikes: np.ndarray) -> np.ndarray:
    """Each node's spike averaged with its 8 neighbours (those measured): a distortion spans
    several nodes with one direction, a node's content mismatch does not."""
    from scipy.ndimage import uniform_filter

    ok = ~np.isnan(spikes[..., 0])
    filled = np.where(ok[..., None], spikes, 0.0)
    size = (1, 3, 3)
    weight = uniform_filter(ok.astype(np.float64), size=size, mode="constant")
    out = np.stack([uniform_filter(filled[..., k], size=size, mode="constant") for k in range(2)], axis=-1)
    with np.errstate(all="ignore"):
        out = out / weight[..., None]
    return np.where(ok[..., None], out, np.nan)
