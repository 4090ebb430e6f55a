"""Safe model files: :meth:`save` of a fitted estimator and :func:`fastrnn.load`.

File format (format version 1)
------------------------------
A ZIP archive, every member *stored* (uncompressed), holding:

* ``metadata.json``: UTF-8 JSON object with

  - ``format``: the string ``"fastrnn-model"``; ``format_version``: 1;
  - ``fastrnn_version``: the library version that wrote the file;
  - ``estimator``: class name, one of ``RNNClassifier``, ``RNNRegressor``,
    ``RNNSequenceClassifier``, ``RNNSequenceRegressor``;
  - ``params``: ``get_params()`` (JSON values; ``dtype`` as ``"float32"`` or
    ``"float64"``, or ``"numpy.float32"`` for the type ``numpy.float32``, ``hidden_layer_sizes`` as a list, ``class_weight`` dicts as
    ``{"items": [[label, weight], ...]}``, a ``RandomState`` instance as null);
  - ``fitted``: ``n_features_in_``, ``n_features_per_step_``, ``n_outputs_``,
    the target layout, ``feature_names_in_``, the training record
    (``n_iter_``, ``t_``, ``loss_``, ``loss_curve_``, ...; non-finite floats as
    the strings ``"nan"``, ``"inf"``, ``"-inf"``) and, for classifiers,
    ``classes_dtype`` (``"object"`` when ``classes_`` held Python strings);
  - ``arrays``: the names of the array members, in order.

* one ``.npy`` member per array (NumPy's format, never pickled): the
  parameters of every recurrent layer under PyTorch's names,
  ``layers_[k].weight_ih_l0`` ... (``_reverse`` for the reverse direction),
  the head ``coef_`` (n_head_inputs, n_outputs) and ``intercept_``, all of the
  estimator's ``dtype``; and for classifiers ``classes_`` (bool, integer,
  float or fixed-width unicode).

Loading trusts nothing in the file: the class comes from a fixed allow-list,
parameters go through the estimator's own validation, every member's name,
dtype and shape must be exactly what the metadata implies, sizes are checked
against the file's real size before anything is read, and ``.npy`` members are
read with ``allow_pickle=False``. Any defect raises :class:`ModelFileError`
and nothing is returned.
"""

import json
import math
import os
import tempfile
import warnings
import zipfile
from numbers import Integral, Real

import numpy as np

FORMAT = "fastrnn-model"
FORMAT_VERSION = 1
_META = "metadata.json"
_MAX_META_BYTES = 1 << 20
_NPY_HEADER_SLACK = 4096  # generous bound on a .npy header
_MAX_NAME_LEN = 1000


class ModelFileError(ValueError):
    """A model file is truncated, tampered with, or not a fastrnn model file."""


class InconsistentVersionWarning(UserWarning):
    """A model (pickle or file) was written by another fastrnn version."""


def _version():
    from . import __version__

    return __version__


#: The estimators a file may hold: class name -> (classifier, per-step output).
#: Known without importing them (and scikit-learn), for :func:`load_predictor`.
_KINDS = {
    "RNNClassifier": (True, False),
    "RNNRegressor": (False, False),
    "RNNSequenceClassifier": (True, True),
    "RNNSequenceRegressor": (False, True),
}


def _registry():
    from . import estimators

    return {name: getattr(estimators, name) for name in _KINDS}


# ------------------------------------------------------------------ JSON values

def _enc_float(v):
    v = float(v)
    if math.isfinite(v):
        return v
    return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf")


def _dec_float(v, name):
    if isinstance(v, bool) or not isinstance(v, (int, float, str)):
        raise ModelFileError(f"{name}: expected a number, got {v!r}")
    if isinstance(v, str):
        if v not in ("nan", "inf", "-inf"):
            raise ModelFileError(f"{name}: expected a number, got {v!r}")
    return float(v)


def _enc_label(v):
    if isinstance(v, (bool, np.bool_)):
        return bool(v)
    if isinstance(v, Integral):
        return int(v)
    if isinstance(v, Real):
        return _enc_float(v)
    if isinstance(v, str):
        return str(v)
    raise ValueError(f"cannot save the class label {v!r} of type {type(v).__name__}")


def _enc_param(name, v):
    if name == "dtype":  # the type np.float32 as "numpy.float32", a string as itself
        return np.dtype(v).name if isinstance(v, str) else "numpy." + np.dtype(v).name
    if name == "random_state" and not (v is None or isinstance(v, Integral)):
        return None  # a RandomState instance: its stream is not saved
    if name == "class_weight" and isinstance(v, dict):
        return {"items": [[_enc_label(k), _enc_float(w)] for k, w in v.items()]}
    if v is None or isinstance(v, (bool, str)):
        return v
    if isinstance(v, np.bool_):
        return bool(v)
    if isinstance(v, Integral):
        return int(v)
    if isinstance(v, Real):
        if not math.isfinite(float(v)):
            raise ValueError(f"cannot save parameter {name}={v!r}: not finite")
        return float(v)
    if name == "hidden_layer_sizes":
        return [int(h) for h in np.asarray(v).ravel()]
    raise ValueError(f"cannot save parameter {name}={v!r}: not a JSON-safe value")


def _dec_param(name, v):
    if name == "dtype":
        types = {"numpy.float32": np.float32, "numpy.float64": np.float64}
        if v not in ("float32", "float64") and v not in types:
            raise ModelFileError(f"params.dtype: expected 'float32' or 'float64', got {v!r}")
        return types.get(v, v)
    if name == "hidden_layer_sizes" and isinstance(v, list):
        return tuple(v)
    if name == "class_weight" and isinstance(v, dict):
        items = v.get("items")
        if set(v) != {"items"} or not isinstance(items, list) or not all(
                isinstance(i, list) and len(i) == 2 for i in items):
            raise ModelFileError("params.class_weight: malformed")
        return {k: _dec_float(w, "params.class_weight") for k, w in items}
    if isinstance(v, (list, dict)):
        raise ModelFileError(f"params.{name}: unexpected value {v!r}")
    return v


# ---------------------------------------------------------------------- saving

_TRAINING_FLOATS = ("loss_", "best_loss_", "best_validation_score_")
_TRAINING_LISTS = ("loss_curve_", "validation_scores_")


def _metadata(est):
    params = {k: _enc_param(k, v) for k, v in est.get_params(deep=False).items()}
    net = est._network
    fitted = {
        "n_features_in_": int(est.n_features_in_),
        "n_features_per_step_": int(est.n_features_per_step_),
        "fit_2d": bool(est._fit_2d),
        "n_outputs_": int(est.n_outputs_),
        "n_iter_": int(est.n_iter_),
        "t_": int(est.t_),
    }
    if hasattr(est, "_y_ndim"):
        fitted["y_ndim"] = int(est._y_ndim)
    if hasattr(est, "_y_multi"):
        fitted["y_multi"] = bool(est._y_multi)
    if hasattr(est, "feature_names_in_"):
        fitted["feature_names_in_"] = [str(s) for s in est.feature_names_in_]
    for k in _TRAINING_FLOATS:
        v = getattr(est, k, None)
        fitted[k] = None if v is None else _enc_float(v)
    for k in _TRAINING_LISTS:
        v = getattr(est, k, None)
        fitted[k] = None if v is None else [_enc_float(x) for x in v]
    if hasattr(est, "classes_"):
        fitted["classes_dtype"] = "object" if est.classes_.dtype == object else "native"
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "fastrnn_version": _version(),
        "estimator": type(est).__name__,
        "params": params,
        "fitted": fitted,
        "network": {"dtype": net.dtype.name, "n_head_inputs": int(net.n_head_inputs)},
    }


def _classes_array(classes):
    """``classes_`` as an array NumPy saves without pickling."""
    c = np.asarray(classes)
    if c.dtype == object:
        if not all(isinstance(v, str) for v in c):
            raise ValueError("cannot save classes_ of mixed or non-string objects "
                             f"({c.dtype}); use numeric or string labels")
        c = c.astype(str)
    if c.dtype.kind not in "biufU":
        raise ValueError(f"cannot save classes_ of dtype {c.dtype}")
    return c


def _file_mode():
    """The mode a new file gets under the process's umask (read without setting it)."""
    umask = 0o022
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    umask = int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    return 0o666 & ~umask


def save_model(est, path):
    """Write fitted ``est`` to ``path`` atomically (see the module doc for the format).

    The file is written as a temporary ``.fastrnn-*.tmp`` in the directory of
    the file ``path`` resolves to, flushed to disk and renamed over it: when
    ``path`` is a symbolic link, the file it points to is replaced and the
    link stays.
    """
    if type(est).__name__ not in _registry() or type(est) is not _registry()[
            type(est).__name__]:
        raise TypeError(f"cannot save a {type(est).__name__}: only fastrnn's own "
                        f"estimators {sorted(_registry())} can be saved")
    if not hasattr(est, "_network"):
        from sklearn.exceptions import NotFittedError

        raise NotFittedError(f"This {type(est).__name__} instance is not fitted yet; "
                             "fit it before saving.")
    meta = _metadata(est)
    arrays = [(name, np.ascontiguousarray(p)) for name, p in est._network.named_parameters()]
    if hasattr(est, "classes_"):
        arrays.append(("classes_", _classes_array(est.classes_)))
    meta["arrays"] = [name for name, _ in arrays]
    meta_bytes = json.dumps(meta, allow_nan=False, sort_keys=True).encode("utf-8")

    # Through a symbolic link: write (and rename over) the file it points to,
    # leaving the link a link. The temporary file's name is short, so that any
    # name the file system allows for path works.
    path = os.path.realpath(os.fspath(path))
    directory = os.path.dirname(path)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".fastrnn-", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            with zipfile.ZipFile(fh, "w", compression=zipfile.ZIP_STORED) as zf:
                zf.writestr(_META, meta_bytes)
                for name, arr in arrays:
                    big = arr.nbytes > (1 << 31) - (1 << 20)
                    with zf.open(name + ".npy", "w", force_zip64=big) as member:
                        np.lib.format.write_array(member, arr, allow_pickle=False)
            fh.flush()
            os.fsync(fh.fileno())
        try:
            mode = os.stat(path).st_mode & 0o777
        except OSError:
            mode = _file_mode()
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    try:  # make the rename itself durable
        dfd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass


# --------------------------------------------------------------------- loading

def _expect(cond, msg):
    if not cond:
        raise ModelFileError(msg)


def _expect_int(v, name, low=0):
    _expect(isinstance(v, int) and not isinstance(v, bool) and v >= low,
            f"{name}: expected an integer >= {low}, got {v!r}")
    return v


def _param_count(cell, n_features, sizes, bidirectional, merge, n_outputs):
    """Number of parameters the metadata implies (before anything is allocated)."""
    G = {"rnn": 1, "lstm": 4, "gru": 3}[cell]
    nd = 2 if bidirectional else 1
    total, in_size = 0, n_features
    for H in sizes:
        total += nd * (G * H * in_size + G * H * H + 2 * G * H)
        in_size = 2 * H if bidirectional and merge == "concat" else H
    return total + in_size * n_outputs + n_outputs, in_size


def _read_member(zf, info, limit):
    with zf.open(info) as f:
        data = f.read(limit + 1)
    _expect(len(data) == info.file_size <= limit,
            f"member {info.filename!r}: size does not match its declared size")
    return data


def _usable_backend(saved, dtype):
    """``saved``, or ``'auto'`` with a warning naming both when the backend a
    model was saved with is not available here (say 'cython' where the
    extension is not built): the model loads and predicts all the same. Only
    the backend asked for is imported (not Numba, when it is 'cython')."""
    from . import _kernels

    try:
        _kernels.resolve_backend(saved)  # ValueError for a name that is no backend
        return saved
    except ImportError:
        pass
    reason = _kernels.unavailable_backends().get(saved, "not available")
    used = _kernels.resolve_backend("auto")
    warnings.warn(f"this model was saved with backend={saved!r}, which is not available "
                  f"here ({reason}); it is loaded with backend='auto' (now {used!r}) "
                  f"instead. Its predictions agree with {saved!r}'s to "
                  f"{np.dtype(dtype).name} rounding, not bit for bit.", UserWarning)
    return "auto"


def _estimator_from_params(cls, params):
    """``cls`` with the file's parameters, through the estimator's own validation."""
    est = cls()
    expected_params = set(est.get_params(deep=False))
    _expect(set(params) == expected_params,
            f"params: expected keys {sorted(expected_params)}, got {sorted(params)}")
    est.set_params(**params)
    est._validate_params()
    est.backend = _usable_backend(est.backend, est.dtype)
    sizes = est._check_params()  # e.g. class_weight values; the hidden sizes
    return est, sizes


#: The parameters a predictor uses: the network's (``pooling`` only where the
#: output is per sequence), and ``n_jobs``.
_SERVING_PARAMS = ("cell", "hidden_layer_sizes", "bidirectional", "bidirectional_merge",
                   "dtype", "backend", "n_jobs")


def _serving_params(params, per_step):
    """The parameters a predictor uses, checked without scikit-learn (the
    estimator's validation of every parameter needs it). The network checks
    ``cell``, ``bidirectional_merge`` and ``pooling`` when it is built."""
    from ._network import hidden_sizes

    keys = _SERVING_PARAMS + (() if per_step else ("pooling",))
    missing = [k for k in keys if k not in params]
    _expect(not missing, f"params: missing {missing}")
    # the per-step estimators have no pooling: a file that disagrees was
    # relabelled (and pooling=None would mean per-step output)
    _expect(("pooling" in params) != per_step,
            "params.pooling: present for a per-step estimator"
            if per_step else "params.pooling: missing")
    p = {k: params[k] for k in keys}
    _expect(per_step or isinstance(p["pooling"], str),
            f"params.pooling: expected a string, got {p.get('pooling')!r}")
    _expect(isinstance(p["bidirectional"], bool), "params.bidirectional: expected a bool")
    n_jobs = p["n_jobs"]
    _expect(n_jobs is None or (isinstance(n_jobs, int) and n_jobs != 0),
            f"params.n_jobs: expected None or a non-zero integer, got {n_jobs!r}")
    _expect(isinstance(p["backend"], str), "params.backend: expected a string")
    p["backend"] = _usable_backend(p["backend"], p["dtype"])
    p["dropout"] = 0.0  # prediction never drops out
    return p, hidden_sizes(p["hidden_layer_sizes"])


def load_model(path, *, predictor=False):
    """Read a model file written by :meth:`save`; see :func:`fastrnn.load` and
    :func:`fastrnn.serving.load_predictor`.

    Parameters
    ----------
    path : str or os.PathLike
    predictor : bool, default=False
        Return a :class:`fastrnn.serving.Predictor` (scikit-learn is not
        imported) instead of the estimator. Both check the file the same way,
        except that a predictor checks only the parameters it uses (the
        network's and ``n_jobs``).

    Returns
    -------
    estimator or Predictor
        The fitted estimator (or predictor). Its predictions are bit-identical to the saved
        model's on the same kernel backend; the other backends agree to
        rounding in the model's dtype (float32: about 1e-6), not bit for bit.
        A model saved with a backend that is not available here (e.g.
        ``'cython'`` where the extension is not built) loads with
        ``backend='auto'`` and a ``UserWarning`` naming both. A
        ``random_state`` that was a ``RandomState`` instance comes back as
        None (see :meth:`save`).

    Raises
    ------
    ModelFileError
        The file is truncated, tampered with, not a fastrnn model file, or
        holds parameters the estimator refuses (e.g. a negative class weight).
    """
    path = os.fspath(path)
    with open(path, "rb") as fh:  # OSError (missing file, permissions) passes through
        file_size = os.fstat(fh.fileno()).st_size
        try:
            return _load(fh, file_size, predictor)
        except ModelFileError:
            raise
        except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, TypeError,
                KeyError, IndexError, OverflowError, EOFError, OSError, MemoryError,
                UnicodeDecodeError, RecursionError, NotImplementedError) as exc:
            raise ModelFileError(f"{path!r} is not a valid fastrnn model file: "
                                 f"{type(exc).__name__}: {exc}") from exc


def _load(fh, file_size, predictor):
    import io

    from ._inference import ClassifierInference, RegressorInference
    from ._network import network_from_params

    with zipfile.ZipFile(fh) as zf:
        infos = zf.infolist()
        _expect(len(infos) <= 1024, "too many members")
        names = [i.filename for i in infos]
        _expect(len(set(names)) == len(names), "duplicate member names")
        by_name = {i.filename: i for i in infos}
        declared = 0
        for info in infos:
            _expect(info.compress_type == zipfile.ZIP_STORED,
                    f"member {info.filename!r} is compressed; fastrnn files store "
                    "members uncompressed")
            _expect(info.compress_size == info.file_size,
                    f"member {info.filename!r}: declared sizes disagree")
            _expect(not info.flag_bits & 0x1, f"member {info.filename!r} is encrypted")
            declared += info.file_size
        _expect(declared <= file_size, "members declare more bytes than the file holds")
        _expect(_META in by_name, f"no {_META} member: not a fastrnn model file")

        meta = json.loads(_read_member(zf, by_name[_META], _MAX_META_BYTES)
                          .decode("utf-8"))
        _expect(isinstance(meta, dict), "metadata is not a JSON object")
        _expect(meta.get("format") == FORMAT, "not a fastrnn model file")
        fv = meta.get("format_version")
        _expect(fv == FORMAT_VERSION and isinstance(fv, int) and not isinstance(fv, bool),
                f"unsupported format_version {fv!r}; this fastrnn reads version "
                f"{FORMAT_VERSION}")
        lib = meta.get("fastrnn_version")
        _expect(isinstance(lib, str) and len(lib) < 100, "fastrnn_version missing")
        cls_name = meta.get("estimator")
        _expect(isinstance(cls_name, str) and cls_name in _KINDS,
                f"unknown estimator {cls_name!r}; expected one of {sorted(_KINDS)}")
        is_clf, per_step = _KINDS[cls_name]

        # -- parameters: the estimator's own validation, or a predictor's checks
        params = meta.get("params")
        _expect(isinstance(params, dict), "params missing")
        params = {k: _dec_param(k, v) for k, v in params.items()}
        if predictor:
            est = None
            net_params, sizes = _serving_params(params, per_step)
        else:
            est, sizes = _estimator_from_params(_registry()[cls_name], params)
            net_params = est.get_params(deep=False)

        # -- fitted dimensions
        fitted = meta.get("fitted")
        _expect(isinstance(fitted, dict), "fitted missing")
        n_in = _expect_int(fitted.get("n_features_in_"), "n_features_in_", 1)
        n_step = _expect_int(fitted.get("n_features_per_step_"), "n_features_per_step_", 1)
        n_out = _expect_int(fitted.get("n_outputs_"), "n_outputs_", 1)
        fit_2d = fitted.get("fit_2d")
        _expect(isinstance(fit_2d, bool), "fit_2d missing")
        _expect(not fit_2d or n_step == 1, "a 2-D fit has one feature per step")

        # -- the arrays: names and total size, before anything is allocated
        array_names = meta.get("arrays")
        _expect(isinstance(array_names, list) and all(
            isinstance(n, str) and len(n) < _MAX_NAME_LEN for n in array_names),
            "arrays missing")
        _expect(set(by_name) == {_META} | {n + ".npy" for n in array_names}
                and len(array_names) == len(infos) - 1,
                "the archive's members do not match the metadata's array list")
        dtype = np.dtype(net_params["dtype"])
        count, n_head = _param_count(net_params["cell"], n_step, sizes,
                                     net_params["bidirectional"],
                                     net_params["bidirectional_merge"], n_out)
        _expect(count * dtype.itemsize <= file_size,
                "the metadata implies more parameters than the file holds")
        net_meta = meta.get("network")
        _expect(isinstance(net_meta, dict) and net_meta.get("dtype") == dtype.name
                and net_meta.get("n_head_inputs") == n_head, "network metadata mismatch")

        net = network_from_params(net_params, n_step, n_out, per_step=per_step,
                                  loss=(ClassifierInference if is_clf
                                        else RegressorInference)._loss,
                                  rng=np.random.RandomState(0))
        expected = {name: p for name, p in net.named_parameters()}
        want_names = list(expected) + (["classes_"] if is_clf else [])
        _expect(array_names == want_names,
                f"arrays: expected {want_names}, got {array_names}")
        values = {}
        for name in want_names:
            info = by_name[name + ".npy"]
            if name in expected:
                limit = expected[name].nbytes + _NPY_HEADER_SLACK
            else:
                limit = n_out * 4 * 1024 + _NPY_HEADER_SLACK  # classes_: <= 1 KiB chars
            raw = _read_member(zf, info, limit)
            arr = np.lib.format.read_array(io.BytesIO(raw), allow_pickle=False)
            if name in expected:
                p = expected[name]
                _expect(arr.dtype == p.dtype and arr.shape == p.shape,
                        f"array {name!r}: expected {p.dtype} {p.shape}, got "
                        f"{arr.dtype} {arr.shape}")
                _expect(bool(np.isfinite(arr).all()), f"array {name!r} is not finite")
            values[name] = arr

    # -- everything checked: assemble
    for name, p in expected.items():
        p[...] = values[name]
    for layer in net.layers:
        layer.eval()
    fitted_attrs = {"n_features_in_": n_in, "n_features_per_step_": n_step,
                    "_fit_2d": fit_2d, "n_outputs_": n_out, "_network": net}
    if is_clf:
        classes = values["classes_"]
        _expect(classes.dtype.kind in "biufU" and classes.shape == (n_out,),
                f"classes_: expected {n_out} labels of a plain dtype, got "
                f"{classes.dtype} {classes.shape}")
        _expect(n_out >= 2 and np.array_equal(np.unique(classes), classes),
                "classes_ must be sorted, unique and at least two")
        if classes.dtype.kind == "f":
            _expect(bool(np.isfinite(classes).all()), "classes_ is not finite")
        cdt = fitted.get("classes_dtype")
        _expect(cdt in ("object", "native"), "classes_dtype missing")
        if cdt == "object":
            _expect(classes.dtype.kind == "U", "object classes_ must be strings")
            classes = classes.astype(object)
        fitted_attrs["classes_"] = classes
    if cls_name == "RNNRegressor":
        y_ndim = fitted.get("y_ndim")
        _expect(y_ndim in (1, 2) and not isinstance(y_ndim, bool)
                and (y_ndim == 2 or n_out == 1), "y_ndim missing")
        fitted_attrs["_y_ndim"] = y_ndim
    if cls_name == "RNNSequenceRegressor":
        y_multi = fitted.get("y_multi")
        _expect(isinstance(y_multi, bool) and (y_multi or n_out == 1), "y_multi missing")
        fitted_attrs["_y_multi"] = y_multi
    names = fitted.get("feature_names_in_")
    if names is not None:
        _expect(isinstance(names, list) and len(names) == n_in and fit_2d
                and all(isinstance(s, str) for s in names), "feature_names_in_ malformed")
        fitted_attrs["feature_names_in_"] = np.asarray(names, dtype=object)
    _expect(fit_2d or n_in == n_step, "n_features_in_ disagrees with the network")

    record = {"n_iter_": _expect_int(fitted.get("n_iter_"), "n_iter_"),
              "t_": _expect_int(fitted.get("t_"), "t_")}
    for k in _TRAINING_FLOATS:
        v = fitted.get(k)
        record[k] = None if v is None else _dec_float(v, k)
    for k in _TRAINING_LISTS:
        v = fitted.get(k)
        _expect(v is None or isinstance(v, list), f"{k} malformed")
        record[k] = None if v is None else [_dec_float(x, k) for x in v]
    if lib != _version():
        warnings.warn(f"this model file was written by fastrnn {lib}; loading it with "
                      f"fastrnn {_version()}", InconsistentVersionWarning)

    if predictor:
        from .serving import ClassifierPredictor, RegressorPredictor

        cls = ClassifierPredictor if is_clf else RegressorPredictor
        return cls(cls_name, fitted_attrs, per_step=per_step, n_jobs=net_params["n_jobs"])
    for k, v in {**fitted_attrs, **record}.items():
        setattr(est, k, v)
    est._no_improvement_count = 0
    est._best_weights = None
    from sklearn.utils import check_random_state

    est._random_state = check_random_state(est.random_state)
    return est
