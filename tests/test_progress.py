"""Progress display: a throttled tqdm bar on a terminal, tqdm's widget in a Jupyter kernel,
plain lines in logs, nothing for the API in a script."""

from __future__ import annotations

import io
import sys
import types

import pytest

from pipeline import progress


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture
def kernel(monkeypatch):
    """This process looks like a Jupyter kernel to IPython's get_ipython()."""
    import IPython

    shell = types.SimpleNamespace(config={"IPKernelApp": {}})
    monkeypatch.setattr(IPython, "get_ipython", lambda: shell)


def test_terminal_bar_is_throttled_not_redrawn_per_image():
    stream = Terminal()
    bar = progress.progress_for(stream)
    assert isinstance(bar, progress.Bar) and not bar.notebook
    bar.phase("segment", 2000, 2000 * 50_000)
    for _ in range(2000):
        bar.advance(1, 50_000)
    text = stream.getvalue()
    assert text.count("\r") < 20  # tqdm redraws at most every 0.5 s, plus open and close
    assert "segment: 100%" in text and "2000/2000 images, 100.0/100.0 Mpx" in text


def test_each_phase_gets_its_own_bar():
    stream = Terminal()
    bar = progress.progress_for(stream)
    for name in ("sample", "segment"):
        bar.phase(name, 3, 300)
        for _ in range(3):
            bar.advance(1, 100)
    lines = [line.rsplit("\r", 1)[-1] for line in stream.getvalue().split("\n")[:-1]]
    assert [line.split(":")[0] for line in lines] == ["sample", "segment"]
    assert all("3/3 images" in line for line in lines)


def test_log_lines_print_a_finished_phase_once():
    # The example run printed "sample: 5/5 images ..." twice: an advance after the last image
    # (nothing more done) printed the finished line again.
    stream = io.StringIO()
    lines = progress.progress_for(stream, lines=True)
    lines.phase("sample", 2, 10)
    for images, pixels in ((1, 5), (1, 5), (0, 0), (0, 0)):
        lines.advance(images, pixels)
    assert stream.getvalue().count("sample: 2/2 images") == 1


def test_log_stream_gets_plain_lines_and_the_api_gets_none():
    stream = io.StringIO()
    lines = progress.progress_for(stream, lines=True)
    lines.phase("segment", 2, 10)
    lines.advance(1, 5)
    lines.advance(1, 5)
    assert stream.getvalue().startswith("segment: 2/2 images") and "\r" not in stream.getvalue()
    assert progress.progress_for(io.StringIO()) is None


def test_notebook_uses_the_widget_when_ipywidgets_is_installed(kernel):
    bar = progress.progress_for(io.StringIO())
    assert isinstance(bar, progress.Bar) and bar.notebook
    bar.phase("segment", 2, 10)
    assert bar.bar is None  # drawn at the first image
    bar.advance(1, 5)
    from tqdm.notebook import tqdm as notebook_tqdm

    assert isinstance(bar.bar, notebook_tqdm)
    bar.advance(1, 5)
    assert bar.bar is None  # closed at the end of the phase


def test_notebook_without_ipywidgets_falls_back_to_the_plain_bar(kernel, monkeypatch):
    monkeypatch.setitem(sys.modules, "ipywidgets", None)  # import fails as if not installed
    stream = io.StringIO()
    bar = progress.progress_for(stream)
    assert isinstance(bar, progress.Bar) and not bar.notebook
    bar.phase("segment", 1, 10)
    bar.advance(1, 10)
    assert "segment: 100%" in stream.getvalue()


def test_the_cli_on_a_terminal_draws_tqdm_bars(tmp_path, collection, monkeypatch):
    from conftest import write_job
    from pipeline.cli import main

    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    assert main(["run", write_job(tmp_path, output={"masks": False})]) == 0
    text = terminal.getvalue()
    bars = [line.rsplit("\r", 1)[-1] for line in text.split("\n") if "%|" in line]
    assert [bar.split(":")[0] for bar in bars] == ["sample", "segment"]
    assert all("100%|" in bar and "5/5 images" in bar for bar in bars)
    assert "done: 5 image(s) ok" in text
