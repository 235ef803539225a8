"""Non-uniform auto-focus distortions in `amst synth` (amst.synth.local)."""

import json
from pathlib import Path

import numpy as np
import pytest
from scipy.ndimage import map_coordinates

from amst.synth import PRESETS, SynthConfig, _Renderer, ground_truth_points, load_ground_truth, synthesize
from amst.synth.acquisition import AcquisitionParams, simulate_acquisition
from amst.synth.local import LocalDistortion
from amst.transform import apply_to_points, invert


def _unwarp_exact(raw: np.ndarray, doc: dict, z: int, *, with_local: bool = True) -> np.ndarray:
    """Volume pixel q samples raw at the r with G(r) + d(r) = q (fixed-point iteration)."""
    h, w = raw.shape
    gy, gx = np.mgrid[0:h, 0:w].astype(np.float64)
    q = np.stack([gx.ravel(), gy.ravel()], axis=1)
    inv = invert(doc["maps"][z])
    r = apply_to_points(inv, q)
    local = doc["local"][z] if with_local else None
    if local is not None:
        for _ in range(30):
            dx, dy = local.displacement(r[:, 0], r[:, 1])
            r = apply_to_points(inv, q - np.stack([dx, dy], axis=1))
    out = map_coordinates(raw.astype(np.float64), [r[:, 1], r[:, 0]], order=3, mode="constant", cval=np.nan)
    return out.reshape(h, w)


def test_old_presets_record_no_local_parameters():
    for name in ("fibsem-marks", "fibsem-nomarks", "ideal"):
        params = AcquisitionParams(**PRESETS[name]["acquisition"])
        assert "local_probability" not in params.to_dict()
    assert AcquisitionParams(**PRESETS["fibsem-elastic"]["acquisition"]).to_dict()["local_probability"] == 1.0


def test_local_events_leave_the_rest_of_the_acquisition_unchanged():
    plain = simulate_acquisition(200, (256, 256), AcquisitionParams(), seed=5)
    local = simulate_acquisition(200, (256, 256), AcquisitionParams(local_probability=1.0), seed=5)
    hit = [z for z, a in enumerate(local) if a.local is not None]
    assert hit, "an auto-focus event every ~40 slices: some must carry a local distortion"
    for a, b in zip(plain, local):
        np.testing.assert_array_equal(a.raw_to_volume, b.raw_to_volume)
        assert a.gain == b.gain and a.offset == b.offset
        assert ("autofocus" in b.events) == ("autofocus" in a.events)
        assert (b.local is not None) == ("local" in b.events)
        if b.local is not None:
            assert "autofocus" in b.events
            assert 0.4 - 1e-9 <= b.local.amplitude_px <= 3.0 + 1e-9


VOLUME = Path(__file__).resolve().parents[2] / "shared" / "data" / "fibsem_isotropic" / "flyem_medulla_250.tif"


@pytest.mark.parametrize("content", ["phantom", "volume"])
def test_rendering_with_local_distortion_is_exact(content):
    """A raw slice rendered through affine + bump, unwarped with the exact map, is the clean
    slice (interpolation error only); unwarped with the affine alone it is not."""
    if content == "volume" and not VOLUME.exists():
        pytest.skip(f"{VOLUME} not present")
    cfg = SynthConfig(shape=(30, 160, 192), preset="ideal", seed=4, dtype="float32",
                      volume=str(VOLUME) if content == "volume" else None)
    renderer = _Renderer(cfg)
    z, m = 7, np.array([[1.004, 0.002, 1.3], [0.0, 0.995, -0.8]])
    loc = LocalDistortion((90.0, 85.0), 22.0, (2.2, -1.4))
    raw = renderer.clean(z, m, loc)
    ref = renderer.clean(z, np.array([[1.0, 0, 0], [0, 1.0, 0]])).astype(np.float64)
    doc = {"maps": np.array([m] * cfg.shape[0]), "local": [loc] * cfg.shape[0]}
    win = (slice(60, 115), slice(65, 120))
    exact = _unwarp_exact(raw, doc, z)[win] - ref[win]
    affine_only = _unwarp_exact(raw, doc, z, with_local=False)[win] - ref[win]
    plain = renderer.clean(z, m)
    floor = _unwarp_exact(plain, {"maps": doc["maps"]}, z, with_local=False)[win] - ref[win]
    e, a, f = (float(np.sqrt(np.nanmean(v ** 2))) for v in (exact, affine_only, floor))
    # With the exact map: the interpolation floor of an affine-only slice; with the affine alone: far above.
    assert e < 1.3 * f + 1e-3 and a > 3 * e, (e, a, f)
    # Far from the region the bump has decayed (> 4 sigma): both maps agree there.
    far = (slice(130, 156), slice(4, 30))
    np.testing.assert_allclose(_unwarp_exact(raw, doc, z, with_local=False)[far], _unwarp_exact(raw, doc, z)[far],
                               atol=5e-3)


def test_fibsem_elastic_preset_records_local_events(tmp_path):
    cfg = SynthConfig(shape=(60, 96, 96), preset="fibsem-elastic", seed=1, dtype="uint8", autofocus_at=(30,))
    synthesize(tmp_path, cfg, workers=1)
    doc = load_ground_truth(tmp_path / "ground_truth.json")
    af = [z for z, s in enumerate(doc["slices"]) if "autofocus" in s["events"]]
    assert af and all(doc["local"][z] is not None for z in af)
    assert all(doc["local"][z] is None for z in range(60) if z not in af)
    assert SynthConfig.from_ground_truth(doc).acquisition_params().local_probability == 1.0


def test_ground_truth_points_add_the_bump():
    doc = {"maps": np.array([[[1.0, 0, 3], [0, 1, -2]]]),
           "local": [LocalDistortion((50.0, 40.0), 10.0, (2.0, -1.0))]}
    pts = np.array([[50.0, 40.0], [50.0 + 10.0, 40.0], [500.0, 400.0]])
    out = ground_truth_points(doc, 0, pts)
    np.testing.assert_allclose(out[0], [55.0, 37.0])
    np.testing.assert_allclose(out[1], [63.0 + 2 * np.exp(-0.5), 38.0 - np.exp(-0.5)])
    np.testing.assert_allclose(out[2], [503.0, 398.0], atol=1e-12)
    # Without the "local" key (files written before local distortions): the affine only.
    np.testing.assert_allclose(ground_truth_points({"maps": doc["maps"]}, 0, pts), pts + [3.0, -2.0])


def test_unreadable_local_entry_is_refused(tmp_path):
    cfg = SynthConfig(shape=(8, 64, 64), preset="ideal", seed=0, dtype="float32", autofocus_at=(3,))
    synthesize(tmp_path, cfg, workers=1)
    path = tmp_path / "ground_truth.json"
    doc = json.loads(path.read_text())
    doc["slices"][3]["local"] = {"model": "spline", "knots": []}
    path.write_text(json.dumps(doc))
    with pytest.raises(ValueError, match="ground_truth.json: a slice's 'local' entry"):
        load_ground_truth(path)
