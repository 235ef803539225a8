"""The automatic template-matching ROI: the old rule and the new one side by side.

    python benchmarks/auto_roi.py [--slices 160] [--shared ../shared/data]

For each stack (the phantom at 512^2 and 384^2, real FIB-SEM content from
``--from-volume fibsem_isotropic/flyem_medulla_250.tif`` at 6 nm slices on its 202 px field
with a marks cap of 0.25; with and without marks) it measures every candidate window of the
middle slice once (:func:`amst.prealign.auto_roi.candidate_windows`, against the slices 10
away, as ``amst run`` does) and picks two of them:

- ``product``: the highest ``distinctiveness * stability`` (amst before this change);
- ``snr``: the highest ``distinctiveness / (1 - stability)`` (now).

For each choice it prints the window, its stability and score (what decide marks or no
marks: ``auto_roi_min_stability`` 0.8 and ``auto_roi_min_score`` 1.0) and, on stacks with marks, the template-matching error at the ROI's centre
against the ground truth (median removed; slices without an auto-focus event): median and p95
of |x| and |y|, and the largest. Ground truth is read only to score.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

from amst.prealign import AUTO_ROI_MIN_SCORE, AUTO_ROI_MIN_STABILITY, PrealignConfig, prealign, to_transforms
from amst.prealign.auto_roi import candidate_windows
from amst.quality.ground_truth import error_at_point
from amst.stack import VoxelSize, open_stack
from amst.synth import SynthConfig, load_ground_truth, synthesize
from amst.transform import apply_to_points, invert

VOLUME = "fibsem_isotropic/flyem_medulla_250.tif"
TEXTURE = "real_2d/neuropil_sstem_1000.h5"


def stacks(shared: Path, n: int) -> list[tuple[str, SynthConfig]]:
    out = []
    for marks in (True, False):
        preset = "fibsem-marks" if marks else "fibsem-nomarks"
        tag = "marks" if marks else "no marks"
        for seed in (0, 1, 2):
            out.append((f"phantom 512 {tag} seed {seed}", SynthConfig(shape=(n, 512, 512), preset=preset, seed=seed)))
        for seed in (0, 1):
            out.append((f"phantom 384 {tag} seed {seed}", SynthConfig(shape=(n, 384, 384), preset=preset, seed=seed)))
        for seed in (0, 1):
            out.append((f"texture 512 {tag} seed {seed}", SynthConfig(shape=(n, 512, 512), preset=preset, seed=seed,
                                                                   texture=str(shared / TEXTURE))))
        out.append((f"phantom 1024 {tag} seed 5", SynthConfig(shape=(40, 1024, 1024), preset=preset, seed=5)))
        out.append((f"phantom 256x320 {tag} seed 3", SynthConfig(shape=(24, 256, 320), preset=preset, seed=3)))
        for seed in (0, 1, 2, 3):
            out.append((f"volume 202 {tag} seed {seed}",
                        SynthConfig(shape=(n, 202, 202), preset=preset, seed=seed,
                                    voxel_size=VoxelSize(6.0, 10.0, 10.0), volume=str(shared / VOLUME),
                                    cap_height=0.25)))
    return out


def tm_error(stack, gt: dict, xywh: tuple[int, int, int, int], roi_slice: int) -> np.ndarray:
    """(n, 2) template-matching error at the ROI's centre (px), median removed; NaN rows where TM failed."""
    res = prealign(stack, PrealignConfig(method="tm", roi=tuple(float(v) for v in xywh), roi_units="px",
                                         roi_slice=roi_slice), workers=2)
    tf = to_transforms(stack, res)
    x, y, w, h = xywh
    centre = apply_to_points(invert(tf.slices[roi_slice].affine), np.array([[x + (w - 1) / 2, y + (h - 1) / 2]]))[0]
    err = error_at_point(tf.affines, gt["maps"], centre)
    err[np.array([s != "ok" for s in res.status])] = np.nan
    return err


def summary(err: np.ndarray, af: np.ndarray) -> str:
    e = np.abs(err[~af & np.all(np.isfinite(err), axis=1)] - np.nanmedian(err[~af], axis=0))
    failed = int((~np.all(np.isfinite(err), axis=1)).sum())
    return (f"x {np.median(e[:, 0]):.3f}/{np.percentile(e[:, 0], 95):.3f}  y {np.median(e[:, 1]):.3f}/"
            f"{np.percentile(e[:, 1], 95):.3f}  max {e.max():.2f}" + (f"  ({failed} failed)" if failed else ""))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shared", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    ap.add_argument("--slices", type=int, default=160)
    args = ap.parse_args()
    pooled: dict[str, dict[str, list]] = {rule: {"marks_y_p95": [], "marks_below": 0, "nomarks_above": 0,
                                                 "nomarks_max": 0.0, "marks_min": 1.0, "marks_scores": [],
                                                 "nomarks_scores": []} for rule in ("product", "snr")}
    for name, cfg in stacks(Path(args.shared), args.slices):
        with tempfile.TemporaryDirectory() as tmp:
            synthesize(tmp, cfg)
            stack = open_stack(f"{tmp}/raw")
            gt = load_ground_truth(f"{tmp}/ground_truth.json")
            n = len(stack)
            mid = n // 2
            windows, _ = candidate_windows(stack.read(mid), [stack.read(mid - 10), stack.read(mid + 10)])
            picks = {"product": windows.proposal(int(np.argmax(windows.distinctiveness * windows.stability))),
                     "snr": windows.proposal()}
            af = np.array(["autofocus" in s["events"] for s in gt["slices"]])
            marks = cfg.preset == "fibsem-marks"
            for rule, p in picks.items():
                line = (f"{name:28s} {rule:7s} ROI {p.xywh} stability {p.stability:.3f} distinct "
                        f"{p.distinctiveness:.3f} score {p.score:.2f}")
                if marks:
                    err = tm_error(stack, gt, p.xywh, mid)
                    line += "  TM error (median/p95 px) " + summary(err, af)
                    e = np.abs(err[~af & np.all(np.isfinite(err), axis=1)] - np.nanmedian(err[~af], axis=0))
                    pooled[rule]["marks_y_p95"].append(float(np.percentile(e[:, 1], 95)))
                    pooled[rule]["marks_below"] += p.stability < AUTO_ROI_MIN_STABILITY
                    pooled[rule]["marks_min"] = min(pooled[rule]["marks_min"], p.stability)
                    pooled[rule]["marks_scores"].append(picks["snr"].score if rule == "snr" else p.score)
                else:
                    pooled[rule]["nomarks_above"] += p.stability >= AUTO_ROI_MIN_STABILITY
                    pooled[rule]["nomarks_max"] = max(pooled[rule]["nomarks_max"], p.stability)
                    pooled[rule]["nomarks_scores"].append(p.score)
                print(line, flush=True)
    print()
    for rule, v in pooled.items():
        print(f"{rule:7s}: marks stacks: median of the TM y-error p95 {np.median(v['marks_y_p95']):.3f} px, "
              f"worst {max(v['marks_y_p95']):.3f} px; chosen stability with marks >= {v['marks_min']:.3f} "
              f"({v['marks_below']} below {AUTO_ROI_MIN_STABILITY}, sent to features), without marks <= "
              f"{v['nomarks_max']:.3f} ({v['nomarks_above']} taken for marks by the stability alone)")
    snr = pooled["snr"]
    print(f"score of the window the snr rule chose (what auto_roi_min_score = {AUTO_ROI_MIN_SCORE} gates): with marks "
          f"{min(snr['marks_scores']):.2f}-{max(snr['marks_scores']):.2f}, without marks "
          f"{min(snr['nomarks_scores']):.2f}-{max(snr['nomarks_scores']):.2f}")


if __name__ == "__main__":
    main()
