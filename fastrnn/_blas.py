"""The layers' big matrix products, through the same BLAS as the kernels.

NumPy's and SciPy's wheels each bundle an OpenBLAS of their own. The compiled
kernels call SciPy's (``scipy.linalg.cython_blas``, which Numba's ``np.dot``
uses too). When the layers did their products over all time steps with NumPy's
``@``, the two libraries' thread pools took turns, and the threads of one,
spinning after their call, took the cores from the other: an LSTM forward at
B=256, T=100, H=128 on two threads took 95 ms, against 50 ms with either
library limited to one thread. So every product of the layers goes through
:func:`matmul`, which calls SciPy's BLAS from the Cython extension (without the
GIL: ``scipy.linalg.blas`` holds it) and falls back to NumPy where that is not
built, or for shapes BLAS's 32-bit integers cannot hold.
"""

from contextlib import contextmanager

import numpy as np

from ._config import blas_held_single_threaded

try:
    from ._kernels._cython_kernels import gemm as _gemm
    from ._kernels._cython_kernels import take_rows as _take_rows
    from ._kernels._cython_kernels import put_rows as _put_rows
    from ._kernels._cython_kernels import column_sums as _column_sums
    from ._kernels._cython_kernels import FLUSH_DENORMALS_BITS as _FTZ_BITS
    from ._kernels._cython_kernels import set_flush_denormals as _set_ftz
    from ._kernels._cython_kernels import weight_product as _weight_product
    from ._kernels._cython_kernels import set_row_split as _set_row_split
    from ._kernels._cython_kernels import input_gradient as _input_gradient
except ImportError:  # extension not built: NumPy's BLAS and indexing, subnormals kept
    _gemm = _take_rows = _put_rows = _column_sums = _set_ftz = _FTZ_BITS = None
    _weight_product = _set_row_split = _input_gradient = None

_INT32_MAX = 2 ** 31 - 1


def matmul(a, b, trans_a=False, trans_b=False, out=None, accumulate=False):
    """``op(a) @ op(b)``, added to ``out`` when ``accumulate``, else stored in it.

    ``a`` and ``b`` are 2-D arrays of one float dtype; ``op`` transposes when
    ``trans_a`` / ``trans_b`` is true. ``out`` (C-contiguous, that dtype) is
    allocated when None. Returns ``out``.
    """
    a = np.ascontiguousarray(a)
    b = np.ascontiguousarray(b)
    m, k = a.shape[::-1] if trans_a else a.shape
    n = b.shape[0] if trans_b else b.shape[1]
    if out is None:
        out = np.zeros((m, n), a.dtype) if accumulate else np.empty((m, n), a.dtype)
    if _gemm is not None and 0 < min(m, n, k) and max(m, n, k) <= _INT32_MAX \
            and a.dtype == b.dtype == out.dtype and out.flags.c_contiguous:
        _gemm(a, b, out, trans_a, trans_b, 1.0 if accumulate else 0.0,
              blas_held_single_threaded())
        return out
    prod = (a.T if trans_a else a) @ (b.T if trans_b else b)
    if accumulate:
        out += prod
    else:
        out[...] = prod
    return out


def weight_product(dg, rows, x, out, h0, lengths, reverse, bias):
    """One direction's weight gradients with their operands read in place,
    where the Cython extension's packed kernel takes the product (float32
    on AVX-512, large products with BLAS held on one thread: see its
    ``gemm``): ``(dg[rows].T @ [x[rows] | h_prev[rows]], dg[rows].sum(0))``,
    the sums None unless ``bias``. Else None: the caller then gathers the
    operands and calls :func:`matmul` and :func:`column_sums`.

    ``dg`` (T * B, M), ``x`` (T * B, D) and ``out`` (T * B, R) hold every
    step's rows (step t, sample b at row t * B + b), ``x`` or ``out`` None
    to leave it out; ``rows`` the rows to sum over, or None for all;
    ``h_prev`` is ``out`` one step back (or ahead, ``reverse``) and ``h0``
    (B, R) at each sample's first step (see ``_cython_kernels.weight_product``).
    """
    if _weight_product is None or dg.dtype != np.float32:
        return None
    return _weight_product(dg, rows, x, out, h0, lengths, reverse, bias,
                           blas_held_single_threaded())


def column_sums(a):
    """``a.sum(axis=0)`` of a 2-D float array, as a product with a vector of
    ones through the kernels' BLAS (4x NumPy's reduction at 1600 x 128 float32,
    2x at 6400 x 512) where the Cython extension is built."""
    if (_column_sums is not None and a.dtype in (np.float32, np.float64)
            and max(a.shape) <= _INT32_MAX):
        out = np.empty(a.shape[1], a.dtype)
        _column_sums(np.ascontiguousarray(a), out)
        return out
    return a.sum(axis=0)


def take_rows(a, index):
    """``a[:, index]`` for a 3-D float array (``a[index]`` for a 2-D one): a new
    C-contiguous array. ``index`` holds int64 positions in ``[0, n)``; unlike
    NumPy's, a negative one is refused (``IndexError``), not counted from the
    end. Copied without the GIL where the Cython extension is built, since
    the batch slices' threads gather at once; ``a`` may be any view whose
    last axis is contiguous (others go through NumPy)."""
    flat = a.ndim == 2
    a3 = a[None] if flat else a
    if (_take_rows is not None and a3.dtype in (np.float32, np.float64)
            and index.dtype == np.int64 and a3.strides[2] == a3.itemsize):
        out = np.empty((a3.shape[0], index.shape[0], a3.shape[2]), a3.dtype)
        _take_rows(a3, np.ascontiguousarray(index), out)
        return out[0] if flat else out
    if index.size and index.min() < 0:
        raise IndexError(f"take_rows: negative index {index.min()}")
    return np.ascontiguousarray(a[index] if flat else a[:, index])


def put_rows(src, index, out):
    """``out[:, index] = src`` for 3-D float arrays (the inverse of
    :func:`take_rows`); without the GIL where the Cython extension is built.
    ``index`` holds int64 positions in ``[0, out.shape[1])``, a negative one is
    refused (``IndexError``); ``out``'s last axis must be contiguous for the
    GIL-free copy (others go through NumPy)."""
    if (index.ndim != 1 or index.dtype.kind not in "iu" or src.ndim != 3
            or out.ndim != 3 or src.dtype != out.dtype
            or src.shape != (out.shape[0], index.shape[0], out.shape[2])):
        raise ValueError(f"put_rows: src {src.shape} {src.dtype}, index "
                         f"{index.shape} {index.dtype} and out {out.shape} {out.dtype} "
                         "do not fit: expected src (T, len(index), F) of out's dtype "
                         "and an integer index")
    if (_put_rows is not None and out.dtype in (np.float32, np.float64)
            and index.dtype == np.int64 and out.strides[2] == out.itemsize):
        _put_rows(np.ascontiguousarray(src), np.ascontiguousarray(index), out)
        return
    if index.size and index.min() < 0:
        raise IndexError(f"put_rows: negative index {index.min()}")
    out[:, index] = src


@contextmanager
def flush_denormals():
    """Flush subnormal floats to zero in this thread while inside (restored on exit).

    Gradients that vanish over a long sequence pass through the subnormal
    range (below 1.2e-38 in float32), where x86 arithmetic, BLAS's included,
    is up to a hundred times slower: an RNN training step at B=128, T=200,
    H=512 took 3.0 s instead of 0.3 s. Flushing them to zero, as ONNX Runtime
    and PyTorch's ``set_flush_denormal`` can, changes results by less than the
    smallest normal number. A no-op without the Cython extension or off x86.
    """
    if _set_ftz is None:
        yield
        return
    was = _set_ftz(_FTZ_BITS)
    try:
        yield
    finally:
        _set_ftz(was)  # both bits as they were, not merely "on" or "off"


@contextmanager
def row_split(on=True):
    """Let the Cython kernels called from this thread while inside run part of
    their batch's rows on the extension's helper thread (``on``; else not),
    as :func:`fastrnn._kernels._cython_kernels.set_row_split` describes;
    restored on exit. A no-op without the extension."""
    if _set_row_split is None:
        yield
        return
    was = _set_row_split(on)
    try:
        yield
    finally:
        _set_row_split(was)


def input_gradient(dg, w_ih, lengths, dx, accumulate):
    """``dx (T, B, D) (+)= dg (T, B, G) @ w_ih (G, D)`` split by samples over the
    Cython extension's helper thread, as the kernels split them
    (:func:`fastrnn._kernels._cython_kernels.input_gradient`); False, having
    done nothing, where that does not apply (then :func:`matmul` serves)."""
    if (_input_gradient is None or dg.dtype != np.float32 or w_ih.dtype != np.float32
            or not dx.flags.c_contiguous):
        return False
    return _input_gradient(np.ascontiguousarray(dg), np.ascontiguousarray(w_ih),
                           lengths, dx, accumulate)
