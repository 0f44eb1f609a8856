"""N-band rasters segmented end to end through the raster path (issue 12): known spectral
classes recovered in native units, labels independent of chunking and of scale, masked pixels
in no centroid, outputs written window by window."""

from __future__ import annotations

import os

import dask
import numpy as np
import pytest
import tifffile
import zarr
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline import raster_job
from pipeline.sinks import tiled
from pipeline.sources import rasters

GDAL_NODATA = 42113
# Four spectral classes of a 5-band uint16 sensor (native digital numbers).
CLASSES = np.array([[1200, 900, 700, 3000, 2500],
                    [400, 600, 500, 200, 100],
                    [2500, 2600, 2700, 2800, 2900],
                    [800, 1500, 900, 6000, 3000]], np.float64)


def _scene(height: int = 96, width: int = 128, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    truth = (np.arange(height)[:, None] // 24 + np.arange(width)[None, :] // 32) % 4
    noise = rng.integers(-40, 41, (height, width, 5))
    return (CLASSES[truth] + noise).astype(np.uint16), truth


def _write(path: str, pixels: np.ndarray, tile=(32, 32), nodata: str | None = None) -> str:
    extratags = [(GDAL_NODATA, "s", 0, nodata, True)] if nodata is not None else []
    tifffile.imwrite(path, pixels, tile=tile, compression="zlib", photometric="minisblack",
                     planarconfig="contig", extratags=extratags)
    return path


def _run(images, tmp_path, k=4, fmt="tiff", masks=False, workers=1, **fit):
    sample = raster_job.draw_sample(images, 20000, seed=1)
    model = raster_job.fit_model(sample.rows, k, seed=1, band_names=images[0].band_names,
                                 dtypes=(images[0].header.dtype,), **fit)
    outputs = raster_job.Outputs(str(tmp_path / "out"), masks=masks)
    records = [raster_job.segment_image(image, model, outputs, fmt, workers)
               for image in images]
    return sample, model, records


def _labels(tmp_path, name: str) -> np.ndarray:
    return tifffile.imread(str(tmp_path / "out" / "labels" / f"{name}.tif"))


def test_known_spectral_classes_are_recovered_in_native_units(tmp_path):
    pixels, truth = _scene()
    (header,) = rasters.read_headers(_write(str(tmp_path / "scene.tif"), pixels))
    image = raster_job.RasterImage(header, chunk_pixels=32 * 32 * 2)
    _, model, (record,) = _run([image], tmp_path, masks=True)
    order = [int(np.argmin(((model.native - c) ** 2).sum(axis=1))) for c in CLASSES]
    assert sorted(order) == [0, 1, 2, 3]
    assert np.abs(model.native[order] - CLASSES).max() < 5  # DN units, noise +-40
    labels = _labels(tmp_path, "scene")
    assert labels.dtype == np.uint8 and np.array_equal(labels, np.array(order)[truth])
    segmented = tifffile.imread(str(tmp_path / "out" / "segmented" / "scene.tif"))
    assert segmented.dtype == np.uint16 and segmented.shape == pixels.shape
    assert np.array_equal(segmented, tiled.centroid_values(model.native, "uint16")[labels])
    mask = tifffile.imread(str(tmp_path / "out" / "masks" / "scene" / f"{order[2]}.tif"))
    assert np.array_equal(mask == 255, truth == 2)
    table = {row["class"]: row for row in record["classes"]}
    assert sum(row["pixels"] for row in table.values()) == pixels.shape[0] * pixels.shape[1]
    row = table[order[3]]
    assert row["pixels"] == int((truth == 3).sum())
    assert abs(row["mean"]["band_4"] - pixels[..., 3][truth == 3].mean()) < 1e-6
    assert abs(row["std"]["band_4"] - pixels[..., 3][truth == 3].std()) < 1e-6
    assert record["masked"] == 0


def test_same_labels_for_chunkings_that_cut_tiles_differently(tmp_path):
    pixels, _ = _scene(seed=2)
    (header,) = rasters.read_headers(_write(str(tmp_path / "scene.tif"), pixels, tile=(16, 16)))
    runs = []
    for i, budget in enumerate([16 * 16, 16 * 16 * 6, 1 << 22]):
        image = raster_job.RasterImage(header, chunk_pixels=budget)
        _, model, _ = _run([image], tmp_path / str(i), workers=1 + i)
        runs.append((model.centroids, _labels(tmp_path / str(i), "scene")))
    for centroids, labels in runs[1:]:
        assert np.array_equal(centroids, runs[0][0]) and np.array_equal(labels, runs[0][1])


def test_an_image_times_257_gives_the_same_labels(tmp_path):
    rng = np.random.default_rng(3)
    truth = rng.integers(0, 3, (64, 64))
    small = (np.array([[10, 40, 90], [60, 20, 30], [200, 180, 100]])[truth]
             + rng.integers(-3, 4, (64, 64, 3))).astype(np.uint16)
    images = []
    for name, pixels in [("one", small), ("big", small * 257)]:
        (header,) = rasters.read_headers(_write(str(tmp_path / f"{name}.tif"), pixels))
        images.append(raster_job.RasterImage(header))
    for i, image in enumerate(images):
        _run([image], tmp_path / str(i), k=3)
    assert np.array_equal(_labels(tmp_path / "0", "one"), _labels(tmp_path / "1", "big"))


def test_standard_normalisation_is_saved_and_balances_bands(tmp_path):
    rng = np.random.default_rng(4)
    truth = rng.integers(0, 2, (48, 48))
    # band 1 separates the classes by 10 units; band 2 is noise of range 3000
    pixels = np.stack([truth * 10 + 100, rng.integers(0, 3000, (48, 48))], axis=-1)
    (header,) = rasters.read_headers(_write(str(tmp_path / "n.tif"),
                                            pixels.astype(np.uint16)))
    image = raster_job.RasterImage(header)

    def agrees(labels: np.ndarray) -> bool:
        return np.array_equal(labels == labels[truth == 1][0], truth == 1)

    _, model, _ = _run([image], tmp_path / "std", k=2, normalize="standard")
    assert model.normalization.method == "standard" and agrees(_labels(tmp_path / "std", "n"))
    _, raw, _ = _run([image], tmp_path / "none", k=2)  # band 2's range decides
    assert raw.normalization.method == "none" and not agrees(_labels(tmp_path / "none", "n"))
    doc = model.to_dict()
    again = raster_job.RasterModel.from_dict(doc)
    assert again.normalization == model.normalization
    assert np.allclose(again.native, model.native)


def test_nodata_pixels_are_masked_everywhere(tmp_path):
    pixels, truth = _scene(seed=5)
    pixels[:10, :20] = 0
    (header,) = rasters.read_headers(_write(str(tmp_path / "nd.tif"), pixels, nodata="0"))
    image = raster_job.RasterImage(header, chunk_pixels=32 * 32)
    sample, model, (record,) = _run([image], tmp_path, masks=True)
    assert record["masked"] == 200
    labels = _labels(tmp_path, "nd")
    assert np.all(labels[:10, :20] == 255) and np.all(labels[10:] < 4)
    segmented = tifffile.imread(str(tmp_path / "out" / "segmented" / "nd.tif"))
    assert np.all(segmented[:10, :20] == 0)
    with tifffile.TiffFile(str(tmp_path / "out" / "segmented" / "nd.tif")) as tif:
        assert tif.pages[0].tags[GDAL_NODATA].value == "0"
    for j in range(4):
        mask = tifffile.imread(str(tmp_path / "out" / "masks" / "nd" / f"{j}.tif"))
        assert not mask[:10, :20].any()
    assert sum(r["pixels"] for r in record["classes"]) == pixels.shape[0] * pixels.shape[1] - 200


@settings(max_examples=8, deadline=None)
@given(values=st.lists(st.integers(1, 65535), min_size=5, max_size=5))
def test_values_under_nodata_change_no_centroid_and_no_other_label(tmp_path_factory, values):
    tmp_path = tmp_path_factory.mktemp("nd")
    pixels, _ = _scene(64, 64, seed=6)
    pixels[5:15, 5:25, 0] = 0  # nodata in band 1; the other bands hold anything
    runs = []
    for i, other in enumerate([np.uint16(7), np.array(values[1:], np.uint16)]):
        variant = pixels.copy()
        variant[5:15, 5:25, 1:] = other
        (header,) = rasters.read_headers(_write(str(tmp_path / f"v{i}.tif"), variant,
                                                nodata="0"))
        image = raster_job.RasterImage(header, chunk_pixels=32 * 32)
        _, model, _ = _run([image], tmp_path / str(i))
        runs.append((model.centroids, _labels(tmp_path / str(i), f"v{i}")))
    assert np.array_equal(runs[0][0], runs[1][0])
    assert np.array_equal(runs[0][1], runs[1][1])


def test_k_auto_uses_the_unexplained_variance(tmp_path):
    pixels, _ = _scene(seed=7)
    (header,) = rasters.read_headers(_write(str(tmp_path / "a.tif"), pixels))
    sample = raster_job.draw_sample([raster_job.RasterImage(header)], 20000, seed=0)
    model = raster_job.fit_model(sample.rows, "auto", max_error=0.01, max_k=8)
    assert model.n_clusters == 4  # the four classes explain all but the noise
    assert [t["k"] for t in model.auto_k] == [1, 2, 3, 4]
    assert model.auto_k[-2]["unexplained_variance"] > 0.01 >= model.error


def test_a_damaged_window_fails_its_image_in_the_sample(tmp_path):
    pixels, _ = _scene(seed=8)
    path = _write(str(tmp_path / "bad.tif"), pixels)
    with tifffile.TiffFile(path) as tif:
        offset, count = tif.pages[0].dataoffsets[3], tif.pages[0].databytecounts[3]
    with open(path, "r+b") as handle:
        handle.seek(offset)
        handle.write(b"\x00" * count)
    good = _write(str(tmp_path / "good.tif"), pixels)
    images = [raster_job.RasterImage(rasters.read_headers(p)[0]) for p in (path, good)]
    sample = raster_job.draw_sample(images, 5000, seed=0)
    assert list(sample.failed) == ["bad"] and list(sample.counts) == ["good"]
    assert "damaged data in tile 3 (y 0-31, x 96-127)" in sample.failed["bad"]


def test_zarr_input_gives_zarr_outputs_with_markers(tmp_path):
    pixels, truth = _scene(seed=9)
    store = str(tmp_path / "scene.zarr")
    array = zarr.create_array(store, shape=pixels.shape, chunks=(32, 32, 5), dtype="uint16",
                              dimension_names=("y", "x", "band"))
    array[:] = pixels
    (header,) = rasters.read_headers(store)
    image = raster_job.RasterImage(header, chunk_pixels=32 * 32 * 2)
    fmt = raster_job.output_format(image, "auto")
    assert fmt == "zarr"
    _, model, (record,) = _run([image], tmp_path, fmt=fmt)
    url = str(tmp_path / "out" / "labels" / "scene.zarr")
    assert tiled.zarr_complete(url)
    labels = zarr.open_array(url, mode="r")[:]
    assert len(np.unique(labels)) == 4 and record["files"]["labels"][0][0] == \
        "labels/scene.zarr"


def test_sample_pass_runs_on_a_cluster_with_the_same_result(tmp_path, local_cluster):
    from distributed import Client

    pixels, _ = _scene(seed=10)
    (header,) = rasters.read_headers(_write(str(tmp_path / "c.tif"), pixels))
    image = raster_job.RasterImage(header, chunk_pixels=32 * 32)
    local = raster_job.draw_sample([image], 5000, seed=2)
    with Client(local_cluster):
        remote = raster_job.draw_sample([image], 5000, seed=2)
    assert np.array_equal(local.rows, remote.rows)


def test_an_image_that_fails_while_segmenting_leaves_no_outputs(tmp_path):
    pixels, _ = _scene(seed=11)
    path = _write(str(tmp_path / "late.tif"), pixels)
    (header,) = rasters.read_headers(path)
    image = raster_job.RasterImage(header, chunk_pixels=32 * 32)
    sample = raster_job.draw_sample([image], 5000, seed=0)
    model = raster_job.fit_model(sample.rows, 3)
    with tifffile.TiffFile(path) as tif:  # damaged after the sample pass read it
        offset, count = tif.pages[0].dataoffsets[9], tif.pages[0].databytecounts[9]
    with open(path, "r+b") as handle:
        handle.seek(offset)
        handle.write(b"\x00" * count)
    rasters.forget_open_files()
    outputs = raster_job.Outputs(str(tmp_path / "out"), masks=True)
    with pytest.raises(rasters.ImageReadError, match=r"late.tif: damaged data in tile 9"):
        raster_job.segment_image(image, model, outputs, "tiff", max_workers=2)
    left = [os.path.join(d, f) for d, _, names in os.walk(tmp_path / "out") for f in names]
    assert left == []


def test_overview_shows_display_bands_stretched_for_any_chunking(tmp_path):
    pixels, truth = _scene(200, 150, seed=12)
    (header,) = rasters.read_headers(_write(str(tmp_path / "o.tif"), pixels, tile=(16, 16)))
    shown = []
    for budget in (16 * 16, 1 << 22):
        image = raster_job.RasterImage(header, chunk_pixels=budget)
        sample = raster_job.draw_sample([image], 5000, seed=0)
        model = raster_job.fit_model(sample.rows, 4, seed=0)
        display = raster_job.display_for(image, sample.rows, (4, 2, 1))
        got = {}
        raster_job.segment_image(image, model, raster_job.Outputs(str(tmp_path / str(budget))),
                                 display=display,
                                 write_thumbs=lambda rgb, lab, pal: got.update(
                                     rgb=rgb, lab=lab, pal=pal) or ["thumbs"])
        shown.append(got)
    assert np.array_equal(shown[0]["rgb"], shown[1]["rgb"])
    assert np.array_equal(shown[0]["lab"], shown[1]["lab"])
    rgb = shown[0]["rgb"]
    assert rgb.shape == (200, 150, 3) and rgb.dtype == np.uint8  # small: every pixel
    expected = raster_job.Display((3, 1, 0), display.low, display.high).to_rgb(pixels)
    assert np.array_equal(rgb, expected)
    assert shown[0]["pal"].shape == (4, 3)
    low = np.percentile(pixels.reshape(-1, 5)[:, 3], 2)
    assert abs(display.low[0] - low) < 60  # the sample's 2 % point of band 4
    with pytest.raises(raster_job.ConfigError, match=r"preprocess.display_bands: give 3 bands"):
        raster_job.display_for(image, sample.rows, (1, 9, 2))


def test_one_image_alone_samples_as_the_collection_pass_does(tmp_path):
    pixels, _ = _scene(seed=13)
    (header,) = rasters.read_headers(_write(str(tmp_path / "s.tif"), pixels, nodata="0"))
    image = raster_job.RasterImage(header, chunk_pixels=32 * 32)
    assert np.array_equal(raster_job.sample_image(image, 3000, 5),
                          raster_job.draw_sample([image], 3000, 5).rows)


def test_a_saved_model_is_refused_for_other_bands_dtype_or_normalisation(tmp_path):
    pixels, _ = _scene(seed=14)
    (header,) = rasters.read_headers(_write(str(tmp_path / "m.tif"), pixels))
    image = raster_job.RasterImage(header)
    sample = raster_job.draw_sample([image], 3000, 0)
    doc = raster_job.fit_model(sample.rows, 3, normalize="robust",
                               dtypes=("uint16",)).to_dict()
    assert raster_job.check_model(doc, image, "robust").n_clusters == 3
    with pytest.raises(raster_job.ConfigError, match=r"the model has 5 bands, .*m.tif has 2"):
        raster_job.check_model(doc, raster_job.RasterImage(header, bands=(1, 2)))
    with pytest.raises(raster_job.ConfigError, match=r"normalises with 'robust', the job has "
                                                     r"preprocess.normalize: 'none'"):
        raster_job.check_model(doc, image, "none")
    with pytest.raises(raster_job.ConfigError, match=r"fitted on uint16 data, .* is float32"):
        other = _write(str(tmp_path / "f.tif"), pixels.astype(np.float32))
        raster_job.check_model(doc, raster_job.RasterImage(rasters.read_headers(other)[0]))
    with pytest.raises(raster_job.ConfigError, match=r"an RGB colour palette"):
        raster_job.check_model({"centroids": [[1, 2, 3]]}, image)


def test_tasks_return_failures_as_values(tmp_path):
    pixels, _ = _scene(seed=15)
    (header,) = rasters.read_headers(_write(str(tmp_path / "t.tif"), pixels))
    image = raster_job.RasterImage(header)
    outputs = raster_job.Outputs(str(tmp_path / "out"))
    fit = {"n_clusters": 4, "seed": 0, "sample_pixels": 4000}
    entry = raster_job.fit_segment_task(image, fit, outputs, "tiff")
    assert entry["model"]["n_clusters"] == 4 and sum(entry["counts"]) == pixels.shape[0] * 128
    assert entry["outputs"]["labels"][0][0] == "labels/t.tif"
    blank = np.zeros_like(pixels)
    (empty,) = rasters.read_headers(_write(str(tmp_path / "e.tif"), blank, nodata="0"))
    result = raster_job.fit_segment_task(raster_job.RasterImage(empty), fit, outputs, "tiff")
    assert result["error"].endswith("e.tif: every pixel is masked (nodata, NaN or alpha); "
                                    "nothing to segment")
    (tmp_path / "file").write_text("")
    blocked = raster_job.Outputs(str(tmp_path / "file" / "out"))
    model = raster_job.RasterModel.from_dict(entry["model"])
    failed = raster_job.segment_task(image, model, blocked, "tiff")
    assert failed["output_error"] and "cannot write the outputs of" in failed["error"]


def test_band_counts_must_agree_and_all_nodata_images_are_skipped(tmp_path):
    pixels, _ = _scene(seed=16)
    five = raster_job.RasterImage(rasters.read_headers(_write(str(tmp_path / "a.tif"),
                                                             pixels))[0])
    three = raster_job.RasterImage(rasters.read_headers(_write(str(tmp_path / "b.tif"),
                                                              pixels[..., :3]))[0])
    with pytest.raises(raster_job.ConfigError, match=r"b.tif: 3 bands, but .*a.tif has 5; a "
                                                     r"collection needs one band count"):
        raster_job.check_band_counts([five, three])
    raster_job.check_band_counts([five, raster_job.RasterImage(three.header,
                                                               bands=(1, 2, 3, 1, 2))])
    blank = raster_job.RasterImage(rasters.read_headers(
        _write(str(tmp_path / "c.tif"), np.zeros_like(pixels), nodata="0"))[0])
    sample = raster_job.draw_sample([five, blank], 4000, 0)
    assert sample.failed == {"c": f"{blank.header.path}: {raster_job.ALL_MASKED}"}


def test_large_images_are_sampled_in_drawn_blocks_read_alone(tmp_path):
    """Above 64 sample blocks a low-rate sample reads only the drawn 512-pixel blocks: the
    sample then holds pixels of those blocks only, the same for any chunking; and an image
    whose drawn blocks are all nodata is read again whole, not called all-masked."""
    size = 4608  # 9 x 9 blocks of 512
    rng = np.random.default_rng(4)
    pixels = rng.integers(100, 4000, (size, size, 2)).astype(np.uint16)
    ys, xs = np.mgrid[0:size, 0:size]
    pixels[..., 0] = 1 + (ys // 512) * 9 + xs // 512  # band 1 names the pixel's block
    seed, n_sample = 3, 20_000
    rate = n_sample / size**2
    share = rasters.block_share(rate, size, size)
    assert share == 64 / 81
    drawn = rasters.sampled_blocks(seed, rasters.sample_key("big"), 0, 0, size, size, size, share)
    assert 40 < len(drawn) < 81
    path = _write(str(tmp_path / "big.tif"), pixels, tile=(256, 256))
    header = rasters.read_headers(path, "big")[0]
    with dask.config.set(scheduler="sync"):
        samples = [raster_job.draw_sample([raster_job.RasterImage(header, chunk_pixels=c)],
                                          n_sample, seed) for c in (1 << 16, 1 << 20)]
    assert np.array_equal(samples[0].rows, samples[1].rows)
    inside = np.zeros((size, size), bool)
    for r0, c0, h, w in drawn:
        inside[r0:r0 + h, c0:c0 + w] = True
    assert 0.6 * n_sample < len(samples[0].rows) < 1.4 * n_sample
    blocks = {1 + (r0 // 512) * 9 + c0 // 512 for r0, c0, _, _ in drawn}
    assert set(np.unique(samples[0].rows[:, 0]).tolist()) == blocks
    # nodata everywhere but one undrawn block: the drawn blocks see nothing, the image is
    # read whole and sampled from that block
    undrawn = next((r, c) for r in range(0, size, 512) for c in range(0, size, 512)
                   if not inside[r, c])
    island = np.zeros_like(pixels)
    island[undrawn[0]:undrawn[0] + 512, undrawn[1]:undrawn[1] + 512] = 777
    path = _write(str(tmp_path / "island.tif"), island, tile=(256, 256), nodata="0")
    header = rasters.read_headers(path, "big")[0]
    with dask.config.set(scheduler="sync"):
        sample = raster_job.draw_sample([raster_job.RasterImage(header)], n_sample, seed)
    assert not sample.failed and len(sample.rows) > 0 and (sample.rows == 777).all()


def test_starts_on_a_subset_of_a_large_sample_find_the_full_starts_basin(monkeypatch):
    """A sample above 2 x 2^18 rows compares its starts on 2^18 of them and refines only the
    winner: the same classes, and an objective no worse than starts on every row."""
    rng = np.random.default_rng(8)
    truth = rng.integers(0, 4, 600_000)
    rows = CLASSES[truth] + rng.normal(0, 60, (600_000, 5))
    fast = raster_job.fit_model(rows, 4, seed=2, n_init=3)
    monkeypatch.setattr(raster_job, "_START_ROWS", 1 << 30)
    full = raster_job.fit_model(rows, 4, seed=2, n_init=3)
    assert fast.inertia <= full.inertia * (1 + 1e-9)
    order = np.lexsort(fast.native.T[::-1])
    assert np.abs(fast.native[order] - CLASSES[np.lexsort(CLASSES.T[::-1])]).max() < 5
