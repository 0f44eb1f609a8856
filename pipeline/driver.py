"""run(job): list -> preflight -> sample -> fit -> segment and write -> report.

The only module that imports every stage.  Each stage takes values and returns values (a
`Listing`, a `Sample`, a `FitOutcome`); the run's `RunRecord` says what happened to every image,
and only this module saves it (report.json).  It never picks a scheduler: tasks go to whatever
scheduler is active (see `pipeline.cluster.compute_each`).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
import time
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

import dask
import numpy as np

from pipeline import cluster, fitting, storage
from pipeline.engine import kmeans
from pipeline.config import JobConfig
from pipeline.errors import (ConfigError, ImageReadError, JobCancelled, OutputError,
                             PipelineError, StorageError)
from pipeline.record import RunRecord
from pipeline.schema import MAX_PALETTE
from pipeline.sinks import images as files
from pipeline.sinks import model, report, tiled
from pipeline.sinks.segment import whole_table_pays
from pipeline.sources import ImageInfo, collection
from pipeline.sources.collection import Progress
from pipeline.sources.listing import (Listing, list_inputs, photos_as_rasters,
                                      unreadable_message)

if TYPE_CHECKING:  # imported where the raster path runs: its imports cost photo runs 0.05-0.1 s
    from pipeline import raster_job
# `pipeline.tasks` (the photo tasks: Pillow, simplejpeg) is imported where photos are segmented,
# as the raster path is where rasters are: 10-20 ms off a raster run's start-up (issue 14).

log = logging.getLogger(__name__)
REPORT = "report.json"
MODEL = "model.json"
_REPORT_EVERY = 2.0  # seconds between rewrites of report.json while images finish
_CHECK_INPUTS = 8  # inputs, spread over the listing, that every worker must be able to read


@dataclass
class _Written:
    """What this run wrote that the page shows: model.json's content, once written."""

    model: dict | None = None


@dataclass
class _Held:
    """What the sampling pass keeps for the later passes: decoded pixels, in this process or
    in worker memory (`collection.KeptPixels`), released when the run ends."""

    kept: collection.KeptPixels | None = None

    def clear(self) -> None:
        if self.kept is not None:
            self.kept.clear()


class _Silent:
    def phase(self, name: str, images: int, pixels: int) -> None:
        pass

    def advance(self, images: int, pixels: int) -> None:
        pass


def run(cfg: JobConfig, progress: Progress | None = None, job_id: str | None = None,
        cancelled: Callable[[], bool] | None = None, scheduler: dict | None = None) -> dict:
    """Run a job on the active scheduler and write every output.

    Parameters
    ----------
    cfg : JobConfig
    progress : Progress, optional
        Told about each phase and each finished image; it observes only.
    job_id : str, optional
        The id of a submitted job (see `pipeline.batch`), recorded in report.json.
    cancelled : callable, optional
        Asked between images; when it returns True the run stops with `JobCancelled`.
    scheduler : dict, optional
        Which scheduler runs the job and why, with its dashboard
        (`pipeline.cluster.Connection.describe`), recorded in report.json.

    Returns
    -------
    dict
        The final report (also written to ``report.json``).

    Raises
    ------
    ConfigError
        Bad inputs or output folder; nothing was written but possibly report.json.
    PipelineError
        The run failed; report.json says how far it got.
    """
    clock = time.perf_counter()
    cfg, init, notes = resolve_init(cfg)  # a wrong model is refused before anything
    listing = list_inputs(cfg.input, cfg.preprocess, cfg.output.dir,
                          raster_path=cfg.output.format != "png")
    previous = _prepare_output(cfg)
    record = RunRecord.of_listing(cfg, listing, job_id, notes)
    record.scheduler = scheduler
    phases = _Phases(record, progress or _Silent(), cancelled)
    record.timings["list"] = time.perf_counter() - clock
    if listing.rasters:
        _warm_up_kernels(cfg, listing)
    for path, reason in listing.failed:
        log.info("%s: %s", path, reason)
    held = _Held()  # the sampling pass's decoded pixels, for the later passes
    written = _Written()
    try:
        _save(record)
        _preflight(cfg, listing)
        _resume(record, previous, listing.images)
        if not listing.images:
            raise ImageReadError(_nothing_usable(record))
        check_job(cfg, listing, init)
        if listing.rasters:  # issue 12: N-band rasters, read and written in windows
            _run_rasters(record, listing, previous, phases, written, init)
        else:
            if cfg.kmeans.scope == "collection":
                outcome, good = _fit(record, listing.images, previous, phases, init, held)
                _segment(record, good, outcome, phases, held, written)
            else:  # one palette per image: each task fits, segments and writes its image
                palettes = _run_per_image(record, listing.images, phases, init)
                _save_image_models(record, palettes, {}, written)
        if not any(entry["status"] == "ok" for entry in record.images):
            raise ImageReadError(_nothing_usable(record))
        files.remove_temp_files(cfg.output.dir)  # left by workers killed while writing
        record.status = "done"
    except (PipelineError, KeyboardInterrupt, Exception) as exc:
        explained = cluster.explain(exc)
        interrupted = isinstance(exc, KeyboardInterrupt)  # Ctrl-C: exit 130, as a cancel
        record.status = "cancelled" if interrupted or isinstance(exc, JobCancelled) else "failed"
        record.error = ("interrupted (Ctrl-C); rerun with output.if_exists: resume to finish"
                        if interrupted else str(explained or exc) or type(exc).__name__)
        record.stopped()
        if isinstance(exc, OutputError):
            _mark_lost(record)
        failure = explained or exc
        if explained is not None:
            raise explained from exc
        raise
    else:
        failure = None
    finally:
        held.clear()  # kept by the sampling pass, even if the run failed
        record.timings["total"] = time.perf_counter() - clock
        # First: on a full disk report.json matters more than the page.  When even it cannot
        # be written (an unreachable store: each try takes its retries), the page would not be.
        if _save_quietly(record):
            _write_html(record, written.model)
            _save_quietly(record)
        if isinstance(failure, PipelineError):  # the CLI lists the skipped images (issue 11)
            failure.report = record.to_dict()
    return record.to_dict()


def _warm_up_kernels(cfg: JobConfig, listing: Listing) -> None:
    """Start numba's import and first calls (~1-2 s, `engine.compiled.warm_up`) on a thread
    as soon as the listing shows rasters: they overlap the checks and the sample pass's reads
    instead of holding up the fit and the first windows.  Nothing to start when the kernels
    are built ahead of time."""
    if kmeans.kernels_built():
        return
    k = cfg.kmeans.max_k if cfg.kmeans.auto_k else cfg.kmeans.k
    dtypes = {str(image.header.dtype) for image in listing.rasters.values()}
    if cfg.kmeans.scope == "collection" and len(listing.images) > len(listing.rasters):
        dtypes.add("uint8")  # photos join as 3-band uint8 rasters (`photos_as_rasters`)
    threading.Thread(target=kmeans.warm_up, args=(sorted(dtypes), (tiled.label_dtype(k),)),
                     name="kmeans-warm-up", daemon=True).start()


def _nothing_usable(record: RunRecord) -> str:
    """Every input was skipped: exit 1, and the CLI prints each one's reason first."""
    return (f"none of the {len(record.images)} input image(s) could be used: every one was "
            "skipped (reasons above and in report.json); nothing to fit")


def resolve_init(cfg: JobConfig) -> tuple[JobConfig, np.ndarray | None, list[str]]:
    """A model named by kmeans.init fixes k: its palette wins over the job's kmeans.k."""
    km = cfg.kmeans
    if not km.init_is_model:
        return cfg, None, []
    doc = model.read_model(km.init, cfg.input.storage_options, f"kmeans.init: {km.init}")
    if doc.get("kind") == "raster":  # checked against the rasters once they are listed
        return cfg, None, []
    init = model.load_palette(km.init, cfg.preprocess.color_space, cfg.preprocess.spatial_weight,
                              cfg.input.storage_options)
    notes = []
    if cfg.output.dither != "none" and len(init) > MAX_PALETTE:
        raise ConfigError(f"output.dither: {cfg.output.dither} paints a palette of at most "
                          f"{MAX_PALETTE} colours, but the model {km.init} has k={len(init)}; "
                          "set output.dither: none")
    if "kmeans.k" in cfg.given and km.k != len(init) and km.max_iter > 0:
        # Fitting from a palette: a k the user wrote that the model cannot start is a mistake.
        raise ConfigError(f"kmeans.init: {km.init}: model has k={len(init)}, the job has "
                          f"kmeans.k: {km.k}; set kmeans.k: {len(init)}, or kmeans.max_iter: 0 "
                          "to apply the model's palette as it is")
    if "kmeans.k" in cfg.given and km.k != len(init):
        notes.append(f"kmeans.k: the job has {km.k}, the model {km.init} has k={len(init)}; "
                     "using the model's palette")
        log.warning(notes[-1])
    if km.k == len(init):
        return cfg, init, notes
    return dataclasses.replace(cfg, kmeans=dataclasses.replace(km, k=len(init))), init, notes


# ---------------------------------------------------------------------------------------------
# Saving the record (here only)


def _save(record: RunRecord, final: bool = False) -> None:
    # Mid-run, a missing output folder is an error, not something to re-create; the final
    # report is written even then, so that it says what happened.
    _write_json(storage.join(record.out_dir, REPORT), record.to_dict(), make_folder=final,
                storage_options=record.cfg.output.storage_options)


def _write_json(path: str, doc: dict, make_folder: bool = False,
                storage_options: dict | None = None) -> None:
    try:
        files.write_json(path, doc, make_folder, storage_options)
    except StorageError as exc:
        raise OutputError(str(exc)) from exc  # it names the object and says what to do
    except FileNotFoundError as exc:
        raise OutputError(f"the output folder {os.path.dirname(path)!r} was removed during the "
                          "run; stopped; rerun to write the outputs again") from exc
    except OSError as exc:
        raise OutputError(f"cannot write {path} ({exc.strerror or exc}); free space or fix the "
                          "output folder, then rerun with output.if_exists: resume") from exc


def _save_quietly(record: RunRecord) -> bool:
    try:
        _save(record, final=True)
    except OutputError as exc:  # the disk is still full: the CLI reports the first error
        log.error("%s", exc)
        return False
    return True


class _Phases:
    """The driver's side of progress: keeps the record's ``progress`` current, saves the record
    (every 2 s and every 5 % of a phase's images: a killed run redoes little on resume), asks
    whether to stop, and tells the caller's progress hook, which only observes."""

    def __init__(self, record: RunRecord, hook: Progress,
                 cancelled: Callable[[], bool] | None):
        self.record, self.hook, self.cancelled = record, hook, cancelled
        self.last_saved = 0.0

    def phase(self, name: str, images: int, pixels: int) -> None:
        self.record.progress = {"phase": name, "done": 0, "total": images, "pixels_done": 0,
                                "pixels": pixels}
        self.save()
        self.hook.phase(name, images, pixels)
        self._check()

    def advance(self, images: int, pixels: int) -> None:
        now = self.record.progress
        now.update(done=now["done"] + images, pixels_done=now["pixels_done"] + pixels)
        self.save(force=now["done"] % max(1, now["total"] // 20) == 0)
        self.hook.advance(images, pixels)
        self._check()

    def save(self, force: bool = True) -> None:
        now = time.monotonic()
        if force or now - self.last_saved >= _REPORT_EVERY:
            _save(self.record)
            self.last_saved = now

    def _check(self) -> None:
        if self.cancelled is not None and self.cancelled():
            raise JobCancelled(f"job {self.record.job_id} was cancelled; its completed images "
                               "stay valid: run or submit it again with output.if_exists: "
                               "resume")


def _write_html(record: RunRecord, model_doc: dict | None) -> None:
    """report.html next to report.json, drawn from the run's values; a failure here never
    hides the run's own outcome."""
    clock = time.perf_counter()
    try:
        report.write_html(record.out_dir, record.to_dict(), model_doc,
                          record.cfg.output.storage_options)
    except Exception as exc:  # noqa: BLE001 - the page is a view; the run's result stands
        log.error("could not write %s: %s", report.HTML, exc)
    record.timings["report"] = time.perf_counter() - clock


def _mark_lost(record: RunRecord) -> None:
    """After an output failure, say which finished images no longer have all their files."""
    if storage.is_url(record.out_dir):
        return  # a stored object stays; nothing to check again over a failing connection
    for entry in record.images:
        if entry["status"] == "ok" and not files.outputs_complete(record.out_dir,
                                                                  entry["outputs"]):
            entry.update(status="failed", error="its outputs were removed during the run; "
                                                "rerun to write them again")


# ---------------------------------------------------------------------------------------------
# Output folder, preflight and resume


def _prepare_output(cfg: JobConfig) -> dict | None:
    """Create the output folder, apply ``if_exists``; returns the previous report, if reusable."""
    out_dir, options = cfg.output.dir, cfg.output.storage_options
    try:
        storage.Location(out_dir, options).check_writable(f"{files.TEMP_PREFIX}probe")
    except (OSError, StorageError) as exc:
        raise ConfigError(f"output.dir: cannot write to {out_dir!r} "
                          f"({getattr(exc, 'strerror', None) or exc}); choose a writable "
                          "folder") from exc
    files.remove_temp_files(out_dir)
    previous = files.read_json(storage.join(out_dir, REPORT), options)
    has_outputs = previous is not None or any(
        storage.exists(storage.join(out_dir, d), options) for d in (*files.SUBDIRS, MODEL))
    policy = cfg.output.if_exists
    if policy == "fail" and has_outputs:
        raise ConfigError(f"output.dir: {out_dir!r} already holds outputs; set "
                          "output.if_exists: overwrite or resume, or choose another folder")
    if policy == "overwrite" or not isinstance(previous, dict):
        return None
    if previous.get("job_hash") != cfg.job_hash():
        raise ConfigError(f"output.dir: {out_dir!r} holds outputs of a different job (job hash "
                          f"{previous.get('job_hash')} != {cfg.job_hash()}); resume only "
                          "continues the same job: set output.if_exists: overwrite")
    return previous


def _preflight(cfg: JobConfig, listing: Listing) -> None:
    """Before any cluster work: workers must see the files, and with ``on_error: fail`` every
    image must open."""
    _check_workers(cfg, listing.images)
    if listing.failed and cfg.input.on_error == "fail":
        raise ImageReadError(unreadable_message(listing.failed, listing.images))


def _check_workers(cfg: JobConfig, images: list[ImageInfo]) -> None:
    """Fail early, one line per problem, when cluster workers cannot see the job's files.

    Each worker reads a spread of the inputs.  A local output folder gets a marker file from
    this process, which each worker must find (else it sees another folder of that name) and
    write next to; in object storage each worker writes and deletes a probe object.
    """
    if not cluster.on_cluster():
        return
    out_dir, probe = cfg.output.dir, f"{files.TEMP_PREFIX}probe-{uuid.uuid4().hex[:12]}"
    spread = images[::max(1, len(images) // _CHECK_INPUTS)][:_CHECK_INPUTS] + images[-1:]
    paths = sorted({i.path for i in spread})
    args = (paths, cfg.input.storage_options, out_dir, cfg.output.storage_options, probe)
    if storage.is_url(out_dir):
        cluster.check_on_workers(_worker_sees, *args)
        return
    marker = os.path.join(out_dir, probe)
    with open(marker, "wb"):
        pass
    try:
        cluster.check_on_workers(_worker_sees, *args)
    finally:
        os.unlink(marker)


def _worker_sees(paths: list[str], in_options: dict | None, out_dir: str,
                 out_options: dict | None, probe: str) -> list[str]:
    problems = []
    for path in paths:
        try:
            with storage.Location(path, in_options).open_read() as handle:
                handle.read(1)
        except (OSError, StorageError, ConfigError) as exc:
            problems.append(f"cannot read input {path} ({getattr(exc, 'strerror', None) or exc})")
    mine = f"{probe}-{uuid.uuid4().hex[:8]}"
    if storage.is_url(out_dir):
        try:
            storage.check_writable(out_dir, out_options, mine)
        except (OSError, StorageError, ConfigError) as exc:
            problems.append(f"cannot write to output.dir {out_dir} ({exc})")
        return problems
    if not os.path.exists(os.path.join(out_dir, probe)):
        return problems + [f"output.dir {out_dir}: not the folder the client made (no "
                           f"{probe} in it)"]
    try:
        storage.Location(out_dir).check_writable(mine)
    except OSError as exc:
        problems.append(f"cannot write to output.dir {out_dir} ({exc.strerror or exc})")
    return problems


def _resume(record: RunRecord, previous: dict | None, images: list[ImageInfo]) -> None:
    if not previous:
        return
    done = {r.get("path"): r for r in previous.get("images", [])
            if r.get("status") == "ok" and r.get("outputs") is not None}
    # On object storage, the sizes of every object from one listing.
    sizes = files.output_sizes(record.out_dir, record.cfg.output.storage_options) \
        if done else None
    n = 0
    for info in images:
        old = done.get(info.path)
        if (old and old.get("name") == info.name
                and files.outputs_complete(record.out_dir, old["outputs"], sizes)):
            record.kept(info, old)
            n += 1
    if n:
        log.info("resume: %d image(s) already complete", n)


def _image_failed(record: RunRecord, info: ImageInfo, error: str) -> None:
    record.refused(info, error)
    log.info("%s: %s", info.path, error)  # the CLI lists skipped images when the run ends
    if record.cfg.input.on_error == "fail":
        raise ImageReadError(f"{info.path}: {error} (input.on_error: fail; no image outputs "
                             "were written)")


# ---------------------------------------------------------------------------------------------
# Collection scope: one palette


def _segment(record: RunRecord, good: list[ImageInfo], outcome: fitting.FitOutcome,
             phases: _Phases, held: _Held, written: _Written) -> None:
    """Segment and write every image with the collection's palette, then the palette files."""
    from pipeline import tasks

    cfg = record.cfg
    record.warnings += outcome.warnings
    record.auto_k = outcome.auto_k
    for message in outcome.warnings:
        log.warning(message)
    _save_model(record, outcome, written)
    clock = time.perf_counter()
    todo = record.pending(good)
    whole = whole_table_pays(sum(i.n_pixels for i in good), len(outcome.centroids),
                             cfg.preprocess.color_space)
    groups = collection.groups(todo)
    kept = held.kept if held.kept is not None and len(held.kept) else None
    if kept is not None:  # done before (resume): not segmented again
        pending = set(todo)
        kept.release([info for info in good if info not in pending])
    segment_tasks = [
        dask.delayed(collection.each, pure=True)(
            tasks.segment_task, [(info,) for info in group], outcome.centroids,
            cfg.preprocess.color_space, outcome.palette, cfg.output, record.out_dir,
            cfg.preprocess.spatial_weight, whole, kept and kept.for_group(group))
        for group in groups]
    _compute_images(record, groups, segment_tasks, phases, "segment",
                    kept.release if kept is not None else None)
    record.timings["segment"] = time.perf_counter() - clock
    doc = _save_model(record, outcome, written)
    report.write_palette_files(record.out_dir, outcome.palette, doc["counts"], cfg.source,
                               cfg.output.storage_options)


def _fit(record: RunRecord, images: list[ImageInfo], previous: dict | None, phases: _Phases,
         init: np.ndarray | None, held: _Held) -> tuple[fitting.FitOutcome, list[ImageInfo]]:
    """The palette: the model this job saved before (resume), the init model's (max_iter: 0),
    or fitted on a sample; and the images to segment with it."""
    cfg = record.cfg
    km, space, weight = cfg.kmeans, cfg.preprocess.color_space, cfg.preprocess.spatial_weight
    saved = files.read_json(storage.join(record.out_dir, MODEL),
                            cfg.output.storage_options) if previous else None
    if saved and saved.get("job_hash") == cfg.job_hash() and "centroids_working" in saved:
        steps = [kmeans.Step(**step) for step in saved.get("history", [])]
        result = fitting.FitResult(np.asarray(saved["centroids_working"]), steps,
                                   bool(saved.get("converged")))
        good = [i for i in images if record.status_of(i) != "skipped"]
        _check_decodable(record, good, phases)
        outcome = fitting.FitOutcome.of(result, space)
        outcome.auto_k = saved.get("auto_k")
        return outcome, good
    if km.max_iter == 0:
        _check_decodable(record, images, phases)
        return fitting.FitOutcome.of(fitting.FitResult(init, [], True), space), images
    clock = time.perf_counter()
    held.kept = _keep_decoded(cfg, images)
    sample = _sample(record, images, phases, held.kept)
    if held.kept is not None:  # skipped images: their pixels are not needed
        usable = set(sample.good)
        held.kept.release([info for info in images if info not in usable])
    record.timings["sample"] = time.perf_counter() - clock
    auto = _choose_k(record, sample.rows)
    if auto is not None:
        km = dataclasses.replace(km, k=auto.k)
    clock = time.perf_counter()
    good = sample.good
    lloyd = km.algorithm == "lloyd"
    pixels = collection.pixel_array(good, cfg.dask.chunk_pixels, held.kept) if lloyd else None
    masked = collection.mask_array(good, cfg.dask.chunk_pixels, held.kept) if lloyd else None
    phases.phase("fit", len(good), sum(i.n_pixels for i in good))
    outcome = fitting.fit_palette(sample.rows, pixels, km, space, weight, init,
                                  lloyd and persist_histograms(cfg, good, sample.rows), auto,
                                  masked)
    record.timings["fit"] = time.perf_counter() - clock
    return outcome, good


def _sample(record: RunRecord, images: list[ImageInfo], phases: _Phases,
            kept: collection.KeptPixels | None) -> collection.Sample:
    """The reproducible sample of the images that decode; the others are skipped."""
    cfg = record.cfg
    pre = cfg.preprocess
    features = (pre.color_space, pre.spatial_weight) if pre.spatial_weight > 0 else None
    sample = collection.draw_sample(images, cfg.kmeans.sample_pixels, cfg.kmeans.seed,
                                    features, phases, kept,
                                    stop_at_failure=cfg.input.on_error == "fail")
    for info, lines in sample.logged:
        record.logged(info, lines)
    for info, error in sample.failed:
        _image_failed(record, info, error)
    if not sample.good:
        raise ImageReadError(_nothing_usable(record))
    return sample


def _choose_k(record: RunRecord, sample: np.ndarray) -> fitting.AutoK | None:
    """``kmeans.k: auto``: the smallest k meeting ``kmeans.max_error`` on the sample."""
    km, space = record.cfg.kmeans, record.cfg.preprocess.color_space
    if not km.auto_k:
        return None
    clock = time.perf_counter()
    auto = fitting.choose_k(sample, km, space)
    record.timings["choose_k"] = time.perf_counter() - clock
    record.auto_k = auto.as_dict()
    log.info("k: auto chose k=%d after %d fits", auto.k, len(auto.tried))
    return auto


def _check_decodable(record: RunRecord, images: list[ImageInfo], phases: _Phases) -> None:
    """With on_error: fail, decode every image before the first output is written."""
    if record.cfg.input.on_error != "fail":
        return
    todo = record.pending(images)
    results = collection.sample_pass(todo, [0] * len(todo), 0, phases, "check")
    for info, ((_, error), lines) in zip(todo, results):
        record.logged(info, lines)
        if error is not None:
            _image_failed(record, info, error)


def _keep_decoded(cfg: JobConfig, images: list[ImageInfo]) -> collection.KeptPixels | None:
    """Where the sampling pass keeps decoded pixels (3 bytes each) for the later passes, so
    that each image is decoded once: in this process when tasks run here (threads; for
    minibatch, whose only later pass is the segment pass), in worker memory on a distributed
    cluster (issue 14; lloyd's passes read them too); nowhere on the processes scheduler.
    As ``dask.persist`` says: auto keeps them when they take under a quarter of the memory
    available (the workers' memory limits in all, on a cluster)."""
    if cfg.dask.persist == "never":
        return None
    here = cluster.tasks_run_here()
    if (here and cfg.kmeans.algorithm != "minibatch") or not (here or cluster.on_cluster()):
        return None
    if cfg.dask.persist == "auto" and \
            3 * sum(i.n_pixels for i in images) >= cluster.memory_budget() // 4:
        return None
    return collection.Decoded() if here else \
        cluster.decode_on_workers(images, collection.decode_kept)


# Bytes of a per-chunk histogram per distinct colour: a uint32 code and an int64 count.
_HISTOGRAM_BYTES = 12
# A chunk (one image, or a band of one) has at most the sample's share of distinct colours
# in all but odd collections: a smaller set of pixels repeats fewer colours, and the sample
# spans every image.  Twice the sample's share leaves room for those.
_DISTINCT_SAFETY = 2.0


def persist_histograms(cfg: JobConfig, images: list[ImageInfo], sample: np.ndarray) -> bool:
    """Whether lloyd keeps per-chunk colour histograms in memory across passes.

    ``persist: auto`` estimates their size from the sample, (n_sample, 3) uint8: 12 bytes
    per distinct colour, at twice the sample's distinct-colour ratio (at most one per pixel),
    and keeps them when that is under a quarter of the memory available.  Typical photos have
    a few per cent distinct colours, where the bound of 12 bytes per pixel refused to keep
    even 100 Mpx on 4 GiB of workers, so every pass decoded every image again (issue 14).
    """
    if cfg.dask.persist != "auto":
        return cfg.dask.persist == "always"
    ratio = min(1.0, _DISTINCT_SAFETY * _distinct_ratio(sample))
    estimate = _HISTOGRAM_BYTES * ratio * sum(i.n_pixels for i in images)
    return estimate < cluster.memory_budget() // 4


def _distinct_ratio(sample: np.ndarray) -> float:
    """Distinct colours per row of uint8 RGB rows (n, 3); 1.0 for no rows (or feature rows,
    which have no colour histogram)."""
    if not len(sample) or sample.dtype != np.uint8 or sample.shape[1:] != (3,):
        return 1.0
    seen = np.zeros(1 << 24, bool)  # marking codes: np.unique's hash path is slow (issue 14)
    seen[kmeans.pack(sample)] = True
    return float(np.count_nonzero(seen)) / len(sample)


def _save_model(record: RunRecord, outcome: fitting.FitOutcome, written: _Written) -> dict:
    counts = np.zeros(len(outcome.centroids), np.int64)
    inertia = 0.0
    for entry in record.images:
        if entry["status"] == "ok":
            counts += np.asarray(entry["counts"], np.int64)
            inertia += entry["inertia"]
    doc = model.collection_document(record.cfg, outcome, counts, inertia)
    _write_json(storage.join(record.out_dir, MODEL), doc,
                storage_options=record.cfg.output.storage_options)
    written.model = doc
    return doc


# ---------------------------------------------------------------------------------------------
# Image scope: one palette per image


def _run_per_image(record: RunRecord, images: list[ImageInfo], phases: _Phases,
                   init: np.ndarray | None) -> dict[str, dict]:
    """Fit, segment and write each photo with its own palette; returns the palettes by name."""
    from pipeline import tasks

    cfg = record.cfg
    clock = time.perf_counter()
    _check_decodable(record, images, phases)
    groups = collection.groups(record.pending(images))
    image_tasks = [
        dask.delayed(collection.each, pure=True)(
            tasks.fit_segment_task, [(info,) for info in group], cfg.kmeans,
            cfg.preprocess.color_space, init, cfg.output, record.out_dir,
            cfg.preprocess.spatial_weight)
        for group in groups]
    _compute_images(record, groups, image_tasks, phases, "fit+segment")
    record.timings["fit+segment"] = time.perf_counter() - clock
    names = {info.name for info in images}
    return {r["name"]: r["palette"] for r in record.images
            if r["status"] == "ok" and r["name"] in names}


def _save_image_models(record: RunRecord, palettes: dict[str, dict], models: dict[str, dict],
                       written: _Written) -> None:
    """model.json of an image-scope run: the photos' palettes and the rasters' models by image
    name (each raster model says ``kind: raster``); a job of rasters only is ``kind: raster``."""
    cfg = record.cfg
    if palettes or not models:
        doc = model.image_document(cfg, {**palettes, **models})
    else:
        doc = model.raster_image_document(cfg, models)
    _write_json(storage.join(record.out_dir, MODEL), doc,
                storage_options=cfg.output.storage_options)
    written.model = doc


# ---------------------------------------------------------------------------------------------
# Writing images


def _compute_images(record: RunRecord, groups: list[list[ImageInfo]], image_tasks: list,
                    phases: _Phases, phase: str,
                    release: Callable[[list[ImageInfo]], None] | None = None) -> None:
    """Compute the image tasks of ``groups``, recording each image as its group finishes;
    ``release`` is told each finished group (its kept pixels are no longer needed)."""
    todo = [info for group in groups for info in group]
    phases.phase(phase, len(todo), sum(i.n_pixels for i in todo))

    def done(g: int, results: list[tuple[dict, list[str]]]) -> None:
        for info, (result, lines) in zip(groups[g], results):
            record.logged(info, lines)
            error = result.pop("error", None)
            if result.pop("output_error", False):  # disk full, folder removed: stop the run
                record.failed(info, error)
                raise OutputError(error)
            if error is not None:
                _image_failed(record, info, error)
            else:
                record.done(info, result, files.utc_now())
                for message in (result.get("palette") or {}).get("warnings", []):
                    record.warnings.append(f"{info.name}: {message}")
                    log.warning("%s: %s", info.path, message)
        if release is not None:
            release(groups[g])
        collection.advance(phases, groups[g])
        phases.save(force=False)

    cluster.compute_each(image_tasks, done)


# ---------------------------------------------------------------------------------------------
# Rasters (issue 12): N bands at native depth, windows, masks; see pipeline/raster_job.py


def _run_rasters(record: RunRecord, listing: Listing, previous: dict | None, phases: _Phases,
                 written: _Written, init: np.ndarray | None) -> None:
    """A job with rasters, and perhaps photos too.  ``scope: image``: photos take the photo
    path, rasters the raster path, one report and one model.json.  ``scope: collection``: one
    fit needs one feature space, so photos join the raster path as 3-band uint8 rasters in
    native units (`listing.photos_as_rasters`), and every image must give as many bands."""
    cfg = record.cfg
    collection_scope = cfg.kmeans.scope == "collection"
    if collection_scope:
        listing = photos_as_rasters(listing, cfg.input)
    photos = [info for info in listing.images if info.name not in listing.rasters]
    infos = [info for info in listing.images if info.name in listing.rasters]
    chunk = cfg.dask.chunk_pixels
    images = {info.name: dataclasses.replace(listing.rasters[info.name], chunk_pixels=chunk)
              for info in infos}
    if collection_scope:
        fitted, display_range = _raster_model(record, infos, images, previous, phases)
        _raster_segment(record, infos, images, fitted, display_range, phases, written)
        return
    palettes = _run_per_image(record, photos, phases, init) if photos else {}
    spent = record.timings.get("fit+segment", 0.0)
    models = _raster_per_image(record, infos, images, phases)
    record.timings["fit+segment"] += spent
    _save_image_models(record, palettes, models, written)


def check_job(cfg: JobConfig, listing: Listing, init: np.ndarray | None) -> None:
    """The keys, models and band counts a job's listed inputs cannot take, refused in one line
    before any work: what `run` checks and `validate` reports (``init``: from `resolve_init`).

    Raises
    ------
    ConfigError
    """
    if not listing.rasters:
        _check_photo_job(cfg, listing.images, init)
        return
    from pipeline import raster_job

    collection_scope = cfg.kmeans.scope == "collection"
    if collection_scope:  # photos join the rasters, as `_run_rasters` does
        listing = photos_as_rasters(listing, cfg.input)
    photos = [info for info in listing.images if info.name not in listing.rasters]
    rasters = [listing.rasters[info.name] for info in listing.images
               if info.name in listing.rasters]
    # rasters first: a key refused for rasters names one, not a photo that joined them
    _check_raster_job(cfg, sorted(rasters, key=lambda i: i.header.format == "photo"))
    if photos:
        _check_photo_job(cfg, photos, init)
    if collection_scope:
        raster_job.check_band_counts(rasters)


def _check_photo_job(cfg: JobConfig, images: list, init: np.ndarray | None) -> None:
    """Keys and models that make no sense for RGB photos are refused in one line."""
    first = images[0].path if images else "the inputs"
    if cfg.output.format not in ("auto", "png"):  # the photo path writes PNG only
        raise ConfigError(f"output.format: {cfg.output.format} is for rasters, but {first} is "
                          "read as a photo (8-bit RGB, written as PNG; a job of TIFF or zarr "
                          "rasters only takes the raster path); set output.format: auto or png")
    if cfg.kmeans.init_is_model and init is None:  # resolve_init leaves raster models for later
        raise ConfigError(f"kmeans.init: {cfg.kmeans.init} is a model of N-band rasters, but "
                          f"{first} is a photo; use a model fitted on photos (or fit anew)")
    if cfg.kmeans.error_metric == "variance":
        raise ConfigError(f"kmeans.error_metric: 'variance' is for N-band rasters, but {first} "
                          "is a photo; use de76, de2000 (or auto)")


def _check_raster_job(cfg: JobConfig, images: list[raster_job.RasterImage]) -> None:
    """Keys that make no sense for N-band rasters are refused in one line, before any work."""
    first = images[0].header.path if images else "the inputs"
    if cfg.preprocess.color_space != "rgb":
        raise ConfigError(f"preprocess.color_space: 'lab' needs RGB photos, but {first} is a "
                          "raster; remove it (bands are clustered in their own units, see "
                          "preprocess.normalize)")
    if cfg.preprocess.spatial_weight > 0:
        raise ConfigError(f"preprocess.spatial_weight: its colour unit has no meaning for the "
                          f"bands of {first}; set it to 0 for rasters")
    if cfg.kmeans.error_metric in ("de76", "de2000"):
        raise ConfigError(f"kmeans.error_metric: {cfg.kmeans.error_metric!r} measures RGB "
                          f"colours, but {first} is a raster; use variance (or auto)")
    if cfg.preprocess.scale != 1.0:
        raise ConfigError(f"preprocess.scale: rasters are read at full resolution in windows "
                          f"({first}); choose a pyramid level with input.level instead")
    if cfg.kmeans.algorithm == "lloyd":  # raster_job.fit_model fits on the sample only
        raise ConfigError(f"kmeans.algorithm: 'lloyd' makes full passes over every pixel, "
                          f"which the raster path does not do ({first}); use minibatch: the "
                          "fit runs Lloyd steps on the sample until the centroids settle")
    display = cfg.preprocess.display_bands
    for image in images:  # input.mask, input.bands and input.nodata checked on every file
        count = image.header.count
        for band in image.bands or ():
            if not 1 <= band <= count:
                raise ConfigError(f"input.bands: band {band} does not exist in "
                                  f"{image.header.path} ({count} bands, numbered from 1)")
        image.reader()
        n = len(image.selected)
        if display and (len(display) != 3 or not all(1 <= b <= n for b in display)):
            raise ConfigError(f"preprocess.display_bands: give 3 bands from 1 to {n} (the "
                              f"selected bands of {image.header.path}), got {list(display)}")


def _raster_max_error(cfg: JobConfig) -> float:
    """``max_error`` as a share of variance: 0.05 unless the job gives one."""
    return cfg.kmeans.max_error if "kmeans.max_error" in cfg.given else 0.05


def _raster_fit_args(cfg: JobConfig) -> dict:
    km = cfg.kmeans
    return {"n_clusters": km.k, "normalize": cfg.preprocess.normalize, "seed": km.seed,
            "n_init": km.n_init, "max_iter": max(1, km.max_iter), "tol": km.tol,
            "max_error": _raster_max_error(cfg), "max_k": km.max_k}


def _raster_model(record: RunRecord, infos: list[ImageInfo],
                  images: dict[str, raster_job.RasterImage], previous: dict | None,
                  phases: _Phases) -> tuple[raster_job.RasterModel, list]:
    """The collection's raster model: saved by this job before (resume), the init model
    (``apply``), or fitted on a sample."""
    from pipeline import raster_job
    cfg = record.cfg
    km = cfg.kmeans
    first = images[infos[0].name]
    saved = files.read_json(storage.join(record.out_dir, MODEL),
                            cfg.output.storage_options) if previous else None
    if saved and saved.get("job_hash") == cfg.job_hash() and saved.get("kind") == "raster":
        return raster_job.RasterModel.from_dict(saved), saved.get("display_range")
    init = None
    if km.init_is_model:
        doc = model.read_model(km.init, cfg.input.storage_options, f"kmeans.init: {km.init}")
        normalize = cfg.preprocess.normalize if "preprocess.normalize" in cfg.given else None
        init = raster_job.check_model(doc, first, normalize)
        if km.max_iter == 0:  # apply: the model as it is
            return init, doc.get("display_range")
    clock = time.perf_counter()
    todo = [info for info in infos if record.status_of(info) != "skipped"]
    phases.phase("sample", len(todo), sum(i.n_pixels for i in todo))
    sample = raster_job.draw_sample([images[i.name] for i in todo], km.sample_pixels, km.seed)
    by_name = {info.name: info for info in todo}
    for name, reason in sample.failed.items():
        info = by_name[name]
        _image_failed(record, info, reason.removeprefix(f"{info.path}: "))
    record.timings["sample"] = time.perf_counter() - clock
    if not len(sample.rows):
        raise ImageReadError("no raster could be read (or every pixel is masked); nothing to "
                             "fit")
    clock = time.perf_counter()
    phases.phase("fit", len(sample.counts), len(sample.rows))
    args = _raster_fit_args(cfg)
    if init is not None:  # start from the model's centroids, in its normalisation
        args.update(n_clusters=init.n_clusters, normalize=init.normalization.method,
                    init=init)
    fitted = raster_job.fit_model(sample.rows, band_names=_band_names(list(images.values())),
                                  dtypes=tuple(sorted({images[n].header.dtype
                                                       for n in sample.counts})), **args)
    record.timings["fit"] = time.perf_counter() - clock
    if fitted.auto_k:
        record.auto_k = {"k": fitted.n_clusters, "metric": "variance",
                         "max_error": _raster_max_error(cfg), "tried": fitted.auto_k}
    log.info("raster fit: k=%d, %d iterations, %.4f of the sample variance unexplained",
             fitted.n_clusters, fitted.n_iter, fitted.error)
    display_range = np.percentile(sample.rows, [2, 98], axis=0).tolist()
    return fitted, display_range


def _band_names(images: list[raster_job.RasterImage]) -> tuple[str, ...]:
    """A collection's band names: those every image gives its bands, else band_1, band_2..."""
    names = {image.band_names for image in images}
    shared = names.pop() if len(names) == 1 else ()
    if shared and len(set(shared)) == len(shared):
        return shared
    return tuple(f"band_{i + 1}" for i in range(len(images[0].selected)))


def _raster_display(image: raster_job.RasterImage, display_range: list | None,
                    bands: tuple[int, ...] | None) -> raster_job.Display:
    from pipeline import raster_job
    rows = np.asarray(display_range, dtype=np.float64) if display_range else np.zeros((0, 1))
    return raster_job.display_for(image, rows, bands)


def _raster_outputs(record: RunRecord) -> raster_job.Outputs:
    from pipeline import raster_job
    out = record.cfg.output
    return raster_job.Outputs(record.out_dir, "tiff", out.segmented, out.labels, out.masks,
                              "deflate", max(1, out.png_compression), out.storage_options)


def _raster_threads(n_images: int) -> int:
    """Threads per image task: the cores, shared by the images, on a local scheduler."""
    if cluster.on_cluster():
        return 1
    return max(1, min(4, (os.cpu_count() or 1) // max(1, n_images)))


def _save_raster_model(record: RunRecord, fitted: raster_job.RasterModel,
                       display_range: list | None, written: _Written) -> dict:
    counts = np.zeros(fitted.n_clusters, np.int64)
    for entry in record.images:
        if entry["status"] == "ok" and entry.get("counts"):
            counts += np.asarray(entry["counts"], np.int64)
    palette = _palette_colours(fitted, display_range, record.cfg.preprocess.display_bands) \
        if display_range else np.zeros((fitted.n_clusters, 3), np.uint8)
    doc = model.raster_document(record.cfg, fitted.to_dict(), palette, counts, display_range)
    _write_json(storage.join(record.out_dir, MODEL), doc,
                storage_options=record.cfg.output.storage_options)
    written.model = doc
    return doc


def _palette_colours(fitted: raster_job.RasterModel, display_range: list,
                     bands: tuple[int, ...] | None) -> np.ndarray:
    from pipeline import raster_job
    names = [n.lower() for n in fitted.band_names]
    if bands:
        picked = [b - 1 for b in bands]
    elif all(c in names for c in ("red", "green", "blue")):
        picked = [names.index(c) for c in ("red", "green", "blue")]
    else:
        picked = [0, 1, 2] if len(names) >= 3 else [0, 0, 0]
    low, high = np.asarray(display_range)
    display = raster_job.Display(tuple(picked), tuple(low[picked]), tuple(high[picked]))
    return display.to_rgb(fitted.native)


def _raster_segment(record: RunRecord, infos: list[ImageInfo],
                    images: dict[str, raster_job.RasterImage],
                    fitted: raster_job.RasterModel, display_range: list | None,
                    phases: _Phases, written: _Written) -> None:
    from pipeline import raster_job
    cfg = record.cfg
    _save_raster_model(record, fitted, display_range, written)
    clock = time.perf_counter()
    todo = record.pending(infos)
    outputs = _raster_outputs(record)
    threads = _raster_threads(len(todo))
    groups = [[info] for info in todo]
    image_tasks = []
    for info in todo:
        image = images[info.name]
        fmt = raster_job.output_format(image, cfg.output.format)
        display = _raster_display(image, display_range, cfg.preprocess.display_bands)
        thumbs = raster_job.thumbs_writer(record.out_dir, info.name, cfg.output.png_compression,
                                          cfg.output.storage_options)
        image_tasks.append(dask.delayed(collection.each, pure=True)(
            raster_job.segment_task, [(image, fitted, outputs, fmt, threads, display,
                                       thumbs)]))
    _compute_images(record, groups, image_tasks, phases, "segment")
    record.timings["segment"] = time.perf_counter() - clock
    _save_raster_model(record, fitted, display_range, written)


def _raster_per_image(record: RunRecord, infos: list[ImageInfo],
                      images: dict[str, raster_job.RasterImage],
                      phases: _Phases) -> dict[str, dict]:
    """Fit, segment and write each raster with its own model; returns the models by name."""
    from pipeline import raster_job
    cfg = record.cfg
    clock = time.perf_counter()
    todo = record.pending(infos)
    outputs = _raster_outputs(record)
    fit = dict(_raster_fit_args(cfg), sample_pixels=cfg.kmeans.sample_pixels)
    image_tasks = [dask.delayed(collection.each, pure=True)(
        raster_job.fit_segment_task,
        [(images[info.name], fit, outputs,
          raster_job.output_format(images[info.name], cfg.output.format),
          _raster_threads(len(todo)), cfg.preprocess.display_bands,
          raster_job.thumbs_writer(record.out_dir, info.name, cfg.output.png_compression,
                                   cfg.output.storage_options))])
        for info in todo]
    _compute_images(record, [[info] for info in todo], image_tasks, phases, "fit+segment")
    record.timings["fit+segment"] = time.perf_counter() - clock
    return {r["name"]: r.get("model") for r in record.images
            if r["status"] == "ok" and r["name"] in images}
