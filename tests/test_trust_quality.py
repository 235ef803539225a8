"""Issue 14, items 10 (evaluate part) and 12: foreign ground truth, NaN pixels, missing keys."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from amst.imageops import nonfinite_count
from amst.quality.evaluate import evaluate_run
from amst.quality.ground_truth import slice_errors
from amst.quality.report import build_report
from amst.quality.residual import Crop, sweep
from amst.stack import StackError, create_writer, open_stack
from amst.synth import SynthConfig, synthesize
from amst.transforms_io import SliceTransform, Transforms


def _synth(path: Path, shape: tuple[int, int, int], dtype: str = "uint8") -> Path:
    synthesize(path, SynthConfig(shape=shape, seed=4, dtype=dtype), workers=1)
    return path


def _run_folder(raw: Path, run: Path, holes: dict[int, tuple[slice, slice]] | None = None,
                record_input: bool = True) -> Path:
    """A run folder as ``amst run`` writes it (transforms.json + aligned.zarr), built directly:
    the raw slices at the identity, with NaN written into ``holes`` (slice -> region)."""
    stack = open_stack(raw)
    n, h, w = stack.shape
    writer = create_writer(run / "aligned.zarr", "zarr", stack.shape, stack.dtype, stack.voxel_size)
    for z in range(n):
        img = stack.read(z)
        if holes and z in holes:
            img = img.copy()
            img[holes[z]] = np.nan
        writer.write(z, img)
    eye = np.array([[1.0, 0, 0], [0, 1.0, 0]])
    slices = [SliceTransform(z, stack.slice_name(z), eye, eye) for z in range(n)]
    extra = {"output": "aligned.zarr"}
    if record_input:
        extra["input"] = {"shape_yx": [h, w]}
    Transforms((h, w), slices, stack.voxel_size, extra).save(run / "transforms.json")
    return run


@pytest.fixture(scope="module")
def twenty(tmp_path_factory) -> Path:
    """A 20-slice 256x256 synthetic stack and a run folder of it."""
    base = tmp_path_factory.mktemp("trust20")
    _synth(base / "data", (20, 256, 256))
    _run_folder(base / "data" / "raw", base / "run")
    return base


# --- item 10: evaluate refuses another stack's ground truth -------------------------------------

@pytest.mark.parametrize("depth", [30, 12])
def test_evaluate_refuses_truth_with_another_slice_count(twenty, tmp_path, depth):
    other = _synth(tmp_path / "other", (depth, 256, 256)) / "ground_truth.json"
    with pytest.raises(ValueError) as info:
        evaluate_run(twenty / "run", other)
    msg = str(info.value)
    assert str(other) in msg and str(twenty / "run" / "transforms.json") in msg
    assert f"the truth has {depth} slices, the run 20" in msg


def test_evaluate_refuses_truth_of_another_slice_shape(twenty, tmp_path):
    other = _synth(tmp_path / "other", (20, 128, 160)) / "ground_truth.json"
    with pytest.raises(ValueError, match=r"truth's slices are 128x160 px \(y x\), the run's input slices 256x256 px"):
        evaluate_run(twenty / "run", other)


def test_evaluate_refuses_truth_whose_slice_names_differ(twenty, tmp_path):
    doc = json.loads((twenty / "data" / "ground_truth.json").read_text())
    doc["slices"][7]["name"] = "other_0007.tif"
    renamed = tmp_path / "ground_truth.json"
    renamed.write_text(json.dumps(doc))
    with pytest.raises(ValueError, match=r"slice 7 is 'slice_00007.tif' in the run but 'other_0007.tif' in the truth"):
        evaluate_run(twenty / "run", renamed)


def test_evaluate_accepts_its_own_truth(twenty):
    ev = evaluate_run(twenty / "run", twenty / "data" / "ground_truth.json", crop_size=96)
    assert len(ev.per_slice["gt_rms_px"]) == 20
    assert np.isfinite(ev.summary["ground_truth"]["rms_px_median"])


def test_ground_truth_errors_refuse_maps_of_another_length():
    eye = np.tile(np.array([[1.0, 0, 0], [0, 1.0, 0]]), (5, 1, 1))
    with pytest.raises(ValueError, match="5 alignment affines but 3 ground-truth maps"):
        slice_errors(eye, eye[:3], (64, 64), (64, 64))


def test_report_refuses_another_stacks_truth(twenty, tmp_path):
    other = _synth(tmp_path / "other", (12, 256, 256)) / "ground_truth.json"
    with pytest.raises(ValueError, match="the truth has 12 slices, the run 20"):
        build_report(twenty / "run", other)


# --- item 12: NaN / inf pixels in the aligned output ---------------------------------------------

@pytest.fixture(scope="module")
def nan_run(tmp_path_factory) -> Path:
    """A float32 run whose slices 8-10 have a NaN hole covering both crops, slice 14 a few
    NaN and inf pixels (measured without them) and slice 17 is almost all NaN."""
    base = tmp_path_factory.mktemp("trustnan")
    _synth(base / "data", (20, 256, 256), dtype="float32")
    hole = (slice(40, 220), slice(40, 220))
    holes = {8: hole, 9: hole, 10: hole, 14: (slice(100, 103), slice(100, 110)), 17: (slice(8, 256), slice(0, 256))}
    run = _run_folder(base / "data" / "raw", base / "run", holes)
    stack = open_stack(run / "aligned.zarr")
    img = stack.read(14)
    assert nonfinite_count(img) == 30
    return run


def test_report_builds_on_a_run_with_nan_pixels_and_lists_the_slices(nan_run):
    page = build_report(nan_run)
    text = page.read_text()
    assert page.exists() and "Slices with NaN/inf pixels (5)" in text
    for name in ("slice_00008.tif", "slice_00009.tif", "slice_00010.tif", "slice_00014.tif", "slice_00017.tif"):
        assert name in text
    assert "no data" in text and 'class="good"' not in text  # never a green verdict over NaN data
    for png in ("residual.png", "transforms.png", "reslice_xz.png", "reslice_yz.png"):
        assert (page.parent / png).stat().st_size > 1000
    doc = json.loads((page.parent / "evaluation.json").read_text())
    listed = {s["index"]: s for s in doc["summary"]["nonfinite_slices"]}
    assert sorted(listed) == [8, 9, 10, 14, 17]
    assert listed[14]["nonfinite_px"] == 30 and listed[14]["crops_measured"] == len(doc["summary"]["crops"])
    assert listed[9]["crops_measured"] == 0 and listed[17]["crops_measured"] == 0
    per = doc["per_slice"]
    crops = [k for k in per if k.startswith("residual_crop")]
    for key in crops + ["neighbour_ncc"]:
        values = per[key]
        # Slices without data, and the slices compared with them, read NaN (null in JSON) ...
        assert all(values[z] is None for z in (8, 9, 10, 11, 17, 18)), key
        # ... and the others, the few-NaN slice 14 and its successor included, are measured.
        assert all(values[z] is not None for z in (3, 5, 7, 12, 13, 14, 15, 16, 19)), key


def test_residual_means_leave_out_the_slices_without_data(nan_run):
    ev = evaluate_run(nan_run, crop_size=96)
    r = ev.sweep.residual_px
    nm = ev.summary["pixel_nm"]
    for k, summary in enumerate(ev.summary["residual"]):
        assert np.isnan(r[k][[8, 9, 10, 11, 17, 18]]).all()
        finite = r[k][np.isfinite(r[k])]
        assert summary["unit"] == "nm" and summary["mean"] == pytest.approx(finite.mean() * nm)
    assert not ev.sweep.usable_crops[:, 9].any() and ev.sweep.usable_crops[:, 14].all()


def test_sweep_survives_inf_and_nan_in_every_crop(tmp_path):
    """Every slice has a few NaN and inf pixels inside both crops: all are measured, as on the
    clean slices, and none crashes."""
    data = _synth(tmp_path / "d", (8, 256, 256), dtype="float32")
    raw = open_stack(data / "raw")
    writer = create_writer(tmp_path / "a.zarr", "zarr", raw.shape, raw.dtype)
    for z in range(len(raw)):
        img = raw.read(z).copy()
        img[60:63, 60:63] = np.nan
        img[180, 170:175] = np.inf
        img[181, 170:175] = -np.inf
        writer.write(z, img)
    crops = [Crop(16, 16, 96), Crop(128, 128, 96)]
    clean = sweep(raw, crops, workers=1)
    holed = sweep(open_stack(tmp_path / "a.zarr"), crops, workers=1)
    assert holed.nonfinite_px.tolist() == [19] * 8 and clean.nonfinite_px.tolist() == [0] * 8
    assert np.isfinite(clean.residual_px[:, 1:]).all()
    assert np.isfinite(holed.residual_px[:, 1:]).all() and np.isfinite(holed.neighbour_ncc[1:]).all()
    np.testing.assert_allclose(holed.shift_xy[:, 1:], clean.shift_xy[:, 1:], atol=0.05)
    np.testing.assert_allclose(holed.neighbour_ncc[1:], clean.neighbour_ncc[1:], atol=0.01)


# --- item 12: missing datasets / array keys ------------------------------------------------------

def test_zarr_missing_array_names_the_key_and_the_existing_ones(tmp_path):
    writer = create_writer(tmp_path / "o.zarr", "zarr", (3, 16, 16), np.uint8, pyramid_levels=2)
    writer.close()
    with pytest.raises(StackError, match=r"o.zarr: no array '7'; it holds \['0', '1'\]"):
        open_stack(tmp_path / "o.zarr", dataset="7")
    import zarr

    zarr.save_array(str(tmp_path / "a.zarr"), np.zeros((3, 8, 8), np.uint8))
    with pytest.raises(StackError, match=r"a.zarr: is a single Zarr array of shape \(3, 8, 8\), with no array '7'"):
        open_stack(tmp_path / "a.zarr", dataset="7")


def test_ome_zarr_metadata_naming_a_missing_array_is_a_stack_error(tmp_path):
    writer = create_writer(tmp_path / "o.zarr", "zarr", (3, 16, 16), np.uint8, pyramid_levels=2)
    writer.close()
    attrs = json.loads((tmp_path / "o.zarr" / ".zattrs").read_text())
    attrs["multiscales"][0]["datasets"][0]["path"] = "full"
    (tmp_path / "o.zarr" / ".zattrs").write_text(json.dumps(attrs))
    with pytest.raises(StackError, match=r"no array 'full'; it holds \['0', '1'\]"):
        open_stack(tmp_path / "o.zarr")


def test_hdf5_missing_dataset_or_group_names_the_key_and_the_existing_ones(tmp_path):
    import h5py

    with h5py.File(tmp_path / "d.h5", "w") as f:
        f.create_dataset("em/raw", data=np.zeros((3, 8, 8), np.uint8))
        f.create_dataset("other", data=np.zeros((2, 8, 8), np.uint8))
    with pytest.raises(StackError, match=r"d.h5: no dataset '7'; it holds \['em/raw', 'other'\]"):
        open_stack(tmp_path / "d.h5", dataset="7")
    with pytest.raises(StackError, match=r"d.h5: 'em' is a group, not a dataset; the file holds datasets "
                                         r"\['em/raw', 'other'\]"):
        open_stack(f"{tmp_path / 'd.h5'}:em")


def test_dataset_given_for_a_tiff_input_is_refused(tmp_path):
    data = _synth(tmp_path / "d", (2, 32, 32))
    with pytest.raises(StackError, match=r"raw: is a folder of TIFFs, which holds no datasets; --dataset '7'"):
        open_stack(data / "raw", dataset="7")


def test_cli_info_with_a_missing_zarr_dataset_is_one_line_error(tmp_path):
    from click.testing import CliRunner

    from amst.cli import main

    create_writer(tmp_path / "o.zarr", "zarr", (3, 16, 16), np.uint8).close()
    result = CliRunner().invoke(main, ["info", str(tmp_path / "o.zarr"), "--dataset", "7"])
    assert result.exit_code == 2 and not isinstance(result.exception, KeyError)
    assert "no array '7'; it holds ['0']" in result.output


# --- imageops.nonfinite_count --------------------------------------------------------------------

def test_nonfinite_count():
    img = np.ones((40, 50), np.float32)
    assert nonfinite_count(img) == 0
    img[3, :7] = np.nan
    img[5, 1] = np.inf
    img[6, 2] = -np.inf
    assert nonfinite_count(img) == 9
    assert nonfinite_count(img[:, ::2]) == 5  # a strided view: 4 of the 7 NaN, and the -inf at column 2
    assert nonfinite_count(img.astype(np.float64)) == 9
    # Finite values whose float32 sum overflows are still finite pixels.
    assert nonfinite_count(np.full((8, 8), 3e38, np.float32)) == 0
    assert nonfinite_count(np.zeros((8, 8), np.uint16)) == 0 and nonfinite_count(np.zeros((8, 8), np.uint8)) == 0
    assert isinstance(nonfinite_count(img), int)
