"""Photos: read a file's header (no pixels) and decode it to 8-bit RGB, with Pillow and
libjpeg-turbo (simplejpeg).

Header reading happens on the client and touches only metadata (Pillow reads the header on
``Image.open``; pixels are decoded by ``load``).  Decoding happens in tasks that carry the file
path and return ``uint8`` RGB pixels, so no pixels travel from the client.  A path may be a URL
(s3://, gs://, az://, http(s)://; see `pipeline.storage`): its header comes from range reads of
the object's first bytes, and the task that decodes it fetches the object itself.
"""

from __future__ import annotations

import logging
import struct
import warnings
import zlib

import numpy as np
import simplejpeg
from PIL import Image, ImageCms, ImageOps

from pipeline import storage
from pipeline.errors import ImageReadError, StorageError
from pipeline.sources import ImageInfo

log = logging.getLogger(__name__)

# We enforce input.max_pixels ourselves, from the header, before any decoding.
Image.MAX_IMAGE_PIXELS = None
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
# Headers


def read_header(path: str, name: str, index: int, scale: float, max_pixels: int,
                storage_options: dict | None = None) -> tuple[ImageInfo, str | None]:
    """Read one file's header (no pixel decoding); of an object, from its first bytes.

    Returns
    -------
    info : ImageInfo
    note : str or None
        Something the report should say (an animation or multi-page file: first frame used).

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
    try:
        with where.header_source(size) as source, Image.open(source) as im:
            width, height = im.size
            if width * height > max_pixels:  # before anything else reads further
                raise ImageReadError(f"{width}x{height} = {width * height} pixels is over "
                                     f"input.max_pixels ({max_pixels}); refused from the "
                                     "header without decoding; raise it if the file is trusted")
            fmt, mode = im.format or "?", im.mode
            n_frames = int(getattr(im, "n_frames", 1) or 1)
            orientation = _orientation(im, remote)
    except Image.UnidentifiedImageError:
        raise ImageReadError(f"not an image file ({_first_bytes(path, storage_options)}); fix "
                             "or remove it") from None
    except (ImageReadError, StorageError):
        raise
    except (OSError, ValueError, SyntaxError, struct.error, EOFError) as exc:
        raise ImageReadError(f"cannot read image header ({exc}); fix or remove it") from exc
    if width < 1 or height < 1:
        raise ImageReadError(f"image has no pixels ({width}x{height}); remove it")
    if orientation in _ROTATED:
        width, height = height, width
    width, height = scaled_size(width, height, scale)
    if width * height > max_pixels:
        raise ImageReadError(f"{width}x{height} = {width * height} pixels after "
                             f"preprocess.scale ({scale:g}) is over input.max_pixels "
                             f"({max_pixels}); lower the scale or raise max_pixels")
    info = ImageInfo(index, path, name, width, height, fmt, mode, n_frames, size, mtime_ns,
                     storage_options if remote else None)
    note = f"first frame of {n_frames} used" if n_frames > 1 else None
    return info, note


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
        return int(im.getexif().get(_EXIF_ORIENTATION, 1) or 1)
    except Exception:  # a broken EXIF block must not make a readable image unreadable
        return 1


def _first_bytes(path: str, storage_options: dict | None = None) -> str:
    """How the file starts, for a message: text is quoted up to its first line end."""
    try:
        with storage.Location(path, storage_options).open_read() as handle:
            head = handle.read(64)
    except (OSError, StorageError):
        return "its first bytes cannot be read"
    line = head.split(b"\n", 1)[0].strip()[:32]
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError:
        text = ""
    if text and text.isprintable():
        kind = "a web page" if text.lower().startswith(("<!doctype html", "<html")) else "text"
        return f"it starts with {text!r}: {kind}, not image data"
    return f"it starts with {head[:8]!r}, which no image format Pillow reads starts with"


# ---------------------------------------------------------------------------------------------
# Decoding (runs inside dask tasks)


def decode(info: ImageInfo) -> np.ndarray:
    """Decode one image to RGB pixels at its working size.

    Returns
    -------
    pixels : ndarray of shape (height, width, 3), uint8
        First frame, EXIF-oriented, ICC-converted to sRGB, alpha dropped, resized.

    Raises
    ------
    ImageReadError
        The file changed since listing, or its data is damaged: truncated, or damage that
        Pillow would silently paint over (see `_load_checked`).
    """
    try:
        source = storage.Location(info.path, info.storage_options).fetch()
        with Image.open(source) as im, warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Pillow's EXIF/ICC chatter is not the user's problem
            im.seek(0)
            rgb = _to_rgb(_load_checked(im))
    except ImageReadError as exc:
        raise ImageReadError(f"{info.path}: {exc}") from None
    except StorageError:
        raise  # the store is unreachable: the run fails, this image is not broken
    except OSError as exc:
        raise ImageReadError(f"{info.path}: {_os_reason(exc)}") from exc
    except MemoryError:
        raise ImageReadError(f"{info.path}: not enough memory to decode it ({info.width}x"
                             f"{info.height} pixels); lower input.max_pixels to refuse such "
                             "files, or use a machine with more memory") from None
    except Exception as exc:  # Pillow raises many types for damaged data
        raise ImageReadError(f"{info.path}: cannot decode image ({exc}); fix or remove it") \
            from exc
    if (rgb.width, rgb.height) != (info.width, info.height):
        rgb = rgb.resize((info.width, info.height), _resample(rgb.width, info.width))
    pixels = np.asarray(rgb)
    if pixels.shape != (info.height, info.width, 3):
        raise ImageReadError(f"{info.path}: decoded size {pixels.shape[1]}x{pixels.shape[0]} "
                             f"differs from its header ({info.width}x{info.height}); the file "
                             "changed during the run; rerun")
    return pixels


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


def _load_checked(im: Image.Image) -> Image.Image:
    """The first frame, decoded and EXIF-oriented, refusing damage Pillow would paint over.

    Pillow decodes two kinds of damaged file without an error: a JPEG whose scan is corrupt
    (libjpeg warns, then paints every later block flat grey) and a PNG whose compressed data
    ends cleanly before the last row (the missing rows stay black).  We detect both from the
    coded data, never from the pixels, so letterboxed or single-colour images always pass.
    """
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
        pixels = simplejpeg.decode_jpeg(data, colorspace=colorspace, strict=True)
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


def _to_rgb(im: Image.Image) -> Image.Image:
    icc = im.info.get("icc_profile")
    if icc and im.mode in ("RGB", "RGBA", "CMYK", "L"):
        im = _icc_to_srgb(im, icc)
    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        values = np.asarray(im)
        if im.mode == "F":
            values = np.clip(values, 0.0, 1.0) * 255.0 if values.max() <= 1.0 else values
        else:
            values = values.astype(np.int64) >> 8 if values.max() > 255 else values
        grey = np.clip(values, 0, 255).astype(np.uint8)
        return Image.fromarray(np.repeat(grey[..., None], 3, axis=2))
    if im.mode == "P" or im.mode == "PA":
        im = im.convert("RGBA")
    return im if im.mode == "RGB" else im.convert("RGB")


def _icc_to_srgb(im: Image.Image, icc: bytes) -> Image.Image:
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
        log.warning("ignoring an unusable ICC profile (%s)", exc)
        return im
