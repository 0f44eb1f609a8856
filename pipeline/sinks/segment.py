"""Label every pixel of an image with its nearest centroid; build segmented images and masks.

8-bit RGB has 2**24 colours, so a pixel's label is looked up in a table indexed by its colour
code.  The table is filled only for the colours actually met (most photos use a few per cent of
them), and is shared by every image segmented with the same palette in this process.

Speed (issue 5): this is the per-pixel hot path, so an image is labelled in blocks small enough
for a block's temporaries to stay in the CPU cache, and a pixel's code is read as one unaligned
little-endian 32-bit word of its RGB bytes (no per-channel arithmetic).  An unfilled table entry
holds a sentinel label, so one gather both labels a block and tells whether it met new colours.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

import numpy as np

from pipeline.engine import kmeans
from pipeline.sinks.tiled import label_dtype, masked_label

_N_COLOURS = 1 << 24
_BLOCK = 1 << 16  # pixels per step of `label_image`: codes, labels and distances stay in L2
_BOX = 8  # side of the colour boxes a whole table is built from
# Filling entries as colours are met costs about 1 s per 100 Mpx of photos at k = 8; building
# all 2**24 entries about 0.15 s at k = 8, 0.5 s at k = 32.  Both grow with k: the whole table
# pays from about this many pixels per cluster.
_WHOLE_TABLE_PIXELS_PER_CLUSTER = 1 << 19


def colour_codes(rows: np.ndarray) -> np.ndarray:
    """Table index of each uint8 RGB row: ``R + 256 G + 65536 B``, ndarray (n,), uint32.

    Not `kmeans.pack`'s order: this one is read straight from memory, four bytes at a time.
    """
    flat = np.ascontiguousarray(rows).reshape(-1)
    n = len(flat) // 3
    codes = np.empty(n, np.uint32)
    if n > 1:  # every pixel but the last: its 4-byte word would run past the buffer
        words = np.ndarray((n - 1,), np.dtype("<u4"), flat, strides=(3,))
        np.bitwise_and(words, 0xFFFFFF, out=codes[:-1])
    if n:
        r, g, b = (int(v) for v in flat[-3:])
        codes[-1] = r | g << 8 | b << 16
    return codes


def code_colours(codes: np.ndarray) -> np.ndarray:
    """Inverse of `colour_codes`: ndarray of shape (n, 3), uint8."""
    return np.ascontiguousarray(codes.astype("<u4")).view(np.uint8).reshape(-1, 4)[:, :3]


class _ColourTable:
    """Label and squared distance of each colour code met so far, for one palette.

    ``labels`` holds ``unknown`` (the dtype's largest value, never a label: k <= 65535) until a
    colour is met.  Readers take no lock: a fill stores distances before labels, so a known label
    always has its distance.
    """

    def __init__(self, centroids: np.ndarray, color_space: str, whole: bool = False,
                 private: bool = False):
        self.centroids = centroids
        self.color_space = color_space
        self.private = private  # one caller's: no other thread fills it
        dtype = label_dtype(len(centroids))  # its top value is the sentinel (and masked's label)
        self.unknown = masked_label(len(centroids))
        self.labels = np.full(_N_COLOURS, self.unknown, dtype)
        # a private RGB table keeps no distances (`label_counted`): 64 MB mapped per image
        self.counted = private and not whole and color_space == "rgb"
        self.distances = None if self.counted else np.empty(_N_COLOURS, np.float32)
        self.lock = threading.Lock()
        self.whole = whole
        if whole:
            self._fill_all()

    def _fill_all(self) -> None:
        """Fill every entry (RGB only).  Each set of colours with one label is convex (a
        Voronoi cell, ties to the lower index), so a box whose 8 corners share a label takes it
        whole; only boxes cut by a cell boundary are assigned colour by colour.  Distances
        come from per-channel squared differences added in `kmeans.assign`'s order: the same
        labels and bits as filling colour by colour."""
        side = 256 // _BOX
        lows = np.arange(side) * _BOX
        ends = np.stack([lows, lows + _BOX - 1], axis=1).reshape(-1)
        b, g, r = np.meshgrid(ends, ends, ends, indexing="ij")
        corners = self._assign(r, g, b).reshape(side, 2, side, 2, side, 2)
        first = corners[:, :1, :, :1, :, :1]
        self.labels.reshape(side, _BOX, side, _BOX, side, _BOX)[...] = first
        cut = np.argwhere(~(corners == first).all(axis=(1, 3, 5))) * _BOX
        offsets = np.arange(_BOX)
        for part in np.array_split(cut, max(1, len(cut) // 512)):
            b, g, r = np.broadcast_arrays(part[:, 0, None, None, None] + offsets[:, None, None],
                                          part[:, 1, None, None, None] + offsets[:, None],
                                          part[:, 2, None, None, None] + offsets)
            self.labels[(r | g << 8 | b << 16).ravel()] = self._assign(r, g, b)
        values = np.arange(256, dtype=np.float64)
        red, green, blue = ((values - self.centroids[:, c, None]) ** 2 for c in range(3))
        columns = np.arange(256)
        for b in range(256):
            plane = slice(b << 16, (b + 1) << 16)
            labels = self.labels[plane].reshape(256, 256).astype(np.intp)  # [green, red]
            rows = labels * 256
            distances = np.take(red, rows + columns)
            distances += np.take(green, rows + columns[:, None])
            distances += np.take(blue[:, b], labels)
            self.distances[plane] = distances.ravel()

    def _assign(self, r: np.ndarray, g: np.ndarray, b: np.ndarray) -> np.ndarray:
        rgb = np.stack([r.ravel(), g.ravel(), b.ravel()], axis=1).astype(np.uint8)
        return kmeans.assign(kmeans.to_features(rgb, "rgb"), self.centroids)[0]

    def label(self, codes: np.ndarray) -> tuple[np.ndarray, float]:
        """Labels of ``codes`` (ndarray (n,)) and the sum of their squared distances.

        Block by block; the colours no block knew are assigned together, once, at the end:
        filling is per call, not per block, because its cost is mostly per call.  An RGB
        table that is this caller's alone (or whole), once numba is imported, is read and
        filled in one compiled pass instead (`compiled.label_codes`: the same labels and
        distances).
        """
        labels = np.empty(len(codes), self.labels.dtype)
        blocks = [slice(start, start + _BLOCK) for start in range(0, len(codes), _BLOCK)]
        runner = kmeans.compiled_if_imported() if self.color_space == "rgb" else None
        if runner is not None and (self.private or self.whole):
            runner.label_codes(codes, kmeans.as_centroids(self.centroids),
                               *kmeans.neighbour_gaps(self.centroids), kmeans.SLACK,
                               self.unknown, self.labels, self.distances, labels)
            return labels, self._inertia(codes, blocks)
        stale = []
        for block in blocks:
            np.take(self.labels, codes[block], out=labels[block], mode="wrap")
            if labels[block].max() == self.unknown:
                stale.append(block)
        if stale:
            self._fill(_distinct(np.concatenate(
                [codes[block][labels[block] == self.unknown] for block in stale])))
            for block in stale:
                np.take(self.labels, codes[block], out=labels[block], mode="wrap")
        return labels, self._inertia(codes, blocks)

    def label_counted(self, codes: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
        """Labels of ``codes`` (ndarray (n,)), pixels per cluster and their inertia, for a
        private RGB table (no distances kept).

        The inertia comes from each cluster's exact integer sums of its colours and of their
        squares (`compiled.label_codes_sums`, or numpy's ``bincount`` of the same integers,
        which gives the same float64 sums): the same float on either path.
        """
        k = len(self.centroids)
        runner = kmeans.compiled_if_imported()
        if runner is not None:
            labels = np.empty(len(codes), self.labels.dtype)
            counts, sums = np.zeros(k, np.int64), np.zeros((k, 4))
            runner.label_codes_sums(codes, kmeans.as_centroids(self.centroids),
                                    *kmeans.neighbour_gaps(self.centroids), kmeans.SLACK,
                                    self.unknown, self.labels, labels, counts, sums)
            return labels, counts, _inertia_of_sums(counts, sums, self.centroids)
        labels = np.empty(len(codes), self.labels.dtype)
        blocks = [slice(start, start + _BLOCK) for start in range(0, len(codes), _BLOCK)]
        for block in blocks:
            np.take(self.labels, codes[block], out=labels[block], mode="wrap")
        new = labels == self.unknown
        if new.any():
            fresh = _distinct(codes[new])
            features = kmeans.to_features(code_colours(fresh), self.color_space)
            self.labels[fresh] = kmeans.assign(features, self.centroids)[0]
            labels[new] = self.labels[codes[new]]
        counts = _counts(labels, k)
        rgb = code_colours(codes).astype(np.float64)
        sums = np.stack([np.bincount(labels, weights=rgb[:, c], minlength=k)
                         for c in range(3)]
                        + [np.bincount(labels, weights=(rgb * rgb).sum(axis=1), minlength=k)],
                        axis=1)
        return labels, counts, _inertia_of_sums(counts, sums, self.centroids)

    def _inertia(self, codes: np.ndarray, blocks: list[slice]) -> float:
        return sum(float(np.take(self.distances, codes[block], mode="wrap")
                         .sum(dtype=np.float64)) for block in blocks)

    def _fill(self, new: np.ndarray) -> None:
        features = kmeans.to_features(code_colours(new), self.color_space)
        labels, distances = kmeans.assign(features, self.centroids)
        with self.lock:  # writers store identical values; distances go first
            self.distances[new] = distances
            self.labels[new] = labels


def _inertia_of_sums(counts: np.ndarray, sums: np.ndarray, centroids: np.ndarray) -> float:
    """Sum over clusters of sum |x - c|^2 = sum |x|^2 - 2 c . sum x + n |c|^2, from the exact
    per-cluster sums of `_ColourTable.label_counted` (``sums`` (k, 4): the colours, then their
    squares); each cluster's term is clipped at 0 (rounding of a near-empty spread)."""
    spread = (sums[:, 3] - 2 * (sums[:, :3] * centroids).sum(axis=1)
              + counts * (centroids * centroids).sum(axis=1))
    return float(np.maximum(spread, 0.0).sum())


def _distinct(codes: np.ndarray) -> np.ndarray:
    """The distinct values of colour ``codes``, increasing.  Not ``np.unique``: numpy 2.4's
    takes a hash-table path for a plain uint32 array, 7-12x slower than a sort (1.2 s for
    300,000 codes; issue 14); many codes are marked in a 2**24 bit table instead of sorted."""
    if len(codes) < 1 << 16:
        codes = np.sort(codes)
        return codes[np.concatenate([[True], codes[1:] != codes[:-1]])] if len(codes) else codes
    seen = np.zeros(_N_COLOURS, bool)
    seen[codes] = True
    return np.flatnonzero(seen).astype(codes.dtype)


# Tables are 80 MB each: keep the palettes of the last two calls (a collection has one).
_TABLES: OrderedDict[bytes, _ColourTable] = OrderedDict()
_TABLES_LOCK = threading.Lock()
_KEEP_TABLES = 2


def whole_table_pays(n_pixels: int, n_clusters: int, color_space: str) -> bool:
    """Whether to build a palette's whole colour table up front (`label_image`'s
    ``whole_table``) for a job that labels ``n_pixels`` pixels with it."""
    return color_space == "rgb" and n_pixels >= n_clusters * _WHOLE_TABLE_PIXELS_PER_CLUSTER


def _table(centroids: np.ndarray, color_space: str, cache: bool,
           whole: bool = False) -> _ColourTable:
    if not cache:
        return _ColourTable(centroids, color_space, whole, private=True)
    key = (color_space.encode() + bytes([whole])
           + np.ascontiguousarray(centroids, np.float64).tobytes())
    with _TABLES_LOCK:
        table = _TABLES.get(key)
        if table is None:
            table = _TABLES[key] = _ColourTable(centroids, color_space, whole)
            while len(_TABLES) > _KEEP_TABLES:
                _TABLES.popitem(last=False)
        _TABLES.move_to_end(key)
        return table


def label_image(pixels: np.ndarray, centroids: np.ndarray, color_space: str,
                cache: bool = True, whole_table: bool = False,
                masked: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, float]:
    """Assign every pixel of one image (but the masked ones).

    Parameters
    ----------
    pixels : ndarray of shape (height, width, 3), uint8
    centroids : ndarray of shape (n_clusters, 3), float64, in the working colour space
    color_space : str
    cache : bool
        Keep the colour table for the next image with this palette (collection scope).
    whole_table : bool
        Build the whole table first (RGB only; see `whole_table_pays`) instead of filling it
        as colours are met.  Either way a colour gets the same label.
    masked : ndarray of shape (height, width), bool, optional
        Pixels to leave out: their label is `masked_label`, and they are in no count and
        not in the inertia (their colours are never looked up).

    Returns
    -------
    labels : ndarray of shape (height, width), uint8 when n_clusters <= 255, else uint16
        (`label_dtype`)
    counts : ndarray of shape (n_clusters,), int64
        Unmasked pixels per cluster.
    inertia : float
        Sum of squared distances of the unmasked pixels to their centroids.
    """
    height, width = pixels.shape[:2]
    table = _table(centroids, color_space, cache, whole_table and color_space == "rgb")
    codes = colour_codes(pixels.reshape(-1, 3))
    valid = None if masked is None else ~masked.reshape(-1)
    if table.counted:
        known, counts, inertia = table.label_counted(codes if valid is None else codes[valid])
    else:
        known, inertia = table.label(codes if valid is None else codes[valid])
        counts = None
    if valid is None:
        labels = known
    else:
        labels = np.full(len(codes), table.unknown, table.labels.dtype)
        labels[valid] = known
    if counts is None:  # [:k]: a masked pixel's label (the dtype's top value) is no cluster
        counts = _counts(labels, len(centroids))[:len(centroids)]
    return labels.reshape(height, width), counts, inertia


def _counts(labels: np.ndarray, n_clusters: int) -> np.ndarray:
    """Pixels per label.  uint8 labels are counted two at a time (as uint16 pairs, then
    folded): half the elements for bincount, whose cost is per element."""
    if labels.dtype != np.uint8 or len(labels) < 1 << 17:
        return np.bincount(labels, minlength=n_clusters).astype(np.int64)
    even = len(labels) & ~1
    pairs = np.bincount(labels[:even].view(np.uint16), minlength=1 << 16).reshape(256, 256)
    counts = pairs.sum(axis=0) + pairs.sum(axis=1)
    if even < len(labels):
        counts[labels[-1]] += 1
    return counts[:n_clusters].astype(np.int64)


def palette_colours(centroids: np.ndarray, color_space: str) -> np.ndarray:
    """The colour each cluster is painted with: ndarray of shape (n_clusters, 3), uint8."""
    return np.rint(kmeans.centroids_to_rgb(centroids, color_space)).astype(np.uint8)


def segmented(labels: np.ndarray, palette: np.ndarray) -> np.ndarray:
    """Every pixel replaced by its cluster's colour: ndarray of shape (height, width, 3), uint8
    (a masked pixel, labelled `masked_label`, black)."""
    if int(labels.max(initial=0)) < len(palette):
        return palette[labels]
    return np.take(np.concatenate([palette, np.zeros((1, 3), np.uint8)]),
                   np.minimum(labels, len(palette)), axis=0)


def mask(labels: np.ndarray, cluster: int) -> np.ndarray:
    """255 where a pixel belongs to ``cluster``, else 0: ndarray (height, width), uint8."""
    return (labels == cluster).view(np.uint8) * np.uint8(255)


# Pixels per block of the spatial path: bounds its float64 features to ~10 MB per block.
_SPATIAL_BLOCK = 1 << 18


def label_image_spatial(pixels: np.ndarray, centroids: np.ndarray, color_space: str,
                        spatial_weight: float,
                        masked: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, float]:
    """Assign every pixel of one image by colour and position (``spatial_weight > 0``).

    A label is then a function of colour *and* position, so there is no colour table: every
    pixel's features are computed and assigned elementwise, in blocks of a fixed number of
    pixels (no result depends on the block size but the order of the float inertia sum).

    Parameters
    ----------
    pixels : ndarray of shape (height, width, 3), uint8
    centroids : ndarray of shape (n_clusters, 5), float64, colour then scaled (x, y)
    color_space : str
    spatial_weight : float
    masked : ndarray of shape (height, width), bool, optional
        As for `label_image`.

    Returns
    -------
    labels, counts, inertia : as from `label_image`
    """
    height, width = pixels.shape[:2]
    rows = pixels.reshape(-1, 3)
    labels = np.empty(len(rows), label_dtype(len(centroids)))
    flat_masked = None if masked is None else masked.reshape(-1)
    inertia = 0.0
    for start in range(0, len(rows), _SPATIAL_BLOCK):
        stop = min(start + _SPATIAL_BLOCK, len(rows))
        features = kmeans.spatial_features(rows[start:stop], np.arange(start, stop), width,
                                           height, color_space, spatial_weight)
        block, distances = kmeans.assign(features, centroids)
        if flat_masked is not None:
            left_out = flat_masked[start:stop]
            block[left_out] = masked_label(len(centroids))
            distances = distances[~left_out]
        labels[start:stop] = block
        inertia += float(distances.sum(dtype=np.float64))
    counts = np.bincount(labels, minlength=len(centroids))[:len(centroids)].astype(np.int64)
    return labels.reshape(height, width), counts, inertia
