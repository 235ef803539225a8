"""Wiring of the AMST pipeline: pre-align, template, register, warp, write; resume; executors.

Everything here is orchestration: the maths lives in pure functions elsewhere. Work is
distributed in small blocks of consecutive slices; a worker reads its own slices (plus the
``radius`` neighbours its templates need), so no pixel array goes through the scheduler,
and holds only ``2 * radius + 1`` slices at a time.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from concurrent.futures import as_completed
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from . import __version__
from .config import RunConfig, build_config, dump_yaml
from .parallel import default_workers, ordered_map
from .prealign import prealign, to_transforms
from .imageops import finite_float32, is_blank, nonfinite_count
from .prealign.xcorr import PhaseCorrelation
from .register import RegistrationError, check_result, distortion_px, register, sampled_ncc, template_level
from .register.fast import level_image, level_shape
from .stack import Stack, VoxelSize, check_output_fits, create_writer, open_stack
from .template import ends_in_pass, sliding_templates, window_bounds
from .combine import combine_measurements, prealign_noise_from_parts
from .transform import apply_to_points, at_level, compose, invert, translation
from .transforms_io import SliceTransform, Transforms, load_transforms
from .executors import in_process_limits, make_executor, sigint_ignored, single_threaded_libraries
from .fallbacks import FallbackWatch, RunError
from .journal import drop_missing_output, journal_entry, open_output_stack, read_journal, slice_file_sizes
from .outdir import (STATE_DIR, OutputError, OwnedEntry, Ownership, atomic_write_text, claim_output,
                     mark_complete, mark_incomplete, read_ownership, refuse_overlap, remove_entry, unknown_files,
                     write_ownership)
from .warp import warp_slice
from .zspacing import ZSpacing
from .zspacing.stackwise import even_names, grid_for, with_depths, write_even_grid

log = logging.getLogger("amst")

STAGES = ("read", "prealign", "template", "register", "warp", "write")


@dataclass
class AlignResult:
    """What :func:`align` produced."""

    out: Path
    output_stack: Path
    transforms: Transforms
    timings_per_slice: dict[str, float]
    recomputed: int                      # slices resampled and written by this call
    recomputed_per_pass: list[int] = field(default_factory=list)  # per registration pass, then the resampling
    config: RunConfig = field(repr=False, default_factory=RunConfig)

    @property
    def statuses(self) -> list[str]:
        return [s.status for s in self.transforms.slices]


@dataclass
class _Job:
    """Everything a worker needs for one pass; small and picklable (no pixel data)."""

    stack: Stack
    prealigned_stack: Stack | None
    prealign_affines: np.ndarray   # the fallback, and the bounds of the sanity checks
    template_affines: np.ndarray   # how slices are placed to build the template
    initial_affines: np.ndarray    # where registration starts
    excluded: np.ndarray           # slices kept out of every template (blank, failed, noise)
    canvas: tuple[int, int]
    cfg: RunConfig
    journal: Path
    template_level: int = 0        # pyramid level the back-end reads the template at
    # Slices that enter templates placed by ``initial_affines`` (their previous pass's
    # correction: distorted slices) instead of ``template_affines``; None: none.
    corrected_members: np.ndarray | None = None

    @property
    def templates_from_prealigned_stack(self) -> bool:
        """Template slices are read from the ``--prealigned`` stack instead of being warped."""
        return self.prealigned_stack is not None and self.template_affines is self.prealign_affines


# -- output folder, journal -----------------------------------------------------------------

def _output_name(cfg: RunConfig) -> str:
    from .stack import OUTPUT_FORMATS

    return OUTPUT_FORMATS[cfg.output.out_format]


def _digest_parts(cfg: RunConfig, stack: Stack, prealigned: Stack | None) -> dict[str, Any]:
    """What makes a run's results: a resumed run must agree on every part."""
    parts = {"config": cfg.result_affecting(), "input": str(stack.path), "shape": list(stack.shape),
             "input_files": _input_fingerprint(Path(stack.path))}
    if prealigned is not None:
        parts["prealigned_files"] = _input_fingerprint(Path(prealigned.path))
    return json.loads(json.dumps(parts, sort_keys=True, default=str))


def _digest(parts: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def _input_fingerprint(path: Path) -> str:
    """Digest of the names, sizes and modification times of every file of the input.

    A resumed run reuses slices computed earlier; if the input was rewritten in place (same
    path and shape, new data) those slices would silently belong to other data. Reading
    metadata only keeps this cheap for stacks of many large files.
    """
    h = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for f in files:
        st = f.stat()
        h.update(f"{f.relative_to(path) if f != path else f.name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


def _differences(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two digest-part documents."""
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _differences(a, b, "" if (prefix, key) == ("", "config") else f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key} ({a!r} -> {b!r})" if not key.endswith("_files") else
                       f"{prefix}{key[:-6]} files: input files changed since (names, sizes or times)")
    return out


def _run_entries(cfg: RunConfig, tiff_names: tuple[str, ...] | list[str] = ()) -> list[OwnedEntry]:
    fmt = cfg.output.out_format
    entries = [OwnedEntry(STATE_DIR, "state"), OwnedEntry("amst.log", "file"), OwnedEntry("config.yaml", "file"),
               OwnedEntry("transforms.json", "file"),
               _stack_entry(_output_name(cfg), fmt, cfg.output.pyramid_levels, tiff_names),
               OwnedEntry("report", "report")]
    if cfg.z_spacing.mode == "resample":
        entries.append(_even_z_entry(fmt))
    return entries


def _stack_entry(name: str, fmt: str, levels: int, tiff_names: tuple[str, ...] | list[str]) -> OwnedEntry:
    """The owned entry of an output stack in format ``fmt`` (a Zarr store, one file, or a TIFF folder)."""
    from .stack import output_is_file

    if fmt == "zarr":
        return OwnedEntry(name, "zarr", tuple(str(i) for i in range(levels)))
    return OwnedEntry(name, "file") if output_is_file(fmt) else OwnedEntry(name, "tiff", tuple(tiff_names))


def _even_z_entry(fmt: str, tiff_names: tuple[str, ...] | list[str] = ()) -> OwnedEntry:
    """The owned entry of a run's even-z output (``z_spacing.mode: resample``; one Zarr level)."""
    from .zspacing.stackwise import EVEN_Z_OUTPUT

    return _stack_entry(EVEN_Z_OUTPUT[fmt], fmt, 1, tiff_names)


def _prepare_out(out: Path, cfg: RunConfig, protected: dict[str, Path | None], parts: dict[str, Any],
                 overwrite: bool) -> bool:
    """Create or validate OUT. Returns True when resuming an earlier run of the same parameters.

    OUT must be new, empty, or a folder an earlier ``amst run`` wrote (see :mod:`amst.outdir`).
    """
    refuse_overlap(out, protected)
    state = out / STATE_DIR / "state.json"
    owner = read_ownership(out) if out.is_dir() else None
    if owner is not None and owner.kind == "run" and state.is_file():
        try:
            previous = json.loads(state.read_text())
        except (OSError, json.JSONDecodeError):
            previous = {}
        if previous.get("digest") == _digest(parts) and not overwrite:
            foreign = unknown_files(out, owner)
            if foreign:  # a resumed run writes into these entries: never through a link, never over a user file
                raise OutputError(f"{out} holds an earlier run to resume, but also {len(foreign)} file(s) or link(s) "
                                  f"amst did not write inside its entries (e.g. {', '.join(str(p) for p in foreign[:3])}); "
                                  "move them away and run again")
            return True
        if not overwrite:
            changed = _differences(previous.get("parts", {}), parts) if previous.get("parts") else []
            what = ("; ".join(changed[:6]) + (f" and {len(changed) - 6} more" if len(changed) > 6 else "")
                    if changed else "parameters or input (this run folder predates the list of what changed)")
            raise OutputError(f"{out} holds a run with different {what}; pass --overwrite to replace it "
                              "(only the files amst wrote there are removed), or choose another OUT")
    claim_output(out, kind="run", entries=_run_entries(cfg), overwrite=overwrite, protected=protected)
    (out / STATE_DIR / "journal").mkdir(parents=True, exist_ok=True)
    atomic_write_text(state, json.dumps({"digest": _digest(parts), "parts": parts, "amst_version": __version__}))
    return False


# -- the worker ----------------------------------------------------------------------------

def _mostly_nonfinite(raw: np.ndarray, count: int | None = None) -> bool:
    """More than half of the slice is NaN/inf (float input): too little data to register.
    ``count``: :func:`nonfinite_count` of ``raw`` when already known."""
    return (nonfinite_count(raw) if count is None else count) > raw.size / 2


def _prealigned_float(image: np.ndarray, affine: np.ndarray, canvas: tuple[int, int]) -> np.ndarray:
    """Raw slice placed on the canvas by its pre-alignment, NaN where it has no data."""
    return warp_slice(image.astype(np.float32, copy=False), affine, canvas, "linear", fill=np.nan)


def _registration_image(raw: np.ndarray, level: int, cfg: RunConfig) -> np.ndarray:
    """The raw slice as the back-end reads it: float32, at the template's pyramid ``level``."""
    image = finite_float32(raw)
    return level_image(image, level, cfg.register.fast) if level else image


def _template_member(job: _Job, z: int, raw: np.ndarray, image: np.ndarray | None) -> np.ndarray:
    """Slice ``z`` as it enters the median: on the canvas (at the template level), NaN where
    it has no data, all NaN for a slice kept out of templates. ``image`` is
    :func:`_registration_image` of ``raw`` (None when the template reads the pre-aligned stack)."""
    level = job.template_level
    shape = level_shape(job.canvas, level)
    if job.excluded[z] or is_blank(raw) or _mostly_nonfinite(raw):
        return np.full(shape, np.nan, np.float32)  # a bad slice must not pull the median
    if job.corrected_members is not None and job.corrected_members[z]:
        return _prealigned_float(image, at_level(job.initial_affines[z], level), shape)
    if job.templates_from_prealigned_stack:
        placed = finite_float32(job.prealigned_stack.read(z))
        return level_image(placed, level, job.cfg.register.fast) if level else placed
    return _prealigned_float(image, at_level(job.template_affines[z], level), shape)


def process_block(job: _Job, first: int, last: int) -> list[dict[str, Any]]:
    """Register slices ``first..last-1`` to their templates; returns one result dict per slice
    (also journalled). BLAS and OpenCV run one thread per worker:
    parallelism is across slices, and the sums then come out in the same order whatever
    the executor, so a Dask run gives bit-identical results to a local one.
    """
    single_threaded_libraries()
    return _process_block(job, first, last)


def _process_block(job: _Job, first: int, last: int) -> list[dict[str, Any]]:
    cfg = job.cfg
    n = len(job.stack)
    radius = cfg.template.median_radius
    lo, _ = window_bounds(first, n, radius)
    _, hi = window_bounds(last - 1, n, radius)
    raws: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # slice -> (raw, registration image)
    timings: dict[int, dict[str, float]] = {z: dict.fromkeys(STAGES, 0.0) for z in range(first, last)}
    template_time = [0.0]

    def stream() -> Iterator[np.ndarray]:
        for z in range(lo, hi):
            t0 = time.perf_counter()
            raw = job.stack.read(z)
            t_read = time.perf_counter() - t0
            t0 = time.perf_counter()
            registered = first <= z < last
            needed = (registered or not job.templates_from_prealigned_stack
                      or (job.corrected_members is not None and bool(job.corrected_members[z])))
            image = _registration_image(raw, job.template_level, job.cfg) if needed else None
            if registered:
                raws[z] = (raw, image)
                timings[z]["read"] += t_read
            member = _template_member(job, z, raw, image)
            template_time[0] += time.perf_counter() - t0
            yield member

    results = []
    t_start = time.perf_counter()
    for z, template in sliding_templates(stream(), lo, n, radius, first, last, cfg.template.leave_one_out,
                                         cfg.template.balanced, cfg.template.ends):
        t_templ = time.perf_counter() - t_start
        timings[z]["template"] += t_templ
        raw, image = raws.pop(z)
        entry = _register_slice(job, z, raw, image, template, timings[z])
        entry["timings"] = timings[z]
        atomic_write_text(journal_entry(job.journal, z), json.dumps(entry))
        results.append(entry)
        t_start = time.perf_counter()
    # template_time holds the pre-alignment warps of the whole window; charge them per slice.
    for e in results:
        e["timings"]["template"] += template_time[0] / max(1, len(results))
    return results


def _register_slice(job: _Job, z: int, raw: np.ndarray, image: np.ndarray, template: np.ndarray,
                    timing: dict[str, float]) -> dict[str, Any]:
    """Register slice ``z`` (``image``: :func:`_registration_image`) to its template and check it."""
    cfg = job.cfg
    prealigned = job.prealign_affines[z]
    initial = job.initial_affines[z]
    metrics: dict[str, Any] = {}
    if is_blank(raw):
        return {"index": z, "affine": prealigned.tolist(), "status": "blank", "metrics": {"reason": "blank slice"}}
    bad_pixels = nonfinite_count(raw)
    if bad_pixels:
        metrics["nonfinite_pixels"] = bad_pixels
        metrics["check"] = (f"{bad_pixels} NaN/inf pixel(s) ({100 * bad_pixels / raw.size:.2g} %) in the raw slice, "
                            "treated as no data")
    if _mostly_nonfinite(raw, bad_pixels):
        return {"index": z, "affine": prealigned.tolist(), "status": "fallback",
                "metrics": {**metrics, "reason": "more than half of the raw slice is NaN/inf: too little data to "
                                                 "register; kept at its pre-alignment and out of every template"}}
    mask = np.isfinite(template)
    if mask.mean() < 0.05:
        return {"index": z, "affine": prealigned.tolist(), "status": "fallback",
                "metrics": {"reason": "template covers < 5 % of the canvas"}}
    filled = np.where(mask, template, np.float32(template[mask].mean()))
    level = job.template_level
    t0 = time.perf_counter()
    status, reason = "ok", ""
    params = cfg.register.elastix if cfg.register.backend == "elastix" else cfg.register.fast
    try:
        result = register(cfg.register.backend, image, filled, mask, initial, params, level, level)
        affine = result.affine
        metrics.update(result.metrics)
    except RegistrationError as exc:  # a registration that legitimately failed on this slice's data
        affine, status, reason = prealigned, "fallback", f"registration failed: {exc}"
    except ValueError:  # the back-end refused its parameters (e.g. an elastix component that does not exist)
        raise
    except Exception as exc:
        raise RunError(f"slice {z} ({job.stack.slice_name(z)}): the {cfg.register.backend} back-end raised "
                       f"{type(exc).__name__}: {exc}. This is not a property of the data but a bug or a broken "
                       "installation, so the run stopped (re-run the same command to resume; -v shows the "
                       "traceback)") from exc
    timing["register"] += time.perf_counter() - t0
    ncc_before = sampled_ncc(image, filled, mask, at_level(prealigned, level))
    metrics["ncc_prealign"] = ncc_before
    if status == "ok":
        ncc_after = sampled_ncc(image, filled, mask, at_level(affine, level))
        metrics["ncc_final"] = ncc_after
        reason = check_result(affine, prealigned, job.canvas, cfg.register.max_scale_change, cfg.register.max_shear,
                              cfg.register.max_shift_px, ncc_before, ncc_after, cfg.register.min_ncc_gain,
                              cfg.register.min_ncc)
        if reason:
            status, affine = "fallback", prealigned
    if reason:
        metrics["reason"] = reason
    return {"index": z, "affine": np.asarray(affine).tolist(), "status": status, "metrics": metrics}


# -- orchestration ---------------------------------------------------------------------------

def _distorted(corrected: np.ndarray, prealigned: np.ndarray, canvas: tuple[int, int], cfg: RunConfig) -> np.ndarray:
    """Slices whose first-pass correction changed their shape a lot (auto-focus events)."""
    limit = cfg.template.outlier_distortion_px
    d = np.array([distortion_px(compose(invert(p), c), canvas) for p, c in zip(prealigned, corrected)])
    log.info("pass-1 distortion px: median %.2f, p90 %.2f, max %.2f", np.median(d), np.percentile(d, 90), d.max())
    if limit <= 0:
        return np.zeros(len(d), bool)
    out = d > limit
    if out.any():
        log.info("placed in pass-2 templates by pass 1's estimate (distortion > %.1f px): %s", limit,
                 np.flatnonzero(out).tolist())
    return out


def _blocks(todo: list[int], size: int) -> list[tuple[int, int]]:
    """Runs of consecutive slice indices, cut into blocks of at most ``size``."""
    blocks: list[tuple[int, int]] = []
    for z in todo:
        if blocks and blocks[-1][1] == z and blocks[-1][1] - blocks[-1][0] < size:
            blocks[-1] = (blocks[-1][0], z + 1)
        else:
            blocks.append((z, z + 1))
    return blocks


def _prealigned_transforms(stack: Stack, prealigned: Stack, workers: int) -> Transforms:
    """Pre-alignment taken from a stack aligned elsewhere: its canvas, and the translation
    from each of its slices to the same raw slice."""
    pc = PhaseCorrelation()

    def on_canvas(image: np.ndarray) -> np.ndarray:
        # Raw pixel (x, y) stays at (x, y): pad or crop at the bottom/right only.
        out = np.zeros(prealigned.shape[1:], np.float32)
        h, w = min(out.shape[0], image.shape[0]), min(out.shape[1], image.shape[1])
        out[:h, :w] = image[:h, :w]
        return out

    def one(z: int):
        return pc.match(pc.describe(prealigned.read(z)), pc.describe(on_canvas(stack.read(z))))

    measured = list(ordered_map(one, range(len(stack)), workers))
    shifts = np.array([m.shift_xy for m in measured], float)
    ok = np.array([m.ok for m in measured])
    if not ok.any():
        raise ValueError(f"--prealigned {prealigned.path}: no slice could be matched to its raw slice; "
                         "is it the same data as the input?")
    # A failed measurement says nothing about its slice: take the neighbours' shift, as prealign() does.
    idx = np.flatnonzero(ok)
    filled = np.stack([np.interp(np.arange(len(stack)), idx, shifts[idx, a]) for a in (0, 1)], axis=1)
    slices = []
    for z, m in enumerate(measured):
        t = translation(*filled[z])
        slices.append(SliceTransform(z, stack.slice_name(z), t, t.copy(), "ok" if m.ok else "failed",
                                     {"prealign_confidence": m.confidence}))
    return Transforms(prealigned.shape[1:], slices, stack.voxel_size,
                      {"prealign_info": {"method": "prealigned", "path": str(prealigned.path)}})


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
    cfg = config if isinstance(config, RunConfig) else build_config(config, **options)
    if isinstance(config, RunConfig) and options:
        cfg = build_config(cfg.to_dict(), **options)
    out = Path(out)
    vs = VoxelSize.from_values(*cfg.input.voxel_size) if cfg.input.voxel_size else None
    stack = open_stack(input, pattern=cfg.input.pattern, dataset=cfg.input.dataset, voxel_size=vs,
                       channel=cfg.input.channel, allow_pad=cfg.input.allow_pad, skip_bad=cfg.input.skip_bad)
    prealigned_stack = open_stack(cfg.prealigned) if cfg.prealigned else None
    _validate_for_stack(cfg, stack, prealigned_stack)
    parts = _digest_parts(cfg, stack, prealigned_stack)
    protected = {"the input": stack.path, "the --prealigned stack": prealigned_stack and prealigned_stack.path,
                 "the config file": Path(config) if isinstance(config, (str, Path)) else None}
    # Everything that can be refused is checked, and the scheduler reached, before OUT is touched.
    executor, close = make_executor(cfg, default_workers(cfg.execution.workers))
    interrupted = False
    try:
        _probe_backend(executor, cfg)
        resuming = _prepare_out(out, cfg, protected, parts, overwrite)
        handler = _attach_log(out / "amst.log")
        try:
            return _run(stack, prealigned_stack, out, cfg, resuming, progress, executor)
        finally:
            log.removeHandler(handler)
            handler.close()
    except KeyboardInterrupt:
        interrupted = True
        raise
    finally:
        close(abort=interrupted)


def _probe_backend(executor: Any, cfg: RunConfig) -> None:
    """Try elastix once with the user's parameter overrides, where the run will register."""
    if cfg.register.backend != "elastix" or not cfg.register.elastix:
        return
    from .register.elastix import probe_parameters

    if executor is None:
        probe_parameters(cfg.register.elastix)
    elif hasattr(executor, "scatter"):  # a dask.distributed Client
        executor.submit(probe_parameters, cfg.register.elastix, pure=False).result()
    else:
        executor.submit(probe_parameters, cfg.register.elastix).result()


def _validate_for_stack(cfg: RunConfig, stack: Stack, prealigned: Stack | None) -> None:
    """The checks that need the opened input (slice count, shape, voxel size)."""
    from .config import validate_for_canvas
    from .prealign import validate_for_stack

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


def _attach_log(path: Path) -> logging.Handler:
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    log.addHandler(handler)
    if log.getEffectiveLevel() > logging.INFO:
        log.setLevel(logging.INFO)
    return handler


def _run(stack: Stack, prealigned_stack: Stack | None, out: Path, cfg: RunConfig, resuming: bool, progress: bool,
         executor: Any) -> AlignResult:
    from tqdm import tqdm

    n = len(stack)
    workers = default_workers(cfg.execution.workers)
    state = out / STATE_DIR
    log.info("amst %s: %s (%d slices, %dx%d %s, voxel %s) -> %s%s", __version__, stack.path, n, stack.shape[1],
             stack.shape[2], stack.dtype, stack.voxel_size or "unknown", out, " (resuming)" if resuming else "")
    if resuming:  # what follows rewrites the folder: until the new transforms.json it must not read as complete
        mark_incomplete(out, "transforms.json")
    atomic_write_text(out / "config.yaml", dump_yaml(cfg, __version__))
    log.debug("executor: %s; %d worker(s); result-affecting options: %s", type(executor).__name__ if executor else
              "this process", workers, json.dumps(cfg.result_affecting(), sort_keys=True, default=str))

    # Step 1: pre-alignment (saved, so a resumed run does not redo it).
    pre_file = state / "prealign.json"
    t0 = time.perf_counter()
    if resuming and pre_file.exists():
        pre_tf = load_transforms(pre_file)
        prealign_seconds = float(pre_tf.extra.get("prealign_seconds", 0.0))
    else:
        if prealigned_stack is not None:
            pre_tf = _prealigned_transforms(stack, prealigned_stack, workers)
        else:
            with tqdm(total=n, desc="prealign", unit="slice", disable=not progress) as bar:
                pre_tf = to_transforms(stack, prealign(stack, cfg.prealign, workers, bar.update), cfg.prealign.canvas)
        prealign_seconds = time.perf_counter() - t0
        pre_tf.extra["prealign_seconds"] = prealign_seconds
        pre_tf.save(pre_file)
    canvas = tuple(int(v) for v in pre_tf.canvas_shape_yx)
    method_used = pre_tf.extra.get("prealign_info", {}).get("method", cfg.prealign.method)
    log.info("pre-alignment (%s): canvas %dx%d, %d slice(s) not ok", method_used, canvas[0], canvas[1],
             sum(s.status != "ok" for s in pre_tf.slices))

    # Steps 2-3 + warp + write, by blocks of slices; with two passes, the first pass only
    # measures, and the second builds its template from the slices the first pass corrected
    # (auto-focus slices then no longer distort their neighbours' templates).
    out_stack = out / _output_name(cfg)
    writer_spec = {"path": out_stack, "fmt": cfg.output.out_format, "shape": (n, *canvas), "dtype": stack.dtype,
                   "voxel_size": stack.voxel_size, "names": stack.names,
                   "pyramid_levels": cfg.output.pyramid_levels, "ngff_version": cfg.output.ngff_version,
                   "provenance": stack.provenance()}
    prealign_affines = np.array([s.prealign for s in pre_tf.slices])
    writer, created = open_output_stack(writer_spec, resuming)
    ownership = Ownership("run", _run_entries(cfg, getattr(writer, "names", ())))
    _keep_or_drop_even_z(out, ownership, cfg, resuming)
    write_ownership(out, ownership)
    passes = cfg.register.passes
    level = template_level(cfg.register.backend, cfg.register.fast, canvas)
    if level:
        log.info("template built on pyramid level %d (%dx%d), where the %s back-end refines", level,
                 *level_shape(canvas, level)[::-1], cfg.register.backend)
    template_affines = start_affines = prealign_affines
    excluded = np.array([s.status != "ok" for s in pre_tf.slices])
    corrected_members: np.ndarray | None = None
    results: dict[int, dict[str, Any]] = {}
    per_pass: list[int] = []
    for pass_index in range(1, passes + 1):
        journal = state / f"journal_pass{pass_index}"
        journal.mkdir(parents=True, exist_ok=True)
        done = read_journal(journal, n) if resuming else {}
        todo = [z for z in range(n) if z not in done]
        block = cfg.execution.block_size or int(np.clip(np.ceil(len(todo) / (2 * workers)), 8, 64))
        # template.ends "extend" mirrors in pass 1 (amst.template.ends_in_pass).
        pass_cfg = replace(cfg, template=replace(cfg.template, ends=ends_in_pass(cfg.template.ends, pass_index)))
        job = _Job(stack, prealigned_stack, prealign_affines, template_affines, start_affines, excluded, canvas,
                   pass_cfg, journal, level, corrected_members)
        if done:
            log.info("pass %d: resuming, %d of %d slices already done", pass_index, len(done), n)
        results = dict(done)
        per_pass.append(len(todo))
        watch = FallbackWatch(cfg.register.max_fallback_fraction, n - sum(s.status == "blank" for s in pre_tf.slices),
                               cfg.register.backend, pass_index)
        for e in done.values():
            watch.add(e)
        label = f"register ({cfg.register.backend}" + (f", pass {pass_index}/{passes})" if passes > 1 else ")")
        with tqdm(total=n, initial=len(done), desc=label, unit="slice", disable=not progress) as bar:
            for entries in _map_blocks(executor, process_block, job, _blocks(todo, block)):
                for e in entries:
                    results[e["index"]] = e
                    watch.add(e)
                    log.debug("pass %d, slice %d: %s, NCC %s -> %s%s", pass_index, e["index"], e["status"],
                              _fmt(e["metrics"].get("ncc_prealign")), _fmt(e["metrics"].get("ncc_final")),
                              f" ({e['metrics']['reason']})" if e["metrics"].get("reason") else "")
                bar.update(len(entries))
        if pass_index < passes:
            # The next pass starts from this one's results; its templates place slices by
            # them or by the pre-alignment (template.second_pass_from), and the distorted
            # slices by their correction.
            ok = np.array([results[z]["status"] == "ok" for z in range(n)])
            start_affines = np.array([results[z]["affine"] if ok[z] else prealign_affines[z] for z in range(n)])
            if cfg.template.second_pass_from == "corrected":
                template_affines = start_affines
            excluded = excluded | ~ok
            corrected_members = ok & _distorted(start_affines, prealign_affines, canvas, cfg)
            if corrected_members.any() and cfg.register.combine == "significance":
                # The distorted slices enter pass-2 templates placed by the best estimate pass 1 has:
                # its measurements combined and refined as the final ones are.
                first = {z: {**e, "metrics": dict(e["metrics"]), "timings": dict(e.get("timings", {}))}
                         for z, e in results.items()}
                summary, fallback = _combine(first, prealign_affines, pre_tf, canvas, cfg)
                if fallback is not None:
                    _refine_corrections(executor, first, prealign_affines, fallback, stack, canvas, cfg, level,
                                        summary, False)
                for z in np.flatnonzero(corrected_members):
                    start_affines[z] = np.array(first[z]["affine"])

    # Each slice's final affine from its two measurements (amst.combine), then one resampling.
    combined, fallback = _combine(results, prealign_affines, pre_tf, canvas, cfg)
    if fallback is not None:
        _refine_corrections(executor, results, prealign_affines, fallback, stack, canvas, cfg, level, combined,
                            progress)
    journal = state / "journal"
    journal.mkdir(parents=True, exist_ok=True)
    done = read_journal(journal, n) if resuming else {}
    done = {z: e for z, e in done.items() if np.allclose(e["affine"], results[z]["affine"], rtol=0, atol=1e-12)}
    if done:
        done = drop_missing_output(done, writer, journal, everything=created)
    todo = [z for z in range(n) if z not in done]
    per_pass.append(len(todo))
    block = cfg.execution.block_size or int(np.clip(np.ceil(len(todo) / (2 * workers)), 8, 64))
    write_job = _WriteJob(stack, np.array([results[z]["affine"] for z in range(n)]), canvas, cfg.warp.order,
                          writer_spec, journal)
    with tqdm(total=n, initial=len(done), desc="resample", unit="slice", disable=not progress) as bar:
        for entries in _map_blocks(executor, resample_block, write_job, _blocks(todo, block)):
            for e in entries:
                done[e["index"]] = e
            bar.update(len(entries))
    for z, e in done.items():
        for k, v in e["timings"].items():
            results[z].setdefault("timings", {})[k] = results[z].get("timings", {}).get(k, 0.0) + v
    depths, z_seconds = None, {}
    if cfg.z_spacing.mode != "off":
        depths, z_seconds = _depths_and_even_z(stack, out, out_stack, affines=np.array([results[z]["affine"]
                                                                                         for z in range(n)]),
                                               canvas=canvas, cfg=cfg, provenance=writer_spec["provenance"],
                                               ownership=ownership, workers=workers, progress=progress)

    # Assemble transforms.json last: its presence marks a complete run.
    slices = []
    totals = dict.fromkeys(STAGES, 0.0)
    for z in range(n):
        e = results[z]
        pre = pre_tf.slices[z]
        metrics = {**pre.metrics, **e["metrics"]}
        if pre.status in ("failed",) and e["status"] == "ok":
            metrics["prealign_status"] = pre.status
        slices.append(SliceTransform(z, stack.slice_name(z), pre.prealign, np.array(e["affine"]), e["status"], metrics))
        for k, v in e.get("timings", {}).items():
            totals[k] += v
    totals["prealign"] = prealign_seconds
    totals.update(z_seconds)
    per_slice = {k: v / n for k, v in totals.items()}
    tf = Transforms(canvas, slices, stack.voxel_size,
                    {"amst_version": __version__, "prealign_info": pre_tf.extra.get("prealign_info", {}),
                     "combine": combined,
                     "timings_per_slice_s": per_slice, "output": out_stack.name,
                     "input_provenance": stack.provenance()},
                    input_shape_yx=tuple(int(v) for v in stack.shape[1:]))
    if depths is not None:
        tf = with_depths(tf, depths)
    tf.save(out / "transforms.json")
    mark_complete(out, ownership)
    checks = [x for x in slices if x.metrics.get("check")]
    if checks:
        log.warning("%d slice(s) to inspect: %s", len(checks),
                    "; ".join(f"{x.index} ({x.name}): {x.metrics['check']}" for x in checks[:10]))
    counts = {s: sum(x.status == s for x in slices) for s in ("ok", "fallback", "blank", "failed")}
    log.info("done: %s", ", ".join(f"{v} {k}" for k, v in counts.items() if v))
    log.info("time per slice (s): %s", "  ".join(f"{k} {v:.3f}" for k, v in per_slice.items()))
    return AlignResult(out, out_stack, tf, per_slice, per_pass[-1], per_pass, cfg)


def _keep_or_drop_even_z(out: Path, ownership: Ownership, cfg: RunConfig, resuming: bool) -> None:
    """On a resumed run, carry the earlier marker's even-z entry (its file names) into ``ownership``,
    or remove that output when this run does not resample: it was built from the earlier depths."""
    from .zspacing.stackwise import EVEN_Z_OUTPUT

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


def _depths_and_even_z(stack: Stack, out: Path, out_stack: Path, *, affines: np.ndarray, canvas: tuple[int, int],
                       cfg: RunConfig, provenance: dict[str, Any], ownership: Ownership, workers: int,
                       progress: bool) -> tuple[ZSpacing, dict[str, float]]:
    """Estimate each slice's depth on the written output and, for ``resample``, write the even-z output.

    Returns the depths and the seconds of the two stages (``z_spacing``, ``even_z``).

    Raises
    ------
    RunError
        When the depths cannot be measured; the alignment is complete then, and the
        message says how to finish without depths.
    """
    from tqdm import tqdm

    from .zspacing.grid import even_grid
    from .zspacing.stackwise import estimate_stack_depths, output_path

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
    entry = _even_z_entry(fmt, names)  # recorded before any of its files exists
    ownership.entries[:] = [entry if e.name == entry.name else e for e in ownership.entries]
    write_ownership(out, ownership)
    writer = create_writer(output_path(out, fmt), fmt, (len(grid), *canvas), stack.dtype, stack.voxel_size,
                           names=names, ngff_version=cfg.output.ngff_version, provenance=provenance)
    with tqdm(total=len(grid), desc="even z", unit="slice", disable=not progress) as bar:
        write_even_grid(stack, affines, canvas, grid, writer, order=cfg.warp.order, workers=workers,
                        progress=bar.update)
    writer.close()
    seconds["even_z"] = time.perf_counter() - t0
    log.info("even z grid: %d slices of %.2f nm from %d aligned slices -> %s", len(grid), depths.nominal_nm,
             len(stack), output_path(out, fmt))
    return depths, seconds


def _fmt(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else "-"


def _map_blocks(executor: Any, fn: Callable[[Any, int, int], list[dict[str, Any]]], job: Any,
                blocks: list[tuple[int, int]]) -> Iterator[list[dict[str, Any]]]:
    """``fn(job, first, last)`` for every block, on the executor; results as they complete."""
    if executor is None:
        with in_process_limits():
            for a, b in blocks:
                yield fn(job, a, b)
        return
    if hasattr(executor, "scatter"):  # a dask.distributed Client
        from distributed import as_completed as dask_completed

        job_future = executor.scatter(job, broadcast=True)
        futures = [executor.submit(fn, job_future, a, b, pure=False) for a, b in blocks]
        for fut in dask_completed(futures):
            yield fut.result()
        return
    with sigint_ignored():  # workers start while submitting: they inherit the ignored SIGINT
        futures = [executor.submit(fn, job, a, b) for a, b in blocks]
    for fut in as_completed(futures):
        yield fut.result()


# -- combining the measurements, resampling --------------------------------------------------

def _reference_point(pre_tf: Transforms, prealign_affines: np.ndarray, canvas: tuple[int, int]) -> tuple[float, float]:
    """Output point the corrections are decomposed about: the template-matching ROI's centre
    (where the marks pin the translation), else the canvas centre."""
    info = pre_tf.extra.get("prealign_info", {})
    if info.get("method") == "tm" and info.get("roi_xywh_px") and info.get("roi_slice") is not None:
        x, y, w, h = (float(v) for v in info["roi_xywh_px"])
        centre = np.array([[x + (w - 1) / 2.0, y + (h - 1) / 2.0]])
        point = apply_to_points(invert(prealign_affines[int(info["roi_slice"])]), centre)[0]
        return float(point[0]), float(point[1])
    return (canvas[1] - 1) / 2.0, (canvas[0] - 1) / 2.0


def _prealign_noise(pre_tf: Transforms, prealign_affines: np.ndarray, registered: np.ndarray, usable: np.ndarray,
                    reference_xy: tuple[float, float]) -> float:
    """The pre-alignment's translation noise (px per axis), measured in this run; inf when it cannot be.

    Template matching: against the registration, with the ROI's three thirds as independent
    references (:func:`amst.combine.prealign_noise_from_parts`). The joint solve of feature /
    cross-correlation pairs reports its pair noise from loop closures (``noise_by_gap_px``): a
    slice sits between two pairs of the smallest gap, so its position noise is that / sqrt 2.
    """
    info = pre_tf.extra.get("prealign_info", {})
    if info.get("method") == "tm" and info.get("tm_thirds_noise_px"):
        parts = np.array([s.metrics.get("tm_thirds_px", np.full((3, 2), np.nan)) for s in pre_tf.slices], float)
        noise = prealign_noise_from_parts(prealign_affines, registered, usable, reference_xy=reference_xy,
                                          part_shifts_px=parts, part_noise_px=np.array(info["tm_thirds_noise_px"]))
        if noise is not None:
            return noise
    if info.get("method") == "tm":
        # Too few slices to measure it: the thirds' estimate, else the marks are taken as exact.
        return float(info.get("tm_noise_px") or 0.0)
    gaps = info.get("noise_by_gap_px") or {}
    finite = {int(g): float(v) for g, v in gaps.items() if v is not None and np.isfinite(v)}
    if finite:
        return finite[min(finite)] / np.sqrt(2.0)
    return float("inf")


def _combine(results: dict[int, dict[str, Any]], prealign_affines: np.ndarray, pre_tf: Transforms,
             canvas: tuple[int, int], cfg: RunConfig) -> tuple[dict[str, Any], np.ndarray | None]:
    """Replace each registered affine in ``results`` by the combined one (in place); returns
    the stack-level summary recorded in ``transforms.json`` and the affines without linear
    correction (None when the registrations were kept as they are)."""
    n = len(prealign_affines)
    if cfg.register.combine == "registration":
        return {"method": "registration"}, None
    usable = np.array([results[z]["status"] == "ok" for z in range(n)])
    if usable.sum() < 8:
        log.info("combine: %d slice(s) registered, too few to measure the noise; registrations kept as they are",
                 int(usable.sum()))
        return {"method": "registration", "reason": "fewer than 8 slices registered"}, None
    registered = np.array([results[z]["affine"] for z in range(n)], np.float64)
    reference = _reference_point(pre_tf, prealign_affines, canvas)
    combined = combine_measurements(prealign_affines, registered, usable, reference_xy=reference,
                                    prealign_noise_px=_prealign_noise(pre_tf, prealign_affines, registered, usable,
                                                                     reference),
                                    significance=cfg.register.significance,
                                    trend_radius=cfg.template.median_radius,
                                    prealign_measured=np.array([s.status == "ok" for s in pre_tf.slices]))
    for z in np.flatnonzero(usable):
        e = results[z]
        e["metrics"]["registered_affine"] = e["affine"]
        e["metrics"]["linear_significance"] = round(float(combined.linear_significance[z]), 3)
        e["metrics"]["linear_applied"] = bool(combined.linear_applied[z])
        e["affine"] = combined.affines[z].tolist()
        if combined.translation_significance[z] > cfg.register.significance and "check" not in e["metrics"]:
            e["metrics"]["check"] = (f"template registration and pre-alignment disagree on the translation by "
                                     f"{combined.translation_significance[z]:.1f} x their noise: one of them "
                                     "failed on this slice")
    summary = {"method": "significance", "significance": cfg.register.significance, **combined.summary()}
    log.info("combine: %d of %d registered slice(s) needed their linear correction (significance > %g; "
             "registration noise per entry %s); translation weight of the registration %.2f (pre-alignment "
             "noise %.3f px, registration %.3f / %.3f px)", summary["linear_applied"], int(usable.sum()),
             cfg.register.significance, " ".join(f"{v:.1e}" for v in combined.noise_linear),
             combined.translation_weight, combined.prealign_noise_px, *combined.noise_translation_px)
    return summary, combined.without_linear


@dataclass(frozen=True)
class _RefinePlan:
    """How one slice's linear correction is measured again.

    ``neighbours``: the slices whose mean is the template. ``motion_pair``: with a neighbour on
    one side only (at a stack end, or inside a long run of distorted slices), ``(p, q)``, two
    slices on that side that carry no linear correction of their own, ``p`` registered to
    ``q`` measures the content's own change with depth, which the one-sided measurement holds
    and which is then taken out of it (:func:`_extrapolated_linear`). None with a neighbour on
    each side (their mean cancels that change to first order) or when no such pair is near.
    """

    neighbours: tuple[int, ...]
    motion_pair: tuple[int, int] | None = None


@dataclass
class _RefineJob:
    """What a worker needs to re-measure the linear correction of distorted slices."""

    stack: Stack
    affines: np.ndarray                    # the combined affines
    prealign_affines: np.ndarray           # the bounds of the sanity checks
    plans: dict[int, _RefinePlan]
    canvas: tuple[int, int]
    cfg: RunConfig
    template_level: int
    reference_xy: tuple[float, float]


#: Auto-focus events last one to three slices: a refinement template is made only of slices
#: that close (farther ones differ in content as much as the median template's).
_MAX_EVENT_SLICES = 3


def _nearest_undistorted(z: int, needs: np.ndarray, usable: np.ndarray, step: int) -> int | None:
    """The nearest usable slice from ``z`` in direction ``step``, at most
    :data:`_MAX_EVENT_SLICES` away, whose correction was not needed."""
    for d in range(1, _MAX_EVENT_SLICES + 1):
        j = z + step * d
        if not 0 <= j < len(needs):
            return None
        if usable[j] and not needs[j]:
            return j
    return None


def _refine_plan(z: int, unsettled: np.ndarray, usable: np.ndarray,
                 corrected: np.ndarray | None = None) -> _RefinePlan:
    """The nearest settled slice on each side of ``z`` (usable, not ``unsettled``).

    With only one side (``a``, ``gap`` slices from ``z``), also the motion pair: the first
    slice ``p`` from ``a`` outwards that is settled and not ``corrected``, and the one such
    ``q`` beyond it nearest to ``gap`` slices from ``p`` (the content's change over the same
    distance, so that the extrapolation does not amplify its noise). A corrected slice's
    placement holds its own correction, whose error a motion pair through it would pass into
    the extrapolation twice (once through the template, once through the pair).
    """
    settled = usable & ~unsettled
    clean = settled if corrected is None else settled & ~corrected
    n = len(settled)
    sides = {step: _nearest_undistorted(z, unsettled, usable, step) for step in (-1, 1)}
    neighbours = tuple(j for j in (sides[-1], sides[1]) if j is not None)
    if len(neighbours) != 1:
        return _RefinePlan(neighbours)
    a = neighbours[0]
    step = 1 if a > z else -1
    gap = abs(a - z)
    for p in (a + step * d for d in range(_MAX_EVENT_SLICES + 1) if 0 <= a + step * d < n):
        if not clean[p]:
            continue
        beyond = [p + step * d for d in range(1, gap + _MAX_EVENT_SLICES + 1)
                  if 0 <= p + step * d < n and clean[p + step * d]]
        if beyond:
            return _RefinePlan(neighbours, (p, min(beyond, key=lambda j: (abs(abs(j - p) - gap), -abs(j - p)))))
    return _RefinePlan(neighbours)


def _extrapolated_linear(linear_za: np.ndarray, linear_pq: np.ndarray, z: int, a: int, p: int, q: int
                         ) -> np.ndarray:
    """Slice ``z``'s linear correction from one-sided measurements.

    To first order, registering slice ``s`` to slice ``t`` measures ``L_s - I + (t - s) G``:
    its own distortion plus the content's change with depth over ``t - s`` slices (``G`` per
    slice; real tissue and the phantom move sideways and change shape with depth). An
    undistorted ``p`` registered to ``q`` measures ``(q - p) G`` alone, so

        L_z = L_za - (a - z) / (q - p) (L_pq - I).

    Examples
    --------
    A 0.5 % pixel-size change at ``z = 0`` seen through content that grows 0.1 % per slice:

    >>> g = np.diag([0.001, 0.001])
    >>> _extrapolated_linear(np.diag([1.005, 1.0]) + g, np.eye(2) + g, 0, 1, 2, 3).round(6).tolist()
    [[1.005, 0.0], [0.0, 1.0]]
    """
    return linear_za - (a - z) / (q - p) * (linear_pq - np.eye(2))


def _mean_template(job: _RefineJob, members: tuple[int, ...], shape: tuple[int, int]) -> np.ndarray:
    """The mean of slices ``members`` placed by their affines (NaN where none covers)."""
    level = job.template_level
    placed = np.stack([_prealigned_float(_registration_image(job.stack.read(j), level, job.cfg),
                                         at_level(job.affines[j], level), shape) for j in members])
    count = np.isfinite(placed).sum(axis=0)
    total = np.where(np.isfinite(placed), placed, 0).sum(axis=0)
    return np.where(count > 0, total / np.maximum(count, 1), np.nan).astype(np.float32)


def _measure_linear(job: _RefineJob, z: int, members: tuple[int, ...]
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | str:
    """Register slice ``z`` (from its affine) to the mean of ``members``: its linear correction
    (2, 2), and the registration image, filled template and mask for the checks; or why not."""
    shape = level_shape(job.canvas, job.template_level)
    template = _mean_template(job, members, shape)
    mask = np.isfinite(template)
    if mask.mean() < 0.05:
        return f"refinement template from slice(s) {list(members)} covers < 5 % of the canvas"
    filled = np.where(mask, template, np.float32(template[mask].mean()))
    image = _registration_image(job.stack.read(z), job.template_level, job.cfg)
    start = job.affines[z]
    params = job.cfg.register.elastix if job.cfg.register.backend == "elastix" else job.cfg.register.fast
    try:
        fit = register(job.cfg.register.backend, image, filled, mask, start, params, job.template_level,
                       job.template_level).affine
    except RegistrationError as exc:
        return f"refinement failed: {exc}"
    return compose(invert(start), fit)[:, :2], image, filled, mask


def refine_block(job: _RefineJob, first: int, last: int) -> list[dict[str, Any]]:
    """Re-measure the linear part of slices ``first..last-1`` against their nearest
    undistorted neighbours (see :func:`_refine_corrections`)."""
    single_threaded_libraries()
    cfg = job.cfg
    level = job.template_level
    c = np.asarray(job.reference_xy)
    out = []
    for z in range(first, last):
        t0 = time.perf_counter()
        plan = job.plans[z]
        entry: dict[str, Any] = {"index": z, "refined": False, "seconds": 0.0}
        measured = _measure_linear(job, z, plan.neighbours)
        if plan.motion_pair is not None and not isinstance(measured, str):
            p, q = plan.motion_pair
            motion = _measure_linear(job, p, (q,))
            if isinstance(motion, str):
                measured = f"{motion} (slice {p} to {q}, the content's change with depth)"
            else:
                measured = (_extrapolated_linear(measured[0], motion[0], z, plan.neighbours[0], p, q), *measured[1:])
        if isinstance(measured, str):
            entry["reason"] = measured
        else:
            lin, image, filled, mask = measured
            start = job.affines[z]
            kept = np.zeros((2, 3))
            kept[:, :2] = lin
            kept[:, 2] = c - lin @ c  # the translation at c stays the combined one
            refined = compose(start, kept)
            ncc_start = sampled_ncc(image, filled, mask, at_level(start, level))
            ncc_refined = sampled_ncc(image, filled, mask, at_level(refined, level))
            r = cfg.register
            problem = check_result(refined, job.prealign_affines[z], job.canvas, r.max_scale_change, r.max_shear,
                                   r.max_shift_px, ncc_start, ncc_refined, r.min_ncc_gain, r.min_ncc)
            if problem:
                entry["reason"] = f"refinement not kept: {problem}"
            else:
                pre_linear = compose(invert(job.prealign_affines[z]), refined)[:, :2]
                entry.update(refined=True, affine=refined.tolist(), ncc=[ncc_start, ncc_refined],
                             linear_deviation=(pre_linear - np.eye(2)).ravel().tolist())
        entry["seconds"] = time.perf_counter() - t0
        out.append(entry)
    return out


def _refine_corrections(executor: Any, results: dict[int, dict[str, Any]], prealign_affines: np.ndarray,
                        without_linear: np.ndarray, stack: Stack, canvas: tuple[int, int], cfg: RunConfig, level: int,
                        combined: dict[str, Any], progress: bool) -> None:
    """Re-measure the linear correction of each slice that needed one, against its nearest
    undistorted neighbours (in place in ``results``).

    The median template (radius ``template.median_radius``) is robust, and its measured noise
    decides which slices need a correction; but it is made of slices up to that many slices
    away, whose content differs. The correction itself is therefore measured again against the
    mean of the nearest usable slice on each side whose own correction was not needed (placed
    by their final affines): the least content mismatch there is. The translation at the
    reference point stays the combined one. On ``amst synth`` stacks this brought the median
    error at auto-focus slices from 0.236 to 0.148 px (phantom, 300 x 384^2, seed 0) and from
    0.213 to 0.142 px (real FIB-SEM content, 415 x 202^2, seed 0; benchmarks/real_content.py
    measures the whole method). A refinement that fails the registration checks
    (``check_result``: bounds on scale, shear, shift and NCC) is not kept. The refined
    correction must itself be significant (the same noise, the same threshold): a correction
    that only the median template sees is that template's content mismatch, and the slice
    is then kept without a linear correction (two measurements against different templates
    must agree; on a 30-slice phantom stack, seed 35, this kept slices 11-13 at their
    pre-alignment's 0.08 px instead of 0.29 px).

    Slices with an undistorted neighbour on each side are measured first, all at once. The
    others (at the stack ends, or inside a run of distorted slices longer than
    :data:`_MAX_EVENT_SLICES`) have a neighbour on one side only, and that measurement also
    holds the content's change with depth, which one more registration, between two
    uncorrected slices beyond it, measures and takes out (:func:`_extrapolated_linear`).
    They are measured from the inside out, nearest to a settled slice first; each one settled
    (refined, or found undistorted) becomes a neighbour of the next, so that the slices of a
    run at an end are each measured against the slice next to them. Every registration in a
    measurement adds its noise, and a corrected neighbour its correction's error: the
    measured noise is scaled by the square root of their number before the significance
    test (without it, a run of corrections chained from one slice to the next made clean
    slices next to it look distorted and put them 0.5-0.9 px off). An event on the first or
    last slices is found by pass 1 of ``template.ends: extend`` (mirrored windows); the
    figures are in :mod:`amst.template` (``benchmarks/stack_ends.py``).
    """
    from tqdm import tqdm

    n = len(results)
    usable = np.array([results[z]["status"] == "ok" for z in range(n)])
    needs = np.array([bool(results[z]["metrics"].get("linear_applied")) for z in range(n)])
    targets = [int(z) for z in np.flatnonzero(needs)]
    if not targets:
        return
    unsettled = needs.copy()
    noise = np.asarray(combined["noise_linear"])
    reference_xy = tuple(combined["reference_xy"])
    pending = set(targets)
    with tqdm(total=len(targets), desc="refine", unit="slice", disable=not progress) as bar:
        while pending:
            corrected = np.array([bool(results[z]["metrics"].get("linear_applied")) for z in range(n)])
            plans = {z: _refine_plan(z, unsettled, usable, corrected) for z in sorted(pending)}
            batch = [z for z, plan in plans.items() if len(plan.neighbours) == 2]
            if not batch:
                one_sided = [z for z, plan in plans.items() if plan.neighbours]
                if not one_sided:
                    break
                nearest = min(abs(plans[z].neighbours[0] - z) for z in one_sided)
                batch = [z for z in one_sided if abs(plans[z].neighbours[0] - z) == nearest]
            job = _RefineJob(stack, np.array([results[z]["affine"] for z in range(n)]), prealign_affines, plans,
                             canvas, cfg, level, reference_xy)
            for entries in _map_blocks(executor, refine_block, job, [(z, z + 1) for z in batch]):
                for e in entries:
                    z = e["index"]
                    # Each registration in the measurement adds its noise, and so does the
                    # correction of a corrected neighbour (its error is in the template).
                    parts = 1 + (plans[z].motion_pair is not None) + sum(bool(corrected[j]) for j in plans[z].neighbours)
                    _take_refinement(results[z], e, plans[z], noise * np.sqrt(parts), without_linear[z],
                                     cfg.register.significance)
                    unsettled[z] = False
                    pending.discard(z)
                bar.update(len(entries))
    for z in sorted(pending):  # keeps the median template's measurement
        results[z]["metrics"]["refine_reason"] = (f"no undistorted slice within {_MAX_EVENT_SLICES} slices on either "
                                                  "side: the median template's correction is kept")
    refined = sum(bool(results[z]["metrics"].get("refined")) for z in targets)
    unconfirmed = sum(not results[z]["metrics"].get("linear_applied") for z in targets)
    combined["refined"] = refined
    combined["not_confirmed"] = unconfirmed
    combined["linear_applied"] -= unconfirmed
    log.info("refine: %d of %d corrected slice(s) re-measured against their nearest undistorted neighbours; "
             "%d not confirmed there (kept without a linear correction)", refined, len(targets), unconfirmed)


def _take_refinement(result: dict[str, Any], entry: dict[str, Any], plan: _RefinePlan, noise: np.ndarray,
                     without_linear: np.ndarray, significance: float) -> None:
    """Apply one refinement (``entry``, from :func:`refine_block`) to a slice's ``result``, in place."""
    metrics = result["metrics"]
    metrics["refine_neighbours"] = list(plan.neighbours)
    if plan.motion_pair is not None:
        metrics["refine_motion_pair"] = list(plan.motion_pair)
    if entry["refined"]:
        # The refined measurement as it is applied (the median template's trend is not in it).
        s = float(np.sqrt(np.sum((np.array(entry["linear_deviation"]) / noise) ** 2)))
        metrics["refined_significance"] = round(s, 3)
        if s > significance:
            result["affine"] = entry["affine"]
            metrics["refined"] = True
        else:  # the neighbours do not confirm it: the median template's content mismatch
            result["affine"] = without_linear.tolist()
            metrics["linear_applied"] = False
            metrics["refine_reason"] = (f"not confirmed by the nearest neighbours (significance {s:.1f} <= "
                                        f"{significance:g})")
    elif entry.get("reason"):
        metrics["refine_reason"] = entry["reason"]
    timings = result.setdefault("timings", {})
    timings["register"] = timings.get("register", 0.0) + entry["seconds"]


@dataclass
class _WriteJob:
    """Everything a worker needs to resample and write slices; small and picklable."""

    stack: Stack
    affines: np.ndarray
    canvas: tuple[int, int]
    order: str
    writer: dict[str, Any]
    journal: Path


def resample_block(job: _WriteJob, first: int, last: int) -> list[dict[str, Any]]:
    """Resample raw slices ``first..last-1`` once with their final affine and write them.

    Each slice's data is written before its journal entry, so an interrupted run never marks
    a slice done that is not on disk.
    """
    single_threaded_libraries()
    writer = create_writer(**job.writer, mode="a")
    out = []
    for z in range(first, last):
        timing = dict.fromkeys(("read", "warp", "write"), 0.0)
        t0 = time.perf_counter()
        raw = job.stack.read(z)
        timing["read"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        image = warp_slice(raw, job.affines[z], job.canvas, job.order)
        timing["warp"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        try:
            writer.write(z, image)
        except OSError as exc:
            raise OSError(exc.errno, f"writing slice {z} ({job.stack.slice_name(z)}) to {writer.path} failed: "
                                     f"{exc.strerror or exc}; free space or fix permissions, then re-run the "
                                     "same command to resume") from exc
        timing["write"] = time.perf_counter() - t0
        entry = {"index": z, "affine": job.affines[z].tolist(), "timings": timing,
                 "output_bytes": slice_file_sizes(writer, z)}
        atomic_write_text(journal_entry(job.journal, z), json.dumps(entry))
        out.append(entry)
    return out


# -- re-applying saved transforms ----------------------------------------------------------

def apply(transforms: str | Path, input: str | Path, out: str | Path, *, order: str = "cubic",
          out_format: str | None = None, workers: int | None = None, overwrite: bool = False,
          pattern: str | None = None, dataset: str | None = None, channel: int | None = None,
          voxel_size: VoxelSize | None = None, z_spacing: str = "off", progress: bool = True) -> Path:
    """Re-apply the affines of ``transforms.json`` to another stack (channel, labels).

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
    from tqdm import tqdm

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

    def one(z: int) -> None:
        writer.write(z, warp_slice(stack.read(z), tf.slices[z].affine, canvas, order))

    with tqdm(total=count, desc="apply" if grid is None else "apply (even z)", unit="slice",
              disable=not progress) as bar:
        if grid is None:
            for _ in ordered_map(one, range(len(stack)), default_workers(workers)):
                bar.update(1)
        else:
            write_even_grid(stack, tf.affines, canvas, grid, writer, order=order, workers=default_workers(workers),
                            progress=bar.update)
    mark_complete(out, ownership)
    return out


def _same_voxel(a: VoxelSize, b: VoxelSize, tolerance: float = 0.01) -> bool:
    return all(abs(x - y) <= tolerance * max(abs(x), abs(y)) for x, y in zip((a.z, a.y, a.x), (b.z, b.y, b.x)))


__all__ = ["align", "apply", "AlignResult", "RunError", "process_block", "resample_block"]
