"""Properties of the engine on rows of any width and dtype, and of KMeans over any chunking."""

import dask.array as da
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from pipeline.engine import kmeans
from pipeline.estimator import KMeans

DTYPES = [np.uint8, np.int8, np.uint16, np.int32, np.int64, np.float32, np.float64]


@st.composite
def rows_case(draw, max_rows=120):
    """Rows of any width and dtype (values hypothesis draws), and cuts into chunks."""
    dtype = np.dtype(draw(st.sampled_from(DTYPES)))
    n, n_features = draw(st.integers(1, max_rows)), draw(st.integers(1, 9))
    if dtype.kind == "f":
        elements = st.floats(-1e6, 1e6, width=dtype.itemsize * 8)
    else:
        info = np.iinfo(dtype)
        elements = st.integers(max(int(info.min), -2**40), min(int(info.max), 2**40))
    rows = draw(arrays(dtype, (n, n_features), elements=elements))
    cuts = sorted(set(draw(st.lists(st.integers(1, max(1, n - 1)), max_size=5))))
    return rows, [c for c in cuts if 0 < c < n]


@given(rows_case(), st.integers(1, 5))
def test_chunk_partials_merge_to_the_whole_for_any_width_and_dtype(case, k):
    rows, cuts = case
    centroids = rows[np.arange(k) % len(rows)].astype(np.float64)
    parts = [kmeans.partial_sums(part, None, centroids)[0] for part in np.split(rows, cuts)]
    merged = parts[0]
    for part in parts[1:]:
        merged = merged + part
    whole = kmeans.partial_sums(rows, None, centroids)[0]
    if rows.dtype.kind in "iu":  # exact int64 sums, whatever the chunking
        assert merged.sums.dtype == np.int64
        assert merged.sums.tolist() == whole.sums.tolist()
        exact = [rows[kmeans.assign(rows, centroids)[0] == j].astype(object).sum(axis=0)
                 for j in range(k)]
        assert [list(s) if np.ndim(s) else [0] * rows.shape[1] for s in exact] == \
            whole.sums.tolist()
    else:
        np.testing.assert_allclose(merged.sums, whole.sums, rtol=1e-9, atol=1e-3)
    assert merged.counts.tolist() == whole.counts.tolist()


@given(rows_case(), st.integers(1, 6))
def test_labels_lie_in_range_and_minimise_distance(case, k):
    rows, _ = case
    centroids = kmeans.kmeans_plusplus(rows, np.ones(len(rows)), k, np.random.default_rng(0))
    labels, distances = kmeans.assign(rows, centroids)
    every = kmeans.squared_distances(rows, centroids)
    assert ((0 <= labels) & (labels < k)).all()
    assert np.array_equal(distances, every.min(axis=1))
    assert np.array_equal(labels, every.argmin(axis=1))
    assert np.isfinite(centroids).all()


@given(rows_case(max_rows=80), st.integers(2, 5))
def test_jumps_never_raise_inertia(case, k):
    rows, _ = case
    weights = np.ones(len(rows), np.int64)
    rng = np.random.default_rng(1)
    start = kmeans.kmeans_plusplus(rows, weights, k, rng)
    start, _, _ = kmeans.lloyd(rows, weights, start, 50, 0.0)
    jumped, _, _ = kmeans.jumps(rows, weights, start, 50, 0.0, rng)
    assert np.isfinite(jumped).all()
    before = kmeans.partial_sums(rows, weights, start)[0].inertia
    assert kmeans.partial_sums(rows, weights, jumped)[0].inertia <= before


@settings(max_examples=40)
@given(rows_case(), st.integers(1, 4), st.integers(0, 2 ** 16))
def test_integer_rows_give_the_same_centroids_for_any_chunking(case, k, seed):
    rows, cuts = case
    if rows.dtype.kind == "f" or len(rows) < k:
        rows = np.rint(rows.astype(np.float64) % 1000).astype(np.int64)
        k = min(k, len(rows))
    sizes = tuple(np.diff([0, *cuts, len(rows)]).tolist())
    params = dict(n_clusters=k, random_state=seed, algorithm="lloyd", sample_size=50,
                  max_iter=20)
    whole = KMeans(**params).fit(rows)
    chunked = KMeans(**params).fit(da.from_array(rows, chunks=(sizes, rows.shape[1])))
    assert chunked.cluster_centers_.tolist() == whole.cluster_centers_.tolist()
    assert chunked.labels_.compute().tolist() == whole.labels_.tolist()
