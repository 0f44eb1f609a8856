"""Fit centroids: seeding and iterations on a sample, and full Lloyd passes over dask chunks.

Design (see README, "How the fit works"): one pass over the collection draws a reproducible
random sample of pixels (``kmeans.sample_pixels``, positions fixed by the seed).  ``minibatch``
runs Sculley's mini-batch steps on that sample, then (``refine``) full Lloyd steps on the
sample's colour histogram; ``lloyd`` seeds from the sample and then makes every step a full pass
over the colour histogram of every pixel (made once from per-chunk histograms, exact), split by
colour code into a fixed number of shards held where the passes run; a pass adds the shards'
partial sums (sums, counts, inertia) in shard order.  Everything on the sample runs in numpy in
this process, so the result is bit-identical on any scheduler and for any chunking.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import dask
import numpy as np

from pipeline import cluster
from pipeline.engine import kmeans
from pipeline.config import KMeansConfig
from pipeline.engine.delta_e import ciede2000

if TYPE_CHECKING:
    import dask.array as da

log = logging.getLogger(__name__)
_SPLIT_EVERY = 8  # fan-in of the tree merge of per-chunk colour histograms
# k: auto searches on at most this many sample rows (evenly strided, so every image keeps its
# share): the mean error of 65,536 pixels is known to a few hundredths of a Delta-E unit, and
# each trial fit costs a fraction of one on the full sample.
_AUTO_ROWS = 1 << 16
# Rows with positions have no colour histogram to shrink them: the spatial fit keeps at most
# this many sample rows (evenly strided), which bounds a Lloyd step to ~0.05 s at k = 8.
_SPATIAL_ROWS = 1 << 18
# The starts run on the sample's colours merged into boxes of 4 levels per channel (issue 14):
# 3-8x fewer points than colours on photos; with the jumps below, the winner refined on the
# colours lands within 0.5 % of a thorough fit on the colours (tests/test_fit_quality.py).
_COARSE_BITS = 6
# Each start on the boxes is compared after at most this many Lloyd steps; only the winner
# goes on to converge (issue 14: most of a start's steps polish a basin already chosen).
_START_STEPS = 10
# Jumps on the boxes (`_fit_on_boxes`) up to this k, with this patience: on the benchmark's
# `small` at k = 16, seeds 0-3 all reach the better basin with 10, not with kmeans.jumps's 3;
# above k = 32 they cost seconds for under 0.3 % (benchmarks/prototype.py, issue 14).
_JUMPS_UP_TO = 32
_JUMP_PATIENCE = 10
# One image's own palette (scope: image) jumps with kmeans.jumps's own patience: on `small`
# at k = 8 / 16 its fit costs 26 % / 17 % less than with 10, for +0.02 % / +0.04 % painted MSE.
IMAGE_JUMP_PATIENCE = 3
_JUMP_BITS = 5  # the jumps' trials run on boxes of 8 levels: the same basins, half the cost
# Above _JUMPS_UP_TO the starts run on boxes of 8 levels when there are at least this many per
# cluster (issue 14): k-means++ and the starts' steps cost k per point, and the winner then
# converges on the finer boxes and the colours.  `small`, scope image: the fit 1.5x faster at
# k = 64 (painted MSE +0.1 %), 1.2x at k = 256 (+1 %); with 8 per cluster rather than 16,
# 1.35x at k = 256 but 2.5 % worse on rocket.jpg.
_SEED_BITS = 5
_SEED_BOXES_PER_CLUSTER = 16
# Random streams (seed, stream): starts use 0..n_init - 1, the jumps this one.
_JUMP_STREAM = (1 << 30) + 1


@dataclass
class FitResult:
    """Fitted centroids and how the fit went.

    ``centroids`` : ndarray of shape (n_clusters, 3), float64, in the working colour space.
    """

    centroids: np.ndarray
    steps: list[kmeans.Step] = field(default_factory=list)
    converged: bool = False
    n_distinct: int = 0  # distinct colours in what the fit saw
    warnings: list[str] = field(default_factory=list)

    @property
    def n_iter(self) -> int:
        return len(self.steps)


@dataclass
class _Points:
    """A weighted point set: the colour histogram of a sample, in the working space
    (``codes``: its 24-bit colours; None for rows that are not colours)."""

    features: np.ndarray
    weights: np.ndarray
    codes: np.ndarray | None = None
    rgb: bool = False  # the features are the colours' 0-255 values (integers)

    @classmethod
    def from_pixels(cls, pixels: np.ndarray, color_space: str) -> "_Points":
        codes, counts = kmeans.histogram(pixels)
        return cls(kmeans.to_features(kmeans.unpack(codes), color_space), counts, codes,
                   color_space == "rgb")

    def coarse(self, bits: int = 0) -> "_Points":
        """The colours merged into boxes (`kmeans.coarse_histogram`), of ``bits`` per channel
        (default ``_COARSE_BITS``)."""
        return _Points(*kmeans.coarse_histogram(self.codes, self.weights, self.features,
                                                bits or _COARSE_BITS))


# A fit on this many colour-centroid distances per pass or more uses the compiled kernels for
# all its passes, even those below the engine's per-call threshold (numba's start-up, ~1.3 s
# once per process, is then under the time it saves).
_COMPILED_FROM = 1 << 21


def fit_sample(pixels: np.ndarray, cfg: KMeansConfig, color_space: str,
               init: np.ndarray | None = None, patience: int = _JUMP_PATIENCE) -> FitResult:
    """Fit centroids to an in-memory sample of pixels (or all pixels of one image).

    Parameters
    ----------
    pixels : ndarray of shape (n_pixels, 3), uint8
    cfg : KMeansConfig
    color_space : str
    init : ndarray of shape (n_clusters, 3), float64, optional
        Centroids of a saved model (``kmeans.init`` naming a model.json).
    patience : int
        Failed jumps in a row after which the winner's jumps stop (`kmeans.jumps`).

    Returns
    -------
    FitResult
        For ``algorithm: lloyd`` the steps run on ``pixels`` in full; the collection-scope
        driver `fit_collection` instead continues with full passes over the chunks.
    """
    points = _Points.from_pixels(pixels, color_space)
    result = _best_of_starts(points, cfg, init, iterate=True, patience=patience)
    _warn_degenerate(result, len(points.weights), cfg.n_clusters)
    return result


def _best_of_starts(points: _Points, cfg: KMeansConfig, init: np.ndarray | None,
                    iterate: bool, parallel: bool = False,
                    patience: int = _JUMP_PATIENCE) -> FitResult:
    """Seed ``n_init`` times and keep the start with the lowest inertia on ``points`` (the
    first of equals).

    Colours fitted with ``minibatch`` and ``refine`` go through `_fit_on_boxes`.  Otherwise
    every start runs all its steps (mini-batch, then Lloyd with ``refine``) on ``points``.
    With ``parallel`` the starts are tasks on the active scheduler (each has its own random
    stream, so the result is the same).
    """
    tol_abs = kmeans.tolerance(points.features, points.weights, cfg.tol)
    iterate = iterate and cfg.max_iter > 0
    if (iterate and init is None and points.codes is not None and cfg.algorithm == "minibatch"
            and cfg.refine):
        return _fit_on_boxes(points, cfg, tol_abs, parallel, patience)
    if iterate and len(points.weights) * cfg.n_clusters >= _COMPILED_FROM:
        kmeans.prefer_compiled()  # the fit's many passes repay numba's start-up
    starts = range(1 if init is not None else cfg.n_init)
    return _run_starts(points, cfg, init, starts, tol_abs, iterate, False, parallel)


def _run_starts(points: _Points, cfg: KMeansConfig, init: np.ndarray | None, starts: range,
                tol_abs: float, iterate: bool, boxes: bool, parallel: bool) -> FitResult:
    """The start with the lowest inertia on ``points`` (the first of equals)."""
    if parallel and len(starts) > 1:
        shared = dask.delayed(points, traverse=False)
        outcomes = cluster.compute_here(*[dask.delayed(_start, pure=True)(
            shared, cfg, init, start, tol_abs, iterate, boxes) for start in starts])
    else:
        outcomes = [_start(points, cfg, init, start, tol_abs, iterate, boxes)
                    for start in starts]
    return min(outcomes, key=lambda outcome: outcome[0])[1]


def _fit_on_boxes(points: _Points, cfg: KMeansConfig, tol_abs: float,
                  parallel: bool, patience: int = _JUMP_PATIENCE) -> FitResult:
    """The fit of issue 14: the starts, each seeded and run by Lloyd steps on the colours
    merged into boxes (`_Points.coarse`, 3-8x fewer points on photos; a mini-batch step,
    ``batch_pixels`` draws from fewer points, would cost more than a full step); the winner's
    jumps out of its local minimum (`kmeans.jumps`, up to k = 32, where the basins of starts
    differ by percents) on boxes twice as large, back on the boxes when a jump was kept; then
    Lloyd steps on the colours (up to k = 32 on RGB colours taken through their boxes,
    `_lloyd_through_boxes`: the same steps at about the boxes' cost)."""
    boxes = points.coarse()
    # Up to k = 32 every pass is on the boxes (the last ones `_lloyd_through_boxes`, each
    # about one on the boxes): they decide whether numba's start-up (1-2 s) pays; above, the
    # Lloyd steps on the colours do.
    through_boxes = points.rgb and cfg.n_clusters <= _JUMPS_UP_TO
    passes_on = boxes if through_boxes else points
    if len(passes_on.weights) * cfg.n_clusters >= _COMPILED_FROM:
        kmeans.prefer_compiled()
    seeds = _seed_boxes(points, boxes, cfg.n_clusters)
    best = _run_starts(seeds, cfg, None, range(cfg.n_init), tol_abs, True, True, parallel)
    centroids, steps = best.centroids, best.steps
    if seeds is not boxes or (not best.converged and cfg.max_iter > len(steps)):
        # on the seeds' boxes the starts' steps were this phase's first ones
        left = cfg.max_iter if seeds is not boxes else cfg.max_iter - len(steps)
        centroids, more, _ = kmeans.lloyd(boxes.features, boxes.weights, centroids, left,
                                          tol_abs)
        steps = steps + _coarse(more)
    if cfg.n_clusters <= _JUMPS_UP_TO:
        centroids, more = _jump(points, boxes, centroids, cfg, tol_abs, patience)
        steps = steps + more
    if through_boxes:
        centroids, lloyd_steps, converged = _lloyd_through_boxes(points, boxes, centroids,
                                                                 cfg.max_iter, tol_abs)
    else:
        centroids, lloyd_steps, converged = kmeans.lloyd(points.features, points.weights,
                                                         centroids, cfg.max_iter, tol_abs)
    return FitResult(centroids, steps + lloyd_steps, converged, len(points.weights))


def _seed_boxes(points: _Points, boxes: _Points, n_clusters: int) -> _Points:
    """Where the starts run: ``boxes``, or above k = `_JUMPS_UP_TO` boxes of `_SEED_BITS` when
    there are enough of them (at high k a start's seeding and steps cost k per point, and the
    finer boxes and colours then decide the fit's last percent)."""
    if n_clusters <= _JUMPS_UP_TO:
        return boxes
    seeds = points.coarse(_SEED_BITS)
    return seeds if len(seeds.weights) >= _SEED_BOXES_PER_CLUSTER * n_clusters else boxes


# Relative and absolute slack of `_lloyd_through_boxes`'s test that a box lies in one cell:
# far above the rounding of its distances, far below the distances it compares.
_BOX_SLACK = 1e-9


def _lloyd_through_boxes(points: _Points, boxes: _Points, centroids: np.ndarray,
                         max_iter: int, tol_abs: float) -> tuple[np.ndarray, list[kmeans.Step],
                                                                 bool]:
    """`kmeans.lloyd` on the colours of an RGB sample (the same labels, sums and so centroids
    bit for bit, the same steps) at about the cost of steps on its boxes (issue 14: the
    colours' count grows with the content, 618,935 on 1 Mpx of a noisy PNG, 5-12x the boxes).

    A box of `_Points.coarse` holds colours of one cube of 4 levels per channel.  When its
    mean's nearest centroid beats the second-nearest by more than twice the largest distance
    from the mean to a corner of its cube, every colour in it has that nearest centroid
    (triangle inequality), and the box adds its exact sums, count and inertia (its colours'
    spread about the mean plus its count times the mean's distance) to that cluster at once.
    The colours of the other boxes are assigned one by one.  The sums are of integer colour
    values times integer counts, exact in float64 in any order, so the centroids are those of
    `kmeans.lloyd`; only the inertia logged with each step may differ in its last bits.  A
    step that leaves a cluster empty re-seeds it from the distances of every colour, as
    `kmeans.lloyd` does.

    Parameters
    ----------
    points : _Points
        The colours, ``rgb`` features of shape (n_colours, 3), float64.
    boxes : _Points
        ``points.coarse()``.
    centroids : ndarray of shape (n_clusters, 3), float64
    max_iter, tol_abs : as for `kmeans.lloyd`

    Returns
    -------
    As `kmeans.lloyd`: centroids, steps, converged.
    """
    features, w = points.features, points.weights.astype(np.float64)
    n_clusters, n_boxes = len(centroids), len(boxes.weights)
    if max_iter <= 0:
        return centroids, [], False
    drop = 8 - _COARSE_BITS
    cells = features.astype(np.int64) >> drop
    key = (cells[:, 0] << (2 * _COARSE_BITS)) | (cells[:, 1] << _COARSE_BITS) | cells[:, 2]
    # boxes are in increasing order of their cell (`kmeans.coarse_histogram`): a colour's box
    # is the rank of its cell among the occupied ones
    occupied = np.zeros(1 << (3 * _COARSE_BITS), bool)
    occupied[key] = True
    box = (np.cumsum(occupied) - 1)[key]
    weighted = [features[:, c] * w for c in range(3)]
    box_sums = [np.bincount(box, weights=column, minlength=n_boxes) for column in weighted]
    box_counts = boxes.weights.astype(np.float64)
    means = boxes.features
    low = (means.astype(np.int64) >> drop << drop).astype(np.float64)  # the cube's corner
    far = np.maximum(means - low, low + ((1 << drop) - 1) - means)
    reach = 2 * np.sqrt((far ** 2).sum(axis=1)) * (1 + _BOX_SLACK) + _BOX_SLACK
    # each box's spread about its mean: sum of w |x|^2 less count |mean|^2
    spread = np.bincount(box, weights=w * (features ** 2).sum(axis=1), minlength=n_boxes) \
        - box_counts * (means ** 2).sum(axis=1)
    steps: list[kmeans.Step] = []
    for _ in range(max_iter):
        box_labels, nearest, second = kmeans.nearest(means, centroids, second=True)
        whole = np.sqrt(second) - np.sqrt(nearest) > reach
        rows = np.flatnonzero(~whole[box])
        labels, distances = kmeans.assign(features[rows], centroids)
        held = box_labels[whole]
        sums = np.stack([np.bincount(held, weights=box_sums[c][whole], minlength=n_clusters)
                         + np.bincount(labels, weights=weighted[c][rows], minlength=n_clusters)
                         for c in range(3)], axis=1)
        counts = np.bincount(held, weights=box_counts[whole], minlength=n_clusters) \
            + np.bincount(labels, weights=w[rows], minlength=n_clusters)
        inertia = float((nearest[whole] * box_counts[whole]).sum() + spread[whole].sum()
                        + (distances * w[rows]).sum())
        new, empty = kmeans.update(kmeans.Partial(sums, counts, inertia), centroids)
        if empty.any():  # rare: `kmeans.lloyd`'s re-seeding needs every colour's distance
            _, every = kmeans.assign(features, centroids)
            kmeans.reseed_empty(new, empty, features, np.where(w > 0, every, 0.0))
        moved = kmeans.shift(centroids, new)
        steps.append(kmeans.Step("lloyd", moved, inertia))
        centroids = new
        if moved <= tol_abs:
            return centroids, steps, True
    return centroids, steps, False


def _jump(points: _Points, boxes: _Points, centroids: np.ndarray, cfg: KMeansConfig,
          tol_abs: float, patience: int) -> tuple[np.ndarray, list[kmeans.Step]]:
    """`kmeans.jumps` on boxes of ``_JUMP_BITS``, then Lloyd on ``boxes`` if one was kept."""
    big = points.coarse(_JUMP_BITS)
    rng = np.random.default_rng([cfg.seed, _JUMP_STREAM])
    centroids, steps, kept = kmeans.jumps(big.features, big.weights, centroids, cfg.max_iter,
                                          tol_abs, rng, patience=patience)
    log.debug("%d jump(s) kept", kept)
    if kept:
        centroids, more, _ = kmeans.lloyd(boxes.features, boxes.weights, centroids,
                                          cfg.max_iter, tol_abs)
        steps = steps + more
    return centroids, _coarse(steps)


def _coarse(steps: list[kmeans.Step]) -> list[kmeans.Step]:
    """Steps on boxes, marked as such for the report (their inertia is the boxes')."""
    return [kmeans.Step("coarse", step.shift, step.inertia) for step in steps]


def _start(points: _Points, cfg: KMeansConfig, init: np.ndarray | None, start: int,
           tol_abs: float, iterate: bool, boxes: bool = False) -> tuple[float, FitResult]:
    """One start: seed, then its own steps; returns (inertia on ``points``, result).  With
    ``boxes`` the points are boxes of colours and the steps Lloyd steps (kind "coarse")."""
    rng = np.random.default_rng([cfg.seed, start])
    result = FitResult(_seed(points, cfg, init, rng), n_distinct=len(points.weights))
    if boxes:
        centroids, steps, converged = kmeans.lloyd(points.features, points.weights,
                                                   result.centroids,
                                                   min(cfg.max_iter, _START_STEPS), tol_abs)
        result = FitResult(centroids, _coarse(steps), converged, len(points.weights))
    elif iterate:
        result = _iterate(points, cfg, result.centroids, tol_abs, rng)
    score = kmeans.partial_sums(points.features, points.weights, result.centroids)[0].inertia
    log.debug("start %d: sample inertia %.6g after %d steps", start, score, result.n_iter)
    return score, result


def _seed(points: _Points, cfg: KMeansConfig, init: np.ndarray | None,
          rng: np.random.Generator) -> np.ndarray:
    if init is not None:
        return init.astype(np.float64, copy=True)
    if cfg.init == "random":
        return kmeans.random_init(points.features, points.weights, cfg.n_clusters, rng)
    return kmeans.kmeans_plusplus(points.features, points.weights, cfg.n_clusters, rng)


def _iterate(points: _Points, cfg: KMeansConfig, centroids: np.ndarray, tol_abs: float,
             rng: np.random.Generator) -> FitResult:
    """One start's steps: mini-batch steps, then (``refine``) Lloyd iterations; or Lloyd
    iterations alone."""
    steps: list[kmeans.Step] = []
    if cfg.algorithm == "minibatch":
        centroids, steps, converged = kmeans.minibatch(
            points.features, points.weights, centroids, cfg.batch_pixels, cfg.max_iter,
            tol_abs, rng)
        if not cfg.refine:
            return FitResult(centroids, steps, converged, len(points.weights))
    centroids, lloyd_steps, converged = kmeans.lloyd(
        points.features, points.weights, centroids, cfg.max_iter, tol_abs)
    return FitResult(centroids, steps + lloyd_steps, converged, len(points.weights))


def _warn_degenerate(result: FitResult, n_distinct: int, n_clusters: int) -> None:
    if n_clusters == 1 and n_distinct > 1:
        result.warnings.append(f"k=1: all {n_distinct} distinct colours are painted with their "
                               "mean; raise kmeans.k to segment")
    if n_distinct < n_clusters:
        result.warnings.append(f"found {n_distinct} distinct colour(s), fewer than k={n_clusters}; "
                               f"{n_clusters - n_distinct} cluster(s) will stay empty")


def fit_collection(sample: np.ndarray, pixels: da.Array | None, cfg: KMeansConfig,
                   color_space: str, init: np.ndarray | None, persist: bool,
                   masked: da.Array | None = None) -> FitResult:
    """Fit one palette for the whole collection.

    Parameters
    ----------
    sample : ndarray of shape (n_sample, 3), uint8
        The reproducible sample drawn by the read stage.
    pixels : dask array of shape (n_pixels, 3), uint8, or None
        Every pixel, chunked; needed for ``algorithm: lloyd`` only.
    cfg : KMeansConfig
    color_space : str
    init : ndarray, optional
        Centroids of a saved model to start from.
    persist : bool
        Keep the per-chunk colour histograms in (cluster) memory across Lloyd passes; when
        False every pass decodes the files again.
    masked : dask array of shape (n_pixels,), bool, optional
        True where a pixel of ``pixels`` is masked (`collection.mask_array`, chunked as
        ``pixels``): such pixels are in no histogram, so in no sum, count or inertia.

    Returns
    -------
    FitResult
    """
    points = _Points.from_pixels(sample, color_space)
    if cfg.algorithm == "minibatch" or cfg.max_iter == 0:
        result = _best_of_starts(points, cfg, init, iterate=True, parallel=True)
    else:
        seeded = _best_of_starts(points, cfg, init, iterate=False, parallel=True)
        result = _lloyd_passes(pixels, points, seeded.centroids, cfg, color_space, persist,
                               masked)
    for i, step in enumerate(result.steps):
        log.info("iteration %d (%s): centroid shift %.4g, inertia %.6g", i + 1, step.kind,
                 step.shift, step.inertia)
    _warn_degenerate(result, len(points.weights), cfg.n_clusters)
    return result


def _lloyd_passes(pixels: da.Array, points: _Points, centroids: np.ndarray, cfg: KMeansConfig,
                  color_space: str, persist: bool, masked: da.Array | None = None) -> FitResult:
    """Lloyd steps, each a full pass over every pixel: over the collection's colour histogram
    (`collection_histogram`), in `_SHARDS` shards held where the passes run (`cluster.Parts`;
    recomputed from the files every pass without ``persist``)."""
    started = time.perf_counter()
    shards = cluster.hold_parts(collection_histogram(pixels, masked), _shard, _SHARDS,
                                color_space, keep=persist)
    log.debug("colour shards held in %.2f s", time.perf_counter() - started)
    tol_abs = kmeans.tolerance(points.features, points.weights, cfg.tol)
    steps: list[kmeans.Step] = []
    try:
        for _ in range(cfg.max_iter):
            started = time.perf_counter()
            partial = full_pass(shards, centroids)
            new, empty = kmeans.update(partial, centroids)
            if empty.any():
                _, distances = kmeans.assign(points.features, new)
                kmeans.reseed_empty(new, empty, points.features, distances)
                log.warning("%d empty cluster(s) re-seeded at the sample's farthest colours",
                            int(empty.sum()))
            moved = kmeans.shift(centroids, new)
            steps.append(kmeans.Step("lloyd", moved, partial.inertia))
            log.debug("full pass in %.3f s", time.perf_counter() - started)
            centroids = new
            if moved <= tol_abs:
                return FitResult(centroids, steps, True, len(points.weights))
    finally:
        shards.release()
    return FitResult(centroids, steps, False, len(points.weights))


# lloyd's passes run on the colour histogram of every pixel, split by colour code modulo this
# many shards (the low bits of blue: shards of similar size).  A constant, so that a pass sums
# the same shards' partial sums in the same order whatever the chunking, scheduler or number
# of workers: the same bits everywhere (issue 14).  It also bounds a pass to this many tasks.
_SHARDS = 16
def collection_histogram(pixels: da.Array,
                         masked: da.Array | None = None) -> "dask.delayed.Delayed":
    """The colour histogram of every (unmasked) pixel: per-chunk histograms merged in groups
    of `_SPLIT_EVERY` (integer counts: exact, so any chunking gives the same histogram).

    Returns
    -------
    Delayed
        ``(codes, counts)`` as `kmeans.histogram` gives them: ndarray (n_colors,), uint32,
        increasing, and ndarray (n_colors,), int64.
    """
    chunks = pixels.to_delayed().ravel()
    if masked is None:
        hists = [dask.delayed(_chunk_histogram, pure=True)(chunk) for chunk in chunks]
    else:
        hists = [dask.delayed(_chunk_histogram, pure=True)(chunk, left_out)
                 for chunk, left_out in zip(chunks, masked.to_delayed().ravel())]
    while len(hists) > 1:
        hists = [dask.delayed(merge_histograms, pure=True)(*hists[i:i + _SPLIT_EVERY])
                 for i in range(0, len(hists), _SPLIT_EVERY)]
    return hists[0]


def _chunk_histogram(rows: np.ndarray,
                     masked: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """`kmeans.histogram` of a chunk's rows (those not ``masked``), by sorting their codes:
    numpy's vectorised sort takes 8 ms for a 2.4 Mpx photo, where the 2**24 table takes 55
    (issue 14: the table was most of the time lloyd spent before its first pass)."""
    if masked is not None and masked.any():
        rows = rows[~masked]
    return _run_lengths(np.sort(kmeans.pack(rows)))


def _run_lengths(codes: np.ndarray, counts: np.ndarray | None = None
                 ) -> tuple[np.ndarray, np.ndarray]:
    """The distinct values of sorted ``codes`` and how often each occurs (the sum of their
    ``counts``, when given)."""
    if not len(codes):
        return codes.astype(np.uint32), np.zeros(0, np.int64)
    first = np.flatnonzero(np.concatenate([[True], codes[1:] != codes[:-1]]))
    if counts is None:
        return codes[first], np.diff(np.append(first, len(codes))).astype(np.int64)
    return codes[first], np.add.reduceat(counts, first)


def merge_histograms(*hists: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """One histogram of the pixels of several (`kmeans.histogram`'s codes and counts).  Their
    codes are sorted runs, which a stable sort merges (21 ms for 8 photos' 1.2 M colours,
    where a 2**24 table takes 57)."""
    codes = np.concatenate([codes for codes, _ in hists])
    counts = np.concatenate([counts for _, counts in hists])
    order = np.argsort(codes, kind="stable")
    return _run_lengths(codes[order], counts[order])


def _shard(hist: tuple[np.ndarray, np.ndarray], i: int, color_space: str) -> _Points:
    """Shard ``i`` of a histogram: its colours whose code is ``i`` modulo `_SHARDS`, as
    working-space features weighted by their pixel counts."""
    codes, counts = hist
    mine = codes % np.uint32(_SHARDS) == i
    return _Points(kmeans.to_features(kmeans.unpack(codes[mine]), color_space), counts[mine])


def full_pass(shards: cluster.Parts, centroids: np.ndarray) -> kmeans.Partial:
    """Per-cluster sums, counts and inertia of every pixel for ``centroids``: one small task
    per shard, added in shard order (the same bits on any scheduler)."""
    packed = shards.map(_shard_partial, centroids)
    total = packed[0]
    for part in packed[1:]:
        total = total + part
    return kmeans.Partial.unpack(total)


def _shard_partial(shard: _Points, centroids: np.ndarray) -> np.ndarray:
    if len(shard.weights) * len(centroids) * _SHARDS >= _COMPILED_FROM:
        # as `_best_of_starts`: numba's kernels (the same bits) cost ~1 s to load once per
        # process and save ~0.2 s of CPU a pass over medium's 1 M colours at k = 8
        kmeans.prefer_compiled()
    return kmeans.partial_sums(shard.features, shard.weights, centroids)[0].pack()


# ---------------------------------------------------------------------------------------------
# Spatial features and k from a quality target (issue 6)


def fit_features(features: np.ndarray, cfg: KMeansConfig,
                 init: np.ndarray | None = None) -> FitResult:
    """Fit centroids to feature rows that carry positions (``preprocess.spatial_weight > 0``).

    Rows with positions are (almost) all distinct, so there is no colour histogram: every row
    has weight 1, and at most 262,144 rows, evenly strided over the sample, are used.  Runs
    in numpy here, like `fit_sample`, so the result is the same on any scheduler.

    Parameters
    ----------
    features : ndarray of shape (n, 5), float64
        From `kmeans.spatial_features`.
    cfg : KMeansConfig
        ``algorithm: minibatch`` (the config refuses lloyd with positions).
    init : ndarray of shape (n_clusters, 5), float64, optional

    Returns
    -------
    FitResult
    """
    features = _strided(features, _SPATIAL_ROWS)
    points = _Points(features, np.ones(len(features), np.int64))
    result = _best_of_starts(points, cfg, init, iterate=True)
    _warn_degenerate(result, len(features), cfg.n_clusters)
    return result


def _strided(rows: np.ndarray, n: int) -> np.ndarray:
    """At most ``n`` rows, evenly spaced (the sample is in image order: every image keeps
    its share)."""
    if len(rows) <= n:
        return rows
    return rows[np.linspace(0, len(rows) - 1, n).astype(np.int64)]


@dataclass
class AutoK:
    """The outcome of `choose_k`: the k chosen and every (k, error) tried, in order."""

    k: int
    max_error: float
    met: bool
    tried: list[dict] = field(default_factory=list)  # {"k": int, "error": float}
    metric: str = "de76"  # kmeans.error_metric: the unit of max_error and of every error

    def as_dict(self) -> dict:
        return {"k": self.k, "max_error": self.max_error, "metric": self.metric,
                "met": self.met, "fits": len(self.tried),
                "tried": sorted(self.tried, key=lambda t: t["k"])}


def choose_k(sample: np.ndarray, cfg: KMeansConfig, color_space: str) -> AutoK:
    """The smallest k whose fitted palette paints the sample within ``cfg.max_error``.

    The error of a palette is the mean Delta-E (``cfg.colour_metric``: CIE 1976 or CIEDE2000)
    between each sample pixel and the 8-bit colour it is painted with.  It falls with k (not
    strictly), so the search doubles k from 1 until the target is met (or ``max_k`` is
    reached), then bisects between the last k that missed and the first that met it: about
    ``2 log2(k)`` fits (k = 6: 1, 2, 4, 8, 6, 5), at most ``2 ceil(log2(max_k)) + 1``.  Each fit is the job's own fit (same settings and
    seed) with one start, on an evenly strided subset of the sample of at most 65,536 rows.

    Parameters
    ----------
    sample : ndarray of shape (n, 3), uint8 pixels, or (n, 5), float64 spatial features
    cfg : KMeansConfig
        ``max_error``, ``max_k`` and the fit settings.
    color_space : str

    Returns
    -------
    AutoK
        ``met`` is False when even ``max_k`` misses the target (``k`` is then ``max_k``).
    """
    points = _auto_points(sample, color_space)
    auto = AutoK(cfg.max_k, cfg.max_error, False, metric=cfg.colour_metric)
    errors: dict[int, float] = {}

    def meets(k: int) -> bool:
        if k not in errors:
            trial = dataclasses.replace(cfg, k=k, n_init=1)
            result = _best_of_starts(points, trial, None, iterate=True)
            errors[k] = palette_error(points.features, points.weights, result.centroids,
                                      color_space, cfg.colour_metric)
            auto.tried.append({"k": k, "error": errors[k]})
            log.info("k: auto: k=%d gives mean %s %.3f (target %.3f)", k, cfg.colour_metric,
                     errors[k], cfg.max_error)
        return errors[k] <= cfg.max_error

    missed, k = 0, 1
    while not meets(k):
        if k >= cfg.max_k:
            return auto
        missed, k = k, min(2 * k, cfg.max_k)
    while k - missed > 1:
        mid = (missed + k) // 2
        missed, k = (missed, mid) if meets(mid) else (mid, k)
    auto.k, auto.met = k, True
    return auto


def _auto_points(sample: np.ndarray, color_space: str) -> _Points:
    sample = _strided(sample, _AUTO_ROWS)
    if sample.dtype == np.uint8:
        return _Points.from_pixels(sample, color_space)
    return _Points(sample, np.ones(len(sample), np.int64))


def sample_error(sample: np.ndarray, centroids: np.ndarray, color_space: str,
                 metric: str = "de76") -> float:
    """`palette_error` of ``centroids`` on the rows `choose_k` searched on."""
    points = _auto_points(sample, color_space)
    return palette_error(points.features, points.weights, centroids, color_space, metric)


def palette_error(features: np.ndarray, weights: np.ndarray, centroids: np.ndarray,
                  color_space: str, metric: str = "de76") -> float:
    """Weighted mean Delta-E between rows and the 8-bit colour they are painted with.

    Parameters
    ----------
    features : ndarray of shape (n, n_features), float64, working space (colour first)
    weights : ndarray of shape (n,)
    centroids : ndarray of shape (n_clusters, n_features), float64
    color_space : str
    metric : str
        ``de76`` (CIE 1976: Euclidean distance in CIELAB) or ``de2000`` (CIEDE2000).
    """
    labels, _ = kmeans.assign(features, centroids)
    painted = np.rint(kmeans.centroids_to_rgb(centroids[:, :3], color_space))
    painted_lab = kmeans.rgb_to_lab(painted / 255.0)
    difference = ciede2000 if metric == "de2000" else kmeans.delta_e76
    errors = difference(kmeans.colour_lab(features, color_space), painted_lab[labels])
    w = weights.astype(np.float64)
    return float(np.dot(errors, w) / w.sum())


# ---------------------------------------------------------------------------------------------
# The fit stage's result


@dataclass
class FitOutcome:
    """A fitted palette and how the fit went: everything model.json and the report say of it.

    ``centroids`` : ndarray of shape (n_clusters, n_features), float64, working space (colour
    first, then scaled positions with ``spatial_weight``); ``palette`` : ndarray of shape
    (n_clusters, 3), uint8, the colours painted.
    """

    centroids: np.ndarray
    palette: np.ndarray
    steps: list[kmeans.Step] = field(default_factory=list)
    converged: bool = False
    warnings: list[str] = field(default_factory=list)
    auto_k: dict | None = None  # the k: auto search (`AutoK.as_dict`), with the final "error"

    @property
    def n_iter(self) -> int:
        return len(self.steps)

    @classmethod
    def of(cls, result: FitResult, color_space: str, auto: AutoK | None = None,
           cfg: KMeansConfig | None = None, error: float | None = None) -> "FitOutcome":
        """The outcome of ``result``; with ``auto`` (and ``cfg`` for the message) the k: auto
        search, whose unmet target is the first warning."""
        warnings = list(result.warnings)
        auto_k = None
        if auto is not None:
            auto_k = auto.as_dict()
            if error is not None:
                auto_k["error"] = error
            if not auto.met:
                warnings.insert(0, auto_k_unmet(cfg))
        return cls(result.centroids, palette_of(result.centroids, color_space), result.steps,
                   result.converged, warnings, auto_k)


def palette_of(centroids: np.ndarray, color_space: str) -> np.ndarray:
    """The colour each cluster is painted with: ndarray of shape (n_clusters, 3), uint8."""
    return np.rint(kmeans.centroids_to_rgb(centroids[:, :3], color_space)).astype(np.uint8)


def auto_k_unmet(cfg: KMeansConfig) -> str:
    return (f"k: auto: no k <= kmeans.max_k ({cfg.max_k}) meets kmeans.max_error "
            f"({cfg.max_error}); using k={cfg.max_k}; raise max_k or max_error")


def fit_palette(sample: np.ndarray, pixels: da.Array | None, cfg: KMeansConfig,
                color_space: str, spatial_weight: float, init: np.ndarray | None,
                persist: bool, auto: AutoK | None = None,
                masked: da.Array | None = None) -> FitOutcome:
    """The collection's palette from its sample (and, for ``lloyd``, full passes over
    ``pixels``): `fit_features` with positions, else `fit_collection`.

    Parameters
    ----------
    sample : ndarray of shape (n, 3), uint8, or (n, 5), float64 spatial features
    pixels, cfg, color_space, init, persist, masked : as for `fit_collection`
    spatial_weight : float
    auto : AutoK, optional
        The k: auto search that chose ``cfg.k``; its final palette's error is added.
    """
    if spatial_weight > 0:
        result = fit_features(sample, cfg, init)
    else:
        result = fit_collection(sample, pixels, cfg, color_space, init, persist, masked)
    error = sample_error(sample, result.centroids, color_space, cfg.colour_metric) \
        if auto is not None else None
    return FitOutcome.of(result, color_space, auto, cfg, error)


def sample_counts(sample: np.ndarray, centroids: np.ndarray,
                  color_space: str) -> tuple[np.ndarray, float]:
    """Rows of the sample per cluster, ndarray (n_clusters,) int64, and their inertia."""
    points = _Points.from_pixels(sample, color_space) if sample.dtype == np.uint8 else \
        _Points(sample, np.ones(len(sample), np.int64))
    partial = kmeans.partial_sums(points.features, points.weights, centroids)[0]
    return np.asarray(partial.counts, np.int64), float(partial.inertia)
