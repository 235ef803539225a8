import hashlib

import numpy as np
import pytest

from amst.stack import open_stack
from amst.synth import SynthConfig, load_ground_truth, synthesize
from amst.transform import compose, invert, translation
from amst.warp import warp_slice


def _unwarp(raw: np.ndarray, raw_to_volume: np.ndarray) -> np.ndarray:
    """Resample a raw slice into the volume frame: volume pixel q samples raw at G^-1(q)."""
    return warp_slice(raw.astype(np.float32), invert(raw_to_volume), raw.shape, "cubic", fill=np.nan)


@pytest.fixture(scope="module")
def ideal(tmp_path_factory):
    out = tmp_path_factory.mktemp("ideal")
    synthesize(out, SynthConfig(shape=(40, 192, 256), preset="ideal", seed=1, dtype="float32"),
               write_clean=True, workers=1)
    return out


def test_ground_truth_is_exact(ideal):
    """Unwarping raw with the ground truth reproduces the clean slice; a 0.5 px wrong map does not."""
    gt = load_ground_truth(ideal / "ground_truth.json")
    raw, clean = open_stack(ideal / "raw"), open_stack(ideal / "clean")
    errors, wrong = [], []
    for z in range(len(raw)):
        g = gt["maps"][z]
        ref = clean.read(z)
        for target, m in ((errors, g), (wrong, compose(g, translation(0.5, 0)))):
            est = _unwarp(raw.read(z), m)
            valid = np.isfinite(est)
            valid[:4], valid[-4:], valid[:, :4], valid[:, -4:] = False, False, False, False
            target.append(np.sqrt(np.mean((est[valid] - ref[valid]) ** 2)))
    # Interpolation error only (float data, no noise): a tenth of the shot noise of the
    # noisy presets (sigma ~ sqrt(0.6 / 60) = 0.1 intensity units) and far below a 0.5 px error.
    print(f"GT exactness: max RMS {max(errors):.4f}, with a 0.5 px wrong map {min(wrong):.4f}")
    assert max(errors) < 0.01, max(errors)
    assert min(wrong) > 3 * max(errors)
    assert any(s["events"] for s in gt["slices"]), "the acquisition model must include auto-focus events"


def test_ground_truth_with_noise_at_noise_level(small_synth):
    gt = load_ground_truth(small_synth / "ground_truth.json")
    raw, clean = open_stack(small_synth / "raw"), open_stack(small_synth / "clean")
    for z in (0, 11, 23):
        s = gt["slices"][z]
        est = _unwarp(raw.read(z), gt["maps"][z])
        ref = clean.read(z).astype(np.float32) * s["gain"] + (s["offset"] * 220 + 15 * (1 - s["gain"]))
        valid = np.isfinite(est)
        diff = (est - ref)[valid]
        # Shot noise at dose 60 on ~0.6 intensity: sigma ~ 0.1 * 220 ~ 22 grey levels, curtains add a little.
        noise_only = np.sqrt(np.mean(diff ** 2))
        assert 10 < noise_only < 35, noise_only


def test_same_seed_same_bytes(tmp_path):
    def digest(out):
        synthesize(out, SynthConfig(shape=(3, 64, 80), seed=7), workers=2)
        h = hashlib.sha256()
        for p in sorted((out / "raw").iterdir()):
            h.update(p.read_bytes())
        h.update((out / "ground_truth.json").read_bytes())
        return h.hexdigest()

    assert digest(tmp_path / "a") == digest(tmp_path / "b")
    synthesize(tmp_path / "c", SynthConfig(shape=(3, 64, 80), seed=8), workers=1)
    assert (tmp_path / "c" / "raw" / "slice_00000.tif").read_bytes() != (tmp_path / "a" / "raw" / "slice_00000.tif").read_bytes()


def test_presets_dtype_and_marks(tmp_path):
    synthesize(tmp_path / "u16", SynthConfig(shape=(2, 64, 64), preset="fibsem-nomarks", dtype="uint16"),
               out_format="zarr", workers=1)
    stack = open_stack(tmp_path / "u16" / "raw.zarr")
    assert stack.dtype == np.uint16 and stack.voxel_size.z == 8.0
    assert stack.read(1).max() > 255
    doc = load_ground_truth(tmp_path / "u16" / "ground_truth.json")
    assert doc["marks_roi_xywh"] is None
    with pytest.raises(ValueError, match="unknown preset"):
        synthesize(tmp_path / "x", SynthConfig(shape=(1, 8, 8), preset="nope"))


def test_cli_synth_and_info(tmp_path):
    from click.testing import CliRunner

    from amst.cli import main

    res = CliRunner().invoke(main, ["synth", str(tmp_path / "s"), "--shape", "3", "64", "64", "--workers", "1"])
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(main, ["info", str(tmp_path / "s" / "raw")])
    assert res.exit_code == 0 and "slices      3" in res.output and "z=8 y=5 x=5 nm" in res.output
    res = CliRunner().invoke(main, ["info", str(tmp_path / "nothing")])
    assert res.exit_code == 2 and "no such file" in res.output
