"""Fitting on the sample: parallel starts give the serial result."""

import dask
import numpy as np

from pipeline import fitting as fit
from pipeline.config import KMeansConfig


def test_starts_as_parallel_tasks_give_the_serial_result():
    rng = np.random.default_rng(0)
    centres = rng.integers(0, 256, (6, 3))
    sample = np.clip(centres[rng.integers(0, 6, 20000)] + rng.integers(-9, 10, (20000, 3)),
                     0, 255).astype(np.uint8)
    cfg = KMeansConfig(k=6, n_init=4, batch_pixels=512, sample_pixels=20000)
    points = fit._Points.from_pixels(sample, "rgb")
    serial = fit._best_of_starts(points, cfg, None, iterate=True)
    with dask.config.set(scheduler="threads"):
        parallel = fit._best_of_starts(points, cfg, None, iterate=True, parallel=True)
    assert (serial.centroids == parallel.centroids).all()
    assert [s.inertia for s in serial.steps] == [s.inertia for s in parallel.steps]
