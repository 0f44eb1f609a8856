"""Cluster figures for the README: graph size, client and worker peak memory, a worker killed.

Runs real `dask scheduler` / `dask worker` processes on 127.0.0.1 (the launcher the cluster
tests use) and the pipeline against them.  Not part of the test suite: it takes minutes.

    python benchmarks/cluster.py all            # or: graph | client | worker | kill | speed
    python benchmarks/cluster.py speed --folder .bench/collections/medium --ks 5,8,16  # issue 14
    python benchmarks/cluster.py worker --images 90 --side 2560 --memory-limit 400MiB

Figures are printed as one line each; the work folder (default: a temporary one) keeps the
images, outputs and process logs.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np
import psutil
import yaml
from PIL import Image

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))

from test_cluster import DaskProcesses, wait_until  # noqa: E402  (the tests' launcher)


def gradient(side: int, seed: int) -> np.ndarray:
    """Smooth colour ramps with noise (a photo-like spread of colours)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:side, 0:side].astype(np.float32) / side
    a, b, c = rng.uniform(0.5, 3.0, 3)
    image = np.stack([255 * x, 255 * y, 127 + 120 * np.sin(a * x + b * y + c)], axis=-1)
    image += rng.normal(0, 4, image.shape).astype(np.float32)
    return np.clip(image, 0, 255).astype(np.uint8)


def make_images(folder: str, n: int, side: int, fmt: str = "png") -> str:
    os.makedirs(folder, exist_ok=True)
    for i in range(n):
        path = os.path.join(folder, f"photo_{i:05d}.{fmt}")
        if not os.path.exists(path):
            Image.fromarray(gradient(side, i)).save(path, quality=92) if fmt == "jpg" else \
                Image.fromarray(gradient(side, i)).save(path, compress_level=1)
    return folder


def write_job(folder: str, images: str, **sections) -> str:
    job = {"input": {"paths": [images]}, "kmeans": {"k": 8, "seed": 0},
           "output": {"dir": "out", "masks": False, "if_exists": "overwrite"}}
    for name, values in sections.items():
        job.setdefault(name, {}).update(values)
    path = os.path.join(folder, "job.yaml")
    with open(path, "w") as handle:
        yaml.safe_dump(job, handle)
    return path


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "pipeline", *args]


# ---------------------------------------------------------------------------------------------


def graph_bytes(work: str, n_images: int) -> None:
    """Bytes of every graph the client sends, for a collection of ``n_images`` images."""
    import distributed.client

    from pipeline.cli import main

    sent: list[int] = []
    serialize = distributed.client.serialize

    def counting(*args, **kwargs):
        header, frames = serialize(*args, **kwargs)
        sent.append(len(json.dumps(header, default=str)) + sum(len(memoryview(f).cast("B"))
                                                               for f in frames))
        return header, frames

    distributed.client.serialize = counting
    images = make_images(os.path.join(work, f"graph-{n_images}", "images"), n_images, 8)
    cluster = DaskProcesses(os.path.join(work, f"graph-{n_images}", "dask"), n_workers=2)
    try:
        for algorithm in ("minibatch", "lloyd"):
            sent.clear()
            job = write_job(os.path.dirname(images), images,
                            kmeans={"algorithm": algorithm, "max_iter": 3, "tol": 0.0})
            assert main(["run", job, "-q", "--scheduler", cluster.address]) == 0
            print(f"graph, {n_images} images, {algorithm}: graphs sent "
                  f"{[round(s / 1024, 1) for s in sent]} KiB; largest "
                  f"{max(sent) / n_images:.0f} bytes per image")
    finally:
        distributed.client.serialize = serialize
        cluster.close()


def _peak_rss_of(argv: list[str]) -> tuple[int, float, int]:
    """Run ``argv`` in a fresh process; its peak RSS in bytes, seconds, exit status."""
    code = ("import resource, subprocess, sys, time; t = time.perf_counter(); "
            "rc = subprocess.run(sys.argv[1:]).returncode; "
            "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, "
            "time.perf_counter() - t, rc)")
    out = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True,
                         check=True).stdout.split()
    return int(out[0]) * 1024, float(out[1]), int(out[2])


def client_memory(work: str) -> None:
    """Client peak RSS as the collection grows in pixels and in images."""
    cluster = DaskProcesses(os.path.join(work, "client", "dask"), n_workers=2,
                            memory_limit="2GiB")
    try:
        for n, side in ((200, 128), (200, 1024), (2000, 128)):
            folder = os.path.join(work, "client", f"{n}x{side}")
            images = make_images(os.path.join(folder, "images"), n, side)
            job = write_job(folder, images)
            rss, seconds, rc = _peak_rss_of(cli("run", job, "-q", "--scheduler",
                                                cluster.address))
            print(f"client peak RSS, {n} images of {side}x{side} "
                  f"({n * side * side / 1e6:.0f} Mpx): {rss / 2**20:.0f} MiB "
                  f"({seconds:.1f} s, exit {rc})")
    finally:
        cluster.close()


class _PeakRSS(threading.Thread):
    """Polls the RSS of some processes every 20 ms and keeps the highest of each."""

    def __init__(self, pids: list[int]):
        super().__init__(daemon=True)
        self.procs = [psutil.Process(pid) for pid in pids]
        self.peak = {pid: 0 for pid in pids}
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(0.02):
            for proc in self.procs:
                try:
                    self.peak[proc.pid] = max(self.peak[proc.pid], proc.memory_info().rss)
                except psutil.Error:
                    pass


def worker_memory(work: str, n_images: int, side: int, memory_limit: str,
                  persist: str) -> None:
    """Worker peak RSS for a collection several times larger than the workers' memory."""
    from dask.utils import parse_bytes

    folder = os.path.join(work, "worker")
    images = make_images(os.path.join(folder, "images"), n_images, side, "jpg")
    decoded = n_images * side * side * 3
    cluster = DaskProcesses(os.path.join(folder, "dask"), n_workers=1,
                            memory_limit=memory_limit)
    try:
        job = write_job(folder, images, kmeans={"algorithm": "lloyd", "max_iter": 3,
                                                "tol": 0.0},
                        dask={"persist": persist})
        watch = _PeakRSS(list(cluster.worker_pids().values()))
        watch.start()
        started = time.perf_counter()
        done = subprocess.run(cli("run", job, "-q", "--json", "--scheduler", cluster.address),
                              capture_output=True, text=True)
        seconds = time.perf_counter() - started
        watch.stop.set()
        watch.join()
        limit = parse_bytes(memory_limit)
        summary = done.stdout.strip() or done.stderr.strip()
        print(f"worker peak RSS, persist {persist}: {max(watch.peak.values()) / 2**20:.0f} MiB "
              f"with memory_limit {memory_limit}, for {n_images} images of {side}x{side} = "
              f"{decoded / 2**30:.2f} GiB decoded ({decoded / limit:.1f}x the limit); "
              f"lloyd, 3 passes; {seconds:.0f} s, exit {done.returncode}: {summary}")
    finally:
        cluster.close()


def killed_worker(work: str, n_images: int, side: int) -> None:
    """Time to complete with one of 2 workers SIGKILLed halfway, against an undisturbed run."""
    folder = os.path.join(work, "kill")
    images = make_images(os.path.join(folder, "images"), n_images, side)
    cluster = DaskProcesses(os.path.join(folder, "dask"), n_workers=2, memory_limit="2GiB")
    report = os.path.join(folder, "out", "report.json")
    try:
        # A small sample keeps the client-side fit short: the segment phase is what is disturbed.
        job = write_job(folder, images, output={"masks": True},
                        kmeans={"sample_pixels": 65536})
        times: dict[str, list[float]] = {"undisturbed": [], "worker killed": []}
        for attempt in ("warm-up", *times, *times, *times):
            cluster.wait_for_workers(2)
            victim = min(cluster.worker_pids().items())
            started = time.perf_counter()
            proc = subprocess.Popen(cli("run", job, "-q", "--scheduler", cluster.address))
            if attempt == "worker killed":
                wait_until(lambda: _ok(report) >= n_images // 2, "half the images", every=0.01)
                cluster.kill_worker(*victim)
            rc = proc.wait()
            assert rc == 0, f"{attempt}: exit {rc}"
            if attempt != "warm-up":
                times[attempt].append(time.perf_counter() - started)
        for attempt, seconds in times.items():
            print(f"{attempt}: {n_images} images of {side}x{side} on 2 workers: median "
                  f"{np.median(seconds):.1f} s of {[round(t, 1) for t in seconds]}")
    finally:
        cluster.close()


def _ok(report: str) -> int:
    try:
        with open(report) as handle:
            data = json.load(handle)
    except (OSError, ValueError):
        return 0
    return data.get("totals", {}).get("ok", 0) if data.get("status") == "running" else 0


# ---------------------------------------------------------------------------------------------
# Issue 14: the cluster as fast as threads


def _timed_run(argv: list[str]) -> tuple[float, str]:
    """Wall seconds of a CLI run and its stderr."""
    started = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[3:])}: exit {done.returncode}: {done.stderr[-600:]}")
    return seconds, done.stderr


def _report_timings(job: str) -> dict:
    with open(os.path.join(os.path.dirname(job), "out", "report.json")) as handle:
        return json.load(handle)["timings"]


def _passes(stderr: str) -> list[float]:
    return [float(line.split("full pass in ")[1].split()[0]) for line in stderr.splitlines()
            if "full pass in " in line]


def localcluster_startup(repeat: int) -> tuple[float, float]:
    """Seconds to start, and to stop, a 2-worker LocalCluster as ``--scheduler local`` does
    (its own `connect`, dashboard included), in a fresh process; best of ``repeat``."""
    code = ("import time\n"
            "if __name__ == '__main__':\n"
            "    from pipeline import cluster\n"
            "    from pipeline.config import DaskConfig\n"
            "    import distributed\n"
            "    t = time.perf_counter()\n"
            "    connection = cluster.connect(DaskConfig(scheduler='local'))\n"
            "    connection.__enter__()\n"
            "    up = time.perf_counter() - t\n"
            "    t = time.perf_counter()\n"
            "    connection.__exit__(None, None, None)\n"
            "    print(up, time.perf_counter() - t)\n")
    runs = [subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           check=True).stdout.split() for _ in range(repeat)]
    return min(float(r[0]) for r in runs), min(float(r[1]) for r in runs)


# dask config for workers started the way `--scheduler local` starts its own (pipeline.cluster
# `_worker_environment`): the nanny sets no MALLOC_TRIM_THRESHOLD_ in the worker processes.
_AS_LOCAL = {"distributed.nanny.pre-spawn-environ": "{'MALLOC_TRIM_THRESHOLD_': None}"}


def speed(work: str, folder: str | None, repeat: int, ks: list[int]) -> None:
    """Issue 14's cluster targets, as ratios to the threads scheduler from one run: end to end
    on threads, `--scheduler local` (LocalCluster start-up counted, and reported alone), 2
    workers already running (started as `--scheduler local` starts them, and with `dask
    worker`'s defaults), and the scheduler overhead of a lloyd pass."""
    root = os.path.join(work, "speed")
    images = os.path.abspath(folder or make_images(os.path.join(root, "images"), 64, 1024,
                                                   "jpg"))
    print(f"load average at start: {' / '.join(f'{x:.2f}' for x in os.getloadavg())}; best "
          f"of {repeat}, runs interleaved")
    clusters = {"as local": DaskProcesses(os.path.join(root, "dask-as-local"), n_workers=2,
                                          memory_limit="2GiB", config=_AS_LOCAL),
                "dask worker defaults": DaskProcesses(os.path.join(root, "dask-defaults"),
                                                      n_workers=2, memory_limit="2GiB")}
    rows = []
    try:
        for k in ks:
            rows.append((k, *_speed_at(root, images, k, repeat, clusters)))
    finally:
        for running in clusters.values():
            running.close()
    startup, shutdown = localcluster_startup(repeat)
    _print_speed(rows, startup, shutdown)


def _speed_at(root: str, images: str, k: int, repeat: int,
              clusters: dict) -> tuple[dict, dict]:
    """Best wall seconds (and report timings) per way of running, and lloyd's passes."""
    folder = os.path.join(root, f"k{k}")
    os.makedirs(os.path.join(folder, "lloyd"), exist_ok=True)
    job = write_job(folder, images, kmeans={"k": k})
    lloyd_job = write_job(os.path.join(folder, "lloyd"), images,
                          kmeans={"algorithm": "lloyd", "k": k, "max_iter": 8, "tol": 0.0})
    base = cli("run", job, "-q")
    ways = {"threads": base, "local": [*base, "--scheduler", "local"],
            **{name: [*base, "--scheduler", running.address]
               for name, running in clusters.items()}}
    for running in clusters.values():  # warm the workers' imports and numba's caches
        _timed_run([*base, "--scheduler", running.address])
    best: dict[str, tuple[float, dict]] = {}
    for _ in range(repeat):
        for name, argv in ways.items():
            seconds, _ = _timed_run(argv)
            if name not in best or seconds < best[name][0]:
                best[name] = (seconds, _report_timings(job))
    verbose = cli("run", lloyd_job, "-vv")
    passes = {}
    for _ in range(repeat):
        for name, argv in (("threads", verbose),
                           ("as local", [*verbose, "--scheduler", clusters["as local"].address])):
            got = _passes(_timed_run(argv)[1])[1:]  # the first also loads numba's kernels
            if name not in passes or np.median(got) < np.median(passes[name]):
                passes[name] = got
    return best, passes


def _print_speed(rows: list, startup: float, shutdown: float) -> None:
    print("\n| k | measurement | seconds | ratio to threads | target |")
    print("|---|---|---|---|---|")
    for k, best, passes in rows:
        threads = best["threads"][0]
        print(f"| {k} | threads (default), end to end | {threads:.2f} | 1.00 | |")
        print(f"| {k} | 2 workers already running (started as `--scheduler local` starts "
              f"them), end to end | {best['as local'][0]:.2f} | "
              f"{best['as local'][0] / threads:.2f} | <= 1.1 |")
        print(f"| {k} | the same, workers with `dask worker`'s defaults (MALLOC_TRIM_THRESHOLD_"
              f"=65536) | {best['dask worker defaults'][0]:.2f} | "
              f"{best['dask worker defaults'][0] / threads:.2f} | |")
        print(f"| {k} | `--scheduler local`, end to end (LocalCluster start-up counted) | "
              f"{best['local'][0]:.2f} | {best['local'][0] / threads:.2f} | <= 1.35 |")
        print(f"| {k} | `--scheduler local`, the run alone (report.json total) | "
              f"{best['local'][1]['total']:.2f} | "
              f"{best['local'][1]['total'] / best['threads'][1]['total']:.2f} | |")
        extra = np.median(passes["as local"]) - np.median(passes["threads"])
        print(f"| {k} | lloyd pass, median of passes 2-8: threads "
              f"{np.median(passes['threads']):.3f}, 2 running workers "
              f"{np.median(passes['as local']):.3f}; scheduler overhead per pass (the "
              f"difference) | {extra:.3f} | | <= 0.05 |")
    print(f"| | 2-worker LocalCluster start-up alone (`--scheduler local`'s, fresh process) "
          f"| {startup:.2f} | | |")
    print(f"| | ... and its shutdown | {shutdown:.2f} | | |")
    print(f"\nload average at the end: {' / '.join(f'{x:.2f}' for x in os.getloadavg())}")
    for k, best, _ in rows:
        print(f"k = {k} phases: " + "; ".join(f"{name}: {timings}"
                                              for name, (_, timings) in best.items()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("part", choices=("all", "graph", "client", "worker", "kill",
                                             "speed"))
    parser.add_argument("--work", help="work folder (default: a new temporary one)")
    parser.add_argument("--images", type=int, default=90, help="worker: number of images")
    parser.add_argument("--side", type=int, default=2560, help="worker: image side in pixels")
    parser.add_argument("--memory-limit", default="400MiB", help="worker: its memory_limit")
    parser.add_argument("--persist", default="never", help="worker: dask.persist")
    parser.add_argument("--folder", help="speed: the collection (default: 64 synthetic "
                                         "1024x1024 JPEGs)")
    parser.add_argument("--repeat", type=int, default=3, help="speed: best of")
    parser.add_argument("--ks", default="8", help="speed: values of k, e.g. 5,8,16")
    args = parser.parse_args()
    work = os.path.abspath(args.work or tempfile.mkdtemp(prefix="kmeans-cluster-bench-"))
    print(f"work folder: {work}; {os.cpu_count()} CPUs")
    if args.part in ("all", "graph"):
        graph_bytes(work, 1000)
    if args.part in ("all", "client"):
        client_memory(work)
    if args.part in ("all", "kill"):
        killed_worker(work, 96, 512)
    if args.part in ("all", "worker"):
        worker_memory(work, args.images, args.side, args.memory_limit, args.persist)
    if args.part in ("all", "speed"):
        speed(work, args.folder, args.repeat, [int(k) for k in args.ks.split(",")])


if __name__ == "__main__":
    main()
