"""AMST step 3: register each raw slice to its template slice with an affine.

Back-ends implement the :class:`Backend` protocol (:func:`backend_for` builds one by name):
``register(raw, template, template_mask, initial, level=...) -> RegistrationResult`` with
the full output -> raw affine, and the pyramid level the template is read at.
:func:`check_result` applies the per-slice sanity checks that turn a bad registration into
a ``fallback``. A back-end raises :class:`RegistrationError` for a failure real data may
cause; anything else is a bug.
"""

from __future__ import annotations

import dataclasses
import typing
from typing import TYPE_CHECKING, Any, Literal

import cv2
import numpy as np

from ..imageops import ncc
from ..transform import apply_to_points, compose, decompose, invert
from .base import Backend, RegistrationError, RegistrationResult

if TYPE_CHECKING:
    from .fast import FastParams

BackendName = Literal["elastix", "fast"]  # the config's register.backend
BACKENDS: tuple[str, ...] = typing.get_args(BackendName)


def backend_for(name: str, params: "dict[str, Any] | FastParams | None" = None) -> Backend:
    """The back-end called ``name`` with the user's parameter overrides.

    Its module is imported here, not before: elastix loads ITK.

    Parameters
    ----------
    name : str
        One of :data:`BACKENDS` (the config's ``register.backend``).
    params : dict or FastParams, optional
        The config's ``register.fast`` (a :class:`amst.register.fast.FastParams`, or a
        dict of overrides of its fields) or ``register.elastix`` (a dict of elastix
        parameters); None for none.

    Returns
    -------
    Backend
        :class:`amst.register.fast.FastBackend` or :class:`amst.register.elastix.ElastixBackend`.

    Raises
    ------
    ValueError
        For a name that is not one of :data:`BACKENDS`.
    """
    if name == "elastix":
        from .elastix import ElastixBackend

        return ElastixBackend(dict(params or {}))
    if name == "fast":
        from .fast import FastBackend

        # FastBackend takes overrides as a dict; all fields of a FastParams are equivalent.
        fields = dataclasses.asdict(params) if dataclasses.is_dataclass(params) else dict(params or {})
        return FastBackend(fields)
    raise ValueError(_unknown_backend(name))


def _unknown_backend(name: str) -> str:
    return f"register.backend: {name!r} is not one of {', '.join(BACKENDS)}"


def register(backend: str, raw: np.ndarray, template: np.ndarray, template_mask: np.ndarray | None,
             initial: np.ndarray, params: dict[str, Any] | None = None, template_level: int = 0,
             raw_level: int = 0) -> RegistrationResult:
    """Run the named back-end (imported lazily: elastix loads ITK).

    ``template_level`` > 0 (fast only) means the template is given on that pyramid level
    of the canvas, as :func:`template_level` chose; ``raw_level`` equal to it, that the raw
    slice is too (:func:`amst.register.fast.level_image`). ``initial`` and the result stay
    full-resolution maps.

    Raises
    ------
    RegistrationError
        When the images allow no registration (no overlap, too few usable pixels, a
        singular system, elastix stopping with an error): keep the pre-alignment.
    ValueError
        For a wrong back-end name or parameter; any other exception is a bug.
    """
    if backend == "elastix":
        from .elastix import register_elastix

        if template_level or raw_level:
            raise ValueError("the elastix back-end needs full-resolution images")
        return register_elastix(raw, template, template_mask, initial, params)
    if backend == "fast":
        from .fast import register_fast

        return register_fast(raw, template, template_mask, initial, params, template_level=template_level,
                             raw_level=raw_level)
    raise ValueError(_unknown_backend(backend))


def template_level(backend: str, params: dict[str, Any] | None, canvas_shape_yx: tuple[int, int]) -> int:
    """Pyramid level at which the back-end reads the template (0 = full resolution).

    The fast back-end refines large slices on a pyramid level only, so the template is
    built there: a quarter of the pixels per level. Elastix builds its own pyramid from a
    full-resolution template, as in the paper.
    """
    if backend == "fast":
        from .fast import finest_level

        return finest_level(canvas_shape_yx, params)
    return 0


def sampled_ncc(raw: np.ndarray, template: np.ndarray, mask: np.ndarray, affine: np.ndarray, step: int = 4) -> float:
    """NCC between the template and the raw slice warped by ``affine``, on a grid of ``step`` px."""
    h, w = template.shape
    gy, gx = np.mgrid[0:h:step, 0:w:step].astype(np.float32)
    pts = apply_to_points(affine, np.stack([gx.ravel(), gy.ravel()], 1)).astype(np.float32)
    sampled = cv2.remap(raw.astype(np.float32), pts[:, 0].reshape(gx.shape), pts[:, 1].reshape(gx.shape),
                        cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=np.nan)
    t = template[::step, ::step]
    return ncc(sampled, t, mask[::step, ::step] & np.isfinite(sampled) & np.isfinite(t))


def distortion_px(correction: np.ndarray, canvas_shape_yx: tuple[int, int]) -> float:
    """How far the linear part (scale, shear, rotation) of ``correction`` moves the canvas
    corners about its centre, in px: large for auto-focus or scan distortions, near 0 for
    a shift."""
    h, w = canvas_shape_yx
    half = np.array([[w - 1, h - 1], [w - 1, 1 - h], [1 - w, h - 1], [1 - w, 1 - h]], float) / 2
    linear = np.asarray(correction, float)[:, :2] - np.eye(2)
    return float(np.linalg.norm(half @ linear.T, axis=1).max())


def geometry_problem(result: np.ndarray, initial: np.ndarray, canvas_shape_yx: tuple[int, int], *,
                     max_scale_change: float, max_shear: float, max_shift_px: float) -> str:
    """Empty string if the correction from ``initial`` to ``result`` (output -> raw affines) is
    within the bounds on scale, shear and shift (measured at the canvas corners and centre),
    else which bound it breaks."""
    correction = compose(invert(initial), result)
    d = decompose(correction)
    if abs(d["scale_x"] - 1) > max_scale_change or abs(d["scale_y"] - 1) > max_scale_change:
        return f"scale change {d['scale_x']:.4f}/{d['scale_y']:.4f} exceeds {max_scale_change}"
    if abs(d["shear"]) > max_shear:
        return f"shear {d['shear']:.4f} exceeds {max_shear}"
    h, w = canvas_shape_yx
    corners = np.array([[0, 0], [w - 1, 0], [0, h - 1], [w - 1, h - 1], [(w - 1) / 2, (h - 1) / 2]], float)
    shift = np.linalg.norm(apply_to_points(correction, corners) - corners, axis=1).max()
    if shift > max_shift_px:
        return f"moves pixels by {shift:.1f} px (> {max_shift_px})"
    return ""


def check_result(result: np.ndarray, initial: np.ndarray, canvas_shape_yx: tuple[int, int], *,
                 ncc_before: float, ncc_after: float, max_scale_change: float, max_shear: float,
                 max_shift_px: float, min_ncc_gain: float, min_ncc: float = 0.0) -> str:
    """Empty string if the registration is plausible, else the reason to fall back.

    Parameters
    ----------
    result, initial : (2, 3) affines (output -> raw): the registration and its start
    canvas_shape_yx : (H, W) of the output canvas (the shift is measured at its corners)
    ncc_before, ncc_after : the slice's NCC with its template at ``initial`` and at ``result``
    max_scale_change, max_shear, max_shift_px, min_ncc_gain, min_ncc : the thresholds
        (the config's ``register`` options of the same names)
    """
    problem = geometry_problem(result, initial, canvas_shape_yx, max_scale_change=max_scale_change,
                               max_shear=max_shear, max_shift_px=max_shift_px)
    if problem:
        return problem
    if not np.isfinite(ncc_after):
        return "no overlap with the template"
    if ncc_after < min_ncc:
        return f"does not resemble its template (NCC {ncc_after:.3f} < {min_ncc})"
    if np.isfinite(ncc_before) and ncc_after - ncc_before < min_ncc_gain:
        return f"similarity to the template fell ({ncc_before:.4f} -> {ncc_after:.4f})"
    return ""


__all__ = ["Backend", "BackendName", "backend_for", "register", "template_level", "check_result", "geometry_problem", "distortion_px",
           "sampled_ncc", "RegistrationError", "RegistrationResult", "BACKENDS"]
