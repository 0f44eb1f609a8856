"""Floyd-Steinberg dithering to a fixed palette (pipeline.sinks.dither)."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.sinks.dither import dither


def _gradient(height: int = 64, width: int = 96) -> np.ndarray:
    """A smooth two-way colour gradient: every block has a colour between palette entries."""
    y, x = np.mgrid[0:height, 0:width]
    return np.stack([x * 255 // (width - 1), y * 255 // (height - 1),
                     (x + y) * 255 // (width + height - 2)], axis=-1).astype(np.uint8)


def _nearest(pixels: np.ndarray, palette: np.ndarray) -> np.ndarray:
    distances = ((pixels[..., None, :].astype(np.int64) - palette.astype(np.int64)) ** 2).sum(-1)
    return distances.argmin(-1)


def _block_means(image: np.ndarray, size: int) -> np.ndarray:
    h, w = image.shape[0] // size * size, image.shape[1] // size * size
    blocks = image[:h, :w].astype(np.float64).reshape(h // size, size, w // size, size, 3)
    return blocks.mean(axis=(1, 3))


@pytest.mark.parametrize("n_colours", [1, 2, 7, 16, 255, 256])
def test_output_holds_exactly_the_palettes_colours(n_colours):
    rng = np.random.default_rng(n_colours)
    pixels = rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)
    pixels[:5] = 0  # black pixels, and no black in the palette: a zero-padded palette shows
    palette = rng.integers(30, 256, (n_colours, 3), dtype=np.uint8)
    indices = dither(pixels, palette)
    assert indices.shape == (40, 50) and indices.dtype == np.uint8
    assert indices.max() < n_colours
    painted = {tuple(c) for c in palette[indices].reshape(-1, 3)}
    assert painted <= {tuple(c) for c in palette}


def test_block_means_are_closer_than_nearest_colour_painting():
    pixels = _gradient()
    palette = np.array([[0, 0, 0], [255, 255, 255], [255, 0, 0], [0, 255, 0], [0, 0, 255],
                        [255, 255, 0]], np.uint8)
    dithered = palette[dither(pixels, palette)]
    nearest = palette[_nearest(pixels, palette)]
    target = _block_means(pixels, 8)
    error_dithered = np.abs(_block_means(dithered, 8) - target).mean()
    error_nearest = np.abs(_block_means(nearest, 8) - target).mean()
    assert error_dithered < 0.5 * error_nearest, (error_dithered, error_nearest)
    # Pixel by pixel dithering is noisier than the nearest colour: it trades that for the mean.
    noise = {name: np.abs(image.astype(int) - pixels).mean()
             for name, image in (("dithered", dithered), ("nearest", nearest))}
    assert noise["dithered"] > noise["nearest"]


def test_flat_image_in_the_palette_is_not_dithered():
    palette = np.array([[10, 20, 30], [200, 100, 50], [90, 90, 90]], np.uint8)
    pixels = np.broadcast_to(palette[1], (12, 17, 3)).copy()
    assert np.all(dither(pixels, palette) == 1)


def test_same_input_same_output():
    rng = np.random.default_rng(5)
    pixels = rng.integers(0, 256, (30, 30, 3), dtype=np.uint8)
    palette = rng.integers(0, 256, (9, 3), dtype=np.uint8)
    assert np.array_equal(dither(pixels, palette), dither(pixels.copy(), palette.copy()))


@pytest.mark.parametrize("pixels, palette, message", [
    (np.zeros((4, 4, 3), np.uint8), np.zeros((257, 3), np.uint8), "1 <= k <= 256"),
    (np.zeros((4, 4, 3), np.uint8), np.zeros((0, 3), np.uint8), "1 <= k <= 256"),
    (np.zeros((4, 4, 3), np.uint8), np.zeros((4, 3), np.float64), "uint8 palette"),
    (np.zeros((4, 4), np.uint8), np.zeros((4, 3), np.uint8), r"\(h, w, 3\) uint8 image"),
])
def test_bad_shapes_are_refused(pixels, palette, message):
    with pytest.raises(ValueError, match=message):
        dither(pixels, palette)


# ---------------------------------------------------------------------------------------------
# output.dither through the CLI


def _photos(folder) -> None:
    """Smooth gradients: every pixel lies between palette colours, as in a photo's sky."""
    from conftest import save

    for i, (h, w) in enumerate([(48, 64), (40, 40)]):
        save(folder / "images" / f"g{i}.png", np.roll(_gradient(h, w), 7 * i, axis=1))


def _png(path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def _raw(path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as image:
        return np.asarray(image)


def test_dithered_segmented_images_keep_the_palette_and_labels_stay_undithered(tmp_path):
    import json

    from conftest import write_job
    from pipeline.cli import main

    _photos(tmp_path)
    plain = write_job(tmp_path, kmeans={"k": 6, "seed": 0})
    assert main(["run", plain, "-q", "--set", f"output.dir={tmp_path / 'plain'}"]) == 0
    assert main(["run", plain, "-q", "--set", f"output.dir={tmp_path / 'dithered'}",
                 "--set", "output.dither=floyd-steinberg"]) == 0
    model = json.loads((tmp_path / "dithered" / "model.json").read_text())
    palette = {tuple(c) for c in model["palette"]}
    assert model["palette"] == json.loads((tmp_path / "plain" / "model.json").read_text())[
        "palette"]  # dithering changes no fit
    for name in ("g0", "g1"):
        original = _png(tmp_path / "images" / f"{name}.png")
        dithered = _png(tmp_path / "dithered" / "segmented" / f"{name}.png")
        undithered = _png(tmp_path / "plain" / "segmented" / f"{name}.png")
        assert {tuple(c) for c in dithered.reshape(-1, 3)} <= palette
        error = {kind: np.abs(_block_means(image, 8) - _block_means(original, 8)).mean()
                 for kind, image in (("dithered", dithered), ("plain", undithered))}
        assert error["dithered"] < 0.8 * error["plain"], error
        for kind in ("labels", "masks/" + name):
            folder = tmp_path / "dithered" / kind
            for file in sorted(p.name for p in folder.iterdir() if p.suffix == ".png"):
                if kind == "labels" and not file.startswith(name):
                    continue
                assert np.array_equal(_raw(folder / file),
                                      _raw(tmp_path / "plain" / kind / file)), (kind, file)


@pytest.mark.parametrize("keys, message", [
    (["kmeans.k=300"], "output.dither: floyd-steinberg paints a palette of at most 256 colours, "
                       "but kmeans.k is 300; lower it or set output.dither: none"),
    (["kmeans.k=auto", "kmeans.max_k=512", "kmeans.batch_pixels=1024"],
     "output.dither: floyd-steinberg paints a palette of at most 256 colours, but "
     "kmeans.max_k is 512 with k: auto; lower it or set output.dither: none"),
])
def test_dither_with_more_than_256_colours_is_a_config_error(tmp_path, keys, message, capsys):
    from conftest import write_job
    from pipeline.cli import main

    _photos(tmp_path)
    job = write_job(tmp_path, output={"dither": "floyd-steinberg"})
    assert main(["validate", job, *[arg for key in keys for arg in ("--set", key)]]) == 2
    assert capsys.readouterr().err.strip() == f"error: {job}: {message}"
