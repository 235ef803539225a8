"""The post-stage of ``z_spacing``: each slice's depth measured on the written output and,
for ``resample``, the output written again on an even z grid (``aligned_z``)."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from tqdm import tqdm

from ..config import RunConfig
from ..fallbacks import RunError
from ..outdir import Ownership, read_ownership, remove_entry, write_ownership
from ..stack import Stack, check_output_fits, create_writer, open_stack
from ..warp import SliceMaps
from ..zspacing import ZSpacing
from ..zspacing.grid import even_grid
from ..zspacing.stackwise import EVEN_Z_OUTPUT, estimate_stack_depths, even_names, output_path, write_even_grid
from .output_folder import even_z_entry

log = logging.getLogger("amst")


def keep_or_drop_even_z(out: Path, ownership: Ownership, cfg: RunConfig, resuming: bool) -> None:
    """On a resumed run, carry the earlier marker's even-z entry (its file names) into ``ownership``,
    or remove that output when this run does not resample: it was built from the earlier depths."""
    previous = read_ownership(out) if resuming else None
    earlier = [e for e in (previous.entries if previous else []) if e.name in EVEN_Z_OUTPUT.values()]
    if not earlier:
        return
    mine = {e.name for e in ownership.entries}
    for entry in earlier:
        if cfg.z_spacing.mode == "resample" and entry.name in mine:
            ownership.entries[:] = [entry if e.name == entry.name else e for e in ownership.entries]
        elif (out / entry.name).exists():
            remove_entry(out, entry)
            log.info("removed %s: the earlier run's even-z output, which this run (z_spacing.mode %s) does not "
                     "rebuild", out / entry.name, cfg.z_spacing.mode)


def depths_and_even_z(stack: Stack, out: Path, out_stack: Path, *, maps: SliceMaps, canvas: tuple[int, int],
                      cfg: RunConfig, provenance: dict[str, Any], ownership: Ownership, workers: int,
                      progress: bool) -> tuple[ZSpacing, dict[str, float]]:
    """Estimate each slice's depth on the written output and, for ``resample``, write the even-z output.

    ``maps``: each slice's final map (:class:`amst.warp.SliceMaps`), for the even-z output.
    Returns the depths and the seconds of the two stages (``z_spacing``, ``even_z``).

    Raises
    ------
    RunError
        When the depths cannot be measured; the alignment is complete then, and the
        message says how to finish without depths.
    """
    t0 = time.perf_counter()
    try:
        with tqdm(total=len(stack), desc="z spacing", unit="slice", disable=not progress) as bar:
            depths = estimate_stack_depths(open_stack(out_stack), stack.voxel_size, cfg.z_spacing.params(),
                                           workers=workers, progress=bar.update)
    except ValueError as exc:
        raise RunError(f"z spacing: {exc}. Every slice is aligned and written ({out_stack}); run the same command "
                       "with --z-spacing off to finish the run without slice depths (nothing is recomputed)") from exc
    seconds = {"z_spacing": time.perf_counter() - t0}
    summary = depths.summary()
    log.info("z spacing: mean thickness %.2f nm (nominal %.2f), range %.2f-%.2f nm, isotropy ratio %.3f, %d "
             "slice(s) without a measurement", summary["mean_thickness_nm"], depths.nominal_nm,
             *summary["thickness_range_nm"], depths.isotropy_ratio, len(summary["unmeasured_slices"]))
    if cfg.z_spacing.mode != "resample":
        return depths, seconds
    t0 = time.perf_counter()
    grid = even_grid(depths.z_nm, depths.nominal_nm)
    fmt = cfg.output.out_format
    names = even_names(len(grid))
    check_output_fits(fmt, (len(grid), *canvas), stack.dtype)
    entry = even_z_entry(fmt, names)  # recorded before any of its files exists
    ownership.entries[:] = [entry if e.name == entry.name else e for e in ownership.entries]
    write_ownership(out, ownership)
    writer = create_writer(output_path(out, fmt), fmt, (len(grid), *canvas), stack.dtype, stack.voxel_size,
                           names=names, ngff_version=cfg.output.ngff_version, provenance=provenance)
    with tqdm(total=len(grid), desc="even z", unit="slice", disable=not progress) as bar:
        write_even_grid(stack, maps, canvas, grid, writer, order=cfg.warp.order, workers=workers,
                        progress=bar.update)
    writer.close()
    seconds["even_z"] = time.perf_counter() - t0
    log.info("even z grid: %d slices of %.2f nm from %d aligned slices -> %s", len(grid), depths.nominal_nm,
             len(stack), output_path(out, fmt))
    return depths, seconds


