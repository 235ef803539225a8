"""Where AMST's error floor comes from: the back-end, or the median template?

    python benchmarks/template_floor.py DATA_DIR RUN_DIR [--slices 50 70 71 104] [--backend fast]

DATA_DIR is an ``amst synth`` output and RUN_DIR an ``amst run`` of its raw stack. For each
chosen slice, the raw slice is registered (from its pre-alignment, same back-end) to the
*clean* phantom rendered at that slice's depth in the run's output frame: a template with
exactly the slice's own content and no noise. Printed side by side, per slice, the
ground-truth RMS error (px) of the pre-alignment, of the run (median template), and of
that registration. If the last column is near zero, the back-end is exact and the run's
error is the mismatch between a slice and the median of its neighbours.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from amst.imageops import finite_float32
from amst.quality.ground_truth import output_to_volume
from amst.register import register
from amst.stack import open_stack
from amst.synth import SynthConfig, load_ground_truth
from amst.transform import apply_to_points, compose
from amst.transforms_io import load_transforms


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("data")
    ap.add_argument("run")
    ap.add_argument("--slices", type=int, nargs="+", default=None, help="default: 8 slices spread over the stack")
    ap.add_argument("--backend", default="fast")
    args = ap.parse_args()
    data, run = Path(args.data), Path(args.run)
    gt = load_ground_truth(data / "ground_truth.json")
    tf = load_transforms(run / "transforms.json")
    raw = open_stack(data / "raw")
    cfg = SynthConfig.from_ground_truth(gt)
    phantom = cfg.phantom()
    n = cfg.shape[0]
    # The run's output frame: output pixel -> volume, as the median over slices of G_z o A_z.
    frame = np.median(output_to_volume(tf.affines, gt["maps"]), axis=0)
    canvas_h, canvas_w = tf.canvas_shape_yx
    gy, gx = np.mgrid[0:canvas_h:16, 0:canvas_w:16]
    pts = np.stack([gx.ravel(), gy.ravel()], axis=1).astype(np.float64)
    target = apply_to_points(frame, pts)

    def error(affine: np.ndarray, z: int) -> float:
        moved = apply_to_points(compose(gt["maps"][z], affine), pts)
        return float(np.sqrt(np.mean(np.sum((moved - target) ** 2, axis=1))))

    slices = args.slices or np.linspace(0, n - 1, 8).round().astype(int).tolist()
    print(f"{'slice':>6}{'pre-alignment':>15}{'run (median template)':>23}{'own clean slice as template':>29}")
    rows = []
    for z in slices:
        clean = phantom.render(frame, z * cfg.z_step, (canvas_h, canvas_w)).astype(np.float32)
        pre = tf.slices[z].prealign
        result = register(args.backend, finite_float32(raw.read(z)), clean, np.ones(clean.shape, bool), pre)
        row = (error(pre, z), error(tf.affines[z], z), error(result.affine, z))
        rows.append(row)
        print(f"{z:>6}{row[0]:>15.3f}{row[1]:>23.3f}{row[2]:>29.3f}")
    med = np.median(np.array(rows), axis=0)
    print(f"{'median':>6}{med[0]:>15.3f}{med[1]:>23.3f}{med[2]:>29.3f}")


if __name__ == "__main__":
    main()
