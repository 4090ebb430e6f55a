"""Cold start as a whole process: import fastrnn and run one LSTM inference, from
a layer, or from a saved model loaded as a predictor or as an estimator."""

import os
import shutil
import subprocess
import sys
import tempfile
import time
import warnings

import numpy as np

from .common import BACKENDS

SNIPPET = (
    "import numpy as np, fastrnn.nn as nn; "
    "nn.LSTM(32, 128, backend='{backend}').eval()(np.zeros((100, 1, 32), np.float32))"
)

#: A service's first request: import, load the saved model, predict one sequence.
SERVING = {
    "predictor": "import numpy as np, fastrnn; "
                 "fastrnn.load_predictor({path!r}).predict(np.zeros((1, 100, 32)))",
    "estimator": "import numpy as np, fastrnn; "
                 "fastrnn.load({path!r}).predict(np.zeros((1, 100, 32)))",
}


def _median_process_seconds(code, repeat=3):
    """Median wall time of ``repeat`` fresh interpreters (warm on-disk caches)."""
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], check=True)
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


class ColdStart:
    params = (BACKENDS,)
    param_names = ["backend"]
    timeout = 300

    def track_seconds(self, backend):
        """Import fastrnn.nn and run one S1-shaped LSTM inference."""
        return _median_process_seconds(SNIPPET.format(backend=backend))

    track_seconds.unit = "seconds"


class ServingColdStart:
    """A saved RNNClassifier (LSTM, H=128, 32 features), loaded in a fresh process
    and asked for one 100-step prediction: as a predictor (no scikit-learn) and as
    the estimator."""

    params = (BACKENDS, list(SERVING))
    param_names = ["backend", "loader"]
    timeout = 300

    def setup(self, backend, loader):
        import fastrnn

        self.dir = tempfile.mkdtemp()
        self.path = os.path.join(self.dir, "model.fastrnn")
        X = np.random.RandomState(0).standard_normal((8, 100, 32))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # one iteration does not converge
            clf = fastrnn.RNNClassifier((128,), max_iter=1, random_state=0,
                                        backend=backend).fit(X, np.arange(8) % 2)
        clf.save(self.path)

    def teardown(self, backend, loader):
        shutil.rmtree(self.dir, ignore_errors=True)

    def track_seconds(self, backend, loader):
        return _median_process_seconds(SERVING[loader].format(path=self.path))

    track_seconds.unit = "seconds"
