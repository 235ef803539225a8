"""Bounded parallel maps: results come back in order with a fixed number in flight."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterable, Iterator, TypeVar

T = TypeVar("T")
R = TypeVar("R")


def default_workers(workers: int | None = None) -> int:
    """``workers`` if given, else the cores this process may use."""
    if workers:
        return max(1, int(workers))
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not on Linux
        return os.cpu_count() or 1


def ordered_map(fn: Callable[[T], R], items: Iterable[T], workers: int, in_flight: int | None = None) -> Iterator[R]:
    """Map ``fn`` over ``items`` in order with at most ``in_flight`` tasks pending.

    Threads are the default: the heavy work (OpenCV, FFTs, TIFF decoding) releases the GIL,
    and nothing is pickled. Memory stays bounded by ``in_flight`` results.
    """
    if workers <= 1:
        yield from map(fn, items)
        return
    limit = in_flight or 2 * workers
    pool = ThreadPoolExecutor(workers)
    try:
        pending = []
        for item in items:
            pending.append(pool.submit(fn, item))
            if len(pending) >= limit:
                yield pending.pop(0).result()
        for fut in pending:
            yield fut.result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
