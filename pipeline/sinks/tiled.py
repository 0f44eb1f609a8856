"""Label maps, segmented N-band images and masks as tiled TIFF or zarr, written window by window.

No writer here holds an image: windows arrive one at a time, in any order (`write_tiff`,
`write_zarr`), from plain functions or from the blocks of a dask array (`array_windows`).

TIFF.  `TiffWriter` appends each finished tile, compressed, to the file as its window
arrives and writes the directory (IFD) last; a window that covers a tile only in part is
kept until the rest of the tile arrives (a row of partial tiles at most, for windows not
aligned to the tile grid).  The file is classic TIFF, or BigTIFF when it could pass 4 GiB.
A local file is written under a hidden temporary name (``.tmp-...``, which
``remove_temp_files`` clears after a killed run) and renamed when complete.  For a URL the tiles
go to a local spool file (the directory can only be written once every tile's size is
known), then are streamed to the store with the backend's multipart upload in blocks of
`UPLOAD_BLOCK` bytes, never held in memory for one PUT; the object appears only when the
upload completes, so an existing object is a complete output.

zarr.  `write_zarr` creates a zarr v3 array chunked as the windows, writes each window as
its own chunks (any process may write any window: chunks do not overlap), and writes the
completion marker `COMPLETE_MARKER` last; `zarr_complete` is what ``resume`` asks.  A URL
writes through the zarr store of `pipeline.storage`'s fsspec filesystem, chunk by chunk.

Values.  Label maps are uint8 when k <= 255 and uint16 above; masked pixels hold the
largest value of that dtype (`masked_label`).  A segmented image holds each cluster's
centroid in the input's dtype and bands; masked pixels hold the nodata value (the input's
per band, else NaN for floats and 0 for integers), also written as GDAL_NODATA.  A mask is
255 where the pixel is in the cluster and 0 elsewhere, masked pixels included.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import struct
import tempfile
import threading
import uuid
import zlib
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from typing import TYPE_CHECKING, Any, Iterable, Iterator

import numpy as np

from pipeline import storage

if TYPE_CHECKING:
    import dask.array as da

log = logging.getLogger(__name__)

TEMP_PREFIX = ".tmp-"  # as pipeline.write.TEMP_PREFIX: the run's clean-up removes leftovers
COMPLETE_MARKER = "pipeline-complete.json"
UPLOAD_BLOCK = 16 << 20
DEFAULT_TILE = 256
_COMPRESSION = {"none": 1, "lzw": 5, "deflate": 8, "zstd": 50000}
_SAMPLE_FORMAT = {"u": 1, "i": 2, "f": 3}
_ASCII, _SHORT, _LONG, _DOUBLE, _LONG8 = 2, 3, 4, 12, 16
_TYPE_FORMAT = {_ASCII: "s", _SHORT: "H", _LONG: "I", _DOUBLE: "d", _LONG8: "Q"}
_TYPE_SIZE = {_ASCII: 1, _SHORT: 2, _LONG: 4, _DOUBLE: 8, _LONG8: 8}
_GDAL_NODATA = 42113


# ---------------------------------------------------------------------------------------------
# Values


def label_dtype(n_clusters: int) -> np.dtype:
    """uint8 when ``n_clusters`` <= 255, else uint16 (the top value is kept for masked)."""
    return np.dtype(np.uint8 if n_clusters <= 255 else np.uint16)


def masked_label(n_clusters: int) -> int:
    """The label of a masked pixel: 255 or 65535, by the same rule in every image."""
    return int(np.iinfo(label_dtype(n_clusters)).max)


def centroid_values(centroids: np.ndarray, dtype: np.dtype | str) -> np.ndarray:
    """Centroids in an image's dtype: rounded and clipped for integers.

    Parameters
    ----------
    centroids : ndarray of shape (n_clusters, n_bands), float64
    dtype : the input's dtype

    Returns
    -------
    ndarray of shape (n_clusters, n_bands), ``dtype``
    """
    dtype = np.dtype(dtype)
    if dtype.kind == "f":
        return centroids.astype(dtype)
    info = np.iinfo(dtype)
    return np.clip(np.rint(centroids), info.min, info.max).astype(dtype)


def fill_values(dtype: np.dtype | str, nodata: tuple[float | None, ...]) -> np.ndarray:
    """Per band, what a masked pixel of a segmented image holds: ndarray (n_bands,), dtype."""
    dtype = np.dtype(dtype)
    default = np.nan if dtype.kind == "f" else 0
    return np.array([default if v is None else v for v in nodata], dtype=dtype)


def paint(labels: np.ndarray, values: np.ndarray, fill: np.ndarray) -> np.ndarray:
    """A segmented window: each pixel its cluster's values, a masked one ``fill``.

    Parameters
    ----------
    labels : ndarray of shape (h, w), uint8 or uint16, masked pixels `masked_label`
    values : ndarray of shape (n_clusters, n_bands), from `centroid_values`
    fill : ndarray of shape (n_bands,), from `fill_values`

    Returns
    -------
    ndarray of shape (h, w, n_bands), ``values.dtype``
    """
    table = np.empty((int(np.iinfo(labels.dtype).max) + 1, values.shape[1]), values.dtype)
    table[:] = fill
    table[:len(values)] = values
    return table[labels]


def cluster_mask(labels: np.ndarray, cluster: int) -> np.ndarray:
    """255 where a pixel belongs to ``cluster``, else 0 (masked pixels too): (h, w), uint8."""
    return (labels == cluster).view(np.uint8) * np.uint8(255)


# ---------------------------------------------------------------------------------------------
# Tiled TIFF


class TiffWriter:
    """A tiled TIFF written tile by tile, from windows in any order; see the module docstring.

    Parameters
    ----------
    path : str
        A file or a URL.
    height, width, bands : int
    dtype : numpy dtype of the pixels
    tile : (rows, columns), multiples of 16
    compression : {"deflate", "zstd", "lzw", "none"}
    level : compression level (deflate, zstd)
    nodata : value written as GDAL_NODATA, or None
    colormap : ndarray of shape (n, 3), uint8, optional
        A palette for a single-band uint8 image (labels shown in colour by viewers).
    bigtiff : bool, optional
        Default: BigTIFF only when the file could pass 4 GiB.
    storage_options : for a URL
    """

    def __init__(self, path: str, height: int, width: int, bands: int, dtype: Any, *,
                 tile: tuple[int, int] = (DEFAULT_TILE, DEFAULT_TILE),
                 compression: str = "deflate", level: int = 6, nodata: float | None = None,
                 colormap: np.ndarray | None = None, bigtiff: bool | None = None,
                 storage_options: dict | None = None):
        if tile[0] % 16 or tile[1] % 16 or min(tile) < 16:
            raise ValueError(f"TIFF tiles must be multiples of 16, got {tile}")
        if compression not in _COMPRESSION:
            raise ValueError(f"compression must be one of {sorted(_COMPRESSION)}, got "
                             f"{compression!r}")
        self.path, self.storage_options = path, storage_options
        self.height, self.width, self.bands = height, width, bands
        self.dtype = np.dtype(dtype).newbyteorder("<")
        self.tile, self.compression, self.level = tile, compression, level
        self.nodata, self.colormap = nodata, colormap
        self.across = math.ceil(width / tile[1])
        self.n_tiles = math.ceil(height / tile[0]) * self.across
        raw = height * width * bands * self.dtype.itemsize
        self.big = raw * 1.01 + self.n_tiles * 64 + (1 << 20) >= 1 << 32 \
            if bigtiff is None else bigtiff
        self.offsets = np.zeros(self.n_tiles, np.uint64)
        self.counts = np.zeros(self.n_tiles, np.uint64)
        self._pending: dict[int, list] = {}  # tile index -> [tile array, pixels filled]
        self._lock = threading.Lock()
        self._closed, self._size = False, 0
        self._open()

    def _open(self) -> None:
        if storage.is_url(self.path):
            self._temp = None
            self._handle = tempfile.TemporaryFile(prefix="kmeans-pipeline-")
        else:
            folder, base = os.path.split(self.path)
            os.makedirs(folder or ".", exist_ok=True)
            self._temp = os.path.join(folder, f"{TEMP_PREFIX}{uuid.uuid4().hex[:12]}-{base}")
            self._handle = open(self._temp, "wb")
        header = (b"II" + struct.pack("<HHHQ", 43, 8, 0, 0)) if self.big \
            else (b"II" + struct.pack("<HI", 42, 0))
        self._handle.write(header)
        self._end = len(header)

    def __enter__(self) -> TiffWriter:
        return self

    def __exit__(self, kind: Any, value: Any, traceback: Any) -> None:
        if kind is None:
            self.close()
        else:
            self.abort()

    def write(self, row: int, col: int, block: np.ndarray) -> None:
        """Write one window of pixels (thread-safe).

        Parameters
        ----------
        row, col : int
            The window's top-left pixel.
        block : ndarray of shape (h, w) or (h, w, bands)
        """
        block = block.reshape(block.shape[0], block.shape[1], -1)
        if block.shape[2] != self.bands or row < 0 or col < 0 or \
                row + block.shape[0] > self.height or col + block.shape[1] > self.width:
            raise ValueError(f"window {block.shape} at ({row}, {col}) does not fit a "
                             f"{self.height}x{self.width}x{self.bands} image")
        th, tw = self.tile
        for ty in range(row // th, math.ceil((row + block.shape[0]) / th)):
            for tx in range(col // tw, math.ceil((col + block.shape[1]) / tw)):
                self._add(ty, tx, row, col, block)

    def _add(self, ty: int, tx: int, row: int, col: int, block: np.ndarray) -> None:
        th, tw = self.tile
        y0, x0 = ty * th, tx * tw
        y1, x1 = min(y0 + th, self.height), min(x0 + tw, self.width)
        by0, by1 = max(y0, row), min(y1, row + block.shape[0])
        bx0, bx1 = max(x0, col), min(x1, col + block.shape[1])
        part = block[by0 - row:by1 - row, bx0 - col:bx1 - col]
        index = ty * self.across + tx
        if (by0, by1, bx0, bx1) == (y0, y1, x0, x1) and index not in self._pending:
            self._store(index, self._full_tile(part))
            return
        with self._lock:
            entry = self._pending.setdefault(
                index, [np.zeros((th, tw, self.bands), self.dtype), 0])
            entry[0][by0 - y0:by1 - y0, bx0 - x0:bx1 - x0] = part
            entry[1] += part.shape[0] * part.shape[1]
            done = entry[1] >= (y1 - y0) * (x1 - x0)
            if done:
                del self._pending[index]
        if done:
            self._store(index, entry[0])

    def _full_tile(self, part: np.ndarray) -> np.ndarray:
        th, tw = self.tile
        if part.shape[:2] == (th, tw):
            return part
        tile = np.zeros((th, tw, self.bands), self.dtype)  # edge tiles are padded
        tile[:part.shape[0], :part.shape[1]] = part
        return tile

    def _store(self, index: int, tile: np.ndarray) -> None:
        data = self._encode(np.ascontiguousarray(tile, dtype=self.dtype))
        with self._lock:
            if self.counts[index]:
                raise ValueError(f"tile {index} of {self.path} written twice")
            self._handle.write(data)
            self.offsets[index], self.counts[index] = self._end, len(data)
            self._end += len(data)

    def _encode(self, tile: np.ndarray) -> bytes:
        raw = tile.tobytes()
        if self.compression == "deflate":
            return zlib.compress(raw, self.level)
        if self.compression == "zstd":
            import imagecodecs

            return imagecodecs.zstd_encode(raw, level=self.level)
        if self.compression == "lzw":
            import imagecodecs

            return imagecodecs.lzw_encode(raw)
        return raw

    def close(self) -> int:
        """Write the directory, then make the file visible; returns its size in bytes.

        Raises
        ------
        ValueError
            Some tiles were never written (the windows did not cover the image).
        """
        if self._closed:
            return self._size
        missing = int(np.count_nonzero(self.counts == 0))
        if missing:
            self.abort()
            raise ValueError(f"{self.path}: {missing} of {self.n_tiles} tiles were not "
                             "written; the windows must cover the whole image")
        try:
            size = self._write_directory()
            self._commit()
        except BaseException:
            self.abort()
            raise
        self._closed, self._size = True, size
        return size

    def abort(self) -> None:
        """Drop everything written so far (nothing appears at ``path``)."""
        if self._closed:
            return
        self._closed = True
        self._handle.close()
        if self._temp is not None:
            try:
                os.unlink(self._temp)
            except OSError:
                pass

    def _write_directory(self) -> int:
        position = self._end + (self._end % 2)
        self._handle.write(b"\0" * (position - self._end))
        ifd = _ifd(self._tags(), position, self.big)
        self._handle.write(ifd)
        self._handle.seek(8 if self.big else 4)
        self._handle.write(struct.pack("<Q" if self.big else "<I", position))
        self._handle.flush()
        return position + len(ifd)

    def _tags(self) -> list[tuple[int, int, Any]]:
        kind = self.dtype.kind
        bits = self.dtype.itemsize * 8
        rgb = self.bands == 3 and self.dtype == np.uint8
        palette = self.colormap is not None and self.bands == 1 and self.dtype == np.uint8
        photometric = 3 if palette else (2 if rgb else 1)
        offset_type = _LONG8 if self.big else _LONG
        tags = [(256, _LONG, [self.width]), (257, _LONG, [self.height]),
                (258, _SHORT, [bits] * self.bands),
                (259, _SHORT, [_COMPRESSION[self.compression]]),
                (262, _SHORT, [photometric]), (277, _SHORT, [self.bands]),
                (284, _SHORT, [1]), (322, _LONG, [self.tile[1]]), (323, _LONG, [self.tile[0]]),
                (324, offset_type, self.offsets.tolist()),
                (325, offset_type, self.counts.tolist()),
                (339, _SHORT, [_SAMPLE_FORMAT[kind]] * self.bands)]
        extra = self.bands - (3 if rgb else 1)
        if extra > 0:
            tags.append((338, _SHORT, [0] * extra))
        if palette:
            colours = np.zeros((256, 3), np.uint16)
            colours[:len(self.colormap)] = np.asarray(self.colormap, np.uint16)[:256] * 257
            tags.append((320, _SHORT, colours.T.reshape(-1).tolist()))
        if self.nodata is not None:
            text = "nan" if math.isnan(self.nodata) else f"{self.nodata:.17g}"
            tags.append((_GDAL_NODATA, _ASCII, text.encode() + b"\0"))
        return sorted(tags)

    def _commit(self) -> None:
        self._handle.flush()
        if self._temp is not None:
            self._handle.close()
            os.replace(self._temp, self.path)
            return
        self._handle.seek(0)
        fs, inner = storage.filesystem(self.path, self.storage_options)

        def upload() -> None:
            self._handle.seek(0)
            with fs.open(inner, "wb", block_size=UPLOAD_BLOCK) as target:
                shutil.copyfileobj(self._handle, target, UPLOAD_BLOCK)
        try:
            storage.retry(upload, self.path, "write")
        finally:
            self._handle.close()


def _ifd(tags: list[tuple[int, int, Any]], position: int, big: bool) -> bytes:
    """One image file directory at ``position``, its out-of-line values after it."""
    entry_size, count_format, inline = (20, "<Q", 8) if big else (12, "<H", 4)
    head = struct.calcsize(count_format)
    table_end = position + head + entry_size * len(tags) + (8 if big else 4)
    entries, extra = [], bytearray()
    for tag, kind, values in tags:
        if kind == _ASCII:
            payload, count = bytes(values), len(values)
        else:
            payload = struct.pack(f"<{len(values)}{_TYPE_FORMAT[kind]}", *values)
            count = len(values)
        if len(payload) <= inline:
            value = payload.ljust(inline, b"\0")
        else:
            if (table_end + len(extra)) % 2:
                extra += b"\0"
            value = struct.pack("<Q" if big else "<I", table_end + len(extra))
            extra += payload
        entries.append(struct.pack("<HHQ" if big else "<HHI", tag, kind, count) + value)
    return (struct.pack(count_format, len(tags)) + b"".join(entries)
            + b"\0" * (8 if big else 4) + bytes(extra))


def write_tiff(path: str, windows: Iterable[tuple[int, int, np.ndarray]], height: int,
               width: int, bands: int, dtype: Any, **options: Any) -> int:
    """Write a tiled TIFF from ``(row, col, block)`` windows in any order; see `TiffWriter`
    for ``options``.  Returns the file's size in bytes; nothing appears at ``path`` if a
    window fails."""
    with TiffWriter(path, height, width, bands, dtype, **options) as writer:
        for row, col, block in windows:
            writer.write(row, col, block)
    return writer.close()


def tile_for(block_shape: tuple[int, int], height: int, width: int) -> tuple[int, int]:
    """An output tile size: the input's tile when it is a multiple of 16 (so input-aligned
    windows fill whole tiles), else `DEFAULT_TILE` (or less for a small image)."""
    th, tw = block_shape
    if th % 16 == 0 and tw % 16 == 0 and 16 <= th <= 4096 and 16 <= tw <= 4096:
        return th, tw
    side = min(DEFAULT_TILE, max(16, 16 * math.ceil(max(height, width) / 16)))
    return side, side


# ---------------------------------------------------------------------------------------------
# Windows from a dask array


def array_windows(array: da.Array, max_workers: int = 1) -> Iterator[tuple[int, int, np.ndarray]]:
    """``(row, col, block)`` for each chunk of a 2-d or 3-d dask array, in completion order,
    with at most ``2 * max_workers`` blocks computed and held at a time.

    Each block is computed alone (synchronous scheduler, in this process): inside a dask
    task this reads and labels one window at a time, so memory stays at a few chunks.
    """
    import dask

    blocks = array.to_delayed(optimize_graph=True).reshape(
        len(array.chunks[0]), len(array.chunks[1]), -1)[:, :, 0]
    starts = [np.cumsum((0,) + c[:-1]) for c in array.chunks[:2]]
    jobs = [(int(starts[0][i]), int(starts[1][j]), blocks[i, j])
            for i in range(blocks.shape[0]) for j in range(blocks.shape[1])]

    def compute(job: tuple) -> tuple[int, int, np.ndarray]:
        row, col, block = job
        return row, col, dask.compute(block, scheduler="synchronous")[0]

    if max_workers <= 1:
        for job in jobs:
            yield compute(job)
        return
    with ThreadPoolExecutor(max_workers) as pool:
        pending, queue = set(), iter(jobs)
        for job in queue:
            pending.add(pool.submit(compute, job))
            if len(pending) >= 2 * max_workers:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    yield future.result()
        for future in pending:
            yield future.result()


# ---------------------------------------------------------------------------------------------
# zarr


def create_zarr(url: str, shape: tuple[int, ...], dtype: Any, chunks: tuple[int, ...], *,
                attrs: dict | None = None, fill_value: Any = None,
                storage_options: dict | None = None) -> Any:
    """An empty zarr v3 array at ``url`` (a folder or URL), replacing what was there; its
    completion marker is removed first, so a half-rewritten store never looks complete."""
    import zarr

    from pipeline.sources.rasters import zarr_store

    remove_marker(url, storage_options)
    store = zarr_store(url, storage_options, read_only=False)
    array = zarr.create_array(store=store, shape=shape, dtype=dtype, chunks=chunks,
                              fill_value=fill_value, overwrite=True,
                              dimension_names=("y", "x", "band")[:len(shape)])
    if attrs:
        array.attrs.update(attrs)
    return array


def write_zarr_window(array: Any, row: int, col: int, block: np.ndarray) -> None:
    """Write one window of a zarr array made by `create_zarr` (aligned to its chunks)."""
    array[row:row + block.shape[0], col:col + block.shape[1]] = block


def mark_complete(url: str, info: dict | None = None,
                  storage_options: dict | None = None) -> None:
    """Write the completion marker: the last write of a zarr output."""
    data = json.dumps(info or {}).encode()
    target = storage.join(url, COMPLETE_MARKER)
    if storage.is_url(url):
        storage.put_bytes(target, data, storage_options)
        return
    temp = os.path.join(url, f"{TEMP_PREFIX}{uuid.uuid4().hex[:12]}-{COMPLETE_MARKER}")
    with open(temp, "wb") as handle:
        handle.write(data)
    os.replace(temp, target)


def remove_marker(url: str, storage_options: dict | None = None) -> None:
    target = storage.join(url, COMPLETE_MARKER)
    if storage.is_url(url):
        storage.remove(target, storage_options)
    else:
        try:
            os.unlink(target)
        except FileNotFoundError:
            pass


def zarr_complete(url: str, storage_options: dict | None = None) -> bool:
    """Whether a zarr output was written to the end (its completion marker exists)."""
    return storage.exists(storage.join(url, COMPLETE_MARKER), storage_options) \
        if storage.is_url(url) else os.path.isfile(storage.join(url, COMPLETE_MARKER))


def write_zarr(url: str, windows: Iterable[tuple[int, int, np.ndarray]],
               shape: tuple[int, ...], dtype: Any, chunks: tuple[int, ...], *,
               attrs: dict | None = None, fill_value: Any = None,
               storage_options: dict | None = None) -> None:
    """Write a zarr output from windows aligned to ``chunks``, then its completion marker."""
    array = create_zarr(url, shape, dtype, chunks, attrs=attrs, fill_value=fill_value,
                        storage_options=storage_options)
    n = 0
    for row, col, block in windows:
        write_zarr_window(array, row, col, block)
        n += 1
    mark_complete(url, {"windows": n, "shape": list(shape)}, storage_options)
