"""Registration back-ends side by side on the same slice/template pairs (issue: fast vs elastix).

    python benchmarks/registration.py --sizes 1024 2048 --pairs 8

For each size it synthesises a ``fibsem-marks`` stack, pre-aligns it by template matching,
builds each slice's template exactly as ``amst run`` does (median of the pre-aligned
neighbours, leave-one-out; for fast on the pyramid level it refines on), then registers the same raw slices to the same templates with
every back-end, one thread each, each back-end in its own process (so peak RSS is its
own). Reports median time per slice, ground-truth error median/p95 (px, RMS over the
slice), the time ratio and peak RSS.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import resource
import tempfile
import time
from pathlib import Path

import numpy as np


def _prepare(size: int, n: int, seed: int, workdir: Path) -> Path:
    from amst.prealign import PrealignConfig, prealign, to_transforms
    from amst.stack import open_stack
    from amst.synth import SynthConfig, synthesize

    data = workdir / f"s{size}"
    synthesize(data, SynthConfig(shape=(n, size, size), seed=seed))
    stack = open_stack(data / "raw")
    to_transforms(stack, prealign(stack, PrealignConfig(method="tm"))).save(data / "prealign.json")
    return data


def _pairs(data: Path, count: int, backend: str, full_templates: bool = False):
    """(z, raw, template, mask, level, prealign affine, ideal affine, is_af) for ``count`` slices.

    The template is built as ``amst run`` builds it for ``backend``: for fast, on the
    pyramid level it refines on, from smoothed and reduced raw slices.
    """
    from amst.imageops import finite_float32
    from amst.register import template_level
    from amst.register.fast import level_image, level_shape
    from amst.stack import open_stack
    from amst.synth import load_ground_truth
    from amst.template import masked_median, window_indices
    from amst.transform import at_level, compose, invert
    from amst.transforms_io import load_transforms
    from amst.warp import placed_float

    stack = open_stack(data / "raw")
    tf = load_transforms(data / "prealign.json")
    gt = load_ground_truth(data / "ground_truth.json")
    pre = tf.affines
    n = len(stack)
    canvas = tuple(tf.canvas_shape_yx)
    level = 0 if full_templates else template_level(backend, None, canvas)
    af = np.array(["autofocus" in s["events"] for s in gt["slices"]])
    comp = np.array([compose(g, p) for g, p in zip(gt["maps"], pre)])
    glob = np.median(comp[~af], axis=0)
    chosen = sorted(set(np.flatnonzero(af)[: count // 2].tolist())
                    | set(np.linspace(2, n - 3, count).astype(int).tolist()))[:count]

    def image(k: int) -> np.ndarray:
        img = finite_float32(stack.read(k))
        return level_image(img, level) if level else img

    for z in chosen:
        window = window_indices(z, n, 7, leave_out=True)
        tmpl = masked_median([placed_float(image(k), at_level(pre[k], level), level_shape(canvas, level))
                              for k in window])
        mask = np.isfinite(tmpl)
        filled = np.where(mask, tmpl, np.float32(tmpl[mask].mean()))
        yield (z, stack.read(z).astype(np.float32), filled, mask, level, pre[z],
               compose(invert(gt["maps"][z]), glob), bool(af[z]))


def _error(a: np.ndarray, ideal: np.ndarray, shape) -> float:
    from amst.transform import apply_to_points

    h, w = shape
    g = np.stack(np.meshgrid(np.arange(16, w - 16, 16), np.arange(16, h - 16, 16)), -1).reshape(-1, 2).astype(float)
    return float(np.sqrt((np.linalg.norm(apply_to_points(a, g) - apply_to_points(ideal, g), axis=1) ** 2).mean()))


def _run_backend(backend: str, data: Path, count: int, full_templates: bool, queue) -> None:
    from threadpoolctl import threadpool_limits
    import cv2

    from amst.register import register
    from amst.register.fast import level_image

    def run(raw, tmpl, mask, level, pre):
        # The slice's own reduction to the template level is part of its registration cost.
        image = level_image(raw, level) if level else raw
        return register(backend, image, tmpl, mask, pre, None, level, level)

    cv2.setNumThreads(1)
    rows = []
    with threadpool_limits(1):
        warmed = False
        for z, raw, tmpl, mask, level, pre, ideal, is_af in _pairs(data, count, backend, full_templates):
            if not warmed:  # the first elastix call loads ITK (many seconds): not a per-slice cost
                t = time.perf_counter()
                run(raw, tmpl, mask, level, pre)
                warm = time.perf_counter() - t
                warmed = True
            t = time.perf_counter()
            res = run(raw, tmpl, mask, level, pre)
            rows.append({"z": z, "seconds": time.perf_counter() - t, "error_px": _error(res.affine, ideal, raw.shape),
                         "prealign_error_px": _error(pre, ideal, raw.shape), "autofocus": is_af})
    queue.put({"backend": backend, "rows": rows, "first_call_s": warm,
               "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[1024, 2048])
    ap.add_argument("--pairs", type=int, default=8)
    ap.add_argument("--slices", type=int, default=40)
    ap.add_argument("--backends", nargs="+", default=["fast", "elastix"])
    ap.add_argument("--json", default=None)
    ap.add_argument("--full-templates", action="store_true",
                    help="give every back-end the same full-resolution templates (fast then refines on its "
                         "pyramid level from them) instead of each its own, as amst run builds them")
    ap.add_argument("--keep", default=None, metavar="DIR",
                    help="keep the synthetic stacks here and reuse them on the next run")
    args = ap.parse_args()
    ctx = mp.get_context("spawn")
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes:
            work = Path(args.keep) if args.keep else Path(tmp)
            data = work / f"s{size}"
            if not (data / "prealign.json").exists() or len(list((data / "raw").iterdir())) != args.slices:
                data = _prepare(size, args.slices, 11, work)
            for backend in args.backends:
                q = ctx.Queue()
                p = ctx.Process(target=_run_backend, args=(backend, data, args.pairs, args.full_templates, q))
                p.start()
                out = q.get()
                p.join()
                out["size"] = size
                results.append(out)
    print(f"{'size':>6} {'backend':<8}{'median s':>10}{'GT med px':>11}{'GT p95 px':>11}{'AF mean px':>11}"
          f"{'prealign med':>13}{'peak RSS MB':>12}{'1st call s':>11}")
    for r in results:
        t = np.array([x["seconds"] for x in r["rows"]])
        e = np.array([x["error_px"] for x in r["rows"]])
        pe = np.array([x["prealign_error_px"] for x in r["rows"]])
        af = np.array([x["autofocus"] for x in r["rows"]])
        r["summary"] = {"median_s": float(np.median(t)), "gt_median_px": float(np.median(e)),
                        "gt_p95_px": float(np.percentile(e, 95)), "af_mean_px": float(e[af].mean()) if af.any() else None}
        print(f"{r['size']:>6} {r['backend']:<8}{np.median(t):>10.3f}{np.median(e):>11.3f}{np.percentile(e, 95):>11.3f}"
              f"{(e[af].mean() if af.any() else float('nan')):>11.3f}{np.median(pe):>13.3f}{r['peak_rss_mb']:>12.0f}"
              f"{r['first_call_s']:>11.1f}")
    for size in args.sizes:
        by = {r["backend"]: r for r in results if r["size"] == size}
        if "fast" in by and "elastix" in by:
            ratio = by["elastix"]["summary"]["median_s"] / by["fast"]["summary"]["median_s"]
            print(f"{size}^2: fast is {ratio:.1f}x faster than elastix per slice (median)")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
