"""The run's journal: which slices are done, and whether their output is still on disk, whole.

Each slice's data is written before its journal entry, and the entry records the byte
sizes of the files that hold the slice; a resumed run trusts an entry only when those
files are there at those sizes.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from .stack import create_writer

log = logging.getLogger("amst")


def journal_entry(journal: Path, z: int) -> Path:
    return journal / f"{z:07d}.json"


def read_journal(journal: Path, n: int) -> dict[int, dict[str, Any]]:
    done = {}
    for z in range(n):
        p = journal_entry(journal, z)
        if p.exists():
            try:
                done[z] = json.loads(p.read_text())
            except json.JSONDecodeError:  # a torn entry is not a finished slice
                p.unlink()
    return done


def open_output_stack(spec: dict[str, Any], resuming: bool) -> tuple[Any, bool]:
    """The run's output stack, and whether it was created now (nothing of it is on disk yet):
    reopened when resuming, created (again) when missing or unreadable.

    The folder is the run's own (checked before), so a store damaged beyond reopening is
    created anew; the journal check then recomputes every slice it no longer holds.
    """
    if resuming and Path(spec["path"]).exists():
        try:
            return create_writer(**spec, mode="a"), False
        except (KeyError, ValueError, OSError, TypeError) as exc:
            log.warning("%s cannot be reopened (%s: %s); creating it anew", spec["path"], type(exc).__name__, exc)
    return create_writer(**spec, mode="w"), True


def drop_missing_output(done: dict[int, dict[str, Any]], writer: Any, journal: Path,
                         everything: bool = False) -> dict[int, dict[str, Any]]:
    """Journal entries whose slice is no longer on disk, whole, are not done: they are recomputed
    (all of them when ``everything``: the output stack was just created anew)."""
    missing = [z for z in sorted(done) if everything or not slice_on_disk(writer, z, done[z].get("output_bytes"))]
    if missing:
        log.warning("%d slice(s) listed as done are missing or damaged in %s (e.g. %s); recomputing them",
                    len(missing), writer.path, ", ".join(str(z) for z in missing[:10]))
        for z in missing:
            journal_entry(journal, z).unlink(missing_ok=True)
    return {z: e for z, e in done.items() if z not in set(missing)}


def _slice_files(writer: Any, z: int) -> list[Path]:
    """The files that hold slice ``z`` of the writer's stack (TIFF: one; OME-Zarr: every chunk of
    the slice at every level, v2 ``z/y/x`` keys; the writer stores empty chunks too)."""
    if getattr(writer, "kind", None) == "tiff":
        return [writer.path / writer.names[z]]
    files = []
    for i, arr in enumerate(writer.arrays):
        _, h, w = arr.shape
        _, ch, cw = arr.chunks
        files += [writer.path / str(i) / str(z) / str(cy) / str(cx) for cy in range(-(-h // ch))
                  for cx in range(-(-w // cw))]
    return files


def slice_file_sizes(writer: Any, z: int) -> list[int] | None:
    """Byte sizes of the files that hold slice ``z`` (recorded in the journal when it is written);
    None for single-file outputs, whose size does not depend on the slice."""
    if hasattr(writer, "has_slice"):
        return None
    return [p.stat().st_size for p in _slice_files(writer, z)]


def slice_on_disk(writer: Any, z: int, expected_bytes: list[int] | None = None) -> bool:
    """True when every file that holds slice ``z`` exists, is not empty, and (when the journal
    recorded them) has the size it had when it was written."""
    if hasattr(writer, "has_slice"):  # a single file holds every slice (MRC, ImageJ hyperstack)
        return writer.has_slice(z)
    files = _slice_files(writer, z)
    try:
        sizes = [p.stat().st_size for p in files]
    except FileNotFoundError:
        return False
    if expected_bytes is not None:
        return sizes == list(expected_bytes)
    return all(size > 0 for size in sizes)
