"""``transforms.json``: the per-slice maps of a run (a contract, see DESIGN.md and the README).

Version 1 holds each slice's affine. Version 2 (written only when some slice has one) adds
a smooth displacement field per slice (:mod:`amst.field`): the fields live in a sidecar
array ``<name>.fields.npy`` beside the JSON, shape ``(k, gh, gw, 2)`` float32 (dx, dy in
raw pixels at the grid nodes), referenced by the top-level ``fields`` entry
(``file``, ``sha256``, ``grid``, ``interpolation``, ``units``); a slice with a field names
its row with ``"field": k``. So the JSON stays small for 20 000 slices, and the sidecar's
checksum ties it to the JSON that uses it. Both versions load.
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .field import INTERPOLATION, FieldGrid
from .stack import VoxelSize
from .transform import as_affine, to_list

FORMAT = "amst-transforms"
VERSION = 1          # a file without fields
FIELDS_VERSION = 2   # a file with a displacement-field sidecar
VERSIONS = (VERSION, FIELDS_VERSION)
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
    field: np.ndarray | None = None  # (gh, gw, 2) displacement in raw px at the nodes of Transforms.field_grid

    def to_json(self, field_row: int | None = None) -> dict[str, Any]:
        if self.status not in STATUSES:
            raise ValueError(f"slice {self.index}: status {self.status!r} is not one of {STATUSES}")
        doc = {"index": self.index, "name": self.name, "prealign": to_list(self.prealign),
               "affine": to_list(self.affine), "status": self.status, "metrics": jsonable(self.metrics)}
        if self.z_nm is not None:
            if not np.isfinite(self.z_nm):
                raise ValueError(f"slice {self.index}: z_nm {self.z_nm} is not a finite depth")
            doc["z_nm"] = float(self.z_nm)
            doc["z_nm_sd"] = None if self.z_nm_sd is None else jsonable(float(self.z_nm_sd))
        if field_row is not None:
            doc["field"] = int(field_row)
        return doc


@dataclass
class Transforms:
    """All slices of a run plus the output canvas and voxel size."""

    canvas_shape_yx: tuple[int, int]
    slices: list[SliceTransform]
    voxel_size: VoxelSize | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    input_shape_yx: tuple[int, int] | None = None  # slice shape of the stack the transforms were measured on
    field_grid: FieldGrid | None = None  # where the nodes of every slice's field lie (version 2)

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

    def maps(self):
        """The slices' output -> raw maps (:class:`amst.warp.SliceMaps`), fields included."""
        from .warp import SliceMaps

        return SliceMaps(self.affines, {z: s.field for z, s in enumerate(self.slices) if s.field is not None},
                         self.field_grid)

    @property
    def has_fields(self) -> bool:
        return any(s.field is not None for s in self.slices)

    def field_array(self) -> tuple[np.ndarray, list[int | None]]:
        """The sidecar array (k, gh, gw, 2) float32 and each slice's row in it (None: no field)."""
        rows: list[int | None] = []
        values = []
        for s in self.slices:
            if s.field is None:
                rows.append(None)
                continue
            if self.field_grid is None:
                raise ValueError(f"slice {s.index} has a field but the transforms have no field grid")
            field = np.asarray(s.field, np.float32)
            if field.shape != (*self.field_grid.shape_yx, 2) or not np.all(np.isfinite(field)):
                raise ValueError(f"slice {s.index}: field of shape {field.shape} does not fit the grid "
                                 f"{self.field_grid.shape_yx} or is not finite")
            rows.append(len(values))
            values.append(field)
        shape = (0, *self.field_grid.shape_yx, 2) if self.field_grid else (0, 2, 2, 2)
        return (np.stack(values) if values else np.zeros(shape, np.float32)), rows

    def to_json(self, fields_ref: dict[str, Any] | None = None) -> dict[str, Any]:
        """The JSON document; ``fields_ref`` (the sidecar's entry) makes it version 2."""
        rows: list[int | None] = [None] * len(self.slices)
        if fields_ref is not None:
            rows = self.field_array()[1]
        doc = {"format": FORMAT, "version": FIELDS_VERSION if fields_ref else VERSION,
               "convention": "output_xy_to_input_xy",
               "canvas": {"shape_yx": [int(v) for v in self.canvas_shape_yx]},
               "voxel_size": self.voxel_size.to_dict() if self.voxel_size else None,
               "slices": [s.to_json(r) for s, r in zip(self.slices, rows)]}
        if self.input_shape_yx is not None:
            doc["input"] = {"shape_yx": [int(v) for v in self.input_shape_yx]}
        if fields_ref is not None:
            doc["fields"] = fields_ref
        doc.update(jsonable(self.extra))
        return doc

    def save(self, path: str | Path) -> None:
        """Write atomically (temporary file, fsync, then rename); the field sidecar first, so
        a JSON on disk never names a sidecar that is not complete."""
        from .outdir import atomic_write_bytes, atomic_write_text

        path = Path(path)
        ref = None
        if self.has_fields:
            values, _ = self.field_array()
            buffer = io.BytesIO()
            np.save(buffer, values, allow_pickle=False)
            data = buffer.getvalue()
            sidecar = fields_path(path)
            atomic_write_bytes(sidecar, data)
            ref = {"file": sidecar.name, "sha256": hashlib.sha256(data).hexdigest(),
                   "grid": self.field_grid.to_json(), "interpolation": INTERPOLATION, "units": "raw_px",
                   "map": "raw_xy = affine @ (x, y, 1) + field(x, y)"}
        atomic_write_text(path, json.dumps(self.to_json(ref), indent=1))


def fields_path(transforms_path: str | Path) -> Path:
    """The field sidecar written beside ``transforms_path`` (``transforms.fields.npy``)."""
    p = Path(transforms_path)
    return p.with_name(p.stem + ".fields.npy")


def load_transforms(path: str | Path) -> Transforms:
    """Read and validate ``transforms.json``."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: cannot read transforms ({exc})") from exc
    if doc.get("format") != FORMAT or doc.get("convention") != "output_xy_to_input_xy":
        raise ValueError(f"{path}: not an amst transforms file (format={doc.get('format')!r})")
    version = doc.get("version", VERSION)
    if version not in VERSIONS:
        raise ValueError(f"{path}: transforms version {version!r} is newer than this amst reads "
                         f"({', '.join(map(str, VERSIONS))}); update amst")
    grid, fields = (_load_fields(path, doc["fields"]) if doc.get("fields") else (None, None))
    slices = []
    for s in doc["slices"]:
        try:
            slices.append(SliceTransform(int(s["index"]), s.get("name", f"slice {s['index']}"),
                                         as_affine(s["prealign"]), as_affine(s["affine"]), s.get("status", "ok"),
                                         s.get("metrics", {}), _optional_float(s, "z_nm"),
                                         _optional_float(s, "z_nm_sd"), _slice_field(s, fields)))
        except (KeyError, ValueError, IndexError) as exc:
            raise ValueError(f"{path}: slice entry {s.get('index')} is invalid ({exc})") from exc
    vs = VoxelSize.from_dict(doc["voxel_size"]) if doc.get("voxel_size") else None
    known = ("format", "version", "convention", "canvas", "voxel_size", "slices", "input", "fields")
    extra = {k: v for k, v in doc.items() if k not in known}
    shape = (doc.get("input") or {}).get("shape_yx")
    return Transforms(tuple(doc["canvas"]["shape_yx"]), slices, vs, extra,
                      tuple(int(v) for v in shape) if shape else None, grid)


def _load_fields(path: Path, ref: dict[str, Any]) -> tuple[FieldGrid, np.ndarray]:
    """The grid and sidecar array a version-2 file names, checked against its checksum."""
    try:
        sidecar = path.with_name(Path(ref["file"]).name)
        grid = FieldGrid.from_json(ref["grid"])
        interpolation = ref.get("interpolation")
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"{path}: its 'fields' entry is invalid ({exc})") from exc
    if interpolation != INTERPOLATION:
        raise ValueError(f"{path}: field interpolation {interpolation!r} is not one this amst applies "
                         f"({INTERPOLATION})")
    try:
        data = sidecar.read_bytes()
    except OSError as exc:
        raise ValueError(f"{path}: its displacement fields {sidecar} cannot be read ({exc}); keep the sidecar "
                         "file beside transforms.json when copying a run") from exc
    if hashlib.sha256(data).hexdigest() != ref.get("sha256"):
        raise ValueError(f"{path}: {sidecar.name} does not match the checksum transforms.json records: it "
                         "belongs to another run or was changed; copy the pair from the same run")
    values = np.load(io.BytesIO(data), allow_pickle=False)
    if values.ndim != 4 or values.shape[1:] != (*grid.shape_yx, 2):
        raise ValueError(f"{path}: {sidecar.name} holds an array of shape {values.shape}, not "
                         f"(k, {grid.shape_yx[0]}, {grid.shape_yx[1]}, 2)")
    return grid, values


def _slice_field(entry: dict[str, Any], fields: np.ndarray | None) -> np.ndarray | None:
    row = entry.get("field")
    if row is None:
        return None
    if fields is None:
        raise ValueError("it names a field row but the file has no 'fields' entry")
    if not 0 <= int(row) < len(fields):
        raise ValueError(f"field row {row} is outside the sidecar's {len(fields)} rows")
    return np.asarray(fields[int(row)], np.float64)


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
