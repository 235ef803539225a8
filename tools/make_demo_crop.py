"""Cut the real FIB-SEM crop that ``amst demo`` ships (``src/amst/data/``) from its source.

Writes ``src/amst/data/flyem_medulla_demo.tif`` (the same bytes again with the same tifffile) from
``flyem_medulla_250.tif`` (Janelia FlyEM, HHMI, NeuroProof example data, training_sample1;
Creative Commons Attribution, see ``src/amst/data/LICENSE-CC-BY.txt``)::

    python tools/make_demo_crop.py ../shared/data/fibsem_isotropic/flyem_medulla_250.tif

The crop is a plain index cut: pixels unchanged, the 10 nm isotropic spacing kept, written
as a zlib-compressed ImageJ TIFF.
"""

from __future__ import annotations

import argparse
import hashlib
from pathlib import Path

import numpy as np
import tifffile

#: [start, stop) indices of the crop in the 250 x 250 x 250 source, (z, y, x).
CROP_ZYX = ((96, 160), (25, 225), (0, 250))
SPACING_NM = 10.0
OUT = Path(__file__).resolve().parents[1] / "src" / "amst" / "data" / "flyem_medulla_demo.tif"


def make_crop(source: Path, out: Path = OUT) -> Path:
    """Write the crop of ``source`` to ``out`` and return ``out``."""
    volume = tifffile.imread(source)
    if volume.shape != (250, 250, 250) or volume.dtype != np.uint8:
        raise SystemExit(f"{source}: expected the 250x250x250 uint8 flyem_medulla_250.tif, got "
                         f"{volume.shape} {volume.dtype}")
    (z0, z1), (y0, y1), (x0, x1) = CROP_ZYX
    crop = np.ascontiguousarray(volume[z0:z1, y0:y1, x0:x1])
    out.parent.mkdir(parents=True, exist_ok=True)
    # ImageJ TIFF: resolution in px per um, spacing (z) in um, as the source has them.
    tifffile.imwrite(out, crop, imagej=True, resolution=(1000.0 / SPACING_NM, 1000.0 / SPACING_NM),
                     metadata={"spacing": SPACING_NM / 1000.0, "unit": "um", "axes": "ZYX"},
                     compression="zlib", compressionargs={"level": 9})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", type=Path, help="flyem_medulla_250.tif")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    out = make_crop(args.source, args.out)
    digest = hashlib.sha256(out.read_bytes()).hexdigest()
    print(f"wrote {out}: crop z {CROP_ZYX[0]}, y {CROP_ZYX[1]}, x {CROP_ZYX[2]} ([start, stop)), "
          f"{out.stat().st_size} bytes, sha256 {digest}")


if __name__ == "__main__":
    main()
