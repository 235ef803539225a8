"""HDF5 stacks: one 3-D dataset of an HDF5 file, read slice by slice with h5py."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .base import Stack, StackError, VoxelSize, check_dtype

HDF5_SUFFIXES = (".h5", ".hdf5", ".hdf", ".he5")


def _find_datasets(h5file) -> list[str]:
    import h5py

    found: list[str] = []
    h5file.visititems(lambda name, obj: found.append(name) if isinstance(obj, h5py.Dataset) else None)
    return found


class Hdf5Stack(Stack):
    """A (z, y, x) dataset inside an HDF5 file.

    Parameters
    ----------
    path : path
        The ``.h5`` file.
    dataset : str, optional
        Dataset path inside the file; may be omitted when the file holds exactly one
        2-D/3-D dataset. A 2-D dataset is a one-slice stack. Voxel size is read from an
        ``element_size_um`` or ``resolution`` attribute (z, y, x) when present.
    """

    kind = "hdf5"

    def __init__(self, path: str | Path, dataset: str | None = None):
        import h5py

        self.path = Path(path)
        try:
            f = h5py.File(self.path, "r")
        except OSError as exc:
            raise StackError(f"{self.path}: cannot open as HDF5 ({exc})") from exc
        with f:
            if dataset is None:
                candidates = [n for n in _find_datasets(f) if f[n].ndim in (2, 3)]
                if len(candidates) != 1:
                    raise StackError(
                        f"{self.path}: holds datasets {candidates or 'none'}; name one as FILE.h5:/dataset"
                    )
                dataset = candidates[0]
            if dataset not in f:
                raise StackError(f"{self.path}: no dataset {dataset!r}; it holds {_find_datasets(f)}")
            ds = f[dataset]
            if not isinstance(ds, h5py.Dataset):
                raise StackError(f"{self.path}: {dataset!r} is a group, not a dataset; the file holds datasets "
                                 f"{_find_datasets(f)}; name one as FILE.h5:/dataset")
            shape = ds.shape if ds.ndim == 3 else (1, *ds.shape)
            if len(shape) != 3:
                raise StackError(f"{self.path}:{dataset}: expected (z, y, x), found shape {ds.shape}")
            self.dtype = check_dtype(ds.dtype, f"{self.path}:{dataset}")
            self.voxel_size = None
            if "element_size_um" in ds.attrs:
                z, y, x = (float(v) * 1000.0 for v in ds.attrs["element_size_um"])
                self.voxel_size = VoxelSize(z, y, x)
                self.voxel_size_source = "HDF5 attribute element_size_um"
            elif "resolution" in ds.attrs and len(ds.attrs["resolution"]) == 3:
                self.voxel_size = VoxelSize(*(float(v) for v in ds.attrs["resolution"]))
                self.voxel_size_source = "HDF5 attribute resolution (nm)"
        self.dataset = dataset
        self.shape = tuple(int(s) for s in shape)  # type: ignore[assignment]

    def _read(self, z: int) -> np.ndarray:
        import h5py

        if getattr(self, "_handle", None) is None:
            self._handle = h5py.File(self.path, "r")[self.dataset]
        ds = self._handle
        return np.asarray(ds[z] if ds.ndim == 3 else ds[()])
