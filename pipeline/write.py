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

from pipeline import segment
from pipeline.config import OutputConfig

TEMP_PREFIX = ".tmp-"
SUBDIRS = ("segmented", "labels", "masks")


def atomic_write(path: str, write: Callable[[io.BufferedWriter], None],
                 make_folder: bool = True) -> int:
    """Write a file through ``write(handle)`` under a hidden temporary name, then rename it.

    ``make_folder=False``: the folder must exist (it is not created again if it was removed).

    Returns
    -------
    int
        The size of the written file in bytes.
    """
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


def write_json(path: str, data: Any, make_folder: bool = True) -> int:
    """Write ``data`` as indented JSON, atomically."""
    text = json.dumps(data, indent=2, sort_keys=False, default=_json_default).encode()
    return atomic_write(path, lambda handle: handle.write(text + b"\n"), make_folder)


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
              make_folder: bool = True) -> int:
    """Encode one PNG atomically; returns its size in bytes."""
    return atomic_write(path, lambda handle: image.save(handle, format="PNG",
                                                        compress_level=compress_level),
                        make_folder)


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
                                                          make_folder=False)])
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
                os.unlink(path)
            except OSError:
                pass
        raise
    return files


def _make_folders(out_dir: str, rel_folder: str) -> None:
    """Create ``rel_folder`` below ``out_dir``, which must still exist."""
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
    return os.path.join(out_dir, *rel.split("/"))


def outputs_complete(out_dir: str, files: dict[str, list]) -> bool:
    """Whether every file a report entry lists exists with the size it recorded."""
    for entries in files.values():
        for rel, size in entries:
            try:
                if os.path.getsize(_join(out_dir, rel)) != size:
                    return False
            except OSError:
                return False
    return True


def remove_temp_files(out_dir: str) -> int:
    """Delete temporary files a killed run left behind; returns how many."""
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


def read_json(path: str) -> Any:
    """A JSON file's content, or None when it is missing or not valid JSON."""
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except (OSError, ValueError):
        return None
