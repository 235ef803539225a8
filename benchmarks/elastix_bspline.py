"""The reference for ``register.elastic``: elastix B-spline with a bending-energy penalty (as AMST2 offers it).

Used by ``benchmarks/elastic.py``: each chosen slice of an affine-only AMST output is
registered to the median of its +-``radius`` aligned neighbours (itself included, as
AMST's template) with elastix's ``bspline`` map (``AdvancedMattesMutualInformation`` +
``TransformBendingEnergyPenalty``), control points every ``spacing`` px. The result is a
dense displacement per output pixel, carried to raw px through the slice's affine, so the
same ground-truth error applies as to amst's fields.
"""

from __future__ import annotations

import tempfile
import time

import numpy as np

from amst.register.elastix import _itk


def bspline_parameters(spacing: float, bending_weight: float):
    itk = _itk()
    po = itk.ParameterObject.New()
    pm = po.GetDefaultParameterMap("bspline", 2)
    pm["FinalGridSpacingInPhysicalUnits"] = [str(float(spacing))]
    pm["Metric1Weight"] = [str(float(bending_weight))]
    pm["NumberOfSpatialSamples"] = ["4096"]
    pm["MaximumNumberOfIterations"] = ["300"]
    pm["WriteResultImage"] = ["false"]
    pm["RandomSeed"] = ["121212"]
    po.AddParameterMap(pm)
    return po


def bspline_displacements(aligned, affines: np.ndarray, slices: list[int], *, spacing: float, bending_weight: float,
                          radius: int = 7) -> tuple[dict[int, np.ndarray], float]:
    """Per chosen slice the (H, W, 2) displacement in raw px elastix adds to its affine, and
    the mean seconds per slice."""
    itk = _itk()
    n = len(aligned)
    cache: dict[int, np.ndarray] = {}

    def read(z: int) -> np.ndarray:
        if z not in cache:
            cache[z] = aligned.read(z).astype(np.float32)
        return cache[z]

    params = bspline_parameters(spacing, bending_weight)
    out, seconds = {}, 0.0
    for z in slices:
        members = [read(k) for k in range(max(0, z - radius), min(n, z + radius + 1))]
        template = np.median(members, axis=0).astype(np.float32)
        covered = np.all(np.array(members) > 0, axis=0)
        t0 = time.perf_counter()
        fixed, moving = itk.image_view_from_array(template), itk.image_view_from_array(read(z))
        mask = itk.image_view_from_array(covered.astype(np.uint8))
        _, result = itk.elastix_registration_method(fixed, moving, parameter_object=params, fixed_mask=mask,
                                                    log_to_console=False)
        with tempfile.TemporaryDirectory(prefix="amst-transformix-") as tmp:  # transformix writes its field file there
            field = np.asarray(itk.transformix_deformation_field(moving, result, output_directory=tmp),
                               np.float64)  # (H, W, 2): dx, dy
        seconds += time.perf_counter() - t0
        out[z] = field @ np.asarray(affines[z])[:, :2].T  # output-px displacement -> raw px
        cache = {k: v for k, v in cache.items() if k >= z - radius}
    return out, seconds / max(1, len(slices))


def output_to_raw(affines: np.ndarray, displacements: dict[int, np.ndarray]):
    """``(z, points_xy) -> raw_xy`` through the affine plus the dense displacement (points on whole pixels)."""
    def mapped(z: int, pts: np.ndarray) -> np.ndarray:
        raw = pts @ affines[z][:, :2].T + affines[z][:, 2]
        if z in displacements:
            d = displacements[z]
            raw = raw + d[np.rint(pts[:, 1]).astype(int), np.rint(pts[:, 0]).astype(int)]
        return raw
    return mapped
