import json

import numpy as np
import pytest
import tifffile
from hypothesis import given
from hypothesis import strategies as st

from amst.stack import StackError, VoxelSize, create_writer, natural_sort_key, open_stack
from amst.stack.tiff import list_tiff_folder

from .conftest import VS, shared_data


def _data(dtype, shape=(4, 40, 56), seed=0):
    rng = np.random.default_rng(seed)
    if dtype == np.float32:
        return rng.random(shape, dtype=np.float32)
    return rng.integers(0, np.iinfo(dtype).max, shape, dtype=dtype)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
@pytest.mark.parametrize("fmt", ["tiff", "zarr"])
def test_writer_reader_round_trip_keeps_data_dtype_and_voxel_size(tmp_path, dtype, fmt):
    data = _data(dtype)
    target = tmp_path / ("out.zarr" if fmt == "zarr" else "out")
    w = create_writer(target, fmt, data.shape, data.dtype, VS, pyramid_levels=2 if fmt == "zarr" else 1)
    for z in range(len(data)):
        w.write(z, data[z])
    w.close()
    stack = open_stack(target)
    assert stack.shape == data.shape and stack.dtype == data.dtype
    assert stack.voxel_size == VS
    for z in range(len(data)):
        np.testing.assert_array_equal(stack.read(z), data[z])


def test_tiff_writer_keeps_input_names(tmp_path):
    data = _data(np.uint8, (3, 8, 8))
    w = create_writer(tmp_path / "o", "tiff", data.shape, data.dtype, VS, names=["a_1.tif", "a_2.tiff", "a_10.tif"])
    for z in range(3):
        w.write(z, data[z])
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["a_1.tif", "a_10.tif", "a_2.tiff"]
    assert open_stack(tmp_path / "o").names == ["a_1.tif", "a_2.tiff", "a_10.tif"]


def test_ome_zarr_is_read_by_the_ome_zarr_library(tmp_path):
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader

    data = _data(np.uint16, (3, 64, 48))
    w = create_writer(tmp_path / "o.zarr", "zarr", data.shape, data.dtype, VoxelSize(10, 4, 4), pyramid_levels=3)
    for z in range(3):
        w.write(z, data[z])
    node = list(Reader(parse_url(str(tmp_path / "o.zarr")))())[0]
    np.testing.assert_array_equal(np.asarray(node.data[0]), data)
    assert [tuple(d.shape) for d in node.data] == [(3, 64, 48), (3, 32, 24), (3, 16, 12)]
    scales = [t[0]["scale"] for t in node.metadata["coordinateTransformations"]]
    assert scales == [[10, 4, 4], [10, 8, 8], [10, 16, 16]]
    assert [a["unit"] for a in node.metadata["axes"]] == ["nanometer"] * 3
    chunks = json.loads((tmp_path / "o.zarr" / "0" / ".zarray").read_text())["chunks"]
    assert chunks[0] == 1


def test_reads_ome_zarr_written_by_ome_zarr_library(tmp_path):
    import zarr
    from ome_zarr.writer import write_image

    data = _data(np.uint8, (5, 32, 32))
    group = zarr.open_group(str(tmp_path / "lib.zarr"), mode="w")
    write_image(data, group, axes="zyx", scale={"z": 0.03, "y": 0.008, "x": 0.008},
                axes_units={a: "micrometer" for a in "zyx"}, scale_factors=[2])
    stack = open_stack(tmp_path / "lib.zarr")
    np.testing.assert_array_equal(stack.read(2), data[2])
    assert np.allclose([stack.voxel_size.z, stack.voxel_size.y, stack.voxel_size.x], [30.0, 8.0, 8.0])


def test_multipage_tiff_and_imagej_voxel_size(tmp_path):
    data = _data(np.uint16, (6, 30, 20))
    tifffile.imwrite(tmp_path / "s.tif", data, imagej=True, resolution=(1 / 0.005, 1 / 0.005),
                     metadata={"unit": "um", "spacing": 0.008, "axes": "ZYX"})
    stack = open_stack(tmp_path / "s.tif")
    assert stack.shape == data.shape
    assert stack.voxel_size == VoxelSize(8.0, 5.0, 5.0) or np.allclose(
        [stack.voxel_size.z, stack.voxel_size.y, stack.voxel_size.x], [8, 5, 5])
    np.testing.assert_array_equal(stack.read(5), data[5])


def test_ome_tiff_voxel_size(tmp_path):
    data = _data(np.uint8, (3, 16, 16))
    tifffile.imwrite(tmp_path / "s.ome.tif", data, ome=True,
                     metadata={"axes": "ZYX", "PhysicalSizeX": 4.0, "PhysicalSizeXUnit": "nm",
                               "PhysicalSizeY": 4.0, "PhysicalSizeYUnit": "nm",
                               "PhysicalSizeZ": 12.0, "PhysicalSizeZUnit": "nm"})
    vs = open_stack(tmp_path / "s.ome.tif").voxel_size
    assert np.allclose([vs.z, vs.y, vs.x], [12, 4, 4])


def test_hdf5_dataset_and_zarr_array(tmp_path):
    import h5py
    import zarr

    data = _data(np.uint8, (4, 20, 24))
    with h5py.File(tmp_path / "d.h5", "w") as f:
        f.create_dataset("em/raw", data=data).attrs["element_size_um"] = (0.01, 0.005, 0.005)
        f.create_dataset("other", data=np.zeros(3))
    stack = open_stack(f"{tmp_path / 'd.h5'}:/em/raw")
    np.testing.assert_array_equal(stack.read(1), data[1])
    assert np.allclose([stack.voxel_size.z, stack.voxel_size.x], [10, 5])
    assert open_stack(tmp_path / "d.h5").shape == data.shape  # the only 3-D dataset is found
    zarr.save_array(str(tmp_path / "a.zarr"), data)
    np.testing.assert_array_equal(open_stack(tmp_path / "a.zarr").read(3), data[3])


def test_voxel_size_override(tmp_path):
    data = _data(np.uint8, (2, 8, 8))
    tifffile.imwrite(tmp_path / "s.tif", data)
    assert open_stack(tmp_path / "s.tif").voxel_size is None
    assert open_stack(tmp_path / "s.tif", voxel_size=VS).voxel_size == VS


def test_folder_natural_order_pattern_and_stray_files(tmp_path):
    for i in (10, 2, 1):
        tifffile.imwrite(tmp_path / f"s_{i}.tif", np.full((4, 4), i, np.uint8))
    tifffile.imwrite(tmp_path / "overview.tif", np.zeros((4, 4), np.uint8))
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / "Thumbs.db").write_bytes(b"\0")
    stack = open_stack(tmp_path, pattern="s_*.tif")
    assert stack.names == ["s_1.tif", "s_2.tif", "s_10.tif"]
    assert [stack.read(z)[0, 0] for z in range(3)] == [1, 2, 10]


def test_folder_with_mixed_shapes_is_reported_per_slice(tmp_path, caplog):
    tifffile.imwrite(tmp_path / "a1.tif", np.ones((10, 12), np.uint8))
    tifffile.imwrite(tmp_path / "a2.tif", np.ones((10, 14), np.uint8))
    with pytest.raises(StackError, match=r"a1.tif is 10x12.*--allow-pad"):
        open_stack(tmp_path)
    with caplog.at_level("WARNING", logger="amst.stack"):
        stack = open_stack(tmp_path, allow_pad=True)
    padded = [r.getMessage() for r in caplog.records if "padded" in r.getMessage()]
    assert len(padded) == 1 and "1 slice(s)" in padded[0] and "a1.tif (10x12)" in padded[0]
    assert "a2.tif" not in padded[0]  # the slice that defines the canvas is not padded
    assert stack.shape == (2, 10, 14)
    assert stack.read(0)[:, 12:].sum() == 0


def test_empty_or_non_matching_folder_is_a_clear_error(tmp_path):
    with pytest.raises(StackError, match="empty"):
        open_stack(tmp_path)
    (tmp_path / "x.txt").write_text("x")
    with pytest.raises(StackError, match="no TIFF file matches"):
        open_stack(tmp_path)


@given(st.lists(st.integers(0, 10**6), min_size=1, max_size=30, unique=True))
def test_natural_sort_orders_numbers_numerically(nums):
    names = [f"slice_{n}.tif" for n in nums]
    assert sorted(names, key=natural_sort_key) == [f"slice_{n}.tif" for n in sorted(nums)]


@given(st.lists(st.integers(0, 999), min_size=1, max_size=20, unique=True))
def test_natural_sort_is_independent_of_zero_padding_width(nums):
    padded = [f"img{n:04d}.tif" for n in nums]
    plain = [f"img{n}.tif" for n in nums]
    order = lambda names: [int("".join(c for c in s if c.isdigit())) for s in sorted(names, key=natural_sort_key)]  # noqa: E731
    assert order(padded) == order(plain) == sorted(nums)


def test_list_tiff_folder_ignores_hidden_partial_files(tmp_path):
    tifffile.imwrite(tmp_path / "a.tif", np.zeros((2, 2), np.uint8))
    tifffile.imwrite(tmp_path / ".a.tif.partial", np.zeros((2, 2), np.uint8))
    assert [p.name for p in list_tiff_folder(tmp_path)] == ["a.tif"]


def test_reads_real_shared_crop():
    stack = open_stack(shared_data("aligned_crops", "platynereis_organized-badger_6028098_sample_input_0.tif"))
    assert stack.shape == (32, 256, 256) and stack.dtype == np.uint8
    assert stack.read(31).std() > 10
