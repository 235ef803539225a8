"""``amst demo``: the main job on real FIB-SEM content with a known acquisition, against ground truth.

The content is a crop of real isotropic FIB-SEM shipped with amst (``amst/data/``: Janelia
FlyEM, HHMI, NeuroProof example data, CC BY; see ``amst/data/README.md``). ``amst synth``'s
acquisition model images it as a raw stack (drift, jitter, auto-focus events, curtains,
flicker, noise) with a platinum cap and FIB-etched marks painted over the top of the field,
so every slice's true map is known. The demo aligns that stack by template matching on the
marks alone and with AMST, prints the per-slice ground-truth error of both and writes yz
reslices of raw / TM alone / AMST to one PNG.
"""

from __future__ import annotations

import contextlib
import time
from importlib import resources
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

#: The shipped crop (package data of ``amst.data``).
DEMO_VOLUME = "flyem_medulla_demo.tif"
#: Synthetic stack: slices x height x width px. The crop is 64 x 200 x 250 px at 10 nm; 20 px on
#: each side of the field are left for the drift; 106 slices of 6 nm span its depth.
DEMO_SHAPE = (106, 160, 210)
#: nm (z, y, x): 6 nm slices of 10 nm pixels (FIB-SEM mills thinner than it images), the content
#: interpolated along z between the crop's 10 nm slices. At 10 nm slices (64 of them) the real
#: content changes so much from slice to slice that only 1 of the 7 auto-focus slices stood
#: out of the registration's noise (AMST 0.52 px there against template matching's 0.65).
DEMO_VOXEL_NM = (6.0, 10.0, 10.0)
DEMO_SEED = 2
#: Fraction of the field under the marks cap: on a 160 px field the default 0.15 (24 px) lets the
#: drift of 106 slices carry the marks partly out of view, and template matching then mistracks.
DEMO_CAP_HEIGHT = 0.25
#: A slice counts as made worse by AMST when its error exceeds template matching's by this.
WORSE_PX = 0.1
PNG_NAME = "yz_reslices.png"


@contextlib.contextmanager
def demo_volume() -> Iterator[Path]:
    """The path of the shipped real FIB-SEM crop, found through :mod:`importlib.resources`
    (a real file for as long as the context is open, also from a zipped install)."""
    with resources.as_file(resources.files("amst.data").joinpath(DEMO_VOLUME)) as path:
        if not path.is_file():
            raise FileNotFoundError(f"the demo's volume {DEMO_VOLUME} is missing from the installed amst "
                                    f"package ({path}); reinstall amst")
        yield path


def _autofocus_at(n: int) -> tuple[int, ...]:
    """Auto-focus events placed on top of the acquisition model's random ones: one of one
    slice at a quarter of the stack, one of two slices at three quarters."""
    return tuple(z for z in sorted({n // 4, 3 * n // 4, 3 * n // 4 + 1}) if 0 < z < n)


def run_demo(out: Path, backend: str = "fast", workers: int | None = None,
             echo: Callable[[str], None] = print) -> dict[str, float]:
    """Synthesise a stack from the shipped real crop, align it by TM alone and by AMST, print GT errors.

    ``out`` must be new, empty, or an earlier demo's folder (replaced: only what the demo
    wrote there is removed); anything else is refused.

    Returns
    -------
    dict
        The median per-slice error (px) of ``TM only`` and ``AMST``.
    """
    from .outdir import OwnedEntry, claim_output, mark_complete
    from .stack import VoxelSize
    from .synth import SynthConfig, load_ground_truth, synthesize

    n, h, w = DEMO_SHAPE
    with demo_volume() as volume:
        ownership = claim_output(out, kind="demo", entries=[OwnedEntry("data", "owned"), OwnedEntry("amst", "owned"),
                                                            OwnedEntry(PNG_NAME, "file")],
                                 overwrite=False, replace_own=True, protected={"the demo's volume": volume})
        t0 = time.perf_counter()
        data = out / "data"
        cfg = SynthConfig(shape=DEMO_SHAPE, preset="fibsem-marks", seed=DEMO_SEED,
                          voxel_size=VoxelSize(*DEMO_VOXEL_NM), volume=str(volume), autofocus_at=_autofocus_at(n),
                          cap_height=DEMO_CAP_HEIGHT)
        synthesize(data, cfg, workers=workers)
    echo(f"real FIB-SEM content ({volume.name}: Janelia FlyEM, HHMI, CC BY; see amst/data/README.md) imaged by "
         f"amst's acquisition model with a marks cap painted on top:")
    echo(f"  {n} slices of {h}x{w} px, {DEMO_VOXEL_NM[0]:g} x {DEMO_VOXEL_NM[1]:g} x {DEMO_VOXEL_NM[2]:g} nm "
         f"-> {data / 'raw'} ({time.perf_counter() - t0:.1f} s)")
    gt = load_ground_truth(data / "ground_truth.json")
    af = np.array(["autofocus" in s["events"] for s in gt["slices"]])

    t0 = time.perf_counter()
    tm_affines, tm_canvas, tm_info = _tm_alone(data / "raw", workers)
    tm_seconds = time.perf_counter() - t0
    t0 = time.perf_counter()
    am_affines, am_canvas, am_info = _amst(data, out / "amst", backend, workers)
    am_seconds = time.perf_counter() - t0

    echo("")
    _echo_roi(echo, am_info, gt.get("marks_roi_xywh"))
    err_tm = _errors(tm_affines, tm_canvas, gt, (h, w))
    err_am = _errors(am_affines, am_canvas, gt, (h, w))
    tm_name = "TM only" if tm_info.get("method") == "tm" else f"{tm_info.get('method')} only"
    rows = {tm_name: _row(err_tm, af, tm_seconds), f"AMST ({backend})": _row(err_am, af, am_seconds)}
    worse = err_am > err_tm + WORSE_PX
    echo("")
    echo(f"ground-truth error per slice (RMS over the slice, px), {n} slices, {int(af.sum())} at auto-focus events:")
    echo(f"{'method':<16}{'median':>8}{'p95':>8}{'median at auto-focus':>22}{'worse than TM':>15}{'time (s)':>10}")
    for (name, r), worse_txt in zip(rows.items(), ("-", f"{worse.mean():.0%} ({int(worse.sum())}/{n})")):
        echo(f"{name:<16}{r['median']:>8.3f}{r['p95']:>8.3f}{r['autofocus']:>22.3f}{worse_txt:>15}"
             f"{r['seconds']:>10.1f}")
    echo(f"(worse than TM: share of slices whose AMST error exceeds template matching's by more than "
         f"{WORSE_PX:g} px; time: template matching alone, and the whole AMST run with its report)")

    png = out / PNG_NAME
    _write_reslices(png, data / "raw", tm_affines, tm_canvas, out / "amst" / "aligned", am_affines,
                    DEMO_VOXEL_NM[0] / DEMO_VOXEL_NM[2], backend)
    mark_complete(out, ownership)

    tm, am = rows.values()
    if np.isfinite(tm["autofocus"]) and np.isfinite(am["autofocus"]) and am["autofocus"] > 0:
        ratio = tm["autofocus"] / am["autofocus"]
        echo("\nAt auto-focus slices (the pixel size changed; a translation cannot fit them) AMST's median error is "
             + (f"{ratio:.1f}x lower than" if ratio >= 1 else f"{1 / ratio:.1f}x higher than")
             + " template matching alone.")
    echo("Elsewhere the synthetic drift is a pure translation that template matching measures on the fixed marks "
         "almost exactly. AMST applies a registration's shape correction only where it stands out of the run's "
         "own measured noise (real tissue moves a little from slice to slice, so a slice never matches the median "
         "of its neighbours exactly), and weighs the two translations by their measured noise.")
    echo(f"\nyz reslices (raw | TM only | AMST): {png}")
    echo(f"aligned stack: {out / 'amst' / 'aligned'}  transforms: {out / 'amst' / 'transforms.json'}  "
         f"report: {out / 'amst' / 'report' / 'index.html'}")
    return {"TM only": tm["median"], "AMST": am["median"]}


def _tm_alone(raw: Path, workers: int | None) -> tuple[np.ndarray, tuple[int, int], dict]:
    """Template matching on the marks with the automatic ROI, as ``--prealign tm`` does."""
    from .prealign import PrealignConfig, prealign, to_transforms
    from .stack import open_stack

    stack = open_stack(raw)
    result = prealign(stack, PrealignConfig(method="tm"), workers)
    tf = to_transforms(stack, result)
    return tf.affines, tf.canvas_shape_yx, result.info


def _amst(data: Path, run: Path, backend: str, workers: int | None) -> tuple[np.ndarray, tuple[int, int], dict]:
    from .pipeline import align
    from .quality.report import build_report

    res = align(data / "raw", run, prealign="tm", backend=backend, workers=workers, out_format="tiff", progress=True)
    build_report(run, data / "ground_truth.json")
    tf = res.transforms
    return tf.affines, tf.canvas_shape_yx, dict(tf.extra.get("prealign_info", {}))


def _echo_roi(echo: Callable[[str], None], info: dict, marks_roi: list[float] | None) -> None:
    """Say where the template region came from and whether it is on the painted marks."""
    if info.get("method") == "tm" and "auto_roi_xywh_px" in info:
        x, y, rw, rh = info["auto_roi_xywh_px"]
        where = ""
        if marks_roi:
            mx, my, mw, mh = marks_roi
            on = x >= mx - 1 and y >= my - 1 and x + rw <= mx + mw + 1 and y + rh <= my + mh + 1
            where = " - inside the marks the demo painted" if on else " - NOT on the marks the demo painted"
        echo(f"template ROI found automatically: x={x} y={y} w={rw} h={rh} px on slice {info['auto_roi_slice']} "
             f"(stability {info['auto_roi_stability']:.2f} >= {info['auto_roi_min_stability']:.2f}, score "
             f"{info['auto_roi_score']:.2f} >= {info.get('auto_roi_min_score', 0.0):.2f}){where}")
    elif "fallback_reason" in info:
        echo(f"WARNING: the automatic ROI did not find the marks, so the pre-alignment used "
             f"{info.get('method')}: {info['fallback_reason']}")


def _errors(affines: np.ndarray, canvas: tuple[int, int], gt: dict, raw_shape_yx: tuple[int, int]) -> np.ndarray:
    from .quality.ground_truth import slice_errors

    return slice_errors(affines, gt["maps"], canvas, raw_shape_yx)["rms"]


def _row(err: np.ndarray, af: np.ndarray, seconds: float) -> dict[str, float]:
    return {"median": float(np.nanmedian(err)), "p95": float(np.nanpercentile(err, 95)),
            "autofocus": float(np.nanmedian(err[af])) if af.any() else float("nan"), "seconds": seconds}


def _column_through(affine_mid: np.ndarray, raw_shape_yx: tuple[int, int]) -> int:
    """The output column that the middle slice's map takes to the raw slice's middle column."""
    from .transform import apply_to_points, invert

    rh, rw = raw_shape_yx
    return int(round(apply_to_points(invert(affine_mid), np.array([[(rw - 1) / 2.0, (rh - 1) / 2.0]]))[0, 0]))


def _write_reslices(png: Path, raw_path: Path, tm_affines: np.ndarray, tm_canvas: tuple[int, int],
                    aligned_path: Path, am_affines: np.ndarray, z_ratio: float, backend: str) -> None:
    """One PNG: yz reslices (one column through the middle of x, z along the horizontal axis
    stretched by the z / x voxel ratio) of the raw stack, TM alone and AMST, side by side."""
    from .stack import open_stack
    from .warp import warp_slice

    raw = open_stack(raw_path)
    n, rh, rw = raw.shape
    mid = n // 2
    aligned = open_stack(aligned_path)
    x_raw = rw // 2
    x_tm = _column_through(tm_affines[mid], (rh, rw))
    x_am = _column_through(am_affines[mid], (rh, rw))
    cols_raw, cols_tm, cols_am = [], [], []
    for z in range(n):
        img = raw.read(z)
        cols_raw.append(img[:, x_raw])
        cols_tm.append(warp_slice(img, tm_affines[z], tm_canvas, "cubic")[:, x_tm])
        cols_am.append(np.asarray(aligned.read(z))[:, x_am])
    panels = [np.stack(c, axis=1) for c in (cols_raw, cols_tm, cols_am)]
    labels = ["raw", "TM only", f"AMST ({backend})"]
    png.write_bytes(_compose_png(panels, labels, z_ratio, (x_raw, x_tm, x_am)))


def _compose_png(panels: list[np.ndarray], labels: list[str], z_ratio: float, columns: tuple[int, ...]) -> bytes:
    """Panels side by side (z stretched by ``z_ratio``, enlarged to about 360 px high), each
    labelled, with a caption; the encoded PNG."""
    import cv2

    height = max(p.shape[0] for p in panels)
    scale = max(1, int(np.ceil(360 / height)))
    gap, top, bottom = 12, 34, 46
    tiles = []
    for p in panels:
        p = np.asarray(p)
        if p.dtype != np.uint8:
            lo, hi = np.percentile(p, (0.5, 99.5))
            p = np.clip((p.astype(np.float32) - lo) * (255.0 / max(hi - lo, 1e-6)), 0, 255).astype(np.uint8)
        width = max(1, int(round(p.shape[1] * z_ratio)))
        p = cv2.resize(p, (width * scale, p.shape[0] * scale), interpolation=cv2.INTER_NEAREST)
        tiles.append(np.pad(p, ((0, height * scale - p.shape[0]), (0, 0)), constant_values=255))
    total_w = sum(t.shape[1] for t in tiles) + gap * (len(tiles) + 1)
    canvas = np.full((top + height * scale + bottom, total_w), 255, np.uint8)
    font = cv2.FONT_HERSHEY_SIMPLEX
    x = gap
    for tile, label, col in zip(tiles, labels, columns):
        canvas[top:top + tile.shape[0], x:x + tile.shape[1]] = tile
        cv2.putText(canvas, label, (x, top - 12), font, 0.55, 0, 1, cv2.LINE_AA)
        cv2.putText(canvas, f"column x = {col} px", (x, top + height * scale + 16), font, 0.4, 0, 1, cv2.LINE_AA)
        x += tile.shape[1] + gap
    caption = f"yz reslices: y down, slices (z) to the right, z stretched x{z_ratio:g} (true aspect)"
    cv2.putText(canvas, caption, (gap, top + height * scale + 36), font, 0.4, 0, 1, cv2.LINE_AA)
    ok, buf = cv2.imencode(".png", canvas)
    if not ok:
        raise RuntimeError("OpenCV could not encode the reslice PNG")
    return buf.tobytes()
