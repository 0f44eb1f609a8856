#!/usr/bin/env python3
"""Prototypes of the issue-14 levers, measured against the current fit on the same samples.

    python benchmarks/prototype.py --folder .bench/collections/small --ks 8,16,64,256

Levers (standalone functions, numpy only):

* `coarse_points`: a colour histogram on a grid of 2**bits levels per channel whose bins keep
  the exact mean of their colours (integer sums, exact in float64) and their pixel counts;
* `assign_checked`: the nearest centroid from the matrix form |c|^2 - 2 x.c (BLAS), checked:
  a row whose best and second-best differ by less than a margin far above the rounding error
  of either form is assigned elementwise as `kmeans.assign` does, and every distance is
  recomputed elementwise, so labels and distances are `kmeans.assign`'s whatever BLAS does;
* `fit_coarse`: the ``n_init`` k-means++ starts and their Lloyd iterations on the coarse
  points, the winner (lowest inertia there) refined by Lloyd on the exact histogram.

For every image (scope: image, the 1-Mpx sample of each) and for the collection's sample it
prints time and inertia on the exact histogram of the sample, current fit vs each prototype.
"""

from __future__ import annotations

import argparse
import glob
import os
import sys
import time
from types import SimpleNamespace

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from pipeline import fitting as fit  # noqa: E402
from pipeline.engine import kmeans  # noqa: E402
from pipeline.sources import collection as read  # noqa: E402
from pipeline.config import KMeansConfig  # noqa: E402

_BLOCK = 4096  # rows per block of `assign_checked`: a (block, k) float64 matrix stays in L2


# ---------------------------------------------------------------------------------------------
# Levers


def coarse_points(codes: np.ndarray, counts: np.ndarray, bits: int) -> tuple[np.ndarray, np.ndarray]:
    """Bins of 2**(8 - bits) levels per channel of a colour histogram (`kmeans.histogram`):
    (means of shape (n_bins, 3) float64, counts of shape (n_bins,) int64), occupied bins only."""
    rgb = kmeans.unpack(codes).astype(np.int64)
    drop = 8 - bits
    bins = ((rgb[:, 0] >> drop) << (2 * bits)) | ((rgb[:, 1] >> drop) << bits) | (rgb[:, 2] >> drop)
    size = 1 << (3 * bits)
    w = counts.astype(np.float64)
    n = np.bincount(bins, weights=w, minlength=size)
    present = np.flatnonzero(n)
    sums = np.stack([np.bincount(bins, weights=rgb[:, c] * w, minlength=size)[present]
                     for c in range(3)], axis=1)
    return sums / n[present, None], n[present].astype(np.int64)


def assign_checked(features: np.ndarray, centroids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`kmeans.assign`'s labels and distances, found through BLAS (see the module docstring)."""
    n = len(features)
    labels = np.empty(n, np.int64)
    best = np.empty(n)
    norms = (centroids ** 2).sum(axis=1)
    minus2t = -2.0 * centroids.T
    scale = float((features ** 2).sum(axis=1).max(initial=0) + norms.max(initial=0)) + 1.0
    margin = 1e-9 * scale  # rounding of either form is ~1e-15 of the scale
    rows = np.arange(_BLOCK)
    for start in range(0, n, _BLOCK):
        x = features[start:start + _BLOCK]
        r = rows[:len(x)]
        d = x @ minus2t
        d += norms
        j = d.argmin(axis=1)
        low = d[r, j]
        d[r, j] = np.inf
        unsure = d.min(axis=1) - low <= margin
        labels[start:start + len(x)] = j
        c = centroids[j]
        dist = (x[:, 0] - c[:, 0]) ** 2
        for ch in range(1, x.shape[1]):
            dist += (x[:, ch] - c[:, ch]) ** 2
        best[start:start + len(x)] = dist
        if unsure.any():
            idx = np.flatnonzero(unsure) + start
            labels[idx], best[idx] = kmeans.assign(features[idx], centroids)
    return labels, best


def lloyd_with(assign, features: np.ndarray, weights: np.ndarray, centroids: np.ndarray,
               max_iter: int, tol_abs: float) -> tuple[np.ndarray, int, float]:
    """`kmeans.lloyd` with another assignment function; returns centroids, steps, inertia."""
    w = weights.astype(np.float64)
    weighted = [features[:, c] * w for c in range(features.shape[1])]
    k = len(centroids)
    inertia = np.inf
    for step in range(max_iter):
        labels, distances = assign(features, centroids)
        inertia = float((distances * w).sum())
        sums = np.stack([np.bincount(labels, weights=col, minlength=k) for col in weighted], 1)
        counts = np.bincount(labels, weights=w, minlength=k)
        new, empty = kmeans.update(kmeans.Partial(sums, counts, inertia), centroids)
        kmeans.reseed_empty(new, empty, features, distances)
        moved = kmeans.shift(centroids, new)
        centroids = new
        if moved <= tol_abs:
            return centroids, step + 1, inertia
    return centroids, max_iter, inertia


def _jumps():
    """The engine's `jumps` (Fritzke's k-means-u*)."""
    return kmeans.jumps


def fit_coarse(codes: np.ndarray, counts: np.ndarray, cfg: KMeansConfig, bits: int,
               seed_bits: int | None = None, refine: bool = True,
               lloyd=None, jump: bool = False) -> tuple[np.ndarray, dict]:
    """The ``n_init`` starts: k-means++ on coarse points of ``seed_bits``, Lloyd on those of
    ``bits``; the winner (lowest inertia there) refined by Lloyd on the exact histogram."""
    lloyd = lloyd or lloyd_hamerly
    features = kmeans.to_features(kmeans.unpack(codes), "rgb")
    tol_abs = kmeans.tolerance(features, counts, cfg.tol)
    cf, cw = coarse_points(codes, counts, bits)
    sf, sw = coarse_points(codes, counts, seed_bits) if seed_bits else (cf, cw)
    best = None
    t = time.perf_counter()
    for start in range(cfg.n_init):
        rng = np.random.default_rng([cfg.seed, start])
        seeds = kmeans.kmeans_plusplus(sf, sw, cfg.n_clusters, rng)
        centroids, steps, _ = lloyd(cf, cw, seeds, cfg.max_iter, tol_abs)
        score = float((kmeans.assign(cf, centroids)[1] * cw).sum())
        if best is None or score < best[0]:
            best = (score, centroids, len(steps))
    centroids = best[1]
    if jump:
        rng = np.random.default_rng([cfg.seed, 1 << 20])
        centroids = _jumps()(cf, cw, centroids, cfg.max_iter, tol_abs, rng)[0]
    t_starts = time.perf_counter() - t
    steps = []
    if refine:
        centroids, steps, _ = lloyd(features, counts, centroids, cfg.max_iter, tol_abs)
    return centroids, {"bins": len(cw), "coarse_steps": best[2], "refine_steps": len(steps),
                       "starts_s": t_starts}


def assign_two(features: np.ndarray, centroids: np.ndarray
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`kmeans.assign` that also returns each row's second-smallest squared distance."""
    n = len(features)
    labels = np.zeros(n, np.int64)
    best = np.full(n, np.inf)
    second = np.full(n, np.inf)
    for start in range(0, n, 1 << 15):
        ch = np.array(features[start:start + (1 << 15)].T, np.float64, order="C")
        lab, b, s = labels[start:start + len(ch[0])], best[start:start + len(ch[0])], \
            second[start:start + len(ch[0])]
        d = np.empty(len(ch[0]))
        term = np.empty_like(d)
        for j, centre in enumerate(centroids):
            np.subtract(ch[0], centre[0], out=d)
            np.square(d, out=d)
            for c in range(1, len(ch)):
                np.subtract(ch[c], centre[c], out=term)
                np.square(term, out=term)
                d += term
            closer = d < b
            np.minimum(s, np.where(closer, b, d), out=s)
            np.copyto(b, d, where=closer)
            np.copyto(lab, j, where=closer)
    return labels, best, second


def _distance_to_own(features: np.ndarray, centroids: np.ndarray,
                     labels: np.ndarray) -> np.ndarray:
    """Squared distance of each row to its own centroid, in `kmeans.assign`'s order (same bits)."""
    own = centroids[labels]
    d = (features[:, 0] - own[:, 0]) ** 2
    for c in range(1, features.shape[1]):
        d += (features[:, c] - own[:, c]) ** 2
    return d


_SLACK = 1e-9  # relative slack of the bounds: far above their float rounding


def lloyd_hamerly(features: np.ndarray, weights: np.ndarray, centroids: np.ndarray,
                  max_iter: int, tol_abs: float) -> tuple[np.ndarray, list, bool]:
    """`kmeans.lloyd` with Hamerly's bounds (2010): the same labels, centroids and steps (bit
    for bit), but a row is compared with every centroid only when its bounds cannot prove its
    centroid is still the nearest."""
    w = weights.astype(np.float64)
    weighted = [features[:, c] * w for c in range(features.shape[1])]
    k = len(centroids)
    labels, dist, second = assign_two(features, centroids)
    upper, lower = np.sqrt(dist), np.sqrt(second)
    steps = []
    for _ in range(max_iter):
        inertia = float((dist * w).sum())
        sums = np.stack([np.bincount(labels, weights=col, minlength=k) for col in weighted], 1)
        counts = np.bincount(labels, weights=w, minlength=k)
        new, empty = kmeans.update(kmeans.Partial(sums, counts, inertia), centroids)
        kmeans.reseed_empty(new, empty, features, dist)
        moved = kmeans.shift(centroids, new)
        steps.append(kmeans.Step("lloyd", moved, inertia))
        delta = np.sqrt(((new - centroids) ** 2).sum(axis=1))
        centroids = new
        if moved <= tol_abs:
            return centroids, steps, True
        # bounds after the move (Hamerly): the own centroid moved delta[label], any other at
        # most the largest delta of the others
        top = np.argsort(delta)[-2:] if k > 1 else np.array([0, 0])
        other = np.where(labels == top[-1], delta[top[0]], delta[top[-1]])
        upper += delta[labels]
        lower -= other
        gaps = np.sqrt(((centroids[:, None, :] - centroids[None, :, :]) ** 2).sum(axis=2))
        np.fill_diagonal(gaps, np.inf)
        half = 0.5 * gaps.min(axis=1)
        bound = np.maximum(half[labels], lower)
        check = np.flatnonzero(upper * (1 + _SLACK) + _SLACK >= bound)
        if len(check):
            own = _distance_to_own(features[check], centroids, labels[check])
            upper[check] = np.sqrt(own)
            check = check[upper[check] * (1 + _SLACK) + _SLACK >= bound[check]]
        if len(check):
            labels[check], d1, lower[check] = assign_hinted(features[check], centroids,
                                                            labels[check])
            upper[check] = np.sqrt(d1)
        dist = _distance_to_own(features, centroids, labels)
    return centroids, steps, False


def assign_hinted(features: np.ndarray, centroids: np.ndarray, hints: np.ndarray
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`kmeans.assign`'s labels and distances, and a lower bound of each row's distance to its
    second-nearest centroid (not squared), comparing each row only with the centroids that
    can beat its hint: with u the distance to the hint's centroid, a centroid j farther than
    2u from it is farther than u from the row (Elkan 2003, lemma 1).  Any hints give the same
    labels; good hints (a previous label, the label of a nearby point) give few candidates."""
    n, n_features = features.shape
    k = len(centroids)
    own = _distance_to_own(features, centroids, hints)
    gaps = np.sqrt(((centroids[:, None, :] - centroids[None, :, :]) ** 2).sum(axis=2))
    neighbours = np.argsort(gaps, axis=1, kind="stable")  # each centroid first (gap 0)
    sorted_gaps = np.take_along_axis(gaps, neighbours, axis=1)
    reach = 2 * np.sqrt(own) * (1 + _SLACK) + _SLACK
    # candidates of row i: neighbours[hint, :m_i], m_i found by a binary search of all rows
    # at once (column 0, the hint's own gap 0, is always in)
    flat = sorted_gaps.ravel()
    base = hints * k
    last = np.zeros(n, np.int64)
    step = 1 << int(np.log2(k)) if k > 1 else 0
    while step:
        nxt = last + step
        ok = nxt < k
        ok[ok] = flat[base[ok] + nxt[ok]] <= reach[ok]
        last[ok] = nxt[ok]
        step >>= 1
    m = last + 1
    channels = [np.ascontiguousarray(centroids[:, c]) for c in range(n_features)]
    labels = np.empty(n, np.int64)
    best = np.empty(n)
    lower = np.empty(n)
    low = 0
    for top in [2 ** e for e in range(0, 17)]:
        if low >= k:
            break
        width = min(top, k)
        sel = np.flatnonzero((m > low) & (m <= width))
        low = width
        for s in range(0, len(sel), 1 << 14):
            part = sel[s:s + (1 << 14)]
            h, mp = hints[part], m[part]
            cands = neighbours[h, :width]  # (p, width)
            x = features[part]
            d = (x[:, 0, None] - channels[0][cands]) ** 2
            for ch in range(1, n_features):
                d += (x[:, ch, None] - channels[ch][cands]) ** 2
            if width > 1:
                d[np.arange(width) >= mp[:, None]] = np.inf
            pick = d.argmin(axis=1)
            r = np.arange(len(part))
            dmin = d[r, pick]
            tied = (d == dmin[:, None]).sum(axis=1) > 1
            lab = cands[r, pick]
            if tied.any():  # equal distances: the lowest index, as `kmeans.assign`
                lab[tied] = np.where(d[tied] == dmin[tied, None], cands[tied], k).min(axis=1)
            labels[part], best[part] = lab, dmin
            d[r, pick] = np.inf
            second = np.sqrt(d.min(axis=1)) if width > 1 else np.full(len(part), np.inf)
            past = np.where(mp < k, sorted_gaps[h, np.minimum(mp, k - 1)]
                            - np.sqrt(own[part]), np.inf)
            lower[part] = np.minimum(second, past) * (1 - _SLACK) - _SLACK
    return labels, best, lower


def assign_gridded(features: np.ndarray, centroids: np.ndarray,
                   side: float = 8.0) -> tuple[np.ndarray, np.ndarray]:
    """`kmeans.assign`'s labels and distances for many rows and many centroids: the centres of
    the occupied cells of a grid of ``side`` units are assigned elementwise, and each row takes
    its cell's label as the hint of `assign_hinted`."""
    if len(features) == 0:
        return kmeans.assign(features, centroids)
    cells = np.floor(features / side).astype(np.int64)
    low = cells.min(axis=0)
    cells -= low
    span = cells.max(axis=0) + 1
    key = cells[:, 0]
    for c in range(1, features.shape[1]):
        key = key * span[c] + cells[:, c]
    occupied, inverse = np.unique(key, return_inverse=True)
    centres = np.empty((len(occupied), features.shape[1]))
    rest = occupied
    for c in range(features.shape[1] - 1, -1, -1):
        rest, centres[:, c] = np.divmod(rest, span[c])
    centres = (centres + low + 0.5) * side
    hints = kmeans.assign(centres, centroids)[0][inverse.ravel()]
    labels, best, _ = assign_hinted(features, centroids, hints)
    return labels, best


# ---------------------------------------------------------------------------------------------
# Measuring


def inertia_on(codes: np.ndarray, counts: np.ndarray, centroids: np.ndarray) -> float:
    features = kmeans.to_features(kmeans.unpack(codes), "rgb")
    return float((assign_checked(features, centroids)[1] * counts).sum())


def best_of(repeat: int, call):
    best, value = float("inf"), None
    for _ in range(repeat):
        t = time.perf_counter()
        value = call()
        best = min(best, time.perf_counter() - t)
    return best, value


def samples(folder: str, n_images: int, km: KMeansConfig) -> list[tuple[str, np.ndarray]]:
    import imageio.v3 as iio

    files = sorted(glob.glob(os.path.join(folder, "*.jpg")) + glob.glob(os.path.join(folder,
                                                                                      "*.png")))
    out, whole = [], []
    for path in files:
        rows = iio.imread(path)[..., :3].reshape(-1, 3)
        info = SimpleNamespace(name=os.path.splitext(os.path.basename(path))[0],
                               n_pixels=len(rows))
        whole.append((info, rows))
    for info, rows in whole[:n_images]:
        out.append((info.name, rows[read.sample_positions(info, km.sample_pixels, km.seed)]))
    from pipeline.sources.collection import allocate as _allocate

    sizes = _allocate([len(r) for _, r in whole], km.sample_pixels)
    out.append(("collection", np.concatenate([r[read.sample_positions(i, n, km.seed)]
                                              for (i, r), n in zip(whole, sizes)])))
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--folder", required=True)
    parser.add_argument("--ks", default="8,16,64,256")
    parser.add_argument("--images", type=int, default=2)
    parser.add_argument("--variants", default="6,5/6,5/6-",
                        help="coarse grids: bits, seed_bits/bits, a trailing - skips the "
                             "exact refine")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--repeat-current", type=int, default=1)
    parser.add_argument("--seeds", default="0")
    args = parser.parse_args()
    print("| sample | k | seed | distinct | current s | method | s | time ratio | inertia ratio "
          "| notes |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, sample in samples(args.folder, args.images, KMeansConfig()):
        codes, counts = kmeans.histogram(sample)
        for k in [int(k) for k in args.ks.split(",")]:
            for seed in [int(s) for s in args.seeds.split(",")]:
                km = KMeansConfig(k=k, seed=seed)
                cur_s, cur = best_of(args.repeat_current,
                                     lambda: fit.fit_sample(sample, km, "rgb"))
                ref = inertia_on(codes, counts, cur.centroids)
                for variant in args.variants.split(","):
                    bits, seed_bits, refine, jump = _variant(variant)
                    s, (centroids, info) = best_of(
                        args.repeat, lambda: fit_coarse(codes, counts, km, bits, seed_bits,
                                                        refine, jump=jump))
                    ratio = inertia_on(codes, counts, centroids) / ref
                    print(f"| {name} | {k} | {seed} | {len(codes)} | {cur_s:.2f} "
                          f"| {variant} | {s:.3f} | {s / cur_s:.3f} | {ratio:.4f} "
                          f"| {info['bins']} bins, {info['coarse_steps']}+"
                          f"{info['refine_steps']} steps, starts {info['starts_s']:.2f} s |",
                          flush=True)


def _variant(text: str) -> tuple[int, int | None, bool, bool]:
    """'6', '5/6' (seed on 5 bits, Lloyd on 6), '6-' (no exact refine), '6j' (jumps on the
    coarse winner)."""
    jump = "j" in text
    text = text.replace("j", "")
    refine = not text.endswith("-")
    text = text.rstrip("-")
    seed, _, bits = text.rpartition("/")
    return int(bits), int(seed) if seed else None, refine, jump


if __name__ == "__main__":
    main()
