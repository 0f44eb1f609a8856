"""Raster jobs through the CLI (issue 12): the example job, listing of TIFF and zarr stores,
one-line refusals, resume, apply, per-image scope, and keys that leave older job hashes alone."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest
import tifffile
import yaml
import zarr

from conftest import read_json, run_cli, write_job
from pipeline import config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GDAL_NODATA = 42113
CLASSES = np.array([[1200, 900, 700, 3000], [400, 600, 500, 200], [2500, 2600, 2700, 2800]])


def _scene(seed: int, height: int = 64, width: int = 80) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    truth = (np.arange(height)[:, None] // 16 + np.arange(width)[None, :] // 20) % 3
    return (CLASSES[truth] + rng.integers(-30, 31, (height, width, 4))).astype(np.uint16), truth


def _tiff(path, pixels: np.ndarray, nodata: str | None = None) -> str:
    os.makedirs(os.path.dirname(str(path)), exist_ok=True)
    extratags = [(GDAL_NODATA, "s", 0, nodata, True)] if nodata else []
    tifffile.imwrite(str(path), pixels, tile=(16, 16), compression="zlib",
                     photometric="minisblack", planarconfig="contig", extratags=extratags)
    return str(path)


def _job(folder, **sections) -> str:
    """conftest's job writer, with the rasters/ folder and k = 3 as defaults."""
    os.makedirs(str(folder), exist_ok=True)
    job = {"input": {"paths": ["rasters/"]}, "kmeans": {"k": 3}}
    for name, values in sections.items():
        job.setdefault(name, {}).update(values)
    return write_job(folder, **job)


def test_example_rasters_job_runs(tmp_path):
    """configs/example-rasters.yaml on the bundled Landsat 7 scene, as a user runs it."""
    shutil.copytree(os.path.join(ROOT, "configs"), tmp_path / "configs")
    shutil.copytree(os.path.join(ROOT, "samples", "rasters"), tmp_path / "samples" / "rasters")
    result = run_cli("run", str(tmp_path / "configs" / "example-rasters.yaml"), "-q")
    assert result.code == 0, result.err
    out = tmp_path / "out" / "example-rasters"
    labels = tifffile.imread(str(out / "labels" / "L7_ETMs.tif"))
    segmented = tifffile.imread(str(out / "segmented" / "L7_ETMs.tif"))
    assert labels.shape == (352, 349) and labels.dtype == np.uint8 and labels.max() < 6
    assert segmented.shape == (352, 349, 6) and segmented.dtype == np.uint8
    report, model = read_json(out), read_json(out, "model.json")
    (entry,) = report["images"]
    assert entry["mode"] == "6xuint8" and entry["masked"] == 0
    assert sum(row["pixels"] for row in entry["classes"]) == 352 * 349
    assert set(entry["classes"][0]["mean"]) == {f"band_{i}" for i in range(1, 7)}
    assert model["kind"] == "raster" and model["schema_version"] == 2
    assert model["normalize"]["method"] == "standard" and model["n_bands"] == 6
    assert os.path.isfile(out / "report.html") and entry["outputs"]["thumbs"]


def test_tiffs_and_zarr_stores_are_listed_and_segmented(tmp_path):
    pixels, truth = _scene(1)
    _tiff(tmp_path / "rasters" / "a.tif", pixels)
    store = zarr.create_array(str(tmp_path / "rasters" / "sub" / "b.zarr"), shape=pixels.shape,
                              chunks=(32, 40, 4), dtype="uint16",
                              dimension_names=("y", "x", "band"))
    store[:] = pixels
    result = run_cli("run", _job(tmp_path), "-q")
    assert result.code == 0, result.err
    report = read_json(tmp_path / "out")
    assert sorted(e["name"] for e in report["images"]) == ["a", "sub/b"]
    a = tifffile.imread(str(tmp_path / "out" / "labels" / "a.tif"))
    b = zarr.open_array(str(tmp_path / "out" / "labels" / "sub" / "b.zarr"), mode="r")[:]
    assert np.array_equal(a, b)  # the same pixels, the same labels, TIFF or zarr
    assert len(np.unique(a)) == 3 and np.array_equal(a == a[0, 0], truth == truth[0, 0])
    assert os.path.isfile(tmp_path / "out" / "labels" / "sub" / "b.zarr" /
                          "pipeline-complete.json")


def test_nodata_is_masked_and_counted(tmp_path):
    pixels, _ = _scene(2)
    pixels[:8, :8] = 0
    _tiff(tmp_path / "rasters" / "n.tif", pixels, nodata="0")
    assert run_cli("run", _job(tmp_path), "-q").code == 0
    (entry,) = read_json(tmp_path / "out")["images"]
    assert entry["masked"] == 64 and sum(entry["counts"]) == 64 * 80 - 64
    labels = tifffile.imread(str(tmp_path / "out" / "labels" / "n.tif"))
    assert np.all(labels[:8, :8] == 255)


def test_a_collection_needs_one_band_count(tmp_path):
    pixels, _ = _scene(3)
    _tiff(tmp_path / "rasters" / "four.tif", pixels)
    _tiff(tmp_path / "rasters" / "two.tif", pixels[..., :2])
    result = run_cli("run", _job(tmp_path, output={"dir": "out-mixed"}))
    assert result.code == 2
    assert result.lines[-1] == (f"error: {tmp_path / 'rasters' / 'two.tif'}: 2 bands, but "
                                f"{tmp_path / 'rasters' / 'four.tif'} has 4; a collection "
                                "needs one band count: select bands with input.bands, or use "
                                "kmeans.scope: image")
    assert run_cli("run", _job(tmp_path, input={"bands": [1, 2]}), "-q").code == 0
    per_image = _job(tmp_path, kmeans={"k": 3, "scope": "image"},
                     output={"dir": "out-image"})
    assert run_cli("run", per_image, "-q").code == 0
    model = read_json(tmp_path / "out-image", "model.json")
    assert {n: m["n_bands"] for n, m in model["palettes"].items()} == {"four": 4, "two": 2}


@pytest.mark.parametrize("section, values, message", [
    ("preprocess", {"color_space": "lab"}, "preprocess.color_space: 'lab' needs RGB photos"),
    ("preprocess", {"spatial_weight": 0.5}, "preprocess.spatial_weight: its colour unit"),
    ("kmeans", {"error_metric": "de76"}, "kmeans.error_metric: 'de76' measures RGB colours"),
    ("input", {"bands": [9]}, "input.bands: band 9 does not exist in"),
    ("input", {"mask": "alpha"}, "input.mask: 'alpha', but"),
    # png: the photo path (8-bit RGB through Pillow), which cannot decode 4-band uint16
    ("output", {"format": "png"}, "a TIFF raster of 4 band(s), uint16, which the photo path"),
])
def test_keys_that_do_not_fit_rasters_are_refused_in_one_line(tmp_path, section, values,
                                                              message):
    pixels, _ = _scene(4)
    _tiff(tmp_path / "rasters" / "r.tif", pixels)
    result = run_cli("run", _job(tmp_path, **{section: values}))
    assert result.code in (1, 2, 3) and any(message in line for line in result.lines), \
        result.err


def test_resume_keeps_finished_rasters_and_apply_reuses_the_model(tmp_path):
    pixels, _ = _scene(5)
    _tiff(tmp_path / "rasters" / "r1.tif", pixels)
    _tiff(tmp_path / "rasters" / "r2.tif", _scene(6)[0])
    job = _job(tmp_path, preprocess={"normalize": "robust"})
    assert run_cli("run", job, "-q").code == 0
    first = tifffile.imread(str(tmp_path / "out" / "labels" / "r1.tif"))
    assert run_cli("run", job, "-q").code == 0  # if_exists: resume
    report = read_json(tmp_path / "out")
    assert all(e["resumed"] for e in report["images"])
    assert all(e["classes"] for e in report["images"])
    _tiff(tmp_path / "new" / "r3.tif", pixels)
    other = _job(tmp_path / "apply", input={"paths": [str(tmp_path / "new")]})
    result = run_cli("apply", str(tmp_path / "out" / "model.json"), other, "-q")
    assert result.code == 0, result.err
    applied = tifffile.imread(str(tmp_path / "apply" / "out" / "labels" / "r3.tif"))
    assert np.array_equal(applied, first)  # the same pixels and model: the same labels
    wrong = _job(tmp_path / "wrong", input={"paths": [str(tmp_path / "new")], "bands": [1]})
    result = run_cli("apply", str(tmp_path / "out" / "model.json"), wrong)
    assert result.code == 2 and "the model has 4 bands" in result.lines[-1]


def test_raster_keys_change_the_hash_only_when_set(tmp_path):
    plain = config.load_config(_job(tmp_path))
    same = config.load_config(_job(tmp_path, input={"planes": "all", "mask": "auto"},
                                   output={"format": "auto"}))
    other = config.load_config(_job(tmp_path, preprocess={"normalize": "standard"}))
    assert plain.job_hash() == same.job_hash() != other.job_hash()


def test_threads_synchronous_and_a_local_cluster_give_the_same_raster_outputs(tmp_path,
                                                                              local_cluster):
    import pipeline
    from distributed import Client

    pixels, _ = _scene(7, 96, 80)
    pixels[:5, :7] = 0
    _tiff(tmp_path / "rasters" / "c.tif", pixels, nodata="0")
    _tiff(tmp_path / "rasters" / "d.tif", _scene(8, 48, 112)[0])
    job = _job(tmp_path, preprocess={"normalize": "standard"}, output={"masks": True})
    outputs = []
    for i, (scheduler, chunk) in enumerate([("synchronous", 1 << 22), ("threads", 256),
                                           (None, 700)]):
        overrides = {"output.dir": str(tmp_path / f"out{i}"), "dask.chunk_pixels": chunk}
        if scheduler:
            pipeline.run(pipeline.Job.from_yaml(job, overrides, scheduler))
        else:
            with Client(local_cluster):
                pipeline.run(pipeline.Job.from_yaml(job, overrides))
        model = read_json(tmp_path / f"out{i}", "model.json")
        labels = {n: tifffile.imread(str(tmp_path / f"out{i}" / "labels" / f"{n}.tif"))
                  for n in ("c", "d")}
        outputs.append((model["centroids"], labels))
    for centroids, labels in outputs[1:]:
        assert np.array_equal(centroids, outputs[0][0])
        for name in ("c", "d"):
            assert np.array_equal(labels[name], outputs[0][1][name])


def test_hyperstack_planes_get_their_own_outputs_and_k_auto_uses_variance(tmp_path):
    stack = np.stack([_scene(9 + z, 32, 48)[0] for z in range(3)])  # Z Y X C
    os.makedirs(tmp_path / "rasters")
    tifffile.imwrite(str(tmp_path / "rasters" / "cells.tif"),
                     np.moveaxis(stack, -1, 1)[None], imagej=True,
                     metadata={"axes": "TZCYX"})
    job = _job(tmp_path, kmeans={"k": "auto", "max_k": 6, "seed": 0})
    result = run_cli("run", job, "-q")
    assert result.code == 0, result.err
    report = read_json(tmp_path / "out")
    assert [e["name"] for e in report["images"]] == ["cells/z1", "cells/z2", "cells/z3"]
    assert report["auto_k"]["metric"] == "variance" and report["auto_k"]["k"] == 3
    for z in (1, 2, 3):
        labels = tifffile.imread(str(tmp_path / "out" / "labels" / "cells" / f"z{z}.tif"))
        assert labels.shape == (32, 48) and len(np.unique(labels)) == 3
    first = run_cli("run", _job(tmp_path, input={"planes": "first"},
                                output={"dir": "out-first"}), "-q")
    assert first.code == 0
    (entry,) = read_json(tmp_path / "out-first")["images"]
    assert entry["name"] == "cells" and "first plane of 3 used" in entry["notes"][0]


def test_models_of_schema_version_1_still_load(tmp_path, collection):
    from conftest import write_job

    job = write_job(tmp_path)
    assert run_cli("run", job, "-q").code == 0
    path = tmp_path / "out" / "model.json"
    doc = read_json(tmp_path / "out", "model.json")
    assert doc["schema_version"] == 2
    doc["schema_version"] = 1  # as written before issue 12
    path.write_text(__import__("json").dumps(doc))
    shutil.copytree(tmp_path / "images", tmp_path / "again" / "images")
    again = write_job(tmp_path / "again")
    assert run_cli("apply", str(path), again, "-q").code == 0


def test_zarr_outputs_resume_by_their_completion_marker(tmp_path):
    pixels, _ = _scene(12)
    store = zarr.create_array(str(tmp_path / "rasters" / "z.zarr"), shape=pixels.shape,
                              chunks=(32, 40, 4), dtype="uint16",
                              dimension_names=("y", "x", "band"))
    store[:] = pixels
    job = _job(tmp_path)
    assert run_cli("run", job, "-q").code == 0
    assert run_cli("run", job, "-q").code == 0
    assert read_json(tmp_path / "out")["images"][0]["resumed"]
    os.unlink(tmp_path / "out" / "labels" / "z.zarr" / "pipeline-complete.json")
    assert run_cli("run", job, "-q").code == 0  # an unfinished output is written again
    (entry,) = read_json(tmp_path / "out")["images"]
    assert not entry["resumed"]
    assert os.path.isfile(tmp_path / "out" / "labels" / "z.zarr" / "pipeline-complete.json")


def test_report_combines_the_per_class_tables_of_every_image(tmp_path):
    from pipeline.sinks import report

    images = [{"status": "ok", "classes": [
        {"class": 0, "pixels": 2, "mean": {"b": 1.0}, "std": {"b": 0.0}}]},
        {"status": "ok", "classes": [
            {"class": 0, "pixels": 2, "mean": {"b": 3.0}, "std": {"b": 0.0}},
            {"class": 1, "pixels": 4, "mean": {"b": 10.0}, "std": {"b": 2.0}}]},
        {"status": "skipped", "classes": None}]
    table = report.class_table(images)
    assert [(r["class"], r["pixels"], r["share"]) for r in table] == [(0, 4, 0.5), (1, 4, 0.5)]
    assert table[0]["mean"] == {"b": 2.0} and table[0]["std"] == {"b": 1.0}
    assert table[1]["std"] == {"b": 2.0}
    pixels, _ = _scene(13)
    _tiff(tmp_path / "rasters" / "h.tif", pixels)
    assert run_cli("run", _job(tmp_path), "-q").code == 0
    page = (tmp_path / "out" / "report.html").read_text()
    assert "Classes (mean +- std per band" in page and page.count("&plusmn;") == 3 * 4


def test_a_raster_model_as_init_starts_the_fit_from_its_centroids(tmp_path):
    pixels, _ = _scene(14)
    _tiff(tmp_path / "rasters" / "i.tif", pixels)
    assert run_cli("run", _job(tmp_path, preprocess={"normalize": "standard"}), "-q").code == 0
    saved = read_json(tmp_path / "out", "model.json")
    job = _job(tmp_path / "again", input={"paths": [str(tmp_path / "rasters")]},
               kmeans={"init": str(tmp_path / "out" / "model.json"), "k": 3})
    assert run_cli("run", job, "-q").code == 0
    refit = read_json(tmp_path / "again" / "out", "model.json")
    assert refit["normalize"] == saved["normalize"]
    assert np.allclose(refit["centroids"], saved["centroids"], atol=1e-6)  # already converged


@pytest.mark.parametrize("on_error, code", [("skip", 3), ("fail", 1)])
def test_a_damaged_tile_skips_its_raster_or_fails_the_run(tmp_path, on_error, code):
    pixels, _ = _scene(15)
    bad = _tiff(tmp_path / "rasters" / "bad.tif", pixels)
    _tiff(tmp_path / "rasters" / "good.tif", _scene(16)[0])
    with tifffile.TiffFile(bad) as tif:
        offset, count = tif.pages[0].dataoffsets[7], tif.pages[0].databytecounts[7]
    with open(bad, "r+b") as handle:
        handle.seek(offset)
        handle.write(b"\x00" * count)
    result = run_cli("run", _job(tmp_path, input={"on_error": on_error}))
    assert result.code == code
    where = "damaged data in tile 7 (y 16-31, x 32-47) of the window at y 0-63, x 0-79"
    assert any(where in line for line in result.lines), result.err
    entries = {e["name"]: e for e in read_json(tmp_path / "out")["images"]}
    if on_error == "skip":
        assert entries["bad"]["status"] == "skipped" and entries["good"]["status"] == "ok"
        assert os.path.isfile(tmp_path / "out" / "labels" / "good.tif")
    assert not os.path.exists(tmp_path / "out" / "labels" / "bad.tif")


@pytest.mark.parametrize("keys, message", [
    (["--set", "input.bands=[1,9]"],
     "input.bands: band 9 does not exist in .*L7_ETMs.tif \\(6 bands, numbered from 1\\)"),
    (["--set", "preprocess.display_bands=[1,2,9]"],
     "preprocess.display_bands: give 3 bands from 1 to 6 .*got \\[1, 2, 9\\]"),
])
def test_bands_out_of_range_are_one_line_before_any_work(tmp_path, keys, message):
    # Review of issue 12: a GeoTIFF's missing band or display band was an IndexError traceback.
    import re

    scene = os.path.join(ROOT, "samples", "rasters", "L7_ETMs.tif")
    result = run_cli("run", scene, "-k", "3", "-o", str(tmp_path / "out"), *keys)
    assert result.code == 2 and "Traceback" not in result.err
    assert re.search(message, result.err.strip().splitlines()[-1])


def test_a_raster_model_applied_to_photos_is_refused_in_one_line(tmp_path):
    # Review of issue 12: `apply` of a raster model to a photo job was a TypeError traceback.
    scene = os.path.join(ROOT, "samples", "rasters", "landsat8_224078_crop.tif")
    assert run_cli("run", scene, "-k", "3", "-o", str(tmp_path / "r"), "-q").code == 0
    photos = os.path.join(ROOT, "samples", "photos")
    job = tmp_path / "photos.yaml"
    job.write_text(yaml.safe_dump({"input": {"paths": [photos]}, "preprocess": {"scale": 0.1},
                                   "output": {"dir": str(tmp_path / "p")}}))
    result = run_cli("apply", str(tmp_path / "r" / "model.json"), str(job))
    assert result.code == 2 and "Traceback" not in result.err
    assert "is a model of N-band rasters, but" in result.err
