"""scikit-learn estimators backed by the recurrent layers of :mod:`fastrnn.nn`.

* :class:`RNNClassifier`, :class:`RNNRegressor`: many-to-one, one label or
  value (or vector of values) per sequence.
* :class:`RNNSequenceClassifier`, :class:`RNNSequenceRegressor`: per time
  step (sequence labelling / tagging, per-step regression), one label or value
  per time step.

X is a 3-D array ``(n_samples, n_timesteps, n_features)``, a 2-D array
``(n_samples, n_timesteps)`` of univariate sequences, or a list of
``(n_timesteps_i, n_features)`` arrays of varying length; see
:mod:`fastrnn._data`. Parameter names follow
:class:`sklearn.neural_network.MLPClassifier` wherever the idea is the same.
"""

import time
import warnings
from numbers import Integral, Real

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin, _fit_context
from sklearn.exceptions import ConvergenceWarning, NotFittedError
from sklearn.metrics import accuracy_score, r2_score
from sklearn.model_selection import train_test_split
from sklearn.utils import check_random_state, column_or_1d, gen_batches
from sklearn.utils._param_validation import Interval, Options, StrOptions
from sklearn.utils.class_weight import compute_class_weight
from sklearn.utils.multiclass import check_classification_targets, unique_labels
from sklearn.utils.validation import _check_sample_weight, check_array

from . import _kernels
from ._config import layer_threads, single_threaded_blas
from ._data import per_step_targets, valid_mask, validate_sequences
from ._inference import ClassifierInference, Inference, RegressorInference
from ._memory import release_memory
from ._network import CELLS, MERGES, POOLINGS, hidden_sizes, network_from_params
from ._training import AdamOptimizer, NonFiniteError, SGDOptimizer, clip_grad_norm
from ._validation import as_float_array

__all__ = [
    "RNNClassifier",
    "RNNRegressor",
    "RNNSequenceClassifier",
    "RNNSequenceRegressor",
]

#: The private attributes fit sets (the public ones end with an underscore).
_FIT_STATE = frozenset({"_network", "_optimizer", "_random_state", "_best_weights",
                        "_no_improvement_count", "_fit_2d", "_y_ndim", "_y_multi"})


def _progress_bar(total, enabled):
    """A tqdm bar over epochs when tqdm is installed and ``enabled``; else None."""
    if not enabled:
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, unit="epoch", leave=False, dynamic_ncols=True)


# Parameter documentation shared by the four estimators (numpydoc fragments).
_PARAMS_DOC = """
    hidden_layer_sizes : tuple of int, default=(64,)
        Hidden units of each stacked recurrent layer, input side first, e.g.
        ``(64,)`` or ``(128, 64)``. Each entry is one :mod:`fastrnn.nn` layer,
        so sizes may differ.
    cell : {'lstm', 'gru', 'rnn'}, default='lstm'
        Recurrent cell: :class:`fastrnn.nn.LSTM`, :class:`~fastrnn.nn.GRU`, or
        the Elman :class:`~fastrnn.nn.RNN` with tanh. The LSTM is the default
        because it learns long-range dependencies most reliably.
    bidirectional : bool, default=False
        Run every recurrent layer in both directions.
    bidirectional_merge : {'concat', 'sum'}, default='concat'
        How the two directions' outputs are combined before the next layer and
        the head: concatenated (``2 * hidden`` features, as PyTorch) or summed.
    dropout : float in [0, 1), default=0.0
        Inverted dropout, during training only, on the output of every recurrent
        layer: the input of the next layer and of the output layer.
    solver : {'adam', 'sgd'}, default='adam'
        Adam (as ``torch.optim.Adam``) or SGD with momentum.
    alpha : float, default=1e-4
        L2 penalty on the weight matrices (not the biases), added to the loss as
        ``alpha / 2 * ||W||^2`` divided by the batch's total sample weight, as in
        scikit-learn's MLP.
    batch_size : int or 'auto', default='auto'
        Sequences per minibatch; 'auto' is ``min(200, n_samples)`` (MLP's rule).
    learning_rate : {'constant', 'adaptive'}, default='constant'
        'adaptive' divides the learning rate by 5 each time ``n_iter_no_change``
        epochs in a row fail to improve the training loss (or the validation
        score with ``early_stopping``) by ``tol``, and stops once it falls
        below 1e-6. Unlike MLP it applies to both solvers.
    learning_rate_init : float, default=1e-3
        Initial step size; 1e-3 is Adam's recommended default (Kingma & Ba).
        With ``solver='sgd'`` something like 0.01 to 0.1 is typical.
    max_iter : int, default=200
        Maximum number of epochs (passes over the training set).
    shuffle : bool, default=True
        Shuffle the sequences before every epoch.
    random_state : int, RandomState instance or None, default=None
        Seeds the initial weights, the shuffling, dropout and the validation
        split. An int gives identical weights on every fit.
    tol : float, default=1e-4
        Minimal improvement of the loss (or validation score) per epoch that
        counts as progress.
    verbose : bool or int, default=False
        Print the loss, validation score and time of every epoch; with tqdm
        installed, also show a progress bar.
    warm_start : bool, default=False
        Continue from the weights of the previous fit instead of starting anew.
    momentum : float in [0, 1], default=0.9
        Momentum of ``solver='sgd'``.
    nesterovs_momentum : bool, default=True
        Nesterov's momentum for ``solver='sgd'`` with ``momentum > 0``.
    early_stopping : bool, default=False
        Hold out ``validation_fraction`` of the training sequences and stop when
        their score has not improved by ``tol`` for ``n_iter_no_change``
        epochs; the weights of the best epoch are restored. The score is
        weighted by ``sample_weight``, or unweighted when every held-out
        sequence has weight 0; a split that would leave only sequences of
        weight 0 to train on trades the heaviest held-out sequence for one of
        them.
    validation_fraction : float in (0, 1), default=0.1
        Share of the training data held out for early stopping.
    beta_1, beta_2 : float in [0, 1), default=0.9, 0.999
        Adam's decay rates of the first and second moment estimates.
    epsilon : float, default=1e-8
        Adam's numerical-stability constant.
    n_iter_no_change : int, default=10
        Epochs without improvement (see ``tol``) before stopping or, with
        ``learning_rate='adaptive'``, lowering the learning rate.
    max_grad_norm : float or None, default=5.0
        Gradient clipping: before every update, if the global L2 norm of all
        gradients exceeds this, they are scaled down to it (as
        ``torch.nn.utils.clip_grad_norm_``). Recurrent networks occasionally
        produce exploding gradients (Pascanu et al., 2013); 5 (OpenNMT's
        default) rarely touches ordinary steps. None turns clipping off.
    bptt_length : int or None, default=None
        Truncated backpropagation through time: sequences are cut into windows
        of this many steps; the state is carried from one window to the next,
        the gradient is not. None backpropagates through whole sequences.
        Cannot be combined with ``bidirectional``.
    backend : {'auto', 'cython', 'numba', 'reference'}, default='auto'
        Kernel backend of the layers; 'auto' picks the fastest available (see
        :func:`fastrnn.set_backend`).
    dtype : {numpy.float32, numpy.float64, 'float32', 'float64'}, default=numpy.float32
        Precision of the weights and the computation. float32 is as accurate as
        training needs and about twice as fast; float64 is for gradient checks.
    n_jobs : int or None, default=None
        Threads each batch is split over, in ``fit`` and in ``predict``, each
        thread taking whole sequences: in float32 on the Cython kernels, with
        two threads (or too few sequences for three slices), each kernel
        splits a batch of 16 sequences or more with the extension's helper
        thread; otherwise a batch of 64 or more is split over Python threads,
        32 sequences or more each, BLAS on one thread meanwhile. None:
        ``fit`` on one thread, ``predict`` on as many as BLAS may use; -1: all
        cores, -2: all but one, and so on. Results do not depend on it beyond
        float rounding.
"""

_INIT_DOC = """
    Initialisation (not a parameter; close to Keras' defaults, which train
    recurrent networks well): input weights Glorot-uniform; recurrent weights
    one random orthogonal matrix per gate (Saxe et al., 2014), which keeps the
    recurrent map norm-preserving at the start so gradients neither vanish nor
    explode over long sequences; biases zero, except the LSTM forget-gate bias,
    which is 1 so the cell remembers by default (Gers et al., 2000; Jozefowicz
    et al., 2015); output layer Glorot-uniform.

    fit and partial_fit run BLAS on one thread: training is a chain of small
    matrix products, for which a second thread costs more than it saves (on a
    busy machine, up to 100 times more); ``n_jobs`` splits each batch over
    threads instead. predict may be called from several threads at once. While
    a batch is split over Python threads (float64, or a backend other than
    Cython, in fit with ``n_jobs`` or in predict of 64 sequences or more),
    BLAS is set to one thread for the whole process and restored afterwards
    (see :func:`fastrnn._config.single_threaded_blas`).

    Divergence: if the loss, a gradient or a weight becomes NaN or infinite
    during training (a far too large learning rate, unscaled targets), the
    weights from the end of the last complete epoch are restored, training
    stops and a ``ConvergenceWarning`` says so; the estimator never keeps
    non-finite weights. If it happens in the first epoch of a fit from fresh
    weights (no epoch to go back to), fit raises ValueError instead and leaves
    the estimator unfitted. X and y must be finite in ``dtype`` (1e39 is not
    a float32) and the weights (``sample_weight`` times ``class_weight``) must
    have a positive, finite sum. predict raises ValueError rather than return
    a NaN.

    Persistence: :meth:`save` writes a safe, documented file that
    :func:`fastrnn.load` reads back without unpickling anything; pickle and
    joblib work too (unpickling warns across fastrnn versions).
"""

_ATTRS_DOC = """
    n_features_in_ : int
        Number of features seen in fit, in scikit-learn's sense: for 3-D or list
        input the features per time step; for a 2-D X its number of columns
        (the sequence length), which later 2-D input must then match.
    n_features_per_step_ : int
        Input size of the network (1 for a 2-D X).
    feature_names_in_ : ndarray of str
        Column names, when fit on a DataFrame.
    layers_ : list of fastrnn.nn.RNN, LSTM or GRU
        The trained recurrent layers, input side first, each with
        ``num_layers=1``; their parameters carry PyTorch's names
        (``layers_[0].state_dict()``).
    coef_ : ndarray of shape (n_hidden_out, n_outputs)
        Weights of the output layer (``n_hidden_out`` is the last hidden size,
        doubled for ``bidirectional`` with 'concat').
    intercept_ : ndarray of shape (n_outputs,)
    n_outputs_ : int
    loss_ : float
        Training loss of the last epoch.
    loss_curve_ : list of float
        Training loss of every epoch (mean over the epoch's minibatches,
        including the L2 term).
    best_loss_ : float or None
        Lowest training loss reached; None with ``early_stopping``.
    validation_scores_ : list of float or None
        Score on the held-out data after every epoch (accuracy or R^2); None
        without ``early_stopping``.
    best_validation_score_ : float or None
    n_iter_ : int
        Epochs run.
    t_ : int
        Training sequences seen (``n_iter_ * n_train``).
"""


def _inject_docs(cls):
    cls.__doc__ = (cls.__doc__.replace("%(params)s", _PARAMS_DOC.strip("\n"))
                   .replace("%(init)s", _INIT_DOC.strip("\n"))
                   .replace("%(attrs)s", _ATTRS_DOC.strip("\n")))
    return cls


class _BaseRNN(Inference, BaseEstimator):
    """Training loop and input handling shared by all estimators (prediction comes
    from :mod:`fastrnn._inference`)."""

    _parameter_constraints = {
        "hidden_layer_sizes": ["array-like", Interval(Integral, 1, None, closed="left")],
        "cell": [StrOptions(set(CELLS))],
        "bidirectional": ["boolean"],
        "bidirectional_merge": [StrOptions(set(MERGES))],
        "dropout": [Interval(Real, 0, 1, closed="left")],
        "solver": [StrOptions({"adam", "sgd"})],
        "alpha": [Interval(Real, 0, None, closed="left")],
        "batch_size": [StrOptions({"auto"}), Interval(Integral, 1, None, closed="left")],
        "learning_rate": [StrOptions({"constant", "adaptive"})],
        "learning_rate_init": [Interval(Real, 0, None, closed="neither")],
        "max_iter": [Interval(Integral, 1, None, closed="left")],
        "shuffle": ["boolean"],
        "random_state": ["random_state"],
        "tol": [Interval(Real, 0, None, closed="left")],
        "verbose": ["verbose"],
        "warm_start": ["boolean"],
        "momentum": [Interval(Real, 0, 1, closed="both")],
        "nesterovs_momentum": ["boolean"],
        "early_stopping": ["boolean"],
        "validation_fraction": [Interval(Real, 0, 1, closed="neither")],
        "beta_1": [Interval(Real, 0, 1, closed="left")],
        "beta_2": [Interval(Real, 0, 1, closed="left")],
        "epsilon": [Interval(Real, 0, None, closed="neither")],
        "n_iter_no_change": [Interval(Integral, 1, None, closed="left")],
        "max_grad_norm": [Interval(Real, 0, None, closed="neither"), None],
        "bptt_length": [Interval(Integral, 1, None, closed="left"), None],
        "backend": [StrOptions({"auto", "cython", "numba", "reference"})],
        "dtype": [StrOptions({"float32", "float64"}),
                  Options(type, {np.float32, np.float64})],
        "n_jobs": [Integral, None],
    }

    #: Set by subclasses (``_per_step`` also by :class:`~fastrnn._inference.Inference`).
    _loss = None

    def __init__(self, hidden_layer_sizes=(64,), cell="lstm", *, bidirectional=False,
                 bidirectional_merge="concat", dropout=0.0, solver="adam", alpha=1e-4,
                 batch_size="auto", learning_rate="constant", learning_rate_init=1e-3,
                 max_iter=200, shuffle=True, random_state=None, tol=1e-4, verbose=False,
                 warm_start=False, momentum=0.9, nesterovs_momentum=True,
                 early_stopping=False, validation_fraction=0.1, beta_1=0.9,
                 beta_2=0.999, epsilon=1e-8, n_iter_no_change=10, max_grad_norm=5.0,
                 bptt_length=None, backend="auto", dtype=np.float32, n_jobs=None):
        self.hidden_layer_sizes = hidden_layer_sizes
        self.cell = cell
        self.bidirectional = bidirectional
        self.bidirectional_merge = bidirectional_merge
        self.dropout = dropout
        self.solver = solver
        self.alpha = alpha
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.learning_rate_init = learning_rate_init
        self.max_iter = max_iter
        self.shuffle = shuffle
        self.random_state = random_state
        self.tol = tol
        self.verbose = verbose
        self.warm_start = warm_start
        self.momentum = momentum
        self.nesterovs_momentum = nesterovs_momentum
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.beta_1 = beta_1
        self.beta_2 = beta_2
        self.epsilon = epsilon
        self.n_iter_no_change = n_iter_no_change
        self.max_grad_norm = max_grad_norm
        self.bptt_length = bptt_length
        self.backend = backend
        self.dtype = dtype
        self.n_jobs = n_jobs

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.three_d_array = True
        return tags

    def __sklearn_is_fitted__(self):
        return hasattr(self, "_network")

    # ---------------------------------------------------------- persistence

    def save(self, path):
        """Save the fitted model to ``path`` in fastrnn's safe file format.

        The file is a ZIP of plain ``.npy`` arrays (the layers' parameters under
        PyTorch's names, the head, ``classes_``) and JSON metadata (versions,
        class name, ``get_params()``, fitted dimensions); see
        :mod:`fastrnn._persist`. Read it back with :func:`fastrnn.load`, which
        never unpickles or executes anything. The write is atomic: a temporary
        file in the same directory, flushed to disk, then renamed over
        ``path``, so an error never damages an existing file there. When
        ``path`` is a symbolic link, the file it points to is replaced and the
        link stays a link.

        The loaded model predicts bit-identically on the same kernel backend
        (other backends agree to rounding in ``dtype``); a ``backend`` not
        available where it is loaded falls back to 'auto' with a warning. A
        ``random_state`` given as an int or None is saved as it is; a
        ``RandomState`` instance is saved as None, since its stream cannot be
        stored: predictions are unaffected, but training the loaded model
        further (``partial_fit``, ``warm_start``) draws shuffles and dropout
        masks from NumPy's global generator, as with ``random_state=None``.

        Parameters
        ----------
        path : str or os.PathLike
        """
        from ._persist import save_model

        save_model(self, path)

    # The trained network owns the weights; these views stay in step with it
    # through further training and survive pickling as one set of arrays.
    def _fitted_network(self, attr):
        try:
            return self.__dict__["_network"]
        except KeyError:
            raise AttributeError(f"{type(self).__name__} has no attribute {attr!r} "
                                 "before it is fitted") from None

    @property
    def layers_(self):
        return self._fitted_network("layers_").layers

    @property
    def coef_(self):
        return self._fitted_network("coef_").coef

    @property
    def intercept_(self):
        return self._fitted_network("intercept_").intercept

    # ------------------------------------------------------------- helpers

    def _hidden_sizes(self):
        return hidden_sizes(self.hidden_layer_sizes)

    def _check_params(self):
        """The checks of the parameters that ``_parameter_constraints`` cannot
        express; fit and :func:`fastrnn.load` both run them.

        Returns
        -------
        hidden_sizes : tuple of int
            ``hidden_layer_sizes``, validated.

        Raises
        ------
        ValueError
            A parameter value, or a combination, that cannot be trained.
        ImportError
            ``backend`` names a backend that is not built here.
        """
        sizes = self._hidden_sizes()
        if self.bptt_length is not None and self.bidirectional:
            raise ValueError("bptt_length cannot be combined with bidirectional=True: "
                             "the reverse direction needs the whole sequence.")
        _kernels.resolve_backend(self.backend)  # ImportError if it is not built
        if self.n_jobs == 0:
            raise ValueError("n_jobs=0 has no meaning; expected None, a positive "
                             "number of threads, or -1 for all cores")
        return sizes

    def _build_network(self, n_features, n_outputs, rng):
        """A freshly initialised network; ``rng`` is the first thing that draws."""
        return network_from_params(self.get_params(deep=False), n_features, n_outputs,
                                   per_step=self._per_step, loss=self._loss, rng=rng)

    def _work_dtype(self):
        net = getattr(self, "_network", None)
        return net.dtype if net is not None else np.dtype(self.dtype)

    def _validate_X(self, X):
        if not hasattr(self, "_network"):  # check_is_fitted's message, without its cost
            raise NotFittedError(
                f"This {type(self).__name__} instance is not fitted yet. Call 'fit' with "
                "appropriate arguments before using this estimator.")
        return super()._validate_X(X)

    def _sample_weight(self, sample_weight, n):
        sw = _check_sample_weight(sample_weight, np.empty((n, 0)), dtype=np.float64,
                                  ensure_non_negative=True)
        if not np.any(sw > 0):
            raise ValueError("Sample weights must contain at least one non-zero number "
                             "(all sample weights are zero).")
        return sw

    def _weight_sum(self, weights, dtype):
        """The sum of the combined weights of every loss term (``sample_weight``
        times the class weight, zero on padding), which must be positive and
        finite: every batch's share of it then is too, and no weighted loss
        overflows. Nor may the L2 term's ``alpha / (a batch's weight)`` overflow
        ``dtype``, the model's."""
        with np.errstate(over="ignore"):
            total = float(weights.sum())
        class_weight = getattr(self, "class_weight", None)
        what = ("sample_weight times class_weight" if class_weight is not None
                else "sample_weight")
        if total > 0 and np.isfinite(total):
            smallest = float(weights[weights > 0].min())  # no batch weighs less
            if self.alpha / smallest <= float(np.finfo(dtype).max):
                return total
            raise ValueError(f"The training weights ({what}) are too small: the L2 "
                             f"term's alpha / weight = {self.alpha!r} / {smallest:.3g} "
                             f"overflows {np.dtype(dtype).name}. Multiply sample_weight "
                             "by a constant: only the ratios of the weights matter (and, "
                             "through their sum, the strength of alpha).")
        if total == 0:
            raise ValueError(f"The training weights ({what}) are all zero; expected at "
                             "least one sequence with a positive weight. Got "
                             f"class_weight={class_weight!r}.")
        raise ValueError(f"The training weights ({what}) sum to infinity (the largest "
                         f"is {float(weights.max()):.3g}); expected a finite sum. Divide "
                         "sample_weight by a constant: only the ratios of the weights "
                         "matter (and, through the sum, the strength of alpha).")

    def _batches(self, n):
        if self.batch_size == "auto":
            return min(200, n)
        if self.batch_size > n:
            warnings.warn("Got `batch_size` larger than the number of training "
                          f"sequences ({n}); it is clipped to {n}.", UserWarning)
        return min(self.batch_size, n)

    # -------------------------------------------------------- training loop

    def _fit(self, X, y, sample_weight=None, *, incremental=False, classes=None):
        self._check_params()
        try:
            with single_threaded_blas(), layer_threads(self._n_threads(fit=True)):
                # why one BLAS thread: see fastrnn._config.single_threaded_blas
                return self._fit_loop(X, y, sample_weight, incremental, classes)
        finally:
            if not incremental:
                # the array memory kept between the steps (fastrnn._memory: up
                # to 1 GiB) goes back when a fit ends; partial_fit keeps it for
                # the next call
                release_memory()

    def _fit_loop(self, X, y, sample_weight, incremental, classes):
        first = not hasattr(self, "_network") or (not self.warm_start and not incremental)
        seqs = validate_sequences(self, X, reset=first,
                                  dtype=np.dtype(self.dtype) if first else
                                  self._network.dtype)
        target, weights = self._prepare_targets(y, seqs, first=first,
                                                incremental=incremental, classes=classes)
        sw = self._sample_weight(sample_weight, seqs.n_samples)
        with np.errstate(over="ignore"):  # an infinite product fails _weight_sum
            weights = weights * (sw if not self._per_step else sw[None, :])
        weight_sum = self._weight_sum(weights, np.dtype(self.dtype) if first
                                      else self._network.dtype)

        if first:
            self._random_state = check_random_state(self.random_state)
            self._network = self._build_network(seqs.n_features, self.n_outputs_,
                                                self._random_state)
            self.n_iter_ = 0
            self.t_ = 0
            self.loss_ = None
            self.loss_curve_ = []
        early_stopping = self.early_stopping and not incremental
        if first or not incremental:
            # Stopping is judged within each call to fit (a warm start may bring
            # new data); partial_fit calls carry it over.
            self._no_improvement_count = 0
            self._best_weights = None
            if early_stopping:
                if first or self.validation_scores_ is None:
                    self.validation_scores_ = []
                self.best_validation_score_ = -np.inf
                self.best_loss_ = None
            else:
                self.validation_scores_ = None
                self.best_validation_score_ = None
                self.best_loss_ = np.inf
        elif self.best_loss_ is None:  # partial_fit after a fit with early stopping
            self.best_loss_ = np.inf
        rng = self._random_state
        net = self._network
        params = net.parameters()
        if not incremental or not hasattr(self, "_optimizer"):
            if self.solver == "adam":
                self._optimizer = AdamOptimizer(params, self.learning_rate_init,
                                                self.beta_1, self.beta_2, self.epsilon,
                                                lr_schedule=self.learning_rate)
            else:
                self._optimizer = SGDOptimizer(params, self.learning_rate_init,
                                               self.learning_rate, self.momentum,
                                               self.nesterovs_momentum)
        opt = self._optimizer

        n = seqs.n_samples
        train_idx = np.arange(n)
        if early_stopping:
            train_idx, val_idx = self._validation_split(n, target, rng, weights)
            val_sw = sw[val_idx]
            if not val_sw.any():  # their weights are undefined as a score's: equal
                val_sw = np.ones_like(val_sw)
            val = (seqs.take(val_idx), self._take_target(target, val_idx, seqs),
                   val_sw)
        n_train = train_idx.size
        batch_size = self._batches(n_train)
        bar = _progress_bar(1 if incremental else self.max_iter,
                            bool(self.verbose) and not incremental)
        say = bar.write if bar is not None else print
        bptt = self.bptt_length
        drop_rng = rng if self.dropout > 0 else None
        exhausted = not incremental
        try:
            for _ in range(1 if incremental else self.max_iter):
                start = time.perf_counter()
                good_weights = net.get_weights()  # restored if this epoch diverges
                diverged = False
                order = rng.permutation(train_idx) if self.shuffle else train_idx
                total_loss, total_w = 0.0, 0.0
                for sl in gen_batches(n_train, batch_size):
                    idx = order[sl]
                    bw = weights[..., idx]
                    w_sum = float(bw.sum())
                    if w_sum <= 0:
                        continue
                    lengths = seqs.lengths[idx]
                    T = int(lengths.max())
                    xb = seqs.data[:T, idx]
                    tb = target[idx] if not self._per_step else target[:T, idx]
                    if self._per_step:
                        bw = bw[:T]
                    try:
                        loss, grads = net.loss_and_grads(xb, lengths, tb, bw,
                                                         alpha=self.alpha,
                                                         bptt_length=bptt, rng=drop_rng)
                    except NonFiniteError:
                        diverged = True
                        break
                    norm = clip_grad_norm(grads, self.max_grad_norm)
                    if not (np.isfinite(loss) and np.isfinite(norm)):
                        diverged = True
                        break
                    opt.update_params(params, grads)
                    if not all(np.isfinite(p).all() for p in params):
                        diverged = True
                        break
                    share = w_sum / weight_sum  # <= 1: the products cannot overflow
                    total_loss += loss * share
                    total_w += share
                if diverged:
                    if first and not self.n_iter_:
                        self._diverged_in_first_epoch()  # raises
                    self._diverged(net, good_weights)
                    exhausted = False
                    break
                self.n_iter_ += 1
                self.t_ += n_train
                self.loss_ = total_loss / total_w if total_w else np.nan
                self.loss_curve_.append(self.loss_)
                if early_stopping:
                    score = self._score_sequences(*val)
                    self.validation_scores_.append(score)
                    if score < self.best_validation_score_ + self.tol:
                        self._no_improvement_count += 1
                    else:
                        self._no_improvement_count = 0
                    if score > self.best_validation_score_:
                        self.best_validation_score_ = score
                        self._best_weights = net.get_weights()
                else:
                    if self.loss_ > self.best_loss_ - self.tol:
                        self._no_improvement_count += 1
                    else:
                        self._no_improvement_count = 0
                    if self.loss_ < self.best_loss_:
                        self.best_loss_ = self.loss_
                        self._best_weights = net.get_weights()
                elapsed = time.perf_counter() - start
                if self.verbose:
                    line = f"Iteration {self.n_iter_}, loss = {self.loss_:.8f}"
                    if early_stopping:
                        line += f", validation score = {score:.6f}"
                    say(line + f", time = {elapsed:.3f}s")
                if bar is not None:
                    bar.update(1)
                    post = {"loss": f"{self.loss_:.4g}"}
                    if early_stopping:
                        post["val"] = f"{score:.4g}"
                    bar.set_postfix(post, refresh=False)
                opt.iteration_ends(self.t_)
                if self._no_improvement_count > self.n_iter_no_change:
                    what = ("Validation score" if early_stopping else "Training loss")
                    msg = (f"{what} did not improve more than tol={self.tol} for "
                           f"{self.n_iter_no_change} consecutive epochs.")
                    if opt.trigger_stopping(msg, self.verbose):
                        exhausted = False
                        break
                    self._no_improvement_count = 0
        except KeyboardInterrupt:
            exhausted = False
            warnings.warn(f"{type(self).__name__}.fit was interrupted (KeyboardInterrupt) "
                          f"after {self.n_iter_} complete epoch(s); the weights of the "
                          "best epoch so far are kept.", UserWarning)
            if self._best_weights is not None:
                net.set_weights(self._best_weights)
        finally:
            if bar is not None:
                bar.close()
            for layer in net.layers:
                layer.eval()

        if early_stopping and self._best_weights is not None:
            net.set_weights(self._best_weights)
        if exhausted:
            warnings.warn(f"Stochastic optimizer: maximum iterations ({self.max_iter}) "
                          "reached and the optimization hasn't converged yet.",
                          ConvergenceWarning)
        return self

    def _diverged(self, net, good_weights):
        """Training diverged (non-finite loss, gradient or weights): put back the
        weights from the start of the epoch, drop the optimizer's (possibly
        non-finite) state and warn. The estimator stays usable and predicts
        finite values."""
        net.set_weights(good_weights)
        self._best_weights = None
        self.__dict__.pop("_optimizer", None)
        warnings.warn(
            f"{type(self).__name__}: training diverged in epoch {self.n_iter_ + 1} (the "
            "loss, a gradient or a weight became NaN or infinite); the weights from the "
            f"end of epoch {self.n_iter_} are restored and training stopped. Lower "
            "learning_rate_init, set max_grad_norm, or rescale X and y.",
            ConvergenceWarning)

    def _diverged_in_first_epoch(self):
        """Training from fresh weights diverged before any epoch completed: no
        trained weights exist to fall back on, and the random initial ones are
        no model. Leave the estimator unfitted and raise."""
        for attr in [k for k in vars(self) if k in _FIT_STATE
                     or (k.endswith("_") and not k.startswith("__"))]:
            delattr(self, attr)
        raise ValueError(
            f"{type(self).__name__}: training diverged in the first epoch (the loss, a "
            "gradient or a weight became NaN or infinite), so there are no trained "
            "weights to keep and the estimator is left unfitted. Lower "
            f"learning_rate_init (it is {self.learning_rate_init!r}), set max_grad_norm, "
            "or scale X and y to about unit size (e.g. "
            "fastrnn.preprocessing.SequenceScaler for X, "
            "sklearn.compose.TransformedTargetRegressor for y).")

    def _validation_split(self, n, target, rng, weights):
        """Training and held-out sequence indices for early stopping (sorted).

        Stratified by class for RNNClassifier where possible. ``weights`` (the
        loss terms' combined weights, (n,) or per step (T, n)) are only looked
        at when the training part would weigh nothing: then its first sequence
        and the heaviest held-out one change places.
        """
        stratify = None
        if self._loss == "log_loss" and not self._per_step:
            stratify = target
        idx = np.arange(n)
        try:
            tr, va = train_test_split(idx, test_size=self.validation_fraction,
                                      random_state=rng, stratify=stratify)
        except ValueError:
            if stratify is None:
                raise
            tr, va = train_test_split(idx, test_size=self.validation_fraction,
                                      random_state=rng)
        per_seq = weights.reshape(-1, n).sum(axis=0)  # (T, n) per step -> (n,)
        if not per_seq[tr].any():  # _weight_sum: some held-out one weighs > 0
            heavy = va[np.argmax(per_seq[va])]
            tr, va = np.r_[tr[1:], heavy], np.r_[va[va != heavy], tr[0]]
        return np.sort(tr), np.sort(va)

    def _take_target(self, target, idx, seqs):
        if not self._per_step:
            return target[idx]
        T = int(seqs.lengths[idx].max())
        return target[:T, idx]


class _ClassifierMixin(ClassifierInference):
    """Label handling shared by the two classifiers."""

    def _check_params(self):
        """As :meth:`_BaseRNN._check_params`, and the weights of a ``class_weight``
        dict must be finite and non-negative real numbers."""
        sizes = super()._check_params()
        if isinstance(self.class_weight, dict):
            for label, w in self.class_weight.items():
                if (isinstance(w, (bool, np.bool_)) or not isinstance(w, Real)
                        or not (np.isfinite(w) and w >= 0)):
                    raise ValueError(
                        "class_weight must map labels to finite, non-negative numbers; "
                        f"got {w!r} for label {label!r}.")
        return sizes

    def _encode_labels(self, labels, *, first, incremental, classes):
        if first:
            if classes is not None:
                classes = unique_labels(classes)
                check_classification_targets(classes)
                self.classes_ = np.asarray(classes)
            else:
                self.classes_ = unique_labels(labels)
            if self.classes_.size < 2:
                raise ValueError(f"{type(self).__name__} needs samples of at least 2 "
                                 "classes in the data, but the data contains only one "
                                 f"class: {self.classes_[0]!r}.")
            self.n_outputs_ = self.classes_.size
        elif incremental:
            pass
        else:  # warm start
            seen = unique_labels(labels)
            if not np.array_equal(seen, self.classes_):
                raise ValueError("warm_start can only be used where `y` has the same "
                                 f"classes as in the previous call to fit. Previously "
                                 f"got {self.classes_}, `y` has {seen}.")
        unseen = np.setdiff1d(np.unique(labels), self.classes_)
        if unseen.size:
            raise ValueError(f"y contains labels not in classes_ {self.classes_}: "
                             f"{unseen}.")
        if self.class_weight is None:
            cw = np.ones(self.classes_.size)
        else:
            if self.class_weight == "balanced" and incremental:
                raise ValueError("class_weight 'balanced' is not supported for "
                                 "partial_fit; compute the weights once with "
                                 "sklearn.utils.class_weight.compute_class_weight and "
                                 "pass them as a dict.")
            present = np.unique(labels)
            cw = np.ones(self.classes_.size)
            cw_present = compute_class_weight(
                self.class_weight, classes=present,
                y=labels) if isinstance(self.class_weight, str) else None
            for j, c in enumerate(self.classes_):
                if isinstance(self.class_weight, dict):
                    cw[j] = self.class_weight.get(c, 1.0)
                elif c in present:
                    cw[j] = cw_present[np.searchsorted(present, c)]
        return np.searchsorted(self.classes_, labels), cw


@_inject_docs
class RNNClassifier(_ClassifierMixin, ClassifierMixin, _BaseRNN):
    """Recurrent network classifier: one label per sequence (many-to-one).

    The recurrent layers read each sequence, their outputs are pooled over time
    (``pooling``) and a linear layer with softmax gives the class
    probabilities; training minimises the (sample- and class-weighted)
    cross-entropy. Binary problems use a two-class softmax.

    Parameters
    ----------
%(params)s
    pooling : {'last', 'mean', 'max'}, default='last'
        How the last layer's outputs become one vector per sequence: 'last' is
        each direction's final state (the forward direction at the sequence's
        own last step, the reverse one at its first step); 'mean' and 'max'
        run over the valid steps only.
    class_weight : dict, 'balanced' or None, default=None
        Weights of the classes in the loss, ``{label: weight}``; 'balanced'
        uses ``n_samples / (n_classes * np.bincount(y))``.

    Attributes
    ----------
    classes_ : ndarray of shape (n_classes,)
%(attrs)s

    Notes
    -----
%(init)s

    See Also
    --------
    RNNRegressor, RNNSequenceClassifier, fastrnn.preprocessing.SequenceScaler

    Examples
    --------
    >>> import numpy as np
    >>> from fastrnn import RNNClassifier
    >>> rng = np.random.RandomState(0)
    >>> X = rng.standard_normal((100, 10, 3))          # 100 sequences, 10 steps
    >>> y = (X[:, -1, 0] > 0).astype(int)              # the sign at the last step
    >>> clf = RNNClassifier((16,), learning_rate_init=0.01, max_iter=50,
    ...                     random_state=0).fit(X, y)
    >>> clf.score(X, y) > 0.9
    True
    >>> ragged = [rng.standard_normal((n, 3)) for n in (4, 9, 6)]
    >>> clf.predict(ragged).shape
    (3,)
    """

    _parameter_constraints = {
        **_BaseRNN._parameter_constraints,
        "pooling": [StrOptions(set(POOLINGS))],
        "class_weight": [dict, StrOptions({"balanced"}), None],
    }

    def __init__(self, hidden_layer_sizes=(64,), cell="lstm", *, bidirectional=False,
                 bidirectional_merge="concat", dropout=0.0, pooling="last",
                 solver="adam", alpha=1e-4, batch_size="auto", learning_rate="constant",
                 learning_rate_init=1e-3, max_iter=200, shuffle=True, random_state=None,
                 tol=1e-4, verbose=False, warm_start=False, momentum=0.9,
                 nesterovs_momentum=True, early_stopping=False, validation_fraction=0.1,
                 beta_1=0.9, beta_2=0.999, epsilon=1e-8, n_iter_no_change=10,
                 max_grad_norm=5.0, bptt_length=None, class_weight=None, backend="auto",
                 dtype=np.float32, n_jobs=None):
        super().__init__(
            hidden_layer_sizes, cell, bidirectional=bidirectional,
            bidirectional_merge=bidirectional_merge, dropout=dropout, solver=solver,
            alpha=alpha, batch_size=batch_size, learning_rate=learning_rate,
            learning_rate_init=learning_rate_init, max_iter=max_iter, shuffle=shuffle,
            random_state=random_state, tol=tol, verbose=verbose, warm_start=warm_start,
            momentum=momentum, nesterovs_momentum=nesterovs_momentum,
            early_stopping=early_stopping, validation_fraction=validation_fraction,
            beta_1=beta_1, beta_2=beta_2, epsilon=epsilon,
            n_iter_no_change=n_iter_no_change, max_grad_norm=max_grad_norm,
            bptt_length=bptt_length, backend=backend, dtype=dtype, n_jobs=n_jobs)
        self.pooling = pooling
        self.class_weight = class_weight

    def _prepare_targets(self, y, seqs, *, first, incremental, classes):
        if y is None:
            raise ValueError(f"{type(self).__name__} requires y to be passed, but the "
                             "target y is None.")
        y = column_or_1d(y, warn=True)
        if y.shape[0] != seqs.n_samples:
            raise ValueError(f"y has {y.shape[0]} samples but X has {seqs.n_samples}; "
                             "they must match (one label per sequence).")
        if y.dtype.kind == "f" and not np.isfinite(y).all():
            raise ValueError("Input y contains NaN or infinity.")
        check_classification_targets(y)
        encoded, cw = self._encode_labels(y, first=first, incremental=incremental,
                                          classes=classes)
        return encoded, cw[encoded]

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y, sample_weight=None):
        """Fit the network to sequences X and labels y.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_timesteps, n_features) or \
(n_samples, n_timesteps), or list of arrays (n_timesteps_i, n_features)
        y : array-like of shape (n_samples,)
        sample_weight : array-like of shape (n_samples,), default=None
            Weight of every sequence in the loss.

        Returns
        -------
        self : RNNClassifier
        """
        return self._fit(X, y, sample_weight)

    @_fit_context(prefer_skip_nested_validation=True)
    def partial_fit(self, X, y, classes=None, sample_weight=None):
        """One epoch over (X, y), continuing from the current weights.

        Parameters
        ----------
        X, y, sample_weight
            As in :meth:`fit`.
        classes : array-like of shape (n_classes,), default=None
            Every class that can appear; required on the first call, ignored
            afterwards.

        Returns
        -------
        self : RNNClassifier
        """
        first = not hasattr(self, "classes_")
        if first and classes is None:
            raise ValueError("classes must be passed on the first call to partial_fit.")
        return self._fit(X, y, sample_weight, incremental=True,
                         classes=classes if first else None)

    def _score_sequences(self, seqs, target, sw):
        pred = np.argmax(self._forward(seqs), axis=1)
        return accuracy_score(target, pred, sample_weight=sw)


@_inject_docs
class RNNRegressor(RegressorInference, RegressorMixin, _BaseRNN):
    """Recurrent network regressor: one value, or vector of values, per sequence.

    The recurrent layers read each sequence, their outputs are pooled over time
    and a linear layer gives the prediction; training minimises the
    (sample-weighted) squared error. A 2-D y fits several targets at once,
    e.g. a multi-step forecast horizon. Targets are not rescaled: standardise
    them when they are far from unit scale (for instance with
    :class:`sklearn.compose.TransformedTargetRegressor`).

    Parameters
    ----------
%(params)s
    pooling : {'last', 'mean', 'max'}, default='last'
        As in :class:`RNNClassifier`.

    Attributes
    ----------
%(attrs)s

    Notes
    -----
%(init)s

    Examples
    --------
    >>> import numpy as np
    >>> from fastrnn import RNNRegressor
    >>> rng = np.random.RandomState(0)
    >>> X = rng.uniform(-1, 1, (200, 8))               # 200 univariate sequences
    >>> y = X[:, -1] + 0.5 * X[:, -2]
    >>> reg = RNNRegressor((16,), learning_rate_init=0.01, max_iter=100,
    ...                    random_state=0).fit(X, y)
    >>> reg.score(X, y) > 0.9
    True
    """

    _parameter_constraints = {
        **_BaseRNN._parameter_constraints,
        "pooling": [StrOptions(set(POOLINGS))],
    }

    def __init__(self, hidden_layer_sizes=(64,), cell="lstm", *, bidirectional=False,
                 bidirectional_merge="concat", dropout=0.0, pooling="last",
                 solver="adam", alpha=1e-4, batch_size="auto", learning_rate="constant",
                 learning_rate_init=1e-3, max_iter=200, shuffle=True, random_state=None,
                 tol=1e-4, verbose=False, warm_start=False, momentum=0.9,
                 nesterovs_momentum=True, early_stopping=False, validation_fraction=0.1,
                 beta_1=0.9, beta_2=0.999, epsilon=1e-8, n_iter_no_change=10,
                 max_grad_norm=5.0, bptt_length=None, backend="auto", dtype=np.float32,
                 n_jobs=None):
        super().__init__(
            hidden_layer_sizes, cell, bidirectional=bidirectional,
            bidirectional_merge=bidirectional_merge, dropout=dropout, solver=solver,
            alpha=alpha, batch_size=batch_size, learning_rate=learning_rate,
            learning_rate_init=learning_rate_init, max_iter=max_iter, shuffle=shuffle,
            random_state=random_state, tol=tol, verbose=verbose, warm_start=warm_start,
            momentum=momentum, nesterovs_momentum=nesterovs_momentum,
            early_stopping=early_stopping, validation_fraction=validation_fraction,
            beta_1=beta_1, beta_2=beta_2, epsilon=epsilon,
            n_iter_no_change=n_iter_no_change, max_grad_norm=max_grad_norm,
            bptt_length=bptt_length, backend=backend, dtype=dtype, n_jobs=n_jobs)
        self.pooling = pooling

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        return tags

    def _prepare_targets(self, y, seqs, *, first, incremental, classes):
        if y is None:
            raise ValueError(f"{type(self).__name__} requires y to be passed, but the "
                             "target y is None.")
        y = check_array(y, ensure_2d=False, dtype=np.float64, input_name="y",
                        ensure_all_finite=False)  # checked below, in the model's dtype
        if y.ndim not in (1, 2):
            raise ValueError(f"y must be 1-D (n_samples,) or 2-D (n_samples, n_targets), "
                             f"got shape {y.shape}.")
        if y.shape[0] != seqs.n_samples:
            raise ValueError(f"y has {y.shape[0]} samples but X has {seqs.n_samples}; "
                             "they must match (one target per sequence).")
        y2 = y.reshape(y.shape[0], -1)
        if first:
            self.n_outputs_ = y2.shape[1]
            self._y_ndim = y.ndim
        elif y2.shape[1] != self.n_outputs_:
            raise ValueError(f"y has {y2.shape[1]} targets, but {type(self).__name__} was "
                             f"fitted with {self.n_outputs_}.")
        dtype = np.dtype(self.dtype) if first else self._work_dtype()
        return as_float_array(y2, dtype, "Input y"), np.ones(y.shape[0])

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y, sample_weight=None):
        """Fit the network to sequences X and targets y.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_timesteps, n_features) or \
(n_samples, n_timesteps), or list of arrays (n_timesteps_i, n_features)
        y : array-like of shape (n_samples,) or (n_samples, n_targets)
        sample_weight : array-like of shape (n_samples,), default=None

        Returns
        -------
        self : RNNRegressor
        """
        return self._fit(X, y, sample_weight)

    @_fit_context(prefer_skip_nested_validation=True)
    def partial_fit(self, X, y, sample_weight=None):
        """One epoch over (X, y), continuing from the current weights."""
        return self._fit(X, y, sample_weight, incremental=True)

    def _score_sequences(self, seqs, target, sw):
        return r2_score(target, self._forward(seqs), sample_weight=sw)


class _PerStepMixin:
    """y with one target per time step: validation, flattening, scoring."""

    _per_step = True

    def _valid_steps(self, y, seqs):
        """y's valid entries flattened (N, ...) and the (T, n) validity mask."""
        Y, _ = per_step_targets(y, seqs, numeric=self._loss == "squared_error")
        mask = valid_mask(seqs.lengths, seqs.data.shape[0])
        return Y, mask

    def score(self, X, y, sample_weight=None):
        """Accuracy (classifier) or R^2 (regressor) over all valid time steps.

        Each time step counts as one prediction; ``sample_weight`` (one per
        sequence) weighs every step of its sequence.
        """
        seqs = self._validate_X(X)
        Y, mask = self._valid_steps(y, seqs)
        sw = np.ones(seqs.n_samples) if sample_weight is None else \
            _check_sample_weight(sample_weight, np.empty((seqs.n_samples, 0)))
        w = np.broadcast_to(sw[None, :], mask.shape)[mask]
        out = self._forward(seqs)[mask]
        if self._loss == "log_loss":
            return accuracy_score(Y[mask], self.classes_[np.argmax(out, axis=1)],
                                  sample_weight=w)
        return r2_score(Y[mask], out, sample_weight=w)

    def _score_sequences(self, seqs, target, sw):
        mask = valid_mask(seqs.lengths, seqs.data.shape[0])
        w = np.broadcast_to(sw[None, :], mask.shape)[mask]
        out = self._forward(seqs)[mask]
        if self._loss == "log_loss":
            return accuracy_score(target[mask], np.argmax(out, axis=1), sample_weight=w)
        return r2_score(target[mask], out, sample_weight=w)


_PER_STEP_Y_DOC = """
    y formats (one target per time step):

    * an array ``(n_samples, n_timesteps)`` aligned with X, where
      ``n_timesteps`` is X's (padded) length; entries past a sequence's own
      length are ignored;
    * a list of 1-D arrays ``(n_timesteps_i,)``, one per sequence, each exactly
      as long as its sequence.

    Predictions come back the same way: an ``(n_samples, n_timesteps)`` array
    for array input, a list of ``(n_timesteps_i,)`` arrays for list input.
"""


@_inject_docs
class RNNSequenceClassifier(_PerStepMixin, _ClassifierMixin, ClassifierMixin, _BaseRNN):
    """Recurrent network that labels every time step (sequence labelling, tagging).

    A linear layer with softmax on the last recurrent layer's output at every
    step gives one label per step (many-to-many, aligned); the loss is the mean
    cross-entropy over all valid steps. Use ``bidirectional=True`` when a
    step's label may depend on what follows it.
%(ydoc)s
    Parameters
    ----------
%(params)s
    class_weight : dict, 'balanced' or None, default=None
        Weights of the classes in the loss; 'balanced' counts the labels of all
        valid time steps.

    Attributes
    ----------
    classes_ : ndarray of shape (n_classes,)
%(attrs)s

    Notes
    -----
%(init)s

    Examples
    --------
    >>> import numpy as np
    >>> from fastrnn import RNNSequenceClassifier
    >>> rng = np.random.RandomState(0)
    >>> X = [rng.standard_normal((n, 2)) for n in rng.randint(5, 15, 100)]
    >>> y = [(np.cumsum(x[:, 0]) > 0).astype(int) for x in X]   # sign of a running sum
    >>> tagger = RNNSequenceClassifier((16,), learning_rate_init=0.02, max_iter=60,
    ...                                random_state=0).fit(X, y)
    >>> tagger.score(X, y) > 0.9
    True
    >>> [p.shape for p in tagger.predict([X[0], X[1][:3]])]   # one label per step
    [(10,), (3,)]
    """

    _parameter_constraints = {
        **_BaseRNN._parameter_constraints,
        "class_weight": [dict, StrOptions({"balanced"}), None],
    }

    def __init__(self, hidden_layer_sizes=(64,), cell="lstm", *, bidirectional=False,
                 bidirectional_merge="concat", dropout=0.0, solver="adam", alpha=1e-4,
                 batch_size="auto", learning_rate="constant", learning_rate_init=1e-3,
                 max_iter=200, shuffle=True, random_state=None, tol=1e-4, verbose=False,
                 warm_start=False, momentum=0.9, nesterovs_momentum=True,
                 early_stopping=False, validation_fraction=0.1, beta_1=0.9,
                 beta_2=0.999, epsilon=1e-8, n_iter_no_change=10, max_grad_norm=5.0,
                 bptt_length=None, class_weight=None, backend="auto", dtype=np.float32,
                 n_jobs=None):
        super().__init__(
            hidden_layer_sizes, cell, bidirectional=bidirectional,
            bidirectional_merge=bidirectional_merge, dropout=dropout, solver=solver,
            alpha=alpha, batch_size=batch_size, learning_rate=learning_rate,
            learning_rate_init=learning_rate_init, max_iter=max_iter, shuffle=shuffle,
            random_state=random_state, tol=tol, verbose=verbose, warm_start=warm_start,
            momentum=momentum, nesterovs_momentum=nesterovs_momentum,
            early_stopping=early_stopping, validation_fraction=validation_fraction,
            beta_1=beta_1, beta_2=beta_2, epsilon=epsilon,
            n_iter_no_change=n_iter_no_change, max_grad_norm=max_grad_norm,
            bptt_length=bptt_length, backend=backend, dtype=dtype, n_jobs=n_jobs)
        self.class_weight = class_weight

    def _prepare_targets(self, y, seqs, *, first, incremental, classes):
        Y, mask = self._valid_steps(y, seqs)
        labels = Y[mask]
        if labels.dtype.kind == "f" and not np.isfinite(labels).all():
            raise ValueError("Input y contains NaN or infinity.")
        check_classification_targets(labels)
        encoded, cw = self._encode_labels(labels, first=first, incremental=incremental,
                                          classes=classes)
        target = np.zeros(mask.shape, dtype=np.intp)
        target[mask] = encoded
        weights = np.zeros(mask.shape)
        weights[mask] = cw[encoded]
        return target, weights

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y, sample_weight=None):
        """Fit the network to sequences X and per-step labels y (see the class doc).

        Returns
        -------
        self : RNNSequenceClassifier
        """
        return self._fit(X, y, sample_weight)

    @_fit_context(prefer_skip_nested_validation=True)
    def partial_fit(self, X, y, classes=None, sample_weight=None):
        """One epoch over (X, y); ``classes`` is required on the first call."""
        first = not hasattr(self, "classes_")
        if first and classes is None:
            raise ValueError("classes must be passed on the first call to partial_fit.")
        return self._fit(X, y, sample_weight, incremental=True,
                         classes=classes if first else None)



@_inject_docs
class RNNSequenceRegressor(_PerStepMixin, RegressorInference, RegressorMixin, _BaseRNN):
    """Recurrent network that predicts a value (or vector) at every time step.

    A linear layer on the last recurrent layer's output at every step; the loss
    is the mean squared error over all valid steps. Typical use: one-step-ahead
    forecasting along a series, per-step signal estimation.
%(ydoc)s
    For several targets per step, y may also be ``(n_samples, n_timesteps,
    n_targets)`` or a list of ``(n_timesteps_i, n_targets)`` arrays.

    Parameters
    ----------
%(params)s

    Attributes
    ----------
%(attrs)s

    Notes
    -----
%(init)s

    Examples
    --------
    >>> import numpy as np
    >>> from fastrnn import RNNSequenceRegressor
    >>> rng = np.random.RandomState(0)
    >>> X = rng.uniform(-1, 1, (200, 12))               # univariate sequences
    >>> y = np.cumsum(X, axis=1) / 3                    # running sum at every step
    >>> reg = RNNSequenceRegressor((16,), learning_rate_init=0.01, max_iter=100,
    ...                            random_state=0).fit(X, y)
    >>> reg.predict(X).shape, reg.score(X, y) > 0.9
    ((200, 12), True)
    """

    def __init__(self, hidden_layer_sizes=(64,), cell="lstm", *, bidirectional=False,
                 bidirectional_merge="concat", dropout=0.0, solver="adam", alpha=1e-4,
                 batch_size="auto", learning_rate="constant", learning_rate_init=1e-3,
                 max_iter=200, shuffle=True, random_state=None, tol=1e-4, verbose=False,
                 warm_start=False, momentum=0.9, nesterovs_momentum=True,
                 early_stopping=False, validation_fraction=0.1, beta_1=0.9,
                 beta_2=0.999, epsilon=1e-8, n_iter_no_change=10, max_grad_norm=5.0,
                 bptt_length=None, backend="auto", dtype=np.float32, n_jobs=None):
        super().__init__(
            hidden_layer_sizes, cell, bidirectional=bidirectional,
            bidirectional_merge=bidirectional_merge, dropout=dropout, solver=solver,
            alpha=alpha, batch_size=batch_size, learning_rate=learning_rate,
            learning_rate_init=learning_rate_init, max_iter=max_iter, shuffle=shuffle,
            random_state=random_state, tol=tol, verbose=verbose, warm_start=warm_start,
            momentum=momentum, nesterovs_momentum=nesterovs_momentum,
            early_stopping=early_stopping, validation_fraction=validation_fraction,
            beta_1=beta_1, beta_2=beta_2, epsilon=epsilon,
            n_iter_no_change=n_iter_no_change, max_grad_norm=max_grad_norm,
            bptt_length=bptt_length, backend=backend, dtype=dtype, n_jobs=n_jobs)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        return tags

    def _prepare_targets(self, y, seqs, *, first, incremental, classes):
        dtype = np.dtype(self.dtype) if first else self._work_dtype()
        Y, multi = per_step_targets(y, seqs, numeric=True, dtype=dtype)
        if first:
            self.n_outputs_ = Y.shape[2]
            self._y_multi = multi
        elif Y.shape[2] != self.n_outputs_:
            raise ValueError(f"y has {Y.shape[2]} targets per step, but "
                             f"{type(self).__name__} was fitted with {self.n_outputs_}.")
        weights = valid_mask(seqs.lengths, seqs.data.shape[0]).astype(np.float64)
        return Y, weights

    def _valid_steps(self, y, seqs):
        Y, _ = per_step_targets(y, seqs, numeric=True)
        return (Y if self._y_multi else Y[..., 0]), valid_mask(seqs.lengths,
                                                                seqs.data.shape[0])

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y, sample_weight=None):
        """Fit the network to sequences X and per-step targets y (see the class doc).

        Returns
        -------
        self : RNNSequenceRegressor
        """
        return self._fit(X, y, sample_weight)

    @_fit_context(prefer_skip_nested_validation=True)
    def partial_fit(self, X, y, sample_weight=None):
        """One epoch over (X, y), continuing from the current weights."""
        return self._fit(X, y, sample_weight, incremental=True)

    def _score_sequences(self, seqs, target, sw):
        mask = valid_mask(seqs.lengths, seqs.data.shape[0])
        w = np.broadcast_to(sw[None, :], mask.shape)[mask]
        return r2_score(target[mask], self._forward(seqs)[mask], sample_weight=w)


for _cls in (RNNSequenceClassifier, RNNSequenceRegressor):
    _cls.__doc__ = _cls.__doc__.replace("%(ydoc)s", _PER_STEP_Y_DOC.rstrip())
