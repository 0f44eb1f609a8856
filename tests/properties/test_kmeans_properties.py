"""Properties of the k-means kernels, for any data hypothesis can draw."""

import dask.array as da
import numpy as np
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from pipeline import cluster
from pipeline import fitting as fit
from pipeline.engine import kmeans

pixels_st = st.integers(1, 200).flatmap(
    lambda n: arrays(np.uint8, (n, 3), elements=st.integers(0, 255)))


@st.composite
def chunked_case(draw):
    pixels = draw(pixels_st)
    k = draw(st.integers(1, 6))
    centroids = draw(arrays(np.float64, (k, 3), elements=st.floats(0, 255)))
    cuts = sorted(set(draw(st.lists(st.integers(1, max(1, len(pixels) - 1)), max_size=6))))
    cuts = [c for c in cuts if 0 < c < len(pixels)]
    return pixels, centroids, cuts


def _whole(pixels, centroids, space):
    return kmeans.partial_sums(kmeans.to_features(pixels, space), None, centroids)[0]


@given(chunked_case(), st.sampled_from(["rgb", "lab"]))
def test_merged_chunk_partials_equal_one_pass(case, space):
    pixels, centroids, cuts = case
    parts = [kmeans.partial_sums(kmeans.to_features(p, space), None, centroids)[0]
             for p in np.split(pixels, cuts)]
    merged = parts[0]
    for part in parts[1:]:
        merged = merged + part
    whole = _whole(pixels, centroids, space)
    if space == "rgb":  # integer pixels: exact whatever the chunking
        assert merged.sums.tolist() == whole.sums.tolist()
    assert np.allclose(merged.sums, whole.sums, rtol=1e-12, atol=1e-9)
    assert merged.counts.tolist() == whole.counts.tolist()
    assert np.isclose(merged.inertia, whole.inertia, rtol=1e-9, atol=1e-9)


@given(chunked_case(), st.sampled_from(["rgb", "lab"]))
def test_full_pass_over_any_chunking_equals_numpy_to_the_bit_across_chunkings(case, space):
    pixels, centroids, cuts = case
    sizes = tuple(np.diff([0, *cuts, len(pixels)]).tolist())
    passes = []
    for chunks in (sizes, (len(pixels),)):
        histogram = fit.collection_histogram(da.from_array(pixels, chunks=(chunks, 3)))
        codes, counts = histogram.compute(scheduler="sync")
        expected_codes, expected_counts = kmeans.histogram(pixels)
        assert codes.tolist() == expected_codes.tolist()
        assert counts.tolist() == expected_counts.tolist()
        shards = cluster.hold_parts(histogram, fit._shard, fit._SHARDS, space)
        passes.append(fit.full_pass(shards, centroids))
    got, one_chunk = passes
    # the same colour shards added in the same order: the same bits for any chunking
    assert got.sums.tolist() == one_chunk.sums.tolist()
    assert got.inertia == one_chunk.inertia
    whole = _whole(pixels, centroids, space)
    if space == "rgb":
        assert got.sums.tolist() == whole.sums.tolist()
    assert np.allclose(got.sums, whole.sums, rtol=1e-12, atol=1e-9)
    assert got.counts.tolist() == whole.counts.tolist()


@given(pixels_st, st.integers(1, 6), st.sampled_from(["rgb", "lab"]))
def test_labels_are_in_range_and_minimise_distance(pixels, k, space):
    features = kmeans.to_features(pixels, space)
    centroids = kmeans.kmeans_plusplus(features, np.ones(len(features)), k,
                                       np.random.default_rng(0))
    labels, distances = kmeans.assign(features, centroids)
    assert ((0 <= labels) & (labels < k)).all()
    every = ((features[:, None, :] - centroids[None]) ** 2).sum(axis=2)
    assert np.allclose(distances, every.min(axis=1))
    assert np.allclose(every[np.arange(len(labels)), labels], every.min(axis=1))


@given(pixels_st, st.integers(1, 6))
def test_an_update_never_raises_inertia_and_centroids_are_means(pixels, k):
    features = kmeans.to_features(pixels, "rgb")
    centroids = kmeans.random_init(features, np.ones(len(features)), k, np.random.default_rng(0))
    before, labels, distances = kmeans.partial_sums(features, None, centroids)
    new, empty = kmeans.update(before, centroids)
    for j in np.flatnonzero(~empty):
        assert np.allclose(new[j], features[labels == j].mean(axis=0))
    kmeans.reseed_empty(new, empty, features, distances)
    after = kmeans.partial_sums(features, None, new)[0]
    assert after.inertia <= before.inertia + 1e-6
    assert np.isfinite(new).all()


@given(pixels_st, st.integers(1, 5), st.integers(0, 3))
def test_fit_sample_never_gives_nan_and_is_reproducible(pixels, k, seed):
    from pipeline.config import KMeansConfig

    cfg = KMeansConfig(k=k, seed=seed, batch_pixels=max(k, 16), max_iter=20)
    a = fit.fit_sample(pixels, cfg, "rgb")
    b = fit.fit_sample(pixels, cfg, "rgb")
    assert np.isfinite(a.centroids).all()
    assert a.centroids.tolist() == b.centroids.tolist()
