"""The residual's own floor: what it reads on slices that are perfectly aligned.

    python benchmarks/residual_floor.py DATA_DIR RUN_DIR [--slices 120] [--sigmas 0.5 0.7 1.0 2.0]

DATA_DIR is an ``amst synth`` output and RUN_DIR an aligned run of it. In each of the run's
residual crops the phantom is rendered at every depth through one fixed frame (no
misalignment at all), with the preset's shot noise, and the jitter residual is measured
on it: with phase correlation alone, and refined by :class:`amst.quality.subpixel.GradientShift`
at several smoothing sigmas. Whatever it reads is the floor: the content's own change from
slice to slice plus noise. Printed beside it, the run's true slice-to-slice misalignment at
the crop (slices next to an auto-focus event or jump left out): misalignment well below the
floor cannot be ranked by any residual.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from amst.prealign.xcorr import PhaseCorrelation
from amst.quality.evaluate import evaluate_run
from amst.quality.ground_truth import error_at_point, output_to_volume
from amst.quality.residual import NeighbourShift, jitter_residual
from amst.quality.subpixel import GradientShift
from amst.synth import SynthConfig, load_ground_truth, to_dtype
from amst.synth.acquisition import add_noise
from amst.transform import compose


def pair_shifts(images: list[np.ndarray], refiner: GradientShift | None) -> np.ndarray:
    """(n, 2) shift of each image to the previous one: the residual sweep's estimator with
    ``refiner`` as its fine step, or its phase correlation alone (at full resolution) if None."""
    estimator = NeighbourShift(fine=refiner) if refiner else \
        NeighbourShift(PhaseCorrelation(max_side=10**6, upsample=10, whitening=0.5), fine=None)
    descs = [estimator.describe(img) for img in images]
    return np.array([np.full(2, np.nan)] + [estimator.measure(a, b) for a, b in zip(descs, descs[1:])])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("data")
    ap.add_argument("run")
    ap.add_argument("--slices", type=int, default=120)
    ap.add_argument("--sigmas", type=float, nargs="+", default=[0.5, 0.7, 1.0, 2.0])
    args = ap.parse_args()
    data, run = Path(args.data), Path(args.run)
    gt = load_ground_truth(data / "ground_truth.json")
    cfg = SynthConfig.from_ground_truth(gt)
    phantom, acquisition = cfg.phantom(), cfg.acquisition_params()
    ev = evaluate_run(run, data / "ground_truth.json")
    frame = np.median(output_to_volume(ev.transforms.affines, gt["maps"]), axis=0)
    n = min(args.slices, cfg.shape[0])
    events = np.array([bool(s["events"]) for s in gt["slices"]])
    near_event = events | np.r_[False, events[:-1]]
    header = ["crop", "phase corr."] + [f"refined s={s:g}" for s in args.sigmas] + ["run: true, median", "p90"]
    print("jitter residual on perfectly aligned noisy slices, mean px")
    print("".join(f"{h:>18}" for h in header))
    for k, crop in enumerate(ev.sweep.crops):
        at_crop = compose(frame, np.array([[1.0, 0.0, crop.x], [0.0, 1.0, crop.y]]))
        images = []
        for z in range(n):
            clean = phantom.render(at_crop, z * cfg.z_step, (crop.size, crop.size))
            noisy = add_noise(clean, acquisition, np.random.default_rng([cfg.seed, 7, k, z]))
            images.append(to_dtype(noisy, cfg.dtype).astype(np.float32))
        floors = [np.nanmean(jitter_residual(pair_shifts(images, None)))]
        floors += [np.nanmean(jitter_residual(pair_shifts(images, GradientShift(sigma=s)))) for s in args.sigmas]
        e = error_at_point(ev.transforms.affines, gt["maps"], np.array([crop.x + crop.size / 2, crop.y + crop.size / 2]))
        true = np.linalg.norm(np.diff(e, axis=0), axis=1)[~near_event[1:]]
        row = [f"{k} ({crop.x},{crop.y},{crop.size})"] + [f"{f:.4f}" for f in floors] + \
            [f"{np.median(true):.4f}", f"{np.percentile(true, 90):.4f}"]
        print("".join(f"{c:>18}" for c in row), flush=True)


if __name__ == "__main__":
    main()
