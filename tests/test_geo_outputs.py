"""Outputs of georeferenced scenes through the run (issue 13, review of its first version): the
segmented image keeps the input's nodata, or gets a value no class holds when pixels are
masked without one, or none when nothing is masked; ``output.format: tiff`` keeps the CRS and
transform in a plain tiled GeoTIFF.

Every raster is written here with rasterio.
"""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
from rasterio.enums import ColorInterp
from rio_cogeo.cogeo import cog_validate

from conftest import read_json
from pipeline.sinks import cog
from test_geo import (DEGREE_TRANSFORM, UTM, UTM_TRANSFORM, WGS84, classes_scene, geo_job,
                      run_job, write_raster)

MASKED_ROWS = 12


def masked_input(tmp_path, how: str) -> str:
    """A 3-band scene without a nodata value whose first `MASKED_ROWS` rows are masked by
    ``how``: an internal mask band, an alpha band, or NaN (float32)."""
    bands, _ = classes_scene(dtype="float32" if how == "nan" else "uint16")
    path = tmp_path / "scene.tif"
    if how == "nan":
        bands[1, :MASKED_ROWS] = np.nan
        return write_raster(path, bands)
    if how == "alpha":
        alpha = np.full((1,) + bands.shape[1:], 65535, np.uint16)
        alpha[:, :MASKED_ROWS] = 0
        write_raster(path, np.concatenate([bands, alpha]))
        with rasterio.open(path, "r+") as dst:
            dst.colorinterp = [ColorInterp.red, ColorInterp.green, ColorInterp.blue,
                               ColorInterp.alpha]
        return str(path)
    with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True):
        with rasterio.open(write_raster(path, bands), "r+") as dst:
            valid = np.full(bands.shape[1:], 255, dtype=np.uint8)
            valid[:MASKED_ROWS] = 0
            dst.write_mask(valid)
    return str(path)


@pytest.mark.parametrize("how", ["mask band", "alpha", "nan"])
def test_masked_pixels_without_input_nodata_get_a_value_no_class_holds(tmp_path, how):
    masked_input(tmp_path, how)
    result = run_job(geo_job(tmp_path, ["scene.tif"], output={"masks": False}))
    assert result.code == 0, result.err
    with rasterio.open(tmp_path / "out" / "segmented" / "scene.tif") as src:
        segmented, nodata, shown = src.read(), src.nodata, src.dataset_mask()
        assert cog_validate(src.name)[0]
    (entry,) = read_json(tmp_path / "out")["images"]
    assert entry["masked"] == MASKED_ROWS * 200
    assert nodata is not None
    classes = segmented[:, MASKED_ROWS:].reshape(3, -1)
    if how == "nan":
        assert np.isnan(nodata) and np.isnan(segmented[:, :MASKED_ROWS]).all()
        assert not np.isnan(classes).any()
    else:
        assert nodata == 65535  # the largest uint16, held by no class in any band
        assert (segmented[:, :MASKED_ROWS] == nodata).all() and not (classes == nodata).any()
    # what QGIS and GDAL show: masked rows transparent, every other pixel drawn
    assert (shown[:MASKED_ROWS] == 0).all() and (shown[MASKED_ROWS:] == 255).all()


def test_nothing_masked_and_no_input_nodata_writes_no_nodata(tmp_path):
    write_raster(tmp_path / "scene.tif", classes_scene()[0])
    result = run_job(geo_job(tmp_path, ["scene.tif"], output={"masks": False}))
    assert result.code == 0, result.err
    with rasterio.open(tmp_path / "out" / "segmented" / "scene.tif") as src:
        assert src.nodata is None and (src.dataset_mask() == 255).all()
    with rasterio.open(tmp_path / "out" / "labels" / "scene.tif") as src:
        assert src.nodata == 255  # the label COG's nodata is always the masked label
    assert read_json(tmp_path / "out")["images"][0]["masked"] == 0


def test_input_nodata_is_kept_even_when_a_class_could_hold_it(tmp_path):
    bands, _ = classes_scene(dtype="int16")
    bands[:, :MASKED_ROWS] = -1
    write_raster(tmp_path / "scene.tif", bands, nodata=-1)
    result = run_job(geo_job(tmp_path, ["scene.tif"], output={"masks": False}))
    assert result.code == 0, result.err
    with rasterio.open(tmp_path / "out" / "segmented" / "scene.tif") as src:
        assert src.nodata == -1 and src.dtypes[0] == "int16"
        assert (src.read()[:, :MASKED_ROWS] == -1).all()


def test_segmented_nodata_skips_values_a_centroid_holds():
    values = np.array([[65535, 3], [7, 65534]], dtype=np.uint16)
    fill, nodata, if_masked = cog.segmented_nodata((None, None), values)
    assert (nodata, if_masked) == (65533.0, True) and fill.tolist() == [65533, 65533]
    fill, nodata, if_masked = cog.segmented_nodata((0.0, 0.0), values)
    assert (nodata, if_masked, fill.tolist()) == (0.0, False, [0, 0])
    # bands with different nodata: one GeoTIFF nodata cannot keep both, so a free value
    _, nodata, _ = cog.segmented_nodata((0.0, 1.0), values)
    assert nodata == 65533.0
    full = np.arange(256, dtype=np.uint8).reshape(128, 2)  # every uint8 value is a class value
    assert cog.segmented_nodata((None, None), full)[1:] == (None, False)


@pytest.mark.parametrize("crs, transform", [(UTM, UTM_TRANSFORM), (WGS84, DEGREE_TRANSFORM)],
                         ids=["metres", "degrees"])
def test_output_format_tiff_keeps_the_crs_in_a_plain_tiled_geotiff(tmp_path, crs, transform):
    bands, _ = classes_scene(height=300, width=260)
    bands[:, :4] = 0
    write_raster(tmp_path / "scene.tif", bands, crs=crs, transform=transform, nodata=0,
                 block=32)
    result = run_job(geo_job(tmp_path, ["scene.tif"], output={"format": "tiff"}))
    assert result.code == 0, result.err
    (entry,) = read_json(tmp_path / "out")["images"]
    rels = [rel for kind in ("labels", "segmented", "masks") for rel, _ in entry["outputs"][kind]]
    assert len(rels) == 2 + 4
    for rel in rels:
        with rasterio.open(tmp_path / "out" / rel) as src:
            assert src.crs == rasterio.crs.CRS.from_string(crs), rel
            assert src.transform == transform, rel
            assert src.profile["tiled"] and src.block_shapes[0] == (32, 32), rel
            assert "LAYOUT" not in src.tags(ns="IMAGE_STRUCTURE"), rel  # not a COG
            assert src.overviews(1) == [], rel
    with rasterio.open(tmp_path / "out" / "labels" / "scene.tif") as src:
        assert src.nodata == 255 and src.colormap(1)[255] == (0, 0, 0, 0)
    with rasterio.open(tmp_path / "out" / "segmented" / "scene.tif") as src:
        assert src.nodata == 0 and (src.read()[:, :4] == 0).all()


# ---------------------------------------------------------------------------------------------
# Issue 13's test list, through the run: each kind of input, every output georeferenced


def metres_tiled_uint16(tmp_path) -> tuple[list[str], dict]:
    bands, _ = classes_scene()
    bands[:, :5] = 0
    write_raster(tmp_path / "scene.tif", bands, nodata=0)
    return ["scene.tif"], {}


def degrees_striped(tmp_path) -> tuple[list[str], dict]:
    bands, _ = classes_scene()
    bands[:, :5] = 0
    write_raster(tmp_path / "scene.tif", bands, crs=WGS84, transform=DEGREE_TRANSFORM,
                 nodata=0, tiled=False, block=8)
    return ["scene.tif"], {}


def six_bands(tmp_path) -> tuple[list[str], dict]:
    bands, _ = classes_scene(count=6)
    bands[bands == 0] = 1  # band 4's darkest class reaches 0 by its noise
    bands[:, :5] = 0
    write_raster(tmp_path / "scene.tif", bands, nodata=0)
    return ["scene.tif"], {}


def int16_scale_offset(tmp_path) -> tuple[list[str], dict]:
    bands, _ = classes_scene(dtype="int16")
    bands[:, :5] = -9999
    path = write_raster(tmp_path / "scene.tif", bands, nodata=-9999)
    with rasterio.open(path, "r+") as dst:
        dst.scales, dst.offsets = (2.75e-05,) * 3, (-0.2,) * 3
    return ["scene.tif"], {"apply_scale": True}


def vrt_band_stack(tmp_path) -> tuple[list[str], dict]:
    from test_geo import build_vrt

    bands, _ = classes_scene()
    bands[:, :5] = 0
    files = [write_raster(tmp_path / f"B{b}.tif", bands[b:b + 1], nodata=0) for b in range(3)]
    build_vrt(str(tmp_path / "scene.vrt"), files)
    return ["scene.vrt"], {}


# input -> (make it, the segmented image's dtype and nodata)
INPUTS = {"metres, tiled, uint16 with nodata": (metres_tiled_uint16, "uint16", 0),
          "degrees, striped": (degrees_striped, "uint16", 0),
          "6 bands": (six_bands, "uint16", 0),
          "int16 with scale and offset": (int16_scale_offset, "float32", float("nan")),
          "VRT band stack": (vrt_band_stack, "uint16", 0)}


@pytest.mark.parametrize("kind", list(INPUTS))
def test_every_output_keeps_crs_transform_and_nodata(tmp_path, kind):
    make, dtype, nodata = INPUTS[kind]
    paths, input_keys = make(tmp_path)
    result = run_job(geo_job(tmp_path, paths, input=input_keys))
    assert result.code == 0, result.err
    with rasterio.open(tmp_path / paths[0]) as src:
        crs, transform, count = src.crs, src.transform, src.count
    (entry,) = read_json(tmp_path / "out")["images"]
    outputs = entry["outputs"]
    assert len(outputs["masks"]) == 4
    expected = {"labels": 255, "masks": None, "segmented": nodata}
    for kind_ in ("labels", "segmented", "masks"):
        for rel, _ in outputs[kind_]:
            path = tmp_path / "out" / rel
            assert cog_validate(str(path))[0], rel
            with rasterio.open(path) as src:
                assert src.crs == crs and src.transform == transform, rel
                if isinstance(nodata, float) and kind_ == "segmented":
                    assert np.isnan(src.nodata), rel
                else:
                    assert src.nodata == expected[kind_], rel
    with rasterio.open(tmp_path / "out" / "segmented" / f"{entry['name']}.tif") as src:
        assert src.dtypes == (dtype,) * count
    with rasterio.open(tmp_path / "out" / "labels" / f"{entry['name']}.tif") as src:
        assert set(range(4)) <= set(src.colormap(1)) and src.colorinterp[0].name == "palette"
        labels = src.read(1)
    assert entry["masked"] == 5 * 200 == int((labels == 255).sum())
    pixel_area = abs(transform.a * transform.e - transform.b * transform.d)
    unit = "degree" if crs.is_geographic else "metre"
    for row in entry["classes"]:
        assert row["pixels"] == int((labels == row["class"]).sum())
        assert row[f"area_{unit}2"] == pytest.approx(row["pixels"] * pixel_area, rel=1e-12)
