"""The exceptions a user can meet, each mapped to one exit status by the CLI."""


class PipelineError(Exception):
    """A failure the CLI reports in one line, without a traceback (exit 1)."""

    exit_code = 1


class ConfigError(PipelineError):
    """A bad job file, argument or input listing: nothing was started (exit 2)."""

    exit_code = 2


class ImageReadError(PipelineError):
    """An input image cannot be opened or decoded."""


class OutputError(PipelineError):
    """An output file could not be written (disk full, output folder removed): exit 1."""


class ClusterError(PipelineError):
    """The dask scheduler cannot be reached or was lost."""


class ClusterUnreachable(ClusterError):
    """The scheduler cannot be reached at start: nothing could start (exit 2)."""

    exit_code = 2


class JobCancelled(PipelineError):
    """A submitted job was cancelled (``kmeans-pipeline cancel``); completed images stay valid."""

    exit_code = 130


class PipelineWarning(UserWarning):
    """A valid but degenerate result (fewer colours than k, an empty cluster...)."""


class StorageError(PipelineError):
    """An object store stayed unreachable (connection lost, 5xx, throttling) through every
    retry.  Deliberately no OSError: it must not pass for a broken image, a full disk or a
    lost scheduler (cluster.py reads an OSError from a task as one)."""
