"""The public Python API (issue 10): cheap import, the README's examples, and the same results
as the command line."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import subprocess
import sys

import dask
import imageio.v3 as iio
import numpy as np
import pytest

import pipeline
from conftest import blocks_image, layout, save, write_job
from pipeline.cli import main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
API_NAMES = {"Job", "Model", "run", "open_collection", "fit", "validate", "apply", "submit",
             "status", "cancel", "PipelineError", "ConfigError", "exit_status"}


def test_import_pipeline_loads_no_dask_pillow_or_sklearn():
    code = ("import sys, pipeline; dir(pipeline); pipeline.__all__; "
            "print(sorted(m for m in ('dask', 'PIL', 'sklearn', 'distributed', 'numpy') "
            "if m in sys.modules))")
    env = {**os.environ, "PYTHONPATH": ROOT}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=env, check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]"


def test_star_import_gives_every_listed_name():
    namespace: dict = {}
    exec("from pipeline import *", namespace)  # noqa: S102
    assert set(pipeline.__all__) <= set(namespace)


def test_every_api_name_is_listed_and_loads_on_first_use():
    assert API_NAMES <= set(pipeline.__all__)
    assert API_NAMES <= set(dir(pipeline))
    assert pipeline.run.__module__ == "pipeline.api"  # the function, not a module of that name
    assert pipeline.fit.__module__ == "pipeline.api"
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        pipeline.nope  # noqa: B018


# ---------------------------------------------------------------------------------------------
# The README's "Python API" examples, run as they are


def _readme_examples() -> tuple[str, list[str]]:
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as handle:
        text = handle.read()
    section = text.split("\n## Python API\n", 1)[1].split("\n## ", 1)[0]
    job = re.findall(r"```yaml\n(.*?)```", section, re.S)[0]
    return job, re.findall(r"```python\n(.*?)```", section, re.S)


def test_readme_has_python_api_examples():
    job, blocks = _readme_examples()
    assert "input:" in job and len(blocks) >= 4


def test_readme_python_api_examples_run_and_print_what_they_say(tmp_path, monkeypatch,
                                                                local_cluster):
    job, blocks = _readme_examples()
    for i, name in enumerate("abc"):
        save(tmp_path / "photos" / f"{name}.png", blocks_image(layout(30, 40, 4, i), seed=i))
    (tmp_path / "job.yaml").write_text(job)
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    for block in blocks:
        code = block.replace("tcp://127.0.0.1:8786", local_cluster.scheduler_address)
        expected = [line[2:] for line in block.splitlines() if line.startswith("# ")]
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            exec(compile(code, "README.md", "exec"), namespace)  # noqa: S102
        assert printed.getvalue().splitlines() == expected, block


# ---------------------------------------------------------------------------------------------
# The API and the CLI give the same results


def _cli(job: str, *args: str) -> int:
    return main(["run", job, "-q", *args])


def test_fit_predict_and_paint_match_the_cli_run(tmp_path, collection):
    folder, truth = collection
    job = write_job(tmp_path, kmeans={"sample_pixels": 3000, "batch_pixels": 256})
    assert _cli(job) == 0
    saved = json.loads((tmp_path / "out" / "model.json").read_text())
    images = pipeline.open_collection([str(folder)])
    model = pipeline.fit(images, k=4, seed=0, sample_pixels=3000, batch_pixels=256)
    assert model.centroids.tolist() == saved["centroids_working"]
    assert model.palette.tolist() == saved["palette"]
    for image in images:
        labels = model.predict(image).compute()
        assert (labels == iio.imread(tmp_path / "out" / "labels" / f"{image.name}.png")).all()
        painted = model.paint(model.predict(image.pixels)).compute()
        segmented = iio.imread(tmp_path / "out" / "segmented" / f"{image.name}.png")
        assert (painted == segmented[..., :3]).all()


def test_model_save_load_and_apply_give_the_run_labels(tmp_path, collection):
    folder, truth = collection
    job = write_job(tmp_path, kmeans={"sample_pixels": 3000, "batch_pixels": 256},
                    output={"masks": False})
    first = pipeline.run(pipeline.Job.from_yaml(job))
    loaded = pipeline.Model.load(tmp_path / "out" / "model.json")
    assert loaded.k == 4 and loaded.path.endswith("model.json")
    loaded.save(tmp_path / "copy.json")
    assert json.loads((tmp_path / "copy.json").read_text()) == loaded.doc
    report = pipeline.apply(tmp_path / "copy.json",
                            pipeline.Job.from_yaml(job, {"output.dir": "again"}))
    assert report["status"] == "done" and first["totals"] == report["totals"]
    for name in truth:
        a = iio.imread(tmp_path / "out" / "labels" / f"{name}.png")
        assert (a == iio.imread(tmp_path / "again" / "labels" / f"{name}.png")).all()
    with pytest.raises(pipeline.ConfigError, match="never saved"):
        pipeline.apply(pipeline.Model(loaded.doc), pipeline.Job.from_yaml(job))


def test_run_returns_the_report_with_skips_and_raises_what_the_cli_exits_with(tmp_path,
                                                                             collection):
    folder, _ = collection
    (folder / "broken.png").write_bytes(b"")
    job = write_job(tmp_path, output={"masks": False})
    report = pipeline.run(pipeline.Job.from_yaml(job))
    assert pipeline.exit_status(report["totals"]) == 3 == _cli(job)
    with pytest.raises(pipeline.ImageReadError, match="broken.png: file is empty") as caught:
        pipeline.run(pipeline.Job.from_yaml(job, {"input.on_error": "fail",
                                                  "output.if_exists": "overwrite"}))
    assert caught.value.exit_code == 1 == _cli(job, "--set", "input.on_error=fail")
    with pytest.raises(pipeline.ConfigError, match=r"kmeans\.kk: unknown key") as caught:
        pipeline.Job.from_yaml(job, {"kmeans.kk": 3})
    assert caught.value.exit_code == 2


def test_job_from_dict_resolves_paths_against_base_dir(tmp_path, collection):
    job = pipeline.Job.from_dict({"input": {"paths": ["images/"]}, "kmeans": {"k": 4},
                                  "output": {"dir": "out"}}, base_dir=tmp_path)
    assert job.out_dir == str(tmp_path / "out")
    assert job.config.input.paths == (str(tmp_path / "images"),)
    assert job.with_overrides({"kmeans.k": 6}).config.kmeans.k == 6
    summary = pipeline.validate(job)
    assert summary["valid"] and len(summary["images"]) == 5


def test_open_collection_skips_or_refuses_unreadable_files(tmp_path, collection):
    folder, truth = collection
    (folder / "empty.png").write_bytes(b"")
    images = pipeline.open_collection(str(folder))
    assert sorted(i.name for i in images) == sorted(truth)
    assert [os.path.basename(p) for p, _ in images.skipped] == ["empty.png"]
    assert images[0].pixels.compute().shape == images[0].shape
    with pytest.raises(pipeline.ImageReadError, match="empty.png: file is empty"):
        pipeline.open_collection(str(folder), on_error="fail")
    with pytest.raises(pipeline.ConfigError, match="input.on_error: must be one of"):
        pipeline.open_collection(str(folder), on_error="ignore")


def test_open_collection_reads_a_4_band_uint16_tiff_in_windows_of_its_tiles(tmp_path):
    """Issue 12: a raster's pixels keep their bands and dtype, in chunks of whole tiles, with
    its mask (nodata here) from the same read tasks; fit refuses it in one line."""
    import tifffile

    rng = np.random.default_rng(0)
    stored = rng.integers(1, 65535, (100, 70, 4)).astype(np.uint16)
    stored[:5, :7] = 0
    tifffile.imwrite(str(tmp_path / "scene.tif"), stored, tile=(32, 32), compression="zlib",
                     photometric="minisblack", planarconfig="contig",
                     extratags=[(42113, "s", 0, "0", True)])  # GDAL_NODATA
    save(tmp_path / "photo.png", blocks_image(layout(30, 40, 4, 0)))
    images = {image.name: image for image in
              pipeline.open_collection(str(tmp_path), chunk_pixels=2048)}
    scene, photo = images["scene"], images["photo"]
    assert (scene.shape, scene.bands, scene.dtype) == ((100, 70, 4), 4, np.uint16)
    assert scene.pixels.dtype == np.uint16 and scene.pixels.shape == (100, 70, 4)
    rows, cols, _ = scene.pixels.chunks
    assert all(edge % 32 == 0 for edge in np.cumsum(rows)[:-1].tolist() +
               np.cumsum(cols)[:-1].tolist()) and len(rows) * len(cols) > 1  # tile-aligned
    pixels, mask = dask.compute(scene.pixels, scene.mask)
    assert np.array_equal(pixels, stored)
    assert mask.dtype == bool and mask.sum() == 35 and mask[:5, :7].all()
    assert scene.mask.chunks == (rows, cols)
    assert (photo.shape, photo.bands, photo.dtype) == ((30, 40, 3), 3, np.uint8)
    assert not photo.mask.compute().any()
    with pytest.raises(pipeline.ConfigError, match=r"fit: .*scene.tif is a raster \(4 bands, "
                                                   r"uint16\); fit makes RGB palettes"):
        pipeline.fit(list(images.values()), k=3)


def test_fit_refuses_unknown_keys_with_the_job_file_message(collection):
    images = pipeline.open_collection(str(collection[0]))
    with pytest.raises(pipeline.ConfigError, match=r"kmeans\.n_int: unknown key \(did you "
                                                   r"mean 'n_init'\?\)"):
        pipeline.fit(images, k=4, n_int=2)
    with pytest.raises(pipeline.ConfigError, match="give preprocess.scale to open_collection"):
        pipeline.fit(images, k=4, scale=0.5)


def test_the_exit_status_table_is_the_readme_table():
    from pipeline.errors import EXIT_STATUSES

    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as handle:
        text = handle.read()
    table = text.split("### Exit statuses\n", 1)[1].split("\n#", 1)[0]
    rows = dict(re.findall(r"^\| (\d+) \| (.*) \|$", table, re.M))
    assert {int(k): v for k, v in rows.items()} == EXIT_STATUSES


def test_the_page_is_drawn_from_the_run_not_from_model_json_read_back(tmp_path, collection,
                                                                     monkeypatch):
    from pipeline.sinks import images

    read = []
    real = images.read_json
    monkeypatch.setattr(images, "read_json", lambda path, *a: read.append(path) or real(path, *a))
    job = write_job(tmp_path, output={"masks": False})
    pipeline.run(pipeline.Job.from_yaml(job))
    assert not [p for p in read if p.endswith("model.json")]
    palette = json.loads((tmp_path / "out" / "model.json").read_text())["palette"]
    page = (tmp_path / "out" / "report.html").read_text()
    assert all("#%02x%02x%02x" % tuple(c) in page for c in palette)


def test_override_errors_name_the_key_the_python_way_not_as_set(tmp_path, collection):
    """An API caller never typed --set: messages name ``overrides: section.key``, while the
    CLI's own --set arguments keep their name."""
    job_file = write_job(tmp_path)
    job = pipeline.Job.from_yaml(job_file)
    calls = {
        "with_overrides": lambda items: job.with_overrides(items),
        "from_yaml": lambda items: pipeline.Job.from_yaml(job_file, items),
        "from_dict": lambda items: pipeline.Job.from_dict(
            {"input": {"paths": ["images/"]}}, tmp_path, items, source=job_file),
    }
    cases = [({"kmeans.kk": 3}, "overrides: kmeans.kk: unknown key (did you mean 'k'?)"),
             ({"kmeans": 3}, "overrides: kmeans: expected 'section.key', e.g. 'kmeans.k'"),
             (["kmeans.kk=3"], "overrides: kmeans.kk: unknown key (did you mean 'k'?)"),
             (["kmeans.k"], "overrides: 'kmeans.k': expected 'section.key=value', e.g. "
                            "'kmeans.k=8'"),
             ({"output.dir": object()}, "overrides: output.dir: object is not a job-file "
                                        "value; give str, int, float, bool, None, or lists "
                                        "and dicts of them")]
    for name, call in calls.items():
        for items, message in cases:
            with pytest.raises(pipeline.ConfigError) as caught:
                call(items)
            assert str(caught.value).removeprefix(f"{job_file}: ") == message, name
            assert "--set" not in str(caught.value)
    assert job.with_overrides({"output.dir": tmp_path / "o"}).out_dir == str(tmp_path / "o")
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        assert main(["run", job_file, "--set", "kmeans.kk=3"]) == 2
    assert err.getvalue() == (f"error: {job_file}: --set kmeans.kk: unknown key (did you mean "
                              "'k'?)\n")
