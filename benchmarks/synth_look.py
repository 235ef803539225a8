"""Picture: raw synthetic data (xy slice, yz reslice) next to a real EM crop.

    python benchmarks/synth_look.py SYNTH_DIR REAL_TIF OUT.png
"""

from __future__ import annotations

import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import tifffile  # noqa: E402

from amst.stack import open_stack  # noqa: E402


def main(synth: str, real: str, out: str) -> None:
    raw = open_stack(f"{synth}/raw")
    n, h, w = raw.shape
    xy = raw.read(n // 2)[h // 4: h // 4 + 384, w // 4: w // 4 + 384]
    yz = np.stack([raw.read(z)[:, w // 2] for z in range(n)])  # (z, y)
    vol = tifffile.imread(real)
    fig, ax = plt.subplots(2, 2, figsize=(12, 8), gridspec_kw={"height_ratios": [3, 1.4]})
    ax[0, 0].imshow(xy, cmap="gray")
    ax[0, 0].set_title(f"synthetic raw, xy (slice {n // 2}, 384 px crop)")
    ax[0, 1].imshow(vol[len(vol) // 2], cmap="gray")
    ax[0, 1].set_title(f"real: {real.split('/')[-1][:40]}, xy")
    z_aspect = 8.0 / 5.0
    ax[1, 0].imshow(yz.T[: 384].T, cmap="gray", aspect=z_aspect)
    ax[1, 0].set_title("synthetic raw, yz reslice (jitter and auto-focus jumps visible)")
    ax[1, 1].imshow(vol[:, :, vol.shape[2] // 2], cmap="gray", aspect="auto")
    ax[1, 1].set_title("real, yz reslice (aligned)")
    for a in ax.ravel():
        a.set_xticks([])
        a.set_yticks([])
    fig.tight_layout()
    fig.savefig(out, dpi=80)


if __name__ == "__main__":
    main(*sys.argv[1:4])
