"""The elastic refinement (``register.elastic``) against affine-only AMST, side by side.

    python benchmarks/elastic.py [--seeds 1 2] [--cases events-phantom events-volume affine-phantom none-volume cost]
                                 [--shared ../shared/data] [--set register.elastic.significance=6]

Cases (each aligned twice, affine-only and with ``register.elastic.enabled``, same config otherwise):

- ``events-phantom``: ``--preset fibsem-elastic`` (every auto-focus event also displaces an
  irradiated region by 1-3 px, a Gaussian bump of sigma 0.08-0.2 of the field), 160 x 512 x 512,
  extra events at slices 20, 60, 100, 140;
- ``events-volume``: the same acquisition on the real FlyEM volume (``--from-volume``,
  250 x 202 x 202 at a z step of 0.6 px, marks cap 0.25 of the field);
- ``affine-phantom``: ``fibsem-marks`` (auto-focus events without a local part);
- ``none-volume``: the real volume itself, no distortion at all (morphology: the field
  must stay ~0; no ground truth needed);
- ``cost``: 12 x 2048 x 2048 phantom: core-seconds per slice of the elastic stage against
  the affine registration, and of the resampling with a field against without.

On the event cases (first seed) the reference runs too: elastix B-spline with a
bending-energy penalty (``benchmarks/elastix_bspline.py``, weights ``--bspline-weights``) on
the affine-only output, for the event slices and 8 others, with its seconds per slice.

Errors are exact (``ground_truth.json``): per slice the RMS and max over the canvas of the
output -> raw (affine + field, :func:`amst.map_points`) -> volume (affine + bump,
:func:`amst.synth.ground_truth_points`) map against one global affine. The last lines
compare with the bars of issue #17.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np

from accuracy import _overrides  # benchmarks/accuracy.py, beside this script
from amst.pipeline import align
from amst.quality.evaluate import field_magnitudes, full_maps
from amst.quality.ground_truth import slice_errors
from amst.stack import VoxelSize
from amst.synth import SynthConfig, load_ground_truth, synthesize

VOLUME = "fibsem_isotropic/flyem_medulla_250.tif"


def stack_config(case: str, seed: int, shared: Path) -> SynthConfig:
    if case == "events-volume":
        return SynthConfig(shape=(250, 202, 202), preset="fibsem-elastic", seed=seed, voxel_size=VoxelSize(6.0, 10.0, 10.0),
                           volume=str(shared / VOLUME), cap_height=0.25, autofocus_at=(30, 90, 150, 210))
    if case == "events-phantom":
        return SynthConfig(shape=(160, 512, 512), preset="fibsem-elastic", seed=seed, autofocus_at=(20, 60, 100, 140))
    if case == "affine-phantom":
        return SynthConfig(shape=(160, 512, 512), preset="fibsem-marks", seed=seed, autofocus_at=(20, 60, 100, 140))
    if case == "cost":
        return SynthConfig(shape=(12, 2048, 2048), preset="fibsem-elastic", seed=seed, autofocus_at=(5,))
    raise ValueError(case)


def errors(tf, gt: dict) -> dict:
    raw_shape = tuple(gt["shape_zyx"][1:])
    err = slice_errors(tf.affines, gt["maps"], tf.canvas_shape_yx, raw_shape, step=8, **full_maps(tf, gt))
    return {"rms": err["rms"], "max": err["max"]}


def run_pair(data: Path, out: Path, overrides: dict, gt: dict | None) -> dict:
    row = {}
    for mode in ("affine", "elastic"):
        cfg = json.loads(json.dumps(overrides))
        cfg.setdefault("register", {}).setdefault("elastic", {})["enabled"] = mode == "elastic"
        src = data / "raw" if (data / "raw").exists() else data
        res = align(src, out / mode, cfg, backend="fast", progress=False)
        tf = res.transforms
        rms, mx = field_magnitudes(tf)
        row[mode] = {"field_rms": rms, "field_max": mx, "timings": tf.extra.get("timings_per_slice_s", {}),
                     "fields": sorted(z for z, s in enumerate(tf.slices) if s.field is not None)}
        if gt is not None:
            row[mode].update(errors(tf, gt))
    return row


def report_bspline(name: str, out: Path, row: dict, gt: dict, weights: list[float]) -> None:
    """elastix B-spline on the affine-only output of ``out`` against amst's fields, same slices."""
    from elastix_bspline import bspline_displacements, output_to_raw

    from amst.stack import open_stack
    from amst.synth import ground_truth_points
    from amst.transforms_io import load_transforms

    tf = load_transforms(out / "affine" / "transforms.json")
    local = [z for z, s in enumerate(gt["slices"]) if s.get("local") is not None]
    others = [int(z) for z in np.linspace(5, len(gt["slices"]) - 6, 8) if int(z) not in local]
    raw_shape = tuple(gt["shape_zyx"][1:])
    a, e = row["affine"], row["elastic"]
    print(f"  {name} side by side (event slices {len(local)}, others {len(others)}): RMS / max median px")
    print(f"    affine-only   events {np.median(a['rms'][local]):.3f} / {np.median(a['max'][local]):.3f}   "
          f"others {np.median(a['rms'][others]):.3f}")
    print(f"    amst elastic  events {np.median(e['rms'][local]):.3f} / {np.median(e['max'][local]):.3f}   "
          f"others {np.median(e['rms'][others]):.3f}   ({e['timings'].get('elastic', 0):.3f} core-s/slice)")
    stack = open_stack(out / "affine" / (tf.extra.get("output") or "aligned.zarr"))
    for weight in weights:
        disp, seconds = bspline_displacements(stack, tf.affines, local + others, spacing=_spacing(tf), bending_weight=weight)
        err = slice_errors(tf.affines, gt["maps"], tf.canvas_shape_yx, raw_shape, step=8,
                           output_to_raw=output_to_raw(tf.affines, disp),
                           raw_to_volume=lambda z, r: ground_truth_points(gt, z, r))
        print(f"    elastix B-spline bending {weight:g}: events {np.median(err['rms'][local]):.3f} / "
              f"{np.median(err['max'][local]):.3f}   others {np.median(err['rms'][others]):.3f}   ({seconds:.2f} s/slice)")


def _spacing(tf) -> float:
    """amst's automatic node spacing for this canvas (the B-spline gets the same control-point spacing)."""
    from amst.elastic import ElasticParams

    return ElasticParams().spacing(tf.canvas_shape_yx)


def report_events(name: str, rows: list[dict], gts: list[dict]) -> None:
    ev_a, ev_e, mx_a, mx_e, oth = [], [], [], [], []
    hits = misses = false = 0
    for row, gt in zip(rows, gts):
        local = np.array([s.get("local") is not None for s in gt["slices"]])
        a, e = row["affine"], row["elastic"]
        ev_a += list(a["rms"][local]); ev_e += list(e["rms"][local])
        mx_a += list(a["max"][local]); mx_e += list(e["max"][local])
        oth += list(e["rms"][~local] - a["rms"][~local])
        got = np.zeros(len(local), bool); got[e["fields"]] = True
        hits += int((got & local).sum()); misses += int((~got & local).sum()); false += int((got & ~local).sum())
        print(f"  fields on {e['fields']}; local events at {list(np.flatnonzero(local))}")
    ev_a, ev_e, mx_a, mx_e = map(np.array, (ev_a, ev_e, mx_a, mx_e))
    print(f"{name}: {len(ev_a)} event slices; detected {hits}, missed {misses}, fields on other slices {false}")
    print(f"  event RMS median affine {np.median(ev_a):.3f} px, elastic {np.median(ev_e):.3f} px: "
          f"{np.median(ev_a) / np.median(ev_e):.2f}x lower (bar >= 3x)")
    print(f"  event max median affine {np.median(mx_a):.3f} px, elastic {np.median(mx_e):.3f} px: "
          f"{np.median(mx_a) / np.median(mx_e):.2f}x lower (bar >= 3x)")
    print(f"  other slices: median RMS change elastic - affine {np.median(oth):+.4f} px, "
          f"largest {np.max(oth):+.3f} px (bar: median <= +0.02)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shared", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    ap.add_argument("--cases", nargs="+", default=["events-phantom", "events-volume", "affine-phantom", "none-volume",
                                                    "cost"])
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--bspline-weights", type=float, nargs="*", default=[1.0, 1e4, 1e6],
                    help="bending-energy weights of the elastix B-spline reference (none: skip it)")
    ap.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                    help="config override (YAML value), repeatable")
    args = ap.parse_args()
    overrides = _overrides(args.set)
    shared = Path(args.shared)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for case in args.cases:
            if case == "none-volume":
                row = run_pair(shared / VOLUME, tmp / case, overrides, None)
                rms, mx = row["elastic"]["field_rms"], row["elastic"]["field_max"]
                print(f"{case}: real volume, no distortion: fields on {len(row['elastic']['fields'])} of {len(rms)} "
                      f"slices {row['elastic']['fields'][:12]}; field RMS median {np.median(rms):.4f} px (bar <= 0.05), "
                      f"largest max {mx.max():.3f} px (bar <= 0.2)")
                continue
            seeds = args.seeds[:1] if case == "cost" else args.seeds
            rows, gts = [], []
            for seed in seeds:
                data = tmp / f"{case}_{seed}"
                synthesize(data, stack_config(case, seed, shared))
                gts.append(load_ground_truth(data / "ground_truth.json"))
                rows.append(run_pair(data, tmp / f"{case}_{seed}_out", overrides, gts[-1]))
            if case.startswith("events"):
                report_events(case, rows, gts)
                if args.bspline_weights:
                    report_bspline(case, tmp / f"{case}_{seeds[0]}_out", rows[0], gts[0], args.bspline_weights)
            elif case == "affine-phantom":
                d = np.concatenate([r["elastic"]["rms"] - r["affine"]["rms"] for r in rows])
                f = np.concatenate([r["elastic"]["field_rms"] for r in rows])
                print(f"{case}: median error change elastic - affine {np.median(d):+.4f} px (bar |.| <= 0.02); "
                      f"median field RMS {np.median(f):.4f} px (bar <= 0.05); fields on "
                      f"{sum(len(r['elastic']['fields']) for r in rows)} slices")
            else:
                ta, te = rows[0]["affine"]["timings"], rows[0]["elastic"]["timings"]
                print(f"{case} (2048^2, core-s per slice): affine register {te.get('register', 0):.3f}, elastic stage "
                      f"{te.get('elastic', 0):.3f} -> {te.get('elastic', 0) / max(te.get('register', 0), 1e-9):.2f}x "
                      f"the affine's (bar <= 1x); warp {ta.get('warp', 0):.3f} without fields, {te.get('warp', 0):.3f} "
                      f"with {len(rows[0]['elastic']['fields'])} field(s) in {len(rows[0]['elastic']['field_rms'])} slices")


if __name__ == "__main__":
    main()
