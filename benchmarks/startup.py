#!/usr/bin/env python3
"""Start-up of the CLI (issue 14): ``kmeans-pipeline --version``, and the imports a run makes
before its first task, for a photo job and a raster job.  Run by hand, never by the tests.

    python benchmarks/startup.py                 # best of 5, Markdown to paste in RESULTS.md
    python benchmarks/startup.py --repeat 10

"Imports before the first task": each run is ``pipeline.cli.main(["run", JOB])`` under
``python -X importtime -c``, with a dask callback registered that, when the first task starts,
writes the names in ``sys.modules`` and the seconds since the code started.  The figure is the
sum of ``-X importtime``'s cumulative times of the top-level imports whose module was loaded
by then, less those the interpreter makes before running any code (``-c pass``); the time to
the first task (imports, the job file, listing) is printed beside it.  The
jobs are one 4 x 4 PNG (the photo path) and one 4 x 4 x 3 uint16 GeoTIFF when rasterio is
installed (the raster path, which needs rasterio and numba before its first window).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

# The run, with a probe: a dask callback that, when the first task starts, writes the names in
# sys.modules and the seconds since this code started (after the interpreter's own start-up).
# It imports nothing the CLI does not import before its first task (dask.callbacks, json).
_PROBE = """
import json, sys, time
_T0 = time.perf_counter()
from dask.callbacks import Callback

_done = []


class _First(Callback):
    def _pretask(self, key, dsk, state):
        if not _done:
            _done.append(1)
            with open(sys.argv[1], "w") as handle:
                json.dump({"seconds": time.perf_counter() - _T0,
                           "modules": sorted(sys.modules)}, handle)


_First().register()
from pipeline.cli import main

sys.exit(main(["run", sys.argv[2], "-q"]))
"""


def boot_modules() -> frozenset[str]:
    """The top-level imports the interpreter makes before it runs any code (site, the .pth
    files of the environment): ``python -X importtime -c pass``."""
    done = subprocess.run([sys.executable, "-X", "importtime", "-c", "pass"],
                          capture_output=True, text=True, check=True)
    return frozenset(name for name, _ in _top_level(done.stderr))


def _write_jobs(tmp: str) -> dict[str, str]:
    from PIL import Image

    Image.fromarray(np.arange(48, dtype=np.uint8).reshape(4, 4, 3)).save(
        os.path.join(tmp, "a.png"))
    jobs = {"photo (one 4x4 PNG)": os.path.join(tmp, "a.png")}
    try:
        import rasterio
        from rasterio.transform import from_origin

        path = os.path.join(tmp, "scene.tif")
        with rasterio.open(path, "w", driver="GTiff", width=4, height=4, count=3,
                           dtype="uint16", crs="EPSG:32633",
                           transform=from_origin(500000, 4000000, 30, 30)) as dst:
            dst.write(np.arange(48, dtype=np.uint16).reshape(3, 4, 4) * 100)
        jobs["raster (one 4x4x3 uint16 GeoTIFF)"] = path
    except ImportError:
        pass
    files = {}
    for i, (what, image) in enumerate(jobs.items()):
        job = os.path.join(tmp, f"job{i}.json")
        with open(job, "w") as handle:
            json.dump({"input": {"paths": [image]}, "kmeans": {"k": 2},
                       "output": {"dir": os.path.join(tmp, f"out{i}"),
                                  "if_exists": "overwrite"}}, handle)
        files[what] = job
    return files


def _top_level(stderr: str) -> list[tuple[str, float]]:
    """(module, cumulative seconds) of each top-level import in ``-X importtime`` output."""
    rows = []
    for line in stderr.splitlines():
        if not line.startswith("import time:") or line.count("|") != 2:
            continue
        _, cumulative, name = line.split("|")
        if cumulative.strip().isdigit() and name.startswith(" ") and \
                not name.startswith("  "):
            rows.append((name.strip(), int(cumulative) / 1e6))
    return rows


def measure_run(job: str, tmp: str, boot: frozenset[str]) -> tuple[float, float, float, list[tuple[str, float]]]:
    """(imports before the first task s, first task s, whole run s, the largest of those
    imports) of one ``run`` of ``job``."""
    marker = os.path.join(tmp, "first-task.json")
    if os.path.exists(marker):
        os.unlink(marker)
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-X", "importtime", "-c", _PROBE, marker, job],
                          capture_output=True, text=True, env=env)
    wall = time.perf_counter() - started
    if done.returncode:
        raise SystemExit(f"run failed ({done.returncode}):\n{done.stderr[-2000:]}")
    with open(marker) as handle:
        first = json.load(handle)
    loaded = set(first["modules"])
    # the interpreter's own start-up (site, encodings...) comes before any code of ours
    before = [(name, s) for name, s in _top_level(done.stderr)
              if name in loaded and name not in boot]
    return sum(s for _, s in before), first["seconds"], wall, \
        sorted(before, key=lambda r: -r[1])[:4]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5, help="best of")
    args = parser.parse_args(argv)
    cli = [sys.executable, "-m", "pipeline"]
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    version = float("inf")
    for _ in range(max(args.repeat, 5)):
        started = time.perf_counter()
        subprocess.run([*cli, "--version"], capture_output=True, check=True, env=env)
        version = min(version, time.perf_counter() - started)
    print("#### Start-up\n")
    print(f"Load average at the start: {' / '.join(f'{v:.2f}' for v in os.getloadavg())}.\n")
    print("| measurement | s | target | verdict |")
    print("|---|---|---|---|")
    print(f"| `python -m pipeline --version` (process wall, best of {max(args.repeat, 5)}) | "
          f"{version:.3f} | <= 0.15 | {'met' if version <= 0.15 else '**missed**'} |")
    boot = boot_modules()
    with tempfile.TemporaryDirectory() as tmp:
        for what, job in _write_jobs(tmp).items():
            runs = [measure_run(job, tmp, boot) for _ in range(args.repeat)]
            imports, first, wall, largest = min(runs, key=lambda r: r[0])
            top = ", ".join(f"{name} {s:.3f}" for name, s in largest)
            print(f"| {what}: imports before the first task (best of {args.repeat}; largest: "
                  f"{top}) | {imports:.3f} | <= 0.3 | "
                  f"{'met' if imports <= 0.3 else '**missed**'} |")
            print(f"| {what}: code start to the first task / whole run (importtime on) "
                  f"| {min(r[1] for r in runs):.3f} / {min(r[2] for r in runs):.3f} | | |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
