"""Scientific rasters (issue 12): TIFF and zarr read in windows, masks, sampling, tiled outputs.

Every file is written here with tifffile or zarr; the samples in samples/rasters are real.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import dask
import numpy as np
import pytest
import tifffile
import zarr

from pipeline.errors import ConfigError, ImageReadError
from pipeline.sinks import tiled
from pipeline.sources import rasters

SAMPLES = os.path.join(os.path.dirname(__file__), "..", "samples", "rasters")
GDAL_NODATA = 42113


def _image(shape: tuple[int, ...], dtype: str, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if np.dtype(dtype).kind == "f":
        return rng.normal(100, 30, shape).astype(dtype)
    info = np.iinfo(dtype)
    return rng.integers(max(info.min, -3000), min(info.max, 60000), shape).astype(dtype)


def _read(header: rasters.RasterHeader, chunk_pixels: int = 1 << 22, **kw) -> np.ndarray:
    return rasters.pixel_array(header, chunk_pixels, **kw).compute(scheduler="synchronous")


def _mask(header: rasters.RasterHeader, chunk_pixels: int = 1 << 22, **kw) -> np.ndarray:
    return rasters.mask_array(header, chunk_pixels, **kw).compute(scheduler="synchronous")


# ---------------------------------------------------------------------------------------------
# TIFF layouts


@pytest.mark.parametrize("bands", [1, 4, 13])
@pytest.mark.parametrize("dtype", ["uint16", "int16", "float32"])
@pytest.mark.parametrize("layout", ["tiled", "striped"])
def test_windows_equal_the_whole_image(tmp_path, bands, dtype, layout):
    pixels = _image((150, 170, bands), dtype, seed=bands)
    path = str(tmp_path / "img.tif")
    extra = {"tile": (32, 48)} if layout == "tiled" else {"rowsperstrip": 7}
    tifffile.imwrite(path, pixels if bands > 1 else pixels[..., 0], photometric="minisblack",
                     planarconfig="contig" if bands > 1 else None, compression="zlib", **extra)
    (header,) = rasters.read_headers(path)
    assert header.shape == (150, 170, bands) and header.dtype == dtype
    whole = _read(header)
    assert np.array_equal(whole, pixels)
    for budget in (32 * 48, 5000, 40000):  # chunks of one tile, a few, a band of rows
        array = rasters.pixel_array(header, budget)
        assert np.array_equal(array.compute(scheduler="synchronous"), pixels)
        block_h, block_w = header.block_shape
        rows = np.cumsum(array.chunks[0])[:-1]
        cols = np.cumsum(array.chunks[1])[:-1]
        assert np.all(rows % block_h == 0) and np.all(cols % block_w == 0)  # tile-aligned
        assert len(array.chunks[2]) == 1


def test_bigtiff_and_band_selection(tmp_path):
    pixels = _image((64, 80, 5), "uint16")
    path = str(tmp_path / "big.tif")
    tifffile.imwrite(path, pixels, bigtiff=True, tile=(16, 16), photometric="minisblack",
                     planarconfig="contig")
    (header,) = rasters.read_headers(path)
    assert np.array_equal(_read(header, bands=(5, 1, 3)), pixels[..., [4, 0, 2]])
    assert np.array_equal(_read(header, 500, bands=(2, 3)), pixels[..., 1:3])
    with pytest.raises(ConfigError, match=r"input.bands: band 6 does not exist in .*big.tif "
                                          r"\(5 bands, numbered from 1\)"):
        rasters.pixel_array(header, 500, bands=(6,))


def test_tasks_carry_the_path_and_window_not_pixels(tmp_path):
    pixels = _image((128, 128, 4), "uint16")
    path = str(tmp_path / "img.tif")
    tifffile.imwrite(path, pixels, tile=(32, 32), photometric="minisblack", planarconfig="contig")
    (header,) = rasters.read_headers(path)
    array = rasters.pixel_array(header, 32 * 32)
    import pickle

    graph = dict(array.__dask_graph__())
    sizes = [len(pickle.dumps(task)) for task in graph.values()]
    assert len(graph) >= 16 and max(sizes) < 2000  # a window of 32x32x4 uint16 is 8 KiB


def test_ome_tiff_channel_names_and_channel_axis(tmp_path):
    pixels = _image((4, 60, 70), "uint16")
    path = str(tmp_path / "cells.ome.tif")
    tifffile.imwrite(path, pixels, ome=True, tile=(32, 32), compression="zlib",
                     metadata={"axes": "CYX", "Channel": {"Name": ["DAPI", "GFP", "RFP", "Cy5"]}})
    (header,) = rasters.read_headers(path)
    assert header.name == "cells" and header.axes == "CYX"
    assert header.band_names == ("DAPI", "GFP", "RFP", "Cy5")
    assert np.array_equal(_read(header, 1024), np.moveaxis(pixels, 0, -1))
    assert np.array_equal(_read(header, 1024, bands=(4, 2)), np.moveaxis(pixels[[3, 1]], 0, -1))


def test_axes_override_reads_an_undescribed_layout(tmp_path):
    pixels = _image((3, 40, 50), "int16")
    path = str(tmp_path / "planar.tif")
    tifffile.imwrite(path, pixels, photometric="minisblack", metadata=None)
    (header,) = rasters.read_headers(path, axes="CYX")
    assert header.shape == (40, 50, 3)
    assert np.array_equal(_read(header), np.moveaxis(pixels, 0, -1))
    with pytest.raises(ConfigError, match=r"input.axes: 'YX' does not fit .*planar.tif"):
        rasters.read_headers(path, axes="YX")


def test_imagej_hyperstack_gives_one_image_per_plane(tmp_path):
    stack = _image((2, 3, 2, 20, 30), "uint16")  # T Z C Y X
    path = str(tmp_path / "cells.tif")
    tifffile.imwrite(path, stack, imagej=True, metadata={"axes": "TZCYX"})
    headers = rasters.read_headers(path)
    assert [h.name for h in headers] == [f"cells/t{t}_z{z}" for t in (1, 2) for z in (1, 2, 3)]
    assert all(h.shape == (20, 30, 2) for h in headers)
    assert np.array_equal(_read(headers[4]), np.moveaxis(stack[1, 1], 0, -1))
    (first,) = rasters.read_headers(path, planes="first")
    assert first.name == "cells" and first.note == "first plane of 6 used (input.planes: first)"
    assert np.array_equal(_read(first), np.moveaxis(stack[0, 0], 0, -1))


def test_hyperstack_of_thousands_of_pages_is_listed_without_reading_them(tmp_path):
    stack = np.arange(3000 * 8 * 8, dtype=np.uint16).reshape(3000, 8, 8)
    path = str(tmp_path / "movie.tif")
    tifffile.imwrite(path, stack, imagej=True, metadata={"axes": "TYX"})
    with tifffile.TiffFile(path) as tif:
        later = [tif.pages[i].offset for i in (1500, 2999)]
    with open(path, "r+b") as handle:  # wreck two pages' directories: reading them would fail
        for offset in later:
            handle.seek(offset)
            handle.write(b"\xff" * 12)
    headers = rasters.read_headers(path)
    assert len(headers) == 3000 and headers[0].name == "movie/t0001"
    assert headers[-1].name == "movie/t3000"
    assert np.array_equal(_read(headers[2999])[..., 0], stack[2999])  # data offsets from page 0


def test_pyramid_levels_and_whole_slide_sample(tmp_path):
    base = _image((128, 96, 3), "uint8")
    path = str(tmp_path / "pyramid.tif")
    with tifffile.TiffWriter(path) as tif:
        tif.write(base, tile=(32, 32), subifds=1, photometric="rgb")
        tif.write(base[::2, ::2], tile=(32, 32), subfiletype=1, photometric="rgb")
    (level0,) = rasters.read_headers(path)
    (level1,) = rasters.read_headers(path, level=1)
    assert level0.shape == (128, 96, 3) and level1.shape == (64, 48, 3)
    assert np.array_equal(_read(level1), base[::2, ::2])
    assert level0.band_names == ("red", "green", "blue")
    with pytest.raises(ImageReadError, match=r"input.level 2 does not exist \(the file has 2"):
        rasters.read_headers(path, level=2)
    (slide,) = rasters.read_headers(os.path.join(SAMPLES, "cmu_small_region.svs"))
    assert slide.shape == (2967, 2220, 3) and slide.block_shape == (240, 240)
    assert slide.note.startswith("series 0 of 4 used (others: Thumbnail, Label, Macro)")
    with tifffile.TiffFile(os.path.join(SAMPLES, "cmu_small_region.svs")) as tif:
        whole = tif.series[0].asarray()
    array = rasters.pixel_array(slide, 240 * 240 * 4)
    assert np.array_equal(array[500:700, 1000:1300].compute(), whole[500:700, 1000:1300])


def test_real_landsat_sample_reads_in_windows():
    (scene,) = rasters.read_headers(os.path.join(SAMPLES, "L7_ETMs.tif"))
    assert scene.shape == (352, 349, 6) and scene.dtype == "uint8"
    whole = tifffile.imread(os.path.join(SAMPLES, "L7_ETMs.tif"))
    assert np.array_equal(_read(scene, 3000), whole)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_tiff_orientation_is_applied_window_by_window(tmp_path, orientation):
    from PIL import Image, ImageOps

    stored = _image((40, 56, 3), "uint8", seed=orientation)
    path = str(tmp_path / "oriented.tif")
    tifffile.imwrite(path, stored, photometric="rgb", tile=(16, 16),
                     extratags=[(274, "H", 1, orientation, True)])
    with Image.open(path) as im:
        expected = np.asarray(ImageOps.exif_transpose(im))
    (header,) = rasters.read_headers(path)
    assert (header.height, header.width) == expected.shape[:2]
    assert np.array_equal(_read(header, 16 * 16 * 2), expected)


# ---------------------------------------------------------------------------------------------
# zarr


def _ome_zarr(path: str, levels: list[np.ndarray], names: list[str], version: int) -> None:
    group = zarr.open_group(path, mode="w", zarr_format=version)
    for i, level in enumerate(levels):
        group.create_array(str(i), shape=level.shape, dtype=level.dtype, chunks=(1, 16, 16))
        group[str(i)][:] = level
    multiscales = [{"version": "0.4", "axes": [{"name": "c", "type": "channel"},
                                               {"name": "y", "type": "space"},
                                               {"name": "x", "type": "space"}],
                    "datasets": [{"path": str(i)} for i in range(len(levels))]}]
    omero = {"channels": [{"label": n} for n in names]}
    group.attrs.update({"multiscales": multiscales, "omero": omero} if version == 2 else
                       {"ome": {"version": "0.5", "multiscales": multiscales, "omero": omero}})


@pytest.mark.parametrize("version", [2, 3])
def test_ome_zarr_multiscale(tmp_path, version):
    base = _image((3, 64, 48), "float32")
    path = str(tmp_path / "tissue.zarr")
    _ome_zarr(path, [base, base[:, ::2, ::2]], ["red", "green", "blue"], version)
    (header,) = rasters.read_headers(path)
    assert header.name == "tissue" and header.format == "zarr"
    assert header.band_names == ("red", "green", "blue") and header.block_shape == (16, 16)
    assert np.array_equal(_read(header, 16 * 16), np.moveaxis(base, 0, -1))
    (half,) = rasters.read_headers(path, level=1)
    assert np.array_equal(_read(half, 300), np.moveaxis(base[:, ::2, ::2], 0, -1))


def test_plain_zarr_arrays_v2_and_v3(tmp_path):
    pixels = _image((50, 40, 4), "int16")
    v2 = zarr.open_array(str(tmp_path / "a.zarr"), mode="w", shape=pixels.shape,
                         chunks=(20, 20, 4), dtype="int16", zarr_format=2)
    v2[:] = pixels
    v2.attrs["nodata"] = -3000
    v3 = zarr.create_array(str(tmp_path / "b.zarr"), shape=(4, 50, 40), chunks=(4, 25, 10),
                           dtype="int16", dimension_names=("band", "y", "x"))
    v3[:] = np.moveaxis(pixels, -1, 0)
    (a,) = rasters.read_headers(str(tmp_path / "a.zarr"))
    (b,) = rasters.read_headers(str(tmp_path / "b.zarr"))
    assert a.axes == "YXC" and b.axes == "CYX" and b.block_shape == (25, 10)
    assert np.array_equal(_read(a, 400), pixels) and np.array_equal(_read(b, 250), pixels)
    assert a.nodata == (-3000.0,) * 4
    assert np.array_equal(_mask(a, 400), np.any(pixels == -3000, axis=2))


# ---------------------------------------------------------------------------------------------
# Masks


def test_gdal_nodata_nan_and_inf_are_masked(tmp_path):
    pixels = _image((60, 64, 3), "float32")
    pixels[5, 7, 1] = -9999
    pixels[10, 11, 0] = np.nan
    pixels[20, 21, 2] = np.inf
    path = str(tmp_path / "f.tif")
    tifffile.imwrite(path, pixels, tile=(16, 16), photometric="minisblack", planarconfig="contig",
                     extratags=[(GDAL_NODATA, "s", 0, "-9999", True)])
    (header,) = rasters.read_headers(path)
    assert header.nodata == (-9999.0,) * 3
    masked = _mask(header, 16 * 16 * 2)
    assert sorted(zip(*np.nonzero(masked))) == [(5, 7), (10, 11), (20, 21)]
    assert np.array_equal(_mask(header, mask="none"), np.isnan(pixels[..., 0])
                          | np.isinf(pixels[..., 2]))
    assert _mask(header, bands=(1,)).sum() == 1  # only band 1's NaN


def test_per_band_nodata_and_the_override(tmp_path):
    pixels = np.ones((20, 20, 2), np.uint16)
    pixels[0, 0] = (7, 1)   # nodata of band 1
    pixels[0, 1] = (1, 7)   # band 2's nodata is 9, so this is valid
    pixels[0, 2] = (1, 9)
    path = str(tmp_path / "u.tif")
    tifffile.imwrite(path, pixels, photometric="minisblack", planarconfig="contig",
                     extratags=[(GDAL_NODATA, "s", 0, "7 9", True)])
    (header,) = rasters.read_headers(path)
    assert header.nodata == (7.0, 9.0)
    assert sorted(zip(*np.nonzero(_mask(header)))) == [(0, 0), (0, 2)]
    assert sorted(zip(*np.nonzero(_mask(header, nodata=1)))) == sorted(
        {(y, x) for y in range(20) for x in range(20)} - {(0, 0), (0, 1), (0, 2)} |
        {(0, 0), (0, 1), (0, 2)})  # every pixel has a 1 in some band
    with pytest.raises(ConfigError, match=r"input.nodata: 3 values for .*u.tif, which has 2"):
        rasters.mask_array(header, 1000, nodata=(1, 2, 3))


def test_alpha_and_mask_bands(tmp_path):
    rgba = _image((30, 40, 4), "uint8")
    rgba[..., 3] = 255
    rgba[:10, :, 3] = 0
    path = str(tmp_path / "rgba.tif")
    tifffile.imwrite(path, rgba, photometric="rgb", extrasamples=["unassalpha"], tile=(16, 16))
    (header,) = rasters.read_headers(path)
    assert header.alpha_band == 4 and header.data_bands == (1, 2, 3)
    assert np.array_equal(_read(header), rgba[..., :3])  # alpha is not a feature
    assert _mask(header).sum() == 10 * 40
    assert _mask(header, mask="none").sum() == 0
    assert np.array_equal(_read(header, mask="none"), rgba[..., :3])
    # a mask band by number: band 2 of a 3-band image, 0 = masked
    stack = _image((30, 40, 3), "uint16")
    stack[..., 1] = 1
    stack[3:5, 6:9, 1] = 0
    path = str(tmp_path / "m.tif")
    tifffile.imwrite(path, stack, photometric="minisblack", planarconfig="contig")
    (header,) = rasters.read_headers(path)
    assert np.array_equal(_read(header, mask="band:2"), stack[..., [0, 2]])
    assert _mask(header, mask="band:2").sum() == 6
    with pytest.raises(ConfigError, match=r"input.mask: 'alpha', but .*m.tif has no alpha"):
        rasters.mask_array(header, 1000, mask="alpha")


# ---------------------------------------------------------------------------------------------
# Bad input


def test_damaged_tile_names_the_window(tmp_path):
    pixels = _image((64, 64), "uint16")
    path = str(tmp_path / "bad.tif")
    tifffile.imwrite(path, pixels, tile=(16, 16), compression="zlib")
    with tifffile.TiffFile(path) as tif:
        page = tif.pages[0]
        offset, count = page.dataoffsets[5], page.databytecounts[5]  # tile row 1, column 1
    with open(path, "r+b") as handle:
        handle.seek(offset)
        handle.write(b"\x00" * count)
    (header,) = rasters.read_headers(path)  # the header is fine
    array = rasters.pixel_array(header, 16 * 16)
    assert np.array_equal(array[:16].compute()[..., 0], pixels[:16])  # undamaged windows read
    with pytest.raises(ImageReadError, match=r"bad.tif: damaged data in tile 5 \(y 16-31, "
                                             r"x 16-31\) of the window at y 16-31, x 16-31 "
                                             r"\(.*\); fix or remove it"):
        array.compute(scheduler="synchronous")


def test_unknown_codec_is_named_with_its_package(tmp_path):
    path = str(tmp_path / "codec.tif")
    tifffile.imwrite(path, _image((32, 32), "uint16"), tile=(16, 16), compression="zlib")
    with tifffile.TiffFile(path, mode="r+") as tif:
        tif.pages[0].tags["Compression"].overwrite(50099)
    with pytest.raises(ImageReadError, match=r"codec.tif: unknown TIFF compression 50099: "
                                             r"neither tifffile nor imagecodecs decodes it"):
        rasters.read_headers(path)
    store = str(tmp_path / "codec.zarr")
    array = zarr.open_array(store, mode="w", shape=(8, 8), chunks=(4, 4), dtype="u2",
                            zarr_format=2)
    array[:] = 1
    meta = json.load(open(os.path.join(store, ".zarray")))
    meta["compressor"] = {"id": "nosuchcodec"}
    json.dump(meta, open(os.path.join(store, ".zarray"), "w"))
    with pytest.raises(ImageReadError, match=r"codec.zarr: zarr codec 'nosuchcodec' is not "
                                             r"available; it is decoded by"):
        rasters.read_headers(store)


def test_damaged_zarr_chunk_names_the_window(tmp_path):
    store = str(tmp_path / "z.zarr")
    array = zarr.open_array(store, mode="w", shape=(40, 40), chunks=(20, 20), dtype="u2",
                            zarr_format=2)
    array[:] = 3
    with open(os.path.join(store, "1.0"), "wb") as handle:
        handle.write(b"garbage, not a compressed chunk")
    (header,) = rasters.read_headers(store)
    with pytest.raises(ImageReadError, match=r"z.zarr: damaged data in the window at y 20-39, "
                                             r"x 0-19"):
        _read(header, 400)


def test_not_a_tiff_and_unsupported_dtype(tmp_path):
    path = tmp_path / "fake.tif"
    path.write_bytes(b"<!DOCTYPE html><html></html>")
    with pytest.raises(ImageReadError, match=r"fake.tif: not a TIFF file"):
        rasters.read_headers(str(path))
    tifffile.imwrite(str(tmp_path / "i8.tif"), np.zeros((4, 4), np.int8))
    with pytest.raises(ImageReadError, match=r"pixel type int8 is not supported"):
        rasters.read_headers(str(tmp_path / "i8.tif"))


# ---------------------------------------------------------------------------------------------
# Sampling


def test_sample_is_the_same_for_any_chunking_and_skips_masked(tmp_path):
    pixels = _image((300, 257, 2), "uint16")
    pixels[100:150, :, 0] = 0  # nodata
    path = str(tmp_path / "s.tif")
    tifffile.imwrite(path, pixels, tile=(16, 16), photometric="minisblack", planarconfig="contig",
                     extratags=[(GDAL_NODATA, "s", 0, "0", True)])
    (header,) = rasters.read_headers(path)
    results = []
    for budget in (16 * 16, 16 * 16 * 7, 1 << 22):
        array = rasters.pixel_array(header, budget)
        masked = rasters.mask_array(header, budget)
        sample = rasters.sample_pixels(array, masked, seed=3, key=rasters.sample_key("s"),
                                       n_sample=5000)
        results.append(dask.compute(sample, scheduler="threads")[0])
    for positions, values in results[1:]:
        assert np.array_equal(positions, results[0][0])
        assert np.array_equal(values, results[0][1])
    positions, values = results[0]
    rows = positions // 257
    assert not np.any((rows >= 100) & (rows < 150))
    assert np.array_equal(values, pixels.reshape(-1, 2)[positions])
    assert 0.8 * 5000 * 250 / 300 < len(positions) < 1.2 * 5000 * 250 / 300
    other = rasters.sample_pixels(rasters.pixel_array(header, 1 << 22),
                                  rasters.mask_array(header, 1 << 22), seed=4,
                                  key=rasters.sample_key("s"), n_sample=5000).compute()
    assert not np.array_equal(other[0][:100], positions[:100])  # the seed matters


# ---------------------------------------------------------------------------------------------
# Outputs


def test_label_tiff_from_dask_windows_equals_the_labels(tmp_path):
    pixels = _image((200, 190, 3), "int16")
    path = str(tmp_path / "in.tif")
    tifffile.imwrite(path, pixels, tile=(32, 32), photometric="minisblack", planarconfig="contig")
    (header,) = rasters.read_headers(path)
    array = rasters.pixel_array(header, 32 * 32 * 3)
    centroids = np.array([[-2000.0, 0, 0], [0, 20000, 0], [30000, 30000, 30000]])

    def label(block: np.ndarray) -> np.ndarray:
        d = ((block[:, :, None, :].astype(np.float64) - centroids) ** 2).sum(axis=3)
        return d.argmin(axis=2).astype(np.uint8)

    labels = array.map_blocks(label, drop_axis=2, dtype=np.uint8)
    out = str(tmp_path / "labels" / "in.tif")
    tile = tiled.tile_for(header.block_shape, header.height, header.width)
    size = tiled.write_tiff(out, tiled.array_windows(labels, max_workers=2), 200, 190, 1,
                            np.uint8, tile=tile, nodata=tiled.masked_label(3),
                            colormap=np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255]], np.uint8))
    assert size == os.path.getsize(out) and os.listdir(tmp_path / "labels") == ["in.tif"]
    with tifffile.TiffFile(out) as tif:
        assert tif.pages[0].is_tiled and tif.pages[0].tags[GDAL_NODATA].value == "255"
        assert np.array_equal(tif.asarray(), label(pixels))


def test_segmented_and_masks_keep_dtype_and_nodata(tmp_path):
    labels = np.array([[0, 1, 255], [1, 0, 0]], np.uint8)
    values = tiled.centroid_values(np.array([[10.4, 65535.9], [-1.0, 3.5]]), "uint16")
    assert values.tolist() == [[10, 65535], [0, 4]]
    fill = tiled.fill_values("uint16", (7.0, None))
    painted = tiled.paint(labels, values, fill)
    assert painted.dtype == np.uint16 and painted[0, 2].tolist() == [7, 0]
    assert painted[1, 1].tolist() == [10, 65535]
    floats = tiled.paint(labels, tiled.centroid_values(np.array([[0.5], [1.5]]), "float32"),
                         tiled.fill_values("float32", (None,)))
    assert np.isnan(floats[0, 2, 0]) and floats[0, 1, 0] == np.float32(1.5)
    assert tiled.cluster_mask(labels, 0).tolist() == [[255, 0, 0], [0, 255, 255]]
    assert tiled.label_dtype(255) == np.uint8 and tiled.label_dtype(256) == np.uint16
    assert tiled.masked_label(255) == 255 and tiled.masked_label(256) == 65535
    out = str(tmp_path / "seg.tif")
    big = tiled.paint(np.zeros((40, 50), np.uint8), values, fill)
    tiled.write_tiff(out, [(0, 0, big[:17]), (17, 0, big[17:])], 40, 50, 2, np.uint16,
                     tile=(16, 16), nodata=7, compression="zstd", bigtiff=True)
    with tifffile.TiffFile(out) as tif:
        assert tif.is_bigtiff and np.array_equal(tif.asarray(), big)


def test_tiff_writer_leaves_nothing_when_windows_are_missing(tmp_path):
    out = str(tmp_path / "part.tif")
    with pytest.raises(ValueError, match=r"3 of 4 tiles were not written"):
        tiled.write_tiff(out, [(0, 0, np.zeros((16, 16), np.uint8))], 32, 32, 1, np.uint8,
                         tile=(16, 16))
    assert os.listdir(tmp_path) == []


def test_zarr_output_has_its_marker_written_last(tmp_path):
    pixels = _image((60, 50, 4), "float32")
    url = str(tmp_path / "labels" / "img.zarr")
    windows = [(r, c, pixels[r:r + 20, c:c + 25]) for r in (40, 0, 20) for c in (25, 0)]
    tiled.write_zarr(url, windows, pixels.shape, "float32", (20, 25, 4),
                     attrs={"nodata": None, "band_names": list("abcd")})
    assert tiled.zarr_complete(url)
    back = zarr.open_array(url, mode="r")
    assert np.array_equal(back[:], pixels) and back.attrs["band_names"] == list("abcd")
    (header,) = rasters.read_headers(url)  # our own outputs read back as inputs
    assert header.axes == "YXC" and np.array_equal(_read(header, 500), pixels)
    tiled.create_zarr(url, pixels.shape, "float32", (20, 25, 4))  # a rewrite starts
    assert not tiled.zarr_complete(url)


# ---------------------------------------------------------------------------------------------
# Out of core


_CHILD = textwrap.dedent("""
    import resource, sys
    import numpy as np
    from pipeline.sinks import tiled
    from pipeline.sources import rasters

    path, out, limit = sys.argv[1], sys.argv[2], int(sys.argv[3])
    (header,) = rasters.read_headers(path)
    pixels = rasters.pixel_array(header, 1 << 18)
    masked = rasters.mask_array(header, 1 << 18)
    centroids = np.array([[1000, 1000], [30000, 5000], [60000, 60000]], np.float32)

    def label(block, masked):
        d = ((block[:, :, None, :].astype(np.float32) - centroids) ** 2).sum(axis=3)
        labels = d.argmin(axis=2).astype(np.uint8)
        labels[masked[..., 0]] = tiled.masked_label(3)
        return labels

    labels = pixels.map_blocks(label, masked[..., None], drop_axis=2, dtype=np.uint8)
    labels.blocks[0, 0].compute(scheduler="synchronous")  # start zarr's and dask's threads
    with open("/proc/self/status") as handle:
        data = [int(l.split()[1]) for l in handle if l.startswith("VmData")][0] * 1024
    resource.setrlimit(resource.RLIMIT_DATA, (data + limit, data + limit))
    try:  # the cap holds: the whole image cannot be allocated
        np.ones(header.n_pixels * 2, np.uint16)
        print("cap not enforced")
        sys.exit(3)
    except MemoryError:
        pass
    tiled.write_tiff(out, tiled.array_windows(labels), header.height, header.width, 1,
                     np.uint8, tile=(256, 256), nodata=255)
    print("done", data)
""")


def test_out_of_core_read_and_write_under_a_memory_cap(tmp_path):
    height, width = 4096, 4096  # 2 bands uint16: 64 MiB raw
    path = str(tmp_path / "scene.tif")

    def tiles():
        for y in range(0, height, 256):
            for x in range(0, width, 256):
                yield _scene_tile(y, x)

    tifffile.imwrite(path, tiles(), shape=(height, width, 2), dtype=np.uint16,
                     tile=(256, 256), compression="zlib", photometric="minisblack",
                     planarconfig="contig",
                     extratags=[(GDAL_NODATA, "s", 0, "0", True)])
    out = str(tmp_path / "labels.tif")
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(__file__)))
    # RLIMIT_DATA also counts malloc arenas (64 MiB each per thread by default) and thread
    # stacks: one arena, and threads started before the cap, leave the pixels to count.
    env["MALLOC_ARENA_MAX"] = "1"
    limit = 40 << 20  # below the 64 MiB the image takes raw
    done = subprocess.run([sys.executable, "-c", _CHILD, path, out, str(limit)], env=env,
                          capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.startswith("done")
    labels = tifffile.imread(out)
    for y, x in [(0, 0), (1024, 3840), (3840, 256), (2048, 2048)]:
        tile = _scene_tile(y, x)
        assert np.array_equal(labels[y:y + 256, x:x + 256], _scene_labels(tile)), (y, x)


def _scene_tile(y: int, x: int) -> np.ndarray:
    """Tile (y, x) of a synthetic 2-band scene: three classes in stripes, a nodata square."""
    classes = np.array([[1000, 1000], [30000, 5000], [60000, 60000]], np.uint16)
    rows = np.arange(y, y + 256)[:, None]
    cols = np.arange(x, x + 256)[None, :]
    which = ((rows // 300 + cols // 500) % 3)
    tile = classes[which] + ((rows * 7 + cols * 13) % 50).astype(np.uint16)[..., None]
    if y == 1024 and x == 3840:
        tile[:100, :100] = 0
    return tile


def _scene_labels(tile: np.ndarray) -> np.ndarray:
    centroids = np.array([[1000.0, 1000.0], [30000.0, 5000.0], [60000.0, 60000.0]])
    d = ((tile[:, :, None, :].astype(np.float32) - centroids.astype(np.float32)) ** 2).sum(axis=3)
    labels = d.argmin(axis=2).astype(np.uint8)
    labels[np.any(tile == 0, axis=2)] = 255
    return labels


# ---------------------------------------------------------------------------------------------
# Object storage (moto's S3 server on 127.0.0.1)


@pytest.fixture(scope="module")
def s3_bucket():
    import uuid

    from objectstore import S3Server, aws_environment

    with pytest.MonkeyPatch.context() as patch:
        server = S3Server()
        for key, value in aws_environment(server.endpoint).items():
            patch.setenv(key, value)
        try:
            name = f"r-{uuid.uuid4().hex[:12]}"
            server.client().create_bucket(Bucket=name)
            yield server, name, {"client_kwargs": {"endpoint_url": server.endpoint}}
        finally:
            server.stop()


def test_rasters_read_and_written_through_urls(tmp_path, s3_bucket):
    server, bucket, options = s3_bucket
    client = server.client()
    pixels = _image((96, 80, 3), "uint16")
    local = str(tmp_path / "in.tif")
    tifffile.imwrite(local, pixels, tile=(32, 32), compression="zlib", photometric="minisblack",
                     planarconfig="contig")
    client.upload_file(local, bucket, "in/in.tif")
    (header,) = rasters.read_headers(f"s3://{bucket}/in/in.tif", storage_options=options)
    assert np.array_equal(_read(header, 32 * 32), pixels)
    # a zarr store by URL, written by our sink chunk by chunk, read back by our source
    url = f"s3://{bucket}/out/img.zarr"
    tiled.write_zarr(url, [(r, 0, pixels[r:r + 32]) for r in (64, 0, 32)], pixels.shape,
                     "uint16", (32, 80, 3), storage_options=options)
    assert tiled.zarr_complete(url, options)
    (back,) = rasters.read_headers(url, storage_options=options)
    assert np.array_equal(_read(back, 32 * 80), pixels)
    # a TIFF bigger than one upload part goes up in parts, never as one PUT of the file
    big = _image((1024, 1024, 3), "uint16")  # 6 MiB, incompressible
    out = f"s3://{bucket}/out/big.tif"
    writer = tiled.TiffWriter(out, 1024, 1024, 3, "uint16", tile=(256, 256),
                              compression="none", storage_options=options)
    for r in range(0, 1024, 256):
        writer.write(r, 0, big[r:r + 256])
    import unittest.mock as mock

    with mock.patch.object(tiled, "UPLOAD_BLOCK", 5 << 20):
        writer.close()
    parts = client.list_objects_v2(Bucket=bucket, Prefix="out/big.tif")["Contents"]
    assert parts[0]["Size"] > 6 << 20 and "-" in parts[0]["ETag"]  # a multipart ETag
    client.download_file(bucket, "out/big.tif", str(tmp_path / "big.tif"))
    assert np.array_equal(tifffile.imread(str(tmp_path / "big.tif")), big)


def test_a_raster_job_from_and_to_object_storage(tmp_path, s3_bucket):
    """TIFF and a zarr store listed under an s3:// folder, outputs written to s3://."""
    import yaml

    from conftest import read_json, run_cli

    server, bucket, options = s3_bucket
    client = server.client()
    pixels = _image((64, 48, 3), "uint16", seed=9)
    local = str(tmp_path / "a.tif")
    tifffile.imwrite(local, pixels, tile=(16, 16), photometric="minisblack",
                     planarconfig="contig")
    client.upload_file(local, bucket, "job/in/a.tif")
    tiled.write_zarr(f"s3://{bucket}/job/in/b.zarr", [(0, 0, pixels)], pixels.shape, "uint16",
                     (32, 48, 3), storage_options=options)
    job = {"input": {"paths": [f"s3://{bucket}/job/in/"], "storage_options": options},
           "kmeans": {"k": 3, "seed": 0},
           "output": {"dir": f"s3://{bucket}/job/out", "storage_options": options}}
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(job))
    result = run_cli("run", str(path), "-q")
    assert result.code == 0, result.err
    client.download_file(bucket, "job/out/report.json", str(tmp_path / "report.json"))
    report = read_json(tmp_path)
    assert sorted(e["name"] for e in report["images"]) == ["a", "b"]
    client.download_file(bucket, "job/out/labels/a.tif", str(tmp_path / "labels-a.tif"))
    labels = tifffile.imread(str(tmp_path / "labels-a.tif"))
    assert labels.shape == (64, 48) and labels.max() < 3
    zarr_labels = zarr.open_array(zarr.storage.FsspecStore.from_url(
        f"s3://{bucket}/job/out/labels/b.zarr", storage_options=options, read_only=True),
        mode="r")[:]
    assert np.array_equal(zarr_labels, labels)
    assert run_cli("run", str(path), "-q").code == 0  # resume: both complete
    client.download_file(bucket, "job/out/report.json", str(tmp_path / "report.json"))
    assert all(e["resumed"] for e in read_json(tmp_path)["images"])
