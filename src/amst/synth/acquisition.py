"""The per-slice acquisition model of a FIB-SEM run, with its exact ground truth.

For every slice it draws where the beam looked (drift as a random walk plus a linear
trend, jitter, rare large jumps), auto-focus events that change the pixel size of one to
three slices (anisotropic scale and shear about the top centre, so the error grows with
distance from the top, as in the paper's Fig. 2), brightness/contrast flicker, and
curtaining streaks that persist over many slices. Noise is Poisson shot noise plus
Gaussian read noise. ``autofocus_at`` adds auto-focus events at chosen slices (the stack's
first or last slices, say), drawn from their own random stream, so that the rest of the
acquisition, and the bytes of a stack without them, stay the same. ``local_probability``
gives auto-focus events a non-uniform part as well, a smooth local displacement
(:mod:`amst.synth.local`), also from its own stream.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from ..transform import about_point
from .local import LocalDistortion, draw_local_distortions


@dataclass
class AcquisitionParams:
    """What can go wrong while imaging; all lengths in pixels, rates per slice."""

    drift_walk: float = 0.12
    drift_linear: float = 0.06
    jitter: float = 0.7
    jump_probability: float = 0.004
    jump_size: tuple[float, float] = (8.0, 25.0)
    autofocus_interval: float = 40.0
    autofocus_slices: tuple[int, int] = (1, 3)
    autofocus_scale: tuple[float, float] = (0.002, 0.01)
    autofocus_shear: float = 0.003
    flicker_gain: float = 0.04
    flicker_offset: float = 0.02
    dose: float = 60.0
    read_noise: float = 0.01
    curtains_per_1000px: float = 12.0
    curtain_amplitude: tuple[float, float] = (0.03, 0.12)
    # Slices that get an auto-focus event on top of the random ones; consecutive slices form
    # one event (its scale decays along it, as in a random one).
    autofocus_at: tuple[int, ...] = ()
    # Non-uniform part of an auto-focus event (amst.synth.local): the chance that an event
    # also displaces an irradiated region, the displacement at its centre (px), its size
    # (sigma, fraction of the smaller side) and where its centre may lie (middle fraction).
    local_probability: float = 0.0
    local_shift: tuple[float, float] = (1.0, 3.0)
    local_size: tuple[float, float] = (0.08, 0.2)
    local_region: float = 0.6

    def to_dict(self) -> dict:
        """The parameters as a plain dict; ``autofocus_at`` only when set and the ``local_*``
        ones only when local distortions are on (ground_truth.json of a stack without them
        stays byte for byte the same)."""
        out = asdict(self)
        if not self.autofocus_at:
            del out["autofocus_at"]
        if self.local_probability <= 0:
            for key in ("local_probability", "local_shift", "local_size", "local_region"):
                del out[key]
        return out


@dataclass
class SliceAcquisition:
    """What happened at one slice: the raw-to-volume map and intensity changes."""

    raw_to_volume: np.ndarray
    gain: float
    offset: float
    events: list[str]
    local: LocalDistortion | None = None  # the non-affine part of an auto-focus event


def simulate_acquisition(n_slices: int, shape_yx: tuple[int, int], params: AcquisitionParams,
                         seed: int) -> list[SliceAcquisition]:
    """Draw the acquisition of ``n_slices`` slices.

    Returns
    -------
    list of SliceAcquisition
        ``raw_to_volume`` maps a raw pixel ``(x, y)`` to the volume pixel it shows
        (convention of DESIGN.md).
    """
    rng = np.random.default_rng([seed, 1])
    h, w = shape_yx
    p = params
    angle = rng.uniform(0, 2 * np.pi)
    velocity = p.drift_linear * np.array([np.cos(angle), np.sin(angle)])
    walk = np.cumsum(rng.normal(0, p.drift_walk, (n_slices, 2)), axis=0)
    jumps = np.zeros((n_slices, 2))
    jump_at = rng.random(n_slices) < p.jump_probability
    jump_at[0] = False
    for z in np.flatnonzero(jump_at):
        direction = rng.uniform(0, 2 * np.pi)
        jumps[z:] += rng.uniform(*p.jump_size) * np.array([np.cos(direction), np.sin(direction)])
    drift = walk + np.arange(n_slices)[:, None] * velocity + jumps
    drift -= drift[0]
    jitter = rng.normal(0, p.jitter, (n_slices, 2))
    shift = drift + jitter

    linear = np.repeat(np.eye(2)[None], n_slices, axis=0)
    af_at = np.zeros(n_slices, dtype=bool)
    if p.autofocus_interval > 0:
        z = int(rng.uniform(0.5, 1.0) * p.autofocus_interval)
        while z < n_slices:
            length = int(rng.integers(p.autofocus_slices[0], p.autofocus_slices[1] + 1))
            sx, sy = rng.uniform(*p.autofocus_scale, 2) * rng.choice([-1, 1], 2)
            shear = rng.uniform(-p.autofocus_shear, p.autofocus_shear)
            for k in range(z, min(z + length, n_slices)):
                decay = 1.0 - 0.3 * (k - z)
                linear[k] = np.array([[1 + sx * decay, shear * decay], [0.0, 1 + sy * decay]])
                af_at[k] = True
            z += max(length + 1, int(p.autofocus_interval * rng.uniform(0.7, 1.3)))
    if p.autofocus_at:
        _place_autofocus(linear, af_at, p, seed)

    local = draw_local_distortions(autofocus_runs(np.flatnonzero(af_at), n_slices), n_slices, shape_yx,
                                   probability=p.local_probability, shift_px=p.local_shift, size=p.local_size,
                                   region=p.local_region, seed=seed)
    centre = np.array([w / 2.0, 0.0])  # the beam is focused on the top (the marks)
    gains = 1.0 + rng.normal(0, p.flicker_gain, n_slices)
    offsets = rng.normal(0, p.flicker_offset, n_slices)
    out = []
    for z in range(n_slices):
        m = about_point(linear[z], centre, shift[z])
        events = ((["autofocus"] if af_at[z] else []) + (["local"] if local[z] is not None else [])
                  + (["jump"] if jump_at[z] else []))
        out.append(SliceAcquisition(m, float(gains[z]), float(offsets[z]), events, local[z]))
    return out


def autofocus_runs(slices: tuple[int, ...] | list[int], n_slices: int) -> list[list[int]]:
    """Runs of consecutive slices in ``slices`` (each run is one auto-focus event).

    Parameters
    ----------
    slices : sequence of int
        Slice indices, in any order; duplicates count once.
    n_slices : int
        The stack depth.

    Returns
    -------
    list of list of int
        Sorted runs, e.g. ``[[0, 1], [98, 99]]`` for ``(99, 0, 1, 98)``.

    Raises
    ------
    ValueError
        When a slice lies outside ``0 .. n_slices - 1``.
    """
    runs: list[list[int]] = []
    for z in sorted({int(v) for v in slices}):
        if not 0 <= z < n_slices:
            raise ValueError(f"autofocus_at: slice {z} is outside the stack's {n_slices} slices "
                             f"(0..{n_slices - 1}); give slice indices inside the stack")
        if runs and runs[-1][-1] == z - 1:
            runs[-1].append(z)
        else:
            runs.append([z])
    return runs


def _place_autofocus(linear: np.ndarray, af_at: np.ndarray, p: AcquisitionParams, seed: int) -> None:
    """Add the events of ``p.autofocus_at`` to ``linear`` / ``af_at`` (in place), replacing
    a random event's distortion on the slices they share."""
    rng = np.random.default_rng([seed, 4])  # its own stream: the random acquisition is unchanged
    for run in autofocus_runs(p.autofocus_at, len(linear)):
        sx, sy = rng.uniform(*p.autofocus_scale, 2) * rng.choice([-1, 1], 2)
        shear = rng.uniform(-p.autofocus_shear, p.autofocus_shear)
        for k, z in enumerate(run):
            decay = 1.0 - 0.3 * min(k, 2)
            linear[z] = np.array([[1 + sx * decay, shear * decay], [0.0, 1 + sy * decay]])
            af_at[z] = True


class Curtains:
    """Vertical streaks from milling, fixed to the sample (volume frame), persisting over slices."""

    def __init__(self, extent_zyx: tuple[float, float, float], params: AcquisitionParams, seed: int,
                 top_y: float):
        rng = np.random.default_rng([seed, 2])
        depth, height, width = extent_zyx
        n = rng.poisson(params.curtains_per_1000px * width / 1000.0)
        self.x = rng.uniform(0, width, n)
        self.width = rng.uniform(1.0, 4.0, n)
        self.amp = rng.uniform(*params.curtain_amplitude, n) * rng.choice([-1, 1], n, p=[0.3, 0.7])
        self.z0 = rng.uniform(-0.3 * depth, depth, n)
        self.z_len = rng.uniform(0.2, 0.8, n) * max(depth, 50.0)
        self.y_len = rng.uniform(0.3, 1.0, n) * height
        self.top_y = top_y

    def factor(self, x: np.ndarray, y: np.ndarray, z: float) -> np.ndarray:
        """Multiplicative intensity factor at volume positions (x, y) of depth z."""
        out = np.ones_like(x, dtype=np.float32)
        life = np.clip(np.minimum(z - self.z0, self.z0 + self.z_len - z) / 20.0, 0, 1)
        below = np.clip((y - self.top_y) / 3.0, 0, 1)
        for i in np.flatnonzero(life > 0):
            profile = np.exp(-0.5 * ((x - self.x[i]) / self.width[i]) ** 2)
            fade = np.exp(-np.maximum(y - self.top_y, 0) / self.y_len[i])
            out -= (self.amp[i] * life[i]) * profile * fade * below
        return out


def add_noise(clean: np.ndarray, params: AcquisitionParams, rng: np.random.Generator) -> np.ndarray:
    """Poisson shot noise at ``params.dose`` electrons per unit intensity, plus read noise."""
    if params.dose <= 0:
        return clean.astype(np.float32)
    electrons = rng.poisson(np.clip(clean, 0, None) * params.dose).astype(np.float32)
    noisy = electrons / np.float32(params.dose)
    if params.read_noise > 0:
        noisy += rng.normal(0, params.read_noise, clean.shape).astype(np.float32)
    return noisy
