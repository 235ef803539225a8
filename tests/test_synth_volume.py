"""``amst synth --from-volume``: real content under the acquisition model, exact ground truth."""

import json

import numpy as np
import pytest
import tifffile
from click.testing import CliRunner

from amst.cli import main
from amst.stack import StackError, VoxelSize
from amst.synth import SynthConfig, load_ground_truth, synthesize
from amst.synth.volume import VolumeContent, volume_defaults


@pytest.fixture
def volume(tmp_path):
    """A smooth random aligned volume (ImageJ TIFF, 10 nm isotropic)."""
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(0)
    vol = gaussian_filter(rng.normal(size=(24, 96, 112)), 2.0)
    vol = ((vol - vol.min()) / np.ptp(vol) * 200 + 20).astype(np.uint8)
    path = tmp_path / "vol.tif"
    tifffile.imwrite(path, vol, imagej=True, resolution=(0.1, 0.1), metadata={"spacing": 10.0, "unit": "nm"})
    return path, vol


def test_content_is_the_source_sampled_exactly(volume):
    path, vol = volume
    content = VolumeContent(path, (24, 64, 80), 1.0, marks=False, seed=0)
    ox, oy = content.offset_xy
    assert (ox, oy) == (16.0, 16.0)
    lo, scale = content._lo, content._scale
    for z, shift in ((0, (0, 0)), (5, (3, -2))):
        m = np.array([[1.0, 0, shift[0]], [0, 1.0, shift[1]]])
        img = content.render(m, float(z), (64, 80))
        expected = (vol[z, 16 + shift[1]:80 + shift[1], 16 + shift[0]:96 + shift[0]] - lo) * scale + 0.05
        np.testing.assert_allclose(img, expected, atol=1e-4)  # cubic B-spline: exact at the samples
    # Half-way in depth: the Catmull-Rom cubic through the four nearest slices.
    mid = content.render(np.array([[1.0, 0, 0], [0, 1.0, 0]]), 5.5, (64, 80))
    src = vol[4:8, 16:80, 16:96].astype(float)
    expected = (-src[0] + 9 * src[1] + 9 * src[2] - src[3]) / 16
    np.testing.assert_allclose(mid, (expected - lo) * scale + 0.05, atol=1e-4)


def test_synth_from_volume_writes_ground_truth_and_refuses_what_does_not_fit(volume, tmp_path):
    path, _ = volume
    shape, voxel = volume_defaults(path)
    assert voxel == (10.0, 10.0, 10.0) and shape == (24, 72, 88)
    cfg = SynthConfig(shape=(30, 48, 64), preset="fibsem-marks", seed=1, voxel_size=VoxelSize(6.0, 10.0, 10.0),
                      volume=str(path), autofocus_at=(0, 29))
    doc = synthesize(tmp_path / "s", cfg, workers=1)
    gt = load_ground_truth(tmp_path / "s" / "ground_truth.json")
    assert gt["volume"]["path"] == str(path) and gt["volume"]["marks"] is True
    assert "phantom" not in gt and gt["marks_roi_xywh"] is not None
    assert gt["maps"].shape == (30, 2, 3) and {"autofocus"} <= set(doc["slices"][0]["events"])
    assert SynthConfig.from_ground_truth(gt).volume == str(path)
    raw = tifffile.imread(tmp_path / "s" / "raw" / "slice_00003.tif")
    assert raw.shape == (48, 64) and raw.dtype == np.uint8 and raw.std() > 5
    with pytest.raises(StackError, match="at most 24 slices"):
        synthesize(tmp_path / "t", SynthConfig(shape=(25, 48, 64), voxel_size=VoxelSize(10, 10, 10), volume=str(path)))
    with pytest.raises(StackError, match="do not fit"):
        synthesize(tmp_path / "u", SynthConfig(shape=(10, 100, 64), voxel_size=VoxelSize(10, 10, 10), volume=str(path)))
    assert not (tmp_path / "t").exists() and not (tmp_path / "u").exists()
    with pytest.raises(ValueError, match="--texture"):
        synthesize(tmp_path / "v", SynthConfig(shape=(10, 48, 64), volume=str(path), texture=str(path)))


def test_cli_from_volume_defaults_to_the_source_and_names_a_bad_path(volume, tmp_path):
    path, _ = volume
    r = CliRunner().invoke(main, ["synth", str(tmp_path / "c"), "--from-volume", str(path), "--workers", "1"])
    assert r.exit_code == 0, r.output
    doc = json.loads((tmp_path / "c" / "ground_truth.json").read_text())
    assert doc["shape_zyx"] == [24, 72, 88] and doc["voxel_size"]["z"] == 10.0
    r = CliRunner().invoke(main, ["synth", str(tmp_path / "d"), "--from-volume", str(tmp_path / "missing.tif")])
    assert r.exit_code != 0 and "missing.tif" in r.output
