"""The QC report's elastic section: slices with a local displacement field, their sizes, the largest field."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from amst.field import FieldGrid, field_rms_max
from amst.quality.report import build_report
from amst.synth import SynthConfig, synthesize
from amst.transforms_io import load_transforms

from .test_trust_quality import _run_folder

TITLE = "Elastic refinement (local fields)"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def plain_run(tmp_path_factory) -> Path:
    """A 12-slice 192x192 run folder (identity maps, no fields)."""
    base = tmp_path_factory.mktemp("repfields")
    synthesize(base / "data", SynthConfig(shape=(12, 192, 192), seed=6), workers=1)
    return _run_folder(base / "data" / "raw", base / "run")


def _with_fields(plain: Path, run: Path, fields: dict[int, float]) -> Path:
    """A copy of ``plain`` whose slices in ``fields`` get a bump of that amplitude (px)."""
    import shutil

    shutil.copytree(plain, run)
    tf = load_transforms(run / "transforms.json")
    grid = FieldGrid.covering(tf.canvas_shape_yx, 64.0)
    tf.field_grid = grid
    for z, amp in fields.items():
        v = np.zeros((*grid.shape_yx, 2))
        v[1, 1] = [amp, -0.5 * amp]
        tf.slices[z].field = v
        tf.slices[z].metrics["field_rms_px"], tf.slices[z].metrics["field_max_px"] = \
            field_rms_max(v, grid, tf.canvas_shape_yx)
    tf.extra["elastic"] = {"slices_with_field": sorted(fields), "node_sigma_median_px": 0.1,
                           "grid": grid.to_json()}
    tf.save(run / "transforms.json")
    return run


def test_report_shows_the_slices_with_a_field_and_the_largest(plain_run, tmp_path):
    run = _with_fields(plain_run, tmp_path / "run", {3: 1.2, 7: 2.5})
    text = build_report(run).read_text()
    assert TITLE in text
    tf = load_transforms(run / "transforms.json")
    assert tf.has_fields  # the report's flag bookkeeping keeps the fields
    names = [tf.slices[z].name for z in (7, 3)]
    section = text[text.index(TITLE):]
    table = section[section.index("<table>"):section.index("</table>")]
    assert all(n in table for n in names)
    assert table.index(names[0]) < table.index(names[1])  # sorted by max, largest first
    assert tf.slices[0].name not in table
    assert "2 of 12 slice(s) got a local correction" in section
    assert "nm)" in section  # the synthetic stack knows its pixel size
    for png in ("elastic_fields.png", "elastic_largest.png"):
        path = run / "report" / png
        assert path.read_bytes()[:8] == PNG_MAGIC and path.stat().st_size > 5000, png
        assert png in section
    from PIL import Image

    img = np.asarray(Image.open(run / "report" / "elastic_largest.png").convert("RGB")).astype(int)
    assert img.std() > 10  # a picture, not a blank


def test_table_is_capped_with_a_count_of_the_rest(plain_run, tmp_path, monkeypatch):
    from amst.quality import report

    monkeypatch.setattr(report, "FIELD_TABLE_ROWS", 3)
    run = _with_fields(plain_run, tmp_path / "run", {z: 0.5 + z for z in range(1, 6)})
    text = build_report(run).read_text()
    section = text[text.index(TITLE):]
    table = section[section.index("<table>"):section.index("</table>")]
    assert table.count("<tr>") == 1 + 3
    assert "and 2 more slice(s) with a field" in section


def test_run_without_fields_has_no_elastic_section(plain_run):
    text = build_report(plain_run).read_text()
    assert TITLE not in text
    assert not (plain_run / "report" / "elastic_largest.png").exists()


def test_elastic_stage_that_found_nothing_says_so_in_one_line(plain_run, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(plain_run, run)
    tf = load_transforms(run / "transforms.json")
    tf.extra["elastic"] = {"slices_with_field": [], "node_sigma_median_px": 0.1, "grid": None}
    tf.save(run / "transforms.json")
    text = build_report(run).read_text()
    assert TITLE in text and "found no slice with a significant local distortion" in text
    assert not (run / "report" / "elastic_largest.png").exists()
