"""Auto-focus events at the stack's ends: placing them (synth) and the template's end rules."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from amst.synth.acquisition import AcquisitionParams, autofocus_runs, simulate_acquisition
from amst.template import ends_in_pass, extended_members, sliding_templates, window_members


def test_autofocus_at_places_events_and_leaves_the_rest_of_the_acquisition_alone():
    plain = simulate_acquisition(40, (64, 64), AcquisitionParams(), seed=3)
    placed = simulate_acquisition(40, (64, 64), AcquisitionParams(autofocus_at=(0, 1, 38, 39)), seed=3)
    for z in range(40):
        if z in (0, 1, 38, 39):
            assert "autofocus" in placed[z].events
            assert np.abs(placed[z].raw_to_volume[:, :2] - np.eye(2)).max() > 1e-4
        else:
            np.testing.assert_array_equal(placed[z].raw_to_volume, plain[z].raw_to_volume)
            assert placed[z].events == plain[z].events


def test_autofocus_at_is_left_out_of_the_recorded_parameters_when_unset():
    assert "autofocus_at" not in AcquisitionParams().to_dict()
    assert AcquisitionParams(autofocus_at=(2,)).to_dict()["autofocus_at"] == (2,)
    assert autofocus_runs((99, 0, 1, 98), 100) == [[0, 1], [98, 99]]
    with pytest.raises(ValueError, match="slice 40 is outside the stack's 40 slices"):
        autofocus_runs((0, 40), 40)


def test_synth_cli_autofocus_at(tmp_path):
    from amst.cli import main

    result = CliRunner().invoke(main, ["synth", str(tmp_path / "s"), "--shape", "6", "64", "64", "--workers", "1",
                                       "--autofocus-at", "0", "5"])
    assert result.exit_code == 0, result.output
    doc = json.loads((tmp_path / "s" / "ground_truth.json").read_text())
    assert [s["index"] for s in doc["slices"] if "autofocus" in s["events"]] == [0, 5]
    assert doc["acquisition"]["autofocus_at"] == [0, 5]
    bad = CliRunner().invoke(main, ["synth", str(tmp_path / "t"), "--shape", "6", "64", "64", "--autofocus-at", "6"])
    assert bad.exit_code == 2 and "slice 6 is outside" in bad.output
    assert not (tmp_path / "t").exists()


def test_extend_is_shrink_inside_and_mirror_in_the_first_pass():
    assert ends_in_pass("extend", 1) == "mirror" and ends_in_pass("extend", 2) == "extend"
    assert ends_in_pass("shrink", 1) == "shrink"
    for z in range(20):
        assert window_members(z, 20, 7, True, "extend") == window_members(z, 20, 7, True, "shrink")
    with pytest.raises(ValueError, match="template.ends"):
        window_members(0, 20, 7, ends="both")


def test_extended_members_replace_slices_without_data_from_the_inner_side():
    valid = lambda j: j not in (0, 1, 18, 19)  # noqa: E731 - events at both ends
    assert extended_members([(0, 0)], 0, 20, 7, valid) == [(2, 2)]
    assert extended_members(window_members(2, 20, 7, True, "extend"), 2, 20, 7, valid) == [(1, 3), (2, 4), (3, 5),
                                                                                         (4, 6)]
    assert extended_members([(0, 19)], 19, 20, 7, valid) == [(-2, 17)]
    assert extended_members([(0, 0)], 0, 20, 7, lambda j: True) == [(0, 0)]  # a clean end keeps its pre-alignment
    inner = window_members(10, 20, 7, True, "extend")
    assert extended_members(inner, 10, 20, 7, valid) == inner


def test_extend_template_of_a_distorted_first_slice_is_made_of_clean_slices():
    n, shape = 12, (4, 4)
    slices = [np.full(shape, float(z), np.float32) for z in range(n)]
    slices[0][:] = np.nan  # left out (distorted)
    got = dict(sliding_templates(iter(slices), 0, n, 3, 0, 2, leave_out=True, ends="extend"))
    np.testing.assert_array_equal(got[0], 1.0)   # slice 1, the nearest with data
    np.testing.assert_array_equal(got[1], 1.0)   # clean: (0, 2) less 0 and its partner 2 -> itself
    old = dict(sliding_templates(iter(slices), 0, n, 3, 0, 2, leave_out=True, ends="shrink"))
    assert np.isnan(old[0]).all()                # shrink: no template at all, the event stays


def test_extend_keeps_the_window_of_a_clean_end_slice_centred():
    # Slices 0-2 left out (distorted, or biased by pass 1's mirror): filling the windows of the
    # clean slices 3-5 from further in put them 2.5 px off on a 36 x 256^2 stack (seed 7).
    n, shape = 20, (2, 2)
    slices = [np.full(shape, float(z), np.float32) for z in range(n)]
    for z in (0, 1, 2):
        slices[z][:] = np.nan
    got = dict(sliding_templates(iter(slices), 0, n, 7, 0, 8, leave_out=True, ends="extend"))
    np.testing.assert_array_equal(got[3], 3.0)   # (0..6) less 0-2 and their partners 4-6: itself
    np.testing.assert_array_equal(got[4], 4.0)   # 3, 5 (0-2 and 6-8 out)
    np.testing.assert_array_equal(got[5], 5.0)   # 3, 4, 6, 7
    np.testing.assert_array_equal(got[0], 3.0)   # distorted: the nearest slice with data, further in
    np.testing.assert_array_equal(got[2], 4.5)   # distorted: 3, 4 and 5, 6 for 0, 1


def test_benchmark_counts_only_interior_events_as_the_other_auto_focus_slices():
    # A random event within r of an end is an end event itself: counted among "the other
    # auto-focus slices" it inflated their median (seed 1: 0.82 px against 0.26 px interior).
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "stack_ends.py"
    spec = importlib.util.spec_from_file_location("stack_ends_bench", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    n, radius = 40, 7
    err = np.full(n, 0.1)
    af = np.zeros(n, bool)
    af[[0, 20, 35, 36, 39]] = True          # 0 and 39 placed (k = 1), 20 interior, 35-36 near the end
    err[[0, 20, 35, 36, 39]] = [0.5, 0.2, 1.5, 1.7, 0.6]
    got = bench.measure(err, af, 1, radius)
    assert got["af_other"] == pytest.approx(0.2)
    assert got["first"] == pytest.approx(0.5) and got["last"] == pytest.approx(0.6)


def test_events_on_the_first_and_last_slices_are_corrected(tmp_path):
    """With the default template.ends ("extend") and the joint refinement, events on the first
    two and the last slice are corrected, next to a random event (slices 23-25) near the end
    whose neighbour the median template flags falsely, and no event-free slice is made worse."""
    import amst
    from amst.quality.ground_truth import slice_errors
    from amst.synth import SynthConfig, load_ground_truth, synthesize

    n = 30
    data = tmp_path / "data"
    synthesize(data, SynthConfig(shape=(n, 320, 320), seed=4, autofocus_at=(0, 1, n - 1)), workers=2)
    gt = load_ground_truth(data / "ground_truth.json")
    af = np.array(["autofocus" in s["events"] for s in gt["slices"]])
    res = amst.align(data / "raw", tmp_path / "out", prealign="tm", backend="fast", workers=2, progress=False)
    assert res.config.template.ends == "extend"
    tf = res.transforms
    pre = np.array([s.prealign for s in tf.slices])
    e_pre = slice_errors(pre, gt["maps"], tf.canvas_shape_yx, (320, 320))["rms"]
    e_amst = slice_errors(tf.affines, gt["maps"], tf.canvas_shape_yx, (320, 320))["rms"]
    ends = [0, 1, n - 1]
    print("end slices TM", e_pre[ends].round(3), "AMST", e_amst[ends].round(3), "other events",
          e_amst[af & ~np.isin(np.arange(n), ends)].round(3))
    assert all(tf.slices[z].metrics["linear_applied"] for z in ends)
    # one-sided: the first slices solved with two anchors above them, which give the content's
    # change with depth
    first = tf.slices[0].metrics
    assert first["refine_run"][0] == 0 and len([a for a in first["refine_anchors"] if a > max(first["refine_run"])]) == 2
    assert tf.slices[n - 1].metrics["refine_run"][-1] == n - 1
    assert e_amst[ends].max() < 0.25 < 0.5 < e_pre[ends].min()
    assert np.sum(e_amst[~af] - e_pre[~af] > 0.1) == 0
