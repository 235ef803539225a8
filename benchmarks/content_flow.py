"""How far the phantom's own content moves with depth: the drift floor of content-based pre-alignment.

    python benchmarks/content_flow.py [--slices 300] [--size 512] [--warp-z-scale 45 300]

Renders the phantom (``fibsem-nomarks`` geometry, no acquisition: no drift, jitter, noise or
auto-focus) slice after slice at the stack's z step, measures each slice's shift to the
previous one by phase correlation below the cap, and chains the shifts. Every pixel of the
chained curve is content motion, not misalignment: a pre-alignment that follows content
(features, cross-correlation, chained or solved jointly) drifts at least this much.
"""

from __future__ import annotations

import argparse

import numpy as np

from amst.prealign.xcorr import PhaseCorrelation
from amst.synth import SynthConfig
from amst.synth.phantom import Phantom


def chained_content_drift(cfg: SynthConfig) -> tuple[np.ndarray, np.ndarray]:
    """(pairwise shifts (n-1, 2), chained drift (n-1, 2)) of the ideal phantom stack of ``cfg``, px."""
    slices, height, width = cfg.shape
    phantom = Phantom((slices * cfg.z_step, height, width), cfg.seed, cfg.phantom_params())
    identity = np.array([[1.0, 0, 0], [0, 1, 0]])
    pc = PhaseCorrelation()
    below_cap = int(np.ceil((phantom.params.cap_height + 0.05) * height))
    previous, shifts = None, []
    for k in range(slices):
        desc = pc.describe(phantom.render(identity, k * cfg.z_step, (height, width))[below_cap:])
        if previous is not None:
            shifts.append(pc.match(previous, desc).shift_xy)
        previous = desc
    shifts = np.array(shifts)
    return shifts, np.cumsum(shifts, axis=0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--slices", type=int, default=300)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--seed", type=int, default=12)
    ap.add_argument("--warp-z-scale", type=float, nargs="+", default=[45.0, 300.0])
    args = ap.parse_args()
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
