"""A plain RGB JPEG's pixels come straight from libjpeg-turbo (`photos._plain_jpeg_pixels`,
issue 14), the same as the general path's after its copies through Pillow; JPEGs that need
more (an orientation, an ICC profile, a scale, damage) still take the general path."""

import numpy as np
import pytest

import badfiles
from pipeline.errors import ImageReadError
from pipeline.sources import photos


def _decode(path, scale=1.0, general=False, monkeypatch=None):
    info, _ = photos.read_header(str(path), "x", 0, scale, 1 << 30)
    if general:
        monkeypatch.setattr(photos, "_plain_jpeg_pixels", lambda *args: None)
    return photos.decode_masked(info)


@pytest.mark.parametrize("make", ["good_jpeg", "exif_rotated_jpeg", "icc_jpeg",
                                  "letterboxed_jpeg"])
@pytest.mark.parametrize("scale", [1.0, 0.5])
def test_the_same_pixels_as_the_general_path(tmp_path, monkeypatch, make, scale):
    path = getattr(badfiles, make)(tmp_path / "a.jpg")
    fast, masked = _decode(path, scale)
    with monkeypatch.context() as patch:
        general, masked_general = _decode(path, scale, True, patch)
    assert masked is None and masked_general is None
    assert fast.dtype == np.uint8 and fast.shape == general.shape
    assert np.array_equal(fast, general)


def test_only_a_plain_jpeg_skips_pillow(tmp_path, monkeypatch):
    taken = []
    real = photos._plain_jpeg_pixels
    monkeypatch.setattr(photos, "_plain_jpeg_pixels",
                        lambda *args: taken.append(real(*args) is not None) or real(*args))
    for make in ("good_jpeg", "exif_rotated_jpeg", "icc_jpeg"):
        _decode(getattr(badfiles, make)(tmp_path / f"{make}.jpg"))
    assert taken == [True, False, False]


def test_damaged_data_is_still_refused(tmp_path):
    for make in ("truncated_jpeg", "corrupt_jpeg_scan"):
        path = getattr(badfiles, make)(tmp_path / f"{make}.jpg")
        with pytest.raises(ImageReadError):
            _decode(path)
