#!/usr/bin/env python3
"""Benchmark kmeans-pipeline against the serial floor and its peers (issue 5).

Run by hand, never by the tests (speed goals live here, not in timed assertions):

    pip install -e '.[bench]'
    python benchmarks/bench.py --make-collection PATH/TO/make_collection.py > table.md

``--make-collection`` (or the environment variable ``KMP_MAKE_COLLECTION``) names the script
that generates the benchmark collections; they are built under ``--workdir`` (default
``.bench``), as are the job files, outputs and a cache of reference inertias.

What it measures, each in its own process (peers capped at ``--timeout`` seconds):

* the serial floor per collection and k: imageio decode, one matrix-form assignment pass with
  our final centroids (numpy, BLAS pinned to one thread), Pillow PNG writes at zlib level 1 of an
  RGB segmented image and a uint8 label map per image;
* ours end to end through the CLI (``kmeans-pipeline run``, default scheduler, segmented +
  labels, masks off, files warm in the page cache), start-up and fit counted;
* ours and every peer as fit + assign on the same in-memory pixels (float32 RGB in [0, 1]);
* our fit alone for several seeds (``--basin-seeds``) on the CLI's sample: issue 14's check that
  a cheaper fit lands in the better basin for every seed, not only for the default one.

Every inertia comes from one function, `inertia`, over every pixel of the collection; "vs ref"
divides by the inertia of scikit-learn ``KMeans(n_init=3)`` on the same pixels.  Times are the
best of ``--repeat`` runs for ours and the floor, one run for each peer.
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field

import numpy as np

from rasterbench import vm_hwm as _peak_rss  # noqa: E402  (shared with the raster benchmarks)

HERE = os.path.dirname(os.path.abspath(__file__))
MB = 1 << 20

# name -> make_collection.py arguments.  ``noisy`` is ``medium`` plus sensor-like grain.
COLLECTIONS = {
    "small": ["small"],
    "medium": ["medium"],
    "noisy": ["custom", "--n", "40", "--mpx-total", "100", "--seed", "2", "--grain", "12"],
    "x4": ["custom", "--n", "160", "--mpx-total", "400", "--seed", "4"],
    "many": ["custom", "--n", "2000", "--mpx-total", "100", "--seed", "5"],
    "noisypng": ["custom", "--n", "4", "--mpx-total", "11.5", "--seed", "3"],
}
# Collections stored as lossless PNG with Gaussian sensor noise of this sigma (per channel, in
# 8-bit levels) added after decoding (issue 14: a fit whose cost grows with distinct colours).
PNG_NOISE = {"noisypng": 6.0}
PEERS = ["sklearn-n_init=3", "sklearn-n_init=1", "cv2.kmeans", "faiss", "dask-ml"]


# ---------------------------------------------------------------------------------------------
# Pixels and the one inertia function


def image_files(folder: str) -> list[str]:
    return sorted(glob.glob(os.path.join(folder, "*.jpg")) + glob.glob(os.path.join(folder,
                                                                                    "*.png")))


def noisy_png(folder: str, sigma: float, seed: int = 14) -> None:
    """Replace a built collection's JPEGs by PNGs with Gaussian noise added to the decoded
    pixels (own seeded stream per image); rewrite the manifest's names and hashes."""
    import imageio.v3 as iio

    manifest = os.path.join(folder, "manifest.json")
    doc = json.load(open(manifest))
    for i, item in enumerate(doc["images"]):
        path = os.path.join(folder, item["file"])
        pixels = iio.imread(path).astype(np.float32)
        pixels += np.random.default_rng([seed, i]).normal(0.0, sigma, pixels.shape)
        item["file"] = os.path.splitext(item["file"])[0] + ".png"
        out = os.path.join(folder, item["file"])
        iio.imwrite(out, np.clip(np.rint(pixels), 0, 255).astype(np.uint8))
        os.remove(path)
        item["sha256"] = hashlib.sha256(open(out, "rb").read()).hexdigest()
        item["bytes"] = os.path.getsize(out)
    doc["png_noise_sigma"] = sigma
    json.dump(doc, open(manifest, "w"), indent=1)


def load_pixels(folder: str) -> list[np.ndarray]:
    """Every image of a collection as uint8 RGB arrays (imageio, as the floor decodes)."""
    import imageio.v3 as iio

    return [iio.imread(path) for path in image_files(folder)]


def colour_histogram(folder: str, cache: str) -> tuple[np.ndarray, np.ndarray]:
    """Unique 24-bit colours of a collection and their pixel counts (cached as .npz)."""
    if os.path.exists(cache):
        data = np.load(cache)
        return data["codes"], data["counts"]
    total = np.zeros(1 << 24, np.int64)
    for pixels in load_pixels(folder):
        rows = pixels.reshape(-1, 3).astype(np.uint32)
        total += np.bincount((rows[:, 0] << 16) | (rows[:, 1] << 8) | rows[:, 2],
                             minlength=1 << 24)
    codes = np.flatnonzero(total).astype(np.uint32)
    np.savez(cache, codes=codes, counts=total[codes])
    return codes, total[codes]


def inertia(hist: tuple[np.ndarray, np.ndarray], centroids01: np.ndarray) -> float:
    """Sum over every pixel of the squared distance to its nearest centroid, pixels as RGB in
    [0, 1] (float32 values, accumulated in float64); the one function every method is scored by."""
    codes, counts = hist
    rgb = np.stack([(codes >> 16) & 255, (codes >> 8) & 255, codes & 255], 1)
    rgb = (rgb.astype(np.float32) / np.float32(255)).astype(np.float64)
    best = np.full(len(codes), np.inf)
    for centre in np.asarray(centroids01, np.float64):
        best = np.minimum(best, ((rgb - centre) ** 2).sum(1))
    return float(np.dot(best, counts.astype(np.float64)))


# ---------------------------------------------------------------------------------------------
# Child processes: one per measurement


def child_peer(method: str, folder: str, k: int, out: str) -> None:
    """Fit + assign with one method on the collection's pixels; save centroids, print seconds."""
    images = load_pixels(folder)
    pixels = np.concatenate([p.reshape(-1, 3) for p in images]).astype(np.float32) / 255
    if method == "ours":
        _ours_in_memory.files = image_files(folder)
        seconds, centroids = _ours_in_memory(images, k)
    else:
        fit = _PEER_FITS[method]
        started = time.perf_counter()
        centroids = fit(pixels, k)
        seconds = getattr(fit, "seconds", time.perf_counter() - started)
    np.save(out, np.asarray(centroids, np.float64))
    print(json.dumps({"seconds": seconds}))


def _sklearn(n_init: int):
    def fit(pixels: np.ndarray, k: int) -> np.ndarray:
        from sklearn.cluster import KMeans

        model = KMeans(n_clusters=k, n_init=n_init, random_state=0)
        model.fit_predict(pixels)
        return model.cluster_centers_
    return fit


def _cv2(pixels: np.ndarray, k: int) -> np.ndarray:
    import cv2

    cv2.setRNGSeed(0)
    criteria = (cv2.TERM_CRITERIA_EPS + cv2.TERM_CRITERIA_MAX_ITER, 300, 1e-4)
    _, _, centres = cv2.kmeans(pixels, k, None, criteria, 1, cv2.KMEANS_PP_CENTERS)
    return centres


def _faiss(pixels: np.ndarray, k: int) -> np.ndarray:
    import faiss

    model = faiss.Kmeans(3, k, seed=0)
    model.train(pixels)
    model.index.search(pixels, 1)
    return model.centroids


def _dask_ml(pixels: np.ndarray, k: int) -> np.ndarray:
    import dask.array as da
    from dask_ml.cluster import KMeans
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, host="127.0.0.1",
                      dashboard_address="127.0.0.1:0") as cluster, Client(cluster):
        data = da.from_array(pixels, chunks=(1 << 21, 3)).persist()
        started = time.perf_counter()
        model = KMeans(n_clusters=k, random_state=0).fit(data)
        model.predict(data).compute()
        # Cluster start-up and moving the pixels in are not counted.
        _dask_ml.seconds = time.perf_counter() - started
        return model.cluster_centers_


_PEER_FITS = {"sklearn-n_init=3": _sklearn(3), "sklearn-n_init=1": _sklearn(1),
              "cv2.kmeans": _cv2, "faiss": _faiss, "dask-ml": _dask_ml}


def _cli_sample(images: list[np.ndarray], files: list[str], km) -> np.ndarray:
    """The sample the CLI draws from these images (named after ``files``) for ``km``
    (a KMeansConfig): every image's share at the same positions, uint8 rows."""
    from types import SimpleNamespace

    from pipeline.sources import collection as read

    sizes = read.allocate([p.shape[0] * p.shape[1] for p in images], km.sample_pixels)
    parts = []
    for path, pixels, n in zip(files, images, sizes):
        rows = pixels.reshape(-1, 3)
        name = os.path.splitext(os.path.basename(path))[0]
        image = SimpleNamespace(name=name, n_pixels=len(rows))  # what sample_positions reads
        parts.append(rows[read.sample_positions(image, n, km.seed)])
    return np.concatenate(parts)


def _ours_in_memory(images: list[np.ndarray], k: int) -> tuple[float, np.ndarray]:
    """Our default fit and the labelling of every pixel, on pixels already in memory, with the
    same sampling, fit and colour-table code the CLI runs (two threads for the labelling)."""
    from concurrent.futures import ThreadPoolExecutor

    from pipeline import fitting as fit
    from pipeline.config import KMeansConfig
    from pipeline.sinks import segment

    km = KMeansConfig(k=k)
    started = time.perf_counter()
    sample = _cli_sample(images, _ours_in_memory.files, km)
    result = fit.fit_collection(sample, None, km, "rgb", None, False)
    whole = segment.whole_table_pays(sum(p.size // 3 for p in images), k, "rgb")
    with ThreadPoolExecutor(2) as pool:
        list(pool.map(lambda p: segment.label_image(p, result.centroids, "rgb",
                                                    whole_table=whole), images))
    return time.perf_counter() - started, result.centroids / 255


def child_basins(folder: str, k: int, seeds: str, out: str) -> None:
    """Our default fit (the CLI's sample, fit and seed) for each seed; saves the centroids
    (RGB in [0, 1]) of each, one array per seed, and prints the fits' seconds."""
    from pipeline import fitting as fit
    from pipeline.config import KMeansConfig

    images = load_pixels(folder)
    found, seconds = {}, {}
    for seed in [int(s) for s in seeds.split(",")]:
        km = KMeansConfig(k=k, seed=seed)
        sample = _cli_sample(images, image_files(folder), km)
        started = time.perf_counter()
        result = fit.fit_collection(sample, None, km, "rgb", None, False)
        seconds[str(seed)] = time.perf_counter() - started
        found[str(seed)] = result.centroids / 255
    np.savez(out, **found)
    print(json.dumps({"seconds": seconds}))


def child_floor(folder: str, centroids_file: str, out_dir: str) -> None:
    """The serial floor: simplest code, one thread; prints its parts' seconds."""
    import imageio.v3 as iio
    from PIL import Image

    centroids = np.load(centroids_file).astype(np.float32)  # RGB in [0, 1]
    palette = np.rint(centroids * 255).astype(np.uint8)
    files = image_files(folder)
    started = time.perf_counter()
    images = [iio.imread(path) for path in files]
    decoded = time.perf_counter()
    labels = []
    c_norm = (centroids ** 2).sum(1)
    for pixels in images:
        rows = pixels.reshape(-1, 3).astype(np.float32) / np.float32(255)
        distances = c_norm[None, :] - 2 * (rows @ centroids.T)
        labels.append(np.argmin(distances, axis=1).astype(np.uint8).reshape(pixels.shape[:2]))
    assigned = time.perf_counter()
    for path, lab in zip(files, labels):
        base = os.path.join(out_dir, os.path.splitext(os.path.basename(path))[0])
        Image.fromarray(palette[lab]).save(base + "-seg.png", compress_level=1)
        Image.fromarray(lab).save(base + "-lab.png", compress_level=1)
    written = time.perf_counter()
    print(json.dumps({"seconds": written - started, "decode": decoded - started,
                      "assign": assigned - decoded, "write": written - assigned}))


# ---------------------------------------------------------------------------------------------
# Running children


@dataclass
class Measured:
    seconds: float | None  # None: timed out or failed
    rss: int = 0  # peak RSS of the process (and its children for cluster runs), bytes
    data: dict = field(default_factory=dict)
    note: str = ""


def run_child(argv: list[str], timeout: float, env: dict | None = None,
              tree: bool = False) -> Measured:
    """Run a process, time it (wall) and take its peak RSS; ``tree``: also poll the RSS of the
    whole process tree (cluster runs), else the kernel's own figure for the process."""
    started = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    out: list[bytes] = []
    err: list[bytes] = []
    readers = [_drain(proc.stdout, out), _drain(proc.stderr, err)]  # a full pipe would block it
    peak = 0
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        if time.perf_counter() - started > timeout:
            _kill(proc)
            return Measured(None, note=f"> {timeout:.0f} s")
        peak = max(peak, _tree_rss(proc.pid) if tree else _peak_rss(proc.pid))
        time.sleep(0.1 if tree else 0.01)
    seconds = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    for reader in readers:
        reader.join()
    text, errors = b"".join(out).decode(), b"".join(err).decode()
    if proc.returncode != 0:
        return Measured(None, note=f"failed ({proc.returncode}): "
                                  f"{errors.strip().splitlines()[-1:]}")
    lines = [line for line in text.splitlines() if line.startswith("{")]
    data = json.loads(lines[-1]) if lines else {}
    # Not ru_maxrss: Linux carries the parent's peak into a child across fork and exec, so it
    # reported this (large) benchmark process instead of the child.
    return Measured(seconds, peak, data)


def _drain(stream, into: list):
    import threading

    reader = threading.Thread(target=lambda: into.extend(iter(lambda: stream.read(65536), b"")),
                              daemon=True)
    reader.start()
    return reader


def _tree_rss(pid: int) -> int:
    import psutil

    try:
        root = psutil.Process(pid)
        return sum(p.memory_info().rss for p in [root, *root.children(recursive=True)])
    except psutil.Error:
        return 0


def _kill(proc: subprocess.Popen) -> None:
    try:
        import psutil

        for child in psutil.Process(proc.pid).children(recursive=True):
            child.kill()
    except Exception:
        pass
    proc.kill()
    proc.wait()


def pinned_env() -> dict:
    env = dict(os.environ)
    for name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        env[name] = "1"
    return env


# ---------------------------------------------------------------------------------------------
# The benchmark


@dataclass
class Collection:
    name: str
    folder: str
    n_images: int
    n_pixels: int
    sha: str


class Bench:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.work = os.path.abspath(args.workdir)
        os.makedirs(self.work, exist_ok=True)
        self.refs_file = os.path.join(self.work, "refs.json")
        self.refs = json.load(open(self.refs_file)) if os.path.exists(self.refs_file) else {}
        self.hists: dict[str, tuple] = {}
        self.lines: list[str] = []

    def say(self, text: str = "") -> None:
        print(text, flush=True)
        self.lines.append(text)

    def log(self, text: str) -> None:
        print(f"# {text}", file=sys.stderr, flush=True)

    # collections ---------------------------------------------------------------------------

    def collection(self, name: str) -> Collection:
        folder = os.path.join(self.work, "collections", name)
        manifest = os.path.join(folder, "manifest.json")
        if not os.path.exists(manifest):
            script = self.args.make_collection
            if not script:
                sys.exit("give --make-collection PATH (or set KMP_MAKE_COLLECTION) to build "
                         f"the collection {name!r}")
            self.log(f"building collection {name}")
            subprocess.run([sys.executable, script, *COLLECTIONS[name], "--out", folder],
                           check=True, stdout=subprocess.DEVNULL)
            if name in PNG_NOISE:
                noisy_png(folder, PNG_NOISE[name])
        doc = json.load(open(manifest))
        for path in image_files(folder):  # warm the page cache
            with open(path, "rb") as handle:
                handle.read()
        sha = hashlib.sha256(json.dumps([i["sha256"] for i in doc["images"]]).encode())
        return Collection(name, folder, doc["n"], doc["total_pixels"], sha.hexdigest()[:16])

    def hist(self, col: Collection) -> tuple:
        if col.name not in self.hists:
            cache = os.path.join(self.work, f"hist-{col.name}-{col.sha}.npz")
            self.hists[col.name] = colour_histogram(col.folder, cache)
        return self.hists[col.name]

    # children -------------------------------------------------------------------------------

    def peer(self, method: str, col: Collection, k: int, timeout: float) -> tuple[Measured, float]:
        """Run one method; returns the measurement and its inertia (nan if it did not finish)."""
        out = os.path.join(self.work, f"centroids-{method}-{col.name}-{k}.npy")
        python = sys.executable
        if method == "dask-ml" and self.args.dask_ml_python:
            python = self.args.dask_ml_python
        argv = [python, os.path.abspath(__file__), "_peer", method, col.folder, str(k), out]
        self.log(f"{method} on {col.name}, k={k}")
        measured = run_child(argv, timeout, tree=method == "dask-ml")
        if measured.seconds is None:
            return measured, float("nan")
        # dask-ml reports its own fit + assign time (cluster start-up excluded).
        measured.data.setdefault("seconds", measured.seconds)
        return measured, inertia(self.hist(col), np.load(out))

    def reference(self, col: Collection, k: int) -> float:
        """Inertia of sklearn KMeans(n_init=3) on every pixel (cached: it takes minutes)."""
        key = f"{col.name}:{col.sha}:{k}:sklearn-{_version('sklearn')}"
        if key not in self.refs and os.path.exists(self.refs_file):  # another run may have it
            self.refs.update(json.load(open(self.refs_file)))
        if key not in self.refs:
            measured, value = self.peer("sklearn-n_init=3", col, k, self.args.ref_timeout)
            if measured.seconds is None:
                return float("nan")
            self.refs[key] = {"inertia": value, "seconds": measured.data["seconds"],
                              "rss": measured.rss}
            json.dump(self.refs, open(self.refs_file, "w"), indent=1)
        return self.refs[key]["inertia"]

    def ours(self, col: Collection, k: int, *sets: str, scheduler: str | None = None,
             repeat: int | None = None) -> Measured:
        """Best of ``repeat`` CLI runs; data gets the report's timings and the model's inertia."""
        tag = "-".join([col.name, f"k{k}", *[s.replace("=", "_") for s in sets]]
                       + ([scheduler] if scheduler else []))
        job = os.path.join(self.work, "jobs", f"{tag}.yaml")
        out = os.path.join(self.work, "out", tag)
        os.makedirs(os.path.dirname(job), exist_ok=True)
        with open(job, "w") as handle:
            json.dump({"input": {"paths": [col.folder]}, "kmeans": {"k": k},
                       "output": {"dir": out, "masks": False, "if_exists": "overwrite"}},
                      handle)
        argv = [*_cli(), "run", job, "-q", "--json"]
        for item in sets:
            argv += ["--set", item]
        if scheduler:
            argv += ["--scheduler", scheduler]
        best = None
        for _ in range(repeat or self.args.repeat):
            shutil.rmtree(out, ignore_errors=True)
            self.log(f"ours on {col.name}, k={k} {' '.join(sets)} {scheduler or ''}")
            measured = run_child(argv, self.args.timeout, tree=scheduler == "local")
            if measured.seconds is None:
                return measured
            if best is None or measured.seconds < best.seconds:
                report = json.load(open(os.path.join(out, "report.json")))
                measured.data["timings"] = report["timings"]
                best = measured
        model = json.load(open(os.path.join(out, "model.json")))
        best.data["centroids01"] = np.asarray(model["centroids"], np.float64) / 255
        best.data["inertia"] = inertia(self.hist(col), best.data["centroids01"])
        return best

    def floor(self, col: Collection, centroids01: np.ndarray) -> Measured:
        best = None
        with tempfile.TemporaryDirectory(dir=self.work) as tmp:
            cfile = os.path.join(tmp, "centroids.npy")
            np.save(cfile, centroids01)
            for _ in range(self.args.repeat):
                self.log(f"floor on {col.name}, k={len(centroids01)}")
                measured = run_child([sys.executable, os.path.abspath(__file__), "_floor",
                                      col.folder, cfile, tmp], self.args.timeout,
                                     env=pinned_env())
                if best is None or (measured.seconds is not None
                                    and measured.data["seconds"] < best.data["seconds"]):
                    best = measured
        return best


def _cli() -> list[str]:
    script = os.path.join(os.path.dirname(sys.executable), "kmeans-pipeline")
    return [script] if os.path.exists(script) else [sys.executable, "-m", "pipeline"]


def _version(module: str) -> str:
    try:
        return __import__(module).__version__
    except Exception:
        return "-"


def _verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("PASS" if ok else "FAIL")


def _s(value: float | None, note: str = "") -> str:
    return note or ("-" if value is None else f"{value:.2f}")


# ---------------------------------------------------------------------------------------------
# Sections of the table


def section_ours(bench: Bench, names: list[str], ks: list[int]) -> dict:
    """Targets 1, 2, 4 (pixels in memory) and 7: every collection and k."""
    bench.say("## Ours end to end (CLI) vs the serial floor, and quality vs sklearn n_init=3")
    bench.say()
    bench.say("| collection | Mpx | k | floor s (decode / assign / write) | ours s | ours/floor "
              "| target 2 | inertia vs ref | target 1 | peak RSS MB | RSS limit MB | target 4 |")
    bench.say("|---|---|---|---|---|---|---|---|---|---|---|---|")
    results = {}
    for name in names:
        col = bench.collection(name)
        for k in ks:
            ref = bench.reference(col, k)
            ours = bench.ours(col, k)
            if ours.seconds is None:
                bench.say(f"| {name} | {col.n_pixels / 1e6:.1f} | {k} | | {ours.note} | | FAIL "
                          "| | FAIL | | | |")
                continue
            floor = bench.floor(col, ours.data["centroids01"])
            ratio = ours.seconds / floor.data["seconds"]
            limit = 0.30 if name == "medium" else 1.0  # issue 14 (issue 5: 0.5 and 1.5)
            vs_ref = ours.data["inertia"] / ref
            rss_limit = 4 * col.n_pixels + 600 * MB
            results[(name, k)] = (col, ours, floor, vs_ref)
            f = floor.data
            bench.say(f"| {name} | {col.n_pixels / 1e6:.1f} | {k} | {f['seconds']:.2f} "
                      f"({f['decode']:.2f} / {f['assign']:.2f} / {f['write']:.2f}) "
                      f"| {ours.seconds:.2f} | {ratio:.2f} | {_verdict(ratio <= limit)} "
                      f"(<= {limit}) | {vs_ref:.4f} | {_verdict(vs_ref <= 1.005)} "
                      f"| {ours.rss / MB:.0f} | {rss_limit / MB:.0f} "
                      f"| {_verdict(ours.rss <= rss_limit)} |")
    bench.say()
    return results


def section_basins(bench: Bench, names: list[str], ks: list[int], seeds: str) -> None:
    """Issue 14: a cheaper fit must not fall into a worse basin for some seeds: our fit for
    each seed on every pixel's inertia against sklearn n_init=3's (one process per k)."""
    bench.say(f"## Basins: our fit for seeds {seeds}, inertia vs sklearn n_init=3")
    bench.say()
    bench.say("| collection | k | inertia vs ref, each seed | worst / best | target 1 |")
    bench.say("|---|---|---|---|---|")
    for name in names:
        col = bench.collection(name)
        for k in ks:
            ref = bench.reference(col, k)
            out = os.path.join(bench.work, f"basins-{col.name}-{k}.npz")
            bench.log(f"basins on {col.name}, k={k}, seeds {seeds}")
            measured = run_child([sys.executable, os.path.abspath(__file__), "_basins",
                                  col.folder, str(k), seeds, out], bench.args.timeout)
            if measured.seconds is None:
                bench.say(f"| {name} | {k} | {measured.note} | | FAIL |")
                continue
            found = np.load(out)
            ratios = [inertia(bench.hist(col), found[s]) / ref for s in found.files]
            bench.say(f"| {name} | {k} | {', '.join(f'{r:.4f}' for r in ratios)} "
                      f"| {max(ratios) / min(ratios):.4f} "
                      f"| {_verdict(max(ratios) <= 1.005)} |")
    bench.say()


def section_peers(bench: Bench, names: list[str], k: int) -> None:
    """Target 3: fit + assign on the same pixels, ours and every peer, one process each."""
    bench.say(f"## Fit + assign on the same in-memory pixels, k={k} (target 3)")
    bench.say()
    bench.say("| collection | method | seconds | inertia vs ref | peak RSS MB | ours faster by "
              "| target 3 |")
    bench.say("|---|---|---|---|---|---|---|")
    for name in names:
        col = bench.collection(name)
        ref = bench.reference(col, k)
        ours, ours_inertia = bench.peer("ours", col, k, bench.args.timeout)
        ours_s = ours.data.get("seconds")
        bench.say(f"| {name} | ours (fit + label every pixel) | {_s(ours_s, ours.note)} "
                  f"| {ours_inertia / ref:.4f} | {ours.rss / MB:.0f} | | |")
        for method in bench.args.peers:
            measured, value = bench.peer(method, col, k, bench.args.timeout)
            seconds = measured.data.get("seconds")
            need = {"cv2.kmeans": 10, "dask-ml": 50, "faiss": 1}.get(method)
            if seconds is None:  # a timeout: the speed-up is at least timeout / ours
                factor = f"> {bench.args.timeout / ours_s:.0f}x" if ours_s else "-"
                ok = need is not None and ours_s is not None \
                    and bench.args.timeout / ours_s >= need
                verdict = _verdict(ok) if need else ""
            else:
                factor = f"{seconds / ours_s:.1f}x" if ours_s else "-"
                verdict = _verdict(seconds / ours_s >= need) if need and ours_s else ""
                if method == "faiss" and ours_s:
                    verdict = _verdict(seconds > ours_s and ours_inertia / ref <= 1.005)
            bench.say(f"| {name} | {method} | {_s(seconds, measured.note)} "
                      f"| {value / ref:.4f} | {measured.rss / MB:.0f} | {factor} "
                      f"| {verdict} {('(>= %dx)' % need) if need and need > 1 else ''} |")
    bench.say()


def section_memory_scaling(bench: Bench, ours: dict) -> None:
    """Targets 4 (persist: never), 5 (scaling, many small images) and 6 (LocalCluster)."""
    bench.say("## Memory, scaling and a LocalCluster, k=8 (targets 4, 5, 6)")
    bench.say()
    bench.say("| measurement | value | limit | verdict |")
    bench.say("|---|---|---|---|")
    k = 8
    small, medium, x4 = (bench.collection(n) for n in ("small", "medium", "x4"))
    runs = {c.name: (ours.get((c.name, k)) or (None, bench.ours(c, k)))[1]
            for c in (small, medium, x4)}
    for col in (medium, x4):
        never = bench.ours(col, k, "dask.persist=never", repeat=1)
        bench.say(f"| peak RSS, {col.name} ({col.n_pixels / 1e6:.0f} Mpx), dask.persist: never "
                  f"| {never.rss / MB:.0f} MB | 1024 MB | {_verdict(never.rss <= 1024 * MB)} |")
        kept = runs[col.name]
        limit = 4 * col.n_pixels + 600 * MB
        bench.say(f"| peak RSS, {col.name}, default (pixels kept in memory) "
                  f"| {kept.rss / MB:.0f} MB | {limit / MB:.0f} MB "
                  f"| {_verdict(kept.rss <= limit)} |")
    points = [(c.n_pixels, runs[c.name].seconds) for c in (small, medium, x4)]
    slope1 = (points[1][1] - points[0][1]) / (points[1][0] - points[0][0])
    slope2 = (points[2][1] - points[1][1]) / (points[2][0] - points[1][0])
    fixed = points[0][1] - slope1 * points[0][0]
    bench.say(f"| fixed cost (small -> medium line at 0 px) | {fixed:.2f} s | 1.5 s "
              f"| {_verdict(fixed <= 1.5)} |")
    bench.say(f"| slope small->medium, medium->x4 | {slope1 * 1e8:.2f}, {slope2 * 1e8:.2f} s "
              f"per 100 Mpx | within 10 % | {_verdict(abs(slope2 / slope1 - 1) <= 0.10)} |")
    many = bench.collection("many")
    many_run = bench.ours(many, k)
    throughput = (many.n_pixels / many_run.seconds) / (medium.n_pixels / runs["medium"].seconds)
    bench.say(f"| {many.n_images} images of {many.n_pixels / many.n_images / 1e6:.2f} Mpx: "
              f"{many_run.seconds:.2f} s, throughput vs medium | {throughput:.2f} | >= 0.33 "
              f"| {_verdict(throughput >= 1 / 3)} |")
    local = bench.ours(medium, k, scheduler="local")
    threads_run = runs["medium"].data["timings"]["total"]
    local_run = local.data["timings"]["total"]
    startup = local.seconds - local_run
    bench.say(f"| medium on a 2-worker LocalCluster / threads (run only; cluster start-up "
              f"{startup:.1f} s excluded) | {local_run:.2f} / {threads_run:.2f} s = "
              f"{local_run / threads_run:.2f} | 1.5 | {_verdict(local_run / threads_run <= 1.5)} |")
    bench.say()


def header(bench: Bench) -> None:
    import PIL

    cpu = "?"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    bench.say(f"# Benchmark run {time.strftime('%Y-%m-%d %H:%M %Z')}")
    bench.say()
    bench.say(f"Machine: {os.cpu_count()} CPUs ({cpu}), {platform.system()} "
              f"{platform.release()}, Python {platform.python_version()}, "
              f"load average at start {load:.2f}.")
    bench.say(f"Versions: kmeans-pipeline {_version('pipeline')}, numpy {np.__version__}, "
              f"Pillow {PIL.__version__}, dask {_version('dask')}, scikit-learn "
              f"{_version('sklearn')}, opencv {_version('cv2')}, faiss {_version('faiss')}, "
              f"dask-ml {_version('dask_ml')}.")
    bench.say(f"Ours and the floor: best of {bench.args.repeat} runs; peers: one run each, "
              f"capped at {bench.args.timeout:.0f} s.")
    bench.say()


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "_peer":
        return child_peer(sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5])
    if len(sys.argv) > 1 and sys.argv[1] == "_floor":
        return child_floor(*sys.argv[2:5])
    if len(sys.argv) > 1 and sys.argv[1] == "_basins":
        return child_basins(sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5])
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--make-collection", default=os.environ.get("KMP_MAKE_COLLECTION"),
                        help="path of make_collection.py (env KMP_MAKE_COLLECTION)")
    parser.add_argument("--workdir", default=".bench")
    parser.add_argument("--collections", default="small,medium,noisy,noisypng")
    parser.add_argument("--ks", default="5,8,16")
    parser.add_argument("--peer-collections", default="small,medium")
    parser.add_argument("--peers", default=",".join(PEERS))
    parser.add_argument("--dask-ml-python", help="python of a venv holding dask-ml, when it "
                                                 "does not install beside this dask")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=300.0)
    parser.add_argument("--ref-timeout", type=float, default=3600.0,
                        help="cap for computing a reference inertia (cached afterwards)")
    parser.add_argument("--sections", default="ours,basins,peers,scaling",
                        help="which tables, in this order (also: refs)")
    parser.add_argument("--basin-collections", default="small",
                        help="collections of the basins table (every --ks, each seed)")
    parser.add_argument("--basin-seeds", default="0,1,2,3")
    args = parser.parse_args()
    args.peers = [p for p in args.peers.split(",") if p]
    bench = Bench(args)
    header(bench)
    ours: dict = {}
    for section in args.sections.split(","):  # in the order given
        if section == "refs":  # only fill the cache of reference inertias
            for name in args.collections.split(","):
                for k in [int(k) for k in args.ks.split(",")]:
                    bench.say(f"{name} k={k}: {bench.reference(bench.collection(name), k):.6g}")
        elif section == "ours":
            ours = section_ours(bench, args.collections.split(","),
                                [int(k) for k in args.ks.split(",")])
        elif section == "basins":
            section_basins(bench, args.basin_collections.split(","),
                           [int(k) for k in args.ks.split(",")], args.basin_seeds)
        elif section == "peers":
            section_peers(bench, args.peer_collections.split(","), 8)
        elif section == "scaling":
            section_memory_scaling(bench, ours)


if __name__ == "__main__":
    main()
