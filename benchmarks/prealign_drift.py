"""Accumulated drift of pre-alignment: global solve over several z-gaps vs chaining only.

    python benchmarks/prealign_drift.py DATA_DIR [--png drift.png] [--methods features xcorr] [--content-flow]

DATA_DIR is an ``amst synth`` output (``fibsem-nomarks``). For each method it runs the
pre-alignment with the default gaps (1 2 4 8 16, global robust solve) and with ``--gaps 1``
(chaining), and reports the error of every slice position relative to the first slice at
the centre of the field (ground-truth translation part): final, max and mean, plus the
time per slice. The PNG shows the curves.

``--content-flow`` also renders the same phantom without any acquisition (no drift, jitter
or noise) and chains its slice-to-slice shifts: the net lateral motion of the content
itself with depth. Content-based pre-alignment cannot tell it from stage drift, so it is
the floor under both curves (see ``content_flow.py``).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from amst.prealign import PrealignConfig, prealign, to_transforms
from amst.quality.ground_truth import error_at_point
from amst.stack import open_stack
from amst.synth import load_ground_truth
from amst.transform import apply_to_points, invert


def drift_curve(stack, gt, method: str, gaps: tuple[int, ...], workers: int | None) -> tuple[np.ndarray, float, dict]:
    t0 = time.perf_counter()
    res = prealign(stack, PrealignConfig(method=method, gaps=gaps), workers)
    seconds = time.perf_counter() - t0
    tf = to_transforms(stack, res)
    centre = np.array([[stack.shape[2] / 2, stack.shape[1] / 2]])
    p = apply_to_points(invert(tf.slices[0].affine), centre)[0]
    err = np.linalg.norm(error_at_point(tf.affines, gt["maps"], p, reference=0), axis=1)
    return err, seconds, {s: res.status.count(s) for s in set(res.status)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("data")
    ap.add_argument("--methods", nargs="+", default=["features", "xcorr"])
    ap.add_argument("--png", default="prealign_drift.png")
    ap.add_argument("--json", default=None)
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--content-flow", action="store_true", help="also chain the clean phantom's own motion")
    args = ap.parse_args()
    data = Path(args.data)
    stack = open_stack(data / "raw")
    gt = load_ground_truth(data / "ground_truth.json")
    rows, curves = [], {}
    for method in args.methods:
        for label, gaps in (("global solve (gaps 1 2 4 8 16)", (1, 2, 4, 8, 16)), ("chaining (gaps 1)", (1,))):
            err, seconds, status = drift_curve(stack, gt, method, gaps, args.workers)
            curves[f"{method}: {label}"] = err
            rows.append({"method": method, "solve": label, "final_px": float(err[-1]), "max_px": float(err.max()),
                         "mean_px": float(err.mean()), "s_per_slice": seconds / len(stack), "status": status})
    if args.content_flow:
        from content_flow import chained_content_drift

        from amst.synth import SynthConfig

        shifts, chained = chained_content_drift(SynthConfig.from_ground_truth(gt))
        flow = np.r_[0.0, np.linalg.norm(chained, axis=1)]
        curves["content's own motion (clean phantom, chained)"] = flow
        rows.append({"method": "content", "solve": "own motion (no acquisition)", "final_px": float(flow[-1]),
                     "max_px": float(flow.max()), "mean_px": float(flow.mean()), "s_per_slice": float("nan"),
                     "mean_shift_xy_px": shifts.mean(axis=0).tolist()})
    print(f"data: {data} {gt['shape_zyx']} preset {gt['preset']}")
    print(f"{'method':<10}{'solve':<34}{'final px':>9}{'max px':>8}{'mean px':>9}{'s/slice':>9}")
    for r in rows:
        print(f"{r['method']:<10}{r['solve']:<34}{r['final_px']:>9.2f}{r['max_px']:>8.2f}{r['mean_px']:>9.2f}"
              f"{r['s_per_slice']:>9.3f}")
    if args.content_flow:
        mx, my = rows[-1]["mean_shift_xy_px"]
        print(f"content's own mean shift per slice: ({mx:+.3f}, {my:+.3f}) px")
    for method in args.methods:
        g = next(r for r in rows if r["method"] == method and r["solve"].startswith("global"))
        c = next(r for r in rows if r["method"] == method and r["solve"].startswith("chain"))
        print(f"{method}: chaining / global, max drift: {c['max_px'] / max(g['max_px'], 1e-9):.2f}x")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4))
    for name, err in curves.items():
        ax.plot(err, lw=1, label=name, ls="-" if "global" in name else (":" if "content" in name else "--"),
                color="k" if "content" in name else None)
    ax.set_xlabel("slice")
    ax.set_ylabel("position error vs first slice (px)")
    ax.set_title("Accumulated pre-alignment drift against ground truth")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(args.png, dpi=100)
    print(f"curves: {args.png}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
