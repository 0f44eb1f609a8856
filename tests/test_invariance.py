"""Same job, same seed: same centroids and label maps on every scheduler and chunking."""

import json

import imageio.v3 as iio
import numpy as np
import pytest

import pipeline
from conftest import write_job


def _outputs(out, names):
    doc = json.loads((out / "model.json").read_text())
    labels = {n: iio.imread(out / "labels" / f"{n}.png") for n in names}
    return np.array(doc["centroids_working"]), labels


def _run_with(job, scheduler=None, client_of=None, **overrides):
    job = pipeline.Job.from_yaml(job, {k.replace("__", "."): v for k, v in overrides.items()},
                                 scheduler)
    if client_of is not None:
        from distributed import Client

        with Client(client_of):
            return pipeline.run(job)
    return pipeline.run(job)


@pytest.mark.parametrize("algorithm", ["minibatch", "lloyd"])
@pytest.mark.parametrize("space", ["rgb", "lab"])
def test_schedulers_and_chunkings_agree(tmp_path, collection, local_cluster, algorithm, space):
    _, truth = collection
    job = write_job(tmp_path, kmeans={"algorithm": algorithm, "batch_pixels": 256,
                                      "sample_pixels": 3000},
                    preprocess={"color_space": space}, output={"masks": False})
    results = []
    for i, (scheduler, chunk, client_of) in enumerate([("synchronous", 4194304, None),
                                                       ("threads", 500, None),
                                                       ("threads", 4194304, None),
                                                       (None, 777, local_cluster)]):
        _run_with(job, scheduler, client_of, output__dir=f"out{i}", dask__chunk_pixels=chunk)
        results.append(_outputs(tmp_path / f"out{i}", truth))
    reference_centroids, reference_labels = results[0]
    for centroids, labels in results[1:]:
        # the same bits: the fit on the sample runs here, lloyd's passes add the partial sums
        # of the same colour shards in the same order on every scheduler (issue 14)
        assert centroids.tolist() == reference_centroids.tolist()
        for name in truth:
            assert (labels[name] == reference_labels[name]).all()


def test_run_uses_the_active_distributed_client(tmp_path, collection, local_cluster):
    # Issue 10 §5: this used to count ok images only; the cluster run must give the threads
    # run's model and label maps, and its tasks must run on the cluster's workers.
    from distributed import Client, get_task_stream

    _, truth = collection
    job = write_job(tmp_path, output={"masks": False})
    _run_with(job, "threads", output__dir="out_threads")
    with Client(local_cluster) as client, get_task_stream(client) as tasks:
        report = pipeline.run(pipeline.Job.from_yaml(job))
    assert report["totals"]["ok"] == len(truth)
    workers = set(local_cluster.scheduler_info["workers"])
    assert tasks.data and {task["worker"] for task in tasks.data} <= workers
    centroids, labels = _outputs(tmp_path / "out", truth)
    reference_centroids, reference_labels = _outputs(tmp_path / "out_threads", truth)
    assert np.allclose(centroids, reference_centroids, rtol=0, atol=1e-6)
    for name in truth:
        assert (labels[name] == reference_labels[name]).all()
