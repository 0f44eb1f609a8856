"""`kmeans-pipeline run photos/ more/*.png -k 8 -o out/` (issue 15 §3): no job file; the job it
ran is written to out/job.yaml with paths relative to out/, and running that file repeats it."""

from __future__ import annotations

import json
import os

import pytest
import yaml

from conftest import COLOURS, blocks_image, layout, save
from pipeline.cli import main


def _files(folder) -> dict[str, bytes]:
    found = {}
    for root, _, names in os.walk(folder):
        for name in names:
            if name.endswith(".png"):
                path = os.path.join(root, name)
                found[os.path.relpath(path, folder)] = open(path, "rb").read()
    return found


@pytest.fixture
def photos(tmp_path, monkeypatch):
    """photos/ (3 images) and more/ (2 images) in a working directory."""
    for folder, count in (("photos", 3), ("more", 2)):
        for i in range(count):
            save(tmp_path / folder / f"{folder}{i}.png",
                 blocks_image(layout(30 + i, 40, len(COLOURS), seed=i), seed=i))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_quick_run_writes_a_job_file_that_repeats_it(photos, capsys):
    more = sorted(str(p.relative_to(photos)) for p in (photos / "more").iterdir())  # the shell's
    assert main(["run", "photos/", *more, "-k", "3", "-o", "out/", "--set",
                 "output.masks=false", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["ok"] == 5 and summary["output_dir"] == str(photos / "out")
    job = yaml.safe_load((photos / "out" / "job.yaml").read_text())
    assert job == {"input": {"paths": ["../photos", "../more/more0.png", "../more/more1.png"]},
                   "kmeans": {"k": 3}, "output": {"dir": ".", "masks": False}}
    text = (photos / "out" / "job.yaml").read_text()
    assert text.startswith("# written by: kmeans-pipeline run photos/ more/more0.png "
                           "more/more1.png -k 3 -o out/ --set output.masks=false\n"
                           "# run it again with: kmeans-pipeline run out/job.yaml\n")
    # run from elsewhere, into another folder: the same outputs, the same job
    os.chdir(photos / "more")
    assert main(["run", "../out/job.yaml", "-q", "--set", "output.dir=../again"]) == 0
    first, again = (json.loads((photos / d / "report.json").read_text()) for d in ("out", "again"))
    for report in (first, again):
        del report["job"]["output"]["dir"]  # the one key the rerun changed
    assert again["job"] == first["job"]
    assert _files(photos / "again") == _files(photos / "out") and _files(photos / "out")
    assert not (photos / "again" / "job.yaml").exists()  # a job file run writes no job file
    # and as it is: the folder is complete, so resume keeps every image
    assert main(["run", "../out/job.yaml", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["ok"] == 5
    report = json.loads((photos / "out" / "report.json").read_text())
    assert all(entry["resumed"] for entry in report["images"])


def test_quoted_glob_stays_a_glob_in_the_job_file(photos):
    assert main(["run", "more/*.png", "-o", "out", "-q"]) == 0
    job = yaml.safe_load((photos / "out" / "job.yaml").read_text())
    assert job == {"input": {"paths": ["../more/*.png"]}, "output": {"dir": "."}}


@pytest.mark.parametrize("argv, message", [
    (["run", "photos/", "-k", "3"], "error: photos/: not a job file (.yaml, .yml or .json); to run "
                                    "without one, give the output folder with -o OUT"),
    (["run", "job.yaml", "-o", "out"], "error: -k and -o are for a run without a job file; with "
                                       "one, use --set kmeans.k=... and --set output.dir=..."),
    (["run", "photos/", "-k", "eight", "-o", "out"], "error: -k: must be an integer or 'auto', "
                                                     "got 'eight'"),
    (["run", "photos/", "-k", "0", "-o", "out"], "error: command line: kmeans.k: must be an "
                                                 "integer from 1 to 65535 or 'auto', got 0 (int)"),
    (["run", "nowhere/", "-o", "out"], "error: input.paths: '"),
])
def test_quick_mode_mistakes_are_one_line_and_exit_2(photos, capsys, argv, message):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(message), err
    assert not (photos / "out").exists()


def test_an_interrupted_quick_run_still_writes_its_job_file(photos, monkeypatch):
    # Review of issue 15: OUT/job.yaml was written only after a successful run, so the hint
    # "rerun with output.if_exists: resume" had no job file to rerun.
    from pipeline import driver

    real = driver._segment

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(driver, "_segment", interrupted)
    assert main(["run", "photos/", "-k", "3", "-o", "out/", "-q"]) == 130
    assert yaml.safe_load((photos / "out" / "job.yaml").read_text())["kmeans"] == {"k": 3}
    monkeypatch.setattr(driver, "_segment", real)
    assert main(["run", "out/job.yaml", "-q"]) == 0
    report = json.loads((photos / "out" / "report.json").read_text())
    assert report["status"] == "done" and report["totals"]["ok"] == 3


def test_a_json_job_file_runs_as_its_yaml_twin(photos):
    """JSON is YAML: a job file scripts write with json.dump runs like the same job in YAML."""
    job = {"input": {"paths": ["photos"]}, "kmeans": {"k": 3}, "output": {"masks": False}}
    (photos / "job.json").write_text(json.dumps(dict(job, output={"masks": False, "dir": "j"})))
    (photos / "job.yaml").write_text(yaml.safe_dump(dict(job, output={"masks": False,
                                                                      "dir": "y"})))
    assert main(["run", "job.json", "-q"]) == 0 and main(["run", "job.yaml", "-q"]) == 0
    assert _files(photos / "j") == _files(photos / "y") and _files(photos / "j")
