"""Fuzzed input (hypothesis) and numerical robustness.

Every fuzzed call must either raise a clear ValueError or TypeError, or give a
finite result equal to what the same data gives in its canonical form (a
C-contiguous float64 array, or the reference backend): never a crash, a hang or
a silent NaN. ``FUZZ_COUNT`` counts the cases run; the module prints it."""

import inspect
import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sklearn.exceptions import ConvergenceWarning

import fastrnn
from fastrnn import RNNClassifier, RNNRegressor, RNNSequenceClassifier
from fastrnn._training import SGDOptimizer
from fastrnn.nn import GRU, LSTM, RNN

pytestmark = pytest.mark.filterwarnings(
    "ignore::sklearn.exceptions.ConvergenceWarning")

BACKENDS = fastrnn.available_backends()
FUZZ_COUNT = {"cases": 0, "results": 0}
FUZZ = settings(max_examples=150, deadline=None,
                suppress_health_check=[HealthCheck.too_slow,
                                       HealthCheck.function_scoped_fixture])
FUZZ_TESTS = []  # every @fuzz test, for test_fuzz_cases_counted


def fuzz(**strategies):
    """``@FUZZ @given(**strategies)``, the test registered in ``FUZZ_TESTS`` with
    its strategies, so that it can be run again under other settings."""
    def decorate(fn):
        test = FUZZ(given(**strategies)(fn))
        test.fuzz_strategies = strategies
        FUZZ_TESTS.append(test)
        return test
    return decorate


@pytest.fixture(scope="module", autouse=True)
def _report_count():
    yield
    print(f"\nfuzzed cases run in test_fuzz.py: {FUZZ_COUNT['cases']} "
          f"({FUZZ_COUNT['results']} gave results, the rest clear errors)")


@pytest.fixture(scope="module")
def clf():
    rng = np.random.RandomState(0)
    X = rng.standard_normal((30, 5, 3))
    return RNNClassifier((4,), max_iter=3, random_state=0).fit(X, X[:, -1, 0] > 0)


DTYPES = ["bool", "int8", "int64", "uint16", "float16", "float32", "float64",
          "complex128", "object", "str"]
SPECIAL = [0.0, 1.0, -1.0, np.nan, np.inf, -np.inf, 1e30, -1e30, 1e-30, 3e38]


@st.composite
def arrays(draw, n_features=3):
    """An array of a random dtype, shape, layout and special values."""
    ndim = draw(st.integers(0, 4))
    shape = []
    for axis in range(ndim):
        if ndim == 3 and axis == 2:
            shape.append(draw(st.sampled_from([n_features, n_features, 0, 1, 4])))
        else:
            shape.append(draw(st.integers(0, 5)))
    seed = draw(st.integers(0, 2 ** 16))
    rng = np.random.RandomState(seed)
    base = np.asarray(rng.standard_normal(shape)) * draw(st.sampled_from([1.0, 1e3, 1e30]))
    if base.size and draw(st.booleans()):
        flat = base.reshape(-1)
        flat[draw(st.integers(0, flat.size - 1))] = draw(st.sampled_from(SPECIAL))
    dtype = draw(st.sampled_from(DTYPES))
    with np.errstate(all="ignore"):
        if dtype == "str":
            arr = base.astype(str)
        elif dtype == "object":
            arr = base.astype(object)
        elif dtype == "complex128":
            arr = base.astype(complex) + 1j * draw(st.sampled_from([0.0, 1.0]))
        else:
            arr = base.astype(dtype)
    arr = np.asarray(arr)  # 0-d arithmetic gives NumPy scalars
    layout = draw(st.sampled_from(["c", "f", "strided", "readonly"]))
    if layout == "f":
        arr = np.asfortranarray(arr)
    elif layout == "strided" and ndim:
        big = np.repeat(arr, 2, axis=0)
        arr = big[::2]
    elif layout == "readonly":
        arr = np.array(arr, ndmin=1) if ndim == 0 else arr.copy()
        arr.flags.writeable = False
    return arr


@st.composite
def ragged(draw, n_features=3):
    """A list of sequences, possibly with mixed feature counts, empty or 1-D items."""
    n = draw(st.integers(0, 4))
    items = []
    for _ in range(n):
        T = draw(st.integers(0, 4))
        D = draw(st.sampled_from([n_features, n_features, n_features, 2, 0]))
        kind = draw(st.sampled_from(["2d", "2d", "1d", "list", "scalar"]))
        seed = draw(st.integers(0, 1000))
        a = np.random.RandomState(seed).standard_normal((T, D))
        if draw(st.integers(0, 5)) == 0 and a.size:
            a.flat[0] = draw(st.sampled_from(SPECIAL))
        items.append({"2d": a, "1d": a[:, 0] if D else a.reshape(T, 0)[:, :0].ravel(),
                      "list": a.tolist(), "scalar": 1.5}[kind])
    return items


def _canonical(X):
    """X as the plain float64 data it stands for, or None if it is not valid."""
    if getattr(X, "dtype", None) is not None and X.dtype.kind == "c":
        return None
    try:
        if isinstance(X, list):
            return [np.array(x, dtype=np.float64) for x in X]
        return np.array(X, dtype=np.float64)
    except (TypeError, ValueError):
        return None


def _same(a, b):
    if isinstance(a, list):
        return len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b))
    return np.array_equal(a, b)


def _check_outcome(fn, oracle=None):
    """``fn()`` raises ValueError/TypeError, or returns a finite result equal to
    ``oracle()`` (when given). Returns the result or None."""
    FUZZ_COUNT["cases"] += 1
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                out = fn()
            finally:
                # An overflow or invalid-value warning raised in fastrnn's own code
                # is a bug (scikit-learn's checks may warn on their own account).
                ours = [w for w in caught if issubclass(w.category, RuntimeWarning)
                        and "/fastrnn/" in w.filename.replace("\\", "/")]
                assert not ours, [str(w.message) for w in ours]
    except (ValueError, TypeError) as exc:
        assert str(exc), "errors must say what is wrong"
        return None
    values = out if isinstance(out, list) else [out]
    for v in values:
        v = np.asarray(v)
        if v.dtype.kind in "fc":
            assert np.isfinite(v).all(), "silent NaN or infinity in a result"
    if oracle is not None:
        assert _same(out, oracle())
    FUZZ_COUNT["results"] += 1
    return out


@fuzz(X=st.one_of(arrays(), ragged()))
def test_fuzz_predict(clf, X):
    canon = _canonical(X)

    def oracle():
        return clf.predict_proba(canon)

    _check_outcome(lambda: clf.predict_proba(X), oracle if canon is not None else None)


@fuzz(X=arrays(), y_kind=st.sampled_from(["ok", "short", "nan", "str", "2d", "const",
                                          "none", "object_mixed"]),
      sw_kind=st.sampled_from(["none", "ok", "negative", "nan", "zeros", "short",
                               "inf"]))
def test_fuzz_fit(X, y_kind, sw_kind):
    n = X.shape[0] if X.ndim else 0
    rng = np.random.RandomState(n)
    y = {"ok": rng.randint(0, 2, n), "short": np.arange(max(n - 1, 0)) % 2,
         "nan": np.where(np.arange(n) == 0, np.nan, np.arange(n) % 2),
         "str": np.array(["a", "b"] * n)[:n], "2d": np.zeros((n, 2)),
         "const": np.zeros(n), "none": None,
         "object_mixed": np.array([1, "a"] * n, dtype=object)[:n]}[y_kind]
    sw = {"none": None, "ok": np.ones(n), "negative": -np.ones(n),
          "nan": np.full(n, np.nan), "zeros": np.zeros(n), "short": np.ones(n + 1),
          "inf": np.full(n, np.inf)}[sw_kind]
    est = RNNClassifier((2,), max_iter=2, random_state=0)
    canon = _canonical(X)

    def oracle():
        ref = RNNClassifier((2,), max_iter=2, random_state=0).fit(canon, y, sw)
        return ref.predict_proba(canon)

    _check_outcome(lambda: est.fit(X, y, sw).predict_proba(X),
                   oracle if canon is not None else None)


PARAMS = st.fixed_dictionaries({}, optional={
    "hidden_layer_sizes": st.sampled_from([0, -1, (), (2, 0), "a", (2.5,), [2], 2,
                                           (True,), np.array([2, 3])]),
    "learning_rate_init": st.sampled_from([0.0, -1.0, np.nan, np.inf, 1e-3, 1e6, "x"]),
    "max_iter": st.sampled_from([0, -1, 1, 2.0, None]),
    "dropout": st.sampled_from([-0.1, 0.0, 0.5, 1.0, np.nan]),
    "batch_size": st.sampled_from([0, 1, "auto", 10 ** 6, -3, "big"]),
    "bptt_length": st.sampled_from([None, 0, 1, 2, -1]),
    "cell": st.sampled_from(["lstm", "gru", "rnn", "foo", None]),
    "bidirectional": st.sampled_from([True, False, "yes"]),
    "max_grad_norm": st.sampled_from([None, 0.0, 1e-8, 1.0, -1.0, np.nan]),
    "alpha": st.sampled_from([0.0, 1e6, -1.0, np.inf]),
    "dtype": st.sampled_from([np.float32, "float64", np.int32, "float16", None]),
    "backend": st.sampled_from(["auto", "reference", "nope"]),
    "pooling": st.sampled_from(["last", "mean", "max", "median"]),
    "validation_fraction": st.sampled_from([0.1, 0.0, 1.0]),
    "early_stopping": st.booleans(),
})


@fuzz(params=PARAMS, lengths=st.lists(st.integers(1, 5), min_size=4, max_size=8))
def test_fuzz_parameters(params, lengths):
    rng = np.random.RandomState(len(lengths))
    X = [rng.standard_normal((L, 2)) for L in lengths]
    y = np.arange(len(lengths)) % 2
    est = RNNClassifier(max_iter=2, random_state=0)
    est.set_params(**{"max_iter": 2, **params})
    _check_outcome(lambda: est.fit(X, y).predict_proba(X))


@fuzz(lengths=st.one_of(
    st.lists(st.integers(-2, 7), min_size=0, max_size=5),
    st.lists(st.floats(allow_nan=True, allow_infinity=True), min_size=3, max_size=3),
    st.sampled_from([None, 3, "abc", [[1, 2, 3]], [True, True, True], [1.5, 2, 3]])),
   backend=st.sampled_from(BACKENDS), cls=st.sampled_from([RNN, LSTM, GRU]))
def test_fuzz_layer_lengths(lengths, backend, cls):
    """Any lengths argument: a clear error, or exactly the reference backend's
    result (the compiled kernels run without bounds checks, so a bad length that
    got through would read out of bounds)."""
    x = np.random.RandomState(0).standard_normal((5, 3, 2)).astype(np.float64)
    layer = cls(2, 3, bidirectional=True, backend=backend, dtype=np.float64,
                random_state=0).eval()
    ref = cls(2, 3, bidirectional=True, backend="reference", dtype=np.float64,
              random_state=0).eval()
    out = _check_outcome(lambda: layer(x, lengths=lengths)[0],
                         None)
    if out is not None:
        np.testing.assert_allclose(out, ref(x, lengths=lengths)[0], rtol=1e-10,
                                   atol=1e-12)


@fuzz(new=st.lists(st.sampled_from([0, 1, 2, 7, -1, "a"]), min_size=1, max_size=6))
def test_fuzz_partial_fit_labels(new):
    """partial_fit with labels outside ``classes`` fails and leaves the model as it
    was; with known labels it trains on."""
    rng = np.random.RandomState(0)
    X = rng.standard_normal((len(new), 3, 2))
    est = RNNSequenceClassifier((2,), random_state=0) if len(new) % 2 else \
        RNNClassifier((2,), random_state=0)
    y0 = np.array([0, 1, 2] * len(new))[:len(new)]
    if isinstance(est, RNNSequenceClassifier):
        est.partial_fit(X, np.repeat(y0[:, None], 3, axis=1), classes=[0, 1, 2])
    else:
        est.partial_fit(X, y0, classes=[0, 1, 2])
    before = est._network.get_weights()
    y = np.array(new, dtype=object) if "a" in new else np.array(new)
    if isinstance(est, RNNSequenceClassifier):
        y = [np.repeat(v, 3) for v in y]
    out = _check_outcome(lambda: est.partial_fit(X, y))
    unseen = any(v not in (0, 1, 2) for v in new)
    if unseen:
        assert out is None
        for a, b in zip(before, est._network.get_weights()):
            assert np.array_equal(a, b)  # nothing was half-trained
    else:
        assert out is est


@fuzz(X=arrays(n_features=1), T=st.integers(1, 4))
def test_fuzz_regressor_2d(X, T):
    """A regressor fit on 2-D input predicts 2-D input of the same width, and the
    canonical float array gives identical results."""
    rng = np.random.RandomState(0)
    Xf = rng.standard_normal((6, T))
    reg = RNNRegressor((2,), max_iter=1, random_state=0).fit(Xf, Xf[:, -1])
    canon = _canonical(X)
    _check_outcome(lambda: reg.predict(X),
                   (lambda: reg.predict(canon)) if canon is not None else None)


# A few examples per fuzz test, the same ones every run (no example database).
COUNTED = settings(FUZZ, max_examples=20, derandomize=True, database=None)


def test_fuzz_cases_counted(clf):
    """Every example a fuzz test runs is a counted case, and a fair share of the
    cases (at least 5%, about 14% now) are valid input whose result was checked
    finite and equal to its oracle, not only clear errors.

    Self-contained: it runs each fuzz test again itself, on ``COUNTED``'s 20
    derandomized examples, and counts those. It used to read what the fuzz tests
    above had left in ``FUZZ_COUNT``, and so asserted nothing when they had not
    run first in the same session (``-k counted``, ``--lf``, a split run)."""
    assert len(FUZZ_TESTS) == 6
    cases = results = 0
    for test in FUZZ_TESTS:
        body = test.hypothesis.inner_test
        run = COUNTED(given(**test.fuzz_strategies)(body))
        before = dict(FUZZ_COUNT)
        run(**({"clf": clf} if "clf" in inspect.signature(body).parameters else {}))
        ran = FUZZ_COUNT["cases"] - before["cases"]
        assert ran >= COUNTED.max_examples, (test.__name__, ran)
        cases += ran
        results += FUZZ_COUNT["results"] - before["results"]
    assert results >= 0.05 * cases, (results, cases)


# ----------------------------------------------------------- numerics

@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("cls", [RNN, LSTM, GRU])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_huge_inputs_saturate_without_warnings(backend, cls, dtype):
    """x = +-1e30 drives every gate into saturation: outputs finite, in [-1, 1],
    no floating-point warning, forward and backward equal to the reference, and
    exactly 0 wherever the reference's gradient is 0."""
    x = np.full((6, 4, 3), 1e30)
    x[:, 1] = -1e30
    x[::2, 2] *= -1
    out = {}
    for b in (backend, "reference"):
        layer = cls(3, 5, bidirectional=True, backend=b, dtype=dtype, random_state=0)
        with np.errstate(all="raise"), warnings.catch_warnings():
            warnings.simplefilter("error")
            y, _ = layer(x)
            gx, _ = layer.backward(np.ones_like(y))
        assert np.isfinite(y).all() and np.abs(y).max() <= 1.0
        assert np.isfinite(gx).all()
        assert all(np.isfinite(g).all() for g in layer.grads.values())
        out[b] = (y, gx, layer.grads)
    np.testing.assert_allclose(out[backend][0], out["reference"][0], atol=1e-5)
    np.testing.assert_allclose(out[backend][1], out["reference"][1], atol=1e-4)
    # A saturated gate's derivative (1 - tanh^2, s * (1 - s)) is exactly 0 in the
    # reference (np.tanh is exactly +-1 there), so weight_ih's gradient dgates^T x
    # is exactly 0. Every backend must give exactly 0 too: any residue, say a
    # float32 tanh a few eps short of 1, is magnified by x = 1e30 (it was 1e24).
    ih = [k for k in out["reference"][2] if k.startswith("weight_ih")]
    assert ih and not any(out["reference"][2][k].any() for k in ih)
    gx, ref_gx = out[backend][1], out["reference"][1]
    assert not gx[ref_gx == 0].any(), np.abs(gx[ref_gx == 0]).max()
    for k, g in out[backend][2].items():
        ref = out["reference"][2][k]
        assert not g[ref == 0].any(), (k, np.abs(g[ref == 0]).max())
        np.testing.assert_allclose(g, ref, rtol=1e-4, atol=1e-3, err_msg=k)


@pytest.mark.parametrize("solver", ["sgd", "adam"])
@pytest.mark.parametrize("cls", [RNNRegressor, RNNClassifier])
def test_divergence_restores_last_good_weights(solver, cls):
    rng = np.random.RandomState(0)
    X = rng.standard_normal((40, 5, 2))
    y = rng.standard_normal(40) * 1e6 if cls is RNNRegressor else X[:, -1, 0] > 0
    est = cls((3,), solver=solver, learning_rate_init=1e30, max_grad_norm=None,
              max_iter=20, random_state=0)
    with pytest.warns(ConvergenceWarning, match="diverged"):
        est.fit(X, y)
    assert est.n_iter_ < 20
    assert all(np.isfinite(p).all() for p in est._network.parameters())
    pred = est.predict_proba(X) if cls is RNNClassifier else est.predict(X)
    assert np.isfinite(pred).all()
    # The restored weights are those of the last complete epoch: refitting for
    # exactly that many epochs (no divergence) gives the same model.
    ref = cls((3,), solver=solver, learning_rate_init=1e30, max_grad_norm=None,
              max_iter=est.n_iter_, random_state=0) if est.n_iter_ else None
    if ref is not None:
        ref.fit(X, y)
        for a, b in zip(ref._network.parameters(), est._network.parameters()):
            assert np.array_equal(a, b)
    # And training can continue from there.
    est.set_params(learning_rate_init=1e-3)
    est.partial_fit(X, y) if cls is RNNRegressor else est.partial_fit(X, y)
    assert all(np.isfinite(p).all() for p in est._network.parameters())


def test_gradient_clipping_bounds_every_update(monkeypatch):
    """Exploding-gradient settings (targets 1e4, large recurrent weights via a big
    learning rate, long sequences): with plain SGD each update is ``-lr * g``, so
    clipping to ``max_grad_norm`` bounds every update's norm by ``lr * max_grad_norm``;
    without clipping the same settings give far larger updates."""
    rng = np.random.RandomState(0)
    X = rng.standard_normal((32, 30, 2)) * 3
    y = rng.standard_normal(32) * 1e4
    lr, clip = 0.01, 1.0
    steps = []
    real = SGDOptimizer.update_params

    def recording(self, params, grads):
        before = [p.copy() for p in params]
        real(self, params, grads)
        steps.append(np.sqrt(sum(float(np.vdot(p - b, p - b))
                                 for p, b in zip(params, before))))

    monkeypatch.setattr(SGDOptimizer, "update_params", recording)

    def run(max_grad_norm):
        steps.clear()
        RNNRegressor((8,), cell="rnn", solver="sgd", momentum=0.0, batch_size=8,
                      learning_rate_init=lr, max_grad_norm=max_grad_norm, max_iter=3,
                      random_state=0).fit(X, y)
        return list(steps)

    clipped = run(clip)
    assert len(clipped) == 12
    assert max(clipped) <= lr * clip * (1 + 1e-4)
    unclipped = run(None)
    assert max(unclipped) > 100 * lr * clip  # the settings do explode
