"""Serving under load: one model called from many threads gives exactly the
sequential results; repeated fit/predict cycles do not leak; inference memory
does not grow with sequence length beyond the input and output."""

import copy
import gc
import threading
import tracemalloc

import numpy as np
import pytest

import fastrnn
from fastrnn import RNNClassifier, RNNRegressor
from fastrnn.nn import GRU, LSTM, RNN

pytestmark = pytest.mark.filterwarnings(
    "ignore::sklearn.exceptions.ConvergenceWarning")

BACKENDS = fastrnn.available_backends()
N_THREADS = 8
CALLS_PER_THREAD = 250  # 8 x 250 = 2000 calls in all


def _run_threads(n, work):
    """Run ``work(i)`` in ``n`` threads started together; re-raise any error."""
    barrier = threading.Barrier(n)
    results, errors = [None] * n, []

    def target(i):
        try:
            barrier.wait()
            results[i] = work(i)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=target, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return results


@pytest.mark.parametrize("backend", BACKENDS)
def test_predict_from_8_threads_equals_sequential(backend):
    rng = np.random.RandomState(0)
    X = rng.standard_normal((40, 7, 3))
    y = (X[:, -1, 0] > 0).astype(int)
    clf = RNNClassifier((5,), max_iter=3, random_state=0, backend=backend).fit(X, y)
    # Requests of varying shape: single sequences, ragged lists, batches.
    requests = [X[i:i + 1 + i % 5, : 3 + i % 5] for i in range(20)]
    requests += [[X[i, : 1 + i % 7], X[i + 1, : 1 + (i + 3) % 7]] for i in range(20)]
    expected = [(clf.predict(r), clf.predict_proba(r)) for r in requests]

    def work(t):
        mismatches = 0
        for c in range(CALLS_PER_THREAD):
            j = (t * 7 + c) % len(requests)
            if c % 2:
                ok = np.array_equal(clf.predict_proba(requests[j]), expected[j][1])
            else:
                ok = np.array_equal(clf.predict(requests[j]), expected[j][0])
            mismatches += not ok
        return mismatches

    mismatches = _run_threads(N_THREADS, work)
    assert mismatches == [0] * N_THREADS  # 2000 calls, all exactly sequential


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("cls", [RNN, LSTM, GRU])
def test_layer_eval_and_backward_threads(backend, cls):
    """4 threads share one layer in eval mode; 4 threads each run forward and
    backward on their own copy; both equal the sequential results."""
    rng = np.random.default_rng(0)
    layer = cls(3, 6, bidirectional=True, backend=backend, random_state=0).eval()
    inputs = [rng.standard_normal((5 + i, 3 + i, 3)).astype(np.float32) for i in range(4)]
    lengths = [np.maximum(1, (5 + i) - np.arange(3 + i)) for i in range(4)]

    def run_eval(lay, i):
        out, _ = lay(inputs[i], lengths=lengths[i])
        return out

    want_eval = [run_eval(layer, i) for i in range(4)]
    got_eval = _run_threads(4, lambda i: [run_eval(layer, i) for _ in range(25)])
    for i in range(4):
        for got in got_eval[i]:
            assert np.array_equal(got, want_eval[i])

    def run_train(lay, i):
        lay.train()
        out, _ = lay(inputs[i], lengths=lengths[i])
        gx, _ = lay.backward(np.ones_like(out))
        return out, gx, {k: v.copy() for k, v in lay.grads.items()}

    copies = [copy.deepcopy(layer) for _ in range(4)]
    want_train = [run_train(copy.deepcopy(layer), i) for i in range(4)]
    got_train = _run_threads(4, lambda i: [run_train(copies[i], i) for _ in range(10)])
    for i in range(4):
        for out, gx, grads in got_train[i]:
            assert np.array_equal(out, want_train[i][0])
            assert np.array_equal(gx, want_train[i][1])
            assert grads.keys() == want_train[i][2].keys()
            for k in grads:
                assert np.array_equal(grads[k], want_train[i][2][k])


def _traced_growth(cycle, warmup=100, measured=300, every=50):
    """Traced bytes after every ``every`` cycles, following ``warmup`` cycles."""
    for _ in range(warmup):  # warm caches: numpy's small-block cache, sklearn, ctypes
        cycle()
    gc.collect()
    tracemalloc.start()
    try:
        samples = []
        for i in range(measured):
            cycle()
            if i % every == every - 1:
                gc.collect()
                samples.append(tracemalloc.get_traced_memory()[0])
    finally:
        tracemalloc.stop()
    return samples


LEAK_BOUND = 16_000  # bytes over the last 200 cycles: 80 bytes a cycle


def _leak_setup():
    rng = np.random.RandomState(0)
    X = rng.standard_normal((8, 4, 2))
    y = rng.standard_normal(8)
    est = RNNRegressor((3,), max_iter=2, batch_size=4, random_state=0,
                       backend="reference")
    return est, X, y


def test_fit_predict_cycles_do_not_leak():
    """400 fit/predict cycles of a tiny model: after 100 warm-up cycles, traced
    memory grows by less than 80 bytes a cycle over the last 200 (the remaining
    growth is numpy's bounded cache of small blocks filling up). Keeping even one
    copy of the weights per cycle, the leak the check below simulates, grows by
    kilobytes a cycle."""
    est, X, y = _leak_setup()

    def cycle():
        est.fit(X, y)
        est.predict(X)

    samples = _traced_growth(cycle)
    growth = samples[-1] - samples[2]
    print(f"traced bytes every 50 cycles: {samples}; growth over the last 200: {growth}")
    assert growth < LEAK_BOUND

    leaked = []

    def leaky_cycle():
        cycle()
        leaked.append(est._network.get_weights())  # what a real leak would keep

    samples = _traced_growth(leaky_cycle, warmup=0, measured=100)
    assert samples[-1] - samples[0] > LEAK_BOUND  # the bound would catch it


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("cls", [RNN, LSTM, GRU])
def test_inference_memory_independent_of_length(monkeypatch, backend, cls):
    """Peak traced memory of an eval-mode forward pass at T and 4T differs by no
    more than the growth of the input and output (which the caller and the
    result hold anyway): the input is projected a block of steps at a time and
    nothing per-step is kept."""
    B, D, H, T = 4, 8, 16, 64
    monkeypatch.setattr(fastrnn._config, "INFERENCE_BLOCK_STEPS", 16)
    layer = cls(D, H, backend=backend, random_state=0).eval()
    G = {"RNN": 1, "LSTM": 4, "GRU": 3}[cls.__name__]
    peaks = {}
    for steps in (T, 4 * T, T, 4 * T):  # twice: the second round is measured
        x = np.ones((steps, B, D), np.float32)
        layer(x)  # warm up (JIT, caches)
        gc.collect()
        tracemalloc.start()
        try:
            out, _ = layer(x)
            peaks[steps] = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        del out
    growth = peaks[4 * T] - peaks[T]
    itemsize = 4
    # Per step the layer may hold the output (H) and a copy of the input (D);
    # the gate pre-activations (G*H per step) only for one block of steps.
    per_step = (H + D) * B * itemsize
    print(f"{cls.__name__}/{backend}: peak {peaks[T]} B at T={T}, {peaks[4 * T]} B at "
          f"T={4 * T}; growth {growth} B, bound {3 * T * per_step} B")
    assert growth <= 3 * T * per_step + 4096
    # The training-mode forward keeps per-step caches, which must be larger:
    # the test can tell the two apart.
    layer.train()
    x = np.ones((4 * T, B, D), np.float32)
    gc.collect()
    tracemalloc.start()
    try:
        layer(x)
        train_peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
        layer.eval()
    if cls is not RNN:  # the RNN's cache is just its output
        assert train_peak > peaks[4 * T]


def _blas_threads():
    from threadpoolctl import threadpool_info

    return sorted(i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("cls,opts", [(LSTM, dict(num_layers=2, bidirectional=True)),
                                      (LSTM, dict(proj_size=3, batch_first=True)),
                                      (GRU, dict(bidirectional=True)),
                                      (RNN, dict(num_layers=2))])
def test_batch_split_over_threads_equals_whole_batch(monkeypatch, backend, cls, opts):
    """An inference batch split over threads gives the unsplit batch's results
    (ragged lengths and an initial state included) and restores BLAS's threads."""
    rng = np.random.default_rng(0)
    B, T, D, H = 37, 9, 4, 6
    layer = cls(D, H, backend=backend, random_state=0, dtype=np.float64, **opts).eval()
    x = rng.standard_normal((B, T, D) if layer.batch_first else (T, B, D))
    lengths = rng.integers(1, T + 1, B)
    L = layer.num_layers * layer._num_directions
    h0 = rng.standard_normal((L, B, layer._state_size))
    hx = (h0, rng.standard_normal((L, B, H))) if cls is LSTM else h0

    monkeypatch.setattr(fastrnn._config, "MIN_SAMPLES_PER_THREAD", 10 ** 9)
    want = layer(x, hx, lengths)
    monkeypatch.setattr(fastrnn._config, "MIN_SAMPLES_PER_THREAD", 5)
    before = _blas_threads()
    with fastrnn._config.thread_limit(3):
        assert fastrnn._config.batch_threads(B) == 3
        got = _run_threads(4, lambda i: layer(x, hx, lengths))  # overlapping splits
    assert _blas_threads() == before

    def arrays(result):  # (out, h_n) or (out, (h_n, c_n)) -> flat list
        out, state = result
        return [out, *(state if isinstance(state, tuple) else (state,))]

    for g in got:
        assert len(arrays(want)) == len(arrays(g))
        for u, v in zip(arrays(want), arrays(g)):
            np.testing.assert_allclose(v, u, rtol=1e-12, atol=1e-13)


def test_thread_pool_is_kept_grown_and_renewed_after_fork(monkeypatch):
    """One pool per process, reused; a larger one when more threads are asked
    for, the old one still usable by whoever holds it (no shutdown under a
    caller's feet); a fresh start in a forked child, BLAS restored."""
    config = fastrnn._config
    pool = config.thread_pool(1)
    assert config.thread_pool(1) is pool
    bigger = config.thread_pool(pool.size + 1)
    assert bigger is not pool and bigger.size == pool.size + 1
    assert pool.start(lambda a: a + 1, 5).result() == 6
    assert bigger.start(lambda a: a + 2, 5).result() == 7
    before = _blas_threads()
    with config.thread_limit(3):
        # the state of a child forked while a split held BLAS on one thread
        # (the holding thread does not exist in the child, so it never leaves)
        libs = config._blas_controllers()
        monkeypatch.setattr(config, "_blas_users", 1)
        monkeypatch.setattr(config, "_blas_saved", [lib.num_threads for lib in libs])
        for lib in libs:
            lib.set_num_threads(1)
        config._after_fork_in_child()
        assert config._pool is None and config._blas_users == 0
        assert _blas_threads() == [3] * len(before)  # the held setting restored
    assert _blas_threads() == before


def _flag_kinds():
    """The spin flags of the Cython extension (where built) and the plain ones
    used without it."""
    kinds = [fastrnn._config._PlainFlags]
    try:
        from fastrnn._kernels._cython_kernels import SpinFlags
    except ImportError:
        pass
    else:
        kinds.append(SpinFlags)
    return kinds


@pytest.mark.parametrize("Flags", _flag_kinds(), ids=lambda c: c.__name__)
def test_spin_flags_get_set_and_wait(Flags):
    flags = Flags(3)
    assert [flags.get(i) for i in range(3)] == [0, 0, 0]
    flags.set(1, 7)
    assert [flags.get(i) for i in range(3)] == [0, 7, 0]
    assert flags.wait(1, 7, 0.0) and not flags.wait(0, 1, 0.001)
    if Flags is fastrnn._config._PlainFlags:
        return
    # a change made by another thread is seen by a waiter polling without the GIL
    seen = []
    waiter = threading.Thread(target=lambda: seen.append(flags.wait(2, 5, 60.0)))
    waiter.start()
    flags.set(2, 5)
    waiter.join()
    assert seen == [True]
    with pytest.raises(IndexError):
        flags.get(3)
    with pytest.raises(IndexError):
        flags.wait(-1, 0, 0.0)
    with pytest.raises(ValueError):
        Flags(0)


@pytest.mark.parametrize("spin", [True, False], ids=["polling", "blocking"])
@pytest.mark.parametrize("Flags", _flag_kinds(), ids=lambda c: c.__name__)
def test_slice_pool_runs_slices_and_hands_back_errors(monkeypatch, Flags, spin):
    """A SlicePool gives each slice's value or exception back to its caller,
    from its own threads, whether they poll or block between slices; with no
    free thread, a slice runs on the caller's; callers in several threads at
    once each get their own results."""
    config = fastrnn._config
    monkeypatch.setattr(config, "_spin_flags", Flags)
    if not spin:
        monkeypatch.setattr(config, "POOL_SPIN_SECONDS", 0.0)
        monkeypatch.setattr(config, "WAIT_SPIN_SECONDS", 0.0)
    pool = config.SlicePool(2)
    caller = threading.get_ident()

    def where(x):
        return x * x, threading.get_ident()

    value, tid = pool.start(where, 3).result()
    assert value == 9 and tid != caller
    task = pool.start(lambda x: 1 // x, 0)
    with pytest.raises(ZeroDivisionError):
        task.result()
    assert pool.start(where, 4).result()[0] == 16  # the thread lives on

    # both threads busy: a third slice runs on the calling thread
    release = threading.Event()
    busy = [pool.start(lambda e: e.wait(), release) for _ in range(2)]
    value, tid = pool.start(where, 5).result()
    assert value == 25 and tid == caller
    release.set()
    assert [t.result() for t in busy] == [True, True]

    def calls(i):
        return [pool.start(lambda x: x + i, k).result() for k in range(200)]

    assert _run_threads(4, calls) == [[k + i for k in range(200)] for i in range(4)]


def test_slice_pool_survives_an_interrupted_wait(monkeypatch):
    """A caller interrupted (Ctrl-C) while it waits for a slice may wait again
    and gets the value; the pool thread frees itself either way, so the pool
    does not shrink (the caller's wait is forced onto its blocking path, whose
    first wait raises KeyboardInterrupt)."""
    config = fastrnn._config
    monkeypatch.setattr(config, "WAIT_SPIN_SECONDS", 0.0)
    pool = config.SlicePool(1)

    class Interrupting(threading.Condition):
        raised = False

        def wait(self, timeout=None):
            if not self.raised:
                self.raised = True
                raise KeyboardInterrupt
            return super().wait(timeout)

    pool._finished[0] = Interrupting()
    release = threading.Event()
    task = pool.start(lambda e: e.wait() and 7, release)
    with pytest.raises(KeyboardInterrupt):
        task.result()
    assert pool._waiting == [0]
    release.set()
    assert task.result() == 7
    assert pool._free == [0]  # freed before its slice was marked done
    assert pool.start(lambda a: threading.get_ident(), None).result() != \
        threading.get_ident()
