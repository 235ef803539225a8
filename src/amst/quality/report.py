"""The QC report: ``OUT/report/index.html`` with its PNGs beside it."""

from __future__ import annotations

import html
import json
from pathlib import Path

import numpy as np

from ..outdir import atomic_write_text
from ..transforms_io import jsonable
from .evaluate import Evaluation, evaluate_run, transform_parameters
from .flags import record_flags
from .plots import (
    plot_field_map,
    plot_field_metrics,
    plot_ground_truth,
    plot_residual,
    plot_transforms,
    plot_z_spacing,
    save_reslice,
)
from .residual import MIN_FINITE_FRACTION

_CSS = """
body{font-family:system-ui,sans-serif;max-width:1000px;margin:1.5em auto;color:#222;line-height:1.4}
h1{font-size:1.5em} h2{font-size:1.15em;margin-top:1.6em;border-bottom:1px solid #ddd}
.cards{display:flex;flex-wrap:wrap;gap:10px}.card{border:1px solid #ddd;border-radius:6px;padding:8px 12px;min-width:150px}
.card b{display:block;font-size:1.35em}.good{color:#17733a}.warn{color:#b35c00}.bad{color:#b00020}
table{border-collapse:collapse;font-size:.9em}td,th{border:1px solid #ddd;padding:3px 8px;text-align:right}
img{max-width:100%} pre{background:#f6f6f6;padding:8px;overflow:auto;font-size:.8em} .note{color:#555;font-size:.9em}
"""


def _verdict(ev: Evaluation) -> tuple[str, str]:
    s = ev.summary
    n = s["slices"]
    bad = n - s["status_counts"]["ok"]
    # The jitter residual: the plain one also holds the sample's own motion with depth.
    res = [r["median"] for r in s["jitter_residual"] if np.isfinite(r["median"])]
    unit = s["jitter_residual"][0]["unit"] if s["jitter_residual"] else "px"
    px = (np.median(res) / (s["pixel_nm"] or 1.0)) if res else float("nan")
    what = f"median slice-to-slice misalignment {np.median(res):.1f} {unit}" if res else "no residual measured"
    holes = len(s.get("nonfinite_slices", []))
    if holes:
        what += f"; {holes} slice(s) hold NaN/inf pixels, which are no data (listed below)"
    stand_out = s.get("residual_flags", [])
    if stand_out:
        what += (f"; {len(stand_out)} aligned slice(s) stand out in the residual: "
                 + ", ".join(f"slice {f['index']} ({f['jitter_residual_px']:.2f} px)" for f in stand_out[:5])
                 + (", ..." if len(stand_out) > 5 else ""))
    if bad == 0 and px < 0.5 and not holes and not stand_out:
        return "good", f"All {n} slices aligned; {what} (< half a pixel)."
    if bad + len(stand_out) <= max(1, n // 50) and px < 1.0:
        return "warn", f"{bad + len(stand_out)} of {n} slices need a look (listed below); {what}."
    return "bad", f"{bad} of {n} slices were not aligned by AMST; {what}. Check the flagged slices."


def _flagged_rows(ev: Evaluation) -> list[tuple[int, str, str, str]]:
    """(slice, name, status, reason) of every slice to look at: not ``ok``, or standing out in the residual."""
    rows = [(z, sl.name, sl.status, str(sl.metrics.get("reason", sl.metrics.get("prealign_flag", ""))))
            for z, sl in enumerate(ev.transforms.slices) if sl.status != "ok"]
    rows += [(f["index"], f["name"], "ok", f["message"]) for f in ev.summary.get("residual_flags", [])]
    return sorted(rows)


def _refuse_links(out: Path) -> None:
    """The report is written into ``out``: never through a symbolic link to someone else's file."""
    from ..outdir import REPORT_FILES, OutputError

    links = [p for p in [out, *(out / name for name in REPORT_FILES)] if p.is_symlink()]
    if links:
        raise OutputError(f"{links[0]} is a symbolic link; amst writes its report only into files it owns: "
                          "remove the link and run again")


def _prealign_decision(ev: Evaluation) -> str:
    """A warning paragraph when the pre-alignment used another method than the one asked for."""
    info = ev.transforms.extra.get("prealign_info") or {}
    if not info.get("fallback_reason"):
        return ""
    return (f'<p class="warn"><b>Pre-alignment: {html.escape(str(info.get("method_requested")))} was asked for, '
            f'{html.escape(str(info.get("method")))} was used.</b> {html.escape(str(info["fallback_reason"]))}</p>\n')


def _nonfinite_section(ev: Evaluation) -> str:
    """The list of slices with NaN/inf pixels (empty string when there are none)."""
    holes = ev.summary.get("nonfinite_slices", [])
    if not holes:
        return ""
    n_crops = len(ev.sweep.crops)
    rows = "".join(
        f"<tr><td>{h['index']}</td><td style='text-align:left'>{html.escape(h['name'])}</td>"
        f"<td>{h['nonfinite_px']}</td><td>{100 * h['fraction']:.1f} %</td>"
        f"<td>{h['crops_measured']} of {n_crops}</td></tr>"
        for h in holes[:500])
    return (f"<h2>Slices with NaN/inf pixels ({len(holes)})</h2>"
            f"<p class='note'>These pixels are no data. A crop with less than {100 * MIN_FINITE_FRACTION:.0f} % finite "
            "pixels is not measured: "
            "its residual to and from the neighbouring slices is NaN and left out of every mean above.</p>"
            "<table><tr><th>slice</th><th>name</th><th>NaN/inf pixels</th><th>share</th><th>crops measured</th></tr>"
            f"{rows}</table>")


def _z_spacing_section(ev: Evaluation, out: Path) -> str:
    """The slice-thickness plot and its numbers, when the run measured slice depths."""
    z = ev.transforms.z_nm
    record = ev.transforms.extra.get("z_spacing")
    if z is None or not record:
        return ""
    true = None
    if ev.truth is not None and all("z_nm" in s for s in ev.truth["slices"]):
        true = np.diff([s["z_nm"] for s in ev.truth["slices"]])
    sd = np.asarray(record.get("thickness_sd_nm") or np.zeros(len(z) - 1), dtype=np.float64)
    plot_z_spacing(np.diff(z), sd, record["nominal_nm"], record["falloff"],
                   out / "z_spacing.png", true)
    lo, hi = record["thickness_range_nm"]
    unmeasured = record.get("unmeasured_slices") or []
    return (f"<h2>Slice thickness</h2><figure><img src='z_spacing.png' alt='z spacing'><figcaption class='note'>"
            f"Left: each slice's thickness (depth to the next slice) estimated from the images, mean "
            f"{record['mean_thickness_nm']:.2f} nm ({html.escape(record['calibration'])} calibration; nominal "
            f"{record['nominal_nm']:.2f} nm), range {lo:.2f}-{hi:.2f} nm; the band is +-1 standard deviation of "
            f"the fit. Right: how similar two slices are against their distance, along z (estimated depths) "
            f"and in-plane (pixel size): an isotropic stack has the two curves on top of each other. Isotropy "
            f"ratio (image-based mean step / nominal): {record['isotropy_ratio']:.3f}."
            + (f" Slices without a measurement (depth from the nominal step): "
               f"{html.escape(', '.join(str(v) for v in unmeasured[:50]))}." if unmeasured else "")
            + "</figcaption></figure>")


#: Slices of the elastic section's table; the others are counted below it.
FIELD_TABLE_ROWS = 20


def _elastic_section(ev: Evaluation, out: Path) -> str:
    """The elastic refinement: which slices got a local displacement field, how large, and a
    picture of the largest. Empty when the elastic stage was off; one line when it found nothing."""
    tf = ev.transforms
    title = "<h2>Elastic refinement (local fields)</h2>"
    if not tf.has_fields:
        if tf.extra.get("elastic") is None:
            return ""
        return (title + "<p class='note'>The elastic stage was on and found no slice with a significant local "
                "distortion: every slice keeps its affine alone.</p>")
    rms, big = np.array(ev.per_slice["field_rms_px"]), np.array(ev.per_slice["field_max_px"])  # evaluate_run's
    with_field = [z for z, sl in enumerate(tf.slices) if sl.field is not None]
    n, k = len(tf.slices), len(with_field)
    pixel_nm = ev.summary.get("pixel_nm")

    def amount(px: float) -> str:
        return f"{px:.2f} px" + (f" ({px * pixel_nm:.1f} nm)" if pixel_nm else "")

    order = sorted(with_field, key=lambda z: (-big[z], -rms[z], z))
    top = order[0]
    grid = tf.field_grid
    sigma = (tf.extra.get("elastic") or {}).get("node_sigma_median_px")
    text = (f"{k} of {n} slice(s) got a local correction on top of their affine: a smooth displacement field on "
            f"a grid of {grid.shape_yx[0]} x {grid.shape_yx[1]} nodes every {grid.spacing_px:.0f} px. "
            f"Field RMS over the slice: median {amount(float(np.median(rms[with_field])))}, largest "
            f"{amount(float(rms[with_field].max()))}; largest displacement: median "
            f"{amount(float(np.median(big[with_field])))}, largest {amount(float(big[top]))} "
            f"(slice {top}, {tf.slices[top].name}). "
            "A field means the affine alone left a significant local jump to the neighbouring slices at that "
            "place in that slice (a distortion the neighbours do not share); the field removes it there, in "
            "that slice only. The sample's structure is not moved elsewhere: slices without a field keep "
            "their affine alone."
            + (f" Typical measurement noise of a node: {amount(float(sigma))}." if sigma is not None else ""))
    rows = "".join(f"<tr><td>{z}</td><td style='text-align:left'>{html.escape(tf.slices[z].name)}</td>"
                   f"<td>{rms[z]:.2f}</td><td>{big[z]:.2f}</td></tr>" for z in order[:FIELD_TABLE_ROWS])
    more = (f"<p class='note'>... and {k - FIELD_TABLE_ROWS} more slice(s) with a field (all in "
            "transforms.json, metrics field_rms_px / field_max_px).</p>" if k > FIELD_TABLE_ROWS else "")
    plot_field_metrics(rms, big, ev.per_slice["status"], out / "elastic_fields.png", pixel_nm)
    plot_field_map(tf.slices[top].field, grid, tf.canvas_shape_yx, out / "elastic_largest.png",
                   f"Largest local field: slice {top} ({tf.slices[top].name}), max {big[top]:.2f} px")
    return (title + f"<p>{html.escape(text)}</p>"
            "<table><tr><th>slice</th><th>name</th><th>RMS (px)</th><th>max (px)</th></tr>"
            f"{rows}</table>{more}"
            "<figure><img src='elastic_fields.png' alt='elastic fields per slice'><figcaption class='note'>"
            "RMS and largest magnitude of each slice's local field along z; 0 where a slice has none."
            "</figcaption></figure>"
            "<figure><img src='elastic_largest.png' alt='largest elastic field'><figcaption class='note'>"
            f"The largest field (slice {top}) on the output canvas: colour is how far (px) the field moves the "
            "image content at each place; arrows at the grid nodes show the field's direction (raw position = "
            "affine + field), their lengths enlarged to be seen.</figcaption></figure>")


def build_report(run: str | Path, truth: str | Path | None = None, ev: Evaluation | None = None) -> Path:
    """Write ``run/report/index.html`` (plus PNGs and ``evaluation.json``) and return its path.

    The slices whose residual stands out (``ev.flags``) are also recorded in
    ``run/transforms.json`` as ``metrics.check`` (:func:`~amst.quality.flags.record_flags`).
    """
    run = Path(run)
    ev = ev or evaluate_run(run, truth)
    out = run / "report"
    _refuse_links(out)
    record_flags(run / "transforms.json", ev.flags, ev.summary["pixel_nm"])
    out.mkdir(exist_ok=True)
    s = ev.summary
    statuses = ev.per_slice["status"]
    vs = ev.transforms.voxel_size
    z_scale = (vs.z / vs.x) if vs else 1.0
    plot_residual(ev.sweep.residual_px, ev.sweep.jitter_residual_px, ev.sweep.neighbour_ncc, s["pixel_nm"], statuses,
                  out / "residual.png")
    plot_transforms(transform_parameters(ev.transforms), statuses, out / "transforms.png")
    save_reslice(ev.sweep.reslice_xz, out / "reslice_xz.png", z_scale, "xz reslice of the aligned stack (middle row)")
    save_reslice(ev.sweep.reslice_yz, out / "reslice_yz.png", z_scale, "yz reslice of the aligned stack (middle column)")
    figures = [("residual.png", "Top: residual to the previous slice in each crop (the paper's Fig. 3b). Middle: the "
                "same without the sample's slow motion with depth (structures oblique to the slices slide a little "
                "at every slice), which leaves the slice-to-slice misalignment. Flat and low means aligned; spikes "
                "are slices to inspect."),
               ("transforms.png", "What AMST corrected per slice. Spikes in scale/shear are auto-focus events; "
                "coloured lines mark flagged slices (orange fallback, grey blank, red failed).")]
    if "ground_truth" in s:
        plot_ground_truth(ev.per_slice, statuses, out / "ground_truth.png")
        figures.insert(0, ("ground_truth.png", "Error against the synthetic ground truth."))
    z_section = _z_spacing_section(ev, out)
    elastic_section = _elastic_section(ev, out)
    kind, verdict = _verdict(ev)
    cards = [("Slices", s["slices"]), ("Aligned (ok)", s["status_counts"]["ok"]),
             ("Fallback / blank / failed", f"{s['status_counts']['fallback']} / {s['status_counts']['blank']} / "
                                           f"{s['status_counts']['failed']}")]
    for r, jr in zip(s["residual"], s["jitter_residual"]):
        cards.append((f"Residual crop {r['crop'] + 1} (mean / max)", f"{r['mean']:.1f} / {r['max']:.1f} {r['unit']}"))
        cards.append((f"Jitter residual crop {jr['crop'] + 1} (mean / max)",
                      f"{jr['mean']:.1f} / {jr['max']:.1f} {jr['unit']}"))
    cards.append(("Voxel size", str(vs) if vs else "voxel size unknown"))
    if s["neighbour_ncc_median"] is not None:
        cards.append(("Neighbour NCC (median)", f"{s['neighbour_ncc_median']:.3f}"))
    if "ground_truth" in s:
        g = s["ground_truth"]
        cards.append(("GT error median / p95", f"{g['rms_px_median']:.3f} / {g['rms_px_p95']:.3f} px"))
    if ev.transforms.has_fields:
        cards.append(("Slices with a local field", sum(sl.field is not None for sl in ev.transforms.slices)))
    t = s.get("timings_per_slice_s") or {}
    if t:
        cards.append(("Time per slice", f"{sum(t.values()):.2f} core-s"))
    flagged = _flagged_rows(ev)
    rows = "".join(
        f"<tr><td>{z}</td><td style='text-align:left'>{html.escape(name)}</td><td>{st}</td>"
        f"<td style='text-align:left'>{html.escape(reason)}</td></tr>"
        for z, name, st, reason in flagged[:500])
    cfg_text = (run / "config.yaml").read_text() if (run / "config.yaml").exists() else "(no config.yaml)"
    crops = ", ".join(f"crop {i + 1}: x={c['x']} y={c['y']} size={c['size']}" for i, c in enumerate(s["crops"]))
    timing_rows = "".join(f"<tr><td style='text-align:left'>{k}</td><td>{v:.3f}</td></tr>" for k, v in t.items())
    body = f"""<!doctype html><html><head><meta charset="utf-8"><title>amst report: {html.escape(run.name)}</title>
<style>{_CSS}</style></head><body>
<h1>Alignment report: {html.escape(run.name)}</h1>
<p class="{kind}"><b>{html.escape(verdict)}</b></p>
{_prealign_decision(ev)}<div class="cards">{''.join(f'<div class="card">{html.escape(str(k))}<b>{html.escape(str(v))}</b></div>' for k, v in cards)}</div>
<p class="note">Residual: each slice re-registered to the previous one inside {len(s['crops'])} crops ({crops});
a well-aligned stack shows only small, flat values. Measured by phase correlation refined by a least-squares fit, independent of the alignment method.</p>
<h2>Plots</h2>
{''.join(f'<figure><img src="{f}" alt="{f}"><figcaption class="note">{html.escape(c)}</figcaption></figure>' for f, c in figures)}
<h2>Reslices</h2>
<p class="note">Cuts across the slices: structures should run smoothly from slice to slice, with no jumps.</p>
<img src="reslice_xz.png" alt="xz reslice"><img src="reslice_yz.png" alt="yz reslice">
<h2>Flagged slices ({len(flagged)})</h2>
{'<table><tr><th>slice</th><th>name</th><th>status</th><th>reason</th></tr>' + rows + '</table>' if flagged else '<p>None.</p>'}
{elastic_section}{z_section}{_nonfinite_section(ev)}<h2>Time per slice (core-s: seconds times the cores the run held)</h2><table>{timing_rows}</table>
<h2>Parameters</h2><pre>{html.escape(cfg_text)}</pre>
</body></html>"""
    atomic_write_text(out / "evaluation.json", json.dumps(jsonable({"summary": s, "per_slice": ev.per_slice}), indent=1))
    atomic_write_text(out / "index.html", body)
    return out / "index.html"
