"""Slice thickness from the images: accuracy against exact ground truth, the even-z output, and cost.

    python benchmarks/z_spacing.py [--content phantom volume] [--seeds 0 1 2] [--amplitude 0.3]
                                   [--phantom-shape 120 512 512] [--volume-slices 180]
                                   [--cost-shape 40 2048 2048] [--cost-only | --no-cost] [--shared ../shared/data]

For every content and seed it synthesises two stacks with the full acquisition model
(drift, jitter, auto-focus events, curtains, noise; marks cap for template matching):

* **uneven**: ``--z-variation AMPLITUDE`` (smooth, correlation length 12 slices) plus two abrupt
  slices (one double-thick, one 0.3 steps thin), aligned with ``amst run --prealign tm
  --backend fast --z-spacing resample``;
* **even**: the same without the variation, aligned with ``--z-spacing estimate``.

Content: ``phantom`` (``amst synth``, 8 nm slices of 5 nm pixels, 1.6 px per step) and
``volume`` (real FIB-SEM, ``--from-volume fibsem_isotropic/flyem_medulla_250.tif``, 202 x 202 px
at 10 nm, isotropic 10 nm slices, marks cap a quarter of the field high).

Printed per stack (:func:`amst.quality.ground_truth.depth_errors`, after one global scale):
the depth error (RMS and max, in nominal steps), the thickness error (RMS and max), each abrupt
event's true and estimated thickness, and on the even stack the largest thickness error. Then
the even-z output's z extent of objects ``L`` nominal steps long (10 and 40): the true depth of
output slice k is the blend of its two aligned slices' true depths with the grid's weights
(:mod:`amst.zspacing.grid`), so the extent error is exact; it is printed next to the error of
the uncorrected stack (slice k taken to lie at k steps).

Cost: one stack of ``--cost-shape`` aligned ``--repeats`` times each with ``--z-spacing off`` and
``estimate``, alternating: the median wall-time ratio and the z-spacing stage's share of the
run's other stages.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from amst.pipeline import align
from amst.quality.ground_truth import depth_errors
from amst.stack import VoxelSize
from amst.synth import SynthConfig, load_ground_truth, synthesize
from amst.synth.milling import MillingParams
from amst.transforms_io import load_transforms
from amst.zspacing.grid import even_grid

VOLUME = "fibsem_isotropic/flyem_medulla_250.tif"


def stack_config(content: str, seed: int, milling: MillingParams | None, args: argparse.Namespace) -> SynthConfig:
    if content == "volume":
        return SynthConfig(shape=(args.volume_slices, 202, 202), seed=seed, voxel_size=VoxelSize(10.0, 10.0, 10.0),
                           volume=str(args.shared / VOLUME), cap_height=0.25, z_variation=milling)
    return SynthConfig(shape=tuple(args.phantom_shape), seed=seed, z_variation=milling)


def extent_errors(z_est_nm: np.ndarray, z_true_nm: np.ndarray, step_nm: float, length: int
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Relative error of the z extent of every ``length``-step object: even-z output, uncorrected stack."""
    grid = even_grid(z_est_nm, step_nm)
    t = np.array([(1 - c.weight) * z_true_nm[c.below] + c.weight * z_true_nm[c.below + 1] for c in grid])
    corrected = np.abs(length * step_nm / (t[length:] - t[:-length]) - 1.0)
    raw = np.abs(length * step_nm / (z_true_nm[length:] - z_true_nm[:-length]) - 1.0)
    return corrected, raw


def run_one(cfg: SynthConfig, work: Path, mode: str, workers: int) -> tuple[np.ndarray, dict, float, dict]:
    data = work / "data"
    synthesize(data, cfg, workers=workers, overwrite=True)
    t0 = time.perf_counter()
    res = align(data / "raw", work / "run", prealign="tm", backend="fast", z_spacing=mode, workers=workers,
                progress=False, overwrite=True)
    wall = time.perf_counter() - t0
    tf = load_transforms(work / "run" / "transforms.json")
    return tf.z_nm, load_ground_truth(data / "ground_truth.json"), wall, res.timings_per_slice


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--content", nargs="+", default=["phantom", "volume"], choices=["phantom", "volume"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--amplitude", type=float, default=0.3)
    ap.add_argument("--phantom-shape", nargs=3, type=int, default=[120, 512, 512])
    ap.add_argument("--volume-slices", type=int, default=180)
    ap.add_argument("--cost-shape", nargs=3, type=int, default=[40, 2048, 2048])
    ap.add_argument("--no-cost", action="store_true")
    ap.add_argument("--cost-only", action="store_true")
    ap.add_argument("--repeats", type=int, default=3, help="alternating off/estimate pairs for the cost")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--shared", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    args = ap.parse_args()
    milling = MillingParams(amplitude=args.amplitude, length=12.0, events=2)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        print(f"uneven: +-{100 * args.amplitude:.0f} % smooth variation + 1 double-thick + 1 thin (0.3) slice; "
              "errors in nominal steps after one global scale")
        print(f"{'content':8} {'seed':>4} | {'depth rms':>9} {'max':>6} | {'thick rms':>9} {'max':>6} | "
              f"{'events: true -> est (rel err)':42} | {'even: thick max':>15} | {'extent L=10 corr/raw':>20} "
              f"{'L=40 corr/raw':>14} {'max L=10 corr/raw':>18}")
        rows = []
        for content in [] if args.cost_only else args.content:
            for seed in args.seeds:
                z_est, truth, _, _ = run_one(stack_config(content, seed, milling, args), work, "resample",
                                             args.workers)
                z_true = np.array([s["z_nm"] for s in truth["slices"]])
                step = truth["voxel_size"]["z"]
                err = depth_errors(z_est, z_true, step, truth.get("z_events", []))
                z_even, truth_even, _, _ = run_one(stack_config(content, seed, None, args), work, "estimate",
                                                   args.workers)
                even = depth_errors(z_even, np.arange(len(z_even)) * truth_even["voxel_size"]["z"],
                                    truth_even["voxel_size"]["z"])
                e10, e40 = extent_errors(z_est, z_true, step, 10), extent_errors(z_est, z_true, step, 40)
                ext10, ext40 = [float(np.median(v)) for v in e10], [float(np.median(v)) for v in e40]
                max10 = [float(v.max()) for v in e10]
                events = "  ".join(f"{e['true_steps']:.2f}->{e['estimated_steps']:.2f} "
                                   f"({100 * e['relative_error']:+.0f}%)" for e in err["events"])
                print(f"{content:8} {seed:>4} | {err['depth_rms_steps']:9.3f} {err['depth_max_steps']:6.3f} | "
                      f"{err['thickness_rms_steps']:9.3f} {err['thickness_max_steps']:6.3f} | {events:42} | "
                      f"{even['thickness_max_steps']:15.3f} | {100 * ext10[0]:8.1f}% / {100 * ext10[1]:5.1f}% "
                      f"{100 * ext40[0]:5.1f}%/{100 * ext40[1]:5.1f}% {100 * max10[0]:7.1f}% / {100 * max10[1]:5.1f}%",
                      flush=True)
                rows.append((content, err, even, ext10, ext40))
        for content in [] if args.cost_only else args.content:
            sel = [r for r in rows if r[0] == content]
            print(f"mean {content}: depth rms {np.mean([r[1]['depth_rms_steps'] for r in sel]):.3f} steps, thickness "
                  f"rms {np.mean([r[1]['thickness_rms_steps'] for r in sel]):.3f}, even-stack thickness max "
                  f"{np.mean([r[2]['thickness_max_steps'] for r in sel]):.3f}, extent L=10 "
                  f"{100 * np.mean([r[3][0] for r in sel]):.1f}% "
                  f"(uncorrected {100 * np.mean([r[3][1] for r in sel]):.1f}%), "
                  f"L=40 {100 * np.mean([r[4][0] for r in sel]):.1f}% ({100 * np.mean([r[4][1] for r in sel]):.1f}%)")
        if args.no_cost:
            return
        cfg = SynthConfig(shape=tuple(args.cost_shape), seed=0)
        synthesize(work / "cost", cfg, workers=args.workers, overwrite=True)
        walls: dict[str, list[float]] = {"off": [], "estimate": []}
        share = []
        for _ in range(args.repeats):  # alternating, so that the machine's drift hits both alike
            for mode in ("off", "estimate"):
                t0 = time.perf_counter()
                res = align(work / "cost" / "raw", work / f"cost_run_{mode}", prealign="tm", backend="fast",
                            z_spacing=mode, workers=args.workers, progress=False, overwrite=True)
                walls[mode].append(time.perf_counter() - t0)
                if mode == "estimate":
                    t = res.timings_per_slice
                    share.append(t["z_spacing"] / sum(v for k, v in t.items() if k != "z_spacing"))
        ratios = [b / a for a, b in zip(walls["off"], walls["estimate"])]
        print(f"cost at {args.cost_shape}, {args.repeats} alternating pairs: wall off "
              f"{' '.join(f'{v:.1f}' for v in walls['off'])} s, estimate "
              f"{' '.join(f'{v:.1f}' for v in walls['estimate'])} s; "
              f"ratio median {np.median(ratios):.3f} (each {' '.join(f'{r:.3f}' for r in ratios)}); z_spacing stage "
              f"median {100 * np.median(share):.1f} % of the other stages")

if __name__ == "__main__":
    main()
