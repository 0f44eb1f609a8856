"""The run record: every input's status, the totals, the timings and warnings, the exit status.

What report.json says, kept as the run goes.  Stages tell it what happened (an image is done,
skipped, failed, kept from an earlier run); it computes the totals and the exit status in one
place (`pipeline.errors.exit_status`).  It never writes itself: only the driver saves it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pipeline.config import JobConfig
from pipeline.errors import exit_status
from pipeline.sinks import images as files
from pipeline.sinks import model
from pipeline.sources import ImageInfo
from pipeline.sources.listing import Listing

STATUSES = ("ok", "skipped", "failed", "pending")

NOT_PROCESSED = "not processed: the run stopped first"  # an image a failed run never reached


@dataclass
class RunRecord:
    """One run, as report.json holds it (`to_dict`)."""

    cfg: JobConfig
    out_dir: str
    images: list[dict] = field(default_factory=list)  # one entry per input, listing order
    timings: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    status: str = "running"  # running | done | failed | cancelled
    error: str | None = None
    job_id: str | None = None
    ignored: list[str] = field(default_factory=list)
    renamed: list[dict] = field(default_factory=list)
    progress: dict | None = None  # the phase under way: name, images and pixels done of total
    auto_k: dict | None = None
    scheduler: dict | None = None  # which scheduler ran the job, why, its dashboard
    started: str = field(default_factory=files.utc_now)

    @classmethod
    def of_listing(cls, cfg: JobConfig, listing: Listing, job_id: str | None = None,
                   warnings: list[str] = ()) -> "RunRecord":
        """A record with every listed image pending and every unopenable one failed/skipped."""
        record = cls(cfg, cfg.output.dir, job_id=job_id, warnings=list(warnings),
                     ignored=listing.ignored,
                     renamed=[{"path": p, "name": n} for p, n in listing.renamed])
        record.images = [_pending(info) for info in listing.images]
        record.images += [_broken(path, reason, cfg.input.on_error)
                          for path, reason in listing.failed]
        by_path = {r["path"]: r for r in record.images}
        for path, note in listing.notes:
            by_path[path].setdefault("notes", []).append(note)
        for entry in record.renamed:
            by_path[entry["path"]].setdefault("notes", []).append(
                f"output name changed to {entry['name']!r}: another input has the same name")
        return record

    # -- what stages tell it

    def entry(self, info: ImageInfo) -> dict:
        return self.images[info.index]

    def status_of(self, info: ImageInfo) -> str:
        return self.entry(info)["status"]

    def pending(self, images: list[ImageInfo]) -> list[ImageInfo]:
        return [info for info in images if self.status_of(info) == "pending"]

    def done(self, info: ImageInfo, result: dict, finished: str) -> None:
        entry = self.entry(info)
        notes = entry.get("notes", []) + [n for n in result.get("notes", ())
                                          if n not in entry.get("notes", [])]
        entry.update(status="ok", finished=finished, **result)
        if notes:  # the listing's notes and the task's (issue 13: no CRS, areas)
            entry["notes"] = notes

    def logged(self, info: ImageInfo, lines: list[str]) -> None:
        """Warnings the image's tasks logged (`pipeline.tasklog`), each once, under ``log``."""
        if lines:
            entry = self.entry(info).setdefault("log", [])
            entry += [line for line in lines if line not in entry]

    def refused(self, info: ImageInfo, error: str) -> None:
        """The image cannot be used: skipped or failed, as ``input.on_error`` says."""
        on_error = self.cfg.input.on_error
        self.entry(info).update(status="skipped" if on_error == "skip" else "failed",
                                error=error)

    def failed(self, info: ImageInfo, error: str) -> None:
        self.entry(info).update(status="failed", error=error)

    def kept(self, info: ImageInfo, old: dict) -> None:
        """The image's outputs from an earlier run of this job are complete: resumed."""
        self.entry(info).update({k: old.get(k) for k in ("outputs", "counts", "inertia",
                                                        "palette", "finished", "seconds")})
        for key in ("masked", "classes", "model"):  # rasters (issue 12)
            if key in old:
                self.entry(info)[key] = old[key]
        self.entry(info).update(status="ok", resumed=True)

    def stopped(self) -> None:
        """The run stopped: images not processed yet are skipped."""
        for entry in self.images:
            if entry["status"] == "pending":
                entry.update(status="skipped", error=NOT_PROCESSED)

    # -- what it computes

    def totals(self) -> dict[str, int]:
        counts = {s: sum(r["status"] == s for r in self.images) for s in STATUSES}
        pixels = sum(r["width"] * r["height"] for r in self.images
                     if r["status"] == "ok" and r.get("width"))
        return {"images": len(self.images), **counts, "pixels": pixels}

    def exit_code(self) -> int:
        """The CLI's exit status for a run that finished (0, or 3 with images skipped)."""
        return exit_status(self.totals())

    def problems(self) -> list[dict]:
        """Every image not done, with why."""
        return [{"path": r["path"], "error": r["error"]} for r in self.images
                if r["status"] != "ok" and r["error"]]

    def to_dict(self) -> dict[str, Any]:
        extra: dict[str, Any] = {}
        if self.job_id:
            extra["job_id"] = self.job_id
        extra.update(ignored=self.ignored, renamed=self.renamed)
        if self.progress is not None:
            extra["progress"] = self.progress
        if self.auto_k is not None:
            extra["auto_k"] = self.auto_k
        if self.scheduler is not None:
            extra["scheduler"] = self.scheduler
        return {"schema_version": model.SCHEMA_VERSION, "status": self.status,
                "error": self.error, "job_file": self.cfg.source,
                "job_hash": self.cfg.job_hash(), "started": self.started,
                "updated": files.utc_now(), "output_dir": self.out_dir,
                "totals": self.totals(),
                "timings": {k: round(v, 3) for k, v in self.timings.items()},
                "warnings": self.warnings, **extra,
                "images": self.images, "job": self.cfg.to_dict(),
                "versions": model.versions()}


def _pending(info: ImageInfo) -> dict:
    return {"path": info.path, "name": info.name, "status": "pending", "error": None,
            "width": info.width, "height": info.height, "format": info.format,
            "mode": info.mode, "outputs": None, "resumed": False}


def _broken(path: str, reason: str, on_error: str) -> dict:
    return {"path": path, "name": None, "status": "skipped" if on_error == "skip" else "failed",
            "error": reason, "width": None, "height": None, "outputs": None, "resumed": False}
