"""z-median of a 15-slice window: ``np.median`` vs amst's sorting-network masked median.

    python benchmarks/template_median.py [--size 2048] [--window 15] [--repeat 3]

Both run on the same float32 window (pre-aligned slices are float; uncovered canvas is
NaN in the masked case), one thread, and the results are checked to be equal.
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np
from threadpoolctl import threadpool_limits

from amst.template import masked_median


def best_of(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=2048)
    ap.add_argument("--window", type=int, default=15)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    w = (rng.random((args.window, args.size, args.size)) * 255).astype(np.uint8).astype(np.float32)
    masked = w.copy()
    masked[:, :, :6] = np.nan  # canvas borders a slice does not cover
    masked[args.window // 2, :40] = np.nan
    with threadpool_limits(1), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        assert np.array_equal(np.median(w, axis=0).astype(np.float32), masked_median(w))
        assert np.array_equal(np.nanmedian(masked, axis=0).astype(np.float32), masked_median(masked), equal_nan=True)
        t_np = best_of(lambda: np.median(w, axis=0), args.repeat)
        t_nan = best_of(lambda: np.nanmedian(masked, axis=0), 1)
        t_ours = best_of(lambda: masked_median(w), args.repeat)
        t_ours_m = best_of(lambda: masked_median(masked), args.repeat)
    print(f"window {args.window} x {args.size}^2 float32, 1 thread, results identical")
    print(f"np.median            {t_np:7.3f} s")
    print(f"amst masked_median   {t_ours:7.3f} s   ({t_np / t_ours:.1f}x faster)")
    print(f"np.nanmedian (NaN)   {t_nan:7.3f} s")
    print(f"amst masked (NaN)    {t_ours_m:7.3f} s   ({t_nan / t_ours_m:.1f}x faster than nanmedian)")


if __name__ == "__main__":
    main()
