"""A PNG's EXIF orientation is read from its header without decoding its pixels, with the same
result as Pillow's ``getexif`` (which decodes a PNG whole to find chunks after the pixels)."""

import struct
import zlib

import numpy as np
from PIL import Image

from pipeline.sources import photos

_ORIENTATION = 0x0112


def _chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    out, at = [], 8
    while at < len(data):
        length, kind = struct.unpack(">I4s", data[at:at + 8])
        out.append((kind, data[at + 8:at + 8 + length]))
        at += 12 + length
    return out


def _png(chunks: list[tuple[bytes, bytes]]) -> bytes:
    body = b"".join(struct.pack(">I", len(d)) + k + d + struct.pack(">I", zlib.crc32(k + d))
                    for k, d in chunks)
    return b"\x89PNG\r\n\x1a\n" + body


def _write(path, where: str, orientation: int = 6) -> None:
    """A 5x3 PNG whose eXIf chunk says ``orientation``: ``before`` or ``after`` the pixels,
    or ``none`` (no EXIF at all); a second IDAT chunk so that the walk passes several."""
    image = Image.fromarray(np.arange(45, dtype=np.uint8).reshape(3, 5, 3))
    exif = Image.Exif()
    exif[_ORIENTATION] = orientation
    image.save(path, exif=exif.tobytes())
    chunks = _chunks(path.read_bytes())
    exif_chunk = next(c for c in chunks if c[0] == b"eXIf")
    rest = [c for c in chunks if c[0] != b"eXIf"]
    idat = next(i for i, c in enumerate(rest) if c[0] == b"IDAT")
    data = rest[idat][1]
    rest[idat:idat + 1] = [(b"IDAT", data[:len(data) // 2]), (b"IDAT", data[len(data) // 2:])]
    end = len(rest) - 1  # IEND
    if where == "before":
        rest.insert(idat, exif_chunk)
    elif where == "after":
        rest.insert(end, exif_chunk)
    path.write_bytes(_png(rest))


def _pillow_orientation(path) -> int:
    with Image.open(path) as im:
        return int(im.getexif().get(_ORIENTATION, 1) or 1)


def test_orientation_before_after_or_without_exif_is_pillows(tmp_path):
    for where, want in (("before", 6), ("after", 6), ("none", 1)):
        path = tmp_path / f"{where}.png"
        _write(path, where)
        assert _pillow_orientation(path) == want, where
        info, _ = photos.read_header(str(path), where, 0, 1.0, 1 << 30)
        assert (info.width, info.height) == ((3, 5) if want == 6 else (5, 3)), where


def test_a_png_without_tags_after_its_pixels_is_not_decoded(tmp_path, monkeypatch):
    """The header read of a PNG with nothing after its pixels never loads them."""
    path = tmp_path / "plain.png"
    _write(path, "none")
    loads = []

    def load(self):
        if self.format == "PNG":
            loads.append(self)
        return original(self)

    from PIL import ImageFile

    original = ImageFile.ImageFile.load
    monkeypatch.setattr(ImageFile.ImageFile, "load", load)
    info, _ = photos.read_header(str(path), "plain", 0, 1.0, 1 << 30)
    assert (info.width, info.height) == (5, 3)
    assert loads == []
