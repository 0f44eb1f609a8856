#!/usr/bin/env python3
"""How low k-means can take a collection palette's MSE (issue 14's `scope: collection`, k = 8
target): scikit-learn's ``KMeans(n_init=10)`` on the colour histogram of every pixel of every
image, for a few seeds, and the MSE of painting with its rounded centroids.  Run by hand:

    PYTHONPATH=. python benchmarks/palette_optimum.py --folder .bench/collections/small --k 8

The MSE is `benchmarks/palette.py`'s: squared RGB differences over 3 x pixels.  No palette of
k colours, each pixel painted with its nearest, does better than k-means's global optimum of
this objective; n_init=10 for several seeds estimates that optimum from above.
"""

from __future__ import annotations

import argparse

import numpy as np
from sklearn.cluster import KMeans

from pipeline.config import config_from_dict
from pipeline.engine import kmeans
from pipeline.sinks import segment
from pipeline.sources import photos
from pipeline.sources.listing import list_inputs


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--folder", required=True)
    parser.add_argument("--k", type=int, default=8)
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args()
    cfg = config_from_dict({"input": {"paths": [args.folder]}, "output": {"dir": "unused"}}, ".")
    images = [photos.decode_masked(info)[0]
              for info in list_inputs(cfg.input, cfg.preprocess).images]
    pixels = np.concatenate([image.reshape(-1, 3) for image in images])
    codes, counts = kmeans.histogram(pixels)
    colours = kmeans.unpack(codes).astype(np.float64)
    print(f"{len(images)} images, {len(pixels) / 1e6:.1f} Mpx, {len(codes)} colours, "
          f"k = {args.k}")
    print("| seed | MSE at sklearn's centroids | MSE painted (rounded palette) |")
    print("|---|---|---|")
    for seed in range(args.seeds):
        fit = KMeans(args.k, n_init=10, random_state=seed).fit(colours, sample_weight=counts)
        painted = sum(segment.label_image(image, np.rint(fit.cluster_centers_), "rgb",
                                          cache=False)[2] for image in images)
        print(f"| {seed} | {fit.inertia_ / 3 / len(pixels):.2f} | "
              f"{painted / 3 / len(pixels):.2f} |")


if __name__ == "__main__":
    main()
