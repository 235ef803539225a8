"""The refinement's own noise (amst.pipeline.refine): a corrected slice is confirmed against the
noise of the measurement that confirms it, measured on calm slices with neighbours as far away."""

import numpy as np

from amst.pipeline import align
from amst.pipeline.records import Refinement
from amst.pipeline.refine import NeighbourNoise, RefinePlan, _gaps, _probe_slices
from amst.quality.ground_truth import slice_errors
from amst.stack import VoxelSize
from amst.synth import SynthConfig, load_ground_truth, synthesize

from .conftest import shared_data


def test_probe_slices_are_calm_spread_and_have_calm_neighbours_at_the_distances():
    n = 200
    usable = np.ones(n, bool)
    usable[50] = False
    needs = np.zeros(n, bool)
    needs[[10, 11, 100]] = True
    for gaps in ((1, 1), (1, 3), (2, 2)):
        probes = _probe_slices(gaps, needs, usable)
        assert 12 <= len(probes) <= 24 and probes == sorted(set(probes))
        for z in probes:
            for j in (z, z - gaps[0], z + gaps[1]):
                assert 0 <= j < n and usable[j] and not needs[j]
        assert probes[0] < 20 and probes[-1] > n - 20  # spread over the stack
    assert _probe_slices((1, 1), np.zeros(5, bool), np.ones(5, bool)) == [1, 2, 3]


def test_a_lopsided_plan_keeps_its_side():
    """The content's change with depth enters a lopsided pair's mean with the lopsidedness's
    sign: a plan two below and one above is not measured by probes one below and two above."""
    assert _gaps(20, RefinePlan((18, 21))) == (2, 1)
    assert _gaps(20, RefinePlan((19, 22))) == (1, 2)


def test_neighbour_noise_is_robust_and_needs_enough_slices():
    rng = np.random.default_rng(0)
    entries = [Refinement(z, linear_deviation=rng.normal(0, 3e-4, 4) + [1e-4, 0, 0, 0]) for z in range(24)]
    entries[3].linear_deviation = np.full(4, 0.05)  # a slice that was not calm after all
    entries.append(Refinement(99))  # its measurement failed: no deviation
    noise = NeighbourNoise.measure(entries)
    assert noise.usable and noise.count == 24
    assert np.all((noise.sigma > 1.5e-4) & (noise.sigma < 6e-4))
    assert abs(noise.centre[0] - 1e-4) < 2.5e-4
    assert not NeighbourNoise.measure(entries[:11]).usable


def test_on_real_content_the_measured_noise_confirms_the_auto_focus_corrections(tmp_path):
    """Volume seed 1 of benchmarks/real_content.py: against the median template's noise only 7
    of its 20 auto-focus slices kept a correction (median error there 0.289 px); against the
    refinement's measured noise 11 do (0.210 px), and no other slice gets one."""
    volume = shared_data("fibsem_isotropic", "flyem_medulla_250.tif")
    data = tmp_path / "volume1"
    synthesize(data, SynthConfig(shape=(415, 202, 202), preset="fibsem-marks", seed=1,
                                 voxel_size=VoxelSize(6.0, 10.0, 10.0), volume=str(volume), cap_height=0.25),
               workers=2)
    gt = load_ground_truth(data / "ground_truth.json")
    res = align(data / "raw", tmp_path / "run", prealign="tm", workers=2, progress=False)
    tf = res.transforms
    af = np.array(["autofocus" in s["events"] for s in gt["slices"]])
    applied = np.array([bool(s.metrics.get("linear_applied")) for s in tf.slices])
    noise = tf.extra["combine"]["neighbour_noise"]
    assert noise and all(entry["slices"] >= 12 for entry in noise)
    one_apart = next(entry for entry in noise if entry["gaps"] == [1, 1])
    assert np.all(np.array(one_apart["sigma"]) < np.array(tf.extra["combine"]["noise_linear"]))
    assert (applied & af).sum() >= 10 and (applied & ~af).sum() <= 1
    raw_shape = tuple(gt["shape_zyx"][1:])
    pre = slice_errors(np.array([s.prealign for s in tf.slices]), gt["maps"], tf.canvas_shape_yx, raw_shape)["rms"]
    amst = slice_errors(tf.affines, gt["maps"], tf.canvas_shape_yx, raw_shape)["rms"]
    assert np.median(amst[af]) < 0.5 * np.median(pre[af])
    assert np.mean(amst - pre > 0.1) <= 0.02
