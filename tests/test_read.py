"""Listing inputs: names, collisions, excludes, ignored files, the output folder."""

import os

import numpy as np

from conftest import save
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
