"""The scheduler layer: connect to the scheduler a job names, and compute tasks as they finish.

The only module that imports ``distributed``.  ``run()`` never picks a scheduler: it calls
`compute_each`, which uses the active distributed client if there is one and dask's local
scheduler otherwise.
"""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import dask
from dask.callbacks import Callback

from pipeline.config import LOCAL_SCHEDULERS, DaskConfig
from pipeline.errors import ClusterError, ClusterUnreachable, ConfigError

log = logging.getLogger(__name__)


@dataclass
class Connection:
    """What the user should know about the scheduler in use."""

    scheduler: str
    dashboard: str | None = None
    n_workers: int | None = None


@contextlib.contextmanager
def connect(cfg: DaskConfig) -> Iterator[Connection]:
    """Make the job's scheduler the active one for the duration of the block.

    Raises
    ------
    ClusterUnreachable
        The scheduler address or file cannot be reached within ``cfg.timeout`` seconds.
    """
    with dask.config.set(cfg.config):
        if cfg.scheduler_file is None and cfg.scheduler in ("threads", "processes",
                                                             "synchronous"):
            with dask.config.set(scheduler=cfg.scheduler):
                yield Connection(cfg.scheduler)
            return
        if cfg.scheduler_file is None and cfg.scheduler == "local":
            with _local_cluster(cfg) as connection:
                yield connection
            return
        with _remote(cfg) as connection:
            yield connection


@contextlib.contextmanager
def _local_cluster(cfg: DaskConfig) -> Iterator[Connection]:
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=cfg.n_workers, threads_per_worker=cfg.threads_per_worker,
                      memory_limit=cfg.memory_limit, host="127.0.0.1",
                      dashboard_address="127.0.0.1:0", processes=True) as local, \
            Client(local) as client:
        yield Connection("local", client.dashboard_link, len(client.scheduler_info()["workers"]))


@contextlib.contextmanager
def _remote(cfg: DaskConfig) -> Iterator[Connection]:
    from distributed import Client

    where = cfg.scheduler_file or cfg.scheduler
    if cfg.scheduler_file and not os.path.isfile(cfg.scheduler_file):
        raise ConfigError(f"dask.scheduler_file: {cfg.scheduler_file!r} not found; start the "
                          "scheduler with --scheduler-file, or give its address")
    try:
        client = Client(scheduler_file=cfg.scheduler_file, timeout=cfg.timeout) \
            if cfg.scheduler_file else Client(cfg.scheduler, timeout=cfg.timeout)
    except (OSError, TimeoutError) as exc:
        raise ClusterUnreachable(f"cannot reach the dask scheduler at {where} within "
                                 f"{cfg.timeout:g} s ({type(exc).__name__}); start it, or fix "
                                 "dask.scheduler / --scheduler") from exc
    with client:
        info = client.scheduler_info()
        yield Connection(client.scheduler.address, client.dashboard_link,
                         len(info.get("workers", {})))


def _client() -> Any:
    """The active distributed client, or None when a local scheduler is in use."""
    if dask.config.get("scheduler", None) in LOCAL_SCHEDULERS:
        return None
    try:
        from distributed import default_client

        return default_client()
    except (ImportError, ValueError):
        return None


def tasks_run_here() -> bool:
    """Whether tasks run in this process (the threads or synchronous scheduler), so that what
    a task leaves in memory is there for later tasks."""
    return _client() is None and dask.config.get("scheduler", "threads") in ("threads",
                                                                           "synchronous")


def compute_each(tasks: list, on_done: Callable[[int, Any], None]) -> list:
    """Compute delayed ``tasks``, calling ``on_done(i, result)`` as each one finishes.

    Returns
    -------
    list
        The results, in the order of ``tasks``.

    Raises
    ------
    ClusterError
        The scheduler was lost while computing.
    """
    if not tasks:
        return []
    client = _client()
    if client is None:
        return _compute_local(tasks, on_done)
    return _compute_distributed(client, tasks, on_done)


def _compute_local(tasks: list, on_done: Callable[[int, Any], None]) -> list:
    index = {task.key: i for i, task in enumerate(tasks)}

    def posttask(key, result, dsk, state, worker_id):
        if key in index:
            on_done(index[key], result)

    with Callback(posttask=posttask):
        return list(dask.compute(*tasks))


def _compute_distributed(client: Any, tasks: list, on_done: Callable[[int, Any], None]) -> list:
    from distributed import as_completed

    futures = client.compute(tasks)
    index = {future.key: i for i, future in enumerate(futures)}
    results: list = [None] * len(tasks)
    try:
        for future in as_completed(futures):
            i = index[future.key]
            results[i] = future.result()
            on_done(i, results[i])
    except (OSError, TimeoutError) as exc:
        raise ClusterError(f"lost the dask scheduler while computing ({exc}); rerun with "
                           "output.if_exists: resume to finish the job") from exc
    finally:
        for future in futures:
            future.release()
    return results


def memory_budget() -> int:
    """Bytes of memory the active scheduler's workers may use in all."""
    client = _client()
    if client is not None:
        workers = client.scheduler_info().get("workers", {}).values()
        limits = [w.get("memory_limit") or 0 for w in workers]
        if limits and all(limits):
            return int(sum(limits))
    return _available_memory()


def _available_memory() -> int:
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2
