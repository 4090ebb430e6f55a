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
