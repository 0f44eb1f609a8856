"""run(job): list and check inputs -> sample -> fit -> segment and write every image -> report.

The only module that imports every stage.  It never picks a scheduler: tasks go to whatever
scheduler is active (see `pipeline.cluster.compute_each`).
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable, Protocol

import dask
import numpy as np

from pipeline import cluster, fit, kmeans, model, read, segment, storage, write
from pipeline.config import JobConfig, KMeansConfig, OutputConfig
from pipeline.errors import ConfigError, ImageReadError, PipelineError, StorageError

log = logging.getLogger(__name__)
REPORT = "report.json"
MODEL = "model.json"
_REPORT_EVERY = 2.0  # seconds between rewrites of report.json while images finish


class Progress(Protocol):
    def phase(self, name: str, images: int, pixels: int) -> None: ...

    def advance(self, images: int, pixels: int) -> None: ...


class _Silent:
    def phase(self, name: str, images: int, pixels: int) -> None:
        pass

    def advance(self, images: int, pixels: int) -> None:
        pass


class OutputError(PipelineError):
    """An output file could not be written (disk full, folder removed, permissions)."""


@dataclass
class _State:
    """Everything report.json says, kept up to date as the run goes."""

    cfg: JobConfig
    out_dir: str
    records: list[dict] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)
    status: str = "running"
    error: str | None = None
    started: str = field(default_factory=lambda: _now())
    last_saved: float = 0.0

    def report(self) -> dict:
        counts = {s: sum(r["status"] == s for r in self.records)
                  for s in ("ok", "skipped", "failed", "pending")}
        pixels = sum(r["width"] * r["height"] for r in self.records
                     if r["status"] == "ok" and r.get("width"))
        return {"schema_version": model.SCHEMA_VERSION, "status": self.status,
                "error": self.error, "job_file": self.cfg.source,
                "job_hash": self.cfg.job_hash(), "started": self.started,
                "updated": _now(), "output_dir": self.out_dir,
                "totals": {"images": len(self.records), **counts, "pixels": pixels},
                "timings": {k: round(v, 3) for k, v in self.timings.items()},
                "warnings": self.warnings, **self.extra,
                "images": self.records, "job": self.cfg.to_dict(),
                "versions": model.versions()}

    def save(self, force: bool = True) -> None:
        now = time.monotonic()
        if force or now - self.last_saved >= _REPORT_EVERY:
            write.write_json(os.path.join(self.out_dir, REPORT), self.report(),
                             self.cfg.output.storage_options)
            self.last_saved = now


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def run(cfg: JobConfig, progress: Progress | None = None) -> dict:
    """Run a job on the active scheduler and write every output.

    Parameters
    ----------
    cfg : JobConfig
    progress : Progress, optional
        Told about each phase and each finished image.

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
    progress = progress or _Silent()
    out_dir = cfg.output.dir
    clock = time.perf_counter()
    previous = _prepare_output(cfg)
    state = _State(cfg, out_dir)
    listing = read.list_inputs(cfg.input, cfg.preprocess, out_dir)
    state.timings["list"] = time.perf_counter() - clock
    state.records = [_record(info) for info in listing.images]
    state.records += [_broken(path, reason, cfg.input.on_error) for path, reason in listing.failed]
    state.extra.update(ignored=listing.ignored,
                       renamed=[{"path": p, "name": n} for p, n in listing.renamed])
    _add_notes(state, listing.notes)
    try:
        if listing.failed and cfg.input.on_error == "fail":
            raise ImageReadError(_unreadable_message(listing.failed, listing.images))
        _resume(state, previous, listing.images)
        if cfg.kmeans.scope == "collection":
            _run_collection(state, listing.images, previous, progress)
        else:
            _run_per_image(state, listing.images, previous, progress)
        state.status = "done"
    except (PipelineError, KeyboardInterrupt, Exception) as exc:
        state.status = "failed"
        state.error = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        _mark_unfinished(state)
        raise
    finally:
        state.timings["total"] = time.perf_counter() - clock
        _save_quietly(state)
    return state.report()


def _save_quietly(state: _State) -> None:
    try:
        state.save()
    except OSError as exc:  # the output folder itself is gone: the CLI reports the first error
        log.error("could not write %s: %s", REPORT, exc)


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
    except OSError as exc:
        raise ConfigError(f"output.dir: cannot write to {out_dir!r} "
                          f"({exc.strerror or exc}); choose a writable folder") from exc
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
    clock = time.perf_counter()
    saved = write.read_json(os.path.join(state.out_dir, MODEL),
                            cfg.output.storage_options) if previous else None
    init = model.load_palette(km.init, km.k, space, cfg.input.storage_options) \
        if km.init_is_model else None
    if saved and saved.get("job_hash") == cfg.job_hash() and "centroids_working" in saved:
        steps = [kmeans.Step(**step) for step in saved.get("history", [])]
        result = fit.FitResult(np.asarray(saved["centroids_working"]), steps,
                               bool(saved.get("converged")))
        good = [i for i in images if _status(state, i) != "skipped"]
    elif km.max_iter == 0:
        result, good = fit.FitResult(init, [], True), images
    else:
        sample, good = _sample(state, images, progress)
        state.timings["sample"] = time.perf_counter() - clock
        clock = time.perf_counter()
        pixels = read.pixel_array(good, cfg.dask.chunk_pixels) if km.algorithm == "lloyd" else None
        result = fit.fit_collection(sample, pixels, km, space, init,
                                    _persist(cfg, good))
        state.timings["fit"] = time.perf_counter() - clock
    state.warnings += result.warnings
    for message in result.warnings:
        log.warning(message)
    palette = segment.palette_colours(result.centroids, space)
    _save_model(state, result, palette, None)
    clock = time.perf_counter()
    todo = [info for info in good if _status(state, info) == "pending"]
    tasks = [dask.delayed(_segment_task, pure=True)(info, result.centroids, space, palette,
                                                     cfg.output, state.out_dir)
             for info in todo]
    _compute_images(state, todo, tasks, progress, "segment")
    state.timings["segment"] = time.perf_counter() - clock
    _save_model(state, result, palette, None)


def _status(state: _State, info: read.ImageInfo) -> str:
    return _find(state, info)["status"]


def _find(state: _State, info: read.ImageInfo) -> dict:
    return state.records[info.index]


def _sample(state: _State, images: list[read.ImageInfo],
            progress: Progress) -> tuple[np.ndarray, list[read.ImageInfo]]:
    """One pass: decode every image, keep a reproducible sample; finds undecodable images."""
    km = state.cfg.kmeans
    sizes = _allocate([i.n_pixels for i in images], km.sample_pixels)
    tasks = [dask.delayed(_sample_task, pure=True)(info, n, km.seed)
             for info, n in zip(images, sizes)]
    progress.phase("sample", len(images), sum(i.n_pixels for i in images))
    results = cluster.compute_each(
        tasks, lambda i, r: progress.advance(1, images[i].n_pixels))
    good, parts = [], []
    for info, (pixels, error) in zip(images, results):
        if error is not None:
            _image_failed(state, info, error)
        else:
            good.append(info)
            parts.append(pixels)
    if not good:
        raise ImageReadError("no image could be decoded; nothing to fit")
    return np.concatenate(parts), good


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
    log.warning("%s: %s", info.path, error)
    if on_error == "fail":
        raise ImageReadError(f"{info.path}: {error} (input.on_error: fail; no image outputs "
                             "were written)")


def _persist(cfg: JobConfig, images: list[read.ImageInfo]) -> bool:
    if cfg.dask.persist != "auto":
        return cfg.dask.persist == "always"
    # Per-chunk histograms take at most 12 bytes per pixel; keep them when they fit easily.
    return 12 * sum(i.n_pixels for i in images) < cluster.memory_budget() // 4


def _save_model(state: _State, result: fit.FitResult, palette: np.ndarray,
                palettes: dict | None) -> None:
    cfg = state.cfg
    if palettes is None:
        counts = np.zeros(cfg.kmeans.k, np.int64)
        inertia = 0.0
        for record in state.records:
            if record["status"] == "ok":
                counts += np.asarray(record["counts"], np.int64)
                inertia += record["inertia"]
        rgb = kmeans.centroids_to_rgb(result.centroids, cfg.preprocess.color_space)
        palettes = model.palette_entry(result.centroids, rgb, counts, inertia, result.n_iter,
                                       result.converged)
        palettes["palette"] = palette.tolist()
        palettes["history"] = [{"kind": s.kind, "shift": s.shift, "inertia": s.inertia}
                               for s in result.steps]
    doc = model.model_document(cfg.kmeans.k, cfg.preprocess.color_space, cfg.kmeans.scope,
                               cfg.kmeans.seed, cfg.to_dict(), cfg.job_hash(), palettes)
    write.write_json(os.path.join(state.out_dir, MODEL), doc, cfg.output.storage_options)


# ---------------------------------------------------------------------------------------------
# Image scope: one palette per image


def _run_per_image(state: _State, images: list[read.ImageInfo], previous: dict | None,
                   progress: Progress) -> None:
    cfg = state.cfg
    space = cfg.preprocess.color_space
    init = model.load_palette(cfg.kmeans.init, cfg.kmeans.k, space,
                              cfg.input.storage_options) \
        if cfg.kmeans.init_is_model else None
    clock = time.perf_counter()
    todo = [info for info in images if _status(state, info) == "pending"]
    if cfg.input.on_error == "fail":
        # Check every image decodes before the first output is written.
        tasks = [dask.delayed(_sample_task, pure=True)(info, 0, 0) for info in todo]
        progress.phase("check", len(todo), sum(i.n_pixels for i in todo))
        results = cluster.compute_each(tasks, lambda i, r: progress.advance(1, todo[i].n_pixels))
        for info, (_, error) in zip(todo, results):
            if error is not None:
                _image_failed(state, info, error)
    tasks = [dask.delayed(_fit_segment_task, pure=True)(info, cfg.kmeans, space, init,
                                                         cfg.output, state.out_dir)
             for info in todo]
    _compute_images(state, todo, tasks, progress, "fit+segment")
    state.timings["fit+segment"] = time.perf_counter() - clock
    palettes = {r["name"]: r["palette"] for r in state.records if r["status"] == "ok"}
    _save_model(state, fit.FitResult(np.zeros((cfg.kmeans.k, 3))), np.zeros(0), palettes)


# ---------------------------------------------------------------------------------------------
# Writing images


def _compute_images(state: _State, todo: list[read.ImageInfo], tasks: list,
                    progress: Progress, phase: str) -> None:
    progress.phase(phase, len(todo), sum(i.n_pixels for i in todo))

    def done(i: int, result: dict) -> None:
        info = todo[i]
        error = result.pop("error", None)
        if error is not None:
            _image_failed(state, info, error)
        else:
            _find(state, info).update(status="ok", finished=_now(), **result)
        progress.advance(1, info.n_pixels)
        state.save(force=False)

    cluster.compute_each(tasks, done)


def _sample_task(info: read.ImageInfo, n_sample: int,
                 seed: int) -> tuple[np.ndarray | None, str | None]:
    try:
        return read.sample_image(info, n_sample, seed), None
    except ImageReadError as exc:
        return None, _reason(exc, info)


def _reason(exc: Exception, info: read.ImageInfo) -> str:
    text = str(exc)
    prefix = f"{info.path}: "
    return text[len(prefix):] if text.startswith(prefix) else text


def _segment_task(info: read.ImageInfo, centroids: np.ndarray, color_space: str,
                  palette: np.ndarray, out: OutputConfig, out_dir: str) -> dict:
    started = time.perf_counter()
    try:
        pixels = read.decode(info)
    except ImageReadError as exc:
        return {"error": _reason(exc, info)}
    labels, counts, inertia = segment.label_image(pixels, centroids, color_space)
    files = _write_outputs(out_dir, info, labels, palette, out)
    return {"outputs": files, "counts": counts.tolist(), "inertia": inertia,
            "seconds": round(time.perf_counter() - started, 4)}


def _fit_segment_task(info: read.ImageInfo, km: KMeansConfig, color_space: str,
                      init: np.ndarray | None, out: OutputConfig, out_dir: str) -> dict:
    started = time.perf_counter()
    try:
        pixels = read.decode(info)
    except ImageReadError as exc:
        return {"error": _reason(exc, info)}
    rows = pixels.reshape(-1, 3)
    if km.algorithm == "minibatch" and len(rows) > km.sample_pixels:
        rng = np.random.default_rng([km.seed, info.index])
        rows = rows[np.sort(rng.choice(len(rows), km.sample_pixels, replace=False))]
    result = fit.fit_sample(rows, km, color_space, init)
    palette = segment.palette_colours(result.centroids, color_space)
    labels, counts, inertia = segment.label_image(pixels, result.centroids, color_space,
                                                  cache=False)
    files = _write_outputs(out_dir, info, labels, palette, out)
    rgb = kmeans.centroids_to_rgb(result.centroids, color_space)
    entry = model.palette_entry(result.centroids, rgb, counts, inertia, result.n_iter,
                                result.converged)
    entry["warnings"] = result.warnings
    return {"outputs": files, "counts": counts.tolist(), "inertia": inertia, "palette": entry,
            "seconds": round(time.perf_counter() - started, 4)}


def _write_outputs(out_dir: str, info: read.ImageInfo, labels: np.ndarray, palette: np.ndarray,
                   out: OutputConfig) -> dict:
    try:
        return write.write_image_outputs(out_dir, info.name, labels, palette, out)
    except StorageError:
        raise  # its message already names the object and says what to do
    except OSError as exc:
        raise OutputError(f"cannot write the outputs of {info.path} to {out_dir!r} "
                          f"({exc.strerror or exc}); free space or fix the folder, then "
                          "rerun with output.if_exists: resume") from exc
