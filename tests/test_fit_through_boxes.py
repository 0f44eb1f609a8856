"""Lloyd steps on a sample's colours taken through their boxes (`fitting._lloyd_through_boxes`,
issue 14) give `kmeans.lloyd`'s centroids and steps bit for bit, so a run's palette does not
depend on which of the two ran."""

import numpy as np
import pytest

from pipeline import fitting
from pipeline.engine import kmeans


def _colours(seed: int, n: int = 60_000, noise: float = 6.0) -> np.ndarray:
    """uint8 RGB rows: a few blobs of colour with sensor-like noise (many distinct colours)."""
    rng = np.random.default_rng(seed)
    centres = rng.uniform(20, 235, (7, 3))
    rows = centres[rng.integers(0, len(centres), n)] + rng.normal(0, 18, (n, 3))
    rows += rng.normal(0, noise, rows.shape)
    return np.clip(np.rint(rows), 0, 255).astype(np.uint8)


def _both(points, centroids, max_iter=100):
    boxes = points.coarse()
    tol_abs = kmeans.tolerance(points.features, points.weights, 1e-4)
    want = kmeans.lloyd(points.features, points.weights, centroids, max_iter, tol_abs)
    found = fitting._lloyd_through_boxes(points, boxes, centroids, max_iter, tol_abs)
    return want, found


def _assert_same(want, found):
    (c1, s1, conv1), (c2, s2, conv2) = want, found
    assert np.array_equal(c1, c2)
    assert conv1 == conv2
    assert [s.shift for s in s1] == [s.shift for s in s2]
    assert [s.kind for s in s1] == [s.kind for s in s2]
    np.testing.assert_allclose([s.inertia for s in s1], [s.inertia for s in s2], rtol=1e-9)


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("k", [1, 2, 5, 16, 32])
def test_the_same_centroids_and_steps_as_lloyd_on_the_colours(seed, k):
    points = fitting._Points.from_pixels(_colours(seed), "rgb")
    rng = np.random.default_rng(seed)
    start = kmeans.kmeans_plusplus(points.features, points.weights, k, rng)
    _assert_same(*_both(points, start))
    _assert_same(*_both(points, start, max_iter=2))  # stopped before converging


def test_ties_duplicates_and_empty_clusters_as_lloyd():
    """Two equal centroids (every box on a tie), one far from every colour (empty after the
    first step, re-seeded from every colour's distance), one on a box's edge."""
    points = fitting._Points.from_pixels(_colours(7, n=20_000), "rgb")
    start = np.array([[100.0, 100.0, 100.0], [100.0, 100.0, 100.0], [1e4, 1e4, 1e4],
                      [64.0, 128.0, 32.0], [200.0, 30.0, 90.0]])
    _assert_same(*_both(points, start))


def test_few_colours_and_no_iterations():
    points = fitting._Points.from_pixels(np.array([[0, 0, 0], [255, 255, 255], [3, 4, 5]] * 5,
                                                  np.uint8), "rgb")
    start = points.features[:2].copy()
    _assert_same(*_both(points, start))
    _assert_same(*_both(points, start, max_iter=0))
