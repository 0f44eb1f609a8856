"""On real dask clusters: `dask scheduler` and `dask worker` processes on 127.0.0.1, started here.

Every run is checked against the same job on the threaded scheduler: the model's centroids
bit for bit and the label maps byte for byte.  Faults are injected when report.json or the
output folder shows that the run has reached the point under test, never after a fixed sleep.
"""

from __future__ import annotations

import collections
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time

import imageio.v3 as iio
import numpy as np
import pytest

from conftest import blocks_image, layout, save, write_job
from pipeline.cli import main

DEADLINE = 60.0  # seconds: a bound on every wait, so a broken run fails instead of hanging
N_IMAGES = 16
N_BLOCKS = 64


class DaskProcesses:
    """A `dask scheduler` and `dask worker` processes (nanny, 1 thread each) on 127.0.0.1.

    Workers join through the scheduler file, as dask-jobqueue and dask-mpi deployments do.
    """

    def __init__(self, folder, n_workers: int, memory_limit: str = "600MiB",
                 worker_cwd: str | None = None, config: dict[str, str] | None = None):
        self.folder = str(folder)
        os.makedirs(self.folder, exist_ok=True)
        self.file = os.path.join(self.folder, "scheduler.json")
        self.procs: list[subprocess.Popen] = []
        self.memory_limit, self.worker_cwd = memory_limit, worker_cwd
        # dask settings for the scheduler and workers, as DASK_* environment variables
        self.env = {**os.environ, **{"DASK_" + key.upper().replace(".", "__").replace("-", "_"):
                                     value for key, value in (config or {}).items()}}
        self.scheduler = self._spawn("scheduler", "--host", "127.0.0.1", "--port", "0",
                                     "--dashboard-address", "127.0.0.1:0", "--no-show",
                                     "--scheduler-file", self.file)
        self.address = self._read_address()
        for _ in range(n_workers):
            self.add_worker()
        self.wait_for_workers(n_workers)

    def _spawn(self, *args: str, cwd: str | None = None) -> subprocess.Popen:
        log = open(os.path.join(self.folder, f"{args[0]}-{len(self.procs)}.log"), "w")
        # `python -m dask` is the `dask` command of the interpreter running the tests.
        proc = subprocess.Popen([sys.executable, "-m", "dask", *args], cwd=cwd or self.folder,
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                env=self.env)
        log.close()
        self.procs.append(proc)
        return proc

    def _read_address(self) -> str:
        wait_until(lambda: _json(self.file).get("address"), "the scheduler file")
        return _json(self.file)["address"]

    def add_worker(self) -> None:
        self._spawn("worker", "--scheduler-file", self.file, "--nthreads", "1",
                    "--memory-limit", self.memory_limit, "--host", "127.0.0.1",
                    "--no-dashboard", "--local-directory", os.path.join(self.folder, "work"),
                    cwd=self.worker_cwd)

    def client(self):
        from distributed import Client

        return Client(self.address, timeout=DEADLINE, set_as_default=False)

    def wait_for_workers(self, n: int) -> None:
        with self.client() as client:
            client.wait_for_workers(n, timeout=DEADLINE)

    def worker_pids(self) -> dict[str, int]:
        """Worker address -> pid of the worker process (its nanny restarts it when killed)."""
        with self.client() as client:
            return client.run(os.getpid)

    def kill_worker(self, address: str, pid: int) -> None:
        """SIGKILL a worker process (see `worker_pids`); returns once the scheduler noticed."""
        os.kill(pid, signal.SIGKILL)
        with self.client() as client:
            wait_until(lambda: address not in client.scheduler_info()["workers"],
                       "the scheduler to notice the dead worker")

    def wait_idle(self) -> None:
        """Until no worker runs a task (tasks of a killed client finish on their own)."""
        with self.client() as client:
            # A lambda, so that it is pickled by value: workers cannot import this module.
            executing = lambda dask_worker: len(dask_worker.state.executing)  # noqa: E731
            wait_until(lambda: not any(client.run(executing).values()), "idle workers")

    def kill_scheduler(self) -> None:
        os.killpg(self.scheduler.pid, signal.SIGKILL)

    def close(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def wait_until(condition, what: str, every: float = 0.005):
    deadline = time.monotonic() + DEADLINE
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"gave up waiting for {what} after {DEADLINE:g} s")


def _json(path) -> dict:
    try:
        with open(path) as handle:
            data = json.load(handle)
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


@pytest.fixture(scope="module")
def remote(tmp_path_factory):
    """Scheduler + 2 workers (600 MiB each) shared by this module's tests; heals after kills."""
    cluster = DaskProcesses(tmp_path_factory.mktemp("dask"), n_workers=2)
    try:
        yield cluster
    finally:
        cluster.close()


@pytest.fixture
def healthy(remote):
    """The shared cluster with both workers up (a killed worker's nanny restarts it)."""
    remote.wait_for_workers(2)
    return remote


def _gradient(height: int, width: int, seed: int) -> np.ndarray:
    """Smooth colour ramps plus noise: many distinct colours, so Lloyd needs many steps."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    a, b, c = rng.uniform(0.5, 3.0, 3)
    image = np.stack([255 * x / width, 255 * y / height,
                      127 + 120 * np.sin(a * x / width + b * y / height + c)], axis=-1)
    return np.clip(image + rng.normal(0, 4, image.shape), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def gradients(tmp_path_factory):
    """16 tiny images of colour ramps (a folder shared by this module's tests)."""
    folder = tmp_path_factory.mktemp("gradients")
    for i in range(N_IMAGES):
        save(folder / f"g{i:02d}.png", _gradient(24, 32, i))
    return str(folder)


def _lloyd_job(folder, images: str, **sections) -> str:
    """A lloyd job whose fit runs exactly 8 full passes over the images (tol 0)."""
    sections.setdefault("output", {"masks": False})
    return write_job(folder, input={"paths": [images]},
                     kmeans={"algorithm": "lloyd", "k": 6, "tol": 0.0, "max_iter": 8},
                     dask={"timeout": 20.0}, **sections)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, gradients):
    """The lloyd job's outputs on the threaded scheduler."""
    folder = tmp_path_factory.mktemp("reference")
    job = _lloyd_job(folder, gradients)
    assert main(["run", job, "-q", "--scheduler", "threads"]) == 0
    return _outputs(str(folder / "out"))


@pytest.fixture
def job(tmp_path, gradients):
    return _lloyd_job(tmp_path, gradients)


@pytest.fixture(scope="module")
def blocks(tmp_path_factory):
    """64 images of colour blocks, with masks: a segment phase long enough to act in."""
    folder = tmp_path_factory.mktemp("blocks")
    for i in range(N_BLOCKS):
        save(folder / f"b{i:02d}.png", blocks_image(layout(64, 64, 4, i), seed=i))
    return str(folder)


@pytest.fixture(scope="module")
def blocks_reference(tmp_path_factory, blocks):
    folder = tmp_path_factory.mktemp("blocks-reference")
    job = write_job(folder, input={"paths": [blocks]})
    assert main(["run", job, "-q", "--scheduler", "threads"]) == 0
    return _outputs(str(folder / "out"))


@pytest.fixture
def blocks_job(tmp_path, blocks):
    return write_job(tmp_path, input={"paths": [blocks]})


def _outputs(out: str) -> dict:
    """model.json's centroids and step count, and the bytes of every label map and image."""
    model = _json(os.path.join(out, "model.json"))
    files = {}
    for kind in ("labels", "segmented"):
        for name in sorted(os.listdir(os.path.join(out, kind))):
            with open(os.path.join(out, kind, name), "rb") as handle:
                files[f"{kind}/{name}"] = handle.read()
    return {"centroids": np.array(model["centroids"]), "n_iter": model["n_iter"],
            "files": files}


def _assert_same(out: str, reference: dict) -> None:
    got = _outputs(out)
    assert got["files"].keys() == reference["files"].keys()
    assert got["centroids"].tolist() == reference["centroids"].tolist()  # the same bits
    assert got["n_iter"] == reference["n_iter"]
    for name, data in reference["files"].items():
        assert got["files"][name] == data, name
    leftovers = [n for _, _, names in os.walk(out) for n in names if n.startswith(".tmp-")]
    assert leftovers == []


def _out(job: str) -> str:
    return os.path.join(os.path.dirname(job), "out")


def _report(job: str) -> dict:
    return _json(os.path.join(_out(job), "report.json"))


def _some_done(job: str, n_images: int = N_IMAGES, job_id: str | None = None) -> bool:
    """report.json shows that some, but not all, images are done."""
    report = _report(job)
    if job_id is not None and report.get("job_id") != job_id:
        return False
    return 0 < report.get("totals", {}).get("ok", 0) < n_images


def _done_when(report: dict) -> dict[str, str]:
    """Image name -> when it was finished, for the images a report says are done."""
    return {r["name"]: r["finished"] for r in report["images"] if r["status"] == "ok"}


def _n_labels(job: str) -> int:
    folder = os.path.join(_out(job), "labels")
    return len([n for n in os.listdir(folder) if n.endswith(".png")]) if os.path.isdir(folder) \
        else 0


def _run_in_thread(argv: list[str]) -> tuple[threading.Thread, list]:
    result: list = []
    thread = threading.Thread(target=lambda: result.append(main(argv)), daemon=True)
    thread.start()
    return thread, result


# ---------------------------------------------------------------------------------------------
# Same results everywhere


@pytest.mark.cluster
def test_same_labels_and_centroids_on_threads_a_localcluster_and_a_remote_scheduler(
        tmp_path, job, reference, healthy):
    # One remote worker: see test_workers_that_cannot_see_the_files_are_named_before_any_work.
    runs = {
        "local": ["--scheduler", "local", "--set", "dask.n_workers=2",
                  "--set", "dask.threads_per_worker=1", "--set", "dask.memory_limit=600MiB"],
        "remote-always": ["--scheduler", healthy.address, "--set", "dask.persist=always"],
        # Decoded again on every pass, by workers limited to 600 MiB each.
        "remote-never": ["--scheduler-file", healthy.file, "--set", "dask.persist=never"],
    }
    for name, extra in runs.items():
        assert main(["run", job, "-q", "--set", f"output.dir={tmp_path / name}",
                     *extra]) == 0, name
        _assert_same(str(tmp_path / name), reference)


# ---------------------------------------------------------------------------------------------
# Workers killed


@pytest.mark.cluster
@pytest.mark.parametrize("persist", ["always", "never"])
def test_worker_killed_while_fitting_job_completes_identically(job, reference, healthy, persist):
    victim = min(healthy.worker_pids().items())
    thread, result = _run_in_thread(["run", job, "-q", "--scheduler", healthy.address,
                                     "--set", f"dask.persist={persist}"])
    wait_until(lambda: _report(job).get("progress", {}).get("phase") == "fit", "the fit")
    healthy.kill_worker(*victim)
    # report.json is rewritten when the segment phase starts: the kill came mid-fit.
    assert _report(job)["progress"]["phase"] == "fit"
    thread.join(DEADLINE)
    assert result == [0]
    _assert_same(_out(job), reference)


@pytest.mark.cluster
def test_worker_killed_while_writing_job_completes_identically(blocks_job, blocks_reference,
                                                               healthy):
    victim = min(healthy.worker_pids().items())
    thread, result = _run_in_thread(["run", blocks_job, "-q", "--scheduler", healthy.address])
    wait_until(lambda: 0 < _n_labels(blocks_job) < N_BLOCKS, "some images written")
    healthy.kill_worker(*victim)
    assert _n_labels(blocks_job) < N_BLOCKS
    thread.join(DEADLINE)
    assert result == [0]
    _assert_same(_out(blocks_job), blocks_reference)


# ---------------------------------------------------------------------------------------------
# Scheduler unreachable or lost, client killed


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_scheduler_unreachable_at_start_is_one_line_and_exit_2(tmp_path, job, capsys):
    address = f"tcp://127.0.0.1:{_free_port()}"  # nothing listens there
    (tmp_path / "scheduler.json").write_text(json.dumps({"address": address}))
    for command, where in (("run", ["--scheduler", address]),
                           ("run", ["--scheduler-file", str(tmp_path / "scheduler.json")]),
                           ("submit", ["--scheduler", address])):
        assert main([command, job, *where, "--set", "dask.timeout=0.5"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1, err
        assert err[0].startswith(f"error: cannot reach the dask scheduler at {where[1]} within "
                                 "0.5 s")
        assert "dask.timeout" in err[0]
    assert not os.path.exists(_out(job))


@pytest.mark.cluster
def test_scheduler_lost_mid_run_exits_1_and_resume_finishes_identically(
        tmp_path, job, reference, healthy, capsys):
    doomed = DaskProcesses(tmp_path / "doomed", n_workers=1)
    try:
        thread, result = _run_in_thread(["run", job, "-q", "--scheduler-file", doomed.file])
        wait_until(lambda: _some_done(job), "some images done")
        doomed.kill_scheduler()
        thread.join(DEADLINE)
    finally:
        doomed.close()
    assert result == [1]
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: lost the dask scheduler while computing; rerun with "
                   "output.if_exists: resume to finish the job"]
    lost = _report(job)
    assert lost["status"] == "failed" and lost["error"].startswith("lost the dask scheduler")
    done = _done_when(lost)
    assert 0 < len(done) < N_IMAGES
    written = {name: os.stat(os.path.join(_out(job), "labels", f"{name}.png")).st_mtime_ns
               for name in done}
    assert main(["run", job, "-q", "--scheduler", healthy.address]) == 0
    final = _report(job)
    assert {r["name"] for r in final["images"] if r["resumed"]} == set(done)
    assert _done_when(final).items() >= done.items()
    assert written == {name: os.stat(os.path.join(_out(job), "labels", f"{name}.png")
                                     ).st_mtime_ns for name in done}
    _assert_same(_out(job), reference)


@pytest.mark.cluster
def test_workers_dying_on_a_task_stop_the_run_with_one_line(tmp_path, blocks_job, capsys):
    job = blocks_job
    fragile = DaskProcesses(tmp_path / "fragile", n_workers=1,
                            config={"distributed.scheduler.allowed-failures": "0"})
    try:
        victim = min(fragile.worker_pids().items())
        thread, result = _run_in_thread(["run", job, "-q", "--scheduler", fragile.address])
        # Mid-segment the worker always holds a task: killing it counts against that task.
        wait_until(lambda: _some_done(job, N_BLOCKS), "some images done")
        fragile.kill_worker(*victim)
        thread.join(DEADLINE)
    finally:
        fragile.close()
    err = capsys.readouterr().err.strip().splitlines()
    assert result == [1], err
    assert len(err) == 1 and err[0].startswith("error: dask workers died 1 time(s) running task")
    assert "memory limit" in err[0] and err[0].endswith("output.if_exists: resume to finish the job")
    assert _report(job)["status"] == "failed"


def _assert_only_complete_files(out: str) -> None:
    for folder, _, names in os.walk(out):
        for name in names:
            assert not name.startswith(".tmp-"), os.path.join(folder, name)
            if name.endswith(".png"):
                iio.imread(os.path.join(folder, name))  # a truncated PNG raises


@pytest.mark.cluster
def test_client_killed_leaves_no_partial_files_and_resume_finishes_identically(
        job, reference, healthy):
    client = subprocess.Popen([sys.executable, "-m", "pipeline", "run", job, "-q",
                               "--scheduler", healthy.address])
    try:
        wait_until(lambda: _some_done(job), "some images done")
    finally:
        client.kill()
        client.wait()
    left = _report(job)
    assert left["status"] == "running"  # as the killed client last wrote it
    done = _done_when(left)
    assert done and all(when for when in done.values())  # which images were done, and when
    healthy.wait_idle()  # tasks of the dead client that were running finish on their own
    _assert_only_complete_files(_out(job))
    assert main(["run", job, "-q", "--scheduler", healthy.address]) == 0
    final = _report(job)
    assert {r["name"] for r in final["images"] if r["resumed"]} >= set(done)
    _assert_same(_out(job), reference)


# ---------------------------------------------------------------------------------------------
# What the workers see


@pytest.mark.cluster
def test_workers_that_cannot_see_the_files_are_named_before_any_work(
        tmp_path, gradients, reference, monkeypatch, capsys):
    # /proc/self/cwd is each process's own working folder: the client (here) and the worker
    # (started in an empty folder) see different files at the same path, as on two machines
    # without a shared filesystem.
    client_cwd, worker_cwd = tmp_path / "client", tmp_path / "worker"
    client_cwd.mkdir()
    worker_cwd.mkdir()
    os.symlink(gradients, client_cwd / "images")
    monkeypatch.chdir(client_cwd)
    blind = _lloyd_job(client_cwd, "/proc/self/cwd/images",
                       output={"masks": False, "dir": "/proc/self/cwd/out"})
    single = DaskProcesses(tmp_path / "dask", n_workers=1, worker_cwd=str(worker_cwd))
    try:
        assert main(["run", blind, "-q", "--scheduler-file", single.file]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert err[0] == ("error: 1 of 1 dask worker(s) cannot see this job's files; input.paths "
                          "and output.dir must be on a filesystem every worker mounts at the "
                          "same path:")
        worker = single.address.rsplit(":", 1)[0]
        assert err[1].startswith(f"  {worker}:")
        assert err[1].endswith(": cannot read input /proc/self/cwd/images/g00.png "
                               "(No such file or directory)")
        assert err[-1].endswith(": output.dir /proc/self/cwd/out: not the folder the client "
                                "made (no .tmp-probe-") or "not the folder" in err[-1]
        assert not os.path.exists(client_cwd / "out" / "labels")
        assert not os.listdir(worker_cwd)
        # The same job with paths the worker sees: one remote worker gives the same results.
        seeing = _lloyd_job(tmp_path, gradients)
        assert main(["run", seeing, "-q", "--scheduler-file", single.file]) == 0
    finally:
        single.close()
    _assert_same(_out(seeing), reference)


# ---------------------------------------------------------------------------------------------
# Submitted jobs


def _status(out: str, capsys) -> dict:
    """`status --json`; its exit status is the state's (0 done, 1 failed, 130 cancelled,
    4 submitted or running: issue 15)."""
    code = main(["status", out, "--json"])
    state = json.loads(capsys.readouterr().out)
    assert code == {"done": 0, "failed": 1, "cancelled": 130}.get(state["state"], 4), state
    return state


def _submit(job: str, *extra: str) -> str:
    """`kmeans-pipeline submit` in its own process; returns the job id it printed."""
    done = subprocess.run([sys.executable, "-m", "pipeline", "submit", job, "-q", *extra],
                          capture_output=True, text=True, timeout=DEADLINE)
    assert done.returncode == 0, done.stderr
    job_id = done.stdout.strip()
    assert re.fullmatch("[0-9a-f]{12}", job_id), done.stdout
    return job_id


def _submit_here(job: str, capsys, *extra: str) -> str:
    """`kmeans-pipeline submit` in this process, so that watching starts at once."""
    assert main(["submit", job, "-q", *extra]) == 0
    return capsys.readouterr().out.strip()


@pytest.mark.cluster
def test_submit_returns_and_the_job_completes_on_the_cluster(blocks_job, blocks_reference,
                                                             healthy, capsys):
    job_id = _submit(blocks_job, "--scheduler", healthy.address)  # that process has exited
    out = _out(blocks_job)
    state = wait_until(lambda: (lambda s: s if s["state"] == "done" else None)(
        _status(out, capsys)), "the submitted job to finish", every=0.1)
    _wait_driver_gone(healthy, blocks_job)
    assert state["job_id"] == job_id and state["ok"] == N_BLOCKS and state["done"] == N_BLOCKS
    assert main(["status", out]) == 0
    assert capsys.readouterr().out.startswith(f"done: job {job_id}, {N_BLOCKS} of {N_BLOCKS} "
                                              "images ok (0 skipped, 0 failed); updated ")
    where = _report(blocks_job)["scheduler"]  # which scheduler ran it, and why (issue 15)
    assert where["scheduler"] == healthy.address and where["reason"].startswith("submitted")
    _assert_same(out, blocks_reference)


@pytest.mark.cluster
def test_cancel_stops_a_submitted_job_and_submit_wait_finishes_it(blocks_job, blocks_reference,
                                                                  healthy, capsys):
    out = _out(blocks_job)
    job_id = _submit_here(blocks_job, capsys, "--scheduler-file", healthy.file)
    wait_until(lambda: _some_done(blocks_job, N_BLOCKS, job_id), "some images done")
    assert main(["status", out, "--json"]) == 4  # running: a script waiting on it goes on
    capsys.readouterr()
    assert main(["cancel", out]) == 0
    said = capsys.readouterr()
    assert said.out.startswith(f"cancelled: job {job_id}, ")
    assert "submit the job again with output.if_exists: resume" in said.err
    state = _status(out, capsys)
    assert state["state"] == "cancelled" and 0 < state["ok"] < N_BLOCKS
    assert main(["status", out]) == 130
    capsys.readouterr()
    cancelled = _report(blocks_job)
    assert cancelled["status"] == "cancelled"
    healthy.wait_idle()  # tasks already running when the job stopped finish their image
    _assert_only_complete_files(out)
    assert main(["submit", blocks_job, "-q", "--wait", "--scheduler", healthy.address]) == 0
    final = _report(blocks_job)
    assert final["status"] == "done" and final["job_id"] != job_id
    assert {r["name"] for r in final["images"] if r["resumed"]} >= set(_done_when(cancelled))
    _assert_same(out, blocks_reference)


def _wait_driver_gone(cluster: DaskProcesses, job: str) -> None:
    """Until the driver task has returned: report.json says "done" before the driver writes
    report.html and saves it once more (through a temporary file the checks would see)."""
    key = _json(os.path.join(_out(job), "submission.json"))["key"]
    wait_until(lambda: _driver_worker(cluster, key) is None, "the driver to return")


def _driver_worker(cluster: DaskProcesses, key: str) -> str | None:
    with cluster.client() as client:
        for worker, keys in client.processing().items():
            if key in keys:
                return worker
    return None


@pytest.mark.cluster
def test_driver_whose_worker_dies_is_rescheduled_and_resumes(blocks_job, blocks_reference,
                                                             healthy, capsys):
    job_id = _submit_here(blocks_job, capsys, "--scheduler", healthy.address)
    key = _json(os.path.join(_out(blocks_job), "submission.json"))["key"]
    worker = wait_until(lambda: _driver_worker(healthy, key), "the driver to start")
    pid = healthy.worker_pids()[worker]
    wait_until(lambda: _some_done(blocks_job, N_BLOCKS, job_id), "some images done")
    healthy.kill_worker(worker, pid)
    state = wait_until(lambda: (lambda s: s if s["state"] in ("done", "failed") else None)(
        _status(_out(blocks_job), capsys)), "the job to finish", every=0.1)
    _wait_driver_gone(healthy, blocks_job)
    assert state["state"] == "done" and state["job_id"] == job_id
    resumed = [r["name"] for r in _report(blocks_job)["images"] if r["resumed"]]
    assert 0 < len(resumed) < N_BLOCKS  # finished by resuming, not by starting over
    _assert_same(_out(blocks_job), blocks_reference)


def test_status_cancel_and_submit_say_what_is_wrong_in_one_line(tmp_path, job, capsys):
    for argv, expected in (
            (["status", str(tmp_path)], f"error: {tmp_path}: no report.json or submission.json; "
                                        "not the output folder of a kmeans-pipeline job"),
            (["cancel", str(tmp_path)], f"error: {tmp_path}: no submission.json; only a job "
                                        "started with `kmeans-pipeline submit` can be cancelled"),
            (["submit", job, "--scheduler", "threads"], "error: dask.scheduler: submit needs a "
                                                        "running dask scheduler, got 'threads'")):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(expected), err


@pytest.mark.cluster
def test_submitted_job_that_cannot_start_says_so_in_status(blocks_job, healthy, capsys):
    out = _out(blocks_job)
    os.makedirs(out)
    open(os.path.join(out, "model.json"), "w").close()  # outputs of some earlier run
    job_id = _submit(blocks_job, "--scheduler", healthy.address, "--set",
                     "output.if_exists=fail")
    state = wait_until(lambda: (lambda s: s if s["state"] == "failed" else None)(
        _status(out, capsys)), "the driver to fail")
    assert state["job_id"] == job_id
    assert state["error"].startswith(f"output.dir: {out!r} already holds outputs")
    assert main(["status", out]) == 1


def test_dask_config_mapping_is_in_force_while_connected(job):
    from pipeline import cluster
    from pipeline.config import load_config

    import dask

    cfg = load_config(job, ["dask.config={array.chunk-size: 7MiB}"], "threads")
    with cluster.connect(cfg.dask):
        assert dask.config.get("array.chunk-size") == "7MiB"
    assert dask.config.get("array.chunk-size") != "7MiB"


# ---------------------------------------------------------------------------------------------
# Decoded once (issue 14): pixels kept in worker memory between the passes


def _count_decodes(client) -> None:
    """Wrap each worker's `photos.decode_masked` (which `photos.decode` calls too) so that it
    counts its calls per image name; the real decoder still does the work."""
    def install():
        import collections

        from pipeline.sources import photos

        original = getattr(photos.decode_masked, "original", photos.decode_masked)
        counts = collections.Counter()

        def counting(info, *args, **kwargs):
            counts[info.name] += 1
            return original(info, *args, **kwargs)

        counting.original, counting.counts = original, counts
        photos.decode_masked = counting

    client.run(install)


def _decodes(client) -> dict[str, int]:
    """Image name -> decodes on every worker since `_count_decodes`; restores the decoder."""
    def read():
        from pipeline.sources import photos

        counts = dict(getattr(photos.decode_masked, "counts", {}))
        photos.decode_masked = getattr(photos.decode_masked, "original", photos.decode_masked)
        return counts

    total: dict[str, int] = {}
    for counts in client.run(read).values():
        for name, n in counts.items():
            total[name] = total.get(name, 0) + n
    return total


def _held_decodes(client) -> list[str]:
    """Keys of kept decode tasks the scheduler still knows (none once a run has ended)."""
    return [key for key in client.run_on_scheduler(
        lambda dask_scheduler: [str(k) for k in dask_scheduler.tasks])
        if key.startswith("decode-kept-")]


@pytest.mark.cluster
@pytest.mark.parametrize("persist, lloyd, per_image", [
    ("auto", False, 1), ("never", False, 2),
    # lloyd: the sample, 8 full passes and the segment pass read the kept pixels
    ("auto", True, 1), ("never", True, 10)])
def test_each_image_is_decoded_once_on_workers_unless_persist_never(
        tmp_path, blocks, gradients, blocks_reference, reference, healthy, persist, lloyd,
        per_image):
    images, expected = (gradients, reference) if lloyd else (blocks, blocks_reference)
    job = _lloyd_job(tmp_path, gradients) if lloyd else \
        write_job(tmp_path, input={"paths": [blocks]})
    names = sorted(os.path.splitext(n)[0] for n in os.listdir(images))
    with healthy.client() as client:
        _count_decodes(client)
        try:
            code = main(["run", job, "-q", "--scheduler", healthy.address,
                         "--set", f"dask.persist={persist}"])
        finally:
            decodes = _decodes(client)
        assert code == 0
        assert decodes == {name: per_image for name in names}
        assert _held_decodes(client) == []  # released: no pixels left on the workers
    _assert_same(_out(job), expected)  # the labels bit for bit as on threads


@pytest.mark.cluster
def test_lloyd_passes_are_one_task_per_worker_over_colour_shards_made_once(
        tmp_path, gradients, reference, healthy):
    # Issue 14: a pass used to be a new graph of a task per chunk and a tree reduction (0.4-1 s
    # of scheduler time each on medium).  Now the collection's colour histogram is made once,
    # split into shards held on the workers, and each of the 8 passes is one task per worker.
    from dask.utils import key_split
    from distributed import get_task_stream

    from pipeline import fitting

    job = _lloyd_job(tmp_path, gradients)
    with healthy.client() as client, get_task_stream(client) as stream:
        assert main(["run", job, "-q", "--scheduler", healthy.address,
                     "--set", "dask.persist=always"]) == 0
    ran = collections.Counter(key_split(task["key"]) for task in stream.data)  # no "_"s
    assert ran["each_part"] == 8 * 2
    assert ran["chunk_histogram"] == N_IMAGES and ran["shard"] == fitting._SHARDS
    assert ran["merge_histograms"] == 3  # 16 chunks in groups of 8, then one
    assert ran["decode-kept"] == N_IMAGES  # each image decoded once
    _assert_same(_out(job), reference)  # the threads run's centroids, bit for bit
