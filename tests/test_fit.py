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


def test_lloyds_collection_histogram_is_exact_and_its_shards_partition_it():
    # Photo-sized chunks (millions of pixels, a few per cent of the 2**24 colours) merged in
    # a tree: the histogram of all the pixels, whatever the chunking (issue 14).
    import dask.array as da

    from pipeline import cluster
    from pipeline.engine import kmeans

    rng = np.random.default_rng(1)
    pixels = np.clip(rng.normal(128, 30, (3_000_000, 3)), 0, 255).astype(np.uint8)
    codes, counts = kmeans.histogram(pixels)
    for chunks in ((3_000_000,), (700_000,) * 4 + (200_000,), (123_457,) * 24 + (37_032,)):
        merged = fit.collection_histogram(da.from_array(pixels, chunks=(chunks, 3)))
        got_codes, got_counts = merged.compute(scheduler="sync")
        assert got_codes.dtype == np.uint32 and got_counts.dtype == np.int64
        assert np.array_equal(got_codes, codes) and np.array_equal(got_counts, counts)
    shards = cluster.hold_parts(merged, fit._shard, fit._SHARDS, "rgb")
    sizes = shards.map(lambda shard: int(shard.weights.sum()))
    assert sum(sizes) == len(pixels) and min(sizes) > 0.9 * len(pixels) / fit._SHARDS
