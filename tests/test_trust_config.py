"""Issue 14, items 8, 9 (back-end side) and 11 (elastix masks): options are refused, not
ignored; back-ends raise RegistrationError only for failures real data can cause; pixels
without data never enter the elastix metric."""

import math

import numpy as np
import pytest

from amst.config import build_config, max_pyramid_levels, validate_for_canvas
from amst.register import RegistrationError, register
from amst.register.elastix import ALLOWED_PARAMETERS, ITK_DEFAULT_AFFINE_PARAMETERS, PAPER_PARAMETERS
from amst.register.fast import FastParams
from amst.synth.acquisition import AcquisitionParams, add_noise
from amst.synth.phantom import Phantom, PhantomParams
from amst.transform import apply_to_points, as_affine, compose, invert, translation

N = 256


def coverage_mask(raw_shape_yx: tuple[int, int], affine: np.ndarray, canvas_shape_yx: tuple[int, int],
                  margin: float = 0.0) -> np.ndarray:
    """Boolean mask of output pixels whose source lies inside the raw slice (minus ``margin`` px)."""
    m = as_affine(affine)
    h, w = canvas_shape_yx
    gy, gx = np.mgrid[0:h, 0:w].astype(np.float32)
    sx = m[0, 0] * gx + m[0, 1] * gy + m[0, 2]
    sy = m[1, 0] * gx + m[1, 1] * gy + m[1, 2]
    rh, rw = raw_shape_yx
    return (sx >= margin) & (sx <= rw - 1 - margin) & (sy >= margin) & (sy <= rh - 1 - margin)


# -- item 8: unknown keys, wrong types, values that make no sense ---------------------------

def test_unknown_fast_key_is_refused_and_the_allowed_ones_listed():
    with pytest.raises(ValueError, match=r"unknown option 'register\.fast\.nonsense'") as info:
        build_config({"register": {"fast": {"nonsense": 1}}})
    for name in ("max_iterations", "tolerance_px", "finest_side", "robust"):
        assert name in str(info.value)


def test_fast_keys_are_the_fields_register_fast_reads():
    for name in FastParams.__dataclass_fields__:
        value = getattr(FastParams(), name)
        build_config({"register": {"fast": {name: value}}})  # every real field is accepted


def test_unknown_elastix_parameter_is_refused_and_the_allowed_ones_listed():
    with pytest.raises(ValueError, match=r"unknown option 'register\.elastix\.NotAParameter'") as info:
        build_config({"register": {"elastix": {"NotAParameter": "1"}}})
    assert "MaximumNumberOfIterations" in str(info.value) and "NumberOfSpatialSamples" in str(info.value)


def test_elastix_parameters_as_elastix_spells_them_are_accepted():
    cfg = build_config({"register": {"elastix": {"MaximumNumberOfIterations": "300", "NumberOfSpatialSamples": 4096,
                                                 "ImagePyramidSchedule": [4, 4, 2, 2, 1, 1], "ErodeMask": True,
                                                 "MaximumStepLength": [2.0, 1.0, 0.5]}}})
    assert cfg.register.elastix["MaximumNumberOfIterations"] == "300"


def test_allowed_elastix_names_match_itk_default_affine_map():
    itk = pytest.importorskip("itk")
    default = set(itk.ParameterObject.New().GetDefaultParameterMap("affine").keys())
    assert default == ITK_DEFAULT_AFFINE_PARAMETERS, (
        f"update ITK_DEFAULT_AFFINE_PARAMETERS: missing {sorted(default - ITK_DEFAULT_AFFINE_PARAMETERS)}, "
        f"no longer in itk {sorted(ITK_DEFAULT_AFFINE_PARAMETERS - default)}")
    assert set(PAPER_PARAMETERS) <= ALLOWED_PARAMETERS and default <= ALLOWED_PARAMETERS


@pytest.mark.parametrize("section, key, value, message", [
    ("fast", "max_iterations", "many", "expected an integer"),
    ("fast", "max_iterations", 2.5, "expected an integer"),
    ("fast", "robust", "yes", "expected true or false"),
    ("fast", "tolerance_px", "small", "expected a number"),
    ("elastix", "MaximumNumberOfIterations", "many", "must be an integer"),
    ("elastix", "ErodeMask", "maybe", "must be true or false"),
    ("elastix", "NumberOfSpatialSamples", {"a": 1}, "must be a value or a list"),
    ("elastix", "Transform", "EulerTransform", "AffineTransform"),
])
def test_wrong_type_is_refused_naming_the_key(section, key, value, message):
    with pytest.raises(ValueError, match=rf"register\.{section}\.{key}: .*{message}"):
        build_config({"register": {section: {key: value}}})


@pytest.mark.parametrize("section, key, value", [
    ("fast", "max_iterations", -3), ("fast", "max_iterations", 0), ("fast", "min_samples", -1),
    ("fast", "coarsest_side", 0), ("fast", "keep_fraction", 0.0), ("fast", "keep_fraction", 1.5),
    ("fast", "smooth_sigma", -1.0), ("fast", "tolerance_px", math.nan), ("fast", "finest_level", -1),
    ("elastix", "MaximumNumberOfIterations", -3), ("elastix", "MaximumNumberOfIterations", "0"),
    ("elastix", "NumberOfSpatialSamples", -2048), ("elastix", "NumberOfResolutions", 0),
    ("elastix", "MaximumStepLength", [4.0, -2.0, 1.0]), ("elastix", "ImagePyramidSchedule", [8, 8, 0, 0, 1, 1]),
])
def test_nonsense_counts_are_refused_naming_the_key(section, key, value):
    with pytest.raises(ValueError, match=rf"register\.{section}\.{key}: "):
        build_config({"register": {section: {key: value}}})


@pytest.mark.parametrize("key, value", [
    ("max_scale_change", 0.0), ("max_scale_change", -0.05), ("max_shear", -1.0), ("max_shift_px", 0.0),
    ("max_shift_px", math.nan), ("min_ncc", 1.5), ("min_ncc", -1.01), ("min_ncc_gain", 3.0), ("passes", 3),
    ("passes", 0), ("max_fallback_fraction", -0.1), ("max_fallback_fraction", 1.01),
])
def test_register_options_out_of_range_are_refused(key, value):
    with pytest.raises(ValueError, match=rf"register\.{key}: "):
        build_config({"register": {key: value}})


def test_max_fallback_fraction_default_range_and_resume_neutral():
    assert build_config().register.max_fallback_fraction == 0.2
    for ok in (0.0, 1.0):
        assert build_config({"register": {"max_fallback_fraction": ok}}).register.max_fallback_fraction == ok
    # A run stopped by too many fallbacks must resume with a higher limit, not be refused.
    assert build_config({"register": {"max_fallback_fraction": 1.0}}).result_affecting() == \
        build_config().result_affecting()
    assert build_config({"register": {"min_ncc": 0.3}}).result_affecting() != build_config().result_affecting()


def test_pyramid_levels_with_tiff_output_is_refused():
    with pytest.raises(ValueError, match=r"output\.pyramid_levels: 3 .*out_format"):
        build_config({"output": {"out_format": "tiff", "pyramid_levels": 3}})
    with pytest.raises(ValueError, match=r"output\.pyramid_levels"):
        build_config(out_format="tiff", pyramid_levels=2)
    assert build_config(out_format="tiff", pyramid_levels=1).output.pyramid_levels == 1
    assert build_config(out_format="zarr", pyramid_levels=3).output.pyramid_levels == 3


def test_pyramid_levels_too_many_for_the_canvas_name_the_largest_allowed():
    cfg = build_config(pyramid_levels=12)
    with pytest.raises(ValueError, match=r"output\.pyramid_levels: 12 .*256x300.*use at most 5"):
        validate_for_canvas(cfg, (256, 300))
    validate_for_canvas(build_config(pyramid_levels=5), (256, 300))  # 16 px on the short side: allowed
    with pytest.raises(ValueError, match=r"use at most 5"):
        validate_for_canvas(build_config(pyramid_levels=6), (300, 256))
    validate_for_canvas(build_config(), (8, 8))  # no pyramid: always fine
    assert [max_pyramid_levels(s) for s in ((15, 900), (16, 16), (31, 31), (32, 32), (2048, 1024))] == [1, 1, 1, 2, 7]


# -- item 9: RegistrationError for what real data can cause, nothing else -------------------

@pytest.fixture(scope="module")
def phantom():
    return Phantom((80, N, N), 4, PhantomParams())


@pytest.fixture(scope="module")
def pair(phantom):
    template = phantom.render(np.array([[1.0, 0, 0], [0, 1, 0]]), 20, (N, N))
    true = np.array([[1.004, 0.001, 2.6], [-0.001, 0.997, -1.8]])  # output -> raw
    raw = add_noise(phantom.render(invert(true), 20, (N, N)), AcquisitionParams(), np.random.default_rng(0))
    return raw.astype(np.float32), template.astype(np.float32), true


def _rms(a, b):
    g = np.stack(np.meshgrid(np.arange(0, N, 8), np.arange(0, N, 8)), -1).reshape(-1, 2).astype(float)
    return float(np.sqrt((np.linalg.norm(apply_to_points(a, g) - apply_to_points(b, g), axis=1) ** 2).mean()))


def test_registration_error_is_a_runtime_error_exported_from_amst_register():
    assert issubclass(RegistrationError, RuntimeError)
    import amst.register

    assert "RegistrationError" in amst.register.__all__


def test_fast_raises_registration_error_without_overlap(pair):
    raw, template, _ = pair
    with pytest.raises(RegistrationError, match=r"inside the raw slice"):
        register("fast", raw, template, None, translation(5000, 5000))


def test_fast_raises_registration_error_on_a_flat_slice(pair):
    _, template, _ = pair
    with pytest.raises(RegistrationError, match=r"flat"):
        register("fast", np.full((N, N), 0.5, np.float32), template, None, translation(1, 1))


def test_fast_raises_registration_error_when_the_template_has_too_few_usable_pixels(pair):
    raw, template, _ = pair
    mask = np.zeros((N, N), bool)
    mask[100:108, 100:108] = True  # eroded away by the smoothing margin
    with pytest.raises(RegistrationError, match=r"usable template pixels"):
        register("fast", raw, template, mask, translation(1, 1))


def test_fast_lets_wrong_parameters_and_programming_errors_propagate(pair):
    raw, template, _ = pair
    with pytest.raises(ValueError, match=r"register\.fast\.max_iterations") as info:
        register("fast", raw, template, None, translation(1, 1), {"max_iterations": "many"})
    assert not isinstance(info.value, RegistrationError)
    with pytest.raises(TypeError):
        register("fast", raw, template, None, translation(1, 1), {"max_iterations": 5}, template_level="one")


def test_elastix_raises_registration_error_when_samples_map_outside(pair):
    raw, template, _ = pair
    with pytest.raises(RegistrationError, match=r"elastix failed: Too many samples map outside moving image"):
        register("elastix", raw, template, None, translation(5000, 5000))


def test_elastix_unknown_component_is_a_configuration_error(pair):
    raw, template, _ = pair
    with pytest.raises(ValueError, match=r"register\.elastix: elastix has no component 'NoSuchMetric'") as info:
        register("elastix", raw, template, None, translation(1, 1), {"Metric": "NoSuchMetric"})
    assert not isinstance(info.value, RegistrationError)


# -- item 11: pixels without data never enter the elastix metric ------------------------------

def test_elastix_pass2_ignores_the_canvas_outside_the_raw_slice(phantom):
    # Pass 2: the start is a general affine, so the raw slice is resampled onto the canvas.
    # This slice jumped by 150 px and covers only 104 of the 256 columns; beyond its edge the
    # template shows flat resin (value 0). The old code filled the uncovered canvas with 0
    # and elastix matched that "black image" to the resin: 2.1 px off. Masked: < 0.1 px.
    true = np.array([[1.004, 0.001, 150.0], [-0.001, 0.997, 3.0]])
    raw = add_noise(phantom.render(invert(true), 20, (N, N)), AcquisitionParams(), np.random.default_rng(0))
    template = phantom.render(np.array([[1.0, 0, 0], [0, 1, 0]]), 20, (N, N)).astype(np.float32)
    edge = int(coverage_mask((N, N), true, (N, N)).any(0).nonzero()[0].max())
    assert edge < 110
    template[:, edge + 5:] = 0.0
    start = compose(true, np.array([[1.002, 0, 1.5], [0, 0.999, -1.0]]))
    assert _rms(start, true) > 2
    res = register("elastix", raw.astype(np.float32), template, np.ones((N, N), bool), start)
    assert _rms(res.affine, true) < 0.15


def test_elastix_ignores_a_template_no_data_border_without_a_mask(pair):
    # A template with NaN where no slice of its window has data (left 100 columns), no mask
    # given: the old code handed the NaN to elastix, which failed.
    raw, template, true = pair
    template = template.copy()
    template[:, :100] = np.nan
    res = register("elastix", raw, template, None, translation(3, -2))
    assert _rms(res.affine, true) < 0.15


def test_elastix_ignores_nan_areas_of_the_raw_slice(pair):
    # A raw slice with a NaN region (no data): it is masked, not handed to elastix as pixels.
    raw, template, true = pair
    raw = raw.copy()
    raw[40:140, 60:160] = np.nan
    res = register("elastix", raw, template, None, translation(3, -2))
    assert _rms(res.affine, true) < 0.15
