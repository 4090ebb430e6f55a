"""The recurrent layers: gradients against finite differences, every backend
against the reference, and behaviour of the public API."""

import itertools
import pickle

import numpy as np
import pytest

from fastrnn._kernels import available_backends
from fastrnn.nn import GRU, LSTM, RNN

from conftest import CELLS, make_layer, random_lengths

BACKENDS = available_backends()


def _loss_weights(rng, out, h_n):
    """Random linear loss ``sum(w * out) + sum(v * h_n) [+ sum(u * c_n)]``."""
    w_out = rng.standard_normal(out.shape)
    if isinstance(h_n, tuple):
        return w_out, tuple(rng.standard_normal(s.shape) for s in h_n)
    return w_out, rng.standard_normal(h_n.shape)


def _loss(out, h_n, weights):
    w_out, w_h = weights
    total = np.sum(w_out * out)
    if isinstance(h_n, tuple):
        return total + sum(np.sum(a * b) for a, b in zip(h_n, w_h))
    return total + np.sum(w_h * h_n)


def _rel_err(a, b):
    return np.linalg.norm(a - b) / max(np.linalg.norm(a), np.linalg.norm(b), 1e-300)


def _fd_check(layer, x, hx, lengths, rng, eps=1e-6):
    """Analytic gradients of every input, state and parameter against central
    differences of the float64 loss."""
    out, h_n = layer(x, hx, lengths=lengths)
    weights = _loss_weights(rng, out, h_n)
    gx, ghx = layer.backward(weights[0], weights[1])

    def f():
        return _loss(*layer(x, hx, lengths=lengths), weights)

    def numeric(arr, count=12):
        # Central differences on a random subset of entries (all when small).
        flat = arr.reshape(-1)
        idx = rng.choice(flat.size, min(count, flat.size), replace=False)
        g = np.empty(idx.size)
        for j, i in enumerate(idx):
            old = flat[i]
            flat[i] = old + eps
            fp = f()
            flat[i] = old - eps
            fm = f()
            flat[i] = old
            g[j] = (fp - fm) / (2 * eps)
        return idx, g

    checks = [("x", x, gx)]
    states = hx if isinstance(hx, tuple) else (hx,)
    grads = ghx if isinstance(ghx, tuple) else (ghx,)
    checks += [(f"hx[{i}]", s, g) for i, (s, g) in enumerate(zip(states, grads))
               if s is not None]
    checks += [(name, p, layer.grads[name]) for name, p in layer.named_parameters()]
    for name, arr, analytic in checks:
        assert analytic.shape == arr.shape, name
        idx, g = numeric(arr)
        err = _rel_err(g, analytic.reshape(-1)[idx])
        assert err <= 1e-6, f"{name}: relative error {err:.2e}"


def _initial_state(cls, layer, B, rng):
    L = layer.num_layers * (2 if layer.bidirectional else 1)
    h0 = rng.standard_normal((L, B, layer.proj_size or layer.hidden_size)) * 0.5
    if cls is LSTM:
        return (h0, rng.standard_normal((L, B, layer.hidden_size)) * 0.5)
    return h0


@pytest.mark.parametrize("num_layers,bidirectional,ragged",
                         list(itertools.product([1, 2], [False, True], [False, True])))
@pytest.mark.parametrize("name,cls,opts", CELLS, ids=[c[0] for c in CELLS])
def test_gradients_match_finite_differences(name, cls, opts, num_layers, bidirectional,
                                            ragged):
    rng = np.random.default_rng([num_layers, bidirectional, ragged, len(name)])
    T, B = 5, 3
    layer = make_layer(cls, opts, num_layers=num_layers, bidirectional=bidirectional,
                       dtype=np.float64, backend="reference", random_state=3)
    if layer.peephole:  # peepholes start at the same scale as the other weights
        for n, p in layer.named_parameters():
            if "peephole" in n:
                p[...] = rng.uniform(-0.5, 0.5, p.shape)
    x = rng.standard_normal((T, B, 3))
    lengths = random_lengths(rng, B, T) if ragged else None
    _fd_check(layer, x, _initial_state(cls, layer, B, rng), lengths, rng)


@pytest.mark.parametrize("num_layers,bidirectional", [(1, False), (2, True)])
@pytest.mark.parametrize("name,cls,opts", CELLS, ids=[c[0] for c in CELLS])
def test_gradients_over_the_gathered_valid_steps(monkeypatch, name, cls, opts, num_layers,
                                                 bidirectional):
    """Where padding is a large part of a ragged batch, the weight gradients sum
    over the gathered valid steps only (fastrnn.nn._valid_rows): forced here for
    every ragged batch, they match finite differences, and the padded sums."""
    from fastrnn import nn

    rng = np.random.default_rng([num_layers, len(name)])
    T, B = 6, 4
    layer = make_layer(cls, opts, num_layers=num_layers, bidirectional=bidirectional,
                       dtype=np.float64, backend="reference", random_state=3)
    x = rng.standard_normal((T, B, 3))
    lengths = np.array([6, 1, 4, 2])  # 13 of 24 steps; the full one is not first
    hx = _initial_state(cls, layer, B, rng)
    assert nn._valid_rows(np.sort(lengths)[::-1], T) is not None  # gathers by default
    monkeypatch.setattr(nn, "_GATHER_BELOW_FILL", 0.0)  # padded sums
    padded = _grads_of(layer, x, hx, lengths)
    monkeypatch.setattr(nn, "_GATHER_BELOW_FILL", 1.01)  # gathers, even at full length
    gathered = _grads_of(layer, x, hx, lengths)
    for k in padded:
        np.testing.assert_allclose(gathered[k], padded[k], rtol=1e-12, atol=1e-14)
    _fd_check(layer, x, hx, lengths, rng)
    _fd_check(layer, x, hx, None, rng)


class _NaNEmpty:
    """NumPy, but ``empty`` fills float arrays with NaN."""

    def __getattr__(self, name):
        return getattr(np, name)

    @staticmethod
    def empty(shape, dtype=float, **kw):
        a = np.empty(shape, dtype, **kw)
        if a.dtype.kind == "f":
            a.fill(np.nan)
        return a


@pytest.mark.parametrize("num_layers,bidirectional,ragged",
                         [(1, False, False), (1, False, True), (2, True, False),
                          (2, True, True)])
@pytest.mark.parametrize("gather", [False, True], ids=["padded", "gathered"])
@pytest.mark.parametrize("name,cls,opts", [c for c in CELLS if c[1] is not GRU],
                         ids=[c[0] for c in CELLS if c[1] is not GRU])
def test_weight_gradients_in_one_product(monkeypatch, name, cls, opts, num_layers,
                                         bidirectional, ragged, gather):
    """``[dW_ih | dW_hh] = dg.T @ [x | h_prev]`` in one product (where
    fastrnn.nn._merges_weight_grads says so; forced here for every RNN and
    LSTM, whose two products share dg): the same gradients as the two
    products, both directions, ragged, gathered or not, and finite
    differences."""
    from fastrnn import nn

    rng = np.random.default_rng([num_layers, bidirectional, ragged, len(name)])
    T, B = 6, 4
    layer = make_layer(cls, opts, num_layers=num_layers, bidirectional=bidirectional,
                       dtype=np.float64, backend="reference", random_state=3)
    x = rng.standard_normal((T, B, 3))
    lengths = np.array([6, 1, 4, 2]) if ragged else None
    hx = _initial_state(cls, layer, B, rng)
    monkeypatch.setattr(nn, "_GATHER_BELOW_FILL", 1.01 if gather else 0.0)
    # every array the layer leaves uninitialised starts as NaN: a row read
    # before it is written shows (0 * NaN in a product is NaN)
    monkeypatch.setattr(nn, "np", _NaNEmpty())
    monkeypatch.setattr(nn, "_merges_weight_grads", lambda G, D, R: False)
    apart = _grads_of(layer, x, hx, lengths)
    merged = []
    monkeypatch.setattr(nn, "_merges_weight_grads",
                        lambda G, D, R: merged.append((G, D, R)) or True)
    together = _grads_of(layer, x, hx, lengths)
    assert len(merged) == num_layers * (2 if bidirectional else 1)
    for k in apart:
        np.testing.assert_allclose(together[k], apart[k], rtol=1e-12, atol=1e-14)
        assert together[k].flags.c_contiguous
    _fd_check(layer, x, hx, lengths, rng)


@pytest.mark.parametrize("steps", ["full", "padded", "gathered"])
@pytest.mark.parametrize("name,cls,opts", CELLS, ids=[c[0] for c in CELLS])
def test_weight_gradients_read_in_place(monkeypatch, name, cls, opts, steps):
    """With BLAS held on one thread and products large enough, the Cython
    backend's weight gradients run on the packed kernel that reads the gate
    gradients, the input and the shifted states in place
    (``fastrnn._blas.weight_product``): every one of them there (counted),
    the same gradients as from the gathered operands (the kernel turned
    off) within float32 rounding, and as the reference backend's."""
    if "cython" not in BACKENDS:
        pytest.skip("SKIPPED LOUDLY: the Cython backend is not built")
    from fastrnn import _blas, nn
    from fastrnn._config import single_threaded_blas
    from fastrnn._kernels import _cython_kernels as kern

    if not kern.PANELS_AVAILABLE:
        pytest.skip("SKIPPED LOUDLY: the packed tn kernel needs AVX-512 (and gcc or "
                    "clang); the layers gather the operands for BLAS here")
    rng = np.random.default_rng(len(name))
    T, B, D, H = 100, 8, 64, 130
    x = rng.standard_normal((T, B, D)).astype(np.float32)
    lengths = None
    if steps != "full":
        lengths = np.sort(rng.integers(T * 3 // 4, T + 1, B))
        lengths[-1] = T
    monkeypatch.setattr(nn, "_GATHER_BELOW_FILL", 1.01 if steps == "gathered" else 0.0)
    kernel = _blas._weight_product
    taken = []

    def counted(*args):
        got = kernel(*args)
        taken.append(got is not None)
        return got

    grads = {}
    for how in ("in place", "gathered", "reference"):
        layer = make_layer(cls, opts, D=D, H=H, num_layers=2, bidirectional=True,
                           dtype=np.float32, random_state=2,
                           backend="reference" if how == "reference" else "cython")
        monkeypatch.setattr(_blas, "_weight_product",
                            counted if how == "in place" else None)
        with single_threaded_blas():
            out, _ = layer(x, lengths=lengths)
            layer.backward(np.ones_like(out), None)
        grads[how] = layer.grads
    # two layers (the top one first), two directions; the GRU's input and
    # state weights apart; a projected LSTM's top layer (inputs and states of
    # 2 + 2 and 2 columns) has products small enough for the in-place kernel
    want = [True] * (8 if cls is GRU else 4)
    if opts.get("proj_size"):
        want[:2] = [False, False]
    assert taken == want
    for k, ref in grads["reference"].items():
        scale = np.abs(ref).max()
        np.testing.assert_allclose(grads["in place"][k], grads["gathered"][k], rtol=0,
                                   atol=1e-5 * scale, err_msg=k)
        assert _rel_err(grads["in place"][k].astype(np.float64), ref) <= 1e-4, k


def test_weight_gradients_merge_where_measured_faster():
    """The rule of fastrnn.nn._merges_weight_grads: an LSTM's gate gradients,
    at least twice as wide as the rows copied and beyond the weight-gradient
    kernel's 256 columns; not an RNN's (G = H), a small LSTM's, nor one
    whose input is wide."""
    from fastrnn.nn import _merges_weight_grads

    assert _merges_weight_grads(512, 32, 128)      # S3 LSTM, S6's first layer
    assert _merges_weight_grads(2048, 128, 512)    # S5 LSTM
    assert not _merges_weight_grads(512, 256, 128)  # S6's second layer
    assert not _merges_weight_grads(128, 32, 128)  # S3 RNN
    assert not _merges_weight_grads(512, 128, 512)  # S5 RNN
    assert not _merges_weight_grads(128, 8, 32)    # S4 LSTM


def _grads_of(layer, x, hx, lengths):
    out, h_n = layer(x, hx, lengths=lengths)
    layer.backward(np.ones_like(out), None)
    return {k: v.copy() for k, v in layer.grads.items()}


def test_valid_rows_only_where_padding_is_a_large_part():
    from fastrnn import nn

    assert nn._valid_rows(np.array([4, 4, 3]), 4) is None  # 11 of 12 steps
    rows = nn._valid_rows(np.array([4, 2, 1]), 4)  # 7 of 12
    mask = np.arange(4)[:, None] < np.array([4, 2, 1])[None, :]
    assert np.array_equal(rows, np.flatnonzero(mask))


@pytest.mark.parametrize("name,cls,opts", CELLS, ids=[c[0] for c in CELLS])
def test_dropout_gradient_uses_the_forward_mask(name, cls, opts, rng):
    """With dropout the backward pass must use the same mask as the forward."""
    layer = make_layer(cls, opts, num_layers=2, dropout=0.4, dtype=np.float64,
                       backend="reference", random_state=0)
    x = rng.standard_normal((4, 2, 3))
    state = layer._rng.get_state()

    class Fixed:
        """Resets the dropout stream before each forward, so every call draws the
        same mask."""

        def __call__(self, *a, **k):
            layer._rng.set_state(state)
            return type(layer).forward(layer, *a, **k)

    layer.forward = Fixed()
    _fd_check(layer, x, None, None, rng)


def _compare_layers(a, b, x, hx, lengths, rng, rtol):
    out_a, h_a = a(x, hx, lengths=lengths)
    out_b, h_b = b(x, hx, lengths=lengths)
    np.testing.assert_allclose(out_b, out_a, rtol=rtol, atol=rtol * 1e-1)
    for s_a, s_b in zip(np.atleast_1d(h_a) if not isinstance(h_a, tuple) else h_a,
                        np.atleast_1d(h_b) if not isinstance(h_b, tuple) else h_b):
        np.testing.assert_allclose(s_b, s_a, rtol=rtol, atol=rtol * 1e-1)
    w = _loss_weights(rng, out_a, h_a)
    ga = a.backward(*w)
    gb = b.backward(*w)
    np.testing.assert_allclose(gb[0], ga[0], rtol=rtol, atol=rtol * 1e-1)
    for name in a.grads:
        np.testing.assert_allclose(b.grads[name], a.grads[name], rtol=rtol,
                                   atol=rtol * 1e-1, err_msg=name)


GRID = list(itertools.product([1, 2], [False, True], [False, True], [False, True],
                              [np.float32, np.float64]))


@pytest.mark.parametrize("backend", [b for b in BACKENDS if b != "reference"])
@pytest.mark.parametrize("name,cls,opts", CELLS, ids=[c[0] for c in CELLS])
def test_backend_layer_matches_reference(backend, name, cls, opts):
    """The full layer (stacking, directions, layout, lengths, dtypes) with each
    compiled backend equals the reference backend."""
    rng = np.random.default_rng(11)
    for num_layers, bidi, batch_first, ragged, dtype in GRID:
        kw = dict(num_layers=num_layers, bidirectional=bidi, batch_first=batch_first,
                  dtype=dtype, random_state=5)
        ref = make_layer(cls, opts, backend="reference", **kw)
        other = make_layer(cls, opts, backend=backend, **kw)
        T, B = 6, 4
        x = rng.standard_normal((B, T, 3) if batch_first else (T, B, 3))
        lengths = random_lengths(rng, B, T) if ragged else None
        rtol = 1e-4 if dtype == np.float32 else 1e-9
        _compare_layers(ref, other, x, _initial_state(cls, ref, B, rng), lengths, rng,
                        rtol)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name,cls,opts", CELLS, ids=[c[0] for c in CELLS])
def test_batch_split_over_threads_trains_as_whole_batch(monkeypatch, backend, name, cls,
                                                        opts):
    """Forward and backward with the batch split over threads (ragged lengths,
    dropout, two bidirectional layers) equal the unsplit layer's, gradients too."""
    import fastrnn._config as config

    rng = np.random.default_rng(3)
    T, B = 5, 11
    x = rng.standard_normal((T, B, 3))
    lengths = random_lengths(rng, B, T)
    layers = [make_layer(cls, opts, num_layers=2, bidirectional=True, dropout=0.3,
                         dtype=np.float64, backend=backend, random_state=7)
              for _ in range(2)]
    hx = _initial_state(cls, layers[0], B, rng)
    weights = None
    results = []
    for layer, min_samples in zip(layers, [10 ** 9, 3]):
        monkeypatch.setattr(config, "MIN_SAMPLES_PER_THREAD", min_samples)
        with config.thread_limit(3):
            assert config.batch_threads(B) == (1 if min_samples > B else 3)
            out, h_n = layer(x, hx, lengths=lengths)
            weights = weights or _loss_weights(rng, out, h_n)
            grad_x, grad_hx = layer.backward(*weights)
        results.append((out, h_n, grad_x, grad_hx, layer.grads))
    (want, got) = results

    def flat(r):  # (out, state, grad_x, grad_state), a state an array or a tuple
        return [a for item in r[:4]
                for a in (item if isinstance(item, tuple) else (item,))]

    assert len(flat(want)) == len(flat(got))
    for u, v in zip(flat(want), flat(got)):
        np.testing.assert_allclose(v, u, rtol=1e-12, atol=1e-12)
    assert set(got[4]) == set(want[4])
    for k in want[4]:
        np.testing.assert_allclose(got[4][k], want[4][k], rtol=1e-11, atol=1e-12,
                                   err_msg=k)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name,cls,opts", CELLS, ids=[c[0] for c in CELLS])
def test_inference_in_blocks_of_steps_equals_whole_sequence(monkeypatch, backend, name,
                                                           cls, opts):
    """Eval mode runs the steps in blocks (state carried over, each sample's
    own end and reverse start respected): same results as one block, with
    blocks of 3 steps and of one."""
    import fastrnn._config as config

    rng = np.random.default_rng(4)
    T, B = 10, 6
    layer = make_layer(cls, opts, num_layers=2, bidirectional=True, dtype=np.float64,
                       backend=backend, random_state=2).eval()
    x = rng.standard_normal((T, B, 3))
    lengths = np.array([10, 3, 7, 1, 9, 4])  # ends inside, at and between blocks
    hx = _initial_state(cls, layer, B, rng)
    monkeypatch.setattr(config, "INFERENCE_BLOCK_STEPS", T)
    want = layer(x, hx, lengths=lengths)
    for steps in (3, 1):
        monkeypatch.setattr(config, "INFERENCE_BLOCK_STEPS", steps)
        got = layer(x, hx, lengths=lengths)
        flat = [a for r in (want, got) for item in r
                for a in (item if isinstance(item, tuple) else (item,))]
        assert len(flat) % 2 == 0
        for u, v in zip(flat[:len(flat) // 2], flat[len(flat) // 2:]):
            np.testing.assert_allclose(v, u, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name,cls,opts", CELLS, ids=[c[0] for c in CELLS])
def test_split_inference_written_in_place_equals_whole_batch(monkeypatch, backend, name,
                                                             cls, opts):
    """Eval mode with the batch split over threads, where the kernels write the
    last layer's output straight into the whole batch's (one direction, the
    batch in order), in blocks of steps or not: the same output and final
    state as the unsplit layer, for full, sorted, unsorted and equal lengths
    (ragged ones dealt out to the threads by length)."""
    import fastrnn._config as config

    rng = np.random.default_rng(5)
    T, B = 8, 10
    x = rng.standard_normal((T, B, 3))
    sorted_lengths = np.sort(random_lengths(rng, B, T))[::-1].copy()
    for num_layers in (1, 2):
        layer = make_layer(cls, opts, num_layers=num_layers, dtype=np.float64,
                           backend=backend, random_state=3).eval()
        hx = _initial_state(cls, layer, B, rng)
        for lengths in (None, sorted_lengths, random_lengths(rng, B, T),
                        np.full(B, T), np.full(B, T - 2)):
            monkeypatch.setattr(config, "MIN_SAMPLES_PER_THREAD", 10 ** 9)
            monkeypatch.setattr(config, "INFERENCE_BLOCK_STEPS", T)
            want = _flat(layer(x, hx, lengths=lengths))
            monkeypatch.setattr(config, "MIN_SAMPLES_PER_THREAD", 3)
            for steps in (T, 3):
                monkeypatch.setattr(config, "INFERENCE_BLOCK_STEPS", steps)
                with config.thread_limit(3):
                    assert config.batch_threads(B) == 3
                    got = _flat(layer(x, hx, lengths=lengths))
                assert len(got) == len(want)
                for u, v in zip(want, got):
                    np.testing.assert_allclose(v, u, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("cls", [RNN, LSTM, GRU])
def test_inference_block_length(monkeypatch, cls):
    """Eval blocks hold INFERENCE_BLOCK_STEPS steps (the last one the rest);
    training runs the whole sequence at once."""
    import fastrnn._config as config

    T, B, H = 20, 3, 5
    layer = cls(2, H, dtype=np.float64, random_state=0).eval()
    seen = []
    block = layer._forward_block
    monkeypatch.setattr(layer, "_forward_block",
                        lambda k, inp, *a: seen.append(inp.shape[0]) or block(k, inp, *a))
    x = np.ones((T, B, 2))
    for steps, want in [(128, [20]), (6, [6, 6, 6, 2]), (1, [1] * 20)]:
        monkeypatch.setattr(config, "INFERENCE_BLOCK_STEPS", steps)
        seen.clear()
        layer(x)
        assert seen == want, steps
    layer.train()
    seen.clear()
    layer(x)
    assert seen == [T]


def _two_backwards(monkeypatch, backend, cls, opts, min_samples, seed, backward):
    """One two-layer bidirectional layer (dropout 0.3, float64, ragged), forward
    and then ``backward(layer, out, h_n, first)`` twice, with the same dropout
    masks both times; returns ``x`` and each run's ``(result, grads)``."""
    import fastrnn._config as config

    monkeypatch.setattr(config, "MIN_SAMPLES_PER_THREAD", min_samples)
    rng = np.random.default_rng(seed)
    T, B = 5, 7
    layer = make_layer(cls, opts, num_layers=2, bidirectional=True, dropout=0.3,
                       dtype=np.float64, backend=backend, random_state=1)
    x = rng.standard_normal((T, B, 3))
    lengths = random_lengths(rng, B, T)
    state = layer._rng.get_state()
    results = []
    for first in (True, False):
        layer._rng.set_state(state)  # the same dropout masks both times
        with config.thread_limit(2):
            out, h_n = layer(x, lengths=lengths)
            results.append((backward(layer, out, h_n, first), dict(layer.grads)))
    return x, results


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name,cls,opts", CELLS, ids=[c[0] for c in CELLS])
@pytest.mark.parametrize("min_samples", [10 ** 9, 3], ids=["whole", "split"])
def test_backward_without_input_gradient_keeps_every_other_gradient(
        monkeypatch, backend, name, cls, opts, min_samples):
    """input_grad=False returns None for grad_x and the same parameter and
    initial-state gradients as a full backward (two layers, dropout, ragged)."""
    def backward(layer, out, h_n, input_grad):
        weights = _loss_weights(np.random.default_rng(9), out, h_n)
        return layer.backward(*weights, input_grad=input_grad)

    x, results = _two_backwards(monkeypatch, backend, cls, opts, min_samples, 8,
                                backward)
    ((gx_full, ghx_full), full), ((gx_none, ghx_none), skipped) = results
    assert gx_full.shape == x.shape and gx_none is None
    for a, b in zip(*(g if isinstance(g, tuple) else (g,) for g in (ghx_full, ghx_none))):
        np.testing.assert_array_equal(b, a)
    assert set(skipped) == set(full)
    for k in full:
        np.testing.assert_array_equal(skipped[k], full[k], err_msg=k)


def _flat(grads):
    """A backward's result as a flat tuple: grad_x, then each initial state's."""
    grad_x, grad_hx = grads
    return (grad_x,) + (grad_hx if isinstance(grad_hx, tuple) else (grad_hx,))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name,cls,opts", CELLS, ids=[c[0] for c in CELLS])
@pytest.mark.parametrize("min_samples", [10 ** 9, 3], ids=["whole", "split"])
def test_backward_without_output_gradient_equals_zeros(monkeypatch, backend, name, cls,
                                                       opts, min_samples):
    """grad_output=None (a loss on the final state only) gives every gradient
    that a grad_output of zeros gives (two layers, dropout, ragged), also for
    batch-first and unbatched input."""
    def backward(layer, out, h_n, zeros):
        w_h = _loss_weights(np.random.default_rng(11), out, h_n)[1]
        return layer.backward(np.zeros_like(out) if zeros else None, w_h)

    x, results = _two_backwards(monkeypatch, backend, cls, opts, min_samples, 10,
                                backward)
    (g_zero, p_zero), (g_none, p_none) = results
    for a, b in zip(_flat(g_zero), _flat(g_none)):  # grad_x and the initial states'
        np.testing.assert_allclose(b, a, rtol=1e-12, atol=1e-14)
    assert set(p_none) == set(p_zero)
    for k in p_zero:
        np.testing.assert_allclose(p_none[k], p_zero[k], rtol=1e-12, atol=1e-14, err_msg=k)

    # the layouts' own paths: batch first, and one unbatched sequence
    for batch_first, xs in ((True, x.transpose(1, 0, 2)), (False, x[:, 0])):
        layer = make_layer(cls, opts, batch_first=batch_first, dtype=np.float64,
                           backend=backend, random_state=2)
        out, h_n = layer(xs)
        w_h = _loss_weights(np.random.default_rng(12), out, h_n)[1]
        want = layer.backward(np.zeros_like(out), w_h)[0]
        np.testing.assert_allclose(layer.backward(None, w_h)[0], want, rtol=1e-12,
                                   atol=1e-14)


def test_required_backends_load():
    """numba is a runtime dependency: its backend must always load."""
    assert {"reference", "numba"} <= set(BACKENDS), BACKENDS


# ------------------------------------------------------------------ the API


def test_lengths_equal_to_running_each_sample_alone(rng):
    layer = LSTM(3, 4, bidirectional=True, num_layers=2, dtype=np.float64,
                 backend="reference", random_state=0)
    x = rng.standard_normal((6, 3, 3))
    lengths = np.array([2, 6, 4])
    out, (h, c) = layer(x, lengths=lengths)
    for b, n in enumerate(lengths):
        out_b, (h_b, c_b) = layer(x[:n, b])
        np.testing.assert_allclose(out[:n, b], out_b, rtol=1e-12)
        assert np.all(out[n:, b] == 0)
        np.testing.assert_allclose(h[:, b], h_b, rtol=1e-12)
        np.testing.assert_allclose(c[:, b], c_b, rtol=1e-12)


def test_eval_mode_keeps_no_cache_and_has_no_dropout(rng):
    layer = GRU(3, 4, num_layers=2, dropout=0.5, random_state=0).eval()
    x = rng.standard_normal((5, 2, 3))
    a, _ = layer(x)
    b, _ = layer(x)
    np.testing.assert_array_equal(a, b)
    assert layer._cache is None
    with pytest.raises(RuntimeError, match="eval mode"):
        layer.backward(np.ones_like(a))
    layer.train()
    c, _ = layer(x)
    assert not np.allclose(a, c), "dropout must act in training mode"


def test_state_dict_round_trip_and_errors():
    a = LSTM(3, 4, num_layers=2, bidirectional=True, proj_size=2, random_state=0)
    b = LSTM(3, 4, num_layers=2, bidirectional=True, proj_size=2, random_state=1)
    b.load_state_dict(a.state_dict())
    for (n, p), (m, q) in zip(a.named_parameters(), b.named_parameters()):
        assert n == m
        np.testing.assert_array_equal(p, q)
    sd = a.state_dict()
    sd["weight_hh_l1_reverse"] = np.zeros((16, 3))
    with pytest.raises(ValueError, match=r"weight_hh_l1_reverse.*\(16, 2\).*\(16, 3\)"):
        b.load_state_dict(sd)
    sd = a.state_dict()
    sd["weight_xx_l0"] = sd.pop("weight_ih_l0")
    with pytest.raises(KeyError, match="weight_ih_l0.*weight_xx_l0"):
        b.load_state_dict(sd)
    sd = a.state_dict()
    sd["bias_ih_l0"][0] = np.nan
    before = b.state_dict()
    with pytest.raises(ValueError, match="NaN"):
        b.load_state_dict(sd)
    for n, p in b.named_parameters():
        np.testing.assert_array_equal(p, before[n])  # nothing half-loaded


def test_pickle_round_trip(rng):
    layer = GRU(3, 4, random_state=0).eval()
    x = rng.standard_normal((5, 2, 3))
    again = pickle.loads(pickle.dumps(layer))
    np.testing.assert_array_equal(layer(x)[0], again(x)[0])


def test_same_random_state_same_weights():
    a, b = RNN(3, 4, random_state=42), RNN(3, 4, random_state=42)
    for (_, p), (_, q) in zip(a.named_parameters(), b.named_parameters()):
        np.testing.assert_array_equal(p, q)


def test_dtype_is_kept():
    layer = LSTM(3, 4, dtype=np.float64)
    out, (h, c) = layer(np.zeros((2, 1, 3), np.float32))
    assert out.dtype == h.dtype == np.float64
    out, _ = LSTM(3, 4)(np.zeros((2, 1, 3)))
    assert out.dtype == np.float32


@pytest.mark.parametrize("bad,err,match", [
    (np.zeros((5,)), ValueError, "2-D.*3-D.*1-D"),
    (np.zeros((1, 2, 3, 3)), ValueError, "4-D"),
    (np.zeros((4, 2, 5)), ValueError, "Expected 3, got 5"),
    (np.zeros((0, 2, 3)), ValueError, "empty"),
    (np.full((4, 2, 3), np.nan), ValueError, "NaN or infinity"),
    (np.full((4, 2, 3), np.inf), ValueError, "NaN or infinity"),
    (np.zeros((4, 2, 3), complex), TypeError, "real numbers"),
    (np.array([["a"]]), TypeError, "real numbers"),
])
def test_bad_input_is_rejected(bad, err, match):
    with pytest.raises(err, match=match):
        LSTM(3, 4)(bad)


@pytest.mark.parametrize("split", [False, True], ids=["whole", "split"])
@pytest.mark.parametrize("where", [0, 5], ids=["first_part", "last_part"])
@pytest.mark.parametrize("bad,found", [(np.nan, "NaN"), (-np.inf, "infinity")])
@pytest.mark.parametrize("ragged", [False, True])
@pytest.mark.parametrize("batch_first", [False, True])
def test_bad_values_found_in_every_batch_slice(monkeypatch, split, where, bad, found,
                                               ragged, batch_first):
    """A NaN or infinity in any sample of a batch, whole or split over
    threads, is refused with the same message, in training and eval mode,
    batch-first or ragged too."""
    import fastrnn._config as config

    monkeypatch.setattr(config, "MIN_SAMPLES_PER_THREAD", 3 if split else 10 ** 9)
    layer = LSTM(3, 4, batch_first=batch_first, random_state=0)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((5, 6, 3)).astype(np.float32)  # (T, B, D)
    lengths = np.array([5, 2, 4, 1, 3, 5]) if ragged else None
    x[1, where, 2] = bad
    if batch_first:
        x = np.ascontiguousarray(x.transpose(1, 0, 2))
    with config.thread_limit(2):
        for mode in (True, False):
            layer.train(mode)
            with pytest.raises(ValueError, match=f"input contains {found}"):
                layer(x, lengths=lengths)


def test_forward_for_checked_data_skips_only_the_value_scan(rng):
    """The networks' entry (_forward_finite): the same results as forward, the
    same shape checks; NaN passes through unscanned only in an array of the
    layer's dtype (the caller's promise), any other input is scanned."""
    layer = LSTM(3, 4, random_state=0).eval()
    x = rng.standard_normal((5, 2, 3)).astype(np.float32)
    for a, b in zip(_flat(layer(x)), _flat(layer._forward_finite(x))):
        np.testing.assert_array_equal(a, b)
    for bad, match in [(np.zeros((4, 2, 5), np.float32), "Expected 3, got 5"),
                       (np.zeros((0, 2, 3), np.float32), "empty"),
                       (np.full((4, 2, 3), np.nan), "NaN or infinity")]:  # float64
        with pytest.raises(ValueError, match=match):
            layer._forward_finite(bad)
    x[1, 0, 2] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        layer(x)
    assert np.isnan(layer._forward_finite(x)[0][1:, 0]).all()
    x[1, 0, 2] = np.inf  # refused; unscanned, the saturated gates would absorb it
    with pytest.raises(ValueError, match="infinity"):
        layer(x)
    assert np.isfinite(layer._forward_finite(x)[0]).all()


@pytest.mark.parametrize("lengths,match", [
    ([3, 0], "lengths\\[1\\] = 0"),
    ([3, 5], "lengths\\[1\\] = 5"),
    ([3], "shape \\(2,\\)"),
    ([[3, 3]], "shape \\(2,\\)"),
    ([1.5, 2], "integers"),
])
def test_bad_lengths_are_rejected(lengths, match):
    with pytest.raises((ValueError, TypeError), match=match):
        GRU(3, 4)(np.zeros((4, 2, 3)), lengths=lengths)


def test_bad_state_is_rejected():
    with pytest.raises(ValueError, match=r"h_0 of shape \(2, 2, 4\), got \(1, 2, 4\)"):
        GRU(3, 4, num_layers=2)(np.zeros((4, 2, 3)), np.zeros((1, 2, 4)))
    with pytest.raises(ValueError, match=r"c_0 of shape \(1, 2, 4\), got \(1, 2, 3\)"):
        LSTM(3, 4)(np.zeros((4, 2, 3)), (np.zeros((1, 2, 4)), np.zeros((1, 2, 3))))
    with pytest.raises(TypeError, match="tuple"):
        LSTM(3, 4)(np.zeros((4, 2, 3)), np.zeros((1, 2, 4)))
    with pytest.raises(ValueError, match="NaN"):
        RNN(3, 4)(np.zeros((4, 2, 3)), np.full((1, 2, 4), np.nan))


def test_backward_misuse_is_rejected():
    layer = LSTM(3, 4)
    with pytest.raises(RuntimeError, match="before"):
        layer.backward(np.zeros((4, 2, 4)))
    out, _ = layer(np.zeros((4, 2, 3)))
    with pytest.raises(ValueError, match=r"grad_output of shape \(4, 2, 4\)"):
        layer.backward(np.zeros((4, 2, 5)))


@pytest.mark.parametrize("kwargs,match", [
    (dict(input_size=0, hidden_size=4), "input_size"),
    (dict(input_size=3, hidden_size=4, proj_size=4), "proj_size"),
    (dict(input_size=3, hidden_size=4, dropout=1.5), "dropout"),
    (dict(input_size=3, hidden_size=4, backend="fortran"), "unknown backend"),
])
def test_bad_constructor_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        LSTM(**kwargs)


@pytest.fixture
def cython_row_split():
    """The Cython kernels, with small calls split over their helper thread."""
    if "cython" not in BACKENDS:
        pytest.skip("SKIPPED LOUDLY: the Cython extension is not built")
    from fastrnn._kernels import get_kernels

    kern = get_kernels("cython")
    if not (kern.HAS_ROW_SPLIT and kern.panel_products()):
        pytest.skip("SKIPPED LOUDLY: no helper thread or no AVX-512 panels here")
    bounds = kern._set_split_bounds(2, 0)
    try:
        yield kern
    finally:
        kern._set_split_bounds(*bounds)


@pytest.mark.parametrize("name,cls,opts", CELLS, ids=[c[0] for c in CELLS])
def test_kernel_row_split_trains_as_one_thread(monkeypatch, cython_row_split, name, cls,
                                               opts):
    """float32 layers whose kernels split their rows with the helper thread
    (two bidirectional layers, dropout, ragged lengths, the input gradient
    through the split's own product) give what one thread gives, outputs and
    every gradient, to float32 rounding; and they did split."""
    import fastrnn._config as config
    import fastrnn.nn as nn_module

    rng = np.random.default_rng(8)
    T, B = 7, 12
    x = rng.standard_normal((T, B, 3)).astype(np.float32)
    lengths = random_lengths(rng, B, T)
    layers = [make_layer(cls, opts, num_layers=2, bidirectional=True, dropout=0.3,
                         dtype=np.float32, backend="cython", random_state=7)
              for _ in range(2)]
    hx = _initial_state(cls, layers[0], B, rng)
    splits = []
    map_parts = nn_module._map_parts

    def spy(fn, items, split_rows=False):
        splits.append(split_rows)
        return map_parts(fn, items, split_rows)

    monkeypatch.setattr(nn_module, "_map_parts", spy)
    weights = None
    results = []
    for layer, n in zip(layers, [1, 2]):
        with config.thread_limit(n):
            out, h_n = layer(x, hx, lengths=lengths)
            weights = weights or _loss_weights(rng, out, h_n)
            grad_x, grad_hx = layer.backward(*weights)
        results.append((out, h_n, grad_x, grad_hx, layer.grads))
    assert splits == [False, False, True, True]
    want, got = results
    flat = [[a for item in r[:4] for a in (item if isinstance(item, tuple) else (item,))]
            for r in results]
    for u, v in zip(*flat):
        np.testing.assert_allclose(v, u, rtol=2e-4, atol=2e-5)
    for k in want[4]:
        np.testing.assert_allclose(got[4][k], want[4][k], rtol=2e-4, atol=2e-5, err_msg=k)


def test_kernel_row_split_or_batch_slices(cython_row_split):
    """Which way a float32 Cython layer splits: its kernels' rows where the
    batch would make at most two slices (any batch on two threads, a small one
    on more), the batch over Python threads where it makes three or more
    (the helper is one thread), neither on one thread or in float64."""
    import fastrnn._config as config

    layer = LSTM(3, 4, backend="cython")
    with config.layer_threads(2):
        assert layer._splits_rows(256) and layer._splits_rows(16)
        assert not layer._splits_rows(3)  # fewer than the split's minimum
    with config.layer_threads(4):
        assert layer._splits_rows(64) and not layer._splits_rows(128)
    with config.layer_threads(1):
        assert not layer._splits_rows(256)
    with config.layer_threads(2):
        assert not LSTM(3, 4, backend="cython", dtype=np.float64)._splits_rows(256)
        assert not LSTM(3, 4, backend="reference")._splits_rows(256)
