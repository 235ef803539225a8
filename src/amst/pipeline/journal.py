"""The run's journal: which slices are done, and whether their output is still on disk, whole.

Each slice's data is written before its journal entry, and the entry records the byte
sizes of the files that hold the slice; a resumed run trusts an entry only when those
files are there at those sizes.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, TypeVar

from ..outdir import atomic_write_text

log = logging.getLogger("amst")


R = TypeVar("R")


def journal_entry(journal: Path, z: int) -> Path:
    return journal / f"{z:07d}.json"


def write_entry(journal: Path, z: int, text: str) -> None:
    """Record slice ``z`` as done (atomically: a crash leaves the old entry or none)."""
    atomic_write_text(journal_entry(journal, z), text)


def read_journal(journal: Path, n: int, record: type[R]) -> dict[int, R]:
    """The slices ``0..n-1`` the journal lists as done, as ``record.from_json`` of each entry."""
    done = {}
    for z in range(n):
        p = journal_entry(journal, z)
        if p.exists():
            try:
                done[z] = record.from_json(p.read_text())
            except (ValueError, KeyError, TypeError):  # a torn or foreign entry is not a finished slice
                p.unlink()
    return done


def drop_missing_output(done: dict[int, Any], writer: Any, journal: Path, everything: bool = False) -> dict[int, Any]:
    """Journal entries whose slice is no longer on disk, whole, are not done: they are recomputed
    (all of them when ``everything``: the output stack was just created anew)."""
    missing = [z for z in sorted(done) if everything or not slice_on_disk(writer, z, done[z].output_bytes)]
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
