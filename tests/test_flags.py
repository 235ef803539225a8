"""The residual flag rule (amst.quality.flags), its record in transforms.json, the report and the printout."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from amst.quality.flags import FlagRule, ResidualFlag, record_flags, residual_flags, robust_z
from amst.transforms_io import SliceTransform, Transforms

N = 60


def _noise(seed: int = 0, sigma: float = 0.05, crops: int = 2) -> np.ndarray:
    shifts = np.random.default_rng(seed).normal(0, sigma, (crops, N, 2))
    shifts[:, 0] = np.nan  # slice 0 has no previous slice
    return shifts


def _displace(shifts: np.ndarray, z: int, d: tuple[float, float]) -> np.ndarray:
    """Slice z moved by d against the rest: its shift to z-1 gains d, the next one's loses it."""
    out = shifts.copy()
    if z > 0:
        out[:, z] += d
    if z + 1 < N:
        out[:, z + 1] -= d
    return out


def test_robust_z_uses_median_and_mad():
    assert robust_z(np.array([1.0, 2.0, 3.0, 10.0, np.nan]))[3] == pytest.approx((10 - 2.5) / (1.4826 * 1.0))
    assert np.isnan(robust_z(np.array([1.0, np.nan]))[1])
    assert robust_z(np.array([1.0, 1.0, 3.0]))[2] == np.inf


def test_clean_noise_flags_nothing():
    for seed in range(20):
        assert residual_flags(_noise(seed)) == []


def test_a_displaced_slice_is_named_and_its_neighbour_is_not():
    flags = residual_flags(_displace(_noise(), 30, (1.5, 0.0)))
    assert [(f.index, f.kind) for f in flags] == [(30, "displaced")]
    assert flags[0].jitter_residual_px == pytest.approx(1.5, abs=0.2)
    assert flags[0].robust_z > 6


@pytest.mark.parametrize("z", [0, N - 1])
def test_a_displaced_end_slice_is_named(z):
    assert [f.index for f in residual_flags(_displace(_noise(1), z, (0.0, -1.5)))] == [z]


def test_two_displaced_slices_and_a_jump():
    shifts = _noise(2)
    shifts[:, 20] += (1.2, 0.0)
    shifts[:, 22] -= (1.2, 0.0)   # slices 20 and 21 moved together
    shifts[:, 45] += (0.0, 2.0)   # every slice from 45 on moved
    flags = residual_flags(shifts)
    assert [(f.index, f.kind) for f in flags] == [(20, "displaced"), (21, "displaced"), (45, "step")]
    assert "a jump between slices 44 and 45" in flags[2].message()


def test_floor_keeps_tiny_spikes_of_a_very_clean_stack_unflagged():
    shifts = _displace(_noise(3, sigma=0.005), 30, (0.3, 0.0))
    assert robust_z(np.linalg.norm(shifts[0], axis=1))[30] > 30
    assert residual_flags(shifts) == []
    assert [f.index for f in residual_flags(shifts, FlagRule(floor_px=0.2))] == [30]


def test_spike_in_one_crop_only_is_enough_and_skip_is_respected():
    shifts = _noise(4)
    shifts[1, 30] += (1.5, 0.0)
    shifts[1, 31] -= (1.5, 0.0)
    flags = residual_flags(shifts)
    assert [(f.index, f.crop) for f in flags] == [(30, 1)]
    assert residual_flags(shifts, skip={30}) == []


def test_rule_refuses_nonsense():
    with pytest.raises(ValueError, match="z_threshold"):
        FlagRule(z_threshold=0)


def _transforms(n: int = 4) -> Transforms:
    eye = np.array([[1.0, 0, 0], [0, 1.0, 0]])
    slices = [SliceTransform(z, f"s{z}.tif", eye, eye, "ok", {}) for z in range(n)]
    slices[2].metrics["check"] = "3 NaN/inf pixel(s) (0.1 %) in the raw slice, treated as no data"
    return Transforms((8, 8), slices)


def test_record_flags_writes_check_keeps_the_runs_own_and_replaces_earlier_flags(tmp_path):
    path = tmp_path / "transforms.json"
    _transforms().save(path)
    before = path.read_bytes()
    assert record_flags(path, []) is False
    assert path.read_bytes() == before  # a run without flags keeps its bytes
    flag = ResidualFlag(2, "displaced", 0, 1.5, 1.6, 30.0)
    assert record_flags(path, [flag, ResidualFlag(1, "step", 1, 0.9, 0.9, 12.0)], pixel_nm=5.0)
    doc = json.loads(path.read_text())
    m = doc["slices"][2]["metrics"]
    assert doc["slices"][2]["status"] == "ok"
    assert m["check"].startswith("3 NaN/inf pixel(s)") and "residual stands out: jitter residual 1.50 px (7.5 nm)" in m["check"]
    assert m["residual_flag"]["jitter_residual_px"] == 1.5
    assert "residual stands out" in doc["slices"][1]["metrics"]["check"]
    assert record_flags(path, [flag], pixel_nm=5.0)  # slice 1's flag goes, slice 2's stays
    doc = json.loads(path.read_text())
    assert doc["slices"][1]["metrics"] == {}
    assert record_flags(path, [flag], pixel_nm=5.0) is False  # unchanged: not rewritten
    assert record_flags(path, [])
    assert path.read_bytes() == before


def test_record_flags_refuses_a_link(tmp_path):
    from amst.outdir import OutputError

    real = tmp_path / "elsewhere.json"
    _transforms().save(real)
    (tmp_path / "transforms.json").symlink_to(real)
    with pytest.raises(OutputError, match="symbolic link"):
        record_flags(tmp_path / "transforms.json", [ResidualFlag(1, "step", 0, 1.0, 1.0, 9.0)])


@pytest.fixture(scope="module")
def misaligned_run(tmp_path_factory):
    """A run of a small synthetic stack, then slice 17 shifted by 1.5 px and re-warped."""
    import amst
    from amst.pipeline import apply
    from amst.synth import SynthConfig, synthesize
    from amst.transforms_io import load_transforms

    base = tmp_path_factory.mktemp("flags")
    synthesize(base / "data", SynthConfig(shape=(36, 256, 256), seed=7), workers=2)
    amst.align(base / "data" / "raw", base / "run", backend="fast", workers=2, progress=False)
    tf = load_transforms(base / "run" / "transforms.json")
    tf.slices[17].affine = tf.slices[17].affine + np.array([[0, 0, 1.5], [0, 0, 0]])
    tf.save(base / "shifted.json")
    apply(base / "shifted.json", base / "data" / "raw", base / "mis" / "aligned.zarr")
    tf.extra["output"] = "aligned.zarr"
    tf.save(base / "mis" / "transforms.json")
    return base


def _true_misalignments(base, run) -> set[int]:
    """Slices that are (or whose neighbour is) more than 0.5 px off the ground truth."""
    from amst.quality.evaluate import evaluate_run

    err = np.array(evaluate_run(run, base / "data" / "ground_truth.json").per_slice["gt_rms_px"])
    bad = err > 0.5
    return set(np.flatnonzero(bad | np.r_[bad[1:], False] | np.r_[False, bad[:-1]]).tolist())


def test_flags_of_the_unmodified_run_are_real_misalignments(misaligned_run):
    from amst.quality.evaluate import evaluate_run

    ev = evaluate_run(misaligned_run / "run")
    assert {f.index for f in ev.flags} <= _true_misalignments(misaligned_run, misaligned_run / "run")


def test_misaligned_slice_is_named_in_summary_table_and_transforms(misaligned_run):
    from amst.quality.report import build_report

    run = misaligned_run / "mis"
    build_report(run)
    html_text = (run / "report" / "index.html").read_text()
    summary = html_text.split("<b>", 1)[1].split("</b>", 1)[0]
    assert "stand out in the residual" in summary and "slice 17 (1." in summary
    table = html_text.split("<h2>Flagged slices", 1)[1].split("</table>", 1)[0]
    assert "<tr><td>17</td>" in table and "residual stands out" in table
    doc = json.loads((run / "transforms.json").read_text())
    flagged = [s["index"] for s in doc["slices"] if "residual_flag" in s["metrics"]]
    assert 17 in flagged
    assert set(flagged) - {17} <= _true_misalignments(misaligned_run, misaligned_run / "run")
    assert doc["slices"][17]["status"] == "ok" and "residual stands out" in doc["slices"][17]["metrics"]["check"]


def test_run_printout_names_a_slice_left_misaligned(tmp_path, monkeypatch):
    """`amst run` prints the slice the residual flags (the registration of slice 11 is pushed 1.5 px off)."""
    import amst.pipeline.run as pipeline
    from amst.cli import main
    from amst.synth import SynthConfig, synthesize

    synthesize(tmp_path / "data", SynthConfig(shape=(30, 256, 256), seed=5), workers=1)
    combine = pipeline.combine_results

    def off_by_1_5(results, *args, **kwargs):
        summary = combine(results, *args, **kwargs)
        results[11].affine = results[11].affine + [[0, 0, 1.5], [0, 0, 0]]  # what is written
        return summary

    monkeypatch.setattr(pipeline, "combine_results", off_by_1_5)
    result = CliRunner().invoke(main, ["run", str(tmp_path / "data" / "raw"), str(tmp_path / "out"), "--backend",
                                       "fast", "--workers", "1", "--quiet"])
    assert result.exit_code == 0, result.output
    lines = [line for line in result.output.splitlines() if "inspect" in line]
    assert any(line.startswith("  slice 11 (") and "residual stands out" in line for line in lines), result.output
