"""N5 in: a container written byte by byte from the N5 specification, and one written by
tensorstore in OpenOrganelle's layout (scale levels s0, s1 with ``transform`` attributes).

amst reads N5 with tensorstore; the hand-written container checks it against the
specification (https://github.com/saalfeldlab/n5, "File-system specification"): a dataset
folder with ``attributes.json`` (``dimensions`` and ``blockSize`` fastest axis first,
``dataType``, ``compression``) and one file per block at ``x/y/z``, each a big-endian header
(uint16 mode 0, uint16 number of dimensions, uint32 size per dimension) followed by the
block's samples, big-endian, x fastest.
"""

from __future__ import annotations

import json
import struct
import sys
from pathlib import Path

import numpy as np
import pytest

from amst.stack import StackError, open_stack

ts = pytest.importorskip("tensorstore")


def _write_n5_by_spec(root: Path, dataset: str, volume: np.ndarray, block_zyx: tuple[int, int, int],
                      attrs: dict) -> None:
    (root / "attributes.json").parent.mkdir(parents=True, exist_ok=True)
    (root / "attributes.json").write_text(json.dumps({"n5": "2.5.1"}))
    ds = root / dataset
    ds.mkdir(parents=True)
    z, y, x = volume.shape
    bz, by, bx = block_zyx
    (ds / "attributes.json").write_text(json.dumps({
        "dimensions": [x, y, z], "blockSize": [bx, by, bz], "dataType": str(volume.dtype),
        "compression": {"type": "raw"}, **attrs}))
    for iz in range(z // bz):
        for iy in range(y // by):
            for ix in range(x // bx):
                block = volume[iz * bz:(iz + 1) * bz, iy * by:(iy + 1) * by, ix * bx:(ix + 1) * bx]
                head = struct.pack(">HH", 0, 3) + struct.pack(">III", bx, by, bz)
                # C order of (z, y, x) is x fastest: N5's order
                path = ds / str(ix) / str(iy) / str(iz)
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(head + block.astype(volume.dtype.newbyteorder(">")).tobytes())


def test_n5_written_from_the_spec_is_read_slice_by_slice(tmp_path):
    volume = np.random.default_rng(0).integers(0, 65535, (6, 20, 30), dtype=np.uint16)
    root = tmp_path / "cell.n5"
    _write_n5_by_spec(root, "em/fibsem-uint16/s0", volume, (2, 10, 15),
                      {"pixelResolution": {"dimensions": [4.0, 4.0, 3.24], "unit": "nm"}})
    stack = open_stack(root, dataset="em/fibsem-uint16/s0")
    assert stack.kind == "n5" and stack.shape == (6, 20, 30) and stack.dtype == np.uint16
    for z in (0, 3, 5):
        np.testing.assert_array_equal(stack.read(z), volume[z])
    assert (stack.voxel_size.z, stack.voxel_size.y, stack.voxel_size.x) == pytest.approx((3.24, 4.0, 4.0))
    assert stack.voxel_size_source == "N5 attributes pixelResolution"
    same = open_stack(f"{root}:/em/fibsem-uint16/s0")
    np.testing.assert_array_equal(same.read(4), volume[4])


def test_tensorstore_n5_scale_level_chosen_by_the_user(tmp_path):
    root = tmp_path / "jrc.n5"
    full = np.random.default_rng(1).integers(0, 255, (4, 16, 24), dtype=np.uint8)
    levels = {"s0": (full, [3.0, 4.0, 4.0]), "s1": (full[:, ::2, ::2].copy(), [3.0, 8.0, 8.0])}
    for name, (data, scale) in levels.items():
        z, y, x = data.shape
        arr = ts.open({"driver": "n5", "kvstore": {"driver": "file", "path": str(root / "em" / name)},
                       "metadata": {"dimensions": [x, y, z], "blockSize": [8, 8, 2], "dataType": "uint8",
                                    "compression": {"type": "gzip"}}}, create=True).result()
        arr[...] = np.ascontiguousarray(data.transpose(2, 1, 0))
        attrs = json.loads((root / "em" / name / "attributes.json").read_text())
        attrs["transform"] = {"axes": ["z", "y", "x"], "scale": scale, "translate": [0, 0, 0],
                              "units": ["nm", "nm", "nm"]}
        (root / "em" / name / "attributes.json").write_text(json.dumps(attrs))
    s1 = open_stack(root, dataset="em/s1")
    assert s1.shape == (4, 8, 12)
    np.testing.assert_array_equal(s1.read(2), full[2, ::2, ::2])
    assert (s1.voxel_size.y, s1.voxel_size.z) == (8.0, 3.0) and s1.voxel_size_source == "N5 attributes transform"
    with pytest.raises(StackError, match=r"jrc.n5: an N5 container .* it holds em/s0, em/s1; name the scale level "
                                         r"with --dataset"):
        open_stack(root)


def test_missing_tensorstore_names_the_extra(tmp_path, monkeypatch):
    root = tmp_path / "a.n5"
    _write_n5_by_spec(root, "s0", np.zeros((2, 4, 4), np.uint8), (1, 4, 4), {})
    monkeypatch.setitem(sys.modules, "tensorstore", None)
    with pytest.raises(StackError, match=r'pip install "amst\[n5\]"'):
        open_stack(root, dataset="s0")
