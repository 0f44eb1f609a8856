"""pipeline.estimator.KMeans: scikit-learn's estimator contract, quality against scikit-learn,
and the same centroids for numpy and dask rows, any chunking and any scheduler (issue 10)."""

from __future__ import annotations

import warnings

import dask
import dask.array as da
import numpy as np
import pytest

from pipeline.estimator import KMeans, NotFittedError, sample_positions

from sklearn.base import clone  # the test extra: a missing scikit-learn fails, never skips
from sklearn.cluster import KMeans as SklearnKMeans
from sklearn.datasets import make_blobs
from sklearn.utils.estimator_checks import check_estimator

# What scikit-learn grants its own KMeans (sklearn/utils/_test_common/instance_generator.py):
# weights are not repetitions, because the seeding draws rows, not weighted copies of them.
EXPECTED_FAILED = {
    "check_sample_weight_equivalence_on_dense_data":
        "a weight of 2 draws a row once, where a repeated row can be drawn twice (as sklearn)",
    "check_sample_weight_equivalence_on_sparse_data": "as scikit-learn's KMeans",
}


def test_check_estimator_passes_with_default_parameters():
    with warnings.catch_warnings():
        # The one warning is that KMeans does not subclass BaseEstimator: it implements the
        # protocol itself, so scikit-learn stays a test extra, not a dependency.
        warnings.filterwarnings("ignore", message=".*does not inherit from .*BaseEstimator")
        results = check_estimator(KMeans(), expected_failed_checks=EXPECTED_FAILED,
                                  on_fail=None)
    failed = {r["check_name"]: r["exception"] for r in results if r["status"] == "failed"}
    assert failed == {}
    skipped = {r["check_name"]: str(r["exception"]) for r in results if r["status"] == "skipped"}
    assert skipped == {}  # a skipped check is one that cannot fail (SCIPY_ARRAY_API: conftest)
    assert {r["check_name"] for r in results if r["status"] == "passed"} >= {
        "check_fit_idempotent", "check_estimators_nan_inf", "check_transformer_general",
        "check_n_features_in_after_fitting", "check_sample_weights_not_overwritten"}


def test_sklearn_clustering_checks_pass():
    # check_estimator picks its clustering checks by isinstance(estimator, ClusterMixin),
    # which a class that does not inherit from scikit-learn cannot satisfy: run them here.
    from sklearn.utils import estimator_checks as checks

    for check in checks._yield_clustering_checks(KMeans()):
        check("KMeans", KMeans())


def test_params_round_trip_through_clone_and_repr():
    km = KMeans(n_clusters=3, random_state=0, algorithm="lloyd")
    assert km.get_params()["n_clusters"] == 3
    assert repr(km) == "KMeans(algorithm='lloyd', n_clusters=3, random_state=0)"
    twin = clone(km)
    assert twin.get_params() == km.get_params() and twin is not km
    assert km.set_params(tol=0.5).tol == 0.5
    with pytest.raises(ValueError, match="Invalid parameter 'k' for estimator"):
        km.set_params(k=3)


def test_hand_worked_rows():
    rows = np.array([[0], [2], [10], [12]])
    km = KMeans(2, init=np.array([[0.0], [12.0]]), random_state=0).fit(rows)
    assert km.cluster_centers_.tolist() == [[1.0], [11.0]]
    assert km.labels_.tolist() == [0, 0, 1, 1]
    assert km.inertia_ == 4.0 and km.score(rows) == -4.0
    assert km.predict(np.array([[5], [7]])).tolist() == [0, 1]
    assert km.transform(np.array([[4]])).tolist() == [[3.0, 7.0]]
    assert km.n_features_in_ == 1 and km.n_iter_ >= 1
    assert km.fit_predict(rows).tolist() == [0, 0, 1, 1]


def test_weights_count_like_rows_and_zero_weights_like_no_rows():
    rows = np.array([[0.0], [1.0], [10.0], [11.0], [50.0]])
    km = KMeans(2, random_state=0).fit(rows, sample_weight=[1, 3, 1, 1, 0])
    assert sorted(km.cluster_centers_.ravel().tolist()) == [0.75, 10.5]


@pytest.mark.parametrize("n_features", [3, 8, 16])
@pytest.mark.parametrize("n_clusters", [8, 32])
def test_inertia_within_half_a_percent_of_sklearn(n_features, n_clusters):
    rows, _ = make_blobs(20_000, n_features=n_features, centers=n_clusters, random_state=0)
    ours = KMeans(n_clusters, random_state=0).fit(rows).inertia_
    theirs = SklearnKMeans(n_clusters, n_init=3, random_state=0).fit(rows).inertia_
    assert ours <= 1.005 * theirs


def _blobs(n=12_000, n_features=4, seed=3):
    return make_blobs(n, n_features=n_features, centers=5, random_state=seed)[0]


def uneven(rows):
    """Deliberately uneven chunks: a one-row chunk, unequal ones, and two column chunks."""
    n, n_features = rows.shape
    row_chunks = (1, n // 3 - 1, n // 4, n - n // 3 - n // 4)
    return da.from_array(rows, chunks=(row_chunks, (n_features - 1, 1) if n_features > 1
                                       else (1,)))


@pytest.mark.parametrize("algorithm", ["minibatch", "lloyd"])
def test_any_chunking_gives_the_numpy_centroids(algorithm):
    rows = _blobs()
    params = dict(n_clusters=5, random_state=7, algorithm=algorithm, sample_size=3000)
    ref = KMeans(**params).fit(rows)
    for chunked in [da.from_array(rows, chunks=1000), uneven(rows), da.from_array(rows)]:
        km = KMeans(**params).fit(chunked)
        if algorithm == "minibatch":  # everything on the sample: the same bits
            np.testing.assert_array_equal(km.cluster_centers_, ref.cluster_centers_)
        else:  # float sums of full passes depend on the reduction order
            np.testing.assert_allclose(km.cluster_centers_, ref.cluster_centers_, rtol=1e-10)
        np.testing.assert_array_equal(km.labels_.compute(), ref.labels_)
        assert km.inertia_ == pytest.approx(ref.inertia_, rel=1e-10)


def test_sample_positions_depend_on_the_seed_and_row_count_only():
    a = sample_positions(10**7, 1000, seed=4)
    assert len(a) == 1000 and np.all(np.diff(a) > 0) and a[-1] < 10**7
    np.testing.assert_array_equal(a, sample_positions(10**7, 1000, seed=4))
    assert not np.array_equal(a, sample_positions(10**7, 1000, seed=5))
    np.testing.assert_array_equal(sample_positions(50, 1000, seed=4), np.arange(50))


@pytest.mark.parametrize("algorithm", ["minibatch", "lloyd"])
def test_threads_and_a_local_cluster_give_identical_centroids(algorithm, local_cluster):
    from distributed import Client

    rows = uneven(_blobs())
    params = dict(n_clusters=5, random_state=2, algorithm=algorithm, sample_size=3000)
    with dask.config.set(scheduler="threads"):
        threads = KMeans(**params).fit(rows)
    with Client(local_cluster) as client:
        remote = KMeans(**params).fit(rows)
        labels = client.compute(remote.labels_).result()
    np.testing.assert_array_equal(remote.cluster_centers_, threads.cluster_centers_)
    np.testing.assert_array_equal(labels, threads.labels_.compute(scheduler="threads"))
    assert remote.inertia_ == threads.inertia_


def test_predict_and_transform_are_chunked_like_x():
    rows = uneven(_blobs())
    km = KMeans(5, random_state=0).fit(rows)
    labels = km.predict(rows)
    assert labels.chunks == (rows.chunks[0],) and labels.dtype == np.int64
    assert km.labels_.chunks == (rows.chunks[0],)
    distances = km.transform(rows)
    assert distances.chunks == (rows.chunks[0], (5,))
    np.testing.assert_array_equal(labels.compute(), km.predict(rows.compute()))
    np.testing.assert_array_equal(distances.compute(), km.transform(rows.compute()))
    assert km.score(rows) == pytest.approx(-km.inertia_, rel=1e-12)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_rows_with_nan_or_inf_are_refused(bad):
    rows = _blobs()
    rows[4321, 1] = bad
    with pytest.raises(ValueError, match="X contains NaN or inf"):
        KMeans(5).fit(rows)
    with pytest.raises(ValueError, match="X contains NaN or inf"):
        KMeans(5).fit(uneven(rows))
    km = KMeans(5, random_state=0).fit(_blobs())
    with pytest.raises(ValueError, match="X contains NaN or inf"):
        km.predict(rows)
    with pytest.raises(ValueError, match="X contains NaN or inf"):
        km.predict(uneven(rows)).compute()


@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.uint16, np.int32, np.int64, np.float32])
def test_integer_and_float_dtypes(dtype):
    info = np.iinfo(dtype) if np.dtype(dtype).kind in "iu" else None
    rows = _blobs(n_features=3) * 4 + 100
    if info is not None:
        rows = np.clip(rows, info.min, info.max)
    rows = rows.astype(dtype)
    km = KMeans(5, random_state=0, algorithm="lloyd", sample_size=2000).fit(rows)
    assert km.cluster_centers_.dtype == np.float64 and np.isfinite(km.cluster_centers_).all()
    chunked = KMeans(5, random_state=0, algorithm="lloyd", sample_size=2000).fit(
        uneven(rows))
    if info is not None:  # integer sums are exact: the same bits for any chunking
        np.testing.assert_array_equal(chunked.cluster_centers_, km.cluster_centers_)
    else:
        np.testing.assert_allclose(chunked.cluster_centers_, km.cluster_centers_, rtol=1e-6)


def test_wide_integers_sum_exactly():
    # Values near 2**40: float64 sums of such rows would round; int64 sums do not.
    rng = np.random.default_rng(0)
    rows = (rng.integers(0, 4, (6000, 2)) * 2**40 + rng.integers(0, 1000, (6000, 2)))
    params = dict(n_clusters=4, random_state=0, algorithm="lloyd", sample_size=500)
    ref = KMeans(**params).fit(rows)
    for chunked in [da.from_array(rows, chunks=(97, 2)), da.from_array(rows, chunks=(1000, 1)),
                    uneven(rows)]:
        km = KMeans(**params).fit(chunked)
        np.testing.assert_array_equal(km.cluster_centers_, ref.cluster_centers_)


def test_many_features():
    rows = make_blobs(3000, n_features=70, centers=4, random_state=1)[0]
    km = KMeans(4, random_state=0).fit(da.from_array(rows, chunks=(700, 30)))
    assert km.cluster_centers_.shape == (4, 70)
    assert len(np.unique(km.labels_.compute())) == 4


def test_dask_weights_match_numpy_weights():
    rows = _blobs()
    weights = np.arange(len(rows)) % 4
    ref = KMeans(5, random_state=0, algorithm="lloyd").fit(rows, sample_weight=weights)
    km = KMeans(5, random_state=0, algorithm="lloyd").fit(
        uneven(rows), sample_weight=da.from_array(weights, chunks=5000))
    np.testing.assert_allclose(km.cluster_centers_, ref.cluster_centers_, rtol=1e-10)
    with pytest.raises(ValueError, match="negative"):
        KMeans(5).fit(uneven(rows), sample_weight=-np.ones(len(rows)))


def test_errors_name_the_problem():
    rows = _blobs()
    with pytest.raises(NotFittedError, match="not fitted yet"):
        KMeans().predict(rows)
    with pytest.raises(ValueError, match="'n_clusters' parameter of KMeans must be an int"):
        KMeans(0).fit(rows)
    with pytest.raises(ValueError, match="'algorithm' parameter"):
        KMeans(algorithm="elkan").fit(rows)
    with pytest.raises(ValueError, match="n_samples=3 should be >= n_clusters=8"):
        KMeans().fit(rows[:3])
    with pytest.raises(ValueError, match="X has 2 features, but KMeans is expecting 4"):
        KMeans(5, random_state=0).fit(rows).predict(rows[:, :2])
    with pytest.raises(ValueError, match="unknown chunk sizes"):
        x = da.from_array(rows, chunks=1000)
        KMeans(5).fit(x[x[:, 0] > 0])
    with pytest.raises(TypeError, match="sparse input is not supported"):
        from scipy import sparse

        KMeans(5).fit(sparse.csr_matrix(rows))


def test_init_random_and_array_init():
    rows = _blobs()
    rand = KMeans(5, init="random", random_state=0).fit(rows)
    plus = KMeans(5, random_state=0).fit(rows)
    assert rand.inertia_ <= 1.005 * plus.inertia_
    fixed = KMeans(5, init=plus.cluster_centers_, max_iter=0).fit(rows)
    np.testing.assert_array_equal(fixed.cluster_centers_, plus.cluster_centers_)


@pytest.mark.parametrize("lazy", [False, True])
def test_fewer_distinct_rows_than_clusters_keep_finite_centres_and_warn(lazy, caplog):
    rows = np.array([[0, 0], [0, 0], [5, 5], [5, 5], [5, 5], [9, 1]], np.int16)
    x = da.from_array(rows, chunks=2) if lazy else rows
    with caplog.at_level("WARNING", logger="pipeline.estimator"):
        km = KMeans(5, random_state=0).fit(x)
    labels = np.asarray(km.labels_)
    assert np.isfinite(km.cluster_centers_).all() and km.inertia_ == 0.0
    assert sorted(map(tuple, km.cluster_centers_[np.unique(labels)].tolist())) == \
        [(0.0, 0.0), (5.0, 5.0), (9.0, 1.0)]
    assert "2 of 5 clusters won no row" in caplog.text


def _nbytes(value) -> int:
    if isinstance(value, np.ndarray):
        return value.nbytes
    if isinstance(value, (list, tuple)):
        return sum(_nbytes(v) for v in value)
    if isinstance(value, dict):
        return sum(_nbytes(v) for v in value.values())
    return sum(_nbytes(v) for v in vars(value).values()) if hasattr(value, "__dict__") else 0


@pytest.mark.parametrize("algorithm", ["minibatch", "lloyd"])
def test_a_dask_fit_brings_only_the_sample_and_labels_into_this_process(algorithm):
    import dask.threaded

    rows = da.random.default_rng(0).normal(size=(200_000, 8), chunks=(30_000, 8))
    returned = []

    def recording_get(dsk, keys, **kwargs):
        result = dask.threaded.get(dsk, keys, **kwargs)
        returned.append(_nbytes(result))
        return result

    with dask.config.set(scheduler=recording_get):
        km = KMeans(5, random_state=0, algorithm=algorithm, sample_size=1000).fit(rows)
    # the sample is 64 kB; the persisted labels (int64) an eighth of X's 12.8 MB
    assert returned and sum(returned) < rows.nbytes / 4
    assert km.labels_.shape == (200_000,)


def test_dataframe_column_names_are_kept_and_checked():
    import pandas as pd  # the test extra has it: column names are part of the estimator API

    frame = pd.DataFrame(_blobs(n=600, n_features=3), columns=["r", "g", "b"])
    km = KMeans(3, random_state=0).fit(frame)
    assert km.feature_names_in_.tolist() == ["r", "g", "b"]
    np.testing.assert_array_equal(km.predict(frame), km.labels_)
    with pytest.raises(ValueError, match="Feature names must be in the same order"):
        km.predict(frame[["b", "g", "r"]])
    with pytest.warns(UserWarning, match="X does not have valid feature names"):
        km.predict(frame.to_numpy())
    assert not hasattr(KMeans(3, random_state=0).fit(frame.to_numpy()), "feature_names_in_")
