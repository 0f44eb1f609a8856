"""Issue 6: report.html in a real headless browser (Debian's chromium + chromium-driver, which
.ci/run installs), thumbnails made by the image tasks, and the page of a failed run.

Set KMEANS_REPORT_SCREENSHOT=path to also keep the browser's screenshot there (that is how
docs/report.png, shown in the README, is made).
"""

import copy
import json
import os
import shutil
import tempfile

import imageio.v3 as iio
import numpy as np
import pytest

from conftest import save, write_job
from pipeline.sinks import report
from pipeline.cli import main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
# The network is closed here and CI runs as root: no sandbox, nothing that phones home.
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--window-size=1280,1700"]


@pytest.fixture(scope="module")
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    assert os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER), (
        "install Debian's chromium and chromium-driver (apt-get install chromium "
        "chromium-driver); .ci/run does")
    profile = tempfile.mkdtemp(prefix="chromium-profile-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in FLAGS + [f"--user-data-dir={profile}"]:
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture(scope="module")
def photo_run(tmp_path_factory):
    """The bundled sample photos at quarter size, k: auto with a loose target."""
    folder = tmp_path_factory.mktemp("photos")
    write_job(folder, input={"paths": [os.path.join(ROOT, "samples", "photos")]},
              preprocess={"scale": 0.25},
              kmeans={"k": "auto", "max_error": 6.0, "max_k": 16, "batch_pixels": 4096})
    here = os.getcwd()
    os.chdir(folder)  # the page names the job file as given: "job.yaml"
    try:
        assert main(["run", "job.yaml", "-q"]) == 0
    finally:
        os.chdir(here)
    return folder / "out"


def _open(driver, path):
    driver.get_log("browser")  # drop what earlier pages logged
    driver.get("file://" + str(path))
    return driver


def _errors(driver):
    return [entry for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]


def _all_images_loaded(driver) -> bool:
    from selenium.webdriver.support.ui import WebDriverWait

    driver.execute_script("document.querySelectorAll('img').forEach("
                          "function (i) { i.loading = 'eager'; });")
    return WebDriverWait(driver, 20).until(lambda d: d.execute_script(
        "return Array.from(document.images).every("
        "function (i) { return i.complete && i.naturalWidth > 0; });"))


def test_report_renders_in_a_browser_with_pictures_and_swatches(browser, photo_run, tmp_path):
    page = photo_run / report.HTML
    text = page.read_text()
    assert "http://" not in text and "https://" not in text  # nothing from the network
    _open(browser, page)
    assert browser.execute_script("return document.querySelectorAll('.card').length") == 5
    assert _all_images_loaded(browser)
    sources = browser.execute_script(
        "return Array.from(document.images).map(function (i) { return i.src; });")
    assert len(sources) == 1 + 5 * 3  # the palette strip; before, after, masks per image
    doc = json.loads((photo_run / "model.json").read_text())
    k = doc["k"]
    assert browser.execute_script("return document.querySelectorAll('.swatch').length") \
        == k + 5 * k
    first = browser.execute_script(
        "return getComputedStyle(document.querySelector('.swatch')).backgroundColor")
    assert first == "rgb({}, {}, {})".format(*doc["palette"][0])
    charts = browser.execute_script("return document.querySelectorAll('svg.chart').length")
    assert charts == 3  # inertia, centroid shift, error vs k
    assert _errors(browser) == []
    shot = tmp_path / "report.png"
    assert browser.save_screenshot(str(shot))
    assert iio.imread(shot).shape[1] == 1280
    keep = os.environ.get("KMEANS_REPORT_SCREENSHOT")
    if keep:
        shutil.copyfile(shot, keep)


def test_a_thousand_images_open_one_page_at_a_time(browser, photo_run):
    base = json.loads((photo_run / "report.json").read_text())
    doc = json.loads((photo_run / "model.json").read_text())
    records = []
    for i in range(1000):
        record = copy.deepcopy(base["images"][i % 5])
        record["name"] = f"img-{i:04d}"
        if i % 100 == 7:
            record.update(status="skipped", error="cannot decode image (truncated)",
                          outputs=None, counts=None)
        records.append(record)
    base["images"] = records
    page = photo_run / "thousand.html"
    page.write_text(report.render_html(base, doc))
    _open(browser, page)
    script = "return document.querySelectorAll('.card').length"
    assert browser.execute_script(script) == report.PAGE_SIZE
    info = browser.find_element("id", "page-info")
    assert info.text == "page 1 of 20 (1000 image(s))"
    browser.find_element("id", "next").click()
    assert info.text == "page 2 of 20 (1000 image(s))"
    assert browser.execute_script("return document.querySelector('.card h3').textContent") \
        == "img-0050"
    browser.execute_script("var f = document.getElementById('filter'); f.value = 'skipped';"
                           "f.dispatchEvent(new Event('change'));")
    assert browser.execute_script(script) == 10 and info.text.endswith("(10 image(s))")
    assert _errors(browser) == []


def test_image_tasks_write_thumbnails_listed_as_outputs(tmp_path, collection):
    job = write_job(tmp_path, kmeans={"scope": "image", "batch_pixels": 512})
    assert main(["run", job, "-q"]) == 0
    out = tmp_path / "out"
    entry = json.loads((out / "report.json").read_text())["images"][0]
    thumbs = entry["outputs"]["thumbs"]
    assert [rel for rel, _ in thumbs] == [f"thumbs/{entry['name']}/{f}"
                                          for f in ("before.jpg", "after.png", "masks.png")]
    assert all(os.path.getsize(out / rel) == size for rel, size in thumbs)
    before, after = iio.imread(out / thumbs[0][0]), iio.imread(out / thumbs[1][0])
    assert before.shape == after.shape == (entry["height"], entry["width"], 3)  # small: as is
    labels = iio.imread(out / "labels" / f"{entry['name']}.png")
    palette = np.rint(entry["palette"]["centroids"]).astype(np.uint8)
    assert (after == palette[labels]).all()
    strip = iio.imread(out / thumbs[2][0])
    assert set(np.unique(strip)) <= {0, 200, 255}
    assert not [n for _, _, names in os.walk(out) for n in names if n.startswith(".tmp-")]


def test_a_failed_run_still_writes_its_page(tmp_path, collection):
    (collection[0] / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    job = write_job(tmp_path, input={"on_error": "fail"})
    assert main(["run", job, "-q"]) == 1
    page = (tmp_path / "out" / report.HTML).read_text()
    assert "failed" in page and "broken.png" in page


def test_big_images_get_small_thumbnails(tmp_path):
    pixels = np.zeros((300, 500, 3), np.uint8)
    pixels[:, 250:] = 255
    save(tmp_path / "images" / "wide.png", pixels)
    job = write_job(tmp_path, kmeans={"k": 2, "batch_pixels": 512})
    assert main(["run", job, "-q"]) == 0
    thumbs = tmp_path / "out" / "thumbs" / "wide"
    assert iio.imread(thumbs / "before.jpg").shape == (96, 160, 3)
    assert iio.imread(thumbs / "masks.png").shape == (23, 2 * 38 + 2)


HOSTILE = ["<!--<script>x", "a&b'c\"d<e>f"]  # file names: no "/" possible, so no "</"


def test_hostile_names_and_quoted_file_starts_cannot_break_the_page(browser, tmp_path):
    """Issue 11 review: the embedded JSON escaped only "</"; a name or a quoted file start
    holding "<!--" then "<script" left the page blank.  "<", ">", "&" and "'" are written
    as \\u003c, \\u003e, \\u0026, \\u0027 (what Jinja's tojson does)."""
    for i, name in enumerate(HOSTILE):
        save(tmp_path / "images" / f"{name}.png", np.full((12, 16, 3), 60 * i + 40, np.uint8))
    evil = tmp_path / "images" / "evil.jpg"
    evil.write_text("</script><!--<script>alert(1)\n")
    job = write_job(tmp_path, kmeans={"k": 2, "batch_pixels": 64})
    assert main(["run", job, "-q"]) == 3
    page = tmp_path / "out" / report.HTML
    data = page.read_text().split('id="images-data">', 1)[1].split("</script>", 1)[0]
    assert not set("<>&'") & set(data)
    _open(browser, page)
    assert browser.execute_script("return document.querySelectorAll('.card').length") == 3
    titles = browser.execute_script("return Array.from(document.querySelectorAll('.card h3'))"
                                    ".map(function (h) { return h.textContent; });")
    assert sorted(titles) == sorted(HOSTILE + ["evil.jpg"])  # a skipped file: its file name
    error = browser.execute_script("return document.querySelector('.card .error').textContent")
    assert "it starts with '</script><!--<script>alert(1)'" in error
    assert _errors(browser) == []
