"""Zeiss SmartSEM / Atlas 5 and Thermo Fisher (FEI) TIFFs: pixel size from the vendor tag,
the FEI data bar cropped.

Where the tag layouts come from:

* Zeiss tag 34118 (``CZ_SEM``): ASCII lines separated by CR LF; first unnamed numeric
  values, then pairs of an upper-case parameter key (``AP_IMAGE_PIXEL_SIZE``) and a line
  ``Label = value unit`` (``Image Pixel Size = 4.500 nm``; micrometres written with the
  Latin-1 micro sign, 0xB5). This is the layout Gwyddion's Zeiss SEM reader and
  tifffile's ``read_cz_sem`` parse (see tifffile's docstring, which cites the Gwyddion
  description), and the one SmartSEM and Atlas 5 write.
* FEI / Thermo Fisher tag 34682 (``FEI_HELIOS``): an INI text with ``[User]``, ``[Beam]``,
  ``[Scan]`` (``PixelWidth``/``PixelHeight`` in metres) and ``[Image]`` (``ResolutionX``/
  ``ResolutionY``: the image without the data bar that the software appends below it)
  sections, as parsed by tifffile's ``read_fei_metadata`` and HyperSpy's and
  pynxtools-em's FEI readers.
"""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
from click.testing import CliRunner

from amst.cli import main
from amst.stack import StackError, open_stack


def _zeiss_tag(pixel: str) -> bytes:
    lines = [b"0", b"0", b"0", b"AP_WD", b"WD = 5.1 mm", b"AP_IMAGE_PIXEL_SIZE", b"Image Pixel Size = " + pixel.encode("latin-1"),
             b"AP_PIXEL_SIZE", b"Pixel Size = " + pixel.encode("latin-1"), b"DP_DETECTOR_CHANNEL",
             b"Signal A = InLens", b"AP_MAG", b"Mag = 25.00 K X", b""]
    return b"\r\n".join(lines)


def _fei_tag(pixel_m: float, width: int, height: int) -> str:
    return "\r\n".join([
        "[User]", "Date=11/27/2023", "Time=03:14:15 PM", "User=supervisor",
        "[Beam]", "HV=2000", "Spot=", "[Scan]", "InternalScan=1", f"PixelWidth={pixel_m:.6e}",
        f"PixelHeight={pixel_m:.6e}", "Dwelltime=3e-06", "[Image]", "DigitalContrast=1",
        f"ResolutionX={width}", f"ResolutionY={height}", "[System]", "Type=DualBeam", "Dnumber=9922345",
        "",
    ])


def _slices(n: int, shape: tuple[int, int], seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 255, shape, dtype=np.uint8) for _ in range(n)]


def test_zeiss_folder_takes_the_pixel_size_from_tag_34118(tmp_path):
    folder = tmp_path / "zeiss"
    folder.mkdir()
    images = _slices(3, (40, 60))
    for z, img in enumerate(images):
        tifffile.imwrite(folder / f"slice_{z:04d}.tif", img, extratags=[(34118, "s", 0, _zeiss_tag("4.500 nm"), True)])
    with tifffile.TiffFile(folder / "slice_0000.tif") as tif:
        assert tif.is_sem  # tifffile recognises the layout as Zeiss SEM
    stack = open_stack(folder)
    assert stack.shape == (3, 40, 60)
    assert (stack.voxel_size.y, stack.voxel_size.x) == pytest.approx((4.5, 4.5))
    assert stack.voxel_size_source == "Zeiss SEM tag 34118 (ap_image_pixel_size)"
    np.testing.assert_array_equal(stack.read(2), images[2])
    out = CliRunner().invoke(main, ["info", str(folder)])
    assert "Zeiss SEM tag 34118 (ap_image_pixel_size)" in out.output


def test_zeiss_micrometre_unit_is_converted(tmp_path):
    path = tmp_path / "one.tif"
    tifffile.imwrite(path, _slices(1, (10, 10))[0], extratags=[(34118, "s", 0, _zeiss_tag("0.0075 \xb5m"), True)])
    assert open_stack(path).voxel_size.x == pytest.approx(7.5)


def test_fei_data_bar_is_cropped_and_pixel_width_read(tmp_path):
    folder = tmp_path / "fei"
    folder.mkdir()
    images = _slices(3, (48, 64), seed=1)
    for z, img in enumerate(images):
        page = np.vstack([img, np.full((14, 64), 255, np.uint8)])   # the data bar: 14 rows of text on white
        page[50:55, 5:40] = 0
        tifffile.imwrite(folder / f"SEM Image - SliceImage - {z + 1:03d}.tif", page,
                         extratags=[(34682, "s", 0, _fei_tag(3.5e-9, 64, 48), True)])
    with tifffile.TiffFile(folder / "SEM Image - SliceImage - 001.tif") as tif:
        assert tif.is_fei and tif.pages[0].shape == (62, 64)
    stack = open_stack(folder)
    assert stack.shape == (3, 48, 64)
    np.testing.assert_array_equal(stack.read(1), images[1])
    assert stack.voxel_size.x == pytest.approx(3.5) and stack.voxel_size_source == "FEI metadata [Scan] PixelWidth"
    assert stack.describe()["data_bar_cropped"][0] == {"name": "SEM Image - SliceImage - 001.tif", "image_rows": 48}


def test_fei_multipage_stack_is_cropped_too(tmp_path):
    images = np.stack(_slices(2, (30, 20), seed=2))
    pages = np.concatenate([images, np.full((2, 6, 20), 255, np.uint8)], axis=1)
    path = tmp_path / "fei_stack.tif"
    tifffile.imwrite(path, pages, extratags=[(34682, "s", 0, _fei_tag(1e-8, 20, 30), True)])
    stack = open_stack(path)
    assert stack.shape == (2, 30, 20) and stack.voxel_size.x == pytest.approx(10.0)
    np.testing.assert_array_equal(stack.read(1), images[1])


def test_fei_metadata_taller_than_the_page_is_refused(tmp_path):
    path = tmp_path / "edited.tif"
    tifffile.imwrite(path, _slices(1, (20, 20))[0], extratags=[(34682, "s", 0, _fei_tag(1e-8, 20, 40), True)])
    with pytest.raises(StackError, match=r"edited.tif: FEI metadata \[Image\] ResolutionY is 40 rows but the page"):
        open_stack(path)
