"""Common ground of every stack reader: voxel size, the lazy ``Stack`` interface, errors."""

from __future__ import annotations

import logging
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

SUPPORTED_DTYPES = (np.dtype(np.uint8), np.dtype(np.uint16), np.dtype(np.float32))

# Length units as they appear in ImageJ, OME-XML and OME-Zarr metadata, in nanometres.
_UNIT_TO_NM = {
    "nm": 1.0, "nanometer": 1.0, "nanometre": 1.0,
    "um": 1e3, "µm": 1e3, "\u03bcm": 1e3, "micron": 1e3, "microns": 1e3,
    "micrometer": 1e3, "micrometre": 1e3,
    "mm": 1e6, "millimeter": 1e6, "millimetre": 1e6,
    "pm": 1e-3, "picometer": 1e-3,
    "a": 0.1, "angstrom": 0.1, "\u00c5": 0.1,
}


class StackError(ValueError):
    """Input data that cannot be read as a stack; the message says which file and what to do."""


@dataclass(frozen=True)
class VoxelSize:
    """Physical size of one voxel, always stored in nanometres.

    Parameters
    ----------
    z, y, x : float
        Slice thickness and pixel size in nanometres.
    """

    z: float
    y: float
    x: float
    unit: str = "nanometer"

    @classmethod
    def from_values(cls, z: float, y: float, x: float, unit: str = "nanometer") -> "VoxelSize":
        """Build a voxel size from values in ``unit``, converting to nanometres."""
        factor = unit_to_nm(unit)
        values = [float(v) * factor for v in (z, y, x)]
        if not all(np.isfinite(v) and v > 0 for v in values):
            raise StackError(f"voxel size must be three positive numbers, got z={z}, y={y}, x={x} {unit}")
        return cls(*values)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "VoxelSize":
        return cls.from_values(d["z"], d["y"], d["x"], d.get("unit", "nanometer"))

    def __str__(self) -> str:
        return f"z={self.z:g} y={self.y:g} x={self.x:g} nm"


def unit_to_nm(unit: str) -> float:
    """Factor that converts a length in ``unit`` to nanometres."""
    key = unit.strip().replace("\\u00B5", "\u00b5").lower() if unit else "nm"
    if key not in _UNIT_TO_NM:
        raise StackError(f"unknown length unit {unit!r}; use one of nm, um, mm")
    return _UNIT_TO_NM[key]


def natural_sort_key(name: str) -> list[Any]:
    """Sort key that orders embedded numbers numerically (``s_2`` before ``s_10``)."""
    return [(0, int(tok), "") if tok.isdigit() else (1, 0, tok.lower()) for tok in re.split(r"(\d+)", name) if tok]


class Stack:
    """A lazily read (z, y, x) image stack: reading slice z reads only slice z.

    Subclasses hold paths and metadata only (no open handles when pickled), so a
    stack object can be sent to Dask workers that read their own slices.

    Attributes
    ----------
    path : pathlib.Path
        Where the data lives.
    shape : tuple of int
        ``(z, y, x)``; for stacks with differing slice shapes, the common canvas.
    dtype : numpy.dtype
    voxel_size : VoxelSize or None
        ``None`` when the metadata did not say and the user did not either.
    names : list of str or None
        Per-slice file names when the input had them (TIFF folders).
    voxel_size_source : str or None
        Where ``voxel_size`` came from (a tag, a header field, ``"command line"``), for
        ``amst info`` and the output's metadata; ``None`` when the voxel size is unknown.
    """

    path: Path
    shape: tuple[int, int, int]
    dtype: np.dtype
    voxel_size: VoxelSize | None
    names: list[str] | None = None
    kind: str = "stack"
    voxel_size_source: str | None = None

    def __len__(self) -> int:
        return self.shape[0]

    def read(self, z: int) -> np.ndarray:
        """Return slice ``z`` as a 2-D array of shape ``shape[1:]``."""
        if not 0 <= z < self.shape[0]:
            raise IndexError(f"slice {z} is outside the stack {self.path} (0..{self.shape[0] - 1})")
        return self._read(z)

    def _read(self, z: int) -> np.ndarray:
        raise NotImplementedError

    def slice_name(self, z: int) -> str:
        """Human-readable name of slice ``z`` for messages."""
        return self.names[z] if self.names else f"slice {z}"

    def describe(self) -> dict[str, Any]:
        """Summary used by ``amst info``."""
        return {
            "path": str(self.path),
            "kind": self.kind,
            "shape_zyx": list(self.shape),
            "dtype": str(self.dtype),
            "slices": self.shape[0],
            "voxel_size": self.voxel_size.to_dict() if self.voxel_size else None,
            "voxel_size_source": self.voxel_size_source if self.voxel_size else None,
        }

    def provenance(self) -> dict[str, Any]:
        """What an output records about its input: format, voxel-size source, extra choices.

        Returns
        -------
        dict
            ``input_kind`` and ``voxel_size_source`` always; readers add what the user chose
            (e.g. the detector channel of a Janelia ``.dat`` stack).
        """
        return {"input_kind": self.kind,
                "voxel_size_source": self.voxel_size_source if self.voxel_size else "voxel size unknown"}

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state.pop("_handle", None)
        return state


def common_canvas(path: Path, names: list[str], shapes: list[tuple[int, int]], allow_pad: bool,
                  what: str = "slice(s)") -> tuple[tuple[int, int], list[tuple[str, tuple[int, int]]]]:
    """The canvas that holds every slice, and the slices of another shape (name, shape).

    Slices of another shape are refused unless ``allow_pad`` (``--allow-pad``); then they are
    listed in a warning, and :func:`pad_to_canvas` pads them when read.
    """
    canvas = (max(s[0] for s in shapes), max(s[1] for s in shapes))
    mismatched = [(n, s) for n, s in zip(names, shapes) if s != canvas]
    more = " ..." if len(mismatched) > 8 else ""
    if mismatched and not allow_pad:
        listing = ", ".join(f"{n} is {s[0]}x{s[1]}" for n, s in mismatched[:8])
        raise StackError(f"{path}: {what} differ in shape (canvas {canvas[0]}x{canvas[1]}): {listing}{more}; "
                         "pass --allow-pad to pad them to a common canvas")
    if mismatched:
        listing = ", ".join(f"{n} ({s[0]}x{s[1]})" for n, s in mismatched[:8])
        log.warning("%s: %d %s differ from the canvas %dx%d and are padded with zeros at the bottom/right: %s%s",
                    path, len(mismatched), what, canvas[0], canvas[1], listing, more)
    return canvas, mismatched


def pad_to_canvas(image: np.ndarray, shape_yx: tuple[int, int]) -> np.ndarray:
    """``image`` on a zero canvas of ``shape_yx``, raw pixel (x, y) kept at (x, y): padded at the
    bottom/right (``--allow-pad``); returned unchanged when it already has that shape."""
    if image.shape == tuple(shape_yx):
        return image
    canvas = np.zeros(shape_yx, dtype=image.dtype)
    canvas[: image.shape[0], : image.shape[1]] = image
    return canvas


def check_dtype(dtype: np.dtype, where: str) -> np.dtype:
    """Refuse dtypes the pipeline does not handle, naming the file."""
    dtype = np.dtype(dtype)
    if dtype in SUPPORTED_DTYPES:
        return dtype
    if dtype.kind in "iu" and dtype.itemsize <= 2:
        # int8/int16 appear in Janelia .dat and some exports; they are read as is and the
        # caller converts, but we say so rather than silently reinterpret.
        raise StackError(
            f"{where}: signed integer data ({dtype}) is not supported; convert it to uint16 "
            "(e.g. add 32768) or float32 first"
        )
    raise StackError(f"{where}: dtype {dtype} is not supported; use uint8, uint16 or float32")


class SingleFileWriter:
    """A stack written into one file whose pixels lie in one block at ``offset`` (MRC, an
    ImageJ hyperstack): each slice goes into its own bytes, so workers write in parallel.

    Subclasses create or reopen the file and set ``path``, ``shape``, ``dtype`` (what
    ``write`` takes), ``file_dtype`` (how the file stores it) and ``offset``.
    """

    path: Path
    shape: tuple[int, int, int]
    dtype: np.dtype
    file_dtype: np.dtype
    offset: int

    def write(self, z: int, image: np.ndarray) -> None:
        """Write slice ``z`` into its bytes of the file."""
        image = np.asarray(image)
        if image.shape != self.shape[1:] or image.dtype != self.dtype:
            raise ValueError(f"slice {z}: got {image.shape} {image.dtype}, expected {self.shape[1:]} {self.dtype}")
        mm = np.memmap(self.path, dtype=self.file_dtype, mode="r+", offset=self.offset, shape=self.shape)
        mm[z] = image
        mm.flush()
        del mm

    def has_slice(self, z: int) -> bool:
        """True when the file exists at its full size (one file holds every slice)."""
        expected = self.offset + int(np.prod(self.shape, dtype=np.int64)) * self.file_dtype.itemsize
        return self.path.is_file() and self.path.stat().st_size >= expected

    def close(self) -> None:
        """Nothing buffered: each slice is on disk once written."""
