import numpy as np
import pytest

from amst.register import check_result, register
from amst.synth.acquisition import AcquisitionParams, add_noise
from amst.synth.phantom import Phantom, PhantomParams
from amst.transform import apply_to_points, invert, translation

N = 256


@pytest.fixture(scope="module")
def pair():
    p = Phantom((80, N, N), 4, PhantomParams())
    template = p.render(np.array([[1.0, 0, 0], [0, 1, 0]]), 20, (N, N))
    true = np.array([[1.007, 0.002, 2.6], [-0.001, 0.994, -1.8]])  # output -> raw
    raw = add_noise(p.render(invert(true), 20, (N, N)), AcquisitionParams(), np.random.default_rng(0))
    raw = raw * 1.3 + 0.2  # brightness/contrast differ from the template
    return raw.astype(np.float32), template, true


def _rms(a, b):
    g = np.stack(np.meshgrid(np.arange(0, N, 8), np.arange(0, N, 8)), -1).reshape(-1, 2).astype(float)
    return float(np.sqrt((np.linalg.norm(apply_to_points(a, g) - apply_to_points(b, g), axis=1) ** 2).mean()))


@pytest.mark.parametrize("backend", ["fast", "elastix"])
def test_backend_recovers_known_affine(pair, backend):
    raw, template, true = pair
    start = translation(3, -2)
    assert _rms(start, true) > 0.8
    res = register(backend, raw, template, None, start)
    err = _rms(res.affine, true)
    print(f"{backend}: RMS error {err:.3f} px")
    assert err < 0.15


def test_fast_backend_respects_mask(pair):
    raw, template, true = pair
    mask = np.ones_like(template, bool)
    mask[:, : N // 3] = False
    garbage = template.copy()
    garbage[:, : N // 3] = np.random.default_rng(1).random((N, N // 3)) * 5
    res = register("fast", raw, garbage, mask, translation(3, -2))
    assert _rms(res.affine, true) < 0.2


def test_checks_reject_implausible_results():
    init = translation(1, 1)
    ok = dict(canvas_shape_yx=(100, 100), max_scale_change=0.05, max_shear=0.05, max_shift_px=10,
              ncc_before=0.8, ncc_after=0.85, min_ncc_gain=-0.05, min_ncc=0.2)
    assert check_result(np.array([[1.01, 0, 1.2], [0, 0.99, 1]]), init, **ok) == ""
    assert "scale" in check_result(np.array([[1.2, 0, 1], [0, 1, 1]]), init, **ok)
    assert "shear" in check_result(np.array([[1, 0.2, 1], [0, 1, 1]]), init, **ok)
    assert "moves pixels" in check_result(translation(30, 1), init, **ok)
    assert "fell" in check_result(init, init, **{**ok, "ncc_after": 0.7})
    assert "resemble" in check_result(init, init, **{**ok, "ncc_before": 0.01, "ncc_after": 0.05})


def test_fast_backend_on_a_pyramid_level_template(pair):
    # The pipeline builds the template on the level the back-end refines on, from
    # level_image()s; the result is still a full-resolution map.
    from amst.register.fast import level_image

    raw, template, true = pair
    params = {"finest_level": 1}
    t1 = level_image(template, 1, params)
    start = translation(3, -2)
    from_full = register("fast", raw, template, None, start, params)
    from_level = register("fast", raw, t1, None, start, params, template_level=1)
    both_level = register("fast", level_image(raw, 1, params), t1, None, start, params, 1, 1)
    assert _rms(from_level.affine, true) < 0.2
    assert _rms(from_level.affine, from_full.affine) < 0.05
    np.testing.assert_allclose(both_level.affine, from_level.affine, atol=1e-9)
