"""Issue 14: the faster fit keeps its quality: inertia vs a thorough reference on fixed data."""

import os

import imageio.v3 as iio
import numpy as np
import pytest

from pipeline import fitting
from pipeline.engine import kmeans
from pipeline.config import KMeansConfig

PHOTOS = os.path.join(os.path.dirname(__file__), "..", "samples", "photos")


def _reference_inertia(codes, counts, k, n_starts=6):
    """The best of ``n_starts`` k-means++ starts, each run by Lloyd on every colour."""
    features = kmeans.to_features(kmeans.unpack(codes), "rgb")
    tol = kmeans.tolerance(features, counts, 1e-4)
    best = np.inf
    for start in range(n_starts):
        seeds = kmeans.kmeans_plusplus(features, counts, k, np.random.default_rng([99, start]))
        centroids = kmeans.lloyd(features, counts, seeds, 300, tol)[0]
        best = min(best, kmeans.partial_sums(features, counts, centroids)[0].inertia)
    return best


# Up to k = 32 the fit jumps out of poor local minima (issue 14's guarantee: within 0.5 % of
# a thorough fit at k = 5, 8, 16); at palette sizes it keeps the winner of its starts, within
# 2 % where they ran on the coarser boxes (coffee.png at k = 64: 1.0145, 1.0104 on the finer
# ones at 1.5x the time), 1 % where there were too few of those (both photos at k = 256).
@pytest.mark.parametrize("photo", ["coffee.png", "rocket.jpg"])
@pytest.mark.parametrize("k, within", [(5, 1.005), (16, 1.005), (64, 1.02), (256, 1.01)])
def test_fit_is_close_to_a_thorough_fit(photo, k, within):
    pixels = iio.imread(os.path.join(PHOTOS, photo))[..., :3].reshape(-1, 3)
    codes, counts = kmeans.histogram(pixels)
    result = fitting.fit_sample(pixels, KMeansConfig(k=k), "rgb")
    features = kmeans.to_features(kmeans.unpack(codes), "rgb")
    inertia = kmeans.partial_sums(features, counts, result.centroids)[0].inertia
    assert inertia <= within * _reference_inertia(codes, counts, k)
    assert result.converged


def test_starts_run_on_coarser_boxes_only_when_there_are_enough():
    pixels = iio.imread(os.path.join(PHOTOS, "rocket.jpg"))[..., :3].reshape(-1, 3)
    points = fitting._Points.from_pixels(pixels, "rgb")
    boxes = points.coarse()
    n_seeds = len(points.coarse(fitting._SEED_BITS).weights)
    assert fitting._seed_boxes(points, boxes, fitting._JUMPS_UP_TO) is boxes
    many = n_seeds // fitting._SEED_BOXES_PER_CLUSTER
    assert len(fitting._seed_boxes(points, boxes, many).weights) == n_seeds < len(boxes.weights)
    assert fitting._seed_boxes(points, boxes, many + 1) is boxes


# One image's own palette jumps with less patience (scope: image): still within 1 %.
@pytest.mark.parametrize("photo", ["coffee.png", "rocket.jpg"])
@pytest.mark.parametrize("k", [5, 16])
def test_an_image_scope_fit_is_close_to_a_thorough_fit(photo, k):
    pixels = iio.imread(os.path.join(PHOTOS, photo))[..., :3].reshape(-1, 3)
    codes, counts = kmeans.histogram(pixels)
    result = fitting.fit_sample(pixels, KMeansConfig(k=k), "rgb",
                                patience=fitting.IMAGE_JUMP_PATIENCE)
    features = kmeans.to_features(kmeans.unpack(codes), "rgb")
    inertia = kmeans.partial_sums(features, counts, result.centroids)[0].inertia
    assert inertia <= 1.01 * _reference_inertia(codes, counts, k)
