from __future__ import annotations

from pathlib import Path

import pytest

from amst.stack import VoxelSize
from amst.synth import SynthConfig, synthesize

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="session")
def small_synth(tmp_path_factory) -> Path:
    """A small synthetic stack with marks (distortions, noise, flicker) and its clean volume."""
    out = tmp_path_factory.mktemp("synth") / "marks"
    synthesize(out, SynthConfig(shape=(24, 256, 320), seed=3), write_clean=True, workers=1)
    return out


def shared_data(*parts: str) -> Path:
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"shared data not present: {path}")
    return path


VS = VoxelSize(8.0, 5.0, 5.0)


def noise_tiff_folder(folder: Path, count: int, shape_yx: tuple[int, int], seed: int = 0) -> Path:
    """A folder of ``count`` uint8 noise TIFFs (no voxel size in them), ``s_000.tif`` ..."""
    import numpy as np
    import tifffile

    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for z in range(count):
        tifffile.imwrite(folder / f"s_{z:03d}.tif", rng.integers(0, 255, shape_yx, dtype=np.uint8))
    return folder
