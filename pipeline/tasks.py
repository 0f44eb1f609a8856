"""The bodies of the per-image dask tasks: decode, label (and, per image, fit), write.

Each task carries an image's path and returns plain data (outputs with their sizes, counts,
inertia, masked pixels; or the reason the image failed); pixels never leave the worker.  Masked
pixels (issue 12) are in no count, inertia or sample, and an image whose every pixel is masked
is skipped.  The driver builds the
tasks and records what they return.
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np

from pipeline import fitting, storage
from pipeline.engine import kmeans
from pipeline.config import KMeansConfig, OutputConfig
from pipeline.errors import ImageReadError, OutputError, StorageError
from pipeline.sinks import images as files
from pipeline.sinks import model, report, segment
from pipeline.sinks.dither import dither
from pipeline.sources import ImageInfo, collection, photos


def segment_task(info: ImageInfo, centroids: np.ndarray, color_space: str,
                 palette: np.ndarray, out: OutputConfig, out_dir: str,
                 spatial_weight: float = 0.0, whole_table: bool = False,
                 kept: collection.Decoded | None = None) -> dict:
    """Label one image with the collection's palette and write its outputs."""
    started = time.perf_counter()
    try:
        pixels, masked = _usable(collection.take_decoded(info, kept), info)
    except ImageReadError as exc:
        return {"error": collection.reason(exc, info)}
    labels, counts, inertia = label(pixels, centroids, color_space, spatial_weight, True,
                                    whole_table, masked)
    try:
        written, thumb_seconds = write_image(out_dir, info, pixels, labels, palette, out,
                                             masked)
    except OutputError as exc:  # the run stops: see the driver's _compute_images
        return {"error": str(exc), "output_error": True}
    return {"outputs": written, "counts": counts.tolist(), "inertia": inertia,
            "masked": _count(masked), "seconds": round(time.perf_counter() - started, 4),
            "thumb_seconds": thumb_seconds}


def _usable(decoded: tuple[np.ndarray, np.ndarray | None],
            info: ImageInfo) -> tuple[np.ndarray, np.ndarray | None]:
    """``decoded`` (`photos.decode_masked`), refused when every pixel is masked."""
    masked = decoded[1]
    if masked is not None and masked.all():
        raise ImageReadError(f"{info.path}: {collection.ALL_MASKED}")
    return decoded


def _count(masked: np.ndarray | None) -> int:
    return 0 if masked is None else int(np.count_nonzero(masked))


def fit_segment_task(info: ImageInfo, km: KMeansConfig, color_space: str,
                     init: np.ndarray | None, out: OutputConfig, out_dir: str,
                     spatial_weight: float = 0.0) -> dict:
    """Image scope: fit one image's own palette, label it and write its outputs."""
    started = time.perf_counter()
    try:
        pixels, masked = _usable(photos.decode_masked(info), info)
    except ImageReadError as exc:
        return {"error": collection.reason(exc, info)}
    outcome = fit_image(pixels, info, km, color_space, init, spatial_weight, masked)
    labels, counts, inertia = label(pixels, outcome.centroids, color_space, spatial_weight,
                                    False, masked=masked)
    try:
        written, thumb_seconds = write_image(out_dir, info, pixels, labels, outcome.palette,
                                             out, masked)
    except OutputError as exc:  # the run stops: see the driver's _compute_images
        return {"error": str(exc), "output_error": True}
    entry = model.palette_entry(outcome.centroids, _rgb(outcome, color_space), counts, inertia,
                                outcome.n_iter, outcome.converged)
    entry["warnings"] = outcome.warnings
    if outcome.auto_k is not None:
        entry["auto_k"] = outcome.auto_k
    return {"outputs": written, "counts": counts.tolist(), "inertia": inertia,
            "masked": _count(masked), "palette": entry,
            "seconds": round(time.perf_counter() - started, 4), "thumb_seconds": thumb_seconds}


def _rgb(outcome: fitting.FitOutcome, color_space: str) -> np.ndarray:
    return kmeans.centroids_to_rgb(outcome.centroids[:, :3], color_space)


def fit_image(pixels: np.ndarray, info: ImageInfo, km: KMeansConfig, color_space: str,
              init: np.ndarray | None, spatial_weight: float,
              masked: np.ndarray | None = None) -> fitting.FitOutcome:
    """Image scope: fit one image's palette on its sample (k chosen first for k: auto); its
    unmasked pixels only."""
    rows = pixels.reshape(-1, 3)
    where = None  # every pixel
    if km.algorithm == "minibatch" and len(rows) > km.sample_pixels:
        where = collection.sample_positions(info, km.sample_pixels, km.seed, masked)
    elif masked is not None:
        where = np.flatnonzero(~masked.reshape(-1))
    if where is not None and len(where) < len(rows):
        rows = rows[where]
    sample = rows if spatial_weight == 0 else kmeans.spatial_features(
        rows, np.arange(len(rows)) if where is None else where, info.width, info.height,
        color_space, spatial_weight)
    auto = fitting.choose_k(sample, km, color_space) if km.auto_k else None
    if auto is not None:
        km = dataclasses.replace(km, k=auto.k)
    if spatial_weight > 0:
        result = fitting.fit_features(sample, km, init)
    else:
        result = fitting.fit_sample(rows, km, color_space, init,
                                    patience=fitting.IMAGE_JUMP_PATIENCE)
    return fitting.FitOutcome.of(result, color_space, auto, km)


def label(pixels: np.ndarray, centroids: np.ndarray, color_space: str, spatial_weight: float,
          cache: bool, whole_table: bool = False,
          masked: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, float]:
    """Labels (height, width), unmasked pixels per cluster and their inertia of one image
    (masked pixels labelled `pipeline.sinks.tiled.masked_label`)."""
    if spatial_weight > 0:
        return segment.label_image_spatial(pixels, centroids, color_space, spatial_weight,
                                           masked)
    return segment.label_image(pixels, centroids, color_space, cache=cache,
                               whole_table=whole_table, masked=masked)


def write_image(out_dir: str, info: ImageInfo, pixels: np.ndarray, labels: np.ndarray,
                palette: np.ndarray, out: OutputConfig,
                masked: np.ndarray | None = None) -> tuple[dict, float]:
    """Every file of one image: its outputs, then the report's thumbnails."""
    written = _write_outputs(out_dir, info, pixels, labels, palette, out, masked)
    written["thumbs"], thumb_seconds = _write_thumbs(out_dir, info, pixels, labels, palette,
                                                     out)
    return written, thumb_seconds


def _folder_removed(out_dir: str) -> bool:
    return storage.Location(out_dir).folder_gone()


def _write_thumbs(out_dir: str, info: ImageInfo, pixels: np.ndarray, labels: np.ndarray,
                  palette: np.ndarray, out: OutputConfig) -> tuple[list, float]:
    """The report's thumbnails, made from the pixels this task already holds."""
    started = time.perf_counter()
    if _folder_removed(out_dir):  # would be created again
        raise OutputError(f"the output folder {out_dir!r} was removed during the run (while "
                          f"writing the outputs of {info.path}); stopped; rerun to write them "
                          "again")
    try:
        thumbs = report.write_thumbnails(out_dir, info.name, pixels, labels, palette,
                                         out.png_compression, out.storage_options)
    except StorageError as exc:
        raise OutputError(str(exc)) from exc  # it names the object and says what to do
    except OSError as exc:
        raise OutputError(f"cannot write the thumbnails of {info.path} to {out_dir!r} "
                          f"({exc.strerror or exc}); free space or fix the folder, then "
                          "rerun with output.if_exists: resume") from exc
    return thumbs, round(time.perf_counter() - started, 4)


def _write_outputs(out_dir: str, info: ImageInfo, pixels: np.ndarray, labels: np.ndarray,
                   palette: np.ndarray, out: OutputConfig,
                   masked: np.ndarray | None = None) -> dict:
    # output.dither: the segmented image only, error-diffused over the whole image; masked
    # pixels are painted palette colour 0 first, so they diffuse no error to their neighbours
    dithered = None
    if out.dither != "none" and out.segmented:
        source = pixels if masked is None else np.where(masked[..., None], palette[0], pixels)
        dithered = dither(source, palette)
    try:
        return files.write_image_outputs(out_dir, info.name, labels, palette, out, dithered,
                                         masked)
    except StorageError as exc:
        raise OutputError(str(exc)) from exc  # it names the object and says what to do
    except OSError as exc:
        if _folder_removed(out_dir):
            raise OutputError(f"the output folder {out_dir!r} was removed during the run "
                              f"(while writing the outputs of {info.path}); stopped; rerun "
                              "to write them again") from exc
        raise OutputError(f"cannot write the outputs of {info.path} to {out_dir!r} "
                          f"({exc.strerror or exc}); free space or fix the folder, then "
                          "rerun with output.if_exists: resume") from exc
