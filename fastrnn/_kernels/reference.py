"""Reference backend: the kernel contract written in plain NumPy, to be read.

This is the specification of every cell and the oracle the compiled backends
are tested against. Each step works on the whole batch with a mask of the
samples that are still active, so it does not rely on ``lengths`` being sorted.
See :mod:`fastrnn._kernels` for the contract.
"""

import numpy as np


def sigmoid(x):
    """Logistic function, finite and warning-free for any finite input."""
    return 0.5 * np.tanh(0.5 * x) + 0.5


def input_terms(x, w_ih, bias):
    """Every step's input terms ``x_t @ W_ih.T + bias``, (T, B, G*H). Terms
    beyond the dtype's range become inf or NaN without a warning, as from the
    compiled backends' BLAS: the callers judge the results."""
    if x.shape[2] < 1:
        raise ValueError(f"x: expected at least one feature per step, got shape {x.shape}")
    with np.errstate(over="ignore", invalid="ignore"):
        return x @ w_ih.T + bias


def _out_grad(dout, t):
    """``dout[t]``, or 0 where ``dout`` has shape (0, 0, 0): no gradient
    w.r.t. the output."""
    return 0 if dout.shape == (0, 0, 0) else dout[t]


def _steps(T, reverse):
    return range(T - 1, -1, -1) if reverse else range(T)


def _prev_step(t, reverse):
    """Index of the step whose state feeds step ``t``."""
    return t + 1 if reverse else t - 1


def _prev_state(states, initial, t, lengths, reverse):
    """State before step ``t`` for every sample: ``states`` one step back, or
    ``initial`` for a sample whose walk starts at ``t``."""
    s = _prev_step(t, reverse)
    if reverse:
        first = lengths - 1 == t
    else:
        first = np.full(lengths.shape, t == 0)
    if 0 <= s < states.shape[0]:
        return np.where(first[:, None], initial, states[s])
    return initial


# --------------------------------------------------------------------- RNN


def rnn_forward(x, w_ih, bias, w_hh, lengths, reverse, relu, h, out):
    """Vanilla RNN forward: ``h_t = act(gx_t + h_{t-1} @ W_hh.T)`` with ``gx``
    the input terms; fills ``out``, ``h``."""
    gx = input_terms(x, w_ih, bias)
    for t in _steps(gx.shape[0], reverse):
        active = (lengths > t)[:, None]
        a = gx[t] + h @ w_hh.T
        h_new = np.maximum(a, 0) if relu else np.tanh(a)
        h[...] = np.where(active, h_new, h)
        out[t] = np.where(active, h_new, 0)


def rnn_backward(w_hh, lengths, reverse, relu, out, dout, dh, dgx):
    """Vanilla RNN backward through time; fills ``dgx`` and turns ``dh`` into d h0."""
    for t in _steps(out.shape[0], not reverse):
        active = (lengths > t)[:, None]
        g = _out_grad(dout, t) + dh
        da = g * (out[t] > 0) if relu else g * (1 - out[t] ** 2)
        da = np.where(active, da, 0)
        dgx[t] = da
        dh[...] = np.where(active, da @ w_hh, dh)


# -------------------------------------------------------------------- LSTM


def lstm_forward(x, w_ih, bias, w_hh, w_hr, peep, lengths, reverse, training,
                 h, c, out, gates, cs, hc):
    """LSTM forward (optional peepholes and projection); fills ``out``, ``h``, ``c``
    and, when training, the caches ``gates``, ``cs`` and ``hc``."""
    gx = input_terms(x, w_ih, bias)
    H = c.shape[1]
    has_peep = peep.shape[0] > 0
    has_proj = w_hr.shape[0] > 0
    for t in _steps(gx.shape[0], reverse):
        active = (lengths > t)[:, None]
        a = gx[t] + h @ w_hh.T
        ai, af, ag, ao = a[:, :H], a[:, H:2 * H], a[:, 2 * H:3 * H], a[:, 3 * H:]
        if has_peep:
            ai = ai + peep[0] * c
            af = af + peep[1] * c
        i, f, g = sigmoid(ai), sigmoid(af), np.tanh(ag)
        c_new = f * c + i * g
        if has_peep:
            ao = ao + peep[2] * c_new
        o = sigmoid(ao)
        h_cell = o * np.tanh(c_new)
        h_new = h_cell @ w_hr.T if has_proj else h_cell
        if training:
            gates[t] = np.where(active, np.concatenate([i, f, g, o], axis=1), 0)
            cs[t] = np.where(active, c_new, 0)
            if has_proj:
                hc[t] = np.where(active, h_cell, 0)
        h[...] = np.where(active, h_new, h)
        c[...] = np.where(active, c_new, c)
        out[t] = np.where(active, h_new, 0)


def lstm_backward(w_hh, w_hr, peep, lengths, reverse, c0, out, gates, cs, hc,
                  dout, dh, dc, dgx, dpeep, dhr):
    """LSTM backward through time; fills ``dgx``, ``dpeep``, ``dhr`` and turns
    ``dh``, ``dc`` into the gradients w.r.t. the initial state."""
    H = c0.shape[1]
    has_peep = peep.shape[0] > 0
    has_proj = w_hr.shape[0] > 0
    if has_peep:
        dpeep[...] = 0
    for t in _steps(out.shape[0], not reverse):
        active = (lengths > t)[:, None]
        i, f, g, o = (gates[t, :, k * H:(k + 1) * H] for k in range(4))
        c_t = cs[t]
        c_prev = _prev_state(cs, c0, t, lengths, reverse)
        g_h = _out_grad(dout, t) + dh
        if has_proj:
            dhr[t] = np.where(active, g_h, 0)
            g_h = g_h @ w_hr
        tanh_c = np.tanh(c_t)
        dao = g_h * tanh_c * o * (1 - o)
        g_c = dc + g_h * o * (1 - tanh_c ** 2)
        if has_peep:
            g_c = g_c + dao * peep[2]
        dai = g_c * g * i * (1 - i)
        daf = g_c * c_prev * f * (1 - f)
        dag = g_c * i * (1 - g ** 2)
        da = np.where(active, np.concatenate([dai, daf, dag, dao], axis=1), 0)
        dgx[t] = da
        dc_prev = g_c * f
        if has_peep:
            dc_prev = dc_prev + dai * peep[0] + daf * peep[1]
            dpeep[0] += np.where(active, dai * c_prev, 0).sum(axis=0)
            dpeep[1] += np.where(active, daf * c_prev, 0).sum(axis=0)
            dpeep[2] += np.where(active, dao * c_t, 0).sum(axis=0)
        dh[...] = np.where(active, da @ w_hh, dh)
        dc[...] = np.where(active, dc_prev, dc)


# --------------------------------------------------------------------- GRU


def gru_forward(x, w_ih, bias, w_hh, b_hn, lengths, reverse, training, h, out,
                gates, ghn):
    """GRU forward, PyTorch convention ``h_t = (1 - z) * n + z * h_{t-1}`` with
    ``n = tanh(gx_n + r * (W_hn h_{t-1} + b_hn))``, ``gx`` the input terms;
    fills ``out``, ``h`` and, when training, ``gates`` and ``ghn``."""
    gx = input_terms(x, w_ih, bias)
    H = h.shape[1]
    for t in _steps(gx.shape[0], reverse):
        active = (lengths > t)[:, None]
        gh = h @ w_hh.T
        r = sigmoid(gx[t, :, :H] + gh[:, :H])
        z = sigmoid(gx[t, :, H:2 * H] + gh[:, H:2 * H])
        hn = gh[:, 2 * H:] + b_hn
        n = np.tanh(gx[t, :, 2 * H:] + r * hn)
        h_new = (1 - z) * n + z * h
        if training:
            gates[t] = np.where(active, np.concatenate([r, z, n], axis=1), 0)
            ghn[t] = np.where(active, hn, 0)
        h[...] = np.where(active, h_new, h)
        out[t] = np.where(active, h_new, 0)


def gru_backward(w_hh, lengths, reverse, h0, out, gates, ghn, dout, dh, dgx, dgh):
    """GRU backward through time; fills ``dgx`` and ``dgh`` and turns ``dh`` into
    the gradient w.r.t. the initial state."""
    H = h0.shape[1]
    for t in _steps(out.shape[0], not reverse):
        active = (lengths > t)[:, None]
        r, z, n = (gates[t, :, k * H:(k + 1) * H] for k in range(3))
        h_prev = _prev_state(out, h0, t, lengths, reverse)
        g = _out_grad(dout, t) + dh
        dan = g * (1 - z) * (1 - n ** 2)
        daz = g * (h_prev - n) * z * (1 - z)
        dar = dan * ghn[t] * r * (1 - r)
        dx = np.where(active, np.concatenate([dar, daz, dan], axis=1), 0)
        dr = np.where(active, np.concatenate([dar, daz, dan * r], axis=1), 0)
        dgx[t] = dx
        dgh[t] = dr
        dh[...] = np.where(active, g * z + dr @ w_hh, dh)
