"""Reading georeferenced rasters (issue 13, review of its first version): ``input.level`` reads
a GeoTIFF's or COG's overview with its transform scaled, a missing level is one line naming the
file and the levels it has, and window reads keep one open dataset per (file, thread).

Every raster is written here with rasterio; overviews are built by GDAL (``build_overviews``).
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import rasterio
from affine import Affine
from rasterio.enums import Resampling

from conftest import read_json
from pipeline.errors import ImageReadError
from pipeline.sources import geo
from test_geo import UTM_TRANSFORM, classes_scene, geo_job, one_line, run_job, write_raster


def pyramid(tmp_path, height: int = 304, width: int = 400,
            factors: tuple[int, ...] = (2, 4)) -> tuple[str, np.ndarray]:
    """A GeoTIFF whose pixels are constant in 4 x 4 blocks, so every overview (any
    resampling) at factor f holds ``base[::f, ::f]``; returns its path and the base bands."""
    small, _ = classes_scene(height=-(-height // 4), width=-(-width // 4))
    base = small.repeat(4, axis=1).repeat(4, axis=2)[:, :height, :width]
    path = write_raster(tmp_path / "pyramid.tif", np.ascontiguousarray(base), nodata=0)
    with rasterio.open(path, "r+") as dst:
        dst.build_overviews(list(factors), Resampling.nearest)
    return path, base


@pytest.mark.parametrize("level, factor", [(1, 2), (2, 4)])
def test_level_reads_the_overview_with_its_transform_scaled(tmp_path, level, factor):
    path, base = pyramid(tmp_path)
    header = geo.read_header(path, level=level)
    expected = base[:, ::factor, ::factor]
    assert header.shape == (expected.shape[1], expected.shape[2], 3)
    # GDAL scales the pixel size by the ratio of the sizes (exact here: 400 / 200 ...)
    scale = Affine.scale(base.shape[2] / header.width, base.shape[1] / header.height)
    np.testing.assert_allclose(header.transform, tuple(UTM_TRANSFORM @ scale)[:6], rtol=1e-12)
    assert header.note == f"pyramid level {level} of 3"
    pixels = geo.pixel_array(header, chunk_pixels=2000).compute()
    np.testing.assert_array_equal(pixels, np.moveaxis(expected, 0, -1))


def test_level_through_the_run_places_outputs_on_the_overview_grid(tmp_path):
    path, base = pyramid(tmp_path)
    result = run_job(geo_job(tmp_path, ["pyramid.tif"], input={"level": 1},
                             output={"masks": False}))
    assert result.code == 0, result.err
    with rasterio.open(path, overview_level=0) as overview:
        crs, transform, shape = overview.crs, overview.transform, overview.shape
    for kind in ("labels", "segmented"):
        with rasterio.open(tmp_path / "out" / kind / "pyramid.tif") as out:
            assert out.crs == crs and out.transform == transform and out.shape == shape
    (entry,) = read_json(tmp_path / "out")["images"]
    assert (entry["width"], entry["height"]) == (shape[1], shape[0])
    assert "pyramid level 1 of 3" in entry["notes"]


def test_a_level_the_file_lacks_is_one_line_naming_it_and_its_levels(tmp_path):
    path, _ = pyramid(tmp_path)
    with pytest.raises(ImageReadError) as caught:
        geo.read_header(path, level=3)
    message = str(caught.value)
    assert one_line(message)
    assert message == (f"{path}: input.level 3 does not exist (the file has 3 level(s), "
                       "numbered from 0: 0: 400x304, 1: 200x152, 2: 100x76); choose one of "
                       "them, or build overviews (gdaladdo)")
    flat = write_raster(tmp_path / "flat.tif", classes_scene()[0])
    with pytest.raises(ImageReadError, match=r"flat.tif: input.level 1 does not exist \(the "
                                             r"file has 1 level\(s\), numbered from 0: 0: "
                                             r"200x150\)"):
        geo.read_header(flat, level=1)


def test_a_level_the_file_lacks_skips_the_image_in_a_run(tmp_path):
    pyramid(tmp_path, factors=(2,))
    write_raster(tmp_path / "flat.tif", classes_scene()[0], nodata=0)
    result = run_job(geo_job(tmp_path, ["pyramid.tif", "flat.tif"], input={"level": 1},
                             output={"masks": False}), quiet=False)
    assert result.code == 3, result.err
    skipped = [line for line in result.lines if line.startswith("skipped: ")]
    assert len(skipped) == 1 and "flat.tif: input.level 1 does not exist" in skipped[0]


def test_windows_reuse_one_open_dataset_per_thread(tmp_path, monkeypatch):
    bands, _ = classes_scene(height=256, width=256)
    path = write_raster(tmp_path / "scene.tif", bands, block=32)
    header = geo.read_header(path)
    source = geo.window_source(header, (1, 2, 3), None)
    opened: list[tuple[int, object]] = []
    real_open = rasterio.open

    def counting_open(*args, **kwargs):  # the real rasterio.open, counted
        dataset = real_open(*args, **kwargs)
        opened.append((threading.get_ident(), dataset))
        return dataset

    monkeypatch.setattr(rasterio, "open", counting_open)
    windows = [(row, col) for row in range(0, 256, 32) for col in range(0, 256, 64)]

    def read_all(part):
        return [geo.read_window(source, row, col, 32, 64) for row, col in part]

    with ThreadPoolExecutor(2) as pool:
        barrier = threading.Barrier(2)  # both threads read at once: no dataset is shared

        def in_thread(part):
            barrier.wait(timeout=30)
            return read_all(part)

        parts = list(pool.map(in_thread, [windows[0::2], windows[1::2]]))
    threads = {ident for ident, _ in opened}
    assert len(opened) == 2 and len(threads) == 2  # one dataset per thread, not per window
    assert opened[0][1] is not opened[1][1]
    for part, tiles in zip((windows[0::2], windows[1::2]), parts):
        for (row, col), tile in zip(part, tiles):
            np.testing.assert_array_equal(tile, np.moveaxis(bands[:, row:row + 32,
                                                                  col:col + 64], 0, -1))
