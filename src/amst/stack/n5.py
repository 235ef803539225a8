"""N5 datasets (what OpenOrganelle and the Saalfeld-lab tools publish), read with tensorstore.

An N5 container is a folder tree; each dataset folder has an ``attributes.json`` with
``dimensions`` and ``blockSize`` listed fastest axis first, i.e. ``[x, y, z]``, which is
the order tensorstore presents them in. Scale levels are sibling datasets (``s0``, ``s1``,
...); the user names one with ``--dataset``. The voxel size is read from the dataset's
attributes: ``pixelResolution`` (``{"dimensions": [x, y, z], "unit": "nm"}``, N5 Viewer and
OpenOrganelle), else ``transform`` (``{"axes", "scale", "units"}``, OpenOrganelle), else
``resolution`` (``[x, y, z]`` in nm, BigDataViewer).

tensorstore is an optional dependency: ``pip install "amst[n5]"``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from .base import Stack, StackError, VoxelSize, check_dtype, unit_to_nm

log = logging.getLogger(__name__)

N5_SUFFIX = ".n5"
_ATTRS = "attributes.json"
_TO_FLOAT = (np.dtype(np.int8), np.dtype(np.int16))


def is_n5(path: Path) -> bool:
    """True when ``path`` is an N5 container, group or dataset folder."""
    if not path.is_dir():
        return False
    if path.suffix.lower() == N5_SUFFIX:
        return True
    attrs = _attributes(path)
    return "n5" in attrs or "dimensions" in attrs


def _attributes(path: Path) -> dict[str, Any]:
    f = path / _ATTRS
    if not f.is_file():
        return {}
    try:
        doc = json.loads(f.read_text())
    except (OSError, ValueError) as exc:
        raise StackError(f"{f}: not valid JSON ({exc}); the N5 metadata is damaged") from exc
    return doc if isinstance(doc, dict) else {}


def n5_datasets(root: Path) -> list[str]:
    """Paths (relative to ``root``) of every N5 dataset below it, for messages."""
    found = []
    for f in sorted(root.rglob(_ATTRS)):
        if "dimensions" in _attributes(f.parent):
            found.append(f.parent.relative_to(root).as_posix() or ".")
    return found


def _tensorstore() -> Any:
    try:
        import tensorstore
    except ImportError as exc:
        raise StackError('reading N5 needs tensorstore, which is not installed: pip install "amst[n5]"') from exc
    return tensorstore


def n5_voxel_size(attrs: dict[str, Any], where: str) -> tuple[VoxelSize | None, str | None]:
    """Voxel size (nm) and its source from an N5 dataset's attributes; (None, None) if absent.

    Parameters
    ----------
    attrs : the dataset's ``attributes.json``
    where : the dataset, for warnings

    Returns
    -------
    (VoxelSize or None, str or None)
    """
    try:
        pr = attrs.get("pixelResolution")
        if isinstance(pr, dict) and len(pr.get("dimensions", [])) == 3:
            f = unit_to_nm(str(pr.get("unit") or "nm"))
            x, y, z = (float(v) * f for v in pr["dimensions"])
            return VoxelSize.from_values(z, y, x), "N5 attributes pixelResolution"
        tr = attrs.get("transform")
        if isinstance(tr, dict) and len(tr.get("scale", [])) == 3:
            axes = [str(a) for a in tr.get("axes", ["z", "y", "x"])]
            units = tr.get("units") or ["nm"] * 3
            values = {a: float(s) * unit_to_nm(str(u)) for a, s, u in zip(axes, tr["scale"], units)}
            if set(values) == {"x", "y", "z"}:
                return VoxelSize.from_values(values["z"], values["y"], values["x"]), "N5 attributes transform"
        res = attrs.get("resolution")
        if isinstance(res, list) and len(res) == 3:
            x, y, z = (float(v) for v in res)
            return VoxelSize.from_values(z, y, x), "N5 attributes resolution (nm)"
    except (StackError, TypeError, ValueError) as exc:
        log.warning("%s: N5 voxel-size attributes cannot be read (%s); voxel size unknown", where, exc)
    return None, None


class N5Stack(Stack):
    """One 3-D dataset (one scale level) of an N5 container.

    Parameters
    ----------
    path : path
        The container (then ``dataset`` names the level, e.g. ``em/fibsem-uint16/s0``) or
        the dataset folder itself.
    dataset : str, optional
        Dataset path inside ``path``.
    """

    kind = "n5"

    def __init__(self, path: str | Path, dataset: str | None = None):
        self.container = Path(path)
        self.dataset = (dataset or "").strip("/")
        self.path = self.container / self.dataset if self.dataset else self.container
        where = f"{self.container}:{self.dataset}" if self.dataset else str(self.container)
        attrs = _attributes(self.path) if self.path.is_dir() else {}
        if "dimensions" not in attrs:
            found = n5_datasets(self.container)
            what = f"no N5 dataset {self.dataset!r}" if self.dataset else "an N5 container or group, not a dataset"
            hint = (f"it holds {', '.join(found[:12])}{' ...' if len(found) > 12 else ''}" if found
                    else "it holds no datasets")
            raise StackError(f"{where}: {what}; {hint}; name the scale level with --dataset (e.g. s0 for full "
                             "resolution)")
        if len(attrs["dimensions"]) != 3:
            raise StackError(f"{where}: expected a 3-D dataset, found dimensions {attrs['dimensions']} (x, y, z order)")
        arr = self._array()
        x, y, z = (int(s) for s in arr.shape)
        self.shape = (z, y, x)  # type: ignore[assignment]
        stored = np.dtype(arr.dtype.numpy_dtype)
        self.dtype = np.dtype(np.float32) if stored in _TO_FLOAT else check_dtype(stored, where)
        self.voxel_size, self.voxel_size_source = n5_voxel_size(attrs, where)

    def _array(self) -> Any:
        if getattr(self, "_handle", None) is None:
            ts = _tensorstore()
            spec = {"driver": "n5", "kvstore": {"driver": "file", "path": str(self.path.resolve())}}
            try:
                self._handle = ts.open(spec, read=True, write=False).result()
            except ValueError as exc:
                raise StackError(f"{self.path}: cannot open as an N5 dataset ({exc})") from exc
        return self._handle

    def _read(self, z: int) -> np.ndarray:
        plane = self._array()[:, :, z].read().result()
        return np.ascontiguousarray(np.asarray(plane).T).astype(self.dtype, copy=False)

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        d["dataset"] = self.dataset or "."
        return d
