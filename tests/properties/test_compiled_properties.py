"""The compiled kernels (numba, `pipeline.engine.compiled`) give numpy's labels and distances
bit for bit, for every dtype the engine takes, so which one runs never changes a result."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from pipeline import features as feature_rows
from pipeline.engine import compiled, kmeans

DTYPES = [np.uint8, np.uint16, np.int16, np.uint32, np.int32, np.float32, np.float64]


def _rows(dtype):
    if np.dtype(dtype).kind == "f":
        elements = st.floats(-1e6, 1e6, width=np.dtype(dtype).itemsize * 8)
    else:
        info = np.iinfo(dtype)
        elements = st.integers(int(info.min), int(info.max))
    return st.tuples(st.integers(1, 700), st.integers(1, 6)).flatmap(
        lambda shape: arrays(dtype, shape, elements=elements))


@pytest.mark.parametrize("dtype", DTYPES)
@settings(max_examples=25, deadline=None)
@given(data=st.data(), k=st.integers(1, 40), seed=st.integers(0, 2 ** 16))
def test_nearest_compiled_equals_numpy(dtype, data, k, seed):
    rows = data.draw(_rows(dtype))
    rng = np.random.default_rng(seed)
    centroids = rows[rng.integers(0, len(rows), k)].astype(np.float64)
    centroids += rng.normal(0, 1 + np.abs(centroids).mean() * 1e-3, centroids.shape)
    centroids[rng.random(k) < 0.2] = centroids[0]  # ties: the lowest index must win
    want = kmeans.nearest(rows, centroids, second=True, compiled=False)
    got = kmeans.nearest(rows, centroids, second=True, compiled=True)
    for a, b in zip(want, got):
        assert a.tobytes() == b.tobytes()
    strided = rows[::2, ::-1]  # any memory layout
    want = kmeans.nearest(strided, centroids[:, ::-1], compiled=False)
    got = kmeans.nearest(strided, centroids[:, ::-1], compiled=True)
    assert want[0].tobytes() == got[0].tobytes() and want[1].tobytes() == got[1].tobytes()


@settings(max_examples=40, deadline=None)
@given(rows=_rows(np.uint16), k=st.integers(1, 12), seed=st.integers(0, 2 ** 16),
       method=st.sampled_from(["none", "standard", "robust"]))
def test_label_window_equals_assign_and_bincounts(rows, k, seed, method):
    """The one-pass raster kernel: labels as `assign` on the normalised rows, masked pixels
    the masked label, counts exact, and the statistics those of numpy's per-class sums."""
    rng = np.random.default_rng(seed)
    masked = rng.random(len(rows)) < 0.3
    norm = feature_rows.Normalization.from_sample(method, rows)
    features = norm.apply(rows)
    centroids = features[rng.integers(0, len(rows), k)] + rng.normal(0, 0.5, (k, rows.shape[1]))
    native = norm.invert(centroids)
    labels = np.empty(len(rows), np.uint16)
    counts = np.zeros(k, np.int64)
    sums, squares = np.zeros((k, rows.shape[1])), np.zeros((k, rows.shape[1]))
    compiled.label_window(rows, masked, centroids, np.asarray(norm.center),
                          np.asarray(norm.scale), method != "none", native, 65535, labels,
                          counts, sums, squares)
    want, _ = kmeans.assign(features[~masked], centroids)
    assert (labels[masked] == 65535).all()
    assert (labels[~masked] == want).all()
    assert (counts == np.bincount(want, minlength=k)).all()
    deviations = rows[~masked].astype(np.float64) - native[want]
    for band in range(rows.shape[1]):
        np.testing.assert_allclose(sums[:, band], np.bincount(want, deviations[:, band], k),
                                   rtol=1e-12, atol=1e-6)
        np.testing.assert_allclose(squares[:, band],
                                   np.bincount(want, deviations[:, band] ** 2, k),
                                   rtol=1e-12, atol=1e-6)


@settings(max_examples=30, deadline=None)
@given(rows=_rows(np.float64), n_points=st.integers(1, 9), seed=st.integers(0, 2 ** 16))
def test_distances_to_compiled_equals_numpy(rows, n_points, seed):
    channels = np.ascontiguousarray(rows.T)
    points = rows[np.random.default_rng(seed).integers(0, len(rows), n_points)] + 0.25
    out = np.empty((n_points, len(rows)))
    compiled.distances_to(channels, points, out)
    want = (channels[0][None, :] - points[:, 0:1]) ** 2
    for c in range(1, len(channels)):
        want += (channels[c][None, :] - points[:, c:c + 1]) ** 2
    assert out.tobytes() == want.tobytes()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@settings(max_examples=40, deadline=None)
@given(data=st.data(), k=st.integers(1, 40), seed=st.integers(0, 2 ** 16))
def test_lloyd_step_compiled_equals_assign_and_bincounts(dtype, data, k, seed):
    """A Lloyd step's fused kernel (`compiled.assign_sums`): labels, distances, weighted sums,
    counts and inertia the same bits as numpy's assignment and bincounts, so a fit gives the
    same centroids whichever kernel runs."""
    rows = data.draw(_rows(dtype))
    rng = np.random.default_rng(seed)
    weights = rng.integers(1, 1000, len(rows)).astype(np.float64)
    if rng.random() < 0.5:
        weights = rng.random(len(rows)) * 7.0
    centroids = rows[rng.integers(0, len(rows), k)].astype(np.float64)
    centroids += rng.normal(0, 1 + np.abs(centroids).mean() * 1e-3, centroids.shape)
    columns = kmeans._weighted_columns(rows, weights, weights)
    assert kmeans.prefer_compiled()
    got = kmeans._partial_sums(rows, weights, columns, centroids)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(kmeans, "_compiled", lambda work, force=False: None)
        want = kmeans._partial_sums(rows, weights, columns, centroids)
    for a, b in [(want[0].sums, got[0].sums), (want[0].counts, got[0].counts),
                 (want[1], got[1]), (want[2], got[2])]:
        assert a.dtype == b.dtype and a.tobytes() == b.tobytes()
    assert want[0].inertia == got[0].inertia


def test_warm_up_leaves_every_kernel_ready():
    """The warm-up thread's calls compile or load each kernel's variant the job will use."""
    compiled.warm_up((np.uint16,), (np.uint8,))
    for kernel in (compiled.nearest, compiled.distances_to, compiled.assign_sums,
                   compiled.label_window):
        assert kernel.signatures, kernel
    assert any(str(sig[0]).startswith("array(uint16") for sig in compiled.label_window.signatures)


def test_threads_that_import_the_kernels_at_once_all_get_them(tmp_path):
    """The raster path warms numba up in a thread while dask's threads may already need the
    kernels: none may see the module half imported (it raised AttributeError)."""
    import subprocess
    import sys

    script = tmp_path / "race.py"
    script.write_text(
        "import threading, numpy as np\n"
        "from pipeline.engine import kmeans\n"
        "rows = np.random.default_rng(0).random((1 << 16, 3))\n"
        "centres = rows[:200].copy()\n"
        "errors = []\n"
        "def work():\n"
        "    try:\n"
        "        kmeans.assign(rows, centres)\n"
        "    except Exception as exc:\n"
        "        errors.append(repr(exc))\n"
        "threads = [threading.Thread(target=kmeans.prefer_compiled)]\n"
        "threads += [threading.Thread(target=work) for _ in range(4)]\n"
        "for t in threads: t.start()\n"
        "for t in threads: t.join()\n"
        "print(errors)\n")
    import os

    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    for _ in range(3):
        out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                             env=env, timeout=300)
        assert out.returncode == 0, out.stderr[-2000:]
        assert out.stdout.strip() == "[]"


def _numpy_kernels(monkeypatch):
    monkeypatch.setattr(kmeans, "_compiled", lambda work, force=False: None)


def _compiled_kernels(monkeypatch):
    monkeypatch.setattr(kmeans, "_compiled", lambda work, force=False: compiled)


# Few distinct values: ties between rows, duplicate centroids and empty clusters are common.
colour_rows = st.integers(2, 300).flatmap(
    lambda n: arrays(np.uint8, (n, 3), elements=st.integers(0, 20)))


@settings(max_examples=40, deadline=None)
@given(pixels=colour_rows, k=st.integers(2, 40), seed=st.integers(0, 2 ** 16),
       max_iter=st.integers(1, 12))
def test_compiled_lloyd_takes_numpys_steps(pixels, k, seed, max_iter):
    """Issue 14: the fused bounded Lloyd step (`compiled.lloyd_assign`) gives numpy's
    centroids, shifts and inertias bit for bit, from any start."""
    rng = np.random.default_rng(seed)
    features = pixels.astype(np.float64)
    weights = rng.integers(1, 5, len(features))
    start = features[rng.integers(0, len(features), k)] + rng.normal(0, 0.7, (k, 3))
    start[rng.random(k) < 0.2] = start[0]
    with pytest.MonkeyPatch.context() as patch:
        _numpy_kernels(patch)
        want = kmeans.lloyd(features, weights, start, max_iter, 0.0)
    with pytest.MonkeyPatch.context() as patch:
        _compiled_kernels(patch)
        got = kmeans.lloyd(features, weights, start, max_iter, 0.0)
    assert got[0].tobytes() == want[0].tobytes()
    assert [(s.shift, s.inertia) for s in got[1]] == [(s.shift, s.inertia) for s in want[1]]
    assert got[2] == want[2]


@settings(max_examples=40, deadline=None)
@given(pixels=colour_rows, k=st.integers(2, 60), seed=st.integers(0, 2 ** 16))
def test_compiled_kmeans_plusplus_picks_numpys_centres(pixels, k, seed):
    """The same centres, and the generator left where numpy's loop leaves it (k above the
    distinct rows: the loop stops drawing once every row is a centre)."""
    features = pixels.astype(np.float64)
    weights = np.random.default_rng(seed).integers(1, 5, len(features))
    results = []
    for use in (_numpy_kernels, _compiled_kernels):
        with pytest.MonkeyPatch.context() as patch:
            use(patch)
            rng = np.random.default_rng(seed)
            results.append((kmeans.kmeans_plusplus(features, weights, k, rng).tobytes(),
                            rng.random()))
    assert results[0] == results[1]


@settings(max_examples=60, deadline=None)
@given(values=st.integers(0, 3000).flatmap(
    lambda n: arrays(np.float64, n, elements=st.floats(-1e6, 1e6))), start=st.integers(0, 9))
def test_pairwise_sum_is_numpys_sum(values, start):
    start = min(start, len(values))
    assert compiled.pairwise_sum(values, start, len(values) - start) == values[start:].sum()


@settings(max_examples=30, deadline=None)
@given(pixels=st.integers(1, 400).flatmap(
    lambda n: arrays(np.uint8, (n, 1, 3), elements=st.integers(0, 255))),
    k=st.sampled_from([1, 2, 7, 40, 300]), seed=st.integers(0, 2 ** 16))
def test_compiled_colour_table_labels_as_numpy(pixels, k, seed):
    """`compiled.label_codes` fills a private colour table with numpy's labels, distances
    (so inertia) and counts."""
    from pipeline.sinks import segment

    rng = np.random.default_rng(seed)
    centroids = rng.integers(0, 256, (k, 3)).astype(np.float64)
    centroids[rng.random(k) < 0.2] = centroids[0]  # ties: the lowest index must win
    results = []
    for use in (_numpy_kernels, _compiled_kernels):
        with pytest.MonkeyPatch.context() as patch:
            use(patch)
            labels, counts, inertia = segment.label_image(pixels, centroids, "rgb", cache=False)
            results.append((labels.tobytes(), counts.tobytes(), inertia))
    assert results[0] == results[1]
