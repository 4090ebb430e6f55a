"""Recurrent kernels: the sequential part of every cell, one module per backend.

The kernel contract
-------------------
Only the recursion over time lives here, with the input projection, which a
forward may fuse into its steps. Everything else that is one big matrix
product over all time steps (weight gradients, input gradients) is done by
the caller with BLAS. Every backend module exposes the same six functions
with the same argument order::

    rnn_forward(x, w_ih, bias, w_hh, lengths, reverse, relu, h, out)
    rnn_backward(w_hh, lengths, reverse, relu, out, dout, dh, dgx)
    lstm_forward(x, w_ih, bias, w_hh, w_hr, peep, lengths, reverse, training,
                 h, c, out, gates, cs, hc)
    lstm_backward(w_hh, w_hr, peep, lengths, reverse, c0, out, gates, cs, hc,
                  dout, dh, dc, dgx, dpeep, dhr)
    gru_forward(x, w_ih, bias, w_hh, b_hn, lengths, reverse, training, h, out,
                gates, ghn)
    gru_backward(w_hh, lengths, reverse, h0, out, gates, ghn, dout, dh, dgx, dgh)

Shapes (``T`` steps, ``B`` samples, ``D`` input features, ``H`` hidden units,
``G`` gates: 1 RNN, 4 LSTM, 3 GRU, ``R`` the size of ``h``: ``H``, or ``P``
for an LSTM with a projection). All arrays are C-contiguous (but a
forward's ``x`` and ``out``, below) and of one floating dtype (float32 or float64),
except ``lengths`` (int64) and the two flags. The arrays a kernel writes must
not overlap any other argument: backends may use them as work space (the
forwards may keep the input terms of every step in ``out``, when it is
contiguous, or ``gates`` until the step replaces them); of an ``out`` whose
steps lie apart, only its own elements.

``x``     (T, B, D)    the layer's input, ``D >= 1``; what the rows of inactive
                       samples hold does not matter. Like a forward's ``out``
                       (below), each step's rows one C-contiguous block, the
                       steps possibly further apart.
``w_ih``  (G*H, D)     input weights, PyTorch layout and gate order.
``bias``  (G*H,)       ``b_ih + b_hh``; for the GRU only ``b_hh``'s r and z
                       parts are folded in, ``b_hn`` stays inside the reset
                       product. The step's input terms are
                       ``gx_t = x_t @ W_ih.T + bias``.
``w_hh``  (G*H, R)     recurrent weights, PyTorch layout and gate order
                       (LSTM i, f, g, o; GRU r, z, n).
``w_hr``  (P, H)       LSTM projection, or shape (0, 0) for none.
``peep``  (3, H)       LSTM peephole vectors (i, f, o), or shape (0, H) for none:
                       i and f see ``c_{t-1}``, o sees ``c_t``.
``b_hn``  (H,)         GRU recurrent bias of the candidate gate.
``lengths`` (B,)       int64, sorted non-increasing, each in [1, T]. At step
                       ``t`` exactly the samples ``b < nb(t)`` with
                       ``lengths[b] > t`` are active (a prefix of the batch).
``reverse``            walk t from T-1 down to 0; each sample starts at its own
                       last step ``lengths[b] - 1``.
``relu``               RNN nonlinearity: relu if true, else tanh.
``training``           if false, ``gates``/``cs``/``hc``/``ghn`` are not touched
                       (pass zero-size arrays). A forward that does not fuse
                       its input projection still keeps the input terms of
                       all its steps, (T, B, G*H): the layers bound that by
                       running eval mode in blocks of steps.
``h``, ``c`` (B, R), (B, H)  in: initial state; out: each sample's state at its
                       own last step (the running state is updated in place).
``out``   (T, B, R)    every ``h_t``; zero where a sample is inactive. Each
                       step's rows are one C-contiguous (B, R) block; the
                       steps may lie further apart (a batch slice of a larger
                       output, which a forward then fills in place).
``gates`` (T, B, G*H)  post-activation gates (training only).
``cs``    (T, B, H)    LSTM cell state ``c_t`` (training only).
``hc``    (T, B, H)    LSTM ``o * tanh(c_t)`` before projection (training with
                       projection only; else shape (0, 0, 0)).
``ghn``   (T, B, H)    GRU ``W_hn h_{t-1} + b_hn`` (training only).

Backward: ``dout`` (T, B, R) is the gradient w.r.t. ``out`` (entries where a
sample is inactive are ignored), or of shape (0, 0, 0) when there is none (a
loss on the final state only): the kernel reads it as zeros. ``dh`` (and
``dc``) hold the gradient w.r.t. the final state on entry and the gradient
w.r.t. the initial state on return. The kernel writes every entry of ``dgx``
(T, B, G*H), the gradient w.r.t. the input terms ``gx`` (zero where inactive).
For the GRU it also writes ``dgh`` (T, B, 3H), the gradient w.r.t. ``W_hh
h_{t-1} + b_hh`` (its n part is ``dgx``'s times ``r``); for RNN and LSTM that
gradient equals ``dgx``. ``dpeep`` (3, H) is *overwritten* with the peephole
gradient (shape (0, H) when there is none). ``dhr`` (T, B, P) receives the
gradient w.r.t. the projected ``h_t`` (what ``W_hr``'s gradient needs), zero
where inactive; shape (0, 0, 0) without projection. ``c0`` (B, H) and ``h0``
(B, R) are the initial states the forward pass started from.

A kernel allocates nothing per time step and holds no Python objects in its
loop, so compiled backends can run it without the GIL.
"""

from importlib import import_module

from .. import _config
from . import _scipy_blas

_scipy_blas.preload()  # before the Cython kernels cimport it (see the module)

#: Backend name -> module path, in order of preference for ``'auto'``.
_MODULES = {
    "cython": "fastrnn._kernels._cython_kernels",
    "numba": "fastrnn._kernels.numba_kernels",
    "reference": "fastrnn._kernels.reference",
}

KERNEL_NAMES = (
    "rnn_forward",
    "rnn_backward",
    "lstm_forward",
    "lstm_backward",
    "gru_forward",
    "gru_backward",
)

_loaded = {}
_errors = {}


def _load(name):
    if name in _loaded:
        return _loaded[name]
    if name in _errors:
        return None
    try:
        module = import_module(_MODULES[name])
    except ImportError as exc:  # compiled extension not built, numba missing...
        _errors[name] = f"{type(exc).__name__}: {exc}"
        return None
    _loaded[name] = module
    return module


def available_backends():
    """Names of the kernel backends that can be used in this installation.

    Returns
    -------
    list of str
        In order of preference, for example ``['numba', 'reference']``.
    """
    return [name for name in _MODULES if _load(name) is not None]


def unavailable_backends():
    """Backends that failed to load, with the reason (a dict name -> str)."""
    available_backends()
    return dict(_errors)


def resolve_backend(name):
    """Return the concrete backend name for ``name`` (``'auto'`` resolved)."""
    if name is None or name == "auto":
        name = _config.get_backend()
    if name == "auto":
        for candidate in _config.AUTO_ORDER:
            if _load(candidate) is not None:
                return candidate
        raise RuntimeError("no kernel backend could be loaded")  # pragma: no cover
    if name not in _MODULES:
        raise ValueError(
            f"unknown backend {name!r}; expected 'auto' or one of {sorted(_MODULES)}"
        )
    if _load(name) is None:
        raise ImportError(
            f"backend {name!r} is not available: {_errors[name]}. "
            f"Available backends: {available_backends()}"
        )
    return name


def get_kernels(name):
    """Return the kernel module for backend ``name`` (``'auto'`` resolved)."""
    return _load(resolve_backend(name))
