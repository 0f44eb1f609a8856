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

from pipeline import kmeans

_N_COLOURS = 1 << 24
_BLOCK = 1 << 16  # pixels per step of `label_image`: codes, labels and distances stay in L2


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

    def __init__(self, centroids: np.ndarray, color_space: str):
        self.centroids = centroids
        self.color_space = color_space
        dtype = np.uint8 if len(centroids) < 255 else np.uint16
        self.unknown = np.iinfo(dtype).max
        self.labels = np.full(_N_COLOURS, self.unknown, dtype)
        self.distances = np.empty(_N_COLOURS, np.float32)
        self.lock = threading.Lock()

    def label_block(self, codes: np.ndarray, labels: np.ndarray) -> float:
        """Write the labels of ``codes`` into ``labels``; returns the sum of their distances."""
        np.take(self.labels, codes, out=labels, mode="wrap")
        if labels.max() == self.unknown:
            self._fill(np.unique(codes[labels == self.unknown]))
            np.take(self.labels, codes, out=labels, mode="wrap")
        return float(np.take(self.distances, codes, mode="wrap").sum(dtype=np.float64))

    def _fill(self, new: np.ndarray) -> None:
        features = kmeans.to_features(code_colours(new), self.color_space)
        labels, distances = kmeans.assign(features, self.centroids)
        with self.lock:  # writers store identical values; distances go first
            self.distances[new] = distances
            self.labels[new] = labels


# Tables are 80 MB each: keep the palettes of the last two calls (a collection has one).
_TABLES: OrderedDict[bytes, _ColourTable] = OrderedDict()
_TABLES_LOCK = threading.Lock()
_KEEP_TABLES = 2


def _table(centroids: np.ndarray, color_space: str, cache: bool) -> _ColourTable:
    if not cache:
        return _ColourTable(centroids, color_space)
    key = color_space.encode() + np.ascontiguousarray(centroids, np.float64).tobytes()
    with _TABLES_LOCK:
        table = _TABLES.get(key)
        if table is None:
            table = _TABLES[key] = _ColourTable(centroids, color_space)
            while len(_TABLES) > _KEEP_TABLES:
                _TABLES.popitem(last=False)
        _TABLES.move_to_end(key)
        return table


def label_image(pixels: np.ndarray, centroids: np.ndarray, color_space: str,
                cache: bool = True) -> tuple[np.ndarray, np.ndarray, float]:
    """Assign every pixel of one image.

    Parameters
    ----------
    pixels : ndarray of shape (height, width, 3), uint8
    centroids : ndarray of shape (n_clusters, 3), float64, in the working colour space
    color_space : str
    cache : bool
        Keep the colour table for the next image with this palette (collection scope).

    Returns
    -------
    labels : ndarray of shape (height, width), uint8 (uint16 when n_clusters > 256)
    counts : ndarray of shape (n_clusters,), int64
    inertia : float
        Sum of squared distances of the pixels to their centroids.
    """
    height, width = pixels.shape[:2]
    table = _table(centroids, color_space, cache)
    codes = colour_codes(pixels.reshape(-1, 3))
    labels = np.empty(len(codes), table.labels.dtype)
    inertia = 0.0
    for start in range(0, len(codes), _BLOCK):
        inertia += table.label_block(codes[start:start + _BLOCK], labels[start:start + _BLOCK])
    counts = _counts(labels, len(centroids))
    if len(centroids) == 256:  # the table needed uint16 for its sentinel; labels fit uint8
        labels = labels.astype(np.uint8)
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
    """Every pixel replaced by its cluster's colour: ndarray of shape (height, width, 3), uint8."""
    return palette[labels]


def mask(labels: np.ndarray, cluster: int) -> np.ndarray:
    """255 where a pixel belongs to ``cluster``, else 0: ndarray (height, width), uint8."""
    return (labels == cluster).view(np.uint8) * np.uint8(255)
