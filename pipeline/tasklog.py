"""What a task logs, kept for its image's report entry, on every scheduler alike.

On a cluster the warnings that ``pipeline`` logs inside a task (an unusable ICC profile, a
storage retry) happen in a worker process; `cluster.connect` forwards them to the client's log,
and `capture` returns them with the task's result, so report.json says as much after a
cluster run as after a threads run.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from typing import Iterator

LOGGER = "pipeline"


class _Collect(logging.Handler):
    """Formats the records of one thread (a worker runs several tasks at once)."""

    def __init__(self, thread: int, into: list[str]):
        super().__init__(logging.WARNING)
        self.thread, self.into = thread, into

    def emit(self, record: logging.LogRecord) -> None:
        if record.thread == self.thread:
            line = f"{record.levelname} {record.name}: {record.getMessage()}"
            if line not in self.into:  # a file decoded twice says it once
                self.into.append(line)


@contextlib.contextmanager
def capture() -> Iterator[list[str]]:
    """Collect the warnings and errors ``pipeline`` loggers emit in this thread in the block.

    Yields
    ------
    list of str
        ``"LEVEL logger: message"`` lines, filled as the block runs.
    """
    lines: list[str] = []
    handler = _Collect(threading.get_ident(), lines)
    logger = logging.getLogger(LOGGER)
    logger.addHandler(handler)
    try:
        yield lines
    finally:
        logger.removeHandler(handler)
