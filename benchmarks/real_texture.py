"""AMST on real EM texture: aligned real crops distorted by known jitter and auto-focus events.

    python benchmarks/real_texture.py [--shared ../shared/data] [--backend fast] [--prealign xcorr]

Each aligned real volume (``aligned_crops/*.tif``; each ``real_2d`` image repeated as a
static stack with fresh noise per slice) is the ground-truth volume. Raw slice z samples
it through a known map G_z (jitter + drift + auto-focus scale/shear about the top centre,
the same model as ``amst synth``), with a margin so every raw pixel has data. AMST then
aligns the raw stack and the per-slice error (RMS over the slice, px) is measured against
G_z. Prints median and p95 per dataset, and the pre-alignment's for comparison.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import cv2
import numpy as np
import tifffile
from skimage.transform import warp

from accuracy import _overrides  # benchmarks/accuracy.py, beside this script
from amst.imageops import saturate
from amst.pipeline import align
from amst.quality.ground_truth import slice_errors
from amst.stack import VoxelSize, create_writer, open_stack
from amst.synth.acquisition import AcquisitionParams, simulate_acquisition
from amst.transform import compose, translation

MARGIN = 16


def volumes(shared: Path):
    for p in sorted((shared / "aligned_crops").glob("*.tif")):
        yield p.stem.split("_")[0], tifffile.imread(p)
    rng = np.random.default_rng(0)
    for p in sorted((shared / "real_2d").glob("*")):
        if p.suffix == ".h5":
            img = open_stack(p).read(0)
        elif p.suffix == ".bmp":
            img = cv2.imread(str(p), cv2.IMREAD_GRAYSCALE)[:1024, :1024]
        else:
            continue
        stack = np.stack([np.clip(img + rng.normal(0, 6, img.shape), 0, 255).astype(np.uint8) for _ in range(30)])
        yield p.stem[:20], stack


def distort(vol: np.ndarray, seed: int, identity: bool = False) -> tuple[np.ndarray, np.ndarray]:
    n, h, w = vol.shape
    rh, rw = h - 2 * MARGIN, w - 2 * MARGIN
    params = AcquisitionParams(jump_probability=0.0, autofocus_interval=max(8.0, n / 4), drift_walk=0.05)
    if identity:
        params = AcquisitionParams(drift_walk=0.0, drift_linear=0.0, jitter=0.0, jump_probability=0.0,
                                   autofocus_interval=0.0)
    acq = simulate_acquisition(n, (rh, rw), params, seed)
    maps, raw = [], []
    for z, a in enumerate(acq):
        m = compose(translation(MARGIN, MARGIN), a.raw_to_volume)  # raw px -> volume px, inside the crop
        maps.append(m)
        # Keys cubic (exact placement; OpenCV's INTER_CUBIC put the content up to 0.06 px off
        # G_z, benchmarks/warp_position.py). Mirrored edges, not warp_slice's fill: a few samples
        # (up to 57 px of a crop) fall past the margin.
        raw.append(saturate(warp(vol[z].astype(np.float32), np.vstack([m, [0, 0, 1]]), output_shape=(rh, rw),
                                 order=3, mode="symmetric", preserve_range=True), vol.dtype))
    return np.stack(raw), np.array(maps)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shared", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    ap.add_argument("--backend", default="fast")
    ap.add_argument("--prealign", default="xcorr")
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--median-radius", type=int, default=7)
    ap.add_argument("--passes", type=int, default=2)
    ap.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                    help="config override (YAML value), repeatable")
    ap.add_argument("--undistorted", action="store_true",
                    help="no distortion at all: how far AMST moves slices of an already aligned volume "
                         "(the floor of the error against that volume's own alignment)")
    args = ap.parse_args()
    overrides = _overrides(args.set)
    print(f"prealign {args.prealign}, backend {args.backend}, median radius {args.median_radius}, passes {args.passes}"
          + (f", {' '.join(args.set)}" if args.set else "") + (", UNDISTORTED input" if args.undistorted else ""))
    print(f"{'dataset':<22}{'shape':>16}{'prealign med':>13}{'AMST med':>10}{'AMST p95':>10}{'AF pre':>8}{'AF AMST':>8}")
    with tempfile.TemporaryDirectory() as tmp:
        for k, (name, vol) in enumerate(volumes(Path(args.shared))):
            raw, maps = distort(vol, seed=100 + k, identity=args.undistorted)
            d = Path(tmp) / f"{k}_{name}"  # two crops share a name
            w = create_writer(d / "raw", "tiff", raw.shape, raw.dtype, VoxelSize(8, 5, 5))
            for z in range(len(raw)):
                w.write(z, raw[z])
            res = align(d / "raw", d / "out", overrides, prealign=args.prealign, backend=args.backend, workers=args.workers,
                        median_radius=args.median_radius, passes=args.passes, progress=False)
            tf = res.transforms
            pre = np.array([s.prealign for s in tf.slices])
            e_pre = slice_errors(pre, maps, tf.canvas_shape_yx, raw.shape[1:])["rms"]
            e = slice_errors(tf.affines, maps, tf.canvas_shape_yx, raw.shape[1:])["rms"]
            lin = np.abs(maps[:, :, :2] - np.eye(2)).max(axis=(1, 2)) > 1e-6
            print(f"{name:<22}{str(raw.shape):>16}{np.median(e_pre):>13.3f}{np.median(e):>10.3f}"
                  f"{np.percentile(e, 95):>10.3f}{(e_pre[lin].mean() if lin.any() else float('nan')):>8.3f}"
                  f"{(e[lin].mean() if lin.any() else float('nan')):>8.3f}")


if __name__ == "__main__":
    main()
