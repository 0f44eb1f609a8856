"""Progress display for long calls: a tqdm bar in a terminal or a notebook, plain lines in logs.

Observers only: the driver calls ``phase`` and ``advance``; nothing here decides or saves.
tqdm, and ipywidgets for the notebook widget, are imported only when a bar is shown.
"""

from __future__ import annotations

import sys
import time
from typing import IO, Any, Protocol

_REDRAW_SECONDS = 0.5  # at most two redraws a second, however fast images finish
_LINE_SECONDS = 5.0  # plain lines (a log file, CI): one every 5 s and one at each phase's end


class Progress(Protocol):
    """What the driver tells: a phase starts (images and pixels to do), some are done."""

    def phase(self, name: str, images: int, pixels: int) -> None: ...

    def advance(self, images: int, pixels: int) -> None: ...


def progress_for(stream: IO[str] | None = None, lines: bool = False) -> Progress | None:
    """The progress display that suits where the output goes.

    Parameters
    ----------
    stream : text stream, optional
        Where a terminal bar or plain lines go (``sys.stderr`` when not given).
    lines : bool
        When the stream is not a terminal (and this is not a notebook): plain lines if true
        (the CLI's logs), no display if false (the Python API in a script).

    Returns
    -------
    Progress or None
        In a Jupyter kernel, tqdm's notebook widget when ipywidgets is installed and tqdm's
        plain bar otherwise; on a terminal, a bar that fits its width.
    """
    stream = sys.stderr if stream is None else stream
    if _in_notebook():
        return Bar(notebook=_has_widgets(), stream=stream)
    if _isatty(stream):
        return Bar(notebook=False, stream=stream)
    return Lines(stream) if lines else None


class Bar:
    """One tqdm bar per phase, counting pixels (images vary in size) and showing images done."""

    def __init__(self, notebook: bool, stream: IO[str]):
        self.notebook, self.stream = notebook, stream
        self.bar: Any = None
        self.name, self.images, self.pixels, self.done, self.done_pixels = "", 0, 0, 0, 0
        self.started = time.time()

    def phase(self, name: str, images: int, pixels: int) -> None:
        self._close()
        self.name, self.images, self.pixels, self.done, self.done_pixels = \
            name, images, pixels, 0, 0
        self.started = time.time()  # tqdm's clock

    def _open(self) -> Any:
        """The phase's bar, drawn at its first image (a phase that counts none draws none)."""
        if self.notebook:
            from tqdm.notebook import tqdm
        else:
            from tqdm import tqdm
        bar = tqdm(total=max(self.pixels, 1), desc=self.name, unit="px", unit_scale=True,
                   file=None if self.notebook else self.stream, dynamic_ncols=True,
                   mininterval=_REDRAW_SECONDS, leave=True,
                   bar_format="{desc}: {percentage:3.0f}%|{bar}| "
                              "[{elapsed}<{remaining}{postfix}]")
        bar.start_t = self.started  # elapsed and ETA count from the phase's start
        return bar

    def advance(self, images: int, pixels: int) -> None:
        if self.done >= self.images:
            return
        if self.bar is None:
            self.bar = self._open()
        self.done += images
        self.done_pixels += pixels
        self.bar.set_postfix_str(self._counts(), refresh=False)
        self.bar.update(pixels)  # redraws only when _REDRAW_SECONDS have passed
        if self.done >= self.images:
            self.bar.n = self.bar.total  # a phase of 0 pixels still ends full
            self._close()

    def _counts(self) -> str:
        return (f"{self.done}/{self.images} images, "
                f"{self.done_pixels / 1e6:.1f}/{self.pixels / 1e6:.1f} Mpx")

    def _close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class Lines:
    """Plain lines for logs: ``segment: 3/5 images, 1.2/3.5 Mpx, 4.1 s, ETA 2 s``."""

    def __init__(self, stream: IO[str], every: float = _LINE_SECONDS):
        self.stream, self.every = stream, every
        self.name, self.images, self.pixels = "", 0, 0
        self.done = self.done_pixels = 0
        self.started = self.shown = time.monotonic()
        self.ended = False

    def phase(self, name: str, images: int, pixels: int) -> None:
        self.name, self.images, self.pixels = name, images, pixels
        self.done = self.done_pixels = 0
        self.started = self.shown = time.monotonic()
        self.ended = False

    def advance(self, images: int, pixels: int) -> None:
        self.done += images
        self.done_pixels += pixels
        now = time.monotonic()
        finished = self.done == self.images and not self.ended  # the last line once per phase
        if finished or (now - self.shown >= self.every and not self.ended):
            self.ended = self.ended or finished
            self.shown = now
            elapsed = now - self.started
            fraction = self.done_pixels / self.pixels if self.pixels else 1.0
            eta = elapsed / fraction - elapsed if fraction > 0 else 0.0
            self.stream.write(f"{self.name}: {self.done}/{self.images} images, "
                              f"{self.done_pixels / 1e6:.1f}/{self.pixels / 1e6:.1f} Mpx, "
                              f"{elapsed:.1f} s, ETA {eta:.0f} s\n")
            self.stream.flush()


def _isatty(stream: IO[str]) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def _in_notebook() -> bool:
    """Whether this process is a Jupyter kernel (IPython is then loaded already)."""
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None else None
    return shell is not None and "IPKernelApp" in getattr(shell, "config", {})


def _has_widgets() -> bool:
    try:
        import ipywidgets  # noqa: F401  (tqdm.notebook needs it)
    except ImportError:
        return False
    return True
