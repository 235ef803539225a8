"""Are the outputs of ``amst run`` bit-identical between two versions of the code?

    python benchmarks/identical_outputs.py --ref a0448ec [--cases fast-tm-1 dask] [--keep DIR]

Runs the same cases with the checkout's code and with the code of commit ``--ref`` (a
temporary ``git worktree``, put first on ``PYTHONPATH``), on the same synthetic inputs, and
compares, per case:

* every output slice's pixels (dtype, shape and bytes), and the voxel size written;
* ``transforms.json`` without what measures time (keys holding ``seconds`` or ``timings``,
  ``amst_version``): affines, statuses, metrics, the combine record, slice depths.

Inputs (``amst synth``, made once with the checkout's code):

* ``phantom``: 24 x 160 x 160, seed 2, auto-focus events also on slices 3 and 12;
* ``real``: real FIB-SEM content (``--from-volume fibsem_isotropic/flyem_medulla_250.tif``),
  24 x 202 x 202 at 6 x 10 x 10 nm, marks cap a quarter of the field high.

Cases: the fast and elastix back-ends, template matching and features, one and two passes,
a resumed run (a finished run with ``transforms.json``, half of each journal and those
slices' output files removed, run again), a Dask run (a ``LocalCluster`` of 2 worker
processes started for it, ``--scheduler``), and ``--z-spacing resample``. Prints one line
per case and exits 1 when any case differs.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from amst.stack import open_stack

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
VOLUME = "fibsem_isotropic/flyem_medulla_250.tif"
STACKS = {
    "phantom": ["--shape", "24", "160", "160", "--seed", "2", "--autofocus-at", "3", "12"],
    "real": ["--from-volume", str(SHARED / VOLUME), "--shape", "24", "202", "202", "--voxel-size", "6", "10", "10",
             "--cap-height", "0.25", "--seed", "1"],
}


@dataclass(frozen=True)
class Case:
    name: str
    stack: str
    args: tuple[str, ...]
    resume: bool = False
    dask: bool = False


CASES = (
    Case("fast-tm-1", "phantom", ("--backend", "fast", "--prealign", "tm", "--passes", "1")),
    Case("fast-tm-2", "phantom", ("--backend", "fast", "--prealign", "tm", "--passes", "2")),
    Case("fast-features-2", "phantom", ("--backend", "fast", "--prealign", "features", "--passes", "2")),
    Case("fast-tm-2-real", "real", ("--backend", "fast", "--prealign", "tm", "--passes", "2")),
    Case("fast-features-2-real", "real", ("--backend", "fast", "--prealign", "features", "--passes", "2")),
    Case("elastix-tm-1", "phantom", ("--backend", "elastix", "--prealign", "tm", "--passes", "1")),
    Case("elastix-features-2-real", "real", ("--backend", "elastix", "--prealign", "features", "--passes", "2")),
    Case("resume-fast-tm-2", "phantom", ("--backend", "fast", "--passes", "2", "--out-format", "tiff"), resume=True),
    Case("dask-fast-tm-2", "phantom", ("--backend", "fast", "--passes", "2"), dask=True),
    Case("zspacing-resample-real", "real", ("--backend", "fast", "--z-spacing", "resample")),
)

# Started in its own interpreter so that the Dask workers import the code under test.
_CLUSTER_RUN = """
import subprocess, sys
from distributed import LocalCluster
with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
    sys.exit(subprocess.run([sys.executable, "-m", "amst", "run", *sys.argv[1:], "--scheduler",
                             cluster.scheduler_address]).returncode)
"""


def run_amst(args: list[str], code: Path | None, dask: bool = False) -> None:
    env = dict(os.environ)
    if code is not None:
        env["PYTHONPATH"] = str(code) + os.pathsep + env.get("PYTHONPATH", "")
    cmd = [sys.executable, "-c", _CLUSTER_RUN, *args] if dask else [sys.executable, "-m", "amst", "run", *args]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:4])} ... failed ({proc.returncode}):\n{proc.stderr[-3000:]}")


def interrupt(out: Path) -> int:
    """Make a finished run look as if it crashed halfway: returns the slices taken away."""
    (out / "transforms.json").unlink()
    taken = 0
    for journal in sorted((out / ".amst").glob("journal*")):
        entries = sorted(journal.glob("*.json"))
        for entry in entries[len(entries) // 2:]:
            entry.unlink()
            taken += 1
    resampled = sorted((out / ".amst" / "journal").glob("*.json"))
    tiffs = sorted((out / "aligned").glob("*.tif"))
    for tiff in tiffs[len(resampled):]:
        tiff.unlink()
    return taken


def _without_time(doc: Any) -> Any:
    if isinstance(doc, dict):
        return {k: _without_time(v) for k, v in doc.items()
                if "seconds" not in k and "timings" not in k and k != "amst_version"}
    if isinstance(doc, list):
        return [_without_time(v) for v in doc]
    return doc


def fingerprint(out: Path) -> dict[str, str]:
    """Digest of each output stack's pixels and voxel size, and of the time-free transforms.json."""
    parts = {"transforms.json": hashlib.sha256(json.dumps(_without_time(json.loads(
        (out / "transforms.json").read_text())), sort_keys=True).encode()).hexdigest()}
    for name in ("aligned.zarr", "aligned", "aligned_z.zarr", "aligned_z"):
        if not (out / name).exists():
            continue
        stack = open_stack(out / name)
        h = hashlib.sha256(f"{stack.voxel_size}\0{stack.shape}\0{stack.dtype}".encode())
        for z in range(len(stack)):
            h.update(np.ascontiguousarray(stack.read(z)).tobytes())
        parts[name] = h.hexdigest()
    return parts


def run_case(case: Case, raw: Path, out: Path, code: Path | None) -> dict[str, str]:
    args = [str(raw), str(out), *case.args, "--quiet", "--no-report"]
    run_amst(args, code, case.dask)
    if case.resume:
        interrupt(out)
        run_amst(args, code)
    return fingerprint(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ref", required=True, help="commit to compare with (e.g. the last one before a refactor)")
    ap.add_argument("--cases", nargs="+", default=[c.name for c in CASES], choices=[c.name for c in CASES])
    ap.add_argument("--keep", type=Path, help="keep inputs and outputs here")
    args = ap.parse_args()
    repo = Path(__file__).resolve().parents[1]
    with tempfile.TemporaryDirectory() as tmp:
        work = args.keep or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        worktree = Path(tmp) / "ref"
        subprocess.run(["git", "-C", str(repo), "worktree", "add", "--detach", str(worktree), args.ref],
                       check=True, capture_output=True)
        try:
            cases = [c for c in CASES if c.name in args.cases]
            raws = {}
            for name in sorted({c.stack for c in cases}):
                subprocess.run([sys.executable, "-m", "amst", "synth", str(work / name), *STACKS[name], "--overwrite"],
                               check=True, capture_output=True)
                raws[name] = work / name / "raw"
            differing = []
            for case in cases:
                ref = run_case(case, raws[case.stack], work / f"{case.name}.ref", worktree / "src")
                new = run_case(case, raws[case.stack], work / f"{case.name}.new", None)
                same = [k for k in ref if new.get(k) == ref[k]]
                other = sorted(set(ref) ^ set(new) | {k for k in ref if k in new and new[k] != ref[k]})
                print(f"{case.name:<26} {'identical' if not other else 'DIFFERENT'}: "
                      f"{', '.join(same) or '-'}{'; differs: ' + ', '.join(other) if other else ''}", flush=True)
                if other:
                    differing.append(case.name)
        finally:
            subprocess.run(["git", "-C", str(repo), "worktree", "remove", "--force", str(worktree)],
                           capture_output=True)
    print(f"{len(cases) - len(differing)} of {len(cases)} cases bit-identical to {args.ref}")
    sys.exit(1 if differing else 0)


if __name__ == "__main__":
    main()
