"""Label every pixel of an image with its nearest centroid; build segmented images and masks.

8-bit RGB has 2**24 colours, so a pixel's label is looked up in a table indexed by its colour
code.  The table is filled only for the colours actually met (most photos use a few per cent of
them), and is shared by every image segmented with the same palette in this process.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

import numpy as np

from pipeline import kmeans

_N_COLOURS = 1 << 24


class _ColourTable:
    """Label and squared distance of each colour code met so far, for one palette."""

    def __init__(self, centroids: np.ndarray, color_space: str):
        self.centroids = centroids
        self.color_space = color_space
        dtype = np.uint8 if len(centroids) <= 256 else np.uint16
        self.labels = np.zeros(_N_COLOURS, dtype)
        self.distances = np.zeros(_N_COLOURS, np.float32)
        self.known = np.zeros(_N_COLOURS, bool)
        self.lock = threading.Lock()

    def lookup(self, codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        missing = codes[~self.known[codes]]
        if len(missing):
            new = np.unique(missing)
            features = kmeans.to_features(kmeans.unpack(new), self.color_space)
            labels, distances = kmeans.assign(features, self.centroids)
            with self.lock:  # writers store identical values; the lock keeps `known` last
                self.labels[new] = labels
                self.distances[new] = distances
                self.known[new] = True
        return self.labels[codes], self.distances[codes]


# Tables are 112 MB each: keep the palettes of the last two calls (a collection has one).
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
    codes = kmeans.pack(pixels.reshape(-1, 3))
    labels, distances = _table(centroids, color_space, cache).lookup(codes)
    counts = np.bincount(labels, minlength=len(centroids)).astype(np.int64)
    return labels.reshape(height, width), counts, float(distances.sum(dtype=np.float64))


def palette_colours(centroids: np.ndarray, color_space: str) -> np.ndarray:
    """The colour each cluster is painted with: ndarray of shape (n_clusters, 3), uint8."""
    return np.rint(kmeans.centroids_to_rgb(centroids, color_space)).astype(np.uint8)


def segmented(labels: np.ndarray, palette: np.ndarray) -> np.ndarray:
    """Every pixel replaced by its cluster's colour: ndarray of shape (height, width, 3), uint8."""
    return palette[labels]


def mask(labels: np.ndarray, cluster: int) -> np.ndarray:
    """255 where a pixel belongs to ``cluster``, else 0: ndarray (height, width), uint8."""
    return (labels == cluster).view(np.uint8) * np.uint8(255)


# Pixels per block of the spatial path: bounds its float64 features to ~10 MB per block.
_SPATIAL_BLOCK = 1 << 18


def label_image_spatial(pixels: np.ndarray, centroids: np.ndarray, color_space: str,
                        spatial_weight: float) -> tuple[np.ndarray, np.ndarray, float]:
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

    Returns
    -------
    labels, counts, inertia : as from `label_image`
    """
    height, width = pixels.shape[:2]
    rows = pixels.reshape(-1, 3)
    labels = np.empty(len(rows), np.uint8 if len(centroids) <= 256 else np.uint16)
    inertia = 0.0
    for start in range(0, len(rows), _SPATIAL_BLOCK):
        stop = min(start + _SPATIAL_BLOCK, len(rows))
        features = kmeans.spatial_features(rows[start:stop], np.arange(start, stop), width,
                                           height, color_space, spatial_weight)
        block, distances = kmeans.assign(features, centroids)
        labels[start:stop] = block
        inertia += float(distances.sum(dtype=np.float64))
    counts = np.bincount(labels, minlength=len(centroids)).astype(np.int64)
    return labels.reshape(height, width), counts, inertia
