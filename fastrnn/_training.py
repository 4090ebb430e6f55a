"""Training machinery: optimizers, losses and gradient clipping.

Everything here works on plain lists of NumPy arrays and knows nothing of
recurrent networks, in the manner of scikit-learn's
``neural_network/_stochastic_optimizers.py``: an optimizer updates the live
parameter arrays in place (``update_params``), is told when an epoch ends
(``iteration_ends``) and decides whether a plateau stops training or only
lowers the learning rate (``trigger_stopping``).
"""

import math

import numpy as np

__all__ = [
    "AdamOptimizer",
    "NonFiniteError",
    "SGDOptimizer",
    "clip_grad_norm",
    "log_softmax",
    "softmax_cross_entropy",
    "squared_error",
]


class NonFiniteError(FloatingPointError):
    """The loss or a gradient of a training step is NaN or infinite (divergence)."""


class BaseOptimizer:
    """Stochastic gradient descent, the parts every solver shares.

    Parameters
    ----------
    learning_rate_init : float
        The step size the optimizer starts with.
    lr_schedule : {'constant', 'adaptive'}, default='constant'
        With 'adaptive', :meth:`trigger_stopping` divides the learning rate by
        5 instead of stopping, until it falls below 1e-6 (scikit-learn's MLP
        rule).
    """

    def __init__(self, learning_rate_init, lr_schedule="constant"):
        self.learning_rate_init = learning_rate_init
        self.learning_rate = float(learning_rate_init)
        self.lr_schedule = lr_schedule

    def update_params(self, params, grads):
        """Add the update computed from ``grads`` to each array of ``params`` in place."""
        raise NotImplementedError

    def iteration_ends(self, time_step):
        """Called at the end of every epoch with the number of samples seen so far."""

    def trigger_stopping(self, msg, verbose):
        """Decide what a plateau means: stop (True), or lower the learning rate (False)."""
        if self.lr_schedule != "adaptive":
            if verbose:
                print(msg + " Stopping.")
            return True
        if self.learning_rate <= 1e-6:
            if verbose:
                print(msg + " Learning rate too small. Stopping.")
            return True
        self.learning_rate /= 5.0
        if verbose:
            print(msg + f" Setting learning rate to {self.learning_rate:g}")
        return False


class SGDOptimizer(BaseOptimizer):
    """SGD with (Nesterov) momentum, scikit-learn's formulation.

    ``v <- momentum * v - lr * g``; the parameter moves by ``v``, or with
    Nesterov's momentum by ``momentum * v - lr * g``.

    Parameters
    ----------
    params : list of ndarray
        The parameter arrays (used for the shapes of the velocities).
    learning_rate_init : float, default=0.1
    lr_schedule : {'constant', 'adaptive'}, default='constant'
    momentum : float, default=0.9
    nesterov : bool, default=True
    """

    def __init__(self, params, learning_rate_init=0.1, lr_schedule="constant",
                 momentum=0.9, nesterov=True):
        super().__init__(learning_rate_init, lr_schedule)
        self.momentum = momentum
        self.nesterov = nesterov
        self.velocities = [np.zeros_like(p) for p in params]

    def update_params(self, params, grads):
        lr, mu = self.learning_rate, self.momentum
        for p, v, g in zip(params, self.velocities, grads):
            v *= mu
            v -= lr * g
            if self.nesterov:
                p += mu * v - lr * g
            else:
                p += v


class AdamOptimizer(BaseOptimizer):
    """Adam (Kingma & Ba, 2015, Algorithm 1), as ``torch.optim.Adam``.

    ``m_hat = m / (1 - beta_1**t)``, ``v_hat = v / (1 - beta_2**t)``, and the
    parameter moves by ``-lr * m_hat / (sqrt(v_hat) + epsilon)``.

    Parameters
    ----------
    params : list of ndarray
    learning_rate_init : float, default=0.001
    beta_1, beta_2 : float, default=0.9, 0.999
    epsilon : float, default=1e-8
    lr_schedule : {'constant', 'adaptive'}, default='constant'

    Attributes
    ----------
    t : int
        Number of updates made so far.
    ms, vs : list of ndarray
        First and second moment estimates.
    """

    def __init__(self, params, learning_rate_init=0.001, beta_1=0.9, beta_2=0.999,
                 epsilon=1e-8, lr_schedule="constant"):
        super().__init__(learning_rate_init, lr_schedule)
        self.beta_1 = beta_1
        self.beta_2 = beta_2
        self.epsilon = epsilon
        self.t = 0
        self.ms = [np.zeros_like(p) for p in params]
        self.vs = [np.zeros_like(p) for p in params]

    def update_params(self, params, grads):
        self.t += 1
        b1, b2 = self.beta_1, self.beta_2
        step = self.learning_rate / (1.0 - b1 ** self.t)
        denom_scale = 1.0 / np.sqrt(1.0 - b2 ** self.t)
        for p, m, v, g in zip(params, self.ms, self.vs, grads):
            m *= b1
            m += (1.0 - b1) * g
            v *= b2
            v += (1.0 - b2) * (g * g)
            p -= step * m / (np.sqrt(v) * denom_scale + self.epsilon)


def clip_grad_norm(grads, max_norm):
    """Scale ``grads`` in place so that their global L2 norm is at most ``max_norm``.

    As ``torch.nn.utils.clip_grad_norm_``: the norm is taken over all arrays
    together, and all are multiplied by ``max_norm / (norm + 1e-6)`` when it
    exceeds ``max_norm``.

    The norm is computed in float64 whatever the gradients' dtype, so float32
    gradients up to float32's largest value neither overflow (``1e20**2`` is
    infinite in float32) nor underflow; float64 gradients too large to square
    are rescaled by their largest magnitude first. The norm is infinite or NaN
    only when a gradient is; the gradients are then left as they are (not
    turned into NaN by a zero factor), for the caller to treat as divergence.

    Parameters
    ----------
    grads : list of ndarray
        Gradients of one floating dtype, modified in place.
    max_norm : float or None
        None computes the norm without clipping.

    Returns
    -------
    norm : float
        The global norm before clipping.
    """
    with np.errstate(over="ignore"):  # an overflow is handled just below
        norm = math.sqrt(sum(_sum_of_squares(g) for g in grads))
    if math.isinf(norm):  # float64 squares overflowed: |g| > ~1e154, or g infinite
        amax = max(float(np.max(np.abs(g))) for g in grads if g.size)
        if math.isfinite(amax):
            norm = amax * math.sqrt(sum(_sum_of_squares(g / amax) for g in grads))
    if max_norm is not None and math.isfinite(norm) and norm > max_norm:
        scale = max_norm / (norm + 1e-6)
        for g in grads:
            if scale >= np.finfo(g.dtype).tiny:
                g *= scale
            else:  # the factor is subnormal in g's dtype and would lose its digits
                np.multiply(g, scale, out=g, dtype=np.float64, casting="same_kind")
    return norm


def _sum_of_squares(g):
    """``sum(g**2)`` accumulated in float64."""
    g = np.asarray(g, dtype=np.float64).ravel()
    return float(np.dot(g, g))


def log_softmax(z):
    """Row-wise ``log(softmax(z))`` along the last axis, stable for any finite input."""
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def softmax_cross_entropy(logits, y, weights):
    """Weighted softmax cross-entropy and its gradient w.r.t. the logits.

    Parameters
    ----------
    logits : ndarray of shape (n, n_classes)
    y : ndarray of int of shape (n,)
        Class indices.
    weights : ndarray of shape (n,)
        Per-row weights, already normalised (they sum to 1 over the whole batch).

    Returns
    -------
    loss : float
        ``-sum(weights * log p[y])``.
    grad : ndarray of shape (n, n_classes)
        ``weights * (softmax(logits) - onehot(y))``.
    """
    logp = log_softmax(logits)
    rows = np.arange(y.shape[0])
    loss = -float(np.dot(weights, logp[rows, y]))
    grad = np.exp(logp)
    grad[rows, y] -= 1.0
    grad *= weights[:, None].astype(grad.dtype, copy=False)
    return loss, grad


def squared_error(pred, y, weights):
    """Weighted half squared error averaged over outputs, and its gradient.

    ``loss = sum_i weights_i * mean_j (pred_ij - y_ij)**2 / 2`` (scikit-learn's
    MLP loss); ``pred`` and ``y`` have shape (n, n_outputs), ``weights`` sum to 1.
    """
    diff = pred - y
    n_out = pred.shape[1]
    loss = 0.5 * float(np.dot(weights, np.einsum("ij,ij->i", diff, diff))) / n_out
    grad = diff * (weights[:, None] / n_out).astype(diff.dtype, copy=False)
    return loss, grad
