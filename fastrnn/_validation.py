"""Input checks shared by the layers and the estimators.

The compiled kernels run without bounds checks, so every shape, dtype and
value they rely on is checked here, before any kernel is called.
"""

import numbers

import numpy as np


def as_float_array(value, dtype, name):
    """``value`` as a finite array of ``dtype``.

    Parameters
    ----------
    value : array-like
        Real numbers (bool, integer or floating dtype).
    dtype : numpy floating dtype
        The dtype of the result.
    name : str
        How the error messages call ``value``, e.g. ``"input"`` or ``"Input y"``.

    Returns
    -------
    ndarray of ``dtype``
        ``value`` itself when it already is such an array, else a converted copy.

    Raises
    ------
    TypeError
        ``value`` does not hold real numbers (complex, object, strings).
    ValueError
        ``value`` is ragged, or fails :func:`check_finite`.
    """
    try:
        arr = np.asarray(value)
    except ValueError as exc:  # ragged nested lists
        raise ValueError(f"{name} could not be converted to an array: {exc}") from None
    if arr.dtype.kind not in "biuf":
        raise TypeError(f"{name} must hold real numbers, got dtype {arr.dtype}")
    check_finite(arr, dtype, name)
    return arr.astype(dtype, copy=False)


def check_finite(arr, dtype, name):
    """Check that every value of ``arr`` is finite, also once cast to ``dtype``.

    The one finiteness check of fastrnn's inputs (the estimators' X and y, the
    layers' input, states and weights). It runs *before* the cast: a value
    finite in float64 but beyond the largest float32 (1e39, say) would become
    infinity on the way, with an overflow warning and then a misleading
    "contains NaN or infinity".

    Parameters
    ----------
    arr : ndarray of bool, integer or floating dtype
    dtype : numpy floating dtype
        The dtype ``arr`` is about to be cast to.
    name : str
        How the error messages call ``arr``.

    Raises
    ------
    ValueError
        ``arr`` contains NaN or infinity (the message says which), or values
        too large for ``dtype`` (it gives the largest magnitude found and
        ``dtype``'s limit).
    """
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        nan, inf = bool(np.isnan(arr).any()), bool(np.isinf(arr).any())
        found = " and ".join(w for w, hit in (("NaN", nan), ("infinity", inf)) if hit)
        raise ValueError(f"{name} contains {found}; expected finite numbers (no NaN "
                         "or infinity)")
    limit = float(np.finfo(dtype).max)
    if arr.size and arr.dtype.kind in "iuf" and _max_of(arr.dtype) > limit:
        largest = max(float(arr.max()), -float(arr.min()))  # no abs(): int64 min wraps
        if largest > limit:
            raise ValueError(f"{name} contains values too large for "
                             f"{np.dtype(dtype).name} (max |x| = {largest:.3g} > "
                             f"{limit:.3g})")


def _max_of(dtype):
    """Largest value of the numeric ``dtype``, as a Python number."""
    return float(np.finfo(dtype).max) if dtype.kind == "f" else int(np.iinfo(dtype).max)


def check_lengths(lengths, batch_size, n_steps, unbatched=False):
    """Validate per-sample sequence lengths; return an int64 array or None."""
    if lengths is None:
        return None
    arr = np.asarray(lengths)
    if unbatched and arr.ndim == 0:
        arr = arr.reshape(1)
    if arr.dtype.kind not in "iu" and not (
            arr.dtype.kind == "f" and np.all(np.isfinite(arr))
            and np.all(arr == np.round(arr))):
        raise TypeError(f"lengths must be integers, got dtype {arr.dtype}")
    if arr.ndim != 1 or arr.shape[0] != batch_size:
        raise ValueError(f"lengths must have shape ({batch_size},) (one per sample), "
                         f"got shape {arr.shape}")
    # Range check before any cast: a float or uint64 beyond int64 would wrap.
    bad = (arr < 1) | (arr > n_steps)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(f"lengths must be between 1 and the number of time steps "
                         f"({n_steps}); lengths[{i}] = {arr[i].item()}")
    return np.ascontiguousarray(arr, dtype=np.int64)


def as_random_state(seed):
    """A ``numpy.random.RandomState`` from None, an int or a RandomState.

    The same rule as scikit-learn's ``check_random_state``, restated here so
    that the layers (and a service that only serves them) never import
    scikit-learn.
    """
    if seed is None:
        return np.random.mtrand._rand
    if isinstance(seed, numbers.Integral) and not isinstance(seed, bool):
        return np.random.RandomState(seed)
    if isinstance(seed, np.random.RandomState):
        return seed
    raise ValueError(f"random_state must be None, an int or a numpy RandomState, "
                     f"got {seed!r}")
