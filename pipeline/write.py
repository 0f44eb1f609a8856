"""Write outputs into the output folder: every file under a hidden temporary name, then renamed.

A reader (or a rerun) therefore sees either a complete file or none.  The temporary name keeps
no image extension, so the format is always named explicitly (imageio would pick TIFF for
``x.png.tmp``); we encode PNGs with Pillow directly to choose zlib level and palette mode.
"""

from __future__ import annotations

import errno
import io
import json
import os
import uuid
from typing import Any, Callable

import numpy as np
from PIL import Image

from pipeline import segment, storage
from pipeline.config import OutputConfig
from pipeline.errors import StorageError

TEMP_PREFIX = ".tmp-"
SUBDIRS = ("segmented", "labels", "masks")


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
    if storage.is_url(path):
        buffer = io.BytesIO()
        write(buffer)
        data = buffer.getvalue()
        storage.put_bytes(path, data, storage_options)
        return len(data)
    folder, base = os.path.split(path)
    if make_folder:
        os.makedirs(folder, exist_ok=True)
    temp = os.path.join(folder, f"{TEMP_PREFIX}{uuid.uuid4().hex[:12]}-{base}")
    try:
        with open(temp, "wb") as handle:
            write(handle)
            size = handle.tell()
        os.replace(temp, path)
    except BaseException:
        try:
            os.unlink(temp)
        except OSError:
            pass
        raise
    return size


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


def write_image_outputs(out_dir: str, name: str, labels: np.ndarray, palette: np.ndarray,
                        cfg: OutputConfig) -> dict[str, list]:
    """Write the segmented image, label map and masks of one image.

    Parameters
    ----------
    out_dir : str
    name : str
        The image's output name (``/``-separated, no extension).
    labels : ndarray of shape (height, width), uint8 or uint16
    palette : ndarray of shape (n_clusters, 3), uint8
        Each cluster's colour.
    cfg : OutputConfig

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
    written: list[str] = []

    def put(kind: str, rel: str, image: Image.Image) -> None:
        path = _join(out_dir, rel)
        _make_folders(out_dir, os.path.dirname(rel))
        files.setdefault(kind, []).append([rel, write_png(path, image, cfg.png_compression,
                                                          False, cfg.storage_options)])
        written.append(path)

    try:
        if cfg.segmented:
            put("segmented", f"segmented/{name}.png", _segmented_image(labels, palette))
        if cfg.labels:
            put("labels", f"labels/{name}.png", _label_image(labels))
        if cfg.masks:
            files["masks"] = []
            for j in range(len(palette)):
                put("masks", f"masks/{name}/{j}.png",
                    Image.fromarray(segment.mask(labels, j), mode="L"))
    except BaseException:
        for path in written:
            try:
                if storage.is_url(path):
                    storage.remove(path, cfg.storage_options, attempts=1)
                else:
                    os.unlink(path)
            except (OSError, StorageError):
                pass
        raise
    return files


def _make_folders(out_dir: str, rel_folder: str) -> None:
    """Create ``rel_folder`` below ``out_dir``, which must still exist (object storage has
    no folders)."""
    if storage.is_url(out_dir):
        return
    if not os.path.isdir(out_dir):
        raise FileNotFoundError(errno.ENOENT, "the output folder was removed", out_dir)
    folder = out_dir
    for part in rel_folder.split("/"):
        folder = os.path.join(folder, part)
        try:
            os.mkdir(folder)
        except FileExistsError:
            pass


def _segmented_image(labels: np.ndarray, palette: np.ndarray) -> Image.Image:
    if len(palette) <= 256:
        # An indexed PNG: one byte per pixel, exact colours; readers expand it to RGB.
        image = Image.fromarray(labels.astype(np.uint8, copy=False), mode="P")
        image.putpalette(palette.astype(np.uint8).tobytes(), rawmode="RGB")
        return image
    return Image.fromarray(segment.segmented(labels, palette), mode="RGB")


def _label_image(labels: np.ndarray) -> Image.Image:
    if labels.dtype == np.uint8:
        return Image.fromarray(labels, mode="L")
    return Image.fromarray(labels.astype(np.uint16), mode="I;16")


def _join(out_dir: str, rel: str) -> str:
    return storage.join(out_dir, rel)


def outputs_complete(out_dir: str, files: dict[str, list],
                     sizes: dict[str, int] | None = None) -> bool:
    """Whether every file a report entry lists exists with the size it recorded.

    ``sizes`` (relative path -> size, from `output_sizes`) replaces a stat per file.
    """
    for entries in files.values():
        for rel, size in entries:
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
    if not storage.is_url(out_dir):
        return None
    return storage.sizes(out_dir, storage_options)


def remove_temp_files(out_dir: str) -> int:
    """Delete temporary files a killed run left behind; returns how many.  Object storage
    has none: an object is written with one PUT, never under a temporary name."""
    if storage.is_url(out_dir):
        return 0
    removed = 0
    for folder, _, names in os.walk(out_dir):
        for name in names:
            if name.startswith(TEMP_PREFIX):
                try:
                    os.unlink(os.path.join(folder, name))
                    removed += 1
                except OSError:
                    pass
    return removed


def read_json(path: str, storage_options: dict | None = None) -> Any:
    """A JSON file's content, or None when it is missing or not valid JSON.

    Raises
    ------
    StorageError
        An object store could not be reached (missing and unreachable differ there).
    """
    try:
        if storage.is_url(path):
            return json.loads(storage.read_bytes(path, storage_options))
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except StorageError:
        raise
    except (OSError, ValueError):
        return None
