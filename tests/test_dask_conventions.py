"""dask's own conventions (issue 15 §2): with no scheduler in the job, DASK_SCHEDULER_ADDRESS,
dask config or an active Client decide, else threads; which one and why is in -v, --json and
report.json, with the dashboard link; dask.performance_report writes dask's HTML report."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import dask
import numpy as np
import pytest
from PIL import Image

from conftest import write_job
from pipeline.cli import main
from test_cluster import DEADLINE, DaskProcesses

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def scheduler(tmp_path_factory):
    """A real `dask scheduler` and one `dask worker` on 127.0.0.1."""
    cluster = DaskProcesses(tmp_path_factory.mktemp("dask"), n_workers=1)
    try:
        yield cluster
    finally:
        cluster.close()


def _report(folder) -> dict:
    with open(os.path.join(str(folder), "out", "report.json")) as handle:
        return json.load(handle)


def _labels(folder) -> dict[str, bytes]:
    labels = os.path.join(str(folder), "out", "labels")
    return {name: open(os.path.join(labels, name), "rb").read()
            for name in sorted(os.listdir(labels))}


ICC_WARNING = ("WARNING pipeline.sources.photos: {path}: ignoring an unusable ICC profile "
               "(cannot open profile from string)")


def _with_bad_icc_profile(folder) -> None:
    """An image whose ICC profile is garbage: decoding it logs a warning (in the task)."""
    pixels = np.full((8, 12, 3), 90, np.uint8)
    Image.fromarray(pixels).save(str(folder / "icc.png"), icc_profile=b"not a profile" * 8)


def test_dask_scheduler_address_is_used_when_the_job_names_no_scheduler(tmp_path, collection,
                                                                        scheduler):
    _with_bad_icc_profile(tmp_path / "images")
    job = write_job(tmp_path, output={"masks": False})
    env = {**os.environ, "DASK_SCHEDULER_ADDRESS": scheduler.address,
           "PYTHONPATH": os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-m", "pipeline", "run", job, "--json", "-v"],
                          capture_output=True, text=True, timeout=DEADLINE * 2, env=env)
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["scheduler"] == scheduler.address
    assert summary["scheduler_reason"] == "DASK_SCHEDULER_ADDRESS"
    assert summary["dashboard"].startswith("http://127.0.0.1:")
    assert f"scheduler: {scheduler.address} (DASK_SCHEDULER_ADDRESS)" in done.stderr
    report = _report(tmp_path)
    assert report["scheduler"] == {
        "scheduler": scheduler.address, "reason": "DASK_SCHEDULER_ADDRESS",
        "dashboard": summary["dashboard"], "workers": 1}
    # the warning logged on the worker: in the client's log and in the image's report entry
    icc = str(tmp_path / "images" / "icc.png")
    assert f"WARNING: pipeline.sources.photos: {icc}: ignoring an unusable ICC" in done.stderr
    logs = {entry["name"]: entry.get("log") for entry in report["images"]}
    assert logs.pop("icc") == [ICC_WARNING.format(path=icc)] and set(logs.values()) == {None}
    # the same label maps as on threads
    threads = tmp_path / "threads"
    threads.mkdir()
    os.symlink(tmp_path / "images", threads / "images")
    assert main(["run", write_job(threads, output={"masks": False}), "-q",
                 "--scheduler", "threads"]) == 0
    assert _labels(threads) == _labels(tmp_path)
    on_threads = {entry["name"]: entry.get("log") for entry in _report(threads)["images"]}
    assert on_threads.pop("icc") == [ICC_WARNING.format(path=threads / "images" / "icc.png")]
    assert set(on_threads.values()) == {None}  # the same log as on the cluster; -q or not


def test_default_is_threads_and_says_why(tmp_path, collection, capsys):
    job = write_job(tmp_path, output={"masks": False})
    assert main(["run", job, "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["scheduler"] == "threads" and summary["dashboard"] is None
    assert summary["scheduler_reason"].startswith("the default: neither the job")
    assert _report(tmp_path)["scheduler"]["reason"] == summary["scheduler_reason"]


def test_dask_config_scheduler_key_is_followed(tmp_path, collection, capsys):
    job = write_job(tmp_path, output={"masks": False})
    with dask.config.set(scheduler="sync"):
        assert main(["run", job, "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["scheduler"] == "synchronous"
    assert summary["scheduler_reason"] == "scheduler: 'sync' in dask config"


def test_an_active_client_is_used(tmp_path, collection, local_cluster, capsys):
    from distributed import Client

    job = write_job(tmp_path, output={"masks": False})
    with Client(local_cluster) as client:
        assert main(["run", job, "--json"]) == 0
        summary = json.loads(capsys.readouterr().out)
        assert summary["scheduler"] == client.scheduler.address
        assert summary["scheduler_reason"] == "the active dask Client in this process"
    # a scheduler in the job wins over the active client
    with Client(local_cluster):
        assert main(["run", job, "--json", "--scheduler", "threads"]) == 0
    assert json.loads(capsys.readouterr().out)["scheduler"] == "threads"


def test_performance_report_is_written_on_a_local_cluster_when_unset(tmp_path, collection,
                                                                     capsys):
    job = write_job(tmp_path, output={"masks": False}, dask={"n_workers": 1,
                                                             "threads_per_worker": 1})
    assert main(["run", job, "--json", "--set",
                 f"dask.performance_report={tmp_path / 'perf.html'}"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["scheduler"] == "local"
    assert "dask.performance_report needs a distributed scheduler" in summary["scheduler_reason"]
    html = (tmp_path / "perf.html").read_text()
    assert "Dask Performance Report" in html


def test_performance_report_on_a_named_local_scheduler_is_exit_2(tmp_path, collection, capsys):
    job = write_job(tmp_path, dask={"performance_report": "perf.html"})
    assert main(["run", job, "--scheduler", "threads"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: dask.performance_report: needs a distributed scheduler, but the job "
                   "runs on 'threads' (dask.scheduler in the job or --scheduler); use "
                   "dask.scheduler: local or a scheduler address, or drop "
                   "dask.performance_report"]
    assert not (tmp_path / "perf.html").exists()


def test_unreachable_dask_scheduler_address_says_where_the_address_came_from(
        tmp_path, collection, capsys, monkeypatch):
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        address = f"tcp://127.0.0.1:{sock.getsockname()[1]}"  # nothing listens there
    job = write_job(tmp_path, dask={"timeout": 0.5})
    monkeypatch.setenv("DASK_SCHEDULER_ADDRESS", address)
    dask.config.refresh()  # dask reads the environment when imported, as in a new process
    try:
        assert main(["run", job]) == 2
    finally:
        monkeypatch.delenv("DASK_SCHEDULER_ADDRESS")
        dask.config.refresh()
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert err[0].startswith(f"error: cannot reach the dask scheduler at {address} (from "
                             "DASK_SCHEDULER_ADDRESS) within 0.5 s")


def test_performance_report_in_a_missing_folder_is_exit_2_before_any_cluster(tmp_path,
                                                                            collection, capsys):
    job = write_job(tmp_path, dask={"performance_report": "nowhere/perf.html"})
    assert main(["run", job]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: dask.performance_report: folder '{tmp_path / 'nowhere'}' does not "
                   "exist; create it or choose another path"]
    assert not (tmp_path / "out").exists()


def test_a_local_cluster_serves_no_dashboard_unless_asked(tmp_path, collection, capsys):
    # issue 14: bokeh's pages cost 0.3-0.4 s of a LocalCluster's start-up
    job = write_job(tmp_path, output={"masks": False}, dask={"n_workers": 1,
                                                             "threads_per_worker": 1})
    assert main(["run", job, "--json", "--scheduler", "local"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["scheduler"] == "local" and summary["dashboard"] is None
    assert _report(tmp_path)["scheduler"]["dashboard"] is None
    assert main(["run", job, "--json", "--scheduler", "local", "--set",
                 "dask.dashboard=true"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["dashboard"].startswith("http://127.0.0.1:")
    assert _report(tmp_path)["scheduler"]["dashboard"] == summary["dashboard"]


def test_a_local_cluster_forks_its_workers_from_a_forkserver_with_the_same_labels(
        tmp_path, collection):
    # issue 14: each spawned worker imported distributed and the task modules itself
    from distributed import default_client

    from pipeline.api import Job, run

    job = write_job(tmp_path, output={"masks": False}, dask={"n_workers": 2,
                                                             "threads_per_worker": 1})
    seen = {}

    def on_connect(connection) -> None:
        client = default_client()
        seen.update(client.run(lambda: (os.getppid(), os.environ.get("OMP_NUM_THREADS"),
                                        os.environ.get("PYTHONHASHSEED"))))

    run(Job.from_yaml(job).with_overrides(["dask.scheduler=local"]), progress=None,
        on_connect=on_connect)
    assert len(seen) == 2
    for parent, omp, hashseed in seen.values():
        assert parent != os.getpid()  # spawned, a worker is a child of this process
        assert omp == "1" and hashseed not in (None, "0")  # set before the server started
    local = _labels(tmp_path)
    threads = tmp_path / "threads"
    threads.mkdir()
    os.symlink(tmp_path / "images", threads / "images")
    assert main(["run", write_job(threads, output={"masks": False}), "-q",
                 "--scheduler", "threads"]) == 0
    assert _labels(threads) == local
