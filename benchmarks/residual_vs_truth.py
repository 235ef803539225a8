"""Does the paper's residual (no ground truth) follow the true error? Spearman per crop.

    python benchmarks/residual_vs_truth.py DATA_DIR RUN_DIR [--tm-refine affine|none]

RUN_DIR is an aligned output of DATA_DIR (an ``amst synth`` folder); if it does not exist
a translation-only (TM) alignment is written there first (``--tm-refine``: the
pre-alignment's ``tm_refine``, default ``affine`` as in ``amst run``; ``none`` is plain NCC
template matching, which leaves larger errors). For each residual crop the
residual of slice z is compared with the true displacement between z-1 and z at the crop
centre. Both the paper's residual and the jitter residual (slow sample motion removed) are
reported.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr

from amst.prealign import PrealignConfig, prealign, to_transforms
from amst.quality.evaluate import evaluate_run
from amst.quality.ground_truth import error_at_point
from amst.stack import create_writer, open_stack
from amst.synth import load_ground_truth
from amst.warp import warp_slice


def main(data: Path, run: Path, tm_refine: str) -> None:
    if not (run / "transforms.json").exists():
        raw = open_stack(data / "raw")
        tf = to_transforms(raw, prealign(raw, PrealignConfig(method="tm", tm_refine=tm_refine)))
        w = create_writer(run / "aligned", "tiff", (len(raw), *tf.canvas_shape_yx), raw.dtype, raw.voxel_size)
        for z in range(len(raw)):
            w.write(z, warp_slice(raw.read(z), tf.slices[z].affine, tf.canvas_shape_yx, "linear"))
        tf.extra["output"] = "aligned"
        tf.save(run / "transforms.json")
    ev = evaluate_run(run, data / "ground_truth.json")
    gt = load_ground_truth(data / "ground_truth.json")
    jitter = np.array(ev.per_slice["gt_jitter_px"], dtype=float)
    for label, residual in (("paper residual", ev.sweep.residual_px), ("jitter residual", ev.sweep.jitter_residual_px)):
        res_all, true_all = [], []
        for k, c in enumerate(ev.sweep.crops):
            e = error_at_point(ev.transforms.affines, gt["maps"], np.array([c.x + c.size / 2, c.y + c.size / 2]))
            true = np.r_[np.nan, np.linalg.norm(np.diff(e, axis=0), axis=1)]
            r = residual[k]
            m = np.isfinite(r) & np.isfinite(true)
            res_all.append(r[m])
            true_all.append(true[m])
            print(f"{label}, crop {k} (x={c.x} y={c.y} size={c.size}): Spearman "
                  f"{spearmanr(r[m], true[m]).statistic:.3f}, mean residual {np.mean(r[m]):.3f} px, "
                  f"mean true {np.mean(true[m]):.3f} px")
        print(f"{label}: pooled Spearman {spearmanr(np.concatenate(res_all), np.concatenate(true_all)).statistic:.3f}; "
              f"mean {np.nanmean(residual):.3f} px vs mean true jitter {np.nanmean(jitter):.3f} px "
              f"({np.nanmean(residual) / np.nanmean(jitter):.2f}x)")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("data", type=Path)
    ap.add_argument("run", type=Path)
    ap.add_argument("--tm-refine", choices=["affine", "none"], default="affine")
    args = ap.parse_args()
    main(args.data, args.run, args.tm_refine)
