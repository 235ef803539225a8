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
