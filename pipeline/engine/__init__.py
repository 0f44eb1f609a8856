"""The k-means engine: numpy-only k-means on feature rows of any width and numeric dtype.

Kernels for one block of rows (assign, partial sums, update, empty-cluster policy, tolerance)
and whole fits on a small in-memory set (k-means++ and random seeding, mini-batch and Lloyd
iterations, jumps out of Lloyd's local minima).  No dask, no I/O, no logging: the fitting stage and `pipeline.estimator.KMeans`
drive these kernels over chunks.
"""
