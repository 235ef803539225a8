"""``amst zspacing OUT``: the slice depths of a finished run, written into its ``transforms.json``."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from ..config import ZSpacingConfig, build_config
from ..outdir import read_ownership
from ..parallel import default_workers
from ..stack import open_stack
from ..transforms_io import load_transforms
from .stackwise import estimate_stack_depths, with_depths

__all__ = ["estimate_run_depths"]


def estimate_run_depths(out: Path, *, max_gap: int | None = None, calibration: str | None = None,
                        workers: int | None = None) -> dict[str, Any]:
    """Estimate the depths of the aligned slices of run ``out`` and record them.

    ``transforms.json`` is replaced atomically (amst wrote it; its affines are unchanged).
    The measurement's parameters are the run's ``z_spacing`` section (``config.yaml``),
    ``max_gap`` and ``calibration`` overriding it. A run that wrote an even-z output is
    refused: that output was built from its own depths.

    Returns
    -------
    dict
        The ``z_spacing`` record.

    Raises
    ------
    ValueError
        When ``out`` is not a finished ``amst run`` folder or its output is missing.
    """
    from tqdm import tqdm

    owner = read_ownership(out)
    if owner is None or owner.kind != "run" or not owner.complete or not (out / "transforms.json").is_file():
        raise ValueError(f"{out}: not a finished `amst run` output folder (no complete run marker and "
                         "transforms.json); run `amst run INPUT OUT` first")
    from .stackwise import EVEN_Z_OUTPUT

    even = [e.name for e in owner.entries if e.name in EVEN_Z_OUTPUT.values() and (out / e.name).exists()]
    if even:
        raise ValueError(f"{out} holds {even[0]}, written on the even z grid of the run's own depths; new depths would "
                         "not match it. Re-run `amst run` with the same arguments and the z_spacing options you want "
                         "(only the depths and the even-z output are recomputed)")
    section = build_config(out / "config.yaml").z_spacing if (out / "config.yaml").is_file() else ZSpacingConfig()
    tf = load_transforms(out / "transforms.json")
    name = tf.extra.get("output")
    if not name or not (out / name).exists():
        raise ValueError(f"{out}: the aligned stack {name!r} named in transforms.json is missing")
    aligned = open_stack(out / name)
    if len(aligned) != len(tf.slices):
        raise ValueError(f"{out / name} has {len(aligned)} slices, transforms.json {len(tf.slices)}; the depths are "
                         "measured on the run's own per-slice output")
    params = dataclasses.replace(section, **{k: v for k, v in (("max_gap", max_gap), ("calibration", calibration))
                                             if v is not None}).params()
    with tqdm(total=len(aligned), desc="z spacing", unit="slice") as bar:
        depths = estimate_stack_depths(aligned, tf.voxel_size or aligned.voxel_size, params,
                                       workers=default_workers(workers), progress=bar.update)
    with_depths(tf, depths).save(out / "transforms.json")
    if (out / "report").is_dir():
        from ..quality.report import build_report

        build_report(out)
    return depths.summary()
