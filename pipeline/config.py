"""Job file (YAML) -> frozen dataclasses, with every key, type and range checked.

The schema is data (``_SCHEMA``): one ``_Key`` per job-file key, giving its type, default and
allowed range.  Validation walks the user's mapping against it and collects *every* problem
before raising, so ``kmeans-pipeline validate`` can list them all at once.  No dask import here.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import hashlib
import json
import math
import os
from dataclasses import dataclass, field
from typing import Any, Callable

import yaml

from pipeline.errors import ConfigError

COLOR_SPACES = ("rgb", "lab")
SCOPES = ("collection", "image")
ALGORITHMS = ("minibatch", "lloyd")
INITS = ("k-means++", "random")
ON_ERROR = ("skip", "fail")
IF_EXISTS = ("resume", "overwrite", "fail")
LOCAL_SCHEDULERS = ("threads", "processes", "synchronous", "local")
PERSIST = ("auto", "always", "never")
MAX_K = 65535
AUTO_K = "auto"  # kmeans.k: choose the smallest k meeting kmeans.max_error
# Pillow's own decompression-bomb limit (Image.MAX_IMAGE_PIXELS * 2 is its hard error).
DEFAULT_MAX_PIXELS = 178956970


@dataclass(frozen=True)
class InputConfig:
    paths: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    on_error: str = "skip"
    max_pixels: int = DEFAULT_MAX_PIXELS
    storage_options: dict = field(default_factory=dict)  # fsspec options for URL inputs


@dataclass(frozen=True)
class PreprocessConfig:
    scale: float = 1.0
    color_space: str = "rgb"
    spatial_weight: float = 0.0  # > 0: normalised (x, y) positions join the colour features


@dataclass(frozen=True)
class KMeansConfig:
    """k-means settings.

    ``tol`` is relative: the fit has converged when the sum over centroids of the squared
    centroid shift of one step is at most ``tol`` times the mean per-channel variance of the
    fitted pixels (in the working colour space), as in scikit-learn's KMeans.
    """

    k: int | str = 5  # or AUTO_K
    scope: str = "collection"
    algorithm: str = "minibatch"
    init: str = "k-means++"
    batch_pixels: int = 65536
    max_iter: int = 100
    tol: float = 1e-4
    seed: int = 0
    n_init: int = 3
    sample_pixels: int = 1 << 20
    refine: bool = True
    max_error: float = 4.0  # k: auto: target mean CIELAB Delta-E 76 of the painted colours
    max_k: int = 64  # k: auto: largest k tried

    @property
    def n_clusters(self) -> int:
        return self.k

    @property
    def init_is_model(self) -> bool:
        return self.init not in INITS

    @property
    def auto_k(self) -> bool:
        return self.k == AUTO_K


@dataclass(frozen=True)
class OutputConfig:
    dir: str = "out"
    segmented: bool = True
    labels: bool = True
    masks: bool = True
    if_exists: str = "resume"
    png_compression: int = 1
    storage_options: dict = field(default_factory=dict)  # fsspec options for a URL output.dir


@dataclass(frozen=True)
class DaskConfig:
    scheduler: str = "threads"
    chunk_pixels: int = 4194304
    n_workers: int | None = None
    threads_per_worker: int | None = None
    memory_limit: str = "auto"
    scheduler_file: str | None = None
    timeout: float = 10.0
    persist: str = "auto"
    config: dict = field(default_factory=dict)


@dataclass(frozen=True)
class JobConfig:
    input: InputConfig
    preprocess: PreprocessConfig
    kmeans: KMeansConfig
    output: OutputConfig
    dask: DaskConfig
    source: str = "<job>"  # the job file as the user named it, for messages
    base_dir: str = "."  # folder of the job file: every relative path is relative to it
    given: frozenset[str] = frozenset()  # "section.key" the user set (job file or --set)

    def to_dict(self) -> dict:
        """The resolved job as plain data (what model.json and report.json record); secrets
        in ``storage_options`` are masked."""
        data = {name: dataclasses.asdict(getattr(self, name)) for name in _SECTIONS}
        for section in ("input", "output"):
            data[section]["storage_options"] = _masked(data[section]["storage_options"])
        return data

    def job_hash(self) -> str:
        """Hash of everything that changes the outputs (not if_exists, not the scheduler)."""
        data = self.to_dict()
        data["output"].pop("if_exists")
        data["input"].pop("storage_options")  # how to reach the data, not what it is
        data["output"].pop("storage_options")
        data.pop("dask")
        text = json.dumps(data, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


_SECRET = ("secret", "token", "password", "key", "credential", "connection_string", "sas")


def _masked(value: Any) -> Any:
    """``value`` with every entry whose key names a secret (password, token...) masked."""
    if isinstance(value, dict):
        return {k: "***" if any(s in str(k).lower() for s in _SECRET) and v is not None
                else _masked(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_masked(v) for v in value]
    return value


# ---------------------------------------------------------------------------------------------
# The schema


@dataclass(frozen=True)
class _Key:
    check: Callable[[Any], str | None]  # returns the expectation text when the value is bad
    is_path: bool = False


def _int(lo: int | None = None, hi: int | None = None) -> Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        bad = isinstance(value, bool) or not isinstance(value, int)
        bad = bad or (lo is not None and value < lo) or (hi is not None and value > hi)
        if not bad:
            return None
        if lo is not None and hi is not None:
            return f"must be an integer from {lo} to {hi}"
        return f"must be an integer >= {lo}" if lo is not None else "must be an integer"

    return check


def _float(lo: float, inclusive: bool = True) -> Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        ok = ok and math.isfinite(value) and (value >= lo if inclusive else value > lo)
        return None if ok else f"must be a number {'>=' if inclusive else '>'} {lo}"

    return check


def _bool(value: Any) -> str | None:
    return None if isinstance(value, bool) else "must be true or false"


def _enum(*choices: str) -> Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        return None if value in choices else "must be one of " + ", ".join(map(repr, choices))

    return check


def _str(value: Any) -> str | None:
    return None if isinstance(value, str) and value else "must be a non-empty string"


def _optional(check: Callable[[Any], str | None]) -> Callable[[Any], str | None]:
    def inner(value: Any) -> str | None:
        return None if value is None else check(value)

    return inner


def _str_list(value: Any) -> str | None:
    if isinstance(value, str):
        return None  # a single path is accepted as a one-item list
    ok = isinstance(value, list) and all(isinstance(v, str) and v for v in value)
    return None if ok else "must be a list of non-empty strings"


def _path_list(value: Any) -> str | None:
    if value == []:
        return "must list at least one file, folder or glob"
    return _str_list(value)


def _k(value: Any) -> str | None:
    if value == AUTO_K or _int(1, MAX_K)(value) is None:
        return None
    return f"must be an integer from 1 to {MAX_K} or {AUTO_K!r}"


def _mapping(value: Any) -> str | None:
    return None if isinstance(value, dict) else "must be a mapping"


def _scheduler(value: Any) -> str | None:
    if isinstance(value, str) and (value in LOCAL_SCHEDULERS or _is_address(value)):
        return None
    return ("must be one of " + ", ".join(map(repr, LOCAL_SCHEDULERS))
            + " or an address like 'tcp://127.0.0.1:8786'")


def _is_address(value: str) -> bool:
    for scheme in ("tcp://", "tls://", "inproc://", "ws://", "wss://"):
        if value.startswith(scheme):
            host, _, port = value[len(scheme):].rpartition(":")
            return bool(host) and port.isdigit() and 0 < int(port) < 65536
    return False


# A worker below this cannot hold one decoded photo and its colour table; dask then pauses
# or kills it and the run fails with a misleading "lost the scheduler".
_MIN_WORKER_MEMORY = 64 * 2**20


def _memory(value: Any) -> str | None:
    if isinstance(value, int) and not isinstance(value, bool) and value >= _MIN_WORKER_MEMORY:
        return None
    if isinstance(value, str) and value:
        try:
            from dask.utils import parse_bytes  # a pure function; no scheduler involved

            if value == "auto" or parse_bytes(value) >= _MIN_WORKER_MEMORY:
                return None
        except (ValueError, TypeError):
            pass
    return "must be 'auto', or a size of at least 64MiB like '2GiB'"


_SCHEMA: dict[str, dict[str, _Key]] = {
    "input": {
        "paths": _Key(_path_list, is_path=True),
        "exclude": _Key(_str_list),
        "on_error": _Key(_enum(*ON_ERROR)),
        "max_pixels": _Key(_int(1)),
        "storage_options": _Key(_mapping),
    },
    "preprocess": {
        "scale": _Key(_float(0.0, inclusive=False)),
        "color_space": _Key(_enum(*COLOR_SPACES)),
        "spatial_weight": _Key(_float(0.0)),
    },
    "kmeans": {
        "k": _Key(_k),
        "scope": _Key(_enum(*SCOPES)),
        "algorithm": _Key(_enum(*ALGORITHMS)),
        "init": _Key(_str, is_path=True),
        "batch_pixels": _Key(_int(1)),
        "max_iter": _Key(_int(0)),
        "tol": _Key(_float(0.0)),
        "seed": _Key(_int(0, 2**32 - 1)),
        "n_init": _Key(_int(1, 100)),
        "sample_pixels": _Key(_int(1)),
        "refine": _Key(_bool),
        "max_error": _Key(_float(0.0, inclusive=False)),
        "max_k": _Key(_int(1, MAX_K)),
    },
    "output": {
        "dir": _Key(_str, is_path=True),
        "segmented": _Key(_bool),
        "labels": _Key(_bool),
        "masks": _Key(_bool),
        "if_exists": _Key(_enum(*IF_EXISTS)),
        "png_compression": _Key(_int(0, 9)),
        "storage_options": _Key(_mapping),
    },
    "dask": {
        "scheduler": _Key(_scheduler),
        "chunk_pixels": _Key(_int(1)),
        "n_workers": _Key(_optional(_int(1))),
        "threads_per_worker": _Key(_optional(_int(1))),
        "memory_limit": _Key(_memory),
        "scheduler_file": _Key(_optional(_str), is_path=True),
        "timeout": _Key(_float(0.0, inclusive=False)),
        "persist": _Key(_enum(*PERSIST)),
        "config": _Key(_mapping),
    },
}
_SECTIONS = {"input": InputConfig, "preprocess": PreprocessConfig, "kmeans": KMeansConfig,
             "output": OutputConfig, "dask": DaskConfig}


# ---------------------------------------------------------------------------------------------
# Loading


def load_config(path: str, overrides: list[str] = (), scheduler: str | None = None) -> JobConfig:
    """Read, merge and validate a job file.

    Parameters
    ----------
    path : str
        The YAML job file. Relative paths inside it are relative to its folder.
    overrides : list of str
        ``section.key=value`` strings (``--set``); values are parsed as YAML scalars.
    scheduler : str, optional
        ``--scheduler``: replaces ``dask.scheduler``.

    Returns
    -------
    JobConfig

    Raises
    ------
    ConfigError
        Listing every problem found, one per line, each naming the file and key.
    """
    return build_config(_read_yaml(path), path, overrides, scheduler)


def build_config(raw: dict, source: str, overrides: list[str] = (),
                 scheduler: str | None = None, base_dir: str | None = None) -> JobConfig:
    """Validate a job given as a mapping of sections (what a job file holds).

    ``source`` names the job in messages; relative paths are relative to ``base_dir``
    (default: the folder of ``source``).  ``overrides`` and ``scheduler`` as for `load_config`.

    Raises
    ------
    ConfigError
        Listing every problem found, one per line, each naming the job and key.
    """
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: job must be a mapping of sections (input, kmeans, ...), "
                          f"got {type(raw).__name__}")
    raw = copy.deepcopy(raw)
    problems: list[str] = []
    for item in overrides:
        _apply_override(raw, item, problems)
    if scheduler is not None:
        raw.setdefault("dask", {})
        if isinstance(raw["dask"], dict):
            raw["dask"]["scheduler"] = scheduler
    job = _build(raw, source, problems, base_dir)
    if problems:
        raise ConfigError("\n".join(f"{source}: {p}" for p in problems))
    return job


def read_job_file(path: str) -> dict:
    """A job file's mapping of sections, before validation (see `build_config`)."""
    return _read_yaml(path)


def _read_yaml(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except FileNotFoundError:
        raise ConfigError(f"{path}: job file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read job file ({exc})") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{path}: YAML syntax error at {where}{problem}") from exc
    if data is None:
        raise ConfigError(f"{path}: job file is empty; start from configs/example.yaml")
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: job file must be a mapping of sections (input, kmeans, ...), "
                          f"got {type(data).__name__}")
    return data


def _apply_override(raw: dict, item: str, problems: list[str]) -> None:
    key, sep, text = item.partition("=")
    section, dot, name = key.strip().partition(".")
    if not sep or not dot or not name:
        problems.append(f"--set {item!r}: expected section.key=value, e.g. kmeans.k=8")
        return
    try:
        value = yaml.safe_load(text) if text.strip() else ""
    except yaml.YAMLError:
        value = text
    if section not in _SCHEMA:
        problems.append(f"--set {key}: unknown section {section!r}{_suggest(section, _SCHEMA)}")
        return
    if name not in _SCHEMA[section]:
        problems.append(f"--set {key}: unknown key{_suggest(name, _SCHEMA[section])}")
        return
    target = raw.setdefault(section, {})
    if isinstance(target, dict):
        target[name] = value


def _suggest(name: str, valid) -> str:
    close = difflib.get_close_matches(str(name), list(valid), n=1, cutoff=0.5)
    return f" (did you mean {close[0]!r}?)" if close else f" (valid: {', '.join(valid)})"


def _describe(value: Any) -> str:
    return f"{value!r} ({type(value).__name__})"


def _build(raw: dict, path: str, problems: list[str], base_dir: str | None = None) -> JobConfig:
    base_dir = os.path.abspath(base_dir) if base_dir is not None else \
        os.path.dirname(os.path.abspath(path))
    sections = {}
    named: set[str] = set()
    for section_name in raw:
        if section_name not in _SCHEMA:
            problems.append(f"{section_name}: unknown section{_suggest(section_name, _SCHEMA)}")
    for section_name, cls in _SECTIONS.items():
        given = raw.get(section_name) or {}
        if not isinstance(given, dict):
            problems.append(f"{section_name}: must be a mapping, got {_describe(given)}")
            given = {}
        values = {}
        for key, value in given.items():
            spec = _SCHEMA[section_name].get(key)
            if spec is None:
                problems.append(f"{section_name}.{key}: unknown key"
                                f"{_suggest(key, _SCHEMA[section_name])}")
                continue
            expected = spec.check(value)
            if expected:
                problems.append(f"{section_name}.{key}: {expected}, got {_describe(value)}")
                continue
            values[key] = _normalise(section_name, key, value, base_dir)
            named.add(f"{section_name}.{key}")
        sections[section_name] = cls(**values)
    given_input = raw.get("input")
    if not (isinstance(given_input, dict) and "paths" in given_input) and not problems:
        problems.append("input.paths: required: list the images, folders or globs to segment")
    _check_across(sections, problems)
    return JobConfig(**sections, source=path, base_dir=base_dir, given=frozenset(named))


def _normalise(section: str, key: str, value: Any, base_dir: str) -> Any:
    if section == "input" and key in ("paths", "exclude"):
        items = [value] if isinstance(value, str) else list(value)
        if key == "paths":
            items = [resolve_path(v, base_dir) for v in items]
        return tuple(items)
    if key == "init":
        return value if value in INITS else resolve_path(value, base_dir)
    if _SCHEMA[section][key].is_path and isinstance(value, str):
        return resolve_path(value, base_dir)
    if section == "preprocess" and key in ("scale", "spatial_weight"):
        return float(value)
    if section == "kmeans" and key in ("tol", "max_error"):
        return float(value)
    return value


def resolve_path(value: str, base_dir: str) -> str:
    """A job-file path made absolute against the job file's folder (URLs are left alone)."""
    if "://" in value:
        return value
    return os.path.normpath(os.path.join(base_dir, os.path.expanduser(value)))


def _check_across(sections: dict, problems: list[str]) -> None:
    km: KMeansConfig = sections["kmeans"]
    if not km.auto_k and km.batch_pixels < km.k:
        problems.append(f"kmeans.batch_pixels: must be >= kmeans.k ({km.k}), got {km.batch_pixels}")
    _check_auto_and_spatial(km, sections["preprocess"], problems)
    if km.max_iter == 0 and not km.init_is_model:
        problems.append("kmeans.max_iter: 0 means no fitting, which needs kmeans.init to name a "
                        "model.json whose palette is applied")
    if km.init_is_model and "://" not in km.init and not os.path.isfile(km.init):
        problems.append(f"kmeans.init: model file {km.init!r} not found; give 'k-means++', "
                        "'random' or the path of a model.json written by an earlier run")
    out: OutputConfig = sections["output"]
    if not (out.segmented or out.labels or out.masks):
        problems.append("output: segmented, labels and masks are all false; "
                        "enable at least one output")
    if "://" not in out.dir:
        _check_output_dir(out.dir, problems)
    _check_urls(sections, problems)


def _check_urls(sections: dict, problems: list[str]) -> None:
    from pipeline import storage  # imports fsspec only for URLs

    out: OutputConfig = sections["output"]
    urls = [("input.paths", p) for p in sections["input"].paths]
    urls += [("output.dir", out.dir), ("kmeans.init", sections["kmeans"].init)]
    for key, url in urls:
        problem = storage.backend_problem(url) if storage.is_url(url) else None
        if problem:
            problems.append(f"{key}: {problem}")
    if storage.is_url(out.dir) and storage.is_read_only(out.dir):
        problems.append(f"output.dir: {out.dir!r} is read-only (http); write to a folder or "
                        "to s3://, gs://, az://")


def _check_output_dir(path: str, problems: list[str]) -> None:
    """The output folder must be creatable and writable (checked without creating it)."""
    existing = os.path.abspath(path)
    while not os.path.lexists(existing) and os.path.dirname(existing) != existing:
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        problems.append(f"output.dir: cannot create {path!r}: {existing!r} is a file, not a "
                        "folder; choose another output.dir")
    elif not os.access(existing, os.W_OK | os.X_OK):
        problems.append(f"output.dir: cannot write to {existing!r} (permission denied); "
                        "choose a writable folder")


def _check_auto_and_spatial(km: KMeansConfig, pre: PreprocessConfig,
                            problems: list[str]) -> None:
    if km.auto_k and km.batch_pixels < km.max_k:
        problems.append(f"kmeans.batch_pixels: must be >= kmeans.max_k ({km.max_k}) with "
                        f"k: auto, got {km.batch_pixels}")
    if pre.spatial_weight > 0 and km.algorithm == "lloyd":
        problems.append("preprocess.spatial_weight: > 0 needs kmeans.algorithm: minibatch (lloyd's "
                        "full passes cluster colour histograms, which carry no positions)")


def example_keys() -> dict[str, list[str]]:
    """Every section and key the schema knows (for the example-file sync test)."""
    return {section: list(keys) for section, keys in _SCHEMA.items()}
