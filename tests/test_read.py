"""Listing inputs: names, collisions, excludes, ignored files, the output folder."""

import os

import numpy as np

from conftest import modules_imported_by, modules_of_run, save
from pipeline.config import InputConfig, PreprocessConfig
from pipeline.sources.listing import list_inputs
from pipeline.sources.photos import decode, read_header


def _list(tmp_path, paths, exclude=(), out="out"):
    cfg = InputConfig(paths=tuple(str(tmp_path / p) for p in paths), exclude=tuple(exclude))
    return list_inputs(cfg, PreprocessConfig(), str(tmp_path / out))


def _img(path):
    return save(path, np.zeros((3, 4, 3), np.uint8))


def test_names_are_relative_to_their_input_entry(tmp_path):
    _img(tmp_path / "a" / "x.png")
    _img(tmp_path / "a" / "sub" / "y.jpg")
    _img(tmp_path / "b" / "deep" / "z.png")
    _img(tmp_path / "c.png")
    listing = _list(tmp_path, ["a", "b/**/*.png", "c.png"])
    assert sorted(i.name for i in listing.images) == ["c", "deep/z", "sub/y", "x"]


def test_name_collisions_get_a_suffix_in_sorted_order(tmp_path):
    _img(tmp_path / "a" / "x.png")
    _img(tmp_path / "a" / "x.jpg")
    listing = _list(tmp_path, ["a"])
    names = {os.path.basename(i.path): i.name for i in listing.images}
    assert names == {"x.jpg": "x", "x.png": "x-2"}
    assert listing.renamed == [(str(tmp_path / "a" / "x.png"), "x-2")]


def test_exclude_hidden_ignored_and_output_folder(tmp_path):
    _img(tmp_path / "a" / "keep.png")
    _img(tmp_path / "a" / "thumbs" / "t.png")
    _img(tmp_path / "a" / ".hidden.png")
    _img(tmp_path / "a" / "out" / "segmented" / "old.png")
    (tmp_path / "a" / "readme.txt").write_text("hi")
    listing = _list(tmp_path, ["a"], exclude=["**/thumbs/*"], out="a/out")
    assert [i.name for i in listing.images] == ["keep"]
    assert listing.ignored == [str(tmp_path / "a" / "readme.txt")]


def test_symlink_loop_is_walked_once(tmp_path):
    _img(tmp_path / "a" / "x.png")
    os.symlink(tmp_path / "a", tmp_path / "a" / "loop")
    assert [i.name for i in _list(tmp_path, ["a"]).images] == ["x"]


def test_header_gives_oriented_scaled_size_without_decoding(tmp_path):
    from PIL import Image

    path = str(tmp_path / "r.jpg")
    im = Image.fromarray(np.zeros((10, 20, 3), np.uint8))
    exif = im.getexif()
    exif[0x0112] = 6  # rotated 90 degrees: a viewer shows it 10 wide, 20 high
    im.save(path, exif=exif)
    info, _ = read_header(path, "r", 0, 0.5, 10**9)
    assert (info.width, info.height) == (5, 10)
    assert decode(info).shape == (10, 5, 3)


def test_the_listing_fast_path_agrees_with_the_full_extension_list():
    """A listing answers the common extensions without imageio's tables or GDAL's drivers;
    they must all be ones the full computation takes, and every other answer is the full one."""
    from pipeline.sources import geo, listing, photos, rasters

    full = photos.readable_extensions()
    assert listing.COMMON_EXTENSIONS <= full
    for raster_path in (False, True):
        takes = listing._Extensions(raster_path)
        expected = full | (rasters.EXTENSIONS | geo.extensions() if raster_path else set())
        for ext in sorted(full | rasters.EXTENSIONS | geo.GEO_EXTENSIONS | {".txt", ".json", ""}):
            assert (ext in takes) == (ext in expected), (raster_path, ext)


def test_a_photo_job_imports_none_of_the_raster_or_cluster_stacks(tmp_path):
    """Start-up (issue 14): a job of JPEGs and PNGs on the threads scheduler never imports
    rasterio, distributed, imageio, numba (each 0.1-0.7 s) or the raster path; nor, before its
    first task, importlib.metadata and the email package (10-20 ms: report.json's versions are
    read without them).  (A file of another extension in a folder makes the listing ask
    imageio's full table, once.)"""
    save(tmp_path / "in" / "a.png", np.zeros((8, 8, 3), np.uint8) + 40)
    save(tmp_path / "in" / "b.jpg", np.zeros((8, 8, 3), np.uint8) + 200)
    job = tmp_path / "job.yaml"
    job.write_text(f"input:\n  paths: [{str(tmp_path / 'in')!r}]\nkmeans:\n  k: 2\n"
                   f"output:\n  dir: {str(tmp_path / 'out')!r}\n")
    said = modules_of_run(str(job))
    assert said["code"] == 0
    assert [m for m in ("rasterio", "distributed", "imageio", "numba", "pipeline.raster_job")
            if m in said["end"]] == []
    theirs = modules_imported_by("dask", "numpy", "PIL.Image")
    assert [m for m in ("importlib.metadata", "email")
            if m in said["first_task"] and m not in theirs] == []
