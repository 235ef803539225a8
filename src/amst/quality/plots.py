"""Figures of the QC report (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from ..outdir import atomic_write_bytes  # noqa: E402

FLAG_COLOURS = {"fallback": "tab:orange", "blank": "tab:gray", "failed": "tab:red"}


def _mark_flags(ax, statuses: list[str]) -> None:
    for z, s in enumerate(statuses):
        if s in FLAG_COLOURS:
            ax.axvline(z, color=FLAG_COLOURS[s], alpha=0.35, lw=1)


def _contrast(img: np.ndarray) -> np.ndarray:
    """``img`` stretched to [0, 1] between its 1st and 99th percentile of data; NaN/inf
    pixels (no data) are shown black, like the canvas outside the slices."""
    finite = np.isfinite(img)
    v = img[finite & (img != 0)]
    if v.size == 0:
        return np.zeros_like(img, dtype=np.float32)
    lo, hi = np.percentile(v, [1, 99])
    return np.where(finite, np.clip((img - lo) / max(hi - lo, 1e-6), 0, 1), 0).astype(np.float32)


def plot_residual(residual_px: np.ndarray, jitter_residual_px: np.ndarray, ncc: np.ndarray, pixel_nm: float | None,
                  statuses: list[str], path: Path) -> None:
    """The paper's Fig. 3b (residual shift to the previous slice per crop), the same without
    the sample's slow motion with depth, and neighbour NCC."""
    factor, unit = (pixel_nm, "nm") if pixel_nm else (1.0, "px")
    fig, (a, j, b) = plt.subplots(3, 1, figsize=(9, 6.5), sharex=True, gridspec_kw={"height_ratios": [2, 2, 1]})
    for k, r in enumerate(residual_px):
        a.plot(r * factor, lw=0.8, label=f"crop {k + 1}")
    for k, r in enumerate(jitter_residual_px):
        j.plot(r * factor, lw=0.8, label=f"crop {k + 1}")
    a.set_ylabel(f"residual ({unit})")
    a.set_title("Residual misalignment to the previous slice (lower is better)")
    a.legend(loc="upper right", fontsize=8)
    j.set_ylabel(f"jitter residual ({unit})")
    j.set_title("The same without the sample's slow motion with depth (slice-to-slice misalignment)", fontsize=10)
    b.plot(ncc, color="k", lw=0.8)
    b.set_ylabel("NCC with previous")
    b.set_xlabel("slice")
    for ax in (a, j, b):
        _mark_flags(ax, statuses)
    fig.tight_layout()
    _save(fig, path)


def plot_transforms(params: dict[str, np.ndarray], statuses: list[str], path: Path) -> None:
    """Scale, shear, rotation of the AMST correction and the translation over z."""
    fig, axes = plt.subplots(4, 1, figsize=(9, 7), sharex=True)
    axes[0].plot((params["scale_x"] - 1) * 100, lw=0.8, label="x")
    axes[0].plot((params["scale_y"] - 1) * 100, lw=0.8, label="y")
    axes[0].set_ylabel("scale change (%)")
    axes[0].legend(fontsize=8, loc="upper right")
    axes[0].set_title("Per-slice correction (auto-focus events show as spikes)")
    axes[1].plot(params["shear"] * 100, lw=0.8, color="tab:purple")
    axes[1].set_ylabel("shear (%)")
    axes[2].plot(params["rotation_deg"], lw=0.8, color="tab:green")
    axes[2].set_ylabel("rotation (deg)")
    axes[3].plot(params["tx"], lw=0.8, label="x")
    axes[3].plot(params["ty"], lw=0.8, label="y")
    axes[3].set_ylabel("translation (px)")
    axes[3].set_xlabel("slice")
    axes[3].legend(fontsize=8, loc="upper right")
    for ax in axes:
        _mark_flags(ax, statuses)
    fig.tight_layout()
    _save(fig, path)


def plot_ground_truth(per_slice: dict, statuses: list[str], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(9, 3.2))
    ax.plot(per_slice["gt_rms_px"], lw=0.9, label="error (RMS over slice)")
    ax.plot(per_slice["gt_drift_px"], lw=0.9, label="drift (low-pass)")
    ax.plot(per_slice["gt_jitter_px"], lw=0.6, label="jitter (high-pass)", alpha=0.7)
    ax.set_ylabel("px")
    ax.set_xlabel("slice")
    ax.set_title("Error against ground truth")
    ax.legend(fontsize=8)
    _mark_flags(ax, statuses)
    fig.tight_layout()
    _save(fig, path)


def save_reslice(image: np.ndarray, path: Path, z_scale: float = 1.0, title: str = "") -> None:
    """A reslice (z down, x or y across) as a PNG, stretched along z by the voxel aspect."""
    img = _contrast(np.asarray(image, dtype=np.float32))
    fig_w = 9
    aspect = z_scale
    h_in = max(1.2, min(8, fig_w * img.shape[0] * aspect / img.shape[1]))
    fig, ax = plt.subplots(figsize=(fig_w, h_in + 0.4))
    ax.imshow(img, cmap="gray", aspect=aspect, interpolation="nearest")
    ax.set_title(title, fontsize=9)
    ax.set_xlabel("x (px)" if "xz" in path.name else "y (px)")
    ax.set_ylabel("slice")
    fig.tight_layout()
    _save(fig, path)


def save_overlay(a: np.ndarray, b: np.ndarray, path: Path, z_scale: float, title: str) -> None:
    """Red/cyan overlay of two reslices (paper Fig. 3c,d): grey where they agree."""
    h = min(a.shape[0], b.shape[0])
    w = min(a.shape[1], b.shape[1])
    ra, rb = _contrast(a[:h, :w]), _contrast(b[:h, :w])
    rgb = np.stack([ra, rb, rb], axis=-1)
    fig_w = 9
    h_in = max(1.2, min(8, fig_w * h * z_scale / w))
    fig, ax = plt.subplots(figsize=(fig_w, h_in + 0.4))
    ax.imshow(rgb, aspect=z_scale, interpolation="nearest")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    _save(fig, path)


def plot_z_spacing(thickness_nm: np.ndarray, sd_nm: np.ndarray, nominal_nm: float, falloff: dict, path: Path,
                   true_thickness_nm: np.ndarray | None = None) -> None:
    """Estimated thickness per slice (with +-1 sd band) and the isotropy check: similarity
    against distance along z and in-plane, on one axis."""
    fig, (ax, iso) = plt.subplots(1, 2, figsize=(11, 3.2), gridspec_kw={"width_ratios": [3, 1]})
    z = np.arange(len(thickness_nm))
    ax.fill_between(z, thickness_nm - sd_nm, thickness_nm + sd_nm, color="tab:blue", alpha=0.2, lw=0)
    ax.plot(z, thickness_nm, lw=0.9, color="tab:blue", label="estimated")
    if true_thickness_nm is not None:
        ax.plot(z, true_thickness_nm, lw=0.8, color="k", alpha=0.7, label="ground truth")
    ax.axhline(nominal_nm, color="tab:gray", lw=0.8, ls="--", label="nominal step")
    ax.set_xlabel("slice (thickness: to the next slice)")
    ax.set_ylabel("nm")
    ax.set_title("Estimated slice thickness")
    ax.legend(fontsize=8)
    iso.plot(falloff["xy_nm"], falloff["xy_ncc"], "o-", ms=3, lw=0.9, label="in-plane")
    iso.plot(falloff["z_nm"], falloff["z_ncc"], "s-", ms=4, lw=0.9, label="along z")
    iso.set_xlabel("distance (nm)")
    iso.set_ylabel("similarity (NCC)")
    iso.set_title("Isotropy check")
    iso.legend(fontsize=8)
    fig.tight_layout()
    _save(fig, path)


def plot_field_metrics(rms_px: np.ndarray, max_px: np.ndarray, statuses: list[str], path: Path,
                       pixel_nm: float | None = None) -> None:
    """RMS and largest magnitude of each slice's displacement field along z (0: no field).

    Parameters
    ----------
    rms_px, max_px : (n,) arrays
        Per slice, in raw pixels; NaN or 0 where a slice has no field.
    statuses : list of str
        Per-slice status, for the flag marks.
    path : Path
        The PNG to write.
    pixel_nm : float, optional
        Pixel size: adds an axis in nm on the right.
    """
    rms = np.nan_to_num(np.asarray(rms_px, np.float64))
    big = np.nan_to_num(np.asarray(max_px, np.float64))
    z = np.arange(len(rms))
    has = big > 0
    fig, ax = plt.subplots(figsize=(9, 3.2))
    ax.plot(z, big, lw=0.8, color="tab:red", label="max")
    ax.plot(z, rms, lw=0.8, color="tab:blue", label="RMS")
    ax.plot(z[has], big[has], "o", ms=3, color="tab:red")
    ax.plot(z[has], rms[has], "o", ms=3, color="tab:blue")
    ax.set_ylim(bottom=0, top=max(1.0, float(big.max(initial=0.0))) * 1.1)
    ax.set_xlim(-0.5, max(len(rms) - 0.5, 0.5))
    ax.set_ylabel("local field (px)")
    ax.set_xlabel("slice")
    ax.set_title("Local correction (elastic field) per slice; 0: the affine alone")
    ax.legend(fontsize=8, loc="upper right")
    if pixel_nm:
        ax.secondary_yaxis("right", functions=(lambda v: v * pixel_nm, lambda v: v / pixel_nm)).set_ylabel("nm")
    _mark_flags(ax, statuses)
    fig.tight_layout()
    _save(fig, path)


def plot_field_map(values: np.ndarray, grid, canvas_shape_yx: tuple[int, int], path: Path, title: str = "",
                   max_side: int = 800, max_arrows: int = 40) -> None:
    """One slice's displacement field on the output canvas: its magnitude in colour (colour
    bar in px) and arrows at the grid nodes (direction of the field; lengths enlarged).

    Parameters
    ----------
    values : (gh, gw, 2) array
        Displacement (dx, dy) in raw pixels at the nodes.
    grid : amst.field.FieldGrid
        Where the nodes lie.
    canvas_shape_yx : (int, int)
        The output canvas.
    path : Path
        The PNG to write.
    title : str
    max_side : int
        The magnitude is evaluated on at most this many pixels along the longer side.
    max_arrows : int
        At most this many arrows along each axis (every k-th node beyond).
    """
    from ..field import FieldGrid, dense_field

    h, w = (int(v) for v in canvas_shape_yx)
    step = max(1, int(np.ceil(max(h, w) / max_side)))
    # Sampling every `step` px is the dense field of a grid `step` times finer in pixel units.
    coarse = FieldGrid(grid.spacing_px / step, grid.shape_yx)
    d = dense_field(values, coarse, (int(np.ceil(h / step)), int(np.ceil(w / step))))
    mag = np.linalg.norm(d, axis=-1)
    fig_w = 7.5
    fig, ax = plt.subplots(figsize=(fig_w, max(2.5, min(9, fig_w * h / max(w, 1)))))
    im = ax.imshow(mag, cmap="magma", extent=(0, w, h, 0), interpolation="bilinear", vmin=0,
                   vmax=max(float(mag.max()), 1e-6))
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04).set_label("field magnitude (px)")
    nodes = grid.nodes_xy()
    gh, gw = grid.shape_yx
    sy, sx = max(1, int(np.ceil(gh / max_arrows))), max(1, int(np.ceil(gw / max_arrows)))
    v = np.asarray(values, np.float64)[::sy, ::sx]
    p = nodes[::sy, ::sx]
    inside = (p[..., 0] <= w - 1 + 1e-9) & (p[..., 1] <= h - 1 + 1e-9)
    longest = float(np.linalg.norm(v, axis=-1).max(initial=0.0))
    if longest > 0:
        # Arrows in the image's own axes (y down), as the field is given; the longest spans
        # 0.9 of the spacing between the arrows shown.
        scale = longest / (0.9 * grid.spacing_px * min(sx, sy))
        ax.quiver(p[..., 0][inside], p[..., 1][inside], v[..., 0][inside], v[..., 1][inside], color="cyan",
                  angles="xy", scale_units="xy", scale=scale, pivot="tail", width=0.004)
    ax.set_xlim(0, w)
    ax.set_ylim(h, 0)
    ax.set_xlabel("x (px)")
    ax.set_ylabel("y (px)")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    _save(fig, path)


def _save(fig: plt.Figure, path: Path) -> None:
    """Write ``fig`` as a PNG at ``path`` whole or not at all (the report is written after the
    run is complete; a crash must not leave a torn image), and close it."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue(), sync=False)
