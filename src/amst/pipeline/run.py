"""``amst run``: the stages in order, on the run's executor, with its output folder and journal.

Pre-align (saved) -> registration passes (journalled per slice) -> combine and refine ->
resample once (journalled) -> slice depths (``z_spacing``) -> ``transforms.json``, written
last: its presence marks a complete run. Each stage is a module of this package; this one
only passes their results on and times them (:class:`~amst.pipeline.clock.StageClock`).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from .. import __version__
from ..config import RunConfig, build_config, dump_yaml
from ..elastic import ElasticDecision, elastic_fields
from ..executors import make_executor, sigint_deferred
from ..fallbacks import FallbackWatch
from ..field import field_rms_max
from ..outdir import STATE_DIR, Ownership, atomic_write_text, mark_complete, mark_incomplete, write_ownership
from ..parallel import default_workers
from ..register import Backend, backend_for
from ..stack import Stack, VoxelSize, check_output_fits, open_stack
from ..transforms_io import STATUSES, SliceTransform, Transforms
from ..warp import SliceMaps
from ..zspacing.stackwise import with_depths
from .blocks import block_size, blocks, map_blocks
from .clock import StageClock
from .combination import combine_results
from .even_z import depths_and_even_z, keep_or_drop_even_z
from .journal import drop_missing_output, read_journal
from .output_folder import OutputSpec, digest_parts, open_output_stack, output_name, prepare_out, run_entries
from .plan import PassPlan, distorted_slices, first_pass, next_pass, registered_starts
from .prealign_stage import run_prealignment
from .refine import refine_corrections
from .records import ResampledSlice, SliceResult
from .register_pass import RegisterJob, register_block
from .resample import ResampleJob, field_digest, resample_block

log = logging.getLogger("amst")


@dataclass
class AlignResult:
    """What :func:`align` produced."""

    out: Path
    output_stack: Path
    transforms: Transforms
    timings_per_slice: dict[str, float]  # core seconds per slice, by stage (amst.pipeline.clock)
    cores: int                           # the cores the run held (wall seconds = core seconds / cores)
    recomputed: int                      # slices resampled and written by this call
    recomputed_per_pass: list[int] = field(default_factory=list)  # per registration pass, then the resampling
    config: RunConfig = field(repr=False, default_factory=RunConfig)

    @property
    def statuses(self) -> list[str]:
        return [s.status for s in self.transforms.slices]


@dataclass(frozen=True)
class _Run:
    """What every stage of one run shares."""

    stack: Stack
    prealigned_stack: Stack | None
    out: Path
    cfg: RunConfig
    resuming: bool
    progress: bool
    executor: Any
    workers: int
    clock: StageClock
    backend: Backend

    @property
    def state(self) -> Path:
        return self.out / STATE_DIR


def align(input: str | Path, out: str | Path, config: str | Path | dict | RunConfig | None = None, *,
          overwrite: bool = False, progress: bool = True, **options: Any) -> AlignResult:
    """Align a FIB-SEM stack with AMST and write the result to ``out``.

    Parameters
    ----------
    input : path
        Raw stack (TIFF folder, TIFF, OME-Zarr, Zarr, HDF5).
    out : path
        Output folder: ``aligned.zarr`` (or ``aligned/``), ``transforms.json``,
        ``config.yaml``, ``amst.log``. Re-running with the same parameters resumes.
    config : path, dict or RunConfig, optional
        YAML config; ``options`` override it.
    overwrite : bool
        Replace an OUT that holds a run with other parameters.
    progress : bool
        Show progress bars.
    **options
        Flat options as on the command line, e.g. ``prealign="tm"``, ``median_radius=7``,
        ``backend="elastix"``, ``out_format="tiff"``, ``workers=4``.

    Returns
    -------
    AlignResult

    Examples
    --------
    >>> import amst                                     # doctest: +SKIP
    >>> res = amst.align("raw/", "run1", prealign="tm")  # doctest: +SKIP
    >>> res.statuses.count("ok")                         # doctest: +SKIP
    """
    t_setup = time.perf_counter()
    cfg = config if isinstance(config, RunConfig) else build_config(config, **options)
    if isinstance(config, RunConfig) and options:
        cfg = build_config(cfg.to_dict(), **options)
    out = Path(out)
    vs = VoxelSize.from_values(*cfg.input.voxel_size) if cfg.input.voxel_size else None
    stack = open_stack(input, pattern=cfg.input.pattern, dataset=cfg.input.dataset, voxel_size=vs,
                       channel=cfg.input.channel, allow_pad=cfg.input.allow_pad, skip_bad=cfg.input.skip_bad)
    prealigned_stack = open_stack(cfg.prealigned) if cfg.prealigned else None
    _validate_for_stack(cfg, stack, prealigned_stack)
    parts = digest_parts(cfg, stack, prealigned_stack)
    protected = {"the input": stack.path, "the --prealigned stack": prealigned_stack and prealigned_stack.path,
                 "the config file": Path(config) if isinstance(config, (str, Path)) else None}
    # Everything that can be refused is checked, and the scheduler reached, before OUT is touched.
    workers = default_workers(cfg.execution.workers)
    backend = backend_for(cfg.register.backend, getattr(cfg.register, cfg.register.backend))
    executor, close = make_executor(cfg, workers, preload="amst.pipeline.register_pass")
    interrupted = False
    try:
        _probe_backend(executor, backend)
        with sigint_deferred():  # OUT is claimed whole: a Ctrl-C now leaves a run to resume
            resuming = prepare_out(out, cfg, protected, parts, overwrite)
        handler = attach_log(out / "amst.log")
        try:
            clock = StageClock(_cores(executor, workers))
            run = _Run(stack, prealigned_stack, out, cfg, resuming, progress, executor, workers, clock, backend)
            return _align(run, t_setup)
        finally:
            log.removeHandler(handler)
            handler.close()
    except KeyboardInterrupt:
        interrupted = True
        raise
    finally:
        close(abort=interrupted)


def _cores(executor: Any, workers: int) -> int:
    """The cores a run holds: its workers' threads on a Dask cluster, else ``workers``."""
    if hasattr(executor, "nthreads"):  # a dask.distributed Client
        return max(1, sum(executor.nthreads().values()))
    return workers


def _probe_backend(executor: Any, backend: Backend) -> None:
    """Try the back-end once with the user's parameters, where the run will register."""
    if not backend.needs_probe:
        return
    if executor is None:
        backend.probe()
    elif hasattr(executor, "scatter"):  # a dask.distributed Client
        executor.submit(backend.probe, pure=False).result()
    else:
        executor.submit(backend.probe).result()


def _validate_for_stack(cfg: RunConfig, stack: Stack, prealigned: Stack | None) -> None:
    """The checks that need the opened input (slice count, shape, voxel size)."""
    from ..config import validate_for_canvas
    from ..prealign import validate_for_stack

    if prealigned is not None:
        if len(prealigned) != len(stack):
            raise ValueError(f"--prealigned {prealigned.path} has {len(prealigned)} slices, the input "
                             f"{stack.path} {len(stack)}; they must match")
    elif cfg.prealign.method != "none":
        validate_for_stack(cfg.prealign, len(stack), tuple(stack.shape[1:]), stack.voxel_size)
    validate_for_canvas(cfg, tuple(stack.shape[1:]))
    check_output_fits(cfg.output.out_format, (len(stack), *stack.shape[1:]), stack.dtype)
    if cfg.z_spacing.mode != "off" and stack.voxel_size is None:
        raise ValueError(f"z_spacing.mode {cfg.z_spacing.mode}: {stack.path} has no voxel size, and slice depths "
                         "need the nominal step and the pixel size; give --voxel-size Z Y X (nm)")
    if cfg.z_spacing.mode != "off" and len(stack) < 3:
        raise ValueError(f"z_spacing.mode {cfg.z_spacing.mode}: {stack.path} has {len(stack)} slices; measuring "
                         "slice depths needs at least 3")


def attach_log(path: Path) -> logging.Handler:
    """Log the run (INFO and above) to ``path`` as well; returns the handler to remove after."""
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    log.addHandler(handler)
    if log.getEffectiveLevel() > logging.INFO:
        log.setLevel(logging.INFO)
    return handler


def _align(run: _Run, t_setup: float) -> AlignResult:
    stack, cfg, out, clock = run.stack, run.cfg, run.out, run.clock
    n = len(stack)
    log.info("amst %s: %s (%d slices, %dx%d %s, voxel %s) -> %s%s", __version__, stack.path, n, stack.shape[1],
             stack.shape[2], stack.dtype, stack.voxel_size or "unknown", out, " (resuming)" if run.resuming else "")
    if run.resuming:  # what follows rewrites the folder: until the new transforms.json it must not read as complete
        mark_incomplete(out, "transforms.json")
    atomic_write_text(out / "config.yaml", dump_yaml(cfg, __version__))
    log.debug("executor: %s; %d worker(s); result-affecting options: %s",
              type(run.executor).__name__ if run.executor else "this process", run.workers,
              json.dumps(cfg.result_affecting(), sort_keys=True, default=str))
    clock.held("setup", time.perf_counter() - t_setup)

    pre_tf, prealign_wall = run_prealignment(stack, run.prealigned_stack, cfg, saved=run.state / "prealign.json",
                                             resuming=run.resuming, workers=run.workers, progress=run.progress)
    clock.held("prealign", prealign_wall)
    with clock.main("setup"):
        canvas = tuple(int(v) for v in pre_tf.canvas_shape_yx)
        spec = OutputSpec(out / output_name(cfg), cfg.output.out_format, (n, *canvas), stack.dtype, stack.voxel_size,
                          names=stack.names, pyramid_levels=cfg.output.pyramid_levels,
                          ngff_version=cfg.output.ngff_version, provenance=stack.provenance())
        writer, created = open_output_stack(spec, run.resuming)
        ownership = Ownership("run", run_entries(cfg, getattr(writer, "names", ())))
        keep_or_drop_even_z(out, ownership, cfg, run.resuming)
        write_ownership(out, ownership)
        level = run.backend.template_level(canvas)
        if level:
            log.info("template built on pyramid level %d (%dx%d), where the %s back-end refines", level,
                     *run.backend.level_shape(canvas, level)[::-1], run.backend.name)
    prealign_affines = np.array([s.prealign for s in pre_tf.slices])

    results, per_pass = _registration_passes(run, pre_tf, prealign_affines, canvas, level)
    # Each slice's final affine from its two measurements, then one resampling.
    combined = _combine_and_refine(run, results, pre_tf, prealign_affines, canvas, level, run.progress)
    maps, elastic = _slice_maps(run, results, canvas)
    per_pass.append(_resample(run, maps, canvas, spec, writer, created))
    depths = None
    if cfg.z_spacing.mode != "off":
        depths, z_seconds = depths_and_even_z(stack, out, spec.path, maps=maps, canvas=canvas, cfg=cfg,
                                              provenance=spec.provenance, ownership=ownership, workers=run.workers,
                                              progress=run.progress)
        for stage, wall in z_seconds.items():
            clock.held(stage, wall)

    # transforms.json last: its presence marks a complete run.
    t_finish = time.perf_counter()
    tf = _transforms(stack, pre_tf, results, canvas, combined, spec.path.name, maps, elastic)
    if depths is not None:
        tf = with_depths(tf, depths)
    clock.held("finish", time.perf_counter() - t_finish)
    tf.extra["timings_per_slice_s"] = clock.per_slice(n)
    t_finish = time.perf_counter()
    tf.save(out / "transforms.json")
    mark_complete(out, ownership)
    _log_summary(tf)
    clock.held("finish", time.perf_counter() - t_finish)  # after the file: in the printout, not in it
    per_slice = clock.per_slice(n)
    log.info("time per slice (core-s on %d core(s)): %s", clock.cores,
             "  ".join(f"{k} {v:.3f}" for k, v in per_slice.items() if v > 0))
    return AlignResult(out, spec.path, tf, per_slice, clock.cores, per_pass[-1], per_pass, cfg)


def _registration_passes(run: _Run, pre_tf: Transforms, prealign_affines: np.ndarray, canvas: tuple[int, int],
                         level: int) -> tuple[list[SliceResult], list[int]]:
    """Every registration pass (``register.passes``); the last pass's results and the slices
    each pass registered in this call.

    With two passes, the first only measures; the second builds its templates with the slices
    the first found distorted placed by their correction, so auto-focus events no longer
    distort their neighbours' templates (:mod:`amst.pipeline.plan`).
    """
    cfg = run.cfg
    plan = first_pass(prealign_affines, np.array([s.status == "ok" for s in pre_tf.slices]),
                      prealigned_stack=run.prealigned_stack is not None, ends=cfg.template.ends)
    blank = sum(s.status == "blank" for s in pre_tf.slices)
    per_pass = []
    while True:
        results, computed = _register_pass(run, plan, prealign_affines, canvas, level, blank)
        per_pass.append(computed)
        if plan.index == cfg.register.passes:
            return results, per_pass
        plan = _next_plan(run, plan, results, pre_tf, prealign_affines, canvas, level)


def _register_pass(run: _Run, plan: PassPlan, prealign_affines: np.ndarray, canvas: tuple[int, int], level: int,
                   blank: int) -> tuple[list[SliceResult], int]:
    """One pass over every slice not journalled yet; every slice's result, and how many were computed."""
    cfg, n = run.cfg, len(run.stack)
    journal = run.state / f"journal_pass{plan.index}"
    journal.mkdir(parents=True, exist_ok=True)
    with run.clock.main("setup"):
        done = read_journal(journal, n, SliceResult) if run.resuming else {}
    todo = [z for z in range(n) if z not in done]
    if done:
        log.info("pass %d: resuming, %d of %d slices already done", plan.index, len(done), n)
    job = RegisterJob(run.stack, run.prealigned_stack, prealign_affines, plan, canvas, cfg, run.backend, journal, level)
    watch = FallbackWatch(cfg.register.max_fallback_fraction, n - blank, cfg.register.backend, plan.index)
    for e in done.values():
        watch.add(e)
    passes = cfg.register.passes
    label = f"register ({cfg.register.backend}" + (f", pass {plan.index}/{passes})" if passes > 1 else ")")
    with tqdm(total=n, initial=len(done), desc=label, unit="slice", disable=not run.progress) as bar, \
            run.clock.workers():
        for results in map_blocks(run.executor, register_block, job,
                                  blocks(todo, block_size(len(todo), run.workers, cfg.execution.block_size))):
            for e in results:
                done[e.index] = e
                watch.add(e)
                run.clock.add(e.timings)
                log.debug("pass %d, slice %d: %s, NCC %s -> %s%s", plan.index, e.index, e.status,
                          _fmt(e.metrics.get("ncc_prealign")), _fmt(e.metrics.get("ncc_final")),
                          f" ({e.metrics['reason']})" if e.metrics.get("reason") else "")
            bar.update(len(results))
    return [done[z] for z in range(n)], len(todo)


def _next_plan(run: _Run, plan: PassPlan, results: list[SliceResult], pre_tf: Transforms,
               prealign_affines: np.ndarray, canvas: tuple[int, int], level: int) -> PassPlan:
    """The next pass from this one's results. The distorted slices enter its templates placed by
    the best estimate this pass has: its measurements combined and refined as the final ones are."""
    cfg = run.cfg
    with run.clock.main("combine"):
        ok, start = registered_starts(results, prealign_affines)
        distorted = ok & distorted_slices(start, prealign_affines, canvas, cfg.template.outlier_distortion_px)
    estimates: dict[int, np.ndarray] = {}
    if distorted.any() and cfg.register.combine == "significance":
        first = [r.copy() for r in results]
        _combine_and_refine(run, first, pre_tf, prealign_affines, canvas, level, False)
        estimates = {int(z): first[z].affine for z in np.flatnonzero(distorted)}
    return next_pass(plan, ok, start, distorted=distorted, estimates=estimates,
                     second_pass_from=cfg.template.second_pass_from, ends=cfg.template.ends)


def _combine_and_refine(run: _Run, results: list[SliceResult], pre_tf: Transforms, prealign_affines: np.ndarray,
                        canvas: tuple[int, int], level: int, progress: bool) -> dict[str, Any]:
    """Each slice's affine in ``results`` replaced by the combination of its two measurements
    (:mod:`~amst.pipeline.combination`), and the corrections it keeps measured again
    (:mod:`~amst.pipeline.refine`); returns the stack-level summary."""
    with run.clock.main("combine"):
        combined, without_linear = combine_results(results, prealign_affines, pre_tf, canvas, run.cfg)
    if without_linear is not None:
        with run.clock.workers():
            seconds = refine_corrections(run.executor, results, prealign_affines=prealign_affines,
                                         without_linear=without_linear, stack=run.stack, canvas=canvas, cfg=run.cfg,
                                         backend=run.backend, level=level, combined=combined, progress=progress)
            run.clock.add({"refine": seconds})
    return combined


def _slice_maps(run: _Run, results: list[SliceResult], canvas: tuple[int, int]
                ) -> tuple[SliceMaps, ElasticDecision | None]:
    """Each slice's final map: its affine, plus a displacement field where ``register.elastic``
    finds a significant local distortion (:mod:`amst.elastic`)."""
    affines = np.array([r.affine for r in results])
    params = run.cfg.register.elastic
    if not params.enabled:
        return SliceMaps(affines), None
    with run.clock.main("elastic"):
        decision = elastic_fields([r.local for r in results], np.array([r.status == "ok" for r in results]),
                                  radius=params.radius or run.cfg.template.median_radius,
                                  significance=params.significance, min_shift_px=params.min_shift_px,
                                  min_nodes=params.min_nodes)
    grid = params.grid(canvas)
    log.info("elastic: %d slice(s) with a local distortion field%s", len(decision.fields),
             (": " + ", ".join(map(str, sorted(decision.fields)[:20]))) if decision.fields else "")
    return SliceMaps(affines, decision.fields, grid), decision


def _resample(run: _Run, maps: SliceMaps, canvas: tuple[int, int], spec: OutputSpec, writer: Any,
              created: bool) -> int:
    """Resample and write every slice not written yet with its final map; returns how many were."""
    n = len(run.stack)
    journal = run.state / "journal"
    journal.mkdir(parents=True, exist_ok=True)
    with run.clock.main("setup"):  # what an earlier run left is checked
        done = read_journal(journal, n, ResampledSlice) if run.resuming else {}
        done = {z: e for z, e in done.items() if np.allclose(e.affine, maps.affines[z], rtol=0, atol=1e-12)
                and e.field_digest == field_digest(maps.fields.get(z))}
        if done:
            done = drop_missing_output(done, writer, journal, everything=created)
    todo = [z for z in range(n) if z not in done]
    job = ResampleJob(run.stack, maps, canvas, run.cfg.warp.order, spec, journal)
    with tqdm(total=n, initial=len(done), desc="resample", unit="slice", disable=not run.progress) as bar, \
            run.clock.workers():
        for entries in map_blocks(run.executor, resample_block, job,
                                  blocks(todo, block_size(len(todo), run.workers, run.cfg.execution.block_size))):
            for e in entries:
                run.clock.add(e.timings)
            bar.update(len(entries))
    return len(todo)


def _transforms(stack: Stack, pre_tf: Transforms, results: list[SliceResult], canvas: tuple[int, int],
                combined: dict[str, Any], output: str, maps: SliceMaps,
                elastic: ElasticDecision | None) -> Transforms:
    """The run's ``transforms.json``: each slice's pre-alignment, final map, status and metrics."""
    slices = []
    for z, e in enumerate(results):
        pre = pre_tf.slices[z]
        metrics = {**pre.metrics, **e.metrics}
        if pre.status == "failed" and e.status == "ok":
            metrics["prealign_status"] = pre.status
        field = maps.fields.get(z)
        if field is not None:
            metrics["field_rms_px"], metrics["field_max_px"] = field_rms_max(field, maps.grid, canvas)
        slices.append(SliceTransform(z, stack.slice_name(z), pre.prealign, e.affine.copy(), e.status, metrics,
                                     field=None if field is None else np.array(field, np.float64)))
    extra = {"amst_version": __version__, "prealign_info": pre_tf.extra.get("prealign_info", {}),
             "combine": combined, "timings_per_slice_s": {}, "output": output, "input_provenance": stack.provenance()}
    if elastic is not None:
        finite = elastic.sigma[np.isfinite(elastic.sigma)]
        extra["elastic"] = {"slices_with_field": sorted(int(z) for z in maps.fields),
                            "node_sigma_median_px": float(np.median(finite)) if finite.size else None,
                            "grid": maps.grid.to_json()}
    return Transforms(canvas, slices, stack.voxel_size, extra, input_shape_yx=tuple(int(v) for v in stack.shape[1:]),
                      field_grid=maps.grid if maps.fields else None)


def _log_summary(tf: Transforms) -> None:
    checks = [x for x in tf.slices if x.metrics.get("check")]
    if checks:
        log.warning("%d slice(s) to inspect: %s", len(checks),
                    "; ".join(f"{x.index} ({x.name}): {x.metrics['check']}" for x in checks[:10]))
    counts = {s: sum(x.status == s for x in tf.slices) for s in STATUSES}
    log.info("done: %s", ", ".join(f"{v} {k}" for k, v in counts.items() if v))


def _fmt(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else "-"
