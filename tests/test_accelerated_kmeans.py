"""Issue 14: the accelerated kernels give the plain kernels' results, exactly."""

import numpy as np
import pytest

from pipeline.engine import kmeans


@pytest.fixture(autouse=True)
def numpy_kernels(monkeypatch):
    """Lloyd keeps Hamerly's bounds only with numpy's kernel: force it, or these tests would
    compare plain steps with plain steps once numba is imported."""
    monkeypatch.setattr(kmeans, "_compiled", lambda work, force=False: None)


def _plain_lloyd(features, weights, centroids, max_iter, tol_abs):
    """Lloyd from scratch: every row assigned to every centroid at every step."""
    steps = []
    for _ in range(max_iter):
        partial, _, distances = kmeans.partial_sums(features, weights, centroids)
        new, empty = kmeans.update(partial, centroids)
        kmeans.reseed_empty(new, empty, features, distances)
        moved = kmeans.shift(centroids, new)
        steps.append((moved, partial.inertia))
        centroids = new
        if moved <= tol_abs:
            return centroids, steps, True
    return centroids, steps, False


def _colours(n, seed):
    """Photo-like colours: blobs with spread, as a weighted histogram."""
    rng = np.random.default_rng(seed)
    centres = rng.uniform(20, 235, (12, 3))
    pixels = np.clip(centres[rng.integers(0, 12, n)] + rng.normal(0, 14, (n, 3)), 0, 255)
    codes, counts = kmeans.histogram(pixels.astype(np.uint8))
    return kmeans.to_features(kmeans.unpack(codes), "rgb"), counts, codes


def test_bounded_lloyd_takes_the_plain_steps_bit_for_bit():
    features, counts, _ = _colours(30000, 0)
    tol = kmeans.tolerance(features, counts, 1e-4)
    for k in (3, 100, 140):  # below and above the size from which the bounds are kept
        start = kmeans.kmeans_plusplus(features, counts, k, np.random.default_rng(k))
        want = _plain_lloyd(features, counts, start, 25, tol)
        got_centroids, got_steps, got_converged = kmeans.lloyd(features, counts, start, 25, tol)
        assert got_centroids.tobytes() == want[0].tobytes()
        assert [(s.shift, s.inertia) for s in got_steps] == want[1]
        assert got_converged == want[2]


def test_bounded_lloyd_with_duplicate_centroids_and_ties():
    # integer points and centroids on them: exact ties everywhere, duplicates, empty clusters
    rng = np.random.default_rng(3)
    for trial in range(40):
        features = rng.integers(0, 4, (int(rng.integers(1, 40)), 3)).astype(np.float64)
        weights = rng.integers(1, 5, len(features))
        start = features[rng.integers(0, len(features), 100 + trial)].copy()
        want = _plain_lloyd(features, weights, start, 8, 0.0)
        got = kmeans.lloyd(features, weights, start, 8, 0.0)
        assert got[0].tobytes() == want[0].tobytes()
        assert [(s.shift, s.inertia) for s in got[1]] == want[1]


def test_hinted_assignment_equals_assign_for_any_hints():
    features, _, _ = _colours(5000, 1)
    rng = np.random.default_rng(1)
    centroids = features[rng.choice(len(features), 40, replace=False)] + 0.25
    labels, distances = kmeans.assign(features, centroids)
    for hints in (rng.integers(0, 40, len(features)), labels, np.zeros(len(features), int)):
        got_labels, got_distances, lower = kmeans.assign_hinted(features, centroids, hints)
        assert (got_labels == labels).all() and got_distances.tobytes() == distances.tobytes()
        others = np.sqrt(kmeans._distances_to(np.ascontiguousarray(features.T), centroids))
        others[labels, np.arange(len(features))] = np.inf
        assert (lower <= others.min(axis=0)).all()  # a lower bound of the second distance


def test_assign_two_gives_the_two_smallest_distances():
    features = np.array([[0.0, 0, 0], [10, 0, 0], [4, 0, 0]])
    centroids = np.array([[0.0, 0, 0], [3, 0, 0], [10, 0, 0]])
    labels, best, second = kmeans.assign_two(features, centroids)
    assert labels.tolist() == [0, 2, 1]
    assert best.tolist() == [0, 0, 1] and second.tolist() == [9, 49, 16]


def test_coarse_histogram_keeps_the_exact_mean_and_count_of_each_box():
    # boxes of 4 levels (6 bits): (0..3, 0..3, 0..3) holds the first two colours
    pixels = np.array([[0, 0, 0], [3, 1, 2], [3, 1, 2], [4, 0, 0], [255, 255, 255]], np.uint8)
    codes, counts = kmeans.histogram(pixels)
    features = kmeans.to_features(kmeans.unpack(codes), "rgb")
    means, weights = kmeans.coarse_histogram(codes, counts, features, 6)
    assert weights.tolist() == [3, 1, 1]
    assert means.tolist() == [[2.0, 2 / 3, 4 / 3], [4, 0, 0], [255, 255, 255]]
