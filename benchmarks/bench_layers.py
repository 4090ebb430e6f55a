"""Recurrent layers per backend, cell and scenario: inference and training step."""

from .common import BACKENDS, CELLS, ThreadsMixin, runner, scenarios


class Inference(ThreadsMixin):
    """S1 (service latency, batch 1) and S2 (batch inference)."""

    params = (scenarios("S1", "S2"), CELLS, BACKENDS)
    param_names = ["scenario", "cell", "backend"]

    def setup(self, sid, cell, backend):
        self._limit(sid)
        self.step = runner(sid, cell, backend)
        self.step()  # compile / warm up outside the timing

    def time_forward(self, sid, cell, backend):
        self.step()

    def peakmem_forward(self, sid, cell, backend):
        self.step()


class TrainingStep(ThreadsMixin):
    """Forward + backward with every parameter gradient (S3, S4, S5, S7)."""

    params = (scenarios("S4", "S3", "S5", "S7"), CELLS, BACKENDS)
    param_names = ["scenario", "cell", "backend"]
    timeout = 300

    def setup(self, sid, cell, backend):
        if backend == "reference" and sid == "S5":
            raise NotImplementedError("the reference backend is too slow for S5")
        self._limit(sid)
        self.step = runner(sid, cell, backend)
        self.step()

    def time_step(self, sid, cell, backend):
        self.step()

    def peakmem_step(self, sid, cell, backend):
        self.step()


class StackedBidirectional(ThreadsMixin):
    """S6: 2-layer bidirectional LSTM training step."""

    params = (BACKENDS,)
    param_names = ["backend"]

    def setup(self, backend):
        self._limit("S6")
        self.step = runner("S6", "lstm", backend)
        self.step()

    def time_step(self, backend):
        self.step()
