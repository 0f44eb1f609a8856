"""The exceptions a user can meet, and the one table of exit statuses.

`EXIT_STATUSES` is the table: the CLI returns these codes, every `PipelineError` subclass carries
its own as ``exit_code``, and a finished run's code comes from its totals (`exit_status`).
"""

from __future__ import annotations

EXIT_OK = 0  # every image done (images kept by resume count as done)
EXIT_FAILED = 1  # the job failed (any PipelineError without its own code, or a bug)
EXIT_USAGE = 2  # a bad job file or argument, or nothing could start
EXIT_SKIPPED = 3  # finished, but some images were skipped (on_error: skip)
EXIT_RUNNING = 4  # `status`: the job is submitted or still running
EXIT_INTERRUPTED = 130  # Ctrl-C, or a submitted job cancelled

EXIT_STATUSES = {
    EXIT_OK: "every image done (images kept by `resume` count as done)",
    EXIT_SKIPPED: "finished, but some images were skipped (`on_error: skip`)",
    EXIT_USAGE: "bad job file or arguments, or nothing could start (e.g. scheduler "
                "unreachable): one line per problem, no traceback",
    EXIT_FAILED: "the job failed (e.g. an unreadable image with `on_error: fail`, disk full)",
    EXIT_RUNNING: "`status` only: the job is submitted or still running",
    EXIT_INTERRUPTED: "interrupted (Ctrl-C), or a submitted job cancelled (`submit --wait`); "
                      "rerun with `if_exists: resume`",
}
# `kmeans-pipeline status`: the job's state -> its exit status, for scripts that wait on it
# (0 done, 1 failed, 130 cancelled, 4 submitted or running).
STATE_EXIT = {"done": EXIT_OK, "failed": EXIT_FAILED, "cancelled": EXIT_INTERRUPTED,
              "submitted": EXIT_RUNNING, "running": EXIT_RUNNING, "cancelling": EXIT_RUNNING}


def exit_status(totals: dict) -> int:
    """The exit status of a run that finished, from report.json's ``totals``."""
    return EXIT_SKIPPED if totals.get("skipped") or totals.get("failed") else EXIT_OK


class PipelineError(Exception):
    """A failure the CLI reports in one line, without a traceback (exit 1).

    ``report`` is the run's final report when a run failed (the CLI prints its skipped
    images before the error); None otherwise.
    """

    exit_code = EXIT_FAILED
    report: dict | None = None


class ConfigError(PipelineError):
    """A bad job file, argument or input listing: nothing was started (exit 2)."""

    exit_code = EXIT_USAGE


class ImageReadError(PipelineError):
    """An input image cannot be opened or decoded."""


class OutputError(PipelineError):
    """An output file could not be written (disk full, output folder removed): exit 1."""


class ClusterError(PipelineError):
    """The dask scheduler cannot be reached or was lost."""


class ClusterUnreachable(ClusterError):
    """The scheduler cannot be reached at start: nothing could start (exit 2)."""

    exit_code = EXIT_USAGE


class JobCancelled(PipelineError):
    """A submitted job was cancelled (``kmeans-pipeline cancel``); completed images stay valid."""

    exit_code = EXIT_INTERRUPTED


class PipelineWarning(UserWarning):
    """A valid but degenerate result (fewer colours than k, an empty cluster...)."""


class StorageError(PipelineError):
    """An object store stayed unreachable (connection lost, 5xx, throttling) through every
    retry.  Deliberately no OSError: it must not pass for a broken image, a full disk or a
    lost scheduler (cluster.py reads an OSError from a task as one)."""
