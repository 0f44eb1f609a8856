"""Feature rows of N-band rasters in sensible units: per-band normalisation and the variance error.

Pixels stay in their native dtype until a kernel needs floats; `Normalization.apply` is that
step.  Its statistics come from the sample (never a pass over the pixels) and are saved in
model.json, so ``apply`` and every later job reuse them unchanged.

- ``none``: the bands' own units (a band of larger range weighs more).
- ``standard``: ``(value - mean) / std`` per band.
- ``robust``: ``(value - median) / IQR`` per band (25-75 % range), for bands with outliers or
  heavy tails.

A band that is constant in the sample keeps scale 1 (it adds nothing to any distance).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

METHODS = ("none", "standard", "robust")


@dataclass(frozen=True)
class Normalization:
    """Per-band ``(value - center) / scale``.

    ``center`` and ``scale`` : tuples of n_bands floats (``none``: zeros and ones).
    """

    method: str
    center: tuple[float, ...]
    scale: tuple[float, ...]

    @classmethod
    def identity(cls, n_bands: int) -> Normalization:
        return cls("none", (0.0,) * n_bands, (1.0,) * n_bands)

    @classmethod
    def from_sample(cls, method: str, sample: np.ndarray) -> Normalization:
        """Statistics of ``sample`` (n, n_bands), any dtype, for ``method``."""
        if method not in METHODS:
            raise ValueError(f"normalize must be one of {METHODS}, got {method!r}")
        n_bands = sample.shape[1]
        if method == "none" or len(sample) == 0:
            return cls.identity(n_bands) if method == "none" else \
                cls(method, (0.0,) * n_bands, (1.0,) * n_bands)
        values = sample.astype(np.float64)
        if method == "standard":
            center, scale = values.mean(axis=0), values.std(axis=0)
        else:
            low, center, high = np.percentile(values, [25, 50, 75], axis=0)
            scale = high - low
        scale = np.where(scale > 0, scale, 1.0)
        return cls(method, tuple(map(float, center)), tuple(map(float, scale)))

    def apply(self, pixels: np.ndarray) -> np.ndarray:
        """Feature rows: ndarray of the same shape, float64."""
        values = pixels.astype(np.float64)
        if self.method == "none":
            return values
        return (values - np.asarray(self.center)) / np.asarray(self.scale)

    def invert(self, features: np.ndarray) -> np.ndarray:
        """Back to the bands' own units: ndarray of the same shape, float64."""
        if self.method == "none":
            return np.asarray(features, dtype=np.float64)
        return np.asarray(features) * np.asarray(self.scale) + np.asarray(self.center)

    def to_dict(self) -> dict:
        return {"method": self.method, "center": list(self.center), "scale": list(self.scale)}

    @classmethod
    def from_dict(cls, doc: dict | None, n_bands: int) -> Normalization:
        """From model.json; a model written before normalisation existed is ``none``."""
        if not doc:
            return cls.identity(n_bands)
        return cls(str(doc["method"]), tuple(map(float, doc["center"])),
                   tuple(map(float, doc["scale"])))


def unexplained_variance(inertia: float, features: np.ndarray) -> float:
    """The share of the sample's variance the centroids leave unexplained: inertia divided by
    the total sum of squares about the sample mean (0: every pixel on a centroid; 1: one
    cluster).  This is ``kmeans.error_metric: variance`` and ``max_error``'s unit for it."""
    if len(features) == 0:
        return 0.0
    total = float(((features - features.mean(axis=0)) ** 2).sum())
    return inertia / total if total > 0 else 0.0
