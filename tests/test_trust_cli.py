"""The command line (issue 14, items 15, 14, 3/5, 1/13): options, messages, -v, Ctrl-C, ownership."""

from __future__ import annotations

import inspect
import logging
import subprocess
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

import amst
import amst.pipeline
from amst.cli import main, name_flag
from amst.config import RunConfig, build_config
from amst.outdir import read_ownership
from amst.synth import SynthConfig, synthesize
from amst.transforms_io import load_transforms


@pytest.fixture(scope="module")
def raw(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("trust_cli") / "data"
    synthesize(out, SynthConfig(shape=(12, 128, 128), seed=1), workers=1)
    return out / "raw"


@pytest.fixture(autouse=True)
def _restore_amst_log_level():
    """``main`` sets the "amst" logger's level; keep it from leaking into other tests."""
    logger = logging.getLogger("amst")
    level = logger.level
    yield
    logger.setLevel(level)


def _cli(*args) -> click.testing.Result:
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def _one_line(text: str) -> str:
    """Help text with click's line wrapping undone."""
    return " ".join(text.split())


def _params(command: str, args: list[str]) -> dict:
    return main.commands[command].make_context(command, list(args)).params


# -- item 15: --roi / --gaps / --voxel-size take their numbers as separate words or quoted ---------

@pytest.mark.parametrize("command", ["run", "prealign"])
def test_roi_gaps_voxel_natural_and_quoted_forms_parse_alike(command):
    natural = _params(command, ["IN", "OUT", "--roi", "120", "40", "900", "110", "--roi-units", "px",
                                "--gaps", "1", "2", "4", "8", "--voxel-size", "8", "5", "5"])
    quoted = _params(command, ["IN", "OUT", "--roi", "120 40 900 110", "--roi-units", "px", "--gaps", "1 2 4 8",
                               "--voxel-size", "8 5 5"])
    commas = _params(command, ["--roi", "120,40,900,110", "--roi-units", "px", "--gaps", "1,2,4,8", "IN", "OUT"])
    assert natural["roi"] == quoted["roi"] == commas["roi"] == (120.0, 40.0, 900.0, 110.0)
    assert natural["gaps"] == quoted["gaps"] == commas["gaps"] == (1, 2, 4, 8)
    assert natural["voxel_size"] == quoted["voxel_size"] == (8.0, 5.0, 5.0)
    assert (natural["input"], natural["out"]) == (quoted["input"], quoted["out"]) == (commas["input"], commas["out"])
    cfg_natural = build_config(roi=list(natural["roi"]), roi_units="px", gaps=list(natural["gaps"]))
    cfg_quoted = build_config(roi=list(quoted["roi"]), roi_units="px", gaps=list(quoted["gaps"]))
    assert cfg_natural.to_dict() == cfg_quoted.to_dict()
    assert cfg_natural.prealign.roi == (120.0, 40.0, 900.0, 110.0) and cfg_natural.prealign.gaps == (1, 2, 4, 8)
    assert _params(command, ["IN", "OUT", "--roi", "auto"])["roi"] == "auto"


def test_number_options_never_eat_input_or_out():
    p = _params("run", ["--gaps", "1", "2", "raw", "out", "--roi", "1", "2", "3", "4", "--roi-units", "px"])
    assert (p["input"], p["out"], p["gaps"], p["roi"]) == ("raw", "out", (1, 2), (1.0, 2.0, 3.0, 4.0))
    # --roi takes four numbers at most: a fifth is a (stray) argument, not part of the ROI.
    with pytest.raises(click.UsageError, match="unexpected extra argument"):
        _params("run", ["IN", "OUT", "--roi", "1", "2", "3", "4", "5"])
    with pytest.raises(click.BadParameter, match="expected 4 numbers X Y W H or auto"):
        _params("run", ["IN", "OUT", "--roi", "1", "2", "3"])
    with pytest.raises(click.BadParameter, match="whole numbers"):
        _params("run", ["IN", "OUT", "--gaps", "1", "2.5"])


def test_bad_roi_through_the_cli_is_one_line_naming_roi(raw, tmp_path):
    r = _cli("run", raw, tmp_path / "o", "--roi", "1", "2", "3", "--roi-units", "px")
    assert r.exit_code == 2 and "'--roi'" in r.output and "Traceback" not in r.output
    assert not (tmp_path / "o").exists()


# -- item 15: prealign --prealign / --config; run --help defaults -------------------------------

def test_prealign_takes_prealign_and_config(raw, tmp_path):
    conf = tmp_path / "f.yaml"
    conf.write_text("prealign: {gaps: [1, 2]}\nexecution: {workers: 1}\n")
    out = tmp_path / "pre"
    r = _cli("prealign", raw, out, "--prealign", "features", "--config", conf)
    assert r.exit_code == 0, r.output
    assert "(features)" in r.output
    info = load_transforms(out / "transforms.json").extra["prealign_info"]
    assert info["method"] == "features" and info["gaps"] == [1, 2]  # the config file's gaps
    owner = read_ownership(out)
    assert owner is not None and owner.kind == "prealign" and owner.complete

    # --method stays as a hidden alias of --prealign.
    r = _cli("prealign", raw, tmp_path / "pre2", "--method", "xcorr", "--config", conf)
    assert r.exit_code == 0, r.output
    assert load_transforms(tmp_path / "pre2" / "transforms.json").extra["prealign_info"]["method"] == "xcorr"
    r = _cli("prealign", raw, tmp_path / "pre3", "--method", "xcorr", "--prealign", "features")
    assert r.exit_code == 2 and "--prealign" in r.output and not (tmp_path / "pre3").exists()
    helptext = _cli("prealign", "--help").output
    assert "--prealign [tm|features|xcorr]" in helptext and "--config" in helptext and "--method" not in helptext


def test_run_help_shows_the_real_defaults():
    r = _cli("run", "--help")
    assert r.exit_code == 0
    text = _one_line(r.output)
    cfg = RunConfig()
    assert f"Template median radius in slices. [default: {cfg.template.median_radius}]" in text
    assert f"Affine back-end. [default: {cfg.register.backend}]" in text
    assert f"Pre-alignment method. [default: {cfg.prealign.method}]" in text
    assert f"[default: {cfg.register.passes}]" in text
    assert f"Lowest accepted NCC peak. [default: {cfg.prealign.min_score}]" in text
    assert f"TM search margin in px. [default: {cfg.prealign.search_margin}]" in text
    assert "[default: " + " ".join(str(g) for g in cfg.prealign.gaps) + "]" in text
    assert f"Output stack format. [default: {cfg.output.out_format}]" in text
    assert "Processes/threads. [default: all cores]" in text
    assert "[default: 7]" in text and "[default: fast]" in text  # the documented values, to the letter


# -- item 15: errors name the flag the user typed ---------------------------------------------------

def test_name_flag_maps_config_keys_to_typed_flags():
    typed = {"min_score": "--min-score", "gaps": "--gaps"}
    assert name_flag("prealign.min_score: 2.0 must be between -1 and 1", typed) == \
        "--min-score (prealign.min_score): 2.0 must be between -1 and 1"
    assert name_flag("min_score: 2.0 must be between -1 and 1", typed) == \
        "--min-score (prealign.min_score): 2.0 must be between -1 and 1"
    assert name_flag("min_score (--min-score): 2.0 must be in (-1, 1]", typed) == \
        "--min-score (prealign.min_score): 2.0 must be in (-1, 1]"
    assert name_flag("gaps: [0] must be positive integers", typed).startswith("--gaps (prealign.gaps): [0]")
    # From a config file (not typed) the key stays; a message that is not a key stays.
    assert name_flag("template.median_radius: -1 must be >= 0", typed) == "template.median_radius: -1 must be >= 0"
    assert name_flag("raw.zarr: cannot read", {"dataset": "--dataset"}) == "raw.zarr: cannot read"


def test_bad_median_radius_names_the_flag_or_the_config_key(raw, tmp_path):
    r = _cli("run", raw, tmp_path / "o", "--median-radius", "-1", "--backend", "fast", "--quiet", "--no-report")
    assert r.exit_code == 2
    assert "amst: error: --median-radius (template.median_radius): -1 must be >= 1" in r.output
    conf = tmp_path / "c.yaml"
    conf.write_text("template: {median_radius: -1}\n")
    r = _cli("run", raw, tmp_path / "o", "--config", conf, "--quiet", "--no-report")
    assert r.exit_code == 2 and "amst: error: template.median_radius: -1" in r.output
    assert "--median-radius" not in r.output
    assert not (tmp_path / "o").exists()


def test_bad_min_score_names_min_score(raw, tmp_path):
    r = _cli("run", raw, tmp_path / "o", "--min-score", "2", "--backend", "fast", "--quiet", "--no-report",
             "--workers", "1")
    assert r.exit_code == 2 and "--min-score (prealign.min_score)" in r.output, r.output
    assert "NaN" not in r.output and not (tmp_path / "o").exists()


# -- item 15: info --skip-bad / --allow-pad ------------------------------------------------------

def test_info_accepts_skip_bad_and_allow_pad(raw, tmp_path):
    import shutil

    import tifffile

    folder = tmp_path / "raw"
    shutil.copytree(raw, folder)
    files = sorted(folder.iterdir())
    files[4].write_bytes(files[4].read_bytes()[:200])  # truncated
    tifffile.imwrite(files[7], tifffile.imread(files[7])[:100, :90])  # another shape
    r = _cli("info", folder)
    assert r.exit_code == 2 and files[4].name in r.output and "--skip-bad" in r.output
    r = _cli("info", folder, "--skip-bad")
    assert r.exit_code == 0, r.output
    assert "1 slice(s) cannot be read" in r.output and files[4].name in r.output
    assert files[7].name in r.output and "need --allow-pad" in r.output
    r = _cli("info", folder, "--skip-bad", "--allow-pad")
    assert r.exit_code == 0 and "padded at the bottom/right" in r.output


# -- item 14: -v shows DEBUG lines and the traceback; Ctrl-C is one line, exit 130 ----------------

def test_verbose_shows_traceback_after_the_message(raw, tmp_path):
    args = ["run", raw, tmp_path / "o", "--median-radius", "-1", "--quiet", "--no-report"]
    quiet = _cli(*args)
    assert quiet.exit_code == 2 and "Traceback" not in quiet.output
    loud = _cli("-v", *args)
    assert loud.exit_code == 2
    message = loud.output.index("amst: error: --median-radius")
    assert loud.output.index("Traceback (most recent call last)") > message
    assert "ValueError: template.median_radius: -1" in loud.output


def test_verbose_logs_debug_lines_also_into_the_run_log(raw, tmp_path, monkeypatch, caplog):
    log_file = tmp_path / "amst.log"

    def fake_align(*args, **kwargs):
        handler = amst.pipeline.attach_log(log_file)
        try:
            logging.getLogger("amst.pipeline").debug("probe from the pipeline")
        finally:
            logging.getLogger("amst").removeHandler(handler)
            handler.close()
        raise ValueError("stop here")

    monkeypatch.setattr(amst.pipeline, "align", fake_align)
    with caplog.at_level(logging.DEBUG, logger="amst"):
        r = _cli("-v", "run", raw, tmp_path / "o", "--backend", "fast")
    assert r.exit_code == 2 and "stop here" in r.output
    debug = [rec for rec in caplog.records if rec.levelno == logging.DEBUG and rec.name.startswith("amst")]
    assert any("--backend" in rec.getMessage() for rec in debug)
    assert "DEBUG amst.pipeline: probe from the pipeline" in log_file.read_text()

    log_file.unlink()
    r = _cli("run", raw, tmp_path / "o", "--backend", "fast")
    assert r.exit_code == 2 and "probe" not in log_file.read_text()


def test_ctrl_c_is_one_line_and_exit_130(raw, tmp_path, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(amst.pipeline, "align", interrupted)
    r = _cli("run", raw, tmp_path / "o")
    assert r.exit_code == 130
    assert r.output.strip() == "amst: interrupted; re-run the same command to resume"
    monkeypatch.setattr("amst.cli.open_stack", interrupted)
    r = _cli("info", raw)
    assert r.exit_code == 130 and r.output.strip() == "amst: interrupted"


def test_ctrl_c_in_prealign_leaves_an_output_that_overwrite_replaces(raw, tmp_path, monkeypatch):
    import amst.prealign

    real = amst.prealign.prealign

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    out = tmp_path / "pre"
    monkeypatch.setattr(amst.prealign, "prealign", interrupted)
    r = _cli("prealign", raw, out, "--prealign", "xcorr", "--workers", "1")
    assert r.exit_code == 130 and "Traceback" not in r.output
    assert r.output.strip().splitlines()[-1] == \
        "amst: interrupted; OUT is incomplete: re-run with --overwrite to replace it"  # after the progress bar
    assert not read_ownership(out).complete
    monkeypatch.setattr(amst.prealign, "prealign", real)
    r = _cli("prealign", raw, out, "--prealign", "xcorr", "--workers", "1")
    assert r.exit_code == 2 and "incomplete" in r.output
    r = _cli("prealign", raw, out, "--prealign", "xcorr", "--workers", "1", "--overwrite")
    assert r.exit_code == 0, r.output
    assert read_ownership(out).complete and (out / "transforms.json").is_file()


def test_run_error_is_one_line(raw, tmp_path, monkeypatch):
    run_error = getattr(amst.pipeline, "RunError", None)
    if run_error is None:
        pytest.skip("amst.pipeline has no RunError")

    def stops(*args, **kwargs):
        raise run_error("9 of 12 slices fell back; the back-end is probably misconfigured")

    monkeypatch.setattr(amst.pipeline, "align", stops)
    r = _cli("run", raw, tmp_path / "o")
    assert r.exit_code == 2 and "Traceback" not in r.output
    assert r.output.strip() == "amst: error: 9 of 12 slices fell back; the back-end is probably misconfigured"


# -- item 15: amst.align / amst.apply are the real functions, import amst stays light -----------

def test_align_and_apply_show_their_real_signature():
    assert amst.align is amst.pipeline.align and amst.apply is amst.pipeline.apply
    params = inspect.signature(amst.align).parameters
    assert list(params)[:2] == ["input", "out"] and "overwrite" in params
    assert list(inspect.signature(amst.apply).parameters)[:3] == ["transforms", "input", "out"]
    assert "Parameters" in amst.align.__doc__
    code = "import sys, amst; print('amst.pipeline' in sys.modules, 'numpy' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


# -- items 3/5: synth --overwrite ------------------------------------------------------------------

def test_synth_refuses_an_existing_dataset_unless_overwrite(tmp_path):
    out = tmp_path / "s"
    args = ["synth", out, "--shape", "3", "64", "64", "--workers", "1"]
    assert _cli(*args).exit_code == 0
    r = _cli(*args)
    assert r.exit_code == 2 and "--overwrite" in r.output
    r = _cli(*args, "--overwrite")
    assert r.exit_code == 0, r.output
    assert len(list((out / "raw").glob("*.tif"))) == 3


# -- items 1/13: prealign follows the ownership rule and validates before touching OUT -------------

def test_prealign_into_a_folder_with_a_user_file_is_refused(raw, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("my notes")
    for extra in ([], ["--overwrite"]):
        r = _cli("prealign", raw, out, "--prealign", "xcorr", "--workers", "1", *extra)
        assert r.exit_code == 2 and "notes.txt" in r.output and "Traceback" not in r.output
        assert (out / "notes.txt").read_text() == "my notes"
        assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]


def test_prealign_into_its_input_is_refused(raw, tmp_path):
    r = _cli("prealign", raw, raw / "pre", "--prealign", "xcorr", "--workers", "1")
    assert r.exit_code == 2 and "inside the input" in r.output and not (raw / "pre").exists()


def test_prealign_overwrite_replaces_only_its_own_files(raw, tmp_path):
    out = tmp_path / "pre"
    args = ["prealign", raw, out, "--prealign", "xcorr", "--workers", "1", "--write-stack", "--out-format", "tiff"]
    assert _cli(*args).exit_code == 0
    assert len(list((out / "prealigned").glob("*.tif"))) == 12
    (out / "mine.txt").write_text("keep me")
    r = _cli(*args)
    assert r.exit_code == 2 and "--overwrite" in r.output
    r = _cli(*args, "--overwrite")
    assert r.exit_code == 0, r.output
    assert (out / "mine.txt").read_text() == "keep me"
    assert len(list((out / "prealigned").glob("*.tif"))) == 12 and read_ownership(out).complete


def test_prealign_bad_options_leave_out_untouched(raw, tmp_path):
    out = tmp_path / "pre"
    r = _cli("prealign", raw, out, "--prealign", "features", "--gaps", "0")
    assert r.exit_code == 2 and "--gaps (prealign.gaps)" in r.output and not out.exists()
    r = _cli("prealign", raw, out, "--roi", "1", "2", "3", "4")
    assert r.exit_code == 2 and "--roi-units" in r.output and not out.exists()


def test_prealign_roi_slice_outside_the_stack_leaves_out_untouched(raw, tmp_path):
    out = tmp_path / "pre"
    r = _cli("prealign", raw, out, "--roi-slice", "99", "--workers", "1")
    assert r.exit_code == 2 and "99" in r.output and "Traceback" not in r.output
    assert not out.exists()
