import warnings

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from amst.template import masked_median, sliding_templates, window_indices


@given(st.integers(1, 15), st.integers(1, 6), st.integers(0, 2**31 - 1), st.floats(0, 0.9))
@settings(max_examples=60, deadline=None)
def test_masked_median_equals_nanmedian(depth, size, seed, nan_fraction):
    rng = np.random.default_rng(seed)
    w = rng.integers(0, 255, (depth, size, size)).astype(np.float32)
    w[rng.random(w.shape) < nan_fraction] = np.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        expected = np.nanmedian(w, axis=0)
    np.testing.assert_array_equal(masked_median(w), expected.astype(np.float32))


def test_uncovered_pixels_are_not_zeros():
    w = np.full((5, 2, 2), 100.0, np.float32)
    w[:3, 0, 0] = np.nan  # three slices do not cover this pixel
    assert masked_median(w)[0, 0] == 100.0


def test_window_is_mirrored_at_ends_and_leaves_out_the_slice():
    assert window_indices(0, 20, 3) == [3, 2, 1, 0, 1, 2, 3]
    assert window_indices(19, 20, 3) == [16, 17, 18, 19, 18, 17, 16]
    assert window_indices(10, 20, 3, leave_out=True) == [7, 8, 9, 11, 12, 13]
    assert window_indices(1, 3, 7) == [0, 1, 2]  # shorter than the window: truncated


def test_sliding_templates_match_direct_medians_and_stream():
    rng = np.random.default_rng(0)
    n, r = 25, 7
    slices = [rng.random((6, 6)).astype(np.float32) for _ in range(n)]
    consumed = []

    def stream(start):
        for z in range(start, n):
            consumed.append(z)
            yield slices[z]

    out = dict(sliding_templates(stream(3), 3, n, r, 10, 14, leave_out=True))
    assert sorted(out) == [10, 11, 12, 13]
    for z, t in out.items():
        np.testing.assert_array_equal(t, np.median(np.stack([slices[i] for i in window_indices(z, n, r, True)]), axis=0))
    assert max(consumed) == 13 + r  # reads only what the last window needs


def test_masked_median_is_exact_across_row_tiles():
    # 2100 px wide: the network runs on tiles of a few rows; borders are uncovered (NaN).
    rng = np.random.default_rng(3)
    w = rng.normal(size=(14, 70, 2100)).astype(np.float32)
    w[:5, :, :7] = np.nan
    w[3, 60:, :] = np.nan
    w[:, 0, 0] = np.nan  # no slice covers this pixel
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        expected = np.nanmedian(w, axis=0).astype(np.float32)
    np.testing.assert_array_equal(masked_median(w), expected)


def test_window_shrinks_symmetrically_at_the_ends():
    from amst.template import window_members

    assert window_indices(2, 20, 7, leave_out=True, ends="shrink") == [0, 1, 3, 4]
    assert window_indices(0, 20, 7, leave_out=True, ends="shrink") == [0]  # only itself: keeps its pre-alignment
    assert window_indices(18, 20, 7, ends="shrink") == [17, 18, 19]
    assert window_indices(10, 20, 7, ends="shrink") == window_indices(10, 20, 7)
    assert [o for o, _ in window_members(3, 20, 7, leave_out=True, ends="shrink")] == [-3, -2, -1, 1, 2, 3]


def test_balanced_window_drops_the_mirror_partner_of_a_missing_slice():
    n, r = 30, 3
    slices = [np.full((4, 4), float(i), np.float32) for i in range(n)]
    slices[14] = np.full((4, 4), np.nan, np.float32)  # left out (e.g. auto-focus)
    plain = dict(sliding_templates(iter(slices), 0, n, r, 15, 16, leave_out=True))
    balanced = dict(sliding_templates(iter(slices), 0, n, r, 15, 16, leave_out=True, balanced=True))
    # members of 15: 12, 13, 14 (missing), 16, 17, 18; balanced also drops 16
    assert plain[15][0, 0] == np.median([12, 13, 16, 17, 18])
    assert balanced[15][0, 0] == np.median([12, 13, 17, 18])
