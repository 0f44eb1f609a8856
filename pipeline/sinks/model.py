"""The fitted model as plain data (model.json), and loading a saved one to reuse its palette."""

from __future__ import annotations

import functools
import glob
import json
import os
import platform
import sys
from typing import TYPE_CHECKING, Any

import numpy as np

from pipeline import __version__, storage
from pipeline.engine import kmeans
from pipeline.errors import ConfigError, StorageError

if TYPE_CHECKING:
    from pipeline.config import JobConfig
    from pipeline.fitting import FitOutcome

# 2 (issue 12): raster models (``kind: raster``: N bands, dtype, normalisation); models of
# version 1 still load, as 3-band RGB colour models without normalisation.
SCHEMA_VERSION = 2
READABLE_VERSIONS = (1, 2)


def versions() -> dict[str, str]:
    """Versions of the packages that shape the result."""
    return dict(_versions())


@functools.lru_cache(maxsize=None)
def _versions() -> dict[str, str]:
    # read once per process: report.json is saved every few seconds, and imageio's version
    # comes from its metadata on disk (importing imageio takes 0.1-0.2 s of start-up)
    import dask
    import PIL

    return {"kmeans_pipeline": __version__, "python": platform.python_version(),
            "numpy": np.__version__, "dask": dask.__version__, "pillow": PIL.__version__,
            "imageio": _installed_version("imageio")}


def _installed_version(name: str) -> str:
    """A distribution's version from the name of its ``<name>-<version>.dist-info`` folder, the
    first on ``sys.path`` as importlib.metadata finds it; importlib.metadata itself only where
    there is none (an egg, an older editable install).  Importing importlib.metadata imports
    the email package: 10-20 ms of every run's start-up, before its first task (issue 14)."""
    for entry in sys.path:
        pattern = os.path.join(glob.escape(entry or os.curdir), f"{name}-[0-9]*.dist-info")
        for found in sorted(glob.glob(pattern)):
            return os.path.basename(found)[len(name) + 1:-len(".dist-info")]
    from importlib.metadata import version

    return version(name)


def palette_entry(centroids: np.ndarray, rgb: np.ndarray, counts: np.ndarray, inertia: float,
                  n_iter: int, converged: bool) -> dict[str, Any]:
    """One palette: centroids in RGB 0-255 and in the working space, with fit facts."""
    return {"centroids": np.round(rgb, 6).tolist(),
            "centroids_working": centroids.tolist(),
            "counts": [int(c) for c in counts],
            "inertia": float(inertia), "n_iter": int(n_iter), "converged": bool(converged)}


def model_document(k: int | str, color_space: str, scope: str, seed: int, job: dict,
                   job_hash: str, palettes: dict[str, dict] | dict,
                   spatial_weight: float = 0.0) -> dict[str, Any]:
    """model.json: ``palette`` (collection scope) or ``palettes`` by image name (image scope).

    ``color_space`` and ``spatial_weight`` name the feature set the centroids live in.
    """
    doc: dict[str, Any] = {"schema_version": SCHEMA_VERSION, "k": k, "color_space": color_space,
                           "spatial_weight": spatial_weight, "scope": scope, "seed": seed}
    if scope == "collection":
        doc.update(palettes)
    else:
        doc["palettes"] = palettes
    doc.update({"job_hash": job_hash, "job": job, "versions": versions()})
    return doc


def load_palette(path: str, color_space: str, spatial_weight: float = 0.0,
                 storage_options: dict | None = None) -> np.ndarray:
    """The working-space centroids of a saved collection model, checked against the job.

    The model's k wins over the job's (the caller warns when they differ).

    Returns
    -------
    ndarray of shape (k, 3), or (k, 5) with spatial features, float64

    Raises
    ------
    ConfigError
        The file is missing or not a model.json of this schema, or its feature set (colour
        space, spatial weight) differs from the job's.
    """
    where = f"kmeans.init: {path}"
    doc = read_model(path, storage_options, where)
    if doc.get("kind") == "raster":
        raise ConfigError(f"{where}: a raster model of {doc.get('n_bands')} bands; this job's "
                          "inputs are photos (8-bit RGB): use a model fitted on photos")
    if doc.get("color_space") != color_space:
        raise ConfigError(f"{where}: model colour space is {doc.get('color_space')!r}, the job's "
                          f"is {color_space!r}; set preprocess.color_space to match")
    weight = doc.get("spatial_weight", 0.0)
    if weight != spatial_weight:
        raise ConfigError(f"{where}: model features use preprocess.spatial_weight {weight!r}, "
                          f"the job's is {spatial_weight!r}; set it to match")
    return model_centroids(doc, where)


def read_model(path: str, storage_options: dict | None = None,
               where: str | None = None) -> dict[str, Any]:
    """A saved collection model.json, checked for its schema and scope.

    Raises
    ------
    ConfigError
        The file is missing or not a collection model.json of this schema; the message
        starts with ``where`` (default: the path).
    """
    where = where or path
    try:
        doc = json.loads(storage.Location(path, storage_options).read_bytes())
    except (OSError, StorageError) as exc:
        raise ConfigError(f"{where}: cannot read model "
                          f"({getattr(exc, 'strerror', None) or exc})") from exc
    except ValueError as exc:
        raise ConfigError(f"{where}: not a JSON model file ({exc})") from exc
    if isinstance(doc, dict) and "totals" in doc and "images" in doc:  # report.json's keys
        raise ConfigError(f"{where}: a report.json (a run's report), not a model; give the "
                          f"model.json next to it: {_sibling_model(path)}")
    if not isinstance(doc, dict) or doc.get("schema_version") not in READABLE_VERSIONS:
        raise ConfigError(f"{where}: not a model.json of schema version 1 or 2; use one "
                          "written by kmeans-pipeline run")
    if doc.get("kind") == "raster":
        if doc.get("scope") != "collection" or "centroids" not in doc:
            raise ConfigError(f"{where}: holds one palette per image; reuse needs a model "
                              "fitted with kmeans.scope: collection")
        return doc
    if doc.get("scope") != "collection" or "centroids_working" not in doc:
        raise ConfigError(f"{where}: holds one palette per image; reuse needs a model fitted "
                          "with kmeans.scope: collection")
    return doc


def _sibling_model(path: str) -> str:
    """The model.json in the folder of ``path`` (a URL's too)."""
    folder = path.rpartition("/")[0] if storage.is_url(path) else os.path.dirname(path)
    return storage.join(folder, "model.json") if folder else "model.json"


def model_centroids(doc: dict[str, Any], where: str) -> np.ndarray:
    """A collection model's working-space centroids, checked: ndarray (k, 3) or (k, 5)."""
    spatial_weight = doc.get("spatial_weight", 0.0)
    try:
        centroids = np.asarray(doc["centroids_working"], dtype=np.float64)
    except (TypeError, ValueError):
        centroids = np.zeros(0)
    n_features = 3 if spatial_weight == 0 else 5
    if (centroids.ndim != 2 or centroids.shape[1] != n_features or len(centroids) < 1
            or not np.isfinite(centroids).all()):
        raise ConfigError(f"{where}: centroids_working is not a list of k rows of "
                          f"{n_features} finite numbers; use a model.json written by "
                          "kmeans-pipeline run")
    return centroids


def collection_document(cfg: JobConfig, outcome: FitOutcome, counts: np.ndarray,
                        inertia: float) -> dict[str, Any]:
    """model.json of a collection-scope run: its palette, with the pixels per cluster and the
    inertia of the images segmented so far."""
    space = cfg.preprocess.color_space
    rgb = kmeans.centroids_to_rgb(outcome.centroids[:, :3], space)
    entry = palette_entry(outcome.centroids, rgb, counts, inertia, outcome.n_iter,
                          outcome.converged)
    entry["palette"] = outcome.palette.tolist()
    entry["history"] = [{"kind": s.kind, "shift": s.shift, "inertia": s.inertia}
                        for s in outcome.steps]
    doc = model_document(len(outcome.centroids), space, "collection", cfg.kmeans.seed,
                         cfg.to_dict(), cfg.job_hash(), entry, cfg.preprocess.spatial_weight)
    if outcome.auto_k:
        doc["auto_k"] = outcome.auto_k
    return doc


def image_document(cfg: JobConfig, palettes: dict[str, dict]) -> dict[str, Any]:
    """model.json of an image-scope run: one palette per image name."""
    return model_document(cfg.kmeans.k, cfg.preprocess.color_space, cfg.kmeans.scope,
                          cfg.kmeans.seed, cfg.to_dict(), cfg.job_hash(), palettes,
                          cfg.preprocess.spatial_weight)


def raster_document(cfg: JobConfig, fitted: dict, palette: np.ndarray, counts: np.ndarray,
                    display_range: list | None) -> dict[str, Any]:
    """model.json of a collection-scope raster run (``kind: raster``, schema version 2).

    ``fitted`` is `raster_job.RasterModel.to_dict` (centroids in normalised feature units and
    in the bands' own units, the normalisation, band names, dtypes); ``palette`` the display
    colour of each cluster (k, 3), shown by report.html; ``display_range`` the sample's 2 % and
    98 % value per band (the report's stretch, kept for resume).
    """
    doc = model_document(fitted["n_clusters"], "bands", "collection", cfg.kmeans.seed,
                         cfg.to_dict(), cfg.job_hash(), {})
    doc.update(fitted)
    doc.update(palette=np.asarray(palette).astype(int).tolist(),
               counts=[int(c) for c in counts], display_range=display_range)
    doc["schema_version"] = SCHEMA_VERSION
    return doc


def raster_image_document(cfg: JobConfig, models: dict[str, dict]) -> dict[str, Any]:
    """model.json of an image-scope raster run: each image's own raster model."""
    doc = model_document(cfg.kmeans.k, "bands", cfg.kmeans.scope, cfg.kmeans.seed,
                         cfg.to_dict(), cfg.job_hash(), models)
    doc["kind"] = "raster"
    return doc
