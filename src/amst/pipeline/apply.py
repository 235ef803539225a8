"""``amst apply``: the maps (affines and displacement fields) of a run's ``transforms.json`` re-applied to another stack
(another channel, labels), each slice resampled once."""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ..outdir import OwnedEntry, Ownership, claim_output, mark_complete, write_ownership
from ..parallel import default_workers, ordered_map
from ..stack import VoxelSize, create_writer, open_stack
from ..transforms_io import load_transforms
from ..zspacing.stackwise import even_names, grid_for, write_even_grid

log = logging.getLogger("amst")


def apply(transforms: str | Path, input: str | Path, out: str | Path, *, order: str = "cubic",
          out_format: str | None = None, workers: int | None = None, overwrite: bool = False,
          pattern: str | None = None, dataset: str | None = None, channel: int | None = None,
          voxel_size: VoxelSize | None = None, z_spacing: str = "off", progress: bool = True) -> Path:
    """Re-apply the maps of ``transforms.json`` (affines and displacement fields) to another stack (channel, labels).

    Parameters
    ----------
    transforms : path to ``transforms.json``
    input : stack with the same number of slices as the run's input
    out : output stack path (``.zarr`` suffix -> OME-Zarr, otherwise a TIFF folder unless
        ``out_format`` says)
    order : ``nearest`` keeps label values exactly; ``cubic`` reproduces a run's output
        bit for bit when applied to the same raw input.
    channel : detector channel of a multi-channel input (Janelia ``.dat``, OME-Zarr).
    voxel_size : overrides the voxel size written; by default the run's (``transforms.json``),
        else the input's. A run's and an input's that differ by more than 1 % are warned about.
    z_spacing : ``"resample"`` writes the output on an even z grid at the nominal step, from
        the slice depths (``z_nm``) of ``transforms.json`` (:mod:`amst.zspacing.grid`; labels
        with ``nearest`` take the nearer slice); ``"off"`` one output slice per input slice.

    Returns
    -------
    pathlib.Path
        The written stack.
    """
    if order not in ("cubic", "linear", "nearest"):
        raise ValueError(f"order: {order!r} is not allowed; use cubic, linear or nearest (labels)")
    if z_spacing not in ("off", "resample"):
        raise ValueError(f"z_spacing: {z_spacing!r} is not allowed; use off or resample")
    tf = load_transforms(transforms)
    grid = None
    if z_spacing == "resample":
        try:
            grid = grid_for(tf)
        except ValueError as exc:
            raise ValueError(f"{transforms}: {exc}") from exc

    stack = open_stack(input, pattern=pattern, dataset=dataset, channel=channel)
    out_voxel = voxel_size or tf.voxel_size or stack.voxel_size
    if grid is not None and len(grid) > 1 and out_voxel is not None:
        step = grid[1].depth_nm - grid[0].depth_nm
        if not np.isclose(out_voxel.z, step, rtol=1e-6):
            log.info("the even z grid has a step of %.4g nm; writing it as the output's z voxel size", step)
            out_voxel = replace(out_voxel, z=float(step))
    if voxel_size is None and tf.voxel_size and stack.voxel_size and not _same_voxel(tf.voxel_size, stack.voxel_size):
        log.warning("%s says the voxel size is %s, %s says %s; writing the run's (pass --voxel-size to choose)",
                    transforms, tf.voxel_size, input, stack.voxel_size)
    if len(stack) != len(tf.slices):
        raise ValueError(f"{input} has {len(stack)} slices but {transforms} has {len(tf.slices)}; they must match")
    shape_yx = tuple(int(v) for v in stack.shape[1:])
    if tf.input_shape_yx is not None and shape_yx != tuple(tf.input_shape_yx):
        raise ValueError(f"{input} has slices of {shape_yx[0]} x {shape_yx[1]} px, but {transforms} was measured on "
                         f"slices of {tf.input_shape_yx[0]} x {tf.input_shape_yx[1]} px; apply transforms only to "
                         "a stack acquired with the run's input (same slice size)")
    if tf.input_shape_yx is None:
        log.warning("%s does not record the input's slice size (written by an older amst); cannot check that %s "
                    "matches it", transforms, input)
    out = Path(out)
    fmt = out_format or ("zarr" if out.suffix == ".zarr" else "tiff")
    if fmt not in ("zarr", "tiff"):
        raise ValueError(f"out_format: {fmt!r} is not allowed; use zarr or tiff")
    protected = {"the input": stack.path, "the transforms file": Path(transforms)}
    claim_output(out, kind="apply", entries=[OwnedEntry(".", fmt)], overwrite=overwrite, protected=protected)
    canvas = tuple(tf.canvas_shape_yx)
    count, names = (len(stack), stack.names) if grid is None else (len(grid), even_names(len(grid)))
    writer = create_writer(out, fmt, (count, *canvas), stack.dtype, out_voxel, names=names)
    ownership = Ownership("apply", [OwnedEntry(".", fmt, tuple(getattr(writer, "names", ("0",))))])
    write_ownership(out, ownership)  # again: creating a Zarr store may have cleared the folder

    maps = tf.maps()

    def one(z: int) -> None:
        writer.write(z, maps.warp(z, stack.read(z), canvas, order))

    with tqdm(total=count, desc="apply" if grid is None else "apply (even z)", unit="slice",
              disable=not progress) as bar:
        if grid is None:
            for _ in ordered_map(one, range(len(stack)), default_workers(workers)):
                bar.update(1)
        else:
            write_even_grid(stack, maps, canvas, grid, writer, order=order, workers=default_workers(workers),
                            progress=bar.update)
    mark_complete(out, ownership)
    return out


def _same_voxel(a: VoxelSize, b: VoxelSize, tolerance: float = 0.01) -> bool:
    return all(abs(x - y) <= tolerance * max(abs(x), abs(y)) for x, y in zip((a.z, a.y, a.x), (b.z, b.y, b.x)))

