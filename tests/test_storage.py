"""Collections on object storage (issue 7), against real servers on 127.0.0.1 only: moto's S3
server, a TCP proxy in front of it that a test cuts, a Range-capable HTTP server, and a real
``dask scheduler`` + ``dask worker`` that share no folder with the client."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import time
import uuid

import numpy as np
import pytest
from PIL import Image

from conftest import write_job
from objectstore import (FileServer, Proxy, ReadOnlyStore, Refuser, S3Server, aws_environment,
                         free_port, stop_process)
from pipeline import storage
from pipeline.sinks import images as write
from pipeline.cli import main
from pipeline.errors import StorageError

VARYING = {"report.json", "model.json", "report.html"}  # they hold paths and timings


@pytest.fixture(scope="session")
def s3_server():
    """One moto server for the session; the credentials are the test's, from the environment,
    which also makes it the default endpoint: nothing can reach any other address."""
    with pytest.MonkeyPatch.context() as patch:
        server = S3Server()
        for key, value in aws_environment(server.endpoint).items():
            patch.setenv(key, value)
        try:
            yield server
        finally:
            server.stop()


@pytest.fixture
def bucket(s3_server, collection) -> str:
    """A new bucket holding the test collection under ``in/``."""
    name = f"b-{uuid.uuid4().hex[:12]}"
    client = s3_server.client()
    client.create_bucket(Bucket=name)
    folder, _ = collection
    for file in sorted(os.listdir(folder)):
        client.upload_file(os.path.join(folder, file), name, f"in/{file}")
    return name


def _job(folder, **sections) -> str:
    os.makedirs(folder, exist_ok=True)
    return write_job(folder, **sections)


def _options(endpoint: str, **extra) -> dict:
    return {"client_kwargs": {"endpoint_url": endpoint}, **extra}


def _s3_job(folder, bucket: str, options: dict) -> str:
    """The test job from ``s3://bucket/in/`` to ``s3://bucket/out``."""
    return _job(folder, input={"paths": [f"s3://{bucket}/in/"], "storage_options": options},
                output={"dir": f"s3://{bucket}/out", "storage_options": options})


def _local_reference(tmp_path) -> str:
    """The same job run from and to local disk; returns its output folder."""
    assert main(["run", write_job(tmp_path), "-q"]) == 0
    return str(tmp_path / "out")


def _local_files(out_dir: str) -> dict[str, bytes]:
    files = {}
    for folder, _, names in os.walk(out_dir):
        for name in names:
            path = os.path.join(folder, name)
            files[os.path.relpath(path, out_dir).replace(os.sep, "/")] = open(path, "rb").read()
    return files


def _fixed(files: dict[str, bytes]) -> dict[str, bytes]:
    """The files that must be byte-identical between runs of one job: images, thumbnails,
    palette files."""
    return {k: v for k, v in files.items() if k not in VARYING}


def _objects(s3_server, bucket: str, prefix: str) -> dict[str, bytes]:
    client = s3_server.client()
    keys = [o["Key"] for page in client.get_paginator("list_objects_v2").paginate(
        Bucket=bucket, Prefix=prefix) for o in page.get("Contents", [])]
    return {key[len(prefix):]: client.get_object(Bucket=bucket, Key=key)["Body"].read()
            for key in keys}


def _assert_same_outputs(reference: str, objects: dict[str, bytes]) -> None:
    expected = _local_files(reference)
    assert sorted(objects) == sorted(expected)  # no temporary or stray objects
    assert [k for k in _fixed(expected) if objects[k] != expected[k]] == []


def test_s3_outputs_are_byte_identical_to_a_local_run(tmp_path, s3_server, bucket):
    reference = _local_reference(tmp_path)
    job = _s3_job(tmp_path / "remote", bucket, _options(s3_server.endpoint))
    assert main(["run", job, "-q"]) == 0
    objects = _objects(s3_server, bucket, "out/")
    _assert_same_outputs(reference, objects)
    remote_model = json.loads(objects["model.json"])
    local_model = json.load(open(os.path.join(reference, "model.json")))
    assert remote_model["palette"] == local_model["palette"]
    report = json.loads(objects["report.json"])
    assert [i["path"] for i in report["images"]] == [f"s3://{bucket}/in/img{i}.png"
                                                      for i in range(5)]


def test_resume_on_s3_trusts_only_objects_recorded_with_their_size(tmp_path, s3_server, bucket,
                                                                   capsys):
    job = _s3_job(tmp_path / "remote", bucket, _options(s3_server.endpoint))
    assert main(["run", job, "-q"]) == 0
    before = _objects(s3_server, bucket, "out/")
    s3_server.client().put_object(Bucket=bucket, Key="out/masks/img3/1.png", Body=b"torn")
    assert main(["run", job, "-q"]) == 0
    after = _objects(s3_server, bucket, "out/")
    report = json.loads(after["report.json"])
    assert [r["resumed"] for r in report["images"]] == [True, True, True, False, True]
    assert _fixed(after) == _fixed(before)
    assert main(["run", job, "-q", "--set", "output.if_exists=fail"]) == 2
    assert "already holds outputs" in capsys.readouterr().err


def test_mixed_local_and_remote_inputs_and_globs(tmp_path, s3_server, bucket, collection, capsys):
    folder, _ = collection
    options = _options(s3_server.endpoint)
    job = write_job(tmp_path, input={"paths": [f"s3://{bucket}/in/img[01].png",
                                               str(folder / "img2.png")],
                                     "storage_options": options})
    assert main(["validate", job, "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert [(i["name"], i["path"].startswith("s3://")) for i in summary["images"]] == [
        ("img0", True), ("img1", True), ("img2", False)]
    assert [(i["width"], i["height"]) for i in summary["images"]] == [(60, 40), (47, 33),
                                                                      (64, 64)]


@pytest.mark.parametrize("where", ["input", "output"])
def test_missing_bucket_is_exit_2_and_one_line(tmp_path, s3_server, collection, capsys, where):
    options = _options(s3_server.endpoint)
    url = "s3://no-such-bucket-7"
    sections = ({"input": {"paths": [f"{url}/in/*.png"], "storage_options": options}}
                if where == "input" else
                {"output": {"dir": f"{url}/out", "storage_options": options}})
    assert main(["run", write_job(tmp_path, **sections), "-q"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no-such-bucket-7" in err[0], err
    assert ("input.paths:" if where == "input" else "output.dir:") in err[0]
    assert "does not exist" in err[0]


def test_missing_backend_names_the_extra_to_install(tmp_path, collection, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "s3fs", None)  # what Python does when it is not installed
    job = write_job(tmp_path, input={"paths": ["s3://survey/tiles/*.jpg"]})
    assert main(["validate", job]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert "input.paths:" in err[0] and "pip install 'kmeans-pipeline[s3]'" in err[0]


def test_an_object_is_one_put_and_never_partial(s3_server, bucket):
    options = _options(s3_server.endpoint)
    url = f"s3://{bucket}/w/a.png"

    def broken(handle) -> None:
        handle.write(b"\x89PNG half an image")
        raise OSError(errno.ENOSPC, "encoder failed")

    with pytest.raises(OSError, match="encoder failed"):
        write.atomic_write(url, broken, storage_options=options)
    assert _objects(s3_server, bucket, "w/") == {}
    assert write.atomic_write(url, lambda h: h.write(b"complete"), storage_options=options) == 8
    assert _objects(s3_server, bucket, "w/") == {"a.png": b"complete"}
    assert write.output_sizes(f"s3://{bucket}/w", options) == {"a.png": 8}


# ---------------------------------------------------------------------------------------------
# http(s) inputs


@pytest.fixture
def file_server(collection):
    folder, _ = collection
    files = {f"/{name}": open(folder / name, "rb").read() for name in os.listdir(folder)}
    server = FileServer(files)
    yield server
    server.stop()


def test_http_inputs_with_local_ones_give_the_local_outputs(tmp_path, file_server):
    reference = _local_reference(tmp_path)
    paths = [f"{file_server.url}/img{i}.png" for i in range(3)] + ["../images/img3.png",
                                                                    "../images/img4.png"]
    job = _job(tmp_path / "mixed", input={"paths": paths}, output={"dir": "out"})
    assert main(["run", job, "-q"]) == 0
    assert _fixed(_local_files(str(tmp_path / "mixed" / "out"))) == _fixed(
        _local_files(reference))


def test_headers_are_range_reads_of_the_first_bytes(tmp_path, file_server, capsys):
    rng = np.random.default_rng(7)
    noise = rng.integers(0, 256, (300, 600, 3), dtype=np.uint8)  # barely compressible
    for fmt in ("png", "jpeg"):
        path = tmp_path / f"big.{fmt}"
        Image.fromarray(noise).save(path, quality=95) if fmt == "jpeg" else \
            Image.fromarray(noise).save(path)
        file_server.files[f"/big.{fmt}"] = path.read_bytes()
    job = write_job(tmp_path, input={"paths": [f"{file_server.url}/big.png",
                                               f"{file_server.url}/big.jpeg"]})
    assert main(["validate", job, "--json"]) == 0
    images = json.loads(capsys.readouterr().out)["images"]
    assert [(i["width"], i["height"], i["format"]) for i in images] == [
        (600, 300, "JPEG"), (600, 300, "PNG")]
    for name in ("/big.png", "/big.jpeg"):
        assert len(file_server.files[name]) > 3 * storage.HEADER_BLOCK
        assert file_server.sent[name] <= storage.HEADER_BLOCK, name
    file_server.ranges = False  # a server without Range support still works, just slower
    assert main(["validate", job, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["images"] == images


def test_transient_errors_are_retried_and_permanent_ones_skip_the_image(tmp_path, file_server):
    file_server.fail["/img1.png"] = [503, 503, 429]  # e.g. throttled, then fine
    file_server.fail["/img2.png"] = [403] * 20
    paths = [f"{file_server.url}/img{i}.png" for i in range(5)]
    job = write_job(tmp_path, input={"paths": paths, "on_error": "skip"})
    assert main(["run", job, "-q"]) == 3
    report = json.load(open(tmp_path / "out" / "report.json"))
    status = {r["path"].rsplit("/", 1)[1]: (r["status"], r["error"]) for r in report["images"]}
    assert status["img1.png"] == ("ok", None)
    assert status["img2.png"][0] == "skipped" and "access denied (HTTP 403)" in status[
        "img2.png"][1]
    # Stat at listing and at the header, each fsspec's HEAD then GET; never retried.
    assert file_server.requests["/img2.png"] == 4
    assert sum(s == "ok" for s, _ in status.values()) == 4


# ---------------------------------------------------------------------------------------------
# A cut connection, then resume


def _report_oks(s3_server, bucket: str) -> int:
    try:
        body = s3_server.client().get_object(Bucket=bucket, Key="out/report.json")["Body"]
    except Exception:  # not written yet
        return 0
    return sum(r["status"] == "ok" for r in json.loads(body.read())["images"])


def test_cut_connection_fails_after_retries_and_resume_completes(tmp_path, s3_server, bucket):
    reference = _local_reference(tmp_path)
    # Two images' outputs go through; the next upload is held until the connection is cut.
    proxy = Proxy(s3_server.port, hold=rb"PUT /%s/out/segmented/" % bucket.encode(),
                  hold_after=2)
    proxy.start()
    # Only our retries (botocore's would add its own backoff to the test's time).
    options = _options(proxy.endpoint, config_kwargs={"retries": {"max_attempts": 1}})
    job = _s3_job(tmp_path / "remote", bucket, options)
    run = subprocess.Popen([sys.executable, "-m", "pipeline", "run", job, "-q",
                            "--scheduler", "threads"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not (proxy.holding.is_set() and _report_oks(s3_server, bucket) >= 1):
            assert run.poll() is None, run.communicate()
            assert time.monotonic() < deadline, "the run made no progress"
            time.sleep(0.05)
        proxy.stop()
        _, err = run.communicate(timeout=120)
    finally:
        proxy.stop()
        stop_process(run)
    assert run.returncode == 1, err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in err, err
    assert f"s3://{bucket}/" in errors[0]
    assert f"failed after {storage.ATTEMPTS} attempts" in errors[0]
    assert "output.if_exists: resume" in errors[0]

    proxy.hold = None
    proxy.start()
    try:
        assert main(["run", job, "-q"]) == 0
    finally:
        proxy.stop()
    objects = _objects(s3_server, bucket, "out/")
    _assert_same_outputs(reference, objects)
    report = json.loads(objects["report.json"])
    resumed = sum(bool(r["resumed"]) for r in report["images"])
    assert 1 <= resumed < 5 and report["status"] == "done"


def test_fsspec_url_chains_work_wherever_a_url_does(tmp_path, s3_server, bucket):
    """``simplecache::s3://`` for inputs (listing a folder and a glob) and the output folder
    (issue 15): the same outputs as a local run, and the listed images keep the chain."""
    reference = _local_reference(tmp_path)
    options = _options(s3_server.endpoint)
    job = _job(tmp_path / "chain", input={"paths": [f"simplecache::s3://{bucket}/in/img[0-2].png",
                                                    f"simplecache::s3://{bucket}/in/"],
                                          "storage_options": options},
               output={"dir": f"simplecache::s3://{bucket}/out", "storage_options": options})
    assert main(["run", job, "-q"]) == 0
    objects = _objects(s3_server, bucket, "out/")
    _assert_same_outputs(reference, objects)
    report = json.loads(objects["report.json"])
    assert [i["path"] for i in report["images"]] == [
        f"simplecache::s3://{bucket}/in/img{i}.png" for i in range(5)]
    assert report["output_dir"] == f"simplecache::s3://{bucket}/out"


def test_a_chain_link_whose_backend_is_missing_is_named(tmp_path, collection, capsys):
    job = write_job(tmp_path, input={"paths": ["simplecache::nosuchfs://bucket/in/"]})
    assert main(["run", job]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "protocol nosuchfs:// is not usable" in err[0]


# ---------------------------------------------------------------------------------------------
# A real dask cluster with no shared folder


@pytest.mark.cluster
def test_dask_workers_read_and_write_the_bucket_directly(tmp_path, s3_server, bucket,
                                                          monkeypatch):
    from distributed import Client

    reference = _local_reference(tmp_path)
    env = {**os.environ, **aws_environment(s3_server.endpoint)}  # endpoint from the environment
    scheduler_file = tmp_path / "client" / "scheduler.json"
    scheduler_file.parent.mkdir()
    workers_dir = tmp_path / "workers"
    workers_dir.mkdir()
    dask = [sys.executable, "-m", "dask"]
    processes = [subprocess.Popen(
        dask + ["scheduler", "--host", "127.0.0.1", "--port", str(free_port()),
                "--no-dashboard", "--scheduler-file", str(scheduler_file)],
        cwd=scheduler_file.parent, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    try:
        deadline = time.monotonic() + 60
        while not scheduler_file.exists():
            assert time.monotonic() < deadline and processes[0].poll() is None
            time.sleep(0.05)
        worker_file = workers_dir / "scheduler.json"  # a copy: workers see no client folder
        worker_file.write_bytes(scheduler_file.read_bytes())
        processes.append(subprocess.Popen(
            dask + ["worker", "--scheduler-file", str(worker_file), "--host", "127.0.0.1",
                    "--nworkers", "2", "--nthreads", "1", "--no-dashboard",
                    "--local-directory", str(workers_dir)],
            cwd=workers_dir, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        with Client(scheduler_file=str(scheduler_file), timeout=30) as client:
            client.wait_for_workers(2, timeout=60)
        for key, value in aws_environment(s3_server.endpoint).items():
            monkeypatch.setenv(key, value)
        job = _job(tmp_path / "client", input={"paths": [f"s3://{bucket}/in/"]},
                        output={"dir": f"s3://{bucket}/out"})
        assert main(["run", job, "-q", "--scheduler-file", str(scheduler_file)]) == 0
    finally:
        for process in reversed(processes):
            stop_process(process)
    _assert_same_outputs(reference, _objects(s3_server, bucket, "out/"))
    assert set(os.listdir(tmp_path / "client")) - {"scheduler.json"} == {"job.yaml"}
    assert [n for _, _, names in os.walk(workers_dir) for n in names if n.endswith(".png")] == []


# ---------------------------------------------------------------------------------------------
# Retry policy


def test_retry_is_bounded_and_permanent_errors_fail_at_once(monkeypatch):
    monkeypatch.setattr(storage, "FIRST_DELAY", 0.001)
    calls = []

    def flaky(errors: list[BaseException]):
        def call():
            calls.append(1)
            if errors:
                raise errors.pop(0)
            return "ok"
        return call

    assert storage.retry(flaky([ConnectionResetError(), OSError(errno.EBUSY, "SlowDown")]),
                         "s3://b/k") == "ok" and len(calls) == 3
    calls.clear()
    with pytest.raises(FileNotFoundError):
        storage.retry(flaky([FileNotFoundError("NoSuchKey")]), "s3://b/k")
    assert len(calls) == 1
    calls.clear()
    with pytest.raises(StorageError, match=r"^s3://b/k: object store unreachable: read failed "
                                           r"after 4 attempts \(TimeoutError"):
        storage.retry(flaky([TimeoutError()] * 9), "s3://b/k", "read")
    assert len(calls) == storage.ATTEMPTS


def test_transient_and_permanent_errors_of_real_backends():
    from aiohttp import ClientResponseError
    from botocore.exceptions import EndpointConnectionError

    def http(status: int) -> ClientResponseError:
        return ClientResponseError(None, (), status=status)

    wrapped = FileNotFoundError("http://127.0.0.1/x")
    wrapped.__cause__ = http(503)
    transient = [EndpointConnectionError(endpoint_url="http://127.0.0.1:1"), http(503),
                 http(429), wrapped, OSError(errno.EREMOTEIO, "InternalError"),
                 ConnectionRefusedError()]
    permanent = [http(403), http(404), FileNotFoundError("The specified bucket does not exist"),
                 PermissionError("AccessDenied"), OSError(errno.EINVAL, "InvalidRange")]
    assert [storage.is_transient(e) for e in transient] == [True] * len(transient)
    assert [storage.is_transient(e) for e in permanent] == [False] * len(permanent)


def test_backend_retries_do_not_multiply_ours_and_ours_have_a_deadline(monkeypatch):
    """Issue 11 review: our 4 tries stacked on s3fs's 5 and botocore's 5 (up to ~100 tries,
    no jitter, no deadline).  Against a store that drops every connection, one call makes
    `storage.ATTEMPTS` requests, and no retry starts after `storage.DEADLINE`."""
    for key, value in aws_environment().items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(storage, "FIRST_DELAY", 0.05)
    refuser = Refuser()
    try:
        options = {"client_kwargs": {"endpoint_url": refuser.endpoint}}
        with pytest.raises(StorageError, match=r"read failed after 4 attempts \("):
            storage.read_bytes("s3://bucket/photo.jpg", options)
        # One try is one request (aiohttp may connect a second time for it); the backends'
        # own loops made 50 connections per try before (5 x 5 x 2).
        assert storage.ATTEMPTS <= refuser.connections <= 2 * storage.ATTEMPTS
        monkeypatch.setattr(storage, "FIRST_DELAY", 50.0)  # waits far over the deadline
        monkeypatch.setattr(storage, "DEADLINE", 0.5)
        before, started = refuser.connections, time.monotonic()
        with pytest.raises(StorageError, match=r"read failed after \d attempts within 0.5 s"):
            storage.read_bytes("s3://bucket/photo.jpg", options)
        assert time.monotonic() - started < 0.5 + 5  # one try's own timeouts at most
        assert 1 <= refuser.connections - before < 2 * storage.ATTEMPTS
    finally:
        refuser.stop()


def test_retry_waits_are_random_up_to_the_doubling_caps(monkeypatch):
    waits = []
    monkeypatch.setattr(storage.time, "sleep", waits.append)  # record instead of waiting
    for _ in range(50):
        with pytest.raises(StorageError):
            storage.retry(lambda: (_ for _ in ()).throw(ConnectionResetError()), "s3://b/k")
    rounds = [waits[i:i + 3] for i in range(0, len(waits), 3)]
    assert all(0 <= a <= 0.5 and 0 <= b <= 1 and 0 <= c <= 2 for a, b, c in rounds)
    assert len({round(a, 6) for a, _, _ in rounds}) > 40  # drawn, not fixed


def test_status_and_cancel_take_the_storage_options_an_output_needs(tmp_path, s3_server,
                                                                     collection, capsys):
    """Issue 11 review: `status` and `cancel` dropped the storage options (and the saved files
    mask secrets), so an output on a store other than the environment's was out of reach."""
    other = S3Server()  # not the endpoint the environment names
    try:
        other.client().create_bucket(Bucket="elsewhere")
        out = "s3://elsewhere/out"
        job = _job(tmp_path, output={"dir": out, "storage_options": _options(other.endpoint)})
        assert main(["run", job, "-q"]) == 0
        given = ["--storage-option", f"client_kwargs.endpoint_url={other.endpoint}"]
        capsys.readouterr()
        assert main(["status", out, "--json", *given]) == 0
        state = json.loads(capsys.readouterr().out)
        assert (state["state"], state["ok"]) == ("done", 5)
        assert main(["status", out]) != 0  # the environment's store has no such bucket
        [line] = capsys.readouterr().err.splitlines()
        assert line.startswith("error: ") and out in line
        other.client().put_object(Bucket="elsewhere", Key="out/submission.json", Body=json.dumps(
            {"job_id": "j1", "key": "kmeans-pipeline-driver-j1", "status": "done",
             "scheduler": "tcp://127.0.0.1:1"}).encode())
        assert main(["cancel", out, *given]) == 0
        said = capsys.readouterr()
        assert said.out.startswith("done: job j1") and "nothing to cancel" in said.err
        assert main(["status", out, "--storage-option", "client_kwargs"]) == 2
        assert capsys.readouterr().err.startswith("error: --storage-option 'client_kwargs': "
                                                  "expected KEY=VALUE")
    finally:
        other.stop()


def test_submit_says_in_one_line_when_the_store_refuses_its_writes(tmp_path, collection,
                                                                   local_cluster, capsys,
                                                                   monkeypatch):
    """Issue 11 review: `submit` caught OSError, but object-storage writes raise StorageError."""
    for key, value in aws_environment().items():
        monkeypatch.setenv(key, value)
    store = ReadOnlyStore()
    try:
        out = "s3://bucket/out"
        job = _job(tmp_path, output={"dir": out, "storage_options": _options(store.endpoint)})
        assert main(["submit", job, "--scheduler", local_cluster.scheduler_address]) == 2
        [line] = capsys.readouterr().err.splitlines()
        assert line.startswith(f"error: output.dir: cannot write to {out!r} ("), line
        assert "object store unreachable" in line
        assert line.endswith("choose a folder the client and the workers share")
    finally:
        store.stop()


def test_a_16_bit_png_at_a_url_keeps_16_bits_as_a_local_one_does(tmp_path, file_server):
    """The photo header's own read says a PNG at a URL is 16-bit (Pillow's raw mode): it takes
    the raster path as a local one does, and gives the same 16-bit outputs."""
    import imagecodecs

    colours = np.array([[1000, 30000, 65000], [40000, 2000, 9000], [20000, 50000, 700]])
    picture = colours[(np.arange(40)[:, None] // 14 + np.arange(60)[None, :] // 20) % 3]
    data = imagecodecs.png_encode(picture.astype(np.uint16))
    (tmp_path / "local").mkdir()
    (tmp_path / "local" / "deep.png").write_bytes(data)
    file_server.files["/deep.png"] = data
    outputs = {}
    for where, path in (("local", "deep.png"), ("url", f"{file_server.url}/deep.png")):
        job = _job(tmp_path / where, input={"paths": [path]}, kmeans={"k": 3},
                   output={"dir": "out", "masks": False})
        assert main(["run", job, "-q"]) == 0
        written = (tmp_path / where / "out" / "segmented" / "deep.png").read_bytes()
        outputs[where] = imagecodecs.png_decode(written)  # Pillow would keep 8 bits
    assert outputs["url"].dtype == np.uint16
    assert np.array_equal(outputs["url"], outputs["local"])
    assert {tuple(c) for c in outputs["url"].reshape(-1, 3).tolist()} == \
        {tuple(c) for c in colours.tolist()}
