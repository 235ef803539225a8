"""Issue 14: amst never removes what it did not write, and never reports success over a wrong result.

Each data-loss test proves that the user's file (or the input) survives and that the
message names what is there.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile
from click.testing import CliRunner

import amst
from amst.cli import main
from amst.outdir import OutputError, OwnedEntry, claim_output, read_ownership
from amst.quality.ground_truth import slice_errors
from amst.stack import open_stack
from amst.synth import SynthConfig, load_ground_truth, synthesize

AMST = [sys.executable, "-m", "amst"]


def _as_from_a_shell() -> None:
    """Child set-up: Ctrl-C with its default meaning, as a shell starts a command. A child
    otherwise inherits the disposition of the test process, which a test runner may have
    changed (seen once in CI: every interrupt was ignored and the commands ran to the end)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def _tree(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("trust") / "c"
    synthesize(out, SynthConfig(shape=(16, 160, 160), seed=4), workers=1)
    return out


@pytest.fixture(scope="module")
def run_dir(dataset, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("trust_run") / "r"
    amst.align(dataset / "raw", out, backend="fast", workers=1, progress=False)
    return out


# -- 1, 4: apply ------------------------------------------------------------------------------

@pytest.mark.parametrize("target", ["parent", "input", "transforms", "run"])
def test_apply_never_writes_over_its_input_or_transforms(dataset, run_dir, tmp_path, target):
    c = tmp_path / "c"
    shutil.copytree(dataset, c)
    r = tmp_path / "r"
    shutil.copytree(run_dir, r)
    before_c, before_r = _tree(c), _tree(r)
    out = {"parent": c, "input": c / "raw", "transforms": r / "transforms.json", "run": r}[target]
    res = _cli("apply", r / "transforms.json", c / "raw", out, "--overwrite")
    assert res.exit_code == 2, res.output
    assert {"parent": "the input", "input": "the input", "transforms": "the transforms",
            "run": "the transforms"}[target] in res.output
    assert _tree(c) == before_c and _tree(r) == before_r  # raw slices, ground_truth.json, transforms: all kept


def test_apply_overwrite_keeps_unrelated_files_and_replaces_its_own(dataset, run_dir, tmp_path):
    out = tmp_path / "ch2"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    res = _cli("apply", run_dir / "transforms.json", dataset / "raw", out, "--overwrite")
    assert res.exit_code == 2 and "notes.txt" in res.output and "did not write" in res.output
    assert (out / "notes.txt").read_text() == "mine"

    own = tmp_path / "ch2.zarr"
    assert _cli("apply", run_dir / "transforms.json", dataset / "raw", own).exit_code == 0
    first = open_stack(own).read(3)
    assert read_ownership(own).complete
    refused = _cli("apply", run_dir / "transforms.json", dataset / "raw", own)
    assert refused.exit_code == 2 and "--overwrite" in refused.output
    again = _cli("apply", run_dir / "transforms.json", dataset / "raw", own, "--overwrite", "--order", "nearest")
    assert again.exit_code == 0, again.output
    assert open_stack(own).shape[0] == 16 and not np.array_equal(open_stack(own).read(3), first)


def test_apply_refuses_a_stack_of_another_slice_size(dataset, run_dir, tmp_path):
    thin = tmp_path / "thin"
    thin.mkdir()
    for p in sorted((dataset / "raw").iterdir()):
        tifffile.imwrite(thin / p.name, tifffile.imread(p)[:, :32])
    res = _cli("apply", run_dir / "transforms.json", thin, tmp_path / "o")
    assert res.exit_code == 2 and "160 x 32" in res.output and "160 x 160" in res.output
    assert not (tmp_path / "o").exists()


# -- 2: run --overwrite -------------------------------------------------------------------------

def test_run_overwrite_refuses_a_folder_of_user_files(dataset, tmp_path):
    out = tmp_path / "results"
    out.mkdir()
    (out / "thesis.docx").write_text("years of work")
    res = _cli("run", dataset / "raw", out, "--overwrite", "--backend", "fast", "--quiet", "--no-report")
    assert res.exit_code == 2 and "thesis.docx" in res.output and "did not write" in res.output
    assert (out / "thesis.docx").read_text() == "years of work"

    link = tmp_path / "link"
    link.symlink_to(out, target_is_directory=True)
    res = _cli("run", dataset / "raw", link, "--overwrite", "--backend", "fast", "--quiet", "--no-report")
    assert res.exit_code == 2 and "thesis.docx" in res.output
    assert (out / "thesis.docx").read_text() == "years of work"


def test_report_files_are_written_whole_and_a_torn_one_is_amsts(dataset, run_dir, tmp_path, monkeypatch):
    """The report is written after the run is complete: a crash while writing a figure or the
    page leaves the old file and amst's own ``.NAME.partial``, which an overwrite removes."""
    from amst.quality import report

    out = tmp_path / "r"
    shutil.copytree(run_dir, out, symlinks=True)
    report.build_report(out)
    before = (out / "report" / "index.html").read_text()

    def crash(path, text):
        Path(path).with_name(f".{Path(path).name}.partial").write_text(text[:10])
        raise KeyboardInterrupt

    monkeypatch.setattr(report, "atomic_write_text", crash)
    with pytest.raises(KeyboardInterrupt):
        report.build_report(out)
    assert (out / "report" / "index.html").read_text() == before
    assert (out / "report" / ".evaluation.json.partial").exists()
    monkeypatch.undo()
    res = _cli("run", dataset / "raw", out, "--overwrite", "--backend", "fast", "--quiet", "--median-radius", "3",
               "--workers", "1")
    assert res.exit_code == 0, res.output
    assert not list((out / "report").glob(".*.partial"))
    assert "<html" in (out / "report" / "index.html").read_text()


def test_run_overwrite_keeps_user_files_in_a_previous_run_folder(dataset, run_dir, tmp_path):
    out = tmp_path / "r"
    shutil.copytree(run_dir, out, symlinks=True)
    (out / "my_notes.txt").write_text("keep me")
    (out / "report").mkdir(exist_ok=True)
    (out / "report" / "figure_for_paper.svg").write_text("<svg/>")
    res = _cli("run", dataset / "raw", out, "--overwrite", "--backend", "fast", "--quiet", "--no-report",
               "--median-radius", "3", "--workers", "1")
    assert res.exit_code == 2 and "figure_for_paper.svg" in res.output
    assert (out / "transforms.json").exists()  # nothing removed before the refusal
    (out / "report" / "figure_for_paper.svg").rename(tmp_path / "figure_for_paper.svg")
    res = _cli("run", dataset / "raw", out, "--overwrite", "--backend", "fast", "--quiet", "--no-report",
               "--median-radius", "3", "--workers", "1")
    assert res.exit_code == 0, res.output
    assert (out / "my_notes.txt").read_text() == "keep me"
    assert "median_radius: 3" in (out / "config.yaml").read_text()


def test_run_names_what_differs_and_refuses_without_overwrite(dataset, run_dir, tmp_path):
    out = tmp_path / "r"
    shutil.copytree(run_dir, out)
    before = _tree(out)
    res = _cli("run", dataset / "raw", out, "--backend", "fast", "--quiet", "--no-report", "--median-radius", "4")
    assert res.exit_code == 2 and "template.median_radius (7 -> 4)" in res.output
    assert _tree(out) == before


# -- 3: demo -------------------------------------------------------------------------------------

def test_demo_refuses_a_folder_it_did_not_write(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("amst-demo").mkdir()
    Path("amst-demo/data.h5").write_text("precious")
    res = _cli("demo", "--backend", "fast")
    assert res.exit_code == 2 and "data.h5" in res.output
    assert Path("amst-demo/data.h5").read_text() == "precious"


def test_demo_folder_is_replaced_only_through_its_own_entries(tmp_path):
    out = tmp_path / "demo"
    entries = [OwnedEntry("data", "owned"), OwnedEntry("amst", "owned")]
    claim_output(out, kind="demo", entries=entries, overwrite=False, replace_own=True)
    synthesize(out / "data", SynthConfig(shape=(3, 64, 64), seed=1), workers=1)
    (out / "keep.txt").write_text("mine")
    claim_output(out, kind="demo", entries=entries, overwrite=False, replace_own=True)
    assert not (out / "data").exists() and (out / "keep.txt").read_text() == "mine"
    synthesize(out / "data", SynthConfig(shape=(3, 64, 64), seed=1), workers=1)
    (out / "data" / "raw" / "extra.tif").write_text("not amst's")
    with pytest.raises(OutputError, match="extra.tif"):
        claim_output(out, kind="demo", entries=entries, overwrite=False, replace_own=True)
    assert (out / "data" / "ground_truth.json").exists()


# -- 5, 11: synth ---------------------------------------------------------------------------------

def test_synth_into_an_existing_dataset(tmp_path):
    out = tmp_path / "s"
    synthesize(out, SynthConfig(shape=(15, 64, 64), seed=1), workers=1)
    with pytest.raises(OutputError, match="overwrite"):
        synthesize(out, SynthConfig(shape=(5, 64, 64), seed=1), workers=1)
    synthesize(out, SynthConfig(shape=(5, 64, 64), seed=1), workers=1, overwrite=True)
    assert len(list((out / "raw").iterdir())) == 5 and len(open_stack(out / "raw")) == 5
    user = tmp_path / "u"
    user.mkdir()
    (user / "scan.tif").write_text("x")
    with pytest.raises(OutputError, match="scan.tif"):
        synthesize(user, SynthConfig(shape=(5, 64, 64), seed=1), workers=1, overwrite=True)


def test_synth_ground_truth_follows_each_call_not_a_cached_phantom(tmp_path):
    a = synthesize(tmp_path / "a", SynthConfig(shape=(4, 96, 96), seed=1), workers=1)
    b = synthesize(tmp_path / "b", SynthConfig(shape=(4, 96, 96), seed=2, marks=False), workers=2)
    assert a["phantom"]["marks"] and not b["phantom"]["marks"] and b["marks_roi_xywh"] is None
    fresh = synthesize(tmp_path / "c", SynthConfig(shape=(4, 96, 96), seed=2, marks=False), workers=2)
    assert fresh == b


# -- 6: resume checks the data -----------------------------------------------------------------------

def test_resume_recomputes_slices_missing_from_the_output(dataset, run_dir, tmp_path):
    out = tmp_path / "r"
    shutil.copytree(run_dir, out)
    reference = open_stack(run_dir / "aligned.zarr")
    shutil.rmtree(out / "aligned.zarr")
    res = amst.align(dataset / "raw", out, backend="fast", workers=1, progress=False)
    assert res.recomputed == 16
    got = open_stack(out / "aligned.zarr")
    for z in range(16):
        np.testing.assert_array_equal(got.read(z), reference.read(z))
    chunk = out / "aligned.zarr" / "0" / "7" / "0" / "0"
    assert chunk.is_file()
    chunk.unlink()
    res = amst.align(dataset / "raw", out, backend="fast", workers=1, progress=False)
    assert res.recomputed == 1
    np.testing.assert_array_equal(open_stack(out / "aligned.zarr").read(7), reference.read(7))


def test_resume_with_a_changed_prealigned_stack_is_not_a_resume(dataset, tmp_path):
    pre = tmp_path / "pre"
    shutil.copytree(dataset / "raw", pre)
    out = tmp_path / "o"
    amst.align(dataset / "raw", out, backend="fast", workers=1, progress=False, prealigned=str(pre), passes=1)
    img = tifffile.imread(pre / "slice_00003.tif")
    tifffile.imwrite(pre / "slice_00003.tif", np.roll(img, 2, axis=1))
    with pytest.raises(OutputError, match="prealigned files: input files changed"):
        amst.align(dataset / "raw", out, backend="fast", workers=1, progress=False, prealigned=str(pre), passes=1)


def test_prealigned_slices_that_fail_to_match_are_interpolated(dataset, tmp_path):
    pre = tmp_path / "pre"
    shutil.copytree(dataset / "raw", pre)
    names = sorted(p.name for p in pre.iterdir())
    rng = np.random.default_rng(0)
    shape = tifffile.imread(pre / names[5]).shape
    tifffile.imwrite(pre / names[5], rng.integers(0, 255, shape, dtype=np.uint8))  # matches nothing
    res = amst.align(dataset / "raw", tmp_path / "o", backend="fast", workers=1, progress=False,
                     prealigned=str(pre), passes=1)
    pre5 = res.transforms.slices[5].prealign
    neighbours = (res.transforms.slices[4].prealign + res.transforms.slices[6].prealign) / 2
    assert np.abs(pre5[:, 2] - neighbours[:, 2]).max() < 0.5


# -- 9: back-end errors and fallbacks ------------------------------------------------------------------

def test_a_backend_bug_stops_the_run_with_a_clear_message(dataset, tmp_path, monkeypatch):
    import amst.register.fast as fast

    def broken(*args, **kwargs):
        raise TypeError("unsupported operand type(s)")

    monkeypatch.setattr(fast, "register_fast", broken)
    res = _cli("run", dataset / "raw", tmp_path / "o", "--backend", "fast", "--quiet", "--no-report", "--workers", "1")
    assert res.exit_code != 0
    assert "TypeError" in res.output and "slice 0" in res.output and "bug" in res.output
    assert "Traceback" not in res.output
    assert not (tmp_path / "o" / "transforms.json").exists()


def test_an_invalid_backend_parameter_is_refused_before_the_run(dataset, tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("register: {backend: fast, fast: {max_iterations: many}}\n")
    res = _cli("run", dataset / "raw", tmp_path / "o", "--config", cfg, "--quiet", "--no-report")
    assert res.exit_code != 0 and "max_iterations" in res.output and "Traceback" not in res.output
    assert not (tmp_path / "o").exists()


def test_many_fallbacks_stop_the_run_unless_accepted(dataset, tmp_path, monkeypatch):
    import amst.register.fast as fast
    from amst.register import RegistrationError

    real = fast.register_fast
    calls = {"n": 0}

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] % 2:
            raise RegistrationError("did not converge")
        return real(*args, **kwargs)

    monkeypatch.setattr(fast, "register_fast", flaky)
    with pytest.raises(amst.pipeline.RunError, match="did not converge.*max_fallback_fraction"):
        amst.align(dataset / "raw", tmp_path / "o", backend="fast", workers=1, progress=False)
    assert not (tmp_path / "o" / "transforms.json").exists()
    cfg = {"register": {"backend": "fast", "max_fallback_fraction": 1.0}}
    res = amst.align(dataset / "raw", tmp_path / "o2", cfg, workers=1, progress=False)
    assert 0.3 < res.statuses.count("fallback") / 16 < 0.7


# -- 12: NaN pixels --------------------------------------------------------------------------------

def test_partly_nan_slice_is_flagged_and_mostly_nan_slice_falls_back(dataset, tmp_path):
    raw = tmp_path / "f32"
    raw.mkdir()
    for z, p in enumerate(sorted((dataset / "raw").iterdir())):
        img = tifffile.imread(p).astype(np.float32) / 255
        if z == 4:
            img[20:40, 20:40] = np.nan
        if z == 9:
            img[:120] = np.nan
        tifffile.imwrite(raw / p.name, img)
    res = amst.align(raw, tmp_path / "o", backend="fast", workers=1, progress=False)
    s4, s9 = res.transforms.slices[4], res.transforms.slices[9]
    assert s4.metrics["nonfinite_pixels"] == 400 and "NaN" in s4.metrics["check"]
    assert s9.status == "fallback" and "NaN" in s9.metrics["reason"]
    assert "slice(s) to inspect" in (tmp_path / "o" / "amst.log").read_text()


# -- 13: validate before OUT is touched ---------------------------------------------------------------

@pytest.mark.parametrize("args", [["--roi", "10 10 0 5", "--roi-units", "px"], ["--min-score", "2"],
                                  ["--roi-slice", "99"], ["--prealign", "features", "--gaps", "50"],
                                  ["--pyramid-levels", "12"], ["--scheduler", "tcp://127.0.0.1:9"]])
def test_bad_options_leave_no_output_behind(dataset, tmp_path, args):
    out = tmp_path / "o"
    res = _cli("run", dataset / "raw", out, "--backend", "fast", "--quiet", "--no-report", *args)
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output and "nan" not in res.output.lower().replace("nanometer", "")
    assert not out.exists()


# -- 14: worker processes die with the main process -----------------------------------------------------

def _children(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True).stdout
    return [int(v) for v in out.split()]


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_sigkill_of_the_main_process_takes_its_workers_down(dataset, tmp_path):
    proc = subprocess.Popen([*AMST, "run", str(dataset / "raw"), str(tmp_path / "o"), "--backend", "fast", "--quiet",
                             "--no-report", "--workers", "2", "--block-size", "1"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    workers: list[int] = []
    deadline = time.time() + 120
    while time.time() < deadline and len(workers) < 2 and proc.poll() is None:
        time.sleep(0.2)
        workers = [c for c in _children(proc.pid) if "spawn_main" in Path(f"/proc/{c}/cmdline").read_text()]
    assert len(workers) >= 2, "the run did not start its worker processes"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    deadline = time.time() + 15
    while time.time() < deadline and any(_alive(w) for w in workers):
        time.sleep(0.2)
    assert not any(_alive(w) for w in workers)


def test_ctrl_c_during_a_run_is_one_line_and_the_rerun_resumes(dataset, tmp_path):
    # elastix: its workers take seconds to start, so the interrupt lands mid-run (with fast, the
    # whole 16-slice run could end before the signal did, on a quiet machine).
    cmd = [*AMST, "run", str(dataset / "raw"), str(tmp_path / "o"), "--backend", "elastix", "--quiet", "--no-report",
           "--workers", "2", "--block-size", "1"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            preexec_fn=_as_from_a_shell)
    deadline = time.time() + 120
    while time.time() < deadline and len(_children(proc.pid)) < 2 and proc.poll() is None:
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGINT)  # as a terminal does: the whole process group, workers included
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    assert "interrupted" in err
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (tmp_path / "o" / "transforms.json").exists()


# -- the elastix back-end end to end ----------------------------------------------------------------------

def test_elastix_backend_end_to_end_through_align(tmp_path):
    data = tmp_path / "d"
    synthesize(data, SynthConfig(shape=(26, 160, 256), seed=11), workers=1)  # auto-focus at slices 20, 21
    gt = load_ground_truth(data / "ground_truth.json")
    res = amst.align(data / "raw", tmp_path / "o", {"register": {"backend": "elastix", "passes": 1}}, workers=2,
                     progress=False)
    assert res.statuses.count("ok") >= 24
    tf = res.transforms
    e_pre = slice_errors(np.array([s.prealign for s in tf.slices]), gt["maps"], tf.canvas_shape_yx, (160, 256))["rms"]
    e_amst = slice_errors(tf.affines, gt["maps"], tf.canvas_shape_yx, (160, 256))["rms"]
    af = np.array(["autofocus" in s["events"] for s in gt["slices"]])
    assert af.any()
    assert e_amst[af].mean() < 0.7 * e_pre[af].mean()
    assert np.median(e_amst) < 0.5
    print("elastix: AF error TM", e_pre[af].round(3), "AMST", e_amst[af].round(3), "median", np.median(e_amst))
    assert open_stack(res.output_stack).shape == (26, *tf.canvas_shape_yx)


# -- found by the adversarial pass ---------------------------------------------------------------------

@pytest.mark.parametrize("first, second, theirs", [("tiff", "zarr", "aligned.zarr"), ("zarr", "tiff", "aligned")])
def test_overwrite_with_another_format_refuses_a_user_folder_in_the_way(dataset, tmp_path, first, second, theirs):
    out = tmp_path / "r"
    amst.align(dataset / "raw", out, backend="fast", workers=1, progress=False, out_format=first, passes=1)
    (out / theirs).mkdir()
    (out / theirs / "slice_00003.tif").write_text("mine")
    with pytest.raises(OutputError, match=theirs):
        amst.align(dataset / "raw", out, backend="fast", workers=1, progress=False, out_format=second, passes=1,
                   overwrite=True)
    assert (out / theirs / "slice_00003.tif").read_text() == "mine"
    assert (out / "transforms.json").exists()  # the earlier run is still there


@pytest.mark.parametrize("where", ["report/my_figure.png", ".amst/notes.json", "aligned.zarr/2024",
                                   "aligned.zarr/0/77", ".amst/journal/notes.json"])
def test_overwrite_refuses_user_files_that_look_like_amst_files(dataset, run_dir, tmp_path, where):
    out = tmp_path / "r"
    shutil.copytree(run_dir, out)
    (out / "report").mkdir(exist_ok=True)
    (out / where).write_text("mine")
    before = _tree(out)
    with pytest.raises(OutputError, match=Path(where).name):
        amst.align(dataset / "raw", out, backend="fast", workers=1, progress=False, overwrite=True, median_radius=3)
    assert _tree(out) == before


def test_demo_rerun_checks_everything_before_removing_anything(tmp_path):
    out = tmp_path / "demo"
    entries = [OwnedEntry("data", "owned"), OwnedEntry("amst", "owned")]
    claim_output(out, kind="demo", entries=entries, overwrite=False, replace_own=True)
    synthesize(out / "data", SynthConfig(shape=(3, 64, 64), seed=1), workers=1)
    amst.align(out / "data" / "raw", out / "amst", backend="fast", workers=1, progress=False, passes=1,
               prealign="none")
    (out / "data" / "mine.txt").write_text("mine")
    before = _tree(out)
    with pytest.raises(OutputError, match="mine.txt"):
        claim_output(out, kind="demo", entries=entries, overwrite=False, replace_own=True)
    assert _tree(out) == before


def test_resume_and_report_never_write_through_links(dataset, run_dir, tmp_path):
    out = tmp_path / "r"
    shutil.copytree(run_dir, out)
    theirs = tmp_path / "theirs.txt"
    theirs.write_text("mine")
    (out / "amst.log").unlink()
    (out / "amst.log").symlink_to(theirs)
    with pytest.raises(OutputError, match="amst.log"):
        amst.align(dataset / "raw", out, backend="fast", workers=1, progress=False)
    assert theirs.read_text() == "mine"
    (out / "amst.log").unlink()
    (out / "report").mkdir(exist_ok=True)
    (out / "report" / "index.html").unlink(missing_ok=True)
    (out / "report" / "index.html").symlink_to(theirs)
    res = _cli("report", out)
    assert res.exit_code == 2 and "symbolic link" in res.output
    assert theirs.read_text() == "mine"


def test_resume_recomputes_damaged_slices(dataset, tmp_path):
    for fmt in ("zarr", "tiff"):
        out = tmp_path / fmt
        amst.align(dataset / "raw", out, backend="fast", workers=1, progress=False, out_format=fmt, passes=1)
        stack = out / ("aligned.zarr" if fmt == "zarr" else "aligned")
        reference = open_stack(stack)
        expected = [reference.read(z) for z in range(16)]
        victim = stack / "0" / "8" / "0" / "0" if fmt == "zarr" else stack / "slice_00008.tif"
        victim.write_bytes(victim.read_bytes()[: max(0, victim.stat().st_size // 3)])  # torn or emptied
        res = amst.align(dataset / "raw", out, backend="fast", workers=1, progress=False, out_format=fmt, passes=1)
        assert res.recomputed == 1
        np.testing.assert_array_equal(open_stack(stack).read(8), expected[8])
    (tmp_path / "zarr" / "aligned.zarr" / "0" / ".zarray").unlink()  # metadata lost: the store is made anew
    res = amst.align(dataset / "raw", tmp_path / "zarr", backend="fast", workers=1, progress=False, passes=1)
    assert res.recomputed == 16
    np.testing.assert_array_equal(open_stack(tmp_path / "zarr" / "aligned.zarr").read(8), expected[8])


def test_prealign_transforms_record_the_input_size_for_apply(dataset, tmp_path):
    assert _cli("prealign", dataset / "raw", tmp_path / "p", "--prealign", "features").exit_code == 0
    thin = tmp_path / "thin"
    thin.mkdir()
    for p in sorted((dataset / "raw").iterdir()):
        tifffile.imwrite(thin / p.name, tifffile.imread(p)[:, :32])
    res = _cli("apply", tmp_path / "p" / "transforms.json", thin, tmp_path / "o")
    assert res.exit_code == 2 and "160 x 32" in res.output


def test_elastix_parameters_elastix_cannot_use_leave_no_output(dataset, tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("register: {backend: elastix, elastix: {Metric: Bogus}}\n")
    res = _cli("run", dataset / "raw", tmp_path / "o", "--config", cfg, "--quiet", "--workers", "1")
    assert res.exit_code == 2 and "Bogus" in res.output
    assert not (tmp_path / "o").exists()


def test_median_radius_zero_is_refused():
    with pytest.raises(ValueError, match="median_radius.*>= 1"):
        amst.config.build_config(median_radius=0)


# -- found by the second adversarial pass ----------------------------------------------------------------

@pytest.mark.parametrize("extra", ["1/.zarray", "0/00/0/0", "0/c/0/0/0"])
def test_overwrite_refuses_arrays_and_keys_amst_did_not_write_in_its_store(dataset, run_dir, tmp_path, extra):
    out = tmp_path / "r"
    shutil.copytree(run_dir, out)
    target = out / "aligned.zarr" / extra
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text("{}" if extra.endswith(".zarray") else "mine")
    with pytest.raises(OutputError, match=Path(extra).parts[0]):
        amst.align(dataset / "raw", out, backend="fast", workers=1, progress=False, overwrite=True, median_radius=3)
    assert target.exists()


def test_resume_rewrites_the_ome_metadata_of_its_store(dataset, run_dir, tmp_path):
    out = tmp_path / "r"
    shutil.copytree(run_dir, out)
    (out / "aligned.zarr" / ".zattrs").unlink()
    res = amst.align(dataset / "raw", out, backend="fast", workers=1, progress=False)
    assert res.recomputed == 0
    assert open_stack(out / "aligned.zarr").voxel_size.z == 8.0


@pytest.mark.parametrize("damage", ["truncate", "header"])
def test_resume_recreates_a_damaged_hyperstack(dataset, tmp_path, damage):
    out = tmp_path / "r"
    first = amst.align(dataset / "raw", out, backend="fast", workers=1, progress=False, out_format="tiff-stack",
                       passes=1)
    expected = tifffile.imread(first.output_stack)
    data = first.output_stack.read_bytes()
    first.output_stack.write_bytes(data[:1000] if damage == "truncate" else b"\0" * 8 + data[8:])
    res = amst.align(dataset / "raw", out, backend="fast", workers=1, progress=False, out_format="tiff-stack",
                     passes=1)
    assert res.recomputed == 16
    np.testing.assert_array_equal(tifffile.imread(res.output_stack), expected)


def test_a_tiff_run_of_the_older_layout_can_be_overwritten(dataset, tmp_path):
    out = tmp_path / "r"
    amst.align(dataset / "raw", out, backend="fast", workers=1, progress=False, out_format="tiff", passes=1)
    (out / ".amst" / "owner.json").unlink()  # as written before the marker existed
    (out / "notes.txt").write_text("mine")
    amst.align(dataset / "raw", out, backend="fast", workers=1, progress=False, out_format="tiff", passes=1,
               overwrite=True, median_radius=3)
    assert (out / "notes.txt").read_text() == "mine" and len(list((out / "aligned").iterdir())) == 16


def test_apply_writes_the_voxel_size_of_the_run(dataset, tmp_path, caplog):
    run = amst.align(dataset / "raw", tmp_path / "r", backend="fast", workers=1, progress=False, passes=1,
                     voxel_size=(10.0, 2.0, 2.0))
    with caplog.at_level("WARNING"):
        out = amst.apply(run.out / "transforms.json", dataset / "raw", tmp_path / "ch2.zarr", progress=False)
    assert open_stack(out).voxel_size.z == 10.0 and open_stack(out).voxel_size.x == 2.0
    assert any("voxel size" in m for m in caplog.messages)
    out = amst.apply(run.out / "transforms.json", dataset / "raw", tmp_path / "ch3.zarr", progress=False,
                     voxel_size=amst.stack.VoxelSize(8.0, 5.0, 5.0))
    assert open_stack(out).voxel_size.z == 8.0


@pytest.mark.parametrize("delay", [0.15, 0.3])
def test_ctrl_c_during_start_up_is_one_line(dataset, delay):
    proc = subprocess.Popen([*AMST, "info", str(dataset / "raw")], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True, preexec_fn=_as_from_a_shell)
    time.sleep(delay)
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert "Traceback" not in err
    # Before the interpreter installs its handler, Ctrl-C ends the process as the signal does.
    assert proc.returncode == -signal.SIGINT or (proc.returncode == 130 and "interrupted" in err)


def test_dat_folder_with_a_pattern_not_ending_in_dat(tmp_path):
    frame = Path(__file__).resolve().parents[2] / "shared" / "data" / "janelia_dat"
    frames = sorted(frame.glob("*.dat")) if frame.is_dir() else []
    if not frames:
        pytest.skip("shared .dat frame not present")
    for stamp in ("24-12-16_235958", "24-12-17_000003", "24-12-17_000010"):
        shutil.copy(frames[0], tmp_path / f"Gemini500-7029_{stamp}_0-0-0.dat")
    stack = open_stack(tmp_path, pattern="*24-12-17*")
    assert len(stack) == 2 and stack.describe()["pattern"] == "*24-12-17*"


def test_resume_recreates_an_mrc_of_another_shape(dataset, tmp_path):
    import mrcfile

    out = tmp_path / "r"
    first = amst.align(dataset / "raw", out, backend="fast", workers=1, progress=False, out_format="mrc", passes=1)
    expected = mrcfile.read(first.output_stack).copy()
    mrcfile.new(first.output_stack, np.zeros((16, 20, 20), np.float32), overwrite=True).close()  # damaged
    res = amst.align(dataset / "raw", out, backend="fast", workers=1, progress=False, out_format="mrc", passes=1)
    assert res.recomputed == 16
    np.testing.assert_array_equal(mrcfile.read(res.output_stack), expected)


def test_a_claim_killed_before_its_marker_existed_does_not_block_the_retry(tmp_path):
    """SIGKILL between creating OUT/.amst and renaming the marker into place left a folder every
    retry refused as foreign; only amst's own temporary marker file is cleared, nothing else."""
    out = tmp_path / "out"
    (out / ".amst").mkdir(parents=True)
    (out / ".amst" / ".owner.json.partial").write_text('{"kind": "ru')
    claim_output(out, kind="run", entries=[OwnedEntry("transforms.json", "file")], overwrite=False)
    assert (out / ".amst" / "owner.json").is_file() and not (out / ".amst" / ".owner.json.partial").exists()
    other = tmp_path / "other"
    (other / ".amst").mkdir(parents=True)
    (other / ".amst" / "notes.txt").write_text("mine")
    with pytest.raises(OutputError, match="did not write"):
        claim_output(other, kind="run", entries=[OwnedEntry("transforms.json", "file")], overwrite=False)
    assert (other / ".amst" / "notes.txt").read_text() == "mine"
