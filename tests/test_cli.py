"""The command line: exit statuses, one-line errors, --set, --json, python -m pipeline."""

import json
import os
import subprocess
import sys

import pytest

import pipeline
from conftest import write_job
from pipeline.cli import main


def _lines(capsys):
    return [line for line in capsys.readouterr().err.splitlines() if line]


def test_bad_key_is_one_line_naming_it_and_the_nearest_valid_key(tmp_path, collection, capsys):
    job = write_job(tmp_path, kmeans={"kk": 8})
    assert main(["run", job]) == 2
    assert _lines(capsys) == [f"error: {job}: kmeans.kk: unknown key (did you mean 'k'?)"]


def test_validate_lists_every_problem_at_once(tmp_path, collection, capsys):
    job = write_job(tmp_path, kmeans={"k": 0, "algorithm": "fast"}, preprocess={"scale": -1})
    assert main(["validate", job]) == 2
    lines = _lines(capsys)
    assert len(lines) == 3
    assert any("kmeans.k: must be an integer from 1 to 65535 or 'auto', got 0 (int)" in l
               for l in lines)
    assert any("kmeans.algorithm: must be one of 'minibatch', 'lloyd'" in l for l in lines)
    assert any("preprocess.scale: must be a number > 0.0" in l for l in lines)


def test_validate_lists_inputs_and_computes_nothing(tmp_path, collection, capsys):
    job = write_job(tmp_path)
    assert main(["validate", job, "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["valid"] and len(summary["images"]) == 5
    assert not (tmp_path / "out").exists()


def test_set_overrides_and_its_paths_are_relative_to_the_working_directory(
        tmp_path, collection, capsys, monkeypatch):
    """Paths in the job file are relative to it; a path typed on the command line, as every
    shell argument, to the working directory (the job's inputs are still found)."""
    job = write_job(tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    code = main(["run", job, "--set", "kmeans.k=3", "--set", "output.dir=out8",
                 "--set", "output.masks=false", "--scheduler", "threads", "--json"])
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["ok"] == 5 and summary["output_dir"] == str(elsewhere / "out8")
    doc = json.loads((elsewhere / "out8" / "model.json").read_text())
    assert doc["k"] == 3 and not (elsewhere / "out8" / "masks").exists()
    assert main(["validate", job, "--json", "--set", "input.paths=[../images]"]) == 0
    assert len(json.loads(capsys.readouterr().out)["images"]) == 5


def test_output_dir_left_out_is_next_to_the_job_file_not_the_working_directory(
        tmp_path, collection, capsys, monkeypatch):
    job = tmp_path / "job.yaml"
    job.write_text("input: {paths: [images/]}\nkmeans: {k: 3}\noutput: {masks: false}\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert main(["run", str(job), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["output_dir"] == str(tmp_path / "out")
    assert (tmp_path / "out" / "model.json").is_file() and not (elsewhere / "out").exists()


@pytest.mark.parametrize("item, message", [
    ("kmeans=3", "expected section.key=value"),
    ("kmeans.kk=3", "--set kmeans.kk: unknown key (did you mean 'k'?)"),
    ("kmeans.k=many", "kmeans.k: must be an integer"),
])
def test_bad_set_is_exit_2_and_one_line(tmp_path, collection, capsys, item, message):
    job = write_job(tmp_path)
    assert main(["run", job, "--set", item]) == 2
    lines = _lines(capsys)
    assert len(lines) == 1 and message in lines[0]


def test_bad_scheduler_address_is_exit_2(tmp_path, collection, capsys):
    job = write_job(tmp_path)
    assert main(["run", job, "--scheduler", "tcp://nowhere"]) == 2
    assert "dask.scheduler: must be one of" in _lines(capsys)[0]


def test_unreachable_scheduler_is_exit_2_within_the_timeout(tmp_path, collection, capsys):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    job = write_job(tmp_path, dask={"timeout": 1.0})
    assert main(["run", job, "--scheduler", f"tcp://127.0.0.1:{port}"]) == 2
    lines = _lines(capsys)
    assert len(lines) == 1 and f"tcp://127.0.0.1:{port}" in lines[0]


def test_python_dash_m_runs_the_same_cli(tmp_path, collection):
    job = write_job(tmp_path, output={"masks": False})
    done = subprocess.run([sys.executable, "-m", "pipeline", "run", job, "--json"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["ok"] == 5
    assert "Traceback" not in done.stderr


def test_progress_is_plain_lines_when_stderr_is_not_a_terminal(tmp_path, collection, capsys):
    job = write_job(tmp_path, output={"masks": False})
    assert main(["run", job]) == 0
    err = capsys.readouterr().err
    assert "segment: 5/5 images" in err and "\r" not in err
    assert "done: 5 image(s) ok, 0 skipped, 0 failed" in err


@pytest.mark.parametrize("command", ["run", "validate", "apply", "submit", "status", "cancel",
                                     "schema"])
def test_help_of_every_command_shows_an_example_and_its_exit_statuses(command, capsys):
    """Issue 15 §3: ``--help`` has one example and the exit statuses, from the one table."""
    from pipeline.errors import EXIT_STATUSES

    with pytest.raises(SystemExit) as stop:
        main([command, "--help"])
    assert stop.value.code == 0
    text = capsys.readouterr().out
    example = text.split("example:\n", 1)[1].split("\n\n", 1)[0]
    assert example.startswith(f"  kmeans-pipeline {command} ")
    lines = [line.split(None, 1) for line in text.split("exit statuses:\n", 1)[1].splitlines()
             if line.strip()]
    statuses = {int(code): meaning for code, meaning in lines}
    assert {0, 1} <= set(statuses) <= set(EXIT_STATUSES)
    if command == "status":  # the job's state, for scripts
        assert statuses == {0: "the job is done", 1: "the job failed",
                            130: "the job was cancelled",
                            4: "the job is submitted or still running (or being cancelled)",
                            2: "not the output folder of a job (no report.json or "
                               "submission.json)"}
    elif command in ("run", "apply", "submit"):  # the table's own words
        assert statuses == {code: EXIT_STATUSES[code].replace("`", "")
                            for code in (0, 1, 2, 3, 130)}


@pytest.mark.parametrize("argv", [["schema"], ["validate", "JOB"], ["validate", "JOB", "--json"],
                                  ["run", "--help"]])
def test_a_reader_that_stops_early_is_no_error(tmp_path, collection, argv):
    """``kmeans-pipeline schema | head -1``: the pipe's reader is gone before the command
    prints; no BrokenPipeError traceback, and the command's own exit status."""
    job = write_job(tmp_path)
    argv = [job if arg == "JOB" else arg for arg in argv]
    read, write = os.pipe()
    os.close(read)  # the reader has gone before the command writes a byte
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run([sys.executable, "-m", "pipeline", *argv], stdout=write,
                          stderr=subprocess.PIPE, text=True, timeout=120, env=env)
    os.close(write)
    assert done.returncode == 0 and done.stderr == ""


def test_json_names_the_exit_status_exit_code_on_success_and_on_error(tmp_path, collection,
                                                                      capsys):
    job = write_job(tmp_path, output={"masks": False})
    assert main(["run", job, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["exit_code"] == 0
    assert main(["run", job, "--json", "--set", "kmeans.k=0"]) == 2
    error = json.loads(capsys.readouterr().out)
    assert error["status"] == "error" and error["exit_code"] == 2 and "exit" not in error


@pytest.mark.parametrize("argv, problem", [
    (["run", "--json", "--bogus", "JOB"], "unrecognized arguments: --bogus"),
    (["status", "--json"], "kmeans-pipeline status: the following arguments are required: out"),
    (["validate", "JOB", "--json", "--scheduler"], "argument --scheduler: expected one argument"),
])
def test_a_usage_error_with_json_prints_the_error_object_too(tmp_path, capsys, argv, problem):
    job = write_job(tmp_path)
    assert main([job if arg == "JOB" else arg for arg in argv]) == 2
    captured = capsys.readouterr()
    error = json.loads(captured.out)
    assert error["status"] == "error" and error["exit_code"] == 2 and error["problems"] == []
    assert len(error["errors"]) == 1 and problem in error["errors"][0]
    assert captured.err.startswith("usage: kmeans-pipeline ")
    assert captured.err.splitlines()[-1] == f"error: {error['errors'][0]}"
    assert main([job if arg == "JOB" else arg for arg in argv if arg != "--json"]) == 2
    assert capsys.readouterr().out == ""  # without --json, stdout stays empty


@pytest.mark.parametrize("command", ["run", "validate", "apply", "submit"])
def test_two_job_files_are_refused_in_one_line(tmp_path, collection, capsys, command):
    job = write_job(tmp_path)
    other = str(tmp_path / "job2.yaml")
    with open(job) as source, open(other, "w") as copy:
        copy.write(source.read())
    argv = [command, *(["model.json"] if command == "apply" else []), job, other]
    assert main(argv) == 2
    assert _lines(capsys) == [f"error: 2 job files given ({job}, {other}); a command runs one "
                              "job: give each its own command"]
    assert not (tmp_path / "out").exists()


def test_a_job_file_with_inputs_is_refused_in_one_line(tmp_path, collection, capsys):
    job = write_job(tmp_path)
    assert main(["run", job, str(collection[0])]) == 2
    assert _lines(capsys) == [f"error: {job}: a job file given with inputs (1 more); give the "
                              "job file alone (its input.paths lists the inputs), or the "
                              "inputs alone with -o OUT"]


def test_a_report_json_given_as_the_model_is_named_a_report_with_the_model_beside_it(
        tmp_path, collection, capsys):
    job = write_job(tmp_path, output={"masks": False})
    assert main(["run", job, "-q"]) == 0
    report, model = tmp_path / "out" / "report.json", tmp_path / "out" / "model.json"
    expected = (f"error: kmeans.init: {report}: a report.json (a run's report), not a model; "
                f"give the model.json next to it: {model}")
    for argv in (["apply", str(report), job, "--set", f"output.dir={tmp_path / 'o2'}"],
                 ["run", job, "--set", f"kmeans.init={report}",
                  "--set", f"output.dir={tmp_path / 'o3'}"],
                 ["validate", job, "--set", f"kmeans.init={report}", "-q"]):
        assert main(argv) == 2
        assert _lines(capsys) == [expected]
    with pytest.raises(pipeline.ConfigError, match=r"report\.json \(a run's report"):
        pipeline.Model.load(report)  # the Python API says the same


@pytest.mark.parametrize("fmt", ["tiff", "cog", "zarr"])
def test_a_raster_format_for_photos_is_refused_naming_the_key_and_the_file(
        tmp_path, collection, capsys, fmt):
    job = write_job(tmp_path, output={"format": fmt})
    first = collection[0] / "img0.png"
    expected = (f"error: output.format: {fmt} is for rasters, but {first} is read as a photo "
                "(8-bit RGB, written as PNG; a job of TIFF or zarr rasters only takes the "
                "raster path); set output.format: auto or png")
    assert main(["validate", job, "-q"]) == 2
    assert _lines(capsys) == [expected]
    assert main(["run", job, "-q"]) == 2
    assert _lines(capsys) == [expected]
    assert not (tmp_path / "out" / "segmented").exists()  # no PNG was written instead


def test_validate_reports_rasters_of_another_band_count(tmp_path, capsys):
    import numpy as np
    import tifffile

    os.makedirs(tmp_path / "rasters")
    pixels = np.random.default_rng(0).integers(0, 4000, (32, 40, 4)).astype(np.uint16)
    for name, bands in (("four.tif", 4), ("two.tif", 2)):
        tifffile.imwrite(str(tmp_path / "rasters" / name), pixels[..., :bands],
                         photometric="minisblack", planarconfig="contig")
    job = write_job(tmp_path, input={"paths": ["rasters/"]})
    assert main(["validate", job, "--json"]) == 2
    summary = json.loads(capsys.readouterr().out)
    assert not summary["valid"] and summary["problems"] == [
        f"{tmp_path / 'rasters' / 'two.tif'}: 2 bands, but {tmp_path / 'rasters' / 'four.tif'} "
        "has 4; a collection needs one band count: select bands with input.bands, or use "
        "kmeans.scope: image"]
    assert main(["validate", job, "-q", "--set", "input.bands=[1, 2]"]) == 0
