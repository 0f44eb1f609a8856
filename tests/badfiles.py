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
