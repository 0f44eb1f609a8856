"""Compiled (numba) kernels of the engine's hot loops: nearest centroids; the labels and
per-class statistics of a raster window in one pass; a Lloyd step with Hamerly's bounds and
its sums in one pass; k-means++ seeding; a colour table read and filled as pixels meet it.

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
    if block.shape[0] == 3:
        # three bands (RGB, most scenes): each centroid's distances and the running minimum
        # in one branch-free loop, ~30 % faster than a pass over ``dist`` per centroid; the
        # same additions in the same order ((t0^2 + t1^2) + t2^2), so the same bits
        for j in range(centroids.shape[0]):
            c0, c1, c2 = centroids[j, 0], centroids[j, 1], centroids[j, 2]
            for i in range(m):
                t0 = block[0, i] - c0
                t1 = block[1, i] - c1
                t2 = block[2, i] - c2
                dd = t0 * t0 + t1 * t1 + t2 * t2
                b = bb[i]
                better = dd < b
                bb[i] = dd if better else b
                lb[i] = j if better else lb[i]
        return
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


@numba.njit(nogil=True, cache=True)
def lloyd_assign(x, w, centroids, neighbours, sorted_gaps, top, drift_top, drift_rest,
                 slack, labels, distances, lower, sums, counts):
    """One assignment of Lloyd with Hamerly's bounds (2010), fused with the step's sums.

    Each row's distance to its centroid is computed exactly (features added in order, as
    `nearest`); the row keeps its label while that distance is below its lower bound on the
    distance to any other centroid and half the gap from its centroid to the nearest other
    one (with a relative and absolute ``slack`` far above rounding).  Other rows are compared
    with the centroids within twice their distance of their old centroid (Elkan 2003, lemma
    1; ties to the lowest index), which gives a new lower bound.  So the labels and distances
    are `nearest`'s, bit for bit; sums and counts are added in row order, as numpy's weighted
    ``bincount`` adds them (the same bits).

    Parameters
    ----------
    x : ndarray of shape (n, n_features), float64
    w : ndarray of shape (n,), float64
    centroids : ndarray of shape (n_clusters, n_features), float64
    neighbours : ndarray of shape (n_clusters, n_clusters), int64
        Each centroid's others by increasing distance (itself first).
    sorted_gaps : ndarray of shape (n_clusters, n_clusters), float64
        The (not squared) distances from each centroid to its ``neighbours``.
    top, drift_top, drift_rest : int, float, float
        The centroid that moved most since the bounds were made, how far, and the largest
        move of the others: a row's lower bound falls by the largest move but its own.
    labels : ndarray of shape (n,), int64 (in: the last labels; out)
    distances : ndarray of shape (n,), float64 (out): squared distance to that centroid
    lower : ndarray of shape (n,), float64 (in and out): the rows' lower bounds
    sums : ndarray of shape (n_clusters, n_features), float64 (out)
    counts : ndarray of shape (n_clusters,), float64 (out)
    """
    n, d = x.shape
    k = centroids.shape[0]
    sums[:] = 0.0
    counts[:] = 0.0
    for i in range(n):
        a = labels[i]
        t = x[i, 0] - centroids[a, 0]
        own = t * t
        for f in range(1, d):
            t = x[i, f] - centroids[a, f]
            own += t * t
        bound = lower[i] - (drift_rest if a == top else drift_top) * (1 + slack)
        half = 0.5 * sorted_gaps[a, 1] if k > 1 else np.inf
        u = np.sqrt(own)
        if u * (1 + slack) + slack >= max(bound, half):
            reach = 2 * u * (1 + slack) + slack
            bb = own
            lb = a
            sb = np.inf
            m = 1
            while m < k and sorted_gaps[a, m] <= reach:
                j = neighbours[a, m]
                t = x[i, 0] - centroids[j, 0]
                dist = t * t
                for f in range(1, d):
                    t = x[i, f] - centroids[j, f]
                    dist += t * t
                if dist < bb or (dist == bb and j < lb):
                    sb = bb
                    bb = dist
                    lb = j
                elif dist < sb:
                    sb = dist
                m += 1
            beyond = sorted_gaps[a, m] - u if m < k else np.inf
            bound = min(np.sqrt(sb), beyond) * (1 - slack) - slack
            a = lb
            own = bb
            labels[i] = a
        lower[i] = bound
        distances[i] = own
        for f in range(d):
            sums[a, f] += x[i, f] * w[i]
        counts[a] += w[i]


@numba.njit(nogil=True, cache=True)
def weighted_sums(x, w, labels, sums, counts):
    """Per-label sums of ``x * w`` and of ``w``, added in row order (numpy's weighted
    ``bincount``, the same bits); ``sums`` and ``counts`` are zeroed first."""
    sums[:] = 0.0
    counts[:] = 0.0
    for i in range(x.shape[0]):
        a = labels[i]
        for f in range(x.shape[1]):
            sums[a, f] += x[i, f] * w[i]
        counts[a] += w[i]


@numba.njit(nogil=True, cache=True)
def pairwise_sum(a, start, n):
    """numpy's sum of the contiguous float64 ``a[start:start + n]``, bit for bit: its
    pairwise summation (`_pairwise_leaf` up to 128 values; above, the halves split at a
    multiple of 8 and added).  Not recursive: numba's cache cannot reload a recursive
    function (it crashes); the recursion runs on an explicit stack."""
    starts = np.empty(64, np.int64)  # n < 2**64: depth < 64
    sizes = np.empty(64, np.int64)
    lefts = np.empty(64)
    waiting = np.zeros(64, np.bool_)  # the frame's left half is summed, its right is running
    top = 0
    starts[0], sizes[0] = start, n
    while True:
        size = sizes[top]
        if size > 128:
            half = size // 2
            half -= half % 8
            waiting[top] = False
            top += 1
            starts[top], sizes[top] = starts[top - 1], half
            continue
        value = _pairwise_leaf(a, starts[top], size)
        top -= 1
        while top >= 0 and waiting[top]:  # a right half: its frame is done
            value = lefts[top] + value
            top -= 1
        if top < 0:
            return value
        lefts[top] = value  # a left half: run the right one
        waiting[top] = True
        half = sizes[top] // 2
        half -= half % 8
        starts[top + 1], sizes[top + 1] = starts[top] + half, sizes[top] - half
        top += 1


@numba.njit(nogil=True, cache=True, inline="always")
def _pairwise_leaf(a, start, n):
    """numpy's sum of at most 128 values: in 8 lanes from 8 values on."""
    if n < 8:
        total = 0.0
        for i in range(start, start + n):
            total += a[i]
        return total
    r0, r1, r2, r3 = a[start], a[start + 1], a[start + 2], a[start + 3]
    r4, r5, r6, r7 = a[start + 4], a[start + 5], a[start + 6], a[start + 7]
    i = start + 8
    whole = start + n - n % 8
    while i < whole:
        r0 += a[i]
        r1 += a[i + 1]
        r2 += a[i + 2]
        r3 += a[i + 3]
        r4 += a[i + 4]
        r5 += a[i + 5]
        r6 += a[i + 6]
        r7 += a[i + 7]
        i += 8
    total = ((r0 + r1) + (r2 + r3)) + ((r4 + r5) + (r6 + r7))
    while i < start + n:
        total += a[i]
        i += 1
    return total


@numba.njit(nogil=True, cache=True)
def plusplus(channels, w, first, uniforms, n_trials, chosen):
    """`kmeans.kmeans_plusplus`'s greedy seeding after its first centre, the same bits.

    Parameters
    ----------
    channels : ndarray of shape (n_features, n), float64
    w : ndarray of shape (n,), float64
    first : int
        The row of the first centre.
    uniforms : ndarray of shape (>= (n_clusters - 1) * n_trials,), float64
        The generator's next uniform draws, ``n_trials`` per centre.
    n_trials : int
    chosen : ndarray of shape (n_clusters,), int64 (out): the rows of the centres

    Returns
    -------
    int
        Draws used (fewer when every row became a centre and the rest repeat the first).
    """
    d, n = channels.shape
    closest = np.empty(n)
    _point_distances(channels, channels[:, first].copy(), closest)
    cumulative = np.empty(n)
    trials = np.empty((n_trials, n))
    weighted = np.empty(n)
    scores = np.empty(n_trials)
    candidates = np.empty(n_trials, np.int64)
    point = np.empty(d)
    chosen[0] = first
    used = 0
    for c in range(1, chosen.shape[0]):
        total = 0.0
        for i in range(n):
            total += closest[i] * w[i]
            cumulative[i] = total
        potential = cumulative[n - 1]
        if potential <= 0:  # every row is a centre already: the rest repeat the first
            for rest in range(c, chosen.shape[0]):
                chosen[rest] = first
            return used
        for t in range(n_trials):
            value = uniforms[used] * potential
            used += 1
            lo, hi = 0, n  # searchsorted, side="right"
            while lo < hi:
                mid = (lo + hi) >> 1
                if cumulative[mid] <= value:
                    lo = mid + 1
                else:
                    hi = mid
            candidates[t] = min(lo, n - 1)
            for f in range(d):
                point[f] = channels[f, candidates[t]]
            row = trials[t]
            _point_distances(channels, point, row)
            for i in range(n):
                if closest[i] < row[i]:
                    row[i] = closest[i]
                weighted[i] = row[i] * w[i]
            scores[t] = pairwise_sum(weighted, 0, n)
        best = 0
        for t in range(1, n_trials):
            if scores[t] < scores[best]:
                best = t
        chosen[c] = candidates[best]
        closest[:] = trials[best]
    return used


@numba.njit(nogil=True, cache=True, inline="always")
def _point_distances(channels, point, out):
    """Squared distances of every row (channels (n_features, n)) to one point, features added
    in order (`distances_to`'s arithmetic)."""
    d, n = channels.shape
    for i in range(n):
        t = channels[0, i] - point[0]
        out[i] = t * t
    for f in range(1, d):
        c = point[f]
        for i in range(n):
            t = channels[f, i] - c
            out[i] += t * t


@numba.njit(nogil=True, cache=True)
def label_codes(codes, centroids, neighbours, sorted_gaps, slack, unknown, table, distances,
                labels):
    """Labels of 24-bit RGB colour codes (``R + 256 G + 65536 B``) through a colour table,
    filling the entries not known yet (those holding ``table``'s largest value).

    A colour met for the first time is compared with the centroids within twice its distance
    of the previous pixel's centroid (Elkan 2003, lemma 1: neighbouring pixels have close
    colours, so that is few of them; ties to the lowest index): the label and squared distance
    `nearest` gives, stored as float32 (numpy's cast) before the label.

    Parameters
    ----------
    codes : ndarray of shape (n,), uint32
    centroids : ndarray of shape (n_clusters, 3), float64, RGB
    neighbours, sorted_gaps : as for `lloyd_assign`
    unknown : int
        The label of an entry not filled yet (never a cluster's).
    table : ndarray of shape (2**24,), uint8 or uint16 (in and out)
    distances : ndarray of shape (2**24,), float32 (in and out)
    labels : ndarray of shape (n,), the table's dtype (out)
    """
    hint = 0
    for i in range(codes.shape[0]):
        code = codes[i]
        label = table[code]
        if label == unknown:
            lb, bb = _nearest_colour(np.float64(code & 255), np.float64((code >> 8) & 255),
                                     np.float64(code >> 16), centroids, neighbours,
                                     sorted_gaps, slack, hint)
            distances[code] = np.float32(bb)
            table[code] = lb
            label = lb
        labels[i] = label
        hint = label


@numba.njit(nogil=True, cache=True)
def label_codes_sums(codes, centroids, neighbours, sorted_gaps, slack, unknown, table, labels,
                     counts, sums):
    """`label_codes` for a table that keeps no distances (one image's own palette), with each
    cluster's pixel count and exact sums of its colours and of their squares, from which
    `pipeline.sinks.segment` takes the inertia: a 2**24 float32 distance table is 64 MB
    mapped afresh and page-faulted in for every image (issue 14: half the time of labelling
    an image at k = 8).

    Parameters
    ----------
    codes, centroids, neighbours, sorted_gaps, slack, unknown, table, labels :
        as for `label_codes`.
    counts : ndarray of shape (n_clusters,), int64 (added to)
    sums : ndarray of shape (n_clusters, 4), float64 (added to)
        Per cluster: the sums of red, green and blue, and of red^2 + green^2 + blue^2 (all
        integers, exact in float64 below 2**53, in any order).
    """
    k = centroids.shape[0]
    # _LANES copies of every sum (pixel i adds to copy i % _LANES): neighbouring pixels
    # mostly share a cluster, and one accumulator would make each add wait for the last
    lane_counts = np.zeros((_LANES, k), np.int64)
    lane_sums = np.zeros((_LANES, k, 4))
    hint = 0
    for i in range(codes.shape[0]):
        code = codes[i]
        label = table[code]
        red = np.float64(code & 255)
        green = np.float64((code >> 8) & 255)
        blue = np.float64(code >> 16)
        if label == unknown:
            lb, _ = _nearest_colour(red, green, blue, centroids, neighbours, sorted_gaps,
                                    slack, hint)
            table[code] = lb
            label = lb
        labels[i] = label
        hint = label
        lane = i % _LANES
        lane_counts[lane, label] += 1
        lane_sums[lane, label, 0] += red
        lane_sums[lane, label, 1] += green
        lane_sums[lane, label, 2] += blue
        lane_sums[lane, label, 3] += red * red + green * green + blue * blue
    for lane in range(_LANES):
        for j in range(k):
            counts[j] += lane_counts[lane, j]
            for f in range(4):
                sums[j, f] += lane_sums[lane, j, f]


@numba.njit(nogil=True, cache=True, inline="always")
def _nearest_colour(red, green, blue, centroids, neighbours, sorted_gaps, slack, hint):
    """Label and squared distance of one colour: compared with the centroids within twice its
    distance of centroid ``hint`` (Elkan 2003, lemma 1; ties to the lowest index)."""
    k = centroids.shape[0]
    bb = _rgb_distance(red, green, blue, centroids, hint)
    lb = hint
    reach = 2 * np.sqrt(bb) * (1 + slack) + slack
    m = 1
    while m < k and sorted_gaps[hint, m] <= reach:
        j = neighbours[hint, m]
        dist = _rgb_distance(red, green, blue, centroids, j)
        if dist < bb or (dist == bb and j < lb):
            bb = dist
            lb = j
        m += 1
    return lb, bb


@numba.njit(nogil=True, cache=True, inline="always")
def _rgb_distance(red, green, blue, centroids, j):
    """Squared distance of one colour to centroid ``j``, channels added in order."""
    t = red - centroids[j, 0]
    dist = t * t
    t = green - centroids[j, 1]
    dist += t * t
    t = blue - centroids[j, 2]
    return dist + t * t


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
