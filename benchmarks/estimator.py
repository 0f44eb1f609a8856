#!/usr/bin/env python3
"""Benchmark `pipeline.estimator.KMeans` beside scikit-learn and dask-ml (issue 10).

Run by hand, never by the tests (speed goals live here, not in timed assertions):

    pip install -e '.[bench]'
    python benchmarks/estimator.py               # n = 10^6 rows
    python benchmarks/estimator.py --rows 1e7    # the issue's target size

For each d in ``--features`` (3 and 8), one ``make_blobs`` problem of ``--rows`` rows with k = 8
centres, float64, is fitted with k = 8 by:

* ours on the numpy array and on a dask array of it (``--chunk`` rows per chunk, threads);
* scikit-learn ``KMeans(n_init=1)`` (the speed target's reference), ``KMeans(n_init=3)`` (the
  quality reference) and ``MiniBatchKMeans`` (defaults) on the numpy array;
* dask-ml ``KMeans`` (defaults: k-means||, Lloyd) on the same dask array.

Every inertia comes from one function, `inertia`, over every row; "inertia / ref" divides it by
scikit-learn ``KMeans(n_init=3)``'s.  Times are wall-clock seconds of ``fit``, the best of
``--repeat`` runs (one by default), all with ``random_state=0``.  Speed-ups divide the peer's
time by ours on the same kind of array (numpy for scikit-learn, dask for dask-ml).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

N_CLUSTERS = 8


def inertia(rows: np.ndarray, centroids: np.ndarray) -> float:
    """Sum of squared distances of every row to its nearest centroid (float64, blockwise)."""
    from pipeline.engine import kmeans

    total = 0.0
    for start in range(0, len(rows), 1 << 20):
        _, distances = kmeans.assign(rows[start:start + (1 << 20)], centroids)
        total += float(distances.sum())
    return total


def _fitters() -> dict:
    from sklearn.cluster import KMeans as SkKMeans
    from sklearn.cluster import MiniBatchKMeans

    from pipeline.estimator import KMeans

    def dask_ml(rows, drows):
        from dask_ml.cluster import KMeans as DaskMLKMeans

        return DaskMLKMeans(n_clusters=N_CLUSTERS, random_state=0).fit(drows)

    return {
        "ours (numpy)": lambda rows, drows: KMeans(N_CLUSTERS, random_state=0).fit(rows),
        "ours (dask)": lambda rows, drows: KMeans(N_CLUSTERS, random_state=0).fit(drows),
        "sklearn KMeans(n_init=1)": lambda rows, drows: SkKMeans(
            N_CLUSTERS, n_init=1, random_state=0).fit(rows),
        "sklearn KMeans(n_init=3)": lambda rows, drows: SkKMeans(
            N_CLUSTERS, n_init=3, random_state=0).fit(rows),
        "sklearn MiniBatchKMeans": lambda rows, drows: MiniBatchKMeans(
            N_CLUSTERS, random_state=0).fit(rows),
        "dask-ml KMeans": dask_ml,
    }


def measure(n_rows: int, n_features: int, chunk: int, repeat: int) -> list[dict]:
    import dask
    import dask.array as da
    from sklearn.datasets import make_blobs

    rows, _ = make_blobs(n_rows, n_features=n_features, centers=N_CLUSTERS, random_state=0)
    drows = da.from_array(rows, chunks=(chunk, n_features)).persist()
    results = []
    for name, fit in _fitters().items():
        best = np.inf
        for _ in range(repeat):
            with dask.config.set(scheduler="threads"):
                started = time.perf_counter()
                model = fit(rows, drows)
                best = min(best, time.perf_counter() - started)
        centres = np.asarray(model.cluster_centers_, dtype=np.float64)
        results.append({"name": name, "seconds": best, "inertia": inertia(rows, centres)})
        print(f"  d={n_features} {name}: {best:.2f} s", file=sys.stderr, flush=True)
    return results


def table(n_rows: int, by_features: dict[int, list[dict]]) -> str:
    lines = [f"n = {n_rows:,} rows, k = {N_CLUSTERS}, float64 make_blobs (random_state=0)", "",
             "| d | method | fit s | ours faster by | inertia / ref |", "|---|---|---|---|---|"]
    for n_features, results in by_features.items():
        by_name = {r["name"]: r for r in results}
        ref = by_name["sklearn KMeans(n_init=3)"]["inertia"]
        for r in results:
            ours = by_name["ours (dask)" if r["name"].startswith("dask-ml") else "ours (numpy)"]
            speedup = "" if r["name"].startswith("ours") else f"{r['seconds'] / ours['seconds']:.1f}x"
            lines.append(f"| {n_features} | {r['name']} | {r['seconds']:.2f} | {speedup} | "
                         f"{r['inertia'] / ref:.4f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=float, default=1e6, help="rows per problem (1e6, 1e7)")
    parser.add_argument("--features", type=int, nargs="+", default=[3, 8])
    parser.add_argument("--chunk", type=int, default=250_000, help="rows per dask chunk")
    parser.add_argument("--repeat", type=int, default=1, help="runs per method (best kept)")
    args = parser.parse_args(argv)
    n_rows = int(args.rows)
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.1f} at start", file=sys.stderr)
    by_features = {d: measure(n_rows, d, args.chunk, args.repeat) for d in args.features}
    print(table(n_rows, by_features))
    print(f"\nload average at the end: {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
