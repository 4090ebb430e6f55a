"""Prediction from a fitted network: the half of an estimator a service needs.

The estimators (:mod:`fastrnn.estimators`, built on scikit-learn) and the
predictors of :mod:`fastrnn.serving` (no scikit-learn) inherit their
``predict`` methods from the classes here, so a model predicts the same
numbers whichever way it was loaded. Nothing here imports scikit-learn: for a
plain float ndarray, or a list of them, input validation runs on NumPy alone
(scikit-learn's checks are imported only for other input, say a DataFrame).

A subclass provides ``_network`` (a :class:`~fastrnn._network.RecurrentNetwork`),
``n_features_in_``, ``n_features_per_step_``, ``_fit_2d`` (and
``feature_names_in_`` when fitted on a DataFrame), ``n_jobs``, ``_per_step``,
and, for classifiers, ``classes_``; regressors ``_y_ndim`` (sequence-level)
or ``_y_multi`` (per step).
"""

import os
import warnings

import numpy as np

from . import _config
from ._config import layer_threads
from ._data import validate_sequences
from ._memory import trim_memory
from ._training import log_softmax

#: Sequences per chunk in predict: bounds the memory of the padded activations.
PREDICT_CHUNK = 2048


class Inference:
    """Input checks and the network's forward pass, in chunks, on ``n_jobs`` threads;
    pickles with the fastrnn version, and warns when unpickled by another."""

    _per_step = False

    def __getstate__(self):
        from . import __version__

        parent = getattr(super(), "__getstate__", None)  # object's: Python >= 3.11
        state = dict(parent() if parent is not None else self.__dict__)
        state["_fastrnn_version"] = __version__
        return state

    def __setstate__(self, state):
        from . import __version__
        from ._persist import InconsistentVersionWarning

        state = dict(state)
        version = state.pop("_fastrnn_version", None)
        if version != __version__:
            warnings.warn(f"Trying to unpickle {type(self).__name__} from fastrnn version "
                          f"{version} when using version {__version__}. This might lead "
                          "to breaking code or invalid results. Use at your own risk.",
                          InconsistentVersionWarning)
        parent = getattr(super(), "__setstate__", None)  # scikit-learn's, for estimators
        if parent is not None:
            parent(state)
        else:
            self.__dict__.update(state)

    def _validate_X(self, X):
        return validate_sequences(self, X, reset=False, dtype=self._network.dtype)

    def _n_threads(self, fit):
        """``n_jobs`` as a thread count; None where BLAS's setting decides."""
        if self.n_jobs is None:
            return 1 if fit else None
        if self.n_jobs > 0:
            return self.n_jobs
        # counted only here: os.cpu_count() reads /sys (~2 us of every predict)
        return max(1, (os.cpu_count() or 1) + 1 + self.n_jobs)

    def _forward(self, seqs):
        """Head output for every sample: (n, k), or per step (T, n, k)."""
        try:
            with layer_threads(self._n_threads(fit=False)):
                return self._forward_chunks(seqs)
        finally:
            trim_memory(_config.KEPT_AFTER_PREDICT_BYTES)  # see fastrnn._memory

    def _forward_chunks(self, seqs):
        net = self._network
        n, T = seqs.n_samples, seqs.data.shape[0]
        if n <= PREDICT_CHUNK:
            return self._check_finite(net.forward(seqs.data, seqs.lengths))
        k = self.n_outputs_
        out = np.zeros((T, n, k) if self._per_step else (n, k), net.dtype)
        for start in range(0, n, PREDICT_CHUNK):
            sl = slice(start, min(start + PREDICT_CHUNK, n))
            lengths = seqs.lengths[sl]
            Tb = int(lengths.max())
            res = net.forward(seqs.data[:Tb, sl], lengths)
            if self._per_step:
                out[:Tb, sl] = res
            else:
                out[sl] = res
        return self._check_finite(out)

    @staticmethod
    def _check_finite(out):
        """Refuse to return a NaN or infinite network output (inputs so large that
        the products overflow), rather than a silently wrong prediction."""
        if not np.isfinite(out).all():
            raise ValueError("The network's output is NaN or infinite for this input: "
                             "its values are too large for the network's dtype. "
                             "Rescale X (e.g. fastrnn.preprocessing.SequenceScaler).")
        return out

    def _split_steps(self, values, seqs):
        """Per-step values (T, n, ...) -> (n, T, ...) array, or a list for list input."""
        if seqs.fmt == "list":
            return [np.ascontiguousarray(values[:L, i]) for i, L in enumerate(seqs.lengths)]
        return np.ascontiguousarray(np.swapaxes(values, 0, 1))

    def _per_sample(self, values, seqs):
        """Values per sequence (n, ...) as they are; per step, split by sample."""
        return self._split_steps(values, seqs) if self._per_step else values


class ClassifierInference(Inference):
    """``predict``, ``predict_proba`` and ``predict_log_proba`` of a classifier."""

    _loss = "log_loss"

    def predict(self, X):
        """Class labels, from ``classes_``.

        Returns
        -------
        ndarray
            One label per sequence, shape (n_samples,). A per-step model
            (``RNNSequenceClassifier``) labels every time step: an array
            (n_samples, n_timesteps), or a list of (n_timesteps_i,) arrays for
            list input.
        """
        seqs = self._validate_X(X)
        return self._per_sample(self.classes_[np.argmax(self._forward(seqs), axis=-1)],
                                seqs)

    def predict_proba(self, X):
        """Class probabilities, columns in the order of ``classes_``.

        Returns
        -------
        ndarray of float64
            Shape (n_samples, n_classes); per step (n_samples, n_timesteps,
            n_classes), or a list of (n_timesteps_i, n_classes) arrays for list
            input.
        """
        seqs = self._validate_X(X)
        return self._per_sample(np.exp(self._log_proba(self._forward(seqs))), seqs)

    def predict_log_proba(self, X):
        """Logarithm of :meth:`predict_proba`, computed stably (same shapes)."""
        seqs = self._validate_X(X)
        return self._per_sample(self._log_proba(self._forward(seqs)), seqs)

    @staticmethod
    def _log_proba(logits):
        return log_softmax(logits.astype(np.float64))


class RegressorInference(Inference):
    """``predict`` of a regressor."""

    _loss = "squared_error"

    def predict(self, X):
        """Predictions, float64.

        Returns
        -------
        ndarray
            Shape (n_samples,) or (n_samples, n_targets), as ``y`` in fit. A
            per-step model (``RNNSequenceRegressor``) predicts every time step:
            (n_samples, n_timesteps[, n_targets]), or a list of
            (n_timesteps_i[, n_targets]) arrays for list input.
        """
        seqs = self._validate_X(X)
        out = self._forward(seqs).astype(np.float64)
        if self._per_step:
            return self._split_steps(out if self._y_multi else out[..., 0], seqs)
        return out[:, 0] if self._y_ndim == 1 else out
