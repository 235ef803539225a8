"""Where a run's time goes: core seconds per stage, so that the stages add up to the run.

A run holds ``cores`` cores for its whole wall time. Work the workers time (reading,
registering, warping, ...) is counted as they report it. A stage the main process runs
alone (``setup``, ``combine``, ``finish``) holds every core while it runs, and so does a
stage it runs on a pool of threads (``prealign``, ``z_spacing``, ``even_z``): wall seconds
times ``cores``. In a stage the workers run, what the wall time times ``cores`` holds
beyond the work they report is ``idle`` (a pool starting, workers waiting for the last
block, scheduling, results coming back).
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator, Mapping

from .records import STAGES


@dataclass
class StageClock:
    """Core seconds per stage (:data:`~amst.pipeline.records.STAGES`) of one run on ``cores`` cores."""

    cores: int
    seconds: dict[str, float] = field(default_factory=lambda: dict.fromkeys(STAGES, 0.0))

    def add(self, timings: Mapping[str, float]) -> None:
        """Core seconds the workers measured, by stage."""
        for stage, value in timings.items():
            self.seconds[stage] = self.seconds.get(stage, 0.0) + value

    def held(self, stage: str, wall: float) -> None:
        """``wall`` seconds during which ``stage`` held every core."""
        self.seconds[stage] = self.seconds.get(stage, 0.0) + wall * self.cores

    @contextmanager
    def main(self, stage: str) -> Iterator[None]:
        """Time a stage that holds every core (the main process alone, or its thread pool)."""
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.held(stage, time.perf_counter() - t0)

    @contextmanager
    def workers(self) -> Iterator[None]:
        """Time a stage the workers run: what they do not report as work is ``idle``."""
        before = sum(self.seconds.values())
        t0 = time.perf_counter()
        try:
            yield
        finally:
            reported = sum(self.seconds.values()) - before
            self.seconds["idle"] += max(0.0, (time.perf_counter() - t0) * self.cores - reported)

    def per_slice(self, n: int) -> dict[str, float]:
        """Core seconds per slice, by stage, in the order of :data:`STAGES`."""
        return {k: v / n for k, v in self.seconds.items()}
