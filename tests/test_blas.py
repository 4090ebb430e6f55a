"""fastrnn._blas.matmul (the layers' big products) against NumPy's ``@``."""

import numpy as np
import pytest

from fastrnn import _blas


@pytest.mark.parametrize("use_kernels_blas", [True, False], ids=["kernels-blas", "numpy"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("trans_a", [False, True])
@pytest.mark.parametrize("trans_b", [False, True])
def test_matmul_matches_numpy(monkeypatch, use_kernels_blas, dtype, trans_a, trans_b):
    if use_kernels_blas and _blas._gemm is None:
        pytest.skip("SKIPPED LOUDLY: the Cython extension is not built")
    if not use_kernels_blas:
        monkeypatch.setattr(_blas, "_gemm", None)
    rng = np.random.default_rng(0)
    m, k, n = 7, 5, 3
    a = rng.standard_normal((k, m) if trans_a else (m, k)).astype(dtype)
    b = rng.standard_normal((n, k) if trans_b else (k, n)).astype(dtype)
    want = (a.T if trans_a else a).astype(np.float64) @ (b.T if trans_b else b)
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == np.float32 else dict(rtol=1e-12)

    got = _blas.matmul(a, b, trans_a, trans_b)
    assert got.dtype == dtype and got.flags.c_contiguous
    np.testing.assert_allclose(got, want, **tol)

    acc = np.full((m, n), 2.0, dtype)
    assert _blas.matmul(a, b, trans_a, trans_b, out=acc, accumulate=True) is acc
    np.testing.assert_allclose(acc, want + 2.0, **tol)

    over = np.full((m, n), np.nan, dtype)  # overwritten, not scaled: NaN must go
    _blas.matmul(a, b, trans_a, trans_b, out=over)
    np.testing.assert_allclose(over, want, **tol)


@pytest.mark.parametrize("panels", [True, False], ids=["panels", "blas"])
@pytest.mark.parametrize("k,m,n", [
    (1, 1, 1), (5, 7, 3), (300, 13, 45), (257, 8, 32),  # blocks of 8 by 32, and rests
    (600, 9, 100), (300, 40, 40), (1568, 32, 32),
    (513, 33, 31), (1000, 128, 8), (40, 70, 1),         # n < 32 <= m: stored transposed
    (2100, 64, 64),           # over 2^23 multiply-adds: the kernel's with one_thread only
    # larger still: the packed kernel's with one_thread (chunks of 192 rows and a
    # rest; blocks of 8 and panels of 32 with rests of either half, or none)
    (700, 300, 45), (700, 300, 50), (400, 200, 129), (1100, 520, 20),
])
@pytest.mark.parametrize("one_thread", [True, False], ids=["one-thread", "any"])
def test_weight_gradient_products_within_the_float32_bound(k, m, n, panels, one_thread):
    """``a.T @ b`` in float32 (the weight gradients' form, which runs on the
    Cython tn kernel when the panels are on and the product is small, or has
    few outputs with BLAS held on one thread; on the packed tn kernel when
    larger with BLAS held on one thread; else on BLAS) against a float64
    product of the same numbers, within the bound of a k-term float32 dot
    product, ``(k + 2) u (|a|.T @ |b|)``, doubled for the kernel's chunks of
    k and the added ``c``."""
    if _blas._gemm is None:
        pytest.skip("SKIPPED LOUDLY: the Cython extension is not built")
    from fastrnn._kernels import _cython_kernels as kern

    rng = np.random.default_rng(k + m + n)
    a = rng.standard_normal((k, m)).astype(np.float32)
    b = rng.standard_normal((k, n)).astype(np.float32)
    c0 = rng.standard_normal((m, n)).astype(np.float32)
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    want = a64.T @ b64
    bound = 2 * (k + 2) * 2.0 ** -24 * (np.abs(a64).T @ np.abs(b64) + np.abs(c0))
    was = kern.panel_products()
    kern.set_panel_products(panels)
    try:
        got = np.full((m, n), np.nan, np.float32)  # overwritten, not added to
        _blas._gemm(a, b, got, True, False, 0.0, one_thread)
        acc = c0.copy()
        _blas._gemm(a, b, acc, True, False, 1.0, one_thread)
    finally:
        kern.set_panel_products(was)
    assert np.all(np.abs(got - want) <= bound)
    assert np.all(np.abs(acc - (want + c0)) <= bound)


@pytest.mark.parametrize("k,m,n,one_thread,kernel", [
    (1568, 32, 32, False, True),     # small: the kernel's
    (1000, 128, 8, False, True),     # small, stored transposed
    (2100, 64, 64, True, True),      # over 2^23 multiply-adds, 2^12 outputs, BLAS held
    (2100, 64, 64, False, False),    # the same, BLAS free to use its threads
    (600, 128, 129, True, True),     # over 2^14 outputs: the packed kernel's
    (2100, 512, 32, True, True),     # 2^14 outputs, but of rows over 256 long: packed
    (600, 128, 129, False, False),   # the same, BLAS free to use its threads
    (1100, 520, 20, True, True),     # packed, stored transposed
])
def test_weight_gradient_products_take_the_documented_path(k, m, n, one_thread, kernel):
    """gemm's choice between the tn kernels (in place or packed) and BLAS,
    seen in the last bits: they sum in different orders, so over hundreds of
    rows their float32 results differ somewhere when a kernel ran, and are
    identical (BLAS both times) when none did."""
    if _blas._gemm is None:
        pytest.skip("SKIPPED LOUDLY: the Cython extension is not built")
    from fastrnn._kernels import _cython_kernels as kern

    if not kern.PANELS_AVAILABLE:
        pytest.skip("SKIPPED LOUDLY: the tn kernel needs AVX-512 (and gcc or clang); "
                    "BLAS runs every product here")
    rng = np.random.default_rng(k * m + n)
    a = rng.standard_normal((k, m)).astype(np.float32)
    b = rng.standard_normal((k, n)).astype(np.float32)
    got = {}
    was = kern.panel_products()
    try:
        for on in (True, False):
            kern.set_panel_products(on)
            got[on] = np.empty((m, n), np.float32)
            _blas._gemm(a, b, got[on], True, False, 0.0, one_thread)
    finally:
        kern.set_panel_products(was)
    assert np.array_equal(got[True], got[False]) is not kernel


def _previous_states(out, h0, lengths, reverse):
    """h_{t-1} of every (t, b), by loops over the definition: ``out`` one step
    back (forward) or ahead (reverse), ``h0`` at each sample's first step;
    zero on the padding, whose gate gradients are zero."""
    T, B, R = out.shape
    hp = np.zeros((T, B, R))
    for b in range(B):
        first = lengths[b] - 1 if reverse else 0
        for t in range(lengths[b]):
            hp[t, b] = h0[b] if t == first else out[t + 1 if reverse else t - 1, b]
    return hp


_WEIGHT_PRODUCTS = [  # T, B, M, D, R: each over 2^23 multiply-adds, M > 256
    (120, 7, 300, 13, 45),   # blocks of 8 and panels of 32 with rests
    (120, 7, 300, 40, 0),    # an input weight alone (the GRU's W_ih)
    (120, 7, 300, 0, 45),    # a state weight alone (the GRU's W_hh)
    (400, 5, 600, 3, 20),    # n < 32 < m: stored transposed
]


@pytest.mark.parametrize("T,B,M,D,R", _WEIGHT_PRODUCTS)
@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("steps", ["full", "padded", "gathered"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no-bias"])
def test_weight_product_reads_the_rows_in_place(T, B, M, D, R, reverse, steps, bias):
    """``weight_product`` (the packed tn kernel reading the gate gradients, the
    input and the shifted states in place, with the bias's column sums)
    against a float64 product of operands gathered by loops, within the
    bound of a k-term float32 sum, ``2 (k + 2) u (|dg|.T @ |[x | h]|)``."""
    if _blas._weight_product is None:
        pytest.skip("SKIPPED LOUDLY: the Cython extension is not built")
    from fastrnn._kernels import _cython_kernels as kern

    if not kern.PANELS_AVAILABLE:
        pytest.skip("SKIPPED LOUDLY: the packed tn kernel needs AVX-512 (and gcc or "
                    "clang); the layers gather the operands for BLAS here")
    rng = np.random.default_rng([T, M, D, R, reverse])
    lengths = np.full(B, T, np.int64)
    if steps != "full":  # sorted, longest first, as the layers pass them
        lengths = np.sort(rng.integers(T * 3 // 4, T + 1, B))[::-1].copy()
        lengths[0] = T
    valid = np.arange(T)[:, None] < lengths[None, :]
    dg = rng.standard_normal((T, B, M)).astype(np.float32) * valid[:, :, None]
    x = rng.standard_normal((T, B, D)).astype(np.float32)
    out = (rng.standard_normal((T, B, R)) * valid[:, :, None]).astype(np.float32)
    h0 = rng.standard_normal((B, R)).astype(np.float32)
    rows = np.flatnonzero(valid) if steps == "gathered" else None
    xh = np.concatenate([x, _previous_states(out, h0, lengths, reverse)], axis=2)
    sel = valid.reshape(-1) if steps == "gathered" else slice(None)
    a64 = dg.reshape(T * B, M)[sel].astype(np.float64)
    b64 = xh.reshape(T * B, D + R)[sel]
    k = a64.shape[0]
    bound = 2 * (k + 2) * 2.0 ** -24 * (np.abs(a64).T @ np.abs(b64))
    got = _blas.weight_product(dg.reshape(T * B, M), rows,
                               x.reshape(T * B, D) if D else None,
                               out.reshape(T * B, R) if R else None, h0, lengths,
                               reverse, bias)
    assert got is None  # BLAS not held on one thread: the product is BLAS's
    from fastrnn._config import single_threaded_blas

    with single_threaded_blas():
        got = _blas.weight_product(dg.reshape(T * B, M), rows,
                                   x.reshape(T * B, D) if D else None,
                                   out.reshape(T * B, R) if R else None, h0, lengths,
                                   reverse, bias)
    assert got is not None
    c, sums = got
    assert c.shape == (M, D + R) and c.dtype == np.float32 and c.flags.c_contiguous
    assert np.all(np.abs(c - a64.T @ b64) <= bound)
    if bias:
        sum_bound = 2 * (k + 2) * 2.0 ** -24 * np.abs(a64).sum(axis=0)
        assert np.all(np.abs(sums - a64.sum(axis=0)) <= sum_bound)
    else:
        assert sums is None


def test_weight_product_leaves_small_products_and_bad_rows():
    """None (nothing done) where gemm would not take the packed kernel: a
    small product, or the panels off; an index or length out of range is an
    error, not a read out of bounds."""
    if _blas._weight_product is None:
        pytest.skip("SKIPPED LOUDLY: the Cython extension is not built")
    from fastrnn._config import single_threaded_blas
    from fastrnn._kernels import _cython_kernels as kern

    if not kern.PANELS_AVAILABLE:
        pytest.skip("SKIPPED LOUDLY: the packed tn kernel needs AVX-512")
    T, B, M, D, R = 120, 7, 300, 13, 45
    dg = np.ones((T * B, M), np.float32)
    x, out = np.ones((T * B, D), np.float32), np.ones((T * B, R), np.float32)
    h0, lengths = np.ones((B, R), np.float32), np.full(B, T, np.int64)
    with single_threaded_blas():
        assert _blas.weight_product(dg[:200], None, x[:200], None, h0, lengths, False,
                                    True) is None  # 300 x 13 over 200 rows: small
        was = kern.set_panel_products(False)
        try:
            assert _blas.weight_product(dg, None, x, out, h0, lengths, False, True) is None
        finally:
            kern.set_panel_products(was)
        rows = np.arange(T * B, dtype=np.int64)
        rows[-1] = T * B
        with pytest.raises(IndexError, match="outside"):
            _blas.weight_product(dg, rows, x, out, h0, lengths, False, True)
        bad = lengths.copy()
        bad[3] = T + 1
        with pytest.raises(ValueError, match="outside"):
            _blas.weight_product(dg, None, x, out, h0, bad, True, True)


def test_matmul_empty_inner_dimension_is_zero():
    a, b = np.ones((4, 0), np.float32), np.ones((0, 3), np.float32)
    np.testing.assert_array_equal(_blas.matmul(a, b), np.zeros((4, 3)))
    acc = np.ones((4, 3), np.float32)
    _blas.matmul(a, b, out=acc, accumulate=True)
    np.testing.assert_array_equal(acc, np.ones((4, 3)))


def test_gemm_rejects_mismatched_shapes():
    if _blas._gemm is None:
        pytest.skip("SKIPPED LOUDLY: the Cython extension is not built")
    a, b, c = (np.ones(s, np.float32) for s in [(4, 5), (6, 3), (4, 3)])
    with pytest.raises(ValueError, match=r"op\(a\) is \(4, 5\), op\(b\) is \(6, 3\)"):
        _blas._gemm(a, b, c, False, False, 0.0)


def _subnormal_product():
    """1e-30 * 1e-10 in float32: 1e-40, a subnormal number, or 0 when flushed."""
    return float(np.array([1e-30], np.float32)[0] * np.float32(1e-10))


def test_flush_denormals_flushes_inside_and_restores():
    if _blas._set_ftz is None:
        pytest.skip("SKIPPED LOUDLY: the Cython extension is not built")
    from fastrnn._kernels import _cython_kernels

    if not _cython_kernels.HAS_FLUSH_DENORMALS:
        pytest.skip("SKIPPED LOUDLY: no flush-to-zero control on this CPU")
    assert _subnormal_product() > 0  # IEEE default outside
    with _blas.flush_denormals():
        assert _subnormal_product() == 0.0
    assert _subnormal_product() > 0
    # a caller's own mix of the two bits (flush-to-zero alone) comes back as it was
    ftz_only = 0x8000
    was = _cython_kernels.set_flush_denormals(ftz_only)
    try:
        with _blas.flush_denormals():
            pass
        assert _cython_kernels.set_flush_denormals(ftz_only) == ftz_only
    finally:
        _cython_kernels.set_flush_denormals(was)


@pytest.mark.parametrize("min_samples", [10 ** 9, 2], ids=["whole", "split"])
def test_layer_call_leaves_subnormals_alone_in_the_callers_thread(monkeypatch,
                                                                  min_samples):
    import fastrnn._config as config
    from fastrnn.nn import LSTM

    monkeypatch.setattr(config, "MIN_SAMPLES_PER_THREAD", min_samples)
    layer = LSTM(3, 4, random_state=0)
    with config.thread_limit(2):
        out, _ = layer(np.ones((5, 6, 3), np.float32))
        layer.backward(np.ones_like(out))
    assert _subnormal_product() > 0


def test_cython_blas_is_loaded_without_scipy_linalg_and_stays_whole():
    """fastrnn loads scipy.linalg.cython_blas without scipy.linalg's __init__
    (fastrnn._kernels._scipy_blas). In a fresh process: the layers of every
    backend compute what the reference backend does without scipy.linalg being
    imported, and once something imports scipy.linalg, the package is whole:
    its cython_blas attribute is the one module, its BLAS computes, the watcher
    is gone."""
    import subprocess
    import sys

    code = """
import sys
import numpy as np
import fastrnn, fastrnn.nn as nn
from fastrnn._kernels import _scipy_blas

x = np.random.RandomState(0).standard_normal((6, 3, 5)).astype(np.float32)
outs = {}
for backend in fastrnn.available_backends():
    layer = nn.LSTM(5, 4, backend=backend, random_state=0).eval()
    outs[backend] = layer(x)[0]
for backend, out in outs.items():
    np.testing.assert_allclose(out, outs["reference"], rtol=1e-5, atol=1e-6)
assert "scipy.linalg.cython_blas" in sys.modules
assert "scipy.linalg" not in sys.modules, "the kernels imported scipy.linalg"
assert any(isinstance(f, _scipy_blas._AttachToPackage) for f in sys.meta_path)

import scipy.linalg
import scipy.linalg.cython_blas
assert scipy.linalg.cython_blas is sys.modules["scipy.linalg.cython_blas"]
assert not any(isinstance(f, _scipy_blas._AttachToPackage) for f in sys.meta_path)
a = np.arange(6, dtype=np.float32).reshape(2, 3)
assert np.array_equal(scipy.linalg.blas.sgemm(1.0, a, a.T), a @ a.T)
assert sorted(outs) == sorted(fastrnn.available_backends()) and len(outs) >= 2
"""
    subprocess.run([sys.executable, "-c", code], check=True)


def test_preload_leaves_an_imported_scipy_linalg_alone():
    """Where scipy.linalg is imported already, the ordinary import is used."""
    import scipy.linalg  # noqa: F401 (imported before, as in this process)

    from fastrnn._kernels import _scipy_blas

    assert _scipy_blas.preload() is False


@pytest.mark.parametrize("use_kernels", [True, False], ids=["cython", "numpy"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_take_rows_matches_numpy_indexing(monkeypatch, use_kernels, dtype):
    """take_rows (the batch permutation and the valid-step gather) against NumPy's
    indexing: 3-D views with any strides but a contiguous last axis, 2-D arrays,
    an empty index, and views it hands to NumPy (last axis strided)."""
    if use_kernels and _blas._take_rows is None:
        pytest.skip("SKIPPED LOUDLY: the Cython extension is not built")
    if not use_kernels:
        monkeypatch.setattr(_blas, "_take_rows", None)
    rng = np.random.default_rng(0)
    base = rng.standard_normal((5, 9, 6)).astype(dtype)
    index = rng.permutation(7).astype(np.int64)[:5]
    views = [base, base[:, 1:8], base[:, :, 2:5], base[::2, ::-1], base[:, :, ::2]]
    for a in views:
        got = _blas.take_rows(a, index)
        assert got.flags.c_contiguous and got.dtype == dtype
        assert np.array_equal(got, a[:, index])
        assert _blas.take_rows(a, index[:0]).shape == (a.shape[0], 0, a.shape[2])
    flat = base.reshape(45, 6)
    rows = np.array([44, 0, 3, 3], np.int64)
    assert np.array_equal(_blas.take_rows(flat, rows), flat[rows])
    strided = np.arange(8, dtype=np.int64)[::2]  # a non-contiguous index
    assert np.array_equal(_blas.take_rows(base, strided), base[:, strided])
    with pytest.raises(IndexError):  # unlike NumPy, never counted from the end
        _blas.take_rows(base, np.array([0, -1], np.int64))


@pytest.mark.parametrize("use_kernels", [True, False], ids=["cython", "numpy"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_put_rows_matches_numpy_assignment(monkeypatch, use_kernels, dtype):
    """put_rows (each thread's part of a ragged batch back among the whole
    batch's samples) against NumPy's ``out[:, index] = src``: into views with
    any strides but a contiguous last axis, with an empty index, and refusing
    out-of-range and negative indices before it copies anything."""
    if use_kernels and _blas._put_rows is None:
        pytest.skip("SKIPPED LOUDLY: the Cython extension is not built")
    if not use_kernels:
        monkeypatch.setattr(_blas, "_put_rows", None)
    rng = np.random.default_rng(2)
    index = rng.permutation(9).astype(np.int64)[:5]
    src = rng.standard_normal((4, 5, 3)).astype(dtype)
    for make in (lambda: np.zeros((4, 9, 3), dtype),
                 lambda: np.zeros((8, 11, 3), dtype)[::2, 1:10],
                 lambda: np.zeros((4, 9, 6), dtype)[:, :, 2:5]):
        got, want = make(), make()
        _blas.put_rows(src, index, got)
        want[:, index] = src
        assert np.array_equal(got, want)
        _blas.put_rows(src[:, :0], index[:0], got)
        assert np.array_equal(got, want)
    for bad in ([0, 9, 1, 2, 3], [0, -1, 1, 2, 3]):
        out = np.zeros((4, 9, 3), dtype)
        with pytest.raises(IndexError):
            _blas.put_rows(src, np.array(bad, np.int64), out)
        assert not out.any()
    out = np.zeros((4, 9, 3), dtype)
    other = np.float32 if dtype == np.float64 else np.float64
    for s, i in [(src[:, :2], index), (src.astype(other), index),
                 (src, index.astype(bool)), (src, index[:, None])]:
        with pytest.raises(ValueError, match="put_rows"):
            _blas.put_rows(s, i, out)
    assert not out.any()


@pytest.mark.parametrize("use_kernels", [True, False], ids=["cython", "numpy"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_column_sums_match_a_float64_sum(monkeypatch, use_kernels, dtype):
    """column_sums (the bias gradients) against NumPy's float64 sum of the same
    numbers, within the bound of an n-term sum in the dtype; for empty shapes,
    views and NaN it equals NumPy's own result."""
    if use_kernels and _blas._column_sums is None:
        pytest.skip("SKIPPED LOUDLY: the Cython extension is not built")
    if not use_kernels:
        monkeypatch.setattr(_blas, "_column_sums", None)
    rng = np.random.default_rng(1)
    eps = np.finfo(dtype).eps
    for n, m in [(1, 1), (7, 3), (1600, 128), (300, 513)]:
        a = rng.standard_normal((n, m)).astype(dtype)
        got = _blas.column_sums(a)
        assert got.shape == (m,) and got.dtype == dtype
        want = a.astype(np.float64).sum(axis=0)
        bound = (n + 1) * eps * np.abs(a).astype(np.float64).sum(axis=0)
        assert np.all(np.abs(got - want) <= bound)
    base = rng.standard_normal((6, 8)).astype(dtype)
    for a in (base[::2], base[:, 1:5], np.zeros((0, 4), dtype), np.zeros((3, 0), dtype)):
        np.testing.assert_allclose(_blas.column_sums(a), a.sum(axis=0),
                                   rtol=10 * eps, atol=10 * eps)
    base[2, 3] = np.nan
    assert np.isnan(_blas.column_sums(base)[3]) and not np.isnan(_blas.column_sums(base)[2])


def test_column_sums_rejects_a_wrong_output():
    kernels = pytest.importorskip("fastrnn._kernels._cython_kernels")
    with pytest.raises(ValueError, match="column_sums"):
        kernels.column_sums(np.ones((3, 4)), np.empty(3))


@pytest.mark.parametrize("bad", [9, -1, 2 ** 40])
def test_take_rows_refuses_out_of_range_indices(bad):
    """Every index is checked before a byte is copied (the kernel has no bounds
    checks): IndexError, and the output untouched."""
    if _blas._take_rows is None:
        pytest.skip("SKIPPED LOUDLY: the Cython extension is not built")
    a = np.ones((2, 9, 3), np.float32)
    out = np.full((2, 3, 3), 7.0, np.float32)
    with pytest.raises(IndexError, match="out of range"):
        _blas._take_rows(a, np.array([0, bad, 1], np.int64), out)
    assert (out == 7.0).all()
    with pytest.raises(ValueError, match="expected"):
        _blas._take_rows(a, np.array([0, 1], np.int64), out)


def test_preload_is_safe_against_a_concurrent_import():
    """While fastrnn loads cython_blas (its exec widened here by a sleep), another
    thread importing scipy.linalg waits for the finished module, as it would for
    any import, instead of taking a half-made one."""
    import subprocess
    import sys

    code = """
import sys, threading, time, importlib.machinery as M
orig = M.ExtensionFileLoader.exec_module
def slow(self, module):
    if module.__name__ == "scipy.linalg.cython_blas":
        time.sleep(0.3)
    return orig(self, module)
M.ExtensionFileLoader.exec_module = slow
errors = []
def other():
    time.sleep(0.1)
    try:
        import scipy.linalg
        from scipy.linalg import cython_blas, lu_factor
        cython_blas.__pyx_capi__
    except BaseException as exc:
        errors.append(repr(exc))
import scipy, numpy
thread = threading.Thread(target=other)
thread.start()
import fastrnn.nn
thread.join()
assert not errors, errors
import scipy.linalg
assert scipy.linalg.cython_blas is sys.modules["scipy.linalg.cython_blas"]
"""
    subprocess.run([sys.executable, "-c", code], check=True)
