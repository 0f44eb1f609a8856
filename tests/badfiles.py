"""Write bad and odd input files for real, each made in code from a small valid image.

Every builder takes the path to write and returns it (as ``str``).  The broken files are made
the way they occur in real collections: a download that stopped, an HTML error page saved
under a photo's name, a disk sector gone bad mid-scan, an encoder that gave up early, a header
that lies about the size.  Nothing here is committed as a binary.
"""

from __future__ import annotations

import io
import os
import struct
import zlib

import numpy as np
from PIL import Image

# A photo-like test picture: smooth gradients plus a little noise, so JPEG scans are long
# enough to damage in the middle and k-means has real work.
_EXIF_ORIENTATION = 0x0112


def photo(height: int = 48, width: int = 64, seed: int = 0) -> np.ndarray:
    """ndarray of shape (height, width, 3), uint8: gradients, a disc and mild noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    pixels = np.empty((height, width, 3), np.float64)
    pixels[..., 0] = 40 + 180 * x / max(width - 1, 1)
    pixels[..., 1] = 200 - 150 * y / max(height - 1, 1)
    pixels[..., 2] = 90 + 60 * ((x - width / 2) ** 2 + (y - height / 2) ** 2 < (height / 3) ** 2)
    pixels += rng.normal(0, 4, pixels.shape)
    return np.clip(np.rint(pixels), 0, 255).astype(np.uint8)


def _write(path, data: bytes) -> str:
    os.makedirs(os.path.dirname(str(path)) or ".", exist_ok=True)
    with open(str(path), "wb") as handle:
        handle.write(data)
    return str(path)


def _encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def png_bytes(pixels: np.ndarray) -> bytes:
    return _encode(Image.fromarray(pixels), "PNG")


def jpeg_bytes(pixels: np.ndarray, **options) -> bytes:
    return _encode(Image.fromarray(pixels), "JPEG", quality=90, **options)


def good_png(path, pixels: np.ndarray | None = None) -> str:
    return _write(path, png_bytes(photo() if pixels is None else pixels))


def good_jpeg(path, pixels: np.ndarray | None = None) -> str:
    return _write(path, jpeg_bytes(photo() if pixels is None else pixels))


# ---------------------------------------------------------------------------------------------
# Broken files


def zero_bytes(path) -> str:
    """An empty file, as left by a copy that never started."""
    return _write(path, b"")


def html_named_jpg(path) -> str:
    """An HTML error page saved under a photo's name."""
    return _write(path, b"<!DOCTYPE html>\n<html><head><title>404 Not Found</title></head>"
                        b"<body><h1>Not Found</h1></body></html>\n")


def truncated_jpeg(path) -> str:
    """A JPEG whose download stopped half way through the scan."""
    data = jpeg_bytes(photo())
    return _write(path, data[:len(data) // 2])


def truncated_png(path) -> str:
    """A PNG cut in the middle of its image data (no IEND)."""
    data = png_bytes(photo())
    return _write(path, data[:len(data) // 2])


def corrupt_jpeg_scan(path) -> str:
    """A JPEG with a few bytes destroyed in the middle of its entropy-coded scan.

    The damage is an end-of-image marker where scan data should be (what a bad sector or a
    botched splice leaves): libjpeg warns "premature end of data segment" and paints every
    block after it flat grey, without an error.
    """
    data = bytearray(jpeg_bytes(photo()))
    start = data.index(b"\xff\xda")  # start of scan
    middle = start + (len(data) - start) // 2
    data[middle:middle + 2] = b"\xff\xd9"
    return _write(path, bytes(data))


def png_chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    """(type, payload) of every chunk of a PNG file."""
    chunks, pos = [], 8
    while pos + 8 <= len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        chunks.append((data[pos + 4:pos + 8], data[pos + 8:pos + 8 + length]))
        pos += 12 + length
    return chunks


def build_png(chunks: list[tuple[bytes, bytes]]) -> bytes:
    """A PNG file from (type, payload) chunks, with correct lengths and CRCs."""
    out = [b"\x89PNG\r\n\x1a\n"]
    for kind, payload in chunks:
        crc = zlib.crc32(kind + payload) & 0xFFFFFFFF
        out.append(struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc))
    return b"".join(out)


def png_short_idat(path) -> str:
    """A well-formed PNG (every chunk and CRC valid) whose pixel data stops half way down.

    The compressed stream is complete but holds only the first rows, as written by an encoder
    that was stopped early: Pillow decodes it without an error and leaves the rest black.
    """
    chunks = png_chunks(png_bytes(photo()))
    raw = zlib.decompress(b"".join(p for kind, p in chunks if kind == b"IDAT"))
    header = [c for c in chunks if c[0] == b"IHDR"]
    short = zlib.compress(raw[:len(raw) // 2])
    return _write(path, build_png(header + [(b"IDAT", short), (b"IEND", b"")]))


def bomb_png(path, width: int = 100_000, height: int = 100_000) -> str:
    """A decompression bomb: a tiny file whose header claims ``width`` x ``height`` pixels.

    Decoding it would allocate width * height * 3 bytes (30 GB by default) before finding that
    the data is short; only the header may be read.
    """
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    row = b"\x00" * (1 + 3 * min(width, 64))
    data = zlib.compress(row * 4, 9)
    return _write(path, build_png([(b"IHDR", ihdr), (b"IDAT", data), (b"IEND", b"")]))


# ---------------------------------------------------------------------------------------------
# Odd but valid files


def tiny(path, height: int, width: int) -> str:
    """A height x width PNG (1x1, 1xN, Nx1)."""
    return good_png(path, photo(max(height, 2), max(width, 2))[:height, :width])


def grey(path) -> str:
    return _write(path, _encode(Image.fromarray(photo()).convert("L"), "PNG"))


def grey_alpha(path) -> str:
    return _write(path, _encode(Image.fromarray(photo()).convert("LA"), "PNG"))


def rgba(path) -> str:
    pixels = photo()
    alpha = np.full(pixels.shape[:2] + (1,), 255, np.uint8)
    alpha[::2, ::3] = 0  # some transparent pixels: their stored colour is kept
    return _write(path, _encode(Image.fromarray(np.concatenate([pixels, alpha], 2)), "PNG"))


def palette_transparent(path) -> str:
    """A palette (P) PNG with a transparent palette entry (a tRNS chunk)."""
    image = Image.fromarray(photo()).quantize(16)
    return _write(path, _encode(image, "PNG", transparency=0))


def png16(path) -> str:
    """A 16-bit RGB PNG (written chunk by chunk: Pillow cannot save 16-bit RGB)."""
    pixels = photo().astype(">u2") * 257  # 8-bit values spread to 16 bits: top byte = value
    height, width = pixels.shape[:2]
    rows = b"".join(b"\x00" + pixels[y].tobytes() for y in range(height))
    ihdr = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)
    return _write(path, build_png([(b"IHDR", ihdr), (b"IDAT", zlib.compress(rows)),
                                   (b"IEND", b"")]))


def tiff16(path) -> str:
    """A 16-bit greyscale TIFF (mode I;16)."""
    grey16 = np.asarray(Image.fromarray(photo()).convert("L"), np.uint16) * 257
    return _write(path, _encode(Image.fromarray(grey16), "TIFF"))


def cmyk_jpeg(path) -> str:
    return _write(path, _encode(Image.fromarray(photo()).convert("CMYK"), "JPEG", quality=95))


def exif_rotated_jpeg(path, orientation: int = 6) -> str:
    """A JPEG stored sideways with an EXIF orientation tag (6: a viewer turns it 90 deg cw)."""
    image = Image.fromarray(photo())
    exif = image.getexif()
    exif[_EXIF_ORIENTATION] = orientation
    return _write(path, _encode(image, "JPEG", quality=95, exif=exif))


def swapped_rg_profile() -> bytes:
    """An ICC v2 RGB profile whose red and green primaries are sRGB's green and red (linear
    curves): converted to sRGB, pure red becomes pure green, so a skipped conversion shows."""
    def xyz(x: float, y: float, z: float) -> bytes:
        return b"XYZ \0\0\0\0" + struct.pack(">3i", *(round(v * 65536) for v in (x, y, z)))

    text = b"swapped red-green test profile"
    desc = (b"desc\0\0\0\0" + struct.pack(">I", len(text) + 1) + text + b"\0"
            + b"\0" * 8 + b"\0\0\0" + b"\0" * 67)
    curve = b"curv\0\0\0\0" + struct.pack(">I", 0)  # no entries: identity (linear)
    tags = [(b"desc", desc), (b"wtpt", xyz(0.9642, 1.0, 0.8249)),
            (b"rXYZ", xyz(0.3851, 0.7169, 0.0971)), (b"gXYZ", xyz(0.4361, 0.2225, 0.0139)),
            (b"bXYZ", xyz(0.1431, 0.0606, 0.7141)), (b"rTRC", curve), (b"gTRC", curve),
            (b"bTRC", curve), (b"cprt", b"text\0\0\0\0public domain\0")]
    offset = 128 + 4 + 12 * len(tags)
    table, body = [struct.pack(">I", len(tags))], []
    for signature, data in tags:
        data += b"\0" * (-len(data) % 4)
        table.append(signature + struct.pack(">II", offset, len(data)))
        body.append(data)
        offset += len(data)
    header = bytearray(128)
    struct.pack_into(">I", header, 0, offset)
    header[8:12] = b"\x02\x10\0\0"
    header[12:24] = b"mntrRGB XYZ "
    header[36:40] = b"acsp"
    header[68:80] = struct.pack(">3i", *(round(v * 65536) for v in (0.9642, 1.0, 0.8249)))
    return bytes(header) + b"".join(table) + b"".join(body)


def icc_jpeg(path) -> str:
    """A JPEG of pure red, green and blue bands tagged with `swapped_rg_profile`."""
    pixels = np.zeros((24, 30, 3), np.uint8)
    pixels[:8, :, 0] = 255
    pixels[8:16, :, 1] = 255
    pixels[16:, :, 2] = 255
    return _write(path, _encode(Image.fromarray(pixels), "JPEG", quality=100, subsampling=0,
                                icc_profile=swapped_rg_profile()))


def animated_gif(path, n_frames: int = 3) -> str:
    frames = [Image.fromarray(photo(seed=i)).quantize(32) for i in range(n_frames)]
    return _write(path, _encode(frames[0], "GIF", save_all=True, append_images=frames[1:],
                                duration=100, loop=0))


def multipage_tiff(path, n_pages: int = 3) -> str:
    pages = [Image.fromarray(photo(seed=i)) for i in range(n_pages)]
    return _write(path, _encode(pages[0], "TIFF", save_all=True, append_images=pages[1:]))


def letterboxed_png(path) -> str:
    """A photo with black bars above and below: its last rows really are black."""
    pixels = photo(60, 64)
    pixels[:10] = 0
    pixels[-10:] = 0
    return good_png(path, pixels)


def letterboxed_jpeg(path) -> str:
    pixels = photo(64, 64)
    pixels[:16] = 0
    pixels[-16:] = 0
    return good_jpeg(path, pixels)


def single_colour(path, colour=(0, 0, 0), fmt: str = "PNG") -> str:
    pixels = np.empty((32, 40, 3), np.uint8)
    pixels[:] = colour
    return _write(path, _encode(Image.fromarray(pixels), fmt))


def assert_outputs_complete(out_dir: str) -> None:
    """What any run, however it ended, may leave: no temporary file, every PNG decodes in
    full, every JSON file parses, and the report's ok images have each output at the size it
    recorded."""
    import json

    for root, _, names in os.walk(out_dir):
        for name in names:
            path = os.path.join(root, name)
            assert not name.startswith(".tmp-"), path
            if name.endswith(".png"):
                with Image.open(path) as image:
                    image.load()
            elif name.endswith(".json"):
                with open(path) as handle:
                    json.load(handle)
    report_path = os.path.join(out_dir, "report.json")
    if not os.path.exists(report_path):
        return
    with open(report_path) as handle:
        report = json.load(handle)
    for record in report["images"]:
        for rel, size in [f for files in (record["outputs"] or {}).values() for f in files]:
            if record["status"] == "ok":
                assert os.path.getsize(os.path.join(out_dir, *rel.split("/"))) == size, rel


BROKEN = {
    # name: (builder, file name, found from the header?)
    "zero_bytes": (zero_bytes, "empty.jpg", True),
    "html_named_jpg": (html_named_jpg, "page.jpg", True),
    "truncated_jpeg": (truncated_jpeg, "cut.jpg", False),
    "truncated_png": (truncated_png, "cut.png", False),
    "corrupt_jpeg_scan": (corrupt_jpeg_scan, "sector.jpg", False),
    "png_short_idat": (png_short_idat, "short.png", False),
    "bomb_png": (bomb_png, "bomb.png", True),
}


# ---------------------------------------------------------------------------------------------
# Odd files from a public corpus of fuzzed and unusual images (issue 11): each builder makes
# one class of file the way such files are laid out, from the format's documentation.


def dds_unsupported(path, width: int = 8, height: int = 8) -> str:
    """A DDS texture whose FourCC pixel format Pillow does not implement: Image.open raises
    NotImplementedError (not an OSError)."""
    flags = 0x1 | 0x2 | 0x4 | 0x1000  # caps, height, width, pixel format
    header = struct.pack("<6I", flags, height, width, 0, 0, 1) + b"\0" * 44
    pixel_format = struct.pack("<4I", 32, 0x4, int.from_bytes(b"ZZZZ", "little"), 0) + b"\0" * 16
    caps = struct.pack("<I", 0x1000) + b"\0" * 16
    return _write(path, b"DDS " + struct.pack("<I", 124) + header + pixel_format + caps
                  + b"\0" * (width * height))


def _png_claiming(width: int, height: int) -> bytes:
    """A small PNG whose IHDR claims ``width`` x ``height`` RGBA pixels (a few rows of data)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 6, 0, 0, 0)
    row = b"\x00" + b"\x00" * 4 * min(width, 256)
    return build_png([(b"IHDR", ihdr), (b"IDAT", zlib.compress(row * 4, 9)), (b"IEND", b"")])


def icns_bomb(path, side: int = 509_117) -> str:
    """A Mac icon whose header offers a 256 x 256 icon ('ic08') holding a PNG that claims
    side x side pixels (259 billion by default): a 240 KB file like it took 24 GB."""
    embedded = _png_claiming(side, side)
    entry = b"ic08" + struct.pack(">I", 8 + len(embedded)) + embedded
    return _write(path, b"icns" + struct.pack(">I", 8 + len(entry)) + entry)


def ico_bomb(path, side: int = 100_000) -> str:
    """A Windows icon whose one 256 x 256 entry holds a PNG that claims side x side pixels;
    Pillow decodes an ICO's first image while opening it."""
    embedded = _png_claiming(side, side)
    entry = struct.pack("<BBBBHHII", 0, 0, 0, 0, 1, 32, len(embedded), 6 + 16)
    return _write(path, struct.pack("<HHH", 0, 1, 1) + entry + embedded)


def psd(path, pixels: np.ndarray | None = None) -> str:
    """A valid Photoshop file (RGB, 8 bits, raw planar data, no layers): Pillow numbers PSD
    frames from 1."""
    pixels = photo() if pixels is None else pixels
    height, width = pixels.shape[:2]
    header = b"8BPS" + struct.pack(">H", 1) + b"\0" * 6 + struct.pack(">HIIHH", 3, height,
                                                                      width, 8, 3)
    sections = struct.pack(">III", 0, 0, 0)  # colour mode data, image resources, layers
    data = struct.pack(">H", 0) + pixels.transpose(2, 0, 1).tobytes()
    return _write(path, header + sections + data)


# What a viewer shows for each EXIF orientation (TIFF 6.0 / EXIF 2.3, tag 274), as numpy on
# the stored raster; 1-5 and 7 are their own inverses, 6 and 8 invert each other.
SHOW = {1: lambda a: a, 2: lambda a: a[:, ::-1], 3: lambda a: a[::-1, ::-1],
        4: lambda a: a[::-1], 5: lambda a: a.transpose(1, 0, 2),
        6: lambda a: np.rot90(a, -1), 7: lambda a: a[::-1, ::-1].transpose(1, 0, 2),
        8: lambda a: np.rot90(a, 1)}
_STORE = {**SHOW, 6: SHOW[8], 8: SHOW[6]}


def oriented_tiff(path, orientation: int, pixels: np.ndarray | None = None,
                  compression: str = "tiff_lzw") -> str:
    """A compressed TIFF (so libtiff decodes it) storing ``pixels`` (a 59 x 24 photo by
    default) so that a viewer applying its orientation tag shows ``pixels``."""
    shown = photo(24, 59) if pixels is None else pixels
    stored = np.ascontiguousarray(_STORE[orientation](shown))
    assert np.array_equal(SHOW[orientation](stored), shown)
    return _write(path, _encode(Image.fromarray(stored), "TIFF", compression=compression,
                                tiffinfo={_EXIF_ORIENTATION: orientation}))


def _insert_before_marker(data: bytes, marker: bytes, junk: bytes, start: int = 2) -> bytes:
    at = data.index(marker, start)
    return data[:at] + junk + data[at:]


def jpeg_junk_in_header(path, pixels: np.ndarray | None = None) -> str:
    """A JPEG with three stray bytes between two header segments (before a DQT), as some
    camera firmware writes: libjpeg warns "Corrupt JPEG data: 3 extraneous bytes before
    marker 0xdb"; the scan is intact."""
    data = jpeg_bytes(photo() if pixels is None else pixels)
    return _write(path, _insert_before_marker(data, b"\xff\xdb", b"\x00\x11\x22"))


def jpeg_bad_icc_marker(path, pixels: np.ndarray | None = None) -> str:
    """A JPEG whose one ICC profile segment (APP2) says it is chunk 2 of 1: libjpeg warns
    "Corrupt JPEG data: bad ICC marker"; the scan is intact."""
    data = jpeg_bytes(photo() if pixels is None else pixels)
    payload = b"ICC_PROFILE\0" + bytes([2, 1]) + b"not a profile"
    segment = b"\xff\xe2" + struct.pack(">H", 2 + len(payload)) + payload
    return _write(path, data[:2] + segment + data[2:])


def jpeg_junk_in_header_and_damaged_scan(path) -> str:
    """The stray header bytes of `jpeg_junk_in_header` plus real damage in the scan."""
    data = bytearray(jpeg_bytes(photo()))
    start = data.index(b"\xff\xda")
    middle = start + (len(data) - start) // 2
    data[middle:middle + 2] = b"\xff\xd9"
    return _write(path, _insert_before_marker(bytes(data), b"\xff\xdb", b"\x00\x11\x22"))


def jpeg_junk_in_scan(path) -> str:
    """The same libjpeg warning as `jpeg_junk_in_header`, "extraneous bytes before marker",
    but in the entropy-coded data: 40 stray bytes before the second restart marker."""
    data = _encode(Image.fromarray(photo()), "JPEG", quality=90, restart_marker_blocks=4)
    sos = data.index(b"\xff\xda")
    return _write(path, _insert_before_marker(data, b"\xff\xd1", b"\x5a" * 40, sos))


def png_bad_header(path) -> str:
    """A PNG whose IHDR chunk fails its CRC: the signature says PNG, the header is broken."""
    data = bytearray(png_bytes(photo()))
    data[29:33] = b"\0\0\0\0"
    return _write(path, bytes(data))


def gif_bad_header(path) -> str:
    """A GIF cut inside its logical screen descriptor (10 of its first 13 bytes)."""
    data = _encode(Image.fromarray(photo()).quantize(8), "GIF")
    return _write(path, data[:10])


def tiff_bad_header(path) -> str:
    """A TIFF whose first IFD offset points a gigabyte past the end of the file."""
    data = _encode(Image.fromarray(photo()), "TIFF")
    return _write(path, data[:4] + struct.pack("<I", 10 ** 9) + data[8:])


def wmf(path) -> str:
    """A placeable Windows Metafile (a vector drawing): Pillow reads its header everywhere
    but draws it only on Windows."""
    header = struct.pack("<IHhhhhHI", 0x9AC6CDD7, 0, 0, 0, 100, 100, 1440, 0)
    checksum = 0
    for (word,) in struct.iter_unpack("<H", header):
        checksum ^= word
    record = struct.pack("<HHIHIH", 1, 9, 0x300, 0, 0, 0)
    return _write(path, header + struct.pack("<H", checksum) + record + b"\0" * 32)


def eps(path) -> str:
    """A one-page EPS (PostScript) drawing: decoding it needs Ghostscript."""
    return _write(path, b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 16 12\n"
                        b"0 0 1 setrgbcolor 0 0 16 12 rectfill\nshowpage\n%%EOF\n")


def tiff_webp(path) -> str:
    """A TIFF whose compression tag says WebP (50001).  Written by libtiff when it has the
    codec; otherwise an LZW TIFF with its compression tag changed, which only a libtiff
    with WebP would try to decode."""
    image = Image.fromarray(photo())
    try:
        return _write(path, _encode(image, "TIFF", compression="webp"))
    except OSError:
        pass
    data = bytearray(_encode(image, "TIFF", compression="tiff_lzw"))
    at = data.find(struct.pack("<HHIH", 259, 3, 1, 5))
    data[at + 8:at + 10] = struct.pack("<H", 50001)
    return _write(path, bytes(data))


def tiff_with_bogus_tag(path, pixels: np.ndarray | None = None) -> str:
    """An uncompressed RGB TIFF, written entry by entry, with one private tag whose data
    would lie past the end of the file: Pillow warns "Possibly corrupt EXIF data" while
    reading the header and decodes the pixels, which are intact."""
    pixels = photo() if pixels is None else pixels
    height, width = pixels.shape[:2]
    raster = pixels.tobytes()
    entries = [(256, 3, 1, width), (257, 3, 1, height), (258, 3, 1, 8), (259, 3, 1, 1),
               (262, 3, 1, 2), (273, 4, 1, 8), (277, 3, 1, 3), (278, 3, 1, height),
               (279, 4, 1, len(raster)), (65000, 4, 1000, 0x00FFFFF0)]
    ifd = struct.pack("<H", len(entries))
    for tag, kind, count, value in entries:
        packed = struct.pack("<H", value) + b"\0\0" if kind == 3 and count == 1 \
            else struct.pack("<I", value)
        ifd += struct.pack("<HHI", tag, kind, count) + packed
    ifd += struct.pack("<I", 0)
    return _write(path, b"II*\0" + struct.pack("<I", 8 + len(raster)) + raster + ifd)


def grey16_tiff(path, values: np.ndarray) -> str:
    """A 16-bit greyscale TIFF (I;16) holding ``values`` (uint16) as they are."""
    return _write(path, _encode(Image.fromarray(values.astype(np.uint16)), "TIFF"))
