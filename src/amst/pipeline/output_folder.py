"""A run's output folder: what it owns, what makes its results, and the output stack.

OUT must be new, empty, or a folder an earlier ``amst run`` wrote (:mod:`amst.outdir`). A
run's results depend on its digest (:func:`digest_parts`): the result-affecting options
and the input's files; a rerun that agrees on every part resumes, any other is refused
with the list of what changed.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import __version__
from ..config import RunConfig
from ..outdir import (STATE_DIR, OutputError, OwnedEntry, atomic_write_text, claim_output, read_ownership,
                      refuse_overlap, unknown_files)
from ..stack import OUTPUT_FORMATS, Stack, VoxelSize, create_writer, output_is_file
from ..zspacing.stackwise import EVEN_Z_OUTPUT

log = logging.getLogger("amst")


@dataclass(frozen=True, eq=False)
class OutputSpec:
    """The output stack a run writes: where, in which format, its geometry and metadata."""

    path: Path
    fmt: str
    shape: tuple[int, int, int]
    dtype: Any
    voxel_size: VoxelSize | None
    names: list[str] | None = None
    pyramid_levels: int = 1
    ngff_version: str = "0.4"
    provenance: dict[str, Any] = field(default_factory=dict)

    def open(self, mode: str) -> Any:
        """The writer: ``mode`` "w" creates the stack, "a" reopens it."""
        return create_writer(self.path, self.fmt, self.shape, self.dtype, self.voxel_size, names=self.names,
                             pyramid_levels=self.pyramid_levels, mode=mode, ngff_version=self.ngff_version,
                             provenance=self.provenance)


def open_output_stack(spec: OutputSpec, resuming: bool) -> tuple[Any, bool]:
    """The run's output stack, and whether it was created now (nothing of it is on disk yet):
    reopened when resuming, created (again) when missing or unreadable.

    The folder is the run's own (checked before), so a store damaged beyond reopening is
    created anew; the journal check then recomputes every slice it no longer holds.
    """
    if resuming and spec.path.exists():
        try:
            return spec.open("a"), False
        except (KeyError, ValueError, OSError, TypeError) as exc:
            log.warning("%s cannot be reopened (%s: %s); creating it anew", spec.path, type(exc).__name__, exc)
    return spec.open("w"), True


def output_name(cfg: RunConfig) -> str:
    return OUTPUT_FORMATS[cfg.output.out_format]


def digest_parts(cfg: RunConfig, stack: Stack, prealigned: Stack | None) -> dict[str, Any]:
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


def run_entries(cfg: RunConfig, tiff_names: tuple[str, ...] | list[str] = ()) -> list[OwnedEntry]:
    fmt = cfg.output.out_format
    entries = [OwnedEntry(STATE_DIR, "state"), OwnedEntry("amst.log", "file"), OwnedEntry("config.yaml", "file"),
               OwnedEntry("transforms.json", "file"), OwnedEntry("transforms.fields.npy", "file"),
               stack_entry(output_name(cfg), fmt, cfg.output.pyramid_levels, tiff_names),
               OwnedEntry("report", "report")]
    if cfg.z_spacing.mode == "resample":
        entries.append(even_z_entry(fmt))
    return entries


def stack_entry(name: str, fmt: str, levels: int, tiff_names: tuple[str, ...] | list[str]) -> OwnedEntry:
    """The owned entry of an output stack in format ``fmt`` (a Zarr store, one file, or a TIFF folder)."""
    if fmt == "zarr":
        return OwnedEntry(name, "zarr", tuple(str(i) for i in range(levels)))
    return OwnedEntry(name, "file") if output_is_file(fmt) else OwnedEntry(name, "tiff", tuple(tiff_names))


def even_z_entry(fmt: str, tiff_names: tuple[str, ...] | list[str] = ()) -> OwnedEntry:
    """The owned entry of a run's even-z output (``z_spacing.mode: resample``; one Zarr level)."""
    return stack_entry(EVEN_Z_OUTPUT[fmt], fmt, 1, tiff_names)


def prepare_out(out: Path, cfg: RunConfig, protected: dict[str, Path | None], parts: dict[str, Any],
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
    claim_output(out, kind="run", entries=run_entries(cfg), overwrite=overwrite, protected=protected)
    (out / STATE_DIR / "journal").mkdir(parents=True, exist_ok=True)
    atomic_write_text(state, json.dumps({"digest": _digest(parts), "parts": parts, "amst_version": __version__}))
    return False
