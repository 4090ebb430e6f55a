"""The estimators learn what recurrent networks are for: order, long-range
memory, dynamics, and variable lengths. Fixed seeds, assertions on quality
only (never on time); each task is sized to train in seconds."""

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import r2_score

from fastrnn import RNNClassifier, RNNRegressor

pytestmark = pytest.mark.filterwarnings(
    "ignore::sklearn.exceptions.ConvergenceWarning")

N_TOKENS = 5  # token 0 = "A", 1 = "B", the rest are filler words


def order_task(n, T, rng):
    """One-hot token sequences holding one A and one B among filler; the label
    says whether A comes first. Both classes have the same bag of words."""
    tokens = rng.randint(2, N_TOKENS, (n, T))
    pos = np.array([rng.choice(T, 2, replace=False) for _ in range(n)])
    tokens[np.arange(n), pos[:, 0]] = 0
    tokens[np.arange(n), pos[:, 1]] = 1
    y = (pos[:, 0] < pos[:, 1]).astype(int)
    return np.eye(N_TOKENS)[tokens], y, tokens


def test_order_matters():
    rng = np.random.RandomState(0)
    X, y, _ = order_task(1200, 12, rng)
    X_test, y_test, tokens = order_task(500, 12, rng)
    # Time-averaged features are identical for both orders: chance level.
    bag = LogisticRegression().fit(X.mean(axis=1), y)
    assert bag.score(X_test.mean(axis=1), y_test) < 0.6
    clf = RNNClassifier((16,), "lstm", learning_rate_init=0.02, batch_size=32,
                        max_iter=30, random_state=0).fit(X, y)
    assert clf.score(X_test, y_test) >= 0.95
    # The same words with A and B swapped: the prediction flips.
    swapped = tokens.copy()
    swapped[tokens == 0], swapped[tokens == 1] = 1, 0
    flipped = clf.predict(np.eye(N_TOKENS)[swapped]) != clf.predict(X_test)
    assert flipped.mean() >= 0.95


def adding_task(n, T, rng):
    """Hochreiter & Schmidhuber's adding problem: add the two values marked in
    the second channel, one in each half of the sequence."""
    values = rng.uniform(0, 1, (n, T))
    marks = np.zeros((n, T))
    marks[np.arange(n), rng.randint(0, T // 2, n)] = 1
    marks[np.arange(n), rng.randint(T // 2, T, n)] = 1
    return np.stack([values, marks], axis=2), (values * marks).sum(axis=1)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_adding_problem_long_range_memory(cell):
    rng = np.random.RandomState(0)
    X, y = adding_task(1500, 50, rng)
    X_test, y_test = adding_task(1000, 50, rng)
    baseline = np.mean((y_test - y.mean()) ** 2)  # predict the mean: about 1/6
    reg = RNNRegressor((32,), cell, learning_rate_init=0.02, batch_size=32,
                       max_iter=15, random_state=0).fit(X, y)
    mse = np.mean((reg.predict(X_test) - y_test) ** 2)
    assert mse < 0.1 * baseline


def periodic_task(n, T, rng, noise=0.05):
    """Windows of noisy sine waves of random frequency, amplitude and phase;
    the target is the next (noisy) value."""
    t = np.arange(T + 1)
    freq = rng.uniform(0.04, 0.12, (n, 1))
    amp = rng.uniform(0.5, 1.5, (n, 1))
    phase = rng.uniform(0, 2 * np.pi, (n, 1))
    s = amp * np.sin(2 * np.pi * freq * t + phase) + noise * rng.standard_normal((n, T + 1))
    return s[:, :T], s[:, T]


def test_sine_next_value_regression():
    rng = np.random.RandomState(1)
    X, y = periodic_task(1000, 20, rng)  # 2-D: univariate sequences
    X_test, y_test = periodic_task(500, 20, rng)
    reg = RNNRegressor((16,), "gru", learning_rate_init=0.01, batch_size=32,
                       max_iter=25, random_state=0).fit(X, y)
    assert r2_score(y_test, reg.predict(X_test)) >= 0.95


def last_step_task(n, rng):
    """Univariate sequences of 3 to 20 steps, each step -1, 0 or +1; the label
    is the value at the sequence's own last step. Zero padding looks exactly
    like valid steps of value 0, so a network that saw it could not tell where
    a sequence ends (the best such guess is right about 2 times in 3)."""
    X = [rng.choice([-1.0, 0.0, 1.0], L) for L in rng.randint(3, 21, n)]
    return X, np.array([int(x[-1]) for x in X])


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_label_at_the_last_valid_step(cell):
    rng = np.random.RandomState(2)
    X, y = last_step_task(800, rng)
    X_test, y_test = last_step_task(400, rng)
    clf = RNNClassifier((16,), cell, learning_rate_init=0.01, batch_size=32,
                        max_iter=20, random_state=0)
    assert clf.fit(X, y).score(X_test, y_test) >= 0.95
    # Control: the same network fed the zero-padded array, padding and all,
    # cannot beat the 2-in-3 guess.
    padded = np.zeros((len(X), 20))
    padded_test = np.zeros((len(X_test), 20))
    for dst, src in ((padded, X), (padded_test, X_test)):
        for row, x in zip(dst, src):
            row[:len(x)] = x
    assert clf.fit(padded, y).score(padded_test, y_test) < 0.75
