"""Affine registration with itk-elastix: the paper's engine and the reference back-end.

ITK loads lazily and its first call in a process takes many seconds and ~850 MB, so
``itk`` is imported here, inside the back-end, once per worker process, and never by
commands that do not register (the config checks :data:`ALLOWED_PARAMETERS` without it).

Pixels without data never enter the metric: the fixed image (template) gets a mask of its
valid pixels, and when the slice has to be resampled onto the canvas first (an affine start,
pass 2) the moving image gets a mask of the canvas pixels the raw slice covers.
"""

from __future__ import annotations

import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from ..transform import as_affine, compose, translation
from .base import RegistrationError, RegistrationResult

# The paper's parameters (Hennies et al. 2020, Methods (iii)); every one can be overridden.
PAPER_PARAMETERS: dict[str, Any] = {
    "Registration": "MultiResolutionRegistration",
    "Transform": "AffineTransform",
    "Metric": "AdvancedMattesMutualInformation",
    "NumberOfHistogramBins": 32,
    "Optimizer": "AdaptiveStochasticGradientDescent",
    "MaximumNumberOfIterations": 200,
    "MaximumStepLength": [4.0, 2.0, 1.0],
    "AutomaticScalesEstimation": "false",
    "AutomaticTransformInitialization": "false",
    "NumberOfResolutions": 3,
    "FixedImagePyramid": "FixedSmoothingImagePyramid",
    "MovingImagePyramid": "MovingSmoothingImagePyramid",
    "ImagePyramidSchedule": [8, 8, 3, 3, 1, 1],
    "ImageSampler": "RandomCoordinate",
    "NumberOfSpatialSamples": 2048,
    "NewSamplesEveryIteration": "true",
    "Interpolator": "BSplineInterpolator",
    "BSplineInterpolationOrder": 1,
    "ResampleInterpolator": "FinalBSplineInterpolator",
    "FinalBSplineInterpolationOrder": 1,
    "Resampler": "DefaultResampler",
    "FixedInternalImagePixelType": "float",
    "MovingInternalImagePixelType": "float",
    "HowToCombineTransforms": "Compose",
    "ErodeMask": "false",
    "WriteResultImage": "false",
    "RandomSeed": 121212,
}

# The names in elastix's default affine parameter map,
# ``itk.ParameterObject.New().GetDefaultParameterMap("affine").keys()`` (itk-elastix 0.25);
# kept here so that checking a config does not load ITK. tests/test_trust_config.py checks
# it against the installed itk-elastix.
ITK_DEFAULT_AFFINE_PARAMETERS: frozenset[str] = frozenset({
    "AutomaticParameterEstimation", "AutomaticScalesEstimation", "CheckNumberOfSamples", "DefaultPixelValue",
    "FinalBSplineInterpolationOrder", "FixedImagePyramid", "ImageSampler", "Interpolator",
    "MaximumNumberOfIterations", "MaximumNumberOfSamplingAttempts", "Metric", "MovingImagePyramid",
    "NewSamplesEveryIteration", "NumberOfResolutions", "NumberOfSamplesForExactGradient", "NumberOfSpatialSamples",
    "Optimizer", "Registration", "ResampleInterpolator", "Resampler", "ResultImageFormat", "Transform",
    "WriteIterationInfo", "WriteResultImage",
})

# Beyond those two lists: the knobs of the masks this back-end always passes, and of the
# "too many samples map outside the moving image" failure.
MASK_PARAMETERS: frozenset[str] = frozenset({"ErodeFixedMask", "ErodeMovingMask", "RequiredRatioOfValidSamples"})

ALLOWED_PARAMETERS: frozenset[str] = frozenset(PAPER_PARAMETERS) | ITK_DEFAULT_AFFINE_PARAMETERS | MASK_PARAMETERS

# Value checks of the parameters whose values have a fixed form: (kind, lower bound).
_INTEGER_PARAMETERS: dict[str, int] = {
    "MaximumNumberOfIterations": 1, "NumberOfResolutions": 1, "NumberOfHistogramBins": 2,
    "NumberOfSpatialSamples": 1, "NumberOfSamplesForExactGradient": 1, "ImagePyramidSchedule": 1,
    "MaximumNumberOfSamplingAttempts": 0, "RandomSeed": 0, "BSplineInterpolationOrder": 0,
    "FinalBSplineInterpolationOrder": 0,
}
_POSITIVE_NUMBER_PARAMETERS = ("MaximumStepLength", "RequiredRatioOfValidSamples")
_BOOLEAN_PARAMETERS = ("AutomaticParameterEstimation", "AutomaticScalesEstimation", "AutomaticTransformInitialization",
                       "CheckNumberOfSamples", "NewSamplesEveryIteration", "ErodeMask", "ErodeFixedMask",
                       "ErodeMovingMask", "WriteIterationInfo", "WriteResultImage")
_FIXED_VALUES = {"Transform": ("AffineTransform",)}  # the result is read back as an affine


def validate_parameters(parameters: dict[str, Any], prefix: str = "register.elastix") -> None:
    """Refuse unknown elastix parameter names and values of the wrong form.

    Parameters
    ----------
    parameters : overrides of :data:`PAPER_PARAMETERS`, as in the config's ``register.elastix``
    prefix : config path named in the messages

    Raises
    ------
    ValueError
        Naming the parameter and what is allowed.
    """
    for key, value in parameters.items():
        path = f"{prefix}.{key}"
        if key not in ALLOWED_PARAMETERS:
            raise ValueError(f"unknown option {path!r}; allowed elastix parameters: "
                             f"{', '.join(sorted(ALLOWED_PARAMETERS))}")
        values = list(value) if isinstance(value, (list, tuple)) else [value]
        if not values or any(isinstance(v, (list, tuple, dict)) or v is None for v in values) or \
                not all(isinstance(v, (str, int, float)) for v in values):
            raise ValueError(f"{path}: {value!r} must be a value or a list of values (strings or numbers)")
        for v in values:
            _check_value(path, key, v)


def _check_value(path: str, key: str, v: Any) -> None:
    if key in _INTEGER_PARAMETERS:
        low = _INTEGER_PARAMETERS[key]
        n = _as_number(v, int)
        if n is None or n < low:
            raise ValueError(f"{path}: {v!r} must be an integer >= {low}")
    elif key in _POSITIVE_NUMBER_PARAMETERS:
        x = _as_number(v, float)
        if x is None or not x > 0 or (key == "RequiredRatioOfValidSamples" and x > 1):
            bound = "in (0, 1]" if key == "RequiredRatioOfValidSamples" else "> 0"
            raise ValueError(f"{path}: {v!r} must be a number {bound}")
    elif key in _BOOLEAN_PARAMETERS:
        if not (isinstance(v, bool) or (isinstance(v, str) and v.lower() in ("true", "false"))):
            raise ValueError(f"{path}: {v!r} must be true or false")
    elif key in _FIXED_VALUES and v not in _FIXED_VALUES[key]:
        raise ValueError(f"{path}: {v!r} is not allowed; use one of {', '.join(_FIXED_VALUES[key])}")


def _as_number(v: Any, kind: type) -> float | int | None:
    """``v`` (a number, or a string of one as elastix maps hold them) as ``kind``, else None."""
    if isinstance(v, bool):
        return None
    if isinstance(v, str):
        try:
            v = int(v) if kind is int else float(v)
        except ValueError:
            return None
    if kind is int and not isinstance(v, int):
        return None
    if not isinstance(v, (int, float)) or not np.isfinite(v):
        return None
    return v


def _itk():
    """The ``itk`` module, imported on the first call (``sys.modules`` keeps it after)."""
    import itk  # noqa: PLC0415 - deliberately lazy, see the module docstring

    return itk


def _parameter_object(params: dict[str, Any]):
    itk = _itk()
    po = itk.ParameterObject.New()
    pm = po.GetDefaultParameterMap("affine")
    for key in list(pm.keys()):
        if key not in params:
            del pm[key]
    for key, value in params.items():
        values = value if isinstance(value, (list, tuple)) else [value]
        pm[key] = [str(v).lower() if isinstance(v, bool) else str(v) for v in values]
    po.AddParameterMap(pm)
    return po


def _valid_filled(image: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """``image`` with invalid pixels set to the mean of the valid ones, and the mask to give
    elastix (None when every pixel is valid): ``valid`` less one pixel at its edge, since
    elastix tests a mask at the nearest pixel and interpolates linearly from the neighbours."""
    if valid.all():
        return np.ascontiguousarray(image, dtype=np.float32), None
    if not valid.any():
        raise RegistrationError("no pixel with data to register")
    filled = np.where(valid, image, np.float32(image[valid].mean())).astype(np.float32)
    mask = cv2.erode(valid.astype(np.uint8), np.ones((3, 3), np.uint8), borderType=cv2.BORDER_REPLICATE)
    if not mask.any():
        raise RegistrationError("no pixel with data to register (the valid area is thinner than 3 px)")
    return filled, mask


def register_elastix(raw: np.ndarray, template: np.ndarray, template_mask: np.ndarray | None,
                     initial: np.ndarray, parameters: dict[str, Any] | None = None, threads: int = 1) -> RegistrationResult:
    """Register a raw slice to its template slice with an affine (output -> raw).

    Parameters
    ----------
    raw : 2-D array, the moving image (NaN where it has no data)
    template : 2-D array on the output canvas, the fixed image (NaN where it has no data)
    template_mask : bool array, template pixels to use (covered canvas), or None for the
        finite ones
    initial : (2, 3) array, the pre-alignment (output -> raw); elastix starts from it
    parameters : overrides of :data:`PAPER_PARAMETERS`
    threads : elastix threads (1 per worker: elastix's default threading is a slowdown)

    Returns
    -------
    RegistrationResult

    Raises
    ------
    RegistrationError
        When elastix stops with an error (e.g. too many samples map outside the moving
        image), the images have no pixel with data, or the result is not finite.
    """
    itk = _itk()
    params = {**PAPER_PARAMETERS, **(parameters or {})}
    init = as_affine(initial)
    template = np.asarray(template, dtype=np.float32)
    valid = np.isfinite(template)
    if template_mask is not None:
        valid &= np.asarray(template_mask, bool)
    fixed_image, fixed_mask = _valid_filled(template, valid)
    fixed = itk.image_view_from_array(fixed_image)
    moving_mask = None
    if np.allclose(init[:, :2], np.eye(2)):
        # A translation start costs nothing: with origin -t, physical point p is raw pixel
        # p + t, so elastix starts at identity on the untouched raw slice (and discards
        # samples outside it).
        start = translation(0.0, 0.0)
        t = init[:, 2]
        raw = np.asarray(raw, dtype=np.float32)
        raw_image, moving_mask = _valid_filled(raw, np.isfinite(raw))
        moving = itk.image_view_from_array(raw_image)
        moving.SetOrigin((float(-t[0]), float(-t[1])))
    else:
        # A general affine start (second pass): resample the raw slice onto the canvas once
        # for the measurement only; the output is still resampled once, from raw. The canvas
        # outside the raw slice is no data, not a black image: it gets a moving mask.
        from ..warp import warp_slice

        start, t = init, np.zeros(2)
        moved = warp_slice(np.asarray(raw, dtype=np.float32), init, template.shape, "cubic", fill=np.nan)
        moved, moving_mask = _valid_filled(moved, np.isfinite(moved))
        moving = itk.image_view_from_array(moved)
    kwargs: dict[str, Any] = {"parameter_object": _parameter_object(params), "number_of_threads": int(threads)}
    if fixed_mask is not None:
        kwargs["fixed_mask"] = itk.image_view_from_array(fixed_mask)
    if moving_mask is not None:
        kwargs["moving_mask"] = itk.image_view_from_array(moving_mask)
        kwargs["moving_mask"].SetOrigin(moving.GetOrigin())
    result = _run(itk, fixed, moving, kwargs)
    correction = _affine_from_result(result.GetParameterMap(0))
    if not np.isfinite(correction).all():
        raise RegistrationError("elastix returned a non-finite transform")
    return RegistrationResult(compose(translation(*t), start, correction), {"backend": "elastix"})


def _run(itk, fixed, moving, kwargs: dict[str, Any]):
    """``itk.elastix_registration_method`` with its log in a temporary folder, read for the
    reason of a failure (ITK's exception says only "see elastix log").

    Raises
    ------
    RegistrationError
        For a failure of the registration itself.
    ValueError
        When elastix cannot create a component a parameter names (a configuration error,
        the same for every slice).
    """
    with tempfile.TemporaryDirectory(prefix="amst-elastix-") as tmp:
        try:
            _, result = itk.elastix_registration_method(fixed, moving, log_to_console=False, log_to_file=True,
                                                        log_file_name="elastix.log", output_directory=tmp, **kwargs)
        except RuntimeError as exc:
            text = _read_log(Path(tmp) / "elastix.log")
            missing = re.search(r"component could not be created: (\S+)", text)
            if missing:
                raise ValueError(f"register.elastix: elastix has no component {missing.group(1)!r}; check the "
                                 "parameter that names it (Metric, Optimizer, ImageSampler, ...)") from exc
            raise RegistrationError(f"elastix failed: {_log_error(text) or exc}") from exc
    return result


def _read_log(log: Path) -> str:
    try:
        return log.read_text(errors="replace")
    except OSError:
        return ""


def _log_error(text: str) -> str:
    """The ``Description:`` of the last ITK exception in an elastix log ('' if none)."""
    found = re.findall(r"Description: (?:ITK ERROR: [^:]*: )?(.+)", text)
    return found[-1].strip() if found else ""


def _affine_from_result(pm) -> np.ndarray:
    """elastix AffineTransform parameters (a11 a12 a21 a22 tx ty, centre c) as output -> moving."""
    p = np.array([float(v) for v in pm["TransformParameters"]])
    c = np.array([float(v) for v in pm["CenterOfRotationPoint"]])
    a = p[:4].reshape(2, 2)
    t = p[4:6]
    m = np.zeros((2, 3))
    m[:, :2] = a
    m[:, 2] = c + t - a @ c
    return m


def probe_parameters(parameters: dict[str, Any]) -> None:
    """Register a small synthetic pair with ``parameters``, to find what elastix cannot use.

    Some parameter values are known to be wrong only to elastix (a component name that does
    not exist, an interpolation order it does not have). The run calls this once, before its
    output folder is touched, when ``register.elastix`` overrides the paper's parameters.

    Raises
    ------
    ValueError
        Naming ``register.elastix`` and what elastix said.
    """
    rng = np.random.default_rng(0)
    texture = cv2.GaussianBlur(rng.random((128, 128)).astype(np.float32), (0, 0), 3.0)
    moved = np.roll(texture, (1, 2), axis=(0, 1))
    try:
        register_elastix(moved, texture, None, translation(0.0, 0.0), parameters)
    except RegistrationError as exc:
        raise ValueError(f"register.elastix: elastix cannot register a clean test pair with these parameters "
                         f"({exc}); check the values in register.elastix") from exc


@dataclass(frozen=True, eq=False)
class ElastixBackend:
    """The elastix back-end behind the :class:`amst.register.base.Backend` protocol.

    Elastix builds its own pyramid from full-resolution images, as in the paper: the only
    level is 0. Each method delegates to this module's functions (:func:`register_elastix`,
    :func:`probe_parameters`) with ``params``.

    Parameters
    ----------
    params : dict
        Overrides of :data:`PAPER_PARAMETERS`, as in the config's ``register.elastix``.
    """

    params: dict[str, Any] = field(default_factory=dict)
    name: str = field(default="elastix", init=False)

    def template_level(self, canvas_shape_yx: tuple[int, int]) -> int:
        """0: elastix reads the full-resolution template."""
        return 0

    def level_image(self, image: np.ndarray, level: int) -> np.ndarray:
        """``image`` itself (level 0 only).

        Raises
        ------
        ValueError
            For a level other than 0.
        """
        _full_resolution(level)
        return image

    def level_shape(self, shape_yx: tuple[int, int], level: int) -> tuple[int, int]:
        """``shape_yx`` (level 0 only).

        Raises
        ------
        ValueError
            For a level other than 0.
        """
        _full_resolution(level)
        h, w = shape_yx
        return int(h), int(w)

    def register(self, raw: np.ndarray, template: np.ndarray, template_mask: np.ndarray | None,
                 initial: np.ndarray, *, level: int) -> RegistrationResult:
        """:func:`register_elastix` (one thread) on full-resolution images.

        Raises
        ------
        RegistrationError
            When elastix stops with an error or the images have no pixel with data.
        ValueError
            For a level other than 0, or a parameter naming a component elastix lacks.
        """
        _full_resolution(level)
        return register_elastix(raw, template, template_mask, initial, self.params)

    @property
    def needs_probe(self) -> bool:
        """True when ``params`` overrides the paper's parameters."""
        return bool(self.params)

    def probe(self) -> None:
        """:func:`probe_parameters` when ``params`` overrides the paper's parameters (loads ITK).

        Raises
        ------
        ValueError
            Naming ``register.elastix`` and what elastix said.
        """
        if self.params:
            probe_parameters(self.params)


def _full_resolution(level: int) -> None:
    if level:
        raise ValueError("the elastix back-end needs full-resolution images")
