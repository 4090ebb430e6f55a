"""fastrnn: fast recurrent neural networks on the CPU.

Layers with PyTorch's interface live in :mod:`fastrnn.nn`; the kernel backend
used by ``backend='auto'`` is set with :func:`set_backend` or the environment
variable ``FASTRNN_BACKEND``.
"""

__version__ = "0.1.0.dev0"

from ._config import get_backend, set_backend  # noqa: E402
from ._kernels import available_backends  # noqa: E402
from .estimators import (  # noqa: E402
    RNNClassifier,
    RNNRegressor,
    RNNSequenceClassifier,
    RNNSequenceRegressor,
)

__all__ = [
    "RNNClassifier",
    "RNNRegressor",
    "RNNSequenceClassifier",
    "RNNSequenceRegressor",
    "available_backends",
    "get_backend",
    "set_backend",
    "__version__",
]
