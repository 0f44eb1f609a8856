"""The raster sample (issue 12) is a function of the pixel position: any cut of the image into
windows finds the same pixels, and masked pixels are never drawn."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
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


@settings(max_examples=25, deadline=None)
@given(height=st.integers(1, 1700), width=st.integers(1, 1700), rate=st.floats(1e-4, 0.2),
       share=st.floats(0.05, 1.0), seed=st.integers(0, 2**31), data=st.data())
def test_block_shares_sample_the_same_pixels_for_any_windowing(height, width, rate, share,
                                                               seed, data):
    """Large images are sampled in a share of fixed 512-pixel blocks: still the same pixels for
    every cut into windows, only inside drawn blocks, and reading just a window's drawn blocks
    (as the sample pass does) finds exactly what reading the whole window finds."""
    rows, cols = data.draw(_cuts(height)), data.draw(_cuts(width))
    pixels = np.arange(height * width, dtype=np.uint32).reshape(height, width, 1)
    masked = np.random.default_rng(seed).random((height, width)) < 0.2
    whole, _ = rasters.sample_window(pixels, masked, 0, 0, width, seed, 7, rate, share)
    drawn = np.zeros((height, width), bool)
    for r0, c0, h, w in rasters.sampled_blocks(seed, 7, 0, 0, height, width, width, share):
        assert r0 % rasters.SAMPLE_BLOCK == 0 and c0 % rasters.SAMPLE_BLOCK == 0
        drawn[r0:r0 + h, c0:c0 + w] = True
    assert drawn.reshape(-1)[whole].all() and not masked.reshape(-1)[whole].any()
    found = []
    for r0, r1 in zip(rows, rows[1:]):
        for c0, c1 in zip(cols, cols[1:]):
            for br, bc, h, w in rasters.sampled_blocks(seed, 7, r0, c0, r1 - r0, c1 - c0, width,
                                                       share):
                assert r0 <= br and br + h <= r1 and c0 <= bc and bc + w <= c1
                found.append(rasters.sample_window(pixels[br:br + h, bc:bc + w],
                                                   masked[br:br + h, bc:bc + w], br, bc, width,
                                                   seed, 7, rate, share)[0])
    positions = np.sort(np.concatenate(found)) if found else np.empty(0, np.int64)
    assert np.array_equal(positions, whole)


def test_block_share_is_one_below_sixteen_megapixels_and_keeps_64_blocks():
    assert rasters.block_share(2**20 / (4000 * 4000), 4000, 4000) == 1.0
    assert rasters.block_share(1e-9, 4096, 4096) == 1.0  # 64 blocks: all of them
    assert rasters.block_share(2**20 / 40_000**2, 40_000, 40_000) == 16 * 2**20 / 40_000**2
    assert rasters.block_share(1e-9, 40_000, 40_000) == 64 / 79**2  # 40,000 / 512, rounded up
