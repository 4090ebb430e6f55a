"""Preprocessing for sequence data, in the formats the estimators accept.

:class:`SequenceScaler` standardises every feature over all time steps of all
sequences (padding excluded) and gives X back in the format it came in, so it
sits in front of an estimator in a pipeline whatever the input:

>>> import numpy as np
>>> from sklearn.pipeline import make_pipeline
>>> from fastrnn import RNNClassifier
>>> from fastrnn.preprocessing import SequenceScaler
>>> rng = np.random.RandomState(0)
>>> X = [rng.normal(100, 20, (n, 2)) for n in rng.randint(3, 9, 40)]   # ragged
>>> y = np.arange(40) % 2
>>> model = make_pipeline(SequenceScaler(), RNNClassifier((8,), max_iter=3))
>>> model.fit(X, y).predict(X[:3]).shape
(3,)
"""

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin, _fit_context
from sklearn.utils.validation import check_is_fitted

from ._data import validate_sequences, valid_mask

__all__ = ["SequenceScaler"]


class SequenceScaler(TransformerMixin, BaseEstimator):
    """Standardise each feature of sequence data: ``(x - mean_) / scale_``.

    The mean and standard deviation of every feature are taken over all valid
    time steps of all sequences, so long sequences weigh more than short ones
    and the padding of ragged input never enters. X may be a 3-D array
    ``(n_samples, n_timesteps, n_features)``, a 2-D array of univariate
    sequences (one feature: a single mean and scale for all its entries), or a
    list of sequences of varying length; :meth:`transform` returns the same
    format (a list of arrays of the same shapes for a list) and preserves
    float32 and float64.

    Parameters
    ----------
    with_mean : bool, default=True
        Subtract the mean.
    with_std : bool, default=True
        Divide by the standard deviation (features with zero variance are left
        unscaled).
    copy : bool, default=True
        Kept for symmetry with :class:`sklearn.preprocessing.StandardScaler`;
        the transformed data is always a new array.

    Attributes
    ----------
    mean_ : ndarray of shape (n_features_per_step_,) or None
    var_ : ndarray of shape (n_features_per_step_,) or None
    scale_ : ndarray of shape (n_features_per_step_,) or None
    n_samples_seen_ : int
        Number of time steps the statistics were computed from.
    n_features_in_ : int
        As for the estimators: features per step, or the number of columns of
        a 2-D X.
    n_features_per_step_ : int

    Examples
    --------
    >>> import numpy as np
    >>> from fastrnn.preprocessing import SequenceScaler
    >>> X = [np.array([[0.0, 10.0], [2.0, 30.0]]), np.array([[4.0, 20.0]])]
    >>> scaler = SequenceScaler().fit(X)
    >>> scaler.mean_
    array([ 2., 20.])
    >>> [x.shape for x in scaler.transform(X)]
    [(2, 2), (1, 2)]
    """

    _parameter_constraints = {
        "with_mean": ["boolean"],
        "with_std": ["boolean"],
        "copy": ["boolean"],
    }

    def __init__(self, *, with_mean=True, with_std=True, copy=True):
        self.with_mean = with_mean
        self.with_std = with_std
        self.copy = copy

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.three_d_array = True
        tags.transformer_tags.preserves_dtype = ["float64", "float32"]
        return tags

    @staticmethod
    def _dtype_of(X):
        """float32 stays float32, everything else becomes float64."""
        if isinstance(X, (list, tuple)) or getattr(X, "dtype", None) == object:
            first = np.asarray(X[0]) if len(X) else None
            kind = getattr(first, "dtype", None)
        else:
            kind = getattr(X, "dtype", None)
        return np.float32 if kind == np.float32 else np.float64

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y=None):
        """Compute the per-feature mean and standard deviation.

        Parameters
        ----------
        X : 3-D array, 2-D array or list of sequences
        y : ignored

        Returns
        -------
        self : SequenceScaler
        """
        seqs = validate_sequences(self, X, reset=True, dtype=np.float64)
        mask = valid_mask(seqs.lengths, seqs.data.shape[0])
        values = seqs.data[mask]  # (n_steps, n_features)
        self.n_samples_seen_ = int(values.shape[0])
        self.mean_ = values.mean(axis=0) if self.with_mean else None
        if self.with_std:
            self.var_ = values.var(axis=0)
            scale = np.sqrt(self.var_)
            # As StandardScaler: a (near-)constant feature is not scaled.
            tiny = scale < 10 * np.finfo(np.float64).eps * np.maximum(
                1.0, np.abs(values).max(axis=0) if values.size else 1.0)
            self.scale_ = np.where(tiny, 1.0, scale)
        else:
            self.var_ = None
            self.scale_ = None
        return self

    def _apply(self, X, inverse):
        check_is_fitted(self)
        dtype = self._dtype_of(X)
        seqs = validate_sequences(self, X, reset=False, dtype=dtype)
        data = seqs.data
        mean = (self.mean_ if self.mean_ is not None else 0.0)
        scale = (self.scale_ if self.scale_ is not None else 1.0)
        mean = np.asarray(mean, dtype=dtype)
        scale = np.asarray(scale, dtype=dtype)
        out = data * scale + mean if inverse else (data - mean) / scale
        if seqs.fmt == "list":
            return [np.ascontiguousarray(out[:L, i] if nd == 2 else out[:L, i, 0])
                    for i, (L, nd) in enumerate(zip(seqs.lengths, seqs.elem_ndim))]
        out = np.swapaxes(out, 0, 1)
        if seqs.fmt == "array2d":
            out = out[:, :, 0]
        return np.ascontiguousarray(out)

    def transform(self, X):
        """Standardise X; returns it in the format it came in (see the class doc)."""
        return self._apply(X, inverse=False)

    def inverse_transform(self, X):
        """Undo :meth:`transform`."""
        return self._apply(X, inverse=True)
