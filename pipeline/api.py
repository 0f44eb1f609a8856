"""The public Python API: everything the command line does, callable from Python.

``pipeline.Job`` is a validated job (from a YAML file or a dict); ``pipeline.run(job)`` is
``kmeans-pipeline run``.  ``open_collection`` / ``fit`` / ``Model`` are the same stages for a
notebook: lazy images, a fitted palette, dask arrays of labels and painted pixels, and the same
model.json the CLI writes and ``apply`` reads.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Mapping

import numpy as np

from pipeline.config import (JobConfig, Override, build_config, example_keys, overrides_of,
                             read_job_file)
from pipeline.errors import ConfigError, ImageReadError
from pipeline.sources.collection import Image, Progress

if TYPE_CHECKING:
    import dask.array as da

    from pipeline.cluster import Connection

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------
# Jobs


@dataclass(frozen=True)
class Job:
    """A validated job: what a job file says, with every key checked and every path resolved.

    Build one with `Job.from_yaml` or `Job.from_dict`; ``job.config`` is the frozen
    `pipeline.config.JobConfig` the stages read.
    """

    config: JobConfig
    _raw: dict = field(repr=False, compare=False)
    _overrides: tuple[Override, ...] = field(default=(), repr=False, compare=False)
    _scheduler: str | None = field(default=None, repr=False, compare=False)

    @classmethod
    def from_yaml(cls, path: str | os.PathLike,
                  overrides: Mapping[str, Any] | Iterable[str] | None = None,
                  scheduler: str | None = None) -> "Job":
        """Read and validate a job file.

        Parameters
        ----------
        path : str or path-like
            The YAML job file; relative paths in it are relative to its folder.
        overrides : mapping of "section.key" to value, or iterable of "section.key=value"
            What ``--set`` does: e.g. ``{"kmeans.k": 8, "output.dir": "out8"}``; a relative
            path is relative to the job file, as in it (``--set`` on a command line: to the
            working directory).
        scheduler : str, optional
            What ``--scheduler`` does: replaces ``dask.scheduler``.

        Raises
        ------
        ConfigError
            Every problem, one line each, naming the file and key.
        """
        path = os.fspath(path)
        items = _override_items(overrides)
        raw = read_job_file(path)
        return cls(build_config(raw, path, items, scheduler), raw, tuple(items), scheduler)

    @classmethod
    def from_dict(cls, job: Mapping[str, Any], base_dir: str | os.PathLike = ".",
                  overrides: Mapping[str, Any] | Iterable[str] | None = None,
                  source: str = "<job>", scheduler: str | None = None) -> "Job":
        """Validate a job given as a mapping of sections, as a job file would hold it.

        ``base_dir`` is what relative paths are relative to; ``source`` names the job in
        messages; ``scheduler`` is as for `from_yaml`.  Raises `ConfigError` as `from_yaml`
        does.
        """
        raw = json.loads(json.dumps(dict(job)))  # a plain copy; refuses what YAML could not hold
        items = _override_items(overrides)
        config = build_config(raw, source, items, scheduler, base_dir=os.fspath(base_dir))
        return cls(config, raw, tuple(items), scheduler)

    def with_overrides(self, overrides: Mapping[str, Any] | Iterable[str]) -> "Job":
        """This job with more ``section.key`` values set (they win over earlier ones)."""
        items = (*self._overrides, *_override_items(overrides))
        config = build_config(self._raw, self.config.source, items, self._scheduler,
                              base_dir=self.config.base_dir)
        return Job(config, self._raw, items, self._scheduler)

    @property
    def out_dir(self) -> str:
        return self.config.output.dir

    def to_dict(self) -> dict:
        """The resolved job as plain data (what model.json and report.json record)."""
        return self.config.to_dict()


def _override_items(overrides: Mapping[str, Any] | Iterable[str] | Iterable[Override] | None
                    ) -> list[Override]:
    """Overrides as `pipeline.config.Override` entries, named ``overrides: section.key`` in
    messages (the CLI passes its ``--set`` arguments already as entries named so)."""
    if overrides is None:
        return []
    if isinstance(overrides, Mapping):
        return overrides_of({key: _plain(key, value) for key, value in overrides.items()},
                            "overrides")
    items = list(overrides)
    if all(isinstance(item, Override) for item in items):
        return items
    return overrides_of([str(item) for item in items], "overrides")


def _plain(key: str, value: Any) -> Any:
    """``value`` as plain data, as a job file would hold it (tuples as lists, paths as str)."""
    try:
        return json.loads(json.dumps(value, default=os.fspath))
    except (TypeError, ValueError):
        raise ConfigError(f"overrides: {key}: {type(value).__name__} is not a job-file value; "
                          "give str, int, float, bool, None, or lists and dicts of them") from None


def _config(job: Job | JobConfig) -> JobConfig:
    if isinstance(job, Job):
        return job.config
    if isinstance(job, JobConfig):
        return job
    raise TypeError(f"expected a pipeline.Job, got {type(job).__name__}; build one with "
                    "pipeline.Job.from_yaml(path) or pipeline.Job.from_dict(mapping)")


@contextlib.contextmanager
def _connected(cfg: JobConfig) -> Iterator["Connection"]:
    """The job's scheduler; when the job names none, dask's own configuration, a notebook's
    active distributed client, else threads (`pipeline.cluster.choose_scheduler`)."""
    from pipeline import cluster

    with cluster.connect(cfg.dask) as connection:
        yield connection


# ---------------------------------------------------------------------------------------------
# Running jobs


def _display(progress: Progress | str | None) -> Progress | None:
    """``"auto"``: tqdm's widget in a notebook, a bar on a terminal, else nothing."""
    if isinstance(progress, str):
        if progress != "auto":
            raise ValueError(f"progress: expected 'auto', None or an object with phase() and "
                             f"advance(), got {progress!r}")
        from pipeline.progress import progress_for

        return progress_for()
    return progress


def run(job: Job | JobConfig, progress: Progress | str | None = "auto", *,
        on_connect: Callable[["Connection"], None] | None = None) -> dict:
    """Run a job and write every output: what ``kmeans-pipeline run`` does.

    Connects to the job's ``dask.scheduler``; when the job names none, to what dask's own
    configuration names (``DASK_SCHEDULER_ADDRESS``...), or a distributed client already
    active in this process, else the threads scheduler.

    Parameters
    ----------
    job : Job
    progress : "auto", None, or an object with ``phase(name, images, pixels)`` and
        ``advance(images, pixels)``, told about each phase and each finished image.
        ``"auto"``: a progress bar in a Jupyter notebook (tqdm's widget when ipywidgets is
        installed) or on a terminal, redrawn at most twice a second; nothing otherwise.
    on_connect : callable, optional
        Called with the `pipeline.cluster.Connection` once the scheduler is reached.

    Returns
    -------
    dict
        report.json's content.  ``pipeline.exit_status(report["totals"])`` is the CLI's exit
        status: 0 every image done, 3 some skipped.

    Raises
    ------
    PipelineError
        The subclass whose ``exit_code`` the CLI exits with: `ConfigError` (2), a failed
        job (1), `JobCancelled` (130)...
    """
    from pipeline import driver

    cfg = _config(job)
    with _connected(cfg) as connection:
        if on_connect is not None:
            on_connect(connection)
        return driver.run(cfg, _display(progress), scheduler=connection.describe())


def validate(job: Job | JobConfig) -> dict:
    """Check a job and list its inputs from their headers; computes nothing.

    Returns
    -------
    dict
        ``valid``, ``problems`` (one line each: unreadable inputs, a bad ``kmeans.init``
        model, a key the inputs cannot take, rasters of another band count), ``images``
        (path, name, width, height, format), ``ignored``, ``renamed``, ``pixels``: what
        ``kmeans-pipeline validate --json`` prints.

    Raises
    ------
    ConfigError
        An input path does not exist or matches nothing.
    """
    from pipeline.driver import check_job, resolve_init
    from pipeline.sources.listing import list_inputs

    cfg = _config(job)
    listing = list_inputs(cfg.input, cfg.preprocess, cfg.output.dir,
                          raster_path=cfg.output.format != "png")
    problems = [f"{path}: {reason}" for path, reason in listing.failed]
    try:  # what run refuses before any work, in the order it does
        resolved, init, _ = resolve_init(cfg)
        check_job(resolved, listing, init)
    except ConfigError as exc:
        problems.append(str(exc))
    return {"job": cfg.source, "valid": not problems, "problems": problems,
            "images": [{"path": i.path, "name": i.name, "width": i.width,
                        "height": i.height, "format": i.format} for i in listing.images],
            "ignored": listing.ignored,
            "renamed": [{"path": p, "name": n} for p, n in listing.renamed],
            "pixels": sum(i.n_pixels for i in listing.images), "output_dir": cfg.output.dir}


def apply(model: "Model | str | os.PathLike", job: Job, progress: Progress | str | None = "auto",
          **kwargs: Any) -> dict:
    """Segment a job's images with a saved collection model's palette, without fitting:
    ``run`` with ``kmeans.init: model``, ``kmeans.max_iter: 0``, ``kmeans.scope: collection``
    (what ``kmeans-pipeline apply`` does).  The model's k and palette win over the job's.

    Parameters
    ----------
    model : Model or str
        A model.json path (or URL), or a `Model` that was saved or loaded.
    job : Job
    progress, kwargs : as for `run`

    Raises
    ------
    ConfigError
        The model file is missing, or of another feature set than the job.
    """
    path = model.path if isinstance(model, Model) else os.fspath(model)
    if path is None:
        raise ConfigError("apply: the model was never saved; model.save('model.json') first, "
                          "so that the run's job and report can name it")
    remote = "://" in path
    if not remote and not os.path.isfile(path):
        raise ConfigError(f"{path}: model file not found; give the model.json written by an "
                          "earlier run")
    applied = job.with_overrides({"kmeans.init": path if remote else os.path.abspath(path),
                                  "kmeans.max_iter": 0, "kmeans.scope": "collection"})
    return run(applied, progress, **kwargs)


def submit(job: Job, wait: bool = False, progress: Progress | str | None = "auto",
           on_submit: Callable[[dict], None] | None = None) -> dict:
    """Run a job on a dask cluster by itself (``kmeans-pipeline submit``).

    Parameters
    ----------
    job : Job
        Its ``dask.scheduler`` (or ``scheduler_file``) names a running scheduler.
    wait : bool
        Follow the job until it ends (``submit --wait``) instead of returning at once.
    progress : "auto", None or a progress object, as for `run`; with ``wait``: told about the
        job's phases as report.json shows them.
    on_submit : callable, optional
        Called with the submission once the driver task is on the scheduler.

    Returns
    -------
    dict
        The submission (``job_id``, ``key``, ``scheduler``, ``submitted``...); with ``wait``
        also ``result``: ``status``, ``exit_code``, ``error``, ``totals``, ``problems``.

    Raises
    ------
    ConfigError
        No remote scheduler named, or a job submitted to the same output folder still runs.
    ClusterError
        The scheduler cannot be reached, or was lost while following.
    """
    from pipeline import batch, cluster

    cfg = _config(job)
    batch.check_remote(cfg.dask)
    with cluster.connect(cfg.dask) as connection:
        entry = batch.submit(cfg, connection.scheduler)
        future = entry.pop("future")
        if on_submit is not None:
            on_submit(dict(entry))
        if wait:
            entry["result"] = batch.follow({**entry, "future": future}, cfg.output.dir,
                                           cfg.output.storage_options, _display(progress))
    return entry


def status(out_dir: str | os.PathLike, storage_options: dict | None = None) -> dict:
    """How the job in an output folder is doing (``kmeans-pipeline status``): ``state``
    (submitted | running | cancelling | done | failed | cancelled), image counts, phase.
    ``storage_options``: those of an ``output.dir`` URL (the saved files mask secrets)."""
    from pipeline import batch

    return batch.status(os.fspath(out_dir), storage_options)


def cancel(out_dir: str | os.PathLike, timeout: float = 10.0,
           storage_options: dict | None = None) -> dict:
    """Stop the job submitted to an output folder (``kmeans-pipeline cancel``); waits up to
    ``timeout`` s.  Returns its `status` afterwards, with ``requested``."""
    from pipeline import batch

    return batch.cancel(os.fspath(out_dir), timeout, storage_options)


# ---------------------------------------------------------------------------------------------
# Collections, fitting and models


class Collection(list):
    """A list of lazy `Image` objects (`RasterImage` for rasters), with what listing left
    out (``skipped``: (path, reason) of files whose header cannot be read; ``ignored``: files
    of other types in the folders)."""

    skipped: list[tuple[str, str]]
    ignored: list[str]


def open_collection(paths: str | os.PathLike | Iterable[str | os.PathLike],
                    on_error: str = "skip", **keys: Any) -> Collection:
    """List images and read their headers; no pixels are decoded.

    Inputs are routed as a run routes them (README, "Inputs"): photos are decoded whole by
    Pillow as 8-bit RGB; rasters (TIFF, zarr, GDAL formats, 16-bit PNG) keep their bands and
    dtype and are read window by window.

    Parameters
    ----------
    paths : str or list of str
        Files, folders (searched recursively), globs or URLs, as ``input.paths``; relative to
        the current folder.
    on_error : {"skip", "fail"}
        What a file whose header cannot be read does: left out (listed in ``.skipped``), or
        raise `ImageReadError`.
    **keys
        Other ``input`` keys (``exclude``, ``max_pixels``, ``storage_options``, and for rasters
        ``bands``, ``mask``, ``nodata``, ``axes``, ``planes``, ``level``), ``preprocess.scale``
        (photos) and ``dask.chunk_pixels`` (rasters: the pixel budget of one chunk).

    Returns
    -------
    Collection
        `Image` objects in listing order: ``.name``, ``.shape`` (height, width, bands),
        ``.bands``, ``.dtype``, ``.pixels`` (a dask array of shape (height, width, bands):
        uint8 with 3 bands for a photo, one chunk; the file's dtype for a raster, chunked by
        its windows of whole tiles, strips or zarr chunks) and ``.mask`` (a dask array of shape
        (height, width), bool, True where a pixel is masked: nodata, NaN, alpha 0).
    """
    from pipeline.sources.listing import list_inputs, unreadable_message

    entries = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    section = {"paths": [os.fspath(p) for p in entries], "on_error": on_error}
    pre: dict = {}
    dask_keys: dict = {}
    for key, value in keys.items():
        target = pre if key == "scale" else dask_keys if key == "chunk_pixels" else section
        target[key] = value
    cfg = build_config({"input": section, "preprocess": pre, "dask": dask_keys},
                       "open_collection", base_dir=os.getcwd())
    listing = list_inputs(cfg.input, cfg.preprocess, raster_path=True)
    if listing.failed and on_error == "fail":
        raise ImageReadError(unreadable_message(listing.failed, listing.images))
    images = Collection(
        RasterImage(info, dataclasses.replace(listing.rasters[info.name],
                                              chunk_pixels=cfg.dask.chunk_pixels))
        if info.name in listing.rasters else Image(info) for info in listing.images)
    images.skipped, images.ignored = listing.failed, listing.ignored
    return images


class RasterImage(Image):
    """One raster of a collection, lazily: N bands in the file's dtype, read in windows.

    Attributes
    ----------
    info : ImageInfo
        What the header said (path, output name, size, format, ``mode`` "<bands>x<dtype>").
    raster : pipeline.raster_job.RasterImage
        How it is read (``input.bands``, ``mask``, ``nodata``) and its windows.
    """

    def __init__(self, info: Any, raster: Any) -> None:
        super().__init__(info)
        self.raster = raster

    @property
    def bands(self) -> int:
        """The number of bands used (``input.bands``, else every band but alpha or mask)."""
        return len(self.raster.selected)

    @property
    def band_names(self) -> tuple[str, ...]:
        return self.raster.band_names

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self.raster.header.dtype)

    @property
    def shape(self) -> tuple[int, int, int]:
        """(height, width, bands), after the file's orientation."""
        return (self.raster.header.height, self.raster.header.width, self.bands)

    @property
    def pixels(self) -> "da.Array":
        """dask array of shape (height, width, bands), the file's dtype: one read task per
        window (the run's windows: whole tiles, strips or zarr chunks up to ``chunk_pixels``);
        masked pixels hold what the file stores."""
        return self._arrays()[0]

    @property
    def mask(self) -> "da.Array":
        """dask array of shape (height, width), bool, True where a pixel is masked (nodata,
        NaN or inf, alpha or mask band 0); it shares the read tasks of `pixels`."""
        return self._arrays()[1]

    def _arrays(self) -> tuple["da.Array", "da.Array"]:
        import operator

        import dask.array as da
        from dask.base import tokenize

        from pipeline import raster_job

        reader = self.raster.reader()
        rows, cols = self.raster.source.chunk_grid(self.raster.header, self.raster.chunk_pixels,
                                                   self.bands + 1)
        token = tokenize(reader, rows, cols)
        read, pixels, masked = (f"raster-{part}-{token}" for part in ("window", "pixels", "mask"))
        reads: dict = {}
        for i, (row, h) in enumerate(zip(np.cumsum((0,) + rows[:-1]), rows)):
            for j, (col, w) in enumerate(zip(np.cumsum((0,) + cols[:-1]), cols)):
                reads[(read, i, j)] = (raster_job.read_masked, *reader, int(row), int(col), h, w)
        pixel_graph = {(pixels, i, j, 0): (operator.getitem, (read, i, j), 0)
                       for _, i, j in reads}
        mask_graph = {(masked, i, j): (operator.getitem, (read, i, j), 1) for _, i, j in reads}
        return (da.Array({**reads, **pixel_graph}, pixels, (rows, cols, (self.bands,)),
                         dtype=self.dtype),
                da.Array({**reads, **mask_graph}, masked, (rows, cols), dtype=bool))

    def __repr__(self) -> str:
        return (f"RasterImage({self.name!r}, {self.info.width}x{self.info.height}, "
                f"{self.bands} bands, {self.dtype})")


def _photos_only(images: Iterable[Image], what: str) -> None:
    """`fit` and `Model` make RGB palettes of photos; a raster is refused in one line."""
    for image in images:
        if isinstance(image, RasterImage):
            raise ConfigError(f"{what}: {image.path} is a raster ({image.bands} bands, "
                              f"{image.dtype}); {what} makes RGB palettes of photos: cluster "
                              "rasters with a job (pipeline.run)")


def fit(images: Iterable[Image], k: int | str = 8, seed: int = 0,
        progress: Progress | str | None = "auto", **keys: Any) -> "Model":
    """Fit one palette to a collection, as ``kmeans.scope: collection`` does.

    Parameters
    ----------
    images : iterable of Image
        From `open_collection`.
    k : int or "auto"
    seed : int
    progress : "auto", None or a progress object, as for `run` (the sampling pass)
    **keys
        The job file's other ``kmeans`` keys (``algorithm``, ``n_init``, ``max_iter``, ``tol``,
        ``sample_pixels``, ``max_error``...) and ``preprocess`` keys (``color_space``,
        ``spatial_weight``); ``scale`` belongs to `open_collection`.

    Returns
    -------
    Model
        The same centroids a run of the same job over the same images saves.

    Raises
    ------
    ConfigError
        An unknown or invalid key, or a `RasterImage` among the images.
    ImageReadError
        No image could be decoded.
    """
    from pipeline import driver, fitting
    from pipeline.sources import collection

    images = list(images)
    _photos_only(images, "fit")
    cfg = _fit_config(k, seed, keys)
    km, pre = cfg.kmeans, cfg.preprocess
    infos = [image.info for image in images]
    features = (pre.color_space, pre.spatial_weight) if pre.spatial_weight > 0 else None
    sample = collection.draw_sample(infos, km.sample_pixels, km.seed, features,
                                    _display(progress) or _Quiet())
    warnings = [f"{info.path}: {reason}; left out" for info, reason in sample.failed]
    if not sample.good:
        raise ImageReadError("no image could be decoded; nothing to fit")
    auto = fitting.choose_k(sample.rows, km, pre.color_space) if km.auto_k else None
    if auto is not None:
        km = dataclasses.replace(km, k=auto.k)
    lloyd = km.algorithm == "lloyd"
    pixels = collection.pixel_array(sample.good, cfg.dask.chunk_pixels) if lloyd else None
    masked = collection.mask_array(sample.good, cfg.dask.chunk_pixels) if lloyd else None
    outcome = fitting.fit_palette(sample.rows, pixels, km, pre.color_space, pre.spatial_weight,
                                  None, lloyd and driver.persist_histograms(cfg, sample.good,
                                                                            sample.rows),
                                  auto, masked)
    outcome.warnings[:0] = warnings
    for message in outcome.warnings:
        log.warning(message)
    counts, inertia = fitting.sample_counts(sample.rows, outcome.centroids, pre.color_space)
    from pipeline.sinks import model as documents

    return Model(documents.collection_document(cfg, outcome, counts, inertia))


def _fit_config(k: int | str, seed: int, keys: dict) -> JobConfig:
    known = example_keys()
    sections: dict[str, dict] = {"kmeans": {"k": k, "seed": seed}, "preprocess": {}}
    for key, value in keys.items():
        if key == "scale":
            raise ConfigError("fit: scale: give preprocess.scale to open_collection(..., "
                              "scale=...), which reads the images at that size")
        if key == "scope":
            raise ConfigError("fit: scope: fit makes one palette for the images given; fit "
                              "each image alone for one palette per image")
        section = "preprocess" if key in known["preprocess"] else "kmeans"
        sections[section][key] = value
    return build_config({"input": {"paths": ["."]}, **sections}, "fit", base_dir=os.getcwd())


class _Quiet:
    def phase(self, name: str, images: int, pixels: int) -> None:
        pass

    def advance(self, images: int, pixels: int) -> None:
        pass


class Model:
    """A fitted collection palette: what model.json holds.

    Attributes
    ----------
    doc : dict
        model.json's content.
    centroids : ndarray of shape (k, n_features), float64
        In the working space (``color_space``; then scaled positions with ``spatial_weight``).
    palette : ndarray of shape (k, 3), uint8
        The colour each cluster is painted with.
    path : str or None
        Where it was saved or loaded from.
    """

    def __init__(self, doc: dict, path: str | None = None) -> None:
        from pipeline.sinks import model as documents

        self.doc, self.path = doc, path
        self.centroids = documents.model_centroids(doc, path or "model")
        self.palette = np.asarray(doc["palette"], np.uint8)

    @property
    def k(self) -> int:
        return len(self.centroids)

    @property
    def color_space(self) -> str:
        return self.doc["color_space"]

    @property
    def spatial_weight(self) -> float:
        return float(self.doc.get("spatial_weight", 0.0))

    @classmethod
    def load(cls, path: str | os.PathLike, storage_options: dict | None = None) -> "Model":
        """Read a model.json written by a run (``kmeans.scope: collection``) or `save`.

        Raises
        ------
        ConfigError
            Missing, not a model.json of this schema, or one palette per image.
        """
        from pipeline.sinks import model as documents

        path = os.fspath(path)
        return cls(documents.read_model(path, storage_options), path)

    def save(self, path: str | os.PathLike, storage_options: dict | None = None) -> None:
        """Write model.json (atomically): the file `load`, ``apply`` and ``kmeans.init`` read."""
        from pipeline.sinks import images as files

        path = os.fspath(path)
        path = path if "://" in path else os.path.abspath(path)
        files.write_json(path, self.doc, True, storage_options)
        self.path = path

    def predict(self, image: "Image | np.ndarray | da.Array") -> "da.Array":
        """Cluster index of every pixel: dask array of shape (height, width), uint8 when
        k <= 255, else uint16.

        ``image`` is an `Image`, or pixels of shape (height, width, 3), uint8 (numpy or dask).
        An `Image`'s masked pixels (transparent; ``input.mask``) hold 255 (uint8) or 65535.
        """
        import dask
        import dask.array as da

        from pipeline.sinks.tiled import label_dtype

        dtype = label_dtype(self.k)
        if isinstance(image, Image):
            _photos_only([image], "predict")
            token = dask.base.tokenize(image.info, self.centroids)
            block = dask.delayed(_predict_image, pure=True)(
                image.info, self.centroids, self.color_space, self.spatial_weight,
                dask_key_name=f"predict-{token}")
            return da.from_delayed(block, shape=image.shape[:2], dtype=dtype,
                                   name=f"labels-{token}")
        pixels = da.asarray(image)
        if pixels.ndim != 3 or pixels.shape[2] != 3 or pixels.dtype != np.uint8:
            raise ValueError(f"predict: expected pixels of shape (height, width, 3), uint8, "
                             f"got {pixels.shape} {pixels.dtype}")
        # A label depends on the colour alone, unless positions are features: then the
        # image is one block, so positions are those of the whole image.
        pixels = pixels.rechunk({2: 3} if self.spatial_weight == 0 else -1)
        return pixels.map_blocks(_predict_block, self.centroids, self.color_space,
                                 self.spatial_weight, drop_axis=2, dtype=dtype)

    def paint(self, labels: "da.Array | np.ndarray") -> "da.Array":
        """Every label replaced by its cluster's colour: dask array (height, width, 3), uint8
        (a masked pixel's label, black)."""
        import dask.array as da

        labels = da.asarray(labels)
        return labels.map_blocks(_paint, self.palette, dtype=np.uint8, new_axis=2,
                                 chunks=(*labels.chunks, (3,)))

    def __repr__(self) -> str:
        return f"Model(k={self.k}, color_space={self.color_space!r}, path={self.path!r})"


def _predict_image(info: Any, centroids: np.ndarray, color_space: str,
                   spatial_weight: float) -> np.ndarray:
    from pipeline import tasks
    from pipeline.sources import photos

    pixels, masked = photos.decode_masked(info)
    return tasks.label(pixels, centroids, color_space, spatial_weight, True, masked=masked)[0]


def _predict_block(pixels: np.ndarray, centroids: np.ndarray, color_space: str,
                   spatial_weight: float) -> np.ndarray:
    from pipeline import tasks

    return tasks.label(np.ascontiguousarray(pixels), centroids, color_space, spatial_weight,
                       True)[0]


def _paint(labels: np.ndarray, palette: np.ndarray) -> np.ndarray:
    from pipeline.sinks import segment

    return segment.segmented(labels, palette)
