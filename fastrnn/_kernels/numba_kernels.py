"""Numba backend: the kernel contract as ``@njit(cache=True, nogil=True)`` loops.

Each step does one BLAS product on the active prefix of the batch (``lengths``
is sorted non-increasing, so the samples still running at step ``t`` are
``b < nb(t)``), written with ``np.dot(..., out)`` into a buffer allocated once
per call, then one fused loop over that prefix for the nonlinearities. Rows of
inactive samples are written with zeros, so outputs may come from ``np.empty``.

The maths is exact and in the dtype of the inputs (float32 or float64): no
``fastmath``; sigmoid and tanh are written through libm's ``exp`` and ``expm1``
(about twice as fast as ``math.tanh``, as accurate), so float64 results match
:mod:`fastrnn._kernels.reference` to rounding. ``error_model='numpy'`` only
drops the Python division-by-zero checks (no division here can be by zero).

The public functions are thin Python wrappers that turn the flags into ``bool``
(one compiled specialisation per dtype) and call the jitted kernels; see
:mod:`fastrnn._kernels` for the contract.
"""

import math

import numba
import numpy as np
from numba import types
from numba.extending import overload

from .._blas import matmul

# fastmath without nnan/ninf: reassociation lets the gate loops vectorise; NaN and
# infinity keep their IEEE meaning (inputs are validated finite anyway).
_FASTMATH = {"nsz", "arcp", "contract", "afn", "reassoc"}
_jit = numba.njit(cache=True, nogil=True, error_model="numpy", fastmath=_FASTMATH)


# ------------------------------------------------------------------ helpers


# Float32 takes a rational approximation of tanh (error below 4e-7, inside
# float32's parity tolerance) because, unlike libm calls, it vectorises: the
# gate loops are where the time goes. Float64 keeps exact libm maths.
# At and beyond +-_TANH_CLAMP the result is exactly +-1, so a saturated gate's
# derivative (1 - tanh^2, s * (1 - s)) is exactly 0, as with np.tanh: the rational
# itself only reaches 1 - 2.4e-7 there, a "derivative" that huge inputs (1e30)
# magnified into gradients of 1e24. tanh(7.9053) = 1 - 2.7e-7, so the jump to 1
# costs at most 2.7e-7, inside the bound above (float32 tanh only rounds to 1
# from 9.0109 on; NumPy's from 10), and keeps the function monotone.
_TANH_CLAMP = 7.90531110763549805
_TANH_P = (4.89352455891786e-03, 6.37261928875436e-04, 1.48572235717979e-05,
           5.12229709037114e-08, -8.60467152213735e-11, 2.00018790482477e-13,
           -2.76076847742355e-16)
_TANH_Q = (4.89352518554385e-03, 2.26843463243900e-03, 1.18534705686654e-04,
           1.19825839466702e-06)


@_jit
def _tanh_rational(x):
    """Float32 tanh as an odd rational function of degree 13/6 on a clamped input,
    exactly +-1 from the clamp on. Branch-free (min/max and a select, no early
    return) so that the gate loops calling it still vectorise."""
    p0, p1, p2, p3, p4, p5, p6 = _TANH_P
    q0, q1, q2, q3 = _TANH_Q
    lim = np.float32(_TANH_CLAMP)
    one = np.float32(1.0)
    x = min(max(x, -lim), lim)
    x2 = x * x
    p = np.float32(p6)
    p = p * x2 + np.float32(p5)
    p = p * x2 + np.float32(p4)
    p = p * x2 + np.float32(p3)
    p = p * x2 + np.float32(p2)
    p = p * x2 + np.float32(p1)
    p = p * x2 + np.float32(p0)
    q = np.float32(q3)
    q = q * x2 + np.float32(q2)
    q = q * x2 + np.float32(q1)
    q = q * x2 + np.float32(q0)
    r = x * p / q
    # x is clamped: |x| >= lim means it was at or past the clamp (NaN gives r)
    return one if x >= lim else (-one if x <= -lim else r)


@_jit
def _sigmoid_exact(x, one):
    """Logistic function from ``exp(-|x|)``: never overflows, exact libm math."""
    e = math.exp(-abs(x))
    s = one / (one + e)
    return s if x >= 0 else e * s  # 1 / (1 + e^-x) or e^x / (1 + e^x)


@_jit
def _tanh_exact(x, two):
    """Hyperbolic tangent as ``-m / (m + 2)`` with ``m = expm1(-2|x|)``, sign
    restored: the identity libm's tanh uses, as accurate and faster to call."""
    m = math.expm1(-two * abs(x))
    r = -m / (m + two)
    return r if x >= 0 else -r


def _tanh(x, two):
    """tanh, chosen per dtype at compile time (see :func:`_tanh_rational`)."""
    return math.tanh(x)


def _sigmoid(x, one):
    """Logistic function, chosen per dtype at compile time."""
    return 0.5 * math.tanh(0.5 * x) + 0.5


@overload(_tanh, jit_options=dict(error_model="numpy"))
def _tanh_overload(x, two):
    if x == types.float32:
        return lambda x, two: _tanh_rational(x)
    return lambda x, two: _tanh_exact(x, two)


@overload(_sigmoid, jit_options=dict(error_model="numpy"))
def _sigmoid_overload(x, one):
    if x == types.float32:
        half = np.float32(0.5)
        return lambda x, one: half * _tanh_rational(half * x) + half
    return lambda x, one: _sigmoid_exact(x, one)


@_jit
def _has_out_grad(dout):
    """Whether ``dout`` holds a gradient w.r.t. the output: shape (0, 0, 0) is none."""
    return not (dout.shape[0] == 0 and dout.shape[1] == 0 and dout.shape[2] == 0)


@_jit
def _out_grad(dout, has, t, b, j):
    """``dout[t, b, j]``, or zero when there is no output gradient (``has`` false)."""
    return dout[t, b, j] if has else dout.dtype.type(0)


@_jit
def _check_lengths(lengths, B, T):
    """Raise ValueError unless ``lengths`` is (B,), non-increasing, in [1, T]."""
    if lengths.shape[0] != B:
        raise ValueError("lengths must have one entry per sample of the batch")
    for b in range(B):
        if lengths[b] < 1 or lengths[b] > T:
            raise ValueError("every length must lie in [1, T]")
        if b > 0 and lengths[b] > lengths[b - 1]:
            raise ValueError("lengths must be sorted in non-increasing order")


@_jit
def _n_active(lengths, t):
    """Number of samples with ``lengths[b] > t`` (a prefix: lengths sorted
    non-increasing), by bisection."""
    lo = 0
    hi = lengths.shape[0]
    while lo < hi:
        mid = (lo + hi) // 2
        if lengths[mid] > t:
            lo = mid + 1
        else:
            hi = mid
    return lo


@_jit
def _zero_rows(a, t, start):
    """Zero ``a[t, start:]``, the rows of the samples inactive at step ``t``.
    (Explicit loops: numba's slice assignment costs seconds of compile time.)"""
    zero = a.dtype.type(0)
    for b in range(start, a.shape[1]):
        for k in range(a.shape[2]):
            a[t, b, k] = zero


@_jit
def _zero_2d(a):
    """Zero every entry of the 2-D array ``a``."""
    zero = a.dtype.type(0)
    for i in range(a.shape[0]):
        for j in range(a.shape[1]):
            a[i, j] = zero


@_jit
def _step(s, T, reverse):
    """Time index of the ``s``-th step of a walk (backwards when ``reverse``)."""
    return T - 1 - s if reverse else s


@_jit
def _prev_row(t, b, lengths, reverse):
    """Time index of the state that fed sample ``b`` at step ``t``, or -1 when
    it is the initial state."""
    if reverse:
        return -1 if lengths[b] - 1 == t else t + 1
    return t - 1


# --------------------------------------------------------------------- RNN


@_jit
def _rnn_forward(gx, w_hh, lengths, reverse, relu, h, out):
    """Vanilla RNN forward, ``h_t = act(gx_t + W_hh h_{t-1})``; fills ``out``, ``h``."""
    T, B, H = gx.shape
    _check_lengths(lengths, B, T)
    zero = gx.dtype.type(0)
    two = gx.dtype.type(2)
    a = np.empty((B, H), gx.dtype)
    for s in range(T):
        t = _step(s, T, reverse)
        nb = _n_active(lengths, t)
        np.dot(h[:nb], w_hh.T, a[:nb])
        for b in range(nb):
            if relu:
                for j in range(H):
                    v = gx[t, b, j] + a[b, j]
                    if v < zero:  # NaN passes through, as np.maximum
                        v = zero
                    h[b, j] = v
                    out[t, b, j] = v
            else:
                for j in range(H):
                    v = _tanh(gx[t, b, j] + a[b, j], two)
                    h[b, j] = v
                    out[t, b, j] = v
        _zero_rows(out, t, nb)


@_jit
def _rnn_backward(w_hh, lengths, reverse, relu, out, dout, dh, dgx):
    """Vanilla RNN backward through time; fills ``dgx`` and turns ``dh`` into d h0."""
    T, B, H = out.shape
    _check_lengths(lengths, B, T)
    zero = out.dtype.type(0)
    one = out.dtype.type(1)
    has_dout = _has_out_grad(dout)
    for s in range(T):
        t = _step(s, T, not reverse)
        nb = _n_active(lengths, t)
        for b in range(nb):
            if relu:
                for j in range(H):
                    g = _out_grad(dout, has_dout, t, b, j) + dh[b, j]
                    dgx[t, b, j] = g if out[t, b, j] > zero else zero
            else:
                for j in range(H):
                    y = out[t, b, j]
                    g = _out_grad(dout, has_dout, t, b, j) + dh[b, j]
                    dgx[t, b, j] = g * (one - y * y)
        _zero_rows(dgx, t, nb)
        np.dot(dgx[t, :nb], w_hh, dh[:nb])


# -------------------------------------------------------------------- LSTM


@_jit
def _lstm_forward(gx, w_hh, w_hr, peep, lengths, reverse, training,
                  h, c, out, gates, cs, hc):
    """LSTM forward (optional peepholes and projection); fills ``out``, ``h``, ``c``
    and, when training, ``gates``, ``cs`` and ``hc``."""
    T, B, G = gx.shape
    H = c.shape[1]
    _check_lengths(lengths, B, T)
    has_peep = peep.shape[0] > 0
    has_proj = w_hr.shape[0] > 0
    one = gx.dtype.type(1)
    two = gx.dtype.type(2)
    a = np.empty((B, G), gx.dtype)
    # h_cell (before projection) goes to the cache hc[t] when training, else here
    hcell = np.empty((B if has_proj and not training else 0, H), gx.dtype)
    for s in range(T):
        t = _step(s, T, reverse)
        nb = _n_active(lengths, t)
        np.dot(h[:nb], w_hh.T, a[:nb])
        hcl_buf = hc[t] if has_proj and training else hcell
        for b in range(nb):
            # Two passes, each a simple loop the compiler can vectorise: the
            # gate activations in place, then the cell update.
            if has_peep:
                for j in range(H):
                    c_prev = c[b, j]
                    a[b, j] = _sigmoid(gx[t, b, j] + a[b, j] + peep[0, j] * c_prev, one)
                    a[b, H + j] = _sigmoid(gx[t, b, H + j] + a[b, H + j]
                                           + peep[1, j] * c_prev, one)
                for j in range(2 * H, 3 * H):
                    a[b, j] = _tanh(gx[t, b, j] + a[b, j], two)
                for j in range(3 * H, 4 * H):
                    a[b, j] = gx[t, b, j] + a[b, j]  # o: activated once c_t is known
            else:
                for j in range(2 * H):
                    a[b, j] = _sigmoid(gx[t, b, j] + a[b, j], one)
                for j in range(2 * H, 3 * H):
                    a[b, j] = _tanh(gx[t, b, j] + a[b, j], two)
                for j in range(3 * H, 4 * H):
                    a[b, j] = _sigmoid(gx[t, b, j] + a[b, j], one)
            for j in range(H):
                i = a[b, j]
                f = a[b, H + j]
                g = a[b, 2 * H + j]
                c_new = f * c[b, j] + i * g
                c[b, j] = c_new
                if has_peep:
                    o = _sigmoid(a[b, 3 * H + j] + peep[2, j] * c_new, one)
                    a[b, 3 * H + j] = o
                else:
                    o = a[b, 3 * H + j]
                h_cell = o * _tanh(c_new, two)
                if has_proj:
                    hcl_buf[b, j] = h_cell
                else:
                    h[b, j] = h_cell
                    out[t, b, j] = h_cell
            if training:
                for j in range(G):
                    gates[t, b, j] = a[b, j]
                for j in range(H):
                    cs[t, b, j] = c[b, j]
        if has_proj:
            np.dot(hcl_buf[:nb], w_hr.T, h[:nb])
            for b in range(nb):
                for k in range(h.shape[1]):
                    out[t, b, k] = h[b, k]
        _zero_rows(out, t, nb)
        if training:
            _zero_rows(gates, t, nb)
            _zero_rows(cs, t, nb)
            if has_proj:
                _zero_rows(hc, t, nb)


@_jit
def _lstm_backward(w_hh, w_hr, peep, lengths, reverse, c0, out, gates, cs, hc,
                   dout, dh, dc, dgx, dpeep, dhr):
    """LSTM backward through time; fills ``dgx``, ``dpeep``, ``dhr`` and turns
    ``dh``, ``dc`` into the gradients w.r.t. the initial state."""
    T, B, R = out.shape
    H = c0.shape[1]
    _check_lengths(lengths, B, T)
    has_peep = peep.shape[0] > 0
    has_proj = w_hr.shape[0] > 0
    has_dout = _has_out_grad(dout)
    one = out.dtype.type(1)
    two = out.dtype.type(2)
    g_hcell = np.empty((B if has_proj else 0, H), out.dtype)  # (dout + dh) @ W_hr
    step_dpeep = np.empty((3 if has_peep else 0, H), out.dtype)
    if has_peep:
        _zero_2d(dpeep)
    for s in range(T):
        t = _step(s, T, not reverse)
        nb = _n_active(lengths, t)
        if has_proj:
            for b in range(nb):
                for k in range(R):
                    dhr[t, b, k] = _out_grad(dout, has_dout, t, b, k) + dh[b, k]
            _zero_rows(dhr, t, nb)
            np.dot(dhr[t, :nb], w_hr, g_hcell[:nb])
        if has_peep:
            _zero_2d(step_dpeep)
        for b in range(nb):
            tp = _prev_row(t, b, lengths, reverse)
            for j in range(H):
                if has_proj:
                    g_h = g_hcell[b, j]
                else:
                    g_h = _out_grad(dout, has_dout, t, b, j) + dh[b, j]
                i = gates[t, b, j]
                f = gates[t, b, H + j]
                g = gates[t, b, 2 * H + j]
                o = gates[t, b, 3 * H + j]
                c_t = cs[t, b, j]
                c_prev = c0[b, j] if tp < 0 else cs[tp, b, j]
                tanh_c = _tanh(c_t, two)
                dao = g_h * tanh_c * o * (one - o)
                g_c = dc[b, j] + g_h * o * (one - tanh_c * tanh_c)
                if has_peep:
                    g_c = g_c + dao * peep[2, j]
                dai = g_c * g * i * (one - i)
                daf = g_c * c_prev * f * (one - f)
                dag = g_c * i * (one - g * g)
                dgx[t, b, j] = dai
                dgx[t, b, H + j] = daf
                dgx[t, b, 2 * H + j] = dag
                dgx[t, b, 3 * H + j] = dao
                dc_prev = g_c * f
                if has_peep:
                    dc_prev = dc_prev + dai * peep[0, j] + daf * peep[1, j]
                    step_dpeep[0, j] += dai * c_prev
                    step_dpeep[1, j] += daf * c_prev
                    step_dpeep[2, j] += dao * c_t
                dc[b, j] = dc_prev
        if has_peep:  # summed per step first, as the reference does
            for k in range(3):
                for j in range(H):
                    dpeep[k, j] += step_dpeep[k, j]
        _zero_rows(dgx, t, nb)
        np.dot(dgx[t, :nb], w_hh, dh[:nb])


# --------------------------------------------------------------------- GRU


@_jit
def _gru_forward(gx, w_hh, b_hn, lengths, reverse, training, h, out, gates, ghn):
    """GRU forward, ``h_t = (1 - z) * n + z * h_{t-1}``; fills ``out``, ``h`` and,
    when training, ``gates`` and ``ghn``."""
    T, B, G = gx.shape
    H = h.shape[1]
    _check_lengths(lengths, B, T)
    one = gx.dtype.type(1)
    two = gx.dtype.type(2)
    a = np.empty((B, G), gx.dtype)
    for s in range(T):
        t = _step(s, T, reverse)
        nb = _n_active(lengths, t)
        np.dot(h[:nb], w_hh.T, a[:nb])
        for b in range(nb):
            for j in range(H):
                r = _sigmoid(gx[t, b, j] + a[b, j], one)
                z = _sigmoid(gx[t, b, H + j] + a[b, H + j], one)
                hn = a[b, 2 * H + j] + b_hn[j]
                n = _tanh(gx[t, b, 2 * H + j] + r * hn, two)
                h_new = (one - z) * n + z * h[b, j]
                if training:
                    gates[t, b, j] = r
                    gates[t, b, H + j] = z
                    gates[t, b, 2 * H + j] = n
                    ghn[t, b, j] = hn
                h[b, j] = h_new
                out[t, b, j] = h_new
        _zero_rows(out, t, nb)
        if training:
            _zero_rows(gates, t, nb)
            _zero_rows(ghn, t, nb)


@_jit
def _gru_backward(w_hh, lengths, reverse, h0, out, gates, ghn, dout, dh, dgx, dgh):
    """GRU backward through time; fills ``dgx`` and ``dgh`` and turns ``dh`` into
    the gradient w.r.t. the initial state."""
    T, B, H = out.shape
    _check_lengths(lengths, B, T)
    one = out.dtype.type(1)
    has_dout = _has_out_grad(dout)
    gz = np.empty((B, H), out.dtype)  # the direct path g * z of dh
    for s in range(T):
        t = _step(s, T, not reverse)
        nb = _n_active(lengths, t)
        for b in range(nb):
            tp = _prev_row(t, b, lengths, reverse)
            for j in range(H):
                r = gates[t, b, j]
                z = gates[t, b, H + j]
                n = gates[t, b, 2 * H + j]
                h_prev = h0[b, j] if tp < 0 else out[tp, b, j]
                g = _out_grad(dout, has_dout, t, b, j) + dh[b, j]
                dan = g * (one - z) * (one - n * n)
                daz = g * (h_prev - n) * z * (one - z)
                dar = dan * ghn[t, b, j] * r * (one - r)
                dgx[t, b, j] = dar
                dgx[t, b, H + j] = daz
                dgx[t, b, 2 * H + j] = dan
                dgh[t, b, j] = dar
                dgh[t, b, H + j] = daz
                dgh[t, b, 2 * H + j] = dan * r
                gz[b, j] = g * z
        _zero_rows(dgx, t, nb)
        _zero_rows(dgh, t, nb)
        np.dot(dgh[t, :nb], w_hh, dh[:nb])
        for b in range(nb):
            for j in range(H):
                dh[b, j] += gz[b, j]


# ------------------------------------------------------- public contract


def _check_shape(name, a, shape, none_ok=False):
    """The jitted loops index without bounds checks: ``a`` must have ``shape``
    (or, with ``none_ok``, (0, 0, 0): not given)."""
    if a.shape != shape and not (none_ok and a.shape == (0, 0, 0)):
        raise ValueError(f"{name}: expected shape {shape}"
                         + (" or (0, 0, 0)" if none_ok else "") + f", got {a.shape}")


def _input_terms(x, w_ih, bias, out=None):
    """Every step's input terms ``x_t @ W_ih.T + bias`` as one product over all
    steps (through the kernels' BLAS, :mod:`fastrnn._blas`), into ``out``
    (T, B, G) when given, else a new array; the jitted loops then read them."""
    T, B, D = x.shape
    G = w_ih.shape[0]
    if D < 1:
        raise ValueError(f"x: expected at least one feature per step, got shape {x.shape}")
    if w_ih.shape != (G, D) or bias.shape != (G,):
        raise ValueError(f"w_ih and bias: expected shapes ({G}, {D}) and ({G},), "
                         f"got {w_ih.shape} and {bias.shape}")
    if out is None:
        out = np.empty((T, B, G), x.dtype)
    if out.shape != (T, B, G):
        raise ValueError(f"expected a ({T}, {B}, {G}) array for the input terms, "
                         f"got {out.shape}")
    if T * B:
        flat = out.reshape(T * B, G)
        flat[...] = bias
        matmul(x.reshape(T * B, D), w_ih, trans_b=True, out=flat, accumulate=True)
    return out


def rnn_forward(x, w_ih, bias, w_hh, lengths, reverse, relu, h, out):
    """Vanilla RNN forward, ``h_t = act(x_t @ W_ih.T + bias + W_hh h_{t-1})``;
    fills ``out``, ``h``."""
    _check_shape("out", out, x.shape[:2] + h.shape[1:])
    # a contiguous out holds the input terms until each step replaces its own
    gx = _input_terms(x, w_ih, bias, out if out.flags.c_contiguous else None)
    _rnn_forward(gx, w_hh, lengths, bool(reverse), bool(relu), h, out)


def rnn_backward(w_hh, lengths, reverse, relu, out, dout, dh, dgx):
    """Vanilla RNN backward through time; fills ``dgx`` and turns ``dh`` into d h0."""
    _check_shape("dout", dout, out.shape, none_ok=True)
    _rnn_backward(w_hh, lengths, bool(reverse), bool(relu), out, dout, dh, dgx)


def lstm_forward(x, w_ih, bias, w_hh, w_hr, peep, lengths, reverse, training,
                 h, c, out, gates, cs, hc):
    """LSTM forward (peepholes, projection optional); fills ``out``, ``h``, ``c``
    and, when training, ``gates``, ``cs`` and ``hc``."""
    _check_shape("out", out, x.shape[:2] + h.shape[1:])
    # in training the gates cache holds the input terms until each step
    # replaces its own with its gates
    gx = _input_terms(x, w_ih, bias, gates if training else None)
    _lstm_forward(gx, w_hh, w_hr, peep, lengths, bool(reverse), bool(training),
                  h, c, out, gates, cs, hc)


def lstm_backward(w_hh, w_hr, peep, lengths, reverse, c0, out, gates, cs, hc,
                  dout, dh, dc, dgx, dpeep, dhr):
    """LSTM backward through time; fills ``dgx``, ``dpeep``, ``dhr`` and turns
    ``dh``, ``dc`` into the gradients w.r.t. the initial state."""
    _check_shape("dout", dout, out.shape, none_ok=True)
    _lstm_backward(w_hh, w_hr, peep, lengths, bool(reverse), c0, out, gates, cs, hc,
                   dout, dh, dc, dgx, dpeep, dhr)


def gru_forward(x, w_ih, bias, w_hh, b_hn, lengths, reverse, training, h, out,
                gates, ghn):
    """GRU forward, ``h_t = (1 - z) * n + z * h_{t-1}``; fills ``out``, ``h`` and,
    when training, ``gates`` and ``ghn``."""
    _check_shape("out", out, x.shape[:2] + h.shape[1:])
    _gru_forward(_input_terms(x, w_ih, bias), w_hh, b_hn, lengths, bool(reverse), bool(training),
                 h, out, gates, ghn)


def gru_backward(w_hh, lengths, reverse, h0, out, gates, ghn, dout, dh, dgx, dgh):
    """GRU backward through time; fills ``dgx`` and ``dgh`` and turns ``dh`` into
    the gradient w.r.t. the initial state."""
    _check_shape("dout", dout, out.shape, none_ok=True)
    _gru_backward(w_hh, lengths, bool(reverse), h0, out, gates, ghn, dout, dh,
                  dgx, dgh)
