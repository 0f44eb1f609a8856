"""`KMeans`: a scikit-learn-style estimator over the pipeline's own k-means engine.

It is a view of `pipeline.engine.kmeans`, not a second implementation: the same weighted
k-means++ / random seeding, Sculley mini-batch steps, Lloyd updates, partial sums and empty-
cluster policy that fit the colour pipeline, applied to feature rows of any width and numeric
dtype, in a numpy array or a dask array.

How a fit runs (the pipeline's design, README "How the fit works"):

1. One pass over the rows checks that they are finite and draws the sample: ``sample_size``
   global row positions chosen from ``random_state`` and the number of rows alone, each chunk
   giving the rows it holds.  The sample therefore does not depend on the chunking, and a dask
   ``X`` is never gathered into one process (only the sample is).
2. ``n_init`` starts on the sample, each with its own random stream: seeding, then mini-batch
   steps; the start with the lowest inertia on the sample goes on to Lloyd steps on the
   sample and then jumps out of poor local minima (`kmeans.jumps`).  With ``lloyd``, full
   passes over the chunks follow: per-chunk partial sums (sums, counts, inertia),
   tree-reduced, until the centres move less than ``tol``.
3. A last pass over the chunks gives ``labels_`` and ``inertia_`` for the fitted centres.

Same ``random_state``, same centroids on any scheduler and for any chunking (``lloyd`` on float
rows: within float summation order; integer rows sum exactly).
"""

from __future__ import annotations

import functools
import inspect
import logging
import numbers
import time
import warnings
from typing import Any

import numpy as np

from pipeline.engine import kmeans

log = logging.getLogger(__name__)

_SPLIT_EVERY = 8  # fan-in of the tree reduction of per-chunk partial sums
# Random streams (seed, stream): the sample positions, the jumps; starts use 0..n_init - 1.
_SAMPLE_STREAM = 1 << 30
_JUMP_STREAM = _SAMPLE_STREAM + 1
_INITS = ("k-means++", "random")
_ALGORITHMS = ("minibatch", "lloyd")


class NotFittedError(ValueError, AttributeError):
    """`predict`, `transform` or `score` called before `fit`."""


@functools.cache
def _not_fitted_class() -> type:
    """This module's NotFittedError, also scikit-learn's when that is installed (its tools
    check for their own class)."""
    try:
        from sklearn.exceptions import NotFittedError as SklearnNotFitted
    except ImportError:
        return NotFittedError
    return type("NotFittedError", (NotFittedError, SklearnNotFitted), {"__module__": __name__})


class KMeans:
    """K-means clustering of feature rows, in numpy or over the chunks of a dask array.

    Parameters
    ----------
    n_clusters : int
        Number of clusters.
    init : {"k-means++", "random"} or array-like of shape (n_clusters, n_features)
        Greedy weighted k-means++ on the sample, ``n_clusters`` distinct sample rows drawn
        with probability proportional to weight, or the given centres (one start).
    n_init : int
        Starts tried on the sample; the one with the lowest inertia on the sample is kept.
    max_iter : int
        Cap on the steps of each phase (mini-batch steps, Lloyd steps).
    tol : float
        Relative tolerance, as in scikit-learn: a phase has converged when the sum over centres
        of the squared shift of one step is at most ``tol`` times the mean per-feature
        (weighted) variance of the sample.
    random_state : int, numpy RandomState or Generator, or None
        Fixes the sample positions and every start's random stream.  None draws a seed from
        numpy's global random state.
    algorithm : {"minibatch", "lloyd"}
        ``minibatch``: mini-batch steps, Lloyd steps and jumps, all on the sample; ``lloyd``:
        the same, then Lloyd steps that each make a full pass over the rows.
    batch_size : int
        Rows per mini-batch step (drawn from the sample with probability proportional to
        weight).
    sample_size : int
        Rows in the sample (all of them when there are fewer).

    Attributes
    ----------
    cluster_centers_ : ndarray of shape (n_clusters, n_features), float64
    labels_ : ndarray of shape (n_samples,), int64; a dask array chunked like X for a dask X
    inertia_ : float
        Weighted sum of squared distances of the rows to their nearest centre.
    n_iter_ : int
        Steps run by the winning start (mini-batch and Lloyd steps).
    n_features_in_ : int
    feature_names_in_ : ndarray of shape (n_features_in_,), object
        Column names of X, when X is a DataFrame with string column names.
    """

    def __init__(self, n_clusters: int = 8, *, init: str | Any = "k-means++", n_init: int = 3,
                 max_iter: int = 100, tol: float = 1e-4, random_state: Any = None,
                 algorithm: str = "minibatch", batch_size: int = 4096,
                 sample_size: int = 1 << 16) -> None:
        self.n_clusters = n_clusters
        self.init = init
        self.n_init = n_init
        self.max_iter = max_iter
        self.tol = tol
        self.random_state = random_state
        self.algorithm = algorithm
        self.batch_size = batch_size
        self.sample_size = sample_size

    # -----------------------------------------------------------------------------------------
    # scikit-learn's estimator protocol, without depending on scikit-learn

    @classmethod
    def _get_param_names(cls) -> list[str]:
        signature = inspect.signature(cls.__init__)
        return sorted(p.name for p in signature.parameters.values()
                      if p.name != "self" and p.kind != p.VAR_KEYWORD)

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        """Parameters of this estimator, by name (``deep`` is accepted for compatibility:
        there are no nested estimators)."""
        return {name: getattr(self, name) for name in self._get_param_names()}

    def set_params(self, **params: Any) -> "KMeans":
        """Set parameters by name; returns self."""
        valid = self._get_param_names()
        for name, value in params.items():
            if name not in valid:
                raise ValueError(f"Invalid parameter {name!r} for estimator {self!r}. "
                                 f"Valid parameters are: {valid!r}.")
            setattr(self, name, value)
        return self

    def __repr__(self) -> str:
        defaults = {p.name: p.default for p in inspect.signature(type(self).__init__)
                    .parameters.values() if p.name != "self"}
        changed = []
        for name in self._get_param_names():
            value, default = getattr(self, name), defaults[name]
            if isinstance(value, np.ndarray) or value is not default and value != default:
                changed.append(f"{name}={value!r}")
        return f"{type(self).__name__}({', '.join(changed)})"

    def __sklearn_tags__(self) -> Any:  # only scikit-learn's tools call this, so it may import it
        from sklearn.utils import InputTags, Tags, TargetTags, TransformerTags

        return Tags(estimator_type="clusterer", target_tags=TargetTags(required=False),
                    transformer_tags=TransformerTags(preserves_dtype=["float64"]),
                    input_tags=InputTags(allow_nan=False, sparse=False))

    def __sklearn_is_fitted__(self) -> bool:
        return hasattr(self, "cluster_centers_")

    # -----------------------------------------------------------------------------------------
    # Fitting and using

    def fit(self, X: Any, y: Any = None, sample_weight: Any = None) -> "KMeans":
        """Fit the centres to the rows of X.

        Parameters
        ----------
        X : array-like or dask array of shape (n_samples, n_features), integer or float
            Rows with NaN or infinite values are refused (ValueError).
        y : ignored
        sample_weight : array-like or dask array of shape (n_samples,), optional
            Non-negative weight of each row; None weighs every row 1.

        Returns
        -------
        self
        """
        self._check_params()
        rows, names = _check_rows(X, "fit")
        weights = _check_weights(sample_weight, rows)
        n_samples, n_features = rows.shape
        if n_samples < self.n_clusters:
            raise ValueError(f"n_samples={n_samples} should be >= n_clusters={self.n_clusters}.")
        init = self._check_init(n_features)
        seed = _seed_of(self.random_state)
        started = time.perf_counter()
        sample, sample_w = _draw_sample(rows, weights, self.sample_size, seed)
        tol_abs = kmeans.tolerance(sample, sample_w, self.tol)
        centroids, steps = self._fit_sample(sample, sample_w, init, tol_abs, seed)
        if self.algorithm == "lloyd" and self.max_iter > 0:
            centroids, lloyd_steps = _lloyd_passes(rows, weights, sample, centroids,
                                                   self.max_iter, tol_abs)
            steps = steps + lloyd_steps
        for i, step in enumerate(steps):
            log.debug("iteration %d (%s): centroid shift %.4g, inertia %.6g", i + 1, step.kind,
                      step.shift, step.inertia)
        labels, final = _labels_and_inertia(rows, weights, centroids)
        _warn_empty(final.counts)
        self.cluster_centers_ = centroids
        self.labels_ = labels
        self.inertia_ = final.inertia
        self.n_iter_ = max(len(steps), 1)
        self.n_features_in_ = n_features
        if names is not None:
            self.feature_names_in_ = names
        elif hasattr(self, "feature_names_in_"):
            del self.feature_names_in_
        log.info("fitted %d clusters to %d rows x %d features in %.2f s (%d steps)",
                 self.n_clusters, n_samples, n_features, time.perf_counter() - started,
                 len(steps))
        return self

    def fit_predict(self, X: Any, y: Any = None, sample_weight: Any = None) -> Any:
        """`fit`, then the cluster index of each row: ``labels_``."""
        return self.fit(X, sample_weight=sample_weight).labels_

    def fit_transform(self, X: Any, y: Any = None, sample_weight: Any = None) -> Any:
        """`fit`, then `transform` of the same rows."""
        return self.fit(X, sample_weight=sample_weight).transform(X)

    def predict(self, X: Any) -> Any:
        """Index of the nearest centre of each row (ties go to the lowest index).

        Returns
        -------
        labels : ndarray of shape (n_samples,), int64; for a dask X, a dask array chunked like
            X's rows (non-finite rows then raise ValueError when it is computed)
        """
        rows = self._check_predict_rows(X, "predict")
        if _is_dask(rows):
            return rows.map_blocks(_block_labels, self.cluster_centers_, drop_axis=1,
                                   dtype=np.int64)
        return kmeans.assign(rows, self.cluster_centers_)[0]

    def transform(self, X: Any) -> Any:
        """Euclidean distance of each row to every centre.

        Returns
        -------
        distances : ndarray of shape (n_samples, n_clusters), float64 (dask for a dask X)
        """
        rows = self._check_predict_rows(X, "transform")
        centroids = self.cluster_centers_
        if _is_dask(rows):
            return rows.map_blocks(_block_distances, centroids, dtype=np.float64,
                                   chunks=(rows.chunks[0], (len(centroids),)))
        return _block_distances(rows, centroids)

    def score(self, X: Any, y: Any = None, sample_weight: Any = None) -> float:
        """Opposite of the (weighted) inertia of X's rows on the fitted centres."""
        rows = self._check_predict_rows(X, "score")
        weights = _check_weights(sample_weight, rows)
        return -_full_partial(rows, weights, self.cluster_centers_).inertia

    # -----------------------------------------------------------------------------------------

    def _check_params(self) -> None:
        """Checks that need no data (scikit-learn's message template)."""
        _check_int("n_clusters", self.n_clusters, 1)
        _check_int("n_init", self.n_init, 1)
        _check_int("max_iter", self.max_iter, 0)
        _check_int("batch_size", self.batch_size, 1)
        _check_int("sample_size", self.sample_size, 1)
        if (not isinstance(self.tol, numbers.Real) or isinstance(self.tol, bool)
                or not self.tol >= 0):
            raise ValueError(f"The 'tol' parameter of KMeans must be a float in the range "
                             f"[0.0, inf). Got {self.tol!r} instead.")
        if self.algorithm not in _ALGORITHMS:
            raise ValueError(f"The 'algorithm' parameter of KMeans must be a str among "
                             f"{set(_ALGORITHMS)}. Got {self.algorithm!r} instead.")
        if isinstance(self.init, str) and self.init not in _INITS:
            raise ValueError(f"The 'init' parameter of KMeans must be a str among "
                             f"{set(_INITS)} or an array-like. Got {self.init!r} instead.")

    def _check_init(self, n_features: int) -> np.ndarray | None:
        if isinstance(self.init, str):
            return None
        init = np.asarray(self.init, dtype=np.float64)
        if init.shape != (self.n_clusters, n_features):
            raise ValueError(f"The shape of the initial centers {init.shape} does not match "
                             f"the number of clusters and features "
                             f"({self.n_clusters}, {n_features}).")
        if not np.isfinite(init).all():
            raise ValueError("init: the initial centers contain NaN or inf.")
        return init

    def _fit_sample(self, sample: np.ndarray, sample_w: np.ndarray, init: np.ndarray | None,
                    tol_abs: float, seed: int) -> tuple[np.ndarray, list[kmeans.Step]]:
        """The best of the starts on the sample (the first of equals), then its Lloyd steps
        and jumps."""
        iterate = self.max_iter > 0
        starts = range(1 if init is not None else self.n_init)
        outcomes = [_start(sample, sample_w, self.init if init is None else init,
                           self.n_clusters, [seed, start], iterate, self.batch_size,
                           self.max_iter, tol_abs) for start in starts]
        _, centroids, steps = min(outcomes, key=lambda outcome: outcome[0])
        if iterate:
            # Only the best start goes on to Lloyd steps: the jumps, not more starts, are what
            # escape poor local minima, and comparing starts after their Lloyd steps too
            # (as the colour pipeline does) costs n_init convergences instead of one.
            centroids, lloyd_steps, _ = kmeans.lloyd(sample, sample_w, centroids,
                                                     self.max_iter, tol_abs)
            steps = steps + lloyd_steps
            rng = np.random.default_rng([seed, _JUMP_STREAM])
            centroids, jump_steps, kept = kmeans.jumps(sample, sample_w, centroids,
                                                       self.max_iter, tol_abs, rng)
            log.debug("%d jump(s) kept", kept)
            steps = steps + jump_steps
        return centroids, steps

    def _check_predict_rows(self, X: Any, method: str) -> Any:
        if not hasattr(self, "cluster_centers_"):
            raise _not_fitted_class()(
                f"This KMeans instance is not fitted yet. Call 'fit' with appropriate "
                f"arguments before using '{method}'.")
        rows, names = _check_rows(X, method)
        if rows.shape[1] != self.n_features_in_:
            raise ValueError(f"X has {rows.shape[1]} features, but KMeans is expecting "
                             f"{self.n_features_in_} features as input.")
        _check_feature_names(getattr(self, "feature_names_in_", None), names)
        return rows


def _start(sample: np.ndarray, sample_w: np.ndarray, init: str | np.ndarray, n_clusters: int,
           stream: list[int], iterate: bool, batch_size: int, max_iter: int,
           tol_abs: float) -> tuple[float, np.ndarray, list[kmeans.Step]]:
    """One start: seed, then mini-batch steps on the sample; returns (inertia on the sample,
    centroids, steps)."""
    rng = np.random.default_rng(stream)
    if isinstance(init, np.ndarray):
        centroids = init.copy()
    elif init == "random":
        centroids = kmeans.random_init(sample, sample_w, n_clusters, rng)
    else:
        centroids = kmeans.kmeans_plusplus(sample, sample_w, n_clusters, rng)
    steps: list[kmeans.Step] = []
    if iterate:
        # Mini-batch steps pay while they are cheaper than Lloyd steps on the sample: two
        # epochs of it at most, then Lloyd steps finish.
        n_steps = min(max_iter, -(-2 * len(sample) // batch_size))
        centroids, steps, _ = kmeans.minibatch(sample, sample_w, centroids, batch_size,
                                               n_steps, tol_abs, rng)
    score = kmeans.weighted_inertia(sample, sample_w, centroids)
    log.debug("start %s: sample inertia %.6g after %d steps", stream[1], score, len(steps))
    return score, centroids, steps


# ---------------------------------------------------------------------------------------------
# Input checks


def _check_int(name: str, value: Any, low: int) -> None:
    if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < low:
        raise ValueError(f"The {name!r} parameter of KMeans must be an int in the range "
                         f"[{low}, inf). Got {value!r} instead.")


def _is_dask(value: Any) -> bool:
    if not hasattr(value, "__dask_graph__"):
        return False
    from dask.base import is_dask_collection

    return is_dask_collection(value)


def _check_rows(X: Any, method: str) -> tuple[Any, np.ndarray | None]:
    """X as a 2-D numpy array or dask array (one chunk across features) of a numeric dtype,
    and its column names; every check reads metadata only, except that a numpy X's values are
    checked for NaN and inf here (a dask X's in the sampling pass, or as it is computed)."""
    names = _feature_names(X)
    if _is_dask(X):
        rows = _check_dask_rows(X)
    else:
        if _is_sparse(X):
            raise TypeError(f"KMeans.{method}: sparse input is not supported; pass a dense "
                            "array (X.toarray()).")
        rows = np.asarray(X.to_numpy() if hasattr(X, "to_numpy") else X)
        if rows.dtype.kind == "O":
            rows = rows.astype(np.float64)
    _check_shape_and_dtype(rows)
    if not _is_dask(rows) and rows.dtype.kind == "f" and not np.isfinite(rows).all():
        raise ValueError(f"KMeans.{method}: X contains NaN or inf; remove or impute those "
                         "rows first.")
    return rows, names


def _check_dask_rows(X: Any) -> Any:
    if hasattr(X, "to_dask_array"):  # a dask DataFrame
        X = X.to_dask_array(lengths=True)
    if X.ndim == 2 and any(np.isnan(c) for c in X.chunks[0]):
        raise ValueError("X has unknown chunk sizes; call X.compute_chunk_sizes() first.")
    if X.ndim == 2 and len(X.chunks[1]) > 1:
        X = X.rechunk({1: -1})
    return X


def _is_sparse(X: Any) -> bool:
    return type(X).__module__.startswith("scipy.sparse")


def _check_shape_and_dtype(rows: Any) -> None:
    if rows.dtype.kind == "c":
        raise ValueError("Complex data not supported: X has dtype "
                         f"{rows.dtype}; pass real integer or float rows.")
    if rows.dtype.kind not in "iufb":
        raise ValueError(f"X has dtype {rows.dtype}; pass integer or float rows.")
    if rows.ndim != 2:
        raise ValueError(f"Expected 2D array, got {rows.ndim}D array instead. Reshape your "
                         "data with X.reshape(-1, 1) if it has one feature, or "
                         "X.reshape(1, -1) if it is one sample.")
    if rows.shape[0] == 0:
        raise ValueError(f"Found array with 0 sample(s) (shape={rows.shape}) while a minimum "
                         "of 1 is required.")
    if rows.shape[1] == 0:
        raise ValueError(f"Found array with 0 feature(s) (shape={rows.shape}) while a "
                         "minimum of 1 is required.")


def _check_weights(sample_weight: Any, rows: Any) -> Any:
    """Weights as float64 (numpy, or dask chunked like the rows), or None for ones."""
    if sample_weight is None:
        return None
    n_samples = rows.shape[0]
    if _is_dask(rows):  # values are checked in the sampling pass
        import dask.array as da

        weights = da.asarray(sample_weight).astype(np.float64)
        if weights.shape != (n_samples,):
            raise ValueError(f"sample_weight.shape == {weights.shape}, expected "
                             f"({n_samples},)!")
        return weights.rechunk((rows.chunks[0],))
    if _is_dask(sample_weight):
        sample_weight = sample_weight.compute()
    weights = np.asarray(sample_weight, dtype=np.float64)
    if weights.ndim == 0:
        weights = np.full(n_samples, float(weights))
    if weights.shape != (n_samples,):
        raise ValueError(f"sample_weight.shape == {weights.shape}, expected ({n_samples},)!")
    _check_weight_values(np.isfinite(weights).all(), (weights >= 0).all(), weights.sum())
    return weights


def _check_weight_values(finite: bool, non_negative: bool, total: float) -> None:
    if not finite:
        raise ValueError("sample_weight contains NaN or inf.")
    if not non_negative:
        raise ValueError("sample_weight has negative values; weights must be >= 0.")
    if not total > 0:
        raise ValueError("sample_weight: every weight is zero; at least one row needs a "
                         "positive weight.")


def _feature_names(X: Any) -> np.ndarray | None:
    columns = getattr(X, "columns", None)
    if columns is None or not hasattr(X, "dtypes"):
        return None
    names = np.asarray(list(columns), dtype=object)
    if len(names) == 0:
        return None
    kinds = {type(name).__qualname__ for name in names}
    if len(kinds) > 1 and "str" in kinds:
        raise TypeError(f"Feature names are only supported if all input features have string "
                        f"names, but your input has {sorted(kinds)} as feature name / column "
                        "name types; convert them all to strings (X.columns.astype(str)).")
    return names if kinds == {"str"} else None


def _check_feature_names(fitted: np.ndarray | None, given: np.ndarray | None) -> None:
    """scikit-learn's rules and messages for column names seen at fit and now."""
    if fitted is None and given is None:
        return
    if fitted is None:
        warnings.warn("X has feature names, but KMeans was fitted without feature names",
                      UserWarning, stacklevel=3)
        return
    if given is None:
        warnings.warn("X does not have valid feature names, but KMeans was fitted with "
                      "feature names", UserWarning, stacklevel=3)
        return
    if len(fitted) == len(given) and (fitted == given).all():
        return
    message = "The feature names should match those that were passed during fit.\n"
    unexpected = sorted(set(given) - set(fitted))
    missing = sorted(set(fitted) - set(given))
    for title, names in (("Feature names unseen at fit time:\n", unexpected),
                         ("Feature names seen at fit time, yet now missing:\n", missing)):
        if names:
            message += title + "".join(f"- {name}\n" for name in names[:5])
            message += "- ...\n" if len(names) > 5 else ""
    if not unexpected and not missing:
        message += "Feature names must be in the same order as they were in fit.\n"
    raise ValueError(message)


def _seed_of(random_state: Any) -> int:
    """An int seed from scikit-learn's kinds of random_state."""
    if random_state is None:
        return int(np.random.randint(np.iinfo(np.int32).max))
    if isinstance(random_state, numbers.Integral) and not isinstance(random_state, bool):
        if random_state < 0:
            raise ValueError(f"random_state must be >= 0, got {random_state}.")
        return int(random_state)
    if isinstance(random_state, np.random.RandomState):
        return int(random_state.randint(np.iinfo(np.int32).max))
    if isinstance(random_state, np.random.Generator):
        return int(random_state.integers(np.iinfo(np.int32).max))
    raise ValueError(f"random_state must be None, an int, a numpy RandomState or Generator; "
                     f"got {random_state!r}.")


# ---------------------------------------------------------------------------------------------
# Passes over the rows


def sample_positions(n_samples: int, sample_size: int, seed: int) -> np.ndarray:
    """Global row positions of the sample: ndarray of shape (min(n_samples, sample_size),),
    int64, increasing; a function of the seed and the number of rows only."""
    if sample_size >= n_samples:
        return np.arange(n_samples, dtype=np.int64)
    rng = np.random.default_rng([seed, _SAMPLE_STREAM])
    return np.sort(rng.choice(n_samples, size=sample_size, replace=False)).astype(np.int64)


def _draw_sample(rows: Any, weights: Any, sample_size: int,
                 seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The sample rows (X's dtype) and their weights (int64 ones, or float64), in position
    order; for a dask X, also checks every chunk's values in the same pass."""
    positions = sample_positions(rows.shape[0], sample_size, seed)
    if not _is_dask(rows):
        sample = rows if len(positions) == len(rows) else rows[positions]
        return sample, (np.ones(len(sample), np.int64) if weights is None
                        else weights[positions].copy())
    import dask

    bounds = np.concatenate([[0], np.cumsum(rows.chunks[0])])
    cuts = np.searchsorted(positions, bounds)
    blocks = rows.to_delayed().ravel()
    weight_blocks = (weights.to_delayed().ravel() if weights is not None
                     else [None] * len(blocks))
    tasks = [dask.delayed(_chunk_sample, pure=True)(block, w, positions[a:b] - start)
             for block, w, a, b, start in zip(blocks, weight_blocks, cuts[:-1], cuts[1:],
                                              bounds[:-1])]
    parts = dask.compute(*tasks)
    if not all(part[2] for part in parts):
        raise ValueError("KMeans.fit: X contains NaN or inf; remove or impute those rows first.")
    if weights is not None:
        _check_weight_values(all(p[3] for p in parts), all(p[4] for p in parts),
                             sum(p[5] for p in parts))
    sample = np.concatenate([part[0] for part in parts])
    if weights is None:
        return sample, np.ones(len(sample), np.int64)
    return sample, np.concatenate([part[1] for part in parts])


def _chunk_sample(block: np.ndarray, weights: np.ndarray | None,
                  local: np.ndarray) -> tuple:
    """One chunk's sample rows and weights, and whether its values are fit for the fit."""
    finite = block.dtype.kind != "f" or bool(np.isfinite(block).all())
    if weights is None:
        return block[local], None, finite, True, True, 0.0
    return (block[local], weights[local], finite, bool(np.isfinite(weights).all()),
            bool((weights >= 0).all()), float(weights.sum()))


def _chunk_partial(block: np.ndarray, weights: np.ndarray | None,
                   centroids: np.ndarray) -> kmeans.Partial:
    return kmeans.partial_sums(block, weights, centroids)[0]


def _merge(*partials: kmeans.Partial) -> kmeans.Partial:
    return functools.reduce(lambda a, b: a + b, partials)


def _tree_sum(parts: list) -> Any:
    """Per-chunk partial sums -> combine in groups of `_SPLIT_EVERY` -> one (delayed)."""
    import dask

    while len(parts) > 1:
        parts = [dask.delayed(_merge, pure=True)(*parts[i:i + _SPLIT_EVERY])
                 for i in range(0, len(parts), _SPLIT_EVERY)]
    return parts[0]


def _full_partial(rows: Any, weights: Any, centroids: np.ndarray) -> kmeans.Partial:
    """Partial sums of every row on ``centroids``: one pass (a tree reduction over chunks)."""
    if not _is_dask(rows):
        return _chunk_partial(rows, weights, centroids)
    import dask

    blocks = rows.to_delayed().ravel()
    weight_blocks = weights.to_delayed().ravel() if weights is not None else [None] * len(blocks)
    parts = [dask.delayed(_chunk_partial, pure=True)(block, w, centroids)
             for block, w in zip(blocks, weight_blocks)]
    return _tree_sum(parts).compute()


def _lloyd_passes(rows: Any, weights: Any, sample: np.ndarray, centroids: np.ndarray,
                  max_iter: int, tol_abs: float) -> tuple[np.ndarray, list[kmeans.Step]]:
    """Lloyd steps that each make a full pass over the rows; an empty cluster moves onto the
    sample row farthest from its centre (the pipeline's policy for full passes)."""
    steps: list[kmeans.Step] = []
    for _ in range(max_iter):
        partial = _full_partial(rows, weights, centroids)
        new, empty = kmeans.update(partial, centroids)
        if empty.any():
            _, distances = kmeans.assign(sample, new)
            left = kmeans.reseed_empty(new, empty, sample, distances)
            log.warning("%d empty cluster(s) re-seeded at the sample's farthest rows; %d left "
                        "in place", int(empty.sum()) - left, left)
        moved = kmeans.shift(centroids, new)
        steps.append(kmeans.Step("lloyd", moved, partial.inertia))
        centroids = new
        if moved <= tol_abs:
            break
    return centroids, steps


def _labels_and_inertia(rows: Any, weights: Any,
                        centroids: np.ndarray) -> tuple[Any, kmeans.Partial]:
    """Labels of every row (numpy, or a persisted dask array chunked like the rows), and the
    weighted counts and inertia (a Partial without sums), in one pass."""
    if not _is_dask(rows):
        return _chunk_labels_inertia(rows, weights, centroids)
    import dask
    import dask.array as da

    blocks = rows.to_delayed().ravel()
    weight_blocks = weights.to_delayed().ravel() if weights is not None else [None] * len(blocks)
    outs = [dask.delayed(_chunk_labels_inertia, pure=True, nout=2)(block, w, centroids)
            for block, w in zip(blocks, weight_blocks)]
    labels = da.concatenate([da.from_delayed(out[0], shape=(n,), dtype=np.int64)
                             for out, n in zip(outs, rows.chunks[0])])
    labels, total = dask.persist(labels, _tree_sum([out[1] for out in outs]))
    return labels, total.compute()


def _chunk_labels_inertia(block: np.ndarray, weights: np.ndarray | None,
                          centroids: np.ndarray) -> tuple[np.ndarray, kmeans.Partial]:
    labels, distances = kmeans.assign(block, centroids)
    w = np.ones(len(block)) if weights is None else weights
    counts = np.bincount(labels, weights=w, minlength=len(centroids))
    inertia = float(distances.sum() if weights is None else (distances * weights).sum())
    return labels, kmeans.Partial(np.zeros((len(centroids), 0)), counts, inertia)


def _warn_empty(counts: np.ndarray) -> None:
    """The empty-cluster policy's last word: a cluster that won no row keeps its place (in
    the fit, empty clusters moved onto the farthest rows; what is left has none to take)."""
    empty = int((counts <= 0).sum())
    if empty:
        log.warning("%d of %d clusters won no row; their centres stay where the fit left "
                    "them (X has fewer distinct rows of positive weight than n_clusters, or "
                    "sample_size is too small to see them)", empty, len(counts))


def _block_labels(block: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    if block.dtype.kind == "f" and not np.isfinite(block).all():
        raise ValueError("KMeans.predict: X contains NaN or inf; remove or impute those rows "
                         "first.")
    return kmeans.assign(block, centroids)[0]


def _block_distances(block: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    if block.dtype.kind == "f" and not np.isfinite(block).all():
        raise ValueError("KMeans.transform: X contains NaN or inf; remove or impute those "
                         "rows first.")
    return np.sqrt(kmeans.squared_distances(block, centroids))
