"""Ground-truth accuracy of pre-alignment alone and AMST on a synthetic stack, side by side.

    python benchmarks/accuracy.py DATA_DIR --prealign tm --backends fast elastix [--workers 2]

DATA_DIR is an ``amst synth`` output (raw/ + ground_truth.json). Prints per-method median,
p95 and max of the per-slice RMS error (px), the mean at auto-focus slices, the drift
(low-pass of the error at the field centre) before and after AMST, and the run time.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml
from scipy.ndimage import uniform_filter1d

from amst.pipeline import align
from amst.quality.ground_truth import jitter_errors, slice_errors
from amst.synth import load_ground_truth


def summarise(name: str, affines: np.ndarray, canvas, raw_shape, gt, statuses, seconds: float, note: str = "") -> dict:
    err = slice_errors(affines, gt["maps"], canvas, raw_shape)
    af = np.array(["autofocus" in s["events"] for s in gt["slices"]])
    centre = err["displacement_centre"]
    drift = uniform_filter1d(centre, size=min(51, len(centre)), axis=0, mode="nearest")
    jit = jitter_errors(affines, gt["maps"], canvas, raw_shape)
    return {"method": name, "note": note, "median": float(np.nanmedian(err["rms"])), "p95": float(np.nanpercentile(err["rms"], 95)),
            "max": float(np.nanmax(err["rms"])), "autofocus_mean": float(np.nanmean(err["rms"][af])) if af.any() else None,
            "non_autofocus_median": float(np.nanmedian(err["rms"][~af])),
            "drift_max_px": float(np.abs(np.linalg.norm(drift - drift[0], axis=1)).max()),
            "jitter_median": float(np.nanmedian(jit)), "jitter_p95": float(np.nanpercentile(jit, 95)),
            "fallback": int(sum(s == "fallback" for s in statuses)), "seconds": seconds,
            "rms": err["rms"].tolist()}


def _overrides(items: list[str]) -> dict:
    """``["a.b=1", ...]`` -> nested config dict (values parsed as YAML)."""
    out: dict = {}
    for item in items:
        key, _, value = item.partition("=")
        *parents, leaf = key.split(".")
        node = out
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = yaml.safe_load(value)
    return out


def _worse(amst_rms: list[float], pre_rms: list[float]) -> dict:
    """Slices that AMST left worse than the pre-alignment alone: count and the largest increase."""
    diff = np.asarray(amst_rms) - np.asarray(pre_rms)
    return {"count_any": int((diff > 0).sum()), "count_over_0.1px": int((diff > 0.1).sum()),
            "max_increase_px": float(np.nanmax(diff))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("data")
    ap.add_argument("--prealign", default="tm")
    ap.add_argument("--backends", nargs="+", default=["fast"])
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--passes", type=int, nargs="+", default=[2], help="registration passes to compare")
    ap.add_argument("--json", default=None, help="write all figures here")
    ap.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                    help="config override (YAML value), e.g. template.outlier_distortion_px=1; repeatable")
    ap.add_argument("--variants", action="store_true",
                    help="run each --set on its own (one AMST row each; 'a=1;b=2' sets two) instead of all together")
    args = ap.parse_args()
    data = Path(args.data)
    gt = load_ground_truth(data / "ground_truth.json")
    raw_shape = tuple(gt["shape_zyx"][1:])
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        variant_sets = [v.split(";") for v in args.set] if args.variants else [args.set]
        runs = [(b, p, v) for b in args.backends for p in args.passes for v in variant_sets]
        for i, (backend, passes, overrides) in enumerate(runs):
            t0 = time.perf_counter()
            res = align(data / "raw", Path(tmp) / f"run{i}", _overrides(overrides), prealign=args.prealign,
                        backend=backend, passes=passes, workers=args.workers, progress=False)
            seconds = time.perf_counter() - t0
            tf = res.transforms
            if not rows:
                pre = np.array([s.prealign for s in tf.slices])
                rows.append(summarise(f"{args.prealign} only", pre, tf.canvas_shape_yx, raw_shape, gt,
                                      ["ok"] * len(pre), res.timings_per_slice["prealign"] * len(pre) / res.cores))
            rows.append(summarise(f"AMST {backend} x{passes}", tf.affines, tf.canvas_shape_yx, raw_shape, gt, res.statuses,
                                  seconds, " ".join(overrides)))
            rows[-1]["worse_than_prealign"] = _worse(rows[-1]["rms"], rows[0]["rms"])
    print(f"data: {data} ({gt['shape_zyx']}, preset {gt['preset']})")
    print("errors in px; median/p95/max: RMS over each slice after one global transform; jitter: the same with the")
    print("low-pass along z (51 slices) removed; drift: max distance of the low-passed centre from slice 0")
    print(f"{'method':<16}{'median':>8}{'p95':>8}{'max':>8}{'AF mean':>9}{'non-AF med':>11}{'jit med':>8}{'jit p95':>8}"
          f"{'drift':>8}{'fallback':>9}{'time s':>9}")
    for r in rows:
        af = f"{r['autofocus_mean']:.3f}" if r["autofocus_mean"] is not None else "-"
        print(f"{r['method']:<16}{r['median']:>8.3f}{r['p95']:>8.3f}{r['max']:>8.3f}{af:>9}{r['non_autofocus_median']:>11.3f}"
              f"{r['jitter_median']:>8.3f}{r['jitter_p95']:>8.3f}{r['drift_max_px']:>8.2f}{r['fallback']:>9}{r['seconds']:>9.1f}"
              + (f"  worse than pre-alignment: {r['worse_than_prealign']['count_over_0.1px']} slices by > 0.1 px,"
                 f" max +{r['worse_than_prealign']['max_increase_px']:.3f} px" if "worse_than_prealign" in r else "")
              + (f"  [{r['note']}]" if r["note"] else ""))
    if rows[0]["autofocus_mean"]:
        for r in rows[1:]:
            print(f"auto-focus slices: {r['method']} is {rows[0]['autofocus_mean'] / r['autofocus_mean']:.1f}x lower than {rows[0]['method']}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
