"""Find the input images and read every file's header, on the client; no pixels.

Local paths and URLs are found through one seam, `pipeline.storage.Location.expand`; each file's
header is read by `pipeline.sources.photos.read_header`, so a file that cannot be opened is
reported before any cluster work starts.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

from pipeline import storage
from pipeline.config import InputConfig, PreprocessConfig
from pipeline.errors import ConfigError, ImageReadError
from pipeline.sources import ImageInfo
from pipeline.sources.photos import read_header, readable_extensions


@dataclass
class Listing:
    """What the input section found: images to process and everything the report must tell."""

    images: list[ImageInfo]
    failed: list[tuple[str, str]]  # (path, one-line reason): cannot be opened from the header
    ignored: list[str]  # files in input folders with extensions imageio cannot read
    renamed: list[tuple[str, str]]  # (path, name): output-name collisions resolved by a suffix
    notes: list[tuple[str, str]]  # (path, note): e.g. "first frame of 12 used"
    # issue 12: when every input is a raster, name -> how to read it (`raster_job.RasterImage`)
    rasters: dict = field(default_factory=dict)


def list_inputs(cfg: InputConfig, preprocess: PreprocessConfig,
                output_dir: str | None = None, raster_path: bool = False) -> Listing:
    """Find every input file, read its header and give each a unique output name.

    With ``raster_path`` (a run whose ``output.format`` is not png), when every input is a
    raster (``.tif``, ``.tiff``, ``.svs``, ``.btf``, ``.zarr``), the headers are read by
    `pipeline.sources.rasters`, one image per plane, and ``Listing.rasters`` says how to read
    each; otherwise every input is a photo (TIFFs too, as 8-bit RGB through Pillow).

    Parameters
    ----------
    cfg : InputConfig
        ``paths`` are already absolute (resolved against the job file).
    preprocess : PreprocessConfig
        For the working size of each image (``scale``).
    output_dir : str, optional
        Never read as input.

    Returns
    -------
    Listing

    Raises
    ------
    ConfigError
        An input path does not exist, or the inputs match no file.
    """
    from pipeline.sources import geo, rasters

    extensions = readable_extensions() | (
        rasters.EXTENSIONS | geo.extensions() if raster_path else frozenset())
    out = storage.Location(output_dir) if output_dir else None
    skip_root = out.canonical() if out else None
    found: dict[str, str] = {}  # realpath -> name (first entry wins)
    paths: dict[str, str] = {}
    ignored: list[str] = []
    problems: list[str] = []
    for entry in cfg.paths:
        expanded = storage.Location(entry, cfg.storage_options).expand(extensions, ignored,
                                                                       problems)
        for path, name in expanded:
            real = storage.canonical(path)
            if real in found or _excluded(path, cfg.exclude):
                continue
            if out and (real == skip_root or real.startswith(skip_root + out.separator)):
                continue
            found[real] = name
            paths[real] = path
    if problems:
        raise ConfigError("\n".join(problems))
    if not found:
        raise ConfigError("input.paths: no image files found in "
                          + ", ".join(map(repr, cfg.paths))
                          + "; check the paths, globs and input.exclude")
    named = _unique_names([(paths[real], name) for real, name in found.items()])
    renamed = [(path, name) for path, name, was_renamed in named if was_renamed]
    if raster_path and all(rasters.is_raster(path) or geo.is_geo_only(path)
                           for path, _, _ in named):
        return _list_rasters(cfg, named, sorted(set(ignored)), renamed)
    images, failed, notes = [], [], []
    for path, name, _ in named:
        if path.rstrip("/").lower().endswith(".zarr"):
            failed.append((path, "a zarr store among photos: list rasters in a job of "
                                 "their own"))
            continue
        try:
            info, image_notes = read_header(path, name, len(images), preprocess.scale,
                                            cfg.max_pixels, cfg.storage_options)
        except ImageReadError as exc:
            failed.append((path, str(exc)))
            continue
        images.append(info)
        notes += [(path, note) for note in image_notes]
    return Listing(images, failed, sorted(set(ignored)), renamed, notes)


def _list_rasters(cfg: InputConfig, named: list[tuple[str, str, bool]], ignored: list[str],
                  renamed: list[tuple[str, str]]) -> Listing:
    """Headers of raster inputs, one `ImageInfo` (and `RasterImage`) per image plane."""
    from pipeline import raster_job
    from pipeline.sources import geo, rasters

    images, failed, notes, readers = [], [], [], {}
    nodata = cfg.nodata
    for path, name, _ in named:
        how = geo.route(path, cfg.storage_options)
        try:
            if how == "missing-extra":
                raise ImageReadError(f"{path}: reading this format needs rasterio, which is "
                                     f"not installed: {geo.INSTALL_HINT}")
            if how == "geo":  # issue 13: GDAL reads it and its georeferencing is kept
                headers = [geo.read_header(path, name, cfg.storage_options, cfg.apply_scale,
                                           cfg.level)]
            else:
                headers = rasters.read_headers(path, name, axes=cfg.axes, planes=cfg.planes,
                                               level=cfg.level,
                                               storage_options=cfg.storage_options)
        except ImageReadError as exc:
            failed.append((path, str(exc).removeprefix(f"{path}: ")))
            continue
        if how == "tiff-ungeoreferenced":
            notes.append((path, geo.NOT_KEPT_NOTE))
        for header in headers:
            mode = f"{header.count}x{header.dtype}"
            images.append(ImageInfo(
                len(images), path, header.name, header.width, header.height,
                header.format.upper(), mode, size_bytes=header.size_bytes,
                mtime_ns=header.mtime_ns,
                storage_options=cfg.storage_options if storage.is_url(path) else None))
            readers[header.name] = raster_job.RasterImage(header, cfg.bands, cfg.mask, nodata)
        if headers and getattr(headers[0], "note", None):
            notes.append((path, headers[0].note))
    return Listing(images, failed, ignored, renamed, notes, readers)


def _excluded(path: str, patterns: tuple[str, ...]) -> bool:
    normal = path.replace(os.sep, "/")
    return any(_glob_regex(p).search(normal) for p in patterns)


def _glob_regex(pattern: str) -> re.Pattern:
    """A glob where ``**/`` spans folders, matched against the end of a path."""
    out, i = [], 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:[^/]*/)*")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    anchor = "^" if pattern.startswith("/") else "(?:^|/)"
    return re.compile(anchor + "".join(out) + "$")


def _unique_names(items: list[tuple[str, str]]) -> list[tuple[str, str, bool]]:
    """Sort by (name, path); a name met again gets -2, -3, ... (never another input's name)."""
    taken = {name for _, name in items}
    used: set[str] = set()
    out = []
    for path, name in sorted(items, key=lambda item: (item[1], item[0])):
        final, n = name, 1
        while final in used or (final != name and final in taken):
            n += 1
            final = f"{name}-{n}"
        used.add(final)
        out.append((path, final, final != name))
    return out


def unreadable_message(failed: list[tuple[str, str]], images: list) -> str:
    """The one error for inputs whose headers cannot be read (``on_error: fail``)."""
    if len(failed) == 1:
        path, reason = failed[0]
        return (f"cannot read {path}: {reason}; no cluster work was started "
                "(input.on_error: fail)")
    total = len(failed) + len(images)
    lines = [f"cannot read {len(failed)} of {total} images; no cluster work was started "
             "(input.on_error: fail):"]
    lines += [f"  {path}: {reason}" for path, reason in failed]
    return "\n".join(lines)
