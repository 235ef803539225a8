"""Scale and resilience: a real Dask cluster, and resume after SIGKILL."""

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import amst
from amst.stack import open_stack
from amst.synth import SynthConfig, synthesize

AMST = [sys.executable, "-m", "amst"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    out = tmp_path_factory.mktemp("scale") / "data"
    synthesize(out, SynthConfig(shape=(40, 256, 256), seed=41), workers=2)
    return out / "raw"


@pytest.fixture(scope="module")
def reference(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "out"
    amst.align(data, out, backend="fast", workers=2, progress=False)
    return out


def _same_output(a: Path, b: Path) -> None:
    sa, sb = open_stack(a / "aligned.zarr"), open_stack(b / "aligned.zarr")
    assert sa.shape == sb.shape
    for z in range(len(sa)):
        np.testing.assert_array_equal(sa.read(z), sb.read(z), err_msg=f"slice {z} differs")
    ta = (a / "transforms.json").read_text()
    tb = (b / "transforms.json").read_text()
    import json

    sa_, sb_ = json.loads(ta)["slices"], json.loads(tb)["slices"]
    assert [s["affine"] for s in sa_] == [s["affine"] for s in sb_]


def test_dask_local_cluster_gives_identical_output(data, reference, tmp_path):
    from distributed import LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        proc = subprocess.run([*AMST, "run", str(data), str(tmp_path / "dask"), "--backend", "fast", "--quiet",
                               "--no-report", "--scheduler", cluster.scheduler_address],
                              capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
    _same_output(reference, tmp_path / "dask")


def test_dask_workers_with_two_threads_give_identical_output(data, reference, tmp_path):
    """Two blocks run at once in one worker process: the thread limits must hold for both."""
    from distributed import LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=2, processes=True, dashboard_address=None) as cluster:
        proc = subprocess.run([*AMST, "run", str(data), str(tmp_path / "dask2"), "--backend", "fast", "--quiet",
                               "--no-report", "--scheduler", cluster.scheduler_address, "--block-size", "4"],
                              capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
    _same_output(reference, tmp_path / "dask2")


def _journal_counts(out: Path) -> list[int]:
    state = out / ".amst"
    return [len(list((state / name).glob("*.json"))) if (state / name).exists() else 0
            for name in ("journal_pass1", "journal_pass2", "journal")]


def test_sigkill_at_random_moments_then_resume(data, reference, tmp_path):
    cmd = lambda out: [*AMST, "run", str(data), str(out), "--backend", "fast", "--quiet", "--no-report",  # noqa: E731
                       "--workers", "2"]
    t0 = time.perf_counter()
    subprocess.run(cmd(tmp_path / "timing"), check=True, capture_output=True, timeout=600)
    full = time.perf_counter() - t0
    rng = random.Random(7)
    for k in range(3):
        out = tmp_path / f"killed{k}"
        proc = subprocess.Popen(cmd(out), stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
        # One random moment in each third of the run, so kills land in every stage.
        time.sleep(rng.uniform(0.1 + 0.27 * k, 0.1 + 0.27 * (k + 1)) * full)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        before = _journal_counts(out)
        assert not (out / "transforms.json").exists() or before[2] == 40
        done = subprocess.run(cmd(out), capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
        line = [ln for ln in done.stdout.splitlines() if ln.startswith("slices computed by this run")][0]
        computed = [int(v) for v in line.replace(";", " ").replace(":", " ").split() if v.isdigit()]
        print(f"kill {k}: journals before resume {before}, computed on resume {computed}")
        assert computed == [40 - before[0], 40 - before[1], 40 - before[2]]
        _same_output(reference, out)
