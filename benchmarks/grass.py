#!/usr/bin/env python3
"""kmeans-pipeline side by side with GRASS GIS on one georeferenced scene (issue 13).

Run by hand, never by the tests:

    python benchmarks/grass.py [--scene SCENE.tif] [--workdir .bench/grass] > table.md

The scene defaults to the 8,164 x 7,440 x 3-band uint16 mosaic (60 Mpx, tiled 512, DEFLATE,
nodata 0) that ``../shared/bench/make_scene.py 4`` builds from the Landsat 8 crop; it is built
in ``--workdir`` when missing (``--make-scene`` names the script).  Both sides cluster into
k = 8 classes and write only a label map as a GeoTIFF:

* GRASS GIS (Debian ``grass-core``), in a temporary location made from the scene
  (``grass --tmp-location SCENE --exec``): ``r.external`` (link, no import), ``g.region``,
  ``i.group``, ``i.cluster`` (its defaults: sampling, 30 iterations, convergence 98 %),
  ``i.maxlik`` and ``r.out.gdal`` (tiled DEFLATE GeoTIFF); each step timed in the session.
* ours: ``python -m pipeline run`` on a job file with ``output.labels`` only (no segmented
  image, no masks), default scheduler (threads), the label COG as output.

One harness, `objective`, scores both label maps the same way: the k-means objective, the sum
over valid pixels of the squared distance to the mean of the pixels given the same class (in DN,
all three bands), accumulated exactly in integers over windows of the scene.  A pixel is valid
when no band holds the scene's nodata; a valid pixel a tool left unlabelled is counted apart.
Peak RSS: the largest resident set of the process tree, polled every 20 ms (GRASS runs one
module process after another), and each process's own high-water mark (VmHWM).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from fractions import Fraction

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
MB = 1 << 20
K = 8

GRASS_SCRIPT = """\
set -e
stamp() { date +%s.%N; }
t0=$(stamp)
r.external input="$SCENE" output=scene --quiet
g.region raster=scene.1
i.group group=g subgroup=s input=scene.1,scene.2,scene.3 --quiet
t1=$(stamp)
i.cluster group=g subgroup=s signaturefile=sig classes=$K --quiet
t2=$(stamp)
i.maxlik group=g subgroup=s signaturefile=sig output=classes --quiet
t3=$(stamp)
r.out.gdal input=classes output="$OUT" format=GTiff type=Byte \\
    createopt=COMPRESS=DEFLATE,TILED=YES --quiet --overwrite
t4=$(stamp)
echo "STEPS $t0 $t1 $t2 $t3 $t4"
"""


# ---------------------------------------------------------------------------------------------
# Measuring a process tree


class Measured:
    def __init__(self, seconds: float, peak_tree: int, peak_process: int, stdout: str,
                 stderr: str, returncode: int):
        self.seconds, self.peak_tree, self.peak_process = seconds, peak_tree, peak_process
        self.stdout, self.stderr, self.returncode = stdout, stderr, returncode


def measure(argv: list[str], env: dict | None = None, cwd: str | None = None) -> Measured:
    """Run ``argv``; wall time, the peak RSS of its whole process tree, and the largest VmHWM
    of any process in it."""
    import psutil

    started = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                            cwd=cwd, text=True)
    out: list[str] = []
    err: list[str] = []
    readers = [threading.Thread(target=lambda s=s, into=into: into.append(s.read()), daemon=True)
               for s, into in ((proc.stdout, out), (proc.stderr, err))]
    for reader in readers:
        reader.start()
    peak_tree = peak_process = 0
    root = psutil.Process(proc.pid)
    while proc.poll() is None:
        try:
            members = [root, *root.children(recursive=True)]
        except psutil.Error:
            members = []
        total = 0
        for member in members:
            try:
                total += member.memory_info().rss
                peak_process = max(peak_process, _vm_hwm(member.pid))
            except psutil.Error:
                pass
        peak_tree = max(peak_tree, total)
        time.sleep(0.02)
    seconds = time.perf_counter() - started
    for reader in readers:
        reader.join()
    return Measured(seconds, peak_tree, peak_process, "".join(out), "".join(err),
                    proc.returncode)


def _vm_hwm(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


# ---------------------------------------------------------------------------------------------
# The one objective


def objective(scene: str, labels_path: str) -> dict:
    """The k-means objective of a label map over the scene, exactly (integer sums).

    Returns
    -------
    dict
        ``objective`` (float, DN^2), ``classes`` (how many labels occur), ``valid`` (pixels with
        no band at nodata), ``unlabelled`` (valid pixels the map leaves at its nodata).
    """
    import rasterio
    from rasterio.windows import Window

    sums: dict[int, np.ndarray] = {}
    squares: dict[int, int] = {}
    counts: dict[int, int] = {}
    valid_total = unlabelled = 0
    with rasterio.open(scene) as src, rasterio.open(labels_path) as lab:
        assert (src.width, src.height) == (lab.width, lab.height), "label map size differs"
        nodata = src.nodata
        label_nodata = lab.nodata
        step = 512
        for row in range(0, src.height, step):
            window = Window(0, row, src.width, min(step, src.height - row))
            pixels = src.read(window=window).reshape(src.count, -1).T.astype(np.int64)
            labels = lab.read(1, window=window).ravel().astype(np.int64)
            valid = np.ones(len(labels), bool) if nodata is None else \
                ~(pixels == nodata).any(axis=1)
            labelled = valid if label_nodata is None else valid & (labels != label_nodata)
            valid_total += int(valid.sum())
            unlabelled += int((valid & ~labelled).sum())
            pixels, labels = pixels[labelled], labels[labelled]
            for value in np.unique(labels):
                rows = pixels[labels == value]
                sums[value] = sums.get(value, 0) + rows.sum(axis=0)
                squares[value] = squares.get(value, 0) + int((rows * rows).sum())
                counts[value] = counts.get(value, 0) + len(rows)
    total = Fraction(0)
    for value, count in counts.items():
        # sum ||x - mean||^2 = sum ||x||^2 - ||sum x||^2 / n, exact in integers and fractions
        total += Fraction(squares[value] * count - sum(int(v) ** 2 for v in sums[value]), count)
    return {"objective": float(total), "classes": len(counts), "valid": valid_total,
            "unlabelled": unlabelled}


# ---------------------------------------------------------------------------------------------
# The two sides


def run_grass(scene: str, work: str) -> dict:
    grass = shutil.which("grass")
    if not grass:
        raise SystemExit("grass not found: apt-get install grass-core")
    script = os.path.join(work, "grass_steps.sh")
    with open(script, "w") as handle:
        handle.write(GRASS_SCRIPT)
    out = os.path.join(work, "grass_labels.tif")
    env = {**os.environ, "SCENE": scene, "OUT": out, "K": str(K)}
    measured = measure([grass, "--tmp-location", scene, "--exec", "bash", script], env=env,
                       cwd=work)
    if measured.returncode != 0:
        raise SystemExit(f"GRASS failed ({measured.returncode}): {measured.stderr[-2000:]}")
    stamps = [float(v) for v in next(line for line in measured.stdout.splitlines()
                                     if line.startswith("STEPS")).split()[1:]]
    steps = dict(zip(["link", "i.cluster", "i.maxlik", "write"], np.diff(stamps)))
    return {"measured": measured, "steps": steps, "labels": out}


def run_ours(scene: str, work: str) -> dict:
    out_dir = os.path.join(work, "ours")
    shutil.rmtree(out_dir, ignore_errors=True)
    job = os.path.join(work, "job.yaml")
    with open(job, "w") as handle:
        handle.write(textwrap.dedent(f"""\
            input:
              paths: [{json.dumps(scene)}]
            kmeans:
              k: {K}
              seed: 0
            output:
              dir: {json.dumps(out_dir)}
              segmented: false
              labels: true
              masks: false
              if_exists: overwrite
            """))
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    measured = measure([sys.executable, "-m", "pipeline", "run", job, "-q", "--json"],
                       env=env)
    if measured.returncode != 0:
        raise SystemExit(f"ours failed ({measured.returncode}): {measured.stderr[-2000:]}")
    name = os.path.splitext(os.path.basename(scene))[0]
    return {"measured": measured, "labels": os.path.join(out_dir, "labels", f"{name}.tif")}


def make_scene(script: str, work: str) -> str:
    scene = os.path.join(work, "scene.tif")
    if not os.path.exists(scene):
        subprocess.run([sys.executable, script, "4", scene], check=True)
    return scene


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scene", help="a GeoTIFF; default: make_scene.py 4 in --workdir")
    parser.add_argument("--make-scene", default=os.path.join(ROOT, "..", "shared", "bench",
                                                             "make_scene.py"))
    parser.add_argument("--workdir", default=os.path.join(ROOT, ".bench", "grass"))
    parser.add_argument("--only", choices=["grass", "ours"], help="run one side")
    args = parser.parse_args(argv)
    work = os.path.abspath(args.workdir)
    os.makedirs(work, exist_ok=True)
    scene = os.path.abspath(args.scene) if args.scene else make_scene(args.make_scene, work)
    load = os.getloadavg()
    results = {}
    for side, run in (("GRASS GIS", run_grass), ("kmeans-pipeline", run_ours)):
        if args.only and not side.lower().startswith(args.only[:4]):
            continue
        result = run(scene, work)
        result.update(objective(scene, result["labels"]))
        results[side] = result
        print(f"{side}: {result['measured'].seconds:.1f} s", file=sys.stderr)
    print(table(scene, results, load))
    return 0


def table(scene: str, results: dict, load: tuple) -> str:
    import rasterio

    with rasterio.open(scene) as src:
        size = f"{src.width:,} x {src.height:,} x {src.count} {src.dtypes[0]}"
    lines = [f"Scene: {size} ({os.path.basename(scene)}), k = {K}, labels only. Load average "
             f"at the start: {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} "
             f"({os.cpu_count()} CPUs).", "",
             "| tool | wall s | steps | peak RSS tree MB | largest process MB | objective "
             "(DN^2) | vs GRASS | classes | unlabelled px |",
             "|---|---|---|---|---|---|---|---|---|"]
    grass = results.get("GRASS GIS")
    for side, result in results.items():
        measured = result["measured"]
        steps = ", ".join(f"{k} {v:.1f}" for k, v in result.get("steps", {}).items()) or "-"
        ratio = f"{result['objective'] / grass['objective']:.4f}" if grass else "-"
        lines.append(f"| {side} | {measured.seconds:.1f} | {steps} | "
                     f"{measured.peak_tree / MB:.0f} | {measured.peak_process / MB:.0f} | "
                     f"{result['objective']:.6e} | {ratio} | {result['classes']} | "
                     f"{result['unlabelled']:,} |")
    if grass and "kmeans-pipeline" in results:
        ours = results["kmeans-pipeline"]
        lines += ["", f"Wall time ours / GRASS: "
                      f"{ours['measured'].seconds / grass['measured'].seconds:.2f} "
                      "(target <= 0.20); objective ours / GRASS: "
                      f"{ours['objective'] / grass['objective']:.4f} (target <= 1); peak RSS "
                      f"ours {ours['measured'].peak_tree / MB:.0f} MB (target <= 1024)."]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
