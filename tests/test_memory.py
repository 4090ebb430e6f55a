"""The reusing array allocator of :mod:`fastrnn._memory`.

Its blocks must hold what was written to them, never be handed out twice,
stay within the configured bound, come back zeroed where NumPy asks for zeros,
and leave every layer result exactly as with NumPy's own allocator.
"""

import os
import threading

import numpy as np
import pytest

from fastrnn import _config, _memory, nn

pytestmark = pytest.mark.skipif(
    _memory._HANDLER is None,
    reason="SKIPPED: the Cython extension is not built, so fastrnn._memory is a no-op")

MIN = 1 << 17


def _handler_name(a):
    try:  # NumPy 2
        from numpy._core.multiarray import get_handler_name
    except ImportError:  # NumPy 1.x
        from numpy.core.multiarray import get_handler_name
    return get_handler_name(a)


@pytest.fixture(autouse=True)
def _fresh_pool():
    _memory.release_memory()
    yield
    _memory.release_memory()


def test_range_matches_the_extension():
    from fastrnn._kernels._cython_kernels import REUSE_MIN_BYTES

    assert REUSE_MIN_BYTES == MIN


def test_freed_block_is_reused_for_the_same_size():
    with _memory.reuse_array_memory():
        a = np.empty(MIN, np.uint8)
        assert _handler_name(a) == "fastrnn_reuse"
        address = a.ctypes.data
        del a
        assert _memory.reused_bytes() == MIN
        b = np.empty(MIN, np.uint8)
        assert b.ctypes.data == address
        assert _memory.reused_bytes() == 0


def test_the_last_freed_of_equal_blocks_comes_back_first():
    """Of several kept blocks that fit equally, the one freed last is handed
    out: a call's arrays come back where its previous call had them (still
    in the caches), not in blocks another workload left long ago."""
    with _memory.reuse_array_memory():
        old = [np.empty(MIN, np.uint8) for _ in range(3)]
        recent = np.empty(MIN, np.uint8)
        address = recent.ctypes.data
        del old
        del recent
        assert _memory.reused_bytes() == 4 * MIN
        again = np.empty(MIN, np.uint8)
        assert again.ctypes.data == address
        # and the smallest that fits still goes before a larger one freed later
        small = np.empty(MIN + 8, np.uint8)
        small_address = small.ctypes.data
        large = np.empty(MIN + 4096, np.uint8)
        del small
        del large
        assert np.empty(MIN + 8, np.uint8).ctypes.data == small_address


def test_small_and_too_different_sizes_are_not_kept():
    with _memory.reuse_array_memory():
        a = np.empty(MIN - 1, np.uint8)
        del a
        assert _memory.reused_bytes() == 0
        a = np.empty(4 * MIN, np.uint8)
        address = a.ctypes.data
        del a
        b = np.empty(3 * MIN - 1, np.uint8)  # more than a quarter less: fresh
        assert b.ctypes.data != address
        assert _memory.reused_bytes() == 4 * MIN


def test_large_blocks_are_kept_up_to_the_bound(monkeypatch):
    """Blocks of any size from MIN up are kept (an S5 LSTM step's gates take
    105 MB a slice), but none larger than the whole bound."""
    big = 96 * MIN  # 24 MiB
    monkeypatch.setattr(_config, "REUSED_MEMORY_BYTES", 2 * big)
    with _memory.reuse_array_memory():
        a = np.empty(big, np.uint8)
        address = a.ctypes.data
        del a
        assert _memory.reused_bytes() == big
        b = np.empty(big - MIN, np.uint8)  # less than a quarter less: reused
        assert b.ctypes.data == address
        assert _memory.reused_bytes() == 0
        c = np.empty(2 * big + 1, np.uint8)
        del c
        assert _memory.reused_bytes() == 0  # over the bound: freed


def test_kept_memory_never_exceeds_the_most_in_use_at_once():
    """Arrays of ever new sizes, one at a time (a service's batches of new
    shapes): keeping every freed block would hold them all (404 MiB after 600
    random LSTM calls, against 46 MiB with blocks up to 4 MiB); the cache keeps
    no more than the most that was in use at once, here the largest."""
    sizes = [int(MIN * 1.3 ** k) for k in range(1, 16)]  # each > 5/4 the last
    with _memory.reuse_array_memory():
        for n in sizes:
            a = np.empty(n, np.uint8)
            assert _memory.blocks_in_use()[0] == n
            del a
        assert _memory.blocks_in_use() == (0, sizes[-1])
        assert _memory.reused_bytes() == sizes[-1]
        arrays = [np.empty(MIN, np.uint8) for _ in range(3)]  # too small for it
        assert _memory.blocks_in_use() == (3 * MIN, sizes[-1])
    _memory.release_memory()
    assert _memory.reused_bytes() == 0
    assert _memory.blocks_in_use() == (3 * MIN, 3 * MIN)  # counted anew
    del arrays
    assert _memory.blocks_in_use() == (0, 3 * MIN)
    assert _memory.reused_bytes() == 0  # the bound is off since the release


@pytest.mark.parametrize("n", [2 * MIN, 40 * MIN])
def test_zeros_from_a_kept_block_are_cleared(n):
    """``np.zeros`` takes a kept block when one fits (fresh zero pages cost a
    page fault each) and clears it; a block's larger tail (the quarter it may
    exceed the request by) is never read as the array."""
    with _memory.reuse_array_memory():
        a = np.empty(n // 4, np.float32)
        a.fill(np.nan)
        address = a.ctypes.data
        del a
        z = np.zeros(n // 4 - 1000, np.float32)
        assert z.ctypes.data == address
        assert not z.any()
        assert _memory.reused_bytes() == 0
        z2 = np.zeros((n // 16, 2), np.float64)  # calloc's two-argument size
        assert not z2.any()


def test_zeros_are_zero_and_empty_keeps_nothing_stale_shared():
    with _memory.reuse_array_memory():
        a = np.empty(MIN // 4, np.float32)
        a.fill(7.0)
        del a
        z = np.zeros(MIN // 4, np.float32)
        assert not z.any()
        blocks = [np.empty(MIN // 4, np.float32) for _ in range(3)]
        for k, b in enumerate(blocks):
            b.fill(k)
        for k, b in enumerate(blocks):  # three live arrays, three blocks
            assert (b == k).all()


def test_bound_and_release(monkeypatch):
    monkeypatch.setattr(_config, "REUSED_MEMORY_BYTES", 3 * MIN)
    with _memory.reuse_array_memory():
        arrays = [np.empty(MIN, np.uint8) for _ in range(5)]
        del arrays
        assert _memory.reused_bytes() == 3 * MIN
    _memory.release_memory()
    assert _memory.reused_bytes() == 0


def test_off_when_bound_is_zero(monkeypatch):
    with _memory.reuse_array_memory():
        kept = np.empty(MIN, np.uint8)  # allocated while reuse was on
        del kept
        live = np.empty(MIN, np.uint8)
    assert _memory.reused_bytes() == 0  # `kept`'s block went to `live`
    with _memory.reuse_array_memory():
        dropped = np.empty(2 * MIN, np.uint8)
    del dropped
    assert _memory.reused_bytes() == 2 * MIN
    monkeypatch.setattr(_config, "REUSED_MEMORY_BYTES", 0)
    with _memory.reuse_array_memory():
        assert _memory.reused_bytes() == 0  # turning it off frees what was kept
        a = np.empty(MIN, np.uint8)
    assert _handler_name(a) != "fastrnn_reuse"
    del live  # allocated under the handler, freed after reuse was turned off
    assert _memory.reused_bytes() == 0


def test_block_freed_after_the_context_returns_to_the_pool():
    with _memory.reuse_array_memory():
        a = np.empty(MIN, np.uint8)
    assert _handler_name(np.empty(MIN, np.uint8)) != "fastrnn_reuse"
    del a
    assert _memory.reused_bytes() == MIN


def test_resize_keeps_the_values():
    with _memory.reuse_array_memory():
        a = np.arange(MIN // 8, dtype=np.float64)
        a.resize(MIN // 2, refcheck=False)  # realloc through the handler
        np.testing.assert_array_equal(a[:MIN // 8], np.arange(MIN // 8))
        assert not a[MIN // 8:].any()


def test_threads_never_share_a_block():
    errors = []

    def work(seed):
        rng = np.random.default_rng(seed)
        try:
            with _memory.reuse_array_memory():
                for _ in range(200):
                    n = int(rng.integers(MIN // 8, MIN))
                    arrays = [np.empty(n, np.float64) for _ in range(3)]
                    for k, a in enumerate(arrays):
                        a.fill(seed * 10 + k)
                    for k, a in enumerate(arrays):
                        if not (a == seed * 10 + k).all():
                            errors.append((seed, k))
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(s,)) for s in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert _memory.reused_bytes() <= _config.REUSED_MEMORY_BYTES


@pytest.mark.parametrize("cls", [nn.RNN, nn.LSTM, nn.GRU])
def test_layer_results_equal_with_and_without_reuse(monkeypatch, cls):
    """A split training step (two slices) and an eval call, both twice so that
    the second call runs on reused blocks: bit-identical to reuse turned off."""
    monkeypatch.setattr(_config, "MIN_SAMPLES_PER_THREAD", 4)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((80, 16, 24)).astype(np.float32)
    lengths = rng.integers(1, 81, 16)
    # a slice's gate pre-activations take 80 * 8 * 128 * 4 bytes (or more): reused
    layer = cls(24, 128, num_layers=2, bidirectional=True, random_state=0)

    def step():
        with _config.layer_threads(2):
            layer.train()
            out, h_n = layer(x, lengths=lengths)
            gx, _ = layer.backward(np.ones_like(out))
            grads = {k: v.copy() for k, v in layer.grads.items()}
            layer.eval()
            return [out, gx, layer(x, lengths=lengths)[0]], grads

    results = {}
    for bound in (0, 256 << 20):
        monkeypatch.setattr(_config, "REUSED_MEMORY_BYTES", bound)
        step()
        results[bound] = step()
        assert (_memory.reused_bytes() > 0) == (bound > 0)
    (a, ga), (b, gb) = results[0], results[256 << 20]
    for u, v in zip(a, b):
        np.testing.assert_array_equal(u, v)
    for k in ga:
        np.testing.assert_array_equal(ga[k], gb[k], err_msg=k)


def test_arrays_stay_visible_to_tracemalloc():
    """The memory tests of test_serving.py measure with tracemalloc: array data
    from this allocator must be traced while an array holds it, as NumPy's own
    is, and not while the pool keeps it (NumPy tracks around every handler
    call; this checks that it still does with ours)."""
    import tracemalloc

    tracemalloc.start()
    try:
        with _memory.reuse_array_memory():
            before = tracemalloc.get_traced_memory()[0]
            a = np.empty(MIN, np.uint8)
            held = tracemalloc.get_traced_memory()[0] - before
            del a
            kept = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert MIN <= held < MIN + 4096
    assert kept < 4096
    assert _memory.reused_bytes() == MIN


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_kernel_work_buffers_come_from_the_kept_blocks(dtype):
    """The Cython kernels' own work buffers (packed weights, per-step rows)
    are taken from, and given back to, the same kept blocks as the arrays
    (fresh memory costs a page fault per 4 KiB), 64-byte aligned as the
    packed panels need; NumPy's data from the allocator is aligned alike."""
    from fastrnn._kernels import _cython_kernels as K

    rng = np.random.default_rng(0)
    T, B, D, H = 3, 512, 8, 128  # a (B, H) row buffer: 256 KiB in float32
    x = rng.standard_normal((T, B, D)).astype(dtype)
    w_ih = rng.standard_normal((4 * H, D)).astype(dtype)
    w_hh = rng.standard_normal((4 * H, H)).astype(dtype)
    bias = np.zeros(4 * H, dtype)
    lengths = np.full(B, T, np.int64)
    h, c = np.zeros((B, H), dtype), np.zeros((B, H), dtype)
    out = np.empty((T, B, H), dtype)
    gates, cs = np.empty((T, B, 4 * H), dtype), np.empty((T, B, H), dtype)
    args = (x, w_ih, bias, w_hh, np.zeros((0, 0), dtype), np.zeros((0, H), dtype),
            lengths, False, True, h, c, out, gates, cs, np.zeros((0, 0, 0), dtype))

    def run():
        h[:] = 0  # the kernel carries the state in place
        c[:] = 0
        K.lstm_forward(*args)

    with _memory.reuse_array_memory():
        assert _memory.reused_bytes() == 0
        run()  # allocates no NumPy array: kernel buffers only
        kept = _memory.reused_bytes()
        assert kept >= MIN
        again = np.empty(kept // np.dtype(dtype).itemsize, dtype)
        assert again.ctypes.data % 64 == 0
        del again
        run()  # takes its buffers back, and returns them
        assert _memory.reused_bytes() == kept
        expected = out.copy()
    _memory.release_memory()
    run()  # nothing kept: the buffers are freed, same result
    assert _memory.reused_bytes() == 0
    np.testing.assert_array_equal(out, expected)


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_fit_gives_the_kept_memory_back_and_partial_fit_keeps_it():
    """Between a fit's steps the blocks are reused; when the fit ends they go
    back (up to 1 GiB would otherwise stay with an idle estimator), while
    partial_fit, called again and again, keeps them for its next call."""
    from fastrnn import RNNClassifier

    rng = np.random.default_rng(0)
    X = rng.standard_normal((64, 40, 4)).astype(np.float32)
    y = (X[:, :, 0].sum(axis=1) > 0).astype(int)
    # a step's gates: 40 * 64 * 4 * 64 floats = 2.6 MB, kept between steps
    clf = RNNClassifier(cell="lstm", hidden_layer_sizes=(64,), batch_size=64,
                        max_iter=2, random_state=0)
    clf.partial_fit(X, y, classes=[0, 1])
    assert _memory.reused_bytes() >= MIN
    clf.fit(X, y)
    assert _memory.reused_bytes() == 0


@pytest.mark.skipif(not hasattr(os, "fork"), reason="SKIPPED: no os.fork on this platform")
@pytest.mark.parametrize("held", [False, True])
def test_fork_keeps_a_whole_cache_and_forgets_a_torn_one(held):
    """A child forked while another thread held the allocator's lock (a kernel
    taking a work buffer, without the GIL, halfway through an update) may have
    a torn copy of the cache: it forgets the kept blocks instead of handing
    one out twice. Forked with the lock free, it keeps them. Either way the
    child allocates and frees as usual."""
    from fastrnn._kernels._cython_kernels import _hold_reuse_lock

    with _memory.reuse_array_memory():
        a = np.empty(2 * MIN, np.uint8)
        del a
        assert _memory.reused_bytes() == 2 * MIN
        if held:
            _hold_reuse_lock(True)
        try:
            pid = os.fork()
        finally:
            if held and pid != 0:
                _hold_reuse_lock(False)
        if pid == 0:  # the child: report through the exit status only
            code = 1
            try:
                kept = _memory.reused_bytes()
                b = np.empty(2 * MIN, np.uint8)
                b.fill(3)
                reused = kept and _memory.reused_bytes() == 0
                del b
                ok = (kept == (0 if held else 2 * MIN) and (reused or held)
                      and _memory.reused_bytes() == 2 * MIN)
                code = 0 if ok else 2
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, status
    assert _memory.reused_bytes() == 2 * MIN  # the parent's cache untouched


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_predict_trims_the_kept_memory(monkeypatch):
    """A prediction leaves at most KEPT_AFTER_PREDICT_BYTES kept: a service's
    small requests keep reusing their blocks, a large batch leaves no more
    than the bound behind (the whole bound: 429 MiB after 4096 sequences of
    200 steps through an LSTM(128, 128)). fastrnn.serving's predictors run
    the same fastrnn._inference code."""
    from fastrnn import RNNClassifier

    rng = np.random.default_rng(0)
    X = rng.standard_normal((32, 30, 4)).astype(np.float32)
    y = (X[:, :, 0].sum(axis=1) > 0).astype(int)
    clf = RNNClassifier(cell="gru", hidden_layer_sizes=(64,), max_iter=1,
                        random_state=0).fit(X, y)
    big = rng.standard_normal((256, 60, 4)).astype(np.float32)
    clf.predict(big)  # blocks of 60 * 256 * 64 floats (3.9 MB) and more
    kept = _memory.reused_bytes()
    assert MIN <= kept <= _config.KEPT_AFTER_PREDICT_BYTES
    expected = clf.predict_proba(big)
    monkeypatch.setattr(_config, "KEPT_AFTER_PREDICT_BYTES", 2 * MIN)
    np.testing.assert_array_equal(clf.predict_proba(big), expected)
    assert _memory.reused_bytes() <= 2 * MIN
    monkeypatch.setattr(_config, "KEPT_AFTER_PREDICT_BYTES", 0)
    clf.predict(big)
    assert _memory.reused_bytes() == 0
