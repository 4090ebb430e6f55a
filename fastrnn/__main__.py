"""Command line: ``python -m fastrnn <command> [options]``.

Commands
--------
demo
    Train an :class:`~fastrnn.RNNClassifier` on scikit-learn's handwritten
    digits read row by row (8 time steps of 8 pixels), print its test accuracy,
    fit time and predict latency, and, when PyTorch is installed, the same for
    the same network trained the same way in PyTorch.

Adding a command: write a function ``main(argv)`` that parses ``argv`` (the
arguments after the command name) with its own ``argparse`` parser and returns
an exit code, and register it in :data:`COMMANDS` as ``"name": ("module",
"function", "one-line help")``. The module is imported only when its command
runs, so a command's dependencies never slow down or break the others.
"""

import argparse
import importlib
import sys
import time
import warnings

import numpy as np

from ._config import thread_limit

#: Command name -> (module, function taking argv, help). The hook for new commands.
COMMANDS = {
    "demo": ("fastrnn.__main__", "demo_main",
             "train on the digits data set, side by side with PyTorch if installed"),
    "bench": ("fastrnn.bench", "main",
              "speed scenarios against PyTorch / ONNX Runtime (see fastrnn.bench)"),
}


def main(argv=None):
    """Dispatch ``argv`` (default ``sys.argv[1:]``) to the command it names."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(
        prog="python -m fastrnn",
        usage=f"python -m fastrnn [-h] {{{','.join(sorted(COMMANDS))}}} [options]",
        description="fastrnn: fast recurrent neural networks on the CPU.",
        epilog="Run 'python -m fastrnn <command> --help' for a command's options.")
    parser.add_argument("command", choices=sorted(COMMANDS),
                        help="; ".join(f"{k}: {v[2]}" for k, v in sorted(COMMANDS.items())))
    ns = parser.parse_args(argv[:1])
    module_name, func_name, _ = COMMANDS[ns.command]
    try:
        module = importlib.import_module(module_name)
        func = getattr(module, func_name)
    except (ImportError, AttributeError) as exc:
        parser.exit(2, f"python -m fastrnn {ns.command}: not available in this "
                       f"installation ({type(exc).__name__}: {exc})\n")
    return func(argv[1:]) or 0


# ------------------------------------------------------------------ demo


def _digits_sequences(seed):
    """Digits as sequences: 8 rows (time steps) of 8 pixels scaled to [0, 1]."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    X = (digits.images / 16.0).astype(np.float32)  # (1797, 8, 8)
    return train_test_split(X, digits.target, test_size=0.25, random_state=seed,
                            stratify=digits.target)


def _batch_time(predict, X, repeats=5):
    """Median seconds per sequence of ``predict`` on all of X (after a warm-up)."""
    predict(X)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        predict(X)
        times.append(time.perf_counter() - t0)
    return float(np.median(times)) / len(X)


def _latency(predict_one, X, repeats):
    """Median seconds of ``predict_one`` on single sequences (after a warm-up)."""
    predict_one(X[:1])
    times = []
    for i in range(repeats):
        x = X[i % len(X):i % len(X) + 1]
        t0 = time.perf_counter()
        predict_one(x)
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def _run_fastrnn(args, X_train, X_test, y_train, y_test):
    from sklearn.exceptions import ConvergenceWarning

    from .estimators import RNNClassifier

    clf = RNNClassifier((args.hidden,), args.cell, batch_size=args.batch_size,
                        learning_rate_init=args.lr, max_iter=args.epochs,
                        n_iter_no_change=args.epochs, alpha=0.0,
                        random_state=args.seed, backend=args.backend)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        t0 = time.perf_counter()
        clf.fit(X_train, y_train)
        fit_s = time.perf_counter() - t0
    acc = clf.score(X_test, y_test)
    batch_s = _batch_time(clf.predict, X_test)
    return clf, dict(accuracy=acc, fit_s=fit_s, batch_s=batch_s,
                     one_s=_latency(clf.predict, X_test, args.latency_repeats))


def _run_torch(args, clf, X_train, X_test, y_train, y_test):
    """The same network, initial weights, optimizer, epochs and batch size in PyTorch."""
    import torch

    torch.manual_seed(args.seed)
    cell = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU, "rnn": torch.nn.RNN}[args.cell]

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn = cell(X_train.shape[2], args.hidden, batch_first=True)
            self.head = torch.nn.Linear(args.hidden, len(clf.classes_))

        def forward(self, x):
            out, _ = self.rnn(x)
            return self.head(out[:, -1])

    net = Net()
    # Start from the initial weights fastrnn started from (same random_state).
    init = clf._build_network(X_train.shape[2], len(clf.classes_),
                              np.random.RandomState(args.seed))
    with torch.no_grad():
        for name, value in init.layers[0].state_dict().items():
            getattr(net.rnn, name).copy_(torch.from_numpy(value))
        net.head.weight.copy_(torch.from_numpy(init.coef.T.copy()))
        net.head.bias.copy_(torch.from_numpy(init.intercept))
    opt = torch.optim.Adam(net.parameters(), lr=args.lr)
    loss_fn = torch.nn.CrossEntropyLoss()
    Xtr, ytr = torch.from_numpy(X_train), torch.from_numpy(y_train.astype(np.int64))
    Xte = torch.from_numpy(X_test)
    gen = torch.Generator().manual_seed(args.seed)
    t0 = time.perf_counter()
    net.train()
    for _ in range(args.epochs):
        for idx in torch.randperm(len(Xtr), generator=gen).split(args.batch_size):
            opt.zero_grad()
            loss = loss_fn(net(Xtr[idx]), ytr[idx])
            loss.backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), clf.max_grad_norm)
            opt.step()
    fit_s = time.perf_counter() - t0
    net.eval()
    with torch.no_grad():
        def predict(x):
            return net(torch.from_numpy(x)).argmax(1).numpy()

        accuracy = float(np.mean(predict(X_test) == y_test))
        batch_s = _batch_time(predict, X_test)
        one_s = _latency(predict, X_test, args.latency_repeats)
    return dict(accuracy=accuracy, fit_s=fit_s, batch_s=batch_s, one_s=one_s,
                version=torch.__version__)


def demo_main(argv=None):
    """``python -m fastrnn demo``: see the module docstring; returns an exit code."""
    parser = argparse.ArgumentParser(
        prog="python -m fastrnn demo",
        description="Classify scikit-learn's 8x8 digits read row by row (8 steps of 8 "
                    "features) with an RNNClassifier, and with the same network in "
                    "PyTorch when it is installed.")
    parser.add_argument("--cell", choices=("lstm", "gru", "rnn"), default="lstm")
    parser.add_argument("--hidden", type=int, default=64, help="hidden units (64)")
    parser.add_argument("--epochs", type=int, default=30, help="epochs (30)")
    parser.add_argument("--batch-size", type=int, default=64, help="batch size (64)")
    parser.add_argument("--lr", type=float, default=5e-3, help="Adam learning rate (5e-3)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--backend", default="auto",
                        choices=("auto", "cython", "numba", "reference"))
    parser.add_argument("--threads", type=int, default=1,
                        help="BLAS and PyTorch threads for both libraries (1: the "
                             "recurrent steps are too small to gain from more)")
    parser.add_argument("--latency-repeats", type=int, default=300,
                        help="single-sequence predictions timed (300)")
    parser.add_argument("--no-torch", action="store_true",
                        help="skip the PyTorch comparison")
    args = parser.parse_args(argv)

    from . import _kernels

    X_train, X_test, y_train, y_test = _digits_sequences(args.seed)
    backend = _kernels.resolve_backend(args.backend)
    print(f"digits as sequences: {len(X_train)} train / {len(X_test)} test, "
          f"{X_train.shape[1]} steps x {X_train.shape[2]} features")
    print(f"network: {args.cell.upper()}({args.hidden}) -> last step -> linear -> "
          f"softmax; Adam lr={args.lr:g}, batch {args.batch_size}, {args.epochs} epochs, "
          f"float32")
    torch = None
    if not args.no_torch:
        try:
            import torch
        except ImportError:
            print("(PyTorch is not installed: no side-by-side comparison)")
    with thread_limit(args.threads):
        clf, ours = _run_fastrnn(args, X_train, X_test, y_train, y_test)
        results = [(f"fastrnn ({backend})", ours)]
        if torch is not None:
            theirs = _run_torch(args, clf, X_train, X_test, y_train, y_test)
            results.append((f"PyTorch {theirs['version']}", theirs))
    print(f"threads: {args.threads} (BLAS and PyTorch), same initial weights")

    width = max(len(name) for name, _ in results)
    print()
    print(f"{'':{width}}  {'accuracy':>8}  {'fit':>8}  {'predict 1 seq':>13}  "
          f"{'predict batch':>14}")
    for name, r in results:
        print(f"{name:{width}}  {r['accuracy']:8.4f}  {r['fit_s']:7.2f}s  "
              f"{r['one_s'] * 1e6:10.1f} us  {r['batch_s'] * 1e6:9.2f} us/seq")
    if len(results) == 2:
        print(f"\nfit: PyTorch / fastrnn = {results[1][1]['fit_s'] / ours['fit_s']:.2f}x; "
              f"single-sequence predict: "
              f"{results[1][1]['one_s'] / ours['one_s']:.2f}x (above 1: fastrnn faster)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
