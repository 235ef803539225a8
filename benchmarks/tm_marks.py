"""Template-matching pre-alignment error at the marks against ground truth.

    python benchmarks/tm_marks.py DATA_DIR [none|affine]

DATA_DIR is an ``amst synth`` output with marks. Prints median and max of the position
error at the centre of the (auto) template ROI, overall and split into auto-focus and other
slices, plus the sub-pixel accuracy of the NCC peak fit on exact synthetic shifts.
"""

from __future__ import annotations

import sys
import time

import numpy as np

from amst.prealign import PrealignConfig, prealign, to_transforms
from amst.prealign.template_matching import affine_refined_position, match_template
from amst.quality.ground_truth import error_at_point
from amst.stack import open_stack
from amst.synth import load_ground_truth
from amst.synth.acquisition import AcquisitionParams, add_noise
from amst.synth.phantom import Phantom, PhantomParams
from amst.transform import apply_to_points, invert


def subpixel_rms(noise: bool, trials: int = 40, refine: bool = False) -> float:
    p = Phantom((100, 512, 512), 1, PhantomParams())
    rng = np.random.default_rng(0)
    base = p.render(np.array([[1.0, 0, 0], [0, 1, 0]]), 10, (160, 512))
    errs = []
    for _ in range(trials):
        d = rng.uniform(-3, 3, 2)
        img = p.render(np.array([[1.0, 0, d[0]], [0, 1, d[1]]]), 10, (160, 512))
        if noise:
            img = add_noise(img, AcquisitionParams(), rng)
        x, y, _ = match_template(img, base[40:100, 100:400])
        if refine:
            x, y = affine_refined_position(img, base[40:100, 100:400], x, y)
        errs.append([x - 100 + d[0], y - 40 + d[1]])
    return float(np.sqrt((np.array(errs) ** 2).sum(1).mean()))


def main(data: str, refine: str = "none") -> None:
    stack = open_stack(f"{data}/raw")
    gt = load_ground_truth(f"{data}/ground_truth.json")
    t = time.perf_counter()
    res = prealign(stack, PrealignConfig(method="tm", tm_refine=refine))
    seconds = time.perf_counter() - t
    tf = to_transforms(stack, res)
    x, y, w, h = res.info["roi_xywh_px"]
    centre = apply_to_points(invert(tf.slices[res.info["roi_slice"]].affine), np.array([[x + w / 2, y + h / 2]]))[0]
    r = np.linalg.norm(error_at_point(tf.affines, gt["maps"], centre), axis=1)
    af = np.array(["autofocus" in s["events"] for s in gt["slices"]])
    print(f"ROI {res.info['roi_xywh_px']} in slice {res.info['roi_slice']}; {seconds / len(stack):.3f} s/slice")
    print(f"error at the marks: median {np.median(r):.3f} px, max {r.max():.3f} px (all {len(r)} slices)")
    print(f"  other slices: median {np.median(r[~af]):.3f}, max {r[~af].max():.3f}; "
          f"auto-focus slices ({af.sum()}): median {np.median(r[af]):.3f}, max {r[af].max():.3f}")
    print(f"sub-pixel peak fit on exact shifts: {subpixel_rms(False):.4f} px RMS clean, "
          f"{subpixel_rms(True):.4f} px RMS with shot noise")
    print(f"with the affine refinement: {subpixel_rms(False, refine=True):.4f} px RMS clean, "
          f"{subpixel_rms(True, refine=True):.4f} px RMS with shot noise")


if __name__ == "__main__":
    main(sys.argv[1], *sys.argv[2:3])  # optional second argument: tm_refine (none | affine)
