"""Odd files from a public corpus (issue 11): one odd file never costs a batch, a bomb never
the machine.

Each class of file the corpus run went wrong on is made in code by `badfiles` and run
through the CLI (``main([...])``, or ``python -m pipeline`` in a memory-capped child for the
bombs) together with good images: the run completes, the good images' outputs are unchanged,
the odd file gets the right status and a true reason, and the exit status is the documented
one.
"""

from __future__ import annotations

import json
import logging
import os
import resource
import subprocess
import sys
import warnings

import numpy as np
import pytest
from PIL import EpsImagePlugin, Image

import badfiles
from conftest import write_job
from pipeline.cli import main

SIZES = [(40, 56), (48, 64), (36, 50)]  # the good images: (height, width)


def _good_images(folder) -> list[str]:
    return [badfiles.good_png(os.path.join(str(folder), f"good{i}.png"), badfiles.photo(h, w, i))
            for i, (h, w) in enumerate(SIZES)]


def _job(folder, **sections) -> str:
    """A job over ``folder/images`` whose sample is smaller than the collection, so an odd file
    that took part in the sampling would change the palette."""
    kmeans = {"k": 3, "seed": 1, "sample_pixels": 1500, "n_init": 1, **sections.pop("kmeans", {})}
    return write_job(folder, kmeans=kmeans, **sections)


def _image_job(folder, **sections) -> str:
    """One palette per image, fitted on all its pixels: an image's outputs depend on its
    pixels alone (not on its name or its neighbours), so twins give identical files."""
    return _job(folder, kmeans={"scope": "image", "sample_pixels": 100_000}, **sections)


def _report(folder) -> dict:
    with open(os.path.join(str(folder), "out", "report.json")) as handle:
        return json.load(handle)


def _entry(folder, path: str) -> dict:
    return next(r for r in _report(folder)["images"] if r["path"] == path)


def _outputs(folder, prefix: str = "") -> dict[str, bytes]:
    """Image output files of a run (of images whose name starts with ``prefix``)."""
    out, files = os.path.join(str(folder), "out"), {}
    for sub in ("segmented", "labels", "masks", "thumbs"):
        for root, _, names in os.walk(os.path.join(out, sub)):
            for name in names:
                path = os.path.join(root, name)
                rel = os.path.relpath(path, out)
                if rel.split(os.sep)[1].startswith(prefix):
                    with open(path, "rb") as handle:
                        files[rel] = handle.read()
    return files


def _segmented(folder, name: str) -> bytes:
    with open(os.path.join(str(folder), "out", "segmented", f"{name}.png"), "rb") as handle:
        return handle.read()


def _labels(folder, name: str) -> np.ndarray:
    return np.asarray(Image.open(os.path.join(str(folder), "out", "labels", f"{name}.png")))


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    """The good images alone, in collection and in image scope: what every run with an odd
    neighbour must reproduce byte for byte."""
    runs = {}
    for scope, job in (("collection", _job), ("image", _image_job)):
        folder = tmp_path_factory.mktemp(f"clean-{scope}")
        _good_images(folder / "images")
        assert main(["run", job(folder), "-q"]) == 0
        runs[scope] = _outputs(folder, "good")
    return runs


# ---------------------------------------------------------------------------------------------
# Files to refuse: skipped with a true reason, the rest of the batch unchanged

def _webp_tiff_decodes() -> bool:
    """Whether this install's libtiff has the WebP codec (it can write a WebP TIFF)."""
    import io

    try:
        Image.new("RGB", (4, 4)).save(io.BytesIO(), "TIFF", compression="webp")
    except OSError:
        return False
    return True


REFUSED = {
    # class: (builder, file name, reason: exact, or a prefix ending in "(")
    "1 exception of another type (DDS NotImplementedError)": (
        badfiles.dds_unsupported, "texture.dds",
        "a DDS file whose header Pillow cannot read (NotImplementedError: Unimplemented pixel "
        "format 1515870810); fix or remove it"),
    "5 header junk and a damaged scan": (
        badfiles.jpeg_junk_in_header_and_damaged_scan, "both.jpg",
        "damaged JPEG data (libjpeg: Corrupt JPEG data: premature end of data segment); the "
        "rest would be painted flat grey; fix or remove it"),
    "5 stray bytes in the scan": (
        badfiles.jpeg_junk_in_scan, "scan.jpg",
        "damaged JPEG data (libjpeg: Corrupt JPEG data: 40 extraneous bytes before marker "
        "0xd1); fix or remove it"),
    "6 PNG header": (
        badfiles.png_bad_header, "header.png",
        "a PNG file whose header Pillow cannot parse (SyntaxError: broken PNG file (bad header "
        "checksum in b'IHDR')); it is damaged or a variant Pillow does not read; fix or remove "
        "it"),
    "6 GIF header": (
        badfiles.gif_bad_header, "header.gif",
        "a GIF file whose header Pillow cannot parse ("),
    "6 TIFF header": (
        badfiles.tiff_bad_header, "header.tif",
        "a TIFF file whose header Pillow cannot parse ("),
    "6 WMF off Windows": (
        badfiles.wmf, "drawing.wmf",
        "a WMF file (Windows Metafile): this install has no decoder for it (Pillow draws "
        "WMF/EMF only on Windows); convert the file to PNG"),
}
if not EpsImagePlugin.has_ghostscript():
    REFUSED["6 EPS without Ghostscript"] = (
        badfiles.eps, "drawing.eps",
        "an EPS (PostScript) file: decoding it needs Ghostscript (gs), which is not installed; "
        "install Ghostscript, or convert the file to PNG")
if not _webp_tiff_decodes():
    REFUSED["6 TIFF with WebP tiles, no codec"] = (
        badfiles.tiff_webp, "webp.tif",
        "a TIFF file compressed with webp: this install's libtiff has no webp codec; convert "
        "the file (e.g. to LZW or deflate), or install a libtiff built with it")


def _assert_reason(found: str, expected: str) -> None:
    if expected.endswith("("):
        assert found.startswith(expected) and found.endswith("; fix or remove it"), found
        assert "no image format" not in found
    else:
        assert found == expected


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_odd_file_is_skipped_with_a_true_reason_and_the_batch_completes(tmp_path, capsys,
                                                                       clean, case):
    builder, name, reason = REFUSED[case]
    _good_images(tmp_path / "images")
    odd = builder(tmp_path / "images" / name)
    assert main(["run", _job(tmp_path), "--json"]) == 3
    captured = capsys.readouterr()
    skipped = [line for line in captured.err.splitlines() if line.startswith("skipped: ")]
    assert len(skipped) == 1 and skipped[0].startswith(f"skipped: {odd}: ")
    _assert_reason(skipped[0][len(f"skipped: {odd}: "):], reason)
    entry = _entry(tmp_path, odd)
    assert entry["status"] == "skipped"
    _assert_reason(entry["error"], reason)
    summary = json.loads(captured.out)
    assert (summary["exit_code"], summary["ok"], summary["skipped"]) == (3, 3, 1)
    assert _outputs(tmp_path) == clean["collection"]  # the odd file gave no pixel


def test_an_exception_of_any_type_while_listing_fails_validate_in_one_line(tmp_path, capsys):
    # Issue 11, class 1: validate met the DDS file's NotImplementedError with a traceback.
    _good_images(tmp_path / "images")
    odd = badfiles.dds_unsupported(tmp_path / "images" / "texture.dds")
    assert main(["validate", _job(tmp_path), "-q"]) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"error: {odd}: a DDS file whose header Pillow cannot read (NotImplementedError: "
        "Unimplemented pixel format 1515870810); fix or remove it"]


def test_on_error_fail_names_the_odd_file_and_starts_nothing(tmp_path, capsys):
    _good_images(tmp_path / "images")
    odd = badfiles.png_bad_header(tmp_path / "images" / "header.png")
    assert main(["run", _job(tmp_path, input={"on_error": "fail"}), "-q"]) == 1
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith(f"error: cannot read {odd}: a PNG file whose header Pillow cannot "
                           "parse (")
    assert line.endswith("no cluster work was started (input.on_error: fail)")
    assert _outputs(tmp_path) == {}


# ---------------------------------------------------------------------------------------------
# Bombs: in a child process whose memory is capped

CAP = 1536 << 20  # RLIMIT_DATA of the child: heap and private mappings


def _capped_run(job: str, *extra: str, cap: int = CAP) -> tuple[int, str, str, int]:
    """``python -m pipeline run job --json`` in a child with RLIMIT_DATA = cap.

    Returns (exit status, stdout, stderr, peak resident memory of the child in bytes).
    """
    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_DATA, (cap, cap))

    folder = os.path.dirname(job)
    out_path, err_path = os.path.join(folder, "stdout"), os.path.join(folder, "stderr")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [
        os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
        os.environ.get("PYTHONPATH")]))}
    with open(out_path, "w") as out, open(err_path, "w") as err:
        child = subprocess.Popen([sys.executable, "-m", "pipeline", "run", job, "--json",
                                  "--set", "output.if_exists=overwrite", *extra],
                                 stdout=out, stderr=err, preexec_fn=limit, env=env)
        try:
            _, status, usage = os.wait4(child.pid, 0)
        finally:
            child.returncode = 0  # reaped above; Popen must not wait again
    with open(out_path) as out, open(err_path) as err:
        return os.waitstatus_to_exitcode(status), out.read(), err.read(), usage.ru_maxrss * 1024


BOMBS = {
    # name: (builder, file name, reason with the default max_pixels)
    "icns": (badfiles.icns_bomb, "icon.icns",
             "an image embedded in the file claims 259200119689 pixels (its header says "
             "256x256), over input.max_pixels (178956970); refused without decoding; raise it "
             "if the file is trusted"),
    "ico": (badfiles.ico_bomb, "icon.ico",
            "an image embedded in the file claims 10000000000 pixels, over input.max_pixels "
            "(178956970); refused without decoding; raise it if the file is trusted"),
}


@pytest.mark.parametrize("case", sorted(BOMBS))
def test_an_embedded_bomb_is_refused_and_memory_stays_bounded(tmp_path, clean, case):
    """Issue 11, class 2: a 240 KB ICNS took 24 GB; an ICO bomb got "Invalid argument".
    With max_pixels raised over the claim, Pillow's check is off for it and the decode meets
    the cap instead: the run still completes, and says so."""
    builder, name, reason = BOMBS[case]
    _good_images(tmp_path / "images")
    bomb = builder(tmp_path / "images" / name)
    job = _job(tmp_path)
    code, out, err, peak = _capped_run(job)
    assert code == 3, err
    assert f"skipped: {bomb}: {reason}" in err.splitlines()
    assert json.loads(out)["ok"] == 3 and peak < CAP
    assert _outputs(tmp_path) == clean["collection"]
    code, out, err, peak = _capped_run(job, "--set", "input.max_pixels=400000000000")
    assert code == 3, err
    [line] = [line for line in err.splitlines() if line.startswith(f"skipped: {bomb}: ")]
    assert "not enough memory to" in line, line
    assert json.loads(out)["ok"] == 3 and peak < CAP
    print(f"{case} bomb: peak RSS {peak / 2**20:.0f} MiB under a {CAP / 2**20:.0f} MiB cap")


def test_the_package_leaves_pillows_bomb_limit_alone():
    """Issue 11, class 2: importing the reading code set Image.MAX_IMAGE_PIXELS = None for
    the whole process."""
    code = ("import importlib, pkgutil, pipeline; from PIL import Image; "
            "default = Image.MAX_IMAGE_PIXELS; "
            "[importlib.import_module(m.name) for m in pkgutil.walk_packages(pipeline.__path__, "
            "'pipeline.') if not m.name.endswith('__main__')]; "
            "assert Image.MAX_IMAGE_PIXELS == default, Image.MAX_IMAGE_PIXELS")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    subprocess.run([sys.executable, "-c", code], check=True, cwd=root,
                   env={**os.environ, "PYTHONPATH": root})


def test_max_pixels_above_pillows_own_limit_is_honoured(tmp_path, capsys):
    # The user may raise input.max_pixels over Pillow's default (179 Mpx): the check is ours,
    # at the user's number, on both sides of Pillow's.
    _good_images(tmp_path / "images")
    big = badfiles.bomb_png(tmp_path / "images" / "big.png", 20_000, 10_000)  # 200 Mpx
    assert main(["validate", _job(tmp_path), "-q"]) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"error: {big}: 20000x10000 = 200000000 pixels is over input.max_pixels (178956970); "
        "refused from the header without decoding; raise it if the file is trusted"]
    assert main(["validate", _job(tmp_path, input={"max_pixels": 200_000_000}), "-q"]) == 0
    assert main(["validate", _job(tmp_path, input={"max_pixels": 199_999_999}), "-q"]) == 2


# ---------------------------------------------------------------------------------------------
# Odd but valid files: decoded as they are shown, with a note where the report should say why

def test_a_valid_psd_is_decoded(tmp_path, clean):
    # Issue 11, class 3: every PSD was refused ("attempt to seek outside sequence").
    _good_images(tmp_path / "images")
    pixels = badfiles.photo(30, 44, 7)
    badfiles.psd(tmp_path / "images" / "layered.psd", pixels)
    badfiles.good_png(tmp_path / "images" / "twin.png", pixels)
    assert main(["run", _image_job(tmp_path), "-q"]) == 0
    assert _segmented(tmp_path, "layered") == _segmented(tmp_path, "twin")
    assert _outputs(tmp_path, "good") == clean["image"]


@pytest.mark.parametrize("compression", ["tiff_lzw", "tiff_adobe_deflate"])
def test_the_eight_orientations_of_one_picture_give_the_same_pixels(tmp_path, compression,
                                                                    clean):
    """Issue 11, class 4: TIFFs with orientation 5-8 (decoded by libtiff) were turned twice
    and then resized: a 59 x 24 picture came out squashed to 24 x 59, status ok."""
    _good_images(tmp_path / "images")
    shown = badfiles.photo(24, 59, 3)
    badfiles.good_png(tmp_path / "images" / "shown.png", shown)
    for orientation in range(1, 9):
        badfiles.oriented_tiff(tmp_path / "images" / f"o{orientation}.tif", orientation, shown,
                               compression)
    assert main(["run", _image_job(tmp_path), "-q"]) == 0
    expected = _segmented(tmp_path, "shown")
    for orientation in range(1, 9):
        assert _labels(tmp_path, f"o{orientation}").shape == (24, 59), orientation
        assert _segmented(tmp_path, f"o{orientation}") == expected, orientation
    assert _outputs(tmp_path, "good") == clean["image"]


HEADER_WARNINGS = {
    "extraneous bytes": (badfiles.jpeg_junk_in_header,
                         "JPEG header: Corrupt JPEG data: 3 extraneous bytes before marker 0xdb "
                         "(libjpeg); ignored: it is before the image data, which is intact"),
    "bad ICC marker": (badfiles.jpeg_bad_icc_marker,
                       "JPEG header: Corrupt JPEG data: bad ICC marker (libjpeg); ignored: it "
                       "is before the image data, which is intact"),
}


@pytest.mark.parametrize("case", sorted(HEADER_WARNINGS))
def test_jpeg_header_warnings_are_accepted_with_a_note(tmp_path, clean, case):
    """Issue 11, class 5: libjpeg warnings about segments before the first SOS marker are not
    damage; the same image is decoded as its clean twin, and the report says what was found."""
    builder, note = HEADER_WARNINGS[case]
    _good_images(tmp_path / "images")
    pixels = badfiles.photo(32, 40, 5)
    odd = builder(tmp_path / "images" / "camera.jpg", pixels)
    badfiles.good_jpeg(tmp_path / "images" / "twin.jpg", pixels)
    assert main(["run", _image_job(tmp_path), "-q"]) == 0
    entry = _entry(tmp_path, odd)
    assert entry["status"] == "ok" and entry["notes"] == [note]
    assert _segmented(tmp_path, "camera") == _segmented(tmp_path, "twin")
    assert _outputs(tmp_path, "good") == clean["image"]


def test_library_warnings_while_listing_go_to_the_image_entry(tmp_path, capfd, caplog,
                                                              clean):
    """Issue 11, class 8: Pillow's "Tag data larger than file" was printed while listing,
    naming no file.  It goes to the image's report entry, and to the log (naming the file)
    with -v."""
    _good_images(tmp_path / "images")
    pixels = badfiles.photo(30, 40, 9)
    odd = badfiles.tiff_with_bogus_tag(tmp_path / "images" / "tagged.tif", pixels)
    badfiles.good_png(tmp_path / "images" / "twin.png", pixels)
    with warnings.catch_warnings(record=True) as said:  # what Pillow says about it
        warnings.simplefilter("always")
        Image.open(odd).close()
    note = f"library warning: UserWarning: {said[0].message}"
    job = _image_job(tmp_path)
    assert main(["run", job]) == 0
    err = capfd.readouterr().err
    assert str(said[0].message) not in err and "Warning" not in err, err
    entry = _entry(tmp_path, odd)
    assert entry["status"] == "ok" and entry["notes"] == [note]
    assert _segmented(tmp_path, "tagged") == _segmented(tmp_path, "twin")
    assert _outputs(tmp_path, "good") == clean["image"]
    caplog.clear()
    assert main(["run", job, "-v", "--set", "output.if_exists=overwrite"]) == 0
    assert [(level, text) for name, level, text in caplog.record_tuples
            if name.startswith("pipeline.") and text.startswith(odd)] == [
        (logging.INFO, f"{odd}: {note}")]


def test_16_bit_frames_differing_in_one_pixel_stay_in_the_same_units(tmp_path):
    """Issue 11, class 9: 16-bit data was shifted by 8 bits only when its maximum exceeded
    255, so one bright pixel changed the whole frame's units.  Since issue 12 16-bit frames
    keep their own units (the raster path, 16 bits), whatever their maximum."""
    import tifffile

    y, x = np.mgrid[0:24, 0:32]
    dark = (x * 8 + y).astype(np.uint16)
    dark = np.minimum(dark, 255)
    bright = dark.copy()
    bright[3, 4] = 60000
    badfiles.grey16_tiff(tmp_path / "images" / "frame_a.tif", dark)
    badfiles.grey16_tiff(tmp_path / "images" / "frame_b.tif", bright)
    assert main(["run", _job(tmp_path), "-q"]) == 0

    def labels(name: str) -> np.ndarray:
        return tifffile.imread(str(tmp_path / "out" / "labels" / f"{name}.tif"))
    different = labels("frame_a") != labels("frame_b")
    assert different.sum() <= 1 and not different[:3].any()


# ---------------------------------------------------------------------------------------------
# Every input skipped

def test_when_every_input_is_skipped_the_reasons_and_the_json_are_printed(tmp_path, capsys):
    """Issue 11, class 7: exit 1 with only "no image could be decoded", no skipped: lines,
    nothing on stdout with --json."""
    dds = badfiles.dds_unsupported(tmp_path / "images" / "texture.dds")  # found listing
    scan = badfiles.corrupt_jpeg_scan(tmp_path / "images" / "sector.jpg")  # found decoding
    assert main(["run", _job(tmp_path), "--json"]) == 1
    captured = capsys.readouterr()
    reasons = {path: _entry(tmp_path, path)["error"] for path in (dds, scan)}
    error = ("none of the 2 input image(s) could be used: every one was skipped (reasons "
             "above and in report.json); nothing to fit")
    assert captured.err.splitlines() == [f"skipped: {scan}: {reasons[scan]}",
                                         f"skipped: {dds}: {reasons[dds]}", f"error: {error}"]
    assert json.loads(captured.out) == {
        "status": "error", "exit_code": 1, "errors": [error],
        "problems": [{"path": scan, "error": reasons[scan]},
                     {"path": dds, "error": reasons[dds]}]}
    assert _report(tmp_path)["status"] == "failed"


@pytest.mark.parametrize("scope", ["collection", "image"])
def test_every_input_unreadable_from_its_header_is_exit_1_in_either_scope(tmp_path, capsys,
                                                                         scope):
    dds = badfiles.dds_unsupported(tmp_path / "images" / "texture.dds")
    assert main(["run", _job(tmp_path, kmeans={"scope": scope}), "-q", "--json"]) == 1
    summary = json.loads(capsys.readouterr().out)
    assert summary["exit_code"] == 1 and summary["problems"][0]["path"] == dds


def test_a_job_file_mistake_prints_the_error_json(tmp_path, capsys):
    _good_images(tmp_path / "images")
    job = _job(tmp_path, kmeans={"kk": 3})
    assert main(["run", job, "--json"]) == 2
    assert json.loads(capsys.readouterr().out) == {
        "status": "error", "exit_code": 2, "problems": [],
        "errors": [f"{job}: kmeans.kk: unknown key (did you mean 'k'?)"]}
