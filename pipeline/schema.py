"""Every job-file key, defined once as data: type, default, range, help (with units), flags.

``pipeline.config`` builds the frozen config dataclasses, validates job files and writes the JSON
Schema from ``KEYS``; ``configs/example.yaml`` and the README's key table are generated from it
(``python -m pipeline.schema --write``; ``tests/test_schema.py`` fails, naming the key, when they
drift).  Pure data and pure functions: no dask, no I/O except in ``main``.
"""

from __future__ import annotations

import json
import math
import re
import sys
from dataclasses import dataclass
from typing import Any

import yaml

COLOR_SPACES = ("rgb", "lab")
SCOPES = ("collection", "image")
ALGORITHMS = ("minibatch", "lloyd")
INITS = ("k-means++", "random")
ON_ERROR = ("skip", "fail")
IF_EXISTS = ("resume", "overwrite", "fail")
LOCAL_SCHEDULERS = ("threads", "processes", "synchronous", "local")
PERSIST = ("auto", "always", "never")
PLANES = ("all", "first")  # issue 12: rasters
MASKS = ("auto", "alpha", "none")
NORMALIZE = ("none", "standard", "robust")
ERROR_METRICS = ("auto", "de76", "de2000", "variance")
OUTPUT_FORMATS = ("auto", "png", "tiff", "zarr", "cog")
DITHERS = ("none", "floyd-steinberg")  # output.dither
MAX_PALETTE = 256  # colours in a PNG palette: the most a dithered segmented image can use
MAX_K = 65535
AUTO_K = "auto"  # kmeans.k: choose the smallest k meeting kmeans.max_error
# Pillow's own decompression-bomb limit (Image.MAX_IMAGE_PIXELS * 2 is its hard error).
DEFAULT_MAX_PIXELS = 178956970
# A worker below this cannot hold one decoded photo and its colour table; dask then pauses
# or kills it and the run fails with a misleading "lost the scheduler".
MIN_WORKER_MEMORY = 64 * 2**20
# A dask scheduler address: scheme, host, port 1-65535 (leading zeros allowed, as int() does).
ADDRESS = (r"^(tcp|tls|inproc|ws|wss)://.+:0*([1-9][0-9]{0,3}|[1-5][0-9]{4}|6[0-4][0-9]{3}"
           r"|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5])$")
_SIZE = r"^\s*[0-9]*\.?[0-9]+\s*[A-Za-z]*\s*$"  # what dask.utils.parse_bytes reads


class Loader(yaml.SafeLoader):
    """PyYAML's safe loader reading floats as YAML 1.2 does: ``1e-4`` is a number, not a string
    (PyYAML follows YAML 1.1, whose floats need a dot and a signed exponent), and refusing a
    key given twice in one mapping (`DuplicateKeyError`), as YAML 1.2 requires."""


Loader.add_implicit_resolver(  # copies SafeLoader's resolvers first: SafeLoader is unchanged
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."))


class DuplicateKeyError(yaml.constructor.ConstructorError):
    """A mapping gives one key twice; PyYAML would silently keep the last (two ``kmeans:``
    sections: the first one's keys lost)."""

    def __init__(self, key: Any, first: yaml.Mark, again: yaml.Mark) -> None:
        super().__init__(None, None, f"duplicate key {key!r}", again)
        self.key, self.first_line, self.line = key, first.line + 1, again.line + 1


def _construct_mapping(loader: Loader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen: dict = {}
    for key_node, _ in node.value:  # before merge keys (<<) are flattened: they may repeat
        if key_node.tag == "tag:yaml.org,2002:merge":
            continue
        key = loader.construct_object(key_node, deep=deep)
        try:
            first = seen.setdefault(key, key_node.start_mark)
        except TypeError:  # an unhashable key: construct_mapping says so
            continue
        if first is not key_node.start_mark:
            raise DuplicateKeyError(key, first, key_node.start_mark)
    return yaml.SafeLoader.construct_mapping(loader, node, deep)


Loader.add_constructor("tag:yaml.org,2002:map", _construct_mapping)


def load_yaml(text: str) -> Any:
    """``text`` parsed with :class:`Loader` (job files and ``--set`` values)."""
    return yaml.load(text, Loader=Loader)  # noqa: S506 (a SafeLoader subclass)


@dataclass(frozen=True)
class Key:
    """One job-file key.

    ``kind`` is one of ``integer``, ``integers`` (a list of them), ``number`` (int or float,
    stored as float), ``numbers`` (one number or a list of them), ``boolean``,
    ``enum`` (one of ``choices``), ``string`` (non-empty; ``choices`` are named values that are
    not paths), ``strings`` (a list of non-empty strings, or one string), ``mapping``, ``size``
    (bytes: ``'auto'``, an integer or a string such as ``'2GiB'``).
    """

    section: str
    name: str
    kind: str
    default: Any
    help: str  # one line, with units; the comment in configs/example.yaml
    choices: tuple = ()
    minimum: float | None = None
    maximum: float | None = None
    exclusive: bool = False  # the minimum itself is refused
    also: tuple = ()  # integer keys: named values accepted besides the numbers (k: auto)
    pattern: str | None = None  # enum keys: strings of this form are accepted too
    pattern_text: str = ""  # how the pattern is described in messages
    nullable: bool = False
    min_items: int = 0  # strings: an empty list is refused
    is_path: bool = False  # relative values are resolved against the job file's folder
    hashed: bool = True  # part of the job hash (it changes the outputs)
    # hashed only when set to another value than the default: a key added later leaves the
    # hash of every job that does not use it unchanged (resume of older output folders)
    hash_if_set: bool = False
    secrets: bool = False  # may hold credentials: masked in model.json and report.json
    required: str = ""  # required key: what to give (the message when it is missing)
    example: Any = None  # the value configs/example.yaml shows, when not the default

    @property
    def path(self) -> str:
        return f"{self.section}.{self.name}"

    def expectation(self) -> str:
        """What a valid value is: ``must be ...`` (the text of a validation error)."""
        if self.kind == "integer":
            lo, hi = self.minimum, self.maximum
            text = (f"must be an integer from {lo} to {hi}" if lo is not None and hi is not None
                    else f"must be an integer >= {lo}" if lo is not None
                    else "must be an integer")
        elif self.kind == "integers":
            return f"must be a list of integers >= {self.minimum}"
        elif self.kind == "numbers":
            return "must be a number or a list of numbers"
        elif self.kind == "number":
            text = f"must be a number {'>' if self.exclusive else '>='} {float(self.minimum)}"
        elif self.kind == "boolean":
            return "must be true or false"
        elif self.kind == "enum":
            text = "must be one of " + ", ".join(map(repr, self.choices))
            if self.pattern:
                text += f" or {self.pattern_text}"
            return text
        elif self.kind == "string":
            return "must be a non-empty string"
        elif self.kind == "strings":
            return "must be a list of non-empty strings"
        elif self.kind == "mapping":
            return "must be a mapping"
        elif self.kind == "size":
            return (f"must be 'auto', or a size of at least {MIN_WORKER_MEMORY // 2**20}MiB "
                    "like '2GiB'")
        else:
            raise ValueError(f"{self.path}: unknown kind {self.kind!r}")
        return text + "".join(f" or {a!r}" for a in self.also)

    def check(self, value: Any) -> str | None:
        """None when ``value`` is valid for this key, else the expectation it fails."""
        if value is None and self.nullable:
            return None
        if self.kind == "strings" and value == [] and self.min_items:
            return "must list at least one file, folder or glob"
        return None if self._valid(value) else self.expectation()

    def _valid(self, value: Any) -> bool:
        kind = self.kind
        if kind == "integer":
            return value in self.also or (_is_int(value) and self._in_range(value))
        if kind == "integers":
            return isinstance(value, list) and bool(value) and all(
                _is_int(v) and self._in_range(v) for v in value)
        if kind == "numbers":
            return _is_number(value) or (isinstance(value, list) and bool(value)
                                         and all(_is_number(v) for v in value))
        if kind == "number":
            return (_is_number(value) and math.isfinite(value) and self._in_range(value))
        if kind == "boolean":
            return isinstance(value, bool)
        if kind == "enum":
            return value in self.choices or (
                self.pattern is not None and isinstance(value, str)
                and re.match(self.pattern, value) is not None)
        if kind == "string":
            return isinstance(value, str) and bool(value)
        if kind == "strings":
            return isinstance(value, str) or (
                isinstance(value, list) and all(isinstance(v, str) and v for v in value))
        if kind == "mapping":
            return isinstance(value, dict)
        if kind == "size":
            return _is_size(value)
        raise ValueError(f"{self.path}: unknown kind {kind!r}")

    def _in_range(self, value: float) -> bool:
        if self.minimum is not None and (value <= self.minimum if self.exclusive
                                         else value < self.minimum):
            return False
        return self.maximum is None or value <= self.maximum

    def json_schema(self) -> dict:
        """This key as a JSON Schema (draft 2020-12) fragment."""
        options = self._json_types()
        if self.nullable:
            options.append({"type": "null"})
        body = options[0] if len(options) == 1 else {"anyOf": options}
        default = list(self.default) if isinstance(self.default, tuple) else self.default
        return {"description": self.help, **({} if self.required else {"default": default}),
                **body}

    def _json_types(self) -> list[dict]:
        kind = self.kind
        if kind in ("integer", "number"):
            bounds = {}
            if self.minimum is not None:
                bounds["exclusiveMinimum" if self.exclusive else "minimum"] = self.minimum
            if self.maximum is not None:
                bounds["maximum"] = self.maximum
            numbers = [{"type": kind, **bounds}]
            return numbers + ([{"enum": list(self.also)}] if self.also else [])
        if kind == "integers":
            return [{"type": "array", "minItems": 1,
                     "items": {"type": "integer", "minimum": self.minimum}}]
        if kind == "numbers":
            return [{"type": "number"}, {"type": "array", "minItems": 1,
                                         "items": {"type": "number"}}]
        if kind == "boolean":
            return [{"type": "boolean"}]
        if kind == "enum":
            named = [{"enum": list(self.choices)}]
            return named + ([{"type": "string", "pattern": self.pattern}] if self.pattern else [])
        if kind == "string":
            text = {"type": "string", "minLength": 1}
            return [{"enum": list(self.choices)}, text] if self.choices else [text]
        if kind == "strings":
            text = {"type": "string", "minLength": 1}
            items = {"type": "array", "items": text, **({"minItems": self.min_items}
                                                       if self.min_items else {})}
            return [items, {"type": "string"}]  # one path, as the loader takes it
        if kind == "mapping":
            return [{"type": "object"}]
        if kind == "size":
            return [{"const": "auto"}, {"type": "integer", "minimum": MIN_WORKER_MEMORY},
                    {"type": "string", "pattern": _SIZE}]
        raise ValueError(f"{self.path}: unknown kind {kind!r}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_size(value: Any) -> bool:
    if _is_int(value):
        return value >= MIN_WORKER_MEMORY
    if not (isinstance(value, str) and value):
        return False
    if value == "auto":
        return True
    from dask.utils import parse_bytes  # a pure function; no scheduler involved

    try:
        return parse_bytes(value) >= MIN_WORKER_MEMORY
    except (ValueError, TypeError):
        return False


_ADDRESS = "an address like 'tcp://127.0.0.1:8786'"

KEYS: tuple[Key, ...] = (
    Key("input", "paths", "strings", (), "files, folders (recursive), globs or URLs", min_items=1,
        is_path=True, required="list the images, folders or globs to segment",
        example=["../samples/photos/"]),
    Key("input", "exclude", "strings", (), "globs left out, e.g. \"**/thumbs/*\"; the output "
        "folder is never read"),
    Key("input", "on_error", "enum", "skip", "skip | fail: what an unreadable image does",
        choices=ON_ERROR),
    Key("input", "max_pixels", "integer", DEFAULT_MAX_PIXELS, "pixels per image; larger is "
        "refused from the header, before decoding", minimum=1),
    Key("input", "storage_options", "mapping", {}, "for URL inputs (s3://, gs://, az://, "
        "https://): passed to fsspec, e.g. {anon: true}", hashed=False, secrets=True),
    Key("input", "bands", "integers", None, "rasters: bands to use, numbered from 1 as in "
        "GDAL, in this order (null: every band but alpha or the mask band)", minimum=1,
        nullable=True, hash_if_set=True),
    Key("input", "axes", "string", None, "rasters: the stored array's axes when the file does "
        "not say, e.g. CYX (Y, X; C or S the bands; other letters planes)", nullable=True,
        hash_if_set=True),
    Key("input", "planes", "enum", "all", "rasters: all (one image per Z/T plane, named "
        "<name>/t1_z01) | first", choices=PLANES, hash_if_set=True),
    Key("input", "level", "integer", 0, "rasters: pyramid level of multiscale and whole-slide "
        "images (0: full resolution)", minimum=0, hash_if_set=True),
    Key("input", "mask", "enum", "auto", "auto (the alpha band or channel) | alpha | band:N "
        "(rasters) | none: pixels where that band is 0 are masked (photos: alpha 0; none: alpha "
        "dropped)", choices=MASKS,
        pattern=r"^band:[1-9][0-9]*$", pattern_text="'band:N'", hash_if_set=True),
    Key("input", "nodata", "numbers", None, "rasters: nodata value overriding the file's, "
        "one for every band or one per band (null: the file's GDAL_NODATA); photos: pixels of "
        "that 8-bit colour are masked (one value for R = G = B, or three)", nullable=True,
        hash_if_set=True),
    Key("input", "apply_scale", "boolean", False, "georeferenced rasters (geo extra): value x "
        "scale + offset per band, as float32 (e.g. Landsat Collection 2 reflectance)",
        hash_if_set=True),
    Key("preprocess", "scale", "number", 1.0, "resize factor (0.5 = half width and height), "
        "like the tutorial's scale_percent / 100", minimum=0.0, exclusive=True),
    Key("preprocess", "color_space", "enum", "rgb", "rgb | lab (CIELAB D65: perceptual "
        "distances)", choices=COLOR_SPACES),
    Key("preprocess", "spatial_weight", "number", 0.0, "> 0: add (x, y) / longest side x "
        "weight x colour range (255 rgb, 100 lab) as features: spatially coherent segments "
        "(minibatch only)", minimum=0.0),
    Key("preprocess", "normalize", "enum", "none", "rasters: none (bands in their own units) | "
        "standard (mean/std) | robust (median/IQR), per band, from the sample",
        choices=NORMALIZE, hash_if_set=True),
    Key("preprocess", "display_bands", "integers", None, "rasters: 3 bands (from 1) shown as "
        "RGB in the report (null: bands named red/green/blue, else the first three)",
        minimum=1, nullable=True, hash_if_set=True),
    Key("kmeans", "k", "integer", 5, "number of clusters (1..65535), or auto: the smallest k "
        "meeting max_error", minimum=1, maximum=MAX_K, also=(AUTO_K,)),
    Key("kmeans", "scope", "enum", "collection", "collection: one palette for all images | "
        "image: one palette per image", choices=SCOPES),
    Key("kmeans", "algorithm", "enum", "minibatch", "minibatch (Sculley 2010, then Lloyd steps "
        "on the sample) | lloyd (full passes)", choices=ALGORITHMS),
    Key("kmeans", "init", "string", "k-means++", "k-means++ | random | path of a model.json to "
        "reuse its palette", choices=INITS, is_path=True),
    Key("kmeans", "batch_pixels", "integer", 65536, "pixels per mini-batch step", minimum=1),
    Key("kmeans", "max_iter", "integer", 100, "cap on steps per phase; 0 = no fitting, apply "
        "the init model's palette", minimum=0),
    Key("kmeans", "tol", "number", 1e-4, "converged when sum of squared centroid shifts <= tol "
        "x mean per-channel variance", minimum=0.0),
    Key("kmeans", "seed", "integer", 0, "same seed, same model and label maps on every "
        "scheduler", minimum=0, maximum=2**32 - 1),
    Key("kmeans", "n_init", "integer", 3, "k-means++ starts on the sample; the best (lowest "
        "inertia) is kept", minimum=1, maximum=100),
    Key("kmeans", "sample_pixels", "integer", 1 << 20, "pixels sampled (reproducibly) for "
        "seeding and mini-batch steps", minimum=1),
    Key("kmeans", "refine", "boolean", True, "minibatch: finish with full Lloyd steps on the "
        "sample's colour histogram"),
    Key("kmeans", "max_error", "number", 4.0, "k: auto: target mean colour error of the painted "
        "image, in kmeans.error_metric's units: Delta-E (~2.3 de76 or ~1 de2000: just "
        "noticeable); with error_metric variance the share of variance left (0.05 when not "
        "given)", minimum=0.0, exclusive=True),
    Key("kmeans", "max_k", "integer", 64, "k: auto: largest k tried; if even max_k misses "
        "max_error, max_k is used and a warning says so", minimum=1, maximum=MAX_K),
    Key("kmeans", "error_metric", "enum", "auto", "k: auto: de76 (CIE 1976, Euclidean CIELAB "
        "Delta-E of the painted image) | de2000 (CIEDE2000, the one colour scientists quote) | "
        "variance (share of the sample's variance left unexplained; max_error is that share) | "
        "auto (de76 for RGB photos, variance for rasters)",
        choices=ERROR_METRICS, hash_if_set=True),
    Key("output", "dir", "string", "out", "output folder, relative to the job file (left "
        "out: out, next to the job file)", is_path=True,
        example="../out/example"),
    Key("output", "segmented", "boolean", True, "segmented/<name>.png: each pixel painted with "
        "its centroid colour"),
    Key("output", "labels", "boolean", True, "labels/<name>.png: cluster index 0..k-1, uint8 "
        "when k <= 255, else uint16 (masked pixels 255 or 65535)"),
    Key("output", "masks", "boolean", True, "masks/<name>/<j>.png: 255 where the label is j, "
        "else 0"),
    Key("output", "format", "enum", "auto", "auto (png for photos, cog for georeferenced "
        "rasters, tiff for other TIFF rasters, zarr for zarr) | png | tiff | zarr | cog", choices=OUTPUT_FORMATS, hash_if_set=True),
    Key("output", "dither", "enum", "none", "none | floyd-steinberg: the segmented image "
        "error-diffused to the palette (k <= 256; label maps and masks stay undithered)",
        choices=DITHERS, hash_if_set=True),
    Key("output", "if_exists", "enum", "resume", "resume (skip images already complete) | "
        "overwrite | fail", choices=IF_EXISTS, hashed=False),
    Key("output", "png_compression", "integer", 1, "zlib level 0-9: 1 (zlib run-length mode) is "
        "fastest, and on label maps within 3 % of 9 (smallest); 2-6 are larger than 1",
        minimum=0, maximum=9),
    Key("output", "storage_options", "mapping", {}, "for a URL output.dir (s3://, gs://, "
        "az://): passed to fsspec", hashed=False, secrets=True),
    Key("dask", "scheduler", "enum", None, "null: DASK_SCHEDULER_ADDRESS, dask config or an "
        "active Client decide, else threads | threads | processes | synchronous | local (a "
        "LocalCluster) | tcp://host:port", choices=LOCAL_SCHEDULERS, pattern=ADDRESS,
        pattern_text=_ADDRESS, nullable=True, hashed=False),
    Key("dask", "chunk_pixels", "integer", 4194304, "most pixels per chunk; a larger image is "
        "split into row bands", minimum=1, hashed=False),
    Key("dask", "n_workers", "integer", None, "local: worker processes (null: dask picks)",
        minimum=1, nullable=True, hashed=False),
    Key("dask", "threads_per_worker", "integer", None, "local: threads per worker (null: dask "
        "picks)", minimum=1, nullable=True, hashed=False),
    Key("dask", "memory_limit", "size", "auto", "local: memory per worker, e.g. 2GiB",
        hashed=False),
    Key("dask", "dashboard", "boolean", False, "local: serve dask's dashboard on 127.0.0.1 "
        "(needs bokeh; adds 0.3-0.4 s to the cluster's start-up)", hashed=False),
    Key("dask", "scheduler_file", "string", None, "a scheduler file written by `dask scheduler "
        "--scheduler-file`", nullable=True, is_path=True, hashed=False),
    Key("dask", "timeout", "number", 10.0, "seconds to reach a remote scheduler with a worker "
        "(else exit 2), and to wait for a lost one (then exit 1)", minimum=0.0, exclusive=True,
        hashed=False),
    Key("dask", "persist", "enum", "auto", "auto | always | never: keep decoded pixels "
        "between the passes (in this process on threads, in worker memory on a cluster: each "
        "image decoded once), and lloyd's per-chunk colour histograms; auto: when they take "
        "under a quarter of the memory", choices=PERSIST, hashed=False),
    Key("dask", "config", "mapping", {}, "passed to dask.config.set, e.g. "
        "{\"distributed.comm.timeouts.connect\": \"30s\"}", hashed=False),
    Key("dask", "performance_report", "string", None, "a path: dask's performance report (HTML) "
        "of the run; needs a distributed scheduler (a LocalCluster when none is configured)",
        nullable=True, is_path=True, hashed=False),
)

SECTIONS: dict[str, dict[str, Key]] = {}
for _key in KEYS:
    SECTIONS.setdefault(_key.section, {})[_key.name] = _key
del _key

SECTION_HELP = {
    "input": "which images to read, and what an unreadable one does",
    "preprocess": "features the clustering sees: size, colour space, positions",
    "kmeans": "the k-means fit",
    "output": "what is written, and where",
    "dask": "where the work runs (not part of the job hash)",
}


# ---------------------------------------------------------------------------------------------
# Generated documents: configs/example.yaml and the README's key table

EXAMPLE_HEADER = ("# Example job: segment the bundled sample photos into 5 colours.\n"
                  "# Every key is shown with its default; paths are relative to this file.\n"
                  "# Generated from pipeline/schema.py: edit it there, then run\n"
                  "# `python -m pipeline.schema --write`.\n")
README_BEGIN = "<!-- job-file keys: generated by `python -m pipeline.schema --write` -->"
README_END = "<!-- end of job-file keys -->"
_COMMENT_COLUMN = 33


def yaml_value(value: Any) -> str:
    """``value`` as a one-line YAML flow value that :func:`load_yaml` reads back unchanged."""
    if isinstance(value, float) and value != 0 and abs(value) < 1e-3:
        mantissa, exponent = f"{value:e}".split("e")
        text = f"{float(mantissa)!r}e{int(exponent)}"  # 1.0e-4: a float in YAML 1.1 and 1.2
    elif isinstance(value, (bool, int, float)) or value is None:
        text = json.dumps(value)
    elif isinstance(value, str):
        text = value if _reads_back(value) else json.dumps(value)
    else:
        text = json.dumps(list(value) if isinstance(value, tuple) else value)
    assert load_yaml(text) == value or (isinstance(value, tuple) and load_yaml(text) == list(value))
    return text


def _reads_back(text: str) -> bool:
    try:
        return load_yaml(text) == text
    except yaml.YAMLError:
        return False


def example_lines() -> dict[str, str]:
    """``section.key`` -> its line in configs/example.yaml (value and help comment)."""
    lines = {}
    for key in KEYS:
        value = key.example if key.example is not None else key.default
        line = f"  {key.name}: {yaml_value(value)}"
        lines[key.path] = f"{line.ljust(_COMMENT_COLUMN - 1)} # {key.help}"
    return lines


def example_yaml() -> str:
    """The text of configs/example.yaml."""
    lines, text = example_lines(), EXAMPLE_HEADER
    for section, keys in SECTIONS.items():
        text += f"{section}:\n" + "".join(lines[f"{section}.{name}"] + "\n" for name in keys)
    return text


def allowed(key: Key) -> str:
    """The values ``key`` accepts, in words (the README table's column)."""
    text = key.expectation().removeprefix("must be ")
    if key.kind == "string" and key.choices:
        text = " | ".join(key.choices) + (" | a path" if key.is_path else " | a string")
    elif key.kind == "strings":
        text = "one string or " + text + (" (at least one)" if key.min_items else "")
    return text + (", or null" if key.nullable else "")


def readme_rows() -> dict[str, str]:
    """``section.key`` -> its row in the README's key table."""
    def cell(text: str) -> str:
        return text.replace("|", "\\|")

    rows = {}
    for key in KEYS:
        default = "required" if key.required else f"`{yaml_value(key.default)}`"
        rows[key.path] = (f"| `{key.path}` | {default} | {cell(allowed(key))} | "
                          f"{cell(key.help)} |")
    return rows


def readme_table() -> str:
    """The README's key table, between its markers."""
    head = "| key | default | allowed | meaning |\n|---|---|---|---|\n"
    return (README_BEGIN + "\n" + head + "".join(row + "\n" for row in readme_rows().values())
            + README_END)


def splice_readme(readme: str) -> str:
    """``readme`` with its key table replaced by the generated one."""
    start, end = readme.index(README_BEGIN), readme.index(README_END) + len(README_END)
    return readme[:start] + readme_table() + readme[end:]


def main(argv: list[str] | None = None) -> int:
    """``python -m pipeline.schema --write [ROOT]``: regenerate configs/example.yaml and the
    README's key table under ROOT (default: the current folder); ``--example`` prints the
    example."""
    import os

    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["--example"]:
        sys.stdout.write(example_yaml())
        return 0
    if args[:1] != ["--write"]:
        print("usage: python -m pipeline.schema --write [ROOT] | --example", file=sys.stderr)
        return 2
    root = args[1] if len(args) > 1 else "."
    with open(os.path.join(root, "configs", "example.yaml"), "w", encoding="utf-8") as handle:
        handle.write(example_yaml())
    readme = os.path.join(root, "README.md")
    with open(readme, encoding="utf-8") as handle:
        text = splice_readme(handle.read())
    with open(readme, "w", encoding="utf-8") as handle:
        handle.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
