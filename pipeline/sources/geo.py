"""Georeferenced rasters through rasterio (GDAL): GeoTIFF and COG, VRT band stacks, JPEG 2000
where the GDAL build decodes it, and every other format GDAL reads.

`read_header` opens a file once on the client and keeps only metadata (`GeoHeader`): shape,
dtype, band names, per-band nodata and mask flags, the block grid, CRS, transform, scale and
offset.  `pixel_array` turns a header into a dask array of shape (height, width, bands) in the
file's own dtype, one task per window; windows are whole blocks of the file merged up to a pixel
budget, so every block is decoded by exactly one task.  Each task carries the path and its
window, never pixels.  `mask_array` gives the matching boolean mask (True: masked) from the
bands' nodata values, NaN/inf in float bands, and the dataset's mask or alpha band.

A URL is opened through `pipeline.storage`: rasterio hands GDAL a file object made by
`storage.open_read` (range reads, each retried by the storage rules, with the job's
``storage_options`` as credentials), so no second set of credentials or retry rules exists.

rasterio is the optional ``geo`` extra: without it, `require_rasterio` raises a one-line
`ConfigError` naming ``pip install 'kmeans-pipeline[geo]'``.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import os
import posixpath
import re
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterator

import numpy as np

from pipeline import storage
from pipeline.errors import ConfigError, ImageReadError
# The window plumbing and the nodata test are the TIFF/zarr reader's: one implementation.
from pipeline.sources import rasters
from pipeline.sources.rasters import _graph_array, _split, window_mask

if TYPE_CHECKING:
    import dask.array as da

log = logging.getLogger(__name__)

INSTALL_HINT = "pip install 'kmeans-pipeline[geo]'"
# Dtypes the engine takes as features (issue 12); GDAL also has int8, int64 and complex types.
SUPPORTED_DTYPES = frozenset({"uint8", "uint16", "int16", "uint32", "int32", "float32",
                              "float64"})
# GeoTIFF tags: ModelPixelScale, ModelTiepoint, ModelTransformation, GeoKeyDirectory.
_GEOTIFF_TAGS = (33550, 33922, 34264, 34735)
# GDAL probes for sidecar files (.aux.xml, .ovr, .msk) next to a file; on object storage each
# probe is a request, and listing the folder first can be slower than the probes.
_URL_ENV = {"GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR"}
_CACHE_MB = 128  # GDAL's block cache per process; its default (5 % of RAM) would dwarf a chunk


def require_rasterio() -> Any:
    """The rasterio module, or a one-line `ConfigError` naming the extra that installs it."""
    try:
        import rasterio
    except ImportError as exc:
        raise ConfigError(f"georeferenced rasters need rasterio, which is not installed: "
                          f"{INSTALL_HINT}") from exc
    return rasterio


def available() -> bool:
    """Whether the ``geo`` extra (rasterio) is installed."""
    try:
        import rasterio  # noqa: F401
    except ImportError:
        return False
    return True


# Extensions of raster formats only GDAL reads here (TIFFs are routed by their tags, photos
# keep their Pillow path); folders contribute these files.  JPEG 2000 is here: Sentinel-2 and
# other scenes carry their georeferencing in it, which Pillow drops.
GEO_EXTENSIONS = frozenset({".vrt", ".jp2", ".j2k", ".img", ".ntf", ".nc", ".asc", ".bil",
                            ".hgt", ".dem", ".grd", ".sdat", ".rst", ".ers", ".kea", ".mrf"})
TIFF_EXTENSIONS = frozenset({".tif", ".tiff"})


def extensions() -> frozenset[str]:
    """`GEO_EXTENSIONS` this GDAL build has a driver for (empty without rasterio)."""
    if not available():
        return frozenset()
    rasterio = require_rasterio()
    from rasterio.drivers import raster_driver_extensions

    with rasterio.Env() as env:
        drivers = env.drivers()
    known = {"." + ext for ext, driver in raster_driver_extensions().items() if driver in drivers}
    return frozenset(ext for ext in GEO_EXTENSIONS if ext in known or ext in {".vrt", ".img"})


def _extension(path: str) -> str:
    return posixpath.splitext(path.split("?", 1)[0].rstrip("/"))[1].lower()


def is_geo_only(path: str) -> bool:
    """Whether ``path`` is a format only GDAL reads here (by its extension)."""
    return _extension(path) in GEO_EXTENSIONS


def route(path: str, storage_options: dict | None = None) -> str:
    """How to read ``path`` (issue 13): ``geo`` (rasterio), ``tiff-ungeoreferenced`` (a
    GeoTIFF, but rasterio is missing: tifffile reads it and georeferencing is lost),
    ``missing-extra`` (a format only GDAL reads, rasterio missing) or ``other``."""
    ext = _extension(path)
    if ext in GEO_EXTENSIONS:
        return "geo" if available() else "missing-extra"
    if ext in TIFF_EXTENSIONS and has_geotiff_tags(path, storage_options):
        return "geo" if available() else "tiff-ungeoreferenced"
    return "other"


NOT_KEPT_NOTE = (f"GeoTIFF read without its georeferencing (rasterio is not installed: "
                 f"{INSTALL_HINT}); outputs are plain tiled TIFFs")


def has_geotiff_tags(path: str, storage_options: dict | None = None) -> bool:
    """Whether a TIFF's first page carries GeoTIFF tags.

    Read from the first IFD's tag codes alone (`first_ifd_tags`): importing tifffile for
    this check cost every raster run 20-30 ms, and GDAL cannot tell a plain TIFF apart."""
    try:
        handle = storage.open_read(path, storage_options) if storage.is_url(path) else \
            open(path, "rb")
        with handle:
            tags = first_ifd_tags(handle)
    except Exception:  # unreadable: the reader that opens it says why
        return False
    return any(code in tags for code in _GEOTIFF_TAGS)


_MAX_TAGS = 4096  # more entries than any real first IFD: a damaged file is read no further


def first_ifd_tags(handle) -> set[int]:
    """The tag codes of a TIFF's first IFD (classic or BigTIFF, either byte order), or an
    empty set when the file is not a TIFF.  Reads the 8- or 16-byte header and the IFD's
    entries, nothing else (TIFF 6.0 section 2; BigTIFF: 8-byte offsets and counts)."""
    header = handle.read(16)
    if header[:2] not in (b"II", b"MM"):
        return set()
    order = "little" if header[:2] == b"II" else "big"
    version = int.from_bytes(header[2:4], order)
    if version == 42:
        offset, count_size, entry_size = int.from_bytes(header[4:8], order), 2, 12
    elif version == 43 and len(header) == 16:
        offset, count_size, entry_size = int.from_bytes(header[8:16], order), 8, 20
    else:
        return set()
    handle.seek(offset)
    count = min(int.from_bytes(handle.read(count_size), order), _MAX_TAGS)
    entries = handle.read(count * entry_size)
    return {int.from_bytes(entries[i:i + 2], order)
            for i in range(0, len(entries) - entry_size + 1, entry_size)}


@dataclass(frozen=True)
class GeoHeader:
    """One raster as known from its metadata (no pixels read).

    ``transform`` is the affine (a, b, c, d, e, f) of GDAL's geotransform in rasterio's order:
    x = a * col + b * row + c, y = d * col + e * row + f.  ``crs_wkt`` is None for a raster
    without a CRS.  Per-band tuples have one entry per band of the file, in file order.
    """

    path: str
    name: str
    driver: str
    height: int
    width: int
    count: int
    stored_dtype: str
    band_names: tuple[str, ...]
    nodata: tuple[float | None, ...]
    mask_flags: tuple[tuple[str, ...], ...]
    block_shape: tuple[int, int]
    crs_wkt: str | None
    transform: tuple[float, float, float, float, float, float]
    scales: tuple[float, ...]
    offsets: tuple[float, ...]
    units: tuple[str, ...] = ()
    colorinterp: tuple[str, ...] = ()
    apply_scale: bool = False  # input.apply_scale: pixels are value * scale + offset, float32
    files: tuple[str, ...] = ()
    size_bytes: int = 0
    mtime_ns: int = 0
    level: int = 0  # input.level: 0 the full resolution, N the file's overview N (GDAL's N - 1)
    levels: int = 1  # the full resolution and the overviews of band 1
    storage_options: dict | None = field(default=None, compare=False, repr=False)

    @property
    def note(self) -> str | None:
        """What the report says about this image (as `pipeline.sources.rasters` headers)."""
        return f"pyramid level {self.level} of {self.levels}" if self.level else None

    @property
    def dtype(self) -> str:
        """The dtype of the pixels the pipeline works on: the file's, or float32 when
        ``apply_scale`` gives physical units."""
        return "float32" if self.apply_scale else self.stored_dtype

    @property
    def format(self) -> str:
        return "geo"

    @property
    def shape(self) -> tuple[int, int, int]:
        """(height, width, bands), the layout of `pixel_array`."""
        return self.height, self.width, self.count

    @property
    def n_pixels(self) -> int:
        return self.height * self.width

    @property
    def georeferenced(self) -> bool:
        """Whether the raster has a CRS (outputs can then be placed on a map)."""
        return self.crs_wkt is not None

    @property
    def alpha_band(self) -> int | None:
        """The 1-based index of the band GDAL calls alpha, if any."""
        for index, interp in enumerate(self.colorinterp, start=1):
            if interp == "alpha":
                return index
        return None

    @property
    def data_bands(self) -> tuple[int, ...]:
        """1-based indices of the bands that are features (every band but an alpha band)."""
        alpha = self.alpha_band
        return tuple(b for b in range(1, self.count + 1) if b != alpha)

    @property
    def scaled(self) -> bool:
        """Whether any band has a scale or offset other than 1 and 0."""
        return any(s != 1.0 for s in self.scales) or any(o != 0.0 for o in self.offsets)

    def crs(self) -> Any:
        """The rasterio ``CRS``, or None."""
        if self.crs_wkt is None:
            return None
        from rasterio.crs import CRS

        return CRS.from_wkt(self.crs_wkt)

    def affine(self) -> Any:
        from affine import Affine

        return Affine(*self.transform)


# ---------------------------------------------------------------------------------------------
# Opening


@contextlib.contextmanager
def open_dataset(path: str, storage_options: dict | None = None,
                 level: int = 0) -> Iterator[Any]:
    """An open rasterio dataset for a local path or a URL (through `pipeline.storage`).

    ``level`` > 0 opens overview ``level`` as the dataset (GDAL's ``OVERVIEW_LEVEL`` open
    option, ``level - 1``): its size, blocks and transform are the overview's.

    Raises
    ------
    ImageReadError
        GDAL cannot open it: a one-line reason naming ``path``.
    ConfigError
        rasterio is not installed.
    """
    dataset = _open(path, storage_options, level)
    try:
        yield dataset
    finally:
        dataset.close()


def _open(path: str, storage_options: dict | None, level: int) -> Any:
    """A rasterio dataset the caller closes (see `open_dataset`)."""
    rasterio = require_rasterio()
    from rasterio.errors import RasterioIOError

    env = {"GDAL_CACHEMAX": _CACHE_MB}
    options: dict[str, Any] = {"overview_level": level - 1} if level > 0 else {}
    if storage.is_url(path):
        env.update(_URL_ENV)
        options["opener"] = _StorageOpener(storage_options)
    try:
        # the Env matters while GDAL opens the file (sidecar probes); reads need none
        with rasterio.Env(**env):
            return rasterio.open(path, **options)
    except RasterioIOError as exc:
        raise ImageReadError(_open_reason(path, exc)) from exc


class _ThreadDatasets(threading.local):
    """The datasets one thread has open, by (path, level, mtime, storage options), least
    recently used first.  A window task reads through these instead of opening the file
    again (about 9 ms a window for a tiled GeoTIFF, more at a URL).  rasterio datasets are
    not thread-safe, so each thread has its own; they close when evicted or when the thread
    ends (a segment task's pool), and a changed file (mtime) gets a new entry."""

    def __init__(self) -> None:
        self.open: OrderedDict = OrderedDict()


_THREAD_DATASETS = _ThreadDatasets()
_OPEN_PER_THREAD = 4  # a task reads one image; a few more cover a worker thread's next tasks


def _dataset(source: _Source) -> Any:
    """This thread's open dataset for ``source``, opened on first use."""
    cached = _THREAD_DATASETS.open
    key = (source.path, source.level, source.mtime_ns, repr(source.storage_options))
    dataset = cached.get(key)
    if dataset is not None and not dataset.closed:
        cached.move_to_end(key)
        return dataset
    dataset = _open(source.path, source.storage_options, source.level)
    cached[key] = dataset
    while len(cached) > _OPEN_PER_THREAD:
        cached.popitem(last=False)[1].close()
    return dataset


def _forget(source: _Source) -> None:
    for key in [key for key in _THREAD_DATASETS.open if key[0] == source.path]:
        _THREAD_DATASETS.open.pop(key).close()


class _StorageOpener:
    """GDAL's virtual file system over `pipeline.storage` (rasterio's fsspec-like opener
    interface), so sidecars and VRT sources at URLs are read by the same rules."""

    def __init__(self, storage_options: dict | None):
        self.options = storage_options

    def open(self, path: str, mode: str = "rb", **kwargs: Any) -> Any:
        if "r" not in mode:
            raise PermissionError(f"{path}: opened read-only")
        return storage.open_read(path, self.options)

    def isfile(self, path: str) -> bool:
        try:
            return storage.stat(path, self.options)[0] >= 0
        except OSError:
            return False

    def isdir(self, path: str) -> bool:
        return False  # a raster is one object; GDAL only asks to rule out folders

    def ls(self, path: str) -> list[str]:
        return []

    def mtime(self, path: str) -> int:
        try:
            return storage.stat(path, self.options)[1] // 1_000_000_000
        except OSError:
            return 0

    def size(self, path: str) -> int:
        try:
            return storage.stat(path, self.options)[0]
        except OSError:
            return 0


def _open_reason(path: str, exc: Exception) -> str:
    text = _gdal_text(exc)
    lowered = text.lower()
    if "not recognized as being in a supported file format" in lowered or \
            "not recognised as" in lowered:
        return (f"{path}: not a raster format this GDAL build reads ({text}); convert it to "
                "GeoTIFF (gdal_translate) or remove it")
    if "no such file" in lowered or "does not exist" in lowered:
        missing = _named_file(text) or path
        if missing != path:
            return (f"{path}: names {missing}, which does not exist; fix the VRT or restore "
                    "the file")
        return f"{path}: file not found; check the path"
    return f"{path}: cannot open the raster (GDAL: {text}); fix or remove it"


def _gdal_text(exc: BaseException) -> str:
    """GDAL's own words: rasterio's "See previous exception" points down the cause chain,
    whose last link is the codec's message (e.g. "ZIPDecode:Decoding error at scanline 128")."""
    texts = []
    while exc is not None and len(texts) < 8:
        text = " ".join(str(exc).split())
        if text and "see previous exception" not in text.lower():
            texts.append(text)
        exc = exc.__cause__ or exc.__context__
    return (texts[-1] if texts else "unknown GDAL error")[:300]


def _named_file(text: str) -> str | None:
    """The file a GDAL 'No such file or directory' message is about."""
    quoted = text.split("'")
    if len(quoted) >= 3:
        return quoted[1]
    for word in text.replace(",", " ").split():
        if "/" in word or "." in word.strip("."):
            return word.strip(":.")
    return None


# ---------------------------------------------------------------------------------------------
# Headers


def read_header(path: str, name: str | None = None, storage_options: dict | None = None,
                apply_scale: bool = False, level: int = 0) -> GeoHeader:
    """Read a raster's metadata: no pixels (a VRT's sources are opened to check their grid).

    Parameters
    ----------
    path : str
        A local path or a URL.
    name : str, optional
        The image's output name (default: the file name without extension).
    apply_scale : bool
        ``input.apply_scale``: read ``value * scale + offset`` (see `GeoHeader.dtype`).
    level : int
        ``input.level``: 0 the full resolution, N the file's N-th overview (internal, or an
        ``.ovr`` file), whose size, blocks and transform (pixel size scaled) the header holds.

    Returns
    -------
    GeoHeader

    Raises
    ------
    ImageReadError
        GDAL cannot open the file, it holds no raster band (only subdatasets), its data type
        is not one the engine takes, a VRT band stack names a missing file or files of
        different sizes, or it has no overview ``level``.  The message is one line naming the
        file.
    """
    if name is None:
        name = posixpath.splitext(posixpath.basename(path.rstrip("/")))[0]
    size, mtime = _stat(path, storage_options)
    with open_dataset(path, storage_options) as src:
        _check_bands(path, src)
        if src.driver == "VRT":
            _check_vrt_sources(path, src, storage_options)
        header = _header_of(src, path, name, storage_options)
        levels = _levels(src)
    if level:
        header.update(_overview_grid(path, storage_options, level, levels))
    return GeoHeader(**{**header, "size_bytes": size, "mtime_ns": mtime,
                        "apply_scale": apply_scale, "level": level, "levels": len(levels)})


def _levels(src: Any) -> list[tuple[int, int]]:
    """(width, height) of the full resolution and of each overview of band 1."""
    sizes = [(src.width, src.height)]
    for factor in src.overviews(1):
        sizes.append((math.ceil(src.width / factor), math.ceil(src.height / factor)))
    return sizes


def _overview_grid(path: str, storage_options: dict | None, level: int,
                   levels: list[tuple[int, int]]) -> dict:
    """The header fields that differ at overview ``level``: size, blocks, transform."""
    listed = ", ".join(f"{n}: {w}x{h}" for n, (w, h) in enumerate(levels))
    missing = ImageReadError(f"{path}: input.level {level} does not exist (the file has "
                             f"{len(levels)} level(s), numbered from 0: {listed}); choose "
                             "one of them, or build overviews (gdaladdo)")
    if not 0 < level < len(levels):
        raise missing
    try:
        with open_dataset(path, storage_options, level) as src:
            block = src.block_shapes[0]
            return {"height": src.height, "width": src.width,
                    "block_shape": (int(block[0]), int(block[1])),
                    "transform": tuple(float(v) for v in tuple(src.transform)[:6])}
    except ImageReadError as exc:  # listed by the base dataset, but GDAL cannot open it
        raise missing from exc


def _stat(path: str, storage_options: dict | None) -> tuple[int, int]:
    try:
        return storage.stat(path, storage_options)
    except FileNotFoundError as exc:
        raise ImageReadError(f"{path}: file not found; check the path") from exc
    except OSError as exc:
        raise ImageReadError(f"{path}: cannot open file ({storage.describe(exc)}); fix or "
                             "remove it") from exc


def _check_bands(path: str, src: Any) -> None:
    if src.count == 0:
        subsets = list(getattr(src, "subdatasets", []) or [])
        hint = f"; name one of them, e.g. {subsets[0]!r}" if subsets else ""
        raise ImageReadError(f"{path}: holds no raster band ({len(subsets)} subdatasets, "
                             f"driver {src.driver}){hint}")
    dtypes = set(src.dtypes)
    if len(dtypes) > 1:
        names = ", ".join(sorted(dtypes))
        raise ImageReadError(f"{path}: bands have different data types ({names}); "
                             "write them to one type (gdal_translate -ot) first")
    dtype = src.dtypes[0]
    if dtype not in SUPPORTED_DTYPES:
        raise ImageReadError(f"{path}: data type {dtype} (driver {src.driver}) is not supported; "
                             f"supported: {', '.join(sorted(SUPPORTED_DTYPES))}")


def _check_vrt_sources(path: str, src: Any, storage_options: dict | None) -> None:
    """A VRT opens even when a source is missing or on another grid; find both here, from the
    sources' headers, instead of as a read error (or silent fill) in the middle of the run."""
    rasterio = require_rasterio()
    sources = [f for f in src.files if os.path.normcase(f) != os.path.normcase(path)]
    grids: list[tuple[str, int, int]] = []
    for source in sources:
        if not storage.is_url(source) and not os.path.exists(source):
            raise ImageReadError(f"{path}: names {source}, which does not exist; fix the VRT "
                                 "or restore the file")
        try:
            with rasterio.open(source) if not storage.is_url(source) else \
                    open_dataset(source, storage_options) as part:
                grids.append((source, part.width, part.height))
        except ImageReadError:
            raise
        except Exception as exc:
            raise ImageReadError(f"{path}: cannot open its source {source} "
                                 f"({_gdal_text(exc)})") from exc
    for source, width, height in grids[1:]:
        first, w0, h0 = grids[0]
        if (width, height) != (w0, h0):
            raise ImageReadError(
                f"{path}: its sources differ in size: {os.path.basename(first)} is "
                f"{w0}x{h0}, {os.path.basename(source)} is {width}x{height}; a band stack "
                "needs one grid (resample them to one grid, e.g. gdalwarp -tr -te)")


def _header_of(src: Any, path: str, name: str, storage_options: dict | None) -> dict:
    blocks = set(src.block_shapes)
    # Bands of one file may differ in block shape (rare); the first band's grid is used.
    block = src.block_shapes[0] if blocks else (1, src.width)
    crs = src.crs
    names = tuple(_band_name(src, b) for b in range(1, src.count + 1))
    return {
        "path": path, "name": name, "driver": src.driver, "height": src.height,
        "width": src.width, "count": src.count, "stored_dtype": src.dtypes[0],
        "band_names": names,
        "nodata": tuple(None if v is None else float(v) for v in src.nodatavals),
        "mask_flags": tuple(tuple(f.name for f in flags) for flags in src.mask_flag_enums),
        "block_shape": (int(block[0]), int(block[1])),
        "crs_wkt": crs.to_wkt() if crs else None,
        "transform": tuple(float(v) for v in tuple(src.transform)[:6]),
        "scales": tuple(float(s) for s in src.scales),
        "offsets": tuple(float(o) for o in src.offsets),
        "units": tuple(u or "" for u in src.units),
        "colorinterp": tuple(c.name for c in src.colorinterp),
        "files": tuple(src.files),
        "storage_options": storage_options,
    }


def _band_name(src: Any, band: int) -> str:
    description = src.descriptions[band - 1]
    if description:
        return description
    interp = src.colorinterp[band - 1].name
    return interp if interp not in ("undefined", "gray", "grey") else f"band_{band}"


# ---------------------------------------------------------------------------------------------
# Windows


def chunk_grid(header: GeoHeader, chunk_pixels: int,
               n_bands: int | None = None) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Row and column chunk sizes: whole blocks of the file merged up to a budget.

    The budget is ``chunk_pixels`` pixels, lowered so a chunk holds at most
    ``4 * chunk_pixels`` bytes (as `pipeline.sources.rasters.chunk_grid`).  A block larger
    than the budget stays one chunk (cutting it would decode it once per piece).  Blocks
    merge along rows first, then whole block rows are stacked.
    """
    n_bands = header.count if n_bands is None else n_bands
    item = np.dtype(header.dtype).itemsize * max(1, n_bands)
    budget = max(1, min(chunk_pixels, 4 * chunk_pixels // item))
    block_h, block_w = header.block_shape
    block_h, block_w = min(block_h, header.height), min(block_w, header.width)
    per_chunk = max(1, budget // (block_h * block_w))
    across = math.ceil(header.width / block_w)
    if per_chunk >= across:
        chunk_w, chunk_h = header.width, block_h * max(1, per_chunk // across)
    else:
        chunk_w, chunk_h = block_w * per_chunk, block_h
    return _split(header.height, chunk_h), _split(header.width, chunk_w)


@dataclass(frozen=True)
class _Source:
    """What a read task needs: small, picklable, no open handles.  ``bands`` are 1-based; a
    mask band, when read, comes last."""

    path: str
    bands: tuple[int, ...]
    dtype: str
    block_shape: tuple[int, int]
    mtime_ns: int = 0
    level: int = 0
    # apply_scale: per data band, scale, offset and the stored nodata (NaN: none), so the task
    # masks on stored values before it scales them
    scales: tuple[float, ...] = ()
    offsets: tuple[float, ...] = ()
    nodata: tuple[float, ...] = ()
    storage_options: dict | None = field(default=None, compare=False)


WindowSource = _Source  # the name pipeline.raster_job knows (as rasters.WindowSource)
DATASET_MASK = 0  # as a "band" number: the dataset's own mask band (GDAL's GetMaskBand)


def mask_band_of(header: GeoHeader, mask: str) -> int | None:
    """The 1-based band whose zeros mask pixels, from ``input.mask``; `DATASET_MASK` for the
    dataset's internal or ``.msk`` mask band (``auto``, when the file has one and no alpha)."""
    if mask == "none":
        return None
    if mask in ("auto", "alpha"):
        if mask == "alpha" and header.alpha_band is None:
            raise ConfigError(f"input.mask: 'alpha', but {header.path} has no alpha band "
                              f"(bands: {', '.join(header.band_names)}); use 'auto', "
                              "'band:N' or 'none'")
        if header.alpha_band is not None or mask == "alpha":
            return header.alpha_band
        if any("per_dataset" in flags for flags in header.mask_flags):
            return DATASET_MASK
        return None
    found = re.fullmatch(r"band:(\d+)", mask)
    if not found:
        raise ConfigError(f"input.mask: must be 'auto', 'alpha', 'band:N' or 'none', got "
                          f"{mask!r}")
    band = int(found.group(1))
    if not 1 <= band <= header.count:
        raise ConfigError(f"input.mask: band {band} does not exist in {header.path} "
                          f"({header.count} bands, numbered from 1)")
    return band


def _selected(header: GeoHeader, bands: tuple[int, ...] | None, mask: str) -> tuple[int, ...]:
    mask_band = mask_band_of(header, mask)
    selected = tuple(bands) if bands else tuple(b for b in header.data_bands
                                                if b != mask_band)
    for band in selected:
        if not 1 <= band <= header.count:
            raise ConfigError(f"input.bands: band {band} does not exist in {header.path} "
                              f"({header.count} bands, numbered from 1)")
    return selected


def window_source(header: GeoHeader, bands: tuple[int, ...], mask_band: int | None,
                  mask: str = "auto",
                  nodata: float | tuple[float, ...] | None = None) -> _Source:
    """What the read tasks of ``bands`` (1-based) and the mask band (or None) carry; with
    ``apply_scale``, also what masking needs (``input.mask``, ``input.nodata``), since the
    task masks before it scales."""
    read = bands + ((mask_band,) if mask_band is not None else ())
    scaling: dict = {}
    if header.apply_scale:
        stored = rasters.nodata_values(header, bands, mask, nodata)
        scaling = {"scales": tuple(header.scales[b - 1] for b in bands),
                   "offsets": tuple(header.offsets[b - 1] for b in bands),
                   "nodata": tuple(stored.tolist())}
    return _Source(header.path, read, header.stored_dtype, header.block_shape, header.mtime_ns,
                   header.level, storage_options=header.storage_options, **scaling)


def read_window(source: _Source, row: int, col: int, height: int, width: int) -> np.ndarray:
    """One window's pixels, shape (height, width, len(bands)), the file's dtype.

    Raises
    ------
    ImageReadError
        A block in the window cannot be decoded: names the file and the block.
    """
    from rasterio.windows import Window

    bands = [b for b in source.bands if b != DATASET_MASK]
    rasterio = require_rasterio()
    src = _dataset(source)
    window = Window(col, row, width, height)
    try:
        # GDAL's block cache is per process: bound it during reads too (the default, 5 % of
        # RAM, would let datasets kept open hold decoded blocks far beyond a few windows)
        with rasterio.Env(GDAL_CACHEMAX=_CACHE_MB):
            pixels = src.read(bands, window=window)
            if len(bands) < len(source.bands):  # then the dataset mask: 0 masked, 255 valid
                valid = src.dataset_mask(window=window)
                pixels = np.concatenate([pixels, valid[None].astype(pixels.dtype)])
    except Exception as exc:
        reason = _block_reason(src, source, row, col, height, width, exc)
        _forget(source)  # a dataset that failed a read is not reused
        raise ImageReadError(reason) from exc
    pixels = np.moveaxis(pixels, 0, -1)
    return _scaled(pixels, source) if source.scales else pixels


def _scaled(raw: np.ndarray, source: _Source) -> np.ndarray:
    """``value * scale + offset`` per band as float32; pixels masked by their stored values
    (nodata) become NaN; a mask band read last keeps its 0/255."""
    n_bands = len(source.scales)
    values = raw.astype(np.float32)
    masked = window_mask(raw[..., :n_bands], np.array(source.nodata), False)
    values[..., :n_bands] *= np.array(source.scales, dtype=np.float32)
    values[..., :n_bands] += np.array(source.offsets, dtype=np.float32)
    values[..., :n_bands][masked] = np.nan
    return values


def _block_reason(src: Any, source: _Source, row: int, col: int, height: int, width: int,
                  exc: Exception) -> str:
    """Find the first block of the window that fails alone, to name it."""
    from rasterio.windows import Window

    block_h, block_w = source.block_shape
    for top in range(row - row % block_h, row + height, block_h):
        for left in range(col - col % block_w, col + width, block_w):
            block = Window(left, top, min(block_w, src.width - left),
                           min(block_h, src.height - top))
            try:
                src.read([b for b in source.bands if b != DATASET_MASK], window=block)
            except Exception as block_exc:
                return (f"{source.path}: damaged data in block (row {top // block_h}, column "
                        f"{left // block_w}) at pixels y {top}-{top + block.height - 1}, x "
                        f"{left}-{left + block.width - 1} ({_gdal_text(block_exc)}); fix or "
                        "remove it")
    return (f"{source.path}: cannot read the window at y {row}, x {col} ({_gdal_text(exc)}); "
            "fix or remove it")


def raw_array(header: GeoHeader, chunk_pixels: int, bands: tuple[int, ...] | None = None,
              mask: str = "auto", nodata: float | tuple[float, ...] | None = None) -> da.Array:
    """The selected bands, then the mask band if ``mask`` picks one, in one read per window:
    dask array of shape (height, width, n_bands [+ 1]), the file's dtype."""
    selected = _selected(header, bands, mask)
    source = window_source(header, selected, mask_band_of(header, mask), mask, nodata)
    chunks = chunk_grid(header, chunk_pixels, len(source.bands))
    return _graph_array(read_window, (source,), chunks + ((len(source.bands),),),
                        np.dtype(header.dtype), "geo-read")


def pixel_array(header: GeoHeader, chunk_pixels: int, bands: tuple[int, ...] | None = None,
                mask: str = "auto", nodata: float | tuple[float, ...] | None = None) -> da.Array:
    """The raster's pixels as a dask array, one read task per window of whole blocks.

    Parameters
    ----------
    header : GeoHeader
        With ``apply_scale`` (``read_header(..., apply_scale=True)``) the pixels are
        ``value * scale + offset`` per band (the file's scale and offset, e.g. Landsat
        Collection 2 reflectance), float32, masked pixels NaN.
    chunk_pixels : int
        Pixel budget of one chunk (``dask.chunk_pixels``; see `chunk_grid`).
    bands : tuple of int, optional
        1-based bands to read, in this order (``input.bands``); default every band but the
        alpha or mask band.
    mask : str
        ``input.mask``; a mask band it picks is read by the same tasks and dropped here.
    nodata : float or tuple, optional
        ``input.nodata`` (with ``apply_scale``, the stored values to mask before scaling).

    Returns
    -------
    dask.array.Array of shape (height, width, n_bands), ``header.dtype``
    """
    raw = raw_array(header, chunk_pixels, bands, mask, nodata)
    return raw[..., :-1] if mask_band_of(header, mask) is not None else raw


def mask_array(header: GeoHeader, chunk_pixels: int, bands: tuple[int, ...] | None = None,
               mask: str = "auto", nodata: float | tuple[float, ...] | None = None) -> da.Array:
    """True where a pixel is masked, chunked as `pixel_array` and sharing its read tasks.

    A pixel is masked when any selected band holds its nodata value (the dataset's, per band;
    ``nodata`` overrides, a scalar for every band or one value per band of the file), a float
    band holds NaN or inf, the mask band (``mask``: the alpha band with ``auto`` or
    ``alpha``, band N with ``band:N``) is 0, or (``auto``) the dataset's own mask band (an
    internal mask or a ``.msk`` file) marks it.  ``mask="none"`` ignores the file's nodata,
    alpha and mask band; NaN and inf are always masked, and an explicit ``nodata`` always
    applies.

    Returns
    -------
    dask.array.Array of shape (height, width), bool
    """
    raw = raw_array(header, chunk_pixels, bands, mask, nodata)
    mask_band = mask_band_of(header, mask)
    values = nodata_values(header, _selected(header, bands, mask), mask, nodata)
    return raw.map_blocks(functools.partial(window_mask, nodata=values,
                                            has_mask_band=mask_band is not None),
                          drop_axis=2, dtype=bool)


def nodata_values(header: GeoHeader, bands: tuple[int, ...], mask: str,
                  nodata: float | tuple[float, ...] | None) -> np.ndarray:
    """The nodata value of each selected band in the pixels' units, float64; NaN: none (a NaN
    nodata is masked anyway, as every NaN).  With ``apply_scale`` all NaN: the read task has
    already turned masked pixels into NaN."""
    if header.apply_scale:
        return np.full(len(bands), np.nan)
    return rasters.nodata_values(header, bands, mask, nodata)  # the stored values, as TIFF's
