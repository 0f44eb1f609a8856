"""CIEDE2000 (pipeline.engine.delta_e): Sharma's published test pairs, and two independent
implementations (scikit-image, colour-science) on many random pairs."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from pipeline.engine.delta_e import ciede2000

# The 34 test pairs of Table 1 in G. Sharma, W. Wu and E. N. Dalal (2005), "The CIEDE2000
# color-difference formula: implementation notes, supplementary test data, and mathematical
# observations", Color Research & Application 30(1), 21-30, doi:10.1002/col.20070.
# (L1, a1, b1, L2, a2, b2, Delta-E 2000), as published (4 decimals).
SHARMA_2005 = np.array([
    [50.0000, 2.6772, -79.7751, 50.0000, 0.0000, -82.7485, 2.0425],
    [50.0000, 3.1571, -77.2803, 50.0000, 0.0000, -82.7485, 2.8615],
    [50.0000, 2.8361, -74.0200, 50.0000, 0.0000, -82.7485, 3.4412],
    [50.0000, -1.3802, -84.2814, 50.0000, 0.0000, -82.7485, 1.0000],
    [50.0000, -1.1848, -84.8006, 50.0000, 0.0000, -82.7485, 1.0000],
    [50.0000, -0.9009, -85.5211, 50.0000, 0.0000, -82.7485, 1.0000],
    [50.0000, 0.0000, 0.0000, 50.0000, -1.0000, 2.0000, 2.3669],
    [50.0000, -1.0000, 2.0000, 50.0000, 0.0000, 0.0000, 2.3669],
    [50.0000, 2.4900, -0.0010, 50.0000, -2.4900, 0.0009, 7.1792],
    [50.0000, 2.4900, -0.0010, 50.0000, -2.4900, 0.0010, 7.1792],
    [50.0000, 2.4900, -0.0010, 50.0000, -2.4900, 0.0011, 7.2195],
    [50.0000, 2.4900, -0.0010, 50.0000, -2.4900, 0.0012, 7.2195],
    [50.0000, -0.0010, 2.4900, 50.0000, 0.0009, -2.4900, 4.8045],
    [50.0000, -0.0010, 2.4900, 50.0000, 0.0010, -2.4900, 4.8045],
    [50.0000, -0.0010, 2.4900, 50.0000, 0.0011, -2.4900, 4.7461],
    [50.0000, 2.5000, 0.0000, 50.0000, 0.0000, -2.5000, 4.3065],
    [50.0000, 2.5000, 0.0000, 73.0000, 25.0000, -18.0000, 27.1492],
    [50.0000, 2.5000, 0.0000, 61.0000, -5.0000, 29.0000, 22.8977],
    [50.0000, 2.5000, 0.0000, 56.0000, -27.0000, -3.0000, 31.9030],
    [50.0000, 2.5000, 0.0000, 58.0000, 24.0000, 15.0000, 19.4535],
    [50.0000, 2.5000, 0.0000, 50.0000, 3.1736, 0.5854, 1.0000],
    [50.0000, 2.5000, 0.0000, 50.0000, 3.2972, 0.0000, 1.0000],
    [50.0000, 2.5000, 0.0000, 50.0000, 1.8634, 0.5757, 1.0000],
    [50.0000, 2.5000, 0.0000, 50.0000, 3.2592, 0.3350, 1.0000],
    [60.2574, -34.0099, 36.2677, 60.4626, -34.1751, 39.4387, 1.2644],
    [63.0109, -31.0961, -5.8663, 62.8187, -29.7946, -4.0864, 1.2630],
    [61.2901, 3.7196, -5.3901, 61.4292, 2.2480, -4.9620, 1.8731],
    [35.0831, -44.1164, 3.7933, 35.0232, -40.0716, 1.5901, 1.8645],
    [22.7233, 20.0904, -46.6940, 23.0331, 14.9730, -42.5619, 2.0373],
    [36.4612, 47.8580, 18.3852, 36.2715, 50.5065, 21.2231, 1.4146],
    [90.8027, -2.0831, 1.4410, 91.1528, -1.6435, 0.0447, 1.4441],
    [90.9257, -0.5406, -0.9208, 88.6381, -0.8985, -0.7239, 1.5381],
    [6.7747, -0.2908, -2.4247, 5.8714, -0.0985, -2.2286, 0.6377],
    [2.0776, 0.0795, -1.1350, 0.9033, -0.0636, -0.5514, 0.9082],
])


def test_sharma_2005_pairs_to_1e_4_both_ways():
    lab_1, lab_2, expected = SHARMA_2005[:, :3], SHARMA_2005[:, 3:6], SHARMA_2005[:, 6]
    assert len(expected) == 34
    np.testing.assert_allclose(ciede2000(lab_1, lab_2), expected, rtol=0, atol=1e-4)
    np.testing.assert_allclose(ciede2000(lab_2, lab_1), expected, rtol=0, atol=1e-4)


def _random_pairs(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Far pairs, near pairs (the k-means case), greys (C = 0) and opposite hues."""
    rng = np.random.default_rng(seed)

    def lab(size):
        return np.column_stack([rng.uniform(0, 100, size), rng.uniform(-128, 128, (size, 2))])

    far_1, far_2 = lab(n), lab(n)
    near_1 = lab(n)
    near_2 = near_1 + rng.normal(0, 2, near_1.shape)
    greys = lab(n)
    greys[:, 1:] = 0
    opposite = -near_1 * [[-1, 1, 1]] + rng.normal(0, 1e-3, near_1.shape)
    return (np.concatenate([far_1, near_1, greys, near_1, greys]),
            np.concatenate([far_2, near_2, near_2, opposite, greys[::-1]]))


def test_matches_scikit_image_on_random_pairs():
    from skimage.color import deltaE_ciede2000

    lab_1, lab_2 = _random_pairs(20000, seed=1)
    np.testing.assert_allclose(ciede2000(lab_1, lab_2), deltaE_ciede2000(lab_1, lab_2),
                               rtol=1e-9, atol=1e-9)


def test_matches_colour_science_on_random_pairs():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # colour warns that matplotlib is not installed
        from colour import delta_E

    lab_1, lab_2 = _random_pairs(20000, seed=2)
    np.testing.assert_allclose(ciede2000(lab_1, lab_2), delta_E(lab_1, lab_2, method="CIE 2000"),
                               rtol=1e-9, atol=1e-9)


def test_identical_colours_are_zero_and_shapes_broadcast():
    lab = np.array([[[50.0, 10.0, -20.0], [0.0, 0.0, 0.0]], [[100.0, 0.0, 0.0], [30, 60, 60]]])
    assert ciede2000(lab, lab).shape == (2, 2)
    assert np.all(ciede2000(lab, lab) == 0)
    assert ciede2000(lab, [50.0, 0.0, 0.0]).shape == (2, 2)
    assert ciede2000([50.0, 0.0, 0.0], [60.0, 0.0, 0.0]).shape == ()


def test_parametric_weights_scale_their_term():
    # Two greys differ in lightness only: k_l divides the whole difference.
    grey_1, grey_2 = [40.0, 0.0, 0.0], [60.0, 0.0, 0.0]
    assert ciede2000(grey_1, grey_2, k_l=2.0) == pytest.approx(ciede2000(grey_1, grey_2) / 2)


def test_k_auto_with_de2000_reports_the_mean_ciede2000_of_the_painted_images(tmp_path,
                                                                             collection):
    """``kmeans.error_metric: de2000`` (issue 15 §5): the error k: auto reports is the mean
    CIEDE2000, by scikit-image, between every pixel and its segmented colour."""
    import json
    import os

    from PIL import Image
    from skimage.color import deltaE_ciede2000, rgb2lab

    from conftest import write_job
    from pipeline.cli import main

    job = write_job(tmp_path, kmeans={"k": "auto", "max_error": 1.5, "error_metric": "de2000"},
                    output={"masks": False})
    assert main(["run", job, "-q"]) == 0
    auto = json.loads((tmp_path / "out" / "report.json").read_text())["auto_k"]
    assert auto["metric"] == "de2000" and auto["met"]
    differences = []
    for name in sorted(os.listdir(tmp_path / "images")):
        original = np.asarray(Image.open(tmp_path / "images" / name).convert("RGB"))
        painted = np.asarray(Image.open(tmp_path / "out" / "segmented" / name).convert("RGB"))
        differences.append(deltaE_ciede2000(rgb2lab(original), rgb2lab(painted)).ravel())
    assert auto["error"] == pytest.approx(np.concatenate(differences).mean(), rel=1e-3)
    assert auto["error"] <= 1.5 < auto["tried"][0]["error"]
    # the metric only chooses k: a job with that k fixed fits the same palette
    job76 = write_job(tmp_path, kmeans={"k": auto["k"], "seed": 0}, output={"masks": False,
                                                                            "dir": "out76"})
    assert main(["run", job76, "-q"]) == 0
    model = json.loads((tmp_path / "out76" / "model.json").read_text())
    assert model["palette"] == json.loads((tmp_path / "out" / "model.json").read_text())["palette"]
