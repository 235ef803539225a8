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
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@_voxel_option
def info(path: str, pattern: str | None, dataset: str | None, as_json: bool, voxel_size) -> None:
    """Shape, dtype, voxel size and slice count of a stack (slices of other shapes are listed)."""
    stack = open_stack(path, pattern=pattern, dataset=dataset, voxel_size=_voxel(voxel_size), allow_pad=True)
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
@click.option("--warp-z-scale", type=float, default=None,
              help="Depth (px) over which membranes bend sideways [default 45]; larger: structures slide less "
                   "with depth, so content-based pre-alignment drifts less.")
@click.option("--out-format", type=click.Choice(["tiff", "zarr"]), default="tiff", show_default=True)
@click.option("--clean", is_flag=True, help="Also write the undistorted noise-free volume.")
@click.option("--workers", type=int, default=None, help="Processes (default: all cores).")
def synth(out, preset, shape, voxel_size, seed, dtype, no_marks, texture, warp_z_scale, out_format, clean,
          workers) -> None:
    """Write a synthetic FIB-SEM stack with exact ground truth to OUT."""
    from tqdm import tqdm

    from .synth import SynthConfig, synthesize

    cfg = SynthConfig(shape=tuple(shape), preset=preset, seed=seed, dtype=dtype,
                      voxel_size=VoxelSize.from_values(*voxel_size), marks=False if no_marks else None,
                      texture=texture, warp_z_scale=warp_z_scale)
    t0 = time.perf_counter()
    with tqdm(total=shape[0], desc="synth", unit="slice") as bar:
        synthesize(out, cfg, out_format=out_format, write_clean=clean, workers=workers, progress=bar.update)
    click.echo(f"wrote {shape[0]} slices to {out} in {time.perf_counter() - t0:.1f} s "
               f"(ground truth: {Path(out) / 'ground_truth.json'})")



def _prealign_options(f):
    """Options shared by ``amst prealign`` and ``amst run``."""
    opts = [
        click.option("--roi", default=None, metavar="'X Y W H'|auto",
                     help="Template-matching region (needs --roi-units), or 'auto' (default)."),
        click.option("--roi-units", type=click.Choice(["px", "nm"]), default=None,
                     help="Units of --roi numbers; required with them (no guessing)."),
        click.option("--roi-slice", type=int, default=None, help="Slice of --roi (default: the middle slice)."),
        click.option("--search-margin", type=int, default=None, help="TM search margin in px (default 64)."),
        click.option("--min-score", type=float, default=None, help="Lowest accepted NCC peak (default 0.5)."),
        click.option("--gaps", default=None, metavar="'1 2 4 8 16'", help="z-gaps of pairs for features/xcorr."),
        click.option("--canvas", type=click.Choice(["union", "input"]), default=None),
        click.option("--xcorr-prefilter", type=click.Choice(["gaussian", "edges", "none"]), default=None),
        click.option("--pattern", default=None, help="Glob for TIFF folders."),
        click.option("--dataset", default=None, help="HDF5 dataset / Zarr array inside INPUT."),
        click.option("--allow-pad", is_flag=True, default=None, help="Pad slices of differing shape."),
        click.option("--skip-bad", is_flag=True, default=None,
                     help="Continue past unreadable slices (they are marked blank)."),
        click.option("--workers", type=int, default=None, help="Processes/threads (default: all cores)."),
        _voxel_option,
    ]
    for o in reversed(opts):
        f = o(f)
    return f


def _flat_prealign(kw: dict) -> dict:
    roi = kw.pop("roi", None)
    if roi is not None and roi != "auto":
        parts = roi.replace(",", " ").split()
        if len(parts) != 4:
            raise click.BadParameter("expected 'X Y W H' or auto", param_hint="--roi")
        if kw.get("roi_units") is None:
            raise click.BadParameter("say whether X Y W H are in px or nm with --roi-units", param_hint="--roi")
        roi = [float(v) for v in parts]
    gaps = kw.pop("gaps", None)
    if gaps is not None:
        gaps = [int(g) for g in gaps.replace(",", " ").split()]
    vs = kw.pop("voxel_size", None)
    kw = {k: v for k, v in kw.items() if v is not None}
    return {**kw, "roi": roi, "gaps": gaps, "voxel_size": list(vs) if vs else None}


@main.command("prealign")
@click.argument("input")
@click.argument("out", type=click.Path(file_okay=False))
@click.option("--method", type=click.Choice(["tm", "features", "xcorr"]), default="tm", show_default=True)
@click.option("--write-stack", is_flag=True, help="Also write the pre-aligned stack.")
@click.option("--out-format", type=click.Choice(["zarr", "tiff"]), default="zarr", show_default=True)
@click.option("--overwrite", is_flag=True)
@_prealign_options
def prealign_cmd(input, out, method, write_stack, out_format, overwrite, **kw) -> None:
    """Pre-align INPUT by translations; writes OUT/transforms.json (and the stack)."""
    from tqdm import tqdm

    from .config import build_config
    from .prealign import prealign, to_transforms
    from .stack import create_writer
    from .warp import warp_slice

    flat = _flat_prealign(kw)
    cfg = build_config(prealign=method, **{k: v for k, v in flat.items()})
    vs = VoxelSize.from_values(*cfg.input.voxel_size) if cfg.input.voxel_size else None
    stack = open_stack(input, pattern=cfg.input.pattern, dataset=cfg.input.dataset, voxel_size=vs,
                       allow_pad=cfg.input.allow_pad, skip_bad=cfg.input.skip_bad)
    outp = Path(out)
    if outp.exists() and any(outp.iterdir()) and not overwrite:
        raise ValueError(f"{out} exists and is not empty; choose a new OUT or pass --overwrite")
    outp.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with tqdm(total=len(stack), desc=f"prealign ({method})", unit="slice") as bar:
        res = prealign(stack, cfg.prealign, cfg.execution.workers, bar.update)
    seconds = time.perf_counter() - t0
    tf = to_transforms(stack, res, cfg.prealign.canvas)
    tf.extra["prealign_seconds"] = seconds
    if write_stack:
        name = "prealigned.zarr" if out_format == "zarr" else "prealigned"
        w = create_writer(outp / name, out_format, (len(stack), *tf.canvas_shape_yx), stack.dtype,
                          stack.voxel_size, names=stack.names)
        for z in tqdm(range(len(stack)), desc="write", unit="slice"):
            w.write(z, warp_slice(stack.read(z), tf.slices[z].affine, tf.canvas_shape_yx, "linear"))
    tf.save(outp / "transforms.json")
    bad = [s for s in tf.slices if s.status != "ok"]
    click.echo(f"pre-aligned {len(stack)} slices ({method}) in {seconds:.1f} s "
               f"({seconds / len(stack):.3f} s/slice); canvas {tf.canvas_shape_yx[0]}x{tf.canvas_shape_yx[1]}")
    if bad:
        click.echo(f"{len(bad)} slice(s) flagged: " + ", ".join(f"{s.index} ({s.status})" for s in bad[:20]))


@main.command("run")
@click.argument("input")
@click.argument("out", type=click.Path(file_okay=False))
@click.option("--prealign", "prealign_method", type=click.Choice(["tm", "features", "xcorr", "none"]), default=None,
              help="Pre-alignment method (default tm).")
@click.option("--prealigned", default=None, help="A stack aligned elsewhere (e.g. Fiji) to build the template from.")
@click.option("--backend", type=click.Choice(["elastix", "fast"]), default=None, help="Affine back-end.")
@click.option("--median-radius", type=int, default=None, help="Template median radius in slices (default 7).")
@click.option("--passes", type=click.IntRange(1, 2), default=None,
              help="Registration passes (default 2: the second builds its template from corrected slices).")
@click.option("--order", type=click.Choice(["cubic", "linear", "nearest"]), default=None)
@click.option("--out-format", type=click.Choice(["zarr", "tiff"]), default=None)
@click.option("--pyramid-levels", type=int, default=None)
@click.option("--block-size", type=int, default=None, help="Slices per work unit.")
@click.option("--scheduler", default=None, help="Address of an existing Dask scheduler (tcp://host:port).")
@click.option("--cluster", type=click.Choice(["slurm"]), default=None,
              help="Start workers with dask-jobqueue (options in the config's execution.slurm section).")
@click.option("--config", "config_file", type=click.Path(dir_okay=False), default=None, help="YAML config.")
@click.option("--overwrite", is_flag=True, help="Replace an OUT that holds a run with other parameters.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
@click.option("--no-report", is_flag=True, help="Skip OUT/report/index.html.")
@_prealign_options
def run_cmd(input, out, prealign_method, config_file, overwrite, quiet, no_report, **kw) -> None:
    """Align INPUT with AMST into OUT (re-run the same command to resume)."""
    from .pipeline import align

    flat = _flat_prealign(kw)
    res = align(input, out, config_file, overwrite=overwrite, progress=not quiet, prealign=prealign_method, **flat)
    if not no_report:
        from .quality.report import build_report

        t0 = time.perf_counter()
        page = build_report(out)
        click.echo(f"report: {page} ({time.perf_counter() - t0:.1f} s)")
    counts = {s: res.statuses.count(s) for s in ("ok", "fallback", "blank", "failed")}
    click.echo(f"aligned {len(res.statuses)} slices -> {res.output_stack}  ("
               + ", ".join(f"{v} {k}" for k, v in counts.items() if v) + ")")
    click.echo("slices computed by this run, per pass: " + " ".join(str(v) for v in res.recomputed_per_pass))
    click.echo("time per slice (s): " + "  ".join(f"{k} {v:.3f}" for k, v in res.timings_per_slice.items()))
    flagged = [s for s in res.transforms.slices if s.status != "ok"]
    for s in flagged[:20]:
        click.echo(f"  slice {s.index} ({s.name}): {s.status} - {s.metrics.get('reason', s.metrics.get('prealign_flag', ''))}")


@main.command("apply")
@click.argument("transforms", type=click.Path(exists=True, dir_okay=False))
@click.argument("input")
@click.argument("out")
@click.option("--order", type=click.Choice(["cubic", "linear", "nearest"]), default="cubic", show_default=True,
              help="nearest for label stacks (values kept exactly).")
@click.option("--out-format", type=click.Choice(["zarr", "tiff"]), default=None,
              help="Default: zarr if OUT ends in .zarr, else tiff.")
@click.option("--pattern", default=None)
@click.option("--dataset", default=None)
@click.option("--workers", type=int, default=None)
@click.option("--overwrite", is_flag=True)
def apply_cmd(transforms, input, out, order, out_format, pattern, dataset, workers, overwrite) -> None:
    """Re-apply saved TRANSFORMS to another channel or label stack INPUT."""
    from .pipeline import apply

    path = apply(transforms, input, out, order=order, out_format=out_format, workers=workers, overwrite=overwrite,
                 pattern=pattern, dataset=dataset)
    click.echo(f"wrote {path}")


@main.command()
@click.argument("out", type=click.Path(file_okay=False), default="amst-demo")
@click.option("--backend", type=click.Choice(["elastix", "fast"]), default="elastix", show_default=True)
@click.option("--workers", type=int, default=None)
def demo(out, backend, workers) -> None:
    """Synthesise a small FIB-SEM stack and align it: TM only vs AMST, against ground truth."""
    from .demo import run_demo

    run_demo(Path(out), backend=backend, workers=workers, echo=click.echo)


@main.command()
@click.argument("runs", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--truth", type=click.Path(exists=True, dir_okay=False), default=None,
              help="ground_truth.json of a synthetic stack.")
@click.option("--json", "json_file", type=click.Path(dir_okay=False), default=None, help="Write every figure here.")
@click.option("--compare", type=click.Path(exists=True, file_okay=False), default=None,
              help="Another run: red/cyan overlay of the reslices (first RUN red, this one cyan).")
@click.option("--crop-size", type=int, default=512, show_default=True)
@click.option("--report/--no-report", default=False, help="Also (re)build each run's report.")
def evaluate(runs, truth, json_file, compare, crop_size, report) -> None:
    """Measure runs: residual per crop, neighbour NCC, ground-truth error; one table."""
    from .quality.evaluate import comparison_table, evaluate_run, write_json

    t0 = time.perf_counter()
    evals = [evaluate_run(r, truth, crop_size=crop_size) for r in runs]
    click.echo(comparison_table(evals))
    if json_file:
        write_json(evals, json_file)
        click.echo(f"figures: {json_file}")
    if compare:
        from .quality.plots import save_overlay

        other = evaluate_run(compare, None, crop_size=crop_size)
        vs = evals[0].transforms.voxel_size
        target = Path(runs[0]) / "report"
        target.mkdir(exist_ok=True)
        for axis in ("xz", "yz"):
            save_overlay(getattr(evals[0].sweep, f"reslice_{axis}"), getattr(other.sweep, f"reslice_{axis}"),
                         target / f"compare_{axis}.png", (vs.z / vs.x) if vs else 1.0,
                         f"{axis}: {Path(runs[0]).name} (red) vs {Path(compare).name} (cyan); grey = agreement")
        click.echo(f"overlays: {target / 'compare_xz.png'}, {target / 'compare_yz.png'}")
    if report:
        from .quality.report import build_report

        for e in evals:
            click.echo(f"report: {build_report(e.run, truth, e)}")
    click.echo(f"evaluated in {time.perf_counter() - t0:.1f} s")


@main.command("report")
@click.argument("out", type=click.Path(exists=True, file_okay=False))
@click.option("--truth", type=click.Path(exists=True, dir_okay=False), default=None)
def report_cmd(out, truth) -> None:
    """Rebuild OUT/report/index.html."""
    from .quality.report import build_report

    click.echo(f"report: {build_report(out, truth)}")
