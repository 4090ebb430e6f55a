"""The Cython backend's float32 step products: packed panels against BLAS.

The same fastrnn step run both ways (``set_panel_products``), so the ratio of
the two rows tracks what the panels are worth on the machine that runs the
suite; skipped where the Cython backend or AVX-512 is missing.
"""

from .common import CELLS, ThreadsMixin, runner, scenarios


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
