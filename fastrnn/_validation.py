"""Input checks shared by the layers and the estimators.

The compiled kernels run without bounds checks, so every shape, dtype and
value they rely on is checked here, before any kernel is called.
"""

import numbers

import numpy as np


def as_float_array(value, dtype, name):
    """``value`` as a finite array of ``dtype``.

    Raises TypeError for dtypes that are not real numbers (complex, object,
    strings) and ValueError for NaN or infinity, naming ``name``.
    """
    try:
        arr = np.asarray(value)
    except ValueError as exc:  # ragged nested lists
        raise ValueError(f"{name} could not be converted to an array: {exc}") from None
    if arr.dtype.kind not in "biuf":
        raise TypeError(f"{name} must hold real numbers, got dtype {arr.dtype}")
    arr = arr.astype(dtype, copy=False)
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} contains NaN or infinity")
    return arr


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
