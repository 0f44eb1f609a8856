"""Job file (YAML) or dict -> frozen dataclasses, every key checked against ``pipeline.schema``.

The keys, types, defaults and ranges are data in ``pipeline.schema``; the section dataclasses
are built from it.  Validation walks the user's mapping against it and collects *every* problem
before raising, so ``kmeans-pipeline validate`` can list them all at once.  ``json_schema()``
gives the same rules to editors.  No dask import here.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import hashlib
import json
import os
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import yaml

from pipeline import schema
from pipeline.errors import ConfigError
from pipeline.schema import (  # noqa: F401 (re-exported: cluster.py, batch.py import them)
    ALGORITHMS, AUTO_K, COLOR_SPACES, DEFAULT_MAX_PIXELS, IF_EXISTS, INITS, LOCAL_SCHEDULERS,
    MAX_K, ON_ERROR, PERSIST, SCOPES)

_SCHEMA = schema.SECTIONS
_PYTHON_TYPES = {"integer": "int", "integers": "tuple[int, ...]", "number": "float",
                 "numbers": "float | tuple[float, ...]", "boolean": "bool", "enum": "str",
                 "string": "str", "strings": "tuple[str, ...]", "mapping": "dict",
                 "size": "int | str"}


def _hint(key: schema.Key) -> str:
    return (_PYTHON_TYPES[key.kind] + (" | str" if key.also else "")
            + (" | None" if key.nullable else ""))


def _section_class(section: str, name: str, summary: str, namespace: dict | None = None) -> type:
    """The frozen dataclass of one job-file section: fields, types, defaults and the docstring's
    attributes come from the schema."""
    keys = _SCHEMA[section].values()
    fields = [(key.name, _hint(key), field(default_factory=dict) if key.kind == "mapping"
               else field(default=key.default)) for key in keys]
    attributes = "".join(f"    {key.name} : {_hint(key)}\n        {key.help}\n" for key in keys)
    namespace = {**(namespace or {}),
                 "__doc__": f"{summary}\n\n    Attributes\n    ----------\n{attributes}"}
    cls = dataclasses.make_dataclass(name, fields, frozen=True, namespace=namespace)
    cls.__module__ = __name__  # pickled by reference to this module (dask workers)
    return cls


InputConfig = _section_class("input", "InputConfig", "Which images to read.")
PreprocessConfig = _section_class("preprocess", "PreprocessConfig", "What the clustering sees.")
KMeansConfig = _section_class("kmeans", "KMeansConfig", (
    "k-means settings.\n\n    ``tol`` is relative: the fit has converged when the sum over "
    "centroids of the squared\n    centroid shift of one step is at most ``tol`` times the mean "
    "per-channel variance of the\n    fitted pixels (in the working colour space), as in "
    "scikit-learn's KMeans."), {
    "n_clusters": property(lambda self: self.k),
    "init_is_model": property(lambda self: self.init not in INITS),
    "auto_k": property(lambda self: self.k == AUTO_K),
    # k: auto's Delta-E for RGB photos: error_metric auto means de76 there (variance is for
    # rasters, whose path reads error_metric itself)
    "colour_metric": property(lambda self: "de76" if self.error_metric == "auto"
                              else self.error_metric),
})
OutputConfig = _section_class("output", "OutputConfig", "What is written, and where.")
DaskConfig = _section_class("dask", "DaskConfig", "Where the work runs.")
_SECTIONS = {"input": InputConfig, "preprocess": PreprocessConfig, "kmeans": KMeansConfig,
             "output": OutputConfig, "dask": DaskConfig}


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
        for key in schema.KEYS:
            if key.secrets:
                data[key.section][key.name] = _masked(data[key.section][key.name])
        return data

    def job_hash(self) -> str:
        """Hash of everything that changes the outputs (keys with ``hashed``: not if_exists,
        storage options or the dask section, which is left out whole)."""
        data = self.to_dict()
        hashed = {}
        for key in schema.KEYS:
            value = data[key.section][key.name]
            if key.is_path and key.path not in self.given:
                value = key.default  # as written: a default resolved next to the job file
            if key.hashed and not (key.hash_if_set and value == key.default):
                hashed.setdefault(key.section, {})[key.name] = value
        text = json.dumps(hashed, sort_keys=True, default=str)
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


def json_schema() -> dict:
    """A JSON Schema (draft 2020-12) of the job file, for editors (``kmeans-pipeline schema``).

    Types, enums, ranges, defaults and help come from ``pipeline.schema``; unknown keys are
    refused.  Checks across keys (``batch_pixels >= k``, the init model exists) and the
    minimum of a memory size given as a string are left to ``kmeans-pipeline validate``.
    """
    properties = {}
    for section, keys in _SCHEMA.items():
        required = [name for name, key in keys.items() if key.required]
        properties[section] = {
            "description": schema.SECTION_HELP[section], "type": ["object", "null"],
            "additionalProperties": False,
            "properties": {name: key.json_schema() for name, key in keys.items()},
            **({"required": required} if required else {})}
    return {"$schema": "https://json-schema.org/draft/2020-12/schema",
            "$id": "urn:kmeans-pipeline:job", "title": "kmeans-pipeline job file",
            "description": "A job for `kmeans-pipeline run` (see configs/example.yaml).",
            "type": "object", "additionalProperties": False,
            "required": [s for s, keys in _SCHEMA.items()
                         if any(k.required for k in keys.values())],
            "properties": properties}


# ---------------------------------------------------------------------------------------------
# Loading


def load_config(path: str, overrides: Sequence[str] | Mapping[str, Any] = (),
                scheduler: str | None = None) -> JobConfig:
    """Read, merge and validate a job file.

    Parameters
    ----------
    path : str
        The YAML job file. Relative paths inside it are relative to its folder.
    overrides : list of str, or dict
        ``section.key=value`` strings (``--set``; values are parsed as YAML scalars), or a
        mapping ``{"section.key": value}`` of Python values.
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
    raw = _read_yaml(path)
    return _configure(raw, os.path.dirname(os.path.abspath(path)), path, overrides, scheduler)


def config_from_dict(raw: Mapping[str, Any], base_dir: str, source: str = "<dict>",
                     overrides: Sequence[str] | Mapping[str, Any] = (),
                     scheduler: str | None = None) -> JobConfig:
    """Validate a job given as a mapping of sections (what the job file holds), for
    ``Job.from_dict``.

    Parameters
    ----------
    raw : mapping
        ``{"input": {"paths": [...]}, "kmeans": {...}, ...}``; not modified.
    base_dir : str
        The folder relative paths in ``raw`` are relative to.
    source : str
        How messages name the job.
    overrides, scheduler
        As for :func:`load_config`.

    Returns
    -------
    JobConfig

    Raises
    ------
    ConfigError
        Listing every problem found, one per line, each starting with ``source``.
    """
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{source}: a job must be a mapping of sections (input, kmeans, ...), "
                          f"got {type(raw).__name__}")
    return _configure(copy.deepcopy(dict(raw)), os.path.abspath(base_dir), source, overrides,
                      scheduler)


def build_config(raw: Mapping[str, Any], source: str,
                 overrides: Sequence[str] | Mapping[str, Any] = (),
                 scheduler: str | None = None, base_dir: str | None = None) -> JobConfig:
    """`config_from_dict` with relative paths relative to ``base_dir``, by default the
    folder of ``source`` (a job file's path), as `load_config` resolves them."""
    if base_dir is None:
        base_dir = os.path.dirname(os.path.abspath(source))
    return config_from_dict(raw, base_dir, source, overrides, scheduler)


def read_job_file(path: str) -> dict:
    """A job file's mapping of sections, before validation (see `build_config`)."""
    return _read_yaml(path)


@dataclass(frozen=True)
class Override:
    """One job-file key set from outside the job file: a command line's ``--set``, or an
    ``overrides`` entry of the Python API.

    ``label`` is how messages name it, in the words of whoever gave it (``--set kmeans.k``,
    ``overrides: kmeans.k``); ``problem``, when not empty, says why the item could not be read.
    A relative path in ``value`` is relative to ``base_dir``, or to the job file's folder
    when that is None.
    """

    key: str
    value: Any
    label: str
    base_dir: str | None = None
    problem: str = ""


def overrides_of(items: Sequence[str] | Mapping[str, Any] | None, option: str = "overrides",
                 base_dir: str | None = None) -> list[Override]:
    """Overrides given as ``{"section.key": value}`` or as ``"section.key=value"`` strings
    (values parsed as YAML, as ``--set`` does), named in messages by ``option``.

    Parameters
    ----------
    items : mapping, or sequence of str
    option : str
        ``"--set"`` for a command line's, ``"overrides"`` for the Python API's.
    base_dir : str, optional
        What relative paths among the values are relative to (None: the job file's folder).
    """
    if items is None:
        return []
    if isinstance(items, Mapping):
        return [Override(str(key), value, f"{option}: {key}", base_dir,
                         "" if "." in str(key).strip(".") else
                         f"{option}: {key}: expected 'section.key', e.g. 'kmeans.k'")
                for key, value in items.items()]
    entries = []
    for item in items:
        key, sep, text = str(item).partition("=")
        key = key.strip()
        problem = "" if sep and "." in key.strip(".") else (
            f"{option} {item!r}: expected section.key=value, e.g. kmeans.k=8"
            if option.startswith("-") else
            f"{option}: {item!r}: expected 'section.key=value', e.g. 'kmeans.k=8'")
        try:
            value = schema.load_yaml(text) if text.strip() else ""
        except yaml.YAMLError:
            value = text
        entries.append(Override(key, value, f"{option} {key}" if option.startswith("-")
                                else f"{option}: {key}", base_dir, problem))
    return entries


def _configure(raw: dict, base_dir: str, source: str,
               overrides: Sequence[str] | Sequence[Override] | Mapping[str, Any],
               scheduler: str | None) -> JobConfig:
    problems: list[str] = []
    if isinstance(overrides, Mapping) or not all(isinstance(o, Override) for o in overrides):
        # strings here are a command line's (the CLI layer), a mapping is Python's
        overrides = overrides_of(overrides, "overrides" if isinstance(overrides, Mapping)
                                 else "--set")
    for item in overrides:
        if item.problem:
            problems.append(item.problem)
        else:
            _override(raw, item, problems)
    if scheduler is not None:
        raw.setdefault("dask", {})
        if isinstance(raw["dask"], dict):
            raw["dask"]["scheduler"] = scheduler
    job = _build(raw, source, base_dir, problems)
    if problems:
        raise ConfigError("\n".join(f"{source}: {p}" for p in problems))
    return job


def _read_yaml(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except FileNotFoundError:
        raise ConfigError(f"{path}: job file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read job file ({exc})") from exc
    try:
        data = schema.load_yaml(text)
    except schema.DuplicateKeyError as exc:
        raise ConfigError(f"{path}: line {exc.line}: {exc.key} is given twice (also at line "
                          f"{exc.first_line}); YAML would keep only the last: merge them into "
                          "one") from exc
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


def _override(raw: dict, item: Override, problems: list[str]) -> None:
    """Set ``raw[section][name]`` for ``item.key`` = "section.name"; a relative path is made
    absolute against ``item.base_dir`` when it has one (values from a command line)."""
    section, _, name = item.key.partition(".")
    if section not in _SCHEMA:
        problems.append(f"{item.label}: unknown section {section!r}{_suggest(section, _SCHEMA)}")
    elif name not in _SCHEMA[section]:
        problems.append(f"{item.label}: unknown key{_suggest(name, _SCHEMA[section])}")
    else:
        key, value = _SCHEMA[section][name], item.value
        if item.base_dir is not None and key.is_path and key.check(value) is None:
            value = _normalise(key, value, item.base_dir)
            value = list(value) if isinstance(value, tuple) else value
        target = raw.setdefault(section, {})
        if target is None:
            target = raw[section] = {}
        if isinstance(target, dict):
            target[name] = value


def _suggest(name: str, valid) -> str:
    close = difflib.get_close_matches(str(name), list(valid), n=1, cutoff=0.5)
    return f" (did you mean {close[0]!r}?)" if close else f" (valid: {', '.join(valid)})"


def _describe(value: Any) -> str:
    return f"{value!r} ({type(value).__name__})"


def _build(raw: dict, source: str, base_dir: str, problems: list[str]) -> JobConfig:
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
        for name, value in given.items():
            key = _SCHEMA[section_name].get(name)
            if key is None:
                problems.append(f"{section_name}.{name}: unknown key"
                                f"{_suggest(name, _SCHEMA[section_name])}")
                continue
            expected = key.check(value)
            if expected:
                problems.append(f"{key.path}: {expected}, got {_describe(value)}")
                continue
            values[name] = _normalise(key, value, base_dir)
            named.add(key.path)
        for key in _SCHEMA[section_name].values():  # output.dir's "out": next to the job file
            if (key.is_path and key.name not in values and isinstance(key.default, str)
                    and key.default not in key.choices):
                values[key.name] = resolve_path(key.default, base_dir)
        sections[section_name] = cls(**values)
    if not problems:
        for key in schema.KEYS:
            given = raw.get(key.section)
            if key.required and not (isinstance(given, dict) and key.name in given):
                problems.append(f"{key.path}: required: {key.required}")
    _check_across(sections, problems)
    return JobConfig(**sections, source=source, base_dir=base_dir, given=frozenset(named))


def _normalise(key: schema.Key, value: Any, base_dir: str) -> Any:
    """A valid value as the dataclass holds it: lists as tuples, numbers as float, paths
    resolved against ``base_dir`` (named values such as ``init: random`` are not paths)."""
    if key.kind == "strings":
        items = [value] if isinstance(value, str) else list(value)
        return tuple(resolve_path(v, base_dir) for v in items) if key.is_path else tuple(items)
    if key.kind == "number":
        return float(value)
    if key.kind == "integers" and value is not None:
        return tuple(value)
    if key.kind == "numbers" and value is not None:
        return tuple(map(float, value)) if isinstance(value, list) else float(value)
    if key.is_path and isinstance(value, str) and value not in key.choices:
        return resolve_path(value, base_dir)
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
    _check_dither(km, out, problems)
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


def _check_dither(km: KMeansConfig, out: OutputConfig, problems: list[str]) -> None:
    if out.dither == "none":
        return
    most = km.max_k if km.auto_k else km.k
    if most > schema.MAX_PALETTE:
        what = f"kmeans.max_k is {km.max_k} with k: auto" if km.auto_k else f"kmeans.k is {km.k}"
        problems.append(f"output.dither: {out.dither} paints a palette of at most "
                        f"{schema.MAX_PALETTE} colours, but {what}; lower it or set "
                        "output.dither: none")


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


def job_file_text(cfg: JobConfig, folder: str, header: str = "") -> str:
    """The keys the user gave, as a job file saved in ``folder`` would hold them.

    Paths are written relative to ``folder`` (every job file's paths are relative to the file),
    so ``kmeans-pipeline run FOLDER/job.yaml`` runs the same job; URLs, and local paths when
    ``folder`` is a URL, are written as they are.  Secrets in ``storage_options`` are masked.

    Parameters
    ----------
    cfg : JobConfig
    folder : str
        Where the job file will be (for ``kmeans-pipeline run -o OUT``: ``OUT``).
    header : str
        Comment lines put first.
    """
    data = cfg.to_dict()
    sections: dict[str, dict] = {}
    for key in schema.KEYS:
        if key.path not in cfg.given:
            continue
        value = data[key.section][key.name]
        if key.is_path:
            value = [_relative(v, folder) for v in value] if isinstance(value, (list, tuple)) \
                else _relative(value, folder) if isinstance(value, str) else value
        sections.setdefault(key.section, {})[key.name] = value
    body = yaml.safe_dump(sections, sort_keys=False, default_flow_style=False)
    return "".join(f"# {line}\n" for line in header.splitlines()) + body


def _relative(path: str, folder: str) -> str:
    if "://" in path or "://" in folder or not os.path.isabs(path) or path in schema.INITS:
        return path
    return os.path.relpath(path, folder).replace(os.sep, "/")
