import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from amst.transform import apply_to_points, as_affine, compose, decompose, invert, translation

IDENTITY = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])


def fit_affine(src_xy: np.ndarray, dst_xy: np.ndarray) -> np.ndarray:
    """Least-squares affine ``M`` with ``M(src) ~= dst`` for ``(N, 2)`` point sets (N >= 3)."""
    src = np.asarray(src_xy, dtype=np.float64)
    dst = np.asarray(dst_xy, dtype=np.float64)
    design = np.hstack([src, np.ones((len(src), 1))])
    sol, *_ = np.linalg.lstsq(design, dst, rcond=None)
    return sol.T.copy()

finite = st.floats(-50, 50, allow_nan=False)
near_one = st.floats(0.5, 2.0)


@st.composite
def affines(draw):
    sx, sy = draw(near_one), draw(near_one)
    theta = draw(st.floats(-np.pi, np.pi))
    shear = draw(st.floats(-0.5, 0.5))
    c, s = np.cos(theta), np.sin(theta)
    lin = np.array([[c, -s], [s, c]]) @ np.array([[sx, sx * shear], [0, sy]])
    return np.hstack([lin, [[draw(finite)], [draw(finite)]]])


@given(affines())
@settings(max_examples=200, deadline=None)
def test_compose_with_inverse_is_identity(a):
    np.testing.assert_allclose(compose(a, invert(a)), IDENTITY, atol=1e-9)
    np.testing.assert_allclose(compose(invert(a), a), IDENTITY, atol=1e-9)


@given(affines(), affines(), affines())
@settings(max_examples=100, deadline=None)
def test_compose_is_associative_and_acts_as_functions(a, b, c):
    np.testing.assert_allclose(compose(compose(a, b), c), compose(a, compose(b, c)), atol=1e-7)
    pts = np.array([[0.0, 0.0], [10.0, -3.0], [100.0, 40.0]])
    np.testing.assert_allclose(apply_to_points(compose(a, b), pts),
                               apply_to_points(a, apply_to_points(b, pts)), atol=1e-7)


@given(affines())
@settings(max_examples=100, deadline=None)
def test_decompose_recovers_scales_and_shear(a):
    d = decompose(a)
    th = np.radians(d["rotation_deg"])
    c, s = np.cos(th), np.sin(th)
    lin = np.array([[c, -s], [s, c]]) @ np.array([[d["scale_x"], d["scale_x"] * d["shear"]], [0, d["scale_y"]]])
    np.testing.assert_allclose(lin, a[:, :2], atol=1e-9)


def test_fit_affine_exact_on_noise_free_points():
    a = np.array([[1.01, 0.002, 3.0], [-0.001, 0.995, -7.5]])
    src = np.random.default_rng(0).uniform(0, 500, (20, 2))
    np.testing.assert_allclose(fit_affine(src, apply_to_points(a, src)), a, atol=1e-9)


def test_translation_convention_matches_cv2_inverse_map():
    import cv2

    img = np.zeros((20, 20), np.float32)
    img[10, 12] = 1.0
    # output pixel (x, y) samples raw (x + 2, y + 0): the bright raw pixel (12, 10) lands at (10, 10).
    out = cv2.warpAffine(img, translation(2, 0), (20, 20), flags=cv2.INTER_NEAREST | cv2.WARP_INVERSE_MAP)
    assert out[10, 10] == 1.0


def test_invalid_affines_are_refused():
    with pytest.raises(ValueError, match="2x3"):
        as_affine(np.eye(2))
    with pytest.raises(ValueError, match="singular"):
        invert(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="non-finite"):
        as_affine([[1, 0, np.nan], [0, 1, 0]])


@pytest.mark.parametrize("order", ["linear", "cubic"])
def test_warp_places_content_exactly_at_every_subpixel_shift(order):
    """OpenCV's INTER_CUBIC (a = -0.75) put the content up to 0.046 px off here."""
    from scipy import ndimage

    from amst.quality.subpixel import GradientShift
    from amst.warp import warp_slice

    img = ndimage.gaussian_filter(np.random.default_rng(0).normal(size=(300, 300)), 2).astype(np.float32)
    inner = (slice(50, 250), slice(50, 250))
    measure = GradientShift(sigma=0)
    ref = measure.describe(img[inner])
    errors = []
    for t in np.arange(0.0, 1.0, 0.05):
        moved = warp_slice(img, translation(t, -0.5 * t), img.shape, order)
        # Output pixel p samples raw p + (t, -t/2): the content moves by (-t, t/2).
        got = measure.refine(ref, measure.describe(moved[inner]), np.array([-t, 0.5 * t]))
        errors.append(np.abs(got - [-t, 0.5 * t]).max())
    assert max(errors) < 0.002, np.round(errors, 4)


def test_warp_keeps_integer_dtypes_saturated_and_rounded():
    from amst.warp import warp_slice

    img = np.zeros((16, 16), np.uint16)
    img[:, 8:] = 65535  # a step: cubic interpolation rings above and below it
    for order in ("nearest", "linear", "cubic"):
        out = warp_slice(img, translation(0.5, 0.0), (16, 16), order)
        assert out.dtype == np.uint16
    out = warp_slice(img, translation(0.3, 0.0), (16, 16), "cubic")
    assert out.max() == 65535 and out.min() == 0  # the cubic overshoot is clipped, not wrapped


@pytest.mark.parametrize("order", ["linear", "cubic"])
def test_warp_keeps_float64_and_int32(order):
    from amst.warp import warp_slice

    for dtype in (np.float64, np.int32):
        img = (np.arange(256).reshape(16, 16) * 3).astype(dtype)
        out = warp_slice(img, translation(0.25, 0.5), (16, 16), order)
        assert out.dtype == dtype
        want = float(img[8, 8]) + 3 * (0.25 + 16 * 0.5)  # a ramp moves exactly: 432.75
        if dtype == np.int32:
            assert out[8, 8] == 433  # rounded, not truncated
        else:
            assert abs(out[8, 8] - want) < 1e-3
