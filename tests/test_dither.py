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
    assert np.abs(dithered.astype(int) - pixels).mean() > np.abs(nearest.astype(int) - pixels).mean()


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
