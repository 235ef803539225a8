"""Auto-focus events at the stack's ends, and the residual flags, side by side per template end rule.

    python benchmarks/stack_ends.py [--content phantom texture] [--seeds 0 1 2] [--at-ends 1 2 3]
                                    [--ends shrink mirror] [--shape 80 512 512] [--flags]

For every content (``phantom``: ``amst synth``; ``texture``: the phantom with real EM texture,
``real_2d/neuropil_sstem_1000.h5``; ``volume``: real FIB-SEM content, ``amst synth --from-volume
fibsem_isotropic/flyem_medulla_250.tif`` at 6 nm slices, the depth of ``--shape`` by 202 x 202,
marks cap a quarter of the field high as in ``benchmarks/real_content.py``), seed and k in ``--at-ends`` it synthesises a stack with
auto-focus events on the first k and the last k slices (``autofocus_at``) on top of the
random ones, aligns it once per ``template.ends`` rule (``--backend fast``, two passes) and
prints the ground-truth error (RMS over the slice after one global transform, px):

* ``first`` / ``last``: mean error at the k event slices of each end;
* ``AF other``: median error at the other (random) auto-focus slices at least r (the median
  radius) from either end: a random event within r of an end is an end event itself (seed 1 has
  one on slices 76-77 of 80: counted, it made extend's "AF other" 0.82 px against shrink's 0.26 px);
* ratio: end error / AF other (acceptance: at most 2);
* ``ends non-AF``: median error of the slices within ``2 r`` (r = median radius) of either end
  that have no event (the bias of a window that is not centred in depth), next to
  ``inner non-AF``, the median of the other event-free slices.

k = 0 is the control: no events placed, only the random ones.

``--flags`` also measures the residual flag rule (:mod:`amst.quality.flags`) on every run:
slices flagged and the largest robust z of the jitter residual among slices whose ground-truth
error (and their neighbours') is below 0.5 px (false alarms), and, on every k = 0 stack (last
``--ends`` rule), the same run with one middle slice shifted by 1.5 px and re-warped (must be named).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np

from amst.pipeline import align, apply
from amst.quality.evaluate import evaluate_run
from amst.quality.flags import FlagRule, residual_flags, robust_z
from amst.quality.ground_truth import slice_errors
from amst.quality.report import build_report
from amst.quality.residual import jitter_shift
from amst.stack import VoxelSize
from amst.synth import SynthConfig, load_ground_truth, synthesize
from amst.transforms_io import load_transforms

TEXTURE = "real_2d/neuropil_sstem_1000.h5"
VOLUME = "fibsem_isotropic/flyem_medulla_250.tif"


def stack_config(content: str, shape: tuple[int, int, int], seed: int, shared: Path, k: int) -> SynthConfig:
    n = shape[0]
    if content == "volume":
        return SynthConfig(shape=(n, 202, 202), seed=seed, voxel_size=VoxelSize(6.0, 10.0, 10.0),
                           volume=str(shared / VOLUME), cap_height=0.25, autofocus_at=events_at(k, n))
    texture = str(shared / TEXTURE) if content == "texture" else None
    return SynthConfig(shape=shape, seed=seed, texture=texture, autofocus_at=events_at(k, n))


def events_at(k: int, n: int) -> tuple[int, ...]:
    return tuple(range(k)) + tuple(range(n - k, n))


def measure(err: np.ndarray, af: np.ndarray, k: int, radius: int) -> dict:
    n = len(err)
    first, last = np.arange(k), np.arange(n - k, n)
    ends = np.zeros(n, bool)
    ends[:2 * radius] = ends[n - 2 * radius:] = True
    placed = np.zeros(n, bool)
    placed[first] = placed[last] = True
    inner = np.zeros(n, bool)
    inner[radius:n - radius] = True
    other_af = af & ~placed & inner
    return {"first": float(err[first].mean()) if k else None, "last": float(err[last].mean()) if k else None,
            "af_other": float(np.median(err[other_af])) if other_af.any() else float("nan"),
            "ends_non_af": float(np.median(err[ends & ~af])), "inner_non_af": float(np.median(err[~ends & ~af]))}


def clean_max_z(ev, err: np.ndarray) -> float:
    """Largest robust z of the jitter residual at slices that are aligned (< 0.5 px, and their previous one)."""
    ok = (err < 0.5) & np.r_[False, err[:-1] < 0.5]
    zs = [robust_z(np.linalg.norm(jitter_shift(s), axis=1)) for s in ev.sweep.shift_xy]
    best = np.nanmax([np.nanmax(np.where(ok, z, np.nan)) for z in zs])
    return float(best)


def misaligned_check(run: Path, raw: Path, gt: dict, slice_z: int, shift_px: float, tmp: Path) -> dict:
    """Shift slice ``slice_z``'s transform by ``shift_px`` (x), re-warp the stack, rebuild the report."""
    tf = load_transforms(run / "transforms.json")
    tf.slices[slice_z].affine = tf.slices[slice_z].affine + np.array([[0, 0, shift_px], [0, 0, 0]])
    out = tmp / "misaligned"
    out.mkdir(parents=True)
    tf.save(tmp / "misaligned_transforms.json")
    apply(tmp / "misaligned_transforms.json", raw, out / "aligned.zarr")
    tf.extra["output"] = "aligned.zarr"
    tf.save(out / "transforms.json")
    build_report(out)
    html_text = (out / "report" / "index.html").read_text()
    summary_line = html_text.split('<p class="', 2)[1].split("</p>")[0]
    tf2 = load_transforms(out / "transforms.json")
    checks = [s.index for s in tf2.slices if "residual_flag" in s.metrics]
    return {"named_in_summary": f"slice {slice_z}" in summary_line, "in_transforms_check": checks,
            "summary": summary_line.split("<b>")[-1].split("</b>")[0]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shared", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    ap.add_argument("--content", nargs="+", default=["phantom", "texture"], choices=["phantom", "texture", "volume"])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--at-ends", type=int, nargs="+", default=[0, 1, 2, 3])
    ap.add_argument("--ends", nargs="+", default=["shrink", "extend"])
    ap.add_argument("--shape", type=int, nargs=3, default=[80, 512, 512])
    ap.add_argument("--prealign", default="tm")
    ap.add_argument("--backend", default="fast")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--flags", action="store_true")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    n = args.shape[0]
    rows = []
    print(f"shape {args.shape}, prealign {args.prealign}, backend {args.backend}, 2 passes; GT RMS error px")
    print(f"{'content':<9}{'k':>2}{'seed':>5}{'ends':>8}{'first':>8}{'last':>8}{'AF other':>9}{'first/AF':>9}"
          f"{'last/AF':>8}{'ends nonAF':>11}{'inner nonAF':>12}" + (f"{'flagged (GT px)':>28}{'clean max z':>12}"
                                                                  if args.flags else ""))
    with tempfile.TemporaryDirectory() as tmp_root:
        tmp_root = Path(tmp_root)
        for content in args.content:
            for k in args.at_ends:
                for seed in args.seeds:
                    data = tmp_root / f"{content}_{k}_{seed}"
                    synthesize(data, stack_config(content, tuple(args.shape), seed, Path(args.shared), k),
                               workers=args.workers)
                    gt = load_ground_truth(data / "ground_truth.json")
                    af = np.array(["autofocus" in s["events"] for s in gt["slices"]])
                    for ends in args.ends:
                        run = data / f"run_{ends}"
                        res = align(data / "raw", run, {"template": {"ends": ends}}, prealign=args.prealign,
                                    backend=args.backend, workers=args.workers, progress=False)
                        tf = res.transforms
                        err = slice_errors(tf.affines, gt["maps"], tf.canvas_shape_yx, tuple(gt["shape_zyx"][1:]))["rms"]
                        row = {"content": content, "k": k, "seed": seed, "ends": ends,
                               **measure(err, af, k, res.config.template.median_radius)}
                        line = (f"{content:<9}{k:>2}{seed:>5}{ends:>8}"
                                + "".join(f"{row[c]:>8.3f}" if row[c] is not None else f"{'-':>8}"
                                          for c in ("first", "last"))
                                + f"{row['af_other']:>9.3f}"
                                + "".join(f"{row[c] / row['af_other']:>{w}.2f}" if row[c] is not None else f"{'-':>{w}}"
                                          for c, w in (("first", 9), ("last", 8)))
                                + f"{row['ends_non_af']:>11.3f}{row['inner_non_af']:>12.3f}")
                        if args.flags:
                            ev = evaluate_run(run)
                            flags = residual_flags(ev.sweep.shift_xy, FlagRule(),
                                                   {i for i, s in enumerate(res.statuses) if s != "ok"})
                            row["flagged"] = [(f.index, float(err[f.index])) for f in flags]
                            row["clean_max_z"] = clean_max_z(ev, err)
                            text = f"{len(flags)}: " + (" ".join(f"{i}({e:.2f})" for i, e in row["flagged"]) or "-")
                            line += f"{text[:27]:>28}{row['clean_max_z']:>12.1f}"
                            if len(text) > 27:
                                line += f"\n    flagged slice(GT px): {text}"
                            if k == 0 and ends == args.ends[-1]:
                                row["misaligned"] = misaligned_check(run, data / "raw", gt, n // 2 + 3, 1.5,
                                                                     data / "mis")
                        print(line, flush=True)
                        if "misaligned" in row:
                            print(f"    slice {n // 2 + 3} shifted by 1.5 px: {row['misaligned']}", flush=True)
                        rows.append(row)
    print("\nmean over seeds: end error / median error of the other auto-focus slices")
    print(f"{'content':<9}{'k':>2}{'ends':>8}{'first/AF':>9}{'last/AF':>8}{'ends nonAF':>11}{'inner nonAF':>12}")
    for content in args.content:
        for k in args.at_ends:
            for ends in args.ends:
                sel = [r for r in rows if r["content"] == content and r["k"] == k and r["ends"] == ends]
                if not sel:
                    continue
                ratio = {c: (np.mean([r[c] / r["af_other"] for r in sel]) if k else float("nan")) for c in ("first", "last")}
                print(f"{content:<9}{k:>2}{ends:>8}{ratio['first']:>9.2f}{ratio['last']:>8.2f}"
                      f"{np.mean([r['ends_non_af'] for r in sel]):>11.3f}{np.mean([r['inner_non_af'] for r in sel]):>12.3f}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
