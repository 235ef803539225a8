"""Why an auto-focus event on the last 2-3 slices of a stack stays less well corrected: the
joint solve's error by distance from its nearest anchor (a diagnostic for #20's end bar).

    python benchmarks/stack_ends_distance.py [--content phantom texture] [--at-ends 2 3] [--seeds 0 1 2]

The stacks and the run are those of ``benchmarks/stack_ends.py`` (80 x 512 x 512, events on
the first and last k slices, ``--prealign tm --backend fast``, ``template.ends: extend``). The
run's joint refinement (:func:`amst.pipeline.refine.refine_corrections`) is watched: every
run it solves is solved again with every unknown kept (no significance test) and compared
with the true distortion from ``ground_truth.json`` (this script reads the truth; the method
does not). The solve is linear, so its error at a slice does not depend on that slice's own
distortion: an undistorted slice in the same place errs as much. Printed: the median of that
error (RMS px over the canvas) by distance to the nearest anchor, for runs with anchors on one
side only (a stack end) and on both, the final ground-truth error at the same slices, and
the median ground-truth error of the other auto-focus slices (the bar's yard-stick).

The watch replaces two module attributes for the length of the script (``run.refine_corrections``
and ``refine.solve_run``) and forwards every call unchanged; the run's outputs are those of a
plain run.
"""

from __future__ import annotations

import argparse
import tempfile
from collections import defaultdict
from pathlib import Path

import numpy as np

import amst.pipeline.refine as refine
import amst.pipeline.run as run_module
from amst.joint_linear import solve_run
from amst.pipeline import align
from amst.quality.ground_truth import slice_errors
from amst.synth import load_ground_truth, synthesize
from stack_ends import stack_config


class Watch:
    """Records each refinement's placements and each run it solves."""

    def __init__(self) -> None:
        self.calls: list[dict] = []

    def refine_corrections(self, *args, **kwargs):
        self.calls.append({"without_linear": np.array(kwargs["without_linear"]), "runs": []})
        out = self._refine(*args, **kwargs)
        self.calls[-1]["reference_xy"] = np.asarray(kwargs["combined"]["reference_xy"], np.float64)
        return out

    def solve_run(self, pairs, unknowns, noise, *, significance):
        self.calls[-1]["runs"].append((list(pairs), sorted(unknowns), noise))
        return solve_run(pairs, unknowns, noise, significance=significance)

    def install(self) -> None:
        self._refine = run_module.refine_corrections
        run_module.refine_corrections = self.refine_corrections
        refine.solve_run = self.solve_run


def true_distortion(gt_maps: np.ndarray, without_linear: np.ndarray) -> np.ndarray:
    """(n, 4): each slice's linear distortion in its placement's output frame, after the median."""
    h = np.einsum("zij,zjk->zik", np.asarray(gt_maps)[:, :2, :2], without_linear[:, :2, :2])
    e = np.einsum("ij,zjk->zik", np.linalg.inv(np.median(h, axis=0)), h) - np.eye(2)
    return e.reshape(len(e), 4)


def rms_px(e4: np.ndarray, c: np.ndarray, canvas: tuple[int, int]) -> float:
    yy, xx = np.mgrid[0:canvas[0]:16, 0:canvas[1]:16]
    d = e4.reshape(2, 2) @ np.stack([xx.ravel() - c[0], yy.ravel() - c[1]])
    return float(np.sqrt((d ** 2).sum(0).mean()))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shared", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    ap.add_argument("--content", nargs="+", default=["phantom", "texture"], choices=["phantom", "texture", "volume"])
    ap.add_argument("--at-ends", type=int, nargs="+", default=[2, 3])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    shape = (80, 512, 512)
    watch = Watch()
    watch.install()
    solved, final, other_af = defaultdict(list), defaultdict(list), []
    with tempfile.TemporaryDirectory() as tmp:
        for content in args.content:
            for k in args.at_ends:
                for seed in args.seeds:
                    watch.calls.clear()
                    data = Path(tmp) / f"{content}_{k}_{seed}"
                    synthesize(data, stack_config(content, shape, seed, Path(args.shared), k), workers=args.workers)
                    gt = load_ground_truth(data / "ground_truth.json")
                    res = align(data / "raw", data / "run", {"template": {"ends": "extend"}}, prealign="tm",
                                backend="fast", workers=args.workers, progress=False)
                    tf = res.transforms
                    err = slice_errors(tf.affines, gt["maps"], tf.canvas_shape_yx, tuple(gt["shape_zyx"][1:]))["rms"]
                    n, r = len(err), res.config.template.median_radius
                    af = np.array(["autofocus" in s["events"] for s in gt["slices"]])
                    placed = set(range(k)) | set(range(n - k, n))
                    other_af += [float(err[z]) for z in np.flatnonzero(af) if z not in placed and r <= z < n - r]
                    call = watch.calls[-1]  # the last pass's refinement made the output
                    e = true_distortion(gt["maps"], call["without_linear"])
                    for pairs, unknowns, noise in call["runs"]:
                        nodes = {p.source for p in pairs} | {p.target for p in pairs}
                        anchors = sorted(nodes - set(unknowns))
                        kept = solve_run(pairs, unknowns, noise, significance=0.0)
                        for z in unknowns:
                            if z not in kept.deviation:
                                continue
                            sides = "both" if min(anchors) < z < max(anchors) else "one"
                            d = min(min(abs(z - a) for a in anchors), 5)
                            # the model is dev(s->t) = e_s - e_t: the solve's e is minus the
                            # distortion measured in the output frame
                            solved[(sides, d)].append(rms_px(kept.deviation[z] + e[z], call["reference_xy"],
                                                             tf.canvas_shape_yx))
                            final[(sides, d)].append(float(err[z]))
                    print(f"{content} k={k} seed {seed}: {len(call['runs'])} runs solved", flush=True)
    print(f"\nother auto-focus slices (>= r from an end), final GT error median: {np.median(other_af):.3f} px "
          f"({len(other_af)} slices)")
    print(f"{'anchors':<8}{'distance':>9}{'slices':>7}{'solve error (all kept)':>24}{'final GT error':>16}")
    for key in sorted(solved):
        print(f"{key[0]:<8}{key[1]:>9}{len(solved[key]):>7}{np.median(solved[key]):>24.3f}{np.median(final[key]):>16.3f}")


if __name__ == "__main__":
    main()
