"""Serving a saved model without scikit-learn.

A service that only predicts does not need an estimator's training machinery,
nor scikit-learn, whose import alone takes most of a second. ::

    import fastrnn

    model = fastrnn.load_predictor("model.fastrnn")   # saved with estimator.save
    model.predict(X)

:func:`load_predictor` reads the same files as :func:`fastrnn.load`, with the
same checks, and returns a :class:`ClassifierPredictor` or a
:class:`RegressorPredictor`. Its ``predict`` (and ``predict_proba``,
``predict_log_proba`` for classifiers) is the estimator's own code: the same
numbers, bit for bit, on the same kernel backend, and the same input formats
and checks (messages name the predictor's class). Input that is a float
ndarray, a list of them or a regular nested list is checked with NumPy alone;
ragged nested lists, integer arrays, DataFrames and any input to a model
fitted on a DataFrame import scikit-learn's checks on first use, as the
estimator would.

A predictor is not meant to be changed apart from ``n_jobs``. It can be used
from several threads at once (the kernels release the GIL); it pickles, and
warns (``InconsistentVersionWarning``) when unpickled by another fastrnn
version.
"""

from ._inference import ClassifierInference, Inference, RegressorInference

__all__ = ["ClassifierPredictor", "Predictor", "RegressorPredictor", "load_predictor"]


class Predictor(Inference):
    """A fitted fastrnn model that predicts, without scikit-learn.

    Made by :func:`load_predictor`; not meant to be built directly.

    Attributes
    ----------
    estimator : str
        The class of the estimator that was saved, e.g. ``'RNNClassifier'``.
    n_features_in_ : int
        As the estimator's: features per time step, or the number of columns
        after a fit on a 2-D array.
    n_features_per_step_ : int
        The input size of the network.
    n_outputs_ : int
        Classes, or regression targets.
    feature_names_in_ : ndarray of str
        Only when the estimator was fitted on a DataFrame.
    n_jobs : int or None
        Threads of each ``predict`` call (the estimator's parameter, as
        saved); may be changed.
    dtype : numpy.dtype
        float32 or float64, as the model's parameters.
    """

    def __init__(self, estimator, fitted, *, per_step, n_jobs):
        self.estimator = estimator
        self._per_step = per_step
        self.n_jobs = n_jobs
        for name, value in fitted.items():
            setattr(self, name, value)

    @property
    def dtype(self):
        return self._network.dtype

    def __repr__(self):
        net = self._network
        return (f"{type(self).__name__}(estimator={self.estimator!r}, "
                f"cell={net.cell!r}, hidden_layer_sizes={net.hidden_layer_sizes}, "
                f"bidirectional={net.bidirectional}, dtype={net.dtype.name!r})")


class ClassifierPredictor(ClassifierInference, Predictor):
    """The predictor of an ``RNNClassifier`` or ``RNNSequenceClassifier``.

    Attributes
    ----------
    classes_ : ndarray
        The class labels, in the order of ``predict_proba``'s columns.

    See :class:`Predictor` for the other attributes.
    """


class RegressorPredictor(RegressorInference, Predictor):
    """The predictor of an ``RNNRegressor`` or ``RNNSequenceRegressor``.

    See :class:`Predictor` for its attributes.
    """


def load_predictor(path):
    """Load a model saved with ``estimator.save(path)``, for prediction only.

    scikit-learn is not imported: in a fresh process, ``import fastrnn``,
    this and a first ``predict`` take a fraction of the time that
    :func:`fastrnn.load`, which builds the estimator, does.

    Parameters
    ----------
    path : str or os.PathLike

    Returns
    -------
    ClassifierPredictor or RegressorPredictor
        Predicting exactly as the saved estimator on the same backend. A
        saved backend that is not available here is replaced by ``'auto'``,
        with a warning (as :func:`fastrnn.load`).

    Raises
    ------
    ModelFileError
        The file is truncated, tampered with, or not a fastrnn model file.
        The file is checked as :func:`fastrnn.load` checks it, except that of
        the estimator's parameters only those used in prediction are read
        (the network's, and ``n_jobs``).

    Examples
    --------
    >>> import os, tempfile
    >>> import numpy as np
    >>> import fastrnn
    >>> X = np.random.RandomState(0).standard_normal((20, 5, 2))
    >>> clf = fastrnn.RNNClassifier((4,), max_iter=2, random_state=0)
    >>> clf = clf.fit(X, X[:, -1, 0] > 0)
    >>> path = os.path.join(tempfile.mkdtemp(), "model.fastrnn")
    >>> clf.save(path)
    >>> model = fastrnn.load_predictor(path)
    >>> bool((model.predict_proba(X) == clf.predict_proba(X)).all())
    True
    """
    from ._persist import load_model

    return load_model(path, predictor=True)
