"""Shared set-up of the asv benchmarks: the scenarios of ``fastrnn.bench``."""

import os

from fastrnn import bench
from fastrnn._config import thread_limit
from fastrnn._kernels import available_backends

#: ``FASTRNN_ASV_QUICK=1`` shrinks every scenario so CI can run the whole suite
#: in seconds, only to prove that it still runs.
QUICK = os.environ.get("FASTRNN_ASV_QUICK") == "1"

BACKENDS = available_backends()

#: Scenario and cell choices; the quick profile keeps one of each, so CI proves
#: every benchmark class and backend still runs without timing the full grid.
CELLS = ["lstm"] if QUICK else ["lstm", "gru", "rnn"]


def scenario(sid):
    sc = bench.SCENARIOS[sid]
    if QUICK:
        from dataclasses import replace

        sc = replace(sc, B=min(sc.B, 4), T=min(sc.T, 12), D=min(sc.D, 8), H=min(sc.H, 8))
    return sc


def runner(sid, cell, backend):
    """A ready-to-call fastrnn step (inference or training) for the scenario."""
    sc = scenario(sid)
    x, lengths = bench.make_inputs(sc)
    return bench.FastrnnRunner(sc, cell, x, lengths, backend)


def scenarios(*ids):
    return list(ids[:1]) if QUICK else list(ids)


class ThreadsMixin:
    """Run each benchmark under the scenario's thread count."""

    _threads = None

    def _limit(self, sid):
        self._threads = thread_limit(scenario(sid).threads).__enter__()

    def teardown(self, *args):
        if self._threads is not None:
            self._threads.__exit__(None, None, None)


__all__ = ["BACKENDS", "CELLS", "QUICK", "ThreadsMixin", "runner", "scenario", "scenarios"]
