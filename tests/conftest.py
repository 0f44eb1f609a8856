"""Shared fixtures and helpers: synthetic images with known colours, job files, running the CLI
and reading what it wrote, a real LocalCluster."""

from __future__ import annotations

import contextlib
import io
import json
import os
from dataclasses import dataclass

# scikit-learn's check_estimator runs its array API check (array API dispatch with numpy
# input must change no result) only when scipy's array API support is on, which scipy reads
# once, at its import: without this the check is skipped (tests/test_estimator.py).
os.environ.setdefault("SCIPY_ARRAY_API", "1")

import numpy as np
import pytest
import yaml
from hypothesis import settings
from PIL import Image

settings.register_profile("pipeline", deadline=None, max_examples=60)
settings.load_profile("pipeline")

# Four well separated colours; blocks of them make images whose true labels we know.
COLOURS = np.array([[200, 30, 40], [20, 160, 60], [30, 60, 210], [240, 220, 200]], np.uint8)


def blocks_image(layout: np.ndarray, colours: np.ndarray = COLOURS, noise: int = 2,
                 seed: int = 0) -> np.ndarray:
    """An RGB image whose pixel (y, x) has colour ``colours[layout[y, x]]`` plus noise in
    [-noise, noise] (symmetric, so each colour's mean stays at its true value)."""
    rng = np.random.default_rng(seed)
    pixels = colours[layout].astype(np.int16)
    if noise:
        pixels += rng.integers(-noise, noise + 1, pixels.shape, dtype=np.int16)
    return np.clip(pixels, 0, 255).astype(np.uint8)


def layout(height: int, width: int, n_colours: int, seed: int) -> np.ndarray:
    """Random rectangles of colour indices 0..n_colours-1 (every index present)."""
    rng = np.random.default_rng(seed)
    labels = np.zeros((height, width), np.int64)
    for j in range(1, n_colours):
        y0, x0 = rng.integers(0, height // 2), rng.integers(0, width // 2)
        labels[y0:y0 + height // 2, x0:x0 + width // 2] = j
    labels.flat[:n_colours] = np.arange(n_colours)
    return labels


def save(path, pixels: np.ndarray) -> str:
    os.makedirs(os.path.dirname(str(path)), exist_ok=True)
    Image.fromarray(pixels).save(str(path))
    return str(path)


@pytest.fixture
def collection(tmp_path):
    """Five PNG images of known colours (different sizes) in tmp_path/images.

    Returns the folder and {name: true layout}.
    """
    truth = {}
    for i, (h, w) in enumerate([(40, 60), (33, 47), (64, 64), (20, 90), (50, 31)]):
        lay = layout(h, w, len(COLOURS), seed=i)
        save(tmp_path / "images" / f"img{i}.png", blocks_image(lay, seed=i))
        truth[f"img{i}"] = lay
    return tmp_path / "images", truth


def write_job(folder, **sections) -> str:
    """A job file in ``folder`` from section mappings; returns its path."""
    job = {"input": {"paths": ["images/"]}, "kmeans": {"k": 4, "seed": 0},
           "output": {"dir": "out"}}
    for name, values in sections.items():
        job.setdefault(name, {}).update(values)
    path = os.path.join(str(folder), "job.yaml")
    with open(path, "w") as handle:
        yaml.safe_dump(job, handle)
    return path


@dataclass(frozen=True)
class CliResult:
    """What one in-process ``kmeans-pipeline`` call did."""

    code: int
    out: str
    err: str

    @property
    def lines(self) -> list[str]:
        """The non-empty lines of stderr (errors, warnings, progress)."""
        return error_lines(self.err)

    def json(self) -> dict:
        """stdout as the one JSON object ``--json`` (or ``schema``) prints."""
        return json.loads(self.out)


def run_cli(*argv: str) -> CliResult:
    """``kmeans-pipeline ARGV...`` in-process, with its exit status, stdout and stderr."""
    from pipeline.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(argv))
    return CliResult(code, out.getvalue(), err.getvalue())


def error_lines(text: str) -> list[str]:
    """The non-empty lines of ``text`` (what the CLI printed to stderr)."""
    return [line for line in text.splitlines() if line]


# A fresh interpreter runs the CLI on a job; a dask callback notes sys.modules when the first
# task starts (as benchmarks/startup.py does), and the run's end notes them again.
_MODULES_CHILD = """
import json, sys
from dask.callbacks import Callback

first = []


class _First(Callback):
    def _pretask(self, key, dsk, state):
        if not first:
            first.append(sorted(sys.modules))


_First().register()
from pipeline.cli import main

code = main(["run", sys.argv[1], "-q"])
print(json.dumps({"code": code, "first_task": first[0] if first else None,
                  "end": sorted(sys.modules)}))
"""


def modules_of_run(job: str) -> dict:
    """``{"code": exit status, "first_task": modules loaded when the first task starts,
    "end": modules loaded at the end}`` of ``kmeans-pipeline run JOB`` in a new interpreter."""
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    child = subprocess.run([sys.executable, "-c", _MODULES_CHILD, str(job)], text=True,
                           capture_output=True, env={**os.environ, "PYTHONPATH": root},
                           timeout=120)
    assert child.returncode == 0, child.stderr
    return json.loads(child.stdout.splitlines()[-1])


def modules_imported_by(*names: str) -> set[str]:
    """What importing ``names`` loads in a new interpreter (what a dependency imports itself:
    dask's importlib_metadata imports email in some environments, rasterio boto3)."""
    import subprocess
    import sys

    code = f"import sys, {', '.join(names)}; print(*sys.modules)"
    return set(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              check=True).stdout.split())


def read_json(folder, name: str = "report.json") -> dict:
    """An output JSON file (report.json, model.json, ...) of the output folder ``folder``."""
    with open(os.path.join(str(folder), name), encoding="utf-8") as handle:
        return json.load(handle)


@pytest.fixture(scope="session")
def local_cluster():
    """One real LocalCluster for the whole run: 2 workers x 1 thread on 127.0.0.1."""
    from distributed import LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, host="127.0.0.1",
                      dashboard_address=None, processes=True) as cluster:
        yield cluster
