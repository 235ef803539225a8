"""The joint refinement near distortion events (amst.joint_linear, amst.pipeline.refine): the
slices of an event and their neighbours solved together from pair registrations, with the
content's change with depth, against a pair noise measured and calibrated on calm slices."""

import numpy as np
import pytest

from amst.joint_linear import PairDeviation, solve_run, standard_scores
from amst.pipeline import align
from amst.pipeline.records import PairRegistration
from amst.pipeline.refine import EventRun, calm_windows, event_runs, pair_noise
from amst.quality.ground_truth import slice_errors
from amst.stack import VoxelSize
from amst.synth import SynthConfig, load_ground_truth, synthesize

from .conftest import shared_data

NOISE = {1: np.full(4, 4e-4), 2: np.full(4, 6e-4)}


def _pairs(truth: dict[int, np.ndarray], nodes: list[int], growth: np.ndarray, rng=None, sigma=0.0):
    out = []
    for i, s in enumerate(nodes):
        for t in nodes[i + 1:]:
            if t - s <= 2:
                dev = truth.get(s, np.zeros(4)) - truth.get(t, np.zeros(4)) + (t - s) * growth
                if rng is not None:
                    dev = dev + rng.normal(0, sigma * (1 + 0.5 * (t - s - 1)), 4)
                out.append(PairDeviation(s, t, dev))
    return out


def test_a_fading_event_is_solved_with_each_slice_its_own_distortion():
    """A three-slice event whose distortion fades: each slice's own, not the mean of its
    neighbours' (which a template made of them would pass on), and the content's change."""
    growth = np.array([2e-4, -1e-4, 5e-5, 3e-4])
    truth = {10: np.array([6e-3, 1e-3, 0, -4e-3]), 11: np.array([4e-3, 7e-4, 0, -2.8e-3]),
             12: np.array([2e-3, 3e-4, 0, -1.4e-3])}
    sol = solve_run(_pairs(truth, list(range(8, 15)), growth), [9, 10, 11, 12, 13], NOISE, significance=6)
    assert sorted(sol.deviation) == [10, 11, 12] and not sol.reason
    for z in (10, 11, 12):
        np.testing.assert_allclose(sol.deviation[z], truth[z], atol=1e-12)
    np.testing.assert_allclose(sol.motion, growth, atol=1e-12)
    assert sol.significance[9] == pytest.approx(0, abs=1e-6)  # dropped: taken as undistorted


def test_at_a_stack_end_two_anchors_on_one_side_give_the_contents_change():
    growth = np.array([1e-3, 0, 0, -1e-3])  # strong: a one-sided template would take it for a distortion
    truth = {0: np.array([5e-3, 0, 0, 5e-3]), 1: np.array([3e-3, 0, 0, 3e-3])}
    sol = solve_run(_pairs(truth, [0, 1, 2, 3, 4], growth), [0, 1, 2], NOISE, significance=6)
    assert sorted(sol.deviation) == [0, 1]
    np.testing.assert_allclose(sol.deviation[0], truth[0], atol=1e-12)
    # with one anchor the ramp along z is not determined
    bad = solve_run(_pairs(truth, [0, 1, 2], growth), [0, 1], NOISE, significance=6)
    assert bad.reason and not bad.deviation


def test_noise_alone_is_not_applied_and_an_outlier_pair_is_left_out():
    rng = np.random.default_rng(3)
    kept = 0
    for trial in range(200):
        sol = solve_run(_pairs({}, list(range(7)), np.zeros(4), rng, 4e-4), [1, 2, 3, 4, 5], NOISE, significance=6)
        kept += len(sol.deviation)
    assert kept <= 2  # 1000 undistorted unknowns
    truth = {3: np.array([4e-3, 0, 0, 4e-3])}
    pairs = _pairs(truth, list(range(7)), np.zeros(4))
    pairs[4] = PairDeviation(pairs[4].source, pairs[4].target, pairs[4].deviation + 0.02)  # a failed registration
    sol = solve_run(pairs, [2, 3, 4], NOISE, significance=6)
    assert (pairs[4].source, pairs[4].target) in sol.outliers
    assert sorted(sol.deviation) == [3]
    np.testing.assert_allclose(sol.deviation[3], truth[3], atol=1e-9)


def test_event_runs_group_seeds_with_their_neighbours_and_anchor_them():
    n = 40
    usable = np.ones(n, bool)
    usable[31] = False
    seeds = np.zeros(n, bool)
    seeds[[5, 8, 20, 30, 39]] = True
    runs, unsolved = event_runs(seeds, usable, seeds)
    got = {r.unknowns: r.anchors for r in runs}
    assert got[(4, 5, 6, 7, 8, 9)] == (3, 10)            # 5 and 8 share their run
    assert got[(19, 20, 21)] == (18, 22)
    assert got[(29, 30)] == (28, 32)                        # 31 unusable: neither unknown nor anchor
    assert got[(38, 39)] == (36, 37)                        # the last slice: two anchors below
    assert not unsolved
    assert all(t - s <= 2 for r in runs for s, t in r.pairs)
    # a long flagged stretch: only the slices the median template corrected and their neighbours
    # are unknowns, the other flagged ones anchors
    seeds[10:20] = True
    needs = np.zeros(n, bool)
    needs[[12, 14]] = True
    runs, unsolved = event_runs(seeds, usable, needs)
    long_run = next(r for r in runs if 12 in r.unknowns)
    assert long_run.unknowns == (11, 12, 13, 14, 15) and long_run.anchors == (10, 16)
    needs[[12, 14]] = False
    needs[[11, 13, 15, 17]] = True  # with their neighbours too long: those slices alone
    runs, unsolved = event_runs(seeds, usable, needs)
    assert next(r for r in runs if 11 in r.unknowns) == EventRun((11, 13, 15, 17), (10, 12, 14, 16, 18))
    seeds[:] = True
    runs, unsolved = event_runs(seeds, np.ones(n, bool), seeds)
    assert not runs and unsolved and "too long" in unsolved[0][1]


def test_pair_noise_is_calibrated_on_calm_windows():
    """Calm pairs whose content changes at a rate that varies along the stack: their raw spread
    holds that variation, which every run fits; the calibration takes it out."""
    rng = np.random.default_rng(1)
    n, sigma = 300, 3e-4
    calm = np.ones(n, bool)
    calm[[40, 41]] = False
    windows = calm_windows(calm)
    assert len(windows) == 16 and all(calm[list(w.unknowns + w.anchors)].all() for w in windows)
    growth = lambda z: np.array([1, -1, 0.5, 2]) * 2e-3 * np.sin(z / 30)
    measured = {}
    for w in windows:
        for s, t in w.pairs:
            measured[(s, t)] = PairRegistration(s, t, (t - s) * growth(s) + rng.normal(0, sigma, 4))
    noise, record = pair_noise(measured, windows, np.full(4, 1e-3))
    raw = np.std([measured[p].deviation for p in measured if p[1] - p[0] == 1], axis=0)
    assert record["source"] == "calm windows"
    assert np.all(raw > 2 * sigma)
    assert np.all((noise[1] > 0.6 * sigma) & (noise[1] < 1.6 * sigma))
    few, rec = pair_noise(measured, windows[:5], np.full(4, 1e-3))
    assert rec["source"].startswith("median template") and np.all(few[1] == 1e-3)
    scores = standard_scores([PairDeviation(s, t, measured[(s, t)].deviation) for s, t in windows[0].pairs],
                             list(windows[0].unknowns), noise)
    assert scores.shape == (3, 4)


def test_on_real_content_the_joint_refinement_fixes_the_auto_focus_slices(tmp_path):
    """Volume seed 1 of benchmarks/real_content.py: the event slices' neighbours are solved with
    them, so the fading later slices of an event are corrected too and the first ones do not
    inherit them (median error at the 20 auto-focus slices 0.210 px with the earlier
    neighbour-mean refinement, 0.107 px with the joint one), and no other slice gets worse."""
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
    noise = tf.extra["combine"]["pair_noise"]
    assert noise["source"] == "calm windows" and noise["windows"] >= 8
    for gap in (1, 2):
        assert np.all(np.isfinite(noise[f"sigma_gap{gap}"])) and np.all(np.array(noise[f"sigma_gap{gap}"]) > 0)
    assert (applied & af).sum() >= 15 and (applied & ~af).sum() <= 1
    raw_shape = tuple(gt["shape_zyx"][1:])
    pre = slice_errors(np.array([s.prealign for s in tf.slices]), gt["maps"], tf.canvas_shape_yx, raw_shape)["rms"]
    amst = slice_errors(tf.affines, gt["maps"], tf.canvas_shape_yx, raw_shape)["rms"]
    assert np.median(amst[af]) < 0.15
    assert np.mean(amst - pre > 0.1) <= 0.02
