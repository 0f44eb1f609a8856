"""The exceptions a user can meet, each mapped to one exit status by the CLI."""


class PipelineError(Exception):
    """A failure the CLI reports in one line, without a traceback (exit 1)."""

    exit_code = 1


class ConfigError(PipelineError):
    """A bad job file, argument or input listing: nothing was started (exit 2)."""

    exit_code = 2


class ImageReadError(PipelineError):
    """An input image cannot be opened or decoded."""


class ClusterError(PipelineError):
    """The dask scheduler cannot be reached or was lost."""


class ClusterUnreachable(ClusterError):
    """The scheduler cannot be reached at start: nothing could start (exit 2)."""

    exit_code = 2


class PipelineWarning(UserWarning):
    """A valid but degenerate result (fewer colours than k, an empty cluster...)."""


class StorageError(PipelineError, OSError):
    """An object store stayed unreachable (connection lost, 5xx, throttling) through every
    retry.  An OSError too, so that code handling a failed write or read handles this one."""
