"""The colour table: codes, labels and distances filled lazily or whole, counts."""

import numpy as np
import pytest

from pipeline.engine import kmeans
from pipeline.sinks import segment


def test_colour_codes_round_trip_and_match_the_channels():
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (7, 5, 3)).astype(np.uint8)
    pixels[-1, -1] = [255, 255, 255]  # the last pixel is read apart from the others
    codes = segment.colour_codes(pixels.reshape(-1, 3))
    rows = pixels.reshape(-1, 3).astype(np.uint32)
    assert (codes == rows[:, 0] | rows[:, 1] << 8 | rows[:, 2] << 16).all()
    assert (segment.code_colours(codes) == pixels.reshape(-1, 3)).all()
    assert segment.colour_codes(np.zeros((0, 3), np.uint8)).shape == (0,)


@pytest.mark.parametrize("centroids", [
    np.array([[10.0, 10, 10], [20, 10, 10]]),  # exact ties on the plane red = 15
    np.random.default_rng(1).random((8, 3)) * 255,
    np.random.default_rng(2).random((17, 3)) * 255,
])
def test_whole_table_gives_the_labels_and_distances_of_assign(centroids):
    table = segment._ColourTable(centroids, "rgb", whole=True)
    assert not (table.labels == table.unknown).any()
    rng = np.random.default_rng(3)
    codes = np.concatenate([rng.integers(0, 1 << 24, 20000), np.arange(0, 1 << 24, 65537)])
    codes = codes.astype(np.uint32)
    labels, distances = kmeans.assign(
        kmeans.to_features(segment.code_colours(codes), "rgb"), centroids)
    assert (table.labels[codes] == labels).all()
    assert (table.distances[codes] == distances.astype(np.float32)).all()


def test_label_image_is_the_same_with_a_lazy_or_whole_table_and_counts_every_pixel():
    rng = np.random.default_rng(4)
    pixels = rng.integers(0, 256, (300, 500, 3)).astype(np.uint8)  # several blocks
    centroids = rng.random((6, 3)) * 255
    lazy = segment.label_image(pixels, centroids, "rgb", cache=False)
    whole = segment.label_image(pixels, centroids, "rgb", cache=False, whole_table=True)
    expected, distances = kmeans.assign(pixels.reshape(-1, 3).astype(np.float64), centroids)
    for labels, counts, inertia in (lazy, whole):
        assert labels.dtype == np.uint8 and labels.shape == (300, 500)
        assert (labels.reshape(-1) == expected).all()
        assert (counts == np.bincount(expected, minlength=6)).all()
        assert inertia == pytest.approx(distances.sum(), rel=1e-6)
    # one image's own table keeps no distances: its inertia, of exact integer sums, is
    # closer to float64 distances than the whole table's float32 ones
    assert lazy[2] == pytest.approx(distances.sum(), rel=1e-12)


@pytest.mark.parametrize("k", [1, 7, 256])
def test_a_private_tables_counts_and_inertia_are_the_same_compiled_or_not(k, monkeypatch):
    rng = np.random.default_rng(k)
    pixels = (rng.normal(120, 50, (200, 300, 3)).clip(0, 255)).astype(np.uint8)
    masked = rng.random((200, 300)) < 0.1
    centroids = rng.random((k, 3)) * 255
    compiled = segment.label_image(pixels, centroids, "rgb", cache=False, masked=masked)
    assert kmeans.compiled_if_imported() is not None  # the kernels are built or imported
    monkeypatch.setattr(kmeans, "compiled_if_imported", lambda: None)
    plain = segment.label_image(pixels, centroids, "rgb", cache=False, masked=masked)
    rows = pixels.reshape(-1, 3)[~masked.reshape(-1)].astype(np.float64)
    expected, distances = kmeans.assign(rows, centroids)
    for labels, counts, inertia in (compiled, plain):
        assert (labels[~masked] == expected).all()
        assert (labels[masked] == np.iinfo(labels.dtype).max).all()
        assert (counts == np.bincount(expected, minlength=k)).all()
        assert inertia == pytest.approx(distances.sum(), rel=1e-12)
    assert compiled[2] == plain[2]


def test_labels_are_uint8_up_to_k_255_and_uint16_from_k_256():
    # issue 12: 255 is kept for masked pixels, so k = 256 moved from uint8 to uint16
    rng = np.random.default_rng(5)
    pixels = rng.integers(0, 256, (20, 30, 3)).astype(np.uint8)
    for k, dtype in ((255, np.uint8), (256, np.uint16), (300, np.uint16)):
        centroids = rng.random((k, 3)) * 255
        labels, counts, _ = segment.label_image(pixels, centroids, "rgb", cache=False)
        assert labels.dtype == dtype and counts.sum() == 600 and len(counts) == k


def test_the_whole_table_pays_only_for_large_rgb_jobs():
    assert segment.whole_table_pays(100_000_000, 8, "rgb")
    assert not segment.whole_table_pays(100_000_000, 8, "lab")
    assert not segment.whole_table_pays(200_000, 8, "rgb")
