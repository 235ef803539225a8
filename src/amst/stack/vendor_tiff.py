"""Microscope vendors' TIFF metadata: Zeiss SmartSEM / Atlas 5 and Thermo Fisher (FEI).

Zeiss writes its settings as text in private tag 34118 (``CZ_SEM``), which tifffile parses
into ``TiffFile.sem_metadata``: a mapping from the lower-cased parameter key (e.g.
``ap_image_pixel_size``) to ``(label, value[, unit])``. Thermo Fisher / FEI (Helios,
Auto Slice & View) writes an INI text in tag 34682 (``FEI_HELIOS``, or 34680 ``FEI_SFEG``),
parsed into ``TiffFile.fei_metadata``: ``{section: {key: value}}`` with ``[Scan] PixelWidth``
in metres and ``[Image] ResolutionY`` the image height without the data bar that these
TIFFs append below the image.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import tifffile

from .base import StackError, unit_to_nm

log = logging.getLogger(__name__)

# Zeiss keys that hold the pixel size, best first ("Image Pixel Size" is the one of the
# stored image; "Pixel Size" is the scan's and equals it unless the image was reduced).
_ZEISS_KEYS = ("ap_image_pixel_size", "ap_pixel_size")


@dataclass(frozen=True)
class VendorTiffInfo:
    """What a vendor tag says about a TIFF page.

    Attributes
    ----------
    pixel_nm : (float, float) or None
        Pixel size (y, x) in nanometres.
    source : str or None
        The tag and key it was read from, for ``amst info``.
    image_height : int or None
        Rows of image content (FEI: the data bar below them is not image).
    """

    pixel_nm: tuple[float, float] | None = None
    source: str | None = None
    image_height: int | None = None


def vendor_info(tif: tifffile.TiffFile) -> VendorTiffInfo:
    """Read the Zeiss or FEI tag of an open TIFF; an empty info when it has neither.

    Parameters
    ----------
    tif : tifffile.TiffFile

    Returns
    -------
    VendorTiffInfo
    """
    where = str(tif.filehandle.path)
    if tif.is_sem:
        return _zeiss(tif.sem_metadata or {}, where)
    if tif.is_fei:
        return _fei(tif.fei_metadata or {}, where)
    return VendorTiffInfo()


def _zeiss(meta: dict[str, Any], where: str) -> VendorTiffInfo:
    for key in _ZEISS_KEYS:
        entry = meta.get(key)
        if not entry or len(entry) < 2:
            continue
        value = entry[1]
        unit = entry[2] if len(entry) > 2 else ""
        if not isinstance(value, (int, float)) or value <= 0 or not unit:
            log.warning("%s: Zeiss SEM tag 34118 %s is %r, not a length; voxel size not taken from it",
                        where, key, entry)
            continue
        try:
            nm = float(value) * unit_to_nm(unit)
        except StackError:
            log.warning("%s: Zeiss SEM tag 34118 %s has unknown unit %r; voxel size not taken from it",
                        where, key, unit)
            continue
        return VendorTiffInfo((nm, nm), f"Zeiss SEM tag 34118 ({key})")
    return VendorTiffInfo()


def _fei(meta: dict[str, Any], where: str) -> VendorTiffInfo:
    scan = meta.get("Scan") or {}
    image = meta.get("Image") or {}
    height = image.get("ResolutionY")
    height = int(height) if isinstance(height, (int, float)) and height > 0 else None
    width = scan.get("PixelWidth")
    pheight = scan.get("PixelHeight", width)
    if not isinstance(width, (int, float)) or width <= 0:
        if width is not None:
            log.warning("%s: FEI metadata [Scan] PixelWidth is %r; voxel size not taken from it", where, width)
        return VendorTiffInfo(None, None, height)
    if not isinstance(pheight, (int, float)) or pheight <= 0:
        pheight = width
    return VendorTiffInfo((float(pheight) * 1e9, float(width) * 1e9), "FEI metadata [Scan] PixelWidth", height)


def content_rows(info: VendorTiffInfo, page_height: int, where: str) -> int:
    """Rows of image content in a page of ``page_height`` rows (the FEI data bar cut off).

    Parameters
    ----------
    info : what the vendor tag says
    page_height : rows of the stored page
    where : the file, for the message

    Returns
    -------
    int

    Raises
    ------
    StackError
        When the metadata claims more rows than the page has (a cropped or edited file).
    """
    if info.image_height is None or info.image_height == page_height:
        return page_height
    if info.image_height > page_height:
        raise StackError(f"{where}: FEI metadata [Image] ResolutionY is {info.image_height} rows but the page has "
                         f"only {page_height}; the file was edited after acquisition: export it again, or remove "
                         "the FEI tag")
    return info.image_height
