"""Throughput vs workers, peak memory vs stack depth, and where the time goes, of ``amst run``.

    python benchmarks/scale.py rss        --depths 200 2000 --size 128
    python benchmarks/scale.py throughput --workers 1 2 --size 2048 --slices 16
    python benchmarks/scale.py cost       --slices 200 --size 2048 --workers 2 [--raw DIR]

``rss`` runs ``amst run`` on synthetic stacks of different depth (same slice size) and
samples the resident memory of the whole process tree (main process + workers) every
50 ms: the peak of the sum is reported. ``throughput`` runs the same stack with different
worker counts and reports slices/s, core-seconds per megapixel and the speed-up.

``cost`` runs ``amst run --backend fast --no-report`` once (``--raw``: an existing stack,
else ``amst synth`` of ``--slices`` x ``--size``^2, seed 3) and, in the same run, its floor:
``amst apply`` of the run's own transforms to the same raw slices (read + cubic warp + write
of each slice, nothing else), with the same workers. It prints the run's core seconds per
slice (wall x workers / slices, the wall measured outside the process, interpreter start
included), the printed stages (``transforms.json`` ``timings_per_slice_s``) with their sum
against that, the share that is ``idle``, and the ratio to the floor.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path


def _tree_rss_mb(pid: int) -> float:
    total, stack = 0.0, [pid]
    while stack:
        p = stack.pop()
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1]) / 1024
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    stack.extend(int(c) for c in f.read().split())
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
    return total


def run_measured(cmd: list[str]) -> tuple[float, float]:
    """Wall seconds and peak tree RSS (MB) of a command."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    peak = [0.0]

    def poll():
        while proc.poll() is None:
            peak[0] = max(peak[0], _tree_rss_mb(proc.pid))
            time.sleep(0.05)

    th = threading.Thread(target=poll)
    th.start()
    _, err = proc.communicate()
    th.join()
    if proc.returncode != 0:
        raise RuntimeError(err.decode()[-2000:])
    return time.perf_counter() - t0, peak[0]


def synth(out: Path, shape: tuple[int, int, int]) -> Path:
    subprocess.run([sys.executable, "-m", "amst", "synth", str(out), "--shape", *map(str, shape), "--seed", "3"],
                   check=True, capture_output=True)
    return out / "raw"


def cost(args: argparse.Namespace, tmp: Path, amst: list[str]) -> None:
    size = args.size or 2048
    raw = args.raw or synth(tmp / "c", (args.slices, size, size))
    workers = max(args.workers)
    out = tmp / "run"
    wall, peak = run_measured([*amst, str(raw), str(out), "--backend", args.backend, "--quiet", "--no-report",
                               "--workers", str(workers)])
    doc = json.loads((out / "transforms.json").read_text())
    n = len(doc["slices"])
    stages = doc["timings_per_slice_s"]
    floor_wall, _ = run_measured([sys.executable, "-m", "amst", "apply", str(out / "transforms.json"), str(raw),
                                  str(tmp / "floor.zarr"), "--workers", str(workers)])
    end_to_end = wall * workers / n
    floor = floor_wall * workers / n
    work = sum(v for k, v in stages.items() if k != "idle")
    print(f"{n} slices, {workers} workers, --backend {args.backend}: wall {wall:.1f} s, peak RSS {peak:.0f} MB")
    print("stages (core-s per slice): " + "  ".join(f"{k} {v:.3f}" for k, v in stages.items() if v > 0))
    print(f"end to end: {end_to_end:.3f} core-s per slice")
    print(f"stage sum {sum(stages.values()):.3f} core-s per slice = {100 * sum(stages.values()) / end_to_end:.1f} % "
          f"of wall x workers; without idle {work:.3f} = {100 * work / end_to_end:.1f} %; idle "
          f"{100 * stages.get('idle', 0.0) / end_to_end:.1f} %")
    print(f"floor (amst apply: read + cubic warp + write, {workers} workers): {floor:.3f} core-s per slice; "
          f"run / floor = {end_to_end / floor:.2f}x")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("mode", choices=["rss", "throughput", "cost"])
    ap.add_argument("--depths", type=int, nargs="+", default=[200, 2000])
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--size", type=int, default=None)
    ap.add_argument("--slices", type=int, default=16)
    ap.add_argument("--raw", type=Path, help="cost: an existing raw stack instead of a synthetic one")
    ap.add_argument("--backend", default="fast")
    args = ap.parse_args()
    amst = [sys.executable, "-m", "amst", "run"]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if args.mode == "cost":
            cost(args, tmp, amst)
        elif args.mode == "rss":
            size = args.size or 128
            rows = []
            for depth in args.depths:
                raw = synth(tmp / f"d{depth}", (depth, size, size))
                secs, peak = run_measured([*amst, str(raw), str(tmp / f"o{depth}"), "--backend", args.backend,
                                           "--quiet", "--no-report", "--workers", "2"])
                rows.append((depth, secs, peak))
                print(f"depth {depth:>6}: peak RSS {peak:8.0f} MB (main + workers), {secs:7.1f} s")
            base = rows[0][2]
            for depth, _, peak in rows[1:]:
                print(f"peak RSS {depth} vs {rows[0][0]} slices: {100 * (peak - base) / base:+.1f} %")
        else:
            size = args.size or 2048
            raw = synth(tmp / "t", (args.slices, size, size))
            times = {}
            for w in args.workers:
                secs, peak = run_measured([*amst, str(raw), str(tmp / f"w{w}"), "--backend", args.backend,
                                           "--quiet", "--no-report", "--workers", str(w)])
                times[w] = secs
                mpix = args.slices * size * size / 1e6
                print(f"workers {w}: {secs:7.1f} s, {args.slices / secs:6.2f} slices/s, "
                      f"{w * secs / mpix:6.3f} core-s per megapixel, peak RSS {peak:6.0f} MB")
            w0 = min(times)
            for w in sorted(times)[1:]:
                print(f"speed-up {w0} -> {w} workers: {times[w0] / times[w]:.2f}x")


if __name__ == "__main__":
    main()
