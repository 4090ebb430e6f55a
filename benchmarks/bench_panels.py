"""The Cython backend's float32 step products: packed panels against BLAS;
the weight gradients' products, on the tn kernels against BLAS; and those
gradients read in place against gathered operands.

The same fastrnn step run both ways (``set_panel_products``), so the ratio of
the two rows tracks what the panels are worth on the machine that runs the
suite; skipped where the Cython backend or AVX-512 is missing.
"""

from .common import CELLS, QUICK, ThreadsMixin, runner, scenarios


def _kernels_or_skip():
    try:
        from fastrnn._kernels import _cython_kernels
    except ImportError:
        raise NotImplementedError("the Cython backend is not built")
    if not _cython_kernels.PANELS_AVAILABLE:
        raise NotImplementedError("panel products need AVX-512 (and gcc or clang)")
    return _cython_kernels


class StepProducts(ThreadsMixin):
    """S1 (one sample: the GEMV), S3 (training step) and S2 (batch inference)."""

    params = (scenarios("S3", "S1", "S2"), CELLS, ["panels", "blas"])
    param_names = ["scenario", "cell", "products"]

    def setup(self, sid, cell, products):
        self._kernels = _kernels_or_skip()
        self._was = self._kernels.set_panel_products(products == "panels")
        self._limit(sid)
        self.step = runner(sid, cell, "cython")
        self.step()

    def teardown(self, *args):
        self._kernels.set_panel_products(self._was)
        super().teardown(*args)

    def time_step(self, sid, cell, products):
        self.step()


class WeightGradients:
    """The weight gradients' products ``a.T @ b`` (``fastrnn._blas.matmul``),
    through the Cython tn kernel (panels on) and through BLAS (off): S4's
    ``W_hh`` (32 x 32) and ``W_ih`` of an LSTM (128 x 8) over its 1,568 rows,
    and the ``W_hh`` of an LSTM(64) over a fit's batch slice of 5,000 rows
    (256 x 64); and, on the packed tn kernel, an S3 slice's merged LSTM
    product (512 x 160 over 3,200 rows) and its GRU's ``W_ih`` (384 x 32).
    On one thread as the layers' batch slices and the estimators' fit run
    them (BLAS held on one thread by ``single_threaded_blas``, which lets
    the kernels take the larger products too), and on two (where those stay
    with BLAS either way)."""

    params = (["1568x32x32"] if QUICK else ["1568x32x32", "1568x128x8", "5000x256x64",
                                             "3200x512x160", "3200x384x32"],
              ["panels", "blas"], [1, 2])
    param_names = ["k_m_n", "products", "threads"]

    def setup(self, shape, products, threads):
        import numpy as np

        from fastrnn import _blas
        from fastrnn._config import single_threaded_blas, thread_limit

        self._kernels = _kernels_or_skip()
        self._was = self._kernels.set_panel_products(products == "panels")
        self._threads = (single_threaded_blas() if threads == 1
                         else thread_limit(threads))
        self._threads.__enter__()
        k, m, n = (int(v) for v in shape.split("x"))
        rng = np.random.default_rng(0)
        self.a = rng.standard_normal((k, m)).astype(np.float32)
        self.b = rng.standard_normal((k, n)).astype(np.float32)
        self.out = np.empty((m, n), np.float32)
        self.matmul = _blas.matmul

    def teardown(self, *args):
        self._threads.__exit__(None, None, None)
        self._kernels.set_panel_products(self._was)

    def time_product(self, shape, products, threads):
        self.matmul(self.a, self.b, trans_a=True, out=self.out)


class WeightGradientsInPlace:
    """One direction's weight and bias gradients of an S3 LSTM slice (32
    sequences, T = 100, D = 32, H = 128; BLAS held on one thread, as in a
    split batch): read in place by the packed kernel
    (``fastrnn._blas.weight_product``), or from gathered operands
    (``[x | h_prev]`` built, the valid rows taken, the bias summed apart)
    with that kernel off; every step valid, or S7's ragged lengths with the
    valid rows gathered."""

    params = (["in place", "gathered"], ["full", "ragged"])
    param_names = ["operands", "steps"]

    def setup(self, operands, steps):
        import numpy as np

        from fastrnn import _blas, nn
        from fastrnn._config import single_threaded_blas

        _kernels_or_skip()
        T, B, D, H = (12, 4, 8, 8) if QUICK else (100, 32, 32, 128)
        rng = np.random.default_rng(0)
        lengths = np.full(B, T, np.int64)
        rows = None
        if steps == "ragged":
            lengths = np.sort(rng.integers(10, T + 1, B))[::-1].copy()
            lengths[0] = T
            rows = np.flatnonzero(np.arange(T)[:, None] < lengths[None, :])
        valid = (np.arange(T)[:, None] < lengths[None, :])[:, :, None]
        self.args = ((rng.standard_normal((T, B, 4 * H)) * valid).astype(np.float32), rows,
                     rng.standard_normal((T, B, D)).astype(np.float32),
                     (rng.standard_normal((T, B, H)) * valid).astype(np.float32),
                     rng.standard_normal((B, H)).astype(np.float32), lengths, False, True)
        self.grads = nn._RNNBase._weight_grads
        self._blas, self._kernel = _blas, _blas._weight_product
        if operands == "gathered":
            _blas._weight_product = None
        self._threads = single_threaded_blas()
        self._threads.__enter__()

    def teardown(self, *args):
        self._threads.__exit__(None, None, None)
        self._blas._weight_product = self._kernel

    def time_weight_gradients(self, operands, steps):
        self.grads(*self.args)
