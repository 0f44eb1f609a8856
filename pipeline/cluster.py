"""The scheduler layer: connect to the scheduler a job names, compute tasks as they finish,
hold data where the tasks run (decoded images, histogram shards), say how much memory the
workers may use, check what the workers see, and submit a job's driver to run on the cluster.

The only module that imports ``distributed`` (lazily: a job on threads never loads it).
``run()`` never picks a scheduler: it calls `compute_each`, which uses the active distributed
client if there is one and dask's local scheduler otherwise.  Inside a submitted driver the
active client is the worker's own (``worker_client``), so ``run()`` works unchanged there.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import dask
from dask.callbacks import Callback

from pipeline.config import LOCAL_SCHEDULERS, DaskConfig
from pipeline.errors import ClusterError, ClusterUnreachable, ConfigError, PipelineError

log = logging.getLogger(__name__)
_LOST = "scheduler-connection-lost"  # distributed's reason for futures cancelled by it


# dask's own names for its local schedulers, as the ``scheduler`` config key takes them.
_DASK_LOCAL_NAMES = {"threads": "threads", "threading": "threads", "processes": "processes",
                     "multiprocessing": "processes", "synchronous": "synchronous",
                     "sync": "synchronous", "single-threaded": "synchronous"}
_IN_PROCESS = ("threads", "processes", "synchronous")  # dask's local schedulers: no Client


@dataclass
class Connection:
    """What the user should know about the scheduler in use, and why it was chosen."""

    scheduler: str
    dashboard: str | None = None
    n_workers: int | None = None
    reason: str = ""

    def describe(self) -> dict:
        """The scheduler as report.json and ``--json`` give it."""
        return {"scheduler": self.scheduler, "reason": self.reason,
                "dashboard": self.dashboard, "workers": self.n_workers}


@dataclass(frozen=True)
class _Choice:
    kind: str  # threads | processes | synchronous | local | client | address | file
    target: str | None  # the address or scheduler file
    reason: str
    default: bool = False  # nothing named a scheduler


def choose_scheduler(cfg: DaskConfig) -> _Choice:
    """Which scheduler a job uses, and why: dask's conventions when the job names none.

    The job's ``dask.scheduler_file`` or ``dask.scheduler`` (or ``--scheduler``) first; then,
    as dask itself decides, the ``scheduler`` config key (``DASK_SCHEDULER``; a default
    ``Client`` sets it to ``dask.distributed``), an active ``Client`` in this process, the
    ``scheduler-address`` key (``DASK_SCHEDULER_ADDRESS``); only then the threads scheduler.
    """
    if cfg.scheduler_file is not None:
        return _Choice("file", cfg.scheduler_file, "dask.scheduler_file in the job")
    if cfg.scheduler is not None:
        kind = cfg.scheduler if cfg.scheduler in LOCAL_SCHEDULERS else "address"
        return _Choice(kind, cfg.scheduler, "dask.scheduler in the job or --scheduler")
    configured = dask.config.get("scheduler", None)
    if isinstance(configured, str) and configured in _DASK_LOCAL_NAMES:
        where = "DASK_SCHEDULER" if "DASK_SCHEDULER" in os.environ else "dask config"
        return _Choice(_DASK_LOCAL_NAMES[configured], None,
                       f"scheduler: {configured!r} in {where}")
    if _default_client() is not None:
        return _Choice("client", None, "the active dask Client in this process")
    address = dask.config.get("scheduler-address", None)
    if address:
        where = ("DASK_SCHEDULER_ADDRESS" if os.environ.get("DASK_SCHEDULER_ADDRESS")
                 else "scheduler-address in dask config")
        return _Choice("address", str(address), where)
    return _Choice("threads", None, "the default: neither the job, DASK_SCHEDULER_ADDRESS, "
                                    "dask config nor an active Client names a scheduler",
                   default=True)


def _default_client() -> Any:
    """The default distributed Client of this process, without importing distributed."""
    if "distributed" not in sys.modules:
        return None
    from distributed import default_client

    try:
        return default_client()
    except ValueError:
        return None


@contextlib.contextmanager
def connect(cfg: DaskConfig, need_workers: bool = True) -> Iterator[Connection]:
    """Make the job's scheduler (see `choose_scheduler`) the active one for the block.

    On a distributed scheduler, warnings that ``pipeline`` logs on the workers are forwarded
    to this process's log, and ``cfg.performance_report`` gets dask's performance report.

    Parameters
    ----------
    cfg : DaskConfig
    need_workers : bool
        Wait (up to ``cfg.timeout``) until a remote scheduler has at least one worker.

    Raises
    ------
    ClusterUnreachable
        The scheduler address or file cannot be reached within ``cfg.timeout`` seconds, or
        has no worker by then.
    """
    with dask.config.set(cfg.config):
        choice = _for_performance_report(cfg, choose_scheduler(cfg))
        _check_performance_report(cfg.performance_report)  # before any cluster starts
        if choice.kind in _IN_PROCESS:
            connection = contextlib.nullcontext(Connection(choice.kind))
        elif choice.kind == "local":
            connection = _local_cluster(cfg)
        elif choice.kind == "client":
            connection = _active(cfg)
        else:
            connection = _remote(cfg, choice, need_workers)
        with connection as connected, dask.config.set(
                {"scheduler": choice.kind} if choice.kind in _IN_PROCESS else {}):
            connected.reason = choice.reason
            log.info("scheduler: %s (%s)", connected.scheduler, choice.reason)
            if connected.dashboard:
                log.info("dask dashboard: %s", connected.dashboard)
            with _performance_report(cfg.performance_report):
                yield connected


def _for_performance_report(cfg: DaskConfig, choice: _Choice) -> _Choice:
    """dask's performance report needs a distributed scheduler: a LocalCluster when unset."""
    if cfg.performance_report is None or choice.kind not in _IN_PROCESS:
        return choice
    if not choice.default:
        raise ConfigError(f"dask.performance_report: needs a distributed scheduler, but the job "
                          f"runs on {choice.kind!r} ({choice.reason}); use dask.scheduler: "
                          "local or a scheduler address, or drop dask.performance_report")
    return _Choice("local", None, "a LocalCluster, since dask.performance_report needs a "
                                  "distributed scheduler and none is configured")


def _check_performance_report(path: str | None) -> None:
    if path is None:
        return
    if "://" in path:
        raise ConfigError(f"dask.performance_report: {path!r} is a URL; give a local path "
                          "(dask writes the report as a local file)")
    try:
        import bokeh  # noqa: F401  (dask draws the report's plots with it)
    except ImportError as exc:
        raise ConfigError("dask.performance_report: needs bokeh, which is not installed: "
                          "pip install 'kmeans-pipeline[diagnostics]'") from exc
    folder = os.path.dirname(path)
    if folder and not os.path.isdir(folder):
        raise ConfigError(f"dask.performance_report: folder {folder!r} does not exist; create "
                          "it or choose another path")


@contextlib.contextmanager
def _performance_report(path: str | None) -> Iterator[None]:
    if path is None:
        yield
        return
    from distributed import performance_report

    with performance_report(filename=path):
        yield
    log.info("dask performance report: %s", path)


@contextlib.contextmanager
def _active(cfg: DaskConfig) -> Iterator[Connection]:
    client = _default_client()
    with _forwarding(client):
        yield Connection(client.scheduler.address, client.dashboard_link,
                         len(client.scheduler_info().get("workers", {})))


@contextlib.contextmanager
def _forwarding(client: Any) -> Iterator[None]:
    """Worker-side ``pipeline`` warnings reach this process's log while the block runs."""
    client.forward_logging("pipeline", level=logging.WARNING)
    try:
        yield
    finally:
        with contextlib.suppress(Exception):  # the scheduler may be gone
            client.unforward_logging("pipeline")


_TRIM = "distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_"
_TRIM_DEFAULT = 65536  # distributed's own value


@contextlib.contextmanager
def _local_cluster(cfg: DaskConfig) -> Iterator[Connection]:
    _distributed_defaults()
    with dask.config.set(_worker_environment()), dask.config.set(_forkserver()):
        from distributed import Client, LocalCluster

        _keep_forkserver_preload()
        with LocalCluster(n_workers=cfg.n_workers, threads_per_worker=cfg.threads_per_worker,
                          memory_limit=cfg.memory_limit, host="127.0.0.1",
                          dashboard_address="127.0.0.1:0", processes=True,
                          # the HTTP routes (/health, /metrics) stay; bokeh's pages cost
                          # 0.3-0.4 s of start-up (issue 14)
                          scheduler_kwargs={"dashboard": cfg.dashboard}) as local, \
                Client(local) as client:
            workers = list(client.scheduler_info()["workers"])
            # held for the block: a released future's task may be cancelled before it runs
            warming = [client.submit(_warm_up, pure=False, workers=[worker])
                       for worker in workers]
            # dask makes up a link to the default port when no dashboard is served
            yield Connection("local", client.dashboard_link if cfg.dashboard else None,
                             len(workers))
            del warming


def _warm_up() -> None:
    """Import the task bodies' modules in a new worker while the client lists the inputs
    (0.3-0.6 s of a fresh worker's first task otherwise; issue 14)."""
    import pipeline.tasks  # noqa: F401


def _worker_environment() -> dict:
    """dask config for the workers of a LocalCluster this process starts.

    distributed's nanny sets ``MALLOC_TRIM_THRESHOLD_=65536`` in its workers, and any such
    setting turns off glibc's dynamic mmap threshold: every large numpy temporary of a
    segment task (codes, labels, PNG rows: tens of MB per image) is then mapped afresh and
    page-faulted in.  That made the segment pass of `medium` 1.7x slower on 2 workers than on
    2 threads (issue 14: 12.9 s against 7.2-8.0 s without it).  Unset unless the user's dask
    config or environment chose a value of their own.
    """
    if "MALLOC_TRIM_THRESHOLD_" in os.environ or dask.config.get(_TRIM, None) != _TRIM_DEFAULT:
        return {}
    return {_TRIM: None}  # None: the nanny sets no such variable


_METHOD = "distributed.worker.multiprocessing-method"
_PRE_SPAWN = "distributed.nanny.pre-spawn-environ"
# What a LocalCluster's workers import first: a forkserver imports them once for all workers.
_PRELOAD = ["distributed", "pipeline.tasks"]


def _distributed_defaults() -> None:
    """Load distributed's default config as importing it would (`distributed.config`), so
    that `_forkserver` can read the workers' environment before distributed is imported."""
    import importlib.util

    import yaml

    spec = importlib.util.find_spec("distributed")
    if spec is None or spec.origin is None:
        return
    with open(os.path.join(os.path.dirname(spec.origin), "distributed.yaml")) as handle:
        dask.config.update_defaults(yaml.safe_load(handle))


def _forkserver() -> dict:
    """dask config making a LocalCluster's nannies fork their workers from a forkserver.

    With distributed's default, ``spawn``, every worker is a fresh interpreter that imports
    distributed and the task modules itself: 0.35 s of CPU each, in the way of the run on a
    small machine, and 0.3-0.7 s before the cluster is up (issue 14).  A forkserver imports
    them once (`_PRELOAD`), while this process imports distributed, and each worker is a
    fork of it.  It is started with the environment the nannies give their workers (thread
    counts, ``PYTHONHASHSEED``, ``MALLOC_TRIM_THRESHOLD_``), which must be set before an
    interpreter starts.  Nothing changes where the user's dask config names another start
    method, or where there is no forkserver (Windows)."""
    import multiprocessing

    if dask.config.get(_METHOD, "spawn") != "spawn" or \
            "forkserver" not in multiprocessing.get_all_start_methods():
        return {}
    from multiprocessing import forkserver

    environ = {key: str(value) for key, value in dask.config.get(_PRE_SPAWN, {}).items()
               if value is not None}
    if environ.get("PYTHONHASHSEED", "0") == "0":
        environ["PYTHONHASHSEED"] = "6640"  # as distributed.nanny.Nanny sets it
    # Existing variables win, as in the nanny, which sets these in this process too.
    os.environ.update({key: value for key, value in environ.items() if key not in os.environ})
    multiprocessing.get_context("forkserver").set_forkserver_preload(_PRELOAD)
    forkserver.ensure_running()  # returns at once: the server imports in the background
    return {_METHOD: "forkserver"}


def _keep_forkserver_preload() -> None:
    """Stop distributed from adding its own preload on its first forkserver use: it would
    import pandas (if installed) here first, for nothing (0.3 s), as the server is running."""
    import distributed.utils

    if dask.config.get(_METHOD) == "forkserver" and \
            hasattr(distributed.utils, "_forkserver_preload_set"):
        distributed.utils._forkserver_preload_set = True


@contextlib.contextmanager
def _remote(cfg: DaskConfig, choice: _Choice, need_workers: bool) -> Iterator[Connection]:
    from distributed import Client

    # Named by the user's environment, not the job: say so, or the address is a mystery.
    where = choice.target if "in the job" in choice.reason else \
        f"{choice.target} (from {choice.reason})"
    if choice.kind == "file" and not os.path.isfile(choice.target):
        raise ConfigError(f"dask.scheduler_file: {choice.target!r} not found; start the "
                          "scheduler with --scheduler-file, or give its address")
    try:
        client = Client(scheduler_file=choice.target, timeout=cfg.timeout) \
            if choice.kind == "file" else Client(choice.target, timeout=cfg.timeout)
    except (OSError, TimeoutError) as exc:
        raise ClusterUnreachable(f"cannot reach the dask scheduler at {where} within "
                                 f"{cfg.timeout:g} s ({type(exc).__name__}); start it, or fix "
                                 "dask.scheduler / --scheduler, or raise dask.timeout") from exc
    with client:
        try:
            if need_workers:
                client.wait_for_workers(1, timeout=cfg.timeout)
        except (OSError, TimeoutError) as exc:
            raise ClusterUnreachable(f"the dask scheduler at {client.scheduler.address} has no "
                                     f"workers (waited {cfg.timeout:g} s); start some with "
                                     f"`dask worker {client.scheduler.address}`, or raise "
                                     "dask.timeout") from exc
        info = client.scheduler_info()
        with _forwarding(client):
            yield Connection(client.scheduler.address, client.dashboard_link,
                             len(info.get("workers", {})))


def describe_active(reason: str) -> dict | None:
    """`Connection.describe` of the active distributed client (a driver's worker client)."""
    client = _client()
    if client is None:
        return None
    return Connection(client.scheduler.address, client.dashboard_link,
                      len(client.scheduler_info().get("workers", {})), reason).describe()


def _client() -> Any:
    """The active distributed client, or None when a local scheduler is in use."""
    if dask.config.get("scheduler", None) in LOCAL_SCHEDULERS:
        return None
    if "distributed" not in sys.modules:  # no client without it: importing it costs 0.3 s
        return None
    try:
        from distributed import default_client

        return default_client()
    except (ImportError, ValueError):
        return None


def compute(*values: Any) -> tuple:
    """`dask.compute` on the active scheduler.  Without a client, the local scheduler is named,
    so dask does not import distributed to look for one (0.3 s of start-up; issue 14)."""
    return dask.compute(*values, **_local_scheduler())


def compute_here(*values: Any) -> tuple:
    """`dask.compute` on this process's threads, whatever the active scheduler: for small
    tasks on data this process holds (the fit's starts on the sample), which a cluster would
    have to receive in the graph and, all sharing that data, run on one worker one after the
    other (issue 14: the fit took 0.35-0.6 s on 2 workers, 0.2-0.3 s on threads).  Without
    a client, the local scheduler in use (see `compute`)."""
    if _client() is None:
        return compute(*values)
    from dask.threaded import get

    return dask.compute(*values, scheduler=get)


def persist(*values: Any) -> tuple:
    """`dask.persist` on the active scheduler (see `compute`)."""
    return dask.persist(*values, **_local_scheduler())


def _local_scheduler() -> dict:
    if _client() is not None:
        return {}
    from dask.base import named_schedulers

    # As a function: dask looks for a distributed client (importing it) for any name.
    name = dask.config.get("scheduler", None) or "threads"
    return {"scheduler": named_schedulers.get(name, name) if isinstance(name, str) else name}


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
        The scheduler was lost while computing, or workers kept dying on a task.
    """
    if not tasks:
        return []
    client = _client()
    if client is None:
        return _compute_local(tasks, on_done)
    try:
        return _compute_distributed(client, tasks, on_done)
    except Exception as exc:
        error = explain(exc)
        if error is None:
            raise
        raise error from exc


def _compute_local(tasks: list, on_done: Callable[[int, Any], None]) -> list:
    index = {task.key: i for i, task in enumerate(tasks)}

    def posttask(key, result, dsk, state, worker_id):
        if key in index:
            on_done(index[key], result)

    with Callback(posttask=posttask):
        return list(compute(*tasks))


def _compute_distributed(client: Any, tasks: list, on_done: Callable[[int, Any], None]) -> list:
    from distributed import as_completed

    futures = client.compute(tasks)
    index = {future.key: i for i, future in enumerate(futures)}
    results: list = [None] * len(tasks)
    try:
        for future in as_completed(futures):
            i = index[future.key]
            results[i] = future.result()
            future.release()  # the result is here now; free the worker's copy
            on_done(i, results[i])
    finally:
        for future in futures:
            future.release()
    return results


def explain(exc: BaseException) -> PipelineError | None:
    """A one-line `ClusterError` for a distributed failure, or None for anything else.

    The scheduler lost (connection closed, every future cancelled with reason
    ``scheduler-connection-lost``) and a task on which workers kept dying (``KilledWorker``)
    are what a cluster does to a job; they are not bugs and need no traceback.
    """
    if isinstance(exc, PipelineError) or "distributed" not in sys.modules:
        return None
    from distributed import KilledWorker
    from distributed.comm import CommClosedError
    from distributed.utils import CancelledError

    resume = "rerun with output.if_exists: resume to finish the job"
    if isinstance(exc, KilledWorker):
        return ClusterError(f"dask workers died {exc.args[2] + 1} time(s) running task "
                            f"{exc.task!r} (out of memory? see the worker logs); raise the "
                            f"workers' memory limit or lower dask.chunk_pixels, then {resume}")
    client = _client()
    if isinstance(exc, CommClosedError) or (isinstance(exc, CancelledError) and (
            getattr(exc, "reason", None) == _LOST or client is None
            or client.status != "running")):
        # Futures are cancelled at once when the connection drops, or when the client gives
        # up reconnecting after dask.timeout seconds (then with no reason) and closes.
        return ClusterError(f"lost the dask scheduler while computing; {resume}")
    if isinstance(exc, CancelledError):
        return ClusterError(f"the dask scheduler cancelled this job's tasks "
                            f"({str(exc).splitlines()[0]}); {resume}")
    return None


def on_cluster() -> bool:
    """Whether tasks go to distributed workers (which may see other files than this process)."""
    return _client() is not None


def check_on_workers(check: Callable[..., list[str]], *args: Any) -> None:
    """Run ``check(*args)`` on every worker; it returns the problems that worker has.

    Tasks carry paths, so a worker must see the files the client listed, at the same paths.

    Raises
    ------
    ConfigError
        One line per worker and problem.
    """
    client = _client()
    if client is None:
        return
    seen = client.run(check, *args)
    problems = [f"  {worker}: {problem}" for worker, found in sorted(seen.items())
                for problem in found]
    if problems:
        bad = sum(bool(found) for found in seen.values())
        more = [f"  ... and {len(problems) - 10} more"] if len(problems) > 10 else []
        raise ConfigError(f"{bad} of {len(seen)} dask worker(s) cannot see this job's files; "
                          "input.paths and output.dir must be on a filesystem every worker "
                          "mounts at the same path:\n" + "\n".join(problems[:10] + more))


# ---------------------------------------------------------------------------------------------
# Submitted jobs: a driver task on a worker runs the whole job


def submit_driver(drive: Callable[..., dict], args: tuple, key: str) -> Any:
    """Run ``drive(*args)`` as one task on the cluster, to completion even if this client leaves.

    The task holds a ``worker_client`` (it secedes from the worker's thread pool, so the tasks
    it launches can use that thread) and is released with ``fire_and_forget``.  If its worker
    dies, dask runs it again on another worker, with the same arguments.

    Returns
    -------
    distributed.Future
        The driver's future, to follow while this client stays connected.
    """
    from distributed import fire_and_forget

    client = _required_client("submit")
    future = client.submit(_drive, drive, args, key=key, pure=False, retries=0)
    fire_and_forget(future)
    return future


def _drive(drive: Callable[..., dict], args: tuple) -> dict:
    from distributed import worker_client

    with worker_client() as client, client.as_current():
        return drive(*args)


def _required_client(what: str) -> Any:
    client = _client()
    if client is None:
        raise ConfigError(f"{what} needs a running dask scheduler: give --scheduler "
                          "tcp://host:port or --scheduler-file (a local scheduler would stop "
                          "with this process)")
    return client


def task_exists(key: str) -> bool:
    """Whether the scheduler still knows a task with this key (a driver queued or running)."""
    client = _required_client("checking a job")
    return bool(client.run_on_scheduler(_scheduler_has, key))


def _scheduler_has(key: str, dask_scheduler: Any = None) -> bool:
    return key in dask_scheduler.tasks


def request_cancel(job_id: str, key: str) -> None:
    """Ask a submitted job's driver to stop (it checks between images), and drop its task."""
    from distributed import Event, Future

    client = _required_client("cancel")
    Event(_cancel_event(job_id), client=client).set()
    client.cancel([Future(key, client)], force=True, reason="cancelled by kmeans-pipeline cancel")


@contextlib.contextmanager
def watch_cancel(job_id: str, every: float = 0.2) -> Iterator[Callable[[], bool]]:
    """Within a driver: yields a function telling whether `request_cancel` was called.

    A thread asks the scheduler every ``every`` seconds, so the check itself is free and the
    driver can make it after every image.
    """
    from distributed import Event

    event = Event(_cancel_event(job_id), client=_required_client("a driver"))
    flag, stop = threading.Event(), threading.Event()

    def poll() -> None:
        while not flag.is_set() and not stop.wait(every):
            try:
                if event.is_set():
                    flag.set()
            except Exception:  # the scheduler is gone: the driver's own tasks will say so
                return

    if event.is_set():
        flag.set()
    thread = threading.Thread(target=poll, name=f"cancel-watch-{job_id}", daemon=True)
    thread.start()
    try:
        yield flag.is_set
    finally:
        stop.set()
        thread.join()


def _cancel_event(job_id: str) -> str:
    return f"kmeans-pipeline-cancel-{job_id}"


def wait_driver(future: Any, seconds: float) -> bool:
    """Whether the driver's future finished within ``seconds`` (its result is then ready)."""
    from distributed import wait

    try:
        wait(future, timeout=seconds)
    except TimeoutError:
        return False
    return True


class OnWorkers:
    """Decoded pixels of a run's images held in its workers' memory between its passes
    (issue 14: the sampling, lloyd and segment passes each decoded every image).

    Holds one future per image of a decode task (`collection.decode_kept`, key
    ``decode-kept-<token of the image>``); the tasks of each pass take these futures as
    arguments, so the scheduler runs them where the pixels are, and the pixels never reach
    this process.  Releasing an image's future lets the scheduler free its pixels once the
    tasks that need them are done.  A `collection.KeptPixels`.
    """

    def __init__(self, futures: dict[str, Any]):
        self._futures = futures

    def for_group(self, group: list) -> dict[str, Any]:
        """Image name -> decode future, for the images of ``group`` still held."""
        return {info.name: self._futures[info.name] for info in group
                if info.name in self._futures}

    def release(self, images: list) -> None:
        for info in images:
            future = self._futures.pop(info.name, None)
            if future is not None:
                future.release()

    def clear(self) -> None:
        futures, self._futures = self._futures, {}
        for future in futures.values():
            with contextlib.suppress(Exception):  # the scheduler may be gone
                future.release()

    def __len__(self) -> int:
        return len(self._futures)


def decode_on_workers(images: list, decode: Callable[[Any], Any]) -> OnWorkers:
    """Submit ``decode(info)`` for each image to the active client's workers (see `OnWorkers`).

    The keys depend only on the image, so another run on the same scheduler decoding the
    same file shares the task instead of decoding again.
    """
    client = _required_client("keeping decoded pixels on workers")
    futures = {info.name: client.submit(decode, info, pure=True,
                                        key=f"decode-kept-{dask.base.tokenize(info)}")
               for info in images}
    return OnWorkers(futures)


# ---------------------------------------------------------------------------------------------
# Values computed once and read by many small passes (lloyd's colour shards, issue 14)


class Parts:
    """``n`` values computed once from one source and kept where the tasks that read them run:
    in this process on a local scheduler, as futures spread over the workers on a cluster.

    `map` applies a function to every part and returns the results in part order, so a
    caller that combines them in that order gets the same bits on every scheduler.  On a
    cluster a `map` is one task per worker, over the parts that worker holds: no graph is
    built or optimised, nothing but the arguments and results travels, and the scheduler
    handles as many tasks per pass as there are workers (16 tasks cost 70-90 ms a pass on
    2 loaded workers, 2 tasks 35-50; issue 14).
    """

    def __init__(self, values: list | None = None, futures: list | None = None,
                 client: Any = None):
        self._values, self._futures, self._client = values or [], futures, client
        self._where: dict[Any, list[int]] = {}  # worker -> the parts it held when made
        if futures is not None:
            held = client.who_has(futures)
            for i, future in enumerate(futures):
                self._where.setdefault((held.get(future.key) or (None,))[0], []).append(i)

    def map(self, fn: Callable[..., Any], *args: Any) -> list:
        """``[fn(part, *args) for part in parts]``, each computed where its part is."""
        if self._futures is None:
            return list(compute(*[dask.delayed(fn, pure=False)(value, *args)
                                  for value in self._values]))
        # loosely bound: if that worker is gone, another fetches (or recomputes) the parts
        tasks = [self._client.submit(_each_part, fn, [self._futures[i] for i in parts], *args,
                                     pure=False, workers=where,
                                     allow_other_workers=where is not None)
                 for where, parts in self._where.items()]
        results: list = [None] * len(self._futures)
        try:
            for parts, values in zip(self._where.values(), self._client.gather(tasks)):
                for i, value in zip(parts, values):
                    results[i] = value
        finally:
            for task in tasks:
                task.release()
        return results

    def release(self) -> None:
        futures, self._futures, self._values = self._futures or [], None, []
        for future in futures:
            with contextlib.suppress(Exception):  # the scheduler may be gone
                future.release()

    def __len__(self) -> int:
        return len(self._futures if self._futures is not None else self._values)


def _each_part(fn: Callable[..., Any], parts: list, *args: Any) -> list:
    return [fn(part, *args) for part in parts]


class _Recomputed(Parts):
    """`Parts` that are not kept: every `map` computes the source and the parts again."""

    def __init__(self, source: Any, part: Callable[..., Any], n: int, args: tuple):
        super().__init__()
        self._parts = [dask.delayed(part, pure=True)(source, i, *args) for i in range(n)]

    def map(self, fn: Callable[..., Any], *args: Any) -> list:
        return list(compute(*[dask.delayed(fn, pure=False)(p, *args) for p in self._parts]))

    def __len__(self) -> int:
        return len(self._parts)


def hold_parts(source: Any, part: Callable[..., Any], n: int, *args: Any,
               keep: bool = True) -> Parts:
    """`Parts` ``part(value, i, *args)`` for ``i < n``, of the value of delayed ``source``.

    With ``keep`` the source is computed once and released when the parts are made.  On a
    cluster part ``i`` is made on worker ``i mod n_workers`` (by address; loosely: another
    worker takes it if that one is gone), so that `Parts.map` keeps every worker busy: the
    scheduler would otherwise put every part next to the one source.  Without ``keep`` each
    `Parts.map` recomputes everything (``dask.persist: never``: the files are read again).
    """
    if not keep:
        return _Recomputed(source, part, n, args)
    client = _client()
    if client is None:
        return Parts(values=list(compute(*[dask.delayed(part, pure=True)(source, i, *args)
                                           for i in range(n)])))
    from distributed import wait

    whole = client.compute(source)
    workers = sorted(client.scheduler_info().get("workers", {})) or [None]
    futures = [client.submit(part, whole, i, *args,
                             key=f"{dask.utils.funcname(part)}-{dask.base.tokenize(whole.key, i)}",
                             workers=workers[i % len(workers)],
                             allow_other_workers=workers[0] is not None)
               for i in range(n)]
    try:
        wait(futures)
    finally:
        whole.release()
    return Parts(futures=futures, client=client)


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
    """Memory this process may still take: the machine's available memory, but never more
    than the container's limit (issue 11: /proc/meminfo alone ignores cgroup limits, so a
    container sized ``persist: auto`` for the host's memory and was OOM-killed)."""
    limit = _memory_limit()
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return min(limit, int(line.split()[1]) * 1024)
    except OSError:
        pass
    return min(limit, os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2)


# The cgroup v1 and v2 limit files, hard to softest, as distributed.system.memory_limit reads
# them (importing distributed for that function costs 0.3 s of every run's start-up).
_CGROUP_LIMITS = ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
                  "/sys/fs/cgroup/memory/memory.soft_limit_in_bytes",
                  "/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.high",
                  "/sys/fs/cgroup/memory.low")


def _memory_limit() -> int:
    """The host's memory, or less when a cgroup limit or RLIMIT_RSS says so (after
    distributed.system.memory_limit, BSD-3-Clause, Dask developers)."""
    import psutil

    limit = psutil.virtual_memory().total
    if sys.platform == "linux":
        for path in _CGROUP_LIMITS:
            try:
                with open(path) as handle:
                    value = int(handle.read())
            except (OSError, ValueError):  # absent, or "max": no limit there
                continue
            if value > 0:
                limit = min(limit, value)
    if sys.platform != "win32":
        import resource

        hard = resource.getrlimit(resource.RLIMIT_RSS)[1]
        if 0 < hard < limit:
            limit = hard
    return limit
