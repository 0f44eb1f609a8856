"""Job files and job dicts: defaults are the schema's, bad values are named precisely, YAML
numbers are numbers, and the job hash of existing jobs never changes."""

import os

import pytest
import yaml

from conftest import run_cli, write_job
from pipeline import schema
from pipeline.config import config_from_dict, load_config
from pipeline.errors import ConfigError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLE = os.path.join(ROOT, "configs", "example.yaml")


def _job(tmp_path, text):
    path = tmp_path / "job.yaml"
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize("text, message", [
    ("", "job file is empty"),
    ("- a\n- b\n", "must be a mapping of sections"),
    ("input: {paths: [a]\n", "YAML syntax error at line 2, column 1"),
    ("input: {paths: [a]}\nkmeans: {k: eight}\n", "kmeans.k: must be an integer from 1 to 65535 or "
                                                 "'auto', got 'eight' (str)"),
    ("input: {paths: [a]}\nkmeans: {k: 70000}\n", "kmeans.k: must be an integer from 1"),
    ("input: {paths: [a]}\nkmeans: {tol: -1}\n", "kmeans.tol: must be a number >= 0.0"),
    ("input: {paths: [a]}\nkmeans: {max_iter: -1}\n", "kmeans.max_iter: must be an integer >= 0"),
    ("input: {paths: [a]}\nkmeans: {k: 8, batch_pixels: 4}\n", "kmeans.batch_pixels: must be >="),
    ("input: {paths: [a]}\nkmeans: {scope: all}\n", "'collection', 'image'"),
    ("input: {paths: [a]}\nkmean: {k: 3}\n", "kmean: unknown section (did you mean 'kmeans'?)"),
    ("input: {paths: [a]}\nkmeans: {max_iter: 0}\n", "kmeans.max_iter: 0 means no fitting"),
    ("input: {paths: [a]}\nkmeans: {init: nope.json}\n", "kmeans.init: model file"),
    ("input: {paths: [a]}\ndask: {scheduler: tcp://host}\n", "dask.scheduler: must be one of"),
    ("kmeans: {k: 3}\n", "input.paths: required"),
    ("input: {paths: []}\n", "input.paths: must list at least one file, folder or glob"),
    ("input: {paths: [a]}\ndask: {memory_limit: 1kB}\n",
     "dask.memory_limit: must be 'auto', or a size of at least 64MiB"),
])
def test_bad_job_files_are_named_precisely(tmp_path, text, message):
    with pytest.raises(ConfigError, match=None) as caught:
        load_config(_job(tmp_path, text))
    assert message in str(caught.value)
    assert str(caught.value).startswith(str(tmp_path / "job.yaml"))


def test_paths_resolve_against_the_job_file(tmp_path):
    cfg = load_config(_job(tmp_path, "input: {paths: [imgs, 'b/*.jpg']}\noutput: {dir: o}\n"))
    assert cfg.input.paths == (str(tmp_path / "imgs"), str(tmp_path / "b" / "*.jpg"))
    assert cfg.output.dir == str(tmp_path / "o")


def test_job_hash_ignores_scheduler_and_if_exists_only(tmp_path):
    path = _job(tmp_path, "input: {paths: [a]}\n")
    base = load_config(path).job_hash()
    assert load_config(path, ["output.if_exists=overwrite"], "synchronous").job_hash() == base
    assert load_config(path, ["kmeans.k=6"]).job_hash() != base


def _default(key: schema.Key, base_dir: str):
    """The schema default as the loaded config holds it: a path's (output.dir's out) resolved
    next to the job file, as a path written in it."""
    if key.is_path and isinstance(key.default, str) and key.default not in key.choices:
        return os.path.join(base_dir, key.default)
    return key.default


def test_every_key_left_out_takes_its_schema_default(tmp_path):
    cfg = load_config(_job(tmp_path, "input: {paths: [a]}\n"))
    wrong = {key.path: getattr(getattr(cfg, key.section), key.name) for key in schema.KEYS
             if not key.required
             and getattr(getattr(cfg, key.section), key.name) != _default(key, str(tmp_path))}
    assert not wrong, f"these keys do not default to their pipeline/schema.py value: {wrong}"
    assert cfg.given == {"input.paths"}
    empty = load_config(_job(tmp_path, "input: {paths: [a]}\npreprocess:\nkmeans: {}\n"))
    assert empty.to_dict() == cfg.to_dict()


def test_every_default_is_valid_and_typed_as_its_key_says():
    for key in schema.KEYS:
        if not key.required:
            written = list(key.default) if isinstance(key.default, tuple) else key.default
            assert key.check(written) is None, f"{key.path}: default {key.default!r} fails " \
                                               f"its own check: {key.expectation()}"
            python = {"integer": int, "number": float, "boolean": bool, "mapping": dict,
                      "strings": tuple}.get(key.kind, str)
            assert key.default is None and key.nullable or type(key.default) is python, key.path


def test_example_job_file_loads_to_the_defaults_it_documents():
    cfg = load_config(EXAMPLE)
    base = os.path.dirname(EXAMPLE)
    for key in schema.KEYS:
        value = getattr(getattr(cfg, key.section), key.name)
        if key.example is None:
            assert value == _default(key, base), key.path
    assert cfg.kmeans.k == 5  # the example's header: "into 5 colours"
    assert cfg.input.paths == (os.path.join(ROOT, "samples", "photos"),)
    assert cfg.output.dir == os.path.join(ROOT, "out", "example")


# Computed with the job-file code before pipeline/schema.py existed (commit 1f3aa48): an output
# folder written then must still be resumed, so these hashes must never change.  URLs keep the
# hashed paths independent of where the test runs.
_PHOTOS, _OUT = "memory://photos/", "memory://out"
_EXISTING_JOBS = {
    "a414c614e8083072": {"input": {"paths": [_PHOTOS]}, "output": {"dir": _OUT}},
    "7958f26a4c19908f": {"input": {"paths": [_PHOTOS]}, "preprocess": {"color_space": "lab"},
                         "kmeans": {"k": 8}, "output": {"dir": _OUT}},
    "0a600fdfa861b1fe": {"input": {"paths": [_PHOTOS]},
                         "kmeans": {"algorithm": "lloyd", "refine": False, "tol": 0.001,
                                    "max_iter": 50},
                         "output": {"dir": _OUT}},
    "d2109fc993826802": {"input": {"paths": [_PHOTOS]},
                         "kmeans": {"scope": "image", "k": "auto", "max_error": 3, "max_k": 16},
                         "output": {"dir": _OUT}},
    "7e79e1eca2df38b1": {"input": {"paths": "memory://photos/a.png"},
                         "preprocess": {"spatial_weight": 1, "scale": 0.5},
                         "kmeans": {"seed": 7, "n_init": 1, "sample_pixels": 5000,
                                    "batch_pixels": 1024},
                         "output": {"dir": _OUT, "masks": False}},
    "2006385027cd1f4e": {"input": {"paths": [_PHOTOS, "memory://more/*.jpg"],
                                   "exclude": ["**/thumbs/*"], "on_error": "fail",
                                   "max_pixels": 1000000},
                         "kmeans": {"init": "memory://models/model.json", "max_iter": 0},
                         "output": {"dir": "memory://out2", "segmented": False,
                                    "png_compression": 6}},
}


@pytest.mark.parametrize("expected", sorted(_EXISTING_JOBS))
def test_job_hash_of_existing_jobs_is_unchanged(tmp_path, expected):
    job = _EXISTING_JOBS[expected]
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(job))
    assert load_config(str(path)).job_hash() == expected
    assert config_from_dict(job, base_dir=str(tmp_path)).job_hash() == expected


def test_job_hash_ignores_storage_options_if_exists_and_the_dask_section(tmp_path):
    job = {"input": {"paths": [_PHOTOS], "storage_options": {"anon": True}},
           "output": {"dir": _OUT, "if_exists": "overwrite", "storage_options": {"token": "x"}},
           "dask": {"scheduler": "processes", "chunk_pixels": 1000, "timeout": 3}}
    assert config_from_dict(job, ".").job_hash() == "a414c614e8083072"


def test_yaml_numbers_with_an_exponent_are_numbers_issue_10(tmp_path):
    # PyYAML follows YAML 1.1, which reads 1e-4 as the string '1e-4'; the job was refused.
    cfg = load_config(_job(tmp_path, "input: {paths: [a]}\npreprocess: {scale: 5e-1}\n"
                                     "kmeans: {tol: 1e-4, max_error: 2E+0}\n"
                                     "dask: {timeout: 1.5e1}\n"))
    assert cfg.kmeans.tol == 1e-4 and isinstance(cfg.kmeans.tol, float)
    assert (cfg.preprocess.scale, cfg.kmeans.max_error, cfg.dask.timeout) == (0.5, 2.0, 15.0)
    assert load_config(_job(tmp_path, "input: {paths: [a]}\n"), ["kmeans.tol=1e-3"]
                       ).kmeans.tol == 1e-3
    with pytest.raises(ConfigError, match=r"kmeans.k: must be an integer .* got 10.0 \(float\)"):
        load_config(_job(tmp_path, "input: {paths: [a]}\nkmeans: {k: 1e1}\n"))
    assert load_config(_job(tmp_path, "input: {paths: ['1e5']}\n")).input.paths == (
        str(tmp_path / "1e5"),)  # quoted: still a string
    assert yaml.safe_load("1e-4") == "1e-4"  # PyYAML's own loader is left alone


def test_tol_with_an_exponent_runs_from_the_cli_issue_10(tmp_path, collection):
    job = write_job(tmp_path, output={"masks": False})
    with open(job, "a") as handle:
        handle.write("preprocess: {scale: 5e-1}\n")
    result = run_cli("run", job, "-q", "--set", "kmeans.tol=1e-3")
    assert result.code == 0, result.err


def test_a_job_dict_resolves_paths_against_base_dir_and_is_not_modified(tmp_path):
    job = {"input": {"paths": "imgs"}, "kmeans": {"k": 3}, "output": {"dir": "o"}}
    cfg = config_from_dict(job, base_dir=str(tmp_path), overrides={"kmeans.k": 8,
                                                                   "output.dir": "o8"})
    assert cfg.input.paths == (str(tmp_path / "imgs"),) and cfg.output.dir == str(tmp_path / "o8")
    assert cfg.kmeans.k == 8 and cfg.source == "<dict>" and cfg.base_dir == str(tmp_path)
    assert job == {"input": {"paths": "imgs"}, "kmeans": {"k": 3}, "output": {"dir": "o"}}
    same = config_from_dict(job, str(tmp_path), overrides=["kmeans.k=8", "output.dir=o8"],
                            scheduler="synchronous")
    assert same.job_hash() == cfg.job_hash() and same.dask.scheduler == "synchronous"
    path = _job(tmp_path, yaml.safe_dump(job))
    assert load_config(path, {"kmeans.k": 8, "output.dir": "o8"}).job_hash() == cfg.job_hash()


def test_a_bad_job_dict_lists_every_problem_naming_its_source():
    with pytest.raises(ConfigError) as caught:
        config_from_dict({"input": {"paths": ["a"]}, "kmeans": {"kk": 8, "tol": "small"}},
                         ".", source="notebook", overrides={"kmeans.scope": "all",
                                                            "kmean.k": 3, "k": 3})
    assert str(caught.value).splitlines() == [
        "notebook: overrides: kmean.k: unknown section 'kmean' (did you mean 'kmeans'?)",
        "notebook: overrides: k: expected 'section.key', e.g. 'kmeans.k'",
        "notebook: kmeans.kk: unknown key (did you mean 'k'?)",
        "notebook: kmeans.tol: must be a number >= 0.0, got 'small' (str)",
        "notebook: kmeans.scope: must be one of 'collection', 'image', got 'all' (str)",
    ]
    with pytest.raises(ConfigError, match="^<dict>: a job must be a mapping of sections"):
        config_from_dict([("input", {})], ".")


def test_set_fills_a_section_left_empty_in_the_job_file(tmp_path):
    # `kmeans:` with nothing under it is null in YAML; --set used to be dropped silently there.
    cfg = load_config(_job(tmp_path, "input: {paths: [a]}\nkmeans:\n"), ["kmeans.k=3"])
    assert cfg.kmeans.k == 3 and "kmeans.k" in cfg.given


@pytest.mark.parametrize("text, message", [
    ("input: {paths: [a]}\nkmeans: {k: 3}\noutput: {dir: o}\nkmeans:\n  seed: 2\n",
     "line 4: kmeans is given twice (also at line 2)"),
    ("input: {paths: [a]}\nkmeans:\n  k: 3\n  seed: 1\n  k: 4\n",
     "line 5: k is given twice (also at line 3)"),
    ("input: {paths: [a], paths: [b]}\n", "line 1: paths is given twice (also at line 1)"),
])
def test_a_key_given_twice_is_refused_naming_it_and_its_line(tmp_path, text, message):
    """PyYAML keeps the last of two ``kmeans:`` sections silently: the first one's keys
    would be lost."""
    path = _job(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert str(caught.value) == (f"{path}: {message}; YAML would keep only the last: merge "
                                 "them into one")
    result = run_cli("validate", path)
    assert result.code == 2 and result.lines == [f"error: {caught.value}"]


def test_yaml_merge_keys_may_still_repeat_what_they_merge(tmp_path):
    cfg = load_config(_job(tmp_path, "input: {paths: [a]}\nkmeans:\n  <<: {k: 3, seed: 4}\n"
                                     "  k: 5\n"))  # an explicit key wins over a merged one
    assert (cfg.kmeans.k, cfg.kmeans.seed) == (5, 4)
