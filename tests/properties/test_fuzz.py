"""Fuzzing bad input (issue 3): damaged image bytes and random job files never get past the
CLI as a traceback, never hang (each test is time-boxed by pytest-timeout) and never leave a
partial file.  Everything runs in-process with a bounded number of examples."""

from __future__ import annotations

import contextlib
import io
import os
import tempfile

import pytest
import yaml
from hypothesis import event, given, settings
from hypothesis import strategies as st

import badfiles
from pipeline.cli import main
from pipeline.config import example_keys
from pipeline.errors import ImageReadError
from pipeline.sources.photos import decode, read_header

SOURCES = {"png": badfiles.png_bytes(badfiles.photo(12, 16)),
           "jpg": badfiles.jpeg_bytes(badfiles.photo(16, 16))}
MAX_PIXELS = 20_000  # a damaged header may claim any size: keep what a decode may allocate small


@st.composite
def damaged_image(draw) -> tuple[str, bytes]:
    """A valid PNG or JPEG with 1-4 random edits: bytes overwritten, inserted, deleted, or
    the file cut short."""
    suffix = draw(st.sampled_from(sorted(SOURCES)))
    data = bytearray(SOURCES[suffix])
    for _ in range(draw(st.integers(1, 4))):
        if not data:
            break
        pos = draw(st.integers(0, len(data) - 1))
        edit = draw(st.sampled_from(["overwrite", "insert", "delete", "cut"]))
        if edit == "overwrite":
            chunk = draw(st.binary(min_size=1, max_size=8))
            data[pos:pos + len(chunk)] = chunk
        elif edit == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=8))
        elif edit == "delete":
            del data[pos:pos + draw(st.integers(1, 16))]
        else:
            del data[pos:]
    return suffix, bytes(data)


def _cli(argv: list[str]) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main(argv)
    return code, err.getvalue()


def _assert_no_crash(code: int, err: str) -> None:
    assert "Traceback" not in err and "unexpected internal error" not in err, err
    assert code in (0, 1, 2, 3)
    assert all(line.startswith(("error: ", "skipped: ", "  ", "done: ", "WARNING: ",
                                "sample: ", "segment: ", "fit+segment: ", "check: ",
                                "resample: ", "dask dashboard: "))
               for line in err.splitlines() if line), err


@pytest.mark.timeout(120)
@settings(max_examples=150)
@given(damaged_image())
def test_damaged_bytes_decode_or_raise_one_clear_error(case):
    suffix, data = case
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, f"x.{suffix}")
        with open(path, "wb") as handle:
            handle.write(data)
        try:
            info, _ = read_header(path, "x", 0, 1.0, MAX_PIXELS)
            pixels = decode(info)
        except ImageReadError as exc:
            assert "\n" not in str(exc) and str(exc)
            return
        assert pixels.shape == (info.height, info.width, 3) and pixels.dtype.name == "uint8"


@pytest.mark.timeout(180)
@settings(max_examples=20)
@given(damaged_image(), st.sampled_from(["skip", "fail"]))
def test_damaged_bytes_through_the_cli_never_crash_or_leave_partial_files(case, on_error):
    suffix, data = case
    with tempfile.TemporaryDirectory() as folder:
        badfiles.good_png(os.path.join(folder, "images", "good.png"), badfiles.photo(10, 12))
        with open(os.path.join(folder, "images", f"damaged.{suffix}"), "wb") as handle:
            handle.write(data)
        job = os.path.join(folder, "job.yaml")
        with open(job, "w") as handle:
            yaml.safe_dump({"input": {"paths": ["images"], "on_error": on_error,
                                      "max_pixels": MAX_PIXELS},
                            "kmeans": {"k": 2, "n_init": 1}, "output": {"dir": "out"}}, handle)
        code, err = _cli(["run", job])
        event(f"on_error {on_error}: exit {code}")
        _assert_no_crash(code, err)
        assert code in ((0, 3) if on_error == "skip" else (0, 1))
        badfiles.assert_outputs_complete(os.path.join(folder, "out"))


KEYS = example_keys()
_WORDS = ["threads", "synchronous", "rgb", "lab", "image", "collection", "lloyd", "minibatch",
          "skip", "fail", "overwrite", "resume", "images", "images/", "out", "k-means++",
          "random", "always", "never", "auto", "1GiB", "**/*.png", "nothere.json"]
values = st.one_of(
    st.none(), st.booleans(), st.integers(-3, 12),
    st.floats(min_value=-2, max_value=1e6), st.just(float("nan")), st.sampled_from(_WORDS),
    st.text(max_size=10), st.lists(st.sampled_from(_WORDS), max_size=3),
    st.dictionaries(st.text(max_size=6), st.integers(), max_size=2))
plausible = st.one_of(st.integers(1, 8), st.booleans(), st.sampled_from(_WORDS),
                      st.floats(0.01, 4))  # often a valid value for a known key
keys = st.one_of(st.sampled_from(sorted({k for ks in KEYS.values() for k in ks})),
                 st.text(min_size=1, max_size=8))
sections = st.one_of(st.sampled_from(sorted(KEYS)), st.text(min_size=1, max_size=8))


@st.composite
def job_file(draw) -> str:
    """A job file: random text, or a small valid job with random keys and values over it."""
    if draw(st.integers(0, 9)) == 0:
        return draw(st.text(max_size=60))
    job = {"input": {"paths": ["images"], "max_pixels": MAX_PIXELS},
           "kmeans": {"k": 2, "n_init": 1, "sample_pixels": 400, "max_iter": 10},
           "output": {"dir": "out"}}
    for _ in range(draw(st.integers(0, 4))):
        kind = draw(st.sampled_from(["known", "known", "known", "random", "section"]))
        if kind == "known":
            section = draw(st.sampled_from(sorted(KEYS)))
            key = draw(st.sampled_from(KEYS[section]))
        else:
            section, key = draw(sections), draw(keys)
        if kind == "section":
            job[section] = draw(values)
            continue
        if not isinstance(job.get(section), dict):
            job[section] = {}
        job[section][key] = draw(plausible if kind == "known" and draw(st.booleans()) else values)
    return yaml.safe_dump(job)


@pytest.mark.timeout(180)
@settings(max_examples=60)
@given(job_file(), st.sampled_from(["validate", "run"]))
def test_random_job_files_never_crash_hang_or_leave_partial_files(text, command):
    with tempfile.TemporaryDirectory() as folder:
        badfiles.good_png(os.path.join(folder, "images", "a.png"), badfiles.photo(10, 12))
        badfiles.good_jpeg(os.path.join(folder, "images", "b.jpg"), badfiles.photo(8, 8, 1))
        job = os.path.join(folder, "job.yaml")
        with open(job, "w", encoding="utf-8") as handle:
            handle.write(text)
        code, err = _cli([command, job])
        event(f"{command}: exit {code}")
        _assert_no_crash(code, err)
        if code == 2:
            assert err.startswith("error: ")
        for root, dirs, _ in os.walk(folder):
            for name in dirs:
                if os.path.exists(os.path.join(root, name, "report.json")):
                    badfiles.assert_outputs_complete(os.path.join(root, name))
