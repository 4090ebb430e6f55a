"""The layers against PyTorch 2.13 with identical weights: outputs, final
states, input and state gradients, and every parameter gradient."""

import itertools

import numpy as np
import pytest

from fastrnn._kernels import available_backends

from conftest import TORCH_CELLS, make_layer, random_lengths, torch_or_skip

torch = torch_or_skip()

# A randomised (seeded) sample of the full option grid, the same for every cell
# and backend: num_layers, bidirectional, batch_first, ragged lengths, bias, dtype.
_FULL = list(itertools.product([1, 2], [False, True], [False, True], [False, True],
                               [True, False], ["float32", "float64"]))
GRID = [_FULL[i] for i in np.random.default_rng(2024).choice(len(_FULL), 14,
                                                             replace=False)]
TOL = {"float32": 1e-4, "float64": 1e-9}


def _torch_module(name, opts, D, H, num_layers, bidirectional, batch_first, bias, dtype):
    kw = dict(num_layers=num_layers, bidirectional=bidirectional,
              batch_first=batch_first, bias=bias)
    if name.startswith("rnn"):
        mod = torch.nn.RNN(D, H, nonlinearity=opts.get("nonlinearity", "tanh"), **kw)
    elif name.startswith("lstm"):
        mod = torch.nn.LSTM(D, H, proj_size=opts.get("proj_size", 0), **kw)
    else:
        mod = torch.nn.GRU(D, H, **kw)
    return mod.to(getattr(torch, dtype))


def _assert_close(got, want, rtol, what):
    want = want.detach().numpy() if hasattr(want, "detach") else want
    scale = max(np.abs(want).max(), 1e-3)
    np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol * scale, err_msg=what)


@pytest.mark.parametrize("backend", available_backends())
@pytest.mark.parametrize("options", GRID, ids=lambda o: "-".join(map(str, o)))
@pytest.mark.parametrize("name,cls,opts", TORCH_CELLS, ids=[c[0] for c in TORCH_CELLS])
def test_matches_pytorch(name, cls, opts, options, backend):
    num_layers, bidi, batch_first, ragged, bias, dtype = options
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    T, B, D, H = 5, 4, 3, 4
    mod = _torch_module(name, opts, D, H, num_layers, bidi, batch_first, bias, dtype)
    layer = make_layer(cls, opts, D=D, H=H, num_layers=num_layers, bidirectional=bidi,
                       batch_first=batch_first, bias=bias, dtype=np.dtype(dtype),
                       backend=backend)
    layer.load_state_dict({k: v.detach().numpy() for k, v in mod.state_dict().items()})

    x = rng.standard_normal((B, T, D) if batch_first else (T, B, D)).astype(dtype)
    L, R = num_layers * (1 + bidi), opts.get("proj_size") or H
    hx = [rng.standard_normal((L, B, R)).astype(dtype)]
    if name.startswith("lstm"):
        hx.append(rng.standard_normal((L, B, H)).astype(dtype))
    lengths = random_lengths(rng, B, T) if ragged else None

    tx = torch.tensor(x, requires_grad=True)
    thx = [torch.tensor(h, requires_grad=True) for h in hx]
    t_in = tx
    if ragged:
        t_in = torch.nn.utils.rnn.pack_padded_sequence(
            tx, torch.tensor(lengths), batch_first=batch_first, enforce_sorted=False)
    t_out, t_hn = mod(t_in, tuple(thx) if len(thx) == 2 else thx[0])
    if ragged:
        t_out, _ = torch.nn.utils.rnn.pad_packed_sequence(
            t_out, batch_first=batch_first, total_length=T)
    t_states = t_hn if isinstance(t_hn, tuple) else (t_hn,)

    out, h_n = layer(x, tuple(hx) if len(hx) == 2 else hx[0], lengths=lengths)
    states = h_n if isinstance(h_n, tuple) else (h_n,)
    rtol = TOL[dtype]
    _assert_close(out, t_out, rtol, "output")
    for i, (s, ts) in enumerate(zip(states, t_states)):
        _assert_close(s, ts, rtol, f"final state {i}")

    w_out = rng.standard_normal(out.shape).astype(dtype)
    w_states = [rng.standard_normal(s.shape).astype(dtype) for s in states]
    loss = (t_out * torch.tensor(w_out)).sum() + sum(
        (ts * torch.tensor(w)).sum() for ts, w in zip(t_states, w_states))
    loss.backward()
    gx, ghx = layer.backward(w_out, tuple(w_states) if len(w_states) == 2 else w_states[0])
    ghx = ghx if isinstance(ghx, tuple) else (ghx,)
    _assert_close(gx, tx.grad, rtol, "grad x")
    for i, (g, th) in enumerate(zip(ghx, thx)):
        _assert_close(g, th.grad, rtol, f"grad hx[{i}]")
    assert set(layer.grads) == set(dict(mod.named_parameters()))
    for pname, p in mod.named_parameters():
        _assert_close(layer.grads[pname], p.grad, rtol, f"grad {pname}")


@pytest.mark.parametrize("name,cls,opts", TORCH_CELLS, ids=[c[0] for c in TORCH_CELLS])
def test_unbatched_input_matches_pytorch(name, cls, opts):
    torch.manual_seed(1)
    mod = _torch_module(name, opts, 3, 4, 2, True, False, True, "float64")
    layer = make_layer(cls, opts, num_layers=2, bidirectional=True, dtype=np.float64)
    layer.load_state_dict({k: v.detach().numpy() for k, v in mod.state_dict().items()})
    x = np.random.default_rng(1).standard_normal((6, 3))
    t_out, t_hn = mod(torch.tensor(x))
    out, h_n = layer(x)
    _assert_close(out, t_out, 1e-9, "output")
    for s, ts in zip(h_n if isinstance(h_n, tuple) else (h_n,),
                     t_hn if isinstance(t_hn, tuple) else (t_hn,)):
        _assert_close(s, ts, 1e-9, "final state")
