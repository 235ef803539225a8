"""transforms.json contract v2: per-slice smooth displacement fields.

Convention under test: output pixel p = (x, y) samples raw = A @ (x, y, 1) + u(p), with u
interpolated (Keys cubic, clamped) from node values in raw px (:mod:`amst.field`).
"""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import tifffile
from click.testing import CliRunner

from amst.cli import main
from amst.field import FieldGrid, dense_field, field_at
from amst.point_map import map_points, map_points_inverse
from amst.stack import VoxelSize, open_stack
from amst.transform import apply_to_points, translation
from amst.transforms_io import SliceTransform, Transforms, fields_path, load_transforms
from amst.warp import SliceMaps, warp_slice, warp_slice_with_field

VS = VoxelSize(8.0, 5.0, 5.0)
AFFINE = np.array([[0.98, 0.05, 3.2], [-0.04, 1.01, -2.1]])


def _slice(i: int, affine=None, field=None) -> SliceTransform:
    return SliceTransform(i, f"s_{i:03d}.tif", np.eye(2, 3), np.array(AFFINE if affine is None else affine, float),
                          field=field)


def _smooth_field(grid: FieldGrid, amplitude: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.uniform(-amplitude, amplitude, (*grid.shape_yx, 2))


def _constant_field(grid: FieldGrid, c) -> np.ndarray:
    return np.broadcast_to(np.asarray(c, float), (*grid.shape_yx, 2)).copy()


def _gaussians(shape=(96, 96), seed=0) -> np.ndarray:
    """A smooth image (sum of Gaussians), float32, and its analytic formula."""
    rng = np.random.default_rng(seed)
    centres = rng.uniform(10, shape[1] - 10, (12, 2))
    sigmas = rng.uniform(5, 9, 12)
    amps = rng.uniform(0.5, 1.5, 12)

    def f(x, y):
        out = np.zeros(np.shape(x))
        for (cx, cy), s, a in zip(centres, sigmas, amps):
            out += a * np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * s * s))
        return out

    ys, xs = np.mgrid[0:shape[0], 0:shape[1]].astype(float)
    return f(xs, ys).astype(np.float32), f


# -- 1. save / load round trip ------------------------------------------------------------------

def test_v2_round_trip_with_fields_on_some_slices(tmp_path):
    canvas = (40, 50)
    grid = FieldGrid.covering(canvas, 16)
    f0, f2 = _smooth_field(grid, 2.0, 1), _smooth_field(grid, 1.5, 2)
    tf = Transforms(canvas, [_slice(0, field=f0), _slice(1), _slice(2, field=f2), _slice(3)], VS,
                    input_shape_yx=(44, 52), field_grid=grid)
    path = tmp_path / "transforms.json"
    tf.save(path)

    doc = json.loads(path.read_text())
    sidecar = fields_path(path)
    assert sidecar.name == "transforms.fields.npy" and sidecar.is_file()
    assert doc["version"] == 2 and doc["fields"]["file"] == sidecar.name
    assert [s.get("field") for s in doc["slices"]] == [0, None, 1, None]

    back = load_transforms(path)
    assert back.field_grid == grid and back.has_fields
    np.testing.assert_array_equal(back.slices[0].field, f0.astype(np.float32))
    np.testing.assert_array_equal(back.slices[2].field, f2.astype(np.float32))
    assert back.slices[1].field is None and back.slices[3].field is None
    np.testing.assert_array_equal(back.affines, tf.affines)
    assert back.canvas_shape_yx == canvas and back.input_shape_yx == (44, 52)
    maps = back.maps()
    assert set(maps.fields) == {0, 2} and maps.grid == grid


def test_no_fields_saves_version_1_without_sidecar(tmp_path):
    tf = Transforms((40, 50), [_slice(0), _slice(1)], VS)
    path = tmp_path / "transforms.json"
    tf.save(path)
    doc = json.loads(path.read_text())
    assert doc["version"] == 1 and "fields" not in doc
    assert all("field" not in s for s in doc["slices"])
    assert not fields_path(path).exists()
    back = load_transforms(path)
    assert back.field_grid is None and not back.has_fields
    assert all(s.field is None for s in back.slices)


# -- 2. hand-written version 1 ------------------------------------------------------------------

def test_hand_written_v1_json_loads(tmp_path):
    doc = {"format": "amst-transforms", "version": 1, "convention": "output_xy_to_input_xy",
           "canvas": {"shape_yx": [30, 40]}, "voxel_size": None,
           "slices": [{"index": 0, "name": "a.tif", "prealign": [[1, 0, 0], [0, 1, 0]],
                       "affine": [[1, 0, 2.5], [0, 1, -1]], "status": "ok", "metrics": {}},
                      {"index": 1, "name": "b.tif", "prealign": [[1, 0, 0], [0, 1, 0]],
                       "affine": [[1, 0, 0], [0, 1, 0]], "status": "fallback", "metrics": {"ncc": 0.5}}]}
    path = tmp_path / "transforms.json"
    path.write_text(json.dumps(doc))
    tf = load_transforms(path)
    assert tf.canvas_shape_yx == (30, 40) and len(tf.slices) == 2 and tf.field_grid is None
    assert all(s.field is None for s in tf.slices) and tf.slices[1].status == "fallback"
    np.testing.assert_array_equal(tf.slices[0].affine, translation(2.5, -1))
    np.testing.assert_allclose(map_points(tf, 0, [[3.0, 4.0]]), [[5.5, 3.0]])
    assert tf.maps().fields == {}


# -- 3. sidecar integrity -----------------------------------------------------------------------

def _saved_v2(tmp_path):
    grid = FieldGrid.covering((40, 50), 16)
    tf = Transforms((40, 50), [_slice(0, field=_smooth_field(grid, 2.0, 3)), _slice(1)], VS, field_grid=grid)
    path = tmp_path / "transforms.json"
    tf.save(path)
    return path


def test_tampered_sidecar_is_refused_naming_it(tmp_path):
    path = _saved_v2(tmp_path)
    sidecar = fields_path(path)
    values = np.load(sidecar)
    values[0, 1, 2, 0] += 0.25
    buffer = io.BytesIO()
    np.save(buffer, values, allow_pickle=False)
    sidecar.write_bytes(buffer.getvalue())
    with pytest.raises(ValueError, match=r"transforms\.fields\.npy") as info:
        load_transforms(path)
    assert "checksum" in str(info.value)


def test_missing_sidecar_is_refused_naming_it(tmp_path):
    path = _saved_v2(tmp_path)
    fields_path(path).unlink()
    with pytest.raises(ValueError, match=r"transforms\.fields\.npy") as info:
        load_transforms(path)
    assert "cannot be read" in str(info.value)


# -- 4. map_points ------------------------------------------------------------------------------

def _points(n=200, seed=5, lo=0.0, hi=63.0):
    return np.random.default_rng(seed).uniform(lo, hi, (n, 2))


def test_map_points_zero_and_constant_fields():
    canvas = (64, 64)
    grid = FieldGrid.covering(canvas, 16)
    c = np.array([0.7, -0.3])
    tf = Transforms(canvas, [_slice(0, field=np.zeros((*grid.shape_yx, 2))),
                             _slice(1, field=_constant_field(grid, c)), _slice(2)], VS, field_grid=grid)
    pts = np.vstack([_points(), [[0, 0], [63, 63], [0, 63], [70.5, -4.0]]])  # edges and beyond (clamped)
    affine = apply_to_points(AFFINE, pts)
    np.testing.assert_allclose(map_points(tf, 0, pts), affine, atol=1e-12)
    np.testing.assert_allclose(map_points(tf, 1, pts), affine + c, atol=1e-12)
    np.testing.assert_allclose(map_points(tf, 2, pts), affine, atol=1e-12)


def test_map_points_applies_node_values_at_nodes():
    """At a node the field is exactly the stored node value (Keys interpolation passes through)."""
    canvas = (64, 64)
    grid = FieldGrid.covering(canvas, 16)
    values = _smooth_field(grid, 2.0, 7)
    tf = Transforms(canvas, [_slice(0, field=values)], VS, field_grid=grid)
    nodes = grid.nodes_xy().reshape(-1, 2)
    np.testing.assert_allclose(map_points(tf, 0, nodes) - apply_to_points(AFFINE, nodes),
                               values.reshape(-1, 2), atol=1e-12)
    # halfway between nodes 1 and 2 along x (node row 1): Keys weights (-1, 9, 9, -1) / 16
    mid = np.array([[1.5 * grid.spacing_px, grid.spacing_px]])
    expected = (-values[1, 0] + 9 * values[1, 1] + 9 * values[1, 2] - values[1, 3]) / 16
    np.testing.assert_allclose(map_points(tf, 0, mid) - apply_to_points(AFFINE, mid), [expected], atol=1e-12)


def test_map_points_inverse_round_trips_smooth_field(tmp_path):
    canvas = (64, 64)
    grid = FieldGrid.covering(canvas, 16)
    values = _smooth_field(grid, 2.0, 11)
    tf = Transforms(canvas, [_slice(0), _slice(1, field=values)], VS, field_grid=grid)
    path = tmp_path / "transforms.json"
    tf.save(path)
    pts = _points(300, seed=9)
    for source in (tf, path):  # a Transforms and the path of a saved v2 file
        raw = map_points(source, 1, pts)
        assert np.abs(raw - apply_to_points(AFFINE, pts)).max() > 0.5  # the field really moves points
        np.testing.assert_allclose(map_points_inverse(source, 1, raw), pts, atol=1e-4)
        np.testing.assert_allclose(map_points_inverse(source, 0, map_points(source, 0, pts)), pts, atol=1e-9)


# -- 5. warp with a field vs ground truth -------------------------------------------------------

def test_warp_constant_field_equals_shifted_affine_cubic():
    image, f = _gaussians()
    canvas = (96, 96)
    grid = FieldGrid.covering(canvas, 24)
    c = np.array([0.7, -0.3])
    field = _constant_field(grid, c)
    shifted = AFFINE.copy()
    shifted[:, 2] += c
    span = float(image.max() - image.min())
    inner = (slice(8, 84), slice(8, 84))

    direct = warp_slice_with_field(image, AFFINE, field, grid, canvas, "cubic")
    maps = SliceMaps(np.stack([AFFINE, shifted]), {0: field}, grid)
    via_maps, reference = maps.warp(0, image, canvas, "cubic"), maps.warp(1, image, canvas, "cubic")
    assert direct.dtype == np.float32 and direct.shape == canvas
    np.testing.assert_array_equal(via_maps, direct)
    np.testing.assert_allclose(direct[inner], reference[inner], atol=1e-3 * span)
    # and against the analytic image at the mapped positions
    ys, xs = np.mgrid[0:96, 0:96].astype(float)
    truth = f(AFFINE[0, 0] * xs + AFFINE[0, 1] * ys + AFFINE[0, 2] + c[0],
              AFFINE[1, 0] * xs + AFFINE[1, 1] * ys + AFFINE[1, 2] + c[1])
    np.testing.assert_allclose(direct[inner], truth[inner], atol=5e-3 * span)
    # the field must matter: ignoring it is off by far more than the tolerance
    assert np.abs(warp_slice(image, AFFINE, canvas, "cubic")[inner] - reference[inner]).max() > 20e-3 * span


def test_warp_varying_field_matches_analytic_image():
    image, f = _gaussians(seed=4)
    canvas = (96, 96)
    grid = FieldGrid.covering(canvas, 24)
    values = _smooth_field(grid, 2.0, 13)
    span = float(image.max() - image.min())
    inner = (slice(8, 84), slice(8, 84))
    ys, xs = np.mgrid[0:96, 0:96].astype(float)
    raw = map_points(Transforms(canvas, [_slice(0, field=values)], VS, field_grid=grid), 0,
                     np.stack([xs.ravel(), ys.ravel()], 1)).reshape(96, 96, 2)
    truth = f(raw[..., 0], raw[..., 1])
    for order, tol in (("cubic", 5e-3), ("linear", 3e-2)):
        out = warp_slice_with_field(image, AFFINE, values, grid, canvas, order)
        np.testing.assert_allclose(out[inner], truth[inner], atol=tol * span, err_msg=order)
    np.testing.assert_allclose(dense_field(values, grid, canvas).reshape(-1, 2),
                               field_at(values, grid, np.stack([xs.ravel(), ys.ravel()], 1)), atol=1e-12)


# -- 6. nearest keeps labels exactly ------------------------------------------------------------

@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int32, np.int64])
def test_nearest_with_field_keeps_labels(dtype):
    shape = (64, 72)
    ys, xs = np.mgrid[0:shape[0], 0:shape[1]]
    labels = ((ys // 9 + 2 * (xs // 11)) % 6).astype(dtype)
    if dtype in (np.int32, np.int64):
        labels = labels * np.array(100_003, dtype) - 7  # large / negative ids survive too
    canvas = (60, 70)
    grid = FieldGrid.covering(canvas, 16)
    values = _smooth_field(grid, 2.0, 17)
    tf = Transforms(canvas, [_slice(0, field=values)], VS, field_grid=grid)

    out = tf.maps().warp(0, labels, canvas, "nearest")
    np.testing.assert_array_equal(out, warp_slice_with_field(labels, AFFINE, values, grid, canvas, "nearest"))
    assert out.dtype == labels.dtype and out.shape == canvas
    assert set(np.unique(out).tolist()) <= set(np.unique(labels).tolist()) | {0}

    gy, gx = np.mgrid[0:canvas[0], 0:canvas[1]]
    raw = map_points(tf, 0, np.stack([gx.ravel(), gy.ravel()], 1)).reshape(*canvas, 2)
    rx, ry = np.rint(raw[..., 0]).astype(int), np.rint(raw[..., 1]).astype(int)
    tie = (np.abs(np.abs(raw - np.floor(raw)) - 0.5) < 1e-6).any(axis=-1)
    inside = (rx >= 0) & (rx < shape[1]) & (ry >= 0) & (ry < shape[0]) & ~tie
    assert inside.mean() > 0.8
    np.testing.assert_array_equal(out[inside], labels[ry[inside], rx[inside]])
    # the field is not trivial: the labels differ from an affine-only warp somewhere
    assert np.any(out != warp_slice(labels, AFFINE, canvas, "nearest"))


# -- 7. amst apply applies the field ------------------------------------------------------------

def test_cli_apply_uses_saved_field(tmp_path):
    shape, n = (48, 56), 3
    raw = tmp_path / "raw"
    raw.mkdir()
    ys, xs = np.mgrid[0:shape[0], 0:shape[1]]
    rng = np.random.default_rng(21)
    slices = []
    for z in range(n):
        img = (rng.integers(0, 60000, (8, 8)).repeat(6, 0).repeat(7, 1) + 37 * xs + 11 * ys).astype(np.uint16)
        tifffile.imwrite(raw / f"s_{z:03d}.tif", img)
        slices.append(img)

    canvas = (40, 48)
    grid = FieldGrid.covering(canvas, 12)
    c = (2.0, -1.0)  # whole pixels: nearest gives an exact expected shift
    base = [translation(3, 4), translation(2, 5), translation(4, 3)]

    def save(name, affines, fields):
        tf = Transforms(canvas, [_slice(z, affines[z], fields.get(z)) for z in range(n)], VS,
                        input_shape_yx=shape, field_grid=grid if fields else None)
        tf.save(tmp_path / name)
        return tmp_path / name

    with_field = save("transforms.json", base, {1: _constant_field(grid, c)})
    assert json.loads(with_field.read_text())["version"] == 2
    affine_only = save("affine_only.json", base, {})
    folded = save("folded.json", [base[0], base[1] + np.array([[0, 0, c[0]], [0, 0, c[1]]]), base[2]], {})

    def run(transforms, out, order):
        result = CliRunner().invoke(main, ["apply", str(transforms), str(raw), str(tmp_path / out),
                                           "--order", order, "--workers", "1"], catch_exceptions=False)
        assert result.exit_code == 0, result.output
        stack = open_stack(tmp_path / out)
        return [stack.read(z) for z in range(n)]

    fld, aff = run(with_field, "field_nearest", "nearest"), run(affine_only, "affine_nearest", "nearest")
    for z in (0, 2):
        np.testing.assert_array_equal(fld[z], aff[z])  # slices without a field: affine only
    assert fld[1].dtype == np.uint16 and np.any(fld[1] != aff[1])
    # output(x, y) = img(A(x, y) + c) = affine_only(x + 2, y - 1) for a translation A
    np.testing.assert_array_equal(fld[1][1:, :-2], aff[1][:-1, 2:])
    np.testing.assert_array_equal(fld[1], slices[1][5 - 1:5 - 1 + canvas[0], 2 + 2:2 + 2 + canvas[1]])

    # cubic: a field-carrying slice matches the affine whose translation includes the field
    fc, fo = run(with_field, "field_cubic", "cubic"), run(folded, "folded_cubic", "cubic")
    for z in range(n):
        assert np.abs(fc[z].astype(np.int64) - fo[z].astype(np.int64))[2:-2, 2:-2].max() <= 1, z
