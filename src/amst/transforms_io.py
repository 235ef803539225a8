"""``transforms.json``: the per-slice affines of a run (a contract, see DESIGN.md)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .stack import VoxelSize
from .transform import as_affine, to_list

FORMAT = "amst-transforms"
VERSION = 1
STATUSES = ("ok", "fallback", "blank", "failed")


@dataclass
class SliceTransform:
    """One slice of ``transforms.json``; ``affine`` maps output (x, y) to raw (x, y)."""

    index: int
    name: str
    prealign: np.ndarray
    affine: np.ndarray
    status: str = "ok"
    metrics: dict[str, Any] = field(default_factory=dict)
    z_nm: float | None = None  # estimated depth (slice 0 at 0), when the run or `amst zspacing` measured it
    z_nm_sd: float | None = None  # its standard deviation

    def to_json(self) -> dict[str, Any]:
        if self.status not in STATUSES:
            raise ValueError(f"slice {self.index}: status {self.status!r} is not one of {STATUSES}")
        doc = {"index": self.index, "name": self.name, "prealign": to_list(self.prealign),
               "affine": to_list(self.affine), "status": self.status, "metrics": jsonable(self.metrics)}
        if self.z_nm is not None:
            if not np.isfinite(self.z_nm):
                raise ValueError(f"slice {self.index}: z_nm {self.z_nm} is not a finite depth")
            doc["z_nm"] = float(self.z_nm)
            doc["z_nm_sd"] = None if self.z_nm_sd is None else jsonable(float(self.z_nm_sd))
        return doc


@dataclass
class Transforms:
    """All slices of a run plus the output canvas and voxel size."""

    canvas_shape_yx: tuple[int, int]
    slices: list[SliceTransform]
    voxel_size: VoxelSize | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    input_shape_yx: tuple[int, int] | None = None  # slice shape of the stack the transforms were measured on

    @property
    def affines(self) -> np.ndarray:
        """(n, 2, 3) array of the full output-to-raw affines."""
        return np.array([s.affine for s in self.slices])

    @property
    def z_nm(self) -> np.ndarray | None:
        """Estimated depth of every slice (nm, slice 0 at 0), or None when not measured."""
        if not self.slices or any(s.z_nm is None for s in self.slices):
            return None
        return np.array([s.z_nm for s in self.slices], dtype=np.float64)

    def to_json(self) -> dict[str, Any]:
        doc = {"format": FORMAT, "version": VERSION, "convention": "output_xy_to_input_xy",
               "canvas": {"shape_yx": [int(v) for v in self.canvas_shape_yx]},
               "voxel_size": self.voxel_size.to_dict() if self.voxel_size else None,
               "slices": [s.to_json() for s in self.slices]}
        if self.input_shape_yx is not None:
            doc["input"] = {"shape_yx": [int(v) for v in self.input_shape_yx]}
        doc.update(jsonable(self.extra))
        return doc

    def save(self, path: str | Path) -> None:
        """Write atomically (temporary file, fsync, then rename)."""
        from .outdir import atomic_write_text

        atomic_write_text(path, json.dumps(self.to_json(), indent=1))


def load_transforms(path: str | Path) -> Transforms:
    """Read and validate ``transforms.json``."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: cannot read transforms ({exc})") from exc
    if doc.get("format") != FORMAT or doc.get("convention") != "output_xy_to_input_xy":
        raise ValueError(f"{path}: not an amst transforms file (format={doc.get('format')!r})")
    slices = []
    for s in doc["slices"]:
        try:
            slices.append(SliceTransform(int(s["index"]), s.get("name", f"slice {s['index']}"),
                                         as_affine(s["prealign"]), as_affine(s["affine"]), s.get("status", "ok"),
                                         s.get("metrics", {}), _optional_float(s, "z_nm"),
                                         _optional_float(s, "z_nm_sd")))
        except (KeyError, ValueError) as exc:
            raise ValueError(f"{path}: slice entry {s.get('index')} is invalid ({exc})") from exc
    vs = VoxelSize.from_dict(doc["voxel_size"]) if doc.get("voxel_size") else None
    known = ("format", "version", "convention", "canvas", "voxel_size", "slices", "input")
    extra = {k: v for k, v in doc.items() if k not in known}
    shape = (doc.get("input") or {}).get("shape_yx")
    return Transforms(tuple(doc["canvas"]["shape_yx"]), slices, vs, extra,
                      tuple(int(v) for v in shape) if shape else None)


def _optional_float(entry: dict[str, Any], key: str) -> float | None:
    value = entry.get(key)
    if value is None:
        return None
    value = float(value)
    if not np.isfinite(value):
        raise ValueError(f"{key} is {value}, not a finite number")
    return value


def jsonable(obj: Any) -> Any:
    """Plain JSON types; NaN/inf become null (JSON has no NaN)."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return jsonable(obj.tolist())
    if isinstance(obj, (np.floating, float)):
        return None if not np.isfinite(obj) else float(obj)
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    return obj
