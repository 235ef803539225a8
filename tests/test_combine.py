"""The combination of pre-alignment and template registration (amst.combine)."""

import numpy as np
import pytest

from amst.combine import combine_measurements
from amst.prealign.template_matching import tm_noise_px
from amst.transform import compose, invert, translation

C = (100.0, 20.0)


def _about(linear: np.ndarray, t: np.ndarray, c=C) -> np.ndarray:
    """D(p) = L (p - c) + c + t."""
    d = np.zeros((2, 3))
    d[:, :2] = linear
    d[:, 2] = np.asarray(c) - linear @ np.asarray(c) + t
    return d


def _stack(n=300, seed=0, lin_noise=5e-4, t_noise=0.05, events=(40, 41, 150, 299), scale=0.01):
    rng = np.random.default_rng(seed)
    pre = np.array([translation(*rng.normal(0, 3, 2)) for _ in range(n)])
    truth_lin = np.repeat(np.eye(2)[None], n, axis=0)
    for z in events:
        truth_lin[z] = np.diag([1 + scale, 1 - scale])
    reg = np.array([compose(p, _about(truth_lin[z] + rng.normal(0, lin_noise, (2, 2)), rng.normal(0, t_noise, 2)))
                    for z, p in enumerate(pre)])
    return pre, reg, truth_lin, np.array(events)


def test_only_significant_linear_corrections_are_applied():
    pre, reg, truth_lin, events = _stack()
    res = combine_measurements(pre, reg, np.ones(len(pre), bool), reference_xy=C, prealign_noise_px=0.0)
    assert set(np.flatnonzero(res.linear_applied)) == set(events)
    # A slice without a significant correction keeps the pre-alignment's shape exactly.
    calm = np.setdiff1d(np.arange(len(pre)), events)
    for z in calm[:20]:
        np.testing.assert_allclose(res.affines[z][:, :2], np.eye(2), atol=1e-12)
    for z in events:  # the applied correction is the measured one, close to the truth
        lin = compose(invert(pre[z]), res.affines[z])[:, :2]
        np.testing.assert_allclose(lin, truth_lin[z], atol=3e-3)
    # The measured noise is the simulated one (robust scale of 300 slices: within 20 %).
    np.testing.assert_allclose(res.noise_linear, 5e-4, rtol=0.2)


def test_translation_is_weighted_by_the_measured_noises():
    pre, reg, _, _ = _stack(events=())
    exact = combine_measurements(pre, reg, np.ones(len(pre), bool), reference_xy=C, prealign_noise_px=0.0)
    assert exact.translation_weight < 0.05  # a noiseless pre-alignment keeps its translation
    for z in range(10):
        np.testing.assert_allclose(exact.affines[z][:, 2], pre[z][:, 2], atol=0.01)
    unknown = combine_measurements(pre, reg, np.ones(len(pre), bool), reference_xy=C,
                                   prealign_noise_px=float("inf"))
    assert unknown.translation_weight == 1.0  # unmeasured: the registration's translation
    equal = combine_measurements(pre, reg, np.ones(len(pre), bool), reference_xy=C, prealign_noise_px=0.05 / np.sqrt(2))
    assert 0.3 < equal.translation_weight < 0.7  # half the spread of e is the pre-alignment's


def test_a_higher_significance_applies_fewer_corrections():
    pre, reg, _, _ = _stack(lin_noise=8e-4, scale=0.004)
    counts = [combine_measurements(pre, reg, np.ones(len(pre), bool), reference_xy=C, prealign_noise_px=0.0,
                                   significance=k).linear_applied.sum() for k in (2, 5, 20)]
    assert counts[0] > counts[1] >= counts[2]


def test_unusable_slices_keep_their_prealignment_and_too_few_are_refused():
    pre, reg, _, _ = _stack()
    usable = np.ones(len(pre), bool)
    usable[[40, 7]] = False
    res = combine_measurements(pre, reg, usable, reference_xy=C, prealign_noise_px=0.0)
    np.testing.assert_array_equal(res.affines[40], pre[40])
    assert np.isnan(res.linear_significance[40]) and not res.linear_applied[40]
    usable[:] = False
    usable[:5] = True
    with pytest.raises(ValueError, match="at least 8"):
        combine_measurements(pre, reg, usable, reference_xy=C, prealign_noise_px=0.0)


def test_tm_noise_from_three_thirds_recovers_the_simulated_noise():
    rng = np.random.default_rng(3)
    sigmas = np.array([0.03, 0.05, 0.08])
    thirds = rng.normal(0, 1, (4000, 3, 2)) * sigmas[None, :, None]
    expected = np.sqrt(1 / np.sum(1 / sigmas ** 2))
    assert tm_noise_px(thirds) == pytest.approx(expected, rel=0.1)
    thirds[:5] += 3.0  # a few slices whose thirds really moved apart (auto-focus) do not count
    assert tm_noise_px(thirds) == pytest.approx(expected, rel=0.1)
    assert tm_noise_px(thirds[:5]) is None


def test_prealign_noise_is_measured_against_the_registration_with_the_thirds_as_references():
    """P (whole ROI), R (registration) and three thirds T_i, each with its own noise: the
    three-cornered hat on the thirds plus var(R - T_i) and var(R - P) recover P's noise."""
    from amst.combine import prealign_noise_from_parts
    from amst.prealign.template_matching import part_noises_px

    rng = np.random.default_rng(4)
    n = 3000
    truth = rng.normal(0, 2, (n, 2))
    s_p, s_r, s_t = 0.02, 0.07, np.array([0.05, 0.06, 0.09])
    pre = np.array([translation(*(t + rng.normal(0, s_p, 2))) for t in truth])
    reg = np.array([translation(*(t + rng.normal(0, s_r, 2))) for t in truth])
    thirds = truth[:, None, :] + rng.normal(0, 1, (n, 3, 2)) * s_t[None, :, None]
    parts_noise = part_noises_px(thirds)
    np.testing.assert_allclose(parts_noise[:, 0], s_t, rtol=0.15)
    got = prealign_noise_from_parts(pre, reg, np.ones(n, bool), reference_xy=C, part_shifts_px=thirds,
                                    part_noise_px=parts_noise)
    assert got == pytest.approx(s_p, abs=0.01)
    assert prealign_noise_from_parts(pre[:5], reg[:5], np.ones(5, bool), reference_xy=C, part_shifts_px=thirds[:5],
                                     part_noise_px=parts_noise) is None
