"""OME-Zarr (NGFF 0.4 / 0.5) and plain Zarr array stacks, and the OME-Zarr writer."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import zarr

from .base import Stack, StackError, VoxelSize, check_dtype, unit_to_nm

_SPATIAL = ("z", "y", "x")
log = logging.getLogger(__name__)


def is_zarr(path: Path) -> bool:
    """True when ``path`` is a Zarr v2 or v3 group or array."""
    return path.is_dir() and any((path / m).exists() for m in (".zgroup", ".zarray", "zarr.json"))


def _multiscales(group: zarr.Group) -> list[dict[str, Any]] | None:
    attrs = dict(group.attrs)
    if "ome" in attrs:  # NGFF 0.5 nests the metadata under "ome"
        attrs = attrs["ome"]
    return attrs.get("multiscales")


def array_keys(group: zarr.Group) -> list[str]:
    """Paths of every array in ``group``, nested ones as ``a/b`` (for messages)."""
    return sorted(name for name, node in group.members(max_depth=None) if isinstance(node, zarr.Array))


def open_component(path: Path, node: zarr.Group | zarr.Array, component: str) -> zarr.Group | zarr.Array:
    """``node[component]``, or a :class:`StackError` naming ``path``, the key and the arrays there are.

    Parameters
    ----------
    path : pathlib.Path
        The Zarr store (for the message).
    node : zarr.Group or zarr.Array
        Where to look.
    component : str
        The array or group path asked for (``--dataset``).

    Returns
    -------
    zarr.Group or zarr.Array
    """
    if isinstance(node, zarr.Array):
        raise StackError(f"{path}: is a single Zarr array of shape {node.shape}, with no array {component!r} "
                         "inside; open it without --dataset")
    try:
        return node[component]
    except KeyError:
        keys = array_keys(node)
        raise StackError(f"{path}: no array {component!r}; it holds {keys if keys else 'no arrays'}; "
                         "name one with --dataset") from None


class ZarrArrayStack(Stack):
    """A plain 3-D Zarr array (no OME metadata); voxel size must come from the user."""

    kind = "zarr"

    def __init__(self, path: str | Path, component: str | None = None):
        self.path = Path(path)
        self.component = component
        arr = self._array()
        if arr.ndim != 3:
            raise StackError(f"{self.path}: expected a 3-D (z, y, x) array, found shape {arr.shape}")
        self.shape = tuple(int(s) for s in arr.shape)  # type: ignore[assignment]
        self.dtype = check_dtype(arr.dtype, str(self.path))
        self.voxel_size = None

    def _array(self) -> zarr.Array:
        if getattr(self, "_handle", None) is None:
            node = zarr.open(str(self.path), mode="r")
            if self.component:
                node = open_component(self.path, node, self.component)
            if isinstance(node, zarr.Group):
                arrays = list(node.array_keys())
                if len(arrays) != 1:
                    where = f"{self.path}/{self.component}" if self.component else str(self.path)
                    raise StackError(
                        f"{where}: a Zarr group with arrays {arrays}; name one with --dataset "
                        f"(the store holds {array_keys(zarr.open_group(str(self.path), mode='r'))})"
                    )
                node = node[arrays[0]]
            self._handle = node
        return self._handle

    def _read(self, z: int) -> np.ndarray:
        return np.asarray(self._array()[z])


class OmeZarrStack(Stack):
    """The full-resolution level of an OME-Zarr image (what ``ome-zarr`` writes).

    Leading non-spatial axes (t, c) must have length 1, or ``channel`` picks one channel.
    """

    kind = "ome-zarr"

    def __init__(self, path: str | Path, channel: int | None = None):
        self.path = Path(path)
        group = zarr.open_group(str(self.path), mode="r")
        ms = _multiscales(group)
        if not ms:
            raise StackError(f"{self.path}: a Zarr group without OME 'multiscales' metadata")
        meta = ms[0]
        axes = [a["name"] if isinstance(a, dict) else a for a in meta.get("axes", ["z", "y", "x"])]
        units = {a["name"]: a.get("unit") for a in meta.get("axes", []) if isinstance(a, dict)}
        datasets = meta.get("datasets") or []
        if not datasets or "path" not in datasets[0]:
            raise StackError(f"{self.path}: OME 'multiscales' metadata names no dataset path; the store holds "
                             f"arrays {array_keys(group)}; open one with --dataset")
        dataset = datasets[0]
        self.component = str(dataset["path"])
        arr = open_component(self.path, group, self.component)
        if not isinstance(arr, zarr.Array):
            raise StackError(f"{self.path}: OME metadata names {self.component!r}, which is a group, not an array; "
                             f"the store holds arrays {array_keys(group)}")
        if tuple(axes[-3:]) != _SPATIAL:
            raise StackError(f"{self.path}: axes {axes} do not end in z, y, x; 2-D or re-ordered images are not stacks")
        self.leading: list[int] = []
        for name, size in zip(axes[:-3], arr.shape[:-3]):
            if size == 1:
                self.leading.append(0)
            elif name == "c" and channel is not None:
                if not 0 <= channel < size:
                    raise StackError(f"{self.path}: channel {channel} does not exist (0..{size - 1})")
                self.leading.append(channel)
            else:
                raise StackError(f"{self.path}: axis {name!r} has {size} entries; choose one with --channel")
        self.shape = tuple(int(s) for s in arr.shape[-3:])  # type: ignore[assignment]
        self.dtype = check_dtype(arr.dtype, str(self.path))
        scale = None
        for t in dataset.get("coordinateTransformations", []):
            if t.get("type") == "scale":
                scale = t["scale"][-3:]
        self.voxel_size = None
        if scale is not None:
            factors = [unit_to_nm(units[a]) if units.get(a) else None for a in _SPATIAL]
            if all(f is not None for f in factors):
                self.voxel_size = VoxelSize(*(s * f for s, f in zip(scale, factors)))  # type: ignore[operator]
                self.voxel_size_source = "OME-Zarr multiscales coordinateTransformations scale"
            else:
                log.warning("%s: scale %s has no units; voxel size unknown, pass --voxel-size", self.path, scale)

    def _array(self) -> zarr.Array:
        if getattr(self, "_handle", None) is None:
            self._handle = zarr.open_group(str(self.path), mode="r")[self.component]
        return self._handle

    def _read(self, z: int) -> np.ndarray:
        return np.asarray(self._array()[(*self.leading, z)])


def downsample_2x(image: np.ndarray) -> np.ndarray:
    """Halve y and x by 2x2 area averaging (z untouched: chunks stay one slice)."""
    h, w = image.shape
    out = cv2.resize(image, (max(1, w // 2), max(1, h // 2)), interpolation=cv2.INTER_AREA)
    return out.astype(image.dtype, copy=False)


# Every chunk is stored, all-zero ones too: a resumed run then knows that a missing chunk
# is lost data (zarr's default deletes a chunk written as all fill value).
_KEEP_EMPTY_CHUNKS = {"write_empty_chunks": True}


NGFF_VERSIONS = ("0.4", "0.5")


class OmeZarrWriter:
    """Writes an OME-Zarr image slice by slice: NGFF 0.4 (Zarr v2) or 0.5 (Zarr v3).

    Chunks are one slice in z, so slices are written independently and in parallel.
    Metadata (axes, voxel size in ``coordinateTransformations``) is written by the
    ``ome-zarr`` library at creation time; pyramid levels halve y and x.

    Parameters
    ----------
    path : path
        The ``.zarr`` folder to create (or reopen with ``mode='a'``).
    shape, dtype : output geometry.
    voxel_size : VoxelSize or None
    pyramid_levels : int
        Number of levels including full resolution (1 = no pyramid).
    chunk_yx : int
        Chunk edge in y and x.
    ngff_version : str
        ``"0.4"`` (default; what most viewers read) or ``"0.5"`` (Zarr v3; chunk keys keep the
        ``level/z/y/x`` layout of 0.4, the v3 ``v2`` chunk-key encoding).
    provenance : dict, optional
        Stored as the ``amst`` attribute of the image group (input format, voxel-size source,
        the chosen channel).
    """

    kind = "zarr"

    def __init__(self, path: str | Path, shape: tuple[int, int, int], dtype: Any,
                 voxel_size: VoxelSize | None = None, *, pyramid_levels: int = 1,
                 chunk_yx: int = 1024, mode: str = "w", ngff_version: str = "0.4",
                 provenance: dict[str, Any] | None = None):
        from ome_zarr.format import FormatV04, FormatV05
        from ome_zarr.writer import write_multiscales_metadata

        if ngff_version not in NGFF_VERSIONS:
            raise ValueError(f"output.ngff_version: {ngff_version!r} is not allowed; use one of {', '.join(NGFF_VERSIONS)}")

        self.path = Path(path)
        self.shape = tuple(int(s) for s in shape)
        self.dtype = np.dtype(dtype)
        vs = voxel_size or VoxelSize(1.0, 1.0, 1.0)
        self.voxel_size = voxel_size
        levels = max(1, int(pyramid_levels))
        level_shapes, datasets = [], []
        h, w = self.shape[1:]
        for level in range(levels):
            level_shapes.append((self.shape[0], h, w))
            f = 2 ** level
            datasets.append({
                "path": str(level),
                "coordinateTransformations": [{"type": "scale", "scale": [vs.z, vs.y * f, vs.x * f]}],
            })
            h, w = max(1, h // 2), max(1, w // 2)
        if mode == "a" and is_zarr(self.path):
            # A resumed run: the arrays must be the ones this run writes; the group's metadata,
            # which nothing checks slice by slice, is written again.
            group = zarr.open_group(str(self.path), mode="r+")
            self.arrays = [group[str(i)].with_config(_KEEP_EMPTY_CHUNKS) for i in range(levels)]
            for arr, shape in zip(self.arrays, level_shapes):
                if tuple(arr.shape) != shape or arr.dtype != self.dtype:
                    raise ValueError(f"{self.path}: array {arr.path} is {arr.shape} {arr.dtype}, expected {shape} "
                                     f"{self.dtype}")
        else:
            group = zarr.open_group(str(self.path), mode="w", zarr_format=2 if ngff_version == "0.4" else 3)
            self.arrays = [group.create_array(
                str(level), shape=shape, dtype=self.dtype,
                chunks=(1, min(shape[1], chunk_yx), min(shape[2], chunk_yx)), fill_value=0,
                config=_KEEP_EMPTY_CHUNKS, chunk_key_encoding={"name": "v2", "separator": "/"},
            ) for level, shape in enumerate(level_shapes)]
        axes = [{"name": a, "type": "space", "unit": "nanometer"} for a in _SPATIAL]
        if voxel_size is None:
            axes = [{"name": a, "type": "space"} for a in _SPATIAL]
        fmt = FormatV04() if ngff_version == "0.4" else FormatV05()
        write_multiscales_metadata(group, datasets, fmt=fmt, axes=axes, name=self.path.stem)
        if provenance:
            group.attrs["amst"] = provenance

    def write(self, z: int, image: np.ndarray) -> None:
        """Write slice ``z`` at every pyramid level."""
        image = np.asarray(image)
        if image.shape != self.shape[1:] or image.dtype != self.dtype:
            raise ValueError(f"slice {z}: got {image.shape} {image.dtype}, expected {self.shape[1:]} {self.dtype}")
        level_img = image
        for i, arr in enumerate(self.arrays):
            if i:
                level_img = downsample_2x(level_img)[: arr.shape[1], : arr.shape[2]]
            arr[z] = level_img

    def close(self) -> None:
        """Nothing buffered: each chunk is written when its slice is."""

