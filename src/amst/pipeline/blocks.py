"""Work cut into blocks of consecutive slices, and mapped over the run's executor."""

from __future__ import annotations

from concurrent.futures import as_completed
from typing import Any, Callable, Iterator, TypeVar

import numpy as np

from ..executors import in_process_limits, sigint_ignored, single_threaded_libraries

J = TypeVar("J")
R = TypeVar("R")


def block_size(todo: int, workers: int, configured: int | None) -> int:
    """Slices per block: ``configured``, else two blocks per worker, between 8 and 64 slices."""
    return configured or int(np.clip(np.ceil(todo / (2 * workers)), 8, 64))


def blocks(todo: list[int], size: int) -> list[tuple[int, int]]:
    """Runs of consecutive slice indices, cut into blocks of at most ``size``."""
    out: list[tuple[int, int]] = []
    for z in todo:
        if out and out[-1][1] == z and out[-1][1] - out[-1][0] < size:
            out[-1] = (out[-1][0], z + 1)
        else:
            out.append((z, z + 1))
    return out


def map_blocks(executor: Any, fn: Callable[[J, int, int], list[R]], job: J,
               ranges: list[tuple[int, int]]) -> Iterator[list[R]]:
    """``fn(job, first, last)`` for every ``(first, last)`` of ``ranges`` on the executor (None:
    this process; a ``concurrent.futures`` pool; a ``dask.distributed`` Client); results as
    they complete.

    BLAS and OpenCV run one thread per worker everywhere: parallelism is across slices, and
    sums then come out in the same order whatever the executor, so a Dask run gives
    bit-identical results to a local one.
    """
    if executor is None:
        with in_process_limits():
            for a, b in ranges:
                yield fn(job, a, b)
        return
    if hasattr(executor, "scatter"):  # a dask.distributed Client
        from distributed import as_completed as dask_completed

        job_future = executor.scatter(job, broadcast=True)
        futures = [executor.submit(_one_thread, fn, job_future, a, b, pure=False) for a, b in ranges]
        for fut in dask_completed(futures):
            yield fut.result()
        return
    with sigint_ignored():  # workers start while submitting: they inherit the ignored SIGINT
        futures = [executor.submit(fn, job, a, b) for a, b in ranges]
    for fut in as_completed(futures):
        yield fut.result()


def _one_thread(fn: Callable[[J, int, int], list[R]], job: J, first: int, last: int) -> list[R]:
    """``fn`` on a Dask worker with one library thread (a local pool's workers are set so when
    they start, :func:`amst.executors.make_executor`)."""
    single_threaded_libraries()
    return fn(job, first, last)
