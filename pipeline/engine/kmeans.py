"""K-means math on one block of feature rows, in numpy: features, assignment, partial sums, updates.

No dask, no I/O, no logging.  Everything here is a pure function of its arguments, so the same
inputs give bit-identical outputs on any scheduler.  Rows may have any number of features (1 and
up) and any integer or float dtype: they become float64 only inside the per-block kernels, and
the per-cluster sums of integer rows (with integer weights, or none) are exact int64.

Determinism notes.  Distances are computed elementwise (never with BLAS, whose summation order
depends on the block size), so the label of a colour never depends on how the pixels around it
were chunked.  8-bit pixels are clustered through their *colour histogram* (unique colours and
counts): the label of a pixel is a function of its colour alone, and sums of integer features
are exact in float64 (below 2**53), so per-chunk partial sums can be merged in any order.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# sRGB (D65) -> CIE XYZ, IEC 61966-2-1; and the D65 white point.
_RGB_TO_XYZ = np.array([[0.4124564, 0.3575761, 0.1804375],
                        [0.2126729, 0.7151522, 0.0721750],
                        [0.0193339, 0.1191920, 0.9503041]])
_XYZ_TO_RGB = np.linalg.inv(_RGB_TO_XYZ)
_WHITE = _RGB_TO_XYZ.sum(axis=1)
_EPS = 216 / 24389
_KAPPA = 24389 / 27
# A 2**24 table is cheaper than sorting once a block has more pixels than this.
_BINCOUNT_ABOVE = 1 << 21
_ASSIGN_BLOCK = 1 << 15  # rows per block of `assign`: its arrays stay in L1/L2


# ---------------------------------------------------------------------------------------------
# Colours


def pack(pixels: np.ndarray) -> np.ndarray:
    """24-bit colour codes of uint8 RGB rows: ndarray of shape (n,), uint32."""
    p = pixels.astype(np.uint32)
    return (p[:, 0] << 16) | (p[:, 1] << 8) | p[:, 2]


def unpack(codes: np.ndarray) -> np.ndarray:
    """Inverse of `pack`: ndarray of shape (n, 3), uint8."""
    codes = codes.astype(np.uint32)
    return np.stack([(codes >> 16) & 255, (codes >> 8) & 255, codes & 255], axis=1).astype(np.uint8)


def histogram(pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The colours present in uint8 RGB rows and how often.

    Returns
    -------
    codes : ndarray of shape (n_colors,), uint32, increasing
    counts : ndarray of shape (n_colors,), int64
    """
    codes = pack(pixels)
    if len(codes) > _BINCOUNT_ABOVE:
        table = np.bincount(codes, minlength=1 << 24)
        present = np.flatnonzero(table)
        return present.astype(np.uint32), table[present]
    unique, counts = np.unique(codes, return_counts=True)
    return unique.astype(np.uint32), counts.astype(np.int64)


def coarse_histogram(codes: np.ndarray, counts: np.ndarray, features: np.ndarray,
                     bits: int) -> tuple[np.ndarray, np.ndarray]:
    """A colour histogram merged into boxes of ``2**(8 - bits)`` levels per RGB channel, each
    box keeping the exact (weighted) mean of its colours' features and their pixel count.

    A k-means step on the boxes costs a fraction of one on the colours; its inertia differs
    from the colours' only by the spread inside boxes cut by a cluster boundary.

    Parameters
    ----------
    codes, counts : from `histogram`
    features : ndarray of shape (n_colors, n_features), float64
        The colours' working-space features (`to_features` of `unpack(codes)`).
    bits : int, 1 to 8

    Returns
    -------
    means : ndarray of shape (n_boxes, n_features), float64, boxes in increasing order
    weights : ndarray of shape (n_boxes,), int64
    """
    drop = np.uint32(8 - bits)
    mask = np.uint32((1 << bits) - 1)
    codes = codes.astype(np.uint32)
    boxes = ((((codes >> np.uint32(16)) >> drop) & mask) << np.uint32(2 * bits)
             | (((codes >> np.uint32(8)) >> drop) & mask) << np.uint32(bits)
             | ((codes >> drop) & mask))
    w = counts.astype(np.float64)
    totals = np.bincount(boxes, weights=w, minlength=1 << (3 * bits))
    occupied = np.flatnonzero(totals)
    index = np.zeros(len(totals), np.int64)
    index[occupied] = np.arange(len(occupied))
    box = index[boxes]
    sums = np.stack([np.bincount(box, weights=features[:, c] * w, minlength=len(occupied))
                     for c in range(features.shape[1])], axis=1)
    return sums / totals[occupied, None], totals[occupied].astype(np.int64)


def to_features(pixels: np.ndarray, color_space: str) -> np.ndarray:
    """Working-space features of uint8 RGB rows: ndarray of shape (n, 3), float64.

    ``rgb`` keeps the 0-255 scale (integer-valued, so sums are exact); ``lab`` is CIELAB (D65).
    """
    if color_space == "rgb":
        return pixels.astype(np.float64)
    return rgb_to_lab(pixels.astype(np.float64) / 255.0)


def rgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """sRGB in [0, 1] -> CIELAB (D65), both of shape (n, 3), float64."""
    linear = np.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)
    xyz = _matmul3(linear, _RGB_TO_XYZ) / _WHITE
    f = np.where(xyz > _EPS, np.cbrt(xyz), (_KAPPA * xyz + 16) / 116)
    return np.stack([116 * f[:, 1] - 16, 500 * (f[:, 0] - f[:, 1]),
                     200 * (f[:, 1] - f[:, 2])], axis=1)


def lab_to_rgb(lab: np.ndarray) -> np.ndarray:
    """CIELAB (D65) -> sRGB in [0, 1] (clipped), both of shape (n, 3), float64."""
    fy = (lab[:, 0] + 16) / 116
    f = np.stack([fy + lab[:, 1] / 500, fy, fy - lab[:, 2] / 200], axis=1)
    xyz = np.where(f ** 3 > _EPS, f ** 3, (116 * f - 16) / _KAPPA) * _WHITE
    linear = np.clip(_matmul3(xyz, _XYZ_TO_RGB), 0.0, 1.0)
    return np.where(linear <= 0.0031308, linear * 12.92, 1.055 * linear ** (1 / 2.4) - 0.055)


def _matmul3(values: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    # Elementwise, not BLAS: the result of a row must not depend on the block around it.
    return np.stack([values[:, 0] * m[0] + values[:, 1] * m[1] + values[:, 2] * m[2]
                     for m in matrix], axis=1)


def centroids_to_rgb(centroids: np.ndarray, color_space: str) -> np.ndarray:
    """Centroids in the working space -> RGB, ndarray of shape (n_clusters, 3), float64 in 0-255."""
    if color_space == "rgb":
        return np.clip(centroids, 0.0, 255.0)
    return lab_to_rgb(centroids) * 255.0


# ---------------------------------------------------------------------------------------------
# One block


def assign(features: np.ndarray, centroids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Nearest centroid of each row (ties go to the lowest index).

    Parameters
    ----------
    features : ndarray of shape (n, n_features), float64
    centroids : ndarray of shape (n_clusters, n_features), float64

    Returns
    -------
    labels : ndarray of shape (n,), int64
    distances : ndarray of shape (n,), float64
        Squared Euclidean distance to that centroid.
    """
    labels, best, _ = nearest(features, centroids)
    return labels, best


def nearest(features: np.ndarray, centroids: np.ndarray, second: bool = False,
            compiled: bool | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """`assign` (and with ``second``, `assign_two`'s third result, else None).

    ``compiled``: True or False forces numba's kernel or numpy's (the same bits, tested);
    None picks by the amount of work (`_compiled`).
    """
    n = len(features)
    labels = np.empty(n, np.int64)
    best = np.empty(n)
    runner = _compiled(n * len(centroids)) if compiled is None else \
        (_compiled(0, force=True) if compiled else None)
    if runner is not None:
        out = np.empty(n) if second else best
        runner.nearest(_rows(features), as_centroids(centroids), _NO_SHIFT, _NO_SHIFT, False,
                       labels, best, out, second)
        return labels, best, out if second else None
    out = np.empty(n) if second else None
    # Rows in cache-sized blocks, channels contiguous: the same elementwise arithmetic as
    # `squared_distance` (so the same bits) without its strided reads and temporaries.
    for start in range(0, n, _ASSIGN_BLOCK):
        rows = slice(start, start + _ASSIGN_BLOCK)
        block = np.array(features[rows].T, np.float64, order="C")
        _assign_block(block, centroids, labels[rows], best[rows],
                      None if out is None else out[rows])
    return labels, best, out


# numpy's kernel for small calls; the compiled ones (`pipeline.engine.kernels`, the same bits)
# always when built ahead of time, else from this many row-centroid distances on, or always once
# numba's JIT is imported: that costs ~1 s, the numpy kernel ~5 ns per distance, the compiled
# one ~0.5-1 ns.
_COMPILE_FROM = 1 << 23
_NO_SHIFT = np.zeros(1)


def _compiled(work: int, force: bool = False):
    """`pipeline.engine.kernels` when they are built ahead of time, or when ``work``
    distances repay the JIT's start-up (or ``force``); else None."""
    import sys

    from pipeline.engine import kernels

    if kernels.AHEAD_OF_TIME:
        return kernels
    if ("pipeline.engine.compiled" not in sys.modules and work < _COMPILE_FROM
            and not force):
        return None
    try:
        # an import statement, not sys.modules: while another thread (the warm-up) is still
        # importing it, this waits for the module instead of taking it half initialised
        from pipeline.engine import compiled  # noqa: F401
    except ImportError:  # numba missing or broken: numpy gives the same labels, slower
        return None
    return kernels


def kernels_built() -> bool:
    """Whether the compiled kernels are built ahead of time (`pipeline.engine.kernels`): no
    start-up to hide behind other work."""
    from pipeline.engine import kernels

    return kernels.AHEAD_OF_TIME


def warm_up(pixel_dtypes: tuple = (), label_dtypes: tuple = (np.uint8,)) -> bool:
    """`prefer_compiled`, then each compiled kernel called once (`kernels.warm_up`): for a
    thread started before the work that needs them.  False if numba cannot be imported."""
    runner = _compiled(0, force=True)
    if runner is None:
        return False
    if runner.AHEAD_OF_TIME:
        return True
    # a fit's calls on a few rows: the kernels (and array layouts) a fit on a sample takes
    rows = np.linspace(0.0, 1.0, 96).reshape(32, 3)
    weights = np.ones(len(rows))
    centroids = kmeans_plusplus(rows, weights, 2, np.random.default_rng(0))
    lloyd(rows, weights, centroids, 2, 0.0)
    partial_sums(rows, None, centroids)
    runner.warm_up(tuple(pixel_dtypes), tuple(label_dtypes))
    return True


def compiled_if_imported():
    """`pipeline.engine.kernels` if they are built ahead of time or some caller has imported
    numba's JIT (`prefer_compiled`), else None: for callers whose work alone would not repay
    the JIT's start-up."""
    return _compiled(0)


def prefer_compiled() -> bool:
    """Import the compiled kernels now, so every later call uses them (a caller about to make
    many calls each below `_COMPILE_FROM`, such as a fit on a large sample); False if numba
    cannot be imported."""
    return _compiled(0, force=True) is not None


def _rows(features: np.ndarray) -> np.ndarray:
    """Rows as numba takes them: booleans as uint8 (one compiled variant fewer)."""
    return features.view(np.uint8) if features.dtype == np.bool_ else features


def as_centroids(centroids: np.ndarray) -> np.ndarray:
    """Centroids as the compiled kernels take them: C-contiguous float64."""
    return np.ascontiguousarray(centroids, dtype=np.float64)


def _assign_block(channels: np.ndarray, centroids: np.ndarray, labels: np.ndarray,
                  best: np.ndarray, second: np.ndarray | None = None) -> None:
    best.fill(np.inf)
    labels.fill(0)
    if second is not None:
        second.fill(np.inf)
    d = np.empty_like(best)
    term = np.empty_like(best)
    for j, centre in enumerate(centroids):
        np.subtract(channels[0], centre[0], out=d)
        np.square(d, out=d)
        for c in range(1, len(channels)):
            np.subtract(channels[c], centre[c], out=term)
            np.square(term, out=term)
            d += term
        closer = d < best
        if second is not None:
            np.minimum(second, np.where(closer, best, d), out=second)
        np.copyto(best, d, where=closer)
        np.copyto(labels, j, where=closer)


def squared_distance(features: np.ndarray, point: np.ndarray) -> np.ndarray:
    """Squared Euclidean distance of each row to one point, ndarray of shape (n,), float64."""
    d = (features[:, 0] - point[0]) ** 2
    for c in range(1, features.shape[1]):
        d += (features[:, c] - point[c]) ** 2
    return d


def squared_distances(features: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Squared Euclidean distance of every row to every centroid, elementwise (as `assign`).

    Returns
    -------
    ndarray of shape (n, n_clusters), float64
    """
    out = np.empty((len(features), len(centroids)))
    for start in range(0, len(features), _ASSIGN_BLOCK):
        block = np.ascontiguousarray(features[start:start + _ASSIGN_BLOCK].T, dtype=np.float64)
        out[start:start + _ASSIGN_BLOCK] = _distances_to(block, centroids).T
    return out


def weighted_inertia(features: np.ndarray, weights: np.ndarray | None,
                     centroids: np.ndarray) -> float:
    """Sum over rows of weight times squared distance to the nearest centroid."""
    distances = assign(features, centroids)[1]
    return float(distances.sum() if weights is None else (distances * weights).sum())


def assign_two(features: np.ndarray,
               centroids: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`assign`, and each row's squared distance to its second-nearest centroid.

    Returns
    -------
    labels, distances : as from `assign` (the same values)
    second : ndarray of shape (n,), float64 (inf with one centroid)
    """
    labels, best, second = nearest(features, centroids, second=True)
    return labels, best, second


def distance_to_own(features: np.ndarray, centroids: np.ndarray,
                    labels: np.ndarray) -> np.ndarray:
    """Squared distance of each row to centroid ``labels[i]``, added in `assign`'s order (the
    same bits): ndarray of shape (n,), float64."""
    own = centroids[labels]
    d = (features[:, 0] - own[:, 0]) ** 2
    for c in range(1, features.shape[1]):
        d += (features[:, c] - own[:, c]) ** 2
    return d


# With numpy's kernel, Lloyd keeps Hamerly's bounds from this many clusters on (measured:
# 0.6-0.9x the time of plain steps at k = 8-64, 2.4x faster at k = 128, on photo histograms;
# issue 14); with the compiled one always (`_lloyd_compiled`, against plain compiled steps:
# 0.45-0.6x on 57,000-150,000 colours at k = 8-256, 0.45-1.05x on their 27,000 boxes).
_BOUNDS_FROM = 100
# Relative slack of the bounds of `assign_hinted` and `lloyd`: far above the rounding of a
# distance (~1e-16 relative), far below any gap that matters.
SLACK = 1e-9


def assign_hinted(features: np.ndarray, centroids: np.ndarray,
                  hints: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`assign`, comparing each row only with the centroids that can beat a hint.

    With u the distance from a row to its hint's centroid, a centroid farther than 2u from
    that centroid is farther than u from the row (Elkan 2003, lemma 1), so only the nearer
    ones are compared (with a slack far above rounding, ties still go to the lowest index).
    Any hints give `assign`'s labels and distances; good hints (the previous label) are fast.

    Parameters
    ----------
    features : ndarray of shape (n, n_features), float64
    centroids : ndarray of shape (n_clusters, n_features), float64
    hints : ndarray of shape (n,), int, in [0, n_clusters)

    Returns
    -------
    labels, distances : as from `assign`
    lower : ndarray of shape (n,), float64
        A lower bound of each row's (not squared) distance to its second-nearest centroid.
    """
    own = np.sqrt(distance_to_own(features, centroids, hints))
    return _assign_hinted(features, centroids, hints, own, _gaps(centroids))


def _gaps(centroids: np.ndarray) -> np.ndarray:
    """Distances (not squared) between centroids: ndarray (n_clusters, n_clusters), float64."""
    return np.sqrt(_distances_to(np.ascontiguousarray(centroids.T), centroids))


def _assign_hinted(features: np.ndarray, centroids: np.ndarray, hints: np.ndarray,
                   own: np.ndarray,
                   gaps: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`assign_hinted` given each row's distance to its hint's centroid and `_gaps`."""
    n, n_features = features.shape
    k = len(centroids)
    neighbours = np.argsort(gaps, axis=1, kind="stable")  # gap 0 (itself) first
    sorted_gaps = np.take_along_axis(gaps, neighbours, axis=1)
    reach = 2 * own * (1 + SLACK) + SLACK
    # m[i]: the candidates of row i are neighbours[hints[i], :m[i]]; a binary search of every
    # row at once (column 0 always qualifies)
    flat, base = sorted_gaps.ravel(), hints * k
    last = np.zeros(n, np.int64)
    step = 1 << (k.bit_length() - 1)
    while step:
        ahead = last + step
        ok = ahead < k
        ok[ok] = flat[base[ok] + ahead[ok]] <= reach[ok]
        last[ok] = ahead[ok]
        step >>= 1
    m = last + 1
    channels = [np.ascontiguousarray(centroids[:, c]) for c in range(n_features)]
    labels, best, lower = np.empty(n, np.int64), np.empty(n), np.empty(n)
    low = 0
    while low < k:  # rows in groups of up to 1, 2, 4, ... candidates
        width = min(max(1, 2 * low), k)
        group = np.flatnonzero((m > low) & (m <= width))
        low = width
        for start in range(0, len(group), 1 << 14):
            rows = group[start:start + (1 << 14)]
            _assign_candidates(features[rows], channels, neighbours[hints[rows], :width],
                               m[rows], sorted_gaps[hints[rows], np.minimum(m[rows], k - 1)],
                               own[rows], labels, best, lower, rows)
    return labels, best, lower


def _assign_candidates(x: np.ndarray, channels: list[np.ndarray], candidates: np.ndarray,
                       m: np.ndarray, next_gap: np.ndarray, own: np.ndarray,
                       labels: np.ndarray, best: np.ndarray, lower: np.ndarray,
                       rows: np.ndarray) -> None:
    """One group of `assign_hinted`: rows compared with their first ``m`` candidates."""
    width = candidates.shape[1]
    d = (x[:, 0, None] - channels[0][candidates]) ** 2
    for c in range(1, len(channels)):
        d += (x[:, c, None] - channels[c][candidates]) ** 2
    if width > 1:
        d[np.arange(width) >= m[:, None]] = np.inf
    r = np.arange(len(x))
    pick = d.argmin(axis=1)
    dmin = d[r, pick]
    chosen = candidates[r, pick]
    tied = (d == dmin[:, None]).sum(axis=1) > 1
    if tied.any():  # candidates are in distance order, not index order: lowest index wins
        chosen[tied] = np.where(d[tied] == dmin[tied, None], candidates[tied],
                                len(channels[0])).min(axis=1)
    labels[rows], best[rows] = chosen, dmin
    d[r, pick] = np.inf
    second = np.sqrt(d.min(axis=1))
    beyond = np.where(m < len(channels[0]), next_gap - own, np.inf)
    lower[rows] = np.minimum(second, beyond) * (1 - SLACK) - SLACK


@dataclass
class Partial:
    """Per-cluster statistics of a block, mergeable in any order.

    ``sums`` (n_clusters, n_features) float64, ``counts`` (n_clusters,) float64 (pixel counts,
    exact integers), ``inertia`` float: the sum of squared distances to the centroids used.
    """

    sums: np.ndarray
    counts: np.ndarray
    inertia: float

    def __add__(self, other: "Partial") -> "Partial":
        return Partial(self.sums + other.sums, self.counts + other.counts,
                       self.inertia + other.inertia)

    def pack(self) -> np.ndarray:
        """As one (n_clusters, n_features + 2) array, for dask's array reductions."""
        inertia = np.zeros_like(self.counts)
        inertia[0] = self.inertia
        return np.column_stack([self.sums, self.counts, inertia])

    @classmethod
    def unpack(cls, packed: np.ndarray) -> "Partial":
        return cls(packed[:, :-2], packed[:, -2], float(packed[:, -1].sum()))


def partial_sums(features: np.ndarray, weights: np.ndarray | None,
                 centroids: np.ndarray) -> tuple[Partial, np.ndarray, np.ndarray]:
    """Assign weighted rows and sum them per cluster.

    Parameters
    ----------
    features : ndarray of shape (n, n_features), any integer or float dtype
    weights : ndarray of shape (n,) or None
        Weight of each row (the pixel count of a histogram entry), or None for one each.
    centroids : ndarray of shape (n_clusters, n_features), float64

    Returns
    -------
    partial : Partial
        ``sums`` are int64, exact, for integer rows with integer weights (or none); float64
        otherwise.
    labels, distances : as from `assign`
    """
    w = np.ones(len(features)) if weights is None else weights.astype(np.float64)
    return _partial_sums(features, w, _weighted_columns(features, weights, w), centroids)


def _weighted_columns(features: np.ndarray, weights: np.ndarray | None,
                      w: np.ndarray) -> list[np.ndarray] | None:
    """Each feature column times the weights (float64), or None when the sums are to be
    exact integers (`_integer_sums`)."""
    if _integer_rows(features, weights):
        return None
    return [features[:, c] * w for c in range(features.shape[1])]


def _integer_rows(features: np.ndarray, weights: np.ndarray | None) -> bool:
    return features.dtype.kind in "iub" and (weights is None or weights.dtype.kind in "iub")


def _partial_sums(features: np.ndarray, w: np.ndarray, weighted: list[np.ndarray] | None,
                  centroids: np.ndarray) -> tuple[Partial, np.ndarray, np.ndarray]:
    """`partial_sums` with the weights as float64 and the weighted feature columns given
    (Lloyd iterations compute them once, not every step); ``weighted`` None: integer rows."""
    n_clusters = len(centroids)
    runner = None if weighted is None or features.dtype.kind != "f" else \
        _compiled(len(features) * n_clusters)
    if runner is not None:  # one pass instead of an assignment and a bincount per feature
        labels, distances = np.empty(len(features), np.int64), np.empty(len(features))
        sums = np.zeros((n_clusters, features.shape[1]))
        counts = np.zeros(n_clusters)
        runner.assign_sums(features, w, as_centroids(centroids), labels, distances, sums, counts)
        return Partial(sums, counts, float((distances * w).sum())), labels, distances
    labels, distances = assign(features, centroids)
    return _sums_of(features, w, weighted, labels, distances, n_clusters), labels, distances


def _integer_sums(features: np.ndarray, w: np.ndarray, labels: np.ndarray,
                  n_clusters: int) -> np.ndarray:
    """Exact int64 per-cluster sums of integer rows with integral weights ``w`` (float64)."""
    n_features = features.shape[1]
    if len(features) == 0:
        return np.zeros((n_clusters, n_features), np.int64)
    # float64 bincounts are exact while every partial sum stays below 2**53: true for 8- and
    # 16-bit rows while the total weight stays below 2**37; wider integers take the int64 path.
    if features.dtype.itemsize <= 2 and float(w.sum()) * 65536 < 2.0 ** 53:
        return np.stack([np.bincount(labels, weights=features[:, c] * w, minlength=n_clusters)
                         for c in range(n_features)], axis=1).astype(np.int64)
    rows = features.astype(np.int64) * w.astype(np.int64)[:, None]
    order = np.argsort(labels, kind="stable")
    starts = np.searchsorted(labels[order], np.arange(n_clusters))
    present = np.bincount(labels, minlength=n_clusters) > 0
    sums = np.zeros((n_clusters, n_features), np.int64)
    sums[present] = np.add.reduceat(rows[order], starts[present], axis=0)
    return sums


def update(partial: Partial, centroids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """New centroids: the mean of each cluster's pixels; an empty cluster keeps its place.

    Returns
    -------
    centroids : ndarray of shape (n_clusters, n_features), float64 (a new array)
    empty : ndarray of shape (n_clusters,), bool
        Clusters with no pixels, for `reseed_empty`.
    """
    empty = partial.counts <= 0
    new = centroids.astype(np.float64, copy=True)
    full = ~empty
    new[full] = partial.sums[full] / partial.counts[full, None]
    return new, empty


def reseed_empty(centroids: np.ndarray, empty: np.ndarray, features: np.ndarray,
                 distances: np.ndarray) -> int:
    """Move each empty cluster onto the row farthest from its centroid (modified in place).

    The policy (scikit-learn's, made deterministic): empty clusters, in index order, take the
    rows with the largest distance to their nearest centroid, farthest first.  Rows at distance
    zero are never taken: with fewer distinct colours than clusters, the clusters left over keep
    their place (a duplicate colour that never wins a pixel) instead of becoming NaN or black.

    Returns
    -------
    int
        How many clusters stayed empty.
    """
    todo = np.flatnonzero(empty)
    if len(todo) == 0:
        return 0
    order = np.argsort(-distances, kind="stable")[:len(todo)]
    order = order[distances[order] > 0]
    for j, row in zip(todo, order):
        centroids[j] = features[row]
    return len(todo) - len(order)


def shift(old: np.ndarray, new: np.ndarray) -> float:
    """Sum over centroids of the squared distance each moved."""
    return float(((new - old) ** 2).sum())


def tolerance(features: np.ndarray, weights: np.ndarray | None, tol: float) -> float:
    """``tol`` in the data's units: ``tol`` times the mean per-feature (weighted) variance."""
    w = None if weights is None else weights.astype(np.float64)
    total = float(len(features)) if w is None else float(w.sum())
    if len(features) == 0 or total == 0:
        return 0.0
    # features as contiguous channels, worked in place: a third of the time of (n, d) temporaries
    channels = np.array(features.T, dtype=np.float64, order="C")
    mean = (channels if w is None else channels * w).sum(axis=1) / total
    channels -= mean[:, None]
    channels *= channels
    if w is not None:
        channels *= w
    return float(tol * (channels.sum(axis=1) / total).mean())


# ---------------------------------------------------------------------------------------------
# Whole fits on a small in-memory set (a sample, a histogram, one image)


def kmeans_plusplus(features: np.ndarray, weights: np.ndarray, n_clusters: int,
                    rng: np.random.Generator) -> np.ndarray:
    """Greedy, weighted k-means++ seeding (Arthur & Vassilvitskii 2007; scikit-learn's variant).

    Each new centre is the best, by resulting potential, of ``2 + log(n_clusters)`` candidates
    drawn with probability proportional to weight times squared distance.

    Returns
    -------
    centroids : ndarray of shape (n_clusters, n_features), float64
    """
    w = weights.astype(np.float64)
    channels = np.ascontiguousarray(features.T, dtype=np.float64)
    n_trials = 2 + int(np.log(n_clusters))
    first = int(rng.choice(len(features), p=w / w.sum()))
    runner = _compiled(len(features) * n_clusters * n_trials)
    if runner is not None and n_clusters > 1:
        return _plusplus_compiled(runner, features, channels, w, first, n_clusters, n_trials,
                                  rng)
    centroids = [features[first]]
    closest = _distances_to(channels, features[first:first + 1])[0]
    for _ in range(1, n_clusters):
        cumulative = np.cumsum(closest * w)
        potential = cumulative[-1]
        if potential <= 0:  # every colour is already a centre: duplicate the first
            centroids.append(centroids[0])
            continue
        candidates = np.searchsorted(cumulative, rng.random(n_trials) * potential, side="right")
        candidates = np.minimum(candidates, len(features) - 1)
        trials = np.minimum(closest, _distances_to(channels, features[candidates]))
        scores = (trials * w).sum(axis=1)  # numpy's pairwise sums: no BLAS, same bits anywhere
        best = int(np.argmin(scores))
        centroids.append(features[candidates[best]])
        closest = trials[best]
    return np.array(centroids, dtype=np.float64)


def _plusplus_compiled(runner, features: np.ndarray, channels: np.ndarray, w: np.ndarray,
                       first: int, n_clusters: int, n_trials: int,
                       rng: np.random.Generator) -> np.ndarray:
    """`kmeans_plusplus` after its first draw, in one compiled call (`compiled.plusplus`, the
    same arithmetic and draws: the same centres, and ``rng`` left as numpy's loop leaves it)."""
    state = rng.bit_generator.state
    uniforms = rng.random((n_clusters - 1) * n_trials)
    chosen = np.empty(n_clusters, np.int64)
    used = runner.plusplus(channels, np.ascontiguousarray(w), first, uniforms, n_trials,
                           chosen)
    if used < len(uniforms):  # stopped early: draw again only what the loop drew
        rng.bit_generator.state = state
        rng.random(used)
    return features[chosen].astype(np.float64)


def _distances_to(channels: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Squared distances of every row (given as channels, shape (n_features, n)) to each point:
    ndarray of shape (n_points, n), float64."""
    runner = _compiled(channels.shape[1] * len(points))
    if runner is not None:
        out = np.empty((len(points), channels.shape[1]))
        runner.distances_to(np.ascontiguousarray(channels, dtype=np.float64),
                            as_centroids(points), out)
        return out
    d = (channels[0][None, :] - points[:, 0:1]) ** 2
    for c in range(1, len(channels)):
        d += (channels[c][None, :] - points[:, c:c + 1]) ** 2
    return d


def random_init(features: np.ndarray, weights: np.ndarray, n_clusters: int,
                rng: np.random.Generator) -> np.ndarray:
    """``n_clusters`` distinct rows drawn with probability proportional to weight (repeating
    rows only when there are fewer rows of positive weight than clusters), as float64."""
    w = weights.astype(np.float64)
    take = min(n_clusters, int(np.count_nonzero(w)))
    rows = rng.choice(len(features), size=take, replace=False, p=w / w.sum())
    rows = np.concatenate([rows, np.resize(rows, n_clusters - take)])
    return features[rows].astype(np.float64)


@dataclass
class Step:
    """One iteration, for logging and the convergence report."""

    kind: str  # "minibatch", "lloyd", or "coarse" (Lloyd on boxes of colours)
    shift: float
    inertia: float


def lloyd(features: np.ndarray, weights: np.ndarray, centroids: np.ndarray, max_iter: int,
          tol_abs: float) -> tuple[np.ndarray, list[Step], bool]:
    """Weighted Lloyd iterations until the squared shift is at most ``tol_abs``.

    Each step assigns every row to its nearest centroid (ties to the lowest index, as
    `assign`) and moves each centroid to the mean of its rows.  Hamerly's bounds (2010) skip
    the rows whose centroid provably stays the nearest: an upper bound of the distance to it
    and a lower bound of the distance to the second-nearest, moved by how far the centroids
    moved (with a slack far above rounding); the other rows are compared with the centroids
    that can beat their label (`assign_hinted`).  Labels, distances and so the steps are
    exactly those of assigning every row from scratch (tested).  With the compiled kernels
    the bounds and the step's sums are one compiled pass (`compiled.lloyd_assign`); with
    numpy's, the bounds cost a few passes over the rows per step, so below ``_BOUNDS_FROM``
    clusters every row is assigned from scratch.

    Returns
    -------
    centroids : ndarray of shape (n_clusters, n_features), float64
    steps : list of Step
    converged : bool
    """
    if max_iter <= 0:
        return centroids, [], False
    runner = _compiled(len(features) * len(centroids))
    if runner is not None and features.dtype == np.float64 and len(centroids) > 1:
        return _lloyd_compiled(runner, features, weights, centroids, max_iter, tol_abs)
    steps: list[Step] = []
    w = weights.astype(np.float64)
    weighted = _weighted_columns(features, weights, w)
    n_clusters = len(centroids)
    bounded = n_clusters >= _BOUNDS_FROM and runner is None
    if bounded:
        labels, distances, second = assign_two(features, centroids)
        upper, lower = np.sqrt(distances), np.sqrt(second)
        partial = _sums_of(features, w, weighted, labels, distances, n_clusters)
    else:
        partial, labels, distances = _partial_sums(features, w, weighted, centroids)
    for _ in range(max_iter):
        new, moved, drift = _lloyd_update(partial, centroids, features, w, distances, steps)
        centroids = new
        if moved <= tol_abs:
            return centroids, steps, True
        if bounded:
            labels, distances = _reassign(features, centroids, labels, upper, lower, drift)
            partial = _sums_of(features, w, weighted, labels, distances, n_clusters)
        else:
            partial, labels, distances = _partial_sums(features, w, weighted, centroids)
    return centroids, steps, False


def _sums_of(features: np.ndarray, w: np.ndarray, weighted: list[np.ndarray] | None,
             labels: np.ndarray, distances: np.ndarray, n_clusters: int) -> Partial:
    """The per-cluster sums of rows already assigned (`_partial_sums` after its assignment)."""
    if weighted is None:  # integer rows: exact int64 sums
        sums = _integer_sums(features, w, labels, n_clusters)
    else:
        sums = np.stack([np.bincount(labels, weights=column, minlength=n_clusters)
                         for column in weighted], axis=1)
    counts = np.bincount(labels, weights=w, minlength=n_clusters)
    return Partial(sums, counts, float((distances * w).sum()))


def _lloyd_update(partial: Partial, centroids: np.ndarray, features: np.ndarray,
                  w: np.ndarray, distances: np.ndarray,
                  steps: list[Step]) -> tuple[np.ndarray, float, np.ndarray]:
    """One Lloyd update (a step appended to ``steps``): new centroids, their squared shift
    and each centroid's (not squared) move."""
    new, empty = update(partial, centroids)
    # A row of weight zero is not there: it never becomes a centre (histogram counts of
    # the colour pipeline are all positive, so this changes nothing for it).
    if empty.any():
        reseed_empty(new, empty, features, np.where(w > 0, distances, 0.0))
    moved = shift(centroids, new)
    steps.append(Step("lloyd", moved, partial.inertia))
    return new, moved, np.sqrt(((new - centroids) ** 2).sum(axis=1))


def neighbour_gaps(centroids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each centroid's others by increasing distance, itself first (ties in any order: the
    compiled kernels break ties between centroids by index), and those distances.

    Returns
    -------
    neighbours : ndarray of shape (n_clusters, n_clusters), int64
    sorted_gaps : ndarray of shape (n_clusters, n_clusters), float64 (not squared)
    """
    gaps = _gaps(centroids)
    np.fill_diagonal(gaps, -1.0)
    neighbours = np.argsort(gaps, axis=1)
    sorted_gaps = np.take_along_axis(gaps, neighbours, axis=1)
    sorted_gaps[:, 0] = 0.0
    return neighbours, sorted_gaps


def _lloyd_compiled(runner, features: np.ndarray, weights: np.ndarray,
                    centroids: np.ndarray, max_iter: int,
                    tol_abs: float) -> tuple[np.ndarray, list[Step], bool]:
    """`lloyd` with `compiled.lloyd_assign`: each step one compiled pass (bounds, labels,
    distances, sums); the same labels, sums and so the same steps as numpy's (tested)."""
    steps: list[Step] = []
    w = np.ascontiguousarray(weights, dtype=np.float64)
    rows = np.ascontiguousarray(features)
    n_clusters, n_features = centroids.shape
    labels, distances, second = nearest(rows, centroids, second=True)
    lower = np.sqrt(second)
    sums, counts = np.empty((n_clusters, n_features)), np.empty(n_clusters)
    runner.weighted_sums(rows, w, labels, sums, counts)
    for _ in range(max_iter):
        partial = Partial(sums.copy(), counts.copy(), float((distances * w).sum()))
        new, moved, drift = _lloyd_update(partial, centroids, rows, w, distances, steps)
        centroids = new
        if moved <= tol_abs:
            return centroids, steps, True
        top = np.argsort(drift, kind="stable")[-2:]
        runner.lloyd_assign(rows, w, as_centroids(centroids), *neighbour_gaps(centroids),
                            int(top[-1]), float(drift[top[-1]]), float(drift[top[0]]),
                            SLACK, labels, distances, lower, sums, counts)
    return centroids, steps, False


def _reassign(features: np.ndarray, centroids: np.ndarray, labels: np.ndarray,
              upper: np.ndarray, lower: np.ndarray,
              drift: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One Hamerly step of `lloyd`: bounds moved by each centroid's ``drift``, rows whose bounds
    fail reassigned; ``upper`` and ``lower`` modified in place.  Returns labels, distances."""
    if len(centroids) > 1:
        top = np.argsort(drift, kind="stable")[-2:]
        upper += drift[labels] * (1 + SLACK)
        lower -= np.where(labels == top[-1], drift[top[0]], drift[top[-1]]) * (1 + SLACK)
        gaps = _gaps(centroids)
        nearest = np.where(np.eye(len(gaps), dtype=bool), np.inf, gaps).min(axis=1)
        bound = np.maximum(0.5 * nearest[labels], lower)
        check = np.flatnonzero(upper * (1 + SLACK) + SLACK >= bound)
        upper[check] = np.sqrt(distance_to_own(features[check], centroids, labels[check]))
        check = check[upper[check] * (1 + SLACK) + SLACK >= bound[check]]
        if len(check):
            labels = labels.copy()
            labels[check], near, lower[check] = _assign_hinted(
                features[check], centroids, labels[check], upper[check], gaps)
            upper[check] = np.sqrt(near)
    return labels, distance_to_own(features, centroids, labels)


def minibatch(features: np.ndarray, weights: np.ndarray, centroids: np.ndarray,
              batch_size: int, max_iter: int, tol_abs: float,
              rng: np.random.Generator) -> tuple[np.ndarray, list[Step], bool]:
    """Mini-batch k-means with per-centre learning rates (Sculley 2010).

    Each step draws ``batch_size`` pixels (rows with probability proportional to weight) and
    moves each centre towards the mean of its pixels in the batch by ``count / total count``,
    the batch form of Sculley's per-centre rate ``1 / v``.  Stops when a step moves the centres
    less than ``tol_abs`` (sum of squared shifts) or after ``max_iter`` steps.
    """
    total = np.zeros(len(centroids))
    steps: list[Step] = []
    # Rows drawn with probability proportional to weight: inverse CDF, built once (drawing
    # with ``rng.choice(p=...)`` rebuilds it every step).
    cumulative = np.cumsum(weights, dtype=np.float64)
    last = len(features) - 1
    centroids = centroids.copy()
    for _ in range(max_iter):
        draws = np.sort(rng.random(batch_size)) * cumulative[-1]  # sorted: 5x faster search
        rows = np.searchsorted(cumulative, draws, side="right")
        batch = features[np.minimum(rows, last)]
        partial, _, distances = partial_sums(batch, None, centroids)
        total += partial.counts
        new = centroids.copy()
        hit = partial.counts > 0
        rate = partial.counts[hit] / total[hit]
        means = partial.sums[hit] / partial.counts[hit, None]
        new[hit] += rate[:, None] * (means - centroids[hit])
        reseed_empty(new, total <= 0, batch, distances)
        moved = shift(centroids, new)
        steps.append(Step("minibatch", moved, partial.inertia))
        centroids = new
        if moved <= tol_abs:
            return centroids, steps, True
    return centroids, steps, False


def jumps(features: np.ndarray, weights: np.ndarray, centroids: np.ndarray, max_iter: int,
          tol_abs: float, rng: np.random.Generator, patience: int = 3,
          trial_iter: int = 10) -> tuple[np.ndarray, list[Step], int]:
    """Non-local jumps out of a Lloyd local minimum (Fritzke 2017, "k-means-u*").

    The centre whose removal would cost least (its rows' increase in squared distance when
    they move to their second-nearest centre) jumps onto a row, drawn by weight, of the
    cluster with the largest error (sum of weighted squared distances); Lloyd iterations then
    settle the centres, and the jump is kept only if the inertia fell.  After a failed jump
    the cluster with the next-largest error is tried; ``patience`` failures in a row end the
    search.  Two centres in one blob and one centre between two blobs, the local minima that
    restarts of k-means++ only escape by luck, are what this repairs.  A trial gets at most
    ``trial_iter`` Lloyd steps (a jump that helps shows it within a few); the centres kept
    then finish their Lloyd steps.

    Parameters
    ----------
    features : ndarray of shape (n, n_features)
    weights : ndarray of shape (n,)
    centroids : ndarray of shape (n_clusters, n_features), float64
        A Lloyd fixed point (the result of `lloyd`).
    max_iter, tol_abs : as for `lloyd`, for each jump's iterations

    Returns
    -------
    centroids : ndarray of shape (n_clusters, n_features), float64
    steps : list of Step
        The Lloyd steps of the jumps kept.
    n_jumps : int
        Jumps kept.
    """
    n_clusters = len(centroids)
    w = weights.astype(np.float64)
    steps: list[Step] = []
    kept = failures = tries = 0
    converged = True
    inertia = weighted_inertia(features, weights, centroids)
    while n_clusters > 1 and failures < patience and tries < n_clusters + patience:
        tries += 1
        distances = squared_distances(features, centroids)
        labels = distances.argmin(axis=1)  # the same labels as `assign` (same arithmetic)
        distances = np.partition(distances, 1, axis=1)
        utility = np.bincount(labels, w * (distances[:, 1] - distances[:, 0]), n_clusters)
        error = np.bincount(labels, w * distances[:, 0], n_clusters)
        a = int(np.argmin(utility))
        order = [j for j in np.argsort(-error, kind="stable") if j != a]
        rows = np.flatnonzero((labels == order[failures % len(order)]) & (w > 0))
        if len(rows) < 2:
            failures += 1
            continue
        trial = centroids.copy()
        trial[a] = features[rows[int(rng.choice(len(rows), p=w[rows] / w[rows].sum()))]]
        trial, trial_steps, trial_converged = lloyd(features, weights, trial,
                                                    min(max_iter, trial_iter), tol_abs)
        trial_inertia = weighted_inertia(features, weights, trial)
        if trial_inertia < inertia:
            centroids, inertia, failures = trial, trial_inertia, 0
            converged = trial_converged
            steps += trial_steps
            kept += 1
        else:
            failures += 1
    if kept and not converged:
        centroids, final_steps, _ = lloyd(features, weights, centroids, max_iter, tol_abs)
        steps += final_steps
    return centroids, steps, kept


# ---------------------------------------------------------------------------------------------
# Spatial features and perceptual error (issue 6)

# One unit of preprocess.spatial_weight: crossing the image's longest side counts like crossing
# the whole range of one colour channel.
COLOUR_RANGE = {"rgb": 255.0, "lab": 100.0}


def position_features(positions: np.ndarray, width: int, height: int, color_space: str,
                      weight: float) -> np.ndarray:
    """Scaled (x, y) of flat pixel positions: ndarray of shape (n, 2), float64.

    Pixel centres are divided by the longest side (so distances keep the image's aspect) and
    multiplied by ``weight`` times the colour range of the working space.  Elementwise, so a
    pixel's features never depend on the block it is computed in.
    """
    scale = weight * COLOUR_RANGE[color_space] / max(width, height)
    y, x = np.divmod(positions.astype(np.int64), width)
    return np.stack([(x + 0.5) * scale, (y + 0.5) * scale], axis=1)


def spatial_features(pixels: np.ndarray, positions: np.ndarray, width: int, height: int,
                     color_space: str, weight: float) -> np.ndarray:
    """Colour then position features of uint8 RGB rows: ndarray of shape (n, 5), float64."""
    return np.column_stack([to_features(pixels, color_space),
                            position_features(positions, width, height, color_space, weight)])


def colour_lab(features: np.ndarray, color_space: str) -> np.ndarray:
    """CIELAB of the colour part (first 3 columns) of working-space features, (n, 3) float64."""
    colours = features[:, :3]
    return colours if color_space == "lab" else rgb_to_lab(colours / 255.0)


def delta_e76(lab: np.ndarray, other: np.ndarray) -> np.ndarray:
    """CIE 1976 colour difference of paired CIELAB rows: ndarray of shape (n,), float64."""
    return np.sqrt(((lab - other) ** 2).sum(axis=1))
