#!/usr/bin/env python3
"""Raster benchmark (issue 12, section 5): a synthetic N x N x 4-band uint16 tiled, deflate
TIFF through the raster path, against the serial floor measured in the same run.

    python benchmarks/rasters.py all --size 8192 --workdir .bench-rasters

Each part runs in its own process, so each peak RSS is its own:

* ``make``: writes the scene tile by tile (four classes in blocks, noise, a nodata square);
* ``floor``: serially, read every tile once (tifffile), one matrix-form assignment pass over all
  pixels with the centroids ours found (numpy), write the label TIFF with the same codec
  (tifffile, tiles from a generator);
* ``ours``: sample -> fit (k = 8) -> segment and write labels through `pipeline.raster_job` on
  the threads scheduler (2 threads), segmented image and masks off.

Prints one Markdown table: seconds, peak RSS, and ours / floor.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import numpy as np

TILE = 256
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLASSES = np.array([[800, 900, 700, 3000], [400, 600, 500, 200], [2500, 2600, 2700, 2800],
                    [800, 1500, 900, 6000], [1500, 1500, 1500, 1500], [3000, 200, 200, 200],
                    [200, 3000, 200, 200], [200, 200, 3000, 200]], np.uint16)


def _tile(y: int, x: int) -> np.ndarray:
    rows = np.arange(y, y + TILE)[:, None]
    cols = np.arange(x, x + TILE)[None, :]
    which = (rows // 700 * 3 + cols // 900) % len(CLASSES)
    noise = ((rows * 7919 + cols * 104729) % 97).astype(np.uint16)[..., None]
    tile = CLASSES[which] + noise
    if y < 1024 and x < 1024:
        tile[...] = 0  # a nodata corner
    return tile


def make(path: str, size: int) -> dict:
    import tifffile

    def tiles():
        for y in range(0, size, TILE):
            for x in range(0, size, TILE):
                yield _tile(y, x)
    tifffile.imwrite(path, tiles(), shape=(size, size, 4), dtype=np.uint16, tile=(TILE, TILE),
                     compression="zlib", photometric="minisblack", planarconfig="contig",
                     bigtiff=True, extratags=[(42113, "s", 0, "0", True)])
    return {"bytes": os.path.getsize(path)}


def ours(path: str, out: str) -> dict:
    import dask

    from pipeline import raster_job
    from pipeline.sources import rasters

    started = time.perf_counter()
    with dask.config.set(scheduler="threads", num_workers=2):
        (header,) = rasters.read_headers(path)
        image = raster_job.RasterImage(header, chunk_pixels=1 << 22)
        sample = raster_job.draw_sample([image], 1 << 20, seed=0)
        sampled = time.perf_counter()
        model = raster_job.fit_model(sample.rows, 8, seed=0, n_init=1, max_iter=50)
        fitted = time.perf_counter()
        outputs = raster_job.Outputs(out, segmented=False, labels=True, masks=False, level=6)
        record = raster_job.segment_image(image, model, outputs, "tiff", max_workers=2)
    done = time.perf_counter()
    np.save(os.path.join(out, "centroids.npy"), model.native)
    return {"seconds": done - started, "sample_s": sampled - started,
            "fit_s": fitted - sampled, "segment_s": done - fitted, "masked": record["masked"]}


def floor(path: str, out: str) -> dict:
    import tifffile

    centroids = np.load(os.path.join(out, "centroids.npy")).astype(np.float32)
    started = time.perf_counter()
    with tifffile.TiffFile(path) as tif:
        page = tif.pages[0]
        handle = tif.filehandle
        size = page.imagelength

        def labels():
            c2 = (centroids ** 2).sum(axis=1)
            for index, (offset, count) in enumerate(zip(page.dataoffsets, page.databytecounts)):
                handle.seek(offset)
                tile = page.decode(handle.read(count), index)[0].reshape(-1, 4)
                rows = tile.astype(np.float32)
                d = c2[None, :] - 2 * rows @ centroids.T  # matrix form: |c|^2 - 2 x.c
                yield d.argmin(axis=1).astype(np.uint8).reshape(TILE, TILE)
        tifffile.imwrite(os.path.join(out, "floor.tif"), labels(), shape=(size, size),
                         dtype=np.uint8, tile=(TILE, TILE), compression="zlib",
                         compressionargs={"level": 6}, bigtiff=True)
    return {"seconds": time.perf_counter() - started}


def _child(part: str, args: argparse.Namespace) -> dict:
    env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    done = subprocess.run([sys.executable, __file__, part, "--size", str(args.size),
                           "--workdir", args.workdir], env=env, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"{part} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("part", choices=["all", "make", "ours", "floor"])
    parser.add_argument("--size", type=int, default=8192)
    parser.add_argument("--workdir", default=".bench-rasters")
    args = parser.parse_args()
    os.makedirs(args.workdir, exist_ok=True)
    path = os.path.join(args.workdir, f"scene-{args.size}.tif")
    out = os.path.join(args.workdir, "out")
    os.makedirs(out, exist_ok=True)
    if args.part != "all":
        result = {"make": lambda: make(path, args.size), "ours": lambda: ours(path, out),
                  "floor": lambda: floor(path, out)}[args.part]()
        result["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(json.dumps(result))
        return
    if not os.path.exists(path):
        _child("make", args)
    ours_result = _child("ours", args)
    floor_result = _child("floor", args)
    raw = args.size * args.size * 8 / 2**20
    print(f"| {args.size} x {args.size} x 4 uint16 ({raw:.0f} MiB raw) | seconds | peak RSS MiB |")
    print("|---|---|---|")
    print(f"| floor (serial read + matrix assign + label TIFF) | {floor_result['seconds']:.1f} "
          f"| {floor_result['peak_rss_mib']:.0f} |")
    print(f"| ours (sample {ours_result['sample_s']:.1f} s, fit {ours_result['fit_s']:.1f} s, "
          f"segment {ours_result['segment_s']:.1f} s; threads x2) | {ours_result['seconds']:.1f} "
          f"| {ours_result['peak_rss_mib']:.0f} |")
    print(f"| ours / floor | {ours_result['seconds'] / floor_result['seconds']:.2f} | |")


if __name__ == "__main__":
    main()
