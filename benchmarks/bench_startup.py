"""Cold start as a whole process: import fastrnn and run one LSTM inference."""

import subprocess
import sys
import time

import numpy as np

from .common import BACKENDS

SNIPPET = (
    "import numpy as np, fastrnn.nn as nn; "
    "nn.LSTM(32, 128, backend='{backend}').eval()(np.zeros((100, 1, 32), np.float32))"
)


class ColdStart:
    params = (BACKENDS,)
    param_names = ["backend"]
    timeout = 300

    def track_seconds(self, backend):
        """Median wall time of three fresh interpreters (warm on-disk caches)."""
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            subprocess.run([sys.executable, "-c", SNIPPET.format(backend=backend)],
                           check=True)
            times.append(time.perf_counter() - t0)
        return float(np.median(times))

    track_seconds.unit = "seconds"
