"""Write outputs into the output folder: every file under a hidden temporary name, then renamed.

A reader (or a rerun) therefore sees either a complete file or none.

Image outputs are encoded here, not by Pillow (issue 5: writing was the largest cost of a
run); `write_png` (Pillow) remains for the report's thumbnails.  The
segmented image (indexed, k <= 256) and the label map hold the same bytes, one label per pixel,
so their image data is compressed once and written twice, with and without a palette (k <= 255:
one byte per label, 255 left for masked pixels, which the segmented image's palette makes
transparent with a tRNS entry).  Every
row uses PNG's "Up" filter (a byte minus the one above: cheap in numpy, and turns the runs of a
label map into zeros); level 1 uses zlib's run-length strategy, which is both faster and smaller
than level 6 on label maps.  zlib releases the GIL while it compresses, so threads overlap.
"""

from __future__ import annotations

import io
import json
import os
from datetime import datetime, timezone
import struct
import zlib
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from pipeline import storage
from pipeline.sinks import segment
from pipeline.config import OutputConfig
from pipeline.errors import StorageError

if TYPE_CHECKING:  # Pillow is a photo run's, not this module's: a raster run never loads it
    from PIL import Image

TEMP_PREFIX = ".tmp-"
SUBDIRS = ("segmented", "labels", "masks")
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_GREY, _RGB, _INDEXED, _RGBA = 0, 2, 3, 6  # PNG colour types
_IDAT_MAX = 1 << 30  # bytes per IDAT chunk (the format allows 2**31 - 1)
_BAND_BYTES = 1 << 20  # rows are filtered and compressed about this many bytes at a time



def utc_now() -> str:
    """The current time for reports: ISO 8601, UTC, whole seconds."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")

def atomic_write(path: str, write: Callable[[io.BufferedWriter], None],
                 make_folder: bool = True, storage_options: dict | None = None) -> int:
    """Write a file through ``write(handle)`` under a hidden temporary name, then rename it;
    an object (``path`` is a URL) is written to memory, then stored with one PUT, so it
    appears only when complete.

    ``make_folder=False``: the folder must exist (it is not created again if it was removed).

    Returns
    -------
    int
        The size of the written file in bytes.
    """
    return storage.Location(path, storage_options).write_atomic(write, TEMP_PREFIX,
                                                                make_folder)


def write_json(path: str, data: Any, make_folder: bool = True,
               storage_options: dict | None = None) -> int:
    """Write ``data`` as indented JSON, atomically."""
    text = json.dumps(data, indent=2, sort_keys=False, default=_json_default).encode()
    return atomic_write(path, lambda handle: handle.write(text + b"\n"), make_folder,
                        storage_options)


def _json_default(value: Any) -> Any:
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    raise TypeError(f"cannot store {type(value).__name__} in JSON")


def write_png(path: str, image: Image.Image, compress_level: int,
              make_folder: bool = True, storage_options: dict | None = None) -> int:
    """Encode one PNG atomically; returns its size in bytes."""
    return atomic_write(path, lambda handle: image.save(handle, format="PNG",
                                                        compress_level=compress_level),
                        make_folder, storage_options)


def deflate_rows(rows: np.ndarray, level: int) -> bytes:
    """PNG image data (a zlib stream of filtered scanlines) of raw image rows.

    Parameters
    ----------
    rows : ndarray of shape (height, row_bytes), uint8
        Each row's samples as the PNG stores them (16-bit samples big-endian).
    level : int
        zlib level 0-9; 1 uses the run-length strategy.

    Returns
    -------
    bytes
    """
    height, row_bytes = rows.shape
    strategy = zlib.Z_RLE if level == 1 else zlib.Z_DEFAULT_STRATEGY
    compressor = zlib.compressobj(level, zlib.DEFLATED, 15, 9, strategy)
    band = max(1, _BAND_BYTES // max(row_bytes, 1))
    parts = []
    for top in range(0, height, band):
        chunk = rows[top:top + band]
        filtered = np.empty((len(chunk), row_bytes + 1), np.uint8)
        filtered[:, 0] = 2  # filter type Up
        filtered[0, 1:] = chunk[0] if top == 0 else chunk[0] - rows[top - 1]
        np.subtract(chunk[1:], chunk[:-1], out=filtered[1:, 1:])
        parts.append(compressor.compress(filtered))
    parts.append(compressor.flush())
    return b"".join(parts)


def write_png_data(path: str, width: int, height: int, bit_depth: int, colour_type: int,
                   data: bytes, palette: np.ndarray | None = None, make_folder: bool = True,
                   storage_options: dict | None = None,
                   transparency: bytes | None = None) -> int:
    """Write a PNG from image data made by `deflate_rows`, atomically; returns its size.

    ``palette`` (n, 3) uint8 is required for colour type 3 (indexed); ``transparency`` is
    its tRNS chunk (the alpha of the first entries).
    """
    header = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)

    def write(handle: io.BufferedWriter) -> None:
        handle.write(_PNG_SIGNATURE)
        _write_chunk(handle, b"IHDR", header)
        if palette is not None:
            _write_chunk(handle, b"PLTE", np.ascontiguousarray(palette, np.uint8).tobytes())
        if transparency is not None:
            _write_chunk(handle, b"tRNS", transparency)
        view = memoryview(data)
        for start in range(0, max(len(data), 1), _IDAT_MAX):
            _write_chunk(handle, b"IDAT", view[start:start + _IDAT_MAX])
        _write_chunk(handle, b"IEND", b"")

    return atomic_write(path, write, make_folder, storage_options)


def _write_chunk(handle: io.BufferedWriter, kind: bytes, data: bytes | memoryview) -> None:
    handle.write(struct.pack(">I", len(data)) + kind)
    handle.write(data)
    handle.write(struct.pack(">I", zlib.crc32(data, zlib.crc32(kind))))


def write_image_outputs(out_dir: str, name: str, labels: np.ndarray, palette: np.ndarray,
                        cfg: OutputConfig, dithered: np.ndarray | None = None,
                        masked: np.ndarray | None = None) -> dict[str, list]:
    """Write the segmented image, label map and masks of one image.

    Parameters
    ----------
    out_dir : str
    name : str
        The image's output name (``/``-separated, no extension).
    labels : ndarray of shape (height, width), uint8 when n_clusters <= 255, else uint16
        Masked pixels hold `tiled.masked_label` (255 or 65535), as the label map does.
    palette : ndarray of shape (n_clusters, 3), uint8
        Each cluster's colour.
    cfg : OutputConfig
    dithered : ndarray of shape (height, width), uint8, optional
        With ``output.dither``: the segmented image's palette indices, error-diffused
        (`pipeline.sinks.dither`); the label map and masks are written from ``labels``.
    masked : ndarray of shape (height, width), bool, optional
        Masked pixels: transparent in the segmented image (a tRNS entry of an indexed PNG,
        else RGBA), 0 in every mask.

    Returns
    -------
    dict
        Output kind -> list of ``[relative path, size in bytes]``.

    Raises
    ------
    OSError
        A file could not be written (disk full, the output folder was removed...).  The files
        of this image written so far are deleted first: an image has all its outputs or none.
        The output folder itself is never created again here.
    """
    files: dict[str, list] = {}
    level = cfg.png_compression
    height, width = labels.shape
    one_byte = labels.dtype == np.uint8  # k <= 255: label map and indexed image share bytes
    shared = deflate_rows(labels, level) \
        if one_byte and ((cfg.segmented and dithered is None) or cfg.labels) else b""
    written: list[str] = []

    def put(kind: str, rel: str, depth: int, colour_type: int, data: bytes,
            colours: np.ndarray | None = None, transparency: bytes | None = None) -> None:
        path = _join(out_dir, rel)
        _make_folders(out_dir, os.path.dirname(rel))
        size = write_png_data(path, width, height, depth, colour_type, data, colours,
                              False, cfg.storage_options, transparency)
        files.setdefault(kind, []).append([rel, size])
        written.append(path)

    try:
        if cfg.segmented:
            indices = labels if dithered is None else dithered
            shared_ok = dithered is None and one_byte
            put("segmented", f"segmented/{name}.png",
                *_segmented_png(indices, palette, masked, level, shared if shared_ok else None))
        if cfg.labels:
            rel = f"labels/{name}.png"
            if one_byte:
                put("labels", rel, 8, _GREY, shared)
            else:
                wide = labels.astype(">u2").view(np.uint8).reshape(height, width * 2)
                put("labels", rel, 16, _GREY, deflate_rows(wide, level))
        if cfg.masks:
            files["masks"] = []
            for j in range(len(palette)):  # a masked pixel's label is no j: 0 in every mask
                put("masks", f"masks/{name}/{j}.png", 8, _GREY,
                    deflate_rows(segment.mask(labels, j), level))
    except BaseException:
        for path in written:
            try:
                storage.Location(path, cfg.storage_options).remove(attempts=1)
            except (OSError, StorageError):
                pass
        raise
    return files


def _segmented_png(indices: np.ndarray, palette: np.ndarray, masked: np.ndarray | None,
                   level: int, shared: bytes | None) -> tuple:
    """(bit depth, colour type, image data, PLTE, tRNS) of a segmented image.

    Indexed when every colour and the masked pixels fit one byte: k <= 256 without masked
    pixels, k <= 255 with them (index 255, transparent: a 256-entry PLTE and a tRNS entry,
    so the bytes stay those of the label map).  Else RGB, or RGBA with masked pixels alpha 0.
    ``shared``: the compressed ``indices`` when the caller has them already.
    """
    height, width = indices.shape
    k = len(palette)
    if masked is None and k <= 256:
        data = shared if shared is not None else deflate_rows(indices.astype(np.uint8), level)
        return 8, _INDEXED, data, palette, None
    if masked is not None and k <= 255:
        if indices.dtype != np.uint8 or shared is None:  # dithered: mark masked pixels
            indices = np.where(masked, np.uint8(255), indices).astype(np.uint8)
        data = shared if shared is not None else deflate_rows(indices, level)
        padded = np.zeros((256, 3), np.uint8)
        padded[:k] = palette
        return 8, _INDEXED, data, padded, b"\xff" * 255 + b"\x00"
    rgb = segment.segmented(indices, palette)
    if masked is None:
        return 8, _RGB, deflate_rows(rgb.reshape(height, width * 3), level), None, None
    rgba = np.concatenate([rgb, np.where(masked, 0, 255).astype(np.uint8)[..., None]], axis=2)
    return 8, _RGBA, deflate_rows(rgba.reshape(height, width * 4), level), None, None


def _make_folders(out_dir: str, rel_folder: str) -> None:
    """Create ``rel_folder`` below ``out_dir``, which must still exist."""
    storage.Location(out_dir).make_folders(rel_folder)


def _join(out_dir: str, rel: str) -> str:
    return storage.join(out_dir, rel)


def outputs_complete(out_dir: str, files: dict[str, list],
                     sizes: dict[str, int] | None = None) -> bool:
    """Whether every file a report entry lists exists with the size it recorded (a zarr
    output: whether its completion marker exists).

    ``sizes`` (relative path -> size, from `output_sizes`) replaces a stat per file.
    """
    from pipeline.sinks.tiled import COMPLETE_MARKER

    for entries in files.values():
        for rel, size in entries:
            if rel.endswith(".zarr"):  # issue 12: complete once its marker is written (last)
                marker = f"{rel}/{COMPLETE_MARKER}"
                if not (marker in sizes if sizes is not None
                        else os.path.isfile(_join(out_dir, marker))):
                    return False
                continue
            try:
                found = sizes.get(rel) if sizes is not None else os.path.getsize(
                    _join(out_dir, rel))
            except OSError:
                return False
            if found != size:
                return False
    return True


def output_sizes(out_dir: str, storage_options: dict | None) -> dict[str, int] | None:
    """For object storage, every object's size under ``out_dir`` from one listing (a request
    per file would be slow); None for a local folder, where a stat per file is cheap."""
    return storage.Location(out_dir, storage_options).sizes()


def remove_temp_files(out_dir: str) -> int:
    """Delete temporary files a killed run left behind; returns how many.  Object storage
    has none: an object is written with one PUT, never under a temporary name."""
    return storage.Location(out_dir).remove_temp_files(TEMP_PREFIX)


def read_json(path: str, storage_options: dict | None = None) -> Any:
    """A JSON file's content, or None when it is missing or not valid JSON.

    Raises
    ------
    StorageError
        An object store could not be reached (missing and unreachable differ there).
    """
    try:
        return json.loads(storage.Location(path, storage_options).read_bytes())
    except StorageError:
        raise
    except (OSError, ValueError):
        return None
