"""Where a run's blocks execute: this process, a local process pool, or a Dask cluster.

The process-wide settings each place needs (one library thread per worker, Ctrl-C left to
the main process, workers that die with it) live here, next to the pools that need them.
"""

from __future__ import annotations

import importlib
import os
import time
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from multiprocessing import get_context
from typing import Any, Callable, Iterator

from .config import RunConfig


def single_threaded_libraries() -> None:
    """Limit OpenCV and BLAS to one thread in this process, and leave it so.

    The limits are process-wide. Setting them and restoring them around each block raced
    when a Dask worker ran two blocks on two threads (one block's restore let the other
    run multi-threaded, in another summation order); setting them once and never
    restoring is the same for every thread. :func:`in_process_limits` restores them for
    a run computed in the caller's own process.
    """
    import cv2
    from threadpoolctl import threadpool_limits

    cv2.setNumThreads(1)
    threadpool_limits(1)


@contextmanager
def in_process_limits() -> Iterator[None]:
    """Single-threaded libraries for a run computed in this process, restored afterwards."""
    import cv2
    from threadpoolctl import ThreadpoolController

    threads = cv2.getNumThreads()
    controller = ThreadpoolController()
    with controller.limit(limits=1):
        cv2.setNumThreads(1)
        try:
            yield
        finally:
            cv2.setNumThreads(threads)


def make_executor(cfg: RunConfig, workers: int, preload: str = "amst") -> tuple[Any, Callable[..., None]]:
    """A process pool on this machine, an existing Dask scheduler, or a SLURM cluster.

    A local pool's workers start at once and import the module ``preload`` (what the first
    task needs), so that their start overlaps with what the caller does next.
    """
    if cfg.execution.scheduler:
        from distributed import Client

        try:
            client = Client(cfg.execution.scheduler, timeout="20s")
        except (OSError, TimeoutError, ValueError) as exc:
            raise ValueError(f"--scheduler {cfg.execution.scheduler}: cannot reach the Dask scheduler ({exc}); "
                             "check the address and that the scheduler is running") from exc
        return client, lambda abort=False: client.close()
    if cfg.execution.cluster == "slurm":
        try:
            from dask_jobqueue import SLURMCluster
        except ImportError as exc:
            raise ValueError("execution.cluster: slurm needs dask-jobqueue (pip install 'amst[slurm]')") from exc
        from distributed import Client

        options = dict(cfg.execution.slurm)
        jobs = int(options.pop("jobs", 1))
        cluster = SLURMCluster(**options)
        cluster.scale(jobs=jobs)
        client = Client(cluster)

        def close(abort: bool = False) -> None:
            client.close()
            cluster.close()

        return client, close
    if workers <= 1:
        return None, lambda abort=False: None
    pool = ProcessPoolExecutor(workers, mp_context=get_context("spawn"), initializer=_worker_init,
                               initargs=(os.getpid(),))

    def close(abort: bool = False) -> None:
        if abort:
            # Ctrl-C: a running block may take a minute (elastix); its slices are journaled only
            # once written, so stopping the workers now loses nothing. The pool has no public
            # way to stop running tasks, hence its process table.
            processes = list(getattr(pool, "_processes", {}).values())
            for process in processes:
                process.terminate()
            for process in processes:
                process.join()
        pool.shutdown(wait=True, cancel_futures=True)

    try:
        with sigint_ignored():  # the workers start now and import while the run sets up and pre-aligns
            for _ in range(workers):
                pool.submit(_preload, preload)
    except KeyboardInterrupt:
        close(abort=True)
        raise
    return pool, close


def _preload(module: str) -> None:
    importlib.import_module(module)


def _worker_init(parent_pid: int) -> None:
    """Start of each local worker process: die with the parent, leave Ctrl-C to the parent,
    one library thread (:func:`single_threaded_libraries`).

    A SIGKILLed ``amst run`` cannot shut its pool down; without this its workers stayed
    alive. On Linux the kernel kills the worker when its parent dies (PR_SET_PDEATHSIG);
    elsewhere a daemon thread polls the parent's pid.
    """
    import signal
    import threading

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGKILL)
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(1)
    single_threaded_libraries()

    def watch() -> None:
        while True:
            time.sleep(2.0)
            if os.getppid() != parent_pid:
                os._exit(1)

    threading.Thread(target=watch, daemon=True, name="amst-parent-watch").start()


@contextmanager
def sigint_deferred() -> Iterator[None]:
    """A Ctrl-C during the block reaches this process when the block ends, not inside it (for
    steps that must not be left half-done, such as claiming the output folder).

    SIGINT is blocked in this thread; Linux keeps a blocked signal pending, even while its
    action is to ignore it (:func:`sigint_ignored`), and delivers it on unblocking.
    """
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)


@contextmanager
def sigint_ignored() -> Iterator[None]:
    """Worker processes started inside ignore Ctrl-C from their first instruction (they inherit
    the ignored SIGINT); a Ctrl-C meanwhile reaches this process when the block ends
    (:func:`sigint_deferred`: a Ctrl-C while a run submitted its blocks used to be lost).
    """
    import signal
    import threading

    with sigint_deferred():
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            yield
        finally:
            signal.signal(signal.SIGINT, previous)
