"""Find the input images, read every file's header and route it to its path, on the client;
no pixels.

Local paths and URLs are found through one seam, `pipeline.storage.Location.expand`; each file's
header is read by its format's reader (`pipeline.sources.photos.read_header` for photos,
`pipeline.sources.rasters` or `geo` for rasters), so a file that cannot be opened is reported
before any cluster work starts.

Routing (issue 12), unless ``output.format`` is png (then every input is an 8-bit photo):
TIFF (``.tif``, ``.tiff``, ``.svs``, ``.btf``), zarr stores and formats only GDAL reads are
rasters, N bands at native depth read in windows; in a job that also holds other formats, an
8-bit TIFF of 1 to 4 samples is a photo instead, as before.  A 16-bit PNG (its IHDR says so) is
a raster decoded whole, so it keeps 16 bits.  Everything else is a photo (8-bit RGB, Pillow).
"""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass, field
from typing import Any

from pipeline import storage
from pipeline.config import InputConfig, PreprocessConfig
from pipeline.errors import ConfigError, ImageReadError
from pipeline.sources import ImageInfo

# Extensions every Pillow registers (its core plugins, loaded by Image.preinit) and imageio
# routes to Pillow: a listing takes them without `photos.readable_extensions` (tested a subset
# of it).  `pipeline.sources.photos` is imported where a photo is met: a raster run never pays
# for Pillow and simplejpeg (10-20 ms of start-up, issue 14).
COMMON_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif"})


@dataclass
class Listing:
    """What the input section found: images to process and everything the report must tell."""

    images: list[ImageInfo]
    failed: list[tuple[str, str]]  # (path, one-line reason): cannot be opened from the header
    ignored: list[str]  # files in input folders with extensions imageio cannot read
    renamed: list[tuple[str, str]]  # (path, name): output-name collisions resolved by a suffix
    notes: list[tuple[str, str]]  # (path, note): e.g. "first frame of 12 used"
    # issue 12: name -> how to read it (`raster_job.RasterImage`), for each raster; the other
    # images are photos
    rasters: dict = field(default_factory=dict)


def list_inputs(cfg: InputConfig, preprocess: PreprocessConfig,
                output_dir: str | None = None, raster_path: bool = False) -> Listing:
    """Find every input file, read its header and give each a unique output name.

    With ``raster_path`` (a run whose ``output.format`` is not png) each input is routed as
    the module docstring says: a raster's headers are read by `pipeline.sources.rasters` (or
    `geo`), one image per plane, and ``Listing.rasters`` says how to read each; the other
    images are photos.  Without it every input is a photo (TIFFs too, as 8-bit RGB).

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

    extensions = _Extensions(raster_path)
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
    listing = Listing([], [], sorted(set(ignored)),
                      [(path, name) for path, name, was_renamed in named if was_renamed], [])
    only_rasters = all(rasters.is_raster(path) or geo.is_geo_only(path) for path, _, _ in named)
    for path, name, _ in named:
        route = _route(path, cfg, only_rasters) if raster_path else "photo"
        if route == "photo" and path.rstrip("/").lower().endswith(".zarr"):
            listing.failed.append((path, "a zarr store is a raster, which output.format: png "
                                         "cannot hold; use output.format: auto or zarr"))
        elif route == "photo":
            _add_photo(listing, cfg, preprocess, path, name, raster_path)
        else:
            _add_raster(listing, cfg, path, name, route == "png16")
    return listing


class _Extensions:
    """The file extensions a listing takes (``ext in extensions``): the photos' (imageio's
    routes to Pillow that Pillow opens), plus with ``raster_path`` the rasters' and GDAL's.

    The common photo and raster extensions are answered at once; only another extension asks
    `readable_extensions` (which imports imageio's tables and every Pillow plugin) or GDAL's
    driver list (which imports rasterio), each once: 0.3-0.7 s of a run's start-up otherwise,
    for every job of JPEGs and PNGs (issue 14).
    """

    def __init__(self, raster_path: bool):
        self.raster_path = raster_path
        self._photos: frozenset[str] | None = None
        self._geo: frozenset[str] | None = None

    def __contains__(self, ext: object) -> bool:
        from pipeline.sources import geo, rasters

        if ext in COMMON_EXTENSIONS or (self.raster_path and ext in rasters.EXTENSIONS):
            return True
        if self.raster_path and ext in geo.GEO_EXTENSIONS:
            if self._geo is None:
                self._geo = geo.extensions()
            if ext in self._geo:
                return True
        if self._photos is None:
            from pipeline.sources.photos import readable_extensions

            self._photos = readable_extensions()
        return ext in self._photos


def _route(path: str, cfg: InputConfig, only_rasters: bool) -> str:
    """``raster``, ``png16`` (a 16-bit PNG: a raster decoded whole) or ``photo``."""
    from pipeline.sources import geo, rasters

    if path.lower().endswith(".png"):
        # A URL's header costs a range read of its own: a PNG at a URL is checked from the
        # photo header's read instead (`_add_photo`, ImageInfo.bits)
        if storage.is_url(path):
            return "photo"
        return "png16" if rasters.png_bit_depth(path, cfg.storage_options) == 16 else "photo"
    if not (rasters.is_raster(path) or geo.is_geo_only(path)):
        return "photo"
    if only_rasters or not path.lower().endswith(_TIFF):
        return "raster"
    try:  # a TIFF among photos: an 8-bit one stays on the photo path, as before
        header = rasters.read_headers(path, storage_options=cfg.storage_options,
                                      planes="first")[0]
    except (ImageReadError, ConfigError):
        return "photo"  # Pillow may still read it; if not, the photo path says why
    return "photo" if header.dtype == "uint8" and header.count <= 4 else "raster"


_TIFF = (".tif", ".tiff")


def _add_photo(listing: Listing, cfg: InputConfig, preprocess: PreprocessConfig, path: str,
               name: str, raster_path: bool) -> None:
    from pipeline.sources.photos import mask_rule, read_header

    masking = mask_rule(cfg.mask, cfg.nodata)  # photos: band:N is refused here, in one line
    try:
        info, image_notes = read_header(path, name, len(listing.images), preprocess.scale,
                                        cfg.max_pixels, cfg.storage_options, masking)
    except ImageReadError as exc:
        listing.failed.append((path, str(exc)))
        return
    if info.bits == 16 and raster_path:  # a 16-bit PNG at a URL (`_route`): 16 bits kept
        _add_raster(listing, cfg, path, name, True)
        return
    listing.images.append(info)
    listing.notes.extend((path, note) for note in image_notes)


def _add_raster(listing: Listing, cfg: InputConfig, path: str, name: str,
                png16: bool) -> None:
    """A raster input's headers: one `ImageInfo` (and `RasterImage`) per image plane."""
    from pipeline import raster_job
    from pipeline.sources import geo, rasters

    how = "png16" if png16 else geo.route(path, cfg.storage_options)
    try:
        if how == "missing-extra":
            raise ImageReadError(f"{path}: reading this format needs rasterio, which is "
                                 f"not installed: {geo.INSTALL_HINT}")
        if how == "png16":
            headers = [rasters.read_png_header(path, name, cfg.max_pixels,
                                               cfg.storage_options)]
        elif how == "geo":  # issue 13: GDAL reads it and its georeferencing is kept
            headers = [geo.read_header(path, name, cfg.storage_options, cfg.apply_scale,
                                       cfg.level)]
        else:
            headers = rasters.read_headers(path, name, axes=cfg.axes, planes=cfg.planes,
                                           level=cfg.level, storage_options=cfg.storage_options)
    except ImageReadError as exc:
        listing.failed.append((path, str(exc).removeprefix(f"{path}: ")))
        return
    if how == "tiff-ungeoreferenced":
        listing.notes.append((path, geo.NOT_KEPT_NOTE))
    for header in headers:
        listing.images.append(_raster_info(header, len(listing.images), cfg.storage_options))
        listing.rasters[header.name] = raster_job.RasterImage(header, cfg.bands, cfg.mask,
                                                              cfg.nodata)
    if headers and getattr(headers[0], "note", None):
        listing.notes.append((path, headers[0].note))


def _raster_info(header: Any, index: int, storage_options: dict | None) -> ImageInfo:
    """What the run record and the report know of one raster plane."""
    return ImageInfo(index, header.path, header.name, header.width, header.height,
                     header.format.upper(), f"{header.count}x{header.dtype}",
                     size_bytes=header.size_bytes, mtime_ns=header.mtime_ns,
                     storage_options=storage_options if storage.is_url(header.path) else None)


def photos_as_rasters(listing: Listing, cfg: InputConfig) -> Listing:
    """The listing with every photo also read as a 3-band uint8 raster decoded whole
    (`rasters.photo_header`), for a collection-scope job that mixes photos and rasters: one
    fit needs one feature space, so the photos join the raster path in native units.

    A single-band raster among photos (a 16-bit grey PNG or TIFF) is read as 3 equal bands,
    as the photo path expands a grey photo to RGB, unless ``input.bands`` is given.
    """
    from pipeline import raster_job
    from pipeline.sources import rasters

    photos = [info for info in listing.images if info.name not in listing.rasters]
    if not photos:
        return listing
    readers = {}
    for name, image in listing.rasters.items():
        grey = cfg.bands is None and len(image.selected) == 1
        readers[name] = dataclasses.replace(image, bands=image.selected * 3) if grey else image
    for info in photos:
        readers[info.name] = raster_job.RasterImage(rasters.photo_header(info), cfg.bands,
                                                    cfg.mask, cfg.nodata)
    return dataclasses.replace(listing, rasters=readers)


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
