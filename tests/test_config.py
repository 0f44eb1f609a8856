"""Job files: the example stays in sync with the schema; bad values are named precisely."""

import os

import pytest
import yaml

from pipeline.config import JobConfig, example_keys, load_config
from pipeline.errors import ConfigError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLE = os.path.join(ROOT, "configs", "example.yaml")


def test_example_names_every_key_with_its_default():
    with open(EXAMPLE) as handle:
        example = yaml.safe_load(handle)
    missing = [f"{s}.{k}" for s, keys in example_keys().items() for k in keys
               if k not in (example.get(s) or {})]
    assert not missing, f"add these keys to configs/example.yaml: {missing}"
    cfg = load_config(EXAMPLE)
    defaults = {s: getattr(JobConfig, "__dataclass_fields__")[s].type for s in example_keys()}
    assert set(defaults) == set(example)
    assert cfg.kmeans.k == 5 and cfg.input.paths[0].endswith(os.path.join("samples", "photos"))


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
