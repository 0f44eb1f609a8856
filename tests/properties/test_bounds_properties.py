"""Issue 14: Lloyd with Hamerly's bounds and hinted assignment equal the plain kernels."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from pipeline.engine import kmeans


@pytest.fixture(autouse=True)
def numpy_kernels(monkeypatch):
    """Lloyd keeps Hamerly's bounds only with numpy's kernel: force it, or these tests would
    compare plain steps with plain steps once numba is imported."""
    monkeypatch.setattr(kmeans, "_compiled", lambda work, force=False: None)

rows_st = st.integers(1, 60).flatmap(
    lambda n: arrays(np.uint8, (n, 3), elements=st.integers(0, 12)))


def _plain_steps(features, weights, centroids, max_iter):
    steps = []
    for _ in range(max_iter):
        partial, _, distances = kmeans.partial_sums(features, weights, centroids)
        new, empty = kmeans.update(partial, centroids)
        kmeans.reseed_empty(new, empty, features, distances)
        steps.append((kmeans.shift(centroids, new), partial.inertia))
        centroids = new
        if steps[-1][0] <= 0:
            break
    return centroids, steps


@given(rows_st, st.integers(100, 110), st.integers(0, 2 ** 16))
def test_bounded_lloyd_equals_plain_lloyd(pixels, k, seed):
    features = pixels.astype(np.float64)
    weights = np.random.default_rng(seed).integers(1, 4, len(features))
    start = features[np.random.default_rng(seed).integers(0, len(features), k)] + 0.5
    want_centroids, want_steps = _plain_steps(features, weights, start, 6)
    centroids, steps, _ = kmeans.lloyd(features, weights, start, 6, 0.0)
    assert centroids.tobytes() == want_centroids.tobytes()
    assert [(s.shift, s.inertia) for s in steps] == want_steps


@given(rows_st, st.integers(1, 9), st.integers(0, 2 ** 16))
def test_hinted_assignment_equals_assign(pixels, k, seed):
    rng = np.random.default_rng(seed)
    features = pixels.astype(np.float64)
    centroids = rng.integers(0, 13, (k, 3)).astype(np.float64)  # ties and duplicates
    labels, distances = kmeans.assign(features, centroids)
    got, got_distances, _ = kmeans.assign_hinted(features, centroids,
                                                 rng.integers(0, k, len(features)))
    assert (got == labels).all() and got_distances.tobytes() == distances.tobytes()
