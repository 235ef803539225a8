"""Does resampling put the content where the transform says? And what does it cost?

    python benchmarks/warp_position.py [--image PATH] [--size 2048] [--repeats 5]

The image (default: the real ssTEM neuropil image in ../shared/data/real_2d, else a
smooth random texture) is shifted by fractional amounts 0 .. 0.95 px with each
interpolation, and the shift of its content is measured back by the exact Gauss-Newton
fit of :mod:`amst.quality.subpixel`. Printed per method: the largest and RMS placement
error over the fractions, and the time to warp one ``--size``^2 uint16 slice through a
near-identity affine (one thread; ratios against OpenCV's linear). OpenCV's INTER_CUBIC
(a = -0.75, what ``warp.order: cubic`` used before) is listed for comparison.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import cv2
import numpy as np

from amst.quality.subpixel import GradientShift
from amst.transform import translation
from amst.warp import warp_slice

DEFAULT_IMAGE = Path(__file__).resolve().parents[2] / "shared" / "data" / "real_2d" / "neuropil_sstem_1000.h5"


def opencv_cubic(image: np.ndarray, affine: np.ndarray, shape_yx: tuple[int, int]) -> np.ndarray:
    return cv2.warpAffine(image, affine, shape_yx[::-1], flags=cv2.INTER_CUBIC | cv2.WARP_INVERSE_MAP)


METHODS = {
    "linear (OpenCV)": lambda img, a, s: warp_slice(img, a, s, "linear"),
    "cubic (amst, Keys a=-0.5)": lambda img, a, s: warp_slice(img, a, s, "cubic"),
    "cubic (OpenCV, a=-0.75)": opencv_cubic,
}


def load_image(path: Path | None) -> tuple[np.ndarray, str]:
    if path is not None and path.exists():
        if path.suffix == ".h5":
            import h5py

            with h5py.File(path, "r") as f:
                return np.asarray(f["img"], dtype=np.float32), path.name
        return cv2.imread(str(path), cv2.IMREAD_GRAYSCALE).astype(np.float32), path.name
    from scipy import ndimage

    rng = np.random.default_rng(0)
    return ndimage.gaussian_filter(rng.normal(size=(600, 600)), 2).astype(np.float32), "smooth random texture"


def placement_errors(image: np.ndarray, warp) -> np.ndarray:
    h, w = image.shape
    inner = (slice(h // 6, h - h // 6), slice(w // 6, w - w // 6))
    fit = GradientShift(sigma=0)
    ref = fit.describe(image[inner])
    errors = []
    for t in np.arange(0.0, 1.0, 0.05):
        moved = warp(image, translation(t, 0.5 * t), image.shape)
        want = np.array([-t, -0.5 * t])
        got = fit.refine(ref, fit.describe(moved[inner]), want)
        errors.append(np.linalg.norm(got - want))
    return np.array(errors)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--image", type=Path, default=DEFAULT_IMAGE)
    ap.add_argument("--size", type=int, default=2048)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    cv2.setNumThreads(1)
    image, name = load_image(args.image)
    big = np.random.default_rng(1).integers(0, 60000, (args.size, args.size), dtype=np.uint16)
    affine = np.array([[1.0002, 0.0003, 3.3], [-0.0002, 0.9999, -2.7]])
    print(f"placement error on {name} {image.shape}, fractional shifts 0..0.95 px; time per {args.size}^2 uint16 slice")
    print(f"{'method':<28}{'max px':>10}{'rms px':>10}{'time s':>10}{'x linear':>10}")
    times = {}
    for label, warp in METHODS.items():
        err = placement_errors(image, warp)
        warp(big, affine, big.shape)
        start = time.perf_counter()
        for _ in range(args.repeats):
            warp(big, affine, big.shape)
        times[label] = (time.perf_counter() - start) / args.repeats
        base = times["linear (OpenCV)"]
        print(f"{label:<28}{err.max():>10.4f}{np.sqrt(np.mean(err ** 2)):>10.4f}{times[label]:>10.3f}"
              f"{times[label] / base:>10.1f}")


if __name__ == "__main__":
    main()
