"""Lazy image stacks: open any supported input, create TIFF-folder or OME-Zarr output.

Readers: folder of TIFFs, multi-page TIFF, OME-Zarr, Zarr array, HDF5 dataset.
Writers: TIFF folder (ImageJ metadata) and OME-Zarr (optional pyramid).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .base import Stack, StackError, VoxelSize, natural_sort_key
from .hdf5 import HDF5_SUFFIXES, Hdf5Stack
from .tiff import MultiPageTiffStack, TiffFolderStack, TiffFolderWriter
from .zarr_store import OmeZarrStack, OmeZarrWriter, ZarrArrayStack, _multiscales, is_zarr

__all__ = [
    "Stack", "StackError", "VoxelSize", "open_stack", "create_writer", "natural_sort_key",
    "TiffFolderStack", "MultiPageTiffStack", "OmeZarrStack", "ZarrArrayStack", "Hdf5Stack",
    "TiffFolderWriter", "OmeZarrWriter",
]


def _split_internal(path: str) -> tuple[str, str | None]:
    """``file.h5:/data`` or ``store.zarr/arr`` style: split a path inside a container."""
    for suffix in (*HDF5_SUFFIXES,):
        marker = suffix + ":"
        idx = path.lower().find(marker)
        if idx >= 0:
            return path[: idx + len(suffix)], path[idx + len(marker):] or None
    return path, None


def open_stack(path: str | Path, *, pattern: str | None = None, dataset: str | None = None,
               voxel_size: VoxelSize | None = None, channel: int | None = None,
               allow_pad: bool = False, skip_bad: bool = False) -> Stack:
    """Open a stack lazily, detecting its format.

    Parameters
    ----------
    path : str or path
        A folder of TIFFs, a (multi-page) TIFF, an OME-Zarr or Zarr array folder, or an
        HDF5 file (``file.h5`` or ``file.h5:/dataset``).
    pattern : str, optional
        Glob for TIFF folders (default ``*.tif*``).
    dataset : str, optional
        HDF5 dataset path or Zarr component.
    voxel_size : VoxelSize, optional
        Overrides what the metadata says.
    channel : int, optional
        Channel of a multi-channel OME-Zarr.
    allow_pad : bool
        TIFF folders: pad slices of differing shape to a common canvas.
    skip_bad : bool
        TIFF folders: read unreadable slices as blank instead of stopping.

    Returns
    -------
    Stack
    """
    raw, internal = _split_internal(str(path))
    p = Path(raw)
    if not p.exists():
        raise StackError(f"{p}: no such file or folder")
    dataset = dataset or internal
    if p.is_dir():
        if is_zarr(p):
            import zarr

            node = zarr.open(str(p), mode="r")
            if isinstance(node, zarr.Group) and _multiscales(node) and dataset is None:
                stack: Stack = OmeZarrStack(p, channel=channel)
            else:
                stack = ZarrArrayStack(p, component=dataset)
        else:
            _refuse_dataset(p, dataset, "a folder of TIFFs")
            stack = TiffFolderStack(p, pattern=pattern, allow_pad=allow_pad, skip_bad=skip_bad)
    elif p.suffix.lower() in (".tif", ".tiff"):
        _refuse_dataset(p, dataset, "a TIFF file")
        stack = MultiPageTiffStack(p)
    elif p.suffix.lower() in HDF5_SUFFIXES:
        stack = Hdf5Stack(p, dataset=dataset)
    else:
        raise StackError(
            f"{p}: unknown input format; give a folder of TIFFs, a .tif stack, an OME-Zarr/.zarr folder or an .h5 file"
        )
    if voxel_size is not None:
        stack.voxel_size = voxel_size
    return stack


def _refuse_dataset(path: Path, dataset: str | None, kind: str) -> None:
    """A dataset key asked of an input that has none is a mistake, not something to ignore."""
    if dataset is not None:
        raise StackError(f"{path}: is {kind}, which holds no datasets; --dataset {dataset!r} applies to "
                         "HDF5 and Zarr inputs only: leave it out")


def create_writer(path: str | Path, fmt: str, shape: tuple[int, int, int], dtype: Any,
                  voxel_size: VoxelSize | None = None, names: list[str] | None = None,
                  pyramid_levels: int = 1, mode: str = "w") -> TiffFolderWriter | OmeZarrWriter:
    """Create an output stack writer (``fmt`` is ``"zarr"`` or ``"tiff"``)."""
    if fmt == "zarr":
        return OmeZarrWriter(path, shape, dtype, voxel_size, pyramid_levels=pyramid_levels, mode=mode)
    if fmt == "tiff":
        return TiffFolderWriter(path, shape, dtype, voxel_size, names=names)
    raise ValueError(f"unknown output format {fmt!r}; use 'zarr' or 'tiff'")

