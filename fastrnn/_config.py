"""Every tunable of fastrnn in one place.

The kernel backend used when a layer or estimator says ``backend='auto'`` is
taken, in this order, from :func:`set_backend`, from the environment variable
``FASTRNN_BACKEND``, and otherwise chosen automatically (the first of
``AUTO_ORDER`` that loads).
"""

import os

#: Order in which ``'auto'`` tries the backends: the compiled ones first.
AUTO_ORDER = ("cython", "numba", "reference")

_VALID = ("auto", "cython", "numba", "reference")

_backend = None


def set_backend(name):
    """Set the backend that ``backend='auto'`` resolves to, for the whole process.

    Parameters
    ----------
    name : {'auto', 'cython', 'numba', 'reference'} or None
        ``None`` or ``'auto'`` restores the automatic choice (which still honours
        the ``FASTRNN_BACKEND`` environment variable).

    Examples
    --------
    >>> import fastrnn
    >>> fastrnn.set_backend("reference")
    >>> fastrnn.get_backend()
    'reference'
    >>> fastrnn.set_backend(None)
    """
    global _backend
    if name is not None and name not in _VALID:
        raise ValueError(f"unknown backend {name!r}; expected one of {_VALID}")
    _backend = None if name == "auto" else name


def get_backend():
    """The backend name that ``'auto'`` currently stands for (may be ``'auto'``)."""
    if _backend is not None:
        return _backend
    env = os.environ.get("FASTRNN_BACKEND", "auto").strip().lower() or "auto"
    if env not in _VALID:
        raise ValueError(
            f"environment variable FASTRNN_BACKEND={env!r}; expected one of {_VALID}"
        )
    return env
