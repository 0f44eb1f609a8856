"""Photos: read a file's header (no pixels) and decode it to 8-bit RGB and its mask, with
Pillow and libjpeg-turbo (simplejpeg).

Header reading happens on the client and touches only metadata (Pillow reads the header on
``Image.open``; pixels are decoded by ``load``).  Decoding happens in tasks that carry the file
path and return ``uint8`` RGB pixels, so no pixels travel from the client.  A path may be a URL
(s3://, gs://, az://, http(s)://; see `pipeline.storage`): its header comes from range reads of
the object's first bytes, and the task that decodes it fetches the object itself.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import struct
import sys
import threading
import warnings
import zlib
from dataclasses import dataclass

import numpy as np
import simplejpeg
from PIL import Image, ImageCms, ImageFile, ImageOps

from pipeline import storage
from pipeline.errors import ConfigError, ImageReadError, StorageError
from pipeline.sources import ImageInfo

log = logging.getLogger(__name__)

_ROTATED = {5, 6, 7, 8}  # EXIF orientations that swap width and height
_EXIF_ORIENTATION = 0x0112


def readable_extensions() -> frozenset[str]:
    """Extensions (lower case, with dot) that imageio routes to Pillow and Pillow can open."""
    import imageio.config

    Image.init()
    openable = {ext for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN}
    routed = {e.extension.lower() for e in imageio.config.extension_list
              if "pillow" in e.priority}
    return frozenset(routed & openable)


# ---------------------------------------------------------------------------------------------
# Bounding every decode by input.max_pixels (issue 11)
#
# Pillow checks the size of every image it opens, and of the images embedded in containers
# (ICO, ICNS), against one process-wide limit, Image.MAX_IMAGE_PIXELS: it raises
# DecompressionBombError above twice that.  The package never changes it at import (that would
# disarm the check for every user of Pillow in the process).  Only while one of our reads runs
# is it set so that Pillow's checks, the only ones that see embedded images before they are
# decoded, refuse exactly what input.max_pixels refuses, and the user's value comes back after
# the last read.  Reads of one run share one limit; with several limits at once the lowest wins.

_LIMITS: list[int] = []
_LIMITS_LOCK = threading.Lock()
_PILLOW_LIMIT: list[float | None] = []  # the value to put back when the last read ends
_BOMB_PIXELS = re.compile(r"\((\d+) pixels\)")


@contextlib.contextmanager
def pixel_limit(max_pixels: int):
    """Within this block Pillow refuses any image, embedded ones included, over ``max_pixels``."""
    with _LIMITS_LOCK:
        if not _LIMITS:
            _PILLOW_LIMIT[:] = [Image.MAX_IMAGE_PIXELS]
        _LIMITS.append(max_pixels)
        Image.MAX_IMAGE_PIXELS = min(_LIMITS) / 2  # Pillow raises above 2 * MAX_IMAGE_PIXELS
    try:
        with warnings.catch_warnings():
            # Its warning (above half the limit) is not news: our own checks come first.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            yield
    finally:
        with _LIMITS_LOCK:
            _LIMITS.remove(max_pixels)
            Image.MAX_IMAGE_PIXELS = min(_LIMITS) / 2 if _LIMITS else _PILLOW_LIMIT[0]


def _bomb_reason(exc: Exception, header: tuple[int, int] | None, max_pixels: int) -> str:
    """Pillow refused an image inside the file (an icon's frame) that claims too many pixels."""
    found = _BOMB_PIXELS.search(str(exc))
    claims = f"claims {found.group(1)} pixels" if found else "claims too many pixels"
    said = f" (its header says {header[0]}x{header[1]})" if header else ""
    return (f"an image embedded in the file {claims}{said}, over input.max_pixels "
            f"({max_pixels}); refused without decoding; raise it if the file is trusted")


# ---------------------------------------------------------------------------------------------
# Masks (issue 12, section 3): which pixels of a photo are left out of everything


@dataclass(frozen=True)
class Masking:
    """What `decode_masked` masks in photos: ``alpha``, the fully transparent pixels (alpha 0)
    of files that have transparency; ``nodata``, the pixels of exactly that 8-bit sRGB colour."""

    alpha: bool = False
    nodata: tuple[int, int, int] | None = None


def mask_rule(mask: str, nodata: float | tuple[float, ...] | list | None) -> Masking:
    """The photos' `Masking` from ``input.mask`` and ``input.nodata``.

    ``auto`` and ``alpha`` mask transparent pixels, ``none`` keeps them (alpha dropped, as a
    photo without alpha).  ``nodata`` is one value for R, G and B, or three: a pixel of exactly
    that colour is masked.

    Raises
    ------
    ConfigError
        ``band:N`` (photos have no mask band), or a nodata that is no 8-bit colour.
    """
    if mask.startswith("band:"):
        raise ConfigError(f"input.mask: {mask} names a mask band, which only rasters have; "
                          "a photo's mask is its alpha channel: use auto, alpha or none")
    return Masking(alpha=mask in ("auto", "alpha"), nodata=_nodata_colour(nodata))


def _nodata_colour(nodata: float | tuple[float, ...] | list | None
                   ) -> tuple[int, int, int] | None:
    if nodata is None:
        return None
    values = [nodata] if isinstance(nodata, (int, float)) else list(nodata)
    shown = ", ".join(f"{v:g}" for v in values)
    shown = shown if len(values) == 1 else f"[{shown}]"
    if len(values) == 1:
        values = values * 3
    if len(values) != 3 or not all(float(v).is_integer() and 0 <= v <= 255 for v in values):
        raise ConfigError(f"input.nodata: {shown} is not an 8-bit colour; for photos give "
                          "one value 0-255 (R = G = B) or three (R, G, B), e.g. [0, 0, 0]")
    return (int(values[0]), int(values[1]), int(values[2]))


def has_transparency(im: Image.Image) -> bool:
    """Whether a file's header gives it transparency: an alpha channel, a tRNS / GIF
    transparent colour, or a palette with alpha (Pillow >= 10.1's ``has_transparency_data``)."""
    if im.mode in ("RGBA", "RGBa", "LA", "La", "PA") or "transparency" in im.info:
        return True
    return im.mode == "P" and getattr(im.palette, "mode", "") == "RGBA"


# ---------------------------------------------------------------------------------------------
# Headers


def read_header(path: str, name: str, index: int, scale: float, max_pixels: int,
                storage_options: dict | None = None,
                masking: "Masking | None" = None) -> tuple[ImageInfo, list[str]]:
    """Read one file's header (no pixel decoding); of an object, from its first bytes.

    ``masking`` (from `mask_rule`) says which pixels `decode_masked` masks: the transparent
    ones of a file whose header shows transparency, and those of the nodata colour.

    Returns
    -------
    info : ImageInfo
    notes : list of str
        What the report should say about the file: an animation or multi-page file (first
        frame used), a JPEG header warning, the library warnings reading it gave.

    Raises
    ------
    ImageReadError
        The file is missing, empty, not an image Pillow can open, or over ``max_pixels``.
    StorageError
        An object store could not be reached through every retry.
    """
    where = storage.Location(path, storage_options)
    remote = where.remote
    try:
        size, mtime_ns, regular = where.stat_file()
    except StorageError:
        raise
    except OSError as exc:
        raise ImageReadError(f"cannot open file ({exc.strerror or exc}); fix or remove it") \
            from exc
    if not regular:
        raise ImageReadError("not a regular file (a pipe, device or socket); remove it")
    if size == 0:
        raise ImageReadError("file is empty (0 bytes); fix or remove it")
    with pixel_limit(max_pixels), _library_noise() as noise:
        header = _open_header(path, storage_options, size, max_pixels)
    (width, height), fmt, mode, n_frames, orientation, notes, transparent, bits = header
    for note in noise:
        log.info("%s: %s", path, note)
    notes += noise
    if width < 1 or height < 1:
        raise ImageReadError(f"image has no pixels ({width}x{height}); remove it")
    if orientation in _ROTATED:
        width, height = height, width
    source_size = (width, height)
    width, height = scaled_size(width, height, scale)
    if width * height > max_pixels:
        raise ImageReadError(f"{width}x{height} = {width * height} pixels after "
                             f"preprocess.scale ({scale:g}) is over input.max_pixels "
                             f"({max_pixels}); lower the scale or raise max_pixels")
    masking = masking or Masking()
    info = ImageInfo(index, path, name, width, height, fmt, mode, n_frames, size, mtime_ns,
                     max_pixels, source_size, storage_options if remote else None,
                     alpha=masking.alpha and transparent, nodata=masking.nodata, bits=bits)
    if n_frames > 1:
        notes.insert(0, f"first frame of {n_frames} used")
    return info, notes


def _open_header(path: str, storage_options: dict | None, size: int,
                 max_pixels: int) -> tuple[tuple[int, int], str, str, int, int, list[str], bool]:
    """(stored size, format, mode, frames, EXIF orientation, notes, whether it has
    transparency, bits per sample) from the file's header.

    Any exception while reading it, whatever its type, refuses this one file (issue 11:
    Pillow raises NotImplementedError for some DDS files); a store that cannot be reached
    is not the file's fault and stops the run.
    """
    where = storage.Location(path, storage_options)
    try:
        with where.header_source(size) as source, _open_image(source, max_pixels) as im:
            bits = _bits_per_sample(im)  # first: reading further (EXIF) loads the tiles
            width, height = _stored_size(im)
            if width * height > max_pixels:  # before anything else reads further
                raise ImageReadError(_over_limit(width, height, max_pixels))
            frames = 1 if im.format == "PSD" else int(getattr(im, "n_frames", 1) or 1)
            notes = _jpeg_header_notes(im) if im.format in ("JPEG", "MPO") else []
            missing = _missing_decoder(im)
            if missing:
                raise ImageReadError(missing)
            return ((width, height), im.format or "?", im.mode, frames,
                    _orientation(im, where.remote), notes, has_transparency(im), bits)
    except (ImageReadError, StorageError):
        raise
    except Image.UnidentifiedImageError:
        raise ImageReadError(_unidentified(path, storage_options)) from None
    except Image.DecompressionBombError as exc:
        raise ImageReadError(_bomb_reason(exc, None, max_pixels)) from None
    except MemoryError:
        raise ImageReadError(f"not enough memory to read {_what(path, storage_options)} (an "
                             "icon decodes its image while opening); lower input.max_pixels "
                             "to refuse such files, or use a machine with more memory") from None
    except Exception as exc:
        raise ImageReadError(f"{_what(path, storage_options)} whose header Pillow cannot read "
                             f"({_exception_text(exc)}); fix or remove it") from exc


def _bits_per_sample(im: Image.Image) -> int:
    """16 for a 16-bit PNG (Pillow opens a 16-bit RGB or RGBA PNG as 8-bit ``RGB``/``RGBA``;
    its raw mode, ``RGB;16B``, says what is stored), else 8."""
    if im.format == "PNG":
        raw = next((tile.args for tile in getattr(im, "tile", ()) or ()), None)
        if isinstance(raw, str) and (raw.endswith(";16B") or raw == "I;16B"):
            return 16
    return 8


def _over_limit(width: int, height: int, max_pixels: int) -> str:
    return (f"{width}x{height} = {width * height} pixels is over input.max_pixels "
            f"({max_pixels}); refused from the header without decoding; raise it if the file "
            "is trusted")


@contextlib.contextmanager
def _open_image(source, max_pixels: int):
    """``Image.open``; when Pillow refuses the size itself, the plugin alone, for the size.

    Image.open checks the size against Pillow's limit (ours, see `pixel_limit`) only after
    the plugin read the header; opening with the plugin class reads the same header without
    that check, so the message can say how large the file claims to be.  Containers that
    decode an embedded image while opening (ICO) still meet Pillow's check on it.
    """
    try:
        im = Image.open(source)
    except Image.DecompressionBombError:
        fmt = _magic_format(_head_of(source))
        if fmt is None or fmt not in Image.OPEN:
            raise
        factory = Image.OPEN[fmt][0]
        with (open(source, "rb") if isinstance(source, str) else contextlib.nullcontext(source)) \
                as handle:
            handle.seek(0)
            im = factory(handle)
            raise ImageReadError(_over_limit(*_stored_size(im), max_pixels)) from None
    with im:
        yield im


def _head_of(source) -> bytes:
    if isinstance(source, str):
        with open(source, "rb") as handle:
            return handle.read(64)
    source.seek(0)
    return source.read(64)


def _stored_size(im: Image.Image) -> tuple[int, int]:
    """The size of the stored raster, before any EXIF orientation.

    Pillow (>= 11) reports a TIFF with orientation 5-8 with width and height already swapped
    and turns it on load; other formats report the stored size.  The TIFF tags say what is
    stored in every version (issue 11: swapping again squashed such TIFFs).
    """
    if im.format == "TIFF":
        tags = getattr(im, "tag_v2", {})
        width, height = tags.get(256), tags.get(257)
        if isinstance(width, int) and isinstance(height, int):
            return width, height
    return im.size


def _exception_text(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def scaled_size(width: int, height: int, scale: float) -> tuple[int, int]:
    """The working size for ``preprocess.scale`` (rounded, at least 1 pixel each way)."""
    if scale == 1.0:
        return width, height
    return max(1, round(width * scale)), max(1, round(height * scale))


def _orientation(im: Image.Image, remote: bool = False) -> int:
    if remote and im.format == "PNG" and "exif" not in im.info:
        # Pillow would fetch and decode the whole object looking for an eXIf chunk after the
        # pixels; one before them (where writers put it) is already in im.info.
        return 1
    try:
        if im.format == "PNG" and "exif" not in im.info and not _png_tags_after_pixels(im):
            # what Pillow's PNG getexif would find after decoding every pixel to read the
            # chunks that follow them (0.1 s per 2.5 Mpx: the listing of a PNG collection
            # decoded it whole, issue 14); there are none that could carry an orientation
            exif = Image.Image.getexif(im)
        else:
            exif = im.getexif()
        return int(exif.get(_EXIF_ORIENTATION, 1) or 1)
    except Exception:  # a broken EXIF block must not make a readable image unreadable
        return 1


# Chunks after a PNG's pixels that Pillow's getexif reads (EXIF, or XMP in a text chunk).
_PNG_TAG_CHUNKS = frozenset({b"eXIf", b"iTXt", b"tEXt", b"zTXt"})


def _png_tags_after_pixels(im: Image.Image) -> bool:
    """Whether a (local) PNG has a chunk that may carry EXIF or XMP after its first IDAT,
    read from the chunk headers alone (each chunk's data is skipped); True when the file
    cannot be walked, so that Pillow decides."""
    handle = im.fp
    if handle is None:
        return True
    where = handle.tell()
    try:
        handle.seek(8)  # the signature
        seen_pixels = False
        while True:
            head = handle.read(8)
            if len(head) < 8:
                return True
            length, kind = struct.unpack(">I4s", head)
            if kind == b"IEND":
                return False
            seen_pixels = seen_pixels or kind == b"IDAT"
            if seen_pixels and kind in _PNG_TAG_CHUNKS:
                return True
            handle.seek(length + 4, os.SEEK_CUR)  # the data and its CRC
    except (OSError, ValueError, struct.error):
        return True
    finally:
        handle.seek(where)


def _head(path: str, storage_options: dict | None = None) -> bytes | None:
    """The file's first 64 bytes, or None when they cannot be read."""
    try:
        with storage.Location(path, storage_options).open_read() as handle:
            return handle.read(64)
    except (OSError, StorageError):
        return None


# Signatures of the formats whose files a message should name (issue 11: a PNG whose header
# Pillow cannot parse is a broken PNG, not "no image format").
_MAGIC = ((b"\x89PNG\r\n\x1a\n", "PNG"), (b"GIF87a", "GIF"), (b"GIF89a", "GIF"),
          (b"II*\0", "TIFF"), (b"MM\0*", "TIFF"), (b"II+\0", "TIFF"), (b"MM\0+", "TIFF"),
          (b"\xff\xd8\xff", "JPEG"), (b"BM", "BMP"), (b"8BPS", "PSD"), (b"icns", "ICNS"),
          (b"\0\0\1\0", "ICO"), (b"\0\0\2\0", "CUR"), (b"DDS ", "DDS"), (b"%!PS", "EPS"),
          (b"\xc5\xd0\xd3\xc6", "EPS"), (b"\xd7\xcd\xc6\x9a", "WMF"),
          (b"\x01\0\0\0", "WMF"), (b"\0\0\0\x0cjP  \r\n\x87\n", "JPEG2000"),
          (b"\xffO\xffQ", "JPEG2000"), (b"qoif", "QOI"), (b"SIMPLE  =", "FITS"))
_PLUGIN = {"JPEG2000": "JPEG2000", "WEBP": "WEBP", "AVIF": "AVIF"}


def _magic_format(head: bytes | None) -> str | None:
    """The format a file's first bytes announce (Pillow's format name), or None."""
    if not head:
        return None
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    if head[4:8] == b"ftyp" and head[8:12] in (b"avif", b"avis"):
        return "AVIF"
    return next((fmt for magic, fmt in _MAGIC if head.startswith(magic)), None)


def _what(path: str, storage_options: dict | None) -> str:
    fmt = _magic_format(_head(path, storage_options))
    return _a(fmt) if fmt else "a file"


def _a(fmt: str) -> str:
    return f"{'an' if fmt[0] in 'AEIOU' else 'a'} {fmt} file"


def _unidentified(path: str, storage_options: dict | None) -> str:
    """Why no Pillow plugin opened the file: what it is, and what went wrong."""
    head = _head(path, storage_options)
    fmt = _magic_format(head)
    if head is None:
        return "not an image file (its first bytes cannot be read); fix or remove it"
    if fmt is None:
        return f"not an image file ({_describe_start(head)}); fix or remove it"
    if fmt not in Image.OPEN:
        return (f"{_a(fmt)}, but this install has no {fmt} decoder (Pillow was built "
                f"without {_PLUGIN.get(fmt, fmt)} support); install one, or convert the file")
    raster = _raster_note(path, storage_options) if fmt == "TIFF" else None
    if raster:
        return raster
    reason = _plugin_error(fmt, path, storage_options)
    return (f"{_a(fmt)} whose header Pillow cannot parse ({reason}); it is damaged or a "
            "variant Pillow does not read; fix or remove it")


def _raster_note(path: str, storage_options: dict | None) -> str | None:
    """A valid N-band TIFF the photo path cannot read is not damaged: say where it is read."""
    from pipeline.sources import rasters  # tifffile, only for TIFFs Pillow refused

    try:
        header = rasters.read_headers(path, storage_options=storage_options)[0]
    except Exception:  # noqa: BLE001 - not a raster tifffile reads either: Pillow's reason
        return None
    return (f"a TIFF raster of {header.count} band(s), {header.dtype}, which the photo path "
            "(8-bit RGB through Pillow) cannot read; rasters are read in windows in a job "
            "whose inputs are all rasters (TIFF, zarr, GDAL formats), with output.format "
            "auto, tiff, cog or zarr")


def _plugin_error(fmt: str, path: str, storage_options: dict | None) -> str:
    """What the format's own plugin says about the file (Image.open hides it)."""
    try:
        with storage.Location(path, storage_options).open_read() as handle:
            Image.OPEN[fmt][0](handle)
    except Exception as exc:  # noqa: BLE001 - its message is what we want
        return _exception_text(exc)
    return "no reason given"


def _describe_start(head: bytes) -> str:
    """How the file starts, for a message: text is quoted up to its first line end."""
    line = head.split(b"\n", 1)[0].strip()[:32]
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError:
        text = ""
    if text and text.isprintable():
        kind = "a web page" if text.lower().startswith(("<!doctype html", "<html")) else "text"
        return f"it starts with {text!r}: {kind}, not image data"
    return f"it starts with {head[:8]!r}, which no image format Pillow reads starts with"


def _missing_decoder(im: Image.Image) -> str | None:
    """Why this install cannot decode a file whose header it read, naming the decoder."""
    fmt = im.format
    if fmt == "EPS":
        from PIL import EpsImagePlugin

        if not EpsImagePlugin.has_ghostscript():
            return ("an EPS (PostScript) file: decoding it needs Ghostscript (gs), which is not "
                    "installed; install Ghostscript, or convert the file to PNG")
    elif isinstance(im, ImageFile.StubImageFile):
        if getattr(im, "_handler", None) is None:  # what StubImageFile.load tests
            where = " (Pillow draws WMF/EMF only on Windows)" if fmt in ("WMF", "EMF") else ""
            return (f"{_a(fmt)} ({im.format_description}): this install has no decoder "
                    f"for it{where}; convert the file to PNG")
    elif fmt == "TIFF":
        compression = im.info.get("compression", "raw")
        if compression in _OPTIONAL_CODECS and not _tiff_codec(compression):
            return (f"a TIFF file compressed with {compression}: this install's libtiff has no "
                    f"{compression} codec; convert the file (e.g. to LZW or deflate), or "
                    "install a libtiff built with it")
    return None


# libtiff codecs a build may leave out (LZW, PackBits, CCITT... are always there); each of
# these can write as well as read, so writing a tiny file tells whether it is there.
_OPTIONAL_CODECS = ("webp", "zstd", "lzma", "jpeg", "tiff_adobe_deflate", "tiff_deflate")
_CODECS: dict[str, bool] = {}


def _tiff_codec(compression: str) -> bool:
    """Whether libtiff can code ``compression`` here: it writes a 1x1 file with it (cached).

    libtiff configures each codec for reading and writing together; a missing one says so on
    stderr, which `_library_noise` keeps out of the user's terminal.
    """
    if compression not in _CODECS:
        try:
            probe = Image.new("RGB", (8, 8))
            with _library_noise():
                probe.save(io.BytesIO(), "TIFF", compression=compression)
            _CODECS[compression] = True
        except Exception:  # noqa: BLE001 - any failure: the codec is not there
            _CODECS[compression] = False
    return _CODECS[compression]


# ---------------------------------------------------------------------------------------------
# Library warnings while listing (issue 11: they named no file)


@contextlib.contextmanager
def _library_noise():
    """Collect Python warnings and C-library lines on stderr (libtiff's) into a list.

    Only used while listing, one file at a time: redirecting file descriptor 2 would take
    other threads' output too, so decoding tasks never do it.
    """
    notes: list[str] = []
    with warnings.catch_warnings(record=True) as caught, _stderr_lines() as lines:
        warnings.simplefilter("always")
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        yield notes
    texts = [f"{w.category.__name__}: {w.message}" for w in caught] + lines
    for text in dict.fromkeys(" ".join(t.split()) for t in texts if t.strip()):
        notes.append(f"library warning: {text}")


@contextlib.contextmanager
def _stderr_lines():
    """What C code writes to file descriptor 2 inside the block, as lines.  Only in the main
    thread (the client's listing): a driver task lists on a worker, among other tasks."""
    import tempfile

    if threading.current_thread() is not threading.main_thread():
        yield []
        return
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no real stderr (embedded interpreters)
        yield []
        return
    lines: list[str] = []
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            yield lines
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            lines += capture.read(1 << 16).decode("utf-8", "replace").splitlines()


# ---------------------------------------------------------------------------------------------
# JPEG: warnings about header segments are not damage (issue 11)


def _jpeg_scan_start(data: bytes) -> int | None:
    """Offset just after the first SOS segment's header (where entropy-coded data starts)."""
    pos = 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            pos += 1  # stray bytes between segments: libjpeg skips them (with a warning)
            continue
        marker = data[pos + 1]
        if marker == 0xFF or 0xD0 <= marker <= 0xD8 or marker == 0x01:
            pos += 1 if marker == 0xFF else 2
            continue
        (length,) = struct.unpack(">H", data[pos + 2:pos + 4])
        if marker == 0xDA:
            return pos + 2 + length if pos + 2 + length <= len(data) else None
        pos += 2 + length
    return None


def _jpeg_header_notes(im: Image.Image) -> list[str]:
    """libjpeg's warning about the segments before the first SOS marker, as a report note."""
    prefix = _jpeg_prefix(im)
    if prefix is None:
        return []
    try:
        simplejpeg.decode_jpeg_header(prefix, strict=True)
    except ValueError as exc:
        return [f"JPEG header: {exc} (libjpeg); ignored: it is before the image data, which "
                "is intact"]
    return []


def _jpeg_prefix(im: Image.Image) -> bytes | None:
    """The file's bytes up to the end of its first SOS header (read in 64 KiB steps)."""
    if im.fp is None or im.fp.closed:
        return None
    here = im.fp.tell()
    try:
        im.fp.seek(0)
        data = b""
        while len(data) < (16 << 20):
            block = im.fp.read(1 << 16)
            if not block:
                return None
            data += block
            end = _jpeg_scan_start(data)
            if end is not None:
                return data[:end]
        return None
    finally:
        im.fp.seek(here)


def _jpeg_without_header_noise(data: bytes) -> bytes | None:
    """The file with the segments before its first SOS rewritten cleanly: bytes between
    segments dropped, ICC profile segments (APP2) dropped (an unusable profile is ignored
    anyway).  None when it has no SOS or is not cleaner."""
    end = _jpeg_scan_start(data)
    if end is None:
        return None
    out, pos = [data[:2]], 2
    while pos < end:
        if data[pos] != 0xFF or data[pos + 1] in (0xFF, 0x01) or 0xD0 <= data[pos + 1] <= 0xD8:
            pos += 1
            continue
        (length,) = struct.unpack(">H", data[pos + 2:pos + 4])
        segment = data[pos:pos + 2 + length]
        if not (data[pos + 1] == 0xE2 and segment[4:16] == b"ICC_PROFILE\0"):
            out.append(segment)
        pos += 2 + length
    cleaned = b"".join(out) + data[end:]
    return cleaned if len(cleaned) < len(data) else None


# ---------------------------------------------------------------------------------------------
# Decoding (runs inside dask tasks)


def decode(info: ImageInfo) -> np.ndarray:
    """Decode one image to RGB pixels at its working size, without its mask.

    Returns
    -------
    pixels : ndarray of shape (height, width, 3), uint8
        As from `decode_masked`; masked pixels hold their stored colour.
    """
    return decode_masked(info)[0]


def decode_masked(info: ImageInfo) -> tuple[np.ndarray, np.ndarray | None]:
    """Decode one image to RGB pixels at its working size, and the pixels it masks.

    A pixel is masked when it is fully transparent (alpha 0; ``info.alpha``) or of the
    nodata colour (``info.nodata``); a partly transparent pixel keeps its stored colour.
    With ``preprocess.scale`` the colours are resized with their alpha (Pillow premultiplies
    it), so a transparent pixel's stored colour reaches no other pixel; a resized pixel is
    masked when every pixel it covers is.

    Returns
    -------
    pixels : ndarray of shape (height, width, 3), uint8
        First frame, EXIF-oriented, ICC-converted to sRGB, alpha dropped, resized.
    masked : ndarray of shape (height, width), bool, or None
        True where a pixel is masked; None when none is (always for an image whose header
        shows no transparency and no input.nodata: its mask is never computed).

    Raises
    ------
    ImageReadError
        The file changed since listing, or its data is damaged: truncated, or damage that
        Pillow would silently paint over (see `_load_checked`).
    """
    expected = info.source_size or (info.width, info.height)
    try:
        source = storage.Location(info.path, info.storage_options).fetch()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # listing already reported them (issue 11)
            with pixel_limit(info.max_pixels), Image.open(source) as im:
                # No seek: a file opens at its first frame, which is not frame 0 for PSD.
                plain = _plain_jpeg_pixels(im, info, expected)
                if plain is not None:
                    return plain, None
                rgb = _to_rgb(_load_checked(im, info.max_pixels), info.path, info.alpha)
    except ImageReadError as exc:
        raise ImageReadError(f"{info.path}: {exc}") from None
    except StorageError:
        raise  # the store is unreachable: the run fails, this image is not broken
    except OSError as exc:
        raise ImageReadError(f"{info.path}: {_os_reason(exc)}") from exc
    except MemoryError:
        raise ImageReadError(f"{info.path}: not enough memory to decode it ({expected[0]}x"
                             f"{expected[1]} pixels); lower input.max_pixels to refuse such "
                             "files, or use a machine with more memory") from None
    except Image.DecompressionBombError as exc:
        raise ImageReadError(f"{info.path}: {_bomb_reason(exc, expected, info.max_pixels)}") \
            from None
    except Exception as exc:  # Pillow raises many types for damaged data
        raise ImageReadError(f"{info.path}: cannot decode image ({_exception_text(exc)}); fix "
                             "or remove it") from exc
    if rgb.size != expected:
        # Never "fixed" by resizing (issue 11: a TIFF turned twice came out squashed).
        raise ImageReadError(f"{info.path}: decoded size {rgb.width}x{rgb.height} differs "
                             f"from the {expected[0]}x{expected[1]} its header gave; the file "
                             "changed since it was listed, or its header is wrong; rerun, or "
                             "fix or remove it")
    if info.maskable:
        return _masked_pixels(rgb, info)
    if rgb.size != (info.width, info.height):  # preprocess.scale
        rgb = rgb.resize((info.width, info.height), _resample(rgb.width, info.width))
    return np.asarray(rgb), None


def _masked_pixels(im: Image.Image, info: ImageInfo) -> tuple[np.ndarray, np.ndarray | None]:
    """`decode_masked`'s result from the decoded RGB or RGBA image (source size)."""
    values = np.asarray(im)
    alpha = values[..., 3] if values.shape[2] == 4 else None
    if info.nodata is not None:
        colour = (values[..., :3] == np.asarray(info.nodata, np.uint8)).all(axis=2)
        alpha = np.where(colour, np.uint8(0), np.uint8(255) if alpha is None else alpha)
    if im.size != (info.width, info.height):  # preprocess.scale
        source = Image.fromarray(values[..., :3]) if alpha is None else \
            Image.fromarray(np.dstack([values[..., :3], alpha]), "RGBA")
        values = np.asarray(source.resize((info.width, info.height),
                                          _resample(im.width, info.width)))
        alpha = values[..., 3] if alpha is not None else None
    pixels = np.ascontiguousarray(values[..., :3])
    if alpha is None:
        return pixels, None
    masked = alpha == 0
    return pixels, masked if masked.any() else None


_TRUNCATED = ("file is truncated: its image data ends early (an incomplete download or copy?); "
              "fix or remove it")


def _os_reason(exc: OSError) -> str:
    """A message for an OSError met while decoding: the file system's, or Pillow's."""
    if isinstance(exc, FileNotFoundError):
        return "file disappeared after it was listed (moved or deleted?); rerun"
    if isinstance(exc, IsADirectoryError):
        return "is now a folder, not an image file; rerun"
    if isinstance(exc, PermissionError):
        return "permission denied; make the file readable, then rerun"
    if exc.errno is not None:
        return f"cannot read file ({exc.strerror or exc}); fix it, then rerun"
    if str(exc).startswith("image file is truncated"):
        return _TRUNCATED
    return f"cannot decode image ({exc}); fix or remove it"


def _load_checked(im: Image.Image, max_pixels: int) -> Image.Image:
    """The first frame, decoded and EXIF-oriented, refusing damage Pillow would paint over.

    Pillow decodes two kinds of damaged file without an error: a JPEG whose scan is corrupt
    (libjpeg warns, then paints every later block flat grey) and a PNG whose compressed data
    ends cleanly before the last row (the missing rows stay black).  We detect both from the
    coded data, never from the pixels, so letterboxed or single-colour images always pass.
    """
    width, height = im.size
    if width * height > max_pixels:  # the file changed since listing, or a frame is larger
        raise ImageReadError(_over_limit(width, height, max_pixels))
    if im.format in ("JPEG", "MPO"):
        data = _read_all(im)
        pixels = _jpeg_strict(data, im.mode)
        if pixels is not None:
            decoded = Image.fromarray(pixels if im.mode == "RGB" else pixels[..., 0])
            decoded.info.update(im.info)  # the ICC profile
            return _orient(decoded, _orientation(im))
    im.load()
    if im.format == "PNG":
        _check_png_complete(im)
    return ImageOps.exif_transpose(im)


def _plain_jpeg_pixels(im: Image.Image, info: ImageInfo,
                       expected: tuple[int, int]) -> np.ndarray | None:
    """libjpeg-turbo's pixels themselves when nothing is left to do to them: an RGB JPEG at
    its stored orientation, without an ICC profile, neither masked nor resized, checked for
    damage as `_load_checked` checks it.  The general path gives the same pixels after two
    copies, into a Pillow image and back (0.5 s of the threads' time per 100 Mpx, issue 14).
    None: take the general path."""
    width, height = im.size
    if (im.format not in ("JPEG", "MPO") or im.mode != "RGB" or info.maskable
            or im.info.get("icc_profile") or (width, height) != expected
            or (info.width, info.height) != expected or width * height > info.max_pixels
            or _orientation(im) != 1):
        return None
    pixels = _jpeg_strict(_read_all(im), im.mode)
    if pixels is None or pixels.shape != (height, width, 3):
        return None
    return pixels


def _read_all(im: Image.Image) -> bytes:
    """The whole file (Pillow closes its own handle once a single-frame image is loaded)."""
    if im.fp is not None and not im.fp.closed:
        im.fp.seek(0)
        return im.fp.read()
    with open(im.filename, "rb") as handle:
        return handle.read()


# libjpeg's own words for data damage (jerror.h: JWRN_HIT_MARKER, JWRN_HUFF_BAD_CODE,
# JWRN_EXTRANEOUS_DATA, JWRN_MUST_RESYNC, JWRN_JPEG_EOF...).  Other warnings (an unknown JFIF
# revision, say) are not damage.
_JPEG_DAMAGE = ("Corrupt JPEG data", "Premature end of JPEG file")


def _decode_jpeg_strict(data: bytes, colorspace: str) -> np.ndarray:
    """simplejpeg's strict decode, where only warnings after the first SOS marker count.

    libjpeg's words are the same for a stray byte between two header segments and in the
    scan ("extraneous bytes before marker"), so the warning is placed by decoding again with
    the header segments rewritten cleanly: if that passes, the warning was about the header,
    which `_jpeg_header_notes` reported while listing, and the image data is intact.
    """
    try:
        return simplejpeg.decode_jpeg(data, colorspace=colorspace, strict=True)
    except ValueError:
        cleaned = _jpeg_without_header_noise(data)
        if cleaned is None:
            raise
    return simplejpeg.decode_jpeg(cleaned, colorspace=colorspace, strict=True)


def _jpeg_strict(data: bytes, mode: str) -> np.ndarray | None:
    """Decode a JPEG with libjpeg-turbo, treating its data-damage warnings as errors.

    Pillow silences libjpeg's warnings; simplejpeg (same library, bit-identical output for
    the same file) raises them.  Returns None when the file needs Pillow (CMYK, or an error
    that is not damage); CMYK files are still checked for damage here.
    """
    colorspace = {"RGB": "RGB", "L": "GRAY", "CMYK": "CMYK"}.get(mode)
    if colorspace is None:
        return None
    try:
        pixels = _decode_jpeg_strict(data, colorspace)
    except ValueError as exc:
        message = str(exc)
        if message.startswith("Premature end of JPEG file"):
            raise ImageReadError(_TRUNCATED) from None
        if message.startswith(_JPEG_DAMAGE):
            grey = "; the rest would be painted flat grey" if "premature end" in message else ""
            raise ImageReadError(f"damaged JPEG data (libjpeg: {message}){grey}; fix or "
                                 "remove it") from None
        return None
    return None if mode == "CMYK" else pixels


_TRANSPOSE = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
              4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE,
              6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
              8: Image.Transpose.ROTATE_90}  # as ImageOps.exif_transpose


def _orient(im: Image.Image, orientation: int) -> Image.Image:
    method = _TRANSPOSE.get(orientation)
    if method is None:
        return im
    oriented = im.transpose(method)
    oriented.info.update(im.info)
    return oriented


_PNG_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}  # colour type -> samples per pixel
_ADAM7 = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2),
          (0, 1, 1, 2))  # (x0, y0, dx, dy) of each interlace pass


def _check_png_complete(im: Image.Image) -> None:
    """Refuse a PNG whose pixel data ends before the last row.

    Undecoded rows stay zero, so a last row that is not all zero bytes proves the data was
    complete (the common case costs nothing); otherwise, and for interlaced files, the
    compressed data is inflated again and its length compared with what the header needs.
    """
    width, height = im.size
    interlaced = bool(im.info.get("interlace"))
    if not interlaced and any(im.crop((0, height - 1, width, height)).tobytes()):
        return
    header, chunks = _png_idat(_read_all(im))
    bits, colour_type = header[8], header[9]
    bits_per_pixel = bits * _PNG_CHANNELS.get(colour_type, 1)

    def row_bytes(n: int) -> int:
        return 1 + (n * bits_per_pixel + 7) // 8

    if interlaced:
        passes = [((width - x0 + dx - 1) // dx, (height - y0 + dy - 1) // dy)
                  for x0, y0, dx, dy in _ADAM7]
        expected = sum(h * row_bytes(w) for w, h in passes if w > 0 and h > 0)
    else:
        expected = height * row_bytes(width)
    found = _inflated_size(chunks, expected)
    if found < expected:
        where = (f"after {found // row_bytes(width)} of {height} rows" if not interlaced
                 else f"after {found} of {expected} bytes")
        raise ImageReadError(f"damaged PNG data: the pixel data ends {where}; the rest would "
                             "be painted black; fix or remove it")


def _png_idat(data: bytes) -> tuple[bytes, list[memoryview]]:
    """The IHDR payload and the IDAT payloads of a PNG file."""
    view, pos, header, chunks = memoryview(data), 8, b"", []
    while pos + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        payload = view[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            header = bytes(payload)
        elif kind == b"IDAT":
            chunks.append(payload)
        elif kind == b"IEND":
            break
        pos += 12 + length
    return header, chunks


def _inflated_size(chunks: list[memoryview], limit: int) -> int:
    """Bytes the zlib stream in ``chunks`` inflates to (counting stops at ``limit``)."""
    stream, total = zlib.decompressobj(), 0
    try:
        for chunk in chunks:
            pending = bytes(chunk)
            while pending and total < limit and not stream.eof:
                total += len(stream.decompress(pending, 1 << 20))
                pending = stream.unconsumed_tail
            if total >= limit or stream.eof:
                break
    except zlib.error:
        pass  # a broken stream: what inflated so far is what there is
    return total


def _resample(src: int, dst: int) -> Image.Resampling:
    # BOX averages the source pixels a target pixel covers: INTER_AREA's behaviour for shrinking.
    return Image.Resampling.BOX if dst < src else Image.Resampling.BILINEAR


def _to_rgb(im: Image.Image, path: str = "", keep_alpha: bool = False) -> Image.Image:
    """8-bit sRGB; with ``keep_alpha`` RGBA when the image has transparency (the colours as
    without it: alpha is carried beside them, never composited)."""
    alpha = _alpha(im) if keep_alpha else None
    rgb = _to_rgb_only(im, path)
    if alpha is not None:
        rgb = rgb.copy() if rgb is im else rgb
        rgb.putalpha(alpha)
    return rgb


def _alpha(im: Image.Image) -> Image.Image | None:
    """The image's alpha as an 8-bit "L" image (0: fully transparent), or None."""
    if im.mode in ("RGBA", "RGBa", "LA", "La", "PA"):
        return im.getchannel("A")
    if not has_transparency(im):
        return None
    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):  # a tRNS grey value
        opaque = np.asarray(im) != im.info["transparency"]
        return Image.fromarray(opaque.astype(np.uint8) * np.uint8(255))
    return im.convert("RGBA").getchannel("A")  # a tRNS or GIF colour, a palette with alpha


def _to_rgb_only(im: Image.Image, path: str = "") -> Image.Image:
    icc = im.info.get("icc_profile")
    if icc and im.mode in ("RGB", "RGBA", "CMYK", "L"):
        im = _icc_to_srgb(im, icc, path)
    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        values = np.asarray(im)
        if im.mode == "F":
            values = np.clip(values, 0.0, 1.0) * 255.0 if values.max() <= 1.0 else values
        else:
            # Always the top 8 bits (issue 11: shifting only when the maximum exceeded 255
            # put two frames differing in one pixel in different units).
            values = values.astype(np.int64) >> 8
        grey = np.clip(values, 0, 255).astype(np.uint8)
        return Image.fromarray(np.repeat(grey[..., None], 3, axis=2))
    if im.mode == "P" or im.mode == "PA":
        im = im.convert("RGBA")
    return im if im.mode == "RGB" else im.convert("RGB")


def _icc_to_srgb(im: Image.Image, icc: bytes, path: str = "") -> Image.Image:
    try:
        import io

        source = ImageCms.ImageCmsProfile(io.BytesIO(icc))
        if "srgb" in (ImageCms.getProfileDescription(source) or "").lower():
            return im
        mode = "RGB" if im.mode in ("RGB", "RGBA", "CMYK") else "L"
        out = ImageCms.profileToProfile(im, source, ImageCms.createProfile("sRGB"),
                                        outputMode=mode if im.mode != "L" else "RGB")
        return out if out is not None else im
    except (ImageCms.PyCMSError, OSError, ValueError, TypeError) as exc:
        log.warning("%s: ignoring an unusable ICC profile (%s)", path or "an image", exc)
        return im
