"""The layers' thread hand-over, the kernels' rows on the helper thread
against the batch split over Python threads, and the LSTM's two weight
gradients in one product against two (all measured in the README's
"Threads, BLAS and memory")."""

import time

from .common import CELLS, QUICK, ThreadsMixin, runner, scenarios


def _busy(seconds):
    """Run Python (holding the core, as a caller between calls does) this long."""
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        pass


class SliceHandOver:
    """One slice handed to another thread and its result collected, through
    the layers' pool (``fastrnn._config.SlicePool``) and through
    ``concurrent.futures.ThreadPoolExecutor``, back to back and after the
    caller ran 1 ms of Python (past the 0.2 ms after which an idle virtual
    core halts). The 1 ms of Python is in both rows' times."""

    params = (["slice_pool", "executor"], [0, 1000])
    param_names = ["pool", "busy_us"]

    def setup(self, pool, busy_us):
        if pool == "slice_pool":
            from fastrnn._config import SlicePool

            self.pool = SlicePool(1)
            self.hand = lambda: self.pool.start(abs, -1).result()
        else:
            from concurrent.futures import ThreadPoolExecutor

            self.pool = ThreadPoolExecutor(1)
            self.hand = lambda: self.pool.submit(abs, -1).result()
        self.busy = busy_us * 1e-6
        self.hand()

    def teardown(self, pool, busy_us):
        if pool == "executor":
            self.pool.shutdown()

    def time_round_trip(self, pool, busy_us):
        _busy(self.busy)
        self.hand()


class LSTMWeightGradients(ThreadsMixin):
    """S3 and S6 training steps (LSTM), the two weight gradients computed in
    one product with ``[x | h_prev]`` (``fastrnn.nn._merges_weight_grads``'
    rule) and in two."""

    params = (scenarios("S3", "S6"), ["one", "two"])
    param_names = ["scenario", "products"]
    timeout = 300

    def setup(self, sid, products):
        from fastrnn import nn

        self._nn, self._rule = nn, nn._merges_weight_grads
        if products == "two":
            nn._merges_weight_grads = lambda G, D, R: False
        elif QUICK:  # the quick profile's small gates would never merge
            nn._merges_weight_grads = lambda G, D, R: True
        self._limit(sid)
        self.step = runner(sid, "lstm", "auto")
        self.step()

    def teardown(self, *args):
        self._nn._merges_weight_grads = self._rule
        super().teardown(*args)

    def time_step(self, sid, products):
        self.step()


class RowSplit(ThreadsMixin):
    """Steps on two threads, float32: each kernel splitting its samples' rows
    with the Cython extension's helper thread (``rows``, the layers' choice:
    ``fastrnn.nn._RNNBase._splits_rows``), against the layers splitting the
    batch over Python threads (``slices``, which S4's 32 samples never did,
    so it runs on one thread there)."""

    params = (scenarios("S2", "S3", "S4", "S7"), CELLS, ["rows", "slices"])
    param_names = ["scenario", "cell", "split"]
    timeout = 300

    def setup(self, sid, cell, split):
        from fastrnn import nn

        self._nn, self._rule = nn, nn._RNNBase._splits_rows
        if split == "slices":
            nn._RNNBase._splits_rows = lambda layer, B: False
        self._limit(sid)
        self.step = runner(sid, cell, "auto")
        self.step()

    def teardown(self, *args):
        self._nn._RNNBase._splits_rows = self._rule
        super().teardown(*args)

    def time_step(self, sid, cell, split):
        self.step()
