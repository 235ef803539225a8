"""Messy real-world input: each case works or stops with a message naming the file/slice."""

import errno
import os
import shutil
import stat
from pathlib import Path

import numpy as np
import pytest
import tifffile
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

import amst
from amst.cli import main
from amst.config import RunConfig, build_config
from amst.stack import StackError, open_stack
from amst.synth import SynthConfig, synthesize


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    out = tmp_path_factory.mktemp("bad") / "data"
    synthesize(out, SynthConfig(shape=(12, 160, 192), seed=5), workers=1)
    return out / "raw"


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def test_corrupt_tiff_is_named_and_skip_bad_continues(small, tmp_path):
    raw = _copy(small, tmp_path / "raw")
    victim = sorted(raw.iterdir())[5]
    data = victim.read_bytes()
    victim.write_bytes(data[:200])  # truncated
    with pytest.raises(StackError, match=f"{victim.name}.*slice 5.*--skip-bad"):
        open_stack(raw)
    res = amst.align(raw, tmp_path / "out", backend="fast", workers=1, skip_bad=True, progress=False)
    assert res.statuses[5] == "blank"
    assert victim.read_bytes() == data[:200]  # input untouched
    r = _cli("run", raw, tmp_path / "out2", "--backend", "fast", "--quiet", "--no-report")
    assert r.exit_code == 2 and victim.name in r.output and "Traceback" not in r.output


def test_uint16_and_float_with_nan_inf(small, tmp_path):
    for dtype in ("uint16", "float32"):
        raw = tmp_path / dtype
        raw.mkdir()
        for p in sorted(small.iterdir()):
            img = tifffile.imread(p).astype(np.float32)
            if dtype == "uint16":
                out = (img * 250).astype(np.uint16)
            else:
                out = img / 255
                out[10:14, 10:14] = np.nan
                out[20, 20] = np.inf
            tifffile.imwrite(raw / p.name, out)
        res = amst.align(raw, tmp_path / f"out_{dtype}", backend="fast", workers=1, progress=False)
        aligned = open_stack(res.output_stack)
        assert aligned.dtype == np.dtype(dtype)
        assert res.statuses.count("ok") >= 10


def test_mixed_dtypes_are_refused_with_names(tmp_path):
    tifffile.imwrite(tmp_path / "a_1.tif", np.zeros((8, 8), np.uint8))
    tifffile.imwrite(tmp_path / "a_2.tif", np.zeros((8, 8), np.uint16))
    with pytest.raises(StackError, match="different dtypes"):
        open_stack(tmp_path)


def test_mixed_shapes_padded_with_warning(small, tmp_path, caplog):
    raw = _copy(small, tmp_path / "raw")
    p = sorted(raw.iterdir())[3]
    tifffile.imwrite(p, tifffile.imread(p)[:150, :180])
    r = _cli("info", raw)
    assert r.exit_code == 0 and "differ from the canvas" in r.output and p.name in r.output
    with caplog.at_level("WARNING"):
        res = amst.align(raw, tmp_path / "out", backend="fast", workers=1, allow_pad=True, progress=False)
    padded = [m for m in caplog.messages if "padded" in m]
    assert padded and p.name in padded[0] and "150x180" in padded[0]
    assert len(res.statuses) == 12
    # The padded slice is aligned like its neighbours: its raw pixels keep their place.
    assert res.statuses[3] == "ok"
    shift = res.transforms.slices[3].affine[:, 2] - res.transforms.slices[2].affine[:, 2]
    assert np.abs(shift).max() < 3


def test_saturated_duplicated_and_numbering_gap(small, tmp_path, caplog):
    raw = _copy(small, tmp_path / "raw")
    files = sorted(raw.iterdir())
    tifffile.imwrite(files[4], np.full(tifffile.imread(files[4]).shape, 255, np.uint8))  # saturated
    shutil.copy(files[7], files[8])  # duplicated slice
    files[10].rename(raw / "slice_00099.tif")  # a gap in the numbering
    with caplog.at_level("WARNING"):
        stack = open_stack(raw)
    assert "numbering has gaps" in caplog.text
    res = amst.align(raw, tmp_path / "out", backend="fast", workers=1, progress=False)
    assert res.statuses[4] == "blank"
    assert res.statuses[8] == "ok" and len(stack) == 12


@pytest.mark.parametrize("shape", [(1, 96, 96), (5, 128, 128), (12, 200, 64)])
def test_short_single_and_thin_stacks(tmp_path, shape):
    from amst.quality.ground_truth import slice_errors
    from amst.synth import load_ground_truth

    data = tmp_path / "d"
    synthesize(data, SynthConfig(shape=shape, seed=2), workers=1)
    res = amst.align(data / "raw", tmp_path / "out", backend="fast", workers=1, progress=False)
    assert len(res.statuses) == shape[0]
    assert open_stack(res.output_stack).shape[0] == shape[0]
    gt = load_ground_truth(data / "ground_truth.json")
    tf = res.transforms
    err = slice_errors(tf.affines, gt["maps"], tf.canvas_shape_yx, shape[1:])["rms"]
    assert np.median(err) < 1.0, err.round(2)  # aligned, not only the right length


def test_read_only_out_is_a_clear_error(small, tmp_path):
    if os.geteuid() == 0:
        pytest.skip("root ignores directory permissions")
    out = tmp_path / "ro"
    out.mkdir()
    out.chmod(stat.S_IRUSR | stat.S_IXUSR)
    r = _cli("run", small, out, "--backend", "fast", "--quiet", "--no-report")
    assert r.exit_code == 2 and "Traceback" not in r.output


def test_read_only_out_as_root_uses_a_readonly_mount_substitute(small, tmp_path, monkeypatch):
    """Even as root, a write that fails with EACCES must end in a clear message."""
    import amst.stack.tiff as tiffmod

    def deny(*a, **k):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(tiffmod.tifffile, "imwrite", deny)
    r = _cli("run", small, tmp_path / "out", "--backend", "fast", "--quiet", "--no-report", "--out-format", "tiff",
             "--workers", "1")
    assert r.exit_code == 2 and "writing slice 0" in r.output and "Permission denied" in r.output


def test_disk_full_then_resume(small, tmp_path, monkeypatch):
    import amst.stack.tiff as tiffmod

    real = tiffmod.tifffile.imwrite
    calls = {"n": 0}

    def flaky(path, *a, **k):
        calls["n"] += 1
        if calls["n"] > 5:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(path, *a, **k)

    monkeypatch.setattr(tiffmod.tifffile, "imwrite", flaky)
    out = tmp_path / "out"
    r = _cli("run", small, out, "--backend", "fast", "--quiet", "--no-report", "--out-format", "tiff",
             "--workers", "1", "--passes", "1")
    assert r.exit_code == 2 and "No space left on device" in r.output and "re-run the same command" in r.output
    assert not (out / "transforms.json").exists()
    assert len(list((out / ".amst" / "journal_pass1").glob("*.json"))) == 12  # registered, all
    assert len(list((out / ".amst" / "journal").glob("*.json"))) == 5  # written before the disk filled
    monkeypatch.setattr(tiffmod.tifffile, "imwrite", real)  # space freed
    r = _cli("run", small, out, "--backend", "fast", "--quiet", "--no-report", "--out-format", "tiff",
             "--workers", "1", "--passes", "1")
    assert r.exit_code == 0, r.output
    assert "registered per pass: 0; resampled: 7" in r.output
    assert len(list((out / "aligned").glob("*.tif"))) == 12


def test_paths_with_spaces_and_non_ascii(small, tmp_path):
    raw = _copy(small, tmp_path / "Rohdaten ü 数据")
    res = amst.align(raw, tmp_path / "Ergebnis é 结果", backend="fast", workers=1, out_format="tiff", progress=False)
    assert res.statuses.count("ok") >= 11


def test_featureless_tm_region_says_so(small, tmp_path):
    raw = _copy(small, tmp_path / "raw")
    for p in sorted(raw.iterdir()):
        img = tifffile.imread(p)
        img[100:140, 20:90] = 128  # e.g. an empty, saturated or masked area
        tifffile.imwrite(p, img)
    r = _cli("run", raw, tmp_path / "o", "--backend", "fast", "--quiet", "--roi", "30 105 40 20", "--roi-units", "px")
    assert r.exit_code == 2 and "featureless" in r.output and "Traceback" not in r.output
    r = _cli("run", raw, tmp_path / "o2", "--backend", "fast", "--quiet", "--roi", "180 10 40 20", "--roi-units", "px")
    assert r.exit_code == 2 and "not inside slice" in r.output


def test_roi_needs_units(small, tmp_path):
    r = CliRunner().invoke(main, ["run", str(small), str(tmp_path / "o"), "--roi", "10 10 50 50"])
    assert r.exit_code != 0 and "--roi-units" in r.output


_CONFIG_KEYS = {"median_radius": ("template", "median_radius"), "backend": ("register", "backend"),
                "order": ("warp", "order"), "out_format": ("output", "out_format"),
                "workers": ("execution", "workers"), "passes": ("register", "passes")}


@given(st.dictionaries(st.sampled_from(sorted(_CONFIG_KEYS)),
                       st.one_of(st.integers(-3, 20), st.text(max_size=6), st.booleans(), st.none(),
                                 st.sampled_from(["elastix", "fast", "cubic", "nearest", "zarr", "tiff"]))))
@settings(max_examples=200, deadline=None)
def test_config_parser_accepts_valid_and_names_the_key_otherwise(options):
    try:
        cfg = build_config(**options)
    except ValueError as exc:
        bad = [k for k in options if options[k] is not None]
        assert any(k.replace("_", "") in str(exc).replace("_", "").replace(".", "") or k in str(exc) for k in bad), str(exc)
        return
    # Accepted: every given option is in the config exactly as given, and is valid.
    for name, value in options.items():
        section, key = _CONFIG_KEYS[name]
        got = getattr(getattr(cfg, section), key)
        assert got == (RunConfig().to_dict()[section][key] if value is None else value), (name, value, got)
        assert not isinstance(value, bool) or isinstance(got, bool)
    assert cfg.template.median_radius >= 0
    assert cfg.register.backend in ("elastix", "fast")
    assert cfg.warp.order in ("cubic", "linear", "nearest") and cfg.output.out_format in ("zarr", "tiff")
    assert cfg.register.passes in (1, 2) and (cfg.execution.workers is None or cfg.execution.workers >= 1)
