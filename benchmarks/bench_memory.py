"""Array memory reused across training steps (``fastrnn._memory``): the step's
time with the reuse on and off, and the page faults a step takes, which the
reuse exists to avoid (measured in the README's "Threads, BLAS and memory")."""

import resource

from fastrnn import _config, _memory

from .common import ThreadsMixin, runner, scenarios


def _minor_faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


class ReusedMemory(ThreadsMixin):
    """S3 GRU and S6 (2-layer bidirectional LSTM) training steps. With the
    reuse off, what a step's fresh memory costs depends on what glibc was
    given back before (its mmap threshold follows the largest block freed),
    so that row's time varies more from run to run than the other's."""

    params = (scenarios("S6", "S3"), ["on", "off"])
    param_names = ["scenario", "reuse"]
    timeout = 300

    def setup(self, sid, reuse):
        self._bound = _config.REUSED_MEMORY_BYTES
        if reuse == "off":
            _config.REUSED_MEMORY_BYTES = 0
        self._limit(sid)
        self.step = runner(sid, "lstm" if sid == "S6" else "gru", "auto")
        self.step()
        self.step()

    def teardown(self, *args):
        _config.REUSED_MEMORY_BYTES = self._bound
        _memory.release_memory()
        super().teardown(*args)

    def time_step(self, sid, reuse):
        self.step()

    def track_page_faults(self, sid, reuse):
        """Minor page faults of the whole process in one step (after two)."""
        before = _minor_faults()
        self.step()
        return _minor_faults() - before

    track_page_faults.unit = "faults"
