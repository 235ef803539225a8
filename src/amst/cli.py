"""The ``amst`` command line."""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path

import click

from .stack import StackError, VoxelSize, open_stack


def _voxel_option(f):
    return click.option("--voxel-size", nargs=3, type=float, default=None, metavar="Z Y X",
                        help="Voxel size in nm (overrides the file's metadata).")(f)


def _voxel(values) -> VoxelSize | None:
    return VoxelSize.from_values(*values) if values else None


class _Cli(click.Group):
    """Turns expected errors (bad input, bad options) into one clear line, no traceback."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except (StackError, ValueError, FileNotFoundError, PermissionError, OSError) as exc:
            if isinstance(exc, click.ClickException):
                raise
            click.echo(f"amst: error: {exc}", err=True)
            sys.exit(2)


@click.group(cls=_Cli)
@click.version_option(package_name="amst")
@click.option("-v", "--verbose", is_flag=True, help="Log debug messages.")
def main(verbose: bool) -> None:
    """AMST: align FIB-SEM stacks to a median-smoothed template."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(levelname)s %(message)s")


@main.command()
@click.argument("path")
@click.option("--pattern", default=None, help="Glob for TIFF folders (default *.tif*).")
@click.option("--dataset", default=None, help="HDF5 dataset or Zarr array inside PATH.")
@click.option("--allow-pad", is_flag=True, help="Accept TIFF folders whose slices differ in shape.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@_voxel_option
def info(path: str, pattern: str | None, dataset: str | None, allow_pad: bool, as_json: bool, voxel_size) -> None:
    """Shape, dtype, voxel size and slice count of a stack."""
    try:
        stack = open_stack(path, pattern=pattern, dataset=dataset, voxel_size=_voxel(voxel_size), allow_pad=allow_pad)
    except StackError as exc:
        if "differ in shape" in str(exc) and not allow_pad:
            stack = open_stack(path, pattern=pattern, dataset=dataset, voxel_size=_voxel(voxel_size), allow_pad=True)
        else:
            raise
    d = stack.describe()
    if as_json:
        click.echo(json.dumps(d, indent=2))
        return
    z, y, x = d["shape_zyx"]
    click.echo(f"path        {d['path']} ({d['kind']})")
    click.echo(f"slices      {z}")
    click.echo(f"slice shape {y} x {x} (y x)")
    click.echo(f"dtype       {d['dtype']}")
    click.echo(f"voxel size  {stack.voxel_size if stack.voxel_size else 'unknown (pass --voxel-size Z Y X)'}")
    if d.get("first"):
        click.echo(f"files       {d['first']} ... {d['last']} (pattern {d['pattern']})")
    mism = d.get("shape_mismatches") or []
    if mism:
        click.echo(f"WARNING     {len(mism)} slice(s) differ from the canvas {y} x {x}:")
        for m in mism[:20]:
            click.echo(f"            {m['name']}: {m['shape_yx'][0]} x {m['shape_yx'][1]}")
    else:
        click.echo("consistency all slices have the same shape")


@main.command()
@click.argument("out", type=click.Path(file_okay=False))
@click.option("--preset", default="fibsem-marks", show_default=True,
              type=click.Choice(["fibsem-marks", "fibsem-nomarks", "ideal"]))
@click.option("--shape", nargs=3, type=int, default=(100, 1024, 1024), show_default=True, metavar="Z Y X")
@click.option("--voxel-size", nargs=3, type=float, default=(8.0, 5.0, 5.0), show_default=True, metavar="Z Y X",
              help="nm")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--dtype", type=click.Choice(["uint8", "uint16", "float32"]), default="uint8", show_default=True)
@click.option("--no-marks", is_flag=True, help="No alignment marks in the platinum cap.")
@click.option("--texture", default=None, help="Real 2-D EM image used as cytoplasm texture (e.g. real_2d/*.h5).")
@click.option("--out-format", type=click.Choice(["tiff", "zarr"]), default="tiff", show_default=True)
@click.option("--clean", is_flag=True, help="Also write the undistorted noise-free volume.")
@click.option("--workers", type=int, default=None, help="Processes (default: all cores).")
def synth(out, preset, shape, voxel_size, seed, dtype, no_marks, texture, out_format, clean, workers) -> None:
    """Write a synthetic FIB-SEM stack with exact ground truth to OUT."""
    from tqdm import tqdm

    from .synth import SynthConfig, synthesize

    cfg = SynthConfig(shape=tuple(shape), preset=preset, seed=seed, dtype=dtype,
                      voxel_size=VoxelSize.from_values(*voxel_size), marks=False if no_marks else None,
                      texture=texture)
    t0 = time.perf_counter()
    with tqdm(total=shape[0], desc="synth", unit="slice") as bar:
        synthesize(out, cfg, out_format=out_format, write_clean=clean, workers=workers, progress=bar.update)
    click.echo(f"wrote {shape[0]} slices to {out} in {time.perf_counter() - t0:.1f} s "
               f"(ground truth: {Path(out) / 'ground_truth.json'})")

