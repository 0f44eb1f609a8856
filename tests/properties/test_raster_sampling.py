"""The raster sample (issue 12) is a function of the pixel position: any cut of the image into
windows finds the same pixels, and masked pixels are never drawn."""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from pipeline.sources import rasters


@st.composite
def _cuts(draw, length: int) -> list[int]:
    inner = draw(st.sets(st.integers(1, length - 1), max_size=6)) if length > 1 else set()
    return [0, *sorted(inner), length]


@given(height=st.integers(1, 40), width=st.integers(1, 70), rate=st.floats(0.0, 1.0),
       seed=st.integers(0, 2**31), data=st.data())
def test_any_windowing_samples_the_same_pixels(height, width, rate, seed, data):
    rows, cols = data.draw(_cuts(height)), data.draw(_cuts(width))
    pixels = np.arange(height * width * 2, dtype=np.uint16).reshape(height, width, 2)
    masked = data.draw(st.lists(st.booleans(), min_size=height * width,
                                max_size=height * width))
    masked = np.array(masked, dtype=bool).reshape(height, width)
    whole, values = rasters.sample_window(pixels, masked, 0, 0, width, seed, 7, rate)
    parts = [rasters.sample_window(pixels[r0:r1, c0:c1], masked[r0:r1, c0:c1], r0, c0,
                                   width, seed, 7, rate)
             for r0, r1 in zip(rows, rows[1:]) for c0, c1 in zip(cols, cols[1:])]
    positions = np.concatenate([p for p, _ in parts])
    order = np.argsort(positions)
    assert np.array_equal(positions[order], whole)
    assert np.array_equal(np.concatenate([v for _, v in parts])[order], values)
    assert not masked.reshape(-1)[whole].any()
    assert len(np.unique(whole)) == len(whole)
    assert np.array_equal(values, pixels.reshape(-1, 2)[whole])
