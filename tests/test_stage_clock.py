"""Every core-second of a run belongs to a printed stage (amst.pipeline.clock)."""

import time

import pytest

import amst
from amst.pipeline.clock import StageClock
from amst.pipeline.records import STAGES


def test_a_stage_that_holds_every_core_counts_wall_times_cores():
    clock = StageClock(cores=3)
    with clock.main("combine"):
        time.sleep(0.05)
    assert 0.15 <= clock.seconds["combine"] < 0.3
    assert clock.seconds["idle"] == 0.0


def test_workers_time_not_reported_as_work_is_idle():
    clock = StageClock(cores=2)
    with clock.workers():
        time.sleep(0.1)                       # 0.2 core-s held
        clock.add({"register": 0.05, "read": 0.01})
    assert clock.seconds["register"] == 0.05 and clock.seconds["read"] == 0.01
    assert clock.seconds["idle"] == pytest.approx(0.2 - 0.06, abs=0.04)
    assert sum(clock.seconds.values()) == pytest.approx(0.2, abs=0.04)
    assert list(clock.per_slice(4)) == list(STAGES)


@pytest.mark.parametrize("workers", [1, 2])
def test_the_stages_of_a_run_add_up_to_its_wall_time_times_its_cores(small_synth, tmp_path, workers):
    t0 = time.perf_counter()
    res = amst.align(small_synth / "raw", tmp_path / "out", backend="fast", workers=workers, progress=False)
    held = (time.perf_counter() - t0) * workers
    n = len(res.statuses)
    stages = res.timings_per_slice
    for stage in ("setup", "prealign", "read", "template", "register", "warp", "write"):
        assert stages[stage] > 0, stage
    total = sum(stages.values()) * n
    assert 0.8 * held <= total <= 1.02 * held, (total, held, stages)
    assert res.transforms.extra["timings_per_slice_s"]["register"] == stages["register"]
