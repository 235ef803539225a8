"""The last step: each raw slice resampled once with its final map (affine, and field where it
has one), and written."""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..stack import Stack
from ..warp import SliceMaps
from .journal import slice_file_sizes, write_entry
from .output_folder import OutputSpec
from .records import ResampledSlice


@dataclass(frozen=True, eq=False)
class ResampleJob:
    """Everything a worker needs to resample and write slices; small and picklable."""

    stack: Stack
    maps: SliceMaps
    canvas: tuple[int, int]
    order: str
    output: OutputSpec
    journal: Path


def resample_block(job: ResampleJob, first: int, last: int) -> list[ResampledSlice]:
    """Resample raw slices ``first..last-1`` once with their final map and write them.

    Each slice's data is written before its journal entry, so an interrupted run never marks
    a slice done that is not on disk.
    """
    writer = job.output.open("a")
    out = []
    for z in range(first, last):
        t0 = time.perf_counter()
        raw = job.stack.read(z)
        t1 = time.perf_counter()
        image = job.maps.warp(z, raw, job.canvas, job.order)
        t2 = time.perf_counter()
        try:
            writer.write(z, image)
        except OSError as exc:
            raise OSError(exc.errno, f"writing slice {z} ({job.stack.slice_name(z)}) to {writer.path} failed: "
                                     f"{exc.strerror or exc}; free space or fix permissions, then re-run the "
                                     "same command to resume") from exc
        entry = ResampledSlice(z, job.maps.affines[z], {"read": t1 - t0, "warp": t2 - t1}, slice_file_sizes(writer, z),
                               field_digest(job.maps.fields.get(z)))
        write_entry(job.journal, z, entry.to_json())
        entry.timings["write"] = time.perf_counter() - t2  # the journal entry included
        out.append(entry)
    return out


def field_digest(field: np.ndarray | None) -> str | None:
    """A short checksum of a slice's field (None without one): a resumed run rewrites a slice
    whose field changed, as it does one whose affine changed."""
    if field is None:
        return None
    return hashlib.sha256(np.ascontiguousarray(field, np.float64).tobytes()).hexdigest()[:16]
