import numpy as np
import pytest

from fastrnn.nn import GRU, LSTM, RNN

# (name, class, constructor options): every cell variant the layer tests cover.
CELLS = [
    ("rnn_tanh", RNN, {}),
    ("rnn_relu", RNN, {"nonlinearity": "relu"}),
    ("lstm", LSTM, {}),
    ("lstm_proj", LSTM, {"proj_size": 2}),
    ("lstm_peephole", LSTM, {"peephole": True}),
    ("lstm_peephole_proj", LSTM, {"peephole": True, "proj_size": 2}),
    ("gru", GRU, {}),
]
TORCH_CELLS = [c for c in CELLS if "peephole" not in c[0]]


def make_layer(cls, opts, D=3, H=4, **kw):
    return cls(D, H, **opts, **kw)


def random_lengths(rng, B, T):
    """Distinct ragged lengths with at least one full-length sample."""
    lengths = rng.integers(1, T + 1, B)
    lengths[rng.integers(B)] = T
    return lengths


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


def torch_or_skip():
    """Import torch, or skip loudly: CI installs the test extra, so there it runs."""
    return pytest.importorskip(
        "torch", reason="PyTorch parity tests need torch (pip install '.[test]')")
