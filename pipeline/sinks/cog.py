"""Cloud-Optimized GeoTIFF outputs of a georeferenced image: the label map, the masks and the
segmented image, each with the input's CRS and transform, and the QGIS style and class table
that go with the label map.

A `RasterSink` takes windows as they are computed (`write`), so no task and no process holds a
whole scene: windows go into a tiled GeoTIFF under a temporary name; `close` then has GDAL's COG
driver copy it with internal tiles, DEFLATE and overviews (nearest for labels and masks,
average for the segmented image), reading the staged file block by block, and renames the
result into place (or uploads it, for a URL).  Every file is therefore complete or absent.
`write_scene` drives one pass over a dask label array: each chunk is computed once and written
to every sink, and the class counts and areas are gathered on the way.

A raster without a CRS gets plain tiled TIFFs (no COG: there is nothing to place on a map), and
the returned note says so.  ``output.format: tiff`` on a georeferenced input gets the same sinks
in the plain tiled layout (``layout="tiff"``): GeoTIFF tags keep the CRS and transform.

The segmented image keeps the input's nodata.  An input without one whose pixels can be masked
(NaN, an alpha or mask band) gets a nodata value no centroid holds in any band
(`segmented_nodata`), written only if a masked pixel was written: QGIS and GDAL honour a
nodata value in every renderer and in average overviews, and any GeoTIFF reader sees it.
"""

from __future__ import annotations

import colorsys
import csv
import io
import logging
import os
import shutil
import tempfile
import threading
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterable, Sequence

import numpy as np

from pipeline import storage
from pipeline.errors import OutputError
from pipeline.sources.geo import require_rasterio

if TYPE_CHECKING:
    import dask.array as da

    from pipeline.sources.geo import GeoHeader

log = logging.getLogger(__name__)

TEMP_PREFIX = ".tmp-"  # as pipeline.write: removed by remove_temp_files after a killed run
BLOCK = 512  # internal tile size of every output
DEFLATE_LEVEL = 1  # zlib level 1: a third of level 6's time for 15 % more bytes (as the PNGs)
_CACHE_MB = 256  # GDAL's block cache while copying to COG: bounds the memory overviews take
# A stage for the COG copy up to this size is left uncompressed (compressed twice otherwise,
# ~1 s per 60 Mpx of uint8 labels); a larger one would take that much disk for a while.
_RAW_STAGE_BYTES = 1 << 30


def _threads() -> int:
    """GDAL's compression threads for the COG copy: the cores this process may use (the copy
    runs after the image's windows, when its task has no other work)."""
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
               else os.cpu_count() or 1)
# The authalic sphere: the sphere with the WGS 84 ellipsoid's surface area (Snyder 1987, p. 16).
AUTHALIC_RADIUS_M = 6371007.181
NO_CRS_NOTE = ("no CRS in the input: outputs are plain tiled TIFFs (not COG), and class areas "
               "are given in pixels only")


def masked_label(n_clusters: int) -> int:
    """The label of masked pixels: the largest value of the label dtype (issue 12)."""
    return 255 if n_clusters <= 255 else 65535


def label_dtype(n_clusters: int) -> np.dtype:
    return np.dtype(np.uint8 if n_clusters <= 255 else np.uint16)


@dataclass(frozen=True)
class GeoReference:
    """Where an output lies: the input's CRS (WKT, or None) and affine transform."""

    crs_wkt: str | None
    transform: tuple[float, float, float, float, float, float]

    @classmethod
    def of(cls, header: GeoHeader) -> GeoReference:
        return cls(header.crs_wkt, header.transform)


class RasterSink:
    """One output raster written window by window, then made a COG by `close`.

    Parameters
    ----------
    path : str
        Final path or URL (``.tif``).
    height, width, count : int
        Size and band count.
    dtype : numpy dtype
    georef : GeoReference
    nodata : float, optional
        Written as GDAL_NODATA; None for none (masks: 0 and 255 are both data).
    nodata_if_masked : bool
        Write ``nodata`` only if some window held it in band 1 (a segmented image whose
        input had no nodata: ``nodata`` is a value no class holds, see `segmented_nodata`).
    layout : {"cog", "tiff"}
        ``cog``: the COG copy with overviews (a raster without a CRS gets ``tiff``);
        ``tiff``: the plain tiled GeoTIFF of ``tile`` and DEFLATE ``zlevel``, no overviews.
    resampling : str
        Overview resampling: ``nearest`` (labels, masks) or ``average`` (segmented image).
    colormap : dict, optional
        Label -> (r, g, b, a), a colour table for band 1.
    description : sequence of str, optional
        Band descriptions.
    tags : dict, optional
        Band 1 metadata (e.g. ``CLASS_0=...``).
    """

    def __init__(self, path: str, height: int, width: int, count: int, dtype: Any,
                 georef: GeoReference, nodata: float | None = None,
                 resampling: str = "nearest", colormap: dict | None = None,
                 description: Sequence[str] | None = None, tags: dict | None = None,
                 nodata_if_masked: bool = False, layout: str = "cog",
                 tile: tuple[int, int] = (BLOCK, BLOCK), zlevel: int = DEFLATE_LEVEL,
                 storage_options: dict | None = None):
        rasterio = require_rasterio()
        if layout not in ("cog", "tiff"):
            raise ValueError(f"layout must be 'cog' or 'tiff', got {layout!r}")
        self.path, self.resampling = path, resampling
        self._dataset = None
        self._lock = threading.Lock()
        self.storage_options = storage_options
        self.cog = layout == "cog" and georef.crs_wkt is not None
        # nodata_if_masked: the value to set on closing, once a window has held it
        self._pending_nodata = nodata if nodata_if_masked and nodata is not None else None
        self._masked_seen = False
        self._local_dir = None if not storage.is_url(path) else tempfile.mkdtemp(
            prefix="kmeans-cog-")
        folder = self._local_dir or os.path.dirname(path)
        os.makedirs(folder, exist_ok=True)
        token = uuid.uuid4().hex[:12]
        base = os.path.basename(path.rstrip("/"))
        self._stage = os.path.join(folder, f"{TEMP_PREFIX}{token}-stage-{base}")
        self._final_temp = os.path.join(folder, f"{TEMP_PREFIX}{token}-{base}")
        from affine import Affine
        from rasterio.crs import CRS

        profile = {
            "driver": "GTiff", "height": height, "width": width, "count": count,
            "dtype": np.dtype(dtype).name, "tiled": True, "blockxsize": tile[1],
            "blockysize": tile[0], "BIGTIFF": "IF_SAFER",
            "interleave": "pixel" if count > 1 else "band",
            "crs": CRS.from_wkt(georef.crs_wkt) if georef.crs_wkt else None,
        }
        raw = height * width * count * np.dtype(dtype).itemsize
        if not self.cog or raw > _RAW_STAGE_BYTES:  # the COG copy compresses the rest
            profile.update(compress="deflate", zlevel=zlevel)
        if not Affine(*georef.transform).is_identity:  # none: GDAL writes no geotransform
            profile["transform"] = Affine(*georef.transform)
        if nodata is not None and self._pending_nodata is None:
            profile["nodata"] = nodata
        if colormap:
            profile["photometric"] = "palette"
        try:
            self._dataset = rasterio.open(self._stage, "w", **profile)
            if colormap:
                self._dataset.write_colormap(1, colormap)
            for band, text in enumerate(description or (), start=1):
                self._dataset.set_band_description(band, text)
            if tags:
                self._dataset.update_tags(1, **tags)
        except Exception as exc:
            self.abort()
            raise OutputError(f"cannot write {path}: {exc}") from exc

    def write(self, row: int, col: int, values: np.ndarray) -> None:
        """Write one window at (row, col): ``values`` of shape (h, w) or (h, w, count)."""
        from rasterio.windows import Window

        bands = values[None] if values.ndim == 2 else np.moveaxis(values, -1, 0)
        window = Window(col, row, bands.shape[2], bands.shape[1])
        seen = self._pending_nodata is not None and not self._masked_seen and \
            bool(_holds(bands[0], self._pending_nodata).any())
        with self._lock:  # a GDAL dataset is not thread-safe; windows may come from threads
            self._dataset.write(bands, window=window)
            self._masked_seen = self._masked_seen or seen

    def close(self) -> int:
        """Finish the file (COG copy, or the tiled TIFF as it is without a CRS), move it into
        place; returns its size in bytes."""
        import rasterio.shutil

        try:
            if self._masked_seen:
                self._dataset.nodata = self._pending_nodata
            self._dataset.close()
            if self.cog:
                with rasterio.Env(GDAL_CACHEMAX=_CACHE_MB):
                    rasterio.shutil.copy(
                        self._stage, self._final_temp, driver="COG", COMPRESS="DEFLATE",
                        LEVEL=DEFLATE_LEVEL, BLOCKSIZE=BLOCK,
                        RESAMPLING=self.resampling.upper(), OVERVIEWS="IGNORE_EXISTING",
                        BIGTIFF="IF_SAFER", NUM_THREADS=str(_threads()))
                os.unlink(self._stage)
            else:
                os.replace(self._stage, self._final_temp)
            size = os.path.getsize(self._final_temp)
            if self._local_dir is None:
                os.replace(self._final_temp, self.path)
            else:
                _upload(self._final_temp, self.path, self.storage_options)
            return size
        except OSError as exc:
            raise OutputError(f"cannot write {self.path} ({exc}); free space or fix the "
                              "folder, then rerun with output.if_exists: resume") from exc
        finally:
            self.abort()

    def abort(self) -> None:
        """Remove whatever temporary files remain (after `close`, or on failure)."""
        dataset = getattr(self, "_dataset", None)
        if dataset is not None and not dataset.closed:
            dataset.close()
        for temp in (self._stage, self._final_temp):
            try:
                os.unlink(temp)
            except OSError:
                pass
        if self._local_dir:
            shutil.rmtree(self._local_dir, ignore_errors=True)
            self._local_dir = ""

    def __enter__(self) -> RasterSink:
        return self

    def __exit__(self, kind: Any, value: Any, traceback: Any) -> None:
        if kind is not None:
            self.abort()


def _holds(values: np.ndarray, value: float) -> np.ndarray:
    return np.isnan(values) if isinstance(value, float) and np.isnan(value) else values == value


def segmented_nodata(nodata: Sequence[float | None],
                     values: np.ndarray) -> tuple[np.ndarray, float | None, bool]:
    """What masked pixels of a segmented image hold, and its nodata.

    The input's nodata when every selected band has the same one (a GeoTIFF has one nodata
    for all bands).  Otherwise a value no class holds in any band, so that it marks masked
    pixels only: NaN for floats, else the largest value of the dtype that no centroid holds;
    it is written only if a masked pixel is
    (``nodata_if_masked``), so an input with nothing masked gets no nodata at all.

    Parameters
    ----------
    nodata : sequence of float or None
        The input's nodata per selected band (``RasterImage.nodata_per_band``).
    values : ndarray of shape (n_clusters, n_bands)
        The segmented image's class values, in its dtype (`tiled.centroid_values`).

    Returns
    -------
    fill : ndarray of shape (n_bands,), ``values.dtype``
        What a masked pixel holds in each band.
    nodata : float or None
        The GDAL nodata value (None only when no value is free, which needs more classes x
        bands than the dtype has values).
    if_masked : bool
        Write ``nodata`` only if a masked pixel was written.
    """
    dtype, n_bands = values.dtype, values.shape[1]
    given = set(nodata)
    if len(given) == 1 and None not in given:
        value = given.pop()
        return np.full(n_bands, value, dtype), float(value), False
    if dtype.kind == "f":
        return np.full(n_bands, np.nan, dtype), float("nan"), True
    info = np.iinfo(dtype)
    held = set(np.unique(values).tolist())
    # of the len(held) + 1 largest values, one is free (unless the dtype has fewer)
    for value in range(int(info.max), max(int(info.min), int(info.max) - len(held)) - 1, -1):
        if value not in held:
            return np.full(n_bands, value, dtype), float(value), True
    log.warning("every %s value is a class value of some band; the segmented image's masked "
                "pixels hold %d with no nodata", dtype, info.max)
    return np.full(n_bands, info.max, dtype), None, False


def _upload(local: str, url: str, options: dict | None) -> None:
    """Copy a finished file to object storage (fsspec uploads large files in parts)."""
    fs, inner = storage.filesystem(url, options)
    storage.retry(lambda: fs.put_file(local, inner), url, "upload")


# ---------------------------------------------------------------------------------------------
# The outputs of one scene


@dataclass
class SceneOutputs:
    """What `write_scene` wrote: files (kind -> [(relative path, size)]), per-class pixel
    counts and areas, and notes for the report."""

    files: dict[str, list[tuple[str, int]]] = field(default_factory=dict)
    counts: np.ndarray | None = None
    areas: np.ndarray | None = None
    masked_pixels: int = 0
    notes: list[str] = field(default_factory=list)


def write_scene(out_dir: str, name: str, labels: da.Array, header: GeoHeader,
                centroids: np.ndarray, palette: np.ndarray,
                class_names: Sequence[str] | None = None, segmented: bool = True,
                masks: bool = True, nodata: float | None = None,
                band_names: Sequence[str] | None = None, storage_options: dict | None = None,
                concurrent: int = 0) -> SceneOutputs:
    """Write one scene's outputs in one pass over its label chunks.

    Parameters
    ----------
    out_dir : str
        Output folder or URL prefix.
    name : str
        The image's output name (``labels/<name>.tif``...).
    labels : dask.array.Array of shape (height, width), uint8 or uint16
        Masked pixels hold `masked_label`.
    header : GeoHeader
        The input's metadata (size, CRS, transform, nodata, dtype).
    centroids : ndarray of shape (n_clusters, n_bands)
        In the units of the segmented image; cast to ``centroids.dtype`` on writing.
    palette : ndarray of shape (n_clusters, 3), uint8
        Display colours (the colour table, the QGIS style, the CSV).
    nodata : float, optional
        The input's nodata for every band (default: the header's, per band); see
        `segmented_nodata` for the segmented image's.
    band_names : sequence of str, optional
        The segmented image's band descriptions (the selected input bands' names).
    concurrent : int
        Chunks computed at a time (default: twice the CPU count).

    Returns
    -------
    SceneOutputs
    """
    n_clusters = len(centroids)
    names = list(class_names or [f"class {j}" for j in range(n_clusters)])
    outputs = SceneOutputs(notes=[] if header.crs_wkt else [NO_CRS_NOTE])
    fill = masked_label(n_clusters)
    per_band = header.nodata[:centroids.shape[1]] if nodata is None else \
        (nodata,) * centroids.shape[1]
    nodata_fill = segmented_nodata(per_band, centroids)
    _make_folders(out_dir, name, masks, segmented)
    sinks: dict[str, RasterSink] = {}
    done: list[str] = []
    try:
        sinks = _open_sinks(out_dir, name, labels, header, centroids, palette, names, fill,
                            segmented, masks, nodata_fill, band_names, storage_options)
        tally = ClassTally(header, n_clusters)
        for row, col, block in iterate_chunks(labels, concurrent):
            _write_block(sinks, row, col, block, centroids, fill, nodata_fill[0], n_clusters)
            tally.add(row, block)
        for kind in list(sinks):
            sink = sinks.pop(kind)
            size = sink.close()
            done.append(sink.path)
            outputs.files.setdefault("masks" if kind.startswith("mask") else kind,
                                     []).append((_relative(sink.path, out_dir), size))
    except BaseException:
        for sink in sinks.values():
            sink.abort()
        for path in done:  # an image whose outputs could not all be written has none
            _remove(path, storage_options)
        raise
    outputs.counts, outputs.areas, outputs.masked_pixels = tally.result()
    write_side_files(out_dir, name, palette, names, outputs, header, storage_options)
    return outputs


def _open_sinks(out_dir: str, name: str, labels: da.Array, header: GeoHeader,
                centroids: np.ndarray, palette: np.ndarray, names: list[str], fill: int,
                segmented: bool, masks: bool, nodata_fill: tuple,
                band_names: Sequence[str] | None,
                storage_options: dict | None) -> dict[str, RasterSink]:
    height, width = labels.shape
    sinks: dict[str, RasterSink] = {}
    try:
        sinks["labels"] = output_sink("labels", storage.join(out_dir, f"labels/{name}.tif"),
                                      header, 1, labels.dtype, fill, palette=palette,
                                      class_names=names, storage_options=storage_options)
        if segmented:
            sinks["segmented"] = output_sink(
                "segmented", storage.join(out_dir, f"segmented/{name}.tif"), header,
                centroids.shape[1], centroids.dtype, nodata_fill[1], band_names=band_names,
                nodata_if_masked=nodata_fill[2], storage_options=storage_options)
        for j in range(len(centroids) if masks else 0):
            sinks[f"mask {j}"] = output_sink(
                "masks", storage.join(out_dir, f"masks/{name}/{j}.tif"), header, 1, np.uint8,
                None, storage_options=storage_options)
    except BaseException:
        for sink in sinks.values():
            sink.abort()
        raise
    return sinks


def output_sink(kind: str, path: str, header: GeoHeader, n_bands: int, dtype: Any,
                nodata: float | None, *, palette: np.ndarray | None = None,
                class_names: Sequence[str] | None = None,
                band_names: Sequence[str] | None = None, nodata_if_masked: bool = False,
                layout: str = "cog", tile: tuple[int, int] = (BLOCK, BLOCK),
                zlevel: int = DEFLATE_LEVEL, storage_options: dict | None = None) -> RasterSink:
    """The `RasterSink` of one output of ``header``'s image, set up for its kind.

    Parameters
    ----------
    kind : {"labels", "segmented", "masks"}
        Labels get the colour table of ``palette`` (nodata transparent), the band description
        ``class`` and ``CLASS_<j>`` metadata from ``class_names``; overviews are nearest for
        labels and masks, average for the segmented image.
    nodata : float or None
        Labels: the masked label; segmented: from `segmented_nodata`; masks: None.
    nodata_if_masked : bool
        Segmented image only: write ``nodata`` only if a masked pixel holds it.
    layout, tile, zlevel
        As `RasterSink`: ``tiff`` for ``output.format: tiff`` (tile and level as the other
        tiled TIFF outputs).
    """
    georef = GeoReference.of(header)
    options: dict[str, Any] = {"storage_options": storage_options, "layout": layout,
                               "tile": tile, "zlevel": zlevel}
    if kind == "labels":
        n_clusters = len(palette) if palette is not None else 0
        names = list(class_names or [f"class {j}" for j in range(n_clusters)])
        options.update(colormap=_colormap(palette, int(nodata)) if palette is not None else None,
                       description=["class"],
                       tags={f"CLASS_{j}": text for j, text in enumerate(names)})
    elif kind == "segmented":
        options.update(resampling="average", description=band_names,
                       nodata_if_masked=nodata_if_masked)
    elif kind != "masks":
        raise ValueError(f"unknown output kind {kind!r}")
    return RasterSink(path, header.height, header.width, n_bands, dtype, georef,
                      nodata=nodata, **options)


class ClassTally:
    """Pixels and area per class, gathered chunk by chunk (the last slot: masked pixels)."""

    def __init__(self, header: GeoHeader, n_clusters: int):
        self.n_clusters = n_clusters
        self.row_areas = _row_areas(header)
        # a projected CRS: one area for every pixel, so areas are counts x that area
        self.uniform = self.row_areas is not None and bool(
            np.all(self.row_areas == self.row_areas[0]))
        self.counts = np.zeros(n_clusters + 1, dtype=np.int64)
        self.areas = np.zeros(n_clusters + 1, dtype=np.float64)

    @property
    def needs_labels(self) -> bool:
        """Whether `add` needs each block's labels: only a geographic CRS's areas, which
        change from row to row; otherwise a block's class counts are enough (`add_counts`)."""
        return self.row_areas is not None and not self.uniform

    def add(self, row: int, block: np.ndarray) -> None:
        index = np.minimum(block.ravel(), self.n_clusters)
        self.counts += np.bincount(index, minlength=self.n_clusters + 1)
        if self.needs_labels:
            weights = np.repeat(self.row_areas[row:row + block.shape[0]], block.shape[1])
            self.areas += np.bincount(index, weights=weights, minlength=self.n_clusters + 1)

    def add_counts(self, counts: np.ndarray, masked: int) -> None:
        """A block's pixels per class ((n_clusters,) int64) and its masked pixels, when
        `needs_labels` is False."""
        self.counts[:self.n_clusters] += counts
        self.counts[self.n_clusters] += masked

    def result(self) -> tuple[np.ndarray, np.ndarray | None, int]:
        """(counts per class, areas per class in m^2 or None, masked pixels)."""
        k = self.n_clusters
        if self.row_areas is None:
            areas = None
        elif self.uniform:
            areas = self.counts[:k] * self.row_areas[0]
        else:
            areas = self.areas[:k]
        return self.counts[:k], areas, int(self.counts[k])


def _relative(path: str, out_dir: str) -> str:
    if storage.is_url(out_dir):
        return path[len(out_dir.rstrip("/")) + 1:]
    return os.path.relpath(path, out_dir).replace(os.sep, "/")


def _remove(path: str, storage_options: dict | None) -> None:
    try:
        if storage.is_url(path):
            storage.remove(path, storage_options)
        else:
            os.unlink(path)
    except OSError:
        pass


def _make_folders(out_dir: str, name: str, masks: bool, segmented: bool) -> None:
    if storage.is_url(out_dir):
        return
    rels = [f"labels/{name}.tif", f"classes/{name}.csv"]
    rels += [f"segmented/{name}.tif"] if segmented else []
    rels += [f"masks/{name}/0.tif"] if masks else []
    for rel in rels:
        os.makedirs(os.path.dirname(storage.join(out_dir, rel)), exist_ok=True)


def _write_block(sinks: dict[str, RasterSink], row: int, col: int, block: np.ndarray,
                 centroids: np.ndarray, fill: int, segmented_fill: np.ndarray,
                 n_clusters: int) -> None:
    valid = block != fill
    sinks["labels"].write(row, col, block)
    if "segmented" in sinks:
        values = centroids[np.where(valid, block, 0)]
        values[~valid] = segmented_fill
        sinks["segmented"].write(row, col, values)
    for j in range(n_clusters):
        sink = sinks.get(f"mask {j}")
        if sink is not None:
            sink.write(row, col, np.where(block == j, 255, 0).astype(np.uint8))


def iterate_chunks(array: da.Array, concurrent: int = 0) -> Iterable[tuple[int, int, np.ndarray]]:
    """(row, col, values) of every chunk of a 2-D dask array, in row-major order, computed
    ``concurrent`` at a time on the active scheduler: memory holds a few chunks, never the
    whole array."""
    from pipeline.cluster import compute

    concurrent = concurrent or 2 * (os.cpu_count() or 1)
    blocks = array.to_delayed()
    offsets = [np.cumsum((0,) + c[:-1]) for c in array.chunks]
    positions = [(i, j) for i in range(blocks.shape[0]) for j in range(blocks.shape[1])]
    for start in range(0, len(positions), concurrent):
        batch = positions[start:start + concurrent]
        values = compute(*[blocks[i, j] for i, j in batch])
        for (i, j), value in zip(batch, values):
            yield int(offsets[0][i]), int(offsets[1][j]), value


def _colormap(palette: np.ndarray, fill: int) -> dict[int, tuple[int, int, int, int]]:
    table = {j: (int(r), int(g), int(b), 255) for j, (r, g, b) in enumerate(palette)}
    table[fill] = (0, 0, 0, 0)
    return table


# ---------------------------------------------------------------------------------------------
# Areas


def _row_areas(header: GeoHeader) -> np.ndarray | None:
    """The area of one pixel in each row, in square metres (projected CRS: constant; a
    geographic CRS: on the authalic sphere, by latitude), or None without a CRS or units."""
    crs = header.crs()
    if crs is None:
        return None
    a, b, c, d, e, f = header.transform
    if crs.is_geographic:
        if b or d:
            return None  # a rotated geographic grid: rows are not parallels
        top = f + e * np.arange(header.height, dtype=np.float64)
        lat1, lat2 = np.radians(top), np.radians(top + e)
        return (AUTHALIC_RADIUS_M ** 2 * np.radians(abs(a))
                * np.abs(np.sin(lat1) - np.sin(lat2)))
    factor = _metres_per_unit(crs)
    if factor is None:
        return None
    return np.full(header.height, abs(a * e - b * d) * factor ** 2)


def _metres_per_unit(crs: Any) -> float | None:
    try:
        unit, factor = crs.linear_units_factor
    except Exception:
        return None
    return float(factor) if factor else None


def pixel_area_map_units(header: GeoHeader) -> float:
    """The area of one pixel in square map units (metres, feet or degrees of the CRS)."""
    a, b, c, d, e, f = header.transform
    return abs(a * e - b * d)


def map_unit_name(header: GeoHeader) -> str:
    crs = header.crs()
    if crs is None:
        return "pixel"
    if crs.is_geographic:
        return "degree"
    try:
        return crs.linear_units_factor[0] or "unit"
    except Exception:
        return "unit"


# ---------------------------------------------------------------------------------------------
# QGIS style and class table


def write_side_files(out_dir: str, name: str, palette: np.ndarray, names: list[str],
                     outputs: SceneOutputs, header: GeoHeader,
                     storage_options: dict | None) -> None:
    """Write ``labels/<name>.qml`` and ``classes/<name>.csv`` (from ``outputs``' counts and
    areas) and add them, and any note on areas, to ``outputs``."""
    qml = qgis_style(palette, names).encode()
    table = class_table(palette, names, outputs, header).encode()
    for kind, rel, data in (("style", f"labels/{name}.qml", qml),
                            ("classes", f"classes/{name}.csv", table)):
        size = _write_bytes(storage.join(out_dir, rel), data, storage_options)
        outputs.files.setdefault(kind, []).append((rel, size))
    if header.crs_wkt and header.crs().is_geographic:
        outputs.notes.append("geographic CRS: area_map_units2 is in square degrees; hectares "
                             "are computed on the authalic sphere (R = 6,371,007 m) row by row")


def _write_bytes(path: str, data: bytes, storage_options: dict | None) -> int:
    """A small file, atomically: one PUT for a URL, else a temporary name then a rename."""
    if storage.is_url(path):
        storage.put_bytes(path, data, storage_options)
        return len(data)
    folder, base = os.path.split(path)
    os.makedirs(folder, exist_ok=True)
    temp = os.path.join(folder, f"{TEMP_PREFIX}{uuid.uuid4().hex[:12]}-{base}")
    try:
        with open(temp, "wb") as handle:
            handle.write(data)
        os.replace(temp, path)
    except OSError as exc:
        _remove(temp, None)
        raise OutputError(f"cannot write {path} ({exc}); free space or fix the folder, then "
                          "rerun with output.if_exists: resume") from exc
    return len(data)


def qgis_style(palette: np.ndarray, names: Sequence[str]) -> str:
    """A QGIS layer style (.qml): the paletted renderer with one entry per class, so QGIS
    opens the label map coloured and named."""
    # here, not at the top: xml.sax.saxutils imports urllib.request, http.client and email
    # (10-20 ms), which a raster run would pay before its first task (issue 14)
    from xml.sax.saxutils import quoteattr

    entries = "\n".join(
        f'        <paletteEntry value="{j}" color="{_hex(colour)}" alpha="255" '
        f'label={quoteattr(names[j])}/>' for j, colour in enumerate(palette))
    return f"""<!DOCTYPE qgis PUBLIC 'http://mrcc.com/qgis.dtd' 'SYSTEM'>
<qgis version="3.28.0" styleCategories="Symbology">
  <pipe>
    <provider>
      <resampling enabled="false" zoomedInResamplingMethod="nearestNeighbour"
                  zoomedOutResamplingMethod="nearestNeighbour" maxOversampling="2"/>
    </provider>
    <rasterrenderer type="paletted" band="1" opacity="1" alphaBand="-1" nodataColor="">
      <rasterTransparency/>
      <minMaxOrigin>
        <limits>None</limits>
        <extent>WholeRaster</extent>
        <statAccuracy>Estimated</statAccuracy>
        <cumulativeCutLower>0.02</cumulativeCutLower>
        <cumulativeCutUpper>0.98</cumulativeCutUpper>
        <stdDevFactor>2</stdDevFactor>
      </minMaxOrigin>
      <colorPalette>
{entries}
      </colorPalette>
    </rasterrenderer>
    <brightnesscontrast brightness="0" contrast="0" gamma="1"/>
    <huesaturation saturation="0" colorizeOn="0" grayscaleMode="0" invertColors="0"/>
    <rasterresampler maxOversampling="2"/>
    <resamplingStage>resamplingFilter</resamplingStage>
  </pipe>
  <blendMode>0</blendMode>
</qgis>
"""


def _hex(colour: Sequence[int]) -> str:
    return "#{:02x}{:02x}{:02x}".format(*(int(v) for v in colour[:3]))


def class_table(palette: np.ndarray, names: Sequence[str], outputs: SceneOutputs,
                header: GeoHeader) -> str:
    """The per-class CSV: class, name, colour, pixels, share of unmasked pixels, area in
    square map units, and hectares (projected CRS in metres or feet; geographic CRS: on the
    authalic sphere, per row)."""
    counts = outputs.counts if outputs.counts is not None else np.zeros(len(palette), np.int64)
    total = int(counts.sum())
    unit = map_unit_name(header)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    columns = ["class", "name", "colour", "pixels", "share"]
    if header.crs_wkt:
        columns += [f"area_{unit}2", "hectares"]
    writer.writerow(columns)
    per_pixel = pixel_area_map_units(header)
    for j, count in enumerate(counts):
        row = [j, names[j], _hex(palette[j]), int(count),
               f"{count / total:.6f}" if total else "0"]
        if header.crs_wkt:
            row.append(repr(float(count * per_pixel)))
            row.append("" if outputs.areas is None else repr(float(outputs.areas[j] / 1e4)))
        writer.writerow(row)
    return buffer.getvalue()


def display_palette(n_clusters: int) -> np.ndarray:
    """Distinct colours for classes when no display bands give them: hues spaced evenly."""
    colours = [colorsys.hsv_to_rgb(j / max(n_clusters, 1), 0.65, 0.9) for j in range(n_clusters)]
    return np.round(np.array(colours) * 255).astype(np.uint8).reshape(n_clusters, 3)

