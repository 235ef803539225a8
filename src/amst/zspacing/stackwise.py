"""Depths of an aligned stack on disk, and an even z grid written from raw: the I/O edge of z spacing."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from types import MappingProxyType
from typing import Any, Callable

import numpy as np

from ..parallel import ordered_map
from ..stack import Stack, VoxelSize
from ..transforms_io import Transforms
from ..warp import SliceMaps
from .estimate import ZSpacing, ZSpacingParams, estimate_depths
from .grid import GridSlice, even_grid

__all__ = ["EVEN_Z_OUTPUT", "estimate_stack_depths", "even_names", "grid_for", "output_path", "with_depths",
           "write_even_grid"]

#: The even-z output of a run, next to the per-slice one (``aligned.zarr`` -> ``aligned_z.zarr``).
EVEN_Z_OUTPUT = MappingProxyType({"zarr": "aligned_z.zarr", "tiff": "aligned_z", "tiff-stack": "aligned_z.tif",
                                   "mrc": "aligned_z.mrc"})


def estimate_stack_depths(aligned: Stack, voxel_size: VoxelSize | None, params: ZSpacingParams, *, workers: int = 1,
                          progress: Callable[[int], None] | None = None) -> ZSpacing:
    """Estimate the depth of every slice of an aligned stack (:func:`amst.zspacing.estimate_depths`).

    Raises
    ------
    ValueError
        When the voxel size is unknown (the nominal step and pixel size are needed).
    """
    from ..quality.residual import common_coverage

    if voxel_size is None:
        raise ValueError(f"{aligned.path}: the voxel size is unknown; z spacing needs the nominal slice step and "
                         "the pixel size: give --voxel-size Z Y X (nm)")
    if abs(voxel_size.y - voxel_size.x) > 0.01 * voxel_size.x:
        raise ValueError(f"{aligned.path}: pixels of {voxel_size.x:g} x {voxel_size.y:g} nm (x, y) are not square; the "
                         "in-plane ruler of z spacing averages x and y shifts and needs square pixels")
    covered = common_coverage(aligned)
    return estimate_depths(aligned.read, len(aligned), covered, nominal_nm=voxel_size.z, pixel_nm=voxel_size.x,
                           params=params, workers=workers, progress=progress)


def with_depths(tf: Transforms, depths: ZSpacing) -> Transforms:
    """``tf`` with each slice's ``z_nm`` / ``z_nm_sd`` and the stack's ``z_spacing`` record."""
    if len(depths.z_nm) != len(tf.slices):
        raise ValueError(f"{len(depths.z_nm)} depths for {len(tf.slices)} slices")
    slices = [dataclasses.replace(s, z_nm=float(z), z_nm_sd=float(sd))
              for s, z, sd in zip(tf.slices, depths.z_nm, depths.sd_nm)]
    return dataclasses.replace(tf, slices=slices, extra={**tf.extra, "z_spacing": depths.summary()})


def grid_for(tf: Transforms, step_nm: float | None = None) -> list[GridSlice]:
    """The even grid of a transforms file that holds depths, at ``step_nm`` (default: its nominal step)."""
    z = tf.z_nm
    if z is None:
        raise ValueError("these transforms hold no slice depths (z_nm); run `amst zspacing OUT` on the run first, or "
                         "align with --z-spacing estimate")
    step = step_nm or (tf.extra.get("z_spacing") or {}).get("nominal_nm") or (tf.voxel_size and tf.voxel_size.z)
    if not step:
        raise ValueError("the nominal z step is unknown (no voxel size in transforms.json); give --voxel-size")
    if np.any(np.diff(z) < 0):
        raise ValueError("the slice depths (z_nm) decrease somewhere; they cannot be resampled to an even grid")
    return even_grid(z, float(step))


def _even_slice(stack: Stack, *, maps: SliceMaps, canvas: tuple[int, int], cell: GridSlice, order: str,
                warped: dict[int, np.ndarray]) -> np.ndarray:
    """One output slice of the even grid; ``warped`` caches the float aligned slices of the last blend.

    A slice taken whole is warped in its own dtype, exactly as the per-slice output is; a
    blend is warped in float32 and rounded once, after the blend.
    """
    parts = cell.members(order)
    for z in [k for k in warped if k not in {p for p, _ in parts}]:
        del warped[z]
    if len(parts) == 1:
        return maps.warp(parts[0][0], stack.read(parts[0][0]), canvas, order)
    for z, _ in parts:
        if z not in warped:
            warped[z] = maps.warp(z, stack.read(z).astype(np.float32), canvas, order)
    blend = sum(w * warped[z] for z, w in parts)
    dtype = np.dtype(stack.dtype)
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        return np.clip(np.rint(blend), info.min, info.max).astype(dtype)
    return blend.astype(dtype)


def write_even_grid(stack: Stack, maps: SliceMaps, canvas: tuple[int, int], grid: list[GridSlice], writer: Any,
                    *, order: str = "cubic", workers: int = 1, progress: Callable[[int], None] | None = None) -> None:
    """Write each output slice of ``grid`` from the raw slices: one in-plane resampling, then the z blend.

    Work is split into runs of consecutive output slices, so that each run warps each raw
    slice it needs once. ``maps``: every raw slice's affine and field (:class:`amst.warp.SliceMaps`).
    """
    size = max(1, int(np.ceil(len(grid) / max(1, 4 * workers))))
    runs = [grid[i:i + size] for i in range(0, len(grid), size)]

    def one(run: list[GridSlice]) -> int:
        warped: dict[int, np.ndarray] = {}
        for cell in run:
            writer.write(cell.index, _even_slice(stack, maps=maps, canvas=canvas, cell=cell, order=order,
                                                 warped=warped))
        return len(run)

    for count in ordered_map(one, runs, max(1, workers)):
        if progress:
            progress(count)


def even_names(count: int) -> list[str]:
    """Slice file names of an even-z TIFF output (``z_00000.tif`` ...): its slices are depths, not input slices."""
    return [f"z_{k:05d}.tif" for k in range(count)]


def output_path(out: Path, fmt: str) -> Path:
    """Where a run folder ``out`` holds its even-z output in format ``fmt``."""
    return out / EVEN_Z_OUTPUT[fmt]
