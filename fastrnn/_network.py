"""The network behind the estimators: stacked recurrent layers, pooling, a linear head.

::

    x (T, B, D) -> layer 0 -merge-dropout-> layer 1 ... -> last layer (T, B, nd*H)
        many-to-one: pool over time -> (B, F)    -dropout-> linear head
        per step:    merge          -> (T, B, F) -dropout-> linear head

Each recurrent layer is a :mod:`fastrnn.nn` layer with ``num_layers=1``, so
stacked layers may have different sizes; the two directions of a bidirectional
layer are merged by concatenation (``F = 2H``, as PyTorch) or by summation
(``F = H``). The gradient flows back through the head, the pooling and every
layer's :meth:`~fastrnn.nn.RNN.backward`; the layers own their parameters (with
PyTorch's names), the head owns ``coef`` and ``intercept``.
"""

from numbers import Integral

import numpy as np

from . import nn
from ._training import NonFiniteError, softmax_cross_entropy, squared_error

_LAYERS = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}
_GATES = {"rnn": 1, "lstm": 4, "gru": 3}

#: The values of the estimators' ``cell``, ``bidirectional_merge`` and
#: ``pooling``, which :class:`RecurrentNetwork` also checks.
CELLS = tuple(_LAYERS)
MERGES = ("concat", "sum")
POOLINGS = ("last", "mean", "max")
LOSSES = ("log_loss", "squared_error")


def hidden_sizes(value):
    """``hidden_layer_sizes`` (an int, or a sequence of them) as a tuple of ints.

    Raises
    ------
    ValueError
        An empty sequence, or a size that is not a positive integer.
    """
    sizes = [value] if isinstance(value, Integral) else list(value)
    if not sizes or any(not isinstance(h, Integral) or isinstance(h, bool) or h < 1
                        for h in sizes):
        raise ValueError("hidden_layer_sizes must be a non-empty sequence of positive "
                         f"integers, got {value!r}.")
    return tuple(int(h) for h in sizes)


def network_from_params(params, n_features, n_outputs, *, per_step, loss, rng):
    """A freshly initialised :class:`RecurrentNetwork` for an estimator's parameters.

    Parameters
    ----------
    params : mapping
        The estimator's ``cell``, ``hidden_layer_sizes``, ``bidirectional``,
        ``bidirectional_merge``, ``dropout``, ``pooling``, ``dtype`` and
        ``backend`` (other keys are ignored).
    n_features, n_outputs : int
    per_step : bool
        Output at every step (``pooling`` is then not used).
    loss : {'log_loss', 'squared_error'}
    rng : numpy.random.RandomState
        The first thing that draws from it is this network's initialisation.
    """
    return RecurrentNetwork(
        params["cell"], n_features, params["hidden_layer_sizes"], n_outputs,
        bidirectional=params["bidirectional"], merge=params["bidirectional_merge"],
        dropout=params["dropout"], pooling=None if per_step else params["pooling"],
        loss=loss, dtype=np.dtype(params["dtype"]), backend=params["backend"], rng=rng)


def _check_option(name, value, options):
    if not (isinstance(value, str) and value in options):
        raise ValueError(f"{name} must be one of {list(options)}, got {value!r}.")


def _orthogonal(rng, n, dtype):
    """A random ``n x n`` orthogonal matrix (Haar-distributed, via QR)."""
    q, r = np.linalg.qr(rng.standard_normal((n, n)))
    return (q * np.sign(np.diag(r))).astype(dtype)


def _glorot(rng, fan_in, fan_out, shape, dtype):
    limit = np.sqrt(6.0 / (fan_in + fan_out))
    return rng.uniform(-limit, limit, shape).astype(dtype)


class RecurrentNetwork:
    """Recurrent layers plus output head, with forward and backward passes.

    The passes take time-major data ``x`` (T, B, n_features) that the caller
    has checked: finite, of the network's dtype (the estimators' input
    validation does it); the layers do not scan it for NaN and infinity again.

    Parameters
    ----------
    cell : {'lstm', 'gru', 'rnn'}
    n_features : int
        Features per time step.
    hidden_layer_sizes : int or sequence of int
        Hidden units of each stacked recurrent layer (see :func:`hidden_sizes`).
    n_outputs : int
        Outputs of the linear head (classes, or regression targets).
    bidirectional : bool
    merge : {'concat', 'sum'}
    dropout : float
        Inverted dropout on the output of every recurrent layer (the input of
        the next layer and of the head), in training only.
    pooling : {'last', 'mean', 'max'} or None
        None for per-step output.
    loss : {'log_loss', 'squared_error'}
    dtype, backend
        Passed to the layers.
    rng : numpy.random.RandomState
        Draws the initial weights (see :meth:`_init_weights`).
    """

    def __init__(self, cell, n_features, hidden_layer_sizes, n_outputs, *,
                 bidirectional=False, merge="concat", dropout=0.0, pooling="last",
                 loss="log_loss", dtype=np.float32, backend="auto", rng=None):
        rng = np.random.RandomState(0) if rng is None else rng
        _check_option("cell", cell, CELLS)
        _check_option("merge", merge, MERGES)
        _check_option("loss", loss, LOSSES)
        if pooling is not None:
            _check_option("pooling", pooling, POOLINGS)
        self.cell = cell
        self.hidden_layer_sizes = hidden_sizes(hidden_layer_sizes)
        self.bidirectional = bool(bidirectional)
        self.merge = merge
        self.dropout = float(dropout)
        self.pooling = pooling
        self.loss = loss
        self.dtype = np.dtype(dtype)
        self.n_directions = 2 if self.bidirectional else 1
        self.layers = []
        in_size = n_features
        for H in self.hidden_layer_sizes:
            layer = _LAYERS[cell](in_size, H, bidirectional=self.bidirectional,
                                  dtype=self.dtype, backend=backend,
                                  random_state=rng.randint(np.iinfo(np.int32).max))
            self._init_weights(layer, rng)
            layer.eval()
            self.layers.append(layer)
            in_size = self._merged_size(H)
        self.n_head_inputs = in_size
        self.coef = _glorot(rng, in_size, n_outputs, (in_size, n_outputs), self.dtype)
        self.intercept = np.zeros(n_outputs, dtype=self.dtype)

    def _merged_size(self, H):
        return 2 * H if self.bidirectional and self.merge == "concat" else H

    def _init_weights(self, layer, rng):
        """Glorot-uniform input weights, one orthogonal matrix per gate for the
        recurrent weights, zero biases except the LSTM forget gate's (1)."""
        H, G = layer.hidden_size, _GATES[self.cell]
        for name, p in layer.named_parameters():
            if name.startswith("weight_ih"):
                p[...] = _glorot(rng, p.shape[1], p.shape[0], p.shape, self.dtype)
            elif name.startswith("weight_hh"):
                p[...] = np.concatenate([_orthogonal(rng, H, self.dtype)
                                         for _ in range(G)])
            elif name.startswith("bias"):
                p[...] = 0
                if self.cell == "lstm" and name.startswith("bias_ih"):
                    p[H:2 * H] = 1.0

    # -------------------------------------------------------------- weights

    def named_parameters(self):
        """``(name, live array)`` pairs: every layer's PyTorch-named parameters, then
        the head's."""
        out = []
        for k, layer in enumerate(self.layers):
            out += [(f"layers_[{k}].{n}", p) for n, p in layer.named_parameters()]
        return out + [("coef_", self.coef), ("intercept_", self.intercept)]

    def parameters(self):
        return [p for _, p in self.named_parameters()]

    def decay_mask(self):
        """True for the parameters the L2 penalty applies to (weights, not biases)."""
        return [("weight" in n) or n == "coef_" for n, _ in self.named_parameters()]

    def get_weights(self):
        return [p.copy() for p in self.parameters()]

    def set_weights(self, weights):
        for p, w in zip(self.parameters(), weights):
            p[...] = w

    # ------------------------------------------------------- building blocks

    def _merge(self, out):
        if self.n_directions == 2 and self.merge == "sum":
            H = out.shape[-1] // 2
            return out[..., :H] + out[..., H:]
        return out

    def _unmerge(self, d):
        if self.n_directions == 2 and self.merge == "sum":
            return np.concatenate([d, d], axis=-1)
        return d

    def _dropout_mask(self, rng, shape):
        return nn.dropout_mask(rng, shape, self.dropout, self.dtype)

    def _masks(self, rng, T, B):
        """Dropout masks: one per layer that feeds another, and one for the head's input."""
        if not (self.dropout > 0 and rng is not None):
            return [None] * len(self.layers)
        masks = [self._dropout_mask(rng, (T, B, self._merged_size(H)))
                 for H in self.hidden_layer_sizes[:-1]]
        head_shape = (B, self.n_head_inputs) if self.pooling else (T, B, self.n_head_inputs)
        return masks + [self._dropout_mask(rng, head_shape)]

    def _stack_forward(self, x, lengths, states, masks, training):
        """All recurrent layers over ``x`` (T, B, D); returns the last layer's raw
        output (T, B, nd*H) and every layer's final state."""
        inp, new_states = x, []
        last = len(self.layers) - 1
        for k, layer in enumerate(self.layers):
            if layer.training != training:
                layer.train(training)
            # the data was checked on the way in, and each layer's output is
            # the next one's input: no scan for NaN and infinity again
            out, h_n = layer._forward_finite(inp, None if states is None else states[k],
                                             lengths)
            new_states.append(h_n)
            if k < last:
                inp = self._merge(out)
                if masks[k] is not None:
                    inp = inp * masks[k]
        return out, new_states

    def _stack_backward(self, d_raw, masks, grads, d_last=None):
        """Backpropagate ``d_raw`` through the layers (each from its last forward)
        and add every parameter gradient into ``grads``. ``d_last``, when given,
        is the gradient w.r.t. the top layer's final states ``h_n`` instead of
        ``d_raw`` (None), which then reaches the layers as no output gradient at
        all (see :meth:`fastrnn.nn.RNN.backward`)."""
        offsets = np.cumsum([0] + [len(layer.named_parameters()) for layer in self.layers])
        d = d_raw
        for k in range(len(self.layers) - 1, -1, -1):
            layer = self.layers[k]
            d_h_n = d_last if k == len(self.layers) - 1 else None
            # no gradient for the data
            gx, _ = layer.backward(d, d_h_n, input_grad=k > 0)
            for j, (name, _) in enumerate(layer.named_parameters()):
                grads[offsets[k] + j] += layer.grads[name]
            if k > 0:
                if masks[k - 1] is not None:
                    gx = gx * masks[k - 1]
                d = self._unmerge(gx)

    def _pool(self, raw, lengths):
        """Many-to-one pooling of the last layer's raw output; returns (B, F) and
        what :meth:`_pool_backward` needs."""
        T, B, _ = raw.shape
        H = self.hidden_layer_sizes[-1]
        if self.pooling == "last":
            # Each direction's final state: forward at the sample's last valid
            # step, reverse at step 0.
            fwd = raw[lengths - 1, np.arange(B), :H]
            if self.n_directions == 1:
                return fwd, None
            bwd = raw[0, :, H:]
            return (fwd + bwd if self.merge == "sum"
                    else np.concatenate([fwd, bwd], axis=1)), None
        merged = self._merge(raw)
        if self.pooling == "mean":
            # Outputs past a sample's end are zero, so the sum runs over valid steps.
            return merged.sum(axis=0) / lengths[:, None].astype(self.dtype), None
        if not np.all(lengths == T):
            valid = np.arange(T)[:, None] < lengths[None, :]
            merged = np.where(valid[:, :, None], merged, -np.inf)
        arg = merged.argmax(axis=0)
        return np.take_along_axis(merged, arg[None], axis=0)[0], arg

    def _last_state_grad(self, dp):
        """The gradient of ``"last"`` pooling w.r.t. the top layer's ``h_n``
        (directions, B, H): the pooled states are each direction's final state,
        forward at the sample's last valid step, reverse at step 0."""
        if self.n_directions == 1:
            return dp[None]
        H = self.hidden_layer_sizes[-1]
        return np.stack([dp[:, :H], dp[:, H:] if self.merge == "concat" else dp])

    def _pool_backward(self, dp, ctx, T, lengths):
        B, F = dp.shape
        H = self.hidden_layer_sizes[-1]
        nd = self.n_directions
        if self.pooling == "last":
            d_raw = np.zeros((T, B, nd * H), self.dtype)
            d_raw[lengths - 1, np.arange(B), :H] = dp[:, :H]
            if nd == 2:
                d_raw[0, :, H:] += dp[:, H:] if self.merge == "concat" else dp
            return d_raw
        if self.pooling == "mean":
            valid = (np.arange(T)[:, None] < lengths[None, :]).astype(self.dtype)
            dm = valid[:, :, None] * (dp / lengths[:, None].astype(self.dtype))[None]
        else:
            dm = np.zeros((T, B, F), self.dtype)
            np.put_along_axis(dm, ctx[None], dp[None], axis=0)
        return self._unmerge(dm)

    def _head_loss(self, feats, target, weights):
        """Head and loss on rows ``feats`` (N, F).

        Returns the loss and the gradients w.r.t. feats, coef and intercept;
        raises NonFiniteError if the loss or its gradient is not finite.
        """
        out = feats @ self.coef + self.intercept
        if self.loss == "log_loss":
            loss, dout = softmax_cross_entropy(out, target, weights)
        else:
            loss, dout = squared_error(out, target, weights)
        if not (np.isfinite(loss) and np.isfinite(dout).all()):
            # Checked here, before the layers' backward (which rejects it anyway).
            raise NonFiniteError("the loss or its gradient is NaN or infinite")
        return loss, dout @ self.coef.T, feats.T @ dout, dout.sum(axis=0)

    # ------------------------------------------------------------ public passes

    def forward(self, x, lengths):
        """Inference: the head's output, (B, n_outputs) or per step (T, B, n_outputs)."""
        T = x.shape[0]
        fixed = bool(np.all(lengths == T))
        raw, _ = self._stack_forward(x, None if fixed else lengths, None,
                                     [None] * len(self.layers), False)
        feats = self._pool(raw, lengths)[0] if self.pooling else self._merge(raw)
        return feats @ self.coef + self.intercept

    def loss_and_grads(self, x, lengths, target, weights, *, alpha=0.0,
                       bptt_length=None, rng=None):
        """Loss of one batch and its gradient w.r.t. every parameter.

        Parameters
        ----------
        x : ndarray of shape (T, B, n_features)
            Time-major, zero-padded.
        lengths : ndarray of int64 of shape (B,)
        target : ndarray
            Class indices (B,) or (T, B) per step for ``'log_loss'``; values
            (B, k) or (T, B, k) per step for ``'squared_error'``.
        weights : ndarray of shape (B,) or (T, B) per step
            Unnormalised weight of every term (zero on padding for per-step
            models). The loss is the weighted mean of the terms plus
            ``alpha / 2 * ||W||^2 / sum(weights)`` over the weight matrices.
        alpha : float
        bptt_length : int or None
            Truncated backpropagation through time: the sequence is cut into
            windows of this many steps; the state is carried from one window
            to the next but the gradient is not.
        rng : RandomState or None
            Draws the dropout masks (no dropout when None).

        Returns
        -------
        loss : float
        grads : list of ndarray, aligned with :meth:`parameters`
        """
        T, B, _ = x.shape
        total = float(weights.sum())
        wn = (weights / total).astype(np.float64)
        params = self.parameters()
        grads = [np.zeros_like(p) for p in params]
        masks = self._masks(rng, T, B)
        k = bptt_length if bptt_length is not None and bptt_length < T else T
        windows = [(s, min(s + k, T)) for s in range(0, T, k)]
        if self.pooling:
            loss = self._many_to_one(x, lengths, target, wn, masks, windows, grads)
        else:
            loss = self._per_step(x, lengths, target, wn, masks, windows, grads)
        if alpha:
            for p, g, decay in zip(params, grads, self.decay_mask()):
                if decay:
                    loss += 0.5 * alpha * float(np.vdot(p, p)) / total
                    g += (alpha / total) * p
        return loss, grads

    @staticmethod
    def _window(lengths, s, e):
        """Samples active in window [s, e), their lengths inside it (None when all
        span it) and the window's trimmed end."""
        active = np.flatnonzero(lengths > s)
        lw = np.minimum(lengths[active] - s, e - s)
        e = s + int(lw.max())
        full = active.size == lengths.size
        return (None if full else active), (None if np.all(lw == e - s) else lw), e

    @staticmethod
    def _take_state(states, idx):
        if states is None or idx is None:
            return states
        return [tuple(a[:, idx] for a in s) if isinstance(s, tuple) else s[:, idx]
                for s in states]

    @staticmethod
    def _put_state(states, new, idx):
        if states is None or idx is None:
            return new
        for s, n in zip(states, new):
            if isinstance(s, tuple):
                for a, b in zip(s, n):
                    a[:, idx] = b
            else:
                s[:, idx] = n
        return states

    @staticmethod
    def _sub(a, s, e, idx):
        if a is None:
            return None
        a = a[s:e]
        return a if idx is None else a[:, idx]

    def _many_to_one(self, x, lengths, target, wn, masks, windows, grads):
        T, B, _ = x.shape
        fixed_lengths = None if np.all(lengths == T) else lengths
        if len(windows) == 1:
            raw, _ = self._stack_forward(x, fixed_lengths, None, masks, True)
        else:
            # Pass 1 (no caches): run the windows in turn, carrying the state, and
            # record the state each window starts from.
            raw = np.zeros((T, B, self.n_directions * self.hidden_layer_sizes[-1]),
                           self.dtype)
            states, starts = None, []
            for s, e in windows:
                idx, lw, e = self._window(lengths, s, e)
                start = self._take_state(states, idx)
                starts.append((s, e, idx, lw, start))
                out, new = self._stack_forward(
                    self._sub(x, s, e, idx), lw, start,
                    [self._sub(m, s, e, idx) for m in masks[:-1]], False)
                if idx is None:
                    raw[s:e] = out
                else:
                    raw[s:e, idx] = out
                states = self._put_state(states, new, idx)
        pooled, ctx = self._pool(raw, lengths)
        feats = pooled if masks[-1] is None else pooled * masks[-1]
        loss, dfeats, dcoef, dint = self._head_loss(feats, target, wn)
        grads[-2] += dcoef
        grads[-1] += dint
        if masks[-1] is not None:
            dfeats *= masks[-1]
        if len(windows) == 1 and self.pooling == "last":
            # into the final states, with no (T, B, F) output gradient of zeros
            self._stack_backward(None, masks, grads, self._last_state_grad(dfeats))
            return loss
        d_raw = self._pool_backward(dfeats, ctx, T, lengths)
        if len(windows) == 1:
            self._stack_backward(d_raw, masks, grads)
        else:
            # Pass 2: each window again, from its recorded start state, with caches;
            # its share of the output gradient goes back to the window's start only.
            for s, e, idx, lw, start in starts:
                wmasks = [self._sub(m, s, e, idx) for m in masks[:-1]]
                self._stack_forward(self._sub(x, s, e, idx), lw, start, wmasks, True)
                self._stack_backward(np.ascontiguousarray(self._sub(d_raw, s, e, idx)),
                                     wmasks, grads)
        return loss

    def _per_step(self, x, lengths, target, wn, masks, windows, grads):
        loss, states = 0.0, None
        for s, e in windows:
            idx, lw, e = self._window(lengths, s, e)
            wmasks = [self._sub(m, s, e, idx) for m in masks]
            raw, new = self._stack_forward(self._sub(x, s, e, idx), lw,
                                           self._take_state(states, idx), wmasks, True)
            states = self._put_state(states, new, idx)
            merged = self._merge(raw)
            if wmasks[-1] is not None:
                merged = merged * wmasks[-1]
            Tw, Bw, F = merged.shape
            valid = (np.arange(Tw)[:, None] < lw[None, :]) if lw is not None else None
            tw, ww = self._sub(target, s, e, idx), self._sub(wn, s, e, idx)
            if valid is None:
                rows, trows, wrows = merged.reshape(Tw * Bw, F), \
                    tw.reshape((Tw * Bw,) + tw.shape[2:]), ww.reshape(-1)
            else:
                rows, trows, wrows = merged[valid], tw[valid], ww[valid]
            lw_loss, drows, dcoef, dint = self._head_loss(rows, trows, wrows)
            loss += lw_loss
            grads[-2] += dcoef
            grads[-1] += dint
            if valid is None:
                dmerged = drows.reshape(Tw, Bw, F)
            else:
                dmerged = np.zeros((Tw, Bw, F), self.dtype)
                dmerged[valid] = drows
            if wmasks[-1] is not None:
                dmerged *= wmasks[-1]
            self._stack_backward(self._unmerge(dmerged), wmasks, grads)
        return loss
