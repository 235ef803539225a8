"""`amst run --elastic` end to end: config checks, the version-2 output, apply and resume."""

import json

import numpy as np
import pytest

from amst import apply, map_points
from amst.config import build_config
from amst.pipeline import align
from amst.stack import open_stack
from amst.synth import SynthConfig, synthesize
from amst.transforms_io import fields_path, load_transforms


@pytest.mark.parametrize("key, value, message", [
    ("significance", 0, r"register\.elastic\.significance: 0(\.0)? must be > 0"),
    ("grid_spacing_px", 4, r"register\.elastic\.grid_spacing_px: 4(\.0)? must be >= 8"),
    ("min_nodes", 0, r"register\.elastic\.min_nodes: 0(\.0)? must be >= 1"),
    ("min_shift_px", float("nan"), r"register\.elastic\.min_shift_px: nan must be >= 0"),
])
def test_bad_elastic_values_are_refused_naming_the_key(key, value, message):
    with pytest.raises(ValueError, match=message):
        build_config({"register": {"elastic": {key: value}}})


def test_elastic_off_keeps_the_config_digest_of_earlier_runs():
    plain = build_config({}).result_affecting()
    off = build_config({"register": {"elastic": {"enabled": False, "significance": 3}}}).result_affecting()
    on = build_config({"register": {"elastic": {"enabled": True}}}).result_affecting()
    assert "elastic" not in plain["register"] and off == plain
    assert on["register"]["elastic"]["enabled"] is True and on != plain


@pytest.fixture(scope="module")
def elastic_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("elastic_run")
    synthesize(root / "data", SynthConfig(shape=(24, 128, 128), preset="fibsem-elastic", seed=2, autofocus_at=(8, 16)),
               workers=1)
    # A permissive threshold, so that some slices surely get a field: this checks the plumbing, not the detector.
    cfg = {"register": {"elastic": {"enabled": True, "significance": 1.0, "min_nodes": 1, "min_shift_px": 0.0}},
           "output": {"out_format": "tiff"}}
    res = align(root / "data" / "raw", root / "out", cfg, backend="fast", workers=1, progress=False)
    return root, cfg, res


def test_fields_are_written_as_version_2_and_resampled_once(elastic_run):
    root, _, res = elastic_run
    doc = json.loads((root / "out" / "transforms.json").read_text())
    tf = load_transforms(root / "out" / "transforms.json")
    with_field = [z for z, s in enumerate(tf.slices) if s.field is not None]
    assert with_field and doc["version"] == 2 and fields_path(root / "out" / "transforms.json").exists()
    assert doc["elastic"]["slices_with_field"] == with_field
    assert all(tf.slices[z].metrics["field_max_px"] > 0 for z in with_field)
    z = max(with_field, key=lambda k: tf.slices[k].metrics["field_max_px"])
    ys, xs = np.mgrid[0:128:4, 0:128:4]
    pts = np.stack([xs.ravel(), ys.ravel()], axis=1).astype(np.float64)
    moved = map_points(tf, z, pts) - (pts @ tf.slices[z].affine[:, :2].T + tf.slices[z].affine[:, 2])
    assert np.linalg.norm(moved, axis=1).max() == pytest.approx(tf.slices[z].metrics["field_max_px"], rel=0.2)
    # `amst apply` of the saved maps to the same raw stack reproduces the run's output exactly.
    apply(root / "out" / "transforms.json", root / "data" / "raw", root / "applied", progress=False)
    ours, again = open_stack(root / "out" / "aligned"), open_stack(root / "applied")
    for z in range(len(ours)):
        np.testing.assert_array_equal(ours.read(z), again.read(z))


def test_rerun_resumes_without_recomputing(elastic_run):
    root, cfg, res = elastic_run
    before = (root / "out" / "transforms.fields.npy").read_bytes()
    again = align(root / "data" / "raw", root / "out", cfg, backend="fast", workers=1, progress=False)
    assert again.recomputed == 0 and sum(again.recomputed_per_pass) == 0
    assert (root / "out" / "transforms.fields.npy").read_bytes() == before
