#!/usr/bin/env python3
"""Raster benchmark (issue 12, section 5), every figure measured in one run and printed as
ratios in a Markdown table (paste into benchmarks/RESULTS.md).

Commands (from the project root; the full run wants a quiet machine):

    python benchmarks/rasters.py --quick          # check: 2,048^2 scene, 1,024^2 crop (~1 min)
    python benchmarks/rasters.py make --size 8192 # time the scene generator, extrapolated
    python benchmarks/rasters.py                  # the full run: 40,000^2 scene, 10,000^2 crop
    python benchmarks/rasters.py --parts floor,threads  # a subset (make, floor, threads,
                                                        # local, peers)

The scene (a, cached as ``.bench/rasters/scene-N.tif``): N x N x 4-band uint16, tiles of 256,
deflate (zlib level 6), GDAL_NODATA 0 with a 1,024^2 nodata corner.  It is written tile by
tile from 41 pre-compressed tile patterns (8 spectral classes x 3 noise draws, 16 tiles split
between two classes, one nodata tile), so generation costs the disk writes only and nothing
holds the scene.  The 100 Mpx crop (d) is the same pattern grid from tile (32, 32) on, so it is
the scene's region [8192:18192, 8192:18192] (no nodata), in its own file.

b. ours: ``python -m pipeline run job.yaml`` on the threads scheduler, k = 8, seed 0, labels
   only (``--outputs all`` adds the segmented image and masks, the issue's defaults); wall
   time of the process, peak RSS polled from its process tree (VmHWM, not ru_maxrss).  The
   floor: in one process, serially, read every tile once (tifffile), one matrix-form float32
   assignment pass (``|c|^2 - 2 x.c``, BLAS) with our model's centroids, write the label TIFF
   with the same codec (deflate level 1, our label file's tile size).  Target: ours <= 1.5 x
   floor, peak RSS <= 1.5 GB.
c. the same job on a 2-worker LocalCluster (``dask.scheduler: local``, ``n_workers: 2``,
   ``threads_per_worker: 1``, ``memory_limit: 1GiB``): the workers' pause / restart / kill
   warnings counted from the log they share with the client (the CLI runs without ``-q``), the
   worker processes started (more than 2 means a restart), the client's and the largest
   worker's peak RSS.  ``--memory-limit 100MiB --quick`` shows what a failing run prints.
d. on the crop, k = 8: scikit-learn ``MiniBatchKMeans`` (numpy float32, fit + predict on every
   pixel; reading the crop not counted; OpenMP on every CPU), dask-ml ``KMeans`` (k-means||,
   tol 1e-4, Lloyd iterations capped by ``--dask-ml-max-iter``, default 100 instead of its 300:
   its tol is absolute, in squared DN, and at 1 Mpx it ran all 300; ``--timeout`` stops any
   peer; float32 dask array from the TIFF through zarr, chunks of 512 rows x the width, threads
   scheduler), ``pipeline.KMeans`` on that same dask array, and ours end to end through the CLI
   (reading the TIFF and writing the label TIFF included).  One harness
   (`rasterbench.Objective`) scores every label map: the sum of squared distances of pixels to
   their class mean.  Target: the pipeline (CLI) >= 20x faster than dask-ml at <= its
   objective.  Predict times include that scoring pass (a bincount per chunk).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import zlib

import numpy as np

import rasterbench as rb

TILE = 256
NODATA_CORNER = 1024
CROP_ORIGIN = 32  # tiles: the crop starts at pixel 8,192 in both axes, past the nodata corner
K = 8
SEED = 0
CLASSES = np.array([[800, 900, 700, 3000], [400, 600, 500, 200], [2500, 2600, 2700, 2800],
                    [800, 1500, 900, 6000], [1500, 1500, 1500, 1500], [3000, 200, 200, 200],
                    [200, 3000, 200, 200], [200, 200, 3000, 200]], np.uint16)
MODULES = ["pipeline", "numpy", "tifffile", "imagecodecs", "zarr", "dask", "distributed",
           "sklearn", "dask_ml"]


# ---------------------------------------------------------------------------------------------
# The scene: pre-compressed tile patterns


def _patterns() -> tuple[list[bytes], list[bytes], bytes]:
    """Pure tiles (class x 3 noise draws), mixed tiles (two classes either side of a line)
    and the nodata tile, each zlib-compressed once."""
    rng = np.random.default_rng(12)

    def noisy(values: np.ndarray) -> bytes:
        noise = rng.normal(0, 25, values.shape)
        tile = np.clip(values + noise, 1, 65535).astype(np.uint16)  # 0 is nodata
        return zlib.compress(tile.tobytes(), 6)

    pure = [noisy(np.broadcast_to(CLASSES[c], (TILE, TILE, 4)).astype(float))
            for c in range(len(CLASSES)) for _ in range(3)]
    rows, cols = np.mgrid[:TILE, :TILE]
    mixed = []
    for m in range(16):
        a, b = CLASSES[m % 8], CLASSES[(m * 3 + 1) % 8]
        side = (rows * (m % 4 + 1) + cols * (4 - m % 4)) > TILE * 2.5
        mixed.append(noisy(np.where(side[..., None], a, b).astype(float)))
    nodata = zlib.compress(np.zeros((TILE, TILE, 4), np.uint16).tobytes(), 6)
    return pure, mixed, nodata


def _tiles(size: int, origin: int, corner: bool):
    pure, mixed, nodata = _patterns()
    n = -(-size // TILE)
    for ty in range(origin, origin + n):
        for tx in range(origin, origin + n):
            if corner and ty * TILE < NODATA_CORNER and tx * TILE < NODATA_CORNER:
                yield nodata
            elif (ty * 5 + tx * 3) % 7 == 0:
                yield mixed[(ty * 7 + tx) % len(mixed)]
            else:  # classes in regions of 4 x 3 tiles
                region = ((ty // 4) * 7919 + (tx // 3) * 104729) % len(CLASSES)
                yield pure[region * 3 + (ty + tx) % 3]


def make_scene(path: str, size: int, origin: int = 0, corner: bool = True) -> dict:
    """Write the size^2 x 4 uint16 scene (tiles from ``origin``, in tiles) to ``path``."""
    import tifffile

    started = time.perf_counter()
    temp = path + ".part"
    tifffile.imwrite(temp, _tiles(size, origin, corner), shape=(size, size, 4),
                     dtype=np.uint16, tile=(TILE, TILE), compression="zlib",
                     photometric="minisblack", planarconfig="contig", bigtiff=True,
                     extratags=[(42113, "s", 0, "0", True)])
    os.replace(temp, path)
    return {"seconds": time.perf_counter() - started, "bytes": os.path.getsize(path)}


# ---------------------------------------------------------------------------------------------
# Children (each run in its own process, so each peak RSS is its own)


def child_floor(scene: str, model_json: str, ours_labels: str, out: str) -> dict:
    import tifffile

    centroids = _centroids(model_json).astype(np.float32)
    with tifffile.TiffFile(ours_labels) as done:
        tile = (done.pages[0].tilelength or TILE, done.pages[0].tilewidth or TILE)
    started = time.perf_counter()
    with tifffile.TiffFile(scene) as tif:
        page = tif.pages[0]
        handle = tif.filehandle
        size = page.imagelength
        c2 = (centroids ** 2).sum(axis=1)

        def decoded():
            for index, (offset, count) in enumerate(zip(page.dataoffsets,
                                                        page.databytecounts)):
                handle.seek(offset)
                yield page.decode(handle.read(count), index)[0].reshape(TILE, TILE, 4)

        def labels():
            for band in _retile(decoded(), -(-size // TILE), TILE, tile):
                pixels = band.reshape(-1, 4)
                distances = c2[None, :] - 2 * (pixels.astype(np.float32) @ centroids.T)
                labels = distances.argmin(axis=1).astype(np.uint8)
                labels[(pixels == 0).any(axis=1)] = 255  # nodata, as ours
                yield labels.reshape(band.shape[:2])
        tifffile.imwrite(out, _split(labels(), tile, size), shape=(size, size), dtype=np.uint8,
                         tile=tile, compression="zlib", compressionargs={"level": 1},
                         bigtiff=True, maxworkers=1)
    return {"seconds": time.perf_counter() - started}


def _retile(tiles, per_row: int, stored: int, wanted: tuple[int, int]):
    """Stored tiles in row order -> pieces of the output tile size (a row band of tiles at a
    time when the sizes differ, so one band is the most held)."""
    if wanted == (stored, stored):
        yield from tiles
        return
    row: list[np.ndarray] = []
    held = np.zeros((0, per_row * stored, 4), np.uint16)
    for tile in tiles:
        row.append(tile)
        if len(row) == per_row:
            held = np.concatenate([held, np.concatenate(row, axis=1)])
            row = []
            while len(held) >= wanted[0]:
                band, held = held[:wanted[0]], held[wanted[0]:]
                yield band
    if len(held):
        yield np.concatenate([held, np.zeros((wanted[0] - len(held),) + held.shape[1:],
                                             held.dtype)])


def _split(pieces, tile: tuple[int, int], width: int):
    """Row bands (tile height x padded width) or tiles -> tiles of ``tile``, in row order."""
    across = -(-width // tile[1])
    for piece in pieces:
        if piece.shape == tile:
            yield piece
            continue
        if piece.shape[1] < across * tile[1]:
            piece = np.pad(piece, ((0, 0), (0, across * tile[1] - piece.shape[1])))
        for x in range(across):
            yield piece[:, x * tile[1]:(x + 1) * tile[1]]


def _centroids(model_json: str) -> np.ndarray:
    with open(model_json) as handle:
        doc = json.load(handle)
    return np.asarray(doc.get("centroids_native") or doc["centroids"], np.float64)


def _crop_rows(crop: str):
    """The crop as a float32 dask array of pixel rows (n, 4): zarr over the TIFF's tiles,
    chunks of 512 rows x the whole width (whole tiles, rows in raster order)."""
    import dask.array as da
    import tifffile
    import zarr

    store = tifffile.imread(crop, aszarr=True)
    array = zarr.open(store, mode="r")
    height, width, bands = array.shape
    image = da.from_zarr(array, chunks=(2 * TILE, width, bands))
    return image.reshape(-1, bands).astype(np.float32)


def child_sklearn(crop: str) -> dict:
    import tifffile
    from sklearn.cluster import MiniBatchKMeans

    pixels = tifffile.imread(crop).reshape(-1, 4)
    rows = pixels.astype(np.float32)
    started = time.perf_counter()
    model = MiniBatchKMeans(n_clusters=K, random_state=SEED).fit(rows)
    fitted = time.perf_counter()
    labels = model.predict(rows)
    done = time.perf_counter()
    return {"fit_s": fitted - started, "predict_s": done - fitted, "seconds": done - started,
            "n_iter": int(model.n_iter_), "capped": False,
            **rb.Objective(4).add(pixels, labels).result()}


def child_dask_ml(crop: str, max_iter: int) -> dict:
    from dask_ml.cluster import KMeans

    return rb.fit_predict_dask(KMeans(n_clusters=K, max_iter=max_iter, random_state=SEED),
                               _crop_rows(crop), max_iter)


def child_estimator(crop: str) -> dict:
    import pipeline

    return rb.fit_predict_dask(pipeline.KMeans(n_clusters=K, random_state=SEED),
                               _crop_rows(crop))


def child_objective(crop: str, labels: str) -> dict:
    import tifffile

    return rb.Objective(4, skip=255).add(tifffile.imread(crop).reshape(-1, 4),
                                         tifffile.imread(labels)).result()


CHILDREN = {"floor": child_floor, "sklearn": child_sklearn, "dask-ml": child_dask_ml,
            "estimator": child_estimator, "objective": child_objective}


def run_ours(scene: str, work: str, name: str, outputs: str, dask_keys: dict) -> dict:
    # the cluster's failure is a result, reported in the table
    return rb.run_cli(scene, work, name, K, dask_keys, everything=outputs == "all",
                      must_pass=name != "local")


# ---------------------------------------------------------------------------------------------
# The run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", nargs="?", default="run", choices=["run", "make", "_child"])
    parser.add_argument("child", nargs="*", help=argparse.SUPPRESS)
    parser.add_argument("--quick", action="store_true", help="2,048^2 scene, 1,024^2 crop")
    parser.add_argument("--size", type=int, help="scene side (default 40000; make: 8192)")
    parser.add_argument("--crop", type=int, help="crop side (default 10000)")
    parser.add_argument("--parts", default="make,floor,threads,local,peers")
    parser.add_argument("--outputs", choices=["labels", "all"], default="labels")
    parser.add_argument("--dask-ml-max-iter", type=int, default=100,
                        help="cap on dask-ml's Lloyd iterations (its own default: 300)")
    parser.add_argument("--memory-limit", default="1GiB", help="per LocalCluster worker")
    parser.add_argument("--timeout", type=float, help="per peer run, s (default 3600)")
    parser.add_argument("--workdir", default=os.path.join(rb.ROOT, ".bench", "rasters"))
    args = parser.parse_args(argv)
    if args.command == "_child":
        return rb.serve_child(CHILDREN, *args.child)
    work = rb.workdir(args.workdir)
    if args.command == "make":
        return time_make(work, args.size or 8192)
    size = args.size or (2048 if args.quick else 40000)
    crop_side = args.crop or (1024 if args.quick else 10000)
    timeout = args.timeout or (300 if args.quick else 3600)
    parts = set(args.parts.split(","))
    print(f"### Raster benchmark (issue 12, section 5)\n\n{rb.machine(MODULES)}\n")
    rows = scene_rows(work, size, parts, args.outputs, args.memory_limit)
    if "peers" in parts:
        rows += ["", *crop_rows(work, crop_side, args.dask_ml_max_iter, timeout)]
    print("\n".join(rows))
    print(f"\nLoad average at the end: {rb.load_average()}.")
    return 0


def time_make(work: str, size: int) -> int:
    path = os.path.join(work, f"timing-{size}.tif")
    made = make_scene(path, size)
    os.unlink(path)
    full = made["seconds"] * (40000 / size) ** 2
    print(f"scene {size}^2: {made['seconds']:.2f} s, {made['bytes'] / rb.MB:.0f} MiB; "
          f"40,000^2 extrapolated: {full:.0f} s, "
          f"{made['bytes'] * (40000 / size) ** 2 / 2**30:.1f} GiB")
    return 0


def scene_rows(work: str, size: int, parts: set, outputs: str,
               memory_limit: str) -> list[str]:
    scene = os.path.join(work, f"scene-{size}.tif")
    made = None
    if not os.path.exists(scene):
        made = make_scene(scene, size)
    raw = size * size * 8 / 2**30
    lines = [f"#### {size:,} x {size:,} x 4 uint16 scene ({raw:.1f} GiB raw, "
             f"{os.path.getsize(scene) / 2**30:.2f} GiB deflate), k = {K}, "
             f"{'labels only' if outputs == 'labels' else 'labels, segmented, masks'}", "",
             "| measurement | seconds | peak RSS MB | ratio | target | verdict |",
             "|---|---|---|---|---|---|"]
    if made and "make" in parts:
        lines.append(f"| generating the scene (tile patterns) | {made['seconds']:.1f} | | | | |")
    threads = local = floor = None
    if parts & {"threads", "floor"}:
        threads = run_ours(scene, work, "threads", outputs, {"scheduler": "threads"})
    if "floor" in parts:
        floor = rb.run_child(__file__, "floor", scene, threads["model"], threads["labels"],
                       os.path.join(work, "floor-labels.tif")).json()["seconds"]
        lines.append(f"| floor: read every tile, one float32 BLAS assignment, write labels "
                     f"(serial) | {floor:.1f} | | 1.00 | | |")
    if "threads" in parts:
        m = threads["measured"]
        ratio = m.seconds / floor if floor else None
        lines.append(f"| ours, CLI, threads scheduler | {m.seconds:.1f} | {m.peak_tree / rb.MB:.0f}"
                     f" | {_ratio(ratio)} | <= 1.5 x floor, <= 1536 MB | "
                     f"{rb.verdict(None if ratio is None else ratio <= 1.5)}, "
                     f"{rb.verdict(m.peak_tree <= 1536 * rb.MB)} |")
    if "local" in parts:
        local = run_ours(scene, work, "local", outputs, {
            "scheduler": "local", "n_workers": 2, "threads_per_worker": 1,
            "memory_limit": memory_limit})
        m, events = local["measured"], local["events"]
        ratio = m.seconds / floor if floor else None
        trouble = (events["paused"] + events["restarted"] + events["killed"] + m.returncode
                   + (m.spawned > 2))
        failed = (f"**failed** (exit {m.returncode}: "
                  f"{m.stderr.strip().splitlines()[-1][:200]}); " if m.returncode else "")
        lines.append(f"| ours, CLI, 2-worker LocalCluster, memory_limit {memory_limit} "
                     f"(start-up included) | {m.seconds:.1f} | client "
                     f"{m.peak_root / rb.MB:.0f}, largest worker {m.peak_other / rb.MB:.0f}, tree {m.peak_tree / rb.MB:.0f} | "
                     f"{_ratio(ratio)} | no worker paused or restarted | "
                     f"{failed}{rb.verdict(trouble == 0)}: "
                     + ", ".join(f"{n} {v}" for n, v in events.items())
                     + f"; worker processes started {m.spawned} (2 without restarts) |")
    return lines


def crop_rows(work: str, side: int, max_iter: int, timeout: float) -> list[str]:
    crop = os.path.join(work, f"crop-{side}.tif")
    if not os.path.exists(crop):
        make_scene(crop, side, origin=CROP_ORIGIN, corner=False)
    ours = run_ours(crop, work, "crop", "labels", {"scheduler": "threads"})
    cli = {"seconds": ours["measured"].seconds,
           **rb.run_child(__file__, "objective", crop, ours["labels"]).json()}
    results = {"ours, CLI end to end (threads; read + fit + label TIFF)": cli}
    for name, label, args, threads in (
            ("estimator", "pipeline.KMeans on the dask array (fit + predict)", (crop,), 1),
            ("sklearn", "scikit-learn MiniBatchKMeans, numpy (fit + predict)", (crop,),
             os.cpu_count()),
            ("dask-ml", f"dask-ml KMeans on the dask array (fit + predict, max_iter "
                        f"{max_iter})", (crop, max_iter), 1)):
        measured = rb.run_child(__file__, name, *args, threads=threads, timeout=timeout)
        results[label] = ({"seconds": measured.seconds, "timed_out": True} if measured.timed_out
                          else measured.json())
        results[label]["peak"] = measured.peak_tree
    dask_ml = results[next(label for label in results if label.startswith("dask-ml"))]
    lines = [f"#### {side:,} x {side:,} x 4 uint16 crop ({side * side / 1e6:.0f} Mpx), k = {K}",
             "", "| method | seconds (fit / predict) | iterations | peak RSS MB | objective | "
             "/ dask-ml's | dask-ml s / this |", "|---|---|---|---|---|---|---|"]
    for label, r in results.items():
        if r.get("timed_out"):
            lines.append(f"| {label} | > {timeout:.0f} (stopped) | | {r['peak'] / rb.MB:.0f} "
                         "| | | |")
            continue
        split = f" ({r['fit_s']:.1f} / {r['predict_s']:.1f})" if "fit_s" in r else ""
        iters = f"{r['n_iter']}{' (capped)' if r.get('capped') else ''}" if "n_iter" in r else ""
        vs = ("" if dask_ml.get("timed_out") else
              f"{r['objective'] / dask_ml['objective']:.4f}")
        faster = (f">= {timeout / r['seconds']:.1f}x" if dask_ml.get("timed_out") else
                  f"{dask_ml['seconds'] / r['seconds']:.1f}x")
        lines.append(f"| {label} | {r['seconds']:.1f}{split} | {iters} | "
                     f"{r.get('peak', ours['measured'].peak_tree) / rb.MB:.0f} | "
                     f"{r['objective']:.6e} | {vs} | {faster} |")
    if not dask_ml.get("timed_out"):
        speed = dask_ml["seconds"] / cli["seconds"]
        quality = cli["objective"] / dask_ml["objective"]
        lines += ["", f"Target (CLI vs dask-ml): >= 20x faster, {speed:.1f}x: "
                      f"{rb.verdict(speed >= 20)}; objective <= dask-ml's, {quality:.4f}: "
                      f"{rb.verdict(quality <= 1)}."]
    else:
        lines += ["", f"dask-ml was stopped at {timeout:.0f} s: the CLI is at least "
                      f"{timeout / cli['seconds']:.1f}x faster; its objective is not known."]
    return lines


def _ratio(value: float | None) -> str:
    return "" if value is None else f"{value:.2f}"


if __name__ == "__main__":
    sys.exit(main())
