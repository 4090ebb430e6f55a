"""Estimators on scikit-learn's digits read row by row (8 steps x 8 features)."""

import numpy as np
from sklearn.datasets import load_digits

from fastrnn import RNNClassifier

from .common import BACKENDS, CELLS, QUICK


def _data():
    digits = load_digits()
    X = (digits.images / 16.0).astype(np.float32)
    n = 300 if QUICK else 1500
    return X[:n], digits.target[:n], X[n:], digits.target[n:]


class DigitsClassifier:
    params = (CELLS, BACKENDS)
    param_names = ["cell", "backend"]
    timeout = 300

    def setup(self, cell, backend):
        self.X, self.y, self.X_test, self.y_test = _data()
        self.kw = dict(cell=cell, hidden_layer_sizes=(16 if QUICK else 64,),
                       max_iter=2 if QUICK else 10, batch_size=64,
                       learning_rate_init=5e-3, backend=backend, random_state=0)
        self.clf = RNNClassifier(**self.kw).fit(self.X, self.y)

    def time_fit(self, cell, backend):
        RNNClassifier(**self.kw).fit(self.X, self.y)

    def time_fit_two_jobs(self, cell, backend):
        """n_jobs=2: each batch of 64 split over two threads."""
        RNNClassifier(n_jobs=2, **self.kw).fit(self.X, self.y)

    def peakmem_fit(self, cell, backend):
        RNNClassifier(**self.kw).fit(self.X, self.y)

    def time_predict(self, cell, backend):
        self.clf.predict(self.X_test)

    def time_predict_one(self, cell, backend):
        self.clf.predict(self.X_test[:1])

    def track_test_score(self, cell, backend):
        return self.clf.score(self.X_test, self.y_test)
