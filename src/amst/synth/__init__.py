"""Synthetic FIB-SEM stacks with exact ground truth (``amst synth``).

A raw slice ``z`` is the content sampled through the slice's ground-truth map
``G_z`` (raw pixel -> volume pixel, the affine convention of DESIGN.md), plus curtaining,
flicker and noise. The content is the phantom, or (``volume``, ``--from-volume``) a real
aligned stack (:mod:`amst.synth.volume`); both are continuous functions of volume
position, so ``G_z`` is exact.
"""

from __future__ import annotations

import functools
import json
import os
import pickle
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from ..imageops import saturate
from ..outdir import OwnedEntry, atomic_write_text, claim_output, mark_complete
from ..stack import StackError, VoxelSize, create_writer
from ..transform import to_list
from .milling import MillingParams, slice_depths
from .acquisition import (AcquisitionParams, Curtains, SliceAcquisition, add_noise, autofocus_runs,
                          simulate_acquisition)
from .local import LocalDistortion, raw_to_volume_points
from .phantom import Phantom, PhantomParams
from .volume import VolumeContent

__all__ = ["PRESETS", "SynthConfig", "synthesize", "load_ground_truth", "ground_truth_points", "Phantom",
           "AcquisitionParams", "LocalDistortion"]

_NO_ARTEFACTS = dict(dose=0.0, read_noise=0.0, flicker_gain=0.0, flicker_offset=0.0, curtains_per_1000px=0.0)

PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "fibsem-marks": {"phantom": {"marks": True}, "acquisition": {}},
    "fibsem-nomarks": {"phantom": {"marks": False}, "acquisition": {}},
    # Distortions only (no noise, flicker, curtains): for exactness checks.
    "ideal": {"phantom": {"marks": True}, "acquisition": _NO_ARTEFACTS},
    # Every auto-focus event also displaces an irradiated region locally (amst.synth.local).
    "fibsem-elastic": {"phantom": {"marks": True}, "acquisition": {"local_probability": 1.0}},
}

_DTYPE_RANGE = {"uint8": (15.0, 220.0), "uint16": (4000.0, 56000.0), "float32": (0.0, 1.0)}


@dataclass
class SynthConfig:
    """Everything that defines a synthetic stack; the same config gives the same bytes."""

    shape: tuple[int, int, int] = (100, 1024, 1024)
    preset: str = "fibsem-marks"
    seed: int = 0
    dtype: str = "uint8"
    voxel_size: VoxelSize = VoxelSize(8.0, 5.0, 5.0)
    marks: bool | None = None
    texture: str | None = None
    warp_z_scale: float | None = None  # None: the phantom's default (see PhantomParams)
    autofocus_at: tuple[int, ...] = ()  # extra auto-focus events at these slices (AcquisitionParams)
    volume: str | None = None  # an aligned real stack as the content instead of the phantom
    cap_height: float | None = None  # fraction of the field height under the platinum cap (None: 0.15)
    z_variation: MillingParams | None = None  # uneven slice thickness (None: every slice one step deep)

    def phantom_params(self) -> PhantomParams:
        params = PhantomParams(**PRESETS[self.preset]["phantom"])
        if self.marks is not None:
            params.marks = self.marks
        if self.warp_z_scale is not None:
            params.warp_z_scale = float(self.warp_z_scale)
        if self.cap_height is not None:
            params.cap_height = float(self.cap_height)
        if self.texture:
            params.texture_image = _load_texture(self.texture)
        return params

    def acquisition_params(self) -> AcquisitionParams:
        params = AcquisitionParams(**PRESETS[self.preset]["acquisition"])
        params.autofocus_at = tuple(int(z) for z in self.autofocus_at)
        return params

    @property
    def z_step(self) -> float:
        """Volume depth between slices in isotropic (xy) pixels."""
        return self.voxel_size.z / self.voxel_size.x

    def depths(self) -> np.ndarray:
        """True depth of each slice in isotropic (xy) pixels, slice 0 at 0."""
        if self.z_variation is None:
            return np.arange(self.shape[0]) * self.z_step
        return slice_depths(self.shape[0], self.z_step, self.z_variation, self.seed)[0]

    @property
    def marks_on(self) -> bool:
        """Whether the stack carries FIB-etched marks (the preset's, unless ``marks`` says)."""
        return self.phantom_params().marks if self.marks is None else bool(self.marks)

    def phantom(self) -> Phantom | VolumeContent:
        """The content this config samples, covering the whole stack depth: the phantom, or
        the real volume of ``volume``."""
        n, h, w = self.shape
        if self.volume:
            return VolumeContent(self.volume, self.shape, self.z_step, marks=self.marks_on, seed=self.seed,
                                 cap_height=PhantomParams().cap_height if self.cap_height is None else self.cap_height,
                                 last_depth=None if self.z_variation is None else float(self.depths()[-1]))
        return Phantom((n * self.z_step, float(h), float(w)), self.seed, self.phantom_params())

    @classmethod
    def from_ground_truth(cls, doc: dict[str, Any]) -> "SynthConfig":
        """The config that wrote a ``ground_truth.json`` (as :func:`load_ground_truth` returns it).

        Files written before the phantom was recorded get the preset's phantom defaults.
        """
        phantom = doc.get("phantom", {})
        volume = doc.get("volume", {})
        return cls(shape=tuple(doc["shape_zyx"]), preset=doc["preset"], seed=doc["seed"], dtype=doc["dtype"],
                   voxel_size=VoxelSize.from_dict(doc["voxel_size"]), marks=volume.get("marks", phantom.get("marks")),
                   texture=phantom.get("texture"), warp_z_scale=phantom.get("warp_z_scale"),
                   autofocus_at=tuple(doc.get("acquisition", {}).get("autofocus_at", ())), volume=volume.get("path"),
                   cap_height=doc.get("cap_height"),
                   z_variation=MillingParams(**doc["z_variation"]) if doc.get("z_variation") else None)


def _load_texture(path: str) -> np.ndarray:
    from ..stack import open_stack

    if path.lower().endswith((".png", ".bmp", ".jpg")):
        import cv2

        img = cv2.imread(path, cv2.IMREAD_GRAYSCALE)
        if img is None:
            raise StackError(f"{path}: cannot read texture image")
    else:
        img = open_stack(path).read(0)
    return img.astype(np.float32)


class _Renderer:
    """Renders the slices of one config (the phantom is built once, in the constructor)."""

    def __init__(self, cfg: SynthConfig):
        self.cfg = cfg
        self.phantom = cfg.phantom()
        self.extent = self.phantom.extent
        self.params = cfg.acquisition_params()
        self.curtains = Curtains(self.extent, self.params, cfg.seed, self.phantom.cap_y)
        self.depths = cfg.depths()

    def clean(self, z: int, raw_to_volume: np.ndarray, local: LocalDistortion | None = None) -> np.ndarray:
        return self.phantom.render(raw_to_volume, float(self.depths[z]), self.cfg.shape[1:], local)

    def raw(self, z: int, acq: SliceAcquisition) -> np.ndarray:
        img = self.clean(z, acq.raw_to_volume, acq.local)
        if self.params.curtains_per_1000px > 0:
            h, w = self.cfg.shape[1:]
            gy, gx = np.mgrid[0:h, 0:w].astype(np.float32)
            m = acq.raw_to_volume
            x, y = m[0, 0] * gx + m[0, 1] * gy + m[0, 2], m[1, 0] * gx + m[1, 1] * gy + m[1, 2]
            if acq.local is not None:  # curtains are fixed to the sample: they move with it
                dx, dy = acq.local.displacement(gx, gy)
                x, y = x + dx, y + dy
            img *= self.curtains.factor(x, y, float(self.depths[z]))
        img = add_noise(img, self.params, np.random.default_rng([self.cfg.seed, 3, z]))
        return acq.gain * img + acq.offset


def to_dtype(img: np.ndarray, dtype: str) -> np.ndarray:
    """Map phantom intensities (about 0..1) to the output dtype's range."""
    lo, span = _DTYPE_RANGE[dtype]
    out = img * span + lo
    if dtype == "float32":
        return out.astype(np.float32)
    return saturate(out, dtype)


@functools.lru_cache(maxsize=1)
def _pool_renderer(config: bytes) -> _Renderer:
    """The renderer of the pickled :class:`SynthConfig` ``config``, built once per pool process
    (the phantom is expensive) and reused for every slice that process renders."""
    return _Renderer(pickle.loads(config))


def _work(config: bytes, job: tuple[int, SliceAcquisition, bool]) -> tuple[int, np.ndarray, np.ndarray | None]:
    """One pool task: slice ``job`` of the pickled config ``config``."""
    return _render(_pool_renderer(config), job)


def _render(renderer: _Renderer, job: tuple[int, SliceAcquisition, bool]) -> tuple[int, np.ndarray, np.ndarray | None]:
    z, acq, want_clean = job
    raw = to_dtype(renderer.raw(z, acq), renderer.cfg.dtype)
    clean = None
    if want_clean:
        clean = to_dtype(renderer.clean(z, np.array([[1.0, 0, 0], [0, 1.0, 0]])), renderer.cfg.dtype)
    return z, raw, clean


def _rendered(cfg: SynthConfig, jobs: list, workers: int) -> Iterator:
    """Render ``jobs`` in order, in this process or in a pool with at most ``2 * workers`` results in flight.

    Each task carries the pickled config; a pool process builds the phantom from it once
    (:func:`_pool_renderer`). This process builds its own renderer and caches nothing.
    """
    if workers <= 1:
        renderer = _Renderer(cfg)
        yield from (_render(renderer, job) for job in jobs)
        return
    config = pickle.dumps(cfg)
    with ProcessPoolExecutor(workers) as pool:
        pending = []
        for job in jobs:
            pending.append(pool.submit(_work, config, job))
            if len(pending) >= 2 * workers:
                yield pending.pop(0).result()
        for fut in pending:
            yield fut.result()


def synthesize(out: str | Path, cfg: SynthConfig, *, out_format: str = "tiff", write_clean: bool = False,
               workers: int | None = None, progress: Callable[[int], None] | None = None,
               overwrite: bool = False) -> dict[str, Any]:
    """Write a synthetic raw stack, ``ground_truth.json`` and optionally the clean volume.

    Parameters
    ----------
    out : path
        Output folder; holds ``raw/`` (or ``raw.zarr``), ``ground_truth.json`` and
        ``clean/`` (or ``clean.zarr``).
    cfg : SynthConfig
    out_format : {"tiff", "zarr"}
    write_clean : bool
        Also write the undistorted, noise-free volume (the ground-truth frame).
    workers : int, optional
        Processes to use; default all cores.
    progress : callable, optional
        Called with 1 after each slice.
    overwrite : bool
        Replace an earlier synthetic dataset in ``out`` (only the files ``amst synth``
        wrote there). Any other non-empty ``out`` is refused.

    Returns
    -------
    dict
        The ground-truth document that was written.
    """
    if cfg.preset not in PRESETS:
        raise ValueError(f"unknown preset {cfg.preset!r}; choose one of {', '.join(PRESETS)}")
    if cfg.volume and cfg.texture:
        raise ValueError("--texture paints the phantom's cytoplasm; it cannot be combined with --from-volume")
    if cfg.cap_height is not None and not 0.02 <= cfg.cap_height <= 0.5:
        raise ValueError(f"cap_height: {cfg.cap_height} must be between 0.02 and 0.5 (a fraction of the field height)")
    if cfg.dtype not in _DTYPE_RANGE:
        raise ValueError(f"unknown dtype {cfg.dtype!r}; choose one of {', '.join(_DTYPE_RANGE)}")
    if out_format not in ("tiff", "zarr"):
        raise ValueError(f"unknown out_format {out_format!r}; use tiff or zarr")
    out = Path(out)
    n, h, w = cfg.shape
    autofocus_runs(cfg.autofocus_at, n)  # refuses slices outside the stack before OUT is touched
    content = cfg.phantom()  # a --from-volume that cannot serve this shape is refused here too
    suffix = ".zarr" if out_format == "zarr" else ""
    names = [f"slice_{z:05d}.tif" for z in range(n)]
    kind = "zarr" if out_format == "zarr" else "tiff"
    ownership = claim_output(out, kind="synth", overwrite=overwrite,
                             protected={"the texture image": cfg.texture, "the --from-volume stack": cfg.volume},
                             entries=[OwnedEntry(f"raw{suffix}", kind, tuple(names) if kind == "tiff" else ("0",)),
                                      OwnedEntry(f"clean{suffix}", kind, tuple(names) if kind == "tiff" else ("0",)),
                                      OwnedEntry("ground_truth.json", "file")])
    acq = simulate_acquisition(n, (h, w), cfg.acquisition_params(), cfg.seed)
    raw_writer = create_writer(out / f"raw{suffix}", out_format, cfg.shape, cfg.dtype, cfg.voxel_size, names=names)
    clean_writer = None
    if write_clean:
        clean_writer = create_writer(out / f"clean{suffix}", out_format, cfg.shape, cfg.dtype, cfg.voxel_size,
                                     names=names)
    jobs = [(z, acq[z], write_clean) for z in range(n)]
    for z, raw, clean in _rendered(cfg, jobs, workers or os.cpu_count() or 1):
        raw_writer.write(z, raw)
        if clean_writer is not None:
            clean_writer.write(z, clean)
        if progress:
            progress(1)
    doc = ground_truth_document(cfg, acq, names, content)
    atomic_write_text(out / "ground_truth.json", json.dumps(doc, indent=1))
    mark_complete(out, ownership)
    return doc


def ground_truth_document(cfg: SynthConfig, acq: list[SliceAcquisition], names: list[str],
                          phantom: Phantom | VolumeContent) -> dict[str, Any]:
    """The ``ground_truth.json`` contents (maps raw pixel -> volume pixel per slice; with uneven
    milling also each slice's true depth ``z_nm``, slice 0 at 0, and the slices ``z_events``
    whose thickness is an abrupt event)."""
    depths_nm = cfg.depths() * cfg.voxel_size.x

    def depth_of(z: int) -> dict[str, float]:
        return {"z_nm": float(depths_nm[z])} if cfg.z_variation is not None else {}

    marks_roi = None
    if phantom.marks:
        xs = [v for m in phantom.marks for v in (m[0], m[2])]
        ys = [v for m in phantom.marks for v in (m[1], m[3])]
        marks_roi = [float(min(xs)) - 8, float(min(ys)) - 8, float(max(xs) - min(xs)) + 16,
                     float(max(ys) - min(ys)) + 16]
    if isinstance(phantom, VolumeContent):
        content = {"volume": {"path": phantom.path, "marks": phantom.has_cap,
                              "source_shape_zyx": list(phantom.source.shape), "source_step_px": phantom.source_step,
                              "offset_xy": list(phantom.offset_xy)}}
    else:
        content = {"phantom": {"marks": phantom.params.marks, "warp_z_scale": phantom.params.warp_z_scale,
                               "texture": cfg.texture}}
    return {
        "format": "amst-ground-truth",
        "version": 1,
        "convention": "raw_xy_to_volume_xy",
        "shape_zyx": list(cfg.shape),
        "dtype": cfg.dtype,
        "voxel_size": cfg.voxel_size.to_dict(),
        "preset": cfg.preset,
        "seed": cfg.seed,
        "z_step_px": cfg.z_step,
        "acquisition": cfg.acquisition_params().to_dict(),
        **content,
        "marks_roi_xywh": marks_roi,
        **({"cap_height": cfg.cap_height} if cfg.cap_height is not None else {}),
        **_milling_record(cfg),
        "slices": [
            {"index": z, "name": names[z], "map": to_list(a.raw_to_volume), "events": a.events,
             "gain": a.gain, "offset": a.offset, **depth_of(z),
             **({"local": a.local.to_json()} if a.local is not None else {})}
            for z, a in enumerate(acq)
        ],
    }


def _milling_record(cfg: SynthConfig) -> dict[str, Any]:
    """The ``z_variation`` entry of ``ground_truth.json`` (nothing for evenly milled stacks)."""
    if cfg.z_variation is None:
        return {}
    _, events = slice_depths(cfg.shape[0], cfg.z_step, cfg.z_variation, cfg.seed)
    return {"z_variation": cfg.z_variation.to_dict(), "z_events": [int(z) for z in events]}


def load_ground_truth(path: str | Path) -> dict[str, Any]:
    """Read ``ground_truth.json`` and return it with ``maps`` as an (n, 2, 3) array and
    ``local`` as a list of each slice's :class:`~amst.synth.local.LocalDistortion` or None."""
    doc = json.loads(Path(path).read_text())
    if doc.get("format") != "amst-ground-truth":
        raise ValueError(f"{path}: not an amst ground-truth file (format={doc.get('format')!r})")
    doc["maps"] = np.array([s["map"] for s in doc["slices"]], dtype=np.float64)
    try:
        doc["local"] = [LocalDistortion.from_json(s["local"]) if "local" in s else None for s in doc["slices"]]
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"{path}: a slice's 'local' entry is not a local distortion this amst reads ({exc})") from exc
    return doc


def ground_truth_points(doc: dict[str, Any], z: int, raw_xy: np.ndarray) -> np.ndarray:
    """The exact volume positions (n, 2) that raw pixels ``raw_xy`` (n, 2) of slice ``z`` show.

    Parameters
    ----------
    doc : dict
        As :func:`load_ground_truth` returns it.
    z : int
    raw_xy : (n, 2) array
        Raw pixel positions (x, y).
    """
    local = doc["local"][z] if "local" in doc else None
    return raw_to_volume_points(doc["maps"][z], local, raw_xy)

