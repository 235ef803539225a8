"""TIFF stacks: a folder of single-slice TIFFs, a multi-page TIFF, and the TIFF-folder writer."""

from __future__ import annotations

import fnmatch
import io
import logging
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import numpy as np
import tifffile

from ..outdir import atomic_write_bytes
from .base import (Stack, StackError, VoxelSize, check_dtype, common_canvas, natural_sort_key, pad_to_canvas,
                   unit_to_nm)
from .vendor_tiff import VendorTiffInfo, content_rows, vendor_info

log = logging.getLogger(__name__)

DEFAULT_PATTERN = "*.tif*"
_TIFF_SUFFIXES = (".tif", ".tiff")


def list_tiff_folder(folder: Path, pattern: str | None = None) -> list[Path]:
    """Image files of ``folder`` matching ``pattern``, in natural order.

    Hidden files and files that are not TIFFs are ignored, so stray ``.txt``/``.db``
    files from acquisition software do not break a run.
    """
    pattern = pattern or DEFAULT_PATTERN
    files = [
        p for p in folder.iterdir()
        if p.is_file() and not p.name.startswith(".")
        and fnmatch.fnmatch(p.name.lower(), pattern.lower())
        and p.suffix.lower() in _TIFF_SUFFIXES
    ]
    return sorted(files, key=lambda p: natural_sort_key(p.name))


def _resolution_nm(tif: tifffile.TiffFile) -> tuple[float | None, float | None, float | None]:
    """(z, y, x) pixel size in nm from ImageJ or OME metadata of an open TIFF, None if absent."""
    if tif.ome_metadata:
        vs = _ome_xml_voxel_size(tif.ome_metadata)
        if vs is not None:
            return vs
    page = tif.pages[0]
    ij = tif.imagej_metadata or {}
    unit = ij.get("unit")
    xres = page.tags.get("XResolution")
    yres = page.tags.get("YResolution")
    if unit is None:
        res_unit = page.tags.get("ResolutionUnit")
        # Only centimetres carry physical meaning; inch is the DPI default of most writers.
        if res_unit is None or int(res_unit.value) != 3:
            return None, None, None
        unit = "cm"
    try:
        factor = 1e7 if unit == "cm" else unit_to_nm(unit)
    except StackError:
        log.warning("%s: unknown ImageJ unit %r, voxel size ignored", tif.filehandle.path, unit)
        return None, None, None

    def per_pixel(tag: Any) -> float | None:
        if tag is None:
            return None
        num, den = tag.value
        return factor * den / num if num else None

    spacing = ij.get("spacing")
    return (factor * float(spacing) if spacing else None, per_pixel(yres), per_pixel(xres))


def resolution_with_source(tif: tifffile.TiffFile) -> tuple[tuple[float | None, float | None, float | None],
                                                             str | None, VendorTiffInfo]:
    """(z, y, x) pixel size in nm of an open TIFF, where it came from, and the vendor tag's info.

    A microscope's own tag (Zeiss 34118, FEI 34682) wins over ImageJ/OME metadata; z is
    known only from ImageJ ``spacing`` or OME ``PhysicalSizeZ``.
    """
    vendor = vendor_info(tif)
    found = _resolution_nm(tif)
    if vendor.pixel_nm is not None:
        return (found[0], *vendor.pixel_nm), vendor.source, vendor
    if found[1] is None and found[2] is None:
        return found, None, vendor
    source = "OME-XML PhysicalSize" if tif.ome_metadata and _ome_xml_voxel_size(tif.ome_metadata) else (
        "ImageJ metadata" if tif.imagej_metadata else "TIFF XResolution/YResolution (cm)")
    return found, source, vendor


def _ome_xml_voxel_size(xml: str) -> tuple[float | None, float | None, float | None] | None:
    try:
        root = ET.fromstring(xml)
    except ET.ParseError:
        return None
    for el in root.iter():
        if el.tag.endswith("Pixels"):
            out = []
            for ax in "ZYX":
                val = el.get(f"PhysicalSize{ax}")
                unit = el.get(f"PhysicalSize{ax}Unit", "µm")
                out.append(float(val) * unit_to_nm(unit) if val else None)
            return out[0], out[1], out[2]
    return None


def _combine_voxel(found: tuple[float | None, float | None, float | None]) -> VoxelSize | None:
    z, y, x = found
    if x is None and y is None:
        return None
    x = x or y
    y = y or x
    return VoxelSize(z if z else x, y, x)  # type: ignore[arg-type]


class TiffFolderStack(Stack):
    """One TIFF file per slice, in natural order of the file names.

    Parameters
    ----------
    folder : path
    pattern : str, optional
        Glob on the file names (case-insensitive), default ``*.tif*``.
    allow_pad : bool
        When slices differ in shape, pad each to the common canvas (top-left aligned: each
        slice's offset is (0, 0), recorded in ``describe()``) instead of refusing.
    skip_bad : bool
        A slice that cannot be read (corrupt or truncated file) is reported and read as
        zeros (a blank slice, which the pipeline marks ``blank``) instead of stopping.
    """

    kind = "tiff-folder"

    def __init__(self, folder: str | Path, pattern: str | None = None, allow_pad: bool = False,
                 skip_bad: bool = False):
        self.path = Path(folder)
        self.pattern = pattern or DEFAULT_PATTERN
        self.files = list_tiff_folder(self.path, pattern)
        if not self.files:
            others = [p.name for p in self.path.iterdir() if p.is_file()][:5]
            hint = f" (it holds e.g. {', '.join(others)})" if others else " (it is empty)"
            raise StackError(
                f"{self.path}: no TIFF file matches pattern {self.pattern!r}{hint}; "
                "check the folder or pass --pattern"
            )
        self.names = [p.name for p in self.files]
        self.skip_bad = skip_bad
        self.bad: dict[int, str] = {}
        shapes, dtypes = [], []
        first_res: tuple = (None, None, None)
        self.data_bar: dict[int, int] = {}  # slice -> rows of image content (FEI data bar below)
        for z, p in enumerate(self.files):
            try:
                with tifffile.TiffFile(p) as tif:
                    page = tif.pages[0]
                    end = max((o + c for o, c in zip(page.dataoffsets, page.databytecounts)), default=0)
                    if end > p.stat().st_size or (page.dataoffsets and not all(page.databytecounts)):
                        raise ValueError(f"file is truncated ({p.stat().st_size} bytes, image data needs {end})")
                    vendor = vendor_info(tif)  # every file: an FEI data bar may differ per slice
                    shape = tuple(page.shape)
                    if len(shape) == 2:
                        rows = content_rows(vendor, shape[0], str(p))
                        if rows != shape[0]:
                            self.data_bar[z] = rows
                            shape = (rows, shape[1])
                    shapes.append(shape)
                    dtypes.append(np.dtype(page.dtype))
                    if z == 0 or first_res == (None, None, None):  # the voxel size: from the first that has one
                        first_res, self.voxel_size_source, _ = resolution_with_source(tif)
            except Exception as exc:  # tifffile raises many types for corrupt files
                if not skip_bad:
                    raise StackError(f"{p}: slice {z} cannot be read as TIFF ({exc}); replace the file, "
                                     "or pass --skip-bad to continue with it marked missing") from exc
                log.warning("%s: slice %d cannot be read (%s); it is treated as missing (blank)", p, z, exc)
                self.bad[z] = str(exc)
                shapes.append(None)
                dtypes.append(None)
        good = [s for s in shapes if s is not None]
        if not good:
            raise StackError(f"{self.path}: none of the {len(self.files)} TIFF files can be read")
        shapes = [s if s is not None else good[0] for s in shapes]
        dtypes = [d if d is not None else next(x for x in dtypes if x is not None) for d in dtypes]
        self._warn_numbering_gaps()
        bad_nd = [f"{n} {s}" for n, s in zip(self.names, shapes) if len(s) != 2]
        if bad_nd:
            raise StackError(
                f"{self.path}: slices must be 2-D grey images; these are not: {', '.join(bad_nd[:5])}"
            )
        if len(set(dtypes)) > 1:
            groups = {str(d): [n for n, dd in zip(self.names, dtypes) if dd == d][:3] for d in set(dtypes)}
            raise StackError(f"{self.path}: slices have different dtypes {groups}; convert them to one dtype")
        self.dtype = check_dtype(dtypes[0], str(self.files[0]))
        canvas, self.mismatched = common_canvas(self.path, self.names, shapes, allow_pad)
        self.allow_pad = allow_pad
        self.shape = (len(self.files), canvas[0], canvas[1])
        self.voxel_size = _combine_voxel(first_res)
        self.voxel_axes_from_file = "zyx" if first_res[0] else "yx"
        if self.data_bar:
            log.info("%s: %d slice(s) carry an FEI data bar below the image; it is cropped (e.g. %s keeps %d rows)",
                     self.path, len(self.data_bar), self.names[next(iter(self.data_bar))],
                     next(iter(self.data_bar.values())))

    def _warn_numbering_gaps(self) -> None:
        """Log missing indices in the numbering (a slice lost during export, e.g. s_11 of s_10..s_12)."""
        import re

        numbers = []
        for name in self.names:
            found = re.findall(r"\d+", name)
            if not found:
                return
            numbers.append(int(found[-1]))
        gaps = [(a, b) for a, b in zip(numbers, numbers[1:]) if b - a > 1]
        if gaps and len(set(np.diff(numbers))) > 1:
            listing = ", ".join(f"{a}->{b}" for a, b in gaps[:10])
            log.warning("%s: the slice numbering has gaps (%s); missing slices are not interpolated", self.path, listing)
        self.numbering_gaps = gaps

    def _read(self, z: int) -> np.ndarray:
        path = self.files[z]
        if z in self.bad:
            return np.zeros(self.shape[1:], dtype=self.dtype)
        try:
            img = tifffile.imread(path, key=0)
        except Exception as exc:
            if self.skip_bad:
                log.warning("%s: slice %d cannot be read (%s); treated as missing (blank)", path, z, exc)
                return np.zeros(self.shape[1:], dtype=self.dtype)
            raise StackError(f"{path}: slice {z} cannot be read ({exc}); replace the file, "
                             "or pass --skip-bad to continue with it marked missing") from exc
        if z in self.data_bar:
            img = img[: self.data_bar[z]]
        return pad_to_canvas(img, self.shape[1:])

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        d["pattern"] = self.pattern
        d["first"], d["last"] = self.names[0], self.names[-1]
        d["shape_mismatches"] = [{"name": n, "shape_yx": list(s), "offset_yx": [0, 0]} for n, s in self.mismatched]
        d["unreadable"] = [{"name": self.names[z], "error": e} for z, e in self.bad.items()]
        d["numbering_gaps"] = [list(g) for g in getattr(self, "numbering_gaps", [])]
        d["data_bar_cropped"] = [{"name": self.names[z], "image_rows": r} for z, r in self.data_bar.items()]
        return d


class MultiPageTiffStack(Stack):
    """A multi-page (or ImageJ hyperstack) TIFF file whose pages are the slices."""

    kind = "tiff"

    def __init__(self, path: str | Path):
        self.path = Path(path)
        try:
            with tifffile.TiffFile(self.path) as tif:
                series = tif.series[0]
                shape = tuple(series.shape)
                dtype = np.dtype(series.dtype)
                res, self.voxel_size_source, vendor = resolution_with_source(tif)
        except Exception as exc:
            raise StackError(f"{self.path}: cannot read as TIFF ({exc})") from exc
        shape = tuple(s for s in shape if s != 1) if len(shape) > 3 else shape
        if len(shape) == 2:
            shape = (1, *shape)
        if len(shape) != 3:
            raise StackError(f"{self.path}: expected a (z, y, x) grey stack, found shape {shape}")
        shape = (shape[0], content_rows(vendor, int(shape[1]), str(self.path)), shape[2])
        self.shape = shape  # type: ignore[assignment]
        self.dtype = check_dtype(dtype, str(self.path))
        self.voxel_size = _combine_voxel(res)
        self.voxel_axes_from_file = "zyx" if res[0] else "yx"

    def _array(self) -> Any:
        if getattr(self, "_handle", None) is None:
            import zarr

            store = tifffile.imread(self.path, aszarr=True)
            self._handle = zarr.open(store, mode="r")
        return self._handle

    def _read(self, z: int) -> np.ndarray:
        arr = self._array()
        rows = self.shape[1]  # the content above an FEI data bar
        if arr.ndim == 3:
            return np.asarray(arr[z, :rows])
        if arr.ndim == 2:
            return np.asarray(arr[:rows])
        if len(self) == 1:
            return np.asarray(arr[:]).reshape(-1, self.shape[2])[:rows]
        # More than three axes, all but z, y, x of length 1: read slice z only.
        index: list[Any] = [0 if n == 1 else slice(None) for n in arr.shape]
        index[next(i for i, n in enumerate(arr.shape) if n != 1)] = z
        return np.asarray(arr[tuple(index)])[:rows]


def tiff_file_names(names: list[str] | tuple[str, ...]) -> list[str]:
    """The file each slice name becomes in a TIFF-folder output (a ``.tif`` suffix where it has none)."""
    return [n if n.lower().endswith(_TIFF_SUFFIXES) else f"{Path(n).stem}.tif" for n in names]


class TiffFolderWriter:
    """Writes one ImageJ TIFF per slice; each file appears only once complete.

    Parameters
    ----------
    folder : path
        Created if needed.
    shape, dtype : output stack geometry.
    voxel_size : VoxelSize or None
        Written as ImageJ resolution (nm) and spacing.
    names : list of str, optional
        Output file names; defaults to ``slice_00000.tif``.
    """

    kind = "tiff"

    def __init__(self, folder: str | Path, shape: tuple[int, int, int], dtype: Any,
                 voxel_size: VoxelSize | None = None, names: list[str] | None = None):
        self.path = Path(folder)
        self.path.mkdir(parents=True, exist_ok=True)
        self.shape = tuple(int(s) for s in shape)
        self.dtype = np.dtype(dtype)
        self.voxel_size = voxel_size
        width = max(5, len(str(self.shape[0])))
        if names is not None:
            if len(names) != self.shape[0]:
                raise ValueError(f"{len(names)} names for {self.shape[0]} slices")
            names = tiff_file_names(names)
        self.names = names or [f"slice_{z:0{width}d}.tif" for z in range(self.shape[0])]

    def write(self, z: int, image: np.ndarray) -> None:
        """Write slice ``z`` atomically (encoded in memory, then :func:`amst.outdir.atomic_write_bytes`:
        temporary file, rename)."""
        image = np.asarray(image)
        if image.shape != self.shape[1:] or image.dtype != self.dtype:
            raise ValueError(f"slice {z}: got {image.shape} {image.dtype}, expected {self.shape[1:]} {self.dtype}")
        kwargs: dict[str, Any] = {"imagej": True, "metadata": {"unit": "nm", "axes": "YX"}}
        if self.voxel_size:
            kwargs["resolution"] = (1.0 / self.voxel_size.x, 1.0 / self.voxel_size.y)
            kwargs["metadata"]["spacing"] = self.voxel_size.z
        encoded = io.BytesIO()
        tifffile.imwrite(encoded, image, **kwargs)
        atomic_write_bytes(self.path / self.names[z], encoded.getvalue(), sync=False)

    def close(self) -> None:
        """Nothing to flush: each slice is complete once written."""
