"""What one registration pass does, computed from the pre-alignment and the previous pass.

Pure functions: the orchestrator (:mod:`amst.pipeline.run`) measures, these decide. Pass 1
registers every slice from its pre-alignment against templates of pre-aligned slices.
Pass 2 starts each slice from its pass-1 result, keeps the slices pass 1 could not register
out of every template, and places the slices pass 1 found distorted (auto-focus events) by
their pass-1 correction, so that they no longer pull their neighbours' templates.
"""

from __future__ import annotations

import enum
import logging
from dataclasses import dataclass

import numpy as np

from ..register import distortion_px
from ..template import ends_in_pass
from ..transform import compose, invert
from .records import SliceResult

log = logging.getLogger("amst")


class TemplateSource(enum.Enum):
    """How a pass places the slices whose median is the template."""

    #: Read from the stack the user aligned elsewhere (``--prealigned``): nothing is warped.
    PREALIGNED_STACK = "prealigned stack"
    #: Raw slices warped by the pre-alignment.
    PREALIGNMENT = "pre-alignment"
    #: Raw slices warped by the previous pass's results (``template.second_pass_from: corrected``).
    PREVIOUS_PASS = "previous pass"


@dataclass(frozen=True, eq=False)
class PassPlan:
    """One registration pass.

    Attributes
    ----------
    index : int
        1 or 2.
    start : (n, 2, 3) array
        Where each slice's registration starts (full output -> raw affines).
    template_source : TemplateSource
    template_affines : (n, 2, 3) array
        How slices are placed to build the templates (unused for ``PREALIGNED_STACK``).
    excluded : (n,) bool array
        Slices kept out of every template (blank, failed, fallen back).
    placed_by_start : (n,) bool array
        Slices that enter templates placed by ``start`` instead (distorted in the previous pass).
    ends : str
        The ``template.ends`` rule of this pass (:func:`amst.template.ends_in_pass`).
    """

    index: int
    start: np.ndarray
    template_source: TemplateSource
    template_affines: np.ndarray
    excluded: np.ndarray
    placed_by_start: np.ndarray
    ends: str

    @property
    def reads_prealigned_stack(self) -> bool:
        return self.template_source is TemplateSource.PREALIGNED_STACK


def first_pass(prealign_affines: np.ndarray, prealign_ok: np.ndarray, *, prealigned_stack: bool,
               ends: str) -> PassPlan:
    """Pass 1: every slice from its pre-alignment; templates from the ``--prealigned`` stack
    when there is one, else from the pre-aligned raw slices; slices whose pre-alignment
    failed are kept out of templates."""
    source = TemplateSource.PREALIGNED_STACK if prealigned_stack else TemplateSource.PREALIGNMENT
    return PassPlan(1, prealign_affines, source, prealign_affines, ~np.asarray(prealign_ok, bool),
                    np.zeros(len(prealign_affines), bool), ends_in_pass(ends, 1))


def next_pass(previous: PassPlan, ok: np.ndarray, start: np.ndarray, *, distorted: np.ndarray,
              estimates: dict[int, np.ndarray], second_pass_from: str, ends: str) -> PassPlan:
    """The pass after ``previous`` from its results (:func:`registered_starts`: which slices it
    registered, ``ok``, and each slice's affine from it, ``start``).

    The templates place slices as ``previous`` did (``second_pass_from: prealigned``) or by the
    new start (``corrected``). Slices not ``ok`` join the excluded ones; ``ok`` slices that are
    ``distorted`` enter templates placed by their start, which is their entry of ``estimates``
    where it has one (the previous pass's measurements combined and refined).
    """
    start = np.array(start, np.float64)
    placed = ok & np.asarray(distorted, bool)
    for z in np.flatnonzero(placed):
        if int(z) in estimates:
            start[z] = estimates[int(z)]
    if second_pass_from == "corrected":
        source, template_affines = TemplateSource.PREVIOUS_PASS, start
    else:
        source, template_affines = previous.template_source, previous.template_affines
    return PassPlan(previous.index + 1, start, source, template_affines, previous.excluded | ~ok, placed,
                    ends_in_pass(ends, previous.index + 1))


def registered_starts(results: list[SliceResult], prealign_affines: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Which slices a pass registered (``ok``), and each slice's affine from it: its result
    where ``ok``, else its pre-alignment."""
    ok = np.array([r.status == "ok" for r in results])
    return ok, np.array([r.affine if ok[z] else prealign_affines[z] for z, r in enumerate(results)])


def distorted_slices(corrected: np.ndarray, prealigned: np.ndarray, canvas: tuple[int, int],
                     limit_px: float) -> np.ndarray:
    """Slices whose correction changed their shape by more than ``limit_px`` at the canvas
    corners (auto-focus events); none when ``limit_px`` <= 0."""
    d = np.array([distortion_px(compose(invert(p), c), canvas) for p, c in zip(prealigned, corrected)])
    log.info("pass-1 distortion px: median %.2f, p90 %.2f, max %.2f", np.median(d), np.percentile(d, 90), d.max())
    if limit_px <= 0:
        return np.zeros(len(d), bool)
    out = d > limit_px
    if out.any():
        log.info("placed in pass-2 templates by pass 1's estimate (distortion > %.1f px): %s", limit_px,
                 np.flatnonzero(out).tolist())
    return out
