"""Issue 6: reusing a saved palette (`apply`), k from a quality target, spatial features."""

import json

import imageio.v3 as iio
import numpy as np
import pytest

from conftest import blocks_image, layout, save, write_job
import pipeline
from pipeline import fitting as fit
from pipeline.engine import kmeans
from pipeline.sinks import segment
from pipeline.cli import main
from pipeline.config import load_config

# Six well separated colours (pairwise CIELAB Delta-E 76 > 40).
SIX = np.array([[200, 30, 40], [20, 160, 60], [30, 60, 210], [240, 220, 200],
                [250, 200, 30], [40, 40, 40]], np.uint8)


def _labels(out, name):
    return iio.imread(out / "labels" / f"{name}.png")


def _lines(capsys):
    return [line for line in capsys.readouterr().err.splitlines() if line]


# ---------------------------------------------------------------------------------------------
# apply


@pytest.mark.parametrize("spatial_weight", [0.0, 0.5])
def test_apply_reproduces_the_labels_of_the_run_that_saved_the_model(tmp_path, collection,
                                                                     spatial_weight):
    _, truth = collection
    job = write_job(tmp_path, preprocess={"spatial_weight": spatial_weight},
                    kmeans={"batch_pixels": 1024, "sample_pixels": 4000})
    assert main(["run", job, "-q"]) == 0
    job2 = write_job(tmp_path, preprocess={"spatial_weight": spatial_weight},
                     output={"dir": "out2"})
    assert main(["apply", str(tmp_path / "out" / "model.json"), job2, "-q"]) == 0
    first, second = tmp_path / "out", tmp_path / "out2"
    for name in truth:
        assert (_labels(first, name) == _labels(second, name)).all()
        assert (iio.imread(first / "segmented" / f"{name}.png")
                == iio.imread(second / "segmented" / f"{name}.png")).all()
    saved = json.loads((first / "model.json").read_text())
    applied = json.loads((second / "model.json").read_text())
    assert applied["centroids_working"] == saved["centroids_working"]
    assert applied["n_iter"] == 0 and applied["spatial_weight"] == spatial_weight


def test_the_models_k_wins_and_a_differing_k_in_the_job_warns(tmp_path, collection, caplog):
    job = write_job(tmp_path, kmeans={"k": 4})
    assert main(["run", job, "-q"]) == 0
    job2 = write_job(tmp_path, kmeans={"k": 7, "algorithm": "lloyd"}, output={"dir": "out2"})
    assert main(["apply", str(tmp_path / "out" / "model.json"), job2]) == 0
    assert "kmeans.k: the job has 7, the model" in caplog.text and "has k=4" in caplog.text
    doc = json.loads((tmp_path / "out2" / "model.json").read_text())
    assert doc["k"] == 4 and doc["job"]["kmeans"]["k"] == 4
    report = json.loads((tmp_path / "out2" / "report.json").read_text())
    assert any("the model" in w for w in report["warnings"])
    assert (tmp_path / "out2" / "palette.gpl").read_text().startswith("GIMP Palette\n")


def _edit_model(path, **changes):
    doc = json.loads(path.read_text())
    doc.update(changes)
    path.write_text(json.dumps(doc))


@pytest.mark.parametrize("changes, job_pre, message", [
    ({}, {"color_space": "lab"}, "model colour space is 'rgb', the job's is 'lab'"),
    ({}, {"spatial_weight": 0.5}, "model features use preprocess.spatial_weight 0.0, the "
                                  "job's is 0.5"),
    ({"schema_version": 99}, {}, "not a model.json of schema version 1"),
    ({"centroids_working": [[1, 2]]}, {}, "centroids_working is not a list of k rows of 3"),
])
def test_incompatible_models_are_refused_in_one_line(tmp_path, collection, capsys, changes,
                                                     job_pre, message):
    job = write_job(tmp_path)
    assert main(["run", job, "-q"]) == 0
    model = tmp_path / "out" / "model.json"
    _edit_model(model, **changes)
    capsys.readouterr()
    job2 = write_job(tmp_path, preprocess=job_pre, output={"dir": "out2"})
    assert main(["apply", str(model), job2]) == 2
    lines = _lines(capsys)
    assert len(lines) == 1 and message in lines[0] and str(model) in lines[0]
    assert not (tmp_path / "out2").exists()


def test_apply_names_a_missing_model_file(tmp_path, collection, capsys):
    job = write_job(tmp_path)
    assert main(["apply", str(tmp_path / "nope.json"), job]) == 2
    assert _lines(capsys) == [f"error: {tmp_path / 'nope.json'}: model file not found; give "
                              "the model.json written by an earlier run"]


def test_palette_exports_match_the_model(tmp_path, collection):
    job = write_job(tmp_path)
    assert main(["run", job, "-q"]) == 0
    out = tmp_path / "out"
    doc = json.loads((out / "model.json").read_text())
    lines = (out / "palette.gpl").read_text().splitlines()
    assert lines[:2] == ["GIMP Palette", "Name: kmeans-pipeline job.yaml k=4"]
    rows = [line.split("\t")[0].split() for line in lines[4:]]
    assert [[int(v) for v in row] for row in rows] == doc["palette"]
    strip = iio.imread(out / "palette.png")
    assert strip.shape == (32, 4 * 32, 3)
    assert (strip[16, 16::32] == np.array(doc["palette"], np.uint8)).all()


# ---------------------------------------------------------------------------------------------
# k: auto


@pytest.fixture
def six_colours(tmp_path):
    for i, (h, w) in enumerate([(40, 48), (36, 30), (24, 60)]):
        save(tmp_path / "images" / f"six{i}.png", blocks_image(layout(h, w, 6, seed=i), SIX,
                                                               seed=i))
    return tmp_path


def _sample(folder):
    return np.concatenate([iio.imread(p).reshape(-1, 3)
                           for p in sorted((folder / "images").iterdir())])


@pytest.mark.parametrize("max_error, expect", [(3.0, 6), (25.0, None)])
def test_auto_k_picks_six_for_a_tight_target_and_fewer_for_a_loose_one(six_colours, max_error,
                                                                       expect):
    job = write_job(six_colours, kmeans={"k": "auto", "max_error": max_error, "max_k": 16,
                                         "batch_pixels": 512})
    cfg = load_config(job)
    auto = fit.choose_k(_sample(six_colours), cfg.kmeans, "rgb")
    assert auto.met
    if expect is not None:
        assert auto.k == expect
        # Doubling 1, 2, 4, 8 then bisection 6, 5: six fits.
        assert [t["k"] for t in auto.tried] == [1, 2, 4, 8, 6, 5]
    else:
        assert 1 <= auto.k < 6
    errors = {t["k"]: t["error"] for t in auto.tried}
    assert errors[auto.k] <= max_error
    assert all(errors[k] > max_error for k in errors if k < auto.k)


def test_auto_k_through_a_run_records_the_search(six_colours):
    job = write_job(six_colours, kmeans={"k": "auto", "max_error": 3.0, "max_k": 16,
                                         "batch_pixels": 512})
    assert main(["run", job, "-q"]) == 0
    doc = json.loads((six_colours / "out" / "model.json").read_text())
    assert doc["k"] == 6 and len(doc["palette"]) == 6
    assert doc["auto_k"]["k"] == 6 and doc["auto_k"]["fits"] == 6
    assert doc["auto_k"]["error"] <= 3.0
    page = (six_colours / "out" / "report.html").read_text()
    assert "Error vs k" in page and "k = 6 chosen after 6 fits" in page


def test_auto_k_warns_when_max_k_misses_the_target(six_colours):
    job = write_job(six_colours, kmeans={"k": "auto", "max_error": 0.01, "max_k": 3,
                                         "batch_pixels": 512, "scope": "image"})
    assert main(["run", job, "-q"]) == 0
    doc = json.loads((six_colours / "out" / "model.json").read_text())
    for entry in doc["palettes"].values():
        assert len(entry["centroids"]) == 3 and entry["auto_k"]["met"] is False
        assert [t["k"] for t in entry["auto_k"]["tried"]] == [1, 2, 3]


# ---------------------------------------------------------------------------------------------
# spatial_weight


def _two_same_colour_regions():
    """Red left and right thirds, a white band between: the two red regions share a colour."""
    layout_ = np.zeros((30, 60), np.int64)
    layout_[:, 24:36] = 1
    return blocks_image(layout_, np.array([[200, 30, 40], [240, 240, 240]], np.uint8))


@pytest.mark.parametrize("weight, separated", [(0.0, False), (1.0, True)])
def test_spatial_weight_separates_two_regions_of_the_same_colour(tmp_path, weight, separated):
    save(tmp_path / "images" / "two.png", _two_same_colour_regions())
    job = write_job(tmp_path, kmeans={"k": 3, "batch_pixels": 256},
                    preprocess={"spatial_weight": weight})
    assert main(["run", job, "-q"]) == 0
    labels = _labels(tmp_path / "out", "two")
    left, right, band = labels[:, :24], labels[:, 36:], labels[:, 24:36]
    assert len(np.unique(band)) == 1 and band[0, 0] not in np.unique(left)
    if not separated:  # colour alone cannot tell the regions apart: both get the same labels
        assert set(np.unique(left)) == set(np.unique(right))
    else:  # each region is one cluster, painted with its mean colour
        assert (left == left[0, 0]).all() and (right == right[0, 0]).all()
        seg = iio.imread(tmp_path / "out" / "segmented" / "two.png").astype(int)
        assert np.abs(seg[:, :24] - [200, 30, 40]).max() <= 1
        assert np.abs(seg[:, 36:] - [200, 30, 40]).max() <= 1


def test_spatial_labels_do_not_depend_on_the_block_size(monkeypatch):
    pixels = blocks_image(layout(37, 53, 4, seed=3), noise=20)
    rng = np.random.default_rng(0)
    centroids = np.column_stack([rng.uniform(0, 255, (5, 3)), rng.uniform(0, 255, (5, 2))])
    reference = segment.label_image_spatial(pixels, centroids, "lab", 1.0)
    monkeypatch.setattr(segment, "_SPATIAL_BLOCK", 97)
    labels, counts, inertia = segment.label_image_spatial(pixels, centroids, "lab", 1.0)
    assert (labels == reference[0]).all() and (counts == reference[1]).all()
    assert inertia == pytest.approx(reference[2], rel=1e-12)
    # The same rows through the sample path's feature builder give the same labels.
    where = np.arange(pixels.shape[0] * pixels.shape[1])
    features = kmeans.spatial_features(pixels.reshape(-1, 3), where, 53, 37, "lab", 1.0)
    assert (kmeans.assign(features, centroids)[0] == labels.ravel()).all()


def test_spatial_run_is_the_same_on_threads_and_a_local_cluster(tmp_path, collection,
                                                                 local_cluster):
    from distributed import Client

    job = write_job(tmp_path, preprocess={"spatial_weight": 0.3},
                    kmeans={"batch_pixels": 512, "sample_pixels": 3000},
                    output={"masks": False})
    pipeline.run(pipeline.Job.from_yaml(job, {"output.dir": "a"}, scheduler="threads"))
    with Client(local_cluster):
        pipeline.run(pipeline.Job.from_yaml(job, {"output.dir": "b"}))
    for name in collection[1]:
        assert (_labels(tmp_path / "a", name) == _labels(tmp_path / "b", name)).all()
    assert (json.loads((tmp_path / "a" / "model.json").read_text())["centroids_working"]
            == json.loads((tmp_path / "b" / "model.json").read_text())["centroids_working"])


def test_config_refuses_spatial_lloyd_and_small_batches_for_auto(tmp_path, collection, capsys):
    job = write_job(tmp_path, preprocess={"spatial_weight": 1.0},
                    kmeans={"algorithm": "lloyd", "k": "auto", "max_k": 64, "batch_pixels": 32})
    assert main(["validate", job]) == 2
    lines = _lines(capsys)
    assert any("preprocess.spatial_weight: > 0 needs kmeans.algorithm: minibatch" in l
               for l in lines)
    assert any("kmeans.batch_pixels: must be >= kmeans.max_k (64) with k: auto" in l
               for l in lines)
