"""Slices the residual says to inspect, whatever their registration status.

The residual of slice ``z`` is the shift of its content to slice ``z - 1`` in each crop
(:mod:`.residual`); the jitter residual is that shift without its slow part along z (the
sample's own motion with depth). A slice left misaligned by ``d`` px shows as two spikes of
about ``d``, at ``z`` (to its previous slice) and at ``z + 1`` (back), with opposite jitter
shifts; a jump between ``z - 1`` and ``z`` (every later slice moved) as one spike at ``z``.

The rule (:class:`FlagRule`), per crop, on the jitter residual ``v`` of every slice:

    robust z = (v - median(v)) / (1.4826 MAD(v)) > 6   and   v > 0.5 px

The z-score is the stack's own: a noisy stack's residual spreads more and needs a larger
spike. The floor keeps a very clean stack (MAD of a few hundredths of a pixel) from flagging
slices that are off by a tenth of a pixel, which nobody can see. Spikes up to three slices
apart whose jitter shifts cancel (in the crop where the first stands out most) are one run
of displaced slices; a lone spike is a jump, named by its later slice (slice 0 when it is
at slice 1, the last slice when it is there: a slice at an end has one neighbour), and it
must stand out in every crop that measured it: a misaligned slice moves all its crops,
while a wrong phase-correlation peak spikes in one.

Measured (``benchmarks/stack_ends.py --flags``, 80 x 512^2 phantom stacks, ``--backend
fast``, before the every-crop condition on lone spikes): a slice shifted by 1.5 px and
re-warped reached robust z far above 6 and 1.5 px and was named; on clean stacks the
largest robust z among well-aligned slices was 7.2-7.6 for seed 0 (a 0.42 px residual
at a partly corrected auto-focus event, kept out by the floor) but 32-54 for seeds 1 and 2:
lone one-crop spikes at slices whose ground-truth error was 0.1 px (slices 0, 66, 69),
which the every-crop condition now drops. With it (``--content phantom texture --seeds 0 1 2
--at-ends 0 --ends shrink --flags``): no slice flagged on any of the six clean stacks (largest
robust z among aligned slices 6.0-54, all one-crop spikes), and the slice shifted by 1.5 px
named on all six (1.47-1.56 px), the only slice flagged. The plain residual (which holds the sample's
motion with depth) is reported with the value but not tested.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..transforms_io import load_transforms
from .residual import jitter_shift

MAD_TO_SIGMA = 1.4826  # MAD of a normal distribution times this is its standard deviation
FLAG_PREFIX = "residual stands out:"


@dataclass(frozen=True)
class FlagRule:
    """When a slice's jitter residual stands out from the stack's own distribution.

    Attributes
    ----------
    z_threshold : float
        Robust z-score (median and MAD over the stack, per crop) above which a value stands out.
    floor_px : float
        The value must also exceed this many pixels.
    pair_gap : int
        Spikes at most this many slices apart whose jitter shifts cancel mark the slices
        between them as displaced (instead of two jumps).
    """

    z_threshold: float = 6.0
    floor_px: float = 0.5
    pair_gap: int = 3

    def __post_init__(self) -> None:
        if not self.z_threshold > 0 or not self.floor_px >= 0 or self.pair_gap < 1:
            raise ValueError(f"FlagRule: z_threshold must be > 0, floor_px >= 0 and pair_gap >= 1 (got "
                             f"{self.z_threshold}, {self.floor_px}, {self.pair_gap})")


@dataclass(frozen=True)
class ResidualFlag:
    """One slice the residual flags.

    Attributes
    ----------
    index : int
        The slice.
    kind : str
        ``"displaced"``: off against both neighbours (or against its only one, at an end);
        ``"step"``: a jump between slice ``index - 1`` and ``index``.
    crop : int
        The crop with the largest spike (0-based).
    jitter_residual_px, residual_px : float
        The spike's jitter residual and plain residual in that crop.
    robust_z : float
        The spike's robust z-score.
    """

    index: int
    kind: str
    crop: int
    jitter_residual_px: float
    residual_px: float
    robust_z: float

    def message(self, pixel_nm: float | None = None) -> str:
        """One line for ``metrics.check``, the report and the run's printout."""
        nm = f" ({self.jitter_residual_px * pixel_nm:.1f} nm)" if pixel_nm else ""
        where = ("off against its neighbouring slices" if self.kind == "displaced"
                 else f"a jump between slices {self.index - 1} and {self.index}")
        return (f"{FLAG_PREFIX} jitter residual {self.jitter_residual_px:.2f} px{nm} in crop {self.crop + 1} "
                f"(residual {self.residual_px:.2f} px, robust z {self.robust_z:.0f}); {where}")

    def to_dict(self) -> dict:
        """Plain values for JSON."""
        return asdict(self)


def robust_z(values: np.ndarray) -> np.ndarray:
    """``(v - median) / (1.4826 MAD)`` over the finite values; NaN stays NaN.

    Parameters
    ----------
    values : numpy.ndarray
        (n,) values, NaN where not measured.

    Returns
    -------
    numpy.ndarray
        (n,) robust z-scores; where the MAD is 0, +inf above the median, 0 at it and
        -inf below.

    Examples
    --------
    >>> robust_z(np.array([1.0, 2.0, 3.0, 10.0])).round(2).tolist()
    [-1.01, -0.34, 0.34, 5.06]
    """
    v = np.asarray(values, dtype=float)
    finite = v[np.isfinite(v)]
    if finite.size == 0:
        return np.full(v.shape, np.nan)
    median = np.median(finite)
    scale = MAD_TO_SIGMA * np.median(np.abs(finite - median))
    with np.errstate(divide="ignore", invalid="ignore"):
        return (v - median) / scale if scale > 0 else np.sign(v - median) * np.inf


def _spikes(shift_xy: np.ndarray, jitter_xy: np.ndarray,
            rule: FlagRule) -> dict[int, tuple[int, float, float, float, bool]]:
    """Residual slices that stand out: z -> (crop, jitter px, residual px, robust z, in every
    measured crop) of the crop where it stands out most. ``jitter_xy``: the jitter shifts of
    ``shift_xy``, crop by crop."""
    out: dict[int, tuple[int, float, float, float, bool]] = {}
    hits_per_crop = []
    for k, shifts in enumerate(shift_xy):
        jitter = np.linalg.norm(jitter_xy[k], axis=1)
        scores = robust_z(jitter)
        plain = np.linalg.norm(shifts, axis=1)
        with np.errstate(invalid="ignore"):
            hits = (scores > rule.z_threshold) & (jitter > rule.floor_px)
        hits_per_crop.append(hits | ~np.isfinite(jitter))
        for z in np.flatnonzero(hits):
            if z not in out or scores[z] > out[z][3]:
                out[int(z)] = (k, float(jitter[z]), float(plain[z]), float(scores[z]), False)
    everywhere = np.all(hits_per_crop, axis=0) if hits_per_crop else np.zeros(0, bool)
    return {z: (*v[:4], bool(everywhere[z])) for z, v in out.items()}


def _cancels(jitter_xy: np.ndarray, crop: int, a: int, b: int) -> bool:
    """Do the jitter shifts at residual slices ``a`` and ``b`` (one crop) roughly cancel?"""
    j = jitter_xy[crop]
    if not (np.isfinite(j[a]).all() and np.isfinite(j[b]).all()):
        return False
    return bool(np.linalg.norm(j[a] + j[b]) < 0.5 * max(np.linalg.norm(j[a]), np.linalg.norm(j[b])))


def residual_flags(shift_xy: np.ndarray, rule: FlagRule = FlagRule(),
                   skip: set[int] | frozenset[int] = frozenset()) -> list[ResidualFlag]:
    """The slices whose jitter residual stands out (the module docstring gives the rule).

    Parameters
    ----------
    shift_xy : numpy.ndarray
        (n_crops, n, 2) shift of each slice to the previous one per crop, px; NaN where not
        measured (``SliceSweep.shift_xy``).
    rule : FlagRule
        Threshold and floor.
    skip : set of int
        Slices not to flag (already listed for another reason, e.g. blank or fallback);
        their spikes are still used to place the others.

    Returns
    -------
    list of ResidualFlag
        One per flagged slice, in slice order.

    Examples
    --------
    A slice shifted by 1.5 px against a stack whose residual is noise of 0.05 px:

    >>> rng = np.random.default_rng(0)
    >>> shifts = rng.normal(0, 0.05, (1, 60, 2))
    >>> shifts[0, 30] += 1.5; shifts[0, 31] -= 1.5
    >>> [(f.index, f.kind) for f in residual_flags(shifts)]
    [(30, 'displaced')]
    """
    shift_xy = np.asarray(shift_xy, dtype=float)
    n = shift_xy.shape[1] if shift_xy.ndim == 3 else 0
    jitter_xy = np.array([jitter_shift(shifts) for shifts in shift_xy]).reshape(shift_xy.shape)
    spikes = _spikes(shift_xy, jitter_xy, rule)
    flags: dict[int, ResidualFlag] = {}
    used: set[int] = set()
    for z in sorted(spikes):
        if z in used:
            continue
        crop, jitter, plain, score, everywhere = spikes[z]
        partner = next((z + m for m in range(1, rule.pair_gap + 1)
                        if z + m in spikes and z + m not in used and _cancels(jitter_xy, crop, z, z + m)), None)
        if partner is not None:
            used.add(partner)
            named, kind = list(range(z, partner)), "displaced"
        elif not everywhere:
            continue  # a lone spike in one crop only: a wrong correlation peak, not a misalignment
        elif z == 1 or z == n - 1:
            named, kind = [z - 1 if z == 1 else z], "displaced"
        else:
            named, kind = [z], "step"
        for s in named:
            if s not in skip:
                flags[s] = ResidualFlag(s, kind, crop, jitter, plain, score)
    return [flags[s] for s in sorted(flags)]


def record_flags(path: str | Path, flags: list[ResidualFlag], pixel_nm: float | None = None) -> bool:
    """Write the flags into ``transforms.json`` as ``metrics.check`` (status unchanged).

    Each flagged slice gets ``metrics.residual_flag`` (the figures) and the flag's message in
    ``metrics.check``, after any check the run itself recorded (NaN/inf pixels); the
    residual flags of an earlier call are replaced. The file is rewritten atomically, and
    only when something changed: the transforms of a run without flags keep their bytes.

    Parameters
    ----------
    path : str or path
        The run's ``transforms.json``.
    flags : list of ResidualFlag
        From :func:`residual_flags`.
    pixel_nm : float, optional
        Pixel size, for the message.

    Returns
    -------
    bool
        Whether the file was rewritten.

    Raises
    ------
    amst.outdir.OutputError
        When ``path`` is a symbolic link (amst writes only files it owns).
    """
    from ..outdir import OutputError

    path = Path(path)
    if path.is_symlink():
        raise OutputError(f"{path} is a symbolic link; amst records the residual flags only in a transforms.json it "
                          "owns: remove the link and run `amst report` again")
    tf = load_transforms(path)
    by_slice = {f.index: f for f in flags}
    changed = False
    for s in tf.slices:
        before = dict(s.metrics)
        _clear_flag(s.metrics)
        flag = by_slice.get(s.index)
        if flag is not None:
            s.metrics["residual_flag"] = flag.to_dict()
            own = s.metrics.get("check")
            s.metrics["check"] = f"{own}; {flag.message(pixel_nm)}" if own else flag.message(pixel_nm)
        changed |= s.metrics != before
    if changed:
        tf.save(path)
    return changed


def _clear_flag(metrics: dict) -> None:
    """Remove an earlier residual flag (its figures and its part of ``check``) from ``metrics``."""
    if "residual_flag" not in metrics:
        return
    del metrics["residual_flag"]
    own = str(metrics.get("check", "")).split(FLAG_PREFIX)[0].removesuffix("; ")  # the flag's part comes last
    if own:
        metrics["check"] = own
    else:
        metrics.pop("check", None)
