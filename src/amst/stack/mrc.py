"""MRC / CCP4 volumes (IMOD, cryo-EM tools): lazy reader and slice-by-slice writer (mrcfile).

The header's voxel size is in Ångström (``cella / mxyz``); amst works in nanometres and
converts both ways. A header voxel size of 0 means unknown. Signed data (modes 0 and 1) and
float16 (mode 12) are read as float32, which holds every value exactly; uint8 is written as
mode 6 (uint16, values kept), as MRC has no unsigned 8-bit mode.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from .base import SingleFileWriter, Stack, StackError, VoxelSize, check_dtype

log = logging.getLogger(__name__)

MRC_SUFFIXES = (".mrc", ".mrcs", ".rec", ".st", ".ali", ".map")
_ANGSTROM_PER_NM = 10.0
_TO_FLOAT = (np.dtype(np.int8), np.dtype(np.int16), np.dtype(np.float16))


def _mrcfile() -> Any:
    import mrcfile

    return mrcfile


class MrcStack(Stack):
    """An MRC volume whose sections are the slices; reading slice z reads only its bytes.

    Parameters
    ----------
    path : path
    """

    kind = "mrc"

    def __init__(self, path: str | Path):
        self.path = Path(path)
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                with _mrcfile().mmap(self.path, mode="r", permissive=True) as mrc:
                    if mrc.data is None:
                        raise ValueError("; ".join(str(w.message) for w in caught) or "no data block")
                    shape = tuple(int(s) for s in mrc.data.shape)
                    stored = np.dtype(mrc.data.dtype).newbyteorder("=")
                    vs = mrc.voxel_size
                    voxel_a = (float(vs.z), float(vs.y), float(vs.x))
        except (OSError, ValueError) as exc:
            raise StackError(f"{self.path}: cannot read as MRC ({exc})") from exc
        if len(shape) == 2:
            shape = (1, *shape)
        if len(shape) != 3:
            raise StackError(f"{self.path}: expected a (z, y, x) MRC volume, found shape {shape}")
        self.shape = shape  # type: ignore[assignment]
        self.dtype = np.dtype(np.float32) if stored in _TO_FLOAT else check_dtype(stored, str(self.path))
        if all(v > 0 for v in voxel_a):
            self.voxel_size = VoxelSize(*(v / _ANGSTROM_PER_NM for v in voxel_a))
            self.voxel_size_source = "MRC header voxel_size (cella / mxyz, Angstrom)"
        else:
            self.voxel_size = None
            log.warning("%s: the MRC header has no voxel size (0 A); voxel size unknown, pass --voxel-size", self.path)

    def _data(self) -> np.ndarray:
        if getattr(self, "_handle", None) is None:
            self._handle = _mrcfile().mmap(self.path, mode="r", permissive=True)
        return self._handle.data

    def _read(self, z: int) -> np.ndarray:
        data = self._data()
        plane = data[z] if data.ndim == 3 else data
        return np.asarray(plane, dtype=self.dtype.newbyteorder("=")).astype(self.dtype, copy=False)


class MrcWriter(SingleFileWriter):
    """Writes an MRC volume slice by slice; slices may be written by several processes.

    The file is created (sparse) with its header when the writer is made; each slice is
    then written into its own byte range, so parallel workers never touch the same bytes.
    The header's statistics are marked "not computed" (MRC2014: dmax < dmin, rms < 0).

    Parameters
    ----------
    path : path
        The ``.mrc`` file.
    shape, dtype : output geometry (uint8, uint16 or float32).
    voxel_size : VoxelSize or None
        Written to the header in Ångström (0 when unknown).
    mode : ``"w"`` creates the file, ``"a"`` reopens it (a resumed run).
    """

    kind = "mrc"

    def __init__(self, path: str | Path, shape: tuple[int, int, int], dtype: Any,
                 voxel_size: VoxelSize | None = None, mode: str = "w", label: str | None = None):
        self.path = Path(path)
        self.shape = tuple(int(s) for s in shape)
        self.dtype = np.dtype(dtype)
        self.voxel_size = voxel_size
        self.file_dtype = np.dtype(np.uint16) if self.dtype == np.uint8 else self.dtype
        mrcfile = _mrcfile()
        if mode == "a" and self.path.is_file():
            with mrcfile.mmap(self.path, mode="r") as mrc:
                found = (tuple(mrc.data.shape), np.dtype(mrc.data.dtype).newbyteorder("="))
                self.offset = int(mrc.data.offset)
            if found != (self.shape, self.file_dtype):  # a resumed run writes only into its own volume
                raise ValueError(f"{self.path}: is {found[0]} {found[1]}, expected {self.shape} {self.file_dtype}")
            return
        mrc_mode = mrcfile.utils.mode_from_dtype(self.file_dtype)
        with mrcfile.new_mmap(self.path, shape=self.shape, mrc_mode=mrc_mode, overwrite=True) as mrc:
            if voxel_size is not None:
                mrc.voxel_size = (voxel_size.x * _ANGSTROM_PER_NM, voxel_size.y * _ANGSTROM_PER_NM,
                                  voxel_size.z * _ANGSTROM_PER_NM)
            mrc.set_volume()
            mrc.header.dmin, mrc.header.dmax, mrc.header.dmean, mrc.header.rms = 0, -1, -2, -1
            if label:
                mrc.header.label[0] = label[:80].encode("ascii", "replace")
                mrc.header.nlabl = 1
            self.offset, self.file_dtype = int(mrc.data.offset), np.dtype(mrc.data.dtype)

