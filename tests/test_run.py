"""End to end through run(): known colours recovered, label maps exact, outputs complete."""

import json
import os

import imageio.v3 as iio
import numpy as np
import pytest

from conftest import COLOURS, blocks_image, layout, read_json, run_cli, save, write_job
from pipeline.cli import main
from pipeline.config import load_config


def _run(job: str, *extra: str) -> int:
    return main(["run", job, "-q", *extra])


def _match(centroids: np.ndarray) -> np.ndarray:
    """Index of the true colour nearest to each centroid."""
    return np.argmin(((centroids[:, None] - COLOURS[None].astype(float)) ** 2).sum(2), axis=1)


@pytest.mark.parametrize("algorithm", ["minibatch", "lloyd"])
@pytest.mark.parametrize("space", ["rgb", "lab"])
def test_collection_scope_recovers_known_colours_and_regions(tmp_path, collection, algorithm,
                                                             space):
    _, truth = collection
    job = write_job(tmp_path, kmeans={"algorithm": algorithm, "batch_pixels": 1024},
                    preprocess={"color_space": space})
    assert _run(job) == 0
    out = tmp_path / "out"
    doc = json.loads((out / "model.json").read_text())
    centroids = np.array(doc["centroids"])
    order = _match(centroids)
    assert sorted(order.tolist()) == [0, 1, 2, 3]
    assert np.abs(centroids - COLOURS[order]).max() <= 2.0  # 2/255 in [0, 1] units
    assert doc["converged"] is True
    for name, lay in truth.items():
        labels = iio.imread(out / "labels" / f"{name}.png")
        assert labels.dtype == np.uint8 and labels.shape == lay.shape
        assert (order[labels] == lay).all()
        seg = iio.imread(out / "segmented" / f"{name}.png")
        assert seg.shape == (*lay.shape, 3) and seg.dtype == np.uint8
        palette = np.array(doc["palette"], np.uint8)
        assert (seg == palette[labels]).all()
        for j in range(4):
            mask = iio.imread(out / "masks" / name / f"{j}.png")
            assert mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 255}
            assert ((mask == 255) == (labels == j)).all()


@pytest.mark.parametrize("algorithm", ["minibatch", "lloyd"])
@pytest.mark.parametrize("space", ["rgb", "lab"])
def test_image_scope_fits_one_palette_per_image(tmp_path, collection, algorithm, space):
    _, truth = collection
    job = write_job(tmp_path, kmeans={"scope": "image", "algorithm": algorithm,
                                      "batch_pixels": 512},
                    preprocess={"color_space": space})
    assert _run(job) == 0
    doc = json.loads((tmp_path / "out" / "model.json").read_text())
    assert sorted(doc["palettes"]) == sorted(truth)
    for name, lay in truth.items():
        centroids = np.array(doc["palettes"][name]["centroids"])
        order = _match(centroids)
        assert np.abs(centroids - COLOURS[order]).max() <= 2.0
        labels = iio.imread(tmp_path / "out" / "labels" / f"{name}.png")
        assert (order[labels] == lay).all()


def test_report_lists_every_image_with_outputs_and_totals(tmp_path, collection):
    (collection[0] / "notes.txt").write_text("not an image")
    job = write_job(tmp_path)
    assert _run(job) == 0
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["status"] == "done"
    assert report["totals"]["ok"] == 5 and report["totals"]["skipped"] == 0
    assert report["ignored"] == [str(collection[0] / "notes.txt")]
    assert report["job_hash"] == load_config(job).job_hash()
    for entry in report["images"]:
        assert entry["status"] == "ok" and entry["error"] is None
        assert sum(entry["counts"]) == entry["width"] * entry["height"]
        for files in entry["outputs"].values():
            for rel, size in files:
                assert os.path.getsize(tmp_path / "out" / rel) == size
    assert not [n for _, _, names in os.walk(tmp_path / "out") for n in names
                if n.startswith(".")]


def test_resume_skips_complete_images_and_redoes_missing_ones(tmp_path, collection):
    job = write_job(tmp_path, output={"masks": False})
    assert _run(job) == 0
    out = tmp_path / "out"
    before = {p: (out / "labels" / p).read_bytes() for p in os.listdir(out / "labels")}
    os.remove(out / "labels" / "img2.png")
    (out / "segmented" / ".tmp-abc-img3.png").write_bytes(b"partial")
    assert _run(job) == 0
    report = json.loads((out / "report.json").read_text())
    resumed = {e["name"]: e["resumed"] for e in report["images"]}
    assert resumed == {"img0": True, "img1": True, "img2": False, "img3": True, "img4": True}
    assert {p: (out / "labels" / p).read_bytes() for p in os.listdir(out / "labels")} == before
    assert not (out / "segmented" / ".tmp-abc-img3.png").exists()


def test_resume_refuses_outputs_of_another_job(tmp_path, collection, capsys):
    job = write_job(tmp_path)
    assert _run(job) == 0
    assert _run(job, "--set", "kmeans.k=3") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "different job" in err[0] and "overwrite" in err[0]
    assert _run(job, "--set", "kmeans.k=3", "--set", "output.if_exists=overwrite") == 0


def test_k_larger_than_distinct_colours_and_k_one_give_valid_results(tmp_path, collection):
    # Issue 10 §5: this test used to pass whatever the palette was (`or len(palette) <= 7`).
    exact = tmp_path / "exact"
    truth = {}
    for i, (h, w) in enumerate([(40, 60), (33, 47), (64, 64)]):
        truth[f"img{i}"] = layout(h, w, len(COLOURS), seed=i)
        save(exact / "images" / f"img{i}.png", blocks_image(truth[f"img{i}"], noise=0))
    result = run_cli("run", write_job(exact, kmeans={"k": 7}), "-q")
    assert result.code == 0, result.err
    doc, report = read_json(exact / "out", "model.json"), read_json(exact / "out")
    assert report["warnings"] == ["found 4 distinct colour(s), fewer than k=7; 3 cluster(s) "
                                  "will stay empty"]
    centroids = np.array(doc["centroids"])
    assert centroids.shape == (7, 3) and np.isfinite(centroids).all()
    assert {tuple(c) for c in doc["palette"]} == {tuple(c) for c in COLOURS.tolist()}
    used = [j for j, n in enumerate(doc["counts"]) if n]
    assert len(used) == 4 and doc["counts"].count(0) == 3 and doc["inertia"] == 0
    pixels = np.concatenate([lay.ravel() for lay in truth.values()])
    assert sorted(doc["counts"][j] for j in used) == sorted(np.bincount(pixels).tolist())
    for name, lay in truth.items():
        labels = iio.imread(exact / "out" / "labels" / f"{name}.png")
        assert set(np.unique(labels)) <= set(used)
        assert (np.array(doc["palette"], np.uint8)[labels] == COLOURS[lay]).all()
        assert (iio.imread(exact / "out" / "segmented" / f"{name}.png") == COLOURS[lay]).all()

    # Four noisy colours, k=7: every centroid splits a true colour; the regions stay exact.
    assert _run(write_job(tmp_path, kmeans={"k": 7})) == 0
    doc = read_json(tmp_path / "out", "model.json")
    centroids = np.array(doc["centroids"])
    order = _match(centroids)
    assert centroids.shape == (7, 3) and sorted(set(order.tolist())) == [0, 1, 2, 3]
    assert np.abs(centroids - COLOURS[order]).max() <= 2.0
    assert len({tuple(c) for c in doc["palette"]}) == 7 and 0 not in doc["counts"]
    assert not any("distinct colour" in w for w in read_json(tmp_path / "out")["warnings"])
    for name, lay in collection[1].items():
        assert (order[iio.imread(tmp_path / "out" / "labels" / f"{name}.png")] == lay).all()

    job1 = write_job(tmp_path, kmeans={"k": 1}, output={"dir": "out1"})
    assert _run(job1) == 0
    doc1 = json.loads((tmp_path / "out1" / "model.json").read_text())
    report1 = json.loads((tmp_path / "out1" / "report.json").read_text())
    assert any(w.startswith("k=1: all ") for w in report1["warnings"])
    assert doc1["counts"] == [sum(l.size for l in collection[1].values())]


def test_single_colour_image_warns_and_segments(tmp_path):
    from conftest import save

    save(tmp_path / "images" / "flat.png", np.full((8, 6, 3), 77, np.uint8))
    job = write_job(tmp_path, kmeans={"k": 3})
    assert _run(job) == 0
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert any("found 1 distinct colour" in w for w in report["warnings"])
    seg = iio.imread(tmp_path / "out" / "segmented" / "flat.png")
    assert (seg == 77).all()


def test_scale_resizes_before_segmenting(tmp_path, collection):
    job = write_job(tmp_path, preprocess={"scale": 0.5})
    assert _run(job) == 0
    labels = iio.imread(tmp_path / "out" / "labels" / "img0.png")
    assert labels.shape == (20, 30)


def test_reusing_a_saved_model_with_max_iter_zero_reproduces_labels(tmp_path, collection):
    job = write_job(tmp_path)
    assert _run(job) == 0
    job2 = write_job(tmp_path, kmeans={"init": "out/model.json", "max_iter": 0},
                     output={"dir": "out2"})
    assert _run(job2) == 0
    for name in collection[1]:
        a = iio.imread(tmp_path / "out" / "labels" / f"{name}.png")
        b = iio.imread(tmp_path / "out2" / "labels" / f"{name}.png")
        assert (a == b).all()


@pytest.mark.parametrize("persist, decodes", [("auto", 1), ("never", 2)])
def test_threads_decode_each_image_once_unless_told_not_to_keep_pixels(tmp_path, collection,
                                                                       monkeypatch, persist,
                                                                       decodes):
    from pipeline.sources import photos

    calls = []
    real = photos.decode_masked
    monkeypatch.setattr(photos, "decode_masked",
                        lambda info: calls.append(info.name) or real(info))
    job = write_job(tmp_path, output={"masks": False}, dask={"persist": persist})
    assert _run(job, "--scheduler", "threads") == 0
    assert sorted(calls) == sorted(list(collection[1]) * decodes)


def test_image_scope_fit_warnings_reach_the_report(tmp_path, collection):
    job = write_job(tmp_path, kmeans={"scope": "image", "k": "auto", "max_k": 2,
                                      "max_error": 0.5}, output={"masks": False})
    assert _run(job) == 0
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    unmet = [w for w in report["warnings"] if "k: auto: no k <= kmeans.max_k (2)" in w]
    assert sorted(w.split(":")[0] for w in unmet) == sorted(collection[1])


_BUDGET_CHILD = """
import json, sys
from pipeline import cluster
from pipeline.cli import main
from pipeline.sources import photos
calls, real = [], photos.decode_masked
photos.decode_masked = lambda info: calls.append(info.name) or real(info)
code = main(["run", sys.argv[1], "-q", "--scheduler", "threads"])
print(json.dumps({"code": code, "budget": cluster.memory_budget(), "decodes": len(calls)}))
"""


def test_persist_auto_sizes_memory_from_the_process_limits_not_the_host(tmp_path, collection):
    """Issue 11 review: ``persist: auto`` read /proc/meminfo only, ignoring a container's
    cgroup limit.  It now reads the limits as distributed does (cgroup v1/v2, and
    RLIMIT_RSS, which a test can set): with a limit far below the decoded pixels, the sampling
    pass keeps nothing and each image is decoded twice."""
    import resource
    import subprocess
    import sys

    cap = 128 << 10  # bytes: the five images take 175 KiB decoded, four times over the cap/4

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_RSS, (cap, cap))  # read, not enforced, by Linux

    job = write_job(tmp_path, output={"masks": False}, dask={"persist": "auto"})
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    child = subprocess.run([sys.executable, "-c", _BUDGET_CHILD, job], capture_output=True,
                           text=True, preexec_fn=limit, env={**os.environ, "PYTHONPATH": root},
                           timeout=120)
    assert child.returncode == 0, child.stderr
    said = json.loads(child.stdout.splitlines()[-1])
    assert said["code"] == 0 and said["budget"] <= cap
    assert said["decodes"] == 2 * len(collection[1])


class _CtrlC:
    """A progress hook that presses Ctrl-C when the first image is done."""

    def phase(self, name: str, images: int, pixels: int) -> None:
        pass

    def advance(self, images: int, pixels: int) -> None:
        raise KeyboardInterrupt


def test_ctrl_c_is_recorded_as_interrupted_and_status_exits_130(tmp_path, collection):
    # Review of issue 15: an interrupted run's report said "failed" with error
    # "KeyboardInterrupt", and `status` exited 1 instead of the table's 130.
    import json

    import pipeline
    from pipeline.cli import main

    job = pipeline.Job.from_yaml(write_job(tmp_path), {"dask.scheduler": "synchronous"})
    with pytest.raises(KeyboardInterrupt):
        pipeline.run(job, progress=_CtrlC())
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["status"] == "cancelled" and "interrupted (Ctrl-C)" in report["error"]
    assert main(["status", str(tmp_path / "out")]) == 130
