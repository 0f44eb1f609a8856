"""Compiled (numba) kernels of the engine's hot loops: nearest centroids, and the labels and
per-class statistics of a raster window in one pass.

Why compiled: numpy's elementwise distance kernel makes one pass over a block per centroid
and feature (with temporaries), 5-10x the time of a loop that keeps a block of rows in cache
and runs every centroid over it; BLAS's ``|x|^2 - 2 x.c`` form is fast only for wide rows and
its summation order depends on the block size.  These loops add the squared differences of
a row in feature order, as `pipeline.engine.kmeans` does in numpy, with no fast-math: the
labels and distances are the same bits as numpy's (tested), so a pixel's label is a function
of its values alone and never of its block.

numba compiles each function once per argument type (cached on disk, ``cache=True``) and
releases the GIL (``nogil=True``), so dask's threads run them in parallel.  Importing this
module imports numba (about 0.4 s): `pipeline.engine.kmeans` does so only for work large
enough to repay it.
"""

from __future__ import annotations

import numba
import numpy as np

_BLOCK = 256  # rows per step: a block of float64 features and its distances stay in L1
_LANES = 4


@numba.njit(nogil=True, cache=True)
def nearest(x, centroids, center, scale, normalized, labels, best, second, want_second):
    """Nearest centroid of each row (ties to the lowest index), into ``labels`` and ``best``.

    Parameters
    ----------
    x : ndarray of shape (n, n_features), any integer or float dtype
    centroids : ndarray of shape (n_clusters, n_features), float64
    center, scale : ndarray of shape (n_features,), float64
        With ``normalized``, rows are ``(x - center) / scale`` first (`features.Normalization`).
    labels : ndarray of shape (n,), any integer dtype (out)
    best : ndarray of shape (n,), float64 (out): squared distance to that centroid
    second : ndarray of shape (n,), float64 (out, written when ``want_second``): squared
        distance to the second-nearest centroid (inf with one centroid)
    """
    n, d = x.shape
    k = centroids.shape[0]
    block = np.empty((d, _BLOCK))
    dist = np.empty(_BLOCK)
    bb = np.empty(_BLOCK)
    sb = np.empty(_BLOCK)
    lb = np.empty(_BLOCK, np.int64)
    for start in range(0, n, _BLOCK):
        m = min(_BLOCK, n - start)
        _load(x, start, m, center, scale, normalized, block)
        for i in range(m):
            bb[i] = np.inf
            sb[i] = np.inf
            lb[i] = 0
        for j in range(k):
            _distances(block, m, centroids, j, dist)
            if want_second:
                for i in range(m):
                    if dist[i] < bb[i]:
                        sb[i] = bb[i]
                    elif dist[i] < sb[i]:
                        sb[i] = dist[i]
            for i in range(m):
                if dist[i] < bb[i]:
                    bb[i] = dist[i]
                    lb[i] = j
        for i in range(m):
            labels[start + i] = lb[i]
            best[start + i] = bb[i]
            if want_second:
                second[start + i] = sb[i]


@numba.njit(nogil=True, cache=True, inline="always")
def _load(x, start, m, center, scale, normalized, block):
    """Rows start..start+m of ``x`` into ``block`` (n_features, m) as float64 features."""
    d = x.shape[1]
    for i in range(m):
        for f in range(d):
            value = np.float64(x[start + i, f])
            if normalized:
                value = (value - center[f]) / scale[f]
            block[f, i] = value


@numba.njit(nogil=True, cache=True, inline="always")
def _distances(block, m, centroids, j, dist):
    """Squared distances of the block's rows to centroid ``j``, features added in order."""
    d = block.shape[0]
    c0 = centroids[j, 0]
    for i in range(m):
        t = block[0, i] - c0
        dist[i] = t * t
    for f in range(1, d):
        cf = centroids[j, f]
        for i in range(m):
            t = block[f, i] - cf
            dist[i] += t * t


@numba.njit(nogil=True, cache=True, inline="always")
def _nearest_in_block(block, m, centroids, dist, bb, lb):
    """Nearest centroid (``lb``) and its squared distance (``bb``) of the block's rows; ties
    to the lowest index."""
    for i in range(m):
        bb[i] = np.inf
        lb[i] = 0
    for j in range(centroids.shape[0]):
        _distances(block, m, centroids, j, dist)
        for i in range(m):
            if dist[i] < bb[i]:
                bb[i] = dist[i]
                lb[i] = j


@numba.njit(nogil=True, cache=True)
def label_window(x, masked, centroids, center, scale, normalized, native, masked_label,
                 labels, counts, sums, squares):
    """Labels of a raster window's pixels and their per-class statistics, in one pass.

    Parameters
    ----------
    x : ndarray of shape (n, n_bands), the file's dtype
    masked : ndarray of shape (n,), bool
        Masked pixels get ``masked_label`` and enter no statistic.
    centroids : ndarray of shape (n_clusters, n_bands), float64, normalised units
    center, scale, normalized : as `nearest`
    native : ndarray of shape (n_clusters, n_bands), float64: the centroids in native units
    labels : ndarray of shape (n,), uint8 or uint16 (out)
    counts : ndarray of shape (n_clusters,), int64 (added to)
    sums, squares : ndarray of shape (n_clusters, n_bands), float64 (added to)
        Sums of (value - native centroid) and of its square per class and band: deviations
        from the centroid keep the float64 sums of squares accurate.
    """
    n, d = x.shape
    k = centroids.shape[0]
    rows = np.empty(_BLOCK, np.int64)
    block = np.empty((d, _BLOCK))
    dist = np.empty(_BLOCK)
    bb = np.empty(_BLOCK)
    lb = np.empty(_BLOCK, np.int64)
    # _LANES copies of every sum, pixel r adding to copy r % _LANES: neighbouring pixels
    # mostly share a class, and one accumulator would make each add wait for the last
    lane_counts = np.zeros((_LANES, k), np.int64)
    lane_sums = np.zeros((_LANES, k, d))
    lane_squares = np.zeros((_LANES, k, d))
    i = 0
    while i < n:
        m = 0  # the next unmasked rows, up to a block of them
        while i < n and m < _BLOCK:
            if masked[i]:
                labels[i] = masked_label
            else:
                rows[m] = i
                m += 1
            i += 1
        for r in range(m):
            for f in range(d):
                value = np.float64(x[rows[r], f])
                if normalized:
                    value = (value - center[f]) / scale[f]
                block[f, r] = value
        _nearest_in_block(block, m, centroids, dist, bb, lb)
        for r in range(m):
            label = lb[r]
            lane = r % _LANES
            labels[rows[r]] = label
            lane_counts[lane, label] += 1
            for f in range(d):
                v = np.float64(x[rows[r], f]) - native[label, f]
                lane_sums[lane, label, f] += v
                lane_squares[lane, label, f] += v * v
    for lane in range(_LANES):
        for j in range(k):
            counts[j] += lane_counts[lane, j]
            for f in range(d):
                sums[j, f] += lane_sums[lane, j, f]
                squares[j, f] += lane_squares[lane, j, f]


@numba.njit(nogil=True, cache=True)
def distances_to(channels, points, out):
    """Squared distances of every row (given as channels, (n_features, n), float64) to each
    point ((n_points, n_features), float64) into ``out`` (n_points, n): `kmeans._distances_to`
    (features added in order, the same bits) without its temporaries."""
    d, n = channels.shape
    for p in range(points.shape[0]):
        for i in range(n):
            t = channels[0, i] - points[p, 0]
            out[p, i] = t * t
        for f in range(1, d):
            c = points[p, f]
            for i in range(n):
                t = channels[f, i] - c
                out[p, i] += t * t


@numba.njit(nogil=True, cache=True)
def assign_sums(x, w, centroids, labels, best, sums, counts):
    """`nearest` and the weighted per-cluster sums of a Lloyd step in one pass.

    Parameters
    ----------
    x : ndarray of shape (n, n_features), float64 (or any float dtype)
    w : ndarray of shape (n,), float64: each row's weight
    centroids : ndarray of shape (n_clusters, n_features), float64
    labels, best : as `nearest` (out)
    sums : ndarray of shape (n_clusters, n_features), float64 (added to): x * w per cluster
    counts : ndarray of shape (n_clusters,), float64 (added to): w per cluster

    Each row's ``x * w`` is added to its cluster's sum in row order, one accumulator per
    cluster and feature, as ``np.bincount(labels, weights=x[:, f] * w)`` adds: the same bits.
    """
    n, d = x.shape
    block = np.empty((d, _BLOCK))
    dist = np.empty(_BLOCK)
    bb = np.empty(_BLOCK)
    lb = np.empty(_BLOCK, np.int64)
    for start in range(0, n, _BLOCK):
        m = min(_BLOCK, n - start)
        for i in range(m):
            for f in range(d):
                block[f, i] = np.float64(x[start + i, f])
        _nearest_in_block(block, m, centroids, dist, bb, lb)
        for i in range(m):
            label = lb[i]
            weight = w[start + i]
            labels[start + i] = label
            best[start + i] = bb[i]
            counts[label] += weight
            for f in range(d):
                sums[label, f] += block[f, i] * weight


def warm_up(pixel_dtypes=(), label_dtypes=(np.uint8,)) -> None:
    """Call every kernel once on a few rows, so numba's first-call start-up (its typing
    registries, ~1 s, and loading each cached kernel) is paid here, on a thread that overlaps
    reads, instead of by the first real call.  ``pixel_dtypes``: the rasters' dtypes, for
    `label_window` (one compiled variant per pixel and label dtype)."""
    rows = np.zeros((2, 3))
    centroids = np.zeros((2, 3))
    one = np.ones(3)
    labels, best = np.empty(2, np.int64), np.empty(2)
    distances_to(np.ascontiguousarray(rows.T), centroids, np.empty((2, 2)))
    nearest(rows, centroids, one, one, False, labels, best, best, False)
    assign_sums(rows, np.ones(2), centroids, labels, best, np.zeros((2, 3)), np.zeros(2))
    masked = np.zeros(2, np.bool_)
    for dtype in pixel_dtypes:
        for label_dtype in label_dtypes:
            label_window(np.zeros((2, 3), dtype), masked, centroids, one, one, False, centroids,
                         0, np.empty(2, label_dtype), np.zeros(2, np.int64), np.zeros((2, 3)),
                         np.zeros((2, 3)))
