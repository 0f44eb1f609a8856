"""PNG outputs: every kind read back exactly by imageio, at every compression level."""

import os
from dataclasses import replace

import imageio.v3 as iio
import numpy as np
import pytest

from pipeline.sinks import images as write
from pipeline.config import OutputConfig


@pytest.mark.parametrize("k", [3, 256, 300])
@pytest.mark.parametrize("level", [0, 1, 6, 9])
def test_segmented_labels_and_masks_read_back_exactly(tmp_path, k, level):
    rng = np.random.default_rng(k + level)
    labels = np.repeat(rng.integers(0, k, (37, 1)), 53, axis=1)  # runs, as label maps have
    labels[::5] = rng.integers(0, k, (8, 53))
    labels = labels.astype(np.uint8 if k <= 256 else np.uint16)
    palette = rng.integers(0, 256, (k, 3)).astype(np.uint8)
    cfg = replace(OutputConfig(), dir=str(tmp_path), masks=k == 3, png_compression=level)
    files = write.write_image_outputs(str(tmp_path), "sub/x", labels, palette, cfg)
    segmented = iio.imread(tmp_path / files["segmented"][0][0])
    assert segmented.shape == (37, 53, 3) and (segmented == palette[labels]).all()
    read_labels = iio.imread(tmp_path / files["labels"][0][0])
    assert read_labels.dtype == labels.dtype and (read_labels == labels).all()
    for j, (rel, size) in enumerate(files.get("masks", [])):
        mask = iio.imread(tmp_path / rel)
        assert mask.dtype == np.uint8 and ((mask == 255) == (labels == j)).all()
        assert os.path.getsize(tmp_path / rel) == size


def test_image_data_is_compressed_in_bands_that_join_up(tmp_path, monkeypatch):
    monkeypatch.setattr(write, "_BAND_BYTES", 64)  # many bands for a small image
    rows = np.random.default_rng(0).integers(0, 4, (50, 40)).astype(np.uint8)
    data = write.deflate_rows(rows, 1)
    write.write_png_data(str(tmp_path / "x.png"), 40, 50, 8, 0, data)
    assert (iio.imread(tmp_path / "x.png") == rows).all()
