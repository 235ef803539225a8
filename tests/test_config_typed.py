"""Issue 16: choices among strings are declared once, as Literal type hints, and checked from
them both when YAML / flat options are parsed and when a RunConfig built in Python is
validated; register.fast is a FastParams section; config.yaml loads back to the same config."""

import dataclasses

import pytest
import yaml

from amst.choices import check_choices, choice_fields, coerce_choice
from amst.config import RunConfig, build_config, dump_yaml
from amst.prealign import METHODS, PrealignConfig
from amst.register import BACKENDS, backend_for, check_result
from amst.register.fast import FastBackend, FastParams
from amst.transform import translation

CHOICES = [(f.name, name, allowed, optional)
           for f in dataclasses.fields(RunConfig) if f.name not in ("prealigned", "prealign")
           for name, (allowed, optional) in choice_fields(type(getattr(RunConfig(), f.name))).items()]


def test_every_choice_of_the_brief_is_a_literal():
    keys = {f"{section}.{name}" for section, name, _, _ in CHOICES}
    assert keys >= {"register.backend", "register.combine", "warp.order", "output.out_format", "output.ngff_version",
                    "template.second_pass_from", "template.ends", "z_spacing.mode", "z_spacing.calibration",
                    "execution.cluster"}
    assert set(choice_fields(PrealignConfig)) == {"method", "roi_units", "peak_fit", "tm_refine", "xcorr_prefilter",
                                                  "canvas"}
    assert METHODS == ("tm", "features", "xcorr", "none") and BACKENDS == ("elastix", "fast")


@pytest.mark.parametrize("section, name, allowed, optional", CHOICES, ids=[f"{c[0]}.{c[1]}" for c in CHOICES])
def test_each_choice_is_checked_from_its_hint_in_yaml_and_in_python(section, name, allowed, optional):
    key = f"{section}.{name}"
    use = allowed[0] if len(allowed) == 1 else "one of " + ", ".join(allowed)
    message = rf"{key}: 'bogus' is not allowed; use {use}"
    with pytest.raises(ValueError, match=message):
        build_config({section: {name: "bogus"}})
    cfg = RunConfig()
    setattr(getattr(cfg, section), name, "bogus")
    with pytest.raises(ValueError, match=message):
        cfg.validate()
    for value in allowed:
        if (key, value) != ("output.ngff_version", "0.5"):  # 0.5 needs zarr, the default
            assert getattr(getattr(build_config({section: {name: value}}), section), name) == value
    if optional:
        assert getattr(getattr(build_config({section: {name: None}}), section), name) is None


def test_yaml_booleans_and_numbers_are_taken_back_as_text():
    cfg = build_config(yaml.safe_load("z_spacing: {mode: off}\noutput: {ngff_version: 0.5}\n"))
    assert cfg.z_spacing.mode == "off" and cfg.output.ngff_version == "0.5"
    with pytest.raises(ValueError, match=r"z_spacing\.mode: 'on' is not allowed; use one of off, estimate, resample"):
        build_config(yaml.safe_load("z_spacing: {mode: on}"))
    with pytest.raises(ValueError, match=r"output\.ngff_version: '0\.6' is not allowed; use one of 0\.4, 0\.5"):
        build_config(yaml.safe_load("output: {ngff_version: 0.6}"))
    py = RunConfig()
    py.output.ngff_version = 0.5  # as YAML reads it, built in Python
    assert py.validate().output.ngff_version == "0.5"


def test_coerce_choice_compares_type_and_value():
    assert coerce_choice("k", "a", ("a", "b")) == "a"
    for bad in (True, 1, ["a"], ("a",)):
        with pytest.raises(ValueError, match=r"^k: .* is not allowed; use one of a, b$"):
            coerce_choice("k", bad, ("a", "b"))
    assert coerce_choice("k", None, ("a",), optional=True) is None
    with pytest.raises(ValueError, match=r"use a \(or leave it out\)"):
        coerce_choice("k", "b", ("a",), optional=True)


def test_prealign_choices_keep_their_messages_with_the_flag():
    for options, pattern in [({"method": "sift"}, r"method \(--prealign\): 'sift' is not one of tm, features"),
                             ({"roi_units": "mm"}, r"roi_units \(--roi-units\): 'mm' must be 'px' or 'nm'"),
                             ({"canvas": "x"}, r"canvas \(--canvas\): 'x' must be 'union' or 'input'"),
                             ({"xcorr_prefilter": "x"}, r"xcorr_prefilter \(--xcorr-prefilter\): 'x' is not one of "
                                                        r"gaussian, edges, none")]:
        with pytest.raises(ValueError, match=pattern):
            PrealignConfig(**options).validate()
    with pytest.raises(ValueError, match=r"prealign\.xcorr_prefilter: 'x' is not allowed; use one of gaussian"):
        build_config({"prealign": {"xcorr_prefilter": "x"}})
    check_choices(PrealignConfig())  # the defaults are allowed


def test_register_fast_is_a_section_of_fast_params():
    cfg = build_config({"register": {"fast": {"max_iterations": 7, "finest_level": 1, "robust": False}}})
    assert cfg.register.fast == FastParams(max_iterations=7, finest_level=1, robust=False)
    assert build_config().register.fast == FastParams()
    with pytest.raises(ValueError, match=r"register\.fast: expected a section"):
        build_config({"register": {"fast": 3}})
    py = RunConfig()
    py.register.fast = FastParams(max_iterations=0)
    with pytest.raises(ValueError, match=r"register\.fast\.max_iterations: 0 must be >= 1"):
        py.validate()


@pytest.mark.parametrize("options", [{}, {"register": {"fast": {"max_iterations": 7, "finest_level": 1,
                                                                  "tolerance_px": 0, "keep_fraction": 0.5}},
                                          "output": {"ngff_version": 0.5}, "z_spacing": {"mode": "estimate"}}])
def test_config_yaml_loads_back_to_the_same_config(options, tmp_path):
    cfg = build_config(options)
    path = tmp_path / "config.yaml"
    path.write_text(dump_yaml(cfg, "test"))  # what a run writes
    back = build_config(path)
    assert back == cfg and back.result_affecting() == cfg.result_affecting()
    assert isinstance(back.register.fast, FastParams)


def test_backend_for_takes_fast_params_or_a_dict():
    params = FastParams(max_iterations=7)
    from_params = backend_for("fast", params)
    assert isinstance(from_params, FastBackend) and from_params.params == dataclasses.asdict(params)
    assert backend_for("fast", {"max_iterations": 7}).params == {"max_iterations": 7}
    assert backend_for("fast").params == {}
    cfg = build_config({"register": {"fast": {"max_iterations": 7}}})
    assert backend_for(cfg.register.backend, getattr(cfg.register, cfg.register.backend)).params["max_iterations"] == 7


def test_check_result_thresholds_are_keyword_only():
    init = translation(1, 1)
    with pytest.raises(TypeError):
        check_result(init, init, (100, 100), 0.05, 0.05, 10, 0.8, 0.85, -0.05, 0.2)  # type: ignore[misc]
    assert check_result(init, init, (100, 100), ncc_before=0.8, ncc_after=0.85, max_scale_change=0.05,
                        max_shear=0.05, max_shift_px=10, min_ncc_gain=-0.05, min_ncc=0.2) == ""
