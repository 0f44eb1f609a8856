"""Floyd-Steinberg dithering of an RGB image to a fixed palette, by Pillow.

Why Pillow: its C error diffusion (``Image.quantize(palette=..., dither=FLOYDSTEINBERG)``,
in Pillow since PIL) is a well-kept dependency we already have, runs at C speed with no
per-pixel Python, and maps to exactly the palette given; libimagequant's binding cannot take
a fixed palette, and scikit-image has no error diffusion. Its nearest-colour search is
approximate (python-pillow/Pillow#1852), which dithering absorbs: the diffused error
corrects the next pixels. The error is diffused in 8-bit sRGB, as Pillow does.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

MAX_COLOURS = 256  # a P-mode palette's size


def dither(pixels: np.ndarray, palette: np.ndarray) -> np.ndarray:
    """Floyd-Steinberg error diffusion of an RGB image to a fixed palette.

    Parameters
    ----------
    pixels : ndarray of shape (height, width, 3), uint8
        The sRGB image.
    palette : ndarray of shape (n_colours, 3), uint8
        The colours to use, 1 <= n_colours <= 256 (duplicates allowed).

    Returns
    -------
    indices : ndarray of shape (height, width), uint8
        Index into ``palette`` of each pixel: ``palette[indices]`` is the dithered image and
        holds only the palette's colours.

    Raises
    ------
    ValueError
        If the shapes or dtypes are not those above, or the palette has more than 256 colours.
    """
    if pixels.ndim != 3 or pixels.shape[2] != 3 or pixels.dtype != np.uint8:
        raise ValueError(f"dither needs an (h, w, 3) uint8 image, got {pixels.shape} "
                         f"{pixels.dtype}")
    n_colours = len(palette)
    if palette.ndim != 2 or palette.shape[1] != 3 or palette.dtype != np.uint8 \
            or not 1 <= n_colours <= MAX_COLOURS:
        raise ValueError(f"dither needs a (k, 3) uint8 palette with 1 <= k <= {MAX_COLOURS}, "
                         f"got {palette.shape} {palette.dtype}")
    # Pad to 256 entries with copies of colour 0: a Pillow that treats the palette as 256
    # entries (older releases zero-fill a short one) then cannot pick a black that is not in
    # the palette, and any padding index it picks is colour 0 itself.
    padded = np.concatenate([palette, np.repeat(palette[:1], MAX_COLOURS - n_colours, axis=0)])
    reference = Image.new("P", (1, 1))
    reference.putpalette(padded.tobytes(), rawmode="RGB")
    image = Image.fromarray(np.ascontiguousarray(pixels))
    quantized = image.quantize(palette=reference, dither=Image.Dither.FLOYDSTEINBERG)
    indices = np.asarray(quantized, dtype=np.uint8)
    return np.where(indices < n_colours, indices, 0).astype(np.uint8)
