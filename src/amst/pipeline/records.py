"""What a worker hands back for one slice, as typed records that travel and are journalled.

A record goes to the journal as JSON the moment its slice is done (``to_json``) and comes
back from it on a resumed run (``from_json``); floats survive the round trip exactly.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..local_residual import NodeShifts

#: Where a run's time goes, in the order the run prints them. Worker stages are the core
#: seconds the workers spend; ``setup``, ``combine`` and ``finish`` run in the main process
#: while the workers wait (wall seconds times the workers); ``idle`` is what remains of the
#: workers' time in the parallel stages (a pool starting, the last blocks of a stage).
STAGES = ("setup", "prealign", "read", "template", "register", "elastic", "refine", "combine", "warp", "write", "z_spacing",
          "even_z", "finish", "idle")

#: The stages a worker times for each slice it registers or resamples.
SLICE_STAGES = ("read", "template", "register", "warp", "write")


def no_time() -> dict[str, float]:
    """Zero seconds for each of :data:`SLICE_STAGES`."""
    return dict.fromkeys(SLICE_STAGES, 0.0)


@dataclass
class SliceResult:
    """One slice's registration in one pass: its full output -> raw affine, its status
    (:data:`amst.transforms_io.STATUSES`), the metrics that go to ``transforms.json`` and the
    seconds it took per stage; with ``register.elastic`` on, the last pass also measures the
    local displacements its affine left (``local``, :mod:`amst.local_residual`)."""

    index: int
    affine: np.ndarray
    status: str
    metrics: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=no_time)
    local: NodeShifts | None = None

    def to_json(self) -> str:
        doc = {"index": self.index, "affine": np.asarray(self.affine).tolist(), "status": self.status,
               "metrics": self.metrics, "timings": self.timings}
        if self.local is not None:
            doc["local"] = self.local.to_json()
        return json.dumps(doc)

    @classmethod
    def from_json(cls, text: str) -> SliceResult:
        doc = json.loads(text)
        local = NodeShifts.from_json(doc["local"]) if doc.get("local") else None
        return cls(int(doc["index"]), np.array(doc["affine"], np.float64), doc["status"], doc["metrics"],
                   doc["timings"], local)

    def copy(self) -> SliceResult:
        return SliceResult(self.index, self.affine.copy(), self.status, dict(self.metrics), dict(self.timings),
                           self.local)


@dataclass
class ResampledSlice:
    """One slice resampled and written: the affine (and field checksum) it was written with, the seconds per stage,
    and the byte sizes of the files that hold it (None for single-file outputs), which a
    resumed run checks before it trusts the slice (:mod:`amst.journal`)."""

    index: int
    affine: np.ndarray
    timings: dict[str, float]
    output_bytes: list[int] | None = None
    field_digest: str | None = None  # checksum of the slice's displacement field, None without one

    def to_json(self) -> str:
        doc = {"index": self.index, "affine": np.asarray(self.affine).tolist(), "timings": self.timings,
               "output_bytes": self.output_bytes}
        if self.field_digest is not None:
            doc["field_digest"] = self.field_digest
        return json.dumps(doc)

    @classmethod
    def from_json(cls, text: str) -> ResampledSlice:
        doc = json.loads(text)
        return cls(int(doc["index"]), np.array(doc["affine"], np.float64), doc["timings"], doc.get("output_bytes"),
                   doc.get("field_digest"))


@dataclass
class PairRegistration:
    """Slice ``source`` registered to slice ``target``, both placed without a linear correction
    (:mod:`amst.pipeline.refine`): the linear part of the correction less the identity (four
    entries; None when the registration failed, ``reason`` says why), and the seconds it took."""

    source: int
    target: int
    deviation: np.ndarray | None = None
    reason: str = ""
    seconds: float = 0.0
