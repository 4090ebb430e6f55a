"""Side-by-side speed scenarios: fastrnn against PyTorch and ONNX Runtime.

``python -m fastrnn bench`` runs every scenario in one process, with the same
weights and the same thread count for every library, in interleaved rounds,
and prints the median time of each and the ratio ``peer / fastrnn`` (above 1:
fastrnn is faster). Before timing, each peer's result is compared with
fastrnn's, so a fast wrong answer cannot be reported. PyTorch and ONNX Runtime
are optional: a peer that is not installed is left out.

The scenario table (``SCENARIOS``) is shared with the asv suite in
``benchmarks/``.
"""

import argparse
import json
import platform
import time
from dataclasses import dataclass

import numpy as np

from . import nn
from ._config import thread_limit

__all__ = ["SCENARIOS", "Scenario", "run"]


@dataclass(frozen=True)
class Scenario:
    """One benchmark case: ``kind`` is 'inference' or 'train'."""

    id: str
    kind: str
    B: int
    T: int
    D: int
    H: int
    threads: int
    num_layers: int = 1
    bidirectional: bool = False
    ragged: bool = False
    cells: tuple = ("lstm", "gru", "rnn")


SCENARIOS = {
    "S1": Scenario("S1", "inference", 1, 100, 32, 128, 1),
    "S2": Scenario("S2", "inference", 256, 100, 32, 128, 2),
    "S3": Scenario("S3", "train", 64, 100, 32, 128, 2),
    "S4": Scenario("S4", "train", 32, 50, 8, 32, 2),
    "S5": Scenario("S5", "train", 128, 200, 128, 512, 2),
    "S6": Scenario("S6", "train", 64, 100, 32, 128, 2, num_layers=2, bidirectional=True,
                   cells=("lstm",)),
    "S7": Scenario("S7", "train", 64, 100, 32, 128, 2, ragged=True),
}

_LAYERS = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}


def make_inputs(sc, seed=0):
    """Float32 input (T, B, D), lengths (or None) and a head target for ``sc``."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((sc.T, sc.B, sc.D)).astype(np.float32)
    lengths = rng.integers(10, sc.T + 1, sc.B) if sc.ragged else None
    return x, lengths


def make_layer(sc, cell, backend="auto", seed=0):
    layer = _LAYERS[cell](sc.D, sc.H, num_layers=sc.num_layers,
                          bidirectional=sc.bidirectional, backend=backend,
                          random_state=seed)
    return layer.train(sc.kind == "train")


def _last_state(h_n, num_directions):
    """The top layer's final state(s), (B, num_directions * H)."""
    h = h_n[0] if isinstance(h_n, tuple) else h_n
    return np.concatenate(list(h[-num_directions:]), axis=1)


class FastrnnRunner:
    """fastrnn layer; a training step is forward, linear head on the last
    hidden state, squared loss, backward with every parameter gradient."""

    name = "fastrnn"

    def __init__(self, sc, cell, x, lengths, backend="auto"):
        self.sc, self.x, self.lengths = sc, x, lengths
        self.layer = make_layer(sc, cell, backend)
        nd = 2 if sc.bidirectional else 1
        self.nd = nd
        self.head = np.random.default_rng(1).standard_normal(nd * sc.H).astype(np.float32)

    def __call__(self):
        out, h_n = self.layer(self.x, lengths=self.lengths)
        if self.sc.kind == "inference":
            return out
        last = _last_state(h_n, self.nd)
        pred = last @ self.head
        g = (2.0 / pred.size) * (pred - 1.0)  # d mean((pred - 1)^2)
        g_last = np.outer(g, self.head).astype(np.float32)
        g_h = np.zeros_like(h_n[0] if isinstance(h_n, tuple) else h_n)
        for d in range(self.nd):
            g_h[-self.nd + d] = g_last[:, d * self.sc.H:(d + 1) * self.sc.H]
        grad_h_n = (g_h, None) if isinstance(h_n, tuple) else g_h
        # the loss reads no output but h_n, and the data needs no gradient (as
        # in PyTorch's step, where x does not require one)
        self.layer.backward(None, grad_h_n, input_grad=False)
        return self.layer.grads


class TorchRunner:
    """The same layer, weights and step in PyTorch (packed sequences for ragged input)."""

    name = "pytorch"

    def __init__(self, sc, cell, x, lengths, fast):
        import torch

        self.torch, self.sc = torch, sc
        cls = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU, "rnn": torch.nn.RNN}[cell]
        self.mod = cls(sc.D, sc.H, num_layers=sc.num_layers, bidirectional=sc.bidirectional)
        self.mod.load_state_dict({k: torch.from_numpy(v.copy())
                                  for k, v in fast.layer.state_dict().items()})
        self.x = torch.from_numpy(x)
        self.lengths = torch.from_numpy(np.asarray(lengths)) if lengths is not None else None
        self.head = torch.from_numpy(fast.head)
        self.nd = fast.nd

    def _forward(self):
        torch = self.torch
        inp = self.x
        if self.lengths is not None:
            inp = torch.nn.utils.rnn.pack_padded_sequence(inp, self.lengths,
                                                          enforce_sorted=False)
        out, h_n = self.mod(inp)
        if self.lengths is not None:
            out, _ = torch.nn.utils.rnn.pad_packed_sequence(out, total_length=self.sc.T)
        return out, h_n

    def __call__(self):
        # fastrnn flushes subnormal floats to zero (fastrnn._blas.flush_denormals);
        # PyTorch gets the same, or vanishing gradients slow it 10x at S5.
        self.torch.set_flush_denormal(True)
        try:
            return self._step()
        finally:
            self.torch.set_flush_denormal(False)

    def _step(self):
        torch = self.torch
        if self.sc.kind == "inference":
            with torch.inference_mode():
                return self._forward()[0]
        self.mod.zero_grad(set_to_none=True)
        out, h_n = self._forward()
        h = h_n[0] if isinstance(h_n, tuple) else h_n
        last = torch.cat(list(h[-self.nd:]), dim=1)
        loss = ((last @ self.head - 1.0) ** 2).mean()
        loss.backward()
        return {k: p.grad for k, p in self.mod.named_parameters()}


def onnx_model(layer, cell):
    """An ONNX graph with one LSTM/GRU/RNN node holding ``layer``'s weights
    (single layer, unidirectional)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    sd = layer.state_dict()
    H = layer.hidden_size
    # PyTorch gate order -> ONNX gate order (LSTM i,f,g,o -> i,o,f,c; GRU r,z,n -> z,r,h).
    order = {"lstm": [0, 3, 1, 2], "gru": [1, 0, 2], "rnn": [0]}[cell]

    def blocks(a):
        return np.concatenate([a[k * H:(k + 1) * H] for k in order])[None]

    W, R = blocks(sd["weight_ih_l0"]), blocks(sd["weight_hh_l0"])
    B = np.concatenate([blocks(sd["bias_ih_l0"]), blocks(sd["bias_hh_l0"])], axis=1)
    attrs = dict(hidden_size=H)
    if cell == "gru":
        attrs["linear_before_reset"] = 1
    op = {"lstm": "LSTM", "gru": "GRU", "rnn": "RNN"}[cell]
    node = helper.make_node(op, ["X", "W", "R", "B"], ["Y"], **attrs)
    graph = helper.make_graph(
        [node], "rnn",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, [None, None, layer.input_size])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(a.astype(np.float32), n) for a, n in
         [(W, "W"), (R, "R"), (B, "B")]])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])


class OnnxRunner:
    """ONNX Runtime inference of the same single-layer model."""

    name = "onnxruntime"

    def __init__(self, sc, cell, x, lengths, fast):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = sc.threads
        opts.inter_op_num_threads = 1
        model = onnx_model(fast.layer, cell).SerializeToString()
        self.sess = ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])
        self.x = x

    def __call__(self):
        return self.sess.run(None, {"X": self.x})[0][:, 0]


def _to_numpy(v):
    return v.detach().numpy() if hasattr(v, "detach") else np.asarray(v)


def _check_same(ref, other, name):
    """Raise if ``other``'s result differs from fastrnn's beyond float32 rounding."""
    if isinstance(ref, dict):
        for k in ref:
            _check_same(ref[k], other[k], f"{name} grad {k}")
        return
    a, b = np.asarray(ref), _to_numpy(other)
    scale = max(float(np.abs(a).max()), 1e-6)
    err = float(np.abs(a - b).max()) / scale
    if err > 1e-3:
        raise AssertionError(f"{name}: result differs from fastrnn's (max rel. err {err:.2e})")


def _peers(sc, cell, x, lengths, fast):
    peers = []
    try:
        peers.append(TorchRunner(sc, cell, x, lengths, fast))
    except ImportError:
        pass
    if sc.kind == "inference" and not sc.bidirectional and sc.num_layers == 1:
        try:
            peers.append(OnnxRunner(sc, cell, x, lengths, fast))
        except ImportError:
            pass
    return peers


#: The runner of a ragged scenario's data at full length (not a peer).
_EQUAL_LENGTH = "fastrnn_equal_length"


def run_case(sc, cell, rounds=7, backend="auto", min_time=0.05, settle=0.3, warmup=0.05):
    """Time fastrnn and its peers on one scenario and cell.

    Returns a dict with the median seconds per call of each runner and the
    ratios ``peer / fastrnn``. For ragged input it also times fastrnn on the
    same data at full length (interleaved with the others) and adds
    ``ragged``: the fill (valid steps / (B * T)), that time, and the ragged
    time over the full-length time scaled by the fill (1.0: the padding costs
    nothing, nor does the raggedness).
    """
    x, lengths = make_inputs(sc)
    with thread_limit(sc.threads):
        fast = FastrnnRunner(sc, cell, x, lengths, backend)
        runners = [fast] + _peers(sc, cell, x, lengths, fast)
        ref = fast()
        for r in runners[1:]:
            _check_same(ref, r(), f"{sc.id} {cell} {r.name}")
        if lengths is not None:
            # The same layer on the same data with every sequence at full length:
            # the ragged call should cost that time scaled by the steps it has.
            full = FastrnnRunner(sc, cell, x, None, backend)
            full.name = _EQUAL_LENGTH
            runners.append(full)
        # Calls per round so that one round takes about min_time.
        t0 = time.perf_counter()
        fast()
        reps = max(1, int(min_time / max(time.perf_counter() - t0, 1e-6)))
        times = {r.name: [] for r in runners}
        for _ in range(rounds):
            for r in runners:  # interleaved: every runner sees the same machine state
                # Let the previous runner's thread pools (OpenBLAS, OpenMP, ONNX
                # Runtime), which spin for a while after a call, go idle first,
                # so that no library is timed against another's spinning threads.
                time.sleep(settle)
                # ...then untimed calls for `warmup` seconds (at least one):
                # after an idle pause the first calls run on cold caches and
                # CPUs that have to wake up (an S3 LSTM step took 35 ms after
                # 0.3 s idle, 21 ms back to back; an S3 RNN step, split over
                # two threads, 8.2 ms for the next six calls after one warm
                # call, 5.7 ms after 50 ms of them), and each library is to be
                # timed in its steady state.
                t0 = time.perf_counter()
                r()
                while time.perf_counter() - t0 < warmup:
                    r()
                t0 = time.perf_counter()
                for _ in range(reps):
                    r()
                times[r.name].append((time.perf_counter() - t0) / reps)
    med = {k: float(np.median(v)) for k, v in times.items()}
    result = dict(scenario=sc.id, cell=cell, kind=sc.kind, threads=sc.threads,
                  shape=dict(B=sc.B, T=sc.T, D=sc.D, H=sc.H), backend=fast.layer.backend,
                  median_s=med, rounds=rounds, calls_per_round=reps)
    result["ratio"] = {k: v / med["fastrnn"] for k, v in med.items()
                       if k not in ("fastrnn", _EQUAL_LENGTH)}
    if lengths is not None:
        fill = float(np.sum(lengths)) / (sc.B * sc.T)
        result["ragged"] = dict(fill=fill, equal_length_s=med[_EQUAL_LENGTH],
                                vs_scaled_equal_length=med["fastrnn"]
                                / (fill * med[_EQUAL_LENGTH]))
    return result


def run(scenarios=None, cells=None, rounds=7, backend="auto", settle=0.3, warmup=0.05):
    """Run the chosen scenarios (ids) and cells; return a list of result dicts."""
    results = []
    for sid in scenarios or SCENARIOS:
        sc = SCENARIOS[sid]
        for cell in sc.cells:
            if cells and cell not in cells:
                continue
            results.append(run_case(sc, cell, rounds, backend, settle=settle,
                                    warmup=warmup))
    return results


def _environment():
    info = dict(python=platform.python_version(), machine=platform.machine(),
                numpy=np.__version__)
    for mod in ("numba", "torch", "onnxruntime"):
        try:
            info[mod] = __import__(mod).__version__
        except ImportError:
            pass
    from . import _kernels

    info["backends"] = _kernels.available_backends()
    try:  # whether the Cython kernels' float32 step products run on panels
        from ._kernels import _cython_kernels
    except ImportError:
        pass
    else:
        info["panels"] = _cython_kernels.panel_products()
    return info


def _fmt_time(s):
    return f"{s * 1e3:9.3f} ms"


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m fastrnn bench",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenarios", nargs="*", choices=sorted(SCENARIOS),
                        help="scenario ids (default: all)")
    parser.add_argument("--cells", nargs="*", choices=["lstm", "gru", "rnn"])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--backend", default="auto")
    parser.add_argument("--settle", type=float, default=0.3,
                        help="seconds of idle before each timed batch of calls, so that "
                             "no library is timed against another's spinning threads")
    parser.add_argument("--warmup", type=float, default=0.05,
                        help="seconds of untimed calls (at least one) after the idle "
                             "pause, so that every library is timed in its steady state")
    parser.add_argument("--json", action="store_true", help="print JSON")
    args = parser.parse_args(argv)
    results = run(args.scenarios, args.cells, args.rounds, args.backend, args.settle,
                  args.warmup)
    if args.json:
        print(json.dumps(dict(environment=_environment(), results=results), indent=1))
        return 0
    env = _environment()
    print("  ".join(f"{k}={v}" for k, v in env.items()))
    print(f"{'scen':4} {'cell':4} {'kind':9} {'thr':>3} {'fastrnn':>12} "
          f"{'pytorch':>12} {'ratio':>6} {'onnxrt':>12} {'ratio':>6}")
    for r in results:
        m, q = r["median_s"], r["ratio"]
        cols = [f"{r['scenario']:4} {r['cell']:4} {r['kind']:9} {r['threads']:3}",
                _fmt_time(m["fastrnn"])]
        for peer in ("pytorch", "onnxruntime"):
            cols += ([_fmt_time(m[peer]), f"{q[peer]:6.2f}"] if peer in m
                     else [f"{'-':>12}", f"{'-':>6}"])
        print(" ".join(cols))
        if "ragged" in r:
            g = r["ragged"]
            print(f"{'':4} {'':4} ragged: {g['fill']:.0%} of the steps; at full length "
                  f"{_fmt_time(g['equal_length_s']).strip()}, so the ragged call takes "
                  f"{g['vs_scaled_equal_length']:.2f}x the scaled time")
    return 0
