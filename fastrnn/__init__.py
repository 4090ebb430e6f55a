"""fastrnn: fast recurrent neural networks on the CPU.

Layers with PyTorch's interface live in :mod:`fastrnn.nn`; a saved model
predicts without scikit-learn through :func:`load_predictor`
(:mod:`fastrnn.serving`); the kernel backend
used by ``backend='auto'`` is set with :func:`set_backend` or the environment
variable ``FASTRNN_BACKEND``.
"""

__version__ = "0.1.0.dev0"

from ._config import get_backend, set_backend  # noqa: E402
from ._kernels import available_backends  # noqa: E402
from ._persist import InconsistentVersionWarning, ModelFileError  # noqa: E402

_ESTIMATORS = ("RNNClassifier", "RNNRegressor", "RNNSequenceClassifier",
               "RNNSequenceRegressor")


def __getattr__(name):
    # The estimators import scikit-learn (about a second); a service that only
    # runs layers never pays for it.
    if name in _ESTIMATORS:
        from . import estimators

        return getattr(estimators, name)
    raise AttributeError(f"module 'fastrnn' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_ESTIMATORS))


def load(path):
    """Load a model saved with ``estimator.save(path)``.

    The file is a ZIP of plain ``.npy`` arrays and JSON metadata (see
    :mod:`fastrnn._persist`). Nothing in it is unpickled or executed: the
    estimator class comes from a fixed allow-list, and every name, dtype and
    shape is checked before the model is assembled.

    Parameters
    ----------
    path : str or os.PathLike

    Returns
    -------
    estimator : RNNClassifier, RNNRegressor, RNNSequenceClassifier or RNNSequenceRegressor
        Fitted, predicting exactly as the saved one on the same backend (other
        backends agree to the dtype's rounding). A saved backend that is not
        available here is replaced by ``'auto'``, with a warning. The
        optimizer's state is not saved: ``partial_fit`` continues with a fresh
        optimizer, and a ``RandomState`` ``random_state`` comes back as None.

    Raises
    ------
    ModelFileError
        The file is truncated, tampered with, or not a fastrnn model file;
        nothing is loaded. (A missing file raises ``FileNotFoundError``.)

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
    >>> loaded = fastrnn.load(path)
    >>> bool((loaded.predict(X) == clf.predict(X)).all())
    True
    """
    from ._persist import load_model

    return load_model(path)


def load_predictor(path):
    """Load a saved model for prediction only, without scikit-learn: see
    :func:`fastrnn.serving.load_predictor`."""
    from .serving import load_predictor

    return load_predictor(path)


__all__ = [
    "InconsistentVersionWarning",
    "ModelFileError",
    "RNNClassifier",
    "RNNRegressor",
    "RNNSequenceClassifier",
    "RNNSequenceRegressor",
    "available_backends",
    "get_backend",
    "load",
    "load_predictor",
    "set_backend",
    "__version__",
]
