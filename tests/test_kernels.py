"""Every kernel backend against the NumPy reference, on the same inputs.

The reference itself is checked against finite differences and PyTorch in
``test_layers.py``; here each compiled backend must reproduce it exactly (up to
rounding) on every cell, direction, length pattern and dtype.
"""

import os
import zlib

import numpy as np
import pytest

from fastrnn._kernels import available_backends, get_kernels, reference

BACKENDS = [b for b in available_backends() if b != "reference"]
TOL = {np.float32: dict(rtol=2e-4, atol=2e-5), np.float64: dict(rtol=1e-10, atol=1e-12)}


def _case(cell, dtype, seed, B=5, T=7, H=6, P=0, D=3, peephole=False, ragged=False):
    rng = np.random.default_rng(seed)
    G = {"rnn": 1, "lstm": 4, "gru": 3}[cell]
    R = P or H

    def a(*shape, scale=0.5):
        return np.ascontiguousarray(rng.uniform(-scale, scale, shape).astype(dtype))

    lengths = (np.sort(rng.integers(1, T + 1, B))[::-1] if ragged
               else np.full(B, T)).astype(np.int64).copy()
    return dict(
        x=a(T, B, D, scale=1.0), w_ih=a(G * H, D, scale=1 / np.sqrt(D)), bias=a(G * H),
        w_hh=a(G * H, R), w_hr=a(P, H) if P else a(0, 0),
        peep=a(3, H) if peephole else a(0, H), b_hn=a(H), lengths=lengths,
        h0=a(B, R), c0=a(B, H), dout=a(T, B, R), dhn=a(B, R), dcn=a(B, H),
        T=T, B=B, H=H, R=R, G=G, P=P,
    )


def _run(k, cell, c, reverse, relu=False):
    """Forward in training mode then backward with backend module ``k``."""
    dt = c["x"].dtype
    T, B, H, R, G, P = (c[n] for n in "TBHRGP")
    z = lambda *s: np.zeros(s, dt)  # noqa: E731
    res = {}
    h, out = c["h0"].copy(), z(T, B, R)
    dh, dgx = c["dhn"].copy(), z(T, B, G * H)
    inp = c["x"], c["w_ih"], c["bias"]
    if cell == "rnn":
        k.rnn_forward(*inp, c["w_hh"], c["lengths"], reverse, relu, h, out)
        k.rnn_backward(c["w_hh"], c["lengths"], reverse, relu, out, c["dout"], dh, dgx)
    elif cell == "lstm":
        cc, gates, cs = c["c0"].copy(), z(T, B, 4 * H), z(T, B, H)
        hc, dhr = (z(T, B, H), z(T, B, P)) if P else (z(0, 0, 0), z(0, 0, 0))
        k.lstm_forward(*inp, c["w_hh"], c["w_hr"], c["peep"], c["lengths"], reverse,
                       True, h, cc, out, gates, cs, hc)
        dc, dpeep = c["dcn"].copy(), np.full(c["peep"].shape, 7, dt)
        k.lstm_backward(c["w_hh"], c["w_hr"], c["peep"], c["lengths"], reverse, c["c0"],
                        out, gates, cs, hc, c["dout"], dh, dc, dgx, dpeep, dhr)
        res.update(c=cc, gates=gates, cs=cs, hc=hc, dc=dc, dpeep=dpeep, dhr=dhr)
    else:
        gates, ghn, dgh = z(T, B, 3 * H), z(T, B, H), z(T, B, 3 * H)
        k.gru_forward(*inp, c["w_hh"], c["b_hn"], c["lengths"], reverse, True, h, out,
                      gates, ghn)
        k.gru_backward(c["w_hh"], c["lengths"], reverse, c["h0"], out, gates, ghn,
                       c["dout"], dh, dgx, dgh)
        res.update(gates=gates, ghn=ghn, dgh=dgh)
    res.update(h=h, out=out, dh=dh, dgx=dgx)
    return res


def _inference(k, cell, c, reverse, relu=False):
    """Forward with ``training=False`` and zero-size caches."""
    dt = c["x"].dtype
    h, out = c["h0"].copy(), np.zeros((c["T"], c["B"], c["R"]), dt)
    e = np.zeros((0, 0, 0), dt)
    inp = c["x"], c["w_ih"], c["bias"]
    if cell == "rnn":
        k.rnn_forward(*inp, c["w_hh"], c["lengths"], reverse, relu, h, out)
        return dict(h=h, out=out)
    if cell == "lstm":
        cc = c["c0"].copy()
        k.lstm_forward(*inp, c["w_hh"], c["w_hr"], c["peep"], c["lengths"], reverse,
                       False, h, cc, out, e, e, e)
        return dict(h=h, c=cc, out=out)
    k.gru_forward(*inp, c["w_hh"], c["b_hn"], c["lengths"], reverse, False, h, out, e, e)
    return dict(h=h, out=out)


def _assert_matches_reference(backend, cell, c, reverse, relu=False):
    """Training forward + backward, then inference, with ``backend`` against
    the reference on case ``c``, within the dtype's tolerance."""
    tol = TOL[c["x"].dtype.type]
    want = _run(reference, cell, c, reverse, relu)
    got = _run(get_kernels(backend), cell, c, reverse, relu)
    for name, value in want.items():
        np.testing.assert_allclose(got[name], value, err_msg=name, **tol)
    inf = _inference(get_kernels(backend), cell, c, reverse, relu)
    for name, value in inf.items():
        np.testing.assert_allclose(value, want[name], err_msg="inference " + name, **tol)


VARIANTS = [
    ("rnn", {}, False), ("rnn", {}, True),
    ("lstm", {}, False), ("lstm", dict(peephole=True), False),
    ("lstm", dict(P=4), False), ("lstm", dict(P=3, peephole=True), False),
    ("gru", {}, False),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("ragged", [False, True])
@pytest.mark.parametrize("cell,opts,relu", VARIANTS)
def test_backend_matches_reference(backend, dtype, reverse, ragged, cell, opts, relu):
    c = _case(cell, dtype, seed=zlib.crc32(repr((cell, opts, reverse, ragged, relu)).encode()),
              ragged=ragged, **opts)
    _assert_matches_reference(backend, cell, c, reverse, relu)


@pytest.mark.parametrize("backend", available_backends())
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("cell,opts,relu", VARIANTS)
def test_backward_without_output_gradient(backend, dtype, cell, opts, relu):
    """``dout`` of shape (0, 0, 0) (a loss on the final state only) gives what
    the reference gives for a ``dout`` of zeros, in both directions, ragged."""
    tol = TOL[dtype]
    for reverse in (False, True):
        c = _case(cell, dtype, seed=5, ragged=True, **opts)
        c["dout"] = np.zeros_like(c["dout"])
        want = _run(reference, cell, c, reverse, relu)
        c["dout"] = np.zeros((0, 0, 0), dtype)
        got = _run(get_kernels(backend), cell, c, reverse, relu)
        for name, value in want.items():
            np.testing.assert_allclose(got[name], value, err_msg=name, **tol)


@pytest.mark.parametrize("backend", available_backends())
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("cell,opts,relu", VARIANTS)
@pytest.mark.parametrize("T,B", [(7, 5), (20, 16), (20, 1)])
def test_forward_fills_a_batch_slice_of_a_larger_output(backend, dtype, cell, opts, relu,
                                                        T, B):
    """A forward whose ``out`` is a batch slice of a larger array (steps apart,
    each step's rows contiguous) fills it as the reference fills a contiguous
    one, in eval and training mode and both directions, and touches nothing
    else of the larger array (T=20, B=16: the fused projection); the same
    with ``x`` a batch slice of a larger array, which is read in place."""
    tol = TOL[dtype]
    c = _case(cell, dtype, seed=4, T=T, B=B, ragged=True, **opts)
    k = get_kernels(backend)
    x = c["x"]
    # the input as a batch slice of a larger array too, NaN around it
    x_big = np.full((T, 2 * B + 1, x.shape[2]), np.nan, dtype)
    x_big[:, 1:B + 1] = x
    for reverse in (False, True):
        c["x"] = x
        want = _inference(reference, cell, c, reverse, relu)
        for training, x_in in ((False, x), (True, x), (False, x_big[:, 1:B + 1])):
            big = np.full((T, 2 * B + 1, c["R"]), 7, dtype)
            out = big[:, 1:B + 1]
            c["x"] = x_in
            h = _forward(k, cell, c, reverse, relu, out, training)
            np.testing.assert_allclose(out, want["out"], **tol)
            np.testing.assert_allclose(h, want["h"], **tol)
            assert np.all(big[:, 0] == 7) and np.all(big[:, B + 1:] == 7)


def _forward(k, cell, c, reverse, relu, out, training):
    """One forward of case ``c`` into ``out``; returns the final ``h``."""
    dt = c["x"].dtype
    T, B, H, P = c["T"], c["B"], c["H"], c["P"]
    h, inp = c["h0"].copy(), (c["x"], c["w_ih"], c["bias"])
    e = np.zeros((0, 0, 0), dt)
    if cell == "rnn":
        k.rnn_forward(*inp, c["w_hh"], c["lengths"], reverse, relu, h, out)
    elif cell == "lstm":
        caches = ((np.zeros((T, B, 4 * H), dt), np.zeros((T, B, H), dt),
                   np.zeros((T, B, H), dt) if P else e) if training else (e, e, e))
        k.lstm_forward(*inp, c["w_hh"], c["w_hr"], c["peep"], c["lengths"], reverse,
                       training, h, c["c0"].copy(), out, *caches)
    else:
        caches = ((np.zeros((T, B, 3 * H), dt), np.zeros((T, B, H), dt)) if training
                  else (e, e))
        k.gru_forward(*inp, c["w_hh"], c["b_hn"], c["lengths"], reverse, training, h,
                      out, *caches)
    return h


def test_forward_refuses_an_output_with_scattered_rows():
    """The Cython forwards need each step's rows of ``out`` and of ``x`` in one
    C-contiguous block."""
    pytest.importorskip("fastrnn._kernels._cython_kernels")
    k = get_kernels("cython")
    c = _case("rnn", np.float64, seed=6)
    T, B, R = c["T"], c["B"], c["R"]
    big = np.zeros((T, 2 * B, 2 * R))
    for out in (big[:, ::2, :R], big[:, :B, ::2], big[::-1, :B, :R],
                np.zeros((B, T, R)).transpose(1, 0, 2)):
        with pytest.raises(ValueError, match="out"):
            _forward(k, "rnn", c, False, False, out, False)
    out, D = np.zeros((T, B, R)), c["x"].shape[2]
    x_big = np.zeros((T, 2 * B, 2 * D))
    for x in (x_big[:, ::2, :D], x_big[:, :B, ::2], x_big[::-1, :B, :D],
              np.zeros((B, T, D)).transpose(1, 0, 2)):
        c["x"] = x
        with pytest.raises(ValueError, match="x: each step"):
            _forward(k, "rnn", c, False, False, out, False)


@pytest.mark.parametrize("backend", BACKENDS)
def test_compiled_kernels_check_out_and_dout(backend):
    """The compiled backends index without bounds checks, so they refuse a
    ``dout`` that is neither (T, B, R) nor (0, 0, 0), and a forward's ``out``
    of another shape, also when it is a slice of a larger array."""
    k = get_kernels(backend)
    for cell in ("rnn", "lstm", "gru"):
        c = _case(cell, np.float64, seed=2)
        T, B, R = c["T"], c["B"], c["R"]
        for shape in [(0, B, R), (T, B, R + 1), (1, 1, 1)]:
            c["dout"] = np.zeros(shape)
            with pytest.raises(ValueError, match="dout"):
                _run(k, cell, c, False)
        big = np.zeros((T + 2, 2 * B + 1, R))
        for out in (big[:T - 2, 1:B + 1], big[:T, 1:B], np.zeros((T, B, R + 1))):
            with pytest.raises(ValueError, match="out"):
                _forward(k, cell, c, False, False, out, False)
            assert not big.any()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_batch_of_one_and_single_step(backend, cell):
    """B=1 (the GEMV path where a backend has one) and T=1 edge shapes."""
    for B, T in [(1, 9), (3, 1), (1, 1)]:
        c = _case(cell, np.float64, seed=B * 10 + T, B=B, T=T)
        want = _run(reference, cell, c, reverse=False)
        got = _run(get_kernels(backend), cell, c, reverse=False)
        for name, value in want.items():
            np.testing.assert_allclose(got[name], value, err_msg=name,
                                       **TOL[np.float64])


def _panel_settings(backend):
    """The Cython backend's float32 step products run on packed panels where
    the CPU allows (AVX-512) and through BLAS otherwise: test both there."""
    if backend != "cython":
        return [None]
    from fastrnn._kernels import _cython_kernels
    return [True, False] if _cython_kernels.PANELS_AVAILABLE else [False]


@pytest.fixture
def panels(request):
    """Set the Cython backend's panel products for one test, then restore them."""
    if request.param is None:
        yield None
        return
    from fastrnn._kernels import _cython_kernels
    was = _cython_kernels.set_panel_products(request.param)
    try:
        yield request.param
    finally:
        _cython_kernels.set_panel_products(was)


@pytest.mark.parametrize("backend,panels", [(b, p) for b in BACKENDS
                                            for p in _panel_settings(b)],
                         indirect=["panels"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
@pytest.mark.parametrize("H,lengths", [
    (6, [12] * 5),                    # every step through the copy
    (6, [10, 8, 5, 3]),               # no sample spans all 12 steps
    (100, [12]),                      # one sample: every cell's GEMV through the copy
    (160, [12]),                      # the RNN's GEMV through it, the GRU's and LSTM's not
    (128, [12] + list(range(10, 0, -1)) * 2),  # 21 -> 1 active: plain GEMM, copy,
                                                  # and (LSTM) plain GEMV at the end
    (260, [12, 5]),   # LSTM: the input projection fused (panels also for one row)
    (260, [12]),      # LSTM: one sample, > 2^18 weights: not fused, BLAS's GEMV
])
def test_step_product_paths(backend, panels, dtype, cell, H, lengths):
    """Calls of T = 12 >= 8 steps, in which the Cython backend prepares W_hh
    once per call: in float32 packed panels when on (forward and backward;
    every row count from the active batch down to one sample; the forward's
    panels hold W_ih too, its input projection fused into the steps), else in
    the forward a transposed copy for small step products (below 2^20
    multiply-adds, or 2^16 weights for one sample), with lengths that move a
    call between the copy and the plain product as the active batch shrinks."""
    T, B = 12, len(lengths)
    lengths = np.array(sorted(lengths, reverse=True), dtype=np.int64)
    for reverse in (False, True):
        c = _case(cell, dtype, seed=B * 1000 + H, B=B, T=T, H=H)
        c["lengths"] = lengths
        # PyTorch's initial scale: at +-0.5 a 160-unit RNN is chaotic, and
        # float32 rounding alone then grows past the tolerance in 12 steps
        c["w_hh"] *= dtype(1 / np.sqrt(H))
        _assert_matches_reference(backend, cell, c, reverse)


@pytest.mark.parametrize("backend,panels", [(b, p) for b in BACKENDS
                                            for p in _panel_settings(b)],
                         indirect=["panels"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("cell,H,D,opts", [
    ("lstm", 6, 3, {}), ("lstm", 128, 32, {}), ("lstm", 128, 200, {}),
    ("lstm", 300, 1, {}), ("lstm", 6, 40, {"peephole": True}),
    ("lstm", 128, 32, {"peephole": True, "P": 5}), ("lstm", 6, 3, {"P": 4}),
    ("rnn", 6, 3, {}), ("rnn", 128, 32, {}), ("rnn", 300, 7, {}),
    ("gru", 6, 3, {}), ("gru", 128, 32, {})])
def test_input_projection_paths(backend, panels, dtype, cell, H, D, opts):
    """The forwards' input terms ``x_t @ W_ih.T + bias``, in calls of T = 10
    steps: with the Cython backend's panels on (float32) fused into each
    step's product over ``[h | x_t]`` (R + D over 256: the panels' chunks of
    k), else from one product over all steps kept in ``out`` or ``gates``
    until each step replaces them; ragged lengths, both directions, a batch
    and one sample."""
    T = 10
    for B, reverse in [(4, False), (4, True), (1, False)]:
        c = _case(cell, dtype, seed=H + D + len(opts) + reverse + B, B=B, T=T, H=H,
                  D=D, ragged=B > 1, **opts)
        c["w_hh"] *= dtype(1 / np.sqrt(H))
        _assert_matches_reference(backend, cell, c, reverse)


def test_forward_checks_its_input_side():
    """``x`` needs a feature; ``w_ih`` and ``bias`` must match it and the gates."""
    for backend in available_backends():
        k = get_kernels(backend)
        c = _case("lstm", np.float64, seed=1)
        T, B, H = c["T"], c["B"], c["H"]
        bad = [(c["x"], c["w_ih"][:, :2], c["bias"]), (c["x"], c["w_ih"], c["bias"][:5]),
               (c["x"], c["w_ih"][:8], c["bias"][:8]),
               (np.zeros((T, B, 0)), np.zeros((4 * H, 0)), c["bias"])]
        for x, w_ih, bias in ([np.ascontiguousarray(a) for a in arrays] for arrays in bad):
            with pytest.raises(ValueError):
                k.lstm_forward(x, w_ih, bias, c["w_hh"], c["w_hr"], c["peep"], c["lengths"],
                               False, False, c["h0"].copy(), c["c0"].copy(),
                               np.zeros((T, B, H)), *[np.zeros((0, 0, 0))] * 3)


def _panels_or_skip():
    from fastrnn._kernels import _cython_kernels  # noqa: F401 (skips without it)

    if not _cython_kernels.PANELS_AVAILABLE:
        pytest.skip("panel products need an x86-64 CPU with AVX-512 (and gcc or clang); "
                    "the kernels use BLAS here instead")
    return _cython_kernels


@pytest.mark.parametrize("transposed", [True, False])
@pytest.mark.parametrize("m,k,n", [
    (1, 1, 1), (1, 5, 17), (1, 128, 512), (1, 259, 33),   # one row (the GEMV path)
    (2, 3, 31), (7, 32, 16), (8, 64, 32), (9, 17, 48),    # 8-row blocks and rest
    (15, 256, 100), (33, 257, 64), (40, 600, 96),         # chunks of k and of rows
])
def test_panel_matmul(transposed, m, k, n):
    """The packed-panel product against a float64 product of the same float32
    numbers, within the rigorous bound of a k-term float32 dot product:
    ``|error| <= (k + 2) u (|a| @ |b|)`` with ``u = 2^-24`` (k in chunks adds
    one rounding, accumulating into ``out`` one more)."""
    kern = _panels_or_skip()
    rng = np.random.default_rng(m * 1000 + k * 10 + n)
    a = rng.standard_normal((m, k)).astype(np.float32)
    w = rng.standard_normal((n, k) if transposed else (k, n)).astype(np.float32)
    b = w.T.astype(np.float64) if transposed else w.astype(np.float64)
    want = a.astype(np.float64) @ b
    bound = (k + 2) * 2.0 ** -24 * (np.abs(a).astype(np.float64) @ np.abs(b))
    got = kern.panel_matmul(a, w, transposed)
    assert got.shape == (m, n) and got.dtype == np.float32
    assert np.all(np.abs(got - want) <= bound)
    # accumulating into out, which ends where the last panel's padding would
    flat = rng.standard_normal(m * n + 32).astype(np.float32)
    base = flat[:m * n].reshape(m, n).copy()
    tail = flat[m * n:].copy()
    out = flat[:m * n].reshape(m, n)
    kern.panel_matmul(a, w, transposed, out=out)
    assert np.all(np.abs(out - (want + base))
                  <= bound + 2.0 ** -24 * (np.abs(want + base) + np.abs(base)))
    np.testing.assert_array_equal(flat[m * n:], tail)


def test_panels_can_be_turned_off_from_the_environment():
    """FASTRNN_PANELS=0 (read at import) keeps every product on BLAS."""
    import subprocess
    import sys

    _panels_or_skip()
    code = ("from fastrnn._kernels import _cython_kernels as k; "
            "print(k.set_panel_products(True), k.set_panel_products(True))")
    for value, want in [("0", "False True"), ("1", "True True"), ("", "True True")]:
        env = dict(os.environ, FASTRNN_PANELS=value)
        got = subprocess.run([sys.executable, "-c", code], env=env, check=True,
                             capture_output=True, text=True).stdout.strip()
        assert got == want, (value, got)


@pytest.mark.parametrize("m,k,n", [(1, 128, 512), (5, 7, 20), (32, 128, 512),
                                   (9, 300, 40)])
def test_panel_matmul_epilogue(m, k, n):
    """``(a @ w.T + add) * scale``, as the LSTM and RNN forwards ask for their
    tanh arguments: equal to the product stored, then added to and scaled
    (the same float32 operations in the same order)."""
    kern = _panels_or_skip()
    rng = np.random.default_rng(7 * m + k + n)
    a = rng.standard_normal((m, k)).astype(np.float32)
    w = rng.standard_normal((n, k)).astype(np.float32)
    add = rng.standard_normal((m, n)).astype(np.float32)
    scale = rng.choice(np.array([0.5, 1.0, -3.0], np.float32), n)
    prod = kern.panel_matmul(a, w, True)
    got = kern.panel_matmul(a, w, True, add=add, scale=scale)
    np.testing.assert_array_equal(got, (prod + add) * scale)
    np.testing.assert_array_equal(kern.panel_matmul(a, w, True, add=add), prod + add)
    np.testing.assert_array_equal(kern.panel_matmul(a, w, True, scale=scale),
                                  prod * scale)


@pytest.mark.parametrize("m,k,n", [(1, 128, 512), (9, 30, 40), (32, 128, 512)])
def test_panel_matmul_activation(m, k, n):
    """The product's own float32 tanh (the LSTM forward's gate activations,
    ``tanh(v) * act[0] + act[1]``: sigmoid with 1/2 and 1/2 after a scale of
    1/2): within 5e-7 of ``np.tanh`` of the same stored product; exactly
    +-1 (so a saturated gate's derivative is exactly 0) from |v| = 7.9053 on;
    NaN kept."""
    kern = _panels_or_skip()
    rng = np.random.default_rng(m + k + n)
    a = rng.standard_normal((m, k)).astype(np.float32)
    w = (rng.standard_normal((n, k)) * 3 / np.sqrt(k)).astype(np.float32)
    a[0, :2] = [1e3, -1e3]  # some saturated columns, both signs
    scale = rng.choice(np.array([0.5, 1.0], np.float32), n)
    act = np.stack([scale, np.where(scale == 0.5, 0.5, 0.0)]).astype(np.float32)
    v = kern.panel_matmul(a, w, True, scale=scale)
    got = kern.panel_matmul(a, w, True, scale=scale, act=act)
    want = np.tanh(v.astype(np.float64)) * act[0] + act[1]
    assert np.abs(got - want).max() <= 5e-7
    big = np.abs(v) >= 7.90531110763549805
    assert big.any() and (~big).any()
    np.testing.assert_array_equal(got[big], (np.sign(v) * act[0] + act[1])[big])
    a[-1, 0] = np.nan
    assert np.isnan(kern.panel_matmul(a, w, True, scale=scale, act=act)[-1]).all()


@pytest.mark.parametrize("m", [1, 2, 9, 33])
@pytest.mark.parametrize("k1,k2", [(5, 7), (128, 32), (250, 40), (256, 9), (300, 44),
                                   (600, 300)])
def test_panel_matmul_of_two_operands(m, k1, k2):
    """``[a | a2] @ w.T`` with the left operand read from two arrays (the
    forwards' ``[h | x_t]``, chunks of 256 columns falling before, across or
    after the seam): the same sums in the same order as from one array, so
    bit-identical; one row (blocked rather than the GEMV's split sums)
    within float32 rounding."""
    kern = _panels_or_skip()
    rng = np.random.default_rng(m + k1 + k2)
    big = rng.standard_normal((m, k1 + 50)).astype(np.float32)
    a, a2 = big[:, :k1].copy(), rng.standard_normal((m, k2)).astype(np.float32)
    w = rng.standard_normal((70, k1 + k2)).astype(np.float32)
    got = kern.panel_matmul(a, w, True, a2=a2)
    want = kern.panel_matmul(np.hstack([a, a2]), w, True)
    if m > 1:
        np.testing.assert_array_equal(got, want)
    ref = np.hstack([a, a2]).astype(np.float64) @ w.T.astype(np.float64)
    bound = 2 * (k1 + k2 + 2) * 2.0 ** -24 * (np.abs(np.hstack([a, a2])) @ np.abs(w.T))
    assert np.all(np.abs(got - ref) <= bound)


def test_panel_matmul_rejects_bad_shapes():
    kern = _panels_or_skip()
    a = np.ones((3, 4), np.float32)
    with pytest.raises(ValueError, match="panel_matmul"):
        kern.panel_matmul(a, np.ones((5, 3), np.float32), True)
    with pytest.raises(ValueError, match="add"):
        kern.panel_matmul(a, np.ones((5, 4), np.float32), True,
                          add=np.ones((3, 4), np.float32))
    with pytest.raises(ValueError, match="scale"):
        kern.panel_matmul(a, np.ones((5, 4), np.float32), True,
                          scale=np.ones(4, np.float32))
    with pytest.raises(ValueError, match="out"):
        kern.panel_matmul(a, np.ones((5, 4), np.float32), True,
                          out=np.ones((3, 4), np.float32))


def test_reference_is_always_available():
    assert "reference" in available_backends()


# ------------------------------------------------ rows on the helper thread

cython_kernels = pytest.importorskip("fastrnn._kernels._cython_kernels") \
    if "cython" in available_backends() else None


# split against one thread: float32 rounding of the one-row product
SPLIT_TOL = dict(rtol=1e-5, atol=1e-6)


@pytest.fixture
def split_small_calls():
    """The Cython kernels called from this thread hand rows to their helper
    thread even for the tests' small calls (at least 2 rows a side)."""
    if cython_kernels is None or not cython_kernels.HAS_ROW_SPLIT:
        pytest.skip("the Cython extension with its helper thread is not built here")
    bounds = cython_kernels._set_split_bounds(2, 0)
    was = cython_kernels.set_row_split(True)
    try:
        yield cython_kernels
    finally:
        cython_kernels.set_row_split(was)
        cython_kernels._set_split_bounds(*bounds)


def _run_all(k, cell, c, reverse, relu):
    """Training forward and backward, then an inference forward and one into
    a batch slice of a larger output (steps apart), of case ``c``."""
    res = _run(k, cell, c, reverse, relu)
    res.update({"eval " + n: v for n, v in _inference(k, cell, c, reverse, relu).items()})
    T, B, R = c["T"], c["B"], c["R"]
    big = np.full((T, 2 * B, R), 7, c["x"].dtype)
    res["eval h slice"] = _forward(k, cell, c, reverse, relu, big[:, :B], False)
    res["eval out slice"] = big
    return res


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("lengths", ["full", "ragged", "one long"])
@pytest.mark.parametrize("cell,opts,relu", VARIANTS)
def test_rows_on_the_helper_thread(split_small_calls, cell, opts, relu, reverse, lengths):
    """With the split on, every float32 kernel gives what it gives on one
    thread, up to the last bits: each sample's arithmetic is the same but
    where a side has a single active row, whose product takes the one-row
    path. Lengths all equal, ragged, and one long sample among short ones
    (the split then leaves the minimum of rows on one side); the backward
    with and without an output gradient. Peepholes and projections run on
    one thread (their sums and BLAS products), and must not break."""
    k = split_small_calls
    c = _case(cell, np.float32, seed=11, B=9, T=8, ragged=lengths == "ragged", **opts)
    if lengths == "one long":
        c["lengths"] = np.array([8] + [1] * 8, np.int64)
    k.set_row_split(False)
    want = _run_all(k, cell, c, reverse, relu)
    k.set_row_split(True)
    got = _run_all(k, cell, c, reverse, relu)
    for name, value in want.items():
        np.testing.assert_allclose(got[name], value, err_msg=name, **SPLIT_TOL)
    c["dout"] = np.zeros((0, 0, 0), np.float32)
    want = _run(k, cell, c, reverse, relu)
    k.set_row_split(False)
    got = _run(k, cell, c, reverse, relu)
    for name, value in want.items():
        np.testing.assert_allclose(got[name], value, err_msg="no dout " + name, **SPLIT_TOL)


def test_rows_on_the_helper_thread_match_the_reference(split_small_calls):
    """The split calls against the NumPy reference too (not only against
    themselves), every cell, both directions, ragged, at a size where the
    forwards fuse their input projection."""
    for cell, opts, relu in VARIANTS:
        for reverse in (False, True):
            c = _case(cell, np.float32, seed=12, B=16, T=20, ragged=True, **opts)
            want = _run(reference, cell, c, reverse, relu)
            got = _run(split_small_calls, cell, c, reverse, relu)
            for name, value in want.items():
                np.testing.assert_allclose(got[name], value, err_msg=f"{cell} {name}",
                                           **TOL[np.float32])


def test_rows_on_the_helper_thread_from_several_threads(split_small_calls):
    """Threads calling kernels at once share the one helper: a call that finds
    it taken runs on its own thread, and every result is still right."""
    import threading

    k = split_small_calls
    cases = [_case(cell, np.float32, seed=20 + i, B=12, T=16, ragged=i % 2 == 1, **opts)
             for i, (cell, opts, relu) in enumerate(VARIANTS)]
    k.set_row_split(False)
    want = [_run(k, cell, c, False, relu) for (cell, _, relu), c in zip(VARIANTS, cases)]
    errors = []

    def work(i):
        cell, _, relu = VARIANTS[i]
        was = k.set_row_split(True)  # per thread
        try:
            for _ in range(20):
                got = _run(k, cell, cases[i], False, relu)
                for name, value in want[i].items():
                    if not np.allclose(got[name], value, **SPLIT_TOL):
                        errors.append((cell, name))
        finally:
            k.set_row_split(was)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(cases))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_rows_on_the_helper_thread_after_fork(split_small_calls):
    """A forked child has no helper thread: it starts its own and splits its
    calls as the parent does, with the same results."""
    k = split_small_calls
    c = _case("lstm", np.float32, seed=30, B=12, T=16, ragged=True)
    want = _run(k, "lstm", c, False)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report through the pipe, never return into pytest
        ok = False
        try:
            got = _run(k, "lstm", c, False)
            ok = all(np.allclose(got[n], v, **SPLIT_TOL) for n, v in want.items())
        finally:
            os.write(w, b"1" if ok else b"0")
            os._exit(0)
    os.close(w)
    try:
        assert os.read(r, 1) == b"1"
    finally:
        os.close(r)
        os.waitpid(pid, 0)
