"""How far the phantom's own content moves with depth: the drift floor of content-based pre-alignment.

    python benchmarks/content_flow.py [--slices 300] [--size 512] [--warp-z-scale 45 300]
    python benchmarks/content_flow.py --real-crops [--shared ../shared/data]

Renders the phantom (``fibsem-nomarks`` geometry, no acquisition: no drift, jitter, noise or
auto-focus) slice after slice at the stack's z step, measures each slice's shift to the
previous one by phase correlation below the cap, and chains the shifts. Every pixel of the
chained curve is content motion, not misalignment: a pre-alignment that follows content
(features, cross-correlation, chained or solved jointly) drifts at least this much.

``--real-crops`` compares with real tissue instead: the median shift that phase correlation
measures between slices 1, 2 and 4 apart in each *aligned* real crop
(``aligned_crops/*.tif``), next to the phantom rendered at the same size (32 x 256 x 256)
at two z-steps. In an aligned stack every such shift is the content's own motion (or the
crop's own residual misalignment).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import tifffile

from amst.prealign.xcorr import PhaseCorrelation
from amst.stack import VoxelSize
from amst.synth import SynthConfig


def clean_slices(cfg: SynthConfig, first_z: float = 0.0):
    """The ideal phantom stack of ``cfg`` (no acquisition at all), below the cap, slice by slice."""
    slices, height, width = cfg.shape
    phantom = cfg.phantom()
    identity = np.array([[1.0, 0, 0], [0, 1, 0]])
    below_cap = int(np.ceil((phantom.params.cap_height + 0.05) * height))
    for k in range(slices):
        yield phantom.render(identity, first_z + k * cfg.z_step, (height, width))[below_cap:]


def chained_content_drift(cfg: SynthConfig) -> tuple[np.ndarray, np.ndarray]:
    """(pairwise shifts (n-1, 2), chained drift (n-1, 2)) of the ideal phantom stack of ``cfg``, px."""
    pc = PhaseCorrelation()
    previous, shifts = None, []
    for image in clean_slices(cfg):
        desc = pc.describe(image)
        if previous is not None:
            shifts.append(pc.match(previous, desc).shift_xy)
        previous = desc
    shifts = np.array(shifts)
    return shifts, np.cumsum(shifts, axis=0)


def median_shift_by_gap(volume: np.ndarray, gaps: tuple[int, ...] = (1, 2, 4)) -> dict[int, float]:
    """Median |shift| (px) measured by phase correlation between slices ``gap`` apart."""
    pc = PhaseCorrelation(max_side=10**6)
    desc = [pc.describe(s.astype(np.float32)) for s in volume]
    out = {}
    for g in gaps:
        shifts = [pc.match(desc[i], desc[i + g]) for i in range(len(volume) - g)]
        out[g] = float(np.median([np.linalg.norm(m.shift_xy) for m in shifts if m.ok] or [np.nan]))
    return out


def real_crops(shared: Path) -> None:
    print(f"{'volume':<40}{'z-step (xy px)':>15}   median |shift| at gap 1 / 2 / 4 (px)")
    for p in sorted((shared / "aligned_crops").glob("*.tif")):
        vol = tifffile.imread(p)
        m = median_shift_by_gap(vol)
        print(f"{p.stem.split('_sample')[0]:<40}{_Z_STEPS.get(p.stem.split('_')[0], float('nan')):>15.2f}   "
              + " / ".join(f"{v:.2f}" for v in m.values()))
    for z_step in (1.6, 3.75):
        for scale in (45.0, 300.0):
            cfg = SynthConfig(shape=(32, 256, 256), preset="fibsem-nomarks", seed=3, warp_z_scale=scale,
                              voxel_size=VoxelSize(z_step * 5.0, 5.0, 5.0))
            m = median_shift_by_gap(np.stack(list(clean_slices(cfg, first_z=100.0))))
            print(f"{f'phantom, warp z scale {scale:.0f}':<40}{z_step:>15.2f}   " + " / ".join(f"{v:.2f}" for v in m.values()))


# Section thickness over pixel size, from the data README (unknown for the others).
_Z_STEPS = {"mitoem": 30 / 8, "cremi": 40 / 4}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--slices", type=int, default=300)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--seed", type=int, default=12)
    ap.add_argument("--warp-z-scale", type=float, nargs="+", default=[45.0, 300.0])
    ap.add_argument("--real-crops", action="store_true", help="compare with real aligned crops instead")
    ap.add_argument("--shared", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    args = ap.parse_args()
    if args.real_crops:
        real_crops(Path(args.shared))
        return
    print(f"{'warp z scale':>12}{'mean |shift|':>14}{'mean shift (x, y)':>22}  chained drift every 50 slices (px)")
    for scale in args.warp_z_scale:
        cfg = SynthConfig(shape=(args.slices, args.size, args.size), preset="fibsem-nomarks", seed=args.seed,
                          warp_z_scale=scale)
        shifts, chained = chained_content_drift(cfg)
        drift = np.linalg.norm(chained, axis=1)[49::50]
        mean = shifts.mean(axis=0)
        print(f"{scale:>12.0f}{np.linalg.norm(shifts, axis=1).mean():>14.3f}{f'({mean[0]:+.3f}, {mean[1]:+.3f})':>22}  "
              + " ".join(f"{d:.1f}" for d in drift))


if __name__ == "__main__":
    main()
