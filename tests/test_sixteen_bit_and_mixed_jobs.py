"""16-bit PNG and TIFF photos keep 16 bits, and jobs that mix photos with rasters (issue 12):
``scope: image`` runs each image on its own path, ``scope: collection`` puts every image on
the raster path in native units, with one band count."""

from __future__ import annotations

import os

import imagecodecs
import numpy as np
import pytest
import tifffile

from conftest import COLOURS, blocks_image, layout, read_json, run_cli, save, write_job

# Four colours in 16-bit units that are not multiples of 257: a rescaled 8-bit fit would miss
COLOURS16 = np.array([[51234, 1200, 30001], [700, 40000, 9999], [20000, 21000, 64000],
                      [62000, 60500, 100]], np.uint16)


def _png16(path, pixels: np.ndarray) -> str:
    os.makedirs(os.path.dirname(str(path)), exist_ok=True)
    with open(path, "wb") as handle:
        handle.write(imagecodecs.png_encode(pixels))
    return str(path)


def _blocks16(truth: np.ndarray, seed: int = 0) -> np.ndarray:
    noise = np.random.default_rng(seed).integers(-40, 41, truth.shape + (3,))
    return (COLOURS16[truth].astype(np.int64) + noise).astype(np.uint16)


def _same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether two label maps group the pixels alike (one label of ``a`` <-> one of ``b``)."""
    pairs = set(zip(a.ravel().tolist(), b.ravel().tolist()))
    return len(pairs) == len({p for p, _ in pairs}) == len({q for _, q in pairs})


def _sorted_rows(values) -> np.ndarray:
    values = np.asarray(values, np.float64)
    return values[np.lexsort(values.T[::-1])]


def test_a_16_bit_rgb_png_is_clustered_in_16_bit_units_and_written_at_16_bits(tmp_path):
    truth = layout(48, 64, 4, seed=3)
    _png16(tmp_path / "images" / "deep.png", _blocks16(truth))
    assert run_cli("run", write_job(tmp_path, output={"masks": True}), "-q").code == 0
    model = read_json(tmp_path / "out", "model.json")
    assert model["kind"] == "raster" and model["dtypes"] == ["uint16"]
    assert np.allclose(_sorted_rows(model["centroids_native"]), _sorted_rows(COLOURS16), atol=8)
    (entry,) = read_json(tmp_path / "out")["images"]
    assert entry["mode"] == "3xuint16" and entry["format"] == "PNG"
    out = tmp_path / "out"
    segmented = imagecodecs.png_decode((out / "segmented" / "deep.png").read_bytes())
    labels = imagecodecs.png_decode((out / "labels" / "deep.png").read_bytes())
    mask0 = imagecodecs.png_decode((out / "masks" / "deep" / "0.png").read_bytes())
    assert segmented.dtype == np.uint16 and segmented.shape == (48, 64, 3)
    assert labels.dtype == np.uint8 and labels.shape == (48, 64) and _same_partition(labels, truth)
    assert np.array_equal(mask0 == 255, labels == 0)
    painted = np.rint(np.asarray(model["centroids_native"])).astype(np.uint16)
    assert np.array_equal(segmented, painted[labels])  # the centroids, in 16-bit units


def test_a_16_bit_grey_alpha_png_masks_transparent_pixels_and_keeps_them_transparent(tmp_path):
    truth = layout(40, 40, 2, seed=1)
    grey = np.where(truth == 0, 1000, 50000).astype(np.uint16)
    alpha = np.full((40, 40), 65535, np.uint16)
    alpha[:10, :10] = 0
    _png16(tmp_path / "images" / "ga.png", np.dstack([grey, alpha]))
    assert run_cli("run", write_job(tmp_path, kmeans={"k": 2}), "-q").code == 0
    (entry,) = read_json(tmp_path / "out")["images"]
    assert entry["masked"] == 100 and sum(entry["counts"]) == 1500
    segmented = imagecodecs.png_decode((tmp_path / "out" / "segmented" / "ga.png").read_bytes())
    labels = imagecodecs.png_decode((tmp_path / "out" / "labels" / "ga.png").read_bytes())
    assert segmented.shape == (40, 40, 2) and segmented.dtype == np.uint16  # grey + alpha
    assert np.all(segmented[:10, :10, 1] == 0) and np.all(segmented[10:, :, 1] == 65535)
    assert np.all(labels[:10, :10] == 255)
    assert sorted(np.unique(segmented[10:, :, 0]).tolist()) == [1000, 50000]


def test_a_16_bit_png_over_max_pixels_is_refused_from_the_header(tmp_path):
    path = _png16(tmp_path / "images" / "big.png", np.zeros((20, 30, 3), np.uint16))
    result = run_cli("run", write_job(tmp_path, input={"max_pixels": 500, "on_error": "fail"}))
    assert result.code == 1
    assert result.lines[-1] == (f"error: cannot read {path}: 30x20 = 600 pixels is over "
                                "input.max_pixels (500); a PNG must be decoded whole, so it is "
                                "refused from the header without decoding; raise "
                                "input.max_pixels if the file is trusted; no cluster work was "
                                "started (input.on_error: fail)")


def test_photos_stay_8_bit_and_a_16_bit_tiff_among_them_keeps_16_bits(tmp_path):
    truth = layout(32, 48, 4, seed=5)
    save(tmp_path / "images" / "photo.png", blocks_image(truth))
    tifffile.imwrite(str(tmp_path / "images" / "deep.tif"), _blocks16(truth), photometric="rgb")
    tifffile.imwrite(str(tmp_path / "images" / "flat.tif"), blocks_image(truth),
                     photometric="rgb")
    job = write_job(tmp_path, kmeans={"k": 4, "scope": "image"})
    assert run_cli("run", job, "-q").code == 0
    report = read_json(tmp_path / "out")
    modes = {e["name"]: (e["format"], e["mode"]) for e in report["images"]}
    assert modes == {"deep": ("TIFF", "3xuint16"), "flat": ("TIFF", "RGB"),
                     "photo": ("PNG", "RGB")}
    out = tmp_path / "out"
    deep = tifffile.imread(str(out / "segmented" / "deep.tif"))
    assert deep.dtype == np.uint16 and deep.max() > 255
    for name in ("photo", "flat"):  # the photo path, as before: 8-bit PNG outputs
        assert os.path.isfile(out / "segmented" / f"{name}.png")
    labels = {"deep": tifffile.imread(str(out / "labels" / "deep.tif")),
              "photo": imagecodecs.png_decode((out / "labels" / "photo.png").read_bytes())}
    assert all(_same_partition(lab, truth) for lab in labels.values())
    model = read_json(out, "model.json")
    assert model["palettes"]["deep"]["kind"] == "raster"
    assert "kind" not in model["palettes"]["photo"] and "centroids" in model["palettes"]["photo"]


def test_scope_image_gives_an_8_bit_png_and_the_same_picture_x257_at_16_bits_one_partition(
        tmp_path):
    truth = layout(40, 56, 4, seed=7)
    eight = blocks_image(truth, noise=3, seed=7)
    save(tmp_path / "images" / "a8.png", eight)
    _png16(tmp_path / "images" / "a16.png", eight.astype(np.uint16) * 257)
    assert run_cli("run", write_job(tmp_path, kmeans={"k": 4, "scope": "image"}), "-q").code == 0
    out = tmp_path / "out"
    a8 = imagecodecs.png_decode((out / "labels" / "a8.png").read_bytes())
    a16 = imagecodecs.png_decode((out / "labels" / "a16.png").read_bytes())
    assert _same_partition(a8, a16) and _same_partition(a8, truth)
    segmented = imagecodecs.png_decode((out / "segmented" / "a16.png").read_bytes())
    assert segmented.dtype == np.uint16 and segmented.max() > 255
    assert {e["status"] for e in read_json(out)["images"]} == {"ok"}


def test_scope_collection_puts_photos_on_the_raster_path_in_native_units(tmp_path):
    truth = layout(36, 44, 4, seed=2)
    eight = blocks_image(truth)
    save(tmp_path / "images" / "photo.png", eight)
    # 16 bits holding the 8-bit values: native units, so the same colours and the same labels
    _png16(tmp_path / "images" / "deep.png", eight.astype(np.uint16))
    assert run_cli("run", write_job(tmp_path), "-q").code == 0
    out = tmp_path / "out"
    model = read_json(out, "model.json")
    assert model["kind"] == "raster" and model["dtypes"] == ["uint16", "uint8"]
    assert np.allclose(_sorted_rows(model["centroids_native"]), _sorted_rows(COLOURS), atol=2)
    photo = imagecodecs.png_decode((out / "labels" / "photo.png").read_bytes())
    deep = imagecodecs.png_decode((out / "labels" / "deep.png").read_bytes())
    assert np.array_equal(photo, deep) and _same_partition(photo, truth)
    segmented = imagecodecs.png_decode((out / "segmented" / "photo.png").read_bytes())
    assert segmented.dtype == np.uint8 and segmented.shape == (36, 44, 3)
    entries = {e["name"]: e for e in read_json(out)["images"]}
    assert entries["photo"]["mode"] == "RGB" and entries["deep"]["mode"] == "3xuint16"


def test_scope_collection_refuses_photos_and_rasters_of_other_band_counts(tmp_path):
    save(tmp_path / "images" / "photo.png", blocks_image(layout(20, 20, 4, seed=0)))
    tifffile.imwrite(str(tmp_path / "images" / "four.tif"),
                     np.zeros((20, 20, 4), np.uint16), photometric="minisblack",
                     planarconfig="contig")
    result = run_cli("run", write_job(tmp_path))
    assert result.code == 2
    assert result.lines[-1] == (f"error: {tmp_path / 'images' / 'photo.png'}: 3 bands, but "
                                f"{tmp_path / 'images' / 'four.tif'} has 4; a collection "
                                "needs one band count: select bands with input.bands, or use "
                                "kmeans.scope: image")
    assert not os.path.exists(tmp_path / "out" / "model.json")  # before any work
    per_image = write_job(tmp_path, kmeans={"k": 4, "scope": "image"}, output={"dir": "out2"})
    assert run_cli("run", per_image, "-q").code == 0


@pytest.mark.parametrize("algorithm, code", [("lloyd", 2), ("minibatch", 0)])
def test_kmeans_algorithm_on_rasters_is_honoured_or_refused_in_one_line(tmp_path, algorithm,
                                                                        code):
    path = _png16(tmp_path / "images" / "deep.png", _blocks16(layout(24, 24, 4, seed=0)))
    result = run_cli("run", write_job(tmp_path, kmeans={"k": 4, "algorithm": algorithm}))
    assert result.code == code, result.err
    if code:
        assert result.lines == [f"error: kmeans.algorithm: 'lloyd' makes full "
                                f"passes over every pixel, which the raster path does not do "
                                f"({path}); use minibatch: the fit runs Lloyd steps on the "
                                "sample until the centroids settle"]


def test_a_16_bit_grey_png_among_photos_is_expanded_to_three_bands_as_a_grey_photo(tmp_path):
    truth = layout(30, 30, 2, seed=4)
    save(tmp_path / "images" / "photo.png", blocks_image(truth))
    _png16(tmp_path / "images" / "grey.png", np.where(truth == 0, 300, 40000).astype(np.uint16))
    assert run_cli("run", write_job(tmp_path, kmeans={"k": 6}), "-q").code == 0
    model = read_json(tmp_path / "out", "model.json")
    assert model["n_bands"] == 3 and model["band_names"] == ["band_1", "band_2", "band_3"]
    segmented = imagecodecs.png_decode((tmp_path / "out" / "segmented" / "grey.png").read_bytes())
    assert segmented.dtype == np.uint16 and segmented.shape == (30, 30, 3)
    assert np.array_equal(segmented[..., 0], segmented[..., 2])  # three equal bands
    keys = {e["name"]: set(e["classes"][0]["mean"]) for e in read_json(tmp_path / "out")["images"]}
    assert keys == {"grey": {"band_1", "band_2", "band_3"}, "photo": {"band_1", "band_2", "band_3"}}
    assert "band_2" in (tmp_path / "out" / "report.html").read_text()  # the combined table
