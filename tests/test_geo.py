"""Georeferenced rasters (issue 13): GeoTIFF, COG, VRT band stacks and JPEG 2000 read through
rasterio in block-aligned windows; label, mask and segmented COGs that keep the input's CRS,
transform and nodata; the QGIS style and the class table with areas; bad input in one line.

Every raster here is written by the test with rasterio (or gdalbuildvrt, from Debian's gdal-bin);
`samples/rasters/` holds the one real scene.
"""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET

import dask.array as da
import numpy as np
import pytest
import rasterio
from rasterio.enums import ColorInterp
from rasterio.transform import from_origin
from rio_cogeo.cogeo import cog_validate

from conftest import modules_imported_by, modules_of_run, read_json, run_cli, write_job
from pipeline.errors import ConfigError, ImageReadError, OutputError
from pipeline.sinks import cog
from pipeline.sources import geo

SAMPLE = os.path.join(os.path.dirname(__file__), "..", "samples", "rasters",
                      "landsat8_224078_crop.tif")
UTM = "EPSG:32633"  # metres
WGS84 = "EPSG:4326"  # degrees
UTM_TRANSFORM = from_origin(500000.0, 4100000.0, 30.0, 30.0)
DEGREE_TRANSFORM = from_origin(10.0, 46.0, 0.001, 0.001)


def write_raster(path, bands: np.ndarray, crs: str | None = UTM, transform=UTM_TRANSFORM,
                 nodata: float | None = None, tiled: bool = True, block: int = 64,
                 **extra) -> str:
    """A GeoTIFF of ``bands`` (count, height, width), tiled ``block`` or striped."""
    count, height, width = bands.shape
    profile = dict(driver="GTiff", width=width, height=height, count=count,
                   dtype=bands.dtype.name, crs=crs, transform=transform, compress="deflate")
    if tiled:
        profile.update(tiled=True, blockxsize=block, blockysize=block)
    else:
        profile.update(tiled=False, blockysize=block)
    if nodata is not None:
        profile["nodata"] = nodata
    profile.update(extra)
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(bands)
    return str(path)


def classes_scene(height: int = 150, width: int = 200, count: int = 3,
                  dtype: str = "uint16", seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Bands (count, height, width) of four known spectral classes in quadrants, with noise,
    and the class of each pixel."""
    rng = np.random.default_rng(seed)
    means = np.array([[300, 1200, 800, 90, 4000, 2500], [2500, 2600, 2400, 3000, 100, 700],
                      [900, 400, 3100, 1500, 1500, 200], [4000, 3900, 300, 200, 2800, 3500]],
                     dtype=np.float64)[:, :count]
    truth = np.zeros((height, width), dtype=np.uint8)
    truth[:, width // 2:] = 1
    truth[height // 2:, :] += 2
    values = means[truth] + rng.normal(0, 40, (height, width, count))
    return np.moveaxis(values, -1, 0).astype(dtype), truth


def nearest(pixels: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    distances = ((pixels[..., None, :].astype(np.float64) - centroids) ** 2).sum(-1)
    return distances.argmin(-1).astype(np.uint8)


def label_array(header, chunk_pixels: int, centroids: np.ndarray) -> da.Array:
    """Labels of a scene by nearest centroid, masked pixels 255, chunked as the reader."""
    pixels = geo.pixel_array(header, chunk_pixels)
    masked = geo.mask_array(header, chunk_pixels)

    def assign(block, mask):
        labels = nearest(block, centroids)
        labels[mask[..., 0]] = 255
        return labels

    return da.map_blocks(assign, pixels, masked[..., None], drop_axis=2, dtype=np.uint8)


def one_line(message: str) -> bool:
    return "\n" not in message and len(message) < 400


# ---------------------------------------------------------------------------------------------
# Reading


def test_header_keeps_georeferencing_nodata_and_blocks(tmp_path):
    bands, _ = classes_scene(count=6)
    path = write_raster(tmp_path / "six.tif", bands, nodata=0)
    header = geo.read_header(path)
    assert header.shape == (150, 200, 6)
    assert header.dtype == "uint16"
    assert header.nodata == (0.0,) * 6
    assert header.block_shape == (64, 64)
    assert rasterio.crs.CRS.from_wkt(header.crs_wkt) == rasterio.crs.CRS.from_string(UTM)
    assert header.affine() == UTM_TRANSFORM
    assert header.georeferenced and header.name == "six"
    assert all("nodata" in flags for flags in header.mask_flags)


@pytest.mark.parametrize("tiled", [True, False], ids=["tiled", "striped"])
@pytest.mark.parametrize("chunk_pixels", [1, 5000, 20000, 10 ** 7])
def test_windows_follow_blocks_and_read_the_file_exactly(tmp_path, tiled, chunk_pixels):
    bands, _ = classes_scene(count=6)
    path = write_raster(tmp_path / "scene.tif", bands, tiled=tiled, block=32 if tiled else 8)
    header = geo.read_header(path)
    pixels = geo.pixel_array(header, chunk_pixels)
    block_h, block_w = header.block_shape
    rows, cols = pixels.chunks[:2]
    assert all(size % block_h == 0 for size in rows[:-1])
    assert all(size % block_w == 0 for size in cols[:-1])
    assert max(rows) * max(cols) <= max(chunk_pixels, block_h * block_w)
    np.testing.assert_array_equal(pixels.compute(), np.moveaxis(bands, 0, -1))
    assert pixels.dtype == np.uint16


def test_each_task_carries_its_path_and_window(tmp_path):
    bands, _ = classes_scene()
    path = write_raster(tmp_path / "scene.tif", bands)
    pixels = geo.pixel_array(geo.read_header(path), 64 * 64)
    tasks = [task for task in dict(pixels.__dask_graph__()).values()]
    assert len(tasks) == math.ceil(150 / 64) * math.ceil(200 / 64)
    windows = {tuple(task[2:]) for task in tasks}
    assert (0, 0, 64, 64) in windows and (128, 192, 22, 8) in windows
    assert all(task[1].path == path for task in tasks)
    assert all(task[0] is geo.read_window for task in tasks)


def test_mask_from_nodata_nan_and_mask_band(tmp_path):
    bands, _ = classes_scene(count=2, dtype="float32")
    bands[0, 0, :5] = -9999
    bands[1, 1, :3] = np.nan
    nodata_path = write_raster(tmp_path / "float.tif", bands, nodata=-9999)
    masked = geo.mask_array(geo.read_header(nodata_path), 5000).compute()
    assert masked.sum() == 8 and masked[0, :5].all() and masked[1, :3].all()

    ints, _ = classes_scene(count=3)
    band_path = tmp_path / "maskband.tif"
    with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True):
        with rasterio.open(write_raster(band_path, ints), "r+") as dst:
            valid = np.full((150, 200), 255, dtype=np.uint8)
            valid[100:, 150:] = 0
            dst.write_mask(valid)
    header = geo.read_header(str(band_path))
    masked = geo.mask_array(header, 5000).compute()
    assert masked.sum() == 50 * 50 and masked[100:, 150:].all()


def test_mask_keys_alpha_band_and_overrides(tmp_path):
    bands, _ = classes_scene(count=3)
    alpha = np.full((1, 150, 200), 255, dtype=np.uint16)
    alpha[0, :, :7] = 0
    bands[:, 50, 50] = 0
    path = write_raster(tmp_path / "rgba.tif", np.concatenate([bands, alpha]), nodata=0)
    with rasterio.open(path, "r+") as dst:
        dst.colorinterp = [ColorInterp.red, ColorInterp.green, ColorInterp.blue,
                           ColorInterp.alpha]
    header = geo.read_header(path)
    assert header.alpha_band == 4 and header.data_bands == (1, 2, 3)
    assert geo.pixel_array(header, 5000).shape == (150, 200, 3)
    auto = geo.mask_array(header, 5000).compute()
    assert auto.sum() == 150 * 7 + 1
    assert geo.mask_array(header, 5000, mask="none").compute().sum() == 0
    by_band = geo.mask_array(header, 5000, bands=(1, 2), mask="band:4").compute()
    assert by_band.sum() == 150 * 7 + 1
    override = geo.mask_array(header, 5000, mask="none", nodata=bands[0, 0, 0]).compute()
    assert override[0, 0] and override.sum() == (bands == bands[0, 0, 0]).any(axis=0).sum()
    with pytest.raises(ConfigError, match=r"input.mask: band 9 does not exist in .*rgba.tif "
                                          r"\(4 bands, numbered from 1\)"):
        geo.mask_array(header, 5000, mask="band:9")
    with pytest.raises(ConfigError, match=r"input.bands: band 0 does not exist"):
        geo.pixel_array(header, 5000, bands=(0, 1))


def test_pixels_and_mask_share_their_read_tasks(tmp_path):
    bands, _ = classes_scene()
    header = geo.read_header(write_raster(tmp_path / "scene.tif", bands, nodata=0))
    pixels, masked = geo.pixel_array(header, 5000), geo.mask_array(header, 5000)
    reads = {key for key in dict(pixels.__dask_graph__()) if key[0].startswith("geo-read")}
    assert reads and reads <= set(dict(masked.__dask_graph__()))


def test_apply_scale_gives_physical_units(tmp_path):
    raw = np.array([[[100, -50], [0, 20000]]], dtype=np.int16)
    path = write_raster(tmp_path / "refl.tif", raw, nodata=0, tiled=False, block=1)
    with rasterio.open(path, "r+") as dst:
        dst.scales, dst.offsets = (2.75e-05,), (-0.2,)
    stored = geo.read_header(path)
    assert stored.scales == (2.75e-05,) and stored.offsets == (-0.2,)
    assert stored.dtype == "int16"
    np.testing.assert_array_equal(geo.pixel_array(stored, 1000).compute()[..., 0], raw[0])
    header = geo.read_header(path, apply_scale=True)
    assert header.dtype == "float32" and header.stored_dtype == "int16"
    scaled = geo.pixel_array(header, 1000).compute()[..., 0]
    assert scaled.dtype == np.float32
    expected = np.array([[100, -50], [0, 20000]]) * 2.75e-05 - 0.2
    np.testing.assert_allclose(scaled.ravel()[[0, 1, 3]], expected.ravel()[[0, 1, 3]],
                               rtol=1e-6)
    assert np.isnan(scaled[1, 0])  # nodata is masked on the stored value, then NaN
    np.testing.assert_array_equal(geo.mask_array(header, 1000).compute(),
                                  [[False, False], [True, False]])
    # -0.2 is where a stored 0 would land: masking never compares scaled values to nodata
    assert np.isnan(geo.nodata_values(header, (1,), "auto", None)).all()


def test_vrt_band_stack_is_one_image(tmp_path):
    bands, _ = classes_scene(count=3)
    files = [write_raster(tmp_path / f"B{b + 1}.tif", bands[b:b + 1], nodata=0)
             for b in range(3)]
    vrt = str(tmp_path / "stack.vrt")
    build_vrt(vrt, files)
    header = geo.read_header(vrt)
    assert header.driver == "VRT" and header.shape == (150, 200, 3)
    assert header.affine() == UTM_TRANSFORM and header.nodata == (0.0,) * 3
    np.testing.assert_array_equal(geo.pixel_array(header, 4000).compute(),
                                  np.moveaxis(bands, 0, -1))


def build_vrt(vrt: str, files: list[str]) -> None:
    """A band stack as `gdalbuildvrt -separate` makes it (Debian gdal-bin)."""
    tool = shutil.which("gdalbuildvrt")
    assert tool, "gdalbuildvrt (Debian gdal-bin) is needed: apt-get install gdal-bin"
    subprocess.run([tool, "-q", "-separate", vrt, *files], check=True)


def test_jpeg2000_is_read_where_gdal_decodes_it(tmp_path):
    bands, _ = classes_scene(count=3, dtype="uint16")
    path = str(tmp_path / "scene.jp2")
    with rasterio.open(path, "w", driver="JP2OpenJPEG", width=200, height=150, count=3,
                       dtype="uint16", crs=UTM, transform=UTM_TRANSFORM, QUALITY=100,
                       REVERSIBLE=True, BLOCKXSIZE=64, BLOCKYSIZE=64) as dst:
        dst.write(bands)
    header = geo.read_header(path)
    assert header.driver == "JP2OpenJPEG" and header.block_shape[0] == 64
    assert header.affine() == UTM_TRANSFORM
    np.testing.assert_array_equal(geo.pixel_array(header, 5000).compute(),
                                  np.moveaxis(bands, 0, -1))


def test_url_is_read_through_the_storage_layer(tmp_path):
    import fsspec

    bands, _ = classes_scene(count=2)
    path = write_raster(tmp_path / "scene.tif", bands, nodata=0)
    memory = fsspec.filesystem("memory")
    with open(path, "rb") as handle:
        memory.pipe("/geo-test/scene.tif", handle.read())
    try:
        header = geo.read_header("memory://geo-test/scene.tif")
        assert header.affine() == UTM_TRANSFORM and header.size_bytes == os.path.getsize(path)
        np.testing.assert_array_equal(geo.pixel_array(header, 5000).compute(),
                                      np.moveaxis(bands, 0, -1))
    finally:
        memory.rm("/geo-test", recursive=True)


def test_sample_scene_reads_with_its_georeferencing():
    header = geo.read_header(SAMPLE)
    assert header.shape == (512, 640, 3)
    assert header.band_names == ("blue", "green", "red")
    assert header.crs().to_epsg() == 32621 and header.nodata == (0.0,) * 3
    masked = geo.mask_array(header, 1 << 16).compute()
    assert 0.10 < masked.mean() < 0.16  # the scene-edge fill


# ---------------------------------------------------------------------------------------------
# Bad input: one line naming the file (and the block)


def test_vrt_naming_a_missing_file(tmp_path):
    bands, _ = classes_scene(count=2)
    files = [write_raster(tmp_path / f"B{b}.tif", bands[b:b + 1]) for b in range(2)]
    vrt = str(tmp_path / "stack.vrt")
    build_vrt(vrt, files)
    os.unlink(files[1])
    with pytest.raises(ImageReadError) as info:
        geo.read_header(vrt)
    message = str(info.value)
    assert message.startswith(f"{vrt}: names ") and "B1.tif, which does not exist" in message
    assert one_line(message)


def test_vrt_of_bands_of_different_sizes(tmp_path):
    bands, _ = classes_scene(count=2)
    small = write_raster(tmp_path / "B1.tif", bands[1:2, :, :150])
    files = [write_raster(tmp_path / "B0.tif", bands[:1]), small]
    vrt = str(tmp_path / "stack.vrt")
    build_vrt(vrt, files)
    with pytest.raises(ImageReadError, match=r"sources differ in size: B0.tif is 200x150, "
                                             r"B1.tif is 150x150; a band stack needs one grid"):
        geo.read_header(vrt)


def test_corrupt_block_names_file_and_block(tmp_path):
    bands, _ = classes_scene(count=3)
    path = write_raster(tmp_path / "scene.tif", bands)
    with rasterio.open(path) as src:
        offset = int(src.get_tag_item("BLOCK_OFFSET_2_1", "TIFF", bidx=1))
    with open(path, "r+b") as handle:
        handle.seek(offset)
        handle.write(b"\xff" * 64)
    header = geo.read_header(path)  # the header is intact
    with pytest.raises(ImageReadError) as info:
        geo.pixel_array(header, 1 << 20).compute(scheduler="synchronous")
    message = str(info.value)
    assert message.startswith(f"{path}: damaged data in block (row 1, column 2) at pixels y "
                              "64-127, x 128-191 (")
    assert one_line(message)


def test_unsupported_format(tmp_path):
    path = tmp_path / "notes.xyz"
    path.write_text("this is not a raster\n")
    with pytest.raises(ImageReadError, match=r"notes.xyz: not a raster format this GDAL build "
                                             r"reads .*; convert it to GeoTIFF"):
        geo.read_header(str(path))


def test_unsupported_data_type(tmp_path):
    bands = np.zeros((1, 8, 8), dtype=np.complex64)
    path = write_raster(tmp_path / "complex.tif", bands, compress=None)
    with pytest.raises(ImageReadError, match=r"complex.tif: data type complex64 .* is not "
                                             r"supported; supported: float32"):
        geo.read_header(path)


def test_missing_geo_extra_names_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "rasterio", None)
    with pytest.raises(ConfigError) as info:
        geo.require_rasterio()
    assert str(info.value) == ("georeferenced rasters need rasterio, which is not installed: "
                               "pip install 'kmeans-pipeline[geo]'")


# ---------------------------------------------------------------------------------------------
# Writing


CENTROIDS = np.array([[300, 1200, 800], [2500, 2600, 2400], [900, 400, 3100],
                      [4000, 3900, 300]], dtype=np.float64)


def scene_outputs(tmp_path, bands, chunk_pixels=4096, name="scene", **raster):
    path = write_raster(tmp_path / f"{name}.tif", bands, **raster)
    header = geo.read_header(path)
    labels = label_array(header, chunk_pixels, CENTROIDS[:, :bands.shape[0]])
    out = str(tmp_path / "out")
    written = cog.write_scene(out, name, labels, header,
                              CENTROIDS[:, :bands.shape[0]].astype(bands.dtype),
                              cog.display_palette(4), band_names=header.band_names)
    return header, out, written


def test_cog_outputs_keep_crs_transform_and_nodata(tmp_path):
    bands, truth = classes_scene(height=700, width=600)
    bands[:, :20, :30] = 0
    header, out, written = scene_outputs(tmp_path, bands, nodata=0)
    expected = {"labels": 255, "segmented": 0, "masks": None}
    files = {kind: [rel for rel, _ in entries] for kind, entries in written.files.items()}
    assert files["masks"] == [f"masks/scene/{j}.tif" for j in range(4)]
    for kind in ("labels", "segmented", "masks"):
        for rel in files[kind]:
            path = os.path.join(out, rel)
            valid, errors, _ = cog_validate(path)
            assert valid, (rel, errors)
            with rasterio.open(path) as src:
                assert src.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"
                assert src.crs == header.crs() and src.transform == header.affine()
                assert src.nodata == expected[kind]
                assert src.compression.name == "deflate" and src.profile["tiled"]
                assert src.block_shapes[0] == (512, 512)
                assert src.overviews(1) == [2]
    with rasterio.open(os.path.join(out, "labels/scene.tif")) as src:
        labels = src.read(1)
        assert src.dtypes[0] == "uint8"
    np.testing.assert_array_equal(labels[20:, 30:], truth[20:, 30:])
    assert (labels[:20, :30] == 255).all()
    with rasterio.open(os.path.join(out, "segmented/scene.tif")) as src:
        segmented = src.read()
        assert src.dtypes == ("uint16",) * 3
    np.testing.assert_array_equal(segmented[:, 400, 500], CENTROIDS[3].astype(np.uint16))
    assert (segmented[:, :20, :30] == 0).all()
    with rasterio.open(os.path.join(out, "masks/scene/2.tif")) as src:
        np.testing.assert_array_equal(src.read(1)[20:, 30:] == 255, truth[20:, 30:] == 2)
    assert written.masked_pixels == 600
    assert sorted(os.listdir(os.path.join(out, "labels"))) == ["scene.qml", "scene.tif"]


def test_label_cog_carries_colour_table_and_class_names(tmp_path):
    bands, _ = classes_scene()
    _, out, _ = scene_outputs(tmp_path, bands)
    palette = cog.display_palette(4)
    with rasterio.open(os.path.join(out, "labels/scene.tif")) as src:
        table = src.colormap(1)
        assert src.colorinterp[0].name == "palette"
        assert src.tags(1)["CLASS_2"] == "class 2" and src.descriptions == ("class",)
    for j in range(4):
        assert table[j] == (*palette[j], 255)
    assert table[255] == (0, 0, 0, 0)
    style = ET.parse(os.path.join(out, "labels/scene.qml")).getroot()
    renderer = style.find("pipe/rasterrenderer")
    assert renderer.get("type") == "paletted"
    entries = renderer.findall("colorPalette/paletteEntry")
    assert [(e.get("value"), e.get("color"), e.get("label")) for e in entries] == [
        (str(j), "#{:02x}{:02x}{:02x}".format(*palette[j]), f"class {j}") for j in range(4)]


def test_class_areas_are_pixels_times_pixel_area(tmp_path):
    bands, truth = classes_scene()
    _, out, written = scene_outputs(tmp_path, bands)
    with open(os.path.join(out, "classes/scene.csv")) as handle:
        rows = [line.rstrip("\n").split(",") for line in handle]
    assert rows[0] == ["class", "name", "colour", "pixels", "share", "area_metre2", "hectares"]
    counts = np.bincount(truth.ravel(), minlength=4)
    for j, row in enumerate(rows[1:]):
        assert int(row[3]) == counts[j] == written.counts[j]
        assert float(row[5]) == counts[j] * 900.0  # 30 m x 30 m
        assert float(row[6]) == pytest.approx(counts[j] * 0.09)


def test_geographic_crs_areas_in_degrees_and_hectares_on_the_sphere(tmp_path):
    bands, truth = classes_scene()
    _, out, written = scene_outputs(tmp_path, bands, crs=WGS84, transform=DEGREE_TRANSFORM)
    with open(os.path.join(out, "classes/scene.csv")) as handle:
        rows = [line.rstrip("\n").split(",") for line in handle]
    assert rows[0][5:] == ["area_degree2", "hectares"]
    counts = np.bincount(truth.ravel(), minlength=4)
    radius = cog.AUTHALIC_RADIUS_M
    # 0.001 degree cells near 46 N: about 111.2 m x 77.2 m (= 0.86 ha)
    for j, row in enumerate(rows[1:]):
        assert float(row[5]) == pytest.approx(counts[j] * 1e-6)
        rows_of_class = np.nonzero((truth == j).any(axis=1))[0]
        lat = np.radians(46.0 - 0.001 * (rows_of_class + 0.5))
        cell = (radius * math.radians(0.001)) ** 2 * np.cos(lat)
        expected = (cell * (truth[rows_of_class] == j).sum(axis=1)).sum() / 1e4
        assert float(row[6]) == pytest.approx(expected, rel=1e-6)
    assert any("square degrees" in note for note in written.notes)


def test_labels_identical_for_any_chunking(tmp_path):
    bands, _ = classes_scene(height=300, width=260, count=3)
    maps = []
    for chunk_pixels in (1, 3000, 64 * 192, 10 ** 7):
        folder = tmp_path / str(chunk_pixels)
        folder.mkdir()
        _, out, _ = scene_outputs(folder, bands, chunk_pixels=chunk_pixels, block=32)
        with rasterio.open(os.path.join(out, "labels/scene.tif")) as src:
            maps.append(src.read(1))
        with rasterio.open(os.path.join(out, "segmented/scene.tif")) as src:
            maps.append(src.read())
    for labels, again in zip(maps[::2], maps[2::2]):
        np.testing.assert_array_equal(labels, again)
    for segmented, again in zip(maps[1::2], maps[3::2]):
        np.testing.assert_array_equal(segmented, again)


@pytest.mark.parametrize("dtype, nodata", [("int16", -32768), ("float32", -9999.0)])
def test_segmented_keeps_input_dtype_and_nodata(tmp_path, dtype, nodata):
    bands, _ = classes_scene(dtype=dtype)
    bands[:, 0, 0] = nodata
    _, out, _ = scene_outputs(tmp_path, bands, nodata=nodata)
    with rasterio.open(os.path.join(out, "segmented/scene.tif")) as src:
        assert src.dtypes[0] == dtype and src.nodata == nodata
        assert (src.read()[:, 0, 0] == nodata).all()


def test_segmented_without_input_nodata_gets_a_value_no_class_holds(tmp_path):
    bands, _ = classes_scene()
    path = tmp_path / "scene.tif"
    with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True):
        with rasterio.open(write_raster(path, bands), "r+") as dst:
            valid = np.full((150, 200), 255, dtype=np.uint8)
            valid[:10] = 0
            dst.write_mask(valid)
    header = geo.read_header(str(path))
    labels = label_array(header, 5000, CENTROIDS)
    out = str(tmp_path / "out")
    cog.write_scene(out, "scene", labels, header, CENTROIDS.astype(np.uint16),
                    cog.display_palette(4))
    with rasterio.open(os.path.join(out, "segmented/scene.tif")) as src:
        assert src.nodata == 65535  # the largest uint16, which no centroid holds
        assert (src.read()[:, :10] == 65535).all() and (src.read()[:, 10:] != 65535).all()
        assert (src.dataset_mask()[:10] == 0).all() and (src.dataset_mask()[10:] == 255).all()


def test_raster_without_crs_gets_plain_tiled_tiffs(tmp_path):
    bands, _ = classes_scene()
    _, out, written = scene_outputs(tmp_path, bands, crs=None, transform=from_origin(0, 0, 1, -1))
    with rasterio.open(os.path.join(out, "labels/scene.tif")) as src:
        assert src.crs is None and src.profile["tiled"]
        assert "LAYOUT" not in src.tags(ns="IMAGE_STRUCTURE")
    assert cog.NO_CRS_NOTE in written.notes
    with open(os.path.join(out, "classes/scene.csv")) as handle:
        assert handle.readline().strip() == "class,name,colour,pixels,share"


def test_a_failed_write_leaves_no_file(tmp_path, monkeypatch):
    bands, _ = classes_scene()
    path = write_raster(tmp_path / "scene.tif", bands)
    header = geo.read_header(path)
    labels = label_array(header, 4096, CENTROIDS)

    copy = rasterio.shutil.copy
    calls = []

    def full_disk(*args, **kwargs):  # the label COG is written, the segmented image is not
        calls.append(args[1])
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        return copy(*args, **kwargs)

    monkeypatch.setattr(rasterio.shutil, "copy", full_disk)
    out = tmp_path / "out"
    with pytest.raises(OutputError, match=r"cannot write .*segmented/scene.tif \(\[Errno 28\] No "
                                          r"space left on device\); free space"):
        cog.write_scene(str(out), "scene", labels, header, CENTROIDS.astype(np.uint16),
                        cog.display_palette(4))
    left = [os.path.join(root, name) for root, _, names in os.walk(out) for name in names]
    assert len(calls) == 2 and left == []


def test_outputs_to_a_url_are_uploaded_complete(tmp_path):
    import fsspec

    bands, truth = classes_scene()
    header = geo.read_header(write_raster(tmp_path / "scene.tif", bands))
    labels = label_array(header, 4096, CENTROIDS)
    memory = fsspec.filesystem("memory")
    try:
        written = cog.write_scene("memory://geo-out/run", "scene", labels, header,
                                  CENTROIDS.astype(np.uint16), cog.display_palette(4),
                                  masks=False)
        assert written.files["labels"] == [("labels/scene.tif", memory.size(
            "/geo-out/run/labels/scene.tif"))]
        local = tmp_path / "copy.tif"
        local.write_bytes(memory.cat_file("/geo-out/run/labels/scene.tif"))
        assert cog_validate(str(local))[0]
        with rasterio.open(local) as src:
            np.testing.assert_array_equal(src.read(1), truth)
        assert memory.exists("/geo-out/run/classes/scene.csv")
        assert memory.exists("/geo-out/run/labels/scene.qml")
    finally:
        memory.rm("/geo-out", recursive=True)


# ---------------------------------------------------------------------------------------------
# Through the run (the CLI): listing, fit, COG outputs, report.json, resume


def geo_job(tmp_path, paths, **sections) -> str:
    sections["kmeans"] = {"k": 4, "seed": 0, **sections.get("kmeans", {})}
    sections["input"] = {"paths": paths, **sections.get("input", {})}
    return write_job(tmp_path, **sections)


def run_job(job: str, *extra: str, quiet: bool = True):
    return run_cli("run", job, *(("-q",) if quiet else ()), *extra)


def test_sample_scene_runs_to_cogs_listed_in_the_report(tmp_path):
    shutil.copy(SAMPLE, tmp_path / "scene.tif")
    result = run_job(geo_job(tmp_path, ["scene.tif"], kmeans={"k": 6}))
    assert result.code == 0, result.err
    out = tmp_path / "out"
    (entry,) = read_json(out)["images"]
    outputs = entry["outputs"]
    assert [rel for rel, _ in outputs["labels"]] == ["labels/scene.tif"]
    assert [rel for rel, _ in outputs["style"]] == ["labels/scene.qml"]
    assert [rel for rel, _ in outputs["classes"]] == ["classes/scene.csv"]
    assert len(outputs["masks"]) == 6
    for kind in ("labels", "segmented", "masks", "style", "classes"):
        for rel, size in outputs[kind]:
            assert os.path.getsize(out / rel) == size
    with rasterio.open(SAMPLE) as src:
        crs, transform = src.crs, src.transform
    for rel, _ in outputs["labels"] + outputs["segmented"] + outputs["masks"]:
        assert cog_validate(str(out / rel))[0], rel
        with rasterio.open(out / rel) as dst:
            assert dst.crs == crs and dst.transform == transform
    with rasterio.open(out / "labels/scene.tif") as dst:
        assert dst.nodata == 255 and dst.colormap(1)[255] == (0, 0, 0, 0)
        labels = dst.read(1)
    with rasterio.open(out / "segmented/scene.tif") as dst:
        assert dst.nodata == 0 and dst.dtypes[0] == "uint16"
    assert entry["masked"] == int((labels == 255).sum()) > 0
    row = entry["classes"][0]
    assert row["area_metre2"] == row["pixels"] * 900.0
    assert row["hectares"] == pytest.approx(row["pixels"] * 0.09)
    assert set(row["mean"]) == {"blue", "green", "red"}


def test_a_geotiff_job_imports_no_photo_or_web_stack_before_its_first_task(tmp_path):
    """Start-up (issue 14): until a GeoTIFF run's first task starts, none of the photo path
    (Pillow, simplejpeg, the photo tasks), the web and mail modules a QGIS style's XML
    escaping or importlib.metadata pull in, imageio, tifffile, numba, distributed or
    dask.array is imported; the report still names imageio's installed version."""
    from importlib.metadata import version

    write_raster(tmp_path / "scene.tif", classes_scene(40, 50)[0])
    said = modules_of_run(geo_job(tmp_path, ["scene.tif"], kmeans={"k": 3}))
    assert said["code"] == 0
    deferred = ("PIL.Image", "simplejpeg", "pipeline.sources.photos", "pipeline.tasks",
                "xml.sax", "urllib.request", "http.client", "email", "importlib.metadata",
                "imageio", "tifffile", "numba", "distributed", "dask.array")
    theirs = modules_imported_by("dask", "numpy", "rasterio")
    assert [m for m in deferred if m in said["first_task"] and m not in theirs] == []
    assert {"rasterio", "pipeline.raster_job"} <= set(said["first_task"])
    assert read_json(tmp_path / "out")["versions"]["imageio"] == version("imageio")


def test_resume_checks_the_cog_outputs(tmp_path):
    shutil.copy(SAMPLE, tmp_path / "scene.tif")
    job = geo_job(tmp_path, ["scene.tif"], output={"masks": False})
    assert run_job(job).code == 0
    out = tmp_path / "out"
    first = read_json(out)["images"][0]
    assert run_job(job).code == 0
    assert read_json(out)["images"][0].get("resumed") is True
    os.unlink(out / "classes" / "scene.csv")  # an output listed in report.json is gone
    assert run_job(job).code == 0
    again = read_json(out)["images"][0]
    assert not again.get("resumed") and os.path.isfile(out / "classes" / "scene.csv")
    assert again["outputs"]["labels"] == first["outputs"]["labels"]


def test_labels_identical_for_any_chunking_through_the_run(tmp_path):
    bands, truth = classes_scene(height=300, width=260)
    write_raster(tmp_path / "scene.tif", bands, nodata=0, block=32)
    maps = []
    for chunk_pixels in (1024, 32 * 96, 1 << 22):
        job = geo_job(tmp_path, ["scene.tif"], dask={"chunk_pixels": chunk_pixels},
                      output={"dir": f"out{chunk_pixels}", "masks": False})
        assert run_job(job).code == 0
        with rasterio.open(tmp_path / f"out{chunk_pixels}" / "labels" / "scene.tif") as src:
            maps.append(src.read(1))
    for labels in maps[1:]:
        np.testing.assert_array_equal(labels, maps[0])
    # the four classes found, whatever their numbering
    assert len({(int(t), int(lab)) for t, lab in zip(truth.ravel(), maps[0].ravel())}) == 4


def test_vrt_band_stack_and_scenes_in_other_crss_in_one_run(tmp_path):
    bands, _ = classes_scene()
    files = [write_raster(tmp_path / f"B{b}.tif", bands[b:b + 1], nodata=0) for b in range(3)]
    build_vrt(str(tmp_path / "stack.vrt"), files)
    write_raster(tmp_path / "degrees.tif", bands, crs=WGS84, transform=DEGREE_TRANSFORM,
                 nodata=0)
    result = run_job(geo_job(tmp_path, ["stack.vrt", "degrees.tif"], output={"masks": False}))
    assert result.code == 0, result.err
    out = tmp_path / "out"
    with rasterio.open(out / "labels" / "stack.tif") as a, \
            rasterio.open(out / "labels" / "degrees.tif") as b:
        assert a.crs == rasterio.crs.CRS.from_string(UTM) and a.transform == UTM_TRANSFORM
        assert b.crs == rasterio.crs.CRS.from_string(WGS84) and b.transform == DEGREE_TRANSFORM
        np.testing.assert_array_equal(a.read(1), b.read(1))  # one palette for the collection
    entries = {e["name"]: e for e in read_json(out)["images"]}
    assert "area_degree2" in entries["degrees"]["classes"][0]
    assert any("square degrees" in n for n in entries["degrees"]["notes"])


def test_bad_geo_inputs_are_skipped_with_one_line_each(tmp_path):
    bands, _ = classes_scene()
    write_raster(tmp_path / "good.tif", bands, nodata=0)
    files = [write_raster(tmp_path / f"B{b}.tif", bands[b:b + 1]) for b in range(3)]
    build_vrt(str(tmp_path / "stack.vrt"), files)
    os.unlink(files[2])
    corrupt = write_raster(tmp_path / "corrupt.tif", bands)
    with rasterio.open(corrupt) as src:
        offset = int(src.get_tag_item("BLOCK_OFFSET_1_0", "TIFF", bidx=1))
    with open(corrupt, "r+b") as handle:
        handle.seek(offset)
        handle.write(b"\xff" * 64)
    result = run_job(geo_job(tmp_path, ["good.tif", "stack.vrt", "corrupt.tif"],
                             output={"masks": False}), quiet=False)
    assert result.code == 3, result.err
    skipped = sorted(line for line in result.lines if line.startswith("skipped: "))
    assert len(skipped) == 2
    assert "corrupt.tif: damaged data in block (row 0, column 1)" in skipped[0]
    assert "stack.vrt: names " in skipped[1] and "B2.tif, which does not exist" in skipped[1]
    assert os.path.isfile(tmp_path / "out" / "labels" / "good.tif")
    assert not os.path.exists(tmp_path / "out" / "labels" / "corrupt.tif")


def test_raster_without_crs_runs_with_a_note(tmp_path):
    bands, _ = classes_scene()
    write_raster(tmp_path / "plain.tif", bands, crs=None, transform=from_origin(0, 0, 1, -1),
                 nodata=0)
    result = run_job(geo_job(tmp_path, ["plain.tif"], output={"masks": False}))
    assert result.code == 0, result.err
    (entry,) = read_json(tmp_path / "out")["images"]
    assert cog.NO_CRS_NOTE in entry["notes"]
    with rasterio.open(tmp_path / "out" / "labels" / "plain.tif") as src:
        assert src.crs is None and src.profile["tiled"]


def test_apply_scale_through_the_run(tmp_path):
    bands, truth = classes_scene(dtype="int16")
    path = write_raster(tmp_path / "refl.tif", bands, nodata=-9999)
    with rasterio.open(path, "r+") as dst:
        dst.scales, dst.offsets = (2.75e-05,) * 3, (-0.2,) * 3
    result = run_job(geo_job(tmp_path, ["refl.tif"], input={"apply_scale": True},
                             output={"masks": False}))
    assert result.code == 0, result.err
    with rasterio.open(tmp_path / "out" / "segmented" / "refl.tif") as src:
        assert src.dtypes[0] == "float32"
        segmented = src.read()
    assert -0.2 < float(np.nanmin(segmented)) and float(np.nanmax(segmented)) < 0.0
    entry = read_json(tmp_path / "out")["images"][0]
    assert entry["mode"] == "3xfloat32"


def test_output_format_cog_refused_for_a_tiff_without_geotiff_tags(tmp_path):
    import tifffile

    tifffile.imwrite(tmp_path / "plain.tif", np.zeros((20, 20, 3), np.uint16), tile=(16, 16))
    result = run_job(geo_job(tmp_path, ["plain.tif"], output={"format": "cog"}))
    assert result.code == 2
    assert result.lines[-1].startswith("error: output.format: 'cog' keeps a GeoTIFF's "
                                       "georeferencing, but ")


def test_without_the_geo_extra_a_geotiff_runs_and_the_report_says_what_was_lost(
        tmp_path, monkeypatch):
    bands, _ = classes_scene()
    write_raster(tmp_path / "scene.tif", bands, nodata=0)
    write_raster(tmp_path / "other.tif", bands)
    build_vrt(str(tmp_path / "stack.vrt"), [str(tmp_path / "other.tif")])
    monkeypatch.setattr(geo, "available", lambda: False)
    result = run_job(geo_job(tmp_path, ["scene.tif", "stack.vrt"], output={"masks": False}),
                     quiet=False)
    assert result.code == 3, result.err
    entries = {os.path.basename(e["path"]): e for e in read_json(tmp_path / "out")["images"]}
    assert entries["scene.tif"]["status"] == "ok"
    assert geo.NOT_KEPT_NOTE in entries["scene.tif"]["notes"]
    assert entries["stack.vrt"]["error"].endswith(
        "reading this format needs rasterio, which is not installed: "
        "pip install 'kmeans-pipeline[geo]'")
    with rasterio.open(tmp_path / "out" / "labels" / "scene.tif") as src:
        assert "LAYOUT" not in src.tags(ns="IMAGE_STRUCTURE")  # tifffile's tiled TIFF


@pytest.mark.parametrize("bigtiff", [False, True])
@pytest.mark.parametrize("byteorder", ["<", ">"])
def test_first_ifd_tags_are_tifffiles_and_find_geotiff_tags(tmp_path, bigtiff, byteorder):
    """The routing check reads the first IFD's tag codes itself (no tifffile import): the same
    codes tifffile finds, in classic and BigTIFF files of either byte order."""
    import tifffile

    from pipeline.sources import geo

    plain = str(tmp_path / "plain.tif")
    tifffile.imwrite(plain, np.zeros((8, 8, 3), np.uint8), bigtiff=bigtiff, byteorder=byteorder,
                     tile=(16, 16) if bigtiff else None)
    with tifffile.TiffFile(plain) as tif:
        want = set(tif.pages.first.tags.keys())
    with open(plain, "rb") as handle:
        assert geo.first_ifd_tags(handle) == want
    assert not geo.has_geotiff_tags(plain)
    scene = write_raster(str(tmp_path / "geo.tif"), np.ones((1, 8, 8), np.uint8),
                         BIGTIFF="YES" if bigtiff else "NO")
    assert geo.has_geotiff_tags(scene)
    junk = tmp_path / "junk.tif"
    junk.write_bytes(b"II*\x00\xff\xff\xff\x7f")  # an IFD offset past the end
    assert not geo.has_geotiff_tags(str(junk)) and not geo.has_geotiff_tags(str(tmp_path / "no"))
