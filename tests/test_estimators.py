"""The estimators: scikit-learn conformance, the input formats and their
errors, the network's gradients, truncated BPTT and the optimizers against
PyTorch, the training loop (early stopping, interruption, partial and warm
fits, weights), round trips, the preprocessing and the command line."""

import math
import pickle
import re
import sys
import threading
import warnings

import joblib
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.base import ClassifierMixin, RegressorMixin, clone
from sklearn.exceptions import ConvergenceWarning, NotFittedError
from sklearn.model_selection import GridSearchCV, KFold, cross_val_score
from sklearn.neural_network import MLPRegressor
from sklearn.pipeline import make_pipeline
from sklearn.utils.class_weight import compute_sample_weight
from sklearn.utils.estimator_checks import parametrize_with_checks

from fastrnn import (RNNClassifier, RNNRegressor, RNNSequenceClassifier,
                     RNNSequenceRegressor)
from fastrnn import __main__ as cli
from fastrnn import nn
from fastrnn._network import RecurrentNetwork
from fastrnn._training import AdamOptimizer, SGDOptimizer, clip_grad_norm
from fastrnn.preprocessing import SequenceScaler

from conftest import torch_or_skip

PER_STEP = (RNNSequenceClassifier, RNNSequenceRegressor)

# Most fits here are deliberately short; tests that expect the warning ask for it.
pytestmark = pytest.mark.filterwarnings(
    "ignore::sklearn.exceptions.ConvergenceWarning")


def _weights(est):
    """Every trained parameter of an estimator, in a fixed order."""
    return [p.copy() for p in est._network.parameters()]


def _assert_same_weights(a, b):
    wa, wb = _weights(a), _weights(b)
    assert len(wa) == len(wb)
    for x, y in zip(wa, wb):
        np.testing.assert_array_equal(x, y)


def _ragged(rng, n, D, low=2, high=9):
    return [rng.standard_normal((L, D)) for L in rng.randint(low, high, n)]


# ============================================================ scikit-learn checks

# Small instances that still learn the checks' toy problems (accuracy > 0.83,
# R^2 > 0.5 are asserted there) within a fraction of a second.
CHECK_PARAMS = dict(hidden_layer_sizes=(8,), max_iter=100, learning_rate_init=0.03)


def _repeat_over_steps(X, y):
    """The checks' one target per sequence, repeated at every time step."""
    X = np.asarray(X)
    if y is None or X.ndim < 2:  # let the estimator reject such input itself
        return y
    T = X.shape[1]
    y = np.asarray(y)
    return np.repeat(y[:, None], T, axis=1) if y.ndim == 1 else \
        np.repeat(y[:, None, :], T, axis=1)


def _last_step(pred):
    return np.asarray([p[-1] for p in pred]) if isinstance(pred, list) else pred[:, -1]


class _PerStepAdapter:
    """Test-only: lets scikit-learn's checks, which give one target per sequence,
    drive a per-step estimator through every code path. y is repeated at every
    time step for fit and score, and predictions are read at the last step;
    everything else (validation, weights, pickling...) is the estimator's own."""

    def fit(self, X, y=None, sample_weight=None):
        return super().fit(X, _repeat_over_steps(X, y), sample_weight)

    def partial_fit(self, X, y=None, *args, **kwargs):
        return super().partial_fit(X, _repeat_over_steps(X, y), *args, **kwargs)

    def predict(self, X):
        return _last_step(super().predict(X))


class SequenceClassifierAdapter(_PerStepAdapter, RNNSequenceClassifier):
    def score(self, X, y, sample_weight=None):  # of the last-step predictions
        return ClassifierMixin.score(self, X, y, sample_weight)

    def predict_proba(self, X):
        return _last_step(super().predict_proba(X))

    def predict_log_proba(self, X):
        return _last_step(super().predict_log_proba(X))


class SequenceRegressorAdapter(_PerStepAdapter, RNNSequenceRegressor):
    def score(self, X, y, sample_weight=None):
        return RegressorMixin.score(self, X, y, sample_weight)


# Per-step estimators need one target per time step; these checks fit them
# with one target per sequence (the adapters above run them all).
_CHECKS_FITTING_WITH_PER_SEQUENCE_Y = [
    "check_fit_score_takes_y", "check_estimators_overwrite_params",
    "check_dont_overwrite_parameters", "check_estimators_fit_returns_self",
    "check_readonly_memmap_input", "check_n_features_in_after_fitting",
    "check_positive_only_tag_during_fit", "check_estimators_dtypes",
    "check_sample_weights_not_an_array", "check_sample_weights_list",
    "check_all_zero_sample_weights_error", "check_sample_weights_shape",
    "check_sample_weights_not_overwritten", "check_sample_weights_pandas_series",
    "check_sample_weight_equivalence_on_dense_data", "check_dtype_object",
    "check_pipeline_consistency", "check_estimators_nan_inf",
    "check_estimators_pickle", "check_f_contiguous_array_estimator",
    "check_classifier_data_not_an_array", "check_classifiers_one_label",
    "check_classifiers_one_label_sample_weights", "check_classifiers_classes",
    "check_estimators_partial_fit_n_features", "check_classifiers_train",
    "check_classifiers_regression_target", "check_supervised_y_2d",
    "check_class_weight_classifiers", "check_non_transformer_estimators_n_iter",
    "check_methods_sample_order_invariance", "check_methods_subset_invariance",
    "check_fit2d_1sample", "check_fit2d_1feature", "check_dict_unchanged",
    "check_fit_idempotent", "check_fit_check_is_fitted", "check_n_features_in",
    "check_fit2d_predict1d", "check_regressors_train",
    "check_regressor_data_not_an_array", "check_regressor_multioutput",
    "check_regressors_no_decision_function", "check_regressors_int",
]
_PER_STEP_REASON = ("per-step estimators take one target per time step, y of shape "
                    "(n_samples, n_timesteps); this check fits one per sequence "
                    "(SequenceClassifierAdapter/SequenceRegressorAdapter run it)")
_FLOAT32_REASON = ("equivalence holds to float32 rounding (~1e-7 relative per "
                   "operation), the check compares at rtol=1e-7; the float64 "
                   "instances pass it")


_SUBSET_FLOAT32_REASON = ("a sample alone (a one-row product, GEMV) and in a batch "
                          "(panels of 8 rows) sums its products in different orders, "
                          "so float32 outputs may differ by an ulp or two (2.4e-7 "
                          "seen); the check allows 1e-7; the float64 instances pass it")
_Y_COLUMN_REASON = ("for a per-step classifier a 2-D y holds one label per time "
                    "step, so a column vector y is not a 1-D y in disguise")


def _expected_failed_checks(estimator):
    if isinstance(estimator, SequenceClassifierAdapter):
        return {"check_supervised_y_2d": _Y_COLUMN_REASON}
    if isinstance(estimator, PER_STEP) and not isinstance(estimator, _PerStepAdapter):
        return {name: _PER_STEP_REASON for name in _CHECKS_FITTING_WITH_PER_SEQUENCE_Y}
    if np.dtype(getattr(estimator, "dtype", np.float64)) == np.float32:
        return {"check_sample_weight_equivalence_on_dense_data": _FLOAT32_REASON,
                "check_methods_subset_invariance": _SUBSET_FLOAT32_REASON}
    return {}


@parametrize_with_checks(
    [RNNClassifier(**CHECK_PARAMS), RNNRegressor(**CHECK_PARAMS),
     RNNClassifier(**CHECK_PARAMS, dtype=np.float64),
     RNNRegressor(**CHECK_PARAMS, dtype=np.float64),
     SequenceClassifierAdapter(**CHECK_PARAMS, dtype=np.float64),
     SequenceRegressorAdapter(**CHECK_PARAMS, dtype=np.float64),
     RNNSequenceClassifier(**CHECK_PARAMS), RNNSequenceRegressor(**CHECK_PARAMS),
     SequenceScaler()],
    expected_failed_checks=_expected_failed_checks)
def test_sklearn_compatible(estimator, check):
    check(estimator)


# ================================================================== input formats


def test_formats_give_identical_predictions():
    rng = np.random.RandomState(0)
    X3 = rng.standard_normal((30, 6, 2))
    y = rng.randint(0, 3, 30)
    clf = RNNClassifier((8,), max_iter=3, random_state=0).fit(X3, y)
    expected = clf.predict_proba(X3)
    as_list = [x for x in X3]
    as_objects = np.empty(len(X3), dtype=object)
    as_objects[:] = as_list
    for X in (as_list, tuple(as_list), as_objects):
        np.testing.assert_array_equal(clf.predict_proba(X), expected)


def test_2d_input_means_univariate_sequences():
    rng = np.random.RandomState(1)
    X2 = rng.standard_normal((25, 7))
    y = rng.standard_normal(25)
    a = RNNRegressor((6,), max_iter=3, random_state=0).fit(X2, y)
    b = RNNRegressor((6,), max_iter=3, random_state=0).fit(X2[:, :, None], y)
    _assert_same_weights(a, b)
    assert (a.n_features_in_, a.n_features_per_step_) == (7, 1)
    assert (b.n_features_in_, b.n_features_per_step_) == (1, 1)
    np.testing.assert_array_equal(a.predict(X2), b.predict(X2[:, :, None]))
    # Sequences of another length: fine as 3-D or list, but a 2-D X must keep
    # the fitted number of columns (scikit-learn's contract for tables).
    assert a.predict(rng.standard_normal((3, 4, 1))).shape == (3,)
    assert a.predict([rng.standard_normal(5), rng.standard_normal(9)]).shape == (2,)
    with pytest.raises(ValueError, match="X has 4 features, but RNNRegressor is "
                                         "expecting 7 features"):
        a.predict(rng.standard_normal((3, 4)))


@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("pooling", ["last", "mean", "max"])
def test_padding_never_reaches_the_network(pooling, bidirectional):
    # Oracle: each sequence on its own, where there is no padding at all.
    rng = np.random.RandomState(2)
    X = _ragged(rng, 20, 3, 1, 12)
    y = rng.randint(0, 2, 20)
    clf = RNNClassifier((5, 4), pooling=pooling, bidirectional=bidirectional,
                        max_iter=2, random_state=0, dtype=np.float64).fit(X, y)
    batch = clf.predict_proba(X)
    alone = np.vstack([clf.predict_proba([x]) for x in X])
    np.testing.assert_allclose(batch, alone, rtol=1e-12, atol=1e-12)


def test_per_step_predictions_follow_the_input_format():
    rng = np.random.RandomState(3)
    X = _ragged(rng, 15, 2, 1, 10)
    y = [rng.randint(0, 3, len(x)) for x in X]
    tagger = RNNSequenceClassifier((6,), bidirectional=True, max_iter=2,
                                   random_state=0, dtype=np.float64).fit(X, y)
    pred = tagger.predict(X)
    proba = tagger.predict_proba(X)
    assert isinstance(pred, list)
    for x, p, q in zip(X, pred, proba):
        assert p.shape == (len(x),) and q.shape == (len(x), 3)
        np.testing.assert_allclose(q, tagger.predict_proba([x])[0], rtol=1e-12,
                                   atol=1e-12)  # padding-free oracle
        np.testing.assert_array_equal(p, tagger.classes_[q.argmax(1)])
    X3 = rng.standard_normal((4, 6, 2))
    assert tagger.predict(X3).shape == (4, 6)
    assert tagger.predict_proba(X3).shape == (4, 6, 3)


def _last_step_oracle(layer, x):
    out, h_n = layer(x[:, None, :])
    h = h_n[0] if isinstance(h_n, tuple) else h_n
    return out[:, 0], h[:, 0]


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
@pytest.mark.parametrize("pooling", ["last", "mean", "max"])
@pytest.mark.parametrize("merge", [None, "concat", "sum"])
def test_pooling_matches_the_layer_outputs(cell, pooling, merge):
    # Oracle: the public layer API and NumPy, sequence by sequence.
    rng = np.random.RandomState(4)
    X = _ragged(rng, 12, 3, 1, 8)
    y = rng.standard_normal(12)
    reg = RNNRegressor((5,), cell, pooling=pooling, bidirectional=merge is not None,
                       bidirectional_merge=merge or "concat", max_iter=2,
                       random_state=0, dtype=np.float64).fit(X, y)
    layer = reg.layers_[0]
    for x, pred in zip(X, reg.predict(X)):
        out, h = _last_step_oracle(layer, x)  # out (T, nd*H), h (nd, H)
        if pooling == "last":
            feats = h.reshape(-1)  # each direction's final state, as PyTorch's h_n
        else:
            feats = out
        if merge == "sum":
            feats = feats[..., :5] + feats[..., 5:]
        if pooling == "mean":
            feats = feats.mean(axis=0)
        elif pooling == "max":
            feats = feats.max(axis=0)
        np.testing.assert_allclose(pred, feats @ reg.coef_[:, 0] + reg.intercept_[0],
                                   rtol=1e-10, atol=1e-12)


def test_stacked_layers_of_different_sizes():
    rng = np.random.RandomState(5)
    X = rng.standard_normal((10, 4, 3))
    clf = RNNClassifier((7, 5), "gru", bidirectional=True, max_iter=1,
                        random_state=0).fit(X, np.arange(10) % 2)
    assert [type(layer).__name__ for layer in clf.layers_] == ["GRU", "GRU"]
    assert [(layer.input_size, layer.hidden_size) for layer in clf.layers_] == \
        [(3, 7), (14, 5)]
    assert "weight_hh_l0_reverse" in clf.layers_[1].state_dict()
    assert clf.coef_.shape == (10, 2)
    summed = clf.set_params(bidirectional_merge="sum").fit(X, np.arange(10) % 2)
    assert summed.layers_[1].input_size == 7 and summed.coef_.shape == (5, 2)
    assert summed.layers_[0].dtype == np.float32


# ======================================================================= errors


def _fitted():
    rng = np.random.RandomState(6)
    X = rng.standard_normal((8, 5, 2))
    return RNNClassifier((4,), max_iter=1, random_state=0).fit(X, np.arange(8) % 2), X


@pytest.mark.parametrize("make_X, error, match", [
    (lambda X: np.where(np.arange(2) == 0, np.nan, X), ValueError, "NaN"),
    (lambda X: [X[0], np.full((3, 2), np.inf)], ValueError, r"X\[1\] contains inf"),
    (lambda X: [], ValueError, "empty list of sequences"),
    (lambda X: X[:0], ValueError, "0 sample"),
    (lambda X: [X[0], X[1][:, :1], X[2]], ValueError,
     r"same number of features per time step: X\[0\] has 2 and X\[1\] has 1"),
    (lambda X: [X[0], np.empty((0, 2))], ValueError, r"X\[1\] has zero time steps"),
    (lambda X: X[:, :0], ValueError, "zero time steps"),
    (lambda X: X.astype(complex), ValueError, "Complex data not supported"),
    (lambda X: X.astype(str), ValueError, "holds strings"),
    (lambda X: [X[0].astype(object), np.array([["a", "b"]], dtype=object)],
     ValueError, "could not convert string to float"),
    (lambda X: X[:, :, :1].repeat(3, axis=2), ValueError,
     "X has 3 features per time step, but RNNClassifier is expecting 2 features per "
     "time step"),
    (lambda X: X[:, :, 0], ValueError, r"use X\[np.newaxis\] or \[X\]"),
    (lambda X: X[0, :, 0], ValueError, "Reshape your data"),
    (lambda X: X[..., None], ValueError, "got a 4-D array"),
])
def test_malformed_X_is_rejected(make_X, error, match):
    clf, X = _fitted()
    with pytest.raises(error, match=match):
        clf.predict(make_X(X))


def test_malformed_y_and_params_are_rejected():
    rng = np.random.RandomState(7)
    X = rng.standard_normal((5, 4, 2))
    with pytest.raises(ValueError, match="y has 4 samples but X has 5"):
        RNNClassifier(max_iter=1).fit(X, [0, 1, 0, 1])
    with pytest.raises(ValueError, match="y has 6 samples but X has 5"):
        RNNRegressor(max_iter=1).fit(X, np.zeros(6))
    with pytest.raises(ValueError, match="at least 2 classes"):
        RNNClassifier(max_iter=1).fit(X, np.zeros(5))
    with pytest.raises(ValueError, match="Unknown label type"):
        RNNClassifier(max_iter=1).fit(X, rng.standard_normal(5))
    with pytest.raises(ValueError, match="Input y contains NaN"):
        RNNRegressor(max_iter=1).fit(X, [0, 1, np.nan, 0, 1])
    with pytest.raises(ValueError, match="bptt_length cannot be combined"):
        RNNClassifier(bidirectional=True, bptt_length=2).fit(X, np.arange(5) % 2)
    with pytest.raises(ValueError, match="hidden_layer_sizes must be"):
        RNNClassifier(hidden_layer_sizes=(4, 0)).fit(X, np.arange(5) % 2)
    Xr = [X[0], X[1][:3], X[2]]
    with pytest.raises(ValueError, match=r"y\[1\] has 4 time steps but X\[1\] has 3"):
        RNNSequenceRegressor(max_iter=1).fit(Xr, [np.zeros(4)] * 3)
    with pytest.raises(ValueError, match="y has 3 time steps but X has 4"):
        RNNSequenceClassifier(max_iter=1).fit(X, np.zeros((5, 3)))
    with pytest.raises(ValueError, match="per-step y must be an array"):
        RNNSequenceClassifier(max_iter=1).fit(X, np.arange(5) % 2)
    with pytest.raises(NotFittedError):
        RNNSequenceRegressor().predict(X)


@pytest.mark.parametrize("cls", [RNNClassifier, RNNSequenceClassifier])
@pytest.mark.parametrize("class_weight, match", [
    ({"a": -5.0}, r"finite, non-negative numbers; got -5.0 for label 'a'"),
    ({"a": np.nan}, r"finite, non-negative numbers; got nan for label 'a'"),
    ({"a": 1.0, "b": np.inf}, r"finite, non-negative numbers; got inf for label 'b'"),
    ({"a": "2"}, r"finite, non-negative numbers; got '2' for label 'a'"),
    ({"a": True}, r"finite, non-negative numbers; got True for label 'a'"),
    ({"a": 0, "b": 0}, r"training weights \(sample_weight times class_weight\) are "
                       r"all zero; expected at least one"),
])
def test_class_weight_values_are_checked(cls, class_weight, match):
    """Negative, NaN, infinite or non-numeric class weights, or class weights that
    leave no positive weight, fail fit with a clear error (they trained with a
    NaN loss curve, or 'diverged') and leave the estimator unfitted."""
    rng = np.random.RandomState(23)
    X = rng.standard_normal((12, 4, 2))
    labels = np.array(["a", "b"])[np.arange(12) % 2]
    y = labels if cls is RNNClassifier else np.repeat(labels[:, None], 4, axis=1)
    est = cls((3,), max_iter=2, class_weight=class_weight, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        with pytest.raises(ValueError, match=match):
            est.fit(X, y)
    with pytest.raises(NotFittedError):
        est.predict(X)
    # A zero weight for some classes is fine: the loss is finite.
    est.set_params(class_weight={"a": 0.0}).fit(X, y)
    assert np.isfinite(est.loss_curve_).all() and len(est.loss_curve_) == 2


_TOO_LARGE = r"contains values too large for float32 \(max \|x\| = 1e\+39 > 3.4e\+38\)"


def test_values_too_large_for_the_model_dtype_are_rejected():
    """1e39 is finite in float64 but not in float32: X and y holding it are refused
    with a message saying so, before a cast turns them into infinity (there was an
    overflow warning, then 'contains NaN or infinity' or 'training diverged'). A
    float64 model accepts the same X."""
    rng = np.random.RandomState(24)
    X = rng.standard_normal((10, 4, 2))
    big = X.copy()
    big[3, 1, 0] = -1e39
    y = rng.standard_normal(10)
    fitted = RNNRegressor((3,), max_iter=1, random_state=0).fit(X, y)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # no overflow on the way
        for make in (lambda: RNNRegressor((3,), max_iter=1).fit(big, y),
                     lambda: RNNRegressor((3,), max_iter=1).fit(    # ragged
                         [big[0], big[1][:2], big[2], big[3]], y[:4]),
                     lambda: RNNRegressor((3,), max_iter=1).fit(big[:, :, 0], y),
                     lambda: RNNClassifier((3,), max_iter=1).fit(big, y > 0),
                     lambda: fitted.predict(big),                 # the fast path
                     lambda: fitted.predict([x for x in big])):   # a list
            with pytest.raises(ValueError, match=r"Input X(\[3\])? " + _TOO_LARGE):
                make()
        y_big = y.copy()
        y_big[2] = 1e39
        with pytest.raises(ValueError, match="Input y " + _TOO_LARGE):
            RNNRegressor((3,), max_iter=1).fit(X, y_big)
        for y_steps in (np.tile(y_big[:, None], 4), list(np.tile(y_big[:, None], 4))):
            with pytest.raises(ValueError, match="Input y " + _TOO_LARGE):
                RNNSequenceRegressor((3,), max_iter=1).fit(X, y_steps)
        with pytest.raises(ValueError, match=r"X\[1\] contains infinity; expected "
                                             "finite numbers"):
            fitted.predict([X[0], np.full((3, 2), np.inf)])
        # The layers share the check.
        with pytest.raises(ValueError, match="input " + _TOO_LARGE):
            nn.LSTM(2, 3)(big)
        # float64 represents 1e39: the same input is valid there.
        reg64 = RNNRegressor((3,), max_iter=1, random_state=0, dtype=np.float64)
        assert np.isfinite(reg64.fit(X, y).predict(big)).all()


@pytest.mark.parametrize("cls", [RNNRegressor, RNNSequenceRegressor])
def test_divergence_in_the_first_epoch_raises_and_leaves_unfitted(cls):
    """y = 1e20 (finite in float32) makes the loss overflow at once: with no epoch
    to go back to, fit raises instead of returning random weights with n_iter_ 0,
    and the estimator is unfitted; a warm start keeps its previous weights."""
    rng = np.random.RandomState(25)
    X = rng.standard_normal((16, 4, 2))
    y = rng.standard_normal(16) if cls is RNNRegressor else rng.standard_normal((16, 4))
    est = cls((3,), max_iter=3, random_state=0).fit(X, y)
    for call in (lambda: est.fit(X, y * 1e20),
                 lambda: clone(est).partial_fit(X, y * 1e20)):
        with pytest.raises(ValueError, match="training diverged in the first epoch.*"
                                             "left unfitted.*learning_rate_init"):
            call()
    with pytest.raises(NotFittedError):
        est.predict(X)
    assert not [k for k in vars(est) if k.endswith("_") or k == "_network"]
    # A warm start that diverges keeps the weights it started from.
    est = cls((3,), max_iter=3, random_state=0).fit(X, y)
    before = _weights(est)
    est.set_params(warm_start=True)
    with pytest.warns(ConvergenceWarning, match="diverged in epoch 4"):
        est.fit(X, y * 1e20)
    assert est.n_iter_ == 3
    for a, b in zip(_weights(est), before):
        np.testing.assert_array_equal(a, b)


# ==================================================================== gradients

# (cell, pooling or None for per-step, bidirectional, merge, loss)
_GRAD_CASES = [
    (cell, pooling, bidir, merge, loss)
    for cell in ("lstm", "gru", "rnn")
    for pooling in ("last", "mean", "max", None)
    for bidir, merge in ((False, "concat"), (True, "concat"), (True, "sum"))
    for loss in ("log_loss", "squared_error")
    if (cell == "lstm" or loss == "log_loss")  # every cell once, LSTM with both
]


def _batch(rng, T, B, D, K, pooling, loss, lengths):
    x = rng.standard_normal((T, B, D))
    for b, L in enumerate(lengths):
        x[L:, b] = 0.0
    shape = (B,) if pooling else (T, B)
    if loss == "log_loss":
        target = rng.randint(0, K, shape)
    else:
        target = rng.standard_normal(shape + (K,))
    weights = rng.uniform(0.5, 2.0, shape)
    if not pooling:
        weights *= np.arange(T)[:, None] < lengths[None, :]
    return x, target, weights


def _finite_difference_check(net, loss_fn, rng, n_entries=5, eps=1e-6):
    loss, grads = loss_fn()
    for (name, p), g in zip(net.named_parameters(), grads):
        assert g.shape == p.shape, name
        flat = p.reshape(-1)
        idx = rng.choice(flat.size, min(n_entries, flat.size), replace=False)
        numeric = []
        for i in idx:
            old = flat[i]
            flat[i] = old + eps
            plus = loss_fn()[0]
            flat[i] = old - eps
            minus = loss_fn()[0]
            flat[i] = old
            numeric.append((plus - minus) / (2 * eps))
        numeric = np.array(numeric)
        analytic = g.reshape(-1)[idx]
        err = np.linalg.norm(numeric - analytic) / max(np.linalg.norm(numeric),
                                                        np.linalg.norm(analytic), 1e-12)
        assert err < 1e-5, f"{name}: relative error {err:.1e}"


@pytest.mark.parametrize("cell, pooling, bidir, merge, loss", _GRAD_CASES)
def test_network_gradients_match_finite_differences(cell, pooling, bidir, merge, loss):
    """Head, pooling, merge, dropout, L2 and two stacked layers, ragged, float64."""
    rng = np.random.RandomState(8)
    T, B, D, K = 6, 4, 3, 3
    net = RecurrentNetwork(cell, D, (4, 3), K, bidirectional=bidir, merge=merge,
                           dropout=0.3, pooling=pooling, loss=loss, dtype=np.float64,
                           rng=np.random.RandomState(0))
    lengths = np.array([6, 2, 4, 1])
    x, target, weights = _batch(rng, T, B, D, K, pooling, loss, lengths)

    def loss_fn():  # the same dropout masks on every call
        return net.loss_and_grads(x, lengths, target, weights, alpha=0.3,
                                  rng=np.random.RandomState(5))

    _finite_difference_check(net, loss_fn, rng)


@pytest.mark.parametrize("pooling", ["last", "mean", None])
def test_truncated_bptt_gradients_match_finite_differences_of_the_truncated_loss(
        pooling):
    # Truncated BPTT differentiates the loss with each window's start state held
    # constant; with one window per sequence it is exact full BPTT.
    rng = np.random.RandomState(9)
    T, B, D, K = 7, 3, 2, 2
    net = RecurrentNetwork("gru", D, (3, 4), K, pooling=pooling, dtype=np.float64,
                           rng=np.random.RandomState(1))
    lengths = np.array([7, 7, 7])
    x, target, weights = _batch(rng, T, B, D, K, pooling, "log_loss", lengths)
    full = net.loss_and_grads(x, lengths, target, weights)
    for k in (T, T + 3):
        same = net.loss_and_grads(x, lengths, target, weights, bptt_length=k)
        assert same[0] == full[0]
        for g1, g2 in zip(full[1], same[1]):
            np.testing.assert_array_equal(g1, g2)
    truncated = net.loss_and_grads(x, lengths, target, weights, bptt_length=3)
    assert truncated[0] == pytest.approx(full[0], rel=1e-12)  # same forward pass
    assert not np.allclose(truncated[1][0], full[1][0])       # shorter gradient path


def _torch_truncated(torch, net, x, y, k, pooling):
    """PyTorch oracle: windows of k steps, state detached between them."""
    layer = net.layers[0]
    lstm = torch.nn.LSTM(layer.input_size, layer.hidden_size, dtype=torch.float64)
    lstm.load_state_dict({n: torch.from_numpy(v) for n, v in layer.state_dict().items()})
    W = torch.tensor(net.coef, requires_grad=True)
    b = torch.tensor(net.intercept, requires_grad=True)
    xt = torch.from_numpy(x)
    state, outs = None, []
    for s in range(0, x.shape[0], k):
        out, (h, c) = lstm(xt[s:s + k], state)
        state = (h.detach(), c.detach())
        outs.append(out)
    out = torch.cat(outs)
    yt = torch.from_numpy(y)
    if pooling is None:
        logits = out @ W + b
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, W.shape[1]),
                                                 yt.reshape(-1))
    else:
        pooled = out[-1] if pooling == "last" else out.mean(0)
        loss = torch.nn.functional.cross_entropy(pooled @ W + b, yt)
    loss.backward()
    grads = {f"layers_[0].{n}": p.grad.numpy() for n, p in lstm.named_parameters()}
    grads.update({"coef_": W.grad.numpy(), "intercept_": b.grad.numpy()})
    return loss.item(), grads


@pytest.mark.parametrize("pooling", ["last", "mean", None])
@pytest.mark.parametrize("k", [1, 3, 4])
def test_truncated_bptt_matches_pytorch_with_detached_state(pooling, k):
    torch = torch_or_skip()
    rng = np.random.RandomState(10)
    T, B, D, H, K = 9, 4, 3, 5, 3
    net = RecurrentNetwork("lstm", D, (H,), K, pooling=pooling, dtype=np.float64,
                           rng=np.random.RandomState(2))
    x = rng.standard_normal((T, B, D))
    y = rng.randint(0, K, (B,) if pooling else (T, B))
    loss, grads = net.loss_and_grads(x, np.full(B, T), y, np.ones(y.shape),
                                     bptt_length=k)
    ref_loss, ref = _torch_truncated(torch, net, x, y, k, pooling)
    assert loss == pytest.approx(ref_loss, rel=1e-10)
    for (name, _), g in zip(net.named_parameters(), grads):
        np.testing.assert_allclose(g, ref[name], rtol=1e-8, atol=1e-12, err_msg=name)


@pytest.mark.parametrize("pooling", ["last", "max", None])
def test_truncated_bptt_with_ragged_lengths_equals_per_sequence_runs(pooling):
    # Oracle: every sequence alone (no padding, no sub-batches); the batch
    # gradient is the weighted mean of theirs.
    rng = np.random.RandomState(11)
    T, B, D, K = 8, 5, 2, 2
    net = RecurrentNetwork("lstm", D, (3, 4), K, pooling=pooling, loss="squared_error",
                           dtype=np.float64, rng=np.random.RandomState(3))
    lengths = np.array([8, 3, 5, 1, 6])
    x, target, weights = _batch(rng, T, B, D, K, pooling, "squared_error", lengths)
    loss, grads = net.loss_and_grads(x, lengths, target, weights, bptt_length=3)
    total = weights.sum()
    ref_loss, ref = 0.0, [np.zeros_like(g) for g in grads]
    for b, L in enumerate(lengths):
        sl = (slice(None, L), slice(b, b + 1))
        tb = target[b:b + 1] if pooling else target[sl]
        wb = weights[b:b + 1] if pooling else weights[sl]
        lb, gb = net.loss_and_grads(x[sl], lengths[b:b + 1], tb, wb, bptt_length=3)
        share = wb.sum() / total
        ref_loss += share * lb
        for r, g in zip(ref, gb):
            r += share * g
    assert loss == pytest.approx(ref_loss, rel=1e-10)
    for g, r in zip(grads, ref):
        np.testing.assert_allclose(g, r, rtol=1e-9, atol=1e-12)


# =================================================================== optimizers


def test_adam_and_sgd_match_pytorch():
    torch = torch_or_skip()
    rng = np.random.RandomState(12)
    shapes = [(3, 4), (5,)]
    grads = [[rng.standard_normal(s) for s in shapes] for _ in range(6)]
    cases = [
        (lambda p: AdamOptimizer(p, 0.01, 0.8, 0.99, 1e-6),
         lambda tp: torch.optim.Adam(tp, lr=0.01, betas=(0.8, 0.99), eps=1e-6)),
        (lambda p: SGDOptimizer(p, 0.1, momentum=0.9, nesterov=True),
         lambda tp: torch.optim.SGD(tp, lr=0.1, momentum=0.9, nesterov=True)),
        (lambda p: SGDOptimizer(p, 0.1, momentum=0.5, nesterov=False),
         lambda tp: torch.optim.SGD(tp, lr=0.1, momentum=0.5)),
    ]
    for ours, theirs in cases:
        params = [rng.standard_normal(s) for s in shapes]
        tparams = [torch.tensor(p, requires_grad=True) for p in params]
        opt, topt = ours(params), theirs(tparams)
        for step in grads:
            opt.update_params(params, [g.copy() for g in step])
            for tp, g in zip(tparams, step):
                tp.grad = torch.from_numpy(g.copy())
            topt.step()
        for p, tp in zip(params, tparams):
            np.testing.assert_allclose(p, tp.detach().numpy(), rtol=1e-10, atol=1e-12)


def test_clip_grad_norm_matches_pytorch():
    torch = torch_or_skip()
    rng = np.random.RandomState(13)
    for max_norm in (0.5, 100.0):
        grads = [rng.standard_normal((4, 3)), rng.standard_normal(7)]
        tparams = [torch.zeros(g.shape, dtype=torch.float64, requires_grad=True)
                   for g in grads]
        for tp, g in zip(tparams, grads):
            tp.grad = torch.from_numpy(g.copy())
        ref_norm = torch.nn.utils.clip_grad_norm_(tparams, max_norm)
        norm = clip_grad_norm(grads, max_norm)
        assert norm == pytest.approx(ref_norm.item(), rel=1e-12)
        for g, tp in zip(grads, tparams):
            np.testing.assert_allclose(g, tp.grad.numpy(), rtol=1e-12)


@pytest.mark.parametrize("case", ["float32_1e20", "float32_max", "float32_tiny",
                                  "float64_1e200", "mixed_scales"])
def test_clip_grad_norm_is_exact_for_extreme_gradients(case):
    """The norm is the float64 (math.hypot) norm of all entries, without the
    float32 overflow of 1e20**2 that made it infinite and zeroed the gradients;
    clipped gradients have norm max_norm and keep their direction."""
    rng = np.random.RandomState(31)
    grads = {
        "float32_1e20": lambda: [np.full(4, 1e20, np.float32)],
        "float32_max": lambda: [np.full(1000, 3e38, np.float32),
                                -np.full((3, 2), 1e38, np.float32)],
        "float32_tiny": lambda: [np.full(4, 1e-30, np.float32)],
        "float64_1e200": lambda: [np.full(3, 1e200), rng.standard_normal(5) * 1e300],
        "mixed_scales": lambda: [rng.standard_normal((4, 3)).astype(np.float32) * 1e19,
                                 rng.standard_normal(7).astype(np.float32)],
    }[case]()
    max_norm = 5.0
    flat = np.concatenate([g.astype(np.float64).ravel() for g in grads])
    oracle = math.hypot(*flat)
    before = [g.copy() for g in grads]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no overflow warning either
        norm = clip_grad_norm(grads, max_norm)
    assert norm == pytest.approx(oracle, rel=1e-12)
    after = np.concatenate([g.astype(np.float64).ravel() for g in grads])
    assert all(g.dtype == b.dtype for g, b in zip(grads, before))
    if oracle > max_norm:
        assert math.hypot(*after) == pytest.approx(max_norm, rel=1e-6)
        np.testing.assert_allclose(after, flat * (max_norm / oracle), rtol=1e-6,
                                   atol=1e-6 * max_norm / np.sqrt(flat.size))
    else:
        assert np.array_equal(after, flat)


# ================================================================ training loop


def test_same_random_state_gives_identical_weights():
    rng = np.random.RandomState(14)
    X = _ragged(rng, 30, 2)
    y = rng.randint(0, 2, 30)
    kw = dict(hidden_layer_sizes=(6, 5), dropout=0.2, max_iter=3, batch_size=8,
              early_stopping=True, n_iter_no_change=5)
    a = RNNClassifier(random_state=3, **kw).fit(X, y)
    b = RNNClassifier(random_state=3, **kw).fit(X, y)
    _assert_same_weights(a, b)
    c = RNNClassifier(random_state=4, **kw).fit(X, y)
    assert not np.array_equal(_weights(a)[0], _weights(c)[0])


def test_early_stopping_restores_the_best_epoch():
    rng = np.random.RandomState(15)
    X = rng.standard_normal((120, 5, 2))
    y = (X[:, :, 0].sum(1) + rng.standard_normal(120) > 0).astype(int)
    kw = dict(hidden_layer_sizes=(8,), learning_rate_init=0.05, early_stopping=True,
              validation_fraction=0.25, n_iter_no_change=3, random_state=0,
              dtype=np.float64)
    clf = RNNClassifier(max_iter=200, **kw).fit(X, y)
    scores = clf.validation_scores_
    best = int(np.argmax(scores))
    assert clf.n_iter_ < 200 and best < clf.n_iter_ - 1
    assert clf.best_validation_score_ == scores[best] and clf.best_loss_ is None
    # Oracle: the same run stopped right after the best epoch.
    ref = RNNClassifier(max_iter=best + 1, **kw)
    with warnings.catch_warnings():
            ref.fit(X, y)
    _assert_same_weights(clf, ref)


def test_keyboard_interrupt_keeps_the_best_epoch(monkeypatch):
    rng = np.random.RandomState(16)
    X = rng.standard_normal((40, 5, 2))
    y = rng.randint(0, 2, 40)
    kw = dict(hidden_layer_sizes=(6,), batch_size=10, random_state=0)
    calls = {"n": 0}
    original = RecurrentNetwork.loss_and_grads

    def interrupting(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 4 * 4 + 2:  # in the middle of the fifth epoch
            raise KeyboardInterrupt
        return original(self, *args, **kwargs)

    monkeypatch.setattr(RecurrentNetwork, "loss_and_grads", interrupting)
    clf = RNNClassifier(max_iter=50, **kw)
    with pytest.warns(UserWarning, match="interrupted"):
        clf.fit(X, y)
    monkeypatch.setattr(RecurrentNetwork, "loss_and_grads", original)
    assert clf.n_iter_ == 4 and len(clf.loss_curve_) == 4
    assert clf.predict(X).shape == (40,)
    best = int(np.argmin(clf.loss_curve_))
    ref = RNNClassifier(max_iter=best + 1, **kw)
    with warnings.catch_warnings():
            ref.fit(X, y)
    _assert_same_weights(clf, ref)


def test_convergence_warning_and_fitted_attributes():
    rng = np.random.RandomState(17)
    X = rng.standard_normal((20, 4, 2))
    with pytest.warns(ConvergenceWarning, match="maximum iterations"):
        reg = RNNRegressor((4,), max_iter=3).fit(X, rng.standard_normal((20, 2)))
    assert reg.n_iter_ == 3 and reg.t_ == 60 and len(reg.loss_curve_) == 3
    assert reg.validation_scores_ is None and reg.best_validation_score_ is None
    assert reg.best_loss_ == min(reg.loss_curve_) and reg.loss_ == reg.loss_curve_[-1]
    assert reg.predict(X).shape == (20, 2) and reg.n_outputs_ == 2
    assert reg.predict(X).dtype == np.float64


@pytest.mark.parametrize("solver", ["adam", "sgd"])
def test_plateaus_stop_or_lower_the_learning_rate(solver):
    # Oracle: scikit-learn's MLP, whose stopping rule these estimators share
    # (more than n_iter_no_change epochs without improving by tol stop training,
    # or with learning_rate='adaptive' divide the rate by 5).
    rng = np.random.RandomState(29)
    X = rng.standard_normal((20, 4, 2))
    y = X[:, -1, 0]
    kw = dict(solver=solver, learning_rate_init=0.01, tol=1e3, n_iter_no_change=2,
              max_iter=9, random_state=0)
    schedules = ["constant", "adaptive"] if solver == "sgd" else ["constant"]
    for schedule in schedules:
        ours = RNNRegressor((4,), learning_rate=schedule, **kw).fit(X, y)
        mlp = MLPRegressor(hidden_layer_sizes=(4,), learning_rate=schedule,
                           **kw).fit(X.reshape(20, -1), y)
        assert ours.n_iter_ == mlp.n_iter_
        if solver == "sgd":  # (MLP's Adam keeps a bias-corrected rate there)
            assert ours._optimizer.learning_rate == pytest.approx(
                mlp._optimizer.learning_rate)
    if solver == "adam":  # unlike MLP's Adam, ours also follows 'adaptive'
        ours = RNNRegressor((4,), learning_rate="adaptive", **kw).fit(X, y)
        assert ours.n_iter_ == 9 and ours._optimizer.learning_rate == pytest.approx(
            0.01 / 25)


def test_partial_fit_equals_fit_epoch_by_epoch():
    rng = np.random.RandomState(18)
    X = _ragged(rng, 25, 2)
    y = rng.randint(0, 3, 25)
    kw = dict(hidden_layer_sizes=(5,), batch_size=7, random_state=0, dtype=np.float64)
    with pytest.warns(ConvergenceWarning):
        full = RNNClassifier(max_iter=3, **kw).fit(X, y)
    part = RNNClassifier(**kw)
    with pytest.raises(ValueError, match="classes must be passed"):
        part.partial_fit(X, y)
    for _ in range(3):
        part.partial_fit(X, y, classes=[0, 1, 2])
    _assert_same_weights(full, part)
    assert part.n_iter_ == 3 and part.t_ == full.t_
    with pytest.raises(ValueError, match="features per time step"):
        part.partial_fit([x[:, :1] for x in X], y)
    with pytest.raises(ValueError, match="not in classes_"):
        part.partial_fit(X, y + 5)


def test_warm_start_continues_from_the_previous_weights():
    rng = np.random.RandomState(19)
    X = rng.standard_normal((30, 5, 2))
    y = X[:, -1, 0]
    reg = RNNRegressor((6,), max_iter=10, learning_rate_init=0.02, random_state=0,
                       dtype=np.float64).fit(X, y)
    before = _weights(reg)
    reg.set_params(warm_start=True, max_iter=1, learning_rate_init=1e-14).fit(X, y)
    for a, b in zip(before, _weights(reg)):
        np.testing.assert_allclose(a, b, atol=1e-10)
    assert reg.n_iter_ == 11 and len(reg.loss_curve_) == 11
    fresh = clone(reg).set_params(warm_start=False, max_iter=1).fit(X, y)
    assert reg.loss_curve_[-1] < 0.5 * fresh.loss_curve_[0]
    clf = RNNClassifier((4,), max_iter=1, warm_start=True).fit(X, np.arange(30) % 2)
    with pytest.raises(ValueError, match="same classes"):
        clf.fit(X, np.arange(30) % 3)
    # Switching early stopping on and off between warm starts and partial fits.
    clf.set_params(early_stopping=True, max_iter=2).fit(X, np.arange(30) % 2)
    assert len(clf.validation_scores_) == 2 and clf.best_loss_ is None
    clf.partial_fit(X, np.arange(30) % 2)
    clf.set_params(early_stopping=False).fit(X, np.arange(30) % 2)
    assert clf.validation_scores_ is None and clf.n_iter_ == 6


@pytest.mark.parametrize("est", [RNNClassifier, RNNSequenceClassifier,
                                 RNNSequenceRegressor])
def test_integer_sample_weights_equal_repeated_sequences(est):
    # Ragged input and per-step targets: not covered by scikit-learn's check.
    rng = np.random.RandomState(20)
    X = _ragged(rng, 12, 2)
    if est is RNNClassifier:
        y = np.arange(12) % 3
    elif est is RNNSequenceClassifier:
        y = [rng.randint(0, 3, len(x)) for x in X]
    else:
        y = [rng.standard_normal(len(x)) for x in X]
    sw = rng.randint(0, 4, 12)
    sw[:3] = [0, 1, 2]
    kw = dict(hidden_layer_sizes=(5,), max_iter=4, shuffle=False,  # one batch: "auto"
              random_state=0, dtype=np.float64)
    weighted = est(**kw).fit(X, y, sample_weight=sw)
    rep = np.repeat(np.arange(12), sw)
    repeated = est(**kw).fit([X[i] for i in rep], [y[i] for i in rep]
                             if isinstance(y, list) else y[rep])
    for a, b in zip(_weights(weighted), _weights(repeated)):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)


def test_class_weight_equals_sample_weight():
    rng = np.random.RandomState(21)
    X = rng.standard_normal((30, 4, 2))
    y = np.r_[np.zeros(20, int), np.ones(7, int), np.full(3, 2)]
    kw = dict(hidden_layer_sizes=(5,), max_iter=3, random_state=0, dtype=np.float64)
    for cw in ("balanced", {0: 0.2, 2: 4.0}):
        a = RNNClassifier(class_weight=cw, **kw).fit(X, y)
        b = RNNClassifier(**kw).fit(X, y, sample_weight=compute_sample_weight(cw, y))
        for wa, wb in zip(_weights(a), _weights(b)):
            np.testing.assert_allclose(wa, wb, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("cls", [RNNRegressor, RNNSequenceRegressor])
def test_huge_sample_weights_train_as_unit_weights(cls):
    """Only the ratios of the weights matter (alpha=0): sample_weight 1e306 trains
    exactly like 1, though every loss * weight would overflow (the epoch loss was
    inf). Weights summing to infinity, or so small that alpha / weight overflows,
    are refused with a clear error (they gave overflow warnings and a NaN loss)."""
    rng = np.random.RandomState(26)
    X = rng.standard_normal((20, 4, 2))
    y = 30 * (rng.standard_normal(20) if cls is RNNRegressor
              else rng.standard_normal((20, 4)))
    kw = dict(hidden_layer_sizes=(3,), max_iter=3, alpha=0.0, batch_size=8,
              random_state=0, dtype=np.float64)
    unit = cls(**kw).fit(X, y)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        huge = cls(**kw).fit(X, y, sample_weight=np.full(20, 1e306))
        np.testing.assert_allclose(huge.loss_curve_, unit.loss_curve_, rtol=1e-12)
        for a, b in zip(_weights(huge), _weights(unit)):
            np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)
        with pytest.raises(ValueError, match=r"\(sample_weight\) sum to infinity \(the "
                                             r"largest is 1e\+308\); expected a finite"):
            cls(**kw).fit(X, y, sample_weight=np.full(20, 1e308))
        sw = np.ones(20)
        sw[5] = 1e-320
        with pytest.raises(ValueError, match=r"too small: the L2 term's alpha / weight "
                                             r"= 0.0001 / 1e-320 overflows float32"):
            cls(**{**kw, "alpha": 1e-4, "dtype": np.float32}).fit(X, y, sample_weight=sw)
    clf = RNNClassifier(class_weight={0: 1e300}, **kw)
    with pytest.raises(ValueError, match=r"\(sample_weight times class_weight\) sum "
                                         "to infinity"):
        clf.fit(X, np.arange(20) % 2, sample_weight=np.full(20, 1e300))


@pytest.mark.parametrize("random_state", range(6))
def test_early_stopping_with_zero_weight_sequences(random_state):
    """sample_weight [0, 2.5] with early stopping: one sequence to train on, one to
    hold out. Whichever way the split falls, fit trains on the weighted one (as a
    fit without early stopping does, the zero-weight one adding nothing) and
    scores the held-out one unweighted; it failed in scikit-learn's accuracy_score
    ("at least one non-zero number") or trained on weight 0 (a NaN loss)."""
    X = np.array([[[4.0]], [[1.0]]])
    y = np.array([1, 0])
    sw = np.array([0.0, 2.5])
    kw = dict(hidden_layer_sizes=(2,), max_iter=1, dtype=np.float64,
              backend="reference", random_state=random_state)
    stopped = RNNClassifier(early_stopping=True, **kw).fit(X, y, sample_weight=sw)
    plain = RNNClassifier(**kw).fit(X, y, sample_weight=sw)
    assert stopped.loss_curve_ == pytest.approx(plain.loss_curve_, rel=1e-12)
    for a, b in zip(_weights(stopped), _weights(plain)):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-15)
    assert stopped.validation_scores_ == [float(stopped.predict(X[:1])[0] == y[0])]


def test_per_step_y_as_list_or_padded_array():
    rng = np.random.RandomState(22)
    X = _ragged(rng, 10, 2)
    T = max(len(x) for x in X)
    y_list = [rng.standard_normal(len(x)) for x in X]
    y_pad = np.full((10, T), np.nan)  # padding may hold anything, even NaN
    for i, v in enumerate(y_list):
        y_pad[i, :len(v)] = v
    kw = dict(hidden_layer_sizes=(4,), max_iter=2, random_state=0)
    a = RNNSequenceRegressor(**kw).fit(X, y_list)
    b = RNNSequenceRegressor(**kw).fit(X, y_pad)
    _assert_same_weights(a, b)
    assert a.score(X, y_list) == b.score(X, y_pad)
    labels = [np.where(v > 0, "up", "down") for v in y_list]
    lab_pad = np.full((10, T), "pad", dtype=object)
    for i, v in enumerate(labels):
        lab_pad[i, :len(v)] = v
    c = RNNSequenceClassifier(**kw).fit(X, labels)
    d = RNNSequenceClassifier(**kw).fit(X, lab_pad)
    _assert_same_weights(c, d)
    assert list(c.classes_) == ["down", "up"]
    multi = RNNSequenceRegressor(**kw).fit(X, [np.c_[v, -v] for v in y_list])
    assert [p.shape for p in multi.predict(X[:2])] == [(len(X[0]), 2), (len(X[1]), 2)]


def test_predict_log_proba_and_score():
    clf, X = _fitted()
    np.testing.assert_allclose(clf.predict_log_proba(X), np.log(clf.predict_proba(X)),
                               rtol=1e-10)
    np.testing.assert_allclose(clf.predict_proba(X).sum(1), 1.0, rtol=1e-12)
    y = clf.predict(X)
    assert clf.score(X, y) == 1.0


@pytest.mark.parametrize("with_tqdm", [True, False])
def test_verbose_reports_every_epoch(capsys, monkeypatch, with_tqdm):
    if with_tqdm:
        pytest.importorskip("tqdm")
    else:
        monkeypatch.setitem(sys.modules, "tqdm", None)  # tqdm is optional
    rng = np.random.RandomState(23)
    X = rng.standard_normal((40, 4, 2))
    clf = RNNClassifier((4,), max_iter=3, early_stopping=True, n_iter_no_change=10,
                        verbose=True, random_state=0).fit(X, np.arange(40) % 2)
    lines = [line for line in capsys.readouterr().out.splitlines()
             if line.startswith("Iteration")]
    assert len(lines) == 3
    pattern = r"Iteration (\d), loss = ([\d.]+), validation score = ([\d.]+), " \
              r"time = [\d.]+s"
    for i, line in enumerate(lines):
        epoch, loss, score = re.fullmatch(pattern, line).groups()
        assert int(epoch) == i + 1
        assert float(loss) == pytest.approx(clf.loss_curve_[i], abs=1e-8)
        assert float(score) == pytest.approx(clf.validation_scores_[i], abs=1e-6)


def test_predict_is_thread_safe():
    rng = np.random.RandomState(24)
    X = _ragged(rng, 50, 3)
    clf = RNNClassifier((8,), max_iter=1, random_state=0).fit(X, np.arange(50) % 2)
    expected = clf.predict_proba(X)
    results = [None] * 4

    def work(i):
        results[i] = [clf.predict_proba(X) for _ in range(5)]

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for res in results:
        for r in res:
            np.testing.assert_array_equal(r, expected)


# =============================================== round trips and sklearn tooling


def test_pickle_joblib_and_clone_round_trips(tmp_path):
    rng = np.random.RandomState(25)
    X = _ragged(rng, 20, 2)
    for est, y in [(RNNClassifier((5,), "gru", bidirectional=True, max_iter=2),
                    np.arange(20) % 3),
                   (RNNSequenceRegressor((5,), max_iter=2),
                    [rng.standard_normal(len(x)) for x in X])]:
        est.fit(X, y)
        expected = est.predict(X)
        again = pickle.loads(pickle.dumps(est))
        joblib.dump(est, tmp_path / "model.joblib")
        loaded = joblib.load(tmp_path / "model.joblib")
        for other in (again, loaded):
            for a, b in zip(other.predict(X), expected):
                np.testing.assert_array_equal(a, b)
            assert other.coef_ is other._network.coef  # one set of weights
            assert other.layers_[0].named_parameters()[0][1] is \
                other._network.parameters()[0]
        fresh = clone(est)
        assert fresh.get_params() == est.get_params()
        assert not hasattr(fresh, "coef_")


def test_pipeline_with_ragged_input_scales_then_fits():
    rng = np.random.RandomState(26)
    X = [rng.normal(50, 10, (L, 2)) for L in rng.randint(2, 10, 40)]
    y = (np.array([x[-1, 0] for x in X]) > 50).astype(int)
    kw = dict(hidden_layer_sizes=(6,), max_iter=5, random_state=0)
    pipe = make_pipeline(SequenceScaler(), RNNClassifier(**kw)).fit(X, y)
    scaler = SequenceScaler().fit(X)
    manual = RNNClassifier(**kw).fit(scaler.transform(X), y)
    np.testing.assert_array_equal(pipe.predict_proba(X),
                                  manual.predict_proba(scaler.transform(X)))


def test_grid_search_in_parallel_and_cross_val_score():
    rng = np.random.RandomState(27)
    X = _ragged(rng, 36, 2)
    y = np.array([int(x[-1, 0] > 0) for x in X])
    pipe = make_pipeline(SequenceScaler(), RNNClassifier((4,), max_iter=3,
                                                         random_state=0))
    grid = {"rnnclassifier__cell": ["gru", "rnn"], "rnnclassifier__pooling": ["last",
                                                                             "mean"]}
    cv = KFold(3)
    parallel = GridSearchCV(pipe, grid, cv=cv, n_jobs=2).fit(X, y)
    serial = GridSearchCV(pipe, grid, cv=cv, n_jobs=1).fit(X, y)
    np.testing.assert_array_equal(parallel.cv_results_["mean_test_score"],
                                  serial.cv_results_["mean_test_score"])
    np.testing.assert_array_equal(parallel.predict(X), serial.predict(X))
    scores = cross_val_score(pipe, X, y, cv=cv)
    manual = [clone(pipe).fit([X[i] for i in tr], y[tr]).score([X[i] for i in te], y[te])
              for tr, te in cv.split(X)]
    np.testing.assert_array_equal(scores, manual)


# ================================================================ preprocessing


def test_sequence_scaler_statistics_and_formats():
    rng = np.random.RandomState(28)
    X = [rng.normal(5, 3, (L, 2)).astype(np.float32) for L in (3, 7, 1)]
    scaler = SequenceScaler().fit(X)
    flat = np.concatenate(X).astype(np.float64)  # oracle: all valid steps at once
    np.testing.assert_allclose(scaler.mean_, flat.mean(0), rtol=1e-12)
    np.testing.assert_allclose(scaler.scale_, flat.std(0), rtol=1e-12)
    assert scaler.n_samples_seen_ == 11
    out = scaler.transform(X)
    assert [o.shape for o in out] == [x.shape for x in X]
    assert all(o.dtype == np.float32 for o in out)
    np.testing.assert_allclose(np.concatenate(out).mean(0), 0, atol=1e-6)
    uni = [rng.normal(2, 4, L) for L in (4, 6)]  # 1-D elements stay 1-D
    assert [o.shape for o in SequenceScaler().fit_transform(uni)] == [(4,), (6,)]
    X2 = rng.normal(1, 2, (5, 8))  # 2-D: one univariate feature, one mean and scale
    s2 = SequenceScaler().fit(X2)
    assert s2.mean_.shape == (1,) and s2.mean_[0] == pytest.approx(X2.mean())
    assert s2.transform(X2).shape == (5, 8)
    X3 = rng.normal(1, 2, (5, 8, 3))
    np.testing.assert_allclose(SequenceScaler().fit_transform(X3).reshape(-1, 3).std(0),
                               1, rtol=1e-12)
    const = SequenceScaler().fit([np.ones((3, 1))])
    assert const.scale_[0] == 1.0


@settings(max_examples=30, deadline=None)
@given(lengths=st.lists(st.integers(1, 6), min_size=1, max_size=5),
       D=st.integers(1, 3), seed=st.integers(0, 2 ** 16))
def test_sequence_scaler_inverse_round_trip(lengths, D, seed):
    rng = np.random.RandomState(seed)
    X = [rng.normal(3, 2, (L, D)) for L in lengths]
    scaler = SequenceScaler().fit(X)
    back = scaler.inverse_transform(scaler.transform(X))
    back = back if isinstance(back, list) else list(back)
    for a, b in zip(X, back):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-10)


# ================================================================= command line


def test_demo_runs_and_learns(capsys):
    assert cli.main(["demo", "--epochs", "4", "--hidden", "16", "--lr", "0.02",
                     "--no-torch", "--latency-repeats", "3"]) == 0
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if line.startswith("fastrnn ("))
    accuracy = float(row.split()[2])
    assert accuracy > 0.6  # ten classes: chance is 0.1


def test_demo_side_by_side_with_pytorch(capsys):
    torch_or_skip()
    assert cli.main(["demo", "--epochs", "1", "--hidden", "8",
                     "--latency-repeats", "3"]) == 0
    out = capsys.readouterr().out
    assert "fastrnn (" in out and "PyTorch " in out and "PyTorch / fastrnn" in out


def test_command_dispatch():
    with pytest.raises(SystemExit) as info:
        cli.main(["no-such-command"])
    assert info.value.code == 2
    assert set(cli.COMMANDS) >= {"demo", "bench"}
    with pytest.raises(SystemExit) as info:
        cli.main(["demo", "--help"])
    assert info.value.code == 0


@pytest.mark.parametrize("Est", [RNNClassifier, RNNRegressor])
def test_n_jobs_splits_batches_and_learns_the_same_model(monkeypatch, Est):
    """n_jobs=2 splits every training and prediction batch over two threads
    (seen through the layers' splitter) and fits the model n_jobs=1 fits, to
    float64 rounding."""
    import fastrnn._config as config
    import fastrnn.nn as nn_module

    monkeypatch.setattr(config, "MIN_SAMPLES_PER_THREAD", 4)
    splits = []
    map_parts = nn_module._map_parts

    def spy(fn, items, split_rows=False):
        splits.append(len(items))
        return map_parts(fn, items, split_rows)

    monkeypatch.setattr(nn_module, "_map_parts", spy)
    rng = np.random.RandomState(0)
    X = rng.standard_normal((24, 5, 3))
    y = (X[:, -1, 0] > 0).astype(int) if Est is RNNClassifier else X[:, :, 1].sum(1)
    params = dict(hidden_layer_sizes=(4,), batch_size=12, max_iter=5, random_state=0,
                  dtype=np.float64, bidirectional=True)
    one = Est(n_jobs=1, **params).fit(X, y)
    assert set(splits) == {1}
    splits.clear()
    two = Est(n_jobs=2, **params).fit(X, y)
    assert set(splits) == {2}, splits
    np.testing.assert_allclose(two.loss_curve_, one.loss_curve_, rtol=1e-10)
    splits.clear()
    p_one, p_two = one.predict(X), two.predict(X)
    assert 2 in splits
    np.testing.assert_allclose(p_two, p_one, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("Est", [RNNClassifier, RNNRegressor])
def test_n_jobs_splits_kernel_rows_in_float32(monkeypatch, Est):
    """In float32 (the Cython kernels on their panels), n_jobs=2 runs every
    call whole on the calling thread, each kernel splitting its rows with the
    extension's helper thread, and fits the model n_jobs=1 fits, to float32
    rounding; n_jobs=1 splits nothing."""
    import fastrnn.nn as nn_module
    from fastrnn._kernels import available_backends, get_kernels

    if "cython" not in available_backends():
        pytest.skip("SKIPPED LOUDLY: the Cython extension is not built")
    kern = get_kernels("cython")
    if not (kern.HAS_ROW_SPLIT and kern.panel_products()):
        pytest.skip("SKIPPED LOUDLY: no helper thread or no AVX-512 panels here")
    calls = []
    map_parts = nn_module._map_parts

    def spy(fn, items, split_rows=False):
        calls.append((len(items), split_rows))
        return map_parts(fn, items, split_rows)

    monkeypatch.setattr(nn_module, "_map_parts", spy)
    bounds = kern._set_split_bounds(2, 0)  # split the test's small batches too
    try:
        rng = np.random.RandomState(0)
        X = rng.standard_normal((40, 9, 3)).astype(np.float32)
        y = (X[:, -1, 0] > 0).astype(int) if Est is RNNClassifier else X[:, :, 1].sum(1)
        params = dict(hidden_layer_sizes=(6,), batch_size=20, max_iter=5, random_state=0,
                      bidirectional=True)
        one = Est(n_jobs=1, **params).fit(X, y)
        assert set(calls) == {(1, False)}
        calls.clear()
        two = Est(n_jobs=2, **params).fit(X, y)
        assert set(calls) == {(1, True)}, calls
    finally:
        kern._set_split_bounds(*bounds)
    np.testing.assert_allclose(two.loss_curve_, one.loss_curve_, rtol=1e-4)
    np.testing.assert_allclose(two.predict(X), one.predict(X), rtol=1e-3, atol=1e-4)


def test_n_jobs_zero_is_refused():
    X = np.zeros((4, 3, 2))
    with pytest.raises(ValueError, match="n_jobs=0"):
        RNNRegressor((2,), max_iter=1, n_jobs=0).fit(X, np.zeros(4))


@pytest.mark.parametrize("n_jobs,fit,want", [
    (None, True, 1), (None, False, None), (3, True, 3), (3, False, 3),
    (-1, False, 6), (-2, True, 5), (-6, False, 1), (-50, True, 1),
])
def test_n_jobs_as_a_thread_count_follows_joblib(monkeypatch, n_jobs, fit, want):
    """n_jobs=-1 is every core, -2 all but one (never fewer than one), as in
    joblib; None is one thread in fit and BLAS's setting in predict."""
    import os

    monkeypatch.setattr(os, "cpu_count", lambda: 6)
    assert RNNRegressor((2,), n_jobs=n_jobs)._n_threads(fit) == want
