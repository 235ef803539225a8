"""Janelia FIB-SEM ``.dat`` frames (the raw format of FlyEM / OpenOrganelle acquisitions).

Layout (big-endian; from Janelia's public readers: the MATLAB ``readfibsem.m``, Fiji's
``FIBSEM_Reader`` and fibsem-tools' ``read_header``): a 1024-byte header, then the pixels
as ``(YResolution, XResolution, ChanNum)``, channels interleaved per pixel, ``>i2``
(``>u1`` when ``EightBit`` is 1). The header fields read here:

======  =====  ==============  ==========================================
offset  type   field           meaning
======  =====  ==============  ==========================================
0       >u4    FileMagicNum    3555587570
4       >u2    FileVersion     1 ... 9
32      >u1    ChanNum         channels stored
33      >u1    EightBit        1: uint8 pixels, else int16
100     >u4    XResolution     width in px
104     >u4    YResolution     height in px
151     >u1×4  AI1..AI4        which detector inputs were recorded
155     S25    SampleID        (version >= 9)
380     S10    DetA            detector names of AI1..AI4 (also 390 S18,
                               410 S20, 430 S20; versions >= 3)
464     >f4    PixelSize       nm (versions >= 3; 416 >f8 in versions 1-2)
800     S30    MachineID       (versions >= 5)
======  =====  ==============  ==========================================

The int16 samples are the detector's signed ADC counts; they are read as uint16 by adding
32768 in 32-bit arithmetic (Fiji's reader does the same), which keeps every value and its
order. The header has no slice thickness: z is taken equal to the pixel size, and a
``--voxel-size`` with the real thickness is not warned about on z.
"""

from __future__ import annotations

import fnmatch
import logging
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .base import Stack, StackError, VoxelSize, common_canvas, natural_sort_key, pad_to_canvas

log = logging.getLogger(__name__)

DAT_MAGIC = 3_555_587_570
HEADER_BYTES = 1024
DAT_SUFFIX = ".dat"
MAX_VERSION = 9
# Acquisition software names frames MACHINE_YY-MM-DD_HHMMSS_TILE.dat (tile as "0-0-0").
_STAMP = re.compile(r"_(\d{2}-\d{2}-\d{2})_(\d{6})(?:_(\d+-\d+-\d+))?$")
_DETECTOR_FIELDS = ((380, 10), (390, 18), (410, 20), (430, 20))


@dataclass(frozen=True)
class DatHeader:
    """The fields of a ``.dat`` header that reading the pixels needs.

    Attributes
    ----------
    version : int
    channels : int
        Channels stored per pixel.
    eight_bit : bool
    width, height : int
    pixel_nm : float or None
        ``None`` when the header's pixel size is not a positive number.
    detectors : tuple of str
        The name of each stored channel, in storage order.
    sample_id, machine_id : str
    """

    version: int
    channels: int
    eight_bit: bool
    width: int
    height: int
    pixel_nm: float | None
    detectors: tuple[str, ...]
    sample_id: str = ""
    machine_id: str = ""

    @property
    def data_bytes(self) -> int:
        """Bytes of pixel data after the header."""
        return self.width * self.height * self.channels * (1 if self.eight_bit else 2)


def _text(raw: bytes) -> str:
    return raw.split(b"\x00", 1)[0].decode("latin-1").strip()


def read_dat_header(path: str | Path) -> DatHeader:
    """Parse the header of a Janelia FIB-SEM ``.dat`` file.

    Parameters
    ----------
    path : path

    Returns
    -------
    DatHeader

    Raises
    ------
    StackError
        When the file is shorter than a header, has the wrong magic number, or a version
        whose layout is not known.
    """
    path = Path(path)
    with open(path, "rb") as f:
        head = f.read(HEADER_BYTES)
    if len(head) < HEADER_BYTES:
        raise StackError(f"{path}: {len(head)} bytes, shorter than the {HEADER_BYTES}-byte .dat header; "
                         "the file is truncated or not a Janelia FIB-SEM frame")
    magic, version = struct.unpack_from(">IH", head, 0)
    if magic != DAT_MAGIC:
        raise StackError(f"{path}: not a Janelia FIB-SEM .dat frame (magic number {magic}, expected {DAT_MAGIC})")
    if not 1 <= version <= MAX_VERSION:
        raise StackError(f"{path}: .dat header version {version} is not one amst knows (1..{MAX_VERSION}); "
                         "convert the frames to TIFF with the acquisition software")
    channels, eight_bit = head[32], head[33] == 1
    width, height = struct.unpack_from(">II", head, 100)
    pixel = struct.unpack_from(">d", head, 416)[0] if version <= 2 else struct.unpack_from(">f", head, 464)[0]
    enabled = [i for i in range(4) if head[151 + i]] if version >= 3 else list(range(channels))
    names = [_text(head[o:o + n]) for o, n in _DETECTOR_FIELDS]
    detectors = tuple(names[i] if i < len(names) and names[i] else f"AI{i + 1}" for i in enabled[:channels])
    detectors += tuple(f"channel {i}" for i in range(len(detectors), channels))
    if channels < 1 or width < 1 or height < 1:
        raise StackError(f"{path}: .dat header says {channels} channel(s) of {width}x{height} px; the header is damaged")
    return DatHeader(version, channels, eight_bit, width, height,
                     float(pixel) if np.isfinite(pixel) and pixel > 0 else None, detectors,
                     _text(head[155:180]) if version >= 9 else "", _text(head[800:830]) if version >= 5 else "")


def read_dat_channel(path: str | Path, header: DatHeader, channel: int) -> np.ndarray:
    """Read one channel of a ``.dat`` frame as uint16 (int16 data) or uint8 (8-bit data).

    Parameters
    ----------
    path : path
    header : its parsed header
    channel : index into the stored channels

    Returns
    -------
    numpy.ndarray
        ``(height, width)``.
    """
    path = Path(path)
    size = path.stat().st_size
    if size < HEADER_BYTES + header.data_bytes:
        raise StackError(f"{path}: {size} bytes, but its header announces {header.channels} channel(s) of "
                         f"{header.width}x{header.height} px ({HEADER_BYTES + header.data_bytes} bytes); the frame "
                         "is truncated: replace it, or pass --skip-bad to read it as blank")
    dtype = np.dtype(">u1" if header.eight_bit else ">i2")
    data = np.memmap(path, dtype=dtype, mode="r", offset=HEADER_BYTES,
                     shape=(header.height, header.width, header.channels))
    if header.eight_bit:
        plane = np.array(data[:, :, channel], dtype=np.uint8)
    else:
        # int16 v -> v + 32768 as uint16 is v's bits with the sign bit flipped: one copy, no overflow.
        plane = data[:, :, channel].astype(np.int16).view(np.uint16)
        plane ^= np.uint16(0x8000)
    del data
    return plane


def list_dat_folder(folder: Path, pattern: str | None = None) -> list[Path]:
    """The ``.dat`` frames of ``folder`` (matching ``pattern``), in acquisition order.

    Frames are ordered by the date and time in their names (``..._YY-MM-DD_HHMMSS_0-0-0.dat``);
    names without one are ordered naturally (and a warning says so).

    Raises
    ------
    StackError
        When one time stamp has several tiles: a montage, whose tiles are not slices.
    """
    pattern = pattern or f"*{DAT_SUFFIX}"
    files = [p for p in folder.iterdir()
             if p.is_file() and not p.name.startswith(".") and p.suffix.lower() == DAT_SUFFIX
             and fnmatch.fnmatch(p.name.lower(), pattern.lower())]
    stamps = {p: _STAMP.search(p.stem) for p in files}
    if files and all(stamps.values()):
        tiles: dict[tuple[str, str], list[str]] = {}
        for p, m in stamps.items():
            tiles.setdefault((m.group(1), m.group(2)), []).append(m.group(3) or "")  # type: ignore[union-attr]
        montage = {k: v for k, v in tiles.items() if len(v) > 1}
        if montage:
            key, found = next(iter(montage.items()))
            raise StackError(f"{folder}: frame {key[0]}_{key[1]} has {len(found)} tiles ({', '.join(sorted(found))}); "
                             f"a montage is not a stack: align one tile, e.g. --pattern '*_{sorted(found)[0]}.dat'")
        return sorted(files, key=lambda p: (stamps[p].group(1), stamps[p].group(2)))  # type: ignore[union-attr]
    if files:
        log.warning("%s: some .dat names carry no acquisition time stamp (_YY-MM-DD_HHMMSS); frames are taken in "
                    "natural name order", folder)
    return sorted(files, key=lambda p: natural_sort_key(p.name))


class JaneliaDatStack(Stack):
    """A Janelia FIB-SEM ``.dat`` frame, or a folder of them (one frame per slice).

    Parameters
    ----------
    path : path
        A ``.dat`` file or a folder of them.
    channel : int, optional
        Which stored detector channel to read (default 0, the first).
    pattern : str, optional
        Glob on the frame names of a folder (default ``*.dat``).
    allow_pad : bool
        Pad frames of differing size to the common canvas (bottom/right) instead of refusing.
    skip_bad : bool
        Read truncated frames as blank instead of stopping.
    """

    kind = "janelia-dat"

    def __init__(self, path: str | Path, channel: int | None = None, pattern: str | None = None,
                 allow_pad: bool = False, skip_bad: bool = False):
        self.path = Path(path)
        self.pattern = pattern or f"*{DAT_SUFFIX}"
        self.files = list_dat_folder(self.path, pattern) if self.path.is_dir() else [self.path]
        if not self.files:
            raise StackError(f"{self.path}: no .dat frame matches {self.pattern!r}; check the folder or --pattern")
        self.names = [p.name for p in self.files]
        self.headers = [read_dat_header(p) for p in self.files]
        first = self.headers[0]
        self.channel = 0 if channel is None else int(channel)
        bad_channel = [n for n, h in zip(self.names, self.headers) if not 0 <= self.channel < h.channels]
        if bad_channel:
            raise StackError(f"{self.files[0] if len(self.files) == 1 else self.path}: --channel {self.channel} does "
                             f"not exist in {bad_channel[0]}, which stores {first.channels} channel(s) "
                             f"({', '.join(f'{i}: {d}' for i, d in enumerate(first.detectors))}); choose one of them")
        if len({h.eight_bit for h in self.headers}) > 1:
            raise StackError(f"{self.path}: frames mix 8-bit and 16-bit data; convert them to one type")
        self.dtype = np.dtype(np.uint8 if first.eight_bit else np.uint16)
        shapes = [(h.height, h.width) for h in self.headers]
        canvas, self.mismatched = common_canvas(self.path, self.names, shapes, allow_pad, "frame(s)")
        self.skip_bad = skip_bad
        self.shape = (len(self.files), *canvas)  # type: ignore[assignment]
        self.voxel_size, self.voxel_size_source = self._voxel_size()
        self.voxel_axes_from_file = "yx"

    def _voxel_size(self) -> tuple[VoxelSize | None, str | None]:
        sizes = [h.pixel_nm for h in self.headers]
        px = sizes[0]
        if px is None:
            log.warning("%s: the .dat header holds no pixel size; voxel size unknown (pass --voxel-size)", self.files[0])
            return None, None
        off = [(n, s) for n, s in zip(self.names, sizes) if s is None or abs(s - px) > 0.01 * px]
        if off:
            log.warning("%s: %d frame(s) have another pixel size than %s (%g nm), e.g. %s (%s nm); %g nm is used",
                        self.path, len(off), self.names[0], px, off[0][0], off[0][1], px)
        return VoxelSize(px, px, px), "Janelia .dat header PixelSize (z taken equal: the header has no slice thickness)"

    def _read(self, z: int) -> np.ndarray:
        try:
            img = read_dat_channel(self.files[z], self.headers[z], self.channel)
        except StackError:
            if not self.skip_bad:
                raise
            log.warning("%s: slice %d is truncated; treated as missing (blank)", self.files[z], z)
            return np.zeros(self.shape[1:], dtype=self.dtype)
        return pad_to_canvas(img, self.shape[1:])

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        h = self.headers[0]
        d.update({"first": self.names[0], "last": self.names[-1], "pattern": self.pattern, "dat_version": h.version,
                  "channel": self.channel, "channel_name": h.detectors[self.channel],
                  "channels": list(h.detectors), "sample_id": h.sample_id, "machine_id": h.machine_id,
                  "shape_mismatches": [{"name": n, "shape_yx": list(s), "offset_yx": [0, 0]}
                                       for n, s in self.mismatched]})
        return d

    def provenance(self) -> dict[str, Any]:
        d = super().provenance()
        d.update({"channel": self.channel, "channel_name": self.headers[0].detectors[self.channel]})
        return d
