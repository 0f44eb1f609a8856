"""Scientific rasters through tifffile and zarr: N bands at native depth, read in windows.

One reader per format: TIFF (plain, BigTIFF, tiled or striped, any samples per pixel or a
channel axis, OME-TIFF, ImageJ hyperstacks, pyramidal and whole-slide files such as Aperio
``.svs``) goes through `tifffile` (compressed tiles through `imagecodecs`), zarr v2/v3 arrays
and OME-Zarr (NGFF) multiscale images through `zarr` 3; both are seen as zarr arrays
(tifffile's ``aszarr`` store), so a window reads only the tiles, strips or chunks it covers.

`read_headers` opens a file once, on the client, and keeps only metadata (`RasterHeader`): one
header per image plane.  `pixel_array` turns a header into a dask array of shape
(height, width, bands) in the file's own dtype, one task per window; windows are whole tiles,
strips or zarr chunks merged up to a pixel budget (`chunk_grid`).  Each task carries the path
and its window (a small `WindowSource`), never pixels.  `mask_array` gives the matching
boolean mask (True: masked) from the same read tasks.  `sample_pixels` draws a sample whose
positions depend only on (seed, image key, pixel position), never on the chunking.

Planes.  A stack with axes other than Y, X and the band axis (Z, T, an image sequence I...)
gives one image per plane, named ``<name>/<axis><index>_...`` with 1-based indices zero-padded
to the width of the axis length, over the axes longer than 1 in file order: a 3 x 40 TZ stack
``cells.tif`` gives ``cells/t1_z01`` ... ``cells/t3_z40``.  ``planes="first"`` keeps the first.
The band axis is ``S`` (samples per pixel) when the file has one, else ``C``.

Decoded whole.  A 16-bit PNG (grey, grey + alpha, RGB, RGBA) is read by `imagecodecs`
(``png_decode``, which keeps 16 bits; Pillow keeps 8 of an RGB one), and an 8-bit photo that
joins a collection of rasters is decoded by `pipeline.sources.photos` (Pillow, 8-bit sRGB,
3 bands).  Neither can be read in windows: such an image is one window (``block_shape`` is the
whole image), ``input.max_pixels`` bounds it from the header, and each read decodes it again
(nothing decoded is cached between the sample and segment passes).

Orientation and colour.  A TIFF Orientation tag is applied (windows are mapped onto the stored
pixels), and an 8-bit RGB TIFF with an embedded ICC profile is converted to sRGB window by
window, as the photo path does.  Other dtypes keep their values untouched.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import re
import threading
import zlib
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterator

import numpy as np

from pipeline import storage
from pipeline.errors import ConfigError, ImageReadError, StorageError

if TYPE_CHECKING:
    import dask.array as da

log = logging.getLogger(__name__)

EXTENSIONS = frozenset({".tif", ".tiff", ".svs", ".btf", ".tf8", ".zarr"})
SUPPORTED_DTYPES = frozenset({"uint8", "uint16", "int16", "uint32", "int32", "float32",
                              "float64"})
MAX_BANDS = 64
# Formats decoded whole, as one window (see the module docstring): "png" (16-bit, imagecodecs)
# and "photo" (8-bit RGB through the photo path).
WHOLE_FORMATS = frozenset({"png", "photo"})
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_BANDS = {0: ("grey",), 4: ("grey", "alpha"), 2: ("red", "green", "blue"),
              6: ("red", "green", "blue", "alpha")}  # IHDR colour type -> band names
_GDAL_METADATA, _GDAL_NODATA, _ORIENTATION, _ICC = 42112, 42113, 274, 34675
_ZARR_PLANE_NAMES = {"y": "Y", "x": "X", "c": "C", "channel": "C", "channels": "C",
                     "band": "C", "bands": "C", "wavelength": "C", "z": "Z", "t": "T",
                     "time": "T", "row": "Y", "col": "X", "lat": "Y", "lon": "X",
                     "latitude": "Y", "longitude": "X"}
_ALPHA_NAMES = {"alpha", "mask"}
# Codec names (zarr) -> the package that decodes them.
_NUMCODECS = {"blosc", "zstd", "lz4", "gzip", "zlib", "bz2", "lzma", "crc32c", "shuffle",
              "delta", "fixedscaleoffset", "quantize", "packbits", "bytes", "transpose",
              "sharding_indexed", "crc32"}


@dataclass(frozen=True)
class RasterHeader:
    """One image plane of a TIFF or zarr store, as known from its metadata (no pixels read).

    ``height`` and ``width`` are after the TIFF orientation.  Per-band tuples have one entry
    per band of the file (the band axis), in file order; ``alpha_band`` is 1-based.
    ``block_shape`` is the file's tile, strip or zarr chunk in (rows, columns).
    """

    path: str
    name: str
    format: str  # "tiff" or "zarr"
    height: int
    width: int
    count: int
    dtype: str
    band_names: tuple[str, ...]
    nodata: tuple[float | None, ...]
    alpha_band: int | None
    block_shape: tuple[int, int]
    axes: str  # the stored array's axes, e.g. "YXS", "CYX", "TZCYX"
    plane: tuple[int, ...] = ()  # index on each axis that is not Y, X or the band axis
    series: int = 0
    level: int = 0
    array_path: str = ""  # zarr: the array inside the store
    orientation: int = 1
    icc_profile: bytes | None = field(default=None, repr=False)
    note: str | None = None  # what the report should say (first plane, level, series)
    size_bytes: int = 0
    mtime_ns: int = 0
    storage_options: dict | None = field(default=None, compare=False, repr=False)
    # format "photo": the photo path's header, which `pipeline.sources.photos.decode` reads
    photo: Any = field(default=None, compare=False, repr=False)

    @property
    def shape(self) -> tuple[int, int, int]:
        """(height, width, bands of the file)."""
        return self.height, self.width, self.count

    @property
    def n_pixels(self) -> int:
        return self.height * self.width

    @property
    def data_bands(self) -> tuple[int, ...]:
        """The 1-based bands read by default: every band but alpha."""
        return tuple(b for b in range(1, self.count + 1) if b != self.alpha_band)


# ---------------------------------------------------------------------------------------------
# Headers


def is_raster(path: str) -> bool:
    """Whether ``path`` has an extension this module reads (``.zarr``: a store folder)."""
    return os.path.splitext(path.rstrip("/"))[1].lower() in EXTENSIONS


def read_headers(path: str, name: str | None = None, *, axes: str | None = None,
                 planes: str = "all", level: int = 0,
                 storage_options: dict | None = None) -> list[RasterHeader]:
    """Read one TIFF file's or zarr store's metadata: a header per image plane.

    Parameters
    ----------
    path : str
        A file, a ``.zarr`` folder, or a URL of either.
    name : str, optional
        The output name (default: the file name without its extension); planes add a suffix.
    axes : str, optional
        ``input.axes``: the stored array's axes (``"CYX"``), for files whose metadata does not
        say or says wrong.  Letters: Y, X, C or S (bands), anything else a plane axis.
    planes : {"all", "first"}
        ``input.planes``.
    level : int
        ``input.level``: the pyramid level of a multiscale image (0: full resolution).

    Returns
    -------
    list of RasterHeader
        In plane order; a hyperstack's pages are not read, only its first page and metadata.

    Raises
    ------
    ImageReadError
        The file cannot be opened, is not a TIFF or zarr store, has a codec nothing here
        decodes, no such level, an unsupported dtype or too many bands.
    ConfigError
        ``axes`` does not fit the stored array.
    """
    name = name or _stem(path)
    size, mtime_ns = _stat(path, storage_options)
    fmt = "zarr" if path.rstrip("/").lower().endswith(".zarr") else "tiff"
    try:
        if fmt == "zarr":
            meta = _zarr_meta(path, level, storage_options)
        else:
            with _open_tiff(path, storage_options, size) as tif:
                meta = _tiff_meta(tif, path, level)
    except (ImageReadError, ConfigError, StorageError):
        raise
    except Exception as exc:
        raise ImageReadError(f"{path}: cannot read the {fmt.upper()} header "
                             f"({_reason(exc)}); fix or remove it") from exc
    meta = _with_axes(meta, axes, path)
    _check_supported(meta, path)
    return _planes(meta, path, name, fmt, planes, size, mtime_ns, storage_options)


def _stem(path: str) -> str:
    base = os.path.basename(path.rstrip("/"))
    for ext in (".ome.tiff", ".ome.tif", ".ome.zarr"):
        if base.lower().endswith(ext):
            return base[:-len(ext)]
    return os.path.splitext(base)[0]


def _stat(path: str, storage_options: dict | None) -> tuple[int, int]:
    if storage.is_url(path):
        if path.rstrip("/").lower().endswith(".zarr"):
            return 0, 0
        return storage.stat(path, storage_options)
    try:
        stat = os.stat(path)
    except OSError as exc:
        raise ImageReadError(f"{path}: cannot open file ({exc.strerror or exc}); fix or "
                             "remove it") from exc
    if not os.path.isdir(path) and stat.st_size == 0:
        raise ImageReadError(f"{path}: file is empty (0 bytes); fix or remove it")
    return stat.st_size, stat.st_mtime_ns


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


@contextlib.contextmanager
def _open_tiff(path: str, storage_options: dict | None, size: int = 0) -> Iterator[Any]:
    import tifffile

    handle = storage.open_read(path, storage_options, size or None) \
        if storage.is_url(path) else None
    try:
        with tifffile.TiffFile(handle if handle is not None else path) as tif:
            yield tif
    except tifffile.TiffFileError as exc:
        raise ImageReadError(f"{path}: not a TIFF file ({_reason(exc)}); fix or remove it") \
            from exc
    finally:
        if handle is not None:
            handle.close()


def _tiff_meta(tif: Any, path: str, level: int) -> dict:
    """What a header needs from an open TiffFile: series 0 (the baseline of a slide)."""
    series = tif.series[0]
    if level >= len(series.levels):
        raise ImageReadError(f"{path}: input.level {level} does not exist (the file has "
                             f"{len(series.levels)} pyramid level(s), numbered from 0)")
    chosen = series.levels[level]
    page = chosen.keyframe
    _check_codec(page, path)
    notes = []
    if len(tif.series) > 1:
        others = ", ".join(s.name or s.kind for s in tif.series[1:4])
        notes.append(f"series 0 of {len(tif.series)} used (others: {others})")
    if level:
        notes.append(f"pyramid level {level} of {len(series.levels)}")
    tags = page.tags
    extras = tuple(int(e) for e in (page.extrasamples or ()))
    return {"axes": chosen.axes, "shape": tuple(chosen.shape), "dtype": str(chosen.dtype),
            "block": _tiff_block(page), "nodata": _gdal_nodata(tags),
            "names": _tiff_band_names(tif, page), "extrasamples": extras,
            "orientation": int(tags[_ORIENTATION].value) if _ORIENTATION in tags else 1,
            "icc": tags[_ICC].value if _ICC in tags else None,
            "photometric": int(page.photometric), "level": level, "notes": notes}


def _check_codec(page: Any, path: str) -> None:
    from tifffile import COMPRESSION, TIFF

    code = int(page.compression)
    try:
        TIFF.DECOMPRESSORS[code]
    except Exception as exc:
        try:
            label = f"{COMPRESSION(code).name} (TIFF compression {code})"
        except ValueError:
            raise ImageReadError(f"{path}: unknown TIFF compression {code}: neither tifffile "
                                 "nor imagecodecs decodes it; convert the file (e.g. "
                                 "gdal_translate -co COMPRESS=DEFLATE)") from exc
        raise ImageReadError(f"{path}: compression {label} cannot be decoded here; it is "
                             "decoded by the imagecodecs package (pip install -U "
                             f"imagecodecs) ({_reason(exc)})") from exc


def _tiff_block(page: Any) -> tuple[int, int]:
    if page.is_tiled:
        return int(page.tilelength), int(page.tilewidth)
    rows = int(page.rowsperstrip or page.imagelength) if page.rowsperstrip else \
        int(page.imagelength)
    return min(rows, int(page.imagelength)), int(page.imagewidth)


def _gdal_nodata(tags: Any) -> tuple[float, ...] | None:
    """GDAL_NODATA: one value for every band (GDAL), or one per band separated by spaces."""
    if _GDAL_NODATA not in tags:
        return None
    text = str(tags[_GDAL_NODATA].value).strip().strip("\x00")
    try:
        return tuple(float(v) for v in re.split(r"[\s,]+", text) if v)
    except ValueError:
        log.warning("ignoring a GDAL_NODATA tag that is not a number: %r", text)
        return None


def _tiff_band_names(tif: Any, page: Any) -> list[str] | None:
    """Channel names from OME-XML, else band descriptions from GDAL_METADATA."""
    import xml.etree.ElementTree as ElementTree  # here: a GeoTIFF run (rasterio) never needs it

    if tif.is_ome and tif.ome_metadata:
        try:
            root = ElementTree.fromstring(tif.ome_metadata)
        except ElementTree.ParseError:
            return None
        names = [el.get("Name") or "" for el in root.iter()
                 if el.tag.endswith("}Channel") or el.tag == "Channel"]
        image = [el for el in root.iter() if el.tag.endswith("}Pixels")]
        if image:  # the channels of the first image only
            names = [el.get("Name") or "" for el in image[0]
                     if el.tag.endswith("}Channel")]
        return names if any(names) else None
    if _GDAL_METADATA in page.tags:
        try:
            root = ElementTree.fromstring(str(page.tags[_GDAL_METADATA].value))
        except ElementTree.ParseError:
            return None
        found = {int(el.get("sample", -1)): (el.text or "").strip() for el in root
                 if el.get("role") == "description" and el.get("sample") is not None}
        if found:
            return [found.get(i, "") for i in range(max(found) + 1)]
    return None


def zarr_store(path: str, storage_options: dict | None, read_only: bool = True) -> Any:
    import zarr.storage

    if storage.is_url(path):
        problem = storage.backend_problem(path)
        if problem:
            raise ConfigError(problem)
        return zarr.storage.FsspecStore.from_url(path, storage_options=storage_options,
                                                 read_only=read_only)
    return zarr.storage.LocalStore(path, read_only=read_only)


def _zarr_open(path: str, storage_options: dict | None) -> Any:
    import zarr

    try:
        return zarr.open(store=zarr_store(path, storage_options), mode="r")
    except (ConfigError, StorageError):
        raise
    except FileNotFoundError as exc:
        raise ImageReadError(f"{path}: not a zarr store (no zarr.json or .zarray/.zgroup "
                             "found); fix or remove it") from exc
    except Exception as exc:
        raise ImageReadError(_zarr_reason(path, exc)) from exc


def _zarr_reason(path: str, exc: BaseException) -> str:
    text = _reason(exc)
    found = re.search(r"codec[^'\"]*['\"]+([\w.-]+)", text, re.IGNORECASE)
    if found:
        codec = found.group(1)
        package = "numcodecs (pip install -U numcodecs)" if codec.lower() in _NUMCODECS \
            else ("imagecodecs (pip install imagecodecs; it registers its codecs with "
                  "numcodecs)" if codec.lower().startswith("imagecodecs") else
                  "a package that registers it with numcodecs or zarr (imagecodecs has many)")
        return f"{path}: zarr codec {codec!r} is not available; it is decoded by {package}"
    return f"{path}: cannot open the zarr store ({text}); fix or remove it"


def _zarr_meta(path: str, level: int, storage_options: dict | None) -> dict:
    import zarr

    node = _zarr_open(path, storage_options)
    array_path, ome_axes, names, notes = "", None, None, []
    if isinstance(node, zarr.Group):
        attrs = dict(node.attrs)
        ome = attrs.get("ome", attrs)  # NGFF 0.5 nests under "ome"
        multiscales = ome.get("multiscales")
        if multiscales:
            datasets = multiscales[0]["datasets"]
            if level >= len(datasets):
                raise ImageReadError(f"{path}: input.level {level} does not exist (the "
                                     f"image has {len(datasets)} level(s), numbered from 0)")
            array_path = str(datasets[level]["path"])
            ome_axes = _ngff_axes(multiscales[0].get("axes"))
            names = [c.get("label", "") for c in ome.get("omero", {}).get("channels", [])]
            if level:
                notes.append(f"pyramid level {level} of {len(datasets)}")
        else:
            arrays = sorted(node.array_keys())
            if len(arrays) != 1:
                listed = ", ".join(arrays[:5]) or "none"
                example = f"{path.rstrip('/')}/{arrays[0] if arrays else 'name'}"
                raise ImageReadError(f"{path}: a zarr group with {len(arrays)} arrays "
                                     f"({listed}) and no multiscales metadata; name one "
                                     f"array, e.g. {example}")
            array_path = arrays[0]
        try:
            array = node[array_path]
        except Exception as exc:
            raise ImageReadError(_zarr_reason(path, exc)) from exc
    else:
        array = node
    attrs = dict(array.attrs)
    axes = ome_axes or _dimension_axes(array, attrs)
    nodata = attrs.get("nodata", attrs.get("_FillValue"))
    if nodata is not None and not isinstance(nodata, (list, tuple)):
        nodata = [nodata]
    block = dict(zip(axes or "", array.chunks)) if axes else {}
    return {"axes": axes, "shape": tuple(array.shape), "dtype": str(array.dtype),
            "chunks": tuple(array.chunks), "block": (block.get("Y"), block.get("X")),
            "nodata": tuple(float(v) for v in nodata) if nodata is not None else None,
            "names": names or attrs.get("band_names"), "extrasamples": (),
            "orientation": 1, "icc": None, "photometric": 1, "level": level,
            "array_path": array_path, "notes": notes}


def _ngff_axes(axes: Any) -> str | None:
    if not axes:
        return None
    letters = [(a.get("name") if isinstance(a, dict) else str(a)).lower() for a in axes]
    return "".join(_ZARR_PLANE_NAMES.get(n, n[:1].upper()) for n in letters)


def _dimension_axes(array: Any, attrs: dict) -> str | None:
    names = attrs.get("_ARRAY_DIMENSIONS") or getattr(array.metadata, "dimension_names", None)
    if names and all(names):
        return "".join(_ZARR_PLANE_NAMES.get(str(n).lower(), str(n)[:1].upper())
                       for n in names)
    return None


def _default_axes(shape: tuple[int, ...]) -> str:
    """Axes of an array whose metadata names none: YX, then a band axis first or last."""
    if len(shape) == 2:
        return "YX"
    if len(shape) == 3:
        first_is_bands = shape[0] <= MAX_BANDS and (shape[0] < shape[2] or
                                                    shape[2] > MAX_BANDS)
        return "CYX" if first_is_bands else "YXC"
    return "Q" * (len(shape) - 3) + "CYX"


def _with_axes(meta: dict, axes: str | None, path: str) -> dict:
    shape = meta["shape"]
    if axes is not None:
        axes = axes.upper()
        if len(axes) != len(shape) or "Y" not in axes or "X" not in axes or \
                len(set(axes)) != len(axes):
            raise ConfigError(f"input.axes: {axes!r} does not fit {path}, whose array has "
                              f"shape {shape}; give one letter per dimension, with Y and X "
                              "once each (e.g. 'CYX')")
    else:
        axes = meta["axes"] or _default_axes(shape)
        if "Y" not in axes or "X" not in axes:
            raise ImageReadError(f"{path}: cannot tell which axes are rows and columns "
                                 f"(axes {axes!r}, shape {shape}); set input.axes, e.g. "
                                 "'CYX'")
    meta = dict(meta, axes=axes)
    if meta.get("chunks"):  # zarr: the block follows the axes finally used
        block = dict(zip(axes, meta["chunks"]))
        meta["block"] = (block["Y"], block["X"])
    return meta


def band_axis(axes: str) -> str | None:
    """The axis holding the bands: S (samples per pixel) when present, else C."""
    return "S" if "S" in axes else ("C" if "C" in axes else None)


def _check_supported(meta: dict, path: str) -> None:
    if meta["dtype"] not in SUPPORTED_DTYPES:
        raise ImageReadError(f"{path}: pixel type {meta['dtype']} is not supported (uint8, "
                             "uint16, int16, uint32, int32, float32, float64); convert the "
                             "file")
    axis = band_axis(meta["axes"])
    count = meta["shape"][meta["axes"].index(axis)] if axis else 1
    if count > MAX_BANDS:
        raise ImageReadError(f"{path}: {count} bands along axis {axis}, more than "
                             f"{MAX_BANDS}; if that axis is not the bands, set input.axes")


def _planes(meta: dict, path: str, name: str, fmt: str, planes: str, size: int,
            mtime_ns: int, storage_options: dict | None) -> list[RasterHeader]:
    axes, shape = meta["axes"], meta["shape"]
    axis = band_axis(axes)
    count = shape[axes.index(axis)] if axis else 1
    plane_axes = [(a, n) for a, n in zip(axes, shape) if a not in ("Y", "X", axis)]
    height, width = shape[axes.index("Y")], shape[axes.index("X")]
    block = tuple(min(b or d, d) for b, d in zip(meta["block"], (height, width)))
    orientation = meta["orientation"] if meta["orientation"] in range(1, 9) else 1
    if orientation >= 5:
        height, width, block = width, height, block[::-1]
    base = dict(path=path, format=fmt, height=height, width=width, count=count,
                dtype=meta["dtype"], band_names=_names(meta, count, axis),
                nodata=_nodata(meta["nodata"], count, path), alpha_band=_alpha(meta, count),
                block_shape=block, axes=axes, level=meta["level"],
                array_path=meta.get("array_path", ""), orientation=orientation,
                icc_profile=meta["icc"] if meta["dtype"] == "uint8" and count >= 3 else None,
                size_bytes=size, mtime_ns=mtime_ns,
                storage_options=storage_options if storage.is_url(path) else None)
    notes = list(meta["notes"])
    indices = list(np.ndindex(*[n for _, n in plane_axes])) if plane_axes else [()]
    if planes == "first" and len(indices) > 1:
        notes.append(f"first plane of {len(indices)} used (input.planes: first)")
        indices = indices[:1]
    note = "; ".join(notes) or None
    if len(indices) == 1:
        return [RasterHeader(name=name, plane=indices[0], note=note, **base)]
    long_axes = [(i, a, n) for i, (a, n) in enumerate(plane_axes) if n > 1]
    return [RasterHeader(name=f"{name}/{plane_label(index, long_axes)}", plane=index,
                         note=note, **base) for index in indices]


def plane_label(index: tuple[int, ...], long_axes: list[tuple[int, str, int]]) -> str:
    """``t1_z03``: 1-based, zero-padded to the width of each axis length."""
    return "_".join(f"{a.lower()}{index[i] + 1:0{len(str(n))}d}" for i, a, n in long_axes)


def _names(meta: dict, count: int, axis: str | None) -> tuple[str, ...]:
    names = list(meta["names"] or [])
    if len(names) == count and any(names):
        return tuple(n or f"band_{i + 1}" for i, n in enumerate(names))
    if meta["photometric"] == 2 and count >= 3:  # RGB
        rest = ["alpha" if e in (1, 2) else f"band_{4 + i}"
                for i, e in enumerate(meta["extrasamples"][-(count - 3):] if count > 3 else ())]
        return tuple(["red", "green", "blue"] + rest)
    return tuple(f"band_{i + 1}" for i in range(count))


def _nodata(values: tuple[float, ...] | None, count: int, path: str) -> tuple[float | None, ...]:
    if not values:
        return (None,) * count
    if len(values) == 1:
        return (values[0],) * count
    if len(values) != count:
        log.warning("%s: %d nodata values for %d bands; using the first for every band",
                    path, len(values), count)
        return (values[0],) * count
    return tuple(values)


def _alpha(meta: dict, count: int) -> int | None:
    extras = meta["extrasamples"]
    for i, kind in enumerate(extras):
        if kind in (1, 2):  # associated or unassociated alpha
            return count - len(extras) + i + 1
    names = [n.lower() for n in (meta["names"] or [])]
    if len(names) == count:
        for i, n in enumerate(names):
            if n in _ALPHA_NAMES:
                return i + 1
    return None


# ---------------------------------------------------------------------------------------------
# Decoded whole: 16-bit PNG (imagecodecs) and 8-bit photos among rasters (the photo path)


def png_bit_depth(path: str, storage_options: dict | None = None) -> int | None:
    """The bit depth in a PNG file's IHDR (8 or 16 for the images read here), from its first
    33 bytes; None when the file is not a PNG or cannot be read (the photo path says why)."""
    try:
        with storage.Location(path, storage_options).open_read() as handle:
            head = handle.read(33)
    except (OSError, StorageError):
        return None
    if len(head) < 33 or not head.startswith(_PNG_SIGNATURE) or head[12:16] != b"IHDR":
        return None
    return head[24]


def read_png_header(path: str, name: str | None = None, max_pixels: int | None = None,
                    storage_options: dict | None = None) -> RasterHeader:
    """A 16-bit PNG's header (IHDR, and the EXIF orientation of an eXIf chunk), no pixels.

    Parameters
    ----------
    max_pixels : int, optional
        ``input.max_pixels``: a PNG is decoded whole, so a larger one is refused here.

    Raises
    ------
    ImageReadError
        Not a 16-bit PNG of a colour type read here, or over ``max_pixels``.
    """
    import struct

    name = name or _stem(path)
    size, mtime_ns = _stat(path, storage_options)
    with storage.Location(path, storage_options).open_read() as handle:
        head = handle.read(1 << 16)
    if not head.startswith(_PNG_SIGNATURE) or head[12:16] != b"IHDR" or len(head) < 33:
        raise ImageReadError(f"{path}: not a PNG file (no IHDR chunk); fix or remove it")
    width, height, depth, colour_type = struct.unpack(">IIBB", head[16:26])
    if depth != 16 or colour_type not in _PNG_BANDS:
        raise ImageReadError(f"{path}: a {depth}-bit PNG of colour type {colour_type}; only "
                             "16-bit grey, grey + alpha, RGB and RGBA PNGs are read as rasters")
    if max_pixels is not None and width * height > max_pixels:
        raise ImageReadError(f"{path}: {width}x{height} = {width * height} pixels is over "
                             f"input.max_pixels ({max_pixels}); a PNG must be decoded whole, "
                             "so it is refused from the header without decoding; raise "
                             "input.max_pixels if the file is trusted")
    orientation = _png_orientation(head)
    if orientation >= 5:
        width, height = height, width
    names = _PNG_BANDS[colour_type]
    return RasterHeader(path=path, name=name, format="png", height=height, width=width,
                        count=len(names), dtype="uint16", band_names=names,
                        nodata=(None,) * len(names),
                        alpha_band=len(names) if names[-1] == "alpha" else None,
                        block_shape=(height, width), axes="YXS", orientation=orientation,
                        size_bytes=size, mtime_ns=mtime_ns,
                        storage_options=storage_options if storage.is_url(path) else None)


def _png_orientation(head: bytes) -> int:
    """The EXIF orientation (1-8) of an eXIf chunk before the image data, else 1."""
    import struct

    from PIL import Image

    pos = 8
    while pos + 8 <= len(head):
        length, kind = struct.unpack(">I4s", head[pos:pos + 8])
        if kind in (b"IDAT", b"IEND"):
            break
        if kind == b"eXIf":
            exif = Image.Exif()
            try:
                exif.load(head[pos + 8:pos + 8 + length])
            except Exception:  # noqa: BLE001 - unreadable EXIF: stored orientation, as Pillow
                return 1
            value = exif.get(_ORIENTATION, 1)
            return value if value in range(1, 9) else 1
        pos += 12 + length
    return 1


def photo_header(info: Any) -> RasterHeader:
    """A photo (`pipeline.sources.ImageInfo`) as a 3-band uint8 raster decoded whole by the
    photo path (Pillow: oriented, 8-bit sRGB), for a collection that mixes it with rasters."""
    return RasterHeader(path=info.path, name=info.name, format="photo", height=info.height,
                        width=info.width, count=3, dtype="uint8",
                        band_names=("red", "green", "blue"), nodata=(None,) * 3,
                        alpha_band=None, block_shape=(info.height, info.width), axes="YXS",
                        size_bytes=info.size_bytes, mtime_ns=info.mtime_ns,
                        storage_options=info.storage_options, photo=info)


def _decode_whole(source: WindowSource) -> np.ndarray:
    """The whole stored image of a `WHOLE_FORMATS` source: (h, w, bands of the file)."""
    if source.format == "photo":
        from pipeline.sources import photos

        return photos.decode(source.photo)
    import imagecodecs

    data = storage.Location(source.path, source.storage_options).read_bytes()
    try:
        pixels = imagecodecs.png_decode(data)
    except Exception as exc:
        raise ImageReadError(f"{source.path}: damaged PNG data ({_reason(exc)}); fix or "
                             "remove it") from exc
    pixels = pixels if pixels.ndim == 3 else pixels[..., None]
    stored = (source.width, source.height) if source.orientation >= 5 else \
        (source.height, source.width)
    if pixels.shape[:2] != stored or pixels.dtype != np.uint16:
        raise ImageReadError(f"{source.path}: decoded {pixels.shape} {pixels.dtype}, not the "
                             f"{stored} uint16 its header says; fix or remove it")
    return pixels


# ---------------------------------------------------------------------------------------------
# Windows


def chunk_grid(header: RasterHeader, chunk_pixels: int,
               n_bands: int | None = None) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Row and column chunk sizes: whole tiles, strips or zarr chunks merged up to a budget.

    The budget is ``chunk_pixels`` pixels, lowered so a chunk holds at most
    ``4 * chunk_pixels`` bytes (a 13-band float64 chunk would otherwise be 26x an RGB one).
    A block larger than the budget stays one chunk (cutting it would decode it once per
    piece).  Blocks merge along rows first, then whole block rows are stacked.
    """
    n_bands = header.count if n_bands is None else n_bands
    item = np.dtype(header.dtype).itemsize * max(1, n_bands)
    budget = max(1, min(chunk_pixels, 4 * chunk_pixels // item))
    block_h, block_w = header.block_shape
    per_chunk = max(1, budget // (block_h * block_w))
    across = math.ceil(header.width / block_w)
    if per_chunk >= across:
        chunk_w, chunk_h = header.width, block_h * max(1, per_chunk // across)
    else:
        chunk_w, chunk_h = block_w * per_chunk, block_h
    return _split(header.height, chunk_h), _split(header.width, chunk_w)


def _split(total: int, size: int) -> tuple[int, ...]:
    full, rest = divmod(total, size)
    return (size,) * full + ((rest,) if rest else ())


@dataclass(frozen=True)
class WindowSource:
    """What a read task needs: small, picklable, no open handles."""

    path: str
    format: str
    axes: str
    plane: tuple[int, ...]
    bands: tuple[int, ...]  # 0-based on the band axis; a mask band, if read, comes last
    series: int
    level: int
    array_path: str
    orientation: int
    height: int  # after orientation
    width: int
    icc_profile: bytes | None = field(default=None, repr=False)
    mtime_ns: int = 0
    storage_options: dict | None = field(default=None, compare=False)
    photo: Any = field(default=None, compare=False, repr=False)  # format "photo": its ImageInfo


def window_source(header: RasterHeader, bands: tuple[int, ...] | None,
                  mask_band: int | None) -> WindowSource:
    """The read task's argument: the 1-based ``bands`` (default every band but alpha) and the
    mask band (last), checked against the file."""
    bands = tuple(bands) if bands else header.data_bands
    for band in bands + ((mask_band,) if mask_band else ()):
        if not 1 <= band <= header.count:
            raise ConfigError(f"input.bands: band {band} does not exist in {header.path} "
                              f"({header.count} bands, numbered from 1)")
    read = tuple(b - 1 for b in bands) + ((mask_band - 1,) if mask_band else ())
    icc = header.icc_profile if len(bands) == 3 else None
    return WindowSource(header.path, header.format, header.axes, header.plane, read,
                        header.series, header.level, header.array_path, header.orientation,
                        header.height, header.width, icc, header.mtime_ns,
                        header.storage_options, header.photo)


_CACHE: OrderedDict = OrderedDict()
_CACHE_LOCK = threading.Lock()
_CACHE_SIZE = 8  # open files per process; a hyperstack's planes share one


def _array(source: WindowSource) -> Any:
    """The stored array as a zarr array, opened once per process (LRU)."""
    key = (source.path, source.format, source.series, source.level, source.array_path,
           source.axes, source.mtime_ns)
    with _CACHE_LOCK:
        if key in _CACHE:
            _CACHE.move_to_end(key)
            return _CACHE[key][0]
    opened = _open_array(source)
    with _CACHE_LOCK:
        _CACHE[key] = opened
        while len(_CACHE) > _CACHE_SIZE:
            _, (_, closer) = _CACHE.popitem(last=False)
            closer()
    return opened[0]


def _open_array(source: WindowSource) -> tuple[Any, Any]:
    """A reader for the source (`_PageReader` for a single-page TIFF image, which decodes its
    tiles or strips directly, else `_ZarrReader`) and how to close it."""
    import zarr

    if source.format == "zarr":
        node = _zarr_open(source.path, source.storage_options)
        array = node[source.array_path] if source.array_path else node
        return _ZarrReader(array, source.axes), lambda: None
    import tifffile

    handle = storage.open_read(source.path, source.storage_options) \
        if storage.is_url(source.path) else None
    tif = tifffile.TiffFile(handle if handle is not None else source.path)

    def close() -> None:
        tif.close()
        if handle is not None:
            handle.close()
    level = tif.series[source.series].levels[source.level]
    page = level.keyframe
    if len(level.pages) == 1 and source.axes in ("YX", "YXS") and page.imagedepth == 1 and \
            (page.planarconfig == 1 or page.samplesperpixel == 1) and \
            tuple(level.shape[:2]) == (page.imagelength, page.imagewidth):
        return _PageReader(tif, page), close
    store = tif.series[source.series].aszarr(level=source.level)
    return _ZarrReader(zarr.open_array(store, mode="r"), source.axes), close


class _DamagedSegment(Exception):
    """A tile or strip that does not decode: ``where`` names it."""

    def __init__(self, where: str, cause: BaseException):
        super().__init__(f"{where}: {_reason(cause)}")
        self.where, self.cause = where, cause


class _PageReader:
    """Decodes the tiles or strips a window covers, straight from the file (no zarr layer:
    a third of a small window's time went to its event loop)."""

    def __init__(self, tif: Any, page: Any):
        self.page, self.handle = page, tif.filehandle
        self.lock = threading.Lock()
        self.rows, self.cols = int(page.chunks[0]), int(page.chunks[1])
        self.across = math.ceil(page.imagewidth / self.cols)
        self.args = {"jpegtables": page.jpegtables, "_fullsize": True}
        if page.jpegheader is not None:
            self.args["jpegheader"] = page.jpegheader

    def read(self, rows: slice, cols: slice, bands: list[int],
             plane: tuple[int, ...] = ()) -> np.ndarray:
        page, th, tw = self.page, self.rows, self.cols
        out = np.empty((rows.stop - rows.start, cols.stop - cols.start, len(bands)),
                       page.dtype)
        # a slice, not a list, when it can be: fancy indexing the last axis is 5x slower
        pick = slice(bands[0], bands[-1] + 1) \
            if bands == list(range(bands[0], bands[0] + len(bands))) else bands
        for ty in range(rows.start // th, -(-rows.stop // th)):
            for tx in range(cols.start // tw, -(-cols.stop // tw)):
                tile = self._segment(ty * self.across + tx, ty, tx)
                y0, x0 = max(ty * th, rows.start), max(tx * tw, cols.start)
                y1, x1 = min((ty + 1) * th, rows.stop), min((tx + 1) * tw, cols.stop)
                part = tile[y0 - ty * th:y1 - ty * th, x0 - tx * tw:x1 - tx * tw]
                out[y0 - rows.start:y1 - rows.start, x0 - cols.start:x1 - cols.start] = \
                    part[..., pick]
        return out

    def _segment(self, index: int, ty: int, tx: int) -> np.ndarray:
        page, th, tw = self.page, self.rows, self.cols
        offset, count = page.dataoffsets[index], page.databytecounts[index]
        if not offset or not count:  # a sparse file: tiles never written read as 0
            return np.zeros((th, tw, page.samplesperpixel), page.dtype)
        with self.lock:
            self.handle.seek(offset)
            data = self.handle.read(count)
        kind = "tile" if page.is_tiled else "strip"
        where = (f"{kind} {index} (y {ty * th}-{min((ty + 1) * th, page.imagelength) - 1}, "
                 f"x {tx * tw}-{min((tx + 1) * tw, page.imagewidth) - 1})")
        try:
            if len(data) < count:
                raise ValueError(f"the file ends {count - len(data)} bytes into it")
            decoded = page.decode(data, index, **self.args)[0]
            return decoded.reshape(th, tw, -1)
        except Exception as exc:
            raise _DamagedSegment(where, exc) from exc


class _ZarrReader:
    """Windows of a zarr array (a zarr store, or tifffile's view of a TIFF series)."""

    def __init__(self, array: Any, axes: str):
        self.array, self.axes = array, axes

    def read(self, rows: slice, cols: slice, bands: list[int],
             plane: tuple[int, ...] = ()) -> np.ndarray:
        axis = band_axis(self.axes)
        planes = iter(plane)
        selection, kept = [], []
        contiguous = bands == list(range(bands[0], bands[0] + len(bands)))
        for a in self.axes:
            if a == "Y":
                selection.append(rows)
            elif a == "X":
                selection.append(cols)
            elif a == axis:
                selection.append(slice(bands[0], bands[-1] + 1) if contiguous else bands)
            else:
                selection.append(next(planes))
                continue
            kept.append(a)
        values = self.array[tuple(selection)] if contiguous else \
            self.array.oindex[tuple(selection)]
        order = [kept.index("Y"), kept.index("X")] + ([kept.index(axis)] if axis else [])
        values = np.transpose(values, order)
        return values if axis else values[..., None]


def forget_open_files() -> None:
    """Close every file this process keeps open for reading windows."""
    with _CACHE_LOCK:
        while _CACHE:
            _, (_, closer) = _CACHE.popitem()
            closer()


def read_window(source: WindowSource, row: int, col: int, height: int, width: int) -> np.ndarray:
    """One window's pixels, shape (height, width, len(source.bands)), the file's dtype.

    Raises
    ------
    ImageReadError
        The window cannot be read (a damaged tile or chunk, a truncated file): names the
        file and the window.
    """
    rows, cols, transform = _stored_window(source, row, col, height, width)
    window = f"the window at y {row}-{row + height - 1}, x {col}-{col + width - 1}"
    try:
        if source.format in WHOLE_FORMATS:  # one window: decoded here, never kept
            pixels = _decode_whole(source)[rows, cols][..., list(source.bands)]
        else:
            pixels = _array(source).read(rows, cols, list(source.bands), source.plane)
    except (ImageReadError, StorageError, ConfigError):
        raise
    except _DamagedSegment as exc:
        raise ImageReadError(f"{source.path}: damaged data in {exc.where} of {window} "
                             f"({_reason(exc.cause)}); fix or remove it") from exc
    except MemoryError:
        raise ImageReadError(f"{source.path}: not enough memory to read the window at y "
                             f"{row}-{row + height - 1}, x {col}-{col + width - 1}") from None
    except FileNotFoundError as exc:
        raise ImageReadError(f"{source.path}: file disappeared after it was listed (moved "
                             "or deleted?); rerun") from exc
    except Exception as exc:
        raise ImageReadError(f"{source.path}: damaged data in {window} ({_reason(exc)}); "
                             "fix or remove it") from exc
    pixels = transform(pixels)
    if source.icc_profile:
        pixels = _icc_to_srgb(pixels, source.icc_profile)
    return np.ascontiguousarray(pixels)


def _stored_window(source: WindowSource, row: int, col: int, height: int,
                   width: int) -> tuple[slice, slice, Any]:
    """The stored rows and columns of a window of the oriented image, and how to turn the
    stored block into the oriented one (TIFF Orientation 1-8, as Pillow's exif_transpose)."""
    o = source.orientation
    r0, r1, c0, c1 = row, row + height, col, col + width
    if o >= 5:  # stored rows are oriented columns
        sh, sw = source.width, source.height
    else:
        sh, sw = source.height, source.width
    if o == 1:
        return slice(r0, r1), slice(c0, c1), lambda b: b
    if o == 2:
        return slice(r0, r1), slice(sw - c1, sw - c0), lambda b: b[:, ::-1]
    if o == 3:
        return slice(sh - r1, sh - r0), slice(sw - c1, sw - c0), lambda b: b[::-1, ::-1]
    if o == 4:
        return slice(sh - r1, sh - r0), slice(c0, c1), lambda b: b[::-1]
    if o == 5:
        return slice(c0, c1), slice(r0, r1), lambda b: b.transpose(1, 0, 2)
    if o == 6:
        return slice(sh - c1, sh - c0), slice(r0, r1), lambda b: np.rot90(b, -1)
    if o == 7:
        return slice(sh - c1, sh - c0), slice(sw - r1, sw - r0), \
            lambda b: b[::-1, ::-1].transpose(1, 0, 2)
    return slice(c0, c1), slice(sw - r1, sw - r0), lambda b: np.rot90(b, 1)


_ICC_TRANSFORMS: dict[int, Any] = {}


def _icc_to_srgb(pixels: np.ndarray, icc: bytes) -> np.ndarray:
    """Convert 8-bit RGB through an embedded profile to sRGB (bands beyond 3 untouched)."""
    import io

    from PIL import Image, ImageCms

    key = zlib.crc32(icc)
    transform = _ICC_TRANSFORMS.get(key)
    if transform is None:
        try:
            profile = ImageCms.ImageCmsProfile(io.BytesIO(icc))
            if "srgb" in (ImageCms.getProfileDescription(profile) or "").lower():
                transform = False
            else:
                transform = ImageCms.buildTransform(profile, ImageCms.createProfile("sRGB"),
                                                    "RGB", "RGB")
        except (ImageCms.PyCMSError, OSError, ValueError, TypeError) as exc:
            log.warning("ignoring an unusable ICC profile (%s)", exc)
            transform = False
        _ICC_TRANSFORMS[key] = transform
    if transform is False:
        return pixels
    rgb = Image.fromarray(np.ascontiguousarray(pixels[..., :3]))
    out = pixels.copy()
    out[..., :3] = np.asarray(ImageCms.applyTransform(rgb, transform))
    return out


def _graph_array(function: Any, args: tuple, chunks: tuple[tuple[int, ...], ...],
                 dtype: Any, prefix: str) -> da.Array:
    """A dask array whose every task is ``function(*args, row, col, height, width)``."""
    import dask.array as da
    from dask.base import tokenize

    name = f"{prefix}-{tokenize(args, chunks)}"
    graph: dict = {}
    row = 0
    for i, height in enumerate(chunks[0]):
        col = 0
        for j, width in enumerate(chunks[1]):
            key = (name, i, j) if len(chunks) == 2 else (name, i, j, 0)
            graph[key] = (function, *args, row, col, height, width)
            col += width
        row += height
    return da.Array(graph, name, chunks, dtype=dtype)


def mask_band_of(header: RasterHeader, mask: str) -> int | None:
    """The 1-based band whose zeros mask pixels, from ``input.mask``."""
    if mask == "none":
        return None
    if mask in ("auto", "alpha"):
        if mask == "alpha" and header.alpha_band is None:
            raise ConfigError(f"input.mask: 'alpha', but {header.path} has no alpha band "
                              f"(bands: {', '.join(header.band_names)}); use 'auto', "
                              "'band:N' or 'none'")
        return header.alpha_band
    found = re.fullmatch(r"band:(\d+)", mask)
    if not found:
        raise ConfigError(f"input.mask: must be 'auto', 'alpha', 'band:N' or 'none', got "
                          f"{mask!r}")
    band = int(found.group(1))
    if not 1 <= band <= header.count:
        raise ConfigError(f"input.mask: band {band} does not exist in {header.path} "
                          f"({header.count} bands, numbered from 1)")
    return band


def raw_array(header: RasterHeader, chunk_pixels: int, bands: tuple[int, ...] | None = None,
              mask: str = "auto") -> da.Array:
    """The selected bands, then the mask band if ``mask`` picks one, in one read per window:
    dask array of shape (height, width, n_bands [+ 1]), the file's dtype."""
    mask_band = mask_band_of(header, mask)
    if bands is None and mask_band is not None:
        bands = tuple(b for b in header.data_bands if b != mask_band)
    source = window_source(header, bands, mask_band)
    chunks = chunk_grid(header, chunk_pixels, len(source.bands))
    return _graph_array(read_window, (source,), chunks + ((len(source.bands),),),
                        np.dtype(header.dtype), "raster-read")


def pixel_array(header: RasterHeader, chunk_pixels: int, bands: tuple[int, ...] | None = None,
                mask: str = "auto") -> da.Array:
    """The raster's pixels as a dask array, one read task per window of whole blocks.

    Parameters
    ----------
    header : RasterHeader
    chunk_pixels : int
        Pixel budget of one chunk (``dask.chunk_pixels``; see `chunk_grid`).
    bands : tuple of int, optional
        1-based bands to read, in this order (``input.bands``); default every band but the
        alpha or mask band.
    mask : str
        ``input.mask``; a mask band it picks is read by the same tasks and dropped here.

    Returns
    -------
    dask.array.Array of shape (height, width, n_bands), the file's dtype
    """
    raw = raw_array(header, chunk_pixels, bands, mask)
    if mask_band_of(header, mask) is None:
        return raw
    return raw[..., :-1]


def mask_array(header: RasterHeader, chunk_pixels: int, bands: tuple[int, ...] | None = None,
               mask: str = "auto", nodata: float | tuple[float, ...] | None = None) -> da.Array:
    """True where a pixel is masked, chunked as `pixel_array` and sharing its read tasks.

    A pixel is masked when any selected band holds its nodata value (the file's GDAL_NODATA
    or zarr ``nodata``/``_FillValue``, per band; ``nodata`` overrides, a scalar for every band
    or one value per band of the file), a float band holds NaN or inf, or the mask band
    (``mask``: the alpha band with ``auto`` or ``alpha``, band N with ``band:N``) is 0.
    ``mask="none"`` ignores the file's nodata and alpha; NaN and inf are always masked, and an
    explicit ``nodata`` always applies.

    Returns
    -------
    dask.array.Array of shape (height, width), bool
    """
    raw = raw_array(header, chunk_pixels, bands, mask)
    mask_band = mask_band_of(header, mask)
    selected = tuple(bands) if bands else tuple(
        b for b in header.data_bands if b != mask_band)
    values = nodata_values(header, selected, mask, nodata)
    return raw.map_blocks(window_mask, values, mask_band is not None, drop_axis=2,
                          dtype=bool, name="raster-mask-" + raw.name.split("-", 2)[-1])


def nodata_values(header: RasterHeader, bands: tuple[int, ...], mask: str,
                   nodata: float | tuple[float, ...] | None) -> np.ndarray:
    """float64 per selected band; NaN: no nodata value."""
    if nodata is not None:
        per_file = (nodata,) * header.count if np.isscalar(nodata) else tuple(nodata)
        if len(per_file) != header.count:
            raise ConfigError(f"input.nodata: {len(per_file)} values for {header.path}, "
                              f"which has {header.count} bands; give one value, or one per "
                              "band of the file")
    elif mask == "none":
        per_file = (None,) * header.count
    else:
        per_file = header.nodata
    return np.array([np.nan if per_file[b - 1] is None else float(per_file[b - 1])
                     for b in bands], dtype=np.float64)


def window_mask(raw: np.ndarray, nodata: np.ndarray, has_mask_band: bool) -> np.ndarray:
    pixels = raw[..., :-1] if has_mask_band else raw
    masked = raw[..., -1] == 0 if has_mask_band else np.zeros(raw.shape[:2], dtype=bool)
    floats = pixels.dtype.kind == "f"
    for band in range(pixels.shape[2]):
        values = pixels[..., band]
        if floats:
            masked |= ~np.isfinite(values)
        value = nodata[band]
        if not math.isnan(value) and _representable(value, values.dtype):
            masked |= values == values.dtype.type(value)
    return masked


def _representable(value: float, dtype: np.dtype) -> bool:
    if dtype.kind == "f":
        return True
    info = np.iinfo(dtype)
    return float(value).is_integer() and info.min <= value <= info.max


# ---------------------------------------------------------------------------------------------
# Sampling


def sample_key(name: str) -> int:
    """An image's own random stream number, from its output name (unique within a run)."""
    return zlib.crc32(name.encode("utf-8"))


_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _mix(values: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: a bijective hash of uint64 values (wrapping arithmetic)."""
    values = (values ^ (values >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    values = (values ^ (values >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return values ^ (values >> np.uint64(31))


def _uniform(hashed: np.ndarray) -> np.ndarray:
    return (hashed >> np.uint64(11)).astype(np.float64) * 2.0 ** -53


def sample_columns(seed: int, key: int, rows: np.ndarray, width: int, rate: float,
                   col0: int, col1: int) -> tuple[np.ndarray, np.ndarray]:
    """The sampled pixels of image rows ``rows`` within columns [col0, col1).

    Row ``r`` holds ``floor(rate * width)`` samples, one more with probability the fraction
    left, one in each of that many near-equal strata of the row (no repeats).  Every draw is a
    hash of ``(seed, key, r, stratum)``, so a window finds the same pixels as any other
    chunking that covers them, and only the strata it overlaps are computed.

    Returns
    -------
    row_index : ndarray (m,), int64, into ``rows``
    columns : ndarray (m,), int64, increasing within each row
    """
    rows = np.asarray(rows, dtype=np.int64)
    if rate >= 1.0:
        grid = np.broadcast_to(np.arange(col0, col1, dtype=np.int64), (len(rows), col1 - col0))
        index = np.repeat(np.arange(len(rows), dtype=np.int64), col1 - col0)
        return index, grid.reshape(-1).copy()
    with np.errstate(over="ignore"):
        base = np.random.SeedSequence([seed, key]).generate_state(1, np.uint64)[0]
        row_hash = _mix(base ^ (rows.astype(np.uint64) * _GOLDEN))
        whole, frac = divmod(rate * width, 1.0)
        counts = int(whole) + (_uniform(_mix(row_hash)) < frac).astype(np.int64)
        lo = np.maximum(0, (col0 * counts) // width - 1)
        hi = np.minimum(counts, -(-(col1 * counts) // width) + 1)
        span = int((hi - lo).max(initial=0))
        if span <= 0:
            return np.empty(0, np.int64), np.empty(0, np.int64)
        strata = lo[:, None] + np.arange(span, dtype=np.int64)
        valid = strata < hi[:, None]
        u = _uniform(_mix(row_hash[:, None] + (strata.astype(np.uint64) + np.uint64(1))
                          * _GOLDEN))
    per = np.maximum(counts, 1)[:, None]  # integer strata edges: no column drawn twice
    starts, ends = strata * width // per, (strata + 1) * width // per
    columns = starts + (u * (ends - starts)).astype(np.int64)
    keep = valid & (columns >= col0) & (columns < col1)
    index = np.broadcast_to(np.arange(len(rows), dtype=np.int64)[:, None], keep.shape)
    return index[keep], columns[keep]


# Large images are sampled in blocks of a fixed grid (not the file's tiles or the chunking, so
# the same pixels whatever the storage), a share of the blocks each with a share of their
# pixels: the sample pass then decodes only those blocks instead of the whole image.
SAMPLE_BLOCK = 512
_BLOCK_OVERSAMPLE = 16  # within a drawn block, at most 1 pixel in 16 is sampled ...
_MIN_BLOCKS = 64  # ... unless that leaves fewer blocks than this (spatial spread)


def block_share(rate: float, height: int, width: int) -> float:
    """The share of `SAMPLE_BLOCK` blocks drawn for a sample of ``rate`` of the pixels (1, every
    block, for any image under ~17 Mpx at the default 2^20-pixel sample, or of up to 64
    blocks)."""
    n_blocks = math.ceil(height / SAMPLE_BLOCK) * math.ceil(width / SAMPLE_BLOCK)
    return min(1.0, max(rate * _BLOCK_OVERSAMPLE, _MIN_BLOCKS / max(1, n_blocks)))


def sampled_blocks(seed: int, key: int, row: int, col: int, height: int, width: int,
                   image_width: int, share: float) -> list[tuple[int, int, int, int]]:
    """The drawn blocks' parts inside a window: (row, col, height, width) each, raster order.

    A block is drawn with probability ``share``, by a hash of (seed, key, block index).
    """
    if share >= 1.0:
        return [(row, col, height, width)]
    b = SAMPLE_BLOCK
    per_row = math.ceil(image_width / b)
    rows = np.arange(row // b, (row + height - 1) // b + 1, dtype=np.int64)
    cols = np.arange(col // b, (col + width - 1) // b + 1, dtype=np.int64)
    index = (rows[:, None] * per_row + cols[None, :]).astype(np.uint64)
    with np.errstate(over="ignore"):
        base = np.random.SeedSequence([seed, key, 1]).generate_state(1, np.uint64)[0]
        drawn = _uniform(_mix(base ^ (index * _GOLDEN))) < share
    out = []
    for i, j in zip(*np.nonzero(drawn)):
        r0, c0 = max(row, int(rows[i]) * b), max(col, int(cols[j]) * b)
        r1 = min(row + height, (int(rows[i]) + 1) * b)
        c1 = min(col + width, (int(cols[j]) + 1) * b)
        out.append((r0, c0, r1 - r0, c1 - c0))
    return out


def sample_window(raw: np.ndarray, masked: np.ndarray, row: int, col: int, width: int,
                  seed: int, key: int, rate: float,
                  share: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """The sampled, unmasked pixels of one window (see `sample_columns`).

    Parameters
    ----------
    raw : ndarray of shape (h, w, n_bands)
        The window's pixels, native dtype.
    masked : ndarray of shape (h, w), bool
    row, col : int
        The window's top-left pixel in the image.
    width : int
        The image's width (positions are ``row * width + column``).
    share : float
        `block_share`: pixels are drawn at ``rate / share`` inside the drawn blocks only
        (`sampled_blocks`), so a window covering no drawn block need not be read.

    Returns
    -------
    positions : ndarray of shape (m,), int64, increasing
    pixels : ndarray of shape (m, n_bands), native dtype
    """
    h, w = masked.shape
    ys, xs = sample_columns(seed, key, np.arange(row, row + h), width,
                            min(1.0, rate / share), col, col + w)
    xs = xs - col
    keep = ~masked[ys, xs]
    if share < 1.0:
        inside = np.zeros((h, w), bool)
        for r0, c0, bh, bw in sampled_blocks(seed, key, row, col, h, w, width, share):
            inside[r0 - row:r0 - row + bh, c0 - col:c0 - col + bw] = True
        keep &= inside[ys, xs]
    ys, xs = ys[keep], xs[keep]
    return (ys + row) * width + xs + col, raw[ys, xs]


def sample_pixels(pixels: da.Array, masked: da.Array, seed: int, key: int,
                  n_sample: int) -> Any:
    """A reproducible sample of one image's unmasked pixels, as a dask Delayed.

    About ``n_sample * (unmasked share)`` pixels, spread evenly over the rows: a share
    ``n_sample / n_pixels`` of every row is drawn by `sample_columns`, so the sample is the
    same set in the same (raster) order for every chunking.

    Returns
    -------
    Delayed of (positions : ndarray (m,), int64, pixels : ndarray (m, n_bands))
    """
    import dask

    height, width = masked.shape
    rate = min(1.0, n_sample / max(1, height * width))
    share = block_share(rate, height, width)
    blocks_p, blocks_m = pixels.to_delayed(), masked.to_delayed()
    parts = []
    row = 0
    for i, h in enumerate(pixels.chunks[0]):
        col = 0
        for j, w in enumerate(pixels.chunks[1]):
            part = dask.delayed(sample_window, pure=True)(
                blocks_p[i, j, 0], blocks_m[i, j], row, col, width, seed, key, rate, share)
            parts.append(part)
            col += w
        row += h
    return dask.delayed(merge_samples, pure=True)(parts)


def merge_samples(parts: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    positions = np.concatenate([p for p, _ in parts])
    pixels = np.concatenate([v for _, v in parts])
    order = np.argsort(positions, kind="stable")
    return positions[order], pixels[order]
