"""The built wheel: SPDX licence metadata, the LICENSE file, classifiers, py.typed, every module."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BUILT = ("_kernels*.so", "_kernels*.pyd")  # setup.py's module, when built in the checkout


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> zipfile.ZipFile:
    """A wheel built from a copy of the source tree (the checkout gets no build/ or egg-info),
    with the kernels compiled ahead of time (setup.py: about a minute)."""
    src = tmp_path_factory.mktemp("src")
    for name in ("pyproject.toml", "setup.py", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(ROOT / "pipeline", src / "pipeline",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc", *BUILT))
    dist = tmp_path_factory.mktemp("dist")
    # No build isolation: the test env's setuptools (the test extra asks for >= 77) and numba
    # build it, so the test needs no network.
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps",
                           "--no-build-isolation", "-q", str(src), "-w", str(dist)],
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr
    (path,) = dist.glob("kmeans_pipeline-*.whl")
    with zipfile.ZipFile(path) as archive:
        yield archive


def _metadata(wheel: zipfile.ZipFile):
    (name,) = [n for n in wheel.namelist() if n.endswith(".dist-info/METADATA")]
    return Parser().parsestr(wheel.read(name).decode())


def test_licence_is_an_spdx_expression_with_the_license_file(wheel):
    meta = _metadata(wheel)
    assert meta["License-Expression"] == "BSD-3-Clause"
    assert meta.get_all("License-File") == ["LICENSE"]
    (licence,) = [n for n in wheel.namelist() if n.endswith(".dist-info/licenses/LICENSE")]
    text = wheel.read(licence).decode()
    assert text.startswith("BSD 3-Clause License")
    assert "the kmeans-pipeline authors" in text
    # Core metadata 2.4: with License-Expression, licence classifiers are not allowed.
    assert not [c for c in meta.get_all("Classifier") if c.startswith("License ::")]


def test_classifiers_name_python_versions_and_topics(wheel):
    classifiers = _metadata(wheel).get_all("Classifier")
    assert "Programming Language :: Python :: 3.11" in classifiers
    assert "Topic :: Scientific/Engineering :: Image Processing" in classifiers
    assert "Typing :: Typed" in classifiers


def test_no_project_urls_are_declared(wheel):
    meta = _metadata(wheel)
    assert meta.get_all("Project-URL") is None and meta["Home-page"] is None


def test_wheel_holds_py_typed_and_every_file_of_the_package(wheel):
    names = set(wheel.namelist())
    assert "pipeline/py.typed" in names
    tree = {p.relative_to(ROOT).as_posix() for p in (ROOT / "pipeline").rglob("*")
            if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"
            and not any(p.match(pattern) for pattern in BUILT)}
    missing = sorted(tree - names)
    assert not missing, (f"not in the wheel: {missing}; add them to "
                         "[tool.setuptools.package-data] in pyproject.toml")


def test_wheel_holds_the_kernels_built_ahead_of_time(wheel):
    """setup.py compiled every kernel variant into the wheel (`pipeline.engine._kernels`)."""
    built = [n for n in wheel.namelist() if n.startswith("pipeline/engine/_kernels")]
    assert len(built) == 1 and built[0].endswith((".so", ".pyd")), wheel.namelist()
    assert not any(n.endswith((".c", ".o")) for n in wheel.namelist())


def test_console_script_points_at_cli_entry(wheel):
    (name,) = [n for n in wheel.namelist() if n.endswith(".dist-info/entry_points.txt")]
    assert "kmeans-pipeline = pipeline.cli:entry" in wheel.read(name).decode()
