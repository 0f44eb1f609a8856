"""Bad input through the CLI (issue 3): every mistake gets one clear line and its own exit
status, odd but valid files are converted and processed, and good images never lose anything
because of a bad neighbour.

Every broken file is written for real by `badfiles`; every run goes through ``main([...])``.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import badfiles
from conftest import write_job
from pipeline import cli
from pipeline.cli import main
from pipeline.config import InputConfig, PreprocessConfig
from pipeline.sources.listing import list_inputs
from pipeline.sources.photos import decode

SIZES = [(40, 56), (48, 64), (36, 50)]  # the good images: (height, width)


def _lines(capsys) -> list[str]:
    return [line for line in capsys.readouterr().err.splitlines() if line]


def _good_images(folder) -> None:
    for i, (h, w) in enumerate(SIZES):
        badfiles.good_png(os.path.join(str(folder), f"good{i}.png"), badfiles.photo(h, w, i))


def _job(folder, **sections) -> str:
    """A job in ``folder`` over ``folder/images``; the sample is smaller than the collection,
    so a bad image that took part in sampling would change the palette."""
    kmeans = {"k": 3, "seed": 1, "sample_pixels": 1500, "n_init": 1, **sections.pop("kmeans", {})}
    return write_job(folder, kmeans=kmeans, **sections)


def _report(folder) -> dict:
    with open(os.path.join(str(folder), "out", "report.json")) as handle:
        return json.load(handle)


def _outputs(folder) -> dict[str, bytes]:
    """Every image output file of a run: relative path -> bytes."""
    out, files = os.path.join(str(folder), "out"), {}
    for sub in ("segmented", "labels", "masks", "thumbs"):
        for root, _, names in os.walk(os.path.join(out, sub)):
            for name in names:
                path = os.path.join(root, name)
                with open(path, "rb") as handle:
                    files[os.path.relpath(path, out)] = handle.read()
    return files


def _palette(folder) -> list:
    with open(os.path.join(str(folder), "out", "model.json")) as handle:
        return json.load(handle)["palette"]


@pytest.fixture(scope="module")
def clean_run(tmp_path_factory):
    """The good images alone: the outputs every run with bad neighbours must reproduce."""
    folder = tmp_path_factory.mktemp("clean")
    _good_images(folder / "images")
    assert main(["run", _job(folder), "-q"]) == 0
    return _outputs(folder), _palette(folder)


# ---------------------------------------------------------------------------------------------
# Broken images: skip and fail

REASONS = {
    "zero_bytes": "file is empty (0 bytes); fix or remove it",
    "html_named_jpg": "not an image file (it starts with '<!DOCTYPE html>': a web page, not "
                      "image data); fix or remove it",
    "truncated_jpeg": "file is truncated: its image data ends early (an incomplete download "
                      "or copy?); fix or remove it",
    "truncated_png": "file is truncated: its image data ends early (an incomplete download "
                     "or copy?); fix or remove it",
    "corrupt_jpeg_scan": "damaged JPEG data (libjpeg: Corrupt JPEG data: premature end of "
                         "data segment); the rest would be painted flat grey; fix or remove it",
    "png_short_idat": "damaged PNG data: the pixel data ends after 24 of 48 rows; the rest "
                      "would be painted black; fix or remove it",
    "bomb_png": "100000x100000 = 10000000000 pixels is over input.max_pixels (178956970); "
                "refused from the header without decoding; raise it if the file is trusted",
}


@pytest.mark.parametrize("case", sorted(badfiles.BROKEN))
def test_skip_reports_the_file_and_keeps_good_outputs_identical(tmp_path, capsys, clean_run,
                                                                case):
    builder, name, _ = badfiles.BROKEN[case]
    _good_images(tmp_path / "images")
    bad = builder(tmp_path / "images" / name)
    assert main(["run", _job(tmp_path)]) == 3
    lines = _lines(capsys)
    assert f"skipped: {bad}: {REASONS[case]}" in lines
    assert lines[-1].startswith("done: 3 image(s) ok, 1 skipped, 0 failed")
    entry = next(r for r in _report(tmp_path)["images"] if r["path"] == bad)
    assert entry["status"] == "skipped" and entry["error"] == REASONS[case]
    outputs, palette = clean_run
    assert _outputs(tmp_path) == outputs  # byte for byte: the bad file gave no pixel
    assert _palette(tmp_path) == palette


@pytest.mark.parametrize("case", sorted(badfiles.BROKEN))
def test_fail_stops_before_any_image_output_naming_the_file(tmp_path, capsys, case):
    builder, name, from_header = badfiles.BROKEN[case]
    _good_images(tmp_path / "images")
    bad = builder(tmp_path / "images" / name)
    assert main(["run", _job(tmp_path, input={"on_error": "fail"}), "-q"]) == 1
    if from_header:  # found while listing: nothing was decoded, sampled or fitted
        expected = (f"error: cannot read {bad}: {REASONS[case]}; no cluster work was started "
                    "(input.on_error: fail)")
    else:  # found when decoded, in the sample pass, before anything is written
        expected = (f"error: {bad}: {REASONS[case]} (input.on_error: fail; no image outputs "
                    "were written)")
    assert _lines(capsys) == [expected]
    assert _outputs(tmp_path) == {}
    assert not (tmp_path / "out" / "model.json").exists()
    report = _report(tmp_path)
    assert report["status"] == "failed" and bad in report["error"]
    entry = next(r for r in report["images"] if r["path"] == bad)
    assert entry["status"] == "failed" and entry["error"] == REASONS[case]


def test_fail_with_several_unreadable_files_lists_them_all(tmp_path, capsys):
    _good_images(tmp_path / "images")
    empty = badfiles.zero_bytes(tmp_path / "images" / "empty.jpg")
    page = badfiles.html_named_jpg(tmp_path / "images" / "page.jpg")
    assert main(["run", _job(tmp_path, input={"on_error": "fail"}), "-q"]) == 1
    assert _lines(capsys) == [
        "error: cannot read 2 of 5 images; no cluster work was started (input.on_error: fail):",
        f"  {empty}: {REASONS['zero_bytes']}",
        f"  {page}: {REASONS['html_named_jpg']}"]


def test_fail_checks_every_image_before_writing_when_nothing_is_fitted(tmp_path, capsys):
    # max_iter: 0 applies a saved palette, so no sample pass decodes the images first.
    _good_images(tmp_path / "first" / "images")
    assert main(["run", _job(tmp_path / "first"), "-q"]) == 0
    _good_images(tmp_path / "images")
    bad = badfiles.png_short_idat(tmp_path / "images" / "short.png")
    job = _job(tmp_path, input={"on_error": "fail"},
               kmeans={"max_iter": 0, "init": "first/out/model.json"})
    assert main(["run", job, "-q"]) == 1
    assert _lines(capsys) == [f"error: {bad}: {REASONS['png_short_idat']} (input.on_error: "
                              "fail; no image outputs were written)"]
    assert _outputs(tmp_path) == {}


def test_image_scope_skips_the_bad_image_and_keeps_the_others_identical(tmp_path):
    clean = tmp_path / "clean"
    badfiles.good_png(clean / "images" / "good.png")  # one image: each needs its own fit
    assert main(["run", _job(clean, kmeans={"scope": "image"}), "-q"]) == 0
    badfiles.good_png(tmp_path / "images" / "good.png")
    badfiles.corrupt_jpeg_scan(tmp_path / "images" / "a_sector.jpg")  # sorts first
    assert main(["run", _job(tmp_path, kmeans={"scope": "image"}), "-q"]) == 3
    assert _outputs(tmp_path) == _outputs(clean)


def test_a_bomb_is_refused_from_its_header_without_taking_memory(tmp_path):
    """Run in a child whose address space is capped at 2 GiB: decoding the bomb would need
    30 GB. With max_pixels raised, the same run does try, and hits the cap: the cap is real."""
    _good_images(tmp_path / "images")
    bomb = badfiles.bomb_png(tmp_path / "images" / "bomb.png")
    job = _job(tmp_path)
    cap = 2 << 30

    def capped() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))

    def run(*extra: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "pipeline", "run", job, "--json", *extra],
                              preexec_fn=capped, capture_output=True, text=True, timeout=120)

    refused = run()
    assert refused.returncode == 3, refused.stderr
    assert f"skipped: {bomb}: {REASONS['bomb_png']}" in refused.stderr.splitlines()
    tried = run("--set", "input.max_pixels=20000000000", "--set", "output.if_exists=overwrite")
    assert tried.returncode == 3, tried.stderr
    assert (f"skipped: {bomb}: not enough memory to decode it (100000x100000 pixels)"
            in tried.stderr)


# ---------------------------------------------------------------------------------------------
# Odd but valid images: converted correctly, processed, exit 0

def _expected_rgb(case: str) -> np.ndarray:
    """What each odd file must decode to, from the picture it was made of."""
    photo = badfiles.photo()
    grey = np.asarray(Image.fromarray(photo).convert("L"))
    quantized = np.asarray(Image.fromarray(photo).quantize(16).convert("RGB"))
    return {"grey": np.repeat(grey[..., None], 3, 2), "grey_alpha": np.repeat(grey[..., None], 3, 2),
            "rgba": photo, "png16": photo, "tiff16": np.repeat(grey[..., None], 3, 2),
            "palette_transparent": quantized, "multipage_tiff": photo}[case]


ODD = {"grey": ("grey.png", badfiles.grey), "grey_alpha": ("la.png", badfiles.grey_alpha),
       "rgba": ("rgba.png", badfiles.rgba), "png16": ("deep.png", badfiles.png16),
       "tiff16": ("deep.tif", badfiles.tiff16),
       "palette_transparent": ("pal.png", badfiles.palette_transparent),
       "multipage_tiff": ("pages.tif", badfiles.multipage_tiff)}


@pytest.mark.parametrize("case", sorted(ODD))
def test_odd_modes_decode_exactly(tmp_path, case):
    name, builder = ODD[case]
    builder(tmp_path / "in" / name)
    listing = list_inputs(InputConfig(paths=(str(tmp_path / "in"),)), PreprocessConfig(),
                          str(tmp_path / "out"))
    assert np.array_equal(decode(listing.images[0]), _expected_rgb(case))


def test_cmyk_exif_icc_and_animation_are_converted_as_a_viewer_shows_them(tmp_path):
    badfiles.cmyk_jpeg(tmp_path / "in" / "cmyk.jpg")
    badfiles.exif_rotated_jpeg(tmp_path / "in" / "turned.jpg")
    badfiles.icc_jpeg(tmp_path / "in" / "icc.jpg")
    badfiles.animated_gif(tmp_path / "in" / "anim.gif")
    listing = list_inputs(InputConfig(paths=(str(tmp_path / "in"),)), PreprocessConfig(),
                          str(tmp_path / "out"))
    images = {info.name: info for info in listing.images}
    photo = badfiles.photo().astype(int)
    stored = {name: np.asarray(Image.open(tmp_path / "in" / f"{name}.jpg").convert("RGB"))
              for name in ("cmyk", "turned")}  # as Pillow decodes them, without orientation
    assert np.array_equal(decode(images["cmyk"]), stored["cmyk"])
    assert np.abs(stored["cmyk"].astype(int) - photo).mean() < 4  # JPEG loss only
    turned = decode(images["turned"])  # orientation 6: a viewer turns it 90 deg clockwise
    assert np.array_equal(turned, np.rot90(stored["turned"], k=-1))
    icc = decode(images["icc"])  # the profile swaps red and green: sRGB shows them swapped
    assert icc[4, 4].tolist() == [0, 255, 0] and icc[20, 4].tolist() == [0, 0, 255]
    assert icc[12, 4, 0] > 240 and icc[12, 4, 1] < 15
    first = np.asarray(Image.open(tmp_path / "in" / "anim.gif").convert("RGB"))
    assert np.array_equal(decode(images["anim"]), first)
    assert sorted(listing.notes) == [(str(tmp_path / "in" / "anim.gif"),
                                      "first frame of 3 used")]


def test_odd_valid_files_all_run_with_exit_0_and_notes_in_the_report(tmp_path, capsys):
    folder = tmp_path / "images"
    for name, builder in ODD.values():
        builder(folder / name)
    badfiles.cmyk_jpeg(folder / "cmyk.jpg")
    badfiles.exif_rotated_jpeg(folder / "turned.jpg")
    badfiles.icc_jpeg(folder / "icc.jpg")
    badfiles.animated_gif(folder / "anim.gif")
    badfiles.tiny(folder / "one.png", 1, 1)
    badfiles.tiny(folder / "row.png", 1, 9)
    badfiles.tiny(folder / "column.png", 7, 1)
    assert main(["run", _job(tmp_path), "-q"]) == 0
    report = _report(tmp_path)
    assert report["totals"]["ok"] == len(ODD) + 7
    notes = {r["name"]: r.get("notes") for r in report["images"]}
    assert notes["anim"] == ["first frame of 3 used"]
    assert notes["pages"] == ["first frame of 3 used"]
    sizes = {n: Image.open(tmp_path / "out" / "labels" / f"{n}.png").size
             for n in ("one", "row", "column", "turned")}
    assert sizes == {"one": (1, 1), "row": (9, 1), "column": (1, 7), "turned": (48, 64)}


@pytest.mark.parametrize("builder", [badfiles.letterboxed_png, badfiles.letterboxed_jpeg,
                                     badfiles.single_colour,
                                     lambda p: badfiles.single_colour(p, (255, 255, 255), "JPEG"),
                                     lambda p: badfiles.single_colour(p, (0, 0, 0), "JPEG")],
                         ids=["letterbox-png", "letterbox-jpeg", "black-png", "white-jpeg",
                              "black-jpeg"])
def test_letterboxed_and_single_colour_images_are_never_rejected(tmp_path, builder):
    # Their last rows really are black (or flat): the damage checks must look at the data.
    _good_images(tmp_path / "images")
    suffix = ".jpg" if "jpeg" in getattr(builder, "__name__", "") else ".png"
    builder(str(tmp_path / "images" / f"odd{suffix}"))
    assert main(["run", _job(tmp_path), "-q"]) == 0
    assert _report(tmp_path)["totals"]["ok"] == 4


# ---------------------------------------------------------------------------------------------
# Files that change between listing and reading, links, names


def _make_unreadable(path: str) -> str:
    """Make a listed file unreadable for real.  As root, chmod 000 does not stop reading
    (root bypasses permissions), so the file is replaced by a folder of the same name."""
    if os.geteuid() == 0:
        os.unlink(path)
        os.mkdir(path)
        return "is now a folder, not an image file; rerun"
    os.chmod(path, 0)
    return "permission denied; make the file readable, then rerun"


def _dangling(path: str) -> str:
    os.unlink(path)
    os.symlink(path + ".gone", path)
    return "file disappeared after it was listed (moved or deleted?); rerun"


def _deleted(path: str) -> str:
    os.unlink(path)
    return "file disappeared after it was listed (moved or deleted?); rerun"


class _Sabotage:
    """The CLI's progress display, plus one real file-system change when a phase starts."""

    def __init__(self, phase: str, act):
        self.when, self.act, self.done = phase, act, False

    def __call__(self, stream, lines: bool = False):  # stands in for cli.progress_for
        return self

    def phase(self, name: str, images: int, pixels: int) -> None:
        if name == self.when and not self.done:
            self.done = True
            self.act()

    def advance(self, images: int, pixels: int) -> None:
        pass


@pytest.mark.parametrize("change", [_deleted, _dangling, _make_unreadable])
def test_a_file_that_goes_away_after_listing_is_skipped(tmp_path, capsys, monkeypatch, change):
    _good_images(tmp_path / "images")
    victim = badfiles.good_jpeg(tmp_path / "images" / "victim.jpg")
    reason = []
    monkeypatch.setattr(cli, "progress_for",
                        _Sabotage("sample", lambda: reason.append(change(victim))))
    assert main(["run", _job(tmp_path)]) == 3
    assert f"skipped: {victim}: {reason[0]}" in _lines(capsys)
    assert _report(tmp_path)["totals"]["ok"] == 3


def test_symlink_loops_are_walked_once_or_refused(tmp_path, capsys):
    _good_images(tmp_path / "images")
    os.symlink(tmp_path / "images", tmp_path / "images" / "again")  # a folder loop
    loop = tmp_path / "images" / "loop.png"  # a file link loop: loop.png -> other -> loop.png
    os.symlink(tmp_path / "images" / "other.png", loop)
    os.symlink(loop, tmp_path / "images" / "other.png")
    assert main(["run", _job(tmp_path)]) == 3
    lines = _lines(capsys)
    assert (f"skipped: {loop}: cannot open file (Too many levels of symbolic links); fix or "
            "remove it") in lines
    assert sorted(r["name"] for r in _report(tmp_path)["images"] if r["status"] == "ok") == \
        ["good0", "good1", "good2"]


NAMES = ["with space", "naïve café ☕", "$(touch pwned); `touch pwned2` 'q' \"d\" &|;",
         "[x] *star?", "-dash"]


def test_names_with_spaces_unicode_and_shell_characters(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for i, name in enumerate(NAMES):
        badfiles.good_png(tmp_path / "images" / f"{name}.png", badfiles.photo(20, 24, i))
    assert main(["run", _job(tmp_path), "-q"]) == 0
    for name in NAMES:
        assert (tmp_path / "out" / "segmented" / f"{name}.png").is_file()
        assert (tmp_path / "out" / "masks" / name / "0.png").is_file()
    assert sorted(r["name"] for r in _report(tmp_path)["images"]) == sorted(NAMES)
    assert not any(p.name.startswith("pwned") for p in tmp_path.rglob("*"))


def test_output_name_collision_is_resolved_deterministically_and_reported(tmp_path, capsys):
    jpg = badfiles.good_jpeg(tmp_path / "images" / "a.jpg", badfiles.photo(30, 40))
    png = badfiles.good_png(tmp_path / "images" / "a.png", badfiles.photo(20, 24, 1))
    job = _job(tmp_path)
    for _ in range(2):  # the same names on every run
        assert main(["run", job, "-q", "--set", "output.if_exists=overwrite"]) == 0
        report = _report(tmp_path)
        assert report["renamed"] == [{"path": png, "name": "a-2"}]
        names = {r["path"]: (r["name"], r.get("notes")) for r in report["images"]}
        assert names == {jpg: ("a", None), png: ("a-2", ["output name changed to 'a-2': "
                                                         "another input has the same name"])}
        assert Image.open(tmp_path / "out" / "labels" / "a.png").size == (40, 30)
        assert Image.open(tmp_path / "out" / "labels" / "a-2.png").size == (24, 20)


# ---------------------------------------------------------------------------------------------
# Outputs: disk full, output folder removed


@contextlib.contextmanager
def _small_disk(folder, size: int):
    """A folder that fills up after ``size`` bytes: a tmpfs where we may mount one (root),
    else a per-file size limit (RLIMIT_FSIZE, with SIGXFSZ ignored so writes fail with EFBIG
    instead of killing the process).  Yields the error text the run must report."""
    os.makedirs(folder)
    mounted = os.geteuid() == 0 and subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
        capture_output=True).returncode == 0
    if mounted:
        try:
            yield "No space left on device"
        finally:
            subprocess.run(["umount", "-l", str(folder)], check=True)
        return
    old_limit = resource.getrlimit(resource.RLIMIT_FSIZE)
    old_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (size // 4, old_limit[1]))
    try:
        yield "File too large"
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, old_limit)
        signal.signal(signal.SIGXFSZ, old_handler)


def _disk_images(folder) -> None:
    """Three small images, then a large noisy one whose outputs cannot fit."""
    for i in range(3):
        badfiles.good_png(os.path.join(str(folder), f"a{i}.png"), badfiles.photo(16, 16, i))
    noise = np.random.default_rng(0).integers(0, 256, (512, 512, 3), dtype=np.uint8)
    badfiles.good_png(os.path.join(str(folder), "z_big.png"), noise)


def test_disk_full_stops_with_exit_1_and_leaves_only_complete_files(tmp_path, capsys):
    _disk_images(tmp_path / "images")
    job = _job(tmp_path, output={"dir": "disk/out", "masks": False},
               dask={"scheduler": "synchronous"})
    with _small_disk(tmp_path / "disk", 128 * 1024) as error:
        code = main(["run", job])
        lines = _lines(capsys)
        out = str(tmp_path / "disk" / "out")
        big = str(tmp_path / "images" / "z_big.png")
        assert code == 1
        assert lines[-1] == (f"error: cannot write the outputs of {big} to {out!r} ({error}); "
                             "free space or fix the folder, then rerun with output.if_exists: "
                             "resume")
        badfiles.assert_outputs_complete(out)
        with open(os.path.join(out, "report.json")) as handle:
            report = json.load(handle)
        status = {os.path.basename(r["path"]): r["status"] for r in report["images"]}
        assert status.pop("z_big.png") == "failed"  # the others ran before it, or never
        assert set(status.values()) <= {"ok", "skipped"} and report["status"] == "failed"
        assert error in report["error"]
        recorded = {rel: size for r in report["images"] if r["status"] == "ok"
                    for files in r["outputs"].values() for rel, size in files}
        assert _outputs(tmp_path / "disk") == {rel: open(os.path.join(out, rel), "rb").read()
                                               for rel in recorded}  # nothing unrecorded
        assert all(os.path.getsize(os.path.join(out, rel)) == size
                   for rel, size in recorded.items())


def test_output_folder_removed_mid_run_is_exit_1_and_reported(tmp_path, capsys, monkeypatch):
    _good_images(tmp_path / "images")
    out = str(tmp_path / "out")
    job = _job(tmp_path, dask={"scheduler": "synchronous"})

    class RemoveAfterFirstImage(_Sabotage):
        def advance(self, images: int, pixels: int) -> None:
            if self.when == "segment" and not self.done:
                self.done = True
                shutil.rmtree(out)

        def phase(self, name: str, images: int, pixels: int) -> None:
            self.when = name

    monkeypatch.setattr(cli, "progress_for", RemoveAfterFirstImage("segment", None))
    assert main(["run", job]) == 1
    # Found by the next write: the report refreshed after the first image, or the next image.
    assert _lines(capsys)[-1].startswith(f"error: the output folder {out!r} was removed during "
                                         "the run")
    report = _report(tmp_path)  # written again, alone in the re-created folder
    lost = [r for r in report["images"] if r["error"] == "its outputs were removed during the "
            "run; rerun to write them again"]
    assert len(lost) == 1 and lost[0]["status"] == "failed"  # the image finished before
    assert all(r["status"] in ("failed", "skipped") for r in report["images"])
    assert report["status"] == "failed" and "was removed during the run" in report["error"]
    assert set(os.listdir(out)) == {"report.json", "report.html"}


# ---------------------------------------------------------------------------------------------
# Job files and arguments: exit 2, one line each, nothing started


@pytest.fixture(scope="module")
def saved_models(tmp_path_factory):
    """model.json files written by real runs: k=4 in CIELAB, and one palette per image."""
    folder = tmp_path_factory.mktemp("models")
    badfiles.good_png(folder / "images" / "a.png")
    paths = {}
    for name, scope, space in (("image", "image", "rgb"), ("lab4", "collection", "lab")):
        job = _job(folder, kmeans={"k": 4, "scope": scope}, preprocess={"color_space": space},
                   output={"dir": name, "masks": False})
        assert main(["run", job, "-q"]) == 0
        paths[name] = str(folder / name / "model.json")
    return paths


SCHEDULERS = ("must be one of 'threads', 'processes', 'synchronous', 'local' or an address "
              "like 'tcp://127.0.0.1:8786'")
CONFIG_CASES = {
    # name: (job file text, extra arguments, the one line after "error: "; {job} {dir} {m})
    "unknown key": ("input: {paths: [images]}\nkmeans: {kk: 3}\n", [],
                    "{job}: kmeans.kk: unknown key (did you mean 'k'?)"),
    "unknown section": ("input: {paths: [images]}\nkmean: {k: 3}\n", [],
                        "{job}: kmean: unknown section (did you mean 'kmeans'?)"),
    "wrong type": ("input: {paths: [images]}\nkmeans: {k: [3]}\n", [],
                   "{job}: kmeans.k: must be an integer from 1 to 65535 or 'auto', got [3] (list)"),
    "k below 1": ("input: {paths: [images]}\nkmeans: {k: 0}\n", [],
                  "{job}: kmeans.k: must be an integer from 1 to 65535 or 'auto', got 0 (int)"),
    "k above 65535": ("input: {paths: [images]}\nkmeans: {k: 65536}\n", [],
                      "{job}: kmeans.k: must be an integer from 1 to 65535 or 'auto', got 65536 (int)"),
    "scale not positive": ("input: {paths: [images]}\npreprocess: {scale: 0}\n", [],
                           "{job}: preprocess.scale: must be a number > 0.0, got 0 (int)"),
    "tol negative": ("input: {paths: [images]}\nkmeans: {tol: -0.5}\n", [],
                     "{job}: kmeans.tol: must be a number >= 0.0, got -0.5 (float)"),
    "max_iter negative": ("input: {paths: [images]}\nkmeans: {max_iter: -1}\n", [],
                          "{job}: kmeans.max_iter: must be an integer >= 0, got -1 (int)"),
    "batch below k": ("input: {paths: [images]}\nkmeans: {k: 8, batch_pixels: 4}\n", [],
                      "{job}: kmeans.batch_pixels: must be >= kmeans.k (8), got 4"),
    "enum": ("input: {paths: [images]}\npreprocess: {color_space: hsv}\n", [],
             "{job}: preprocess.color_space: must be one of 'rgb', 'lab', got 'hsv' (str)"),
    "enum on_error": ("input: {paths: [images], on_error: ignore}\n", [],
                      "{job}: input.on_error: must be one of 'skip', 'fail', got 'ignore' (str)"),
    "yaml syntax": ("input: {paths: [images]\nkmeans: {k: 3}\n", [],
                    "{job}: YAML syntax error at line 2, column 1: expected ',' or '}', but got "
                    "'<scalar>'"),
    "empty file": ("", [], "{job}: job file is empty; start from configs/example.yaml"),
    "not a mapping": ("- images\n- k: 3\n", [], "{job}: job file must be a mapping of sections "
                                                 "(input, kmeans, ...), got list"),
    "no matching input": ("input: {paths: ['images/*.tif']}\n", [],
                          "input.paths: no image files found in '{dir}/images/*.tif'; check the "
                          "paths, globs and input.exclude"),
    "missing input": ("input: {paths: [images, nothere]}\n", [],
                      "input.paths: '{dir}/nothere' does not exist; check the path (relative "
                      "paths are relative to the job file; typed on the command line, to "
                      "the working directory)"),
    "output not creatable": ("input: {paths: [images]}\noutput: {dir: afile/out}\n", [],
                             "{job}: output.dir: cannot create '{dir}/afile/out': '{dir}/afile' "
                             "is a file, not a folder; choose another output.dir"),
    "init missing": ("input: {paths: [images]}\nkmeans: {init: nope.json}\n", [],
                     "{job}: kmeans.init: model file '{dir}/nope.json' not found; give "
                     "'k-means++', 'random' or the path of a model.json written by an earlier "
                     "run"),
    "init per-image model": ("input: {paths: [images]}\nkmeans: {init: '{m[image]}'}\n", [],
                             "kmeans.init: {m[image]}: holds one palette per image; reuse needs "
                             "a model fitted with kmeans.scope: collection"),
    "init wrong colour space": ("input: {paths: [images]}\nkmeans: {k: 4, init: '{m[lab4]}'}\n",
                                [], "kmeans.init: {m[lab4]}: model colour space is 'lab', the "
                                    "job's is 'rgb'; set preprocess.color_space to match"),
    "init wrong k": ("input: {paths: [images]}\npreprocess: {color_space: lab}\n"
                     "kmeans: {k: 3, init: '{m[lab4]}'}\n", [],
                     "kmeans.init: {m[lab4]}: model has k=4, the job has kmeans.k: 3; set "
                     "kmeans.k: 4, or kmeans.max_iter: 0 to apply the model's palette as it is"),
    "--set bad key": ("input: {paths: [images]}\n", ["--set", "kmeans.kk=3"],
                      "{job}: --set kmeans.kk: unknown key (did you mean 'k'?)"),
    "--set bad value": ("input: {paths: [images]}\n", ["--set", "kmeans.k=many"],
                        "{job}: kmeans.k: must be an integer from 1 to 65535 or 'auto', got 'many' (str)"),
    "--set no value": ("input: {paths: [images]}\n", ["--set", "kmeans"],
                       "{job}: --set 'kmeans': expected section.key=value, e.g. kmeans.k=8"),
    "--scheduler invalid": ("input: {paths: [images]}\n", ["--scheduler", "tcp://nowhere"],
                            "{job}: dask.scheduler: " + SCHEDULERS + ", got 'tcp://nowhere' "
                                                                     "(str)"),
}


def _fill(text: str, job: str, folder, models: dict) -> str:
    for name, value in {"{job}": job, "{dir}": str(folder), "{m[image]}": models["image"],
                        "{m[lab4]}": models["lab4"]}.items():
        text = text.replace(name, value)
    return text


@pytest.mark.parametrize("command", ["validate", "run"])
@pytest.mark.parametrize("case", sorted(CONFIG_CASES))
def test_job_file_mistakes_are_exit_2_with_one_line(tmp_path, capsys, saved_models, case,
                                                    command):
    text, extra, expected = CONFIG_CASES[case]
    badfiles.good_png(tmp_path / "images" / "a.png")
    (tmp_path / "afile").write_text("not a folder")
    job = str(tmp_path / "job.yaml")
    with open(job, "w") as handle:
        handle.write(_fill(text, job, tmp_path, saved_models))
    assert main([command, job, *extra, "-q"]) == 2
    assert _lines(capsys) == ["error: " + _fill(expected, job, tmp_path, saved_models)]
    assert not (tmp_path / "out").exists()  # nothing was started


def test_validate_lists_every_problem_at_once_one_line_each(tmp_path, capsys):
    badfiles.good_png(tmp_path / "images" / "a.png")
    job = str(tmp_path / "job.yaml")
    with open(job, "w") as handle:
        handle.write("input: {paths: [images], on_error: ignore}\nkmeans: {kk: 3, k: x}\n"
                     "preprocess: {scale: -1}\noutput: {dir: job.yaml/out}\n")
    assert main(["validate", job, "--set", "dask.timeoutt=3", "--scheduler", "nowhere"]) == 2
    assert _lines(capsys) == [f"error: {job}: {line}" for line in [
        "--set dask.timeoutt: unknown key (did you mean 'timeout'?)",
        "input.on_error: must be one of 'skip', 'fail', got 'ignore' (str)",
        "preprocess.scale: must be a number > 0.0, got -1 (int)",
        "kmeans.kk: unknown key (did you mean 'k'?)",
        "kmeans.k: must be an integer from 1 to 65535 or 'auto', got 'x' (str)",
        f"dask.scheduler: {SCHEDULERS}, got 'nowhere' (str)",
        f"output.dir: cannot create '{tmp_path}/job.yaml/out': '{job}' is a file, not a folder; "
        "choose another output.dir"]]


def test_validate_lists_every_unreadable_image_at_once(tmp_path, capsys):
    _good_images(tmp_path / "images")
    empty = badfiles.zero_bytes(tmp_path / "images" / "empty.jpg")
    bomb = badfiles.bomb_png(tmp_path / "images" / "bomb.png")
    assert main(["validate", _job(tmp_path), "-q"]) == 2
    assert _lines(capsys) == [f"error: {bomb}: {REASONS['bomb_png']}",
                              f"error: {empty}: {REASONS['zero_bytes']}"]
