"""Photos with alpha (issue 12, section 3): fully transparent pixels are masked.

Real PNGs written by Pillow (and one 16-bit RGBA PNG by the package's own PNG writer), run
through the CLI on the threads scheduler.  The transparent area is painted a colour that
would otherwise take a cluster of its own, so a palette that excludes it proves the mask
reached the fit.
"""

from __future__ import annotations

import os

import imageio.v3 as iio
import numpy as np
import pytest
from PIL import Image

from conftest import read_json, run_cli, write_job
from pipeline import raster_job
from pipeline.sinks import images as files
from pipeline.sources import ImageInfo, collection, photos

RED, GREEN, BLUE = (200, 30, 30), (30, 180, 40), (30, 40, 200)
MAGENTA = (255, 0, 255)  # under alpha 0: it would take a cluster of its own
HEIGHT, WIDTH = 40, 60


def _rgba(under: np.ndarray | None = None) -> np.ndarray:
    """Three opaque bands of colour (the red one partly transparent in its lower half) above
    a fully transparent quarter painted ``under`` (default magenta)."""
    rgba = np.zeros((HEIGHT, WIDTH, 4), np.uint8)
    rgba[:, :20, :3], rgba[:, 20:40, :3], rgba[:, 40:, :3] = RED, GREEN, BLUE
    rgba[..., 3] = 255
    rgba[20:, :20, 3] = 128  # partly transparent: keeps its stored colour, counted
    rgba[30:, :, :3] = MAGENTA if under is None else under
    rgba[30:, :, 3] = 0
    return rgba


TRANSPARENT = _rgba()[..., 3] == 0
N_MASKED = int(TRANSPARENT.sum())


def _write(folder, name: str, pixels: np.ndarray, mode: str | None = None) -> str:
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(str(folder), name)
    Image.fromarray(pixels, mode).save(path)
    return path


def _run(tmp_path, *extra: str, **sections) -> dict:
    sections.setdefault("kmeans", {})
    sections["kmeans"] = {"k": 3, "seed": 0, **sections["kmeans"]}
    job = write_job(tmp_path, **sections)
    result = run_cli("run", job, "-q", "--scheduler", "threads", *extra)
    assert result.code == 0, result.err
    return read_json(tmp_path / "out")


def _read(tmp_path, rel: str) -> np.ndarray:
    with Image.open(tmp_path / "out" / rel) as im:
        return np.asarray(im)


def _palette(tmp_path) -> list[tuple[int, ...]]:
    return sorted(tuple(c) for c in read_json(tmp_path / "out", "model.json")["palette"])


def test_transparent_pixels_are_left_out_of_the_palette_and_every_output(tmp_path):
    _write(tmp_path / "images", "a.png", _rgba())
    report = _run(tmp_path)
    assert _palette(tmp_path) == sorted([RED, GREEN, BLUE])  # no magenta cluster
    entry = report["images"][0]
    assert entry["masked"] == N_MASKED
    assert sum(entry["counts"]) == HEIGHT * WIDTH - N_MASKED

    labels = _read(tmp_path, "labels/a.png")
    assert labels.dtype == np.uint8
    assert np.array_equal(labels == 255, TRANSPARENT)
    palette = np.asarray(read_json(tmp_path / "out", "model.json")["palette"], np.uint8)
    # partly transparent red pixels keep their stored colour: labelled red
    assert np.all(palette[labels[20:30, :20]] == RED)

    with Image.open(tmp_path / "out" / "segmented/a.png") as im:
        assert im.mode == "P" and "transparency" in im.info  # indexed, with a tRNS entry
        segmented = np.asarray(im.convert("RGBA"))
    assert np.array_equal(segmented[..., 3] == 0, TRANSPARENT)
    assert np.all(segmented[~TRANSPARENT][:, 3] == 255)
    assert np.array_equal(segmented[~TRANSPARENT][:, :3], palette[labels[~TRANSPARENT]])

    total = np.zeros((HEIGHT, WIDTH), np.int64)
    for j in range(3):
        mask = _read(tmp_path, f"masks/a/{j}.png")
        assert not mask[TRANSPARENT].any()
        total += mask // 255
    assert np.array_equal(total, (~TRANSPARENT).astype(np.int64))


def test_mask_none_keeps_the_old_behaviour_alpha_dropped(tmp_path):
    rgba = _rgba()
    _write(tmp_path / "a" / "images", "a.png", rgba)
    _write(tmp_path / "b" / "images", "a.png", np.ascontiguousarray(rgba[..., :3]))
    dropped = _run(tmp_path / "a", input={"mask": "none"})
    opaque = _run(tmp_path / "b")
    assert MAGENTA in _palette(tmp_path / "a")  # the transparent area took a cluster
    assert _palette(tmp_path / "a") == _palette(tmp_path / "b")
    assert dropped["images"][0]["masked"] == 0 == opaque["images"][0]["masked"]
    assert dropped["images"][0]["counts"] == opaque["images"][0]["counts"]
    for rel in ("labels/a.png", "segmented/a.png", "masks/a/0.png"):
        assert (tmp_path / "a" / "out" / rel).read_bytes() == \
            (tmp_path / "b" / "out" / rel).read_bytes()


@pytest.mark.parametrize("kmeans, preprocess, output", [
    ({}, {}, {}),
    ({"algorithm": "lloyd", "max_iter": 5}, {}, {}),
    ({}, {"scale": 0.5}, {}),
    ({"scope": "image"}, {}, {}),
    ({}, {"spatial_weight": 0.5}, {}),
    ({"k": "auto", "max_k": 6, "max_error": 1.0}, {}, {}),
    ({}, {}, {"dither": "floyd-steinberg"}),
])
def test_colours_under_alpha_0_change_no_centroid_and_no_label(tmp_path, kmeans, preprocess,
                                                               output):
    rng = np.random.default_rng(7)
    noise = rng.integers(0, 256, (HEIGHT - 30, WIDTH, 3), dtype=np.uint8)
    opaque = rng.integers(0, 256, (30, 50, 3), dtype=np.uint8)
    outputs = []
    for run, under in (("one", None), ("two", noise)):
        # upside down: the transparent rows come first, where dithering's error would
        # flow from them into the opaque rows below
        _write(tmp_path / run / "images", "a.png", np.ascontiguousarray(_rgba(under)[::-1]))
        _write(tmp_path / run / "images", "b.png", opaque)
        report = _run(tmp_path / run, kmeans=kmeans, preprocess=preprocess,
                      output={"masks": False, **output})
        model = read_json(tmp_path / run / "out", "model.json")
        found = {"model": model.get("centroids_working", model.get("palettes")),
                 "counts": [e["counts"] for e in report["images"]],
                 "masked": [e["masked"] for e in report["images"]]}
        for rel in ("labels/a.png", "labels/b.png", "segmented/a.png", "segmented/b.png"):
            found[rel] = (tmp_path / run / "out" / rel).read_bytes()
        outputs.append(found)
    assert outputs[0]["masked"][0] > 0 and outputs[0]["masked"][1] == 0
    assert outputs[0] == outputs[1]


def _random_colours(side: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    rgba = np.empty((side, side, 4), np.uint8)
    rgba[..., :3] = rng.integers(0, 256, (side, side, 3))
    rgba[..., 3] = np.where(rng.random((side, side)) < 0.1, 0, 255)
    return rgba


def test_k_256_label_maps_are_uint16_with_65535_where_masked(tmp_path):
    rgba = _random_colours(48, 3)
    transparent = rgba[..., 3] == 0
    _write(tmp_path / "images", "a.png", rgba)
    report = _run(tmp_path, kmeans={"k": 256, "max_iter": 3})
    labels = iio.imread(tmp_path / "out" / "labels/a.png")
    assert labels.dtype == np.uint16
    assert np.array_equal(labels == 65535, transparent)
    assert labels[~transparent].max() <= 255
    assert report["images"][0]["masked"] == int(transparent.sum())
    with Image.open(tmp_path / "out" / "segmented/a.png") as im:
        assert im.mode == "RGBA"  # 256 colours and masked pixels do not fit one byte
        assert np.array_equal(np.asarray(im)[..., 3] == 0, transparent)
    assert not _read(tmp_path, "masks/a/255.png")[transparent].any()


def test_k_255_label_maps_are_uint8_and_hold_255_only_where_masked(tmp_path):
    rgba = _random_colours(48, 4)
    transparent = rgba[..., 3] == 0
    _write(tmp_path / "images", "a.png", rgba)
    _run(tmp_path, kmeans={"k": 255, "max_iter": 3}, output={"masks": False})
    labels = iio.imread(tmp_path / "out" / "labels/a.png")
    assert labels.dtype == np.uint8
    assert np.array_equal(labels == 255, transparent)
    assert len(np.unique(labels[~transparent])) > 200  # real labels, all below 255


def test_k_256_without_alpha_moved_from_uint8_to_uint16(tmp_path):
    pixels = np.ascontiguousarray(_random_colours(40, 5)[..., :3])
    _write(tmp_path / "images", "a.png", pixels)
    _run(tmp_path, kmeans={"k": 256, "max_iter": 2}, output={"masks": False})
    labels = iio.imread(tmp_path / "out" / "labels/a.png")
    assert labels.dtype == np.uint16 and labels.max() <= 255
    with Image.open(tmp_path / "out" / "segmented/a.png") as im:
        assert im.mode == "P" and "transparency" not in im.info  # still indexed


def test_an_image_whose_every_pixel_is_transparent_is_skipped_with_that_reason(tmp_path):
    _write(tmp_path / "images", "a.png", _rgba())
    clear = _rgba()
    clear[..., 3] = 0
    _write(tmp_path / "images", "empty.png", clear)
    job = write_job(tmp_path, kmeans={"k": 3})
    result = run_cli("run", job, "-q", "--scheduler", "threads")
    assert result.code == 3, result.err
    entry = {e["name"]: e for e in read_json(tmp_path / "out")["images"]}["empty"]
    assert entry["status"] == "skipped" and entry["error"] == raster_job.ALL_MASKED
    assert _palette(tmp_path) == sorted([RED, GREEN, BLUE])


def test_apply_masks_the_transparent_pixels_too(tmp_path):
    _write(tmp_path / "fit" / "images", "a.png", np.ascontiguousarray(_rgba()[:30, :, :3]))
    _run(tmp_path / "fit")
    _write(tmp_path / "images", "a.png", _rgba())
    job = write_job(tmp_path)
    result = run_cli("apply", str(tmp_path / "fit" / "out" / "model.json"), job, "-q",
                     "--scheduler", "threads")
    assert result.code == 0, result.err
    assert read_json(tmp_path / "out")["images"][0]["masked"] == N_MASKED
    assert np.array_equal(_read(tmp_path, "labels/a.png") == 255, TRANSPARENT)
    with Image.open(tmp_path / "out" / "segmented/a.png") as im:
        assert np.array_equal(np.asarray(im.convert("RGBA"))[..., 3] == 0, TRANSPARENT)


def test_nodata_masks_pixels_of_that_colour(tmp_path):
    rgb = np.ascontiguousarray(_rgba()[..., :3])  # no alpha: the magenta area is opaque
    _write(tmp_path / "images", "a.png", rgb)
    report = _run(tmp_path, input={"nodata": list(MAGENTA)})
    assert _palette(tmp_path) == sorted([RED, GREEN, BLUE])
    assert report["images"][0]["masked"] == N_MASKED
    assert np.array_equal(_read(tmp_path, "labels/a.png") == 255, TRANSPARENT)


@pytest.mark.parametrize("key, value, words", [
    ("input.mask", "band:2", "input.mask: band:2 names a mask band, which only rasters have"),
    ("input.nodata", "300", "input.nodata: 300 is not an 8-bit colour"),
    ("input.nodata", "[1, 2]", "input.nodata: [1, 2] is not an 8-bit colour"),
])
def test_photo_mask_keys_that_make_no_sense_are_refused_in_one_line(tmp_path, key, value,
                                                                    words):
    _write(tmp_path / "images", "a.png", _rgba())
    result = run_cli("run", write_job(tmp_path), "-q", "--set", f"{key}={value}")
    assert result.code == 2
    assert len(result.lines) == 1 and words in result.lines[0], result.lines
    assert not (tmp_path / "out" / "labels").exists()


def _info(path: str, mask: str = "auto", nodata=None, scale: float = 1.0) -> ImageInfo:
    return photos.read_header(path, "a", 0, scale, 10**8,
                              masking=photos.mask_rule(mask, nodata))[0]


def test_every_kind_of_transparency_is_masked(tmp_path):
    grey = np.arange(HEIGHT * WIDTH, dtype=np.uint32).reshape(HEIGHT, WIDTH) % 200 + 20
    clear = TRANSPARENT
    la = np.dstack([grey.astype(np.uint8), np.where(clear, 0, 255).astype(np.uint8)])
    paths = {"la": _write(tmp_path, "la.png", la, "LA")}

    indexed = Image.fromarray(np.where(clear, 3, 1).astype(np.uint8), "P")
    indexed.putpalette([0, 0, 0, 10, 20, 30, 0, 0, 0, 255, 0, 255])
    indexed.save(tmp_path / "p.png", transparency=3)
    indexed.save(tmp_path / "p.gif", transparency=3)
    paths["p"], paths["gif"] = str(tmp_path / "p.png"), str(tmp_path / "p.gif")

    rgb = Image.fromarray(np.ascontiguousarray(_rgba()[..., :3]))
    rgb.save(tmp_path / "trns.png", transparency=MAGENTA)  # a tRNS colour
    paths["trns"] = str(tmp_path / "trns.png")

    # 16-bit RGBA, as a scanner or a raw converter writes it
    deep = (_rgba().astype(">u2") * 257).view(np.uint8).reshape(HEIGHT, WIDTH * 8)
    paths["rgba16"] = str(tmp_path / "rgba16.png")
    files.write_png_data(paths["rgba16"], WIDTH, HEIGHT, 16, 6, files.deflate_rows(deep, 1))

    for kind, path in paths.items():
        pixels, masked = photos.decode_masked(_info(path))
        assert masked is not None and np.array_equal(masked, clear), kind
        assert pixels.shape == (HEIGHT, WIDTH, 3)
        none_pixels, none_masked = photos.decode_masked(_info(path, "none"))
        assert none_masked is None, kind
        assert np.array_equal(none_pixels, pixels), kind  # colours are the stored ones
    assert np.array_equal(photos.decode_masked(_info(paths["rgba16"]))[0][0, 0], RED)


def test_an_opaque_rgba_file_computes_no_mask_and_an_rgb_file_never_does(tmp_path):
    opaque = _rgba()
    opaque[..., 3] = 255
    info = _info(_write(tmp_path, "opaque.png", opaque))
    assert info.alpha and photos.decode_masked(info)[1] is None
    info = _info(_write(tmp_path, "rgb.png", np.ascontiguousarray(opaque[..., :3])))
    assert not info.maskable and photos.decode_masked(info)[1] is None


def test_a_resized_pixel_is_masked_only_when_all_it_covers_are(tmp_path):
    rgba = _rgba()
    rgba[29, :, :3], rgba[29, :, 3] = MAGENTA, 0  # the boxes of rows 28-29 are half clear
    info = _info(_write(tmp_path, "a.png", rgba), scale=0.5)
    pixels, masked = photos.decode_masked(info)
    assert masked.shape == (HEIGHT // 2, WIDTH // 2)
    assert masked[15:].all() and not masked[:15].any()
    # the half-clear boxes take the colour of their opaque half (within the rounding of
    # Pillow's 8-bit premultiplied alpha), not a mix with magenta's
    assert np.abs(pixels[14, 15].astype(int) - GREEN).max() <= 2


def test_open_collection_gives_a_photos_transparent_pixels_as_its_mask(tmp_path):
    import pipeline

    rgba = _rgba()
    path = _write(tmp_path, "a.png", rgba)
    (image,) = pipeline.open_collection(path)
    assert np.array_equal(image.mask.compute(), rgba[..., 3] == 0)
    assert np.array_equal(image.pixels.compute(), rgba[..., :3])
