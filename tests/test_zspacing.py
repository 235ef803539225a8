"""Slice thickness (#19): uneven milling in synth, depths from the images, the even z grid."""

from __future__ import annotations

import dataclasses
import json
import shutil

import numpy as np
import pytest
from click.testing import CliRunner
from scipy.ndimage import gaussian_filter

import amst
from amst.pipeline import apply
from amst.stack import VoxelSize, open_stack
from amst.synth import SynthConfig, load_ground_truth, synthesize
from amst.synth.milling import THICK, THIN, MillingParams, slice_depths
from amst.synth.phantom import Phantom, PhantomParams
from amst.transforms_io import SliceTransform, Transforms, load_transforms
from amst.zspacing import ZSpacingParams, estimate_depths
from amst.zspacing.grid import even_grid
from amst.zspacing.similarity import (
    distance_and_slope,
    falloff_in_plane,
    pooled_ncc,
    tile_stack,
)
from amst.zspacing.solve import PairDistances, solve_depths
from amst.zspacing.stackwise import grid_for


def distance_from_similarity(falloff, similarity):
    return distance_and_slope(falloff, similarity)[0]

from .conftest import noise_tiff_folder

IDENTITY = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])


# -- milling ---------------------------------------------------------------------------------

def test_slice_depths_follow_the_milling_model():
    step, params = 1.6, MillingParams(amplitude=0.3, length=12.0, events=2)
    depths, events = slice_depths(100, step, params, seed=4)
    assert depths.shape == (100,) and depths[0] == 0.0
    thickness = np.diff(depths)
    assert np.all(thickness > 0)
    assert len(events) == 2 and np.all((events >= 4) & (events <= 95))
    np.testing.assert_allclose(thickness[events], [THICK * step, THIN * step], rtol=1e-12)
    even = np.delete(thickness, events)
    assert np.all(np.abs(even / step - 1.0) <= params.amplitude + 1e-12)  # smooth part: at most +-30 %
    assert np.abs(even / step - 1.0).max() > 0.1  # and it does vary
    assert abs(thickness.mean() / step - 1.0) < 0.03
    again, again_events = slice_depths(100, step, params, seed=4)
    np.testing.assert_array_equal(again, depths)
    np.testing.assert_array_equal(again_events, events)
    assert not np.allclose(slice_depths(100, step, params, seed=5)[0], depths)


def test_milling_params_refused_outside_their_range():
    MillingParams(amplitude=0.5)  # the paper's 50 % is allowed
    with pytest.raises(ValueError, match="between 0 and 0.5"):
        MillingParams(amplitude=0.51)
    with pytest.raises(ValueError, match="between 0 and 0.5"):
        MillingParams(amplitude=-0.1)
    with pytest.raises(ValueError, match="at least 1 slice"):
        MillingParams(length=0.5)
    with pytest.raises(ValueError, match="must not be negative"):
        MillingParams(events=-1)


def test_slice_depths_without_events_or_variation():
    depths, events = slice_depths(20, 2.0, MillingParams(amplitude=0.0, events=0), seed=1)
    assert events.size == 0
    np.testing.assert_allclose(depths, np.arange(20) * 2.0)


# -- synth -----------------------------------------------------------------------------------

def test_synth_records_true_depths_only_with_z_variation(tmp_path):
    milling = MillingParams(amplitude=0.3, length=4.0, events=1)
    uneven_cfg = SynthConfig(shape=(12, 64, 64), seed=2, z_variation=milling)
    even_cfg = SynthConfig(shape=(12, 64, 64), seed=2)
    uneven = synthesize(tmp_path / "uneven", uneven_cfg, workers=1)
    even = synthesize(tmp_path / "even", even_cfg, workers=1)

    depths, events = slice_depths(12, 8.0 / 5.0, milling, seed=2)
    z_nm = [s["z_nm"] for s in uneven["slices"]]
    np.testing.assert_allclose(z_nm, depths * 5.0, rtol=1e-12)
    np.testing.assert_allclose(z_nm, uneven_cfg.depths() * uneven_cfg.voxel_size.x, rtol=1e-12)
    assert uneven["z_variation"] == milling.to_dict() and uneven["z_events"] == [int(z) for z in events]
    assert THICK * 8.0 == pytest.approx(z_nm[events[0] + 1] - z_nm[events[0]])

    # Evenly milled: no depth keys at all, depths one step apart.
    assert "z_variation" not in even and "z_events" not in even
    assert all("z_nm" not in s for s in even["slices"])
    on_disk = json.loads((tmp_path / "even" / "ground_truth.json").read_text())
    assert "z_variation" not in on_disk and all("z_nm" not in s for s in on_disk["slices"])
    np.testing.assert_allclose(even_cfg.depths(), np.arange(12) * 1.6)

    # The milling has its own random stream: the acquisition is the same, only the depths differ.
    for a, b in zip(uneven["slices"], even["slices"]):
        assert a["map"] == b["map"] and a["gain"] == b["gain"] and a["offset"] == b["offset"]
    raw_u, raw_e = open_stack(tmp_path / "uneven" / "raw"), open_stack(tmp_path / "even" / "raw")
    np.testing.assert_array_equal(raw_u.read(0), raw_e.read(0))  # slice 0 at depth 0 in both
    assert not np.array_equal(raw_u.read(11), raw_e.read(11))  # rendered at its own depth

    # from_ground_truth gives back the milling.
    back = SynthConfig.from_ground_truth(load_ground_truth(tmp_path / "uneven" / "ground_truth.json"))
    assert back.z_variation == milling
    np.testing.assert_array_equal(back.depths(), uneven_cfg.depths())
    assert SynthConfig.from_ground_truth(load_ground_truth(tmp_path / "even" / "ground_truth.json")).z_variation is None


def test_synth_cli_z_variation(tmp_path):
    from amst.cli import main

    result = CliRunner().invoke(main, ["synth", str(tmp_path / "s"), "--shape", "10", "48", "48", "--workers", "1",
                                       "--z-variation", "0.2", "--z-length", "3", "--z-events", "1"])
    assert result.exit_code == 0, result.output
    doc = json.loads((tmp_path / "s" / "ground_truth.json").read_text())
    assert doc["z_variation"] == {"amplitude": 0.2, "length": 3.0, "events": 1}
    assert len(doc["z_events"]) == 1 and len([s["z_nm"] for s in doc["slices"]]) == 10
    bad = CliRunner().invoke(main, ["synth", str(tmp_path / "t"), "--shape", "10", "48", "48",
                                    "--z-variation", "0.6"])
    assert bad.exit_code == 2 and "between 0 and 0.5" in bad.output
    assert not (tmp_path / "t").exists()


# -- similarity ------------------------------------------------------------------------------

def test_distance_from_similarity_on_an_exponential_falloff():
    length = 3.0
    falloff = np.exp(-np.arange(1, 9) / length)  # shifts 1..8
    assert distance_from_similarity(falloff, np.exp(-2.5 / length)) == pytest.approx(2.5, abs=1e-9)
    assert distance_from_similarity(falloff, np.exp(-1.0 / length)) == pytest.approx(1.0, abs=1e-9)
    assert distance_from_similarity(falloff, np.exp(-7.25 / length)) == pytest.approx(7.25, abs=1e-9)
    # Nearer than one pixel: the falloff's shape followed back towards 0 px (exact for an exponential).
    assert distance_from_similarity(falloff, np.exp(-0.7 / length)) == pytest.approx(0.7, abs=1e-6)
    assert distance_from_similarity(falloff, np.exp(-0.2 / length)) == pytest.approx(0.2, abs=1e-6)
    # At or above the falloff's value at 0 px: no distance left.
    assert distance_from_similarity(falloff, 1.0) == pytest.approx(0.0, abs=1e-6)
    assert distance_from_similarity(falloff, 1.2) == 0.0
    assert np.isnan(distance_from_similarity(falloff, float("nan")))
    # Farther than measured.
    assert distance_from_similarity(falloff, np.exp(-9.0 / length)) == float("inf")
    assert distance_from_similarity(falloff, 0.0) == float("inf")
    assert distance_from_similarity(falloff, -0.2) == float("inf")
    # The slope that comes with it: the log falloff's drop per pixel.
    d, slope = distance_and_slope(falloff, np.exp(-2.5 / length))
    assert d == pytest.approx(2.5) and slope == pytest.approx(1 / length)


def test_distance_from_similarity_uses_the_running_minimum_and_a_linear_start():
    falloff = np.array([0.8, 0.6, 0.7, 0.4])  # 0.7 at 3 px is read as 0.6
    expected = 1.0 + (np.log(0.8) - np.log(0.65)) / (np.log(0.8) - np.log(0.6))
    assert distance_from_similarity(falloff, 0.65) == pytest.approx(expected, abs=1e-12)
    assert distance_from_similarity(falloff, 0.5) == pytest.approx(3.0 + np.log(0.6 / 0.5) / np.log(0.6 / 0.4))
    # Log falloff -1, -1.5, -3 at 1, 2, 3 px: its parabola rises from 0 px, so the first segment
    # (a drop of 0.5 per px) is extended instead, and stops at 0 px.
    concave = np.exp([-1.0, -1.5, -3.0, -4.0])
    assert distance_from_similarity(concave, np.exp(-0.75)) == pytest.approx(0.5, abs=1e-9)
    assert distance_from_similarity(concave, np.exp(-0.2)) == 0.0
    assert np.isnan(distance_from_similarity(np.array([0.5, 0.6]), 0.55))  # no falling start to extend


def test_falloff_in_plane_of_a_smooth_image_decreases():
    rng = np.random.default_rng(0)
    img = gaussian_filter(rng.normal(size=(256, 256)), 2.0)
    tiles = tile_stack(img, 32)
    assert tiles.shape == (64, 32, 32)
    np.testing.assert_allclose(tiles.mean(axis=(1, 2)), 0.0, atol=1e-12)
    falloff = falloff_in_plane(tiles, 8)
    assert falloff.shape == (8,) and np.all(np.diff(falloff) < 0)
    assert 0.9 < falloff[0] < 1.0 and falloff[4] < 0.3  # a Gaussian of sigma 2: exp(-s^2 / 16)
    noise = falloff_in_plane(tile_stack(rng.normal(size=(128, 128)), 32), 3)
    assert np.all(np.abs(noise) < 0.1)  # white noise: no correlation between neighbours


def test_tile_stack_and_pooled_ncc():
    rng = np.random.default_rng(1)
    img = rng.normal(size=(70, 50))
    tiles = tile_stack(img, 16)
    assert tiles.shape == (12, 16, 16)  # 4 x 3 whole tiles, the remainder left out
    np.testing.assert_allclose(tiles[0], img[:16, :16] - img[:16, :16].mean())
    assert pooled_ncc(tiles, tiles) == pytest.approx(1.0)
    assert pooled_ncc(tiles, -tiles) == pytest.approx(-1.0)
    assert np.isnan(pooled_ncc(np.zeros_like(tiles), tiles))
    with pytest.raises(ValueError, match="holds no 16 px tile"):
        tile_stack(np.zeros((10, 40)), 16)


# -- solve -----------------------------------------------------------------------------------

def _pairs(depths: np.ndarray, gaps: tuple[int, ...], rng: np.random.Generator, noise: float):
    n = len(depths)
    first = np.array([i for g in gaps for i in range(n - g)])
    second = np.array([i + g for g in gaps for i in range(n - g)])
    distance = depths[second] - depths[first] + rng.normal(0, noise, len(first))
    return first, second, distance


def test_solve_depths_recovers_depths_and_resists_an_outlier():
    rng = np.random.default_rng(3)
    step = 1.6
    thickness = step * (1 + 0.3 * np.sin(np.arange(29) / 3.0))
    thickness[12] = 2 * step
    truth = np.r_[0.0, np.cumsum(thickness)]
    first, second, distance = _pairs(truth, (1, 2), rng, 0.01)
    bad = int(np.flatnonzero((first == 20) & (second == 21))[0])
    distance[bad] += 5 * step  # one gross outlier
    pairs = PairDistances(first, second, distance, np.full(len(distance), 0.02))

    robust = solve_depths(pairs, 30, prior_step=step)
    assert robust.depth[0] == 0.0 and robust.sd[0] == 0.0
    assert np.abs(robust.depth - truth).max() < 0.05
    assert robust.measured.all() and 0 < robust.outliers < 0.1
    assert np.all(robust.sd[1:] > 0) and np.all(np.isfinite(robust.sd))
    plain = solve_depths(pairs, 30, prior_step=step, iterations=1)  # least squares without the Huber weights
    assert np.abs(plain.depth - truth).max() > 1.0
    assert np.abs(np.diff(robust.depth)[12] - 2 * step) < 0.05


def test_solve_depths_fills_an_unmeasured_slice_by_the_prior():
    rng = np.random.default_rng(4)
    step = 2.0
    truth = np.r_[0.0, np.cumsum(step * (1 + 0.2 * rng.uniform(-1, 1, 19)))]
    first, second, distance = _pairs(truth, (1, 2), rng, 0.0)
    keep = (first != 7) & (second != 7)  # slice 7 blank: no pair, but (6, 8) is measured
    pairs = PairDistances(first[keep], second[keep], distance[keep], np.full(int(keep.sum()), 0.05))
    sol = solve_depths(pairs, 20, prior_step=step)
    assert not sol.measured[7] and sol.measured[np.arange(20) != 7].all()
    assert sol.depth[7] == pytest.approx(0.5 * (sol.depth[6] + sol.depth[8]), abs=1e-6)
    assert np.abs(np.delete(sol.depth - truth, 7)).max() < 1e-3
    assert sol.sd[7] > 10 * sol.sd[6]  # only the weak prior holds it


def test_solve_depths_refuses_bad_pairs():
    one = np.ones(1)
    for first, second in (([2], [2]), ([3], [1]), ([-1], [1]), ([0], [5])):
        with pytest.raises(ValueError, match="0 <= first < second < n"):
            solve_depths(PairDistances(np.array(first), np.array(second), one, one), 5, prior_step=1.0)
    empty = np.zeros(0)
    sol = solve_depths(PairDistances(empty.astype(int), empty.astype(int), empty, empty), 4, prior_step=1.5)
    np.testing.assert_allclose(sol.depth, [0.0, 1.5, 3.0, 4.5])
    assert not sol.measured.any()


# -- grid ------------------------------------------------------------------------------------

def test_even_grid_through_uneven_depths():
    z = np.array([0.0, 10.0, 15.0, 30.0, 32.0])
    grid = even_grid(z, 8.0)
    assert [g.index for g in grid] == [0, 1, 2, 3, 4]
    assert [g.depth_nm for g in grid] == [0.0, 8.0, 16.0, 24.0, 32.0]
    for g in grid:
        assert z[g.below] <= g.depth_nm <= z[g.below + 1]
        assert g.weight == pytest.approx((g.depth_nm - z[g.below]) / (z[g.below + 1] - z[g.below]))
        blend = g.members("cubic")
        assert sum(w for _, w in blend) == pytest.approx(1.0)
        assert sum(w * z[s] for s, w in blend) == pytest.approx(g.depth_nm)
    assert [(g.below, round(g.weight, 6)) for g in grid] == [(0, 0.0), (0, 0.8), (2, round(1 / 15, 6)),
                                                             (2, 0.6), (3, 1.0)]
    assert grid[0].members("linear") == [(0, 1.0)]
    nearest = [g.members("nearest") for g in grid]
    assert nearest == [[(0, 1.0)], [(1, 1.0)], [(2, 1.0)], [(3, 1.0)], [(4, 1.0)]]
    assert len(even_grid(z, 7.0)) == 5  # floor(32 / 7) + 1
    assert len(even_grid(np.array([0.0, 8.0, 8.0, 16.0]), 8.0)) == 3  # a repeated depth is allowed


def test_even_grid_refuses_bad_depths():
    with pytest.raises(ValueError, match="non-decreasing"):
        even_grid(np.array([0.0, 5.0, 4.0]), 1.0)
    with pytest.raises(ValueError, match="non-decreasing"):
        even_grid(np.array([0.0, np.nan, 4.0]), 1.0)
    with pytest.raises(ValueError, match="at least two"):
        even_grid(np.array([0.0]), 1.0)
    with pytest.raises(ValueError, match="must be positive"):
        even_grid(np.array([0.0, 1.0]), 0.0)


VS = VoxelSize(8.0, 5.0, 5.0)


def _transforms(z_nm, extra=None, voxel=VS) -> Transforms:
    slices = [SliceTransform(i, f"s{i}", IDENTITY, IDENTITY, z_nm=z, z_nm_sd=0.1)
              for i, z in enumerate(z_nm)]
    return Transforms((16, 16), slices, voxel, extra or {})


def test_grid_for_and_transforms_round_trip(tmp_path):
    tf = _transforms([0.0, 9.0, 15.0, 25.0], {"z_spacing": {"nominal_nm": 5.0}})
    tf.slices[2].z_nm_sd = float("nan")
    tf.save(tmp_path / "t.json")
    doc = json.loads((tmp_path / "t.json").read_text())
    assert [s["z_nm"] for s in doc["slices"]] == [0.0, 9.0, 15.0, 25.0] and doc["slices"][2]["z_nm_sd"] is None
    back = load_transforms(tmp_path / "t.json")
    np.testing.assert_array_equal(back.z_nm, [0.0, 9.0, 15.0, 25.0])
    assert back.slices[1].z_nm_sd == 0.1 and back.slices[2].z_nm_sd is None
    assert len(grid_for(back)) == 6  # the z_spacing record's nominal step, 5 nm
    assert len(grid_for(dataclasses.replace(back, extra={}))) == 4  # else the voxel size's z, 8 nm
    assert len(grid_for(back, 12.5)) == 3

    without = _transforms([0.0, 9.0, None])
    without.save(tmp_path / "w.json")
    assert "z_nm" not in json.loads((tmp_path / "w.json").read_text())["slices"][2]
    assert load_transforms(tmp_path / "w.json").z_nm is None
    with pytest.raises(ValueError, match="z_nm"):
        grid_for(without)
    with pytest.raises(ValueError, match="decrease"):
        grid_for(_transforms([0.0, 9.0, 4.0]))
    with pytest.raises(ValueError, match="nominal z step is unknown"):
        grid_for(_transforms([0.0, 9.0, 14.0], voxel=None))


# -- estimate on exact truth -----------------------------------------------------------------

N_PH, SIDE, STEP_PX, THICK_AT, BLANK_AT = 40, 256, 1.6, 20, 5


@pytest.fixture(scope="module")
def phantom_slices():
    """An aligned stack with exact depths: the phantom rendered at known depths under the identity."""
    thickness = np.full(N_PH - 1, STEP_PX)
    thickness[THICK_AT] = 2 * STEP_PX  # one double-thick slice
    depths = np.r_[0.0, np.cumsum(thickness)]
    phantom = Phantom((depths[-1] + 4, SIDE, SIDE), 5, PhantomParams(marks=False))
    return [phantom.render(IDENTITY, float(d), (SIDE, SIDE)) for d in depths]


def _check_double_thick(result):
    t = result.thickness_nm
    assert np.all(np.isfinite(result.z_nm)) and result.z_nm[0] == 0.0 and np.all(t > 0)
    assert t[THICK_AT] > 1.5 * np.median(t)
    neighbours = np.r_[t[THICK_AT - 2:THICK_AT], t[THICK_AT + 1:THICK_AT + 3]]
    assert t[THICK_AT] > 1.5 * neighbours.max()
    assert t.mean() == pytest.approx(8.0, rel=1e-9)  # calibration nominal: the mean is the nominal step


def test_estimate_finds_a_double_thick_slice(phantom_slices):
    covered = np.ones((SIDE, SIDE), bool)
    result = estimate_depths(lambda z: phantom_slices[z], N_PH, covered, nominal_nm=8.0, pixel_nm=5.0)
    _check_double_thick(result)
    assert result.measured.all() and result.summary()["unmeasured_slices"] == []
    assert result.calibration == "nominal" and 0.5 < result.isotropy_ratio < 1.5
    assert result.tiles_used >= 200 and result.tiles_used + result.tiles_static == (SIDE // 16) ** 2
    assert np.all(np.isfinite(result.sd_nm)) and result.sd_nm[0] == 0.0
    threaded = estimate_depths(lambda z: phantom_slices[z], N_PH, covered, nominal_nm=8.0, pixel_nm=5.0, workers=2)
    np.testing.assert_array_equal(threaded.z_nm, result.z_nm)
    in_plane = estimate_depths(lambda z: phantom_slices[z], N_PH, covered, nominal_nm=8.0, pixel_nm=5.0,
                               params=ZSpacingParams(calibration="in-plane"))
    np.testing.assert_allclose(in_plane.z_nm, result.z_nm * result.isotropy_ratio, rtol=1e-9)
    summary = result.summary()
    assert summary["mean_thickness_nm"] == pytest.approx(8.0) and summary["nominal_nm"] == 8.0
    json.dumps(summary)  # plain JSON types


def test_estimate_survives_a_blank_slice(phantom_slices):
    slices = list(phantom_slices)
    slices[BLANK_AT] = np.zeros((SIDE, SIDE), np.float32)
    covered = np.ones((SIDE, SIDE), bool)
    result = estimate_depths(lambda z: slices[z], N_PH, covered, nominal_nm=8.0, pixel_nm=5.0)
    _check_double_thick(result)
    assert not result.measured[BLANK_AT] and result.measured[np.arange(N_PH) != BLANK_AT].all()
    assert result.summary()["unmeasured_slices"] == [BLANK_AT]
    assert result.z_nm[BLANK_AT - 1] < result.z_nm[BLANK_AT] < result.z_nm[BLANK_AT + 1]


def test_estimate_in_plane_calibration_on_an_isotropic_volume():
    """Gaussian-smoothed 3-D noise is isotropic: the image-based step is the true one (2 px, 10 nm)."""
    rng = np.random.default_rng(1)
    volume = gaussian_filter(rng.normal(size=(84, 256, 256)).astype(np.float32), 2.0, mode="wrap")
    thickness = np.full(39, 2)
    thickness[17] = 4
    depth_px = np.r_[0, np.cumsum(thickness)]
    result = estimate_depths(lambda z: volume[depth_px[z]], 40, np.ones((256, 256), bool), nominal_nm=10.0,
                             pixel_nm=5.0, params=ZSpacingParams(tile=32, calibration="in-plane"))
    t = result.thickness_nm
    assert result.calibration == "in-plane"
    assert np.median(t) == pytest.approx(10.0, rel=0.05)
    assert t.mean() == pytest.approx(10.0 * result.isotropy_ratio, rel=1e-9)
    assert 0.93 < result.isotropy_ratio < 1.07
    assert np.argmax(t) == 17 and t[17] > 1.5 * np.median(t)
    np.testing.assert_allclose(result.z_nm, depth_px * 5.0, rtol=0.08, atol=2.0)


def test_estimate_refuses_what_it_cannot_measure():
    img = np.random.default_rng(0).normal(size=(64, 64))
    with pytest.raises(ValueError, match="voxel size"):
        estimate_depths(lambda z: img, 5, np.ones((64, 64), bool), nominal_nm=0.0, pixel_nm=5.0)
    with pytest.raises(ValueError, match="no canvas pixel is covered"):
        estimate_depths(lambda z: img, 5, np.zeros((64, 64), bool), nominal_nm=8.0, pixel_nm=5.0)
    with pytest.raises(ValueError, match="max_gap"):
        ZSpacingParams(max_gap=0)
    with pytest.raises(ValueError, match="calibration"):
        ZSpacingParams(calibration="both")


# -- pipeline --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def zdata(tmp_path_factory):
    out = tmp_path_factory.mktemp("zdata") / "data"
    synthesize(out, SynthConfig(shape=(30, 192, 192), seed=11, z_variation=MillingParams(0.2, 8.0, 2)), workers=1)
    return out


@pytest.fixture(scope="module")
def zrun(zdata, tmp_path_factory):
    out = tmp_path_factory.mktemp("zrun") / "out"
    amst.align(zdata / "raw", out, prealign="tm", backend="fast", z_spacing="resample", workers=1, progress=False)
    return out


@pytest.fixture(scope="module")
def offrun(zdata, tmp_path_factory):
    out = tmp_path_factory.mktemp("offrun") / "out"
    amst.align(zdata / "raw", out, prealign="tm", backend="fast", workers=1, progress=False)
    return out


def test_resample_run_records_depths_and_writes_an_even_grid(zrun, zdata):
    tf = load_transforms(zrun / "transforms.json")
    z = tf.z_nm
    assert z is not None and len(z) == 30 and z[0] == 0.0 and np.all(np.diff(z) > 0)
    assert all(s.z_nm_sd is not None and s.z_nm_sd >= 0 for s in tf.slices)
    record = tf.extra["z_spacing"]
    assert record["nominal_nm"] == 8.0 and record["calibration"] == "nominal"
    assert record["mean_thickness_nm"] == pytest.approx(8.0)
    assert "z_spacing" in tf.extra["timings_per_slice_s"] and "even_z" in tf.extra["timings_per_slice_s"]

    # The estimate sees the synthetic milling events.
    gt = load_ground_truth(zdata / "ground_truth.json")
    thick_event, thin_event = gt["z_events"]
    t = np.diff(z)
    assert t[thick_event] > 1.25 * np.median(t) and t[thin_event] < 0.75 * np.median(t)

    aligned = open_stack(zrun / "aligned.zarr")
    even = open_stack(zrun / "aligned_z.zarr")
    grid = even_grid(z, 8.0)
    assert even.shape == (len(grid), *aligned.shape[1:]) and even.dtype == aligned.dtype
    assert even.voxel_size.z == 8.0
    # Output slice 0 sits on aligned slice 0 exactly.
    np.testing.assert_array_equal(even.read(0), aligned.read(0))


def test_off_run_has_no_depths_and_no_even_output(offrun, zrun):
    doc = json.loads((offrun / "transforms.json").read_text())
    assert all("z_nm" not in s for s in doc["slices"]) and "z_spacing" not in doc
    assert load_transforms(offrun / "transforms.json").z_nm is None
    assert not (offrun / "aligned_z.zarr").exists()
    # The z spacing does not touch the alignment.
    np.testing.assert_array_equal(load_transforms(offrun / "transforms.json").affines,
                                  load_transforms(zrun / "transforms.json").affines)


def test_apply_resample_reproduces_the_run_bit_for_bit(zrun, zdata, tmp_path):
    out2 = apply(zrun / "transforms.json", zdata / "raw", tmp_path / "again.zarr", z_spacing="resample",
                 order="cubic", workers=1, progress=False)
    mine, theirs = open_stack(out2), open_stack(zrun / "aligned_z.zarr")
    assert mine.shape == theirs.shape and mine.dtype == theirs.dtype
    np.testing.assert_array_equal(np.stack([mine.read(k) for k in range(len(mine))]),
                                  np.stack([theirs.read(k) for k in range(len(theirs))]))

    # Labels: nearest takes the nearer aligned slice, whole.
    tf = load_transforms(zrun / "transforms.json")
    labels = apply(zrun / "transforms.json", zdata / "raw", tmp_path / "labels_z", z_spacing="resample",
                   order="nearest", workers=1, progress=False)
    plain = apply(zrun / "transforms.json", zdata / "raw", tmp_path / "labels", order="nearest", workers=1,
                  progress=False)
    labels, plain = open_stack(labels), open_stack(plain)
    grid = grid_for(tf)
    assert len(labels) == len(grid) and labels.names[0] == "z_00000.tif"
    for cell in grid:
        (source, _), = cell.members("nearest")
        np.testing.assert_array_equal(labels.read(cell.index), plain.read(source))


def test_apply_resample_needs_depths(offrun, zdata, tmp_path):
    with pytest.raises(ValueError, match="z_nm"):
        apply(offrun / "transforms.json", zdata / "raw", tmp_path / "x.zarr", z_spacing="resample", progress=False)
    assert not (tmp_path / "x.zarr").exists()
    with pytest.raises(ValueError, match="z_spacing"):
        apply(offrun / "transforms.json", zdata / "raw", tmp_path / "y.zarr", z_spacing="estimate", progress=False)


def test_zspacing_cli_on_a_finished_run_matches_the_run_estimate(offrun, zrun, zdata, tmp_path):
    from amst.cli import main

    copy = tmp_path / "run"
    shutil.copytree(offrun, copy)
    result = CliRunner().invoke(main, ["zspacing", str(copy), "--workers", "1"])
    assert result.exit_code == 0, result.output
    assert "mean thickness 8.00 nm" in result.output
    tf = load_transforms(copy / "transforms.json")
    np.testing.assert_allclose(tf.z_nm, load_transforms(zrun / "transforms.json").z_nm, rtol=0, atol=1e-9)
    np.testing.assert_array_equal(tf.affines, load_transforms(offrun / "transforms.json").affines)
    # and `amst apply --z-spacing resample` now works on it
    result = CliRunner().invoke(main, ["apply", str(copy / "transforms.json"), str(zdata / "raw"),
                                       str(tmp_path / "even"), "--z-spacing", "resample", "--workers", "1"])
    assert result.exit_code == 0, result.output
    even = open_stack(tmp_path / "even")
    reference = open_stack(zrun / "aligned_z.zarr")
    assert even.shape == reference.shape
    np.testing.assert_array_equal(even.read(len(even) - 1), reference.read(len(reference) - 1))

    bad = CliRunner().invoke(main, ["zspacing", str(zdata)])
    assert bad.exit_code != 0 and "not a finished `amst run` output folder" in bad.output


def test_z_spacing_needs_a_voxel_size_before_out_is_written(tmp_path):
    raw = noise_tiff_folder(tmp_path / "raw", 5, (64, 64))
    assert open_stack(raw).voxel_size is None
    with pytest.raises(ValueError, match="no voxel size"):
        amst.align(raw, tmp_path / "out", prealign="tm", backend="fast", z_spacing="estimate", workers=1,
                   progress=False)
    assert not (tmp_path / "out").exists()
    with pytest.raises(ValueError, match="z_spacing"):
        amst.align(raw, tmp_path / "out2", prealign="tm", backend="fast", z_spacing="sometimes", workers=1,
                   progress=False)
    assert not (tmp_path / "out2").exists()


def test_estimate_warns_when_the_content_changes_faster_than_the_falloff_measures(caplog):
    """Every other slice pure noise: most pairs read no distance, and the run says so; all noise: refused."""
    rng = np.random.default_rng(3)
    volume = gaussian_filter(rng.normal(size=(24, 128, 128)), sigma=(2.0, 2.0, 2.0)).astype(np.float32)
    slices = volume[::2].copy()
    slices[1::2] = rng.normal(size=slices[1::2].shape).astype(np.float32)
    with caplog.at_level("WARNING", logger="amst.zspacing.estimate"):
        result = estimate_depths(lambda z: slices[z], len(slices), np.ones((128, 128), bool), nominal_nm=8.0,
                                 pixel_nm=4.0)
    assert result.summary()["unreadable_pairs"] > 0.5
    assert "could not be read as a distance" in caplog.text
    noise = rng.normal(size=(12, 128, 128)).astype(np.float32) + 10.0
    with pytest.raises(ValueError, match="could be read as a distance"):
        estimate_depths(lambda z: noise[z], len(noise), np.ones((128, 128), bool), nominal_nm=8.0, pixel_nm=5.0)


def test_transforms_refuse_to_save_a_depth_that_is_not_finite(tmp_path):
    s = SliceTransform(0, "s0", np.eye(2, 3), np.eye(2, 3), z_nm=float("nan"))
    with pytest.raises(ValueError, match="z_nm"):
        Transforms((4, 4), [s]).save(tmp_path / "t.json")
    assert not (tmp_path / "t.json").exists()


def test_a_z_spacing_run_folder_resumes_changes_mode_and_overwrites(zdata, tmp_path):
    """The report's thickness plot and the even-z TIFFs stay amst's: the same command resumes, a run
    without resample removes the earlier even-z output (its depths are gone) without re-registering,
    `amst zspacing` refuses a folder with an even-z output, and --overwrite clears everything."""
    from amst.cli import main
    from amst.outdir import read_ownership, unknown_files
    from amst.quality.report import build_report

    out = tmp_path / "run"
    common = dict(prealign="tm", backend="fast", workers=1, progress=False, out_format="tiff")
    amst.align(zdata / "raw", out, z_spacing="resample", **common)
    build_report(out)
    assert (out / "report" / "z_spacing.png").is_file() and (out / "aligned_z").is_dir()
    assert unknown_files(out, read_ownership(out)) == []

    again = amst.align(zdata / "raw", out, z_spacing="resample", **common)
    assert again.recomputed_per_pass[:-1] == [0, 0] and (out / "aligned_z").is_dir()
    assert unknown_files(out, read_ownership(out)) == []

    result = CliRunner().invoke(main, ["zspacing", str(out)])
    assert result.exit_code != 0 and "aligned_z" in result.output

    off = amst.align(zdata / "raw", out, z_spacing="off", **common)
    assert off.recomputed_per_pass[:-1] == [0, 0]
    assert not (out / "aligned_z").exists() and load_transforms(out / "transforms.json").z_nm is None
    assert unknown_files(out, read_ownership(out)) == []

    amst.align(zdata / "raw", out, z_spacing="estimate", overwrite=True, median_radius=5, **common)
    assert load_transforms(out / "transforms.json").z_nm is not None


def test_apply_resample_writes_the_grid_step_as_the_z_voxel_size(zrun, zdata, tmp_path):
    out = apply(zrun / "transforms.json", zdata / "raw", tmp_path / "even.zarr", z_spacing="resample",
                voxel_size=VoxelSize(9.0, 5.0, 5.0), progress=False)
    vs = open_stack(out).voxel_size
    assert vs.z == pytest.approx(load_transforms(zrun / "transforms.json").extra["z_spacing"]["nominal_nm"])
    assert (vs.y, vs.x) == (5.0, 5.0)


def test_z_spacing_refuses_pixels_that_are_not_square(zrun):
    from amst.zspacing.stackwise import estimate_stack_depths

    aligned = open_stack(zrun / "aligned.zarr")
    with pytest.raises(ValueError, match="not square"):
        estimate_stack_depths(aligned, VoxelSize(8.0, 6.0, 5.0), ZSpacingParams())


def test_remove_entry_and_mark_incomplete_touch_only_what_amst_wrote(tmp_path):
    """The two removals the even-z output needs: one entry of a folder, proven amst's first, and the
    result file whose presence says a run is complete; a user's file or a link is never followed."""
    from amst.outdir import OutputError, OwnedEntry, Ownership, mark_incomplete, read_ownership, remove_entry, \
        write_ownership

    out = tmp_path / "run"
    (out / "aligned_z").mkdir(parents=True)
    (out / "aligned_z" / "z_00000.tif").write_bytes(b"amst")
    (out / "transforms.json").write_text("{}")
    entry = OwnedEntry("aligned_z", "tiff", ("z_00000.tif",))
    write_ownership(out, Ownership("run", [OwnedEntry("transforms.json", "file"), entry], complete=True))

    (out / "aligned_z" / "mine.tif").write_bytes(b"user")  # a user's file inside the entry: nothing removed
    with pytest.raises(OutputError, match="mine.tif"):
        remove_entry(out, entry)
    assert (out / "aligned_z" / "z_00000.tif").exists() and (out / "aligned_z" / "mine.tif").exists()
    (out / "aligned_z" / "mine.tif").unlink()
    remove_entry(out, entry)
    assert not (out / "aligned_z").exists() and (out / "transforms.json").exists()
    with pytest.raises(ValueError, match="single output entry"):
        remove_entry(out, OwnedEntry(".amst", "state"))

    elsewhere = tmp_path / "user_transforms.json"
    elsewhere.write_text("keep")
    (out / "transforms.json").unlink()
    (out / "transforms.json").symlink_to(elsewhere)
    mark_incomplete(out, "transforms.json")
    assert not read_ownership(out).complete
    assert not (out / "transforms.json").is_symlink() and elsewhere.read_text() == "keep"

    (out / "notes.json").write_text("user")  # not one of the marker's entries: left alone
    mark_incomplete(out, "notes.json")
    assert (out / "notes.json").read_text() == "user"
