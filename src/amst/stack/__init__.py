"""Lazy image stacks: open any supported input, create the output writer.

Readers: folder of TIFFs (ImageJ/OME, Zeiss SmartSEM/Atlas and Thermo Fisher/FEI metadata),
multi-page TIFF, Janelia FIB-SEM ``.dat`` frames (a file or a folder), MRC, N5, OME-Zarr,
Zarr array, HDF5 dataset.
Writers: OME-Zarr (NGFF 0.4 or 0.5, optional pyramid), TIFF folder, one ImageJ hyperstack
TIFF, MRC.
"""

from __future__ import annotations

import logging
import fnmatch
from pathlib import Path
from typing import Any

from .base import Stack, StackError, VoxelSize, natural_sort_key
from .hdf5 import HDF5_SUFFIXES, Hdf5Stack
from .janelia_dat import DAT_SUFFIX, JaneliaDatStack
from .mrc import MRC_SUFFIXES, MrcStack, MrcWriter
from .n5 import N5_SUFFIX, N5Stack, is_n5
from .tiff import MultiPageTiffStack, TiffFolderStack, TiffFolderWriter, list_tiff_folder
from .tiff_stack import ImageJStackWriter, check_tiff_stack_fits
from .zarr_store import NGFF_VERSIONS, OmeZarrStack, OmeZarrWriter, ZarrArrayStack, _multiscales, is_zarr

log = logging.getLogger(__name__)

# Output formats -> the name of the output stack inside a run folder.
OUTPUT_FORMATS = {"zarr": "aligned.zarr", "tiff": "aligned", "tiff-stack": "aligned.tif", "mrc": "aligned.mrc"}
# A command-line voxel size further than this from the file's is warned about.
VOXEL_SIZE_TOLERANCE = 0.01

__all__ = [
    "Stack", "StackError", "VoxelSize", "open_stack", "create_writer", "natural_sort_key",
    "TiffFolderStack", "MultiPageTiffStack", "OmeZarrStack", "ZarrArrayStack", "Hdf5Stack",
    "TiffFolderWriter", "OmeZarrWriter", "JaneliaDatStack", "MrcStack", "MrcWriter", "N5Stack",
    "ImageJStackWriter", "OUTPUT_FORMATS", "NGFF_VERSIONS", "check_output_fits", "output_is_file",
]


def _split_internal(path: str) -> tuple[str, str | None]:
    """``file.h5:/data`` or ``store.zarr/arr`` style: split a path inside a container."""
    for suffix in (*HDF5_SUFFIXES, N5_SUFFIX):
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
        A folder of TIFFs or of Janelia ``.dat`` frames, a (multi-page) TIFF, a ``.dat``
        frame, an MRC file, an N5 container or dataset, an OME-Zarr or Zarr array folder,
        or an HDF5 file (``file.h5`` or ``file.h5:/dataset``).
    pattern : str, optional
        Glob for TIFF or ``.dat`` folders (default ``*.tif*``, ``*.dat``).
    dataset : str, optional
        HDF5 dataset path, Zarr component or N5 dataset (the scale level, e.g. ``s0``).
    voxel_size : VoxelSize, optional
        Overrides what the metadata says (a difference of more than 1 % is warned about).
    channel : int, optional
        Channel of a multi-channel OME-Zarr, or detector channel of ``.dat`` frames
        (default: the first).
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
        if is_n5(p):
            stack: Stack = N5Stack(p, dataset=dataset)
        elif is_zarr(p):
            import zarr

            node = zarr.open(str(p), mode="r")
            if isinstance(node, zarr.Group) and _multiscales(node) and dataset is None:
                stack = OmeZarrStack(p, channel=channel)
            else:
                stack = ZarrArrayStack(p, component=dataset)
        elif _is_dat_folder(p, pattern):
            _refuse_dataset(p, dataset, "a folder of .dat frames")
            stack = JaneliaDatStack(p, channel=channel, pattern=pattern, allow_pad=allow_pad, skip_bad=skip_bad)
        else:
            _refuse_dataset(p, dataset, "a folder of TIFFs")
            stack = TiffFolderStack(p, pattern=pattern, allow_pad=allow_pad, skip_bad=skip_bad)
    elif p.suffix.lower() in (".tif", ".tiff"):
        _refuse_dataset(p, dataset, "a TIFF file")
        stack = MultiPageTiffStack(p)
    elif p.suffix.lower() in HDF5_SUFFIXES:
        stack = Hdf5Stack(p, dataset=dataset)
    elif p.suffix.lower() == DAT_SUFFIX:
        _refuse_dataset(p, dataset, "a .dat frame")
        stack = JaneliaDatStack(p, channel=channel, skip_bad=skip_bad)
    elif p.suffix.lower() in MRC_SUFFIXES:
        _refuse_dataset(p, dataset, "an MRC file")
        stack = MrcStack(p)
    else:
        raise StackError(
            f"{p}: unknown input format; give a folder of TIFFs or .dat frames, a .tif stack, a .dat frame, an .mrc "
            "file, an .n5 container, an OME-Zarr/.zarr folder or an .h5 file"
        )
    if voxel_size is not None:
        override_voxel_size(stack, voxel_size)
    return stack


def _is_dat_folder(folder: Path, pattern: str | None) -> bool:
    """Read a folder as ``.dat`` frames when ``--pattern`` names them, or when it holds
    ``.dat`` files and no TIFF (a TIFF folder with stray files stays a TIFF folder)."""
    if pattern is not None:
        if pattern.lower().endswith(DAT_SUFFIX):
            return True
        matched = [p for p in folder.iterdir() if p.is_file() and fnmatch.fnmatch(p.name.lower(), pattern.lower())]
        return bool(matched) and all(p.suffix.lower() == DAT_SUFFIX for p in matched)
    has_dat = any(p.suffix.lower() == DAT_SUFFIX and p.is_file() and not p.name.startswith(".")
                  for p in folder.iterdir())
    return has_dat and not list_tiff_folder(folder)


def override_voxel_size(stack: Stack, voxel_size: VoxelSize) -> None:
    """Use the command line's voxel size, warning when it disagrees with the file's by > 1 %.

    Only the axes the file itself gives are compared (``stack.voxel_axes_from_file``: a
    ``.dat`` header or a TIFF without z spacing says nothing about the slice thickness).

    Parameters
    ----------
    stack : the opened stack (changed in place)
    voxel_size : what the user gave
    """
    found = stack.voxel_size
    if found is not None:
        axes = getattr(stack, "voxel_axes_from_file", "zyx")
        off = [a for a in axes if abs(getattr(voxel_size, a) - getattr(found, a)) > VOXEL_SIZE_TOLERANCE * getattr(found, a)]
        if off:
            log.warning("%s: --voxel-size %s differs from the file's %s (%s) by more than %g %% on %s; the command "
                        "line's is used", stack.path, voxel_size, found, stack.voxel_size_source,
                        100 * VOXEL_SIZE_TOLERANCE, ", ".join(off))
    stack.voxel_size = voxel_size
    stack.voxel_size_source = "command line" if found is None else f"command line (file: {found}, {stack.voxel_size_source})"


def _refuse_dataset(path: Path, dataset: str | None, kind: str) -> None:
    """A dataset key asked of an input that has none is a mistake, not something to ignore."""
    if dataset is not None:
        raise StackError(f"{path}: is {kind}, which holds no datasets; --dataset {dataset!r} applies to "
                         "HDF5 and Zarr inputs only: leave it out")


def output_is_file(fmt: str) -> bool:
    """True for output formats that are one file (``tiff-stack``, ``mrc``), not a folder."""
    return fmt in ("tiff-stack", "mrc")


def check_output_fits(fmt: str, shape: tuple[int, int, int], dtype: Any) -> None:
    """Refuse, before a run starts, an output format that cannot hold a stack of ``shape``.

    Raises
    ------
    ValueError
        ``tiff-stack`` for stacks of more than 4 GiB of pixels (see
        :func:`amst.stack.tiff_stack.check_tiff_stack_fits`).
    """
    if fmt == "tiff-stack":
        check_tiff_stack_fits(shape, dtype)


def create_writer(path: str | Path, fmt: str, shape: tuple[int, int, int], dtype: Any,
                  voxel_size: VoxelSize | None = None, *, names: list[str] | None = None,
                  pyramid_levels: int = 1, mode: str = "w", ngff_version: str = "0.4",
                  provenance: dict[str, Any] | None = None) -> Any:
    """Create an output stack writer.

    Parameters
    ----------
    path : the output stack (folder, ``.zarr`` or file)
    fmt : ``"zarr"``, ``"tiff"`` (one TIFF per slice), ``"tiff-stack"`` (one ImageJ
        hyperstack TIFF) or ``"mrc"``
    shape, dtype : output geometry
    voxel_size : written to the format's metadata (nm; Angstrom in MRC)
    names : slice file names (``tiff`` only)
    pyramid_levels : OME-Zarr levels (``zarr`` only)
    mode : ``"w"`` create, ``"a"`` reopen
    ngff_version : ``"0.4"`` or ``"0.5"`` (``zarr`` only)
    provenance : what the output records about its input (:meth:`Stack.provenance`)

    Returns
    -------
    a writer with ``write(z, image)``, ``close()``, ``path``, ``shape``, ``dtype``
    """
    if fmt == "zarr":
        return OmeZarrWriter(path, shape, dtype, voxel_size, pyramid_levels=pyramid_levels, mode=mode,
                             ngff_version=ngff_version, provenance=provenance)
    if fmt == "tiff":
        return TiffFolderWriter(path, shape, dtype, voxel_size, names=names)
    if fmt == "tiff-stack":
        return ImageJStackWriter(path, shape, dtype, voxel_size, mode=mode, info=_info_text(provenance))
    if fmt == "mrc":
        return MrcWriter(path, shape, dtype, voxel_size, mode=mode, label=_info_text(provenance))
    raise ValueError(f"unknown output format {fmt!r}; use one of {', '.join(OUTPUT_FORMATS)}")


def _info_text(provenance: dict[str, Any] | None) -> str | None:
    if not provenance:
        return None
    return "amst: " + ", ".join(f"{k}={v}" for k, v in provenance.items())

