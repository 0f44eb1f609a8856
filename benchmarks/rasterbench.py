"""Measuring harness shared by the raster benchmarks (`rasters.py`, issue 12; `grass.py`,
issue 13): a process tree's wall time and peak memory, the machine and version lines, one
k-means objective for every tool's label map, dask-ml on a dask array of pixel rows, and the
worker-memory events in a LocalCluster's log.  Not imported by the package or the tests.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import re
import subprocess
import sys
import threading
import time
from dataclasses import dataclass

import numpy as np

MB = 1 << 20
HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


@dataclass
class Measured:
    seconds: float
    peak_tree: int  # largest sum of RSS over the process tree at one poll, bytes
    peak_root: int  # the started process's own high-water mark (VmHWM), bytes
    peak_other: int  # the largest VmHWM of any process below it (workers, GRASS modules)
    stdout: str
    stderr: str
    returncode: int
    timed_out: bool
    spawned: int = 0  # distinct multiprocessing-spawned processes seen (dask workers)

    def json(self) -> dict:
        """The last JSON object the process printed on stdout ({} if none)."""
        lines = [line for line in self.stdout.splitlines() if line.startswith("{")]
        return json.loads(lines[-1]) if lines else {}


def measure(argv: list[str], env: dict | None = None, cwd: str | None = None,
            timeout: float | None = None) -> Measured:
    """Run ``argv``, polling every 20 ms the RSS of its process tree and each member's VmHWM.

    Not ``ru_maxrss``: Linux carries the parent's peak into a child across fork and exec, so it
    would report this benchmark process.  A run past ``timeout`` seconds is killed (whole tree).
    """
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
    peak_tree = peak_root = peak_other = 0
    timed_out = False
    spawned: dict[int, bool] = {}
    root = psutil.Process(proc.pid)
    while proc.poll() is None:
        if timeout is not None and time.perf_counter() - started > timeout:
            timed_out = True
            _kill_tree(root)
            break
        try:
            members = root.children(recursive=True)
        except psutil.Error:
            members = []
        total = 0
        for member in [root, *members]:
            try:
                total += member.memory_info().rss
            except psutil.Error:
                continue
            if member.pid not in spawned:
                try:
                    spawned[member.pid] = "spawn_main" in " ".join(member.cmdline())
                except psutil.Error:
                    spawned[member.pid] = False
            if member is root:
                peak_root = max(peak_root, vm_hwm(member.pid))
            else:
                peak_other = max(peak_other, vm_hwm(member.pid))
        peak_tree = max(peak_tree, total)
        time.sleep(0.02)
    proc.wait()
    seconds = time.perf_counter() - started
    for reader in readers:
        reader.join()
    return Measured(seconds, peak_tree, peak_root, peak_other, "".join(out), "".join(err),
                    proc.returncode, timed_out, sum(spawned.values()))


def _kill_tree(root) -> None:
    import psutil

    try:
        members = root.children(recursive=True)
    except psutil.Error:
        members = []
    for member in [*members, root]:
        try:
            member.kill()
        except psutil.Error:
            pass


def vm_hwm(pid: int) -> int:
    """A process's own peak RSS so far (VmHWM: since its exec), bytes; 0 once it is gone."""
    try:
        with open(f"/proc/{pid}/status") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def run_child(script: str, name: str, *args, threads: int = 1,
              timeout: float | None = None) -> Measured:
    """Run ``script _child NAME ARGS`` (one measured part, in its own process so its peak RSS
    is its own); a failure other than the timeout stops the benchmark with its stderr."""
    argv = [sys.executable, os.path.abspath(script), "_child", name, json.dumps(args)]
    measured = measure(argv, env=pinned_env(threads), timeout=timeout)
    if measured.returncode and not measured.timed_out:
        raise SystemExit(f"{name} failed ({measured.returncode}):\n{measured.stderr[-3000:]}")
    return measured


def serve_child(children: dict, name: str, params: str) -> int:
    """The child side of `run_child`: run one part, print its result as JSON."""
    print(json.dumps(children[name](*json.loads(params))))
    return 0


def workdir(path: str) -> str:
    work = os.path.abspath(path)
    os.makedirs(work, exist_ok=True)
    return work


def run_cli(scene: str, work: str, name: str, k: int, dask_keys: dict,
            everything: bool = False, must_pass: bool = True) -> dict:
    """``python -m pipeline run`` on a job file written for ``scene`` (k, seed 0, labels only
    unless ``everything``), output in ``work/name``; measured as `measure` does."""
    import shutil

    out_dir = os.path.join(work, name)
    shutil.rmtree(out_dir, ignore_errors=True)
    job = os.path.join(work, f"{name}.yaml")
    both = json.dumps(everything)
    with open(job, "w") as handle:
        handle.write(f"input:\n  paths: [{json.dumps(scene)}]\nkmeans:\n  k: {k}\n  seed: 0\n"
                     f"output:\n  dir: {json.dumps(out_dir)}\n  segmented: {both}\n"
                     f"  labels: true\n  masks: {both}\n  if_exists: overwrite\ndask:\n"
                     + "".join(f"  {key}: {value}\n" for key, value in dask_keys.items()))
    measured = measure([*cli(), "run", job, "--json"], env=pinned_env(1))
    if measured.returncode and must_pass:
        raise SystemExit(f"ours ({name}) failed ({measured.returncode}):\n"
                         f"{measured.stderr[-3000:]}")
    stem = os.path.splitext(os.path.basename(scene))[0]
    return {"measured": measured, "labels": os.path.join(out_dir, "labels", f"{stem}.tif"),
            "model": os.path.join(out_dir, "model.json"),
            "events": worker_events(measured.stderr)}


def pinned_env(threads: int = 1) -> dict:
    """The environment of every child: the project on the path, BLAS pools of ``threads``
    (the dask schedulers bring their own parallelism, so nested BLAS threads only contend)."""
    return {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
            "OMP_NUM_THREADS": str(threads), "OPENBLAS_NUM_THREADS": str(threads),
            "MKL_NUM_THREADS": str(threads)}


def cli() -> list[str]:
    return [sys.executable, "-m", "pipeline"]


def load_average() -> str:
    return " / ".join(f"{v:.2f}" for v in os.getloadavg())


def _project_version() -> str:
    import tomllib

    try:
        with open(os.path.join(ROOT, "pyproject.toml"), "rb") as handle:
            return tomllib.load(handle)["project"]["version"]
    except (OSError, KeyError):
        return "-"


_DISTRIBUTIONS = {"pipeline": "kmeans-pipeline", "sklearn": "scikit-learn"}


def machine(modules: list[str]) -> str:
    """The run's heading lines: time, CPUs, Python, load average now, versions."""
    import importlib
    import importlib.metadata

    versions = []
    for name in modules:
        try:
            version = importlib.import_module(name).__version__
        except Exception:
            try:
                version = importlib.metadata.version(_DISTRIBUTIONS.get(name, name))
            except Exception:
                version = _project_version() if name == "pipeline" else "-"
        versions.append(f"{name} {version}")
    try:
        commit = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"],
                                capture_output=True, text=True).stdout.strip() or "-"
    except OSError:
        commit = "-"
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return (f"{now}, commit {commit}: {os.cpu_count()} CPUs, {platform.machine()} Linux "
            f"{platform.release()}, Python {platform.python_version()}; load average at the "
            f"start {load_average()}.\nVersions: {', '.join(versions)}.")


class Objective:
    """The k-means objective of a label map: the sum over labelled pixels of the squared
    distance to the mean of the pixels with the same label, in the data's own units.

    Fed in pieces, (pixels, labels) pairs in any order; pixels whose label is ``skip`` (a
    label map's nodata) are left out and counted.  The sums are float64 over pixels minus a
    per-band offset taken from the first piece, so sum(x^2) - (sum x)^2 / n does not cancel.
    """

    def __init__(self, n_bands: int, skip: int | None = None,
                 offset: np.ndarray | None = None):
        self.n_bands, self.skip, self.offset = n_bands, skip, offset
        self.counts = np.zeros(0)
        self.sums = np.zeros((0, n_bands))
        self.squares = np.zeros(0)
        self.skipped = 0

    def add(self, pixels: np.ndarray, labels: np.ndarray) -> Objective:
        """``pixels`` (n, n_bands) of any numeric dtype, ``labels`` (n,) of integers."""
        pixels = pixels.reshape(-1, self.n_bands)
        labels = labels.reshape(-1).astype(np.int64)
        if self.skip is not None:
            keep = labels != self.skip
            self.skipped += int(len(labels) - keep.sum())
            pixels, labels = pixels[keep], labels[keep]
        if not len(labels):
            return self
        if self.offset is None:
            self.offset = np.round(pixels.mean(axis=0))
        centred = pixels.astype(np.float64) - self.offset
        size = int(labels.max()) + 1
        self._grow(size)
        self.counts[:size] += np.bincount(labels, minlength=size)
        for band in range(self.n_bands):
            self.sums[:size, band] += np.bincount(labels, centred[:, band], minlength=size)
        self.squares[:size] += np.bincount(labels, (centred * centred).sum(axis=1),
                                           minlength=size)
        return self

    def merge(self, other: Objective) -> Objective:
        """Add another piece's sums (taken with the same offset)."""
        self._grow(len(other.counts))
        size = len(other.counts)
        self.counts[:size] += other.counts
        self.sums[:size] += other.sums
        self.squares[:size] += other.squares
        self.skipped += other.skipped
        return self

    def _grow(self, size: int) -> None:
        if size > len(self.counts):
            extra = size - len(self.counts)
            self.counts = np.concatenate([self.counts, np.zeros(extra)])
            self.squares = np.concatenate([self.squares, np.zeros(extra)])
            self.sums = np.concatenate([self.sums, np.zeros((extra, self.n_bands))])

    def result(self) -> dict:
        used = self.counts > 0
        within = self.squares[used] - (self.sums[used] ** 2).sum(axis=1) / self.counts[used]
        return {"objective": float(within.sum()), "classes": int(used.sum()),
                "labelled": int(self.counts.sum()), "skipped": self.skipped}


def fit_predict_dask(model, pixels, max_iter: int | None = None) -> dict:
    """Fit an estimator with scikit-learn's API (dask-ml ``KMeans``, ``pipeline.KMeans``) on
    ``pixels``, a dask array (n, bands), then ``predict`` the same rows; the objective of its
    labels by `Objective`, each chunk of labels paired with its chunk of pixels.

    Returns seconds of fit and predict, iterations (and whether ``max_iter`` capped them), the
    estimator's own inertia and the objective.
    """
    import dask

    started = time.perf_counter()
    model.fit(pixels)
    fitted = time.perf_counter()
    labels = model.predict(pixels)
    # predict is lazy: it is timed with the pass that scores its labels chunk by chunk (a
    # bincount per chunk on top of the distances), so no label array is ever whole
    offset = np.round(np.asarray(model.cluster_centers_, np.float64).mean(axis=0))
    pieces = [dask.delayed(_piece)(rows, row_labels, offset) for rows, row_labels
              in zip(pixels.to_delayed().ravel(), labels.to_delayed().ravel())]
    objective = Objective(pixels.shape[1], offset=offset)
    for piece in dask.compute(*pieces):
        objective.merge(piece)
    done = time.perf_counter()
    n_iter = int(getattr(model, "n_iter_", 0))
    return {"fit_s": fitted - started, "predict_s": done - fitted, "seconds": done - started,
            "n_iter": n_iter, "capped": max_iter is not None and n_iter >= max_iter,
            "inertia_own": float(getattr(model, "inertia_", float("nan"))),
            **objective.result()}


def _piece(pixels: np.ndarray, labels: np.ndarray, offset: np.ndarray) -> Objective:
    return Objective(pixels.shape[1], offset=offset).add(pixels, labels)


_WORKER_EVENTS = {
    "paused": r"Pausing worker",
    "restarted": r"Restarting worker|exceeded \d+% memory budget",
    "killed": r"was killed by|KilledWorker|workers died",
    "spilled/unmanaged warnings": r"Unmanaged memory use is high|Memory use is high",
}


def worker_events(log: str) -> dict:
    """How often a LocalCluster's workers were paused, restarted or killed, counted from the
    warnings distributed's workers and nannies log (on the stderr they share with the client)."""
    return {name: len(re.findall(pattern, log)) for name, pattern in _WORKER_EVENTS.items()}


def verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("met" if ok else "**missed**")
