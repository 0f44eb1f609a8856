"""Submitted jobs: run a whole job on the cluster, read its status, cancel it.

`submit` places one driver task on a worker (`pipeline.cluster.submit_driver`); the driver calls
`run()` there, with the worker's own client, so the submitting shell may exit.  Everything a
later `status` or `cancel` needs is in the output folder:

- ``submission.json``: job id, scheduler address, driver task key, when submitted; updated by
  the driver when it fails before report.json exists, and by `cancel`.
- ``report.json``: written by `run()` as images finish, with the same ``job_id``.

A driver whose worker dies is run again by dask; it then finds report.json with its own job id
and finishes the job with ``if_exists: resume`` instead of starting over.
"""

from __future__ import annotations

import dataclasses
import logging
import time
import uuid
from typing import Any

import dask

from pipeline import cluster, storage
from pipeline.config import LOCAL_SCHEDULERS, DaskConfig, JobConfig
from pipeline.driver import REPORT, run
from pipeline.errors import ConfigError, JobCancelled, PipelineError, StorageError, exit_status
from pipeline.sinks import images as write
from pipeline.sources.collection import Progress

log = logging.getLogger(__name__)
SUBMISSION = "submission.json"
FINAL = ("done", "failed", "cancelled")


def check_remote(cfg: DaskConfig) -> None:
    """Refuse to submit to a scheduler that would stop with the submitting process."""
    choice = cluster.choose_scheduler(cfg)
    if choice.kind in LOCAL_SCHEDULERS:
        raise ConfigError(f"dask.scheduler: submit needs a running dask scheduler, got "
                          f"{choice.kind!r} ({choice.reason}); give --scheduler "
                          "tcp://host:port or --scheduler-file, set DASK_SCHEDULER_ADDRESS, "
                          "or use `kmeans-pipeline run`")


def submit(cfg: JobConfig, scheduler: str) -> dict:
    """Submit a job to the active (remote) scheduler and return at once.

    Parameters
    ----------
    cfg : JobConfig
    scheduler : str
        The scheduler's address, recorded for `cancel`.

    Returns
    -------
    dict
        The submission: ``job_id``, ``key``, ``scheduler``, ``submitted``, ``future`` (the
        driver's future, usable while this client stays connected; not saved).

    Raises
    ------
    ConfigError
        The output folder cannot be written, or a job submitted there is still running.
    """
    out_dir = cfg.output.dir
    options = cfg.output.storage_options
    old = write.read_json(storage.join(out_dir, SUBMISSION), options)
    if isinstance(old, dict) and old.get("key") and cluster.task_exists(old["key"]):
        raise ConfigError(f"output.dir: job {old.get('job_id')} submitted to {out_dir!r} is "
                          f"still running; wait for it, or `kmeans-pipeline cancel {out_dir}`")
    job_id = uuid.uuid4().hex[:12]
    entry = {"job_id": job_id, "key": f"kmeans-pipeline-driver-{job_id}",
             "scheduler": scheduler, "submitted": write.utc_now(), "job_file": cfg.source,
             "status": "submitted", "error": None}
    try:
        write.write_json(storage.join(out_dir, SUBMISSION), entry, storage_options=options)
    except (OSError, StorageError) as exc:  # object stores raise StorageError (issue 11)
        reason = getattr(exc, "strerror", None) or exc
        raise ConfigError(f"output.dir: cannot write to {out_dir!r} ({reason}); choose a "
                          "folder the client and the workers share") from exc
    future = cluster.submit_driver(drive, (cfg, job_id), entry["key"])
    return {**entry, "future": future}


def drive(cfg: JobConfig, job_id: str) -> dict:
    """The driver task: run the whole job on the worker it landed on.

    Returns
    -------
    dict
        ``status``, ``exit_code``, ``error`` and the report's ``totals``.
    """
    options = cfg.output.storage_options
    previous = write.read_json(storage.join(cfg.output.dir, REPORT), options)
    if isinstance(previous, dict) and previous.get("job_id") == job_id:
        # This driver ran before, on a worker that died: finish the job, do not start over.
        log.info("job %s: driver restarted; resuming", job_id)
        cfg = dataclasses.replace(cfg, output=dataclasses.replace(cfg.output, if_exists="resume"))
    try:
        with dask.config.set(cfg.dask.config), cluster.watch_cancel(job_id) as cancelled:
            where = cluster.describe_active("submitted with `kmeans-pipeline submit`: the "
                                            "driver task runs on one of its workers")
            report = run(cfg, job_id=job_id, cancelled=cancelled, scheduler=where)
    except PipelineError as exc:
        status = "cancelled" if isinstance(exc, JobCancelled) else "failed"
        error = str(exc).splitlines()[0]
        report = write.read_json(storage.join(cfg.output.dir, REPORT), options)
        if not isinstance(report, dict) or report.get("job_id") != job_id:
            # It failed before its report.json was written (e.g. output.if_exists: fail).
            _update_submission(cfg.output.dir, job_id, options, status=status, error=error)
        return {"status": status, "exit_code": exc.exit_code, "error": error, "totals": None,
                "problems": []}
    totals = report["totals"]
    return {"status": "done", "exit_code": exit_status(totals),
            "error": None, "totals": totals,
            "problems": [{"path": r["path"], "error": r["error"]} for r in report["images"]
                         if r["status"] != "ok" and r["error"]]}


def _update_submission(out_dir: str, job_id: str, options: dict | None,
                       **changes: Any) -> None:
    path = storage.join(out_dir, SUBMISSION)
    entry = write.read_json(path, options)
    if not isinstance(entry, dict) or entry.get("job_id") != job_id:
        return  # another job was submitted to this folder since
    entry.update(changes, updated=write.utc_now())
    try:
        write.write_json(path, entry, storage_options=options)
    except (OSError, StorageError) as exc:
        log.error("could not write %s: %s", path, exc)


def status(out_dir: str, options: dict | None = None) -> dict:
    """A job's state from its output folder: what `kmeans-pipeline status` prints.

    ``options`` are the folder's storage options (``output.storage_options``: the saved
    files mask their secrets, so they cannot come from there).

    Returns
    -------
    dict
        ``state`` (submitted | running | done | failed | cancelled), ``job_id``, image counts
        (``images``, ``done``, ``ok``, ``skipped``, ``failed``, ``pending``), ``phase`` with its
        ``phase_done``/``phase_total``, ``updated``, ``error``.

    Raises
    ------
    ConfigError
        The folder holds neither report.json nor submission.json.
    """
    report = write.read_json(storage.join(out_dir, REPORT), options)
    entry = write.read_json(storage.join(out_dir, SUBMISSION), options)
    report = report if isinstance(report, dict) else None
    entry = entry if isinstance(entry, dict) else None
    if report is None and entry is None:
        raise ConfigError(f"{out_dir}: no report.json or {SUBMISSION}; not the output folder "
                          "of a kmeans-pipeline job (or the job has not started)")
    if entry and (report is None or report.get("job_id") != entry.get("job_id")):
        # Submitted, and its driver has not written a report yet (or failed before it could).
        return {"state": entry.get("status", "submitted"), "job_id": entry.get("job_id"),
                "images": None, "done": 0, "ok": 0, "skipped": 0, "failed": 0, "pending": None,
                "phase": None, "phase_done": 0, "phase_total": 0,
                "updated": entry.get("updated", entry.get("submitted")),
                "error": entry.get("error")}
    totals = report.get("totals", {})
    progress = report.get("progress") or {}
    state = report.get("status", "running")
    if entry and state == "running" and entry.get("status") == "cancelled":
        state = "cancelling"
    return {"state": state, "job_id": report.get("job_id"), "images": totals.get("images"),
            "done": totals.get("images", 0) - totals.get("pending", 0), "ok": totals.get("ok"),
            "skipped": totals.get("skipped"), "failed": totals.get("failed"),
            "pending": totals.get("pending"), "phase": progress.get("phase"),
            "phase_done": progress.get("done", 0), "phase_total": progress.get("total", 0),
            "updated": report.get("updated"), "error": report.get("error")}


def follow(submission: dict, out_dir: str, options: dict | None, progress: Progress | None,
           poll: float = 0.5) -> dict:
    """Follow a job just submitted, from its report.json, until its driver finishes.

    Returns
    -------
    dict
        What `drive` returned.

    Raises
    ------
    ClusterError
        The scheduler was lost while following.
    """
    shown = {"phase": None, "done": 0, "pixels_done": 0}
    finished = False
    try:
        while not finished:
            finished = cluster.wait_driver(submission["future"], poll)
            report = write.read_json(storage.join(out_dir, REPORT), options)
            if isinstance(report, dict) and report.get("job_id") == submission["job_id"]:
                _show(report.get("progress") or {}, shown, progress)
        return submission["future"].result()
    except Exception as exc:  # the scheduler lost while following: one line, not a traceback
        error = cluster.explain(exc)
        if error is None:
            raise
        raise error from exc


def _show(now: dict, shown: dict, progress: Progress | None) -> None:
    if progress is None or not now.get("phase"):
        return
    if now["phase"] != shown["phase"] or now.get("done", 0) < shown["done"]:
        progress.phase(now["phase"], now.get("total", 0), now.get("pixels", 0))
        shown.update(phase=now["phase"], done=0, pixels_done=0)
    images = now.get("done", 0) - shown["done"]
    if images:
        progress.advance(images, now.get("pixels_done", 0) - shown["pixels_done"])
        shown.update(done=now.get("done", 0), pixels_done=now.get("pixels_done", 0))


def cancel(out_dir: str, timeout: float, options: dict | None = None) -> dict:
    """Ask the job submitted to ``out_dir`` to stop; wait up to ``timeout`` s until it has.
    ``options``: as for `status`.

    Returns
    -------
    dict
        The job's `status` afterwards (``state`` is ``cancelling`` if it has not stopped yet),
        and ``requested``: False when the job had finished before, so nothing was asked.

    Raises
    ------
    ConfigError
        No job was submitted to ``out_dir``.
    ClusterUnreachable
        Its scheduler cannot be reached.
    """
    entry = write.read_json(storage.join(out_dir, SUBMISSION), options)
    if not isinstance(entry, dict) or not entry.get("key"):
        raise ConfigError(f"{out_dir}: no {SUBMISSION}; only a job started with "
                          "`kmeans-pipeline submit` can be cancelled (stop `run` with Ctrl-C)")
    before = status(out_dir, options)
    if before["state"] in FINAL:
        return {**before, "requested": False}
    with cluster.connect(DaskConfig(scheduler=entry["scheduler"], timeout=timeout),
                         need_workers=False):
        cluster.request_cancel(entry["job_id"], entry["key"])
    _update_submission(out_dir, entry["job_id"], options, status="cancelled")
    deadline = time.monotonic() + timeout
    after = status(out_dir, options)
    while after["state"] not in FINAL and time.monotonic() < deadline:
        time.sleep(0.1)
        after = status(out_dir, options)
    return {**after, "requested": True}
