"""A fast affine back-end: inverse-compositional Gauss-Newton on an image pyramid.

AMST's corrections are small (a few px, < 1 % scale) and the template is close to the raw
slice, so a direct method converges in a few iterations. Following Baker & Matthews
(IJCV 2004), the template's gradients and the 6x6 Gauss-Newton matrix are computed once
per level; each iteration only samples the raw slice at the warped positions of a fixed
set of well-textured template pixels (the strongest-gradient pixel of each 2x2 cell), fits gain and
offset (so brightness/contrast changes between raw and template do not matter), and solves
a 6x6 system, with Huber weights on the residuals so that places where the median template
does not look like the slice (structures that changed with depth) pull less. It is
deterministic: no random sampling. One level's iterations are :func:`amst.gauss_newton.align_level`
(shared with template matching's affine read-out); this module adds the pyramid, the
smoothing, the masks and the parameters.

Written in numpy/OpenCV (``cv2.remap`` for sampling, ``cv2.pyrDown`` for the pyramid):
each iteration touches a quarter of the pixels, so no compiled kernel is needed. Slices
larger than ``finest_side`` are refined on a pyramid level, not at full resolution:
measured on 2048^2 synthetic pairs (benchmarks/registration.py) this is 4x faster for
0.03 px more error, still below elastix's.
"""

from __future__ import annotations

import typing
from dataclasses import dataclass, field
from typing import Any, Callable

import cv2
import numpy as np

from ..gauss_newton import GaussNewtonParams, align_level
from ..transform import as_affine, at_level
from .base import RegistrationError, RegistrationResult


@dataclass
class FastParams(GaussNewtonParams):
    """Tuning of the fast back-end (all overridable from the config's ``register.fast``): the
    iterations of each level (:class:`~amst.gauss_newton.GaussNewtonParams`, ``max_iterations``
    per level) and the pyramid."""

    coarsest_side: int = 160      # pyramid: halve until the longer side is below this
    finest_side: int = 1536       # stop refining at the first level whose longer side is <= this
    finest_level: int | None = None  # explicit finest level (0 = full resolution) instead of finest_side
    smooth_sigma: float = 1.0     # Gaussian on both images first: less noise in the gradients


def _pyramid(image: np.ndarray, levels: int) -> list[np.ndarray]:
    out = [image]
    for _ in range(levels - 1):
        out.append(cv2.pyrDown(out[-1]))
    return out


def _mask_pyramid(mask: np.ndarray, levels: int) -> list[np.ndarray]:
    out = [mask.astype(np.float32)]
    for _ in range(levels - 1):
        out.append(cv2.pyrDown(out[-1]))
    # A coarse pixel is usable only if (almost) all of its footprint was.
    return [m > 0.999 for m in out]


# The allowed range of each numeric field: (test, what the message says).
_RANGES: dict[str, tuple[Callable[[float], bool], str]] = {
    "coarsest_side": (lambda v: v >= 2, ">= 2"),
    "finest_side": (lambda v: v >= 1, ">= 1"),
    "finest_level": (lambda v: v >= 0, ">= 0 (0 = full resolution)"),
    "max_iterations": (lambda v: v >= 1, ">= 1"),
    "tolerance_px": (lambda v: v >= 0, ">= 0"),
    "cell": (lambda v: v >= 1, ">= 1"),
    "keep_fraction": (lambda v: 0 < v <= 1, "in (0, 1]"),
    "smooth_sigma": (lambda v: v >= 0, ">= 0 (0 = no smoothing)"),
    "min_samples": (lambda v: v >= 1, ">= 1"),
}


# Resolved once: fast_params() validates on every slice.
_FIELD_TYPES: dict[str, Any] = typing.get_type_hints(FastParams)


def validate_params(parameters: dict[str, Any], prefix: str = "register.fast") -> None:
    """Refuse keys that are not :class:`FastParams` fields, values of the wrong type and
    values out of range.

    Parameters
    ----------
    parameters : overrides, as in the config's ``register.fast``
    prefix : config path named in the messages

    Raises
    ------
    ValueError
        Naming the key and what is allowed.
    """
    hints = _FIELD_TYPES
    for key, value in parameters.items():
        path = f"{prefix}.{key}"
        if key not in hints:
            raise ValueError(f"unknown option {path!r}; allowed here: {', '.join(hints)}")
        types = typing.get_args(hints[key]) or (hints[key],)
        if value is None and type(None) in types:
            continue
        if bool in types:
            if not isinstance(value, bool):
                raise ValueError(f"{path}: expected true or false, got {value!r}")
            continue
        integer = int in types
        if isinstance(value, bool) or not isinstance(value, int if integer else (int, float)):
            raise ValueError(f"{path}: expected {'an integer' if integer else 'a number'}, got {value!r}")
        test, allowed = _RANGES[key]
        if not test(value):
            raise ValueError(f"{path}: {value!r} must be {allowed}")


def fast_params(parameters: dict[str, Any] | None = None) -> FastParams:
    """:class:`FastParams` with the config's overrides.

    Raises
    ------
    ValueError
        For a key, type or value :func:`validate_params` refuses.
    """
    validate_params(parameters or {})
    return FastParams(**(parameters or {}))


def _levels(shape_yx: tuple[int, int], p: FastParams) -> tuple[int, int]:
    """Number of pyramid levels, and the finest level refined, for an image of this shape."""
    levels = 1
    while max(shape_yx) / 2 ** levels >= p.coarsest_side:
        levels += 1
    finest = p.finest_level
    if finest is None:
        finest = 0
        while max(shape_yx) / 2 ** finest > p.finest_side and finest < levels - 1:
            finest += 1
    return levels, min(finest, levels - 1)


def finest_level(canvas_shape_yx: tuple[int, int], parameters: dict[str, Any] | None = None) -> int:
    """The finest pyramid level the fast back-end refines on for this canvas (0 = full size).

    The pipeline builds the template at this level (:func:`level_image`), since finer
    template pixels would never be read.
    """
    return _levels(canvas_shape_yx, fast_params(parameters))[1]


def level_image(image: np.ndarray, level: int, parameters: dict[str, Any] | None = None) -> np.ndarray:
    """``image`` smoothed and reduced to pyramid ``level`` exactly as the back-end does it."""
    p = fast_params(parameters)
    out = np.ascontiguousarray(image, dtype=np.float32)
    if p.smooth_sigma > 0:
        out = cv2.GaussianBlur(out, (0, 0), p.smooth_sigma)
    for _ in range(level):
        out = cv2.pyrDown(out)
    return out


def level_shape(shape_yx: tuple[int, int], level: int) -> tuple[int, int]:
    """Shape of pyramid ``level`` of an image of ``shape_yx`` (``cv2.pyrDown`` rounds up)."""
    h, w = shape_yx
    for _ in range(level):
        h, w = (h + 1) // 2, (w + 1) // 2
    return int(h), int(w)


def register_fast(raw: np.ndarray, template: np.ndarray, template_mask: np.ndarray | None, initial: np.ndarray,
                  parameters: dict[str, Any] | None = None, *, template_level: int = 0,
                  raw_level: int = 0) -> RegistrationResult:
    """Affine (output -> raw) of ``raw`` onto ``template``, starting from ``initial``.

    Parameters
    ----------
    raw : 2-D array, the raw slice
    template : 2-D float array on the output canvas, or on its pyramid level
        ``template_level`` (then already smoothed: built from :func:`level_image` images)
    template_mask : bool array of usable template pixels, or None for all
    initial : (2, 3) start (the pre-alignment), in full-resolution pixels
    parameters : overrides of :class:`FastParams` fields
    template_level : pyramid level of ``template`` (0 = full resolution)
    raw_level : 0, or ``template_level`` when ``raw`` is given as :func:`level_image` of it
        (the pipeline has it already: it built the template from such images)

    Returns
    -------
    RegistrationResult
        ``metrics`` holds the iterations per level and the final correlation.

    Raises
    ------
    RegistrationError
        When the finest level finds no solution: too few usable template pixels, no overlap
        with the raw slice, a flat raw slice, a singular or non-finite system.
    """
    p = fast_params(parameters)
    raw = np.ascontiguousarray(raw, dtype=np.float32)
    template = np.ascontiguousarray(template, dtype=np.float32)
    mask = np.ones(template.shape, bool) if template_mask is None else np.asarray(template_mask, bool)
    if not mask.all():
        # Masked pixels must not leak into valid ones through smoothing, gradients or the
        # pyramid: give them a neutral value and keep samples a kernel away from them.
        template = np.where(mask, template, np.float32(template[mask].mean() if mask.any() else 0.0))
        r = int(np.ceil(3 * p.smooth_sigma)) + 2
        mask = cv2.erode(mask.astype(np.uint8), np.ones((2 * r + 1, 2 * r + 1), np.uint8)).astype(bool)
    if raw_level not in (0, template_level):
        raise ValueError(f"raw_level {raw_level} must be 0 or the template level {template_level}")
    if p.smooth_sigma > 0:
        if raw_level == 0:
            raw = cv2.GaussianBlur(raw, (0, 0), p.smooth_sigma)
        if template_level == 0:
            template = cv2.GaussianBlur(template, (0, 0), p.smooth_sigma)
    base = template_level
    levels, finest = _levels((template.shape[0] << base, template.shape[1] << base), p)
    if base:  # a template given at a level is refined down to that level
        levels, finest = max(levels, base + 1), base
    raw_pyr = [None] * raw_level + _pyramid(raw, levels - raw_level)
    tmpl_pyr = [None] * base + _pyramid(template, levels - base)
    mask_pyr = [None] * base + _mask_pyramid(mask, levels - base)
    warp = as_affine(initial).copy()
    iterations = []
    corr = float("nan")
    for level in range(levels - 1, finest - 1, -1):
        w_level, its, corr, problem = align_level(raw_pyr[level], tmpl_pyr[level], mask_pyr[level],
                                                  at_level(warp, level), p)
        if problem and level == finest:  # a coarse level that stops short leaves the finer ones to try
            raise RegistrationError(f"fast back-end, pyramid level {level}: {problem}")
        warp = at_level(w_level, -level)
        iterations.append(its)
    if not np.isfinite(warp).all():
        raise RegistrationError("fast back-end: the solution is not finite")
    return RegistrationResult(warp, {"backend": "fast", "iterations": iterations, "correlation": corr})


@dataclass(frozen=True, eq=False)
class FastBackend:
    """The fast back-end behind the :class:`amst.register.base.Backend` protocol.

    Each method delegates to this module's functions (:func:`finest_level`,
    :func:`level_image`, :func:`level_shape`, :func:`register_fast`) with ``params``, so the
    numbers are theirs.

    Parameters
    ----------
    params : dict
        Overrides of :class:`FastParams` fields, as in the config's ``register.fast``.
    """

    params: dict[str, Any] = field(default_factory=dict)
    name: str = field(default="fast", init=False)

    def template_level(self, canvas_shape_yx: tuple[int, int]) -> int:
        """The finest pyramid level refined on for this canvas (:func:`finest_level`).

        Raises
        ------
        ValueError
            For parameters :func:`validate_params` refuses.
        """
        return finest_level(canvas_shape_yx, self.params)

    def level_image(self, image: np.ndarray, level: int) -> np.ndarray:
        """``image`` itself at level 0, else smoothed and reduced (:func:`level_image`).

        Raises
        ------
        ValueError
            For parameters :func:`validate_params` refuses.
        """
        return level_image(image, level, self.params) if level else image

    def level_shape(self, shape_yx: tuple[int, int], level: int) -> tuple[int, int]:
        """Shape of pyramid ``level`` (:func:`level_shape`)."""
        return level_shape(shape_yx, level)

    def register(self, raw: np.ndarray, template: np.ndarray, template_mask: np.ndarray | None,
                 initial: np.ndarray, *, level: int) -> RegistrationResult:
        """:func:`register_fast` with raw and template both at ``level``.

        Raises
        ------
        RegistrationError
            When the finest level finds no solution.
        ValueError
            For parameters :func:`validate_params` refuses.
        """
        return register_fast(raw, template, template_mask, initial, self.params, template_level=level,
                             raw_level=level)

    @property
    def needs_probe(self) -> bool:
        """False: :func:`validate_params` is the whole check of the parameters."""
        return False

    def probe(self) -> None:
        """Nothing to try: :func:`validate_params` is the whole check of the parameters."""
