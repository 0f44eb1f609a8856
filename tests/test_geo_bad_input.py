"""Bad georeferenced input through the run (issue 13 section 4), one case at a time: a VRT naming
a missing file, a band stack whose bands differ in size, a corrupt block, a format this GDAL
build does not read.  Each gives one line naming the file (and the block), and the image is
skipped (``input.on_error: skip``: the good image is written, exit 3) or the job stops
(``fail``: exit 1, nothing written).  A raster without a CRS runs: see test_geo.py.
"""

from __future__ import annotations

import os

import pytest
import rasterio

from test_geo import build_vrt, classes_scene, geo_job, run_job, write_raster


def missing_source(tmp_path) -> str:
    bands, _ = classes_scene()
    files = [write_raster(tmp_path / f"B{b}.tif", bands[b:b + 1]) for b in range(3)]
    build_vrt(str(tmp_path / "bad.vrt"), files)
    os.unlink(files[2])
    return "bad.vrt"


def sizes_differ(tmp_path) -> str:
    bands, _ = classes_scene()
    files = [write_raster(tmp_path / "B0.tif", bands[:1]),
             write_raster(tmp_path / "B1.tif", bands[1:2, :, :150])]
    build_vrt(str(tmp_path / "bad.vrt"), files)
    return "bad.vrt"


def corrupt_block(tmp_path) -> str:
    path = write_raster(tmp_path / "bad.tif", classes_scene()[0])
    with rasterio.open(path) as src:
        offset = int(src.get_tag_item("BLOCK_OFFSET_2_1", "TIFF", bidx=1))
    with open(path, "r+b") as handle:
        handle.seek(offset)
        handle.write(b"\xff" * 64)
    return "bad.tif"


def unsupported_driver(tmp_path) -> str:
    (tmp_path / "bad.img").write_bytes(b"not an ERDAS Imagine file\n" * 8)
    return "bad.img"


# case -> (make the bad file, what its line says after "<its path>: ")
CASES = {
    "vrt naming a missing file": (missing_source, "names {dir}/B2.tif, which does not exist; fix "
                                  "the VRT or restore the file"),
    "bands differing in size": (sizes_differ, "its sources differ in size: B0.tif is 200x150, "
                                "B1.tif is 150x150; a band stack needs one grid (resample them "
                                "to one grid, e.g. gdalwarp -tr -te)"),
    "corrupt block": (corrupt_block, "damaged data in block (row 1, column 2) at pixels y "
                      "64-127, x 128-191 (ZIPDecode:Decoding error at scanline 128); fix or "
                      "remove it"),
    "unsupported driver": (unsupported_driver, "not a raster format this GDAL build reads "
                           "('{dir}/bad.img' not recognized as being in a supported file "
                           "format.); convert it to GeoTIFF (gdal_translate) or remove it"),
}


def bad_job(tmp_path, case: str, on_error: str) -> tuple[str, str]:
    """The job file, and the line's text from the bad file's path on."""
    write_raster(tmp_path / "good.tif", classes_scene()[0], nodata=0)
    make, reason = CASES[case]
    bad = make(tmp_path)
    job = geo_job(tmp_path, ["good.tif", bad], input={"on_error": on_error},
                  output={"masks": False})
    return job, f"{tmp_path / bad}: {reason.format(dir=tmp_path)}"


def reason_line(lines: list[str], case_text: str) -> str:
    """The one line about the bad file, which holds its path and reason (and block)."""
    found = [line for line in lines if case_text in line]
    assert len(found) == 1, (case_text, lines)
    return found[0]


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_skipped_with_one_line(tmp_path, case):
    job, text = bad_job(tmp_path, case, "skip")
    result = run_job(job, quiet=False)
    assert result.code == 3, result.err
    assert reason_line(result.lines, text) == f"skipped: {text}"
    assert os.path.isfile(tmp_path / "out" / "labels" / "good.tif")
    assert not [name for name in os.listdir(tmp_path / "out" / "labels")
                if name.startswith("bad")]


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_stops_the_job_with_one_line_under_on_error_fail(tmp_path, case):
    job, text = bad_job(tmp_path, case, "fail")
    result = run_job(job, quiet=False)
    assert result.code == 1, result.err
    assert "Traceback" not in result.err
    line = reason_line(result.lines, text)
    # found at listing (before any cluster work) or, a corrupt block, while segmenting
    assert line in (f"error: cannot read {text}; no cluster work was started "
                    "(input.on_error: fail)",
                    f"error: {text} (input.on_error: fail; no image outputs were written)")
    labels = tmp_path / "out" / "labels"
    assert not labels.exists() or not [n for n in os.listdir(labels) if n.startswith("bad")]
