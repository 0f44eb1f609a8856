"""Hand-worked cases for the numpy kernels: small enough to check on paper."""

import numpy as np
import pytest

from pipeline.engine import kmeans


def test_assign_partial_sums_and_inertia_by_hand():
    features = np.array([[0, 0, 0], [2, 0, 0], [10, 0, 0], [12, 0, 0]], float)
    centroids = np.array([[1, 0, 0], [11, 0, 0]], float)
    partial, labels, distances = kmeans.partial_sums(features, None, centroids)
    assert labels.tolist() == [0, 0, 1, 1]
    assert distances.tolist() == [1, 1, 1, 1]
    assert partial.sums.tolist() == [[2, 0, 0], [22, 0, 0]]
    assert partial.counts.tolist() == [2, 2]
    assert partial.inertia == 4.0


def test_weights_count_as_repeated_rows():
    features = np.array([[0, 0, 0], [4, 0, 0]], float)
    weighted, _, _ = kmeans.partial_sums(features, np.array([3, 1]), np.array([[1.0, 0, 0]]))
    repeated, _, _ = kmeans.partial_sums(features[[0, 0, 0, 1]], None, np.array([[1.0, 0, 0]]))
    assert weighted.sums.tolist() == repeated.sums.tolist() == [[4, 0, 0]]
    assert weighted.inertia == repeated.inertia == 3 * 1 + 9


def test_ties_go_to_the_lowest_index():
    labels, _ = kmeans.assign(np.array([[5.0, 0, 0]]), np.array([[4.0, 0, 0], [6.0, 0, 0]]))
    assert labels.tolist() == [0]


def test_update_is_the_mean_and_an_empty_cluster_is_reseeded_at_the_farthest_pixel():
    features = np.array([[0, 0, 0], [2, 0, 0], [100, 0, 0]], float)
    centroids = np.array([[1, 0, 0], [50, 0, 0], [200, 0, 0]], float)
    partial, _, distances = kmeans.partial_sums(features, None, centroids)
    new, empty = kmeans.update(partial, centroids)
    assert empty.tolist() == [False, False, True]
    assert new[:2].tolist() == [[1, 0, 0], [100, 0, 0]]
    left = kmeans.reseed_empty(new, empty, features, distances)
    assert left == 0
    assert new[2].tolist() == [100, 0, 0]  # farthest from its centroid (50): distance 2500
    assert np.isfinite(new).all()


def test_fewer_distinct_colours_than_clusters_never_gives_nan_or_black():
    features = np.array([[10, 20, 30]] * 4, float)
    centroids = np.array([[10, 20, 30], [10, 20, 30], [10, 20, 30]], float)
    partial, _, distances = kmeans.partial_sums(features, None, centroids)
    new, empty = kmeans.update(partial, centroids)
    assert kmeans.reseed_empty(new, empty, features, distances) == 2
    assert new.tolist() == centroids.tolist()


def test_histogram_and_pack_round_trip():
    pixels = np.array([[1, 2, 3], [255, 0, 7], [1, 2, 3]], np.uint8)
    codes, counts = kmeans.histogram(pixels)
    assert kmeans.unpack(codes).tolist() == [[1, 2, 3], [255, 0, 7]]
    assert counts.tolist() == [2, 1]


@pytest.mark.parametrize("rgb", [[0, 0, 0], [255, 255, 255], [255, 0, 0], [12, 200, 99]])
def test_lab_round_trip(rgb):
    lab = kmeans.rgb_to_lab(np.array([rgb], float) / 255)
    assert np.allclose(kmeans.lab_to_rgb(lab) * 255, rgb, atol=1e-6)


def test_lab_of_white_and_black():
    lab = kmeans.rgb_to_lab(np.array([[1.0, 1, 1], [0, 0, 0]]))
    assert np.allclose(lab, [[100, 0, 0], [0, 0, 0]], atol=1e-3)


def test_lloyd_on_two_obvious_groups_converges_to_their_means():
    features = np.array([[0, 0, 0], [2, 0, 0], [10, 0, 0], [12, 0, 0]], float)
    centroids, steps, converged = kmeans.lloyd(features, np.ones(4),
                                               np.array([[0.0, 0, 0], [2.0, 0, 0]]), 10, 0.0)
    assert converged
    assert centroids.tolist() == [[1, 0, 0], [11, 0, 0]]
    assert steps[-1].inertia == 4.0


def test_kmeans_plusplus_picks_distinct_points_and_is_reproducible():
    features = np.array([[0, 0, 0], [100, 0, 0], [0, 100, 0], [0, 0, 100]], float)
    a = kmeans.kmeans_plusplus(features, np.ones(4), 4, np.random.default_rng(1))
    b = kmeans.kmeans_plusplus(features, np.ones(4), 4, np.random.default_rng(1))
    assert a.tolist() == b.tolist()
    assert sorted(map(tuple, a)) == sorted(map(tuple, features))


def test_a_jump_moves_a_doubled_centre_to_the_cluster_covering_two_blobs():
    features = np.array([[0], [0], [1], [1], [10], [10], [11], [11], [20], [20], [21], [21]])
    weights = np.ones(len(features), np.int64)
    stuck = np.array([[0.0], [1.0], [15.5]])  # a Lloyd fixed point: two centres on one blob
    assert kmeans.lloyd(features, weights, stuck, 10, 0.0)[0].tolist() == stuck.tolist()
    jumped, _, kept = kmeans.jumps(features, weights, stuck, 10, 0.0, np.random.default_rng(0))
    assert kept >= 1
    assert sorted(jumped.ravel().tolist()) == [0.5, 10.5, 20.5]
    assert kmeans.weighted_inertia(features, weights, jumped) == 12 * 0.25


def test_integer_rows_sum_exactly_beyond_float64():
    features = np.array([[2**60, 3], [1, -3], [7, 5]], np.int64)
    partial, _, _ = kmeans.partial_sums(features, None, np.array([[0.0, 0.0]]))
    assert partial.sums.dtype == np.int64
    assert partial.sums.tolist() == [[2**60 + 8, 5]]  # float64 would give 2**60


def test_kernels_take_any_width():
    features = np.array([[0], [2], [10], [12]], np.uint8)
    partial, labels, distances = kmeans.partial_sums(features, None, np.array([[1.0], [11.0]]))
    assert labels.tolist() == [0, 0, 1, 1] and partial.sums.tolist() == [[2], [22]]
    wide = np.arange(4 * 70, dtype=np.float32).reshape(4, 70)
    labels, distances = kmeans.assign(wide, wide[[0, 3]].astype(np.float64))
    assert labels.tolist() == [0, 0, 1, 1] and distances.tolist()[0] == 0.0
    assert kmeans.squared_distances(wide, wide[[0]].astype(float))[1, 0] == 70 * 70 ** 2
