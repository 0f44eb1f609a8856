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


class JobCancelled(PipelineError):
    """A submitted job was cancelled (``kmeans-pipeline cancel``); completed images stay valid."""

    exit_code = 130


class PipelineWarning(UserWarning):
    """A valid but degenerate result (fewer colours than k, an empty cluster...)."""
