"""The raster path of a run: N-band images read in windows -> sample -> fit -> labels written
window by window.  The driver hands it the images `pipeline.sources.rasters` listed.

1. **Sample.** One task per window reads it, masks it and keeps the pixels
   `rasters.sample_columns` picks (positions from (seed, image name, row), independent of
   chunking); per image the windows' picks are merged in raster order.  A window that cannot
   be read makes its image fail with the reason (naming the window), not the run.
2. **Fit.** On the client, in numpy, on the sample as float64 features: per-band
   normalisation (`pipeline.features`), weighted k-means++ starts (``n_init``), Lloyd steps on
   the sample until the centroids move less than ``tol`` times the mean per-band variance.
   With ``k: auto`` the smallest k whose unexplained variance is at most ``max_error``.
   Masked pixels are never in the sample, so never in a sum, a count or an inertia.
3. **Segment and write.** One task per image reads its windows one after another, labels each
   pixel with its nearest centroid (a function of the pixel's values alone, so the same label
   for every chunking), and writes labels, segmented image and masks window by window
   (`pipeline.sinks.tiled`); it returns the per-class table (pixels, mean and std per band in
   the input's units) and the masked pixel count.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import threading
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from pipeline import features as feature_rows
from pipeline import storage
from pipeline.engine import kmeans
from pipeline.errors import ConfigError, ImageReadError, OutputError, StorageError
from pipeline.sinks import cog, tiled
from pipeline.sources import collection, geo, rasters

log = logging.getLogger(__name__)
MODEL_KIND = "raster"


@dataclass(frozen=True)
class RasterImage:
    """One raster plane and how to read it (``input.bands``, ``mask``, ``nodata``)."""

    header: rasters.RasterHeader | geo.GeoHeader
    bands: tuple[int, ...] | None = None
    mask: str = "auto"
    nodata: float | tuple[float, ...] | None = None
    chunk_pixels: int = 1 << 22

    @property
    def name(self) -> str:
        return self.header.name

    @property
    def source(self) -> Any:
        """The module that reads this image: `pipeline.sources.geo` (rasterio) for a header it
        read, else `pipeline.sources.rasters` (tifffile, zarr); both have one window API."""
        return geo if self.header.format == "geo" else rasters

    @property
    def selected(self) -> tuple[int, ...]:
        """The 1-based bands used as features."""
        mask_band = self.source.mask_band_of(self.header, self.mask)
        return tuple(self.bands) if self.bands else tuple(
            b for b in self.header.data_bands if b != mask_band)

    @property
    def band_names(self) -> tuple[str, ...]:
        return tuple(self.header.band_names[b - 1] for b in self.selected)

    @property
    def nodata_per_band(self) -> tuple[float | None, ...]:
        values = self.source.nodata_values(self.header, self.selected, self.mask, self.nodata)
        return tuple(None if math.isnan(v) else float(v) for v in values)

    def windows(self) -> list[tuple[int, int, int, int]]:
        """(row, col, height, width) of every chunk, in raster order."""
        rows, cols = self.source.chunk_grid(self.header, self.chunk_pixels,
                                            len(self.selected) + 1)
        out, row = [], 0
        for h in rows:
            col = 0
            for w in cols:
                out.append((row, col, h, w))
                col += w
            row += h
        return out

    def reader(self) -> tuple[rasters.WindowSource, np.ndarray, bool]:
        """What a window task needs: the source, nodata per band, whether a mask band is read."""
        mask_band = self.source.mask_band_of(self.header, self.mask)
        if self.source is geo:  # apply_scale masks in the read task, on stored values
            source = geo.window_source(self.header, self.selected, mask_band, self.mask,
                                       self.nodata)
        else:
            source = rasters.window_source(self.header, self.selected, mask_band)
        nodata = self.source.nodata_values(self.header, self.selected, self.mask, self.nodata)
        return source, nodata, mask_band is not None


def read_masked(source: rasters.WindowSource, nodata: np.ndarray, has_mask_band: bool, row: int,
                col: int, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """One window: pixels (h, w, n_bands) in the file's dtype, and the mask (h, w), bool."""
    reader = geo if isinstance(source, geo.WindowSource) else rasters
    raw = reader.read_window(source, row, col, height, width)
    masked = rasters.window_mask(raw, nodata, has_mask_band)
    return (raw[..., :-1] if has_mask_band else raw), masked


# ---------------------------------------------------------------------------------------------
# 1. Sample


@dataclass
class Sample:
    """The pixels the fit sees: ``rows`` (n, n_bands) float64 in native units, image by image
    (``counts``), and the images that could not be read (name -> reason)."""

    rows: np.ndarray
    counts: dict[str, int]
    failed: dict[str, str] = field(default_factory=dict)


def _sample_window(reader: tuple, window: tuple[int, int, int, int], image_width: int,
                   seed: int, key: int, rate: float, share: float = 1.0) -> Any:
    """(positions, pixels, unmasked pixel count) of one window, or the reason it failed.

    With ``share`` < 1 only the window's parts in drawn sample blocks are read
    (`rasters.sampled_blocks`), and the count is theirs scaled to the window.
    """
    source, nodata, has_mask_band = reader
    row, col, h, w = window
    parts, seen, unmasked = [], 0, 0
    for r0, c0, bh, bw in rasters.sampled_blocks(seed, key, row, col, h, w, image_width,
                                                 share):
        try:
            pixels, masked = read_masked(source, nodata, has_mask_band, r0, c0, bh, bw)
        except ImageReadError as exc:
            return str(exc)
        parts.append(rasters.sample_window(pixels, masked, r0, c0, image_width, seed, key,
                                           rate, share))
        seen += masked.size
        unmasked += int(masked.size - np.count_nonzero(masked))
    if not parts:
        return np.empty(0, np.int64), None, 0
    positions, values = rasters.merge_samples(parts)
    if seen < h * w:  # an estimate for the rest, never 0 when a drawn block had pixels
        unmasked = math.ceil(unmasked * (h * w) / seen) if unmasked else 0
    return positions, values, unmasked


def _merge_image(parts: list) -> Any:
    for part in parts:
        if isinstance(part, str):
            return part
    read = [(p, v) for p, v, _ in parts if v is not None]
    if not read:  # no window holds a drawn block: read again whole (`draw_sample`)
        return np.empty(0, np.int64), None, 0
    positions, values = rasters.merge_samples(read)
    return positions, values, sum(n for _, _, n in parts)


ALL_MASKED = collection.ALL_MASKED


def check_band_counts(images: list[RasterImage]) -> None:
    """A collection-scope job clusters one feature space: every image must give as many bands.

    Raises
    ------
    ConfigError
        One line naming the first image that differs and both counts (exit 2, before any work).
    """
    if not images:
        return
    first = images[0]
    for image in images[1:]:
        if len(image.selected) != len(first.selected):
            raise ConfigError(f"{image.header.path}: {len(image.selected)} bands, but "
                              f"{first.header.path} has {len(first.selected)}; a collection "
                              "needs one band count: select bands with input.bands, or use "
                              "kmeans.scope: image")


def draw_sample(images: list[RasterImage], sample_pixels: int, seed: int) -> Sample:
    """One pass over every window of every image: the sample, and which images failed.

    ``sample_pixels`` is split over the images in proportion to their size; each image gives
    about its share times its unmasked fraction.  Runs on the active dask scheduler.
    """
    from pipeline.cluster import compute

    total = sum(image.header.n_pixels for image in images) or 1
    rate = min(1.0, sample_pixels / total)
    shares = [rasters.block_share(rate, image.header.height, image.header.width)
              for image in images]
    results = list(compute(*[_image_sample(image, rate, share, seed)
                             for image, share in zip(images, shares)]))
    # drawn blocks all masked is no proof that every pixel is: read those images whole
    again = [i for i, result in enumerate(results)
             if not isinstance(result, str) and result[2] == 0 and shares[i] < 1.0]
    for i, result in zip(again, compute(*[_image_sample(images[i], rate, 1.0, seed)
                                         for i in again])):
        results[i] = result
    rows, counts, failed = [], {}, {}
    for image, result in zip(images, results):
        if isinstance(result, str):
            failed[image.name] = result
            continue
        if result[2] == 0:
            failed[image.name] = f"{image.header.path}: {ALL_MASKED}"
            continue
        counts[image.name] = len(result[1])
        rows.append(result[1].astype(np.float64))
    n_bands = len(images[0].selected) if images else 0
    return Sample(np.concatenate(rows) if rows else np.empty((0, n_bands)), counts, failed)


def _image_sample(image: RasterImage, rate: float, share: float, seed: int) -> Any:
    """A Delayed of one image's merged sample (`_merge_image`): a task per window."""
    import dask

    reader, key = image.reader(), rasters.sample_key(image.name)
    parts = [dask.delayed(_sample_window, pure=True)(reader, window, image.header.width,
                                                     seed, key, rate, share)
             for window in image.windows()]
    return dask.delayed(_merge_image, pure=True)(parts)


def sample_image(image: RasterImage, n_sample: int, seed: int) -> np.ndarray:
    """One image's sample, read here window by window (no dask: for a task that fits one
    image): the same rows, in the same order, as `draw_sample` draws for it alone.

    Returns
    -------
    ndarray of shape (m, n_bands), float64, native units

    Raises
    ------
    ImageReadError
        A window cannot be read.
    """
    reader = image.reader()
    rate = min(1.0, n_sample / max(1, image.header.n_pixels))
    share = rasters.block_share(rate, image.header.height, image.header.width)
    key = rasters.sample_key(image.name)
    for share in (share, 1.0) if share < 1.0 else (1.0,):  # as `draw_sample`: again whole
        parts = []
        for window in image.windows():
            part = _sample_window(reader, window, image.header.width, seed, key, rate, share)
            if isinstance(part, str):
                raise ImageReadError(part)
            parts.append(part)
        merged = _merge_image(parts)
        if merged[2]:
            break
    if merged[1] is None:
        return np.empty((0, len(image.selected)))
    return merged[1].astype(np.float64)


# ---------------------------------------------------------------------------------------------
# 2. Fit


@dataclass
class RasterModel:
    """A fitted palette of N-band centroids.

    ``centroids`` : ndarray (n_clusters, n_bands), float64, in normalised feature units;
    `native` gives them in the bands' own units.
    """

    centroids: np.ndarray
    normalization: feature_rows.Normalization
    band_names: tuple[str, ...]
    dtypes: tuple[str, ...]
    inertia: float
    error: float  # unexplained variance share of the sample
    n_iter: int = 0
    converged: bool = False
    auto_k: list[dict] = field(default_factory=list)

    @property
    def n_clusters(self) -> int:
        return len(self.centroids)

    @property
    def n_bands(self) -> int:
        return self.centroids.shape[1]

    @property
    def native(self) -> np.ndarray:
        return self.normalization.invert(self.centroids)

    def to_dict(self) -> dict:
        return {"kind": MODEL_KIND, "n_clusters": self.n_clusters, "n_bands": self.n_bands,
                "band_names": list(self.band_names), "dtypes": list(self.dtypes),
                "normalize": self.normalization.to_dict(),
                "centroids": self.centroids.tolist(), "centroids_native": self.native.tolist(),
                "inertia": self.inertia, "error_metric": "variance",
                "unexplained_variance": self.error, "n_iter": self.n_iter,
                "converged": self.converged, "auto_k": self.auto_k}

    @classmethod
    def from_dict(cls, doc: dict) -> RasterModel:
        centroids = np.asarray(doc["centroids"], dtype=np.float64)
        n_bands = centroids.shape[1]
        return cls(centroids, feature_rows.Normalization.from_dict(doc.get("normalize"), n_bands),
                   tuple(doc.get("band_names") or [f"band_{i + 1}" for i in range(n_bands)]),
                   tuple(doc.get("dtypes") or ["uint8"]), float(doc.get("inertia", 0.0)),
                   float(doc.get("unexplained_variance", 0.0)), int(doc.get("n_iter", 0)),
                   bool(doc.get("converged", False)), list(doc.get("auto_k", [])))


def check_model(doc: dict, image: RasterImage, normalize: str | None = None) -> RasterModel:
    """A saved raster model, if it fits ``image`` (``apply``, ``kmeans.init``).

    Raises
    ------
    ConfigError
        One line: the model is not a raster model, or has other bands, another dtype or (when
        ``normalize`` is given) another normalisation than the job.
    """
    where = image.header.path
    if doc.get("kind") != MODEL_KIND:
        raise ConfigError(f"the model is an RGB colour palette, but {where} is a raster of "
                          f"{len(image.selected)} bands; fit a model on rasters")
    model = RasterModel.from_dict(doc)
    if model.n_bands != len(image.selected):
        raise ConfigError(f"the model has {model.n_bands} bands, {where} has "
                          f"{len(image.selected)} (input.bands); use a model of the same bands")
    if model.dtypes and image.header.dtype not in model.dtypes:
        raise ConfigError(f"the model was fitted on {', '.join(model.dtypes)} data, {where} is "
                          f"{image.header.dtype}; use a model of the same data type")
    if normalize is not None and normalize != model.normalization.method:
        raise ConfigError(f"the model normalises with {model.normalization.method!r}, the job "
                          f"has preprocess.normalize: {normalize!r}; use the model's")
    return model


def fit_model(sample: np.ndarray, n_clusters: int | str, *, normalize: str = "none",
              seed: int = 0, n_init: int = 3, max_iter: int = 100, tol: float = 1e-4,
              max_error: float = 0.05, max_k: int = 32, band_names: tuple[str, ...] = (),
              dtypes: tuple[str, ...] = (), init: RasterModel | None = None) -> RasterModel:
    """Fit centroids on the sample rows (n, n_bands), native units, float64.

    Parameters
    ----------
    n_clusters : int or "auto"
        ``auto``: the smallest k from 1 to ``max_k`` whose unexplained variance share
        (`features.unexplained_variance`) is at most ``max_error``.
    tol : float
        Converged when the sum over centroids of the squared shift of one Lloyd step is at most
        ``tol`` times the mean per-band variance of the (normalised) sample.
    init : RasterModel, optional
        Start from its centroids and keep its normalisation (``kmeans.init: model.json``).

    Raises
    ------
    ValueError
        The sample is empty (every pixel masked).
    """
    if len(sample) == 0:
        raise ValueError("the sample is empty: every sampled pixel is masked")
    if len(sample) * (max_k if n_clusters == "auto" else int(n_clusters)) >= 1 << 20:
        kmeans.prefer_compiled()  # many passes over the sample: repays numba's start-up
    normalization = init.normalization if init is not None else \
        feature_rows.Normalization.from_sample(normalize, sample)
    features = normalization.apply(sample)
    weights = np.ones(len(features))
    trials: list[dict] = []
    if init is not None:
        tol_abs = kmeans.tolerance(features, weights, tol)
        centroids, steps, converged = kmeans.lloyd(features, weights, init.centroids,
                                                   max_iter, tol_abs)
        partial, _, _ = kmeans.partial_sums(features, None, centroids)
        fit = (centroids, float(partial.inertia), len(steps), converged)
    elif n_clusters == "auto":
        for k in range(1, max_k + 1):
            fit = _best_fit(features, weights, k, seed, n_init, max_iter, tol)
            error = feature_rows.unexplained_variance(fit[1], features)
            trials.append({"k": k, "unexplained_variance": error})
            if error <= max_error:
                break
    else:
        fit = _best_fit(features, weights, int(n_clusters), seed, n_init, max_iter, tol)
    centroids, inertia, n_iter, converged = fit
    error = feature_rows.unexplained_variance(inertia, features)
    if n_clusters == "auto" and error > max_error:
        log.warning("k: auto reached max_k=%d with %.3f of the variance unexplained, above "
                    "max_error=%g", max_k, error, max_error)
    return RasterModel(centroids, normalization, tuple(band_names), tuple(dtypes), inertia,
                       error, n_iter, converged, trials)


# Starts are compared on at most this many sample rows (a fixed random subset); only the
# winner runs on every row.  The starts' Lloyd steps were most of a raster fit's time.
_START_ROWS = 1 << 18
# From this many row-centroid pairs a start's Lloyd steps outweigh a thread's start-up.
_PARALLEL_STARTS_FROM = 1 << 20


def _best_fit(features: np.ndarray, weights: np.ndarray, k: int, seed: int, n_init: int,
              max_iter: int, tol: float) -> tuple[np.ndarray, float, int, bool]:
    """The lowest-inertia of ``n_init`` k-means++ starts refined by Lloyd steps (on a subset
    of `_START_ROWS` rows when the sample is larger), then refined on every row.

    The starts run on threads (one per start, up to twice the cores): each is a function of
    (seed, start) alone and the kernels release the GIL, so the winner (the lowest inertia,
    ties to the first start) is the one a serial loop picks."""
    subset = features
    if len(features) > 2 * _START_ROWS:
        rows = np.random.default_rng([seed, len(features)]).choice(
            len(features), _START_ROWS, replace=False)
        subset = features[np.sort(rows)]
    sub_weights = weights[:len(subset)]
    tol_abs = kmeans.tolerance(subset, sub_weights, tol)

    def run_start(start: int) -> tuple[np.ndarray, float, int, bool]:
        rng = np.random.default_rng([seed, start])
        centroids = kmeans.kmeans_plusplus(subset, sub_weights, k, rng)
        centroids, steps, converged = kmeans.lloyd(subset, sub_weights, centroids, max_iter,
                                                   tol_abs)
        partial, _, _ = kmeans.partial_sums(subset, None, centroids)
        return centroids, float(partial.inertia), len(steps), converged

    starts = range(max(1, n_init))
    # a thread per start (up to twice the cores): starts converge in different numbers of
    # steps, and the OS shares the cores better than a pool of one thread per core (3 starts
    # on 2 cores: the longest start's time, not the two shortest run one after the other)
    threads = min(len(starts), 2 * (os.cpu_count() or 1))
    if threads > 1 and len(subset) * k >= _PARALLEL_STARTS_FROM:
        with ThreadPoolExecutor(threads, thread_name_prefix="kmeans-start") as pool:
            fits = list(pool.map(run_start, starts))
    else:
        fits = [run_start(start) for start in starts]
    best = min(fits, key=lambda fit: fit[1])  # the first of equal inertias, as a serial loop
    if subset is features:
        return best
    centroids, steps, converged = kmeans.lloyd(features, weights, best[0], max_iter,
                                               kmeans.tolerance(features, weights, tol))
    partial, _, _ = kmeans.partial_sums(features, None, centroids)
    return centroids, float(partial.inertia), best[2] + len(steps), converged


# ---------------------------------------------------------------------------------------------
# 3. Segment and write


@dataclass(frozen=True)
class Outputs:
    """What to write for each image, and where (``output.*``)."""

    dir: str
    format: str = "tiff"  # "tiff" or "zarr" (auto resolved by the caller per image)
    segmented: bool = True
    labels: bool = True
    masks: bool = False
    compression: str = "deflate"
    level: int = 1
    storage_options: dict | None = field(default=None, compare=False)


def output_format(image: RasterImage, requested: str) -> str:
    """``output.format`` for one image: ``auto`` is COG for a raster read by rasterio (issue
    13; without a CRS the COG writer makes a plain tiled TIFF and says why), zarr for a zarr
    input, PNG (8 or 16 bits) for a 16-bit PNG or a photo of 1 or 3 selected bands, else
    TIFF."""
    if requested == "auto":
        if image.header.format == "geo":
            return "cog"
        if image.header.format in rasters.WHOLE_FORMATS:  # a PNG or a photo: PNG outputs
            return "png" if len(image.selected) in (1, 3) else "tiff"
        return "zarr" if image.header.format == "zarr" else "tiff"
    if requested == "png":
        raise ConfigError(f"output.format: 'png' holds 8-bit RGB, but {image.header.path} is "
                          "a raster; use 'auto', 'tiff', 'zarr' or 'cog'")
    if requested == "cog" and image.header.format != "geo":
        raise ConfigError(f"output.format: 'cog' keeps a GeoTIFF's georeferencing, but "
                          f"{image.header.path} was read without it (no GeoTIFF tags, or the "
                          f"geo extra is missing: {geo.INSTALL_HINT}); use 'auto' or 'tiff'")
    return requested


class _ClassStats:
    """Per-class pixel counts, and sums of (value - centroid) and its square per band in the
    input's units (deviations from the centroid keep float64 sums of squares accurate), filled
    by `pipeline.engine.compiled.label_window`."""

    def __init__(self, native: np.ndarray):
        self.native = np.ascontiguousarray(native, dtype=np.float64)
        k, b = native.shape
        self.counts = np.zeros(k, np.int64)
        self.sums = np.zeros((k, b))
        self.squares = np.zeros((k, b))

    def merge(self, other: _ClassStats) -> None:
        self.counts += other.counts
        self.sums += other.sums
        self.squares += other.squares

    def table(self, band_names: tuple[str, ...]) -> list[dict]:
        total = int(self.counts.sum())
        rows = []
        for j, count in enumerate(self.counts.tolist()):
            mean = self.sums[j] / count if count else np.full(len(band_names), np.nan)
            var = self.squares[j] / count - mean ** 2 if count else mean
            rows.append({"class": j, "pixels": count, "share": count / total if total else 0.0,
                         "mean": dict(zip(band_names, (self.native[j] + mean).tolist())),
                         "std": dict(zip(band_names, np.sqrt(np.maximum(var, 0)).tolist()))})
        return rows


def output_paths(image: RasterImage, outputs: Outputs, fmt: str,
                 n_clusters: int) -> dict[str, list[str]]:
    """Relative output paths by kind, with the format's extension."""
    ext = {"zarr": ".zarr", "png": ".png"}.get(fmt, ".tif")
    paths: dict[str, list[str]] = {}
    if outputs.labels:
        paths["labels"] = [f"labels/{image.name}{ext}"]
    if outputs.segmented:
        paths["segmented"] = [f"segmented/{image.name}{ext}"]
    if outputs.masks:
        paths["masks"] = [f"masks/{image.name}/{j}{ext}" for j in range(n_clusters)]
    return paths


@dataclass(frozen=True)
class Display:
    """Three bands shown as RGB (0-based among the selected bands), each stretched linearly
    from its 2 % to its 98 % value in the sample (``preprocess.display_bands``)."""

    bands: tuple[int, int, int]
    low: tuple[float, float, float]
    high: tuple[float, float, float]

    def to_rgb(self, values: np.ndarray) -> np.ndarray:
        """``values`` (..., n_bands) in native units -> (..., 3) uint8."""
        picked = values[..., list(self.bands)].astype(np.float64)
        span = np.maximum(np.asarray(self.high) - np.asarray(self.low), 1e-12)
        scaled = (picked - np.asarray(self.low)) / span * 255.0
        return np.clip(np.nan_to_num(scaled), 0, 255).astype(np.uint8)


def display_for(image: RasterImage, sample_rows: np.ndarray,
                display_bands: tuple[int, ...] | None = None) -> Display:
    """The display of one image: ``display_bands`` (1-based, among the selected bands), else the
    bands named red, green and blue, else the first three (one band: grey)."""
    names = [n.lower() for n in image.band_names]
    if display_bands:
        bands = [b - 1 for b in display_bands]
        if len(bands) != 3 or not all(0 <= b < len(names) for b in bands):
            raise ConfigError(f"preprocess.display_bands: give 3 bands from 1 to {len(names)} "
                              f"for {image.header.path}, got {list(display_bands)}")
    elif all(c in names for c in ("red", "green", "blue")):
        bands = [names.index(c) for c in ("red", "green", "blue")]
    else:
        bands = ([0, 1, 2] if len(names) >= 3 else [0, 0, 0])
    if len(sample_rows):
        low, high = np.percentile(sample_rows[:, bands], [2, 98], axis=0)
    else:
        low, high = np.zeros(3), np.ones(3)
    return Display(tuple(bands), tuple(map(float, low)), tuple(map(float, high)))


class _Overview:
    """A nearest-neighbour overview of an image (display RGB and labels) on a fixed global
    grid of every ``step``-th pixel, filled window by window (so the same for any chunking)."""

    SIDE = 640

    def __init__(self, height: int, width: int, display: Display, masked_label: int):
        self.step = max(1, -(-max(height, width) // self.SIDE))
        self.display = display
        shape = (-(-height // self.step), -(-width // self.step))
        self.rgb = np.zeros(shape + (3,), np.uint8)
        self.labels = np.full(shape, masked_label, np.uint16)

    def add(self, row: int, col: int, pixels: np.ndarray, labels: np.ndarray) -> None:
        step = self.step
        ys = np.arange(-(-row // step) * step, row + labels.shape[0], step)
        xs = np.arange(-(-col // step) * step, col + labels.shape[1], step)
        if not len(ys) or not len(xs):
            return
        grid = np.ix_(ys - row, xs - col)
        self.rgb[np.ix_(ys // step, xs // step)] = self.display.to_rgb(pixels[grid])
        self.labels[np.ix_(ys // step, xs // step)] = labels[grid]


def segment_image(image: RasterImage, model: RasterModel, outputs: Outputs,
                  fmt: str = "tiff", max_workers: int = 1, display: Display | None = None,
                  write_thumbs: Callable[..., Any] | None = None) -> dict:
    """Label every pixel of one image and write its outputs window by window (a task).

    ``max_workers`` threads read, label and write windows at once (decoding, the distance
    kernel and compression release the GIL); at most ``2 * max_workers`` windows are in memory.
    With ``display``, an overview (at most 640 px a side) of the image and of its labels is
    filled on the way and handed to ``write_thumbs(overview_rgb, overview_labels, palette)``
    (palette: each centroid through ``display``, (k, 3) uint8); its result is ``thumbs``.

    Returns
    -------
    dict
        ``files`` (kind -> list of [relative path, size in bytes]), ``masked`` (pixel count),
        ``classes`` (the per-class table), ``seconds``.

    Raises
    ------
    ImageReadError
        A window cannot be read; nothing of this image is left in the output folder.
    """
    started = time.perf_counter()
    header, k = image.header, model.n_clusters
    reader = image.reader()
    paths = output_paths(image, outputs, fmt, k)
    values = tiled.centroid_values(model.native, header.dtype)
    fill = tiled.fill_values(header.dtype, image.nodata_per_band)
    palette = display.to_rgb(model.native) if display is not None else \
        cog.display_palette(k)
    sinks = _open_sinks(image, outputs, fmt, paths, values, fill, k, palette)
    stats, masked_total = _ClassStats(model.native), [0]
    areas = cog.ClassTally(header, k) if fmt == "cog" else None
    masked_label = tiled.masked_label(k)
    lock = threading.Lock()
    overview = _Overview(header.height, header.width, display, masked_label) \
        if display is not None else None

    def window(row: int, col: int, h: int, w: int) -> None:
        pixels, masked = read_masked(*reader, row, col, h, w)
        labels, window_stats = _label(pixels, masked, model, masked_label)
        for _, sink in sinks:
            sink.write(row, col, labels)
        if overview is not None:
            overview.add(row, col, pixels, labels)
        n_masked = int(masked.sum())
        with lock:
            stats.merge(window_stats)
            masked_total[0] += n_masked
            # the window's counts are label_window's: labels are counted again only for the
            # per-row areas of a geographic CRS (a bincount of every pixel, under the lock)
            if areas is not None and areas.needs_labels:
                areas.add(row, labels)
            elif areas is not None:
                areas.add_counts(window_stats.counts, n_masked)
    closed: list[_Sink] = []
    try:
        _each_window(window, image.windows(), max_workers)
        files: dict[str, list] = {kind: [] for kind in paths}
        for kind, sink in sinks:
            files[kind].append([sink.rel, sink.close()])
            closed.append(sink)
    except BaseException:
        for _, sink in sinks:
            _abort(sink)
        for sink in closed:  # an image has all its outputs or none
            _remove(sink)
        raise
    result = {"files": files, "masked": masked_total[0],
              "classes": stats.table(_table_names(model, image))}
    if areas is not None:
        _geo_side_files(image, outputs, result, areas, palette, closed)
    if overview is not None and write_thumbs is not None:
        palette = display.to_rgb(model.native)
        result["thumbs"] = write_thumbs(overview.rgb, overview.labels, palette)
    result["seconds"] = time.perf_counter() - started
    return result


def _table_names(model: RasterModel, image: RasterImage) -> tuple[str, ...]:
    """The per-class table's band names: the model's, so that the tables of a collection's
    images combine (their files may name the bands otherwise), else the image's."""
    names = model.band_names
    return names if len(names) == model.n_bands and len(set(names)) == len(names) else \
        image.band_names


def _geo_side_files(image: RasterImage, outputs: Outputs, result: dict, areas: cog.ClassTally,
                    palette: np.ndarray, closed: list[_Sink]) -> None:
    """COG outputs (issue 13): class areas into the per-class table, ``labels/<name>.qml``
    and ``classes/<name>.csv`` into the files, and the notes on CRS and areas."""
    counts, area_m2, _ = areas.result()
    scene = cog.SceneOutputs(counts=counts, areas=area_m2)
    if not image.header.georeferenced:
        scene.notes.append(cog.NO_CRS_NOTE)
    try:
        cog.write_side_files(outputs.dir, image.name, palette,
                             [f"class {j}" for j in range(len(counts))], scene, image.header,
                             outputs.storage_options)
    except BaseException:
        for sink in closed:  # an image has all its outputs or none
            _remove(sink)
        raise
    unit = cog.map_unit_name(image.header)
    per_pixel = cog.pixel_area_map_units(image.header)
    for row, count in zip(result["classes"], counts.tolist()):
        if image.header.georeferenced:
            row[f"area_{unit}2"] = count * per_pixel
        if area_m2 is not None:
            row["hectares"] = float(area_m2[row["class"]]) / 1e4
    for kind, entries in scene.files.items():
        result["files"][kind] = [list(entry) for entry in entries]
    if scene.notes:
        result["notes"] = scene.notes


def _each_window(work: Callable[..., None], windows: list[tuple[int, int, int, int]],
                 max_workers: int) -> None:
    """``work(*window)`` for every window, by ``max_workers`` threads, at most
    ``2 * max_workers`` queued; the first error stops the rest and is raised."""
    if max_workers <= 1:
        for window in windows:
            work(*window)
        return
    with ThreadPoolExecutor(max_workers) as pool:
        pending: set = set()
        try:
            for window in windows:
                pending.add(pool.submit(work, *window))
                if len(pending) >= 2 * max_workers:
                    done, pending = wait(pending, return_when=FIRST_COMPLETED)
                    for future in done:
                        future.result()
            for future in pending:
                future.result()
        except BaseException:
            for future in pending:
                future.cancel()
            raise


def _label(pixels: np.ndarray, masked: np.ndarray, model: RasterModel,
           masked_label: int) -> tuple[np.ndarray, _ClassStats]:
    """Labels of one window (masked pixels `masked_label`) and its per-class statistics, in
    one compiled pass over its pixels (`pipeline.engine.kernels.label_window`)."""
    from pipeline.engine import kernels

    rows = pixels.reshape(-1, pixels.shape[2])
    out = np.empty(len(rows), tiled.label_dtype(model.n_clusters))
    stats = _ClassStats(model.native)
    norm = model.normalization
    kernels.label_window(rows, masked.reshape(-1), model.centroids,
                         np.asarray(norm.center, np.float64), np.asarray(norm.scale, np.float64),
                         norm.method != "none", stats.native, masked_label, out, stats.counts,
                         stats.sums, stats.squares)
    return out.reshape(masked.shape), stats


class _Sink:
    """One output (labels, segmented or one mask) written window by window."""

    def __init__(self, rel: str, url: str, transform: Callable[[np.ndarray], np.ndarray],
                 writer: Any, zarr_url: str | None, storage_options: dict | None):
        self.rel, self.url, self.transform, self.writer = rel, url, transform, writer
        self.zarr_url, self.storage_options = zarr_url, storage_options

    def write(self, row: int, col: int, labels: np.ndarray) -> None:
        block = self.transform(labels)
        if isinstance(self.writer, _PngWriter):  # the masked pixels, for a segmented alpha
            self.writer.write(row, col, block, labels != np.iinfo(labels.dtype).max)
        elif self.zarr_url is None:
            self.writer.write(row, col, block)
        else:
            tiled.write_zarr_window(self.writer, row, col, block)

    def close(self) -> int:
        if self.zarr_url is None:
            return self.writer.close()
        tiled.mark_complete(self.zarr_url, {"shape": list(self.writer.shape)},
                            self.storage_options)
        return _zarr_size(self.zarr_url, self.storage_options)

    def abort(self) -> None:
        if self.zarr_url is None:
            self.writer.abort()
        else:
            tiled.remove_marker(self.zarr_url, self.storage_options)


def _open_sinks(image: RasterImage, outputs: Outputs, fmt: str, paths: dict[str, list[str]],
                values: np.ndarray, fill: np.ndarray, k: int,
                palette: np.ndarray | None = None) -> list[tuple[str, _Sink]]:
    header = image.header
    n_bands = values.shape[1]
    label_type = tiled.label_dtype(k)
    masked_label = tiled.masked_label(k)
    # issue 13: a georeferenced input's outputs (COG, or output.format: tiff) go through
    # rasterio, keeping CRS and transform; its segmented image keeps the input's nodata
    geo_sinks = fmt == "cog" or (fmt == "tiff" and header.format == "geo")
    if_masked = False
    if geo_sinks:
        fill, nodata_fill, if_masked = cog.segmented_nodata(image.nodata_per_band, values)
    else:
        nodata_fill = fill[0].item() if len(set(fill.tolist())) == 1 or \
            all(math.isnan(v) for v in fill.tolist()) else None
    specs: list[tuple[str, str, Callable, int, Any, float | None]] = []
    for rel in paths.get("labels", []):
        specs.append(("labels", rel, lambda lab: lab, 1, label_type, masked_label))
    for rel in paths.get("segmented", []):
        specs.append(("segmented", rel, lambda lab: tiled.paint(lab, values, fill), n_bands,
                      np.dtype(header.dtype), nodata_fill))
    for j, rel in enumerate(paths.get("masks", [])):
        specs.append(("masks", rel, lambda lab, j=j: tiled.cluster_mask(lab, j), 1, np.uint8,
                      None))
    tile = tiled.tile_for(header.block_shape, header.height, header.width)
    chunks = image.source.chunk_grid(header, image.chunk_pixels, len(image.selected) + 1)
    # output.format: tiff on a geo input: tiles and level as the other tiled TIFF outputs
    plain = {} if fmt == "cog" else {"layout": "tiff", "tile": tile, "zlevel": outputs.level}
    sinks = []
    try:
        for kind, rel, transform, bands, dtype, nodata in specs:
            url = storage.join(outputs.dir, rel)
            if geo_sinks:
                writer = cog.output_sink(kind, url, header, bands, dtype, nodata,
                                         palette=palette, band_names=image.band_names,
                                         nodata_if_masked=if_masked and kind == "segmented",
                                         **plain, storage_options=outputs.storage_options)
                sinks.append((kind, _Sink(rel, url, transform, writer, None,
                                          outputs.storage_options)))
            elif fmt == "png":  # decoded whole: one window, encoded when it closes
                sinks.append((kind, _Sink(rel, url, transform,
                                          _PngWriter(url, header.height, header.width, bands,
                                                     dtype, kind == "segmented",
                                                     outputs.level, outputs.storage_options),
                                          None, outputs.storage_options)))
            elif fmt == "zarr":
                shape = (header.height, header.width) + ((bands,) if bands > 1 else ())
                zchunks = (chunks[0][0], chunks[1][0]) + ((bands,) if bands > 1 else ())
                writer = tiled.create_zarr(url, shape, dtype, zchunks,
                                           attrs={"nodata": nodata, "kind": kind},
                                           storage_options=outputs.storage_options)
                sinks.append((kind, _Sink(rel, url, transform, writer, url,
                                          outputs.storage_options)))
            else:
                writer = tiled.TiffWriter(url, header.height, header.width, bands, dtype,
                                          tile=tile, compression=outputs.compression,
                                          level=outputs.level, nodata=nodata,
                                          storage_options=outputs.storage_options)
                sinks.append((kind, _Sink(rel, url, transform, writer, None,
                                          outputs.storage_options)))
    except BaseException:
        for _, sink in sinks:
            _abort(sink)
        raise
    return sinks


class _PngWriter:
    """A PNG output of an image decoded whole (its one window arrives, then `close` encodes
    it): grey or RGB at the dtype's depth (8 or 16 bits).  A segmented image whose masked
    pixels (the nodata fill) are marked gets an alpha channel, 0 there, when any pixel is."""

    def __init__(self, url: str, height: int, width: int, bands: int, dtype: Any,
                 transparent: bool, level: int, storage_options: dict | None):
        self.url, self.level, self.storage_options = url, level, storage_options
        self.pixels = np.zeros((height, width, bands), np.dtype(dtype))
        self.opaque = np.ones((height, width), bool) if transparent else None

    def write(self, row: int, col: int, block: np.ndarray, opaque: np.ndarray | None = None
              ) -> None:
        h, w = block.shape[:2]
        self.pixels[row:row + h, col:col + w] = block.reshape(h, w, -1)
        if self.opaque is not None and opaque is not None:
            self.opaque[row:row + h, col:col + w] = opaque

    def close(self) -> int:
        from pipeline.sinks import images

        pixels = self.pixels
        if self.opaque is not None and not self.opaque.all():
            alpha = self.opaque.astype(pixels.dtype) * np.iinfo(pixels.dtype).max
            pixels = np.concatenate([pixels, alpha[..., None]], axis=2)
        height, width, bands = pixels.shape
        depth = 8 * pixels.dtype.itemsize
        rows = pixels.astype(pixels.dtype.newbyteorder(">")).view(np.uint8).reshape(height, -1)
        colour_type = {1: 0, 2: 4, 3: 2, 4: 6}[bands]
        return images.write_png_data(self.url, width, height, depth, colour_type,
                                     images.deflate_rows(rows, self.level),
                                     storage_options=self.storage_options)

    def abort(self) -> None:
        self.pixels = np.zeros((0, 0, 1), self.pixels.dtype)  # nothing was written yet


def _abort(sink: _Sink) -> None:
    try:
        sink.abort()
    except (OSError, StorageError):
        pass


def _remove(sink: _Sink) -> None:
    """Delete an output that was complete (a later one of its image failed)."""
    try:
        if sink.zarr_url is not None:
            tiled.remove_marker(sink.zarr_url, sink.storage_options)
        elif storage.is_url(sink.url):
            storage.remove(sink.url, sink.storage_options)
        else:
            os.unlink(sink.url)
    except (OSError, StorageError):
        pass


def _zarr_size(url: str, storage_options: dict | None) -> int:
    if storage.is_url(url):
        return sum(storage.sizes(url, storage_options).values())
    return sum(os.path.getsize(os.path.join(folder, name))
               for folder, _, names in os.walk(url) for name in names)



# ---------------------------------------------------------------------------------------------
# Tasks, as the driver computes them: a result dict per image, errors as values


def segment_task(image: RasterImage, model: RasterModel, outputs: Outputs, fmt: str,
                 max_workers: int = 1, display: Display | None = None,
                 write_thumbs: Callable[..., Any] | None = None) -> dict:
    """`segment_image` with its failures as values: ``{"error": reason}`` for an image that
    cannot be read (skipped or failed by ``on_error``), and ``output_error: True`` with the
    reason when an output cannot be written (the run stops)."""
    try:
        result = segment_image(image, model, outputs, fmt, max_workers, display, write_thumbs)
    except ImageReadError as exc:
        return {"error": str(exc)}
    except (StorageError, OutputError) as exc:
        return {"error": str(exc), "output_error": True}
    except OSError as exc:
        return {"error": f"cannot write the outputs of {image.header.path} to "
                         f"{outputs.dir!r} ({exc.strerror or exc}); free space or fix the "
                         "folder, then rerun with output.if_exists: resume",
                "output_error": True}
    return _entry(result, model)


def fit_segment_task(image: RasterImage, fit: dict, outputs: Outputs, fmt: str,
                     max_workers: int = 1, display_bands: tuple[int, ...] | None = None,
                     write_thumbs: Callable[..., Any] | None = None) -> dict:
    """``kmeans.scope: image`` for one raster: sample it, fit its own palette (``fit``: the
    keyword arguments of `fit_model` plus ``sample_pixels``), segment and write it."""
    fit = dict(fit)
    n_sample = fit.pop("sample_pixels")
    try:
        rows = sample_image(image, n_sample, fit.get("seed", 0))
        if not len(rows):
            return {"error": f"{image.header.path}: {ALL_MASKED}"}
        model = fit_model(rows, band_names=image.band_names, dtypes=(image.header.dtype,),
                          **fit)
    except ImageReadError as exc:
        return {"error": str(exc)}
    display = display_for(image, rows, display_bands) if write_thumbs is not None else None
    result = segment_task(image, model, outputs, fmt, max_workers, display, write_thumbs)
    if "error" not in result:
        result["model"] = model.to_dict()
    return result


def _entry(result: dict, model: RasterModel) -> dict:
    """A report entry: outputs, per-class counts and table, masked pixels."""
    entry = {"outputs": result["files"], "masked": result["masked"],
             "counts": [row["pixels"] for row in result["classes"]],
             "classes": result["classes"], "seconds": round(result["seconds"], 4)}
    if "thumbs" in result:
        entry["outputs"]["thumbs"] = result["thumbs"]
    if result.get("notes"):
        entry["notes"] = result["notes"]
    return entry


def thumbs_writer(out_dir: str, name: str, compress_level: int,
                  storage_options: dict | None) -> Callable[..., list]:
    """What `segment_image` calls with an image's overview: the report's thumbnails of
    ``name`` (masked pixels black, as one more palette entry)."""
    return functools.partial(_write_thumbs, out_dir, name, compress_level, storage_options)


def _write_thumbs(out_dir: str, name: str, compress_level: int, storage_options: dict | None,
                  rgb: np.ndarray, labels: np.ndarray, palette: np.ndarray) -> list:
    from pipeline.sinks import report

    k = len(palette)
    shown = np.where(labels >= k, k, labels).astype(np.uint16 if k >= 255 else np.uint8)
    colours = np.vstack([palette, np.zeros((1, 3), np.uint8)]).astype(np.uint8)
    return report.write_thumbnails(out_dir, name, rgb, shown, colours, compress_level,
                                   storage_options)
