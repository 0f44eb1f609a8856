#!/usr/bin/env python3
"""kmeans-pipeline side by side with GRASS GIS on one georeferenced scene, and on a 40,000^2
mosaic against the serial floor and dask-ml (issue 13, section 3); ratios from one run, printed
as Markdown (paste into benchmarks/RESULTS.md).  Run by hand, never by the tests.

Commands (from the project root; the full run wants a quiet machine):

    python benchmarks/grass.py --quick            # check: the crop alone, a 4,096^2 mosaic
    python benchmarks/grass.py make --mosaic-size 8192   # time the mosaic builder, extrapolated
    python benchmarks/grass.py                    # full: 60 Mpx side by side + 40,000^2 mosaic
    python benchmarks/grass.py --parts mosaic     # a subset (grass, ours, mosaic)

Paths default relative to the project root (``--make-scene``: ../shared/bench/make_scene.py;
``--crop``: the Landsat 8 crop in ../shared/rasters/landsat8/); outputs go to ``.bench/grass``.

Side by side: the scene defaults to the 8,164 x 7,440 x 3-band uint16 mosaic (60 Mpx, tiled
512, DEFLATE, nodata 0) that ``make_scene.py 4`` builds from the Landsat 8 crop (``--quick``:
``make_scene.py 1``, the crop itself); built in ``--workdir`` when missing.  Both sides cluster
into k = 8 classes and write only a label map as a GeoTIFF:

* GRASS GIS (Debian ``grass-core``), in a temporary location made from the scene
  (``grass --tmp-location SCENE --exec``): ``r.external`` (link, no import), ``g.region``,
  ``i.group``, ``i.cluster`` (its defaults: sampling, 30 iterations, convergence 98 %),
  ``i.maxlik`` and ``r.out.gdal`` (tiled DEFLATE GeoTIFF); each step timed in the session.
* ours: ``python -m pipeline run`` on a job file with ``output.labels`` only (no segmented
  image, no masks), threads scheduler, the label COG as output.

One harness, `objective` (`rasterbench.Objective`), scores both label maps the same way: the
k-means objective, the sum over valid pixels of the squared distance to the mean of the pixels
given the same class (in DN, all three bands).  A pixel is valid when no band holds the scene's
nodata; a valid pixel a tool left unlabelled is counted apart.  Peak RSS: the largest resident
set of the process tree, polled every 20 ms (GRASS runs one module process after another), and
each process's own high-water mark (VmHWM).

The mosaic (``--mosaic-size``, default 40,000; built once, cached): the crop tiled about 20 x 22
times with mirrored copies as make_scene.py does (make_scene.py itself tiles N x N whole crops,
so it cannot give 40,000 x 40,000, and writes windows across blocks), tiled 512, DEFLATE with
predictor 2, nodata 0, the crop's CRS and pixel size.  Measured on it: ours (CLI, threads,
labels only, a label COG) against the floor (in one process, serially: read every block once
with rasterio, one matrix-form float32 assignment pass with our centroids, write the label COG
as our sink does: tiled stage, then GDAL's COG driver, DEFLATE level 1, nearest overviews);
targets <= 1.5 x floor and peak RSS <= 1.5 GB.  Then dask-ml ``KMeans`` (k-means||, Lloyd
iterations capped by ``--dask-ml-max-iter``) fit + predict on the same scene as the rioxarray
workflow builds it: rasterio windows (512 x 8,192, block-aligned) into a dask array, float32
pixel rows, threads scheduler.  It is stopped at ``--dask-ml-factor`` (25) times our wall time
(``--dask-ml-timeout`` sets seconds), which already decides the ">= 20x" target; a stopped run
is reported as a lower bound.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np

import rasterbench as rb

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
MB = rb.MB
K = 8
BLOCK = 512  # the mosaic's blocks, and our label COG's
MODULES = ["pipeline", "numpy", "rasterio", "dask", "dask_ml"]

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
# The one objective


def objective(scene: str, labels_path: str) -> dict:
    """The k-means objective of a label map over the scene (`rasterbench.Objective`).

    Returns
    -------
    dict
        ``objective`` (float, DN^2), ``classes`` (how many labels occur), ``valid`` (pixels with
        no band at nodata), ``unlabelled`` (valid pixels the map leaves at its nodata).
    """
    import rasterio
    from rasterio.windows import Window

    total = None
    valid_total = unlabelled = 0
    with rasterio.open(scene) as src, rasterio.open(labels_path) as lab:
        if (src.width, src.height) != (lab.width, lab.height):
            raise SystemExit(f"{labels_path}: label map size differs from {scene}")
        nodata, label_nodata = src.nodata, lab.nodata
        total = rb.Objective(src.count)
        step = 512
        for row in range(0, src.height, step):
            window = Window(0, row, src.width, min(step, src.height - row))
            pixels = src.read(window=window).reshape(src.count, -1).T
            labels = lab.read(1, window=window).ravel()
            valid = np.ones(len(labels), bool) if nodata is None else \
                ~(pixels == nodata).any(axis=1)
            labelled = valid if label_nodata is None else valid & (labels != label_nodata)
            valid_total += int(valid.sum())
            unlabelled += int((valid & ~labelled).sum())
            total.add(pixels[labelled], labels[labelled])
    result = total.result()
    return {"objective": result["objective"], "classes": result["classes"],
            "valid": valid_total, "unlabelled": unlabelled}


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
    measured = rb.measure([grass, "--tmp-location", scene, "--exec", "bash", script], env=env,
                       cwd=work)
    if measured.returncode != 0:
        raise SystemExit(f"GRASS failed ({measured.returncode}): {measured.stderr[-2000:]}")
    stamps = [float(v) for v in next(line for line in measured.stdout.splitlines()
                                     if line.startswith("STEPS")).split()[1:]]
    steps = dict(zip(["link", "i.cluster", "i.maxlik", "write"], np.diff(stamps)))
    return {"measured": measured, "steps": steps, "labels": out}


def run_ours(scene: str, work: str, name: str = "ours") -> dict:
    return rb.run_cli(scene, work, name, K, {"scheduler": "threads"})


def make_scene(script: str, work: str, tiles: int) -> str:
    scene = os.path.join(work, f"scene-{tiles}.tif")
    if not os.path.exists(scene):
        subprocess.run([sys.executable, script, str(tiles), scene + ".part.tif"], check=True,
                       stdout=subprocess.DEVNULL)
        os.replace(scene + ".part.tif", scene)
    return scene


# ---------------------------------------------------------------------------------------------
# The 40,000^2 mosaic: building it, the floor, dask-ml


def build_mosaic(crop: str, size: int, out: str) -> dict:
    """Tile the Landsat crop with mirrored copies (as make_scene.py does, so edges match) into
    a size^2 x 3 uint16 GeoTIFF, tiled 512, DEFLATE with predictor 2, nodata 0, written one row
    of blocks at a time (one 512-row band, 123 MB at 40,000 wide, is the most held)."""
    import rasterio
    from rasterio.windows import Window

    started = time.perf_counter()
    with rasterio.open(crop) as src:
        data = src.read()
        profile = src.profile
    bands, height, width = data.shape
    profile.update(width=size, height=size, tiled=True, blockxsize=BLOCK, blockysize=BLOCK,
                   compress="deflate", predictor=2, nodata=0, BIGTIFF="YES")
    mirror = lambda n, period: np.where(np.arange(n) % (2 * period) < period,  # noqa: E731
                                        np.arange(n) % (2 * period),
                                        2 * period - 1 - np.arange(n) % (2 * period))
    rows, cols = mirror(size, height), mirror(size, width)
    with rasterio.Env(GDAL_NUM_THREADS="ALL_CPUS"), \
            rasterio.open(out + ".part.tif", "w", **profile) as dst:
        for row in range(0, size, BLOCK):
            band = data[:, rows[row:row + BLOCK]][:, :, cols]
            dst.write(band, window=Window(0, row, size, band.shape[1]))
    os.replace(out + ".part.tif", out)
    return {"seconds": time.perf_counter() - started, "bytes": os.path.getsize(out)}


def child_floor(scene: str, model_json: str, out: str) -> dict:
    """Serially: read every block once, one matrix-form float32 assignment pass (BLAS), write
    the label COG as our sink does (tiled stage, then GDAL's COG driver: DEFLATE level 1,
    512 blocks, nearest overviews)."""
    import rasterio
    import rasterio.shutil

    with open(model_json) as handle:
        doc = json.load(handle)
    centroids = np.asarray(doc.get("centroids_native") or doc["centroids"], np.float32)
    c2 = (centroids ** 2).sum(axis=1)
    stage = out + ".stage.tif"
    started = time.perf_counter()
    with rasterio.open(scene) as src:
        profile = {"driver": "GTiff", "height": src.height, "width": src.width, "count": 1,
                   "dtype": "uint8", "tiled": True, "blockxsize": BLOCK, "blockysize": BLOCK,
                   "compress": "deflate", "zlevel": 1, "BIGTIFF": "IF_SAFER", "nodata": 255,
                   "crs": src.crs, "transform": src.transform}
        with rasterio.open(stage, "w", **profile) as dst:
            for _, window in src.block_windows(1):
                block = src.read(window=window)
                pixels = block.reshape(src.count, -1).T
                distances = c2[None, :] - 2 * (pixels.astype(np.float32) @ centroids.T)
                labels = distances.argmin(axis=1).astype(np.uint8)
                labels[(pixels == src.nodata).any(axis=1)] = 255
                dst.write(labels.reshape(1, *block.shape[1:]), window=window)
    with rasterio.Env(GDAL_CACHEMAX=256):
        rasterio.shutil.copy(stage, out, driver="COG", COMPRESS="DEFLATE", LEVEL=1,
                             BLOCKSIZE=BLOCK, RESAMPLING="NEAREST",
                             OVERVIEWS="IGNORE_EXISTING", BIGTIFF="IF_SAFER")
    os.unlink(stage)
    return {"seconds": time.perf_counter() - started}


class _Windows:
    """A lazily read raster (height, width, bands) for `dask.array.from_array`, as rioxarray
    gives one: each slice is one rasterio window read, the dataset opened per read (GDAL
    handles are not shared between threads)."""

    def __init__(self, path: str):
        import rasterio

        self.path = path
        with rasterio.open(path) as src:
            self.shape = (src.height, src.width, src.count)
            self.dtype = np.dtype(src.dtypes[0])
        self.ndim = 3

    def __getitem__(self, key: tuple) -> np.ndarray:
        import rasterio
        from rasterio.windows import Window

        rows, cols = key[0], key[1]
        with rasterio.open(self.path) as src:
            window = Window(cols.start, rows.start, cols.stop - cols.start,
                            rows.stop - rows.start)
            return np.moveaxis(src.read(window=window), 0, -1)[(slice(None), slice(None),
                                                                 key[2])]


def child_dask_ml(scene: str, max_iter: int) -> dict:
    """dask-ml ``KMeans`` fit + predict on pixel rows of the scene, float32, read through
    rasterio windows of 512 x 8,192 (block-aligned, 4 Mpx) into dask."""
    import dask.array as da
    from dask_ml.cluster import KMeans

    lazy = _Windows(scene)
    image = da.from_array(lazy, chunks=(BLOCK, 16 * BLOCK, lazy.shape[2]), asarray=False,
                          fancy=False)
    rows = da.concatenate([image.blocks[i, j].reshape(-1, lazy.shape[2])
                           for i in range(image.numblocks[0])
                           for j in range(image.numblocks[1])]).astype(np.float32)
    return rb.fit_predict_dask(KMeans(n_clusters=K, max_iter=max_iter, random_state=0), rows,
                               max_iter)


CHILDREN = {"floor": child_floor, "dask-ml": child_dask_ml}


def mosaic_rows(args: argparse.Namespace, work: str, size: int) -> list[str]:
    mosaic = os.path.join(work, f"mosaic-{size}.tif")
    made = None
    if not os.path.exists(mosaic):
        made = build_mosaic(os.path.abspath(args.crop), size, mosaic)
    ours = run_ours(mosaic, work, "mosaic")
    m = ours["measured"]
    floor = rb.run_child(__file__, "floor", mosaic, ours["model"],
                         os.path.join(work, "floor-labels.tif"))
    floor_s = floor.json()["seconds"]
    ratio = m.seconds / floor_s
    timeout = args.dask_ml_timeout or max(120.0, args.dask_ml_factor * m.seconds)
    dask_ml = rb.run_child(__file__, "dask-ml", mosaic, args.dask_ml_max_iter,
                           timeout=timeout)
    lines = [f"#### {size:,} x {size:,} x 3 uint16 mosaic of the Landsat 8 crop "
             f"({size * size * 6 / 2**30:.1f} GiB raw, {os.path.getsize(mosaic) / 2**30:.2f} "
             f"GiB DEFLATE), k = {K}, labels only", "",
             "| measurement | seconds | peak RSS MB | ratio | target | verdict |",
             "|---|---|---|---|---|---|"]
    if made:
        lines.append(f"| building the mosaic (this run) | {made['seconds']:.1f} | | | | |")
    lines += [f"| floor: read every block, one float32 BLAS assignment, write the label COG "
              f"(serial) | {floor_s:.1f} | {floor.peak_root / MB:.0f} | 1.00 | | |",
              f"| ours, CLI, threads (label COG) | {m.seconds:.1f} | {m.peak_tree / MB:.0f} | "
              f"{ratio:.2f} x floor | <= 1.5 x floor, <= 1536 MB | {rb.verdict(ratio <= 1.5)}, "
              f"{rb.verdict(m.peak_tree <= 1536 * MB)} |"]
    if dask_ml.timed_out:
        lines.append(f"| dask-ml KMeans, rasterio windows into dask (fit + predict) | > "
                     f"{timeout:.0f} (stopped) | {dask_ml.peak_tree / MB:.0f} | >= "
                     f"{timeout / m.seconds:.1f}x ours | >= 20x ours | "
                     f"{'met' if timeout / m.seconds >= 20 else 'unknown (stopped early)'} |")
    else:
        r = dask_ml.json()
        capped = " (capped)" if r["capped"] else ""
        lines.append(f"| dask-ml KMeans, rasterio windows into dask (fit {r['fit_s']:.0f} s, "
                     f"{r['n_iter']} iterations{capped}, predict {r['predict_s']:.0f} s) | "
                     f"{dask_ml.seconds:.1f} | {dask_ml.peak_tree / MB:.0f} | "
                     f"{dask_ml.seconds / m.seconds:.1f}x ours | >= 20x ours | "
                     f"{rb.verdict(dask_ml.seconds / m.seconds >= 20)} |")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", nargs="?", default="run", choices=["run", "make", "_child"])
    parser.add_argument("child", nargs="*", help=argparse.SUPPRESS)
    parser.add_argument("--quick", action="store_true",
                        help="make_scene.py 1 (the crop alone) and a 4,096^2 mosaic")
    parser.add_argument("--scene", help="a GeoTIFF; default: make_scene.py 4 in --workdir")
    parser.add_argument("--make-scene", default=os.path.join(ROOT, "..", "shared", "bench",
                                                             "make_scene.py"))
    parser.add_argument("--crop", default=_default_crop(),
                        help="the Landsat 8 crop the mosaic tiles")
    parser.add_argument("--mosaic-size", type=int, help="mosaic side (default 40000)")
    parser.add_argument("--parts", default="grass,ours,mosaic")
    parser.add_argument("--dask-ml-max-iter", type=int,
                        help="cap on dask-ml's Lloyd iterations (default 100, --quick 10; its "
                             "own default: 300)")
    parser.add_argument("--dask-ml-factor", type=float, default=25.0,
                        help="stop dask-ml at this many times our wall time")
    parser.add_argument("--dask-ml-timeout", type=float, help="seconds (overrides the factor)")
    parser.add_argument("--workdir", default=os.path.join(ROOT, ".bench", "grass"))
    args = parser.parse_args(argv)
    if args.command == "_child":
        return rb.serve_child(CHILDREN, *args.child)
    work = rb.workdir(args.workdir)
    if args.command == "make":
        return time_mosaic(args.crop, work, args.mosaic_size or 8192)
    if args.dask_ml_max_iter is None:
        args.dask_ml_max_iter = 10 if args.quick else 100
    parts = set(args.parts.split(","))
    print(f"### GRASS GIS side by side and the 40,000^2 mosaic (issue 13, section 3)\n\n"
          f"{rb.machine(MODULES)}\n")
    if parts & {"ours", "mosaic"}:
        # numba compiles our kernels on a checkout's first run and caches them on disk (as
        # GRASS's modules come compiled): one untimed run on the crop fills that cache
        rb.run_cli(os.path.abspath(args.crop), work, "cache-fill", K, {"scheduler": "threads"})
        print("numba's kernel cache filled by one untimed run on the crop.\n")
    if parts & {"grass", "ours"}:
        scene = os.path.abspath(args.scene) if args.scene else make_scene(
            args.make_scene, work, 1 if args.quick else 4)
        results = {}
        for side, run, part in (("GRASS GIS", run_grass, "grass"),
                                ("kmeans-pipeline", run_ours, "ours")):
            if part not in parts:
                continue
            result = run(scene, work)
            result.update(objective(scene, result["labels"]))
            results[side] = result
            print(f"{side}: {result['measured'].seconds:.1f} s", file=sys.stderr)
        print(table(scene, results))
    if "mosaic" in parts:
        size = args.mosaic_size or (4096 if args.quick else 40000)
        print("\n" + "\n".join(mosaic_rows(args, work, size)))
    print(f"\nLoad average at the end: {rb.load_average()}.")
    return 0


def time_mosaic(crop: str, work: str, size: int) -> int:
    path = os.path.join(work, f"timing-{size}.tif")
    made = build_mosaic(os.path.abspath(crop), size, path)
    os.unlink(path)
    scale = (40000 / size) ** 2
    print(f"mosaic {size}^2: {made['seconds']:.2f} s, {made['bytes'] / MB:.0f} MiB; 40,000^2 "
          f"extrapolated: {made['seconds'] * scale:.0f} s, {made['bytes'] * scale / 2**30:.1f} GiB")
    return 0


def _default_crop() -> str:
    folder = os.path.join(ROOT, "..", "shared", "rasters", "landsat8")
    found = sorted(glob.glob(os.path.join(folder, "*224078*RT.TIF")))
    return found[0] if found else os.path.join(folder, "LC08_..._224078_..._RT.TIF")


def table(scene: str, results: dict) -> str:
    import rasterio

    with rasterio.open(scene) as src:
        size = f"{src.width:,} x {src.height:,} x {src.count} {src.dtypes[0]}"
    lines = [f"#### Scene: {size} ({os.path.basename(scene)}), k = {K}, labels only", "",
             "| tool | wall s | steps | peak RSS tree MB | largest process MB | objective "
             "(DN^2) | vs GRASS | classes | unlabelled px |",
             "|---|---|---|---|---|---|---|---|---|"]
    grass = results.get("GRASS GIS")
    for side, result in results.items():
        measured = result["measured"]
        steps = ", ".join(f"{k} {v:.1f}" for k, v in result.get("steps", {}).items()) or "-"
        ratio = f"{result['objective'] / grass['objective']:.4f}" if grass else "-"
        largest = max(measured.peak_root, measured.peak_other)
        lines.append(f"| {side} | {measured.seconds:.1f} | {steps} | "
                     f"{measured.peak_tree / MB:.0f} | {largest / MB:.0f} | "
                     f"{result['objective']:.6e} | {ratio} | {result['classes']} | "
                     f"{result['unlabelled']:,} |")
    if grass and "kmeans-pipeline" in results:
        ours = results["kmeans-pipeline"]
        time_ratio = ours["measured"].seconds / grass["measured"].seconds
        quality = ours["objective"] / grass["objective"]
        peak = ours["measured"].peak_tree
        lines += ["", f"Wall time ours / GRASS: {time_ratio:.2f} (target <= 0.20: "
                      f"{rb.verdict(time_ratio <= 0.2)}); objective ours / GRASS: "
                      f"{quality:.4f} (target <= 1: {rb.verdict(quality <= 1)}); peak RSS ours "
                      f"{peak / MB:.0f} MB (target <= 1024: {rb.verdict(peak <= 1024 * MB)})."]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
