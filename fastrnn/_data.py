"""The three formats of sequence input, checked and turned into what the layers take.

Every estimator and transformer of fastrnn accepts X as

* a 3-D array ``(n_samples, n_timesteps, n_features)``;
* a 2-D array ``(n_samples, n_timesteps)``: fixed-length univariate sequences,
  one per row (this is also how scikit-learn's own tabular data is read);
* a list (or tuple, or 1-D object array) of sequences of varying length, each a
  2-D array ``(n_timesteps_i, n_features)`` or a 1-D array ``(n_timesteps_i,)``
  (univariate). A list whose sequences all have the same shape means the same
  as the array ``np.asarray(X)`` (numpy's rule for nested lists), and results
  that follow the input's format (per-step predictions, transformed X) come
  back as that array.

:func:`validate_sequences` checks X and returns a :class:`Sequences`: one
zero-padded, time-major ``(T, n_samples, n_features)`` array and the valid
length of every sample. The padding is never seen by a network: the lengths go
to the layers, which stop each sample's state at its own last step.

``n_features_in_`` follows scikit-learn's contract for 2-D input: after a fit on
a 2-D array it is the number of columns (the sequence length), and later 2-D
input must have as many. After a fit on 3-D or list input it is the number of
features per time step. ``n_features_per_step_`` is always the latter, the input
size of the network.

scikit-learn's checks are imported only where they are needed: a service
predicting on float ndarrays (or lists of them) never imports scikit-learn.
"""

from dataclasses import dataclass

import numpy as np

from ._validation import as_float_array, check_finite

FLOAT_DTYPES = (np.float64, np.float32)

_FORMATS_HELP = ("a 3-D array (n_samples, n_timesteps, n_features), a 2-D array "
                 "(n_samples, n_timesteps) of univariate sequences, or a list of "
                 "sequences of shape (n_timesteps_i, n_features)")


@dataclass
class Sequences:
    """Validated sequence input.

    Attributes
    ----------
    data : ndarray of shape (T, n_samples, n_features)
        Time-major, C-contiguous, zero past each sample's length.
    lengths : ndarray of int64 of shape (n_samples,)
    fmt : {'array2d', 'array3d', 'list'}
        The format X came in, to give results back in the same one.
    elem_ndim : list of int or None
        For ``'list'``: the ndim (1 or 2) of every element.
    """

    data: np.ndarray
    lengths: np.ndarray
    fmt: str
    elem_ndim: list = None

    @property
    def n_samples(self):
        return self.data.shape[1]

    @property
    def n_features(self):
        return self.data.shape[2]

    @property
    def fixed_length(self):
        """True when every sample spans all ``T`` steps (no padding)."""
        return bool(np.all(self.lengths == self.data.shape[0]))

    def take(self, idx):
        """The samples ``idx`` (a new :class:`Sequences`, trimmed to their longest)."""
        lengths = self.lengths[idx]
        T = int(lengths.max()) if lengths.size else 0
        elem = [self.elem_ndim[i] for i in idx] if self.elem_ndim is not None else None
        return Sequences(self.data[:T, idx], lengths, self.fmt, elem)


def _is_sequence_list(X):
    return isinstance(X, (list, tuple)) or (
        isinstance(X, np.ndarray) and X.dtype == object and X.ndim == 1)


def validate_sequences(estimator, X, *, reset, dtype):
    """Check ``X`` for ``estimator`` and return it as :class:`Sequences` of ``dtype``.

    With ``reset=True`` (fit) the estimator's ``n_features_in_``,
    ``n_features_per_step_``, ``_fit_2d`` (and ``feature_names_in_`` for a
    DataFrame) are set; otherwise X is checked against them.

    Raises
    ------
    ValueError
        Empty input, NaN or infinity, values too large for ``dtype`` (1e39
        for float32), a zero-length sequence, sequences with different numbers
        of features, a 1-D or 4-D array, or a number of features that differs
        from the one seen in fit (the message names both).
    TypeError
        Sparse input, or elements of a list that are not arrays of numbers.

    Notes
    -----
    scikit-learn's ``check_array`` converts X but does not check its values
    (``ensure_all_finite=False``): :func:`fastrnn._validation.check_finite`
    does, once, before the cast to ``dtype``.
    """
    name = type(estimator).__name__
    if _is_sequence_list(X):
        regular = _as_regular_array(X)
        if regular is not None:
            X = regular
    if not reset and type(X) is np.ndarray:
        fast = _fast_array_path(estimator, X, dtype)
        if fast is not None:
            return fast
    if _is_sequence_list(X):
        seqs = _from_list(X, dtype)
        n_in = seqs.n_features
        fit_2d = False
    else:
        _reject_strings(X, "X")
        ndim = getattr(X, "ndim", None)
        from sklearn.utils.validation import check_array

        if ndim is None:
            X = check_array(X, allow_nd=True, ensure_2d=False, dtype=FLOAT_DTYPES,
                            input_name="X", ensure_all_finite=False)
            ndim = X.ndim
        if ndim == 2:
            if reset:
                from sklearn.utils.validation import validate_data

                arr = validate_data(estimator, X, reset=True, dtype=FLOAT_DTYPES,
                                    ensure_all_finite=False)
            else:
                # after a 2-D fit, validate_data's checks without its estimator
                # tags, so that a predictor of fastrnn.serving (not a
                # scikit-learn estimator) checks the same
                from sklearn.utils.validation import _check_feature_names, _check_n_features

                fit_2d = getattr(estimator, "_fit_2d", False)
                if fit_2d:
                    _check_feature_names(estimator, X, reset=False)
                arr = check_array(X, dtype=FLOAT_DTYPES, input_name="X",
                                  ensure_all_finite=False)
                if fit_2d:
                    _check_n_features(estimator, arr, reset=False)
            check_finite(arr, dtype, "Input X")
            data = np.ascontiguousarray(arr.T[:, :, None], dtype=dtype)
            seqs = Sequences(data, np.full(arr.shape[0], arr.shape[1], np.int64),
                             "array2d")
            n_in = arr.shape[1]
            fit_2d = True
        elif ndim == 3:
            arr = check_array(X, allow_nd=True, dtype=FLOAT_DTYPES, input_name="X",
                              ensure_all_finite=False)
            n, T, D = arr.shape
            if T == 0:
                raise ValueError(f"Found X of shape {arr.shape}: sequences with zero time "
                                 "steps; every sequence needs at least one.")
            if D == 0:
                raise ValueError(f"Found X of shape {arr.shape} with 0 feature(s) per "
                                 "time step, while a minimum of 1 is required.")
            check_finite(arr, dtype, "Input X")
            data = np.ascontiguousarray(arr.transpose(1, 0, 2), dtype=dtype)
            seqs = Sequences(data, np.full(n, T, np.int64), "array3d")
            n_in = D
            fit_2d = False
        else:
            shape = getattr(X, "shape", None)
            hint = ""
            if ndim == 1:
                hint = (" Reshape your data: X.reshape(1, -1) for one univariate "
                        "sequence, or X.reshape(-1, 1) for sequences of one time step.")
            raise ValueError(f"Expected X as {_FORMATS_HELP}; got a {ndim}-D array of "
                             f"shape {shape}.{hint}")

    if reset:
        if not seqs.fmt == "array2d":
            from sklearn.utils.validation import _check_feature_names

            _check_feature_names(estimator, seqs.data[0], reset=True)  # drop old names
        estimator.n_features_in_ = n_in
        estimator.n_features_per_step_ = seqs.n_features
        estimator._fit_2d = fit_2d
    else:
        expected = estimator.n_features_per_step_
        if seqs.n_features != expected:
            if seqs.fmt == "array2d":
                raise ValueError(
                    f"X has 1 feature per time step (a 2-D X holds univariate "
                    f"sequences, one per row), but {name} is expecting {expected} "
                    f"features per time step as input. To pass one sequence of "
                    f"shape (n_timesteps, n_features), use X[np.newaxis] or [X].")
            raise ValueError(f"X has {seqs.n_features} features per time step, but {name} "
                             f"is expecting {expected} features per time step as input.")
    return seqs


def _reject_strings(X, name):
    kind = getattr(getattr(X, "dtype", None), "kind", None)
    if kind in ("U", "S"):
        raise ValueError(f"{name} holds strings (dtype {X.dtype}); sequences must hold "
                         "numbers. Convert your data to numeric values explicitly.")


def _fast_array_path(estimator, X, dtype):
    """Predict-time shortcut for a plain, finite float ndarray of the fitted shape
    (the common case, where ``check_array`` would cost more than a short
    sequence's forward pass). Returns None to fall back to the full checks."""
    if X.dtype not in FLOAT_DTYPES or X.ndim not in (2, 3) or 0 in X.shape:
        return None
    if X.ndim == 2:
        if (not getattr(estimator, "_fit_2d", False)
                or hasattr(estimator, "feature_names_in_")
                or X.shape[1] != estimator.n_features_in_
                or estimator.n_features_per_step_ != 1):
            return None
        data = X.T[:, :, None]
        fmt = "array2d"
    else:
        if X.shape[2] != estimator.n_features_per_step_:
            return None
        data = X.transpose(1, 0, 2)
        fmt = "array3d"
    check_finite(X, dtype, "Input X")
    return Sequences(np.ascontiguousarray(data, dtype=dtype),
                     np.full(X.shape[0], X.shape[1], np.int64), fmt)


def _as_regular_array(X):
    """``np.asarray(X)`` when X's sequences all have the same shape (numpy's rule
    for nested lists), so such a list means the same as the 2-D or 3-D array;
    None for ragged X."""
    if len(X) == 0:
        return None
    try:
        arr = np.asarray(list(X) if isinstance(X, np.ndarray) else X)
    except (ValueError, TypeError):  # ragged: "inhomogeneous shape"
        return None
    if arr.dtype == object or arr.ndim not in (2, 3):
        return None
    return arr


def _from_list(X, dtype):
    """A list of sequences -> padded time-major :class:`Sequences`."""
    n = len(X)
    if n == 0:
        raise ValueError("Found an empty list of sequences (0 samples), while a "
                         "minimum of 1 is required.")
    arrays, elem_ndim = [], []
    for i, seq in enumerate(X):
        if hasattr(seq, "toarray") or hasattr(seq, "tocsr"):
            raise TypeError(f"X[{i}] is a sparse matrix; sequences must be dense arrays "
                            "(use .toarray()).")
        _reject_strings(seq, f"X[{i}]")
        if type(seq) is np.ndarray and seq.dtype in FLOAT_DTYPES and seq.ndim in (1, 2):
            a = seq  # what check_array would return, checked by the lines below
        else:
            from sklearn.utils.validation import check_array

            a = check_array(seq, ensure_2d=False, dtype=FLOAT_DTYPES,
                            input_name=f"X[{i}]", ensure_min_samples=0,
                            ensure_all_finite=False)
        if a.ndim == 0 or a.ndim > 2:
            raise ValueError(f"X[{i}] has shape {a.shape}: each sequence in a list must "
                             "be a 2-D array (n_timesteps, n_features) or a 1-D array "
                             "(n_timesteps,).")
        if a.shape[0] == 0:
            raise ValueError(f"X[{i}] has zero time steps (shape {a.shape}); every "
                             "sequence needs at least one.")
        check_finite(a, dtype, f"Input X[{i}]")
        elem_ndim.append(a.ndim)
        arrays.append(a if a.ndim == 2 else a[:, None])
    D = arrays[0].shape[1]
    for i, a in enumerate(arrays):
        if a.shape[1] != D:
            raise ValueError(f"All sequences must have the same number of features per "
                             f"time step: X[0] has {D} and X[{i}] has {a.shape[1]}.")
    if D == 0:
        raise ValueError("Found sequences with 0 feature(s) per time step, while a "
                         "minimum of 1 is required.")
    lengths = np.array([a.shape[0] for a in arrays], dtype=np.int64)
    data = np.zeros((int(lengths.max()), n, D), dtype=dtype)
    for i, a in enumerate(arrays):
        data[: a.shape[0], i] = a
    return Sequences(data, lengths, "list", elem_ndim)


def valid_mask(lengths, T):
    """Boolean (T, n) mask of the steps inside each sample's length."""
    return np.arange(T)[:, None] < lengths[None, :]


def per_step_targets(y, seqs, *, numeric, name="y", dtype=np.float64):
    """Per-time-step targets aligned with ``seqs``, time-major and padded.

    Parameters
    ----------
    y : array-like or list
        A ``(n_samples, T)`` array (or ``(n_samples, T, n_targets)`` when
        ``numeric``), where ``T`` is the padded length of X and entries past a
        sample's length are ignored; or a list of 1-D arrays ``(T_i,)`` (or
        ``(T_i, n_targets)``), one per sequence, each exactly as long as it.
    numeric : bool
        Regression targets (finite floats) rather than class labels.
    name : str, default='y'
        How the error messages call ``y``.
    dtype : numpy floating dtype, default=numpy.float64
        The dtype of numeric targets: they must be finite in it.

    Returns
    -------
    Y : ndarray of shape (T, n_samples) or (T, n_samples, n_targets)
        Time-major; padding holds a copy of a valid value (never used).
        Numeric targets have ``dtype``.
    multi : bool
        Whether there is a target axis (y given with one more dimension).
    """
    n, T = seqs.n_samples, seqs.data.shape[0]
    if y is None:
        raise ValueError("requires y to be passed, but the target y is None.")
    if _is_sequence_list(y):
        if len(y) != n:
            raise ValueError(f"y has {len(y)} sequences but X has {n} samples; per-step "
                             "targets need one sequence of targets per sample.")
        items = [np.asarray(v) for v in y]
        multi = items[0].ndim == 2 if items else False
        for i, (v, L) in enumerate(zip(items, seqs.lengths)):
            if v.ndim != (2 if multi else 1):
                raise ValueError(f"{name}[{i}] has shape {v.shape}; per-step targets must "
                                 f"all be 1-D (n_timesteps_i,)"
                                 + (" or all 2-D (n_timesteps_i, n_targets)"
                                    if numeric else ""))
            if v.shape[0] != L:
                raise ValueError(f"{name}[{i}] has {v.shape[0]} time steps but X[{i}] has "
                                 f"{L}; per-step targets must match each sequence's "
                                 "length.")
        if multi and not numeric:
            raise ValueError("per-step class labels must be 1-D per sequence")
        if multi:
            k = items[0].shape[1]
            for i, v in enumerate(items):
                if v.shape[1] != k:
                    raise ValueError(f"{name}[0] has {k} targets per step and {name}[{i}] "
                                     f"has {v.shape[1]}.")
        flat = np.concatenate(items) if items else np.empty(0)
        Y = np.empty((T, n) + flat.shape[1:], dtype=np.float64 if numeric else flat.dtype)
        for i, (v, L) in enumerate(zip(items, seqs.lengths)):
            Y[:L, i] = v
            Y[L:, i] = v[0]
    else:
        arr = np.asarray(y)
        want = "(n_samples, n_timesteps)" + (" or (n_samples, n_timesteps, n_targets)"
                                               if numeric else "")
        if arr.ndim not in ((2, 3) if numeric else (2,)):
            raise ValueError(f"per-step {name} must be an array {want} or a list of "
                             f"per-sequence arrays; got an array of shape {arr.shape}. "
                             "(For one target per sequence use RNNClassifier or "
                             "RNNRegressor.)")
        if arr.shape[0] != n:
            raise ValueError(f"{name} has {arr.shape[0]} samples but X has {n}.")
        if arr.shape[1] != T:
            raise ValueError(f"{name} has {arr.shape[1]} time steps but X has {T} (its "
                             "longest sequence); per-step targets must be aligned with X.")
        multi = arr.ndim == 3
        Y = np.array(np.swapaxes(arr, 0, 1), dtype=np.float64 if numeric else None)
        mask = valid_mask(seqs.lengths, T)
        if not mask.all():  # padding may hold anything: overwrite it with a valid value
            Y[~mask] = Y[0, 0]
    if numeric:
        Y = as_float_array(Y, dtype, f"Input {name}")
        if not multi:
            Y = Y[..., None]
    return Y, multi
