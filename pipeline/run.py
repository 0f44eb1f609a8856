"""run(job): list and check inputs -> sample -> fit -> segment and write every image -> report.

The only module that imports every stage.  It never picks a scheduler: tasks go to whatever
scheduler is active (see `pipeline.cluster.compute_each`).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

import dask
import numpy as np

from pipeline import cluster, fit, model, read, report, segment, storage, write
from pipeline.engine import kmeans
from pipeline.config import JobConfig, KMeansConfig, OutputConfig
from pipeline.errors import (ConfigError, ImageReadError, JobCancelled, OutputError,
                             PipelineError, StorageError)

log = logging.getLogger(__name__)
REPORT = "report.json"
MODEL = "model.json"
_REPORT_EVERY = 2.0  # seconds between rewrites of report.json while images finish
# In runs of more than _GROUP_ABOVE images, images smaller than _TASK_PIXELS share a task (in
# listing order): the scheduler's per-task cost and tokenizing each task's arguments outweighed
# the work of 2,000 images of 0.05 Mpx (issue 5).  Fewer images keep one task each, so that
# progress, failures and reports stay per image where the overhead does not matter.
_TASK_PIXELS = 1 << 21
_GROUP_ABOVE = 256
_CHECK_INPUTS = 8  # inputs, spread over the listing, that every worker must be able to read


class Progress(Protocol):
    def phase(self, name: str, images: int, pixels: int) -> None: ...

    def advance(self, images: int, pixels: int) -> None: ...


class _Silent:
    def phase(self, name: str, images: int, pixels: int) -> None:
        pass

    def advance(self, images: int, pixels: int) -> None:
        pass


@dataclass
class _State:
    """Everything report.json says, kept up to date as the run goes."""

    cfg: JobConfig
    out_dir: str
    records: list[dict] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)
    init: np.ndarray | None = None  # centroids of the model named by kmeans.init
    status: str = "running"
    error: str | None = None
    started: str = field(default_factory=write.utc_now)
    last_saved: float = 0.0

    def report(self) -> dict:
        counts = {s: sum(r["status"] == s for r in self.records)
                  for s in ("ok", "skipped", "failed", "pending")}
        pixels = sum(r["width"] * r["height"] for r in self.records
                     if r["status"] == "ok" and r.get("width"))
        return {"schema_version": model.SCHEMA_VERSION, "status": self.status,
                "error": self.error, "job_file": self.cfg.source,
                "job_hash": self.cfg.job_hash(), "started": self.started,
                "updated": write.utc_now(), "output_dir": self.out_dir,
                "totals": {"images": len(self.records), **counts, "pixels": pixels},
                "timings": {k: round(v, 3) for k, v in self.timings.items()},
                "warnings": self.warnings, **self.extra,
                "images": self.records, "job": self.cfg.to_dict(),
                "versions": model.versions()}

    def save(self, force: bool = True, final: bool = False) -> None:
        now = time.monotonic()
        if force or now - self.last_saved >= _REPORT_EVERY:
            # Mid-run, a missing output folder is an error, not something to re-create; the
            # final report is written even then, so that it says what happened.
            _write_json(os.path.join(self.out_dir, REPORT), self.report(), make_folder=final,
                        storage_options=self.cfg.output.storage_options)
            self.last_saved = now


def _write_json(path: str, doc: dict, make_folder: bool = False,
                storage_options: dict | None = None) -> None:
    try:
        write.write_json(path, doc, make_folder, storage_options)
    except StorageError as exc:
        raise OutputError(str(exc)) from exc  # it names the object and says what to do
    except FileNotFoundError as exc:
        raise OutputError(f"the output folder {os.path.dirname(path)!r} was removed during the "
                          "run; stopped; rerun to write the outputs again") from exc
    except OSError as exc:
        raise OutputError(f"cannot write {path} ({exc.strerror or exc}); free space or fix the "
                          "output folder, then rerun with output.if_exists: resume") from exc


def run(cfg: JobConfig, progress: Progress | None = None, job_id: str | None = None) -> dict:
    """Run a job on the active scheduler and write every output.

    Parameters
    ----------
    cfg : JobConfig
    progress : Progress, optional
        Told about each phase and each finished image; may raise to stop the run.
    job_id : str, optional
        The id of a submitted job (see `pipeline.batch`), recorded in report.json.

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
    out_dir = cfg.output.dir
    clock = time.perf_counter()
    cfg, init, notes = resolve_init(cfg)  # a wrong model is refused before anything
    listing = read.list_inputs(cfg.input, cfg.preprocess, out_dir)
    previous = _prepare_output(cfg)
    state = _State(cfg, out_dir, init=init)
    state.warnings += notes
    progress = _Tracked(progress or _Silent(), state)
    if job_id:
        state.extra["job_id"] = job_id
    state.timings["list"] = time.perf_counter() - clock
    state.records = [_record(info) for info in listing.images]
    state.records += [_broken(path, reason, cfg.input.on_error) for path, reason in listing.failed]
    state.extra.update(ignored=listing.ignored,
                       renamed=[{"path": p, "name": n} for p, n in listing.renamed])
    _add_notes(state, listing.notes)
    for path, reason in listing.failed:
        log.info("%s: %s", path, reason)
    try:
        state.save()
        _check_workers(cfg, listing.images)
        if listing.failed and cfg.input.on_error == "fail":
            raise ImageReadError(_unreadable_message(listing.failed, listing.images))
        _resume(state, previous, listing.images)
        if cfg.kmeans.scope == "collection":
            _run_collection(state, listing.images, previous, progress)
        else:
            _run_per_image(state, listing.images, previous, progress)
        write.remove_temp_files(out_dir)  # left by workers killed while writing
        state.status = "done"
    except (PipelineError, KeyboardInterrupt, Exception) as exc:
        explained = cluster.explain(exc)
        state.status = "cancelled" if isinstance(exc, JobCancelled) else "failed"
        state.error = str(explained or exc) or type(exc).__name__
        _mark_unfinished(state)
        if isinstance(exc, OutputError):
            _mark_lost(state)
        if explained is not None:
            raise explained from exc
        raise
    finally:
        read.forget_decoded(listing.images)  # kept by the sampling pass, even if it failed
        state.timings["total"] = time.perf_counter() - clock
        # First: on a full disk report.json matters more than the page.  When even it cannot
        # be written (an unreachable store: each try takes its retries), the page would not be.
        if _save_quietly(state):
            _write_html(state)
            _save_quietly(state)
    return state.report()


def resolve_init(cfg: JobConfig) -> tuple[JobConfig, np.ndarray | None, list[str]]:
    """A model named by kmeans.init fixes k: its palette wins over the job's kmeans.k."""
    km = cfg.kmeans
    if not km.init_is_model:
        return cfg, None, []
    init = model.load_palette(km.init, cfg.preprocess.color_space, cfg.preprocess.spatial_weight,
                              cfg.input.storage_options)
    notes = []
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


class _Tracked:
    """Passes progress on and keeps report.json's ``progress`` (phase, images done) current."""

    def __init__(self, inner: Progress, state: _State):
        self.inner, self.state = inner, state

    def phase(self, name: str, images: int, pixels: int) -> None:
        self.state.extra["progress"] = {"phase": name, "done": 0, "total": images,
                                        "pixels_done": 0, "pixels": pixels}
        self.state.save()
        self.inner.phase(name, images, pixels)

    def advance(self, images: int, pixels: int) -> None:
        now = self.state.extra["progress"]
        now.update(done=now["done"] + images, pixels_done=now["pixels_done"] + pixels)
        # Every 2 s, and every 5 % of the phase's images: a killed run redoes little on resume.
        self.state.save(force=now["done"] % max(1, now["total"] // 20) == 0)
        self.inner.advance(images, pixels)


def _check_workers(cfg: JobConfig, images: list[read.ImageInfo]) -> None:
    """Fail early, one line per problem, when cluster workers cannot see the job's files.

    Each worker reads a spread of the inputs.  A local output folder gets a marker file from
    this process, which each worker must find (else it sees another folder of that name) and
    write next to; in object storage each worker writes and deletes a probe object.
    """
    if not cluster.on_cluster():
        return
    out_dir, probe = cfg.output.dir, f"{write.TEMP_PREFIX}probe-{uuid.uuid4().hex[:12]}"
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
            if storage.is_url(path):
                storage.open_read(path, in_options).read(1)
            else:
                with open(path, "rb") as handle:
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
        with open(os.path.join(out_dir, mine), "wb"):
            pass
        os.unlink(os.path.join(out_dir, mine))
    except OSError as exc:
        problems.append(f"cannot write to output.dir {out_dir} ({exc.strerror or exc})")
    return problems


def _write_html(state: _State) -> None:
    """report.html next to report.json; a failure here never hides the run's own outcome."""
    clock = time.perf_counter()
    try:
        options = state.cfg.output.storage_options
        doc = write.read_json(os.path.join(state.out_dir, MODEL), options)
        report.write_html(state.out_dir, state.report(), doc if isinstance(doc, dict) else None,
                          options)
    except Exception as exc:  # noqa: BLE001 - the page is a view; the run's result stands
        log.error("could not write %s: %s", report.HTML, exc)
    state.timings["report"] = time.perf_counter() - clock


def _save_quietly(state: _State) -> bool:
    try:
        state.save(final=True)
    except OutputError as exc:  # the disk is still full: the CLI reports the first error
        log.error("%s", exc)
        return False
    return True


def _mark_lost(state: _State) -> None:
    """After an output failure, say which finished images no longer have all their files."""
    if storage.is_url(state.out_dir):
        return  # a stored object stays; nothing to check again over a failing connection
    for record in state.records:
        if record["status"] == "ok" and not write.outputs_complete(state.out_dir,
                                                                   record["outputs"]):
            record.update(status="failed", error="its outputs were removed during the run; "
                                                 "rerun to write them again")


# ---------------------------------------------------------------------------------------------
# Output folder and resume


def _prepare_output(cfg: JobConfig) -> dict | None:
    """Create the output folder, apply ``if_exists``; returns the previous report, if reusable."""
    out_dir, options = cfg.output.dir, cfg.output.storage_options
    try:
        if storage.is_url(out_dir):
            storage.check_writable(out_dir, options, f"{write.TEMP_PREFIX}probe")
        else:
            os.makedirs(out_dir, exist_ok=True)
            probe = os.path.join(out_dir, f"{write.TEMP_PREFIX}probe")
            with open(probe, "wb"):
                pass
            os.unlink(probe)
    except (OSError, StorageError) as exc:
        raise ConfigError(f"output.dir: cannot write to {out_dir!r} "
                          f"({getattr(exc, 'strerror', None) or exc}); choose a writable "
                          "folder") from exc
    write.remove_temp_files(out_dir)
    previous = write.read_json(os.path.join(out_dir, REPORT), options)
    has_outputs = previous is not None or any(
        storage.exists(os.path.join(out_dir, d), options) for d in (*write.SUBDIRS, MODEL))
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


def _resume(state: _State, previous: dict | None, images: list[read.ImageInfo]) -> None:
    if not previous:
        return
    done = {r.get("path"): r for r in previous.get("images", [])
            if r.get("status") == "ok" and r.get("outputs") is not None}
    # On object storage, the sizes of every object from one listing.
    sizes = write.output_sizes(state.out_dir, state.cfg.output.storage_options) if done else None
    for record, info in zip(state.records, images):
        old = done.get(info.path)
        if (old and old.get("name") == info.name
                and write.outputs_complete(state.out_dir, old["outputs"], sizes)):
            record.update({k: old.get(k) for k in ("outputs", "counts", "inertia", "palette",
                                                   "finished", "seconds")})
            record.update(status="ok", resumed=True)
    n = sum(bool(r.get("resumed")) for r in state.records)
    if n:
        log.info("resume: %d image(s) already complete", n)


def _record(info: read.ImageInfo) -> dict:
    return {"path": info.path, "name": info.name, "status": "pending", "error": None,
            "width": info.width, "height": info.height, "format": info.format,
            "mode": info.mode, "outputs": None, "resumed": False}


def _broken(path: str, reason: str, on_error: str) -> dict:
    return {"path": path, "name": None, "status": "skipped" if on_error == "skip" else "failed",
            "error": reason, "width": None, "height": None, "outputs": None, "resumed": False}


def _add_notes(state: _State, notes: list[tuple[str, str]]) -> None:
    by_path = {r["path"]: r for r in state.records}
    for path, note in notes:
        by_path[path].setdefault("notes", []).append(note)
    for entry in state.extra.get("renamed", []):
        by_path[entry["path"]].setdefault("notes", []).append(
            f"output name changed to {entry['name']!r}: another input has the same name")


def _unreadable_message(failed: list[tuple[str, str]], images: list) -> str:
    if len(failed) == 1:
        path, reason = failed[0]
        return (f"cannot read {path}: {reason}; no cluster work was started "
                "(input.on_error: fail)")
    total = len(failed) + len(images)
    lines = [f"cannot read {len(failed)} of {total} images; no cluster work was started "
             "(input.on_error: fail):"]
    lines += [f"  {path}: {reason}" for path, reason in failed]
    return "\n".join(lines)


def _mark_unfinished(state: _State) -> None:
    for record in state.records:
        if record["status"] == "pending":
            record.update(status="skipped", error="not processed: the run stopped first")


# ---------------------------------------------------------------------------------------------
# Collection scope: one palette


def _run_collection(state: _State, images: list[read.ImageInfo], previous: dict | None,
                    progress: Progress) -> None:
    cfg = state.cfg
    km, space = cfg.kmeans, cfg.preprocess.color_space
    weight = cfg.preprocess.spatial_weight
    clock = time.perf_counter()
    saved = write.read_json(os.path.join(state.out_dir, MODEL),
                            cfg.output.storage_options) if previous else None
    init = state.init
    if saved and saved.get("job_hash") == cfg.job_hash() and "centroids_working" in saved:
        steps = [kmeans.Step(**step) for step in saved.get("history", [])]
        result = fit.FitResult(np.asarray(saved["centroids_working"]), steps,
                               bool(saved.get("converged")))
        good = [i for i in images if _status(state, i) != "skipped"]
        _check_decodable(state, good, progress)
        if saved.get("auto_k"):
            state.extra["auto_k"] = saved["auto_k"]
    elif km.max_iter == 0:
        result, good = fit.FitResult(init, [], True), images
        _check_decodable(state, good, progress)
    else:
        keep = km.algorithm == "minibatch" and weight == 0 and _keep_decoded(cfg, images)
        sample, good = _sample(state, images, progress, keep)
        state.timings["sample"] = time.perf_counter() - clock
        clock = time.perf_counter()
        km = _choose_k(state, sample)
        clock = time.perf_counter()
        pixels = read.pixel_array(good, cfg.dask.chunk_pixels) if km.algorithm == "lloyd" else None
        progress.phase("fit", len(good), sum(i.n_pixels for i in good))
        result = fit.fit_features(sample, km, init) if weight > 0 else \
            fit.fit_collection(sample, pixels, km, space, init, _persist(cfg, good))
        if km.k != cfg.kmeans.k:  # chosen by k: auto: how the final palette does
            state.extra["auto_k"]["error"] = fit.sample_error(sample, result.centroids, space)
        state.timings["fit"] = time.perf_counter() - clock
    state.warnings += result.warnings
    for message in result.warnings:
        log.warning(message)
    palette = segment.palette_colours(result.centroids[:, :3], space)
    _save_model(state, result, palette, None)
    clock = time.perf_counter()
    todo = [info for info in good if _status(state, info) == "pending"]
    whole = segment.whole_table_pays(sum(i.n_pixels for i in good), len(result.centroids),
                                     space)
    groups = _groups(todo)
    tasks = [dask.delayed(_each, pure=True)(_segment_task, [(info,) for info in group],
                                            result.centroids, space, palette, cfg.output,
                                            state.out_dir, weight, whole)
             for group in groups]
    _compute_images(state, groups, tasks, progress, "segment")
    state.timings["segment"] = time.perf_counter() - clock
    doc = _save_model(state, result, palette, None)
    report.write_palette_files(state.out_dir, palette, doc["counts"], cfg.source,
                               cfg.output.storage_options)


def _choose_k(state: _State, sample: np.ndarray) -> KMeansConfig:
    """``kmeans.k: auto``: the smallest k meeting ``kmeans.max_error`` on the sample."""
    km, space = state.cfg.kmeans, state.cfg.preprocess.color_space
    if not km.auto_k:
        return km
    clock = time.perf_counter()
    auto = fit.choose_k(sample, km, space)
    state.timings["choose_k"] = time.perf_counter() - clock
    state.extra["auto_k"] = auto.as_dict()
    if not auto.met:
        message = _auto_k_unmet(km)
        state.warnings.append(message)
        log.warning(message)
    log.info("k: auto chose k=%d after %d fits", auto.k, len(auto.tried))
    return dataclasses.replace(km, k=auto.k)


def _auto_k_unmet(km: KMeansConfig) -> str:
    return (f"k: auto: no k <= kmeans.max_k ({km.max_k}) meets kmeans.max_error "
            f"({km.max_error}); using k={km.max_k}; raise max_k or max_error")


def _status(state: _State, info: read.ImageInfo) -> str:
    return _find(state, info)["status"]


def _find(state: _State, info: read.ImageInfo) -> dict:
    return state.records[info.index]


def _sample(state: _State, images: list[read.ImageInfo], progress: Progress,
            keep: bool = False) -> tuple[np.ndarray, list[read.ImageInfo]]:
    """One pass: decode every image, keep a reproducible sample; finds undecodable images.
    With ``keep`` the decoded pixels stay in memory for the segment pass.

    A skipped image must not change the palette: when one fails to decode and the images
    were sampled (not taken whole), the others are sampled again with the shares they would
    have had without it, so the result equals a run on the good images alone.
    """
    km = state.cfg.kmeans
    pre = state.cfg.preprocess
    features = (pre.color_space, pre.spatial_weight) if pre.spatial_weight > 0 else None
    sizes = _allocate([i.n_pixels for i in images], km.sample_pixels)
    results = _sample_pass(images, sizes, km.seed, progress, "sample", features, keep)
    good, parts = [], []
    for info, (pixels, error) in zip(images, results):
        if error is not None:
            _image_failed(state, info, error)
        else:
            good.append(info)
            parts.append(pixels)
    if not good:
        raise ImageReadError("no image could be decoded; nothing to fit")
    shares = _allocate([i.n_pixels for i in good], km.sample_pixels)
    if len(good) < len(images) and shares != [len(p) for p in parts]:
        results = _sample_pass(good, shares, km.seed, progress, "resample", features)
        for info, (_, error) in zip(good, results):
            if error is not None:  # the file changed since the first pass
                raise ImageReadError(f"{info.path}: {error} (changed during the run; rerun)")
        parts = [pixels for pixels, _ in results]
    return np.concatenate(parts), good


def _sample_pass(images: list[read.ImageInfo], sizes: list[int], seed: int,
                 progress: Progress, phase: str,
                 features: tuple[str, float] | None = None, keep: bool = False) -> list:
    groups = _groups(images)
    share = dict(zip(images, sizes))
    tasks = [dask.delayed(_each, pure=True)(_sample_task, [(i, share[i]) for i in group],
                                            seed, features, keep)
             for group in groups]
    progress.phase(phase, len(images), sum(i.n_pixels for i in images))
    results = cluster.compute_each(tasks, lambda g, r: _advance(progress, groups[g]))
    return [r for group in results for r in group]


def _check_decodable(state: _State, images: list[read.ImageInfo], progress: Progress) -> None:
    """With on_error: fail, decode every image before the first output is written."""
    if state.cfg.input.on_error != "fail":
        return
    todo = [info for info in images if _status(state, info) == "pending"]
    results = _sample_pass(todo, [0] * len(todo), 0, progress, "check")
    for info, (_, error) in zip(todo, results):
        if error is not None:
            _image_failed(state, info, error)


def _allocate(sizes: list[int], total: int) -> list[int]:
    """Split a sample of ``total`` pixels over images in proportion to their sizes
    (largest remainder, ties to the earlier image); all pixels when the collection is smaller."""
    n = sum(sizes)
    if n <= total:
        return list(sizes)
    exact = [s * total / n for s in sizes]
    shares = [int(e) for e in exact]
    order = sorted(range(len(sizes)), key=lambda i: (-(exact[i] - shares[i]), i))
    for i in order[:total - sum(shares)]:
        shares[i] += 1
    return shares


def _image_failed(state: _State, info: read.ImageInfo, error: str) -> None:
    on_error = state.cfg.input.on_error
    _find(state, info).update(status="skipped" if on_error == "skip" else "failed", error=error)
    log.info("%s: %s", info.path, error)  # the CLI lists skipped images when the run ends
    if on_error == "fail":
        raise ImageReadError(f"{info.path}: {error} (input.on_error: fail; no image outputs "
                             "were written)")


def _keep_decoded(cfg: JobConfig, images: list[read.ImageInfo]) -> bool:
    """Whether the sampling pass keeps decoded pixels (3 bytes each) for the segment pass: only
    when tasks run in this process (threads), and as ``dask.persist`` says (auto: when they
    take under a quarter of the memory available)."""
    if cfg.dask.persist == "never" or not cluster.tasks_run_here():
        return False
    return cfg.dask.persist == "always" or \
        3 * sum(i.n_pixels for i in images) < cluster.memory_budget() // 4


def _persist(cfg: JobConfig, images: list[read.ImageInfo]) -> bool:
    if cfg.dask.persist != "auto":
        return cfg.dask.persist == "always"
    # Per-chunk histograms take at most 12 bytes per pixel; keep them when they fit easily.
    return 12 * sum(i.n_pixels for i in images) < cluster.memory_budget() // 4


def _save_model(state: _State, result: fit.FitResult, palette: np.ndarray,
                palettes: dict | None) -> dict:
    cfg = state.cfg
    k = cfg.kmeans.k
    if palettes is None:
        k = len(result.centroids)
        counts = np.zeros(k, np.int64)
        inertia = 0.0
        for record in state.records:
            if record["status"] == "ok":
                counts += np.asarray(record["counts"], np.int64)
                inertia += record["inertia"]
        rgb = kmeans.centroids_to_rgb(result.centroids[:, :3], cfg.preprocess.color_space)
        palettes = model.palette_entry(result.centroids, rgb, counts, inertia, result.n_iter,
                                       result.converged)
        palettes["palette"] = palette.tolist()
        palettes["history"] = [{"kind": s.kind, "shift": s.shift, "inertia": s.inertia}
                               for s in result.steps]
    doc = model.model_document(k, cfg.preprocess.color_space, cfg.kmeans.scope,
                               cfg.kmeans.seed, cfg.to_dict(), cfg.job_hash(), palettes,
                               cfg.preprocess.spatial_weight)
    if state.extra.get("auto_k"):
        doc["auto_k"] = state.extra["auto_k"]
    _write_json(os.path.join(state.out_dir, MODEL), doc,
                storage_options=cfg.output.storage_options)
    return doc


# ---------------------------------------------------------------------------------------------
# Image scope: one palette per image


def _run_per_image(state: _State, images: list[read.ImageInfo], previous: dict | None,
                   progress: Progress) -> None:
    cfg = state.cfg
    space = cfg.preprocess.color_space
    init = state.init
    clock = time.perf_counter()
    _check_decodable(state, images, progress)
    todo = [info for info in images if _status(state, info) == "pending"]
    groups = _groups(todo)
    tasks = [dask.delayed(_each, pure=True)(_fit_segment_task, [(info,) for info in group],
                                            cfg.kmeans, space, init, cfg.output, state.out_dir,
                                            cfg.preprocess.spatial_weight)
             for group in groups]
    _compute_images(state, groups, tasks, progress, "fit+segment")
    state.timings["fit+segment"] = time.perf_counter() - clock
    palettes = {r["name"]: r["palette"] for r in state.records if r["status"] == "ok"}
    _save_model(state, fit.FitResult(np.zeros((0, 3))), np.zeros(0), palettes)


# ---------------------------------------------------------------------------------------------
# Writing images


def _groups(images: list[read.ImageInfo]) -> list[list[read.ImageInfo]]:
    """Consecutive images in groups of at least ``_TASK_PIXELS`` pixels (the last may be
    smaller); an image that large is a group of its own.  One image per group for short runs."""
    if len(images) <= _GROUP_ABOVE:
        return [[info] for info in images]
    groups: list[list[read.ImageInfo]] = []
    pixels = _TASK_PIXELS
    for info in images:
        if pixels >= _TASK_PIXELS:
            groups.append([])
            pixels = 0
        groups[-1].append(info)
        pixels += info.n_pixels
    return groups


def _each(task: Callable, firsts: list[tuple], *rest: Any) -> list:
    """One dask task for a group of images: ``task(*first, *rest)`` for each, in order."""
    return [task(*first, *rest) for first in firsts]


def _advance(progress: Progress, group: list[read.ImageInfo]) -> None:
    progress.advance(len(group), sum(i.n_pixels for i in group))


def _compute_images(state: _State, groups: list[list[read.ImageInfo]], tasks: list,
                    progress: Progress, phase: str) -> None:
    todo = [info for group in groups for info in group]
    progress.phase(phase, len(todo), sum(i.n_pixels for i in todo))

    def done(g: int, results: list[dict]) -> None:
        for info, result in zip(groups[g], results):
            error = result.pop("error", None)
            if result.pop("output_error", False):  # disk full, folder removed: stop the run
                _find(state, info).update(status="failed", error=error)
                raise OutputError(error)
            if error is not None:
                _image_failed(state, info, error)
            else:
                _find(state, info).update(status="ok", finished=write.utc_now(), **result)
                for message in (result.get("palette") or {}).get("warnings", []):
                    state.warnings.append(f"{info.name}: {message}")
                    log.warning("%s: %s", info.path, message)
        _advance(progress, groups[g])
        state.save(force=False)

    cluster.compute_each(tasks, done)


def _sample_task(info: read.ImageInfo, n_sample: int, seed: int,
                 features: tuple[str, float] | None = None,
                 keep: bool = False) -> tuple[np.ndarray | None, str | None]:
    """The image's sample: uint8 pixels, or with ``features=(color_space, spatial_weight)``
    float64 colour + position features (the positions only exist here, in the task).  With
    ``keep`` the decoded pixels stay in memory for the segment pass."""
    try:
        if features is None:
            return read.sample_image(info, n_sample, seed, keep), None
        where = read.sample_positions(info, n_sample, seed)
        rows = read.read_pixels(info)[where]
        return kmeans.spatial_features(rows, where, info.width, info.height, *features), None
    except ImageReadError as exc:
        return None, _reason(exc, info)


def _reason(exc: Exception, info: read.ImageInfo) -> str:
    text = str(exc)
    prefix = f"{info.path}: "
    return text[len(prefix):] if text.startswith(prefix) else text


def _segment_task(info: read.ImageInfo, centroids: np.ndarray, color_space: str,
                  palette: np.ndarray, out: OutputConfig, out_dir: str,
                  spatial_weight: float = 0.0, whole_table: bool = False) -> dict:
    started = time.perf_counter()
    try:
        pixels = read.decode_kept(info)
    except ImageReadError as exc:
        return {"error": _reason(exc, info)}
    labels, counts, inertia = _label(pixels, centroids, color_space, spatial_weight, True,
                                     whole_table)
    try:
        files, thumb_seconds = _write_image(out_dir, info, pixels, labels, palette, out)
    except OutputError as exc:  # the run stops: see _compute_images
        return {"error": str(exc), "output_error": True}
    return {"outputs": files, "counts": counts.tolist(), "inertia": inertia,
            "seconds": round(time.perf_counter() - started, 4), "thumb_seconds": thumb_seconds}


def _fit_segment_task(info: read.ImageInfo, km: KMeansConfig, color_space: str,
                      init: np.ndarray | None, out: OutputConfig, out_dir: str,
                      spatial_weight: float = 0.0) -> dict:
    started = time.perf_counter()
    try:
        pixels = read.decode(info)
    except ImageReadError as exc:
        return {"error": _reason(exc, info)}
    result, auto = _fit_image(pixels, info, km, color_space, init, spatial_weight)
    palette = segment.palette_colours(result.centroids[:, :3], color_space)
    labels, counts, inertia = _label(pixels, result.centroids, color_space, spatial_weight,
                                     False)
    try:
        files, thumb_seconds = _write_image(out_dir, info, pixels, labels, palette, out)
    except OutputError as exc:  # the run stops: see _compute_images
        return {"error": str(exc), "output_error": True}
    rgb = kmeans.centroids_to_rgb(result.centroids[:, :3], color_space)
    entry = model.palette_entry(result.centroids, rgb, counts, inertia, result.n_iter,
                                result.converged)
    entry["warnings"] = result.warnings
    if auto is not None:
        entry["auto_k"] = auto.as_dict()
    return {"outputs": files, "counts": counts.tolist(), "inertia": inertia, "palette": entry,
            "seconds": round(time.perf_counter() - started, 4), "thumb_seconds": thumb_seconds}


def _fit_image(pixels: np.ndarray, info: read.ImageInfo, km: KMeansConfig, color_space: str,
               init: np.ndarray | None,
               spatial_weight: float) -> tuple[fit.FitResult, fit.AutoK | None]:
    """Image scope: fit one image's palette on its sample (k chosen first for k: auto)."""
    rows = pixels.reshape(-1, 3)
    where = np.arange(len(rows))
    if km.algorithm == "minibatch" and len(rows) > km.sample_pixels:
        where = read.sample_positions(info, km.sample_pixels, km.seed)
        rows = rows[where]
    sample = rows if spatial_weight == 0 else kmeans.spatial_features(
        rows, where, info.width, info.height, color_space, spatial_weight)
    auto = fit.choose_k(sample, km, color_space) if km.auto_k else None
    unmet = [_auto_k_unmet(km)] if auto is not None and not auto.met else []
    if auto is not None:
        km = dataclasses.replace(km, k=auto.k)
    if spatial_weight > 0:
        result = fit.fit_features(sample, km, init)
    else:
        result = fit.fit_sample(rows, km, color_space, init)
    result.warnings[:0] = unmet
    return result, auto


def _label(pixels: np.ndarray, centroids: np.ndarray, color_space: str, spatial_weight: float,
           cache: bool, whole_table: bool = False) -> tuple[np.ndarray, np.ndarray, float]:
    if spatial_weight > 0:
        return segment.label_image_spatial(pixels, centroids, color_space, spatial_weight)
    return segment.label_image(pixels, centroids, color_space, cache=cache,
                               whole_table=whole_table)


def _write_image(out_dir: str, info: read.ImageInfo, pixels: np.ndarray, labels: np.ndarray,
                 palette: np.ndarray, out: OutputConfig) -> tuple[dict, float]:
    """Every file of one image: its outputs, then the report's thumbnails."""
    files = _write_outputs(out_dir, info, labels, palette, out)
    files["thumbs"], thumb_seconds = _write_thumbs(out_dir, info, pixels, labels, palette, out)
    return files, thumb_seconds


def _write_thumbs(out_dir: str, info: read.ImageInfo, pixels: np.ndarray, labels: np.ndarray,
                  palette: np.ndarray, out: OutputConfig) -> tuple[list, float]:
    """The report's thumbnails, made from the pixels this task already holds."""
    started = time.perf_counter()
    if not storage.is_url(out_dir) and not os.path.isdir(out_dir):  # would be created again
        raise OutputError(f"the output folder {out_dir!r} was removed during the run (while "
                          f"writing the outputs of {info.path}); stopped; rerun to write them "
                          "again")
    try:
        files = report.write_thumbnails(out_dir, info.name, pixels, labels, palette,
                                        out.png_compression, out.storage_options)
    except StorageError as exc:
        raise OutputError(str(exc)) from exc  # it names the object and says what to do
    except OSError as exc:
        raise OutputError(f"cannot write the thumbnails of {info.path} to {out_dir!r} "
                          f"({exc.strerror or exc}); free space or fix the folder, then "
                          "rerun with output.if_exists: resume") from exc
    return files, round(time.perf_counter() - started, 4)


def _write_outputs(out_dir: str, info: read.ImageInfo, labels: np.ndarray, palette: np.ndarray,
                   out: OutputConfig) -> dict:
    try:
        return write.write_image_outputs(out_dir, info.name, labels, palette, out)
    except StorageError as exc:
        raise OutputError(str(exc)) from exc  # it names the object and says what to do
    except OSError as exc:
        if not storage.is_url(out_dir) and not os.path.isdir(out_dir):
            raise OutputError(f"the output folder {out_dir!r} was removed during the run "
                              f"(while writing the outputs of {info.path}); stopped; rerun "
                              "to write them again") from exc
        raise OutputError(f"cannot write the outputs of {info.path} to {out_dir!r} "
                          f"({exc.strerror or exc}); free space or fix the folder, then "
                          "rerun with output.if_exists: resume") from exc
