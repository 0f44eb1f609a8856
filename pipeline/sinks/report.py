"""What users look at and reuse: thumbnails, report.html, and the palette as .gpl and .png.

Thumbnails are made inside the per-image tasks from the pixels and labels those tasks already
hold (no second read).  ``report.html`` is one file that opens from disk with no network and
no server: its style, script and charts (inline SVG) are inside it, and it shows the
thumbnails by relative path (``thumbs/...``), so the output folder can be moved or copied as a
whole.  Per-image entries live in the page as JSON and the script draws one page of
`PAGE_SIZE` cards at a time (images ``loading="lazy"``), so 1,000 images open as fast as 50.
"""

from __future__ import annotations

import functools
import html
import json
import os
import string
import urllib.parse
from importlib import resources
from typing import Any

import numpy as np

from pipeline import storage
from pipeline.sinks import images, segment

HTML = "report.html"
GPL = "palette.gpl"
PALETTE_PNG = "palette.png"
THUMB_SIDE = 160  # px, longest side of the before / after thumbnails
MASK_SIDE = 38  # px, longest side of one cluster's mask in the strip
MASKS_PER_ROW = 8  # the strip wraps after this many masks (k = 64: 8 rows)
PAGE_SIZE = 50  # image cards per page
_GAP_GREY = 200  # grey level between the masks of the strip
_SWATCH = 32  # px, one colour of palette.png


# ---------------------------------------------------------------------------------------------
# Thumbnails (run inside the per-image tasks)


def write_thumbnails(out_dir: str, name: str, pixels: np.ndarray, labels: np.ndarray,
                     palette: np.ndarray, compress_level: int,
                     storage_options: dict | None = None) -> list[list]:
    """Write an image's before / after thumbnails and its strip of cluster masks.

    Parameters
    ----------
    out_dir : str
    name : str
        The image's output name.
    pixels : ndarray of shape (height, width, 3), uint8
        The decoded image (working size).
    labels : ndarray of shape (height, width), uint8 or uint16
    palette : ndarray of shape (n_clusters, 3), uint8
    compress_level : int
        zlib level of the PNGs.
    storage_options : dict, optional
        For an ``out_dir`` on object storage.

    Returns
    -------
    list
        ``[relative path, size in bytes]`` of ``thumbs/<name>/before.jpg``, ``after.png`` and
        ``masks.png``, in that order (the report's ``outputs["thumbs"]``).
    """
    from PIL import Image  # here: a raster run imports this module before its first task

    height, width = labels.shape
    size = _fit_size(width, height, THUMB_SIDE, THUMB_SIDE)
    before = Image.fromarray(pixels).resize(size, Image.Resampling.BOX, reducing_gap=2.0)
    small = _nearest(labels, *size)
    top = int(small.max(initial=0))
    indexed = len(palette) <= 256 and (top < 256 or len(palette) <= 255)
    after = Image.fromarray(small.astype(np.uint8), mode="P") if indexed else None
    if after is not None and len(palette) <= 255 and top == 255:
        # masked pixels (label 255, issue 12): transparent, as in the segmented image
        after.putpalette(np.concatenate([palette.astype(np.uint8), np.zeros(
            (256 - len(palette), 3), np.uint8)]).tobytes(), rawmode="RGB")
        after.info["transparency"] = 255
    elif after is not None:
        after.putpalette(palette.astype(np.uint8).tobytes(), rawmode="RGB")
    else:
        after = Image.fromarray(segment.segmented(small, palette), mode="RGB")
    strip = Image.fromarray(_mask_strip(labels, len(palette)), mode="L")
    base = f"thumbs/{name}"
    files = []
    rel = f"{base}/before.jpg"
    files.append([rel, images.atomic_write(
        _path(out_dir, rel), lambda handle: before.save(handle, format="JPEG", quality=85),
        storage_options=storage_options)])
    for rel, image in ((f"{base}/after.png", after), (f"{base}/masks.png", strip)):
        files.append([rel, images.write_png(_path(out_dir, rel), image, compress_level,
                                           storage_options=storage_options)])
    return files


def _fit_size(width: int, height: int, max_width: int, max_height: int) -> tuple[int, int]:
    scale = min(1.0, max_width / width, max_height / height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def _nearest(labels: np.ndarray, width: int, height: int) -> np.ndarray:
    """Labels resampled to (height, width) by taking the pixel under each target centre."""
    rows = ((np.arange(height) + 0.5) * labels.shape[0] / height).astype(np.int64)
    cols = ((np.arange(width) + 0.5) * labels.shape[1] / width).astype(np.int64)
    return labels[rows[:, None], cols[None, :]]


def _mask_strip(labels: np.ndarray, n_clusters: int, gap: int = 2) -> np.ndarray:
    """Every cluster's mask, small, in index order, left to right, `MASKS_PER_ROW` to a row
    (255 in the cluster, 0 outside, light grey between and after the masks)."""
    tile_w, tile_h = _fit_size(labels.shape[1], labels.shape[0], MASK_SIDE, MASK_SIDE)
    small = _nearest(labels, tile_w, tile_h)
    columns = min(n_clusters, MASKS_PER_ROW)
    rows = -(-n_clusters // columns)
    strip = np.full((rows * (tile_h + gap) - gap, columns * (tile_w + gap) - gap), _GAP_GREY,
                    np.uint8)
    for j in range(n_clusters):
        y, x = (j // columns) * (tile_h + gap), (j % columns) * (tile_w + gap)
        strip[y:y + tile_h, x:x + tile_w] = (small == j).view(np.uint8) * np.uint8(255)
    return strip


def _path(out_dir: str, rel: str) -> str:
    return storage.join(out_dir, rel)


# ---------------------------------------------------------------------------------------------
# The palette as files other programs read


def write_palette_files(out_dir: str, palette: np.ndarray, counts: list[int],
                        title: str, storage_options: dict | None = None) -> list[list]:
    """Write ``palette.gpl`` (GIMP / Inkscape palette) and ``palette.png`` (a swatch strip).

    Parameters
    ----------
    out_dir : str
    palette : ndarray of shape (n_clusters, 3), uint8
    counts : list of int
        Pixels per cluster, for each colour's share in its name.
    title : str
        Names the palette (the job file).
    storage_options : dict, optional
        For an ``out_dir`` on object storage.

    Returns
    -------
    list
        ``[relative path, size in bytes]`` of both files.
    """
    from PIL import Image  # here: a raster run imports this module before its first task

    total = sum(counts) or 1
    lines = ["GIMP Palette", f"Name: kmeans-pipeline {os.path.basename(title)} "
             f"k={len(palette)}", f"Columns: {min(len(palette), 16)}", "#"]
    for j, (colour, count) in enumerate(zip(palette.tolist(), counts)):
        r, g, b = colour
        lines.append(f"{r:3d} {g:3d} {b:3d}\tcluster {j} {_hex(colour)} "
                     f"({100 * count / total:.1f}%)")
    text = ("\n".join(lines) + "\n").encode()
    strip = np.repeat(np.repeat(palette[None].astype(np.uint8), _SWATCH, 0), _SWATCH, 1)
    return [[GPL, images.atomic_write(_path(out_dir, GPL), lambda h: h.write(text),
                                     storage_options=storage_options)],
            [PALETTE_PNG, images.write_png(_path(out_dir, PALETTE_PNG),
                                          Image.fromarray(strip, mode="RGB"), 6,
                                          storage_options=storage_options)]]


def _hex(colour) -> str:
    return "#{:02x}{:02x}{:02x}".format(*(int(c) for c in colour))


# ---------------------------------------------------------------------------------------------
# report.html


def write_html(out_dir: str, report: dict, model_doc: dict | None,
               storage_options: dict | None = None) -> int:
    """Write ``report.html`` from the run's report and model.

    Parameters
    ----------
    out_dir : str
    report : dict
        What report.json holds.
    model_doc : dict or None
        What model.json holds (None when the run stopped before a model was fitted).
    storage_options : dict, optional
        For an ``out_dir`` on object storage.

    Returns
    -------
    int
        The page's size in bytes.
    """
    text = render_html(report, model_doc).encode()
    return images.atomic_write(_path(out_dir, HTML), lambda handle: handle.write(text),
                              storage_options=storage_options)


def render_html(report: dict, model_doc: dict | None) -> str:
    """The page as a string (see `write_html`)."""
    doc = model_doc or {}
    collection = doc.get("scope") == "collection" and "palette" in doc
    palette = [_hex(c) for c in doc.get("palette", [])] if collection else None
    cards = [_card(r, palette) for r in report.get("images", [])]
    sections = [_facts(report)]
    if collection:
        sections.append(_section("Collection palette", _swatches(palette, doc.get("counts"))
                                  + f'<p><img class="strip" src="{PALETTE_PNG}" alt="palette '
                                    f'strip"><br><a href="{PALETTE_PNG}">{PALETTE_PNG}</a>, '
                                    f'<a href="{GPL}">{GPL}</a> (GIMP / Inkscape)</p>'))
    if doc.get("history"):
        sections.append(_section("Convergence", _convergence(doc["history"])))
    classes = class_table(report.get("images", []))
    if classes:
        sections.append(_section("Classes (mean +- std per band, the bands' own units)",
                                 _classes_html(classes, palette)))
    auto = doc.get("auto_k") or report.get("auto_k")
    if auto:
        sections.append(_section("Error vs k (k: auto)", _error_chart(auto)))
    data = json_for_html({"pageSize": PAGE_SIZE, "images": cards})
    title = f"kmeans-pipeline report: {os.path.basename(str(report.get('job_file', '')))}"
    return _template("report.html").substitute(
        title=_esc(title), sections="\n".join(sections), data=data,
        script=_template("report.js").template, style=_template("report.css").template)


# Inside <script> the HTML parser ends the element at "</script" and switches state on "<!--"
# followed by "<script"; JSON cannot say either once "<" is "\u003c".  ">", "&" and "'" go too,
# as Jinja's |tojson filter does, so the text is safe in any HTML context.
_HTML_SAFE = str.maketrans({"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "'": "\\u0027"})


def json_for_html(value: Any) -> str:
    """``value`` as JSON that can sit inside a ``<script>`` element of an HTML page as it is.

    These four characters can only occur inside JSON strings, where the escapes mean the same.
    """
    return json.dumps(value, separators=(",", ":")).translate(_HTML_SAFE)


@functools.lru_cache(maxsize=None)
def _template(name: str) -> string.Template:
    """A file of ``pipeline/sinks/templates`` (package data): the page, its style, its script."""
    return string.Template(resources.files("pipeline.sinks").joinpath("templates", name)
                           .read_text(encoding="utf-8"))


def _esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _section(title: str, body: str) -> str:
    return f'<section><h2>{_esc(title)}</h2>\n{body}\n</section>'


def _card(record: dict, palette: list[str] | None) -> dict:
    """One image's entry for the page script (short keys: 1,000 of these are inlined)."""
    counts = record.get("counts") or []
    own = (record.get("palette") or {}).get("centroids")
    colours = [_hex(np.rint(c)) for c in own] if own else (palette or [])
    thumbs = [urllib.parse.quote(rel) for rel, _ in (record.get("outputs") or {}).get("thumbs", [])]
    return {"n": record.get("name") or os.path.basename(str(record.get("path"))),
            "p": record.get("path"), "s": record.get("status"), "e": record.get("error"),
            "w": record.get("width"), "h": record.get("height"), "t": thumbs,
            "c": colours[:len(counts)] if counts else [], "k": counts,
            "r": bool(record.get("resumed")), "notes": record.get("notes", [])}


def _swatches(colours: list[str], counts: list[int] | None) -> str:
    counts = counts or [0] * len(colours)
    total = sum(counts) or 1
    items = []
    for j, (colour, count) in enumerate(zip(colours, counts)):
        share = 100 * count / total
        items.append(f'<span class="item"><span class="swatch" style="background:{colour}" '
                     f'title="cluster {j} {colour} {share:.1f}%"></span>'
                     f'<span class="share">{j}: {colour} {share:.1f}%</span></span>')
    return f'<div class="swatches">{"".join(items)}</div>'


def _facts(report: dict) -> str:
    totals = report.get("totals", {})
    job = report.get("job", {})
    dask_cfg = job.get("dask", {})
    scheduler = dask_cfg.get("scheduler_file") or dask_cfg.get("scheduler")
    rows = [("job file", report.get("job_file")), ("status", report.get("status")),
            ("error", report.get("error")),
            ("started", report.get("started")), ("updated", report.get("updated")),
            ("scheduler", scheduler),
            ("images", f"{totals.get('ok', 0)} ok, {totals.get('skipped', 0)} skipped, "
                       f"{totals.get('failed', 0)} failed of {totals.get('images', 0)}; "
                       f"{totals.get('pixels', 0) / 1e6:.2f} Mpx"),
            ("k", (job.get("kmeans") or {}).get("k")),
            ("seconds per phase", ", ".join(f"{k} {v:.2f}"
                                            for k, v in report.get("timings", {}).items())),
            ("versions", ", ".join(f"{k} {v}" for k, v in report.get("versions", {}).items()))]
    table = "".join(f"<tr><th>{_esc(k)}</th><td>{_esc(v)}</td></tr>"
                    for k, v in rows if v not in (None, ""))
    bad = [r for r in report.get("images", []) if r.get("status") in ("skipped", "failed")]
    problems = "".join(f"<li>{_esc(r.get('status'))}: {_esc(r.get('path'))}: "
                       f"{_esc(r.get('error'))}</li>" for r in bad)
    warnings = "".join(f"<li>{_esc(w)}</li>" for w in report.get("warnings", []))
    body = f'<table class="facts">{table}</table>'
    if problems:
        body += (f'<details open><summary>{len(bad)} image(s) not segmented</summary>'
                 f'<ul class="problems">{problems}</ul></details>')
    if warnings:
        body += f'<details open><summary>warnings</summary><ul>{warnings}</ul></details>'
    return _section("Run", body)


def class_table(images: list[dict]) -> list[dict]:
    """Rasters (issue 12): the per-class table of every image done, combined: pixels, share,
    and the mean and standard deviation per band over all of them."""
    rows: dict[int, dict] = {}
    for entry in images:
        if entry.get("status") != "ok":
            continue
        for row in entry.get("classes") or []:
            if not row["pixels"]:
                continue
            into = rows.setdefault(row["class"], {"pixels": 0, "sum": {}, "squares": {}})
            n = row["pixels"]
            into["pixels"] += n
            for band, mean in row["mean"].items():
                std = row["std"][band]
                into["sum"][band] = into["sum"].get(band, 0.0) + n * mean
                into["squares"][band] = into["squares"].get(band, 0.0) + n * (std ** 2
                                                                             + mean ** 2)
    total = sum(r["pixels"] for r in rows.values()) or 1
    table = []
    for j in sorted(rows):
        r = rows[j]
        mean = {b: v / r["pixels"] for b, v in r["sum"].items()}
        std = {b: max(0.0, r["squares"][b] / r["pixels"] - mean[b] ** 2) ** 0.5 for b in mean}
        table.append({"class": j, "pixels": r["pixels"], "share": r["pixels"] / total,
                      "mean": mean, "std": std})
    return table


def _classes_html(table: list[dict], palette: list[str] | None) -> str:
    bands = list(table[0]["mean"])
    head = "".join(f"<th>{_esc(b)}</th>" for b in bands)
    body = ""
    for row in table:
        colour = palette[row["class"]] if palette and row["class"] < len(palette) else "#fff"
        cells = "".join(f"<td>{row['mean'][b]:.4g} &plusmn; {row['std'][b]:.3g}</td>"
                        for b in bands)
        body += (f'<tr><td><span class="swatch" style="background:{colour}"></span> '
                 f'{row["class"]}</td><td>{row["pixels"]}</td>'
                 f'<td>{100 * row["share"]:.1f} %</td>{cells}</tr>')
    return (f'<table class="facts"><tr><th>class</th><th>pixels</th><th>share</th>{head}</tr>'
            f"{body}</table>")


def _convergence(history: list[dict]) -> str:
    inertia = [(i + 1, h.get("inertia"), h.get("kind")) for i, h in enumerate(history)]
    shift = [(i + 1, h.get("shift"), h.get("kind")) for i, h in enumerate(history)]
    note = ("<p class=note>Mini-batch steps show the inertia of their batch; Lloyd steps that "
            "of the whole sample. Log scale.</p>")
    return ('<div class="charts">' + _chart("inertia per step", inertia, log=True)
            + _chart("centroid shift (sum of squares)", shift, log=True)
            + "</div>" + note)


def _error_chart(auto: dict) -> str:
    tried = auto.get("tried", [])
    points = [(t["k"], t["error"], "chosen" if t["k"] == auto.get("k") else "tried")
              for t in tried]
    met = "met" if auto.get("met") else "NOT met"
    metric = {"de76": "Delta-E 76", "de2000": "Delta-E 2000"}[auto.get("metric", "de76")]
    text = (f"<p>k = {_esc(auto.get('k'))} chosen after {len(tried)} fits; target mean "
            f"{metric} &le; {_esc(auto.get('max_error'))} ({met}).</p>")
    return text + _chart(f"mean CIELAB {metric} vs k", points, log=False,
                         target=auto.get("max_error"))


_KIND_COLOURS = {"minibatch": "#d9822b", "lloyd": "#2b6cd9", "tried": "#2b6cd9",
                 "chosen": "#1a9e3a"}


def _chart(title: str, points: list[tuple], log: bool, target: float | None = None,
           width: int = 420, height: int = 200) -> str:
    """A small inline SVG scatter-line chart of (x, y, kind) points."""
    points = [(x, y, kind) for x, y, kind in points if y is not None and np.isfinite(y)]
    if not points:
        return ""
    pad_l, pad_r, pad_t, pad_b = 56, 10, 22, 28

    def f(y: float) -> float:
        return float(np.log10(max(y, 1e-12))) if log else float(y)

    xs = [p[0] for p in points]
    ys = [f(p[1]) for p in points] + ([f(target)] if target is not None else [])
    x0, x1 = min(xs), max(xs) if max(xs) > min(xs) else min(xs) + 1
    y0, y1 = min(ys + ([] if log else [0.0])), max(ys)
    y1 = y1 if y1 > y0 else y0 + 1

    def sx(x: float) -> float:
        return pad_l + (x - x0) / (x1 - x0) * (width - pad_l - pad_r)

    def sy(y: float) -> float:
        return height - pad_b - (f(y) - y0) / (y1 - y0) * (height - pad_t - pad_b)

    line = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y, _ in sorted(points))
    dots = "".join(f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="2.5" '
                   f'fill="{_KIND_COLOURS.get(kind, "#444")}"><title>{x}: {y:.4g}</title>'
                   f'</circle>' for x, y, kind in points)
    label = (lambda v: f"{10 ** v:.3g}") if log else (lambda v: f"{v:.3g}")
    axis = (f'<text x="4" y="{pad_t + 4}" class="tick">{label(y1)}</text>'
            f'<text x="4" y="{height - pad_b}" class="tick">{label(y0)}</text>'
            f'<text x="{pad_l}" y="{height - 8}" class="tick">{x0}</text>'
            f'<text x="{width - pad_r}" y="{height - 8}" class="tick" '
            f'text-anchor="end">{x1}</text>')
    goal = ""
    if target is not None:
        goal = (f'<line x1="{pad_l}" x2="{width - pad_r}" y1="{sy(target):.1f}" '
                f'y2="{sy(target):.1f}" class="target"/>')
    kinds = sorted({kind for _, _, kind in points})
    legend = " ".join(f'<tspan fill="{_KIND_COLOURS.get(k, "#444")}">&#9679; {_esc(k)}</tspan>'
                      for k in kinds)
    return (f'<svg class="chart" width="{width}" height="{height}" role="img" '
            f'viewBox="0 0 {width} {height}"><text x="{pad_l}" y="14" class="title">'
            f'{_esc(title)}</text><text x="{width - pad_r}" y="14" text-anchor="end">{legend}'
            '</text>'
            f'<rect x="{pad_l}" y="{pad_t}" width="{width - pad_l - pad_r}" '
            f'height="{height - pad_t - pad_b}" class="frame"/>{goal}'
            f'<polyline points="{line}" class="line"/>{dots}{axis}</svg>')
