"""The fitted model as plain data (model.json), and loading a saved one to reuse its palette."""

from __future__ import annotations

import json
import platform
from typing import Any

import numpy as np

from pipeline import __version__, storage
from pipeline.errors import ConfigError

SCHEMA_VERSION = 1


def versions() -> dict[str, str]:
    """Versions of the packages that shape the result."""
    import dask
    import imageio
    import PIL

    return {"kmeans_pipeline": __version__, "python": platform.python_version(),
            "numpy": np.__version__, "dask": dask.__version__, "pillow": PIL.__version__,
            "imageio": imageio.__version__}


def palette_entry(centroids: np.ndarray, rgb: np.ndarray, counts: np.ndarray, inertia: float,
                  n_iter: int, converged: bool) -> dict[str, Any]:
    """One palette: centroids in RGB 0-255 and in the working space, with fit facts."""
    return {"centroids": np.round(rgb, 6).tolist(),
            "centroids_working": centroids.tolist(),
            "counts": [int(c) for c in counts],
            "inertia": float(inertia), "n_iter": int(n_iter), "converged": bool(converged)}


def model_document(k: int, color_space: str, scope: str, seed: int, job: dict, job_hash: str,
                   palettes: dict[str, dict] | dict) -> dict[str, Any]:
    """model.json: ``palette`` (collection scope) or ``palettes`` by image name (image scope)."""
    doc: dict[str, Any] = {"schema_version": SCHEMA_VERSION, "k": k, "color_space": color_space,
                           "scope": scope, "seed": seed}
    if scope == "collection":
        doc.update(palettes)
    else:
        doc["palettes"] = palettes
    doc.update({"job_hash": job_hash, "job": job, "versions": versions()})
    return doc


def load_palette(path: str, k: int, color_space: str,
                 storage_options: dict | None = None) -> np.ndarray:
    """The working-space centroids of a saved collection model, checked against the job.

    Returns
    -------
    ndarray of shape (k, 3), float64

    Raises
    ------
    ConfigError
        The file is missing or not a model.json of this schema, or its k or colour space
        differ from the job's.
    """
    where = f"kmeans.init: {path}"
    try:
        if storage.is_url(path):
            doc = json.loads(storage.read_bytes(path, storage_options))
        else:
            with open(path, encoding="utf-8") as handle:
                doc = json.load(handle)
    except OSError as exc:
        raise ConfigError(f"{where}: cannot read model ({exc.strerror or exc})") from exc
    except ValueError as exc:
        raise ConfigError(f"{where}: not a JSON model file ({exc})") from exc
    if not isinstance(doc, dict) or doc.get("schema_version") != SCHEMA_VERSION:
        raise ConfigError(f"{where}: not a model.json of schema version {SCHEMA_VERSION}; "
                          "use one written by kmeans-pipeline run")
    if doc.get("scope") != "collection" or "centroids_working" not in doc:
        raise ConfigError(f"{where}: holds one palette per image; reuse needs a model fitted "
                          "with kmeans.scope: collection")
    if doc.get("color_space") != color_space:
        raise ConfigError(f"{where}: model colour space is {doc.get('color_space')!r}, the job's "
                          f"is {color_space!r}; set preprocess.color_space to match")
    centroids = np.asarray(doc["centroids_working"], dtype=np.float64)
    if centroids.shape != (k, 3) or not np.isfinite(centroids).all():
        raise ConfigError(f"{where}: model has k={doc.get('k')}, the job has k={k}; set "
                          f"kmeans.k: {doc.get('k')} to reuse this palette")
    return centroids
