"""Affine registration with itk-elastix: the paper's engine and the reference back-end.

ITK loads lazily and its first call in a process takes many seconds and ~850 MB, so
``itk`` is imported here, inside the back-end, once per worker process, and never by
commands that do not register.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..transform import as_affine, compose, translation
from .base import RegistrationResult

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

_ITK = None


def _itk():
    global _ITK
    if _ITK is None:
        import itk  # noqa: PLC0415 - deliberately lazy, see the module docstring

        _ITK = itk
    return _ITK


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


def register_elastix(raw: np.ndarray, template: np.ndarray, template_mask: np.ndarray | None,
                     initial: np.ndarray, parameters: dict[str, Any] | None = None, threads: int = 1) -> RegistrationResult:
    """Register a raw slice to its template slice with an affine (output -> raw).

    Parameters
    ----------
    raw : 2-D array, the moving image
    template : 2-D array on the output canvas, the fixed image
    template_mask : bool array, template pixels to use (covered canvas), or None
    initial : (2, 3) array, the pre-alignment (output -> raw); elastix starts from it
    parameters : overrides of :data:`PAPER_PARAMETERS`
    threads : elastix threads (1 per worker: elastix's default threading is a slowdown)

    Returns
    -------
    RegistrationResult
    """
    itk = _itk()
    params = {**PAPER_PARAMETERS, **(parameters or {})}
    init = as_affine(initial)
    fixed = itk.image_view_from_array(np.ascontiguousarray(template, dtype=np.float32))
    if np.allclose(init[:, :2], np.eye(2)):
        # A translation start costs nothing: with origin -t, physical point p is raw pixel
        # p + t, so elastix starts at identity on the untouched raw slice.
        start = translation(0.0, 0.0)
        t = init[:, 2]
        moving = itk.image_view_from_array(np.ascontiguousarray(raw, dtype=np.float32))
        moving.SetOrigin((float(-t[0]), float(-t[1])))
    else:
        # A general affine start (second pass): resample the raw slice onto the canvas once
        # for the measurement only; the output is still resampled once, from raw.
        from ..warp import warp_slice

        start, t = init, np.zeros(2)
        moved = warp_slice(np.asarray(raw, dtype=np.float32), init, template.shape, "cubic")
        moving = itk.image_view_from_array(np.ascontiguousarray(moved))
    kwargs: dict[str, Any] = {"parameter_object": _parameter_object(params), "log_to_console": False,
                              "number_of_threads": int(threads)}
    if template_mask is not None:
        mask = itk.image_view_from_array(np.ascontiguousarray(template_mask, dtype=np.uint8))
        kwargs["fixed_mask"] = mask
    _, result = itk.elastix_registration_method(fixed, moving, **kwargs)
    correction = _affine_from_result(result.GetParameterMap(0))
    return RegistrationResult(compose(translation(*t), start, correction), {"backend": "elastix"})


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
