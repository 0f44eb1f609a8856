"""The job-file schema is the one source: configs/example.yaml, the README's key table and the
JSON Schema printed by `kmeans-pipeline schema` agree with it and with the loader."""

import os

import jsonschema
import pytest

from conftest import run_cli
from pipeline import schema
from pipeline.config import json_schema

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLE = os.path.join(ROOT, "configs", "example.yaml")
README = os.path.join(ROOT, "README.md")
FIX = "edit pipeline/schema.py, then run `python -m pipeline.schema --write` and commit the result"


def _read(path: str) -> str:
    with open(path, encoding="utf-8") as handle:
        return handle.read()


def _example_lines(text: str) -> dict[str, str]:
    """``section.key`` -> its line in an example.yaml text."""
    lines, section = {}, None
    for line in text.splitlines():
        if line and not line.startswith((" ", "#")):
            section = line.rstrip(":")
        elif line.startswith("  ") and ":" in line:
            lines[f"{section}.{line.split(':')[0].strip()}"] = line
    return lines


def _readme_rows(text: str) -> dict[str, str]:
    """``section.key`` -> its row in the README's key table."""
    start, end = text.index(schema.README_BEGIN), text.index(schema.README_END)
    return {line.split("`")[1]: line for line in text[start:end].splitlines()
            if line.startswith("| `")}


def _drift(committed: dict[str, str], generated: dict[str, str]) -> list[str]:
    return sorted(name for name in set(committed) | set(generated)
                  if committed.get(name) != generated.get(name))


def test_example_yaml_is_generated_from_the_schema():
    text = _read(EXAMPLE)
    drifted = _drift(_example_lines(text), schema.example_lines())
    assert not drifted, f"configs/example.yaml differs from the schema at {drifted}: {FIX}"
    assert text == schema.example_yaml(), f"configs/example.yaml is out of date: {FIX}"


def test_readme_key_table_is_generated_from_the_schema():
    text = _read(README)
    drifted = _drift(_readme_rows(text), schema.readme_rows())
    assert not drifted, f"README.md's key table differs from the schema at {drifted}: {FIX}"
    assert schema.splice_readme(text) == text, f"README.md's key table is out of date: {FIX}"


def test_drift_is_reported_by_key():
    text = schema.example_yaml().replace("  tol: 1.0e-4", "  tol: 1.0e-3")
    assert _drift(_example_lines(text), schema.example_lines()) == ["kmeans.tol"]
    text = schema.example_yaml().replace("  max_k: 64", "  max_kk: 64")
    assert _drift(_example_lines(text), schema.example_lines()) == ["kmeans.max_k",
                                                                    "kmeans.max_kk"]


def test_the_generator_writes_both_files(tmp_path):
    os.makedirs(tmp_path / "configs")
    readme = f"# x\n\n{schema.README_BEGIN}\nold\n{schema.README_END}\n\nafter\n"
    (tmp_path / "README.md").write_text(readme)
    assert schema.main(["--write", str(tmp_path)]) == 0
    assert (tmp_path / "configs" / "example.yaml").read_text() == schema.example_yaml()
    assert (tmp_path / "README.md").read_text() == (f"# x\n\n{schema.readme_table()}\n\nafter\n")


def _validator() -> jsonschema.Draft202012Validator:
    document = json_schema()
    jsonschema.Draft202012Validator.check_schema(document)
    return jsonschema.Draft202012Validator(document)


def test_cli_prints_the_json_schema():
    result = run_cli("schema")
    assert result.code == 0 and result.err == ""
    assert result.json() == json_schema()
    assert result.json()["$schema"] == "https://json-schema.org/draft/2020-12/schema"


def test_json_schema_accepts_the_example_and_refuses_a_misspelt_key():
    validator = _validator()
    example = schema.load_yaml(_read(EXAMPLE))
    assert list(validator.iter_errors(example)) == []
    example["kmeans"]["kk"] = 8
    errors = list(validator.iter_errors(example))
    assert len(errors) == 1 and list(errors[0].path) == ["kmeans"]
    assert "'kk' was unexpected" in errors[0].message
    assert not validator.is_valid({"kmean": {"k": 3}, "input": {"paths": ["a"]}})
    assert not validator.is_valid({"kmeans": {"k": 3}})  # input.paths is required
    assert not validator.is_valid({"input": {}})


def test_json_schema_carries_types_defaults_ranges_and_help():
    keys = json_schema()["properties"]["kmeans"]["properties"]
    assert keys["tol"] == {"description": schema.SECTIONS["kmeans"]["tol"].help,
                           "default": 1e-4, "type": "number", "minimum": 0.0}
    assert keys["k"]["anyOf"] == [{"type": "integer", "minimum": 1, "maximum": 65535},
                                  {"enum": ["auto"]}]
    assert keys["algorithm"]["enum"] == ["minibatch", "lloyd"]
    assert json_schema()["properties"]["dask"]["additionalProperties"] is False


_CANDIDATES = [None, True, False, 0, -1, 1, 9, 10, 100, 101, 70000, 2**32, 2**26, 0.5, 1.5,
               -0.5, 0.0, "", "x", "auto", "rgb", "lab", "skip", "image", "lloyd", "k-means++",
               "threads", "tcp://127.0.0.1:8786", "tcp://host", "tcp://h:0", "tcp://h:65536",
               "2GiB", "64MiB", [], ["a"], ["a", ""], [1], {}, {"a": 1}]


@pytest.mark.parametrize("key", schema.KEYS, ids=lambda key: key.path)
def test_json_schema_and_the_loader_agree_on_every_key(key):
    """Each candidate value is valid in the JSON Schema exactly when the loader takes it."""
    validator = jsonschema.Draft202012Validator(key.json_schema())
    disagree = []
    for value in _CANDIDATES:
        if key.kind == "size" and isinstance(value, str) and value not in ("auto", "x", ""):
            continue  # a size string's minimum is checked by the loader only
        if key.kind == "integer" and isinstance(value, float) and value.is_integer():
            continue  # JSON Schema counts 0.0 as an integer; the loader does not
        if validator.is_valid(value) != (key.check(value) is None):
            disagree.append(value)
    assert not disagree, f"{key.path}: JSON Schema and loader disagree on {disagree}"
