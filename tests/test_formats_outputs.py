"""Outputs for viewers: OME-Zarr NGFF 0.4 (default) and 0.5, one ImageJ hyperstack TIFF, MRC runs."""

from __future__ import annotations

import json

import mrcfile
import numpy as np
import pytest
import tifffile
import zarr

import amst
from amst.config import build_config
from amst.outdir import read_ownership
from amst.stack import VoxelSize, check_output_fits, create_writer, open_stack

VS = VoxelSize(8.0, 5.0, 5.0)


def _volume(shape=(3, 24, 32)) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 255, shape, dtype=np.uint8)


def _write(path, fmt, data, **kw):
    w = create_writer(path, fmt, data.shape, data.dtype, VS, **kw)
    for z in range(len(data)):
        w.write(z, data[z])
    w.close()
    return w


def test_ngff_04_is_the_default_and_05_on_request(tmp_path):
    data = _volume()
    _write(tmp_path / "a.zarr", "zarr", data)
    v04 = json.loads((tmp_path / "a.zarr" / ".zattrs").read_text())
    assert v04["multiscales"][0]["version"] == "0.4"
    _write(tmp_path / "b.zarr", "zarr", data, ngff_version="0.5", pyramid_levels=2, provenance={"channel": 0})
    doc = json.loads((tmp_path / "b.zarr" / "zarr.json").read_text())
    assert doc["zarr_format"] == 3 and doc["attributes"]["ome"]["version"] == "0.5"
    assert doc["attributes"]["amst"] == {"channel": 0}
    group = zarr.open_group(str(tmp_path / "b.zarr"), mode="r")
    np.testing.assert_array_equal(group["0"][:], data)
    back = open_stack(tmp_path / "b.zarr")
    assert back.voxel_size == VS and back.voxel_size_source.startswith("OME-Zarr")
    np.testing.assert_array_equal(back.read(1), data[1])
    with pytest.raises(ValueError, match=r"output.ngff_version: '0.6' is not allowed"):
        create_writer(tmp_path / "c.zarr", "zarr", data.shape, data.dtype, VS, ngff_version="0.6")


def test_tiff_stack_is_one_imagej_hyperstack(tmp_path):
    data = _volume()
    path = tmp_path / "aligned.tif"
    w = create_writer(path, "tiff-stack", data.shape, data.dtype, VS, provenance={"channel": 1})
    for z in (2, 0, 1):
        create_writer(path, "tiff-stack", data.shape, data.dtype, VS, mode="a").write(z, data[z])
    assert w.has_slice(0)
    with tifffile.TiffFile(path) as tif:
        assert tif.is_imagej and len(tif.pages) == 3
        meta = tif.imagej_metadata
        assert meta["spacing"] == 8.0 and meta["unit"] == "nm" and "channel=1" in meta["Info"]
        np.testing.assert_array_equal(tif.asarray(), data)
    back = open_stack(path)
    assert back.voxel_size == VS and back.voxel_size_source == "ImageJ metadata"


def test_tiff_stack_over_4_gib_is_refused_naming_alternatives(tmp_path):
    with pytest.raises(ValueError, match=r"tiff-stack cannot hold 1100 x 2048 x 2048 uint8 .*--out-format zarr.*BigTIFF"):
        check_output_fits("tiff-stack", (1100, 2048, 2048), np.uint8)
    check_output_fits("tiff-stack", (900, 2048, 2048), np.uint8)
    check_output_fits("zarr", (1100, 2048, 2048), np.uint8)
    with pytest.raises(ValueError, match="4 GiB"):
        create_writer(tmp_path / "big.tif", "tiff-stack", (600, 2048, 2048), np.uint16, VS)
    assert not (tmp_path / "big.tif").exists()


def test_config_accepts_the_new_formats_and_refuses_mismatches():
    assert build_config(out_format="tiff-stack").output.out_format == "tiff-stack"
    assert build_config({"output": {"ngff_version": 0.5}}).output.ngff_version == "0.5"
    with pytest.raises(ValueError, match=r"output.ngff_version: 0.5 needs output.out_format zarr"):
        build_config(out_format="mrc", ngff_version="0.5")
    with pytest.raises(ValueError, match=r"output.out_format: 'n5' is not allowed"):
        build_config(out_format="n5")


@pytest.mark.parametrize("fmt,name", [("tiff-stack", "aligned.tif"), ("mrc", "aligned.mrc")])
def test_run_writes_a_single_file_output_it_owns(small_synth, tmp_path, fmt, name):
    out = tmp_path / "run"
    res = amst.align(small_synth / "raw", out, prealign="xcorr", backend="fast", workers=1, passes=1,
                     out_format=fmt, progress=False)
    assert res.output_stack == out / name and res.output_stack.is_file()
    entries = {e.name: e.kind for e in read_ownership(out).entries}
    assert entries[name] == "file"
    back = open_stack(res.output_stack)
    assert back.shape == (24, *res.transforms.canvas_shape_yx)
    assert back.voxel_size.x == pytest.approx(res.transforms.voxel_size.x)
    if fmt == "mrc":
        with mrcfile.open(res.output_stack) as mrc:
            assert float(mrc.voxel_size.x) == pytest.approx(10 * res.transforms.voxel_size.x)
    again = amst.align(small_synth / "raw", out, prealign="xcorr", backend="fast", workers=1, passes=1,
                       out_format=fmt, progress=False, overwrite=True, median_radius=3)
    assert again.output_stack.is_file()
