"""One ImageJ hyperstack TIFF for the whole output (what Fiji opens directly).

A classic TIFF addresses at most 4 GiB and ImageJ does not read BigTIFF hyperstacks, so
stacks whose pixels need more are refused before the run starts (use zarr, or the TIFF
folder). The file is created with all its pages and uncompressed, contiguous pixel data;
each slice is then written into its own bytes, so parallel workers never touch the same
bytes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import tifffile

from .base import SingleFileWriter, VoxelSize

# Pixel bytes a classic TIFF can hold, less room for the page directories and metadata.
CLASSIC_TIFF_LIMIT = 2**32 - 2**24


def tiff_stack_bytes(shape: tuple[int, int, int], dtype: Any) -> int:
    """Pixel bytes of a ``(z, y, x)`` stack of ``dtype``."""
    return int(np.prod([int(s) for s in shape], dtype=np.int64)) * np.dtype(dtype).itemsize


def check_tiff_stack_fits(shape: tuple[int, int, int], dtype: Any) -> None:
    """Refuse a stack too large for one classic (ImageJ) TIFF, naming what to use instead.

    Raises
    ------
    ValueError
        When the pixels need more than :data:`CLASSIC_TIFF_LIMIT` bytes.
    """
    need = tiff_stack_bytes(shape, dtype)
    if need > CLASSIC_TIFF_LIMIT:
        z, y, x = shape
        raise ValueError(f"output.out_format: tiff-stack cannot hold {z} x {y} x {x} {np.dtype(dtype)} "
                         f"({need / 2**30:.1f} GiB): one classic ImageJ TIFF holds at most 4 GiB; use "
                         "--out-format zarr (OME-Zarr, opens in Fiji with n5-viewer/MoBIE and in napari) or "
                         "--out-format tiff (one TIFF per slice); BigTIFF is not read as a hyperstack by ImageJ")


class ImageJStackWriter(SingleFileWriter):
    """Writes a single ImageJ hyperstack TIFF (axes ZYX, voxel size in nm) slice by slice.

    Parameters
    ----------
    path : path
        The ``.tif`` file.
    shape, dtype : output geometry.
    voxel_size : VoxelSize or None
        ImageJ resolution and spacing, unit nm.
    mode : ``"w"`` creates the file, ``"a"`` reopens it (a resumed run).
    info : str, optional
        Text for ImageJ's "Info" property (what amst records about the input).
    """

    kind = "tiff-stack"

    def __init__(self, path: str | Path, shape: tuple[int, int, int], dtype: Any,
                 voxel_size: VoxelSize | None = None, mode: str = "w", info: str | None = None):
        self.path = Path(path)
        self.shape = tuple(int(s) for s in shape)
        self.dtype = np.dtype(dtype)
        self.voxel_size = voxel_size
        self.file_dtype = self.dtype
        check_tiff_stack_fits(self.shape, self.dtype)  # type: ignore[arg-type]
        if mode == "a" and self.path.is_file():
            self._check_reopened()
            return
        metadata: dict[str, Any] = {"axes": "ZYX", "unit": "nm"}
        kwargs: dict[str, Any] = {}
        if voxel_size is not None:
            kwargs["resolution"] = (1.0 / voxel_size.x, 1.0 / voxel_size.y)
            metadata["spacing"] = voxel_size.z
        if info:
            metadata["Info"] = info
        tifffile.imwrite(self.path, shape=self.shape, dtype=self.dtype, imagej=True, metadata=metadata, **kwargs)
        self._check_reopened()  # and learn where the pixels start

    def _check_reopened(self) -> None:
        """A file reopened by a resumed run must be the hyperstack this writer makes, readable as such."""
        try:
            mm = tifffile.memmap(self.path, mode="r")
            ok = mm.size == int(np.prod(self.shape)) and mm.dtype == self.dtype
            self.offset = int(mm.offset)
            del mm
        except (OSError, ValueError, tifffile.TiffFileError) as exc:
            raise ValueError(f"{self.path}: cannot be reopened as the run's hyperstack ({exc})") from exc
        if not ok:
            raise ValueError(f"{self.path}: is not a {self.shape} {self.dtype} hyperstack")

