"""Recurrent layers with PyTorch's interface, on NumPy arrays.

:class:`RNN`, :class:`LSTM` and :class:`GRU` take the same constructor
arguments as ``torch.nn.RNN/LSTM/GRU``, accept and return the same shapes, and
name and lay out their parameters the same way, so a PyTorch ``state_dict``
loads as it is. Each layer also runs backpropagation through time:
:meth:`~RNN.backward` returns the input and initial-state gradients and fills
:attr:`~RNN.grads`, a dict keyed like :meth:`~RNN.state_dict`.

The recursion over time, with the input projection, runs in a compiled
kernel (see :mod:`fastrnn._kernels`); the weight gradients and the input
gradient are one BLAS matrix product each over all time steps.
"""

import numbers
import warnings
from functools import reduce

import numpy as np

from . import _config, _kernels
from ._blas import (column_sums, flush_denormals, input_gradient, matmul, put_rows,
                    row_split, take_rows, weight_product)
from ._memory import reuse_array_memory
from ._validation import as_float_array, as_random_state, check_lengths

__all__ = ["RNN", "LSTM", "GRU"]

_GATES = {"rnn": 1, "lstm": 4, "gru": 3}


def dropout_mask(rng, shape, dropout, dtype):
    """Inverted-dropout mask: each entry 0 with probability ``dropout``, else
    ``1 / (1 - dropout)``; drawn from the RandomState ``rng``."""
    keep = 1.0 - dropout
    if keep <= 0:
        return np.zeros(shape, dtype)
    return ((rng.random_sample(shape) < keep) / keep).astype(dtype)


def _take(a, index, axis=1):
    """``a`` indexed along the batch ``axis`` (a slice or a permutation);
    None stays None. A permutation of a 3-D array's axis 1 is copied without
    the GIL (the batch slices' threads do it at once)."""
    if a is None:
        return None
    if axis == 1 and isinstance(index, np.ndarray) and a.ndim == 3:
        return take_rows(a, index)
    return a[(slice(None),) * axis + (index,)]


#: Below this share of valid steps (padding above a quarter), the backward pass
#: gathers the valid rows for the weight-gradient products: S7 (52% valid).
_GATHER_BELOW_FILL = 0.75


def _rows_in_place(a):
    """``a`` (T, B, F) itself where each step's rows are one C-contiguous
    block, the steps apart (a batch slice, which the forward kernels read in
    place: S2 saved each thread a 1.6 MB copy), else a contiguous copy."""
    T, B, F = a.shape
    item = a.itemsize
    if ((F <= 1 or a.strides[2] == item) and (B <= 1 or a.strides[1] == F * item)
            and (T <= 1 or (a.strides[0] >= B * F * item and a.strides[0] % item == 0))):
        return a
    return np.ascontiguousarray(a)


def _valid_rows(lengths, T):
    """Flat indices ``t * B + b`` of the valid steps, ascending, where padding
    is a large part of the batch; None where the products had better run over
    every row (the padded rows' gradients are zero, so both give the sum)."""
    B = lengths.shape[0]
    if lengths.sum() >= _GATHER_BELOW_FILL * T * B:
        return None
    return np.flatnonzero(np.arange(T)[:, None] < lengths[None, :])


def _merges_weight_grads(G, D, R):
    """Whether a backward that gathers the weight gradients' operands (where
    the Cython extension's packed kernel does not read them in place: see
    :meth:`_RNNBase._weight_grads`) computes ``[dW_ih | dW_hh]`` as one
    product with ``[x | h_prev]`` (see :meth:`_RNNBase._inputs_and_states`)
    rather than two: where the gate gradients (T * B, G) are at least twice as wide as
    the rows copied to build that operand (D + R), and the products go to
    BLAS (beyond ``_MERGE_MIN_GATES`` gate columns; narrower ones run faster
    apart, on the Cython extension's own kernel). An LSTM's G = 4H. Each
    product packs the gate gradients anew; merged, they are read once. One
    slice of 32 sequences, T = 100, H = 128, BLAS on one thread (medians):
    D = 32, 5.3 -> 4.5 ms; an S5 slice (64 sequences, T = 200, D = 128,
    H = 512) 275 -> 255 ms. With D = 256 (S6's second layer), 11.0 -> 10.5
    ms alone, but S6 steps measured 0.87-1.12 of the time; an RNN (G = H)
    lost (S3 1.1-1.4 -> 1.5 ms), as did an LSTM with H = 32 (0.14 -> 0.23
    ms)."""
    return G >= 2 * (D + R) and G > _MERGE_MIN_GATES


#: See :func:`_merges_weight_grads`: the Cython extension's kernel for the
#: weight gradients takes products of up to 256 gate columns on one thread.
_MERGE_MIN_GATES = 256


def _rows(a2, rows):
    """``a2[rows]`` (a copy), or ``a2`` itself when ``rows`` is None."""
    return a2 if rows is None else take_rows(a2, rows)


def _join(parts, index=None):
    """Batch parts (axis 1) back into one array, a single slice as it is; with
    ``index`` (the parts' sample positions, see :func:`_batch_parts`), each
    part's samples go back to their places."""
    if parts[0] is None:
        return None
    if index is None:
        return parts[0] if len(parts) == 1 else np.concatenate(parts, axis=1)
    shape = list(parts[0].shape)
    shape[1] = sum(len(i) for i in index)
    whole = np.empty(shape, parts[0].dtype)
    for part, positions in zip(parts, index):
        put_rows(part, positions, whole)
    return whole


def _batch_parts(B, lengths=None, split_rows=False):
    """The batch in parts, one per thread: several only for a large batch
    (see :func:`fastrnn._config.batch_threads`), and one where the kernels
    split their rows themselves (``split_rows``, see :func:`_map_parts`).
    Slices, which the kernels read and write in place in eval mode; but for
    ragged ``lengths`` (not all equal), int64 arrays of sample positions,
    gathered and placed back: every n-th sample in order of length, so that
    the threads get about the same number of steps and
    each part comes sorted (contiguous halves of S7's batch held 1,579 and
    1,780 steps, dealt by length 1,703 and 1,656)."""
    n = 1 if split_rows else _config.batch_threads(B)
    if n == 1:  # the common case, on every call's path: no linspace
        return [slice(0, B)]
    if lengths is not None and lengths.min() != lengths.max():
        order = np.argsort(-lengths, kind="stable").astype(np.int64)
        return [np.ascontiguousarray(order[i::n]) for i in range(n)]
    return [slice(B * i // n, B * (i + 1) // n) for i in range(n)]


def _map_parts(fn, items, split_rows=False):
    """``[fn(item) for item in items]``: when there are several, the calling
    thread and the kept pool's threads (:func:`fastrnn._config.thread_pool`)
    take one each, BLAS on one thread meanwhile. With one, the Cython
    kernels split their rows over their helper thread where ``split_rows``
    (see :meth:`_RNNBase._splits_rows`).

    The samples of a batch are independent, so each thread runs the whole
    network over its slice with no synchronisation, where BLAS's own threads
    would meet twice per time step, in each step's small product. The caller
    (forward, backward) is already inside :func:`reuse_array_memory`; the pool's
    threads enter it here.
    """
    def run(item):
        with flush_denormals():  # per thread: see fastrnn._blas.flush_denormals
            return fn(item)

    def run_in_pool(item):
        with reuse_array_memory():  # per thread too: see fastrnn._memory
            return run(item)

    if len(items) == 1:
        if not split_rows:  # (no context manager on S1's path: 2 us of 80)
            return [run(items[0])]
        with row_split():
            return [run(items[0])]
    with _config.single_threaded_blas():
        pool = _config.thread_pool(len(items) - 1)
        tasks = [pool.start(run_in_pool, item) for item in items[1:]]
        try:
            first = run(items[0])  # the calling thread takes a slice too
        finally:
            # no slice outlives the call, even on an error (but for an
            # interrupt while waiting: the pool's threads then free themselves)
            for task in tasks:
                task.wait()
    return [first] + [task.result() for task in tasks]


class _RNNBase:
    """Shared machinery of the recurrent layers; use RNN, LSTM or GRU."""

    _cell = None

    def __init__(self, input_size, hidden_size, num_layers=1, bias=True,
                 batch_first=False, dropout=0.0, bidirectional=False, *,
                 nonlinearity="tanh", proj_size=0, peephole=False,
                 dtype=np.float32, backend="auto", random_state=None):
        name = type(self).__name__
        for arg, value, low in [("input_size", input_size, 1),
                                ("hidden_size", hidden_size, 1),
                                ("num_layers", num_layers, 1),
                                ("proj_size", proj_size, 0)]:
            if (not isinstance(value, numbers.Integral) or isinstance(value, bool)
                    or value < low):
                raise ValueError(
                    f"{name}: {arg} must be an integer >= {low}, got {value!r}")
        if proj_size >= hidden_size:
            raise ValueError(f"{name}: proj_size has to be smaller than hidden_size, "
                             f"got proj_size={proj_size}, hidden_size={hidden_size}")
        if (not isinstance(dropout, numbers.Real) or isinstance(dropout, bool)
                or not 0 <= dropout <= 1):
            raise ValueError(f"{name}: dropout must be a number in [0, 1], got {dropout!r}")
        if dropout > 0 and num_layers == 1:
            warnings.warn(f"{name}: dropout={dropout} acts between recurrent layers, "
                          "so it has no effect with num_layers=1", UserWarning)
        if nonlinearity not in ("tanh", "relu"):
            raise ValueError(f"{name}: unknown nonlinearity {nonlinearity!r}; "
                             "expected 'tanh' or 'relu'")
        dtype = np.dtype(dtype)
        if dtype not in (np.float32, np.float64):
            raise TypeError(f"{name}: dtype must be float32 or float64, got {dtype}")
        _kernels.resolve_backend(backend)  # fail early on an unknown backend

        self.input_size = int(input_size)
        self.hidden_size = int(hidden_size)
        self.num_layers = int(num_layers)
        self.bias = bool(bias)
        self.batch_first = bool(batch_first)
        self.dropout = float(dropout)
        self.bidirectional = bool(bidirectional)
        self.nonlinearity = nonlinearity
        self.proj_size = int(proj_size)
        self.peephole = bool(peephole)
        self.dtype = dtype
        self.backend = backend
        self.training = True
        self._rng = as_random_state(random_state)
        self._params = self._init_params()
        self.grads = {}
        self._cache = None

    # ------------------------------------------------------------ parameters

    @property
    def _num_directions(self):
        return 2 if self.bidirectional else 1

    @property
    def _state_size(self):
        """Size of ``h``: the projection size if there is one."""
        return self.proj_size or self.hidden_size

    def _param_shapes(self):
        """Parameter name -> shape, in PyTorch's order."""
        G, H, R = _GATES[self._cell], self.hidden_size, self._state_size
        shapes = {}
        for k in range(self.num_layers):
            in_size = self.input_size if k == 0 else R * self._num_directions
            for sfx in ("", "_reverse")[: self._num_directions]:
                shapes[f"weight_ih_l{k}{sfx}"] = (G * H, in_size)
                shapes[f"weight_hh_l{k}{sfx}"] = (G * H, R)
                if self.bias:
                    shapes[f"bias_ih_l{k}{sfx}"] = (G * H,)
                    shapes[f"bias_hh_l{k}{sfx}"] = (G * H,)
                if self.proj_size:
                    shapes[f"weight_hr_l{k}{sfx}"] = (self.proj_size, H)
                if self.peephole:
                    shapes[f"weight_peephole_l{k}{sfx}"] = (3, H)
        return shapes

    def _init_params(self):
        # PyTorch's initialisation: every parameter U(-1/sqrt(H), 1/sqrt(H)).
        bound = 1.0 / np.sqrt(self.hidden_size)
        return {name: self._rng.uniform(-bound, bound, shape).astype(self.dtype)
                for name, shape in self._param_shapes().items()}

    def named_parameters(self):
        """``(name, array)`` pairs of the live parameter arrays, in PyTorch's order.

        The arrays are the layer's own: updating them in place (as an optimizer
        does) changes the layer.
        """
        return list(self._params.items())

    def state_dict(self):
        """A copy of every parameter, keyed and shaped as in PyTorch.

        Returns
        -------
        dict of str to ndarray
            ``weight_ih_l{k}``, ``weight_hh_l{k}``, ``bias_ih_l{k}``,
            ``bias_hh_l{k}``, ``weight_hr_l{k}`` (LSTM with ``proj_size``),
            ``weight_peephole_l{k}`` (LSTM with ``peephole``, rows i, f, o),
            with the suffix ``_reverse`` for the reverse direction.
        """
        return {name: value.copy() for name, value in self._params.items()}

    def load_state_dict(self, state_dict, strict=True):
        """Copy parameters from ``state_dict`` (PyTorch names, shapes, gate order).

        Parameters
        ----------
        state_dict : mapping of str to array-like
            For example ``{k: v.detach().numpy() for k, v in
            torch_lstm.state_dict().items()}``.
        strict : bool, default=True
            If true, a missing or unexpected key is an error; if false, only the
            keys present are loaded and unknown ones are ignored.

        Raises
        ------
        KeyError
            Missing or unexpected keys (``strict=True``); the message lists them.
        ValueError
            A shape mismatch or a non-finite value; the message names the key
            and both shapes. Nothing is loaded if any entry is rejected.
        """
        expected = self._param_shapes()
        missing = [k for k in expected if k not in state_dict]
        unexpected = [k for k in state_dict if k not in expected]
        if strict and (missing or unexpected):
            raise KeyError(f"{type(self).__name__}.load_state_dict: missing keys "
                           f"{missing}, unexpected keys {unexpected}")
        new = {}
        for name, value in state_dict.items():
            if name not in expected:
                continue
            arr = np.asarray(value)
            if arr.shape != expected[name]:
                raise ValueError(
                    f"{type(self).__name__}.load_state_dict: size mismatch for {name}: "
                    f"expected shape {expected[name]}, got {arr.shape}")
            new[name] = as_float_array(arr, self.dtype, f"state_dict[{name!r}]")
        for name, arr in new.items():
            self._params[name][...] = arr

    def train(self, mode=True):
        """Set training mode (dropout on, caches kept for :meth:`backward`)."""
        self.training = bool(mode)
        if not self.training:
            self._cache = None
        return self

    def eval(self):
        """Set inference mode: no dropout, no per-step caches."""
        return self.train(False)

    # --------------------------------------------------------------- forward

    def __call__(self, x, hx=None, lengths=None):
        return self.forward(x, hx, lengths)

    def forward(self, x, hx=None, lengths=None):
        """Run the layer over a batch of sequences.

        Parameters
        ----------
        x : array-like of shape (T, B, input_size)
            Or ``(B, T, input_size)`` with ``batch_first=True``, or
            ``(T, input_size)`` for one unbatched sequence.
        hx : array-like of shape (num_layers * num_directions, B, R), optional
            Initial hidden state (zeros if omitted); for an LSTM a tuple
            ``(h_0, c_0)`` with ``c_0`` of shape ``(..., B, hidden_size)``.
            ``R`` is ``proj_size`` if set, else ``hidden_size``. Unbatched
            input takes the state without the batch axis.
        lengths : array-like of int of shape (B,), optional
            Valid length of each sequence. The result equals PyTorch's
            ``pack_padded_sequence(..., enforce_sorted=False)`` followed by
            ``pad_packed_sequence(..., total_length=T)``: outputs past a sample's
            end are zero, ``h_n`` is each sample's state at its own last step,
            and the reverse direction starts at that step.

        Returns
        -------
        output : ndarray of shape (T, B, num_directions * R)
            (``(B, T, ...)`` with ``batch_first``), the last layer's ``h_t``.
        h_n : ndarray of shape (num_layers * num_directions, B, R)
            Final states; for an LSTM a tuple ``(h_n, c_n)``.
        """
        with reuse_array_memory():  # see fastrnn._memory
            return self._forward(x, hx, lengths)

    def _forward_finite(self, x, hx=None, lengths=None):
        """:meth:`forward` for an ``x`` known to be finite: the estimators'
        networks, whose data was checked on the way in and whose layers feed
        each other. The same checks but the scan of every value (0.15-0.2 ms
        for S2's 3.3 MB, once per layer and call); an ``x`` of another dtype
        still gets it. The promise matters: an infinity would pass silently,
        absorbed by saturating gates, where a NaN at least shows in the
        output."""
        with reuse_array_memory():
            return self._forward(x, hx, lengths, scan=False)

    def _forward(self, x, hx, lengths, scan=True):
        x, unbatched = self._check_input(x, scan)
        T, B, _ = x.shape
        lengths = check_lengths(lengths, B, T, unbatched)
        h0, c0 = self._check_hx(hx, B, unbatched)
        masks = self._dropout_masks(T, B)

        split_rows = self._splits_rows(B)
        parts = _batch_parts(B, lengths, split_rows)
        index = None if isinstance(parts[0], slice) else parts
        # Split over threads, each part places its output in the whole batch's
        # itself, the threads' copies running side by side, instead of the
        # calling thread joining them afterwards (interleaved A/B, medians:
        # S2 0.91-0.96 of the time, S3 0.96-0.99); in eval mode the kernels
        # mostly write a slice's there themselves (see _forward_batch).
        out = None
        if len(parts) > 1:
            out = np.empty((T, B, self._num_directions * self._state_size), self.dtype)

        def run(part):
            dest = None if out is None or index is not None else out[:, part]
            res = self._forward_batch(_take(x, part), _take(lengths, part, 0),
                                      _take(h0, part), _take(c0, part),
                                      [_take(m, part) for m in masks], dest)
            if out is None:
                return res
            if index is not None:
                put_rows(res[0], part, out)
            elif res[0] is not dest:
                dest[...] = res[0]
            return (None,) + res[1:]

        results = _map_parts(run, parts, split_rows)
        joined, h_n, c_n = (_join(r, index) for r in list(zip(*results))[:3])
        out = joined if out is None else out
        if self.training:
            self._cache = dict(parts=list(zip(parts, (r[3] for r in results))),
                               shape=(T, B), unbatched=unbatched, split_rows=split_rows)
        output = self._to_user_layout(out, unbatched)
        h_n = self._state_to_user(h_n, unbatched)
        if self._cell == "lstm":
            return output, (h_n, self._state_to_user(c_n, unbatched))
        return output, h_n

    def _splits_rows(self, B):
        """Whether this layer's calls over ``B`` samples run whole on the
        calling thread, each kernel splitting its samples' rows with the Cython
        extension's helper thread (float32 on the panels, enough samples, two
        threads or more allowed, but no more than two slices' worth of
        samples for them), rather than split the batch over Python threads
        (:func:`_batch_parts`).

        The batch slices run whole layers on Python threads, which hand the
        GIL back and forth around every NumPy call and kernel; on these virtual
        machines each hand-over to a blocked thread takes 50-100 us, which put
        0.2-0.45 ms into every split call (S3 LSTM T=10: 1.85 ms on two
        threads, 1.26 ms for one half on one thread). The helper needs no GIL.
        The same tree, the one way against the other (alternating processes,
        medians): S3 LSTM 11.1 ms against 11.6, GRU 8.9 against 9.6, RNN 2.6
        against 3.1; S7 LSTM 7.0 against 7.4, RNN 2.1 against 2.4; S2 GRU 10.8
        against 11.8; and S4, whose 32 samples did not split at all, LSTM
        0.51 ms against 0.68, GRU 0.45 against 0.60."""
        if self.dtype != np.float32 or B < 2:
            return False
        kernels = _kernels.get_kernels(self.backend)
        if not (getattr(kernels, "HAS_ROW_SPLIT", False)
                and B >= kernels.row_split_min_rows() and kernels.panel_products()):
            return False
        # The thread count last: reading BLAS's costs microseconds, which
        # showed at S1, whose one sample never splits. The helper is one
        # thread: where more are allowed and the batch is large enough for
        # three slices or more, the slices go further.
        n = _config.available_threads()
        return n > 1 and _config.batch_threads(B, n) <= 2

    def _dropout_masks(self, T, B):
        """Per layer, the inverted-dropout mask on its input (T, B, F), or None:
        drawn for the whole batch up front, so the draws do not depend on how
        the batch is split over threads."""
        masks = [None] * self.num_layers
        if self.training and self.dropout > 0:
            shape = (T, B, self._state_size * self._num_directions)
            for k in range(1, self.num_layers):
                masks[k] = dropout_mask(self._rng, shape, self.dropout, self.dtype)
        return masks

    def _forward_batch(self, x, lengths, h0, c0, masks, dest=None):
        """The network over time-major ``x`` (one part of the batch); returns
        ``(out, h_n, c_n, cache)`` time-major in the caller's batch order, ``c_n``
        None but for the LSTM and ``cache`` what :meth:`backward` needs (None in
        eval mode). Touches no state of the layer, so slices run concurrently.

        ``dest``, this slice's part of the whole batch's output, is where the
        kernels write the last layer's output in eval mode if they can (one
        direction, the batch in its own order): then ``out`` is ``dest``. S2
        RNN (two slices): 0.5 ms of 6 ms was each thread copying its output
        there."""
        T, B, _ = x.shape
        perm = None
        if lengths is None:
            lengths = np.full(B, T, dtype=np.int64)
        else:
            order = np.argsort(-lengths, kind="stable")
            if np.any(order != np.arange(B)):
                perm = order
                lengths = np.ascontiguousarray(lengths[perm])
                x, h0, c0 = (_take(a, perm) for a in (x, h0, c0))
                masks = [_take(m, perm) for m in masks]
        h0, c0 = (None if a is None else np.ascontiguousarray(a) for a in (h0, c0))
        # in eval mode the kernels read a batch slice of x in place (see
        # _forward_block); the training cache keeps a contiguous input
        x = np.ascontiguousarray(x) if self.training else x

        kernels = _kernels.get_kernels(self.backend)
        training = self.training
        cache = dict(perm=perm, lengths=lengths, layers=[], h0=h0, c0=c0) \
            if training else None
        h_n = np.empty_like(h0)
        c_n = np.empty_like(c0) if c0 is not None else None
        inp = x
        for k in range(self.num_layers):
            if masks[k] is not None:
                inp = inp * masks[k]
            outs, dir_caches = [], []
            direct = (dest is not None and not training and perm is None
                      and k == self.num_layers - 1 and self._num_directions == 1)
            for d in range(self._num_directions):
                idx = k * self._num_directions + d
                h = h0[idx].copy()
                c = c0[idx].copy() if c0 is not None else None
                out, dcache = self._forward_direction(kernels, inp, k, d, lengths,
                                                      h, c, training,
                                                      dest if direct else None)
                h_n[idx] = h
                if c is not None:
                    c_n[idx] = c
                outs.append(out)
                dir_caches.append(dcache)
            if training:
                cache["layers"].append(dict(inp=inp, mask=masks[k], dirs=dir_caches,
                                            outs=outs))
            inp = outs[0] if len(outs) == 1 else np.concatenate(outs, axis=2)
        if perm is not None:
            inv = np.argsort(perm)
            inp, h_n, c_n = (_take(a, inv) for a in (inp, h_n, c_n))
        return inp, h_n, c_n, cache

    def _weights(self, k, d):
        sfx = f"l{k}" + ("_reverse" if d else "")
        p = self._params
        return (p[f"weight_ih_{sfx}"], p[f"weight_hh_{sfx}"],
                p.get(f"bias_ih_{sfx}"), p.get(f"bias_hh_{sfx}"),
                p.get(f"weight_hr_{sfx}"), p.get(f"weight_peephole_{sfx}"), sfx)

    def _forward_direction(self, kernels, inp, k, d, lengths, h, c, training,
                           out=None):
        """One layer, one direction: the recurrent kernel, input projection included.

        In eval mode the steps go in blocks of ``_config.INFERENCE_BLOCK_STEPS``,
        each its own kernel call with the running state carried over, so that
        the gate pre-activations never take more than one block's memory where
        a kernel computes them over all its steps at once.
        Returns the output (T, B, R), in ``out`` when given (eval mode only;
        each step's rows contiguous), and, in training mode, the kernel caches.
        """
        T, B, _ = inp.shape
        step = T if training else min(T, _config.INFERENCE_BLOCK_STEPS)
        if step == T:
            return self._forward_block(kernels, inp, k, d, lengths, h, c, training, out)
        if out is None:
            out = np.empty((T, B, self._state_size), self.dtype)
        starts = range(0, T, step)
        for t0 in (reversed(starts) if d else starts):
            t1 = min(t0 + step, T)
            nb = int(np.count_nonzero(lengths > t0))  # active: a prefix (sorted)
            out[t0:t1, nb:] = 0  # the samples that ended before the block
            if nb == 0:
                continue
            # each active sample's steps inside the block: in [1, t1 - t0], sorted
            blk_lengths = np.minimum(lengths[:nb] - t0, t1 - t0)
            self._forward_block(kernels, inp[t0:t1, :nb], k, d, blk_lengths, h[:nb],
                                None if c is None else c[:nb], training,
                                out[t0:t1, :nb])
        return out, None

    def _forward_block(self, kernels, inp, k, d, lengths, h, c, training, out=None):
        """Recurrent kernel over all of ``inp``'s steps, input projection
        included, into ``out`` when given (see the kernels' contract for the
        layout it may have), else into a new array; ``h`` and ``c``
        (C-contiguous) are carried in place."""
        T, B, D = inp.shape
        w_ih, w_hh, b_ih, b_hh, w_hr, peep, _ = self._weights(k, d)
        H, R, G = self.hidden_size, self._state_size, _GATES[self._cell]
        dt = self.dtype
        if self.bias:
            bias = b_ih + b_hh
            if self._cell == "gru":
                bias[2 * H:] = b_ih[2 * H:]  # b_hn stays in the reset product
        else:
            bias = np.zeros(G * H, dt)
        x, w_ih = _rows_in_place(inp), np.ascontiguousarray(w_ih)
        reverse = bool(d)
        if out is None:
            out = np.empty((T, B, R), dt)
        none3 = np.zeros((0, 0, 0), dt)
        cache = None
        if self._cell == "rnn":
            kernels.rnn_forward(x, w_ih, bias, w_hh, lengths, reverse,
                                self.nonlinearity == "relu", h, out)
            cache = {}
        elif self._cell == "lstm":
            w_hr_k = w_hr if w_hr is not None else np.zeros((0, 0), dt)
            peep_k = peep if peep is not None else np.zeros((0, H), dt)
            if training:
                gates = np.empty((T, B, 4 * H), dt)
                cs = np.empty((T, B, H), dt)
                hc = np.empty((T, B, H), dt) if self.proj_size else none3
            else:
                gates = cs = hc = none3
            kernels.lstm_forward(x, w_ih, bias, w_hh, w_hr_k, peep_k, lengths, reverse,
                                 training, h, c, out, gates, cs, hc)
            cache = dict(gates=gates, cs=cs, hc=hc, w_hr=w_hr_k, peep=peep_k)
        else:
            b_hn = b_hh[2 * H:] if self.bias else np.zeros(H, dt)
            if training:
                gates = np.empty((T, B, 3 * H), dt)
                ghn = np.empty((T, B, H), dt)
            else:
                gates = ghn = none3
            kernels.gru_forward(x, w_ih, bias, w_hh, b_hn, lengths, reverse, training,
                                h, out, gates, ghn)
            cache = dict(gates=gates, ghn=ghn)
        return out, (cache if training else None)

    # -------------------------------------------------------------- backward

    def backward(self, grad_output=None, grad_h_n=None, *, input_grad=True):
        """Backpropagate through time from the last :meth:`forward` call.

        Parameters
        ----------
        grad_output : array-like, shape of the forward's ``output``, optional
            Gradient of the loss w.r.t. the output. None when the loss does
            not depend on it (only on the final state, ``grad_h_n``): the
            kernels then read no output gradient at all, where an array of
            zeros would cost its allocation, check and reading.
        grad_h_n : array-like, shape of ``h_n``, optional
            Gradient w.r.t. the final state (zeros if omitted). For an LSTM,
            either a ``(grad_h_n, grad_c_n)`` tuple (either may be None) or the
            gradient w.r.t. ``h_n`` alone.
        input_grad : bool, default=True
            If false, the gradient w.r.t. ``x`` is not computed (as PyTorch
            skips it for an input that does not require one): one matrix
            product over all steps less, and ``grad_x`` is None.

        Returns
        -------
        grad_x : ndarray, shape of the forward's ``x``, or None
        grad_hx : ndarray or tuple of ndarray
            Gradient w.r.t. the initial state, with the structure of ``hx``
            (a ``(grad_h0, grad_c0)`` tuple for an LSTM). It is returned also
            when ``hx`` was omitted (the gradient w.r.t. the zero state).

        Also fills :attr:`grads`, a dict keyed like :meth:`state_dict`.
        """
        with reuse_array_memory():  # see fastrnn._memory
            return self._backward(grad_output, grad_h_n, input_grad)

    def _backward(self, grad_output, grad_h_n, input_grad):
        if not self.training:
            raise RuntimeError(f"{type(self).__name__}.backward() needs a forward pass in "
                               "training mode, but the layer is in eval mode "
                               "(call layer.train())")
        cache = self._cache
        if cache is None:
            raise RuntimeError(f"{type(self).__name__}.backward() called before a "
                               "training-mode forward()")
        (T, B), unbatched = cache["shape"], cache["unbatched"]
        R, H = self._state_size, self.hidden_size
        L = self.num_layers * self._num_directions
        dy = (None if grad_output is None else
              self._from_user_layout(grad_output, (T, B, self._num_directions * R),
                                     unbatched, "grad_output"))
        gh, gc = grad_h_n, None
        if self._cell == "lstm" and isinstance(grad_h_n, tuple):
            if len(grad_h_n) != 2:
                raise ValueError("grad_h_n for an LSTM must be a (grad_h_n, grad_c_n) "
                                 f"tuple, got a tuple of {len(grad_h_n)}")
            gh, gc = grad_h_n
        dh_all = self._grad_state(gh, (L, B, R), unbatched, "grad_h_n")
        dc_all = (self._grad_state(gc, (L, B, H), unbatched, "grad_c_n")
                  if self._cell == "lstm" else None)

        def run(part_cache):
            part, pcache = part_cache
            return self._backward_batch(pcache, _take(dy, part), _take(dh_all, part),
                                        _take(dc_all, part), input_grad)

        parts = [part for part, _ in cache["parts"]]
        index = None if isinstance(parts[0], slice) else parts
        results = _map_parts(run, cache["parts"], cache["split_rows"])
        grads = [r[0] for r in results]
        self.grads = {name: reduce(np.add, (g[name] for g in grads))
                      for name in self._params}
        grad_x, grad_h0, grad_c0 = (_join(r, index) for r in list(zip(*results))[1:])
        grad_x = None if grad_x is None else self._to_user_layout(grad_x, unbatched)
        grad_h0 = self._state_to_user(grad_h0, unbatched)
        if self._cell == "lstm":
            return grad_x, (grad_h0, self._state_to_user(grad_c0, unbatched))
        return grad_x, grad_h0

    def _backward_batch(self, cache, dy, dh_all, dc_all, input_grad):
        """Backpropagation through one batch slice's forward ``cache``; takes and
        returns time-major arrays in the caller's batch order: ``(grads, grad_x,
        grad_h0, grad_c0)``, ``grad_x`` None unless ``input_grad``, ``grad_c0``
        None but for the LSTM."""
        perm, lengths = cache["perm"], cache["lengths"]
        if perm is not None:
            dy, dh_all, dc_all = (_take(a, perm) for a in (dy, dh_all, dc_all))
        T, B = cache["layers"][0]["inp"].shape[:2]
        R, H, G = self._state_size, self.hidden_size, _GATES[self._cell]
        nd = self._num_directions
        L = self.num_layers * nd
        dt = self.dtype

        kernels = _kernels.get_kernels(self.backend)
        rows = _valid_rows(lengths, T)
        grads = {}
        dh0 = np.empty((L, B, R), dt)
        dc0 = np.empty((L, B, H), dt) if dc_all is not None else None
        for k in reversed(range(self.num_layers)):
            layer = cache["layers"][k]
            inp = layer["inp"]
            D = inp.shape[2]
            need_dx = input_grad or k > 0
            dx = None  # the first direction's product writes it, the second adds
            for d in range(nd):
                idx = k * nd + d
                w_ih, w_hh, _, _, _, _, sfx = self._weights(k, d)
                dcache = layer["dirs"][d]
                out = layer["outs"][d]
                # the top layer's output may have no gradient (the kernels'
                # zero-size dout)
                dout = (np.zeros((0, 0, 0), dt) if dy is None else
                        np.ascontiguousarray(dy[:, :, d * R:(d + 1) * R]))
                dh = dh_all[idx].copy()
                dgx = np.empty((T, B, G * H), dt)
                reverse = bool(d)
                h0 = cache["h0"][idx]
                if self._cell == "rnn":
                    kernels.rnn_backward(w_hh, lengths, reverse,
                                         self.nonlinearity == "relu", out, dout, dh, dgx)
                    dgh = dgx
                elif self._cell == "lstm":
                    dc = dc_all[idx].copy()
                    dpeep = np.empty(dcache["peep"].shape, dt)
                    dhr = (np.empty((T, B, self.proj_size), dt) if self.proj_size
                           else np.zeros((0, 0, 0), dt))
                    kernels.lstm_backward(w_hh, dcache["w_hr"], dcache["peep"], lengths,
                                          reverse, cache["c0"][idx], out, dcache["gates"],
                                          dcache["cs"], dcache["hc"], dout, dh, dc, dgx,
                                          dpeep, dhr)
                    dgh = dgx
                    dc0[idx] = dc
                    if self.proj_size:
                        grads[f"weight_hr_{sfx}"] = matmul(
                            dhr.reshape(T * B, -1), dcache["hc"].reshape(T * B, H),
                            trans_a=True)
                    if self.peephole:
                        grads[f"weight_peephole_{sfx}"] = dpeep
                else:
                    dgh = np.empty((T, B, 3 * H), dt)
                    kernels.gru_backward(w_hh, lengths, reverse, h0, out, dcache["gates"],
                                         dcache["ghn"], dout, dh, dgx, dgh)
                dh0[idx] = dh
                # The weight gradients sum over the valid steps only (`rows`)
                # where padding is a large part of the batch.
                if dgh is dgx:
                    g_ih, g_hh, g_b = self._weight_grads(dgx, rows, inp, out, h0, lengths,
                                                         reverse, self.bias)
                    g_bh = None if g_b is None else g_b.copy()  # both biases enter as one sum
                else:  # the GRU's b_hn stays in the reset product: two sums
                    g_ih, _, g_b = self._weight_grads(dgx, rows, inp, None, h0, lengths,
                                                      reverse, self.bias)
                    _, g_hh, g_bh = self._weight_grads(dgh, rows, None, out, h0, lengths,
                                                       reverse, self.bias)
                grads[f"weight_ih_{sfx}"] = g_ih
                grads[f"weight_hh_{sfx}"] = g_hh
                if self.bias:
                    grads[f"bias_ih_{sfx}"] = g_b
                    grads[f"bias_hh_{sfx}"] = g_bh
                if need_dx:
                    # each sample's rows on the thread that wrote its dgx
                    # (with the row split on), else one product over all
                    acc = dx is not None
                    if dx is None:
                        dx = np.empty((T * B, D), dt)
                    if not input_gradient(dgx, w_ih, lengths, dx.reshape(T, B, D), acc):
                        matmul(dgx.reshape(T * B, G * H), w_ih, out=dx, accumulate=acc)
            if need_dx:
                dx = dx.reshape(T, B, D)
                if layer["mask"] is not None:
                    dx *= layer["mask"]
            dy = dx

        if perm is not None:
            inv = np.argsort(perm)
            dy, dh0, dc0 = (_take(a, inv) for a in (dy, dh0, dc0))
        return grads, dy, dh0, dc0

    @staticmethod
    def _weight_grads(dg, rows, inp, out, h0, lengths, reverse, bias):
        """From the gate gradients ``dg`` (T, B, GH) over the flat ``rows``
        (see :func:`_valid_rows`): ``W_ih``'s gradient (from the input
        ``inp``) and ``W_hh``'s (from the states: ``out`` shifted, ``h0``),
        each None when its operand is, and the bias's (``dg``'s column sums;
        None unless ``bias``). Read in place by one product where the Cython
        extension's packed kernel takes it (:func:`fastrnn._blas.weight_product`),
        else from gathered operands: both weights in one product where
        :func:`_merges_weight_grads` says so.

        In place, nothing is copied: not ``[x | h_prev]``, not the valid rows,
        and the column sums ride along with the packing. Old and new trees in
        alternating processes (medians of 9): S3 LSTM 0.95-0.96 of the time,
        RNN 0.93, GRU 0.94-1.02; S7 LSTM 0.91, GRU 0.84-0.93, RNN 0.88-0.91;
        S6 0.96-1.01; S4, whose products stay small, unchanged."""
        T, B, GH = dg.shape
        dg2 = dg.reshape(T * B, GH)
        D = 0 if inp is None else inp.shape[2]
        got = weight_product(dg2, rows, None if inp is None else inp.reshape(T * B, D),
                             None if out is None else out.reshape(T * B, out.shape[2]),
                             h0, lengths, reverse, bias)
        if got is not None:
            g_w, g_b = got
        else:
            dg_rows = _rows(dg2, rows)
            g_b = column_sums(dg_rows) if bias else None
            if inp is None or out is None or not _merges_weight_grads(GH, D,
                                                                      out.shape[2]):
                g_ih = None if inp is None else matmul(
                    dg_rows, _rows(inp.reshape(T * B, D), rows), trans_a=True)
                g_hh = None if out is None else _RNNBase._grad_w_hh(
                    dg, dg_rows, rows, out, h0, lengths, reverse)
                return g_ih, g_hh, g_b
            g_w = matmul(dg_rows, _RNNBase._inputs_and_states(inp, out, h0, rows, lengths,
                                                              reverse), trans_a=True)
        # one product for both weights, or for the one whose operand was given
        if inp is None:
            return None, g_w, g_b
        if out is None:
            return g_w, None, g_b
        return np.ascontiguousarray(g_w[:, :D]), np.ascontiguousarray(g_w[:, D:]), g_b

    @staticmethod
    def _inputs_and_states(inp, out, h0, rows, lengths, reverse):
        """The rows ``[x_t | h_{t-1}]`` (T * B, D + R), or those at the flat
        ``rows`` (see :func:`_valid_rows`): the right operand of both weight
        gradients at once, ``dg.T @ [x | h_prev] = [dW_ih | dW_hh]``.

        ``h_{t-1}`` is ``out`` one step back (forward in time) or ahead
        (reverse), and ``h0`` at each sample's first step: step 0, or in
        reverse its last valid step. Every row is written, padding included
        (zeros; ``out`` is zero past a sample's end), since the gate
        gradients' zeros there do not cancel a NaN left in the memory."""
        T, B, D = inp.shape
        R = out.shape[2]
        xh = np.empty((T, B, D + R), inp.dtype)
        xh[:, :, :D] = inp
        if not reverse:
            xh[0, :, D:] = h0
            xh[1:, :, D:] = out[:-1]
        else:
            xh[:-1, :, D:] = out[1:]
            xh[-1, :, D:] = 0  # padding where a sample is shorter than T
            xh[lengths - 1, np.arange(B), D:] = h0
        xh = xh.reshape(T * B, D + R)
        return _rows(xh, rows)

    @staticmethod
    def _grad_w_hh(dgh, dgh_rows, rows, out, h0, lengths, reverse):
        """``sum_t dgh_t.T @ h_{t-1}`` without materialising the shifted states.

        ``h_{t-1}`` is ``out`` one step back, except at each sample's first step,
        where it is ``h0``. ``dgh_rows`` is ``dgh`` (T * B, GH) at the flat
        ``rows`` (see :func:`_valid_rows`), or all of it when ``rows`` is None.
        """
        T, B, GH = dgh.shape
        out2 = out.reshape(T * B, out.shape[2])
        if not reverse:
            # Steps 1.. are fed by the step before; step 0's rows come first
            # (every sample has one).
            a = dgh_rows[B:]
            prev = out2[:(T - 1) * B] if rows is None else take_rows(out2, rows[B:] - B)
            g = matmul(a, prev, trans_a=True)
            return matmul(dgh[0], h0, trans_a=True, out=g, accumulate=True)
        # Reverse: step t is fed by t + 1 (the last step, T - 1, by nothing: its
        # rows come last); out is zero past each sample's end, so the shifted
        # product misses exactly the first steps, t = lengths - 1.
        n = dgh_rows.shape[0] - (B if rows is None else int(np.sum(lengths == T)))
        prev = out2[B:] if rows is None else take_rows(out2, rows[:n] + B)
        g = matmul(dgh_rows[:n], prev, trans_a=True)
        return matmul(dgh[lengths - 1, np.arange(B)], h0, trans_a=True, out=g,
                      accumulate=True)

    # ------------------------------------------------------------ validation

    def _check_input(self, x, scan=True):
        """Validate ``x`` (every value finite unless ``scan`` is false and ``x``
        is an array of the layer's dtype); return it time-major ``(T, B, D)``
        and the unbatched flag."""
        if scan or not (isinstance(x, np.ndarray) and x.dtype == self.dtype):
            x = as_float_array(x, self.dtype, "input")
        if x.ndim not in (2, 3):
            raise ValueError(f"{type(self).__name__}: expected 2-D (unbatched) or 3-D "
                             f"(batched) input, got {x.ndim}-D input of shape {x.shape}")
        if x.shape[-1] != self.input_size:
            raise ValueError(f"{type(self).__name__}: input.shape[-1] must be equal to "
                             f"input_size. Expected {self.input_size}, got {x.shape[-1]}")
        if 0 in x.shape:
            raise ValueError(f"{type(self).__name__}: empty input of shape {x.shape}")
        unbatched = x.ndim == 2
        if unbatched:
            x = x[:, None, :]
        elif self.batch_first:
            x = x.transpose(1, 0, 2)
        return np.ascontiguousarray(x), unbatched

    def _check_hx(self, hx, B, unbatched):
        """Validate the initial state; return ``(h0, c0)`` batched (``c0`` None
        but for the LSTM)."""
        L = self.num_layers * self._num_directions
        shapes = [("h_0", (L, B, self._state_size))]
        if self._cell == "lstm":
            shapes.append(("c_0", (L, B, self.hidden_size)))
            if hx is not None and (not isinstance(hx, tuple) or len(hx) != 2):
                raise TypeError("LSTM: hx must be a tuple (h_0, c_0)")
            parts = hx if hx is not None else (None, None)
        else:
            if isinstance(hx, tuple):
                raise TypeError(f"{type(self).__name__}: hx must be an array, not a tuple")
            parts = (hx,)
        states = []
        for (name, shape), value in zip(shapes, parts):
            if value is None:
                states.append(np.zeros(shape, self.dtype))
                continue
            arr = as_float_array(value, self.dtype, name)
            want = shape[:1] + shape[2:] if unbatched else shape
            if arr.shape != want:
                raise ValueError(f"{type(self).__name__}: expected {name} of shape "
                                 f"{want}, got {arr.shape}")
            if unbatched:
                arr = arr[:, None, :]
            states.append(np.ascontiguousarray(arr))
        if hx is not None and self._cell == "lstm" and (parts[0] is None) != (parts[1] is None):
            raise ValueError("LSTM: give both h_0 and c_0, or neither")
        return states[0], (states[1] if len(states) > 1 else None)

    def _grad_state(self, value, shape, unbatched, name):
        if value is None:
            return np.zeros(shape, self.dtype)
        arr = as_float_array(value, self.dtype, name)
        want = shape[:1] + shape[2:] if unbatched else shape
        if arr.shape != want:
            raise ValueError(f"{type(self).__name__}.backward: expected {name} of shape "
                             f"{want}, got {arr.shape}")
        return arr[:, None, :] if unbatched else arr

    def _from_user_layout(self, value, shape, unbatched, name):
        """Inverse of :meth:`_to_user_layout` for a gradient w.r.t. the output."""
        arr = as_float_array(value, self.dtype, name)
        T, B, F = shape
        want = (T, F) if unbatched else ((B, T, F) if self.batch_first else shape)
        if arr.shape != want:
            raise ValueError(f"{type(self).__name__}.backward: expected {name} of shape "
                             f"{want} (the output's), got {arr.shape}")
        if unbatched:
            return arr[:, None, :]
        return arr.transpose(1, 0, 2) if self.batch_first else arr

    def _to_user_layout(self, y, unbatched):
        """Time-major ``y`` -> the caller's layout."""
        if unbatched:
            return y[:, 0, :]
        return np.ascontiguousarray(y.transpose(1, 0, 2)) if self.batch_first else y

    @staticmethod
    def _state_to_user(s, unbatched):
        return s[:, 0, :] if unbatched else s

    def __repr__(self):
        extra = [f"{self.input_size}, {self.hidden_size}"]
        for arg, default in [("num_layers", 1), ("bias", True), ("batch_first", False),
                             ("dropout", 0.0), ("bidirectional", False),
                             ("proj_size", 0), ("peephole", False)]:
            if getattr(self, arg) != default:
                extra.append(f"{arg}={getattr(self, arg)!r}")
        if self._cell == "rnn" and self.nonlinearity != "tanh":
            extra.append(f"nonlinearity={self.nonlinearity!r}")
        return f"{type(self).__name__}({', '.join(extra)})"


class RNN(_RNNBase):
    """Elman RNN, ``h_t = act(x_t W_ih^T + b_ih + h_{t-1} W_hh^T + b_hh)``.

    Arguments, shapes and parameter names as ``torch.nn.RNN``; see
    :meth:`forward` and :meth:`backward`.

    Parameters
    ----------
    input_size, hidden_size : int
        Features per step in ``x``; units of ``h``.
    num_layers : int, default=1
        Stacked recurrent layers.
    nonlinearity : {'tanh', 'relu'}, default='tanh'
    bias : bool, default=True
    batch_first : bool, default=False
        Input and output as ``(B, T, F)`` instead of ``(T, B, F)``.
    dropout : float, default=0.0
        Dropout on the outputs of every layer but the last, in training mode.
    bidirectional : bool, default=False
    dtype : {numpy.float32, numpy.float64}, default=numpy.float32
    backend : {'auto', 'reference', 'numba', 'cython'}, default='auto'
        Kernel backend; ``'auto'`` honours :func:`fastrnn.set_backend`.
    random_state : int, RandomState or None
        Seeds the initialisation (PyTorch's ``U(-1/sqrt(H), 1/sqrt(H))``) and
        the dropout masks.

    Examples
    --------
    >>> import numpy as np
    >>> from fastrnn.nn import RNN
    >>> rnn = RNN(4, 8, random_state=0)
    >>> out, h_n = rnn(np.ones((5, 2, 4), dtype=np.float32))
    >>> out.shape, h_n.shape
    ((5, 2, 8), (1, 2, 8))
    """

    _cell = "rnn"

    def __init__(self, input_size, hidden_size, num_layers=1, nonlinearity="tanh",
                 bias=True, batch_first=False, dropout=0.0, bidirectional=False, *,
                 dtype=np.float32, backend="auto", random_state=None):
        super().__init__(input_size, hidden_size, num_layers, bias, batch_first,
                         dropout, bidirectional, nonlinearity=nonlinearity,
                         dtype=dtype, backend=backend, random_state=random_state)


class LSTM(_RNNBase):
    """Long short-term memory, gate order i, f, g, o as ``torch.nn.LSTM``.

    Takes the same parameters as :class:`RNN` (without ``nonlinearity``), plus:

    Parameters
    ----------
    proj_size : int, default=0
        If positive, ``h_t = W_hr (o_t * tanh(c_t))`` has this size
        (parameter ``weight_hr_l{k}``), as in PyTorch.
    peephole : bool, default=False
        Peephole connections (not in PyTorch): per-unit vectors through which the
        input and forget gates see ``c_{t-1}`` and the output gate sees ``c_t``;
        parameter ``weight_peephole_l{k}`` of shape ``(3, hidden_size)``, rows
        i, f, o.

    Examples
    --------
    Load the weights of a PyTorch LSTM and get the same outputs:

    >>> import numpy as np
    >>> from fastrnn.nn import LSTM
    >>> lstm = LSTM(3, 5, num_layers=2, batch_first=True, random_state=0)
    >>> weights = lstm.state_dict()          # or {k: v.detach().numpy() for k, v in
    >>> lstm.load_state_dict(weights)        #     torch_lstm.state_dict().items()}
    >>> out, (h_n, c_n) = lstm(np.zeros((2, 7, 3)))
    >>> out.shape, h_n.shape, c_n.shape
    ((2, 7, 5), (2, 2, 5), (2, 2, 5))
    """

    _cell = "lstm"

    def __init__(self, input_size, hidden_size, num_layers=1, bias=True,
                 batch_first=False, dropout=0.0, bidirectional=False, proj_size=0, *,
                 peephole=False, dtype=np.float32, backend="auto", random_state=None):
        super().__init__(input_size, hidden_size, num_layers, bias, batch_first,
                         dropout, bidirectional, proj_size=proj_size, peephole=peephole,
                         dtype=dtype, backend=backend, random_state=random_state)


class GRU(_RNNBase):
    """Gated recurrent unit, PyTorch's convention and gate order r, z, n.

    ``n_t = tanh(W_in x_t + b_in + r_t * (W_hn h_{t-1} + b_hn))`` and
    ``h_t = (1 - z_t) * n_t + z_t * h_{t-1}``. Takes the same parameters as
    :class:`RNN` (without ``nonlinearity``).

    Examples
    --------
    >>> import numpy as np
    >>> from fastrnn.nn import GRU
    >>> gru = GRU(3, 4, bidirectional=True, random_state=0)
    >>> out, h_n = gru(np.zeros((6, 3)), lengths=None)   # unbatched (T, D)
    >>> out.shape, h_n.shape
    ((6, 8), (2, 4))
    """

    _cell = "gru"

    def __init__(self, input_size, hidden_size, num_layers=1, bias=True,
                 batch_first=False, dropout=0.0, bidirectional=False, *,
                 dtype=np.float32, backend="auto", random_state=None):
        super().__init__(input_size, hidden_size, num_layers, bias, batch_first,
                         dropout, bidirectional, dtype=dtype, backend=backend,
                         random_state=random_state)
