"""kmeans-pipeline: k-means colour segmentation of image collections on dask."""

__version__ = "0.1.0"
