"""Step 1, pre-alignment by translations, as a run does it: computed once and saved in the
run's state, so that a resumed run does not redo it."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ..config import RunConfig
from ..parallel import ordered_map
from ..prealign import prealign, to_transforms
from ..prealign.xcorr import PhaseCorrelation
from ..stack import Stack
from ..transform import translation
from ..transforms_io import SliceTransform, Transforms, load_transforms

log = logging.getLogger("amst")


def run_prealignment(stack: Stack, prealigned_stack: Stack | None, cfg: RunConfig, *, saved: Path, resuming: bool,
                     workers: int, progress: bool) -> tuple[Transforms, float]:
    """The run's pre-alignment and the seconds this call spent on it: read back from ``saved``
    when resuming, else measured (by ``cfg.prealign``, or against the ``--prealigned`` stack)
    and saved there (with the seconds it took, ``prealign_seconds``)."""
    t0 = time.perf_counter()
    if resuming and saved.exists():
        pre_tf = load_transforms(saved)
        seconds = time.perf_counter() - t0
    else:
        if prealigned_stack is not None:
            pre_tf = _from_prealigned_stack(stack, prealigned_stack, workers)
        else:
            with tqdm(total=len(stack), desc="prealign", unit="slice", disable=not progress) as bar:
                pre_tf = to_transforms(stack, prealign(stack, cfg.prealign, workers, bar.update), cfg.prealign.canvas)
        seconds = time.perf_counter() - t0
        pre_tf.extra["prealign_seconds"] = seconds
        pre_tf.save(saved)
    method = pre_tf.extra.get("prealign_info", {}).get("method", cfg.prealign.method)
    log.info("pre-alignment (%s): canvas %dx%d, %d slice(s) not ok", method, *pre_tf.canvas_shape_yx,
             sum(s.status != "ok" for s in pre_tf.slices))
    return pre_tf, seconds


def _from_prealigned_stack(stack: Stack, prealigned: Stack, workers: int) -> Transforms:
    """Pre-alignment taken from a stack aligned elsewhere: its canvas, and the translation
    from each of its slices to the same raw slice."""
    pc = PhaseCorrelation()

    def on_canvas(image: np.ndarray) -> np.ndarray:
        # Raw pixel (x, y) stays at (x, y): pad or crop at the bottom/right only.
        out = np.zeros(prealigned.shape[1:], np.float32)
        h, w = min(out.shape[0], image.shape[0]), min(out.shape[1], image.shape[1])
        out[:h, :w] = image[:h, :w]
        return out

    def one(z: int):
        return pc.match(pc.describe(prealigned.read(z)), pc.describe(on_canvas(stack.read(z))))

    measured = list(ordered_map(one, range(len(stack)), workers))
    shifts = np.array([m.shift_xy for m in measured], float)
    ok = np.array([m.ok for m in measured])
    if not ok.any():
        raise ValueError(f"--prealigned {prealigned.path}: no slice could be matched to its raw slice; "
                         "is it the same data as the input?")
    # A failed measurement says nothing about its slice: take the neighbours' shift, as prealign() does.
    idx = np.flatnonzero(ok)
    filled = np.stack([np.interp(np.arange(len(stack)), idx, shifts[idx, a]) for a in (0, 1)], axis=1)
    slices = []
    for z, m in enumerate(measured):
        t = translation(*filled[z])
        slices.append(SliceTransform(z, stack.slice_name(z), t, t.copy(), "ok" if m.ok else "failed",
                                     {"prealign_confidence": m.confidence}))
    return Transforms(prealigned.shape[1:], slices, stack.voxel_size,
                      {"prealign_info": {"method": "prealigned", "path": str(prealigned.path)}})

