"""Byte-identical outputs: committed sha256 hashes of labels, segmented images and masks, and the
exact model.json centroids, for the sample photos under a few configurations (issue 10).

A change that alters outputs on purpose regenerates the references in the same commit and says
why:  PYTHONPATH=. python tests/test_reference_outputs.py --update
"""

from __future__ import annotations

import hashlib
import json
import os
import sys

import pytest
import yaml

from pipeline.cli import main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PHOTOS = os.path.join(ROOT, "samples", "photos")
REFERENCES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "reference_outputs.json")
# Downscaled so that the six runs take seconds; every photo is still over 10,000 pixels.
_BASE = {"preprocess": {"scale": 0.2}, "kmeans": {"k": 5, "seed": 0, "sample_pixels": 40000}}
CONFIGS = {
    "default": {},
    "lab": {"preprocess": {"color_space": "lab"}},
    "lloyd": {"kmeans": {"algorithm": "lloyd", "max_iter": 5}},
    "image": {"kmeans": {"scope": "image", "k": 3}},
    "auto": {"kmeans": {"k": "auto", "max_error": 6.0, "max_k": 16}},
    "spatial": {"preprocess": {"spatial_weight": 0.5}},
}


def _job(folder: str, name: str) -> str:
    job = {"input": {"paths": [PHOTOS]}, "output": {"dir": os.path.join(folder, "out")}}
    for section, values in (*_BASE.items(), *CONFIGS[name].items()):
        job.setdefault(section, {}).update(values)
    path = os.path.join(folder, "job.yaml")
    with open(path, "w") as handle:
        yaml.safe_dump(job, handle)
    return path


def outputs_of(folder: str, name: str) -> dict:
    """Run one configuration into ``folder``; the hashes and centroids of what it wrote."""
    assert main(["run", _job(folder, name), "-q", "--scheduler", "threads"]) == 0
    out = os.path.join(folder, "out")
    files = {}
    for sub in ("labels", "segmented", "masks"):
        for base, _, names in os.walk(os.path.join(out, sub)):
            for file in names:
                path = os.path.join(base, file)
                with open(path, "rb") as handle:
                    digest = hashlib.sha256(handle.read()).hexdigest()
                files[os.path.relpath(path, out).replace(os.sep, "/")] = digest
    with open(os.path.join(out, "model.json"), encoding="utf-8") as handle:
        model = json.load(handle)
    if "palettes" in model:
        centroids = {n: p["centroids_working"] for n, p in sorted(model["palettes"].items())}
    else:
        centroids = model["centroids_working"]
    return {"files": dict(sorted(files.items())), "centroids": centroids, "k": model["k"]}


def _references() -> dict:
    with open(REFERENCES, encoding="utf-8") as handle:
        return json.load(handle)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_outputs_match_the_committed_references(tmp_path, name):
    expected = _references()[name]
    found = outputs_of(str(tmp_path), name)
    assert found["k"] == expected["k"]
    assert found["centroids"] == expected["centroids"]  # exact floats, as JSON holds them
    assert sorted(found["files"]) == sorted(expected["files"])
    changed = [f for f in expected["files"] if found["files"][f] != expected["files"][f]]
    assert not changed, f"{len(changed)} output file(s) differ from the references: {changed[:5]}"


if __name__ == "__main__" and sys.argv[1:] == ["--update"]:
    import tempfile

    refs = {}
    for config in sorted(CONFIGS):
        with tempfile.TemporaryDirectory() as tmp:
            refs[config] = outputs_of(tmp, config)
    with open(REFERENCES, "w", encoding="utf-8") as handle:
        json.dump(refs, handle, indent=1, sort_keys=True)
        handle.write("\n")
    print(f"wrote {REFERENCES}")
