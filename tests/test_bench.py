"""The side-by-side benchmark harness: its peers compute what fastrnn computes.

``bench.run_case`` refuses to time a peer whose result differs from fastrnn's;
these tests run it on small shapes so that check (and the ONNX graph builder's
gate reordering) is exercised in CI.
"""

from dataclasses import replace

import numpy as np
import pytest

from fastrnn import bench

from conftest import torch_or_skip


CASES = [(sid, cell) for sid in ("S1", "S3", "S6", "S7")
         for cell in bench.SCENARIOS[sid].cells]


@pytest.mark.parametrize("sid,cell", CASES)
def test_peers_agree_with_fastrnn(sid, cell):
    torch_or_skip()
    pytest.importorskip("onnxruntime", reason="pip install '.[test]' brings onnxruntime")
    sc = replace(bench.SCENARIOS[sid], B=3, T=12, D=4, H=5)
    if sc.ragged:
        sc = replace(sc, T=15)  # lengths drawn from [10, T]
    res = bench.run_case(sc, cell, rounds=1, min_time=0.0, settle=0.0, warmup=0.0)
    expected = {"pytorch"} | ({"onnxruntime"} if sc.kind == "inference" else set())
    assert set(res["ratio"]) == expected
    assert all(np.isfinite(v) and v > 0 for v in res["median_s"].values())
    if sc.ragged:  # also timed at full length, reported against the scaled time
        g = res["ragged"]
        x, lengths = bench.make_inputs(sc)
        assert g["fill"] == lengths.sum() / (sc.B * sc.T) and 0 < g["fill"] <= 1
        assert g["equal_length_s"] == res["median_s"]["fastrnn_equal_length"]
        assert np.isclose(g["vs_scaled_equal_length"], res["median_s"]["fastrnn"]
                          / (g["fill"] * g["equal_length_s"]))
    else:
        assert "ragged" not in res and set(res["median_s"]) == expected | {"fastrnn"}


def test_wrong_peer_result_is_refused():
    with pytest.raises(AssertionError, match="differs"):
        bench._check_same(np.ones(4), np.ones(4) * 1.01, "peer")


def test_environment_says_whether_panels_ran():
    """The bench's header (and --json) records the panel setting of the run."""
    kern = pytest.importorskip(
        "fastrnn._kernels._cython_kernels",
        reason="SKIPPED LOUDLY: the Cython extension is not built")
    was = kern.set_panel_products(False)
    try:
        assert bench._environment()["panels"] is False
        kern.set_panel_products(True)
        assert bench._environment()["panels"] is kern.PANELS_AVAILABLE
    finally:
        kern.set_panel_products(was)
