"""MRC in and out: amst's MRC read back by mrcfile, mrcfile's MRC read by amst, voxel size in Angstrom."""

from __future__ import annotations

import mrcfile
import numpy as np
import pytest

from amst.stack import VoxelSize, create_writer, open_stack


def test_amst_writes_mrc_that_mrcfile_reads_with_the_voxel_size(tmp_path):
    data = np.random.default_rng(0).random((4, 30, 40)).astype(np.float32)
    path = tmp_path / "aligned.mrc"
    w = create_writer(path, "mrc", data.shape, data.dtype, VoxelSize(8.0, 5.0, 4.0), provenance={"channel": 1})
    for z in (3, 0, 2, 1):        # any order, as parallel workers write
        create_writer(path, "mrc", data.shape, data.dtype, VoxelSize(8.0, 5.0, 4.0), mode="a").write(z, data[z])
    w.close()
    assert mrcfile.validate(str(path))
    with mrcfile.open(path) as mrc:
        np.testing.assert_array_equal(mrc.data, data)
        assert (float(mrc.voxel_size.x), float(mrc.voxel_size.y), float(mrc.voxel_size.z)) == pytest.approx(
            (40.0, 50.0, 80.0))
        assert b"channel=1" in mrc.header.label[0]
    back = open_stack(path)
    assert back.voxel_size == VoxelSize(8.0, 5.0, 4.0) and back.voxel_size_source.startswith("MRC header")


def test_uint8_is_written_as_mode_6_values_kept(tmp_path):
    data = np.arange(2 * 8 * 8, dtype=np.uint8).reshape(2, 8, 8) * 2
    path = tmp_path / "u8.mrc"
    w = create_writer(path, "mrc", data.shape, data.dtype, None)
    for z in range(2):
        w.write(z, data[z])
    with mrcfile.open(path) as mrc:
        assert int(mrc.header.mode) == 6
        np.testing.assert_array_equal(mrc.data, data)
    assert open_stack(path).voxel_size is None


def test_amst_reads_mrcfile_int16_volume_lazily(tmp_path):
    data = np.random.default_rng(1).integers(-3000, 3000, (5, 16, 24), dtype=np.int16)
    path = tmp_path / "tomo.rec"
    with mrcfile.new(path) as mrc:
        mrc.set_data(data)
        mrc.voxel_size = (20.0, 20.0, 30.0)
    stack = open_stack(path)
    assert stack.kind == "mrc" and stack.shape == (5, 16, 24) and stack.dtype == np.float32
    np.testing.assert_array_equal(stack.read(3), data[3].astype(np.float32))
    assert stack.voxel_size == VoxelSize(3.0, 2.0, 2.0)
